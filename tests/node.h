/*
 * node.h - runs the Node scripts of tests/node/ from a test, for checks against npm packages
 * (standardwebhooks, request-filtering-agent, ssrf-req-filter). Header-only: the two suites
 * that use it include it.
 *
 * The packages are installed from tests/node/package-lock.json on first use (`npm ci`, under
 * flock, so two suites running at once install once), bounded by `timeout`. A test calls
 * node_ready() first and skips itself with the reason when it returns 0: no node, no npm, or an
 * install that failed (no registry). It never fails for a missing tool.
 */
#ifndef TESTS_NODE_H
#define TESTS_NODE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sd.h"

#define NODE_DIR SD_SOURCE_DIR "/tests/node"

static inline int node_packages_present(void) {
    static const char *const pkgs[] = {"standardwebhooks", "request-filtering-agent",
                                       "ssrf-req-filter"};
    for (size_t i = 0; i < sizeof pkgs / sizeof pkgs[0]; i++) {
        char *file = sd_xasprintf("%s/node_modules/%s/package.json", NODE_DIR, pkgs[i]);
        int ok = access(file, R_OK) == 0;
        free(file);
        if (!ok)
            return 0;
    }
    return 1;
}

/* 1 when node and the packages are there (installing them if needed), else 0 with why[]. */
static inline int node_ready(char *why, size_t len) {
    if (system("command -v node >/dev/null 2>&1") != 0) {
        snprintf(why, len, "node not found on PATH (apt-get install nodejs npm)");
        return 0;
    }
    if (node_packages_present())
        return 1;
    if (system("command -v npm >/dev/null 2>&1") != 0) {
        snprintf(why, len, "npm not found on PATH, and %s/node_modules is missing", NODE_DIR);
        return 0;
    }
    char *cmd = sd_xasprintf("cd '%s' && flock .npm-install.lock sh -c 'test -d "
                             "node_modules/standardwebhooks || timeout 180 npm ci --no-audit "
                             "--no-fund' >/dev/null 2>&1",
                             NODE_DIR);
    int rc = system(cmd);
    free(cmd);
    if (rc != 0 || !node_packages_present()) {
        snprintf(why, len, "npm ci in %s failed (exit status %d): no registry?", NODE_DIR,
                 WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
        return 0;
    }
    return 1;
}

/* Runs `node tests/node/<script> args` with input (len bytes) on stdin. Returns its stdout
 * (NUL-terminated, the caller frees it) and its exit status in *status (-1: killed). */
static inline char *node_run(const char *script, const char *args, const void *input, size_t len,
                             int *status) {
    char tmp[] = "/tmp/sd-node-in-XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0)
        abort();
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, (const char *)input + off, len - off);
        if (n <= 0)
            abort();
        off += (size_t)n;
    }
    close(fd);
    char *cmd =
        sd_xasprintf("timeout 120 node '%s/%s' %s < '%s'", NODE_DIR, script, args ? args : "", tmp);
    FILE *p = popen(cmd, "r");
    free(cmd);
    if (!p)
        abort();
    size_t cap = 65536, used = 0;
    char *out = sd_xmalloc(cap);
    size_t n;
    while ((n = fread(out + used, 1, cap - used - 1, p)) > 0) {
        used += n;
        if (cap - used < 4096)
            out = sd_xrealloc(out, cap *= 2);
    }
    out[used] = '\0';
    int rc = pclose(p);
    *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    unlink(tmp);
    return out;
}

#endif
