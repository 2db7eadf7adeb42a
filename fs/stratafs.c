// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * stratafs: fuse_lowlevel_ops -> overlay calls.  Each op translates its request, calls the
 * overlay, and replies exactly once on every path.  Node ids are node pointers; the root is
 * FUSE_ROOT_ID.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <linux/capability.h>
#include <linux/securebits.h>

#include "stratafs.h"
#include "fdpath.h"
#include "passthrough.h"
#include "prefetch.h"
#include "dirahead.h"
#include "overlay/ovl.h"
#include "overlay/whiteout.h"

struct sfs {
	struct pt_state pt;             /* first: libfuse hands the session's userdata to
					 * the passthrough I/O callbacks */
	struct ovl_fs fs;
	struct sfs_config cfg;
	struct fuse_session *se;
	uint64_t reads, writes;         /* READ/WRITE requests that reached the daemon */
	uint64_t getxattrs;             /* GETXATTR requests (but the stats') */
	uint64_t listings;              /* merged listings read by readdir requests */
	bool no_open;                   /* read-only mount: the kernel sends no OPEN/RELEASE */
	struct pf *pf;                  /* read-ahead of small image files, or NULL */
	struct da *da;                  /* read-ahead of directories, or NULL */
};

struct sfs_fh {
	int fd;                         /* host fd, or -1 for image files */
	struct layer_file *lf;
	struct layer *l;
	struct ovl_node *node;
	struct layer_file *old_lf;      /* the lower file it read before a copy-up */
	int backing;                    /* passthrough backing id, 0 for none */
	bool cached;                    /* counted in node->cached_opens */
};

static struct sfs *sfs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct ovl_node *sfs_node(fuse_req_t req, fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? sfs_of(req)->fs.root : (struct ovl_node *)(uintptr_t)ino;
}

static fuse_ino_t sfs_id(struct sfs *s, struct ovl_node *n)
{
	return n == s->fs.root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}

static int sfs_open_fh(struct sfs *s, struct ovl_node *n, int flags, struct sfs_fh **out);
static void sfs_fh_free(struct sfs_fh *fh);

static struct sfs_fh *sfs_fh(struct fuse_file_info *fi)
{
	return (struct sfs_fh *)(uintptr_t)fi->fh;
}

/*
 * The handle of a request.  On read-only mounts the kernel opens nothing
 * (FUSE_NO_OPEN_SUPPORT: no OPEN/RELEASE round trip per file, cached reads cost nothing)
 * and sends fh 0: reads then share one handle per node, made on first use and closed
 * with the node.  NULL if it cannot be made (the caller answers EIO).
 */
static struct sfs_fh *sfs_fh_get(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ovl_node *n;
	struct sfs_fh *fh;

	if (fi && fi->fh)
		return sfs_fh(fi);
	n = sfs_node(req, ino);
	pthread_mutex_lock(&n->lock);
	if (!n->reader && sfs_open_fh(sfs_of(req), n, O_RDONLY, &fh) == 0)
		n->reader = fh;
	fh = n->reader;
	pthread_mutex_unlock(&n->lock);
	return fh;
}

static void sfs_reader_free(void *fh)
{
	sfs_fh_free(fh);
}

/* Other names of a hard link are other nodes: keep their cached attrs short. */
static double sfs_attr_timeout(struct sfs *s, const struct stat *st)
{
	return !S_ISDIR(st->st_mode) && st->st_nlink > 1 ? 0 : s->fs.o.timeout;
}

static void sfs_entry(fuse_req_t req, struct ovl_node *n, const struct stat *st,
		      struct fuse_entry_param *e)
{
	struct sfs *s = sfs_of(req);

	memset(e, 0, sizeof(*e));
	e->ino = sfs_id(s, n);
	e->attr = *st;
	e->attr_timeout = sfs_attr_timeout(s, st);
	e->entry_timeout = s->fs.o.timeout;
}

static void sfs_reply_entry(fuse_req_t req, int ret, struct ovl_node *n, const struct stat *st)
{
	struct fuse_entry_param e;

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	sfs_entry(req, n, st, &e);
	fuse_reply_entry(req, &e);
}

static void sfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct sfs *s = sfs_of(req);
	struct ovl_node *n;
	struct stat st;
	int ret = ovl_lookup(&s->fs, sfs_node(req, parent), name, &n, &st);

	if (ret == -ENOENT) {
		/* Cache the miss in the kernel: only we can make it appear. */
		struct fuse_entry_param e = { .ino = 0, .entry_timeout = s->fs.o.timeout };

		fuse_reply_entry(req, &e);
		return;
	}
	sfs_reply_entry(req, ret, n, &st);
}

static void sfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	ovl_node_forget(&sfs_of(req)->fs, sfs_node(req, ino), nlookup);
	fuse_reply_none(req);
}

static void sfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f)
{
	size_t i;

	for (i = 0; i < count; i++)
		ovl_node_forget(&sfs_of(req)->fs, sfs_node(req, f[i].ino), f[i].nlookup);
	fuse_reply_none(req);
}

static int sfs_stat_node(fuse_req_t req, struct ovl_node *n, struct fuse_file_info *fi,
			 struct stat *st)
{
	int ret = ovl_getattr(&sfs_of(req)->fs, n, st);

	/* An open file whose name is gone (and not kept by ovl_unlink): its fd still knows. */
	if ((ret == -ENOENT || ret == -ESTALE) && fi && fi->fh && sfs_fh(fi)->fd >= 0 &&
	    fstat(sfs_fh(fi)->fd, st) == 0) {
		st->st_ino = n->ino;
		ovl_map_stat(&sfs_of(req)->fs, st);
		ret = 0;
	}
	return ret;
}

static void sfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int ret = sfs_stat_node(req, sfs_node(req, ino), fi, &st);

	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, sfs_attr_timeout(sfs_of(req), &st));
}

/* Copy the node up and hand back its upper path; holds copy_lock until sfs_upper_done(). */
static int sfs_upper_begin(struct sfs *s, struct ovl_node *n, char *path)
{
	int ret;

	pthread_rwlock_wrlock(&s->fs.copy_lock);
	ret = ovl_copy_up(&s->fs, n);
	if (!ret) {
		pthread_rwlock_rdlock(&s->fs.tree_lock);
		ret = ovl_node_path(n, path, PATH_MAX);
		/* Gone but open: the path is absolute, through /proc (follow it). */
		if (ret == -ESTALE)
			ret = ovl_node_orphan_path(n, path, PATH_MAX);
		pthread_rwlock_unlock(&s->fs.tree_lock);
	}
	if (ret)
		pthread_rwlock_unlock(&s->fs.copy_lock);
	return ret;
}

static void sfs_upper_done(struct sfs *s)
{
	pthread_rwlock_unlock(&s->fs.copy_lock);
}

