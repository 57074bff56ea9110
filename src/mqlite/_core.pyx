# cython: language_level=3
"""Cython binding over the C core in csrc/ (contract: _core.pyi).

This module owns every Python object: it turns arguments into pointers and
lengths (holding references and buffer exports for as long as C uses them),
calls csrc/ - without the GIL for work that scales with the data - and turns
C results and error codes into Python objects and exceptions.  csrc/ never
sees a Python object.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_CheckExact, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_Check
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_Check
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_Check, PyUnicode_DecodeUTF8
from libc.stdint cimport (INT32_MAX, INT32_MIN, INT64_MAX, UINT32_MAX, int8_t, int16_t,
                          int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t)
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec
from posix.unistd cimport close

from mqlite._csrc cimport *

import errno
import os

from mqlite.errors import CorruptRecordError, MessageTooLargeError

cdef extern from "Python.h":
    # Macro forms on borrowed pointers, for the per-record loops: going
    # through `object` would add a reference-count round trip per item.
    PyObject **PySequence_Fast_ITEMS(object o)
    bint _PyBytes_Check "PyBytes_Check"(PyObject *o)
    char *_PyBytes_AS_STRING "PyBytes_AS_STRING"(PyObject *o)
    Py_ssize_t _PyBytes_GET_SIZE "PyBytes_GET_SIZE"(PyObject *o)
    void _Py_INCREF "Py_INCREF"(PyObject *o)
    void _Py_DECREF "Py_DECREF"(PyObject *o)

BATCH_MAGIC = MQ_BATCH_MAGIC
BATCH_HEADER_SIZE = MQ_BATCH_HEADER_SIZE
DEFAULT_MAX_BATCH_BYTES = 262144
DEFAULT_MAX_MESSAGE_BYTES = 8388608
FREE = MQ_COMB_FREE
CLAIMED = MQ_COMB_CLAIMED
FILLED = MQ_COMB_FILLED
DONE = MQ_COMB_DONE

cdef enum:
    # Releasing and re-taking the GIL costs about a microsecond uncontended
    # and up to a switch interval (5 ms) when another thread is busy, so it
    # is done only when the C work clearly takes longer: from NOGIL_BYTES of
    # data (checksums, validation), NOGIL_RECORDS records (batch planning).
    NOGIL_BYTES = 16384
    NOGIL_RECORDS = 65536
    # encode_batches works through big inputs in windows of about
    # max(WINDOW_BYTES, WINDOW_BATCHES batches) of values (see _Encoder),
    # when batches are at most WINDOW_MAX_BATCH.  Smaller windows stay in
    # cache better but re-take the GIL more often (once per window).
    WINDOW_BYTES = 2 << 20
    WINDOW_BATCHES = 8
    WINDOW_MAX_BATCH = 8 << 20
    # The binding's own error code: an allocation failed without the GIL.
    _ENOMEM = -1000

# -- errors ----------------------------------------------------------------------

# C error codes become exceptions here and only here.  Every code a reader
# returns means "these stored bytes are corrupt": CorruptRecordError with the
# code's mq_strerror() text (callers add topic, partition and offset).  The
# encoder's codes are about the caller's arguments:
_ENCODE_ERRORS = {
    MQ_ETOOBIG: (ValueError, "records do not fit in one batch (at most 4 GiB - 1 bytes); "
                             "use encode_batches"),
    MQ_ETIMESTAMP: (ValueError, "timestamps in one batch must differ by less than 2**63 "
                                "(the delta to the first record is an int64)"),
    MQ_ELENGTH: (SystemError, "batch size mismatch between planning and encoding"),
    _ENOMEM: (MemoryError, "out of memory while planning batches"),
}


cdef int _raise_corrupt(int rc, int64_t record) except -1:
    reason = mq_strerror(rc).decode()
    if record >= 0:
        raise CorruptRecordError(f"record batch: record {record}: {reason}")
    raise CorruptRecordError(f"record batch: {reason}")


cdef int _raise_encode(int rc) except -1:
    exc, message = _ENCODE_ERRORS.get(rc, (SystemError, mq_strerror(rc).decode()))
    raise exc(message)


cdef int _raise_notify_open(int rc, int sys_errno, bytes path) except -1:
    # mq_notify_open's codes name the failing step; the OS reason is sys_errno.
    reason = mq_strerror(rc).decode()
    if rc == MQ_EINVAL:
        raise ValueError(f"notify file: {reason}")
    if sys_errno > 0:
        raise OSError(sys_errno, f"{os.strerror(sys_errno)} ({reason})", os.fsdecode(path))
    raise SystemError(f"notify file {os.fsdecode(path)!r}: {reason} (code {rc})")


cdef int _not_bytes(object obj, str what) except -1:
    if PyUnicode_Check(obj):
        raise TypeError(f"{what} must be bytes-like, not str; encode it first")
    raise TypeError(f"{what} must be bytes-like, not {type(obj).__name__}")


cdef int _acquire(object obj, Py_buffer *view, str what) except -1:
    """Export a C-contiguous, possibly read-only buffer of `obj` into `view`."""
    if PyUnicode_Check(obj) or not PyObject_CheckBuffer(obj):
        _not_bytes(obj, what)
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except BufferError:
        raise TypeError(f"{what} must be a C-contiguous bytes-like object "
                        f"(copy it with bytes() first)") from None
    return 0


cdef bytes _to_bytes(object obj, str what):
    """`obj` as an exact bytes object (copying other buffers); str is a TypeError."""
    cdef Py_buffer view
    if type(obj) is bytes:
        return <bytes>obj
    _acquire(obj, &view, what)
    try:
        return PyBytes_FromStringAndSize(<const char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef int64_t _as_i64(object v, str what) except? -1:
    cdef int overflow = 0
    cdef long long x
    if not PyLong_Check(v):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow:
        raise ValueError(f"{what} out of int64 range: {v}")
    return x


cdef uint32_t _as_u32(object v, str what) except? 0xFFFFFFFF:
    if not PyLong_Check(v):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"{what} must be in [0, 2**32), not {v}")
    return <uint32_t>(<unsigned long long>v)


# -- checksums and hashing ---------------------------------------------------------

ctypedef uint32_t (*_crc_fn)(uint32_t crc, const void *data, size_t n) noexcept nogil


cdef object _crc(object data, object crc, _crc_fn fn):
    cdef Py_buffer view
    cdef uint32_t c = _as_u32(crc, "crc")
    _acquire(data, &view, "data")
    try:
        if view.len >= NOGIL_BYTES:
            with nogil:
                c = fn(c, view.buf, <size_t>view.len)
        else:
            c = fn(c, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return c


def crc32c(data, crc=0):
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc``; hardware path when available."""
    return _crc(data, crc, mq_crc32c)


def crc32c_sw(data, crc=0):
    """CRC32C computed by the portable table-driven path only (for tests)."""
    return _crc(data, crc, mq_crc32c_sw)


def crc32c_hw(data, crc=0):
    """CRC32C by the SSE4.2 path only; ``RuntimeError`` when the CPU lacks it."""
    if not mq_crc32c_hw_available():
        raise RuntimeError("this CPU has no SSE4.2 crc32 instruction; use crc32c()")
    return _crc(data, crc, mq_crc32c_hw)


def crc32c_hw_available():
    """Whether the SSE4.2 CRC32C path can be used on this CPU."""
    return bool(mq_crc32c_hw_available())


