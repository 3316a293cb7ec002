/*
 * links.c - the links of links.h in Redis. Read links.h first: the create path and its
 * invariants are drawn there.
 *
 * A link is one string key, `<prefix>l:{<code>}`, holding "1 <created_ms> <expires_at_ms>
 * <max_clicks> <url>" (the leading 1 is the format's version; the URL, checked, has no space).
 * One string keeps the create a single SET NX and the lookup a single GET.
 */
#include "links.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sd.h"
#include "us_lua.h"

static sd_script create_script = {"urlshortener/create", NULL, 0, ""};
static sd_script get_script = {"urlshortener/get", NULL, 0, ""};
static sd_script *const scripts[] = {&create_script, &get_script};

sd_script *const *us_links_scripts(size_t *n) {
    create_script.body = sd_lua_us_create;
    create_script.len = sd_lua_us_create_len;
    get_script.body = sd_lua_us_get;
    get_script.len = sd_lua_us_get_len;
    for (size_t i = 0; i < sizeof scripts / sizeof scripts[0]; i++)
        sd_script_init(scripts[i]);
    *n = sizeof scripts / sizeof scripts[0];
    return scripts;
}

const char *us_strerror(int err) {
    switch (err) {
    case US_EEXHAUSTED:
        return "no ids left in the code domain";
    case US_ESKIPS:
        return "too many taken codes in a row (the id counter went back?)";
    case US_ECORRUPT:
        return "a stored link could not be read";
    default:
        return sd_strerror(err);
    }
}

const char *us_verdict_reason(us_verdict v) {
    switch (v) {
    case US_OK:
        return "ok";
    case US_TARGET_INVALID:
        return "the target URL is refused";
    case US_TARGET_SELF:
        return "the target is this service's own base URL (a redirect loop)";
    case US_ALIAS_INVALID:
        return "an alias is 3 to 64 characters of A-Z, a-z, 0-9, '_' and '-'";
    case US_ALIAS_RESERVED:
        return "the alias is a reserved word";
    case US_ALIAS_CODE:
        return "the alias has the form of a generated code";
    case US_ALIAS_TAKEN:
        return "the alias is taken";
    case US_EXPIRES_INVALID:
        return "expires_in is out of range";
    case US_CLICKS_INVALID:
        return "max_clicks is out of range";
    }
    return "unknown";
}

/* ---- checks ---- */

int us_origin_parse(const char *base_url, us_origin *out) {
    sd_addr_opts o;
    sd_addr_opts_default(&o);
    o.allow_private = 1;
    sd_addr_url u;
    if (!base_url || sd_addr_url_check(base_url, &o, &u) != SD_ADDR_OK)
        return SD_EPARSE;
    out->https = u.https;
    memcpy(out->host, u.host, sizeof out->host);
    out->port = u.port;
    return 0;
}

us_verdict us_target_check(const char *url, const sd_addr_opts *addr, const us_origin *self,
                           sd_addr_verdict *why) {
    sd_addr_url u;
    sd_addr_verdict v = sd_addr_url_check(url, addr, &u);
    if (v != SD_ADDR_OK) {
        if (why)
            *why = v;
        return US_TARGET_INVALID;
    }
    /* sd_addr_url_check lower-cases the host and drops a trailing dot, and fills in the
     * default port, so HTTPS://Short.Example.:443/x compares equal to https://short.example. */
    if (self && u.https == self->https && u.port == self->port &&
        strcasecmp(u.host, self->host) == 0)
        return US_TARGET_SELF;
    return US_OK;
}

/* The words the service's own paths use, and words a user could mistake for them. */
static const char *const reserved[] = {
    "v1",     "v2",     "api",     "healthz",    "metrics", "admin", "static",
    "assets", "login",  "logout",  "signup",     "docs",    "help",  "status",
    "www",    "robots", "favicon", "well-known", "links",   "debug", NULL,
};

