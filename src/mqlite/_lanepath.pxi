# Included by _core.pyx: the App's lean handler loop (docs/decisions.md D40, D45).
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
# fields; it knows nothing of the App beyond the two LaneFlag objects it reads.
#
# D45: the two stop checks read LaneFlag's C field (they were Python attribute
# reads of the runner and the lane, ~300 instructions per message), the handler
# is called with PyObject_Vectorcall on a one-slot argument array (no tuple, no
# keyword handling), and the exception state is saved once per run, not once
# per message (one try around the loop: ``i`` says which message raised).
# A handler that takes a ``ctx`` runs here too: ``make_ctx(m)`` builds each
# message's context, and a message whose context holds outputs (``ctx.publish``)
# goes back to Python like one with headers (it was ~19,000 instructions per
# message on the full Python path).  A JSON payload is decoded by msgspec
# directly (``fast_decode``), not through the App's Python wrapper, which is
# called only to raise the error of a value that does not decode.

cdef extern from "Python.h":
    int _lane_send "PyIter_Send"(object iterator, object arg, PyObject **presult) except -1
    bint _lane_is_coro "PyCoro_CheckExact"(object o)
    void _lane_decref "Py_DECREF"(PyObject *o)
    object _lane_vcall "PyObject_Vectorcall"(object callable, PyObject **args, size_t nargsf,
                                             PyObject *kwnames)
    PyObject *_lane_item "PyList_GET_ITEM"(object lst, Py_ssize_t i)
    size_t _LANE_ARGS_OFFSET "PY_VECTORCALL_ARGUMENTS_OFFSET"

#: run_lane outcomes (the second item of its result)
LANE_DONE = 0       # msgs[i] not started: the end, or the runner is stopping / the lane revoked
LANE_SUSPENDED = 1  # msgs[i]'s coroutine is waiting: (coroutine, what it yielded)
LANE_REPLY = 2      # msgs[i] handled (result given); it has headers, ctx outputs or a result out
LANE_RAISED = 3     # msgs[i]'s decode or handler raised this Exception
LANE_AWAIT = 4      # msgs[i]'s handler returned a non-coroutine awaitable: await it


cdef class LaneFlag:
    """A bool that :func:`run_lane` reads as a C field, before every message.

    The App keeps one per subscriber runner ("stopping") and one per partition
    lane ("revoked"); any thread may set ``on``.  ``bool(flag)`` is ``on``.
    """

    cdef public bint on

    def __init__(self, bint on=False):
        self.on = on

    def __bool__(self):
        return self.on

    def __repr__(self):
        return f"LaneFlag({self.on})"


cdef inline object _lane_call2(object f, object a, object b):
    """``f(a, b)`` through vectorcall (see :func:`_lane_call1`)."""
    cdef PyObject *args[3]
    args[0] = NULL
    args[1] = <PyObject *>a
    args[2] = <PyObject *>b
    return _lane_vcall(f, &args[1], 2 | _LANE_ARGS_OFFSET, NULL)


cdef inline object _lane_call1(object f, object arg):
    """``f(arg)`` through vectorcall, with the slot before ``arg`` free for a bound
    method's ``self`` (PY_VECTORCALL_ARGUMENTS_OFFSET)."""
    cdef PyObject *args[2]
    args[0] = NULL
    args[1] = <PyObject *>arg
    return _lane_vcall(f, &args[1], 1 | _LANE_ARGS_OFFSET, NULL)


def run_lane(handler, list msgs, Py_ssize_t i, int mode, bint is_async, decode,
             LaneFlag stopping not None, LaneFlag revoked not None, make_ctx=None,
             bint ctx_first=False, bint results_out=False, fast_decode=None):
    """Call ``handler`` on ``msgs[i:]`` in order while each call finishes at once.

    ``mode``: 0 passes the value as bytes (``b""`` for none), 1 passes
    ``decode(value)``, 2 passes nothing.  ``fast_decode`` (mode 1): ``None``, or
    a function giving what ``decode`` gives for a value that is not ``None``,
    tried first; when it raises, ``decode(value)`` is called for the error.
    ``make_ctx``: ``None``, or a callable
    building the message's context, ``make_ctx(m)``, passed after the payload
    (before it when ``ctx_first``; alone in mode 2).  ``results_out``: a result
    other than ``None`` goes back to Python (the App publishes it).  ``is_async``: ``handler``
    returns a coroutine, run here until it returns or first waits.  Before each
    message the loop stops when ``stopping.on`` or ``revoked.on`` is true.

    Returns ``(i, outcome, obj, ctx)``: see the ``LANE_*`` constants; ``ctx`` is
    msgs[i]'s context (``None`` without ``make_ctx``, or when msgs[i] was not
    started).  Messages before ``i`` were handled with no headers, their
    contexts hold no outputs (a falsy ``ctx._outputs``) and, with ``results_out``,
    they returned ``None``: nothing else to do for them.  Only ``Exception`` is caught; anything else (a cancellation)
    propagates.
    """
    cdef Py_ssize_t n = len(msgs)
    cdef PyObject *res = NULL
    cdef int rc
    cdef object m, v, r, ctx = None
    cdef bint is_msg, has_headers
    try:
        while i < n:
            if stopping.on or revoked.on:
                return (i, 0, None, None)
            m = <object>_lane_item(msgs, i)
            is_msg = type(m) is Message
            if make_ctx is not None:
                ctx = None
                ctx = _lane_call1(make_ctx, m)
            if mode != 2:
                v = (<Message>m).value if is_msg else m.value
                if mode == 0:
                    v = b"" if v is None else v
                elif fast_decode is not None and v is not None:
                    try:
                        v = _lane_call1(fast_decode, v)
                    except Exception:
                        v = _lane_call1(decode, v)  # raises its own error (PayloadError)
                else:
                    v = _lane_call1(decode, v)
            if ctx is None:
                r = handler() if mode == 2 else _lane_call1(handler, v)
            elif mode == 2:
                r = _lane_call1(handler, ctx)
            elif ctx_first:
                r = _lane_call2(handler, ctx, v)
            else:
                r = _lane_call2(handler, v, ctx)
            if is_async:
                if not _lane_is_coro(r):
                    return (i, 4, r, ctx)
                rc = _lane_send(r, None, &res)
                if rc == 1:  # PYGEN_NEXT: it waits on something
                    v = <object>res
                    _lane_decref(res)
                    return (i, 1, (r, v), ctx)
                r = <object>res
                _lane_decref(res)
            if is_msg:
                has_headers = (<Message>m)._headers is not None and bool((<Message>m)._headers)
            else:
                has_headers = bool(m.headers)
            if has_headers or (results_out and r is not None) or (
                    ctx is not None and ctx._outputs):
                return (i, 2, r, ctx)
            i += 1
    except Exception as exc:
        return (i, 3, exc, ctx)
    return (i, 0, None, None)
