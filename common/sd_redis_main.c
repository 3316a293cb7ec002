/*
 * sd_redis_main.c - `sd-redis start|status|stop`: the local durable Redis (local_redis.h) by
 * hand. Commands start it by themselves on first use; this program is how a user sees it and
 * stops it (`./run.sh redis-stop` runs `sd-redis stop`).
 *
 * Exit statuses: 0 done (stop: a server was stopped; status: it runs), 1 failure (stop: none
 * ran is not a failure, status: not running is 1), 2 usage.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "local_redis.h"
#include "sd.h"

static const char ABOUT[] =
    "The local durable Redis: one redis-server per user, on a unix socket in\n"
    "$XDG_STATE_HOME/sysdesign (default ~/.local/state/sysdesign), with AOF (appendfsync\n"
    "everysec unless SD_LOCAL_REDIS_APPENDFSYNC says always or no), used by commands given\n"
    "neither --redis nor REDIS_URL whose state must outlive them (jobqueue, webhook,\n"
    "urlshortener). They start it on first use and leave it running.";

static void print_info(const sd_local_redis_info *info, int json) {
    if (json) {
        json_t *j =
            json_pack("{s:b, s:i, s:s, s:s, s:s}", "running", info->pid > 0, "pid", (int)info->pid,
                      "url", info->url, "dir", info->dir, "appendfsync", info->appendfsync);
        json_dumpf(j, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(j);
    } else if (info->pid > 0) {
        printf("running: pid %d, %s, AOF appendfsync %s, data in %s\n", (int)info->pid, info->url,
               info->appendfsync, info->dir);
    } else {
        printf("not running (%s)\n", info->dir);
    }
}

static int run(int argc, char **argv) {
    const char *cmd = argv[0];
    int json = 0, purge = 0;
    const sd_cli_opt status_opts[] = {{"--json", NULL, "print one JSON object", .flag = &json},
                                      {0}};
    const sd_cli_opt stop_opts[] = {{"--purge", NULL,
                                     "also delete the data (the AOF), the log and the directory",
                                     .flag = &purge},
                                    {0}};
    char name[32];
    snprintf(name, sizeof name, "sd-redis %s", cmd);
    const sd_cli_cmd c = {.name = name,
                          .synopsis = "[options]",
                          .about = ABOUT,
                          .opts = strcmp(cmd, "stop") == 0 ? stop_opts : status_opts};
    int rc = sd_cli_parse(&c, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    sd_local_redis_info info;
    if (strcmp(cmd, "start") == 0) {
        rc = sd_local_redis_ensure(NULL, &info);
        if (rc != 0)
            return SD_EXIT_FAILURE;
        if (!json)
            printf("%s ", info.started ? "started," : "already");
        print_info(&info, json);
        return SD_EXIT_OK;
    }
    if (strcmp(cmd, "status") == 0) {
        rc = sd_local_redis_status(NULL, &info);
        if (rc == -ENAMETOOLONG)
            return SD_EXIT_FAILURE;
        print_info(&info, json);
        return rc == 0 ? SD_EXIT_OK : SD_EXIT_FAILURE;
    }
    rc = sd_local_redis_stop(NULL, purge, &info);
    if (rc == 0)
        printf("stopped: pid %d%s\n", (int)info.pid, purge ? ", data deleted" : "");
    else if (rc == -ESRCH)
        printf("not running (%s)%s\n", info.dir, purge ? ", data deleted" : "");
    return rc == 0 || rc == -ESRCH ? SD_EXIT_OK : SD_EXIT_FAILURE;
}

int main(int argc, char **argv) {
    static const sd_cli_sub subs[] = {
        {"start", "start it unless it runs, and say where it is", run},
        {"status", "say whether it runs (exit status 1 when not)", run},
        {"stop", "stop it (SHUTDOWN: the AOF is fsynced); --purge deletes its data", run},
        {0}};
    return sd_cli_dispatch("sd-redis", ABOUT, subs, argc, argv);
}
