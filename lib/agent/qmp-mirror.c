/*
 * blockctl - the agent's drive-mirror: copy a disk while the guest writes,
 * then pivot onto the copy (block-job-complete) or leave it as a
 * consistent copy of that moment (block-job-cancel once ready)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A write notifier on the source (the disk's top when the job starts)
 * marks every guest write in the job's own dirty bitmap, from before the
 * first byte is copied.  The job copies the source in bulk (the copy
 * engine), then loops over the dirty bitmap: clear a region's bits, then
 * copy it (a guest write meanwhile sets them again), until nothing is
 * dirty: the job is ready, and goes on mirroring.  At the end, on the
 * main loop with the disk drained, the little that is still dirty is
 * copied, the target flushed and, for a pivot, the disk's top replaced by
 * the target.  In write-blocking mode a guest write reaches the target
 * before it completes wherever the copy is done (during the bulk copy:
 * under the windows all written; a write past them is read by the copy
 * yet, or marked dirty).
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"
#include "lib/bitmap.h"
#include "lib/copy.h"
#include "lib/io.h"
#include "lib/journal.h"
#include "lib/wib.h"

#include <pthread.h>
#include <signal.h>
#include <limits.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum mirror_sync { SYNC_FULL, SYNC_TOP, SYNC_NONE, SYNC_BITMAP };

struct mirror_job {
    struct agent *a;
    struct agent_disk *d;
    struct bdev *src;            /* our reference */
    struct bdev *target;         /* our reference (until the disk takes it) */
    char *target_name;
    enum mirror_sync sync;
    bool write_blocking;         /* atomic: copy-mode auto switches it on */
    bool auto_mode;              /* copy-mode auto */
    uint64_t dirtied;            /* atomic: bytes guest writes marked */
    /* auto: the current one-second window, and how many in a row the
     * guest dirtied more than the job copied */
    double win_start;
    uint64_t win_copied, win_dirtied0;
    int behind;
    enum job_on_error on_src_err, on_tgt_err;
    struct dirty_bitmap *dirty;  /* guest writes not yet on the target */
    struct bdev_write_notifier wn;
    bool notifier_on;
    bool bulk_done;              /* write-blocking applies from then on */
    /* the bulk copy's claimed windows end here (atomic): a guest write at
     * or past it is read by the bulk copy yet, and not marked */
    uint64_t claimed;
    /* ... and under this one everything is copied (atomic): write-blocking
     * applies there already during the bulk copy */
    uint64_t done_below;
    bool complete;               /* block-job-complete asked for the pivot */
    bool switched;               /* the disk uses the target (a grouped pivot did it) */
    char *bitmap;                /* sync bitmap: copy what it marks (blockctl's) */
    bool clear_bitmap;           /* ... and clear it at the end, drained */
    /*
     * An active commit: the target is @src's own backing image @base,
     * reopened read-write for the job; what lies above it is copied down
     * and the pivot makes it the disk's top (it keeps its backing).
     */
    bool commit;
    uint64_t chunk;
    uint8_t *buf;
    /*
     * The journal (blockctl-job(1)) and the write-intent bitmap: a guest
     * write below @wi_mark (the journal's "copied": what a resumed job
     * does not copy again) has its regions marked durably first.  The
     * gate is held (shared) by each guest write from before it is marked
     * until it is in @dirty, and (exclusively) while @wi_mark moves up or
     * bits are cleared, so that neither misses a write in flight.
     */
    struct journal *jn;
    struct wib *wib;
    pthread_rwlock_t wi_gate;
    uint64_t wi_mark;            /* atomic */
    double wi_cleared_at;
    /* regions the guest wrote since the last clearing (atomic bytes): kept
     * marked, and marked ahead when the mark moves up, so that a guest
     * rarely waits for a sync */
    uint8_t *hot;
    uint64_t wi_gran;
};

/* Seconds between two lazy clearings of the write-intent bitmap. */
#define WI_CLEAR_SECS 5.0

/* --- guest writes (their threads) --- */

/* Set by mirror_before when this thread's write reached the target. */
static __thread bool wb_done;
/* Set by mirror_before when this thread holds the write-intent gate. */
static __thread bool wi_held;

static void wi_release(struct mirror_job *m)
{
    if (wi_held) {
        wi_held = false;
        pthread_rwlock_unlock(&m->wi_gate);
    }
}

static void mirror_after(struct bdev_write_notifier *n, uint64_t off, uint64_t len,
                         unsigned flags, int ret)
{
    struct mirror_job *m = n->opaque;

    if (flags & BDEV_REQ_WRITE_UNCHANGED) {
        wb_done = false;
        wi_release(m);
        return;
    }
    __atomic_add_fetch(&m->dirtied, len, __ATOMIC_RELAXED);
    if (m->hot && len) {
        for (uint64_t i = off / m->wi_gran; i <= (off + len - 1) / m->wi_gran; i++) {
            __atomic_store_n(&m->hot[i], 1, __ATOMIC_RELAXED);
        }
    }
    if (wb_done && ret == 0) {
        /* write-blocking: the target has it already (a copy of the region
         * waits for this write, in its section, or came before it) */
        wb_done = false;
        wi_release(m);
        return;
    }
    wb_done = false;
    if (!__atomic_load_n(&m->bulk_done, __ATOMIC_ACQUIRE)) {
        /* (the write is complete: a window claimed after this load reads it) */
        uint64_t c = __atomic_load_n(&m->claimed, __ATOMIC_SEQ_CST);
        if (off >= c) {
            wi_release(m);
            return;
        }
        len = MIN(len, c - off);
    }
    bitmap_set(m->dirty, off, len);
    wi_release(m);
}

/*
 * Write-blocking: the guest's data goes to the target first, and the
 * region is not marked dirty (unless that failed): the copy loop copies a
 * region inside a serialising section of the source, which such a write
 * waits for or which waits for it.  The target never falls behind: the
 * guest runs at the target's pace.
 */
static int mirror_before(struct bdev_write_notifier *n, uint64_t off, uint64_t len,
                         unsigned flags, const void *buf)
{
    struct mirror_job *m = n->opaque;
    int ret;

    wb_done = false;
    wi_held = false;
    if (m->wib && !(flags & BDEV_REQ_WRITE_UNCHANGED)) {
        uint64_t mark;
        pthread_rwlock_rdlock(&m->wi_gate);
        mark = __atomic_load_n(&m->wi_mark, __ATOMIC_ACQUIRE);
        if (off < mark && (ret = wib_mark(m->wib, off, MIN(len, mark - off))) < 0) {
            /* nothing may reach the source that a resumed job would miss */
            pthread_rwlock_unlock(&m->wi_gate);
            return ret;
        }
        wi_held = true;
    }
    if (!__atomic_load_n(&m->write_blocking, __ATOMIC_ACQUIRE) ||
        (!__atomic_load_n(&m->bulk_done, __ATOMIC_ACQUIRE) &&
         off + len > __atomic_load_n(&m->done_below, __ATOMIC_ACQUIRE)) ||
        (flags & (BDEV_REQ_WRITE_UNCHANGED | BDEV_REQ_DISCARD))) {
        return 0;   /* (a discard: the copy loop carries over what the source reads) */
    }
    ret = buf ? bdev_pwrite(m->target, buf, len, off, 0)
              : bdev_pwrite_zeroes(m->target, off, len, BDEV_REQ_MAY_UNMAP);
    /* a failure leaves the region to be marked dirty: copied again */
    wb_done = ret == 0;
    return 0;
}

/* --- the job's thread --- */

/* Copy [off, off+len) from source to target inside a section of the source. */
static int copy_region(struct mirror_job *m, uint64_t off, uint64_t len, bool *tgt_err)
{
    struct bdev_serial *sec = bdev_serialise_begin(m->src, off, len);
    int ret;

    /* bits first: a guest write from now on dirties the region again */
    bitmap_reset(m->dirty, off, len);
    ret = bdev_pread(m->src, m->buf, len, off);
    *tgt_err = false;
    if (ret == 0) {
        ret = buffer_is_zero(m->buf, len)
                  ? bdev_pwrite_zeroes(m->target, off, len, BDEV_REQ_MAY_UNMAP)
                  : bdev_pwrite(m->target, m->buf, len, off, 0);
        *tgt_err = ret < 0;
    }
    if (ret < 0) {
        bitmap_set(m->dirty, off, len);
    }
    bdev_serialise_end(sec);
    return ret;
}

