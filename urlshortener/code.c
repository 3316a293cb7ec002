/*
 * code.c - the keyed permutation and base62 codes of code.h. Read code.h first: the design and
 * its invariants are there.
 */
#include "code.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd.h"

static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct us_codec {
    uint64_t domain;
    size_t length;   /* characters per code */
    unsigned half;   /* h: bits per Feistel half */
    uint64_t mask;   /* 2^h - 1 */
    uint64_t k0, k1; /* the SipHash key */
};

/* ---- SipHash-2-4 of one 64-bit word (the paper's algorithm, for an 8-byte message) ---- */

static inline uint64_t rotl(uint64_t x, int b) {
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = rotl(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = rotl(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = rotl(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = rotl(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = rotl(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = rotl(v2, 32);                                                                         \
    } while (0)

static uint64_t siphash_word(uint64_t k0, uint64_t k1, uint64_t m) {
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
    uint64_t b = (uint64_t)8 << 56; /* the message length in the last block */
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the codec ---- */

int us_codec_new(const unsigned char key[US_KEY_LEN], uint64_t domain, us_codec **out) {
    uint64_t max = 1;
    for (int i = 0; i < US_CODE_MAX; i++)
        max *= 62;
    if (domain < 62 || domain > max)
        return -EINVAL;
    us_codec *c = sd_xcalloc(1, sizeof *c);
    c->domain = domain;
    for (uint64_t v = domain - 1; v > 0; v /= 62)
        c->length++;
    unsigned bits = 0;
    while (bits < 64 && ((uint64_t)1 << bits) < domain)
        bits++;
    c->half = (bits + 1) / 2;
    c->mask = ((uint64_t)1 << c->half) - 1;
    /* The round key: 128 bits of HMAC-SHA256(key, label), so the codec key itself is never fed
     * to SipHash and one key could serve other uses under other labels. */
    static const char label[] = "us-feistel-round-key-v1";
    unsigned char mac[32];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), key, US_KEY_LEN, (const unsigned char *)label, sizeof label - 1, mac,
         &maclen);
    assert(maclen == 32);
    memcpy(&c->k0, mac, 8);
    memcpy(&c->k1, mac + 8, 8);
    OPENSSL_cleanse(mac, sizeof mac);
    *out = c;
    return 0;
}

void us_codec_free(us_codec *c) {
    if (!c)
        return;
    OPENSSL_cleanse(c, sizeof *c);
    free(c);
}

uint64_t us_codec_domain(const us_codec *c) {
    return c->domain;
}
size_t us_codec_length(const us_codec *c) {
    return c->length;
}

static uint64_t round_fn(const us_codec *c, unsigned round, uint64_t half) {
    return siphash_word(c->k0, c->k1, ((uint64_t)round << 32) | half) & c->mask;
}

/* One pass of the network over 2h bits: (L, R) -> (R, L ^ F_i(R)) for each round i. */
static uint64_t feistel(const us_codec *c, uint64_t x) {
    uint64_t l = x >> c->half, r = x & c->mask;
    for (unsigned i = 0; i < US_CODEC_ROUNDS; i++) {
        uint64_t t = l ^ round_fn(c, i, r);
        l = r;
        r = t;
    }
    return (l << c->half) | r;
}

/* Its inverse: (L, R) -> (R ^ F_i(L), L) for the rounds in reverse. */
static uint64_t feistel_inverse(const us_codec *c, uint64_t y) {
    uint64_t l = y >> c->half, r = y & c->mask;
    for (unsigned i = US_CODEC_ROUNDS; i-- > 0;) {
        uint64_t t = r ^ round_fn(c, i, l);
        r = l;
        l = t;
    }
    return (l << c->half) | r;
}

/* Cycle-walking (code.h, design 2): a step out of the domain is walked on until it is back. */
uint64_t us_codec_permute(const us_codec *c, uint64_t x) {
    assert(x < c->domain);
    do
        x = feistel(c, x);
    while (x >= c->domain);
    return x;
}

uint64_t us_codec_unpermute(const us_codec *c, uint64_t y) {
    assert(y < c->domain);
    do
        y = feistel_inverse(c, y);
    while (y >= c->domain);
    return y;
}

/* ---- base62 ---- */

int us_code_encode(const us_codec *c, uint64_t id, char out[US_CODE_MAX + 1]) {
    if (id >= c->domain)
        return -ERANGE;
    uint64_t v = us_codec_permute(c, id);
    for (size_t i = c->length; i-- > 0;) {
        out[i] = alphabet[v % 62];
        v /= 62;
    }
    assert(v == 0);
    out[c->length] = '\0';
    return 0;
}

static int digit_value(char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A' + 10;
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 36;
    return -1;
}

/* The base62 value of a canonical code, or -EINVAL. */
static int code_value(const us_codec *c, const char *code, size_t len, uint64_t *out) {
    if (len != c->length)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        int d = digit_value(code[i]);
        if (d < 0)
            return -EINVAL;
        v = v * 62 + (uint64_t)d; /* no overflow: length <= US_CODE_MAX */
    }
    if (v >= c->domain)
        return -EINVAL;
    *out = v;
    return 0;
}

int us_code_decode(const us_codec *c, const char *code, size_t len, uint64_t *id) {
    uint64_t v;
    if (code_value(c, code, len, &v) != 0)
        return -EINVAL;
    *id = us_codec_unpermute(c, v);
    return 0;
}

int us_code_is_canonical(const us_codec *c, const char *code, size_t len) {
    uint64_t v;
    return code_value(c, code, len, &v) == 0;
}

/* ---- keys ---- */

int us_key_derive(const void *secret, size_t len, unsigned char out[US_KEY_LEN]) {
    static const char label[] = "us-code-key-v1";
    if (len < 16)
        return -EINVAL;
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), secret, (int)len, (const unsigned char *)label, sizeof label - 1, out,
         &maclen);
    assert(maclen == US_KEY_LEN);
    return 0;
}

int us_key_load(const char *path, unsigned char out[US_KEY_LEN]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    unsigned char buf[4097];
    size_t n = 0;
    for (;;) {
        ssize_t got = read(fd, buf + n, sizeof buf - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            close(fd);
            OPENSSL_cleanse(buf, sizeof buf);
            return -e;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n == sizeof buf)
            break;
    }
    close(fd);
    int rc = -EINVAL;
    if (n < sizeof buf) {
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
            n--;
        rc = us_key_derive(buf, n, out);
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return rc;
}
