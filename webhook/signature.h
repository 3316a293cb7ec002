/*
 * signature.h - Standard Webhooks 1.0 signatures: the sender signs each delivery, the receiver
 * verifies it before doing anything with the body.
 *
 * On the wire, three headers carry what is signed:
 *
 *   webhook-id: msg_2Lq...            the same on every retry and replay of one message
 *   webhook-timestamp: 1764880000     Unix seconds, set per attempt
 *   webhook-signature: v1,K5o... v1,9xT...
 *
 * Each signature entry is "v1," and the base64 of HMAC-SHA256(key, id "." timestamp "." body)
 * over the body's raw bytes, exactly as sent: a receiver that re-serialises parsed JSON before
 * verifying rejects real deliveries. There is one entry per active secret, so a secret can be
 * rotated without a gap: the sender signs with the old and the new one for a grace period, and
 * a receiver that knows either accepts.
 *
 * A secret is "whsec_" and the base64 of 24 to 64 random bytes (the key). The text form is what
 * users copy; wh_secret holds the decoded key.
 *
 * Verification (wh_signature_verify), in this order:
 *  1. The id is 1 to 256 printable ASCII bytes without '.', and the timestamp 1 to 18 decimal
 *     digits (no sign, no blanks, no trailing bytes): else WH_EHEADER. A '.' in an id would
 *     make the signed bytes ambiguous (id "a.1700000000", timestamp T, body B signs the same
 *     bytes as id "a", timestamp 1700000000, body "T.B"), so ids with dots are neither signed
 *     nor accepted.
 *  2. The timestamp is within tolerance_s of now, either side: else WH_ETIMESTAMP (a replayed
 *     capture is refused once it is older than that).
 *  3. Some entry of the signature header equals "v1,<expected>" for some listed secret, compared
 *     with CRYPTO_memcmp over the whole entry, so the time taken does not depend on how many
 *     leading bytes matched: else WH_ESIGNATURE. Entries of other versions are ignored. The
 *     comparison is of the base64 text, not decoded bytes, so exactly one spelling of a
 *     signature is accepted (as the npm standardwebhooks package does).
 *
 * No function here logs, and no error says anything about a key: wh_strerror() returns static
 * text. Keys are wiped (OPENSSL_cleanse) by wh_secret_clear() and by the functions that decode
 * them on their failure paths.
 */
#ifndef WH_SIGNATURE_H
#define WH_SIGNATURE_H

#include <stddef.h>
#include <stdint.h>

#define WH_SECRET_PREFIX "whsec_"
#define WH_SECRET_MIN_BYTES 24
#define WH_SECRET_MAX_BYTES 64
/* The longest secret text: "whsec_" + base64 of 64 bytes (88) + NUL. */
#define WH_SECRET_TEXT_MAX (6 + 88 + 1)
/* One signature entry: "v1," + base64 of 32 bytes (44). */
#define WH_SIGNATURE_ENTRY_LEN (3 + 44)
#define WH_ID_MAX 256

/* Error codes of webhook/ (negative, below common/'s). */
enum {
    WH_ESECRET = -11001,    /* a secret that is not whsec_ + base64 of 24 to 64 bytes */
    WH_EHEADER = -11002,    /* a missing or malformed id, timestamp or signature header */
    WH_ETIMESTAMP = -11003, /* the timestamp is outside the tolerance */
    WH_ESIGNATURE = -11004, /* no signature entry matches any secret */
    WH_ESPACE = -11005,     /* the output buffer is too small */
    WH_ECRYPTO = -11006,    /* OpenSSL failed (no randomness, no HMAC) */
};

/* Static text for a code of this file (or of sd_strerror's). Never holds a key. */
const char *wh_strerror(int code);

/* A decoded secret. Wipe it with wh_secret_clear() when done. */
typedef struct wh_secret {
    unsigned char key[WH_SECRET_MAX_BYTES];
    size_t len;
} wh_secret;

/*
 * Generates a new secret of nbytes random bytes (WH_SECRET_MIN_BYTES to WH_SECRET_MAX_BYTES,
 * from OpenSSL's RAND_bytes) and writes its text form, NUL-terminated, into out. Returns 0,
 * -EINVAL for a bad nbytes, WH_ESPACE when outlen is too small (WH_SECRET_TEXT_MAX always
 * suffices), WH_ECRYPTO when no randomness could be had.
 */
int wh_secret_generate(size_t nbytes, char *out, size_t outlen);

/*
 * Decodes a secret's text ("whsec_" + base64, or the base64 alone, as the npm package takes it)
 * into *out. Returns 0 or WH_ESECRET (bad base64, or a key outside 24..64 bytes; *out wiped).
 */
int wh_secret_parse(const char *text, wh_secret *out);

/* Wipes a decoded secret. NULL is a no-op. */
void wh_secret_clear(wh_secret *s);

/*
 * Signs one delivery with each of the n secrets (1 <= n), writing the webhook-signature header
 * value, "v1,<sig>" entries separated by one space, NUL-terminated, into out: outlen must be at
 * least n * (WH_SIGNATURE_ENTRY_LEN + 1). id must follow rule 1 of verification. Returns 0,
 * WH_EHEADER (a bad id), -EINVAL (n == 0, a negative timestamp), WH_ESPACE or WH_ECRYPTO.
 */
int wh_signature_sign(const wh_secret *secrets, size_t n, const char *id, int64_t timestamp,
                      const void *body, size_t body_len, char *out, size_t outlen);

/*
 * Verifies one delivery: its id, timestamp and signature header values as received, the raw
 * body, against the n listed secrets, with now (Unix seconds) and tolerance_s (>= 0).
 * Returns 0 when it is authentic, else WH_EHEADER, WH_ETIMESTAMP, WH_ESIGNATURE or WH_ECRYPTO
 * (see the rules above). NULL header values are WH_EHEADER.
 */
int wh_signature_verify(const wh_secret *secrets, size_t n, const char *id, const char *timestamp,
                        const char *signature, const void *body, size_t body_len, int64_t now,
                        int64_t tolerance_s);

#endif