/*
 * sfs_upper_begin() hands back a path below the upper root, or for a removed file kept
 * open by ovl_unlink an absolute /proc/self/fd/N magic link, which calls must follow
 * (the no-follow forms would act on the link itself).
 */
static bool sfs_is_orphan_path(const char *path)
{
	return *path == '/';
}

static int sfs_upper_proc(struct sfs *s, const char *path, char *buf, size_t size)
{
	if (sfs_is_orphan_path(path))
		return snprintf(buf, size, "%s", path) < (int)size ? 0 : -ENAMETOOLONG;
	return fd_path(buf, size, s->fs.upper_fd, path);
}

static int sfs_do_setattr(struct sfs *s, struct ovl_node *n, const char *path,
			  struct stat *attr, int to_set, int fd)
{
	const char *p = *path ? path : ".";
	int nofollow = sfs_is_orphan_path(path) ? 0 : AT_SYMLINK_NOFOLLOW;
	char proc[PATH_MAX + 32];
	struct stat cur;
	int ret = sfs_upper_proc(s, path, proc, sizeof(proc));

	if (ret)
		return ret;
	if (s->fs.o.xattr_permissions && (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID |
						    FUSE_SET_ATTR_GID))) {
		ret = ovl_getattr(&s->fs, n, &cur);
		if (ret)
			return ret;
		ret = ovl_override_write(&s->fs, proc,
			(to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : cur.st_uid,
			(to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : cur.st_gid,
			(to_set & FUSE_SET_ATTR_MODE) ? attr->st_mode : cur.st_mode);
		if (ret)
			return ret;
		to_set &= ~(FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID);
	}
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? ovl_uid_to_host(&s->fs, attr->st_uid)
							 : (uid_t)-1;
		gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? ovl_gid_to_host(&s->fs, attr->st_gid)
							 : (gid_t)-1;

		if (fchownat(s->fs.upper_fd, p, uid, gid, nofollow) < 0)
			return -errno;
	}
	if ((to_set & FUSE_SET_ATTR_MODE) && fchmodat(s->fs.upper_fd, p, attr->st_mode & 07777, 0) < 0)
		return -errno;
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (fd >= 0 ? ftruncate(fd, attr->st_size) < 0
			    : truncate(proc, attr->st_size) < 0)
			return -errno;
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };

		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			ts[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			ts[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			ts[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			ts[1] = attr->st_mtim;
		if (utimensat(s->fs.upper_fd, p, ts, nofollow) < 0)
			return -errno;
	}
	return 0;
}

/*
 * Clearing privileges.  The VFS's rule, which the kernel overlay follows:
 *  - a write or truncate (or an open with O_TRUNC) of a regular file by a caller without
 *    CAP_FSETID clears S_ISUID, and S_ISGID if the file is group-executable or the caller
 *    is not in its group;
 *  - a change of owner of any non-directory clears S_ISUID whoever asks, and S_ISGID if the
 *    file is group-executable or the caller is neither in its group nor has CAP_FSETID;
 *  - all of them drop security.capability.
 * Without FUSE_HANDLE_KILLPRIV_V2 the kernel's FUSE does some of it (a SETATTR of the mode
 * before the write) and drops the rest: S_ISGID of a file that is not group-executable, and
 * the O_TRUNC of an atomic open; what it dropped reaches us as a SETATTR that sets nothing,
 * or not at all.  With it (taken with passthrough: passthrough.c says why) the kernel
 * leaves all of it to us.  So the daemon applies the rule itself wherever the request says
 * the data or the owner changes: a SETATTR of the size or the owner, one that sets nothing
 * (how a write through passthrough asks), an OPEN with O_TRUNC, and a WRITE or SETATTR with
 * a kill flag.  security.capability needs nothing from us: our own write, truncate or chown
 * of the upper file has the backing filesystem apply the rule to it.  The caller's
 * capabilities and groups come from /proc, only for files that have set-id bits.
 */
#define SFS_INIT_USER_NS_INO 0xEFFFFFFDu

static bool sfs_caller_fsetid(fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	char path[64], line[256];
	struct stat ns;
	bool has = false, found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)ctx->pid);
	f = fopen(path, "re");
	if (!f)
		return ctx->uid == 0;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "CapEff:", 7)) {
			has = (strtoull(line + 7, NULL, 16) >> CAP_FSETID) & 1;
			found = true;
			break;
		}
	}
	fclose(f);
	if (!found)
		return ctx->uid == 0;
	/* The kernel asks capable(): a capability in the initial user namespace, whose nsfs
	 * inode number is fixed (PROC_USER_INIT_INO).  A caller in a user namespace -- every
	 * caller of a rootless daemon -- has none there. */
	snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)ctx->pid);
	if (has && (stat(path, &ns) < 0 || ns.st_ino != SFS_INIT_USER_NS_INO))
		has = false;
	return has;
}

static bool sfs_caller_in_group(fuse_req_t req, gid_t gid)
{
	gid_t small[64], *list = small;
	int n, i, size = 64;
	bool in = fuse_req_ctx(req)->gid == gid;

	if (in)
		return true;
	n = fuse_req_getgroups(req, size, list);
	if (n > size && (list = malloc(sizeof(*list) * (size_t)n)) != NULL) {
		size = n;
		n = fuse_req_getgroups(req, size, list);
	}
	for (i = 0; list && i < n && i < size && !in; i++)
		in = list[i] == gid;
	if (list != small)
		free(list);
	return in;
}

/* The mode a write/truncate (PT_KILL_WRITE) or change of owner (PT_KILL_CHOWN) by the
 * caller of `req` leaves on a file whose attributes are `st`. */
static mode_t sfs_killed_mode(fuse_req_t req, enum pt_kill kind, const struct stat *st)
{
	mode_t m = st->st_mode;
	bool fsetid;

	if (kind == PT_KILL_NONE || S_ISDIR(m) || (kind == PT_KILL_WRITE && !S_ISREG(m)) ||
	    !(m & (S_ISUID | S_ISGID)))
		return m;
	fsetid = sfs_caller_fsetid(req);
	if (kind == PT_KILL_WRITE && fsetid)
		return m;
	if ((m & S_ISGID) && ((m & S_IXGRP) || (!fsetid && !sfs_caller_in_group(req, st->st_gid))))
		m &= ~S_ISGID;
	return m & ~S_ISUID;
}

/* Before an operation that changes the data (PT_KILL_WRITE) or the owner (PT_KILL_CHOWN)
 * of node `n`, or that carries a kill flag: the mode the node must have after it, or 0
 * when nothing is to be cleared. */
static mode_t sfs_kill_begin(fuse_req_t req, struct ovl_node *n, enum pt_kill kind)
{
	struct stat st;
	mode_t m;

	if (pt_kill_request() > kind)
		kind = pt_kill_request();
	if (kind == PT_KILL_NONE || ovl_getattr(&sfs_of(req)->fs, n, &st))
		return 0;
	m = sfs_killed_mode(req, kind, &st);
	return m == st.st_mode ? 0 : m;
}

