/*
 * cli.h - the command kit: one table-driven option parser for every program in the tree, the
 * exit statuses they share, the usage text generated from the same table, and `--version`.
 *
 * A command describes itself once, as an sd_cli_cmd holding a table of sd_cli_opt, and
 * sd_cli_parse does the rest the same way for every program (DESIGN.md, "Commands"):
 *
 *   - options are `--name value` or `--name=value`, anywhere among the positional arguments;
 *     `--` ends the options; a lone `-` is a positional argument;
 *   - `-h` / `--help` prints the usage (generated from the table) on stdout: exit 0;
 *   - `--version` prints the build's `git describe --always --dirty` on stdout: exit 0;
 *   - an unknown option, a missing value, a value out of its range or refused by the option's
 *     parser, a missing required option or an unexpected argument prints ONE line on stderr,
 *     "<command>: <option> <what is wrong>", and is a usage error: exit 2.
 *
 *     static long long port = 0;
 *     static const char *listen = NULL;
 *     static const sd_cli_opt opts[] = {
 *         {"--listen", "HOST:PORT", "address to listen on", .text = &listen, .required = 1},
 *         {"--port", "N", "a port", .integer = &port, .min = 0, .max = 65535},
 *         {0}};
 *     static const sd_cli_cmd cmd = {.name = "demo", .synopsis = "--listen HOST:PORT [options]",
 *                                    .about = "What it does.", .opts = opts};
 *     int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
 *     if (rc != SD_CLI_OK)
 *         return sd_cli_exit_status(rc);
 *
 * Values are checked while parsing, so a command's code after sd_cli_parse sees only values
 * within their ranges and needs only its cross-option checks (sd_cli_usage_error for those).
 */
#ifndef SD_CLI_H
#define SD_CLI_H

#include <stddef.h>
#include <stdio.h>

/* Exit statuses of every command (DESIGN.md, "Commands"). */
enum { SD_EXIT_OK = 0, SD_EXIT_FAILURE = 1, SD_EXIT_USAGE = 2 };

/* An option's own value parser (for values that are not a plain number or text). Returns 0,
 * or -1 after writing what is wrong into err (without the option's name: the caller adds it,
 * e.g. "wants HOST:PORT, got 'x'"). */
typedef int sd_cli_parse_cb(const char *value, void *udata, char *err, size_t errlen);

/*
 * One option. Exactly one destination is set; it decides the option's kind:
 *   flag     int *: set to 1 when given (the option takes no value)
 *   text     const char **: the last value given (borrowed from argv)
 *   list     const char **, with count: every value given, in order (a repeatable option;
 *            capacity: argc)
 *   integer  long long *: a whole decimal number within [min, max] ("1.5", "0x10" are refused)
 *   number   double *: a decimal number within [min, max] (no hex, inf or nan)
 *   parse    sd_cli_parse_cb with udata: called with each value given (repeatable)
 * Destinations keep what they held when the option is not given: that is the default.
 */
typedef struct sd_cli_opt {
    const char *name; /* "--rate" */
    const char *arg;  /* the value's name in the usage ("R"); NULL for a flag */
    const char *help; /* its usage text; '\n' starts a continuation line */
    int *flag;
    const char **text;
    const char **list;
    int *count;
    long long *integer;
    double *number;
    sd_cli_parse_cb *parse;
    void *udata;
    double min, max;  /* integer and number: the accepted range */
    const char *what; /* integer and number: what is wanted, for the error message
                         ("seconds (> 0)"); default "a whole number from MIN to MAX" */
    int required;     /* a usage error when not given */
} sd_cli_opt;

/* A command (or subcommand) described once, for parsing and for its usage text. */
typedef struct sd_cli_cmd {
    const char *name;         /* "bench run": the first word of every message */
    const char *synopsis;     /* what follows the name in the usage line: "[PREFIX...] [options]" */
    const char *about;        /* paragraphs printed between the usage line and the options */
    const sd_cli_opt *opts;   /* terminated by an entry whose name is NULL; may be NULL */
    const char *footer;       /* printed after the options (exit statuses, ...); may be NULL */
    const sd_cli_opt *shared; /* more options, listed after opts: a table several subcommands
                                 share; may be NULL */
} sd_cli_cmd;