static int alias_syntax_ok(const char *s) {
    size_t n = strlen(s);
    if (n < US_ALIAS_MIN || n > US_ALIAS_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

us_verdict us_alias_check(const us_codec *codec, const char *alias) {
    if (!alias || !alias_syntax_ok(alias))
        return US_ALIAS_INVALID;
    for (size_t i = 0; reserved[i]; i++)
        if (strcasecmp(alias, reserved[i]) == 0)
            return US_ALIAS_RESERVED;
    uint64_t id;
    if (us_code_decode(codec, alias, strlen(alias), &id) == 0)
        return US_ALIAS_CODE;
    return US_OK;
}

int us_code_possible(const us_codec *codec, const char *s) {
    return us_code_is_canonical(codec, s, strlen(s)) || alias_syntax_ok(s);
}

/* ---- the store ---- */

struct us_links {
    sd_redis *redis;
    const us_codec *codec;
    char *prefix;
    char *counter_key;
    int block;
    int64_t retention_ms;
    int max_skips;
    int has_self;
    us_origin self;
    sd_addr_opts addr;
    int timeout_ms;
    uint64_t next, end; /* the ids [next, end] are this store's; next > end: none left */
    us_links_stats stats;
};

void us_links_opts_default(us_links_opts *opts) {
    memset(opts, 0, sizeof *opts);
    opts->prefix = "us:";
    opts->block = 1000;
    opts->retention_ms = 7LL * 24 * 3600 * 1000;
    opts->max_skips = 100000;
    sd_addr_opts_default(&opts->addr);
}

int us_links_new(sd_redis *redis, const us_codec *codec, const us_links_opts *opts,
                 us_links **out) {
    us_links_opts d;
    if (!opts) {
        us_links_opts_default(&d);
        opts = &d;
    }
    if (opts->block < 1 || opts->retention_ms < 0 || opts->max_skips < 1 || !opts->prefix)
        return -EINVAL;
    us_origin self;
    if (opts->base_url && us_origin_parse(opts->base_url, &self) != 0)
        return SD_EPARSE;
    us_links *l = sd_xcalloc(1, sizeof *l);
    l->redis = redis;
    l->codec = codec;
    l->prefix = sd_xstrdup(opts->prefix);
    /* The counter's hash tag is fixed: it is one key on one shard (links.h, invariant 5). */
    l->counter_key = sd_xasprintf("%s{ids}:next", opts->prefix);
    l->block = opts->block;
    l->retention_ms = opts->retention_ms;
    l->max_skips = opts->max_skips;
    l->has_self = opts->base_url != NULL;
    if (l->has_self)
        l->self = self;
    l->addr = opts->addr;
    l->timeout_ms = opts->timeout_ms;
    l->next = 1;
    l->end = 0;
    *out = l;
    return 0;
}

void us_links_free(us_links *l) {
    if (!l)
        return;
    free(l->prefix);
    free(l->counter_key);
    free(l);
}

void us_link_clear(us_link *link) {
    free(link->url);
    memset(link, 0, sizeof *link);
}

void us_links_stats_get(const us_links *l, us_links_stats *out) {
    *out = l->stats;
}

static char *link_key(const us_links *l, const char *code) {
    return sd_xasprintf("%sl:{%s}", l->prefix, code);
}

/* Converts a failed call into one error code, freeing the reply. */
static int reply_error(redisReply *reply, int err) {
    if (!reply)
        return err ? err : SD_EDISCONNECTED;
    freeReplyObject(reply);
    return SD_EREDIS;
}

/* Takes the next id, reserving a new block with INCRBY when this store's is used up. */
static int id_next(us_links *l, uint64_t *id) {
    if (l->next > l->end) {
        int err = 0;
        redisReply *r = sd_redis_command(l->redis, &err, "INCRBY %s %d", l->counter_key, l->block);
        if (!r || r->type != REDIS_REPLY_INTEGER || r->integer < l->block)
            return reply_error(r, err);
        l->end = (uint64_t)r->integer;
        l->next = l->end - (uint64_t)l->block + 1;
        l->stats.blocks++;
        freeReplyObject(r);
    }
    if (l->next >= us_codec_domain(l->codec))
        return US_EEXHAUSTED;
    *id = l->next++;
    return 0;
}

/* Runs us-create.lua for code. Returns 1 written, 0 taken, or a negative error. */
static int link_write(us_links *l, const char *code, const us_create_req *req, us_link *out) {
    char *key = link_key(l, code);
    char exp[24], clicks[24], ret[24];
    snprintf(exp, sizeof exp, "%" PRId64, req->expires_in_ms);
    snprintf(clicks, sizeof clicks, "%" PRId64, req->max_clicks);
    snprintf(ret, sizeof ret, "%" PRId64, l->retention_ms);
    const char *argv[] = {key, req->url, exp, clicks, ret};
    int err = 0;
    redisReply *r =
        sd_redis_script(l->redis, &err, l->timeout_ms, &create_script, 1, 5, argv, NULL);
    free(key);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER ||
        r->element[2]->type != REDIS_REPLY_INTEGER)
        return reply_error(r, err);
    int written = r->element[0]->integer == 1;
    if (written) {
        memset(out, 0, sizeof *out);
        snprintf(out->code, sizeof out->code, "%s", code);
        out->url = sd_xstrdup(req->url);
        out->created_ms = r->element[1]->integer;
        out->expires_at_ms = r->element[2]->integer;
        out->max_clicks = req->max_clicks;
        l->stats.created++;
    }
    freeReplyObject(r);
    return written;
}

int us_links_create(us_links *l, const us_create_req *req, us_link *out, us_verdict *verdict,
                    sd_addr_verdict *why) {
    *verdict = us_target_check(req->url, &l->addr, l->has_self ? &l->self : NULL, why);
    if (*verdict != US_OK)
        return 0;
    if (req->expires_in_ms < 0 || req->expires_in_ms > US_EXPIRES_MAX_MS) {
        *verdict = US_EXPIRES_INVALID;
        return 0;
    }
    if (req->max_clicks < 0) {
        *verdict = US_CLICKS_INVALID;
        return 0;
    }
    if (req->alias) {
        *verdict = us_alias_check(l->codec, req->alias);
        if (*verdict != US_OK)
            return 0;
        int rc = link_write(l, req->alias, req, out);
        if (rc < 0)
            return rc;
        if (rc == 0)
            *verdict = US_ALIAS_TAKEN;
        return 0;
    }
    for (int skips = 0; skips <= l->max_skips; skips++) {
        uint64_t id = 0;
        int rc = id_next(l, &id);
        if (rc < 0)
            return rc;
        char code[US_CODE_MAX + 1];
        rc = us_code_encode(l->codec, id, code);
        if (rc < 0)
            return US_EEXHAUSTED;
        rc = link_write(l, code, req, out);
        if (rc < 0)
            return rc;
        if (rc == 1)
            return 0;
        /* The code is taken: this id was handed out before (links.h, invariant 2). */
        l->stats.skipped++;
        sd_log(SD_LOG_WARN, "urlshortener.id_skipped", "id=%" PRIu64, id);
    }
    return US_ESKIPS;
}

/* Parses "1 <created> <expires_at> <max_clicks> <url>". */
static int link_parse(const char *code, const char *v, size_t len, us_link *out) {
    if (len < 2 || v[0] != '1' || v[1] != ' ' || memchr(v, '\0', len))
        return US_ECORRUPT;
    long long created, expires, clicks;
    int used = 0;
    if (sscanf(v + 2, "%lld %lld %lld %n", &created, &expires, &clicks, &used) != 3 || used <= 0)
        return US_ECORRUPT;
    const char *url = v + 2 + used;
    if (url >= v + len)
        return US_ECORRUPT;
    memset(out, 0, sizeof *out);
    snprintf(out->code, sizeof out->code, "%s", code);
    out->url = sd_xstrndup(url, (size_t)(v + len - url));
    out->created_ms = created;
    out->expires_at_ms = expires;
    out->max_clicks = clicks;
    return 0;
}

/* Reads us-get.lua's reply r (NULL with err when the call failed); frees nothing. */
static int get_reply(const char *code, redisReply *r, int err, us_link_state *state, us_link *out) {
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_INTEGER)
        return r && r->type == REDIS_REPLY_ERROR ? SD_EREDIS : r ? US_ECORRUPT : err;
    redisReply *v = r->element[0];
    int64_t now = r->element[1]->integer;
    int rc = 0;
    if (v->type == REDIS_REPLY_NIL) {
        *state = US_LINK_NOT_FOUND;
    } else if (v->type != REDIS_REPLY_STRING) {
        rc = US_ECORRUPT;
    } else if ((rc = link_parse(code, v->str, v->len, out)) == 0) {
        *state =
            out->expires_at_ms > 0 && now >= out->expires_at_ms ? US_LINK_EXPIRED : US_LINK_FOUND;
    }
    return rc;
}

