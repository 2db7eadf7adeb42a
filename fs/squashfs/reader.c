// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * SquashFS 4.0 reader: see reader.h.
 *
 * Trust nothing read from the image.  Every table location is checked against the
 * image length at open time; every metadata block against the bounds of the table it
 * belongs to; every data block against the image length and the block size; every
 * count against the bytes that would hold it.  Loops over image data are bounded by
 * sizes checked up front, so a crafted image cannot make us spin.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "squashfs/reader.h"
#include "squashfs/bcache.h"
#include "squashfs/codec_extra.h"

#define MAX_LOGGED 32
#define XATTR_NAME_MAX_ 255       /* <linux/limits.h> values, without the header */
#define XATTR_SIZE_MAX_ 65536

/* A decompression context plus a buffer for the compressed bytes, pooled. */
struct rd_ctx {
	struct rd_ctx *next;
	struct sqfs_dctx *d;
	unsigned char buf[];
};

struct sqfs_reader {
	int fd;
	uint64_t size;               /* bytes we may read: min(file size, bytes_used) */
	struct sqfs_super sb;        /* host byte order */
	struct sqfs_info info;

	uint64_t inode_end;          /* metadata blocks of the inode table end here */
	uint64_t dir_end;
	uint32_t *ids;
	uint64_t *frag_idx;          /* fragment table metadata block locations */
	uint64_t *export_idx;
	uint64_t *xattr_idx;
	uint64_t xattr_kv_start;
	uint32_t xattr_count;

	struct bcache *meta, *data;

	pthread_mutex_t pool_lock;
	struct rd_ctx *pool;
	size_t ctx_buf;

	pthread_mutex_t log_lock;
	uint64_t logged[MAX_LOGGED];
	unsigned nlogged;
	void (*log)(void *ctx, const char *msg);
	void *log_ctx;
};

struct sqfs_file {
	struct sqfs_reader *r;
	struct sqfs_inode ino;
	uint64_t *start;            /* disk offset of each block */
	uint32_t *word;             /* its size word */
	int have_frag;              /* frag below is loaded (on first tail read) */
	struct sqfs_fragment_entry frag;
	pthread_mutex_t lock;       /* for loading frag */
};

/* ---- logging: one line per distinct bad location ------------------------------------ */

static void rd_log(struct sqfs_reader *r, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (r->log)
		r->log(r->log_ctx, msg);
	else
		fprintf(stderr, "squashfs: %s\n", msg);
}

/* Report a corrupt structure at disk offset `where`, once; always returns -EIO. */
static int rd_bad(struct sqfs_reader *r, uint64_t where, const char *what)
{
	int report = 1;

	pthread_mutex_lock(&r->log_lock);
	for (unsigned i = 0; i < r->nlogged && i < MAX_LOGGED; i++)
		if (r->logged[i] == where)
			report = 0;
	if (report) {
		if (r->nlogged < MAX_LOGGED)
			r->logged[r->nlogged] = where;
		else
			report = r->nlogged == MAX_LOGGED ? 2 : 0;
		if (r->nlogged <= MAX_LOGGED)
			r->nlogged++;
	}
	pthread_mutex_unlock(&r->log_lock);
	if (report == 1)
		rd_log(r, "corrupt image: %s at byte %" PRIu64, what, where);
	else if (report == 2)
		rd_log(r, "corrupt image: more errors, no longer reported");
	return -EIO;
}

/* ---- raw I/O and decompression ------------------------------------------------------ */

