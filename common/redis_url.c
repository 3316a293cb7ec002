/*
 * redis_url.c - where to connect and how: parsing and printing Redis URLs, the connection
 * options with their defaults, and the reconnect backoff rule both connection kinds follow
 * (see redis.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_internal.h"
#include "sd.h"

/* ---- URLs ---------------------------------------------------------------------------------- */

static int url_error(char *err, size_t errlen, const char *msg) {
    if (err && errlen)
        snprintf(err, errlen, "invalid Redis URL: %s", msg);
    return SD_EPARSE;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes %XX escapes of s[0..n) into a new string, or returns NULL on a bad escape. */
static char *percent_decode(const char *s, size_t n) {
    char *out = sd_xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        int hi = i + 2 < n + 1 ? hexval(s[i + 1]) : -1;
        int lo = hi >= 0 && i + 2 < n ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *o = '\0';
    return out;
}

static int parse_db(const char *s, size_t n, int *db) {
    if (n == 0 || n > 9)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *db = v;
    return 0;
}

/* Parses "[user][:password]@" from the start of an authority of length n. Returns the number of
 * bytes consumed (0 when there is no '@'), or -1 on a bad escape. */
static long parse_userinfo(const char *a, size_t n, sd_redis_url *u) {
    const char *at = memrchr(a, '@', n);
    if (at == NULL)
        return 0;
    size_t len = (size_t)(at - a);
    const char *colon = memchr(a, ':', len);
    size_t ulen = colon ? (size_t)(colon - a) : len;
    if (ulen > 0 && (u->user = percent_decode(a, ulen)) == NULL)
        return -1;
    if (colon && (u->password = percent_decode(colon + 1, len - ulen - 1)) == NULL)
        return -1;
    return (long)(len + 1);
}

/* Parses "host[:port]" or "[v6]:port" between h and end into u->host and u->port. */
static int parse_hostport(const char *h, const char *end, sd_redis_url *u, char *err,
                          size_t errlen) {
    const char *hend, *port = NULL;
    if (h < end && *h == '[') {
        hend = memchr(h, ']', (size_t)(end - h));
        if (hend == NULL)
            return url_error(err, errlen, "unclosed '[' in the host");
        u->host = sd_xstrndup(h + 1, (size_t)(hend - h - 1));
        hend++;
        if (hend < end && *hend != ':')
            return url_error(err, errlen, "unexpected text after ']'");
        port = hend < end ? hend + 1 : NULL;
    } else {
        const char *colon = memchr(h, ':', (size_t)(end - h));
        hend = colon ? colon : end;
        u->host = sd_xstrndup(h, (size_t)(hend - h));
        port = colon ? colon + 1 : NULL;
    }
    if (u->host[0] == '\0')
        return url_error(err, errlen, "the host is empty");
    if (port) {
        int p = 0;
        if (port == end || end - port > 5)
            return url_error(err, errlen, "the port must be a number from 1 to 65535");
        for (const char *c = port; c < end; c++) {
            if (*c < '0' || *c > '9')
                return url_error(err, errlen, "the port must be a number from 1 to 65535");
            p = p * 10 + (*c - '0');
        }
        if (p < 1 || p > 65535)
            return url_error(err, errlen, "the port must be a number from 1 to 65535");
        u->port = p;
    }
    return 0;
}

static int parse_tcp(const char *s, sd_redis_url *u, char *err, size_t errlen) {
    size_t alen = strcspn(s, "/?#");
    long used = parse_userinfo(s, alen, u);
    if (used < 0)
        return url_error(err, errlen, "bad %-escape in the user or password");
    const char *h = s + used, *end = s + alen;
    /* A Redis Cluster URL may list several seeds, "host:port,host:port": the first one fills
     * host and port, the others are checked the same way and kept as text in u->seeds. */
    const char *comma = memchr(h, ',', (size_t)(end - h));
    if (comma) {
        for (const char *seed = comma + 1; seed <= end;) {
            const char *next = memchr(seed, ',', (size_t)(end - seed));
            const char *send = next ? next : end;
            sd_redis_url one = {0};
            int rc = parse_hostport(seed, send, &one, err, errlen);
            sd_redis_url_clear(&one);
            if (rc != 0)
                return rc;
            seed = send + 1;
        }
        u->seeds = sd_xstrndup(comma + 1, (size_t)(end - comma - 1));
    }
    int rc = parse_hostport(h, comma ? comma : end, u, err, errlen);
    if (rc != 0)
        return rc;
    const char *rest = end;
    if (*rest == '/') {
        rest++;
        size_t dlen = strcspn(rest, "?#");
        if (dlen > 0 && parse_db(rest, dlen, &u->db) != 0)
            return url_error(err, errlen, "the path must be a database number (/0, /1, ...)");
        rest += dlen;
    }
    if (*rest != '\0')
        return url_error(err, errlen, "query strings and fragments are not supported");
    return 0;
}

static int parse_unix(const char *s, sd_redis_url *u, char *err, size_t errlen) {
    if (*s != '/')
        return url_error(err, errlen, "a unix URL needs an absolute path: unix:///path/to.sock");
    size_t plen = strcspn(s, "?#");
    u->path = sd_xstrndup(s, plen);
    const char *q = s + plen;
    if (*q == '\0')
        return 0;
    if (strncmp(q, "?db=", 4) != 0 || parse_db(q + 4, strlen(q + 4), &u->db) != 0)
        return url_error(err, errlen, "the only query a unix URL takes is ?db=N");
    return 0;
}

int sd_redis_url_parse(const char *text, sd_redis_url *out, char *err, size_t errlen) {
    sd_redis_url u = {.port = 6379};
    int rc;
    if (text == NULL || *text == '\0')
        rc = url_error(err, errlen, "empty");
    else if (strncmp(text, "redis://", 8) == 0)
        rc = parse_tcp(text + 8, &u, err, errlen);
    else if (strncmp(text, "unix://", 7) == 0)
        rc = parse_unix(text + 7, &u, err, errlen);
    else if (strncmp(text, "rediss://", 9) == 0)
        rc = url_error(err, errlen, "TLS (rediss://) is not supported by this build");
    else
        rc = url_error(err, errlen, "it must start with redis:// or unix://");
    if (rc != 0) {
        sd_redis_url_clear(&u);
        return rc;
    }
    *out = u;
    return 0;
}

void sd_redis_url_clear(sd_redis_url *url) {
    free(url->host);
    free(url->seeds);
    free(url->path);
    free(url->user);
    if (url->password) {
        memset(url->password, 0, strlen(url->password));
        free(url->password);
    }
    memset(url, 0, sizeof *url);
}

static char *dup_or_null(const char *s) {
    return s ? sd_xstrdup(s) : NULL;
}

void sd_redis_url_copy(sd_redis_url *dst, const sd_redis_url *src) {
    *dst = *src;
    dst->host = dup_or_null(src->host);
    dst->seeds = dup_or_null(src->seeds);
    dst->path = dup_or_null(src->path);
    dst->user = dup_or_null(src->user);
    dst->password = dup_or_null(src->password);
}

const char *sd_redis_url_format(const sd_redis_url *url, char *buf, size_t buflen) {
    char auth[160] = "";
    if (url->user || url->password)
        snprintf(auth, sizeof auth, "%s%s@", url->user ? url->user : "",
                 url->password ? ":***" : "");
    if (url->path && url->db)
        snprintf(buf, buflen, "unix://%s?db=%d", url->path, url->db);
    else if (url->path)
        snprintf(buf, buflen, "unix://%s", url->path);
    else if (strchr(url->host, ':'))
        snprintf(buf, buflen, "redis://%s[%s]:%d%s%s/%d", auth, url->host, url->port,
                 url->seeds ? "," : "", url->seeds ? url->seeds : "", url->db);
    else
        snprintf(buf, buflen, "redis://%s%s:%d%s%s/%d", auth, url->host, url->port,
                 url->seeds ? "," : "", url->seeds ? url->seeds : "", url->db);
    return buf;
}

void sd_redis_opts_default(sd_redis_opts *opts) {
    opts->connect_timeout_ms = 1000;
    opts->command_timeout_ms = 1000;
    opts->reconnect_min_ms = 50;
    opts->reconnect_max_ms = 2000;
    opts->scripts = NULL;
    opts->nscripts = 0;
}

sd_redis_opts sd_redis__opts_resolve(const sd_redis_opts *opts) {
    sd_redis_opts o;
    sd_redis_opts_default(&o);
    if (opts) {
        if (opts->connect_timeout_ms > 0)
            o.connect_timeout_ms = opts->connect_timeout_ms;
        if (opts->command_timeout_ms > 0)
            o.command_timeout_ms = opts->command_timeout_ms;
        if (opts->reconnect_min_ms > 0)
            o.reconnect_min_ms = opts->reconnect_min_ms;
        if (opts->reconnect_max_ms > 0)
            o.reconnect_max_ms = opts->reconnect_max_ms;
        if (opts->scripts && opts->nscripts > 0) {
            /* The connection's own copy of the array, freed by sd_redis__opts_clear. */
            sd_script **copy = sd_xmalloc(sizeof *copy * opts->nscripts);
            for (size_t i = 0; i < opts->nscripts; i++) {
                copy[i] = opts->scripts[i];
                sd_script_init(copy[i]);
            }
            o.scripts = copy;
            o.nscripts = opts->nscripts;
        }
    }
    return o;
}

void sd_redis__opts_clear(sd_redis_opts *opts) {
    free((void *)opts->scripts);
    opts->scripts = NULL;
    opts->nscripts = 0;
}

/* Next backoff step: doubles from min up to max. */
int sd_redis__backoff_next(int current, const sd_redis_opts *o) {
    if (current <= 0)
        return o->reconnect_min_ms;
    return current * 2 > o->reconnect_max_ms ? o->reconnect_max_ms : current * 2;
}
