// SPDX-License-Identifier: GPL-2.0-or-later
/* mkimage squash: option parsing, progress and the summary; the work is in the library. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "squashfs/writer.h"
#include "mkimage.h"

enum {
	OPT_COMP = 256, OPT_LEVEL, OPT_BLOCK, OPT_MTIME, OPT_FUID, OPT_FGID, OPT_ALLROOT,
	OPT_NOXATTR, OPT_NODEDUP, OPT_PROGRESS, OPT_NOPROGRESS,
};

static const struct option longopts[] = {
	{ "output",      required_argument, 0, 'o' },
	{ "comp",        required_argument, 0, OPT_COMP },
	{ "level",       required_argument, 0, OPT_LEVEL },
	{ "block-size",  required_argument, 0, OPT_BLOCK },
	{ "threads",     required_argument, 0, 'j' },
	{ "mtime",       required_argument, 0, OPT_MTIME },
	{ "force-uid",   required_argument, 0, OPT_FUID },
	{ "force-gid",   required_argument, 0, OPT_FGID },
	{ "all-root",    no_argument,       0, OPT_ALLROOT },
	{ "exclude",     required_argument, 0, 'e' },
	{ "no-xattrs",   no_argument,       0, OPT_NOXATTR },
	{ "no-dedup",    no_argument,       0, OPT_NODEDUP },
	{ "progress",    no_argument,       0, OPT_PROGRESS },
	{ "no-progress", no_argument,       0, OPT_NOPROGRESS },
	{ "quiet",       no_argument,       0, 'q' },
	{ "help",        no_argument,       0, 'h' },
	{ 0, 0, 0, 0 }
};

static void squash_usage(FILE *f)
{
	fprintf(f,
		"usage: mkimage squash [options] -o OUT.sqfs LAYER [LAYER...]\n"
		"  -o, --output OUT      image to write (replaced atomically)\n"
		"      --comp NAME       lz4 (default), lz4hc, zstd, gzip, xz, none\n"
		"      --level N         compression level (default: per compressor)\n"
		"      --block-size SIZE 4K..1M, a power of two (default 128K)\n"
		"  -j, --threads N       compressor threads (default: number of CPUs)\n"
		"      --mtime EPOCH     every timestamp (default: $SOURCE_DATE_EPOCH if set)\n"
		"      --force-uid ID    --force-gid ID    --all-root\n"
		"  -e, --exclude PATTERN leave out matching paths (repeatable)\n"
		"      --no-xattrs       --no-dedup        -q, --quiet\n");
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || v > max || *s == '-')
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_size(const char *s, uint32_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	if (!strcasecmp(end, "k") || !strcasecmp(end, "kib") || !strcasecmp(end, "kb"))
		v <<= 10;
	else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib") || !strcasecmp(end, "mb"))
		v <<= 20;
	else if (*end)
		return -EINVAL;
	if (v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static int parse_id(const char *s, bool user, int64_t *out)
{
	uint64_t v;

	if (!parse_u64(s, UINT32_MAX - 1, &v)) {
		*out = (int64_t)v;
		return 0;
	}
	if (user) {
		struct passwd *pw = getpwnam(s);
		if (pw) {
			*out = pw->pw_uid;
			return 0;
		}
	} else {
		struct group *gr = getgrnam(s);
		if (gr) {
			*out = gr->gr_gid;
			return 0;
		}
	}
	return -EINVAL;
}

/* ---- progress ------------------------------------------------------------------- */

