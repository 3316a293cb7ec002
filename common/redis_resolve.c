/*
 * redis_resolve.c - which Redis a command, test or benchmark uses: --redis, else REDIS_URL, else
 * a private redis-server (see redis.h).
 */
#include <stdio.h>
#include <stdlib.h>

#include "redis.h"
#include "redis_server.h"
#include "sd.h"

/* ---- Choosing a Redis ----------------------------------------------------------------------- */

int sd_redis_resolve(const char *flag_url, sd_redis_url *url, sd_redis_server **server_out) {
    const char *text = flag_url && *flag_url ? flag_url : getenv("REDIS_URL");
    const char *source = flag_url && *flag_url ? "--redis" : "REDIS_URL";
    *server_out = NULL;
    if (text && *text) {
        char err[160];
        if (sd_redis_url_parse(text, url, err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s\n", source, err);
            return SD_EPARSE;
        }
        char shown[256];
        fprintf(stderr, "redis: using %s (from %s)\n",
                sd_redis_url_format(url, shown, sizeof shown), source);
        return 0;
    }
    int rc = sd_redis_server_start(NULL, server_out);
    if (rc != 0)
        return rc;
    char err[160];
    rc = sd_redis_url_parse(sd_redis_server_url(*server_out), url, err, sizeof err);
    if (rc != 0) {
        sd_redis_server_stop(*server_out);
        *server_out = NULL;
        return rc;
    }
    fprintf(stderr, "redis: using %s (a private redis-server, pid %d, stopped at exit)\n",
            sd_redis_server_url(*server_out), (int)sd_redis_server_pid(*server_out));
    return 0;
}
