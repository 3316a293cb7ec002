/*
 * jq_admin.c - the job queue's calls that are not on a job's hot path: cancel, inspect
 * (jq_job_get, jq_job_history), stats, one round of housekeeping, the dead letters (list,
 * redrive, purge), and dropping a whole queue. The lifecycle they act on is drawn at the top of
 * jobqueue.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jq_internal.h"
#include "sd.h"

/* ---- Cancel, inspect, stats, housekeeping, dead letters ------------------------------------ */

int jq__id_valid(const char *id) {
    size_t n = id ? strnlen(id, JQ_ID_MAX) : 0;
    if (n == 0 || n >= JQ_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (id[i] < '0' || id[i] > '9')
            return 0;
    return 1;
}

int jq_cancel(jq_client *c, const char *queue, const char *id, jq_state *was) {
    if (!jq__id_valid(id))
        return JQ_ENOTFOUND;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    jq__args_str(&a, id);
    redisReply *reply = NULL;
    int rc = jq__run_code(c, JQ_S_CANCEL, &a, 1, &reply);
    if (reply) {
        jq__cancel_parse(reply, was);
        freeReplyObject(reply);
    }
    return rc;
}

void jq__cancel_parse(const redisReply *reply, jq_state *was) {
    char name[16] = "";
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2)
        jq__elem_text(reply->element[1], name, sizeof name);
    jq_state st;
    if (was && jq_state_parse(name, &st) == 0)
        *was = st;
}

void jq_info_clear(jq_info *info) {
    if (!info)
        return;
    free(info->payload);
    free(info->result);
    free(info->progress);
    free(info->last_error);
    free(info->idempotency_key);
    memset(info, 0, sizeof *info);
}

static void info_init(jq_info *info, const char *id) {
    memset(info, 0, sizeof *info);
    snprintf(info->id, sizeof info->id, "%s", id);
    info->payload = sd_xstrdup("");
    info->result = sd_xstrdup("");
    info->progress = sd_xstrdup("");
    info->last_error = sd_xstrdup("");
    info->idempotency_key = sd_xstrdup("");
}

static void info_set(jq_info *info, char **field, const redisReply *v) {
    free(*field);
    *field = jq__elem_dup(v, field == &info->payload ? &info->payload_len : NULL);
}

int jq_job_get(jq_client *c, const char *queue, const char *id, jq_info *out) {
    if (!jq__id_valid(id))
        return JQ_ENOTFOUND;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    jq__args_str(&a, id);
    redisReply *reply = NULL;
    int rc = jq__run(c, JQ_S_GET, &a, 1, 0, &reply);
    jq__args_free(&a);
    if (rc != 0)
        return rc;
    rc = jq__info_parse(reply, id, out);
    freeReplyObject(reply);
    return rc;
}

int jq__info_parse(const redisReply *reply, const char *id, jq_info *out) {
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2 != 0)
        return SD_EREDIS;
    if (reply->elements == 0)
        return JQ_ENOTFOUND;
    jq_info *info = out;
    info_init(info, id);
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const char *k = reply->element[i]->str;
        const redisReply *v = reply->element[i + 1];
        if (!k)
            continue;
        if (strcmp(k, "state") == 0 && v->str)
            jq_state_parse(v->str, &info->state);
        else if (strcmp(k, "attempts") == 0)
            info->attempts = (int)jq__elem_ll(v);
        else if (strcmp(k, "max_attempts") == 0)
            info->max_attempts = (int)jq__elem_ll(v);
        else if (strcmp(k, "priority") == 0)
            info->priority = (int)jq__elem_ll(v);
        else if (strcmp(k, "cancel") == 0)
            info->cancel_requested = jq__elem_ll(v) == 1;
        else if (strcmp(k, "created_at") == 0)
            info->created_ms = jq__elem_ll(v);
        else if (strcmp(k, "updated_at") == 0)
            info->updated_ms = jq__elem_ll(v);
        else if (strcmp(k, "run_at") == 0)
            info->run_at_ms = jq__elem_ll(v);
        else if (strcmp(k, "lease_until") == 0)
            info->lease_until_ms = jq__elem_ll(v);
        else if (strcmp(k, "failed_at") == 0)
            info->failed_ms = jq__elem_ll(v);
        else if (strcmp(k, "finished_at") == 0)
            info->finished_ms = jq__elem_ll(v);
        else if (strcmp(k, "payload") == 0)
            info_set(info, &info->payload, v);
        else if (strcmp(k, "result") == 0)
            info_set(info, &info->result, v);
        else if (strcmp(k, "progress") == 0)
            info_set(info, &info->progress, v);
        else if (strcmp(k, "last_error") == 0)
            info_set(info, &info->last_error, v);
        else if (strcmp(k, "ikey") == 0)
            info_set(info, &info->idempotency_key, v);
    }
    return 0;
}

