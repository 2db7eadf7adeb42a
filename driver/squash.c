// SPDX-License-Identifier: GPL-2.0-or-later
/* squash: not wired to the SquashFS writer yet. */
#include <errno.h>

#include "strata_priv.h"

int strata_squash(struct strata *s, const char *key, const char *name,
		  const struct strata_squash_opts *o)
{
	(void)key;
	(void)name;
	(void)o;
	return sd_err(s, ENOSYS, "squash is not available in this build (no SquashFS writer)");
}
