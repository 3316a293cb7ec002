/*
 * addr_vet.c - the SSRF guard's URL and address checks (see addr_vet.h for the rules).
 *
 * sd_addr_url_check() reads a URL left to right, once, in the order of the header's rules:
 * length and bytes (rules 1, 2), scheme (1), authority up to the first '/', '?' or '#' (3),
 * host (4, 6, 7) and port (5). It never decodes anything: what it cannot read as exactly one
 * host it refuses, so that no later parser (libcurl, a browser, a proxy) can read another.
 * Addresses, written as literals or resolved, go through one classifier, sd_addr_classify(),
 * whose IPv4 table is the only list of ranges in the tree (sd_http_addr_is_public() uses it).
 */
#include "addr_vet.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

const char *sd_addr_reason(sd_addr_verdict v) {
    switch (v) {
    case SD_ADDR_OK:
        return "allowed";
    case SD_ADDR_URL_SCHEME:
        return "the URL's scheme is not http or https";
    case SD_ADDR_URL_LENGTH:
        return "the URL is too long";
    case SD_ADDR_URL_CHAR:
        return "the URL holds a control character, a space, a backslash or a non-ASCII byte";
    case SD_ADDR_URL_USERINFO:
        return "the URL holds credentials (user@host)";
    case SD_ADDR_URL_HOST:
        return "the URL's host is malformed";
    case SD_ADDR_URL_IPV6:
        return "the URL's host is not a plain IPv6 address";
    case SD_ADDR_URL_IPV4:
        return "the URL's host is a malformed IPv4 address";
    case SD_ADDR_URL_IPV4_FORM:
        return "the URL's host is an IPv4 address not written in dotted decimal";
    case SD_ADDR_URL_PORT:
        return "the URL's port is not 1 to 65535";
    case SD_ADDR_LOCALHOST:
        return "the host is localhost";
    case SD_ADDR_LOOPBACK:
        return "the host is a loopback address";
    case SD_ADDR_UNSPECIFIED:
        return "the host is the unspecified address";
    case SD_ADDR_THIS_NETWORK:
        return "the host is in 0.0.0.0/8 (this network)";
    case SD_ADDR_PRIVATE:
        return "the host is a private address";
    case SD_ADDR_SHARED:
        return "the host is a carrier-grade NAT address (100.64.0.0/10)";
    case SD_ADDR_LINK_LOCAL:
        return "the host is a link-local address";
    case SD_ADDR_METADATA:
        return "the host is a cloud metadata service address";
    case SD_ADDR_ULA:
        return "the host is a unique local IPv6 address (fc00::/7)";
    case SD_ADDR_MULTICAST:
        return "the host is a multicast address";
    case SD_ADDR_BROADCAST:
        return "the host is the broadcast address";
    case SD_ADDR_RESERVED:
        return "the host is a reserved address";
    case SD_ADDR_DOCUMENTATION:
        return "the host is a documentation address";
    case SD_ADDR_BENCHMARK:
        return "the host is a benchmarking address (198.18.0.0/15)";
    case SD_ADDR_FAMILY:
        return "the address is neither IPv4 nor IPv6";
    }
    return "refused";
}

void sd_addr_opts_default(sd_addr_opts *opts) {
    opts->max_url_len = 2048;
    opts->allow_private = 0;
}

/* ---- addresses ---- */

/* The class of the IPv4 address a (host order). The first matching row wins, so the more
 * specific rows (broadcast, metadata) come before the ranges that hold them. */
