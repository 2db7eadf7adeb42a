// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Scanning one merged directory: fold each layer's copy of it into a map of names the way
 * kernel overlayfs resolves them:
 *
 *  - the topmost layer holding a name decides it; a non-directory there hides everything
 *    below, a directory merges with directories of the same name below it until a layer
 *    where that directory is opaque, or a lower layer holding a whiteout or a non-directory;
 *  - whiteouts (char 0/0, ".wh.NAME") hide the name in lower layers and never show;
 *  - ".wh."-prefixed names and overlay-private xattrs never reach the image.
 *
 * then read the xattrs and link targets of what is visible.  All whiteout conventions come
 * from fs/overlay/whiteout.h so this agrees with the union.
 *
 * A scan touches nothing shared but the (thread-safe) layers, so a small pool of threads
 * runs scans ahead of the walk.  The pool's queue is a stack: the walk goes depth first and
 * wants the directories it queued last, first.
 */
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "overlay/whiteout.h"
#include "squashfs/scan.h"

/* Directories scanned by the pool but not yet taken by the walk: bounds the memory a wide
 * tree can make the pool hold. */
#define SCAN_AHEAD_MAX 1024

struct scan_pool {
	struct wctx *c;
	pthread_mutex_t mu;
	pthread_cond_t work_cv, done_cv;
	struct scan *top;
	size_t ahead;
	bool quit;
	pthread_t *t;
	int n;
};

/* ---- errors --------------------------------------------------------------------------- */

static int vbuf_error(char *buf, size_t size, int err, const char *fmt, va_list ap)
{
	int n = vsnprintf(buf, size, fmt, ap);

	if (err && n >= 0 && (size_t)n < size)
		snprintf(buf + n, size - n, ": %s", strerror(-err));
	return err;
}

