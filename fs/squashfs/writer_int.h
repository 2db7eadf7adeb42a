/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Private to the writer: the in-memory tree (metadata only; file data is streamed),
 * the metadata-block stream, and the phases (flatten.c, writer_data.c, writer_meta.c).
 */
#ifndef STRATA_SQUASHFS_WRITER_INT_H
#define STRATA_SQUASHFS_WRITER_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "layer/layer.h"
#include "squashfs/codec.h"
#include "squashfs/format.h"
#include "squashfs/writer.h"

/* An interned set of xattrs; identical sets share one xattr id. */
struct wx_set {
	uint32_t id;             /* index in ctx->xsets, then the on-disk xattr id */
	uint32_t count;
	size_t len;              /* blob bytes */
	uint64_t hash;
	/* blob: count x { u16 name_len, name (full, with prefix), u32 value_len, value } */
	unsigned char *blob;
	struct wx_set *next;     /* hash chain */
};

struct wnode {
	char *name;                  /* "" for the root */
	struct wnode *parent;
	struct wnode **children;     /* sorted by name */
	uint32_t nchildren;
	struct wnode *link;          /* hard link: the node that owns the inode, or NULL */

	uint32_t mode;
	uint32_t uid, gid;
	uint32_t mtime;
	uint32_t rdev;               /* encoded with sqfs_encode_dev() */
	uint32_t nlink;              /* names of this inode in the image (owner only) */
	uint64_t size;
	char *symlink;
	struct wx_set *xattrs;

	/* where the data comes from (regular files): the layer, and the path there, which is
	 * the node's own path unless the file is seen through a redirected directory: then
	 * lpath holds it (see wnode_path()) */
	struct layer *layer;
	uint64_t ref;
	char *lpath;

	/* data results (regular files) */
	uint64_t blocks_start;
	uint32_t *blocks;            /* block size words, 0 = hole */
	uint32_t nblocks;
	uint32_t frag_idx, frag_off; /* SQFS_INVALID_FRAG when no tail */
	uint64_t sparse;
	bool data_started;
	/* small files read ahead by a prefetch thread (writer_data.c) */
	unsigned char *pre;
	int pre_err;
	int8_t pre_state;

	/* inode table */
	uint32_t ino;
	uint64_t inode_ref;
	uint16_t type;               /* basic inode type */
};

static inline struct wnode *wnode_owner(struct wnode *n)
{
	return n->link ? n->link : n;
}

/* The node's path inside its layer ("a/b/c"): its path from the root of the image, or
 * for a file under a redirected directory its lpath.
 * -ENAMETOOLONG if it does not fit (the walk refuses such paths). */
int wnode_path(const struct wnode *n, char *buf, size_t size);

/* A growable byte buffer. */
struct wbuf {
	unsigned char *p;
	size_t len, cap;
};
int wbuf_put(struct wbuf *b, const void *data, size_t len);
void wbuf_free(struct wbuf *b);

/* A stream of metadata blocks built in memory. */
struct mstream {
	unsigned char blk[SQFS_META_SIZE];
	size_t fill;
	struct wbuf out;             /* finished blocks, header included */
	uint64_t *starts;            /* location of each finished block inside out */
	size_t nstarts, capstarts;
	struct sqfs_codec *codec;
	unsigned char tmp[SQFS_META_SIZE];
};
void ms_init(struct mstream *m, struct sqfs_codec *codec);
int ms_put(struct mstream *m, const void *data, size_t len);
int ms_finish(struct mstream *m);
void ms_free(struct mstream *m);
/* location of the block being filled and the offset inside it */
static inline uint64_t ms_block(const struct mstream *m) { return m->out.len; }
static inline uint32_t ms_offset(const struct mstream *m) { return (uint32_t)m->fill; }

struct wctx {
	const struct sqfs_writer_opts *o;
	struct sqfs_squash_stats *st;
	char *err;
	size_t errlen;
	bool force_collision;
	int err_set;

	struct layer **layers;
	int nlayers;

	struct wnode *root;
	/* Inode-owning regular files in data order.  The walk runs in its own thread and
	 * publishes files here as it finds them, so reading data overlaps the walk. */
	struct wnode **files;
	size_t nfiles, capfiles, files_signalled;
	pthread_mutex_t files_mu;
	pthread_cond_t files_cv;
	bool walk_done;              /* under files_mu */
	int walk_err;
	int abort;                   /* set (atomically) by the data side on error */
	uint32_t ninodes;

	/* hard links: (layer index, st_ino) -> owner */
	struct hl_ent **hl;
	size_t hl_buckets, hl_count;
	/* what the stack hides, gathered from the scans by the walk (scan.h) */
	struct hidden_set *hidden;

	struct wx_set **xset_hash;
	size_t xset_buckets;
	struct wx_set **xsets;
	uint32_t nxsets, capxsets;

	/* output */
	const char *out_path;        /* what the user asked for, for messages */
	char *tmp_path;              /* name of the file being written, once it has one */
	bool tmp_anon, tmp_named;
	dev_t skip_dev;              /* an existing OUT: never put the old image in the new */
	ino_t skip_ino;
	int fd;
	uint64_t pos;                /* end of what has been written */
	struct sqfs_fragment_entry *frags;   /* host order; filled by the data writer */
	uint32_t nfrags, capfrags;
	uint64_t start_ns;
	uint64_t last_progress_ns;
};

int wr_error(struct wctx *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The same with a message that is complete already (no errno text appended). */
void wr_error_msg(struct wctx *c, const char *msg);
uint64_t wr_now_ns(void);
void wr_progress(struct wctx *c, int final);
int wr_pwrite(struct wctx *c, const void *buf, size_t len, uint64_t off);

/* flatten.c: walk the union of c->layers into c->root and c->files. */
int wr_flatten(struct wctx *c);
/* Next file in data order, waiting for the walk; NULL when the walk is over (then
 * *err is its result). */
struct wnode *wr_next_file(struct wctx *c, size_t i, int *err);
void wr_free_tree(struct wctx *c);
/* writer_data.c: stream file data through the compressor pipeline. */
int wr_write_data(struct wctx *c);
/* writer_meta.c: inode, directory, fragment, export, id and xattr tables + superblock. */
int wr_write_meta(struct wctx *c, struct sqfs_super *sb);

#endif