static double mono_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Is some of [off, off+len) dirty in @bm? */
static bool any_dirty(struct dirty_bitmap *bm, uint64_t off, uint64_t len)
{
    uint64_t o, l;

    return bitmap_next_dirty(bm, off, 0, &o, &l) && o < off + len;
}

/*
 * Move the write-intent mark up to @below (everything under it copied):
 * the target flushed, the regions of [mark, below) the guest dirtied
 * meanwhile marked (their copies are not sure to be on the target), then
 * the journal's "copied" recorded.  0, or -errno with *errp set.
 */
static int wi_advance(struct mirror_job *m, uint64_t below, struct error **errp)
{
    uint64_t old = __atomic_load_n(&m->wi_mark, __ATOMIC_ACQUIRE), pos, off, len;
    int r;

    if (!m->jn || below <= old) {
        return 0;
    }
    /*
     * The source first: what the copy read of it may hang on metadata not
     * yet written (a guest write not flushed: a new cluster's L2 entry),
     * which a crash would lose, leaving the target holding data the source
     * no longer reads, in a region the journal calls copied.
     */
    r = bdev_flush(m->src);
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot flush '%s'", m->src->filename);
        return r;
    }
    r = bdev_flush(m->target);
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot flush '%s'", m->target_name);
        return r;
    }
    /*
     * Under the gate (no write in flight): the regions of [old, below)
     * dirty, or written lately, are asked for, and the mark moves up, so
     * that from now on a write there waits for its bit.  Then, the gate
     * open again, one sync writes them; only then does the journal say
     * "copied" (until then a resumed job would copy [old, below) anyway).
     */
    pthread_rwlock_wrlock(&m->wi_gate);
    for (pos = old; bitmap_next_dirty(m->dirty, pos, 0, &off, &len) && off < below;
         pos = off + len) {
        wib_set(m->wib, off, MIN(len, below - off));
    }
    for (uint64_t i = old / m->wi_gran; i * m->wi_gran < below; i++) {
        if (__atomic_load_n(&m->hot[i], __ATOMIC_RELAXED)) {
            wib_set(m->wib, MAX(i * m->wi_gran, old), 1);
        }
    }
    __atomic_store_n(&m->wi_mark, below, __ATOMIC_RELEASE);
    pthread_rwlock_unlock(&m->wi_gate);
    r = wib_save(m->wib);
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot write the write-intent bitmap of job '%s'", m->jn->id);
        return r;
    }
    journal_set_u64(m->jn, "copied", below);
    return journal_save(m->jn, errp);
}

/*
 * The journal of a live mirror or active commit (@type) and its
 * write-intent bitmap, written before the job starts: 0, or -errno with
 * *errp set (nothing is left behind).
 */
static int live_journal_begin(struct mirror_job *m, const char *type, const char *job_id,
                              json_object *args, struct error **errp)
{
    struct journal *j;
    char *wpath;
    int r;

    if (getenv("BLOCKCTL_NO_JOURNAL")) {
        return 0;       /* (benchmarks: the same job without its journal) */
    }
    j = journal_new(m->a->cfg.state_dir, type, 0, NULL, errp);
    if (!j) {
        return -EIO;
    }
    json_object_object_add(j->root, "live", json_object_new_boolean(true));
    journal_set_str(j, "agent-state", m->a->cfg.state_path);
    journal_set_str(j, "agent-qmp", m->a->cfg.qmp_path);
    journal_set_str(j, "disk", m->d->name);
    journal_set_str(j, "job-id", job_id);
    json_object_object_add(j->root, "qmp-args", json_object_get(args));
    journal_set_str(j, "target-format", bdev_format_name(m->target));
    journal_add_image(j, "source", m->src->filename, JR_WRITE);
    journal_add_image(j, "target", m->target->filename, JR_WRITE);
    journal_set_str(j, "authoritative", journal_image_path(j, "source"));
    journal_set_u64(j, "copied", 0);
    journal_set_u64(j, "total", m->src->size);
    wpath = xasprintf("%.*s.wib", (int)(strlen(j->path) - 5), j->path);
    journal_set_str(j, "write-intent-bitmap", wpath);
    m->wib = wib_create(wpath, m->src->size, errp);
    free(wpath);
    if (!m->wib) {
        journal_free(j);
        return -EIO;
    }
    r = journal_step(j, "copying", errp);
    if (r < 0) {
        wib_close(m->wib, true);
        m->wib = NULL;
        journal_free(j);
        return r;
    }
    m->jn = j;
    m->wi_gran = wib_granularity(m->wib);
    m->hot = xzalloc((size_t)DIV_ROUND_UP(m->src->size, m->wi_gran) + 1);
    pthread_rwlockattr_t at;
    pthread_rwlockattr_init(&at);
    /* (a checkpoint is not starved by a stream of guest writes) */
    pthread_rwlockattr_setkind_np(&at, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&m->wi_gate, &at);
    pthread_rwlockattr_destroy(&at);
    /* no bulk copy (sync none, bitmap): every guest write is marked */
    m->wi_mark = m->claimed == UINT64_MAX ? m->src->size : 0;
    m->wi_cleared_at = mono_now();
    return 0;
}

/*
 * Restoring (agent_jobs_restore): the job goes on with journal @j and its
 * write-intent bitmap: the bulk copy from "copied", the marked regions
 * dirty.  0, or -errno with *errp set (the journal is left alone).
 */
static int live_journal_adopt(struct mirror_job *m, struct journal *j, struct error **errp)
{
    const char *wpath = journal_get_str(j, "write-intent-bitmap");
    uint64_t pos = 0, off, len;
    pthread_rwlockattr_t at;

    m->wib = wpath ? wib_open(wpath, errp) : NULL;
    if (!m->wib) {
        if (!wpath) {
            error_setg(errp, "job '%s' has no write-intent bitmap", j->id);
        }
        return -EINVAL;
    }
    while (wib_next(m->wib, pos, &off, &len)) {
        bitmap_set(m->dirty, off, len);
        pos = off + len;
    }
    journal_set_owner(j);
    if (journal_step(j, "copying", errp) < 0) {
        wib_close(m->wib, false);
        m->wib = NULL;
        return -EIO;
    }
    m->jn = j;
    m->wi_gran = wib_granularity(m->wib);
    m->hot = xzalloc((size_t)DIV_ROUND_UP(m->src->size, m->wi_gran) + 1);
    pthread_rwlockattr_init(&at);
    pthread_rwlockattr_setkind_np(&at, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&m->wi_gate, &at);
    pthread_rwlockattr_destroy(&at);
    m->wi_mark = m->claimed == UINT64_MAX ? m->src->size
                                          : MIN(journal_get_u64(j, "copied"), m->src->size);
    if (m->claimed != UINT64_MAX) {
        /* (the bulk copy starts at the mark: a write below it is marked dirty) */
        m->claimed = m->wi_mark;
    }
    m->wi_cleared_at = mono_now();
    return 0;
}

/* Drained, before the job runs: what @dirty holds already (sync=bitmap) marked too. */
static int live_journal_mark_dirty(struct mirror_job *m, struct error **errp)
{
    uint64_t pos = 0, off, len;
    int r;

    if (!m->wib) {
        return 0;
    }
    while (bitmap_next_dirty(m->dirty, pos, 0, &off, &len)) {
        wib_set(m->wib, off, len);
        pos = off + len;
    }
    r = wib_save(m->wib);
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot write the write-intent bitmap of job '%s'",
                         m->jn->id);
    }
    return r;
}

/* The job is over (finished, cancelled, failed): its journal goes. */
static void live_journal_end(struct mirror_job *m)
{
    struct error *err = NULL;

    if (m->wib) {
        wib_close(m->wib, true);
        m->wib = NULL;
    }
    if (m->jn) {
        if (journal_end(m->jn, &err) < 0) {
            agent_log(m->a, "%s", err->msg);
            error_free(err);
        }
        m->jn = NULL;
        pthread_rwlock_destroy(&m->wi_gate);
    }
    if (m->hot) {
        free(m->hot);
        m->hot = NULL;
    }
}

