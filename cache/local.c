/*
 * local.c - the in-process tier (see local.h for why SIEVE).
 *
 * Layout: a chained hash table (power-of-two buckets, doubled when the load passes 1) indexes
 * the entries; every entry is also on one doubly linked queue, head = newest. SIEVE keeps a
 * hand (NULL: start at the tail); LRU moves an entry to the head on each hit and evicts the
 * tail. Accounted bytes per entry: key + value + ENTRY_OVERHEAD.
 */
#include "local.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "sd.h"

#define ENTRY_OVERHEAD 96

typedef struct entry {
    struct entry *hnext;       /* hash chain */
    struct entry *prev, *next; /* queue: prev towards the head (newer), next towards the tail */
    uint64_t hash;
    uint64_t expires_ms;
    cache_blob *blob;
    int visited;
    size_t klen;
    char key[];
} entry;

struct local_tier {
    entry **buckets;
    size_t nbuckets, count, bytes, max_bytes;
    entry *head, *tail, *hand;
    int policy;
    uint64_t evictions;
};

cache_blob *cache_blob_new(int status, const void *data, size_t len) {
    cache_blob *b = sd_xmalloc(sizeof *b + len + 1);
    b->refs = 1;
    b->status = status;
    b->len = len;
    if (len)
        memcpy(b->data, data, len);
    b->data[len] = '\0';
    return b;
}

cache_blob *cache_blob_ref(cache_blob *b) {
    b->refs++;
    return b;
}

void cache_blob_unref(cache_blob *b) {
    if (b && --b->refs == 0)
        free(b);
}

uint64_t cache_hash(const char *key, size_t klen) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < klen; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return h;
}

local_tier *local_new(size_t max_bytes, int policy) {
    local_tier *t = sd_xcalloc(1, sizeof *t);
    t->nbuckets = 64;
    t->buckets = sd_xcalloc(t->nbuckets, sizeof *t->buckets);
    t->max_bytes = max_bytes;
    t->policy = policy;
    return t;
}

static size_t entry_bytes(const entry *e) {
    return e->klen + e->blob->len + ENTRY_OVERHEAD;
}

static entry **bucket_of(local_tier *t, uint64_t h) {
    return &t->buckets[h & (t->nbuckets - 1)];
}

static entry *find(local_tier *t, const char *key, size_t klen, uint64_t h) {
    for (entry *e = *bucket_of(t, h); e; e = e->hnext)
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    return NULL;
}

static void queue_unlink(local_tier *t, entry *e) {
    if (t->hand == e)
        t->hand = e->prev; /* the hand moves on towards the head */
    if (e->prev)
        e->prev->next = e->next;
    else
        t->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        t->tail = e->prev;
    e->prev = e->next = NULL;
}

static void queue_push_head(local_tier *t, entry *e) {
    e->prev = NULL;
    e->next = t->head;
    if (t->head)
        t->head->prev = e;
    t->head = e;
    if (!t->tail)
        t->tail = e;
}

static void remove_entry(local_tier *t, entry *e) {
    entry **pp = bucket_of(t, e->hash);
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    queue_unlink(t, e);
    t->count--;
    t->bytes -= entry_bytes(e);
    cache_blob_unref(e->blob);
    free(e);
}

/* Picks the entry to evict: SIEVE's hand walk, or LRU's tail. */
static entry *victim(local_tier *t) {
    if (t->policy == LOCAL_LRU)
        return t->tail;
    entry *e = t->hand ? t->hand : t->tail;
    while (e && e->visited) {
        e->visited = 0;
        e = e->prev ? e->prev : t->tail;
    }
    return e;
}

static void evict_to_fit(local_tier *t, size_t need) {
    while (t->count && t->bytes + need > t->max_bytes) {
        entry *v = victim(t);
        assert(v);
        if (t->policy == LOCAL_SIEVE)
            t->hand = v->prev;
        remove_entry(t, v);
        t->evictions++;
    }
}

static void grow(local_tier *t) {
    size_t n = t->nbuckets * 2;
    entry **b = sd_xcalloc(n, sizeof *b);
    for (size_t i = 0; i < t->nbuckets; i++) {
        entry *e = t->buckets[i];
        while (e) {
            entry *next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = n;
}

cache_blob *local_get(local_tier *t, const char *key, size_t klen, uint64_t now_ms) {
    entry *e = find(t, key, klen, cache_hash(key, klen));
    if (!e)
        return NULL;
    if (e->expires_ms <= now_ms) {
        remove_entry(t, e);
        return NULL;
    }
    if (t->policy == LOCAL_LRU) {
        queue_unlink(t, e);
        queue_push_head(t, e);
    } else {
        e->visited = 1;
    }
    return e->blob;
}

void local_put(local_tier *t, const char *key, size_t klen, cache_blob *b, uint64_t expires_ms) {
    uint64_t h = cache_hash(key, klen);
    entry *old = find(t, key, klen, h);
    if (old)
        remove_entry(t, old);
    size_t need = klen + b->len + ENTRY_OVERHEAD;
    if (need > t->max_bytes)
        return;
    evict_to_fit(t, need);
    entry *e = sd_xcalloc(1, sizeof *e + klen);
    memcpy(e->key, key, klen);
    e->klen = klen;
    e->hash = h;
    e->expires_ms = expires_ms;
    e->blob = cache_blob_ref(b);
    entry **pp = bucket_of(t, h);
    e->hnext = *pp;
    *pp = e;
    queue_push_head(t, e);
    t->count++;
    t->bytes += need;
    if (t->count > t->nbuckets)
        grow(t);
}

int local_del(local_tier *t, const char *key, size_t klen) {
    entry *e = find(t, key, klen, cache_hash(key, klen));
    if (!e)
        return 0;
    remove_entry(t, e);
    return 1;
}

void local_clear(local_tier *t) {
    while (t->head)
        remove_entry(t, t->head);
    t->hand = NULL;
}

size_t local_entry_cost(size_t klen, size_t vlen) {
    return klen + vlen + ENTRY_OVERHEAD;
}
size_t local_bytes(const local_tier *t) {
    return t->bytes;
}
size_t local_count(const local_tier *t) {
    return t->count;
}
uint64_t local_evictions(const local_tier *t) {
    return t->evictions;
}

void local_free(local_tier *t) {
    if (!t)
        return;
    local_clear(t);
    free(t->buckets);
    free(t);
}
