/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * SquashFS 4.0 on-disk format: the one place that knows it.
 *
 * Every multi-byte field on disk is little-endian.  The structs below are the on-disk
 * layout (packed, fields named as in the public format description) and hold on-disk
 * byte order; convert at the edge with the sqfs_*_to_host()/sqfs_*_to_disk() helpers (or the
 * scalar sqfs_le16/32/64 macros) right after reading / right before writing.  Nothing past
 * the edge should see a little-endian value.
 *
 * See Documentation/squashfs-format.md for how strata writes each structure.
 */
#ifndef STRATA_SQUASHFS_FORMAT_H
#define STRATA_SQUASHFS_FORMAT_H

#include <stdint.h>
#include <endian.h>

/* ---- scalar endian helpers (same function both ways) --------------------------------- */
#define sqfs_le16(x) ((uint16_t)htole16((uint16_t)(x)))
#define sqfs_le32(x) ((uint32_t)htole32((uint32_t)(x)))
#define sqfs_le64(x) ((uint64_t)htole64((uint64_t)(x)))

/* ---- superblock --------------------------------------------------------------------- */
#define SQFS_MAGIC            0x73717368u   /* "hsqs" read as a little-endian u32 */
#define SQFS_VERSION_MAJOR    4
#define SQFS_VERSION_MINOR    0
#define SQFS_SUPER_SIZE       96

#define SQFS_MIN_BLOCK_LOG    12            /* 4 KiB */
#define SQFS_MAX_BLOCK_LOG    20            /* 1 MiB */
#define SQFS_DEFAULT_BLOCK_LOG 17           /* 128 KiB */
#define SQFS_DEVBLK_SIZE      4096          /* images are padded to a multiple of this */

/* Table locations that are absent hold all ones. */
#define SQFS_INVALID_BLK      0xFFFFFFFFFFFFFFFFull
#define SQFS_INVALID_FRAG     0xFFFFFFFFu
#define SQFS_INVALID_XATTR    0xFFFFFFFFu

/* superblock flags */
#define SQFS_FLAG_UNCOMPRESSED_INODES    0x0001
#define SQFS_FLAG_UNCOMPRESSED_DATA      0x0002
#define SQFS_FLAG_CHECK                  0x0004  /* unused in 4.0 */
#define SQFS_FLAG_UNCOMPRESSED_FRAGMENTS 0x0008
#define SQFS_FLAG_NO_FRAGMENTS           0x0010
#define SQFS_FLAG_ALWAYS_FRAGMENTS       0x0020
#define SQFS_FLAG_DUPLICATES             0x0040  /* data was deduplicated */
#define SQFS_FLAG_EXPORTABLE             0x0080  /* an export (NFS lookup) table exists */
#define SQFS_FLAG_UNCOMPRESSED_XATTRS    0x0100
#define SQFS_FLAG_NO_XATTRS              0x0200
#define SQFS_FLAG_COMPRESSOR_OPTIONS     0x0400  /* options metadata block follows superblock */
#define SQFS_FLAG_UNCOMPRESSED_IDS       0x0800

/* compressor ids */
enum sqfs_compressor_id {
	SQFS_COMP_GZIP = 1,
	SQFS_COMP_LZMA = 2,
	SQFS_COMP_LZO  = 3,
	SQFS_COMP_XZ   = 4,
	SQFS_COMP_LZ4  = 5,
	SQFS_COMP_ZSTD = 6,
};

