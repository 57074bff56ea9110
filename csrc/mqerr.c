#include "mqerr.h"

const char *mq_strerror(int code)
{
    switch (code) {
    case MQ_OK: return "success";
    case MQ_ETRUNC: return "truncated: a field runs past the end of the data";
    case MQ_EMAGIC: return "bad magic byte (not a version 1 record batch)";
    case MQ_ELENGTH: return "length field does not match the stored size";
    case MQ_ECRC: return "CRC mismatch";
    case MQ_EATTR: return "reserved attribute bits are set";
    case MQ_ECODEC: return "unsupported compression codec";
    case MQ_ECOUNT: return "record_count does not match the records";
    case MQ_EVARINT: return "varint longer than 10 bytes or wider than 64 bits";
    case MQ_EOFFSET: return "offset_delta is not the record's index";
    case MQ_ERECLEN: return "record_length does not match the record's fields";
    case MQ_EUTF8: return "header name is not valid UTF-8";
    case MQ_ETIMESTAMP: return "timestamps do not match the batch header";
    case MQ_EFIELDLEN: return "negative length or count";
    case MQ_ERECATTR: return "record attributes are not 0";
    case MQ_ETOOBIG: return "batch larger than 4 GiB - 1 bytes";
    case MQ_EINTR: return "interrupted by a signal";
    case MQ_EINVAL: return "slot count out of range";
    case MQ_EOPEN: return "cannot open or create the notify file";
    case MQ_ELOCK: return "cannot lock the notify file";
    case MQ_ESIZE: return "cannot size the notify file";
    case MQ_EMAP: return "cannot map the notify file";
    case MQ_EGUARD: return "cannot guard the mapping against SIGBUS";
    default: return "unknown error";
    }
}