/* The bulk copy's checkpoints (copy_run's thread: the job's). */
static int live_checkpoint(void *opaque, uint64_t below, struct error **errp)
{
    return wi_advance(opaque, below, errp);
}

/*
 * Now and then, between regions (the job's thread, no copy in progress):
 * the write-intent bits of regions copied (not dirty) and on the target
 * (flushed) are cleared, lazily: written out without a wait for them.
 */
static void wi_clear(struct mirror_job *m)
{
    bool wb = __atomic_load_n(&m->write_blocking, __ATOMIC_ACQUIRE);
    double now = mono_now();
    uint64_t pos = 0, off, len;
    int r = 0;

    if (!m->jn || now - m->wi_cleared_at < WI_CLEAR_SECS) {
        return;
    }
    m->wi_cleared_at = now;
    /* (the source first, as in wi_advance) */
    if (bdev_flush(m->src) < 0 || (!wb && bdev_flush(m->target) < 0)) {
        return;
    }
    pthread_rwlock_wrlock(&m->wi_gate);
    /* (write-blocking: guest writes reach the target too; flush those) */
    if (wb) {
        r = bdev_flush(m->target);
    }
    while (r == 0 && wib_next(m->wib, pos, &off, &len)) {
        /* (a region the guest keeps writing stays marked) */
        if (!any_dirty(m->dirty, off, len) &&
            !__atomic_load_n(&m->hot[off / m->wi_gran], __ATOMIC_RELAXED)) {
            wib_clear_region(m->wib, off);
        }
        pos = off + len;
    }
    for (uint64_t i = 0; i * m->wi_gran < m->src->size; i++) {
        __atomic_store_n(&m->hot[i], 0, __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&m->wi_gate);
    if (r == 0) {
        (void)wib_save(m->wib);     /* (not saved: a bit left set costs a copy, no more) */
    }
}

/*
 * copy-mode auto: once the guest has dirtied more than the job copied in
 * each of 3 seconds in a row, the mirror turns write-blocking (guest
 * writes then reach the target before they complete: the copy
 * converges), with a BLOCKCTL_JOB_COPY_MODE event.
 */
#define AUTO_BEHIND_SECS 3

static void auto_check(struct mirror_job *m, struct job *job)
{
    double now = mono_now();
    uint64_t d = __atomic_load_n(&m->dirtied, __ATOMIC_RELAXED);

    if (!m->auto_mode || __atomic_load_n(&m->write_blocking, __ATOMIC_ACQUIRE)) {
        return;
    }
    if (m->win_start == 0) {
        m->win_start = now;
        m->win_dirtied0 = d;
        m->win_copied = 0;
        return;
    }
    if (now - m->win_start < 1.0) {
        return;
    }
    m->behind = d - m->win_dirtied0 > m->win_copied ? m->behind + 1 : 0;
    m->win_start = now;
    m->win_dirtied0 = d;
    m->win_copied = 0;
    if (m->behind >= AUTO_BEHIND_SECS) {
        json_object *e = json_object_new_object();
        __atomic_store_n(&m->write_blocking, true, __ATOMIC_RELEASE);
        json_object_object_add(e, "device", json_object_new_string(job->id));
        json_object_object_add(e, "copy-mode", json_object_new_string("write-blocking"));
        job_event(job, "BLOCKCTL_JOB_COPY_MODE", e);
    }
}

/* Dirty bytes past which a ready mirror is ready no more (a pivot would
 * stall the guest while they are copied). */
#define REVOKE_READY_BYTES (32ull << 20)

/* Between regions: copy-mode auto's look, and READY revoked if need be. */
static void watch_progress(struct mirror_job *m, struct job *job)
{
    auto_check(m, job);
    if (job->ready_sent && bitmap_dirty_bytes(m->dirty) > REVOKE_READY_BYTES) {
        job_unset_ready(job);
    }
}

/*
 * One pass over what is dirty now (each region's bits cleared before it
 * is copied).  0, or -errno (-ECANCELED when cancelled).
 */
static int copy_dirty(struct mirror_job *m, struct job *job, struct error **errp)
{
    uint64_t pos = 0, off, len;

    while (bitmap_next_dirty(m->dirty, pos, m->chunk, &off, &len)) {
        bool tgt_err;
        int ret;

        if (job) {
            watch_progress(m, job);
            if (job_pause_point(job)) {
                return -ECANCELED;
            }
        }
        ret = copy_region(m, off, len, &tgt_err);
        if (ret < 0) {
            enum job_on_error pol = tgt_err ? m->on_tgt_err : m->on_src_err;
            if (job && (pol == JOB_ERR_IGNORE)) {
                job_report_error(job, !tgt_err, JOB_ERR_IGNORE, -ret);
                pos = off + len;
                continue;
            }
            if (job && (pol == JOB_ERR_STOP || (pol == JOB_ERR_ENOSPC && ret == -ENOSPC))) {
                job_report_error(job, !tgt_err, JOB_ERR_STOP, -ret);
                continue;           /* stopped until resumed; then retried */
            }
            if (job) {
                job_report_error(job, !tgt_err, JOB_ERR_REPORT, -ret);
            }
            error_setg_errno(errp, -ret, "cannot %s '%s'", tgt_err ? "write to" : "read from",
                             tgt_err ? m->target_name : m->src->filename);
            return ret;
        }
        if (job) {
            uint64_t speed = job_speed(job);
            job_progress_add(job, len);
            job_progress_set_remaining(job, bitmap_dirty_bytes(m->dirty));
            m->win_copied += len;
            if (speed) {
                /* the speed limit, in slices: set-speed and the watch act at once */
                double until = mono_now() + (double)len / (double)speed;
                double now;
                while ((now = mono_now()) < until && !job_should_yield(job) &&
                       job_speed(job) == speed) {
                    double step = until - now < 0.1 ? until - now : 0.1;
                    job_sleep_ns(job, (uint64_t)(step * 1e9) + 1);
                    watch_progress(m, job);
                }
            }
        }
        pos = off + len;
    }
    return 0;
}

static int mirror_run(struct job *job, struct error **errp)
{
    struct mirror_job *m = job->opaque;
    uint64_t size = m->src->size;
    int ret = 0;

    job_progress_set_total(job, m->sync == SYNC_BITMAP ? 0 : size);
    if (m->sync == SYNC_BITMAP) {
        /* the bitmap's regions are in m->dirty: the dirty loop copies them */
    } else if (m->sync != SYNC_NONE) {
        struct copy_params cp;
        memset(&cp, 0, sizeof(cp));
        cp.src = m->src;
        cp.dst = m->target;
        cp.mode = m->sync == SYNC_TOP || m->commit ? COPY_ABOVE : COPY_ALL;
        cp.base = m->commit ? m->target : m->sync == SYNC_TOP ? m->src->backing : NULL;
        cp.check_dst_zero = true;
        cp.no_flush = true;
        cp.job = job;
        cp.claimed = &m->claimed;
        cp.done_below = &m->done_below;
        if (m->jn) {
            cp.checkpoint = live_checkpoint;
            cp.checkpoint_opaque = m;
            cp.checkpoint_secs = journal_checkpoint_secs();
            cp.start = __atomic_load_n(&m->wi_mark, __ATOMIC_ACQUIRE);  /* (resumed: from there) */
        }
        /* an error follows the job's policy, as in the dirty loop: a copy
         * stopped (resumed) or ignoring it starts again where it stopped */
        while ((ret = copy_run(&cp, errp)) < 0 && ret != -ECANCELED) {
            bool tgt = cp.failed == m->target;
            enum job_on_error pol = tgt ? m->on_tgt_err : m->on_src_err;
            if (pol == JOB_ERR_ENOSPC) {
                pol = ret == -ENOSPC ? JOB_ERR_STOP : JOB_ERR_REPORT;
            }
            job_report_error(job, !tgt, pol, -ret);
            if (pol == JOB_ERR_REPORT) {
                return ret;
            }
            error_free(*errp);
            *errp = NULL;
            cp.start = cp.stopped_at;
        }
        if (ret < 0) {
            return ret;
        }
    } else {
        job_progress_add(job, size);
    }
    __atomic_store_n(&m->bulk_done, true, __ATOMIC_RELEASE);
    ret = wi_advance(m, size, errp);
    if (ret < 0) {
        return ret;
    }

    for (;;) {
        uint64_t left = bitmap_dirty_bytes(m->dirty);

        watch_progress(m, job);
        wi_clear(m);
        if (job_pause_point(job)) {
            /* cancelled: once ready, without force, the copy is finished
             * (no pivot) on the main loop; otherwise it is abandoned */
            return job_cancel_forced(job) ? -ECANCELED : 0;
        }
        if (left == 0) {
            if (!job->ready_sent) {
                ret = bdev_flush(m->target);
                if (ret < 0) {
                    error_setg_errno(errp, -ret, "cannot flush '%s'", m->target_name);
                    return ret;
                }
                job_set_ready(job);
            }
            if (__atomic_load_n(&m->complete, __ATOMIC_ACQUIRE)) {
                return 0;
            }
            job_sleep_ns(job, 5 * 1000 * 1000);
            continue;
        }
        job_progress_set_remaining(job, left);
        ret = copy_dirty(m, job, errp);
        if (ret == -ECANCELED) {
            continue;           /* the pause point above decides */
        }
        if (ret < 0) {
            return ret;
        }
    }
}

/* --- the main loop's part --- */

static int mirror_complete(struct job *job, struct error **errp)
{
    struct mirror_job *m = job->opaque;

    (void)errp;
    __atomic_store_n(&m->complete, true, __ATOMIC_RELEASE);
    pthread_mutex_lock(&job->lock);
    pthread_cond_broadcast(&job->cond);
    pthread_mutex_unlock(&job->lock);
    return 0;
}

static void notifier_off(struct mirror_job *m)
{
    if (m->notifier_on) {
        bdev_remove_write_notifier(m->src, &m->wn);
        m->notifier_on = false;
    }
}

/* Drained: copy what is still dirty (little: the job was ready), flush the target. */
static int mirror_catch_up(struct mirror_job *m, struct error **errp)
{
    int ret = copy_dirty(m, NULL, errp);

    if (ret == 0) {
        ret = bdev_flush(m->target);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "cannot flush '%s'", m->target_name);
        }
    }
    if (ret == 0 && m->clear_bitmap) {
        /* the target holds what it marked, and no write is in flight */
        struct bitmap_op op = { .type = BITMAP_OP_CLEAR, .name = m->bitmap };
        struct bitmap_undo *undo = NULL;
        struct error *err = NULL;
        if (bdev_bitmap_apply_undo(m->src, &op, 1, &undo, &err) < 0) {
            agent_log(m->a, "disk %s: bitmap %s not cleared: %s", m->d->name, m->bitmap,
                      err->msg);
            error_free(err);
        } else {
            bdev_bitmap_undo_free(undo);
        }
        m->clear_bitmap = false;
    }
    return ret;
}

