/*
 * http_trust.c - who the client is behind trusted proxies: --trust-proxy blocks and
 * X-Forwarded-For (see http.h, sd_http_req_client).
 *
 * Each proxy appends the address it received the request from to X-Forwarded-For, so the
 * header reads "client, proxy1, proxy2" and the peer is the last proxy. Only the entries that
 * trusted proxies appended can be believed: whatever is left of them came from the client,
 * which may write anything. So the walk starts at the peer and goes left while the hop is a
 * trusted proxy; the first untrusted address is the client.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <strings.h>

#include "http_internal.h"

/* Parses an IPv4 or IPv6 address; returns its family (0: not an address). An IPv4-mapped IPv6
 * address (::ffff:a.b.c.d, how a dual-stack listener sees an IPv4 peer) is read as IPv4, so that
 * an IPv4 block matches it. */
static int parse_addr(const char *text, unsigned char out[16]) {
    if (inet_pton(AF_INET, text, out) == 1)
        return AF_INET;
    struct in6_addr a6;
    if (inet_pton(AF_INET6, text, &a6) != 1)
        return 0;
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
        memcpy(out, a6.s6_addr + 12, 4);
        return AF_INET;
    }
    memcpy(out, a6.s6_addr, 16);
    return AF_INET6;
}

int sd_http_trust_add(sd_http_trust *t, const char *cidr, char *err, size_t errlen) {
    char addr[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(cidr, '/');
    size_t n = slash ? (size_t)(slash - cidr) : strlen(cidr);
    unsigned char net[16] = {0};
    int family = 0;
    if (n < sizeof addr) {
        memcpy(addr, cidr, n);
        addr[n] = '\0';
        family = parse_addr(addr, net);
    }
    if (!family) {
        snprintf(err, errlen, "wants ADDR/BITS (IPv4 or IPv6), got '%s'", cidr);
        return -1;
    }
    /* A mapped block (::ffff:10.0.0.0/104) is written in IPv6 bits: the IPv4 part is the last
     * 32 of them. */
    int mapped = family == AF_INET && memchr(addr, ':', n) != NULL;
    int min = mapped ? 96 : 0, max = family == AF_INET && !mapped ? 32 : 128;
    long long bits = max;
    if (slash && sd_parse_ll(slash + 1, min, max, &bits) != 0) {
        snprintf(err, errlen, "'%s': the prefix length must be %d to %d", cidr, min, max);
        return -1;
    }
    if (mapped)
        bits -= 96;
    if (t->n == SD_HTTP_TRUST_MAX) {
        snprintf(err, errlen, "at most %d blocks", SD_HTTP_TRUST_MAX);
        return -1;
    }
    t->nets[t->n].family = family;
    t->nets[t->n].bits = (int)bits;
    memcpy(t->nets[t->n].net, net, sizeof net);
    t->n++;
    return 0;
}

static int prefix_equal(const unsigned char *a, const unsigned char *b, int bits) {
    int bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)bytes) != 0)
        return 0;
    if (rest == 0)
        return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

int sd_http_trust_has(const sd_http_trust *t, const char *text) {
    unsigned char a[16];
    int family = t->n ? parse_addr(text, a) : 0;
    for (int i = 0; family && i < t->n; i++)
        if (t->nets[i].family == family && prefix_equal(a, t->nets[i].net, t->nets[i].bits))
            return 1;
    return 0;
}

void sd_http_server_trust(sd_http_server *srv, const sd_http_trust *t) {
    if (t)
        srv->trust = *t;
    else
        srv->trust.n = 0;
}

/* An X-Forwarded-For entry as an address: "1.2.3.4", "1.2.3.4:5678", "2001:db8::1",
 * "[2001:db8::1]:443" and "fe80::1%eth0" (a zone) all give the bare address in out. Returns 0,
 * or -1 when it is none (then the client cannot be told). */
static int entry_addr(const char *a, size_t n, char out[INET6_ADDRSTRLEN]) {
    char text[INET6_ADDRSTRLEN + 16];
    if (n == 0 || n >= sizeof text)
        return -1;
    memcpy(text, a, n);
    text[n] = '\0';
    char *host = text;
    if (host[0] == '[') { /* [v6] or [v6]:port */
        char *close = strchr(host, ']');
        if (!close || (close[1] != '\0' && close[1] != ':'))
            return -1;
        *close = '\0';
        host++;
    } else {
        char *colon = strchr(host, ':');
        if (colon && !strchr(colon + 1, ':')) /* one colon: IPv4 with a port */
            *colon = '\0';
    }
    char *zone = strchr(host, '%');
    if (zone)
        *zone = '\0';
    unsigned char bin[16];
    if (strlen(host) >= INET6_ADDRSTRLEN || !parse_addr(host, bin))
        return -1;
    strcpy(out, host);
    return 0;
}

/* Reads one X-Forwarded-For value from the right, starting from hop (a trusted proxy): returns
 * 1 with the client in req->client (an untrusted entry, or "unknown" for one that is not an
 * address), or 0 when every entry is trusted (req->client then holds the left-most, or hop is
 * left as it was when the value is empty). */
static int walk(sd_http_req *req, const sd_http_trust *t, const char *xff, const char **hop) {
    const char *end = xff + strlen(xff);
    while (end > xff) {
        const char *start = end;
        while (start > xff && start[-1] != ',')
            start--;
        const char *a = start, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        end = start > xff ? start - 1 : xff;
        if (a == b)
            continue; /* an empty entry ("a,,b", a trailing comma) says nothing */
        if (entry_addr(a, (size_t)(b - a), req->client) != 0) {
            /* Not an address: who sent it cannot be told, and the hop before it must not be
             * taken for the client (it may be loopback). */
            strcpy(req->client, "unknown");
            *hop = req->client;
            return 1;
        }
        *hop = req->client;
        if (!sd_http_trust_has(t, req->client))
            return 1;
    }
    return 0;
}

const char *sd_http_req_client(sd_http_req *req) {
    const sd_http_trust *t = &req->conn->srv->trust;
    const char *hop = req->conn->peer;
    if (!sd_http_trust_has(t, hop))
        return hop;
    /* Several X-Forwarded-For lines are one list in their order (RFC 9110, section 5.3): each
     * proxy may add a line of its own. So the lines are read from the last one back. */
    for (size_t i = req->nheaders; i-- > 0;) {
        const header *h = &req->headers[i];
        if (strcasecmp(req->store.p + h->name, "X-Forwarded-For") != 0 || h->value == NO_OFF)
            continue;
        if (walk(req, t, req->store.p + h->value, &hop))
            return hop;
    }
    return hop;
}
