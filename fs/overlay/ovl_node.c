// SPDX-License-Identifier: GPL-2.0-or-later
/* The node table: one node per name the kernel knows, hashed by (parent, name). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "overlay/ovl.h"

static unsigned int ovl_hash(const struct ovl_node *parent, const char *name)
{
	uint64_t h = (uint64_t)(uintptr_t)parent * 0x9e3779b97f4a7c15ULL;

	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 0x100000001b3ULL;
	return (unsigned int)(h ^ (h >> 29)) % OVL_HASH_BUCKETS;
}

static pthread_mutex_t *ovl_bucket_lock(struct ovl_fs *fs, unsigned int b)
{
	return &fs->hash_lock[b % 64];
}

static struct ovl_alias *ovl_alias_find(struct ovl_fs *fs, struct ovl_node *parent,
					const char *name)
{
	unsigned int b = ovl_hash(parent, name);
	struct ovl_alias *a;

	pthread_mutex_lock(ovl_bucket_lock(fs, b));
	for (a = fs->alias_hash[b]; a; a = a->hnext)
		if (a->parent == parent && strcmp(a->name, name) == 0)
			break;
	pthread_mutex_unlock(ovl_bucket_lock(fs, b));
	return a;
}

struct ovl_node *ovl_node_find(struct ovl_fs *fs, struct ovl_node *parent, const char *name)
{
	unsigned int b = ovl_hash(parent, name);
	struct ovl_alias *a;
	struct ovl_node *n;

	pthread_mutex_lock(ovl_bucket_lock(fs, b));
	for (n = fs->hash[b]; n; n = n->hnext)
		if (n->parent == parent && strcmp(n->name, name) == 0)
			break;
	pthread_mutex_unlock(ovl_bucket_lock(fs, b));
	if (n)
		return n;
	a = ovl_alias_find(fs, parent, name);
	return a ? a->node : NULL;
}

static void ovl_hash_add(struct ovl_fs *fs, struct ovl_node *n)
{
	unsigned int b = ovl_hash(n->parent, n->name);

	pthread_mutex_lock(ovl_bucket_lock(fs, b));
	n->hnext = fs->hash[b];
	fs->hash[b] = n;
	n->hashed = true;
	pthread_mutex_unlock(ovl_bucket_lock(fs, b));
}

void ovl_node_unhash(struct ovl_fs *fs, struct ovl_node *n)
{
	unsigned int b;
	struct ovl_node **pp;

	if (!n->hashed)
		return;
	b = ovl_hash(n->parent, n->name);
	pthread_mutex_lock(ovl_bucket_lock(fs, b));
	for (pp = &fs->hash[b]; *pp; pp = &(*pp)->hnext) {
		if (*pp == n) {
			*pp = n->hnext;
			break;
		}
	}
	n->hashed = false;
	pthread_mutex_unlock(ovl_bucket_lock(fs, b));
}

void ovl_lent_free(struct ovl_lent *l, int n)
{
	int i;

	if (!l)
		return;
	for (i = 0; i < n; i++)
		free(l[i].path);
	free(l);
}

/* Takes ownership of res->lent. */
struct ovl_node *ovl_node_new(struct ovl_fs *fs, struct ovl_node *parent, const char *name,
			      struct ovl_res *res)
{
	struct ovl_node *n = calloc(1, sizeof(*n));

	if (!n || !(n->name = strdup(name))) {
		free(n);
		ovl_lent_free(res->lent, res->nlent);
		res->lent = NULL;
		return NULL;
	}
	n->parent = parent;
	n->orphan_fd = -1;
	pthread_mutex_init(&n->lock, NULL);
	n->type = res->st.st_mode & S_IFMT;
	n->nlent = res->nlent;
	n->lent = res->lent;
	res->lent = NULL;
	n->ino = ovl_ino_for(fs, n->lent[0].layer, res->st.st_dev, res->st.st_ino);
	if (parent) {
		__atomic_add_fetch(&parent->nref, 1, __ATOMIC_SEQ_CST);
		ovl_hash_add(fs, n);
	}
	return n;
}

void ovl_node_move(struct ovl_fs *fs, struct ovl_node *n, struct ovl_node *np, const char *name)
{
	char *nn = strdup(name);
	struct ovl_node *old = n->parent;

	if (!nn)
		return;         /* keeps the old name: a later lookup makes a fresh node */
	fs->tree_seq++;
	ovl_node_unhash(fs, n);
	free(n->name);
	n->name = nn;
	if (np != old) {
		ovl_node_get(np);
		n->parent = np;
		ovl_node_put(fs, old);
	}
	ovl_hash_add(fs, n);
}

void ovl_node_get(struct ovl_node *n)
{
	__atomic_add_fetch(&n->nref, 1, __ATOMIC_SEQ_CST);
}

