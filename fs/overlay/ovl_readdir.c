// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Merged directory listing: all layers of the directory's stack, top first, each name once,
 * whiteouts and the names they hide left out.  Built once per opendir; offsets are indexes
 * into it, so seekdir/telldir are exact.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "overlay/ovl.h"
#include "overlay/whiteout.h"

/* Open-addressing set of names seen so far (listed or hidden). */
struct ovl_nameset {
	char **slot;
	size_t cap, used;
};

static uint64_t ovl_strhash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
	return h;
}

static int ovl_set_grow(struct ovl_nameset *s)
{
	size_t ncap = s->cap ? s->cap * 2 : 256, i;
	char **ns = calloc(ncap, sizeof(*ns));

	if (!ns)
		return -ENOMEM;
	for (i = 0; i < s->cap; i++) {
		size_t j;

		if (!s->slot[i])
			continue;
		for (j = ovl_strhash(s->slot[i]) & (ncap - 1); ns[j]; j = (j + 1) & (ncap - 1))
			;
		ns[j] = s->slot[i];
	}
	free(s->slot);
	s->slot = ns;
	s->cap = ncap;
	return 0;
}

/* 1 if present, 0 if added (the set keeps `name`), negative on error. */
static int ovl_set_add(struct ovl_nameset *s, char *name)
{
	size_t j;

	if ((s->used + 1) * 2 > s->cap && ovl_set_grow(s) < 0)
		return -ENOMEM;
	for (j = ovl_strhash(name) & (s->cap - 1); s->slot[j]; j = (j + 1) & (s->cap - 1))
		if (strcmp(s->slot[j], name) == 0)
			return 1;
	s->slot[j] = name;
	s->used++;
	return 0;
}

static bool ovl_set_has(struct ovl_nameset *s, const char *name)
{
	size_t j;

	if (!s->cap)
		return false;
	for (j = ovl_strhash(name) & (s->cap - 1); s->slot[j]; j = (j + 1) & (s->cap - 1))
		if (strcmp(s->slot[j], name) == 0)
			return true;
	return false;
}

struct ovl_fill_ctx {
	struct ovl_fs *fs;
	struct layer *layer;
	int layer_idx;
	const char *dpath;
	struct lnode dir;
	struct ovl_dir *out;
	size_t max;                     /* stop with -E2BIG past this many entries; 0: no limit */
	struct ovl_nameset seen;        /* names listed or hidden by a layer above */
	struct ovl_nameset hidden_here; /* .wh. names of the current layer */
	char **owned;                   /* strings the sets point at, freed at the end */
	size_t nowned, capowned;
};

static char *ovl_own(struct ovl_fill_ctx *c, const char *name)
{
	char *s;

	if (c->nowned == c->capowned) {
		size_t ncap = c->capowned ? c->capowned * 2 : 256;
		char **n = realloc(c->owned, ncap * sizeof(*n));

		if (!n)
			return NULL;
		c->owned = n;
		c->capowned = ncap;
	}
	s = strdup(name);
	if (s)
		c->owned[c->nowned++] = s;
	return s;
}