def murmur2(data):
    """Kafka's murmur2 (seed 0x9747b28c), as Java's signed 32-bit ``int``."""
    cdef Py_buffer view
    cdef int32_t h
    _acquire(data, &view, "data")
    try:
        h = mq_murmur2(view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return h


def partition_for_key(key, partitions):
    """``(murmur2(key) & 0x7fffffff) % partitions``: the partition Kafka's Java client picks."""
    cdef Py_buffer view
    cdef uint32_t p
    cdef int64_t n = _as_i64(partitions, "partitions")
    if n < 1 or n > 0xFFFFFFFF:
        raise ValueError(f"partitions must be >= 1 (and < 2**32), not {partitions}")
    _acquire(key, &view, "key")
    try:
        p = mq_partition_for_key(view.buf, <size_t>view.len, <uint32_t>n)
    finally:
        PyBuffer_Release(&view)
    return p


# -- varints -------------------------------------------------------------------------

def encode_varint(value):
    """Zig-zag LEB128 encoding of a signed 64-bit integer (1-10 bytes)."""
    cdef uint8_t out[MQ_VARINT_MAX]
    cdef int n = mq_varint_encode(_as_i64(value, "value"), out)
    return PyBytes_FromStringAndSize(<const char *>out, n)


def decode_varint(data, pos=0):
    """Decode one varint at ``pos``; returns ``(value, next_pos)``.

    Raises ``CorruptRecordError`` when truncated or longer than 10 bytes.
    """
    cdef Py_buffer view
    cdef int64_t value = 0
    cdef int64_t start = _as_i64(pos, "pos")
    cdef int n
    if start < 0:
        raise ValueError(f"pos must be >= 0, not {pos}")
    _acquire(data, &view, "data")
    try:
        if start >= view.len:
            n = MQ_ETRUNC
        else:
            n = mq_varint_decode(<const uint8_t *>view.buf + start,
                                 <const uint8_t *>view.buf + view.len, &value)
    finally:
        PyBuffer_Release(&view)
    if n < 0:
        raise CorruptRecordError(f"varint at {start}: {mq_strerror(n).decode()}")
    return value, start + n


# -- messages ------------------------------------------------------------------------

@cython.no_gc
cdef class Message:
    """One record as read from a partition (immutable; subclassable).

    ``headers`` is a new ``list`` of ``(str, bytes)`` pairs on each access
    (an empty list when the record has none).  Equality compares every field.
    """

    # Exact str/bytes and a tuple of (str, bytes) tuples only: nothing here can
    # point back at a Message, so instances need no GC tracking (no_gc), which
    # keeps decoding a million of them free of collector passes.
    cdef readonly str topic
    cdef readonly long long partition
    cdef readonly long long offset
    cdef readonly long long timestamp_ms
    cdef readonly bytes key
    cdef readonly bytes value
    cdef object _headers  # None when the record has no headers: no list per record

    def __init__(self, topic, partition, offset, timestamp_ms, key, value, headers=None):
        if not PyUnicode_Check(topic):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        self.topic = topic if type(topic) is str else str.__str__(topic)
        self.partition = _as_i64(partition, "partition")
        self.offset = _as_i64(offset, "offset")
        self.timestamp_ms = _as_i64(timestamp_ms, "timestamp_ms")
        self.key = None if key is None else _to_bytes(key, "key")
        self.value = None if value is None else _to_bytes(value, "value")
        self._headers = _normalise_headers(headers)

    @property
    def headers(self):
        """The headers as a new list of ``(str, bytes)`` pairs (``[]`` when none)."""
        if self._headers is None:
            return []
        return list(<tuple>self._headers)

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        cdef Message o = <Message>other
        return (
            self.offset == o.offset
            and self.partition == o.partition
            and self.timestamp_ms == o.timestamp_ms
            and self.topic == o.topic
            and self.key == o.key
            and self.value == o.value
            and self._headers == o._headers
        )

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    def __repr__(self):
        value = self.value
        if value is not None and len(value) > 32:
            shown = f"{value[:32]!r}...({len(value)} bytes)"
        else:
            shown = repr(value)
        return (
            f"{type(self).__name__}(topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, key={self.key!r}, value={shown})"
        )

    def __reduce__(self):
        args = (self.topic, self.partition, self.offset, self.timestamp_ms, self.key,
                self.value, self._headers)
        if type(self) is Message:
            return (Message, args)
        # A subclass's __init__ may take other arguments: rebuild the fields
        # directly and let pickle restore the subclass's __dict__.
        return (_rebuild_message, (type(self),) + args, getattr(self, "__dict__", None))


def _rebuild_message(cls, topic, partition, offset, timestamp_ms, key, value, headers):
    """Unpickle helper for subclasses of Message (see Message.__reduce__)."""
    cdef Message m = cls.__new__(cls)
    Message.__init__(m, topic, partition, offset, timestamp_ms, key, value, headers)
    return m


cdef object _normalise_headers(object headers):
    """None, or a tuple of (exact str, exact bytes) pairs; empty becomes None."""
    if headers is None:
        return None
    out = []
    for pair in headers:
        name, value = pair
        if not PyUnicode_Check(name):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        out.append((name if type(name) is str else str.__str__(name),
                    _to_bytes(value, "header value")))
    return tuple(out) if out else None


# -- record batches: encoding -------------------------------------------------------

cdef struct _Cut:
    size_t first  # index in the window
    size_t count
    size_t size
    uint8_t *out


cdef class _Encoder:
    """The C view (mq_records) of one window of an encode call's records.

    Big inputs are encoded window by window (a few MB of values each): the
    items of a window are touched three times (collected, copied, released)
    and a window still sits in the CPU cache the second and third time,
    where one pass over a million objects would miss on every touch.

    The object holds every Python object and buffer export the C arrays
    point into, so the pointers stay valid while the GIL is released;
    __dealloc__ frees everything whether encoding succeeded or raised.
    """

    cdef mq_records rec
    cdef Py_ssize_t base  # index of the window's first record in the call
    cdef mq_slice *values
    cdef mq_slice *keys
    cdef mq_header_in *headers
    cdef size_t *header_index
    cdef size_t n_headers, cap_headers
    cdef Py_buffer *bufs
    cdef Py_ssize_t n_bufs, cap_bufs
    cdef _Cut *cuts
    cdef size_t n_cuts, cap_cuts
    # A new reference to every item taken from a list: another thread could
    # replace it in the list while C reads it without the GIL.  Items of a
    # tuple are kept alive by the tuple; header parts by `keep`.
    cdef PyObject **owned
    cdef Py_ssize_t n_owned
    cdef list keep

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.n_owned):
            _Py_DECREF(self.owned[i])
        for i in range(self.n_bufs):
            PyBuffer_Release(&self.bufs[i])
        free(self.owned)
        free(self.bufs)
        free(self.values)
        free(self.keys)
        free(self.headers)
        free(self.header_index)
        free(self.cuts)

    cdef int slice_of(self, object obj, mq_slice *s, str what, Py_ssize_t index) except -1:
        """Slow path of the per-record loops: any buffer but bytes (or a TypeError)."""
        cdef Py_buffer *grown
        if PyUnicode_Check(obj) or not PyObject_CheckBuffer(obj):
            _not_bytes(obj, f"{what}[{index}]" if index >= 0 else what)
        if self.n_bufs == self.cap_bufs:
            self.cap_bufs = self.cap_bufs * 2 if self.cap_bufs else 16
            grown = <Py_buffer *>realloc(self.bufs, self.cap_bufs * sizeof(Py_buffer))
            if grown == NULL:
                raise MemoryError()
            self.bufs = grown
        try:
            PyObject_GetBuffer(obj, &self.bufs[self.n_bufs], PyBUF_SIMPLE)
        except BufferError:
            raise TypeError(f"{what} must be C-contiguous bytes-like objects "
                            f"(copy with bytes() first)") from None
        s.ptr = <const uint8_t *>self.bufs[self.n_bufs].buf
        s.len = self.bufs[self.n_bufs].len
        self.n_bufs += 1
        return 0

    cdef Py_ssize_t slices(self, object seq, mq_slice *out, Py_ssize_t start, Py_ssize_t stop,
                           Py_ssize_t n, uint64_t target, str what) except -1:
        """Fill out[] from seq[start:stop] (bytes-like objects or None).

        `seq` is a tuple or a list of n items.  With a `target`, stops once
        the items taken weigh that many bytes (8 per item plus its length);
        returns the number of items taken.
        """
        cdef bint is_list = PyList_CheckExact(seq)
        cdef PyObject **items = PySequence_Fast_ITEMS(seq)
        cdef PyObject *o
        cdef mq_slice *s
        cdef Py_ssize_t i
        cdef uint64_t weight = 0
        if is_list and PyList_GET_SIZE(seq) != n:
            # Code run by another argument's conversion changed this list.
            raise RuntimeError(f"{what} changed size during encoding")
        for i in range(start, stop):
            o = items[i]
            s = &out[i - start]
            if is_list:
                _Py_INCREF(o)
                self.owned[self.n_owned] = o
                self.n_owned += 1
            if _PyBytes_Check(o):
                s.ptr = <const uint8_t *>_PyBytes_AS_STRING(o)
                s.len = _PyBytes_GET_SIZE(o)
            elif o == <PyObject *>None:
                s.ptr = NULL
                s.len = -1
            else:
                self.slice_of(<object>o, s, what, i)
                # A buffer exporter may run arbitrary code; if that changed
                # the list, `items` may be stale.
                if is_list and PyList_GET_SIZE(seq) != n:
                    raise RuntimeError(f"{what} changed size during encoding")
                items = PySequence_Fast_ITEMS(seq)
            if target:
                weight += 8 + <uint64_t>(s.len if s.len > 0 else 0)
                if weight >= target:
                    return i - start + 1
        return stop - start

    cdef int collect(self, _Args a, Py_ssize_t start, uint64_t target) except -1:
        """Collect the window of records from `start`: all of them, or about
        `target` bytes of values (at least 2 records) when target > 0."""
        cdef Py_ssize_t cap = a.n - start, count
        if target and <uint64_t>cap > target // 8 + 2:
            cap = <Py_ssize_t>(target // 8 + 2)  # each record weighs >= 8
        self.base = start
        self.owned = <PyObject **>malloc(2 * cap * sizeof(PyObject *))
        self.values = <mq_slice *>malloc(cap * sizeof(mq_slice))
        if self.owned == NULL or self.values == NULL:
            raise MemoryError()
        count = self.slices(a.values, self.values, start, start + cap, a.n, target, "values")
        self.rec.count = <size_t>count
        self.rec.values = self.values
        if a.keys is not None:
            self.keys = <mq_slice *>malloc(count * sizeof(mq_slice))
            if self.keys == NULL:
                raise MemoryError()
            self.slices(a.keys, self.keys, start, start + count, a.n, 0, "keys")
            self.rec.keys = self.keys
        if a.headers is not None:
            self.collect_headers(a.headers, start, count)
        self.rec.timestamp = a.timestamp
        if a.timestamps != NULL:
            self.rec.timestamps = a.timestamps + start
        return 0

    cdef int collect_headers(self, tuple headers, Py_ssize_t start, Py_ssize_t n) except -1:
        cdef Py_ssize_t i, name_len
        cdef const char *name_utf8
        cdef mq_slice hv
        cdef mq_header_in *grown
        self.keep = []
        self.header_index = <size_t *>malloc((n + 1) * sizeof(size_t))
        if self.header_index == NULL:
            raise MemoryError()
        for i in range(n):
            self.header_index[i] = self.n_headers
            entry = headers[start + i]
            if entry is None:
                continue
            if PyUnicode_Check(entry) or isinstance(entry, (bytes, bytearray, dict)):
                raise TypeError(f"headers[{start + i}] must be a sequence of (str, bytes) "
                                f"pairs, not {type(entry).__name__}")
            for pair in entry:
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise TypeError(f"headers[{start + i}] must hold (str, bytes) pairs, "
                                    f"not {pair!r:.60}")
                name, value = pair
                if not PyUnicode_Check(name):
                    raise TypeError(f"header names must be str, not {type(name).__name__}")
                name_utf8 = PyUnicode_AsUTF8AndSize(name, &name_len)
                if _PyBytes_Check(<PyObject *>value):
                    hv.ptr = <const uint8_t *>PyBytes_AS_STRING(value)
                    hv.len = len(<bytes>value)
                else:
                    self.slice_of(value, &hv, "header values", -1)
                self.keep.append(name)
                self.keep.append(value)
                if self.n_headers == self.cap_headers:
                    self.cap_headers = self.cap_headers * 2 if self.cap_headers else 64
                    grown = <mq_header_in *>realloc(self.headers,
                                                    self.cap_headers * sizeof(mq_header_in))
                    if grown == NULL:
                        raise MemoryError()
                    self.headers = grown
                self.headers[self.n_headers].name = <const uint8_t *>name_utf8
                self.headers[self.n_headers].name_len = <size_t>name_len
                self.headers[self.n_headers].value = hv.ptr
                self.headers[self.n_headers].value_len = <size_t>hv.len
                self.n_headers += 1
        self.header_index[n] = self.n_headers
        # Non-NULL even with no headers at all: header_index is what C reads.
        if self.headers == NULL:
            self.headers = <mq_header_in *>malloc(sizeof(mq_header_in))
            if self.headers == NULL:
                raise MemoryError()
        self.rec.headers = self.headers
        self.rec.header_index = self.header_index
        return 0

    cdef int check_sizes(self, int64_t max_message_bytes) except -1:
        cdef size_t i, h
        cdef uint64_t size
        for i in range(self.rec.count):
            size = <uint64_t>self.values[i].len if self.values[i].len > 0 else 0
            if self.keys != NULL and self.keys[i].len > 0:
                size += <uint64_t>self.keys[i].len
            if self.header_index != NULL:
                for h in range(self.header_index[i], self.header_index[i + 1]):
                    size += self.headers[h].name_len + self.headers[h].value_len
            if size > <uint64_t>max_message_bytes:
                raise MessageTooLargeError(
                    f"record {self.base + <Py_ssize_t>i} is {size} bytes (key + value + "
                    f"headers), more than max_message_bytes={max_message_bytes}"
                )
        return 0

    cdef int plan(self, size_t max_bytes) except -1:
        cdef int rc
        # Sizing a window takes microseconds: not worth a GIL round trip.
        if self.rec.count >= NOGIL_RECORDS:
            with nogil:
                rc = self.cut(max_bytes)
        else:
            rc = self.cut(max_bytes)
        if rc < 0:
            _raise_encode(rc)
        return 0

    cdef int cut(self, size_t max_bytes) noexcept nogil:
        """Plan every batch of the window into self.cuts; MQ_OK or an error code."""
        cdef size_t first = 0, count = 0, size = 0
        cdef int rc
        cdef _Cut *grown
        while first < self.rec.count:
            rc = mq_batch_plan(&self.rec, first, max_bytes, &count, &size)
            if rc < 0:
                return rc
            if self.n_cuts == self.cap_cuts:
                self.cap_cuts = self.cap_cuts * 2 if self.cap_cuts else 16
                grown = <_Cut *>realloc(self.cuts, self.cap_cuts * sizeof(_Cut))
                if grown == NULL:
                    return _ENOMEM
                self.cuts = grown
            self.cuts[self.n_cuts].first = first
            self.cuts[self.n_cuts].count = count
            self.cuts[self.n_cuts].size = size
            self.cuts[self.n_cuts].out = NULL
            self.n_cuts += 1
            first += count
        return MQ_OK

    cdef int encode(self, list out, int64_t producer_id, int64_t base_sequence) except -1:
        cdef size_t k, total = 0
        cdef int rc
        for k in range(self.n_cuts):
            b = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>self.cuts[k].size)
            self.cuts[k].out = <uint8_t *>PyBytes_AS_STRING(b)
            out.append(b)
            total += self.cuts[k].size
        if total >= NOGIL_BYTES:
            with nogil:
                rc = self.write(producer_id, base_sequence)
        else:
            rc = self.write(producer_id, base_sequence)
        if rc < 0:
            _raise_encode(rc)
        return 0

    cdef int write(self, int64_t producer_id, int64_t base_sequence) noexcept nogil:
        """Encode every planned batch into its bytes; MQ_OK or an error code."""
        cdef size_t k
        cdef int rc
        cdef int32_t seq
        for k in range(self.n_cuts):
            # Kafka's rule: a batch's base sequence is that of its first
            # record, wrapping from INT32_MAX to 0.
            seq = -1 if base_sequence < 0 else <int32_t>(
                (base_sequence + self.base + <int64_t>self.cuts[k].first)
                % (<int64_t>INT32_MAX + 1))
            rc = mq_batch_encode(&self.rec, self.cuts[k].first, self.cuts[k].count,
                                 producer_id, seq, self.cuts[k].out, self.cuts[k].size)
            if rc < 0:
                return rc
        return MQ_OK


