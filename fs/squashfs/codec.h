/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Block compressors for SquashFS: lz4 (and lz4 HC), zstd, gzip, xz, and "none".
 * Shared by the writer (one struct sqfs_codec per worker thread: it owns the compression
 * contexts) and the reader (sqfs_decompress() is stateless and thread-safe).
 */
#ifndef STRATA_SQUASHFS_CODEC_H
#define STRATA_SQUASHFS_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* What the user picked.  SQFS_CODEC_NONE is written as gzip with every block raw. */
enum sqfs_codec_kind {
	SQFS_CODEC_NONE = 0,
	SQFS_CODEC_GZIP,
	SQFS_CODEC_XZ,
	SQFS_CODEC_LZ4,
	SQFS_CODEC_LZ4HC,
	SQFS_CODEC_ZSTD,
};

struct sqfs_codec_cfg {
	enum sqfs_codec_kind kind;
	int level;              /* 0 = the compressor's default */
	uint32_t block_size;
};

struct sqfs_codec;

/* "lz4", "lz4hc", "zstd", "gzip", "xz", "none" -> kind; -EINVAL for others. */
int sqfs_codec_parse(const char *name, enum sqfs_codec_kind *kind);
const char *sqfs_codec_name(enum sqfs_codec_kind kind);
/* Check the level for the kind (0 = default) and fill in the default; -EINVAL and a
 * message when out of range. */
int sqfs_codec_check(struct sqfs_codec_cfg *cfg, char *err, size_t errlen);
/* Superblock compressor id and flags implied by the configuration. */
uint16_t sqfs_codec_super_id(const struct sqfs_codec_cfg *cfg);
uint16_t sqfs_codec_super_flags(const struct sqfs_codec_cfg *cfg);
/* Compressor options to store after the superblock (little-endian, ready to write) in
 * buf (>= 16 bytes); returns their size, 0 when none are needed. */
size_t sqfs_codec_options(const struct sqfs_codec_cfg *cfg, void *buf);

struct sqfs_codec *sqfs_codec_new(const struct sqfs_codec_cfg *cfg);
void sqfs_codec_free(struct sqfs_codec *c);
/* Compress in[inlen] into out[outcap].  Returns the compressed size when it is smaller
 * than inlen, 0 when the block should be stored raw, -errno on failure. */
ssize_t sqfs_codec_compress(struct sqfs_codec *c, const void *in, size_t inlen,
			    void *out, size_t outcap);

/* Decompress a block written by compressor `comp_id` (superblock id).  Returns the
 * decompressed size or -errno (-EIO for corrupt data, -EOPNOTSUPP for lzma/lzo). */
ssize_t sqfs_decompress(uint16_t comp_id, const void *in, size_t inlen,
			void *out, size_t outcap);
/* Superblock compressor id -> name ("gzip", "lzma", "lzo", "xz", "lz4", "zstd", "?"). */
const char *sqfs_compressor_id_name(uint16_t comp_id);

#endif
