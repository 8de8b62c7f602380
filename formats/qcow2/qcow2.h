/*
 * blockctl - qcow2 driver, private header
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * On-disk format: QEMU's docs/interop/qcow2.txt.  All on-disk integers are
 * big-endian; tables are kept in memory in host order.
 *
 * Locking: two mutexes and the guest range locks.
 *
 *   s->lock  the metadata lock.  Whoever changes metadata holds it:
 *            allocation and refcount changes, L1/L2 updates, writing
 *            dirty tables back, flushes and the application of queued
 *            refcount decrements, header and bitmap updates.  It is held
 *            across the syncs that order those updates, so there is one
 *            writer of metadata at a time and "written but not yet
 *            synced" is a state only the holder can see.  It is the
 *            outer lock, and kept its name: the control operations in
 *            header.c, bitmap.c and check.c take it (pthread_mutex_lock)
 *            around whole operations, which must stay atomic against
 *            every other metadata change.  cluster.c takes it through
 *            qcow2_meta_lock, which records the owner.
 *   s->map   the mapping lock, inside s->lock.  It guards what readers
 *            look at: the L1 table, the refcount table, the caches'
 *            structure and the contents of cached tables, file_size, the
 *            range list and the reads in flight.  Metadata changers hold
 *            it too while they touch those, and release it (never
 *            s->lock) around every sync (qcow2_order_sync does that) and
 *            around data I/O.  It is recursive per thread (qcow2_map_lock),
 *            so the functions below take it themselves whatever their
 *            caller holds.
 *
 * Lock order: guest range lock -> s->lock -> s->map.  Ranges are waited
 * for under s->map only (never while holding s->lock), and a thread that
 * holds s->map never waits for s->lock.
 *
 * Readers (guest reads, block status) and writes that only overwrite
 * data in place (the L2 entry allocated, owned, unchanged) take s->map
 * only, so a sync never stalls them.  A reader's cache miss never writes
 * anything back: it takes a clean victim, or reads the table into a
 * private buffer (a table that is not cached is up to date on disk).
 * Every pointer into a cache entry that a metadata changer keeps across
 * a sync is pinned, and an eviction that synced looks at the cache
 * again afterwards (a reader may have loaded the table meanwhile).
 *
 * Reads in flight: a guest read registers the host range it mapped
 * (s->inflight, under s->map) until its data I/O is done, and
 * qcow2_apply_decrefs leaves a decrement queued while a registered read
 * overlaps its clusters, so a cluster freed by a discard or a copy on
 * write is not reused (and overwritten with other data) under a read
 * that mapped it before.  The next flush applies it.
 *
 * Writers additionally take a range lock on the guest clusters they
 * change (s->ranges), so two requests never allocate or rewrite the same
 * cluster at once.
 *
 * Crash ordering (no lazy refcounts): a refcount increment reaches the
 * disk before any table that references the cluster; a reference is
 * removed on disk before the refcount decrement (decrements are queued in
 * s->decref and applied after the tables are written back).  Killing the
 * process at any instant therefore leaves at worst leaked clusters.  For
 * power failures, s->rb_unsynced and s->tables_unsynced tell whether a
 * refcount block, or an L2 table or L1 entry, was written since the last
 * sync: the write of a table waits for a sync of the refcount blocks, the
 * decrements for a sync of the tables.
 *
 * The header switches from old to new in one sector write (header.c,
 * write_header_with), so a crash or power cut leaves one or the other.
 * Once a header switch was attempted and failed (the write or its sync),
 * either header may be on disk: what both reference stays allocated
 * (leaked, never freed), and if the old header cannot be put back the
 * image takes no further writes (s->unsure).
 */
#ifndef BLOCKCTL_FORMATS_QCOW2_H
#define BLOCKCTL_FORMATS_QCOW2_H

#include "lib/compiler.h"
#include "lib/block.h"

#include <pthread.h>

#define QCOW2_MAGIC 0x514649fbu          /* "QFI\xfb" */
#define QCOW2_V2_HEADER_SIZE 72
#define QCOW2_V3_HEADER_SIZE 104
#define QCOW2_HEADER_SIZE 112            /* with compression_type, padded */