cdef class _Args:
    """The arguments of one encode call, checked and converted once."""

    cdef object values, keys  # a tuple or a list each (keys may be None)
    cdef tuple headers
    cdef Py_ssize_t n
    cdef int64_t *timestamps  # one per value, or NULL: all `timestamp`
    cdef int64_t timestamp

    def __dealloc__(self):
        free(self.timestamps)

    cdef int parse(self, values, keys, headers, timestamps, int64_t default_ts) except -1:
        cdef Py_ssize_t n, i
        if isinstance(values, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"values must be a sequence of bytes-like objects, "
                            f"not {type(values).__name__}")
        # Lists and tuples are read in place; anything else is copied once.
        self.values = values if PyList_CheckExact(values) or PyTuple_Check(values) \
            else tuple(values)
        n = self.n = len(self.values)
        if n == 0:
            raise ValueError("values must not be empty")
        if keys is not None:
            self.keys = keys if PyList_CheckExact(keys) or PyTuple_Check(keys) else tuple(keys)
            if len(self.keys) != n:
                raise ValueError(f"keys has {len(self.keys)} entries for {n} values")
        if headers is not None:
            if PyUnicode_Check(headers) or isinstance(headers, (bytes, bytearray, dict)):
                raise TypeError(f"headers must be a sequence (one entry per value) of "
                                f"(str, bytes) pair lists, not {type(headers).__name__}")
            self.headers = tuple(headers)
            if len(self.headers) != n:
                raise ValueError(f"headers has {len(self.headers)} entries for {n} values")
        self.timestamp = default_ts
        if timestamps is None:
            pass
        elif PyLong_Check(timestamps):
            self.timestamp = _as_i64(timestamps, "timestamps")
        else:
            ts = tuple(timestamps)
            if len(ts) != n:
                raise ValueError(f"timestamps has {len(ts)} entries for {n} values")
            self.timestamps = <int64_t *>malloc(n * sizeof(int64_t))
            if self.timestamps == NULL:
                raise MemoryError()
            for i in range(n):
                self.timestamps[i] = _as_i64(ts[i], "timestamps")
        return 0


cdef int64_t _check_sequence(object base_sequence) except? -2:
    cdef int64_t seq = _as_i64(base_sequence, "base_sequence")
    if seq != -1 and not 0 <= seq <= INT32_MAX:
        raise ValueError(f"base_sequence must be -1 or in [0, 2**31), not {base_sequence}")
    return seq


def encode_batches(values, keys=None, headers=None, timestamps=None, *,
                   default_timestamp_ms=0, max_batch_bytes=DEFAULT_MAX_BATCH_BYTES,
                   max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES, producer_id=-1,
                   base_sequence=-1):
    """Encode records into one or more v1 batches, in order (see _core.pyi)."""
    cdef int64_t max_batch = _as_i64(max_batch_bytes, "max_batch_bytes")
    cdef int64_t max_message = _as_i64(max_message_bytes, "max_message_bytes")
    cdef int64_t pid = _as_i64(producer_id, "producer_id")
    cdef int64_t seq = _check_sequence(base_sequence)
    cdef int64_t default_ts = _as_i64(default_timestamp_ms, "default_timestamp_ms")
    cdef _Args args = _Args()
    cdef _Encoder enc
    cdef Py_ssize_t start = 0
    cdef uint64_t target = 0
    cdef list out = []
    if max_batch < 1:
        raise ValueError(f"max_batch_bytes must be >= 1, not {max_batch_bytes}")
    if max_message < 0:
        raise ValueError(f"max_message_bytes must be >= 0, not {max_message_bytes}")
    args.parse(values, keys, headers, timestamps, default_ts)
    if max_batch <= WINDOW_MAX_BATCH:
        # A window of >= WINDOW_BATCHES batches: its last, possibly cut-short
        # batch is only sized, then redone by the next window.
        target = max(<uint64_t>WINDOW_BYTES, WINDOW_BATCHES * <uint64_t>max_batch)
    while start < args.n:
        enc = _Encoder()
        enc.collect(args, start, target)
        enc.check_sizes(max_message)
        enc.plan(<size_t>max_batch)
        if start + <Py_ssize_t>enc.rec.count < args.n:
            # The last batch may have been cut by the window's end rather
            # than by max_batch_bytes: leave its records to the next window.
            if enc.n_cuts < 2:
                target *= 2  # one batch filled the window: widen it
                continue
            enc.n_cuts -= 1
        enc.encode(out, pid, seq)
        start += <Py_ssize_t>(enc.cuts[enc.n_cuts - 1].first + enc.cuts[enc.n_cuts - 1].count)
    return out


def encode_batch(values, keys=None, headers=None, timestamps=None, *,
                 default_timestamp_ms=0, producer_id=-1, base_sequence=-1):
    """Encode all records into exactly one batch (no size cut, no size cap)."""
    cdef int64_t pid = _as_i64(producer_id, "producer_id")
    cdef int64_t seq = _check_sequence(base_sequence)
    cdef int64_t default_ts = _as_i64(default_timestamp_ms, "default_timestamp_ms")
    cdef _Args args = _Args()
    cdef _Encoder enc = _Encoder()
    cdef list out = []
    args.parse(values, keys, headers, timestamps, default_ts)
    enc.collect(args, 0, 0)
    enc.plan(0)
    if enc.n_cuts != 1:  # only when the records exceed the 32-bit batch length
        _raise_encode(MQ_ETOOBIG)
    enc.encode(out, pid, seq)
    return out[0]


# -- record batches: reading --------------------------------------------------------

def batch_header(data):
    """Parse a batch header without checking the CRC (see _core.pyi)."""
    cdef Py_buffer view
    cdef mq_batch_header h
    cdef int rc
    _acquire(data, &view, "data")
    try:
        rc = mq_batch_read_header(<const uint8_t *>view.buf, <size_t>view.len, &h)
    finally:
        PyBuffer_Release(&view)
    if rc < 0:
        _raise_corrupt(rc, -1)
    return (h.length, h.attributes, h.record_count, h.base_timestamp, h.max_timestamp,
            h.producer_id, h.base_sequence)


cdef int _validate(Py_buffer *view, int flags, mq_batch_header *h) except -1:
    cdef int rc
    cdef int64_t bad = -1
    if view.len >= NOGIL_BYTES:
        with nogil:
            rc = mq_batch_validate(<const uint8_t *>view.buf, <size_t>view.len, flags, h, &bad)
    else:
        rc = mq_batch_validate(<const uint8_t *>view.buf, <size_t>view.len, flags, h, &bad)
    if rc < 0:
        _raise_corrupt(rc, bad)
    return 0


