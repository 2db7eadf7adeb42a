// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * File data: a pipeline of one reader (the calling thread), N compressor threads and one
 * writer thread around a ring of block slots.  Slots carry a sequence number; the writer
 * takes them strictly in sequence order, so the image bytes do not depend on which worker
 * finished first.  Only `cap` blocks are ever in flight: memory stays bounded however big
 * the tree is.
 *
 * Dedup: the reader hashes every file (XXH3-128) as it streams it; a file whose size and
 * hash match an earlier one gets an END slot listing those candidates, and the writer,
 * which by then has written both, compares the stored block lists and bytes.  Equal bytes
 * prove equal content (decompression is a function), so only then is the new copy dropped
 * by rewinding the write position - a file's blocks are always the last thing written when
 * its END slot arrives, because fragment blocks are only queued between files.  Tails
 * (the last partial block, or a whole small file) are packed into fragment blocks and
 * deduplicated the same way, verified against the earlier tail's bytes.
 *
 * Files come from the walk (flatten.c) while it runs.  Prefetch threads read whole small
 * files ahead of the reader, so per-file open/read/close latency overlaps; holes of host
 * files are found with SEEK_DATA and never read.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "squashfs/writer_int.h"

#define MAX_CANDS 4

enum { J_BLOCK, J_FRAG, J_END };
enum { S_FREE, S_PENDING, S_DONE };

struct slot {
	int kind, state;
	struct wnode *file;
	uint32_t bidx, frag_idx;
	unsigned char *in, *out;
	size_t inlen;
	ssize_t outlen;          /* 0 = store raw */
	struct wnode *cands[MAX_CANDS];
	int ncands;
};

/* dedup tables: (size, hash) -> files, newest first */
struct dd_ent {
	uint64_t size;
	XXH128_hash_t h;
	struct wnode *file;
	struct dd_ent *next;
};

struct dd_tab {
	struct dd_ent **b;
	size_t nb, n;
};

struct pipe {
	struct wctx *c;
	uint32_t bs;
	pthread_mutex_t mu;
	pthread_cond_t work_cv, done_cv, free_cv;
	struct slot *ring;
	size_t cap;
	uint64_t submitted, next_work, next_write;
	bool quit;
	int err;                 /* first writer/worker error; message already in c->err */

	pthread_t *workers;
	int nworkers, started;
	pthread_t writer;
	bool writer_started;
	struct sqfs_codec **codecs;

	/* reader-owned */
	unsigned char *fragbuf, *tailbuf, *cmpbuf;
	size_t fragfill;
	uint32_t nfrags;
	struct dd_tab files, tails;

	/* writer-owned */
	unsigned char *wbuf1, *wbuf2;

	/* prefetch threads: read whole small files ahead of the reader, in parallel */
	pthread_mutex_t pf_mu;
	pthread_cond_t pf_cv;       /* prefetchers wait here */
	pthread_cond_t rd_cv;       /* the reader waits here */
	int pf_waiting;
	bool rd_waiting;
	pthread_t *pf;
	int npf, pf_started;
	size_t pf_next;          /* next file index not yet claimed by anyone */
	size_t rd_index;         /* the reader's file index */
	uint64_t pf_bytes;       /* bytes held in prefetch buffers */
	bool pf_quit;
};

enum { PF_NONE, PF_CLAIMED, PF_READY, PF_SKIPPED };
#define PF_WINDOW 4096           /* files ahead of the reader */
#define PF_BUDGET (16u << 20)    /* bytes held ahead of the reader */

/* ---- dedup tables ----------------------------------------------------------------- */

