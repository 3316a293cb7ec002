/*
 * code.h - short codes for generated links: a counter id, put through a keyed permutation,
 * written in base62 at a fixed length.
 *
 *   id (1, 2, 3, ... from INCRBY)  --us_codec_permute-->  p in [0, domain)  --base62-->  "kP3x9Qa"
 *   "kP3x9Qa"  --base62 decode, check canonical-->  p  --us_codec_unpermute-->  id
 *
 * Design
 *  1. The permutation is a balanced Feistel network (Luby and Rackoff, "How to construct
 *     pseudorandom permutations from pseudorandom functions", 1988) over 2h bits, the smallest
 *     even width whose 2^(2h) values cover the domain. Each of its US_CODEC_ROUNDS rounds
 *     mixes one half with SipHash-2-4 (Aumasson and Bernstein, 2012) of the other half and the
 *     round number, keyed by 128 bits derived from the codec key with HMAC-SHA256. A Feistel
 *     network is a bijection whatever its round function, so two ids never share a code.
 *  2. The domain need not be a power of two (the default is 62^7, every 7-character code):
 *     a value that lands outside it is put through the network again until it lands inside
 *     (cycle-walking, Black and Rogaway, "Ciphers with arbitrary finite domains", 2002). This
 *     stays a bijection on [0, domain), and since 2^(2h) < 4 * domain a value walks fewer than
 *     4 steps on average.
 *  3. A code is exactly us_codec_length() characters of 0-9A-Za-z (that order: '0' is 0),
 *     the base62 digits of the permuted value, padded with '0' on the left. Decoding accepts a
 *     string only if it is canonical: the right length, only those characters, a value below
 *     the domain; so each id has exactly one spelling (no "0" + code, no wrapped-around value).
 *     The caller's other rule, that an alias must not decode, keeps aliases and codes apart.
 *  4. Without the key, consecutive ids give unrelated codes: neither the next code nor the
 *     number of links is readable from a code. With the key, it is a decoder: keep it secret,
 *     and never change it while links exist (every code would then mean another id).
 *
 * Everything here is pure computation: no I/O except us_key_load, no Redis.
 */
#ifndef US_CODE_H
#define US_CODE_H

#include <stddef.h>
#include <stdint.h>

#define US_CODEC_ROUNDS 8
#define US_CODE_MAX 10                     /* the longest code: 62^10 > 2^59 ids */
#define US_KEY_LEN 32                      /* a codec key's length in bytes */
#define US_DOMAIN_DEFAULT 3521614606208ULL /* 62^7 */

typedef struct us_codec us_codec;

/*
 * Creates a codec for ids in [0, domain) with key (US_KEY_LEN bytes, copied). domain must be at
 * least 62 and at most 62^US_CODE_MAX. Returns 0 and *out, or -EINVAL.
 */
int us_codec_new(const unsigned char key[US_KEY_LEN], uint64_t domain, us_codec **out);

/* Frees the codec (its key is wiped first). NULL is a no-op. */
void us_codec_free(us_codec *c);

/* The domain, and the length of every code (the base62 digits of domain - 1). */
uint64_t us_codec_domain(const us_codec *c);
size_t us_codec_length(const us_codec *c);

/* The permutation of [0, domain) and its inverse. x must be below the domain (asserted). */
uint64_t us_codec_permute(const us_codec *c, uint64_t x);
uint64_t us_codec_unpermute(const us_codec *c, uint64_t y);

/* Writes the code of id (NUL-terminated, us_codec_length() characters) into out. Returns 0, or
 * -ERANGE when id is not below the domain (the ids are used up). */
int us_code_encode(const us_codec *c, uint64_t id, char out[US_CODE_MAX + 1]);

/* Reads the id of code (len bytes, borrowed; not necessarily NUL-terminated). Returns 0 and
 * *id, or -EINVAL when the string is not a canonical code (design 3). */
int us_code_decode(const us_codec *c, const char *code, size_t len, uint64_t *id);

/* Whether code (len bytes) is a canonical code: what us_code_decode accepts, without inverting
 * the permutation (a bijection on the domain, so every value below it is some id's code). For
 * the redirect path, which checks every request. */
int us_code_is_canonical(const us_codec *c, const char *code, size_t len);

/* Derives a codec key from a secret of any length: HMAC-SHA256(secret, "us-code-key-v1").
 * Returns 0, or -EINVAL when the secret is shorter than 16 bytes. */
int us_key_derive(const void *secret, size_t len, unsigned char out[US_KEY_LEN]);

/* Reads a key file (at least 16 bytes of secret; a trailing newline is not part of it) and
 * derives the codec key from its contents. Returns 0, -errno, or -EINVAL (too short, or
 * larger than 4 KiB). */
int us_key_load(const char *path, unsigned char out[US_KEY_LEN]);

#endif
