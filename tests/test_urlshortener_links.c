/*
 * test_urlshortener_links.c - urlshortener/links.h against a real redis-server and a real
 * 3-master Redis Cluster: links created and read back; 50 concurrent claims of one alias from
 * 50 processes, exactly one winner; 100,000 creates from 4 processes, 100,000 distinct codes; a
 * counter set back by hand makes ids come again, and they are skipped, never overwrite; expiry
 * by Redis's clock with its 410 window; the alias rules; the target checks, own base URL
 * included; a string that cannot be a code costs no Redis call.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "links.h"
#include "support.h"

#define SECRET "the test suite's code secret"

/* One test's Redis (single or cluster), a codec and a sync connection with the scripts. */
typedef struct rig {
    sd_redis_server *single;
    sd_redis_cluster_server *cluster;
    const char *url;
    us_codec *codec;
    sd_redis *redis;
} rig;

static sd_redis *connect_scripts(const char *url) {
    sd_redis_url u;
    char err[160];
    if (sd_redis_url_parse(url, &u, err, sizeof err) != 0)
        return NULL;
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    opts.command_timeout_ms = 10000;
    opts.connect_timeout_ms = 10000;
    opts.scripts = us_links_scripts(&opts.nscripts);
    sd_redis *r = NULL;
    int rc = sd_redis_connect(&u, &opts, &r);
    sd_redis_url_clear(&u);
    return rc == 0 ? r : NULL;
}

static us_codec *codec_make(void) {
    unsigned char key[US_KEY_LEN];
    cr_assert_eq(us_key_derive(SECRET, strlen(SECRET), key), 0);
    us_codec *c = NULL;
    cr_assert_eq(us_codec_new(key, US_DOMAIN_DEFAULT, &c), 0);
    return c;
}

static rig *rig_open(int cluster) {
    rig *g = sd_xcalloc(1, sizeof *g);
    if (cluster) {
        g->cluster = test_redis_cluster_start(0);
        g->url = sd_redis_cluster_server_url(g->cluster);
    } else {
        g->single = test_redis_start(NULL);
        g->url = sd_redis_server_url(g->single);
    }
    g->codec = codec_make();
    g->redis = connect_scripts(g->url);
    cr_assert(g->redis, "cannot connect to %s", g->url);
    return g;
}

static void rig_close(rig *g) {
    sd_redis_free(g->redis);
    us_codec_free(g->codec);
    if (g->cluster)
        sd_redis_cluster_server_stop(g->cluster);
    else
        sd_redis_server_stop(g->single);
    free(g);
}

static us_links *store_new(rig *g, int block, int64_t retention_ms) {
    us_links_opts o;
    us_links_opts_default(&o);
    o.block = block;
    o.retention_ms = retention_ms;
    o.base_url = "https://sho.rt";
    us_links *l = NULL;
    cr_assert_eq(us_links_new(g->redis, g->codec, &o, &l), 0);
    return l;
}

/* Creates a link that must be accepted; returns its code in code. */
static void create_ok(us_links *l, const us_create_req *req, us_link *out) {
    us_verdict v = -1;
    int rc = us_links_create(l, req, out, &v, NULL);
    cr_assert_eq(rc, 0, "create: %s", us_strerror(rc));
    cr_assert_eq(v, US_OK, "create: %s", us_verdict_reason(v));
}

static us_link_state get_state(us_links *l, const char *code, us_link *out) {
    us_link_state st = 0;
    us_link tmp;
    int rc = us_links_get(l, code, &st, out ? out : &tmp);
    cr_assert_eq(rc, 0, "get %s: %s", code, us_strerror(rc));
    if (!out && st != US_LINK_NOT_FOUND)
        us_link_clear(&tmp);
    return st;
}

/* ---- create, read back ---- */

