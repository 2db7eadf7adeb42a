// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * OCI layer import: a layer tar (plain, gzip, zstd, …: libarchive decides) becomes a
 * committed directory layer in overlay form (whiteouts and opaque markers through
 * fs/overlay/whiteout.h).
 *
 * The tar is untrusted.  Every entry is created with *at() calls on a directory fd that was
 * reached from the layer root one component at a time with O_NOFOLLOW, so no entry can land
 * outside the layer: ".." and absolute names are refused, a symlink met on the way is an
 * error (ELOOP/ENOTDIR), and hard links must name an entry already in this layer.  Any
 * error abandons the whole import (content and row), so nothing half-imported remains.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "overlay/whiteout.h"
#include "strata_priv.h"

#define IMP_BUF (256 * 1024)

struct imp_dir {
	char *path;
	mode_t mode;
	struct timespec mtime;
};

struct imp {
	struct strata *s;
	int root_fd;
	int file_fd;
	const char *tar_path;
	struct archive *outer;      /* decompression: the "raw" format over all filters */
	struct archive *inner;      /* the tar format over outer's bytes */
	struct sha256 blob;         /* of the file as given */
	struct sha256 tar;          /* of the uncompressed tar (the diff id) */
	uint8_t *fbuf;
	struct imp_dir *dirs;       /* mode and mtime are set last (children change mtime) */
	size_t ndirs, capdirs;
	bool warned_owner, warned_dev, warned_xattr;
	const char *entry;          /* the entry being written, for messages */
};

static la_ssize_t outer_read(struct archive *a, void *ctx, const void **buf)
{
	struct imp *im = ctx;
	ssize_t n;

	(void)a;
	do
		n = read(im->file_fd, im->fbuf, IMP_BUF);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		archive_set_error(a, errno, "read %s: %s", im->tar_path, strerror(errno));
		return -1;
	}
	sha256_update(&im->blob, im->fbuf, (size_t)n);
	*buf = im->fbuf;
	return n;
}

static la_ssize_t inner_read(struct archive *a, void *ctx, const void **buf)
{
	struct imp *im = ctx;
	const void *p;
	size_t size;
	la_int64_t off;
	int r;

	r = archive_read_data_block(im->outer, &p, &size, &off);
	if (r == ARCHIVE_EOF)
		return 0;
	if (r != ARCHIVE_OK) {
		archive_set_error(a, archive_errno(im->outer), "%s",
				  archive_error_string(im->outer));
		return -1;
	}
	sha256_update(&im->tar, p, size);
	*buf = p;
	return (la_ssize_t)size;
}

/* Splits a tar path into checked components "a/b/c" (no "", ".", ".."; relative).
 * Returns the number of components, 0 for the root, or a negative errno. */
static int clean_path(struct imp *im, const char *name, char *out, size_t len)
{
	const char *p = name;
	size_t o = 0;
	int n = 0;

	if (!name)
		return sd_err(im->s, EINVAL, "%s: entry without a name", im->tar_path);
	if (name[0] == '/')
		return sd_err(im->s, EPERM, "%s: entry '%s' has an absolute path", im->tar_path,
			      name);
	while (*p) {
		const char *e = strchrnul(p, '/');
		size_t l = (size_t)(e - p);

		if (l == 2 && p[0] == '.' && p[1] == '.')
			return sd_err(im->s, EPERM, "%s: entry '%s' climbs out with '..'",
				      im->tar_path, name);
		if (l > NAME_MAX)
			return sd_err(im->s, ENAMETOOLONG, "%s: entry '%s': name too long",
				      im->tar_path, name);
		if (l && !(l == 1 && p[0] == '.')) {
			if (o + l + 2 > len)
				return sd_err(im->s, ENAMETOOLONG, "%s: entry '%s': path too long",
					      im->tar_path, name);
			if (o)
				out[o++] = '/';
			memcpy(out + o, p, l);
			o += l;
			n++;
		}
		p = *e ? e + 1 : e;
	}
	out[o] = 0;
	return n;
}

/* The kernel's own guarantee first: an existing parent resolved beneath the root with no
 * symlink anywhere on the way (openat2).  Returns the fd, or -errno. */