/* qcow2.txt "Header": incompatible feature bits */
#define QCOW2_INCOMPAT_DIRTY (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1fULL
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)
/* data-file-raw is meaningless without an external data file (refused): a writer clears it */
#define QCOW2_AUTOCLEAR_KNOWN QCOW2_AUTOCLEAR_BITMAPS

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension types */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* L1 / L2 entry bits */
#define QCOW2_OFLAG_COPIED (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW2_OFLAG_ZERO (1ULL << 0)
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ULL
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ULL
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ULL
#define QCOW2_L1E_RESERVED 0x7f000000000001ffULL
#define QCOW2_L2E_STD_RESERVED 0x3f000000000001feULL

/* Extended L2: 32 subclusters; bitmap bits 0-31 allocated, 32-63 zero */
#define QCOW2_EXTL2_SUBCLUSTERS 32
#define QCOW2_BITMAP_ALL_ALLOC 0x00000000ffffffffULL
#define QCOW2_BITMAP_ALL_ZERO 0xffffffff00000000ULL

/* Limits (as QEMU bounds them) */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOTS_BYTES (1024u * QCOW2_MAX_SNAPSHOTS)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_BITMAPS 65535
#define QCOW2_MAX_BITMAP_DIR_BYTES (64u << 20)
#define QCOW2_MAX_BITMAP_NAME 1023

/* What a guest (sub)cluster is, from its L2 entry */
enum qcow2_sc_type {
    QCOW2_SC_UNALLOC_PLAIN,   /* reads from backing, no host cluster */
    QCOW2_SC_UNALLOC_ALLOC,   /* reads from backing, host cluster exists (ext L2) */
    QCOW2_SC_ZERO_PLAIN,      /* reads zero, no host cluster */
    QCOW2_SC_ZERO_ALLOC,      /* reads zero, host cluster kept */
    QCOW2_SC_NORMAL,          /* data at host offset */
    QCOW2_SC_COMPRESSED,      /* whole cluster compressed */
    QCOW2_SC_INVALID,         /* contradictory bits */
};

struct qcow2_cache_entry {
    uint64_t offset;          /* host offset of the table, 0: free slot */
    uint8_t *data;            /* one cluster, on-disk byte order */
    uint64_t lru;
    unsigned ref;             /* pinned while > 0 */
    bool dirty;
    int hnext;                /* hash chain */
};

struct qcow2_cache {
    const char *name;         /* "L2" or "refcount block" */
    size_t n;
    struct qcow2_cache_entry *e;
    int *hash;                /* nbuckets heads */
    size_t nbuckets;
    uint64_t lru_clock;
    size_t nr_dirty;
    uint64_t table_size;      /* bytes per table (one cluster) */
    size_t last;              /* entry returned last (put/dirty look there first) */
};

struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

struct qcow2_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    char *id;
    char *name;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint32_t vm_state_size;
    uint32_t extra_size;
    uint8_t *extra;           /* extra data as stored */
};

struct dirty_bitmap;

struct qcow2_bitmap {
    uint64_t table_offset;
    uint32_t table_size;      /* entries */
    uint32_t flags;
    uint8_t type;
    uint8_t granularity_bits;
    char *name;
    uint32_t extra_size;
    uint8_t *extra;
    /* Only while storing: the block layer's bitmap (lib/dirty.c owns it). */
    struct dirty_bitmap *bm;
    bool modified;            /* bm differs from the stored table */
};

struct qcow2_decref {
    uint64_t offset;          /* cluster-aligned host offset */
    uint64_t count;           /* clusters */
};

struct qcow2_range {
    uint64_t start, end;      /* guest cluster indexes [start, end) */
    struct qcow2_range *next;
};

/* A guest read between mapping and the end of its data I/O. */
struct qcow2_inflight {
    uint64_t start, end;      /* host bytes [start, end) */
    struct qcow2_inflight *next;
};