/* After it (for an OPEN or WRITE: the kernel's cached mode is stale then). */
static void sfs_kill_end(fuse_req_t req, fuse_ino_t ino, struct ovl_node *n, mode_t mode)
{
	struct sfs *s = sfs_of(req);
	struct stat a = { .st_mode = mode };
	char path[PATH_MAX];

	if (!mode || sfs_upper_begin(s, n, path))
		return;
	sfs_do_setattr(s, n, path, &a, FUSE_SET_ATTR_MODE, -1);
	sfs_upper_done(s);
	fuse_lowlevel_notify_inval_inode(s->se, ino, -1, 0);
}

static void sfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	struct sfs *s = sfs_of(req);
	struct ovl_node *n = sfs_node(req, ino);
	char path[PATH_MAX];
	struct stat st, killed;
	int ret;

	if (to_set & FUSE_SET_ATTR_SIZE)
		pf_block(s->pf, n);
	killed.st_mode = sfs_kill_begin(req, n,
		(to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) ? PT_KILL_CHOWN :
		(!to_set || (to_set & FUSE_SET_ATTR_SIZE)) ? PT_KILL_WRITE : PT_KILL_NONE);
	ret = sfs_upper_begin(s, n, path);
	if (!ret) {
		ret = sfs_do_setattr(s, n, path, attr, to_set,
				     fi && fi->fh ? sfs_fh(fi)->fd : -1);
		if (!ret && killed.st_mode)
			ret = sfs_do_setattr(s, n, path, &killed, FUSE_SET_ATTR_MODE, -1);
		sfs_upper_done(s);
	}
	if (!ret)
		ret = sfs_stat_node(req, n, fi, &st);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, sfs_attr_timeout(s, &st));
}

static void sfs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct sfs *s = sfs_of(req);
	struct ovl_node *n = sfs_node(req, ino);
	char path[PATH_MAX], buf[PATH_MAX + 1];
	struct layer *l;
	int ret;

	pthread_rwlock_rdlock(&s->fs.tree_lock);
	ret = ovl_node_path(n, path, sizeof(path));
	if (!ret) {
		l = s->fs.layers[n->lent[0].layer];
		struct lnode ln = ovl_top(n, path);

		ret = l->ops->readlink(l, &ln, buf, PATH_MAX);
	}
	pthread_rwlock_unlock(&s->fs.tree_lock);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	buf[ret] = 0;
	fuse_reply_readlink(req, buf);
}

static void sfs_make(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev, const char *link)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct ovl_cred cred = { ctx->uid, ctx->gid, ctx->umask };
	struct ovl_node *n = NULL;
	struct stat st;
	int ret = ovl_create(&sfs_of(req)->fs, sfs_node(req, parent), name, mode, rdev, link, 0,
			     &cred, &n, &st, NULL);

	sfs_reply_entry(req, ret, n, &st);
}

static void sfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      dev_t rdev)
{
	sfs_make(req, parent, name, mode, rdev, NULL);
}

static void sfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	sfs_make(req, parent, name, S_IFDIR | (mode & 07777), 0, NULL);
}

static void sfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	sfs_make(req, parent, name, S_IFLNK | 0777, 0, link);
}

static void sfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -ovl_unlink(&sfs_of(req)->fs, sfs_node(req, parent), name, false));
}

static void sfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -ovl_unlink(&sfs_of(req)->fs, sfs_node(req, parent), name, true));
}

static void sfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		       fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	fuse_reply_err(req, -ovl_rename(&sfs_of(req)->fs, sfs_node(req, parent), name,
					sfs_node(req, newparent), newname, flags));
}

static void sfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct ovl_node *n = NULL;
	struct stat st;
	int ret = ovl_link(&sfs_of(req)->fs, sfs_node(req, ino), sfs_node(req, newparent),
			   newname, &n, &st);

	/* The new name is a node of its own: the source's cached nlink is stale now. */
	if (!ret)
		fuse_lowlevel_notify_inval_inode(sfs_of(req)->se, ino, -1, 0);
	sfs_reply_entry(req, ret, n, &st);
}

static int sfs_open_fh(struct sfs *s, struct ovl_node *n, int flags, struct sfs_fh **out)
{
	struct sfs_fh *fh = calloc(1, sizeof(*fh));
	char path[PATH_MAX];
	bool write = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
	int ret;

	if (!fh)
		return -ENOMEM;
	fh->fd = -1;
	/* The kernel does O_DIRECT against us; the host file needs no alignment games. */
	flags &= ~(O_CREAT | O_EXCL | O_NOCTTY | O_DIRECT);
	if (write) {
		pf_block(s->pf, n);     /* no read-ahead push may land after the writes */
		ret = sfs_upper_begin(s, n, path);
		if (!ret) {
			fh->fd = openat(s->fs.upper_fd, path,
					flags | (sfs_is_orphan_path(path) ? 0 : O_NOFOLLOW) |
					O_CLOEXEC);
			ret = fh->fd < 0 ? -errno : 0;
			sfs_upper_done(s);
		}
	} else {
		pthread_rwlock_rdlock(&s->fs.tree_lock);
		ret = ovl_node_path(n, path, sizeof(path));
		if (!ret) {
			fh->l = s->fs.layers[n->lent[0].layer];
			struct lnode ln = ovl_top(n, path);

			ret = fh->l->ops->open(fh->l, &ln,
					       flags & ~O_TRUNC, &fh->lf);
		} else if (ret == -ESTALE && ovl_node_orphan_path(n, path, sizeof(path)) == 0) {
			fh->fd = open(path, (flags & ~O_TRUNC) | O_CLOEXEC);
			ret = fh->fd < 0 ? -errno : 0;
		}
		pthread_rwlock_unlock(&s->fs.tree_lock);
		if (!ret && fh->lf)
			fh->fd = fh->l->ops->host_fd(fh->lf);
	}
	if (ret) {
		free(fh);
		return ret;
	}
	*out = fh;
	return 0;
}

/* An fh on a lower layer's file of a writable mount (not yet following a copy-up). */
static bool sfs_fh_lower(struct sfs *s, const struct sfs_fh *fh)
{
	return s->fs.has_upper && fh->lf && fh->l != s->fs.layers[0];
}

