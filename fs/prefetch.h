/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Read-ahead across small files of image layers: once a program reads a small file of a
 * directory that readdirplus listed, the next few small image files of that directory are
 * decompressed and stored in the kernel's page cache (FUSE_NOTIFY_STORE) by one background
 * thread, so reading a tree file by file costs no READ round trip for most files.  While
 * the mount is being read that way, a directory listed next is pushed before any READ.
 * A file's data is pushed at most once, never after a write began on it.
 */
#ifndef STRATA_PREFETCH_H
#define STRATA_PREFETCH_H

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 312
#endif
#include <fuse_lowlevel.h>

#include "overlay/ovl.h"

struct pf;

/* NULL (nothing to do) unless some layer is an image.  Start after fuse_daemonize(). */
struct pf *pf_start(struct ovl_fs *fs, struct fuse_session *se);
void pf_stop(struct pf *pf);

/* readdirplus handed entry `name` (node n, stat st) of dir to the kernel; `first` when the
 * listing restarted from the top.  Caller holds dir->lock. */
void pf_listed(struct pf *pf, struct ovl_node *dir, const char *name, struct ovl_node *n,
	       const struct stat *st, bool first);

/* A READ at offset 0 of file n reached the daemon. */
void pf_read(struct pf *pf, struct ovl_node *n);

/* Before anything may change n's data (write open, truncate): no push from now on, none
 * in flight, and pages pushed earlier dropped from the kernel's cache.  No locks may be
 * held (a push can wait on a page a reader locked).  pf may be NULL. */
void pf_block(struct pf *pf, struct ovl_node *n);

/* fs->pf_free: a directory's list of names. */
void pf_dir_free(void *p);

#endif
