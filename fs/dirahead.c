// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Read-ahead of directories (see dirahead.h).
 *
 * Why: on a cold walk (find, du, a container's first scan) the program and the daemon take
 * turns: the program waits while the daemon merges a directory's listing and stats its
 * entries in the layers, and the daemon idles while the program handles the reply.  Reading
 * the next directories in a second thread overlaps the two, on the CPU that would idle.
 *
 * How:
 * - readdirplus queues the child directories it hands out (da_queue), on a stack: a program
 *   walking depth-first enters the first child of the directory it listed last, so that
 *   comes first.  A directory is marked node->ahead when queued.
 * - The thread pops one, reads its merged listing (ovl_dir_read) and looks its entries up
 *   ahead (ovl_dir_prestat), holding no node lock meanwhile; then it installs the listing
 *   as dir->listing, marked ->ahead, unless a reader started a listing of dir meanwhile
 *   (which clears node->ahead) or holds one.
 * - A reader starting at offset 0 takes such a listing if no namespace change happened
 *   since it was read (fs->gen) and it is at most DA_FRESH_NS old (da_take); otherwise it
 *   reads the directory again, as without read-ahead.  Looked-up entries are used only
 *   while fs->gen is unchanged (ovl_lookup_listed), and only for lower-layer
 *   non-directories, which never change.
 * - Bounds: at most DA_PENDING listings read ahead and not yet taken (the thread waits for
 *   the program to catch up), none with more than OVL_PRESTAT_MAX entries, a queue of
 *   DA_QUEUE directories (the oldest fall off, and one queued more than DA_QUEUED_NS ago is
 *   dropped: the walker went elsewhere).  Listings the program never took are freed once
 *   stale.
 * - Nodes are held by reference (nref) while queued or while their listing waits, and
 *   dropped under tree_lock exclusive, as FORGET does.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>

#include "dirahead.h"

#define DA_QUEUE        1024
#define DA_PENDING      16              /* read ahead, not yet taken */
#define DA_FRESH_NS     2000000000ll
#define DA_QUEUED_NS    1000000000ll    /* queued longer than this: the walker went on */

struct da {
	struct ovl_fs *fs;
	pthread_t thr;
	pthread_mutex_t lock;
	pthread_cond_t cond;            /* queue grew, a listing was taken, or stop */
	pthread_cond_t done;            /* a read-ahead ended (DA_READING -> DA_NONE) */
	struct ovl_node *q[DA_QUEUE];   /* q[qn - 1] is the top */
	long long qt[DA_QUEUE];         /* when each was queued */
	int qn;
	bool stop;
	/* The thread's own: directories whose listing it installed, oldest first. */
	struct ovl_node *ring[DA_PENDING];
	int rn;
	uint64_t read, taken;           /* listings read ahead; taken by a reader */
};

static long long da_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static bool da_fresh(struct da *da, const struct ovl_dir *l)
{
	return l->gen == __atomic_load_n(&da->fs->gen, __ATOMIC_SEQ_CST) &&
	       da_now() - l->made_ns <= DA_FRESH_NS;
}

void da_queue(struct da *da, struct ovl_node **dirs, size_t n)
{
	struct ovl_node *drop[DA_QUEUE];       /* at most one per entry of dirs */
	long long now = da_now();
	size_t nd = 0, i;

	if (n > DA_QUEUE) {     /* dirs[0] ends on top: the last ones would fall off anyway */
		ovl_node_put_many(da->fs, dirs + DA_QUEUE, n - DA_QUEUE);
		n = DA_QUEUE;
	}

	for (i = 0; i < n; i++) {
		pthread_mutex_lock(&dirs[i]->lock);
		if (dirs[i]->ahead == DA_NONE)
			dirs[i]->ahead = DA_QUEUED;
		pthread_mutex_unlock(&dirs[i]->lock);
	}
	pthread_mutex_lock(&da->lock);
	for (i = n; i-- > 0;) {
		if (da->stop) {
			drop[nd++] = dirs[i];
			continue;
		}
		if (da->qn == DA_QUEUE) {       /* the oldest falls off the bottom */
			drop[nd++] = da->q[0];
			memmove(da->q, da->q + 1, (DA_QUEUE - 1) * sizeof(*da->q));
			memmove(da->qt, da->qt + 1, (DA_QUEUE - 1) * sizeof(*da->qt));
			da->qn--;
		}
		da->qt[da->qn] = now;
		da->q[da->qn++] = dirs[i];
	}
	pthread_cond_signal(&da->cond);
	pthread_mutex_unlock(&da->lock);
	ovl_node_put_many(da->fs, drop, nd);
}

void da_reader(struct da *da, struct ovl_node *dir)
{
	while (da && dir->ahead == DA_READING) {
		pthread_mutex_unlock(&dir->lock);
		pthread_mutex_lock(&da->lock);
		while (__atomic_load_n(&dir->ahead, __ATOMIC_ACQUIRE) == DA_READING)
			pthread_cond_wait(&da->done, &da->lock);
		pthread_mutex_unlock(&da->lock);
		pthread_mutex_lock(&dir->lock);
	}
	dir->ahead = DA_NONE;
}

bool da_take(struct da *da, struct ovl_node *dir)
{
	struct ovl_dir *l = dir->listing;
	bool ok;

	if (!da || !l || !l->ahead)
		return false;
	l->ahead = false;
	ok = da_fresh(da, l);
	if (ok)
		__atomic_add_fetch(&da->taken, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&da->lock);
	pthread_cond_signal(&da->cond);         /* one less pending */
	pthread_mutex_unlock(&da->lock);
	return ok;
}

/* Drop ring entries whose listing was taken or went stale (freeing a stale one); how many
 * are still pending. */
static int da_reap(struct da *da)
{
	struct ovl_node *drop[DA_PENDING];
	int i, k = 0, nd = 0;

	for (i = 0; i < da->rn; i++) {
		struct ovl_node *dir = da->ring[i];
		struct ovl_dir *l;
		bool pending;

		pthread_mutex_lock(&dir->lock);
		l = dir->listing;
		pending = l && l->ahead && da_fresh(da, l);
		if (l && l->ahead && !pending) {
			ovl_dir_free(l);
			free(l);
			dir->listing = NULL;
		}
		pthread_mutex_unlock(&dir->lock);
		if (pending)
			da->ring[k++] = dir;
		else
			drop[nd++] = dir;
	}
	da->rn = k;
	ovl_node_put_many(da->fs, drop, nd);
	return k;
}

/* Read dir ahead, whose queue reference we hold (and pass to the ring, or drop). */
static void da_read(struct da *da, struct ovl_node *dir)
{
	struct ovl_dir *l;
	bool want, kept = false;

	pthread_mutex_lock(&dir->lock);
	want = dir->ahead == DA_QUEUED && !dir->listing && S_ISDIR(dir->type);
	if (want)
		dir->ahead = DA_READING;
	pthread_mutex_unlock(&dir->lock);
	if (!want) {
		ovl_node_put_many(da->fs, &dir, 1);
		return;
	}
	l = calloc(1, sizeof(*l));
	if (l && ovl_dir_read_max(da->fs, dir, l, OVL_PRESTAT_MAX) != 0) {
		free(l);
		l = NULL;
	}
	if (l && ovl_dir_prestat(da->fs, dir, l, l->n) != 0) {
		ovl_dir_free(l);
		free(l);
		l = NULL;
	}
	pthread_mutex_lock(&dir->lock);
	if (l && !dir->listing) {
		l->ahead = true;
		l->made_ns = da_now();
		dir->listing = l;
		l = NULL;
		kept = true;
	}
	__atomic_store_n(&dir->ahead, DA_NONE, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&dir->lock);
	pthread_mutex_lock(&da->lock);
	pthread_cond_broadcast(&da->done);
	pthread_mutex_unlock(&da->lock);
	if (l) {
		ovl_dir_free(l);
		free(l);
	}
	if (kept) {
		__atomic_add_fetch(&da->read, 1, __ATOMIC_RELAXED);
		da->ring[da->rn++] = dir;       /* the ring takes the reference */
	} else {
		ovl_node_put_many(da->fs, &dir, 1);
	}
}

static void *da_main(void *arg)
{
	struct da *da = arg;
	struct ovl_node *dir;
	bool stale;

	prctl(PR_SET_NAME, "stratafs-da");
	for (;;) {
		int pending = da_reap(da);

		pthread_mutex_lock(&da->lock);
		if (!da->stop && (!da->qn || pending == DA_PENDING)) {
			if (pending) {          /* wake up to free stale listings */
				struct timespec ts;

				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_nsec += 100000000;
				if (ts.tv_nsec >= 1000000000) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000;
				}
				pthread_cond_timedwait(&da->cond, &da->lock, &ts);
			} else {
				pthread_cond_wait(&da->cond, &da->lock);
			}
			pthread_mutex_unlock(&da->lock);
			continue;
		}
		if (da->stop) {
			pthread_mutex_unlock(&da->lock);
			break;
		}
		dir = da->q[--da->qn];
		stale = da_now() - da->qt[da->qn] > DA_QUEUED_NS;
		pthread_mutex_unlock(&da->lock);
		if (stale)
			ovl_node_put_many(da->fs, &dir, 1);
		else
			da_read(da, dir);
	}
	return NULL;
}

