// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Copy-up: give an entry of a lower layer a private copy in the upper before it changes.
 * Parents first; the copy is built in workdir (data, owner, xattrs, mode, times) and renamed
 * into place last, so a crash never leaves a half-copied entry visible.
 * Caller holds fs->copy_lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <attr/libattr.h>

#include "overlay/ovl.h"
#include "fdpath.h"
#include "overlay/whiteout.h"

int ovl_tmpname(struct ovl_fs *fs, char *buf, size_t size)
{
	uint64_t seq = __atomic_add_fetch(&fs->tmp_seq, 1, __ATOMIC_SEQ_CST);

	return snprintf(buf, size, "#%x.%llx", (unsigned)getpid(), (unsigned long long)seq)
		< (int)size ? 0 : -ENAMETOOLONG;
}

static int ovl_copy_holes(int in, int out, off_t size)
{
	off_t pos = 0, data, hole;

	while (pos < size) {
		data = lseek(in, pos, SEEK_DATA);
		if (data < 0)
			return errno == ENXIO ? 0 : -errno;
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			return -errno;
		pos = data;
		while (pos < hole) {
			loff_t ip = pos, op = pos;
			ssize_t n = copy_file_range(in, &ip, out, &op, hole - pos, 0);

			if (n < 0)
				return -errno;
			if (n == 0)
				return -EIO;
			pos += n;
		}
	}
	return 0;
}

