// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * mkimage inspect: the superblock and what the inode table says about the image (counts
 * by type, data stored, what dedup saved).  Reads the image directly with format.h and
 * checks every offset against the image size first: the image may be anything.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "squashfs/codec.h"
#include "squashfs/format.h"
#include "mkimage.h"

struct img {
	int fd;
	const char *path;
	uint64_t size;
	struct sqfs_super sb;
	unsigned char *itab;     /* the decompressed inode table */
	size_t itab_len;
	uint32_t xattr_ids;
};

struct counts {
	uint64_t files, dirs, symlinks, devices, ipc, hardlinked;
	uint64_t file_bytes, stored_block_bytes, sparse_bytes;
	uint64_t dedup_saved;    /* logical bytes of file data shared with another file */
	uint32_t dir_indexes;
	uint64_t by_type[15];    /* inodes by on-disk type, 1..14 */
};

static const char *const type_names[15] = {
	"?", "dir", "file", "symlink", "blkdev", "chrdev", "fifo", "socket",
	"ext_dir", "ext_file", "ext_symlink", "ext_blkdev", "ext_chrdev", "ext_fifo",
	"ext_socket",
};

static int rd(struct img *im, void *buf, size_t len, uint64_t off)
{
	if (off > im->size || len > im->size - off)
		return -EINVAL;
	return pread(im->fd, buf, len, (off_t)off) == (ssize_t)len ? 0 : -EIO;
}

/* Read the metadata blocks in [start, end) into one buffer. */
static int read_meta_range(struct img *im, uint64_t start, uint64_t end,
			   unsigned char **out, size_t *outlen)
{
	unsigned char raw[SQFS_META_SIZE];
	size_t cap = 0, len = 0;
	unsigned char *buf = NULL;

	while (start < end) {
		uint16_t hdr;
		size_t n;
		ssize_t got;

		if (rd(im, &hdr, 2, start))
			goto bad;
		hdr = sqfs_le16(hdr);
		n = hdr & SQFS_META_SIZE_MASK;
		if (!n || n > SQFS_META_SIZE || rd(im, raw, n, start + 2))
			goto bad;
		if (len + SQFS_META_SIZE > cap) {
			unsigned char *p;
			cap = cap ? cap * 2 : 65536;
			p = realloc(buf, cap);
			if (!p)
				goto bad;
			buf = p;
		}
		if (hdr & SQFS_META_UNCOMPRESSED) {
			memcpy(buf + len, raw, n);
			got = (ssize_t)n;
		} else {
			got = sqfs_decompress(im->sb.compressor, raw, n, buf + len, SQFS_META_SIZE);
			if (got <= 0)
				goto bad;
		}
		len += (size_t)got;
		start += 2 + n;
	}
	*out = buf;
	*outlen = len;
	return 0;
bad:
	free(buf);
	return -EINVAL;
}

static int open_image(struct img *im, const char *path, char *err, size_t errlen)
{
	struct stat st;
	struct sqfs_super *sb = &im->sb;

	im->path = path;
	im->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (im->fd < 0 || fstat(im->fd, &st)) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -errno;
	}
	im->size = (uint64_t)st.st_size;
	if (rd(im, sb, sizeof(*sb), 0)) {
		snprintf(err, errlen, "%s: too short for a SquashFS superblock", path);
		return -EINVAL;
	}
	sqfs_super_to_host(sb);
	if (sb->magic != SQFS_MAGIC || sb->version_major != 4 || sb->version_minor != 0) {
		snprintf(err, errlen, "%s: not a SquashFS 4.0 image", path);
		return -EINVAL;
	}
	if (sb->block_log < SQFS_MIN_BLOCK_LOG || sb->block_log > SQFS_MAX_BLOCK_LOG ||
	    sb->block_size != 1u << sb->block_log || sb->bytes_used > im->size ||
	    sb->inode_table_start >= sb->dir_table_start || sb->dir_table_start > sb->bytes_used) {
		snprintf(err, errlen, "%s: corrupt superblock", path);
		return -EINVAL;
	}
	if (read_meta_range(im, sb->inode_table_start, sb->dir_table_start, &im->itab,
			    &im->itab_len)) {
		snprintf(err, errlen, "%s: corrupt or unsupported inode table (compressor %s)", path,
			 sqfs_compressor_id_name(sb->compressor));
		return -EINVAL;
	}
	if (sb->xattr_id_table_start != SQFS_INVALID_BLK) {
		struct sqfs_xattr_id_table t;
		if (!rd(im, &t, sizeof(t), sb->xattr_id_table_start)) {
			sqfs_xattr_id_table_swap(&t);
			im->xattr_ids = t.xattr_ids;
		}
	}
	return 0;
}

