// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A host directory as a layer: every call is an *at() call below the layer's O_PATH root fd,
 * with paths relative to it, never following a symlink in the last component.
 */
#include <dirent.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

#include "layer/layer.h"
#include "fdpath.h"

struct layer_file {
	int fd;
};

static const struct layer_operations dir_ops;

/* Path for the *xattr() calls, which have no *at() form: /proc/self/fd/ROOT/REL. */
static int dir_proc_path(struct layer *l, const char *rel, char *buf, size_t size)
{
	return fd_path(buf, size, l->root_fd, rel);
}

static int dir_join(const char *dir, const char *name, char *buf, size_t size)
{
	int n = *dir ? snprintf(buf, size, "%s/%s", dir, name) : snprintf(buf, size, "%s", name);

	return n < (int)size ? 0 : -ENAMETOOLONG;
}

static const char *dir_rel(const struct lnode *n)
{
	return *n->path ? n->path : ".";
}

static int dir_getattr(struct layer *l, const struct lnode *n, struct stat *st)
{
	if (fstatat(l->root_fd, dir_rel(n), st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

static int dir_lookup(struct layer *l, const struct lnode *dir, const char *name,
		      struct lnode *child, struct stat *st)
{
	char path[PATH_MAX];
	int ret = dir_join(dir->path, name, path, sizeof(path));

	return ret ? ret : layer_lookup_at(l->root_fd, path, child, st);
}

int layer_dir_fd(struct layer *l, const char *path)
{
	int fd;

	if (l->ops != &dir_ops)
		return -ENOTSUP;
	fd = openat(l->root_fd, *path ? path : ".", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int layer_lookup_at(int dfd, const char *name, struct lnode *child, struct stat *st)
{
	if (fstatat(dfd, name, st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	child->ref = st->st_ino;
	return 0;
}

/* Raw getdents64 on an fd of our own: no DIR stream, no fcntl round trips per directory. */
struct dir_dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

static int dir_readdir(struct layer *l, const struct lnode *dir, layer_filldir_t fill, void *ctx)
{
	char buf[32768];
	long n;
	int fd, ret = 0;

	fd = openat(l->root_fd, dir_rel(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	while (!ret && (n = syscall(SYS_getdents64, fd, buf, sizeof(buf))) > 0) {
		long pos = 0;

		while (!ret && pos < n) {
			struct dir_dirent64 *de = (void *)(buf + pos);
			const char *nm = de->d_name;

			pos += de->d_reclen;
			if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0)))
				continue;
			ret = fill(ctx, nm, de->d_type, de->d_ino);
		}
	}
	if (!ret && n < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static int dir_readlink(struct layer *l, const struct lnode *n, char *buf, size_t size)
{
	ssize_t r = readlinkat(l->root_fd, n->path, buf, size);

	return r < 0 ? -errno : (int)r;
}

static ssize_t dir_getxattr(struct layer *l, const struct lnode *n, const char *name,
			    void *buf, size_t size)
{
	char path[PATH_MAX + 32];
	ssize_t r;
	int ret = dir_proc_path(l, n->path, path, sizeof(path));

	if (ret)
		return ret;
	r = lgetxattr(path, name, buf, size);
	return r < 0 ? -errno : r;
}

static ssize_t dir_listxattr(struct layer *l, const struct lnode *n, char *buf, size_t size)
{
	char path[PATH_MAX + 32];
	ssize_t r;
	int ret = dir_proc_path(l, n->path, path, sizeof(path));

	if (ret)
		return ret;
	r = llistxattr(path, buf, size);
	return r < 0 ? -errno : r;
}

static int dir_open(struct layer *l, const struct lnode *n, int flags, struct layer_file **f)
{
	struct layer_file *lf;
	int fd = openat(l->root_fd, dir_rel(n), flags | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return -errno;
	lf = malloc(sizeof(*lf));
	if (!lf) {
		close(fd);
		return -ENOMEM;
	}
	lf->fd = fd;
	*f = lf;
	return 0;
}

static ssize_t dir_read(struct layer_file *f, void *buf, size_t size, off_t off)
{
	ssize_t r = pread(f->fd, buf, size, off);

	return r < 0 ? -errno : r;
}

static int dir_host_fd(struct layer_file *f)
{
	return f->fd;
}

static void dir_close(struct layer_file *f)
{
	close(f->fd);
	free(f);
}

static int dir_statfs(struct layer *l, struct statvfs *st)
{
	return fstatvfs(l->root_fd, st) < 0 ? -errno : 0;
}

static void dir_destroy(struct layer *l)
{
	if (l->root_fd >= 0)
		close(l->root_fd);
	free(l->spec);
	free(l);
}

static const struct layer_operations dir_ops = {
	.lookup = dir_lookup,
	.getattr = dir_getattr,
	.readdir = dir_readdir,
	.readlink = dir_readlink,
	.getxattr = dir_getxattr,
	.listxattr = dir_listxattr,
	.open = dir_open,
	.read = dir_read,
	.host_fd = dir_host_fd,
	.close = dir_close,
	.statfs = dir_statfs,
	.destroy = dir_destroy,
};

struct layer *layer_dir_open(const char *path, int index, char *err, size_t errlen)
{
	struct layer *l = calloc(1, sizeof(*l));
	struct stat st;

	if (!l) {
		snprintf(err, errlen, "layer '%s': out of memory", path);
		return NULL;
	}
	l->root_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (l->root_fd < 0 || fstat(l->root_fd, &st) < 0) {
		snprintf(err, errlen, "layer '%s': %s", path, strerror(errno));
		goto fail;
	}
	l->spec = strdup(path);
	if (!l->spec) {
		snprintf(err, errlen, "layer '%s': out of memory", path);
		goto fail;
	}
	l->ops = &dir_ops;
	l->index = index;
	l->dev = st.st_dev;
	return l;
fail:
	if (l->root_fd >= 0)
		close(l->root_fd);
	free(l);
	return NULL;
}
