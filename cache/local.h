/*
 * local.h - the cache's in-process tier: a byte-bounded map from key to an immutable value
 * (a reference-counted blob), evicting with SIEVE (or plain LRU, kept for comparison).
 *
 * Why SIEVE (Zhang et al., "SIEVE is Simpler than LRU", NSDI 2024). Entries sit in one FIFO
 * queue with a "visited" bit. A hit only sets the bit: no list surgery, so a hit costs a hash
 * look-up and one store. To evict, a hand walks from the oldest entry towards the newest,
 * clearing visited bits, and removes the first entry whose bit was already clear; the hand
 * stays where it stopped. New entries go in at the head and must earn a hit before the hand
 * reaches them, so one-hit wonders (most keys of a Zipf tail) leave quickly while popular keys
 * stay without being moved. On Zipf traces it beats LRU's hit ratio at the same size
 * (cache-evict-sim measures it on this build, README "Measured numbers"); W-TinyLFU does a
 * little better still but needs a frequency sketch and two queues; S3-FIFO needs three.
 *
 * Not thread-safe: one tier belongs to one cache on one loop.
 */
#ifndef CACHE_LOCAL_H
#define CACHE_LOCAL_H

#include <stddef.h>
#include <stdint.h>

/* An immutable value shared by the tier and every callback that is about to receive it. */
typedef struct cache_blob {
    uint32_t refs;
    int status; /* CACHE_OK or CACHE_NOTFOUND */
    size_t len;
    char data[]; /* len bytes, then a NUL for convenience */
} cache_blob;

/* A new blob holding a copy of data, with one reference (the caller's). */
cache_blob *cache_blob_new(int status, const void *data, size_t len);
cache_blob *cache_blob_ref(cache_blob *b);
/* Drops one reference; frees at zero. NULL is a no-op. */
void cache_blob_unref(cache_blob *b);

enum { LOCAL_SIEVE, LOCAL_LRU };

typedef struct local_tier local_tier;

/* A tier holding at most max_bytes (keys, values and a fixed overhead per entry). Never NULL. */
local_tier *local_new(size_t max_bytes, int policy);
void local_free(local_tier *t);

/* The blob for key if present and not expired at now_ms (borrowed: take a reference to keep
 * it), else NULL. A hit marks the entry visited (SIEVE) or moves it to the front (LRU). An
 * expired entry is removed. */
cache_blob *local_get(local_tier *t, const char *key, size_t klen, uint64_t now_ms);

/* Inserts or replaces key, taking a new reference to b, valid until expires_ms. Evicts until
 * the tier fits; an entry larger than the whole budget is not stored. */
void local_put(local_tier *t, const char *key, size_t klen, cache_blob *b, uint64_t expires_ms);

/* Removes key; returns 1 if it was present. */
int local_del(local_tier *t, const char *key, size_t klen);

/* Removes every entry. */
void local_clear(local_tier *t);

/* The bytes an entry with this key and value length counts against the budget. */
size_t local_entry_cost(size_t klen, size_t vlen);

size_t local_bytes(const local_tier *t);
size_t local_count(const local_tier *t);
uint64_t local_evictions(const local_tier *t);

/* FNV-1a, 64 bits: the hash of the tier's and the flights' tables. */
uint64_t cache_hash(const char *key, size_t klen);

#endif
