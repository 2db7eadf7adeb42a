/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * libstrata-driver: the strata storage driver as a library.
 *
 * Semantics follow containerd's snapshotter API: an *active* snapshot is writable and sits on
 * a committed parent; a *view* is read-only; *commit* freezes an active snapshot into a
 * committed layer.  Store layout and schema: Documentation/store.md.
 *
 * Every function returns 0 (or a count) on success and a negative errno on failure; the
 * message for the last failure is strata_errmsg().  Strings in result structs are owned by
 * the struct and freed by the matching *_free().
 */
#ifndef STRATA_DRIVER_H
#define STRATA_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strata;

enum strata_kind { STRATA_ACTIVE, STRATA_VIEW, STRATA_COMMITTED };
enum strata_backend { STRATA_BACKEND_AUTO, STRATA_BACKEND_FUSE, STRATA_BACKEND_KERNEL };
enum strata_compress { STRATA_COMPRESS_NONE, STRATA_COMPRESS_GZIP, STRATA_COMPRESS_ZSTD };

struct strata_label {
	char *name;
	char *value;
};

struct strata_snapshot {
	int64_t id;
	char *key;
	char *parent;           /* NULL for a base layer */
	enum strata_kind kind;
	bool image;             /* content is one SquashFS image (squashed layer) */
	char *diff_id;          /* "sha256:…" or NULL */
	char *chain_id;         /* "sha256:…" or NULL */
	int64_t created;
	struct strata_label *labels;
	size_t nlabels;
	char **mounts;          /* mount points recorded for this snapshot */
	size_t nmounts;
	char *path;             /* the content path (fs/ dir or image file) */
};

/* Like containerd's mount.Mount. */
struct strata_mount_spec {
	char *type;             /* "overlay", "fuse3.stratafs" or "bind" */
	char *source;
	char **options;
	size_t noptions;
};

struct strata_usage {
	uint64_t bytes;         /* allocated bytes of the snapshot's own content */
	uint64_t inodes;
};

struct strata_digests {
	char digest[80];        /* sha256 of the bytes as stored/transferred */
	char diff_id[80];       /* sha256 of the uncompressed tar */
	uint64_t size;          /* bytes written (export) */
};

typedef void (*strata_warn_fn)(void *ctx, const char *msg);

/* Open (creating if needed) the store at root; NULL root = the default resolution
 * (STRATA_ROOT, /var/lib/strata as root, XDG data dir rootless).  Runs crash recovery when
 * no other strata process is active on the store.  An open handle holds a shared lock that
 * keeps other processes from recovering, so a long-lived caller should open the store per
 * operation (or per batch), not once for its lifetime. */
int strata_open(const char *root, struct strata **sp, char *err, size_t errlen);
void strata_close(struct strata *s);
const char *strata_errmsg(const struct strata *s);
const char *strata_root(const struct strata *s);
void strata_set_warn(struct strata *s, strata_warn_fn fn, void *ctx);
/* Where to find the stratafs binary (default: $STRATAFS, then next to the running program). */
void strata_set_stratafs(struct strata *s, const char *path);
/* Resolve the default root into buf. */
int strata_default_root(char *buf, size_t len);

int strata_prepare(struct strata *s, const char *key, const char *parent,
		   const struct strata_label *labels, size_t nlabels);
int strata_view(struct strata *s, const char *key, const char *parent,
		const struct strata_label *labels, size_t nlabels);
int strata_commit(struct strata *s, const char *name, const char *key,
		  const struct strata_label *labels, size_t nlabels);
int strata_remove(struct strata *s, const char *key, bool force);
int strata_stat(struct strata *s, const char *key, struct strata_snapshot *out);
/* Calls fn for every snapshot, parents before children; stops on non-zero return. */
int strata_walk(struct strata *s, int (*fn)(const struct strata_snapshot *, void *), void *ctx);
int strata_usage(struct strata *s, const char *key, struct strata_usage *out);
/* value NULL removes the label. */
int strata_label(struct strata *s, const char *key, const char *name, const char *value);

int strata_mounts(struct strata *s, const char *key, enum strata_backend b,
		  struct strata_mount_spec *out);
int strata_mount(struct strata *s, const char *key, const char *target, enum strata_backend b);
int strata_umount(struct strata *s, const char *target);

struct strata_import_opts {
	const char *parent;     /* committed parent or NULL */
	const char *digest;     /* expected "sha256:…" of the file, or NULL */
	const char *diff_id;    /* expected "sha256:…" of the uncompressed tar, or NULL */
	const char *chain_id;   /* recorded as is (image import) */
	const struct strata_label *labels;
	size_t nlabels;
};
int strata_import(struct strata *s, const char *name, const char *tar_path,
		  const struct strata_import_opts *o, struct strata_digests *out);
/* Writes the OCI layer diff of key against its parent to fd. */
int strata_export(struct strata *s, const char *key, int fd, enum strata_compress c,
		  struct strata_digests *out);
/* ref may be NULL (the only manifest) or an org.opencontainers.image.ref.name.
 * name may be NULL (the ref, else the top layer's chain id).  Fills top key into top. */
int strata_image_import(struct strata *s, const char *layout, const char *ref,
			const char *name, char *top, size_t toplen);

struct strata_squash_opts {
	const char *comp;       /* "lz4", "zstd", … or NULL for the writer's default */
	const char *output;     /* also copy the image here, or NULL */
	const struct strata_label *labels;
	size_t nlabels;
};
int strata_squash(struct strata *s, const char *key, const char *name,
		  const struct strata_squash_opts *o);

/* Integrity check: calls fn for every problem found; returns the number of problems. */
int strata_check(struct strata *s, void (*fn)(void *ctx, const char *problem), void *ctx);

void strata_snapshot_free(struct strata_snapshot *snap);
void strata_mount_spec_free(struct strata_mount_spec *m);
const char *strata_kind_name(enum strata_kind k);

#endif