/* ---- walking the inode table -------------------------------------------------------- */

struct fref {                     /* one file's data, for finding what is shared */
	uint64_t start, stored, full_bytes;
	uint32_t frag, frag_off, tail;
};

static int cmp_fref_blocks(const void *a, const void *b)
{
	const struct fref *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	return x->stored < y->stored ? -1 : x->stored > y->stored;
}

static int cmp_fref_frag(const void *a, const void *b)
{
	const struct fref *x = a, *y = b;

	if (x->frag != y->frag)
		return x->frag < y->frag ? -1 : 1;
	if (x->frag_off != y->frag_off)
		return x->frag_off < y->frag_off ? -1 : 1;
	return x->tail < y->tail ? -1 : x->tail > y->tail;
}

static int file_inode(struct img *im, const unsigned char *p, size_t avail, bool ext,
		      struct fref *f, struct counts *c, size_t *len)
{
	uint32_t bs = im->sb.block_size;
	uint64_t size, nblocks, sparse = 0;
	uint32_t frag, nlink = 1;
	size_t fixed = ext ? sizeof(struct sqfs_inode_ext_file) : sizeof(struct sqfs_inode_file);

	if (avail < fixed)
		return -EINVAL;
	if (ext) {
		struct sqfs_inode_ext_file x;
		memcpy(&x, p, sizeof(x));
		sqfs_inode_ext_file_swap(&x);
		f->start = x.blocks_start;
		size = x.file_size;
		frag = x.fragment_index;
		f->frag_off = x.fragment_offset;
		sparse = x.sparse;
		nlink = x.link_count;
	} else {
		struct sqfs_inode_file x;
		memcpy(&x, p, sizeof(x));
		sqfs_inode_file_swap(&x);
		f->start = x.blocks_start;
		size = x.file_size;
		frag = x.fragment_index;
		f->frag_off = x.fragment_offset;
	}
	nblocks = sqfs_file_block_count(size, bs, frag != SQFS_INVALID_FRAG);
	if (nblocks > (avail - fixed) / 4)
		return -EINVAL;
	f->stored = 0;
	for (uint64_t i = 0; i < nblocks; i++) {
		uint32_t w;
		memcpy(&w, p + fixed + 4 * i, 4);
		f->stored += SQFS_BLOCK_SIZE(sqfs_le32(w));
	}
	f->frag = frag;
	f->tail = frag != SQFS_INVALID_FRAG ? (uint32_t)(size % bs) : 0;
	f->full_bytes = size - f->tail;
	c->files++;
	c->file_bytes += size;
	c->sparse_bytes += sparse;
	if (nlink > 1)
		c->hardlinked++;
	*len = fixed + 4 * nblocks;
	return 0;
}

static int other_inode(unsigned type, const unsigned char *p, size_t avail,
		       struct counts *c, size_t *len)
{
	size_t need;

	switch (type) {
	case SQFS_INODE_DIR:
		c->dirs++;
		need = sizeof(struct sqfs_inode_dir);
		break;
	case SQFS_INODE_EXT_DIR: {
		struct sqfs_inode_ext_dir d;
		if (avail < sizeof(d))
			return -EINVAL;
		memcpy(&d, p, sizeof(d));
		sqfs_inode_ext_dir_swap(&d);
		need = sizeof(d);
		for (uint32_t i = 0; i < d.index_count; i++) {
			struct sqfs_dir_index di;
			if (avail < need + sizeof(di))
				return -EINVAL;
			memcpy(&di, p + need, sizeof(di));
			sqfs_dir_index_swap(&di);
			if (di.name_size >= SQFS_NAME_MAX)
				return -EINVAL;
			need += sizeof(di) + di.name_size + 1;
		}
		c->dirs++;
		c->dir_indexes += d.index_count;
		break;
	}
	case SQFS_INODE_SYMLINK:
	case SQFS_INODE_EXT_SYMLINK: {
		struct sqfs_inode_symlink s;
		if (avail < sizeof(s))
			return -EINVAL;
		memcpy(&s, p, sizeof(s));
		sqfs_inode_symlink_swap(&s);
		if (s.target_size > avail)
			return -EINVAL;
		need = sizeof(s) + s.target_size + (type == SQFS_INODE_EXT_SYMLINK ? 4 : 0);
		c->symlinks++;
		break;
	}
	case SQFS_INODE_BDEV: case SQFS_INODE_CDEV:
		need = 8; c->devices++; break;
	case SQFS_INODE_EXT_BDEV: case SQFS_INODE_EXT_CDEV:
		need = 12; c->devices++; break;
	case SQFS_INODE_FIFO: case SQFS_INODE_SOCKET:
		need = 4; c->ipc++; break;
	case SQFS_INODE_EXT_FIFO: case SQFS_INODE_EXT_SOCKET:
		need = 8; c->ipc++; break;
	default:
		return -EINVAL;
	}
	if (need > avail)
		return -EINVAL;
	*len = need;
	return 0;
}

