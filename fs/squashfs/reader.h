/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A thread-safe SquashFS 4.0 reader.
 *
 * One image, one fd, pread() only: any number of threads may call any function on the
 * same reader at once.  Metadata blocks (inodes, directories, lookup tables) and data
 * blocks (file blocks, fragment blocks) are kept decompressed in two sharded LRU caches
 * with a memory bound.
 *
 * Inodes are named by their inode reference (block offset in the inode table << 16 |
 * offset inside the uncompressed block), the same 48-bit value the directory table and
 * the export table store.  Decoding one is a cache hit in the common case.
 *
 * Corrupt images: every offset, size, count and index read from the image is checked
 * against the image (and the table it belongs to) before use.  A bad block gives -EIO and
 * one log line per distinct bad block; a bad superblock makes sqfs_open() fail with a
 * message naming what is wrong.  Nothing in here trusts the image to terminate a loop.
 *
 * All functions return 0 (or a byte count) on success and a negative errno on failure.
 */
#ifndef STRATA_SQFS_READER_H
#define STRATA_SQFS_READER_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/stat.h>

#include "squashfs/format.h"

struct sqfs_reader;

struct sqfs_reader_opts {
	size_t data_cache_bytes;   /* bound for decompressed data/fragment blocks; 0 = default
				    * (SQFS_DEFAULT_DATA_BLOCKS blocks) */
	size_t meta_cache_bytes;   /* bound for decompressed metadata blocks; 0 = default */
	/* Where corruption reports go (one line each, no newline); NULL = stderr. */
	void (*log)(void *ctx, const char *msg);
	void *log_ctx;
};

/* Whole data blocks read into the caller's buffer bypass the data cache, so it holds
 * fragment blocks and partly read blocks: a few dozen keep what neighbouring reads share
 * (4 MiB at the usual 128 KiB blocks), and every MiB more is fresh memory that costs a
 * page fault per page to fill before it pays back. */
#define SQFS_DEFAULT_DATA_BLOCKS 32
#define SQFS_DEFAULT_META_CACHE  (16u << 20)

/* Where a run of bytes in a metadata table starts: the disk offset of the metadata block
 * header and the offset inside its uncompressed contents. */
struct sqfs_mpos {
	uint64_t block;
	uint32_t offset;
};

/* A decoded inode, host byte order.  Small and copyable. */
struct sqfs_inode {
	uint64_t ref;        /* the inode reference it was read from */
	uint32_t ino;        /* inode number (1..inode_count) */
	uint16_t type;       /* SQFS_INODE_DIR..SQFS_INODE_SOCKET (extended ones map to basic) */
	uint16_t ext;        /* non-zero if it was stored as an extended inode */
	mode_t mode;         /* S_IFxxx | permission bits */
	uid_t uid;
	gid_t gid;
	uint32_t mtime;
	uint32_t nlink;
	uint64_t size;       /* st_size: file size, symlink length, directory listing size + 3 */
	uint32_t rdev;       /* devices: encoded like the kernel's new_encode_dev() */
	uint32_t xattr;      /* index into the xattr id table or SQFS_INVALID_XATTR */
	union {
		struct {
			uint32_t start;          /* block of the listing, relative to the dir table */
			uint16_t offset;         /* offset inside that block */
			uint32_t listing;        /* bytes of listing (file_size - 3) */
			uint32_t parent;         /* inode number of the parent */
			uint16_t idx_count;      /* directory index entries (extended only) */
			struct sqfs_mpos idx;    /* where the index entries start */
		} dir;
		struct {
			uint64_t blocks_start;   /* disk offset of the first data block */
			uint32_t frag;           /* fragment index or SQFS_INVALID_FRAG */
			uint32_t frag_offset;    /* offset of the tail inside the fragment block */
			uint64_t sparse;
			uint32_t nblocks;        /* full data blocks (plus a partial one without frag) */
			struct sqfs_mpos blist;  /* where the u32 block size list starts */
		} file;
		struct {
			struct sqfs_mpos target; /* where the target bytes start */
		} link;
	};
};

/* Superblock facts callers may want (statfs, messages). */
struct sqfs_info {
	uint32_t inode_count;
	uint32_t block_size;
	uint32_t mtime;
	uint16_t compression;
	uint16_t flags;
	uint64_t bytes_used;
	uint64_t root_ref;
	uint32_t fragment_count;
	uint16_t id_count;
	int has_export;
	int has_xattrs;
};

