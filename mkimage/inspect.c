// SPDX-License-Identifier: GPL-2.0-or-later
#include <stdio.h>
#include "mkimage.h"
int cmd_inspect(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "todo\n"); return 1; }
