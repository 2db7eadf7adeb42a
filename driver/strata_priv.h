/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Private to driver/: the store handle and helpers shared by its files. */
#ifndef STRATA_PRIV_H
#define STRATA_PRIV_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sqlite3.h>

#include "strata.h"

#define SD_KEY_MAX   255
#define SHA256_STR_LEN 72   /* "sha256:" + 64 hex + NUL, rounded */

struct strata {
	char root[PATH_MAX];
	sqlite3 *db;
	int lock_fd;
	bool priv;              /* euid 0: trusted.* xattrs, mknod, chown, kernel mounts */
	char err[2048];
	strata_warn_fn warn;
	void *warn_ctx;
	char stratafs[PATH_MAX];
};

/* One snapshots row. */
struct sd_snap {
	int64_t id;
	int64_t parent_id;      /* 0 = none */
	int64_t created;
	enum strata_kind kind;
	bool ready;
	bool image;
	char key[SD_KEY_MAX + 1];
	char diff_id[SHA256_STR_LEN];
	char chain_id[SHA256_STR_LEN];
};

/* errors and warnings */
int sd_err(struct strata *s, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void sd_warn(struct strata *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int sd_db_err(struct strata *s, const char *what);

/* database */
int sd_begin(struct strata *s);
int sd_commit(struct strata *s);
void sd_rollback(struct strata *s);
int sd_lookup(struct strata *s, const char *key, struct sd_snap *out);
int sd_lookup_id(struct strata *s, int64_t id, struct sd_snap *out);
int sd_check_key(struct strata *s, const char *key);
int sd_key_exists(struct strata *s, const char *key);
int sd_set_labels(struct strata *s, int64_t id, const struct strata_label *l, size_t n);
int sd_insert(struct strata *s, const char *key, enum strata_kind kind, int64_t parent_id,
	      bool ready, bool image, const char *chain_id, int64_t *id);
int sd_mark_ready(struct strata *s, int64_t id, const char *diff_id);
/* Remove a half-made snapshot (content and row). */
void sd_abandon(struct strata *s, int64_t id);
/* ids from id down to the base layer; caller frees *ids. */
int sd_chain(struct strata *s, int64_t id, int64_t **ids, size_t *n);
int sd_snap_dir(struct strata *s, int64_t id, char *buf, size_t len);
int sd_snap_content(struct strata *s, const struct sd_snap *sn, char *buf, size_t len);
int sd_record_mount(struct strata *s, int64_t id, const char *target, const char *backend);

/* files */
int sd_rm_rf(const char *path);
int sd_rm_rf_at(int dirfd, const char *name);
int sd_path(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
bool sd_is_mountpoint(const char *path);
bool sd_dir_in_use(const char *needle, char *mp, size_t len);

/* sha256.c */
struct sha256 {
	uint32_t h[8];
	uint64_t len;
	uint8_t buf[64];
	size_t fill;
};
void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t n);
void sha256_final_str(struct sha256 *c, char *out);
void sha256_str(const void *data, size_t n, char *out);
bool sd_valid_digest(const char *d);

#endif
