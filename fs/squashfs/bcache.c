// SPDX-License-Identifier: GPL-2.0-or-later
/* Sharded LRU of decompressed blocks: see bcache.h. */
#include <pthread.h>
#include <stdlib.h>

#include "squashfs/bcache.h"

#define BC_SHARDS 16
#define BC_MIN_PER_SHARD 8      /* typical entries: fewer and one shard evicts too soon */

struct bc_shard {
	pthread_mutex_t lock;
	struct bc_entry **buckets;
	size_t mask;
	struct bc_link lru;       /* list head */
	size_t bytes, max_bytes;
	uint64_t hits, misses;
};

struct bcache {
	unsigned nshards;       /* a power of two <= BC_SHARDS */
	struct bc_shard shard[BC_SHARDS];
};

static inline uint64_t bc_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return k;
}

static struct bc_shard *bc_shard_of(struct bcache *c, uint64_t h)
{
	return &c->shard[h & (c->nshards - 1)];
}

struct bcache *bc_create(size_t max_bytes, size_t typical_entry)
{
	struct bcache *c = calloc(1, sizeof(*c));
	size_t per, nb = 64;

	if (!c)
		return NULL;
	if (typical_entry == 0)
		typical_entry = 4096;
	c->nshards = BC_SHARDS;
	while (c->nshards > 1 && max_bytes / c->nshards < BC_MIN_PER_SHARD * typical_entry)
		c->nshards >>= 1;
	per = max_bytes / c->nshards;
	while (nb < per / typical_entry && nb < (1u << 20))
		nb <<= 1;
	for (unsigned i = 0; i < c->nshards; i++) {
		struct bc_shard *s = &c->shard[i];

		pthread_mutex_init(&s->lock, NULL);
		s->buckets = calloc(nb, sizeof(*s->buckets));
		if (!s->buckets) {
			bc_destroy(c);
			return NULL;
		}
		s->mask = nb - 1;
		s->lru.prev = s->lru.next = &s->lru;
		s->max_bytes = per;
	}
	return c;
}

struct bc_entry *bc_alloc(size_t cap)
{
	struct bc_entry *e = malloc(sizeof(*e) + cap);

	if (!e)
		return NULL;
	e->cap = cap;
	e->len = 0;
	e->aux = 0;
	e->refs = 1;
	e->hnext = NULL;
	e->lru.prev = e->lru.next = NULL;
	return e;
}

void bc_free(struct bc_entry *e)
{
	free(e);
}

void bc_put(struct bc_entry *e)
{
	if (e && __atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(e);
}

static void lru_unlink(struct bc_entry *e)
{
	e->lru.prev->next = e->lru.next;
	e->lru.next->prev = e->lru.prev;
}

static void lru_push(struct bc_shard *s, struct bc_entry *e)
{
	e->lru.next = s->lru.next;
	e->lru.prev = &s->lru;
	s->lru.next->prev = &e->lru;
	s->lru.next = &e->lru;
}

static struct bc_entry **bc_slot(struct bc_shard *s, uint64_t h, uint64_t key)
{
	struct bc_entry **p = &s->buckets[(h / BC_SHARDS) & s->mask];

	while (*p && (*p)->key != key)
		p = &(*p)->hnext;
	return p;
}

struct bc_entry *bc_get(struct bcache *c, uint64_t key)
{
	uint64_t h = bc_hash(key);
	struct bc_shard *s = bc_shard_of(c, h);
	struct bc_entry *e;

	pthread_mutex_lock(&s->lock);
	e = *bc_slot(s, h, key);
	if (e) {
		__atomic_add_fetch(&e->refs, 1, __ATOMIC_RELAXED);
		lru_unlink(e);
		lru_push(s, e);
		s->hits++;
	} else {
		s->misses++;
	}
	pthread_mutex_unlock(&s->lock);
	return e;
}

/* Drop least recently used entries until the shard fits (never the one just added). */
static void bc_evict(struct bc_shard *s, struct bc_entry *keep)
{
	while (s->bytes > s->max_bytes && s->lru.prev != &s->lru &&
	       s->lru.prev != &keep->lru) {
		struct bc_entry *v = (struct bc_entry *)s->lru.prev, **p;
		uint64_t vh = bc_hash(v->key);

		p = bc_slot(s, vh, v->key);
		if (*p == v)
			*p = v->hnext;
		lru_unlink(v);
		s->bytes -= v->cap + sizeof(*v);
		bc_put(v);
	}
}

struct bc_entry *bc_insert(struct bcache *c, struct bc_entry *e)
{
	uint64_t h = bc_hash(e->key);
	struct bc_shard *s = bc_shard_of(c, h);
	struct bc_entry **p, *old;

	pthread_mutex_lock(&s->lock);
	p = bc_slot(s, h, e->key);
	old = *p;
	if (old) {
		__atomic_add_fetch(&old->refs, 1, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&s->lock);
		bc_put(e);
		return old;
	}
	e->hnext = NULL;
	*p = e;
	e->refs = 2;            /* the cache's and the caller's */
	lru_push(s, e);
	s->bytes += e->cap + sizeof(*e);
	bc_evict(s, e);
	pthread_mutex_unlock(&s->lock);
	return e;
}

void bc_stats(struct bcache *c, uint64_t *hits, uint64_t *misses)
{
	*hits = *misses = 0;
	for (unsigned i = 0; i < c->nshards; i++) {
		pthread_mutex_lock(&c->shard[i].lock);
		*hits += c->shard[i].hits;
		*misses += c->shard[i].misses;
		pthread_mutex_unlock(&c->shard[i].lock);
	}
}

void bc_destroy(struct bcache *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->nshards; i++) {
		struct bc_shard *s = &c->shard[i];

		if (s->buckets) {
			struct bc_link *e = s->lru.next;

			while (e != &s->lru) {
				struct bc_link *n = e->next;

				bc_put((struct bc_entry *)e);
				e = n;
			}
		}
		free(s->buckets);
		pthread_mutex_destroy(&s->lock);
	}
	free(c);
}