static int dd_add(struct dd_tab *t, uint64_t size, XXH128_hash_t h, struct wnode *f)
{
	struct dd_ent *e;

	if (t->n + 1 > t->nb) {
		size_t nb = t->nb ? t->nb * 2 : 1024;
		struct dd_ent **b = calloc(nb, sizeof(*b));
		if (!b)
			return -ENOMEM;
		for (size_t i = 0; i < t->nb; i++)
			for (struct dd_ent *x = t->b[i], *nx; x; x = nx) {
				nx = x->next;
				/* keep newest-first order inside a chain by appending in reverse */
				x->next = b[(x->h.low64 ^ x->size) & (nb - 1)];
				b[(x->h.low64 ^ x->size) & (nb - 1)] = x;
			}
		free(t->b);
		t->b = b;
		t->nb = nb;
	}
	e = malloc(sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->size = size;
	e->h = h;
	e->file = f;
	e->next = t->b[(h.low64 ^ size) & (t->nb - 1)];
	t->b[(h.low64 ^ size) & (t->nb - 1)] = e;
	t->n++;
	return 0;
}

static int dd_find(struct dd_tab *t, uint64_t size, XXH128_hash_t h, struct wnode **out, int max)
{
	int n = 0;

	if (!t->nb)
		return 0;
	for (struct dd_ent *e = t->b[(h.low64 ^ size) & (t->nb - 1)]; e && n < max; e = e->next)
		if (e->size == size && XXH128_isEqual(e->h, h))
			out[n++] = e->file;
	return n;
}

static void dd_free(struct dd_tab *t)
{
	for (size_t i = 0; i < t->nb; i++)
		for (struct dd_ent *e = t->b[i], *nx; e; e = nx) {
			nx = e->next;
			free(e);
		}
	free(t->b);
}

static XXH128_hash_t content_hash(struct pipe *p, XXH3_state_t *s)
{
	XXH128_hash_t zero = { 0, 0 };

	return p->c->force_collision ? zero : XXH3_128bits_digest(s);
}

/* ---- the writer thread ------------------------------------------------------------ */

static int put_data(struct pipe *p, struct slot *s, uint32_t *word)
{
	struct wctx *c = p->c;
	const void *buf = s->outlen > 0 ? s->out : s->in;
	size_t len = s->outlen > 0 ? (size_t)s->outlen : s->inlen;
	int ret = wr_pwrite(c, buf, len, c->pos);

	if (ret)
		return ret;
	*word = (uint32_t)len | (s->outlen > 0 ? 0 : SQFS_BLOCK_UNCOMPRESSED);
	c->pos += len;
	__atomic_store_n(&c->st->bytes_out, c->pos, __ATOMIC_RELAXED);
	return 0;
}

static int put_frag(struct pipe *p, struct slot *s)
{
	struct wctx *c = p->c;
	uint32_t word;
	uint64_t at = c->pos;
	int ret;

	if (s->frag_idx >= c->capfrags) {
		uint32_t cap = c->capfrags ? c->capfrags * 2 : 256;
		struct sqfs_fragment_entry *v;
		while (cap <= s->frag_idx)
			cap *= 2;
		v = realloc(c->frags, cap * sizeof(*v));
		if (!v)
			return wr_error(c, -ENOMEM, "out of memory");
		c->frags = v;
		c->capfrags = cap;
	}
	ret = put_data(p, s, &word);
	if (ret)
		return ret;
	c->frags[s->frag_idx].start = at;
	c->frags[s->frag_idx].size = word;
	c->frags[s->frag_idx].unused = 0;
	return 0;
}

static uint64_t stored_bytes(const struct wnode *f)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < f->nblocks; i++)
		n += SQFS_BLOCK_SIZE(f->blocks[i]);
	return n;
}

static int same_stored(struct pipe *p, struct wnode *a, struct wnode *b, bool *same)
{
	struct wctx *c = p->c;
	uint64_t len = stored_bytes(a), off = 0;

	*same = false;
	if (a->nblocks != b->nblocks || memcmp(a->blocks, b->blocks, a->nblocks * 4))
		return 0;
	while (off < len) {
		size_t n = len - off > p->bs ? p->bs : (size_t)(len - off);
		if (pread(c->fd, p->wbuf1, n, a->blocks_start + off) != (ssize_t)n ||
		    pread(c->fd, p->wbuf2, n, b->blocks_start + off) != (ssize_t)n)
			return wr_error(c, -EIO, "cannot read back the image being written");
		if (memcmp(p->wbuf1, p->wbuf2, n))
			return 0;
		off += n;
	}
	*same = true;
	return 0;
}