static int open_beneath(int root_fd, char *path)
{
	struct open_how how = {
		.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
			   RESOLVE_NO_XDEV,
	};
	char *slash = strrchr(path, '/');
	long fd;

	if (!slash) {
		fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
		return fd < 0 ? -errno : (int)fd;
	}
	*slash = 0;
	fd = syscall(SYS_openat2, root_fd, path, &how, sizeof(how));
	*slash = '/';
	return fd < 0 ? -errno : (int)fd;
}

/* Opens the directory holding path's last component, creating missing directories, never
 * following a symlink.  *base points at the last component inside path. */
static int open_parent(struct imp *im, char *path, const char **base, bool create)
{
	char *p = path, *slash;
	int fd, nfd;

	fd = open_beneath(im->root_fd, path);
	if (fd >= 0) {
		slash = strrchr(path, '/');
		*base = slash ? slash + 1 : path;
		return fd;
	}
	if (fd == -ELOOP || fd == -EXDEV || fd == -ENOTDIR)
		return sd_err(im->s, EPERM, "%s: entry '%s' goes through a symlink or "
			      "non-directory", im->tar_path, im->entry);
	/* missing directories (or no openat2): one component at a time, O_NOFOLLOW */
	fd = dup(im->root_fd);
	if (fd < 0)
		return sd_err(im->s, errno, "dup: %s", strerror(errno));
	while ((slash = strchr(p, '/'))) {
		*slash = 0;
		nfd = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0 && errno == ENOENT && create) {
			if (mkdirat(fd, p, 0755) == 0 || errno == EEXIST)
				nfd = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		}
		if (nfd < 0) {
			int e = errno;

			close(fd);
			*slash = '/';
			if (e == ELOOP || e == ENOTDIR)
				return sd_err(im->s, EPERM, "%s: entry '%s' goes through a symlink "
					      "or non-directory '%.*s'", im->tar_path, im->entry,
					      (int)(slash - path), path);
			return sd_err(im->s, e, "%s: entry '%s': %s", im->tar_path, im->entry,
				      strerror(e));
		}
		close(fd);
		fd = nfd;
		*slash = '/';
		p = slash + 1;
	}
	*base = p;
	return fd;
}

static int werr(struct imp *im, int e, const char *what)
{
	if (e == ENOSPC || e == EDQUOT)
		return sd_err(im->s, e, "%s: entry '%s': %s: disk full", im->tar_path, im->entry,
			      what);
	return sd_err(im->s, e, "%s: entry '%s': %s: %s", im->tar_path, im->entry, what,
		      strerror(e));
}

static int set_xattrs(struct imp *im, struct archive_entry *e, int dfd, const char *base)
{
	const char *name;
	const void *val;
	char path[64 + NAME_MAX];
	size_t size;

	if (archive_entry_xattr_reset(e) == 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dfd, base);
	while (archive_entry_xattr_next(e, &name, &val, &size) == ARCHIVE_OK) {
		/* a layer must not smuggle in overlay whiteout/opaque state by xattr */
		if (!name || wh_xattr_is_private(name))
			continue;
		if (lsetxattr(path, name, val, size, 0) == 0)
			continue;
		if (errno == ENOSPC || errno == EDQUOT)
			return werr(im, errno, "set xattr");
		if (!im->warned_xattr)
			sd_warn(im->s, "%s: entry '%s': cannot set xattr %s: %s (skipping such "
				"xattrs)", im->tar_path, im->entry, name, strerror(errno));
		im->warned_xattr = true;
	}
	return 0;
}

static void set_owner(struct imp *im, struct archive_entry *e, int dfd, const char *base)
{
	if (fchownat(dfd, base, (uid_t)archive_entry_uid(e), (gid_t)archive_entry_gid(e),
		     AT_SYMLINK_NOFOLLOW) == 0 || im->warned_owner)
		return;
	sd_warn(im->s, "%s: cannot keep owners (%s): files belong to the importing user",
		im->tar_path, strerror(errno));
	im->warned_owner = true;
}

static struct timespec entry_mtime(struct archive_entry *e)
{
	struct timespec t = { archive_entry_mtime(e), archive_entry_mtime_nsec(e) };

	return t;
}

static int set_times(struct imp *im, struct archive_entry *e, int dfd, const char *base)
{
	struct timespec ts[2] = { entry_mtime(e), entry_mtime(e) };

	if (archive_entry_atime_is_set(e)) {
		ts[0].tv_sec = archive_entry_atime(e);
		ts[0].tv_nsec = archive_entry_atime_nsec(e);
	}
	if (utimensat(dfd, base, ts, AT_SYMLINK_NOFOLLOW))
		return werr(im, errno, "set times");
	return 0;
}

