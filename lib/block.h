/*
 * blockctl - the block layer: drivers, images and backing chains
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A driver (struct format_driver) is a table of functions; an image
 * (struct bdev) is an open driver instance; a chain is an image with its
 * backing images opened below it.  The data path returns 0 or -errno and
 * takes no error object; the control path takes struct error **errp.
 * Everything here is safe for concurrent requests: drivers guard their
 * metadata themselves, and every request passes the image's in-flight gate
 * so that bdev_drain() can quiesce it.
 */
#ifndef BLOCKCTL_LIB_BLOCK_H
#define BLOCKCTL_LIB_BLOCK_H

#include "lib/compiler.h"
#include "lib/error.h"
#include "lib/file.h"
#include "lib/opts.h"

#include <signal.h>
#include <pthread.h>
#include <sys/types.h>

/* bdev_open() flags */
enum {
    BDEV_O_RDWR = 1u << 0,          /* open the top image read-write */
    BDEV_O_NO_BACKING = 1u << 1,    /* do not open the backing chain (-u) */
    BDEV_O_FORCE_SHARE = 1u << 2,   /* -U: share everything, read-only only */
    BDEV_O_CHECK = 1u << 3,         /* opened by check: no automatic repair,
                                       tolerate what check reports */
    BDEV_O_NO_BITMAPS = 1u << 4,    /* do not load/track persistent bitmaps */
    BDEV_O_UNORDERED = 1u << 5,     /* an image being built: no syncs that only order
                                       metadata for power failures (explicit flushes
                                       still sync) */
    /* cache modes (QEMU's cache=, blockctl's -t/-T): the backing chain
       inherits them unless bdev_open_opts says otherwise */
    BDEV_O_INFO = 1u << 9,          /* read-only, for info: tables past the end of
                                       the file read as zeroes, as QEMU reads them */
    BDEV_O_NOCACHE = 1u << 6,       /* O_DIRECT (none, directsync) */
    BDEV_O_WRITETHROUGH = 1u << 7,  /* data synced after each write (writethrough,
                                       directsync) */
    BDEV_O_NO_FLUSH = 1u << 8,      /* no syncs at all (unsafe) */
    BDEV_O_KILL_SAFE = 1u << 10,    /* a write survives a kill -9 once acknowledged:
                                       metadata it changed reaches the file (in the
                                       power-failure order) before it completes;
                                       not for background threads (a job's copy,
                                       which its journal redoes) */
    BDEV_O_CACHE_MASK = BDEV_O_NOCACHE | BDEV_O_WRITETHROUGH | BDEV_O_NO_FLUSH,
};
/*
 * The BDEV_O_* cache flags of a cache mode's name (none, writeback,
 * writethrough, directsync, unsafe; QEMU's "off" is writeback): 0 or
 * -EINVAL.
 */
int bdev_cache_parse(const char *name, unsigned *flags);

/* Request flags (QEMU's BDRV_REQ_* meaning) */
enum {
    BDEV_REQ_FUA = 1u << 0,         /* durable before completion */
    BDEV_REQ_MAY_UNMAP = 1u << 1,   /* zeroing may deallocate */
    BDEV_REQ_NO_FALLBACK = 1u << 2, /* zeroing must be cheap or fail -ENOTSUP */
    BDEV_REQ_WRITE_UNCHANGED = 1u << 3, /* the guest view does not change
                                           (copy-on-read): bitmaps are not dirtied */
    /* only seen by write notifiers: what kind of write this is */
    BDEV_REQ_ZERO_WRITE = 1u << 8,  /* pwrite_zeroes (no buffer) */
    BDEV_REQ_DISCARD = 1u << 9,     /* discard (no buffer) */
};

/* Block status bits: the values of QEMU's BDRV_BLOCK_* */
enum {
    BDEV_BLOCK_DATA = 0x01,         /* reads from stored data */
    BDEV_BLOCK_ZERO = 0x02,         /* reads as zeroes */
    BDEV_BLOCK_OFFSET_VALID = 0x04, /* *map is the host offset */
    BDEV_BLOCK_ALLOCATED = 0x10,    /* this layer decides the contents */
    BDEV_BLOCK_EOF = 0x20,
    BDEV_BLOCK_COMPRESSED = 0x80,
};

/* Largest request passed to a driver in one call */
#define BDEV_MAX_REQUEST (1u << 30)
/* Deepest backing chain opened */
#define BDEV_MAX_CHAIN 256

