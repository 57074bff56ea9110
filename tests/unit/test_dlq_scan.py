"""Dead-letter tools at scale (D83): how many letters a listing or redrive reads, the
chunked redrive's cursor, and the filter the CLI and the console share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mqlite
from mqlite import cli
from mqlite._storage import log as _log

N = 3000  # letters in the big dead-letter topics below


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``reads[0]``: records decoded from any log since the last reset (the DLQ tools
    read the dead-letter topic through ``_storage.log.read_records``)."""
    real = _log.read_records
    n = [0]

    def counting(txn, dbs, pid, from_offset, max_records, out, *rest):
        before = len(out)
        try:
            return real(txn, dbs, pid, from_offset, max_records, out, *rest)
        finally:
            n[0] += len(out) - before

    monkeypatch.setattr(_log, "read_records", counting)
    yield n


def _letters(b: mqlite.Broker, n: int, *, reason: str = "smtp timeout",
             topic: str = "jobs", dlq: str = "jobs.dlq") -> None:
    """``n`` dead letters in ``dlq`` (original offsets 0..n-1 of ``topic``)."""
    if topic not in b.topics():
        b.create_topic(topic)
    b.send_batch(topic, [b"m%d" % i for i in range(n)])
    q = b.queue(topic, "w", dead_letter_topic=dlq)
    left = n
    while left:
        got = q.receive(max_messages=min(left, 1000), timeout=5.0)
        assert got
        q.dead_letter(got, reason=reason)
        left -= len(got)
    q.close()


