// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Does a file look like a credential?  Rules on the path (well-known credential files) and
 * on the content (key blocks, provider token shapes, secret-looking assignments).
 *
 * Content is read through the layer interface in chunks, at most `limit` bytes, and looked
 * at line by line; a line longer than the window is cut into overlapping pieces so a token
 * that straddles a cut is still seen whole.  Only reason bits leave this file: nothing of
 * the matched bytes is copied out, so no caller can print a secret by mistake.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layer/layer.h"
#include "overlay/audit.h"

#define SCAN_CHUNK   (64 * 1024)
#define SCAN_LINE    4096
#define SCAN_OVERLAP 256        /* longer than any token shape below */

/* Content rules that only some file names turn on. */
enum { WANT_DOCKER = 1, WANT_PYPIRC = 2, WANT_DOTENV = 4 };

struct scanner {
	unsigned want;
	uint32_t reasons;
	bool docker_auths, docker_auth;
	char line[SCAN_LINE];
	size_t len;
};

/* ---- names ------------------------------------------------------------------------------ */

static void split_name(const char *path, const char **base, const char **parent,
		       size_t *parent_len)
{
	const char *slash = strrchr(path, '/'), *p;

	*base = slash ? slash + 1 : path;
	*parent = NULL;
	*parent_len = 0;
	if (!slash)
		return;
	for (p = slash; p > path && p[-1] != '/'; p--)
		;
	*parent = p;
	*parent_len = (size_t)(slash - p);
}

static bool parent_is(const char *parent, size_t len, const char *want)
{
	return parent && len == strlen(want) && !memcmp(parent, want, len);
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);

	return n >= k && !strcmp(s + n - k, suffix);
}

static bool is_dotenv(const char *base)
{
	return !strcmp(base, ".env") || !strncmp(base, ".env.", 5) ||
	       (ends_with(base, ".env") && strlen(base) > 4);
}

uint32_t audit_scan_name(const char *path)
{
	const char *base, *parent;
	size_t plen;
	uint32_t r = 0;

	split_name(path, &base, &parent, &plen);
	if (parent_is(parent, plen, ".ssh") && !strncmp(base, "id_", 3) &&
	    !ends_with(base, ".pub"))
		r |= AUDIT_R_SSH_KEY;
	if (parent_is(parent, plen, ".aws") && !strcmp(base, "credentials"))
		r |= AUDIT_R_AWS_CREDS;
	if (!strcmp(base, ".netrc") || !strcmp(base, "_netrc"))
		r |= AUDIT_R_NETRC;
	if (!strcmp(base, ".git-credentials"))
		r |= AUDIT_R_GIT_CREDS;
	return r;
}

static unsigned name_wants(const char *path)
{
	const char *base, *parent;
	size_t plen;
	unsigned w = 0;

	split_name(path, &base, &parent, &plen);
	if (parent_is(parent, plen, ".docker") && !strcmp(base, "config.json"))
		w |= WANT_DOCKER;
	if (!strcmp(base, ".pypirc"))
		w |= WANT_PYPIRC;
	if (is_dotenv(base))
		w |= WANT_DOTENV;
	return w;
}

/* ---- shapes ------------------------------------------------------------------------------ */

static bool is_alnum(int ch)
{
	return isascii(ch) && isalnum(ch);
}

/* Bits of entropy per character of s[0..n). */
static double entropy(const char *s, size_t n)
{
	unsigned counts[256] = { 0 };
	double h = 0;

	for (size_t i = 0; i < n; i++)
		counts[(unsigned char)s[i]]++;
	for (int i = 0; i < 256; i++)
		if (counts[i]) {
			double p = (double)counts[i] / (double)n;

			h -= p * log2(p);
		}
	return h;
}

/* A token-like value: long enough, varied, letters and digits mixed. */
static bool looks_random(const char *v, size_t n)
{
	bool alpha = false, digit = false;

	if (n < 16)
		return false;
	for (size_t i = 0; i < n; i++) {
		alpha |= isascii(v[i]) && isalpha((unsigned char)v[i]);
		digit |= isascii(v[i]) && isdigit((unsigned char)v[i]);
	}
	return alpha && digit && entropy(v, n) >= 3.5;
}

/* How many characters of s[0..n) belong to `set` ("A" upper, "a" lower, "0" digits, or
 * literal characters), up to max. */
static size_t span(const char *s, size_t n, const char *set, size_t max)
{
	size_t i;

	for (i = 0; i < n && i < max; i++) {
		unsigned char ch = (unsigned char)s[i];
		bool ok = (strchr(set, 'A') && ch >= 'A' && ch <= 'Z') ||
			  (strchr(set, 'a') && ch >= 'a' && ch <= 'z') ||
			  (strchr(set, '0') && ch >= '0' && ch <= '9') ||
			  (ch && strchr(set, ch) && !strchr("Aa0", ch));

		if (!ok)
			break;
	}
	return i;
}

struct shape {
	const char *prefix;
	const char *set;        /* characters of the body */
	size_t min, max;        /* body length */
	uint32_t reason;
};

