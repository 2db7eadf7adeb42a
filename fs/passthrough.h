/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FUSE passthrough (kernel >= 6.9) on a libfuse that predates it.  Goes away once
 * libfuse >= 3.16 is the floor: it has fuse_passthrough_open() and fi->backing_id.
 */
#ifndef STRATA_PASSTHROUGH_H
#define STRATA_PASSTHROUGH_H

#include <stdbool.h>
#include <stdint.h>

struct fuse_session;

struct pt_state {
	int devfd;                      /* the session's /dev/fuse fd */
	bool wanted;                    /* we asked for it in INIT */
	bool active;                    /* the kernel offered it and we accepted */
	bool killpriv;                  /* FUSE_HANDLE_KILLPRIV_V2 is on (with passthrough) */
	bool shim;                      /* our read/writev callbacks are attached */
	/* Backing id for the file handle in an OPEN/CREATE reply, or 0 for none. */
	int (*backing_of)(uint64_t fh);
	void *lock;                     /* private: the unique -> opcode table */
	uint64_t opens, backing_opens;  /* statistics */
	int64_t backing_live;           /* registered backing files not yet released */
};

/* Whether the request being handled on this thread carries a FUSE_HANDLE_KILLPRIV_V2 flag
 * asking the daemon to clear privileges as the VFS would after a write or truncate
 * (PT_KILL_WRITE) or a change of owner (PT_KILL_CHOWN); PT_KILL_NONE without killpriv.
 * Ordered by how much they clear (a chown clears S_ISUID whoever asks): sfs_kill_begin()
 * keeps the greater of this and what the request itself implies. */
enum pt_kill { PT_KILL_NONE, PT_KILL_WRITE, PT_KILL_CHOWN };
enum pt_kill pt_kill_request(void);

/* Before mounting: does this kernel do passthrough and may we use it?  0, or -errno with
 * a reason in err. */
int pt_probe(char *err, size_t errlen);
/* After fuse_session_mount(): route the session's I/O through us.  libfuse passes the
 * session's userdata to the I/O callbacks, so that userdata must begin with the
 * struct pt_state. */
int pt_attach(struct pt_state *pt, struct fuse_session *se);
/* Register `fd` as a backing file; returns its id (> 0) or -errno. */
int pt_backing_open(struct pt_state *pt, int fd);
void pt_backing_close(struct pt_state *pt, int id);

#endif