static int rd_pread(struct sqfs_reader *r, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	if (off > r->size || len > r->size - off)
		return rd_bad(r, off, "read past the end of the image");
	while (done < len) {
		ssize_t n = pread(r->fd, (char *)buf + done, len - done, off + done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return rd_bad(r, off, "image file shrank");
		done += n;
	}
	return 0;
}

static struct rd_ctx *ctx_get(struct sqfs_reader *r)
{
	struct rd_ctx *c;

	pthread_mutex_lock(&r->pool_lock);
	c = r->pool;
	if (c)
		r->pool = c->next;
	pthread_mutex_unlock(&r->pool_lock);
	if (c)
		return c;
	c = malloc(sizeof(*c) + r->ctx_buf);
	if (!c)
		return NULL;
	c->d = sqfs_dctx_new(r->sb.compressor);
	if (!c->d) {
		free(c);
		return NULL;
	}
	return c;
}

static void ctx_put(struct sqfs_reader *r, struct rd_ctx *c)
{
	pthread_mutex_lock(&r->pool_lock);
	c->next = r->pool;
	r->pool = c;
	pthread_mutex_unlock(&r->pool_lock);
}

/* Read `disk` bytes at off into out[cap], decompressing unless raw; returns the size. */
static ssize_t rd_block(struct sqfs_reader *r, uint64_t off, size_t disk, int raw,
			void *out, size_t cap)
{
	struct rd_ctx *c;
	ssize_t n;
	int ret;

	if (raw) {
		if (disk > cap)
			return rd_bad(r, off, "stored block larger than its uncompressed size");
		ret = rd_pread(r, out, disk, off);
		return ret ? ret : (ssize_t)disk;
	}
	if (disk > r->ctx_buf)
		return rd_bad(r, off, "compressed block too large");
	c = ctx_get(r);
	if (!c)
		return -ENOMEM;
	ret = rd_pread(r, c->buf, disk, off);
	if (ret) {
		ctx_put(r, c);
		return ret;
	}
	n = sqfs_dctx_decompress(c->d, c->buf, disk, out, cap);
	ctx_put(r, c);
	if (n < 0)
		return rd_bad(r, off, "block does not decompress");
	return n;
}

/* ---- metadata blocks ---------------------------------------------------------------- */

/* The decompressed metadata block whose header is at `pos`; it must end before `end`.
 * entry->aux is where the next block of the same table starts. */
static int meta_get(struct sqfs_reader *r, uint64_t pos, uint64_t end, struct bc_entry **out)
{
	struct bc_entry *e = bc_get(r->meta, pos);
	uint16_t hdr;
	size_t disk;
	ssize_t n;
	int ret;

	if (e) {
		if (e->aux > end) {
			bc_put(e);
			return rd_bad(r, pos, "metadata block crosses its table's end");
		}
		*out = e;
		return 0;
	}
	if (pos < SQFS_SUPER_SIZE || pos >= end || end - pos < 2)
		return rd_bad(r, pos, "metadata block outside its table");
	ret = rd_pread(r, &hdr, 2, pos);
	if (ret)
		return ret;
	hdr = sqfs_le16(hdr);
	disk = hdr & SQFS_META_SIZE_MASK;
	if (disk == 0 || disk > SQFS_META_SIZE || end - pos - 2 < disk)
		return rd_bad(r, pos, "bad metadata block header");
	e = bc_alloc(SQFS_META_SIZE);
	if (!e)
		return -ENOMEM;
	n = rd_block(r, pos + 2, disk, hdr & SQFS_META_UNCOMPRESSED, e->data, SQFS_META_SIZE);
	if (n <= 0) {
		bc_free(e);
		return n < 0 ? (int)n : rd_bad(r, pos, "empty metadata block");
	}
	e->len = n;
	e->key = pos;
	e->aux = pos + 2 + disk;
	*out = bc_insert(r->meta, e);
	return 0;
}

/* Copy len bytes of a metadata stream starting at *p into buf and advance *p.
 * With hold, the block last used stays referenced in *hold between calls (the caller
 * bc_put()s it when done): a walk through a directory listing then takes one cache
 * lookup per metadata block instead of one per field. */
static int meta_read_held(struct sqfs_reader *r, struct sqfs_mpos *p, uint64_t end,
			  void *buf, size_t len, struct bc_entry **hold)
{
	unsigned char *dst = buf;

	while (len) {
		struct bc_entry *e = NULL;
		size_t n;
		int ret;

		if (hold && *hold && (*hold)->key == p->block) {
			e = *hold;
		} else {
			ret = meta_get(r, p->block, end, &e);
			if (ret)
				return ret;
			if (hold) {
				bc_put(*hold);
				*hold = e;
			}
		}
		if (p->offset > e->len) {
			if (!hold)
				bc_put(e);
			return rd_bad(r, p->block, "offset past the end of a metadata block");
		}
		n = e->len - p->offset;
		if (n > len)
			n = len;
		memcpy(dst, e->data + p->offset, n);
		dst += n;
		len -= n;
		p->offset += n;
		if (p->offset == e->len) {
			p->block = e->aux;
			p->offset = 0;
		}
		if (!hold)
			bc_put(e);
	}
	return 0;
}

static int meta_read(struct sqfs_reader *r, struct sqfs_mpos *p, uint64_t end,
		     void *buf, size_t len)
{
	return meta_read_held(r, p, end, buf, len, NULL);
}

/* Skip len bytes of a metadata stream. */
static int meta_skip(struct sqfs_reader *r, struct sqfs_mpos *p, uint64_t end, size_t len)
{
	unsigned char tmp[512];

	while (len) {
		size_t n = len < sizeof(tmp) ? len : sizeof(tmp);
		int ret = meta_read(r, p, end, tmp, n);

		if (ret)
			return ret;
		len -= n;
	}
	return 0;
}

/* Entry i (of `size` bytes) of a lookup table whose block locations are idx[]. */
static int table_read(struct sqfs_reader *r, const uint64_t *idx, uint64_t end,
		      uint64_t i, size_t size, void *buf)
{
	uint64_t byte = i * size;
	struct sqfs_mpos p = { idx[byte / SQFS_META_SIZE], byte % SQFS_META_SIZE };

	return meta_read(r, &p, end, buf, size);
}

/* ---- opening: superblock and lookup tables ------------------------------------------ */

/* Load the u64 locations of the metadata blocks holding `count` entries of `size` bytes,
 * stored at `start`.  The blocks themselves precede their index. */
static int load_index(struct sqfs_reader *r, uint64_t start, uint64_t count, size_t size,
		      uint64_t **out, const char *what, char *err, size_t errlen)
{
	uint64_t nb = SQFS_TABLE_BLOCKS(count * size);
	uint64_t *idx;
	int ret;

	*out = NULL;
	if (start < SQFS_SUPER_SIZE || start > r->size || nb * 8 > r->size - start) {
		snprintf(err, errlen, "%s table at byte %" PRIu64 " lies outside the image",
			 what, start);
		return -EINVAL;
	}
	idx = malloc(nb * 8 + 8);
	if (!idx)
		return -ENOMEM;
	ret = rd_pread(r, idx, nb * 8, start);
	if (ret) {
		free(idx);
		snprintf(err, errlen, "reading the %s table: %s", what, strerror(-ret));
		return ret;
	}
	for (uint64_t i = 0; i < nb; i++) {
		idx[i] = sqfs_le64(idx[i]);
		if (idx[i] < SQFS_SUPER_SIZE || idx[i] >= start) {
			snprintf(err, errlen, "%s table: block %" PRIu64 " at bad location %" PRIu64,
				 what, i, idx[i]);
			free(idx);
			return -EINVAL;
		}
	}
	*out = idx;
	return 0;
}

static int load_ids(struct sqfs_reader *r, char *err, size_t errlen)
{
	uint64_t *idx;
	size_t n = r->sb.id_count;
	int ret = load_index(r, r->sb.id_table_start, n, 4, &idx, "id", err, errlen);

	if (ret)
		return ret;
	r->ids = malloc(n * 4);
	if (!r->ids) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t b = 0; b * SQFS_IDS_PER_META < n; b++) {
		struct sqfs_mpos p = { idx[b], 0 };
		size_t k = n - b * SQFS_IDS_PER_META;

		if (k > SQFS_IDS_PER_META)
			k = SQFS_IDS_PER_META;
		ret = meta_read(r, &p, r->sb.id_table_start, r->ids + b * SQFS_IDS_PER_META, k * 4);
		if (ret) {
			snprintf(err, errlen, "id table is corrupt");
			goto out;
		}
	}
	for (size_t i = 0; i < n; i++)
		r->ids[i] = sqfs_le32(r->ids[i]);
out:
	free(idx);
	return ret;
}

static int load_xattrs(struct sqfs_reader *r, char *err, size_t errlen)
{
	struct sqfs_xattr_id_table t;
	uint64_t start = r->sb.xattr_id_table_start;
	int ret;

	if (start == SQFS_INVALID_BLK)
		return 0;
	if (start < SQFS_SUPER_SIZE || start > r->size || r->size - start < sizeof(t)) {
		snprintf(err, errlen, "xattr id table at byte %" PRIu64 " lies outside the image",
			 start);
		return -EINVAL;
	}
	ret = rd_pread(r, &t, sizeof(t), start);
	if (ret)
		return ret;
	sqfs_xattr_id_table_swap(&t);
	if (t.xattr_ids == 0)
		return 0;
	if (t.xattr_table_start < SQFS_SUPER_SIZE || t.xattr_table_start >= start) {
		snprintf(err, errlen, "xattr key/value table at bad location %" PRIu64,
			 t.xattr_table_start);
		return -EINVAL;
	}
	ret = load_index(r, start + sizeof(t), t.xattr_ids, sizeof(struct sqfs_xattr_id),
			 &r->xattr_idx, "xattr id", err, errlen);
	if (ret)
		return ret;
	r->xattr_kv_start = t.xattr_table_start;
	r->xattr_count = t.xattr_ids;
	return 0;
}

