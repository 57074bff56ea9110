"""SIGKILL of an exactly-once App worker in the middle of a Kafka transaction (D39).

Real processes: ``mqlite run eos_kill:app --workers 2`` on the session's
wheel broker.  The first transaction that carries outputs stops after
flushing them to the broker (its records are in the log, the transaction is
open), announces its pid through a file and waits; the test SIGKILLs that
worker.  The supervisor starts worker *i* again, which claims worker *i*'s
transactional id and so aborts the open transaction; the partition moves to
a live member, which handles the records again.  Checked: every input has
exactly one committed output, none from the killed process, and the
outputs are readable (``read_committed``) without waiting for a
transaction timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _kafka_server import KILL_UNSUPPORTED
from _polling import wait_until

pytest.importorskip("confluent_kafka")

import mqlite
from mqlite import TopicPartition

SRC = str(Path(mqlite.__file__).resolve().parent.parent)

TIMEOUT = 240.0
OPTS = {"log_level": 3}

APP = '''
import os
import time

import mqlite
from mqlite.kafka.transaction import KafkaTransaction

MARK = os.environ["EOS_MARK"]
_commit = KafkaTransaction.commit


def commit(self):
    """Once armed, the first transaction with outputs stops here, open, until SIGKILLed."""
    if not self._sent or not os.path.exists(MARK + ".armed"):
        return _commit(self)
    try:
        fd = os.open(MARK + ".claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return _commit(self)
    os.close(fd)
    self._producer.flush()  # the records are in the log, their transaction open
    with open(MARK + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(MARK + ".tmp", MARK)
    while True:
        time.sleep(3600)


KafkaTransaction.commit = commit

app = mqlite.App(os.environ["EOS_URL"], name="eoskill", partitions=2)


@app.subscriber(os.environ["EOS_IN"], group=os.environ["EOS_GROUP"], exactly_once=True)
@app.publisher(os.environ["EOS_OUT"])
def handle(order: dict) -> dict:
    return {"id": order["id"], "pid": os.getpid()}
'''


def _send(b: Any, topic: str, ids: range) -> None:
    b.send_batch(topic, [msgspec.json.encode({"id": i}) for i in ids],
                 keys=[str(i).encode() for i in ids])


class _Reader:
    """Reads ``topic`` from the start, ``read_committed``, keeping what it read."""

    def __init__(self, b: Any, topic: str) -> None:
        self.c = b.consumer(None)
        self.c.assign([TopicPartition(topic, p) for p in range(b.partitions_for(topic))])
        self.topic = topic
        self.out: list[dict[str, int]] = []

    def read_until(self, n: int) -> None:
        """Until ``n`` committed messages were read in all; fail after TIMEOUT."""
        end = time.monotonic() + TIMEOUT
        while len(self.out) < n:
            assert time.monotonic() < end, \
                f"{self.topic}: {len(self.out)} of {n} committed messages"
            self.out += [msgspec.json.decode(m.value) for m in self.c.poll(1000, timeout=1.0)]

    def close(self) -> None:
        self.c.close()


def test_sigkilled_exactly_once_worker_loses_nothing_and_duplicates_nothing(
        kafka_server: Any, tmp_path: Path) -> None:
    if kafka_server.kind in KILL_UNSUPPORTED:
        pytest.skip(KILL_UNSUPPORTED[kafka_server.kind])
    url = kafka_server.url
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out, group = f"eos-in-{tag}", f"eos-out-{tag}", f"eos-{tag}"
    n = 200  # sent once armed
    (tmp_path / "eos_kill.py").write_text(APP)
    mark = tmp_path / "in-transaction.pid"
    env = dict(os.environ, EOS_URL=url, EOS_IN=topic_in, EOS_OUT=topic_out, EOS_GROUP=group,
               EOS_MARK=str(mark), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), SRC, os.environ.get("PYTHONPATH", "")]))
    with mqlite.open(url, client_options=OPTS) as b:
        b.create_topic(topic_in, partitions=2)
        b.create_topic(topic_out, partitions=2)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mqlite", "run", "eos_kill:app", "--workers", "2",
             "--log-level", "warning"], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # 1. warm up until both workers have committed outputs: the group is stable,
            # one partition each (a rebalance that waits for the member about to be
            # killed is another matter: docs/scale-out.md, noida-db's group coordinator)
            reader = _Reader(b, topic_out)
            sent = 0
            while len({o["pid"] for o in reader.out}) < 2:
                assert sent < 20_000, f"one worker handled all of {sent} warm-up records"
                _send(b, topic_in, range(sent, sent + 20))
                sent += 20
                reader.read_until(sent)
            # 2. armed: the next transaction with outputs stops with its records in the
            # log, its transaction open; SIGKILL that worker there
            (tmp_path / "in-transaction.pid.armed").touch()
            _send(b, topic_in, range(sent, sent + n))
            wait_until(mark.exists, TIMEOUT, "a worker to stop inside an open transaction",
                       step=0.05)
            zombie = int(mark.read_text())
            os.kill(zombie, signal.SIGKILL)
            total = sent + n
            reader.read_until(total)
            reader.close()
            proc.send_signal(signal.SIGTERM)
            log = proc.communicate(timeout=TIMEOUT)[0].decode(errors="replace")
            assert proc.returncode == 0, log
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        # read everything again now that nothing runs: exactly one output per input
        again = _Reader(b, topic_out)
        again.read_until(total)
        again.close()
        out = again.out
        ends = {p.partition: p.end_offset for p in b.describe_topic(topic_in).partitions}
        committed = b.committed_offsets(group, topic_in)
    assert len(out) == total
    assert Counter(o["id"] for o in out) == Counter(range(total))
    assert zombie not in {o["pid"] for o in out if o["id"] >= sent}, \
        "the killed worker's open transaction was committed"
    assert committed == ends


ZOMBIE = '''
import os
import sys
import time

import mqlite
from mqlite.kafka.txid import claim_transactional_id

url, topic, scope, mark = sys.argv[1:5]
b = mqlite.open(url, client_options={"log_level": 3})
claim = claim_transactional_id("mqlite-test", scope, url, 0)
b.init_transactions(claim.transactional_id)
tx = b.transaction(transactional_id=claim.transactional_id).__enter__()
for i in range(5):
    tx.send(topic, b"zombie-%d" % i)
tx._producer.flush()  # in the log, the transaction open
with open(mark + ".tmp", "w") as f:
    f.write(claim.transactional_id)
os.rename(mark + ".tmp", mark)
while True:
    time.sleep(3600)
'''


def test_restarted_slot_aborts_a_killed_producers_open_transaction(
        kafka_server: Any, tmp_path: Path) -> None:
    """The mechanism the App relies on, on the wheel broker: a SIGKILLed process's slot
    (and so its transactional id) goes to the next claimant, whose init_transactions
    aborts the open transaction at once; while it lives, nobody else gets that id."""
    if kafka_server.kind == "tansu":
        pytest.skip(KILL_UNSUPPORTED["tansu"])
    from mqlite.kafka import KafkaBroker
    from mqlite.kafka.txid import claim_transactional_id

    url = kafka_server.url
    tag = uuid.uuid4().hex[:6]
    topic, scope = f"fence-{tag}", f"scope-{tag}"
    mark = tmp_path / "zombie.tid"
    with mqlite.open(url, client_options=OPTS) as b:
        assert isinstance(b, KafkaBroker)  # a kafka:// URL
        b.create_topic(topic)
        child = subprocess.Popen(
            [sys.executable, "-c", ZOMBIE, url, topic, scope, str(mark)],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                [SRC, os.environ.get("PYTHONPATH", "")])))
        try:
            wait_until(lambda: mark.exists() or child.poll() is not None, TIMEOUT,
                       "the child to open its transaction", step=0.05)
            assert child.poll() is None, "the child failed"
            zombie_tid = mark.read_text()
            other = claim_transactional_id("mqlite-test", scope, url, 0)
            assert other.transactional_id != zombie_tid  # a live process keeps its id
            other.release()
            b.send(topic, b"after")
            reader = b.consumer(None)
            reader.assign([TopicPartition(topic, 0)])
            assert reader.poll(10, timeout=1.0) == []  # held back by the open transaction
        finally:
            child.kill()
            child.wait(30)
        claim = claim_transactional_id("mqlite-test", scope, url, 0)
        try:
            assert claim.transactional_id == zombie_tid  # the dead process's id, at once
            b.init_transactions(claim.transactional_id)  # fences it, aborts its transaction
            got: list[bytes | None] = []
            end = time.monotonic() + TIMEOUT
            while not got:
                assert time.monotonic() < end, "the aborted transaction still holds readers"
                got = [m.value for m in reader.poll(10, timeout=1.0)]
            assert got == [b"after"]
            reader.close()
        finally:
            b.end_transactions(claim.transactional_id)
            claim.release()