/*
 * Passthrough for an open file when it can be had.  The kernel's rules: every open of an
 * inode that has a passthrough open must be a passthrough open on the same backing file,
 * and no passthrough open may join cached ones.
 *
 * Lower files of a writable mount pass through too (passthrough_lower=1, the default):
 * their opens pin the lower file to the node, and a copy-up while one is open gives the
 * copy a new node (ovl_copy_up_one), so the open files keep reading the lower file, as on
 * fuse-overlayfs; new opens get the copy.  With passthrough_lower=0 they take the cached
 * path, where a file opened before a copy-up reads the copy afterwards (sfs_follow_copy_up),
 * as on the kernel overlay.  Once a copy-up began (node->copying) no open pins the lower
 * file any more: one that looked the file up before the copy joins what the node has
 * pinned by then (the copy), or takes the cached path.  An inode with cached opens gets
 * cached ones until they close.  ETXTBSY below is a safety net these rules do not reach.
 */
static bool sfs_pt_eligible(struct sfs *s, const struct sfs_fh *fh)
{
	return fh->fd >= 0 && (s->cfg.passthrough_lower || !sfs_fh_lower(s, fh));
}

static int sfs_pt_open(struct sfs *s, struct ovl_node *n, struct sfs_fh *fh)
{
	bool lower = sfs_fh_lower(s, fh), again;
	struct stat st;
	int id, ret = 0;

	fh->node = n;
	pthread_mutex_lock(&n->lock);
	/* A small lower file opened again (an interpreter's modules, a build's headers) reads
	 * from the kernel's page cache: a passthrough read makes the kernel drop the file's
	 * cached atime, so every later stat() of it would be a GETATTR round trip.  The first
	 * open passes through, so a file read once (a cold scan) costs no READ round trip. */
	again = n->reopened;
	n->reopened = true;
	if (!s->pt.active || !sfs_pt_eligible(s, fh) || n->cached_opens ||
	    fstat(fh->fd, &st) < 0 ||
	    (lower && again && !n->pt_refs && st.st_size < s->cfg.passthrough_cache)) {
		if (n->pt_refs) {
			ret = -ETXTBSY;
		} else {
			n->cached_opens++;
			fh->cached = true;
		}
	} else if (n->pt_refs) {
		if ((n->pt_dev == st.st_dev && n->pt_ino == st.st_ino) || (lower && n->copying)) {
			n->pt_refs++;
			fh->backing = n->pt_id;
		} else {
			ret = -ETXTBSY;
		}
	} else if (!(lower && n->copying) && (id = pt_backing_open(&s->pt, fh->fd)) > 0) {
		n->pt_id = id;
		n->pt_refs = 1;
		n->pt_dev = st.st_dev;
		n->pt_ino = st.st_ino;
		fh->backing = id;
	} else {
		n->cached_opens++;
		fh->cached = true;
	}
	pthread_mutex_unlock(&n->lock);
	if (ret)
		fh->node = NULL;
	return ret;
}

static void sfs_pt_release(struct sfs *s, struct sfs_fh *fh)
{
	struct ovl_node *n = fh->node;

	if (!n)
		return;
	pthread_mutex_lock(&n->lock);
	if (fh->backing && --n->pt_refs == 0) {
		pt_backing_close(&s->pt, n->pt_id);
		n->pt_id = 0;
	}
	if (fh->cached)
		n->cached_opens--;
	pthread_mutex_unlock(&n->lock);
}

static int sfs_backing_of(uint64_t fh)
{
	return fh ? ((struct sfs_fh *)(uintptr_t)fh)->backing : 0;
}

static void sfs_fh_free(struct sfs_fh *fh)
{
	if (fh->old_lf)
		fh->l->ops->close(fh->old_lf);
	if (fh->lf)
		fh->l->ops->close(fh->lf);
	else if (fh->fd >= 0)
		close(fh->fd);
	free(fh);
}

static void sfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct sfs_fh *fh;
	mode_t killed;
	int ret;

	if (sfs_of(req)->no_open) {
		fuse_reply_err(req, ENOSYS);    /* from now on the kernel opens by itself */
		return;
	}
	killed = sfs_kill_begin(req, sfs_node(req, ino),
				(fi->flags & O_TRUNC) ? PT_KILL_WRITE : PT_KILL_NONE);
	ret = sfs_open_fh(sfs_of(req), sfs_node(req, ino), fi->flags, &fh);

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	sfs_kill_end(req, ino, sfs_node(req, ino), killed);
	fi->fh = (uintptr_t)fh;
	fi->keep_cache = 1;     /* nothing but this daemon changes a layer */
	ret = sfs_pt_open(sfs_of(req), sfs_node(req, ino), fh);
	if (ret) {
		sfs_fh_free(fh);
		fuse_reply_err(req, -ret);
		return;
	}
	if (fuse_reply_open(req, fi) == -ENOENT) {
		sfs_pt_release(sfs_of(req), fh);
		sfs_fh_free(fh);
	}
}

static void sfs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       struct fuse_file_info *fi)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct ovl_cred cred = { ctx->uid, ctx->gid, ctx->umask };
	struct fuse_entry_param e;
	struct ovl_node *n = NULL;
	struct sfs_fh *fh;
	struct stat st;
	int fd = -1, ret;

	fh = calloc(1, sizeof(*fh));
	if (!fh) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/* "/", a name the kernel never sends: an O_TMPFILE open (FUSE_TMPFILE, which our
	 * shim hands to libfuse as the CREATE it looks like: fs/passthrough.c). */
	if (!strcmp(name, "/"))
		ret = ovl_tmpfile(&sfs_of(req)->fs, sfs_node(req, parent), S_IFREG | (mode & 07777),
				  fi->flags & ~O_DIRECT, &cred, &n, &st, &fd);
	else
		ret = ovl_create(&sfs_of(req)->fs, sfs_node(req, parent), name,
				 S_IFREG | (mode & 07777), 0, NULL, fi->flags & ~O_DIRECT, &cred,
				 &n, &st, &fd);
	if (ret) {
		free(fh);
		fuse_reply_err(req, -ret);
		return;
	}
	fh->fd = fd;
	fi->fh = (uintptr_t)fh;
	fi->keep_cache = 1;
	sfs_pt_open(sfs_of(req), n, fh);        /* a new node: nothing to conflict with */
	sfs_entry(req, n, &st, &e);
	if (fuse_reply_create(req, &e, fi) == -ENOENT) {
		sfs_pt_release(sfs_of(req), fh);
		sfs_fh_free(fh);
	}
}

/*
 * A file opened read-only from a lower layer and copied up since (someone opened it for
 * writing): from now on it reads the upper copy, as the kernel overlay's files do.  The old
 * layer file stays open until release, since other threads may be reading through it.
 */
