/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The union: a node table over a stack of layers with the kernel overlayfs's semantics.
 *
 * Layer 0 is the writable upper when there is one; lower layers follow, top first.  Lower
 * layers never change and the upper changes only through this daemon, so what a node learnt
 * at lookup stays true until the daemon itself changes it: nodes are the cache.
 *
 * Locking: fs->tree_lock (rwlock) guards the shape of the node tree (parent/name links, a
 * node's layer stack); read ops hold it shared while they turn a node into a path and use
 * it, namespace changes hold it exclusive.  fs->copy_lock (rwlock) serialises copy-ups and
 * other writes into the upper so two of them never race on one name: held exclusive by
 * all of them but one, the creation of a new entry in a directory that is already in the
 * upper, which holds it shared (the kernel already serialises changes within one directory
 * by its lock, and no copy-up or rename can run meanwhile).  The node hash has a lock per
 * bucket.  Errors are negative errno values.
 */
#ifndef STRATA_OVL_H
#define STRATA_OVL_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "layer/layer.h"

#define OVL_HASH_BUCKETS 65536   /* node and alias hashes (heap, touched as used) */

struct ovl_lent {               /* where a node exists: layer index and backend ref */
	int layer;
	uint64_t ref;
	char *path;                     /* its path in that layer when not the merged path
					 * (below a redirected directory); else NULL */
};

struct ovl_dirent {
	char *name;
	unsigned char type;
	int layer;                      /* the layer the entry shows from */
	uint64_t ino;
};
/* A listed entry looked up ahead of readdirplus (ovl_dir_prestat). */
struct ovl_pre {
	struct stat st;                 /* lstat in the entry's layer, before any fixup */
	uint64_t ref;                   /* the layer's ref for it */
	bool ok;
};

struct ovl_dir {
	struct ovl_dirent *ents;
	size_t n, cap;
	uint64_t gen;                   /* fs->gen when it was read */
	struct ovl_pre *pre;            /* NULL, or one per entry: looked up ahead */
	bool ahead;                     /* read ahead of any reader, none has used it yet */
	long long made_ns;              /* CLOCK_MONOTONIC when read ahead */
};

/* Another name of a hard-linked upper file: the kernel must see one inode for all names. */
struct ovl_alias {
	struct ovl_node *parent;
	char *name;
	struct ovl_node *node;
	struct ovl_alias *hnext;        /* fs->alias_hash chain */
	struct ovl_alias *nnext;        /* node->aliases list */
};

struct ovl_node {
	struct ovl_node *parent;
	char *name;
	struct ovl_node *hnext;         /* hash chain, keyed by (parent, name) */
	uint64_t nlookup;               /* kernel references (lookup/forget) */
	uint64_t nref;                  /* children + open handles pointing at us */
	mode_t type;                    /* S_IFMT bits */
	uint64_t ino;                   /* what st_ino shows: stable for the mount's life */
	int nlent;                      /* layers holding it, top first; >1 only for dirs */
	struct ovl_lent *lent;
	bool hashed;                    /* still reachable by (parent, name) */
	unsigned char gone;             /* its last name was removed: 1 from a lower layer
					 * (never copy it up again), 2 from the upper (its old
					 * path names something else now: ESTALE) */
	int orphan_fd;                  /* gone while the kernel knows it: O_PATH to the
					 * unlinked upper file (fstat, open, setattr through
					 * /proc) until forgotten, or -1 */
	bool tmpfile;                   /* made by O_TMPFILE and not linked yet (gone,
					 * orphan_fd set): LINK names it */
	struct ovl_alias *aliases;      /* its other names (upper hard links) */
	ino_t hl_ino;                   /* upper inode in fs->hl_hash, or 0 */
	struct ovl_node *hl_next;
	pthread_mutex_t lock;           /* guards listing and the open state below */
	struct ovl_dir *listing;        /* dirs: merged listing between readdir calls */
	unsigned char ahead;            /* dirs: the glue's read-ahead state (DA_* in
					 * fs/dirahead.h) */
	/* Files, for the FUSE glue: the kernel wants every passthrough open of an inode on
	 * one backing file, and no cached (non-passthrough) open beside them.  pt_refs on a
	 * node that is not in the upper are opens passed through to its LOWER file: a
	 * copy-up then cannot make this node the upper file (ovl_copy_up_one). */
	int pt_id, pt_refs, cached_opens;
	bool copying;                   /* files: a copy-up began (stays set once it
					 * succeeded): no new opens may pin the lower file */
	bool reopened;                  /* files: opened before (the glue then keeps small
					 * lower files in the kernel's page cache) */
	void *reader;                   /* the glue's shared read handle when the kernel
					 * does not open files (read-only mounts) */
	dev_t pt_dev;
	ino_t pt_ino;
	void *pf;                       /* dirs: the glue's read-ahead list (fs->pf_free) */
	int pf_state;                   /* files: read-ahead state (fs/prefetch.c) */
};

struct ovl_idmap {
	uint32_t inside, outside, count;
};

struct ovl_opts {
	struct ovl_idmap *uidmap, *gidmap;
	int nuidmap, ngidmap;
	long squash_uid, squash_gid;    /* -1 = off */
	bool static_nlink;
	int xattr_permissions;          /* 0, 1 (containers), 2 (fuseoverlayfs) */
	int noxattrs;                   /* 0, 1 (all fail ENOTSUP), 2 (silently ignored) */
	bool ino32;
	bool no_redirect;               /* redirect_dir=off: merged dirs do not move (EXDEV) */
	bool volatile_;                 /* fsync is a no-op */
	double timeout;
};

struct ovl_inomap;
struct ovl_devmap;

struct ovl_fs {
	struct layer **layers;
	int nlayers;
	bool has_upper;
	int upper_fd;                   /* O_PATH root of the upper, -1 when read-only */
	int work_fd;                    /* O_PATH workdir/work: staging for atomic creates */
	bool priv;                      /* may write trusted.* xattrs and device nodes */
	bool rootless;                  /* running without real privilege: no chown */
	bool setfsuid;                  /* may create as the caller (setfsuid/setfsgid)
					 * without losing capabilities: the daemon's to
					 * set (SECBIT_NO_SETUID_FIXUP), false by default */
	struct ovl_opts o;
	struct ovl_node *root;
	pthread_rwlock_t tree_lock;
	pthread_rwlock_t copy_lock;      /* see "Locking" above */
	pthread_mutex_t hash_lock[64];
	struct ovl_node **hash;                 /* OVL_HASH_BUCKETS chains */
	struct ovl_alias **alias_hash;          /* OVL_HASH_BUCKETS chains */
	struct ovl_node *hl_hash[1024];         /* upper hard links by inode; tree_lock */
	struct ovl_inomap *inomap;
	struct ovl_devmap *devmap;
	uint64_t tmp_seq;
	uint64_t gen;                   /* bumped by every namespace change */
	uint64_t tree_seq;              /* bumped under tree_lock exclusive when a node moves
					 * or its lower paths are pinned (ovl_lookup) */
	void (*reader_free)(void *reader);
	void (*pf_free)(void *pf);
};

/* What a lookup of one name found across the stack. */
struct ovl_res {
	struct stat st;                 /* of the topmost entry */
	int nlent;
	struct ovl_lent *lent;          /* caller frees */
};

/* ovl_fs.c */
int ovl_fs_init(struct ovl_fs *fs, char **lowers, int nlowers, const char *upper,
		const char *work, char *err, size_t errlen);
void ovl_fs_destroy(struct ovl_fs *fs);
uint64_t ovl_ino_for(struct ovl_fs *fs, int layer, dev_t dev, ino_t ino);
void ovl_ino_remember(struct ovl_fs *fs, ino_t upper_ino, uint64_t shown);

/* ovl_node.c */
struct ovl_node *ovl_node_find(struct ovl_fs *fs, struct ovl_node *parent, const char *name);
struct ovl_node *ovl_node_new(struct ovl_fs *fs, struct ovl_node *parent, const char *name,
			      struct ovl_res *res);
void ovl_node_unhash(struct ovl_fs *fs, struct ovl_node *n);
int ovl_node_pin_lower_paths(struct ovl_fs *fs, struct ovl_node *top);
/* Hard links (tree_lock exclusive for the changes): one node for every name of an upper
 * file, found by its upper inode number. */
struct ovl_node *ovl_hl_find(struct ovl_fs *fs, ino_t ino);
void ovl_hl_add(struct ovl_fs *fs, struct ovl_node *n, ino_t ino);
int ovl_alias_add(struct ovl_fs *fs, struct ovl_node *n, struct ovl_node *parent,
		  const char *name);
/* The name (parent, name) of n goes away (unlink, replaced), or moves (rename). */
void ovl_name_drop(struct ovl_fs *fs, struct ovl_node *n, struct ovl_node *parent,
		   const char *name);
void ovl_name_move(struct ovl_fs *fs, struct ovl_node *n, struct ovl_node *parent,
		   const char *name, struct ovl_node *np, const char *nname);
void ovl_node_move(struct ovl_fs *fs, struct ovl_node *n, struct ovl_node *np, const char *name);
void ovl_node_forget(struct ovl_fs *fs, struct ovl_node *n, uint64_t nlookup);
void ovl_node_get(struct ovl_node *n);
void ovl_node_put(struct ovl_fs *fs, struct ovl_node *n);
/* Drop references the caller holds on n[0..k-1], under tree_lock exclusive (as FORGET
 * frees nodes); no node lock may be held. */
void ovl_node_put_many(struct ovl_fs *fs, struct ovl_node **n, size_t k);
int ovl_node_path(struct ovl_node *n, char *buf, size_t size);
int ovl_node_orphan_path(const struct ovl_node *n, char *buf, size_t size);
int ovl_join(const char *dir, const char *name, char *buf, size_t size);
static inline bool ovl_in_upper(const struct ovl_fs *fs, const struct ovl_node *n)
{
	return fs->has_upper && n->nlent > 0 && n->lent[0].layer == 0;
}

/* The node's top entry as its own layer names it. */
static inline struct lnode ovl_top(const struct ovl_node *n, const char *path)
{
	return (struct lnode){ n->lent[0].path ? n->lent[0].path : path, n->lent[0].ref };
}

static inline const char *ovl_lent_path(const struct ovl_lent *e, const char *merged)
{
	return e->path ? e->path : merged;
}

void ovl_lent_free(struct ovl_lent *l, int n);

/* ovl_lookup.c */
int ovl_resolve(struct ovl_fs *fs, struct ovl_node *dir, const char *dpath, const char *name,
		bool skip_upper, struct ovl_res *res);
int ovl_lookup(struct ovl_fs *fs, struct ovl_node *dir, const char *name,
	       struct ovl_node **out, struct stat *st);
int ovl_lookup_listed(struct ovl_fs *fs, struct ovl_node *dir, const struct ovl_dir *d,
		      const struct ovl_dirent *de, struct ovl_node **out, struct stat *st);
int ovl_getattr(struct ovl_fs *fs, struct ovl_node *n, struct stat *st);
int ovl_stat_top(struct ovl_fs *fs, struct ovl_node *n, const char *path, struct stat *st);
bool ovl_lower_has(struct ovl_fs *fs, struct ovl_node *dir, const char *dpath, const char *name);

/* ovl_readdir.c */
int ovl_dir_read(struct ovl_fs *fs, struct ovl_node *dir, struct ovl_dir *out);
/* The same, giving up with -E2BIG once the listing would have more than max entries. */
int ovl_dir_read_max(struct ovl_fs *fs, struct ovl_node *dir, struct ovl_dir *out, size_t max);
/* Listings with more entries are not looked up ahead (each entry keeps a struct stat). */
#define OVL_PRESTAT_MAX 4096
/* Look up ahead, in their layers, the first `max` entries of d that readdirplus's fast path
 * (ovl_lookup_listed) would look up: listed non-directories of lower layers.  Stops early,
 * keeping what it has, when the namespace changes. */
int ovl_dir_prestat(struct ovl_fs *fs, struct ovl_node *dir, struct ovl_dir *d, size_t max);
void ovl_dir_free(struct ovl_dir *d);

/* ovl_copyup.c */
int ovl_copy_up(struct ovl_fs *fs, struct ovl_node *n);
int ovl_tmpname(struct ovl_fs *fs, char *buf, size_t size);

/* ovl_ops.c: namespace changes in the merged view */
struct ovl_cred {
	uid_t uid;
	gid_t gid;
	mode_t umask;                   /* applied here: the kernel leaves it to us */
};
int ovl_create(struct ovl_fs *fs, struct ovl_node *dir, const char *name, mode_t mode,
	       dev_t rdev, const char *link, int oflags, const struct ovl_cred *cred,
	       struct ovl_node **out, struct stat *st, int *fd);
int ovl_link(struct ovl_fs *fs, struct ovl_node *src, struct ovl_node *dir, const char *name,
	     struct ovl_node **out, struct stat *st);
/* An unnamed file for dir (O_TMPFILE): a node with no name and its open fd in *fd; LINK of
 * the node (ovl_link) names it. */
int ovl_tmpfile(struct ovl_fs *fs, struct ovl_node *dir, mode_t mode, int oflags,
		const struct ovl_cred *cred, struct ovl_node **out, struct stat *st, int *fd);
int ovl_unlink(struct ovl_fs *fs, struct ovl_node *dir, const char *name, bool isdir);
int ovl_rename(struct ovl_fs *fs, struct ovl_node *dir, const char *name,
	       struct ovl_node *ndir, const char *nname, unsigned int flags);

/* ovl_attr.c: ownership mapping and stat overrides */
void ovl_map_stat(struct ovl_fs *fs, struct stat *st);
uid_t ovl_uid_to_host(struct ovl_fs *fs, uid_t uid);
gid_t ovl_gid_to_host(struct ovl_fs *fs, gid_t gid);
int ovl_override_read(struct ovl_fs *fs, const char *procpath, struct stat *st);
int ovl_override_write_fd(struct ovl_fs *fs, int fd, uid_t uid, gid_t gid, mode_t mode);
int ovl_override_write(struct ovl_fs *fs, const char *procpath, uid_t uid, gid_t gid,
		       mode_t mode);

#endif
