# cython: language_level=3
"""The Kafka producer's per-record path in C (issue 15, docs/decisions.md D37).

Raw confluent-kafka costs one ``Producer.produce`` call and one delivery
callback per record.  The mqlite producer adds a future per record; written
in Python (a ``SendFuture`` subclass, its ``__init__``, a lock in the
delivery report) that doubled the client CPU per record.  Here:

* :class:`KafkaFuture` is a small C object; it is itself the
  ``on_delivery`` callback, keeps the report's partition, offset and
  timestamp as C integers (read through the getters' C functions) and builds
  the :class:`mqlite.RecordMetadata` only on the first ``result()``.  Its
  state changes happen with the GIL held and without running Python code in
  between, so it needs no lock.
* :class:`ProducerCore` is the base class of
  :class:`mqlite.kafka.KafkaProducer`; its ``send`` hands the common record
  (bytes or ``None`` key and value, no headers, partition or timestamp, a
  topic whose partition count is cached) to librdkafka with positional
  arguments and returns the future; anything else goes to the Python
  ``_send_slow`` with the full checks.
"""

import _thread
from time import monotonic

from cpython.object cimport PyObject

from confluent_kafka import KafkaException

from mqlite.errors import CancelledError
from mqlite.errors import TimeoutError as _Timeout
from mqlite.future import _run_callback
from mqlite.kafka._errors import to_mqlite
from mqlite.types import RecordMetadata

__all__ = ["KafkaFuture", "ProducerCore"]

cdef enum:
    PENDING = 0
    CANCELLED = 1
    FINISHED = 2

#: Longest single wait of a thread serving delivery reports in ``result()`` (seconds).
cdef double SERVE_WAIT = 0.1

cdef extern from "Python.h":
    ctypedef struct PyMethodDef:
        void* ml_meth
        int ml_flags
    ctypedef struct PyMethodDescrObject:
        PyMethodDef* d_method
    int METH_NOARGS

# A METH_NOARGS method's C function: (self, NULL) -> new reference, NULL with an exception set.
ctypedef object (*_noargs_fn)(object, PyObject*)

cdef type _report_type = None   # confluent-kafka's Message, once its getters are known
cdef _noargs_fn _get_partition = NULL
cdef _noargs_fn _get_offset = NULL
cdef _noargs_fn _get_timestamp = NULL


cdef _noargs_fn _getter(type tp, str name) except? NULL:
    d = tp.__dict__.get(name)
    if type(d) is not type(str.upper):
        return NULL
    cdef PyMethodDef* md = (<PyMethodDescrObject*><PyObject*>d).d_method
    return <_noargs_fn>md.ml_meth if md.ml_flags == METH_NOARGS else NULL


cdef int _learn_report_type(type tp) except -1:
    # the getters' C functions, called as CPython would call them, for exactly this type
    global _report_type, _get_partition, _get_offset, _get_timestamp
    cdef _noargs_fn p = _getter(tp, "partition"), o = _getter(tp, "offset")
    cdef _noargs_fn t = _getter(tp, "timestamp")
    if p != NULL and o != NULL and t != NULL:
        _get_partition, _get_offset, _get_timestamp = p, o, t
        _report_type = tp
    return 0