static int walk_inodes(struct img *im, struct counts *c)
{
	size_t off = 0, nf = 0;
	struct fref *fr;
	int ret = 0;

	/* every inode takes at least 20 bytes: a corrupt count must not size an allocation */
	if (im->sb.inode_count > im->itab_len / 20)
		return -EINVAL;
	fr = calloc(im->sb.inode_count + 1, sizeof(*fr));
	if (!fr)
		return -ENOMEM;
	for (uint32_t i = 0; i < im->sb.inode_count; i++) {
		struct sqfs_inode_header h;
		size_t len = 0;

		if (im->itab_len - off < sizeof(h)) {
			ret = -EINVAL;
			goto out;
		}
		memcpy(&h, im->itab + off, sizeof(h));
		sqfs_inode_header_swap(&h);
		off += sizeof(h);
		if (h.inode_type == SQFS_INODE_FILE || h.inode_type == SQFS_INODE_EXT_FILE)
			ret = file_inode(im, im->itab + off, im->itab_len - off,
					 h.inode_type == SQFS_INODE_EXT_FILE, &fr[nf++], c, &len);
		else
			ret = other_inode(h.inode_type, im->itab + off, im->itab_len - off, c, &len);
		if (ret)
			goto out;
		c->by_type[h.inode_type]++;   /* valid: both parsers reject other types */
		off += len;
	}
	/* files with the same first block and length share their blocks */
	qsort(fr, nf, sizeof(*fr), cmp_fref_blocks);
	for (size_t i = 1; i < nf; i++)
		if (fr[i].stored && fr[i].start == fr[i - 1].start &&
		    fr[i].stored == fr[i - 1].stored)
			c->dedup_saved += fr[i].full_bytes;
	for (size_t i = 0; i < nf; i++)
		c->stored_block_bytes += (i && fr[i].start == fr[i - 1].start &&
					  fr[i].stored == fr[i - 1].stored) ? 0 : fr[i].stored;
	qsort(fr, nf, sizeof(*fr), cmp_fref_frag);
	for (size_t i = 1; i < nf; i++)
		if (fr[i].frag != SQFS_INVALID_FRAG && !cmp_fref_frag(&fr[i], &fr[i - 1]))
			c->dedup_saved += fr[i].tail;
out:
	free(fr);
	return ret;
}

/* ---- output --------------------------------------------------------------------------- */

static const char *flag_names[] = {
	"uncompressed-inodes", "uncompressed-data", "check", "uncompressed-fragments",
	"no-fragments", "always-fragments", "duplicates", "exportable",
	"uncompressed-xattrs", "no-xattrs", "compressor-options", "uncompressed-ids",
};

static void print_text(struct img *im, const struct counts *c)
{
	const struct sqfs_super *sb = &im->sb;
	char a[32], b[32], d[32], tbuf[64];
	time_t t = sb->mod_time;

	strftime(tbuf, sizeof(tbuf), "%Y-%m-%d %H:%M:%S UTC", gmtime(&t));
	printf("image:        %s\n", im->path);
	printf("format:       SquashFS %u.%u\n", sb->version_major, sb->version_minor);
	printf("compressor:   %s\n", sqfs_compressor_id_name(sb->compressor));
	printf("block size:   %u\n", sb->block_size);
	printf("bytes used:   %llu (%s)\n", (unsigned long long)sb->bytes_used,
	       mk_human((double)sb->bytes_used, a, sizeof(a)));
	printf("time:         %u (%s)\n", sb->mod_time, tbuf);
	printf("flags:       ");
	for (unsigned i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++)
		if (sb->flags & (1u << i))
			printf(" %s", flag_names[i]);
	printf("\n");
	printf("inodes:       %u (%llu files, %llu dirs, %llu symlinks, %llu devices, "
	       "%llu fifos/sockets)\n", sb->inode_count, (unsigned long long)c->files,
	       (unsigned long long)c->dirs, (unsigned long long)c->symlinks,
	       (unsigned long long)c->devices, (unsigned long long)c->ipc);
	printf("fragments:    %u\n", sb->frag_count);
	printf("ids:          %u\n", sb->id_count);
	printf("xattr ids:    %u\n", im->xattr_ids);
	printf("file data:    %s in files, %s holes, %s saved by dedup\n",
	       mk_human((double)c->file_bytes, a, sizeof(a)),
	       mk_human((double)c->sparse_bytes, b, sizeof(b)),
	       mk_human((double)c->dedup_saved, d, sizeof(d)));
	printf("ratio:        %.1f%% of file data\n",
	       c->file_bytes ? 100.0 * (double)sb->bytes_used / (double)c->file_bytes : 0.0);
}

