// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * libFuzzer target over the SquashFS reader: the input is an image.  Open it, walk the
 * whole tree (bounded), look every name up again (from the index, and through a cursor in
 * listing order as readdirplus does, with one lookup out of order), read files (head and
 * tail), symlinks, xattrs and the export table.  Errors are expected; crashes, leaks, UB and hangs are not.
 * Build and run: make fuzz [FUZZ_SECONDS=60].
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "squashfs/reader.h"

#define MAX_ENTRIES 4000
#define MAX_DEPTH   24

struct fz {
	struct sqfs_reader *r;
	int entries;
	int depth;
	const struct sqfs_inode *dir;
	struct sqfs_cursor *cur;	/* the current directory's listing-order cursor */
	char first[256];		/* its first name, looked up again out of order */
	size_t first_len;
};

static void quiet(void *ctx, const char *msg)
{
	(void)ctx;
	(void)msg;
}

static void fz_file(struct fz *z, const struct sqfs_inode *ino)
{
	static char buf[1 << 18];
	struct sqfs_file *f;

	if (sqfs_file_open(z->r, ino, &f))
		return;
	sqfs_file_pread(f, buf, sizeof(buf), 0);
	if (ino->size > 70000)
		sqfs_file_pread(f, buf, 70000, ino->size - 70000);
	sqfs_file_close(f);
	sqfs_pread(z->r, ino, buf, 100, ino->size / 2);
}

static void fz_xattrs(struct fz *z, const struct sqfs_inode *ino)
{
	static char names[1 << 16], val[1 << 16];
	ssize_t n = sqfs_listxattr(z->r, ino, names, sizeof(names));

	sqfs_listxattr(z->r, ino, NULL, 0);
	for (char *k = names; n > 0 && k < names + n; k += strlen(k) + 1) {
		sqfs_getxattr(z->r, ino, k, NULL, 0);
		sqfs_getxattr(z->r, ino, k, val, sizeof(val));
	}
	sqfs_getxattr(z->r, ino, "user.nonexistent", val, sizeof(val));
}

static void fz_dir(struct fz *z, const struct sqfs_inode *dir);

static int fz_entry(void *ctx, const char *name, size_t len, unsigned type, uint32_t nr,
		    uint64_t ref)
{
	struct fz *z = ctx;
	struct sqfs_inode ino;
	struct stat st;
	uint64_t r2;
	char link[4096];

	(void)type;
	if (++z->entries > MAX_ENTRIES)
		return 1;
	sqfs_lookup(z->r, z->dir, name, len, &r2);
	sqfs_lookup_inode(z->r, z->dir, name, len, &ino);
	sqfs_lookup_inode_at(z->r, z->dir, name, len, &ino, z->cur);
	if (!z->first_len && len < sizeof(z->first)) {
		memcpy(z->first, name, len);
		z->first_len = len;
	} else if (z->first_len && z->entries % 7 == 0) {
		/* behind the cursor: must fall back to the index, not scan on */
		sqfs_lookup_inode_at(z->r, z->dir, z->first, z->first_len, &ino, z->cur);
	}
	sqfs_export_lookup(z->r, nr, &r2);
	if (sqfs_read_inode(z->r, ref, &ino))
		return 0;
	sqfs_inode_stat(z->r, &ino, &st);
	fz_xattrs(z, &ino);
	if (ino.type == SQFS_INODE_FILE)
		fz_file(z, &ino);
	else if (ino.type == SQFS_INODE_SYMLINK)
		sqfs_readlink(z->r, &ino, link, sizeof(link));
	else if (ino.type == SQFS_INODE_DIR && z->depth < MAX_DEPTH)
		fz_dir(z, &ino);
	return 0;
}

static void fz_dir(struct fz *z, const struct sqfs_inode *dir)
{
	const struct sqfs_inode *saved = z->dir;
	struct sqfs_cursor *saved_cur = z->cur;
	char saved_first[sizeof(z->first)];
	size_t saved_len = z->first_len;
	struct sqfs_inode ino;
	uint64_t ref;

	memcpy(saved_first, z->first, saved_len);
	z->dir = dir;
	z->cur = sqfs_cursor_new();
	z->first_len = 0;
	if (!z->cur)
		abort();
	z->depth++;
	sqfs_lookup(z->r, dir, "zzzz", 4, &ref);
	sqfs_readdir(z->r, dir, fz_entry, z);
	sqfs_lookup_inode_at(z->r, dir, "zzzz", 4, &ino, z->cur);
	z->depth--;
	sqfs_cursor_free(z->cur);
	z->cur = saved_cur;
	memcpy(z->first, saved_first, saved_len);
	z->first_len = saved_len;
	z->dir = saved;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sqfs_reader_opts o = {
		.data_cache_bytes = 1 << 20, .meta_cache_bytes = 1 << 18, .log = quiet,
	};
	struct fz z = { 0 };
	struct sqfs_inode root;
	char err[256];
	int fd = memfd_create("fuzz-image", MFD_CLOEXEC);

	if (fd < 0)
		abort();
	if (size && write(fd, data, size) != (ssize_t)size)
		abort();
	if (sqfs_open_fd(fd, &o, &z.r, err, sizeof(err)) == 0) {
		if (sqfs_read_inode(z.r, sqfs_root_ref(z.r), &root) == 0) {
			fz_xattrs(&z, &root);
			fz_dir(&z, &root);
		}
		sqfs_close(z.r);
	}
	close(fd);
	return 0;
}
