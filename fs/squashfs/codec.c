// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * SquashFS block compressors.  Each writer thread owns a struct sqfs_codec so the
 * compression contexts (zstd CCtx, lz4 HC state) are reused without locking; decompression
 * is stateless so the reader can call it from any thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <lz4hc.h>
#include <zstd.h>
#include <zstd_errors.h>
#include <zlib.h>
#include <lzma.h>

#include "squashfs/codec.h"
#include "squashfs/format.h"

struct sqfs_codec {
	struct sqfs_codec_cfg cfg;
	ZSTD_CCtx *zctx;
	void *lz4hc_state;
};

static const struct {
	const char *name;
	enum sqfs_codec_kind kind;
	int min, max, def;
} codecs[] = {
	/*
	 * Default levels sit where the size stops paying for the time.  Measured against
	 * mksquashfs's defaults (gzip 9, lz4 HC 12, zstd 15) on the Python stdlib, 1.3 GB of
	 * shared libraries and small-file trees: gzip 8 is within 0.3% of the size at ~0.4x
	 * the CPU, lz4 HC 9 (the library's own default) within 0.7% at ~0.2x.
	 * zstd 14: for 16-128 KiB inputs zstd's levels 13-15 are all btopt and differ in
	 * search depth (searchLog 3/4/6) and targetLength (12/32/256); level 14 does 13% fewer
	 * instructions than 15 (cachegrind) for +0.23% size on the bench tree (Python stdlib
	 * and small files), +0.25% on shared libraries, +1.5% on C headers and Perl.  A grid
	 * over level 15's chainLog, hashLog, searchLog and targetLength found nothing that
	 * beats it at the same size; level 13 costs 2.4% in size.
	 */
	{ "none",  SQFS_CODEC_NONE,  0, 0, 0 },
	{ "gzip",  SQFS_CODEC_GZIP,  1, 9, 8 },
	{ "xz",    SQFS_CODEC_XZ,    0, 9, 6 },
	{ "lz4",   SQFS_CODEC_LZ4,   1, 1, 1 },
	{ "lz4hc", SQFS_CODEC_LZ4HC, 1, LZ4HC_CLEVEL_MAX, LZ4HC_CLEVEL_DEFAULT },
	{ "zstd",  SQFS_CODEC_ZSTD,  1, 22, 14 },
};

#define NCODECS (sizeof(codecs) / sizeof(codecs[0]))

int sqfs_codec_parse(const char *name, enum sqfs_codec_kind *kind)
{
	for (size_t i = 0; i < NCODECS; i++)
		if (!strcmp(name, codecs[i].name)) {
			*kind = codecs[i].kind;
			return 0;
		}
	return -EINVAL;
}

const char *sqfs_codec_name(enum sqfs_codec_kind kind)
{
	for (size_t i = 0; i < NCODECS; i++)
		if (codecs[i].kind == kind)
			return codecs[i].name;
	return "?";
}

int sqfs_codec_check(struct sqfs_codec_cfg *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < NCODECS; i++) {
		if (codecs[i].kind != cfg->kind)
			continue;
		if (cfg->level == 0) {
			cfg->level = codecs[i].def;
			return 0;
		}
		if (cfg->level < codecs[i].min || cfg->level > codecs[i].max) {
			if (codecs[i].max == 0)
				snprintf(err, errlen, "compressor %s takes no level",
					 codecs[i].name);
			else
				snprintf(err, errlen, "level %d out of range for %s (%d..%d)",
					 cfg->level, codecs[i].name, codecs[i].min,
					 codecs[i].max);
			return -EINVAL;
		}
		return 0;
	}
	snprintf(err, errlen, "unknown compressor");
	return -EINVAL;
}

