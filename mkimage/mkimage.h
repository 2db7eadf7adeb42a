/* SPDX-License-Identifier: GPL-2.0-or-later */
/* mkimage: the subcommands. */
#ifndef STRATA_MKIMAGE_H
#define STRATA_MKIMAGE_H

#define MKIMAGE_EXIT_ERROR 1    /* the work failed */
#define MKIMAGE_EXIT_USAGE 2    /* bad command line */

int cmd_squash(int argc, char **argv);
int cmd_inspect(int argc, char **argv);

/* "12.3 MiB" into buf */
const char *mk_human(double bytes, char *buf, size_t size);

#endif
