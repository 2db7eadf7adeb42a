// SPDX-License-Identifier: GPL-2.0-or-later
/* Setting up the union: layers, upper and workdir checks, inode numbering. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "overlay/ovl.h"
#include "fdpath.h"

/*
 * Inode numbers, xino-style: every distinct backing filesystem gets a small id; st_ino is
 * the backing inode number with that id in the top bits.  Layers on one filesystem already
 * have distinct inode numbers, so they share an id and the upper's numbers show unchanged.
 * A copied-up entry keeps the number it had below: inomap remembers upper ino -> shown ino.
 */
#define OVL_FSID_SHIFT 48

struct ovl_devmap {
	pthread_mutex_t lock;
	int n;
	dev_t dev[256];
};

struct ovl_inoent {
	ino_t upper;
	uint64_t shown;
	struct ovl_inoent *next;
};

struct ovl_inomap {
	pthread_mutex_t lock;
	struct ovl_inoent *b[4096];
};

static int ovl_fsid(struct ovl_fs *fs, dev_t dev)
{
	struct ovl_devmap *m = fs->devmap;
	int i;

	pthread_mutex_lock(&m->lock);
	for (i = 0; i < m->n; i++)
		if (m->dev[i] == dev)
			break;
	if (i == m->n && m->n < 256)
		m->dev[m->n++] = dev;
	pthread_mutex_unlock(&m->lock);
	return i;
}

static uint64_t ovl_fold(struct ovl_fs *fs, uint64_t ino)
{
	if (fs->o.ino32)
		return (uint32_t)(ino ^ (ino >> 32));
	return ino;
}

uint64_t ovl_ino_for(struct ovl_fs *fs, int layer, dev_t dev, ino_t ino)
{
	struct ovl_inomap *m = fs->inomap;
	struct ovl_inoent *e;
	uint64_t id;

	if (fs->has_upper && layer == 0) {
		pthread_mutex_lock(&m->lock);
		for (e = m->b[ino % 4096]; e; e = e->next)
			if (e->upper == ino)
				break;
		pthread_mutex_unlock(&m->lock);
		if (e)
			return e->shown;
	}
	/* Image layers number their own inodes: each is a filesystem of its own. */
	if (fs->layers[layer]->root_fd < 0)
		dev = (dev_t)-1 - (dev_t)layer;
	id = (uint64_t)ovl_fsid(fs, dev);
	if (id == 0 || (uint64_t)ino >> OVL_FSID_SHIFT)
		return ovl_fold(fs, ino ^ (id << OVL_FSID_SHIFT));
	return ovl_fold(fs, (uint64_t)ino | (id << OVL_FSID_SHIFT));
}

void ovl_ino_remember(struct ovl_fs *fs, ino_t upper_ino, uint64_t shown)
{
	struct ovl_inomap *m = fs->inomap;
	struct ovl_inoent *e = malloc(sizeof(*e));

	if (!e)
		return;
	e->upper = upper_ino;
	e->shown = shown;
	pthread_mutex_lock(&m->lock);
	e->next = m->b[upper_ino % 4096];
	m->b[upper_ino % 4096] = e;
	pthread_mutex_unlock(&m->lock);
}

/* Is `inner` equal to or below `outer` (both directories)? */
static bool ovl_path_within(const char *inner, const char *outer)
{
	char a[PATH_MAX], b[PATH_MAX];
	size_t n;

	if (!realpath(inner, a) || !realpath(outer, b))
		return false;
	n = strlen(b);
	if (n == 1)
		return true;
	return strncmp(a, b, n) == 0 && (a[n] == '/' || a[n] == 0);
}

static bool ovl_can_trusted_xattr(int dirfd)
{
	char path[64];
	ssize_t r;

	fd_path(path, sizeof(path), dirfd, "");
	if (setxattr(path, "trusted.overlay.stratafs-probe", "1", 1, 0) < 0)
		return false;
	r = removexattr(path, "trusted.overlay.stratafs-probe");
	(void)r;
	return true;
}

