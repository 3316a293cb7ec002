/*
 * cache_origin.c - the `cache-origin` command: the origin behind the cache benchmarks, for
 * `cache serve` and for nginx proxy_cache alike (bench/scenarios_cache.c,
 * bench/peers/nginx-cache.sh).
 *
 *   GET /_calls     the number of origin calls so far (not itself counted)
 *   GET anything    200 "PATH", Cache-Control: max-age=--max-age, after --delay-ms (a timer,
 *                   so requests in flight overlap: the 50 ms origin of the stampede scenarios)
 *
 * Counting here, in the origin, rather than in the cache makes the stampede figure the same
 * for both caches: it is what the origin saw.
 */
#include "cli.h"
#include "http.h"
#include "sd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct origin {
    uv_loop_t *loop;
    long long delay_ms;
    char cache_control[32];
    unsigned long long calls;
} origin;

/* One delayed answer: owns its timer; freed when the timer's handle is closed. */
typedef struct delayed {
    uv_timer_t timer;
    sd_http_req *req;
    origin *o;
} delayed;

static void answer(origin *o, sd_http_req *req) {
    const char *path = sd_http_req_path(req);
    sd_http_req_add_header(req, "Cache-Control", o->cache_control);
    sd_http_req_respond(req, 200, "text/plain", path, strlen(path));
}

static void on_closed(uv_handle_t *h) {
    free(h->data);
}

static void on_delay(uv_timer_t *t) {
    delayed *d = t->data;
    answer(d->o, d->req);
    uv_close((uv_handle_t *)&d->timer, on_closed);
}

static void on_get(sd_http_req *req, void *udata) {
    origin *o = udata;
    o->calls++;
    if (o->delay_ms <= 0) {
        answer(o, req);
        return;
    }
    delayed *d = sd_xcalloc(1, sizeof *d);
    d->req = req;
    d->o = o;
    uv_timer_init(o->loop, &d->timer);
    d->timer.data = d;
    uv_timer_start(&d->timer, on_delay, (uint64_t)o->delay_ms, 0);
}

static void on_calls(sd_http_req *req, void *udata) {
    origin *o = udata;
    char body[32];
    int n = snprintf(body, sizeof body, "%llu", o->calls);
    sd_http_req_respond(req, 200, "text/plain", body, (size_t)n);
}

int main(int argc, char **argv) {
    const char *listen = "127.0.0.1:0";
    long long delay = 0, max_age = 600;
    const sd_cli_opt opts[] = {
        {"--listen", "HOST:PORT", "address to listen on (default 127.0.0.1:0, a free port)",
         .parse = sd_cli_listen_parse, .udata = &listen},
        {"--delay-ms", "N", "answer each GET after N ms (default 0)", .integer = &delay, .min = 0,
         .max = 600000},
        {"--max-age", "S", "Cache-Control: max-age of the answers (default 600)",
         .integer = &max_age, .min = 0, .max = 86400000},
        {0}};
    const sd_cli_cmd cmd = {
        .name = "cache-origin",
        .synopsis = "[options]",
        .about = "The cache benchmarks' origin: GET PATH -> 200 \"PATH\" after --delay-ms;\n"
                 "GET /_calls -> the number of GETs answered or pending (not counting itself).\n"
                 "Prints \"listening on http://HOST:PORT\" on stdout once listening.",
        .opts = opts,
        .footer = "Exit status: 0 stopped by a signal, 1 runtime failure, 2 usage error."};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);

    uv_loop_t loop;
    uv_loop_init(&loop);
    static origin o;
    o.loop = &loop;
    o.delay_ms = delay;
    snprintf(o.cache_control, sizeof o.cache_control, "max-age=%lld", max_age);
    sd_http_opts hopts;
    sd_http_opts_default(&hopts);
    hopts.max_connections = 20000;
    sd_http_server *srv = sd_http_server_new(&loop, &hopts);
    sd_http_server_route(srv, "GET", "/_calls", on_calls, &o);
    sd_http_server_route(srv, "GET", "*", on_get, &o);
    int r = sd_http_server_listen(srv, listen);
    if (r == 0)
        r = sd_http_server_stop_on_signals(srv, 1000, NULL, NULL);
    if (r == 0)
        r = sd_http_server_print_address(srv);
    if (r < 0) {
        fprintf(stderr, "cache-origin: cannot listen on %s: %s\n", listen, sd_strerror(r));
        sd_http_server_stop(srv, 0, NULL, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        sd_http_server_free(srv);
        uv_loop_close(&loop);
        return SD_EXIT_FAILURE;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    sd_http_server_free(srv);
    uv_loop_close(&loop);
    return SD_EXIT_OK;
}