/* Drained, caught up: the disk's top becomes the target. */
static void mirror_switch(struct mirror_job *m)
{
    struct error *err = NULL;
    struct bdev *old;

    notifier_off(m);
    if (m->commit || m->target->backing) {
        /* the base keeps its own backing file; a new target has its own */
    } else if (m->sync == SYNC_TOP) {
        bdev_set_backing(m->target, m->src->backing);
    } else if (m->sync == SYNC_NONE) {
        bdev_set_backing(m->target, m->src);
    }
    if (bdev_bitmaps_follow(m->src, m->target, &err) < 0) {
        agent_log(m->a, "disk %s: the bitmaps stay on %s: %s", m->d->name, m->src->filename,
                  err->msg);
        error_free(err);
    }
    if (!m->target->node_name) {
        m->target->node_name = agent_new_node_name(m->a, m->d);
    }
    agent_node_adopted(m->a, m->target);     /* a blockdev-add node: the disk's now */
    old = blk_replace_root(m->d->blk, m->target);
    m->target = NULL;       /* the disk's now */
    bdev_unref(old);
    m->switched = true;
}

static void log_end(struct mirror_job *m, bool pivot)
{
    agent_log(m->a, "disk %s: %s %s %s", m->d->name, m->commit ? "commit into" : "mirror to",
              m->target_name, pivot ? "complete: the disk now uses it" : "finished (no pivot)");
}

