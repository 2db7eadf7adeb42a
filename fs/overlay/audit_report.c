// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The audit's output, shared by `mkimage audit` and `strata audit` so both say the same:
 * a table, the secrets (path, layer, reasons: never content), the summary line, the JSON
 * document of Documentation/audit.md, and the exit-code policy.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "overlay/audit.h"

static const char *const reason_names[AUDIT_R_COUNT] = {
	"private key block",
	"SSH private key file (.ssh/id_*)",
	"AWS credentials file (.aws/credentials)",
	"Docker registry auth (.docker/config.json)",
	"netrc credentials (.netrc)",
	"PyPI credentials (.pypirc)",
	"git credentials (.git-credentials)",
	".env file with a secret value",
	"AWS access key id",
	"GitHub token",
	"Slack token",
	"Google API key",
	"GitLab token",
	"secret-looking assignment (high entropy)",
};

const char *audit_reason_name(uint32_t bit)
{
	for (int i = 0; i < AUDIT_R_COUNT; i++)
		if (bit == 1u << i)
			return reason_names[i];
	return "?";
}

const char *audit_kind_name(enum audit_kind k)
{
	switch (k) {
	case AUDIT_WHITEOUT: return "whiteout";
	case AUDIT_OPAQUE: return "opaque";
	case AUDIT_REPLACED: return "replaced";
	}
	return "?";
}

const char *audit_type_name(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return "file";
	case S_IFDIR: return "dir";
	case S_IFLNK: return "symlink";
	case S_IFCHR: return "char";
	case S_IFBLK: return "block";
	case S_IFIFO: return "fifo";
	case S_IFSOCK: return "socket";
	}
	return "unknown";
}

int audit_parse_fail_on(const char *s, enum audit_fail_on *out)
{
	if (!strcmp(s, "hidden-secret"))
		*out = AUDIT_FAIL_HIDDEN_SECRET;
	else if (!strcmp(s, "any-secret"))
		*out = AUDIT_FAIL_ANY_SECRET;
	else if (!strcmp(s, "never"))
		*out = AUDIT_FAIL_NEVER;
	else
		return -EINVAL;
	return 0;
}

int audit_exit_code(const struct audit_result *r, enum audit_fail_on f)
{
	if (f == AUDIT_FAIL_HIDDEN_SECRET && r->t.hidden_secrets)
		return AUDIT_EXIT_SECRET;
	if (f == AUDIT_FAIL_ANY_SECRET && r->t.secrets)
		return AUDIT_EXIT_SECRET;
	return 0;
}

static const char *human(double bytes, char *buf, size_t size)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int u = 0;

	while (bytes >= 1024 && u < 4) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
	return buf;
}

static double dead_percent(const struct audit_result *r)
{
	return r->t.stack_bytes ? 100.0 * (double)r->t.dead_bytes / (double)r->t.stack_bytes : 0;
}

static void print_reasons(FILE *f, uint32_t reasons)
{
	const char *sep = "";

	for (int i = 0; i < AUDIT_R_COUNT; i++)
		if (reasons & (1u << i)) {
			fprintf(f, "%s%s", sep, reason_names[i]);
			sep = ", ";
		}
}

