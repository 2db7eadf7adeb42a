// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Mount specs (containerd's Mounts()) and doing the mount: the kernel overlay, stratafs
 * (FUSE, needed for SquashFS image layers and where the kernel overlay is not permitted),
 * or a bind mount for a lone layer.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "strata_priv.h"

void strata_set_stratafs(struct strata *s, const char *path)
{
	snprintf(s->stratafs, sizeof(s->stratafs), "%s", path ? path : "");
}

void strata_mount_spec_free(struct strata_mount_spec *m)
{
	size_t i;

	free(m->type);
	free(m->source);
	for (i = 0; i < m->noptions; i++)
		free(m->options[i]);
	free(m->options);
	memset(m, 0, sizeof(*m));
}

static int add_opt(struct strata *s, struct strata_mount_spec *m, const char *o)
{
	char **n = realloc(m->options, (m->noptions + 1) * sizeof(*n));

	if (!n || !(n[m->noptions] = strdup(o))) {
		if (n)
			m->options = n;
		return sd_err(s, ENOMEM, "out of memory");
	}
	m->options = n;
	m->noptions++;
	return 0;
}

/* "lowerdir=top:…:bottom" of the committed chain starting at parent_id. */
static int lowerdir_opt(struct strata *s, int64_t parent_id, char **out, int *nlayers,
			bool *has_image, char *only, size_t onlylen)
{
	int64_t *ids = NULL;
	size_t n = 0, i, len = 16;
	char path[PATH_MAX + 64];
	struct sd_snap sn;
	char *o;
	int ret;

	ret = sd_chain(s, parent_id, &ids, &n);
	if (ret)
		return ret;
	len += n * (PATH_MAX + 64);
	o = malloc(len);
	if (!o) {
		free(ids);
		return sd_err(s, ENOMEM, "out of memory");
	}
	strcpy(o, "lowerdir=");
	*has_image = false;
	for (i = 0; i < n; i++) {
		ret = sd_lookup_id(s, ids[i], &sn);
		if (ret)
			break;
		sd_snap_content(s, &sn, path, sizeof(path));
		if (strpbrk(path, ":,")) {
			ret = sd_err(s, EINVAL, "store path %s contains ':' or ',', which mount "
				     "options cannot carry", path);
			break;
		}
		*has_image |= sn.image;
		if (i)
			strcat(o, ":");
		strcat(o, path);
		if (i == 0)
			snprintf(only, onlylen, "%s", path);
	}
	free(ids);
	if (ret) {
		free(o);
		return ret;
	}
	*nlayers = (int)n;
	*out = o;
	return 0;
}

static bool kernel_allowed(struct strata *s)
{
	return s->priv;
}

static int build_spec(struct strata *s, const struct sd_snap *sn, enum strata_backend b,
		      struct strata_mount_spec *m)
{
	char dir[PATH_MAX + 64], opt[PATH_MAX + 80], only[PATH_MAX + 64];
	char *lower = NULL;
	bool has_image = false;
	int nlayers = 0, ret;
	bool kernel;

