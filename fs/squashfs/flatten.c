// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Flatten: walk the union of a layer stack (top first) and build the in-memory tree of
 * what the merged view shows, the way kernel overlayfs resolves it:
 *
 *  - the topmost layer holding a name decides it; a non-directory there hides everything
 *    below, a directory merges with directories of the same name below it until a layer
 *    where that directory is opaque, or a lower layer holding a whiteout or a non-directory;
 *  - whiteouts (char 0/0, ".wh.NAME") hide the name in lower layers and never show;
 *  - ".wh."-prefixed names and overlay-private xattrs never reach the image.
 *
 * Only metadata is kept; file data is streamed later from (layer, path) by writer_data.c.
 * All whiteout conventions come from fs/overlay/whiteout.h so this agrees with the union.
 */
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

#include <xxhash.h>

#include "overlay/whiteout.h"
#include "squashfs/writer_int.h"

/* One layer's copy of a directory taking part in a merge. */
struct dsrc {
	struct layer *l;
	char *path;
	uint64_t ref;
};

enum { FE_HIDDEN, FE_FINAL, FE_DIR };

/* One name of a merged directory while its layers are being combined. */
struct fent {
	char *name;
	int state;
	bool stop;               /* FE_DIR: lower layers no longer merge */
	struct stat st;          /* from the topmost layer that holds the name */
	struct dsrc *srcs;       /* FE_FINAL: srcs[0]; FE_DIR: every merged layer */
	int nsrcs;
	struct fent *next;
};

struct fmap {
	struct fent **b;
	size_t nb, n;
	struct fent **all;       /* insertion order, for freeing and sorting */
	size_t cap;
};

struct hl_ent {
	int layer;
	ino_t ino;
	struct wnode *owner;
	struct hl_ent *next;
};

static uint64_t hash_str(const char *s)
{
	return XXH3_64bits(s, strlen(s));
}

static struct fent *fmap_get(struct fmap *m, const char *name)
{
	if (!m->nb)
		return NULL;
	for (struct fent *e = m->b[hash_str(name) & (m->nb - 1)]; e; e = e->next)
		if (!strcmp(e->name, name))
			return e;
	return NULL;
}

static int fmap_grow(struct fmap *m)
{
	size_t nb = m->nb ? m->nb * 2 : 64;
	struct fent **b = calloc(nb, sizeof(*b));

	if (!b)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		struct fent *e = m->all[i];
		size_t h = hash_str(e->name) & (nb - 1);
		e->next = b[h];
		b[h] = e;
	}
	free(m->b);
	m->b = b;
	m->nb = nb;
	return 0;
}

static struct fent *fmap_add(struct fmap *m, const char *name, int state)
{
	struct fent *e;

	if (m->n + 1 > m->nb && fmap_grow(m))
		return NULL;
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 64;
		struct fent **all = realloc(m->all, cap * sizeof(*all));
		if (!all)
			return NULL;
		m->all = all;
		m->cap = cap;
	}
	e = calloc(1, sizeof(*e));
	if (!e || !(e->name = strdup(name))) {
		free(e);
		return NULL;
	}
	e->state = state;
	size_t h = hash_str(name) & (m->nb - 1);
	e->next = m->b[h];
	m->b[h] = e;
	m->all[m->n++] = e;
	return e;
}

static void free_srcs(struct dsrc *s, int n)
{
	for (int i = 0; i < n; i++)
		free(s[i].path);
	free(s);
}

static void fmap_free(struct fmap *m)
{
	for (size_t i = 0; i < m->n; i++) {
		free(m->all[i]->name);
		free_srcs(m->all[i]->srcs, m->all[i]->nsrcs);
		free(m->all[i]);
	}
	free(m->all);
	free(m->b);
}

static int add_src(struct fent *e, struct layer *l, const char *path, uint64_t ref)
{
	struct dsrc *s = realloc(e->srcs, (e->nsrcs + 1) * sizeof(*s));

	if (!s)
		return -ENOMEM;
	e->srcs = s;
	s[e->nsrcs].l = l;
	s[e->nsrcs].ref = ref;
	s[e->nsrcs].path = strdup(path);
	if (!s[e->nsrcs].path)
		return -ENOMEM;
	e->nsrcs++;
	return 0;
}

static char *join(const char *dir, const char *name)
{
	char *p;

	if (!*dir)
		return strdup(name);
	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return NULL;
	return p;
}

