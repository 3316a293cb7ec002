/*
 * cli.h - the option parsing every `bench` subcommand shares, so that all of them accept
 * options the same way (`--name value` or `--name=value`, anywhere among the positional
 * arguments, `--` ending the options) and report mistakes the same way.
 */
#ifndef BENCH_CLI_H
#define BENCH_CLI_H

#include <stddef.h>

/* Exit statuses of every command (DESIGN.md, "Commands"). */
enum { BENCH_EXIT_OK = 0, BENCH_EXIT_FAIL = 1, BENCH_EXIT_USAGE = 2 };

typedef struct bench_cli_opt {
    const char *name;   /* "--rate" */
    const char **value; /* takes a value: where the last one given goes; NULL for a flag */
    int *flag;          /* a flag: set to 1 when given; NULL when the option takes a value */
    const char **many;  /* a repeatable value: all of them go here (capacity: argc) ... */
    int *nmany;         /* ... and their number here */
} bench_cli_opt;

/* Parse results (returned by bench_cli_parse). */
enum { BENCH_CLI_OK = 0, BENCH_CLI_HELP = 1, BENCH_CLI_USAGE = -1 };

/*
 * Parses argv[1..argc-1] against opts (terminated by an entry with name == NULL). Positional
 * arguments go to pos (capacity argc) and their number to *npos. Returns BENCH_CLI_OK,
 * BENCH_CLI_HELP when --help or -h was given, or BENCH_CLI_USAGE after printing what is wrong
 * (prefixed with `cmd`, e.g. "bench run") to stderr.
 */
int bench_cli_parse(const char *cmd, int argc, char **argv, const bench_cli_opt *opts,
                    const char **pos, int *npos);

/* Parses an option's number within [min, max]. On failure prints
 * "<cmd>: <opt> wants <what>, got '<text>'" and returns -1; returns 0 otherwise. */
int bench_cli_number(const char *cmd, const char *opt, const char *text, double min, double max,
                     const char *what, double *out);

/* The same for a whole number in decimal ("1.5" and "0x10" are refused). */
int bench_cli_count(const char *cmd, const char *opt, const char *text, long long min,
                    long long max, const char *what, long long *out);

#endif