/* END of a file with whole-file dedup candidates: share an identical earlier copy. */
static int put_end(struct pipe *p, struct slot *s)
{
	struct wnode *f = s->file;
	bool same = false;
	int ret;

	for (int i = 0; i < s->ncands; i++) {
		struct wnode *cand = s->cands[i];

		ret = same_stored(p, cand, f, &same);
		if (ret)
			return ret;
		if (!same)
			continue;
		if (f->data_started)
			p->c->pos = f->blocks_start;   /* f was the last thing written */
		f->blocks_start = cand->blocks_start;
		p->c->st->dup_files++;
		/* only the full blocks: the reader may still be placing the tail */
		p->c->st->dup_bytes += (uint64_t)f->nblocks * p->bs;
		return 0;
	}
	if (s->ncands)
		__atomic_add_fetch(&p->c->st->hash_collisions, 1, __ATOMIC_RELAXED);
	return 0;
}

static int write_slot(struct pipe *p, struct slot *s)
{
	struct wnode *f = s->file;

	switch (s->kind) {
	case J_BLOCK:
		if (!f->data_started) {
			f->blocks_start = p->c->pos;
			f->data_started = true;
		}
		return put_data(p, s, &f->blocks[s->bidx]);
	case J_FRAG:
		return put_frag(p, s);
	default:
		return put_end(p, s);
	}
}

static void fail_locked(struct pipe *p, int err)
{
	if (!p->err)
		p->err = err;
	p->quit = true;
	pthread_cond_broadcast(&p->work_cv);
	pthread_cond_broadcast(&p->done_cv);
	pthread_cond_broadcast(&p->free_cv);
}

static void *writer_main(void *arg)
{
	struct pipe *p = arg;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		struct slot *s = &p->ring[p->next_write % p->cap];

		while (!p->err && !(p->next_write < p->submitted && s->state == S_DONE) &&
		       !(p->quit && p->next_write >= p->submitted))
			pthread_cond_wait(&p->done_cv, &p->mu);
		if (p->err || p->next_write >= p->submitted)
			break;
		pthread_mutex_unlock(&p->mu);
		int ret = write_slot(p, s);
		pthread_mutex_lock(&p->mu);
		if (ret) {
			fail_locked(p, ret);
			break;
		}
		s->state = S_FREE;
		p->next_write++;
		pthread_cond_broadcast(&p->free_cv);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* ---- compressor threads ----------------------------------------------------------- */

struct worker_arg {
	struct pipe *p;
	int idx;
};

static void *worker_main(void *arg)
{
	struct worker_arg *wa = arg;
	struct pipe *p = wa->p;
	struct sqfs_codec *codec = p->codecs[wa->idx];

	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->err && p->next_work >= p->submitted && !p->quit)
			pthread_cond_wait(&p->work_cv, &p->mu);
		if (p->err || p->next_work >= p->submitted)
			break;
		uint64_t seq = p->next_work++;
		struct slot *s = &p->ring[seq % p->cap];
		pthread_mutex_unlock(&p->mu);

		ssize_t n = 0;
		if (s->kind != J_END)
			n = sqfs_codec_compress(codec, s->in, s->inlen, s->out, p->bs);

		pthread_mutex_lock(&p->mu);
		if (n < 0) {
			wr_error(p->c, (int)n, "compression failed");
			fail_locked(p, (int)n);
			break;
		}
		s->outlen = n;
		s->state = S_DONE;
		if (seq == p->next_write)
			pthread_cond_broadcast(&p->done_cv);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* ---- the reader (calling thread) -------------------------------------------------- */

/* Wait for a free slot; hands it out without submitting (the caller fills it). */
static int get_slot(struct pipe *p, struct slot **s)
{
	int err;

	pthread_mutex_lock(&p->mu);
	while (!p->err && p->submitted - p->next_write >= p->cap)
		pthread_cond_wait(&p->free_cv, &p->mu);
	err = p->err;
	*s = err ? NULL : &p->ring[p->submitted % p->cap];
	pthread_mutex_unlock(&p->mu);
	return err;
}

static int submit(struct pipe *p, struct slot *s)
{
	int err;

	pthread_mutex_lock(&p->mu);
	err = p->err;
	if (!err) {
		s->state = S_PENDING;
		p->submitted++;
		pthread_cond_signal(&p->work_cv);
	}
	pthread_mutex_unlock(&p->mu);
	return err;
}

static int flush_frag(struct pipe *p)
{
	struct slot *s;
	unsigned char *t;
	int ret;

	if (!p->fragfill)
		return 0;
	ret = get_slot(p, &s);
	if (ret)
		return ret;
	s->kind = J_FRAG;
	s->file = NULL;
	s->frag_idx = p->nfrags++;
	/* hand the filled fragment buffer over instead of copying it */
	t = s->in;
	s->in = p->fragbuf;
	p->fragbuf = t;
	s->inlen = p->fragfill;
	p->fragfill = 0;
	return submit(p, s);
}

/* Error about file f, named by its path in its layer. */
static int file_error(struct wctx *c, struct wnode *f, int err, const char *what)
{
	char path[PATH_MAX];

	if (wnode_path(f, path, sizeof(path)))
		strcpy(path, "...");
	return wr_error(c, err, "%s %s/%s", what, f->layer->spec, path);
}

static int read_full(struct wctx *c, struct wnode *f, struct layer_file *lf, void *buf,
		     size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = f->layer->ops->read(lf, (char *)buf + got, len - got,
						(off_t)(off + got));
		if (n == -EINTR)
			continue;
		if (n < 0)
			return file_error(c, f, (int)n, "cannot read");
		if (n == 0)
			return file_error(c, f, -EIO, "file shrank while being read:");
		got += (size_t)n;
	}
	return 0;
}