static void save_state(struct agent *a)
{
    struct error *err = NULL;

    if (agent_state_save(a, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
    }
}

/*
 * The end of a successful run, disk drained: copy what is left, flush the
 * target, then pivot (complete) or leave the target as a copy of this
 * moment (cancel once ready).  A grouped pivot may have switched already.
 */
static int mirror_prepare(struct job *job, struct error **errp)
{
    struct mirror_job *m = job->opaque;
    bool pivot = !job_is_cancelled(job);
    int ret;

    if (m->switched) {
        return 0;
    }
    if (pivot && m->jn && (ret = journal_step(m->jn, "pivoting", errp)) < 0) {
        return ret;     /* (a crash during the pivot would leave the journal wrong) */
    }
    blk_drain_begin(m->d->blk);
    ret = mirror_catch_up(m, errp);
    if (ret == 0) {
        notifier_off(m);
        if (pivot) {
            mirror_switch(m);
            /* still drained: no write lands on the new top before the
             * state file names it (a restarted agent opens it) */
            save_state(m->a);
        }
    }
    blk_drain_end(m->d->blk);
    if (ret == 0) {
        log_end(m, pivot);
        live_journal_end(m);    /* (the state file names the disk's top now) */
    }
    return ret;
}

static bool is_mirror(struct job *job);

/*
 * Grouped pivot: every job ready, their workers parked, all the disks
 * drained at once; each target caught up and flushed, and only if all
 * succeed, every disk switched; then the jobs end as after
 * block-job-complete.  On failure no disk has moved and the jobs go on.
 */
int agent_jobs_complete_group(struct agent *a, struct job **jobs, size_t n, struct error **errp)
{
    size_t parked = 0, i;
    int ret = 0;

    for (i = 0; i < n && ret == 0; i++) {
        for (size_t k = 0; k < i; k++) {
            if (jobs[k] == jobs[i]) {
                error_setg(errp, "Job '%s' is named twice", jobs[i]->id);
                return -EINVAL;
            }
        }
        ret = job_can_complete(jobs[i], errp);
        if (ret == 0 && (!is_mirror(jobs[i]) ||
                         __atomic_load_n(&((struct mirror_job *)jobs[i]->opaque)->complete,
                                         __ATOMIC_ACQUIRE))) {
            error_setg(errp, "The active block job '%s' cannot be completed", jobs[i]->id);
            ret = -EINVAL;
        }
    }
    if (ret < 0) {
        return ret;
    }
    for (parked = 0; parked < n; parked++) {
        if (!job_quiesce(jobs[parked]) || !job_is_ready(jobs[parked])) {
            error_setg(errp, "The active block job '%s' cannot be completed (no longer ready)",
                       jobs[parked]->id);
            job_unquiesce(jobs[parked]);
            ret = -EAGAIN;
            break;
        }
    }
    /* what the guests dirtied lately, while they still run: the drain is short */
    for (i = 0; i < parked && ret == 0; i++) {
        struct mirror_job *m = jobs[i]->opaque;
        ret = copy_dirty(m, NULL, errp);
        if (ret == 0 && m->jn) {
            ret = journal_step(m->jn, "pivoting", errp);
        }
    }
    if (ret == 0) {
        for (i = 0; i < n; i++) {
            struct mirror_job *m = jobs[i]->opaque;
            blk_drain_begin(m->d->blk);
        }
        for (i = 0; i < n && ret == 0; i++) {
            ret = mirror_catch_up(jobs[i]->opaque, errp);
        }
        for (i = 0; i < n && ret == 0; i++) {
            struct mirror_job *m = jobs[i]->opaque;
            mirror_switch(m);
            __atomic_store_n(&m->complete, true, __ATOMIC_RELEASE);
        }
        if (ret == 0) {
            save_state(a);      /* (still drained, as in mirror_prepare) */
        }
        for (i = n; i-- > 0;) {
            struct mirror_job *m = jobs[i]->opaque;
            blk_drain_end(m->d->blk);
        }
    }
    if (ret == 0) {
        for (i = 0; i < n; i++) {
            log_end(jobs[i]->opaque, true);
            live_journal_end(jobs[i]->opaque);
        }
    }
    for (i = 0; i < parked; i++) {
        job_unquiesce(jobs[i]);
    }
    return ret;
}

static void mirror_clean(struct job *job)
{
    struct mirror_job *m = job->opaque;

    if (m->notifier_on) {
        blk_drain_begin(m->d->blk);
        notifier_off(m);
        blk_drain_end(m->d->blk);
    }
}

static void mirror_free(struct job *job)
{
    struct mirror_job *m = job->opaque;
    struct error *err = NULL;

    if (m->target && m->commit) {
        /* no pivot: the base is a backing image again */
        if (bdev_reopen(m->target, 0, &err) < 0) {
            agent_log(m->a, "commit base %s: %s", m->target_name, err->msg);
            error_free(err);
        }
        bdev_unref(m->target);
    } else if (m->target && bdev_close(m->target, &err) < 0) {
        agent_log(m->a, "mirror target %s: %s", m->target_name, err->msg);
        error_free(err);
    }
    bdev_unref(m->src);
    live_journal_end(m);
    bitmap_free(m->dirty);
    free(m->bitmap);
    free(m->buf);
    free(m->target_name);
    free(m);
}

/* copy-mode auto: which mode it is in now (QEMU's jobs have no such member) */
static void mirror_query(struct job *job, json_object *info)
{
    struct mirror_job *m = job->opaque;

    if (m->auto_mode) {
        json_object_object_add(info, "copy-mode", json_object_new_string(
            __atomic_load_n(&m->write_blocking, __ATOMIC_ACQUIRE) ? "write-blocking"
                                                                 : "background"));
    }
}

static const struct job_driver mirror_driver = {
    .type = "mirror",
    .run = mirror_run,
    .complete = mirror_complete,
    .prepare = mirror_prepare,
    .clean = mirror_clean,
    .free = mirror_free,
    .query = mirror_query,
};

/* an active commit: the mirror's machinery, QEMU's job type */
static const struct job_driver active_commit_driver = {
    .type = "commit",
    .run = mirror_run,
    .complete = mirror_complete,
    .prepare = mirror_prepare,
    .clean = mirror_clean,
    .free = mirror_free,
    .query = mirror_query,
};

static bool is_mirror(struct job *job)
{
    return job->drv == &mirror_driver || job->drv == &active_commit_driver;
}

/* --- an intermediate commit: copy TOP down into BASE, then drop what
 * lies between (the image above TOP is relinked onto BASE) --- */

struct commit_job {
    struct agent *a;
    struct agent_disk *d;
    struct bdev *top, *base, *above;   /* our references */
    char *backing_file;                /* recorded in @above */
};

static int commit_run(struct job *job, struct error **errp)
{
    struct commit_job *c = job->opaque;
    struct copy_params cp;

    memset(&cp, 0, sizeof(cp));
    cp.src = c->top;
    cp.dst = c->base;
    cp.mode = COPY_ABOVE;
    cp.base = c->base;
    cp.check_dst_zero = true;
    cp.job = job;
    return copy_run(&cp, errp);
}

static int commit_prepare(struct job *job, struct error **errp)
{
    struct commit_job *c = job->opaque;
    struct error *err = NULL;
    int ret;

    blk_drain_begin(c->d->blk);
    ret = c->above->drv->change_backing(c->above, c->backing_file, bdev_format_name(c->base),
                                        errp);
    if (ret == 0) {
        bdev_set_backing(c->above, c->base);
    }
    blk_drain_end(c->d->blk);
    if (ret == 0) {
        agent_log(c->a, "disk %s: committed %s into %s", c->d->name, c->top->filename,
                  c->base->filename);
        if (agent_state_save(c->a, &err) < 0) {
            agent_log(c->a, "%s", err->msg);
            error_free(err);
        }
    }
    return ret;
}

static void commit_free(struct job *job)
{
    struct commit_job *c = job->opaque;
    struct error *err = NULL;

    if (bdev_reopen(c->base, 0, &err) < 0) {
        agent_log(c->a, "commit base %s: %s", c->base->filename, err->msg);
        error_free(err);
    }
    bdev_unref(c->top);
    bdev_unref(c->base);
    bdev_unref(c->above);
    free(c->backing_file);
    free(c);
}

static const struct job_driver commit_driver = {
    .type = "commit",
    .run = commit_run,
    .prepare = commit_prepare,
    .free = commit_free,
};

/* --- drive-mirror --- */

static const char *str_arg(json_object *args, const char *name)
{
    json_object *v;

    return json_object_object_get_ex(args, name, &v) && v ? json_object_get_string(v) : NULL;
}

static enum job_on_error on_error(json_object *args, const char *name)
{
    const char *v = str_arg(args, name);

    if (!v || !strcmp(v, "report")) {
        return JOB_ERR_REPORT;
    }
    return !strcmp(v, "ignore") ? JOB_ERR_IGNORE
           : !strcmp(v, "enospc") ? JOB_ERR_ENOSPC
           : !strcmp(v, "stop") ? JOB_ERR_STOP
                                : JOB_ERR_REPORT;
}

/* Create the target (mode absolute-paths) as QEMU does for drive-mirror. */
static int create_target(struct mirror_job *m, const char *fmt, struct error **errp)
{
    struct optlist o = { 0 };
    char size[32], *tmp = NULL;
    bool renamed = false;
    int ret;

    if (!bdev_find_driver(fmt)) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        return -EINVAL;
    }
    snprintf(size, sizeof(size), "%" PRIu64, m->src->size);
    opts_set(&o, "size", size);
    if ((m->sync == SYNC_TOP && m->src->backing) || m->sync == SYNC_NONE) {
        /* named as the chain names it: relative to the target's folder if so */
        struct bdev *b = m->sync == SYNC_NONE ? m->src : m->src->backing;
        char *dir = bdev_dirname(m->target_name);
        char *name = b->drv->is_protocol ? xstrdup(b->filename)
                                         : bdev_backing_name_for_dir(dir, m->src, b);
        opts_set(&o, "backing_file", name);
        opts_set(&o, "backing_fmt", bdev_format_name(b));
        free(name);
        free(dir);
    }
    if ((m->sync == SYNC_TOP && m->src->backing) || m->sync == SYNC_NONE) {
        const struct format_driver *drv = bdev_find_driver(fmt);
        if (drv && !drv->supports_backing) {
            opts_free(&o);
            error_setg(errp, "Driver '%s' does not support backing files", fmt);
            return -ENOTSUP;
        }
    }
    /* made under a hidden name, then renamed over TARGET (as QEMU
     * replaces it): a crash never leaves a half-made TARGET */
    ret = bdev_create_hidden(fmt, m->target_name, &o, &tmp, errp);
    opts_free(&o);
    if (ret == 0) {
        ret = bdev_create_install(tmp, m->target_name, BDEV_CREATE_FORCE, &renamed, errp);
    }
    if (ret < 0 && !renamed) {
        (void)io_unlink(tmp);
    }
    free(tmp);
    return ret;
}

/*
 * What drive-mirror and blockdev-mirror share, before the target: the
 * checks of the source and the arguments, then the job's state (no
 * target yet), or NULL with QEMU's error.
 */
static struct mirror_job *mirror_new(struct agent *a, json_object *args, struct error **errp)
{
    const char *device = str_arg(args, "device");
    const char *sync = str_arg(args, "sync");
    const char *cmode = str_arg(args, "copy-mode");
    const char *id = str_arg(args, "job-id");
    const char *bitmap = str_arg(args, "bitmap");
    json_object *v;
    int64_t gran = 0, bufsz = 0;
    struct agent_disk *d = NULL;
    struct mirror_job *m;
    struct bdev *src;
    bool clear = json_object_object_get_ex(args, "clear-bitmap", &v) && json_object_get_boolean(v);