struct bdev;
struct bdev_req;
struct dirty_bitmap;

/* Preallocation of a grown area (QEMU's PreallocMode) */
enum bdev_prealloc {
    BDEV_PREALLOC_OFF,
    BDEV_PREALLOC_METADATA,      /* qcow2: clusters mapped, data not written */
    BDEV_PREALLOC_FALLOC,        /* fallocate(2) the space */
    BDEV_PREALLOC_FULL,          /* write zeroes */
};
/* Parse "off", "metadata", "falloc", "full"; -EINVAL otherwise. */
int bdev_prealloc_parse(const char *name, enum bdev_prealloc *out);
const char *bdev_prealloc_name(enum bdev_prealloc p);

/*
 * A dirty bitmap kept by the block layer for one image: enabled ones are
 * marked after every successful write to the image (not those flagged
 * BDEV_REQ_WRITE_UNCHANGED).  Persistent ones are also stored by the
 * driver (qcow2's bitmaps extension).
 */
struct bdev_bitmap {
    char *name;
    uint64_t granularity;
    struct dirty_bitmap *bm;     /* NULL: stored, not read yet (read-only image) */
    bool enabled;
    bool persistent;
    bool inconsistent;           /* stored in use by a crash: never trusted */
    bool stored_enabled;         /* enabled as stored (an inconsistent one: for salvage) */
    bool flags_changed;          /* enabled changed since the driver stored it */
    unsigned busy;               /* used by a job: not to be changed */
    uint64_t stored_gen;         /* bm's generation when last stored or loaded */
    struct bdev_bitmap *next;
};

/*
 * Hooks around every write to an image (QEMU's before-write notifiers and
 * write tracking).  @before may fail the write (it is not done); @after
 * sees the result.  @flags has BDEV_REQ_ZERO_WRITE or BDEV_REQ_DISCARD for
 * those (@buf NULL).  Add and remove them with the image drained.
 */
struct bdev_write_notifier {
    int (*before)(struct bdev_write_notifier *n, uint64_t off, uint64_t len, unsigned flags,
                  const void *buf);
    void (*after)(struct bdev_write_notifier *n, uint64_t off, uint64_t len, unsigned flags,
                  int ret);
    void *opaque;
    struct bdev_write_notifier *next;
};

/* One step of a `bitmap` command; a list of them is applied atomically. */
enum bitmap_op_type {
    BITMAP_OP_ADD,
    BITMAP_OP_REMOVE,
    BITMAP_OP_CLEAR,
    BITMAP_OP_ENABLE,
    BITMAP_OP_DISABLE,
    BITMAP_OP_MERGE,
    BITMAP_OP_SALVAGE,          /* every bit set, consistent (an inconsistent one: enabled
                                   as it was stored) */
};

struct bitmap_op {
    enum bitmap_op_type type;
    const char *name;
    uint64_t granularity;          /* ADD: 0 = the default (cluster size in 4k..64k) */
    bool disabled;                 /* ADD: do not record writes */
    const char *src_name;          /* MERGE: a bitmap of the same image, or */
    struct dirty_bitmap *src;      /* MERGE: bitmap contents from elsewhere */
    bool persistent;               /* ADD: stored in the image (qcow2) */
};

struct snapshot_info {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    bool has_icount;
    uint64_t icount;
};

/* Bitmap flags as listed by info (qcow2.txt "Bitmap directory") */
enum { BITMAP_FLAG_IN_USE = 1u << 0, BITMAP_FLAG_AUTO = 1u << 1 };

struct bitmap_info {
    char *name;
    uint64_t granularity;
    uint32_t flags;          /* BITMAP_FLAG_* */
    bool inconsistent;       /* left in use by a crash: never trusted */
};

/* What `info` prints; filled by a driver's get_info. */
struct image_info {
    uint64_t cluster_size;   /* 0: the format has none */
    bool has_dirty_flag;
    bool dirty_flag;
    bool encrypted;
    struct snapshot_info *snapshots;
    size_t nr_snapshots;
    /* format-specific: qcow2 */
    bool is_qcow2;
    const char *compat;      /* "0.10" or "1.1" */
    const char *compression_type;
    bool lazy_refcounts;
    unsigned refcount_bits;
    bool corrupt;
    bool extended_l2;
    bool has_bitmaps;        /* the extension is present */
    /* where the bitmap directory is (0: none); a bitmap transaction
     * writes a new one and switches the header to it in one write */
    uint64_t bitmap_dir_offset;
    struct bitmap_info *bitmaps;
    size_t nr_bitmaps;
};