	memset(m, 0, sizeof(*m));
	sd_snap_dir(s, sn->id, dir, sizeof(dir));
	if (sn->kind == STRATA_COMMITTED)
		return sd_err(s, EINVAL, "'%s' is committed; prepare or view a snapshot on it to "
			      "mount it", sn->key);
	if (sn->parent_id) {
		ret = lowerdir_opt(s, sn->parent_id, &lower, &nlayers, &has_image, only,
				   sizeof(only));
		if (ret)
			return ret;
	}
	if (b == STRATA_BACKEND_KERNEL && has_image) {
		free(lower);
		return sd_err(s, EINVAL, "'%s' stacks a SquashFS image layer: the kernel overlay "
			      "cannot mount it (use --backend fuse)", sn->key);
	}
	kernel = b == STRATA_BACKEND_KERNEL ||
		 (b == STRATA_BACKEND_AUTO && !has_image && kernel_allowed(s));
	ret = -ENOMEM;
	if (!lower && sn->kind == STRATA_ACTIVE) {
		/* a base layer being written: nothing to union */
		if (!(m->type = strdup("bind")) || sd_path(opt, sizeof(opt), "%s/fs", dir) ||
		    !(m->source = strdup(opt)) || add_opt(s, m, "rw") || add_opt(s, m, "rbind"))
			goto fail;
		return 0;
	}
	if (sn->kind == STRATA_VIEW && nlayers == 1 && !has_image) {
		free(lower);
		lower = NULL;
		if (!(m->type = strdup("bind")) || !(m->source = strdup(only)) ||
		    add_opt(s, m, "ro") || add_opt(s, m, "rbind"))
			goto fail;
		return 0;
	}
	if (!(m->type = strdup(kernel ? "overlay" : "fuse3.stratafs")) ||
	    !(m->source = strdup(kernel ? "overlay" : "stratafs")))
		goto fail;
	if (sn->kind == STRATA_VIEW && (ret = add_opt(s, m, "ro")))
		goto fail;
	/* A renamed lower directory must not become a redirect xattr, which export (and
	 * stratafs) would not follow: with redirect_dir=off the kernel copies instead.
	 * Unprivileged, the kernel overlay keeps its state in user.overlay.* (userxattr,
	 * which also creates no redirects), where an unprivileged import puts opaque
	 * markers too. */
	if (kernel && (ret = add_opt(s, m, s->priv ? "redirect_dir=off" : "userxattr")))
		goto fail;
	if ((ret = add_opt(s, m, lower)))
		goto fail;
	if (sn->kind == STRATA_ACTIVE) {
		sd_path(opt, sizeof(opt), "upperdir=%s/fs", dir);
		if ((ret = add_opt(s, m, opt)))
			goto fail;
		sd_path(opt, sizeof(opt), "workdir=%s/work", dir);
		if ((ret = add_opt(s, m, opt)))
			goto fail;
	}
	free(lower);
	return 0;
fail:
	free(lower);
	strata_mount_spec_free(m);
	return ret < 0 ? ret : sd_err(s, ENOMEM, "out of memory");
}

int strata_mounts(struct strata *s, const char *key, enum strata_backend b,
		  struct strata_mount_spec *out)
{
	struct sd_snap sn;
	int ret;

	ret = sd_lookup(s, key, &sn);
	if (ret)
		return ret;
	return build_spec(s, &sn, b, out);
}

/* options joined with ',', without "ro"/"rw"/"rbind" which are flags */
static int join_opts(const struct strata_mount_spec *m, char *buf, size_t len)
{
	size_t i;

	buf[0] = 0;
	for (i = 0; i < m->noptions; i++) {
		if (!strcmp(m->options[i], "ro") || !strcmp(m->options[i], "rw") ||
		    !strcmp(m->options[i], "rbind"))
			continue;
		if (strlen(buf) + strlen(m->options[i]) + 2 > len)
			return -E2BIG;
		if (buf[0])
			strcat(buf, ",");
		strcat(buf, m->options[i]);
	}
	return 0;
}

static bool spec_ro(const struct strata_mount_spec *m)
{
	size_t i;

	for (i = 0; i < m->noptions; i++)
		if (!strcmp(m->options[i], "ro"))
			return true;
	return false;
}

static int find_stratafs(struct strata *s, char *buf, size_t len)
{
	const char *e = getenv("STRATAFS");
	char self[PATH_MAX];
	ssize_t n;
	char *slash;

	if (s->stratafs[0])
		return sd_path(buf, len, "%s", s->stratafs);
	if (e && *e)
		return sd_path(buf, len, "%s", e);
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = 0;
		slash = strrchr(self, '/');
		if (slash) {
			*slash = 0;
			if (!sd_path(buf, len, "%s/stratafs", self) && access(buf, X_OK) == 0)
				return 0;
		}
	}
	return sd_path(buf, len, "stratafs");
}

/* The daemon is started through an intermediate child that exits at once, so it is never
 * our child (no zombie for a long-lived library caller) whether it daemonizes or not. */