static sd_addr_verdict ipv4_classify(uint32_t a) {
    static const struct {
        uint32_t net;
        int bits;
        sd_addr_verdict v;
    } ranges[] = {
        {0x00000000, 32, SD_ADDR_UNSPECIFIED},   /* 0.0.0.0 */
        {0x00000000, 8, SD_ADDR_THIS_NETWORK},   /* 0.0.0.0/8 (RFC 1122) */
        {0x0a000000, 8, SD_ADDR_PRIVATE},        /* 10.0.0.0/8 (RFC 1918) */
        {0x64400000, 10, SD_ADDR_SHARED},        /* 100.64.0.0/10 (RFC 6598) */
        {0x7f000000, 8, SD_ADDR_LOOPBACK},       /* 127.0.0.0/8 */
        {0xa9fea9fe, 32, SD_ADDR_METADATA},      /* 169.254.169.254 */
        {0xa9fe0000, 16, SD_ADDR_LINK_LOCAL},    /* 169.254.0.0/16 (RFC 3927) */
        {0xac100000, 12, SD_ADDR_PRIVATE},       /* 172.16.0.0/12 */
        {0xc0000000, 24, SD_ADDR_RESERVED},      /* 192.0.0.0/24 IETF assignments (RFC 6890) */
        {0xc0000200, 24, SD_ADDR_DOCUMENTATION}, /* 192.0.2.0/24 (RFC 5737) */
        {0xc0586300, 24, SD_ADDR_RESERVED},      /* 192.88.99.0/24 6to4 relay (RFC 7526) */
        {0xc0a80000, 16, SD_ADDR_PRIVATE},       /* 192.168.0.0/16 */
        {0xc6120000, 15, SD_ADDR_BENCHMARK},     /* 198.18.0.0/15 (RFC 2544) */
        {0xc6336400, 24, SD_ADDR_DOCUMENTATION}, /* 198.51.100.0/24 */
        {0xcb007100, 24, SD_ADDR_DOCUMENTATION}, /* 203.0.113.0/24 */
        {0xe0000000, 4, SD_ADDR_MULTICAST},      /* 224.0.0.0/4 */
        {0xffffffff, 32, SD_ADDR_BROADCAST},     /* 255.255.255.255 */
        {0xf0000000, 4, SD_ADDR_RESERVED},       /* 240.0.0.0/4 (RFC 1112) */
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        uint32_t mask = 0xffffffffu << (32 - ranges[i].bits);
        if ((a & mask) == ranges[i].net)
            return ranges[i].v;
    }
    return SD_ADDR_OK;
}

static uint32_t ipv4_at(const uint8_t *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static sd_addr_verdict ipv6_classify(const uint8_t b[16]) {
    static const uint8_t zero[16] = {0};
    static const uint8_t loopback[16] = {[15] = 1};
    static const uint8_t mapped[12] = {[10] = 0xff, [11] = 0xff};
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b};
    static const uint8_t ec2_metadata[16] = {0xfd, 0, 0x0e, 0xc2, [14] = 0x02, [15] = 0x54};
    if (memcmp(b, zero, 16) == 0)
        return SD_ADDR_UNSPECIFIED;
    if (memcmp(b, loopback, 16) == 0)
        return SD_ADDR_LOOPBACK;
    /* IPv4 carried in IPv6: ::ffff:a.b.c.d (mapped) and 64:ff9b::a.b.c.d (NAT64, RFC 6052). */
    if (memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0)
        return ipv4_classify(ipv4_at(b + 12));
    /* 6to4 (2002::/16, RFC 3056) embeds an IPv4 address in bits 16..47. */
    if (b[0] == 0x20 && b[1] == 0x02)
        return ipv4_classify(ipv4_at(b + 2));
    if (memcmp(b, ec2_metadata, 16) == 0)
        return SD_ADDR_METADATA;
    if (b[0] == 0xff)
        return SD_ADDR_MULTICAST;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
        return SD_ADDR_LINK_LOCAL;
    if ((b[0] & 0xfe) == 0xfc)
        return SD_ADDR_ULA;
    /* Everything else outside global unicast 2000::/3 is reserved: the IPv4-compatible
     * ::a.b.c.d (deprecated by RFC 4291), fec0::/10 site-local, the rest unassigned. */
    if ((b[0] & 0xe0) != 0x20)
        return SD_ADDR_RESERVED;
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
        return SD_ADDR_DOCUMENTATION;
    /* 2001::/23, IETF protocol assignments (Teredo 2001::/32 among them, RFC 6890). */
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] < 0x02)
        return SD_ADDR_RESERVED;
    return SD_ADDR_OK;
}