static void sfs_follow_copy_up(struct sfs *s, struct sfs_fh *fh)
{
	struct ovl_node *n = fh->node;
	char path[PATH_MAX];
	int fd;

	if (!n || !fh->lf || fh->old_lf || !ovl_in_upper(&s->fs, n) ||
	    fh->l == s->fs.layers[0])
		return;
	pthread_mutex_lock(&n->lock);
	pthread_rwlock_rdlock(&s->fs.tree_lock);
	if (!fh->old_lf && ovl_node_path(n, path, sizeof(path)) == 0) {
		fd = openat(s->fs.upper_fd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			__atomic_store_n(&fh->old_lf, fh->lf, __ATOMIC_RELEASE);
			__atomic_store_n(&fh->fd, fd, __ATOMIC_RELEASE);
			__atomic_store_n(&fh->lf, NULL, __ATOMIC_RELEASE);
		}
	}
	pthread_rwlock_unlock(&s->fs.tree_lock);
	pthread_mutex_unlock(&n->lock);
}

static void sfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct sfs_fh *fh = sfs_fh_get(req, ino, fi);
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
	struct layer_file *lf;
	ssize_t n;
	char *buf;
	int fd;

	if (!fh) {
		fuse_reply_err(req, EIO);
		return;
	}
	__atomic_add_fetch(&sfs_of(req)->reads, 1, __ATOMIC_RELAXED);
	sfs_follow_copy_up(sfs_of(req), fh);
	fd = __atomic_load_n(&fh->fd, __ATOMIC_ACQUIRE);
	if (fd >= 0) {
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = fd;
		bv.buf[0].pos = off;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	/* An image file: decompressed here.  A copy-up racing with us may have moved the
	 * layer file to old_lf; it stays open until release either way. */
	if (off == 0)
		pf_read(sfs_of(req)->pf, sfs_node(req, ino));
	lf = __atomic_load_n(&fh->lf, __ATOMIC_ACQUIRE);
	if (!lf)
		lf = __atomic_load_n(&fh->old_lf, __ATOMIC_ACQUIRE);
	buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = fh->l->ops->read(lf, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_buf(req, buf, n);
	free(buf);
}

static void sfs_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
			  struct fuse_file_info *fi)
{
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	mode_t killed = sfs_kill_begin(req, sfs_node(req, ino), PT_KILL_NONE);
	ssize_t n;

	__atomic_add_fetch(&sfs_of(req)->writes, 1, __ATOMIC_RELAXED);
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = sfs_fh(fi)->fd;
	out.buf[0].pos = off;
	n = fuse_buf_copy(&out, in, 0);
	if (n > 0)
		sfs_kill_end(req, ino, sfs_node(req, ino), killed);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, n);
}

static void sfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	sfs_pt_release(sfs_of(req), sfs_fh(fi));
	sfs_fh_free(sfs_fh(fi));
	fuse_reply_err(req, 0);
}

static void sfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct sfs *s = sfs_of(req);
	int fd = fi->fh ? sfs_fh(fi)->fd : -1, ret = 0;

	(void)ino;
	if (!s->fs.o.volatile_ && s->cfg.fsync && fd >= 0 && !sfs_fh(fi)->lf)
		ret = (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? errno : 0;
	fuse_reply_err(req, ret);
}

static void sfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	/* No per-open state: the kernel then skips opendir/releasedir round trips and keeps
	 * directory pages cached (FUSE_NO_OPENDIR_SUPPORT); the listing lives in the node. */
	fuse_reply_err(req, ENOSYS);
}

/* The listing for a readdir at `off`: rebuilt when a read starts from the top (unless it
 * was read ahead and is still current: fs/dirahead.c), kept in the node until the reader
 * reaches the end.  Caller holds dir->lock. */
static int sfs_listing(struct sfs *s, struct ovl_node *dir, off_t off, bool plus)
{
	int ret;

	if (off == 0)
		da_reader(s->da, dir);
	if (dir->listing && (off > 0 || da_take(s->da, dir))) {
		dir->listing->ahead = false;
		return 0;
	}
	if (!dir->listing && !(dir->listing = calloc(1, sizeof(*dir->listing))))
		return -ENOMEM;
	ovl_dir_free(dir->listing);
	__atomic_add_fetch(&s->listings, 1, __ATOMIC_RELAXED);
	ret = ovl_dir_read(&s->fs, dir, dir->listing);
	/* readdirplus stats every entry: from one fd per layer, cheaper than one walk from the
	 * layer root per entry (the cap keeps the per-entry memory of huge directories). */
	if (!ret && plus && dir->listing->n <= OVL_PRESTAT_MAX)
		ovl_dir_prestat(&s->fs, dir, dir->listing, dir->listing->n);
	if (ret) {
		free(dir->listing);
		dir->listing = NULL;
	}
	return ret;
}

static void sfs_listing_done(struct ovl_node *dir)
{
	ovl_dir_free(dir->listing);
	free(dir->listing);
	dir->listing = NULL;
}

#define SFS_DA_FANOUT 256      /* child directories per readdirplus reply read ahead */

static void sfs_do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi, bool plus)
{
	struct sfs *s = sfs_of(req);
	struct ovl_node *dir = sfs_node(req, ino);
	struct ovl_dir *l;
	struct ovl_node *kids[SFS_DA_FANOUT];   /* child directories handed out, to read ahead */
	char *buf = malloc(size), *p = buf;
	size_t rem = size, i, nkids = 0;
	bool first = off == 0;
	int err = 0;

	(void)fi;
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_mutex_lock(&dir->lock);
	err = sfs_listing(s, dir, off, plus);
	if (err) {
		pthread_mutex_unlock(&dir->lock);
		free(buf);
		fuse_reply_err(req, -err);
		return;
	}
	l = dir->listing;
	/* Offsets: 1 ".", 2 "..", then 3 + index into the merged listing. */
	for (i = (size_t)off; i < l->n + 2; i++) {
		struct stat st = { 0 };
		struct fuse_entry_param e = { 0 };
		struct ovl_node *n = NULL;
		const char *name;
		size_t len;

		if (i < 2) {
			name = i ? ".." : ".";
			st.st_ino = i ? (dir->parent ? dir->parent->ino : dir->ino) : dir->ino;
			st.st_mode = S_IFDIR;
		} else {
			name = l->ents[i - 2].name;
			st.st_ino = l->ents[i - 2].ino;
			st.st_mode = DTTOIF(l->ents[i - 2].type);
		}
		if (!plus) {
			len = fuse_add_direntry(req, p, rem, name, &st, i + 1);
		} else {
			if (i >= 2) {
				err = ovl_lookup_listed(&s->fs, dir, l, &l->ents[i - 2], &n, &st);
				if (err == -ENOENT) {
					err = 0;
					continue;       /* gone since the listing was made */
				}
				if (err)
					break;
				sfs_entry(req, n, &st, &e);
			} else {
				e.attr = st;
			}
			len = fuse_add_direntry_plus(req, p, rem, name, &e, i + 1);
		}
		if (len > rem) {
			if (n)
				ovl_node_forget(&s->fs, n, 1);
			break;
		}
		if (n) {
			pf_listed(s->pf, dir, name, n, &st, first);
			first = false;
			if (s->da && S_ISDIR(st.st_mode) && nkids < SFS_DA_FANOUT) {
				ovl_node_get(n);
				kids[nkids++] = n;
			}
		}
		p += len;
		rem -= len;
	}
	/* The listing goes with the reply that says "end" (no entries), not with the one that
	 * hands out the last entries: the kernel asks once more at the end offset, and that
	 * call must not rebuild the merged listing just to find nothing after it. */
	if (i >= l->n + 2 && !err && p == buf)
		sfs_listing_done(dir);
	pthread_mutex_unlock(&dir->lock);
	if (err && p == buf)
		fuse_reply_err(req, -err);
	else
		fuse_reply_buf(req, buf, size - rem);
	free(buf);
	if (nkids)
		da_queue(s->da, kids, nkids);
}