static int open_src(struct wctx *c, struct wnode *f, struct layer_file **lf)
{
	char path[PATH_MAX];
	struct lnode ln = { .path = path, .ref = f->ref };
	int ret = wnode_path(f, path, sizeof(path));

	if (!ret)
		ret = f->layer->ops->open(f->layer, &ln, O_RDONLY, lf);
	if (ret < 0)
		return file_error(c, f, ret, "cannot open");
	return 0;
}

/* Is the tail of earlier file `cand` byte-identical to tail[len]? */
static int same_tail(struct pipe *p, struct wnode *cand, const unsigned char *tail,
		     size_t len, bool *same)
{
	struct layer_file *lf;
	int ret;

	*same = false;
	if (cand->frag_idx == p->nfrags) {   /* still in the fragment being filled */
		*same = !memcmp(p->fragbuf + cand->frag_off, tail, len);
		return 0;
	}
	ret = open_src(p->c, cand, &lf);
	if (ret)
		return ret;
	ret = read_full(p->c, cand, lf, p->cmpbuf, len, cand->size - len);
	cand->layer->ops->close(lf);
	if (!ret)
		*same = !memcmp(p->cmpbuf, tail, len);
	return ret;
}

static int add_tail(struct pipe *p, struct wnode *f, size_t len)
{
	struct wnode *cands[MAX_CANDS];
	XXH128_hash_t h = { 0, 0 };
	int n = 0, ret;

	if (!p->c->force_collision)
		h = XXH3_128bits(p->tailbuf, len);
	if (!p->c->o->no_dedup)
		n = dd_find(&p->tails, len, h, cands, MAX_CANDS);
	for (int i = 0; i < n; i++) {
		bool same;
		ret = same_tail(p, cands[i], p->tailbuf, len, &same);
		if (ret)
			return ret;
		if (same) {
			f->frag_idx = cands[i]->frag_idx;
			f->frag_off = cands[i]->frag_off;
			p->c->st->dup_frags++;
			p->c->st->dup_frag_bytes += len;
			return 0;
		}
	}
	if (n)
		__atomic_add_fetch(&p->c->st->hash_collisions, 1, __ATOMIC_RELAXED);
	if (p->fragfill + len > p->bs) {
		ret = flush_frag(p);
		if (ret)
			return ret;
	}
	f->frag_idx = p->nfrags;
	f->frag_off = (uint32_t)p->fragfill;
	memcpy(p->fragbuf + p->fragfill, p->tailbuf, len);
	p->fragfill += len;
	return p->c->o->no_dedup ? 0 : dd_add(&p->tails, len, h, f);
}

