// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Lookup across the stack: the topmost entry wins, a whiteout hides what is below it, an
 * opaque directory stops the walk, and a non-directory hides directories below it.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "overlay/ovl.h"
#include "fdpath.h"
#include "overlay/whiteout.h"

/* Look `name` up in one layer of a directory's stack.  1 = found, 0 = absent,
 * -ENOENT = whited out here (stop), other negative = error. */
static int ovl_layer_find(struct ovl_fs *fs, const struct ovl_lent *dl, const char *dpath,
			  const char *name, struct lnode *child, struct stat *st)
{
	struct layer *l = fs->layers[dl->layer];
	struct lnode dir = { dpath, dl->ref };
	char whname[NAME_MAX + 1];
	struct lnode wh;
	struct stat wst;
	int ret;

	child->path = NULL;
	ret = l->ops->lookup(l, &dir, name, child, st);
	if (ret == 0)
		return wh_is_chardev_whiteout(st) ? -ENOENT : 1;
	if (ret != -ENOENT)
		return ret == -ENOTDIR ? 0 : ret;
	if (strlen(name) + WH_PREFIX_LEN > NAME_MAX)
		return 0;
	memcpy(whname, WH_PREFIX, WH_PREFIX_LEN);
	strcpy(whname + WH_PREFIX_LEN, name);
	if (l->ops->lookup(l, &dir, whname, &wh, &wst) == 0)
		return -ENOENT;
	return 0;
}

/* Where a redirect value points from a directory at layer path `dpath`: absolute values
 * start at the layer root, relative ones name a sibling. */
static int ovl_redirect_target(const char *v, const char *dpath, char *out, size_t size)
{
	const char *slash = strrchr(dpath, '/');
	int n;

	if (v[0] == '/')
		n = snprintf(out, size, "%s", v + 1);
	else if (!slash)
		n = snprintf(out, size, "%s", v);
	else
		n = snprintf(out, size, "%.*s/%s", (int)(slash - dpath), dpath, v);
	return n < (int)size ? 0 : -ENAMETOOLONG;
}

/*
 * Walk `path` from the root of one layer, below an absolute redirect, whose target need not
 * lie under the directory's own stack.  Same answers as ovl_layer_find().  As in the kernel:
 * a whiteout or a non-directory on the way stops the lookup (-ENOENT); an opaque directory
 * on the way sets *stop_below (layers under this one are not consulted); a redirect on the
 * way rewrites, in `next`, the path the layers below use.
 */
static int ovl_layer_walk(struct ovl_fs *fs, int layer, const char *path, struct lnode *child,
			  struct stat *st, bool *stop_below, char *next)
{
	struct layer *l = fs->layers[layer];
	struct ovl_lent cur = { layer, 0, NULL };
	char sofar[PATH_MAX] = "", comp[NAME_MAX + 1], v[PATH_MAX], t[PATH_MAX];
	const char *p = path, *slash;
	struct lnode c;
	struct stat dst;
	bool opaque;
	size_t len;
	int ret;

	for (;;) {
		while (*p == '/')
			p++;
		slash = strchr(p, '/');
		if (!slash)
			return ovl_layer_find(fs, &cur, sofar, p, child, st);
		len = slash - p;
		if (len > NAME_MAX || strlen(sofar) + len + 2 > sizeof(sofar))
			return -ENAMETOOLONG;
		memcpy(comp, p, len);
		comp[len] = 0;
		ret = ovl_layer_find(fs, &cur, sofar, comp, &c, &dst);
		if (ret <= 0)
			return ret;
		if (!S_ISDIR(dst.st_mode))
			return -ENOENT;
		if (*sofar)
			strcat(sofar, "/");
		strcat(sofar, comp);
		cur.ref = c.ref;
		c.path = sofar;
		wh_layer_dir_marks(l, &c, &opaque, v, sizeof(v));
		if (opaque)
			*stop_below = true;
		else if (v[0] && ovl_redirect_target(v, sofar, t, sizeof(t)) == 0 &&
			 snprintf(next, PATH_MAX, "%s%s", t, slash) >= PATH_MAX)
			return -ENAMETOOLONG;
		p = slash + 1;
	}
}

