/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * SquashFS writer: flatten a stack of layers (top first, like lowerdir=) into one
 * SquashFS 4.0 image holding their merged view.  Used by mkimage and the storage driver.
 *
 *	struct sqfs_writer_opts o;
 *	sqfs_writer_opts_init(&o);
 *	o.codec.kind = SQFS_CODEC_ZSTD;
 *	if (sqfs_squash_layers(layers, n, "out.sqfs", &o, &st, err, sizeof(err)) < 0)
 *		fprintf(stderr, "%s\n", err);
 *
 * Output is written to a temporary file next to `out` and renamed over it at the end, so
 * a failure never leaves a partial image at `out`.
 */
#ifndef STRATA_SQUASHFS_WRITER_H
#define STRATA_SQUASHFS_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "squashfs/codec.h"

struct sqfs_squash_stats {
	/* after the walk */
	uint64_t files;          /* regular files (names, hard links included) */
	uint64_t dirs, symlinks, specials;
	uint64_t hardlinks;      /* names that share an earlier name's inode */
	uint64_t total_bytes;    /* bytes of regular file data to read */
	/* what the stack hides and the image leaves out, as `mkimage audit` counts it
	 * (fs/overlay/audit.h): entries of lower layers deleted by a whiteout, under an
	 * opaque directory or replaced by a higher entry; bytes of regular files, a hard-linked
	 * file once and not while another link shows.  Entries below --exclude'd directories
	 * are not walked, so not counted.  hidden_known is false when a hidden entry could
	 * not be read (the image is still complete; only the count is not). */
	bool hidden_known;
	uint64_t hidden_files;   /* hidden entries that are not directories */
	uint64_t hidden_dirs;
	uint64_t hidden_bytes;
	/* running, then final */
	int walking;             /* 1 while the walk is still finding files (read atomically) */
	uint64_t files_done;
	uint64_t bytes_in;       /* file data read so far */
	uint64_t bytes_out;      /* image bytes written so far */
	uint64_t sparse_bytes;   /* zero blocks stored as holes */
	uint64_t dup_files;      /* files whose blocks were shared with an identical file */
	uint64_t dup_bytes;      /* bytes not stored thanks to whole-file dedup */
	uint64_t dup_frags;      /* tails shared with an identical tail */
	uint64_t dup_frag_bytes;
	uint64_t hash_collisions;/* hash matches whose bytes differed (not merged) */
	/* final */
	uint64_t image_bytes;
	uint32_t inodes, fragments, ids, xattr_ids;
	double seconds;
	double walk_seconds, data_seconds;   /* the phases: metadata walk, file data */
};

/* Called from the reading thread about 10 times a second and once at the end (final=1). */
typedef void (*sqfs_progress_fn)(void *ctx, const struct sqfs_squash_stats *st, int final);

struct sqfs_writer_opts {
	struct sqfs_codec_cfg codec;   /* kind, level (0 = default), block_size */
	int threads;                   /* compression workers; 0 = number of CPUs */
	int64_t mtime;                 /* -1: keep; else every inode and the superblock */
	int64_t force_uid, force_gid;  /* -1: keep */
	bool no_xattrs;
	bool no_dedup;
	const char *const *excludes;   /* fnmatch patterns on the path ("a/b") or a basename */
	int nexcludes;
	sqfs_progress_fn progress;
	void *progress_ctx;
};

void sqfs_writer_opts_init(struct sqfs_writer_opts *o);

/* Flatten layers[0..n-1] (top first; directories or SquashFS images) into `out`.
 * Returns 0, or a negative errno with a message naming the culprit in err[errlen]. */
int sqfs_squash_layers(const char *const *layers, int n, const char *out,
		       const struct sqfs_writer_opts *o, struct sqfs_squash_stats *st,
		       char *err, size_t errlen);

/* Test hook: when this environment variable is "1" every content hash is the same value,
 * so dedup must rely on comparing bytes. */
#define SQFS_ENV_FORCE_COLLISION "STRATA_MKIMAGE_FORCE_HASH_COLLISION"

#endif