static int ovl_dir_push(struct ovl_dir *d, const char *name, unsigned char type, int layer,
			uint64_t ino)
{
	if (d->n == d->cap) {
		size_t ncap = d->cap ? d->cap * 2 : 64;
		struct ovl_dirent *e = realloc(d->ents, ncap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		d->ents = e;
		d->cap = ncap;
	}
	d->ents[d->n].name = strdup(name);
	if (!d->ents[d->n].name)
		return -ENOMEM;
	d->ents[d->n].type = type;
	d->ents[d->n].ino = ino;
	d->ents[d->n].layer = layer;
	d->n++;
	return 0;
}

static int ovl_fill(void *vctx, const char *name, unsigned char d_type, uint64_t ino)
{
	struct ovl_fill_ctx *c = vctx;
	struct stat st;
	struct lnode child;
	const char *hid;
	char *own;
	int ret;

	if (wh_is_reserved_name(name)) {
		/* .wh.NAME hides NAME in lower layers (not a sibling in this one). */
		hid = wh_hidden_name(name);
		if (hid && !ovl_set_has(&c->seen, hid)) {
			own = ovl_own(c, hid);
			if (!own || ovl_set_add(&c->hidden_here, own) < 0)
				return -ENOMEM;
		}
		return 0;
	}
	if (ovl_set_has(&c->seen, name))
		return 0;
	if (d_type == DT_CHR || d_type == DT_UNKNOWN) {
		ret = c->layer->ops->lookup(c->layer, &c->dir, name, &child, &st);
		if (ret == 0 && wh_is_chardev_whiteout(&st)) {
			own = ovl_own(c, name);
			if (!own || ovl_set_add(&c->hidden_here, own) < 0)
				return -ENOMEM;
			return 0;
		}
		if (ret == 0)
			d_type = IFTODT(st.st_mode);
	}
	if (c->max && c->out->n >= c->max)
		return -E2BIG;
	own = ovl_own(c, name);
	if (!own || ovl_set_add(&c->seen, own) < 0)
		return -ENOMEM;
	return ovl_dir_push(c->out, name, d_type, c->layer_idx,
			    ovl_ino_for(c->fs, c->layer_idx, c->layer->dev, ino));
}

/* Fold the names this layer whited out into `seen`, so lower layers cannot list them. */
static int ovl_merge_hidden(struct ovl_fill_ctx *c)
{
	size_t i;

	for (i = 0; i < c->hidden_here.cap; i++) {
		char *s = c->hidden_here.slot[i];

		if (s && ovl_set_add(&c->seen, s) < 0)
			return -ENOMEM;
	}
	free(c->hidden_here.slot);
	memset(&c->hidden_here, 0, sizeof(c->hidden_here));
	return 0;
}

int ovl_dir_read_max(struct ovl_fs *fs, struct ovl_node *dir, struct ovl_dir *out, size_t max)
{
	struct ovl_fill_ctx c = { .fs = fs, .out = out, .max = max };
	char dpath[PATH_MAX];
	struct ovl_lent *where = NULL;
	int i, nwhere = 0, ret;

	memset(out, 0, sizeof(*out));
	out->gen = __atomic_load_n(&fs->gen, __ATOMIC_SEQ_CST);
	/* Where dir is in each layer, copied under the lock; the layers are read without it,
	 * so readdirplus's node updates never wait for a listing (a rename meanwhile changes
	 * fs->gen, as it would while the lock was held: that is what users of the listing
	 * check). */
	pthread_rwlock_rdlock(&fs->tree_lock);
	ret = ovl_node_path(dir, dpath, sizeof(dpath));
	if (!ret && !(where = calloc(dir->nlent ? dir->nlent : 1, sizeof(*where))))
		ret = -ENOMEM;
	for (i = 0; !ret && i < dir->nlent; i++, nwhere++) {
		where[i].layer = dir->lent[i].layer;
		where[i].ref = dir->lent[i].ref;
		if (!(where[i].path = strdup(ovl_lent_path(&dir->lent[i], dpath))))
			ret = -ENOMEM;
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	for (i = 0; !ret && i < nwhere; i++) {
		c.layer_idx = where[i].layer;
		c.layer = fs->layers[c.layer_idx];
		c.dir.path = where[i].path;
		c.dir.ref = where[i].ref;
		ret = c.layer->ops->readdir(c.layer, &c.dir, ovl_fill, &c);
		if (!ret)
			ret = ovl_merge_hidden(&c);
	}
	for (i = 0; i < nwhere; i++)
		free(where[i].path);
	free(where);
	while (c.nowned)
		free(c.owned[--c.nowned]);
	free(c.owned);
	free(c.seen.slot);
	free(c.hidden_here.slot);
	if (ret)
		ovl_dir_free(out);
	return ret;
}

int ovl_dir_read(struct ovl_fs *fs, struct ovl_node *dir, struct ovl_dir *out)
{
	return ovl_dir_read_max(fs, dir, out, 0);
}

void ovl_dir_free(struct ovl_dir *d)
{
	size_t i;

	for (i = 0; i < d->n; i++)
		free(d->ents[i].name);
	free(d->ents);
	free(d->pre);
	memset(d, 0, sizeof(*d));
}
