/*
 * peers.c - runs one peer as a child process and reads its result line (see peers.h).
 *
 * A peer goes through these steps; the first that fails makes it skipped, with one line:
 *
 *   1. its programs are on PATH                  find_program()     "node not found on PATH"
 *   2. its npm packages are in node_modules,     npm_install()      "npm ci exited with status
 *      installed if not (bounded in time; a                          1: <its error line>"
 *      failure is not retried in the same run)
 *   3. its command runs to the end in time       run_captured()     "exited with status 1: ..."
 *   4. its last '{' line is a result             parse_result()     "no result line"
 *
 * Child processes run in their own process group, so that a peer or npm that is killed at its
 * deadline takes its own children with it, and with PR_SET_PDEATHSIG, so that none outlives
 * bench. The Redis URL is passed to the peer but never stored in the result: it may hold a
 * password, and the report is meant to be shared.
 */
#include "peers.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sd.h"

#define OUT_MAX (1 << 20) /* stdout kept from a peer; its result line is short */

/* True when name (a path, or a file in one of PATH's directories) is an executable file. */
static int find_program(const char *name) {
    if (strchr(name, '/'))
        return access(name, X_OK) == 0;
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        char *file = sd_xasprintf("%.*s/%s", (int)n, n ? path : ".", name);
        struct stat st;
        int ok = stat(file, &st) == 0 && S_ISREG(st.st_mode) && access(file, X_OK) == 0;
        free(file);
        if (ok)
            return 1;
        path += n;
        if (*path == ':')
            path++;
    }
    return 0;
}

/* Copies s into dst (len bytes) as one line: newlines and tabs become spaces, and surrounding
 * blanks are dropped. */
static void one_line(char *dst, size_t len, const char *s) {
    while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')
        s++;
    size_t o = 0;
    for (; *s && o + 1 < len; s++)
        dst[o++] = *s == '\n' || *s == '\r' || *s == '\t' ? ' ' : *s;
    while (o > 0 && dst[o - 1] == ' ')
        o--;
    dst[o] = '\0';
}

