/*
 * test_urlshortener_code.c - urlshortener/code.h without Redis: the keyed permutation is a
 * bijection (every id of a small domain, a sample of the default one) and round-trips; codes
 * are not sequential and depend on the key; only canonical codes decode; key files.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "code.h"
#include "support.h"

static us_codec *codec_make(uint64_t domain, const char *secret) {
    unsigned char key[US_KEY_LEN];
    cr_assert_eq(us_key_derive(secret, strlen(secret), key), 0);
    us_codec *c = NULL;
    cr_assert_eq(us_codec_new(key, domain, &c), 0);
    return c;
}

/* Every id of a domain that is not a power of two (62^3, walked in 2^18) gets a distinct
 * canonical code, and each code decodes back to its id. */
Test(urlshortener_code, permutation_is_a_bijection_on_a_whole_domain) {
    uint64_t domain = 62 * 62 * 62;
    us_codec *c = codec_make(domain, "a secret of enough bytes");
    cr_assert_eq(us_codec_length(c), 3);
    unsigned char *seen = sd_xcalloc(domain, 1);
    for (uint64_t id = 0; id < domain; id++) {
        uint64_t p = us_codec_permute(c, id);
        cr_assert_lt(p, domain, "id %llu left the domain", (unsigned long long)id);
        cr_assert_eq(seen[p], 0, "two ids share the value %llu", (unsigned long long)p);
        seen[p] = 1;
        char code[US_CODE_MAX + 1];
        cr_assert_eq(us_code_encode(c, id, code), 0);
        cr_assert_eq(strlen(code), 3);
        uint64_t back;
        cr_assert_eq(us_code_decode(c, code, strlen(code), &back), 0, "%s", code);
        cr_assert_eq(back, id);
    }
    free(seen);
    us_codec_free(c);
}

/* The default domain (62^7): a sample of 200,000 ids round-trips to 7-character codes with
 * no duplicate. */
Test(urlshortener_code, default_domain_round_trips_on_a_sample) {
    us_codec *c = codec_make(US_DOMAIN_DEFAULT, "a secret of enough bytes");
    cr_assert_eq(us_codec_length(c), 7);
    size_t n = 200000;
    char(*codes)[US_CODE_MAX + 1] = sd_xcalloc(n, sizeof *codes);
    for (size_t i = 0; i < n; i++) {
        /* half consecutive ids from 1, half spread over the domain up to its last id */
        uint64_t id = i < n / 2 ? i + 1 : US_DOMAIN_DEFAULT - 1 - (i - n / 2) * 17592186ULL;
        cr_assert_eq(us_code_encode(c, id, codes[i]), 0);
        uint64_t back;
        cr_assert_eq(us_code_decode(c, codes[i], 7, &back), 0);
        cr_assert_eq(back, id);
    }
    qsort(codes, n, sizeof *codes, (int (*)(const void *, const void *))strcmp);
    for (size_t i = 1; i < n; i++)
        cr_assert_neq(strcmp(codes[i - 1], codes[i]), 0, "duplicate code %s", codes[i]);
    free(codes);
    us_codec_free(c);
}

/* Consecutive ids do not give consecutive or ordered codes: about half of the next codes sort
 * after the previous one (a counter would give all), and no two share a 5-character prefix
 * as often as a sequence would. Deterministic for a fixed key. */
Test(urlshortener_code, codes_are_not_sequential) {
    us_codec *c = codec_make(US_DOMAIN_DEFAULT, "a secret of enough bytes");
    char prev[US_CODE_MAX + 1], code[US_CODE_MAX + 1];
    cr_assert_eq(us_code_encode(c, 1, prev), 0);
    int ascending = 0, shared_prefix = 0;
    for (uint64_t id = 2; id <= 1001; id++) {
        cr_assert_eq(us_code_encode(c, id, code), 0);
        ascending += strcmp(code, prev) > 0;
        shared_prefix += strncmp(code, prev, 5) == 0;
        uint64_t dp = us_codec_permute(c, id) - us_codec_permute(c, id - 1);
        cr_assert_neq(dp, 1, "ids %llu and %llu map to neighbours", (unsigned long long)id - 1,
                      (unsigned long long)id);
        memcpy(prev, code, sizeof prev);
    }
    cr_assert(ascending > 400 && ascending < 600, "%d of 1000 steps ascend", ascending);
    cr_assert_lt(shared_prefix, 5, "%d of 1000 neighbours share a prefix", shared_prefix);
    us_codec_free(c);
}

