/*
 * addr_vet.h - the SSRF guard: which URLs and which addresses a component may send a request to
 * when a customer chose them (a webhook endpoint, a short link's target).
 *
 * Two checks, at two moments:
 *
 *   when the URL is stored    sd_addr_url_check()    the URL's syntax, and a host that is a
 *                                                    literal address or a local name
 *   when a socket is opened   sd_addr_vet_connect()  every address the host resolved to, as an
 *                                                    sd_http_client vet hook (http_client.h)
 *
 * The first refuses early, with a reason a user can read ("the host is a loopback address"),
 * what is refused whatever DNS says. It cannot see what a name resolves to, and must not try:
 * the name may resolve to a public address now and to 127.0.0.1 at delivery (DNS rebinding).
 * The second sees the resolved address at the moment of connecting, and the client connects
 * the socket to exactly that address (http_client.h, guarantee 5), so nothing can rebind.
 *
 * The URL rules (decisions, so that every parser that meets the URL later reads the same host):
 *  1. http:// or https:// only (any case), at most max_url_len bytes (default 2,048).
 *  2. No byte below 0x21 (control characters, space), no DEL, no byte of 0x80 and above (a
 *     URL is ASCII: percent-encode the rest, write names in punycode), no backslash anywhere
 *     (browsers read `\` as `/`, RFC 3986 parsers do not: the two would see different hosts).
 *  3. No userinfo (`user:pass@host`): refused, not stripped; it hides the real host from a
 *     reader and a parser that splits on the wrong '@' sees another one.
 *  4. The host: an IPv6 literal in brackets (no zone id, no IPvFuture), or a name of letters,
 *     digits, '-', '_' and '.' in labels of 1..63 bytes, 253 bytes at most. A percent sign in
 *     the host is refused, not decoded (decoders disagree on `%31%32%37.0.0.1`). One trailing
 *     dot is accepted and ignored for the checks (`localhost.` is `localhost` to DNS).
 *  5. A port, when given, is 1 to 65535 in at most 5 digits; an empty port (`host:`) is refused.
 *  6. A host whose last label is a number (decimal digits, or 0x and hex digits) is an IPv4
 *     address in the WHATWG URL standard's and inet_aton()'s reading: 1 to 4 parts, each
 *     decimal, octal (leading 0) or hex (0x), the last filling the remaining bytes. So
 *     2130706433, 0x7f000001, 0x7f.1, 0177.0.0.1 and 127.1 are all 127.0.0.1. Such a host is
 *     classified by the address it means and, when that is public, still refused unless it is
 *     spelled in plain dotted decimal: readers disagree on what 0127.0.0.1 means (octal 87 or
 *     decimal 127), so a non-canonical spelling is never allowed. A host that looks numeric but
 *     does not parse (1.2.3.4.5, 256.0.0.1, 08.0.0.1) is malformed.
 *  7. The names localhost, *.localhost (RFC 6761), localhost.localdomain, ip6-localhost and
 *     ip6-loopback are refused by name.
 *
 * The address rules (sd_addr_classify): public unicast only. Refused: loopback, unspecified,
 * "this network" 0/8, private (10/8, 172.16/12, 192.168/16), shared CGNAT 100.64/10,
 * link-local 169.254/16 and fe80::/10 (with the cloud metadata addresses 169.254.169.254 and
 * fd00:ec2::254 named as such), ULA fc00::/7, multicast, broadcast, reserved 240/4, the IETF
 * protocol block 192.0.0/24 and 2001::/23, documentation (192.0.2/24, 198.51.100/24,
 * 203.0.113/24, 2001:db8::/32), benchmarking 198.18/15, the 6to4 relay anycast 192.88.99/24,
 * every IPv6 address outside global unicast 2000::/3 (so the deprecated IPv4-compatible
 * ::a.b.c.d), and IPv4 carried in IPv6 (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4
 * 2002::/16) whose IPv4 address is refused. Documentation and benchmarking ranges are refused
 * because nothing legitimate listens there and some networks route them internally.
 *
 * allow_private turns both checks' address and name rules off (for local use and tests); the
 * syntax rules (1 to 6) stay.
 */
#ifndef SD_ADDR_VET_H
#define SD_ADDR_VET_H

#include <stddef.h>
#include <sys/socket.h>