static bool all_zero(const unsigned char *b, size_t len)
{
	return len && b[0] == 0 && !memcmp(b, b + 1, len - 1);
}

static int end_file(struct pipe *p, struct wnode *f, XXH3_state_t *hs)
{
	XXH128_hash_t h = content_hash(p, hs);
	struct slot *s;
	int ret;

	struct wnode *cands[MAX_CANDS];
	int n;

	if (p->c->o->no_dedup)
		return 0;
	n = dd_find(&p->files, f->size, h, cands, MAX_CANDS);
	if (n) {
		ret = get_slot(p, &s);
		if (ret)
			return ret;
		s->kind = J_END;
		s->file = f;
		s->ncands = n;
		memcpy(s->cands, cands, sizeof(cands));
		ret = submit(p, s);
		if (ret)
			return ret;
	}
	return dd_add(&p->files, f->size, h, f);
}

/* ---- prefetch ------------------------------------------------------------------------ */

/* Read all of a small file without reporting: the reader reports errors in order. */
static int read_whole(struct wnode *f, unsigned char *buf)
{
	char path[PATH_MAX];
	struct lnode ln = { .path = path, .ref = f->ref };
	struct layer_file *lf;
	size_t got = 0;
	int ret = wnode_path(f, path, sizeof(path));

	if (!ret)
		ret = f->layer->ops->open(f->layer, &ln, O_RDONLY, &lf);
	if (ret < 0)
		return ret;
	while (got < f->size) {
		ssize_t n = f->layer->ops->read(lf, buf + got, f->size - got, (off_t)got);
		if (n == -EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? (int)n : -ENODATA;
			break;
		}
		got += (size_t)n;
	}
	f->layer->ops->close(lf);
	return ret;
}

static void *prefetch_main(void *arg)
{
	struct pipe *p = arg;
	int err;

	pthread_mutex_lock(&p->pf_mu);
	for (;;) {
		while (!p->pf_quit && (p->pf_next >= p->rd_index + PF_WINDOW ||
				       p->pf_bytes >= PF_BUDGET)) {
			p->pf_waiting++;
			pthread_cond_wait(&p->pf_cv, &p->pf_mu);
			p->pf_waiting--;
		}
		if (p->pf_quit)
			break;
		size_t j = p->pf_next++;
		pthread_mutex_unlock(&p->pf_mu);

		struct wnode *f = wr_next_file(p->c, j, &err);
		unsigned char *buf = NULL;
		int rerr = 0;
		bool small = f && f->size > 0 && f->size < p->bs;

		if (small) {
			buf = malloc(f->size);
			rerr = buf ? read_whole(f, buf) : -ENOMEM;
		}
		pthread_mutex_lock(&p->pf_mu);
		if (!f)
			break;              /* the walk is over (or failed): nothing left */
		if (small) {
			f->pre = buf;
			f->pre_err = rerr;
			p->pf_bytes += f->size;
		}
		f->pre_state = small ? PF_READY : PF_SKIPPED;
		if (p->rd_waiting)
			pthread_cond_signal(&p->rd_cv);
	}
	pthread_mutex_unlock(&p->pf_mu);
	return NULL;
}

