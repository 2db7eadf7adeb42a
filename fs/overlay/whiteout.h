/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Every whiteout and opaque convention strata reads or writes, in one place.
 * Used by the union (fs/overlay), mkimage's flatten, the audit, and OCI import/export.
 *
 * Read:  char device 0/0; a file ".wh.NAME" (OCI); ".wh..wh..opq" in a directory (OCI opaque);
 *        xattrs trusted.overlay.opaque / user.overlay.opaque = "y" (kernel overlayfs).
 * Write: what the kernel writes: char 0/0 when mknod works, else ".wh.NAME"; opaque as
 *        trusted.overlay.opaque when privileged, user.overlay.opaque otherwise.
 */
#ifndef STRATA_WHITEOUT_H
#define STRATA_WHITEOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

#define WH_PREFIX        ".wh."
#define WH_PREFIX_LEN    4
#define WH_OPQ_NAME      ".wh..wh..opq"
#define WH_META_PREFIX   ".wh..wh."   /* AUFS-era metadata names: never shown */

#define OVL_XATTR_TRUSTED "trusted.overlay."
#define OVL_XATTR_USER    "user.overlay."

struct layer;
struct lnode;

/* A char device 0/0: the kernel's whiteout. */
bool wh_is_chardev_whiteout(const struct stat *st);
/* The name is reserved by the whiteout conventions (".wh." prefix): never listed. */
bool wh_is_reserved_name(const char *name);
/* ".wh..wh..opq" */
bool wh_is_opq_marker(const char *name);
/* For ".wh.NAME" (not a ".wh..wh." meta name) the hidden NAME; else NULL. */
const char *wh_hidden_name(const char *name);

/* Overlay-private xattrs (trusted.overlay.*, user.overlay.*, and the stat-override xattrs
 * used with xattr_permissions) are never shown in the merged view, copied up, or written
 * into images. */
bool wh_xattr_is_private(const char *name);

/* Value of an opaque xattr means "opaque" ("y"; the kernel also writes "x" for
 * "opaque and whiteouts present" on 6.7+, which is opaque too). */
bool wh_opaque_value(const char *val, size_t len);

/* Through the layer interface: is this directory opaque (xattr or ".wh..wh..opq")? */
bool wh_layer_dir_is_opaque(struct layer *l, const struct lnode *dir);
/* Both overlay marks of a directory in one pass (one listxattr where a directory has no
 * overlay xattrs at all): opaque, and the raw redirect value if any (NUL-terminated,
 * empty when none). */
void wh_layer_dir_marks(struct layer *l, const struct lnode *dir, bool *opaque,
			char *redirect, size_t rsize);
/* Through the layer interface: does dir/name carry a whiteout (char 0/0 or .wh.name)? */
bool wh_layer_is_whited_out(struct layer *l, const struct lnode *dir, const char *name);

/* Writing, on a host directory fd. `priv` = may use trusted.* xattrs / mknod.
 * wh_create: a whiteout for `name` in dirfd (char 0/0, falling back to .wh.NAME). */
int wh_create(int dirfd, const char *name, bool priv);
/* The same, as a hard link to one shared whiteout kept in workdir (`workfd`), as the kernel
 * does since 5.8: a link costs far less than a new inode.  With `oci_fallback` false it
 * never falls back to ".wh.NAME" (the caller needs a real char 0/0 to rename). */
#define WH_SHARED_NAME "#whiteout"
int wh_create_shared(int workfd, int dirfd, const char *name, bool priv, bool oci_fallback);
/* Remove whatever whiteout for `name` exists in dirfd (char 0/0 at name, or .wh.NAME). */
int wh_remove(int dirfd, const char *name);
/* Mark the directory fd opaque (xattr; .wh..wh..opq file as last resort). */
int wh_set_opaque(int dirfd, bool priv);

#endif