/* A path for a terminal: control characters would redraw it. */
static void put_path(FILE *f, const char *p)
{
	for (; *p; p++)
		fputc((unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p, f);
}

static void print_table(FILE *f, const struct audit_result *r, size_t rows)
{
	size_t shown = rows && rows < r->nhidden ? rows : r->nhidden;
	char sz[32], by[48];

	fprintf(f, "layers (top first):");
	for (int i = 0; i < r->nlayers; i++)
		fprintf(f, "%s %d = %s", i ? "," : "", i, r->specs[i]);
	fprintf(f, "\n");
	if (!r->nhidden)
		return;
	fprintf(f, "\n%10s  %-5s  %-20s  %-7s  %s\n", "SIZE", "LAYER", "HIDDEN BY", "TYPE", "PATH");
	for (size_t i = 0; i < shown; i++) {
		const struct audit_entry *e = &r->hidden[i];

		snprintf(by, sizeof(by), "%d (%s)", e->by_layer, audit_kind_name(e->kind));
		fprintf(f, "%10s  %-5d  %-20s  %-7s  ",
			S_ISDIR(e->mode) ? "-" : human((double)e->size, sz, sizeof(sz)),
			e->layer, by, audit_type_name(e->mode));
		put_path(f, e->path);
		fprintf(f, "%s\n", S_ISDIR(e->mode) ? "/" : "");
	}
	if (shown < r->nhidden)
		fprintf(f, "%10s  ... and %zu more (--rows 0 or --json lists all)\n", "",
			r->nhidden - shown);
}

void audit_print(FILE *f, const struct audit_result *r, size_t rows, const char *cure)
{
	char dead[32];

	print_table(f, r, rows);
	if (r->nsecrets) {
		fprintf(f, "\nlook like secrets (content not shown):\n");
		for (size_t i = 0; i < r->nsecrets; i++) {
			const struct audit_secret *s = &r->secrets[i];

			fprintf(f, "  layer %d  ", s->layer);
			put_path(f, s->path);
			fprintf(f, "  ");
			if (s->hidden)
				fprintf(f, "[hidden by %d (%s)]: ", s->by_layer,
					audit_kind_name(s->kind));
			else
				fprintf(f, "[visible]: ");
			print_reasons(f, s->reasons);
			fprintf(f, "\n");
		}
	}
	snprintf(dead, sizeof(dead), "%.1f", (double)r->t.dead_bytes / (1024.0 * 1024.0));
	fprintf(f, "\n%llu hidden files, %s MiB dead (%.1f %% of the stack); %llu look like "
		"secrets; `%s` would drop all of them\n",
		(unsigned long long)r->t.hidden_files, dead, dead_percent(r),
		(unsigned long long)r->t.hidden_secrets, cure);
	if (r->t.secrets > r->t.hidden_secrets)
		fprintf(f, "%llu visible files look like secrets: squashing keeps those\n",
			(unsigned long long)(r->t.secrets - r->t.hidden_secrets));
}

/* ---- JSON ---------------------------------------------------------------------------- */

static json_object *reasons_json(uint32_t reasons)
{
	json_object *a = json_object_new_array();

	for (int i = 0; i < AUDIT_R_COUNT; i++)
		if (reasons & (1u << i))
			json_object_array_add(a, json_object_new_string(reason_names[i]));
	return a;
}

static json_object *by_json(int layer, enum audit_kind kind)
{
	json_object *o = json_object_new_object();

	json_object_object_add(o, "layer", json_object_new_int(layer));
	json_object_object_add(o, "kind", json_object_new_string(audit_kind_name(kind)));
	return o;
}

static json_object *hidden_json(const struct audit_entry *e)
{
	json_object *o = json_object_new_object();

	json_object_object_add(o, "path", json_object_new_string(e->path));
	json_object_object_add(o, "layer", json_object_new_int(e->layer));
	json_object_object_add(o, "hidden_by", by_json(e->by_layer, e->kind));
	json_object_object_add(o, "type", json_object_new_string(audit_type_name(e->mode)));
	json_object_object_add(o, "size", json_object_new_int64((int64_t)e->size));
	json_object_object_add(o, "secret", reasons_json(e->reasons));
	return o;
}

static json_object *secret_json(const struct audit_secret *s)
{
	json_object *o = json_object_new_object();

	json_object_object_add(o, "path", json_object_new_string(s->path));
	json_object_object_add(o, "layer", json_object_new_int(s->layer));
	json_object_object_add(o, "hidden", json_object_new_boolean(s->hidden));
	json_object_object_add(o, "hidden_by", s->hidden ? by_json(s->by_layer, s->kind) : NULL);
	json_object_object_add(o, "size", json_object_new_int64((int64_t)s->size));
	json_object_object_add(o, "reasons", reasons_json(s->reasons));
	return o;
}

static void add_u64(json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

static json_object *totals_json(const struct audit_result *r)
{
	json_object *t = json_object_new_object();

	add_u64(t, "hidden_entries", r->t.hidden_entries);
	add_u64(t, "hidden_files", r->t.hidden_files);
	add_u64(t, "hidden_dirs", r->t.hidden_dirs);
	add_u64(t, "dead_bytes", r->t.dead_bytes);
	add_u64(t, "stack_bytes", r->t.stack_bytes);
	json_object_object_add(t, "dead_percent", json_object_new_double(dead_percent(r)));
	add_u64(t, "secrets", r->t.secrets);
	add_u64(t, "hidden_secrets", r->t.hidden_secrets);
	add_u64(t, "scanned_files", r->t.scanned_files);
	add_u64(t, "scanned_bytes", r->t.scanned_bytes);
	return t;
}

char *audit_json(const struct audit_result *r)
{
	json_object *o = json_object_new_object(), *a, *sc;
	char *out;

	if (!o)
		return NULL;
	json_object_object_add(o, "version", json_object_new_int(1));
	a = json_object_new_array();
	for (int i = 0; i < r->nlayers; i++) {
		json_object *l = json_object_new_object();

		json_object_object_add(l, "index", json_object_new_int(i));
		json_object_object_add(l, "path", json_object_new_string(r->specs[i]));
		json_object_array_add(a, l);
	}
	json_object_object_add(o, "layers", a);
	a = json_object_new_array();
	for (size_t i = 0; i < r->nhidden; i++)
		json_object_array_add(a, hidden_json(&r->hidden[i]));
	json_object_object_add(o, "hidden", a);
	a = json_object_new_array();
	for (size_t i = 0; i < r->nsecrets; i++)
		json_object_array_add(a, secret_json(&r->secrets[i]));
	json_object_object_add(o, "secrets", a);
	json_object_object_add(o, "totals", totals_json(r));
	sc = json_object_new_object();
	json_object_object_add(sc, "hidden", json_object_new_boolean(r->scanned_hidden));
	json_object_object_add(sc, "visible", json_object_new_boolean(r->scanned_visible));
	json_object_object_add(o, "scanned", sc);
	out = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
						    JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return out;
}
