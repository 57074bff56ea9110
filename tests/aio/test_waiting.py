"""Waiting in the event loop: wake-ups across processes, wakeup(), close, cancellation.

A waiting ``poll`` / ``receive`` holds no thread (it is registered with the
loop's doorbell); cancelling it returns everything at once; a wake-up from
another process reaches it.  Children are real processes (``_procs_aio.py``)
synchronised through their stdout, never by sleeping.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mqlite
import mqlite.aio
from mqlite import _liveness
from mqlite.aio._runner import WORKERS
from mqlite.queue import Delivery

HERE = Path(__file__).resolve().parent
SRC = str(Path(mqlite.__file__).resolve().parent.parent)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Sender:
    """A child process that sends one message per ``go()`` to its topics."""

    def __init__(self, path: Path, topics: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, env_path()]),
                   PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([sys.executable, str(HERE / "_procs_aio.py"), "send",
                                   str(path), *topics], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline().strip()

    def go(self, text: str = "m") -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def wait_sent(self) -> None:
        assert self._line() == "sent"

    def close(self) -> None:
        if self.p.stdin is not None:
            self.p.stdin.close()
        try:
            self.p.wait(30)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
            if self.p.stdout is not None:
                self.p.stdout.close()


def env_path() -> str:
    return os.environ.get("PYTHONPATH", "")


@pytest.fixture
def path(tmp_broker_dir: Path) -> Iterator[Path]:
    yield tmp_broker_dir


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(params=["uring", "thread"])
def bell_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the loop watches its doorbell: io_uring (default where the kernel can) or the
    bell thread (``MQLITE_AIO_URING=0``, and kernels older than 6.7)."""
    monkeypatch.setenv("MQLITE_AIO_URING", "1" if request.param == "uring" else "0")
    return str(request.param)


def _check_bell_mode(b: Any, mode: str) -> None:
    bell = b._bell()
    if mode == "uring" and not bell.via_uring:
        pytest.skip("no futex waits through io_uring here (Linux >= 6.7): the bell thread "
                    "is used, as the 'thread' case tests")
    assert bell.via_uring == (mode == "uring")
    names = [t.name for t in threading.enumerate()]
    assert ("mqlite-aio-bell" in names) == (mode == "thread"), names


def test_poll_wakes_on_send_from_another_process(path: Path, bell_mode: str) -> None:
    async def main() -> None:
        async with mqlite.aio.open(path) as b:
            await b.create_topic("t")
            c = b.consumer("t", group="g")
            assert await c.poll(timeout=0.01) == []
            _check_bell_mode(b, bell_mode)
            sender = await asyncio.to_thread(Sender, path, ["t"])
            try:
                task = asyncio.create_task(c.poll(timeout=30))
                while b._bell().waiting() == 0:  # registered: the wait is armed
                    await asyncio.sleep(0.001)
                sender.go("hello")
                async with asyncio.timeout(10):  # a lost wake-up would take 30 s
                    msgs = await task
                assert [m.value for m in msgs] == [b"hello"]
            finally:
                await asyncio.to_thread(sender.close)
            await c.close()

    run(main())


def test_one_send_wakes_a_loop_and_a_sleeping_thread_on_the_same_word(path: Path) -> None:
    """The word's waiter count keeps event loops and sleeping threads apart (D52): a bump
    must still ring the loop's doorbell and FUTEX_WAKE the thread when both wait."""

    async def main() -> None:
        async with mqlite.aio.open(path, durability="none") as b:
            await b.create_topic("t")
            c = b.consumer("t")
            assert await c.poll(timeout=0.01) == []
            blocking = mqlite.open(path, durability="none")
            sc = blocking.consumer("t")
            assert sc.poll(timeout=0.01) == []
            got: list[bytes | None] = []
            entered = threading.Event()

            def sync_poll() -> None:
                entered.set()
                got.extend(m.value for m in sc.poll(timeout=30))

            t = threading.Thread(target=sync_poll)
            sender = await asyncio.to_thread(Sender, path, ["t"])
            try:
                t.start()
                await asyncio.to_thread(entered.wait, 30)
                task = asyncio.create_task(c.poll(timeout=30))
                while b._bell().waiting() == 0:
                    await asyncio.sleep(0.001)
                sender.go("both")
                async with asyncio.timeout(10):  # a lost wake-up would take 30 s
                    msgs = await task
                assert [m.value for m in msgs] == [b"both"]
                await asyncio.to_thread(t.join, 10)
                assert not t.is_alive(), "the sleeping thread was not woken"
                assert got == [b"both"]
            finally:
                await asyncio.to_thread(sender.close)
                sc.close()
                blocking.close()
            await c.close()

    run(main())