static int check_super(struct sqfs_reader *r, uint64_t fsize, char *err, size_t errlen)
{
	struct sqfs_super *sb = &r->sb;

	if (sb->magic != SQFS_MAGIC)
		return snprintf(err, errlen, "not a SquashFS image (bad magic)"), -EINVAL;
	if (sb->version_major != 4 || sb->version_minor != 0)
		return snprintf(err, errlen, "SquashFS version %u.%u is not supported (only 4.0)",
				sb->version_major, sb->version_minor), -EINVAL;
	if (sb->block_log < SQFS_MIN_BLOCK_LOG || sb->block_log > SQFS_MAX_BLOCK_LOG ||
	    sb->block_size != (1u << sb->block_log))
		return snprintf(err, errlen, "bad block size %u (log %u)", sb->block_size,
				sb->block_log), -EINVAL;
	if (sqfs_dctx_supported(sb->compressor))
		return snprintf(err, errlen, "compressor id %u is not supported",
				sb->compressor), -EOPNOTSUPP;
	if (sb->bytes_used > fsize)
		return snprintf(err, errlen, "image is truncated: superblock says %" PRIu64
				" bytes, file has %" PRIu64, sb->bytes_used, fsize), -EINVAL;
	if (sb->bytes_used < SQFS_SUPER_SIZE)
		return snprintf(err, errlen, "bad image size %" PRIu64, sb->bytes_used), -EINVAL;
	if (sb->inode_table_start < SQFS_SUPER_SIZE ||
	    sb->inode_table_start >= sb->dir_table_start ||
	    sb->dir_table_start >= sb->bytes_used || sb->id_table_start >= sb->bytes_used ||
	    sb->id_table_start < sb->dir_table_start)
		return snprintf(err, errlen, "inode/directory/id table locations are "
				"inconsistent"), -EINVAL;
	if (sb->id_count == 0)
		return snprintf(err, errlen, "image has an empty uid/gid table"), -EINVAL;
	if (sb->inode_count == 0)
		return snprintf(err, errlen, "image has no inodes"), -EINVAL;
	if (SQFS_REF_BLOCK(sb->root_inode_ref) >= sb->dir_table_start - sb->inode_table_start ||
	    SQFS_REF_OFFSET(sb->root_inode_ref) >= SQFS_META_SIZE)
		return snprintf(err, errlen, "root inode reference lies outside the inode "
				"table"), -EINVAL;
	return 0;
}

/* The directory table ends where the next table (or its blocks) could begin. */
static uint64_t dir_table_end(const struct sqfs_super *sb)
{
	uint64_t c[] = { sb->frag_table_start, sb->export_table_start, sb->id_table_start,
			 sb->xattr_id_table_start, sb->bytes_used };
	uint64_t end = sb->bytes_used;

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		if (c[i] > sb->dir_table_start && c[i] < end)
			end = c[i];
	return end;
}

static int load_tables(struct sqfs_reader *r, char *err, size_t errlen)
{
	struct sqfs_super *sb = &r->sb;
	int ret;

	ret = load_ids(r, err, errlen);
	if (ret)
		return ret;
	if (sb->frag_count) {
		ret = load_index(r, sb->frag_table_start, sb->frag_count,
				 sizeof(struct sqfs_fragment_entry), &r->frag_idx, "fragment",
				 err, errlen);
		if (ret)
			return ret;
	}
	if (sb->export_table_start != SQFS_INVALID_BLK) {
		ret = load_index(r, sb->export_table_start, sb->inode_count, 8, &r->export_idx,
				 "export", err, errlen);
		if (ret)
			return ret;
	}
	return load_xattrs(r, err, errlen);
}

static void fill_info(struct sqfs_reader *r)
{
	struct sqfs_info *i = &r->info;

	i->inode_count = r->sb.inode_count;
	i->block_size = r->sb.block_size;
	i->mtime = r->sb.mod_time;
	i->compression = r->sb.compressor;
	i->flags = r->sb.flags;
	i->bytes_used = r->sb.bytes_used;
	i->root_ref = r->sb.root_inode_ref;
	i->fragment_count = r->sb.frag_count;
	i->id_count = r->sb.id_count;
	i->has_export = r->export_idx != NULL;
	i->has_xattrs = r->xattr_count != 0;
}

static int reader_init(struct sqfs_reader *r, const struct sqfs_reader_opts *o,
		       char *err, size_t errlen)
{
	size_t dbytes = o && o->data_cache_bytes ? o->data_cache_bytes : 0;
	size_t mbytes = o && o->meta_cache_bytes ? o->meta_cache_bytes : SQFS_DEFAULT_META_CACHE;
	struct sqfs_inode root;
	struct stat st;
	int ret;

	if (fstat(r->fd, &st) < 0)
		return snprintf(err, errlen, "%s", strerror(errno)), -errno;
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return snprintf(err, errlen, "not a regular file"), -EINVAL;
	r->size = st.st_size;
	if (r->size < SQFS_SUPER_SIZE)
		return snprintf(err, errlen, "too small for a SquashFS image (%" PRIu64
				" bytes)", r->size), -EINVAL;
	ret = rd_pread(r, &r->sb, sizeof(r->sb), 0);
	if (ret)
		return snprintf(err, errlen, "reading the superblock: %s", strerror(-ret)), ret;
	sqfs_super_to_host(&r->sb);
	ret = check_super(r, r->size, err, errlen);
	if (ret)
		return ret;
	r->size = r->sb.bytes_used;
	r->inode_end = r->sb.dir_table_start;
	r->dir_end = dir_table_end(&r->sb);
	r->ctx_buf = r->sb.block_size > SQFS_META_MAX_DISK ? r->sb.block_size : SQFS_META_MAX_DISK;
	r->meta = bc_create(mbytes, SQFS_META_SIZE);
	r->data = bc_create(dbytes ? dbytes : (size_t)SQFS_DEFAULT_DATA_BLOCKS * r->sb.block_size,
			    r->sb.block_size);
	if (!r->meta || !r->data)
		return snprintf(err, errlen, "out of memory"), -ENOMEM;
	ret = load_tables(r, err, errlen);
	if (ret)
		return ret;
	fill_info(r);
	ret = sqfs_read_inode(r, r->sb.root_inode_ref, &root);
	if (ret == 0 && root.type != SQFS_INODE_DIR)
		ret = -ENOTDIR;
	if (ret)
		return snprintf(err, errlen, "root inode is unreadable or not a directory"), -EINVAL;
	return 0;
}

int sqfs_open_fd(int fd, const struct sqfs_reader_opts *opts, struct sqfs_reader **out,
		 char *err, size_t errlen)
{
	struct sqfs_reader *r = calloc(1, sizeof(*r));
	int ret;

	*out = NULL;
	if (!r)
		return snprintf(err, errlen, "out of memory"), -ENOMEM;
	pthread_mutex_init(&r->pool_lock, NULL);
	pthread_mutex_init(&r->log_lock, NULL);
	if (opts) {
		r->log = opts->log;
		r->log_ctx = opts->log_ctx;
	}
	r->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (r->fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s", strerror(errno));
		goto fail;
	}
	ret = reader_init(r, opts, err, errlen);
	if (ret)
		goto fail;
	*out = r;
	return 0;
fail:
	sqfs_close(r);
	return ret;
}