static bool ovl_all_zero(const char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

/* Through the layer interface (image layers, or when the fast paths fail); zero blocks
 * become holes. */
static int ovl_copy_slow(struct layer *l, struct layer_file *f, int out, off_t size)
{
	size_t bs = 1 << 17;
	char *buf = malloc(bs);
	off_t pos = 0;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	while (pos < size) {
		ssize_t n = l->ops->read(f, buf, bs, pos);

		if (n < 0) {
			ret = (int)n;
			break;
		}
		if (n == 0)
			break;
		if (!ovl_all_zero(buf, n) && pwrite(out, buf, n, pos) != n) {
			ret = errno ? -errno : -EIO;
			break;
		}
		pos += n;
	}
	free(buf);
	return ret;
}

static int ovl_copy_data(struct layer *l, const struct lnode *src, int out, off_t size)
{
	struct layer_file *f;
	int ret, in;

	ret = l->ops->open(l, src, O_RDONLY, &f);
	if (ret)
		return ret;
	in = l->ops->host_fd(f);
	if (in >= 0 && ioctl(out, FICLONE, in) == 0)
		goto done;
	ret = in >= 0 ? ovl_copy_holes(in, out, size) : -EXDEV;
	if (ret == -EXDEV || ret == -EOPNOTSUPP || ret == -EINVAL || ret == -ENOSYS)
		ret = ovl_copy_slow(l, f, out, size);
done:
	if (!ret && ftruncate(out, size) < 0)
		ret = -errno;
	l->ops->close(f);
	return ret;
}

/* libattr's filter: non-zero means "copy this one". */
static int ovl_copy_xattr_ok(const char *name, struct error_context *ctx)
{
	(void)ctx;
	return !wh_xattr_is_private(name);
}

/* All xattrs but the overlay's own, through the layer interface. */
static int ovl_copy_xattrs(struct ovl_fs *fs, struct layer *l, const struct lnode *src,
			   const char *dst)
{
	ssize_t len = l->ops->listxattr(l, src, NULL, 0), vlen;
	char *names, *name, *val = NULL;
	int ret = 0;

	if (len <= 0)
		return len == -ENOTSUP || len == 0 ? 0 : (int)len;
	names = malloc(len);
	if (!names)
		return -ENOMEM;
	len = l->ops->listxattr(l, src, names, len);
	for (name = names; len > 0 && name < names + len; name += strlen(name) + 1) {
		if (wh_xattr_is_private(name))
			continue;
		vlen = l->ops->getxattr(l, src, name, NULL, 0);
		if (vlen < 0)
			continue;
		free(val);
		val = malloc(vlen + 1);
		if (!val) {
			ret = -ENOMEM;
			break;
		}
		vlen = l->ops->getxattr(l, src, name, val, vlen);
		if (vlen < 0)
			continue;
		if (lsetxattr(dst, name, val, vlen, 0) < 0) {
			/* Without privilege trusted.* cannot be written: like the kernel, go on. */
			if ((errno == EPERM || errno == ENOTSUP) && (!fs->priv ||
			    strncmp(name, "security.", 9) == 0 || strncmp(name, "trusted.", 8) == 0))
				continue;
			ret = -errno;
			break;
		}
	}
	free(val);
	free(names);
	return ret;
}

static int ovl_make_copy(struct ovl_fs *fs, struct ovl_node *n, const char *path,
			 const char *tmp, struct stat *st)
{
	struct layer *l = fs->layers[n->lent[0].layer];
	struct lnode src = ovl_top(n, path);
	char proc[PATH_MAX + 64], target[PATH_MAX];
	int fd = -1, ret;

	ret = l->ops->getattr(l, &src, st);
	if (ret)
		return ret;
	switch (st->st_mode & S_IFMT) {
	case S_IFREG:
		fd = openat(fs->work_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
		ret = ovl_copy_data(l, &src, fd, st->st_size);
		break;
	case S_IFDIR:
		ret = mkdirat(fs->work_fd, tmp, 0700) < 0 ? -errno : 0;
		break;
	case S_IFLNK:
		ret = l->ops->readlink(l, &src, target, sizeof(target) - 1);
		if (ret < 0)
			return ret;
		target[ret] = 0;
		ret = symlinkat(target, fs->work_fd, tmp) < 0 ? -errno : 0;
		break;
	default:
		ret = mknodat(fs->work_fd, tmp, (st->st_mode & S_IFMT) | 0600, st->st_rdev) < 0
			? -errno : 0;
		break;
	}
	if (ret)
		goto out;
	if (fchownat(fs->work_fd, tmp, st->st_uid, st->st_gid, AT_SYMLINK_NOFOLLOW) < 0 &&
	    !fs->rootless) {
		ret = -errno;
		goto out;
	}
	fd_path(proc, sizeof(proc), fs->work_fd, tmp);
	/* Files with a host fd: libattr's copy; everything else (or if it fails) through the
	 * layer, which also tolerates what an unprivileged daemon may not set. */
	ret = -1;
	if (fd >= 0 && l->root_fd >= 0) {
		struct layer_file *f;

		if (l->ops->open(l, &src, O_RDONLY, &f) == 0) {
			ret = attr_copy_fd(NULL, l->ops->host_fd(f), NULL, fd, ovl_copy_xattr_ok, NULL);
			l->ops->close(f);
		}
	}
	if (ret != 0)
		ret = ovl_copy_xattrs(fs, l, &src, proc);
	if (ret)
		goto out;
	if (!S_ISLNK(st->st_mode) && fchmodat(fs->work_fd, tmp, st->st_mode & 07777, 0) < 0) {
		ret = -errno;
		goto out;
	}
	if (utimensat(fs->work_fd, tmp, (struct timespec[]){ st->st_atim, st->st_mtim },
		      AT_SYMLINK_NOFOLLOW) < 0)
		ret = -errno;
out:
	if (fd >= 0)
		close(fd);
	return ret;
}

/* Give the upper parent back the times it had: an entry appearing in it is not a change
 * the merged view should show (the kernel does the same). */
static void ovl_restore_times(int dirfd, const char *path, const struct stat *st)
{
	utimensat(dirfd, *path ? path : ".", (struct timespec[]){ st->st_atim, st->st_mtim },
		  AT_SYMLINK_NOFOLLOW);
}

static int ovl_copy_up_one(struct ovl_fs *fs, struct ovl_node *n)
{
	char path[PATH_MAX], ppath[PATH_MAX], tmp[64];
	struct ovl_lent *nl;
	struct stat st, pst, ust;
	bool superseded = false;
	int ret;

	pthread_rwlock_rdlock(&fs->tree_lock);
	ret = ovl_node_path(n, path, sizeof(path));
	if (!ret)
		ret = ovl_node_path(n->parent, ppath, sizeof(ppath));
	pthread_rwlock_unlock(&fs->tree_lock);
	if (ret)
		return ret;
	ret = ovl_tmpname(fs, tmp, sizeof(tmp));
	if (ret)
		return ret;
	ret = ovl_make_copy(fs, n, path, tmp, &st);
	if (ret)
		goto fail;
	if (fstatat(fs->upper_fd, *ppath ? ppath : ".", &pst, AT_SYMLINK_NOFOLLOW) < 0) {
		ret = -errno;
		goto fail;
	}
	/* The name appears in the upper: a namespace change, bumped at both ends like
	 * ovl_ops.c's (listings made meanwhile name the lower file). */
	__atomic_add_fetch(&fs->gen, 1, __ATOMIC_SEQ_CST);
	if (renameat2(fs->work_fd, tmp, fs->upper_fd, path, RENAME_NOREPLACE) < 0) {
		ret = -errno;
		goto fail;
	}
	ovl_restore_times(fs->upper_fd, ppath, &pst);
	if (fstatat(fs->upper_fd, path, &ust, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	/*
	 * Open files passed through to the lower file pin it to this node (the kernel allows
	 * one backing file per inode).  Then the copy is not this node's but a new one's: the
	 * name leaves this node, which keeps serving its open files from the lower layer as
	 * a removed lower file does, and ESTALE makes the kernel look the name up again (the
	 * VFS retries path-based calls once) and find the copy as a new inode.
	 */
	if (S_ISREG(st.st_mode)) {
		pthread_mutex_lock(&n->lock);
		superseded = n->pt_refs > 0;
		pthread_mutex_unlock(&n->lock);
	}
	/* Like the kernel without index=on: a copied-up hard link is a new inode. */
	if (S_ISDIR(st.st_mode) || st.st_nlink <= 1)
		ovl_ino_remember(fs, ust.st_ino, n->ino);
	else if (!superseded)
		n->ino = ovl_ino_for(fs, 0, ust.st_dev, ust.st_ino);

	pthread_rwlock_wrlock(&fs->tree_lock);
	__atomic_add_fetch(&fs->gen, 1, __ATOMIC_SEQ_CST);
	if (superseded) {
		ovl_node_unhash(fs, n);
		n->gone = 1;
		pthread_rwlock_unlock(&fs->tree_lock);
		return -ESTALE;
	}
	nl = calloc(n->nlent + 1, sizeof(*nl));
	if (nl) {
		nl[0].layer = 0;
		nl[0].ref = ust.st_ino;
		if (S_ISDIR(st.st_mode)) {
			memcpy(nl + 1, n->lent, n->nlent * sizeof(*nl));
			free(n->lent);
		} else {
			ovl_lent_free(n->lent, n->nlent);
		}
		n->lent = nl;
		n->nlent = S_ISDIR(st.st_mode) ? n->nlent + 1 : 1;
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	return nl ? 0 : -ENOMEM;
fail:
	if (unlinkat(fs->work_fd, tmp, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) < 0 &&
	    errno == EISDIR)
		unlinkat(fs->work_fd, tmp, AT_REMOVEDIR);
	return ret;
}

int ovl_copy_up(struct ovl_fs *fs, struct ovl_node *n)
{
	int ret;

	if (!fs->has_upper)
		return -EROFS;
	if (ovl_in_upper(fs, n))
		return 0;
	if (n->gone)
		return -ESTALE;         /* removed since the kernel looked it up */
	if (n->parent) {
		ret = ovl_copy_up(fs, n->parent);
		if (ret)
			return ret;
	}
	if (!S_ISREG(n->type))
		return ovl_copy_up_one(fs, n);
	pthread_mutex_lock(&n->lock);
	n->copying = true;
	pthread_mutex_unlock(&n->lock);
	ret = ovl_copy_up_one(fs, n);
	if (ret) {
		pthread_mutex_lock(&n->lock);
		n->copying = false;
		pthread_mutex_unlock(&n->lock);
	}
	return ret;
}
