/*
 * blockctl - the copy engine
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/copy.h"

#include <errno.h>
#include <sched.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct engine {
    struct copy_params *p;
    uint64_t start, end;
    uint64_t window;        /* bytes per window */
    unsigned steady;        /* workers that copy whatever the guest does (job: the
                             * others copy only while it is idle) */
    uint64_t gran;          /* zero detection / compression granularity */
    uint64_t d;             /* the target's offset of source offset 0 */
    uint8_t *zerobuf;       /* no_sparse: zeroes written as data, e->window bytes */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint64_t cursor;        /* next window start */
    uint64_t done;          /* bytes of finished windows */
    uint64_t windows;       /* windows finished (checkpoint_secs 0: one checkpoint each, */
    uint64_t windows_ckpt;  /* the worker waiting until a checkpoint saw its window) */
    unsigned running;
    int ret;                /* first error */
    struct bdev *err_bd;    /* image that failed */
    const char *err_what;
    /* the window each worker works on (UINT64_MAX: none): where a copy
     * that stopped can start again */
    uint64_t *active;
    unsigned nactive;

    /*
     * A range of the target known to read zero (from its block status).
     * Safe to keep: the engine writes only data the source has there, and
     * asks about a range only where the source reads zero.
     */
    uint64_t zero_start, zero_end;

    /* token bucket */
    pthread_mutex_t rl_lock;
    double tokens;
    struct timespec rl_last;
};

static bool cancelled(struct engine *e)
{
    return (e->p->cancel && __atomic_load_n(e->p->cancel, __ATOMIC_RELAXED)) ||
           (e->p->job && job_is_cancelled(e->p->job)) ||
           __atomic_load_n(&e->ret, __ATOMIC_RELAXED);
}

/* Between requests: stop here while the job is paused; true to stop. */
static bool pause_point(struct engine *e)
{
    if (e->p->job && job_pause_point(e->p->job)) {
        return true;
    }
    return cancelled(e);
}

static uint64_t bandwidth(struct engine *e)
{
    return e->p->job ? job_speed(e->p->job) : e->p->bandwidth;
}