static bool excluded(const struct sqfs_writer_opts *o, const char *path, const char *name)
{
	/* "a/b" or "/a" match the whole path from the root; "*.pyc" matches any basename */
	for (int i = 0; i < o->nexcludes; i++) {
		const char *pat = o->excludes[i];

		if (strchr(pat, '/')) {
			while (*pat == '/')
				pat++;
			if (!fnmatch(pat, path, FNM_PATHNAME))
				return true;
		} else if (!fnmatch(pat, name, 0)) {
			return true;
		}
	}
	return false;
}

/* ---- readdir into a name list ---------------------------------------------------- */

struct names {
	char **v;
	size_t n, cap;
	int err;
};

static int collect_name(void *ctx, const char *name, unsigned char d_type, uint64_t ino)
{
	struct names *nl = ctx;

	(void)d_type;
	(void)ino;
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return 0;
	if (nl->n == nl->cap) {
		size_t cap = nl->cap ? nl->cap * 2 : 32;
		char **v = realloc(nl->v, cap * sizeof(*v));
		if (!v)
			goto nomem;
		nl->v = v;
		nl->cap = cap;
	}
	nl->v[nl->n] = strdup(name);
	if (!nl->v[nl->n])
		goto nomem;
	nl->n++;
	return 0;
nomem:
	nl->err = -ENOMEM;
	return 1;
}