int sqfs_open(const char *path, const struct sqfs_reader_opts *opts,
	      struct sqfs_reader **out, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int ret;

	*out = NULL;
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s", strerror(errno));
		return ret;
	}
	ret = sqfs_open_fd(fd, opts, out, err, errlen);
	close(fd);
	return ret;
}

void sqfs_close(struct sqfs_reader *r)
{
	if (!r)
		return;
	while (r->pool) {
		struct rd_ctx *c = r->pool;

		r->pool = c->next;
		sqfs_dctx_free(c->d);
		free(c);
	}
	bc_destroy(r->meta);
	bc_destroy(r->data);
	free(r->ids);
	free(r->frag_idx);
	free(r->export_idx);
	free(r->xattr_idx);
	if (r->fd >= 0)
		close(r->fd);
	pthread_mutex_destroy(&r->pool_lock);
	pthread_mutex_destroy(&r->log_lock);
	free(r);
}

const struct sqfs_info *sqfs_get_info(const struct sqfs_reader *r)
{
	return &r->info;
}

void sqfs_cache_stats(struct sqfs_reader *r, uint64_t st[4])
{
	bc_stats(r->data, &st[0], &st[1]);
	bc_stats(r->meta, &st[2], &st[3]);
}

/* ---- inodes ------------------------------------------------------------------------- */

static const mode_t type_mode[8] = {
	0, S_IFDIR, S_IFREG, S_IFLNK, S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK,
};

static int inode_dir(struct sqfs_reader *r, struct sqfs_mpos *p, int ext,
		     struct sqfs_inode *ino)
{
	uint64_t where = p->block;
	uint32_t fsize;
	int ret;

	if (ext) {
		struct sqfs_inode_ext_dir d;

		ret = meta_read(r, p, r->inode_end, &d, sizeof(d));
		if (ret)
			return ret;
		sqfs_inode_ext_dir_swap(&d);
		ino->nlink = d.link_count;
		fsize = d.file_size;
		ino->dir.start = d.block_index;
		ino->dir.offset = d.block_offset;
		ino->dir.parent = d.parent_inode;
		ino->dir.idx_count = d.index_count;
		ino->dir.idx = *p;
		ino->xattr = d.xattr_idx;
	} else {
		struct sqfs_inode_dir d;

		ret = meta_read(r, p, r->inode_end, &d, sizeof(d));
		if (ret)
			return ret;
		sqfs_inode_dir_swap(&d);
		ino->nlink = d.link_count;
		fsize = d.file_size;
		ino->dir.start = d.block_index;
		ino->dir.offset = d.block_offset;
		ino->dir.parent = d.parent_inode;
	}
	if (fsize < SQFS_DIR_LISTING_EXTRA || ino->dir.offset >= SQFS_META_SIZE ||
	    ino->dir.start >= r->dir_end - r->sb.dir_table_start)
		return rd_bad(r, where, "directory inode points outside the directory table");
	ino->size = fsize;
	ino->dir.listing = fsize - SQFS_DIR_LISTING_EXTRA;
	return 0;
}

static int inode_file(struct sqfs_reader *r, struct sqfs_mpos *p, int ext,
		      struct sqfs_inode *ino)
{
	uint64_t where = p->block, nb;
	uint32_t bs = r->sb.block_size;
	int ret;

	if (ext) {
		struct sqfs_inode_ext_file f;

		ret = meta_read(r, p, r->inode_end, &f, sizeof(f));
		if (ret)
			return ret;
		sqfs_inode_ext_file_swap(&f);
		ino->file.blocks_start = f.blocks_start;
		ino->size = f.file_size;
		ino->file.sparse = f.sparse;
		ino->nlink = f.link_count;
		ino->file.frag = f.fragment_index;
		ino->file.frag_offset = f.fragment_offset;
		ino->xattr = f.xattr_idx;
	} else {
		struct sqfs_inode_file f;

		ret = meta_read(r, p, r->inode_end, &f, sizeof(f));
		if (ret)
			return ret;
		sqfs_inode_file_swap(&f);
		ino->file.blocks_start = f.blocks_start;
		ino->size = f.file_size;
		ino->nlink = 1;
		ino->file.frag = f.fragment_index;
		ino->file.frag_offset = f.fragment_offset;
	}
	nb = sqfs_file_block_count(ino->size, bs, ino->file.frag != SQFS_INVALID_FRAG);
	/* the block list lives in the inode table: it cannot be longer than that table
	 * holds uncompressed (blocks of at least 3 bytes on disk, 8 KiB each inside) */
	if (nb * 4 > ((r->inode_end - r->sb.inode_table_start) / 3 + 1) * SQFS_META_SIZE ||
	    nb > UINT32_MAX || ino->size > INT64_MAX ||
	    ino->file.blocks_start > r->size)
		return rd_bad(r, where, "file inode with impossible size or block location");
	if (ino->file.frag != SQFS_INVALID_FRAG &&
	    (ino->file.frag >= r->sb.frag_count || ino->file.frag_offset >= bs))
		return rd_bad(r, where, "file inode with a bad fragment index");
	ino->file.nblocks = nb;
	ino->file.blist = *p;
	return 0;
}

static int inode_symlink(struct sqfs_reader *r, struct sqfs_mpos *p, int ext,
			 struct sqfs_inode *ino)
{
	struct sqfs_inode_symlink s;
	uint64_t where = p->block;
	int ret = meta_read(r, p, r->inode_end, &s, sizeof(s));

	if (ret)
		return ret;
	sqfs_inode_symlink_swap(&s);
	if (s.target_size == 0 || s.target_size >= 4096)
		return rd_bad(r, where, "symlink with a bad target length");
	ino->nlink = s.link_count;
	ino->size = s.target_size;
	ino->link.target = *p;
	if (ext) {
		uint32_t x;

		ret = meta_skip(r, p, r->inode_end, s.target_size);
		if (!ret)
			ret = meta_read(r, p, r->inode_end, &x, 4);
		if (ret)
			return ret;
		ino->xattr = sqfs_le32(x);
	}
	return 0;
}

static int inode_special(struct sqfs_reader *r, struct sqfs_mpos *p, int ext,
			 struct sqfs_inode *ino)
{
	uint32_t w[3];
	int dev = ino->type == SQFS_INODE_BDEV || ino->type == SQFS_INODE_CDEV;
	int n = 1 + dev + ext;
	int ret = meta_read(r, p, r->inode_end, w, n * 4);

	if (ret)
		return ret;
	ino->nlink = sqfs_le32(w[0]);
	if (dev)
		ino->rdev = sqfs_le32(w[1]);
	if (ext)
		ino->xattr = sqfs_le32(w[n - 1]);
	return 0;
}