def validate_batch(data):
    """Deep validation: magic, length, CRC, and every record's structure.

    Returns the record count; raises ``CorruptRecordError`` with a reason.
    The GIL is released for batches of 16 KiB and more.
    """
    cdef Py_buffer view
    cdef mq_batch_header h
    _acquire(data, &view, "data")
    try:
        _validate(&view, MQ_VALIDATE_CRC, &h)
    finally:
        PyBuffer_Release(&view)
    return h.record_count


cdef tuple _decode_headers(const mq_record *rec):
    cdef const uint8_t *p = rec.headers
    cdef mq_header_view hv
    cdef int64_t k
    cdef int rc
    out = []
    for k in range(rec.header_count):
        rc = mq_header_read(&p, rec.end, &hv)
        if rc < 0:
            _raise_corrupt(rc, -1)
        name = PyUnicode_DecodeUTF8(<char *>hv.name, <Py_ssize_t>hv.name_len, NULL)
        out.append((name, PyBytes_FromStringAndSize(<const char *>hv.value,
                                                    <Py_ssize_t>hv.value_len)))
    return tuple(out)


cdef int _decode_records(list result, mq_batch_iter *it, str topic, long long partition,
                         int64_t base_offset, int64_t from_offset,
                         int64_t max_records) except -1:
    """Append Messages for the selected records; validate every record.

    Records below from_offset and past max_records become no objects but
    are still parsed and checked: the batch must be valid as a whole.
    """
    cdef int64_t skip = 0, produced = 0, i
    cdef int rc
    cdef mq_record rec
    cdef Message m
    if from_offset > base_offset:
        skip = from_offset - base_offset
    while True:
        rc = mq_batch_iter_next(it, &rec)
        if rc <= 0:
            break
        i = <int64_t>it.index - 1
        if i < skip or produced == max_records:
            continue
        m = Message.__new__(Message)
        m.topic = topic
        m.partition = partition
        m.offset = base_offset + i
        m.timestamp_ms = rec.timestamp
        if rec.key_len >= 0:
            m.key = PyBytes_FromStringAndSize(<const char *>rec.key, rec.key_len)
        if rec.value_len >= 0:
            m.value = PyBytes_FromStringAndSize(<const char *>rec.value, rec.value_len)
        if rec.header_count > 0:
            m._headers = _decode_headers(&rec)
        result.append(m)
        produced += 1
    if rc < 0:
        _raise_corrupt(rc, it.bad_record)
    return 0


def decode_batch(data, topic, partition, base_offset, from_offset=0,
                 max_records=-1, out=None, verify_crc=True):
    """Decode the records of one batch whose first offset is ``base_offset``.

    Every record is parsed once and checked as it is decoded (structure and
    bounds always, the CRC first unless ``verify_crc`` is false); records
    below ``from_offset`` and past ``max_records`` are checked but become no
    objects.  Messages are appended to ``out`` (or a new list); if any check
    fails, ``out`` is restored to its previous length before
    ``CorruptRecordError`` is raised.
    """
    cdef Py_buffer view
    cdef mq_batch_iter it
    cdef int rc
    cdef int flags = MQ_VALIDATE_CRC if verify_crc else 0
    cdef long long part = _as_i64(partition, "partition")
    cdef int64_t base = _as_i64(base_offset, "base_offset")
    cdef int64_t start = _as_i64(from_offset, "from_offset")
    cdef int64_t limit = _as_i64(max_records, "max_records")
    cdef list result
    cdef Py_ssize_t before
    cdef str topic_s
    if not PyUnicode_Check(topic):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    topic_s = topic if type(topic) is str else str.__str__(topic)  # shared by every Message
    if base < 0:
        raise ValueError(f"base_offset must be >= 0, not {base_offset}")
    if limit < -1:
        raise ValueError(f"max_records must be >= 0 or -1 (all), not {max_records}")
    if out is None:
        result = []
    elif isinstance(out, list):
        result = <list>out
    else:
        raise TypeError(f"out must be a list or None, not {type(out).__name__}")
    _acquire(data, &view, "data")
    try:
        if verify_crc and view.len >= NOGIL_BYTES:
            with nogil:
                rc = mq_batch_iter_init(&it, <const uint8_t *>view.buf, <size_t>view.len, flags)
        else:
            rc = mq_batch_iter_init(&it, <const uint8_t *>view.buf, <size_t>view.len, flags)
        if rc < 0:
            _raise_corrupt(rc, -1)
        if base > INT64_MAX - <int64_t>it.h.record_count:
            raise ValueError(f"base_offset {base_offset} + record count overflows int64")
        before = len(result)
        try:
            _decode_records(result, &it, topic_s, part, base, start, limit)
        except BaseException:
            del result[before:]
            raise
    finally:
        PyBuffer_Release(&view)
    return result


def first_offset_at_or_after(data, base_offset, timestamp_ms):
    """The offset of the first record in the batch whose timestamp >= ``timestamp_ms``, else -1.

    The batch is validated first (CRC included): a corrupt batch raises
    ``CorruptRecordError`` rather than answering from damaged bytes.
    """
    cdef Py_buffer view
    cdef int64_t base = _as_i64(base_offset, "base_offset")
    cdef int64_t ts = _as_i64(timestamp_ms, "timestamp_ms")
    cdef int64_t index = -1
    cdef int rc
    _acquire(data, &view, "data")
    try:
        if view.len >= NOGIL_BYTES:
            with nogil:
                rc = mq_batch_find_timestamp(<const uint8_t *>view.buf, <size_t>view.len, ts,
                                             &index)
        else:
            rc = mq_batch_find_timestamp(<const uint8_t *>view.buf, <size_t>view.len, ts, &index)
    finally:
        PyBuffer_Release(&view)
    if rc < 0:
        _raise_corrupt(rc, -1)
    return -1 if index < 0 else base + index


# -- cross-process wake-ups --------------------------------------------------------

cdef inline Py_ssize_t _partition_slot(uint64_t pid, Py_ssize_t nslots) noexcept:
    # Slot 0 is every append's, slots [1, nslots) are shared by topics (crc32 of the
    # name) and partitions (this multiplicative hash of the id): a collision only wakes
    # a waiter for nothing.  mqlite passes nslots = NOTIFY_HASHED (2048): the words
    # above are queue groups' (D74).  Python's Env.partition_slot is this function.
    return 1 + <Py_ssize_t>(((pid * 2654435761u) & 0xFFFFFFFFu) % <uint64_t>(nslots - 1))


def partition_slot(pid, nslots):
    """The wake-up word of partition id ``pid`` in a notifier of ``nslots`` words (D64)."""
    if nslots < 2 or pid < 0:
        raise ValueError(f"partition_slot: pid {pid} >= 0 and nslots {nslots} >= 2 expected")
    return _partition_slot(<uint64_t>pid, <Py_ssize_t>nslots)