struct sqfs_super {
	uint32_t magic;
	uint32_t inode_count;
	uint32_t mod_time;              /* seconds since the epoch, unsigned */
	uint32_t block_size;
	uint32_t frag_count;            /* fragment table entries */
	uint16_t compressor;            /* enum sqfs_compressor_id */
	uint16_t block_log;             /* log2(block_size) */
	uint16_t flags;                 /* SQFS_FLAG_* */
	uint16_t id_count;              /* entries in the uid/gid table */
	uint16_t version_major;
	uint16_t version_minor;
	uint64_t root_inode_ref;        /* see SQFS_REF() */
	uint64_t bytes_used;            /* image size before padding */
	uint64_t id_table_start;        /* -> u64 index of id metadata blocks */
	uint64_t xattr_id_table_start;  /* -> struct sqfs_xattr_id_table, or INVALID */
	uint64_t inode_table_start;
	uint64_t dir_table_start;
	uint64_t frag_table_start;      /* -> u64 index of fragment metadata blocks, or INVALID */
	uint64_t export_table_start;    /* -> u64 index of export metadata blocks, or INVALID */
} __attribute__((packed));

_Static_assert(sizeof(struct sqfs_super) == SQFS_SUPER_SIZE, "superblock is 96 bytes");

/* ---- metadata blocks ---------------------------------------------------------------- */
/*
 * Inodes, directories and all tables live in "metadata blocks": a u16 header followed by
 * at most 8 KiB of payload.  Header bit 15 set = payload stored uncompressed; the low 15
 * bits are the stored payload size.  Every block but the last of a stream holds exactly
 * 8 KiB uncompressed, which is what makes (block, offset) references work.
 */
#define SQFS_META_SIZE               8192
#define SQFS_META_UNCOMPRESSED       0x8000
#define SQFS_META_SIZE_MASK          0x7FFF
#define SQFS_META_MAX_DISK           (2 + SQFS_META_SIZE)

/* A reference into the inode (or directory) table: byte offset of the metadata block
 * from the table start (upper 48 bits) and offset inside its uncompressed payload. */
#define SQFS_REF(block, offset)      (((uint64_t)(block) << 16) | ((offset) & 0xFFFF))
#define SQFS_REF_BLOCK(ref)          ((uint64_t)(ref) >> 16)
#define SQFS_REF_OFFSET(ref)         ((unsigned)((ref) & 0xFFFF))

/* Lookup tables (id, fragment, export, xattr id) are an array of entries packed into
 * metadata blocks plus a u64 array of those blocks' absolute locations. */
#define SQFS_TABLE_BLOCKS(bytes)     (((bytes) + SQFS_META_SIZE - 1) / SQFS_META_SIZE)

/* ---- data blocks -------------------------------------------------------------------- */
/* Block size word (file block list, fragment entry): bit 24 set = stored uncompressed;
 * low 24 bits = size on disk.  A size of 0 in a file's block list is a hole (sparse). */
#define SQFS_BLOCK_UNCOMPRESSED      (1u << 24)
#define SQFS_BLOCK_SIZE_MASK         0x00FFFFFFu
#define SQFS_BLOCK_SIZE(w)           ((w) & SQFS_BLOCK_SIZE_MASK)
#define SQFS_BLOCK_IS_RAW(w)         (((w) & SQFS_BLOCK_UNCOMPRESSED) != 0)

/* ---- inodes ------------------------------------------------------------------------- */
enum sqfs_inode_type {
	SQFS_INODE_DIR        = 1,
	SQFS_INODE_FILE       = 2,
	SQFS_INODE_SYMLINK    = 3,
	SQFS_INODE_BDEV       = 4,
	SQFS_INODE_CDEV       = 5,
	SQFS_INODE_FIFO       = 6,
	SQFS_INODE_SOCKET     = 7,
	SQFS_INODE_EXT_DIR    = 8,
	SQFS_INODE_EXT_FILE   = 9,
	SQFS_INODE_EXT_SYMLINK = 10,
	SQFS_INODE_EXT_BDEV   = 11,
	SQFS_INODE_EXT_CDEV   = 12,
	SQFS_INODE_EXT_FIFO   = 13,
	SQFS_INODE_EXT_SOCKET = 14,
};
#define SQFS_INODE_EXT_OFFSET 7   /* extended type = basic type + 7 */

