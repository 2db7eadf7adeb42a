// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Read-ahead across the small files of image layers (see prefetch.h).
 *
 * Why: reading every file of a tree costs one READ round trip per small file, the whole
 * difference to the kernel's squashfs on such a walk.  Consecutive files of a directory
 * share fragment blocks, so decompressing the next ones costs little once the first is
 * read; FUSE_NOTIFY_STORE puts their bytes in the kernel's page cache before the program
 * asks (the kernel keeps them: every open here is FOPEN_KEEP_CACHE).
 *
 * Rules that keep the page cache right:
 * - only files whose top layer is an image (they never change) of size 1..PF_MAX;
 * - node->pf_state: NONE -> PUSHING -> PUSHED by the pusher, and -> NEVER by pf_block()
 *   before a write open or truncate, which waits out a push in flight.  So a push never
 *   lands after a write began (its bytes would be older than the write's).
 * - the pusher holds no lock while it stores: the kernel may make it wait for a page that
 *   a reader locked, and that reader's READ must be served meanwhile.
 * - nodes are held by reference (nref) while queued or pushed, and dropped under
 *   tree_lock exclusive, as FORGET does.
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefetch.h"

#define PF_MAX   (256 << 10)    /* files up to this size are pushed */
#define PF_BATCH 256            /* files per READ that reaches us */
#define PF_QUEUE 64

enum { PF_NONE, PF_PUSHING, PF_PUSHED, PF_NEVER };

struct pf_dir {                 /* dir->pf: small image files in listing order */
	char **names;
	size_t n, cap, next;    /* next: the first not yet handed to the pusher */
	bool queued;
};

struct pf {
	struct ovl_fs *fs;
	struct fuse_session *se;
	pthread_t thr;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct ovl_node *q[PF_QUEUE];
	int qh, qn;
	bool stop;
	char *buf;
};

static bool pf_image_top(struct ovl_fs *fs, struct ovl_node *n)
{
	return n->nlent > 0 && fs->layers[n->lent[0].layer]->root_fd < 0;
}

static void pf_names_clear(struct pf_dir *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->names[i]);
	d->n = d->next = 0;
}

void pf_dir_free(void *p)
{
	struct pf_dir *d = p;

	if (!d)
		return;
	pf_names_clear(d);
	free(d->names);
	free(d);
}

void pf_listed(struct pf *pf, struct ovl_node *dir, const char *name, struct ovl_node *n,
	       const struct stat *st, bool first)
{
	struct pf_dir *d = dir->pf;
	char *copy;

	if (!pf)
		return;
	if (first && d && !d->queued)
		pf_names_clear(d);
	if (!S_ISREG(st->st_mode) || st->st_size <= 0 || st->st_size > PF_MAX ||
	    !pf_image_top(pf->fs, n) ||
	    __atomic_load_n(&n->pf_state, __ATOMIC_ACQUIRE) != PF_NONE)
		return;
	if (!d && !(d = dir->pf = calloc(1, sizeof(*d))))
		return;
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 64;
		char **names = realloc(d->names, cap * sizeof(*names));

		if (!names)
			return;
		d->names = names;
		d->cap = cap;
	}
	if ((copy = strdup(name)))
		d->names[d->n++] = copy;
}

static void pf_put(struct pf *pf, struct ovl_node *n)
{
	pthread_rwlock_wrlock(&pf->fs->tree_lock);
	ovl_node_put(pf->fs, n);
	pthread_rwlock_unlock(&pf->fs->tree_lock);
}

/* dir is no longer queued: drop its names once all were handed out, and its reference. */
static void pf_unqueue(struct pf *pf, struct ovl_node *dir)
{
	struct pf_dir *d;

	pthread_mutex_lock(&dir->lock);
	if ((d = dir->pf)) {
		d->queued = false;
		if (d->next >= d->n) {
			pf_dir_free(d);
			dir->pf = NULL;
		}
	}
	pthread_mutex_unlock(&dir->lock);
	pf_put(pf, dir);
}

void pf_read(struct pf *pf, struct ovl_node *n)
{
	struct ovl_node *dir = n->parent;
	struct pf_dir *d;
	bool queue = false;

	if (!pf || !dir)
		return;
	/* This READ brings n's pages in itself: no push for it. */
	int none = PF_NONE;

	__atomic_compare_exchange_n(&n->pf_state, &none, PF_PUSHED, false, __ATOMIC_ACQ_REL,
				    __ATOMIC_ACQUIRE);
	pthread_mutex_lock(&dir->lock);
	d = dir->pf;
	if (d && !d->queued && d->next < d->n) {
		d->queued = queue = true;
		ovl_node_get(dir);      /* n holds dir, so dir is alive here */
	}
	pthread_mutex_unlock(&dir->lock);
	if (!queue)
		return;
	pthread_mutex_lock(&pf->lock);
	if (pf->qn < PF_QUEUE && !pf->stop) {
		pf->q[(pf->qh + pf->qn++) % PF_QUEUE] = dir;
		dir = NULL;
		pthread_cond_signal(&pf->cond);
	}
	pthread_mutex_unlock(&pf->lock);
	if (dir)                        /* queue full: let a later READ try again */
		pf_unqueue(pf, dir);
}

