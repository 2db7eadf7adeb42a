// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Namespace changes in the merged view: create, link, unlink/rmdir, rename.  They hold
 * fs->copy_lock (one writer to the upper at a time; creates in upper directories share
 * it) and build new entries in workdir, renaming them into place last, so each change
 * appears at once or not at all -- but for a plain create, which is born complete in place
 * (ovl_create_in_place).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <sys/acl.h>
#include <acl/libacl.h>

#include "overlay/ovl.h"
#include "fdpath.h"
#include "overlay/whiteout.h"

/* A child as the merged view has it: the hashed node if the kernel knows it, else a
 * temporary one built from a fresh resolve.  ovl_child_put() releases it. */
struct ovl_child {
	struct ovl_node *n;
	struct ovl_node tmp;
	bool temp;
};

/*
 * A namespace change (create, link, unlink, rename) runs under copy_lock and bumps fs->gen
 * at both ends: a listing read while one was under way never passes for current
 * (ovl_lookup_listed, read-ahead listings).  Changes hold copy_lock exclusive, except a
 * create in a directory already in the upper (ovl_ns_begin_create).
 */
static void ovl_ns_begin(struct ovl_fs *fs)
{
	pthread_rwlock_wrlock(&fs->copy_lock);
	__atomic_add_fetch(&fs->gen, 1, __ATOMIC_SEQ_CST);
}

static void ovl_ns_end(struct ovl_fs *fs)
{
	__atomic_add_fetch(&fs->gen, 1, __ATOMIC_SEQ_CST);
	pthread_rwlock_unlock(&fs->copy_lock);
}

/*
 * A create needs copy_lock exclusive only to copy its directory up.  Once the directory is
 * in the upper (it never leaves it), creates in different directories can run together:
 * the kernel holds the directory's lock across LOOKUP and CREATE, so nothing else changes
 * names in it meanwhile, and everything that moves or copies up entries (rename, copy-up,
 * link, unlink of a lower entry) waits for the exclusive lock.  Each create makes its entry
 * in place or under its own name in workdir.  Contended creates were the bottleneck of
 * parallel metadata loads (bench/'s mdtest), each waiting out the others' inode
 * allocations.
 */
static void ovl_ns_begin_create(struct ovl_fs *fs, struct ovl_node *dir)
{
	pthread_rwlock_rdlock(&fs->copy_lock);
	if (ovl_in_upper(fs, dir)) {
		__atomic_add_fetch(&fs->gen, 1, __ATOMIC_SEQ_CST);
		return;
	}
	pthread_rwlock_unlock(&fs->copy_lock);
	ovl_ns_begin(fs);               /* dir is to be copied up */
}

static int ovl_child_get(struct ovl_fs *fs, struct ovl_node *dir, const char *dpath,
			 const char *name, struct ovl_child *c)
{
	struct ovl_res res;
	int ret;

	memset(c, 0, sizeof(*c));
	c->n = ovl_node_find(fs, dir, name);
	if (c->n)
		return 0;
	ret = ovl_resolve(fs, dir, dpath, name, false, &res);
	if (ret)
		return ret;
	c->temp = true;
	c->n = &c->tmp;
	c->tmp.parent = dir;
	c->tmp.orphan_fd = -1;
	c->tmp.name = (char *)name;
	c->tmp.type = res.st.st_mode & S_IFMT;
	c->tmp.nlent = res.nlent;
	c->tmp.lent = res.lent;
	c->tmp.ino = ovl_ino_for(fs, res.lent[0].layer, res.st.st_dev, res.st.st_ino);
	return 0;
}

static void ovl_child_put(struct ovl_child *c)
{
	if (c->temp)
		ovl_lent_free(c->tmp.lent, c->tmp.nlent);
	c->n = NULL;
}

static int ovl_paths(struct ovl_fs *fs, struct ovl_node *dir, const char *name,
		     char *dpath, char *path)
{
	int ret;

	pthread_rwlock_rdlock(&fs->tree_lock);
	ret = ovl_node_path(dir, dpath, PATH_MAX);
	pthread_rwlock_unlock(&fs->tree_lock);
	return ret ? ret : ovl_join(dpath, name, path, PATH_MAX);
}

/* Move work/tmp to upper/path, replacing a whiteout there atomically (exchange, then drop
 * the whiteout from workdir), and drop an OCI-form whiteout beside it. */
