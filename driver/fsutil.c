// SPDX-License-Identifier: GPL-2.0-or-later
/* File-system helpers of the driver: recursive removal and disk usage, never following
 * symlinks (layer contents are untrusted). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata_priv.h"

static int rm_children(int fd, int depth);

int sd_rm_rf_at(int dirfd, const char *name)
{
	int fd, ret;

	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == EACCES) {
		/* overlay's work/work is mode 000; we own it, so open it up */
		fchmodat(dirfd, name, 0700, 0);
		fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	if (fd < 0)
		return -errno;
	ret = rm_children(fd, 0);
	close(fd);
	if (unlinkat(dirfd, name, AT_REMOVEDIR) && errno != ENOENT)
		return ret ? ret : -errno;
	return ret;
}

static int rm_children(int fd, int depth)
{
	struct dirent *de;
	int dfd, ret = 0;
	DIR *d;

	if (depth > 4096)
		return -ELOOP;
	dfd = dup(fd);
	if (dfd < 0)
		return -errno;
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return -errno;
	}
	while ((de = readdir(d))) {
		int r;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		r = sd_rm_rf_at(fd, de->d_name);
		if (r && !ret)
			ret = r;
	}
	closedir(d);
	return ret;
}

int sd_rm_rf(const char *path)
{
	return sd_rm_rf_at(AT_FDCWD, path);
}

struct usage_walk {
	struct strata_usage *u;
	struct { dev_t dev; ino_t ino; } *seen;
	size_t nseen, cap;
};

/* Hard links count once, as du does. */
static bool seen_before(struct usage_walk *w, const struct stat *st)
{
	size_t i;

	if (st->st_nlink < 2 || S_ISDIR(st->st_mode))
		return false;
	for (i = 0; i < w->nseen; i++)
		if (w->seen[i].dev == st->st_dev && w->seen[i].ino == st->st_ino)
			return true;
	if (w->nseen == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 64;
		void *n = realloc(w->seen, cap * sizeof(*w->seen));

		if (!n)
			return false;
		w->seen = n;
		w->cap = cap;
	}
	w->seen[w->nseen].dev = st->st_dev;
	w->seen[w->nseen].ino = st->st_ino;
	w->nseen++;
	return false;
}

static int usage_dir(struct usage_walk *w, int fd, int depth)
{
	struct dirent *de;
	int dfd, ret = 0;
	DIR *d;

	if (depth > 4096)
		return -ELOOP;
	dfd = dup(fd);
	if (dfd < 0)
		return -errno;
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return -errno;
	}
	while (!ret && (de = readdir(d))) {
		struct stat st;
		int cfd;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW))
			continue;
		if (seen_before(w, &st))
			continue;
		w->u->inodes++;
		w->u->bytes += (uint64_t)st.st_blocks * 512;
		if (!S_ISDIR(st.st_mode))
			continue;
		cfd = openat(fd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (cfd < 0)
			continue;
		ret = usage_dir(w, cfd, depth + 1);
		close(cfd);
	}
	closedir(d);
	return ret;
}

int strata_usage(struct strata *s, const char *key, struct strata_usage *out)
{
	struct usage_walk w = { .u = out };
	char path[PATH_MAX + 64];
	struct sd_snap sn;
	struct stat st;
	int fd, ret;

	memset(out, 0, sizeof(*out));
	ret = sd_lookup(s, key, &sn);
	if (ret)
		return ret;
	sd_snap_content(s, &sn, path, sizeof(path));
	if (lstat(path, &st))
		return sd_err(s, errno, "%s: %s", path, strerror(errno));
	out->inodes = 1;
	out->bytes = (uint64_t)st.st_blocks * 512;
	if (sn.image)
		return 0;
	fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return sd_err(s, errno, "%s: %s", path, strerror(errno));
	ret = usage_dir(&w, fd, 0);
	close(fd);
	free(w.seen);
	if (ret)
		return sd_err(s, ret, "%s: %s", path, strerror(-ret));
	return 0;
}

bool sd_valid_digest(const char *d)
{
	size_t i;

	if (!d || strncmp(d, "sha256:", 7) || strlen(d) != 71)
		return false;
	for (i = 7; i < 71; i++)
		if (!((d[i] >= '0' && d[i] <= '9') || (d[i] >= 'a' && d[i] <= 'f')))
			return false;
	return true;
}

/* A mount whose options name `needle` (a snapshot directory), e.g. a kernel overlay that a
 * crash kept strata from recording.  Fills its mount point into mp. */
bool sd_dir_in_use(const char *needle, char *mp, size_t len)
{
	char line[8192];
	bool found = false;
	FILE *f;

	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char *sep = strstr(line, " - ");

		if (!sep || !strstr(sep, needle))
			continue;
		found = sscanf(line, "%*s %*s %*s %*s %4095s", line) == 1;
		if (found)
			snprintf(mp, len, "%s", line);
	}
	fclose(f);
	return found;
}