/* Records one layer's entry in res.  1 = go on below (a directory: its redirect value, if
 * any, in v), 0 = the walk stops here, negative = error. */
static int ovl_res_add(struct ovl_fs *fs, struct ovl_res *res, int layer, struct lnode *child,
		       const struct stat *st, const char *lpath, const char *cpath, char *v)
{
	struct ovl_lent *e;
	bool opaque;

	v[0] = 0;
	if (res->nlent == 0)
		res->st = *st;
	else if (!S_ISDIR(st->st_mode))
		return 0;       /* a non-directory below a directory is hidden by it */
	e = &res->lent[res->nlent++];
	e->layer = layer;
	e->ref = child->ref;
	if (strcmp(lpath, cpath) && !(e->path = strdup(lpath)))
		return -ENOMEM;
	if (!S_ISDIR(st->st_mode))
		return 0;
	child->path = lpath;
	wh_layer_dir_marks(fs->layers[layer], child, &opaque, v, PATH_MAX);
	return opaque ? 0 : 1;
}

/*
 * The layers holding dir/name, top first.  Normally each layer of the directory's stack is
 * asked for the name.  A redirect changes what the layers below are asked: a relative one
 * (a directory renamed within its parent) a different name in the same directories; an
 * absolute one a path from each lower layer's root.
 */
int ovl_resolve(struct ovl_fs *fs, struct ovl_node *dir, const char *dpath, const char *name,
		bool skip_upper, struct ovl_res *res)
{
	char cpath[PATH_MAX], lpath[PATH_MAX], rpath[PATH_MAX], v[PATH_MAX], nm[NAME_MAX + 1];
	bool by_path = false, stop_below = false;
	struct lnode child;
	struct stat st;
	int i = 0, layer = -1, ret;

	memset(res, 0, sizeof(*res));
	if (wh_is_reserved_name(name) || strlen(name) > NAME_MAX)
		return -ENOENT;
	strcpy(nm, name);
	ret = ovl_join(dpath, name, cpath, sizeof(cpath));
	if (ret)
		return ret;
	res->lent = calloc(fs->nlayers, sizeof(*res->lent));
	if (!res->lent)
		return -ENOMEM;
	for (;;) {
		if (!by_path) {
			const struct ovl_lent *dl;

			if (i >= dir->nlent)
				break;
			dl = &dir->lent[i++];
			layer = dl->layer;
			if (skip_upper && fs->has_upper && layer == 0)
				continue;
			ret = ovl_join(ovl_lent_path(dl, dpath), nm, lpath, sizeof(lpath));
			if (!ret)
				ret = ovl_layer_find(fs, dl, ovl_lent_path(dl, dpath), nm, &child, &st);
		} else {
			if (stop_below || ++layer >= fs->nlayers)
				break;
			strcpy(lpath, rpath);
			ret = ovl_layer_walk(fs, layer, lpath, &child, &st, &stop_below, rpath);
		}
		if (ret == 0)
			continue;
		if (ret < 0)
			break;
		ret = ovl_res_add(fs, res, layer, &child, &st, lpath, cpath, v);
		if (ret <= 0)
			break;
		if (v[0] == '/' || (v[0] && by_path)) {
			by_path = true;
			if (ovl_redirect_target(v, lpath, rpath, sizeof(rpath)))
				break;
		} else if (v[0] && !strchr(v, '/') && strlen(v) <= NAME_MAX) {
			strcpy(nm, v);  /* renamed within its parent: the old name below */
		}
	}
	if (res->nlent && ret != -ENOMEM)
		return 0;       /* what stopped the walk (a whiteout, an error below) is below */
	ovl_lent_free(res->lent, res->nlent);
	res->lent = NULL;
	return ret < 0 && ret != -ENOENT ? ret : -ENOENT;
}

/* Is anything visible below the upper at dir/name?  Decides whether removing the upper
 * entry needs a whiteout. */