uint16_t sqfs_codec_super_id(const struct sqfs_codec_cfg *cfg)
{
	switch (cfg->kind) {
	case SQFS_CODEC_XZ:    return SQFS_COMP_XZ;
	case SQFS_CODEC_LZ4:
	case SQFS_CODEC_LZ4HC: return SQFS_COMP_LZ4;
	case SQFS_CODEC_ZSTD:  return SQFS_COMP_ZSTD;
	default:               return SQFS_COMP_GZIP;
	}
}

uint16_t sqfs_codec_super_flags(const struct sqfs_codec_cfg *cfg)
{
	if (cfg->kind != SQFS_CODEC_NONE)
		return 0;
	return SQFS_FLAG_UNCOMPRESSED_INODES | SQFS_FLAG_UNCOMPRESSED_DATA |
	       SQFS_FLAG_UNCOMPRESSED_FRAGMENTS | SQFS_FLAG_UNCOMPRESSED_XATTRS |
	       SQFS_FLAG_UNCOMPRESSED_IDS;
}

static uint32_t xz_dict_size(uint32_t block_size)
{
	/* The kernel sizes its decoder dictionary this way when no options are stored. */
	return block_size > SQFS_META_SIZE ? block_size : SQFS_META_SIZE;
}

size_t sqfs_codec_options(const struct sqfs_codec_cfg *cfg, void *buf)
{
	switch (cfg->kind) {
	case SQFS_CODEC_LZ4:
	case SQFS_CODEC_LZ4HC: {
		/* The kernel rejects lz4 images without the version word. */
		struct sqfs_comp_opts_lz4 o = {
			.version = sqfs_le32(SQFS_LZ4_LEGACY),
			.flags = sqfs_le32(cfg->kind == SQFS_CODEC_LZ4HC ? SQFS_LZ4_HC : 0),
		};
		memcpy(buf, &o, sizeof(o));
		return sizeof(o);
	}
	case SQFS_CODEC_GZIP: {
		if (cfg->level == 9)
			return 0;
		struct sqfs_comp_opts_gzip o = {
			.compression_level = sqfs_le32(cfg->level),
			.window_size = sqfs_le16(15),
			.strategies = 0,
		};
		memcpy(buf, &o, sizeof(o));
		return sizeof(o);
	}
	case SQFS_CODEC_ZSTD: {
		if (cfg->level == 15)
			return 0;
		struct sqfs_comp_opts_zstd o = { .compression_level = sqfs_le32(cfg->level) };
		memcpy(buf, &o, sizeof(o));
		return sizeof(o);
	}
	default:
		return 0;
	}
}

struct sqfs_codec *sqfs_codec_new(const struct sqfs_codec_cfg *cfg)
{
	struct sqfs_codec *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->cfg = *cfg;
	if (cfg->kind == SQFS_CODEC_ZSTD) {
		c->zctx = ZSTD_createCCtx();
		if (!c->zctx)
			goto fail;
	} else if (cfg->kind == SQFS_CODEC_LZ4HC) {
		c->lz4hc_state = malloc(LZ4_sizeofStateHC());
		if (!c->lz4hc_state)
			goto fail;
	}
	return c;
fail:
	sqfs_codec_free(c);
	return NULL;
}

void sqfs_codec_free(struct sqfs_codec *c)
{
	if (!c)
		return;
	ZSTD_freeCCtx(c->zctx);
	free(c->lz4hc_state);
	free(c);
}

static ssize_t xz_compress(const struct sqfs_codec_cfg *cfg, const void *in, size_t inlen,
			   void *out, size_t outcap)
{
	lzma_options_lzma opt;
	lzma_filter filters[2];
	size_t pos = 0;

	if (lzma_lzma_preset(&opt, (uint32_t)cfg->level))
		return -EINVAL;
	opt.dict_size = xz_dict_size(cfg->block_size);
	filters[0].id = LZMA_FILTER_LZMA2;
	filters[0].options = &opt;
	filters[1].id = LZMA_VLI_UNKNOWN;
	filters[1].options = NULL;
	lzma_ret r = lzma_stream_buffer_encode(filters, LZMA_CHECK_CRC32, NULL, in, inlen,
					       out, &pos, outcap);
	if (r == LZMA_BUF_ERROR)
		return 0;
	if (r != LZMA_OK)
		return r == LZMA_MEM_ERROR ? -ENOMEM : -EIO;
	return (ssize_t)pos;
}