cdef int64_t _monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class Notifier:
    """A MAP_SHARED file of 32-bit sequence words used for futex wake-ups.

    See _core.pyi and csrc/notify.h for the contract.  Thread-safe: any
    thread may load, bump or wait (several threads may wait at once); close()
    while other threads wait makes later calls raise ValueError and unmaps
    when the last of those waits returns.
    """

    cdef mq_notify n
    cdef mq_bells *bells  # doorbells (doorbell.h), or NULL
    cdef int listen_stop[256]  # per doorbell: its bell_listen() must return
    cdef readonly Py_ssize_t slots
    cdef bint is_open
    cdef Py_ssize_t active  # waits running without the GIL

    def __cinit__(self):
        memset(&self.n, 0, sizeof(mq_notify))
        memset(self.listen_stop, 0, sizeof(self.listen_stop))
        self.bells = NULL

    cdef void _unmap(self):
        self.n.bells = NULL
        if self.bells != NULL:
            mq_bells_close(self.bells)
            free(self.bells)
            self.bells = NULL
        mq_notify_close(&self.n)

    def __init__(self, path, slots=4096, mode=0o600):
        cdef int64_t n_slots = _as_i64(slots, "slots")
        cdef int64_t m = _as_i64(mode, "mode")
        cdef int rc
        cdef const char *cpath
        if self.is_open or self.active:
            raise ValueError("Notifier is already initialised")
        if n_slots < 1 or n_slots > (1 << 40):
            raise ValueError(f"slots must be in [1, 2**40], not {slots}")
        if m < 0 or m > 0o7777:
            raise ValueError(f"mode must be a permission mode (0 to 0o7777), not {mode!r}")
        bpath = os.fsencode(path)
        if b"\0" in bpath:
            raise ValueError("path contains a NUL byte")
        cpath = bpath
        with nogil:
            rc = mq_notify_open(&self.n, cpath, <size_t>n_slots, <unsigned>m)
        if rc < 0:
            _raise_notify_open(rc, self.n.sys_errno, bpath)
        self.slots = <Py_ssize_t>n_slots
        self.is_open = True

    def __dealloc__(self):
        # A running wait() holds a reference, so none can be active here.
        self._unmap()

    cdef size_t _slot(self, object slot) except? 0:
        if not PyLong_Check(slot):
            raise TypeError(f"slot must be an int, not {type(slot).__name__}")
        if not self.is_open:
            raise ValueError("Notifier is closed")
        if slot < 0 or slot >= self.slots:
            raise ValueError(f"slot {slot} out of range [0, {self.slots})")
        return <size_t>(<Py_ssize_t>slot)

    def load(self, slot):
        """The current sequence value of ``slot`` (acquire load)."""
        return mq_notify_load(&self.n, self._slot(slot))

    def bump(self, slot):
        """Atomically increment ``slot`` and wake every waiter on it."""
        mq_notify_bump(&self.n, self._slot(slot))

    def bump_one(self, slot):
        """As :meth:`bump`, waking one of the threads asleep on ``slot`` (every event
        loop armed on it is rung): for a queue's competing receivers (D67)."""
        mq_notify_bump_wake(&self.n, self._slot(slot), 1)

    def pass_on(self, slot):
        """Pass a wake-up on (D69): :meth:`bump_one` when ``slot`` has a waiter (a
        thread asleep or an event loop armed), else nothing; ``True`` when it bumped.
        For a queue receiver that was (or may have been) woken and leaves without a
        receive round (csrc/notify.h ``mq_notify_pass``)."""
        return mq_notify_pass(&self.n, self._slot(slot)) == 1

    def wait(self, slot, expected, timeout):
        """Block (GIL released) until ``slot`` != ``expected`` or ``timeout`` seconds pass.

        Returns ``True`` if the value differed (or a wake-up arrived), ``False``
        on timeout.  Returns at once when the value already differs.
        ``timeout`` <= 0 never blocks.  Signal handlers run while waiting (a
        KeyboardInterrupt propagates).
        """
        cdef size_t s = self._slot(slot)
        cdef uint32_t exp = _as_u32(expected, "expected")
        return self._wait(&s, &exp, 1, timeout, 0) != 0

    def wait_woken(self, slot, expected, timeout):
        """As :meth:`wait`, telling how it ended (D76): ``0`` timed out, ``1`` the value
        was seen to differ at a check (before sleeping, or at the timeout: another
        thread took the bump's wake-up, or nobody did), ``2`` a wake-up took this thread
        off the futex queue (csrc/notify.h ``MQ_NOTIFY_TELL_WOKEN``).  Only ``2`` can
        have taken a :meth:`bump_one` wake-up that another thread then lacks.
        """
        cdef size_t s = self._slot(slot)
        cdef uint32_t exp = _as_u32(expected, "expected")
        return self._wait(&s, &exp, 1, timeout, MQ_NOTIFY_TELL_WOKEN)

    def wait_any(self, slots, expected, timeout):
        """As :meth:`wait`, on several slots: until any of ``slots`` no longer holds its
        value in ``expected`` (same length, 1 to 16 distinct slots), a wake-up of any of
        them, or ``timeout`` seconds (csrc/notify.h ``mq_notify_wait_any``, D64)."""
        cdef size_t ss[MQ_NOTIFY_WAIT_ANY_MAX]
        cdef uint32_t ex[MQ_NOTIFY_WAIT_ANY_MAX]
        cdef Py_ssize_t count = len(slots), i
        if count < 1 or count > MQ_NOTIFY_WAIT_ANY_MAX or len(expected) != count:
            raise ValueError(f"wait_any: 1 to {MQ_NOTIFY_WAIT_ANY_MAX} slots, as many values "
                             f"expected (got {count} and {len(expected)})")
        if len(set(slots)) != count:
            raise ValueError("wait_any: the slots must be distinct")
        for i in range(count):
            ss[i] = self._slot(slots[i])
            ex[i] = _as_u32(expected[i], "expected")
        return self._wait(ss, ex, <size_t>count, timeout, 0) != 0

    cdef int _wait(self, size_t *ss, uint32_t *ex, size_t count, double t,
                   int flags) except -1:
        """wait / wait_any / wait_woken: the GIL released, signal handlers run between
        tries; 0 timed out, 1 moved, ``MQ_NOTIFY_WOKEN`` (with that flag) woken."""
        cdef int64_t deadline, left
        cdef int rc
        if t != t:
            raise ValueError("timeout must not be NaN")
        if t <= 0:
            return mq_notify_wait_any(&self.n, ss, ex, count, 0, 0) == 1
        left = INT64_MAX if t >= 9.2e9 else <int64_t>(t * 1e9)
        deadline = _monotonic_ns()
        deadline = INT64_MAX if left > INT64_MAX - deadline else deadline + left
        self.active += 1
        try:
            while True:
                with nogil:
                    rc = mq_notify_wait_any(&self.n, ss, ex, count, left,
                                            MQ_NOTIFY_RETURN_ON_EINTR | flags)
                if rc != MQ_EINTR:
                    break
                PyErr_CheckSignals()
                left = deadline - _monotonic_ns()
        finally:
            self.active -= 1
            if not self.is_open and self.active == 0:
                self._unmap()
        return rc if rc > 0 else 0

    # -- doorbells (csrc/doorbell.h): one futex word per event loop ------------------------
    def attach_bells(self, path, mode=0o600):
        """Open the bell table ``path``; later bumps of armed slots ring doorbells.

        Idempotent.  Raises ``OSError`` (errno of the failed call) or
        ``ValueError`` (a table made for another slot count or version).
        """
        cdef mq_bells *b
        cdef int rc
        if not self.is_open:
            raise ValueError("Notifier is closed")
        if self.bells != NULL:
            return
        bpath = os.fsencode(path)
        if b"\0" in bpath:
            raise ValueError("path contains a NUL byte")
        b = <mq_bells *>malloc(sizeof(mq_bells))
        if b == NULL:
            raise MemoryError()
        rc = mq_bells_open(b, bpath, <size_t>self.slots, <unsigned>_as_i64(mode, "mode"))
        if rc < 0:
            err = b.sys_errno
            free(b)
            if rc == MQ_EINVAL:
                raise ValueError(f"bell table {os.fsdecode(bpath)!r} was made for another "
                                 "slot count or version; remove it while no process has the "
                                 "broker open")
            if err > 0:
                raise OSError(err, f"{os.strerror(err)} ({mq_strerror(rc).decode()})",
                              os.fsdecode(bpath))
            raise OSError(f"bell table {os.fsdecode(bpath)!r}: {mq_strerror(rc).decode()}")
        self.bells = b
        self.n.bells = b

    def bell_claim(self):
        """Claim a doorbell; returns its index.

        Raises ``OSError`` (``EBUSY``: every doorbell is taken) or
        ``ValueError`` (closed, no bell table attached).
        """
        cdef int rc
        self._bells()
        rc = mq_bells_claim(self.bells)
        if rc < 0:
            err = self.bells.sys_errno
            raise OSError(err, f"cannot claim a doorbell: {os.strerror(err)}")
        return rc

    def bell_release(self, index):
        """Give a claimed doorbell back (its waiter wakes); nothing once closed."""
        if self.bells == NULL or not self.is_open:
            return
        mq_bells_release(self.bells, <int>_as_i64(index, "index"))

    def bell_arm(self, index, slot):
        """Ring doorbell ``index`` on bumps of ``slot``; counts as one waiter on the slot."""
        cdef size_t s = self._slot(slot)
        self._bells()
        mq_bells_arm(self.bells, <int>_as_i64(index, "index"), s)
        mq_notify_waiters_add(&self.n, s, MQ_NOTIFY_BELL_UNIT)

    def bell_disarm(self, index, slot):
        """Undo one :meth:`bell_arm` (quietly nothing once closed)."""
        if self.bells == NULL or not self.is_open:
            return
        cdef size_t s = self._slot(slot)
        mq_notify_waiters_add(&self.n, s, -<int>MQ_NOTIFY_BELL_UNIT)
        mq_bells_disarm(self.bells, <int>_as_i64(index, "index"), s)

    def bell_load(self, index):
        """Doorbell ``index``'s ring word."""
        self._bells()
        return mq_bells_load(self.bells, <int>_as_i64(index, "index"))

    def bell_kick(self, index):
        """Ring doorbell ``index`` (wakes its waiter); nothing once closed."""
        if self.bells == NULL or not self.is_open:
            return
        mq_bells_kick(self.bells, <int>_as_i64(index, "index"))

    def bell_wait(self, index, expected, timeout):
        """Block (GIL released) until doorbell ``index``'s ring word != ``expected``.

        Returns ``True`` when it differs or a ring arrived, ``False`` after
        ``timeout`` seconds.  Signal handlers run while waiting.
        """
        cdef int i = <int>_as_i64(index, "index")
        cdef uint32_t exp = _as_u32(expected, "expected")
        cdef double t = timeout
        cdef int64_t deadline, left
        cdef int rc
        self._bells()
        if t != t:
            raise ValueError("timeout must not be NaN")
        left = 0 if t <= 0 else (INT64_MAX if t >= 9.2e9 else <int64_t>(t * 1e9))
        deadline = _monotonic_ns()
        deadline = INT64_MAX if left > INT64_MAX - deadline else deadline + left
        self.active += 1
        try:
            while True:
                with nogil:
                    rc = mq_bells_wait(self.bells, i, exp, left)
                if rc != MQ_EINTR:
                    break
                PyErr_CheckSignals()
                left = deadline - _monotonic_ns()
        finally:
            self.active -= 1
            if not self.is_open and self.active == 0:
                self._unmap()
        return rc == 1

    def bell_listen(self, index, fd):
        """Run doorbell ``index``'s listener (blocks; GIL released): every ring writes an
        8-byte 1 to ``fd`` (an eventfd or pipe).  Returns after :meth:`bell_unlisten` or
        :meth:`close`.  For a dedicated thread.
        """
        cdef int i = <int>_as_i64(index, "index")
        cdef int f = <int>_as_i64(fd, "fd")
        self._bells()
        if i < 0 or i >= 256:
            raise ValueError(f"doorbell index {index} out of range [0, 256)")
        self.listen_stop[i] = 0
        self.active += 1
        try:
            with nogil:
                mq_bells_listen(self.bells, i, f, &self.listen_stop[i])
        finally:
            self.active -= 1
            if not self.is_open and self.active == 0:
                self._unmap()

    def bell_uring(self, index):
        """Watch doorbell ``index`` through io_uring instead of a listener thread.

        Returns a :class:`UringBell` (see there).  Raises ``OSError``
        (``ENOSYS``, ``EPERM``, ``EINVAL``: no io_uring, or no futex
        operations in it, Linux < 6.7: use :meth:`bell_listen`) or
        ``ValueError`` (closed, no bell table, index out of range).
        """
        cdef int i = <int>_as_i64(index, "index")
        self._bells()
        if i < 0 or i >= 256:
            raise ValueError(f"doorbell index {index} out of range [0, 256)")
        return UringBell(self, i)

    def bell_unlisten(self, index):
        """Make doorbell ``index``'s :meth:`bell_listen` return (soon: it is woken)."""
        cdef int i = <int>_as_i64(index, "index")
        if 0 <= i < 256:
            self.listen_stop[i] = 1
            if self.bells != NULL and self.is_open:
                mq_bells_kick(self.bells, i)

    cdef int _bells(self) except -1:
        if not self.is_open:
            raise ValueError("Notifier is closed")
        if self.bells == NULL:
            raise ValueError("no bell table attached (call attach_bells first)")
        return 0

    def close(self):
        """Unmap the file (deferred until running waits return); idempotent."""
        cdef int i
        if not self.is_open:
            return
        self.is_open = False
        if self.bells != NULL:
            for i in range(256):  # give this process's doorbells back now: their waiters wake
                self.listen_stop[i] = 1
                mq_bells_release(self.bells, i)
        if self.active == 0:
            self._unmap()

    @property
    def closed(self):
        return not self.is_open

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = "closed" if not self.is_open else f"slots={self.slots}"
        return f"<Notifier {state}>"


