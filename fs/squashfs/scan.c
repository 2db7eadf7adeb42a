// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Scanning one merged directory: fold each layer's copy of it into a map of names the way
 * kernel overlayfs resolves them:
 *
 *  - the topmost layer holding a name decides it; a non-directory there hides everything
 *    below, a directory merges with directories of the same name below it until a layer
 *    where that directory is opaque, or a lower layer holding a whiteout or a non-directory;
 *  - whiteouts (char 0/0, ".wh.NAME") hide the name in lower layers and never show;
 *  - a redirected directory (overlay.redirect, from a rename with redirect_dir) does not
 *    merge with what lies at its own path below; its lower layers are looked up at the
 *    redirect's path instead (see "redirects" below);
 *  - ".wh."-prefixed names and overlay-private xattrs never reach the image.
 *
 * then read the xattrs and link targets of what is visible.  All whiteout conventions come
 * from fs/overlay/whiteout.h, and the rules are the union's and the audit's
 * (fs/overlay/audit.c), so the image, the mount and the audit agree.
 *
 * On the way a scan records what its merge hides (a lower entry that meets a name a higher
 * layer decided, with everything below it) and what a redirect shows, so that the walk can
 * report the hidden bytes the way `mkimage audit` counts them without walking twice.
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
		free(e->rpath);
		free(e->name);
		free(e->xblob);
		free(e->symlink);
		free(e);
	}
	free(m->all);
	free(m->b);
}