sd_addr_verdict sd_addr_classify(const struct sockaddr *addr) {
    if (addr->sa_family == AF_INET)
        return ipv4_classify(ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr));
    if (addr->sa_family == AF_INET6)
        return ipv6_classify(((const struct sockaddr_in6 *)addr)->sin6_addr.s6_addr);
    return SD_ADDR_FAMILY;
}

int sd_addr_vet_connect(const struct sockaddr *addr, socklen_t len, void *udata) {
    const sd_addr_opts *opts = udata;
    if (opts && opts->allow_private)
        return 0;
    if ((addr->sa_family == AF_INET && len < (socklen_t)sizeof(struct sockaddr_in)) ||
        (addr->sa_family == AF_INET6 && len < (socklen_t)sizeof(struct sockaddr_in6)))
        return -1;
    return sd_addr_classify(addr) == SD_ADDR_OK ? 0 : -1;
}

/* ---- URLs ---- */

/* Reads one part of a numeric IPv4 host (rule 6): "0x" hex (possibly no digits: 0, as WHATWG
 * reads it), a leading 0 octal, else decimal. Returns 0 and sets *v and *plain (decimal without
 * leading zeros), or -1. */
static int ipv4_part(const char *s, size_t n, uint64_t *v, int *plain) {
    unsigned base = 10;
    *plain = 1;
    if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16, s += 2, n -= 2, *plain = 0;
    } else if (n >= 2 && s[0] == '0') {
        base = 8, s++, n--, *plain = 0;
    } else if (n == 0) {
        return -1;
    }
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d;
        char c = s[i];
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            return -1;
        if (d >= base)
            return -1;
        x = x * base + d;
        if (x > 0xffffffffu)
            return -1;
    }
    *v = x;
    return 0;
}

/* Whether a (lower-case) label is a number in rule 6's sense. */
static int label_is_numeric(const char *s, size_t n) {
    if (n >= 2 && s[0] == '0' && s[1] == 'x') {
        for (size_t i = 2; i < n; i++)
            if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                return 0;
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return n > 0;
}

/* Parses a numeric host (rule 6) into *a (host order). Returns 0, or -1 when malformed;
 * *canonical says whether it was written as four plain decimal parts. */
static int ipv4_parse(const char *host, uint32_t *a, int *canonical) {
    uint64_t part[4];
    int nparts = 0;
    *canonical = 1;
    const char *p = host;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        int plain;
        if (nparts == 4 || ipv4_part(p, n, &part[nparts], &plain) != 0)
            return -1;
        *canonical &= plain;
        nparts++;
        if (!dot)
            break;
        p = dot + 1;
    }
    if (nparts != 4)
        *canonical = 0;
    uint32_t v = 0;
    for (int i = 0; i < nparts - 1; i++) {
        if (part[i] > 255)
            return -1;
        v |= (uint32_t)part[i] << (24 - 8 * i);
    }
    uint64_t room = 1ull << (8 * (5 - nparts)); /* the bytes the last part fills */
    if (part[nparts - 1] >= room)
        return -1;
    *a = v | (uint32_t)part[nparts - 1];
    return 0;
}

static int is_local_name(const char *host) {
    static const char *const names[] = {"localhost", "localhost.localdomain", "ip6-localhost",
                                        "ip6-loopback"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(host, names[i]) == 0)
            return 1;
    size_t n = strlen(host);
    return n > 10 && strcmp(host + n - 10, ".localhost") == 0;
}

/* Checks a name or numeric host of n bytes (rules 4, 6, 7) and copies it, lower case, without
 * its trailing dot, into out->host. */