/* Token shapes of well-known providers, as they document them. */
static const struct shape shapes[] = {
	{ "AKIA", "A0", 16, 16, AUDIT_R_AWS_KEY_ID },
	{ "ASIA", "A0", 16, 16, AUDIT_R_AWS_KEY_ID },
	{ "ghp_", "Aa0", 36, 255, AUDIT_R_GITHUB },
	{ "gho_", "Aa0", 36, 255, AUDIT_R_GITHUB },
	{ "ghu_", "Aa0", 36, 255, AUDIT_R_GITHUB },
	{ "ghs_", "Aa0", 36, 255, AUDIT_R_GITHUB },
	{ "ghr_", "Aa0", 36, 255, AUDIT_R_GITHUB },
	{ "github_pat_", "Aa0_", 50, 255, AUDIT_R_GITHUB },
	{ "xoxb-", "Aa0-", 10, 255, AUDIT_R_SLACK },
	{ "xoxa-", "Aa0-", 10, 255, AUDIT_R_SLACK },
	{ "xoxp-", "Aa0-", 10, 255, AUDIT_R_SLACK },
	{ "xoxr-", "Aa0-", 10, 255, AUDIT_R_SLACK },
	{ "xoxs-", "Aa0-", 10, 255, AUDIT_R_SLACK },
	{ "AIza", "Aa0_-", 35, 35, AUDIT_R_GOOGLE_KEY },
	{ "glpat-", "Aa0_-", 20, 255, AUDIT_R_GITLAB },
};

static void find_shapes(struct scanner *sc, const char *s, size_t n)
{
	for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
		const struct shape *sh = &shapes[k];
		size_t plen = strlen(sh->prefix);
		const char *p = s, *end = s + n;

		if (sc->reasons & sh->reason)
			continue;
		while ((p = memmem(p, end - p, sh->prefix, plen))) {
			size_t body = span(p + plen, end - p - plen, sh->set, sh->max + 1);

			/* a shape inside a longer word is not the token */
			if ((p == s || !is_alnum(p[-1])) && body >= sh->min && body <= sh->max &&
			    entropy(p + plen, body) >= 3.0) {
				sc->reasons |= sh->reason;
				break;
			}
			p += plen;
		}
	}
}

static void find_pem(struct scanner *sc, const char *s, size_t n)
{
	static const char begin[] = "-----BEGIN ";
	const char *p = memmem(s, n, begin, sizeof(begin) - 1), *q;

	while (p) {
		const char *rest = p + sizeof(begin) - 1;

		q = memmem(rest, s + n - rest, "-----", 5);
		if (q && memmem(rest, q - rest, "PRIVATE KEY", 11)) {
			sc->reasons |= AUDIT_R_PRIVATE_KEY;
			return;
		}
		p = memmem(rest, s + n - rest, begin, sizeof(begin) - 1);
	}
}

static const char *const secret_words[] = {
	"password", "passwd", "secret", "token", "api_key", "apikey", "access_key",
	"private_key", "auth_key", "credential",
};

static bool secret_word(const char *lower, size_t n)
{
	for (size_t k = 0; k < sizeof(secret_words) / sizeof(secret_words[0]); k++)
		if (memmem(lower, n, secret_words[k], strlen(secret_words[k])))
			return true;
	return false;
}

/* NAME = "value" / NAME: value with a secret-looking NAME and a random-looking value. */
static void find_assignments(struct scanner *sc, const char *s, const char *lower, size_t n)
{
	for (size_t k = 0; k < sizeof(secret_words) / sizeof(secret_words[0]); k++) {
		size_t wl = strlen(secret_words[k]);
		const char *p = lower, *end = lower + n;

		while ((p = memmem(p, end - p, secret_words[k], wl))) {
			size_t i = (size_t)(p - lower) + wl, v;

			i += span(lower + i, n - i, "a0_-.", n);
			if (i < n && (s[i] == '"' || s[i] == '\''))
				i++;
			while (i < n && (s[i] == ' ' || s[i] == '\t'))
				i++;
			if (i < n && s[i] == ':')
				i++;
			if (i < n && s[i] == '=')
				i++;
			if (i > 0 && (s[i - 1] == ':' || s[i - 1] == '=')) {
				while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '"' ||
						 s[i] == '\''))
					i++;
				v = span(s + i, n - i, "Aa0+/=_.-~", n);
				/* code, not a literal: f(x), a[i], a + b */
				if (i + v < n && !strchr(" \t\r\"'`,;&})#", s[i + v]))
					v = 0;
				if (looks_random(s + i, v)) {
					sc->reasons |= AUDIT_R_ASSIGNMENT;
					return;
				}
			}
			p += wl;
		}
	}
}

