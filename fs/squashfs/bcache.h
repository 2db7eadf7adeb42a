/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A sharded LRU cache of decompressed blocks keyed by their disk offset, with a memory
 * bound.  Entries are reference counted: a reader takes a reference under the shard lock,
 * copies out without any lock, and drops it; eviction only unlinks, the last reference
 * frees.  Two threads missing on the same key both decompress; the second insert returns
 * the first one's entry and frees its own, which is cheaper than making threads wait.
 */
#ifndef STRATA_SQFS_BCACHE_H
#define STRATA_SQFS_BCACHE_H

#include <stdint.h>
#include <stddef.h>

struct bc_link {
	struct bc_link *prev, *next;
};

struct bc_entry {
	struct bc_link lru;       /* first: LRU list, most recent at head */
	uint64_t key;
	uint64_t aux;             /* caller's: next metadata block location */
	uint32_t len;             /* valid bytes in data */
	uint32_t cap;
	int refs;                 /* atomic; the cache holds one while linked */
	struct bc_entry *hnext;   /* hash chain */
	unsigned char data[];
};

struct bcache;

struct bcache *bc_create(size_t max_bytes, size_t typical_entry);
void bc_destroy(struct bcache *c);

struct bc_entry *bc_alloc(size_t cap);
/* Free an entry that was never inserted. */
void bc_free(struct bc_entry *e);
/* Referenced entry for key, or NULL. */
struct bc_entry *bc_get(struct bcache *c, uint64_t key);
/* Insert e (whose key is set); returns a referenced entry for e->key, which is e or an
 * entry another thread inserted first (then e is freed). */
struct bc_entry *bc_insert(struct bcache *c, struct bc_entry *e);
void bc_put(struct bc_entry *e);
/* hits, misses */
void bc_stats(struct bcache *c, uint64_t *hits, uint64_t *misses);

#endif
