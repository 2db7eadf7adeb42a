// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The store: root resolution, the lock, the SQLite schema and its migrations, and crash
 * recovery.  Layout and protocol: Documentation/store.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "strata_priv.h"

/* migrations[i] takes the schema from version i to i + 1. */
static const char *const migrations[] = {
	"CREATE TABLE snapshots ("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  key TEXT NOT NULL UNIQUE,"
	"  kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),"
	"  parent_id INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,"
	"  state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('creating', 'ready')),"
	"  storage TEXT NOT NULL DEFAULT 'dir' CHECK (storage IN ('dir', 'image')),"
	"  diff_id TEXT, chain_id TEXT,"
	"  created INTEGER NOT NULL, updated INTEGER NOT NULL);"
	"CREATE INDEX snapshots_parent ON snapshots(parent_id);"
	"CREATE INDEX snapshots_chain ON snapshots(chain_id);"
	"CREATE TABLE labels ("
	"  snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,"
	"  name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (snapshot_id, name));"
	"CREATE TABLE mounts ("
	"  target TEXT PRIMARY KEY,"
	"  snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE RESTRICT,"
	"  backend TEXT NOT NULL CHECK (backend IN ('kernel', 'fuse', 'bind')),"
	"  created INTEGER NOT NULL);",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

int sd_err(struct strata *s, int errnum, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->err, sizeof(s->err), fmt, ap);
	va_end(ap);
	if (errnum > 0)
		errnum = -errnum;
	return errnum ? errnum : -EIO;
}

void sd_warn(struct strata *s, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (!s->warn)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	s->warn(s->warn_ctx, msg);
}

int sd_db_err(struct strata *s, const char *what)
{
	int rc = sqlite3_errcode(s->db);

	if (rc == SQLITE_FULL)
		return sd_err(s, ENOSPC, "%s: metadata database: disk full", what);
	if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
		return sd_err(s, EBUSY, "%s: metadata database busy: %s", what,
			      sqlite3_errmsg(s->db));
	return sd_err(s, EIO, "%s: metadata database: %s", what, sqlite3_errmsg(s->db));
}

const char *strata_errmsg(const struct strata *s)
{
	return s->err;
}

const char *strata_root(const struct strata *s)
{
	return s->root;
}

void strata_set_warn(struct strata *s, strata_warn_fn fn, void *ctx)
{
	s->warn = fn;
	s->warn_ctx = ctx;
}

int sd_path(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Root of the initial user namespace: root inside `unshare -Ur` cannot mknod devices,
 * write trusted.* xattrs or mount the overlay without userxattr, so it counts as rootless. */
static bool host_root(void)
{
	unsigned long inside, outside, count;
	bool ok = false;
	FILE *f;

	if (geteuid() != 0)
		return false;
	f = fopen("/proc/self/uid_map", "re");
	if (!f)
		return true;
	if (fscanf(f, "%lu %lu %lu", &inside, &outside, &count) == 3)
		ok = inside == 0 && outside == 0 && count == 4294967295ul;
	fclose(f);
	return ok;
}

int strata_default_root(char *buf, size_t len)
{
	const char *e = getenv("STRATA_ROOT");

	if (e && *e)
		return sd_path(buf, len, "%s", e);
	if (host_root())
		return sd_path(buf, len, "/var/lib/strata");
	e = getenv("XDG_DATA_HOME");
	if (e && *e == '/')
		return sd_path(buf, len, "%s/strata", e);
	e = getenv("HOME");
	if (!e || !*e)
		return -ENOENT;
	return sd_path(buf, len, "%s/.local/share/strata", e);
}

static int mkdir_p(char *path, mode_t mode)
{
	char *p;

	for (p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(path, 0755) && errno != EEXIST) {
			*p = '/';
			return -errno;
		}
		*p = '/';
	}
	if (mkdir(path, mode) && errno != EEXIST)
		return -errno;
	return 0;
}

static int exec_sql(struct strata *s, const char *sql, const char *what)
{
	if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK)
		return sd_db_err(s, what);
	return 0;
}

int sd_begin(struct strata *s)
{
	/* IMMEDIATE: take the write lock up front, so writers queue on the busy timeout
	 * instead of failing on a read-to-write upgrade. */
	return exec_sql(s, "BEGIN IMMEDIATE", "begin transaction");
}

int sd_commit(struct strata *s)
{
	return exec_sql(s, "COMMIT", "commit transaction");
}