static void fmt_eta(double s, char *buf, size_t size)
{
	if (s < 0 || s > 359999)
		snprintf(buf, size, "--:--");
	else
		snprintf(buf, size, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
}

static void progress(void *ctx, const struct sqfs_squash_stats *st, int final)
{
	char a[32], b[32], r[32], eta[32], bar[31];
	double done = (double)__atomic_load_n(&st->bytes_in, __ATOMIC_RELAXED);
	double total = (double)__atomic_load_n(&st->total_bytes, __ATOMIC_RELAXED);
	unsigned long long files = __atomic_load_n(&st->files, __ATOMIC_RELAXED);
	int walking = __atomic_load_n(&st->walking, __ATOMIC_RELAXED);
	double frac = walking ? 0 : total > 0 ? done / total : 1;
	double rate = st->seconds > 0 ? done / st->seconds : 0;
	int w = (int)(frac * 30);

	(void)ctx;
	if (final) {
		printf("\r\033[K");
		fflush(stdout);
		return;
	}
	for (int i = 0; i < 30; i++)
		bar[i] = i < w ? '#' : '.';
	bar[30] = 0;
	if (walking)
		snprintf(eta, sizeof(eta), "-- (still scanning)");   /* the totals are still growing */
	else
		fmt_eta(rate > 0 ? (total - done) / rate : -1, eta, sizeof(eta));
	printf("\r\033[K[%s] %3d%% %llu/%llu files %s/%s %s/s ETA %s", bar, (int)(frac * 100),
	       (unsigned long long)st->files_done, files,
	       mk_human(done, a, sizeof(a)), mk_human(total, b, sizeof(b)),
	       mk_human(rate, r, sizeof(r)), eta);
	fflush(stdout);
}

static void summary(const char *out, const struct sqfs_squash_stats *st)
{
	char a[32], b[32], d[32], h[32], hidden[96] = "";
	double in = (double)st->total_bytes;

	/* What the stack hides and the image therefore leaves out, counted by the walk the
	 * way `mkimage audit` counts it; unknown when a hidden entry could not be read. */
	if (st->hidden_known)
		snprintf(hidden, sizeof(hidden), "%s hidden left out (%llu files), ",
			 mk_human((double)st->hidden_bytes, h, sizeof(h)),
			 (unsigned long long)st->hidden_files);
	printf("%s: %llu files, %llu dirs, %s in, %s image (%.1f%%), %s deduplicated, "
	       "%s%u inodes, %.2f s\n", out, (unsigned long long)st->files,
	       (unsigned long long)st->dirs, mk_human(in, a, sizeof(a)),
	       mk_human((double)st->image_bytes, b, sizeof(b)),
	       in > 0 ? 100.0 * (double)st->image_bytes / in : 0.0,
	       mk_human((double)(st->dup_bytes + st->dup_frag_bytes), d, sizeof(d)),
	       hidden, st->inodes, st->seconds);
}

/* ---- the command ----------------------------------------------------------------- */

static int bad(const char *what, const char *arg)
{
	fprintf(stderr, "mkimage squash: invalid %s '%s'\n", what, arg);
	return MKIMAGE_EXIT_USAGE;
}

static int squash_main(int argc, char **argv, const char **ex)
{
	struct sqfs_writer_opts o;
	struct sqfs_squash_stats st;
	const char *out = NULL, *sde;
	char err[1024];
	bool quiet = false, mtime_set = false;
	int show = -1, opt, ret;
	uint64_t v;

	sqfs_writer_opts_init(&o);
	o.excludes = ex;
	while ((opt = getopt_long(argc, argv, "o:j:e:qh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'o': out = optarg; break;
		case OPT_COMP:
			if (sqfs_codec_parse(optarg, &o.codec.kind))
				return bad("compressor (lz4, lz4hc, zstd, gzip, xz, none)", optarg);
			break;
		case OPT_LEVEL:
			if (parse_u64(optarg, 100, &v) || !v)
				return bad("level", optarg);
			o.codec.level = (int)v;
			break;
		case OPT_BLOCK:
			if (parse_size(optarg, &o.codec.block_size))
				return bad("block size", optarg);
			break;
		case 'j':
			if (parse_u64(optarg, 1024, &v) || !v)
				return bad("thread count", optarg);
			o.threads = (int)v;
			break;
		case OPT_MTIME:
			if (parse_u64(optarg, UINT32_MAX, &v))
				return bad("mtime (seconds since the epoch)", optarg);
			o.mtime = (int64_t)v;
			mtime_set = true;
			break;
		case OPT_FUID:
			if (parse_id(optarg, true, &o.force_uid))
				return bad("uid", optarg);
			break;
		case OPT_FGID:
			if (parse_id(optarg, false, &o.force_gid))
				return bad("gid", optarg);
			break;
		case OPT_ALLROOT: o.force_uid = o.force_gid = 0; break;
		case 'e': ex[o.nexcludes++] = optarg; break;
		case OPT_NOXATTR: o.no_xattrs = true; break;
		case OPT_NODEDUP: o.no_dedup = true; break;
		case OPT_PROGRESS: show = 1; break;
		case OPT_NOPROGRESS: show = 0; break;
		case 'q': quiet = true; break;
		case 'h': squash_usage(stdout); return 0;
		default: squash_usage(stderr); return MKIMAGE_EXIT_USAGE;
		}
	}
	if (!out || optind >= argc) {
		fprintf(stderr, "mkimage squash: %s\n", !out ? "missing -o OUT" : "no layers given");
		squash_usage(stderr);
		return MKIMAGE_EXIT_USAGE;
	}
	sde = getenv("SOURCE_DATE_EPOCH");
	if (!mtime_set && sde && *sde) {
		if (parse_u64(sde, UINT32_MAX, &v))
			return bad("SOURCE_DATE_EPOCH", sde);
		o.mtime = (int64_t)v;
	}
	if (show < 0)
		show = !quiet && isatty(STDOUT_FILENO);
	if (show)
		o.progress = progress;

	ret = sqfs_squash_layers((const char *const *)argv + optind, argc - optind, out, &o,
				 &st, err, sizeof(err));
	if (ret) {
		if (show)
			progress(NULL, &st, 1);
		fprintf(stderr, "mkimage squash: %s\n", err);
		return MKIMAGE_EXIT_ERROR;
	}
	if (!quiet)
		summary(out, &st);
	if (getenv("MKIMAGE_TIMES"))
		fprintf(stderr, "walk %.2f s, data %.2f s, total %.2f s\n", st.walk_seconds,
			st.data_seconds, st.seconds);
	return 0;
}

int cmd_squash(int argc, char **argv)
{
	const char **ex = calloc(argc, sizeof(*ex));
	int ret;

	if (!ex) {
		fprintf(stderr, "mkimage squash: out of memory\n");
		return MKIMAGE_EXIT_ERROR;
	}
	ret = squash_main(argc, argv, ex);
	free(ex);
	return ret;
}