struct qcow2 {
    struct bdev *bd;
    const char *create_name;   /* while creating (no bd yet): the file name */
    int fd;
    pthread_mutex_t lock;      /* the metadata lock (see above) */
    pthread_mutex_t map;       /* the mapping lock (see above) */
    uintptr_t map_owner;       /* thread holding map (atomic), 0 if none */
    unsigned map_depth;
    uintptr_t meta_owner;      /* thread holding lock through qcow2_meta_lock (atomic) */
    uint64_t map_releases;     /* times a sync released map (under map) */
    pthread_cond_t range_cond; /* with map */
    struct qcow2_range *ranges;
    struct qcow2_inflight *inflight;

    /* header as read (host order) */
    uint32_t version;
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint64_t size;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_offset;
    uint64_t reftable_offset;
    uint32_t reftable_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompat;
    uint64_t compat;
    uint64_t autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    uint8_t *unknown_header;  /* bytes 112..header_length-1, preserved */
    uint32_t unknown_header_len;

    /* derived */
    uint32_t refcount_bits;
    uint64_t refcount_max;
    uint32_t refblock_bits;   /* log2(refcount entries per block) */
    uint32_t l2_bits;         /* log2(entries per L2 table) */
    uint32_t l2_entries;
    uint32_t l2_entry_size;   /* 8, or 16 with extended L2 */
    bool ext_l2;
    uint32_t sc_bits;         /* log2(subclusters per cluster): 0 or 5 */
    uint64_t sc_size;
    uint32_t csize_shift;
    uint64_t csize_mask;
    uint64_t coffset_mask;

    /* tables */
    uint64_t *l1;
    uint64_t *reftable;
    uint64_t reftable_size;   /* entries */
    struct qcow2_cache l2_cache;
    struct qcow2_cache rb_cache;

    /* extensions */
    char *backing_fmt;        /* from the extension, or NULL */
    struct qcow2_ext *unknown_ext;
    size_t nr_unknown_ext;
    bool has_bitmaps_ext;
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_size;
    uint64_t bitmap_dir_offset;
    struct qcow2_bitmap *bitmaps;
    bool bitmaps_loaded_rw;   /* we marked the bitmaps in use on disk */
    bool bitmaps_track;       /* writes mark the bitmaps: stored ones stay in use */

    struct qcow2_snapshot *snapshots;

    /* allocation */
    uint64_t free_cluster_index;
    uint64_t free_byte_offset; /* for packing compressed clusters */
    uint64_t file_size;        /* current end of file */
    struct qcow2_decref *decref;
    size_t nr_decref, cap_decref;
    /* written since the last sync (under map) */
    bool rb_unsynced;          /* refcount blocks */
    bool tables_unsynced;      /* L2 tables, L1 entries */
    bool data_unsynced;        /* data that a changed L2 entry points to (a
                                * sync first: an L2 entry on disk before its
                                * data would show what the cluster held) */

    int prealloc_detected;     /* -1 not checked; 1: metadata preallocation seen */
    bool unordered;            /* BDEV_O_UNORDERED */
    bool kill_safe;            /* BDEV_O_KILL_SAFE */
    struct qcow2_wal *wal;     /* its kill log (wal.c), or NULL */
    bool wal_lost;             /* the log failed: write the caches back */
    bool read_only;
    bool dirty_on_disk;        /* we set the dirty bit */
    bool corrupt;              /* corruption seen: no further writes */
    bool unsure;               /* a header update may or may not be on disk: no
                                * further writes (corrupt is set too) */
    bool check_mode;
    bool eof_zero;             /* check, or BDEV_O_INFO: tables past the end of the file
                                  read as zeroes (as QEMU reads them) */
};

static inline uint64_t qcow2_offset_into_cluster(struct qcow2 *s, uint64_t off)
{
    return off & (s->cluster_size - 1);
}

static inline uint64_t qcow2_size_to_clusters(struct qcow2 *s, uint64_t size)
{
    return (size + s->cluster_size - 1) >> s->cluster_bits;
}

static inline bool qcow2_lazy(struct qcow2 *s)
{
    return s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS;
}

/*
 * A sync that only orders metadata updates for power failures.  Skipped
 * for an image being built (BDEV_O_UNORDERED: a crash makes it garbage
 * anyway); the order of the writes themselves, which is what a killed
 * process leaves behind, is kept either way.  s->map is released while
 * it runs (the caller's pointers into the caches must be pinned).
 */
