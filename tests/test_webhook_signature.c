/*
 * test_webhook_signature.c - webhook/signature.h: Standard Webhooks signatures, checked against
 * the npm standardwebhooks package (tests/node/webhook-check.mjs) in both directions: what we
 * sign it verifies, what it signs we verify, and a single changed byte anywhere (body, id,
 * timestamp, signature) is refused by both. Without node the npm tests skip with a line saying
 * why; the rest still runs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "node.h"
#include "sd.h"
#include "signature.h"

static wh_secret secret_new(size_t nbytes, char text[WH_SECRET_TEXT_MAX]) {
    wh_secret s;
    cr_assert_eq(wh_secret_generate(nbytes, text, WH_SECRET_TEXT_MAX), 0);
    cr_assert_eq(wh_secret_parse(text, &s), 0);
    return s;
}

Test(wh_signature, generated_secrets_are_whsec_and_base64_of_the_asked_length) {
    size_t sizes[] = {24, 32, 48, 64};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char a[WH_SECRET_TEXT_MAX], b[WH_SECRET_TEXT_MAX];
        wh_secret sa = secret_new(sizes[i], a), sb = secret_new(sizes[i], b);
        cr_assert_eq(strncmp(a, "whsec_", 6), 0);
        cr_assert_eq(strlen(a), 6 + 4 * ((sizes[i] + 2) / 3));
        cr_assert_eq(sa.len, sizes[i]);
        cr_assert_str_neq(a, b, "two secrets are the same");
        cr_assert_neq(memcmp(sa.key, sb.key, sa.len), 0);
        wh_secret_clear(&sa);
        cr_assert_eq(sa.len, 0);
        wh_secret_clear(&sb);
    }
    char text[WH_SECRET_TEXT_MAX];
    cr_assert_eq(wh_secret_generate(23, text, sizeof text), -EINVAL);
    cr_assert_eq(wh_secret_generate(65, text, sizeof text), -EINVAL);
    cr_assert_eq(wh_secret_generate(24, text, 38), WH_ESPACE); /* needs 6 + 32 + 1 */
    cr_assert_eq(wh_secret_generate(24, text, 39), 0);
    wh_secret_clear(NULL);
}

