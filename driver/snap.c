// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Snapshots: the rows of the snapshots table and the containerd-style operations on them
 * (prepare, view, commit, remove, stat, walk, usage, labels).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "strata_priv.h"

#define SNAP_COLS "id, key, kind, parent_id, state, storage, diff_id, chain_id, created"

static const char *const kind_names[] = { "active", "view", "committed" };

const char *strata_kind_name(enum strata_kind k)
{
	return (unsigned)k < 3 ? kind_names[k] : "?";
}

static enum strata_kind kind_parse(const char *k)
{
	if (k && !strcmp(k, "committed"))
		return STRATA_COMMITTED;
	if (k && !strcmp(k, "view"))
		return STRATA_VIEW;
	return STRATA_ACTIVE;
}

static void text_copy(char *dst, size_t len, sqlite3_stmt *st, int col)
{
	const char *t = (const char *)sqlite3_column_text(st, col);

	snprintf(dst, len, "%s", t ? t : "");
}

static void row_read(sqlite3_stmt *st, struct sd_snap *sn)
{
	const char *storage = (const char *)sqlite3_column_text(st, 5);
	const char *state = (const char *)sqlite3_column_text(st, 4);

	memset(sn, 0, sizeof(*sn));
	sn->id = sqlite3_column_int64(st, 0);
	text_copy(sn->key, sizeof(sn->key), st, 1);
	sn->kind = kind_parse((const char *)sqlite3_column_text(st, 2));
	sn->parent_id = sqlite3_column_int64(st, 3);
	sn->ready = state && !strcmp(state, "ready");
	sn->image = storage && !strcmp(storage, "image");
	text_copy(sn->diff_id, sizeof(sn->diff_id), st, 6);
	text_copy(sn->chain_id, sizeof(sn->chain_id), st, 7);
	sn->created = sqlite3_column_int64(st, 8);
}

/* Ready rows only: a half-made snapshot is invisible. */
int sd_lookup(struct strata *s, const char *key, struct sd_snap *out)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(s->db, "SELECT " SNAP_COLS " FROM snapshots WHERE key = ? "
			       "AND state = 'ready'", -1, &st, NULL) != SQLITE_OK)
		return sd_db_err(s, key);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		row_read(st, out);
	sqlite3_finalize(st);
	if (rc == SQLITE_ROW)
		return 0;
	if (rc == SQLITE_DONE)
		return sd_err(s, ENOENT, "no snapshot '%s'", key);
	return sd_db_err(s, key);
}

int sd_lookup_id(struct strata *s, int64_t id, struct sd_snap *out)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(s->db, "SELECT " SNAP_COLS " FROM snapshots WHERE id = ?", -1,
			       &st, NULL) != SQLITE_OK)
		return sd_db_err(s, "lookup");
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		row_read(st, out);
	sqlite3_finalize(st);
	if (rc == SQLITE_ROW)
		return 0;
	if (rc == SQLITE_DONE)
		return sd_err(s, ENOENT, "no snapshot with id %lld", (long long)id);
	return sd_db_err(s, "lookup");
}

int sd_key_exists(struct strata *s, const char *key)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM snapshots WHERE key = ?", -1, &st,
			       NULL) != SQLITE_OK)
		return sd_db_err(s, key);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc == SQLITE_ROW)
		return sd_err(s, EEXIST, "snapshot '%s' already exists", key);
	return rc == SQLITE_DONE ? 0 : sd_db_err(s, key);
}

int sd_check_key(struct strata *s, const char *key)
{
	const unsigned char *p;

	if (!key || !*key)
		return sd_err(s, EINVAL, "empty snapshot key");
	if (strlen(key) > SD_KEY_MAX)
		return sd_err(s, ENAMETOOLONG, "snapshot key longer than %d bytes", SD_KEY_MAX);
	for (p = (const unsigned char *)key; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return sd_err(s, EINVAL, "snapshot key contains a control character");
	return 0;
}

int sd_snap_dir(struct strata *s, int64_t id, char *buf, size_t len)
{
	return sd_path(buf, len, "%s/snapshots/%lld", s->root, (long long)id);
}

int sd_snap_content(struct strata *s, const struct sd_snap *sn, char *buf, size_t len)
{
	return sd_path(buf, len, "%s/snapshots/%lld/%s", s->root, (long long)sn->id,
		       sn->image ? "layer.sqfs" : "fs");
}

int sd_insert(struct strata *s, const char *key, enum strata_kind kind, int64_t parent_id,
	      bool ready, bool image, const char *chain_id, int64_t *id)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(s->db, "INSERT INTO snapshots (key, kind, parent_id, state, "
			       "storage, chain_id, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
			       -1, &st, NULL) != SQLITE_OK)
		return sd_db_err(s, key);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, strata_kind_name(kind), -1, SQLITE_STATIC);
	if (parent_id)
		sqlite3_bind_int64(st, 3, parent_id);
	else
		sqlite3_bind_null(st, 3);
	sqlite3_bind_text(st, 4, ready ? "ready" : "creating", -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, image ? "image" : "dir", -1, SQLITE_STATIC);
	if (chain_id && *chain_id)
		sqlite3_bind_text(st, 6, chain_id, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 6);
	sqlite3_bind_int64(st, 7, time(NULL));
	sqlite3_bind_int64(st, 8, time(NULL));
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return sd_db_err(s, key);
	*id = sqlite3_last_insert_rowid(s->db);
	return 0;
}