static void create_and_get(int cluster) {
    rig *g = rig_open(cluster);
    us_links *l = store_new(g, 10, 60000);
    us_link a, b;
    create_ok(l, &(us_create_req){.url = "https://example.com/a?b=c", .max_clicks = 7}, &a);
    uint64_t id;
    cr_assert_eq(us_code_decode(g->codec, a.code, strlen(a.code), &id), 0, "%s", a.code);
    cr_assert_eq(id, 1, "the first id of a fresh counter");
    cr_assert_eq(a.expires_at_ms, 0);
    cr_assert_gt(a.created_ms, 1600000000000LL, "Redis's clock in Unix ms");
    cr_assert_eq(get_state(l, a.code, &b), US_LINK_FOUND);
    cr_assert_str_eq(b.url, "https://example.com/a?b=c");
    cr_assert_eq(b.max_clicks, 7);
    cr_assert_eq(b.created_ms, a.created_ms);
    us_link_clear(&b);
    /* a code that decodes but was never written, and a lower-case spelling of ours */
    char other[US_CODE_MAX + 1];
    cr_assert_eq(us_code_encode(g->codec, 999, other), 0);
    cr_assert_eq(get_state(l, other, NULL), US_LINK_NOT_FOUND);
    /* delete: once found, then not */
    cr_assert_eq(us_links_delete(l, a.code), 1);
    cr_assert_eq(us_links_delete(l, a.code), 0);
    cr_assert_eq(get_state(l, a.code, NULL), US_LINK_NOT_FOUND);
    us_link_clear(&a);
    us_links_free(l);
    rig_close(g);
}

Test(urlshortener_links, create_get_delete) {
    create_and_get(0);
}
Test(urlshortener_links, create_get_delete_cluster) {
    create_and_get(1);
}

/* ---- the alias race ---- */

#define RACERS 50

/* One racer: connects, says it is ready, waits for the start (EOF on go), claims the alias.
 * Writes 'W' (won) or 'T' (taken) and its index to out; exits 0, or 2 on any error. */
static void racer(const char *url, int i, int ready, int go, int out) {
    sd_redis *r = connect_scripts(url);
    us_codec *c = codec_make();
    us_links *l = NULL;
    if (!r || us_links_new(r, c, NULL, &l) != 0)
        _exit(2);
    char ch = 'R';
    if (write(ready, &ch, 1) != 1)
        _exit(2);
    while (read(go, &ch, 1) > 0) {
    }
    char target[64];
    snprintf(target, sizeof target, "https://example.com/racer/%d", i);
    us_link link;
    us_verdict v;
    if (us_links_create(l, &(us_create_req){.url = target, .alias = "launch-day"}, &link, &v,
                        NULL) != 0)
        _exit(2);
    char msg[2] = {v == US_OK ? 'W' : v == US_ALIAS_TAKEN ? 'T' : '?', (char)i};
    if (v == US_OK)
        us_link_clear(&link);
    if (write(out, msg, 2) != 2)
        _exit(2);
    _exit(0);
}

static void alias_race(int cluster) {
    rig *g = rig_open(cluster);
    int ready[2], go[2], out[2];
    cr_assert_eq(pipe(ready), 0);
    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(out), 0);
    pid_t pids[RACERS];
    for (int i = 0; i < RACERS; i++) {
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0) {
            close(go[1]);
            racer(g->url, i, ready[1], go[0], out[1]);
        }
    }
    close(go[0]);
    close(ready[1]);
    close(out[1]);
    /* every racer is connected before any may claim */
    for (int i = 0; i < RACERS; i++) {
        char ch;
        cr_assert_eq(read(ready[0], &ch, 1), 1, "racer %d never got ready", i);
    }
    close(go[1]); /* the start: every racer's read returns 0 */
    int won = 0, taken = 0, winner = -1;
    for (int i = 0; i < RACERS; i++) {
        char msg[2];
        cr_assert_eq(read(out[0], msg, 2), 2, "a racer gave no answer");
        if (msg[0] == 'W') {
            won++;
            winner = msg[1];
        } else if (msg[0] == 'T') {
            taken++;
        }
    }
    for (int i = 0; i < RACERS; i++) {
        int st;
        cr_assert_eq(waitpid(pids[i], &st, 0), pids[i]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "racer %d failed", i);
    }
    close(ready[0]);
    close(out[0]);
    cr_assert_eq(won, 1, "%d claims won", won);
    cr_assert_eq(taken, RACERS - 1);
    us_links *l = store_new(g, 10, 60000);
    us_link link;
    cr_assert_eq(get_state(l, "launch-day", &link), US_LINK_FOUND);
    char want[64];
    snprintf(want, sizeof want, "https://example.com/racer/%d", winner);
    cr_assert_str_eq(link.url, want, "the stored link is the winner's");
    us_link_clear(&link);
    us_links_free(l);
    rig_close(g);
}

Test(urlshortener_links, alias_race_has_one_winner) {
    alias_race(0);
}
Test(urlshortener_links, alias_race_has_one_winner_cluster) {
    alias_race(1);
}

