/*
 * sd.h - the small utilities every component shares: checked allocation, clocks, structured
 * logging and the error codes of common/.
 *
 * Out-of-memory is not an error any caller here can handle usefully, so the sd_x* allocators
 * abort with a message instead of returning NULL. That keeps call sites readable.
 */
#ifndef SD_H
#define SD_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Error codes of common/ (negative, below -errno's range). Functions return 0 or one of these
 * (or a negative errno value); sd_strerror() names either kind. */
enum {
    SD_EREDIS = -10001,        /* Redis replied with an error, or the reply had the wrong type */
    SD_ETIMEDOUT = -10002,     /* the deadline passed before the reply arrived */
    SD_EDISCONNECTED = -10003, /* the connection is down (a reconnect may be pending) */
    SD_EPARSE = -10004,        /* input could not be parsed */
    SD_ECLOSED = -10005,       /* the object is closing; no new work is accepted */
    /* Outgoing HTTP (http_client.h); a timeout there is SD_ETIMEDOUT, a freed client SD_ECLOSED. */
    SD_EHTTP_REFUSED = -10010,  /* the server refused the connection (nothing listens) */
    SD_EHTTP_DNS = -10011,      /* the host name did not resolve */
    SD_EHTTP_TLS = -10012,      /* TLS handshake or certificate verification failed */
    SD_EHTTP_TOOBIG = -10013,   /* the response is over the client's size cap */
    SD_EHTTP_RESET = -10014,    /* the connection was reset or closed before the response ended */
    SD_EHTTP_BLOCKED = -10015,  /* the address hook refused every address of the host */
    SD_EHTTP_SCHEME = -10016,   /* a URL or redirect whose scheme is not http or https */
    SD_EHTTP_CONNECT = -10017,  /* connecting failed for another reason (unreachable, ...) */
    SD_EHTTP_PROTOCOL = -10018, /* a malformed response, too many redirects, another failure */
};

/* Returns a static description of a code returned by any sd_ function (or of -errno). */
const char *sd_strerror(int code);

/* Allocation that never returns NULL: on failure it prints a message and aborts. */
void *sd_xmalloc(size_t size);
void *sd_xcalloc(size_t n, size_t size);
void *sd_xrealloc(void *ptr, size_t size);
char *sd_xstrdup(const char *s);
char *sd_xstrndup(const char *s, size_t n);
/* Like asprintf(), aborting on out-of-memory. The caller frees the result. */
char *sd_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writes v in decimal into buf (at least 21 bytes) and returns the number of digits written;
 * no NUL. For paths that run per request, where printf's cost shows. */
size_t sd_format_uint(char *buf, uint64_t v);

/* For a forked child, just before exec: gives SIGPIPE back its default action. The Redis
 * connections set it to ignored (redis.h), and an ignored signal stays ignored across exec, so
 * a program started from here would otherwise inherit it. Async-signal-safe. */
void sd_child_restore_sigpipe(void);

/* A loopback port that nothing has bound, for a server to listen on; or -errno. It is drawn
 * below the kernel's ephemeral range, so that no outgoing connection takes it as its source
 * port: a server that is halted and restarted binds the same port again, and meanwhile any
 * process may connect somewhere (a client retrying the halted server can even connect to
 * itself). Only bound and closed here, so another process may still take it before it is
 * used: the caller retries with another port when its bind fails. */
int sd_free_loopback_port(void);

/* Monotonic time (CLOCK_MONOTONIC), for local timing only: never for shared decisions. */
uint64_t sd_now_ns(void);
uint64_t sd_now_ms(void);

/* Log levels for sd_log(). SD_LOG_LEVEL in the environment (debug|info|warn|error) sets the
 * threshold; the default is info. */
enum { SD_LOG_DEBUG, SD_LOG_INFO, SD_LOG_WARN, SD_LOG_ERROR };

/*
 * Writes one structured line to stderr in logfmt:
 *   ts=2026-11-22T19:30:00.123Z level=info event=redis.connected addr=127.0.0.1:6379
 * `fields` is a printf format producing the rest of the line (key=value pairs), or NULL.
 * Never pass a secret (password, signing key) in the fields.
 */
void sd_log(int level, const char *event, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));

/* Parses a whole decimal string into a long long within [min, max]. Returns 0 or SD_EPARSE. */
int sd_parse_ll(const char *s, long long min, long long max, long long *out);
/* Parses a whole decimal floating-point string (digits, '.', sign and exponent only: no hex,
 * inf, nan or blanks) within [min, max]. Returns 0 or SD_EPARSE. */
int sd_parse_double(const char *s, double min, double max, double *out);

#endif