bool ovl_lower_has(struct ovl_fs *fs, struct ovl_node *dir, const char *dpath, const char *name)
{
	struct ovl_res res;

	if (ovl_resolve(fs, dir, dpath, name, true, &res) < 0)
		return false;
	ovl_lent_free(res.lent, res.nlent);
	return true;
}

/* What the merged view shows of the top entry's stat. */
static void ovl_stat_fixup(struct ovl_fs *fs, struct ovl_node *n, const char *path,
			   struct stat *st)
{
	struct layer *l = fs->layers[n->lent[0].layer];

	st->st_ino = n->ino;
	if (S_ISDIR(st->st_mode) && (n->nlent > 1 || fs->o.static_nlink))
		st->st_nlink = 1;       /* a merged dir's links cannot be counted cheaply */
	if (fs->o.xattr_permissions && l->root_fd >= 0) {
		char proc[PATH_MAX + 32];

		fd_path(proc, sizeof(proc), l->root_fd, ovl_lent_path(&n->lent[0], path));
		ovl_override_read(fs, proc, st);
	}
	ovl_map_stat(fs, st);
}

int ovl_stat_top(struct ovl_fs *fs, struct ovl_node *n, const char *path, struct stat *st)
{
	struct layer *l = fs->layers[n->lent[0].layer];
	struct lnode ln = ovl_top(n, path);
	int ret = l->ops->getattr(l, &ln, st);

	if (ret)
		return ret;
	ovl_stat_fixup(fs, n, path, st);
	return 0;
}

