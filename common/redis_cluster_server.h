/*
 * redis_cluster_server.h - a private Redis Cluster on demand: the cluster counterpart of the
 * embedded Redis (redis_server.h).
 *
 * sd_redis_cluster_server_start starts `masters` redis-servers (3 by default) in cluster mode,
 * and optionally one replica per master, each with the embedded Redis launcher
 * (sd_redis_server_start): a free 127.0.0.1 port, a fresh directory tagged with SD_TEST_RUN_ID,
 * no persistence, and its own janitor, so a SIGKILLed owner leaves no server and no directory.
 * The cluster bus port of every node is picked the same way and given explicitly with
 * --cluster-port (the default, port + 10000, may be taken or above 65535).
 *
 * The cluster is then built by hand, without redis-cli: each master gets an equal range of the
 * 16384 slots (CLUSTER ADDSLOTSRANGE), every node is introduced to the first (CLUSTER MEET),
 * each replica follows its master (CLUSTER REPLICATE), and start returns once every node reports
 * cluster_state:ok, knows every other node and sees all 16384 slots assigned.
 */
#ifndef SD_REDIS_CLUSTER_SERVER_H
#define SD_REDIS_CLUSTER_SERVER_H

#include "redis_server.h"

typedef struct sd_redis_cluster_server sd_redis_cluster_server;

typedef struct sd_redis_cluster_server_opts {
    int masters;          /* 3 when 0; 1 to 16 */
    int replicas;         /* replicas per master: 0 (the default) or 1 */
    int start_timeout_ms; /* for the whole start, default 30000 */
    int node_timeout_ms;  /* cluster-node-timeout: how long a node may be unreachable before it
                             is taken for failed (a replica then takes over), default 5000 */
} sd_redis_cluster_server_opts;

/*
 * Starts the cluster and waits until it is ready (above). opts may be NULL. Returns 0 and the
 * handle in *out, or a negative code with a message on stderr; on failure every node started is
 * stopped and its directory removed.
 */
int sd_redis_cluster_server_start(const sd_redis_cluster_server_opts *opts,
                                  sd_redis_cluster_server **out);

/* The seeds URL of the cluster, "redis://127.0.0.1:P1,127.0.0.1:P2,..." (every master). Valid
 * until stop. */
const char *sd_redis_cluster_server_url(const sd_redis_cluster_server *c);

/* Number of nodes (masters + replicas). */
int sd_redis_cluster_server_count(const sd_redis_cluster_server *c);

/* Node i (0 <= i < count): masters first, in slot order (master 0 holds the lowest slots), then
 * the replicas, replica m following master m. Borrowed: use it for its port, pid and directory
 * and for fault tests (sd_redis_server_signal, _halt, _restart); do not stop it. */
sd_redis_server *sd_redis_cluster_server_node(const sd_redis_cluster_server *c, int i);

/* Waits until every node is ready again, as start does (cluster_state:ok, every slot assigned,
 * every node known, replicas linked): after nodes were halted and restarted, or frozen and
 * continued. A restarted master answers CLUSTERDOWN for its first 2 s (Redis's
 * CLUSTER_WRITABLE_DELAY), so this takes at least that long after a restart. Returns 0, or
 * SD_ETIMEDOUT after timeout_ms. */
int sd_redis_cluster_server_wait_ready(const sd_redis_cluster_server *c, int timeout_ms);

/* Stops every node, removes their directories and frees the handle. NULL is a no-op. Returns 0
 * or the first node's error (everything is stopped regardless). */
int sd_redis_cluster_server_stop(sd_redis_cluster_server *c);

#endif
