/*
 * hello_server.c - the `hello-server` command: GET /hello answers 200 "ok".
 *
 * It is the smallest server built on http.h, and exists for two reasons: it is what the
 * benchmark puts side by side with nginx `return 200 "ok"` (so the figure measures the HTTP
 * layer and nothing else), and it is the process the HTTP tests start, with short limits and
 * timeouts given on the command line so that every limit can be hit quickly.
 */
#include "http.h"
#include "sd.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: hello-server [options]\n"
    "\n"
    "Serves GET /hello -> 200 \"ok\" (text/plain), plus GET /healthz and GET /metrics.\n"
    "Prints the bound address (HOST:PORT) as one line on stdout once listening.\n"
    "SIGINT or SIGTERM stop it gracefully.\n"
    "\n"
    "options:\n"
    "  --listen HOST:PORT        address to listen on (default 127.0.0.1:8080; port 0 picks\n"
    "                            a free port)\n"
    "  --header-timeout-ms N     the whole request header must arrive within N ms\n"
    "                            (default 10000)\n"
    "  --idle-timeout-ms N       close keep-alive connections idle for N ms (default 60000)\n"
    "  --max-header-bytes N      larger request headers get 431, a longer request target\n"
    "                            414 (default 16384)\n"
    "  --max-body-bytes N        larger request bodies get 413 (default 1048576)\n"
    "  --max-connections N       connections beyond N are closed at once (default 10000)\n"
    "  --max-pipelined N         requests queued per connection (default 64)\n"
    "  --grace-ms N              on a stop signal, let requests in flight finish for up to\n"
    "                            N ms (default 5000)\n"
    "  --help                    show this help\n"
    "\n"
    "exit status: 0 stopped by a signal, 1 runtime failure, 2 usage error\n";

static void hello_cb(sd_http_req *req, void *udata) {
    sd_http_req_respond(req, 200, "text/plain", "ok", 2);
}

/* Parses a positive int option; exits with status 2 on a bad value. */
static long long int_option(const char *name, const char *value, long long max) {
    long long v;
    if (sd_parse_ll(value, 1, max, &v) != 0) {
        fprintf(stderr, "hello-server: --%s needs a whole number from 1 to %lld, not '%s'\n", name,
                max, value);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    enum {
        OPT_LISTEN = 1,
        OPT_HEADER_TIMEOUT,
        OPT_IDLE_TIMEOUT,
        OPT_MAX_HEADER,
        OPT_MAX_BODY,
        OPT_MAX_CONNS,
        OPT_MAX_PIPELINED,
        OPT_GRACE,
        OPT_HELP,
    };
    static const struct option options[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"header-timeout-ms", required_argument, NULL, OPT_HEADER_TIMEOUT},
        {"idle-timeout-ms", required_argument, NULL, OPT_IDLE_TIMEOUT},
        {"max-header-bytes", required_argument, NULL, OPT_MAX_HEADER},
        {"max-body-bytes", required_argument, NULL, OPT_MAX_BODY},
        {"max-connections", required_argument, NULL, OPT_MAX_CONNS},
        {"max-pipelined", required_argument, NULL, OPT_MAX_PIPELINED},
        {"grace-ms", required_argument, NULL, OPT_GRACE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *listen = "127.0.0.1:8080";
    int grace_ms = 5000;
    sd_http_opts opts;
    sd_http_opts_default(&opts);

    int c;
    while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
        const char *name = c > 0 && c <= OPT_HELP ? options[c - 1].name : "";
        switch (c) {
        case OPT_LISTEN:
            listen = optarg;
            break;
        case OPT_HEADER_TIMEOUT:
            opts.header_timeout_ms = (int)int_option(name, optarg, 86400000);
            break;
        case OPT_IDLE_TIMEOUT:
            opts.idle_timeout_ms = (int)int_option(name, optarg, 86400000);
            break;
        case OPT_MAX_HEADER:
            opts.max_header_bytes = (size_t)int_option(name, optarg, 1 << 30);
            break;
        case OPT_MAX_BODY:
            opts.max_body_bytes = (size_t)int_option(name, optarg, 1 << 30);
            break;
        case OPT_MAX_CONNS:
            opts.max_connections = (int)int_option(name, optarg, 1000000);
            break;
        case OPT_MAX_PIPELINED:
            opts.max_pipelined = (int)int_option(name, optarg, 100000);
            break;
        case OPT_GRACE:
            grace_ms = (int)int_option(name, optarg, 86400000);
            break;
        case OPT_HELP:
            fputs(usage, stdout);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hello-server: unexpected argument '%s'\n%s", argv[optind], usage);
        return 2;
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_http_server *srv = sd_http_server_new(&loop, &opts);
    sd_http_server_route(srv, "GET", "/hello", hello_cb, NULL);
    int r = sd_http_server_listen(srv, listen);
    if (r == -EINVAL) {
        fprintf(stderr, "hello-server: --listen wants HOST:PORT, not '%s'\n", listen);
        sd_http_server_free(srv);
        return 2;
    }
    if (r < 0) {
        sd_log(SD_LOG_ERROR, "hello.listen_failed", "addr=%s error=\"%s\"", listen, sd_strerror(r));
        sd_http_server_free(srv);
        return 1;
    }
    r = sd_http_server_stop_on_signals(srv, grace_ms);
    if (r < 0) {
        sd_log(SD_LOG_ERROR, "hello.signals_failed", "error=\"%s\"", sd_strerror(r));
        return 1;
    }

    /* The address line is how a parent that asked for port 0 learns the port. */
    const char *colon = strrchr(listen, ':');
    printf("%.*s:%d\n", (int)(colon - listen), listen, sd_http_server_port(srv));
    fflush(stdout);

    uv_run(&loop, UV_RUN_DEFAULT);
    sd_http_server_free(srv);
    uv_loop_close(&loop);
    return 0;
}