static int write_data(struct imp *im, int fd, int64_t size)
{
	const void *buf;
	size_t len;
	la_int64_t off;
	int r;

	while ((r = archive_read_data_block(im->inner, &buf, &len, &off)) == ARCHIVE_OK) {
		const char *p = buf;

		while (len) {
			ssize_t w = pwrite(fd, p, len, off);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				return werr(im, errno, "write");
			p += w;
			off += w;
			len -= (size_t)w;
		}
	}
	if (r != ARCHIVE_EOF)
		return sd_err(im->s, EIO, "%s: entry '%s': %s", im->tar_path, im->entry,
			      archive_error_string(im->inner));
	/* sparse files may end in a hole */
	if (ftruncate(fd, size))
		return werr(im, errno, "truncate");
	return 0;
}

static int make_file(struct imp *im, struct archive_entry *e, int dfd, const char *base)
{
	int fd, ret;

	fd = openat(dfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return werr(im, errno, "create");
	ret = write_data(im, fd, archive_entry_size(e));
	close(fd);
	return ret;
}

static int make_hardlink(struct imp *im, const char *target, int dfd, const char *base)
{
	char tpath[PATH_MAX];
	const char *tbase;
	int tfd, n, ret = 0;

	n = clean_path(im, target, tpath, sizeof(tpath));
	if (n <= 0)
		return sd_err(im->s, EPERM, "%s: entry '%s' is a hard link to '%s', outside the "
			      "layer", im->tar_path, im->entry, target);
	tfd = open_parent(im, tpath, &tbase, false);
	if (tfd == -ENOENT)
		return sd_err(im->s, EPERM, "%s: entry '%s' is a hard link to '%s', which is not "
			      "in this layer", im->tar_path, im->entry, target);
	if (tfd < 0)
		return tfd;
	if (linkat(tfd, tbase, dfd, base, 0)) {
		if (errno == ENOENT)
			ret = sd_err(im->s, EPERM, "%s: entry '%s' is a hard link to '%s', which "
				     "is not in this layer", im->tar_path, im->entry, target);
		else
			ret = werr(im, errno, "link");
	}
	close(tfd);
	return ret;
}

static int defer_dir(struct imp *im, const char *path, struct archive_entry *e, bool again)
{
	size_t i;

	/* a directory listed twice: the later entry's metadata wins */
	for (i = 0; again && i < im->ndirs; i++) {
		if (strcmp(im->dirs[i].path, path))
			continue;
		im->dirs[i].mode = archive_entry_perm(e);
		im->dirs[i].mtime = entry_mtime(e);
		return 0;
	}
	if (im->ndirs == im->capdirs) {
		size_t cap = im->capdirs ? im->capdirs * 2 : 64;
		struct imp_dir *n = realloc(im->dirs, cap * sizeof(*n));

		if (!n)
			return sd_err(im->s, ENOMEM, "out of memory");
		im->dirs = n;
		im->capdirs = cap;
	}
	im->dirs[im->ndirs].path = strdup(path);
	if (!im->dirs[im->ndirs].path)
		return sd_err(im->s, ENOMEM, "out of memory");
	im->dirs[im->ndirs].mode = archive_entry_perm(e);
	im->dirs[im->ndirs].mtime = entry_mtime(e);
	im->ndirs++;
	return 0;
}

/* Whatever the layer already holds under this name goes (a later entry wins), unless
 * both are directories (then the new entry only updates metadata). */
static int clear_name(struct imp *im, int dfd, const char *base, bool is_dir, bool *keep)
{
	struct stat st;
	int ret;

	*keep = false;
	if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW))
		return 0;
	if (is_dir && S_ISDIR(st.st_mode)) {
		*keep = true;
		return 0;
	}
	ret = sd_rm_rf_at(dfd, base);
	return ret ? werr(im, -ret, "replace") : 0;
}