void pf_block(struct pf *pf, struct ovl_node *n)
{
	for (;;) {
		int st = __atomic_load_n(&n->pf_state, __ATOMIC_ACQUIRE);

		if (st == PF_NEVER)
			return;
		if (st == PF_PUSHING) {
			usleep(100);
			continue;
		}
		if (!__atomic_compare_exchange_n(&n->pf_state, &st, PF_NEVER, false,
						 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			continue;
		/* Pushed pages are the image's bytes: a write that bypasses the page cache
		 * (passthrough) would leave them stale for a later cached open. */
		if (st == PF_PUSHED && pf)
			fuse_lowlevel_notify_inval_inode(pf->se, (fuse_ino_t)(uintptr_t)n, 0, 0);
		return;
	}
}

/* Read the whole file through its image layer into pf->buf; its length, or < 0. */
static ssize_t pf_load(struct pf *pf, struct ovl_node *n)
{
	struct ovl_fs *fs = pf->fs;
	struct layer_file *lf = NULL;
	struct layer *l;
	char path[PATH_MAX];
	ssize_t len, got = 0;
	int ret;

	pthread_rwlock_rdlock(&fs->tree_lock);
	ret = pf_image_top(fs, n) ? ovl_node_path(n, path, sizeof(path)) : -EINVAL;
	if (!ret) {
		struct lnode ln = ovl_top(n, path);

		l = fs->layers[n->lent[0].layer];
		ret = l->ops->open(l, &ln, O_RDONLY, &lf);
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	if (ret)
		return ret;
	while (got <= PF_MAX) {
		len = l->ops->read(lf, pf->buf + got, PF_MAX + 1 - got, got);
		if (len <= 0) {
			if (len < 0)
				got = len;
			break;
		}
		got += len;
	}
	l->ops->close(lf);
	return got > PF_MAX ? -EFBIG : got;
}

static void pf_push(struct pf *pf, struct ovl_node *dir, const char *name)
{
	struct ovl_node *n;
	int none = PF_NONE;
	ssize_t len;

	pthread_rwlock_rdlock(&pf->fs->tree_lock);
	n = ovl_node_find(pf->fs, dir, name);
	if (n && (!n->hashed || !__atomic_load_n(&n->nlookup, __ATOMIC_SEQ_CST)))
		n = NULL;
	if (n)
		ovl_node_get(n);
	pthread_rwlock_unlock(&pf->fs->tree_lock);
	if (!n)
		return;
	if (__atomic_compare_exchange_n(&n->pf_state, &none, PF_PUSHING, false,
					__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		len = pf_load(pf, n);
		if (len > 0) {
			struct fuse_bufvec bv = FUSE_BUFVEC_INIT(len);

			bv.buf[0].mem = pf->buf;
			/* ENOENT: the kernel forgot the inode meanwhile; nothing to do. */
			fuse_lowlevel_notify_store(pf->se, (fuse_ino_t)(uintptr_t)n, 0, &bv, 0);
		}
		__atomic_store_n(&n->pf_state, PF_PUSHED, __ATOMIC_RELEASE);
	}
	pf_put(pf, n);
}

static void pf_batch(struct pf *pf, struct ovl_node *dir)
{
	char *names[PF_BATCH];
	struct pf_dir *d;
	size_t k = 0;

	pthread_mutex_lock(&dir->lock);
	d = dir->pf;
	while (d && k < PF_BATCH && d->next < d->n)
		names[k++] = strdup(d->names[d->next++]);
	pthread_mutex_unlock(&dir->lock);
	for (size_t i = 0; i < k; i++) {
		if (names[i] && !__atomic_load_n(&pf->stop, __ATOMIC_ACQUIRE))
			pf_push(pf, dir, names[i]);
		free(names[i]);
	}
	pf_unqueue(pf, dir);
}

/* The oldest queued directory, or NULL.  Caller holds pf->lock. */
static struct ovl_node *pf_pop(struct pf *pf)
{
	struct ovl_node *dir;

	if (!pf->qn)
		return NULL;
	dir = pf->q[pf->qh];
	pf->qh = (pf->qh + 1) % PF_QUEUE;
	pf->qn--;
	return dir;
}

static void *pf_main(void *arg)
{
	struct pf *pf = arg;
	struct ovl_node *dir;

	pthread_mutex_lock(&pf->lock);
	for (;;) {
		while (!pf->qn && !pf->stop)
			pthread_cond_wait(&pf->cond, &pf->lock);
		dir = pf_pop(pf);
		pthread_mutex_unlock(&pf->lock);
		if (!dir)
			break;                  /* stopping, nothing left */
		if (__atomic_load_n(&pf->stop, __ATOMIC_ACQUIRE))
			pf_put(pf, dir);        /* stopping: drop what is still queued */
		else
			pf_batch(pf, dir);
		pthread_mutex_lock(&pf->lock);
	}
	return NULL;
}

struct pf *pf_start(struct ovl_fs *fs, struct fuse_session *se)
{
	struct pf *pf;
	int i;

	for (i = 0; i < fs->nlayers && fs->layers[i]->root_fd >= 0; i++)
		;
	if (i == fs->nlayers)
		return NULL;
	pf = calloc(1, sizeof(*pf));
	if (!pf || !(pf->buf = malloc(PF_MAX + 1))) {
		free(pf);
		return NULL;
	}
	pf->fs = fs;
	pf->se = se;
	pthread_mutex_init(&pf->lock, NULL);
	pthread_cond_init(&pf->cond, NULL);
	if (pthread_create(&pf->thr, NULL, pf_main, pf) != 0) {
		free(pf->buf);
		free(pf);
		return NULL;
	}
	fs->pf_free = pf_dir_free;
	return pf;
}

void pf_stop(struct pf *pf)
{
	if (!pf)
		return;
	pthread_mutex_lock(&pf->lock);
	pf->stop = true;
	pthread_cond_signal(&pf->cond);
	pthread_mutex_unlock(&pf->lock);
	pthread_join(pf->thr, NULL);
	pthread_mutex_destroy(&pf->lock);
	pthread_cond_destroy(&pf->cond);
	free(pf->buf);
	free(pf);
}