/* Open the image at path (or use fd; the reader dup()s it, the caller keeps its own).
 * On failure returns a negative errno and writes a message into err[errlen]. */
int sqfs_open(const char *path, const struct sqfs_reader_opts *opts,
	      struct sqfs_reader **out, char *err, size_t errlen);
int sqfs_open_fd(int fd, const struct sqfs_reader_opts *opts,
		 struct sqfs_reader **out, char *err, size_t errlen);
void sqfs_close(struct sqfs_reader *r);

const struct sqfs_info *sqfs_get_info(const struct sqfs_reader *r);
/* Decompressed-cache statistics: hits and misses of the data and metadata caches. */
void sqfs_cache_stats(struct sqfs_reader *r, uint64_t st[4]);

int sqfs_read_inode(struct sqfs_reader *r, uint64_t ref, struct sqfs_inode *ino);
static inline uint64_t sqfs_root_ref(const struct sqfs_reader *r)
{
	return sqfs_get_info(r)->root_ref;
}
/* lstat()-like view of an inode; st_dev is left 0, st_ino is the image's inode number. */
void sqfs_inode_stat(const struct sqfs_reader *r, const struct sqfs_inode *ino,
		     struct stat *st);

/* Directory walk: fill() gets each entry except "." and "..", in listing order
 * (sorted by name); returning non-zero stops the walk and is passed back. */
typedef int (*sqfs_dirent_fn)(void *ctx, const char *name, size_t len, unsigned type,
			      uint32_t ino, uint64_t ref);
int sqfs_readdir(struct sqfs_reader *r, const struct sqfs_inode *dir,
		 sqfs_dirent_fn fill, void *ctx);
/* Find name in dir (uses the directory index when the inode has one): -ENOENT if absent. */
int sqfs_lookup(struct sqfs_reader *r, const struct sqfs_inode *dir, const char *name,
		size_t len, uint64_t *ref);
/* sqfs_lookup() and sqfs_read_inode() in one, refusing (-EIO) a child directory whose
 * parent inode number is not dir's: that is what keeps a corrupt image from presenting
 * a directory cycle. */
int sqfs_lookup_inode(struct sqfs_reader *r, const struct sqfs_inode *dir, const char *name,
		      size_t len, struct sqfs_inode *child);
/* Where the last successful lookup in a directory ended.  Names looked up in listing
 * order (as readdirplus does) then cost one entry each instead of a scan from the nearest
 * directory index point.  One user at a time, with one reader. */
struct sqfs_cursor;
struct sqfs_cursor *sqfs_cursor_new(void);
void sqfs_cursor_free(struct sqfs_cursor *c);
/* sqfs_lookup_inode() starting at *c when name sorts after c's name and c is further on
 * than the index; *c is updated on success.  c may be NULL. */
int sqfs_lookup_inode_at(struct sqfs_reader *r, const struct sqfs_inode *dir, const char *name,
			 size_t len, struct sqfs_inode *child, struct sqfs_cursor *c);
/* Find an inode by number through the export table: -EOPNOTSUPP without one. */
int sqfs_export_lookup(struct sqfs_reader *r, uint32_t ino, uint64_t *ref);

/* The target of a symlink, NUL-terminated if it fits; returns its full length. */
ssize_t sqfs_readlink(struct sqfs_reader *r, const struct sqfs_inode *ino,
		      char *buf, size_t size);

/* A regular file prepared for reading: the disk offset of every data block is computed
 * once, so a read at any offset is O(1) in the block list. */
struct sqfs_file;
int sqfs_file_open(struct sqfs_reader *r, const struct sqfs_inode *ino, struct sqfs_file **f);
ssize_t sqfs_file_pread(struct sqfs_file *f, void *buf, size_t size, uint64_t off);
void sqfs_file_close(struct sqfs_file *f);
/* One-shot read without keeping a file (walks the block list every call). */
ssize_t sqfs_pread(struct sqfs_reader *r, const struct sqfs_inode *ino, void *buf,
		   size_t size, uint64_t off);

/* Extended attributes with the full "user." / "trusted." / "security." name.
 * size 0 asks for the needed size, like the syscalls; -ENODATA if absent, -ERANGE if
 * buf is too small. */
ssize_t sqfs_getxattr(struct sqfs_reader *r, const struct sqfs_inode *ino,
		      const char *name, void *buf, size_t size);
ssize_t sqfs_listxattr(struct sqfs_reader *r, const struct sqfs_inode *ino,
		       char *buf, size_t size);

#endif
