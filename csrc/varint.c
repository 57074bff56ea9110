#include "varint.h"

int mq_varint_encode(int64_t v, uint8_t *out)
{
    return mq_varint_put(v, out);
}

int mq_varint_decode(const uint8_t *p, const uint8_t *end, int64_t *out)
{
    return mq_varint_get(p, end, out);
}