/* ---- 100,000 creates from 4 processes ---- */

#define WRITERS 4
#define PER_WRITER 25000

static void writer(const char *url, int fd) {
    sd_redis *r = connect_scripts(url);
    us_codec *c = codec_make();
    us_links_opts o;
    us_links_opts_default(&o);
    o.block = 100; /* small blocks: the writers interleave on the counter */
    us_links *l = NULL;
    if (!r || us_links_new(r, c, &o, &l) != 0)
        _exit(2);
    FILE *f = fdopen(fd, "w");
    for (int i = 0; i < PER_WRITER; i++) {
        us_link link;
        us_verdict v;
        if (us_links_create(l, &(us_create_req){.url = "https://example.com/x"}, &link, &v, NULL) !=
                0 ||
            v != US_OK)
            _exit(3);
        fprintf(f, "%s\n", link.code);
        us_link_clear(&link);
    }
    if (fclose(f) != 0)
        _exit(4);
    /* a counter that only grows hands out no id twice: nothing was skipped */
    us_links_stats st;
    us_links_stats_get(l, &st);
    _exit(st.skipped == 0 ? 0 : 5);
}

static int cmp_code(const void *a, const void *b) {
    return strcmp(a, b);
}

static void many_creates(int cluster) {
    rig *g = rig_open(cluster);
    FILE *files[WRITERS];
    pid_t pids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        files[w] = tmpfile();
        cr_assert(files[w]);
        pids[w] = fork();
        cr_assert_geq(pids[w], 0);
        if (pids[w] == 0)
            writer(g->url, dup(fileno(files[w])));
    }
    for (int w = 0; w < WRITERS; w++) {
        int st;
        cr_assert_eq(waitpid(pids[w], &st, 0), pids[w]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer %d: status %d", w, st);
    }
    size_t n = 0, cap = WRITERS * PER_WRITER;
    char(*codes)[US_CODE_MAX + 1] = sd_xcalloc(cap, sizeof *codes);
    for (int w = 0; w < WRITERS; w++) {
        rewind(files[w]);
        char line[64];
        while (fgets(line, sizeof line, files[w])) {
            cr_assert_lt(n, cap);
            line[strcspn(line, "\n")] = '\0';
            uint64_t id;
            cr_assert_eq(us_code_decode(g->codec, line, strlen(line), &id), 0, "%s", line);
            memcpy(codes[n++], line, sizeof codes[0]);
        }
        fclose(files[w]);
    }
    cr_assert_eq(n, cap);
    qsort(codes, n, sizeof codes[0], cmp_code);
    for (size_t i = 1; i < n; i++)
        cr_assert_neq(strcmp(codes[i - 1], codes[i]), 0, "code %s twice", codes[i]);
    /* every code names its own stored link */
    us_links *l = store_new(g, 10, 60000);
    for (size_t i = 0; i < n; i += 997)
        cr_assert_eq(get_state(l, codes[i], NULL), US_LINK_FOUND, "%s", codes[i]);
    if (!cluster)
        cr_assert_eq(test_redis_int(g->redis, "DBSIZE"), (long long)cap + 1, "links + counter");
    free(codes);
    us_links_free(l);
    rig_close(g);
}

Test(urlshortener_links, hundred_thousand_creates_give_distinct_codes, .timeout = 240) {
    many_creates(0);
}
Test(urlshortener_links, hundred_thousand_creates_give_distinct_codes_cluster, .timeout = 240) {
    many_creates(1);
}

/* ---- a counter that goes back ---- */

