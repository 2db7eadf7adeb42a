// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * FUSE passthrough with libfuse 3.14, through fuse_session_custom_io().
 *
 * The protocol (kernel fuse_kernel.h, ABI 7.40): the INIT reply sets FUSE_PASSTHROUGH
 * (bit 37: bit 5 of flags2, with FUSE_INIT_EXT) and max_stack_depth (the u32 after flags2);
 * a backing file is registered with ioctl(FUSE_DEV_IOC_BACKING_OPEN) on the fuse device,
 * which returns an id; an OPEN or CREATE reply sets FOPEN_PASSTHROUGH (1 << 7) in
 * open_flags and the id in backing_id (the i32 after open_flags).  libfuse 3.14 knows none
 * of it, so our read callback notes which requests are INIT/OPEN/CREATE (by unique id) and
 * our writev callback patches their replies.  Nothing else in the daemon knows about this
 * beyond "open this file with backing id N".
 *
 * With passthrough we also take FUSE_HANDLE_KILLPRIV_V2.  Without it the kernel cannot
 * remember that a FUSE file has no security.capability (it sets SB_NOSEC only for servers
 * that clear privileges themselves), so every write() -- passthrough or not -- first sent
 * a GETXATTR round trip.  In exchange the daemon clears set-id bits itself; some requests
 * that ask for it carry flags libfuse 3.14 drops, so our read callback notes them for the
 * handler, which runs on the same thread (pt_kill_request()).
 *
 * It also gives libfuse 3.14 O_TMPFILE, which it does not know: FUSE_TMPFILE's request and
 * reply are a CREATE's (the name is "/", which the kernel gives the unnamed dentry), so the
 * read callback hands it on as a CREATE and the create handler tells it by that name.
 *
 * This file goes away once libfuse >= 3.16 is the floor.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#include "passthrough.h"

#define PT_FUSE_PASSTHROUGH_FLAGS2  (1u << 5)       /* FUSE_PASSTHROUGH >> 32 */
#define PT_FOPEN_PASSTHROUGH        (1u << 7)
/* The only open flags the kernel takes with passthrough: direct_io, noflush,
 * parallel_direct_writes and passthrough itself (no keep_cache: there is no cache). */
#define PT_FOPEN_ALLOWED            ((1u << 0) | (1u << 5) | (1u << 6) | PT_FOPEN_PASSTHROUGH)
#define PT_MAX_STACK_DEPTH          1
#define PT_FUSE_TMPFILE             51      /* kernel 6.0, ABI 7.37 */

struct pt_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define PT_IOC_BACKING_OPEN  _IOW(229, 1, struct pt_backing_map)
#define PT_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

/* Requests whose replies we patch, by unique id: few are in flight at once. */
#define PT_SLOTS 1024
struct pt_table {
	pthread_mutex_t lock;
	uint64_t unique[PT_SLOTS];
	uint32_t opcode[PT_SLOTS];
	int used;
};

/* What the request this thread is handling asks us to clear (see pt_kill_request()). */
static __thread enum pt_kill pt_kill;

enum pt_kill pt_kill_request(void)
{
	return pt_kill;
}

/*
 * The flags that ask for privileges to be cleared, which libfuse 3.14 drops: a WRITE with
 * FUSE_WRITE_KILL_SUIDGID, an OPEN with FUSE_OPEN_KILL_SUIDGID (O_TRUNC), a SETATTR with
 * FATTR_KILL_SUIDGID (a truncate, or a change of owner).  The kernel sends them only with
 * FUSE_HANDLE_KILLPRIV_V2.
 */
static enum pt_kill pt_classify(const struct fuse_in_header *in, ssize_t len)
{
	const void *arg = in + 1;
	size_t alen = (size_t)len - sizeof(*in);

	switch (in->opcode) {
	case FUSE_SETATTR:
		if (alen >= sizeof(struct fuse_setattr_in)) {
			uint32_t valid = ((const struct fuse_setattr_in *)arg)->valid;

			if (valid & FATTR_KILL_SUIDGID)
				return (valid & (FATTR_UID | FATTR_GID)) ? PT_KILL_CHOWN
									 : PT_KILL_WRITE;
		}
		break;
	case FUSE_OPEN:
		if (alen >= sizeof(struct fuse_open_in) &&
		    (((const struct fuse_open_in *)arg)->open_flags & FUSE_OPEN_KILL_SUIDGID))
			return PT_KILL_WRITE;
		break;
	case FUSE_WRITE:
		if (alen >= sizeof(struct fuse_write_in) &&
		    (((const struct fuse_write_in *)arg)->write_flags & FUSE_WRITE_KILL_SUIDGID))
			return PT_KILL_WRITE;
		break;
	}
	return PT_KILL_NONE;
}

static struct pt_table *pt_tab(struct pt_state *pt)
{
	return pt->lock;
}