@pytest.fixture
def big(tmp_broker_dir: Path) -> Iterator[str]:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        _letters(b, N // 2, reason="smtp timeout")
        _letters(b, N - N // 2, reason="invalid amount")  # original offsets N//2 .. N-1
    yield str(tmp_broker_dir)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert cli.main(["--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_redrive_in_chunks_reads_each_letter_about_once(
        big: str, reads: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """``mqlite dlq redrive`` of N letters in 500-letter chunks: the chunks resume
    where the last stopped (before D83 each re-read every undone letter, twice:
    ~8 N reads for N = 3000)."""
    reads[0] = 0
    assert _cli(capsys, "dlq", "redrive", big, "jobs.dlq", "--limit", str(N)) == \
        {"redriven": N}
    assert reads[0] <= N + 200, reads[0]
    with mqlite.open(big) as b:
        assert b.dead_letters("jobs.dlq") == []
        assert b.describe_topic("jobs").messages == 2 * N


def test_cli_filtered_redrive_and_listing_stop_early(
        big: str, reads: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    reads[0] = 0  # filter first, then limit: the first 10 "invalid" letters are at N//2
    got = _cli(capsys, "dlq", "list", big, "jobs.dlq", "--reason", "invalid", "--limit", "10")
    assert [d["original_offset"] for d in got] == list(range(N // 2, N // 2 + 10))
    assert reads[0] <= N // 2 + 200, reads[0]  # not all N
    reads[0] = 0
    assert _cli(capsys, "dlq", "list", big, "jobs.dlq", "--limit", "10") is not None
    assert reads[0] <= 200, reads[0]
    reads[0] = 0
    assert _cli(capsys, "dlq", "redrive", big, "jobs.dlq", "--reason", "invalid",
                "--limit", str(N)) == {"redriven": N - N // 2}
    assert reads[0] <= N + 200, reads[0]  # one pass, not one per chunk


def test_library_redrive_with_a_limit_reads_a_bounded_prefix(
        big: str, reads: list[int]) -> None:
    with mqlite.open(big) as b:
        reads[0] = 0
        assert b.redrive("jobs.dlq", limit=10) == 10
        assert reads[0] <= 200, reads[0]  # before D83: every undone letter, twice
        reads[0] = 0
        assert len(b.dead_letters("jobs.dlq", limit=5)) == 5
        assert reads[0] <= 200, reads[0]
        # a filter: reading stops at the limit-th match, wherever it is
        reads[0] = 0
        got = b.dead_letters("jobs.dlq", limit=3, where=lambda dl: "invalid" in (dl.reason or ""))
        assert [dl.original_offset for dl in got] == [N // 2, N // 2 + 1, N // 2 + 2]
        assert reads[0] <= N // 2 + 200, reads[0]


def test_cursor_resumes_past_refused_letters_and_sees_new_ones(
        big: str, reads: list[int]) -> None:
    """Chunks with a selective filter: the refused prefix is read once, not per chunk;
    letters dead-lettered after the cursor passed are still offered."""
    invalid = mqlite.DeadLetterFilter(reason="invalid")
    with mqlite.open(big) as b:
        cur = mqlite.DeadLetterCursor()
        reads[0] = 0
        total = 0
        while n := b.redrive("jobs.dlq", where=invalid, limit=300, cursor=cur):
            total += n
        assert total == N - N // 2
        assert reads[0] <= N + 200 * (N // 300 + 1), reads[0]
        assert cur.topic == "jobs.dlq" and cur.examined == N
        _letters(b, 5, reason="invalid again")
        assert b.redrive("jobs.dlq", where=invalid, cursor=cur) == 5
        assert cur.examined == N + 5
        assert b.redrive("jobs.dlq", where=invalid, cursor=cur) == 0
        # without the cursor the refused "timeout" letters are all still there
        assert len(b.dead_letters("jobs.dlq", limit=N)) == N // 2


def test_cursor_moves_only_when_the_redrive_commits(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        _letters(b, 20)
        cur = mqlite.DeadLetterCursor()

        def boom(dl: mqlite.DeadLetter) -> bool:
            if dl.original_offset == 15:
                raise RuntimeError("filter failed")
            return True

        with pytest.raises(RuntimeError):
            b.redrive("jobs.dlq", where=boom, cursor=cur)
        assert cur.examined == 0 and len(b.dead_letters("jobs.dlq")) == 20
        assert b.redrive("jobs.dlq", limit=7, cursor=cur) == 7
        assert cur.examined == 7
        assert b.redrive("jobs.dlq", cursor=cur) == 13
        with pytest.raises(ValueError, match="belongs to 'jobs.dlq'"):
            b.redrive("other.dlq", cursor=cur)
        with pytest.raises(TypeError, match="DeadLetterCursor"):
            b.redrive("jobs.dlq", cursor={})  # type: ignore[arg-type]


def test_a_letter_purged_between_the_scan_and_the_write_is_not_redriven(
        tmp_broker_dir: Path) -> None:
    """The write transaction re-checks each chosen letter (a lookup, not a scan)."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        _letters(b, 10)
        purged: list[int] = []

        def purge_offset_3_then_take(dl: mqlite.DeadLetter) -> bool:
            if not purged:  # runs outside any transaction, so it may write
                purged.append(b.purge_dead_letters("jobs.dlq",
                                                   where=lambda d: d.original_offset == 3))
            return True

        assert b.redrive("jobs.dlq", where=purge_offset_3_then_take) == 9
        assert purged == [1]
        assert [m.value for m in b.read("jobs", 0, 10, 20)] == \
            [b"m%d" % i for i in range(10) if i != 3]


def test_purge_with_a_filter_marks_only_the_matches(big: str) -> None:
    with mqlite.open(big) as b:
        n = b.purge_dead_letters("jobs.dlq", where=mqlite.DeadLetterFilter(
            from_offset_min=10, from_offset_max=19))
        assert n == 10
        left = b.dead_letters("jobs.dlq", limit=N)
        assert len(left) == N - 10
        assert not [dl for dl in left if 10 <= (dl.original_offset or 0) <= 19]


# -- the shared filter ----------------------------------------------------------------------

def _dl(**kw: object) -> mqlite.DeadLetter:
    base: dict[str, object] = {
        "offset": 0, "partition": 0, "original_topic": "jobs", "original_partition": 1,
        "original_offset": 7, "delivery_count": 3, "reason": "smtp timeout", "last_error": None,
        "original_group": "w", "first_delivery_ms": None, "last_delivery_ms": None,
        "dead_lettered_ms": None, "message": None}
    base.update(kw)
    return mqlite.DeadLetter(**base)  # type: ignore[arg-type]


def test_filter_matches_every_given_field() -> None:
    f = mqlite.DeadLetterFilter
    assert f()(_dl())
    assert f(reason="timeout")(_dl()) and not f(reason="Timeout")(_dl())
    assert not f(reason="timeout")(_dl(reason=None))
    assert f(from_topic="jobs")(_dl()) and not f(from_topic="job")(_dl())
    assert f(from_partition=1)(_dl()) and not f(from_partition=0)(_dl())
    assert not f(from_partition=1)(_dl(original_partition=None))
    assert f(from_offset_min=7, from_offset_max=7)(_dl())
    assert not f(from_offset_min=8)(_dl()) and not f(from_offset_max=6)(_dl())
    assert not f(from_offset_min=0)(_dl(original_offset=None))
    assert not f(reason="timeout", from_partition=0)(_dl())
    assert "reason='x'" in repr(f(reason="x"))


@pytest.mark.parametrize(("kw", "err", "says"), [
    ({"reason": ""}, ValueError, "reason needs a non-empty value"),
    ({"from_topic": 3}, TypeError, "from_topic must be str, not int"),
    ({"from_partition": -1}, ValueError, "from_partition is a partition number, at least 0"),
    ({"from_offset_min": True}, TypeError, "from_offset_min must be int, not bool"),
    ({"from_offset_max": 2**63}, ValueError, "from_offset_max is an offset"),
    ({"from_offset_min": 5, "from_offset_max": 4}, ValueError,
     "from_offset_min 5 is above from_offset_max 4: nothing would match"),
])
def test_filter_refuses_bad_values(kw: dict[str, object], err: type[Exception],
                                   says: str) -> None:
    with pytest.raises(err, match=says):
        mqlite.DeadLetterFilter(**kw)  # type: ignore[arg-type]
    with pytest.raises(err, match="field " + says.split()[0]):
        from mqlite.queue.deadletters import dead_letter_filter

        dead_letter_filter(**kw, label=lambda n: "field " + n)  # type: ignore[arg-type]


def test_no_filter_given_is_none() -> None:
    from mqlite.queue.deadletters import dead_letter_filter

    assert dead_letter_filter() is None
    assert isinstance(dead_letter_filter(from_partition=0), mqlite.DeadLetterFilter)
