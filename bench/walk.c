/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Metadata and read workloads for bench/, in C so the tool's own cost stays far below the
 * file system's (a Python os.walk would measure the interpreter).
 *
 *   walk tree ROOT...        lstat every entry below each ROOT (a `find -ls` without output)
 *   walk read ROOT...        the same, and read every regular file to the end
 *   walk stat LIST ROUNDS    lstat each path listed in LIST (one per line), ROUNDS times
 *   walk readdir DIR         read all entries of DIR (no stat): the big-directory case
 *
 * Output (parsed by bench/run): entries=N bytes=B errors=E secs=S; exit 1 if any error.
 * secs is the tool's own elapsed time, without process start-up.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct walk {
	unsigned long long entries;
	unsigned long long bytes;
	unsigned long errors;
	int read_data;
	char buf[1 << 17];
};

static void walk_err(struct walk *w, const char *what, const char *name)
{
	if (w->errors++ < 5)
		fprintf(stderr, "walk: %s %s: %s\n", what, name, strerror(errno));
}

static void read_file(struct walk *w, int dfd, const char *name)
{
	ssize_t n;
	int fd;

	fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		walk_err(w, "open", name);
		return;
	}
	while ((n = read(fd, w->buf, sizeof(w->buf))) > 0)
		w->bytes += n;
	if (n < 0)
		walk_err(w, "read", name);
	close(fd);
}

/* Depth-first below an open directory fd; takes ownership of dfd. */
static void walk_dir(struct walk *w, int dfd)
{
	struct dirent *de;
	struct stat st;
	DIR *d;
	int sub;

	d = fdopendir(dfd);
	if (!d) {
		walk_err(w, "fdopendir", "?");
		close(dfd);
		return;
	}
	while ((errno = 0, de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		w->entries++;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW)) {
			walk_err(w, "lstat", de->d_name);
			continue;
		}
		if (S_ISDIR(st.st_mode)) {
			sub = openat(dirfd(d), de->d_name,
				     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				walk_err(w, "opendir", de->d_name);
			else
				walk_dir(w, sub);
		} else if (S_ISREG(st.st_mode) && w->read_data) {
			read_file(w, dirfd(d), de->d_name);
		}
	}
	if (errno)
		walk_err(w, "readdir", "?");
	closedir(d);
}

static void walk_roots(struct walk *w, int n, char **roots)
{
	int i, fd;

	for (i = 0; i < n; i++) {
		fd = open(roots[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			walk_err(w, "open", roots[i]);
		else
			walk_dir(w, fd);
	}
}

static void stat_list(struct walk *w, const char *list, int rounds)
{
	char line[4096];
	struct stat st;
	FILE *f;
	int r;

	f = fopen(list, "re");
	if (!f) {
		walk_err(w, "open", list);
		return;
	}
	for (r = 0; r < rounds; r++) {
		rewind(f);
		while (fgets(line, sizeof(line), f)) {
			line[strcspn(line, "\n")] = 0;
			if (!line[0])
				continue;
			w->entries++;
			if (lstat(line, &st))
				walk_err(w, "lstat", line);
		}
	}
	fclose(f);
}

static void read_dir(struct walk *w, const char *dir)
{
	struct dirent *de;
	DIR *d;

	d = opendir(dir);
	if (!d) {
		walk_err(w, "opendir", dir);
		return;
	}
	while ((errno = 0, de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			w->entries++;
	if (errno)
		walk_err(w, "readdir", dir);
	closedir(d);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static struct walk w;
	double t0 = now();

	if (argc < 3)
		goto usage;
	if (!strcmp(argv[1], "tree") || !strcmp(argv[1], "read")) {
		w.read_data = !strcmp(argv[1], "read");
		walk_roots(&w, argc - 2, argv + 2);
	} else if (!strcmp(argv[1], "stat") && argc == 4) {
		stat_list(&w, argv[2], atoi(argv[3]));
	} else if (!strcmp(argv[1], "readdir") && argc == 3) {
		read_dir(&w, argv[2]);
	} else {
		goto usage;
	}
	printf("entries=%llu bytes=%llu errors=%lu secs=%.6f\n", w.entries, w.bytes, w.errors,
	       now() - t0);
	return w.errors ? 1 : 0;
usage:
	fprintf(stderr, "usage: walk tree|read ROOT... | walk stat LIST ROUNDS | walk readdir DIR\n");
	return 2;
}