void image_info_free(struct image_info *info);

/* `check` results: the fields of QEMU's ImageCheck */
struct check_result {
    int64_t corruptions;
    int64_t leaks;
    int64_t check_errors;
    int64_t corruptions_fixed;
    int64_t leaks_fixed;
    uint64_t image_end_offset;
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
    bool has_cluster_stats;
};

enum {
    CHECK_FIX_LEAKS = 1u << 0,
    CHECK_FIX_ERRORS = 1u << 1,
    CHECK_QUIET = 1u << 2,      /* no report lines (the repair of an open) */
};
/*
 * Where a check's report lines go (qemu-img check's own words, each
 * ending in a newline): the sink the program set, else nowhere.
 */
void bdev_set_check_sink(void (*sink)(const char *text));
void bdev_check_report(const char *text);

/* qemu-img measure's figures (QEMU's BlockMeasureInfo) */
struct measure_info {
    uint64_t required;
    uint64_t fully_allocated;
    bool has_bitmaps;
    uint64_t bitmaps;
};

/* What bdev_amend's caller asks beyond the options */
struct amend_ctl {
    bool force;
    /* progress (0..100), or NULL */
    void (*progress)(double percent, void *opaque);
    void *opaque;
};

struct format_driver {
    const char *name;                /* "raw", "qcow2", "nbd" */
    size_t priv_size;                /* bytes lib/block.c allocates for bd->opaque */
    bool supports_backing;
    bool is_protocol;                /* opened from a URI, not a file */
    const struct opt_desc *create_opts;

    /* Score 0..100 for the first bytes of a file (up to 512). */
    int (*probe)(const uint8_t *buf, size_t len);

    /*
     * Control path.  Each returns 0 or -errno and sets *errp on failure.
     * create: make a new image at @filename (which must not exist, unless
     * the caller removed it) from the validated option list @o; the keys
     * "size", "backing_file", "backing_fmt" are always available.
     */
    int (*create)(const char *filename, const struct optlist *o, unsigned flags,
                  struct error **errp);
    /* check_create (optional): would create accept @o?  The same
     * errors as create gives for the option values, nothing written. */
    int (*check_create)(const char *filename, const struct optlist *o, struct error **errp);
    /* open: bd->filename and bd->perm/bd->shared are set; must set
     * bd->size and, if any, bd->backing_file / bd->backing_format. */
    int (*open)(struct bdev *bd, unsigned flags, struct error **errp);
    /* close: write back everything; returns 0 or -errno (an error is
     * reported through errp but the image is closed anyway). */
    int (*close)(struct bdev *bd, struct error **errp);
    int (*get_info)(struct bdev *bd, struct image_info *out, struct error **errp);
    /* check (and repair with CHECK_FIX_*); messages go to stderr. */
    int (*check)(struct bdev *bd, struct check_result *res, unsigned fix,
                 struct error **errp);
    int (*truncate)(struct bdev *bd, uint64_t size, struct error **errp);
    /* Preallocate [start, end) of an image just grown to @end (optional;
     * QEMU's "Unsupported preallocation mode" where a mode is not). */
    int (*preallocate)(struct bdev *bd, uint64_t start, uint64_t end,
                       enum bdev_prealloc mode, struct error **errp);
    /* Record a new backing file name and format (NULL: none). */
    int (*change_backing)(struct bdev *bd, const char *file, const char *fmt,
                          struct error **errp);

    /*
     * Data path: 0 or -errno; lib/block.c has already checked that the
     * request lies within the image and that the image is writable.
     */
    int (*pread)(struct bdev *bd, void *buf, size_t len, uint64_t off);
    int (*pwrite)(struct bdev *bd, const void *buf, size_t len, uint64_t off,
                  unsigned flags);
    int (*pwrite_zeroes)(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags);
    int (*discard)(struct bdev *bd, uint64_t off, uint64_t len);
    int (*flush)(struct bdev *bd);
    /*
     * This layer only: status of [off, off+len) as BDEV_BLOCK_* bits in
     * *status, for *pnum bytes (> 0); without BDEV_BLOCK_ALLOCATED the
     * range is defined by the backing image.  *map is the host offset when
     * BDEV_BLOCK_OFFSET_VALID is set.
     */
    int (*block_status)(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum,
                        uint64_t *map, unsigned *status);
    /* Write one whole cluster compressed (off cluster aligned, len one
     * cluster or the image's tail). */
    int (*pwrite_compressed)(struct bdev *bd, const void *buf, size_t len, uint64_t off);
    /* Granularity of compressed writes, or 0 when unsupported. */
    uint64_t (*compress_granularity)(struct bdev *bd);
    /* Drop every allocation of this layer, so that it reads its backing
     * image everywhere (qemu-img commit's emptying). */
    int (*make_empty)(struct bdev *bd);

