// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * strata: the storage driver's command line, a thin layer over libstrata-driver
 * (driver/strata.h).  Option parsing, output (human or --json) and exit codes only.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "strata.h"
#include "overlay/audit.h"

#define MAX_ARGS 16
#define MAX_LABELS 64

struct cli {
	const char *root;
	bool json, force, all;
	const char *parent, *digest, *diff_id, *output, *comp, *compress, *backend, *fail_on;
	struct strata_label labels[MAX_LABELS];
	size_t nlabels;
	const char *args[MAX_ARGS];
	int nargs;
	struct strata *s;
};

static void usage(FILE *f)
{
	fputs("usage: strata [--root DIR] [--json] COMMAND [ARGS]\n"
	      "  prepare KEY [PARENT] [--label K=V]...   writable snapshot; prints its mounts\n"
	      "  view KEY PARENT [--label K=V]...        read-only snapshot\n"
	      "  commit NAME KEY [--label K=V]...        freeze active KEY into layer NAME\n"
	      "  mounts KEY [--backend auto|fuse|kernel] the mount spec\n"
	      "  mount KEY TARGET [--backend B]          mount it\n"
	      "  umount TARGET\n"
	      "  rm KEY [--force]                        remove (--force unmounts first)\n"
	      "  ls | stat KEY | usage KEY\n"
	      "  label KEY NAME=VALUE|NAME=...           set (or with empty value remove)\n"
	      "  import NAME FILE [--parent P] [--digest sha256:…] [--diff-id sha256:…]\n"
	      "  export KEY [-o FILE] [--compress none|gzip|zstd]\n"
	      "  image import OCI-DIR[:REF] [NAME]\n"
	      "  squash KEY NAME [--comp lz4|zstd|gzip|xz|none] [--output FILE]\n"
	      "  check                                   verify the store's integrity\n"
	      "  audit KEY [--all] [--fail-on hidden-secret|any-secret|never]\n"
	      "                                          what the chain hides; secrets (exit 3)\n"
	      "See strata(1).\n", f);
}

static const char *errno_name(int e)
{
	switch (e) {
	case ENOENT: return "ENOENT";
	case EEXIST: return "EEXIST";
	case EINVAL: return "EINVAL";
	case EBUSY: return "EBUSY";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ENOSPC: return "ENOSPC";
	case EBADMSG: return "EBADMSG";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ENOSYS: return "ENOSYS";
	case EIO: return "EIO";
	case ENOTDIR: return "ENOTDIR";
	case ENAMETOOLONG: return "ENAMETOOLONG";
	default: return "EOTHER";
	}
}