/* Common header of every inode. */
struct sqfs_inode_header {
	uint16_t inode_type;     /* enum sqfs_inode_type */
	uint16_t permissions;    /* mode & 07777 (type bits live in inode_type) */
	uint16_t uid_idx;        /* index into the id table */
	uint16_t gid_idx;
	uint32_t mtime;
	uint32_t inode_number;   /* 1..inode_count */
} __attribute__((packed));

struct sqfs_inode_dir {          /* type 1 */
	uint32_t block_index;    /* dir table block, relative to dir_table_start */
	uint32_t link_count;
	uint16_t file_size;      /* listing bytes + 3 (for "." and "..") */
	uint16_t block_offset;   /* offset in the uncompressed block */
	uint32_t parent_inode;
} __attribute__((packed));

struct sqfs_inode_ext_dir {      /* type 8; followed by index_count sqfs_dir_index */
	uint32_t link_count;
	uint32_t file_size;
	uint32_t block_index;
	uint32_t parent_inode;
	uint16_t index_count;
	uint16_t block_offset;
	uint32_t xattr_idx;
} __attribute__((packed));

struct sqfs_inode_file {         /* type 2; followed by the u32 block size list */
	uint32_t blocks_start;   /* absolute location of the first data block */
	uint32_t fragment_index; /* SQFS_INVALID_FRAG if no fragment */
	uint32_t fragment_offset;/* offset of the tail in the uncompressed fragment block */
	uint32_t file_size;
} __attribute__((packed));

struct sqfs_inode_ext_file {     /* type 9; followed by the u32 block size list */
	uint64_t blocks_start;
	uint64_t file_size;
	uint64_t sparse;         /* bytes not stored because they were holes */
	uint32_t link_count;
	uint32_t fragment_index;
	uint32_t fragment_offset;
	uint32_t xattr_idx;
} __attribute__((packed));

/* Number of entries in a file's block list. */
static inline uint64_t sqfs_file_block_count(uint64_t size, uint32_t block_size, int has_frag)
{
	return has_frag ? size / block_size : (size + block_size - 1) / block_size;
}

struct sqfs_inode_symlink {      /* types 3 and 10; followed by target_size bytes (no NUL),
				  * then for type 10 a u32 xattr_idx */
	uint32_t link_count;
	uint32_t target_size;
} __attribute__((packed));

struct sqfs_inode_dev {          /* types 4, 5 */
	uint32_t link_count;
	uint32_t device_number;  /* see sqfs_encode_dev() */
} __attribute__((packed));

struct sqfs_inode_ext_dev {      /* types 11, 12 */
	uint32_t link_count;
	uint32_t device_number;
	uint32_t xattr_idx;
} __attribute__((packed));

struct sqfs_inode_ipc {          /* types 6, 7 */
	uint32_t link_count;
} __attribute__((packed));

struct sqfs_inode_ext_ipc {      /* types 13, 14 */
	uint32_t link_count;
	uint32_t xattr_idx;
} __attribute__((packed));

/* Device numbers use the Linux "new" encoding in 32 bits (what the kernel's
 * new_decode_dev() expects): minor low 8 bits | major << 8 | minor high bits << 12. */
static inline uint32_t sqfs_encode_dev(uint32_t major, uint32_t minor)
{
	return (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFFu) << 12);
}
static inline uint32_t sqfs_dev_major(uint32_t d) { return (d >> 8) & 0xFFF; }
static inline uint32_t sqfs_dev_minor(uint32_t d) { return (d & 0xFF) | ((d >> 12) & 0xFFF00); }

/* ---- directories -------------------------------------------------------------------- */
/*
 * A directory listing is a run of headers, each followed by 1..256 entries whose inodes
 * all live in the same inode metadata block and whose inode numbers are within a signed
 * 16-bit distance of the header's.  Entries are sorted by name (byte order).
 */
#define SQFS_DIR_MAX_ENTRIES   256
#define SQFS_NAME_MAX          256       /* name_size is stored as len - 1 in a u16 */
#define SQFS_DIR_LISTING_EXTRA 3         /* file_size counts "." and ".." as 3 bytes */