int qcow2_order_sync(struct qcow2 *s);

/* Locks (cache.c); see the header comment. */
void qcow2_map_lock(struct qcow2 *s);
void qcow2_map_unlock(struct qcow2 *s);
bool qcow2_map_held(struct qcow2 *s);
/* Wait on @cond (used with s->map), which must be held. */
void qcow2_map_wait(struct qcow2 *s, pthread_cond_t *cond);
/* Release s->map completely; returns what qcow2_map_reacquire needs. */
unsigned qcow2_map_release(struct qcow2 *s);
void qcow2_map_reacquire(struct qcow2 *s, unsigned depth);
/* s->lock, not recursive; never with s->map held. */
void qcow2_meta_lock(struct qcow2 *s);
void qcow2_meta_unlock(struct qcow2 *s);
/* Does this thread hold s->lock through qcow2_meta_lock? */
bool qcow2_meta_held(struct qcow2 *s);

/*
 * Test hook (unit tests only; NULL otherwise): called without any lock
 * around each ordering sync, and by a read after each mapping and before
 * its data I/O (@a: guest offset, @b: start of the host range read: the
 * data, or the compressed bytes; 0 if none).
 */
enum qcow2_test_event {
    QCOW2_TEST_SYNC_BEGIN,
    QCOW2_TEST_SYNC_END,
    QCOW2_TEST_READ_MAPPED,
};
extern void (*qcow2_test_hook)(struct qcow2 *s, enum qcow2_test_event ev, uint64_t a,
                               uint64_t b);