# -- the write gate (csrc/wgate.h) ------------------------------------------------------

cdef class WriteGate:
    """One process at a time inside LMDB's write lock (csrc/wgate.h, D42).

    ``enter()`` before beginning an LMDB write transaction, ``leave()`` once it
    committed or aborted.  The threads of this process share the gate: the
    first one in takes the flock (waiting, without the GIL, while another
    process holds it), the last one out drops it.  The counters are only read
    and changed with the GIL held, and the flock is dropped with the GIL held,
    so a thread that was granted the lock and waits for the GIL is always
    counted (``waiting``) before anyone can drop it.  Not for use across
    ``fork()``: a child opens a gate of its own.
    """

    cdef int fd
    cdef Py_ssize_t depth    # threads of this process inside
    cdef Py_ssize_t waiting  # threads of this process waiting for the flock
    cdef readonly str path

    def __cinit__(self):
        self.fd = -1

    def __init__(self, path):
        bpath = os.fsencode(path)
        if b"\0" in bpath:
            raise ValueError("path contains a NUL byte")
        cdef const char *cpath = bpath
        cdef int fd
        with nogil:
            fd = mq_wgate_open(cpath)
        if fd < 0:
            raise OSError(-fd, os.strerror(-fd), os.fsdecode(bpath))
        self.fd = fd
        self.path = os.fsdecode(bpath)

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)  # drops the flock with the description's last descriptor

    cdef int c_enter(self) except -1:
        cdef int rc = 0
        if self.fd < 0:
            raise ValueError("WriteGate is closed")
        if self.depth == 0:
            self.waiting += 1
            with nogil:
                rc = mq_wgate_lock(self.fd)
            self.waiting -= 1
            if rc < 0:
                raise OSError(-rc, os.strerror(-rc), self.path)
        self.depth += 1
        return 0

    cdef void c_leave(self) noexcept:
        if self.depth > 0:
            self.depth -= 1
            if self.depth == 0 and self.waiting == 0 and self.fd >= 0:
                mq_wgate_unlock(self.fd)

    def enter(self):
        """Wait for the gate (``OSError`` when flock fails; ``ValueError`` once closed)."""
        self.c_enter()

    def leave(self):
        """Leave the gate (one call per ``enter``; the last thread out drops the flock)."""
        self.c_leave()

    def close(self):
        """Close the descriptor.  Idempotent.  The flock goes with the description's last
        descriptor, so in a forked child (the description is shared with the parent)
        this drops the inherited copy without unlocking the parent's gate."""
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        self.depth = 0

    @property
    def inside(self):
        """Threads of this process inside the gate."""
        return self.depth


# -- cross-process commit combining (csrc/combine.h) ---------------------------------

cdef class UringBell:
    """Doorbell ``index`` of a :class:`Notifier` watched through io_uring (uring_bell.h).

    :meth:`fileno` is readable while a ring is waiting to be handled.  The
    loop thread calls :meth:`arm`; on a readable event it either calls
    :meth:`reap`, re-reads the armed words and :meth:`arm` s again, or has
    :meth:`on_readable` do the reaping and resolve the waits of the dict given
    to :meth:`dispatch` (``mqlite.aio``, D44), and arms again later, then
    re-reading the armed words.  :attr:`armed`: a wait is submitted and not
    yet reaped.  Not thread-safe (one loop thread).  Holds the notifier's
    mapping until :meth:`close` (idempotent).
    """

    cdef Notifier n
    cdef mq_uring_bell u
    cdef int index
    cdef bint held
    cdef readonly bint armed  # a FUTEX_WAIT is submitted and not yet reaped
    cdef dict waits  # slot -> {future: expected value}: see dispatch()
    cdef object after  # called by on_readable(): see dispatch()

    def __cinit__(self, Notifier n, int index):
        cdef int rc
        memset(&self.u, 0, sizeof(mq_uring_bell))
        self.u.fd = -1
        self.n = n
        self.index = index
        self.held = False
        self.armed = False
        self.waits = None
        self.after = None
        with nogil:
            rc = mq_uring_bell_open(&self.u)
        if rc < 0:
            err = self.u.sys_errno or errno.EIO
            raise OSError(err, f"cannot watch a doorbell through io_uring: {os.strerror(err)}")
        n.active += 1  # the ring word's mapping must outlive pending waits
        self.held = True

    def fileno(self):
        """The io_uring descriptor (-1 once closed)."""
        return self.u.fd

    def arm(self):
        """Wait (in the kernel) for the ring word to move from its current value.

        Raises ``OSError`` (the submission failed) or ``ValueError`` (closed).
        """
        cdef uint32_t *word
        cdef int rc
        if not self.held or not self.n.is_open or self.n.bells == NULL:
            raise ValueError("this doorbell watch is closed")
        word = mq_bells_ring_word(self.n.bells, self.index)
        rc = mq_uring_bell_arm(&self.u, word, mq_bells_load(self.n.bells, self.index))
        if rc < 0:
            err = self.u.sys_errno or errno.EIO
            raise OSError(err, f"cannot arm the doorbell's io_uring wait: {os.strerror(err)}")
        self.armed = True

    def reap(self):
        """Consume the completions: ``(count, errno of a failed wait or 0)``."""
        cdef int failed = 0
        cdef int n = mq_uring_bell_reap(&self.u, &failed)
        if n > 0:
            self.armed = False
        return n, -failed

    def dispatch(self, dict waits, after):
        """Have :meth:`on_readable` resolve the waits of ``waits`` (the caller's dict).

        ``waits`` maps a notifier slot to ``{future: expected value}``; the
        doorbell arms a slot (``Notifier.bell_arm``) when it adds the slot's
        first wait.  :meth:`on_readable` removes the waits it resolves, and
        a slot it leaves without waits it removes and disarms
        (``Notifier.bell_disarm``).  ``after(flags)`` is called by it when
        something is left to do (see there).
        """
        self.waits = waits
        self.after = after

    def on_readable(self):
        """The loop's reader callback (D44): reap, resolve the futures whose word moved.

        A future of :meth:`dispatch`'s dict that is not done gets
        ``set_result(True)`` when its slot's word differs from its expected
        value, after it left the dict; a slot left without waits is disarmed after
        the resolved futures' tasks resumed (D72), unless one of them armed it
        again.  Nothing is submitted here (a system call on the wake-up's
        path); ``after(flags)`` is called when a completion was consumed and
        something is left: ``flags & 1``, a wait is still pending (submit
        again soon); ``flags & 2``, the kernel failed the wait (retry later);
        ``flags & 4``, the notifier is closed (every future was resolved).
        """
        cdef int failed = 0
        cdef int n
        cdef int flags = 0
        cdef uint32_t cur
        cdef Py_ssize_t slot
        cdef list moved = []
        cdef list freed = []  # the slot of each moved future
        cdef Py_ssize_t i
        cdef dict waits = self.waits
        if waits is None:
            return
        n = mq_uring_bell_reap(&self.u, &failed)
        if n > 0:
            self.armed = False
        if failed != 0:
            flags |= 2
        if not self.n.is_open:
            for w in self.waits.values():
                for fut in w:
                    if not fut.done():
                        moved.append(fut)
            flags |= 4
        else:
            for key, w in waits.items():
                slot = key
                if slot < 0 or slot >= self.n.slots:
                    continue
                cur = mq_notify_load(&self.n.n, <size_t>slot)
                for fut, seq in (<dict>w).items():
                    if fut.done():
                        continue
                    if cur != <uint32_t>seq:
                        moved.append(fut)
                        freed.append(key)
                    else:
                        flags |= 1
            # The moved waits leave the dict here (D52): the resumed task's own disarm
            # then has nothing to do.
            for i in range(len(moved)):
                w = waits.get(freed[i])
                if w is not None:
                    (<dict>w).pop(moved[i], None)
        # Resolved after the walk (D48): a future that resumes its task inline lets
        # that task arm, disarm or close the bell while this runs.
        for fut in moved:
            if not fut.done():
                fut.set_result(True)
        if freed:
            self._disarm_emptied(waits, freed)
        after = self.after  # (None once a resumed task closed the bell)
        if n > 0 and flags != 0 and after is not None:
            after(flags)

    cdef void _disarm_emptied(self, dict waits, list slots) except *:
        """Disarm each of ``slots`` that :meth:`on_readable` left without waits.

        Done after the woken tasks resumed, not before (D72): the two atomic updates
        of words the writers share are off the wake-up's path.  A resumed task that
        armed the same slot meanwhile found its (empty) dict and did not arm it
        again, so the slot stays armed for it.  As ``Notifier.bell_disarm``
        (quietly nothing once the notifier closed), also when a resumed task closed
        this bell.
        """
        cdef Notifier nt = self.n
        cdef size_t s
        for key in slots:
            w = waits.get(key)
            if w is None or w:
                continue
            del waits[key]
            if nt.bells != NULL and nt.is_open:
                s = <size_t>(<Py_ssize_t>key)
                mq_notify_waiters_add(&nt.n, s, -<int>MQ_NOTIFY_BELL_UNIT)
                mq_bells_disarm(nt.bells, self.index, s)

    def close(self):
        """Close the ring (a pending wait is cancelled).  Idempotent."""
        mq_uring_bell_close(&self.u)
        self.armed = False
        self.waits = None
        self.after = None
        if self.held:
            self.held = False
            self.n.active -= 1
            if not self.n.is_open and self.n.active == 0:
                self.n._unmap()

    def __dealloc__(self):
        mq_uring_bell_close(&self.u)
        if self.held and self.n is not None:
            self.held = False
            self.n.active -= 1
            if not self.n.is_open and self.n.active == 0:
                self.n._unmap()