static void names_free(struct names *nl)
{
	for (size_t i = 0; i < nl->n; i++)
		free(nl->v[i]);
	free(nl->v);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- xattrs ---------------------------------------------------------------------- */

static bool xattr_storable(const char *name)
{
	return !strncmp(name, "user.", 5) || !strncmp(name, "trusted.", 8) ||
	       !strncmp(name, "security.", 9);
}

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

/* Read the storable, non-private xattrs of (l, n), sorted by name, into an interned set. */
static int read_xattrs(struct wctx *c, struct layer *l, const struct lnode *n,
		       struct wx_set **out)
{
	struct wbuf blob = { 0 };
	char *list = NULL, **names = NULL, *val = NULL;
	size_t nnames = 0;
	uint32_t count = 0;
	ssize_t len;
	int ret = 0;

	*out = NULL;
	len = l->ops->listxattr(l, n, NULL, 0);
	if (len == -ENOTSUP || len == -ENODATA || len == 0)
		return 0;
	if (len < 0)
		return wr_error(c, (int)len, "cannot list xattrs of %s/%s", l->spec, n->path);
	list = malloc(len + 1);
	names = calloc(len + 1, sizeof(*names));
	if (!list || !names)
		goto nomem;
	len = l->ops->listxattr(l, n, list, len);
	if (len < 0) {
		ret = wr_error(c, (int)len, "cannot list xattrs of %s/%s", l->spec, n->path);
		goto out;
	}
	list[len] = 0;
	for (char *p = list; p < list + len; p += strlen(p) + 1)
		if (*p && xattr_storable(p) && !wh_xattr_is_private(p))
			names[nnames++] = p;
	qsort(names, nnames, sizeof(*names), cmp_str);
	for (size_t i = 0; i < nnames; i++) {
		ssize_t vlen = l->ops->getxattr(l, n, names[i], NULL, 0);
		if (vlen == -ENODATA)
			continue;
		if (vlen < 0) {
			ret = wr_error(c, (int)vlen, "cannot read xattr %s of %s/%s", names[i],
				       l->spec, n->path);
			goto out;
		}
		free(val);
		val = malloc(vlen + 1);
		if (!val)
			goto nomem;
		vlen = l->ops->getxattr(l, n, names[i], val, vlen);
		if (vlen < 0) {
			ret = wr_error(c, (int)vlen, "cannot read xattr %s of %s/%s", names[i],
				       l->spec, n->path);
			goto out;
		}
		uint16_t nl = (uint16_t)strlen(names[i]);
		uint32_t vl = (uint32_t)vlen;
		if (wbuf_put(&blob, &nl, 2) || wbuf_put(&blob, names[i], nl) ||
		    wbuf_put(&blob, &vl, 4) || wbuf_put(&blob, val, vl))
			goto nomem;
		count++;
	}
	if (blob.len) {
		*out = xset_intern(c, blob.p, blob.len, count);
		if (!*out)
			goto nomem;
		blob.p = NULL;
	}
out:
	free(val);
	free(names);
	free(list);
	wbuf_free(&blob);
	return ret;
nomem:
	ret = wr_error(c, -ENOMEM, "out of memory reading xattrs");
	goto out;
}

/* ---- nodes ----------------------------------------------------------------------- */

int wnode_path(const struct wnode *n, char *buf, size_t size)
{
	size_t len = 0, pos;

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

static int fill_node(struct wctx *c, struct wnode *n, struct dsrc *s, const struct stat *st)
{
	const struct sqfs_writer_opts *o = c->o;
	struct lnode ln = { .path = s->path, .ref = s->ref };
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
	if (!o->no_xattrs) {
		ret = read_xattrs(c, s->l, &ln, &n->xattrs);
		if (ret)
			return ret;
	}
	switch (st->st_mode & S_IFMT) {
	case S_IFREG:
		__atomic_add_fetch(&c->st->files, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&c->st->total_bytes, (uint64_t)st->st_size, __ATOMIC_RELAXED);
		n->size = (uint64_t)st->st_size;
		n->layer = s->l;
		n->ref = s->ref;
		if (add_file(c, n))
			return wr_error(c, -ENOMEM, "out of memory");
		return 0;
	case S_IFLNK: {
		char buf[PATH_MAX + 1];
		ssize_t len = s->l->ops->readlink(s->l, &ln, buf, sizeof(buf) - 1);
		if (len < 0)
			return wr_error(c, (int)len, "cannot read symlink %s/%s", s->l->spec,
					s->path);
		buf[len] = 0;
		n->symlink = strdup(buf);
		c->st->symlinks++;
		return n->symlink ? 0 : wr_error(c, -ENOMEM, "out of memory");
	}
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

/* ---- merging one directory ------------------------------------------------------- */

/* Fold one layer's copy of a directory into the map of names. */
/* Fold the entry `name` of one layer's copy of a directory into the map.  `path` is its
 * path in the layer, which is also its path in the merged tree. */
static int merge_name(struct wctx *c, struct fmap *m, struct dsrc *d,
		      const struct lnode *dir, const char *name, const char *path)
{
	struct fent *e = fmap_get(m, name);
	struct lnode child = { .path = path, .ref = 0 };
	struct stat st;
	int ret;

	if (e && (e->state != FE_DIR || e->stop))
		return 0;                /* decided by a higher layer */
	if (!e && excluded(c->o, path, name))
		/* hidden, so lower layers cannot bring it back */
		return fmap_add(m, name, FE_HIDDEN) ? 0 : -ENOMEM;
	ret = d->l->ops->lookup(d->l, dir, name, &child, &st);
	if (ret < 0)
		return wr_error(c, ret, "cannot stat %s/%s", d->l->spec, path);
	if (d->l->root_fd >= 0 && c->skip_ino && st.st_ino == c->skip_ino &&
	    st.st_dev == c->skip_dev)
		/* the image being replaced lies inside a layer */
		return e || fmap_add(m, name, FE_HIDDEN) ? 0 : -ENOMEM;
	if (wh_is_chardev_whiteout(&st)) {
		if (e)
			e->stop = true;
		else if (!fmap_add(m, name, FE_HIDDEN))
			return -ENOMEM;
	} else if (!e) {
		e = fmap_add(m, name, S_ISDIR(st.st_mode) ? FE_DIR : FE_FINAL);
		if (!e || add_src(e, d->l, path, child.ref))
			return -ENOMEM;
		e->st = st;
		if (S_ISDIR(st.st_mode) && wh_layer_dir_is_opaque(d->l, &child))
			e->stop = true;
	} else if (S_ISDIR(st.st_mode)) {
		if (add_src(e, d->l, path, child.ref))
			return -ENOMEM;
		if (wh_layer_dir_is_opaque(d->l, &child))
			e->stop = true;
	} else {
		e->stop = true;          /* a lower non-directory ends the merge */
	}
	return 0;
}

/* Fold one layer's copy of a directory into the map of names. */
static int merge_layer(struct wctx *c, struct fmap *m, struct dsrc *d)
{
	struct lnode dir = { .path = d->path, .ref = d->ref };
	struct names nl = { 0 };
	size_t dlen = strlen(d->path);
	int ret;

	ret = d->l->ops->readdir(d->l, &dir, collect_name, &nl);
	if (nl.err)
		ret = nl.err;
	if (ret < 0) {
		ret = wr_error(c, ret, "cannot read directory %s/%s", d->l->spec, d->path);
		goto out;
	}
	/* Sorted so the walk (and so hard-link owners, ids, xattr ids) is reproducible. */
	if (nl.n)
		qsort(nl.v, nl.n, sizeof(*nl.v), cmp_str);
	for (size_t i = 0; i < nl.n && !ret; i++) {
		const char *name = nl.v[i];
		size_t len = dlen + !!dlen + strlen(name);
		char *path;

		if (wh_is_reserved_name(name))
			continue;        /* whiteout files are handled below */
		if (strlen(name) > SQFS_NAME_MAX) {
			ret = wr_error(c, -ENAMETOOLONG, "name too long for SquashFS: %s/%s",
				       d->l->spec, name);
			break;
		}
		if (len >= PATH_MAX) {
			ret = wr_error(c, -ENAMETOOLONG, "path too long (%zu bytes, limit %d): "
				       "%s/%s/%s", len, PATH_MAX - 1, d->l->spec, d->path, name);
			break;
		}
		path = join(d->path, name);
		ret = path ? merge_name(c, m, d, &dir, name, path) : -ENOMEM;
		free(path);
	}
	/* ".wh.NAME" hides NAME in the layers below this one. */
	for (size_t i = 0; i < nl.n && !ret; i++) {
		const char *hidden = wh_hidden_name(nl.v[i]);
		struct fent *e;

		if (!hidden || !*hidden)
			continue;
		e = fmap_get(m, hidden);
		if (e)
			e->stop = true;
		else if (!fmap_add(m, hidden, FE_HIDDEN))
			ret = -ENOMEM;
	}
	if (ret == -ENOMEM)
		ret = wr_error(c, ret, "out of memory");
out:
	names_free(&nl);
	return ret;
}

static int cmp_fent(const void *a, const void *b)
{
	return strcmp((*(struct fent *const *)a)->name, (*(struct fent *const *)b)->name);
}

static int merge_dir(struct wctx *c, struct wnode *dn, struct dsrc *srcs, int nsrcs)
{
	struct fmap m = { 0 };
	struct fent **kids = NULL;
	size_t nkids = 0;
	int ret = 0;

	if (__atomic_load_n(&c->abort, __ATOMIC_RELAXED))
		return -ECANCELED;
	/* srcs already ends at the first layer where this directory is opaque (merge_layer
	 * stopped collecting there); the root, like the kernel's, merges every layer. */
	for (int i = 0; i < nsrcs; i++) {
		ret = merge_layer(c, &m, &srcs[i]);
		if (ret)
			goto out;
	}
	kids = malloc((m.n + 1) * sizeof(*kids));
	if (!kids)
		goto nomem;
	for (size_t i = 0; i < m.n; i++)
		if (m.all[i]->state != FE_HIDDEN)
			kids[nkids++] = m.all[i];
	qsort(kids, nkids, sizeof(*kids), cmp_fent);
	dn->children = calloc(nkids + 1, sizeof(*dn->children));
	if (!dn->children)
		goto nomem;
	for (size_t i = 0; i < nkids; i++) {
		struct wnode *n = calloc(1, sizeof(*n));
		if (!n || !(n->name = strdup(kids[i]->name))) {
			free(n);
			goto nomem;
		}
		n->parent = dn;
		dn->children[dn->nchildren++] = n;
		ret = fill_node(c, n, &kids[i]->srcs[0], &kids[i]->st);
		if (ret)
			goto out;
	}
	publish_files(c);
	/* Recurse after the map's names are settled; only the child's layer list survives. */
	for (size_t i = 0; i < nkids; i++) {
		struct wnode *n = dn->children[i];

		if (!S_ISDIR(n->mode))
			continue;
		ret = merge_dir(c, n, kids[i]->srcs, kids[i]->nsrcs);
		if (ret)
			goto out;
	}
out:
	free(kids);
	fmap_free(&m);
	return ret;
nomem:
	ret = wr_error(c, -ENOMEM, "out of memory");
	goto out;
}

int wr_flatten(struct wctx *c)
{
	struct dsrc *srcs = calloc(c->nlayers, sizeof(*srcs));
	struct stat st;
	int ret;

	c->root = calloc(1, sizeof(*c->root));
	if (!srcs || !c->root || !(c->root->name = strdup("")))
		return wr_error(c, -ENOMEM, "out of memory");
	for (int i = 0; i < c->nlayers; i++) {
		srcs[i].l = c->layers[i];
		srcs[i].path = (char *)"";
	}
	{
		struct lnode ln = { .path = "", .ref = 0 };
		ret = c->layers[0]->ops->getattr(c->layers[0], &ln, &st);
		if (ret < 0) {
			ret = wr_error(c, ret, "cannot stat the root of %s", c->layers[0]->spec);
			goto out;
		}
	}
	ret = fill_node(c, c->root, &srcs[0], &st);
	if (ret)
		goto out;
	ret = merge_dir(c, c->root, srcs, c->nlayers);
out:
	free(srcs);
	return ret;
}

static void free_node(struct wnode *n)
{
	for (uint32_t i = 0; i < n->nchildren; i++)
		free_node(n->children[i]);
	free(n->children);
	free(n->name);
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
	for (uint32_t i = 0; i < c->nxsets; i++) {
		free(c->xsets[i]->blob);
		free(c->xsets[i]);
	}
	free(c->xsets);
	free(c->xset_hash);
	free(c->files);
}