static void fail(struct engine *e, int ret, struct bdev *bd, const char *what)
{
    pthread_mutex_lock(&e->lock);
    if (!e->ret) {
        __atomic_store_n(&e->ret, ret, __ATOMIC_RELAXED);
        e->err_bd = bd;
        e->err_what = what;
    }
    pthread_mutex_unlock(&e->lock);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Set while a live chunk's data was paid for before its section began. */
static __thread bool rl_prepaid;

/* Wait until @n bytes may be written under the bandwidth limit. */
static void rate_limit(struct engine *e, uint64_t n)
{
    uint64_t bw = bandwidth(e);
    double rate = (double)bw, wait;

    if (!bw || rl_prepaid) {
        return;
    }
    pthread_mutex_lock(&e->rl_lock);
    {
        double t = now_s();
        double last = e->rl_last.tv_sec + e->rl_last.tv_nsec / 1e9;
        e->tokens = MIN(e->tokens + (t - last) * rate, rate);   /* burst: one second */
        e->rl_last.tv_sec = (time_t)t;
        e->rl_last.tv_nsec = (long)((t - (double)(time_t)t) * 1e9);
        e->tokens -= (double)n;
        wait = e->tokens < 0 ? -e->tokens / rate : 0;
    }
    pthread_mutex_unlock(&e->rl_lock);
    while (wait > 0 && !cancelled(e)) {
        double step = MIN(wait, 0.1), t0 = now_s();
        if (e->p->job) {
            /* a pause stops here (the time paused counts), not after a
             * rush past the limit (no section is held unless live) */
            if (!e->p->live && job_pause_point(e->p->job)) {
                break;
            }
            job_sleep_ns(e->p->job, (uint64_t)(step * 1e9));
            if (job_speed(e->p->job) != bw) {
                break;      /* set-speed: the next request counts at the new rate */
            }
        } else {
            struct timespec ts = { (time_t)step, (long)((step - (double)(time_t)step) * 1e9) };
            nanosleep(&ts, NULL);
        }
        wait -= MAX(step, now_s() - t0);
    }
}

enum ext_class { EXT_SKIP, EXT_ZERO, EXT_DATA };

/* Classify the source extent at @off (at most @len bytes). */
static int classify(struct engine *e, uint64_t off, uint64_t len, enum ext_class *cls,
                    uint64_t *n)
{
    struct copy_params *p = e->p;
    struct bdev_map m;
    int ret;

    ret = bdev_block_status_above(p->src, p->mode == COPY_ABOVE ? p->base : NULL, off, len, &m);
    if (ret < 0) {
        return ret;
    }
    *n = m.len;
    if (p->skip_top && m.depth == 0 && (m.status & BDEV_BLOCK_ALLOCATED)) {
        *cls = EXT_SKIP;
    } else if (p->mode == COPY_ABOVE && m.past_end) {
        /*
         * An image between the top and the base ends before this range:
         * the chain reads zeroes here, which the base must not replace.
         */
        *cls = EXT_ZERO;
    } else if (p->mode == COPY_ABOVE && !(m.status & BDEV_BLOCK_ALLOCATED) &&
               !(p->base == NULL && (m.status & BDEV_BLOCK_ZERO))) {
        /* not above the base: the base (or nothing) provides it */
        *cls = EXT_SKIP;
    } else if (m.status & BDEV_BLOCK_ZERO) {
        *cls = EXT_ZERO;
    } else {
        *cls = EXT_DATA;
    }
    if (p->mode == COPY_ABOVE && p->base == NULL && !(m.status & BDEV_BLOCK_ALLOCATED)) {
        /* unallocated in the whole chain: reads zero, nothing to do */
        *cls = p->skip_top ? EXT_SKIP : EXT_ZERO;
    }
    return 0;
}

/* The target already reads zero in [off, off+len)? */
static bool dst_reads_zero(struct engine *e, uint64_t off, uint64_t len)
{
    while (len) {
        struct bdev_map m;
        uint64_t n;
        bool known;

        pthread_mutex_lock(&e->lock);
        known = off >= e->zero_start && off < e->zero_end;
        n = known ? MIN(len, e->zero_end - off) : 0;
        pthread_mutex_unlock(&e->lock);
        if (known) {
            off += n;
            len -= n;
            continue;
        }
        /* ask about the rest of the image: one answer may cover many extents */
        if (bdev_block_status_above(e->p->dst, NULL, off + e->d, e->end - off, &m) < 0 ||
            !(m.status & BDEV_BLOCK_ZERO)) {
            return false;
        }
        if (e->p->live) {
            /* others write the target too: what it reads now is all we know */
            n = MIN(len, m.len);
            off += n;
            len -= n;
            continue;
        }
        pthread_mutex_lock(&e->lock);
        e->zero_start = off;
        e->zero_end = off + m.len;
        pthread_mutex_unlock(&e->lock);
    }
    return true;
}

/* @bd (NULL: no image, all zeroes) reads zero in [off, off+len)? */
static bool range_reads_zero(struct bdev *bd, uint64_t off, uint64_t len)
{
    /* past its end an image reads zero too */
    len = bd && off < bd->size ? MIN(len, bd->size - off) : 0;
    while (len) {
        struct bdev_map m;
        if (bdev_block_status_above(bd, NULL, off, len, &m) < 0 ||
            !(m.status & BDEV_BLOCK_ZERO)) {
            return false;
        }
        off += m.len;
        len -= m.len;
    }
    return true;
}

static int write_data(struct engine *e, const uint8_t *buf, uint64_t off, uint64_t len);

static int write_zero(struct engine *e, uint64_t off, uint64_t len)
{
    struct copy_params *p = e->p;
    int ret;

    if (p->no_sparse) {
        /* -S 0: the target allocated everywhere, zeroes as data */
        for (uint64_t o = 0; o < len; o += e->window) {
            ret = write_data(e, e->zerobuf, off + o, MIN(e->window, len - o));
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    if (p->dst_is_zero || (p->zero_over_below && range_reads_zero(p->below, off, len))) {
        return 0;
    }
    if (p->check_dst_zero && dst_reads_zero(e, off, len)) {
        return 0;
    }
    ret = bdev_pwrite_zeroes(p->dst, off + e->d, len,
                             BDEV_REQ_MAY_UNMAP | (p->unchanged ? BDEV_REQ_WRITE_UNCHANGED : 0));
    if (ret < 0) {
        fail(e, ret, p->dst, "cannot write zeroes to");
        return ret;
    }
    __atomic_add_fetch(&p->bytes_zeroed, len, __ATOMIC_RELAXED);
    return 0;
}

static int write_data(struct engine *e, const uint8_t *buf, uint64_t off, uint64_t len)
{
    struct copy_params *p = e->p;
    int ret;

    rate_limit(e, len);
    if (cancelled(e)) {
        return -ECANCELED;
    }
    if (p->compress) {
        /*
         * Whole target clusters (or the target's tail) compressed; a
         * piece of a cluster (a source that does not end on the grid,
         * the edge of a window) is written as it is.
         */
        uint64_t cs = e->gran;
        for (uint64_t o = 0; o < len;) {
            uint64_t at = off + o + e->d;
            uint64_t n = MIN(cs - (at & (cs - 1)), len - o);
            if (!(at & (cs - 1)) && (n == cs || at + n == p->dst->size)) {
                ret = bdev_pwrite_compressed(p->dst, buf + o, n, at);
            } else {
                ret = bdev_pwrite(p->dst, buf + o, n, at, 0);
            }
            if (ret < 0) {
                fail(e, ret, p->dst, "cannot write to");
                return ret;
            }
            o += n;
        }
    } else {
        ret = bdev_pwrite(p->dst, buf, len, off + e->d,
                          p->unchanged ? BDEV_REQ_WRITE_UNCHANGED : 0);
        if (ret < 0) {
            fail(e, ret, p->dst, "cannot write to");
            return ret;
        }
    }
    /*
     * Every 64 MiB, start the disk writing what is in the page cache, so
     * that the flush at the end (and the ordering syncs of qcow2 on the
     * way) wait only for the tail.
     */
    {
        uint64_t before = __atomic_fetch_add(&p->bytes_written, len, __ATOMIC_RELAXED);
        if (!p->no_flush && (before >> 26) != ((before + len) >> 26)) {
            bdev_start_writeback(p->dst);
        }
    }
    return 0;
}

/* What a granule of copied data needs */
enum gran_class { GRAN_SAME, GRAN_ZERO, GRAN_DATA };

static int write_run(struct engine *e, enum gran_class c, const uint8_t *buf, uint64_t off,
                     uint64_t len)
{
    switch (c) {
    case GRAN_ZERO:
        return write_zero(e, off, len);
    case GRAN_DATA:
        return write_data(e, buf, off, len);
    default:
        return 0;
    }
}

/* Read what @below (NULL: nothing) reads at [off, off+len) into @buf. */
static int read_below(struct engine *e, uint8_t *buf, uint64_t off, uint64_t len)
{
    struct bdev *bd = e->p->below;
    uint64_t n = bd && off < bd->size ? MIN(len, bd->size - off) : 0;
    int ret;

    if (n) {
        ret = bdev_pread(bd, buf, n, off);
        if (ret < 0) {
            fail(e, ret, bd, "cannot read from");
            return ret;
        }
    }
    memset(buf + n, 0, len - n);
    return 0;
}

/* --salvage: read [off, off+len) 512 bytes at a time; what fails reads zero */
static int salvage_read(struct engine *e, uint8_t *buf, uint64_t off, uint64_t len)
{
    struct copy_params *p = e->p;
    uint64_t bad = 0, bad_len = 0;
    int bad_err = 0;

    for (uint64_t o = 0; o < len; o += 512) {
        uint64_t n = MIN((uint64_t)512, len - o);
        int r = bdev_pread(p->src, buf + o, n, off + o);
        if (r == -ECANCELED || cancelled(e)) {
            return -ECANCELED;
        }
        if (r < 0) {
            memset(buf + o, 0, n);
            if (bad_len && bad + bad_len == off + o && bad_err == r) {
                bad_len += n;
                continue;
            }
            if (bad_len && p->salvaged) {
                p->salvaged(p->opaque, bad, bad_len, bad_err);
            }
            bad = off + o;
            bad_len = n;
            bad_err = r;
        }
    }
    if (bad_len && p->salvaged) {
        p->salvaged(p->opaque, bad, bad_len, bad_err);
    }
    return 0;
}

/*
 * Copy [off, off+len) which the source has as data: read it, then write
 * the non-zero granules and treat runs of zero granules as zeroes (with
 * diff_below, granules that @below reads the same are left out).
 */
static int copy_data(struct engine *e, uint8_t *buf, uint64_t off, uint64_t len)
{
    struct copy_params *p = e->p;
    /* rebase: sector by sector, as qemu-img compares (the bitmaps then
     * record the same writes) */
    uint64_t g = p->diff_below ? 512 : e->gran, pos, run_start;
    uint8_t *bbuf = p->diff_below ? buf + e->window : NULL;
    enum gran_class run = GRAN_DATA;
    int ret;

    ret = bdev_pread(p->src, buf, len, off);
    if (ret < 0 && p->salvage) {
        ret = salvage_read(e, buf, off, len);
    }
    if (ret < 0) {
        fail(e, ret, p->src, "cannot read from");
        return ret;
    }
    if (bbuf && (ret = read_below(e, bbuf, off, len)) < 0) {
        return ret;
    }
    /* granules aligned to the target's offsets */
    pos = off;
    run_start = off;
    while (pos < off + len) {
        uint64_t gend = MIN(ALIGN_DOWN(pos + e->d, g) + g - e->d, off + len);
        enum gran_class c;

        if (bbuf && !memcmp(buf + (pos - off), bbuf + (pos - off), gend - pos)) {
            c = GRAN_SAME;
        } else {
            c = !p->no_sparse && buffer_is_zero(buf + (pos - off), gend - pos) ? GRAN_ZERO
                                                                                : GRAN_DATA;
        }
        if (pos == run_start) {
            run = c;
        } else if (c != run) {
            ret = write_run(e, run, buf + (run_start - off), run_start, pos - run_start);
            if (ret < 0) {
                return ret;
            }
            run_start = pos;
            run = c;
        }
        pos = gend;
    }
    if (pos > run_start) {
        ret = write_run(e, run, buf + (run_start - off), run_start, pos - run_start);
    }
    return ret;
}

/* [*a, *b): [off, off+len) widened to the target's cluster grid, within [ws, we) */
static void widen(struct engine *e, uint64_t off, uint64_t len, uint64_t ws, uint64_t we,
                  uint64_t *a, uint64_t *b)
{
    uint64_t lo = ALIGN_DOWN(off + e->d, e->gran), hi = ALIGN_UP(off + len + e->d, e->gran);

    *a = lo >= ws + e->d ? lo - e->d : ws;
    *b = MIN(hi - e->d, we);
}

static int do_range_status(struct engine *e, uint8_t *buf, uint64_t ws, uint64_t we)
{
    uint64_t pos = ws;
    enum ext_class next_cls = EXT_SKIP;
    uint64_t next_n = 0;      /* a look-ahead answer for @pos, if any */
    int ret;

    while (pos < we) {
        enum ext_class cls, c2;
        uint64_t n, n2;

        if (pause_point(e)) {
            return -ECANCELED;
        }
        if (next_n) {
            cls = next_cls;
            n = next_n;
            next_n = 0;
        } else {
            ret = classify(e, pos, we - pos, &cls, &n);
            if (ret < 0 && e->p->salvage) {
                /* --salvage: read it (what cannot be read becomes zeroes) */
                cls = EXT_DATA;
                n = MIN(we - pos, (uint64_t)65536);
                ret = 0;
            }
            if (ret < 0) {
                fail(e, ret, e->p->src, "cannot get the block status of");
                return ret;
            }
        }
        /* coalesce following extents of the same class (data from several layers) */
        while (pos + n < we) {
            ret = classify(e, pos + n, we - pos - n, &c2, &n2);
            if (ret < 0 && e->p->salvage) {
                break;      /* that extent's own turn salvages it */
            }
            if (ret < 0) {
                fail(e, ret, e->p->src, "cannot get the block status of");
                return ret;
            }
            if (c2 != cls) {
                /* keep the answer: it is the next extent's */
                next_cls = c2;
                next_n = n2;
                break;
            }
            n += n2;
        }
        if (e->p->compress && cls != EXT_SKIP) {
            /* compression works on whole clusters: widen to the target's
             * cluster grid (within the window) */
            uint64_t a, b;
            widen(e, pos, n, ws, we, &a, &b);
            if (cls == EXT_ZERO && a == pos && (b == pos + n)) {
                ret = write_zero(e, pos, n);
            } else {
                ret = copy_data(e, buf, a, b - a);
            }
            if (b > pos + n) {
                /* the look-ahead extent starts inside what was just copied */
                if (next_n > b - (pos + n)) {
                    next_n -= b - (pos + n);
                } else {
                    next_n = 0;
                }
            }
            n = b - pos;
        } else if (cls == EXT_ZERO) {
            ret = write_zero(e, pos, n);
        } else if (cls == EXT_DATA) {
            ret = copy_data(e, buf, pos, n);
        } else {
            ret = 0;
        }
        if (ret < 0) {
            return ret;
        }
        pos += n;
    }
    return 0;
}

/*
 * Workers of a job's copy (the agent's, beside a running guest): one
 * fewer than the CPUs this process may run on, 1 to 4.  The guest's
 * requests need a CPU the moment they arrive; with a copy thread on every
 * CPU each of them waits for one to give its CPU up.  On 2 CPUs, four
 * workers put a guest's 4 KiB write p99 at 4-6 ms during a mirror, one
 * at 0.5-1 ms, and READY came 10% later (the copy is bound by memory or
 * the target, not by threads).
 */
static unsigned job_workers(void)
{
    cpu_set_t set;
    int n = 0;

    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        n = CPU_COUNT(&set);
    }
    if (n <= 0) {
        n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    }
    return (unsigned)MIN(MAX(n - 1, 1), 4);
}

#define LIVE_CHUNK (1u << 20)

/*
 * A window by block status.  Live, chunk by chunk, each classified and
 * copied inside a serialising section of the target: a write of another
 * thread to the chunk waits until the chunk is done, and one done before
 * is seen by the classification (the target's own layer has it).
 */
static int do_window_status(struct engine *e, uint8_t *buf, uint64_t ws, uint64_t we)
{
    if (!e->p->live) {
        return do_range_status(e, buf, ws, we);
    }
    for (uint64_t pos = ws; pos < we;) {
        uint64_t end = MIN(ALIGN_DOWN(pos, LIVE_CHUNK) + LIVE_CHUNK, we);
        struct bdev_serial *sec;
        int ret;

        if (pause_point(e)) {
            return -ECANCELED;
        }
        if (bandwidth(e)) {
            /*
             * Pay for the chunk's data before the section begins: a
             * guest write must not wait behind the rate limit's sleep.
             */
            uint64_t data = 0;
            for (uint64_t o = pos; o < end;) {
                enum ext_class cls;
                uint64_t n;
                if (classify(e, o, end - o, &cls, &n) < 0) {
                    break;          /* the section's own pass reports it */
                }
                data += cls == EXT_DATA ? n : 0;
                o += n;
            }
            rate_limit(e, data);
            if (pause_point(e)) {
                return -ECANCELED;
            }
            rl_prepaid = true;
        }
        sec = bdev_serialise_begin(e->p->dst, pos + e->d, end - pos);
        ret = do_range_status(e, buf, pos, end);
        bdev_serialise_end(sec);
        rl_prepaid = false;
        if (ret < 0) {
            return ret;
        }
        if (e->p->job) {
            job_progress_add(e->p->job, end - pos);
        }
        pos = end;
    }
    return 0;
}

static int do_window_bitmap(struct engine *e, uint8_t *buf, uint64_t ws, uint64_t we)
{
    uint64_t pos = ws, off, len;
    int ret;

    while (pos < we && bitmap_next_dirty(e->p->bitmap, pos, we - pos, &off, &len)) {
        if (off >= we) {
            break;
        }
        len = MIN(len, we - off);
        if (pause_point(e)) {
            return -ECANCELED;
        }
        if (e->p->compress) {
            uint64_t a, b;
            widen(e, off, len, pos, we, &a, &b);
            off = a;
            len = b - off;
        }
        ret = copy_data(e, buf, off, len);
        if (ret < 0) {
            return ret;
        }
        pos = off + len;
    }
    return 0;
}

/* Next window to work on (recorded in @slot), or false when there is none. */
static bool next_window(struct engine *e, uint64_t *slot, uint64_t *ws, uint64_t *we)
{
    bool got = false;

    pthread_mutex_lock(&e->lock);
    while (!got && e->cursor < e->end && !cancelled(e)) {
        uint64_t s = e->cursor, end;
        if (e->p->mode == COPY_BITMAP) {
            uint64_t off, len;
            if (!bitmap_next_dirty(e->p->bitmap, s, 0, &off, &len) || off >= e->end) {
                e->done += e->end - e->cursor;
                e->cursor = e->end;
                break;
            }
            s = MAX(s, ALIGN_DOWN(off, e->window));
            e->done += s - e->cursor;
        }
        end = MIN(ALIGN_DOWN(s, e->window) + e->window, e->end);
        e->cursor = end;
        if (e->p->claimed && __atomic_load_n(e->p->claimed, __ATOMIC_RELAXED) < end) {
            __atomic_store_n(e->p->claimed, end, __ATOMIC_SEQ_CST);
        }
        *ws = s;
        *we = end;
        *slot = s;      /* (under the lock: a checkpoint sees it claimed) */
        got = true;
    }
    pthread_mutex_unlock(&e->lock);
    return got;
}

/* Everything under what this returns is written: no window in a worker's
 * hands, none left to claim (e->lock held) */
static uint64_t written_below(const struct engine *e)
{
    uint64_t below = e->cursor;

    for (unsigned i = 0; i < e->nactive; i++) {
        below = MIN(below, e->active[i]);
    }
    return below;
}

/* (e->lock held) */
static void publish_done_below(struct engine *e)
{
    uint64_t b;

    if (!e->p->done_below) {
        return;
    }
    b = written_below(e);
    if (b > __atomic_load_n(e->p->done_below, __ATOMIC_RELAXED)) {
        __atomic_store_n(e->p->done_below, b, __ATOMIC_RELEASE);
    }
}

/* CLOCK_REALTIME @ms milliseconds from now (for pthread_cond_timedwait) */
static struct timespec deadline_ms(long ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ms * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/* A job's guest went quiet (GUEST_IDLE_MS)? */
#define GUEST_IDLE_MS 200

/*
 * An extra worker (past e->steady): wait while the guest is busy, then
 * true; false once there is nothing left to copy or the copy stops.
 */
static bool idle_guest(struct engine *e)
{
    bool go = true;

    pthread_mutex_lock(&e->lock);
    while (bdev_foreground_within(GUEST_IDLE_MS) && e->cursor < e->end && !cancelled(e) &&
           !e->ret) {
        struct timespec ts = deadline_ms(50);
        pthread_cond_timedwait(&e->cond, &e->lock, &ts);
    }
    go = e->cursor < e->end && !cancelled(e) && !e->ret;
    pthread_mutex_unlock(&e->lock);
    return go;
}

static void *worker(void *opaque)
{
    struct engine *e = opaque;
    /* (diff_below: a second window for what the new backing reads) */
    uint8_t *buf = xmemalign(4096, e->window * (e->p->diff_below ? 2 : 1));
    uint64_t ws, we, *slot;
    bool extra;

    if (e->p->job) {
        job_thread_background();
    }
    pthread_mutex_lock(&e->lock);
    extra = e->nactive >= e->steady;
    slot = &e->active[e->nactive++];
    pthread_mutex_unlock(&e->lock);
    while ((!extra || idle_guest(e)) && next_window(e, slot, &ws, &we)) {
        int ret;

        ret = e->p->mode == COPY_BITMAP ? do_window_bitmap(e, buf, ws, we)
                                        : do_window_status(e, buf, ws, we);
        if (ret < 0) {
            break;          /* (the window stays in its slot: not done) */
        }
        pthread_mutex_lock(&e->lock);
        e->done += we - ws;
        *slot = UINT64_MAX;
        e->windows++;
        publish_done_below(e);
        if (e->p->checkpoint && e->p->checkpoint_secs <= 0) {
            /* (tests: a checkpoint after each window, before the next one) */
            uint64_t mine = e->windows;
            pthread_cond_broadcast(&e->cond);
            while (e->windows_ckpt < mine && !e->ret && !cancelled(e)) {
                pthread_cond_wait(&e->cond, &e->lock);
            }
        }
        pthread_mutex_unlock(&e->lock);
        if (e->p->job && !(e->p->live && e->p->mode != COPY_BITMAP)) {
            job_progress_add(e->p->job, we - ws);
        }
    }
    free(buf);
    pthread_mutex_lock(&e->lock);
    e->running--;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

int copy_run(struct copy_params *p, struct error **errp)
{
    struct engine e;
    struct error *cp_err = NULL;
    double cp_last = now_s();
    uint64_t windows_seen = 0;
    unsigned nw = p->workers ? p->workers : 4;
    uint64_t buf = p->buf_size ? p->buf_size : (16u << 20);
    uint64_t cg = p->dst->drv->compress_granularity ? p->dst->drv->compress_granularity(p->dst)
                                                     : 0;
    pthread_t *th;
    int ret;

    memset(&e, 0, sizeof(e));
    e.p = p;
    e.d = p->dst_offset;
    e.end = MIN(p->src->size, p->dst->size > e.d ? p->dst->size - e.d : 0);
    e.start = MIN(p->start, e.end);
    if (p->compress && !cg) {
        error_setg(errp, "'%s': format '%s' does not support compression", p->dst->filename,
                   p->dst->drv->name);
        return -ENOTSUP;
    }
    /* granularity: the target's cluster where it has one, else 4 KiB;
     * or the -S size when larger */
    e.gran = cg ? cg : 4096;
    if (!p->compress && p->sparse_size > e.gran) {
        while (e.gran < p->sparse_size && e.gran < (1u << 30)) {
            e.gran <<= 1;
        }
    }
    if (p->mode == COPY_BITMAP) {
        e.gran = MAX(e.gran, MIN(bitmap_granularity(p->bitmap), cg ? cg : 4096));
    }
    /* windows of at least 1 MiB where the buffer allows, one per worker
     * (a job runs fewer while its guest is busy: e.steady) */
    nw = (unsigned)MAX((uint64_t)1, MIN((uint64_t)nw, buf >> 20));
    e.steady = p->workers || !p->job ? nw : MIN(job_workers(), nw);
    e.window = MAX(ALIGN_DOWN(buf / nw, e.gran), e.gran);
    if (p->no_sparse) {
        e.zerobuf = xmemalign(4096, e.window);
        memset(e.zerobuf, 0, e.window);
    }
    e.cursor = e.start;
    if (p->done_below && e.start > __atomic_load_n(p->done_below, __ATOMIC_RELAXED)) {
        __atomic_store_n(p->done_below, e.start, __ATOMIC_RELEASE);
    }
    if (p->job) {
        /* (a copy started again past 0 adds its part to what was done) */
        job_progress_set_total(p->job, (e.start ? __atomic_load_n(&p->job->progress_current,
                                                                   __ATOMIC_RELAXED) : 0) +
                                           e.end - e.start);
    }
    pthread_mutex_init(&e.lock, NULL);
    pthread_cond_init(&e.cond, NULL);
    pthread_mutex_init(&e.rl_lock, NULL);
    clock_gettime(CLOCK_MONOTONIC, &e.rl_last);
    e.tokens = 0;

    th = xcalloc(nw, sizeof(*th));
    e.active = xmalloc(nw * sizeof(*e.active));
    for (unsigned i = 0; i < nw; i++) {
        e.active[i] = UINT64_MAX;
    }
    pthread_mutex_lock(&e.lock);
    for (unsigned i = 0; i < nw; i++) {
        if (pthread_create(&th[i], NULL, worker, &e) == 0) {
            e.running++;
        }
    }
    if (!e.running) {
        pthread_mutex_unlock(&e.lock);
        free(th);
        free(e.active);
        error_setg(errp, "cannot start copy threads");
        return -EAGAIN;
    }
    while (e.running) {
        struct timespec ts = deadline_ms(200);
        /* (checkpoint_secs 0, for tests: no wait while a window ended unseen) */
        if (!(p->checkpoint && p->checkpoint_secs <= 0 && e.windows != windows_seen)) {
            pthread_cond_timedwait(&e.cond, &e.lock, &ts);
        }
        windows_seen = e.windows;
        if (p->progress && e.running) {
            uint64_t done = e.done;
            pthread_mutex_unlock(&e.lock);
            p->progress(p->opaque, done, e.end - e.start);
            pthread_mutex_lock(&e.lock);
        }
        if (p->checkpoint && e.running && !e.ret && now_s() - cp_last >= p->checkpoint_secs) {
            uint64_t below = written_below(&e);
            int r;
            pthread_mutex_unlock(&e.lock);
            r = p->checkpoint(p->checkpoint_opaque, below, &cp_err);
            cp_last = now_s();
            pthread_mutex_lock(&e.lock);
            if (r < 0 && !e.ret) {
                __atomic_store_n(&e.ret, r, __ATOMIC_RELAXED);
            }
            e.windows_ckpt = windows_seen;
            pthread_cond_broadcast(&e.cond);
        }
    }
    pthread_mutex_unlock(&e.lock);
    for (unsigned i = 0; i < nw; i++) {
        if (th[i]) {
            pthread_join(th[i], NULL);
        }
    }
    free(th);
    p->stopped_at = e.cursor;
    for (unsigned i = 0; i < e.nactive; i++) {
        p->stopped_at = MIN(p->stopped_at, e.active[i]);
    }
    free(e.active);
    p->failed = e.err_bd;
    ret = e.ret;
    if (!ret && ((p->cancel && __atomic_load_n(p->cancel, __ATOMIC_RELAXED)) ||
                 (p->job && job_is_cancelled(p->job)))) {
        ret = -ECANCELED;
    }
    if (ret == 0 && !p->no_flush) {
        ret = bdev_flush(p->dst);
        if (ret < 0) {
            e.err_bd = p->dst;
            e.err_what = "cannot flush";
        }
    }
    if (ret == 0 && p->progress) {
        p->progress(p->opaque, e.end - e.start, e.end - e.start);
    }
    if (cp_err && ret < 0) {
        error_propagate(errp, cp_err);      /* (the checkpoint failed first) */
        cp_err = NULL;
    } else if (ret < 0 && ret != -ECANCELED) {
        char *detail = e.err_bd ? bdev_last_error(e.err_bd) : NULL;
        if (detail) {
            error_setg(errp, "%s", detail);
        } else {
            error_setg_errno(errp, -ret, "%s '%s'", e.err_what ? e.err_what : "copy failed on",
                             e.err_bd ? e.err_bd->filename : "?");
        }
        free(detail);
    }
    error_free(cp_err);
    pthread_mutex_destroy(&e.lock);
    pthread_cond_destroy(&e.cond);
    pthread_mutex_destroy(&e.rl_lock);
    free(e.zerobuf);
    return ret;
}