ssize_t sqfs_codec_compress(struct sqfs_codec *c, const void *in, size_t inlen,
			    void *out, size_t outcap)
{
	ssize_t n = 0;

	if (inlen < 2)
		return 0;
	/* Anything not strictly smaller is stored raw, so never let it grow past inlen-1. */
	if (outcap > inlen - 1)
		outcap = inlen - 1;

	switch (c->cfg.kind) {
	case SQFS_CODEC_NONE:
		return 0;
	case SQFS_CODEC_LZ4:
		n = LZ4_compress_default(in, out, (int)inlen, (int)outcap);
		return n > 0 ? n : 0;
	case SQFS_CODEC_LZ4HC:
		n = LZ4_compress_HC_extStateHC(c->lz4hc_state, in, out, (int)inlen,
					       (int)outcap, c->cfg.level);
		return n > 0 ? n : 0;
	case SQFS_CODEC_ZSTD: {
		size_t r = ZSTD_compressCCtx(c->zctx, out, outcap, in, inlen, c->cfg.level);
		if (ZSTD_isError(r))
			return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? 0 : -EIO;
		return (ssize_t)r;
	}
	case SQFS_CODEC_GZIP: {
		uLongf dlen = outcap;
		int r = compress2(out, &dlen, in, inlen, c->cfg.level);
		if (r == Z_BUF_ERROR)
			return 0;
		if (r != Z_OK)
			return r == Z_MEM_ERROR ? -ENOMEM : -EIO;
		return (ssize_t)dlen;
	}
	case SQFS_CODEC_XZ:
		return xz_compress(&c->cfg, in, inlen, out, outcap);
	}
	return -EINVAL;
}

static ssize_t gzip_decompress(const void *in, size_t inlen, void *out, size_t outcap)
{
	uLongf dlen = outcap;
	uLong slen = inlen;
	int r = uncompress2(out, &dlen, in, &slen);

	if (r == Z_MEM_ERROR)
		return -ENOMEM;
	return r == Z_OK ? (ssize_t)dlen : -EIO;
}

static ssize_t xz_decompress(const void *in, size_t inlen, void *out, size_t outcap)
{
	uint64_t memlimit = 256u << 20;
	size_t ipos = 0, opos = 0;
	lzma_ret r = lzma_stream_buffer_decode(&memlimit, 0, NULL, in, &ipos, inlen,
					       out, &opos, outcap);

	if (r == LZMA_MEM_ERROR)
		return -ENOMEM;
	return r == LZMA_OK ? (ssize_t)opos : -EIO;
}

ssize_t sqfs_decompress(uint16_t comp_id, const void *in, size_t inlen,
			void *out, size_t outcap)
{
	switch (comp_id) {
	case SQFS_COMP_GZIP:
		return gzip_decompress(in, inlen, out, outcap);
	case SQFS_COMP_XZ:
		return xz_decompress(in, inlen, out, outcap);
	case SQFS_COMP_LZ4: {
		int n = LZ4_decompress_safe(in, out, (int)inlen, (int)outcap);
		return n >= 0 ? n : -EIO;
	}
	case SQFS_COMP_ZSTD: {
		size_t r = ZSTD_decompress(out, outcap, in, inlen);
		return ZSTD_isError(r) ? -EIO : (ssize_t)r;
	}
	default:
		return -EOPNOTSUPP;
	}
}

const char *sqfs_compressor_id_name(uint16_t comp_id)
{
	static const char *const names[] = { "?", "gzip", "lzma", "lzo", "xz", "lz4", "zstd" };

	return comp_id < sizeof(names) / sizeof(names[0]) ? names[comp_id] : "?";
}
