// SPDX-License-Identifier: GPL-2.0-or-later
/* Whiteout and opaque conventions: see whiteout.h for the list. */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "overlay/whiteout.h"
#include "layer/layer.h"
#include "fdpath.h"

bool wh_is_chardev_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

bool wh_is_reserved_name(const char *name)
{
	return strncmp(name, WH_PREFIX, WH_PREFIX_LEN) == 0;
}

bool wh_is_opq_marker(const char *name)
{
	return strcmp(name, WH_OPQ_NAME) == 0;
}

const char *wh_hidden_name(const char *name)
{
	if (!wh_is_reserved_name(name) || strncmp(name, WH_META_PREFIX, 8) == 0)
		return NULL;
	if (name[WH_PREFIX_LEN] == '\0')
		return NULL;
	return name + WH_PREFIX_LEN;
}

bool wh_xattr_is_private(const char *name)
{
	return strncmp(name, OVL_XATTR_TRUSTED, sizeof(OVL_XATTR_TRUSTED) - 1) == 0 ||
	       strncmp(name, OVL_XATTR_USER, sizeof(OVL_XATTR_USER) - 1) == 0 ||
	       strcmp(name, "user.containers.override_stat") == 0 ||
	       strncmp(name, "user.fuseoverlayfs.", 19) == 0 ||
	       strncmp(name, "trusted.stratafs.", 17) == 0 ||
	       strncmp(name, "user.stratafs.", 14) == 0;
}

bool wh_opaque_value(const char *val, size_t len)
{
	return len >= 1 && (val[0] == 'y' || val[0] == 'x');
}

static bool wh_layer_xattr_opaque(struct layer *l, const struct lnode *dir, const char *name)
{
	char v[8];
	ssize_t n = l->ops->getxattr(l, dir, name, v, sizeof(v));

	return n > 0 && wh_opaque_value(v, (size_t)n);
}

bool wh_layer_dir_is_opaque(struct layer *l, const struct lnode *dir)
{
	struct lnode child;
	struct stat st;

	if (wh_layer_xattr_opaque(l, dir, OVL_XATTR_TRUSTED "opaque") ||
	    wh_layer_xattr_opaque(l, dir, OVL_XATTR_USER "opaque"))
		return true;
	return l->ops->lookup(l, dir, WH_OPQ_NAME, &child, &st) == 0;
}

static bool wh_list_has(const char *list, ssize_t len, const char *name)
{
	const char *p;

	for (p = list; p < list + len; p += strlen(p) + 1)
		if (strcmp(p, name) == 0)
			return true;
	return false;
}

static void wh_redirect_value(struct layer *l, const struct lnode *dir, const char *name,
			      char *redirect, size_t rsize)
{
	ssize_t n = l->ops->getxattr(l, dir, name, redirect, rsize - 1);

	if (n > 0 && !memchr(redirect, 0, n))
		redirect[n] = 0;
	else
		redirect[0] = 0;
}

void wh_layer_dir_marks(struct layer *l, const struct lnode *dir, bool *opaque,
			char *redirect, size_t rsize)
{
	char list[1024];
	struct lnode child;
	struct stat st;
	ssize_t n = l->ops->listxattr(l, dir, list, sizeof(list));

	redirect[0] = 0;
	if (n < 0 && n != -ERANGE) {
		*opaque = l->ops->lookup(l, dir, WH_OPQ_NAME, &child, &st) == 0;
		return;
	}
	if (n == -ERANGE) {             /* many xattrs: ask for each mark by name */
		*opaque = wh_layer_dir_is_opaque(l, dir);
		wh_redirect_value(l, dir, OVL_XATTR_TRUSTED "redirect", redirect, rsize);
		if (!redirect[0])
			wh_redirect_value(l, dir, OVL_XATTR_USER "redirect", redirect, rsize);
		return;
	}
	*opaque = (wh_list_has(list, n, OVL_XATTR_TRUSTED "opaque") &&
		   wh_layer_xattr_opaque(l, dir, OVL_XATTR_TRUSTED "opaque")) ||
		  (wh_list_has(list, n, OVL_XATTR_USER "opaque") &&
		   wh_layer_xattr_opaque(l, dir, OVL_XATTR_USER "opaque")) ||
		  l->ops->lookup(l, dir, WH_OPQ_NAME, &child, &st) == 0;
	if (wh_list_has(list, n, OVL_XATTR_TRUSTED "redirect"))
		wh_redirect_value(l, dir, OVL_XATTR_TRUSTED "redirect", redirect, rsize);
	if (!redirect[0] && wh_list_has(list, n, OVL_XATTR_USER "redirect"))
		wh_redirect_value(l, dir, OVL_XATTR_USER "redirect", redirect, rsize);
}