/* Results of sd_cli_parse. */
enum { SD_CLI_OK = 0, SD_CLI_DONE = 1, SD_CLI_USAGE = -1 };

/*
 * Parses argv[1..argc-1] (argv[0] is the command's own name and is skipped) against cmd's
 * table, storing values as the table says. Positional arguments go to pos (capacity argc) and
 * their number to *npos; with pos == NULL any positional argument is a usage error. Returns
 * SD_CLI_OK; SD_CLI_DONE after printing the usage (--help) or the version (--version) on
 * stdout; or SD_CLI_USAGE after printing one line on stderr saying what is wrong.
 */
int sd_cli_parse(const sd_cli_cmd *cmd, int argc, char **argv, const char **pos, int *npos);

/* The exit status for a result of sd_cli_parse other than SD_CLI_OK: 0 after --help or
 * --version, 2 after a usage error. */
int sd_cli_exit_status(int parse_result);

/* Writes cmd's usage: "usage: NAME SYNOPSIS", the about text, one line per option (with -h and
 * --version added), the footer. */
void sd_cli_usage(const sd_cli_cmd *cmd, FILE *out);

/* Prints "<cmd>: <message>" as one line on stderr and returns SD_EXIT_USAGE, for checks that
 * involve more than one option. */
int sd_cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses an option's number within [min, max]. On failure prints
 * "<cmd>: <opt> wants <what>, got '<text>'" and returns -1; returns 0 otherwise. */
int sd_cli_number(const char *cmd, const char *opt, const char *text, double min, double max,
                  const char *what, double *out);

/* The same for a whole number in decimal ("1.5" and "0x10" are refused). */
int sd_cli_count(const char *cmd, const char *opt, const char *text, long long min, long long max,
                 const char *what, long long *out);

/*
 * Option parsers for the values every command shares (use as .parse, with .udata pointing at
 * the const char * that receives the value):
 *   sd_cli_listen_parse  a --listen address, checked the way the HTTP server parses it
 *                        (sd_http_addr_check), so a malformed one is a usage error before
 *                        anything starts;
 *   sd_cli_redis_parse   a --redis URL, checked by sd_redis_url_parse; when it holds a
 *                        password, prints a warning on stderr (never the password) that argv is
 *                        readable in /proc/PID/cmdline and REDIS_URL is the place for it;
 *   sd_cli_trust_parse   a --trust-proxy CIDR, added to the sd_http_trust that .udata points at
 *                        (repeatable). SD_CLI_TRUST_OPT(&trust) is the option's whole entry.
 */
int sd_cli_listen_parse(const char *value, void *udata, char *err, size_t errlen);
int sd_cli_redis_parse(const char *value, void *udata, char *err, size_t errlen);
int sd_cli_trust_parse(const char *value, void *udata, char *err, size_t errlen);
#define SD_CLI_TRUST_OPT(trust)                                                                    \
    {                                                                                              \
        "--trust-proxy", "CIDR",                                                                   \
            "believe X-Forwarded-For from proxies in this block (repeatable;\n"                    \
            "default none: the client is the peer)",                                               \
            .parse = sd_cli_trust_parse, .udata = (trust)                                          \
    }

/* A program with subcommands ("bench run", "ratelimit serve"): each one is a function given
 * argv with argv[0] = the subcommand's name, returning the exit status. */
typedef struct sd_cli_sub {
    const char *name;    /* "run" */
    const char *summary; /* one line for the program's usage */
    int (*run)(int argc, char **argv);
} sd_cli_sub;

/*
 * Runs the subcommand argv[1] names. Without one, prints the program's usage (built from
 * `about` and the table) on stderr and returns 2; `--help`, `-h` or `help` print it on stdout
 * and return 0; `--version` prints the version; an unknown subcommand is one line on stderr and
 * 2. subs is terminated by an entry whose name is NULL.
 */
int sd_cli_dispatch(const char *prog, const char *about, const sd_cli_sub *subs, int argc,
                    char **argv);

/* The build's `git describe --always --dirty` ("unknown" outside a git checkout), captured when
 * the program was built. */
const char *sd_version(void);

#endif