static int make_node(struct imp *im, struct archive_entry *e, int dfd, const char *base,
		     bool *skipped)
{
	mode_t type = archive_entry_filetype(e);
	int r;

	*skipped = false;
	switch (type) {
	case AE_IFLNK:
		r = symlinkat(archive_entry_symlink(e) ? archive_entry_symlink(e) : "", dfd, base);
		break;
	case AE_IFIFO:
		r = mknodat(dfd, base, S_IFIFO | 0600, 0);
		break;
	case AE_IFCHR:
	case AE_IFBLK:
		r = mknodat(dfd, base, type | 0600, archive_entry_rdev(e));
		if (r && (errno == EPERM || errno == EACCES)) {
			if (!im->warned_dev)
				sd_warn(im->s, "%s: not privileged: skipping device node '%s' (and "
					"any others)", im->tar_path, im->entry);
			im->warned_dev = true;
			*skipped = true;
			return 0;
		}
		break;
	default:
		sd_warn(im->s, "%s: entry '%s': unsupported file type 0%o, skipped",
			im->tar_path, im->entry, type);
		*skipped = true;
		return 0;
	}
	return r ? werr(im, errno, "create") : 0;
}

static int apply_whiteout(struct imp *im, int dfd, const char *base)
{
	const char *hidden;
	int ret;

	if (wh_is_opq_marker(base)) {
		ret = wh_set_opaque(dfd, im->s->priv);
		return ret ? werr(im, -ret, "mark opaque") : 0;
	}
	hidden = wh_hidden_name(base);
	if (!hidden)
		return 0;   /* other AUFS metadata names carry nothing for us */
	if (!strcmp(hidden, ".") || !strcmp(hidden, ".."))
		return sd_err(im->s, EPERM, "%s: entry '%s': whiteout of '%s'", im->tar_path,
			      im->entry, hidden);
	ret = sd_rm_rf_at(dfd, hidden);
	if (!ret)
		ret = wh_create(dfd, hidden, im->s->priv);
	return ret ? werr(im, -ret, "create whiteout") : 0;
}

static int import_entry(struct imp *im, struct archive_entry *e)
{
	char path[PATH_MAX];
	mode_t type = archive_entry_filetype(e);
	const char *base, *hl = archive_entry_hardlink(e);
	bool keep = false, skipped = false;
	int n, dfd, ret;

	im->entry = archive_entry_pathname(e);
	n = clean_path(im, im->entry, path, sizeof(path));
	if (n < 0)
		return n;
	if (n == 0) {
		/* the layer root itself ("./") */
		if (type != AE_IFDIR)
			return sd_err(im->s, EPERM, "%s: entry '%s' would replace the layer root",
				      im->tar_path, im->entry);
		set_owner(im, e, im->root_fd, ".");
		ret = set_xattrs(im, e, im->root_fd, ".");
		return ret ? ret : defer_dir(im, ".", e, true);
	}
	dfd = open_parent(im, path, &base, true);
	if (dfd < 0)
		return dfd;
	if (wh_is_reserved_name(base)) {
		ret = apply_whiteout(im, dfd, base);
		goto out;
	}
	ret = clear_name(im, dfd, base, type == AE_IFDIR && !hl, &keep);
	if (ret)
		goto out;
	/* an earlier whiteout of this name in the OCI form (unprivileged layers) goes too */
	wh_remove(dfd, base);
	if (hl) {
		ret = make_hardlink(im, hl, dfd, base);
		goto out;  /* the link shares the target's metadata */
	}
	if (type == AE_IFDIR)
		ret = keep ? 0 : mkdirat(dfd, base, 0700) ? werr(im, errno, "mkdir") : 0;
	else if (type == AE_IFREG)
		ret = make_file(im, e, dfd, base);
	else
		ret = make_node(im, e, dfd, base, &skipped);
	if (ret || skipped)
		goto out;
	set_owner(im, e, dfd, base);
	ret = set_xattrs(im, e, dfd, base);
	if (ret)
		goto out;
	if (type == AE_IFDIR) {
		ret = defer_dir(im, path, e, keep);
		goto out;
	}
	/* after chown, which clears set-id bits */
	if (type != AE_IFLNK && fchmodat(dfd, base, archive_entry_perm(e), 0)) {
		ret = werr(im, errno, "chmod");
		goto out;
	}
	ret = set_times(im, e, dfd, base);
out:
	close(dfd);
	return ret;
}

static int dir_depth(const char *p)
{
	int d = strcmp(p, ".") ? 1 : 0;

	for (; *p; p++)
		d += *p == '/';
	return d;
}

static int cmp_deeper_first(const void *a, const void *b)
{
	const struct imp_dir *x = a, *y = b;

	return dir_depth(x->path) - dir_depth(y->path);
}

/* Directory modes and times last, deepest first, so creating children does not undo them
 * and read-only directories do not stop their own filling. */
