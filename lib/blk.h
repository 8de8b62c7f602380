/*
 * blockctl - disks: a stable name in front of a changing image graph
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A disk (struct blk, QEMU's BlockBackend) is what a guest and the NBD
 * server see: a name ("vda") and the disk's current top image.  The top
 * changes under a live snapshot or a pivot; users of the disk never hold
 * the image itself across requests, they go through blk_*() calls, which
 * pass the disk's in-flight gate.  blk_drain_begin() closes the gate and
 * waits until no request is in flight; while drained, the graph below may
 * be changed (blk_replace_root) and then blk_drain_end() lets the queued
 * requests go on, to the new top.
 *
 * Data-path calls return 0 or -errno, as lib/block.h's.  An error is also
 * reported to the disk's error hook (the agent turns it into QEMU's
 * BLOCK_IO_ERROR event).
 */
#ifndef BLOCKCTL_LIB_BLK_H
#define BLOCKCTL_LIB_BLK_H

#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/error.h"

#include <pthread.h>

struct blk;

/* What a failed request was, for the error hook (QEMU's IoOperationType). */
enum blk_io_op { BLK_IO_READ, BLK_IO_WRITE };

/*
 * A new disk named @name whose top image is @root (the disk takes over
 * the caller's reference).  @read_only: writes fail with -EPERM.
 */
struct blk *blk_new(const char *name, struct bdev *root, bool read_only);
void blk_ref(struct blk *blk);
/* Drop a reference; the last one drains and releases the image graph
 * (without closing it: the caller closes the images it opened). */
void blk_unref(struct blk *blk);

const char *blk_name(const struct blk *blk);
bool blk_is_read_only(const struct blk *blk);
/* Virtual size in bytes of the current top. */
uint64_t blk_size(struct blk *blk);
/*
 * The current top image.  Only stable while the caller holds the disk
 * drained or is the thread that changes the graph (the agent's main loop).
 */
struct bdev *blk_root(struct blk *blk);

/* Error hook: called (from the failing request's thread) after a request
 * failed with -@err. */
void blk_set_error_hook(struct blk *blk,
                        void (*hook)(struct blk *blk, enum blk_io_op op, int err, void *opaque),
                        void *opaque);

/* Copy-on-read: reads copy what they find below the top into it. */
void blk_set_copy_on_read(struct blk *blk, bool on);

/* Guest I/O, as bdev_*() on the current top (flags: BDEV_REQ_*). */
int blk_pread(struct blk *blk, void *buf, size_t len, uint64_t off);
int blk_pwrite(struct blk *blk, const void *buf, size_t len, uint64_t off, unsigned flags);
int blk_pwrite_zeroes(struct blk *blk, uint64_t off, uint64_t len, unsigned flags);
int blk_discard(struct blk *blk, uint64_t off, uint64_t len);
int blk_flush(struct blk *blk);
/*
 * Status of [off, off+len) through the whole chain (bdev_block_status_above
 * with no base): data / zero / allocated and at which depth.
 */
int blk_block_status(struct blk *blk, uint64_t off, uint64_t len, struct bdev_map *out);

/*
 * Dirty bitmaps of the disk.  A disk's bitmap NAME is the union of the
 * bitmaps named NAME down its chain.
 * blk_bitmap_names: a NULL-terminated array of the distinct names (free
 * each and the array); blk_bitmap_status: whether [off, off + *pnum) is
 * dirty in NAME (*pnum <= len, > 0); -ENOENT if the disk has no such
 * bitmap.
 */
char **blk_bitmap_names(struct blk *blk);
int blk_bitmap_status(struct blk *blk, const char *name, uint64_t off, uint64_t len,
                      uint64_t *pnum, bool *dirty);

/* Quiesce the disk: nested calls count; the thread that drained may still
 * issue requests itself. */
void blk_drain_begin(struct blk *blk);
void blk_drain_end(struct blk *blk);
/* Under drain: make @root the disk's top (the disk takes over the caller's
 * reference; the old top's reference is returned to the caller). */
struct bdev *blk_replace_root(struct blk *blk, struct bdev *root);

#endif