static void sfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	sfs_do_readdir(req, ino, size, off, fi, false);
}

static void sfs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			    struct fuse_file_info *fi)
{
	sfs_do_readdir(req, ino, size, off, fi, true);
}

static void sfs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			 struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void sfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct sfs *s = sfs_of(req);
	struct layer *l = s->fs.layers[0];
	struct statvfs st;
	int ret = l->ops->statfs(l, &st);

	(void)ino;
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_statfs(req, &st);
}

static bool sfs_is_acl_xattr(const char *name)
{
	return strncmp(name, "system.posix_acl_", 17) == 0;
}

static bool sfs_xattr_hidden(struct sfs *s, const char *name)
{
	return wh_xattr_is_private(name) || (s->cfg.noacl && sfs_is_acl_xattr(name)) ||
	       (s->fs.o.xattr_permissions && strncmp(name, "user.", 5) == 0 &&
		strstr(name, "override_stat"));
}

/* Asked for by name on the root only (never listed): how the daemon runs and what reached
 * it, for tests and for people wondering whether passthrough is on. */
#define SFS_STATS_XATTR "user.stratafs.stats"

static void sfs_reply_stats(fuse_req_t req, struct sfs *s, size_t size)
{
	char buf[512];
	uint64_t da_read, da_taken;
	int n;

	da_stats(s->da, &da_read, &da_taken);
	n = snprintf(buf, sizeof(buf),
			 "passthrough=%s\nkillpriv=%s\nopens=%llu\npassthrough_opens=%llu\n"
			 "read_requests=%llu\nwrite_requests=%llu\ngetxattr_requests=%llu\n"
			 "backing_files_open=%lld\ndirs_listed=%llu\ndirs_read_ahead=%llu\n"
			 "dirs_read_ahead_used=%llu\n",
			 s->pt.active ? "on" : "off", s->pt.killpriv ? "on" : "off",
			 (unsigned long long)s->pt.opens, (unsigned long long)s->pt.backing_opens,
			 (unsigned long long)__atomic_load_n(&s->reads, __ATOMIC_RELAXED),
			 (unsigned long long)__atomic_load_n(&s->writes, __ATOMIC_RELAXED),
			 (unsigned long long)__atomic_load_n(&s->getxattrs, __ATOMIC_RELAXED),
			 (long long)__atomic_load_n(&s->pt.backing_live, __ATOMIC_RELAXED),
			 (unsigned long long)__atomic_load_n(&s->listings, __ATOMIC_RELAXED),
			 (unsigned long long)da_read, (unsigned long long)da_taken);

	if (!size)
		fuse_reply_xattr(req, n);
	else if ((size_t)n > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, buf, n);
}

static void sfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct sfs *s = sfs_of(req);
	struct ovl_node *n = sfs_node(req, ino);
	char path[PATH_MAX], *buf = NULL;
	struct layer *l;
	ssize_t ret;

	if (ino == FUSE_ROOT_ID && strcmp(name, SFS_STATS_XATTR) == 0) {
		sfs_reply_stats(req, s, size);
		return;
	}
	__atomic_add_fetch(&s->getxattrs, 1, __ATOMIC_RELAXED);
	if (s->fs.o.noxattrs) {
		fuse_reply_err(req, s->fs.o.noxattrs == 1 ? ENOTSUP : ENODATA);
		return;
	}
	if (s->cfg.noacl && sfs_is_acl_xattr(name)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (sfs_xattr_hidden(s, name)) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	if (size && !(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_rwlock_rdlock(&s->fs.tree_lock);
	ret = ovl_node_path(n, path, sizeof(path));
	if (!ret) {
		l = s->fs.layers[n->lent[0].layer];
		struct lnode ln = ovl_top(n, path);

		ret = l->ops->getxattr(l, &ln, name, buf, size);
	} else if (ret == -ESTALE && ovl_node_orphan_path(n, path, sizeof(path)) == 0) {
		ret = getxattr(path, name, buf, size);
		ret = ret < 0 ? -errno : ret;
	}
	pthread_rwlock_unlock(&s->fs.tree_lock);
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else if (!size)
		fuse_reply_xattr(req, ret);
	else
		fuse_reply_buf(req, buf, ret);
	free(buf);
}

/* The raw list: from the node's top layer, or from a kept file's /proc path. */
static ssize_t sfs_listxattr_raw(struct layer *l, struct lnode *ln, const char *orphan,
				 char *buf, size_t size)
{
	ssize_t r;

	if (!orphan)
		return l->ops->listxattr(l, ln, buf, size);
	r = listxattr(orphan, buf, size);
	return r < 0 ? -errno : r;
}

static void sfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct sfs *s = sfs_of(req);
	struct ovl_node *n = sfs_node(req, ino);
	char path[PATH_MAX], *buf = NULL, *out = NULL, *p;
	const char *orphan = NULL;
	struct layer *l;
	struct lnode ln;
	ssize_t len;
	size_t olen = 0;

	if (s->fs.o.noxattrs) {
		if (size)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_xattr(req, 0);
		return;
	}
	pthread_rwlock_rdlock(&s->fs.tree_lock);
	len = ovl_node_path(n, path, sizeof(path));
	l = s->fs.layers[n->lent[0].layer];
	ln = ovl_top(n, path);
	if (len == -ESTALE && ovl_node_orphan_path(n, path, sizeof(path)) == 0)
		orphan = path;          /* gone but open: its own xattrs, through /proc */
	if (!len || orphan)
		len = sfs_listxattr_raw(l, &ln, orphan, NULL, 0);
	if (len > 0 && (buf = malloc(len)) && (out = malloc(len)))
		len = sfs_listxattr_raw(l, &ln, orphan, buf, len);
	else if (len > 0)
		len = -ENOMEM;
	pthread_rwlock_unlock(&s->fs.tree_lock);
	for (p = buf; len > 0 && p < buf + len; p += strlen(p) + 1) {
		if (sfs_xattr_hidden(s, p))
			continue;
		memcpy(out + olen, p, strlen(p) + 1);
		olen += strlen(p) + 1;
	}
	if (len < 0)
		fuse_reply_err(req, (int)-len);
	else if (!size)
		fuse_reply_xattr(req, olen);
	else if (olen > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, out, olen);
	free(buf);
	free(out);
}

static void sfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			 size_t size, int flags)
{
	struct sfs *s = sfs_of(req);
	char path[PATH_MAX], proc[PATH_MAX + 32];
	int ret;

	if (s->fs.o.noxattrs) {
		fuse_reply_err(req, s->fs.o.noxattrs == 1 ? ENOTSUP : 0);
		return;
	}
	if (s->cfg.noacl && sfs_is_acl_xattr(name)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (sfs_xattr_hidden(s, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	ret = sfs_upper_begin(s, sfs_node(req, ino), path);
	if (!ret) {
		ret = sfs_upper_proc(s, path, proc, sizeof(proc));
		if (!ret && (sfs_is_orphan_path(path) ? setxattr(proc, name, value, size, flags)
					  : lsetxattr(proc, name, value, size, flags)) < 0)
			ret = -errno;
		sfs_upper_done(s);
	}
	fuse_reply_err(req, -ret);
}

static void sfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct sfs *s = sfs_of(req);
	char path[PATH_MAX], proc[PATH_MAX + 32];
	struct ovl_node *n;
	int ret;

	if (s->fs.o.noxattrs) {
		fuse_reply_err(req, s->fs.o.noxattrs == 1 ? ENOTSUP : 0);
		return;
	}
	if (sfs_xattr_hidden(s, name)) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	/* Removing what is not there must not copy up (the kernel checks first, too). */
	n = sfs_node(req, ino);
	if (!ovl_in_upper(&s->fs, n)) {
		pthread_rwlock_rdlock(&s->fs.tree_lock);
		ret = ovl_node_path(n, path, sizeof(path));
		if (!ret) {
			struct layer *l = s->fs.layers[n->lent[0].layer];
			struct lnode ln = ovl_top(n, path);
			ssize_t r = l->ops->getxattr(l, &ln, name, NULL, 0);

			ret = r < 0 ? (int)r : 0;
		}
		pthread_rwlock_unlock(&s->fs.tree_lock);
		if (ret) {
			fuse_reply_err(req, -ret);
			return;
		}
	}
	ret = sfs_upper_begin(s, n, path);
	if (!ret) {
		ret = sfs_upper_proc(s, path, proc, sizeof(proc));
		if (!ret && (sfs_is_orphan_path(path) ? removexattr(proc, name)
						      : lremovexattr(proc, name)) < 0)
			ret = -errno;
		sfs_upper_done(s);
	}
	fuse_reply_err(req, -ret);
}

static void sfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			  struct fuse_file_info *fi)
{
	int fd = fi->fh ? sfs_fh(fi)->fd : -1;

	(void)ino;
	if (fd < 0 || sfs_fh(fi)->lf)
		fuse_reply_err(req, EBADF);
	else
		fuse_reply_err(req, fallocate(fd, mode, off, len) < 0 ? errno : 0);
}

static void sfs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		      struct fuse_file_info *fi)
{
	struct sfs_fh *fh = sfs_fh_get(req, ino, fi);
	int fd = fh ? __atomic_load_n(&fh->fd, __ATOMIC_ACQUIRE) : -1;
	off_t r;

	if (fd < 0) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	r = lseek(fd, off, whence);
	if (r < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, r);
}