int jq_job_history(jq_client *c, const char *queue, const char *id, jq_attempt *out, size_t max,
                   size_t *got) {
    *got = 0;
    if (!jq__id_valid(id) || max == 0)
        return max == 0 ? 0 : JQ_ENOTFOUND;
    char key[JQ_QUEUE_MAX + 96];
    char suffix[JQ_ID_MAX + 8];
    snprintf(suffix, sizeof suffix, ":log:%s", id);
    if (jq_key(c, queue, suffix, key, sizeof key) < 0)
        return JQ_EINVAL;
    int err = 0;
    redisReply *reply =
        sd_redis_command(c->redis, &err, "LRANGE %s 0 %lld", key, (long long)max - 1);
    if (!reply)
        return err ? err : SD_EDISCONNECTED;
    if (reply->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(reply);
        return SD_EREDIS;
    }
    for (size_t i = 0; i < reply->elements && i < max; i++) {
        const redisReply *e = reply->element[i];
        jq_attempt *a = &out[*got];
        memset(a, 0, sizeof *a);
        long long at = 0;
        int attempt = 0, used = 0;
        if (e->type != REDIS_REPLY_STRING || sscanf(e->str, "%lld %d %n", &at, &attempt, &used) < 2)
            continue;
        a->at_ms = at;
        a->attempt = attempt;
        snprintf(a->error, sizeof a->error, "%s", e->str + used);
        (*got)++;
    }
    freeReplyObject(reply);
    return 0;
}

int jq_stats_get(jq_client *c, const char *queue, jq_stats *out) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    redisReply *reply = NULL;
    int rc = jq__run_code(c, JQ_S_STATS, &a, 1, &reply);
    if (rc == 0)
        rc = jq__stats_parse(reply, out);
    if (reply)
        freeReplyObject(reply);
    return rc;
}

int jq__stats_parse(const redisReply *reply, jq_stats *out) {
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 8)
        return SD_EREDIS;
    out->ready = jq__elem_ll(reply->element[1]);
    out->delayed = jq__elem_ll(reply->element[2]);
    out->reserved = jq__elem_ll(reply->element[3]);
    out->dead = jq__elem_ll(reply->element[4]);
    out->done = jq__elem_ll(reply->element[5]);
    out->cancelled = jq__elem_ll(reply->element[6]);
    out->oldest_ready_age_ms = jq__elem_ll(reply->element[7]);
    return 0;
}

int jq_reap(jq_client *c, const char *queue, jq_reap_result *out) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    redisReply *reply = NULL;
    int rc = jq__run_code(c, JQ_S_REAP, &a, 1, &reply);
    if (rc != 0 || reply->elements < 5) {
        if (reply)
            freeReplyObject(reply);
        return rc != 0 ? rc : SD_EREDIS;
    }
    out->promoted = (int)jq__elem_ll(reply->element[1]);
    out->reclaimed = (int)jq__elem_ll(reply->element[2]);
    out->buried = (int)jq__elem_ll(reply->element[3]);
    out->next_ms = jq__elem_ll(reply->element[4]);
    freeReplyObject(reply);
    return 0;
}

/* One jq-dlq call; returns its reply ({0, count, ...}) in *out. */
static int dlq_call(jq_client *c, const char *queue, const char *op, int offset, int n,
                    redisReply **out) {
    if (offset < 0 || n < 1 || n > 1000)
        return JQ_EINVAL;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    jq__args_str(&a, op);
    jq__args_num(&a, offset);
    jq__args_num(&a, n);
    redisReply *reply = NULL;
    int rc = jq__run_code(c, JQ_S_DLQ, &a, 1, &reply);
    if (rc != 0 || reply->elements < 2) {
        if (reply)
            freeReplyObject(reply);
        return rc != 0 ? rc : SD_EREDIS;
    }
    *out = reply;
    return 0;
}

