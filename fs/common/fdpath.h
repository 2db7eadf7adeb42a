/* SPDX-License-Identifier: GPL-2.0-or-later */
#ifndef STRATA_FDPATH_H
#define STRATA_FDPATH_H

#include <errno.h>
#include <stdio.h>
#include <string.h>

/*
 * A path naming `rel` below directory fd `dirfd`, for the calls that have no *at() form
 * (the xattr and ACL calls).  The root ("") becomes "/proc/self/fd/N/." so that l*xattr()
 * acts on the directory, not on the /proc magic link.
 */
static inline int fd_path(char *buf, size_t size, int dirfd, const char *rel)
{
	int n = snprintf(buf, size, "/proc/self/fd/%d/%s", dirfd, *rel ? rel : ".");

	return n < (int)size ? 0 : -ENAMETOOLONG;
}

/* Whether `path` is "/proc/self/fd/N" itself, the magic link to an open file (an orphan's
 * path): the xattr calls must follow it there, where the l*() forms would act on the link. */
static inline int fd_path_is_fd(const char *path)
{
	static const char pfx[] = "/proc/self/fd/";
	size_t i = sizeof(pfx) - 1;

	if (strncmp(path, pfx, i) || !path[i])
		return 0;
	for (; path[i]; i++)
		if (path[i] < '0' || path[i] > '9')
			return 0;
	return 1;
}

#endif