static void sfs_log(struct sfs *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (s->cfg.foreground) {
		fputs("stratafs: ", stderr);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
	} else {
		vsyslog(LOG_INFO, fmt, ap);
	}
	va_end(ap);
}

static void sfs_init(void *userdata, struct fuse_conn_info *conn)
{
	struct sfs *s = userdata;
	unsigned want = FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE |
			FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_PARALLEL_DIROPS |
			FUSE_CAP_ASYNC_READ | FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_ASYNC_DIO |
			FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_NO_OPENDIR_SUPPORT |
			FUSE_CAP_DONT_MASK;

	if (s->cfg.writeback && s->fs.has_upper && !s->pt.wanted)
		want |= FUSE_CAP_WRITEBACK_CACHE;
	/* The kernel checks ACLs (from system.posix_acl_access) and leaves umask and default
	 * ACL inheritance to us (FUSE_CAP_DONT_MASK, ovl_create). */
	if (!s->cfg.noacl && !s->fs.o.noxattrs)
		want |= FUSE_CAP_POSIX_ACL;
	conn->want |= want & conn->capable;
	/* Locks stay in the kernel: one host, one mount. */
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
	if (!s->cfg.writeback || s->pt.wanted)
		conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	/* Our shim reads requests itself (to see their opcodes). */
	if (s->pt.shim)
		conn->want &= ~FUSE_CAP_SPLICE_READ;
	/* Read-only and nothing to pass through: let the kernel open files itself. */
	if (!s->fs.has_upper && !s->pt.wanted && (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT)) {
		conn->want |= FUSE_CAP_NO_OPEN_SUPPORT;
		s->no_open = true;
	}
	sfs_log(s, "data path: %s", s->pt.active ? "kernel passthrough for directory layers"
			: s->pt.wanted ? "splice (the kernel did not offer passthrough)"
			: "splice");
	conn->max_readahead = conn->max_readahead ? conn->max_readahead : 1 << 20;
}

static const struct fuse_lowlevel_ops sfs_ops = {
	.init = sfs_init,
	.lookup = sfs_lookup,
	.forget = sfs_forget,
	.forget_multi = sfs_forget_multi,
	.getattr = sfs_getattr,
	.setattr = sfs_setattr,
	.readlink = sfs_readlink,
	.mknod = sfs_mknod,
	.mkdir = sfs_mkdir,
	.symlink = sfs_symlink,
	.unlink = sfs_unlink,
	.rmdir = sfs_rmdir,
	.rename = sfs_rename,
	.link = sfs_link,
	.open = sfs_open,
	.create = sfs_create,
	.read = sfs_read,
	.write_buf = sfs_write_buf,
	/* no .flush: nothing is buffered here, and ENOSYS once stops the kernel asking */
	.release = sfs_release,
	.fsync = sfs_fsync,
	.opendir = sfs_opendir,
	.readdir = sfs_readdir,
	.readdirplus = sfs_readdirplus,
	.fsyncdir = sfs_fsyncdir,
	.statfs = sfs_statfs,
	.getxattr = sfs_getxattr,
	.listxattr = sfs_listxattr,
	.setxattr = sfs_setxattr,
	.removexattr = sfs_removexattr,
	.fallocate = sfs_fallocate,
	.lseek = sfs_lseek,
};