int sqfs_read_inode(struct sqfs_reader *r, uint64_t ref, struct sqfs_inode *ino)
{
	uint64_t blk = SQFS_REF_BLOCK(ref);
	struct sqfs_inode_header h;
	struct sqfs_mpos p;
	unsigned t;
	int ext, ret;

	if (blk >= r->inode_end - r->sb.inode_table_start || SQFS_REF_OFFSET(ref) >= SQFS_META_SIZE)
		return rd_bad(r, r->sb.inode_table_start, "inode reference outside the inode table");
	p.block = r->sb.inode_table_start + blk;
	p.offset = SQFS_REF_OFFSET(ref);
	ret = meta_read(r, &p, r->inode_end, &h, sizeof(h));
	if (ret)
		return ret;
	sqfs_inode_header_swap(&h);
	t = h.inode_type;
	if (t < SQFS_INODE_DIR || t > SQFS_INODE_EXT_SOCKET || h.uid_idx >= r->sb.id_count ||
	    h.gid_idx >= r->sb.id_count || h.inode_number == 0 ||
	    h.inode_number > r->sb.inode_count)
		return rd_bad(r, p.block, "bad inode header");
	ext = t > SQFS_INODE_SOCKET;
	memset(ino, 0, sizeof(*ino));
	ino->ref = ref;
	ino->ino = h.inode_number;
	ino->type = ext ? t - SQFS_INODE_EXT_OFFSET : t;
	ino->ext = ext;
	ino->mode = type_mode[ino->type] | (h.permissions & 07777);
	ino->uid = r->ids[h.uid_idx];
	ino->gid = r->ids[h.gid_idx];
	ino->mtime = h.mtime;
	ino->xattr = SQFS_INVALID_XATTR;
	switch (ino->type) {
	case SQFS_INODE_DIR:
		return inode_dir(r, &p, ext, ino);
	case SQFS_INODE_FILE:
		return inode_file(r, &p, ext, ino);
	case SQFS_INODE_SYMLINK:
		return inode_symlink(r, &p, ext, ino);
	default:
		return inode_special(r, &p, ext, ino);
	}
}

void sqfs_inode_stat(const struct sqfs_reader *r, const struct sqfs_inode *ino,
		     struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino->ino;
	st->st_mode = ino->mode;
	st->st_nlink = ino->nlink;
	st->st_uid = ino->uid;
	st->st_gid = ino->gid;
	st->st_size = ino->size;
	st->st_blksize = r->sb.block_size;
	if (ino->type == SQFS_INODE_BDEV || ino->type == SQFS_INODE_CDEV)
		st->st_rdev = makedev(sqfs_dev_major(ino->rdev), sqfs_dev_minor(ino->rdev));
	if (ino->type == SQFS_INODE_FILE) {
		/* what the kernel's squashfs reports */
		if (ino->ext)
			st->st_blocks = ino->file.sparse > ino->size ? 0 :
					(ino->size - ino->file.sparse + 511) >> 9;
		else
			st->st_blocks = ino->size ? ((ino->size - 1) >> 9) + 1 : 0;
	}
	st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = ino->mtime;
}

/* ---- directories -------------------------------------------------------------------- */

struct dir_walk {
	struct sqfs_mpos p;
	uint32_t left;        /* listing bytes not yet read */
	uint32_t count;       /* entries left under the current header */
	uint32_t start;       /* inode block of the current header */
	uint32_t base;        /* inode number of the current header */
	struct bc_entry *hold;   /* current listing block; walk_done() drops it */
};

struct dir_ent {
	char name[SQFS_NAME_MAX + 1];
	size_t len;
	unsigned type;
	uint32_t ino;
	uint64_t ref;
};

static void walk_init(struct sqfs_reader *r, const struct sqfs_inode *dir, struct dir_walk *w)
{
	memset(w, 0, sizeof(*w));
	w->p.block = r->sb.dir_table_start + dir->dir.start;
	w->p.offset = dir->dir.offset;
	w->left = dir->dir.listing;
}

static void walk_done(struct dir_walk *w)
{
	bc_put(w->hold);
	w->hold = NULL;
}

static int walk_header(struct sqfs_reader *r, struct dir_walk *w)
{
	struct sqfs_dir_header h;
	uint64_t where = w->p.block;
	int ret;

	if (w->left < sizeof(h))
		return rd_bad(r, where, "directory listing ends inside a header");
	ret = meta_read_held(r, &w->p, r->dir_end, &h, sizeof(h), &w->hold);
	if (ret)
		return ret;
	sqfs_dir_header_swap(&h);
	w->left -= sizeof(h);
	if (h.count >= SQFS_DIR_MAX_ENTRIES ||
	    h.start >= r->inode_end - r->sb.inode_table_start)
		return rd_bad(r, where, "bad directory header");
	w->count = h.count + 1;
	w->start = h.start;
	w->base = h.inode_number;
	return 0;
}

static int bad_name(const char *n, size_t len)
{
	if (memchr(n, '/', len) || memchr(n, 0, len))
		return 1;
	return (len == 1 && n[0] == '.') || (len == 2 && n[0] == '.' && n[1] == '.');
}

/* Next entry: 1 and *e filled, 0 at the end, or -errno. */
static int walk_next(struct sqfs_reader *r, struct dir_walk *w, struct dir_ent *e)
{
	struct sqfs_dir_entry d;
	uint64_t where;
	int ret;

	if (w->count == 0) {
		if (w->left == 0)
			return 0;
		ret = walk_header(r, w);
		if (ret)
			return ret;
	}
	where = w->p.block;
	if (w->left < sizeof(d))
		return rd_bad(r, where, "directory listing ends inside an entry");
	ret = meta_read_held(r, &w->p, r->dir_end, &d, sizeof(d), &w->hold);
	if (ret)
		return ret;
	sqfs_dir_entry_swap(&d);
	w->left -= sizeof(d);
	e->len = d.name_size + 1u;
	if (e->len > SQFS_NAME_MAX || e->len > w->left || d.offset >= SQFS_META_SIZE ||
	    d.type < SQFS_INODE_DIR || d.type > SQFS_INODE_SOCKET)
		return rd_bad(r, where, "bad directory entry");
	ret = meta_read_held(r, &w->p, r->dir_end, e->name, e->len, &w->hold);
	if (ret)
		return ret;
	w->left -= e->len;
	e->name[e->len] = 0;
	if (bad_name(e->name, e->len))
		return rd_bad(r, where, "bad name in a directory entry");
	e->type = d.type;
	e->ino = w->base + d.inode_offset;
	e->ref = SQFS_REF(w->start, d.offset);
	w->count--;
	return 1;
}

int sqfs_readdir(struct sqfs_reader *r, const struct sqfs_inode *dir,
		 sqfs_dirent_fn fill, void *ctx)
{
	struct dir_walk w;
	struct dir_ent e;
	int ret;

	if (dir->type != SQFS_INODE_DIR)
		return -ENOTDIR;
	walk_init(r, dir, &w);
	while ((ret = walk_next(r, &w, &e)) == 1) {
		ret = fill(ctx, e.name, e.len, e.type, e.ino, e.ref);
		if (ret)
			break;
	}
	walk_done(&w);
	return ret;
}

