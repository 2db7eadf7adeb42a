// SPDX-License-Identifier: GPL-2.0-or-later
/* mkimage audit: what a layer stack hides, and which of it looks like a credential.
 * Option parsing, output and exit codes; the work is in fs/overlay/audit.c. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "overlay/audit.h"
#include "mkimage.h"

enum { OPT_JSON = 256, OPT_ALL, OPT_FAILON, OPT_LIMIT, OPT_ROWS };

static const struct option audit_longopts[] = {
	{ "json",       no_argument,       0, OPT_JSON },
	{ "all",        no_argument,       0, OPT_ALL },
	{ "fail-on",    required_argument, 0, OPT_FAILON },
	{ "scan-limit", required_argument, 0, OPT_LIMIT },
	{ "rows",       required_argument, 0, OPT_ROWS },
	{ "help",       no_argument,       0, 'h' },
	{ 0, 0, 0, 0 }
};

static void audit_usage(FILE *f)
{
	fprintf(f,
		"usage: mkimage audit [options] LAYER [LAYER...]\n"
		"List what the stack hides (whiteouts, opaque dirs, replaced entries) and which\n"
		"hidden files look like credentials.  Layers are listed top first.\n"
		"      --json            the document of Documentation/audit.md\n"
		"      --all             also scan the visible files for credentials\n"
		"      --fail-on WHAT    hidden-secret (default), any-secret or never: exit 3 when met\n"
		"      --scan-limit SIZE bytes read per file (default 4M)\n"
		"      --rows N          table rows (default 20, 0 = all)\n"
		"Exit: 0 clean, 3 secret found (--fail-on), 1 error, 2 bad command line.\n");
}

static int parse_count(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	if (!strcasecmp(end, "k"))
		v <<= 10;
	else if (!strcasecmp(end, "m"))
		v <<= 20;
	else if (!strcasecmp(end, "g"))
		v <<= 30;
	else if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int bad(const char *what, const char *arg)
{
	fprintf(stderr, "mkimage audit: invalid %s '%s'\n", what, arg);
	return MKIMAGE_EXIT_USAGE;
}

int cmd_audit(int argc, char **argv)
{
	struct audit_opts o = { .scan_hidden = true };
	enum audit_fail_on fail_on = AUDIT_FAIL_HIDDEN_SECRET;
	struct audit_result r;
	uint64_t rows = 20;
	bool json = false;
	char err[1024];
	int opt, ret;

	while ((opt = getopt_long(argc, argv, "h", audit_longopts, NULL)) != -1) {
		switch (opt) {
		case OPT_JSON: json = true; break;
		case OPT_ALL: o.scan_visible = true; break;
		case OPT_FAILON:
			if (audit_parse_fail_on(optarg, &fail_on))
				return bad("--fail-on (hidden-secret, any-secret, never)", optarg);
			break;
		case OPT_LIMIT:
			if (parse_count(optarg, &o.scan_limit) || !o.scan_limit)
				return bad("scan limit", optarg);
			break;
		case OPT_ROWS:
			if (parse_count(optarg, &rows))
				return bad("row count", optarg);
			break;
		case 'h': audit_usage(stdout); return 0;
		default: audit_usage(stderr); return MKIMAGE_EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "mkimage audit: no layers given\n");
		audit_usage(stderr);
		return MKIMAGE_EXIT_USAGE;
	}
	/* failing on any secret means looking at every file */
	if (fail_on == AUDIT_FAIL_ANY_SECRET)
		o.scan_visible = true;
	ret = audit_paths((const char *const *)argv + optind, argc - optind, &o, &r, err,
			  sizeof(err));
	if (ret) {
		fprintf(stderr, "mkimage audit: %s\n", err);
		return MKIMAGE_EXIT_ERROR;
	}
	if (json) {
		char *s = audit_json(&r);

		if (!s) {
			audit_result_free(&r);
			fprintf(stderr, "mkimage audit: out of memory\n");
			return MKIMAGE_EXIT_ERROR;
		}
		puts(s);
		free(s);
	} else {
		audit_print(stdout, &r, (size_t)rows, "mkimage squash");
	}
	ret = audit_exit_code(&r, fail_on);
	audit_result_free(&r);
	if (fflush(stdout) == EOF) {
		fprintf(stderr, "mkimage audit: cannot write the report: %s\n", strerror(errno));
		return MKIMAGE_EXIT_ERROR;
	}
	return ret;
}

int mk_hidden_bytes(const char *const *layers, int n, uint64_t *files, uint64_t *bytes)
{
	struct audit_opts o = { 0 };
	struct audit_result r;
	char err[256];
	int ret = audit_paths(layers, n, &o, &r, err, sizeof(err));

	if (ret)
		return ret;
	*files = r.t.hidden_files;
	*bytes = r.t.dead_bytes;
	audit_result_free(&r);
	return 0;
}