    if (json_object_object_get_ex(args, "granularity", &v)) {
        gran = json_object_get_int64(v);
    }
    if (json_object_object_get_ex(args, "buf-size", &v)) {
        bufsz = json_object_get_int64(v);
    }
    src = agent_find_node(a, device, &d, NULL);
    if (!src || !d) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'", device, device);
        return NULL;
    }
    if (!strcmp(sync, "incremental") || (!strcmp(sync, "bitmap") && !bitmap)) {
        error_setg(errp, "Sync mode '%s' not supported", sync);
        return NULL;
    }
    if (bitmap && strcmp(sync, "bitmap")) {
        error_setg(errp, "Parameter 'bitmap' goes with sync mode 'bitmap'");
        return NULL;
    }
    if (clear && !bitmap) {
        error_setg(errp, "Parameter 'clear-bitmap' goes with sync mode 'bitmap'");
        return NULL;
    }
    if (gran && (gran < 512 || gran > 64 * 1024 * 1024)) {
        error_setg(errp, "Parameter 'granularity' expects a value in range [512B, 64MB]");
        return NULL;
    }
    if (gran & (gran - 1)) {
        error_setg(errp, "Parameter 'granularity' expects a power of 2");
        return NULL;
    }
    if (bufsz < 0) {
        error_setg(errp, "Invalid parameter 'buf-size'");
        return NULL;
    }
    if (src != blk_root(d->blk)) {
        error_setg(errp, "Mirroring '%s', an image below the top of disk '%s', is not "
                   "supported: mirror the disk", device, d->name);
        return NULL;
    }
    if (agent_disk_check_busy(a, d, device, errp) < 0) {
        return NULL;
    }
    if (bitmap) {
        struct dirty_bitmap *u = NULL;
        if (bdev_bitmap_union(src, bitmap, &u, errp) < 0) {
            return NULL;
        }
        bitmap_free(u);
    }
    if (id && job_find(&a->jobs, id)) {
        error_setg(errp, "Job ID '%s' already in use", id);
        return NULL;
    }
    m = xzalloc(sizeof(*m));
    m->a = a;
    m->d = d;
    m->src = src;
    bdev_ref(src);
    m->sync = !strcmp(sync, "top")    ? SYNC_TOP
              : !strcmp(sync, "none")   ? SYNC_NONE
              : !strcmp(sync, "bitmap") ? SYNC_BITMAP
                                        : SYNC_FULL;
    /* no bulk copy: every guest write is marked */
    m->claimed = m->sync == SYNC_NONE || m->sync == SYNC_BITMAP ? UINT64_MAX : 0;
    m->bitmap = bitmap ? xstrdup(bitmap) : NULL;
    m->clear_bitmap = clear;
    m->write_blocking = cmode && !strcmp(cmode, "write-blocking");
    m->auto_mode = cmode && !strcmp(cmode, "auto");
    m->on_src_err = on_error(args, "on-source-error");
    m->on_tgt_err = on_error(args, "on-target-error");
    m->chunk = 1 << 20;
    m->buf = xmemalign(4096, m->chunk);
    m->dirty = bitmap_new(src->size, gran ? (uint64_t)gran : 65536);
    return m;
}

/* Start @job; one restored from its journal starts paused (job-resume goes on). */
static void start_job(struct agent *a, struct job *job)
{
    struct error *err = NULL;

    if (a->restoring && job_user_pause(job, &err) < 0) {
        agent_log(a, "job %s: %s", job->id, err->msg);
        error_free(err);
    }
    job_start(job);
}

/* The target is there: check its size, create the job, mark from now on, start. */
static int mirror_launch(struct agent *a, json_object *args, struct mirror_job *m,
                         struct error **errp)
{
    const char *device = str_arg(args, "device"), *id = str_arg(args, "job-id");
    struct agent_disk *d = m->d;
    int64_t speed = 0;
    struct job *job;
    json_object *v;

    if (json_object_object_get_ex(args, "speed", &v)) {
        speed = json_object_get_int64(v);
    }
    if (m->target->size < m->src->size) {
        error_setg(errp, "Target '%s' is smaller than the source (%" PRIu64 " < %" PRIu64
                   " bytes)", m->target_name, m->target->size, m->src->size);
        mirror_free(&(struct job){ .opaque = m });
        return -EINVAL;
    }
    if ((a->restoring ? live_journal_adopt(m, a->restoring, errp)
                      : live_journal_begin(m, "mirror", id ? id : (!strcmp(device, d->name) ? d->name
                                                                                           : ""),
                                           args, errp)) < 0) {
        mirror_free(&(struct job){ .opaque = m });
        return -EIO;
    }
    job = job_create(&a->jobs, &mirror_driver, id ? id : (!strcmp(device, d->name) ? d->name : ""),
                     d->name, speed, json_object_object_get_ex(args, "auto-finalize", &v)
                                         ? json_object_get_boolean(v) : true,
                     json_object_object_get_ex(args, "auto-dismiss", &v)
                         ? json_object_get_boolean(v) : true, m, errp);
    if (!job) {
        mirror_free(&(struct job){ .opaque = m });
        return -EINVAL;
    }
    /* from now on every guest write is marked */
    m->wn.after = mirror_after;
    m->wn.before = mirror_before;
    m->wn.opaque = m;
    blk_drain_begin(d->blk);
    if (m->bitmap) {
        /* what the bitmap marks now, and every write from now on */
        struct dirty_bitmap *u = NULL;
        struct error *err = NULL;
        uint64_t pos = 0, off, len;
        if (bdev_bitmap_union(m->src, m->bitmap, &u, &err) < 0) {
            /* (checked by mirror_new, on this thread: it cannot be gone) */
            bitmap_set_all(m->dirty);
            agent_log(a, "disk %s: bitmap %s: %s: copying everything", d->name, m->bitmap,
                      err->msg);
            error_free(err);
            err = NULL;
            u = bitmap_new(m->src->size, 65536);
        }
        while (bitmap_next_dirty(u, pos, UINT64_MAX, &off, &len)) {
            bitmap_set(m->dirty, off, len);
            pos = off + len;
        }
        bitmap_free(u);
        if (live_journal_mark_dirty(m, &err) < 0) {
            /* (the job is not resumable after a crash: it says so) */
            agent_log(a, "disk %s: job %s: %s", d->name, job->id, err->msg);
            error_free(err);
            err = NULL;
            live_journal_end(m);
        }
    }
    bdev_add_write_notifier(m->src, &m->wn);
    m->notifier_on = true;
    blk_drain_end(d->blk);
    agent_log(a, "disk %s: job %s: mirror (sync %s%s) to %s", d->name, job->id,
              str_arg(args, "sync"), m->write_blocking ? ", write-blocking" : "", m->target_name);
    start_job(a, job);
    return 0;
}

static int qmp_drive_mirror(json_object *args, json_object **ret, void *opaque,
                            struct error **errp)
{
    struct agent *a = opaque;
    const char *target = str_arg(args, "target");
    const char *format = str_arg(args, "format");
    const char *mode = str_arg(args, "mode");
    bool existing = mode && !strcmp(mode, "existing");
    struct mirror_job *m = mirror_new(a, args, errp);
    int r = 0;

    (void)ret;
    if (!m) {
        return -EINVAL;
    }
    m->target_name = xstrdup(target);
    if (m->sync == SYNC_BITMAP && !existing) {
        error_setg(errp, "Sync mode 'bitmap' copies into a target that holds the disk as it "
                   "was when the bitmap began: mode 'existing'");
        mirror_free(&(struct job){ .opaque = m });
        return -EINVAL;
    }
    if (!format) {
        format = bdev_format_name(m->src);
    }
    if (!existing) {
        r = create_target(m, format, errp);
    }
    if (r == 0) {
        struct error *err = NULL;
        m->target = bdev_open(target, format, BDEV_O_RDWR | BDEV_O_NO_BACKING | BDEV_O_KILL_SAFE,
                              &err);
        r = m->target ? 0 : -EIO;
        if (err && !strncmp(err->msg, "cannot open", 11)) {
            /* QEMU's words */
            char *m2 = xasprintf("Could not open%s", err->msg + 11);
            free(err->msg);
            err->msg = m2;
        }
        error_propagate(errp, err);
    }
    if (r == 0 && !existing && m->sync != SYNC_FULL && m->target->drv->supports_backing) {
        /*
         * The target's backing in memory from the start (it was opened
         * without): a partial write into one of its clusters (write-blocking)
         * copies the rest of the cluster from there, as the file says.
         */
        bdev_set_backing(m->target, m->sync == SYNC_NONE ? m->src : m->src->backing);
    }
    if (r < 0) {
        mirror_free(&(struct job){ .opaque = m });
        return r;
    }
    return mirror_launch(a, args, m, errp);
}