bool wh_layer_is_whited_out(struct layer *l, const struct lnode *dir, const char *name)
{
	char whname[NAME_MAX + 1];
	struct lnode child;
	struct stat st;

	if (l->ops->lookup(l, dir, name, &child, &st) == 0)
		return wh_is_chardev_whiteout(&st);
	if (snprintf(whname, sizeof(whname), WH_PREFIX "%s", name) >= (int)sizeof(whname))
		return false;
	return l->ops->lookup(l, dir, whname, &child, &st) == 0;
}

int wh_create(int dirfd, const char *name, bool priv)
{
	char whname[NAME_MAX + 1];
	int fd;

	(void)priv;
	if (mknodat(dirfd, name, S_IFCHR | 0000, makedev(0, 0)) == 0)
		return 0;
	if (errno != EPERM && errno != EOPNOTSUPP && errno != EINVAL)
		return -errno;
	/* No mknod here (e.g. an old kernel in a user namespace): the OCI form. */
	if (snprintf(whname, sizeof(whname), WH_PREFIX "%s", name) >= (int)sizeof(whname))
		return -ENAMETOOLONG;
	fd = openat(dirfd, whname, O_CREAT | O_WRONLY | O_EXCL | O_CLOEXEC, 0000);
	if (fd < 0)
		return errno == EEXIST ? 0 : -errno;
	close(fd);
	return 0;
}

int wh_create_shared(int workfd, int dirfd, const char *name, bool priv, bool oci_fallback)
{
	int i;

	for (i = 0; i < 3; i++) {
		if (linkat(workfd, WH_SHARED_NAME, dirfd, name, 0) == 0)
			return 0;
		if (errno == ENOENT) {
			if (mknodat(workfd, WH_SHARED_NAME, S_IFCHR | 0000, makedev(0, 0)) < 0 &&
			    errno != EEXIST)
				break;
		} else if (errno == EMLINK) {
			unlinkat(workfd, WH_SHARED_NAME, 0);    /* full: start a fresh one */
		} else {
			break;
		}
	}
	if (!oci_fallback)
		return mknodat(dirfd, name, S_IFCHR | 0000, makedev(0, 0)) < 0 ? -errno : 0;
	return wh_create(dirfd, name, priv);
}

int wh_remove(int dirfd, const char *name)
{
	char whname[NAME_MAX + 1];
	struct stat st;
	int ret = 0;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && wh_is_chardev_whiteout(&st)) {
		if (unlinkat(dirfd, name, 0) < 0)
			ret = -errno;
	}
	if (snprintf(whname, sizeof(whname), WH_PREFIX "%s", name) < (int)sizeof(whname)) {
		if (unlinkat(dirfd, whname, 0) < 0 && errno != ENOENT && !ret)
			ret = -errno;
	}
	return ret;
}

int wh_set_opaque(int dirfd, bool priv)
{
	char path[64];
	int fd;

	/* fsetxattr does not take O_PATH fds: go through /proc for those. */
	fd_path(path, sizeof(path), dirfd, "");
	if (priv && setxattr(path, OVL_XATTR_TRUSTED "opaque", "y", 1, 0) == 0)
		return 0;
	if (setxattr(path, OVL_XATTR_USER "opaque", "y", 1, 0) == 0)
		return 0;
	fd = openat(dirfd, WH_OPQ_NAME, O_CREAT | O_WRONLY | O_CLOEXEC, 0000);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}