cdef class KafkaFuture:
    """The outcome of one record sent to Kafka: its metadata once acknowledged, or its error.

    The same methods as :class:`mqlite.SendFuture` (``result``,
    ``exception``, ``done``, ``cancel``, ``cancelled``, ``running``,
    ``add_done_callback``) with the same guarantees; thread-safe, resolved
    exactly once.  It is not a ``SendFuture`` subclass (``isinstance`` is
    ``False``).  A thread waiting in :meth:`result` serves the producer's
    delivery reports itself (no hand-off to another thread).
    """

    cdef object _owner       # the producer (serve_for_waiter) or None: wait on a gate lock
    cdef object _topic       # the topic sent to (None: taken from the report)
    cdef long long _partition, _offset, _timestamp  # from the report, when _acked
    cdef bint _acked
    cdef object _result
    cdef object _exc
    cdef list _callbacks
    cdef object _gate
    cdef int _state

    def __init__(self, owner=None):
        self._owner = owner

    # -- completion (librdkafka's side) --------------------------------------------------
    def __call__(self, err, msg):
        """librdkafka's delivery report for this record (the ``on_delivery`` callback)."""
        if self._state != PENDING:
            return
        if err is None:
            # keep three numbers, not the report (its key and value copies): a kept future
            # costs its own few bytes only, and RecordMetadata is built on first result()
            if type(msg) is not _report_type and _report_type is None:
                _learn_report_type(type(msg))
            if type(msg) is _report_type:
                self._partition = _get_partition(msg, NULL)
                self._offset = _get_offset(msg, NULL)
                self._timestamp = _get_timestamp(msg, NULL)[1]
            else:
                self._partition = msg.partition()
                self._offset = msg.offset()
                self._timestamp = msg.timestamp()[1]
            if self._topic is None:
                self._topic = msg.topic()
            self._acked = True
        else:
            exc = to_mqlite(err, f"send to {msg.topic()!r}")
            if self._state != PENDING:  # to_mqlite ran Python code: a cancel() may have won
                return
            self._exc = exc
        self._finish(FINISHED)

    cdef int _finish(self, int state) except -1:
        # the GIL is held and no Python code runs from the state check to here
        self._state = state
        gate = self._gate
        if gate is not None:
            gate.release()
        if self._callbacks is not None:
            callbacks = self._callbacks
            self._callbacks = None
            for fn in callbacks:
                _run_callback(fn, self)
        return 0

    def set_result(self, result):
        """Resolve with ``result`` (no effect if already resolved or cancelled)."""
        if self._state == PENDING:
            self._result = result
            self._finish(FINISHED)

    def set_exception(self, exc):
        """Resolve with ``exc`` (no effect if already resolved or cancelled)."""
        if self._state == PENDING:
            self._exc = exc
            self._finish(FINISHED)

    def cancel(self):
        """Cancel a pending future; ``True`` if it was pending and is now cancelled.

        The record is not withdrawn from librdkafka; cancelling only stops
        callers from waiting on it.
        """
        if self._state != PENDING:
            return False
        self._finish(CANCELLED)
        return True

    # -- inspection (caller's side) ------------------------------------------------------
    def done(self):
        """Whether the future is resolved or cancelled."""
        return self._state != PENDING

    def cancelled(self):
        return self._state == CANCELLED

    def running(self):
        """Always ``False``."""
        return False

    cdef int _wait(self, timeout) except -1:
        if self._state != PENDING:
            return 0
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        owner = self._owner
        if owner is not None:
            # serve librdkafka's delivery reports on this thread until ours came
            deadline = None if timeout is None else monotonic() + max(0.0, float(timeout))
            while self._state == PENDING:
                left = SERVE_WAIT if deadline is None else deadline - monotonic()
                if left <= 0:
                    raise _Timeout("the record was not acknowledged within the timeout")
                owner.serve_for_waiter(min(left, SERVE_WAIT))
            return 0
        gate = self._gate
        if gate is None:
            gate = _thread.allocate_lock()
            gate.acquire()
            self._gate = gate
        got = gate.acquire(True, -1 if timeout is None else max(float(timeout), 0.0))
        if not got:
            raise _Timeout("the record was not acknowledged within the timeout")
        gate.release()  # let any other waiter through
        return 0

    def result(self, timeout=None):
        """Wait for Kafka's acknowledgement and return the record's :class:`RecordMetadata`.

        Raises
        ------
        TimeoutError
            Not acknowledged within ``timeout`` seconds (it may still be).
        CancelledError
            The future was cancelled.
        MqliteError
            The error the record hit (mapped from librdkafka's).
        """
        self._wait(timeout)
        if self._state == CANCELLED:
            raise CancelledError("the send's future was cancelled")
        if self._exc is not None:
            raise self._exc
        if self._result is None and self._acked:
            self._result = RecordMetadata(self._topic, self._partition, self._offset,
                                          self._timestamp)
        return self._result

    def exception(self, timeout=None):
        """Wait like :meth:`result`; return the error instead of raising it (``None`` if none)."""
        self._wait(timeout)
        if self._state == CANCELLED:
            raise CancelledError("the send's future was cancelled")
        return self._exc

    def add_done_callback(self, fn):
        """Call ``fn(future)`` once resolved — at once if it already is.

        Callbacks run on the thread that serves the delivery report; an
        exception in one is logged and ignored.
        """
        if not callable(fn):
            raise TypeError(f"callback must be callable, not {type(fn).__name__}")
        if self._state == PENDING:
            if self._callbacks is None:
                self._callbacks = [fn]
            else:
                self._callbacks.append(fn)
            return
        _run_callback(fn, self)

    def __repr__(self):
        if self._state == PENDING:
            return "<KafkaFuture pending>"
        if self._state == CANCELLED:
            return "<KafkaFuture cancelled>"
        if self._exc is not None:
            return f"<KafkaFuture finished raised {type(self._exc).__name__}>"
        return f"<KafkaFuture finished {self.result()!r}>"


