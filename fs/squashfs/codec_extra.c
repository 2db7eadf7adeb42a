// SPDX-License-Identifier: GPL-2.0-or-later
/* Reusable decompression contexts for the reader: see codec_extra.h. */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include "squashfs/format.h"
#include "squashfs/codec_extra.h"

/* liblzo2's lzo1x_decompress_safe(); lzo_uint is unsigned long on Linux. */
typedef int (*lzo_decompress_fn)(const unsigned char *src, unsigned long src_len,
				 unsigned char *dst, unsigned long *dst_len, void *wrkmem);

struct sqfs_dctx {
	uint16_t comp;
	int zinit;
	z_stream z;
	ZSTD_DCtx *zstd;
	void *lzo_lib;
	lzo_decompress_fn lzo;
};

static void *lzo_open(lzo_decompress_fn *fn)
{
	void *h = dlopen("liblzo2.so.2", RTLD_NOW | RTLD_LOCAL);

	if (!h)
		return NULL;
	*fn = (lzo_decompress_fn)dlsym(h, "lzo1x_decompress_safe");
	if (!*fn) {
		dlclose(h);
		return NULL;
	}
	return h;
}

int sqfs_dctx_supported(uint16_t comp_id)
{
	switch (comp_id) {
	case SQFS_COMP_GZIP:
	case SQFS_COMP_LZMA:
	case SQFS_COMP_XZ:
	case SQFS_COMP_LZ4:
	case SQFS_COMP_ZSTD:
		return 0;
	case SQFS_COMP_LZO: {
		lzo_decompress_fn fn;
		void *h = lzo_open(&fn);

		if (!h)
			return -EOPNOTSUPP;
		dlclose(h);
		return 0;
	}
	}
	return -EOPNOTSUPP;
}

struct sqfs_dctx *sqfs_dctx_new(uint16_t comp_id)
{
	struct sqfs_dctx *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->comp = comp_id;
	switch (comp_id) {
	case SQFS_COMP_GZIP:
		if (inflateInit(&d->z) != Z_OK)
			goto fail;
		d->zinit = 1;
		break;
	case SQFS_COMP_ZSTD:
		d->zstd = ZSTD_createDCtx();
		if (!d->zstd)
			goto fail;
		break;
	case SQFS_COMP_LZO:
		d->lzo_lib = lzo_open(&d->lzo);
		if (!d->lzo_lib)
			goto fail;
		break;
	case SQFS_COMP_LZMA:
	case SQFS_COMP_XZ:
	case SQFS_COMP_LZ4:
		break;
	default:
		goto fail;
	}
	return d;
fail:
	sqfs_dctx_free(d);
	return NULL;
}

void sqfs_dctx_free(struct sqfs_dctx *d)
{
	if (!d)
		return;
	if (d->zinit)
		inflateEnd(&d->z);
	ZSTD_freeDCtx(d->zstd);
	if (d->lzo_lib)
		dlclose(d->lzo_lib);
	free(d);
}

static ssize_t dctx_gzip(struct sqfs_dctx *d, const void *in, size_t inlen,
			 void *out, size_t outcap)
{
	int ret;

	if (inflateReset(&d->z) != Z_OK)
		return -EIO;
	d->z.next_in = (Bytef *)in;
	d->z.avail_in = inlen;
	d->z.next_out = out;
	d->z.avail_out = outcap;
	ret = inflate(&d->z, Z_FINISH);
	if (ret != Z_STREAM_END)
		return -EIO;
	return outcap - d->z.avail_out;
}

static ssize_t dctx_xz(const void *in, size_t inlen, void *out, size_t outcap)
{
	uint64_t memlimit = 256u << 20;
	size_t inpos = 0, outpos = 0;
	lzma_ret ret;

	ret = lzma_stream_buffer_decode(&memlimit, 0, NULL, in, &inpos, inlen,
					out, &outpos, outcap);
	if (ret != LZMA_OK || inpos != inlen)
		return -EIO;
	return outpos;
}

/* Legacy "lzma" images: each block is an .lzma (alone) stream, 13-byte header included. */
static ssize_t dctx_lzma(const void *in, size_t inlen, void *out, size_t outcap)
{
	lzma_stream s = LZMA_STREAM_INIT;
	lzma_ret ret;
	size_t n;

	if (lzma_alone_decoder(&s, 256u << 20) != LZMA_OK)
		return -EIO;
	s.next_in = in;
	s.avail_in = inlen;
	s.next_out = out;
	s.avail_out = outcap;
	ret = lzma_code(&s, LZMA_FINISH);
	n = outcap - s.avail_out;
	lzma_end(&s);
	return ret == LZMA_STREAM_END ? (ssize_t)n : -EIO;
}

ssize_t sqfs_dctx_decompress(struct sqfs_dctx *d, const void *in, size_t inlen,
			     void *out, size_t outcap)
{
	switch (d->comp) {
	case SQFS_COMP_GZIP:
		return dctx_gzip(d, in, inlen, out, outcap);
	case SQFS_COMP_XZ:
		return dctx_xz(in, inlen, out, outcap);
	case SQFS_COMP_LZMA:
		return dctx_lzma(in, inlen, out, outcap);
	case SQFS_COMP_LZ4: {
		int n = LZ4_decompress_safe(in, out, inlen, outcap);

		return n < 0 ? -EIO : n;
	}
	case SQFS_COMP_ZSTD: {
		size_t n = ZSTD_decompressDCtx(d->zstd, out, outcap, in, inlen);

		return ZSTD_isError(n) ? -EIO : (ssize_t)n;
	}
	case SQFS_COMP_LZO: {
		unsigned long n = outcap;

		if (d->lzo(in, inlen, out, &n, NULL) != 0)
			return -EIO;
		return n;
	}
	}
	return -EIO;
}