static void print_json(json_object *o)
{
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
					    JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

static int fail(struct cli *c, int ret, const char *msg)
{
	int e = ret < 0 ? -ret : EIO;

	fprintf(stderr, "strata: %s\n", msg && *msg ? msg : strerror(e));
	if (c->json) {
		json_object *o = json_object_new_object(), *err = json_object_new_object();

		json_object_object_add(err, "message", json_object_new_string(msg && *msg ? msg
									    : strerror(e)));
		json_object_object_add(err, "code", json_object_new_string(errno_name(e)));
		json_object_object_add(err, "errno", json_object_new_int(e));
		json_object_object_add(o, "error", err);
		print_json(o);
	}
	return 1;
}

static int lib_fail(struct cli *c, int ret)
{
	return fail(c, ret, strata_errmsg(c->s));
}

static int usage_fail(struct cli *c, const char *msg)
{
	fail(c, -EINVAL, msg);
	usage(stderr);
	return 2;
}

static void on_warn(void *ctx, const char *msg)
{
	(void)ctx;
	fprintf(stderr, "strata: warning: %s\n", msg);
}

static int parse_label(struct cli *c, char *kv)
{
	char *eq = strchr(kv, '=');

	if (!eq || eq == kv || c->nlabels == MAX_LABELS)
		return -1;
	*eq = 0;
	c->labels[c->nlabels].name = kv;
	c->labels[c->nlabels].value = eq + 1;
	c->nlabels++;
	return 0;
}

/* Options may come anywhere; "--opt=value" or "--opt value". */
static int parse_args(struct cli *c, int argc, char **argv)
{
	static const struct { const char *name; size_t off; } valopts[] = {
		{ "--root", offsetof(struct cli, root) },
		{ "--parent", offsetof(struct cli, parent) },
		{ "--digest", offsetof(struct cli, digest) },
		{ "--diff-id", offsetof(struct cli, diff_id) },
		{ "--output", offsetof(struct cli, output) },
		{ "-o", offsetof(struct cli, output) },
		{ "--comp", offsetof(struct cli, comp) },
		{ "--compress", offsetof(struct cli, compress) },
		{ "--backend", offsetof(struct cli, backend) },
		{ "--fail-on", offsetof(struct cli, fail_on) },
		{ "--label", 0 },
	};
	bool opts = true;
	int i;
	size_t k;

	for (i = 1; i < argc; i++) {
		char *a = argv[i], *val = NULL;

		if (!opts || a[0] != '-' || !a[1]) {
			if (c->nargs == MAX_ARGS)
				return usage_fail(c, "too many arguments");
			c->args[c->nargs++] = a;
			continue;
		}
		if (!strcmp(a, "--")) {
			opts = false;
			continue;
		}
		if (!strcmp(a, "--json")) {
			c->json = true;
			continue;
		}
		if (!strcmp(a, "--force") || !strcmp(a, "-f")) {
			c->force = true;
			continue;
		}
		if (!strcmp(a, "--all")) {
			c->all = true;
			continue;
		}
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		}
		for (k = 0; k < sizeof(valopts) / sizeof(valopts[0]); k++) {
			size_t l = strlen(valopts[k].name);

			if (!strncmp(a, valopts[k].name, l) && (a[l] == 0 || a[l] == '='))
				break;
		}
		if (k == sizeof(valopts) / sizeof(valopts[0])) {
			char msg[256];

			snprintf(msg, sizeof(msg), "unknown option '%s'", a);
			return usage_fail(c, msg);
		}
		val = strchr(a, '=');
		if (val)
			val++;
		else if (i + 1 < argc)
			val = argv[++i];
		else
			return usage_fail(c, "option needs a value");
		if (!strcmp(valopts[k].name, "--label")) {
			if (parse_label(c, val))
				return usage_fail(c, "--label wants NAME=VALUE");
		} else {
			*(const char **)((char *)c + valopts[k].off) = val;
		}
	}
	return 0;
}

static json_object *spec_json(const struct strata_mount_spec *m)
{
	json_object *o = json_object_new_object(), *opts = json_object_new_array();
	size_t i;

	json_object_object_add(o, "type", json_object_new_string(m->type));
	json_object_object_add(o, "source", json_object_new_string(m->source));
	for (i = 0; i < m->noptions; i++)
		json_object_array_add(opts, json_object_new_string(m->options[i]));
	json_object_object_add(o, "options", opts);
	return o;
}

static void spec_print(const struct strata_mount_spec *m)
{
	size_t i;

	printf("mount -t %s %s", m->type, m->source);
	for (i = 0; i < m->noptions; i++)
		printf("%s%s", i ? "," : " -o ", m->options[i]);
	printf(" TARGET\n");
}

static int parse_backend(struct cli *c, enum strata_backend *b)
{
	if (!c->backend || !strcmp(c->backend, "auto"))
		*b = STRATA_BACKEND_AUTO;
	else if (!strcmp(c->backend, "fuse"))
		*b = STRATA_BACKEND_FUSE;
	else if (!strcmp(c->backend, "kernel"))
		*b = STRATA_BACKEND_KERNEL;
	else
		return -1;
	return 0;
}

static int need_args(struct cli *c, int min, int max)
{
	/* args[0] is the command */
	if (c->nargs - 1 < min || c->nargs - 1 > max)
		return -1;
	return 0;
}

static int show_mounts(struct cli *c, const char *key, bool wrap)
{
	struct strata_mount_spec m;
	enum strata_backend b;
	int ret;

	if (parse_backend(c, &b))
		return usage_fail(c, "--backend is auto, fuse or kernel");
	ret = strata_mounts(c->s, key, b, &m);
	if (ret)
		return lib_fail(c, ret);
	if (c->json) {
		json_object *arr = json_object_new_array();

		json_object_array_add(arr, spec_json(&m));
		if (wrap) {
			json_object *o = json_object_new_object();

			json_object_object_add(o, "key", json_object_new_string(key));
			json_object_object_add(o, "mounts", arr);
			print_json(o);
		} else {
			print_json(arr);
		}
	} else {
		spec_print(&m);
	}
	strata_mount_spec_free(&m);
	return 0;
}