static void duplicate_ids(int cluster) {
    rig *g = rig_open(cluster);
    us_links *a = store_new(g, 10, 60000);
    us_link before[5];
    char url[64];
    for (int i = 0; i < 5; i++) {
        snprintf(url, sizeof url, "https://example.com/before/%d", i);
        create_ok(a, &(us_create_req){.url = url}, &before[i]);
    }
    /* a lost INCRBY, by hand: the counter starts again */
    redisReply *r = sd_redis_command(g->redis, NULL, "SET us:{ids}:next 0");
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    us_links *b = store_new(g, 10, 60000);
    us_link after;
    create_ok(b, &(us_create_req){.url = "https://example.com/after"}, &after);
    us_links_stats st;
    us_links_stats_get(b, &st);
    cr_assert_eq(st.skipped, 5, "the 5 ids handed out again were skipped");
    for (int i = 0; i < 5; i++) {
        cr_assert_str_neq(after.code, before[i].code);
        us_link now;
        cr_assert_eq(get_state(b, before[i].code, &now), US_LINK_FOUND);
        snprintf(url, sizeof url, "https://example.com/before/%d", i);
        cr_assert_str_eq(now.url, url, "link %s was overwritten", before[i].code);
        us_link_clear(&now);
        us_link_clear(&before[i]);
    }
    uint64_t id;
    cr_assert_eq(us_code_decode(g->codec, after.code, strlen(after.code), &id), 0);
    cr_assert_eq(id, 6);
    us_link_clear(&after);
    us_links_free(a);
    us_links_free(b);
    rig_close(g);
}

Test(urlshortener_links, a_duplicate_id_is_skipped_never_overwrites) {
    duplicate_ids(0);
}
Test(urlshortener_links, a_duplicate_id_is_skipped_never_overwrites_cluster) {
    duplicate_ids(1);
}

/* ---- expiry ---- */

static void expiry(int cluster) {
    rig *g = rig_open(cluster);
    us_links *l = store_new(g, 10, 3600 * 1000);
    us_link a, b;
    create_ok(l, &(us_create_req){.url = "https://example.com/hour", .expires_in_ms = 3600000}, &a);
    cr_assert_eq(a.expires_at_ms - a.created_ms, 3600000);
    cr_assert_eq(get_state(l, a.code, &b), US_LINK_FOUND);
    cr_assert_eq(b.expires_at_ms, a.expires_at_ms);
    us_link_clear(&b);
    /* the key outlives expires_at by the retention: 1 h + 1 h */
    char *key = sd_xasprintf("us:l:{%s}", a.code);
    long long pttl = test_redis_int(g->redis, "PTTL %s", key);
    free(key);
    cr_assert(pttl > 3600000 && pttl <= 7200000, "PTTL %lld", pttl);
    us_link_clear(&a);

    /* 100 ms: expired once Redis's clock passes it, and still kept (410, not 404) */
    create_ok(l, &(us_create_req){.url = "https://example.com/short", .expires_in_ms = 100}, &a);
    us_link_state st = US_LINK_FOUND;
    TEST_EVENTUALLY((st = get_state(l, a.code, NULL)) != US_LINK_FOUND, 10000);
    cr_assert_eq(st, US_LINK_EXPIRED);
    cr_assert_eq(get_state(l, a.code, &b), US_LINK_EXPIRED);
    cr_assert_str_eq(b.url, "https://example.com/short");
    us_link_clear(&b);
    us_link_clear(&a);
    us_links_free(l);

    /* with a 1 ms retention the key goes soon after: 404, and an alias is free again */
    l = store_new(g, 10, 1);
    create_ok(
        l, &(us_create_req){.url = "https://example.com/1", .alias = "brief", .expires_in_ms = 50},
        &a);
    us_link_clear(&a);
    TEST_EVENTUALLY(get_state(l, "brief", NULL) == US_LINK_NOT_FOUND, 10000);
    cr_assert_eq(get_state(l, "brief", NULL), US_LINK_NOT_FOUND);
    create_ok(l, &(us_create_req){.url = "https://example.com/2", .alias = "brief"}, &a);
    us_link_clear(&a);
    us_links_free(l);
    rig_close(g);
}

Test(urlshortener_links, expiry_by_redis_clock) {
    expiry(0);
}
Test(urlshortener_links, expiry_by_redis_clock_cluster) {
    expiry(1);
}

/* ---- aliases ---- */

