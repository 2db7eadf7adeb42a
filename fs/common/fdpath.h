/* SPDX-License-Identifier: GPL-2.0-or-later */
#ifndef STRATA_FDPATH_H
#define STRATA_FDPATH_H

#include <errno.h>
#include <stdio.h>

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

#endif
