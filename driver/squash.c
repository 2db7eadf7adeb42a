// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * squash: flatten the chain under a committed layer into one SquashFS image (the mkimage
 * writer, called as a library), stored as a new committed layer without a parent.
 * Same two-phase protocol as import: a 'creating' row first, 'ready' when the image is in
 * place, everything removed on failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "squashfs/writer.h"
#include "strata_priv.h"

static int chain_paths(struct strata *s, const struct sd_snap *top, char ***paths, int *n)
{
	char path[PATH_MAX + 64];
	int64_t *ids = NULL;
	size_t cnt = 0, i;
	struct sd_snap sn;
	char **v;
	int ret;

	ret = sd_chain(s, top->id, &ids, &cnt);
	if (ret)
		return ret;
	v = calloc(cnt, sizeof(*v));
	if (!v) {
		free(ids);
		return sd_err(s, ENOMEM, "out of memory");
	}
	for (i = 0; i < cnt && !ret; i++) {
		ret = sd_lookup_id(s, ids[i], &sn);
		if (!ret)
			sd_snap_content(s, &sn, path, sizeof(path));
		if (!ret && !(v[i] = strdup(path)))
			ret = sd_err(s, ENOMEM, "out of memory");
	}
	free(ids);
	*paths = v;
	*n = (int)cnt;
	return ret;
}

/* --output: a copy next to the user's file, renamed into place when complete. */
static int copy_out(struct strata *s, const char *img, const char *out)
{
	char tmp[PATH_MAX + 32];
	int in, fd, ret = 0;
	struct stat st;
	off_t off = 0;

	if (sd_path(tmp, sizeof(tmp), "%s.tmp.XXXXXX", out))
		return sd_err(s, ENAMETOOLONG, "%s: path too long", out);
	in = open(img, O_RDONLY | O_CLOEXEC);
	if (in < 0 || fstat(in, &st))
		return sd_err(s, errno, "%s: %s", img, strerror(errno));
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		ret = sd_err(s, errno, "%s: %s", out, strerror(errno));
		close(in);
		return ret;
	}
	while (off < st.st_size) {
		ssize_t n = copy_file_range(in, &off, fd, NULL, (size_t)(st.st_size - off), 0);

		if (n <= 0) {
			ret = sd_err(s, n ? errno : EIO, "%s: %s", out,
				     n ? strerror(errno) : "short copy");
			break;
		}
	}
	if (!ret && (fchmod(fd, 0644) || fsync(fd) || rename(tmp, out)))
		ret = sd_err(s, errno, "%s: %s", out, strerror(errno));
	if (ret)
		unlink(tmp);
	close(fd);
	close(in);
	return ret;
}

static int begin_squash(struct strata *s, const char *name, const struct strata_squash_opts *o,
			int64_t *id)
{
	char dir[PATH_MAX + 64];
	int ret;

	ret = sd_begin(s);
	if (ret)
		return ret;
	ret = sd_key_exists(s, name);
	if (!ret)
		ret = sd_insert(s, name, STRATA_COMMITTED, 0, false, true, NULL, id);
	if (!ret)
		ret = sd_set_labels(s, *id, o->labels, o->nlabels);
	if (!ret)
		ret = sd_commit(s);
	if (ret) {
		sd_rollback(s);
		return ret;
	}
	sd_snap_dir(s, *id, dir, sizeof(dir));
	if (mkdir(dir, 0700))
		return sd_err(s, errno, "%s: %s", dir, strerror(errno));
	return 0;
}

int strata_squash(struct strata *s, const char *key, const char *name,
		  const struct strata_squash_opts *o)
{
	static const struct strata_squash_opts none;
	struct sqfs_writer_opts wo;
	struct sqfs_squash_stats st;
	char img[PATH_MAX + 64], err[1024] = "";
	struct sd_snap top, made = { 0 };
	char **paths = NULL;
	int64_t id = 0;
	int n = 0, i, ret;

	if (!o)
		o = &none;
	ret = sd_check_key(s, name);
	if (!ret)
		ret = sd_lookup(s, key, &top);
	if (ret)
		return ret;
	if (top.kind != STRATA_COMMITTED)
		return sd_err(s, EINVAL, "'%s' is %s; squash takes a committed layer", key,
			      strata_kind_name(top.kind));
	sqfs_writer_opts_init(&wo);
	if (o->comp && sqfs_codec_parse(o->comp, &wo.codec.kind))
		return sd_err(s, EINVAL, "unknown compressor '%s' (lz4, lz4hc, zstd, gzip, xz, "
			      "none)", o->comp);
	if (sqfs_codec_check(&wo.codec, err, sizeof(err)))
		return sd_err(s, EINVAL, "%s", err);
	ret = chain_paths(s, &top, &paths, &n);
	if (!ret)
		ret = begin_squash(s, name, o, &id);
	if (ret)
		goto out;
	made.id = id;
	made.image = true;
	sd_snap_content(s, &made, img, sizeof(img));
	ret = sqfs_squash_layers((const char *const *)paths, n, img, &wo, &st, err, sizeof(err));
	if (ret) {
		ret = sd_err(s, ret, "squash '%s': %s", key, err);
		goto out;
	}
	if (o->output)
		ret = copy_out(s, img, o->output);
	if (!ret)
		ret = sd_mark_ready(s, id, NULL);
out:
	for (i = 0; paths && i < n; i++)
		free(paths[i]);
	free(paths);
	if (ret && id)
		sd_abandon(s, id);
	return ret;
}