static sd_addr_verdict host_check(const char *s, size_t n, const sd_addr_opts *opts,
                                  sd_addr_url *out) {
    if (n > 0 && s[n - 1] == '.')
        n--; /* one trailing dot: the same name to DNS */
    if (n == 0 || n > 253)
        return SD_ADDR_URL_HOST;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
        if (c == '.') {
            if (label == 0)
                return SD_ADDR_URL_HOST; /* an empty label: a leading dot, "..", or "a.." */
            label = 0;
        } else if (!ok || ++label > 63) {
            return SD_ADDR_URL_HOST;
        }
        out->host[i] = c;
    }
    if (label == 0)
        return SD_ADDR_URL_HOST;
    out->host[n] = '\0';

    const char *last = strrchr(out->host, '.');
    last = last ? last + 1 : out->host;
    if (!label_is_numeric(last, strlen(last))) {
        out->host_is_ip = 0;
        return !opts->allow_private && is_local_name(out->host) ? SD_ADDR_LOCALHOST : SD_ADDR_OK;
    }
    uint32_t a;
    int canonical;
    if (ipv4_parse(out->host, &a, &canonical) != 0)
        return SD_ADDR_URL_IPV4;
    out->host_is_ip = 4;
    if (!opts->allow_private) {
        sd_addr_verdict v = ipv4_classify(a);
        if (v != SD_ADDR_OK)
            return v;
    }
    return canonical ? SD_ADDR_OK : SD_ADDR_URL_IPV4_FORM;
}

/* Checks the inside of an IPv6 literal's brackets (rule 4). */
static sd_addr_verdict ipv6_check(const char *s, size_t n, const sd_addr_opts *opts,
                                  sd_addr_url *out) {
    char text[INET6_ADDRSTRLEN + 1];
    struct in6_addr a;
    if (n == 0 || n >= sizeof text)
        return SD_ADDR_URL_IPV6;
    memcpy(text, s, n);
    text[n] = '\0';
    /* inet_pton takes only hex digits, ':' and one dotted IPv4 tail: a zone id ("%25eth0") or
     * an IPvFuture ("v1.x") fails here. */
    if (inet_pton(AF_INET6, text, &a) != 1)
        return SD_ADDR_URL_IPV6;
    for (size_t i = 0; i <= n; i++)
        out->host[i] = (text[i] >= 'A' && text[i] <= 'F') ? (char)(text[i] - 'A' + 'a') : text[i];
    out->host_is_ip = 6;
    return opts->allow_private ? SD_ADDR_OK : ipv6_classify(a.s6_addr);
}

static sd_addr_verdict port_check(const char *s, size_t n, int *port) {
    if (n == 0 || n > 5)
        return SD_ADDR_URL_PORT;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return SD_ADDR_URL_PORT;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return SD_ADDR_URL_PORT;
    *port = v;
    return SD_ADDR_OK;
}

sd_addr_verdict sd_addr_url_check(const char *url, const sd_addr_opts *opts, sd_addr_url *out) {
    sd_addr_opts defaults;
    sd_addr_url scratch;
    if (opts == NULL) {
        sd_addr_opts_default(&defaults);
        opts = &defaults;
    }
    if (out == NULL)
        out = &scratch;
    memset(out, 0, sizeof *out);

    size_t len = strnlen(url, opts->max_url_len + 1);
    if (len > opts->max_url_len)
        return SD_ADDR_URL_LENGTH;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c >= 0x7f || c == '\\')
            return SD_ADDR_URL_CHAR;
    }
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0) {
        p = url + 7;
        out->port = 80;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        p = url + 8;
        out->https = 1;
        out->port = 443;
    } else {
        return SD_ADDR_URL_SCHEME;
    }

    size_t alen = strcspn(p, "/?#");
    if (memchr(p, '@', alen))
        return SD_ADDR_URL_USERINFO;
    if (alen > 0 && memchr(p, '%', alen))
        return SD_ADDR_URL_HOST; /* rule 4: percent-encoding in the host is not decoded */

    const char *host = p, *port = NULL;
    size_t hlen;
    sd_addr_verdict v;
    if (alen > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', alen);
        if (!close)
            return SD_ADDR_URL_IPV6;
        host = p + 1;
        hlen = (size_t)(close - host);
        const char *after = close + 1;
        if (after < p + alen) {
            if (*after != ':')
                return SD_ADDR_URL_IPV6;
            port = after + 1;
        }
        v = ipv6_check(host, hlen, opts, out);
    } else {
        const char *colon = memchr(p, ':', alen);
        hlen = colon ? (size_t)(colon - p) : alen;
        if (colon)
            port = colon + 1;
        v = host_check(host, hlen, opts, out);
    }
    if (v != SD_ADDR_OK)
        return v;
    if (port)
        return port_check(port, (size_t)(p + alen - port), &out->port);
    return SD_ADDR_OK;
}