static void print_json(struct img *im, const struct counts *c)
{
	const struct sqfs_super *sb = &im->sb;
	struct json_object *o = json_object_new_object(), *fl = json_object_new_array();

	json_object_object_add(o, "image", json_object_new_string(im->path));
	json_object_object_add(o, "compressor",
			       json_object_new_string(sqfs_compressor_id_name(sb->compressor)));
	json_object_object_add(o, "block_size", json_object_new_int64(sb->block_size));
	json_object_object_add(o, "bytes_used", json_object_new_int64((int64_t)sb->bytes_used));
	json_object_object_add(o, "image_size", json_object_new_int64((int64_t)im->size));
	json_object_object_add(o, "mod_time", json_object_new_int64(sb->mod_time));
	for (unsigned i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++)
		if (sb->flags & (1u << i))
			json_object_array_add(fl, json_object_new_string(flag_names[i]));
	json_object_object_add(o, "flags", fl);
	json_object_object_add(o, "inodes", json_object_new_int64(sb->inode_count));
	json_object_object_add(o, "files", json_object_new_int64((int64_t)c->files));
	json_object_object_add(o, "dirs", json_object_new_int64((int64_t)c->dirs));
	json_object_object_add(o, "symlinks", json_object_new_int64((int64_t)c->symlinks));
	json_object_object_add(o, "devices", json_object_new_int64((int64_t)c->devices));
	json_object_object_add(o, "fifos_sockets", json_object_new_int64((int64_t)c->ipc));
	json_object_object_add(o, "fragments", json_object_new_int64(sb->frag_count));
	json_object_object_add(o, "ids", json_object_new_int64(sb->id_count));
	json_object_object_add(o, "xattr_ids", json_object_new_int64(im->xattr_ids));
	json_object_object_add(o, "file_bytes", json_object_new_int64((int64_t)c->file_bytes));
	json_object_object_add(o, "sparse_bytes", json_object_new_int64((int64_t)c->sparse_bytes));
	json_object_object_add(o, "dedup_saved_bytes",
			       json_object_new_int64((int64_t)c->dedup_saved));
	json_object_object_add(o, "dir_index_entries", json_object_new_int64(c->dir_indexes));
	struct json_object *bt = json_object_new_object();
	for (unsigned i = 1; i < 15; i++)
		if (c->by_type[i])
			json_object_object_add(bt, type_names[i],
					       json_object_new_int64((int64_t)c->by_type[i]));
	json_object_object_add(o, "inode_types", bt);
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
						      JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

int cmd_inspect(int argc, char **argv)
{
	struct img im = { .fd = -1 };
	struct counts c = { 0 };
	const char *path = NULL;
	bool json = false;
	char err[512];
	int ret = MKIMAGE_EXIT_ERROR;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			printf("usage: mkimage inspect [--json] IMAGE\n");
			return 0;
		} else if (argv[i][0] == '-' || path) {
			fprintf(stderr, "usage: mkimage inspect [--json] IMAGE\n");
			return MKIMAGE_EXIT_USAGE;
		} else
			path = argv[i];
	}
	if (!path) {
		fprintf(stderr, "usage: mkimage inspect [--json] IMAGE\n");
		return MKIMAGE_EXIT_USAGE;
	}
	if (open_image(&im, path, err, sizeof(err))) {
		fprintf(stderr, "mkimage inspect: %s\n", err);
		goto out;
	}
	if (walk_inodes(&im, &c)) {
		fprintf(stderr, "mkimage inspect: %s: corrupt inode table\n", path);
		goto out;
	}
	if (json)
		print_json(&im, &c);
	else
		print_text(&im, &c);
	ret = 0;
out:
	if (im.fd >= 0)
		close(im.fd);
	free(im.itab);
	return ret;
}