static void ovl_alias_unlink(struct ovl_fs *fs, struct ovl_alias *a)
{
	unsigned int b = ovl_hash(a->parent, a->name);
	struct ovl_alias **pp;

	pthread_mutex_lock(ovl_bucket_lock(fs, b));
	for (pp = &fs->alias_hash[b]; *pp; pp = &(*pp)->hnext) {
		if (*pp == a) {
			*pp = a->hnext;
			break;
		}
	}
	pthread_mutex_unlock(ovl_bucket_lock(fs, b));
	for (pp = &a->node->aliases; *pp; pp = &(*pp)->nnext) {
		if (*pp == a) {
			*pp = a->nnext;
			break;
		}
	}
}

static void ovl_alias_free(struct ovl_fs *fs, struct ovl_alias *a)
{
	ovl_alias_unlink(fs, a);
	ovl_node_put(fs, a->parent);
	free(a->name);
	free(a);
}

static void ovl_hl_del(struct ovl_fs *fs, struct ovl_node *n)
{
	struct ovl_node **pp;

	if (!n->hl_ino)
		return;
	for (pp = &fs->hl_hash[n->hl_ino % 1024]; *pp; pp = &(*pp)->hl_next) {
		if (*pp == n) {
			*pp = n->hl_next;
			break;
		}
	}
	n->hl_ino = 0;
}

static void ovl_node_free_chain(struct ovl_fs *fs, struct ovl_node *n)
{
	while (n && n->parent) {
		struct ovl_node *p = n->parent;

		if (__atomic_load_n(&n->nlookup, __ATOMIC_SEQ_CST) ||
		    __atomic_load_n(&n->nref, __ATOMIC_SEQ_CST))
			return;
		ovl_node_unhash(fs, n);
		ovl_hl_del(fs, n);
		while (n->aliases)
			ovl_alias_free(fs, n->aliases);
		free(n->name);
		ovl_lent_free(n->lent, n->nlent);
		if (n->orphan_fd >= 0)
			close(n->orphan_fd);
		if (n->reader && fs->reader_free)
			fs->reader_free(n->reader);
		if (n->pf && fs->pf_free)
			fs->pf_free(n->pf);
		if (n->listing) {
			ovl_dir_free(n->listing);
			free(n->listing);
		}
		pthread_mutex_destroy(&n->lock);
		free(n);
		if (__atomic_sub_fetch(&p->nref, 1, __ATOMIC_SEQ_CST))
			return;
		n = p;
	}
}

void ovl_node_put(struct ovl_fs *fs, struct ovl_node *n)
{
	if (__atomic_sub_fetch(&n->nref, 1, __ATOMIC_SEQ_CST) == 0 &&
	    __atomic_load_n(&n->nlookup, __ATOMIC_SEQ_CST) == 0)
		ovl_node_free_chain(fs, n);
}

void ovl_node_put_many(struct ovl_fs *fs, struct ovl_node **n, size_t k)
{
	if (!k)
		return;
	pthread_rwlock_wrlock(&fs->tree_lock);
	for (size_t i = 0; i < k; i++)
		ovl_node_put(fs, n[i]);
	pthread_rwlock_unlock(&fs->tree_lock);
}

void ovl_node_forget(struct ovl_fs *fs, struct ovl_node *n, uint64_t nlookup)
{
	if (!n->parent)
		return;         /* the root lives as long as the mount */
	pthread_rwlock_wrlock(&fs->tree_lock);
	if (__atomic_sub_fetch(&n->nlookup, nlookup, __ATOMIC_SEQ_CST) == 0 &&
	    __atomic_load_n(&n->nref, __ATOMIC_SEQ_CST) == 0)
		ovl_node_free_chain(fs, n);
	pthread_rwlock_unlock(&fs->tree_lock);
}

/* "/proc/self/fd/N" of a gone node's unlinked upper file; -ESTALE when it has none. */
int ovl_node_orphan_path(const struct ovl_node *n, char *buf, size_t size)
{
	if (n->orphan_fd < 0)
		return -ESTALE;
	return snprintf(buf, size, "/proc/self/fd/%d", n->orphan_fd) < (int)size ? 0
									  : -ENAMETOOLONG;
}

int ovl_join(const char *dir, const char *name, char *buf, size_t size)
{
	int n = *dir ? snprintf(buf, size, "%s/%s", dir, name) : snprintf(buf, size, "%s", name);

	return n < (int)size ? 0 : -ENAMETOOLONG;
}

/* The node's path relative to every layer root ("" for the root).  Caller holds tree_lock. */
int ovl_node_path(struct ovl_node *n, char *buf, size_t size)
{
	size_t pos = size - 1;
	struct ovl_node *p;

	if (n->gone == 2)
		return -ESTALE;
	buf[pos] = 0;
	for (p = n; p->parent; p = p->parent) {
		size_t len = strlen(p->name);

		if (len + 1 > pos)
			return -ENAMETOOLONG;
		pos -= len;
		memcpy(buf + pos, p->name, len);
		if (p->parent->parent)
			buf[--pos] = '/';
	}
	memmove(buf, buf + pos, size - pos);
	return 0;
}