/* strcmp() order on counted strings: the order mksquashfs sorts listings in. */
static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);

	if (c)
		return c;
	return alen < blen ? -1 : alen > blen;
}

/* Use the directory index to start the walk at the last header whose first name is not
 * after `name`. */
static int walk_seek(struct sqfs_reader *r, const struct sqfs_inode *dir, struct dir_walk *w,
		     const char *name, size_t len)
{
	struct sqfs_mpos p = dir->dir.idx;
	char iname[SQFS_NAME_MAX];
	struct bc_entry *hold = NULL;
	uint32_t last = 0;
	int ret = 0;

	for (unsigned i = 0; i < dir->dir.idx_count; i++) {
		struct sqfs_dir_index x;
		uint64_t where = p.block;

		ret = meta_read_held(r, &p, r->inode_end, &x, sizeof(x), &hold);
		if (ret)
			break;
		sqfs_dir_index_swap(&x);
		if (x.name_size >= SQFS_NAME_MAX) {
			ret = rd_bad(r, where, "bad directory index entry");
			break;
		}
		ret = meta_read_held(r, &p, r->inode_end, iname, x.name_size + 1, &hold);
		if (ret)
			break;
		if (name_cmp(iname, x.name_size + 1, name, len) > 0)
			break;
		if (x.index < last || x.index > dir->dir.listing ||
		    x.start >= r->dir_end - r->sb.dir_table_start) {
			ret = rd_bad(r, where, "bad directory index entry");
			break;
		}
		last = x.index;
		w->p.block = r->sb.dir_table_start + x.start;
		w->p.offset = (x.index + dir->dir.offset) % SQFS_META_SIZE;
		w->left = dir->dir.listing - x.index;
		w->count = 0;
	}
	bc_put(hold);
	return ret;
}

struct sqfs_cursor {
	uint64_t dir;               /* the directory's inode reference + 1; 0 = empty */
	struct dir_walk at;         /* just after that entry (holding no block) */
	size_t len;
	char name[SQFS_NAME_MAX + 1];   /* the entry */
};

struct sqfs_cursor *sqfs_cursor_new(void)
{
	return calloc(1, sizeof(struct sqfs_cursor));
}

void sqfs_cursor_free(struct sqfs_cursor *c)
{
	free(c);
}

/* Start the scan for name at *c instead, if c is in dir, before name and past w. */
static void cursor_resume(const struct sqfs_inode *dir, struct dir_walk *w, const char *name,
			  size_t len, const struct sqfs_cursor *c)
{
	if (c && c->dir == dir->ref + 1 && c->at.left < w->left &&
	    name_cmp(c->name, c->len, name, len) < 0)
		*w = c->at;
}

static void cursor_save(const struct sqfs_inode *dir, const struct dir_walk *w,
			const struct dir_ent *e, struct sqfs_cursor *c)
{
	if (!c)
		return;
	c->dir = dir->ref + 1;
	c->at = *w;
	c->at.hold = NULL;
	c->len = e->len;
	memcpy(c->name, e->name, e->len + 1);
}

static int lookup_at(struct sqfs_reader *r, const struct sqfs_inode *dir, const char *name,
		     size_t len, uint64_t *ref, struct sqfs_cursor *c)
{
	struct dir_walk w;
	struct dir_ent e;
	int ret;

	if (dir->type != SQFS_INODE_DIR)
		return -ENOTDIR;
	if (len == 0 || len > SQFS_NAME_MAX)
		return len ? -ENAMETOOLONG : -ENOENT;
	walk_init(r, dir, &w);
	ret = walk_seek(r, dir, &w, name, len);
	if (!ret)
		cursor_resume(dir, &w, name, len, c);
	while (!ret && (ret = walk_next(r, &w, &e)) == 1) {
		int cmp = name_cmp(e.name, e.len, name, len);

		if (cmp == 0) {
			*ref = e.ref;
			cursor_save(dir, &w, &e, c);
			break;
		}
		ret = cmp > 0 ? -ENOENT : 0;
	}
	walk_done(&w);
	if (ret == 1)
		return 0;
	return ret < 0 ? ret : -ENOENT;
}

int sqfs_lookup(struct sqfs_reader *r, const struct sqfs_inode *dir, const char *name,
		size_t len, uint64_t *ref)
{
	return lookup_at(r, dir, name, len, ref, NULL);
}

int sqfs_lookup_inode_at(struct sqfs_reader *r, const struct sqfs_inode *dir, const char *name,
			 size_t len, struct sqfs_inode *child, struct sqfs_cursor *c)
{
	uint64_t ref;
	int ret = lookup_at(r, dir, name, len, &ref, c);

	if (!ret)
		ret = sqfs_read_inode(r, ref, child);
	if (!ret && child->type == SQFS_INODE_DIR && child->dir.parent != dir->ino)
		ret = rd_bad(r, r->sb.inode_table_start + SQFS_REF_BLOCK(ref),
			     "directory's parent does not match where it is listed");
	return ret;
}

int sqfs_lookup_inode(struct sqfs_reader *r, const struct sqfs_inode *dir, const char *name,
		      size_t len, struct sqfs_inode *child)
{
	return sqfs_lookup_inode_at(r, dir, name, len, child, NULL);
}

int sqfs_export_lookup(struct sqfs_reader *r, uint32_t ino, uint64_t *ref)
{
	uint64_t v;
	int ret;

	if (!r->export_idx)
		return -EOPNOTSUPP;
	if (ino == 0 || ino > r->sb.inode_count)
		return -ENOENT;
	ret = table_read(r, r->export_idx, r->sb.export_table_start, ino - 1, 8, &v);
	if (ret)
		return ret;
	*ref = sqfs_le64(v);
	return 0;
}

ssize_t sqfs_readlink(struct sqfs_reader *r, const struct sqfs_inode *ino,
		      char *buf, size_t size)
{
	struct sqfs_mpos p = ino->link.target;
	size_t n = ino->size;
	int ret;

	if (ino->type != SQFS_INODE_SYMLINK)
		return -EINVAL;
	if (size == 0)
		return n;
	ret = meta_read(r, &p, r->inode_end, buf, n < size ? n : size);
	if (ret)
		return ret;
	if (n < size)
		buf[n] = 0;
	return n;
}

/* ---- file data ---------------------------------------------------------------------- */

static int data_check(struct sqfs_reader *r, uint64_t off, uint32_t word)
{
	if (SQFS_BLOCK_SIZE(word) > r->sb.block_size || off > r->size ||
	    SQFS_BLOCK_SIZE(word) > r->size - off)
		return rd_bad(r, off, "data block outside the image");
	return 0;
}