void da_stats(struct da *da, uint64_t *read, uint64_t *taken)
{
	*read = da ? __atomic_load_n(&da->read, __ATOMIC_RELAXED) : 0;
	*taken = da ? __atomic_load_n(&da->taken, __ATOMIC_RELAXED) : 0;
}

struct da *da_start(struct ovl_fs *fs)
{
	struct da *da = calloc(1, sizeof(*da));

	if (!da)
		return NULL;
	da->fs = fs;
	pthread_mutex_init(&da->lock, NULL);
	pthread_cond_init(&da->cond, NULL);
	pthread_cond_init(&da->done, NULL);
	if (pthread_create(&da->thr, NULL, da_main, da) != 0) {
		pthread_mutex_destroy(&da->lock);
		pthread_cond_destroy(&da->cond);
		pthread_cond_destroy(&da->done);
		free(da);
		return NULL;
	}
	return da;
}

void da_stop(struct da *da)
{
	if (!da)
		return;
	pthread_mutex_lock(&da->lock);
	da->stop = true;
	pthread_cond_signal(&da->cond);
	pthread_mutex_unlock(&da->lock);
	pthread_join(da->thr, NULL);
	/* Listings still waiting stay with their nodes (freed with them). */
	ovl_node_put_many(da->fs, da->q, da->qn);
	ovl_node_put_many(da->fs, da->ring, da->rn);
	pthread_mutex_destroy(&da->lock);
	pthread_cond_destroy(&da->cond);
	pthread_cond_destroy(&da->done);
	free(da);
}