static int finish_dirs(struct imp *im)
{
	size_t i = im->ndirs;
	int ret = 0;

	/* sorted shallow to deep; walked backwards below */
	if (im->ndirs)
		qsort(im->dirs, im->ndirs, sizeof(*im->dirs), cmp_deeper_first);

	while (i--) {
		struct imp_dir *d = &im->dirs[i];
		struct timespec ts[2] = { d->mtime, d->mtime };
		char path[PATH_MAX];
		const char *base = ".";
		int dfd;

		snprintf(path, sizeof(path), "%s", d->path);
		im->entry = d->path;
		if (strcmp(path, ".")) {
			dfd = open_parent(im, path, &base, false);
			if (dfd < 0)
				return dfd;
		} else {
			dfd = dup(im->root_fd);
		}
		if (fchmodat(dfd, base, d->mode, 0) && !ret)
			ret = werr(im, errno, "chmod");
		if (utimensat(dfd, base, ts, AT_SYMLINK_NOFOLLOW) && !ret)
			ret = werr(im, errno, "set times");
		close(dfd);
	}
	return ret;
}

static int open_archives(struct imp *im)
{
	struct archive_entry *e;
	int r;

	im->outer = archive_read_new();
	im->inner = archive_read_new();
	if (!im->outer || !im->inner)
		return sd_err(im->s, ENOMEM, "out of memory");
	archive_read_support_filter_all(im->outer);
	archive_read_support_format_raw(im->outer);
	r = archive_read_open2(im->outer, im, NULL, outer_read, NULL, NULL);
	if (r == ARCHIVE_OK)
		r = archive_read_next_header(im->outer, &e);
	if (r != ARCHIVE_OK)
		return sd_err(im->s, EINVAL, "%s: not a layer tar: %s", im->tar_path,
			      archive_error_string(im->outer) ? archive_error_string(im->outer)
			      : "empty file");
	archive_read_support_format_tar(im->inner);
	r = archive_read_open2(im->inner, im, NULL, inner_read, NULL, NULL);
	if (r != ARCHIVE_OK)
		return sd_err(im->s, EINVAL, "%s: not a tar archive: %s", im->tar_path,
			      archive_error_string(im->inner));
	return 0;
}

/* Reads what the readers left unread, so the digests cover every byte. */
static int drain(struct imp *im)
{
	const void *buf;
	la_ssize_t n;

	while ((n = inner_read(im->inner, im, &buf)) > 0)
		;
	if (n < 0)
		return sd_err(im->s, EIO, "%s: %s", im->tar_path, archive_error_string(im->inner));
	while ((n = outer_read(im->outer, im, &buf)) > 0)
		;
	if (n < 0)
		return sd_err(im->s, EIO, "%s: %s", im->tar_path, strerror(errno));
	return 0;
}

static int extract(struct imp *im, struct strata_digests *dg)
{
	struct archive_entry *e;
	int r, ret, count = 0;

	ret = open_archives(im);
	if (ret)
		return ret;
	while ((r = archive_read_next_header(im->inner, &e)) == ARCHIVE_OK ||
	       r == ARCHIVE_WARN) {
		ret = import_entry(im, e);
		if (ret)
			return ret;
		count++;
	}
	if (r != ARCHIVE_EOF)
		return sd_err(im->s, EINVAL, "%s: bad tar after %d entries: %s", im->tar_path,
			      count, archive_error_string(im->inner));
	ret = finish_dirs(im);
	if (!ret)
		ret = drain(im);
	if (ret)
		return ret;
	if (syncfs(im->root_fd) && (errno == ENOSPC || errno == EIO))
		return sd_err(im->s, errno, "%s: sync: %s", im->tar_path, strerror(errno));
	sha256_final_str(&im->blob, dg->digest);
	sha256_final_str(&im->tar, dg->diff_id);
	return 0;
}

static void imp_free(struct imp *im)
{
	size_t i;

	if (im->inner)
		archive_read_free(im->inner);
	if (im->outer)
		archive_read_free(im->outer);
	for (i = 0; i < im->ndirs; i++)
		free(im->dirs[i].path);
	free(im->dirs);
	free(im->fbuf);
	if (im->root_fd >= 0)
		close(im->root_fd);
	if (im->file_fd >= 0)
		close(im->file_fd);
}

