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
#include <stdio.h>
#include <strings.h>

#include "http_internal.h"

/* Parses an IPv4 or IPv6 address; returns its family (0: not an address). */
static int parse_addr(const char *text, unsigned char out[16]) {
    if (inet_pton(AF_INET, text, out) == 1)
        return AF_INET;
    if (inet_pton(AF_INET6, text, out) == 1)
        return AF_INET6;
    return 0;
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
    int max = family == AF_INET ? 32 : 128;
    long long bits = max;
    if (slash && sd_parse_ll(slash + 1, 0, max, &bits) != 0) {
        snprintf(err, errlen, "'%s': the prefix length must be 0 to %d", cidr, max);
        return -1;
    }
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

/* The value of the last header named name, or NULL. */
static const char *last_header(const sd_http_req *req, const char *name) {
    const char *v = NULL;
    for (size_t i = 0; i < req->nheaders; i++) {
        const header *h = &req->headers[i];
        if (strcasecmp(req->store.p + h->name, name) == 0)
            v = h->value == NO_OFF ? "" : req->store.p + h->value;
    }
    return v;
}

const char *sd_http_req_client(sd_http_req *req) {
    const sd_http_trust *t = &req->conn->srv->trust;
    const char *hop = req->conn->peer;
    if (!sd_http_trust_has(t, hop))
        return hop;
    const char *xff = last_header(req, "X-Forwarded-For");
    if (!xff)
        return hop;
    /* Entries from the right: [start, end) is the one being read. */
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
        char entry[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        size_t n = (size_t)(b - a);
        if (n == 0 || n >= sizeof entry)
            break;
        memcpy(entry, a, n);
        entry[n] = '\0';
        if (!parse_addr(entry, bin))
            break; /* not an address: the hop before it is as far as we can see */
        memcpy(req->client, entry, n + 1);
        hop = req->client;
        if (!sd_http_trust_has(t, hop))
            return hop;
        end = start > xff ? start - 1 : xff;
    }
    return hop;
}