int sd_set_labels(struct strata *s, int64_t id, const struct strata_label *l, size_t n)
{
	sqlite3_stmt *st;
	size_t i;
	int rc = SQLITE_DONE;

	if (!n)
		return 0;
	if (sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO labels (snapshot_id, name, value) "
			       "VALUES (?, ?, ?)", -1, &st, NULL) != SQLITE_OK)
		return sd_db_err(s, "labels");
	for (i = 0; i < n && rc == SQLITE_DONE; i++) {
		if (!l[i].name || !*l[i].name || !l[i].value) {
			sqlite3_finalize(st);
			return sd_err(s, EINVAL, "bad label: empty name");
		}
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_text(st, 2, l[i].name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, l[i].value, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : sd_db_err(s, "labels");
}

static int exec_id(struct strata *s, const char *sql, int64_t id)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
		return sd_db_err(s, "update");
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : sd_db_err(s, "update");
}

static int64_t count_id(struct strata *s, const char *sql, int64_t id)
{
	sqlite3_stmt *st;
	int64_t n = -1;

	if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -1;
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

int sd_mark_ready(struct strata *s, int64_t id, const char *diff_id)
{
	sqlite3_stmt *st;
	int rc, ret;

	ret = sd_begin(s);
	if (ret)
		return ret;
	if (sqlite3_prepare_v2(s->db, "UPDATE snapshots SET state = 'ready', diff_id = ?, "
			       "updated = ? WHERE id = ?", -1, &st, NULL) != SQLITE_OK) {
		ret = sd_db_err(s, "mark ready");
		goto out;
	}
	if (diff_id && *diff_id)
		sqlite3_bind_text(st, 1, diff_id, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 1);
	sqlite3_bind_int64(st, 2, time(NULL));
	sqlite3_bind_int64(st, 3, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	ret = rc == SQLITE_DONE ? sd_commit(s) : sd_db_err(s, "mark ready");
out:
	if (ret)
		sd_rollback(s);
	return ret;
}

void sd_abandon(struct strata *s, int64_t id)
{
	char path[PATH_MAX + 64], msg[sizeof(s->err)];

	/* keep the message of the failure that got us here */
	memcpy(msg, s->err, sizeof(msg));
	sd_rollback(s);
	sd_snap_dir(s, id, path, sizeof(path));
	sd_rm_rf(path);
	if (sd_begin(s)) {
		memcpy(s->err, msg, sizeof(msg));
		return;     /* recovery will finish it */
	}
	if (exec_id(s, "DELETE FROM labels WHERE snapshot_id = ?", id) ||
	    exec_id(s, "DELETE FROM snapshots WHERE id = ? AND state != 'ready'", id) ||
	    sd_commit(s))
		sd_rollback(s);
	memcpy(s->err, msg, sizeof(msg));
}

int sd_chain(struct strata *s, int64_t id, int64_t **ids, size_t *n)
{
	struct sd_snap sn;
	int64_t *v = NULL;
	size_t cnt = 0;
	int ret;

	while (id) {
		int64_t *nv;

		if (cnt > 4096) {
			free(v);
			return sd_err(s, ELOOP, "parent chain too long (cycle?)");
		}
		ret = sd_lookup_id(s, id, &sn);
		if (ret) {
			free(v);
			return ret;
		}
		nv = realloc(v, (cnt + 1) * sizeof(*v));
		if (!nv) {
			free(v);
			return sd_err(s, ENOMEM, "out of memory");
		}
		v = nv;
		v[cnt++] = id;
		id = sn.parent_id;
	}
	*ids = v;
	*n = cnt;
	return 0;
}

/* The new fs/ root takes the parent's root mode and owner, as an overlay would show it. */
static void copy_root_attrs(struct strata *s, int64_t parent_id, const char *fs)
{
	struct sd_snap p;
	char path[PATH_MAX + 64];
	struct stat st;

	if (!parent_id || sd_lookup_id(s, parent_id, &p) || p.image)
		return;
	sd_snap_content(s, &p, path, sizeof(path));
	if (stat(path, &st))
		return;
	if (lchown(fs, st.st_uid, st.st_gid) == 0 || !s->priv)
		chmod(fs, st.st_mode & 07777);
}

static int create_snapshot(struct strata *s, enum strata_kind kind, const char *key,
			   const char *parent, const struct strata_label *labels, size_t nlabels)
{
	char dir[PATH_MAX + 64], sub[PATH_MAX + 80];
	struct sd_snap p = { 0 };
	int64_t id = 0;
	int ret;

	ret = sd_check_key(s, key);
	if (ret)
		return ret;
	if (kind == STRATA_VIEW && !parent)
		return sd_err(s, EINVAL, "a view needs a parent");
	ret = sd_begin(s);
	if (ret)
		return ret;
	if (parent) {
		ret = sd_lookup(s, parent, &p);
		if (ret)
			goto out;
		if (p.kind != STRATA_COMMITTED) {
			ret = sd_err(s, EINVAL, "parent '%s' is not committed (it is %s)", parent,
				     strata_kind_name(p.kind));
			goto out;
		}
	}
	ret = sd_key_exists(s, key);
	if (!ret)
		ret = sd_insert(s, key, kind, p.id, true, false, NULL, &id);
	if (!ret)
		ret = sd_set_labels(s, id, labels, nlabels);
	if (ret)
		goto out;
	/* A crash before COMMIT leaves only a directory without a row: recovery's job. */
	sd_snap_dir(s, id, dir, sizeof(dir));
	ret = -EIO;
	if (mkdir(dir, 0700) ||
	    sd_path(sub, sizeof(sub), "%s/fs", dir) || mkdir(sub, 0755) ||
	    (copy_root_attrs(s, p.id, sub), 0) ||
	    (kind == STRATA_ACTIVE &&
	     (sd_path(sub, sizeof(sub), "%s/work", dir) || mkdir(sub, 0700)))) {
		ret = sd_err(s, errno, "%s: %s", sub, strerror(errno));
		goto out;
	}
	ret = sd_commit(s);
out:
	if (ret) {
		sd_rollback(s);
		if (id) {
			sd_snap_dir(s, id, dir, sizeof(dir));
			sd_rm_rf(dir);
		}
	}
	return ret;
}

int strata_prepare(struct strata *s, const char *key, const char *parent,
		   const struct strata_label *labels, size_t nlabels)
{
	return create_snapshot(s, STRATA_ACTIVE, key, parent, labels, nlabels);
}

int strata_view(struct strata *s, const char *key, const char *parent,
		const struct strata_label *labels, size_t nlabels)
{
	return create_snapshot(s, STRATA_VIEW, key, parent, labels, nlabels);
}

static int first_mount(struct strata *s, int64_t id, char *buf, size_t len)
{
	sqlite3_stmt *st;
	int rc;

	buf[0] = 0;
	if (sqlite3_prepare_v2(s->db, "SELECT target FROM mounts WHERE snapshot_id = ? "
			       "ORDER BY target", -1, &st, NULL) != SQLITE_OK)
		return sd_db_err(s, "mounts");
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		text_copy(buf, len, st, 0);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 1 : 0;
}

int strata_commit(struct strata *s, const char *name, const char *key,
		  const struct strata_label *labels, size_t nlabels)
{
	char path[PATH_MAX + 64], mnt[PATH_MAX];
	struct sd_snap sn;
	sqlite3_stmt *st;
	int ret, rc;

	ret = sd_check_key(s, name);
	if (ret)
		return ret;
	ret = sd_begin(s);
	if (ret)
		return ret;
	ret = sd_lookup(s, key, &sn);
	if (ret)
		goto out;
	if (sn.kind != STRATA_ACTIVE) {
		ret = sd_err(s, EINVAL, "'%s' is %s; only active snapshots can be committed",
			     key, sn.kind == STRATA_VIEW ? "a view" : "already committed");
		goto out;
	}
	if (first_mount(s, sn.id, mnt, sizeof(mnt)) > 0) {
		ret = sd_err(s, EBUSY, "'%s' is mounted at %s; unmount it before committing",
			     key, mnt);
		goto out;
	}
	if (strcmp(name, key)) {
		ret = sd_key_exists(s, name);
		if (ret)
			goto out;
	}
	if (sqlite3_prepare_v2(s->db, "UPDATE snapshots SET key = ?, kind = 'committed', "
			       "updated = ? WHERE id = ?", -1, &st, NULL) != SQLITE_OK) {
		ret = sd_db_err(s, "commit");
		goto out;
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, time(NULL));
	sqlite3_bind_int64(st, 3, sn.id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		ret = sd_db_err(s, "commit");
		goto out;
	}
	ret = sd_set_labels(s, sn.id, labels, nlabels);
	if (!ret)
		ret = sd_commit(s);
out:
	if (ret) {
		sd_rollback(s);
		return ret;
	}
	/* The overlay's scratch space is dead weight in a committed layer. */
	sd_snap_dir(s, sn.id, path, sizeof(path));
	strncat(path, "/work", sizeof(path) - strlen(path) - 1);
	sd_rm_rf(path);
	return 0;
}

static int unmount_all(struct strata *s, int64_t id)
{
	char mnt[PATH_MAX];
	int ret;

	while (first_mount(s, id, mnt, sizeof(mnt)) > 0) {
		ret = strata_umount(s, mnt);
		if (ret)
			return ret;
	}
	return 0;
}

int strata_remove(struct strata *s, const char *key, bool force)
{
	char dir[PATH_MAX + 64], tmp[PATH_MAX + 64], mnt[PATH_MAX];
	struct sd_snap sn;
	int64_t children;
	int ret;

	ret = sd_lookup(s, key, &sn);
	if (ret)
		return ret;
	if (force) {
		ret = unmount_all(s, sn.id);
		if (ret)
			return ret;
	}
	ret = sd_begin(s);
	if (ret)
		return ret;
	ret = sd_lookup(s, key, &sn);
	if (ret)
		goto out;
	children = count_id(s, "SELECT count(*) FROM snapshots WHERE parent_id = ?", sn.id);
	if (children != 0) {
		ret = sd_err(s, EBUSY, "'%s' has %lld child snapshot(s); remove them first", key,
			     (long long)children);
		goto out;
	}
	if (first_mount(s, sn.id, mnt, sizeof(mnt)) > 0) {
		ret = sd_err(s, EBUSY, "'%s' is mounted at %s (use --force to unmount)", key, mnt);
		goto out;
	}
	sd_snap_dir(s, sn.id, dir, sizeof(dir));
	strncat(dir, "/", sizeof(dir) - strlen(dir) - 1);
	if (sd_dir_in_use(dir, mnt, sizeof(mnt))) {
		ret = sd_err(s, EBUSY, "'%s' is in use by the mount at %s, which strata did not "
			     "record; unmount it first", key, mnt);
		goto out;
	}
	ret = exec_id(s, "DELETE FROM labels WHERE snapshot_id = ?", sn.id);
	if (!ret)
		ret = exec_id(s, "DELETE FROM snapshots WHERE id = ?", sn.id);
	if (!ret)
		ret = sd_commit(s);
out:
	if (ret) {
		sd_rollback(s);
		return ret;
	}
	/* Out of snapshots/ in one step; a crash during the rm -rf leaves only tmp/ debris. */
	sd_snap_dir(s, sn.id, dir, sizeof(dir));
	sd_path(tmp, sizeof(tmp), "%s/tmp/rm-%lld", s->root, (long long)sn.id);
	if (rename(dir, tmp) == 0)
		sd_rm_rf(tmp);
	else
		sd_rm_rf(dir);
	return 0;
}

static char *xstrdup(const char *p)
{
	return p ? strdup(p) : NULL;
}

static int fill_snapshot(struct strata *s, const struct sd_snap *sn, struct strata_snapshot *o)
{
	char path[PATH_MAX + 64];
	sqlite3_stmt *st;
	struct sd_snap p;

	memset(o, 0, sizeof(*o));
	o->id = sn->id;
	o->key = xstrdup(sn->key);
	o->kind = sn->kind;
	o->image = sn->image;
	o->created = sn->created;
	o->diff_id = sn->diff_id[0] ? xstrdup(sn->diff_id) : NULL;
	o->chain_id = sn->chain_id[0] ? xstrdup(sn->chain_id) : NULL;
	if (sn->parent_id && sd_lookup_id(s, sn->parent_id, &p) == 0)
		o->parent = xstrdup(p.key);
	sd_snap_content(s, sn, path, sizeof(path));
	o->path = xstrdup(path);
	if (sqlite3_prepare_v2(s->db, "SELECT name, value FROM labels WHERE snapshot_id = ? "
			       "ORDER BY name", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, sn->id);
		while (sqlite3_step(st) == SQLITE_ROW) {
			struct strata_label *nl = realloc(o->labels, (o->nlabels + 1) * sizeof(*nl));

			if (!nl)
				break;
			o->labels = nl;
			nl[o->nlabels].name = xstrdup((const char *)sqlite3_column_text(st, 0));
			nl[o->nlabels].value = xstrdup((const char *)sqlite3_column_text(st, 1));
			o->nlabels++;
		}
		sqlite3_finalize(st);
	}
	if (sqlite3_prepare_v2(s->db, "SELECT target FROM mounts WHERE snapshot_id = ? "
			       "ORDER BY target", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, sn->id);
		while (sqlite3_step(st) == SQLITE_ROW) {
			char **nm = realloc(o->mounts, (o->nmounts + 1) * sizeof(*nm));

			if (!nm)
				break;
			o->mounts = nm;
			nm[o->nmounts++] = xstrdup((const char *)sqlite3_column_text(st, 0));
		}
		sqlite3_finalize(st);
	}
	if (!o->key || !o->path)
		return sd_err(s, ENOMEM, "out of memory");
	return 0;
}

void strata_snapshot_free(struct strata_snapshot *o)
{
	size_t i;

	free(o->key);
	free(o->parent);
	free(o->diff_id);
	free(o->chain_id);
	free(o->path);
	for (i = 0; i < o->nlabels; i++) {
		free(o->labels[i].name);
		free(o->labels[i].value);
	}
	free(o->labels);
	for (i = 0; i < o->nmounts; i++)
		free(o->mounts[i]);
	free(o->mounts);
	memset(o, 0, sizeof(*o));
}

int strata_stat(struct strata *s, const char *key, struct strata_snapshot *out)
{
	struct sd_snap sn;
	int ret;

	ret = sd_lookup(s, key, &sn);
	if (ret)
		return ret;
	ret = fill_snapshot(s, &sn, out);
	if (ret)
		strata_snapshot_free(out);
	return ret;
}

int strata_walk(struct strata *s, int (*fn)(const struct strata_snapshot *, void *), void *ctx)
{
	struct strata_snapshot o;
	struct sd_snap sn;
	sqlite3_stmt *st;
	int rc, ret = 0;

	/* Read in one transaction so the walk sees one consistent state. */
	if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return sd_db_err(s, "walk");
	/* ids grow, and a parent always exists before its children */
	if (sqlite3_prepare_v2(s->db, "SELECT " SNAP_COLS " FROM snapshots WHERE state = "
			       "'ready' ORDER BY id", -1, &st, NULL) != SQLITE_OK) {
		ret = sd_db_err(s, "walk");
		goto out;
	}
	while (!ret && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		row_read(st, &sn);
		ret = fill_snapshot(s, &sn, &o);
		if (!ret)
			ret = fn(&o, ctx);
		strata_snapshot_free(&o);
	}
	if (!ret && rc != SQLITE_DONE)
		ret = sd_db_err(s, "walk");
	sqlite3_finalize(st);
out:
	sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
	return ret;
}

int strata_label(struct strata *s, const char *key, const char *name, const char *value)
{
	struct strata_label l = { (char *)name, (char *)value };
	struct sd_snap sn;
	sqlite3_stmt *st;
	int ret;

	if (!name || !*name)
		return sd_err(s, EINVAL, "empty label name");
	ret = sd_begin(s);
	if (ret)
		return ret;
	ret = sd_lookup(s, key, &sn);
	if (ret)
		goto out;
	if (value) {
		ret = sd_set_labels(s, sn.id, &l, 1);
	} else if (sqlite3_prepare_v2(s->db, "DELETE FROM labels WHERE snapshot_id = ? AND "
				      "name = ?", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, sn.id);
		sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_DONE)
			ret = sd_db_err(s, "label");
		sqlite3_finalize(st);
	} else {
		ret = sd_db_err(s, "label");
	}
	if (!ret)
		ret = sd_commit(s);
out:
	if (ret)
		sd_rollback(s);
	return ret;
}

int sd_record_mount(struct strata *s, int64_t id, const char *target, const char *backend)
{
	sqlite3_stmt *st;
	int rc, ret;

	ret = sd_begin(s);
	if (ret)
		return ret;
	if (sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO mounts (target, snapshot_id, "
			       "backend, created) VALUES (?, ?, ?, ?)", -1, &st, NULL) != SQLITE_OK) {
		ret = sd_db_err(s, "record mount");
		goto out;
	}
	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, id);
	sqlite3_bind_text(st, 3, backend, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, time(NULL));
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	ret = rc == SQLITE_DONE ? sd_commit(s) : sd_db_err(s, "record mount");
out:
	if (ret)
		sd_rollback(s);
	return ret;
}