struct sqfs_dir_header {
	uint32_t count;          /* entries following - 1 */
	uint32_t start;          /* inode metadata block, relative to inode_table_start */
	uint32_t inode_number;   /* base for the entries' inode_offset */
} __attribute__((packed));

struct sqfs_dir_entry {          /* followed by name_size + 1 bytes of name, no NUL */
	uint16_t offset;         /* inode's offset in its uncompressed metadata block */
	int16_t  inode_offset;   /* inode_number - header.inode_number */
	uint16_t type;           /* basic inode type, even for extended inodes */
	uint16_t name_size;      /* strlen(name) - 1 */
} __attribute__((packed));

/* Extended directories carry an index so lookups can skip whole metadata blocks: one
 * entry per header that starts in a later metadata block than the listing's first. */
struct sqfs_dir_index {          /* followed by name_size + 1 bytes: first name of that header */
	uint32_t index;          /* byte offset of the header from the listing start */
	uint32_t start;          /* its dir table block, relative to dir_table_start */
	uint32_t name_size;      /* strlen(name) - 1 */
} __attribute__((packed));

/* ---- fragments ---------------------------------------------------------------------- */
struct sqfs_fragment_entry {
	uint64_t start;          /* absolute location of the fragment block */
	uint32_t size;           /* block size word: bit 24 = uncompressed */
	uint32_t unused;
} __attribute__((packed));
#define SQFS_FRAGS_PER_META (SQFS_META_SIZE / sizeof(struct sqfs_fragment_entry))

/* ---- id table: u32 uid/gid values, indexed by the inodes' uid_idx/gid_idx ------------ */
#define SQFS_IDS_PER_META   (SQFS_META_SIZE / sizeof(uint32_t))
#define SQFS_MAX_IDS        65536

/* ---- export table: u64 inode ref per inode number (entry n-1 for inode n) ------------ */
#define SQFS_EXPORTS_PER_META (SQFS_META_SIZE / sizeof(uint64_t))

/* ---- extended attributes ------------------------------------------------------------ */
/*
 * Key/value pairs live in metadata blocks starting at xattr_table_start.  An inode's
 * xattr_idx selects a struct sqfs_xattr_id, which points at its first key and gives how
 * many pairs follow.  The superblock's xattr_id_table_start points at a
 * struct sqfs_xattr_id_table followed by the u64 locations of the xattr-id metadata blocks;
 * it is the last thing in the image.
 */
enum sqfs_xattr_prefix {
	SQFS_XATTR_USER     = 0,
	SQFS_XATTR_TRUSTED  = 1,
	SQFS_XATTR_SECURITY = 2,
};
#define SQFS_XATTR_PREFIX_MASK 0x00FF
#define SQFS_XATTR_VALUE_OOL   0x0100    /* value is a u64 ref to a value stored elsewhere */

struct sqfs_xattr_key {          /* followed by name_size bytes: name without its prefix */
	uint16_t type;           /* enum sqfs_xattr_prefix | SQFS_XATTR_VALUE_OOL */
	uint16_t name_size;
} __attribute__((packed));

struct sqfs_xattr_value {        /* followed by value_size bytes */
	uint32_t value_size;
} __attribute__((packed));

struct sqfs_xattr_id {
	uint64_t xattr;          /* SQFS_REF(block rel. to xattr_table_start, offset) */
	uint32_t count;          /* key/value pairs */
	uint32_t size;           /* bytes of its key/value pairs as stored */
} __attribute__((packed));
#define SQFS_XATTR_IDS_PER_META (SQFS_META_SIZE / sizeof(struct sqfs_xattr_id))

struct sqfs_xattr_id_table {     /* followed by u64 locations of the id metadata blocks */
	uint64_t xattr_table_start;
	uint32_t xattr_ids;
	uint32_t unused;
} __attribute__((packed));