/* The last non-empty line of text (at most len - 1 bytes of it) into dst. */
static void last_line(char *dst, size_t len, const char *text) {
    const char *end = text + strlen(text);
    while (end > text && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
        end--;
    const char *start = end;
    while (start > text && start[-1] != '\n')
        start--;
    char *line = sd_xstrndup(start, (size_t)(end - start));
    one_line(dst, len, line);
    free(line);
}

/* What run_captured saw. */
typedef struct captured {
    char *out;      /* stdout, NUL-terminated (at most OUT_MAX bytes kept) */
    char *err;      /* stderr, the same */
    int status;     /* wait status */
    int timed_out;  /* killed at the deadline */
    int exec_errno; /* the exec failed with this errno (0: it did not fail) */
} captured;

/* Appends up to n bytes to *buf (holding *len), keeping at most OUT_MAX. */
static void append(char **buf, size_t *len, const char *data, size_t n) {
    if (*len + n > OUT_MAX)
        n = OUT_MAX - *len;
    *buf = sd_xrealloc(*buf, *len + n + 1);
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

/*
 * Runs argv (argv[0] on PATH) in dir with stdin from /dev/null, collects stdout and stderr, and
 * kills its process group when timeout_s passes. Returns 0 with *c filled (free c->out and
 * c->err), or -errno when it could not be started.
 */
static int run_captured(char *const argv[], const char *dir, double timeout_s, captured *c) {
    memset(c, 0, sizeof *c);
    int out[2], err[2], ex[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(err, O_CLOEXEC) < 0) {
        int e = -errno;
        close(out[0]);
        close(out[1]);
        return e;
    }
    if (pipe2(ex, O_CLOEXEC) < 0) {
        int e = -errno;
        close(out[0]);
        close(out[1]);
        close(err[0]);
        close(err[1]);
        return e;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        sd_child_restore_sigpipe();
        if (dir == NULL || chdir(dir) == 0)
            execvp(argv[0], argv);
        int e = errno;
        if (write(ex[1], &e, sizeof e) < 0)
            _exit(126);
        _exit(127);
    }
    int fork_errno = errno;
    close(out[1]);
    close(err[1]);
    close(ex[1]);
    if (pid < 0) {
        close(out[0]);
        close(err[0]);
        close(ex[0]);
        return -fork_errno;
    }
    setpgid(pid, pid); /* also from here, so the group exists before any kill */

    size_t out_len = 0, err_len = 0;
    c->out = sd_xstrdup("");
    c->err = sd_xstrdup("");
    uint64_t deadline = sd_now_ns() + (uint64_t)(timeout_s * 1e9);
    struct pollfd p[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
    int open_fds = 2;
    while (open_fds > 0) {
        uint64_t now = sd_now_ns();
        if (now >= deadline) {
            c->timed_out = 1;
            break;
        }
        int ms = (int)((deadline - now) / 1000000) + 1;
        int n = poll(p, 2, ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        for (int i = 0; i < 2; i++) {
            if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char buf[4096];
            ssize_t got = read(p[i].fd, buf, sizeof buf);
            if (got > 0) {
                if (i == 0)
                    append(&c->out, &out_len, buf, (size_t)got);
                else
                    append(&c->err, &err_len, buf, (size_t)got);
            } else if (got == 0 || errno != EINTR) {
                close(p[i].fd);
                p[i].fd = -1;
                open_fds--;
            }
        }
    }
    /* Both pipes closed: the command is ending; give it until the deadline to exit. */
    int ws = 0;
    pid_t w = 0;
    while (!c->timed_out && (w = waitpid(pid, &ws, WNOHANG)) == 0) {
        if (sd_now_ns() >= deadline)
            c->timed_out = 1;
        else
            poll(NULL, 0, 5);
    }
    /* The group's leader is not reaped yet, so its id still names this group: whatever the
     * command left behind (or the command itself, at the deadline) ends here. */
    kill(-pid, SIGKILL);
    if (w != pid)
        waitpid(pid, &ws, 0);
    c->status = ws;
    for (int i = 0; i < 2; i++)
        if (p[i].fd >= 0)
            close(p[i].fd);
    int e = 0;
    if (read(ex[0], &e, sizeof e) == (ssize_t)sizeof e)
        c->exec_errno = e;
    close(ex[0]);
    return 0;
}

static void captured_clear(captured *c) {
    free(c->out);
    free(c->err);
}

/* The line of text that best says why a command failed, into dst: the first naming an error
 * ("FetchError: request to ... failed, reason: ..." from npm, "Error: connect ECONNREFUSED" from
 * node), else the last non-empty line. npm ends its output with the path of its log, which says
 * nothing by itself. */
static void reason_line(char *dst, size_t len, const char *text) {
    for (const char *s = text; *s;) {
        size_t n = strcspn(s, "\n");
        const char *hit = memmem(s, n, "Error: ", 7);
        if (hit && !memmem(s, n, " at ", 4)) {
            char *line = sd_xstrndup(s, n);
            one_line(dst, len, line);
            free(line);
            return;
        }
        s += n;
        if (*s == '\n')
            s++;
    }
    last_line(dst, len, text);
}

/* Why a finished command failed, in one line, or "" when it exited 0. */
static void failure_line(const captured *c, const char *what, double timeout_s, char *dst,
                         size_t len) {
    char last[192] = "";
    reason_line(last, sizeof last, c->err[0] ? c->err : c->out);
    if (c->exec_errno)
        snprintf(dst, len, "cannot run %s: %s", what, strerror(c->exec_errno));
    else if (c->timed_out)
        snprintf(dst, len, "%s gave no result within %.0f s (killed)", what, timeout_s);
    else if (WIFSIGNALED(c->status))
        snprintf(dst, len, "%s was killed by signal %d%s%s", what, WTERMSIG(c->status),
                 last[0] ? ": " : "", last);
    else if (WEXITSTATUS(c->status) != 0)
        snprintf(dst, len, "%s exited with status %d%s%s", what, WEXITSTATUS(c->status),
                 last[0] ? ": " : "", last);
    else
        dst[0] = '\0';
}

/* True when every package of the peer is in peers_dir/node_modules. */
static int npm_present(const bench_peer *peer, const char *peers_dir) {
    for (const char *const *pkg = peer->npm; pkg && *pkg; pkg++) {
        char *file = sd_xasprintf("%s/node_modules/%s/package.json", peers_dir, *pkg);
        int ok = access(file, R_OK) == 0;
        free(file);
        if (!ok)
            return 0;
    }
    return 1;
}

/* Installs peers_dir's npm packages from its lock file. Returns 0, or a negative code with
 * why[] set. */
static int npm_install(const bench_peer_params *p, double timeout_s, char *why, size_t len) {
    if (!find_program("npm")) {
        snprintf(why, len, "npm not found on PATH");
        return -ENOENT;
    }
    char *lock = sd_xasprintf("%s/package-lock.json", p->peers_dir);
    int ci = access(lock, R_OK) == 0;
    free(lock);
    char *argv[] = {"npm", ci ? "ci" : "install", "--no-audit", "--no-fund", NULL};
    fprintf(stderr,
            "bench run: installing the peers' npm packages: npm %s --no-audit --no-fund in %s "
            "(first use, at most %.0f s)\n",
            argv[1], p->peers_dir, timeout_s);
    captured c;
    uint64_t t0 = sd_now_ns();
    int rc = run_captured(argv, p->peers_dir, timeout_s, &c);
    if (rc < 0) {
        snprintf(why, len, "cannot run npm: %s", strerror(-rc));
        return rc;
    }
    char what[32];
    snprintf(what, sizeof what, "npm %s", argv[1]);
    failure_line(&c, what, timeout_s, why, len);
    rc = why[0] ? (c.timed_out ? -ETIMEDOUT : -ECHILD) : 0;
    if (rc == 0)
        fprintf(stderr, "bench run: npm %s done in %.1f s\n", argv[1],
                (double)(sd_now_ns() - t0) / 1e9);
    captured_clear(&c);
    return rc;
}

/* Replaces the placeholders of tmpl (peers.h) with their values; shown != 0 writes the Redis
 * URL as "URL" and the peers directory as bench/peers, for the report. Returns a new string. */
static char *expand(const char *tmpl, const bench_peer_params *p, int shown) {
    char duration[32], warmup[32], in_flight[16];
    snprintf(duration, sizeof duration, "%g", p->duration_s);
    snprintf(warmup, sizeof warmup, "%g", p->warmup_s);
    snprintf(in_flight, sizeof in_flight, "%d", p->in_flight);
    const struct {
        const char *name, *value;
    } vars[] = {{"{peers_dir}", shown ? "bench/peers" : p->peers_dir},
                {"{redis}", shown ? "URL" : p->redis_url},
                {"{duration}", duration},
                {"{warmup}", warmup},
                {"{in_flight}", in_flight}};
    char *s = sd_xstrdup(tmpl);
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        char *at;
        size_t from = 0;
        while ((at = strstr(s + from, vars[i].name)) != NULL) {
            size_t before = (size_t)(at - s), nlen = strlen(vars[i].name);
            char *next = sd_xasprintf("%.*s%s%s", (int)before, s, vars[i].value, at + nlen);
            from = before + strlen(vars[i].value);
            free(s);
            s = next;
        }
    }
    return s;
}

/* Reads the last stdout line starting with '{' into out. Returns 0 or SD_EPARSE (why set). */
static int parse_result(const char *stdout_text, bench_peer_result *out, char *why, size_t len) {
    const char *line = NULL;
    for (const char *s = stdout_text; *s; s = strchr(s, '\n') ? strchr(s, '\n') + 1 : s + strlen(s))
        if (*s == '{')
            line = s;
    if (line == NULL) {
        snprintf(why, len, "no result line (JSON) in its output");
        return SD_EPARSE;
    }
    json_error_t e;
    json_t *o = json_loadb(line, strcspn(line, "\n"), 0, &e);
    if (o == NULL || !json_is_object(o)) {
        snprintf(why, len, "its result line is not a JSON object: %s", e.text);
        json_decref(o);
        return SD_EPARSE;
    }
    const char *required[] = {"achieved_rate", "p50_us", "p99_us"};
    for (size_t i = 0; i < 3; i++)
        if (!json_is_number(json_object_get(o, required[i]))) {
            snprintf(why, len, "its result line has no number \"%s\"", required[i]);
            json_decref(o);
            return SD_EPARSE;
        }
    out->achieved_rate = json_number_value(json_object_get(o, "achieved_rate"));
    out->p50_us = (int64_t)json_number_value(json_object_get(o, "p50_us"));
    out->p99_us = (int64_t)json_number_value(json_object_get(o, "p99_us"));
    out->max_us = (int64_t)json_number_value(json_object_get(o, "max_us"));
    out->count = (uint64_t)json_number_value(json_object_get(o, "count"));
    out->errors = (uint64_t)json_number_value(json_object_get(o, "errors"));
    const char *version = json_string_value(json_object_get(o, "version"));
    snprintf(out->version, sizeof out->version, "%s", version ? version : "");
    json_decref(o);
    return 0;
}

int bench_peer_run(const bench_peer *peer, const bench_peer_params *p, bench_peer_result *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", peer->name);
    snprintf(out->compared_with, sizeof out->compared_with, "%s", peer->compared_with);
    out->duration_s = p->duration_s;
    out->in_flight = p->in_flight;
    size_t argc = 0;
    while (peer->argv[argc])
        argc++;
    size_t clen = 0;
    for (size_t i = 0; i < argc; i++) {
        char *shown = expand(peer->argv[i], p, 1);
        clen += (size_t)snprintf(out->command + clen,
                                 clen < sizeof out->command ? sizeof out->command - clen : 0,
                                 "%s%s", i ? " " : "", shown);
        free(shown);
        if (clen >= sizeof out->command)
            clen = sizeof out->command - 1;
    }

    char why[sizeof out->skipped] = "";
    const char *hint = peer->hint && peer->hint[0] ? peer->hint : NULL;
    for (const char *const *prog = peer->programs; prog && *prog; prog++)
        if (!find_program(*prog)) {
            snprintf(out->skipped, sizeof out->skipped, "%s not found on PATH%s%s%s", *prog,
                     hint ? " (" : "", hint ? hint : "", hint ? ")" : "");
            return -ENOENT;
        }
    if (!npm_present(peer, p->peers_dir)) {
        /* One attempt per directory and process: the peers of a run share node_modules, and a
         * second wait for an npm that failed (no network) would only spend the run's time. */
        static char failed_dir[512], failed_why[sizeof out->skipped];
        static int failed_rc;
        if (failed_dir[0] && strcmp(failed_dir, p->peers_dir) == 0) {
            snprintf(out->skipped, sizeof out->skipped, "%s", failed_why);
            return failed_rc;
        }
        double t = p->install_timeout_s > 0 ? p->install_timeout_s : 120;
        int rc = npm_install(p, t, why, sizeof why);
        if (rc == 0 && !npm_present(peer, p->peers_dir)) {
            snprintf(why, sizeof why,
                     "npm finished but a package of %s is still missing from "
                     "node_modules",
                     peer->name);
            rc = -ENOENT;
        }
        if (rc < 0) {
            one_line(out->skipped, sizeof out->skipped, why);
            snprintf(failed_dir, sizeof failed_dir, "%s", p->peers_dir);
            snprintf(failed_why, sizeof failed_why, "%s", out->skipped);
            failed_rc = rc;
            return rc;
        }
    }

    char **argv = sd_xcalloc(argc + 1, sizeof *argv);
    for (size_t i = 0; i < argc; i++)
        argv[i] = expand(peer->argv[i], p, 0);
    double timeout = p->warmup_s + p->duration_s + (p->grace_s > 0 ? p->grace_s : 30);
    captured c;
    int rc = run_captured(argv, NULL, timeout, &c);
    for (size_t i = 0; i < argc; i++)
        free(argv[i]);
    free(argv);
    if (rc < 0) {
        snprintf(out->skipped, sizeof out->skipped, "cannot start %s: %s", peer->argv[0],
                 strerror(-rc));
        return rc;
    }
    failure_line(&c, peer->argv[0], timeout, why, sizeof why);
    if (why[0])
        rc = c.timed_out ? -ETIMEDOUT : c.exec_errno ? -c.exec_errno : -ECHILD;
    else
        rc = parse_result(c.out, out, why, sizeof why);
    captured_clear(&c);
    if (rc < 0)
        one_line(out->skipped, sizeof out->skipped, why);
    return rc;
}