int ovl_getattr(struct ovl_fs *fs, struct ovl_node *n, struct stat *st)
{
	char path[PATH_MAX];
	int ret;

	pthread_rwlock_rdlock(&fs->tree_lock);
	ret = ovl_node_path(n, path, sizeof(path));
	if (!ret) {
		ret = ovl_stat_top(fs, n, path, st);
	} else if (ret == -ESTALE && n->orphan_fd >= 0 && fstat(n->orphan_fd, st) == 0) {
		/* Removed and kept open (ovl_unlink), or O_TMPFILE (ovl_tmpfile): the file
		 * answers, through its override xattr with xattr_permissions like any other. */
		char proc[32];

		st->st_ino = n->ino;
		if (fs->o.xattr_permissions && !ovl_node_orphan_path(n, proc, sizeof(proc)))
			ovl_override_read(fs, proc, st);
		ovl_map_stat(fs, st);
		ret = 0;
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	return ret;
}

int ovl_lookup(struct ovl_fs *fs, struct ovl_node *dir, const char *name,
	       struct ovl_node **out, struct stat *st)
{
	char dpath[PATH_MAX], cpath[PATH_MAX];
	struct ovl_res res;
	struct ovl_node *n;
	uint64_t seq;
	int ret;

	if (!S_ISDIR(dir->type))
		return -ENOTDIR;
again:
	pthread_rwlock_rdlock(&fs->tree_lock);
	seq = fs->tree_seq;
	ret = ovl_node_path(dir, dpath, sizeof(dpath));
	if (ret)
		goto out;
	ret = ovl_join(dpath, name, cpath, sizeof(cpath));
	if (ret)
		goto out;
	n = ovl_node_find(fs, dir, name);
	if (n) {
		ret = ovl_stat_top(fs, n, cpath, st);
		if (ret == 0) {
			__atomic_add_fetch(&n->nlookup, 1, __ATOMIC_SEQ_CST);
			*out = n;
		}
		goto out;
	}
	ret = ovl_resolve(fs, dir, dpath, name, false, &res);
	if (ret)
		goto out;
	pthread_rwlock_unlock(&fs->tree_lock);

	/* Adding a node changes the tree: exclusive, and someone may have beaten us to it.  A
	 * rename between the two may have moved dir or a parent (renames do not wait for
	 * lookups): what the walk found is then named by paths that no longer hold -- a lower
	 * entry found at the merged path would be looked for at the new one -- so walk again. */
	pthread_rwlock_wrlock(&fs->tree_lock);
	if (fs->tree_seq != seq) {
		ovl_lent_free(res.lent, res.nlent);
		pthread_rwlock_unlock(&fs->tree_lock);
		goto again;
	}
	n = ovl_node_find(fs, dir, name);
	if (!n && fs->has_upper && res.lent[0].layer == 0 && !S_ISDIR(res.st.st_mode) &&
	    res.st.st_nlink > 1 && (n = ovl_hl_find(fs, res.st.st_ino)) != NULL)
		ret = ovl_alias_add(fs, n, dir, name);  /* another name of a known file */
	if (n) {
		ovl_lent_free(res.lent, res.nlent);
		if (!ret)
			ret = ovl_stat_top(fs, n, cpath, st);
	} else {
		*st = res.st;
		n = ovl_node_new(fs, dir, name, &res);
		if (!n) {
			ret = -ENOMEM;
			goto out;
		}
		if (fs->has_upper && n->lent[0].layer == 0 && !S_ISDIR(st->st_mode) &&
		    st->st_nlink > 1)
			ovl_hl_add(fs, n, st->st_ino);
		ovl_stat_fixup(fs, n, cpath, st);
	}
	if (ret == 0) {
		n->nlookup++;
		*out = n;
	}
out:
	pthread_rwlock_unlock(&fs->tree_lock);
	return ret;
}

/*
 * readdirplus: the listing already says which layer a non-directory shows from and that no
 * whiteout hides it, so one stat in that layer replaces the walk down the stack -- as long
 * as nothing in the namespace changed since the listing was read.
 */

/* Whether the fast path can apply to de: a listed non-directory of a lower layer. */
static bool ovl_listed_candidate(const struct ovl_fs *fs, const struct ovl_dirent *de)
{
	return de->type != DT_DIR && de->type != DT_UNKNOWN && !(fs->has_upper && de->layer == 0);
}

/* The index in dir->lent of the layer de shows from when the fast path applies to it (a
 * candidate, and that layer's directory is at the merged path), or -1.  Caller holds
 * tree_lock. */
static int ovl_listed_lent(struct ovl_fs *fs, struct ovl_node *dir, const struct ovl_dirent *de)
{
	int k;

	if (!ovl_listed_candidate(fs, de))
		return -1;
	for (k = 0; k < dir->nlent && dir->lent[k].layer != de->layer; k++)
		;
	return k == dir->nlent || dir->lent[k].path ? -1 : k;
}

int ovl_lookup_listed(struct ovl_fs *fs, struct ovl_node *dir, const struct ovl_dir *d,
		      const struct ovl_dirent *de, struct ovl_node **out, struct stat *st)
{
	char path[PATH_MAX], cpath[PATH_MAX];
	struct ovl_res res = { 0 };
	const struct ovl_pre *pre = d->pre ? &d->pre[de - d->ents] : NULL;
	struct layer *l = fs->layers[de->layer];
	struct ovl_node *n;
	struct lnode ln;
	/* The merged path is needed only to look the entry up now, or for xattr_permissions
	 * (its override xattr); building it walks up the tree, once per entry. */
	bool need_path = !(pre && pre->ok) || fs->o.xattr_permissions;
	int ret = 0, k;

	if (!ovl_listed_candidate(fs, de) || ovl_node_find(fs, dir, de->name) ||
	    d->gen != __atomic_load_n(&fs->gen, __ATOMIC_SEQ_CST))
		return ovl_lookup(fs, dir, de->name, out, st);
	pthread_rwlock_wrlock(&fs->tree_lock);
	if (need_path)
		ret = ovl_node_path(dir, path, sizeof(path));
	else
		ret = dir->gone == 2 ? -ESTALE : 0;      /* as ovl_node_path() */
	if (ret)
		goto out;
	k = ovl_listed_lent(fs, dir, de);
	if (k < 0 || d->gen != __atomic_load_n(&fs->gen, __ATOMIC_SEQ_CST) ||
	    ovl_node_find(fs, dir, de->name)) {
		pthread_rwlock_unlock(&fs->tree_lock);
		return ovl_lookup(fs, dir, de->name, out, st);
	}
	if (pre && pre->ok) {           /* looked up ahead, and nothing changed since */
		res.st = pre->st;
		ln.ref = pre->ref;
	} else {
		ret = l->ops->lookup(l, &(struct lnode){ path, dir->lent[k].ref }, de->name, &ln,
				     &res.st);
		if (ret)
			goto out;
	}
	res.lent = calloc(1, sizeof(*res.lent));
	if (!res.lent) {
		ret = -ENOMEM;
		goto out;
	}
	res.nlent = 1;
	res.lent[0].layer = de->layer;
	res.lent[0].ref = ln.ref;
	*st = res.st;
	n = ovl_node_new(fs, dir, de->name, &res);
	if (!n) {
		ret = -ENOMEM;
		goto out;
	}
	ret = need_path ? ovl_join(path, de->name, cpath, sizeof(cpath)) : 0;
	if (!ret) {
		ovl_stat_fixup(fs, n, need_path ? cpath : "", st);
		n->nlookup++;
		*out = n;
	}
out:
	pthread_rwlock_unlock(&fs->tree_lock);
	return ret;
}

int ovl_dir_prestat(struct ovl_fs *fs, struct ovl_node *dir, struct ovl_dir *d, size_t max)
{
	char path[PATH_MAX];
	uint64_t *ref;                  /* per layer: dir's ref there */
	bool *in;                       /* per layer: dir is there, at the merged path */
	int *dfd;                       /* per layer: an fd of dir there (layer_dir_fd), or
					 * -1 not tried yet, < -1 none (use ops->lookup) */
	size_t i;
	int ret, k;

	if (max > d->n)
		max = d->n;
	if (!max)
		return 0;
	if (!d->pre && !(d->pre = calloc(d->n, sizeof(*d->pre))))
		return -ENOMEM;
	ref = calloc(fs->nlayers, sizeof(*ref));
	in = calloc(fs->nlayers, sizeof(*in));
	dfd = malloc(fs->nlayers * sizeof(*dfd));
	if (!ref || !in || !dfd) {
		free(ref);
		free(in);
		free(dfd);
		return -ENOMEM;
	}
	for (k = 0; k < fs->nlayers; k++)
		dfd[k] = -1;
	/* Where dir is in each layer, as of the listing; then the lookups without the lock
	 * (a namespace change meanwhile changes fs->gen, and nothing found is used then). */
	pthread_rwlock_rdlock(&fs->tree_lock);
	ret = d->gen != __atomic_load_n(&fs->gen, __ATOMIC_SEQ_CST) ? -ESTALE :
	      ovl_node_path(dir, path, sizeof(path));
	for (k = 0; !ret && k < dir->nlent; k++) {
		if (!dir->lent[k].path) {
			in[dir->lent[k].layer] = true;
			ref[dir->lent[k].layer] = dir->lent[k].ref;
		}
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	for (i = 0; !ret && i < max; i++) {
		const struct ovl_dirent *de = &d->ents[i];
		struct layer *l = fs->layers[de->layer];
		struct lnode ln;
		int *fd = &dfd[de->layer], r;

		if (!ovl_listed_candidate(fs, de) || !in[de->layer])
			continue;
		if (*fd == -1 && (*fd = layer_dir_fd(l, path)) == -1)
			*fd = -2;               /* -EPERM: not "not tried yet" */
		if (*fd >= 0)
			r = layer_lookup_at(*fd, de->name, &ln, &d->pre[i].st);
		else
			r = l->ops->lookup(l, &(struct lnode){ path, ref[de->layer] }, de->name,
					   &ln, &d->pre[i].st);
		if (r == 0) {
			d->pre[i].ref = ln.ref;
			d->pre[i].ok = true;
		}
		if ((i & 63) == 63 && d->gen != __atomic_load_n(&fs->gen, __ATOMIC_SEQ_CST))
			break;          /* changed: what follows would not be used */
	}
	for (k = 0; k < fs->nlayers; k++)
		if (dfd[k] >= 0)
			close(dfd[k]);
	free(ref);
	free(in);
	free(dfd);
	return ret == -ESTALE ? 0 : ret;
}
