// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Ownership as the container sees it: uid/gid mappings (uidmapping=C:H:N like fuse-overlayfs),
 * squashing to one owner, and xattr_permissions, where owner and mode live in an xattr
 * ("UID:GID:MODE", octal mode) because the daemon cannot chown for real.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

#include "fdpath.h"
#include "overlay/ovl.h"

static uint32_t ovl_map_out(const struct ovl_idmap *m, int n, uint32_t host)
{
	int i;

	if (!n)
		return host;
	for (i = 0; i < n; i++)
		if (host >= m[i].outside && host - m[i].outside < m[i].count)
			return m[i].inside + (host - m[i].outside);
	return 65534;   /* unmapped shows as the overflow id, as in a user namespace */
}

static uint32_t ovl_map_in(const struct ovl_idmap *m, int n, uint32_t inside)
{
	int i;

	if (!n)
		return inside;
	for (i = 0; i < n; i++)
		if (inside >= m[i].inside && inside - m[i].inside < m[i].count)
			return m[i].outside + (inside - m[i].inside);
	return (uint32_t)-1;
}

void ovl_map_stat(struct ovl_fs *fs, struct stat *st)
{
	st->st_uid = ovl_map_out(fs->o.uidmap, fs->o.nuidmap, st->st_uid);
	st->st_gid = ovl_map_out(fs->o.gidmap, fs->o.ngidmap, st->st_gid);
	if (fs->o.squash_uid >= 0)
		st->st_uid = (uid_t)fs->o.squash_uid;
	if (fs->o.squash_gid >= 0)
		st->st_gid = (gid_t)fs->o.squash_gid;
}

uid_t ovl_uid_to_host(struct ovl_fs *fs, uid_t uid)
{
	return ovl_map_in(fs->o.uidmap, fs->o.nuidmap, uid);
}

gid_t ovl_gid_to_host(struct ovl_fs *fs, gid_t gid)
{
	return ovl_map_in(fs->o.gidmap, fs->o.ngidmap, gid);
}

static const char *ovl_override_name(struct ovl_fs *fs)
{
	return fs->o.xattr_permissions == 2 ? "user.fuseoverlayfs.override_stat"
					    : "user.containers.override_stat";
}

int ovl_override_read(struct ovl_fs *fs, const char *procpath, struct stat *st)
{
	char buf[128];
	unsigned int uid, gid, mode;
	ssize_t n = (fd_path_is_fd(procpath) ? getxattr : lgetxattr)(procpath,
			ovl_override_name(fs), buf, sizeof(buf) - 1);

	if (n <= 0)
		return n < 0 ? -errno : 0;
	buf[n] = 0;
	if (sscanf(buf, "%u:%u:%o", &uid, &gid, &mode) != 3)
		return -EINVAL;
	st->st_uid = uid;
	st->st_gid = gid;
	st->st_mode = (st->st_mode & S_IFMT) | (mode & 07777);
	return 0;
}

/* Through procpath, or through fd when procpath is NULL. */
static int ovl_override_set(struct ovl_fs *fs, const char *procpath, int fd, uid_t uid,
			    gid_t gid, mode_t mode)
{
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%u:%u:0%o", uid, gid, mode & 07777);

	if (!procpath)
		n = fsetxattr(fd, ovl_override_name(fs), buf, n, 0);
	else
		n = (fd_path_is_fd(procpath) ? setxattr : lsetxattr)(procpath,
			ovl_override_name(fs), buf, n, 0);
	if (n < 0)
		return -errno;
	return 0;
}

int ovl_override_write(struct ovl_fs *fs, const char *procpath, uid_t uid, gid_t gid,
		       mode_t mode)
{
	return ovl_override_set(fs, procpath, -1, uid, gid, mode);
}

int ovl_override_write_fd(struct ovl_fs *fs, int fd, uid_t uid, gid_t gid, mode_t mode)
{
	return ovl_override_set(fs, NULL, fd, uid, gid, mode);
}
