// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A SquashFS image as a read-only layer, through the in-process reader
 * (fs/squashfs/reader.h).  lnode.ref is the inode reference; the root is path "".
 * Images never change under us, so nothing here is ever invalidated.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "layer/layer.h"
#include "layer/layer_image.h"
#include "squashfs/reader.h"

struct layer_file {
	struct sqfs_file *f;        /* NULL for anything but a regular file */
	int type;
};

struct img {
	struct sqfs_reader *r;
	struct layer *l;
	pthread_mutex_t cur_lock;   /* readdirplus looks names up in listing order */
	struct sqfs_cursor *cur;
};

static struct sqfs_reader *img_reader(struct layer *l)
{
	return ((struct img *)l->priv)->r;
}

static int img_inode(struct layer *l, const struct lnode *n, struct sqfs_inode *ino)
{
	struct sqfs_reader *r = img_reader(l);

	return sqfs_read_inode(r, n->path[0] ? n->ref : sqfs_root_ref(r), ino);
}

static void img_stat(struct layer *l, const struct sqfs_inode *ino, struct stat *st)
{
	sqfs_inode_stat(img_reader(l), ino, st);
	st->st_dev = l->dev;
}

static int img_getattr(struct layer *l, const struct lnode *n, struct stat *st)
{
	struct sqfs_inode ino;
	int ret = img_inode(l, n, &ino);

	if (ret)
		return ret;
	img_stat(l, &ino, st);
	return 0;
}

static int img_lookup(struct layer *l, const struct lnode *dir, const char *name,
		      struct lnode *child, struct stat *st)
{
	struct img *im = l->priv;
	struct sqfs_inode d, ino;
	int ret = img_inode(l, dir, &d);

	if (ret)
		return ret;
	if (pthread_mutex_trylock(&im->cur_lock) == 0) {
		ret = sqfs_lookup_inode_at(im->r, &d, name, strlen(name), &ino, im->cur);
		pthread_mutex_unlock(&im->cur_lock);
	} else {
		ret = sqfs_lookup_inode(im->r, &d, name, strlen(name), &ino);
	}
	if (ret)
		return ret;
	child->ref = ino.ref;
	img_stat(l, &ino, st);
	return 0;
}

static const unsigned char dtype[8] = {
	DT_UNKNOWN, DT_DIR, DT_REG, DT_LNK, DT_BLK, DT_CHR, DT_FIFO, DT_SOCK,
};

struct img_fill {
	layer_filldir_t fill;
	void *ctx;
};

static int img_fill_one(void *ctx, const char *name, size_t len, unsigned type,
			uint32_t ino, uint64_t ref)
{
	struct img_fill *f = ctx;

	(void)len;
	(void)ref;
	return f->fill(f->ctx, name, type < 8 ? dtype[type] : DT_UNKNOWN, ino);
}

static int img_readdir(struct layer *l, const struct lnode *dir, layer_filldir_t fill, void *ctx)
{
	struct img_fill f = { fill, ctx };
	struct sqfs_inode d;
	int ret = img_inode(l, dir, &d);

	if (ret)
		return ret;
	return sqfs_readdir(img_reader(l), &d, img_fill_one, &f);
}

/* readlinkat() semantics: the bytes copied, no NUL. */
static int img_readlink(struct layer *l, const struct lnode *n, char *buf, size_t size)
{
	struct sqfs_inode ino;
	ssize_t len;
	int ret = img_inode(l, n, &ino);

	if (ret)
		return ret;
	if (ino.type != SQFS_INODE_SYMLINK)
		return -EINVAL;
	len = sqfs_readlink(img_reader(l), &ino, buf, size);
	if (len < 0)
		return len;
	return (size_t)len < size ? (int)len : (int)size;
}

static ssize_t img_getxattr(struct layer *l, const struct lnode *n, const char *name,
			    void *buf, size_t size)
{
	struct sqfs_inode ino;
	int ret = img_inode(l, n, &ino);

	if (ret)
		return ret;
	return sqfs_getxattr(img_reader(l), &ino, name, buf, size);
}

static ssize_t img_listxattr(struct layer *l, const struct lnode *n, char *buf, size_t size)
{
	struct sqfs_inode ino;
	int ret = img_inode(l, n, &ino);

	if (ret)
		return ret;
	return sqfs_listxattr(img_reader(l), &ino, buf, size);
}

static int img_open(struct layer *l, const struct lnode *n, int flags, struct layer_file **out)
{
	struct sqfs_inode ino;
	struct layer_file *lf;
	int ret;

	if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
		return -EROFS;
	ret = img_inode(l, n, &ino);
	if (ret)
		return ret;
	if ((flags & O_DIRECTORY) && ino.type != SQFS_INODE_DIR)
		return -ENOTDIR;
	lf = calloc(1, sizeof(*lf));
	if (!lf)
		return -ENOMEM;
	lf->type = ino.type;
	if (ino.type == SQFS_INODE_FILE) {
		ret = sqfs_file_open(img_reader(l), &ino, &lf->f);
		if (ret) {
			free(lf);
			return ret;
		}
	}
	*out = lf;
	return 0;
}