    /*
     * Persistent dirty bitmaps (optional).  At open the driver registers
     * the bitmaps it stores (bdev_bitmap_register): loaded and marked in
     * use for a writable image, contents left for bitmap_load otherwise.
     */
    /* Read stored bitmap @name's contents. */
    int (*bitmap_load)(struct bdev *bd, const char *name, struct dirty_bitmap **out,
                       struct error **errp);
    /* Can a bitmap @name of this granularity be stored? */
    int (*bitmap_check_add)(struct bdev *bd, const char *name, uint64_t granularity,
                            struct error **errp);
    /* Can these persistent bitmaps be stored together (count, sizes)? */
    int (*bitmap_check_list)(struct bdev *bd, const char **names, size_t n,
                             struct error **errp);
    /*
     * Store the persistent bitmaps of bd->bitmaps (and drop stored ones
     * no longer listed), durably; @in_use: marked in use (the image stays
     * open).  After a failure the image holds the old or the new set.
     */
    int (*bitmap_store)(struct bdev *bd, bool in_use, struct error **errp);
    /*
     * Switch between read-only and read-write (BDEV_O_RDWR in @flags)
     * without closing: to read-only, write everything back and store the
     * bitmaps; to read-write, mark the bitmaps in use.  lib/block.c has
     * changed the file's locks already.
     */
    int (*reopen)(struct bdev *bd, unsigned flags, struct error **errp);

    /*
     * measure (optional): the sizes a new image of this format needs
     * (qemu-img measure) for the guest data of @in or, @in NULL, for an
     * empty image of the size in @o ("size").  @o passed the type checks
     * of bdev_measure (lib/measure.c).
     */
    int (*measure)(const struct optlist *o, struct bdev *in, struct measure_info *out,
                   struct error **errp);
    /*
     * Make internal snapshot @id / @name (NULL: either matches) what a
     * read-only image shows until it is closed (qemu-img's -l).
     */
    int (*snapshot_load_tmp)(struct bdev *bd, const char *id, const char *name,
                             struct error **errp);
    /*
     * amend (optional): change the options of @bd in place, as qemu-img
     * amend does; @o holds only keys of @amend_opts, type-checked
     * (lib/amend.c).
     */
    const struct opt_desc *amend_opts;
    int (*amend)(struct bdev *bd, const struct optlist *o, const struct amend_ctl *ctl,
                 struct error **errp);
};

struct bdev {
    const struct format_driver *drv;
    void *opaque;                /* driver's private state (priv_size bytes) */
    char *filename;              /* path as given, or as resolved for a backing file */
    struct bfile *file;          /* the image file (NULL for protocols) */
    unsigned perm;               /* PERM_* this image needs on its file */
    unsigned shared;             /* PERM_* it shares with others */
    unsigned flags;              /* BDEV_O_* it was opened with */
    uint64_t size;               /* virtual size in bytes */
    bool read_only;
    struct bdev *backing;        /* opened backing image, or NULL */
    char *backing_file;          /* backing name as recorded, or NULL */
    char *backing_format;        /* backing format as recorded, or NULL */
    char *full_backing_file;     /* backing name resolved against our folder */
    bool drv_closed;             /* a failed reopen left no driver state */
    const char *nbd_bitmap;      /* top image only: NBD meta context bitmap to request */
    char *node_name;             /* the agent's name for this image, or NULL */

    /* Detail of the latest data-path failure (corruption found, ...),
     * for the command to print; guarded by gate_lock. */
    char *last_error;

    unsigned refcnt;             /* bdev_ref / bdev_close; a backing link holds one */

    /* in-flight gate and request tracking: see bdev_drain_begin() */
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_cond;
    unsigned in_flight;
    unsigned gate_waiters;
    unsigned quiesce;            /* nested drains by @drainer */
    pthread_t drainer;
    struct bdev_req *reqs;       /* writes and serialising sections in flight */