static int cmd_prepare(struct cli *c, bool view)
{
	const char *parent;
	int ret;

	if (view ? need_args(c, 2, 2) : need_args(c, 1, 2))
		return usage_fail(c, view ? "usage: view KEY PARENT" : "usage: prepare KEY [PARENT]");
	parent = c->nargs > 2 ? c->args[2] : c->parent;
	ret = view ? strata_view(c->s, c->args[1], parent, c->labels, c->nlabels)
		   : strata_prepare(c->s, c->args[1], parent, c->labels, c->nlabels);
	if (ret)
		return lib_fail(c, ret);
	return show_mounts(c, c->args[1], true);
}

static json_object *snap_json(const struct strata_snapshot *sn, const struct strata_usage *u)
{
	json_object *o = json_object_new_object(), *l = json_object_new_object();
	json_object *m = json_object_new_array();
	size_t i;

	json_object_object_add(o, "key", json_object_new_string(sn->key));
	json_object_object_add(o, "parent", sn->parent ? json_object_new_string(sn->parent)
						       : NULL);
	json_object_object_add(o, "kind", json_object_new_string(strata_kind_name(sn->kind)));
	json_object_object_add(o, "storage", json_object_new_string(sn->image ? "image" : "dir"));
	json_object_object_add(o, "created", json_object_new_int64(sn->created));
	json_object_object_add(o, "diff_id", sn->diff_id ? json_object_new_string(sn->diff_id)
							 : NULL);
	json_object_object_add(o, "chain_id", sn->chain_id ?
			       json_object_new_string(sn->chain_id) : NULL);
	json_object_object_add(o, "path", json_object_new_string(sn->path));
	for (i = 0; i < sn->nlabels; i++)
		json_object_object_add(l, sn->labels[i].name,
				       json_object_new_string(sn->labels[i].value));
	json_object_object_add(o, "labels", l);
	for (i = 0; i < sn->nmounts; i++)
		json_object_array_add(m, json_object_new_string(sn->mounts[i]));
	json_object_object_add(o, "mounts", m);
	if (u) {
		json_object_object_add(o, "size", json_object_new_int64((int64_t)u->bytes));
		json_object_object_add(o, "inodes", json_object_new_int64((int64_t)u->inodes));
	}
	return o;
}

struct ls_ctx {
	struct cli *c;
	json_object *arr;
};

static int ls_one(const struct strata_snapshot *sn, void *ctx)
{
	struct ls_ctx *lc = ctx;
	struct strata_usage u = { 0 };
	size_t i;

	strata_usage(lc->c->s, sn->key, &u);
	if (lc->arr) {
		json_object_array_add(lc->arr, snap_json(sn, &u));
		return 0;
	}
	printf("%-30s %-10s %-30s %10llu", sn->key, strata_kind_name(sn->kind),
	       sn->parent ? sn->parent : "-", (unsigned long long)u.bytes);
	for (i = 0; i < sn->nlabels; i++)
		printf("%s%s=%s", i ? "," : " ", sn->labels[i].name, sn->labels[i].value);
	for (i = 0; i < sn->nmounts; i++)
		printf(" [mounted at %s]", sn->mounts[i]);
	printf("\n");
	return 0;
}

static int cmd_ls(struct cli *c)
{
	struct ls_ctx lc = { c, c->json ? json_object_new_array() : NULL };
	int ret;

	if (need_args(c, 0, 0))
		return usage_fail(c, "usage: ls");
	if (!c->json)
		printf("%-30s %-10s %-30s %10s LABELS\n", "KEY", "KIND", "PARENT", "SIZE");
	ret = strata_walk(c->s, ls_one, &lc);
	if (ret) {
		json_object_put(lc.arr);
		return lib_fail(c, ret);
	}
	if (lc.arr)
		print_json(lc.arr);
	return 0;
}

