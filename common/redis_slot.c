/*
 * redis_slot.c - the Redis Cluster hash slot of a key (see redis.h), for the code that must keep
 * the keys of one script call or one batch on one slot, and for a cluster router.
 *
 * Redis Cluster specification, "Keys distribution model" and "Hash tags": the slot is
 * CRC16(key) mod 16384, where CRC16 is the XMODEM variant (polynomial 0x1021, initial value 0,
 * no reflection, no final XOR), and where the key holds a hash tag only its tag is hashed.
 */
#include <string.h>

#include "redis.h"

/* CRC16-CCITT (XMODEM), bit by bit: short keys, and no table to read about. */
static uint16_t crc16(const char *s, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)s[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

int sd_redis_key_slot(const char *key, size_t len) {
    /* The hash tag is what lies between the first '{' and the first '}' after it, if that is
     * not empty; otherwise the whole key is hashed. */
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & 16383;
    }
    return crc16(key, len) & 16383;
}
