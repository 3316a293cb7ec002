/*
 * hello_server.c - the `hello-server` command: GET /hello answers 200 "ok".
 *
 * It is the smallest server built on http.h, and exists for two reasons: it is the harness's
 * calibration target, put side by side with nginx `return 200 "ok"` (so the figure measures the
 * HTTP layer and nothing else), and it is the process the HTTP tests start, with short limits
 * and timeouts given on the command line so that every limit can be hit quickly.
 */
#include "cli.h"
#include "http.h"
#include "sd.h"

#include <stdio.h>
#include <string.h>

static void hello_cb(sd_http_req *req, void *udata) {
    sd_http_req_respond(req, 200, "text/plain", "ok", 2);
}

int main(int argc, char **argv) {
    const char *listen = "127.0.0.1:8080";
    long long header_timeout = 10000, idle_timeout = 60000, max_header = 16384, max_body = 1048576,
              max_conns = 10000, max_pipelined = 64, grace = 5000;
    const sd_cli_opt opts[] = {
        {"--listen", "HOST:PORT",
         "address to listen on (default 127.0.0.1:8080; port 0 picks a\nfree port)",
         .parse = sd_cli_listen_parse, .udata = &listen},
        {"--header-timeout-ms", "N",
         "the whole request header must arrive within N ms\n(default 10000)",
         .integer = &header_timeout, .min = 1, .max = 86400000},
        {"--idle-timeout-ms", "N", "close keep-alive connections idle for N ms (default 60000)",
         .integer = &idle_timeout, .min = 1, .max = 86400000},
        {"--max-header-bytes", "N",
         "larger request headers get 431, a longer request target\n414 (default 16384)",
         .integer = &max_header, .min = 1, .max = 1 << 30},
        {"--max-body-bytes", "N", "larger request bodies get 413 (default 1048576)",
         .integer = &max_body, .min = 1, .max = 1 << 30},
        {"--max-connections", "N", "connections beyond N are closed at once (default 10000)",
         .integer = &max_conns, .min = 1, .max = 1000000},
        {"--max-pipelined", "N", "requests queued per connection (default 64)",
         .integer = &max_pipelined, .min = 1, .max = 100000},
        {"--grace-ms", "N",
         "on a stop signal, let requests in flight finish for up to\nN ms (default 5000)",
         .integer = &grace, .min = 1, .max = 86400000},
        {0}};
    const sd_cli_cmd cmd = {
        .name = "hello-server",
        .synopsis = "[options]",
        .about =
            "Serves GET /hello -> 200 \"ok\" (text/plain), plus GET /healthz and GET /metrics.\n"
            "Prints \"listening on http://HOST:PORT\" as one line on stdout once listening.\n"
            "SIGINT or SIGTERM stop it gracefully.",
        .opts = opts,
        .footer = "Exit status: 0 stopped by a signal, 1 runtime failure, 2 usage error."};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);

    sd_http_opts hopts;
    sd_http_opts_default(&hopts);
    hopts.header_timeout_ms = (int)header_timeout;
    hopts.idle_timeout_ms = (int)idle_timeout;
    hopts.max_header_bytes = (size_t)max_header;
    hopts.max_body_bytes = (size_t)max_body;
    hopts.max_connections = (int)max_conns;
    hopts.max_pipelined = (int)max_pipelined;

    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_http_server *srv = sd_http_server_new(&loop, &hopts);
    sd_http_server_route(srv, "GET", "/hello", hello_cb, NULL);
    int r = sd_http_server_listen(srv, listen);
    if (r == 0)
        r = sd_http_server_stop_on_signals(srv, (int)grace, NULL, NULL);
    if (r == 0)
        r = sd_http_server_print_address(srv);
    if (r < 0) {
        fprintf(stderr, "hello-server: cannot listen on %s: %s\n", listen, sd_strerror(r));
        /* Whatever the server opened closes from the loop; only then is it freed. */
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
