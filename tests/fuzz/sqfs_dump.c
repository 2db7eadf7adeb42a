// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * sqfs-dump [-j N] IMAGE: walk a SquashFS image with strata's reader and print one line per
 * entry, in the format tests/_sqfs.py builds from a mounted tree, so the two can be
 * compared.  Every entry is also found again by name (directory index path) and by inode
 * number (export table) to check those paths agree with the walk.
 *
 *   path \t mode \t uid \t gid \t mtime \t size \t nlink \t rdev \t data \t xattrs
 *
 * data: crc32 of a file's contents, a symlink's target, else "-".
 * xattrs: name=hexvalue joined by ",", sorted as stored (mksquashfs sorts them).
 * -j N walks with N threads at once over one reader (small caches, so they evict each
 * other's blocks) and checks they all saw the same thing.
 * Exit status 0 when everything read, 1 on read errors (EIO etc.), 2 on open failure.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <zlib.h>

#include "squashfs/reader.h"

struct walk {
	struct sqfs_reader *r;
	FILE *out;
	int errors;
	char path[8192];
	size_t plen;
};

static void put_hex(FILE *out, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		fprintf(out, "%02x", p[i]);
}

static void dump_xattrs(struct walk *w, const struct sqfs_inode *ino)
{
	static __thread char names[65536];
	static __thread unsigned char val[65536];
	ssize_t n = sqfs_listxattr(w->r, ino, names, sizeof(names));
	int first = 1;

	if (n < 0) {
		fprintf(stderr, "%s: listxattr: %s\n", w->path, strerror(-n));
		w->errors++;
		return;
	}
	for (char *k = names; k < names + n; k += strlen(k) + 1) {
		ssize_t v = sqfs_getxattr(w->r, ino, k, val, sizeof(val));

		if (v < 0) {
			fprintf(stderr, "%s: getxattr %s: %s\n", w->path, k, strerror(-v));
			w->errors++;
			continue;
		}
		fprintf(w->out, "%s%s=", first ? "" : ",", k);
		put_hex(w->out, val, v);
		first = 0;
	}
	if (first)
		fprintf(w->out, "-");
}

static void dump_data(struct walk *w, const struct sqfs_inode *ino)
{
	static __thread char buf[1 << 17];
	struct sqfs_file *f;
	uLong crc = crc32(0, NULL, 0);
	uint64_t off = 0;
	int ret;

	if (ino->type == SQFS_INODE_SYMLINK) {
		ssize_t n = sqfs_readlink(w->r, ino, buf, sizeof(buf));

		if (n < 0) {
			w->errors++;
			fprintf(w->out, "ERR");
			return;
		}
		fwrite(buf, 1, n, w->out);
		return;
	}
	if (ino->type != SQFS_INODE_FILE) {
		fprintf(w->out, "-");
		return;
	}
	ret = sqfs_file_open(w->r, ino, &f);
	if (ret) {
		fprintf(stderr, "%s: open: %s\n", w->path, strerror(-ret));
		w->errors++;
		fprintf(w->out, "ERR");
		return;
	}
	for (;;) {
		/* odd read sizes exercise reads that straddle blocks */
		ssize_t n = sqfs_file_pread(f, buf, 100000, off);

		if (n < 0) {
			fprintf(stderr, "%s: read at %llu: %s\n", w->path,
				(unsigned long long)off, strerror(-n));
			w->errors++;
			break;
		}
		if (n == 0)
			break;
		crc = crc32(crc, (const Bytef *)buf, n);
		off += n;
	}
	sqfs_file_close(f);
	if (off != ino->size)
		w->errors++;
	fprintf(w->out, "%08lx", crc);
}

static void dump_one(struct walk *w, const struct sqfs_inode *ino)
{
	struct stat st;

	sqfs_inode_stat(w->r, ino, &st);
	fprintf(w->out, "%s\t%o\t%u\t%u\t%ld\t%lld\t%lu\t%u:%u\t", w->plen ? w->path : "/",
	       st.st_mode, st.st_uid, st.st_gid, (long)st.st_mtime,
	       S_ISDIR(st.st_mode) ? 0LL : (long long)st.st_size, (unsigned long)st.st_nlink,
	       major(st.st_rdev), minor(st.st_rdev));
	dump_data(w, ino);
	fprintf(w->out, "\t");
	dump_xattrs(w, ino);
	fprintf(w->out, "\n");
}

static int walk_dir(struct walk *w, const struct sqfs_inode *dir);

static int walk_entry(void *ctx, const char *name, size_t len, unsigned type,
		      uint32_t ino_nr, uint64_t ref)
{
	struct walk *w = ctx;
	struct sqfs_inode ino;
	size_t saved = w->plen;
	uint64_t ref2;
	int ret;

	if (saved + len + 2 > sizeof(w->path))
		return 0;
	w->path[w->plen++] = '/';
	memcpy(w->path + w->plen, name, len);
	w->plen += len;
	w->path[w->plen] = 0;
	ret = sqfs_read_inode(w->r, ref, &ino);
	if (ret) {
		fprintf(stderr, "%s: inode: %s\n", w->path, strerror(-ret));
		w->errors++;
		goto out;
	}
	if (ino.type != type || ino.ino != ino_nr) {
		fprintf(stderr, "%s: entry type/ino disagree with the inode\n", w->path);
		w->errors++;
	}
	if (sqfs_export_lookup(w->r, ino.ino, &ref2) == 0 && ref2 != ref) {
		fprintf(stderr, "%s: export table disagrees\n", w->path);
		w->errors++;
	}
	dump_one(w, &ino);
	if (ino.type == SQFS_INODE_DIR)
		walk_dir(w, &ino);
out:
	w->plen = saved;
	w->path[saved] = 0;
	return 0;
}

static int walk_dir(struct walk *w, const struct sqfs_inode *dir)
{
	int ret = sqfs_readdir(w->r, dir, walk_entry, w);

	if (ret < 0) {
		fprintf(stderr, "%s: readdir: %s\n", w->path, strerror(-ret));
		w->errors++;
	}
	return 0;
}

/* Look every listed name up through sqfs_lookup() and compare with the walk. */
struct lk {
	struct sqfs_reader *r;
	const struct sqfs_inode *dir;
	int errors;
};

static int lookup_check(void *ctx, const char *name, size_t len, unsigned type,
			uint32_t ino, uint64_t ref)
{
	struct lk *k = ctx;
	struct sqfs_inode child;
	int ret = sqfs_lookup_inode(k->r, k->dir, name, len, &child);

	(void)type;
	(void)ino;
	if (ret || child.ref != ref) {
		fprintf(stderr, "lookup of '%.*s' failed: %s\n", (int)len, name,
			ret ? strerror(-ret) : "wrong inode");
		k->errors++;
	}
	return 0;
}

static int lookup_all(struct sqfs_reader *r, const struct sqfs_inode *dir);

static int lookup_recurse(void *ctx, const char *name, size_t len, unsigned type,
			  uint32_t ino_nr, uint64_t ref)
{
	struct lk *k = ctx;
	struct sqfs_inode ino;

	(void)name;
	(void)len;
	(void)ino_nr;
	if (type == SQFS_INODE_DIR && sqfs_read_inode(k->r, ref, &ino) == 0)
		k->errors += lookup_all(k->r, &ino);
	return 0;
}

static int lookup_all(struct sqfs_reader *r, const struct sqfs_inode *dir)
{
	struct lk k = { r, dir, 0 };
	uint64_t ref;

	sqfs_readdir(r, dir, lookup_check, &k);
	if (sqfs_lookup(r, dir, "\x7f-no-such-name", 14, &ref) != -ENOENT ||
	    sqfs_lookup(r, dir, "", 0, &ref) != -ENOENT)
		k.errors++;
	sqfs_readdir(r, dir, lookup_recurse, &k);
	return k.errors;
}

static int dump_all(struct sqfs_reader *r, FILE *out)
{
	struct walk *w = calloc(1, sizeof(*w));
	struct sqfs_inode root;
	int ret, errors;

	if (!w)
		return 1;
	w->r = r;
	w->out = out;
	ret = sqfs_read_inode(r, sqfs_root_ref(r), &root);
	if (ret) {
		fprintf(stderr, "root: %s\n", strerror(-ret));
		free(w);
		return 1;
	}
	dump_one(w, &root);
	walk_dir(w, &root);
	w->errors += lookup_all(r, &root);
	errors = w->errors;
	free(w);
	return errors;
}

/* -j N: N threads walk the same reader at once into memory; all must agree. */
struct job {
	pthread_t t;
	struct sqfs_reader *r;
	char *buf;
	size_t len;
	int errors;
};

static void *job_run(void *arg)
{
	struct job *j = arg;
	FILE *f = open_memstream(&j->buf, &j->len);

	if (!f) {
		j->errors = 1;
		return NULL;
	}
	j->errors = dump_all(j->r, f);
	fclose(f);
	return NULL;
}

static int dump_parallel(struct sqfs_reader *r, int n)
{
	struct job *jobs = calloc(n, sizeof(*jobs));
	int errors = 0;

	if (!jobs)
		return 1;
	for (int i = 0; i < n; i++) {
		jobs[i].r = r;
		if (pthread_create(&jobs[i].t, NULL, job_run, &jobs[i]))
			return 1;
	}
	for (int i = 0; i < n; i++) {
		pthread_join(jobs[i].t, NULL);
		errors += jobs[i].errors;
		if (i && (jobs[i].len != jobs[0].len || memcmp(jobs[i].buf, jobs[0].buf, jobs[0].len))) {
			fprintf(stderr, "thread %d saw a different image than thread 0\n", i);
			errors++;
		}
	}
	if (jobs[0].buf)
		fwrite(jobs[0].buf, 1, jobs[0].len, stdout);
	for (int i = 0; i < n; i++)
		free(jobs[i].buf);
	free(jobs);
	return errors;
}

int main(int argc, char **argv)
{
	struct sqfs_reader_opts o = { .data_cache_bytes = 1 << 20, .meta_cache_bytes = 1 << 18 };
	struct sqfs_reader *r;
	char err[256];
	int threads = 1, errors, ret;

	if (argc == 4 && !strcmp(argv[1], "-j")) {
		threads = atoi(argv[2]);
		argv += 2;
		argc -= 2;
	}
	if (argc != 2 || threads < 1) {
		fprintf(stderr, "usage: sqfs-dump [-j THREADS] IMAGE\n");
		return 2;
	}
	ret = sqfs_open(argv[1], &o, &r, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "%s: %s\n", argv[1], err);
		return 2;
	}
	errors = threads > 1 ? dump_parallel(r, threads) : dump_all(r, stdout);
	sqfs_close(r);
	return errors ? 1 : 0;
}
