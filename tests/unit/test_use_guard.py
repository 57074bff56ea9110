"""The compiled UseGuard (D53): every rule of ``mqlite._lifecycle`` on the guard itself.

The consumer-level behaviour (close from signal handlers, wakeups ending blocked
polls, four threads sharing a consumer) is in ``test_lifecycle.py``; here each
rule is checked directly, and hammered from several threads: the guard takes no
lock on enter/exit, so its atomicity under the GIL is what keeps two threads
out of an exclusive owner at once.  Threads synchronise on events and barriers.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import pytest

import mqlite
from mqlite._lifecycle import UseGuard, guarded, guarded_loop_step, guarded_one

T = 30  # seconds: generous bound for every event wait


def _guard(exclusive: bool = True) -> tuple[UseGuard, list[int]]:
    rang: list[int] = []
    return UseGuard("consumer", lambda: rang.append(1), exclusive=exclusive), rang


def _in_thread(fn: Callable[[], object]) -> object:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except (mqlite.ClosedError, mqlite.ConcurrentAccessError) as exc:  # for the caller
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(T)
    assert not t.is_alive()
    return out[0]


def _race(targets: list[Callable[[], None]]) -> None:
    """Run ``targets`` in threads, each starting at one barrier, with the interpreter
    switching threads as often as it can (1 µs); returns once all have finished."""
    barrier = threading.Barrier(len(targets), timeout=T)

    def start(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            fn()
        return run

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=start(fn)) for fn in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T * 4)
    finally:
        sys.setswitchinterval(old)


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="callable"):
        UseGuard("consumer", 3, exclusive=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        UseGuard(b"consumer", lambda: None, exclusive=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        UseGuard(None, lambda: None, exclusive=True)  # type: ignore[arg-type]


def test_nesting_on_one_thread_and_exclusive_refusal_of_another() -> None:
    g, _ = _guard()
    g.enter()
    g.enter()  # a callback calling back into the owner on the same thread
    assert g.inside() and g._users == {threading.get_ident(): 2}
    err = _in_thread(g.enter)
    assert isinstance(err, mqlite.ConcurrentAccessError)
    assert "one consumer per thread" in str(err)
    assert g.exit() is False
    assert g.inside()
    assert g.exit() is False
    assert not g.inside() and g._users == {}

    def enter_exit() -> bool:
        g.enter()
        return g.exit()
    assert _in_thread(enter_exit) is False  # free again
    assert g.exit() is False  # exit without enter: nothing happens


def test_a_shared_guard_admits_several_threads() -> None:
    g, _ = _guard(exclusive=False)
    g.enter()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        g.enter()
        inside.set()
        leave.wait(T)
        g.exit()

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(T)
    assert len(g._users) == 2
    leave.set()
    t.join(T)
    g.exit()
    assert g._users == {}


def test_wakeup_reaches_the_calls_inside_or_else_the_next_call_once() -> None:
    g, rang = _guard()
    g.enter()
    assert not g.woken()
    g.wakeup()
    assert rang == [1]
    assert g.woken() and g.woken()  # inside since before the wakeup: stays woken
    g.exit()
    g.enter()
    assert not g.woken()  # entered after it: not woken (it reached a call)
    g.exit()
    g.wakeup()  # nobody inside: the next call returns once
    g.enter()
    assert g.woken()
    assert not g.woken()  # consumed
    g.exit()


def test_close_from_inside_is_deferred_to_the_outermost_exit() -> None:
    g, rang = _guard()
    g.enter()
    g.enter()
    assert g.request_close() is False
    assert rang == [1] and g.close_requested and g.close_deferred == threading.get_ident()
    assert g.woken()
    assert g.exit() is False  # not the outermost
    assert g.exit() is True  # the outermost: the owner closes now
    err = _in_thread(g.enter)  # until the owner reports its close done
    assert isinstance(err, mqlite.ClosedError) and "being closed" in str(err)
    g.closed_done()
    assert not g.close_requested
    g.enter()
    g.exit()


def test_close_from_another_thread_waits_for_callers_and_beside_calls() -> None:
    woke = threading.Event()  # the guard's wake(): called once `closing` is set
    g = UseGuard("consumer", woke.set, exclusive=True)
    g.enter()
    assert g.enter_beside() is True  # e.g. aio's read-ahead beside the caller
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(g.request_close()))
    t.start()
    assert woke.wait(T)  # the closer set `closing` and woke the callers
    assert g.closing and g.woken()  # the call inside is told to stop waiting
    assert g.enter_beside() is False  # no new beside call once a close runs
    assert isinstance(_in_thread(g.enter), mqlite.ClosedError)
    assert t.is_alive()  # still waiting: a caller and a beside call are inside
    assert g.exit() is False  # a close from another thread: nothing for this thread
    assert result == []  # still waiting: the beside call is running
    g.exit_beside()
    t.join(T)
    assert result == [True]
    g.closed_done()
    assert not g.closing


def test_an_exclusive_guard_never_admits_two_threads_under_contention() -> None:
    """Four threads enter and leave 20,000 times each: whoever gets in is alone."""
    g, _ = _guard()
    inside = [0]
    worst = [0]
    refused = [0]

    def hammer() -> None:
        for _ in range(20_000):
            try:
                g.enter()
            except mqlite.ConcurrentAccessError:
                refused[0] += 1
                continue
            inside[0] += 1
            worst[0] = max(worst[0], inside[0])
            inside[0] -= 1
            g.exit()

    _race([hammer] * 4)
    assert worst[0] == 1
    assert g._users == {}
    assert refused[0] > 0  # the threads did overlap (else the test proves nothing)


def test_a_close_returns_only_after_every_hammering_thread_left() -> None:
    g, _ = _guard(exclusive=False)
    stop = threading.Event()
    barrier = threading.Barrier(5, timeout=T)
    after_close: list[int] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def hammer() -> None:
        barrier.wait()
        while not stop.is_set():
            try:
                g.enter()
            except mqlite.ClosedError:
                return
            g.exit()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        barrier.wait()
        assert g.request_close() is True
        after_close.append(len(g._users))
    finally:
        stop.set()
        for t in threads:
            t.join(T)
        sys.setswitchinterval(old)
    assert after_close == [0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_with_a_fresh_guard() -> None:
    g, _ = _guard()
    g.enter()
    assert g.request_close() is False  # deferred, in the parent
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's callers do not exist here
        try:
            g.enter()
            ok = g.inside() and not g.close_requested and g._users == {threading.get_ident(): 1}
            g.exit()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert g.exit() is True  # the parent's own state is untouched


class _Owner:
    """A minimal guarded owner: ``_life``, ``close()`` and ``_engine``."""

    def __init__(self) -> None:
        self._life, _ = _guard()
        self.closed = 0
        self.released = 0
        self._engine = self

    def release_if_done(self) -> None:
        self.released += 1

    def close(self) -> None:
        if self._life.request_close():
            self.closed += 1

    @guarded
    def call(self, a: int, *, b: int = 2) -> tuple[int, int]:
        """Return the arguments."""
        return a, b

    @guarded
    def nested(self) -> tuple[int, int]:
        return self.call(5, b=6)

    @guarded
    def close_inside(self) -> int:
        self.close()  # from inside a call: deferred to the outermost exit
        return self.closed

    @guarded
    def fail(self) -> None:
        raise KeyError("boom")


def test_the_compiled_wrapper_keeps_the_method_s_name_doc_and_signature() -> None:
    """D62: ``guarded`` is compiled; help(), docs and signatures see the method."""
    import inspect

    assert _Owner.call.__name__ == "call"
    assert _Owner.call.__qualname__ == "_Owner.call"
    assert _Owner.call.__doc__ == "Return the arguments."
    assert list(inspect.signature(_Owner.call).parameters) == ["self", "a", "b"]
    with pytest.raises(TypeError, match="takes a function"):
        guarded(42)  # type: ignore[arg-type]  # the typed error for bad input


def test_the_compiled_wrapper_enters_leaves_and_runs_a_deferred_close() -> None:
    o = _Owner()
    assert o.call(1) == (1, 2)
    assert o.call(1, b=3) == (1, 3)
    assert o.nested() == (5, 6)
    assert o._life._users == {}  # left on return
    with pytest.raises(KeyError):
        o.fail()
    assert o._life._users == {}  # left on an exception too
    assert o.close_inside() == 0  # not closed while inside
    assert o.closed == 1 and o.released == 1  # the outermost exit ran close() once
    with pytest.raises(mqlite.ClosedError):
        o.call(1)


class _OneOwner(_Owner):
    """The same owner with ``guarded_one`` methods (D72)."""

    @guarded_one
    def one(self, a: int | None) -> int | None:
        """Return the argument."""
        return a

    @guarded_one
    def one_close_inside(self, a: int | None) -> int:
        self.close()
        return self.closed

    @guarded_one
    def one_fail(self, a: int | None) -> None:
        raise KeyError(a)


def test_guarded_one_enters_leaves_and_runs_a_deferred_close() -> None:
    """``guarded_one`` (D72): ``guarded`` for one positional argument, omitted = None."""
    import inspect

    assert _OneOwner.one.__name__ == "one" and _OneOwner.one.__doc__ == "Return the argument."
    assert list(inspect.signature(_OneOwner.one).parameters) == ["self", "a"]
    with pytest.raises(TypeError, match="takes a function"):
        guarded_one(42)  # type: ignore[arg-type]
    o = _OneOwner()
    assert o.one(7) == 7
    assert o.one(None) is None
    assert o._life._users == {}
    with pytest.raises(KeyError):
        o.one_fail(1)
    assert o._life._users == {}
    assert o.one_close_inside(0) == 0  # deferred to the exit
    assert o.closed == 1 and o.released == 1
    with pytest.raises(mqlite.ClosedError):
        o.one(1)


def test_guarded_one_refuses_a_second_thread() -> None:
    o = _OneOwner()
    inside, leave = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    class _Blocking(_OneOwner):
        @guarded_one
        def block(self, a: int | None) -> None:
            inside.set()
            leave.wait(30)

    b = _Blocking()
    t = threading.Thread(target=b.block, args=(None,))
    t.start()
    assert inside.wait(30)
    try:
        b.one(1)
    except mqlite.ConcurrentAccessError as exc:
        errors.append(exc)
    finally:
        leave.set()
        t.join(30)
    assert len(errors) == 1
    assert o.one(2) == 2


def test_calls_counts_every_entry() -> None:
    """``calls`` (D79): every ``enter()``, nested and refused ones too; read-only calls
    beside (``enter_beside``) and exits do not count."""
    g, _ = _guard()
    assert g.calls == 0
    g.enter()
    g.enter()  # nested
    assert g.calls == 2
    g.exit()
    g.exit()
    assert g.calls == 2
    assert g.enter_beside()
    g.exit_beside()
    assert g.calls == 2
    g.enter()
    assert isinstance(_in_thread(g.enter), mqlite.ConcurrentAccessError)  # refused: counted
    g.exit()
    assert g.calls == 4


class _RoundOwner(_Owner):
    """An owner with a ``loop_step`` as ``Consumer`` has (D79)."""

    def __init__(self) -> None:
        super().__init__()
        self._closed = False
        self._max_poll = 7
        self.rounds: list[tuple[int, bool, bool, bool]] = []
        self.checked: list[object] = []

    def _round(self, n: int, writes: bool, late: bool = False) -> int:
        self.rounds.append((n, writes, late, self._life.inside()))
        if n == 13:
            self.close()  # a close from inside the round: deferred to the exit
        return n

    def _checked(self, n: int | None) -> int:
        """The checks, then the round."""
        self.checked.append(n)
        if self._closed:
            raise mqlite.ClosedError("closed")
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError("int")
        return self._round(n, False, True)

    loop_step = guarded_loop_step(_round, _checked)


def test_guarded_loop_step_runs_the_round_or_the_checks() -> None:
    """``guarded_loop_step`` (D79): ``None`` is ``_max_poll``; an int >= 1 goes straight to
    the round (inside the guard, late); anything else, or a closed owner, to the checks
    (same entry); a close from inside runs at the exit; a second thread is refused."""
    with pytest.raises(TypeError, match="two functions"):
        guarded_loop_step(42, 43)  # type: ignore[arg-type]
    assert _RoundOwner.loop_step.__doc__ == "The checks, then the round."
    o = _RoundOwner()
    assert o.loop_step(None) == 7
    assert o.loop_step(3) == 3
    assert o.rounds == [(7, False, True, True), (3, False, True, True)]
    assert o.checked == [] and o._life._users == {}
    with pytest.raises(TypeError):
        o.loop_step(True)
    with pytest.raises(TypeError):
        o.loop_step("3")  # type: ignore[arg-type]
    assert o.checked == [True, "3"] and o._life._users == {}
    o._closed = True
    with pytest.raises(mqlite.ClosedError):
        o.loop_step(3)
    o._closed = False
    assert o.loop_step(13) == 13 and o.closed == 1 and o.released == 1
    with pytest.raises(mqlite.ClosedError):
        o.loop_step(3)  # the guard refuses once closing
    b = _RoundOwner()
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        b._life.enter()
        inside.set()
        leave.wait(T)
        b._life.exit()

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert inside.wait(T)
        with pytest.raises(mqlite.ConcurrentAccessError):
            b.loop_step(3)
    finally:
        leave.set()
        t.join(T)
    assert b.loop_step(3) == 3


class _LoopOwner(_RoundOwner):
    """A ``_RoundOwner`` whose round runs a probe inside (D79)."""

    def __init__(self, probe: Callable[[], object]) -> None:
        super().__init__()
        self.probe = probe
        self.seen: list[object] = []

    def _round(self, n: int, writes: bool, late: bool = False) -> int:
        self.seen.append(self.probe())
        return n

    loop_step = guarded_loop_step(_round, _RoundOwner._checked)


def test_a_loop_entry_is_a_caller_inside_for_every_rule() -> None:
    """``guarded_loop_step`` keeps its entry in C fields (D79); the guard still counts it:
    ``_users``, ``inside``, nesting, refusal of another thread, ``woken`` after a
    ``wakeup`` from another thread (and no pending wake-up left), a deferred close."""
    me = threading.get_ident()
    o: _LoopOwner

    def probe() -> object:
        g = o._life
        out: list[object] = [g._users, g.inside()]
        g.enter()  # nested on the same thread
        out.append(g._users)
        g.exit()
        out.append(_in_thread(g.enter))  # another thread is refused
        out.append(g.woken())
        _in_thread(g.wakeup)
        out.append(g.woken())
        return out

    o = _LoopOwner(probe)
    assert o.loop_step(3) == 3
    seen = o.seen[0]
    assert isinstance(seen, list)
    assert seen[0] == {me: 1} and seen[1] is True and seen[2] == {me: 2}  # users, inside
    assert isinstance(seen[3], mqlite.ConcurrentAccessError)
    assert seen[4] is False and seen[5] is True  # woken() before and after the wakeup
    g = o._life
    assert g._users == {} and not g.inside()
    assert g.woken() is False  # the wake-up reached the call inside: nothing pending

    def close_inside() -> int:
        o.close()  # deferred to the exit
        return o.closed

    o.probe = close_inside
    assert o.loop_step(3) == 3 and o.seen[-1] == 0
    assert o.closed == 1 and o.released == 1


def test_a_close_from_another_thread_waits_for_a_loop_entry() -> None:
    """``request_close`` from another thread wakes the loop round (its ``wake``) and
    returns only once that round left."""
    inside, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def round_body() -> None:
        inside.set()
        leave.wait(T)
        order.append("left")

    def wake() -> None:
        rang.append(1)
        leave.set()

    o = _LoopOwner(round_body)
    rang: list[int] = []
    o._life = UseGuard("consumer", wake, exclusive=True)
    t = threading.Thread(target=o.loop_step, args=(3,))
    t.start()
    try:
        assert inside.wait(T)
        assert o._life.request_close() is True  # woke the round, waited for it to leave
        order.append("closed")
    finally:
        leave.set()
        t.join(T)
    assert order == ["left", "closed"] and rang
    with pytest.raises(mqlite.ClosedError):
        o.loop_step(3)


def test_loop_entries_and_plain_entries_never_overlap_under_contention() -> None:
    """Two threads entering through ``guarded_loop_step``, two through ``enter``, 10,000
    times each with a 1 µs switch interval: whoever gets in is alone."""
    state = [0, 0, 0]  # inside, worst, refused

    def occupy() -> None:
        state[0] += 1
        state[1] = max(state[1], state[0])
        state[0] -= 1

    o = _LoopOwner(occupy)
    g = o._life

    def by_loop() -> None:
        for _ in range(10_000):
            try:
                o.loop_step(3)
            except mqlite.ConcurrentAccessError:
                state[2] += 1

    def by_enter() -> None:
        for _ in range(10_000):
            try:
                g.enter()
            except mqlite.ConcurrentAccessError:
                state[2] += 1
                continue
            occupy()
            g.exit()

    _race([by_loop, by_loop, by_enter, by_enter])
    assert state[1] == 1
    assert g._users == {}
    assert state[2] > 0  # the threads did overlap