static int print_stat(struct cli *c, const char *key)
{
	struct strata_snapshot sn;
	struct strata_usage u;
	int ret;
	size_t i;

	ret = strata_stat(c->s, key, &sn);
	if (!ret)
		ret = strata_usage(c->s, key, &u);
	if (ret) {
		strata_snapshot_free(&sn);
		return lib_fail(c, ret);
	}
	if (c->json) {
		print_json(snap_json(&sn, &u));
	} else {
		printf("key:      %s\nkind:     %s\nparent:   %s\nstorage:  %s\npath:     %s\n"
		       "size:     %llu bytes, %llu inodes\n", sn.key, strata_kind_name(sn.kind),
		       sn.parent ? sn.parent : "-", sn.image ? "image" : "dir", sn.path,
		       (unsigned long long)u.bytes, (unsigned long long)u.inodes);
		if (sn.diff_id)
			printf("diff_id:  %s\n", sn.diff_id);
		if (sn.chain_id)
			printf("chain_id: %s\n", sn.chain_id);
		for (i = 0; i < sn.nlabels; i++)
			printf("label:    %s=%s\n", sn.labels[i].name, sn.labels[i].value);
		for (i = 0; i < sn.nmounts; i++)
			printf("mounted:  %s\n", sn.mounts[i]);
	}
	strata_snapshot_free(&sn);
	return 0;
}

static int cmd_usage(struct cli *c)
{
	struct strata_usage u;
	int ret;

	if (need_args(c, 1, 1))
		return usage_fail(c, "usage: usage KEY");
	ret = strata_usage(c->s, c->args[1], &u);
	if (ret)
		return lib_fail(c, ret);
	if (c->json) {
		json_object *o = json_object_new_object();

		json_object_object_add(o, "key", json_object_new_string(c->args[1]));
		json_object_object_add(o, "size", json_object_new_int64((int64_t)u.bytes));
		json_object_object_add(o, "inodes", json_object_new_int64((int64_t)u.inodes));
		print_json(o);
	} else {
		printf("%llu bytes, %llu inodes\n", (unsigned long long)u.bytes,
		       (unsigned long long)u.inodes);
	}
	return 0;
}

static int ok_json(struct cli *c, json_object *o)
{
	if (c->json)
		print_json(o);
	else
		json_object_put(o);
	return 0;
}

static int cmd_commit(struct cli *c)
{
	json_object *o;
	int ret;

	if (need_args(c, 2, 2))
		return usage_fail(c, "usage: commit NAME KEY");
	ret = strata_commit(c->s, c->args[1], c->args[2], c->labels, c->nlabels);
	if (ret)
		return lib_fail(c, ret);
	o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(c->args[1]));
	json_object_object_add(o, "key", json_object_new_string(c->args[2]));
	if (!c->json)
		printf("committed %s as %s\n", c->args[2], c->args[1]);
	return ok_json(c, o);
}

static int cmd_mount(struct cli *c)
{
	enum strata_backend b;
	json_object *o;
	int ret;

	if (need_args(c, 2, 2))
		return usage_fail(c, "usage: mount KEY TARGET");
	if (parse_backend(c, &b))
		return usage_fail(c, "--backend is auto, fuse or kernel");
	ret = strata_mount(c->s, c->args[1], c->args[2], b);
	if (ret)
		return lib_fail(c, ret);
	o = json_object_new_object();
	json_object_object_add(o, "key", json_object_new_string(c->args[1]));
	json_object_object_add(o, "target", json_object_new_string(c->args[2]));
	return ok_json(c, o);
}

static int cmd_umount(struct cli *c)
{
	json_object *o;
	int ret;

	if (need_args(c, 1, 1))
		return usage_fail(c, "usage: umount TARGET");
	ret = strata_umount(c->s, c->args[1]);
	if (ret)
		return lib_fail(c, ret);
	o = json_object_new_object();
	json_object_object_add(o, "target", json_object_new_string(c->args[1]));
	return ok_json(c, o);
}

static int cmd_rm(struct cli *c)
{
	json_object *o;
	int ret;

	if (need_args(c, 1, 1))
		return usage_fail(c, "usage: rm KEY");
	ret = strata_remove(c->s, c->args[1], c->force);
	if (ret)
		return lib_fail(c, ret);
	o = json_object_new_object();
	json_object_object_add(o, "removed", json_object_new_string(c->args[1]));
	return ok_json(c, o);
}