int us_links_get(us_links *l, const char *code, us_link_state *state, us_link *out) {
    if (strlen(code) > US_ALIAS_MAX || !us_code_possible(l->codec, code)) {
        *state = US_LINK_NOT_FOUND;
        return 0;
    }
    char *key = link_key(l, code);
    const char *argv[] = {key};
    int err = 0;
    redisReply *r = sd_redis_script(l->redis, &err, l->timeout_ms, &get_script, 1, 1, argv, NULL);
    free(key);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_INTEGER)
        return reply_error(r, err);
    int rc = get_reply(code, r, err, state, out);
    freeReplyObject(r);
    return rc;
}

typedef struct get_op {
    us_links_get_cb *cb;
    void *udata;
    char code[US_ALIAS_MAX + 1];
} get_op;

static void on_get(sd_aredis *ar, redisReply *r, int status, void *udata) {
    (void)ar;
    get_op *op = udata;
    us_link link;
    memset(&link, 0, sizeof link);
    us_link_state state = US_LINK_NOT_FOUND;
    int rc = get_reply(op->code, status == 0 ? r : NULL, status, &state, &link);
    op->cb(rc, state, rc == 0 && state != US_LINK_NOT_FOUND ? &link : NULL, op->udata);
    us_link_clear(&link);
    free(op);
}

int us_links_get_async(const us_links *l, sd_aredis *ar, const char *code, us_links_get_cb *cb,
                       void *udata) {
    if (strlen(code) > US_ALIAS_MAX || !us_code_possible(l->codec, code))
        return -EINVAL;
    get_op *op = sd_xmalloc(sizeof *op);
    op->cb = cb;
    op->udata = udata;
    snprintf(op->code, sizeof op->code, "%s", code);
    char *key = link_key(l, code);
    const char *argv[] = {key};
    int rc = sd_aredis_script(ar, &get_script, on_get, op, l->timeout_ms, 1, 1, argv, NULL);
    free(key);
    if (rc != 0)
        free(op);
    return rc;
}

int us_links_delete(us_links *l, const char *code) {
    if (strlen(code) > US_ALIAS_MAX || !us_code_possible(l->codec, code))
        return 0;
    char *key = link_key(l, code);
    int err = 0;
    redisReply *r = sd_redis_command(l->redis, &err, "DEL %s", key);
    free(key);
    if (!r || r->type != REDIS_REPLY_INTEGER)
        return reply_error(r, err);
    int existed = r->integer > 0;
    freeReplyObject(r);
    return existed;
}
