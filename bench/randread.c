/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Random 4 KiB reads for bench/: COUNT preads at 4 KiB-aligned offsets drawn from a seeded
 * xorshift generator, so every system reads the same offsets in the same order.
 *
 * Output (parsed by bench/run): reads=N bytes=B secs=S iops=I
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLK 4096

static uint64_t xorshift64(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	uint64_t seed = 0x9e3779b97f4a7c15ULL, blocks, off;
	unsigned long count, i;
	char buf[BLK];
	struct stat st;
	double t0, secs;
	ssize_t n;
	int fd;

	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: randread FILE COUNT [SEED]\n");
		return 2;
	}
	count = strtoul(argv[2], NULL, 0);
	if (argc == 4)
		seed = strtoull(argv[3], NULL, 0) | 1;
	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		fprintf(stderr, "randread: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	blocks = st.st_size / BLK;
	if (!blocks) {
		fprintf(stderr, "randread: %s: smaller than one block\n", argv[1]);
		return 1;
	}
	/* The pattern is random: do not let readahead turn it into a sequential read. */
	posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
	t0 = now();
	for (i = 0; i < count; i++) {
		off = (xorshift64(&seed) % blocks) * BLK;
		n = pread(fd, buf, BLK, off);
		if (n != BLK) {
			fprintf(stderr, "randread: %s at %llu: %s\n", argv[1],
				(unsigned long long)off, n < 0 ? strerror(errno) : "short read");
			return 1;
		}
	}
	secs = now() - t0;
	printf("reads=%lu bytes=%lu secs=%.6f iops=%.0f\n", count, count * BLK, secs,
	       count / secs);
	close(fd);
	return 0;
}
