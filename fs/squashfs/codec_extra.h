/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Decompression contexts for the reader.  codec.h's sqfs_decompress() is stateless, which
 * means a fresh zlib stream / zstd context per block; the reader decompresses every block
 * it serves, so it keeps a pool of these contexts (one per concurrently reading thread)
 * and reuses their state.  Also the only place that reads lzo (liblzo2 loaded at run
 * time, so building needs no lzo headers).
 */
#ifndef STRATA_SQFS_CODEC_EXTRA_H
#define STRATA_SQFS_CODEC_EXTRA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct sqfs_dctx;

/* -EOPNOTSUPP for an unknown compressor id (or lzo when liblzo2 cannot be loaded). */
int sqfs_dctx_supported(uint16_t comp_id);
struct sqfs_dctx *sqfs_dctx_new(uint16_t comp_id);
void sqfs_dctx_free(struct sqfs_dctx *d);
/* Returns the decompressed size, or -EIO when in[] is not valid data for the codec or
 * does not fit in outcap. */
ssize_t sqfs_dctx_decompress(struct sqfs_dctx *d, const void *in, size_t inlen,
			     void *out, size_t outcap);

#endif
