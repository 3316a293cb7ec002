/*
 * admin.h - the guard on the endpoints that manage state (DESIGN.md contract 10): purge,
 * delete, rotate, replay, job admin.
 *
 *   sd_admin admin;
 *   if (sd_admin_load(&admin, "cache serve", "--admin-token-file", file, "CACHE_ADMIN_TOKEN"))
 *       exit(2);                                  // the message is printed, never the token
 *   sd_admin_announce(&admin, "cache");           // one log line: which guard is on
 *   ...in a handler:
 *   if (!sd_admin_check(&admin, req))
 *       return;                                   // answered: 401 or 403, problem+json
 *
 * With a token (the first line of a file, or an environment variable; 16 to 510 characters) a
 * request must carry "Authorization: Bearer <token>", else 401 with WWW-Authenticate. Only the
 * token's SHA-256 is kept, and the two digests are compared in constant time, so neither the
 * token's bytes nor its length show in the timing. Without one, only clients on a loopback
 * address are answered (403 for the others): a server that nobody configured must not let the
 * network manage it.
 */
#ifndef SD_ADMIN_H
#define SD_ADMIN_H

#include "http.h"

typedef struct sd_admin {
    int has_token;
    unsigned char token_sha[32]; /* SHA-256 of the token: the token itself is not kept */
} sd_admin;

/* Reads the token from file (its first line, trailing blanks dropped) when file is not NULL,
 * else from the environment variable env (may be NULL; it is then removed from the environment,
 * so that programs started later do not inherit it), else sets none. Returns 0, or -1 after a
 * message on stderr that starts with prog and names the option or the variable, never the
 * token (unreadable file, or a token outside 16 to 510 characters). */
int sd_admin_load(sd_admin *a, const char *prog, const char *opt, const char *file,
                  const char *env);

/* Logs at start which guard is on: "<component>.admin guard=token|loopback_only". */
void sd_admin_announce(const sd_admin *a, const char *component);

/* Returns 1 when req may go on; else answers it (401 without the right bearer token, 403 to a
 * client off loopback when no token is set) and returns 0. */
int sd_admin_check(const sd_admin *a, sd_http_req *req);

/* Whether the address text (as sd_http_req_peer gives it: "127.0.0.1", "::1",
 * "::ffff:127.0.0.1") is a loopback address. */
int sd_admin_peer_is_loopback(const char *peer);

/* Without a token, whether a request may manage: its peer and its client (sd_http_req_client,
 * which differs behind a trusted proxy) are both loopback. */
int sd_admin_is_local(const char *peer, const char *client);

#endif
