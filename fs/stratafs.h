/* SPDX-License-Identifier: GPL-2.0-or-later */
/* stratafs command line: fuse-overlayfs compatible options. */
#ifndef STRATAFS_H
#define STRATAFS_H

#include <stdbool.h>
#include "overlay/ovl.h"

#define STRATA_VERSION "0.1.0"

struct sfs_config {
	char **lowers;
	int nlowers;
	char *upper, *work, *mountpoint;
	bool foreground, debug, threaded, writeback, fsync, noacl;
	long max_threads, max_idle_threads;     /* the multi-threaded loop's */
	int passthrough;                /* 0 off, 1 auto, 2 on */
	bool passthrough_lower;         /* lower files of writable mounts pass through too */
	bool dir_readahead;             /* read subdirectories ahead (fs/dirahead.c) */
	long long passthrough_cache;    /* ... but ones smaller than this opened again are
					 * read from the page cache (0: never) */
	struct ovl_opts o;
	char *fuse_opts;                /* comma list handed to libfuse */
	size_t fuse_opts_len;
};

/* Parses argv; returns 0, or 1 after printing --help/--version, or -1 after printing
 * an error naming what is wrong. */
int sfs_parse_args(int argc, char **argv, struct sfs_config *cfg);

#endif
