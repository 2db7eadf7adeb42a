/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Audit a layer stack: what the union hides, what that costs, and which hidden (or, on
 * request, visible) files look like credentials.  Layers are immutable, so an entry that a
 * higher layer deletes (whiteout), hides (opaque directory) or replaces still ships with
 * the image.  Used by `mkimage audit`, `mkimage squash` (the summary) and `strata audit`.
 * Documentation/audit.md describes the rules and the --json shape.
 *
 * Hidden means: no path of the merged view shows this layer's entry.  The resolution is the
 * union's (fs/overlay/ovl_lookup.c): the topmost entry of a name wins; a non-directory hides
 * everything of that name below; a directory merges with directories below until a layer
 * where it is opaque, a whiteout, a non-directory or a redirect (trusted/user.overlay.redirect:
 * the lower content then comes from another path, and the entries at the old path are hidden).
 * Whiteout and opaque markers themselves are not entries.
 */
#ifndef STRATA_AUDIT_H
#define STRATA_AUDIT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

struct layer;

enum audit_kind {
	AUDIT_WHITEOUT,   /* deleted by a whiteout (char 0/0 or .wh.NAME) of a higher layer */
	AUDIT_OPAQUE,     /* below a directory a higher layer made opaque */
	AUDIT_REPLACED,   /* shadowed by a higher entry of the same name that does not merge */
};

/* Why a file looks like a credential (bit mask; audit_reason_name() for the text). */
enum audit_reason {
	AUDIT_R_PRIVATE_KEY  = 1u << 0,   /* a -----BEGIN ... PRIVATE KEY----- block */
	AUDIT_R_SSH_KEY      = 1u << 1,   /* .ssh/id_* (not .pub) */
	AUDIT_R_AWS_CREDS    = 1u << 2,   /* .aws/credentials */
	AUDIT_R_DOCKER_AUTH  = 1u << 3,   /* .docker/config.json with auths */
	AUDIT_R_NETRC        = 1u << 4,   /* .netrc / _netrc */
	AUDIT_R_PYPIRC       = 1u << 5,   /* .pypirc with a password */
	AUDIT_R_GIT_CREDS    = 1u << 6,   /* .git-credentials */
	AUDIT_R_DOTENV       = 1u << 7,   /* .env file with a KEY=VALUE token */
	AUDIT_R_AWS_KEY_ID   = 1u << 8,   /* AKIA.../ASIA... */
	AUDIT_R_GITHUB       = 1u << 9,   /* ghp_/gho_/ghu_/ghs_/ghr_/github_pat_ */
	AUDIT_R_SLACK        = 1u << 10,  /* xox[baprs]- */
	AUDIT_R_GOOGLE_KEY   = 1u << 11,  /* AIza... */
	AUDIT_R_GITLAB       = 1u << 12,  /* glpat- */
	AUDIT_R_ASSIGNMENT   = 1u << 13,  /* secret-ish name = high-entropy value */
	AUDIT_R_COUNT        = 14
};

struct audit_opts {
	bool scan_hidden;       /* look for credentials in hidden files */
	bool scan_visible;      /* ... and in the visible ones */
	uint64_t scan_limit;    /* bytes read per file; 0 = AUDIT_SCAN_LIMIT */
};

#define AUDIT_SCAN_LIMIT (4u << 20)

struct audit_entry {
	char *path;             /* in its layer ("" never: the root is never hidden) */
	int layer;              /* the layer it lives in (0 = top) */
	int by_layer;           /* the layer whose entry hides it */
	enum audit_kind kind;
	mode_t mode;            /* type and permission bits */
	uint64_t size;          /* st_size of files and symlinks, 0 for the rest */
	uint32_t reasons;       /* credential reasons, 0 = none (or not scanned) */
	/* private */
	uint64_t ref;
	ino_t ino;
	nlink_t nlink;
};

struct audit_secret {
	char *path;
	int layer;
	bool hidden;
	int by_layer;           /* hidden only */
	enum audit_kind kind;   /* hidden only */
	uint64_t size;
	uint32_t reasons;
};

struct audit_totals {
	uint64_t hidden_entries;    /* every hidden entry */
	uint64_t hidden_files;      /* ... that is not a directory */
	uint64_t hidden_dirs;
	uint64_t dead_bytes;        /* regular-file bytes no merged path shows (links once) */
	uint64_t stack_bytes;       /* regular-file bytes of all layers (links once) */
	uint64_t secrets;           /* flagged files */
	uint64_t hidden_secrets;    /* ... of them hidden */
	uint64_t scanned_files, scanned_bytes;
};

struct audit_result {
	int nlayers;
	char **specs;               /* the layers as given, top first */
	struct audit_entry *hidden; /* sorted: size (largest first), layer, path */
	size_t nhidden;
	struct audit_secret *secrets;   /* sorted: hidden first, layer, path */
	size_t nsecrets;
	struct audit_totals t;
	bool scanned_hidden, scanned_visible;
};

/* Audit layers[0..n-1] (top first).  Returns 0, or a negative errno with a message naming
 * the culprit in err[errlen]; r is then empty. */
int audit_stack(struct layer *const *layers, int n, const struct audit_opts *o,
		struct audit_result *r, char *err, size_t errlen);
/* The same on paths (directories or SquashFS images), opened with layer_open(). */
int audit_paths(const char *const *paths, int n, const struct audit_opts *o,
		struct audit_result *r, char *err, size_t errlen);
void audit_result_free(struct audit_result *r);

/* Secret scanning (audit_scan.c). */
/* Reasons that follow from the path alone, and whether the content must be read. */
uint32_t audit_scan_name(const char *path);
/* Scan one regular file through the layer interface: name rules plus at most `limit`
 * bytes of content, streamed.  *reasons gets the mask; returns 0 or a negative errno. */
int audit_scan_file(struct layer *l, const char *path, uint64_t ref, uint64_t limit,
		    uint32_t *reasons, uint64_t *scanned);
/* The same on a memory buffer (the whole content); for tests and callers with data. */
uint32_t audit_scan_buffer(const char *path, const void *data, size_t len);

/* Reporting (audit_report.c). */
enum audit_fail_on { AUDIT_FAIL_HIDDEN_SECRET, AUDIT_FAIL_ANY_SECRET, AUDIT_FAIL_NEVER };
#define AUDIT_EXIT_SECRET 3
int audit_parse_fail_on(const char *s, enum audit_fail_on *out);
/* 0, or AUDIT_EXIT_SECRET when the result fails the policy. */
int audit_exit_code(const struct audit_result *r, enum audit_fail_on f);
const char *audit_kind_name(enum audit_kind k);
const char *audit_type_name(mode_t mode);
const char *audit_reason_name(uint32_t bit);
/* The table (at most `rows` rows, 0 = all), the secrets and the summary line.
 * `cure` names the command that drops hidden data ("mkimage squash"). */
void audit_print(FILE *f, const struct audit_result *r, size_t rows, const char *cure);
/* The documented JSON document, malloc'ed; NULL when out of memory. */
char *audit_json(const struct audit_result *r);

#endif
