/*
 * cli.c - option parsing for the `bench` subcommands (see cli.h).
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "sd.h"

static const bench_cli_opt *find(const bench_cli_opt *opts, const char *name, size_t len) {
    for (const bench_cli_opt *o = opts; o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

int bench_cli_parse(const char *cmd, int argc, char **argv, const bench_cli_opt *opts,
                    const char **pos, int *npos) {
    *npos = 0;
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (only_positional || arg[0] != '-' || strcmp(arg, "-") == 0) {
            pos[(*npos)++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_positional = 1;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return BENCH_CLI_HELP;
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        const bench_cli_opt *o = find(opts, arg, len);
        if (o == NULL) {
            fprintf(stderr, "%s: unknown option '%.*s' (%s --help lists the options)\n", cmd,
                    (int)len, arg, cmd);
            return BENCH_CLI_USAGE;
        }
        if (o->flag) {
            if (eq) {
                fprintf(stderr, "%s: %s takes no value\n", cmd, o->name);
                return BENCH_CLI_USAGE;
            }
            *o->flag = 1;
            continue;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (value == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: %s needs a value\n", cmd, o->name);
                return BENCH_CLI_USAGE;
            }
            value = argv[++i];
        }
        if (o->many)
            o->many[(*o->nmany)++] = value;
        else
            *o->value = value;
    }
    return BENCH_CLI_OK;
}

int bench_cli_number(const char *cmd, const char *opt, const char *text, double min, double max,
                     const char *what, double *out) {
    if (sd_parse_double(text, min, max, out) != 0) {
        fprintf(stderr, "%s: %s wants %s, got '%s'\n", cmd, opt, what, text);
        return -1;
    }
    return 0;
}

int bench_cli_count(const char *cmd, const char *opt, const char *text, long long min,
                    long long max, const char *what, long long *out) {
    if (sd_parse_ll(text, min, max, out) != 0) {
        fprintf(stderr, "%s: %s wants %s, got '%s'\n", cmd, opt, what, text);
        return -1;
    }
    return 0;
}
