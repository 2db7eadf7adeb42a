/* SPDX-License-Identifier: GPL-2.0-or-later */
/* mkimage: the subcommands. */
#ifndef STRATA_MKIMAGE_H
#define STRATA_MKIMAGE_H

#include <stddef.h>
#include <stdint.h>

#define MKIMAGE_EXIT_ERROR 1    /* the work failed */
#define MKIMAGE_EXIT_USAGE 2    /* bad command line */

int cmd_squash(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_audit(int argc, char **argv);       /* audit.c */
/* Hidden files and bytes of a stack (what squash leaves out); 0 or a negative errno. */
int mk_hidden_bytes(const char *const *layers, int n, uint64_t *files, uint64_t *bytes);

/* "12.3 MiB" into buf */
const char *mk_human(double bytes, char *buf, size_t size);

#endif