    /* dirty bitmaps and write notifiers; guarded by bitmap_lock */
    pthread_mutex_t bitmap_lock;
    struct bdev_bitmap *bitmaps;
    bool bitmaps_changed;        /* the list changed since the driver stored it */
    unsigned nr_enabled_bitmaps; /* read without the lock on every write */
    struct bdev_write_notifier *notifiers;
};

/* Look up a driver by name, or NULL. */
const struct format_driver *bdev_find_driver(const char *name);
/* Names of all drivers, NULL-terminated. */
const struct format_driver *const *bdev_drivers(void);

/*
 * Open @filename with format @format (NULL: probe: the qcow2 magic,
 * otherwise raw) and, unless BDEV_O_NO_BACKING, its backing chain,
 * read-only below the top.  Refuses json: and other pseudo-protocol names.
 * Returns NULL and sets *errp on failure.
 */
struct bdev *bdev_open(const char *filename, const char *format, unsigned flags,
                       struct error **errp);
/* Extra open options */
struct bdev_open_opts {
    /* An NBD export's qemu:dirty-bitmap:NAME to request (see nbd_bitmap_status). */
    const char *nbd_bitmap;
    /* The backing chain's cache flags (BDEV_O_CACHE_MASK), instead of
     * the top's */
    bool backing_cache_set;
    unsigned backing_cache;
};
struct bdev *bdev_open_ext(const char *filename, const char *format, unsigned flags,
                           const struct bdev_open_opts *opts, struct error **errp);

/*
 * Images are reference counted: bdev_open() returns one reference, an
 * image holds one on its backing image.  bdev_close() drops a reference;
 * the last one closes the image (writing everything back) and drops its
 * reference to the backing image.  Returns 0 or -errno (errp set if
 * writing back failed; the images are closed anyway).
 */
void bdev_ref(struct bdev *bd);
int bdev_close(struct bdev *bd, struct error **errp);
/* Drop a reference, ignoring errors. */
void bdev_unref(struct bdev *bd);
/*
 * Make @backing (NULL: none) @bd's backing image in memory, taking a
 * reference to it and dropping the one to the old backing image.  The
 * name recorded in the image is the driver's business (change_backing).
 * Call with @bd drained (or not yet in use).
 */
void bdev_set_backing(struct bdev *bd, struct bdev *backing);

/* Guest-visible read of the whole chain. */
int bdev_pread(struct bdev *bd, void *buf, size_t len, uint64_t off);
int bdev_pwrite(struct bdev *bd, const void *buf, size_t len, uint64_t off, unsigned flags);
/* Write zeroes; falls back to writing zero buffers unless NO_FALLBACK. */
int bdev_pwrite_zeroes(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags);
int bdev_discard(struct bdev *bd, uint64_t off, uint64_t len);
int bdev_flush(struct bdev *bd);
/*
 * Start writing @bd's dirty data to disk in the background (a hint; file
 * images only), so that a later flush has less to wait for.
 */
void bdev_start_writeback(struct bdev *bd);
/* Grow (or shrink, where the format can) the virtual size. */
int bdev_truncate(struct bdev *bd, uint64_t size, struct error **errp);
/*
 * The same, preallocating a grown area with @prealloc (refused for a
 * shrink, with QEMU's message).  The persistent bitmaps follow (a grown
 * area clean, a cut one dropped), as QEMU resizes them.
 */
int bdev_resize(struct bdev *bd, uint64_t size, enum bdev_prealloc prealloc,
                struct error **errp);
/* Make @bd's own layer empty (reads fall through to its backing); -ENOTSUP
 * where the format cannot. */
int bdev_make_empty(struct bdev *bd);
/* Compressed write of whole clusters; -ENOTSUP where the format has none. */
int bdev_pwrite_compressed(struct bdev *bd, const void *buf, size_t len, uint64_t off);

/*
 * Read from @bd's backing image for a driver: zeroes where there is no
 * backing image or it ends before @off + @len.
 */
int bdev_read_backing(struct bdev *bd, void *buf, size_t len, uint64_t off);

/* Status of this layer only (drivers' block_status, with a fallback). */
int bdev_block_status(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum,
                      uint64_t *map, unsigned *status);