/* ---- compressor options (a metadata block right after the superblock) --------------- */
struct sqfs_comp_opts_gzip {
	uint32_t compression_level;  /* 1..9 */
	uint16_t window_size;        /* 8..15 */
	uint16_t strategies;
} __attribute__((packed));

struct sqfs_comp_opts_xz {
	uint32_t dictionary_size;
	uint32_t executable_filters;
} __attribute__((packed));

#define SQFS_LZ4_LEGACY   1          /* the only lz4 stream version */
#define SQFS_LZ4_HC       1          /* flags bit: compressed with LZ4 HC */
struct sqfs_comp_opts_lz4 {
	uint32_t version;
	uint32_t flags;
} __attribute__((packed));

struct sqfs_comp_opts_zstd {
	uint32_t compression_level;
} __attribute__((packed));

struct sqfs_comp_opts_lzo {
	uint32_t algorithm;
	uint32_t compression_level;
} __attribute__((packed));

/* ---- struct converters: in place, same code both ways -------------------------------- */
static inline void sqfs_super_swap(struct sqfs_super *s)
{
	s->magic = sqfs_le32(s->magic);
	s->inode_count = sqfs_le32(s->inode_count);
	s->mod_time = sqfs_le32(s->mod_time);
	s->block_size = sqfs_le32(s->block_size);
	s->frag_count = sqfs_le32(s->frag_count);
	s->compressor = sqfs_le16(s->compressor);
	s->block_log = sqfs_le16(s->block_log);
	s->flags = sqfs_le16(s->flags);
	s->id_count = sqfs_le16(s->id_count);
	s->version_major = sqfs_le16(s->version_major);
	s->version_minor = sqfs_le16(s->version_minor);
	s->root_inode_ref = sqfs_le64(s->root_inode_ref);
	s->bytes_used = sqfs_le64(s->bytes_used);
	s->id_table_start = sqfs_le64(s->id_table_start);
	s->xattr_id_table_start = sqfs_le64(s->xattr_id_table_start);
	s->inode_table_start = sqfs_le64(s->inode_table_start);
	s->dir_table_start = sqfs_le64(s->dir_table_start);
	s->frag_table_start = sqfs_le64(s->frag_table_start);
	s->export_table_start = sqfs_le64(s->export_table_start);
}
#define sqfs_super_to_host(s) sqfs_super_swap(s)
#define sqfs_super_to_disk(s) sqfs_super_swap(s)

static inline void sqfs_inode_header_swap(struct sqfs_inode_header *h)
{
	h->inode_type = sqfs_le16(h->inode_type);
	h->permissions = sqfs_le16(h->permissions);
	h->uid_idx = sqfs_le16(h->uid_idx);
	h->gid_idx = sqfs_le16(h->gid_idx);
	h->mtime = sqfs_le32(h->mtime);
	h->inode_number = sqfs_le32(h->inode_number);
}

static inline void sqfs_inode_dir_swap(struct sqfs_inode_dir *d)
{
	d->block_index = sqfs_le32(d->block_index);
	d->link_count = sqfs_le32(d->link_count);
	d->file_size = sqfs_le16(d->file_size);
	d->block_offset = sqfs_le16(d->block_offset);
	d->parent_inode = sqfs_le32(d->parent_inode);
}

static inline void sqfs_inode_ext_dir_swap(struct sqfs_inode_ext_dir *d)
{
	d->link_count = sqfs_le32(d->link_count);
	d->file_size = sqfs_le32(d->file_size);
	d->block_index = sqfs_le32(d->block_index);
	d->parent_inode = sqfs_le32(d->parent_inode);
	d->index_count = sqfs_le16(d->index_count);
	d->block_offset = sqfs_le16(d->block_offset);
	d->xattr_idx = sqfs_le32(d->xattr_idx);
}