/* header.c */
int qcow2_write_header(struct qcow2 *s, struct error **errp);
int qcow2_mark_dirty(struct qcow2 *s);
void qcow2_signal_corruption(struct qcow2 *s, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
int qcow2_header_fits(struct qcow2 *s, const char *backing, const char *backing_fmt);

/* cache.c */
void qcow2_cache_init(struct qcow2_cache *c, const char *name, size_t n, uint64_t cluster_size);
void qcow2_cache_destroy(struct qcow2_cache *c);
/*
 * Get the table at @offset (reading it unless @fresh: then zeroed); pins it.
 * For metadata changers (s->lock held): may write back a dirty victim.
 */
int qcow2_cache_get(struct qcow2 *s, struct qcow2_cache *c, uint64_t offset, bool fresh,
                    uint8_t **table);
/*
 * The same for readers (s->map held, maybe not s->lock): never writes
 * anything back; when every unpinned entry is dirty the table is read into
 * a private buffer instead (*tmp set).  Release with qcow2_cache_put_ro.
 */
int qcow2_cache_get_ro(struct qcow2 *s, struct qcow2_cache *c, uint64_t offset,
                       uint8_t **table, bool *tmp);
void qcow2_cache_put_ro(struct qcow2 *s, struct qcow2_cache *c, uint8_t *table, bool tmp);
void qcow2_cache_put(struct qcow2_cache *c, uint8_t *table);
void qcow2_cache_mark_dirty(struct qcow2_cache *c, uint8_t *table);
/* Write back both caches in the crash-safe order, then apply decrefs (s->lock held). */
int qcow2_flush_metadata(struct qcow2 *s);
/* Write dirty refcount blocks and sync (before pointing tables at new clusters). */
int qcow2_flush_refblocks(struct qcow2 *s);
/* Drop a cached table (the cluster was freed). */
void qcow2_cache_discard(struct qcow2_cache *c, uint64_t offset);
/* Write one dirty table now. */
int qcow2_cache_write_entry(struct qcow2 *s, struct qcow2_cache *c, uint8_t *table);
bool qcow2_cache_is_dirty(struct qcow2_cache *c, const uint8_t *table);
/*
 * Write bytes [@from, @to) of a dirty table now (aligned out to 4 KiB), and
 * call it clean; the whole table if @whole (it held other unwritten changes).
 */
int qcow2_cache_write_range(struct qcow2 *s, struct qcow2_cache *c, uint8_t *table, size_t from,
                            size_t to, bool whole);

/* wal.c: the kill log of a BDEV_O_KILL_SAFE image (see there) */
/* Start one (a writer of a v3 image without lazy refcounts; the dirty bit set). */
void qcow2_wal_open(struct qcow2 *s);
/* Stop it; @remove the file (the image written back, the dirty bit clear). */
void qcow2_wal_close(struct qcow2 *s, bool remove);
/* Record refcount @index of the refblock at @rb_off (refcount table entry @rt_index). */
void qcow2_wal_log_ref(struct qcow2 *s, uint64_t rb_off, uint64_t rt_index, uint64_t index,
                       uint64_t value);
/* Record entries [i0, i0+n) of @l2, the table of L1 entry @l1_index. */
void qcow2_wal_log_l2(struct qcow2 *s, uint64_t l1_index, const uint8_t *l2, unsigned i0,
                      uint64_t n);
/* The caches written back (s->lock held): a new epoch if they are clean. */
void qcow2_wal_flushed(struct qcow2 *s);
/* At an open for writing of an image with the dirty bit: apply a log left by a kill. */
int qcow2_wal_replay(struct qcow2 *s, unsigned *applied);

/* refcount.c */
int qcow2_refcount_init(struct qcow2 *s, struct error **errp);
int qcow2_get_refcount(struct qcow2 *s, uint64_t cluster, uint64_t *refcount);
/* The same for readers (s->map held; see qcow2_cache_get_ro). */
int qcow2_get_refcount_ro(struct qcow2 *s, uint64_t cluster, uint64_t *refcount);
/* Allocate @n contiguous clusters (refcount 1); returns the host offset or -errno. */
int64_t qcow2_alloc_clusters(struct qcow2 *s, uint64_t n);
/* Allocate @bytes inside (possibly shared) clusters for compressed data. */
int64_t qcow2_alloc_bytes(struct qcow2 *s, uint64_t bytes);
/* Change refcounts now (increments; or decrements of unreferenced clusters). */
int qcow2_update_refcount(struct qcow2 *s, uint64_t offset, uint64_t length, int64_t addend);
/* Queue a decrement to apply after the referencing tables are on disk. */
void qcow2_queue_decref(struct qcow2 *s, uint64_t offset, uint64_t count);
/* Apply the queued decrements, except those under a read in flight (kept queued). */
int qcow2_apply_decrefs(struct qcow2 *s);
/* Write refcount entry @index of a refblock (host order value). */
uint64_t qcow2_refblock_get(struct qcow2 *s, const uint8_t *rb, uint64_t index);
void qcow2_refblock_set(struct qcow2 *s, uint8_t *rb, uint64_t index, uint64_t value);
/* Make sure the file is at least @end bytes long in our accounting. */
void qcow2_note_file_end(struct qcow2 *s, uint64_t end);

/* cluster.c */
enum qcow2_sc_type qcow2_sc_type(struct qcow2 *s, uint64_t l2e, uint64_t bitmap, unsigned sc);
uint64_t qcow2_l2_get(struct qcow2 *s, const uint8_t *l2, unsigned i, uint64_t *bitmap);
void qcow2_l2_set(struct qcow2 *s, uint8_t *l2, unsigned i, uint64_t entry, uint64_t bitmap);
int qcow2_write_l1_entry(struct qcow2 *s, uint32_t index);
/* Set and write L1 entry @index; on failure the old value is restored (and rewritten). */
int qcow2_set_l1_entry(struct qcow2 *s, uint32_t index, uint64_t entry);
int qcow2_pread(struct bdev *bd, void *buf, size_t len, uint64_t off);
int qcow2_pwrite(struct bdev *bd, const void *buf, size_t len, uint64_t off, unsigned flags);
int qcow2_pwrite_zeroes(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags);
int qcow2_discard(struct bdev *bd, uint64_t off, uint64_t len);
int qcow2_pwrite_compressed(struct bdev *bd, const void *buf, size_t len, uint64_t off);
int qcow2_make_empty(struct bdev *bd);
int qcow2_truncate(struct bdev *bd, uint64_t size, struct error **errp);
int qcow2_preallocate_grown(struct bdev *bd, uint64_t start, uint64_t end,
                            enum bdev_prealloc mode, struct error **errp);
int qcow2_block_status(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum,
                       uint64_t *map, unsigned *status);
/* Allocate L2 tables and data clusters for [0, size) (preallocation). */
int qcow2_preallocate(struct qcow2 *s, uint64_t size, bool write_zeroes, bool falloc,
                      struct error **errp);
/* The same for the clusters of [start, end) that have nothing allocated yet. */
int qcow2_preallocate_range(struct qcow2 *s, uint64_t start, uint64_t end, bool write_zeroes,
                            bool falloc, struct error **errp);
/* Decompressed-read of the compressed cluster described by @l2e into @out. */
int qcow2_read_compressed(struct qcow2 *s, uint64_t l2e, uint8_t *out);
void qcow2_compressed_range(struct qcow2 *s, uint64_t l2e, uint64_t *off, uint64_t *bytes);

/* compress.c */
/* Returns the compressed size, or -ENOSPC when it does not fit in @dst_len. */
ssize_t qcow2_compress(int type, void *dst, size_t dst_len, const void *src, size_t src_len);
/* Returns 0 when @dst_len bytes were produced, -EIO otherwise. */
int qcow2_decompress(int type, void *dst, size_t dst_len, const void *src, size_t src_len);

/* snapshot.c */
int qcow2_read_snapshots(struct qcow2 *s, struct error **errp);
void qcow2_free_snapshots(struct qcow2 *s);
/* The L1 table of snapshot @i, in host order (the caller frees it); 0 or -errno. */
int qcow2_snapshot_read_l1(struct qcow2 *s, uint32_t i, uint64_t **out);

/* bitmap.c */
int qcow2_read_bitmap_dir(struct qcow2 *s, struct error **errp);
void qcow2_free_bitmaps(struct qcow2 *s);
/* Serialise the bitmaps extension header into @buf (24 bytes). */
void qcow2_bitmap_ext_encode(struct qcow2 *s, uint8_t *buf);
/* Bitmap table entries needed for granularity 2^@gb on this image. */
uint64_t qcow2_bitmap_table_entries(struct qcow2 *s, unsigned gb);
/* Read bitmap @b's data into a new in-memory bitmap. */
int qcow2_bitmap_load(struct qcow2 *s, struct qcow2_bitmap *b, struct dirty_bitmap **out);
/*
 * At open: register the stored bitmaps with the block layer (lib/dirty.c);
 * with @track (read-write), load the usable ones and mark them in use.
 */
int qcow2_bitmaps_register(struct qcow2 *s, bool track, struct error **errp);
/* Index of stored bitmap @name in s->bitmaps, or -1 (under s->lock). */
int qcow2_find_bitmap(struct qcow2 *s, const char *name);
/* The driver's bitmap hooks (struct format_driver) */
int qcow2_bitmap_load_hook(struct bdev *bd, const char *name, struct dirty_bitmap **out,
                           struct error **errp);
int qcow2_bitmap_check_add(struct bdev *bd, const char *name, uint64_t granularity,
                           struct error **errp);
int qcow2_bitmap_check_list(struct bdev *bd, const char **names, size_t n,
                            struct error **errp);
int qcow2_bitmap_store_hook(struct bdev *bd, bool in_use, struct error **errp);

/* check.c */
int qcow2_check(struct bdev *bd, struct check_result *res, unsigned fix, struct error **errp);

/* measure.c */
int qcow2_measure(const struct optlist *o, struct bdev *in, struct measure_info *out,
                  struct error **errp);
int qcow2_snapshot_load_tmp(struct bdev *bd, const char *id, const char *name,
                            struct error **errp);

/* amend.c */
extern const struct opt_desc qcow2_amend_opts[];
int qcow2_amend(struct bdev *bd, const struct optlist *o, const struct amend_ctl *ctl,
                struct error **errp);

/* create (header.c) */
int qcow2_create(const char *filename, const struct optlist *o, unsigned flags,
                 struct error **errp);
extern const struct opt_desc qcow2_create_opts[];

#endif
