/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * latfs: the cost model of a parallel file system's metadata server, for bench/.
 *
 * A FUSE file system (libfuse3 high-level API) that forwards every operation to a host
 * directory, sleeps a configurable time on each metadata operation (what a round trip to a
 * Lustre MDS or a GPFS token server costs) and counts operations.  Data operations (read,
 * write) are forwarded without delay but counted, since object storage servers scale out.
 *
 *   latfs SRC MNT [-o delay_us=N,data_delay_us=M] [FUSE options]
 *
 * The counters are read from the hidden file MNT/.latfs-stats (not listed by readdir, not
 * counted); writing anything to it resets them.  Format: one "name count" line per op, then
 * "meta N", "data N", "data_bytes N".
 */
#define FUSE_USE_VERSION 35
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define STATS_NAME "/.latfs-stats"

enum lat_op {
	OP_GETATTR, OP_READLINK, OP_MKNOD, OP_MKDIR, OP_UNLINK, OP_RMDIR, OP_SYMLINK,
	OP_RENAME, OP_LINK, OP_CHMOD, OP_CHOWN, OP_TRUNCATE, OP_OPEN, OP_RELEASE, OP_STATFS,
	OP_SETXATTR, OP_GETXATTR, OP_LISTXATTR, OP_REMOVEXATTR, OP_OPENDIR, OP_READDIR,
	OP_ACCESS, OP_CREATE, OP_UTIMENS,
	OP_META_END,			/* metadata ops above, data ops below */
	OP_READ = OP_META_END, OP_WRITE, OP_FSYNC,
	OP_COUNT
};

static const char *const op_name[OP_COUNT] = {
	"getattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
	"chmod", "chown", "truncate", "open", "release", "statfs", "setxattr", "getxattr",
	"listxattr", "removexattr", "opendir", "readdir", "access", "create", "utimens",
	"read", "write", "fsync",
};

struct latfs {
	int root_fd;
	const char *src;
	unsigned int delay_us;
	unsigned int data_delay_us;
	unsigned long counts[OP_COUNT];
	unsigned long data_bytes;
};

static struct latfs *lat(void)
{
	return fuse_get_context()->private_data;
}

/* Count the op and pay its round trip. */
static void lat_op(enum lat_op op)
{
	struct latfs *fs = lat();
	unsigned int us = op < OP_META_END ? fs->delay_us : fs->data_delay_us;
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000L };

	__atomic_add_fetch(&fs->counts[op], 1, __ATOMIC_RELAXED);
	if (us)
		nanosleep(&ts, NULL);
}

/* Paths from FUSE are absolute in the mount; the host side is relative to the root fd. */
static const char *rel(const char *path)
{
	return path[1] ? path + 1 : ".";
}

static int is_stats(const char *path)
{
	return !strcmp(path, STATS_NAME);
}

static int neg(int ret)
{
	return ret < 0 ? -errno : ret;
}

static int lat_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	if (is_stats(path)) {
		memset(st, 0, sizeof(*st));
		st->st_mode = S_IFREG | 0666;
		st->st_nlink = 1;
		return 0;
	}
	lat_op(OP_GETATTR);
	if (fi)
		return neg(fstat(fi->fh, st));
	return neg(fstatat(lat()->root_fd, rel(path), st, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH));
}

static int lat_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n;

	lat_op(OP_READLINK);
	n = readlinkat(lat()->root_fd, rel(path), buf, size - 1);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
}

static int lat_mknod(const char *path, mode_t mode, dev_t rdev)
{
	lat_op(OP_MKNOD);
	return neg(mknodat(lat()->root_fd, rel(path), mode, rdev));
}

static int lat_mkdir(const char *path, mode_t mode)
{
	lat_op(OP_MKDIR);
	return neg(mkdirat(lat()->root_fd, rel(path), mode));
}

static int lat_unlink(const char *path)
{
	lat_op(OP_UNLINK);
	return neg(unlinkat(lat()->root_fd, rel(path), 0));
}

static int lat_rmdir(const char *path)
{
	lat_op(OP_RMDIR);
	return neg(unlinkat(lat()->root_fd, rel(path), AT_REMOVEDIR));
}

static int lat_symlink(const char *target, const char *path)
{
	lat_op(OP_SYMLINK);
	return neg(symlinkat(target, lat()->root_fd, rel(path)));
}

static int lat_rename(const char *from, const char *to, unsigned int flags)
{
	lat_op(OP_RENAME);
	return neg(renameat2(lat()->root_fd, rel(from), lat()->root_fd, rel(to), flags));
}