/* blockdev-mirror: the target is a node of blockdev-add, kept as opened */
static int qmp_blockdev_mirror(json_object *args, json_object **ret, void *opaque,
                               struct error **errp)
{
    struct agent *a = opaque;
    const char *target = str_arg(args, "target");
    struct agent_disk *td = NULL;
    struct bdev *tbd;
    struct mirror_job *m;

    (void)ret;
    if (agent_find_node(a, target, &td, NULL)) {
        struct agent_disk *sd = NULL;
        agent_find_node(a, str_arg(args, "device"), &sd, NULL);
        if (sd && sd == td) {
            error_setg(errp, "Can't mirror node into itself");
        } else {
            error_setg(errp, "Node '%s' is in use by disk '%s'", target, td ? td->name : "?");
        }
        return -EINVAL;
    }
    if (!agent_node_exists(a, target)) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'", target, target);
        return -ENOENT;
    }
    m = mirror_new(a, args, errp);
    if (!m) {
        return -EINVAL;
    }
    tbd = agent_node_bdev(a, target, errp);
    if (tbd && tbd->read_only) {
        error_setg(errp, "Target node '%s' is read-only", target);
        tbd = NULL;
    }
    if (tbd && __atomic_load_n(&tbd->refcnt, __ATOMIC_ACQUIRE) > 1) {
        error_setg(errp, "Node '%s' is in use", target);
        tbd = NULL;
    }
    if (!tbd) {
        mirror_free(&(struct job){ .opaque = m });
        return -EINVAL;
    }
    m->target = tbd;
    bdev_ref(tbd);
    m->target_name = xstrdup(tbd->filename);
    return mirror_launch(a, args, m, errp);
}

static bool in_chain_below(struct bdev *top, struct bdev *b)
{
    for (struct bdev *x = top->backing; x; x = x->backing) {
        if (x == b) {
            return true;
        }
    }
    return false;
}

static int qmp_block_commit(json_object *args, json_object **ret, void *opaque,
                            struct error **errp)
{
    struct agent *a = opaque;
    const char *device = str_arg(args, "device");
    const char *top_node = str_arg(args, "top-node"), *top_file = str_arg(args, "top");
    const char *base_node = str_arg(args, "base-node"), *base_file = str_arg(args, "base");
    const char *bfile = str_arg(args, "backing-file");
    const char *id = str_arg(args, "job-id");
    struct agent_disk *d = NULL;
    struct bdev *disk_top, *top, *base = NULL;
    struct job *job;
    json_object *v;
    int64_t speed = json_object_object_get_ex(args, "speed", &v) ? json_object_get_int64(v) : 0;
    bool auto_fin = json_object_object_get_ex(args, "auto-finalize", &v)
                        ? json_object_get_boolean(v) : true;
    bool auto_dis = json_object_object_get_ex(args, "auto-dismiss", &v)
                        ? json_object_get_boolean(v) : true;
    int r;

    (void)ret;
    disk_top = agent_find_node(a, device, &d, NULL);
    if (!disk_top || !d) {
        error_setg(errp, "Device '%s' not found", device);
        error_set_class(errp, QMP_ERR_DEVICE_NOT_FOUND);
        return -ENOENT;
    }
    disk_top = blk_root(d->blk);
    if (top_node && top_file) {
        error_setg(errp, "'top-node' and 'top' are mutually exclusive");
        return -EINVAL;
    }
    if (base_node && base_file) {
        error_setg(errp, "'base-node' and 'base' are mutually exclusive");
        return -EINVAL;
    }
    top = disk_top;
    if (top_node) {
        top = agent_find_node(a, top_node, NULL, NULL);
        if (!top) {
            error_setg(errp, "Cannot find device='' nor node-name='%s'", top_node);
            return -ENOENT;
        }
    } else if (top_file) {
        top = bdev_chain_find(disk_top, top_file);
        if (!top) {
            error_setg(errp, "Top image file %s not found", top_file);
            return -ENOENT;
        }
    }
    if (base_node) {
        base = agent_find_node(a, base_node, NULL, NULL);
        if (!base) {
            error_setg(errp, "Cannot find device='' nor node-name='%s'", base_node);
            return -ENOENT;
        }
    } else if (base_file) {
        base = top->backing ? bdev_chain_find(top->backing, base_file) : NULL;
        if (!base) {
            error_setg(errp, "Can't find '%s' in the backing chain", base_file);
            return -ENOENT;
        }
    } else {
        for (base = top; base->backing; base = base->backing) {
        }
    }
    if (top == base) {
        error_setg(errp, "cannot commit an image into itself");
        return -EINVAL;
    }
    if (top != disk_top && !in_chain_below(disk_top, top)) {
        error_setg(errp, "'%s' is not in this backing file chain", top_node ? top_node : top_file);
        return -EINVAL;
    }
    if (!in_chain_below(top, base)) {
        error_setg(errp, "'%s' is not in this backing file chain",
                   base_node ? base_node : base->node_name ? base->node_name : base->filename);
        return -EINVAL;
    }
    if (agent_disk_check_busy(a, d, device, errp) < 0) {
        return -EBUSY;
    }
    if (d->read_only) {
        error_setg(errp, "Block node is read-only");
        return -EPERM;
    }
    if (id && job_find(&a->jobs, id)) {
        error_setg(errp, "Job ID '%s' already in use", id);
        return -EEXIST;
    }
    if (!id) {
        id = !strcmp(device, d->name) ? d->name : "";
    }
    /* the base is written: read-write for the job's time */
    blk_drain_begin(d->blk);
    r = bdev_reopen(base, BDEV_O_RDWR, errp);
    blk_drain_end(d->blk);
    if (r < 0) {
        return r;
    }
    if (top == disk_top) {
        struct mirror_job *m = xzalloc(sizeof(*m));
        m->a = a;
        m->d = d;
        m->src = top;
        bdev_ref(top);
        m->target = base;
        bdev_ref(base);
        m->commit = true;
        m->target_name = xstrdup(base->filename);
        m->sync = SYNC_TOP;
        m->on_src_err = m->on_tgt_err = on_error(args, "on-error");
        m->chunk = 1 << 20;
        m->buf = xmemalign(4096, m->chunk);
        m->dirty = bitmap_new(top->size, 65536);
        if ((a->restoring ? live_journal_adopt(m, a->restoring, errp)
                          : live_journal_begin(m, "commit", id, args, errp)) < 0) {
            mirror_free(&(struct job){ .opaque = m });
            return -EIO;
        }
        job = job_create(&a->jobs, &active_commit_driver, id, d->name, speed, auto_fin, auto_dis,
                         m, errp);
        if (!job) {
            mirror_free(&(struct job){ .opaque = m });
            return -EINVAL;
        }
        m->wn.after = mirror_after;
        m->wn.before = mirror_before;
        m->wn.opaque = m;
        blk_drain_begin(d->blk);
        bdev_add_write_notifier(top, &m->wn);
        m->notifier_on = true;
        blk_drain_end(d->blk);
        agent_log(a, "disk %s: job %s: active commit of %s into %s", d->name, job->id,
                  top->filename, base->filename);
    } else {
        struct commit_job *c = xzalloc(sizeof(*c));
        struct bdev *above = disk_top;
        while (above->backing != top) {
            above = above->backing;
        }
        c->a = a;
        c->d = d;
        c->top = top;
        c->base = base;
        c->above = above;
        bdev_ref(top);
        bdev_ref(base);
        bdev_ref(above);
        c->backing_file = bfile ? xstrdup(bfile) : bdev_backing_name_for(above, disk_top, base);
        job = job_create(&a->jobs, &commit_driver, id, d->name, speed, auto_fin, auto_dis, c,
                         errp);
        if (!job) {
            commit_free(&(struct job){ .opaque = c });
            return -EINVAL;
        }
        agent_log(a, "disk %s: job %s: commit of %s into %s", d->name, job->id, top->filename,
                  base->filename);
    }
    start_job(a, job);
    return 0;
}