static ssize_t img_read(struct layer_file *f, void *buf, size_t size, off_t off)
{
	if (!f->f)
		return f->type == SQFS_INODE_DIR ? -EISDIR : -EINVAL;
	if (off < 0)
		return -EINVAL;
	return sqfs_file_pread(f->f, buf, size, off);
}

static int img_host_fd(struct layer_file *f)
{
	(void)f;
	return -1;
}

static void img_close(struct layer_file *f)
{
	sqfs_file_close(f->f);
	free(f);
}

static int img_statfs(struct layer *l, struct statvfs *st)
{
	const struct sqfs_info *i = sqfs_get_info(img_reader(l));

	memset(st, 0, sizeof(*st));
	st->f_bsize = st->f_frsize = i->block_size;
	st->f_blocks = (i->bytes_used + i->block_size - 1) / i->block_size;
	st->f_files = i->inode_count;
	st->f_namemax = SQFS_NAME_MAX;
	st->f_flag = ST_RDONLY;
	return 0;
}

static void img_destroy(struct layer *l)
{
	struct img *im = l->priv;

	if (im) {
		sqfs_close(im->r);
		sqfs_cursor_free(im->cur);
		pthread_mutex_destroy(&im->cur_lock);
		free(im);
	}
	free(l->spec);
	free(l);
}

static const struct layer_operations img_ops = {
	.lookup = img_lookup,
	.getattr = img_getattr,
	.readdir = img_readdir,
	.readlink = img_readlink,
	.getxattr = img_getxattr,
	.listxattr = img_listxattr,
	.open = img_open,
	.read = img_read,
	.host_fd = img_host_fd,
	.close = img_close,
	.statfs = img_statfs,
	.destroy = img_destroy,
};

/* Corruption reports name the image, so a user with several knows which one. */
static void img_log(void *ctx, const char *msg)
{
	struct img *im = ctx;

	fprintf(stderr, "stratafs: image '%s': %s\n", im->l->spec, msg);
}

struct layer *layer_image_open_cache(const char *path, int index, size_t cache_bytes,
				     char *err, size_t errlen)
{
	struct sqfs_reader_opts o = { .data_cache_bytes = cache_bytes, .log = img_log };
	struct layer *l = calloc(1, sizeof(*l));
	struct img *im = calloc(1, sizeof(*im));
	char msg[256];
	struct stat st;
	int ret;

	if (im)
		pthread_mutex_init(&im->cur_lock, NULL);
	if (!l || !im || !(l->spec = strdup(path)) || !(im->cur = sqfs_cursor_new())) {
		snprintf(err, errlen, "layer '%s': out of memory", path);
		goto fail;
	}
	if (cache_bytes) {
		o.meta_cache_bytes = cache_bytes / 8;
		if (o.meta_cache_bytes < (4u << 20))
			o.meta_cache_bytes = 4u << 20;
	}
	im->l = l;
	o.log_ctx = im;
	l->priv = im;
	ret = sqfs_open(path, &o, &im->r, msg, sizeof(msg));
	if (ret) {
		snprintf(err, errlen, "image '%s': %s", path, msg);
		goto fail;
	}
	if (stat(path, &st) < 0) {
		snprintf(err, errlen, "image '%s': %s", path, strerror(errno));
		goto fail;
	}
	l->ops = &img_ops;
	l->index = index;
	l->root_fd = -1;
	l->dev = st.st_dev;
	return l;
fail:
	if (l && im) {
		img_destroy(l);
		return NULL;
	}
	free(im);
	if (l)
		free(l->spec);
	free(l);
	return NULL;
}

int layer_parse_size(const char *s, size_t *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	if (*end && strchr("kKmMgG", *end)) {
		v <<= *end == 'k' || *end == 'K' ? 10 : *end == 'm' || *end == 'M' ? 20 : 30;
		end++;
		if (!strcmp(end, "iB"))
			end += 2;
	}
	if (!strcmp(end, "B"))
		end++;
	if (*end || v == 0 || v > (1ull << 40))
		return -EINVAL;
	*out = v;
	return 0;
}

/* stratafs passes -o image_cache=SIZE down as $STRATA_IMAGE_CACHE. */
struct layer *layer_image_open(const char *path, int index, char *err, size_t errlen)
{
	const char *env = getenv("STRATA_IMAGE_CACHE");
	size_t bytes = 0;

	if (env && *env && layer_parse_size(env, &bytes)) {
		snprintf(err, errlen, "image_cache='%s': expected a size like 256M", env);
		return NULL;
	}
	return layer_image_open_cache(path, index, bytes, err, errlen);
}