void sd_rollback(struct strata *s)
{
	if (!sqlite3_get_autocommit(s->db))
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

static int db_version(struct strata *s, int *v)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
		return sd_db_err(s, "read schema version");
	rc = sqlite3_step(st);
	*v = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : sd_db_err(s, "read schema version");
}

static int db_migrate(struct strata *s)
{
	char sql[64];
	int v, ret;

	ret = sd_begin(s);
	if (ret)
		return ret;
	ret = db_version(s, &v);
	if (ret)
		goto out;
	if (v > SCHEMA_VERSION) {
		ret = sd_err(s, EPROTO, "%s/metadata.db: schema version %d is newer than this "
			     "strata understands (%d)", s->root, v, SCHEMA_VERSION);
		goto out;
	}
	for (; v < SCHEMA_VERSION; v++) {
		ret = exec_sql(s, migrations[v], "migrate schema");
		if (ret)
			goto out;
	}
	snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", SCHEMA_VERSION);
	ret = exec_sql(s, sql, "set schema version");
	if (!ret)
		ret = sd_commit(s);
out:
	if (ret)
		sd_rollback(s);
	return ret;
}

static int db_open(struct strata *s)
{
	char path[PATH_MAX + 16];
	int ret;

	ret = sd_path(path, sizeof(path), "%s/metadata.db", s->root);
	if (ret)
		return sd_err(s, ret, "%s: store root path too long", s->root);
	if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			    SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
		return sd_err(s, EIO, "%s: cannot open: %s", path,
			      s->db ? sqlite3_errmsg(s->db) : "out of memory");
	sqlite3_busy_timeout(s->db, 60000);
	ret = exec_sql(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
		       "PRAGMA foreign_keys=ON;", "configure database");
	if (ret)
		return ret;
	return db_migrate(s);
}

bool sd_is_mountpoint(const char *path)
{
	char want[PATH_MAX], line[8192];
	bool found = false;
	FILE *f;

	/* a dead FUSE mount (ENOTCONN) cannot be resolved, but is still a mount point */
	if (!realpath(path, want) && (path[0] != '/' ||
				      snprintf(want, sizeof(want), "%s", path) >= (int)sizeof(want)))
		return false;
	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char mp[PATH_MAX];
		char *w, *r;

		/* field 5 is the mount point, with space/tab/newline/backslash octal-escaped */
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1)
			continue;
		for (w = r = mp; *r; r++) {
			if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] && r[3]) {
				*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
				r += 3;
			} else {
				*w++ = *r;
			}
		}
		*w = 0;
		found = !strcmp(mp, want);
	}
	fclose(f);
	return found;
}

/* Only runs while this process holds the store lock exclusively (no operation in flight):
 * then every non-ready row and every directory without a row is debris of a crash. */
static int recover(struct strata *s)
{
	char path[PATH_MAX + 64];
	sqlite3_stmt *st = NULL;
	struct dirent *de;
	DIR *d;
	int ret;

	ret = sd_begin(s);
	if (ret)
		return ret;
	if (sqlite3_prepare_v2(s->db, "SELECT id FROM snapshots WHERE state != 'ready'",
			       -1, &st, NULL) != SQLITE_OK) {
		ret = sd_db_err(s, "recovery");
		goto out;
	}
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t id = sqlite3_column_int64(st, 0);

		sd_snap_dir(s, id, path, sizeof(path));
		sd_rm_rf(path);
		sd_warn(s, "recovery: rolled back half-made snapshot %lld", (long long)id);
	}
	sqlite3_finalize(st);
	st = NULL;
	ret = exec_sql(s, "DELETE FROM labels WHERE snapshot_id IN "
		       "(SELECT id FROM snapshots WHERE state != 'ready');"
		       "DELETE FROM mounts WHERE snapshot_id IN "
		       "(SELECT id FROM snapshots WHERE state != 'ready');"
		       "DELETE FROM snapshots WHERE state != 'ready'", "recovery");
	if (ret)
		goto out;
	/* mounts that went away behind our back (reboot, umount by hand) */
	if (sqlite3_prepare_v2(s->db, "SELECT target FROM mounts", -1, &st, NULL) != SQLITE_OK) {
		ret = sd_db_err(s, "recovery");
		goto out;
	}
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *t = (const char *)sqlite3_column_text(st, 0);
		sqlite3_stmt *del;

		if (sd_is_mountpoint(t))
			continue;
		if (sqlite3_prepare_v2(s->db, "DELETE FROM mounts WHERE target = ?", -1, &del,
				       NULL) == SQLITE_OK) {
			sqlite3_bind_text(del, 1, t, -1, SQLITE_TRANSIENT);
			sqlite3_step(del);
			sqlite3_finalize(del);
		}
	}
	sqlite3_finalize(st);
	st = NULL;
	ret = sd_commit(s);
	if (ret)
		goto out;

	/* directories without a row */
	sd_path(path, sizeof(path), "%s/snapshots", s->root);
	d = opendir(path);
	while (d && (de = readdir(d))) {
		char *end;
		long long id;
		struct sd_snap sn;

		if (de->d_name[0] == '.')
			continue;
		id = strtoll(de->d_name, &end, 10);
		if (*end == 0 && id > 0 && sd_lookup_id(s, id, &sn) == 0)
			continue;
		sd_rm_rf_at(dirfd(d), de->d_name);
	}
	if (d)
		closedir(d);
	sd_path(path, sizeof(path), "%s/tmp", s->root);
	d = opendir(path);
	while (d && (de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			sd_rm_rf_at(dirfd(d), de->d_name);
	}
	if (d)
		closedir(d);
	s->err[0] = 0;
	return 0;
out:
	if (st)
		sqlite3_finalize(st);
	sd_rollback(s);
	return ret;
}

