/*
 * blockctl - the copy engine behind stream, commit, mirror and incremental
 * copies
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The range to copy is cut into aligned windows handed to a few worker
 * threads.  In its window a worker walks the source by extents (block
 * status through the chain, or the dirty bitmap), skips what the
 * operation does not need, writes zeroes as zeroes (or not at all when the
 * target already reads zero), and copies data in large requests.  A
 * token bucket enforces the bandwidth limit; a cancel flag stops the
 * workers between requests.
 */
#ifndef BLOCKCTL_LIB_COPY_H
#define BLOCKCTL_LIB_COPY_H

#include "lib/compiler.h"
#include "lib/bitmap.h"
#include "lib/block.h"
#include "lib/job.h"

#include <signal.h>

enum copy_mode {
    COPY_ALL,    /* everything the source chain shows (mirror --sync full) */
    COPY_ABOVE,  /* what is allocated in the source chain above @base */
    COPY_BITMAP, /* the dirty extents of @bitmap */
};

struct copy_params {
    struct bdev *src;            /* read through its backing chain */
    struct bdev *dst;
    enum copy_mode mode;
    struct bdev *base;           /* COPY_ABOVE: stop the status walk here (NULL: bottom) */
    struct dirty_bitmap *bitmap; /* COPY_BITMAP */
    bool skip_top;               /* stream: what the source's top layer has is skipped */
    bool dst_is_zero;            /* the target reads zero wherever it is not written */
    bool check_dst_zero;         /* skip zero extents where the target already reads zero */
    /*
     * Stream: the target's own layer will lie on @below (NULL: on nothing,
     * which reads zero); zeroes are written only where @below does not
     * read zero.
     */
    bool zero_over_below;
    struct bdev *below;
    /*
     * Rebase: @below is the target's new backing image (NULL: none); data
     * is written only where it differs from what @below reads, compared
     * 512 bytes at a time (what reads the same is left alone).
     * Goes with zero_over_below.
     */
    bool diff_below;
    bool compress;               /* compressed writes (whole target clusters) */
    bool unchanged;              /* copy-on-read: the target's guest view does not change */
    bool no_flush;               /* do not flush the target at the end (-t unsafe) */
    uint64_t buf_size;           /* total buffer for all workers (default 16 MiB) */
    unsigned workers;            /* default 4; for a job, one fewer than the CPUs (1-4) */
    uint64_t bandwidth;          /* bytes per second, 0: unlimited */
    /* Called from the calling thread about 5 times a second and at the end. */
    void (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
    volatile sig_atomic_t *cancel; /* set to stop (between requests) */
    /*
     * A job (lib/job.h) the copy runs for: the workers stop at its pause
     * points between requests, end when it is cancelled, follow its speed
     * (instead of @bandwidth) and add to its progress.
     */
    struct job *job;
    /*
     * The target is written by others meanwhile (a guest, through the
     * agent): each chunk of at most 1 MiB is classified and copied inside
     * a serialising section of the target, so that no overlapping write
     * of another thread lands in between (the copy never writes stale data
     * over a newer write), and nothing is cached about what the target
     * reads.
     */
    bool live;

    uint64_t start;              /* copy from here (a copy started again) */
    /*
     * If set: raised (never lowered) to the end of each window before the
     * window is read, with a sequentially consistent store.  A live job's
     * after-write hook reads it: a guest write wholly at or past it needs
     * no marking, the copy will read it yet.
     */
    uint64_t *claimed;
    /*
     * If set: raised (never lowered, release store) to an offset below
     * which every window is written to the target and no worker writes
     * the target any more.  A live mirror writes guest writes under it
     * through to the target during the bulk copy (write-blocking).
     */
    uint64_t *done_below;
    /*
     * If set: called from copy_run's thread every @checkpoint_secs (and
     * not at the end) with @below, an offset everything under which is
     * written to the target (not flushed: the callback flushes it before
     * it records it).  A negative return stops the copy with that error
     * (*errp set by the callback).
     */
    int (*checkpoint)(void *opaque, uint64_t below, struct error **errp);
    void *checkpoint_opaque;
    double checkpoint_secs;
    /*
     * Source offset OFF is written at OFF + @dst_offset of the target (the
     * sources of convert, one after the other); the copy stops at the
     * target's end.
     */
    uint64_t dst_offset;
    /*
     * Zero detection in the data read (qemu-img's -S): runs of zeroes of
     * at least @sparse_size bytes, on a grid of that size, are written as
     * zeroes (0: 4 KiB, or the target's cluster when compressing; rounded
     * up to a power of two of at least 4 KiB).  @no_sparse (-S 0):
     * nothing is detected and zero extents are written as data too, so the
     * whole target is allocated.
     */
    uint64_t sparse_size;
    bool no_sparse;
    /*
     * qemu-img's --salvage: a source range that cannot be read (or whose
     * status cannot be had) is read again 512 bytes at a time, and what
     * still fails is written as zeroes; @salvaged (from a worker thread)
     * is told of each such range, and the copy goes on.
     */
    bool salvage;
    void (*salvaged)(void *opaque, uint64_t off, uint64_t len, int err);

    /* results */
    uint64_t bytes_written;      /* data bytes written to the target */
    uint64_t bytes_zeroed;       /* bytes written as zeroes */
    /* After a failure or a cancel: everything below @stopped_at was
     * copied, and @failed is the image that failed (NULL: none). */
    uint64_t stopped_at;
    struct bdev *failed;
};

/*
 * Run the copy; flushes the target at the end.  Returns 0, -ECANCELED when
 * *cancel was set, or another -errno with *errp naming the image and
 * reason.
 */
int copy_run(struct copy_params *p, struct error **errp);

#endif
