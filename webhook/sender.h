/*
 * sender.h - the webhook sender's two commands, `webhook serve` (the API and, by default,
 * delivery workers) and `webhook deliver` (delivery workers alone). sender.c holds the design.
 */
#ifndef WH_SENDER_H
#define WH_SENDER_H

#include <stddef.h>

/* The subcommands' entry points for main.c's dispatcher: exit statuses of cli.h. */
int wh_run_serve(int argc, char **argv);
int wh_run_deliver(int argc, char **argv);

/*
 * Parses a retry schedule, "50ms,1s,5m,2h" (units ms, s, m, h; 1 to WH_SCHEDULE_MAX entries,
 * each 1 ms to 7 days) into out[0..*n). Returns 0 or -1 (err says what is wrong).
 */
#define WH_SCHEDULE_MAX 32
int wh_schedule_parse(const char *text, long long *out, int *n, char *err, size_t errlen);

#endif