static void pt_note(struct pt_state *pt, uint64_t unique, uint32_t opcode)
{
	struct pt_table *t = pt_tab(pt);
	int i;

	pthread_mutex_lock(&t->lock);
	for (i = 0; i < PT_SLOTS; i++) {
		if (!t->opcode[i]) {
			t->unique[i] = unique;
			t->opcode[i] = opcode;
			t->used++;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
}

static uint32_t pt_take(struct pt_state *pt, uint64_t unique)
{
	struct pt_table *t = pt_tab(pt);
	uint32_t op = 0;
	int i;

	if (!__atomic_load_n(&t->used, __ATOMIC_RELAXED))
		return 0;
	pthread_mutex_lock(&t->lock);
	for (i = 0; i < PT_SLOTS; i++) {
		if (t->opcode[i] && t->unique[i] == unique) {
			op = t->opcode[i];
			t->opcode[i] = 0;
			t->used--;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return op;
}

static ssize_t pt_read(int fd, void *buf, size_t len, void *ud)
{
	struct pt_state *pt = ud;
	ssize_t r = read(fd, buf, len);
	const struct fuse_in_header *in = buf;

	pt_kill = PT_KILL_NONE;
	if (r < (ssize_t)sizeof(*in))
		return r;
	if (in->opcode == PT_FUSE_TMPFILE)
		((struct fuse_in_header *)buf)->opcode = FUSE_CREATE;
	if (pt->killpriv)
		pt_kill = pt_classify(in, r);
	if (in->opcode == FUSE_INIT && r >= (ssize_t)(sizeof(*in) + sizeof(struct fuse_init_in))) {
		const struct fuse_init_in *ii = (const void *)(in + 1);

		pt->active = pt->wanted && (ii->flags & FUSE_INIT_EXT) &&
			     (ii->flags2 & PT_FUSE_PASSTHROUGH_FLAGS2);
		pt->killpriv = pt->active && (ii->flags & FUSE_HANDLE_KILLPRIV_V2);
		pt_note(pt, in->unique, in->opcode);
	} else if (pt->active && (in->opcode == FUSE_OPEN || in->opcode == FUSE_CREATE)) {
		pt_note(pt, in->unique, in->opcode);
	}
	return r;
}

static void pt_patch_open(struct pt_state *pt, struct fuse_open_out *oo)
{
	int id = pt->backing_of(oo->fh);

	pt->opens++;
	if (id <= 0)
		return;
	oo->open_flags = (oo->open_flags | PT_FOPEN_PASSTHROUGH) & PT_FOPEN_ALLOWED;
	oo->padding = (uint32_t)id;     /* backing_id */
	pt->backing_opens++;
}

static ssize_t pt_writev(int fd, struct iovec *iov, int count, void *ud)
{
	struct pt_state *pt = ud;
	struct fuse_out_header *oh = iov[0].iov_base;
	uint32_t op;

	if (count >= 2 && iov[0].iov_len >= sizeof(*oh) && oh->error == 0 &&
	    (op = pt_take(pt, oh->unique)) != 0) {
		char *arg = iov[1].iov_base;

		if (op == FUSE_INIT && iov[1].iov_len >= 48 && pt->active) {
			struct fuse_init_out *io = (void *)arg;

			io->flags |= FUSE_INIT_EXT;
			io->flags2 |= PT_FUSE_PASSTHROUGH_FLAGS2;
			if (pt->killpriv)
				io->flags |= FUSE_HANDLE_KILLPRIV_V2;
			io->unused[0] = PT_MAX_STACK_DEPTH;     /* max_stack_depth */
		} else if (op == FUSE_OPEN && iov[1].iov_len >= sizeof(struct fuse_open_out)) {
			pt_patch_open(pt, (void *)arg);
		} else if (op == FUSE_CREATE && iov[1].iov_len >= sizeof(struct fuse_entry_out) +
			   sizeof(struct fuse_open_out)) {
			pt_patch_open(pt, (void *)(arg + sizeof(struct fuse_entry_out)));
		}
	}
	return writev(fd, iov, count);
}

static ssize_t pt_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
			      unsigned int flags, void *ud)
{
	(void)ud;
	return splice(fdin, offin, fdout, offout, len, flags);
}

int pt_probe(char *err, size_t errlen)
{
	struct pt_backing_map map = { .fd = -1 };
	int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC), r, e;

	if (fd < 0) {
		snprintf(err, errlen, "/dev/fuse: %s", strerror(errno));
		return -errno;
	}
	/* Not mounted yet: a kernel that knows the ioctl refuses it (EPERM/EINVAL); one
	 * that does not answers ENOTTY, one built without it EOPNOTSUPP. */
	r = ioctl(fd, PT_IOC_BACKING_OPEN, &map);
	e = errno;
	close(fd);
	if (r >= 0 || e == EPERM || e == EINVAL || e == EBADF)
		return 0;
	snprintf(err, errlen, "this kernel has no FUSE passthrough (%s)", strerror(e));
	return -EOPNOTSUPP;
}

int pt_attach(struct pt_state *pt, struct fuse_session *se)
{
	static const struct fuse_custom_io io = {
		.read = pt_read,
		.writev = pt_writev,
		.splice_send = pt_splice_send,
	};
	struct pt_table *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	pthread_mutex_init(&t->lock, NULL);
	pt->lock = t;
	pt->devfd = fuse_session_fd(se);
	pt->shim = true;
	return fuse_session_custom_io(se, &io, pt->devfd);
}

int pt_backing_open(struct pt_state *pt, int fd)
{
	struct pt_backing_map map = { .fd = fd };
	int id = ioctl(pt->devfd, PT_IOC_BACKING_OPEN, &map);

	if (id < 0)
		return -errno;
	__atomic_add_fetch(&pt->backing_live, 1, __ATOMIC_RELAXED);
	return id;
}

void pt_backing_close(struct pt_state *pt, int id)
{
	uint32_t v = (uint32_t)id;

	if (ioctl(pt->devfd, PT_IOC_BACKING_CLOSE, &v) == 0)
		__atomic_sub_fetch(&pt->backing_live, 1, __ATOMIC_RELAXED);
}
