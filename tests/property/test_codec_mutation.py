"""Mutation tests: corrupt stored bytes raise ``CorruptRecordError``, never worse.

Two kinds of damage:

* CRC-protected damage to a valid batch (every single-byte flip, every
  truncation, appended bytes): ``validate_batch`` and ``decode_batch`` must
  raise ``CorruptRecordError``.  Never another exception, never a crash,
  never a silent success.
* CRC-correct structural damage (a length varint rewritten, bytes inserted,
  header fields changed, and then the CRC recomputed with the oracle): the
  structure checks alone must catch it, so even ``decode_batch(...,
  verify_crc=False)`` raises.  This proves stored lengths are not trusted.
  For these the verdict and the decoded records must equal the oracle's.

The exhaustive loops run in a child process (this file run as a script), so a
segfault in the C core fails the tests instead of killing pytest.  The child
places every input so that it ends right before a ``PROT_NONE`` page: reading
one byte past the end crashes it.  On a crash the group is rerun case by case
to name the input.  Hypothesis fuzzes the same entry points in-process.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _reference as ref
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqlite import _core
from mqlite.errors import CorruptRecordError

HEADER = ref.BATCH_HEADER_SIZE
TESTS_DIR = Path(__file__).resolve().parents[1]


# -- representative stored batches -------------------------------------------------


def representative_batches() -> dict[str, tuple[bytes, int, bool]]:
    """``name -> (batch, base_offset, exhaustive_bit_flips)``, all built by the oracle."""
    rng = random.Random(1)  # fixed: the batches are part of the test's definition
    names = ["trace-id", "ключ", "🔑", "", "content-type"]
    n = 40
    medium = ref.encode_batch(
        [rng.randbytes(rng.choice([0, 1, 5, 30, 60])) for _ in range(n)],
        keys=[rng.choice([None, b"", rng.randbytes(rng.randrange(1, 12))]) for _ in range(n)],
        headers=[
            [(rng.choice(names), rng.randbytes(rng.randrange(5))) for _ in range(rng.randrange(4))]
            for _ in range(n)
        ],
        timestamps=[1_700_000_000_000 + rng.randrange(-5000, 5000) for _ in range(n)],
        producer_id=99,
        base_sequence=7,
    )
    return {
        "minimal": (ref.encode_batch([b"x"]), 0, True),
        "three-records": (
            ref.encode_batch(
                [b"order created", b"", b"\x00\xffpayload"],
                keys=[None, b"", b"order-42"],
                headers=[None, [], [("ключ-🔑", b"v1"), ("ключ-🔑", b"")]],
                timestamps=[1_700_000_000_000, 1_699_999_999_000, 1_700_000_000_500],
                producer_id=1_234_567_890_123,
                base_sequence=42,
            ),
            1000,
            True,
        ),
        "null-value": (
            ref.encode_batch([None, b"v"], keys=[b"k", None], timestamps=[5, 1]),
            7,
            True,
        ),
        "forty-records": (medium, 123_456, False),
        "large-value": (
            ref.encode_batch(
                [b"head", rng.randbytes(16 * 1024), b"tail"],
                keys=[b"a", None, b"c"],
                headers=[None, [("h", b"1")], [("h", b"2"), ("h", b"3")]],
                timestamps=[10, 20, 15],
            ),
            2**40,
            False,
        ),
    }


# -- mutations -------------------------------------------------------------------------


def with_length_and_crc(data: bytes | bytearray) -> bytes:
    """``data`` with its length field set to ``len(data)`` and a correct CRC."""
    buf = bytearray(data)
    struct.pack_into(">I", buf, 5, len(buf))
    return ref.with_fixed_crc(buf)


def protected_mutations(
    batch: bytes, rng: random.Random, xors: int, bit_flips: bool
) -> Iterator[tuple[str, bytes]]:
    """Single-byte flips (0xFF, ``xors`` random values, optionally each bit)."""
    for pos in range(len(batch)):
        masks = {0xFF} | {rng.randrange(1, 256) for _ in range(xors)}
        if bit_flips:
            masks |= {1 << bit for bit in range(8)}
        for mask in sorted(masks):
            buf = bytearray(batch)
            buf[pos] ^= mask
            yield f"byte {pos} ^= 0x{mask:02x}", bytes(buf)


def truncations(batch: bytes) -> Iterator[tuple[str, bytes]]:
    for size in range(len(batch)):
        yield f"truncated to {size} bytes", batch[:size]
    for extra in (b"\x00", b"\xb1" * 5, batch):
        yield f"{len(extra)} bytes appended", batch + extra


def record_varints(batch: bytes) -> list[tuple[str, int, int, int, int]]:
    """``(field, record_index, start, end, value)`` of every varint in the records."""
    fields: list[tuple[str, int, int, int, int]] = []
    pos = HEADER
    index = 0

    def take(name: str) -> int:
        nonlocal pos
        value, end = ref.decode_varint(batch, pos)
        fields.append((name, index, pos, end, value))
        pos = end
        return value

    while pos < len(batch):
        for name in ("record_length", "attributes", "timestamp_delta", "offset_delta"):
            take(name)
        # (``pos += take(...)`` would add to the value ``pos`` had before the call)
        for name in ("key_length", "value_length"):
            size = take(name)
            pos += max(size, 0)
        for _ in range(take("header_count")):
            for name in ("header_name_length", "header_value_length"):
                size = take(name)
                pos += size
        index += 1
    return fields


def _replacements(field: str, index: int, value: int, room: int) -> list[int]:
    """Values to write into a varint; ``room`` = bytes from the varint to the batch end."""
    huge = [2**31, 2**62, 2**63 - 1, -(2**63)]
    if field == "record_length":
        return [value + 1, value - 1, 0, -1, -2, room, *huge]
    if field == "attributes":
        return [1, -1, 64]
    if field == "timestamp_delta":
        return [value + 1, value - 1, 2**63 - 1] if index == 0 else [2**63 - 1]
    if field == "offset_delta":
        return [value + 1, value - 1, 2**40]
    if field in ("key_length", "value_length"):
        # (-1 -> 0 would turn null into empty: same size, still valid)
        grown = value + 1 if value >= 0 else 1
        return [grown, room, -2, -(2**31), *huge] + ([value - 1] if value > 0 else [])
    if field == "header_count":
        return [value + 1, -1, *huge] + ([value - 1] if value > 0 else [])
    return [value + 1, -1, room, *huge] + ([value - 1] if value > 0 else [])  # header lengths


def structural_mutations(batch: bytes) -> Iterator[tuple[str, bytes]]:
    """CRC-correct batches with one field rewritten (length field and CRC fixed)."""
    for field, index, start, end, value in record_varints(batch):
        for new in _replacements(field, index, value, len(batch) - start):
            buf = batch[:start] + ref.encode_varint(new) + batch[end:]
            yield f"record {index} {field} {value} -> {new}", with_length_and_crc(buf)
    # Header fields (the CRC is fixed, so only the structure checks can see these).
    count = struct.unpack_from(">I", batch, 11)[0]
    for new_count in (0, count - 1, count + 1, 2**32 - 1):
        yield f"record_count {count} -> {new_count}", _patched(batch, ">I", 11, new_count)
    for off, name in ((15, "base_timestamp"), (23, "max_timestamp")):
        old = struct.unpack_from(">q", batch, off)[0]
        for delta in (1, -1):
            yield f"{name} {old:+d}{delta:+d}", _patched(batch, ">q", off, old + delta)
    for attributes in (1, 2, 4, 7, 8, 0x8000, 0xFFFF):
        yield f"attributes -> 0x{attributes:04x}", _patched(batch, ">H", 9, attributes)
    for magic in (0x00, 0xB0, 0xB2, 0xFF):
        yield f"magic -> 0x{magic:02x}", _patched(batch, ">B", 0, magic)
    # Positive controls: producer fields are not checked, so these stay valid.
    yield "producer_id changed", _patched(batch, ">q", 31, 123)
    yield "base_sequence changed", _patched(batch, ">i", 39, 2**31 - 1)
    # Bytes after the last record, or a last record cut short.
    for tail in (b"\x00", b"\x02\x00", b"\x0e\x00\x00\x00\x01\x02x\x00"):
        yield f"{tail.hex()} after the last record", with_length_and_crc(batch + tail)
    for cut in (1, 2):
        yield f"last record cut by {cut}", with_length_and_crc(batch[:-cut])


def _patched(batch: bytes, fmt: str, offset: int, value: int) -> bytes:
    buf = bytearray(batch)
    struct.pack_into(fmt, buf, offset, value)
    return ref.with_fixed_crc(buf)


def random_structural_mutations(
    batch: bytes, rng: random.Random, count: int
) -> Iterator[tuple[str, bytes]]:
    """1-3 random edits in the records area (xor, set, insert, delete), then length/CRC fixed."""
    for _ in range(count):
        buf = bytearray(batch)
        edits = []
        for _ in range(rng.randrange(1, 4)):
            if len(buf) <= HEADER:
                break
            pos = rng.randrange(HEADER, len(buf))
            op = rng.choice(["xor", "set", "insert", "delete"])
            byte = rng.choice([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF, rng.randrange(256)])
            if op == "xor":
                buf[pos] ^= byte or 1
            elif op == "set":
                buf[pos] = byte
            elif op == "insert":
                buf.insert(pos, byte)
            else:
                del buf[pos]
            edits.append(f"{op}@{pos}:{byte:02x}")
        yield " ".join(edits), with_length_and_crc(buf)


# -- verdicts ----------------------------------------------------------------------


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except CorruptRecordError:
        return "corrupt", None
    except BaseException as exc:  # noqa: BLE001 - anything else is the finding
        return "error", repr(exc)


def _ref_outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except ref.ReferenceCorrupt as exc:
        return "corrupt", exc.kind


def _tuples(messages: list[Any]) -> list[tuple[Any, ...]]:
    return [(m.offset, m.timestamp_ms, m.key, m.value, m.headers) for m in messages]


def check_against_reference(data: Any, base: int, crc_broken: bool) -> list[str]:
    """Problems found running every C entry point on ``data`` (``[]`` = all good).

    ``data`` may be any buffer; ``crc_broken`` says the caller knows the CRC
    (or magic/length) no longer matches, so CRC-checked calls must raise and
    the oracle's (slow) CRC need not run.  Otherwise the CRC is known correct
    and CRC-checked calls must agree with the oracle's structural verdict.
    """
    raw = bytes(data)
    problems: list[str] = []
    want_nocrc = _ref_outcome(lambda: ref.decode_batch(raw, base, verify_crc=False))
    want = ("corrupt", "crc") if crc_broken else want_nocrc

    def expect(name: str, got: tuple[str, Any], wanted: tuple[str, Any]) -> None:
        if got[0] == "error":
            problems.append(f"{name}: raised {got[1]}, not CorruptRecordError")
        elif got[0] != wanted[0]:
            reason = f" (oracle: {wanted[1]})" if wanted[0] == "corrupt" else ""
            problems.append(f"{name}: {got[0]}, expected {wanted[0]}{reason}")
        elif got[0] == "ok" and got[1] != wanted[1]:
            problems.append(f"{name}: returned {got[1]!r:.200}, oracle {wanted[1]!r:.200}")

    expect("validate_batch", _outcome(lambda: _core.validate_batch(data)),
           (want[0], len(want[1]) if want[0] == "ok" else want[1]))  # fmt: skip
    sentinel = _core.Message("x", 0, 0, 0, None, None)
    for verify_crc, wanted in ((True, want), (False, want_nocrc)):
        out = [sentinel]
        def decode(out: list[_core.Message] = out, verify_crc: bool = verify_crc) -> Any:
            return _tuples(
                _core.decode_batch(data, "t", 0, base, out=out, verify_crc=verify_crc)[1:])
        got = _outcome(decode)
        expect(f"decode_batch(verify_crc={verify_crc})", got, wanted)
        if got[0] != "ok" and out != [sentinel]:
            problems.append(f"decode_batch(verify_crc={verify_crc}) appended to out, then raised")
    expect("batch_header", _outcome(lambda: _core.batch_header(data)),
           _ref_outcome(lambda: ref.batch_header(raw)))  # fmt: skip
    probe = int.from_bytes(raw[15:23], "big", signed=True) if len(raw) >= 23 else 0
    got = _outcome(lambda: _core.first_offset_at_or_after(data, base, probe))
    if got[0] == "error":
        problems.append(f"first_offset_at_or_after: raised {got[1]}")
    elif want[0] == "ok":
        expect("first_offset_at_or_after", got,
               ("ok", ref.first_offset_at_or_after(raw, base, probe)))  # fmt: skip
    return problems


# -- the crash-isolated child ---------------------------------------------------------


class GuardedBuffer:
    """Places inputs so that they end right before an inaccessible page.

    Falls back to plain ``bytes`` where ``mprotect`` is unavailable.
    """

    def __init__(self, capacity: int) -> None:
        self.page = mmap.PAGESIZE
        self.size = -(-capacity // self.page) * self.page
        self.map = mmap.mmap(-1, self.size + self.page)
        self.guarded = self._protect_last_page()

    def _protect_last_page(self) -> bool:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
            return libc.mprotect(ctypes.c_void_p(address + self.size), self.page, 0) == 0
        except (OSError, AttributeError, TypeError):
            return False

    def place(self, data: bytes) -> Any:
        if not self.guarded:
            return data
        start = self.size - len(data)
        self.map[start : self.size] = data
        return memoryview(self.map)[start : self.size]


def mutation_groups(seed: int) -> Iterator[tuple[str, Iterator[tuple[str, bytes]], int, bool]]:
    """``(group, cases, base_offset, crc_broken)`` for every batch and kind of damage."""
    for name, (batch, base, bit_flips) in representative_batches().items():
        rng = random.Random(f"{seed}:{name}")
        xors = 1 if len(batch) > 8192 else 2
        yield f"{name}/byte-flips", protected_mutations(batch, rng, xors, bit_flips), base, True
        yield f"{name}/truncations", truncations(batch), base, True
        yield f"{name}/structural", structural_mutations(batch), base, False
        n = 60 if len(batch) > 8192 else 400
        yield f"{name}/random-structural", random_structural_mutations(batch, rng, n), base, False


def run_child(seed: int, only_group: str | None) -> dict[str, Any]:
    """Run every group (or one, printing each case first); a JSON-able report."""
    guard = GuardedBuffer(64 * 1024)
    report: dict[str, Any] = {"guarded": guard.guarded, "groups": {}}
    for group, cases, base, crc_broken in mutation_groups(seed):
        if only_group is not None and group != only_group:
            continue
        print(f"GROUP {group}", flush=True)
        done, failures = 0, []
        for desc, data in cases:
            if only_group is not None:
                print(f"CASE {desc} {data.hex()}", flush=True)
            problems = check_against_reference(guard.place(data), base, crc_broken)
            if problems:
                failures.append({"case": desc, "data": data.hex(), "problems": problems})
            done += 1
        report["groups"][group] = {"cases": done, "failures": failures}
    return report


def run_child_process(seed: int, only_group: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    args = [sys.executable, "-X", "faulthandler", __file__, str(seed)]
    if only_group is not None:
        args.append(only_group)
    return subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def child_report(session_seed: int) -> dict[str, Any]:
    proc = run_child_process(session_seed)
    if proc.returncode != 0:
        groups = [line[6:] for line in proc.stdout.splitlines() if line.startswith("GROUP ")]
        detail = ""
        if groups:
            rerun = run_child_process(session_seed, groups[-1])
            cases = [line for line in rerun.stdout.splitlines() if line.startswith("CASE ")]
            detail = f"\nrerun of {groups[-1]!r}: exit {rerun.returncode}, last input:\n"
            detail += cases[-1][:3000] if cases else "(none)"
        pytest.fail(
            f"mutation child exited with {proc.returncode} (negative = killed by that signal)"
            f"\n--- stderr ---\n{proc.stderr[-5000:]}{detail}",
            pytrace=False,
        )
    return json.loads(proc.stdout.splitlines()[-1])


def _assert_group_clean(report: dict[str, Any], kind: str) -> None:
    groups = {g: r for g, r in report["groups"].items() if g.endswith("/" + kind)}
    assert groups, kind
    assert all(r["cases"] > 0 for r in groups.values())
    lines = []
    for group, result in groups.items():
        for failure in result["failures"][:5]:
            lines.append(f"{group}: {failure['case']}: {'; '.join(failure['problems'])}")
            lines.append(f"    input: {failure['data'][:400]}")
        if len(result["failures"]) > 5:
            lines.append(f"{group}: ... {len(result['failures'])} failing cases in all")
    assert not lines, "\n" + "\n".join(lines)


def test_child_ran_guarded(child_report: dict[str, Any]) -> None:
    """Reads past the end are caught only when the guard page is in place."""
    if not child_report["guarded"]:
        pytest.skip("mprotect unavailable: inputs were not placed before a guard page")


def test_every_single_byte_flip_is_rejected(child_report: dict[str, Any], seed: int) -> None:
    _assert_group_clean(child_report, "byte-flips")


def test_every_truncation_and_extension_is_rejected(child_report: dict[str, Any]) -> None:
    _assert_group_clean(child_report, "truncations")


def test_crc_correct_structural_damage_is_rejected_without_crc_check(
    child_report: dict[str, Any],
) -> None:
    """Lengths rewritten and the CRC recomputed: ``verify_crc=False`` still raises."""
    _assert_group_clean(child_report, "structural")


def test_random_crc_correct_damage_agrees_with_reference(
    child_report: dict[str, Any], seed: int
) -> None:
    _assert_group_clean(child_report, "random-structural")


def test_structural_mutations_are_corrupt_for_the_reference() -> None:
    """Sanity of the generator itself: all but the positive controls are corrupt."""
    batch, base, _ = representative_batches()["three-records"]
    controls = {"producer_id changed", "base_sequence changed"}
    for desc, data in structural_mutations(batch):
        if desc not in controls:
            outcome = _ref_outcome(functools.partial(ref.decode_batch, data, base, verify_crc=False))
            assert outcome[0] == "corrupt", desc
    for desc in controls:
        data = dict(structural_mutations(batch))[desc]
        assert ref.validate_batch(data) == 3


# -- in-process Hypothesis fuzzing --------------------------------------------------


@st.composite
def near_valid_batches(draw: st.DrawFn) -> bytes:
    """Right magic, length and CRC; header fields and record bytes mostly plausible."""
    varints = st.one_of(
        st.integers(-2, 40), st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 1, 2, 4])
    ).map(ref.encode_varint)
    body = draw(st.lists(st.one_of(varints, st.binary(max_size=6)), max_size=40).map(b"".join))
    attributes = draw(st.one_of(st.just(0), st.integers(0, 0xFFFF)))
    count = draw(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)))
    base_ts = draw(st.one_of(st.just(0), st.integers(-(2**63), 2**63 - 1)))
    max_ts = draw(st.one_of(st.just(base_ts), st.integers(-(2**63), 2**63 - 1)))
    header = struct.pack(">BIIHIqqqi", 0xB1, 0, 0, attributes, count, base_ts, max_ts, -1, -1)
    return with_length_and_crc(header + body)


@st.composite
def mutated_valid_batches(draw: st.DrawFn) -> bytes:
    """A valid small batch with a few edits in its records, length and CRC fixed."""
    n = draw(st.integers(1, 4))
    batch = ref.encode_batch(
        draw(st.lists(st.one_of(st.none(), st.binary(max_size=8)), min_size=n, max_size=n)),
        keys=draw(st.lists(st.one_of(st.none(), st.binary(max_size=4)), min_size=n, max_size=n)),
        headers=draw(
            st.lists(
                st.lists(
                    st.tuples(st.sampled_from(["a", "é", ""]), st.binary(max_size=3)), max_size=2
                ),
                min_size=n,
                max_size=n,
            )
        ),
        timestamps=draw(st.lists(st.integers(-300, 300), min_size=n, max_size=n)),
    )
    buf = bytearray(batch)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(HEADER, len(buf)))
        byte = draw(st.integers(0, 255))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "insert" or pos == len(buf):
            buf.insert(pos, byte)
        elif op == "set":
            buf[pos] = byte
        else:
            del buf[pos]
    return with_length_and_crc(buf)


def _assert_fuzz_clean(data: bytes, crc_broken: bool) -> None:
    problems = check_against_reference(data, 500, crc_broken)
    assert not problems, f"input {data.hex()}:\n" + "\n".join(problems)


@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _assert_fuzz_clean(data, crc_broken=not _crc_matches(data))


@given(st.binary(max_size=120).map(lambda b: b"\xb1" + b))
def test_fuzz_bytes_with_magic(data: bytes) -> None:
    _assert_fuzz_clean(data, crc_broken=not _crc_matches(data))


@given(near_valid_batches())
def test_fuzz_crc_correct_batches(data: bytes) -> None:
    _assert_fuzz_clean(data, crc_broken=False)


@given(mutated_valid_batches())
def test_fuzz_crc_correct_mutated_batches(data: bytes) -> None:
    _assert_fuzz_clean(data, crc_broken=False)


def _crc_matches(data: bytes) -> bool:
    return len(data) >= 5 and int.from_bytes(data[1:5], "big") == ref.crc32c(data[5:])


if __name__ == "__main__":
    # Child mode: python test_codec_mutation.py SEED [GROUP]; the report is the last line.
    result = run_child(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
    print(json.dumps(result), flush=True)