/* The decompressed data or fragment block at `off` described by size word `word`. */
static int data_get(struct sqfs_reader *r, uint64_t off, uint32_t word, struct bc_entry **out)
{
	uint32_t bs = r->sb.block_size;
	struct bc_entry *e = bc_get(r->data, off);
	ssize_t n;
	int ret;

	if (e) {
		*out = e;
		return 0;
	}
	ret = data_check(r, off, word);
	if (ret)
		return ret;
	e = bc_alloc(bs);
	if (!e)
		return -ENOMEM;
	n = rd_block(r, off, SQFS_BLOCK_SIZE(word), SQFS_BLOCK_IS_RAW(word), e->data, bs);
	if (n < 0) {
		bc_free(e);
		return n;
	}
	e->key = off;
	e->len = n;
	*out = bc_insert(r->data, e);
	return 0;
}

/* Grow the block arrays to hold n entries. */
static int file_grow(struct sqfs_file *f, size_t n)
{
	uint64_t *s = realloc(f->start, n * sizeof(*s));
	uint32_t *w;

	if (!s)
		return -ENOMEM;
	f->start = s;
	w = realloc(f->word, n * sizeof(*w));
	if (!w)
		return -ENOMEM;
	f->word = w;
	return 0;
}

/* Read the block list in chunks, growing as we go: a corrupt inode claiming millions of
 * blocks fails at the end of the inode table, not with a giant allocation up front. */
static int file_load_blocks(struct sqfs_file *f)
{
	struct sqfs_reader *r = f->r;
	struct sqfs_mpos p = f->ino.file.blist;
	uint64_t cur = f->ino.file.blocks_start;
	uint32_t n = f->ino.file.nblocks, done = 0, cap = 0;
	int ret;

	while (done < n) {
		uint32_t k = n - done < 2048 ? n - done : 2048;

		if (done + k > cap) {
			cap = cap ? (cap * 2 < n ? cap * 2 : n) : (n < 2048 ? n : 2048);
			ret = file_grow(f, cap);
			if (ret)
				return ret;
		}
		ret = meta_read(r, &p, r->inode_end, f->word + done, (size_t)k * 4);
		if (ret)
			return ret;
		for (uint32_t i = done; i < done + k; i++) {
			uint32_t w = sqfs_le32(f->word[i]), sz = SQFS_BLOCK_SIZE(w);

			f->word[i] = w;
			f->start[i] = cur;
			if (sz > r->sb.block_size || cur > r->size || sz > r->size - cur)
				return rd_bad(r, f->ino.file.blist.block, "file block list points "
					      "outside the image");
			cur += sz;
		}
		done += k;
	}
	return 0;
}

int sqfs_file_open(struct sqfs_reader *r, const struct sqfs_inode *ino, struct sqfs_file **out)
{
	struct sqfs_file *f;
	int ret;

	*out = NULL;
	if (ino->type != SQFS_INODE_FILE)
		return ino->type == SQFS_INODE_DIR ? -EISDIR : -EINVAL;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->r = r;
	f->ino = *ino;
	pthread_mutex_init(&f->lock, NULL);
	ret = file_load_blocks(f);
	if (ret)
		goto fail;
	*out = f;
	return 0;
fail:
	sqfs_file_close(f);
	return ret;
}

void sqfs_file_close(struct sqfs_file *f)
{
	if (!f)
		return;
	pthread_mutex_destroy(&f->lock);
	free(f->start);
	free(f->word);
	free(f);
}

/* A whole data block decompressed straight into dst[expect].  Caching it would cost a
 * copy and fresh memory (page faults) for a block that a sequential reader -- and the
 * kernel's page cache above us -- never asks for again. */
static int block_direct(struct sqfs_reader *r, uint64_t off, uint32_t word, void *dst,
			uint32_t expect)
{
	ssize_t n;
	int ret = data_check(r, off, word);

	if (ret)
		return ret;
	n = rd_block(r, off, SQFS_BLOCK_SIZE(word), SQFS_BLOCK_IS_RAW(word), dst, expect);
	if (n < 0)
		return n;
	return n == expect ? 0 : rd_bad(r, off, "data block has the wrong size");
}

/* Copy [in, in+len) of full data block bi. */
static int file_block(struct sqfs_file *f, uint64_t bi, uint32_t in, void *dst, size_t len)
{
	struct sqfs_reader *r = f->r;
	uint32_t bs = r->sb.block_size, expect = bs;
	struct bc_entry *e = NULL;
	int ret;

	if (bi == f->ino.file.nblocks - 1 && f->ino.file.frag == SQFS_INVALID_FRAG &&
	    f->ino.size % bs)
		expect = f->ino.size % bs;
	if (SQFS_BLOCK_SIZE(f->word[bi]) == 0) {        /* a hole */
		memset(dst, 0, len);
		return 0;
	}
	if (in == 0 && len == expect && !(e = bc_get(r->data, f->start[bi])))
		return block_direct(r, f->start[bi], f->word[bi], dst, expect);
	if (!e && (ret = data_get(r, f->start[bi], f->word[bi], &e)))
		return ret;
	if (e->len != expect)
		ret = rd_bad(r, f->start[bi], "data block has the wrong size");
	else
		memcpy(dst, e->data + in, len);
	bc_put(e);
	return ret;
}

/* Copy [in, in+len) of the file's tail, which lives in a fragment block. */
static int file_tail(struct sqfs_file *f, uint32_t in, void *dst, size_t len)
{
	struct sqfs_reader *r = f->r;
	struct sqfs_fragment_entry fe;
	uint32_t tail = f->ino.size % r->sb.block_size;
	struct bc_entry *e;
	int ret = 0;

	if (f->ino.file.frag == SQFS_INVALID_FRAG)
		return rd_bad(r, f->ino.file.blist.block, "file tail without a fragment");
	pthread_mutex_lock(&f->lock);
	if (!f->have_frag) {
		ret = table_read(r, r->frag_idx, r->sb.frag_table_start, f->ino.file.frag,
				 sizeof(f->frag), &f->frag);
		sqfs_fragment_entry_swap(&f->frag);
		f->have_frag = !ret;
	}
	fe = f->frag;
	pthread_mutex_unlock(&f->lock);
	if (ret)
		return ret;
	ret = data_get(r, fe.start, fe.size, &e);
	if (ret)
		return ret;
	if (f->ino.file.frag_offset > e->len || tail > e->len - f->ino.file.frag_offset)
		ret = rd_bad(r, fe.start, "file tail lies outside its fragment block");
	else
		memcpy(dst, e->data + f->ino.file.frag_offset + in, len);
	bc_put(e);
	return ret;
}

ssize_t sqfs_file_pread(struct sqfs_file *f, void *buf, size_t size, uint64_t off)
{
	uint32_t bs = f->r->sb.block_size;
	uint64_t fsize = f->ino.size;
	size_t done = 0;

	if (off >= fsize)
		return 0;
	if (size > fsize - off)
		size = fsize - off;
	while (done < size) {
		uint64_t pos = off + done, bi = pos / bs;
		uint32_t in = pos % bs;
		size_t len = bs - in;
		int ret;

		if (len > size - done)
			len = size - done;
		if (bi < f->ino.file.nblocks)
			ret = file_block(f, bi, in, (char *)buf + done, len);
		else
			ret = file_tail(f, in, (char *)buf + done, len);
		if (ret)
			return ret;
		done += len;
	}
	return done;
}

