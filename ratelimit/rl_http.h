/*
 * rl_http.h - the HTTP fields a rate-limited answer carries, written once for every server that
 * puts a limiter in front of a route (ratelimit serve, urlshortener's creation limit).
 *
 * RateLimit-Policy and RateLimit are Structured Field lists (RFC 8941), as in
 * draft-ietf-httpapi-ratelimit-headers-10 sections 3 and 4:
 *   RateLimit-Policy: "burst";q=100;w=60, "daily";q=1000;w=86400
 *   RateLimit: "burst";r=42;t=17, "daily";r=958;t=87
 * Policy names are restricted (rl_config_parse) to characters that need no escaping in an
 * sf-string.
 */
#ifndef RL_HTTP_H
#define RL_HTTP_H

#include "http.h"
#include "ratelimit.h"

/* Whole seconds, rounded up: the HTTP fields have no finer unit, and rounding down would send a
 * client back too early. 0 for ms <= 0. */
long long rl_seconds_up(long long ms);

/* Adds RateLimit-Policy, and RateLimit unless a fallback could not know the remaining quota of
 * some policy (its remaining < 0). Retry-After is the caller's (it depends on the answer). */
void rl_http_add_fields(sd_http_req *req, const rl_config *cfg, const rl_decision *d);

#endif