def _resumed_inline() -> bool:
    """Whether the running task was resumed by an ``InlineFuture`` (it is on the stack:
    ``set_result`` resumes it itself, D72; a cancel or an exception through ``_resume``)."""
    f: Any = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name in ("_resume", "set_result") \
                and f.f_code.co_filename.endswith("_future.py"):
            return True
        f = f.f_back
    return False


def test_a_ring_resumes_the_polls_inside_the_reader_callback(path: Path, bell_mode: str) -> None:
    """D48: the doorbell's reader callback resolves the waits' ``InlineFuture``s, so each
    woken ``poll`` returns inside that callback (no extra loop iteration); the resumed
    tasks arm and disarm waits on the same word while the callback walks the waits, and
    one of them closes its consumer there: every poll still gets its message."""

    async def main() -> None:
        async with mqlite.aio.open(path, durability="none") as b:
            await b.create_topic("t")
            cs = [b.consumer("t") for _ in range(3)]
            for c in cs:
                assert await c.poll(timeout=0.01) == []
            _check_bell_mode(b, bell_mode)
            bell = b._bell()
            sender = await asyncio.to_thread(Sender, path, ["t"])
            inside: list[bool] = []

            async def reader(i: int, c: Any) -> list[bytes]:
                got: list[bytes] = []
                while len(got) < 2:
                    msgs = await c.poll(timeout=30)
                    inside.append(_resumed_inline())
                    got += [m.value for m in msgs]
                    if i == 0 and len(got) == 2:
                        await c.close()  # inside the reader callback, with others waiting
                return got

            try:
                tasks = [asyncio.create_task(reader(i, c)) for i, c in enumerate(cs)]
                for text in ("a", "b"):
                    while bell.waiting() < len(cs):  # every poll armed on the word
                        await asyncio.sleep(0.001)
                    sender.go(text)
                    await asyncio.to_thread(sender.wait_sent)
                async with asyncio.timeout(10):  # a lost wake-up would take 30 s
                    results = await asyncio.gather(*tasks)
            finally:
                await asyncio.to_thread(sender.close)
            assert results == [[b"a", b"b"]] * 3
            assert inside and all(inside), inside
            assert bell.waiting() == 0

    run(main())


def test_every_wake_up_in_a_row_is_delivered(path: Path, bell_mode: str) -> None:
    """One message at a time from another process, 100 times: each waiting poll wakes.
    With io_uring the ring word's wait is submitted again only when the next wait is
    armed (D44), so this exercises that re-submission on every round."""

    async def main() -> None:
        async with mqlite.aio.open(path, durability="none") as b:
            await b.create_topic("t")
            c = b.consumer("t")
            assert await c.poll(timeout=0.01) == []
            _check_bell_mode(b, bell_mode)
            bell = b._bell()
            sender = await asyncio.to_thread(Sender, path, ["t"])
            try:
                for i in range(100):
                    task = asyncio.create_task(c.poll(timeout=30))
                    while bell.waiting() == 0:
                        await asyncio.sleep(0)
                    sender.go(f"m{i}")
                    async with asyncio.timeout(10):  # a lost wake-up would take 30 s
                        msgs = await task
                    assert [m.value for m in msgs] == [f"m{i}".encode()]
                    await asyncio.to_thread(sender.wait_sent)
            finally:
                await asyncio.to_thread(sender.close)
            assert bell.waiting() == 0

    run(main())