static int store_lock(struct strata *s)
{
	char path[PATH_MAX + 16];
	int ret;

	sd_path(path, sizeof(path), "%s/lock", s->root);
	s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->lock_fd < 0)
		return sd_err(s, errno, "%s: %s", path, strerror(errno));
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0) {
		ret = recover(s);
		if (ret)
			return ret;
		/* a downgrade: others waiting for LOCK_SH may now start */
		if (flock(s->lock_fd, LOCK_SH))
			return sd_err(s, errno, "%s: flock: %s", path, strerror(errno));
		return 0;
	}
	if (errno != EWOULDBLOCK)
		return sd_err(s, errno, "%s: flock: %s", path, strerror(errno));
	if (flock(s->lock_fd, LOCK_SH))
		return sd_err(s, errno, "%s: flock: %s", path, strerror(errno));
	return 0;
}

static int store_dirs(struct strata *s)
{
	char path[PATH_MAX + 16];
	int ret;

	strcpy(path, s->root);
	ret = mkdir_p(path, 0700);
	if (ret)
		return sd_err(s, ret, "cannot create store root %s: %s", s->root, strerror(-ret));
	sd_path(path, sizeof(path), "%s/snapshots", s->root);
	if (mkdir(path, 0700) && errno != EEXIST)
		return sd_err(s, errno, "%s: %s", path, strerror(errno));
	sd_path(path, sizeof(path), "%s/tmp", s->root);
	if (mkdir(path, 0700) && errno != EEXIST)
		return sd_err(s, errno, "%s: %s", path, strerror(errno));
	return 0;
}

int strata_open(const char *root, struct strata **sp, char *err, size_t errlen)
{
	struct strata *s;
	char buf[PATH_MAX];
	int ret;

	*sp = NULL;
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	s->lock_fd = -1;
	s->priv = host_root();
	if (!root) {
		ret = strata_default_root(buf, sizeof(buf));
		if (ret) {
			snprintf(err, errlen, "cannot find a store root: set --root or STRATA_ROOT");
			goto fail;
		}
		root = buf;
	}
	if (!*root || strlen(root) >= sizeof(s->root) - 64) {
		ret = -ENAMETOOLONG;
		snprintf(err, errlen, "bad store root '%s'", root);
		goto fail;
	}
	/* absolute, so mount options and the recorded mounts do not depend on the cwd */
	if (root[0] != '/') {
		if (!getcwd(s->root, sizeof(s->root) - strlen(root) - 66)) {
			ret = -errno;
			snprintf(err, errlen, "getcwd: %s", strerror(errno));
			goto fail;
		}
		strcat(s->root, "/");
	}
	strcat(s->root, root);
	ret = store_dirs(s);
	if (!ret)
		ret = db_open(s);
	if (!ret)
		ret = store_lock(s);
	if (!ret) {
		*sp = s;
		return 0;
	}
	snprintf(err, errlen, "%s", s->err);
fail:
	strata_close(s);
	return ret;
}

void strata_close(struct strata *s)
{
	if (!s)
		return;
	if (s->db)
		sqlite3_close(s->db);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	free(s);
}
