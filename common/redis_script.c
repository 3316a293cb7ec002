/*
 * redis_script.c - the script registry (an embedded script's SHA1) and what both connection
 * kinds do to call a script: the EVALSHA argument list, turned into EVAL after a NOSCRIPT reply
 * (see redis.h).
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_internal.h"
#include "sd.h"

void sd_script_init(sd_script *script) {
    if (script->sha[0])
        return;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(script->body, script->len, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) {
        fprintf(stderr, "fatal: SHA1 of script %s failed\n", script->name);
        abort();
    }
    char hex[41];
    for (unsigned i = 0; i < 20; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    memcpy(script->sha, hex, sizeof hex);
}

int sd_redis__is_noscript(const redisReply *reply) {
    return reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

void sd_redis__script_call_init(struct sd_redis__script_call *c, sd_script *script, int nkeys,
                                int argc, const char **argv, const size_t *argvlen) {
    sd_script_init(script);
    c->argc = argc + 3;
    c->argv = c->small;
    c->lens = c->smalllen;
    if (c->argc > 32) {
        c->argv = sd_xmalloc(sizeof *c->argv * (size_t)c->argc);
        c->lens = sd_xmalloc(sizeof *c->lens * (size_t)c->argc);
    }
    snprintf(c->nkeys, sizeof c->nkeys, "%d", nkeys);
    c->argv[0] = "EVALSHA";
    c->lens[0] = 7;
    c->argv[1] = script->sha;
    c->lens[1] = 40;
    c->argv[2] = c->nkeys;
    c->lens[2] = strlen(c->nkeys);
    for (int i = 0; i < argc; i++) {
        c->argv[3 + i] = argv[i];
        c->lens[3 + i] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
}

void sd_redis__script_call_use_eval(struct sd_redis__script_call *c, const sd_script *script) {
    c->argv[0] = "EVAL";
    c->lens[0] = 4;
    c->argv[1] = script->body;
    c->lens[1] = script->len;
}

void sd_redis__script_call_release(struct sd_redis__script_call *c) {
    if (c->argv != c->small) {
        free(c->argv);
        free(c->lens);
    }
}
