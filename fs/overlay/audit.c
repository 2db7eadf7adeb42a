// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The audit walk: merge the stack directory by directory the way the union resolves names
 * (ovl_lookup.c), and record every entry of a layer that loses.
 *
 * Each merged directory has its sources: (layer, path in that layer, ref), top first.  Names
 * are folded in layer order into a map whose entry says what the name is so far: hidden by
 * a whiteout, a visible non-directory, or a visible directory still merging (until a layer
 * makes it opaque, whites it out, holds a non-directory or redirects it).  An entry of a
 * lower layer that meets a decided name is hidden, with everything below it.
 *
 * Every entry of every layer is reached once by the walk at its own path.  A redirect adds a
 * second route: a directory's lower content read from another path.  Entries seen through
 * such a route only count as visible ("vis" below); the hidden set is what the first route
 * hides minus what a redirect shows.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "layer/layer.h"
#include "overlay/audit.h"
#include "overlay/whiteout.h"

/* One layer's copy of a merged directory. */
struct asrc {
	int layer;
	char *path;
	uint64_t ref;
	bool redir;             /* reached through a redirect: adds visibility only */
};

enum { AN_HIDDEN, AN_FINAL, AN_DIR };

/* One name of a directory being merged. */
struct aname {
	char *name;
	int state;
	int top;                /* layer of the visible entry */
	bool stop;              /* AN_DIR: layers below no longer merge */
	int by;                 /* AN_HIDDEN, or stopped AN_DIR: what hides the lower entries */
	enum audit_kind kind;
	struct asrc *srcs;      /* AN_DIR */
	int nsrcs;
	char *rpath;            /* AN_DIR redirected at layer rlayer: the redirect's value */
	int rlayer;
	struct aname *next;
};

struct amap {
	struct aname **b, **all;
	size_t nb, n, cap;
};

/* An inode with more than one link: its bytes count once, and are dead only if no link
 * is visible. */
struct ahl {
	int layer;
	ino_t ino;
	bool visible, counted, dead;
	struct ahl *next;
};

struct avis {
	int layer;
	char *path;
};

struct actx {
	struct layer *const *layers;
	int n;
	const struct audit_opts *o;
	struct audit_result *r;
	size_t caphidden;
	struct ahl **hl;
	size_t hl_nb, hl_n;
	struct avis *vis;       /* entries a redirect shows */
	size_t nvis, capvis;
	size_t capsecrets;
	char *err;
	size_t errlen;
};

static int a_error(struct actx *c, int ret, const char *fmt, ...)
{
	va_list ap;

	if (c->err && c->errlen && !c->err[0]) {
		va_start(ap, fmt);
		vsnprintf(c->err, c->errlen, fmt, ap);
		va_end(ap);
	}
	return ret;
}