def test_uring_wait_is_submitted_lazily_and_no_ring_is_lost(path: Path) -> None:
    """io_uring doorbell (D44): the compiled reader callback resolves the moved wait and
    submits nothing; a wait still registered gets the ring word's wait submitted again
    after the resumed task ran, and a bump in between (while nothing is submitted) is
    caught by the re-read that follows the submission; the next arm submits too."""

    async def main() -> None:
        async with mqlite.aio.open(path, durability="none") as b:
            await b.create_topic("t")
            c = b.consumer("t")
            assert await c.poll(timeout=0.01) == []
            bell = b._bell()
            if not bell.via_uring:
                pytest.skip("no futex waits through io_uring here (Linux >= 6.7)")
            n = b.sync.notifier
            u = bell._uring
            assert u.armed
            loop = asyncio.get_running_loop()
            s1, s2 = 5, 6
            f1: asyncio.Future[bool] = loop.create_future()
            f2: asyncio.Future[bool] = loop.create_future()
            r1 = bell.arm(s1, n.load(s1), 30.0, f1)
            r2 = bell.arm(s2, n.load(s2), 30.0, f2)
            n.bump(s1)  # rings this loop's doorbell (the bell armed slot s1)
            async with asyncio.timeout(10):
                assert await f1 is True
            # resumed before the re-submission: nothing is submitted now, f2 still waits
            assert not u.armed and not f2.done()
            bell.disarm(r1)
            n.bump(s2)  # nothing submitted: only the re-read after the submission sees it
            async with asyncio.timeout(10):
                assert await f2 is True
            bell.disarm(r2)
            assert bell.waiting() == 0
            # no wait left after a ring: nothing is submitted until the next arm
            f3: asyncio.Future[bool] = loop.create_future()
            r3 = bell.arm(s1, n.load(s1), 30.0, f3)
            assert u.armed
            n.bump(s1)
            async with asyncio.timeout(10):
                assert await f3 is True
            await asyncio.sleep(0)  # let a (no-op) re-submission callback run
            bell.disarm(r3)
            assert not u.armed
            f4: asyncio.Future[bool] = loop.create_future()
            r4 = bell.arm(s2, n.load(s2), 30.0, f4)
            assert u.armed  # submitted by arm() itself
            n.bump(s2)
            async with asyncio.timeout(10):
                assert await f4 is True
            bell.disarm(r4)
            await c.close()

    run(main())


@pytest.mark.parametrize("mode", ["poll", "receive"])
def test_thousand_waiting_tasks_hold_no_threads_and_each_wakes(path: Path, mode: str,
                                                               bell_mode: str) -> None:
    """1,000 tasks each waiting on its own topic (stream consumers or queue consumers):
    no thread per wait, and for queues one liveness watcher thread for all of them (D32),
    fewer than 8 threads in all; one message per topic from another process wakes each."""
    n = 1000
    topics = [f"t{i}" for i in range(n)]

    async def main() -> None:
        # Threads are judged by identity, not counted: a thread an earlier test left
        # behind (running, or ending meanwhile) must not change the verdict.
        preexisting = set(threading.enumerate())
        async with mqlite.aio.open(path, durability="none") as b:
            for t in topics:
                await b.create_topic(t)
            before = set(threading.enumerate())
            consumers: list[Any]
            if mode == "poll":
                consumers = [b.consumer(t) for t in topics]
                tasks = [asyncio.create_task(c.poll(timeout=30)) for c in consumers]
            else:
                consumers = [await b.queue(t, "g").start() for t in topics]
                tasks = [asyncio.create_task(c.receive(timeout=30)) for c in consumers]
            while b._bell().waiting() < n:
                await asyncio.sleep(0.01)
            _check_bell_mode(b, bell_mode)
            # waiting holds no thread: at most the broker's worker pool, the bell thread
            # and (queues) the process's one liveness watcher exist
            ours = [t for t in threading.enumerate() if t not in preexisting
                    or t is _liveness._hub.thread]
            names = [t.name for t in ours
                     if t.name != "mqlite-liveness" or t is _liveness._hub.thread]
            assert sum(name == "mqlite-liveness" for name in names) == (mode == "receive")
            started = [t.name for t in ours if t not in before]
            assert len(started) <= WORKERS + 2, started
            assert len(names) + 1 < 8, names  # with the main thread: fewer than 8 in all
            sender = await asyncio.to_thread(Sender, path, topics)
            try:
                sender.go("x")
                async with asyncio.timeout(20):
                    results = await asyncio.gather(*tasks)
                await asyncio.to_thread(sender.wait_sent)
            finally:
                await asyncio.to_thread(sender.close)
            for t, msgs in zip(topics, results, strict=True):
                assert [(m.topic, m.value) for m in msgs] == [(t, b"x")]
            assert b._bell().waiting() == 0
            for c in consumers:
                await c.close()

    run(main())