static pid_t spawn_stratafs(struct strata *s, const char *exe, const char *opts, bool ro,
			    const char *target, int errfd)
{
	int pidp[2], status;
	pid_t mid, daemon = -1;

	if (pipe2(pidp, O_CLOEXEC))
		return sd_err(s, errno, "pipe: %s", strerror(errno));
	mid = fork();
	if (mid < 0) {
		close(pidp[0]);
		close(pidp[1]);
		return sd_err(s, errno, "fork: %s", strerror(errno));
	}
	if (mid == 0) {
		int nul = open("/dev/null", O_RDWR);
		pid_t pid;

		dup2(nul, 0);
		dup2(nul, 1);
		dup2(errfd, 2);
		setsid();
		pid = fork();
		if (pid != 0) {
			if (write(pidp[1], &pid, sizeof(pid)) < 0)
				_exit(1);
			_exit(0);
		}
		if (ro)
			execlp(exe, exe, "-o", opts, "-o", "ro", target, (char *)NULL);
		else
			execlp(exe, exe, "-o", opts, target, (char *)NULL);
		dprintf(2, "cannot run %s: %s (set STRATAFS)", exe, strerror(errno));
		_exit(127);
	}
	close(pidp[1]);
	if (read(pidp[0], &daemon, sizeof(daemon)) != sizeof(daemon))
		daemon = -1;
	close(pidp[0]);
	waitpid(mid, &status, 0);
	return daemon;
}

/* Waits until the mount shows up; stratafs's stderr (until it detaches or exits) says why
 * it did not. */
static int mount_fuse(struct strata *s, const char *opts, bool ro, const char *target)
{
	char exe[PATH_MAX], errbuf[1024] = "";
	int pfd[2], ret = -ETIMEDOUT, i, eof_polls = 0;
	size_t got = 0;
	pid_t daemon;

	if (find_stratafs(s, exe, sizeof(exe)))
		return sd_err(s, ENAMETOOLONG, "stratafs path too long");
	if (pipe2(pfd, O_CLOEXEC))
		return sd_err(s, errno, "pipe: %s", strerror(errno));
	daemon = spawn_stratafs(s, exe, opts, ro, target, pfd[1]);
	close(pfd[1]);
	if (daemon < 0) {
		close(pfd[0]);
		return daemon < -1 ? daemon : sd_err(s, EIO, "could not start %s", exe);
	}
	for (i = 0; i < 300; i++) {   /* up to 30 s */
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		ssize_t n = 0;

		if (eof_polls)
			usleep(100000);
		else if (poll(&p, 1, 100) > 0)
			n = read(pfd[0], errbuf + got, sizeof(errbuf) - 1 - got);
		if (n > 0)
			got += (size_t)n;
		else if (n == 0 && p.revents & (POLLHUP | POLLIN))
			eof_polls++;
		errbuf[got] = 0;
		if (sd_is_mountpoint(target)) {
			ret = 0;
			break;
		}
		/* exited or detached without mounting: give the kernel a moment, then fail */
		if (eof_polls && (kill(daemon, 0) < 0 || eof_polls++ > 20)) {
			ret = sd_is_mountpoint(target) ? 0 : -EIO;
			break;
		}
	}
	close(pfd[0]);
	if (ret == -ETIMEDOUT)
		kill(daemon, SIGTERM);
	if (ret) {
		char *nl;

		while ((nl = strrchr(errbuf, '\n')) && nl[1] == 0)
			*nl = 0;
		return sd_err(s, ret, "stratafs (%s) did not mount %s%s%s", exe, target,
			      errbuf[0] ? ": " : "", errbuf);
	}
	return 0;
}

static int do_mount(struct strata *s, const struct strata_mount_spec *m, const char *target,
		    enum strata_backend b, const char **backend)
{
	char opts[16384];
	bool ro = spec_ro(m);