static int cmd_label(struct cli *c)
{
	int i, ret;

	if (c->nargs < 3)
		return usage_fail(c, "usage: label KEY NAME=VALUE...");
	for (i = 2; i < c->nargs; i++) {
		char kv[4096], *eq;

		snprintf(kv, sizeof(kv), "%s", c->args[i]);
		eq = strchr(kv, '=');
		if (!eq || eq == kv)
			return usage_fail(c, "labels are NAME=VALUE (empty VALUE removes)");
		*eq = 0;
		ret = strata_label(c->s, c->args[1], kv, eq[1] ? eq + 1 : NULL);
		if (ret)
			return lib_fail(c, ret);
	}
	return print_stat(c, c->args[1]);
}

static int cmd_import(struct cli *c)
{
	struct strata_import_opts o = {
		.parent = c->parent, .digest = c->digest, .diff_id = c->diff_id,
		.labels = c->labels, .nlabels = c->nlabels,
	};
	struct strata_digests d;
	json_object *j;
	int ret;

	if (need_args(c, 2, 2))
		return usage_fail(c, "usage: import NAME LAYER.tar [--parent P] [--digest D]");
	ret = strata_import(c->s, c->args[1], c->args[2], &o, &d);
	if (ret)
		return lib_fail(c, ret);
	if (!c->json) {
		printf("imported %s\ndigest:  %s\ndiff_id: %s\n", c->args[1], d.digest, d.diff_id);
		return 0;
	}
	j = json_object_new_object();
	json_object_object_add(j, "name", json_object_new_string(c->args[1]));
	json_object_object_add(j, "parent", c->parent ? json_object_new_string(c->parent) : NULL);
	json_object_object_add(j, "digest", json_object_new_string(d.digest));
	json_object_object_add(j, "diff_id", json_object_new_string(d.diff_id));
	return ok_json(c, j);
}

static const char *media_type(enum strata_compress z)
{
	return z == STRATA_COMPRESS_GZIP ? "application/vnd.oci.image.layer.v1.tar+gzip" :
	       z == STRATA_COMPRESS_ZSTD ? "application/vnd.oci.image.layer.v1.tar+zstd" :
					   "application/vnd.oci.image.layer.v1.tar";
}