def test_cancelling_thousand_waits_returns_every_resource(path: Path) -> None:
    n = 1000

    async def main() -> None:
        async with mqlite.aio.open(path, durability="none") as b:
            await b.create_topic("a")
            await b.create_topic("q")
            consumers = [b.consumer("a") for _ in range(n // 2)]
            queue = await b.queue("q", "g").start()
            assert await consumers[0].poll(timeout=0.01) == []  # bell claimed, pool started
            assert await queue.receive(timeout=0.01) == []
            fds, threads = _fds(), threading.active_count()
            tasks: list[asyncio.Task[Any]] = [asyncio.create_task(c.poll(timeout=30))
                                              for c in consumers]
            tasks += [asyncio.create_task(queue.receive(timeout=30)) for _ in range(n // 2)]
            while b._bell().waiting() < n:
                await asyncio.sleep(0.01)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert all(t.cancelled() for t in tasks)
            # returned at once: no wait registered, no descriptor or thread left behind
            assert b._bell().waiting() == 0
            assert _fds() == fds
            # the only threads are the broker's bounded worker pool (started on demand)
            assert threading.active_count() <= threads + WORKERS
            await queue.close()

    run(main())


def test_waits_share_one_deadline_timer_in_deadline_order(path: Path) -> None:
    """All waits of a loop share one timer: each still ends at its own timeout, in
    order, whatever ends earlier; cancelled waits leave no timer and their stale
    entries do not pile up."""

    async def main() -> None:
        async with mqlite.aio.open(path, durability="none") as b:
            await b.create_topic("t")
            cs = [b.consumer("t") for _ in range(4)]
            await cs[0].poll(timeout=0.01)
            bell = b._bell()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            ended: dict[int, float] = {}

            async def wait(i: int, timeout: float) -> None:
                assert await cs[i].poll(timeout=timeout) == []
                ended[i] = loop.time() - t0

            long = asyncio.create_task(wait(0, 0.6))
            first = asyncio.create_task(cs[1].poll(timeout=30))  # cancelled below
            mid = asyncio.create_task(wait(2, 0.3))
            short = asyncio.create_task(wait(3, 0.1))
            while bell.waiting() < 4:
                await asyncio.sleep(0.001)
            first.cancel()
            await asyncio.gather(long, mid, short)
            with pytest.raises(asyncio.CancelledError):
                await first
            assert sorted(ended, key=ended.__getitem__) == [3, 2, 0]
            assert ended[3] >= 0.1 and ended[2] >= 0.3 and ended[0] >= 0.6
            assert ended[0] < 20  # far below the cancelled 30 s wait
            # 1,000 waits cancelled: their entries are compacted away, not kept 30 s
            many = [b.consumer("t") for _ in range(1000)]
            for _ in range(3):
                tasks = [asyncio.create_task(c.poll(timeout=30)) for c in many]
                while bell.waiting() < len(many):
                    await asyncio.sleep(0.001)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            assert bell.waiting() == 0
            assert len(bell._heap) <= 2 * len(many)

    run(main())


def test_timeout_context_ends_the_wait(path: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(path) as b:
            await b.create_topic("t")
            c = b.consumer("t")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await c.poll(timeout=30)
            assert b._bell().waiting() == 0
            await b.send("t", b"after")
            assert [m.value for m in await c.poll(timeout=5)] == [b"after"]

    run(main())


def test_wakeup_from_another_thread_ends_poll_and_receive(path: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(path) as b:
            await b.create_topic("t")
            c = b.consumer("t")
            q = b.queue("t", "g")
            await q.start()
            assert await q.receive(timeout=0.01) == []
            for obj, call in ((c, lambda: c.poll(timeout=30)),
                              (q, lambda: q.receive(timeout=30))):
                task = asyncio.create_task(call())
                while b._bell().waiting() == 0:
                    await asyncio.sleep(0.001)
                await asyncio.to_thread(obj.wakeup)
                async with asyncio.timeout(10):
                    assert await task == []
            # a wakeup with no call waiting makes the next call return without waiting
            c.wakeup()
            async with asyncio.timeout(10):
                assert await c.poll(timeout=30) == []
            assert await c.poll(timeout=0.01) == []  # and only that one

    run(main())


def test_close_ends_waiting_calls(path: Path) -> None:
    async def main() -> None:
        b = await mqlite.aio.open(path)
        await b.create_topic("t")
        c = b.consumer("t", group="g")
        assert await c.poll(timeout=0.01) == []
        task = asyncio.create_task(c.poll(timeout=30))
        while b._bell().waiting() == 0:
            await asyncio.sleep(0.001)
        await c.close()
        async with asyncio.timeout(10):
            assert await task == []
        c2 = b.consumer("t")
        task = asyncio.create_task(c2.poll(timeout=30))
        while b._bell().waiting() == 0:
            await asyncio.sleep(0.001)
        await b.close()
        async with asyncio.timeout(10):
            result = await asyncio.gather(task, return_exceptions=True)
        assert result[0] == [] or isinstance(result[0], mqlite.ClosedError)

    run(main())


def test_coroutine_rebalance_callbacks_are_awaited(path: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(path) as b:
            await b.create_topic("t", partitions=2)
            seen: list[tuple[str, list[Any]]] = []

            async def on_assign(tps: list[Any]) -> None:
                await asyncio.sleep(0)
                seen.append(("assign", tps))

            loop_thread = threading.get_ident()

            def on_revoke(tps: list[Any]) -> None:
                assert threading.get_ident() != loop_thread  # never blocks the loop
                seen.append(("revoke", tps))

            c = b.consumer("t", group="g", on_assign=on_assign, on_revoke=on_revoke)
            await c.poll(timeout=0.05)
            assert seen == [("assign", [mqlite.TopicPartition("t", 0),
                                        mqlite.TopicPartition("t", 1)])]
            await c.close()
            assert seen[-1][0] == "revoke"

    run(main())


def test_cancelled_group_poll_loses_no_message(path: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(path, durability="none") as b:
            await b.create_topic("t")
            c = b.consumer("t", group="g")
            await c.poll(timeout=0.01)
            for i in range(20):
                await b.send("t", b"%d" % i)
                task = asyncio.create_task(c.poll(timeout=5))
                for _ in range(i % 4):
                    await asyncio.sleep(0)
                task.cancel()
                got: Any = await asyncio.gather(task, return_exceptions=True)
                if got[0] == [] or isinstance(got[0], asyncio.CancelledError):
                    async with asyncio.timeout(10):
                        got = [await c.poll(timeout=5)]
                assert [m.value for m in got[0]] == [b"%d" % i]

    run(main())


def test_cancelled_receive_gives_messages_back_at_once(path: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(path, durability="none") as b:
            await b.create_topic("t")
            q = await b.queue("t", "g", visibility_timeout=300).start()
            for i in range(10):
                await b.send("t", b"%d" % i)
                task = asyncio.create_task(q.receive(timeout=5))
                for _ in range(i % 3):
                    await asyncio.sleep(0)
                task.cancel()
                got: Any = await asyncio.gather(task, return_exceptions=True)
                if not isinstance(got[0], list) or not got[0]:
                    async with asyncio.timeout(10):  # not held for the 300 s visibility
                        got = [await q.receive(timeout=5)]
                assert [d.value for d in got[0]] == [b"%d" % i]
                await q.ack(got[0])

    run(main())


def test_concurrent_producer_sends_all_resolve(path: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(path) as b:
            await b.create_topic("t")
            p = b.producer()

            async def one(i: int) -> Any:
                return await p.send("t", b"%d" % i)

            mds = await asyncio.gather(*(one(i) for i in range(256)))
            assert sorted(md.offset for md in mds) == list(range(256))
            with pytest.raises(mqlite.TopicNotFoundError):
                await p.send("missing", b"v")
            await p.close()

    run(main())


def test_waits_fall_back_to_threads_when_no_doorbell_is_free(path: Path) -> None:
    with mqlite.open(path) as sync:
        sync.create_topic("t")
        n = sync.notifier
        claimed = [n.bell_claim() for _ in range(mqlite.aio._bell.MAX_BELLS)]  # all of them
        try:
            async def main() -> None:
                async with mqlite.aio.open(path) as b:
                    assert not b._bell().has_doorbell
                    c = b.consumer("t")
                    task = asyncio.create_task(c.poll(timeout=30))
                    await asyncio.sleep(0.05)
                    await b.send("t", b"v")
                    async with asyncio.timeout(10):
                        assert [m.value for m in await task] == [b"v"]

            run(main())
        finally:
            for index in claimed:
                n.bell_release(index)


def test_receive_builds_async_deliveries_directly(tmp_path: Path) -> None:
    """D43: the receive builds AsyncDelivery objects (Delivery subclasses), no wrappers."""
    async def main() -> None:
        async with mqlite.aio.open(tmp_path / "b", durability="none") as b:
            await b.create_topic("t")
            await b.send_batch("t", [b"a", b"b", b"c"])
            q = await b.queue("t", "g").start()
            ds = await q.receive(10, timeout=5)
            assert [d.value for d in ds] == [b"a", b"b", b"c"]
            assert all(type(d) is mqlite.aio.AsyncDelivery and isinstance(d, Delivery) for d in ds)
            plain = ds[2].sync
            assert type(plain) is Delivery and plain.receipt == ds[2].receipt
            assert repr(ds[0]).startswith("AsyncDelivery(")
            await ds[0].ack()
            assert await q.ack(ds[1:2]) == 1
            q.sync.nack(plain, delay=0)  # the plain copy settles the same delivery
            again = await q.receive(10, timeout=5)
            assert [d.value for d in again] == [b"c"] and again[0].delivery_count == 2
            await again[0].ack()
            with pytest.raises(TypeError):
                q.sync.receive_step(1, cls=dict)  # type: ignore[arg-type]
            await q.close()

    asyncio.run(main())
