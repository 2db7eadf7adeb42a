/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * mdtest-like parallel metadata load for bench/: N processes, each in its own directory under
 * DIR, run the phases create / stat / open+close / unlink over F files.  Each phase is timed
 * from the fork of the first worker to the exit of the last one, so it measures the mount's
 * aggregate metadata rate under contention (what a parallel FS metadata server sees).
 *
 * Output, one line per phase (parsed by bench/run):
 *   phase=create procs=4 files=4000 secs=0.123456 ops_per_s=32400
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum phase { PH_CREATE, PH_STAT, PH_OPEN, PH_UNLINK, PH_COUNT };

static const char *const phase_name[PH_COUNT] = { "create", "stat", "open", "unlink" };

struct mdtest {
	const char *dir;
	int procs;
	int files;
	size_t write_bytes;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int do_one(const struct mdtest *md, enum phase ph, int dfd, int i)
{
	static const char buf[4096];
	char name[32];
	struct stat st;
	int fd;

	snprintf(name, sizeof(name), "f.%d", i);
	switch (ph) {
	case PH_CREATE:
		fd = openat(dfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
		if (fd < 0)
			return -errno;
		if (md->write_bytes &&
		    write(fd, buf, md->write_bytes) != (ssize_t)md->write_bytes) {
			close(fd);
			return -EIO;
		}
		return close(fd) ? -errno : 0;
	case PH_STAT:
		return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
	case PH_OPEN:
		fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		return close(fd) ? -errno : 0;
	default:
		return unlinkat(dfd, name, 0) ? -errno : 0;
	}
}

/* One worker: its own directory, so the phases measure the FS, not lock contention in it. */
static int worker(const struct mdtest *md, enum phase ph, int id)
{
	char sub[64];
	int dfd, i, err;

	snprintf(sub, sizeof(sub), "%s/p.%d", md->dir, id);
	if (ph == PH_CREATE && mkdir(sub, 0755) && errno != EEXIST) {
		fprintf(stderr, "mdtest: mkdir %s: %s\n", sub, strerror(errno));
		return 1;
	}
	dfd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		fprintf(stderr, "mdtest: open %s: %s\n", sub, strerror(errno));
		return 1;
	}
	for (i = 0; i < md->files; i++) {
		err = do_one(md, ph, dfd, i);
		if (err) {
			fprintf(stderr, "mdtest: %s %s/f.%d: %s\n", phase_name[ph], sub, i,
				strerror(-err));
			close(dfd);
			return 1;
		}
	}
	close(dfd);
	if (ph == PH_UNLINK && rmdir(sub)) {
		fprintf(stderr, "mdtest: rmdir %s: %s\n", sub, strerror(errno));
		return 1;
	}
	return 0;
}

static int run_phase(const struct mdtest *md, enum phase ph, double *secs)
{
	double t0 = now();
	int i, status, failed = 0;
	pid_t pid;

	for (i = 0; i < md->procs; i++) {
		pid = fork();
		if (pid < 0) {
			perror("mdtest: fork");
			failed = 1;
			break;
		}
		if (pid == 0)
			_exit(worker(md, ph, i));
	}
	while ((pid = wait(&status)) > 0)
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			failed = 1;
	*secs = now() - t0;
	return failed ? -1 : 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: mdtest -d DIR [-p PROCS] [-n FILES_PER_PROC] [-w BYTES]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct mdtest md = { .procs = 2, .files = 1000 };
	double secs, total = 0;
	int opt, ph;

	while ((opt = getopt(argc, argv, "d:p:n:w:")) != -1) {
		switch (opt) {
		case 'd': md.dir = optarg; break;
		case 'p': md.procs = atoi(optarg); break;
		case 'n': md.files = atoi(optarg); break;
		case 'w': md.write_bytes = strtoul(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (!md.dir || md.procs < 1 || md.files < 1 || md.write_bytes > 4096)
		usage();
	for (ph = 0; ph < PH_COUNT; ph++) {
		if (run_phase(&md, ph, &secs)) {
			fprintf(stderr, "mdtest: phase %s failed\n", phase_name[ph]);
			return 1;
		}
		total += secs;
		printf("phase=%s procs=%d files=%d secs=%.6f ops_per_s=%.0f\n", phase_name[ph],
		       md.procs, md.procs * md.files, secs, md.procs * md.files / secs);
	}
	printf("phase=total procs=%d files=%d secs=%.6f ops_per_s=%.0f\n", md.procs,
	       md.procs * md.files, total, PH_COUNT * md.procs * md.files / total);
	return 0;
}