/* A verdict: SD_ADDR_OK, or why the URL or address is refused (sd_addr_reason() says it in
 * words). A refusal is a result, not an error. */
typedef enum sd_addr_verdict {
    SD_ADDR_OK = 0,
    /* The URL's syntax (rules 1 to 6). */
    SD_ADDR_URL_SCHEME,    /* not http:// or https:// */
    SD_ADDR_URL_LENGTH,    /* longer than max_url_len */
    SD_ADDR_URL_CHAR,      /* a control character, space, non-ASCII byte or backslash */
    SD_ADDR_URL_USERINFO,  /* user:password@ before the host */
    SD_ADDR_URL_HOST,      /* empty, a character not allowed, percent-encoded, a bad label */
    SD_ADDR_URL_IPV6,      /* a bracketed literal that is not a plain IPv6 address */
    SD_ADDR_URL_IPV4,      /* a numeric host that is no IPv4 address */
    SD_ADDR_URL_IPV4_FORM, /* an IPv4 address not in dotted decimal (0x7f.1, 2130706433) */
    SD_ADDR_URL_PORT,      /* not 1..65535 */
    SD_ADDR_LOCALHOST,     /* localhost or a name under .localhost (rule 7) */
    /* The address's class. */
    SD_ADDR_LOOPBACK,
    SD_ADDR_UNSPECIFIED,  /* 0.0.0.0, :: */
    SD_ADDR_THIS_NETWORK, /* 0.0.0.0/8 other than 0.0.0.0 */
    SD_ADDR_PRIVATE,      /* RFC 1918 */
    SD_ADDR_SHARED,       /* 100.64.0.0/10, carrier-grade NAT (RFC 6598) */
    SD_ADDR_LINK_LOCAL,
    SD_ADDR_METADATA, /* 169.254.169.254, fd00:ec2::254: a cloud's instance metadata service */
    SD_ADDR_ULA,      /* fc00::/7 (RFC 4193) */
    SD_ADDR_MULTICAST,
    SD_ADDR_BROADCAST,
    SD_ADDR_RESERVED,      /* 240.0.0.0/4, IETF blocks, IPv6 outside 2000::/3 */
    SD_ADDR_DOCUMENTATION, /* RFC 5737, RFC 3849 */
    SD_ADDR_BENCHMARK,     /* 198.18.0.0/15 (RFC 2544) */
    SD_ADDR_FAMILY,        /* neither IPv4 nor IPv6 */
} sd_addr_verdict;

/* A static description of a verdict, for a problem+json detail or a log line: it never holds
 * the URL itself. */
const char *sd_addr_reason(sd_addr_verdict v);

typedef struct sd_addr_opts {
    size_t max_url_len; /* default 2048 */
    int allow_private;  /* 1: address and name rules off (syntax still checked). Default 0 */
} sd_addr_opts;

void sd_addr_opts_default(sd_addr_opts *opts);

/* What sd_addr_url_check() read from an accepted URL. */
typedef struct sd_addr_url {
    int https;      /* 1 for https:// */
    char host[256]; /* lower case, without brackets or the trailing dot; an IPv4 host as written
                       (always dotted decimal when accepted without allow_private) */
    int host_is_ip; /* 4 or 6 for a literal address, 0 for a name */
    int port;       /* as given, or 80 / 443 */
} sd_addr_url;

/*
 * Checks url against the rules above with opts (NULL: defaults). Returns SD_ADDR_OK and fills
 * *out (when not NULL), or the first rule it breaks (*out then undefined). A name that passes
 * may still resolve to a refused address: give sd_addr_vet_connect to the HTTP client too.
 */
sd_addr_verdict sd_addr_url_check(const char *url, const sd_addr_opts *opts, sd_addr_url *out);

/* The class of an address (AF_INET or AF_INET6): SD_ADDR_OK when it is public unicast. IPv4
 * inside IPv6 gets its IPv4 address's class. */
sd_addr_verdict sd_addr_classify(const struct sockaddr *addr);

/*
 * An sd_http_vet_fn (http_client.h): returns 0 when the client may connect to addr, -1 when
 * not. udata is a const sd_addr_opts * (NULL: defaults), borrowed for the client's life. With
 * allow_private every address is allowed.
 */
int sd_addr_vet_connect(const struct sockaddr *addr, socklen_t len, void *udata);

#endif