	if (join_opts(m, opts, sizeof(opts)))
		return sd_err(s, E2BIG, "mount options too long (too many layers)");
	if (!strcmp(m->type, "bind")) {
		*backend = "bind";
		if (mount(m->source, target, NULL, MS_BIND | MS_REC, NULL))
			return sd_err(s, errno, "bind mount %s on %s: %s", m->source, target,
				      strerror(errno));
		if (ro && mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL)) {
			int e = errno;

			umount2(target, MNT_DETACH);
			return sd_err(s, e, "read-only remount of %s: %s", target, strerror(e));
		}
		return 0;
	}
	if (!strcmp(m->type, "overlay")) {
		*backend = "kernel";
		if (mount("overlay", target, "overlay", ro ? MS_RDONLY : 0, opts) == 0)
			return 0;
		if (b == STRATA_BACKEND_KERNEL || (errno != EPERM && errno != EACCES))
			return sd_err(s, errno, "overlay mount on %s: %s", target, strerror(errno));
		/* auto: not permitted here (user namespace without overlay support) */
	}
	*backend = "fuse";
	return mount_fuse(s, opts, ro, target);
}

int strata_mount(struct strata *s, const char *key, const char *target, enum strata_backend b)
{
	struct strata_mount_spec m;
	const char *backend = NULL;
	char real[PATH_MAX];
	struct sd_snap sn;
	struct stat st;
	int ret;

	ret = sd_lookup(s, key, &sn);
	if (ret)
		return ret;
	if (!realpath(target, real) || stat(real, &st))
		return sd_err(s, errno, "mount point %s: %s", target, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return sd_err(s, ENOTDIR, "mount point %s is not a directory", target);
	ret = build_spec(s, &sn, b, &m);
	if (ret)
		return ret;
	ret = do_mount(s, &m, real, b, &backend);
	strata_mount_spec_free(&m);
	if (ret)
		return ret;
	ret = sd_record_mount(s, sn.id, real, backend);
	if (ret) {
		char msg[sizeof(s->err)];

		memcpy(msg, s->err, sizeof(msg));
		umount2(real, MNT_DETACH);
		return sd_err(s, ret, "%s (mount undone)", msg);
	}
	return 0;
}

static int forget_mount(struct strata *s, const char *target)
{
	sqlite3_stmt *st;
	int ret, rc;

	ret = sd_begin(s);
	if (ret)
		return ret;
	if (sqlite3_prepare_v2(s->db, "DELETE FROM mounts WHERE target = ?", -1, &st,
			       NULL) != SQLITE_OK) {
		sd_rollback(s);
		return sd_db_err(s, "umount");
	}
	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		ret = sd_db_err(s, "umount");
		sd_rollback(s);
		return ret;
	}
	return sd_commit(s);
}

static int recorded_backend(struct strata *s, const char *target, char *buf, size_t len)
{
	sqlite3_stmt *st;
	int rc;

	buf[0] = 0;
	if (sqlite3_prepare_v2(s->db, "SELECT backend FROM mounts WHERE target = ?", -1, &st,
			       NULL) != SQLITE_OK)
		return sd_db_err(s, "umount");
	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		snprintf(buf, len, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : sd_err(s, ENOENT, "%s is not a strata mount", target);
}

static int fusermount_u(const char *target)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "-q", target, (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EBUSY;
}

int strata_umount(struct strata *s, const char *target)
{
	char real[PATH_MAX], backend[16];
	int ret;

	if (!realpath(target, real))
		snprintf(real, sizeof(real), "%s", target);
	ret = recorded_backend(s, real, backend, sizeof(backend));
	if (ret)
		return ret;
	if (sd_is_mountpoint(real)) {
		int e = 0;

		if (umount2(real, 0))
			e = errno;
		/* a FUSE daemon that died leaves ENOTCONN behind: nothing to flush, detach */
		if (e == ENOTCONN && umount2(real, MNT_DETACH) == 0)
			e = 0;
		if (e && !strcmp(backend, "fuse") && fusermount_u(real) == 0)
			e = 0;
		if (e)
			return sd_err(s, e, "umount %s: %s", real, strerror(e));
	}
	return forget_mount(s, real);
}