Test(urlshortener_links, alias_rules) {
    rig *g = rig_open(0);
    us_links *l = store_new(g, 10, 60000);
    us_link a;
    us_verdict v;
    create_ok(l, &(us_create_req){.url = "https://example.com/1", .alias = "my_link-1"}, &a);
    cr_assert_str_eq(a.code, "my_link-1");
    us_link_clear(&a);
    cr_assert_eq(
        us_links_create(l, &(us_create_req){.url = "https://evil.example/", .alias = "my_link-1"},
                        &a, &v, NULL),
        0);
    cr_assert_eq(v, US_ALIAS_TAKEN);
    cr_assert_eq(get_state(l, "my_link-1", &a), US_LINK_FOUND);
    cr_assert_str_eq(a.url, "https://example.com/1", "a taken alias keeps its link");
    us_link_clear(&a);

    /* a code-shaped alias is refused: a generated code, and any 7 base62 characters */
    char code[US_CODE_MAX + 1];
    cr_assert_eq(us_code_encode(g->codec, 12345, code), 0);
    cr_assert_eq(us_alias_check(g->codec, code), US_ALIAS_CODE);
    cr_assert_eq(us_alias_check(g->codec, "Abcdefg"), US_ALIAS_CODE);
    cr_assert_eq(us_alias_check(g->codec, "Abcdef_"), US_OK, "not base62: never a code");
    cr_assert_eq(us_alias_check(g->codec, "Abcdefgh"), US_OK, "8 characters: never a code");
    const char *reserved[] = {"v1", "V1x", "healthz", "HealthZ", "metrics", "api", "admin"};
    cr_assert_eq(us_alias_check(g->codec, reserved[0]), US_ALIAS_INVALID, "2 characters");
    cr_assert_eq(us_alias_check(g->codec, reserved[1]), US_OK);
    for (size_t i = 2; i < sizeof reserved / sizeof reserved[0]; i++)
        cr_assert_eq(us_alias_check(g->codec, reserved[i]), US_ALIAS_RESERVED, "%s", reserved[i]);
    const char *invalid[] = {"ab", "a b", "a/b", "a.b", "ab%", "é-é", ""};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        cr_assert_eq(us_alias_check(g->codec, invalid[i]), US_ALIAS_INVALID, "%s", invalid[i]);
    char longest[US_ALIAS_MAX + 2];
    memset(longest, 'x', sizeof longest);
    longest[US_ALIAS_MAX] = '\0';
    cr_assert_eq(us_alias_check(g->codec, longest), US_OK, "64 characters");
    longest[US_ALIAS_MAX] = 'x';
    longest[US_ALIAS_MAX + 1] = '\0';
    cr_assert_eq(us_alias_check(g->codec, longest), US_ALIAS_INVALID, "65 characters");
    /* a refused alias writes nothing */
    cr_assert_eq(
        us_links_create(l, &(us_create_req){.url = "https://example.com/", .alias = "metrics"}, &a,
                        &v, NULL),
        0);
    cr_assert_eq(v, US_ALIAS_RESERVED);
    cr_assert_eq(test_redis_int(g->redis, "EXISTS us:l:{metrics}"), 0);
    /* deleted, it can be claimed again */
    cr_assert_eq(us_links_delete(l, "my_link-1"), 1);
    create_ok(l, &(us_create_req){.url = "https://example.com/2", .alias = "my_link-1"}, &a);
    us_link_clear(&a);
    us_links_free(l);
    rig_close(g);
}

/* ---- targets ---- */

