/*
 * jq_internal.h - what the job queue's synchronous client (jobqueue.c), its asynchronous
 * client (jq_async.c) and the worker runtime (worker.c) share: the scripts, argument lists and
 * reply parsing. Not part of the public API.
 */
#ifndef JQ_INTERNAL_H
#define JQ_INTERNAL_H

#include "jobqueue.h"

/* The scripts, each jq-common.lua followed by its own file. */
enum {
    JQ_S_ENQUEUE,
    JQ_S_RESERVE,
    JQ_S_ACK,
    JQ_S_ACK_EFFECT,
    JQ_S_FAIL,
    JQ_S_EXTEND,
    JQ_S_RELEASE,
    JQ_S_PROGRESS,
    JQ_S_CANCEL,
    JQ_S_REAP,
    JQ_S_STATS,
    JQ_S_DLQ,
    JQ_S_DROP,
    JQ_S_GET,
    JQ_S_COUNT
};

sd_script *jq__script(int which);

/* A script's argument list: KEYS[1] (the queue's base name), the four housekeeping arguments
 * of jq-common.lua, then the script's own. Numbers are formatted into strings it owns. */
typedef struct jq__args {
    const char **v;
    size_t *l;
    char **owned;
    int n, cap, nowned;
    char base[JQ_QUEUE_MAX + 64];
} jq__args;

/* Starts a list for queue; returns 0 or JQ_EINVAL (bad queue name). */
int jq__args_begin(jq__args *a, const jq_config *cfg, const char *queue);
void jq__args_push(jq__args *a, const void *p, size_t len);
void jq__args_str(jq__args *a, const char *s);
void jq__args_num(jq__args *a, long long v);
/* Pushes s, a string from malloc, and takes ownership of it (jq__args_free frees it). */
void jq__args_own(jq__args *a, char *s);
void jq__args_free(jq__args *a);

/* The arguments of each call (after jq__args_begin); each returns 0 or a JQ_E* code. */
int jq__enqueue_args(const jq_config *cfg, jq__args *a, const jq_new_job *jobs, size_t n);
int jq__reserve_args(jq__args *a, int n, int64_t visibility_ms);
int jq__ack_args(const jq_config *cfg, jq__args *a, const jq_ack_item *items, size_t n);
int jq__fail_args(const jq_config *cfg, jq__args *a, const jq_job *job, const char *error,
                  const jq_fail_opts *opts);
int jq__lease_args(jq__args *a, const jq_job *job);
/* An ack with effect's list (two keys: the queue's base, then the effect's key, a copy a owns). */
int jq__ack_effect_args(const jq_config *cfg, jq__args *a, const char *queue, const jq_job *job,
                        const void *result, size_t len, const jq_effect *fx);
int jq_key_cfg(const jq_config *cfg, const char *queue, const char *suffix, char *buf, size_t len);

/* The JQ_E* code of a script's status value. */
int jq__lua_code(long long v);
long long jq__elem_ll(const redisReply *e);
void jq__elem_text(const redisReply *e, char *buf, size_t len);
/* Checks an enqueue reply of n jobs (its code already 0) and fills out[0..n); returns 0 or
 * SD_EREDIS. */
int jq__enqueue_parse(const redisReply *reply, size_t n, jq_enqueued *out);
/* Checks a reserve reply and fills jobs (at most n); returns 0 or SD_EREDIS. */
int jq__reserve_parse(const redisReply *reply, int n, jq_job *jobs, size_t *got, int64_t *next_ms);
/* Checks an ack reply and fills codes[0..n) (0: acked); returns 0 or SD_EREDIS. */
int jq__ack_parse(const redisReply *reply, size_t n, int *codes);

/* Shared by the synchronous and the asynchronous inspect calls (jq_admin.c). jq__id_valid: a
 * job id is decimal digits, shorter than JQ_ID_MAX. jq__info_parse: jq-get.lua's reply (field-value
 * pairs) into out (which it owns then: jq_info_clear); 0, JQ_ENOTFOUND (no such job) or
 * SD_EREDIS. jq__stats_parse: a stats script's reply (its code already 0); 0 or SD_EREDIS.
 * jq__cancel_parse: the state a cancel found, when the reply names one. jq__drop_parse: a drop
 * script's reply (jq-drop.lua, its code already 0): the jobs it deleted, and *more = 1 while the
 * queue holds some; 0 or SD_EREDIS. */
int jq__id_valid(const char *id);
int jq__info_parse(const redisReply *reply, const char *id, jq_info *out);
int jq__stats_parse(const redisReply *reply, jq_stats *out);
void jq__cancel_parse(const redisReply *reply, jq_state *was);
int jq__drop_parse(const redisReply *reply, int64_t *removed, int *more);

/* Pushes one wake token to queue's wake list on the scripts connection (the reply is
 * dropped): ends a blocked wait, ours or another worker's. Returns 0 or a negative code. */
int jq__awake(jq_aclient *c, const char *queue);

/* The synchronous client (jobqueue.c, jq_admin.c). */
struct jq_client {
    sd_redis *redis;
    jq_config cfg;
};

/* Runs script `which` with the arguments of a (nkeys of them keys) and returns its reply, an
 * array of at least min elements, in *out; or an error code (the reply is freed). */
int jq__run(jq_client *c, int which, jq__args *a, int nkeys, size_t min, redisReply **out);
/* Runs a script whose reply is {code, ...}, frees a, and returns the code; the reply goes to
 * *out (or is freed when out is NULL). */
int jq__run_code(jq_client *c, int which, jq__args *a, int nkeys, redisReply **out);
/* A new NUL-terminated copy of a bulk string ("" for anything else); its length in *len. */
char *jq__elem_dup(const redisReply *e, size_t *len);

/* The connection options both clients use: cfg's defaults when *cfg is NULL (filled into def),
 * cfg validated, its timeout, every script loaded in the handshake (list holds them).
 * Returns 0 or JQ_EINVAL. */
int jq__connect_opts(const jq_config **cfg, jq_config *def, sd_redis_opts *opts,
                     sd_script *list[JQ_S_COUNT]);

#endif