/* --- start-up: the jobs a killed agent left --- */

static void restore_one(struct agent *a, struct journal *j)
{
    const char *disk = journal_get_str(j, "disk"), *type = journal_get_str(j, "type");
    const char *src = journal_image_path(j, "source"), *tgt = journal_image_path(j, "target");
    struct agent_disk *d = NULL;
    struct error *err = NULL;
    json_object *qa = NULL, *args;
    const char *top;
    int r;

    for (struct agent_disk *x = a->disks; x && disk; x = x->next) {
        if (!strcmp(x->name, disk)) {
            d = x;
        }
    }
    json_object_object_get_ex(j->root, "qmp-args", &qa);
    if (!d || !src || !tgt || !qa || !type) {
        agent_log(a, "job %s: its disk %s is not served here: left as it is", j->id,
                  disk ? disk : "?");
        journal_free(j);
        return;
    }
    top = blk_root(d->blk)->filename;
    if (agent_same_file(top, tgt)) {
        agent_log(a, "job %s: disk %s had pivoted onto %s: the job is over", j->id, disk, tgt);
        goto end;
    }
    if (!agent_same_file(top, src)) {
        agent_log(a, "job %s: disk %s is on %s, no longer on %s: the job is over", j->id, disk,
                  top, src);
        goto end;
    }
    args = json_tokener_parse(json_object_to_json_string(qa));
    a->restoring = j;
    if (!strcmp(type, "commit")) {
        r = qmp_block_commit(args, NULL, a, &err);
    } else {
        /* (into the target it was writing) */
        json_object_object_add(args, "mode", json_object_new_string("existing"));
        r = qmp_drive_mirror(args, NULL, a, &err);
    }
    a->restoring = NULL;
    json_object_put(args);
    if (r < 0) {
        agent_log(a, "job %s: cannot restore it (%s): 'blockctl job resume %s' with the agent "
                  "stopped finishes it", j->id, err ? err->msg : strerror(-r), j->id);
        error_free(err);
        journal_free(j);
        return;
    }
    agent_log(a, "disk %s: job %s (journal %s) restored, paused: job-resume goes on with it",
              disk, journal_get_str(j, "job-id") ? journal_get_str(j, "job-id") : "?", j->id);
    return;     /* (the job holds @j now) */
end:
    {
        const char *w = journal_get_str(j, "write-intent-bitmap");
        if (w) {
            (void)io_unlink(w);
        }
        if (journal_end(j, &err) < 0) {
            agent_log(a, "%s", err->msg);
            error_free(err);
        }
    }
}

void agent_jobs_restore(struct agent *a)
{
    json_object *all = NULL;
    struct error *err = NULL;

    if (!a->cfg.state_path) {
        return;         /* (without a state file, its jobs are not its own to know) */
    }
    if (journal_list(a->cfg.state_dir, &all, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
        json_object_put(all);
        return;
    }
    for (size_t i = 0; i < json_object_array_length(all); i++) {
        json_object *o = json_object_array_get_idx(all, i), *v;
        struct journal *j;
        const char *type;
        int64_t pid;
        if (!json_object_object_get_ex(o, "live", &v) || !json_object_get_boolean(v) ||
            !json_object_object_get_ex(o, "agent-state", &v) ||
            strcmp(json_object_get_string(v), a->cfg.state_path)) {
            continue;
        }
        pid = json_object_object_get_ex(o, "pid", &v) ? json_object_get_int64(v) : 0;
        if (pid != getpid() && journal_owner_alive(o)) {
            continue;   /* (another agent runs it) */
        }
        json_object_object_get_ex(o, "id", &v);
        j = journal_load(a->cfg.state_dir, json_object_get_string(v), &err);
        if (!j) {
            agent_log(a, "%s", err->msg);
            error_free(err);
            err = NULL;
            continue;
        }
        type = journal_get_str(j, "type");
        if (type && !strcmp(type, "stream")) {
            agent_stream_restore(a, j);
        } else if (type && !strcmp(type, "snapshot")) {
            agent_snapshot_restore(a, j);
        } else {
            restore_one(a, j);
        }
    }
    json_object_put(all);
}

static const char *const sync_values[] = { "top", "full", "none", "incremental", "bitmap", NULL };
static const char *const mode_values[] = { "existing", "absolute-paths", NULL };
static const char *const on_error_values[] = { "report", "ignore", "enospc", "stop", "auto",
                                               NULL };
static const char *const copy_mode_values[] = { "background", "write-blocking", "auto", NULL };

static const struct qmp_arg mirror_args[] = {
    { "job-id", QMP_STR, true, NULL },
    { "device", QMP_STR, false, NULL },
    { "target", QMP_STR, false, NULL },
    { "format", QMP_STR, true, NULL },
    { "node-name", QMP_STR, true, NULL },
    { "replaces", QMP_STR, true, NULL },
    { "sync", QMP_ENUM, false, sync_values },
    { "mode", QMP_ENUM, true, mode_values },
    { "speed", QMP_INT, true, NULL },
    { "granularity", QMP_UINT32, true, NULL },
    { "buf-size", QMP_INT, true, NULL },
    { "on-source-error", QMP_ENUM, true, on_error_values },
    { "on-target-error", QMP_ENUM, true, on_error_values },
    { "unmap", QMP_BOOL, true, NULL },
    { "copy-mode", QMP_ENUM, true, copy_mode_values },
    { "bitmap", QMP_STR, true, NULL },          /* blockctl's: sync bitmap */
    { "clear-bitmap", QMP_BOOL, true, NULL },   /* blockctl's */
    { "auto-finalize", QMP_BOOL, true, NULL },
    { "auto-dismiss", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg blockdev_mirror_args[] = {
    { "job-id", QMP_STR, true, NULL },
    { "device", QMP_STR, false, NULL },
    { "target", QMP_STR, false, NULL },
    { "replaces", QMP_STR, true, NULL },
    { "sync", QMP_ENUM, false, sync_values },
    { "speed", QMP_INT, true, NULL },
    { "granularity", QMP_UINT32, true, NULL },
    { "buf-size", QMP_INT, true, NULL },
    { "on-source-error", QMP_ENUM, true, on_error_values },
    { "on-target-error", QMP_ENUM, true, on_error_values },
    { "filter-node-name", QMP_STR, true, NULL },
    { "copy-mode", QMP_ENUM, true, copy_mode_values },
    { "bitmap", QMP_STR, true, NULL },          /* blockctl's: sync bitmap */
    { "clear-bitmap", QMP_BOOL, true, NULL },   /* blockctl's */
    { "auto-finalize", QMP_BOOL, true, NULL },
    { "auto-dismiss", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg commit_args[] = {
    { "job-id", QMP_STR, true, NULL },
    { "device", QMP_STR, false, NULL },
    { "base-node", QMP_STR, true, NULL },
    { "base", QMP_STR, true, NULL },
    { "top-node", QMP_STR, true, NULL },
    { "top", QMP_STR, true, NULL },
    { "backing-file", QMP_STR, true, NULL },
    { "speed", QMP_INT, true, NULL },
    { "on-error", QMP_ENUM, true, on_error_values },
    { "filter-node-name", QMP_STR, true, NULL },
    { "auto-finalize", QMP_BOOL, true, NULL },
    { "auto-dismiss", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

const struct qmp_command agent_mirror_commands[] = {
    { "drive-mirror", qmp_drive_mirror, mirror_args },
    { "blockdev-mirror", qmp_blockdev_mirror, blockdev_mirror_args },
    { "block-commit", qmp_block_commit, commit_args },
    { NULL, NULL, NULL },
};