/* Another key gives other codes for the same ids, and reads a code as another id. */
Test(urlshortener_code, codes_depend_on_the_key) {
    us_codec *a = codec_make(US_DOMAIN_DEFAULT, "the first secret, long enough");
    us_codec *b = codec_make(US_DOMAIN_DEFAULT, "the second secret, long enough");
    int same = 0;
    for (uint64_t id = 1; id <= 1000; id++) {
        char ca[US_CODE_MAX + 1], cb[US_CODE_MAX + 1];
        cr_assert_eq(us_code_encode(a, id, ca), 0);
        cr_assert_eq(us_code_encode(b, id, cb), 0);
        same += strcmp(ca, cb) == 0;
        uint64_t other;
        cr_assert_eq(us_code_decode(b, ca, strlen(ca), &other), 0);
        if (id == 1)
            cr_assert_neq(other, 1);
    }
    cr_assert_eq(same, 0);
    us_codec_free(a);
    us_codec_free(b);
}

/* Only the one spelling of each id decodes: not shorter or longer (a leading '0' added or
 * dropped), not another character, not a value beyond the domain (2^40 here: 7 characters
 * spell up to 62^7 - 1), not an empty string. */
Test(urlshortener_code, non_canonical_codes_are_refused) {
    us_codec *c = codec_make(1ULL << 40, "a secret of enough bytes");
    cr_assert_eq(us_codec_length(c), 7);
    char code[US_CODE_MAX + 1];
    uint64_t id = 0;
    /* find an id whose code starts with '0', so dropping the zero is a real shorter spelling */
    uint64_t zid = 0;
    for (uint64_t i = 1; i < 100000 && !zid; i++) {
        cr_assert_eq(us_code_encode(c, i, code), 0);
        if (code[0] == '0')
            zid = i;
    }
    cr_assert_neq(zid, 0);
    cr_assert_eq(us_code_decode(c, code, 7, &id), 0);
    cr_assert_eq(id, zid);
    cr_assert_eq(us_code_decode(c, code + 1, 6, &id), -EINVAL, "the zero dropped");
    char longer[16];
    snprintf(longer, sizeof longer, "0%s", code);
    cr_assert_eq(us_code_decode(c, longer, 8, &id), -EINVAL, "a zero added");
    cr_assert_eq(us_code_decode(c, "zzzzzzz", 7, &id), -EINVAL, "beyond 2^40");
    cr_assert_eq(us_code_decode(c, "K0000000", 8, &id), -EINVAL);
    cr_assert_eq(us_code_decode(c, "", 0, &id), -EINVAL);
    const char *bad[] = {"abc-def", "abc_def", "abc def", "abc+def", "abc/def", "abcdéf"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(us_code_decode(c, bad[i], strlen(bad[i]), &id), -EINVAL, "%s", bad[i]);
    char nul[8];
    memcpy(nul, code, 7);
    nul[3] = '\0';
    cr_assert_eq(us_code_decode(c, nul, 7, &id), -EINVAL, "an embedded NUL");
    /* the largest value in the domain is canonical, one more is not */
    cr_assert_eq(us_code_encode(c, (1ULL << 40) - 1, code), 0);
    cr_assert_eq(us_code_encode(c, 1ULL << 40, code), -ERANGE);
    /* us_code_is_canonical (the redirect path's check) agrees with us_code_decode */
    const char *samples[] = {code,      "zzzzzzz", "K0000000", "",         "abc-def",
                             "abc def", "0000000", longer,     longer + 1, longer + 2};
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++)
        cr_assert_eq(us_code_is_canonical(c, samples[i], strlen(samples[i])),
                     us_code_decode(c, samples[i], strlen(samples[i]), &id) == 0, "%s", samples[i]);
    cr_assert(us_code_is_canonical(c, code, 7));
    cr_assert(!us_code_is_canonical(c, "zzzzzzz", 7));
    us_codec_free(c);
}

Test(urlshortener_code, codec_and_key_arguments_are_checked) {
    unsigned char key[US_KEY_LEN] = {0};
    us_codec *c = NULL;
    cr_assert_eq(us_codec_new(key, 61, &c), -EINVAL);
    cr_assert_eq(us_codec_new(key, UINT64_MAX, &c), -EINVAL);
    cr_assert_eq(us_key_derive("short", 5, key), -EINVAL);

    char path[] = "/tmp/us-key-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "0123456789abcdef0123\n", 21), 21);
    close(fd);
    unsigned char a[US_KEY_LEN], b[US_KEY_LEN];
    cr_assert_eq(us_key_load(path, a), 0);
    cr_assert_eq(us_key_derive("0123456789abcdef0123", 20, b), 0);
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "the trailing newline is not part of the key");
    fd = open(path, O_WRONLY | O_TRUNC);
    cr_assert_eq(write(fd, "too short\n", 10), 10);
    close(fd);
    cr_assert_eq(us_key_load(path, a), -EINVAL);
    unlink(path);
    cr_assert_eq(us_key_load(path, a), -ENOENT);
}
