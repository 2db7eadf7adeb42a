// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * `image import`: an OCI image layout directory (index.json -> manifest -> config + layers)
 * becomes a chain of committed layers.  Every blob is checked against its sha256 digest
 * (layers while they are extracted, the JSON blobs before they are parsed), the config's
 * diff_ids against the uncompressed layers, and layers already in the store are reused by
 * their OCI ChainID.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata_priv.h"

#define MT_INDEX      "application/vnd.oci.image.index.v1+json"
#define MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define JSON_MAX      (4 << 20)

struct oci {
	struct strata *s;
	const char *dir;
};

static int blob_path(struct oci *o, const char *digest, char *buf, size_t len)
{
	/* the digest becomes a path: it must be exactly sha256:<hex> */
	if (!sd_valid_digest(digest))
		return sd_err(o->s, EINVAL, "%s: bad or unsupported digest '%s'", o->dir,
			      digest ? digest : "(none)");
	return sd_path(buf, len, "%s/blobs/sha256/%s", o->dir, digest + 7);
}

/* Reads a small JSON file; when digest is given, checks it first. */
static int read_json(struct oci *o, const char *path, const char *digest, int64_t size,
		     json_object **out)
{
	char got[SHA256_STR_LEN];
	struct stat st;
	char *buf = NULL;
	ssize_t n = 0;
	int fd, ret = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return sd_err(o->s, errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size > JSON_MAX) {
		ret = sd_err(o->s, EINVAL, "%s: not a regular file of at most %d bytes", path,
			     JSON_MAX);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		ret = sd_err(o->s, ENOMEM, "out of memory");
		goto out;
	}
	while (n < st.st_size) {
		ssize_t r = read(fd, buf + n, (size_t)(st.st_size - n));

		if (r <= 0) {
			ret = sd_err(o->s, r ? errno : EIO, "%s: short read", path);
			goto out;
		}
		n += r;
	}
	buf[n] = 0;
	if (size >= 0 && size != n) {
		ret = sd_err(o->s, EBADMSG, "%s: size %zd, descriptor says %lld", path, n,
			     (long long)size);
		goto out;
	}
	if (digest) {
		sha256_str(buf, (size_t)n, got);
		if (strcmp(got, digest)) {
			ret = sd_err(o->s, EBADMSG, "%s: digest mismatch: expected %s, got %s",
				     path, digest, got);
			goto out;
		}
	}
	*out = json_tokener_parse(buf);
	if (!*out)
		ret = sd_err(o->s, EINVAL, "%s: not valid JSON", path);
out:
	free(buf);
	close(fd);
	return ret;
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;

	if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static json_object *jarr(json_object *o, const char *key)
{
	json_object *v;

	if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_array))
		return NULL;
	return v;
}

static int64_t jsize(json_object *desc)
{
	json_object *v;

	if (!json_object_object_get_ex(desc, "size", &v))
		return -1;
	return json_object_get_int64(v);
}

static const char *ref_name(json_object *desc)
{
	json_object *ann;

	if (!json_object_object_get_ex(desc, "annotations", &ann))
		return NULL;
	return jstr(ann, "org.opencontainers.image.ref.name");
}

static bool is_index(const char *mt)
{
	return mt && (!strcmp(mt, MT_INDEX) || !strcmp(mt, MT_DOCKER_LIST));
}

/* The manifest descriptor for ref (or the only one) in an index; follows nested indexes,
 * preferring the linux/amd64 entry. */