cdef class Combiner:
    """The shared ring of csrc/combine.h: slots handed from senders to the next committer.

    See _core.pyi and csrc/combine.h for the contract.  Every method holds the
    GIL for its whole (short, non-blocking) run, so ``close()`` from another
    thread cannot unmap the file under one; after ``close()`` every method
    raises ``ValueError``.
    """

    cdef mq_comb c
    cdef bint is_open
    cdef Py_ssize_t active  # waits running without the GIL
    cdef readonly str path

    def __cinit__(self):
        memset(&self.c, 0, sizeof(mq_comb))
        self.c.fd = -1  # never opened: close() must not close descriptor 0
        self.c.guard = -1

    def __init__(self, path, nslots=64, slot_bytes=4096, mode=0o600):
        cdef int64_t ns = _as_i64(nslots, "nslots")
        cdef int64_t sb = _as_i64(slot_bytes, "slot_bytes")
        cdef int64_t m = _as_i64(mode, "mode")
        cdef int rc
        cdef const char *cpath
        if self.is_open:
            raise ValueError("Combiner is already initialised")
        if ns < 1 or ns > (1 << 20):
            raise ValueError(f"nslots must be in [1, 2**20], not {nslots}")
        if sb < 64 or sb > (1 << 24) or sb % 64:
            raise ValueError(f"slot_bytes must be a multiple of 64 in [64, 2**24], not {slot_bytes}")
        if m < 0 or m > 0o7777:
            raise ValueError(f"mode must be a permission mode (0 to 0o7777), not {mode!r}")
        bpath = os.fsencode(path)
        if b"\0" in bpath:
            raise ValueError("path contains a NUL byte")
        cpath = bpath
        self.path = os.fsdecode(bpath)
        with nogil:
            rc = mq_comb_open(&self.c, cpath, <uint32_t>ns, <uint32_t>sb, <unsigned>m)
        if rc == MQ_EMAGIC:
            raise ValueError(f"{os.fsdecode(bpath)!r} is not a commit ring of this layout "
                             f"({ns} slots of {sb} bytes); delete it while no process has "
                             "the broker open")
        if rc < 0:
            _raise_notify_open(rc, self.c.sys_errno, bpath)
        self.is_open = True

    def __dealloc__(self):
        mq_comb_close(&self.c)

    cdef uint32_t _idx(self, object idx) except? 0:
        if not self.is_open:
            raise ValueError("Combiner is closed")
        cdef int64_t i = _as_i64(idx, "idx")
        if i < 0 or i >= self.c.nslots:
            raise ValueError(f"slot {idx} out of range [0, {self.c.nslots})")
        return <uint32_t>i

    cdef int _check(self) except -1:
        if not self.is_open:
            raise ValueError("Combiner is closed")
        return 0

    @property
    def nslots(self):
        return self.c.nslots

    @property
    def slot_bytes(self):
        return self.c.slot_bytes

    def claim(self, pid):
        """FREE -> CLAIMED for ``pid``; the slot index, or -1 when every slot is busy."""
        self._check()
        cdef int64_t p = _as_i64(pid, "pid")
        if p <= 0 or p > 0xFFFFFFFF:
            raise ValueError(f"pid must be a positive 32-bit int, not {pid}")
        return mq_comb_claim(&self.c, <uint32_t>p)

    def unclaim(self, idx):
        """CLAIMED -> FREE: hand back a slot claimed but not filled."""
        mq_comb_unclaim(&self.c, self._idx(idx))

    def fill(self, idx, payload, gather=True):
        """Copy ``payload`` into claimed slot ``idx`` and publish it FILLED; returns the ticket.

        ``gather``: a committer may wait for operations like this one (a send);
        ``False`` for offset commits and acks, which are never waited for (D46).
        """
        cdef uint32_t i = self._idx(idx)
        cdef Py_buffer view
        cdef uint64_t t
        cdef uint32_t flags = MQ_COMB_F_GATHER if gather else 0
        _acquire(payload, &view, "payload")
        try:
            if view.len > self.c.slot_bytes:
                raise ValueError(f"payload of {view.len} bytes does not fit a slot "
                                 f"({self.c.slot_bytes} bytes)")
            t = mq_comb_fill_flags(&self.c, i, view.buf, <uint32_t>view.len, flags)
        finally:
            PyBuffer_Release(&view)
        return t

    def word(self, idx):
        """``(ticket, state)`` of slot ``idx`` (acquire load)."""
        cdef uint64_t w = mq_comb_word(&self.c, self._idx(idx))
        return (w >> 2, <int>(w & 3))

    def payload(self, idx):
        """A copy of slot ``idx``'s payload (meaningful while it is FILLED)."""
        cdef uint32_t n
        cdef const uint8_t *p = mq_comb_payload(&self.c, self._idx(idx), &n)
        return PyBytes_FromStringAndSize(<const char *>p, n)

    def collect(self, max_slots=None):
        """``[(idx, ticket), ...]`` of the FILLED slots, oldest ticket first."""
        self._check()
        cdef uint32_t cap = self.c.nslots
        cdef uint32_t n, k
        if max_slots is not None:
            cap = <uint32_t>min(max(<int64_t>_as_i64(max_slots, "max_slots"), 0), cap)
        cdef uint32_t *idx = <uint32_t *>malloc(sizeof(uint32_t) * (cap + 1))
        cdef uint64_t *tk = <uint64_t *>malloc(sizeof(uint64_t) * (cap + 1))
        if idx == NULL or tk == NULL:
            free(idx)
            free(tk)
            raise MemoryError()
        try:
            n = mq_comb_collect(&self.c, idx, tk, cap)
            return [(idx[k], tk[k]) for k in range(n)]
        finally:
            free(idx)
            free(tk)

    def set_result(self, idx, status, r0, r1, r2):
        """Lock holder only, slot FILLED: store its result fields."""
        cdef uint32_t i = self._idx(idx)
        cdef int64_t st = _as_i64(status, "status")
        if st < -0x80000000 or st > 0x7FFFFFFF:
            raise ValueError("status must fit 32 bits")
        mq_comb_set_result(&self.c, i, <int32_t>st, _as_i64(r0, "r0"), _as_i64(r1, "r1"),
                           _as_i64(r2, "r2"))

    def done(self, idx, ticket):
        """FILLED(ticket) -> DONE(ticket); ``True`` when this call made the move."""
        cdef uint32_t i = self._idx(idx)
        return mq_comb_done(&self.c, i, <uint64_t>ticket) == 1

    def result(self, idx):
        """``(status, r0, r1, r2)`` of slot ``idx`` (read after seeing DONE of its ticket)."""
        cdef int32_t st
        cdef int64_t a, b, c
        mq_comb_result(&self.c, self._idx(idx), &st, &a, &b, &c)
        return (st, a, b, c)

    def release(self, idx, ticket):
        """DONE(ticket) -> FREE; ``True`` when this call made the move."""
        cdef uint32_t i = self._idx(idx)
        return mq_comb_release(&self.c, i, <uint64_t>ticket) == 1

    def withdraw(self, idx, ticket):
        """FILLED(ticket) -> FREE; ``False`` when the slot moved on (DONE)."""
        cdef uint32_t i = self._idx(idx)
        return mq_comb_withdraw(&self.c, i, <uint64_t>ticket) == 1

    def trylock(self):
        """Take the combining lock without blocking (flock); ``True`` when taken.

        Per open file description: threads of one process must exclude each
        other themselves.  ``OSError`` for an unexpected flock error.
        """
        self._check()
        cdef int rc = mq_comb_trylock(&self.c)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        return rc == 1

    def unlock(self):
        """Release the combining lock."""
        self._check()
        mq_comb_unlock(&self.c)

    def wait(self, idx, ticket, timeout):
        """Sleep (GIL released) while slot ``idx`` is FILLED(``ticket``), at most
        ``timeout`` seconds; ``True`` when it moved on (``mq_comb_wait`` is
        ``mq_comb_sleep(...) == 1``)."""
        return self.sleep(idx, ticket, timeout) == 1

    def sleep(self, idx, ticket, timeout):
        """:meth:`wait` telling its ways out apart (``mq_comb_sleep``): 1 when the slot
        moved on, 0 when woken with it still FILLED(``ticket``), -1 when ``timeout``
        seconds passed (D60: a sender tries the lock after a timed-out wait)."""
        cdef uint32_t i = self._idx(idx)
        cdef uint64_t t = <uint64_t>ticket
        cdef int64_t ns = <int64_t>(float(timeout) * 1e9)
        cdef int rc
        self.active += 1
        try:
            with nogil:
                rc = mq_comb_sleep(&self.c, i, t, ns)
        finally:
            self.active -= 1
            if not self.is_open and self.active == 0:
                mq_comb_close(&self.c)
        return rc

    def wake(self, idx):
        """Wake the waiters of slot ``idx``."""
        mq_comb_wake(&self.c, self._idx(idx))

    def intact(self):
        """``False`` once the file was truncated under this process (the SIGBUS guard
        grew it back with zeros): no slot is handed out any more."""
        self._check()
        return mq_comb_intact(&self.c) == 1

    def filled(self):
        """How many slots are FILLED now."""
        self._check()
        return mq_comb_filled(&self.c)

    def filled_gathering(self):
        """How many slots are FILLED now by operations a commit may gather for (sends)."""
        self._check()
        return mq_comb_filled_gathering(&self.c)

    def gather(self, max_wait_us):
        """Lock holder, before collecting: sleep (GIL released) until the expected
        number of slots is FILLED, at most ``min(max_wait_us, commit time / 2)``
        microseconds (csrc/combine.h); returns how many are FILLED."""
        self._check()
        cdef int64_t us = _as_i64(max_wait_us, "max_wait_us")
        cdef uint32_t n
        if us < 0 or us > 1000000:
            raise ValueError(f"max_wait_us must be in [0, 1000000], not {max_wait_us}")
        self.active += 1
        try:
            with nogil:
                n = mq_comb_gather(&self.c, <uint32_t>us)
        finally:
            self.active -= 1
            if not self.is_open and self.active == 0:
                mq_comb_close(&self.c)
        return n

    def gathering(self):
        """``True`` while the lock holder sleeps in a gather (the header's hint)."""
        self._check()
        return mq_comb_gathering(&self.c) == 1

    def held(self):
        """``True`` while the header says a holder has the combining lock (the
        holder word's hint, D60: set by ``trylock``, cleared by ``unlock``; a
        holder killed in between leaves it set until the next holder)."""
        self._check()
        return mq_comb_held(&self.c) == 1

    def note_commit(self, taken, commit_ns):
        """After a combined commit of ``taken`` gathering slots (sends) that took
        ``commit_ns``: update the gather hints."""
        self._check()
        cdef int64_t t = _as_i64(taken, "taken")
        cdef int64_t ns = _as_i64(commit_ns, "commit_ns")
        if t < 0 or t > 0xFFFFFFFF or ns < 0:
            raise ValueError("taken must be a 32-bit count and commit_ns >= 0")
        mq_comb_note_commit(&self.c, <uint32_t>t, <uint64_t>ns)

    def note_send(self):
        """A send was just filled: stamp the header's ``last_send_ns`` hint."""
        self._check()
        mq_comb_note_send(&self.c)

    def since_send(self):
        """Nanoseconds since any process last stamped a send (a very large number: never)."""
        self._check()
        return mq_comb_since_send(&self.c)

    def follow(self, idx, ticket, window_ns, max_ns):
        """Follower of FILLED slot ``idx``: when a send was filled within ``window_ns``,
        wait (GIL released) up to about two commit durations, at most ``max_ns``, for a
        committer to take the slot (csrc/combine.h).  ``True`` when it was taken."""
        self._check()
        cdef uint32_t i = self._idx(idx)
        cdef uint64_t t = <uint64_t>ticket
        cdef int64_t w = _as_i64(window_ns, "window_ns")
        cdef int64_t m = _as_i64(max_ns, "max_ns")
        cdef int r
        if w < 0 or m < 0 or m > 1000000000:
            raise ValueError("window_ns must be >= 0 and max_ns in [0, 1e9]")
        self.active += 1
        try:
            with nogil:
                r = mq_comb_follow(&self.c, i, t, w, m)
        finally:
            self.active -= 1
            if not self.is_open and self.active == 0:
                mq_comb_close(&self.c)
        return r == 1

    def hints(self):
        """``(active, commit_us, fill_seq)`` of the header's gather hints."""
        self._check()
        cdef uint32_t a, cu, sq
        mq_comb_hints(&self.c, &a, &cu, &sq)
        return (a, cu, sq)

    def reclaim(self):
        """Free CLAIMED/DONE slots of owners that no longer exist; returns how many."""
        self._check()
        return mq_comb_reclaim(&self.c)

    def close(self):
        """Unmap the file (deferred until running waits return); idempotent."""
        if self.is_open:
            self.is_open = False
            if self.active == 0:
                mq_comb_close(&self.c)

    @property
    def closed(self):
        return not self.is_open

    def __repr__(self):
        state = "closed" if not self.is_open else f"{self.c.nslots}x{self.c.slot_bytes}"
        return f"<Combiner {state}>"


