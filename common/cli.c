/*
 * cli.c - the command kit (see cli.h): option parsing, usage text from the option table,
 * subcommand dispatch and the build's version.
 */
#include "cli.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "redis.h"
#include "sd.h"

/* Generated at build time (cmake/version.cmake). */
extern const char sd_build_version[];

const char *sd_version(void) {
    return sd_build_version;
}

static size_t table_len(const sd_cli_opt *opts) {
    size_t n = 0;
    while (opts && opts[n].name)
        n++;
    return n;
}

/* The i-th option of a command: its own table, then the shared one. */
static const sd_cli_opt *opt_at(const sd_cli_cmd *cmd, size_t i) {
    size_t own = table_len(cmd->opts);
    return i < own ? &cmd->opts[i] : &cmd->shared[i - own];
}

static size_t opt_count(const sd_cli_cmd *cmd) {
    return table_len(cmd->opts) + table_len(cmd->shared);
}

/* The index of the option called name[0..len), or -1. */
static long find(const sd_cli_cmd *cmd, const char *name, size_t len) {
    for (size_t i = 0; i < opt_count(cmd); i++) {
        const sd_cli_opt *o = opt_at(cmd, i);
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return (long)i;
    }
    return -1;
}

int sd_cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return SD_EXIT_USAGE;
}

/* Stores one value of option o. Returns 0 or -1 after printing what is wrong. */
static int store(const sd_cli_cmd *cmd, const sd_cli_opt *o, const char *value) {
    if (o->text) {
        *o->text = value;
    } else if (o->list) {
        o->list[(*o->count)++] = value;
    } else if (o->integer) {
        char what[96];
        if (o->what == NULL)
            snprintf(what, sizeof what, "a whole number from %.0f to %.0f", o->min, o->max);
        return sd_cli_count(cmd->name, o->name, value, (long long)o->min, (long long)o->max,
                            o->what ? o->what : what, o->integer);
    } else if (o->number) {
        char what[96];
        if (o->what == NULL)
            snprintf(what, sizeof what, "a number from %g to %g", o->min, o->max);
        return sd_cli_number(cmd->name, o->name, value, o->min, o->max, o->what ? o->what : what,
                             o->number);
    } else {
        assert(o->parse != NULL); /* an option with a value needs somewhere to put it */
        char err[256] = "is not valid";
        if (o->parse(value, o->udata, err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s %s\n", cmd->name, o->name, err);
            return -1;
        }
    }
    return 0;
}

int sd_cli_parse(const sd_cli_cmd *cmd, int argc, char **argv, const char **pos, int *npos) {
    size_t nopts = opt_count(cmd);
    /* Which options were given, for `required`. */
    char *given = sd_xcalloc(nopts + 1, 1);
    int rc = SD_CLI_OK;
    if (npos)
        *npos = 0;
    for (size_t i = 0; i < nopts; i++)
        if (opt_at(cmd, i)->count)
            *opt_at(cmd, i)->count = 0;
    int only_positional = 0;
    for (int i = 1; i < argc && rc == SD_CLI_OK; i++) {
        const char *arg = argv[i];
        if (only_positional || arg[0] != '-' || strcmp(arg, "-") == 0) {
            if (pos == NULL) {
                fprintf(stderr, "%s: unexpected argument '%s' (%s --help shows the usage)\n",
                        cmd->name, arg, cmd->name);
                rc = SD_CLI_USAGE;
            } else {
                pos[(*npos)++] = arg;
            }
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_positional = 1;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            sd_cli_usage(cmd, stdout);
            rc = SD_CLI_DONE;
            break;
        }
        if (strcmp(arg, "--version") == 0) {
            printf("%s\n", sd_version());
            rc = SD_CLI_DONE;
            break;
        }
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        long idx = find(cmd, arg, len);
        if (idx < 0) {
            fprintf(stderr, "%s: unknown option '%.*s' (%s --help lists the options)\n", cmd->name,
                    (int)len, arg, cmd->name);
            rc = SD_CLI_USAGE;
            break;
        }
        const sd_cli_opt *o = opt_at(cmd, (size_t)idx);
        given[idx] = 1;
        if (o->flag) {
            if (eq) {
                fprintf(stderr, "%s: %s takes no value\n", cmd->name, o->name);
                rc = SD_CLI_USAGE;
                break;
            }
            *o->flag = 1;
            continue;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (value == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: %s needs a value%s%s\n", cmd->name, o->name, o->arg ? " " : "",
                        o->arg ? o->arg : "");
                rc = SD_CLI_USAGE;
                break;
            }
            value = argv[++i];
        }
        if (store(cmd, o, value) < 0)
            rc = SD_CLI_USAGE;
    }
    for (size_t i = 0; i < nopts && rc == SD_CLI_OK; i++) {
        const sd_cli_opt *o = opt_at(cmd, i);
        if (o->required && !given[i]) {
            fprintf(stderr, "%s: %s%s%s is required\n", cmd->name, o->name, o->arg ? " " : "",
                    o->arg ? o->arg : "");
            rc = SD_CLI_USAGE;
        }
    }
    free(given);
    return rc;
}

int sd_cli_exit_status(int parse_result) {
    return parse_result == SD_CLI_USAGE ? SD_EXIT_USAGE : SD_EXIT_OK;
}

