// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The command line runtimes send to fuse-overlayfs, understood the same way:
 *   stratafs [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT
 * A SOURCE before the mountpoint is what mount.fuse3 passes; it is ignored.  Options we do
 * not know are a warning, not a failure (runtimes pass things like lazytime); empty items
 * (",,") are skipped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <limits.h>

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include "stratafs.h"
#include "layer/layer_image.h"

static const char *sfs_usage =
"usage: stratafs [-f] [-d] -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPTS] MOUNTPOINT\n"
"       stratafs SOURCE MOUNTPOINT -o ...     (as mount.fuse3 calls it)\n"
"\n"
"A union filesystem in FUSE, a drop-in for fuse-overlayfs.  Layers are directories or\n"
"SquashFS images; the leftmost lowerdir is the top.  Without upperdir the mount is read-only.\n"
"\n"
"  -f                 stay in the foreground      -d  debug (implies -f)\n"
"  -h, --help         this text                   -V, --version\n"
"\n"
"Options (-o):\n"
"  lowerdir=A:B:...   lower layers, top first ('\\:' escapes a colon)\n"
"  upperdir=DIR       writable layer               workdir=DIR  scratch, same fs as upperdir\n"
"  uidmapping=D:M:N[:D:M:N...], gidmapping=...   id D+i on disk is M+i in the mount\n"
"  squash_to_root, squash_to_uid=N, squash_to_gid=N   show every file as owned by one id\n"
"  xattr_permissions=0|1|2   keep owner/mode in user.containers.override_stat (1) or\n"
"                     user.fuseoverlayfs.override_stat (2) instead of chown/chmod\n"
"  static_nlink       directories report nlink 1   noacl   no POSIX ACL support\n"
"  noxattrs=0|1|2     1: xattrs fail with ENOTSUP, 2: silently ignored\n"
"  volatile, fsync=0  fsync is a no-op              timeout=S  kernel cache timeout\n"
"  threaded=0|1       multi-threaded loop (default 1)  writeback=0|1  writeback cache\n"
"  max_threads=N, max_idle_threads=M   workers of that loop (default 64, 8 idle)\n"
"  ino32_t            32-bit inode numbers          xino=off|auto|on, redirect_dir=...\n"
"  passthrough=auto|on|off   kernel FUSE passthrough for directory layers\n"
"  passthrough_lower=0|1     lower files of a writable mount pass through too (1); with 0\n"
"                     a file open before its copy-up reads the copy, as on kernel overlayfs\n"
"  passthrough_cache=SIZE    lower files smaller than SIZE (default 1M) that are opened\n"
"                     again read from the page cache instead of passing through (0: never)\n"
"  image_cache=SIZE   decompressed block cache for image layers (e.g. 256M)\n"
"  dir_readahead=0|1  read the subdirectories a walk is about to enter ahead (1)\n"
"  context=..., and the usual mount options: allow_other, allow_root, default_permissions,\n"
"  ro, rw, suid, nosuid, dev, nodev, exec, noexec, atime, noatime, relatime, ...\n";

/* Options libfuse / the kernel take as they are. */
static const char *const sfs_fuse_opts[] = {
	"allow_other", "allow_root", "default_permissions", "ro", "rw", "suid", "nosuid",
	"dev", "nodev", "exec", "noexec", "atime", "noatime", "sync", "async", "dirsync",
	"auto_unmount", NULL
};
static const char *const sfs_fuse_prefix[] = { "fsname=", "subtype=", "max_read=", NULL };
/* Accepted for compatibility; nothing to do. */
static const char *const sfs_ignored[] = {
	"userxattr", "fast_ino", "debug", "splice_read", "splice_write", "splice_move",
	/* atime flavours libfuse does not pass on; the upper's own filesystem decides */
	"relatime", "norelatime", "strictatime", "nostrictatime", "diratime", "nodiratime",
	"blkdev", "lazytime", "nolazytime", NULL
};
static const char *const sfs_ignored_prefix[] = {
	"context=", "fscontext=", "defcontext=", "rootcontext=", "xino=",
	"metacopy=", "index=", "nfs_export=", "plugins=", "fast_ino=",
	"uid=", "gid=", NULL
};

static bool sfs_in(const char *const *list, const char *s)
{
	for (; *list; list++)
		if (strcmp(*list, s) == 0)
			return true;
	return false;
}

static bool sfs_prefixed(const char *const *list, const char *s)
{
	for (; *list; list++)
		if (strncmp(*list, s, strlen(*list)) == 0)
			return true;
	return false;
}

static int sfs_add_fuse_opt(struct sfs_config *c, const char *opt)
{
	size_t n = strlen(opt);
	char *p = realloc(c->fuse_opts, c->fuse_opts_len + n + 2);

	if (!p)
		return -ENOMEM;
	c->fuse_opts = p;
	if (c->fuse_opts_len)
		p[c->fuse_opts_len++] = ',';
	memcpy(p + c->fuse_opts_len, opt, n + 1);
	c->fuse_opts_len += n;
	return 0;
}

/* "a:b\:c:d" -> absolute paths, '\:' unescaped. */
static int sfs_parse_lowers(struct sfs_config *c, const char *val)
{
	char *buf = malloc(strlen(val) + 1), *w;
	const char *r;

	if (!buf)
		return -ENOMEM;
	for (r = val; ; ) {
		w = buf;
		while (*r && *r != ':') {
			if (r[0] == '\\' && r[1])
				r++;
			*w++ = *r++;
		}
		*w = 0;
		if (*buf) {
			char **nl = realloc(c->lowers, (c->nlowers + 1) * sizeof(*nl));

			if (!nl)
				return -ENOMEM;
			c->lowers = nl;
			c->lowers[c->nlowers++] = strdup(buf);
		}
		if (!*r)
			break;
		r++;
	}
	free(buf);
	return 0;
}

static int sfs_parse_idmap(const char *val, struct ovl_idmap **out, int *n, const char *what)
{
	char *s = strdup(val), *save = NULL, *tok;
	unsigned long v[3];
	int k = 0;

	if (!s)
		return -ENOMEM;
	for (tok = strtok_r(s, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
		char *end;

		v[k] = strtoul(tok, &end, 10);
		if (*end || end == tok) {
			fprintf(stderr, "stratafs: %s: '%s' is not a number\n", what, tok);
			free(s);
			return -EINVAL;
		}
		if (++k == 3) {
			struct ovl_idmap *m = realloc(*out, (*n + 1) * sizeof(*m));

			if (!m) {
				free(s);
				return -ENOMEM;
			}
			*out = m;
			/* fuse-overlayfs's reading: id v0+i on disk is v1+i in the mount */
			m[*n].outside = v[0];
			m[*n].inside = v[1];
			m[*n].count = v[2];
			(*n)++;
			k = 0;
		}
	}
	free(s);
	if (k || !*n) {
		fprintf(stderr, "stratafs: %s='%s': expected CONTAINER:HOST:COUNT triples\n",
			what, val);
		return -EINVAL;
	}
	return 0;
}

static int sfs_num(const char *key, const char *val, long min, long max, long *out)
{
	char *end;
	long v = strtol(val, &end, 10);

	if (*val == 0 || *end || v < min || v > max) {
		fprintf(stderr, "stratafs: option %s='%s': expected a number from %ld to %ld\n",
			key, val, min, max);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static char *sfs_abs(const char *p)
{
	char cwd[PATH_MAX], *r;

	if (p[0] == '/' || !getcwd(cwd, sizeof(cwd)))
		return strdup(p);
	if (asprintf(&r, "%s/%s", cwd, p) < 0)
		return NULL;
	return r;
}

static int sfs_one_opt(struct sfs_config *c, char *opt)
{
	char *val = strchr(opt, '=');
	long v;

	if (val)
		*val++ = 0;
#define KEY(k) (strcmp(opt, k) == 0)
	if (KEY("lowerdir") && val)
		return sfs_parse_lowers(c, val);
	if (KEY("upperdir") && val)
		return (c->upper = sfs_abs(val)) ? 0 : -ENOMEM;
	if (KEY("workdir") && val)
		return (c->work = sfs_abs(val)) ? 0 : -ENOMEM;
	if (KEY("uidmapping") && val)
		return sfs_parse_idmap(val, &c->o.uidmap, &c->o.nuidmap, "uidmapping");
	if (KEY("gidmapping") && val)
		return sfs_parse_idmap(val, &c->o.gidmap, &c->o.ngidmap, "gidmapping");
	if (KEY("squash_to_root") && !val) {
		c->o.squash_uid = c->o.squash_gid = 0;
		return 0;
	}
	if (KEY("squash_to_uid") && val)
		return sfs_num(opt, val, 0, 0xfffffffe, &c->o.squash_uid);
	if (KEY("squash_to_gid") && val)
		return sfs_num(opt, val, 0, 0xfffffffe, &c->o.squash_gid);
	if (KEY("static_nlink") && !val)
		return (c->o.static_nlink = true), 0;
	if (KEY("ino32_t") && !val)
		return (c->o.ino32 = true), 0;
	if (KEY("volatile") && !val)
		return (c->o.volatile_ = true), 0;
	if (KEY("noacl") && !val)
		return (c->noacl = true), 0;
	if (KEY("xattr_permissions") && val) {
		if (sfs_num(opt, val, 0, 2, &v))
			return -EINVAL;
		c->o.xattr_permissions = (int)v;
		return 0;
	}
	if (KEY("noxattrs") && val) {
		if (sfs_num(opt, val, 0, 2, &v))
			return -EINVAL;
		c->o.noxattrs = (int)v;
		return 0;
	}
	if (KEY("passthrough_lower") && !val)
		return (c->passthrough_lower = true), 0;
	if (KEY("dir_readahead") && !val)
		return (c->dir_readahead = true), 0;
	if ((KEY("fsync") || KEY("threaded") || KEY("writeback") || KEY("passthrough_lower") ||
	     KEY("dir_readahead")) && val) {
		if (sfs_num(opt, val, 0, 1, &v))
			return -EINVAL;
		if (KEY("fsync"))
			c->fsync = v;
		else if (KEY("threaded"))
			c->threaded = v;
		else if (KEY("writeback"))
			c->writeback = v;
		else if (KEY("dir_readahead"))
			c->dir_readahead = v;
		else
			c->passthrough_lower = v;
		return 0;
	}
	if (KEY("max_threads") && val)
		return sfs_num(opt, val, 1, 4096, &c->max_threads);
	if (KEY("max_idle_threads") && val)
		return sfs_num(opt, val, 1, 4096, &c->max_idle_threads);
	if (KEY("timeout") && val) {
		char *end;
		double t = strtod(val, &end);

		if (*end || t < 0) {
			fprintf(stderr, "stratafs: option timeout='%s': expected seconds\n", val);
			return -EINVAL;
		}
		c->o.timeout = t;
		return 0;
	}
	if (KEY("passthrough") && val) {
		if (!strcmp(val, "off"))
			c->passthrough = 0;
		else if (!strcmp(val, "auto"))
			c->passthrough = 1;
		else if (!strcmp(val, "on"))
			c->passthrough = 2;
		else {
			fprintf(stderr, "stratafs: option passthrough='%s': expected auto, on or off\n",
				val);
			return -EINVAL;
		}
		return 0;
	}
	if (KEY("redirect_dir") && val) {
		/* on/follow/nofollow/off: whether merged dirs may move; redirects already in
		 * the layers are always followed. */
		c->o.no_redirect = strcmp(val, "on") != 0 && strcmp(val, "follow") != 0;
		return 0;
	}
	if (KEY("passthrough_cache") && val) {
		size_t b = 0;

		if (strcmp(val, "0") && layer_parse_size(val, &b)) {
			fprintf(stderr, "stratafs: option passthrough_cache='%s': expected a size "
				"like 1M, or 0\n", val);
			return -EINVAL;
		}
		c->passthrough_cache = (long long)b;
		return 0;
	}
	if (KEY("image_cache") && val)
		return setenv("STRATA_IMAGE_CACHE", val, 1) < 0 ? -errno : 0;
	if (val)
		val[-1] = '=';
#undef KEY
	if (sfs_in(sfs_fuse_opts, opt) || sfs_prefixed(sfs_fuse_prefix, opt))
		return sfs_add_fuse_opt(c, opt);
	if (sfs_in(sfs_ignored, opt) || sfs_prefixed(sfs_ignored_prefix, opt))
		return 0;
	fprintf(stderr, "stratafs: warning: unknown option '%s' ignored\n", opt);
	return 0;
}

static int sfs_parse_optlist(struct sfs_config *c, const char *list)
{
	char *s = strdup(list), *r, *w, *start;
	int ret = 0;

	if (!s)
		return -ENOMEM;
	/* Split on commas not escaped with a backslash ("\," stays in the value). */
	for (r = w = start = s; ; r++) {
		if (*r == '\\' && r[1] == ',') {
			*w++ = *++r;
			continue;
		}
		if (*r == ',' || *r == 0) {
			bool end = *r == 0;

			*w = 0;
			if (*start)
				ret = sfs_one_opt(c, start);
			if (ret || end)
				break;
			start = w = r + 1;
			continue;
		}
		*w++ = *r;
	}
	free(s);
	return ret;
}

int sfs_parse_args(int argc, char **argv, struct sfs_config *c)
{
	char *pos[3];
	int npos = 0, i;

	memset(c, 0, sizeof(*c));
	c->threaded = true;
	c->max_threads = 64;
	c->max_idle_threads = 8;
	c->fsync = true;
	c->passthrough = 1;
	c->passthrough_lower = true;
	c->passthrough_cache = 1 << 20;
	c->dir_readahead = true;
	/* The default data path can come from the environment (a whole test suite, or a
	 * runtime that cannot pass options, with passthrough off); -o passthrough= wins. */
	if (getenv("STRATAFS_PASSTHROUGH")) {
		const char *e = getenv("STRATAFS_PASSTHROUGH");

		c->passthrough = !strcmp(e, "off") ? 0 : !strcmp(e, "on") ? 2 : 1;
	}
	c->o.squash_uid = c->o.squash_gid = -1;
	c->o.timeout = 86400;
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(sfs_usage, stdout);
			return 1;
		}
		if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("stratafs version %s (libfuse %d)\n", STRATA_VERSION, fuse_version());
			return 1;
		}
		if (!strcmp(a, "-f")) {
			c->foreground = true;
		} else if (!strcmp(a, "-d") || !strcmp(a, "--debug")) {
			c->foreground = c->debug = true;
		} else if (!strcmp(a, "-s")) {
			c->threaded = false;
		} else if (!strncmp(a, "-o", 2)) {
			const char *list = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);

			if (!list) {
				fprintf(stderr, "stratafs: -o needs an argument\n");
				return -1;
			}
			if (sfs_parse_optlist(c, list))
				return -1;
		} else if (a[0] == '-' && a[1]) {
			fprintf(stderr, "stratafs: warning: unknown flag '%s' ignored\n", a);
		} else if (npos < 3) {
			pos[npos++] = argv[i];
		} else {
			fprintf(stderr, "stratafs: too many arguments ('%s')\n", a);
			return -1;
		}
	}
	if (npos == 0) {
		fprintf(stderr, "stratafs: no mountpoint given\n%s", sfs_usage);
		return -1;
	}
	c->mountpoint = sfs_abs(pos[npos - 1]);
	if (!c->nlowers) {
		fprintf(stderr, "stratafs: no lowerdir given (-o lowerdir=DIR[:DIR...])\n");
		return -1;
	}
	if (c->work && !c->upper) {
		fprintf(stderr, "stratafs: workdir given without upperdir\n");
		return -1;
	}
	if (c->upper && !c->work) {
		fprintf(stderr, "stratafs: upperdir given without workdir\n");
		return -1;
	}
	for (i = 0; i < c->nlowers; i++) {
		char *a = sfs_abs(c->lowers[i]);

		free(c->lowers[i]);
		c->lowers[i] = a;
	}
	return 0;
}
