/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * One read-only (or, for the upper, writable) layer of a union, behind one interface.
 *
 * Backends: a host directory (layer_dir.c, *at() calls below an O_PATH root fd) and a
 * SquashFS image (layer_image.c, the reader in fs/squashfs/).  The overlay never asks which
 * kind it has.  Entries are named by a `struct lnode`: the path relative to the layer root
 * ("" is the root, no leading slash) plus an opaque `ref` the backend filled in at lookup
 * time.  The directory backend works from the path, the image backend from the ref (its
 * inode reference), so neither has to re-walk what the other keeps.
 *
 * A layer's root is { "", 0 }: a backend treats the path "" as its root whatever the ref.
 *
 * Every function returns 0 (or a byte count) on success and a negative errno on failure.
 */
#ifndef STRATA_LAYER_H
#define STRATA_LAYER_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

struct layer;
struct layer_file;

struct lnode {
	const char *path;   /* relative to the layer root; "" for the root */
	uint64_t ref;       /* backend-private handle from lookup (image: inode ref) */
};

/* readdir callback: return non-zero to stop the walk (that value is returned). */
typedef int (*layer_filldir_t)(void *ctx, const char *name, unsigned char d_type,
			       uint64_t ino);

struct layer_operations {
	/* Child `name` of directory `dir`: fills child->ref and *st (lstat semantics). */
	int (*lookup)(struct layer *l, const struct lnode *dir, const char *name,
		      struct lnode *child, struct stat *st);
	int (*getattr)(struct layer *l, const struct lnode *n, struct stat *st);
	/* Every entry of a directory except "." and "..", in the backend's order. */
	int (*readdir)(struct layer *l, const struct lnode *dir, layer_filldir_t fill, void *ctx);
	int (*readlink)(struct layer *l, const struct lnode *n, char *buf, size_t size);
	/* getxattr/listxattr: size 0 asks for the needed size, like the syscalls. */
	ssize_t (*getxattr)(struct layer *l, const struct lnode *n, const char *name,
			    void *buf, size_t size);
	ssize_t (*listxattr)(struct layer *l, const struct lnode *n, char *buf, size_t size);
	int (*open)(struct layer *l, const struct lnode *n, int flags, struct layer_file **f);
	ssize_t (*read)(struct layer_file *f, void *buf, size_t size, off_t off);
	/* A host fd for the open file (splice, copy_file_range, FICLONE, passthrough), or -1. */
	int (*host_fd)(struct layer_file *f);
	void (*close)(struct layer_file *f);
	int (*statfs)(struct layer *l, struct statvfs *st);
	void (*destroy)(struct layer *l);
};

struct layer {
	const struct layer_operations *ops;
	char *spec;          /* the path the user gave, for messages */
	int index;           /* 0 = upper (if any) / top; grows downwards */
	int root_fd;         /* O_PATH fd of a directory layer's root; -1 for images */
	dev_t dev;           /* st_dev of the backing store */
	void *priv;          /* backend state */
};

/* Open `path` as a layer: a directory, or a file that starts with the SquashFS magic.
 * On error returns NULL and writes a message naming `path` into err[errlen]. */
struct layer *layer_open(const char *path, int index, char *err, size_t errlen);
struct layer *layer_dir_open(const char *path, int index, char *err, size_t errlen);
struct layer *layer_image_open(const char *path, int index, char *err, size_t errlen);
void layer_close(struct layer *l);

/* Many lookups in one directory of a directory layer: an O_PATH fd of directory `path`
 * (-ENOTSUP for other layers: use ops->lookup), then lookups relative to it, which skip
 * walking the path from the layer root each time.  The caller closes the fd. */
int layer_dir_fd(struct layer *l, const char *path);
int layer_lookup_at(int dfd, const char *name, struct lnode *child, struct stat *st);

/* Non-zero when the file at path starts with the SquashFS 4.0 magic "hsqs". */
int layer_path_is_image(const char *path);

#endif