/* Prints one option line: the "  --name ARG" column padded to width, then the help text, whose
 * continuation lines are indented to the same column. */
static void usage_line(FILE *out, const char *name, const char *arg, const char *help, int width) {
    char left[128];
    snprintf(left, sizeof left, "%s%s%s", name, arg ? " " : "", arg ? arg : "");
    fprintf(out, "  %-*s  ", width, left);
    for (const char *p = help ? help : ""; *p; p++) {
        fputc(*p, out);
        if (*p == '\n')
            fprintf(out, "  %-*s  ", width, "");
    }
    fputc('\n', out);
}

void sd_cli_usage(const sd_cli_cmd *cmd, FILE *out) {
    fprintf(out, "usage: %s%s%s\n", cmd->name, cmd->synopsis ? " " : "",
            cmd->synopsis ? cmd->synopsis : "");
    if (cmd->about)
        fprintf(out, "\n%s\n", cmd->about);
    int width = (int)strlen("-h, --help");
    for (size_t i = 0; i < opt_count(cmd); i++) {
        const sd_cli_opt *o = opt_at(cmd, i);
        int w = (int)(strlen(o->name) + (o->arg ? 1 + strlen(o->arg) : 0));
        if (w > width)
            width = w;
    }
    fputs("\noptions:\n", out);
    for (size_t i = 0; i < opt_count(cmd); i++)
        usage_line(out, opt_at(cmd, i)->name, opt_at(cmd, i)->arg, opt_at(cmd, i)->help, width);
    usage_line(out, "-h, --help", NULL, "show this help", width);
    usage_line(out, "--version", NULL, "print the build's version (git describe)", width);
    if (cmd->footer)
        fprintf(out, "\n%s\n", cmd->footer);
}

int sd_cli_number(const char *cmd, const char *opt, const char *text, double min, double max,
                  const char *what, double *out) {
    if (sd_parse_double(text, min, max, out) != 0) {
        fprintf(stderr, "%s: %s wants %s, got '%s'\n", cmd, opt, what, text);
        return -1;
    }
    return 0;
}

int sd_cli_count(const char *cmd, const char *opt, const char *text, long long min, long long max,
                 const char *what, long long *out) {
    if (sd_parse_ll(text, min, max, out) != 0) {
        fprintf(stderr, "%s: %s wants %s, got '%s'\n", cmd, opt, what, text);
        return -1;
    }
    return 0;
}

int sd_cli_listen_parse(const char *value, void *udata, char *err, size_t errlen) {
    if (sd_http_addr_check(value) != 0) {
        snprintf(err, errlen, "wants HOST:PORT (IPv4 or [IPv6], port 0 to 65535), got '%s'", value);
        return -1;
    }
    *(const char **)udata = value;
    return 0;
}

int sd_cli_trust_parse(const char *value, void *udata, char *err, size_t errlen) {
    return sd_http_trust_add(udata, value, err, errlen);
}

int sd_cli_redis_parse(const char *value, void *udata, char *err, size_t errlen) {
    sd_redis_url url;
    char why[200];
    if (sd_redis_url_parse(value, &url, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    if (url.password)
        fprintf(stderr,
                "%s: warning: the password in --redis is readable by every local user in "
                "/proc/%d/cmdline; give the URL in REDIS_URL instead\n",
                program_invocation_short_name, (int)getpid());
    sd_redis_url_clear(&url);
    *(const char **)udata = value;
    return 0;
}

static void dispatch_usage(const char *prog, const char *about, const sd_cli_sub *subs, FILE *out) {
    fprintf(out, "usage: %s <command> [options]\n", prog);
    if (about)
        fprintf(out, "\n%s\n", about);
    int width = 0;
    for (const sd_cli_sub *s = subs; s->name; s++)
        if ((int)strlen(s->name) > width)
            width = (int)strlen(s->name);
    fputs("\ncommands:\n", out);
    for (const sd_cli_sub *s = subs; s->name; s++)
        fprintf(out, "  %-*s  %s\n", width, s->name, s->summary ? s->summary : "");
    fprintf(out,
            "\n`%s <command> --help` shows a command's options; `%s --version` the build.\n"
            "Exit status: 0 ok, 1 failure, 2 usage error.\n",
            prog, prog);
}

int sd_cli_dispatch(const char *prog, const char *about, const sd_cli_sub *subs, int argc,
                    char **argv) {
    if (argc < 2) {
        dispatch_usage(prog, about, subs, stderr);
        return SD_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
        dispatch_usage(prog, about, subs, stdout);
        return SD_EXIT_OK;
    }
    if (strcmp(sub, "--version") == 0) {
        printf("%s\n", sd_version());
        return SD_EXIT_OK;
    }
    /* Each subcommand sees argv[0] = its own name, as if it were a program. */
    for (const sd_cli_sub *s = subs; s->name; s++)
        if (strcmp(s->name, sub) == 0)
            return s->run(argc - 1, argv + 1);
    if (sub[0] == '-')
        return sd_cli_usage_error(prog, "unknown option '%s' (%s --help lists the commands)", sub,
                                  prog);
    return sd_cli_usage_error(prog, "unknown command '%s' (%s --help lists them)", sub, prog);
}
