/*
 * sd.c - checked allocation, clocks, logging, number parsing and free ports (see sd.h).
 */
#include "sd.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

const char *sd_strerror(int code) {
    switch (code) {
    case 0:
        return "ok";
    case SD_EREDIS:
        return "Redis error reply";
    case SD_ETIMEDOUT:
        return "deadline exceeded";
    case SD_EDISCONNECTED:
        return "not connected to Redis";
    case SD_EPARSE:
        return "invalid input";
    case SD_ECLOSED:
        return "closed";
    case SD_EHTTP_REFUSED:
        return "connection refused";
    case SD_EHTTP_DNS:
        return "host name did not resolve";
    case SD_EHTTP_TLS:
        return "TLS failure";
    case SD_EHTTP_TOOBIG:
        return "response too large";
    case SD_EHTTP_RESET:
        return "connection reset before the response ended";
    case SD_EHTTP_BLOCKED:
        return "address refused by policy";
    case SD_EHTTP_SCHEME:
        return "scheme not allowed (http and https only)";
    case SD_EHTTP_CONNECT:
        return "could not connect";
    case SD_EHTTP_PROTOCOL:
        return "HTTP protocol error";
    default:
        return code < 0 && code > -4096 ? strerror(-code) : "unknown error";
    }
}

static void oom(size_t size) {
    fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", size);
    abort();
}

void *sd_xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (p == NULL)
        oom(size);
    return p;
}

void *sd_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom(n * size);
    return p;
}

void *sd_xrealloc(void *ptr, size_t size) {
    void *p = realloc(ptr, size ? size : 1);
    if (p == NULL)
        oom(size);
    return p;
}

char *sd_xstrdup(const char *s) {
    return sd_xstrndup(s, strlen(s));
}

char *sd_xstrndup(const char *s, size_t n) {
    char *p = sd_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *sd_xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom(strlen(fmt));
    return s;
}

size_t sd_format_uint(char *buf, uint64_t v) {
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (size_t i = 0; i < n; i++)
        buf[i] = digits[n - 1 - i];
    return n;
}

void sd_child_restore_sigpipe(void) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, NULL);
}

uint64_t sd_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t sd_now_ms(void) {
    return sd_now_ns() / 1000000u;
}

static int log_threshold(void) {
    static int threshold = -1;
    if (threshold < 0) {
        const char *v = getenv("SD_LOG_LEVEL");
        threshold = SD_LOG_INFO;
        if (v && strcmp(v, "debug") == 0)
            threshold = SD_LOG_DEBUG;
        else if (v && strcmp(v, "warn") == 0)
            threshold = SD_LOG_WARN;
        else if (v && strcmp(v, "error") == 0)
            threshold = SD_LOG_ERROR;
    }
    return threshold;
}

void sd_log(int level, const char *event, const char *fields, ...) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < log_threshold())
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[level], event);
    if (fields && n > 0 && (size_t)n < sizeof line - 1) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fields);
        vsnprintf(line + n, sizeof line - (size_t)n, fields, ap);
        va_end(ap);
    }
    /* One write per line, so lines from several threads or processes do not interleave. */
    fprintf(stderr, "%s\n", line);
}

int sd_parse_ll(const char *s, long long min, long long max, long long *out) {
    if (s == NULL || *s == '\0')
        return SD_EPARSE;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return SD_EPARSE;
    *out = v;
    return 0;
}

int sd_parse_double(const char *s, double min, double max, double *out) {
    /* strtod also reads hexadecimal ("0x10"), "inf", "nan" and leading blanks: only plain
     * decimal notation is meant. */
    if (s == NULL || *s == '\0' || s[strspn(s, "0123456789.eE+-")] != '\0')
        return SD_EPARSE;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
        return SD_EPARSE;
    *out = v;
    return 0;
}

/* Whether port is free on the loopback address now (a bind test, without SO_REUSEADDR, so a
 * port still in TIME_WAIT counts as taken). Returns 1, 0, or -errno. */
static int port_free(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* The lowest port the kernel hands out to outgoing connections (ip_local_port_range). */
static int ephemeral_low(void) {
    int low = 32768, high = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d %d", &low, &high) != 2)
            low = 32768;
        fclose(f);
    }
    return low;
}

/* Drawn from [low / 2, low) below the ephemeral range: 16384-32767 by default. */
int sd_free_loopback_port(void) {
    int low = ephemeral_low();
    if (low >= 2048) {
        for (int attempt = 0; attempt < 64; attempt++) {
            uint32_t r;
            if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
                break;
            int port = low / 2 + (int)(r % (uint32_t)(low - low / 2));
            int rc = port_free(port);
            if (rc < 0)
                return rc;
            if (rc)
                return port;
        }
    }
    /* No room below the ephemeral range: let the kernel pick. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int port = -EADDRNOTAVAIL;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}