static int lat_link(const char *from, const char *to)
{
	lat_op(OP_LINK);
	return neg(linkat(lat()->root_fd, rel(from), lat()->root_fd, rel(to), 0));
}

static int lat_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	lat_op(OP_CHMOD);
	if (fi)
		return neg(fchmod(fi->fh, mode));
	return neg(fchmodat(lat()->root_fd, rel(path), mode, 0));
}

static int lat_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	lat_op(OP_CHOWN);
	if (fi)
		return neg(fchown(fi->fh, uid, gid));
	return neg(fchownat(lat()->root_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static int lat_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	int fd, ret;

	if (is_stats(path)) {
		memset(lat()->counts, 0, sizeof(lat()->counts));
		lat()->data_bytes = 0;
		return 0;
	}
	lat_op(OP_TRUNCATE);
	if (fi)
		return neg(ftruncate(fi->fh, size));
	fd = openat(lat()->root_fd, rel(path), O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = neg(ftruncate(fd, size));
	close(fd);
	return ret;
}

static int lat_open(const char *path, struct fuse_file_info *fi)
{
	int fd;

	if (is_stats(path)) {
		fi->direct_io = 1;
		fi->fh = (uint64_t)-1;
		return 0;
	}
	lat_op(OP_OPEN);
	fd = openat(lat()->root_fd, rel(path), (fi->flags & ~O_NOFOLLOW) | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	fi->fh = fd;
	return 0;
}

static int lat_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int fd;

	lat_op(OP_CREATE);
	fd = openat(lat()->root_fd, rel(path), fi->flags | O_CREAT | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	fi->fh = fd;
	return 0;
}

static int stats_read(char *buf, size_t size, off_t off)
{
	struct latfs *fs = lat();
	unsigned long meta = 0, data = 0;
	char text[2048];
	int i, len = 0;

	for (i = 0; i < OP_COUNT; i++) {
		unsigned long c = __atomic_load_n(&fs->counts[i], __ATOMIC_RELAXED);

		len += snprintf(text + len, sizeof(text) - len, "%s %lu\n", op_name[i], c);
		if (i < OP_META_END)
			meta += c;
		else
			data += c;
	}
	len += snprintf(text + len, sizeof(text) - len, "meta %lu\ndata %lu\ndata_bytes %lu\n",
			meta, data, __atomic_load_n(&fs->data_bytes, __ATOMIC_RELAXED));
	if (off >= len)
		return 0;
	if ((size_t)(len - off) < size)
		size = len - off;
	memcpy(buf, text + off, size);
	return size;
}

static int lat_read(const char *path, char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	ssize_t n;

	if (fi->fh == (uint64_t)-1)
		return stats_read(buf, size, off);
	lat_op(OP_READ);
	n = pread(fi->fh, buf, size, off);
	if (n < 0)
		return -errno;
	__atomic_add_fetch(&lat()->data_bytes, n, __ATOMIC_RELAXED);
	(void)path;
	return n;
}

static int lat_write(const char *path, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	ssize_t n;

	if (fi->fh == (uint64_t)-1) {
		memset(lat()->counts, 0, sizeof(lat()->counts));
		lat()->data_bytes = 0;
		return size;
	}
	lat_op(OP_WRITE);
	n = pwrite(fi->fh, buf, size, off);
	if (n < 0)
		return -errno;
	__atomic_add_fetch(&lat()->data_bytes, n, __ATOMIC_RELAXED);
	(void)path;
	return n;
}

static int lat_statfs(const char *path, struct statvfs *sv)
{
	lat_op(OP_STATFS);
	(void)path;
	return neg(fstatvfs(lat()->root_fd, sv));
}

static int lat_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh == (uint64_t)-1)
		return 0;
	lat_op(OP_RELEASE);
	close(fi->fh);
	return 0;
}

static int lat_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh == (uint64_t)-1)
		return 0;
	lat_op(OP_FSYNC);
	return neg(datasync ? fdatasync(fi->fh) : fsync(fi->fh));
}

/* xattr calls have no *at() form: go through /proc/self/fd of the root, which is exact. */
static void xpath(char *buf, size_t size, const char *path)
{
	snprintf(buf, size, "/proc/self/fd/%d/%s", lat()->root_fd, rel(path));
}

static int lat_setxattr(const char *path, const char *name, const char *val, size_t size,
			int flags)
{
	char p[PATH_MAX + 64];

	lat_op(OP_SETXATTR);
	xpath(p, sizeof(p), path);
	return neg(lsetxattr(p, name, val, size, flags));
}

static int lat_getxattr(const char *path, const char *name, char *val, size_t size)
{
	char p[PATH_MAX + 64];

	lat_op(OP_GETXATTR);
	xpath(p, sizeof(p), path);
	return neg(lgetxattr(p, name, val, size));
}