/* The reader is at file i: take its prefetched bytes, or claim it for itself. */
static void prefetch_take(struct pipe *p, size_t i, struct wnode *f)
{
	pthread_mutex_lock(&p->pf_mu);
	p->rd_index = i;
	if (i >= p->pf_next)
		p->pf_next = i + 1;         /* not claimed yet: the reader reads it itself */
	else
		while (f->pre_state != PF_READY && f->pre_state != PF_SKIPPED) {
			p->rd_waiting = true;
			pthread_cond_wait(&p->rd_cv, &p->pf_mu);
			p->rd_waiting = false;
		}
	if (p->pf_waiting)
		pthread_cond_signal(&p->pf_cv);     /* the window moved by one */
	pthread_mutex_unlock(&p->pf_mu);
}

static void prefetch_release(struct pipe *p, struct wnode *f)
{
	if (f->pre_state != PF_READY)
		return;
	free(f->pre);
	f->pre = NULL;
	pthread_mutex_lock(&p->pf_mu);
	p->pf_bytes -= f->size;
	if (p->pf_waiting)
		pthread_cond_signal(&p->pf_cv);
	pthread_mutex_unlock(&p->pf_mu);
}

/* Holes of a host file, found with SEEK_DATA/SEEK_HOLE so that they are never read: a
 * sparse file of many GiB costs a few syscalls.  Without a host fd (image layers) every
 * block is read and zero blocks are still found by looking at them. */
struct holes {
	int fd;
	uint64_t size;
	uint64_t known_until;    /* [checked_from, known_until) is all hole or all data */
	bool is_hole;
};

static bool block_is_hole(struct holes *h, uint64_t off, uint64_t len)
{
	off_t r;

	if (h->fd < 0)
		return false;
	if (off >= h->known_until) {
		r = lseek(h->fd, (off_t)off, SEEK_DATA);
		if (r < 0 && errno == ENXIO)
			r = (off_t)h->size;          /* only a hole up to the end */
		if (r < 0) {
			h->fd = -1;                  /* no SEEK_DATA here: read everything */
			return false;
		}
		if ((uint64_t)r > off) {
			h->is_hole = true;
			h->known_until = (uint64_t)r;
		} else {
			r = lseek(h->fd, (off_t)off, SEEK_HOLE);
			h->is_hole = false;
			h->known_until = r > (off_t)off ? (uint64_t)r : h->size;
		}
	}
	return h->is_hole && off + len <= h->known_until;
}

static const unsigned char zero_block[1u << SQFS_MAX_BLOCK_LOG];

static int stream_file(struct pipe *p, struct wnode *f, XXH3_state_t *hs)
{
	struct wctx *c = p->c;
	uint64_t nfull = f->size / p->bs;
	size_t tail = (size_t)(f->size % p->bs);
	struct layer_file *lf = NULL;
	int ret;

	f->nblocks = (uint32_t)nfull;
	f->blocks = calloc(nfull + 1, sizeof(*f->blocks));
	if (!f->blocks)
		return wr_error(c, -ENOMEM, "out of memory");
	if (!f->size)
		return 0;
	if (f->pre_state == PF_READY) {
		if (f->pre_err)
			return file_error(c, f, f->pre_err, "cannot read");
		memcpy(p->tailbuf, f->pre, tail);
		__atomic_add_fetch(&c->st->bytes_in, tail, __ATOMIC_RELAXED);
		return add_tail(p, f, tail);
	}
	ret = open_src(c, f, &lf);
	if (ret)
		return ret;
	struct holes holes = { .fd = f->layer->ops->host_fd(lf), .size = f->size };
	XXH3_128bits_reset(hs);
	for (uint64_t i = 0; i < nfull; i++) {
		struct slot *s;

		if (block_is_hole(&holes, i * p->bs, p->bs)) {
			XXH3_128bits_update(hs, zero_block, p->bs);
			__atomic_add_fetch(&c->st->bytes_in, p->bs, __ATOMIC_RELAXED);
			f->blocks[i] = 0;
			f->sparse += p->bs;
			c->st->sparse_bytes += p->bs;
			continue;
		}
		ret = get_slot(p, &s);
		if (ret)
			goto out;
		ret = read_full(c, f, lf, s->in, p->bs, i * p->bs);
		if (ret)
			goto out;
		XXH3_128bits_update(hs, s->in, p->bs);
		__atomic_add_fetch(&c->st->bytes_in, p->bs, __ATOMIC_RELAXED);
		if (all_zero(s->in, p->bs)) {
			f->blocks[i] = 0;       /* a hole: nothing stored */
			f->sparse += p->bs;
			c->st->sparse_bytes += p->bs;
			continue;
		}
		s->kind = J_BLOCK;
		s->file = f;
		s->bidx = (uint32_t)i;
		s->inlen = p->bs;
		ret = submit(p, s);
		if (ret)
			goto out;
		wr_progress(c, 0);
	}
	if (tail) {
		ret = read_full(c, f, lf, p->tailbuf, tail, nfull * p->bs);
		if (ret)
			goto out;
		XXH3_128bits_update(hs, p->tailbuf, tail);
		__atomic_add_fetch(&c->st->bytes_in, tail, __ATOMIC_RELAXED);
	}
	f->layer->ops->close(lf);
	lf = NULL;
	/* END goes before any fragment flush so this file's blocks are the last written. */
	if (nfull) {
		ret = end_file(p, f, hs);
		if (ret)
			goto out;
	}
	if (tail)
		ret = add_tail(p, f, tail);
out:
	if (lf)
		f->layer->ops->close(lf);
	return ret;
}