static bool ovl_node_below(const struct ovl_node *n, const struct ovl_node *top)
{
	for (; n; n = n->parent)
		if (n == top)
			return true;
	return false;
}

static int ovl_pin_one(struct ovl_fs *fs, struct ovl_node *n)
{
	char path[PATH_MAX];
	int i, ret = ovl_node_path(n, path, sizeof(path));

	for (i = 0; !ret && i < n->nlent; i++) {
		if ((fs->has_upper && n->lent[i].layer == 0) || n->lent[i].path)
			continue;
		n->lent[i].path = strdup(path);
		if (!n->lent[i].path)
			ret = -ENOMEM;
	}
	return ret;
}

/*
 * Before `top` moves (a redirected directory): every node at or below it whose lower
 * entries were named by the merged path gets that path written down, since the merged
 * path is about to change and the lower ones are not.  Caller holds tree_lock exclusive.
 */
int ovl_node_pin_lower_paths(struct ovl_fs *fs, struct ovl_node *top)
{
	struct ovl_node *n;
	int b, ret = ovl_pin_one(fs, top);

	fs->tree_seq++;
	for (b = 0; !ret && b < OVL_HASH_BUCKETS; b++) {
		pthread_mutex_lock(ovl_bucket_lock(fs, b));
		for (n = fs->hash[b]; n && !ret; n = n->hnext)
			if (n != top && ovl_node_below(n, top))
				ret = ovl_pin_one(fs, n);
		pthread_mutex_unlock(ovl_bucket_lock(fs, b));
	}
	return ret;
}

struct ovl_node *ovl_hl_find(struct ovl_fs *fs, ino_t ino)
{
	struct ovl_node *n;

	for (n = fs->hl_hash[ino % 1024]; n; n = n->hl_next)
		if (n->hl_ino == ino)
			return n;
	return NULL;
}

void ovl_hl_add(struct ovl_fs *fs, struct ovl_node *n, ino_t ino)
{
	if (n->hl_ino || !ino)
		return;
	n->hl_ino = ino;
	n->hl_next = fs->hl_hash[ino % 1024];
	fs->hl_hash[ino % 1024] = n;
}

int ovl_alias_add(struct ovl_fs *fs, struct ovl_node *n, struct ovl_node *parent,
		  const char *name)
{
	struct ovl_alias *a;
	unsigned int b;

	if ((n->parent == parent && strcmp(n->name, name) == 0) ||
	    ovl_alias_find(fs, parent, name))
		return 0;
	a = calloc(1, sizeof(*a));
	if (!a || !(a->name = strdup(name))) {
		free(a);
		return -ENOMEM;
	}
	a->parent = parent;
	a->node = n;
	ovl_node_get(parent);
	b = ovl_hash(parent, name);
	pthread_mutex_lock(ovl_bucket_lock(fs, b));
	a->hnext = fs->alias_hash[b];
	fs->alias_hash[b] = a;
	pthread_mutex_unlock(ovl_bucket_lock(fs, b));
	a->nnext = n->aliases;
	n->aliases = a;
	return 0;
}

static struct ovl_alias *ovl_alias_of(struct ovl_node *n, struct ovl_node *parent,
				      const char *name)
{
	struct ovl_alias *a;

	for (a = n->aliases; a; a = a->nnext)
		if (a->parent == parent && strcmp(a->name, name) == 0)
			return a;
	return NULL;
}

void ovl_name_drop(struct ovl_fs *fs, struct ovl_node *n, struct ovl_node *parent,
		   const char *name)
{
	struct ovl_alias *a = ovl_alias_of(n, parent, name);

	if (a) {
		ovl_alias_free(fs, a);
		return;
	}
	if (!n->aliases) {
		ovl_node_unhash(fs, n);
		n->gone = fs->has_upper && n->nlent && n->lent[0].layer == 0 ? 2 : 1;
		return;
	}
	/* Its own name is gone but another stays: that one becomes the node's name. */
	a = n->aliases;
	ovl_alias_unlink(fs, a);
	ovl_node_move(fs, n, a->parent, a->name);
	ovl_node_put(fs, a->parent);
	free(a->name);
	free(a);
}

void ovl_name_move(struct ovl_fs *fs, struct ovl_node *n, struct ovl_node *parent,
		   const char *name, struct ovl_node *np, const char *nname)
{
	struct ovl_alias *a = ovl_alias_of(n, parent, name);

	if (!a) {
		ovl_node_move(fs, n, np, nname);
		return;
	}
	ovl_alias_add(fs, n, np, nname);
	ovl_alias_free(fs, a);
}
