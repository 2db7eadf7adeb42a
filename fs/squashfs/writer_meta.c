// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Metadata: after the data, the writer lays down (in the order the kernel's sanity checks
 * expect) the inode table, the directory table, and the fragment, export, id and xattr
 * tables, then fills in the superblock.
 *
 * Inodes are written children first (a directory's listing needs its children's inode
 * references and its inode needs the listing's location), so inode numbers are handed out
 * in the same post-order beforehand: a directory inode also needs its parent's number.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "squashfs/writer_int.h"

/* ---- growable buffer and metadata stream ----------------------------------------- */

int wbuf_put(struct wbuf *b, const void *data, size_t len)
{
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		unsigned char *p;
		while (cap < b->len + len)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
	return 0;
}

void wbuf_free(struct wbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

void ms_init(struct mstream *m, struct sqfs_codec *codec)
{
	memset(m, 0, sizeof(*m));
	m->codec = codec;
}

static int ms_flush(struct mstream *m)
{
	ssize_t n = sqfs_codec_compress(m->codec, m->blk, m->fill, m->tmp, sizeof(m->tmp));
	uint16_t hdr;

	if (n < 0)
		return (int)n;
	if (m->nstarts == m->capstarts) {
		size_t cap = m->capstarts ? m->capstarts * 2 : 64;
		uint64_t *v = realloc(m->starts, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		m->starts = v;
		m->capstarts = cap;
	}
	m->starts[m->nstarts++] = m->out.len;
	hdr = sqfs_le16(n > 0 ? (uint16_t)n : (uint16_t)(m->fill | SQFS_META_UNCOMPRESSED));
	if (wbuf_put(&m->out, &hdr, 2) ||
	    wbuf_put(&m->out, n > 0 ? m->tmp : m->blk, n > 0 ? (size_t)n : m->fill))
		return -ENOMEM;
	m->fill = 0;
	return 0;
}

/* Blocks are flushed as soon as they are full, so ms_block()/ms_offset() always name
 * where the next byte goes. */
int ms_put(struct mstream *m, const void *data, size_t len)
{
	const unsigned char *p = data;

	while (len) {
		size_t n = SQFS_META_SIZE - m->fill;
		if (n > len)
			n = len;
		memcpy(m->blk + m->fill, p, n);
		m->fill += n;
		p += n;
		len -= n;
		if (m->fill == SQFS_META_SIZE) {
			int ret = ms_flush(m);
			if (ret)
				return ret;
		}
	}
	return 0;
}

int ms_finish(struct mstream *m)
{
	return m->fill ? ms_flush(m) : 0;
}

void ms_free(struct mstream *m)
{
	wbuf_free(&m->out);
	free(m->starts);
}

/* Uncompressed position in the stream: what directory indexes count in. */
static uint64_t ms_upos(const struct mstream *m)
{
	return (uint64_t)m->nstarts * SQFS_META_SIZE + m->fill;
}

/* ---- id table --------------------------------------------------------------------- */

struct ids {
	uint32_t *v;
	uint32_t n, cap;
	int32_t *hash;           /* open addressing: index+1, 0 = empty */
	uint32_t nb;
};

static int id_index(struct ids *t, uint32_t id, uint16_t *idx)
{
	uint32_t h;

	if (!t->nb) {
		t->nb = 1u << 17;   /* > SQFS_MAX_IDS so the probe always ends */
		t->hash = calloc(t->nb, sizeof(*t->hash));
		if (!t->hash)
			return -ENOMEM;
	}
	for (h = (id * 2654435761u) & (t->nb - 1); t->hash[h]; h = (h + 1) & (t->nb - 1))
		if (t->v[t->hash[h] - 1] == id) {
			*idx = (uint16_t)(t->hash[h] - 1);
			return 0;
		}
	if (t->n >= SQFS_MAX_IDS)
		return -EOVERFLOW;
	if (t->n == t->cap) {
		uint32_t cap = t->cap ? t->cap * 2 : 64;
		uint32_t *v = realloc(t->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		t->v = v;
		t->cap = cap;
	}
	t->v[t->n] = id;
	t->hash[h] = (int32_t)++t->n;
	*idx = (uint16_t)(t->n - 1);
	return 0;
}

/* ---- inodes ----------------------------------------------------------------------- */

struct meta {
	struct wctx *c;
	struct mstream inodes, dirs;
	struct ids ids;
	uint64_t *exports;       /* inode ref by inode number - 1 */
	uint32_t count;          /* inode numbers handed out */
	uint32_t max_mtime;
};

static void number_inodes(struct meta *m, struct wnode *d)
{
	for (uint32_t i = 0; i < d->nchildren; i++) {
		struct wnode *n = d->children[i];
		if (S_ISDIR(n->mode))
			number_inodes(m, n);
		else if (!wnode_owner(n)->ino)
			wnode_owner(n)->ino = ++m->count;
	}
	d->ino = ++m->count;
}

static uint16_t basic_type(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFDIR:  return SQFS_INODE_DIR;
	case S_IFREG:  return SQFS_INODE_FILE;
	case S_IFLNK:  return SQFS_INODE_SYMLINK;
	case S_IFBLK:  return SQFS_INODE_BDEV;
	case S_IFCHR:  return SQFS_INODE_CDEV;
	case S_IFIFO:  return SQFS_INODE_FIFO;
	default:       return SQFS_INODE_SOCKET;
	}
}

static int put_header(struct meta *m, struct wnode *n, uint16_t type)
{
	struct sqfs_inode_header h;
	uint16_t uidx, gidx;
	int ret;

	ret = id_index(&m->ids, n->uid, &uidx);
	if (!ret)
		ret = id_index(&m->ids, n->gid, &gidx);
	if (ret)
		return wr_error(m->c, ret, ret == -EOVERFLOW ?
				"more than 65536 distinct uids/gids" : "out of memory");
	n->inode_ref = SQFS_REF(ms_block(&m->inodes), ms_offset(&m->inodes));
	n->type = basic_type(n->mode);
	m->exports[n->ino - 1] = n->inode_ref;
	if (n->mtime > m->max_mtime)
		m->max_mtime = n->mtime;
	h.inode_type = type;
	h.permissions = (uint16_t)(n->mode & 07777);
	h.uid_idx = uidx;
	h.gid_idx = gidx;
	h.mtime = n->mtime;
	h.inode_number = n->ino;
	sqfs_inode_header_swap(&h);
	return ms_put(&m->inodes, &h, sizeof(h));
}

static uint32_t xattr_idx(const struct wnode *n)
{
	return n->xattrs ? n->xattrs->id : SQFS_INVALID_XATTR;
}

static int put_file(struct meta *m, struct wnode *n)
{
	bool ext = n->xattrs || n->nlink > 1 || n->sparse || n->size > UINT32_MAX ||
		   n->blocks_start > UINT32_MAX;
	int ret = put_header(m, n, ext ? SQFS_INODE_EXT_FILE : SQFS_INODE_FILE);

	if (ret)
		return ret;
	if (ext) {
		struct sqfs_inode_ext_file f = {
			.blocks_start = n->blocks_start, .file_size = n->size,
			.sparse = n->sparse, .link_count = n->nlink,
			.fragment_index = n->frag_idx, .fragment_offset = n->frag_off,
			.xattr_idx = xattr_idx(n),
		};
		if (n->frag_idx == SQFS_INVALID_FRAG)
			f.fragment_offset = 0;
		sqfs_inode_ext_file_swap(&f);
		ret = ms_put(&m->inodes, &f, sizeof(f));
	} else {
		struct sqfs_inode_file f = {
			.blocks_start = (uint32_t)n->blocks_start,
			.fragment_index = n->frag_idx,
			.fragment_offset = n->frag_idx == SQFS_INVALID_FRAG ? 0 : n->frag_off,
			.file_size = (uint32_t)n->size,
		};
		sqfs_inode_file_swap(&f);
		ret = ms_put(&m->inodes, &f, sizeof(f));
	}
	for (uint32_t i = 0; !ret && i < n->nblocks; i++) {
		uint32_t w = sqfs_le32(n->blocks[i]);
		ret = ms_put(&m->inodes, &w, 4);
	}
	return ret;
}

static int put_other(struct meta *m, struct wnode *n)
{
	uint16_t type = basic_type(n->mode) + (n->xattrs ? SQFS_INODE_EXT_OFFSET : 0);
	uint32_t w[3];
	size_t nw = 0;
	int ret = put_header(m, n, type);

	if (ret)
		return ret;
	w[nw++] = sqfs_le32(n->nlink);
	if (S_ISLNK(n->mode)) {
		w[nw++] = sqfs_le32((uint32_t)strlen(n->symlink));
		ret = ms_put(&m->inodes, w, nw * 4);
		if (!ret)
			ret = ms_put(&m->inodes, n->symlink, strlen(n->symlink));
		nw = 0;
	} else if (S_ISCHR(n->mode) || S_ISBLK(n->mode)) {
		w[nw++] = sqfs_le32(n->rdev);
	}
	if (n->xattrs)
		w[nw++] = sqfs_le32(xattr_idx(n));
	if (!ret && nw)
		ret = ms_put(&m->inodes, w, nw * 4);
	return ret;
}

static int put_inode(struct meta *m, struct wnode *n)
{
	return S_ISREG(n->mode) ? put_file(m, n) : put_other(m, n);
}

/* ---- directories ------------------------------------------------------------------ */

struct dir_index {
	uint32_t index, start;
	const char *name;
};

struct listing {
	uint64_t block;          /* where the listing starts */
	uint32_t offset;
	uint32_t size;           /* bytes, without the 3 for "." and ".." */
	struct dir_index *idx;
	uint32_t nidx;
};

/* How many entries from children[i] on can share one header. */
static uint32_t run_length(struct meta *m, struct wnode *d, uint32_t i)
{
	struct wnode *first = wnode_owner(d->children[i]);
	uint64_t hblk = (ms_upos(&m->dirs)) / SQFS_META_SIZE;
	uint64_t pos = ms_upos(&m->dirs) + sizeof(struct sqfs_dir_header);
	uint32_t k;

	for (k = i; k < d->nchildren && k - i < SQFS_DIR_MAX_ENTRIES; k++) {
		struct wnode *o = wnode_owner(d->children[k]);
		int64_t diff = (int64_t)o->ino - (int64_t)first->ino;

		if (SQFS_REF_BLOCK(o->inode_ref) != SQFS_REF_BLOCK(first->inode_ref) ||
		    diff < -32768 || diff > 32767)
			break;
		/* a header per metadata block keeps the directory index useful */
		if (k > i && pos / SQFS_META_SIZE != hblk)
			break;
		pos += sizeof(struct sqfs_dir_entry) + strlen(d->children[k]->name);
	}
	return k - i;
}

static int add_index(struct listing *l, uint32_t index, uint64_t start, const char *name)
{
	struct dir_index *v = realloc(l->idx, (l->nidx + 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	l->idx = v;
	v[l->nidx].index = index;
	v[l->nidx].start = (uint32_t)start;
	v[l->nidx].name = name;
	l->nidx++;
	return 0;
}

static int put_listing(struct meta *m, struct wnode *d, struct listing *l)
{
	uint64_t start_upos = ms_upos(&m->dirs);
	uint64_t last_blk = start_upos / SQFS_META_SIZE;
	int ret = 0;

	l->block = ms_block(&m->dirs);
	l->offset = ms_offset(&m->dirs);
	for (uint32_t i = 0; i < d->nchildren && !ret;) {
		uint32_t n = run_length(m, d, i);
		struct wnode *first = wnode_owner(d->children[i]);
		uint64_t upos = ms_upos(&m->dirs);
		struct sqfs_dir_header h = {
			.count = n - 1,
			.start = (uint32_t)SQFS_REF_BLOCK(first->inode_ref),
			.inode_number = first->ino,
		};

		if (upos / SQFS_META_SIZE != last_blk) {
			last_blk = upos / SQFS_META_SIZE;
			ret = add_index(l, (uint32_t)(upos - start_upos), ms_block(&m->dirs),
					d->children[i]->name);
			if (ret)
				break;
		}
		sqfs_dir_header_swap(&h);
		ret = ms_put(&m->dirs, &h, sizeof(h));
		for (uint32_t k = i; k < i + n && !ret; k++) {
			struct wnode *c = d->children[k], *o = wnode_owner(c);
			size_t len = strlen(c->name);
			struct sqfs_dir_entry e = {
				.offset = (uint16_t)SQFS_REF_OFFSET(o->inode_ref),
				.inode_offset = (int16_t)((int64_t)o->ino - (int64_t)first->ino),
				.type = o->type,
				.name_size = (uint16_t)(len - 1),
			};
			sqfs_dir_entry_swap(&e);
			ret = ms_put(&m->dirs, &e, sizeof(e));
			if (!ret)
				ret = ms_put(&m->dirs, c->name, len);
		}
		i += n;
	}
	l->size = (uint32_t)(ms_upos(&m->dirs) - start_upos);
	if (ms_upos(&m->dirs) - start_upos > UINT32_MAX - 3)
		return wr_error(m->c, -EFBIG, "directory too large for SquashFS");
	return ret ? wr_error(m->c, ret, "out of memory") : 0;
}

static int put_dir_inode(struct meta *m, struct wnode *d, struct listing *l)
{
	uint32_t nlink = 2;
	uint32_t parent = d->parent ? d->parent->ino : m->count + 1;
	bool ext = d->xattrs || l->nidx || l->size + 3 > UINT16_MAX || l->block > UINT32_MAX;
	int ret;

	for (uint32_t i = 0; i < d->nchildren; i++)
		if (S_ISDIR(d->children[i]->mode))
			nlink++;
	d->nlink = nlink;
	ret = put_header(m, d, ext ? SQFS_INODE_EXT_DIR : SQFS_INODE_DIR);
	if (ret)
		return ret;
	if (!ext) {
		struct sqfs_inode_dir b = {
			.block_index = (uint32_t)l->block, .link_count = nlink,
			.file_size = (uint16_t)(l->size + 3), .block_offset = (uint16_t)l->offset,
			.parent_inode = parent,
		};
		sqfs_inode_dir_swap(&b);
		return ms_put(&m->inodes, &b, sizeof(b));
	}
	struct sqfs_inode_ext_dir x = {
		.link_count = nlink, .file_size = l->size + 3, .block_index = (uint32_t)l->block,
		.parent_inode = parent, .index_count = (uint16_t)l->nidx,
		.block_offset = (uint16_t)l->offset, .xattr_idx = xattr_idx(d),
	};
	sqfs_inode_ext_dir_swap(&x);
	ret = ms_put(&m->inodes, &x, sizeof(x));
	for (uint32_t i = 0; !ret && i < l->nidx; i++) {
		size_t len = strlen(l->idx[i].name);
		struct sqfs_dir_index di = {
			.index = l->idx[i].index, .start = l->idx[i].start,
			.name_size = (uint32_t)(len - 1),
		};
		sqfs_dir_index_swap(&di);
		ret = ms_put(&m->inodes, &di, sizeof(di));
		if (!ret)
			ret = ms_put(&m->inodes, l->idx[i].name, len);
	}
	return ret;
}

/* Post-order, in the same order number_inodes() used. */
static int write_tree(struct meta *m, struct wnode *d)
{
	struct listing l = { 0 };
	int ret = 0;

	for (uint32_t i = 0; i < d->nchildren && !ret; i++) {
		struct wnode *n = d->children[i], *o = wnode_owner(n);
		if (S_ISDIR(n->mode))
			ret = write_tree(m, n);
		else if (!o->type)
			ret = put_inode(m, o);
	}
	if (!ret)
		ret = put_listing(m, d, &l);
	if (!ret)
		ret = put_dir_inode(m, d, &l);
	free(l.idx);
	return ret;
}

/* ---- lookup tables ---------------------------------------------------------------- */

/* Write a finished stream at c->pos, then the u64 locations of its blocks; returns the
 * location of that index in *where. */
static int put_table(struct wctx *c, struct mstream *s, uint64_t *where)
{
	uint64_t base = c->pos;
	int ret = ms_finish(s);

	if (ret)
		return wr_error(c, ret, "cannot build a metadata table");
	ret = wr_pwrite(c, s->out.p, s->out.len, c->pos);
	if (ret)
		return ret;
	c->pos += s->out.len;
	*where = c->pos;
	for (size_t i = 0; i < s->nstarts; i++) {
		uint64_t loc = sqfs_le64(base + s->starts[i]);
		ret = wr_pwrite(c, &loc, 8, c->pos);
		if (ret)
			return ret;
		c->pos += 8;
	}
	return 0;
}

static int put_stream(struct wctx *c, struct mstream *s, uint64_t *where)
{
	int ret = ms_finish(s);

	if (ret)
		return wr_error(c, ret, "cannot build a metadata table");
	*where = c->pos;
	ret = wr_pwrite(c, s->out.p, s->out.len, c->pos);
	c->pos += s->out.len;
	return ret;
}

static int put_xattrs(struct wctx *c, struct sqfs_codec *codec, uint64_t *where)
{
	struct mstream kv, ids;
	struct sqfs_xattr_id_table t;
	uint64_t kv_start, ids_base;
	int ret = 0;

	ms_init(&kv, codec);
	ms_init(&ids, codec);
	for (uint32_t i = 0; i < c->nxsets && !ret; i++) {
		struct wx_set *s = c->xsets[i];
		struct sqfs_xattr_id id = {
			.xattr = SQFS_REF(ms_block(&kv), ms_offset(&kv)),
			.count = s->count,
			.size = 0,
		};
		for (size_t off = 0; off < s->len && !ret;) {
			uint16_t nl;
			uint32_t vl;
			const char *name = (const char *)s->blob + off + 2;
			memcpy(&nl, s->blob + off, 2);
			memcpy(&vl, s->blob + off + 2 + nl, 4);
			unsigned type = !strncmp(name, "user.", 5) ? SQFS_XATTR_USER :
					!strncmp(name, "trusted.", 8) ? SQFS_XATTR_TRUSTED :
					SQFS_XATTR_SECURITY;
			size_t plen = strlen(sqfs_xattr_prefix_name(type));
			struct sqfs_xattr_key k = { .type = (uint16_t)type,
						    .name_size = (uint16_t)(nl - plen) };
			uint32_t vle = sqfs_le32(vl);
			sqfs_xattr_key_swap(&k);
			ret = ms_put(&kv, &k, sizeof(k));
			if (!ret)
				ret = ms_put(&kv, name + plen, nl - plen);
			if (!ret)
				ret = ms_put(&kv, &vle, 4);
			if (!ret)
				ret = ms_put(&kv, s->blob + off + 2 + nl + 4, vl);
			id.size += (uint32_t)(sizeof(k) + nl - plen + 4 + vl);
			off += 2 + nl + 4 + vl;
		}
		sqfs_xattr_id_swap(&id);
		if (!ret)
			ret = ms_put(&ids, &id, sizeof(id));
	}
	if (ret) {
		ret = wr_error(c, ret, "cannot build the xattr table");
		goto out;
	}
	ret = put_stream(c, &kv, &kv_start);
	if (ret)
		goto out;
	ret = put_stream(c, &ids, &ids_base);
	if (ret)
		goto out;
	*where = c->pos;
	t.xattr_table_start = kv_start;
	t.xattr_ids = c->nxsets;
	t.unused = 0;
	sqfs_xattr_id_table_swap(&t);
	ret = wr_pwrite(c, &t, sizeof(t), c->pos);
	c->pos += sizeof(t);
	for (size_t i = 0; !ret && i < ids.nstarts; i++) {
		uint64_t loc = sqfs_le64(ids_base + ids.starts[i]);
		ret = wr_pwrite(c, &loc, 8, c->pos);
		c->pos += 8;
	}
out:
	ms_free(&kv);
	ms_free(&ids);
	return ret;
}

static int put_tables(struct wctx *c, struct meta *m, struct sqfs_codec *codec,
		      struct sqfs_super *sb)
{
	struct mstream s;
	uint64_t loc = SQFS_INVALID_BLK;
	int ret = 0;

	sb->frag_table_start = SQFS_INVALID_BLK;
	if (c->nfrags) {
		ms_init(&s, codec);
		for (uint32_t i = 0; i < c->nfrags && !ret; i++) {
			struct sqfs_fragment_entry e = c->frags[i];
			sqfs_fragment_entry_swap(&e);
			ret = ms_put(&s, &e, sizeof(e));
		}
		ret = ret ? wr_error(c, ret, "out of memory") :
			    put_table(c, &s, &loc);
		ms_free(&s);
		if (ret)
			return ret;
		sb->frag_table_start = loc;
	}
	ms_init(&s, codec);
	for (uint32_t i = 0; i < m->count && !ret; i++) {
		uint64_t ref = sqfs_le64(m->exports[i]);
		ret = ms_put(&s, &ref, 8);
	}
	ret = ret ? wr_error(c, ret, "out of memory") : put_table(c, &s, &loc);
	ms_free(&s);
	if (ret)
		return ret;
	sb->export_table_start = loc;
	ms_init(&s, codec);
	for (uint32_t i = 0; i < m->ids.n && !ret; i++) {
		uint32_t id = sqfs_le32(m->ids.v[i]);
		ret = ms_put(&s, &id, 4);
	}
	ret = ret ? wr_error(c, ret, "out of memory") : put_table(c, &s, &loc);
	ms_free(&s);
	if (ret)
		return ret;
	sb->id_table_start = loc;
	sb->xattr_id_table_start = SQFS_INVALID_BLK;
	if (c->nxsets) {
		ret = put_xattrs(c, codec, &loc);
		sb->xattr_id_table_start = loc;
	}
	return ret;
}

int wr_write_meta(struct wctx *c, struct sqfs_super *sb)
{
	struct meta m = { .c = c };
	struct sqfs_codec *codec = sqfs_codec_new(&c->o->codec);
	int ret;

	if (!codec)
		return wr_error(c, -ENOMEM, "cannot set up the compressor");
	ms_init(&m.inodes, codec);
	ms_init(&m.dirs, codec);
	number_inodes(&m, c->root);
	m.exports = calloc(m.count, sizeof(*m.exports));
	if (!m.exports) {
		ret = wr_error(c, -ENOMEM, "out of memory");
		goto out;
	}
	ret = write_tree(&m, c->root);
	if (ret) {
		if (!c->err[0])
			wr_error(c, ret, "cannot build the inode table");
		goto out;
	}
	uint64_t loc = 0;
	ret = put_stream(c, &m.inodes, &loc);
	sb->inode_table_start = loc;
	if (!ret)
		ret = put_stream(c, &m.dirs, &loc);
	sb->dir_table_start = loc;
	if (!ret)
		ret = put_tables(c, &m, codec, sb);
	if (ret)
		goto out;
	sb->inode_count = m.count;
	sb->root_inode_ref = c->root->inode_ref;
	sb->id_count = (uint16_t)m.ids.n;
	sb->frag_count = c->nfrags;
	sb->mod_time = c->o->mtime >= 0 ? (uint32_t)c->o->mtime : m.max_mtime;
	c->ninodes = m.count;
	c->st->inodes = m.count;
	c->st->ids = m.ids.n;
	c->st->fragments = c->nfrags;
	c->st->xattr_ids = c->nxsets;
out:
	ms_free(&m.inodes);
	ms_free(&m.dirs);
	free(m.ids.v);
	free(m.ids.hash);
	free(m.exports);
	sqfs_codec_free(codec);
	return ret;
}