static int ovl_install(struct ovl_fs *fs, const char *tmp, const char *dpath, const char *name,
		       const char *path)
{
	char whpath[PATH_MAX + 8];
	struct stat st;

	if (fstatat(fs->upper_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (!wh_is_chardev_whiteout(&st))
			return -EEXIST;
		if (renameat2(fs->work_fd, tmp, fs->upper_fd, path, RENAME_EXCHANGE) < 0)
			return -errno;
		unlinkat(fs->work_fd, tmp, 0);
		return 0;
	}
	if (renameat2(fs->work_fd, tmp, fs->upper_fd, path, RENAME_NOREPLACE) < 0)
		return -errno;
	snprintf(whpath, sizeof(whpath), "%s%s" WH_PREFIX "%s", dpath, *dpath ? "/" : "", name);
	unlinkat(fs->upper_fd, whpath, 0);
	return 0;
}

/* Owner (and the set-id bits chown clears) of the new entry work/tmp -- or, when fd >= 0,
 * of the file open as fd (O_TMPFILE, which has no name). */
static int ovl_set_owner(struct ovl_fs *fs, const char *tmp, int fd, const struct stat *pst,
			 const struct ovl_cred *cred, mode_t mode)
{
	char proc[PATH_MAX];
	uid_t uid = ovl_uid_to_host(fs, cred->uid);
	gid_t gid = (pst->st_mode & S_ISGID) ? pst->st_gid : ovl_gid_to_host(fs, cred->gid);
	gid_t shown = (pst->st_mode & S_ISGID) ? pst->st_gid : cred->gid;

	if (fs->o.xattr_permissions) {
		if (S_ISLNK(mode))
			return 0;
		if (fd >= 0)
			return ovl_override_write_fd(fs, fd, cred->uid, shown, mode);
		fd_path(proc, sizeof(proc), fs->work_fd, tmp);
		return ovl_override_write(fs, proc, cred->uid, shown, mode);
	}
	if ((fd >= 0 ? fchown(fd, uid, gid) : fchownat(fs->work_fd, tmp, uid, gid,
						      AT_SYMLINK_NOFOLLOW)) < 0 && !fs->rootless)
		return -errno;
	/* chown clears set-id bits; the mode asked for still wants them. */
	if (!S_ISLNK(mode) && (mode & (S_ISUID | S_ISGID)) &&
	    (fd >= 0 ? fchmod(fd, mode & 07777) : fchmodat(fs->work_fd, tmp, mode & 07777, 0)) < 0)
		return -errno;
	return 0;
}

static unsigned int ovl_acl_perm_get(acl_entry_t e)
{
	acl_permset_t ps;

	if (acl_get_permset(e, &ps) < 0)
		return 0;
	return (acl_get_perm(ps, ACL_READ) > 0 ? 4 : 0) | (acl_get_perm(ps, ACL_WRITE) > 0 ? 2 : 0) |
	       (acl_get_perm(ps, ACL_EXECUTE) > 0 ? 1 : 0);
}

static void ovl_acl_perm_set(acl_entry_t e, unsigned int bits)
{
	acl_permset_t ps;

	if (acl_get_permset(e, &ps) < 0)
		return;
	acl_clear_perms(ps);
	if (bits & 4)
		acl_add_perm(ps, ACL_READ);
	if (bits & 2)
		acl_add_perm(ps, ACL_WRITE);
	if (bits & 1)
		acl_add_perm(ps, ACL_EXECUTE);
	acl_set_permset(e, ps);
}

/* The parent's default ACL masked by the mode asked for, as POSIX.1e says a new file
 * inherits it; *mode becomes what that ACL implies. */
static acl_t ovl_acl_masked(acl_t def, mode_t *mode)
{
	acl_t acc = acl_dup(def);
	acl_entry_t e, grp = NULL, mask = NULL;
	unsigned int u = 0, o = 0, g;
	int id = ACL_FIRST_ENTRY;
	acl_tag_t tag;

	if (!acc)
		return NULL;
	for (; acl_get_entry(acc, id, &e) == 1; id = ACL_NEXT_ENTRY) {
		if (acl_get_tag_type(e, &tag) < 0)
			continue;
		if (tag == ACL_USER_OBJ) {
			u = ovl_acl_perm_get(e) & ((*mode >> 6) & 7);
			ovl_acl_perm_set(e, u);
		} else if (tag == ACL_OTHER) {
			o = ovl_acl_perm_get(e) & (*mode & 7);
			ovl_acl_perm_set(e, o);
		} else if (tag == ACL_GROUP_OBJ) {
			grp = e;
		} else if (tag == ACL_MASK) {
			mask = e;
		}
	}
	e = mask ? mask : grp;
	g = e ? ovl_acl_perm_get(e) & ((*mode >> 3) & 7) : 0;
	if (e)
		ovl_acl_perm_set(e, g);
	*mode = (*mode & ~0777) | (u << 6) | (g << 3) | o;
	return acc;
}

/* New entries are made in workdir, away from their parent, so the parent's default ACL
 * is applied here -- or, without one, the caller's umask.  To work/tmp, or to the file open
 * as fd when fd >= 0. */
static int ovl_inherit_acl(struct ovl_fs *fs, const char *dpath, const char *tmp, int fd,
			   mode_t *mode, mode_t umask)
{
	char pp[PATH_MAX + 32], tp[PATH_MAX + 32];
	acl_t def, acc;
	int ret = 0;

	if (S_ISLNK(*mode))
		return 0;
	if (fd_path(pp, sizeof(pp), fs->upper_fd, dpath) ||
	    (fd < 0 && fd_path(tp, sizeof(tp), fs->work_fd, tmp)))
		return -ENAMETOOLONG;
	def = acl_get_file(pp, ACL_TYPE_DEFAULT);
	if (!def || acl_entries(def) <= 0) {
		if (def)
			acl_free(def);
		*mode &= ~umask;
		if (fd >= 0)
			return fchmod(fd, *mode & 07777) < 0 ? -errno : 0;
		return fchmodat(fs->work_fd, tmp, *mode & 07777, 0) < 0 ? -errno : 0;
	}
	acc = ovl_acl_masked(def, mode);
	if (!acc || (fd >= 0 ? acl_set_fd(fd, acc) : acl_set_file(tp, ACL_TYPE_ACCESS, acc)) < 0)
		ret = -errno;
	if (!ret && fd < 0 && S_ISDIR(*mode) && acl_set_file(tp, ACL_TYPE_DEFAULT, def) < 0)
		ret = -errno;
	if (acc)
		acl_free(acc);
	acl_free(def);
	return ret;
}

static int ovl_new_node(struct ovl_fs *fs, struct ovl_node *dir, const char *name,
			const char *path, struct ovl_node **out, struct stat *st)
{
	struct ovl_res res = { 0 };
	struct ovl_node *n;

	if (fstatat(fs->upper_fd, path, &res.st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	res.lent = calloc(1, sizeof(*res.lent));
	if (!res.lent)
		return -ENOMEM;
	res.nlent = 1;
	res.lent[0].ref = res.st.st_ino;
	pthread_rwlock_wrlock(&fs->tree_lock);
	n = ovl_node_new(fs, dir, name, &res);
	if (n) {
		n->nlookup = 1;
		ovl_stat_top(fs, n, path, st);
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	*out = n;
	return n ? 0 : -ENOMEM;
}

static int ovl_make_tmp(struct ovl_fs *fs, const char *tmp, mode_t mode, dev_t rdev,
			const char *link, int oflags, int *fd)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		*fd = openat(fs->work_fd, tmp, (oflags & ~(O_TRUNC | O_NOFOLLOW)) | O_CREAT |
			     O_EXCL | O_CLOEXEC, mode & 07777);
		return *fd < 0 ? -errno : 0;
	case S_IFDIR:
		return mkdirat(fs->work_fd, tmp, mode & 07777) < 0 ? -errno : 0;
	case S_IFLNK:
		return symlinkat(link, fs->work_fd, tmp) < 0 ? -errno : 0;
	default:
		return mknodat(fs->work_fd, tmp, mode, rdev) < 0 ? -errno : 0;
	}
}

/* Whether a directory arriving at dir/name must be opaque so as not to merge with what is
 * below: a lower entry is whited out there, or (as the kernel does with redirect_dir) dir
 * is merged. */
static bool ovl_new_dir_opaque(struct ovl_fs *fs, struct ovl_node *dir, const char *dpath,
			       const char *name)
{
	return (!fs->o.no_redirect && dir->nlent > 1) || ovl_lower_has(fs, dir, dpath, name);
}

/*
 * The common create -- a new name with nothing under it in the upper, no set-id bits, no
 * override xattr, no opaque marker to set -- needs nothing that workdir's rename makes
 * atomic: made in place with the caller's fsuid/fsgid, it is born with its final owner,
 * mode and the directory's default ACL (the backing filesystem applies the ACL, the umask
 * and a setgid directory's group the way the kernel overlay's create has them applied),
 * and no two threads queue on workdir's lock or allocate all their inodes in its block
 * group.  Needs fs->setfsuid (the daemon keeps its capabilities across an fsuid switch,
 * as the kernel overlay creates with the mounter's).  -EAGAIN: take the workdir path.
 */
static int ovl_create_in_place(struct ovl_fs *fs, const char *dpath, const char *name,
			       const char *path, mode_t mode, dev_t rdev, const char *link,
			       int oflags, const struct ovl_cred *cred, int *fd)
{
	char whpath[PATH_MAX + 8], pp[PATH_MAX + 32];
	uid_t uid = ovl_uid_to_host(fs, cred->uid), ouid;
	gid_t gid = ovl_gid_to_host(fs, cred->gid), ogid;
	struct stat st;
	int ret = 0;

	if (!fs->setfsuid || fs->o.xattr_permissions || (mode & (S_ISUID | S_ISGID)))
		return -EAGAIN;
	snprintf(whpath, sizeof(whpath), "%s%s" WH_PREFIX "%s", dpath, *dpath ? "/" : "", name);
	if (fstatat(fs->upper_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 ||
	    fstatat(fs->upper_fd, whpath, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return -EAGAIN;         /* a whiteout to replace */
	if (!S_ISLNK(mode)) {
		if (fd_path(pp, sizeof(pp), fs->upper_fd, dpath))
			return -ENAMETOOLONG;
		/* With a default ACL the filesystem masks the mode by it, else by our umask
		 * (0): the caller's umask applies only then, as in the kernel. */
		if (getxattr(pp, "system.posix_acl_default", NULL, 0) <= 0)
			mode &= ~cred->umask;
	}
	/* setfsuid() answers with the previous value (nothing to check or undo when that is
	 * the one asked for: the daemon's own); -1 changes nothing and reads it. */
	ogid = (gid_t)setfsgid(gid);
	ouid = (uid_t)setfsuid(uid);
	if ((ouid != uid || ogid != gid) &&
	    ((uid_t)setfsuid((uid_t)-1) != uid || (gid_t)setfsgid((gid_t)-1) != gid) &&
	    !fs->rootless) {
		ret = -EAGAIN;  /* not ours to take on: chown in workdir says why */
		goto out;
	}
	switch (mode & S_IFMT) {
	case S_IFREG:
		*fd = openat(fs->upper_fd, path, (oflags & ~(O_TRUNC | O_NOFOLLOW)) | O_CREAT |
			     O_EXCL | O_CLOEXEC, mode & 07777);
		ret = *fd < 0 ? -errno : 0;
		break;
	case S_IFDIR:
		ret = mkdirat(fs->upper_fd, path, mode & 07777) < 0 ? -errno : 0;
		break;
	case S_IFLNK:
		ret = symlinkat(link, fs->upper_fd, path) < 0 ? -errno : 0;
		break;
	default:
		ret = mknodat(fs->upper_fd, path, mode, rdev) < 0 ? -errno : 0;
		break;
	}
out:
	if (ouid != uid)
		setfsuid(ouid);
	if (ogid != gid)
		setfsgid(ogid);
	return ret;
}

int ovl_create(struct ovl_fs *fs, struct ovl_node *dir, const char *name, mode_t mode,
	       dev_t rdev, const char *link, int oflags, const struct ovl_cred *cred,
	       struct ovl_node **out, struct stat *st, int *fd)
{
	char dpath[PATH_MAX], path[PATH_MAX], tmp[64];
	struct ovl_child c;
	struct stat pst;
	bool opaque;
	int ret, lfd = -1;

	if (wh_is_reserved_name(name))
		return -EINVAL;
	/* A whiteout is ours to make: the kernel overlay refuses it too. */
	if (S_ISCHR(mode) && rdev == makedev(0, 0))
		return -EPERM;
	ovl_ns_begin_create(fs, dir);
	ret = ovl_paths(fs, dir, name, dpath, path);
	if (ret)
		goto out;
	ret = ovl_child_get(fs, dir, dpath, name, &c);
	if (ret != -ENOENT) {
		if (!ret)
			ovl_child_put(&c);
		ret = ret ? ret : -EEXIST;
		goto out;
	}
	ret = ovl_copy_up(fs, dir);
	if (ret)
		goto out;
	/* A new directory where a lower one is whited out must not let it show through: built
	 * opaque in workdir. */
	opaque = S_ISDIR(mode) && ovl_new_dir_opaque(fs, dir, dpath, name);
	ret = opaque ? -EAGAIN : ovl_create_in_place(fs, dpath, name, path, mode, rdev, link,
						     oflags, cred, &lfd);
	if (ret != -EAGAIN) {
		if (!ret)
			ret = ovl_new_node(fs, dir, name, path, out, st);
		goto out;               /* which closes lfd on failure */
	}
	if (fstatat(fs->upper_fd, *dpath ? dpath : ".", &pst, 0) < 0) {
		ret = -errno;
		goto out;
	}
	if (S_ISDIR(mode) && (pst.st_mode & S_ISGID))
		mode |= S_ISGID;
	ret = ovl_tmpname(fs, tmp, sizeof(tmp));
	if (!ret)
		ret = ovl_make_tmp(fs, tmp, mode, rdev, link, oflags, &lfd);
	if (ret)
		goto out;
	ret = ovl_inherit_acl(fs, dpath, tmp, -1, &mode, cred->umask);
	if (!ret)
		ret = ovl_set_owner(fs, tmp, -1, &pst, cred, mode);
	if (!ret && opaque) {
		int dfd = openat(fs->work_fd, tmp, O_PATH | O_DIRECTORY | O_CLOEXEC);

		ret = dfd < 0 ? -errno : wh_set_opaque(dfd, fs->priv);
		if (dfd >= 0)
			close(dfd);
	}
	if (!ret)
		ret = ovl_install(fs, tmp, dpath, name, path);
	if (ret) {
		unlinkat(fs->work_fd, tmp, S_ISDIR(mode) ? AT_REMOVEDIR : 0);
		goto out;
	}
	ret = ovl_new_node(fs, dir, name, path, out, st);
out:
	ovl_ns_end(fs);
	if (ret && lfd >= 0)
		close(lfd);
	else if (fd)
		*fd = lfd;
	else if (lfd >= 0)
		close(lfd);
	return ret;
}

/* A new name upper/path (in dpath) for the file at (odfd, opath): linked into workdir,
 * then moved into place like any new entry. */
static int ovl_link_into(struct ovl_fs *fs, int odfd, const char *opath, int flags,
			 const char *dpath, const char *name, const char *path)
{
	char tmp[64];
	int ret = ovl_tmpname(fs, tmp, sizeof(tmp));

	if (ret)
		return ret;
	if (linkat(odfd, opath, fs->work_fd, tmp, flags) < 0)
		return -errno;
	ret = ovl_install(fs, tmp, dpath, name, path);
	if (ret)
		unlinkat(fs->work_fd, tmp, 0);
	return ret;
}

/*
 * O_TMPFILE: an unnamed file for dir, made with O_TMPFILE in workdir (the upper's file
 * system, so a later link lands it in the upper), with the caller's O_EXCL (never
 * linkable then).  Owner, mode and inherited ACL are set the way ovl_create sets them, but
 * through the fd: a link to a temporary name would do for the path-based calls, but the
 * first link of an O_TMPFILE file makes it unlinkable once that name is gone again.  The
 * node is born gone (no name, like an unlinked open file) and reaches its file through
 * orphan_fd; *st says nlink 1, which the kernel's d_tmpfile() drops to 0.  dir is copied
 * up first, as the kernel overlay does.
 */
int ovl_tmpfile(struct ovl_fs *fs, struct ovl_node *dir, mode_t mode, int oflags,
		const struct ovl_cred *cred, struct ovl_node **out, struct stat *st, int *fd)
{
	char dpath[PATH_MAX], path[PATH_MAX], proc[64];
	struct ovl_res res = { 0 };
	struct ovl_node *n = NULL;
	struct stat pst;
	int ret, lfd = -1, ofd = -1;

	if (!fs->has_upper)
		return -EROFS;
	pthread_rwlock_wrlock(&fs->copy_lock);
	ret = ovl_paths(fs, dir, "x", dpath, path);
	if (!ret)
		ret = ovl_copy_up(fs, dir);
	if (!ret && fstatat(fs->upper_fd, *dpath ? dpath : ".", &pst, 0) < 0)
		ret = -errno;
	if (!ret) {
		lfd = openat(fs->work_fd, ".", (oflags & ~(O_CREAT | O_TRUNC | O_NOFOLLOW |
							   O_DIRECTORY)) | O_TMPFILE | O_CLOEXEC,
			     mode & 07777);
		if (lfd < 0)
			ret = -errno;
	}
	if (!ret)
		ret = ovl_inherit_acl(fs, dpath, NULL, lfd, &mode, cred->umask);
	if (!ret)
		ret = ovl_set_owner(fs, NULL, lfd, &pst, cred, mode);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", lfd);
	if (!ret && (fstat(lfd, &res.st) < 0 ||
		     (ofd = openat(AT_FDCWD, proc, O_PATH | O_CLOEXEC)) < 0))
		ret = -errno;
	if (!ret && !(res.lent = calloc(1, sizeof(*res.lent))))
		ret = -ENOMEM;
	if (!ret) {
		res.nlent = 1;
		res.lent[0].ref = res.st.st_ino;
		pthread_rwlock_wrlock(&fs->tree_lock);
		n = ovl_node_new(fs, dir, "/", &res);   /* a name no lookup can ask for */
		if (n) {
			ovl_node_unhash(fs, n);
			n->gone = 2;
			n->tmpfile = true;
			n->orphan_fd = ofd;
			ofd = -1;
			n->nlookup = 1;
			*st = res.st;
			ovl_map_stat(fs, st);
			st->st_ino = n->ino;
			st->st_nlink = 1;
		}
		pthread_rwlock_unlock(&fs->tree_lock);
		if (!n)
			ret = -ENOMEM;
	}
	pthread_rwlock_unlock(&fs->copy_lock);
	if (ofd >= 0)
		close(ofd);
	if (ret) {
		if (lfd >= 0)
			close(lfd);
		return ret;
	}
	*out = n;
	*fd = lfd;
	return 0;
}

/* LINK of an O_TMPFILE node (ovl_tmpfile): its file gets the name, and the node the name
 * (it is a plain upper file from then on).  Caller holds copy_lock; dir is in the upper. */
static int ovl_link_tmpfile(struct ovl_fs *fs, struct ovl_node *src, struct ovl_node *dir,
			    const char *name, const char *dpath, const char *path,
			    struct ovl_node **out, struct stat *st)
{
	char proc[64];
	int ret;

	pthread_rwlock_rdlock(&fs->tree_lock);
	ret = src->tmpfile ? ovl_node_orphan_path(src, proc, sizeof(proc)) : -ESTALE;
	pthread_rwlock_unlock(&fs->tree_lock);
	/* ENOENT for a file opened with O_EXCL: never linkable, as the kernel has it. */
	if (!ret)
		ret = ovl_link_into(fs, AT_FDCWD, proc, AT_SYMLINK_FOLLOW, dpath, name, path);
	if (ret)
		return ret;
	pthread_rwlock_wrlock(&fs->tree_lock);
	ret = fstatat(fs->upper_fd, path, st, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	if (!ret && src->tmpfile) {
		ovl_node_move(fs, src, dir, name);
		src->gone = 0;
		src->tmpfile = false;
		close(src->orphan_fd);
		src->orphan_fd = -1;
		ret = ovl_stat_top(fs, src, path, st);
	}
	if (!ret) {
		src->nlookup++;
		*out = src;
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	return ret;
}

int ovl_link(struct ovl_fs *fs, struct ovl_node *src, struct ovl_node *dir, const char *name,
	     struct ovl_node **out, struct stat *st)
{
	char dpath[PATH_MAX], path[PATH_MAX], spath[PATH_MAX];
	struct ovl_child c;
	int ret;

	if (wh_is_reserved_name(name))
		return -EINVAL;
	ovl_ns_begin(fs);
	ret = ovl_paths(fs, dir, name, dpath, path);
	if (ret)
		goto out;
	ret = ovl_child_get(fs, dir, dpath, name, &c);
	if (ret != -ENOENT) {
		if (!ret)
			ovl_child_put(&c);
		ret = ret ? ret : -EEXIST;
		goto out;
	}
	if (src->tmpfile) {
		ret = ovl_copy_up(fs, dir);
		if (!ret)
			ret = ovl_link_tmpfile(fs, src, dir, name, dpath, path, out, st);
		goto out;
	}
	ret = ovl_copy_up(fs, src);
	if (!ret)
		ret = ovl_copy_up(fs, dir);
	if (ret)
		goto out;
	pthread_rwlock_rdlock(&fs->tree_lock);
	ret = ovl_node_path(src, spath, sizeof(spath));
	pthread_rwlock_unlock(&fs->tree_lock);
	if (!ret)
		ret = ovl_link_into(fs, fs->upper_fd, spath, 0, dpath, name, path);
	if (ret)
		goto out;
	/* One node for every name of the file: the kernel sees one inode (locks, nlink). */
	pthread_rwlock_wrlock(&fs->tree_lock);
	ret = fstatat(fs->upper_fd, path, st, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	if (!ret) {
		ovl_hl_add(fs, src, st->st_ino);
		ret = ovl_alias_add(fs, src, dir, name);
	}
	if (!ret)
		ret = ovl_stat_top(fs, src, path, st);
	if (!ret) {
		src->nlookup++;
		*out = src;
	}
	pthread_rwlock_unlock(&fs->tree_lock);
out:
	ovl_ns_end(fs);
	return ret;
}

/* Empty an upper directory the merged view says is empty: only whiteouts can be in it. */
static int ovl_clear_whiteouts(struct ovl_fs *fs, int parentfd, const char *path)
{
	struct dirent *de;
	DIR *d;
	int fd, ret = 0;

	fd = openat(parentfd, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	while ((de = readdir(d)) != NULL) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) < 0 && !ret)
			ret = -errno;
	}
	closedir(d);
	(void)fs;
	return ret;
}

static int ovl_dir_empty(struct ovl_fs *fs, struct ovl_node *n)
{
	struct ovl_dir d;
	int ret = ovl_dir_read(fs, n, &d);

	if (ret)
		return ret;
	ret = d.n ? -ENOTEMPTY : 0;
	ovl_dir_free(&d);
	return ret;
}

/* Take the upper entry at `path` away, leaving a whiteout there if `wh` (atomically: the
 * whiteout is made in workdir and exchanged or renamed over the entry). */
static int ovl_remove_upper(struct ovl_fs *fs, const char *dpath, const char *name,
			    const char *path, bool isdir, bool wh)
{
	char tmp[64];
	int ret, pfd;

	ret = ovl_tmpname(fs, tmp, sizeof(tmp));
	if (ret)
		return ret;
	if (isdir) {
		ret = ovl_clear_whiteouts(fs, fs->upper_fd, path);
		if (ret)
			return ret;
	}
	if (wh && wh_create_shared(fs->work_fd, fs->work_fd, tmp, fs->priv, false) == 0) {
		if (renameat2(fs->work_fd, tmp, fs->upper_fd, path,
			      isdir ? RENAME_EXCHANGE : 0) < 0) {
			ret = -errno;
			unlinkat(fs->work_fd, tmp, 0);
			return ret;
		}
		if (isdir && unlinkat(fs->work_fd, tmp, AT_REMOVEDIR) < 0)
			return -errno;
		return 0;
	}
	if (unlinkat(fs->upper_fd, path, isdir ? AT_REMOVEDIR : 0) < 0)
		return -errno;
	if (!wh)
		return 0;
	pfd = openat(fs->upper_fd, *dpath ? dpath : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (pfd < 0)
		return -errno;
	ret = wh_create_shared(fs->work_fd, pfd, name, fs->priv, true);
	close(pfd);
	return ret;
}

/*
 * An upper file about to lose its last name while the kernel still knows its inode: keep
 * an O_PATH to it until the kernel forgets the inode, so that fstat, ftruncate, fchmod, an
 * open that raced with the removal, and reopening through /proc reach that file -- not
 * whatever its old path names now.  Caller holds tree_lock exclusive, so no reader is
 * between turning the node into a path and using it.
 */
static int ovl_orphan_open(struct ovl_fs *fs, struct ovl_child *c, const char *path)
{
	if (c->temp || !S_ISREG(c->n->type) || !ovl_in_upper(fs, c->n) || c->n->aliases ||
	    !__atomic_load_n(&c->n->nlookup, __ATOMIC_SEQ_CST))
		return -1;
	return openat(fs->upper_fd, path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
}

/* Caller holds tree_lock exclusive. */
static void ovl_orphan_keep(struct ovl_node *n, int *fd)
{
	if (*fd >= 0 && n->gone == 2 && n->orphan_fd < 0) {
		n->orphan_fd = *fd;
		*fd = -1;
	}
}

int ovl_unlink(struct ovl_fs *fs, struct ovl_node *dir, const char *name, bool isdir)
{
	char dpath[PATH_MAX], path[PATH_MAX];
	struct ovl_child c;
	bool wh;
	int ret, pfd, orphan;

	ovl_ns_begin(fs);
	ret = ovl_paths(fs, dir, name, dpath, path);
	if (!ret)
		ret = ovl_child_get(fs, dir, dpath, name, &c);
	if (ret)
		goto out;
	if (isdir && !S_ISDIR(c.n->type))
		ret = -ENOTDIR;
	else if (!isdir && S_ISDIR(c.n->type))
		ret = -EISDIR;
	else if (!fs->has_upper)
		ret = -EROFS;
	else if (isdir)
		ret = ovl_dir_empty(fs, c.n);
	if (!ret)
		ret = ovl_copy_up(fs, dir);
	if (ret)
		goto put;
	wh = ovl_lower_has(fs, dir, dpath, name);
	/* Readers turn nodes into paths under tree_lock: none may see the old node's path
	 * once it names nothing, or something else. */
	pthread_rwlock_wrlock(&fs->tree_lock);
	orphan = ovl_orphan_open(fs, &c, path);
	if (ovl_in_upper(fs, c.n)) {
		ret = ovl_remove_upper(fs, dpath, name, path, isdir, wh);
	} else {
		pfd = openat(fs->upper_fd, *dpath ? dpath : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
		ret = pfd < 0 ? -errno : wh_create_shared(fs->work_fd, pfd, name, fs->priv, true);
		if (pfd >= 0)
			close(pfd);
	}
	if (!ret && !c.temp) {
		ovl_name_drop(fs, c.n, dir, name);
		ovl_orphan_keep(c.n, &orphan);
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	if (orphan >= 0)
		close(orphan);
put:
	ovl_child_put(&c);
out:
	ovl_ns_end(fs);
	return ret;
}

/* A directory whose content comes (partly) from a lower layer cannot simply move: the
 * kernel needs redirect_dir for that, and without it answers EXDEV so that mv copies. */
static bool ovl_dir_has_lower(struct ovl_fs *fs, struct ovl_node *n)
{
	return S_ISDIR(n->type) && (!ovl_in_upper(fs, n) || n->nlent > 1);
}

static int ovl_set_opaque_at(struct ovl_fs *fs, const char *path)
{
	int dfd = openat(fs->upper_fd, path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int ret;

	if (dfd < 0)
		return -errno;
	ret = wh_set_opaque(dfd, fs->priv);
	close(dfd);
	return ret;
}

/* A directory moved in: opaque where it could merge with what is below. */
static int ovl_opaque_if_lower(struct ovl_fs *fs, struct ovl_node *ndir, const char *ndpath,
			       const char *nname, const char *npath)
{
	return ovl_new_dir_opaque(fs, ndir, ndpath, nname) ? ovl_set_opaque_at(fs, npath) : 0;
}

static const char *ovl_redirect_xattr(struct ovl_fs *fs)
{
	return fs->priv ? OVL_XATTR_TRUSTED "redirect" : OVL_XATTR_USER "redirect";
}

static bool ovl_dir_pinned(const struct ovl_node *dir)
{
	int i;

	for (i = 0; i < dir->nlent; i++)
		if (dir->lent[i].path)
			return true;
	return false;
}

/*
 * redirect_dir: a directory with lower content moves in the upper only, carrying an xattr
 * that says where its lower content lives (the kernel's format: a sibling name when it
 * stays in its directory, else an absolute path from the layer root).  An existing
 * redirect stays when it still holds.
 */
static int ovl_set_redirect(struct ovl_fs *fs, struct ovl_node *s, struct ovl_node *dir,
			    const char *path, const char *name, bool samedir)
{
	char proc[PATH_MAX + 32], cur[PATH_MAX + 1], val[PATH_MAX + 2];
	ssize_t n;
	int ret = fd_path(proc, sizeof(proc), fs->upper_fd, path);

	if (ret)
		return ret;
	n = lgetxattr(proc, OVL_XATTR_TRUSTED "redirect", cur, sizeof(cur) - 1);
	if (n <= 0)
		n = lgetxattr(proc, OVL_XATTR_USER "redirect", cur, sizeof(cur) - 1);
	if (n > 0 && (samedir || cur[0] == '/'))
		return 0;
	if (samedir && !ovl_dir_pinned(dir))
		n = snprintf(val, sizeof(val), "%s", name);
	else if (s->nlent > 1)
		n = snprintf(val, sizeof(val), "/%s", ovl_lent_path(&s->lent[1], path));
	else
		return -EXDEV;
	if (n >= (ssize_t)sizeof(val))
		return -ENAMETOOLONG;
	return lsetxattr(proc, ovl_redirect_xattr(fs), val, n, 0) < 0 ? -errno : 0;
}

static int ovl_rename_checks(struct ovl_fs *fs, struct ovl_child *s, struct ovl_child *t,
			     bool have_t, unsigned int flags)
{
	if (flags & RENAME_EXCHANGE) {
		if (!have_t)
			return -ENOENT;
		if (ovl_dir_has_lower(fs, t->n) && fs->o.no_redirect)
			return -EXDEV;
		return 0;
	}
	if (!have_t)
		return 0;
	if (flags & RENAME_NOREPLACE)
		return -EEXIST;
	if (S_ISDIR(t->n->type) && !S_ISDIR(s->n->type))
		return -EISDIR;
	if (!S_ISDIR(t->n->type) && S_ISDIR(s->n->type))
		return -ENOTDIR;
	if (S_ISDIR(t->n->type))
		return ovl_dir_empty(fs, t->n);
	return 0;
}

/* Clear the way at the target in the upper: an empty-looking directory may hold
 * whiteouts, a whiteout char device cannot be replaced by a directory. */
static int ovl_rename_prepare_target(struct ovl_fs *fs, struct ovl_child *t, bool have_t,
				     bool src_dir, const char *ndpath, const char *nname,
				     const char *npath)
{
	char whpath[PATH_MAX + 8];
	struct stat st;

	if (have_t && ovl_in_upper(fs, t->n) && S_ISDIR(t->n->type))
		return ovl_clear_whiteouts(fs, fs->upper_fd, npath);
	if (fstatat(fs->upper_fd, npath, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    wh_is_chardev_whiteout(&st) && src_dir && unlinkat(fs->upper_fd, npath, 0) < 0)
		return -errno;
	snprintf(whpath, sizeof(whpath), "%s%s" WH_PREFIX "%s", ndpath, *ndpath ? "/" : "", nname);
	unlinkat(fs->upper_fd, whpath, 0);
	return 0;
}

static int ovl_rename_upper(struct ovl_fs *fs, const char *spath, const char *sdpath,
			    const char *sname, const char *npath, bool wh, bool exchange)
{
	int pfd, ret;

	if (exchange)
		return renameat2(fs->upper_fd, spath, fs->upper_fd, npath, RENAME_EXCHANGE) < 0
			? -errno : 0;
	if (wh && renameat2(fs->upper_fd, spath, fs->upper_fd, npath, RENAME_WHITEOUT) == 0)
		return 0;
	if (renameat(fs->upper_fd, spath, fs->upper_fd, npath) < 0)
		return -errno;
	if (!wh)
		return 0;
	pfd = openat(fs->upper_fd, *sdpath ? sdpath : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (pfd < 0)
		return -errno;
	ret = wh_create_shared(fs->work_fd, pfd, sname, fs->priv, true);
	close(pfd);
	return ret;
}

int ovl_rename(struct ovl_fs *fs, struct ovl_node *dir, const char *name,
	       struct ovl_node *ndir, const char *nname, unsigned int flags)
{
	char dpath[PATH_MAX], path[PATH_MAX], ndpath[PATH_MAX], npath[PATH_MAX];
	struct ovl_child s, t;
	bool have_t = false, wh, redirect, t_redirect = false;
	int ret, orphan = -1;

	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	if (wh_is_reserved_name(nname))
		return -EINVAL;
	if (!fs->has_upper)
		return -EROFS;
	ovl_ns_begin(fs);
	ret = ovl_paths(fs, dir, name, dpath, path);
	if (!ret)
		ret = ovl_paths(fs, ndir, nname, ndpath, npath);
	if (!ret)
		ret = ovl_child_get(fs, dir, dpath, name, &s);
	if (ret)
		goto out;
	redirect = ovl_dir_has_lower(fs, s.n);
	if (redirect && fs->o.no_redirect) {
		ret = -EXDEV;
		goto put_s;
	}
	ret = ovl_child_get(fs, ndir, ndpath, nname, &t);
	if (ret && ret != -ENOENT)
		goto put_s;
	have_t = ret == 0;
	if (have_t && t.n == s.n) {
		ret = 0;
		goto put_t;
	}
	ret = ovl_rename_checks(fs, &s, &t, have_t, flags);
	if (!ret)
		ret = ovl_copy_up(fs, s.n);
	if (!ret)
		ret = ovl_copy_up(fs, ndir);
	if (!ret && (flags & RENAME_EXCHANGE))
		ret = ovl_copy_up(fs, t.n);
	if (!ret && !(flags & RENAME_EXCHANGE))
		ret = ovl_rename_prepare_target(fs, &t, have_t, S_ISDIR(s.n->type), ndpath,
						nname, npath);
	/* An exchange moves the target too: it may need a redirect of its own. */
	t_redirect = (flags & RENAME_EXCHANGE) && ovl_dir_has_lower(fs, t.n);
	if (!ret && redirect)
		ret = ovl_set_redirect(fs, s.n, dir, path, name, dir == ndir);
	if (!ret && t_redirect)
		ret = ovl_set_redirect(fs, t.n, ndir, npath, nname, dir == ndir);
	if (ret)
		goto put_t;
	wh = !(flags & RENAME_EXCHANGE) && ovl_lower_has(fs, dir, dpath, name);
	/* As in ovl_unlink: the rename and the node moves are one step for readers -- and so is
	 * pinning the lower paths of the moving trees: a lookup that added a node below them
	 * between a pin and the move would keep a lower entry named by the merged path, which
	 * the move then makes wrong. */
	pthread_rwlock_wrlock(&fs->tree_lock);
	if (redirect && !s.temp)
		ret = ovl_node_pin_lower_paths(fs, s.n);
	if (!ret && t_redirect && !t.temp)
		ret = ovl_node_pin_lower_paths(fs, t.n);
	if (ret) {
		pthread_rwlock_unlock(&fs->tree_lock);
		goto put_t;
	}
	if (have_t && !(flags & RENAME_EXCHANGE))
		orphan = ovl_orphan_open(fs, &t, npath);
	ret = ovl_rename_upper(fs, path, dpath, name, npath, wh, flags & RENAME_EXCHANGE);
	if (!ret) {
		if (have_t && !t.temp && !(flags & RENAME_EXCHANGE)) {
			ovl_name_drop(fs, t.n, ndir, nname);
			ovl_orphan_keep(t.n, &orphan);
		}
		if (!s.temp)
			ovl_name_move(fs, s.n, dir, name, ndir, nname);
		if ((flags & RENAME_EXCHANGE) && !t.temp)
			ovl_name_move(fs, t.n, ndir, nname, dir, name);
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	if (orphan >= 0)
		close(orphan);
	if (ret)
		goto put_t;
	if (S_ISDIR(s.n->type) && !redirect)
		ovl_opaque_if_lower(fs, ndir, ndpath, nname, npath);
	if ((flags & RENAME_EXCHANGE) && S_ISDIR(t.n->type) && !t_redirect)
		ovl_opaque_if_lower(fs, dir, dpath, name, path);
put_t:
	if (have_t)
		ovl_child_put(&t);
put_s:
	ovl_child_put(&s);
out:
	ovl_ns_end(fs);
	return ret;
}