/* Status through a chain, as qemu-img map reports it. */
struct bdev_map {
    uint64_t len;        /* bytes this answer covers */
    unsigned status;     /* BDEV_BLOCK_* of the deciding layer */
    uint64_t offset;     /* host offset when BDEV_BLOCK_OFFSET_VALID */
    int depth;           /* 0 = top; for unallocated: the bottom's depth */
    struct bdev *layer;  /* the layer that decided (or the bottom) */
    bool past_end;       /* zero because an image above @base ends before it */
    bool eof;            /* QEMU's BDRV_BLOCK_EOF for this answer (compare -s) */
};
/*
 * Status of [off, off+len) through the chain from @bd down to (but not
 * including) @base (NULL: the whole chain).  Unallocated everywhere means
 * status without BDEV_BLOCK_ALLOCATED; ZERO is set when it reads as zero.
 */
int bdev_block_status_above(struct bdev *bd, struct bdev *base, uint64_t off, uint64_t len,
                            struct bdev_map *out);


/*
 * Foreground and background I/O.  A thread that calls
 * bdev_thread_background() (a job's threads: lib/job.c) is background;
 * the data requests of every other thread (a guest's, through the agent)
 * stamp the time, process-wide.  bdev_foreground_within(MS): did one
 * begin in the last MS milliseconds?  (A job copies with fewer threads
 * while a guest is busy.)
 */
void bdev_thread_background(void);
bool bdev_thread_is_background(void);
bool bdev_foreground_within(unsigned ms);
/*
 * Quiesce: close the gate and wait until no request is in flight.  Drains
 * nest: the thread that drains may drain again and may issue requests to
 * the image itself (they pass the gate).  Another thread that drains the
 * same image waits until the first is done.  Drain images in one thread
 * (the agent's main loop) to avoid lock-order problems.
 */
void bdev_drain_begin(struct bdev *bd);
void bdev_drain_end(struct bdev *bd);
/* True if the calling thread holds @bd drained. */
bool bdev_is_drained(struct bdev *bd);

/*
 * A serialising section over [off, off+len): waits until no write (and no
 * other section) of another thread overlaps it, then makes overlapping
 * writes of other threads wait until it ends.  Copy-on-read and the
 * mirror's background copy use it so that they never write stale data
 * over a newer guest write.  The owner's own requests are not held up.
 */
struct bdev_serial {
    struct bdev *bd;
    struct bdev_req *req;
};
struct bdev_serial *bdev_serialise_begin(struct bdev *bd, uint64_t off, uint64_t len);
void bdev_serialise_end(struct bdev_serial *s);

void bdev_add_write_notifier(struct bdev *bd, struct bdev_write_notifier *n);
void bdev_remove_write_notifier(struct bdev *bd, struct bdev_write_notifier *n);

/* Fill @out; the caller frees it with image_info_free(). */
int bdev_get_info(struct bdev *bd, struct image_info *out, struct error **errp);

/*
 * lib/measure.c: -o lists checked as QemuOpts checks them (its messages:
 * "Invalid parameter 'x'" with the valid names, "Parameter 'x' expects
 * ..."), -EINVAL, against the
 * descriptions @a and @b (either may be NULL); parsed into @out.
 */
int bdev_opts_check(const char *str, const struct opt_desc *a, const struct opt_desc *b,
                    struct optlist *out, struct error **errp);
/* The options qemu-img measure -O FMT takes: @drv's create options and the file's. */
int bdev_measure_opts(const struct format_driver *drv, const char *str, struct optlist *out,
                      struct error **errp);
/* qemu-img measure: sizes a new @drv image needs for @in (NULL: "size" of @o). */
int bdev_measure(const struct format_driver *drv, const struct optlist *o, struct bdev *in,
                 struct measure_info *out, struct error **errp);
/*
 * Show internal snapshot @spec of read-only @bd instead of its current
 * contents until it is closed: an ID or a name (the ID tried first), or
 * "snapshot.id=ID[,snapshot.name=NAME]" (qemu-img's -l).
 */
int bdev_snapshot_load_tmp(struct bdev *bd, const char *spec, struct error **errp);
/* The options qemu-img amend takes for @drv, parsed into @out (with its messages). */
int bdev_amend_opts(const struct format_driver *drv, const char *str, struct optlist *out,
                    struct error **errp);
/*
 * Change @bd's options in place (read-write, its chain opened): qemu-img
 * amend.  -EDOM: a value that is not valid (nothing was changed).
 */
int bdev_amend(struct bdev *bd, const struct optlist *o, const struct amend_ctl *ctl,
               struct error **errp);

/*
 * Resolve a backing file name recorded in @overlay_name's image: absolute
 * names stay, relative ones are relative to the overlay's folder.
 */
