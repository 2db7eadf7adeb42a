// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * sqfs_squash_layers(): open the layers, flatten their union into a tree of metadata,
 * stream the file data through the compressor pipeline into a temporary file next to the
 * output, append the metadata tables and the superblock, and rename it into place.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "squashfs/writer_int.h"

void sqfs_writer_opts_init(struct sqfs_writer_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->codec.kind = SQFS_CODEC_LZ4;
	o->codec.block_size = 1u << SQFS_DEFAULT_BLOCK_LOG;
	o->mtime = -1;
	o->force_uid = -1;
	o->force_gid = -1;
}

/* Record the first error only: later ones are usually its consequences. */
int wr_error(struct wctx *c, int err, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (__atomic_exchange_n(&c->err_set, 1, __ATOMIC_ACQ_REL))
		return err;
	va_start(ap, fmt);
	n = vsnprintf(c->err, c->errlen, fmt, ap);
	va_end(ap);
	if (err && n >= 0 && (size_t)n < c->errlen)
		snprintf(c->err + n, c->errlen - n, ": %s", strerror(-err));
	return err;
}

void wr_error_msg(struct wctx *c, const char *msg)
{
	if (!__atomic_exchange_n(&c->err_set, 1, __ATOMIC_ACQ_REL))
		snprintf(c->err, c->errlen, "%s", msg);
}

uint64_t wr_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void wr_progress(struct wctx *c, int final)
{
	uint64_t now;

	if (!c->o->progress)
		return;
	now = wr_now_ns();
	if (!final && now - c->last_progress_ns < 100000000ull)
		return;
	c->last_progress_ns = now;
	c->st->seconds = (double)(now - c->start_ns) / 1e9;
	c->o->progress(c->o->progress_ctx, c->st, final);
}