static int a_nomem(struct actx *c)
{
	return a_error(c, -ENOMEM, "out of memory");
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

/* ---- the name map ---------------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
	return XXH3_64bits(s, strlen(s));
}

static struct aname *amap_get(struct amap *m, const char *name)
{
	if (!m->nb)
		return NULL;
	for (struct aname *e = m->b[hash_str(name) & (m->nb - 1)]; e; e = e->next)
		if (!strcmp(e->name, name))
			return e;
	return NULL;
}

static int amap_grow(struct amap *m)
{
	size_t nb = m->nb ? m->nb * 2 : 64;
	struct aname **b = calloc(nb, sizeof(*b));

	if (!b)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		size_t h = hash_str(m->all[i]->name) & (nb - 1);

		m->all[i]->next = b[h];
		b[h] = m->all[i];
	}
	free(m->b);
	m->b = b;
	m->nb = nb;
	return 0;
}

static struct aname *amap_add(struct amap *m, const char *name, int state)
{
	struct aname *e;
	size_t h;

	if (m->n + 1 > m->nb && amap_grow(m))
		return NULL;
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 64;
		struct aname **all = realloc(m->all, cap * sizeof(*all));

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
	h = hash_str(name) & (m->nb - 1);
	e->next = m->b[h];
	m->b[h] = e;
	m->all[m->n++] = e;
	return e;
}

static void srcs_free(struct asrc *s, int n)
{
	for (int i = 0; i < n; i++)
		free(s[i].path);
	free(s);
}

static void amap_free(struct amap *m)
{
	for (size_t i = 0; i < m->n; i++) {
		free(m->all[i]->name);
		free(m->all[i]->rpath);
		srcs_free(m->all[i]->srcs, m->all[i]->nsrcs);
		free(m->all[i]);
	}
	free(m->all);
	free(m->b);
}

/* ---- directory listings ------------------------------------------------------------ */

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

/* Sorted names of (layer, dir), "." and ".." left out. */
static int list_dir(struct actx *c, int layer, const struct lnode *dir, struct names *nl)
{
	struct layer *l = c->layers[layer];
	int ret = l->ops->readdir(l, dir, collect_name, nl);

	if (nl->err)
		ret = nl->err;
	if (ret < 0)
		return a_error(c, ret, "cannot read directory %s/%s: %s", l->spec, dir->path,
			       strerror(-ret));
	if (nl->n)
		qsort(nl->v, nl->n, sizeof(*nl->v), cmp_str);
	return 0;
}

/* ---- accounting ---------------------------------------------------------------------- */

static struct ahl *hl_get(struct actx *c, int layer, ino_t ino, bool add)
{
	size_t h;
	struct ahl *e;

	if (c->hl_nb) {
		h = (XXH3_64bits(&ino, sizeof(ino)) + (size_t)layer) & (c->hl_nb - 1);
		for (e = c->hl[h]; e; e = e->next)
			if (e->layer == layer && e->ino == ino)
				return e;
	}
	if (!add)
		return NULL;
	if (c->hl_n + 1 > c->hl_nb) {
		size_t nb = c->hl_nb ? c->hl_nb * 2 : 256;
		struct ahl **b = calloc(nb, sizeof(*b));

		if (!b)
			return NULL;
		for (size_t i = 0; i < c->hl_nb; i++)
			for (struct ahl *x = c->hl[i], *nx; x; x = nx) {
				nx = x->next;
				h = (XXH3_64bits(&x->ino, sizeof(x->ino)) + (size_t)x->layer) &
				    (nb - 1);
				x->next = b[h];
				b[h] = x;
			}
		free(c->hl);
		c->hl = b;
		c->hl_nb = nb;
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->layer = layer;
	e->ino = ino;
	h = (XXH3_64bits(&ino, sizeof(ino)) + (size_t)layer) & (c->hl_nb - 1);
	e->next = c->hl[h];
	c->hl[h] = e;
	c->hl_n++;
	return e;
}

/* A regular file met by the walk.  `first_route`: reached at its own path (each entry is,
 * exactly once), so its bytes belong to the stack total. */
static int note_file(struct actx *c, int layer, const struct stat *st, bool visible,
		     bool first_route)
{
	struct ahl *e;

	if (!S_ISREG(st->st_mode))
		return 0;
	if (st->st_nlink <= 1) {
		if (first_route)
			c->r->t.stack_bytes += (uint64_t)st->st_size;
		return 0;
	}
	e = hl_get(c, layer, st->st_ino, true);
	if (!e)
		return a_nomem(c);
	if (visible)
		e->visible = true;
	if (first_route && !e->counted) {
		e->counted = true;
		c->r->t.stack_bytes += (uint64_t)st->st_size;
	}
	return 0;
}

static int vis_add(struct actx *c, int layer, const char *path)
{
	if (c->nvis == c->capvis) {
		size_t cap = c->capvis ? c->capvis * 2 : 64;
		struct avis *v = realloc(c->vis, cap * sizeof(*v));

		if (!v)
			return a_nomem(c);
		c->vis = v;
		c->capvis = cap;
	}
	c->vis[c->nvis].layer = layer;
	c->vis[c->nvis].path = strdup(path);
	if (!c->vis[c->nvis].path)
		return a_nomem(c);
	c->nvis++;
	return 0;
}

static int add_hidden(struct actx *c, int layer, const struct lnode *n, const struct stat *st,
		      int by, enum audit_kind kind)
{
	struct audit_result *r = c->r;
	struct audit_entry *e;

	if (r->nhidden == c->caphidden) {
		size_t cap = c->caphidden ? c->caphidden * 2 : 256;
		struct audit_entry *v = realloc(r->hidden, cap * sizeof(*v));

		if (!v)
			return a_nomem(c);
		r->hidden = v;
		c->caphidden = cap;
	}
	e = &r->hidden[r->nhidden];
	memset(e, 0, sizeof(*e));
	e->path = strdup(n->path);
	if (!e->path)
		return a_nomem(c);
	e->layer = layer;
	e->by_layer = by;
	e->kind = kind;
	e->mode = st->st_mode;
	e->size = S_ISREG(st->st_mode) || S_ISLNK(st->st_mode) ? (uint64_t)st->st_size : 0;
	e->ref = n->ref;
	e->ino = st->st_ino;
	e->nlink = st->st_nlink;
	r->nhidden++;
	return note_file(c, layer, st, false, true);
}

/* ---- hidden subtrees ----------------------------------------------------------------- */

/* (layer, n) and everything below it are hidden by (by, kind). */
static int hide_tree(struct actx *c, int layer, const struct lnode *n, const struct stat *st,
		     int by, enum audit_kind kind)
{
	struct layer *l = c->layers[layer];
	struct names nl = { 0 };
	int ret = add_hidden(c, layer, n, st, by, kind);

	if (ret || !S_ISDIR(st->st_mode))
		return ret;
	ret = list_dir(c, layer, n, &nl);
	for (size_t i = 0; !ret && i < nl.n; i++) {
		struct lnode child = { NULL, 0 };
		struct stat cst;
		char *path;

		if (wh_is_reserved_name(nl.v[i]))
			continue;       /* markers, not entries */
		path = join(n->path, nl.v[i]);
		if (!path) {
			ret = a_nomem(c);
			break;
		}
		if (strlen(path) >= PATH_MAX) {         /* also ends a directory loop */
			ret = a_error(c, -ENAMETOOLONG, "path too long in %s: %.64s...",
				      l->spec, path);
			free(path);
			break;
		}
		child.path = path;
		ret = l->ops->lookup(l, n, nl.v[i], &child, &cst);
		if (ret < 0)
			ret = a_error(c, ret, "cannot stat %s/%s: %s", l->spec, path,
				      strerror(-ret));
		else if (!wh_is_chardev_whiteout(&cst))
			ret = hide_tree(c, layer, &child, &cst, by, kind);
		free(path);
	}
	names_free(&nl);
	return ret;
}

/* A lower entry meets a decided name.  Through a redirect it is not at its own path, and
 * what it hides there is decided by the walk that reaches it at its own path. */
static int hide(struct actx *c, const struct asrc *s, const struct lnode *n,
		const struct stat *st, int by, enum audit_kind kind)
{
	if (s->redir)
		return 0;
	return hide_tree(c, s->layer, n, st, by, kind);
}

/* ---- redirects ------------------------------------------------------------------------ */

/*
 * A directory renamed by the kernel with redirect_dir carries overlay.redirect: where its
 * lower content lives.  The rules are the kernel's (ovl_lookup, ovl_lookup_layer,
 * ovl_check_redirect): an absolute value is a path looked up from the root of every lower
 * layer; a relative one is a new name, looked up in the parent's lower directories.  On an
 * absolute walk a whiteout or non-directory on the way stops the lookup, an opaque directory
 * on the way stops it below this layer, and a redirect on the way rewrites the path for the
 * layers below (an absolute one also undoes an earlier stop).
 */

/* The redirect of a directory when it is valid, else NULL. */
static char *redirect_of(struct layer *l, const struct lnode *d)
{
	char v[PATH_MAX];
	ssize_t n = l->ops->getxattr(l, d, OVL_XATTR_TRUSTED "redirect", v, sizeof(v) - 1);

	if (n <= 0)
		n = l->ops->getxattr(l, d, OVL_XATTR_USER "redirect", v, sizeof(v) - 1);
	if (n <= 0 || memchr(v, 0, n))
		return NULL;
	v[n] = 0;
	if (v[0] != '/')
		return strchr(v, '/') ? NULL : strdup(v);
	for (const char *s = v; *s; ) {
		const char *next;

		s++;    /* past the '/' */
		next = strchrnul(s, '/');
		if (next == s)
			return NULL;    /* an empty component */
		s = next;
	}
	return strdup(v);
}

/* Where the lookup below a redirect stands. */
struct rwalk {
	bool abs;               /* name is a path from the layer roots ("a/b", no leading /) */
	char *name;             /* else a name in the parent's directories */
	bool stop;
};

/* A redirect `val` met on the component at name[prelen], with `post` after it. */
static int rwalk_redirect(struct actx *c, struct rwalk *w, const char *val, size_t prelen,
			  const char *post)
{
	char *n;
	int ret;

	if (val[0] == '/') {
		while (*val == '/')
			val++;
		ret = asprintf(&n, "%s%s", val, post);
		w->abs = true;
		w->stop = false;
	} else {
		ret = asprintf(&n, "%.*s%s%s", (int)prelen, w->name, val, post);
	}
	if (ret < 0)
		return a_nomem(c);
	free(w->name);
	w->name = n;
	return 0;
}

static int push_src(struct actx *c, struct aname *e, int layer, const struct lnode *n,
		    bool redir)
{
	struct asrc *v = realloc(e->srcs, (e->nsrcs + 1) * sizeof(*v));

	if (!v)
		return a_nomem(c);
	e->srcs = v;
	v[e->nsrcs].layer = layer;
	v[e->nsrcs].ref = n->ref;
	v[e->nsrcs].redir = redir;
	v[e->nsrcs].path = strdup(n->path);
	if (!v[e->nsrcs].path)
		return a_nomem(c);
	e->nsrcs++;
	return 0;
}

/* One component below `dir`: 1 a directory (n, st), 0 absent, -ENOENT whited out or not a
 * directory (the lookup stops), other negative on error. */
static int rwalk_find(struct actx *c, int layer, const struct lnode *dir, const char *name,
		      struct lnode *n, struct stat *st)
{
	struct layer *l = c->layers[layer];
	char wh[NAME_MAX + 1];
	struct lnode w;
	struct stat wst;
	int ret;

	n->path = join(dir->path, name);
	if (!n->path)
		return a_nomem(c);
	ret = l->ops->lookup(l, dir, name, n, st);
	if (ret == 0)
		return S_ISDIR(st->st_mode) ? 1 : -ENOENT;   /* whiteouts are not directories */
	if (ret != -ENOENT && ret != -ENOTDIR && ret != -ENAMETOOLONG)
		return a_error(c, ret, "cannot look up %s in %s: %s", n->path, l->spec,
			       strerror(-ret));
	if (snprintf(wh, sizeof(wh), WH_PREFIX "%s", name) < (int)sizeof(wh) &&
	    l->ops->lookup(l, dir, wh, &w, &wst) == 0)
		return -ENOENT;
	return 0;
}

/* The directory (layer, n) is found for e below its redirect: it merges, and may stop the
 * walk or redirect it again.  prelen/post place it in w->name. */
static int rwalk_found(struct actx *c, struct aname *e, struct rwalk *w, int layer,
		       const struct lnode *n, size_t prelen, const char *post)
{
	struct layer *l = c->layers[layer];
	char *val;
	int ret = vis_add(c, layer, n->path);

	if (!ret)
		ret = push_src(c, e, layer, n, true);
	if (ret)
		return ret;
	if (wh_layer_dir_is_opaque(l, n)) {
		w->stop = true;
		return 0;
	}
	val = redirect_of(l, n);
	if (val)
		ret = rwalk_redirect(c, w, val, prelen, post);
	free(val);
	return ret;
}

/* One layer, a name in the parent's directory of that layer. */
static int rwalk_rel(struct actx *c, struct aname *e, struct rwalk *w, int layer,
		     const struct asrc *parent, int nparent)
{
	struct lnode n = { NULL, 0 };
	struct stat st;
	int i, ret;

	for (i = 0; i < nparent && parent[i].layer != layer; i++)
		;
	if (i == nparent)
		return 0;
	ret = rwalk_find(c, layer, &(struct lnode){ parent[i].path, parent[i].ref }, w->name,
			 &n, &st);
	if (ret == -ENOENT)
		w->stop = true;
	else if (ret == 1)
		ret = rwalk_found(c, e, w, layer, &n, 0, "");
	free((char *)n.path);
	return ret < 0 && ret != -ENOENT ? ret : 0;
}

/* One layer, a path from its root. */
static int rwalk_abs(struct actx *c, struct aname *e, struct rwalk *w, int layer)
{
	struct layer *l = c->layers[layer];
	char *path = strdup(w->name), *comp, *next;
	struct lnode dir = { "", 0 }, n = { NULL, 0 };
	char *dirpath = NULL;
	struct stat st;
	int ret = 0;

	if (!path)
		return a_nomem(c);
	for (comp = path; comp && !ret; comp = next) {
		size_t total = strlen(w->name), rem;
		const char *post;
		char *val;

		next = strchr(comp, '/');
		/* the same suffix of w->name, which a redirect on the way may rewrite */
		rem = strlen(comp) + (next ? 0 : 0);
		post = w->name + total - rem + (next ? (size_t)(next - comp) : rem);
		if (next)
			*next++ = 0;
		ret = rwalk_find(c, layer, &dir, comp, &n, &st);
		if (ret <= 0) {
			if (ret == -ENOENT)
				w->stop = true;
			break;
		}
		ret = 0;
		if (!next) {
			ret = rwalk_found(c, e, w, layer, &n, total - rem, post);
			break;
		}
		if (wh_layer_dir_is_opaque(l, &n)) {
			w->stop = true;
		} else if ((val = redirect_of(l, &n))) {
			char *post_copy = strdup(post);

			ret = post_copy ? rwalk_redirect(c, w, val, total - rem, post_copy)
					: a_nomem(c);
			free(post_copy);
			free(val);
		}
		free(dirpath);
		dirpath = (char *)n.path;
		n.path = NULL;
		dir.path = dirpath;
		dir.ref = n.ref;
	}
	free((char *)n.path);
	free(dirpath);
	free(path);
	return ret < 0 && ret != -ENOENT ? ret : 0;
}

/* What the layers below a redirect add to e.  parent: the sources of e's directory. */
static int redirect_srcs(struct actx *c, struct aname *e, const struct asrc *parent,
			 int nparent)
{
	struct rwalk w = { .abs = e->rpath[0] == '/', .name = NULL };
	int ret = 0;

	w.name = strdup(e->rpath + strspn(e->rpath, "/"));
	if (!w.name)
		return a_nomem(c);
	for (int layer = e->rlayer + 1; !ret && !w.stop && layer < c->n; layer++)
		ret = w.abs ? rwalk_abs(c, e, &w, layer)
			    : rwalk_rel(c, e, &w, layer, parent, nparent);
	free(w.name);
	free(e->rpath);
	e->rpath = NULL;
	return ret;
}

/* ---- merging ------------------------------------------------------------------------- */

static void stop(struct aname *e, int by, enum audit_kind kind)
{
	e->stop = true;
	e->by = by;
	e->kind = kind;
}

/* Directory (s->layer, n) merges into e.  Opaque or redirected, it ends the merge at the
 * same path (a redirect's lower layers are collected later, see redirect_srcs()). */
static int add_dir_src(struct actx *c, struct aname *e, const struct asrc *s,
		       const struct lnode *n)
{
	struct layer *l = c->layers[s->layer];
	int ret = push_src(c, e, s->layer, n, s->redir);

	if (ret)
		return ret;
	if (wh_layer_dir_is_opaque(l, n)) {
		stop(e, s->layer, AUDIT_OPAQUE);
		return 0;
	}
	e->rpath = redirect_of(l, n);
	if (e->rpath) {
		e->rlayer = s->layer;
		stop(e, s->layer, AUDIT_REPLACED);
	}
	return 0;
}

/* A visible entry: counted, remembered when a redirect shows it, scanned with --all. */
static int visible(struct actx *c, const struct asrc *s, const struct lnode *n,
		   const struct stat *st);

/* Fold one entry of one layer's copy of the directory into the map. */
static int merge_name(struct actx *c, struct amap *m, const struct asrc *s,
		      const struct lnode *n, const char *name, const struct stat *st)
{
	bool wh = wh_is_chardev_whiteout(st);
	struct aname *e = amap_get(m, name);
	int ret;

	if (!e) {
		e = amap_add(m, name, wh ? AN_HIDDEN : S_ISDIR(st->st_mode) ? AN_DIR : AN_FINAL);
		if (!e)
			return a_nomem(c);
		e->top = s->layer;
		if (wh) {
			e->by = s->layer;
			e->kind = AUDIT_WHITEOUT;
			return 0;
		}
		ret = visible(c, s, n, st);
		if (!ret && e->state == AN_DIR)
			ret = add_dir_src(c, e, s, n);
		return ret;
	}
	if (wh) {
		if (e->state == AN_DIR && !e->stop)
			stop(e, s->layer, AUDIT_WHITEOUT);
		return 0;
	}
	switch (e->state) {
	case AN_HIDDEN:
		return hide(c, s, n, st, e->by, e->kind);
	case AN_FINAL:
		return hide(c, s, n, st, e->top, AUDIT_REPLACED);
	}
	if (e->stop)
		return hide(c, s, n, st, e->by, e->kind);
	if (!S_ISDIR(st->st_mode)) {
		/* a non-directory below a directory ends the merge and is hidden by it */
		stop(e, e->top, AUDIT_REPLACED);
		return hide(c, s, n, st, e->top, AUDIT_REPLACED);
	}
	ret = s->redir ? vis_add(c, s->layer, n->path) : 0;
	return ret ? ret : add_dir_src(c, e, s, n);
}

/* ".wh.NAME" files of one layer: NAME is deleted below, unless the layer holds NAME too. */
static int merge_whiteouts(struct actx *c, struct amap *m, const struct asrc *s,
			   const struct names *nl)
{
	for (size_t i = 0; i < nl->n; i++) {
		const char *hidden = wh_hidden_name(nl->v[i]);
		struct aname *e;

		if (!hidden || !*hidden || strchr(hidden, '/'))
			continue;
		if (bsearch(&hidden, nl->v, nl->n, sizeof(*nl->v), cmp_str))
			continue;
		e = amap_get(m, hidden);
		if (!e) {
			e = amap_add(m, hidden, AN_HIDDEN);
			if (!e)
				return a_nomem(c);
			e->by = s->layer;
			e->kind = AUDIT_WHITEOUT;
		} else if (e->state == AN_DIR && !e->stop) {
			stop(e, s->layer, AUDIT_WHITEOUT);
		}
	}
	return 0;
}

static int merge_layer(struct actx *c, struct amap *m, const struct asrc *s)
{
	struct layer *l = c->layers[s->layer];
	struct lnode dir = { s->path, s->ref };
	struct names nl = { 0 };
	int ret = list_dir(c, s->layer, &dir, &nl);

	for (size_t i = 0; !ret && i < nl.n; i++) {
		struct lnode child = { NULL, 0 };
		struct stat st;
		char *path;

		if (wh_is_reserved_name(nl.v[i]))
			continue;
		path = join(s->path, nl.v[i]);
		if (!path) {
			ret = a_nomem(c);
			break;
		}
		if (strlen(path) >= PATH_MAX) {         /* also ends a directory loop */
			ret = a_error(c, -ENAMETOOLONG, "path too long in %s: %.64s...",
				      l->spec, path);
			free(path);
			break;
		}
		child.path = path;
		ret = l->ops->lookup(l, &dir, nl.v[i], &child, &st);
		if (ret < 0)
			ret = a_error(c, ret, "cannot stat %s/%s: %s", l->spec, path,
				      strerror(-ret));
		else
			ret = merge_name(c, m, s, &child, nl.v[i], &st);
		free(path);
	}
	if (!ret)
		ret = merge_whiteouts(c, m, s, &nl);
	names_free(&nl);
	return ret;
}

static int merge_dir(struct actx *c, struct asrc *srcs, int nsrcs, const char *rel)
{
	struct amap m = { 0 };
	int ret = 0;

	for (int i = 0; !ret && i < nsrcs; i++)
		ret = merge_layer(c, &m, &srcs[i]);
	for (size_t i = 0; !ret && i < m.n; i++)
		if (m.all[i]->state == AN_DIR && m.all[i]->rpath)
			ret = redirect_srcs(c, m.all[i], srcs, nsrcs);
	for (size_t i = 0; !ret && i < m.n; i++) {
		struct aname *e = m.all[i];
		char *crel;

		if (e->state != AN_DIR)
			continue;
		crel = join(rel, e->name);
		if (!crel) {
			ret = a_nomem(c);
			break;
		}
		ret = merge_dir(c, e->srcs, e->nsrcs, crel);
		free(crel);
		/* the children are done: give their memory back before the siblings' */
		srcs_free(e->srcs, e->nsrcs);
		e->srcs = NULL;
		e->nsrcs = 0;
	}
	amap_free(&m);
	return ret;
}

/* ---- secrets ------------------------------------------------------------------------- */

static int add_secret(struct actx *c, const char *path, int layer, uint64_t size,
		      uint32_t reasons, const struct audit_entry *hidden)
{
	struct audit_result *r = c->r;
	struct audit_secret *s;

	if (r->nsecrets == c->capsecrets) {
		size_t cap = c->capsecrets ? c->capsecrets * 2 : 16;
		struct audit_secret *v = realloc(r->secrets, cap * sizeof(*v));

		if (!v)
			return a_nomem(c);
		r->secrets = v;
		c->capsecrets = cap;
	}
	s = &r->secrets[r->nsecrets];
	memset(s, 0, sizeof(*s));
	s->path = strdup(path);
	if (!s->path)
		return a_nomem(c);
	s->layer = layer;
	s->size = size;
	s->reasons = reasons;
	if (hidden) {
		s->hidden = true;
		s->by_layer = hidden->by_layer;
		s->kind = hidden->kind;
	}
	r->nsecrets++;
	return 0;
}

static int scan(struct actx *c, int layer, const char *path, uint64_t ref, uint32_t *reasons)
{
	struct layer *l = c->layers[layer];
	uint64_t limit = c->o->scan_limit ? c->o->scan_limit : AUDIT_SCAN_LIMIT, done = 0;
	int ret = audit_scan_file(l, path, ref, limit, reasons, &done);

	if (ret < 0)
		return a_error(c, ret, "cannot read %s/%s: %s", l->spec, path, strerror(-ret));
	c->r->t.scanned_files++;
	c->r->t.scanned_bytes += done;
	return 0;
}

static int visible(struct actx *c, const struct asrc *s, const struct lnode *n,
		   const struct stat *st)
{
	uint32_t reasons = 0;
	int ret = 0;

	if (s->redir)
		ret = vis_add(c, s->layer, n->path);
	if (!ret)
		ret = note_file(c, s->layer, st, true, !s->redir);
	if (ret || s->redir || !S_ISREG(st->st_mode) || !st->st_size || !c->o->scan_visible)
		return ret;
	ret = scan(c, s->layer, n->path, n->ref, &reasons);
	if (!ret && reasons)
		ret = add_secret(c, n->path, s->layer, (uint64_t)st->st_size, reasons, NULL);
	return ret;
}

/* ---- the result ------------------------------------------------------------------------ */

static int cmp_vis(const void *a, const void *b)
{
	const struct avis *x = a, *y = b;

	if (x->layer != y->layer)
		return x->layer < y->layer ? -1 : 1;
	return strcmp(x->path, y->path);
}

static int cmp_hidden(const void *a, const void *b)
{
	const struct audit_entry *x = a, *y = b;

	if (x->size != y->size)
		return x->size > y->size ? -1 : 1;
	if (x->layer != y->layer)
		return x->layer < y->layer ? -1 : 1;
	return strcmp(x->path, y->path);
}

static int cmp_secret(const void *a, const void *b)
{
	const struct audit_secret *x = a, *y = b;

	if (x->hidden != y->hidden)
		return x->hidden ? -1 : 1;
	if (x->layer != y->layer)
		return x->layer < y->layer ? -1 : 1;
	return strcmp(x->path, y->path);
}

/* Entries a redirect shows are not hidden, whatever their own path says. */
static void drop_visible(struct actx *c)
{
	struct audit_result *r = c->r;
	size_t k = 0;

	if (!c->nvis)
		return;
	qsort(c->vis, c->nvis, sizeof(*c->vis), cmp_vis);
	for (size_t i = 0; i < r->nhidden; i++) {
		struct avis key = { r->hidden[i].layer, r->hidden[i].path };

		if (bsearch(&key, c->vis, c->nvis, sizeof(*c->vis), cmp_vis))
			free(r->hidden[i].path);
		else
			r->hidden[k++] = r->hidden[i];
	}
	r->nhidden = k;
}

static int finish(struct actx *c)
{
	struct audit_result *r = c->r;
	int ret = 0;

	drop_visible(c);
	for (size_t i = 0; i < r->nhidden; i++) {
		struct audit_entry *e = &r->hidden[i];

		r->t.hidden_entries++;
		if (S_ISDIR(e->mode))
			r->t.hidden_dirs++;
		else
			r->t.hidden_files++;
		if (!S_ISREG(e->mode))
			continue;
		if (e->nlink > 1) {
			struct ahl *h = hl_get(c, e->layer, e->ino, false);

			if (!h || h->visible || h->dead)
				continue;   /* another link shows it, or counted already */
			h->dead = true;
		}
		r->t.dead_bytes += e->size;
	}
	for (size_t i = 0; !ret && c->o->scan_hidden && i < r->nhidden; i++) {
		struct audit_entry *e = &r->hidden[i];

		if (!S_ISREG(e->mode) || !e->size)
			continue;       /* an empty file holds no secret, whatever its name */
		ret = scan(c, e->layer, e->path, e->ref, &e->reasons);
		if (!ret && e->reasons)
			ret = add_secret(c, e->path, e->layer, e->size, e->reasons, e);
	}
	if (ret)
		return ret;
	for (size_t i = 0; i < r->nsecrets; i++) {
		r->t.secrets++;
		if (r->secrets[i].hidden)
			r->t.hidden_secrets++;
	}
	if (r->nhidden)
		qsort(r->hidden, r->nhidden, sizeof(*r->hidden), cmp_hidden);
	if (r->nsecrets)
		qsort(r->secrets, r->nsecrets, sizeof(*r->secrets), cmp_secret);
	r->scanned_hidden = c->o->scan_hidden;
	r->scanned_visible = c->o->scan_visible;
	return 0;
}

static void actx_free(struct actx *c)
{
	for (size_t i = 0; i < c->hl_nb; i++)
		for (struct ahl *e = c->hl[i], *nx; e; e = nx) {
			nx = e->next;
			free(e);
		}
	free(c->hl);
	for (size_t i = 0; i < c->nvis; i++)
		free(c->vis[i].path);
	free(c->vis);
}

int audit_stack(struct layer *const *layers, int n, const struct audit_opts *o,
		struct audit_result *r, char *err, size_t errlen)
{
	struct actx c = {
		.layers = layers, .n = n, .o = o, .r = r, .err = err, .errlen = errlen,
	};
	struct asrc *srcs = NULL;
	int ret = 0;

	memset(r, 0, sizeof(*r));
	if (err && errlen)
		err[0] = 0;
	if (n <= 0)
		return a_error(&c, -EINVAL, "no layers given");
	r->specs = calloc(n, sizeof(*r->specs));
	srcs = calloc(n, sizeof(*srcs));
	if (!r->specs || !srcs) {
		ret = a_nomem(&c);
		goto out;
	}
	r->nlayers = n;
	for (int i = 0; i < n; i++) {
		r->specs[i] = strdup(layers[i]->spec ? layers[i]->spec : "");
		if (!r->specs[i]) {
			ret = a_nomem(&c);
			goto out;
		}
		srcs[i].layer = i;
		srcs[i].path = (char *)"";
	}
	/* The root merges every layer, as the kernel's does. */
	ret = merge_dir(&c, srcs, n, "");
	if (!ret)
		ret = finish(&c);
out:
	free(srcs);
	actx_free(&c);
	if (ret)
		audit_result_free(r);
	return ret;
}

int audit_paths(const char *const *paths, int n, const struct audit_opts *o,
		struct audit_result *r, char *err, size_t errlen)
{
	struct layer **layers = calloc(n > 0 ? n : 1, sizeof(*layers));
	int ret = 0;

	memset(r, 0, sizeof(*r));
	if (!layers) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (int i = 0; i < n; i++) {
		layers[i] = layer_open(paths[i], i, err, errlen);
		if (!layers[i]) {
			ret = -EINVAL;
			goto out;
		}
	}
	ret = audit_stack(layers, n, o, r, err, errlen);
out:
	for (int i = 0; i < n; i++)
		if (layers[i])
			layer_close(layers[i]);
	free(layers);
	return ret;
}

void audit_result_free(struct audit_result *r)
{
	for (int i = 0; r->specs && i < r->nlayers; i++)
		free(r->specs[i]);
	free(r->specs);
	for (size_t i = 0; i < r->nhidden; i++)
		free(r->hidden[i].path);
	free(r->hidden);
	for (size_t i = 0; i < r->nsecrets; i++)
		free(r->secrets[i].path);
	free(r->secrets);
	memset(r, 0, sizeof(*r));
}