static int buf_error(char *buf, size_t size, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int buf_error(char *buf, size_t size, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vbuf_error(buf, size, err, fmt, ap);
	va_end(ap);
	return err;
}

static int sc_error(struct scan *s, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int sc_error(struct scan *s, int err, const char *fmt, ...)
{
	va_list ap;

	if (s->ret)
		return err;
	s->ret = err;
	va_start(ap, fmt);
	vbuf_error(s->err, sizeof(s->err), err, fmt, ap);
	va_end(ap);
	return err;
}

/* ---- the map of names ----------------------------------------------------------------- */

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

static void fmap_free(struct fmap *m)
{
	for (size_t i = 0; i < m->n; i++) {
		struct fent *e = m->all[i];
		for (int k = 0; k < e->nsrcs; k++)
			free(e->srcs[k].path);
		free(e->srcs);
		free(e->name);
		free(e->xblob);
		free(e->symlink);
		free(e);
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

/* "a/b" or "/a" match the whole path from the root; "*.pyc" matches any basename */
static bool excluded(const struct sqfs_writer_opts *o, const char *path, const char *name)
{
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

/* ---- readdir into a name list --------------------------------------------------------- */

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

/* ---- xattrs --------------------------------------------------------------------------- */

static bool xattr_storable(const char *name)
{
	return !strncmp(name, "user.", 5) || !strncmp(name, "trusted.", 8) ||
	       !strncmp(name, "security.", 9);
}

static int put_pair(struct wbuf *b, const char *name, const void *val, uint32_t vl)
{
	uint16_t nl = (uint16_t)strlen(name);

	if (wbuf_put(b, &nl, 2) || wbuf_put(b, name, nl) || wbuf_put(b, &vl, 4) ||
	    wbuf_put(b, val, vl))
		return -ENOMEM;
	return 0;
}

int scan_read_xattrs(struct layer *l, const struct lnode *n, unsigned char **out,
		     size_t *outlen, uint32_t *count, char *err, size_t errlen)
{
	struct wbuf blob = { 0 };
	char *list = NULL, **names = NULL, *val = NULL;
	size_t nnames = 0;
	ssize_t len;
	int ret = 0;

	*out = NULL;
	*outlen = 0;
	*count = 0;
	len = l->ops->listxattr(l, n, NULL, 0);
	if (len == -ENOTSUP || len == -ENODATA || len == 0)
		return 0;
	if (len < 0)
		return buf_error(err, errlen, (int)len, "cannot list xattrs of %s/%s", l->spec,
				 n->path);
	list = malloc(len + 1);
	names = calloc(len + 1, sizeof(*names));
	if (!list || !names)
		goto nomem;
	len = l->ops->listxattr(l, n, list, len);
	if (len < 0) {
		ret = buf_error(err, errlen, (int)len, "cannot list xattrs of %s/%s", l->spec,
				n->path);
		goto out;
	}
	list[len] = 0;
	for (char *p = list; p < list + len; p += strlen(p) + 1)
		if (*p && xattr_storable(p) && !wh_xattr_is_private(p))
			names[nnames++] = p;
	if (nnames)
		qsort(names, nnames, sizeof(*names), cmp_str);
	for (size_t i = 0; i < nnames; i++) {
		ssize_t vlen = l->ops->getxattr(l, n, names[i], NULL, 0);
		if (vlen == -ENODATA)
			continue;
		if (vlen >= 0) {
			free(val);
			val = malloc(vlen + 1);
			if (!val)
				goto nomem;
			vlen = l->ops->getxattr(l, n, names[i], val, vlen);
		}
		if (vlen < 0) {
			ret = buf_error(err, errlen, (int)vlen, "cannot read xattr %s of %s/%s",
					names[i], l->spec, n->path);
			goto out;
		}
		if (put_pair(&blob, names[i], val, (uint32_t)vlen))
			goto nomem;
		(*count)++;
	}
	*out = blob.p;
	*outlen = blob.len;
	blob.p = NULL;
out:
	free(val);
	free(names);
	free(list);
	wbuf_free(&blob);
	return ret;
nomem:
	ret = buf_error(err, errlen, -ENOMEM, "out of memory reading xattrs");
	goto out;
}

/* ---- merging -------------------------------------------------------------------------- */

/* Fold the entry `name` of one layer's copy of a directory into the map.  `path` is its
 * path in the layer, which is also its path in the merged tree. */
static int merge_name(struct wctx *c, struct scan *s, const struct dsrc *d,
		      const struct lnode *dir, const char *name, const char *path)
{
	struct fmap *m = &s->m;
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
		return sc_error(s, ret, "cannot stat %s/%s", d->l->spec, path);
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

/* Fold one layer's copy of the directory into the map of names. */
static int merge_layer(struct wctx *c, struct scan *s, const struct dsrc *d)
{
	struct lnode dir = { .path = d->path, .ref = d->ref };
	struct names nl = { 0 };
	size_t dlen = strlen(d->path);
	int ret;

	ret = d->l->ops->readdir(d->l, &dir, collect_name, &nl);
	if (nl.err)
		ret = nl.err;
	if (ret < 0) {
		ret = sc_error(s, ret, "cannot read directory %s/%s", d->l->spec, d->path);
		goto out;
	}
	/* sorted so that the map (and what the walk sees) does not depend on readdir order */
	if (nl.n)
		qsort(nl.v, nl.n, sizeof(*nl.v), cmp_str);
	for (size_t i = 0; i < nl.n && !ret; i++) {
		const char *name = nl.v[i];
		size_t len = dlen + !!dlen + strlen(name);
		char *path;

		if (wh_is_reserved_name(name))
			continue;        /* whiteout files are handled below */
		if (strlen(name) > SQFS_NAME_MAX) {
			ret = sc_error(s, -ENAMETOOLONG, "name too long for SquashFS: %s/%s",
				       d->l->spec, name);
			break;
		}
		if (len >= PATH_MAX) {
			ret = sc_error(s, -ENAMETOOLONG, "path too long (%zu bytes, limit %d): "
				       "%s/%s/%s", len, PATH_MAX - 1, d->l->spec, d->path, name);
			break;
		}
		path = join(d->path, name);
		ret = path ? merge_name(c, s, d, &dir, name, path) : -ENOMEM;
		free(path);
	}
	/* ".wh.NAME" hides NAME in the layers below this one. */
	for (size_t i = 0; i < nl.n && !ret; i++) {
		const char *hidden = wh_hidden_name(nl.v[i]);
		struct fent *e;

		if (!hidden || !*hidden)
			continue;
		e = fmap_get(&s->m, hidden);
		if (e)
			e->stop = true;
		else if (!fmap_add(&s->m, hidden, FE_HIDDEN))
			ret = -ENOMEM;
	}
out:
	names_free(&nl);
	return ret;
}

static int cmp_fent(const void *a, const void *b)
{
	return strcmp((*(struct fent *const *)a)->name, (*(struct fent *const *)b)->name);
}

/* What the image stores besides the stat: xattrs and link targets. */
static int read_extras(struct wctx *c, struct scan *s, struct fent *e)
{
	struct dsrc *d = &e->srcs[0];
	struct lnode ln = { .path = d->path, .ref = d->ref };
	int ret;

	if (!c->o->no_xattrs) {
		ret = scan_read_xattrs(d->l, &ln, &e->xblob, &e->xlen, &e->xcount, s->err,
				       sizeof(s->err));
		if (ret)
			return s->ret = ret;
	}
	if (S_ISLNK(e->st.st_mode)) {
		char buf[PATH_MAX + 1];
		ssize_t len = d->l->ops->readlink(d->l, &ln, buf, sizeof(buf) - 1);
		if (len < 0)
			return sc_error(s, (int)len, "cannot read symlink %s/%s", d->l->spec,
					d->path);
		buf[len] = 0;
		e->symlink = strdup(buf);
		if (!e->symlink)
			return -ENOMEM;
	}
	return 0;
}

void scan_run(struct wctx *c, struct scan *s)
{
	int ret = 0;

	if (__atomic_load_n(&c->abort, __ATOMIC_RELAXED)) {
		s->ret = -ECANCELED;
		return;
	}
	/* srcs ends at the first layer where this directory is opaque (merge_name stopped
	 * collecting there); the root, like the kernel's, merges every layer */
	for (int i = 0; i < s->nsrcs && !ret; i++)
		ret = merge_layer(c, s, &s->srcs[i]);
	if (!ret) {
		s->kids = malloc((s->m.n + 1) * sizeof(*s->kids));
		if (!s->kids)
			ret = -ENOMEM;
	}
	for (size_t i = 0; !ret && i < s->m.n; i++)
		if (s->m.all[i]->state != FE_HIDDEN)
			s->kids[s->nkids++] = s->m.all[i];
	if (!ret && s->nkids)
		qsort(s->kids, s->nkids, sizeof(*s->kids), cmp_fent);
	for (size_t i = 0; !ret && i < s->nkids; i++)
		ret = read_extras(c, s, s->kids[i]);
	if (ret == -ENOMEM)
		sc_error(s, ret, "out of memory");
	else if (ret && !s->ret)
		s->ret = ret;
}

struct scan *scan_new(const struct dsrc *srcs, int nsrcs)
{
	struct scan *s = calloc(1, sizeof(*s));

	if (s) {
		s->srcs = srcs;
		s->nsrcs = nsrcs;
	}
	return s;
}

void scan_free(struct scan *s)
{
	if (!s)
		return;
	fmap_free(&s->m);
	free(s->kids);
	free(s);
}

/* ---- the pool ------------------------------------------------------------------------- */

static void *scan_main(void *arg)
{
	struct scan_pool *p = arg;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->quit && (!p->top || p->ahead >= SCAN_AHEAD_MAX))
			pthread_cond_wait(&p->work_cv, &p->mu);
		if (p->quit)
			break;
		struct scan *s = p->top;
		p->top = s->next;
		s->state = SCAN_RUNNING;
		s->by_pool = true;
		p->ahead++;
		pthread_mutex_unlock(&p->mu);
		scan_run(p->c, s);
		pthread_mutex_lock(&p->mu);
		s->state = SCAN_DONE;
		pthread_cond_broadcast(&p->done_cv);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

struct scan_pool *scan_pool_new(struct wctx *c, int nthreads)
{
	struct scan_pool *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->c = c;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work_cv, NULL);
	pthread_cond_init(&p->done_cv, NULL);
	p->t = calloc(nthreads > 0 ? nthreads : 1, sizeof(*p->t));
	if (!p->t) {
		free(p);
		return NULL;
	}
	for (int i = 0; i < nthreads; i++) {
		if (pthread_create(&p->t[i], NULL, scan_main, p))
			break;           /* fewer threads only cost speed */
		p->n++;
	}
	return p;
}

void scan_pool_free(struct scan_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->quit = true;
	pthread_cond_broadcast(&p->work_cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n; i++)
		pthread_join(p->t[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->work_cv);
	pthread_cond_destroy(&p->done_cv);
	free(p->t);
	free(p);
}

void scan_submit(struct scan_pool *p, struct scan **v, size_t n)
{
	if (!n)
		return;
	pthread_mutex_lock(&p->mu);
	for (size_t i = n; i-- > 0;) {
		v[i]->state = SCAN_QUEUED;
		v[i]->next = p->top;
		p->top = v[i];
	}
	pthread_cond_broadcast(&p->work_cv);
	pthread_mutex_unlock(&p->mu);
}

/* Remove s from the stack if it is still there (under the lock). */
static bool unqueue(struct scan_pool *p, struct scan *s)
{
	for (struct scan **pp = &p->top; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			return true;
		}
	return false;
}

/* Take s out of the pool's hands: unqueued (returns true) or done. */
static bool settle(struct scan_pool *p, struct scan *s)
{
	bool mine;

	pthread_mutex_lock(&p->mu);
	/* never queued (an error came first), or still queued: not the pool's */
	mine = s->state == SCAN_NEW || (s->state == SCAN_QUEUED && unqueue(p, s));
	if (mine)
		s->state = SCAN_RUNNING;
	while (!mine && s->state != SCAN_DONE)
		pthread_cond_wait(&p->done_cv, &p->mu);
	if (!mine && s->by_pool) {
		p->ahead--;
		pthread_cond_signal(&p->work_cv);
	}
	pthread_mutex_unlock(&p->mu);
	return mine;
}

void scan_wait(struct scan_pool *p, struct scan *s)
{
	if (settle(p, s))
		scan_run(p->c, s);       /* nobody started it: do it here rather than wait */
	s->state = SCAN_DONE;
}

void scan_cancel(struct scan_pool *p, struct scan *s)
{
	if (settle(p, s))
		s->ret = -ECANCELED;
	s->state = SCAN_DONE;
}