static inline void sqfs_inode_file_swap(struct sqfs_inode_file *f)
{
	f->blocks_start = sqfs_le32(f->blocks_start);
	f->fragment_index = sqfs_le32(f->fragment_index);
	f->fragment_offset = sqfs_le32(f->fragment_offset);
	f->file_size = sqfs_le32(f->file_size);
}

static inline void sqfs_inode_ext_file_swap(struct sqfs_inode_ext_file *f)
{
	f->blocks_start = sqfs_le64(f->blocks_start);
	f->file_size = sqfs_le64(f->file_size);
	f->sparse = sqfs_le64(f->sparse);
	f->link_count = sqfs_le32(f->link_count);
	f->fragment_index = sqfs_le32(f->fragment_index);
	f->fragment_offset = sqfs_le32(f->fragment_offset);
	f->xattr_idx = sqfs_le32(f->xattr_idx);
}

static inline void sqfs_inode_symlink_swap(struct sqfs_inode_symlink *s)
{
	s->link_count = sqfs_le32(s->link_count);
	s->target_size = sqfs_le32(s->target_size);
}

static inline void sqfs_inode_ext_dev_swap(struct sqfs_inode_ext_dev *d)
{
	d->link_count = sqfs_le32(d->link_count);
	d->device_number = sqfs_le32(d->device_number);
	d->xattr_idx = sqfs_le32(d->xattr_idx);
}

static inline void sqfs_inode_dev_swap(struct sqfs_inode_dev *d)
{
	d->link_count = sqfs_le32(d->link_count);
	d->device_number = sqfs_le32(d->device_number);
}

static inline void sqfs_inode_ext_ipc_swap(struct sqfs_inode_ext_ipc *i)
{
	i->link_count = sqfs_le32(i->link_count);
	i->xattr_idx = sqfs_le32(i->xattr_idx);
}

static inline void sqfs_dir_header_swap(struct sqfs_dir_header *h)
{
	h->count = sqfs_le32(h->count);
	h->start = sqfs_le32(h->start);
	h->inode_number = sqfs_le32(h->inode_number);
}

static inline void sqfs_dir_entry_swap(struct sqfs_dir_entry *e)
{
	e->offset = sqfs_le16(e->offset);
	e->inode_offset = (int16_t)sqfs_le16((uint16_t)e->inode_offset);
	e->type = sqfs_le16(e->type);
	e->name_size = sqfs_le16(e->name_size);
}

static inline void sqfs_dir_index_swap(struct sqfs_dir_index *i)
{
	i->index = sqfs_le32(i->index);
	i->start = sqfs_le32(i->start);
	i->name_size = sqfs_le32(i->name_size);
}

static inline void sqfs_fragment_entry_swap(struct sqfs_fragment_entry *f)
{
	f->start = sqfs_le64(f->start);
	f->size = sqfs_le32(f->size);
	f->unused = sqfs_le32(f->unused);
}

static inline void sqfs_xattr_key_swap(struct sqfs_xattr_key *k)
{
	k->type = sqfs_le16(k->type);
	k->name_size = sqfs_le16(k->name_size);
}

static inline void sqfs_xattr_id_swap(struct sqfs_xattr_id *x)
{
	x->xattr = sqfs_le64(x->xattr);
	x->count = sqfs_le32(x->count);
	x->size = sqfs_le32(x->size);
}

static inline void sqfs_xattr_id_table_swap(struct sqfs_xattr_id_table *t)
{
	t->xattr_table_start = sqfs_le64(t->xattr_table_start);
	t->xattr_ids = sqfs_le32(t->xattr_ids);
	t->unused = sqfs_le32(t->unused);
}

/* Name prefix for an xattr key type, or NULL for an unknown type. */
static inline const char *sqfs_xattr_prefix_name(unsigned type)
{
	switch (type & SQFS_XATTR_PREFIX_MASK) {
	case SQFS_XATTR_USER:     return "user.";
	case SQFS_XATTR_TRUSTED:  return "trusted.";
	case SQFS_XATTR_SECURITY: return "security.";
	}
	return 0;
}

#endif
