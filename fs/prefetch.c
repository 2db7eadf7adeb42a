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
 *   lands after a write began (its bytes would be older than the write's).  A READ of
 *   the file marks it PUSHED (NONE) or RACED (PUSHING): it brings the pages itself, and a
 *   RACED push stores nothing -- the store would only wait for the pages that READ holds.
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
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>

#include "prefetch.h"

#define PF_MAX     (256 << 10)  /* files up to this size are pushed */
#define PF_BATCH   256          /* files pushed per trigger */
#define PF_CHUNK   8            /* files taken from a directory between looks at the queue */
#define PF_QUEUE   256          /* a stack: the directory triggered last comes first */
#define PF_HOT_NS  1000000000ll /* a READ this recent: the mount is being read file by file */
#define PF_RETRIES 50           /* per chunk: stores that found no kernel inode yet */
#define PF_RETRY_NS 10000

enum { PF_NONE, PF_PUSHING, PF_PUSHED, PF_NEVER, PF_RACED };

struct pf_dir {                 /* dir->pf: small image files in listing order */
	char **names;
	size_t n, cap, next;    /* next: the first not yet handed to the pusher */
	size_t budget;          /* how many more the pusher may take before the next trigger */
	bool queued;            /* on the queue (which holds a reference to dir) */
	bool early;             /* listed while hot: queue at once, before any READ */
};

struct pf {
	struct ovl_fs *fs;
	struct fuse_session *se;
	pthread_t thr;
	char *buf;              /* the pusher's: one file at a time */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct ovl_node *q[PF_QUEUE];   /* q[qn - 1] is the top */
	int qn;
	bool stop;
	long long last_read;    /* CLOCK_MONOTONIC_COARSE ns of the last READ at offset 0 */
};

static long long pf_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static bool pf_image_top(struct ovl_fs *fs, struct ovl_node *n)
{
	return n->nlent > 0 && fs->layers[n->lent[0].layer]->root_fd < 0;
}

static void pf_names_clear(struct pf_dir *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->names[i]);
	d->n = d->next = d->budget = 0;
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

/* dir leaves the queue: drop its names once all were handed out.  Caller holds dir->lock. */
static void pf_dir_idle(struct ovl_node *dir)
{
	struct pf_dir *d = dir->pf;

	if (!d)
		return;
	d->queued = false;
	if (d->next >= d->n) {
		pf_dir_free(d);
		dir->pf = NULL;
	}
}

/*
 * Queue dir on top, the queue taking over its reference; false when the queue is full.
 * Last in, first out: a program that walks a tree depth-first reads a subdirectory it
 * just listed before it returns to the rest of its parent, so that comes first.
 */
static bool pf_enqueue(struct pf *pf, struct ovl_node *dir)
{
	bool ok;

	pthread_mutex_lock(&pf->lock);
	ok = pf->qn < PF_QUEUE && !pf->stop;
	if (ok) {
		pf->q[pf->qn++] = dir;
		pthread_cond_signal(&pf->cond);
	}
	pthread_mutex_unlock(&pf->lock);
	return ok;
}

/* Give dir (d = dir->pf) a fresh budget and queue it unless it is queued.  Caller holds
 * dir->lock; the kernel holds dir (a request on it is in progress). */
static void pf_trigger(struct pf *pf, struct ovl_node *dir, struct pf_dir *d)
{
	d->budget = PF_BATCH;
	if (d->queued || d->next >= d->n)
		return;
	d->queued = true;
	ovl_node_get(dir);
	if (!pf_enqueue(pf, dir)) {     /* full: a later trigger tries again */
		d->queued = false;
		ovl_node_put_many(pf->fs, &dir, 1);
	}
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
	/* A new list while the mount is being read file by file: its files are likely read
	 * next, so they are pushed without waiting for a READ of one of them.  The pusher
	 * waits for dir->lock, which readdirplus holds: it sees the whole listing. */
	if (d->n == 0 && !d->queued)
		d->early = pf_now() - __atomic_load_n(&pf->last_read, __ATOMIC_RELAXED) <
			   PF_HOT_NS;
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 64;
		char **names = realloc(d->names, cap * sizeof(*names));

		if (!names)
			return;
		d->names = names;
		d->cap = cap;
	}
	if (!(copy = strdup(name)))
		return;
	d->names[d->n++] = copy;
	if (d->early) {
		d->early = false;
		pf_trigger(pf, dir, d);
	}
}