static int lat_listxattr(const char *path, char *list, size_t size)
{
	char p[PATH_MAX + 64];

	lat_op(OP_LISTXATTR);
	xpath(p, sizeof(p), path);
	return neg(llistxattr(p, list, size));
}

static int lat_removexattr(const char *path, const char *name)
{
	char p[PATH_MAX + 64];

	lat_op(OP_REMOVEXATTR);
	xpath(p, sizeof(p), path);
	return neg(lremovexattr(p, name));
}

static int lat_opendir(const char *path, struct fuse_file_info *fi)
{
	DIR *d;
	int fd;

	lat_op(OP_OPENDIR);
	fd = openat(lat()->root_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	fi->fh = (uintptr_t)d;
	return 0;
}

/* One READDIR request per call; offset 0 fills make libfuse buffer the whole listing. */
static int lat_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		       struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	DIR *d = (DIR *)(uintptr_t)fi->fh;
	struct dirent *de;
	struct stat st;

	(void)path;
	(void)off;
	(void)flags;
	lat_op(OP_READDIR);
	rewinddir(d);
	while ((errno = 0, de = readdir(d))) {
		memset(&st, 0, sizeof(st));
		st.st_ino = de->d_ino;
		st.st_mode = (mode_t)de->d_type << 12;
		if (fill(buf, de->d_name, &st, 0, 0))
			break;
	}
	return -errno;
}

static int lat_releasedir(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	closedir((DIR *)(uintptr_t)fi->fh);
	return 0;
}

static int lat_access(const char *path, int mask)
{
	if (is_stats(path))
		return 0;
	lat_op(OP_ACCESS);
	return neg(faccessat(lat()->root_fd, rel(path), mask, 0));
}

static int lat_utimens(const char *path, const struct timespec tv[2],
		       struct fuse_file_info *fi)
{
	if (is_stats(path))
		return 0;
	lat_op(OP_UTIMENS);
	if (fi)
		return neg(futimens(fi->fh, tv));
	return neg(utimensat(lat()->root_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

static void *lat_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	/* Inode numbers come from the host: keep them, so hard links stay hard links. */
	cfg->readdir_ino = 1;
	return lat();
}

static const struct fuse_operations lat_ops = {
	.init = lat_init,
	.getattr = lat_getattr,
	.readlink = lat_readlink,
	.mknod = lat_mknod,
	.mkdir = lat_mkdir,
	.unlink = lat_unlink,
	.rmdir = lat_rmdir,
	.symlink = lat_symlink,
	.rename = lat_rename,
	.link = lat_link,
	.chmod = lat_chmod,
	.chown = lat_chown,
	.truncate = lat_truncate,
	.open = lat_open,
	.create = lat_create,
	.read = lat_read,
	.write = lat_write,
	.statfs = lat_statfs,
	.release = lat_release,
	.fsync = lat_fsync,
	.setxattr = lat_setxattr,
	.getxattr = lat_getxattr,
	.listxattr = lat_listxattr,
	.removexattr = lat_removexattr,
	.opendir = lat_opendir,
	.readdir = lat_readdir,
	.releasedir = lat_releasedir,
	.access = lat_access,
	.utimens = lat_utimens,
};

#define LAT_OPT(t, p) { t, offsetof(struct latfs, p), 1 }
static const struct fuse_opt lat_opts[] = {
	LAT_OPT("delay_us=%u", delay_us),
	LAT_OPT("data_delay_us=%u", data_delay_us),
	FUSE_OPT_END
};

/* The first non-option argument is SRC; the rest goes to libfuse. */
static int lat_arg(void *data, const char *arg, int key, struct fuse_args *out)
{
	struct latfs *fs = data;

	(void)out;
	if (key == FUSE_OPT_KEY_NONOPT && !fs->src) {
		fs->src = arg;
		return 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	static struct latfs fs;
	int ret;

	if (fuse_opt_parse(&args, &fs, lat_opts, lat_arg))
		return 2;
	if (!fs.src) {
		fprintf(stderr, "usage: latfs SRC MNT [-o delay_us=N,data_delay_us=M] [FUSE opts]\n");
		return 2;
	}
	fs.root_fd = open(fs.src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fs.root_fd < 0) {
		fprintf(stderr, "latfs: %s: %s\n", fs.src, strerror(errno));
		return 1;
	}
	ret = fuse_main(args.argc, args.argv, &lat_ops, &fs);
	fuse_opt_free_args(&args);
	close(fs.root_fd);
	return ret;
}