/* Full root (the initial user namespace's), or something less? */
static bool sfs_rootless(void)
{
	unsigned long a, b, c;
	FILE *f;
	int n;

	if (geteuid() != 0)
		return true;
	f = fopen("/proc/self/uid_map", "r");
	if (!f)
		return false;
	n = fscanf(f, "%lu %lu %lu", &a, &b, &c);
	fclose(f);
	return !(n == 3 && a == 0 && b == 0 && c == 4294967295UL);
}

static int sfs_check_mountpoint(const char *mnt)
{
	struct stat st;

	if (stat(mnt, &st) < 0) {
		fprintf(stderr, "stratafs: mountpoint '%s': %s\n", mnt, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "stratafs: mountpoint '%s': not a directory\n", mnt);
		return -1;
	}
	return 0;
}

/* passthrough=auto|on|off against what this process and kernel can do. */
static int sfs_want_passthrough(struct sfs *s)
{
	char err[256];
	const char *why = NULL;

	int i;

	if (!s->cfg.passthrough)
		return 0;
	for (i = 0; i < s->fs.nlayers && s->fs.layers[i]->root_fd < 0; i++)
		;
	if (i == s->fs.nlayers)
		return 0;       /* image layers only: their bytes are ours to decompress */
	if (s->fs.rootless)
		why = "it needs CAP_SYS_ADMIN in the initial user namespace";
	else if (s->cfg.writeback)
		why = "it cannot be combined with writeback=1";
	else if (pt_probe(err, sizeof(err)) < 0)
		why = err;
	if (!why) {
		s->pt.wanted = true;
		return 0;
	}
	if (s->cfg.passthrough == 2) {
		fprintf(stderr, "stratafs: passthrough=on: %s\n", why);
		return -1;
	}
	return 0;
}

static int sfs_fuse_args(struct sfs *s, const char *argv0, struct fuse_args *args)
{
	char *opts = NULL;
	int ret;

	/* As root, a container rootfs needs its devices and set-id programs (the kernel
	 * overlay allows both); the caller's own nodev/nosuid come later and win. */
	ret = asprintf(&opts, "default_permissions,fsname=stratafs,subtype=stratafs%s%s%s%s",
		       geteuid() == 0 ? ",allow_other,dev,suid" : "",
		       s->fs.has_upper ? "" : ",ro",
		       s->cfg.fuse_opts ? "," : "", s->cfg.fuse_opts ? s->cfg.fuse_opts : "");
	if (ret < 0)
		return -1;
	if (fuse_opt_add_arg(args, argv0) || fuse_opt_add_arg(args, "-o") ||
	    fuse_opt_add_arg(args, opts) || (s->cfg.debug && fuse_opt_add_arg(args, "-d"))) {
		free(opts);
		return -1;
	}
	free(opts);
	return 0;
}

static int sfs_loop(struct sfs *s, struct fuse_session *se)
{
	struct fuse_loop_config *lc;
	int ret;

	if (!s->cfg.threaded)
		return fuse_session_loop(se);
	lc = fuse_loop_cfg_create();
	if (!lc)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(lc, 1);
	fuse_loop_cfg_set_max_threads(lc, (unsigned int)s->cfg.max_threads);
	fuse_loop_cfg_set_idle_threads(lc, (unsigned int)s->cfg.max_idle_threads);
	ret = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	return ret;
}

/*
 * Creates run as the caller (fsuid/fsgid: ovl_create_in_place), as the kernel overlay's run
 * with the mounter's capabilities and the caller's fsuid/fsgid.  Leaving fsuid 0 would
 * drop CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_MKNOD and the like unless SECBIT_NO_SETUID_FIXUP
 * is set; set in the main thread once the mount is up, just before the loop starts the
 * workers (threads inherit it; fusermount3, which libfuse may have run for the mount,
 * must not).  A daemon without CAP_SETPCAP has no such capabilities to keep unless it is
 * root.
 */
static bool sfs_keep_caps(void)
{
	int bits = prctl(PR_GET_SECUREBITS);

	if (bits >= 0 && (bits & SECBIT_NO_SETUID_FIXUP))
		return true;
	if (bits >= 0 && prctl(PR_SET_SECUREBITS, bits | SECBIT_NO_SETUID_FIXUP) == 0)
		return true;
	return geteuid() != 0;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	static struct sfs s;
	char err[PATH_MAX + 256];
	int ret;

	/* Modes of new entries are exactly what the caller asked (umask applied per request). */
	umask(0);
	ret = sfs_parse_args(argc, argv, &s.cfg);
	if (ret)
		return ret > 0 ? 0 : 1;
	if (sfs_check_mountpoint(s.cfg.mountpoint))
		return 1;
	s.fs.o = s.cfg.o;
	s.fs.reader_free = sfs_reader_free;
	s.fs.rootless = sfs_rootless();
	if (ovl_fs_init(&s.fs, s.cfg.lowers, s.cfg.nlowers, s.cfg.upper, s.cfg.work,
			err, sizeof(err)) < 0) {
		fprintf(stderr, "stratafs: %s\n", err);
		return 1;
	}
	if (sfs_want_passthrough(&s) < 0)
		return 1;
	if (sfs_fuse_args(&s, argv[0], &args) < 0) {
		fprintf(stderr, "stratafs: out of memory\n");
		return 1;
	}
	se = fuse_session_new(&args, &sfs_ops, sizeof(sfs_ops), &s);
	s.se = se;
	if (!se) {
		fprintf(stderr, "stratafs: cannot set up the FUSE session (bad mount option?)\n");
		return 1;
	}
	if (fuse_set_signal_handlers(se) < 0 || fuse_session_mount(se, s.cfg.mountpoint) < 0) {
		fprintf(stderr, "stratafs: cannot mount on '%s'\n", s.cfg.mountpoint);
		fuse_session_destroy(se);
		return 1;
	}
	s.pt.backing_of = sfs_backing_of;
	/* The shim (fs/passthrough.c) does passthrough, and O_TMPFILE on writable mounts. */
	if ((s.pt.wanted || s.fs.has_upper) && pt_attach(&s.pt, se) < 0) {
		fprintf(stderr, "stratafs: cannot set up the /dev/fuse shim\n");
		fuse_session_unmount(se);
		fuse_session_destroy(se);
		return 1;
	}
	/* Only now, with the mount live, does the parent exit 0: runtimes rely on that. */
	if (fuse_daemonize(s.cfg.foreground) < 0) {
		fuse_session_unmount(se);
		fuse_session_destroy(se);
		return 1;
	}
	s.pf = pf_start(&s.fs, se);
	s.da = s.cfg.dir_readahead ? da_start(&s.fs) : NULL;
	s.fs.setfsuid = sfs_keep_caps();        /* last: the workers inherit it, nothing else */
	ret = sfs_loop(&s, se);
	da_stop(s.da);
	pf_stop(s.pf);
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	ovl_fs_destroy(&s.fs);
	fuse_opt_free_args(&args);
	return ret ? 1 : 0;
}