static int pick_manifest(struct oci *o, json_object *index, const char *ref, int depth,
			 json_object **desc, json_object **keep)
{
	json_object *m = jarr(index, "manifests"), *d = NULL, *sub;
	char path[PATH_MAX];
	size_t i, n = m ? json_object_array_length(m) : 0;
	int ret;

	if (!n)
		return sd_err(o->s, ENOENT, "%s: the index lists no manifests", o->dir);
	for (i = 0; i < n && !d; i++) {
		json_object *c = json_object_array_get_idx(m, i);
		const char *r = ref_name(c);

		if (ref && depth == 0 && r && !strcmp(r, ref))
			d = c;
	}
	if (!d && ref && depth == 0)
		return sd_err(o->s, ENOENT, "%s: no image with ref '%s'", o->dir, ref);
	if (!d && n == 1)
		d = json_object_array_get_idx(m, 0);
	for (i = 0; i < n && !d; i++) {
		json_object *c = json_object_array_get_idx(m, i), *p;

		if (json_object_object_get_ex(c, "platform", &p) &&
		    !strcmp(jstr(p, "os") ?: "", "linux") &&
		    !strcmp(jstr(p, "architecture") ?: "", "amd64"))
			d = c;
	}
	if (!d)
		return sd_err(o->s, EINVAL, "%s: %zu images in the index; name one as DIR:REF",
			      o->dir, n);
	if (!is_index(jstr(d, "mediaType"))) {
		*desc = d;
		return 0;
	}
	if (depth > 4)
		return sd_err(o->s, ELOOP, "%s: indexes nested too deep", o->dir);
	ret = blob_path(o, jstr(d, "digest"), path, sizeof(path));
	if (!ret)
		ret = read_json(o, path, jstr(d, "digest"), jsize(d), &sub);
	if (ret)
		return ret;
	json_object_array_add(*keep, sub);   /* freed with the index */
	return pick_manifest(o, sub, NULL, depth + 1, desc, keep);
}

/* ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)) */
static void chain_next(const char *prev, const char *diff_id, char *out)
{
	char buf[2 * SHA256_STR_LEN + 2];

	if (!prev[0]) {
		snprintf(out, SHA256_STR_LEN, "%s", diff_id);
		return;
	}
	snprintf(buf, sizeof(buf), "%s %s", prev, diff_id);
	sha256_str(buf, strlen(buf), out);
}