/* A .env line: [export] NAME=VALUE with a secret NAME or a random VALUE. */
static void find_dotenv(struct scanner *sc, const char *s, const char *lower, size_t n)
{
	size_t i = 0, name, v;

	while (i < n && (s[i] == ' ' || s[i] == '\t'))
		i++;
	if (n - i > 7 && !memcmp(lower + i, "export ", 7))
		i += 7;
	name = i;
	if (i >= n || !(isascii(s[i]) && (isalpha((unsigned char)s[i]) || s[i] == '_')))
		return;
	i += span(s + i, n - i, "Aa0_.", n);
	if (i >= n || s[i] != '=')
		return;
	v = i + 1;
	if (v < n && (s[v] == '"' || s[v] == '\''))
		v++;
	size_t vlen = span(s + v, n - v, "Aa0+/=_.-~:@!#$%^&*", n);
	if (vlen == 0)
		return;
	if (secret_word(lower + name, i - name) || looks_random(s + v, vlen))
		sc->reasons |= AUDIT_R_DOTENV;
}

static void check_line(struct scanner *sc, const char *s, size_t n)
{
	char lower[SCAN_LINE];

	while (n && (s[n - 1] == '\r' || s[n - 1] == '\n'))
		n--;
	if (!n)
		return;
	for (size_t i = 0; i < n; i++)
		lower[i] = (char)tolower((unsigned char)s[i]);
	find_pem(sc, s, n);
	find_shapes(sc, s, n);
	if (!(sc->reasons & AUDIT_R_ASSIGNMENT))
		find_assignments(sc, s, lower, n);
	if ((sc->want & WANT_DOTENV) && !(sc->reasons & AUDIT_R_DOTENV))
		find_dotenv(sc, s, lower, n);
	if (sc->want & WANT_PYPIRC && memmem(lower, n, "password", 8))
		sc->reasons |= AUDIT_R_PYPIRC;
	if (sc->want & WANT_DOCKER) {
		const char *p = memmem(lower, n, "\"auths\"", 7), *q;

		sc->docker_auths |= p != NULL;
		for (q = lower; (q = memmem(q, lower + n - q, "\"auth\"", 6)); q += 6) {
			size_t i = (size_t)(q - lower) + 6;

			while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == ':'))
				i++;
			if (i + 1 < n && s[i] == '"' && s[i + 1] != '"')
				sc->docker_auth = true;
		}
		if (memmem(lower, n, "\"identitytoken\"", 15))
			sc->docker_auth = true;
	}
}

/* Feed bytes; lines are checked as they complete. */
static void feed(struct scanner *sc, const char *p, size_t n)
{
	while (n) {
		const char *nl = memchr(p, '\n', n);
		size_t take = nl ? (size_t)(nl - p) + 1 : n;

		if (take > SCAN_LINE - sc->len)
			take = SCAN_LINE - sc->len;
		memcpy(sc->line + sc->len, p, take);
		sc->len += take;
		p += take;
		n -= take;
		if (sc->line[sc->len - 1] == '\n') {
			check_line(sc, sc->line, sc->len);
			sc->len = 0;
		} else if (sc->len == SCAN_LINE) {
			check_line(sc, sc->line, sc->len);
			memmove(sc->line, sc->line + SCAN_LINE - SCAN_OVERLAP, SCAN_OVERLAP);
			sc->len = SCAN_OVERLAP;
		}
	}
}

static uint32_t done(struct scanner *sc, const char *path, uint64_t total)
{
	if (sc->len)
		check_line(sc, sc->line, sc->len);
	if (sc->docker_auths && sc->docker_auth)
		sc->reasons |= AUDIT_R_DOCKER_AUTH;
	if (total)      /* an empty file holds no credential, whatever its name */
		sc->reasons |= audit_scan_name(path);
	return sc->reasons;
}

uint32_t audit_scan_buffer(const char *path, const void *data, size_t len)
{
	struct scanner *sc = calloc(1, sizeof(*sc));
	uint32_t r;

	if (!sc)
		return 0;
	sc->want = name_wants(path);
	feed(sc, data, len);
	r = done(sc, path, len);
	free(sc);
	return r;
}

int audit_scan_file(struct layer *l, const char *path, uint64_t ref, uint64_t limit,
		    uint32_t *reasons, uint64_t *scanned)
{
	struct lnode n = { path, ref };
	struct layer_file *f = NULL;
	struct scanner *sc = calloc(1, sizeof(*sc));
	char *buf = malloc(SCAN_CHUNK);
	uint64_t off = 0;
	int ret;

	*reasons = 0;
	*scanned = 0;
	if (!sc || !buf) {
		ret = -ENOMEM;
		goto out;
	}
	sc->want = name_wants(path);
	ret = l->ops->open(l, &n, O_RDONLY, &f);
	if (ret)
		goto out;
	while (off < limit) {
		size_t want = limit - off < SCAN_CHUNK ? (size_t)(limit - off) : SCAN_CHUNK;
		ssize_t got = l->ops->read(f, buf, want, (off_t)off);

		if (got < 0) {
			ret = (int)got;
			goto out;
		}
		if (got == 0)
			break;
		feed(sc, buf, (size_t)got);
		off += (uint64_t)got;
	}
	*reasons = done(sc, path, off);
	*scanned = off;
out:
	if (f)
		l->ops->close(f);
	free(buf);
	free(sc);
	return ret;
}
