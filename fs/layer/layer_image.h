/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Image-layer extras beyond layer.h: opening with an explicit cache bound. */
#ifndef STRATA_LAYER_IMAGE_H
#define STRATA_LAYER_IMAGE_H

#include <stddef.h>

struct layer;

/* Like layer_image_open(), with the memory bound of the image's decompressed-data cache
 * (`-o image_cache=SIZE`); 0 = the reader's default.  Metadata gets an eighth of it
 * (at least 4 MiB). */
struct layer *layer_image_open_cache(const char *path, int index, size_t cache_bytes,
				     char *err, size_t errlen);

/* "256M", "64K", "1G", "1048576" (K/M/G in powers of two) -> bytes, more than 0 and at
 * most 1 TiB; -EINVAL for anything else. */
int layer_parse_size(const char *s, size_t *out);

#endif
