# Included by _core.pyx: the App's lean handler loop (docs/decisions.md D40).
#
# The App (mqlite.app.runner) hands a partition's run of messages to one
# handler, one message per call.  For an empty handler the Python loop around
# the call cost more than the call itself: reading ``m.headers`` (a new list
# per message, to see whether a request wants a reply) was ~400 instructions,
# the stop check ~350, the loop and bookkeeping the rest, against ~1,300 for
# creating and running an empty coroutine.  Here the loop runs in C, reads the
# record's headers field directly, and runs a coroutine with ``PyIter_Send``
# (no StopIteration object when it returns, unlike ``coro.send(None)`` from
# Python).  It lives in the core extension because it reads Message's C
# fields; it knows nothing of the App beyond the two stop flags it checks.

cdef extern from "Python.h":
    int _lane_send "PyIter_Send"(object iterator, object arg, PyObject **presult) except -1
    bint _lane_is_coro "PyCoro_CheckExact"(object o)
    void _lane_decref "Py_DECREF"(PyObject *o)

#: run_lane outcomes (the second item of its result)
LANE_DONE = 0       # msgs[i] not started: the end, or the runner is stopping / the lane revoked
LANE_SUSPENDED = 1  # msgs[i]'s coroutine is waiting: (coroutine, what it yielded)
LANE_REPLY = 2      # msgs[i] handled (result given) and it has headers: maybe a request
LANE_RAISED = 3     # msgs[i]'s decode or handler raised this Exception
LANE_AWAIT = 4      # msgs[i]'s handler returned a non-coroutine awaitable: await it


def run_lane(handler, list msgs, Py_ssize_t i, int mode, bint is_async, decode, runner,
             lane):
    """Call ``handler`` on ``msgs[i:]`` in order while each call finishes at once.

    ``mode``: 0 passes the value as bytes (``b""`` for none), 1 passes
    ``decode(value)``, 2 passes nothing.  ``is_async``: ``handler`` returns a
    coroutine, run here until it returns or first waits.  Before each message
    the loop stops when ``runner._stopping`` or ``lane.revoked`` is true.

    Returns ``(i, outcome, obj)``: see the ``LANE_*`` constants.  Messages
    before ``i`` were handled with no headers (nothing else to do for them).
    Only ``Exception`` is caught; anything else (a cancellation) propagates.
    """
    cdef Py_ssize_t n = len(msgs)
    cdef PyObject *res = NULL
    cdef int rc
    cdef object m, v, r
    cdef bint has_headers
    while i < n:
        if runner._stopping or lane.revoked:
            return (i, 0, None)
        m = msgs[i]
        try:
            if mode == 2:
                r = handler()
            else:
                if type(m) is Message:
                    v = (<Message>m).value
                else:
                    v = m.value
                if mode == 0:
                    r = handler(b"" if v is None else v)
                else:
                    r = handler(decode(v))
            if is_async:
                if not _lane_is_coro(r):
                    return (i, 4, r)
                rc = _lane_send(r, None, &res)
                if rc == 1:  # PYGEN_NEXT: it waits on something
                    v = <object>res
                    _lane_decref(res)
                    return (i, 1, (r, v))
                r = <object>res
                _lane_decref(res)
        except Exception as exc:
            return (i, 3, exc)
        if type(m) is Message:
            has_headers = bool((<Message>m)._headers)
        else:
            has_headers = bool(m.headers)
        if has_headers:
            return (i, 2, r)
        i += 1
    return (i, 0, None)
