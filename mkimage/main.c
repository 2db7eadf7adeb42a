// SPDX-License-Identifier: GPL-2.0-or-later
/* mkimage: build and look at SquashFS images of layer stacks.  See mkimage(1). */
#include <stdio.h>
#include <string.h>

#include "mkimage.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mkimage squash [options] -o OUT.sqfs LAYER [LAYER...]\n"
		"       mkimage inspect [--json] IMAGE\n"
		"       mkimage audit [--json] [--all] [--fail-on WHAT] LAYER [LAYER...]\n"
		"       mkimage --help | --version\n"
		"Layers are listed top first, like lowerdir=.  See mkimage(1).\n");
}

const char *mk_human(double bytes, char *buf, size_t size)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int u = 0;

	while (bytes >= 1024 && u < 4) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
	return buf;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return MKIMAGE_EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("mkimage (strata) 0.1\n");
		return 0;
	}
	if (!strcmp(argv[1], "squash"))
		return cmd_squash(argc - 1, argv + 1);
	if (!strcmp(argv[1], "inspect"))
		return cmd_inspect(argc - 1, argv + 1);
	if (!strcmp(argv[1], "audit"))
		return cmd_audit(argc - 1, argv + 1);
	fprintf(stderr, "mkimage: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return MKIMAGE_EXIT_USAGE;
}