static int ovl_setup_work(struct ovl_fs *fs, const char *upper, const char *work,
			  char *err, size_t errlen)
{
	struct stat us, ws;
	int wfd;

	if (stat(upper, &us) < 0 || !S_ISDIR(us.st_mode)) {
		snprintf(err, errlen, "upperdir '%s': %s", upper,
			 errno ? strerror(errno) : "not a directory");
		return -1;
	}
	if (!work) {
		snprintf(err, errlen, "upperdir '%s' given without workdir", upper);
		return -1;
	}
	if (stat(work, &ws) < 0 || !S_ISDIR(ws.st_mode)) {
		snprintf(err, errlen, "workdir '%s': %s", work,
			 errno ? strerror(errno) : "not a directory");
		return -1;
	}
	if (us.st_dev != ws.st_dev) {
		snprintf(err, errlen, "workdir '%s' and upperdir '%s' must be on the same filesystem",
			 work, upper);
		return -1;
	}
	if (ovl_path_within(work, upper) || ovl_path_within(upper, work)) {
		snprintf(err, errlen, "workdir '%s' and upperdir '%s' must not contain each other",
			 work, upper);
		return -1;
	}
	wfd = open(work, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (wfd < 0 || ((mkdirat(wfd, "work", 0700) < 0 && errno != EEXIST))) {
		snprintf(err, errlen, "workdir '%s': %s", work, strerror(errno));
		if (wfd >= 0)
			close(wfd);
		return -1;
	}
	fs->work_fd = openat(wfd, "work", O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	close(wfd);
	if (fs->work_fd < 0) {
		snprintf(err, errlen, "workdir '%s/work': %s", work, strerror(errno));
		return -1;
	}
	return 0;
}

int ovl_fs_init(struct ovl_fs *fs, char **lowers, int nlowers, const char *upper,
		const char *work, char *err, size_t errlen)
{
	struct ovl_res res = { 0 };
	int i, base;

	fs->upper_fd = fs->work_fd = -1;
	fs->has_upper = upper != NULL;
	fs->nlayers = nlowers + (upper ? 1 : 0);
	fs->layers = calloc(fs->nlayers, sizeof(*fs->layers));
	fs->inomap = calloc(1, sizeof(*fs->inomap));
	fs->devmap = calloc(1, sizeof(*fs->devmap));
	fs->hash = calloc(OVL_HASH_BUCKETS, sizeof(*fs->hash));
	fs->alias_hash = calloc(OVL_HASH_BUCKETS, sizeof(*fs->alias_hash));
	if (!fs->layers || !fs->inomap || !fs->devmap || !fs->hash || !fs->alias_hash) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&fs->inomap->lock, NULL);
	pthread_mutex_init(&fs->devmap->lock, NULL);
	pthread_rwlock_init(&fs->tree_lock, NULL);
	{
		/* Writers first: a stream of parallel creates must not starve a copy-up. */
		pthread_rwlockattr_t a;

		pthread_rwlockattr_init(&a);
		pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&fs->copy_lock, &a);
		pthread_rwlockattr_destroy(&a);
	}
	for (i = 0; i < 64; i++)
		pthread_mutex_init(&fs->hash_lock[i], NULL);

	/* Every check before anything is created: bad input touches nothing. */
	base = upper ? 1 : 0;
	for (i = 0; i < nlowers; i++) {
		fs->layers[base + i] = layer_open(lowers[i], base + i, err, errlen);
		if (!fs->layers[base + i])
			return -EINVAL;
	}
	if (upper) {
		for (i = 0; i < nlowers; i++) {
			if (fs->layers[base + i]->root_fd >= 0 && ovl_path_within(upper, lowers[i])) {
				snprintf(err, errlen, "upperdir '%s' is inside lower layer '%s'",
					 upper, lowers[i]);
				return -EINVAL;
			}
		}
		if (ovl_setup_work(fs, upper, work, err, errlen) < 0)
			return -EINVAL;
		fs->layers[0] = layer_dir_open(upper, 0, err, errlen);
		if (!fs->layers[0])
			return -EINVAL;
		fs->upper_fd = fs->layers[0]->root_fd;
		fs->priv = ovl_can_trusted_xattr(fs->upper_fd);
		ovl_fsid(fs, fs->layers[0]->dev);
	}
	for (i = base; i < fs->nlayers; i++)
		if (fs->layers[i]->root_fd >= 0)
			ovl_fsid(fs, fs->layers[i]->dev);
	/* The root: every layer's root, down to the first opaque one. */
	res.lent = calloc(fs->nlayers, sizeof(*res.lent));
	if (!res.lent)
		return -ENOMEM;
	for (i = 0; i < fs->nlayers; i++) {
		struct lnode root = { "", 0 };
		struct layer *l = fs->layers[i];

		if (l->ops->getattr(l, &root, i ? &(struct stat){ 0 } : &res.st) < 0)
			continue;
		res.lent[res.nlent].layer = i;
		res.lent[res.nlent].ref = root.ref;
		res.nlent++;
	}
	if (res.nlent == 0 || res.lent[0].layer != 0 ||
	    fs->layers[0]->ops->getattr(fs->layers[0], &(struct lnode){ "", 0 }, &res.st) < 0) {
		free(res.lent);
		snprintf(err, errlen, "cannot read the root of layer '%s'", fs->layers[0]->spec);
		return -EIO;
	}
	fs->root = ovl_node_new(fs, NULL, "", &res);
	if (!fs->root)
		return -ENOMEM;
	fs->root->nlookup = 1;
	return 0;
}

void ovl_fs_destroy(struct ovl_fs *fs)
{
	int i;

	for (i = 0; i < fs->nlayers; i++)
		layer_close(fs->layers[i]);
	if (fs->work_fd >= 0)
		close(fs->work_fd);
	free(fs->layers);
	free(fs->hash);
	free(fs->alias_hash);
}
