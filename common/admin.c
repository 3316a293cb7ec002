/*
 * admin.c - the guard on the endpoints that manage state (see admin.h).
 */
#include "admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "addr_vet.h"
#include "sd.h"

static void sha256(const void *data, size_t len, unsigned char out[32]) {
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

int sd_admin_load(sd_admin *a, const char *prog, const char *opt, const char *file,
                  const char *env) {
    memset(a, 0, sizeof *a);
    char buf[512] = "";
    const char *value = env ? getenv(env) : NULL;
    if (file) {
        FILE *f = fopen(file, "r");
        if (!f) {
            fprintf(stderr, "%s: cannot read %s %s: %s\n", prog, opt, file, strerror(errno));
            return -1;
        }
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
    } else if (value) {
        snprintf(buf, sizeof buf, "%s", value);
        unsetenv(env); /* not handed down to the programs this one starts */
    } else {
        return 0;
    }
    buf[strcspn(buf, "\r\n")] = '\0';
    size_t len = strlen(buf);
    while (len > 0 && (buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        buf[--len] = '\0';
    if (len < 16 || len == sizeof buf - 1) {
        OPENSSL_cleanse(buf, sizeof buf);
        fprintf(stderr, "%s: the token (%s) must be 16 to 510 characters on one line\n", prog,
                file ? opt : env);
        return -1;
    }
    sha256(buf, len, a->token_sha);
    OPENSSL_cleanse(buf, sizeof buf);
    a->has_token = 1;
    return 0;
}

void sd_admin_announce(const sd_admin *a, const char *component) {
    char event[64];
    snprintf(event, sizeof event, "%s.admin", component);
    if (a->has_token)
        sd_log(SD_LOG_INFO, event, "guard=token");
    else
        sd_log(SD_LOG_WARN, event,
               "guard=loopback_only detail=\"no admin token: management requests are answered "
               "to loopback clients only (behind a proxy on this host, name it with "
               "--trust-proxy)\"");
}

int sd_admin_peer_is_loopback(const char *peer) {
    struct sockaddr_in v4 = {.sin_family = AF_INET};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
    if (peer && inet_pton(AF_INET, peer, &v4.sin_addr) == 1)
        return sd_addr_classify((struct sockaddr *)&v4) == SD_ADDR_LOOPBACK;
    if (peer && inet_pton(AF_INET6, peer, &v6.sin6_addr) == 1)
        return sd_addr_classify((struct sockaddr *)&v6) == SD_ADDR_LOOPBACK;
    return 0;
}

int sd_admin_is_local(const char *peer, const char *client) {
    /* The peer itself must be local, and so must the client a trusted proxy names: a trusted
     * proxy elsewhere could otherwise name 127.0.0.1 for anyone. */
    return sd_admin_peer_is_loopback(peer) && sd_admin_peer_is_loopback(client);
}

int sd_admin_check(const sd_admin *a, sd_http_req *req) {
    if (!a->has_token) {
        if (sd_admin_is_local(sd_http_req_peer(req), sd_http_req_client(req)))
            return 1;
        sd_http_req_respond_problem(req, 403, NULL, "Forbidden",
                                    "no admin token is configured: this endpoint answers "
                                    "loopback clients only",
                                    NULL);
        return 0;
    }
    const char *h = sd_http_req_header(req, "Authorization");
    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        unsigned char got[32];
        sha256(h + 7, strlen(h + 7), got);
        if (CRYPTO_memcmp(got, a->token_sha, sizeof got) == 0)
            return 1;
    }
    sd_http_req_add_header(req, "WWW-Authenticate", "Bearer");
    sd_http_req_respond_problem(req, 401, NULL, "Unauthorized",
                                "this endpoint wants \"Authorization: Bearer <token>\"", NULL);
    return 0;
}