#define DLQ_FIELDS 7

int jq_dlq_list(jq_client *c, const char *queue, int offset, int n, jq_info *out, size_t *got) {
    *got = 0;
    redisReply *reply = NULL;
    int rc = dlq_call(c, queue, "list", offset, n, &reply);
    if (rc != 0)
        return rc;
    size_t count = (size_t)jq__elem_ll(reply->element[1]);
    if (count > (size_t)n || reply->elements != 2 + DLQ_FIELDS * count) {
        freeReplyObject(reply);
        return SD_EREDIS;
    }
    for (size_t i = 0; i < count; i++) {
        redisReply **e = reply->element + 2 + DLQ_FIELDS * i;
        char id[JQ_ID_MAX];
        jq__elem_text(e[0], id, sizeof id);
        info_init(&out[i], id);
        out[i].state = JQ_STATE_DEAD;
        out[i].attempts = (int)jq__elem_ll(e[1]);
        out[i].max_attempts = (int)jq__elem_ll(e[2]);
        info_set(&out[i], &out[i].last_error, e[3]);
        out[i].failed_ms = jq__elem_ll(e[4]);
        out[i].created_ms = jq__elem_ll(e[5]);
        info_set(&out[i], &out[i].payload, e[6]);
    }
    *got = count;
    freeReplyObject(reply);
    return 0;
}

/* Redrive or purge in calls of at most 1000 jobs until max are done or none are left. */
static int dlq_drain(jq_client *c, const char *queue, const char *op, int64_t max, int64_t *done) {
    *done = 0;
    if (max < 0)
        return JQ_EINVAL;
    for (;;) {
        int64_t want = max == 0 ? 1000 : max - *done;
        if (want <= 0)
            return 0;
        redisReply *reply = NULL;
        int rc = dlq_call(c, queue, op, 0, want > 1000 ? 1000 : (int)want, &reply);
        if (rc != 0)
            return rc;
        int64_t count = jq__elem_ll(reply->element[1]);
        freeReplyObject(reply);
        *done += count;
        if (count == 0)
            return 0;
    }
}

int jq_dlq_redrive(jq_client *c, const char *queue, int64_t max, int64_t *moved) {
    return dlq_drain(c, queue, "redrive", max, moved);
}

int jq_dlq_purge(jq_client *c, const char *queue, int64_t max, int64_t *removed) {
    return dlq_drain(c, queue, "purge", max, removed);
}

/* ---- Dropping a queue ---------------------------------------------------------------------- */

/* jq-drop calls of at most 1000 jobs each, until max jobs are deleted or no index entry is left.
 * A call may take entries whose jobs are already gone (past retention, not yet trimmed): they
 * do not count against max, and each call takes at least one entry, so the loop ends. */
int jq_queue_drop(jq_client *c, const char *queue, int64_t max, int64_t *removed) {
    *removed = 0;
    if (max < 0)
        return JQ_EINVAL;
    for (;;) {
        int64_t want = max == 0 ? 1000 : max - *removed;
        if (want <= 0)
            return 0;
        jq__args a;
        if (jq__args_begin(&a, &c->cfg, queue) != 0)
            return JQ_EINVAL;
        jq__args_num(&a, want > 1000 ? 1000 : want);
        redisReply *reply = NULL;
        int rc = jq__run_code(c, JQ_S_DROP, &a, 1, &reply);
        int64_t n = 0;
        int more = 0;
        if (rc == 0)
            rc = jq__drop_parse(reply, &n, &more);
        if (reply)
            freeReplyObject(reply);
        if (rc != 0)
            return rc;
        *removed += n;
        if (!more)
            return 0;
    }
}

/* {0, jobs deleted, index entries taken, 1 while an index holds an entry}: a step that took
 * nothing ends the drop too, whatever it says is left. */
int jq__drop_parse(const redisReply *reply, int64_t *removed, int *more) {
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 4)
        return SD_EREDIS;
    *removed = jq__elem_ll(reply->element[1]);
    *more = jq__elem_ll(reply->element[2]) > 0 && jq__elem_ll(reply->element[3]) != 0;
    return 0;
}