char *bdev_path_combine(const char *overlay_name, const char *backing);

/* bdev_create() flags */
enum { BDEV_CREATE_FORCE = 1u << 0 };  /* replace an existing file */

/*
 * Create an image of format @fmt; @o holds every option (size included).
 * On failure a file this call brought into being is removed again.
 */
int bdev_create(const char *fmt, const char *filename, const struct optlist *o,
                unsigned flags, struct error **errp);
/*
 * For drivers' create: open @filename for writing, creating it; an
 * existing file is refused unless BDEV_CREATE_FORCE, and then truncated
 * (unless it is a block device) once its locks show nobody uses it.
 * Release with bfile_close(f, PERM_ALL & ~PERM_WRITE_UNCHANGED, 0).
 */
struct bfile *bdev_create_file(const char *filename, unsigned flags, struct error **errp);
#define BDEV_CREATE_PERM (PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE)
/* The hidden name ".blockctl-new.BASENAME" in @name's folder (allocated). */
char *bdev_hidden_name(const char *name);
/*
 * Create a new image that will be put in place as @name: made under a
 * hidden name in @name's folder (".blockctl-new.BASENAME"), returned in
 * *tmp (the caller frees it, and removes the file on failure).  An error
 * names @name, as the user knows it.  0 or -errno.
 */
int bdev_create_hidden(const char *fmt, const char *name, const struct optlist *o,
                       char **tmp, struct error **errp);

/*
 * Put the complete new image @tmp (made by this program) in place as
 * @name: rename it (over an existing @name only with BDEV_CREATE_FORCE,
 * otherwise an existing @name is refused), then sync the folder so that
 * the new name survives a crash.  Returns 0, or -errno with *errp set and
 * *renamed telling whether @tmp is gone.  When the folder sync fails,
 * whether the rename survives a crash is unknown: a new @name is removed
 * again (if it still is the file renamed), so that nothing was created
 * and the same command can be run again; a @name that replaced a file
 * (BDEV_CREATE_FORCE) is kept, since the old file is gone already.
 * The message says which.
 */
int bdev_create_install(const char *tmp, const char *name, unsigned flags, bool *renamed,
                        struct error **errp);

/* Probe the format of a file's first bytes (for -f omitted). */
const struct format_driver *bdev_probe(const uint8_t *buf, size_t len);

/*
 * A flag that a signal handler sets to stop the program: long waits in the
 * block layer (an NBD server that does not answer) give up when it is set.
 * The handler calls bdev_interrupt_notify() after setting it, which wakes
 * those waits (it is async-signal-safe): they poll bdev_interrupt_fd(),
 * which turns readable then and stays so (-1 when there is nothing to
 * poll: no flag, or no descriptor could be made; check the flag then).
 */
void bdev_set_interrupt_flag(volatile sig_atomic_t *flag);
bool bdev_interrupted(void);
void bdev_interrupt_notify(void);
int bdev_interrupt_fd(void);

/*
 * The format name of @bd as QEMU records and reports it: a protocol (an
 * NBD export) is "raw" to whatever stands above it.
 */
const char *bdev_format_name(const struct bdev *bd);

/*
 * Record why a data-path request failed (drivers call this; the data path
 * itself only returns -errno).  The latest message replaces the one
 * before: a daemon's old failure does not explain a new one.
 */