static int find_chain(struct strata *s, const char *chain_id, char *key, size_t len)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(s->db, "SELECT key FROM snapshots WHERE chain_id = ? AND state = "
			       "'ready' AND kind = 'committed' AND storage = 'dir' ORDER BY id",
			       -1, &st, NULL) != SQLITE_OK)
		return sd_db_err(s, "image import");
	sqlite3_bind_text(st, 1, chain_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		snprintf(key, len, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 1 : 0;
}

struct chain_state {
	char chain[SHA256_STR_LEN];
	char parent[SD_KEY_MAX + 1];
	char **created;         /* keys this call made: removed again on failure */
	size_t ncreated;
};

static int import_layer(struct oci *o, struct chain_state *cs, json_object *desc,
			const char *diff_id, const char *key_top)
{
	struct strata_import_opts io = { 0 };
	char chain[SHA256_STR_LEN], path[PATH_MAX], key[SD_KEY_MAX + 1];
	const char *mt = jstr(desc, "mediaType");
	struct stat st;
	char **nc;
	int ret;

	if (!sd_valid_digest(diff_id))
		return sd_err(o->s, EINVAL, "%s: config has a bad diff_id '%s'", o->dir,
			      diff_id ? diff_id : "(none)");
	if (mt && !strstr(mt, "tar") && !strstr(mt, "layer"))
		return sd_err(o->s, EINVAL, "%s: layer media type '%s' is not a tar", o->dir, mt);
	chain_next(cs->chain, diff_id, chain);
	if (!key_top && find_chain(o->s, chain, key, sizeof(key)) > 0)
		goto done;
	snprintf(key, sizeof(key), "%s", key_top ? key_top : chain);
	ret = blob_path(o, jstr(desc, "digest"), path, sizeof(path));
	if (ret)
		return ret;
	if (stat(path, &st))
		return sd_err(o->s, errno, "%s: layer blob %s: %s", o->dir, path, strerror(errno));
	if (jsize(desc) >= 0 && st.st_size != jsize(desc))
		return sd_err(o->s, EBADMSG, "%s: layer blob %s has %lld bytes, the manifest says "
			      "%lld", o->dir, path, (long long)st.st_size, (long long)jsize(desc));
	io.parent = cs->parent[0] ? cs->parent : NULL;
	io.digest = jstr(desc, "digest");
	io.diff_id = diff_id;
	io.chain_id = chain;
	ret = strata_import(o->s, key, path, &io, NULL);
	if (ret)
		return ret;
	nc = realloc(cs->created, (cs->ncreated + 1) * sizeof(*nc));
	if (!nc || !(nc[cs->ncreated] = strdup(key))) {
		if (nc)
			cs->created = nc;
		return sd_err(o->s, ENOMEM, "out of memory");
	}
	cs->created = nc;
	cs->ncreated++;
done:
	snprintf(cs->chain, sizeof(cs->chain), "%s", chain);
	snprintf(cs->parent, sizeof(cs->parent), "%s", key);
	return 0;
}

/* When the top's name already exists, it must be this very image (import is idempotent). */
static int top_exists(struct oci *o, const char *name, const char *chain)
{
	struct sd_snap sn;

	if (sd_lookup(o->s, name, &sn))
		return sd_key_exists(o->s, name) ? -EEXIST : 0;
	if (!strcmp(sn.chain_id, chain))
		return 1;
	return sd_err(o->s, EEXIST, "snapshot '%s' already exists (and is another image)",
		      name);
}

static int import_manifest(struct oci *o, json_object *man, const char *name,
			   char *top, size_t toplen)
{
	struct chain_state cs = { 0 };
	json_object *cfgd, *cfg = NULL, *layers = jarr(man, "layers"), *rootfs, *diffs;
	char path[PATH_MAX], final[SHA256_STR_LEN] = "";
	size_t n, i;
	int ret;

	if (!json_object_object_get_ex(man, "config", &cfgd))
		return sd_err(o->s, EINVAL, "%s: manifest has no config", o->dir);
	ret = blob_path(o, jstr(cfgd, "digest"), path, sizeof(path));
	if (!ret)
		ret = read_json(o, path, jstr(cfgd, "digest"), jsize(cfgd), &cfg);
	if (ret)
		return ret;
	diffs = json_object_object_get_ex(cfg, "rootfs", &rootfs) ? jarr(rootfs, "diff_ids")
								   : NULL;
	n = layers ? json_object_array_length(layers) : 0;
	if (!diffs || json_object_array_length(diffs) != n || n == 0) {
		ret = sd_err(o->s, EINVAL, "%s: config lists %zu diff_ids for %zu layers", o->dir,
			     diffs ? json_object_array_length(diffs) : 0, n);
		goto out;
	}
	for (i = 0; i < n; i++) {
		const char *d = json_object_get_string(json_object_array_get_idx(diffs, i));

		if (!sd_valid_digest(d)) {
			ret = sd_err(o->s, EINVAL, "%s: bad diff_id '%s'", o->dir, d ? d : "");
			goto out;
		}
		chain_next(final, d, final);
	}
	if (name) {
		ret = top_exists(o, name, final);
		if (ret) {
			if (ret > 0)
				snprintf(top, toplen, "%s", name);
			ret = ret > 0 ? 0 : ret;
			goto out;
		}
	}
	for (i = 0; i < n && !ret; i++)
		ret = import_layer(o, &cs, json_object_array_get_idx(layers, i),
				   json_object_get_string(json_object_array_get_idx(diffs, i)),
				   i == n - 1 ? name : NULL);
	if (!ret)
		snprintf(top, toplen, "%s", cs.parent);
	/* nothing half-imported: layers this call made go again */
	while (ret && cs.ncreated) {
		char msg[sizeof(o->s->err)];

		memcpy(msg, o->s->err, sizeof(msg));
		strata_remove(o->s, cs.created[cs.ncreated - 1], false);
		memcpy(o->s->err, msg, sizeof(msg));
		free(cs.created[--cs.ncreated]);
	}
out:
	for (i = 0; i < cs.ncreated; i++)
		free(cs.created[i]);
	free(cs.created);
	json_object_put(cfg);
	return ret;
}

int strata_image_import(struct strata *s, const char *layout, const char *ref,
			const char *name, char *top, size_t toplen)
{
	struct oci o = { .s = s, .dir = layout };
	json_object *index = NULL, *keep = json_object_new_array(), *desc = NULL, *man = NULL;
	char path[PATH_MAX];
	int ret;

	if (!keep)
		return sd_err(s, ENOMEM, "out of memory");
	ret = sd_path(path, sizeof(path), "%s/index.json", layout);
	if (!ret)
		ret = read_json(&o, path, NULL, -1, &index);
	if (ret)
		goto out;
	ret = pick_manifest(&o, index, ref, 0, &desc, &keep);
	if (ret)
		goto out;
	if (!name)
		name = ref ? ref : ref_name(desc);
	if (name) {
		ret = sd_check_key(s, name);
		if (ret)
			goto out;
	}
	ret = blob_path(&o, jstr(desc, "digest"), path, sizeof(path));
	if (!ret)
		ret = read_json(&o, path, jstr(desc, "digest"), jsize(desc), &man);
	if (!ret)
		ret = import_manifest(&o, man, name, top, toplen);
out:
	json_object_put(man);
	json_object_put(index);
	json_object_put(keep);
	return ret;
}