Test(wh_signature, malformed_or_short_secrets_are_refused) {
    const char *bad[] = {
        "whsec_",
        "",
        "whsec_!!!!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "whsec_AAAAAAAAAAAAAAAAAAAAAAA",                  /* not a multiple of 4 */
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=A", /* data after padding */
        "whsec_AAAAAAAAAAAAAAAAAAAAAA==",                 /* 16 bytes: too short */
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA AAAA",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        wh_secret s;
        memset(&s, 0x5a, sizeof s);
        cr_expect_eq(wh_secret_parse(bad[i], &s), WH_ESECRET, "'%s'", bad[i]);
        cr_expect_eq(s.len, 0);
        cr_expect_eq(s.key[0], 0, "a refused secret is wiped");
    }
    wh_secret s;
    /* 24 bytes, with and without the prefix (the npm package takes both). */
    cr_assert_eq(wh_secret_parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", &s), 0);
    cr_assert_eq(s.len, 24);
    cr_assert_eq(s.key[23], 23);
    cr_assert_eq(wh_secret_parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", &s), 0);
    cr_assert_eq(s.len, 24);
    /* The error text never repeats what it was given. */
    cr_assert_null(strstr(wh_strerror(WH_ESECRET), "AAEC"));
}

Test(wh_signature, one_entry_per_secret_and_either_secret_verifies) {
    char t1[WH_SECRET_TEXT_MAX], t2[WH_SECRET_TEXT_MAX], t3[WH_SECRET_TEXT_MAX];
    wh_secret both[2] = {secret_new(32, t1), secret_new(32, t2)};
    wh_secret other = secret_new(32, t3);
    const char *body = "{\"type\":\"invoice.paid\"}";
    char sig[2 * (WH_SIGNATURE_ENTRY_LEN + 1)];
    cr_assert_eq(
        wh_signature_sign(both, 2, "msg_1", 1764880000, body, strlen(body), sig, sizeof sig), 0);
    cr_assert_eq(strlen(sig), 2 * WH_SIGNATURE_ENTRY_LEN + 1);
    cr_assert_eq(strncmp(sig, "v1,", 3), 0);
    cr_assert_eq(sig[WH_SIGNATURE_ENTRY_LEN], ' ');
    cr_assert_eq(strncmp(sig + WH_SIGNATURE_ENTRY_LEN + 1, "v1,", 3), 0);
    int64_t now = 1764880000;
    cr_assert_eq(
        wh_signature_verify(&both[0], 1, "msg_1", "1764880000", sig, body, strlen(body), now, 300),
        0);
    cr_assert_eq(
        wh_signature_verify(&both[1], 1, "msg_1", "1764880000", sig, body, strlen(body), now, 300),
        0);
    cr_assert_eq(
        wh_signature_verify(&other, 1, "msg_1", "1764880000", sig, body, strlen(body), now, 300),
        WH_ESIGNATURE);
    wh_secret list[2] = {other, both[1]};
    cr_assert_eq(
        wh_signature_verify(list, 2, "msg_1", "1764880000", sig, body, strlen(body), now, 300), 0);
    cr_assert_eq(
        wh_signature_sign(both, 2, "msg_1", 1764880000, body, strlen(body), sig, sizeof sig - 1),
        WH_ESPACE);
    cr_assert_eq(wh_signature_sign(both, 0, "msg_1", 1764880000, body, 0, sig, sizeof sig),
                 -EINVAL);
}

Test(wh_signature, timestamps_outside_the_tolerance_are_refused) {
    char t[WH_SECRET_TEXT_MAX];
    wh_secret s = secret_new(32, t);
    int64_t now = 1764880000;
    int64_t cases[][2] = {{now - 300, 0},
                          {now + 300, 0},
                          {now - 301, WH_ETIMESTAMP},
                          {now + 301, WH_ETIMESTAMP},
                          {0, WH_ETIMESTAMP}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char sig[WH_SIGNATURE_ENTRY_LEN + 1], ts[24];
        cr_assert_eq(wh_signature_sign(&s, 1, "msg_t", cases[i][0], "x", 1, sig, sizeof sig), 0);
        snprintf(ts, sizeof ts, "%lld", (long long)cases[i][0]);
        cr_expect_eq(wh_signature_verify(&s, 1, "msg_t", ts, sig, "x", 1, now, 300), cases[i][1],
                     "timestamp %s", ts);
    }
}

Test(wh_signature, malformed_headers_are_refused) {
    char t[WH_SECRET_TEXT_MAX];
    wh_secret s = secret_new(32, t);
    int64_t now = 1764880000;
    char sig[WH_SIGNATURE_ENTRY_LEN + 1];
    cr_assert_eq(wh_signature_sign(&s, 1, "msg_h", now, "b", 1, sig, sizeof sig), 0);
    const char *bad_ts[] = {
        "",          "+1764880000", " 1764880000", "1764880000 ",        "1764880000abc",
        "1.76488e9", "0x6931a0c0",  "-1",          "1234567890123456789"};
    for (size_t i = 0; i < sizeof bad_ts / sizeof bad_ts[0]; i++)
        cr_expect_eq(wh_signature_verify(&s, 1, "msg_h", bad_ts[i], sig, "b", 1, now, 300),
                     WH_EHEADER, "timestamp '%s'", bad_ts[i]);
    /* A leading zero reads as the same number but is not the signed text. */
    cr_expect_eq(wh_signature_verify(&s, 1, "msg_h", "01764880000", sig, "b", 1, now, 300),
                 WH_ESIGNATURE);
    const char *bad_id[] = {"", "msg.h", "msg h", "msg\th", "msg\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad_id / sizeof bad_id[0]; i++) {
        cr_expect_eq(wh_signature_verify(&s, 1, bad_id[i], "1764880000", sig, "b", 1, now, 300),
                     WH_EHEADER, "id '%s'", bad_id[i]);
        cr_expect_eq(wh_signature_sign(&s, 1, bad_id[i], now, "b", 1, sig, sizeof sig), WH_EHEADER);
    }
    char long_id[WH_ID_MAX + 2];
    memset(long_id, 'a', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    cr_expect_eq(wh_signature_sign(&s, 1, long_id, now, "b", 1, sig, sizeof sig), WH_EHEADER);
    long_id[WH_ID_MAX] = '\0';
    cr_expect_eq(wh_signature_sign(&s, 1, long_id, now, "b", 1, sig, sizeof sig), 0);
    cr_expect_eq(wh_signature_verify(&s, 1, NULL, "1764880000", sig, "b", 1, now, 300), WH_EHEADER);
    cr_expect_eq(wh_signature_verify(&s, 1, "msg_h", NULL, sig, "b", 1, now, 300), WH_EHEADER);
    cr_expect_eq(wh_signature_verify(&s, 1, "msg_h", "1764880000", NULL, "b", 1, now, 300),
                 WH_EHEADER);
}

/* Entries of other versions are skipped, blanks between entries are tolerated, and an entry
 * that differs in any way, its version's case or a byte more included, does not match. */
Test(wh_signature, only_an_exact_v1_entry_matches) {
    char t[WH_SECRET_TEXT_MAX];
    wh_secret s = secret_new(32, t);
    int64_t now = 1764880000;
    char sig[WH_SIGNATURE_ENTRY_LEN + 1];
    cr_assert_eq(wh_signature_sign(&s, 1, "msg_v", now, "b", 1, sig, sizeof sig), 0);
    char hdr[256];
    snprintf(hdr, sizeof hdr, "v2,abc  v1a,xyz   %s", sig);
    cr_assert_eq(wh_signature_verify(&s, 1, "msg_v", "1764880000", hdr, "b", 1, now, 300), 0);
    snprintf(hdr, sizeof hdr, "%sx", sig);
    cr_assert_eq(wh_signature_verify(&s, 1, "msg_v", "1764880000", hdr, "b", 1, now, 300),
                 WH_ESIGNATURE);
    snprintf(hdr, sizeof hdr, "V1,%s", sig + 3);
    cr_assert_eq(wh_signature_verify(&s, 1, "msg_v", "1764880000", hdr, "b", 1, now, 300),
                 WH_ESIGNATURE);
    snprintf(hdr, sizeof hdr, "%.46s", sig); /* one byte short */
    cr_assert_eq(wh_signature_verify(&s, 1, "msg_v", "1764880000", hdr, "b", 1, now, 300),
                 WH_ESIGNATURE);
    cr_assert_eq(wh_signature_verify(&s, 1, "msg_v", "1764880000", "", "b", 1, now, 300),
                 WH_ESIGNATURE);
}

/* ---- against the npm standardwebhooks package ---- */

/* A deterministic generator, so that a failure can be replayed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

static char *b64(const void *data, size_t len) {
    char *out = sd_xmalloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* One delivery: a random id, a body of some kind, one or two secrets. */
typedef struct delivery {
    char id[64];
    char *body;
    size_t body_len;
    size_t nsecrets;
    char secret_text[2][WH_SECRET_TEXT_MAX];
    wh_secret secret[2];
    int64_t ts;
    char sig[2 * (WH_SIGNATURE_ENTRY_LEN + 1)];
} delivery;

static void random_id(char *id) {
    static const char chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
                                "~!$&'()*+,;=:@/";
    int n = 1 + (int)(rnd() % 40);
    if (rnd() % 2) {
        memcpy(id, "msg_", 4);
        id += 4;
    }
    for (int i = 0; i < n; i++)
        id[i] = chars[rnd() % (sizeof chars - 1)];
    id[n] = '\0';
}

/* Kinds of body: JSON with unicode, random bytes (not UTF-8), empty, large. */
static void random_body(delivery *d, int kind) {
    static const char *const pieces[] = {"h\xc3\xa9llo",
                                         "\xe6\x97\xa5\xe6\x9c\xac",
                                         "\xf0\x9f\x99\x82",
                                         "e\xcc\x81",
                                         "\\u0000",
                                         "\"quoted\"",
                                         "\xe2\x80\xae"
                                         "rtl",
                                         "tab\there",
                                         "line\r\nbreak",
                                         " "};
    if (kind == 0) {
        d->body = sd_xstrdup("");
        d->body_len = 0;
    } else if (kind == 1) {
        d->body_len = 1 + rnd() % 512;
        d->body = sd_xmalloc(d->body_len);
        for (size_t i = 0; i < d->body_len; i++)
            d->body[i] = (char)rnd();
    } else if (kind == 2) {
        d->body_len = (size_t)(1 << 20) + rnd() % 4096; /* 1 MiB and a bit */
        d->body = sd_xmalloc(d->body_len);
        for (size_t i = 0; i < d->body_len; i++)
            d->body[i] = (char)(' ' + rnd() % 95);
    } else {
        size_t cap = 4096, len = 0;
        d->body = sd_xmalloc(cap);
        len += (size_t)snprintf(d->body, cap, "{\"type\":\"t\",\"data\":\"");
        int n = 1 + (int)(rnd() % 30);
        for (int i = 0; i < n; i++)
            len += (size_t)snprintf(d->body + len, cap - len, "%s",
                                    pieces[rnd() % (sizeof pieces / sizeof pieces[0])]);
        len += (size_t)snprintf(d->body + len, cap - len, "\"}");
        d->body_len = len;
    }
}

static delivery *deliveries_make(size_t n, int64_t now) {
    delivery *d = sd_xcalloc(n, sizeof *d);
    for (size_t i = 0; i < n; i++) {
        random_id(d[i].id);
        random_body(&d[i], i < 4 ? (int)i : i % 50 == 0 ? 2 : rnd() % 2 ? 1 : 3);
        d[i].nsecrets = 1 + (i % 3 == 0); /* every third one mid-rotation: two secrets */
        for (size_t k = 0; k < d[i].nsecrets; k++)
            d[i].secret[k] = secret_new(WH_SECRET_MIN_BYTES + rnd() % 41, d[i].secret_text[k]);
        d[i].ts = now - (int64_t)(rnd() % 60);
        cr_assert_eq(wh_signature_sign(d[i].secret, d[i].nsecrets, d[i].id, d[i].ts, d[i].body,
                                       d[i].body_len, d[i].sig, sizeof d[i].sig),
                     0);
    }
    return d;
}

static void deliveries_free(delivery *d, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(d[i].body);
        wh_secret_clear(&d[i].secret[0]);
        wh_secret_clear(&d[i].secret[1]);
    }
    free(d);
}

/* A growing buffer of JSON lines for webhook-check.mjs. */
typedef struct lines {
    char *buf;
    size_t len, cap;
    size_t count;
} lines;

static void lines_add(lines *l, const char *op, const char *secret, const char *id, const char *ts,
                      int64_t ts_num, const char *sig, const void *body, size_t body_len) {
    char *body64 = b64(body, body_len);
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s}", "op", op, "secret", secret, "id", id, "body", body64);
    cr_assert(o);
    if (ts)
        json_object_set_new(o, "ts", json_string(ts));
    else
        json_object_set_new(o, "ts", json_integer(ts_num));
    if (sig)
        json_object_set_new(o, "sig", json_string(sig));
    char *text = json_dumps(o, JSON_COMPACT);
    cr_assert(text);
    size_t need = strlen(text) + 2;
    if (l->len + need > l->cap) {
        l->cap = (l->len + need) * 2;
        l->buf = sd_xrealloc(l->buf, l->cap);
    }
    l->len += (size_t)sprintf(l->buf + l->len, "%s\n", text);
    l->count++;
    free(text);
    json_decref(o);
    free(body64);
}

/* Runs webhook-check.mjs over l; returns its answers, one string per line (the caller frees
 * the array and answers[0]). */
static char **lines_run(lines *l) {
    int status;
    char *out = node_run("webhook-check.mjs", NULL, l->buf, l->len, &status);
    cr_assert_eq(status, 0, "webhook-check.mjs failed");
    char **answers = sd_xcalloc(l->count + 1, sizeof *answers);
    size_t i = 0;
    char *p = out;
    while (*p && i < l->count) {
        char *nl = strchr(p, '\n');
        cr_assert(nl, "an unfinished line");
        *nl = '\0';
        answers[i++] = p;
        p = nl + 1;
    }
    cr_assert_eq(i, l->count, "one answer per line");
    if (i == 0)
        free(out);
    return answers;
}

static void answers_free(char **answers) {
    free(answers[0]);
    free(answers);
}

#define NPM_SKIP_UNLESS_READY()                                                                    \
    do {                                                                                           \
        char why_[512];                                                                            \
        if (!node_ready(why_, sizeof why_))                                                        \
            cr_skip_test("skipped: %s", why_);                                                     \
    } while (0)

TestSuite(wh_signature_npm, .timeout = 240);

Test(wh_signature_npm, the_npm_package_verifies_what_we_sign) {
    NPM_SKIP_UNLESS_READY();
    int64_t now = (int64_t)time(NULL);
    size_t n = 200;
    delivery *d = deliveries_make(n, now);
    lines l = {0};
    for (size_t i = 0; i < n; i++) {
        char ts[24];
        snprintf(ts, sizeof ts, "%lld", (long long)d[i].ts);
        /* Mid-rotation: the receiver may know either secret. */
        for (size_t k = 0; k < d[i].nsecrets; k++)
            lines_add(&l, "verify", d[i].secret_text[k], d[i].id, ts, 0, d[i].sig, d[i].body,
                      d[i].body_len);
    }
    char **answers = lines_run(&l);
    for (size_t i = 0; i < l.count; i++)
        cr_expect_str_eq(answers[i], "ok", "line %zu", i);
    answers_free(answers);
    free(l.buf);
    deliveries_free(d, n);
}

Test(wh_signature_npm, we_verify_what_the_npm_package_signs) {
    NPM_SKIP_UNLESS_READY();
    int64_t now = (int64_t)time(NULL);
    size_t n = 200;
    delivery *d = deliveries_make(n, now);
    lines l = {0};
    for (size_t i = 0; i < n; i++)
        lines_add(&l, "sign", d[i].secret_text[0], d[i].id, NULL, d[i].ts, NULL, d[i].body,
                  d[i].body_len);
    char **answers = lines_run(&l);
    char other_text[WH_SECRET_TEXT_MAX];
    wh_secret other = secret_new(32, other_text);
    for (size_t i = 0; i < n; i++) {
        char ts[24];
        snprintf(ts, sizeof ts, "%lld", (long long)d[i].ts);
        cr_assert_eq(strncmp(answers[i], "v1,", 3), 0, "%s", answers[i]);
        /* The package's signature is ours, byte for byte. */
        cr_expect_eq(strncmp(answers[i], d[i].sig, WH_SIGNATURE_ENTRY_LEN), 0, "delivery %zu", i);
        cr_expect_eq(wh_signature_verify(&d[i].secret[0], 1, d[i].id, ts, answers[i], d[i].body,
                                         d[i].body_len, now, 300),
                     0, "delivery %zu", i);
        wh_secret list[2] = {other, d[i].secret[0]};
        cr_expect_eq(wh_signature_verify(list, 2, d[i].id, ts, answers[i], d[i].body, d[i].body_len,
                                         now, 300),
                     0);
        cr_expect_eq(wh_signature_verify(&other, 1, d[i].id, ts, answers[i], d[i].body,
                                         d[i].body_len, now, 300),
                     WH_ESIGNATURE);
    }
    answers_free(answers);
    free(l.buf);
    deliveries_free(d, n);
}

/* A different byte in a header: the next printable one, skipping '.' and ' ' (which the
 * header rules treat on their own), so that the header stays a header. */
static char header_byte_change(char c) {
    char r = c == '~' ? '!' : (char)(c + 1);
    while (r == '.' || r == ' ')
        r++;
    return r;
}

Test(wh_signature_npm, a_single_changed_byte_is_refused_by_both_sides) {
    NPM_SKIP_UNLESS_READY();
    int64_t now = (int64_t)time(NULL);
    char text[WH_SECRET_TEXT_MAX];
    wh_secret s = secret_new(32, text);
    const char *id = "msg_2Lq9xTbQ0Zr";
    const char *body = "{\"type\":\"invoice.paid\",\"amount\":\"12.30\",\"who\":\"J\xc3\xb6rg\"}";
    size_t blen = strlen(body);
    char sig[WH_SIGNATURE_ENTRY_LEN + 1], ts[24];
    cr_assert_eq(wh_signature_sign(&s, 1, id, now, body, blen, sig, sizeof sig), 0);
    snprintf(ts, sizeof ts, "%lld", (long long)now);
    lines l = {0};
    int ours_refused = 0, cases = 0;
    /* The untouched delivery first: both accept it. */
    lines_add(&l, "verify", text, id, ts, 0, sig, body, blen);
    cr_assert_eq(wh_signature_verify(&s, 1, id, ts, sig, body, blen, now, 300), 0);
    char *b = sd_xmalloc(blen + 2);
    for (size_t i = 0; i < blen; i++, cases++) { /* every body byte, one bit flipped */
        memcpy(b, body, blen);
        b[i] ^= 0x01;
        ours_refused += wh_signature_verify(&s, 1, id, ts, sig, b, blen, now, 300) != 0;
        lines_add(&l, "verify", text, id, ts, 0, sig, b, blen);
    }
    memcpy(b, body, blen);
    b[blen] = ' '; /* one byte more */
    ours_refused += wh_signature_verify(&s, 1, id, ts, sig, b, blen + 1, now, 300) != 0;
    lines_add(&l, "verify", text, id, ts, 0, sig, b, blen + 1);
    ours_refused += wh_signature_verify(&s, 1, id, ts, sig, b, blen - 1, now, 300) != 0;
    lines_add(&l, "verify", text, id, ts, 0, sig, b, blen - 1); /* one byte less */
    cases += 2;
    free(b);
    const char *fields[] = {id, ts, sig};
    for (int f = 0; f < 3; f++) {
        size_t n = strlen(fields[f]);
        for (size_t i = 0; i < n; i++, cases++) {
            char changed[128];
            snprintf(changed, sizeof changed, "%s", fields[f]);
            changed[i] = header_byte_change(changed[i]);
            const char *cid = f == 0 ? changed : id, *cts = f == 1 ? changed : ts,
                       *csig = f == 2 ? changed : sig;
            ours_refused += wh_signature_verify(&s, 1, cid, cts, csig, body, blen, now, 300) != 0;
            lines_add(&l, "verify", text, cid, cts, 0, csig, body, blen);
        }
    }
    cr_assert_eq(ours_refused, cases, "we accepted a changed delivery");
    char **answers = lines_run(&l);
    cr_assert_str_eq(answers[0], "ok");
    for (size_t i = 1; i < l.count; i++)
        cr_expect_eq(strncmp(answers[i], "fail", 4), 0, "the npm package accepted change %zu",
                     i - 1);
    cr_log_info("%d single-byte changes (body, id, timestamp, signature): refused by both", cases);
    answers_free(answers);
    free(l.buf);
}

/* The npm package reads the timestamp with parseInt and signs the number it read, so it accepts
 * a timestamp header with bytes added around the number, under the original signature. We
 * verify over the header's exact text and take plain digits only (webhook/README.md). */
Test(wh_signature_npm, timestamps_the_npm_package_stretches_are_refused_here) {
    NPM_SKIP_UNLESS_READY();
    int64_t now = (int64_t)time(NULL);
    char text[WH_SECRET_TEXT_MAX];
    wh_secret s = secret_new(32, text);
    const char *body = "{\"a\":1}";
    char sig[WH_SIGNATURE_ENTRY_LEN + 1];
    cr_assert_eq(wh_signature_sign(&s, 1, "msg_ts", now, body, strlen(body), sig, sizeof sig), 0);
    char variants[5][40];
    snprintf(variants[0], sizeof variants[0], "%lldabc", (long long)now);
    snprintf(variants[1], sizeof variants[1], "0%lld", (long long)now);
    snprintf(variants[2], sizeof variants[2], " %lld", (long long)now);
    snprintf(variants[3], sizeof variants[3], "+%lld", (long long)now);
    snprintf(variants[4], sizeof variants[4], "%lld.9", (long long)now);
    lines l = {0};
    for (int i = 0; i < 5; i++) {
        cr_expect_neq(
            wh_signature_verify(&s, 1, "msg_ts", variants[i], sig, body, strlen(body), now, 300), 0,
            "we accepted timestamp '%s'", variants[i]);
        lines_add(&l, "verify", text, "msg_ts", variants[i], 0, sig, body, strlen(body));
    }
    char **answers = lines_run(&l);
    int stretched = 0;
    for (int i = 0; i < 5; i++)
        stretched += strcmp(answers[i], "ok") == 0;
    cr_log_info("the npm package accepted %d of 5 altered timestamp headers", stretched);
    cr_expect_eq(stretched, 5, "the package changed: update webhook/README.md");
    answers_free(answers);
    free(l.buf);
}
