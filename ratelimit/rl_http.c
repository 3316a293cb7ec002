/* rl_http.c - the RateLimit fields of a rate-limited HTTP answer (rl_http.h). */
#include "rl_http.h"

#include <stdio.h>

long long rl_seconds_up(long long ms) {
    return ms <= 0 ? 0 : (ms + 999) / 1000;
}

void rl_http_add_fields(sd_http_req *req, const rl_config *cfg, const rl_decision *d) {
    char policy[RL_MAX_POLICIES * 80] = "", limit[RL_MAX_POLICIES * 80] = "";
    size_t pn = 0, ln = 0;
    int known = 1;
    for (size_t i = 0; i < cfg->npolicies; i++) {
        const char *sep = i ? ", " : "";
        pn += (size_t)snprintf(policy + pn, sizeof(policy) - pn, "%s\"%s\";q=%lld;w=%lld", sep,
                               cfg->policies[i].name, cfg->policies[i].quota,
                               cfg->policies[i].window_s);
        if (d->policies[i].remaining < 0) {
            known = 0;
            continue;
        }
        ln += (size_t)snprintf(limit + ln, sizeof(limit) - ln, "%s\"%s\";r=%lld;t=%lld", sep,
                               cfg->policies[i].name, d->policies[i].remaining,
                               rl_seconds_up(d->policies[i].reset_ms));
    }
    sd_http_req_add_header(req, "RateLimit-Policy", policy);
    if (known) {
        sd_http_req_add_header(req, "RateLimit", limit);
    }
}
