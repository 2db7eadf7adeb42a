// SPDX-License-Identifier: GPL-2.0-or-later
/* Opening a layer: pick the backend by what the path is, not by its name. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "layer/layer.h"

int layer_path_is_image(const char *path)
{
	char magic[4];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return 0;
	n = pread(fd, magic, sizeof(magic), 0);
	close(fd);
	return n == 4 && memcmp(magic, "hsqs", 4) == 0;
}

struct layer *layer_open(const char *path, int index, char *err, size_t errlen)
{
	struct stat st;

	if (stat(path, &st) < 0) {
		snprintf(err, errlen, "layer '%s': %s", path, strerror(errno));
		return NULL;
	}
	if (S_ISDIR(st.st_mode))
		return layer_dir_open(path, index, err, errlen);
	if (S_ISREG(st.st_mode) && layer_path_is_image(path))
		return layer_image_open(path, index, err, errlen);
	snprintf(err, errlen, "layer '%s': not a directory or a SquashFS image", path);
	return NULL;
}

void layer_close(struct layer *l)
{
	if (l)
		l->ops->destroy(l);
}