/* Into a temp file next to FILE, renamed over it only when complete. */
static int cmd_export(struct cli *c)
{
	enum strata_compress z = STRATA_COMPRESS_NONE;
	char tmp[4096] = "";
	struct strata_digests d;
	json_object *j;
	int fd = 1, ret;

	if (need_args(c, 1, 1))
		return usage_fail(c, "usage: export KEY [-o FILE] [--compress none|gzip|zstd]");
	if (c->compress && !strcmp(c->compress, "gzip"))
		z = STRATA_COMPRESS_GZIP;
	else if (c->compress && !strcmp(c->compress, "zstd"))
		z = STRATA_COMPRESS_ZSTD;
	else if (c->compress && strcmp(c->compress, "none"))
		return usage_fail(c, "--compress is none, gzip or zstd");
	if (c->output && strcmp(c->output, "-")) {
		snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", c->output);
		fd = mkostemp(tmp, O_CLOEXEC);
		if (fd < 0) {
			char msg[4200];

			snprintf(msg, sizeof(msg), "%s: %s", c->output, strerror(errno));
			return fail(c, -errno, msg);
		}
		fchmod(fd, 0644);
	} else if (isatty(1)) {
		return usage_fail(c, "refusing to write a tar to a terminal: use -o FILE");
	}
	ret = strata_export(c->s, c->args[1], fd, z, &d);
	if (!ret && tmp[0] && (fsync(fd) || rename(tmp, c->output)))
		ret = -errno;
	if (tmp[0]) {
		close(fd);
		if (ret)
			unlink(tmp);
	}
	if (ret)
		return strata_errmsg(c->s)[0] ? lib_fail(c, ret) : fail(c, ret, NULL);
	j = json_object_new_object();
	json_object_object_add(j, "key", json_object_new_string(c->args[1]));
	json_object_object_add(j, "output", json_object_new_string(tmp[0] ? c->output : "-"));
	json_object_object_add(j, "mediaType", json_object_new_string(media_type(z)));
	json_object_object_add(j, "digest", json_object_new_string(d.digest));
	json_object_object_add(j, "diff_id", json_object_new_string(d.diff_id));
	json_object_object_add(j, "size", json_object_new_int64((int64_t)d.size));
	/* with the tar on stdout, the digests go to stderr */
	if (c->json && tmp[0]) {
		print_json(j);
	} else {
		FILE *f = tmp[0] ? stdout : stderr;

		if (c->json)
			fprintf(f, "%s\n", json_object_to_json_string_ext(j,
				JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
		else
			fprintf(f, "digest:  %s\ndiff_id: %s\nsize:    %llu\n", d.digest,
				d.diff_id, (unsigned long long)d.size);
		json_object_put(j);
	}
	return 0;
}

static int cmd_image(struct cli *c)
{
	char dir[4096], *colon, top[512] = "";
	const char *ref = NULL;
	struct stat st;
	json_object *j;
	int ret;

	if (c->nargs < 2 || strcmp(c->args[1], "import") || c->nargs > 4)
		return usage_fail(c, "usage: image import OCI-DIR[:REF] [NAME]");
	if (c->nargs < 3)
		return usage_fail(c, "usage: image import OCI-DIR[:REF] [NAME]");
	snprintf(dir, sizeof(dir), "%s", c->args[2]);
	colon = strrchr(dir, ':');
	if (colon && stat(dir, &st)) {
		*colon = 0;
		ref = colon + 1;
	}
	ret = strata_image_import(c->s, dir, ref, c->nargs > 3 ? c->args[3] : NULL, top,
				  sizeof(top));
	if (ret)
		return lib_fail(c, ret);
	if (!c->json) {
		printf("%s\n", top);
		return 0;
	}
	j = json_object_new_object();
	json_object_object_add(j, "name", json_object_new_string(top));
	return ok_json(c, j);
}

static int cmd_squash(struct cli *c)
{
	struct strata_squash_opts o = {
		.comp = c->comp, .output = c->output, .labels = c->labels, .nlabels = c->nlabels,
	};
	json_object *j;
	int ret;

	if (need_args(c, 2, 2))
		return usage_fail(c, "usage: squash KEY NAME [--comp C] [--output FILE]");
	ret = strata_squash(c->s, c->args[1], c->args[2], &o);
	if (ret)
		return lib_fail(c, ret);
	j = json_object_new_object();
	json_object_object_add(j, "name", json_object_new_string(c->args[2]));
	json_object_object_add(j, "from", json_object_new_string(c->args[1]));
	if (c->output)
		json_object_object_add(j, "output", json_object_new_string(c->output));
	if (!c->json)
		printf("squashed %s into %s\n", c->args[1], c->args[2]);
	return ok_json(c, j);
}

static void check_one(void *ctx, const char *p)
{
	json_object *arr = ctx;

	if (arr)
		json_object_array_add(arr, json_object_new_string(p));
	else
		printf("%s\n", p);
}

static int cmd_check(struct cli *c)
{
	json_object *arr = c->json ? json_object_new_array() : NULL;
	int n;

	n = strata_check(c->s, check_one, arr);
	if (n < 0) {
		json_object_put(arr);
		return lib_fail(c, n);
	}
	if (arr) {
		json_object *o = json_object_new_object();

		json_object_object_add(o, "ok", json_object_new_boolean(n == 0));
		json_object_object_add(o, "problems", arr);
		print_json(o);
	} else if (!n) {
		printf("ok\n");
	}
	return n ? 1 : 0;
}

/* The layer paths of KEY's chain, top first (what `strata mounts` stacks). */
static int chain_paths(struct cli *c, const char *key, char ***paths, int *n)
{
	char *cur = strdup(key), **v = NULL;
	int ret = 0;

	*n = 0;
	while (cur && !ret) {
		struct strata_snapshot snap;
		char **nv = realloc(v, (*n + 1) * sizeof(*v));

		if (!nv) {
			ret = -ENOMEM;
			break;
		}
		v = nv;
		ret = strata_stat(c->s, cur, &snap);
		free(cur);
		cur = NULL;
		if (ret)
			break;
		v[*n] = strdup(snap.path);
		if (v[*n])
			(*n)++;
		else
			ret = -ENOMEM;
		if (snap.parent && !ret && !(cur = strdup(snap.parent)))
			ret = -ENOMEM;
		strata_snapshot_free(&snap);
	}
	free(cur);
	*paths = v;
	return ret;
}

static int cmd_audit(struct cli *c)
{
	struct audit_opts o = { .scan_hidden = true, .scan_visible = c->all };
	enum audit_fail_on fail_on = AUDIT_FAIL_HIDDEN_SECRET;
	struct audit_result r;
	char **paths = NULL, err[1024], *js;
	int n = 0, ret;

	if (need_args(c, 1, 1))
		return usage_fail(c, "usage: audit KEY [--all] [--fail-on WHAT]");
	if (c->fail_on && audit_parse_fail_on(c->fail_on, &fail_on))
		return usage_fail(c, "--fail-on is hidden-secret, any-secret or never");
	if (fail_on == AUDIT_FAIL_ANY_SECRET)
		o.scan_visible = true;
	ret = chain_paths(c, c->args[1], &paths, &n);
	if (ret == -ENOMEM)
		ret = fail(c, ret, "out of memory");
	else if (ret)
		ret = lib_fail(c, ret);
	else if ((ret = audit_paths((const char *const *)paths, n, &o, &r, err, sizeof(err))))
		ret = fail(c, ret, err);
	for (int i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
	if (ret)
		return ret;
	if (c->json) {
		js = audit_json(&r);
		if (!js) {
			audit_result_free(&r);
			return fail(c, -ENOMEM, "out of memory");
		}
		puts(js);
		free(js);
	} else {
		audit_print(stdout, &r, 20, "strata squash");
	}
	ret = audit_exit_code(&r, fail_on);
	audit_result_free(&r);
	return ret;
}

static int run(struct cli *c)
{
	const char *cmd = c->args[0];

	if (!strcmp(cmd, "prepare"))
		return cmd_prepare(c, false);
	if (!strcmp(cmd, "view"))
		return cmd_prepare(c, true);
	if (!strcmp(cmd, "commit"))
		return cmd_commit(c);
	if (!strcmp(cmd, "mounts"))
		return need_args(c, 1, 1) ? usage_fail(c, "usage: mounts KEY")
					  : show_mounts(c, c->args[1], false);
	if (!strcmp(cmd, "mount"))
		return cmd_mount(c);
	if (!strcmp(cmd, "umount") || !strcmp(cmd, "unmount"))
		return cmd_umount(c);
	if (!strcmp(cmd, "rm") || !strcmp(cmd, "remove"))
		return cmd_rm(c);
	if (!strcmp(cmd, "ls") || !strcmp(cmd, "list"))
		return cmd_ls(c);
	if (!strcmp(cmd, "stat"))
		return need_args(c, 1, 1) ? usage_fail(c, "usage: stat KEY")
					  : print_stat(c, c->args[1]);
	if (!strcmp(cmd, "usage"))
		return cmd_usage(c);
	if (!strcmp(cmd, "label"))
		return cmd_label(c);
	if (!strcmp(cmd, "import"))
		return cmd_import(c);
	if (!strcmp(cmd, "export"))
		return cmd_export(c);
	if (!strcmp(cmd, "image"))
		return cmd_image(c);
	if (!strcmp(cmd, "squash"))
		return cmd_squash(c);
	if (!strcmp(cmd, "check") || !strcmp(cmd, "fsck"))
		return cmd_check(c);
	if (!strcmp(cmd, "audit"))
		return cmd_audit(c);
	return usage_fail(c, "unknown command");
}

int main(int argc, char **argv)
{
	struct cli c = { 0 };
	char err[2048];
	int ret;

	ret = parse_args(&c, argc, argv);
	if (ret)
		return ret;
	if (!c.nargs) {
		usage(stderr);
		return 2;
	}
	ret = strata_open(c.root, &c.s, err, sizeof(err));
	if (ret)
		return fail(&c, ret, err);
	strata_set_warn(c.s, on_warn, NULL);
	ret = run(&c);
	strata_close(c.s);
	return ret;
}
