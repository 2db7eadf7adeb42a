// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Flatten: walk the union of a layer stack (top first) and build the in-memory tree of
 * what the merged view shows.  How one merged directory is resolved (whiteouts, opaque
 * directories, exclusions) is scan.c's business; a pool of threads scans directories ahead
 * of the walk.  The walk itself stays in one thread and goes depth first in name order,
 * because what it hands out depends on that order: hard-link owners, xattr ids, the order
 * files are given to the data side (writer_data.c), and so the image bytes.
 *
 * Only metadata is kept; file data is streamed later from (layer, path).  What the scans
 * found hidden is gathered as the walk takes each scan, and settled into the totals at the
 * end (hidden_settle()).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

#include <xxhash.h>

#include "squashfs/scan.h"

/* Scan threads: the walk is mostly waiting for lookups and xattr reads. */
#define SCAN_THREADS 2

struct hl_ent {
	int layer;
	ino_t ino;
	struct wnode *owner;
	struct hl_ent *next;
};

/* ---- xattr sets ------------------------------------------------------------------------ */

/* Intern a blob (ownership passes here): identical sets share one xattr id. */
static struct wx_set *xset_intern(struct wctx *c, unsigned char *blob, size_t len,
				  uint32_t count)
{
	uint64_t h = XXH3_64bits(blob, len);
	struct wx_set *s;

	if (!c->xset_buckets) {
		c->xset_buckets = 1024;
		c->xset_hash = calloc(c->xset_buckets, sizeof(*c->xset_hash));
		if (!c->xset_hash)
			return NULL;
	}
	for (s = c->xset_hash[h & (c->xset_buckets - 1)]; s; s = s->next)
		if (s->hash == h && s->len == len && !memcmp(s->blob, blob, len)) {
			free(blob);
			return s;
		}
	if (c->nxsets == c->capxsets) {
		uint32_t cap = c->capxsets ? c->capxsets * 2 : 64;
		struct wx_set **v = realloc(c->xsets, cap * sizeof(*v));
		if (!v)
			return NULL;
		c->xsets = v;
		c->capxsets = cap;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->id = c->nxsets;
	s->count = count;
	s->len = len;
	s->hash = h;
	s->blob = blob;
	s->next = c->xset_hash[h & (c->xset_buckets - 1)];
	c->xset_hash[h & (c->xset_buckets - 1)] = s;
	c->xsets[c->nxsets++] = s;
	return s;
}

int wnode_path(const struct wnode *n, char *buf, size_t size)
{
	size_t len = 0, pos;

	if (n->lpath)
		return snprintf(buf, size, "%s", n->lpath) < (int)size ? 0 : -ENAMETOOLONG;

	for (const struct wnode *x = n; x->parent; x = x->parent)
		len += strlen(x->name) + (x->parent->parent ? 1 : 0);
	if (len >= size)
		return -ENAMETOOLONG;
	buf[len] = 0;
	pos = len;
	for (const struct wnode *x = n; x->parent; x = x->parent) {
		size_t l = strlen(x->name);
		pos -= l;
		memcpy(buf + pos, x->name, l);
		if (x->parent->parent)
			buf[--pos] = '/';
	}
	return 0;
}

static uint32_t clamp_time(const struct sqfs_writer_opts *o, time_t t)
{
	if (o->mtime >= 0)
		return (uint32_t)o->mtime;
	if (t < 0)
		return 0;
	if ((uint64_t)t > UINT32_MAX)
		return UINT32_MAX;
	return (uint32_t)t;
}

static int add_file(struct wctx *c, struct wnode *n)
{
	int ret = 0;

	pthread_mutex_lock(&c->files_mu);
	if (c->nfiles == c->capfiles) {
		size_t cap = c->capfiles ? c->capfiles * 2 : 1024;
		struct wnode **v = realloc(c->files, cap * sizeof(*v));
		if (!v) {
			ret = -ENOMEM;
			goto out;
		}
		c->files = v;
		c->capfiles = cap;
	}
	c->files[c->nfiles++] = n;
	/* wake the readers in batches: one wakeup per file costs more than it saves */
	if (c->nfiles - c->files_signalled >= 32) {
		c->files_signalled = c->nfiles;
		pthread_cond_broadcast(&c->files_cv);
	}
out:
	pthread_mutex_unlock(&c->files_mu);
	return ret;
}

/* Hand over the files a directory added, without waiting for a batch to fill. */
static void publish_files(struct wctx *c)
{
	pthread_mutex_lock(&c->files_mu);
	if (c->nfiles != c->files_signalled) {
		c->files_signalled = c->nfiles;
		pthread_cond_broadcast(&c->files_cv);
	}
	pthread_mutex_unlock(&c->files_mu);
}

struct wnode *wr_next_file(struct wctx *c, size_t i, int *err)
{
	struct wnode *f = NULL;

	pthread_mutex_lock(&c->files_mu);
	while (i >= c->nfiles && !c->walk_done)
		pthread_cond_wait(&c->files_cv, &c->files_mu);
	if (i < c->nfiles)
		f = c->files[i];
	*err = c->walk_err;
	pthread_mutex_unlock(&c->files_mu);
	return f;
}

static size_t hl_hash(int layer, ino_t ino, size_t nb)
{
	return (XXH3_64bits(&ino, sizeof(ino)) + (size_t)layer) & (nb - 1);
}

static int hl_grow(struct wctx *c)
{
	size_t nb = c->hl_buckets ? c->hl_buckets * 2 : 4096;
	struct hl_ent **b = calloc(nb, sizeof(*b));

	if (!b)
		return -ENOMEM;
	for (size_t i = 0; i < c->hl_buckets; i++)
		for (struct hl_ent *e = c->hl[i], *nx; e; e = nx) {
			size_t h = hl_hash(e->layer, e->ino, nb);
			nx = e->next;
			e->next = b[h];
			b[h] = e;
		}
	free(c->hl);
	c->hl = b;
	c->hl_buckets = nb;
	return 0;
}

/* Hard links: a non-directory with st_nlink > 1 is the same inode as an earlier name with
 * the same (layer, st_ino).  Returns the owner, or NULL and records n as a new owner.
 * (Trees made with `cp -al` have every file linked elsewhere: the table must scale.) */
static struct wnode *hardlink_owner(struct wctx *c, struct layer *l, const struct stat *st,
				    struct wnode *n, int *err)
{
	struct hl_ent *e;
	size_t h;

	*err = 0;
	if (c->hl_count >= c->hl_buckets && hl_grow(c)) {
		*err = -ENOMEM;
		return NULL;
	}
	h = hl_hash(l->index, st->st_ino, c->hl_buckets);
	for (e = c->hl[h]; e; e = e->next)
		if (e->layer == l->index && e->ino == st->st_ino)
			return e->owner;
	e = malloc(sizeof(*e));
	if (!e) {
		*err = -ENOMEM;
		return NULL;
	}
	e->layer = l->index;
	e->ino = st->st_ino;
	e->owner = n;
	e->next = c->hl[h];
	c->hl[h] = e;
	c->hl_count++;
	return NULL;
}

/* A node from its scanned entry: attributes, hard-link owner, xattr set, link target;
 * regular files are handed to the data side. */
static int fill_node(struct wctx *c, struct wnode *n, struct fent *e)
{
	const struct sqfs_writer_opts *o = c->o;
	const struct stat *st = &e->st;
	const struct dsrc *s = &e->srcs[0];
	int ret;

	n->mode = st->st_mode;
	n->uid = o->force_uid >= 0 ? (uint32_t)o->force_uid : st->st_uid;
	n->gid = o->force_gid >= 0 ? (uint32_t)o->force_gid : st->st_gid;
	n->mtime = clamp_time(o, st->st_mtime);
	n->nlink = 1;
	n->frag_idx = SQFS_INVALID_FRAG;

	if (!S_ISDIR(st->st_mode) && st->st_nlink > 1) {
		struct wnode *owner = hardlink_owner(c, s->l, st, n, &ret);
		if (ret)
			return wr_error(c, ret, "out of memory");
		if (owner) {
			n->link = owner;
			owner->nlink++;
			c->st->hardlinks++;
			if (S_ISREG(st->st_mode))
				__atomic_add_fetch(&c->st->files, 1, __ATOMIC_RELAXED);
			return 0;
		}
	}
	if (e->xblob) {
		n->xattrs = xset_intern(c, e->xblob, e->xlen, e->xcount);
		if (!n->xattrs)
			return wr_error(c, -ENOMEM, "out of memory");
		e->xblob = NULL;         /* the set owns it now */
	}
	switch (st->st_mode & S_IFMT) {
	case S_IFREG:
		__atomic_add_fetch(&c->st->files, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&c->st->total_bytes, (uint64_t)st->st_size, __ATOMIC_RELAXED);
		n->size = (uint64_t)st->st_size;
		n->layer = s->l;
		n->ref = s->ref;
		/* seen through a redirect: its data is at another path in its layer */
		if (s->redir && !(n->lpath = strdup(s->path)))
			return wr_error(c, -ENOMEM, "out of memory");
		return add_file(c, n) ? wr_error(c, -ENOMEM, "out of memory") : 0;
	case S_IFLNK:
		n->symlink = e->symlink;
		e->symlink = NULL;
		c->st->symlinks++;
		return n->symlink ? 0 : wr_error(c, -EIO, "%s/%s: no link target", s->l->spec,
						 s->path);
	case S_IFCHR:
	case S_IFBLK:
		n->rdev = sqfs_encode_dev(major(st->st_rdev), minor(st->st_rdev));
		/* fallthrough */
	case S_IFIFO:
	case S_IFSOCK:
		c->st->specials++;
		return 0;
	case S_IFDIR:
		c->st->dirs++;
		return 0;
	}
	return wr_error(c, -EINVAL, "%s/%s: unknown file type 0%o", s->l->spec, s->path,
			st->st_mode & S_IFMT);
}

/* ---- what the stack hides --------------------------------------------------------- */

static bool hl_visible(const struct wctx *c, int layer, ino_t ino)
{
	if (!c->hl_buckets)
		return false;
	for (struct hl_ent *e = c->hl[hl_hash(layer, ino, c->hl_buckets)]; e; e = e->next)
		if (e->layer == layer && e->ino == ino)
			return true;
	return false;
}

static int cmp_rec(const struct hrec *a, const struct hrec *b, const char *paths)
{
	if (a->layer != b->layer)
		return a->layer < b->layer ? -1 : 1;
	return strcmp(paths + a->path, paths + b->path);
}

static int cmp_shown(const void *a, const void *b, void *paths)
{
	return cmp_rec(a, b, paths);
}

static int cmp_inode(const void *a, const void *b)
{
	const struct hrec *x = a, *y = b;

	if (x->layer != y->layer)
		return x->layer < y->layer ? -1 : 1;
	return x->ino < y->ino ? -1 : x->ino > y->ino;
}

static bool is_shown(const struct hidden_set *h, const struct hrec *r)
{
	size_t lo = 0, hi = h->nshown;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int d = cmp_rec(r, &h->shown[mid], (const char *)h->paths.p);

		if (!d)
			return true;
		if (d < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return false;
}

/* The totals of what the stack hides, the audit's way (fs/overlay/audit.c): an entry a
 * redirect shows is not hidden, whatever its own path says; a hard-linked file's bytes
 * count once, and not while one of its names is in the image (the walk's hard-link table
 * holds every visible (layer, inode) with more than one link). */
static void hidden_settle(struct wctx *c)
{
	struct hidden_set *h = c->hidden;
	struct sqfs_squash_stats *st = c->st;
	size_t nlinked = 0;

	if (h->err)
		goto out;                /* the image is fine; the count is unknown */
	if (h->nshown)
		qsort_r(h->shown, h->nshown, sizeof(*h->shown), cmp_shown, h->paths.p);
	for (size_t i = 0; i < h->nhid; i++) {
		const struct hrec *r = &h->hid[i];

		if (h->nshown && is_shown(h, r))
			continue;
		if (S_ISDIR(r->mode))
			st->hidden_dirs++;
		else
			st->hidden_files++;
		if (!S_ISREG(r->mode))
			continue;
		if (r->nlink <= 1)
			st->hidden_bytes += r->size;
		else if (!hl_visible(c, r->layer, r->ino))
			h->hid[nlinked++] = *r;          /* settled below, once per inode */
	}
	if (nlinked)
		qsort(h->hid, nlinked, sizeof(*h->hid), cmp_inode);
	for (size_t i = 0; i < nlinked; i++)
		if (!i || cmp_inode(&h->hid[i - 1], &h->hid[i]))
			st->hidden_bytes += h->hid[i].size;
	st->hidden_known = true;
out:
	/* done with it: give the memory back before the tables are written */
	hidden_set_free(h);
}

/* The entries below hidden directories are read by a thread of their own, so the walk
 * (which the data side waits on) never waits for a deleted tree to be listed. */
struct hid_item {
	struct layer *l;
	char *path;
	uint64_t ref;
};

struct hid_walker {
	struct wctx *c;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct hid_item *v;
	size_t n, cap, next;
	bool closed, cancel, started;
	struct hidden_set out;   /* the thread's own until it is joined */
	pthread_t t;
};

static void hid_expand(struct hid_walker *w, struct hid_item *it)
{
	struct lnode dir = { it->path, it->ref };
	int ret = 0;

	if (!w->out.err && !__atomic_load_n(&w->c->abort, __ATOMIC_RELAXED))
		ret = scan_hide_below(it->l, &dir, &w->out);
	if (ret)
		w->out.err = ret;
	free(it->path);
	it->path = NULL;
}

static void *hid_main(void *arg)
{
	struct hid_walker *w = arg;
	struct hid_item it;

	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (w->next == w->n && !w->closed)
			pthread_cond_wait(&w->cv, &w->mu);
		if (w->next == w->n || w->cancel)
			break;
		it = w->v[w->next];
		w->v[w->next++].path = NULL;
		pthread_mutex_unlock(&w->mu);
		hid_expand(w, &it);
		pthread_mutex_lock(&w->mu);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static void hid_start(struct hid_walker *w, struct wctx *c)
{
	memset(w, 0, sizeof(*w));
	w->c = c;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	/* without the thread, hid_finish() does the work */
	w->started = !pthread_create(&w->t, NULL, hid_main, w);
}

/* Queue the hidden directories a scan found. */
static int hid_push(struct hid_walker *w, const struct hidden_set *h)
{
	int ret = 0;

	if (!h->nexp)
		return 0;
	pthread_mutex_lock(&w->mu);
	for (size_t i = 0; i < h->nexp && !ret; i++) {
		struct hid_item *it;

		if (w->n == w->cap) {
			size_t cap = w->cap ? w->cap * 2 : 64;
			struct hid_item *v = realloc(w->v, cap * sizeof(*v));

			if (!v) {
				ret = -ENOMEM;
				break;
			}
			w->v = v;
			w->cap = cap;
		}
		it = &w->v[w->n];
		it->l = h->exp[i].l;
		it->ref = h->exp[i].ref;
		it->path = strdup((const char *)h->paths.p + h->exp[i].path);
		if (!it->path)
			ret = -ENOMEM;
		else
			w->n++;
	}
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	return ret;
}

/* Wait for the thread (or do its work), and add what it found to c->hidden; after a
 * failed walk (cancel) only clean up. */
static int hid_finish(struct hid_walker *w, bool cancel)
{
	int ret = 0;

	pthread_mutex_lock(&w->mu);
	w->closed = true;
	w->cancel = cancel;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	if (w->started)
		pthread_join(w->t, NULL);
	for (; w->next < w->n; w->next++) {
		if (cancel)
			free(w->v[w->next].path);
		else
			hid_expand(w, &w->v[w->next]);
	}
	free(w->v);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	if (!cancel)
		ret = hidden_set_move(w->c->hidden, &w->out);
	hidden_set_free(&w->out);
	return ret ? wr_error(w->c, ret, "out of memory") : 0;
}

/* ---- the walk ------------------------------------------------------------------------- */

static int scan_result(struct wctx *c, struct scan *s)
{
	if (!s->ret)
		return 0;
	if (s->ret != -ECANCELED)
		wr_error_msg(c, s->err);
	return s->ret;
}

static void drop_scans(struct scan_pool *pool, struct scan **v, size_t from, size_t n)
{
	for (size_t i = from; i < n; i++) {
		scan_cancel(pool, v[i]);
		scan_free(v[i]);
	}
}

/* Build dn's children from its finished scan, then walk the subdirectories in order;
 * their scans are queued at once so the pool works ahead. */
static int walk_dir(struct wctx *c, struct scan_pool *pool, struct hid_walker *hw,
		    struct wnode *dn, struct scan *s)
{
	struct scan **subs = NULL;
	size_t nsubs = 0, k = 0;
	int ret = scan_result(c, s);

	if (ret)
		return ret;
	if (hid_push(hw, &s->hs) || hidden_set_move(c->hidden, &s->hs))
		return wr_error(c, -ENOMEM, "out of memory");
	dn->children = calloc(s->nkids + 1, sizeof(*dn->children));
	subs = calloc(s->nkids + 1, sizeof(*subs));
	if (!dn->children || !subs) {
		ret = wr_error(c, -ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < s->nkids && !ret; i++) {
		struct wnode *n = calloc(1, sizeof(*n));
		if (!n || !(n->name = strdup(s->kids[i]->name))) {
			free(n);
			ret = wr_error(c, -ENOMEM, "out of memory");
			break;
		}
		n->parent = dn;
		dn->children[dn->nchildren++] = n;
		ret = fill_node(c, n, s->kids[i]);
	}
	publish_files(c);
	for (size_t i = 0; i < s->nkids && !ret; i++) {
		if (!S_ISDIR(dn->children[i]->mode))
			continue;
		subs[nsubs] = scan_new(s->kids[i]->srcs, s->kids[i]->nsrcs, s->mpath,
				       s->kids[i]->name);
		if (!subs[nsubs++])
			ret = wr_error(c, -ENOMEM, "out of memory");
	}
	if (ret)
		goto out;
	scan_submit(pool, subs, nsubs);
	for (size_t i = 0; i < s->nkids && !ret; i++) {
		if (!S_ISDIR(dn->children[i]->mode))
			continue;
		scan_wait(pool, subs[k]);
		ret = walk_dir(c, pool, hw, dn->children[i], subs[k]);
		scan_free(subs[k++]);
	}
out:
	if (subs)
		drop_scans(pool, subs, k, nsubs);
	free(subs);
	return ret;
}

int wr_flatten(struct wctx *c)
{
	struct dsrc *srcs = calloc(c->nlayers, sizeof(*srcs));
	struct scan_pool *pool = scan_pool_new(c, SCAN_THREADS);
	struct scan *root = NULL;
	struct hid_walker hw;
	struct fent re = { 0 };
	int ret = 0;

	c->root = calloc(1, sizeof(*c->root));
	c->hidden = calloc(1, sizeof(*c->hidden));
	if (!srcs || !pool || !c->root || !c->hidden || !(c->root->name = strdup(""))) {
		ret = wr_error(c, -ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < c->nlayers; i++) {
		srcs[i].l = c->layers[i];
		srcs[i].path = (char *)"";
	}
	/* the root's attributes come from the top layer's root, as in the kernel */
	struct lnode ln = { .path = "", .ref = 0 };
	ret = c->layers[0]->ops->getattr(c->layers[0], &ln, &re.st);
	if (ret < 0) {
		ret = wr_error(c, ret, "cannot stat the root of %s", c->layers[0]->spec);
		goto out;
	}
	if (!c->o->no_xattrs) {
		char msg[512];
		ret = scan_read_xattrs(c->layers[0], &ln, &re.xblob, &re.xlen, &re.xcount, msg,
				       sizeof(msg));
		if (ret) {
			wr_error_msg(c, msg);
			goto out;
		}
	}
	re.srcs = srcs;
	ret = fill_node(c, c->root, &re);
	root = scan_new(srcs, c->nlayers, "", NULL);
	if (!ret && !root)
		ret = wr_error(c, -ENOMEM, "out of memory");
	if (ret)
		goto out;
	scan_run(c, root);
	hid_start(&hw, c);
	ret = walk_dir(c, pool, &hw, c->root, root);
	if (hid_finish(&hw, ret != 0) && !ret)
		ret = -ENOMEM;
	if (!ret)
		hidden_settle(c);
out:
	scan_free(root);
	scan_pool_free(pool);
	free(re.xblob);
	free(srcs);
	return ret;
}

static void free_node(struct wnode *n)
{
	for (uint32_t i = 0; i < n->nchildren; i++)
		free_node(n->children[i]);
	free(n->children);
	free(n->name);
	free(n->lpath);
	free(n->symlink);
	free(n->blocks);
	free(n->pre);
	free(n);
}

void wr_free_tree(struct wctx *c)
{
	if (c->root)
		free_node(c->root);
	c->root = NULL;
	for (size_t i = 0; i < c->hl_buckets; i++)
		for (struct hl_ent *e = c->hl[i], *nx; e; e = nx) {
			nx = e->next;
			free(e);
		}
	free(c->hl);
	if (c->hidden)
		hidden_set_free(c->hidden);
	free(c->hidden);
	c->hidden = NULL;
	for (uint32_t i = 0; i < c->nxsets; i++) {
		free(c->xsets[i]->blob);
		free(c->xsets[i]);
	}
	free(c->xsets);
	free(c->xset_hash);
	free(c->files);
}