static int check_digests(struct strata *s, const char *path, const struct strata_import_opts *o,
			 const struct strata_digests *dg)
{
	if (o->digest && strcmp(o->digest, dg->digest))
		return sd_err(s, EBADMSG, "%s: digest mismatch: expected %s, got %s", path,
			      o->digest, dg->digest);
	if (o->diff_id && strcmp(o->diff_id, dg->diff_id))
		return sd_err(s, EBADMSG, "%s: diff id mismatch: expected %s, got %s", path,
			      o->diff_id, dg->diff_id);
	return 0;
}

/* The row is made 'creating' and committed first, so a crash leaves something recovery
 * recognises; see Documentation/store.md. */
static int begin_import(struct strata *s, const char *name, const struct strata_import_opts *o,
			int64_t *id)
{
	char dir[PATH_MAX + 64];
	struct sd_snap p = { 0 };
	int ret;

	ret = sd_begin(s);
	if (ret)
		return ret;
	if (o->parent) {
		ret = sd_lookup(s, o->parent, &p);
		if (!ret && p.kind != STRATA_COMMITTED)
			ret = sd_err(s, EINVAL, "parent '%s' is not committed (it is %s)", o->parent,
				     strata_kind_name(p.kind));
		if (ret)
			goto out;
	}
	ret = sd_key_exists(s, name);
	if (!ret)
		ret = sd_insert(s, name, STRATA_COMMITTED, p.id, false, false, o->chain_id, id);
	if (!ret)
		ret = sd_set_labels(s, *id, o->labels, o->nlabels);
	if (!ret)
		ret = sd_commit(s);
	if (ret)
		goto out;
	sd_snap_dir(s, *id, dir, sizeof(dir));
	if (mkdir(dir, 0700) || (strcat(dir, "/fs"), mkdir(dir, 0755)))
		return sd_err(s, errno, "%s: %s", dir, strerror(errno));
	return 0;
out:
	sd_rollback(s);
	return ret;
}

int strata_import(struct strata *s, const char *name, const char *tar_path,
		  const struct strata_import_opts *o, struct strata_digests *out)
{
	static const struct strata_import_opts none;
	struct imp im = { .s = s, .root_fd = -1, .file_fd = -1, .tar_path = tar_path };
	struct strata_digests dg = { 0 };
	locale_t utf8, old = LC_GLOBAL_LOCALE;
	char dir[PATH_MAX + 64];
	int64_t id = 0;
	int ret;

	if (!o)
		o = &none;
	ret = sd_check_key(s, name);
	if (ret)
		return ret;
	if ((o->digest && !sd_valid_digest(o->digest)) ||
	    (o->diff_id && !sd_valid_digest(o->diff_id)))
		return sd_err(s, EINVAL, "bad digest '%s': want sha256:<64 hex digits>",
			      o->digest && !sd_valid_digest(o->digest) ? o->digest : o->diff_id);
	sha256_init(&im.blob);
	sha256_init(&im.tar);
	im.fbuf = malloc(IMP_BUF);
	if (!im.fbuf)
		return sd_err(s, ENOMEM, "out of memory");
	/* "-": standard input (a pipe is fine: the tar is read once, front to back) */
	if (!strcmp(tar_path, "-"))
		im.file_fd = fcntl(0, F_DUPFD_CLOEXEC, 0);
	else
		im.file_fd = open(tar_path, O_RDONLY | O_CLOEXEC);
	if (im.file_fd < 0) {
		ret = sd_err(s, errno, "%s: %s", tar_path, strerror(errno));
		goto out;
	}
	ret = begin_import(s, name, o, &id);
	if (ret)
		goto out;
	sd_snap_dir(s, id, dir, sizeof(dir));
	strcat(dir, "/fs");
	im.root_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (im.root_fd < 0) {
		ret = sd_err(s, errno, "%s: %s", dir, strerror(errno));
		goto out;
	}
	/* pax names are UTF-8; as in export, read them in a UTF-8 locale for this thread */
	utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
	if (utf8)
		old = uselocale(utf8);
	ret = extract(&im, &dg);
	if (utf8) {
		uselocale(old);
		freelocale(utf8);
	}
	if (!ret)
		ret = check_digests(s, tar_path, o, &dg);
	if (!ret)
		ret = sd_mark_ready(s, id, dg.diff_id);
out:
	imp_free(&im);
	if (ret && id)
		sd_abandon(s, id);
	if (!ret && out)
		*out = dg;
	return ret;
}