/* ---- setup and teardown ------------------------------------------------------------ */

static int pipe_start(struct pipe *p)
{
	struct wctx *c = p->c;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	p->nworkers = c->o->threads > 0 ? c->o->threads : (ncpu > 0 ? (int)ncpu : 1);
	if (p->nworkers > 256)
		p->nworkers = 256;       /* each holds a compression context */
	/* Two slots per worker keep them busy.  Past 64 MiB of buffers more slots do not
	 * help (workers beyond the slots just wait), and memory must stay bounded. */
	p->cap = 2 * (size_t)p->nworkers + 4;
	if (p->cap * 2 * p->bs > (64u << 20))
		p->cap = (64u << 20) / (2 * p->bs);
	if (p->cap < 4)
		p->cap = 4;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work_cv, NULL);
	pthread_cond_init(&p->done_cv, NULL);
	pthread_cond_init(&p->free_cv, NULL);
	pthread_mutex_init(&p->pf_mu, NULL);
	pthread_cond_init(&p->pf_cv, NULL);
	pthread_cond_init(&p->rd_cv, NULL);
	/* I/O latency, not CPU, is what prefetching hides: a few threads even on few cores */
	p->npf = p->nworkers < 2 ? 2 : (p->nworkers > 4 ? 4 : p->nworkers);
	p->pf = calloc(p->npf, sizeof(*p->pf));
	p->ring = calloc(p->cap, sizeof(*p->ring));
	p->workers = calloc(p->nworkers, sizeof(*p->workers));
	p->codecs = calloc(p->nworkers, sizeof(*p->codecs));
	p->fragbuf = malloc(p->bs);
	p->tailbuf = malloc(p->bs);
	p->cmpbuf = malloc(p->bs);
	p->wbuf1 = malloc(p->bs);
	p->wbuf2 = malloc(p->bs);
	if (!p->ring || !p->pf || !p->workers || !p->codecs || !p->fragbuf || !p->tailbuf ||
	    !p->cmpbuf || !p->wbuf1 || !p->wbuf2)
		return wr_error(c, -ENOMEM, "out of memory");
	for (size_t i = 0; i < p->cap; i++) {
		p->ring[i].in = malloc(p->bs);
		p->ring[i].out = malloc(p->bs);
		if (!p->ring[i].in || !p->ring[i].out)
			return wr_error(c, -ENOMEM, "out of memory");
	}
	for (int i = 0; i < p->nworkers; i++) {
		p->codecs[i] = sqfs_codec_new(&c->o->codec);
		if (!p->codecs[i])
			return wr_error(c, -ENOMEM, "cannot set up the compressor");
	}
	return 0;
}