static int add_src(struct fent *e, struct layer *l, const char *path, uint64_t ref,
		   bool redir)
{
	struct dsrc *s = realloc(e->srcs, (e->nsrcs + 1) * sizeof(*s));

	if (!s)
		return -ENOMEM;
	e->srcs = s;
	s[e->nsrcs].l = l;
	s[e->nsrcs].ref = ref;
	s[e->nsrcs].redir = redir;
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

/* ---- what the stack hides ----------------------------------------------------------- */

static int hs_add(struct hidden_set *h, struct hrec **v, size_t *n, size_t *cap, int layer,
		  const char *path, const struct stat *st)
{
	struct hrec *r;

	if (*n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		struct hrec *nv = realloc(*v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		*v = nv;
		*cap = ncap;
	}
	r = &(*v)[*n];
	memset(r, 0, sizeof(*r));
	r->layer = layer;
	if (st) {
		r->mode = st->st_mode;
		r->nlink = st->st_nlink;
		r->ino = st->st_ino;
		r->size = S_ISREG(st->st_mode) ? (uint64_t)st->st_size : 0;
	}
	r->path = h->paths.len;
	if (wbuf_put(&h->paths, path, strlen(path) + 1))
		return -ENOMEM;
	(*n)++;
	return 0;
}

static int hs_hide(struct hidden_set *h, int layer, const char *path, const struct stat *st)
{
	return hs_add(h, &h->hid, &h->nhid, &h->caphid, layer, path, st);
}

/* An entry of a layer that a redirect shows (at another path than its own). */
static int hs_show(struct hidden_set *h, int layer, const char *path)
{
	return hs_add(h, &h->shown, &h->nshown, &h->capshown, layer, path, NULL);
}

static int hs_append(struct hrec **dv, size_t *dn, size_t *dcap, const struct hrec *sv,
		     size_t sn, size_t base)
{
	if (!sn)
		return 0;
	if (*dn + sn > *dcap) {
		size_t cap = *dcap ? *dcap : 64;
		struct hrec *v;

		while (cap < *dn + sn)
			cap *= 2;
		v = realloc(*dv, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		*dv = v;
		*dcap = cap;
	}
	for (size_t i = 0; i < sn; i++) {
		(*dv)[*dn + i] = sv[i];
		(*dv)[*dn + i].path += base;
	}
	*dn += sn;
	return 0;
}

int hidden_set_move(struct hidden_set *dst, struct hidden_set *src)
{
	size_t base = dst->paths.len;
	int ret = 0;

	if (!dst->err && src->err) {
		hidden_set_free(dst);    /* no total to settle: keep no records */
		dst->err = src->err;
	}
	if (!dst->err && src->paths.len) {
		if (wbuf_put(&dst->paths, src->paths.p, src->paths.len) ||
		    hs_append(&dst->hid, &dst->nhid, &dst->caphid, src->hid, src->nhid, base) ||
		    hs_append(&dst->shown, &dst->nshown, &dst->capshown, src->shown, src->nshown,
			      base))
			ret = -ENOMEM;
	}
	hidden_set_free(src);
	return ret;
}

void hidden_set_free(struct hidden_set *h)
{
	free(h->hid);
	free(h->shown);
	free(h->exp);
	wbuf_free(&h->paths);
	h->hid = h->shown = NULL;
	h->exp = NULL;
	h->nhid = h->caphid = h->nshown = h->capshown = h->nexp = h->capexp = 0;
}

/* (l, n) and everything below it are hidden. */
static int hide_tree(struct layer *l, const struct lnode *n, const struct stat *st,
		     struct hidden_set *h)
{
	int ret = hs_hide(h, l->index, n->path, st);

	return ret || !S_ISDIR(st->st_mode) ? ret : scan_hide_below(l, n, h);
}

int scan_hide_below(struct layer *l, const struct lnode *dir, struct hidden_set *h)
{
	struct names nl = { 0 };
	int ret = l->ops->readdir(l, dir, collect_name, &nl);

	if (nl.err)
		ret = nl.err;
	for (size_t i = 0; ret >= 0 && i < nl.n; i++) {
		struct lnode child = { NULL, 0 };
		struct stat cst;
		char *path;

		if (wh_is_reserved_name(nl.v[i]))
			continue;        /* markers, not entries */
		path = join(dir->path, nl.v[i]);
		if (!path) {
			ret = -ENOMEM;
			break;
		}
		child.path = path;
		if (strlen(path) >= PATH_MAX)
			ret = -ENAMETOOLONG;     /* also ends a directory loop in an image */
		else
			ret = l->ops->lookup(l, dir, nl.v[i], &child, &cst);
		if (!ret && !wh_is_chardev_whiteout(&cst))
			ret = hide_tree(l, &child, &cst, h);
		free(path);
	}
	names_free(&nl);
	return ret < 0 ? ret : 0;
}

/* A lower entry (d, n) meets a name a higher layer decided: it is hidden, with all below
 * it.  Through a redirect it is not at its own path, and the walk that reaches it there
 * decides.  The entries below a hidden directory are left to the walk's helper thread
 * (the walk need not wait for them).  A hidden entry that cannot be read costs the totals,
 * not the image. */
static int hide(struct wctx *c, struct scan *s, const struct dsrc *d, const struct lnode *n,
		const struct stat *st)
{
	struct hidden_set *h = &s->hs;

	if (d->redir || h->err || __atomic_load_n(&c->abort, __ATOMIC_RELAXED))
		return 0;
	if (hs_hide(h, d->l->index, n->path, st))
		return -ENOMEM;
	if (!S_ISDIR(st->st_mode))
		return 0;
	if (h->nexp == h->capexp) {
		size_t cap = h->capexp ? h->capexp * 2 : 16;
		struct hexp *v = realloc(h->exp, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		h->exp = v;
		h->capexp = cap;
	}
	h->exp[h->nexp].l = d->l;
	h->exp[h->nexp].ref = n->ref;
	h->exp[h->nexp++].path = h->hid[h->nhid - 1].path;
	return 0;
}

/* ---- redirects ------------------------------------------------------------------------- */

/*
 * A directory renamed by the kernel with redirect_dir carries overlay.redirect: where its
 * lower content lives.  The rules are the kernel's (ovl_lookup, ovl_lookup_layer and
 * ovl_check_redirect), the same as the union's (fs/overlay/ovl_lookup.c) and the audit's
 * (fs/overlay/audit.c): the redirected directory does not merge with what lies at its own
 * path below; every lower layer is looked up at the redirect instead.  An absolute value
 * ("/a/b") is a path from each layer's root; a relative one ("b") a name in the parent
 * directory's copy in that layer.  On the way a whiteout or a non-directory stops the
 * lookup, an opaque directory stops it below this layer, and a redirect rewrites the path
 * for the layers below (an absolute one also undoes an earlier stop).  Opaque wins over
 * redirect.
 */

/* A value the kernel follows: "/a/b" without empty components, or one name. */
static bool redirect_valid(const char *v)
{
	if (!v[0])
		return false;
	if (v[0] != '/')
		return !strchr(v, '/');
	for (const char *p = v; *p; ) {
		const char *next = strchrnul(++p, '/');

		if (next == p)
			return false;
		p = next;
	}
	return true;
}

/* Directory (d, n) merges into e.  Opaque or redirected, the merge at this path ends
 * with it (the layers below a redirect are found by redirect_srcs()). */
static int dir_src(struct fent *e, const struct dsrc *d, const struct lnode *n)
{
	char v[PATH_MAX];
	bool opaque;

	if (add_src(e, d->l, n->path, n->ref, d->redir))
		return -ENOMEM;
	wh_layer_dir_marks(d->l, n, &opaque, v, sizeof(v));
	if (opaque) {
		e->stop = true;
	} else if (redirect_valid(v)) {
		e->stop = true;
		e->rlayer = d->l->index;
		e->rpath = strdup(v);
		if (!e->rpath)
			return -ENOMEM;
	}
	return 0;
}

/* Where the lookup below a redirect stands. */
struct rwalk {
	bool abs;                /* name is a path from the layer roots ("a/b") */
	bool stop;
	char *name;              /* else a name in the parent's directories */
};

/* A redirect `val` met on the component of w->name that has `pre` bytes before it and
 * `post` (not inside w->name) after it. */
static int rw_redirect(struct rwalk *w, const char *val, size_t pre, const char *post)
{
	char *n;
	int ret;

	if (val[0] == '/') {
		ret = asprintf(&n, "%s%s", val + strspn(val, "/"), post);
		w->abs = true;
		w->stop = false;
	} else {
		ret = asprintf(&n, "%.*s%s%s", (int)pre, w->name, val, post);
	}
	if (ret < 0)
		return -ENOMEM;
	free(w->name);
	w->name = n;
	return 0;
}

/* One component below dir: 1 a directory (n->path allocated, n->ref set), 0 absent,
 * -ENOENT when a whiteout or a non-directory stops the lookup, other negative on error. */
static int rw_find(struct layer *l, const struct lnode *dir, const char *name,
		   struct lnode *n)
{
	char wh[NAME_MAX + 1];
	struct lnode w;
	struct stat st;
	int ret;

	n->path = join(dir->path, name);
	if (!n->path)
		return -ENOMEM;
	ret = l->ops->lookup(l, dir, name, n, &st);
	if (ret == 0)
		return S_ISDIR(st.st_mode) ? 1 : -ENOENT;    /* whiteouts are not directories */
	if (ret != -ENOENT && ret != -ENOTDIR && ret != -ENAMETOOLONG)
		return ret;
	if (snprintf(wh, sizeof(wh), WH_PREFIX "%s", name) < (int)sizeof(wh) &&
	    l->ops->lookup(l, dir, wh, &w, &st) == 0)
		return -ENOENT;
	return 0;
}

/* Directory (l, n) is found for e below its redirect: it merges, and may stop the walk
 * or redirect it again. */
static int rw_found(struct scan *s, struct fent *e, struct rwalk *w, struct layer *l,
		    const struct lnode *n, size_t pre, const char *post)
{
	char v[PATH_MAX];
	bool opaque;

	if (hs_show(&s->hs, l->index, n->path) || add_src(e, l, n->path, n->ref, true))
		return -ENOMEM;
	wh_layer_dir_marks(l, n, &opaque, v, sizeof(v));
	if (opaque)
		w->stop = true;
	else if (redirect_valid(v))
		return rw_redirect(w, v, pre, post);
	return 0;
}

/* One layer, a name in the parent directory's copy in that layer (if it has one). */
static int rw_rel(struct scan *s, struct fent *e, struct rwalk *w, struct layer *l)
{
	struct lnode n = { NULL, 0 };
	int i, ret;

	for (i = 0; i < s->nsrcs && s->srcs[i].l != l; i++)
		;
	if (i == s->nsrcs)
		return 0;
	ret = rw_find(l, &(struct lnode){ s->srcs[i].path, s->srcs[i].ref }, w->name, &n);
	if (ret == 1)
		ret = rw_found(s, e, w, l, &n, 0, "");
	else if (ret == -ENOENT)
		w->stop = true;
	free((char *)n.path);
	return ret == -ENOENT ? 0 : ret;
}

/* One layer, a path from its root; a redirect on the way rewrites w->name for the layers
 * below (its suffix after the component stays, so positions count from the end). */
static int rw_abs(struct scan *s, struct fent *e, struct rwalk *w, struct layer *l)
{
	char *orig = strdup(w->name), *dpath = NULL, comp[NAME_MAX + 1], v[PATH_MAX];
	struct lnode dir = { "", 0 }, n = { NULL, 0 };
	size_t off = 0;
	bool opaque;
	int ret = 0;

	if (!orig)
		return -ENOMEM;
	for (;;) {
		const char *p = orig + off;
		size_t len = strcspn(p, "/"), pre = strlen(w->name) - strlen(p);

		if (!len || len > NAME_MAX)
			break;           /* no such name in any layer */
		memcpy(comp, p, len);
		comp[len] = 0;
		ret = rw_find(l, &dir, comp, &n);
		if (ret <= 0) {
			if (ret == -ENOENT) {
				w->stop = true;
				ret = 0;
			}
			break;
		}
		ret = 0;
		if (!p[len]) {
			ret = rw_found(s, e, w, l, &n, pre, p + len);
			break;
		}
		wh_layer_dir_marks(l, &n, &opaque, v, sizeof(v));
		if (opaque)
			w->stop = true;
		else if (redirect_valid(v) && (ret = rw_redirect(w, v, pre, p + len)))
			break;
		free(dpath);
		dpath = (char *)n.path;
		dir.path = dpath;
		dir.ref = n.ref;
		n.path = NULL;
		off += len + 1;
	}
	free((char *)n.path);
	free(dpath);
	free(orig);
	return ret;
}

/* The layers below e's redirect: what they add to e's sources. */
static int redirect_srcs(struct wctx *c, struct scan *s, struct fent *e)
{
	struct rwalk w = { .abs = e->rpath[0] == '/' };
	int ret = 0;

	w.name = strdup(e->rpath + strspn(e->rpath, "/"));
	if (!w.name)
		return -ENOMEM;
	for (int i = e->rlayer + 1; !ret && !w.stop && i < c->nlayers; i++)
		ret = w.abs ? rw_abs(s, e, &w, c->layers[i]) : rw_rel(s, e, &w, c->layers[i]);
	free(w.name);
	if (ret && ret != -ENOMEM)
		sc_error(s, ret, "cannot follow the redirect of %s%s%s (to %s) from %s",
			 s->mpath, *s->mpath ? "/" : "", e->name, e->rpath,
			 c->layers[e->rlayer]->spec);
	return ret;
}

/* ---- merging -------------------------------------------------------------------------- */

static bool is_output(struct wctx *c, const struct dsrc *d, const struct stat *st)
{
	return d->l->root_fd >= 0 && c->skip_ino && st->st_ino == c->skip_ino &&
	       st->st_dev == c->skip_dev;
}

/* The first (topmost) entry of a name. */
static int first_name(struct wctx *c, struct scan *s, const struct dsrc *d,
		      const struct lnode *n, const char *name, const struct stat *st)
{
	struct fent *e = fmap_add(&s->m, name, S_ISDIR(st->st_mode) ? FE_DIR : FE_FINAL);

	if (!e)
		return -ENOMEM;
	e->st = *st;
	e->top = d->l->index;
	/* left out of the image, but to the merge the name is there */
	e->excluded = is_output(c, d, st);
	if (!e->excluded && c->o->nexcludes) {
		char *mpath = join(s->mpath, name);

		if (!mpath)
			return -ENOMEM;
		e->excluded = excluded(c->o, mpath, name);
		free(mpath);
	}
	if (d->redir && hs_show(&s->hs, d->l->index, n->path))
		return -ENOMEM;
	if (e->state == FE_DIR)
		return dir_src(e, d, n);
	return add_src(e, d->l, n->path, n->ref, d->redir);
}

/* Fold the entry `name` of one layer's copy of a directory into the map.  `path` is its
 * path in the layer. */
static int merge_name(struct wctx *c, struct scan *s, const struct dsrc *d,
		      const struct lnode *dir, const char *name, const char *path)
{
	struct fent *e = fmap_get(&s->m, name);
	struct lnode child = { .path = path, .ref = 0 };
	bool decided = e && (e->state != FE_DIR || e->stop);
	struct stat st;
	int ret;

	if (decided && (s->hs.err || d->redir))
		return 0;                /* it would only be counted as hidden */
	ret = d->l->ops->lookup(d->l, dir, name, &child, &st);
	if (ret < 0 && decided) {
		s->hs.err = ret;
		return 0;
	}
	if (ret < 0)
		return sc_error(s, ret, "cannot stat %s/%s", d->l->spec, path);
	if (wh_is_chardev_whiteout(&st)) {
		if (!e)
			return fmap_add(&s->m, name, FE_HIDDEN) ? 0 : -ENOMEM;
		e->stop = true;
		return 0;
	}
	if (!e)
		return first_name(c, s, d, &child, name, &st);
	if (decided)
		return hide(c, s, d, &child, &st);
	if (!S_ISDIR(st.st_mode)) {
		e->stop = true;          /* a lower non-directory ends the merge, hidden by it */
		return hide(c, s, d, &child, &st);
	}
	if (d->redir && hs_show(&s->hs, d->l->index, path))
		return -ENOMEM;
	return dir_src(e, d, &child);
}

/* ".wh.NAME" files of one layer (names sorted): NAME is deleted below, unless the layer
 * holds NAME itself (then the union finds NAME there and goes on below). */
static int merge_whiteouts(struct scan *s, const struct names *nl)
{
	for (size_t i = 0; i < nl->n; i++) {
		const char *hidden = wh_hidden_name(nl->v[i]);
		struct fent *e;

		if (!hidden || bsearch(&hidden, nl->v, nl->n, sizeof(*nl->v), cmp_str))
			continue;
		e = fmap_get(&s->m, hidden);
		if (e)
			e->stop = true;
		else if (!fmap_add(&s->m, hidden, FE_HIDDEN))
			return -ENOMEM;
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
	if (!ret)
		ret = merge_whiteouts(s, &nl);
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
	for (size_t i = 0; !ret && i < s->m.n; i++) {
		struct fent *e = s->m.all[i];

		if (e->state == FE_DIR && e->rpath && !e->excluded)
			ret = redirect_srcs(c, s, e);
	}
	if (!ret) {
		s->kids = malloc((s->m.n + 1) * sizeof(*s->kids));
		if (!s->kids)
			ret = -ENOMEM;
	}
	for (size_t i = 0; !ret && i < s->m.n; i++)
		if (s->m.all[i]->state != FE_HIDDEN && !s->m.all[i]->excluded)
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

struct scan *scan_new(const struct dsrc *srcs, int nsrcs, const char *dir, const char *name)
{
	struct scan *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->srcs = srcs;
	s->nsrcs = nsrcs;
	s->mpath = name ? join(dir, name) : strdup("");
	if (!s->mpath) {
		free(s);
		return NULL;
	}
	return s;
}

void scan_free(struct scan *s)
{
	if (!s)
		return;
	free(s->mpath);
	hidden_set_free(&s->hs);
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
