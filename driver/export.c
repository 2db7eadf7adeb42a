// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * OCI layer export: the diff of a snapshot against its parent (its own fs/ directory) as a
 * layer tar, whiteouts and opaque directories turned into ".wh." entries through
 * fs/overlay/whiteout.h.
 *
 * The bytes are a function of the content only: names sorted bytewise, pax (restricted)
 * headers with numeric owners and no user/group names, atime/ctime left out, whiteout
 * entries with fixed metadata, and compressors with fixed headers (gzip: mtime 0, no name;
 * zstd: single-threaded, fixed level).  So two exports of one layer are byte-identical.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "layer/layer.h"
#include "overlay/whiteout.h"
#include "strata_priv.h"

#define EXP_BUF (256 * 1024)

struct exp_link {
	dev_t dev;
	ino_t ino;
	char *path;
};

struct exp {
	struct strata *s;
	struct archive *a;
	struct archive_entry *e;
	int fd;
	enum strata_compress comp;
	z_stream z;
	ZSTD_CCtx *zc;
	struct sha256 tar, out;
	uint64_t size;
	uint8_t *cbuf, *dbuf;
	struct exp_link *links;
	size_t nlinks, caplinks;
	int io_err;             /* errno of a failed write to the output */
};

static int emit(struct exp *x, const void *buf, size_t len)
{
	const char *p = buf;

	sha256_update(&x->out, buf, len);
	x->size += len;
	while (len) {
		ssize_t n = write(x->fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			x->io_err = errno;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int compress_chunk(struct exp *x, const void *buf, size_t len, bool end)
{
	if (x->comp == STRATA_COMPRESS_GZIP) {
		x->z.next_in = (Bytef *)buf;
		x->z.avail_in = (uInt)len;
		do {
			int r;

			x->z.next_out = x->cbuf;
			x->z.avail_out = EXP_BUF;
			r = deflate(&x->z, end ? Z_FINISH : Z_NO_FLUSH);
			if (r == Z_STREAM_ERROR)
				return -1;
			if (emit(x, x->cbuf, EXP_BUF - x->z.avail_out))
				return -1;
			if (end && r == Z_STREAM_END)
				break;
		} while (x->z.avail_in || x->z.avail_out == 0 || end);
		return 0;
	}
	if (x->comp == STRATA_COMPRESS_ZSTD) {
		ZSTD_inBuffer in = { buf, len, 0 };
		size_t r;

		do {
			ZSTD_outBuffer out = { x->cbuf, EXP_BUF, 0 };

			r = ZSTD_compressStream2(x->zc, &out, &in, end ? ZSTD_e_end : ZSTD_e_continue);
			if (ZSTD_isError(r) || emit(x, x->cbuf, out.pos))
				return -1;
		} while (end ? r != 0 : in.pos < in.size);
		return 0;
	}
	return len ? emit(x, buf, len) : 0;
}

static la_ssize_t exp_write(struct archive *a, void *ctx, const void *buf, size_t len)
{
	struct exp *x = ctx;

	sha256_update(&x->tar, buf, len);
	if (compress_chunk(x, buf, len, false)) {
		archive_set_error(a, x->io_err ? x->io_err : EIO, "write: %s",
				  strerror(x->io_err ? x->io_err : EIO));
		return -1;
	}
	return (la_ssize_t)len;
}

static int xerr(struct exp *x, const char *path, int e)
{
	if (x->io_err)
		return sd_err(x->s, x->io_err, "export: writing output: %s",
			      x->io_err == ENOSPC ? "disk full" : strerror(x->io_err));
	return sd_err(x->s, e, "export: %s: %s", path, strerror(e));
}

static int aerr(struct exp *x, const char *path)
{
	if (x->io_err)
		return xerr(x, path, x->io_err);
	return sd_err(x->s, EIO, "export: %s: %s", path, archive_error_string(x->a));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* xattrs in name order, overlay-private ones left out */
static int add_xattrs(struct exp *x, int dfd, const char *name, const char *path)
{
	char proc[64 + NAME_MAX], *list = NULL, *names[256];
	size_t n = 0, i;
	ssize_t len;
	int ret = 0;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d/%s", dfd, name);
	len = llistxattr(proc, NULL, 0);
	if (len <= 0)
		return 0;
	list = malloc((size_t)len);
	if (!list)
		return sd_err(x->s, ENOMEM, "out of memory");
	len = llistxattr(proc, list, (size_t)len);
	for (i = 0; len > 0 && i < (size_t)len && n < 256; i += strlen(list + i) + 1)
		if (!wh_xattr_is_private(list + i))
			names[n++] = list + i;
	if (n)
		qsort(names, n, sizeof(*names), cmp_str);
	for (i = 0; i < n && !ret; i++) {
		char val[65536];
		ssize_t vl = lgetxattr(proc, names[i], val, sizeof(val));

		if (vl < 0)
			ret = xerr(x, path, errno);
		else
			archive_entry_xattr_add_entry(x->e, names[i], val, (size_t)vl);
	}
	free(list);
	return ret;
}

static int copy_data(struct exp *x, int dfd, const char *name, const char *path)
{
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return xerr(x, path, errno);
	while ((n = read(fd, x->dbuf, EXP_BUF)) > 0) {
		if (archive_write_data(x->a, x->dbuf, (size_t)n) != n) {
			close(fd);
			return aerr(x, path);
		}
	}
	close(fd);
	return n < 0 ? xerr(x, path, errno) : 0;
}

/* Whiteouts and opaque markers carry no metadata worth keeping. */
static int write_marker(struct exp *x, const char *path)
{
	archive_entry_clear(x->e);
	archive_entry_set_pathname(x->e, path);
	archive_entry_set_filetype(x->e, AE_IFREG);
	archive_entry_set_perm(x->e, 0644);
	archive_entry_set_size(x->e, 0);
	archive_entry_set_mtime(x->e, 0, 0);
	if (archive_write_header(x->a, x->e) != ARCHIVE_OK)
		return aerr(x, path);
	return 0;
}

static bool dir_is_opaque(int fd)
{
	char v[8];
	ssize_t n;

	n = fgetxattr(fd, OVL_XATTR_TRUSTED "opaque", v, sizeof(v));
	if (n > 0 && wh_opaque_value(v, (size_t)n))
		return true;
	n = fgetxattr(fd, OVL_XATTR_USER "opaque", v, sizeof(v));
	if (n > 0 && wh_opaque_value(v, (size_t)n))
		return true;
	return faccessat(fd, WH_OPQ_NAME, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Returns the first path of this inode when it was written before (a hard link). */
static const char *link_seen(struct exp *x, const struct stat *st, const char *path)
{
	size_t i;

	for (i = 0; i < x->nlinks; i++)
		if (x->links[i].dev == st->st_dev && x->links[i].ino == st->st_ino)
			return x->links[i].path;
	if (x->nlinks == x->caplinks) {
		size_t cap = x->caplinks ? x->caplinks * 2 : 32;
		struct exp_link *n = realloc(x->links, cap * sizeof(*n));

		if (!n)
			return NULL;
		x->links = n;
		x->caplinks = cap;
	}
	x->links[x->nlinks].dev = st->st_dev;
	x->links[x->nlinks].ino = st->st_ino;
	x->links[x->nlinks].path = strdup(path);
	if (x->links[x->nlinks].path)
		x->nlinks++;
	return NULL;
}

static int write_entry(struct exp *x, int dfd, const char *name, const char *path,
		       const struct stat *st)
{
	const char *first = NULL;
	char target[PATH_MAX];
	int ret;

	archive_entry_clear(x->e);
	archive_entry_set_pathname(x->e, path);
	archive_entry_set_mode(x->e, st->st_mode);
	archive_entry_set_uid(x->e, st->st_uid);
	archive_entry_set_gid(x->e, st->st_gid);
	archive_entry_set_mtime(x->e, st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
	if (S_ISREG(st->st_mode) && st->st_nlink > 1)
		first = link_seen(x, st, path);
	if (first) {
		archive_entry_set_hardlink(x->e, first);
		archive_entry_set_size(x->e, 0);
	} else if (S_ISREG(st->st_mode)) {
		archive_entry_set_size(x->e, st->st_size);
	} else if (S_ISLNK(st->st_mode)) {
		ssize_t n = readlinkat(dfd, name, target, sizeof(target) - 1);

		if (n < 0)
			return xerr(x, path, errno);
		target[n] = 0;
		archive_entry_set_symlink(x->e, target);
	} else if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
		archive_entry_set_rdev(x->e, st->st_rdev);
	}
	ret = add_xattrs(x, dfd, name, path);
	if (ret)
		return ret;
	if (archive_write_header(x->a, x->e) != ARCHIVE_OK)
		return aerr(x, path);
	if (S_ISREG(st->st_mode) && !first)
		return copy_data(x, dfd, name, path);
	return 0;
}

static int list_sorted(int fd, char ***names, size_t *n)
{
	struct dirent *de;
	char **v = NULL;
	size_t cnt = 0, cap = 0;
	int dfd = dup(fd);
	DIR *d;

	if (dfd < 0)
		return -errno;
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (cnt == cap) {
			char **nv = realloc(v, (cap = cap ? cap * 2 : 32) * sizeof(*v));

			if (!nv)
				break;
			v = nv;
		}
		v[cnt] = strdup(de->d_name);
		if (!v[cnt])
			break;
		cnt++;
	}
	closedir(d);
	if (de) {
		while (cnt)
			free(v[--cnt]);
		free(v);
		return -ENOMEM;
	}
	if (cnt)
		qsort(v, cnt, sizeof(*v), cmp_str);
	*names = v;
	*n = cnt;
	return 0;
}

static int walk(struct exp *x, int fd, const char *rel, int depth);

static int walk_one(struct exp *x, int fd, const char *rel, const char *name, int depth)
{
	char path[PATH_MAX];
	const char *hidden;
	struct stat st;
	int cfd, ret;

	if (snprintf(path, sizeof(path), "%s%s%s", rel, *rel ? "/" : "", name) >=
	    (int)sizeof(path))
		return sd_err(x->s, ENAMETOOLONG, "export: path too long under %s", rel);
	if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW))
		return xerr(x, path, errno);
	if (wh_is_chardev_whiteout(&st)) {
		snprintf(path, sizeof(path), "%s%s" WH_PREFIX "%s", rel, *rel ? "/" : "", name);
		return write_marker(x, path);
	}
	if (wh_is_opq_marker(name))
		return 0;       /* written right after its directory */
	hidden = wh_hidden_name(name);
	if (hidden)
		return write_marker(x, path);   /* already the OCI form */
	if (wh_is_reserved_name(name))
		return 0;
	if (S_ISSOCK(st.st_mode))
		return 0;       /* tar cannot carry sockets */
	ret = write_entry(x, fd, name, path, &st);
	if (ret || !S_ISDIR(st.st_mode))
		return ret;
	cfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (cfd < 0)
		return xerr(x, path, errno);
	ret = walk(x, cfd, path, depth + 1);
	close(cfd);
	return ret;
}

static int walk(struct exp *x, int fd, const char *rel, int depth)
{
	char **names = NULL, path[PATH_MAX];
	size_t n = 0, i;
	int ret;

	if (depth > 1024)
		return sd_err(x->s, ELOOP, "export: directories nested too deep at %s", rel);
	if (dir_is_opaque(fd)) {
		snprintf(path, sizeof(path), "%s%s" WH_OPQ_NAME, rel, *rel ? "/" : "");
		ret = write_marker(x, path);
		if (ret)
			return ret;
	}
	ret = list_sorted(fd, &names, &n);
	if (ret)
		return xerr(x, *rel ? rel : ".", -ret);
	for (i = 0; i < n && !ret; i++)
		ret = walk_one(x, fd, rel, names[i], depth);
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return ret;
}

/* Squashed layers are read through the layer interface (the SquashFS reader): the image
 * holds a flattened tree, so its export is the whole tree against nothing. */
struct lnames {
	char **v;
	size_t n, cap;
	int err;
};

static int lnames_add(void *ctx, const char *name, unsigned char d_type, uint64_t ino)
{
	struct lnames *ln = ctx;

	(void)d_type;
	(void)ino;
	if (ln->n == ln->cap) {
		size_t cap = ln->cap ? ln->cap * 2 : 32;
		char **v = realloc(ln->v, cap * sizeof(*v));

		if (!v)
			return ln->err = -ENOMEM;
		ln->v = v;
		ln->cap = cap;
	}
	ln->v[ln->n] = strdup(name);
	if (!ln->v[ln->n])
		return ln->err = -ENOMEM;
	ln->n++;
	return 0;
}

static int lexp_xattrs(struct exp *x, struct layer *l, const struct lnode *n, const char *path)
{
	char *list, *names[256];
	ssize_t len = l->ops->listxattr(l, n, NULL, 0);
	size_t cnt = 0, i;
	int ret = 0;

	if (len <= 0)
		return 0;
	list = malloc((size_t)len);
	if (!list)
		return sd_err(x->s, ENOMEM, "out of memory");
	len = l->ops->listxattr(l, n, list, (size_t)len);
	for (i = 0; len > 0 && i < (size_t)len && cnt < 256; i += strlen(list + i) + 1)
		if (!wh_xattr_is_private(list + i))
			names[cnt++] = list + i;
	if (cnt)
		qsort(names, cnt, sizeof(*names), cmp_str);
	for (i = 0; i < cnt && !ret; i++) {
		char val[65536];
		ssize_t vl = l->ops->getxattr(l, n, names[i], val, sizeof(val));

		if (vl < 0)
			ret = xerr(x, path, (int)-vl);
		else
			archive_entry_xattr_add_entry(x->e, names[i], val, (size_t)vl);
	}
	free(list);
	return ret;
}

static int lexp_data(struct exp *x, struct layer *l, const struct lnode *n, const char *path,
		     off_t size)
{
	struct layer_file *f;
	off_t off = 0;
	int ret = l->ops->open(l, n, O_RDONLY, &f);

	if (ret)
		return xerr(x, path, -ret);
	while (off < size) {
		ssize_t got = l->ops->read(f, x->dbuf, EXP_BUF, off);

		if (got <= 0) {
			ret = got ? xerr(x, path, (int)-got) : xerr(x, path, EIO);
			break;
		}
		if (archive_write_data(x->a, x->dbuf, (size_t)got) != got) {
			ret = aerr(x, path);
			break;
		}
		off += got;
	}
	l->ops->close(f);
	return ret;
}

static int lexp_entry(struct exp *x, struct layer *l, const struct lnode *n, const char *path,
		      const struct stat *st)
{
	const char *first = NULL;
	char target[PATH_MAX];
	int ret;

	if (wh_is_chardev_whiteout(st))
		return 0;       /* a flattened tree has nothing to hide */
	archive_entry_clear(x->e);
	archive_entry_set_pathname(x->e, path);
	archive_entry_set_mode(x->e, st->st_mode);
	archive_entry_set_uid(x->e, st->st_uid);
	archive_entry_set_gid(x->e, st->st_gid);
	archive_entry_set_mtime(x->e, st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
	if (S_ISREG(st->st_mode) && st->st_nlink > 1)
		first = link_seen(x, st, path);
	if (first) {
		archive_entry_set_hardlink(x->e, first);
		archive_entry_set_size(x->e, 0);
	} else if (S_ISREG(st->st_mode)) {
		archive_entry_set_size(x->e, st->st_size);
	} else if (S_ISLNK(st->st_mode)) {
		ret = l->ops->readlink(l, n, target, sizeof(target) - 1);
		if (ret < 0)
			return xerr(x, path, -ret);
		target[ret] = 0;
		archive_entry_set_symlink(x->e, target);
	} else if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
		archive_entry_set_rdev(x->e, st->st_rdev);
	}
	ret = lexp_xattrs(x, l, n, path);
	if (ret)
		return ret;
	if (archive_write_header(x->a, x->e) != ARCHIVE_OK)
		return aerr(x, path);
	if (S_ISREG(st->st_mode) && !first)
		return lexp_data(x, l, n, path, st->st_size);
	return 0;
}

static int lexp_walk(struct exp *x, struct layer *l, const struct lnode *dir, int depth)
{
	struct lnames ln = { 0 };
	size_t i;
	int ret;

	if (depth > 1024)
		return sd_err(x->s, ELOOP, "export: directories nested too deep at %s", dir->path);
	ret = l->ops->readdir(l, dir, lnames_add, &ln);
	if (ln.err)
		ret = ln.err;
	if (ret < 0)
		ret = xerr(x, *dir->path ? dir->path : ".", -ret);
	if (!ret && ln.n)
		qsort(ln.v, ln.n, sizeof(*ln.v), cmp_str);
	for (i = 0; i < ln.n && !ret; i++) {
		char path[PATH_MAX];
		struct lnode child;
		struct stat st;

		if (snprintf(path, sizeof(path), "%s%s%s", dir->path, *dir->path ? "/" : "",
			     ln.v[i]) >= (int)sizeof(path)) {
			ret = sd_err(x->s, ENAMETOOLONG, "export: path too long under %s",
				     dir->path);
			break;
		}
		child.path = path;
		child.ref = 0;
		ret = l->ops->lookup(l, dir, ln.v[i], &child, &st);
		if (ret) {
			ret = xerr(x, path, -ret);
			break;
		}
		ret = lexp_entry(x, l, &child, path, &st);
		if (!ret && S_ISDIR(st.st_mode))
			ret = lexp_walk(x, l, &child, depth + 1);
	}
	for (i = 0; i < ln.n; i++)
		free(ln.v[i]);
	free(ln.v);
	return ret;
}

static int export_image(struct exp *x, const char *img)
{
	struct lnode root = { "", 0 };
	char err[512] = "";
	struct layer *l;
	struct stat st;
	int ret;

	l = layer_image_open(img, 0, err, sizeof(err));
	if (!l)
		return sd_err(x->s, EIO, "export: %s", err[0] ? err : img);
	ret = l->ops->getattr(l, &root, &st);
	if (ret)
		ret = xerr(x, ".", -ret);
	else
		ret = lexp_entry(x, l, &root, "./", &st);
	if (!ret)
		ret = lexp_walk(x, l, &root, 0);
	layer_close(l);
	return ret;
}

static int exp_setup(struct exp *x)
{
	x->cbuf = malloc(EXP_BUF);
	x->dbuf = malloc(EXP_BUF);
	x->a = archive_write_new();
	x->e = archive_entry_new();
	if (!x->cbuf || !x->dbuf || !x->a || !x->e)
		return sd_err(x->s, ENOMEM, "out of memory");
	if (x->comp == STRATA_COMPRESS_GZIP &&
	    deflateInit2(&x->z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return sd_err(x->s, ENOMEM, "gzip: cannot initialise");
	if (x->comp == STRATA_COMPRESS_ZSTD) {
		x->zc = ZSTD_createCCtx();
		if (!x->zc)
			return sd_err(x->s, ENOMEM, "zstd: cannot initialise");
		ZSTD_CCtx_setParameter(x->zc, ZSTD_c_compressionLevel, 3);
		ZSTD_CCtx_setParameter(x->zc, ZSTD_c_checksumFlag, 1);
	}
	archive_write_set_format_pax_restricted(x->a);
	/* SCHILY.xattr.* only: what OCI tools read; LIBARCHIVE.xattr would double it */
	archive_write_set_format_option(x->a, "pax", "xattrheader", "SCHILY");
	archive_write_set_bytes_per_block(x->a, 10240);
	if (archive_write_open(x->a, x, NULL, exp_write, NULL) != ARCHIVE_OK)
		return sd_err(x->s, EIO, "export: %s", archive_error_string(x->a));
	return 0;
}

static void exp_free(struct exp *x)
{
	size_t i;

	if (x->a)
		archive_write_free(x->a);
	if (x->e)
		archive_entry_free(x->e);
	if (x->comp == STRATA_COMPRESS_GZIP)
		deflateEnd(&x->z);
	if (x->zc)
		ZSTD_freeCCtx(x->zc);
	for (i = 0; i < x->nlinks; i++)
		free(x->links[i].path);
	free(x->links);
	free(x->cbuf);
	free(x->dbuf);
}

int strata_export(struct strata *s, const char *key, int fd, enum strata_compress c,
		  struct strata_digests *out)
{
	struct exp x = { .s = s, .fd = fd, .comp = c };
	char path[PATH_MAX + 64];
	struct sd_snap sn;
	locale_t utf8, old = LC_GLOBAL_LOCALE;
	struct stat st;
	int rfd = -1, ret;

	ret = sd_lookup(s, key, &sn);
	if (ret)
		return ret;
	sd_snap_content(s, &sn, path, sizeof(path));
	if (sn.image)
		rfd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	else
		rfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (rfd < 0)
		return sd_err(s, errno, "%s: %s", path, strerror(errno));
	sha256_init(&x.tar);
	sha256_init(&x.out);
	/* pax names are UTF-8: let libarchive see ours as UTF-8 whatever the process locale
	 * (per thread, so the caller's locale is untouched) */
	utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
	if (utf8)
		old = uselocale(utf8);
	ret = exp_setup(&x);
	if (ret)
		goto out;
	if (sn.image) {
		ret = export_image(&x, path);
	} else if (fstat(rfd, &st)) {
		ret = xerr(&x, ".", errno);
	} else {
		ret = write_entry(&x, rfd, ".", "./", &st);
		if (!ret)
			ret = walk(&x, rfd, "", 0);
	}
	if (ret)
		goto out;
	if (archive_write_close(x.a) != ARCHIVE_OK) {
		ret = aerr(&x, "close");
		goto out;
	}
	if (compress_chunk(&x, NULL, 0, true)) {
		ret = xerr(&x, "output", EIO);
		goto out;
	}
	if (out) {
		sha256_final_str(&x.tar, out->diff_id);
		sha256_final_str(&x.out, out->digest);
		out->size = x.size;
	}
out:
	close(rfd);
	exp_free(&x);
	if (utf8) {
		uselocale(old);
		freelocale(utf8);
	}
	return ret;
}
