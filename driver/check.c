// SPDX-License-Identifier: GPL-2.0-or-later
/* `strata check`: the invariants of Documentation/store.md, verified. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata_priv.h"

struct chk {
	struct strata *s;
	void (*fn)(void *ctx, const char *problem);
	void *ctx;
	int problems;
};

static void problem(struct chk *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(struct chk *c, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	c->problems++;
	if (c->fn)
		c->fn(c->ctx, msg);
}

static void check_sqlite(struct chk *c)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->s->db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK) {
		while (sqlite3_step(st) == SQLITE_ROW) {
			const char *r = (const char *)sqlite3_column_text(st, 0);

			if (r && strcmp(r, "ok"))
				problem(c, "database: %s", r);
		}
		sqlite3_finalize(st);
	} else {
		problem(c, "database: %s", sqlite3_errmsg(c->s->db));
	}
	if (sqlite3_prepare_v2(c->s->db, "PRAGMA foreign_key_check", -1, &st, NULL) == SQLITE_OK) {
		while (sqlite3_step(st) == SQLITE_ROW)
			problem(c, "database: foreign key violation in table %s row %lld",
				sqlite3_column_text(st, 0), (long long)sqlite3_column_int64(st, 1));
		sqlite3_finalize(st);
	}
}

static void check_row(struct chk *c, const struct sd_snap *sn)
{
	char path[PATH_MAX + 64];
	struct sd_snap p;
	struct stat st;
	int64_t *ids;
	size_t n;

	if (!sn->ready) {
		problem(c, "snapshot %lld ('%s') is half-made (an operation is running, or "
			"crashed and recovery has not run yet)", (long long)sn->id, sn->key);
		return;
	}
	if (sn->parent_id) {
		if (sd_lookup_id(c->s, sn->parent_id, &p))
			problem(c, "'%s': parent %lld missing", sn->key, (long long)sn->parent_id);
		else if (p.kind != STRATA_COMMITTED || !p.ready)
			problem(c, "'%s': parent '%s' is not a committed layer", sn->key, p.key);
	}
	if (sd_chain(c->s, sn->id, &ids, &n))
		problem(c, "'%s': broken parent chain: %s", sn->key, c->s->err);
	else
		free(ids);
	sd_snap_content(c->s, sn, path, sizeof(path));
	if (lstat(path, &st))
		problem(c, "'%s': content %s missing: %s", sn->key, path, strerror(errno));
	else if (sn->image ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode))
		problem(c, "'%s': content %s has the wrong type", sn->key, path);
	if (sn->kind == STRATA_ACTIVE) {
		sd_snap_dir(c->s, sn->id, path, sizeof(path));
		strcat(path, "/work");
		if (lstat(path, &st) || !S_ISDIR(st.st_mode))
			problem(c, "'%s': active snapshot without a work directory", sn->key);
	}
}

static void check_rows(struct chk *c)
{
	sqlite3_stmt *st;
	struct sd_snap sn;
	int64_t *ids = NULL;
	size_t n = 0, i;

	if (sqlite3_prepare_v2(c->s->db, "SELECT id FROM snapshots ORDER BY id", -1, &st,
			       NULL) != SQLITE_OK) {
		problem(c, "database: %s", sqlite3_errmsg(c->s->db));
		return;
	}
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t *nv = realloc(ids, (n + 1) * sizeof(*ids));

		if (!nv)
			break;
		ids = nv;
		ids[n++] = sqlite3_column_int64(st, 0);
	}
	sqlite3_finalize(st);
	for (i = 0; i < n; i++)
		if (sd_lookup_id(c->s, ids[i], &sn) == 0)
			check_row(c, &sn);
	free(ids);
}

static void check_dirs(struct chk *c)
{
	char path[PATH_MAX + 64];
	struct dirent *de;
	DIR *d;

	sd_path(path, sizeof(path), "%s/snapshots", c->s->root);
	d = opendir(path);
	if (!d) {
		problem(c, "%s: %s", path, strerror(errno));
		return;
	}
	while ((de = readdir(d))) {
		struct sd_snap sn;
		char *end;
		long long id;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		id = strtoll(de->d_name, &end, 10);
		if (*end || id <= 0 || sd_lookup_id(c->s, id, &sn))
			problem(c, "%s/%s: content without a snapshot (orphan)", path, de->d_name);
	}
	closedir(d);
}

static void check_mounts(struct chk *c)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->s->db, "SELECT target FROM mounts", -1, &st, NULL) != SQLITE_OK)
		return;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *t = (const char *)sqlite3_column_text(st, 0);

		if (!sd_is_mountpoint(t))
			problem(c, "mount at %s is recorded but not mounted", t);
	}
	sqlite3_finalize(st);
}

int strata_check(struct strata *s, void (*fn)(void *ctx, const char *problem), void *ctx)
{
	struct chk c = { .s = s, .fn = fn, .ctx = ctx };

	/* one read transaction: a consistent picture even with writers around */
	if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return sd_db_err(s, "check");
	check_sqlite(&c);
	check_rows(&c);
	check_dirs(&c);
	check_mounts(&c);
	sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
	return c.problems;
}