void bdev_set_error(struct bdev *bd, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
/* The latest message of @bd or, failing that, of an image below it, or
 * NULL (a copy, for the caller to free). */
char *bdev_last_error(struct bdev *bd);
/* Print a data-path failure: "what: 'file': detail" or strerror. */
void bdev_report_io_error(struct bdev *bd, const char *what, int ret);

/*
 * Dirty bitmaps (lib/dirty.c).  Each image has its own list; a disk's
 * bitmap NAME is the union of the bitmaps named NAME down its chain.
 */
/* Bitmap @name of @bd itself, or NULL (the pointer stays valid until the
 * bitmap is removed: removing is the control thread's business). */
struct bdev_bitmap *bdev_bitmap_find(struct bdev *bd, const char *name);
/* True if some image of @bd's chain has bitmap @name. */
bool bdev_bitmap_in_chain(struct bdev *bd, const char *name);
/* For drivers, at open: a stored bitmap (@bm NULL: contents not read yet;
 * the list takes over @bm). */
void bdev_bitmap_register(struct bdev *bd, const char *name, uint64_t granularity,
                          struct dirty_bitmap *bm, bool enabled, bool persistent,
                          bool inconsistent);
/* For drivers: @b's contents, read (the list takes over @bm; freed if
 * @b already has contents). */
void bdev_bitmap_loaded(struct bdev *bd, struct bdev_bitmap *b, struct dirty_bitmap *bm);
void bdev_bitmaps_free(struct bdev *bd);
/* The default granularity of a new bitmap: the cluster size in 4k..64k. */
uint64_t bdev_bitmap_default_granularity(struct bdev *bd);
/* A copy of bitmap @name of @bd itself (refused if inconsistent). */
int bdev_bitmap_get(struct bdev *bd, const char *name, struct dirty_bitmap **out,
                    struct error **errp);
/* The union of bitmap @name down @bd's chain, as a new bitmap of @bd's size. */
int bdev_bitmap_union(struct bdev *bd, const char *name, struct dirty_bitmap **out,
                      struct error **errp);
/* Whether [off, off + *pnum) is dirty in the union of @name down the chain;
 * -ENOENT if no image has it. */
int bdev_bitmap_status(struct bdev *bd, const char *name, uint64_t off, uint64_t len,
                       uint64_t *pnum, bool *dirty);
/* The distinct names of the usable bitmaps down @bd's chain, NULL-ended. */
char **bdev_bitmap_names(struct bdev *bd);
/*
 * Apply @n operations to @bd's bitmaps in memory, all or none; *undo can
 * take them back (bdev_bitmap_undo) or be dropped (bdev_bitmap_undo_free).
 * Nothing is stored in the image.
 */
struct bitmap_undo;
int bdev_bitmap_apply_undo(struct bdev *bd, const struct bitmap_op *ops, size_t n,
                           struct bitmap_undo **undo, struct error **errp);
void bdev_bitmap_undo(struct bitmap_undo *undo);
void bdev_bitmap_undo_free(struct bitmap_undo *undo);
/*
 * Apply @n operations all or none and, where persistent bitmaps changed,
 * store them in the image before returning (the `bitmap` command).
 */
/*
 * Bitmaps follow a disk onto a new top image @to (a pivot): each enabled
 * bitmap of @from gets a namesake in @to (of the same granularity,
 * persistent if it was and @to can store it) holding its bits.  Call with
 * both drained.  0 or -errno.
 */
int bdev_bitmaps_follow(struct bdev *from, struct bdev *to, struct error **errp);
int bdev_bitmap_apply(struct bdev *bd, const struct bitmap_op *ops, size_t n,
                      struct error **errp);
/* Whether the persistent bitmaps changed since the driver stored them. */
bool bdev_bitmaps_need_store(struct bdev *bd);
/* Store the persistent bitmaps now (they stay in use while open). */
int bdev_bitmaps_store(struct bdev *bd, struct error **errp);

/* Chain helpers */
/*
 * The backing file name to record for @base (an image of @chain) in the
 * image @top: absolute if the chain names it absolutely, otherwise
 * relative to @top's folder.
 */
char *bdev_backing_name_for(struct bdev *top, struct bdev *chain, struct bdev *base);
/* The same for an image (to be) created in folder @dir. */
char *bdev_backing_name_for_dir(const char *dir, struct bdev *chain, struct bdev *base);

int bdev_chain_length(struct bdev *bd);
/*
 * Find the image of @bd's chain (@bd included) that is the file @name
 * (compared by device and inode), or NULL.
 */
struct bdev *bdev_chain_find(struct bdev *bd, const char *name);
/* The image whose backing image is @child in @bd's chain, or NULL. */
struct bdev *bdev_chain_parent(struct bdev *bd, struct bdev *child);

/*
 * Reopen @bd read-write (BDEV_O_RDWR in @flags) or read-only in place,
 * keeping its backing chain: takes or drops the write locks, writes back
 * and reloads the driver's state.  On failure @bd is left as it was when
 * possible, or closed to I/O (every request fails) when not.
 */
int bdev_reopen(struct bdev *bd, unsigned flags, struct error **errp);

/*
 * A name for @target to record as the backing file of an image in folder
 * @dir: absolute stays absolute; a relative path is made relative to @dir.
 */
char *bdev_relative_path(const char *target, const char *dir);
/* @target as a path relative to folder @dir, whatever @target was. */
char *bdev_make_relative(const char *target, const char *dir);
/* The folder of @path ("." for a bare name). */
char *bdev_dirname(const char *path);

#endif