int wr_pwrite(struct wctx *c, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;

	while (len) {
		ssize_t n = pwrite(c->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return wr_error(c, -errno, "cannot write %s", c->out_path);
		if (n == 0)
			return wr_error(c, -ENOSPC, "cannot write %s", c->out_path);
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int check_opts(struct wctx *c, int n)
{
	struct sqfs_codec_cfg cfg = c->o->codec;
	uint32_t bs = cfg.block_size;

	if (n < 1)
		return wr_error(c, 0, "no layers given"), -EINVAL;
	if (bs < (1u << SQFS_MIN_BLOCK_LOG) || bs > (1u << SQFS_MAX_BLOCK_LOG) || (bs & (bs - 1)))
		return wr_error(c, 0, "block size %u is not a power of two from 4K to 1M", bs),
		       -EINVAL;
	if (sqfs_codec_check(&cfg, c->err, c->errlen)) {
		c->err_set = 1;
		return -EINVAL;
	}
	return 0;
}

static int open_layers(struct wctx *c, const char *const *paths, int n)
{
	struct stat st;

	c->layers = calloc(n, sizeof(*c->layers));
	if (!c->layers)
		return wr_error(c, -ENOMEM, "out of memory");
	for (int i = 0; i < n; i++) {
		/* stat first: the message should say what is wrong with the path */
		if (stat(paths[i], &st))
			return wr_error(c, -errno, "layer %s", paths[i]);
		if (!S_ISDIR(st.st_mode) && !layer_path_is_image(paths[i]))
			return wr_error(c, 0, "layer %s is neither a directory nor a SquashFS image",
					paths[i]), -EINVAL;
		c->layers[i] = layer_open(paths[i], i, c->err, c->errlen);
		if (!c->layers[i]) {
			c->err_set = 1;
			return -EINVAL;
		}
		c->nlayers = i + 1;
	}
	return 0;
}

/* The image is written to an unnamed file (O_TMPFILE) in OUT's directory, so a crash or a
 * kill leaves nothing behind and the walk cannot meet it in a layer; it gets a name only
 * when complete.  Filesystems without O_TMPFILE get a dot-file from mkostemp() instead. */
static int create_tmp(struct wctx *c)
{
	char *dup = strdup(c->out_path), *base = strdup(c->out_path);
	const char *dir;
	int ret = 0;

	if (!dup || !base) {
		ret = wr_error(c, -ENOMEM, "out of memory");
		goto out;
	}
	dir = dirname(dup);
	if (asprintf(&c->tmp_path, "%s/.%s.tmpXXXXXX", dir, basename(base)) < 0) {
		c->tmp_path = NULL;
		ret = wr_error(c, -ENOMEM, "out of memory");
		goto out;
	}
	c->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
	if (c->fd >= 0) {
		c->tmp_anon = true;
		goto out;
	}
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
		ret = wr_error(c, -errno, "cannot create %s", c->out_path);
		goto out;
	}
	c->fd = mkostemp(c->tmp_path, O_CLOEXEC);
	if (c->fd < 0) {
		ret = wr_error(c, -errno, "cannot create %s", c->tmp_path);
		goto out;
	}
	c->tmp_named = true;
	fchmod(c->fd, 0644);
out:
	free(dup);
	free(base);
	return ret;
}

/* Give the finished image its name: link the unnamed file under a temporary name (linkat
 * cannot replace OUT), then rename that over OUT. */
static int publish(struct wctx *c)
{
	char proc[64];

	if (c->tmp_anon) {
		size_t n = strlen(c->tmp_path);
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", c->fd);
		for (unsigned i = 0;; i++) {
			/* fill the XXXXXX with something unlikely to exist */
			snprintf(c->tmp_path + n - 6, 7, "%06x",
				 (unsigned)(((uint64_t)getpid() * 2654435761u + wr_now_ns() + i) &
					    0xFFFFFF));
			if (!linkat(AT_FDCWD, proc, AT_FDCWD, c->tmp_path, AT_SYMLINK_FOLLOW))
				break;
			if (errno != EEXIST || i > 100)
				return wr_error(c, -errno, "cannot create %s", c->out_path);
		}
		c->tmp_named = true;
	}
	if (rename(c->tmp_path, c->out_path))
		return wr_error(c, -errno, "cannot rename %s to %s", c->tmp_path, c->out_path);
	c->tmp_named = false;
	return 0;
}

static int finish_image(struct wctx *c, struct sqfs_super *sb, const void *opts,
			size_t optlen)
{
	uint64_t padded;
	int ret;

	sb->magic = SQFS_MAGIC;
	sb->block_size = c->o->codec.block_size;
	sb->block_log = (uint16_t)__builtin_ctz(c->o->codec.block_size);
	sb->compressor = sqfs_codec_super_id(&c->o->codec);
	sb->flags = sqfs_codec_super_flags(&c->o->codec) | SQFS_FLAG_EXPORTABLE |
		    SQFS_FLAG_ALWAYS_FRAGMENTS;
	if (!c->o->no_dedup)
		sb->flags |= SQFS_FLAG_DUPLICATES;
	if (c->o->no_xattrs || !c->nxsets)
		sb->flags |= SQFS_FLAG_NO_XATTRS;
	if (optlen)
		sb->flags |= SQFS_FLAG_COMPRESSOR_OPTIONS;
	sb->version_major = SQFS_VERSION_MAJOR;
	sb->version_minor = SQFS_VERSION_MINOR;
	sb->bytes_used = c->pos;
	padded = (c->pos + SQFS_DEVBLK_SIZE - 1) / SQFS_DEVBLK_SIZE * SQFS_DEVBLK_SIZE;
	c->st->image_bytes = padded;
	sqfs_super_to_disk(sb);
	ret = wr_pwrite(c, sb, sizeof(*sb), 0);
	if (!ret && optlen) {
		unsigned char blk[2 + 16];
		uint16_t hdr = sqfs_le16((uint16_t)(optlen | SQFS_META_UNCOMPRESSED));
		memcpy(blk, &hdr, 2);
		memcpy(blk + 2, opts, optlen);
		ret = wr_pwrite(c, blk, 2 + optlen, sizeof(*sb));
	}
	if (ret)
		return ret;
	/* the padding, and drop anything a dedup rewind left past the end */
	if (ftruncate(c->fd, (off_t)padded))
		return wr_error(c, -errno, "cannot write %s", c->out_path);
	return 0;
}

/* The walk thread: flatten, then tell the data side there are no more files. */
static void *walk_main(void *arg)
{
	struct wctx *c = arg;
	int ret = wr_flatten(c);

	pthread_mutex_lock(&c->files_mu);
	c->walk_err = ret;
	c->walk_done = true;
	c->st->walk_seconds = (double)(wr_now_ns() - c->start_ns) / 1e9;
	__atomic_store_n(&c->st->walking, 0, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&c->files_cv);
	pthread_mutex_unlock(&c->files_mu);
	return NULL;
}

static void cleanup(struct wctx *c, bool failed)
{
	if (c->fd >= 0)
		close(c->fd);
	if (failed && c->tmp_named)
		unlink(c->tmp_path);
	free(c->tmp_path);
	wr_free_tree(c);
	free(c->frags);
	for (int i = 0; i < c->nlayers; i++)
		layer_close(c->layers[i]);
	free(c->layers);
}

int sqfs_squash_layers(const char *const *layers, int n, const char *out,
		       const struct sqfs_writer_opts *o, struct sqfs_squash_stats *st,
		       char *err, size_t errlen)
{
	struct sqfs_writer_opts opts = *o;
	struct sqfs_squash_stats dummy;
	struct wctx c = { .o = &opts, .err = err, .errlen = errlen, .fd = -1, .out_path = out,
			  .files_mu = PTHREAD_MUTEX_INITIALIZER,
			  .files_cv = PTHREAD_COND_INITIALIZER };
	pthread_t walker;
	struct sqfs_super sb = { 0 };
	unsigned char copts[16];
	size_t optlen;
	const char *fc = getenv(SQFS_ENV_FORCE_COLLISION);
	int ret;

	if (!st)
		st = &dummy;
	memset(st, 0, sizeof(*st));
	c.st = st;
	c.start_ns = wr_now_ns();
	c.force_collision = fc && !strcmp(fc, "1");
	if (errlen)
		err[0] = 0;
	ret = check_opts(&c, n);
	if (ret)
		return ret;
	sqfs_codec_check(&opts.codec, err, errlen);     /* fills in the default level */
	{
		struct stat ost;
		if (!stat(out, &ost) && S_ISDIR(ost.st_mode))
			return wr_error(&c, -EISDIR, "cannot write %s", out);
		if (!stat(out, &ost) && S_ISREG(ost.st_mode)) {
			c.skip_dev = ost.st_dev;
			c.skip_ino = ost.st_ino;
		}
	}
	ret = open_layers(&c, layers, n);
	if (!ret)
		ret = create_tmp(&c);
	if (ret)
		goto out;
	optlen = sqfs_codec_options(&opts.codec, copts);
	c.pos = sizeof(sb) + (optlen ? 2 + optlen : 0);
	st->walking = 1;
	if (pthread_create(&walker, NULL, walk_main, &c)) {
		ret = wr_error(&c, -EAGAIN, "cannot start the walk thread");
		goto out;
	}
	ret = wr_write_data(&c);
	if (ret)
		__atomic_store_n(&c.abort, 1, __ATOMIC_RELAXED);
	pthread_join(walker, NULL);
	st->data_seconds = (double)(wr_now_ns() - c.start_ns) / 1e9 - st->walk_seconds;
	if (!ret)
		ret = c.walk_err;
	if (!ret)
		ret = wr_write_meta(&c, &sb);
	if (!ret)
		ret = finish_image(&c, &sb, copts, optlen);
	if (ret)
		goto out;
	ret = publish(&c);
	if (ret)
		goto out;
	st->seconds = (double)(wr_now_ns() - c.start_ns) / 1e9;
	wr_progress(&c, 1);
out:
	if (ret && !c.err_set)
		wr_error(&c, ret, "squash failed");
	cleanup(&c, ret != 0);
	return ret;
}
