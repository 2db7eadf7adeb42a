/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Private to the writer: scanning one merged directory of a layer stack (readdir, lookup,
 * whiteouts, opaque markers, redirects, xattrs, symlink targets, and the hidden entries
 * below it for the summary) - all the I/O of the walk - so that
 * a few threads can scan directories ahead of the walk, which stays in one thread and in
 * name order (hard links, xattr ids, inode numbers and file order depend on that order).
 */
#ifndef STRATA_SQUASHFS_SCAN_H
#define STRATA_SQUASHFS_SCAN_H

#include "squashfs/writer_int.h"

/* One layer's copy of a directory taking part in a merge. */
struct dsrc {
	struct layer *l;
	char *path;              /* in that layer: the merged path, unless redirected */
	uint64_t ref;
	bool redir;              /* reached through a redirect: it shows entries, and hides
				  * none (those are counted where the walk meets them at their
				  * own path) */
};

enum { FE_HIDDEN, FE_FINAL, FE_DIR };

/* One name of a merged directory. */
struct fent {
	char *name;
	int state;
	bool stop;               /* FE_DIR: lower layers no longer merge at this path */
	bool excluded;           /* visible in the merge, left out of the image */
	int top;                 /* layer index of the visible entry */
	struct stat st;          /* from the topmost layer that holds the name */
	struct dsrc *srcs;       /* FE_FINAL: srcs[0]; FE_DIR: every merged layer */
	int nsrcs;
	char *rpath;             /* FE_DIR redirected in layer rlayer: the redirect's value */
	int rlayer;
	struct fent *next;
	/* read for the visible entries: xattrs as a blob (see struct wx_set), link target */
	unsigned char *xblob;
	size_t xlen;
	uint32_t xcount;
	char *symlink;
};

struct fmap {
	struct fent **b;
	size_t nb, n;
	struct fent **all;       /* insertion order, for freeing and sorting */
	size_t cap;
};

/* Entries of layers (index, path in the layer) that the stack hides, and those that a
 * redirect shows (an entry hidden at its own path can be visible elsewhere through a
 * redirect).  Each scan fills one for its directory (and the hidden subtrees below it);
 * the walk gathers them into one and settles the totals at the end. */
struct hrec {
	int layer;
	mode_t mode;
	nlink_t nlink;
	ino_t ino;
	uint64_t size;
	size_t path;             /* offset in the set's path bytes */
};

/* A hidden directory whose entries are still to be recorded (scan_hide_below()). */
struct hexp {
	struct layer *l;
	size_t path;             /* offset in the set's path bytes */
	uint64_t ref;
};

struct hidden_set {
	struct hrec *hid;
	size_t nhid, caphid;
	struct hrec *shown;      /* only layer and path are set */
	size_t nshown, capshown;
	struct hexp *exp;        /* left for the caller; hidden_set_move() drops them */
	size_t nexp, capexp;
	struct wbuf paths;       /* NUL-terminated paths */
	int err;                 /* a hidden entry could not be read: the totals are unknown */
};

enum { SCAN_NEW, SCAN_QUEUED, SCAN_RUNNING, SCAN_DONE };

struct scan {
	const struct dsrc *srcs; /* the directory's layers (owned by the parent's scan) */
	int nsrcs;
	char *mpath;             /* the directory's path in the image */
	struct hidden_set hs;    /* what the merge hides (with the subtrees) and shows
				  * through redirects */
	struct fmap m;
	struct fent **kids;      /* the visible entries, sorted by name */
	size_t nkids;
	int ret;                 /* first error, its message in err */
	char err[512];
	int state;               /* under the pool's lock */
	bool by_pool;            /* run by a pool thread (counts against the look-ahead) */
	struct scan *next;       /* the pool's stack */
};

struct scan_pool;

/* Threads that scan queued directories; nthreads 0 means none (everything is run by the
 * caller of scan_wait()). */
struct scan_pool *scan_pool_new(struct wctx *c, int nthreads);
void scan_pool_free(struct scan_pool *p);

/* A scan of the image directory dir/name (the root when name is NULL) made of srcs
 * (borrowed). */
struct scan *scan_new(const struct dsrc *srcs, int nsrcs, const char *dir, const char *name);
void scan_free(struct scan *s);
/* Do the work now, in this thread. */
void scan_run(struct wctx *c, struct scan *s);
/* Queue v[0..n-1]; v[0] is taken first (the walk needs the first directory first). */
void scan_submit(struct scan_pool *p, struct scan **v, size_t n);
/* Until s is done: runs it here if no thread has taken it yet. */
void scan_wait(struct scan_pool *p, struct scan *s);
/* Take s back from the queue, or wait for the thread running it. */
void scan_cancel(struct scan_pool *p, struct scan *s);

/* Record everything below the hidden directory (l, dir) into h (not dir itself). */
int scan_hide_below(struct layer *l, const struct lnode *dir, struct hidden_set *h);
/* Append src's records to dst (dst keeps the first error); src is freed. */
int hidden_set_move(struct hidden_set *dst, struct hidden_set *src);
void hidden_set_free(struct hidden_set *h);

/* The storable, non-private xattrs of (l, n), sorted by name, as a blob of
 * { u16 name_len, name, u32 value_len, value } (NULL when none); message in err. */
int scan_read_xattrs(struct layer *l, const struct lnode *n, unsigned char **blob,
		     size_t *len, uint32_t *count, char *err, size_t errlen);

#endif