cdef class ProducerCore:
    """Base of :class:`mqlite.kafka.KafkaProducer`: the per-record ``send``.

    The subclass calls :meth:`_core_init` once its ``confluent_kafka.Producer``
    exists and defines ``_send_slow`` (every other case, with the checks) and
    ``produce`` (validate and hand over, waiting while librdkafka's queue is
    full).
    """

    cdef object _produce_fn  # the librdkafka producer's bound methods
    cdef object _poll_fn
    cdef object _cluster_ref  # holds ``_partitions``: {topic: partition count} (cached)
    cdef bint _custom         # a partitioner computed in Python: always the slow path
    cdef public bint _closed
    cdef public long long _sent

    def _core_init(self, producer, cluster, bint local_partitioner):
        self._produce_fn = producer.produce
        self._poll_fn = producer.poll
        self._cluster_ref = cluster
        self._custom = local_partitioner

    def send(self, topic, value, key=None, headers=None, partition=None, timestamp_ms=None,
             dedup_id=None):
        """Queue one record; the future resolves to its metadata once Kafka acknowledged it.

        With ``enable.idempotence`` (mqlite's default) the acknowledgement
        means every in-sync replica has the record (``acks=all``).

        Raises
        ------
        TopicNotFoundError, PartitionNotFoundError, TypeError, ValueError
            At once, before anything is queued.
        NotSupportedError
            ``dedup_id`` (Kafka has no dedup window; use the idempotent
            producer, which mqlite enables, against retries).
        ClosedError
            The producer is closed.
        """
        cdef KafkaFuture fut
        cdef dict parts
        if (not self._closed and headers is None and partition is None and timestamp_ms is None
                and dedup_id is None and not self._custom and type(topic) is str
                and (value is None or type(value) is bytes)
                and (key is None or type(key) is bytes)):
            parts = self._cluster_ref._partitions
            if topic in parts:
                fut = KafkaFuture.__new__(KafkaFuture)
                fut._owner = self
                fut._topic = topic
                try:
                    self._produce_fn(topic, value, key, -1, fut)
                except (BufferError, KafkaException):
                    self.produce(topic, value, key, None, None, None, fut)  # waits / maps
                    return fut
                self._sent += 1
                if (self._sent & 511) == 0:
                    self._poll_fn(0)  # serve delivery reports here: no hand-off to another thread
                return fut
        return self._send_slow(topic, value, key, headers, partition, timestamp_ms, dedup_id)