# -- SIGBUS guards (csrc/guard.h) ------------------------------------------------------

def buffer_address(data):
    """The address of ``data``'s first byte (a buffer-protocol object), as an int."""
    cdef Py_buffer view
    _acquire(data, &view, "data")
    try:
        return <size_t>view.buf
    finally:
        PyBuffer_Release(&view)


def guard_zero(start, length, fd):
    """Guard ``[start, start + length)``, a read-only shared map of file ``fd`` (MQ_GUARD_ZERO).

    A SIGBUS inside the range maps zero pages over the rest of it instead of
    killing the process, and bumps :func:`guard_faults`; :func:`guard_restore`
    maps the file back.  ``fd`` must stay open while the guard exists.
    Returns the guard id; raises ``OSError`` when the table is full or the
    handler cannot be installed.
    """
    return _guard_add(start, length, fd, MQ_GUARD_ZERO)


def guard_fill(start, length, fd):
    """Guard ``[start, start + length)``, a writable shared map of file ``fd`` (MQ_GUARD_FILL).

    For LMDB's map under ``writemap``: a SIGBUS inside the range (a write to a
    hole the file system could not back, or a file shrunk under the map) grows
    the file back to ``length`` bytes, allocates its blocks from the faulting
    page on (up to 1 MiB) and retries the access, bumping :func:`guard_faults`.
    When the blocks cannot be had, the fault goes to the previous disposition
    (the process dies: its open write transaction is lost, nothing committed).
    ``fd`` (opened read-write) must stay open while the guard exists.  Returns
    the guard id; raises ``OSError`` when the table is full or the handler
    cannot be installed.
    """
    return _guard_add(start, length, fd, MQ_GUARD_FILL)


cdef int _guard_add(start, length, fd, int mode) except -1:
    """Add a guard of ``mode`` (guard_zero, guard_fill): the id; ValueError, OSError."""
    cdef int64_t s = _as_i64(start, "start")
    cdef int64_t n = _as_i64(length, "length")
    cdef int64_t f = _as_i64(fd, "fd")
    cdef int gid
    if s <= 0 or n <= 0 or f < 0 or f > INT32_MAX:
        raise ValueError("start and length must be positive, fd a descriptor")
    gid = mq_guard_add(<void *><size_t>s, <size_t>n, <int>f, mode)
    if gid < 0:
        raise OSError(mq_strerror(gid).decode())
    return gid


def guard_restore(guard_id):
    """Map the file back over the pages a fault zeroed (see :func:`guard_zero`)."""
    cdef int rc = mq_guard_restore(<int>_as_i64(guard_id, "guard_id"))
    if rc < 0:
        raise OSError(mq_strerror(rc).decode())


def guard_remove(guard_id):
    """Withdraw a guard from :func:`guard_zero` (call before the range is unmapped)."""
    mq_guard_remove(<int>_as_i64(guard_id, "guard_id"))


def guard_faults():
    """How many SIGBUS faults the guards repaired since the process started."""
    return mq_guard_faults()


# -- records from other backends (the Kafka backend) ---------------------------------

cdef extern from "Python.h":
    ctypedef struct PyMethodDef:
        const char* ml_name
        void* ml_meth
        int ml_flags
    ctypedef struct PyMethodDescrObject:
        PyMethodDef* d_method
    int METH_NOARGS

# A METH_NOARGS method's C function: (self, NULL) -> new reference, NULL with an exception set.
ctypedef object (*_noargs_fn)(object, PyObject*)


cdef class _KafkaAccessors:
    """The C functions of confluent-kafka's ``Message`` getters, looked up once.

    ``k.topic()`` from Cython costs a method lookup and a call (~75 ns; eight
    per record were most of the consumer's overhead over raw confluent-kafka).
    These are the same methods, called through the ``PyMethodDef`` entry that
    CPython itself would call, for objects of exactly that type only.
    """

    cdef type tp
    cdef _noargs_fn error, topic, partition, offset, timestamp, key, value, headers

    cdef bint load(self, type tp) except -1:
        cdef _noargs_fn fns[8]
        cdef int i = 0
        cdef PyMethodDef* md
        for name in ("error", "topic", "partition", "offset", "timestamp", "key", "value",
                     "headers"):
            d = tp.__dict__.get(name)
            if type(d) is not _method_descriptor:
                return False
            md = (<PyMethodDescrObject*><PyObject*>d).d_method
            if md.ml_flags != METH_NOARGS:
                return False
            fns[i] = <_noargs_fn>md.ml_meth
            i += 1
        self.error, self.topic, self.partition, self.offset = fns[0], fns[1], fns[2], fns[3]
        self.timestamp, self.key, self.value, self.headers = fns[4], fns[5], fns[6], fns[7]
        self.tp = tp
        return True


cdef _KafkaAccessors _kafka_fns = None
cdef type _method_descriptor = type(str.upper)


def messages_from_kafka(list raw, Py_ssize_t start, list out, dict last):
    """Append a Message to ``out`` for each confluent-kafka message of ``raw[start:]``.

    Stops at the first message whose ``error()`` is not None and returns its
    index (``len(raw)`` when there is none), so the caller decides what the
    error means.  ``last[(topic, partition)]`` is set to the offset of the
    last record converted per partition.  A null header value reads as
    ``b""``.  The Kafka consumer's per-record cost is this loop: it makes each
    Message directly, without the checks of ``Message.__init__`` (librdkafka
    hands out exact ``str`` topics and ``bytes`` keys and values), and calls
    the getters through their C functions (:class:`_KafkaAccessors`).
    """
    global _kafka_fns
    cdef Message m
    cdef Py_ssize_t i, n = len(raw)
    cdef long long partition, prev_partition = -1, prev_offset = -1
    cdef object prev_topic = None
    cdef _KafkaAccessors f = _kafka_fns
    if f is None and start < n:
        f = _KafkaAccessors()
        if f.load(type(raw[start])):
            _kafka_fns = f
        else:
            f = None  # not the getters expected (another client's messages): method calls
    for i in range(start, n):
        k = raw[i]
        m = Message.__new__(Message)
        if f is not None and type(k) is f.tp:
            if f.error(k, NULL) is not None:
                n = i
                break
            topic = f.topic(k, NULL)
            partition = f.partition(k, NULL)
            m.offset = f.offset(k, NULL)
            m.timestamp_ms = f.timestamp(k, NULL)[1]
            m.key = f.key(k, NULL)
            m.value = f.value(k, NULL)
            headers = f.headers(k, NULL)
        else:
            if k.error() is not None:
                n = i
                break
            topic = k.topic()
            partition = k.partition()
            m.offset = k.offset()
            m.timestamp_ms = k.timestamp()[1]
            m.key = k.key()
            m.value = k.value()
            headers = k.headers()
        if partition != prev_partition or topic != prev_topic:
            # a fetch hands out runs of one partition: one ``last`` entry per run, and the
            # run's messages share one topic str
            if prev_topic is not None:
                last[(prev_topic, prev_partition)] = prev_offset
            prev_topic = topic
            prev_partition = partition
        m.topic = prev_topic
        m.partition = partition
        prev_offset = m.offset
        if headers:
            m._headers = tuple([(name, b"" if v is None else v) for name, v in headers])
        out.append(m)
    if prev_topic is not None:
        last[(prev_topic, prev_partition)] = prev_offset
    return n


# -- the single-message send path (docs/decisions.md D36) ----------------------------

include "_sendpath.pxi"


# -- the App's lean handler loop (docs/decisions.md D40) -------------------------------

include "_lanepath.pxi"


# -- the commit ring's apply step (docs/decisions.md D50) ----------------------------

include "_ringpath.pxi"


# -- who is inside a consumer's methods (docs/decisions.md D53) ----------------------

include "_guard.pxi"
