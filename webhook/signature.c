/*
 * signature.c - Standard Webhooks signatures (see signature.h for the scheme and the rules).
 *
 * HMAC-SHA256 runs through OpenSSL 3's EVP_MAC interface: the signed bytes are three pieces
 * (id ".", timestamp ".", body), fed with three updates, so the body is never copied. The
 * EVP_MAC object is fetched once per process (pthread_once); a context is made per signature.
 */
#include "signature.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sd.h"

const char *wh_strerror(int code) {
    switch (code) {
    case WH_ESECRET:
        return "the secret is not whsec_ followed by the base64 of 24 to 64 bytes";
    case WH_EHEADER:
        return "a webhook-id, webhook-timestamp or webhook-signature header is missing or "
               "malformed";
    case WH_ETIMESTAMP:
        return "the webhook-timestamp is outside the tolerance";
    case WH_ESIGNATURE:
        return "no webhook-signature entry matches";
    case WH_ESPACE:
        return "the output buffer is too small";
    case WH_ECRYPTO:
        return "OpenSSL failed";
    }
    return sd_strerror(code);
}

/* ---- base64 (RFC 4648, with padding) ---- */

/* Decodes text of n bytes, strictly: length a multiple of 4, '=' only as the last one or two
 * bytes. Returns the number of bytes written to out (at most cap), or -1. */
static long base64_decode(const char *text, size_t n, unsigned char *out, size_t cap) {
    if (n % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = text[i + j];
            int d;
            if (c >= 'A' && c <= 'Z')
                d = c - 'A';
            else if (c >= 'a' && c <= 'z')
                d = c - 'a' + 26;
            else if (c >= '0' && c <= '9')
                d = c - '0' + 52;
            else if (c == '+')
                d = 62;
            else if (c == '/')
                d = 63;
            else if (c == '=' && i + 4 == n && j >= 2)
                d = 0, pad++;
            else
                return -1;
            if (pad && c != '=')
                return -1; /* data after padding */
            v = v << 6 | (uint32_t)d;
        }
        int bytes = 3 - pad;
        if (o + (size_t)bytes > cap)
            return -1;
        for (int b = 0; b < bytes; b++)
            out[o++] = (unsigned char)(v >> (16 - 8 * b));
    }
    return (long)o;
}

/* ---- secrets ---- */

int wh_secret_generate(size_t nbytes, char *out, size_t outlen) {
    if (nbytes < WH_SECRET_MIN_BYTES || nbytes > WH_SECRET_MAX_BYTES)
        return -EINVAL;
    size_t need = strlen(WH_SECRET_PREFIX) + 4 * ((nbytes + 2) / 3) + 1;
    if (outlen < need)
        return WH_ESPACE;
    unsigned char key[WH_SECRET_MAX_BYTES];
    if (RAND_bytes(key, (int)nbytes) != 1) {
        OPENSSL_cleanse(key, sizeof key);
        return WH_ECRYPTO;
    }
    size_t pl = strlen(WH_SECRET_PREFIX);
    memcpy(out, WH_SECRET_PREFIX, pl);
    EVP_EncodeBlock((unsigned char *)out + pl, key, (int)nbytes);
    OPENSSL_cleanse(key, sizeof key);
    return 0;
}

int wh_secret_parse(const char *text, wh_secret *out) {
    size_t pl = strlen(WH_SECRET_PREFIX);
    if (strncmp(text, WH_SECRET_PREFIX, pl) == 0)
        text += pl;
    long n = base64_decode(text, strlen(text), out->key, sizeof out->key);
    if (n < WH_SECRET_MIN_BYTES) {
        wh_secret_clear(out);
        return WH_ESECRET;
    }
    out->len = (size_t)n;
    return 0;
}

void wh_secret_clear(wh_secret *s) {
    if (s == NULL)
        return;
    OPENSSL_cleanse(s->key, sizeof s->key);
    s->len = 0;
}

/* ---- HMAC-SHA256 ---- */

static EVP_MAC *hmac;
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;