ssize_t sqfs_pread(struct sqfs_reader *r, const struct sqfs_inode *ino, void *buf,
		   size_t size, uint64_t off)
{
	struct sqfs_file *f;
	ssize_t n;
	int ret = sqfs_file_open(r, ino, &f);

	if (ret)
		return ret;
	n = sqfs_file_pread(f, buf, size, off);
	sqfs_file_close(f);
	return n;
}

/* ---- extended attributes ------------------------------------------------------------ */

struct xattr_walk {
	struct sqfs_mpos p;
	uint32_t left;
};

struct xattr_ent {
	char name[XATTR_NAME_MAX_ + 1];
	size_t len;
	struct sqfs_mpos value;     /* where the value bytes start */
	uint32_t size;
};

static int xattr_start(struct sqfs_reader *r, const struct sqfs_inode *ino,
		       struct xattr_walk *w)
{
	struct sqfs_xattr_id id;
	int ret;

	w->left = 0;
	if (ino->xattr == SQFS_INVALID_XATTR || r->xattr_count == 0)
		return 0;
	if (ino->xattr >= r->xattr_count)
		return rd_bad(r, r->sb.xattr_id_table_start, "inode has a bad xattr index");
	ret = table_read(r, r->xattr_idx, r->sb.xattr_id_table_start, ino->xattr,
			 sizeof(id), &id);
	if (ret)
		return ret;
	sqfs_xattr_id_swap(&id);
	if (SQFS_REF_BLOCK(id.xattr) >= r->sb.xattr_id_table_start - r->xattr_kv_start ||
	    SQFS_REF_OFFSET(id.xattr) >= SQFS_META_SIZE)
		return rd_bad(r, r->sb.xattr_id_table_start, "bad xattr id entry");
	w->p.block = r->xattr_kv_start + SQFS_REF_BLOCK(id.xattr);
	w->p.offset = SQFS_REF_OFFSET(id.xattr);
	w->left = id.count;
	return 0;
}

/* Resolve an out-of-line value: its 8 stored bytes are a reference to a value entry. */
static int xattr_ool(struct sqfs_reader *r, struct xattr_walk *w, struct xattr_ent *e,
		     uint64_t where)
{
	uint64_t ref;
	uint32_t sz;
	int ret;

	if (e->size != 8)
		return rd_bad(r, where, "bad out-of-line xattr value");
	ret = meta_read(r, &w->p, r->sb.xattr_id_table_start, &ref, 8);
	if (ret)
		return ret;
	ref = sqfs_le64(ref);
	if (SQFS_REF_BLOCK(ref) >= r->sb.xattr_id_table_start - r->xattr_kv_start ||
	    SQFS_REF_OFFSET(ref) >= SQFS_META_SIZE)
		return rd_bad(r, where, "bad out-of-line xattr reference");
	e->value.block = r->xattr_kv_start + SQFS_REF_BLOCK(ref);
	e->value.offset = SQFS_REF_OFFSET(ref);
	ret = meta_read(r, &e->value, r->sb.xattr_id_table_start, &sz, 4);
	if (ret)
		return ret;
	e->size = sqfs_le32(sz);
	if (e->size > XATTR_SIZE_MAX_)
		return rd_bad(r, where, "xattr value too large");
	return 0;
}

/* Next key/value pair: 1 and *e filled (name with its prefix), 0 at the end, -errno. */
static int xattr_next(struct sqfs_reader *r, struct xattr_walk *w, struct xattr_ent *e)
{
	uint64_t end = r->sb.xattr_id_table_start, where;
	struct sqfs_xattr_key k;
	const char *prefix;
	uint32_t sz;
	size_t plen;
	int ret;

	if (w->left == 0)
		return 0;
	where = w->p.block;
	ret = meta_read(r, &w->p, end, &k, sizeof(k));
	if (ret)
		return ret;
	sqfs_xattr_key_swap(&k);
	prefix = sqfs_xattr_prefix_name(k.type);
	if (!prefix || (k.type & ~(SQFS_XATTR_PREFIX_MASK | SQFS_XATTR_VALUE_OOL)))
		return rd_bad(r, where, "unknown xattr prefix");
	plen = strlen(prefix);
	if (k.name_size == 0 || plen + k.name_size > XATTR_NAME_MAX_)
		return rd_bad(r, where, "bad xattr name length");
	memcpy(e->name, prefix, plen);
	ret = meta_read(r, &w->p, end, e->name + plen, k.name_size);
	if (ret)
		return ret;
	e->len = plen + k.name_size;
	e->name[e->len] = 0;
	if (memchr(e->name, 0, e->len))
		return rd_bad(r, where, "xattr name contains NUL");
	ret = meta_read(r, &w->p, end, &sz, 4);
	if (ret)
		return ret;
	e->size = sqfs_le32(sz);
	if (k.type & SQFS_XATTR_VALUE_OOL) {
		ret = xattr_ool(r, w, e, where);
	} else {
		if (e->size > XATTR_SIZE_MAX_)
			return rd_bad(r, where, "xattr value too large");
		e->value = w->p;
		ret = meta_skip(r, &w->p, end, e->size);
	}
	if (ret)
		return ret;
	w->left--;
	return 1;
}

ssize_t sqfs_getxattr(struct sqfs_reader *r, const struct sqfs_inode *ino,
		      const char *name, void *buf, size_t size)
{
	size_t len = strlen(name);
	struct xattr_walk w;
	struct xattr_ent e;
	int ret = xattr_start(r, ino, &w);

	if (ret)
		return ret;
	while ((ret = xattr_next(r, &w, &e)) == 1) {
		if (e.len != len || memcmp(e.name, name, len))
			continue;
		if (size == 0)
			return e.size;
		if (size < e.size)
			return -ERANGE;
		ret = meta_read(r, &e.value, r->sb.xattr_id_table_start, buf, e.size);
		return ret ? ret : (ssize_t)e.size;
	}
	return ret < 0 ? ret : -ENODATA;
}

ssize_t sqfs_listxattr(struct sqfs_reader *r, const struct sqfs_inode *ino,
		       char *buf, size_t size)
{
	struct xattr_walk w;
	struct xattr_ent e;
	size_t total = 0;
	int ret = xattr_start(r, ino, &w);

	if (ret)
		return ret;
	while ((ret = xattr_next(r, &w, &e)) == 1) {
		if (size) {
			if (total + e.len + 1 > size)
				return -ERANGE;
			memcpy(buf + total, e.name, e.len + 1);
		}
		total += e.len + 1;
	}
	return ret < 0 ? ret : (ssize_t)total;
}