Test(urlshortener_links, target_checks) {
    us_origin self;
    cr_assert_eq(us_origin_parse("https://Sho.rt", &self), 0);
    struct {
        const char *url;
        us_verdict v;
    } cases[] = {
        {"https://example.com/a", US_OK},
        {"http://example.com:8080/a?b#c", US_OK},
        {"ftp://example.com/", US_TARGET_INVALID},
        {"javascript:alert(1)", US_TARGET_INVALID},
        {"https://exa mple.com/", US_TARGET_INVALID},
        {"https://example.com/a b", US_TARGET_INVALID},
        {"https://example.com/\t", US_TARGET_INVALID},
        {"https://user:pw@example.com/", US_TARGET_INVALID},
        {"http://127.0.0.1/", US_TARGET_INVALID},
        {"http://2130706433/", US_TARGET_INVALID},
        {"http://0x7f.1/", US_TARGET_INVALID},
        {"http://0177.0.0.1/", US_TARGET_INVALID},
        {"http://localhost/", US_TARGET_INVALID},
        {"http://a.localhost./", US_TARGET_INVALID},
        {"http://[::1]/", US_TARGET_INVALID},
        {"http://[::ffff:127.0.0.1]/", US_TARGET_INVALID},
        {"http://0.0.0.0/", US_TARGET_INVALID},
        {"http://10.1.2.3/", US_TARGET_INVALID},
        {"http://192.168.0.1/", US_TARGET_INVALID},
        {"http://172.16.0.1/", US_TARGET_INVALID},
        {"http://100.64.0.1/", US_TARGET_INVALID},
        {"http://169.254.169.254/latest/meta-data/", US_TARGET_INVALID},
        {"http://[fe80::1]/", US_TARGET_INVALID},
        {"http://[fd00:ec2::254]/", US_TARGET_INVALID},
        /* our own base URL, in any case, with the default port spelt out, a trailing dot */
        {"https://sho.rt/abc", US_TARGET_SELF},
        {"HTTPS://SHO.RT/abc", US_TARGET_SELF},
        {"https://sho.rt:443/abc", US_TARGET_SELF},
        {"https://sho.rt./abc", US_TARGET_SELF},
        {"https://sho.rt", US_TARGET_SELF},
        /* another origin on the same name is not us */
        {"https://sho.rt:8443/abc", US_OK},
        {"https://www.sho.rt/abc", US_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sd_addr_verdict why = SD_ADDR_OK;
        us_verdict v = us_target_check(cases[i].url, NULL, &self, &why);
        cr_assert_eq(v, cases[i].v, "%s: %s", cases[i].url, us_verdict_reason(v));
        if (v == US_TARGET_INVALID)
            cr_assert_neq(why, SD_ADDR_OK);
    }
    char huge[2100] = "https://example.com/";
    memset(huge + strlen(huge), 'a', 2048 - strlen(huge));
    huge[2048] = '\0';
    cr_assert_eq(us_target_check(huge, NULL, &self, NULL), US_OK, "2,048 bytes");
    strcat(huge, "a");
    cr_assert_eq(us_target_check(huge, NULL, &self, NULL), US_TARGET_INVALID, "2,049 bytes");
    cr_assert_eq(us_origin_parse("not a url", &self), SD_EPARSE);
}

/* A refused target writes nothing and spends no id; the base URL's loop is refused in
 * us_links_create too. */
Test(urlshortener_links, refused_targets_write_nothing) {
    rig *g = rig_open(0);
    us_links *l = store_new(g, 10, 60000);
    us_link a;
    us_verdict v;
    sd_addr_verdict why = SD_ADDR_OK;
    cr_assert_eq(
        us_links_create(l, &(us_create_req){.url = "http://169.254.169.254/"}, &a, &v, &why), 0);
    cr_assert_eq(v, US_TARGET_INVALID);
    cr_assert_eq(why, SD_ADDR_METADATA);
    cr_assert_eq(us_links_create(l, &(us_create_req){.url = "https://sho.rt/x"}, &a, &v, NULL), 0);
    cr_assert_eq(v, US_TARGET_SELF);
    cr_assert_eq(us_links_create(l,
                                 &(us_create_req){.url = "https://a.example/", .expires_in_ms = -1},
                                 &a, &v, NULL),
                 0);
    cr_assert_eq(v, US_EXPIRES_INVALID);
    cr_assert_eq(us_links_create(l, &(us_create_req){.url = "https://a.example/", .max_clicks = -1},
                                 &a, &v, NULL),
                 0);
    cr_assert_eq(v, US_CLICKS_INVALID);
    cr_assert_eq(test_redis_int(g->redis, "DBSIZE"), 0, "no link, no counter");
    us_links_free(l);
    rig_close(g);
}

/* A string that is neither a code nor a possible alias is answered without Redis: here Redis
 * is not even reachable. */
Test(urlshortener_links, impossible_codes_cost_no_redis_call) {
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", test_closed_port());
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(url, &u, err, sizeof err), 0);
    sd_redis *r = sd_redis_new(&u, NULL);
    sd_redis_url_clear(&u);
    us_codec *c = codec_make();
    us_links *l = NULL;
    cr_assert_eq(us_links_new(r, c, NULL, &l), 0);
    const char *impossible[] = {"a", "a b", "a.b", "../etc", "%41bc", ""};
    for (size_t i = 0; i < sizeof impossible / sizeof impossible[0]; i++) {
        us_link_state st = 0;
        us_link link;
        cr_assert_eq(us_links_get(l, impossible[i], &st, &link), 0, "%s", impossible[i]);
        cr_assert_eq(st, US_LINK_NOT_FOUND);
        cr_assert_eq(us_links_delete(l, impossible[i]), 0);
    }
    us_link_state st = 0;
    us_link link;
    cr_assert_lt(us_links_get(l, "abcdefg", &st, &link), 0, "a possible code asks Redis");
    us_links_free(l);
    us_codec_free(c);
    sd_redis_free(r);
}
