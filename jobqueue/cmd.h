/*
 * cmd.h - what the files of the `jobqueue` command (main.c, work.c, serve.c) share: the options
 * every subcommand takes, how a subcommand finds its Redis, and the JSON shapes of a job and of
 * the stats. Not part of the library.
 */
#ifndef JQ_CMD_H
#define JQ_CMD_H

#include <jansson.h>

#include "cli.h"
#include "jobqueue.h"

typedef struct common {
    const char *redis;
    const char *queue;
    int json;
    jq_config cfg;
    sd_redis_url url;
} common;

/* --queue's parser: a valid queue name (jq_queue_name_valid) into the const char * at udata. */
int jq_cmd_queue_parse(const char *value, void *udata, char *err, size_t len);

#define REDIS_OPT(c)                                                                               \
    {                                                                                              \
        "--redis", "URL",                                                                          \
            "Redis to use (else REDIS_URL, else the local durable Redis,\n"                        \
            "started on first use; `./run.sh redis-stop` stops it)",                               \
            .parse = sd_cli_redis_parse, .udata = &(c)->redis                                      \
    }
#define QUEUE_OPT(c, req)                                                                          \
    {                                                                                              \
        "--queue", "Q", "the queue (letters, digits, '-_.:')",                                     \
            .parse = jq_cmd_queue_parse, .udata = &(c)->queue, .required = (req)                   \
    }

/* Finds the Redis (--redis, REDIS_URL, else the local durable one; prints which) into c->url and
 * refuses one that may evict keys. Returns 0 or an exit status. */
int jq_cmd_redis_open(const char *name, common *c);

/* jq_cmd_redis_open, then a synchronous client in *out. Returns 0 or an exit status. */
int jq_cmd_client_open(const char *name, common *c, jq_client **out);

/* Redis time in ms as an RFC 3339 string, or null for 0 (never). */
json_t *jq_cmd_time_json(int64_t ms);
/* Sets name to the bytes as a JSON string when they are UTF-8, else name_base64. */
void jq_cmd_bytes_set(json_t *obj, const char *name, const char *p, size_t len);
/* The object of `stats --json` and GET .../stats. */
json_t *jq_cmd_stats_json(const jq_stats *s);
/* A job as GET .../jobs/{id} answers it. */
json_t *jq_cmd_info_json(const char *queue, const jq_info *i);
/* Prints j compactly on one line of stdout and frees it. */
void jq_cmd_json_print(json_t *j);

/* The subcommands of work.c and serve.c. */
int jq_cmd_work(int argc, char **argv);
int jq_cmd_serve(int argc, char **argv);

#endif
