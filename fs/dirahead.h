/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Read-ahead of directories: while a program walks a tree, one background thread reads the
 * merged listing of the subdirectories it is about to enter, and looks their entries up in
 * the layers, so the readdirplus that asks for them finds the work done.
 */
#ifndef STRATA_DIRAHEAD_H
#define STRATA_DIRAHEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "overlay/ovl.h"

struct da;

/* node->ahead, under node->lock. */
enum {
	DA_NONE,                /* nothing asked */
	DA_QUEUED,              /* queued, and no reader started a listing since */
	DA_READING,             /* being read ahead: a reader waits for it (da_reader) */
};

/* Start the thread after fuse_daemonize(); NULL if it could not start (no read-ahead). */
struct da *da_start(struct ovl_fs *fs);
/* Stop it and drop every node it holds.  da may be NULL. */
void da_stop(struct da *da);

/* readdirplus handed out child directories dirs[0..n-1] in that order: read them ahead,
 * the first first.  The read-ahead takes over the caller's reference on each (ovl_node_get).
 * No node lock may be held. */
void da_queue(struct da *da, struct ovl_node **dirs, size_t n);

/* A reader starts a listing of dir at offset 0: waits out a read-ahead of dir in progress
 * (dropping dir->lock meanwhile), and from then on nothing reads dir ahead.  Caller holds
 * dir->lock, and the kernel holds dir.  da may be NULL. */
void da_reader(struct da *da, struct ovl_node *dir);

/* ...and found dir->listing, which was read ahead (->ahead): true when it is current, and
 * marks it used; false when the caller must read it again.  Caller holds dir->lock. */
bool da_take(struct da *da, struct ovl_node *dir);

/* Listings read ahead so far, and how many of them a reader took (0 for a NULL da). */
void da_stats(struct da *da, uint64_t *read, uint64_t *taken);

#endif