static void hmac_fetch(void) {
    hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

/* Writes "v1," + base64(HMAC-SHA256(key, id "." ts "." body)) and a NUL into entry, which
 * holds WH_SIGNATURE_ENTRY_LEN + 1 bytes. Returns 0 or WH_ECRYPTO. */
static int entry_compute(const wh_secret *s, const char *id, const char *ts, const void *body,
                         size_t body_len, char *entry) {
    pthread_once(&hmac_once, hmac_fetch);
    if (hmac == NULL)
        return WH_ECRYPTO;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac);
    if (ctx == NULL)
        return WH_ECRYPTO;
    char digest_name[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
                           OSSL_PARAM_construct_end()};
    unsigned char mac[32];
    size_t mac_len = 0;
    int ok = EVP_MAC_init(ctx, s->key, s->len, params) == 1 &&
             EVP_MAC_update(ctx, (const unsigned char *)id, strlen(id)) == 1 &&
             EVP_MAC_update(ctx, (const unsigned char *)".", 1) == 1 &&
             EVP_MAC_update(ctx, (const unsigned char *)ts, strlen(ts)) == 1 &&
             EVP_MAC_update(ctx, (const unsigned char *)".", 1) == 1 &&
             (body_len == 0 || EVP_MAC_update(ctx, body, body_len) == 1) &&
             EVP_MAC_final(ctx, mac, &mac_len, sizeof mac) == 1 && mac_len == sizeof mac;
    EVP_MAC_CTX_free(ctx);
    if (!ok)
        return WH_ECRYPTO;
    memcpy(entry, "v1,", 3);
    EVP_EncodeBlock((unsigned char *)entry + 3, mac, (int)sizeof mac);
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

/* Rule 1 for ids: 1 to WH_ID_MAX printable ASCII bytes, no '.'. */
static int id_ok(const char *id) {
    size_t n = 0;
    for (; id[n]; n++) {
        unsigned char c = (unsigned char)id[n];
        if (c < 0x21 || c > 0x7e || c == '.' || n >= WH_ID_MAX)
            return 0;
    }
    return n > 0;
}

int wh_signature_sign(const wh_secret *secrets, size_t n, const char *id, int64_t timestamp,
                      const void *body, size_t body_len, char *out, size_t outlen) {
    if (n == 0 || timestamp < 0)
        return -EINVAL;
    if (id == NULL || !id_ok(id))
        return WH_EHEADER;
    if (outlen < n * (WH_SIGNATURE_ENTRY_LEN + 1))
        return WH_ESPACE;
    char ts[24];
    snprintf(ts, sizeof ts, "%" PRId64, timestamp);
    for (size_t i = 0; i < n; i++) {
        char *entry = out + i * (WH_SIGNATURE_ENTRY_LEN + 1);
        int rc = entry_compute(&secrets[i], id, ts, body, body_len, entry);
        if (rc != 0) {
            out[0] = '\0';
            return rc;
        }
        if (i > 0)
            entry[-1] = ' '; /* replaces the previous entry's NUL */
    }
    return 0;
}

/* Rule 1 for timestamps: 1 to 19 decimal digits, nothing else. Returns 0 and *out, or -1. */
static int timestamp_parse(const char *s, int64_t *out) {
    size_t n = strlen(s);
    if (n == 0 || n > 18) /* 18 digits cannot overflow int64 */
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int wh_signature_verify(const wh_secret *secrets, size_t n, const char *id, const char *timestamp,
                        const char *signature, const void *body, size_t body_len, int64_t now,
                        int64_t tolerance_s) {
    int64_t ts;
    if (id == NULL || timestamp == NULL || signature == NULL || !id_ok(id) ||
        timestamp_parse(timestamp, &ts) != 0)
        return WH_EHEADER;
    if (ts < now - tolerance_s || ts > now + tolerance_s)
        return WH_ETIMESTAMP;
    /* The expected entries, one per secret, computed over the timestamp exactly as received
     * (rule 1 makes that the canonical decimal text, leading zeros aside, which then fail the
     * comparison like any other change). */
    char expected[8][WH_SIGNATURE_ENTRY_LEN + 1];
    int matched = 0;
    for (size_t base = 0; base < n; base += 8) {
        size_t batch = n - base < 8 ? n - base : 8;
        for (size_t i = 0; i < batch; i++) {
            int rc = entry_compute(&secrets[base + i], id, timestamp, body, body_len, expected[i]);
            if (rc != 0) {
                OPENSSL_cleanse(expected, sizeof expected);
                return rc;
            }
        }
        /* Every entry against every expected one, without stopping at a match. */
        const char *p = signature;
        while (*p) {
            size_t len = strcspn(p, " ");
            if (len == WH_SIGNATURE_ENTRY_LEN)
                for (size_t i = 0; i < batch; i++)
                    matched |= CRYPTO_memcmp(p, expected[i], WH_SIGNATURE_ENTRY_LEN) == 0;
            p += len;
            while (*p == ' ')
                p++;
        }
    }
    OPENSSL_cleanse(expected, sizeof expected);
    return matched ? 0 : WH_ESIGNATURE;
}