static void pipe_free(struct pipe *p)
{
	for (size_t i = 0; p->ring && i < p->cap; i++) {
		free(p->ring[i].in);
		free(p->ring[i].out);
	}
	for (int i = 0; p->codecs && i < p->nworkers; i++)
		sqfs_codec_free(p->codecs[i]);
	free(p->ring);
	free(p->workers);
	free(p->codecs);
	free(p->fragbuf);
	free(p->tailbuf);
	free(p->cmpbuf);
	free(p->wbuf1);
	free(p->wbuf2);
	dd_free(&p->files);
	dd_free(&p->tails);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->work_cv);
	pthread_cond_destroy(&p->done_cv);
	pthread_cond_destroy(&p->free_cv);
	pthread_mutex_destroy(&p->pf_mu);
	pthread_cond_destroy(&p->pf_cv);
	pthread_cond_destroy(&p->rd_cv);
	free(p->pf);
}

/* Stop the threads; on error wake everyone, else let them drain the ring. */
static int pipe_join(struct pipe *p, int ret, struct worker_arg *wa)
{
	pthread_mutex_lock(&p->mu);
	if (ret)
		fail_locked(p, ret);
	p->quit = true;
	pthread_cond_broadcast(&p->work_cv);
	pthread_cond_broadcast(&p->done_cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->started; i++)
		pthread_join(p->workers[i], NULL);
	if (p->writer_started)
		pthread_join(p->writer, NULL);
	free(wa);
	return ret ? ret : p->err;
}

int wr_write_data(struct wctx *c)
{
	struct pipe p = { .c = c, .bs = c->o->codec.block_size };
	struct worker_arg *wa = NULL;
	XXH3_state_t *hs = XXH3_createState();
	int ret;

	ret = pipe_start(&p);
	if (ret || !hs) {
		ret = ret ? ret : wr_error(c, -ENOMEM, "out of memory");
		goto out_free;
	}
	wa = calloc(p.nworkers, sizeof(*wa));
	if (!wa) {
		ret = wr_error(c, -ENOMEM, "out of memory");
		goto out_free;
	}
	for (int i = 0; i < p.nworkers; i++) {
		wa[i].p = &p;
		wa[i].idx = i;
		if (pthread_create(&p.workers[i], NULL, worker_main, &wa[i])) {
			ret = wr_error(c, -EAGAIN, "cannot start compressor threads");
			goto out;
		}
		p.started++;
	}
	if (pthread_create(&p.writer, NULL, writer_main, &p)) {
		ret = wr_error(c, -EAGAIN, "cannot start the writer thread");
		goto out;
	}
	p.writer_started = true;

	for (size_t i = 0; i < (size_t)p.npf; i++) {
		if (pthread_create(&p.pf[i], NULL, prefetch_main, &p))
			break;              /* fewer prefetchers only cost speed */
		p.pf_started++;
	}

	for (size_t i = 0; !ret; i++) {
		struct wnode *f = wr_next_file(c, i, &ret);
		if (!f)
			break;
		prefetch_take(&p, i, f);
		ret = stream_file(&p, f, hs);
		prefetch_release(&p, f);
		c->st->files_done++;
		wr_progress(c, 0);
	}
	if (!ret)
		ret = flush_frag(&p);
out:
	/* on error stop the walk too: prefetchers may be waiting for its next file */
	if (ret)
		__atomic_store_n(&c->abort, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&p.pf_mu);
	p.pf_quit = true;
	pthread_cond_broadcast(&p.pf_cv);
	pthread_mutex_unlock(&p.pf_mu);
	for (int i = 0; i < p.pf_started; i++)
		pthread_join(p.pf[i], NULL);
	ret = pipe_join(&p, ret, wa);
	c->nfrags = p.nfrags;
out_free:
	XXH3_freeState(hs);
	pipe_free(&p);
	return ret;
}