void pf_read(struct pf *pf, struct ovl_node *n)
{
	struct ovl_node *dir = n->parent;
	int none = PF_NONE;

	if (!pf || !dir)
		return;
	__atomic_store_n(&pf->last_read, pf_now(), __ATOMIC_RELAXED);
	/* This READ brings n's pages in itself: no push for it. */
	if (!__atomic_compare_exchange_n(&n->pf_state, &none, PF_PUSHED, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) && none == PF_PUSHING)
		__atomic_compare_exchange_n(&n->pf_state, &none, PF_RACED, false,
					    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
	pthread_mutex_lock(&dir->lock);         /* n holds dir, so dir is alive here */
	if (dir->pf)
		pf_trigger(pf, dir, dir->pf);
	pthread_mutex_unlock(&dir->lock);
}

void pf_block(struct pf *pf, struct ovl_node *n)
{
	for (;;) {
		int st = __atomic_load_n(&n->pf_state, __ATOMIC_ACQUIRE);

		if (st == PF_NEVER)
			return;
		if (st == PF_PUSHING || st == PF_RACED) {
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

/* Read the whole file through its image layer into buf; its length, or < 0. */
static ssize_t pf_load(struct pf *pf, struct ovl_node *n, char *buf)
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
		len = l->ops->read(lf, buf + got, PF_MAX + 1 - got, got);
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

/*
 * Store len bytes of buf as n's pages.  A directory queued while it was being listed can
 * get here before the kernel has made the inodes of that listing (ENOENT): they are on
 * their way, so try again shortly, a few times per chunk.  ENOENT for good means the
 * kernel forgot n; nothing to do then.
 */
static void pf_store(struct pf *pf, struct ovl_node *n, char *buf, size_t len, int *retries)
{
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(len);

	bv.buf[0].mem = buf;
	while (fuse_lowlevel_notify_store(pf->se, (fuse_ino_t)(uintptr_t)n, 0, &bv,
					  FUSE_BUF_NO_SPLICE) == -ENOENT && *retries > 0) {
		--*retries;
		nanosleep(&(struct timespec){ 0, PF_RETRY_NS }, NULL);
	}
}

/* Push name of dir unless its state says otherwise; the node it pushed (referenced), or
 * NULL. */
static struct ovl_node *pf_push(struct pf *pf, struct ovl_node *dir, const char *name,
				int *retries)
{
	struct ovl_node *n;
	int none = PF_NONE;
	ssize_t len;

	pthread_rwlock_rdlock(&pf->fs->tree_lock);
	n = ovl_node_find(pf->fs, dir, name);
	if (n && (!n->hashed || !__atomic_load_n(&n->nlookup, __ATOMIC_SEQ_CST) ||
		  __atomic_load_n(&n->pf_state, __ATOMIC_ACQUIRE) != PF_NONE))
		n = NULL;
	if (n)
		ovl_node_get(n);
	pthread_rwlock_unlock(&pf->fs->tree_lock);
	if (!n)
		return NULL;
	if (__atomic_compare_exchange_n(&n->pf_state, &none, PF_PUSHING, false,
					__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		len = pf_load(pf, n, pf->buf);
		if (len > 0 && __atomic_load_n(&n->pf_state, __ATOMIC_ACQUIRE) == PF_PUSHING)
			pf_store(pf, n, pf->buf, len, retries);
		__atomic_store_n(&n->pf_state, PF_PUSHED, __ATOMIC_RELEASE);
	}
	return n;
}

/*
 * Push the next few names of dir, whose queue reference we hold.  If it has more within
 * its budget it goes back on top of the queue: it goes on next unless a directory was
 * triggered meanwhile (one the program has just gone into).
 */
static void pf_chunk(struct pf *pf, struct ovl_node *dir)
{
	struct ovl_node *done[PF_CHUNK + 2];
	char *names[PF_CHUNK];
	size_t k = 0, nd = 0;
	int retries = PF_RETRIES;
	struct pf_dir *d;
	bool more;

	pthread_mutex_lock(&dir->lock);
	d = dir->pf;
	while (d && k < PF_CHUNK && d->budget && d->next < d->n) {
		names[k++] = strdup(d->names[d->next++]);
		d->budget--;
	}
	more = d && d->budget && d->next < d->n;
	if (more)
		ovl_node_get(dir);      /* one for the queue, one for this chunk */
	else
		pf_dir_idle(dir);
	pthread_mutex_unlock(&dir->lock);
	if (more && !pf_enqueue(pf, dir)) {
		pthread_mutex_lock(&dir->lock);
		pf_dir_idle(dir);
		pthread_mutex_unlock(&dir->lock);
		done[nd++] = dir;
	}
	for (size_t i = 0; i < k; i++) {
		if (names[i] && !__atomic_load_n(&pf->stop, __ATOMIC_ACQUIRE) &&
		    (done[nd] = pf_push(pf, dir, names[i], &retries)))
			nd++;
		free(names[i]);
	}
	done[nd++] = dir;
	ovl_node_put_many(pf->fs, done, nd);
}

/* The directory queued last, or NULL.  Caller holds pf->lock. */
static struct ovl_node *pf_pop(struct pf *pf)
{
	return pf->qn ? pf->q[--pf->qn] : NULL;
}

static void *pf_main(void *arg)
{
	struct pf *pf = arg;
	struct ovl_node *dir;

	prctl(PR_SET_TIMERSLACK, 1000ul);       /* PF_RETRY_NS sleeps that short */
	pthread_mutex_lock(&pf->lock);
	for (;;) {
		while (!pf->qn && !pf->stop)
			pthread_cond_wait(&pf->cond, &pf->lock);
		dir = pf_pop(pf);
		pthread_mutex_unlock(&pf->lock);
		if (!dir)
			break;                  /* stopping, nothing left */
		if (__atomic_load_n(&pf->stop, __ATOMIC_ACQUIRE))
			ovl_node_put_many(pf->fs, &dir, 1);    /* stopping: drop what is still queued */
		else
			pf_chunk(pf, dir);
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
