/*
 * blockctl - the qcow2 driver under concurrent requests
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * 1. Guest reads (and in-place overwrites) are not held up by a metadata
 *    sync: a test hook stops a sync (of a new L2 table, of a flush) until
 *    released, and a read issued meanwhile must complete first.
 * 2. A read that mapped a host cluster keeps it from reuse: the read is
 *    stopped after mapping, the cluster is discarded, a flush applies the
 *    decrements and a write elsewhere allocates; the read must still
 *    return the old data, never the new write's (plain and compressed).
 * 3. A zero write of part of a subcluster whose rest reads zero zeroes the
 *    whole subcluster: a write to the rest, made while the zero write
 *    looks at it, must survive.
 * 4. Stress: threads doing overlapping reads, writes, zero writes,
 *    discards, compressed writes and flushes on small images, every read
 *    checked against a model of per-block versions (a read may see, for
 *    each 8-byte word, any version between the last one completed before
 *    it started and the last one started before it ended); then the image
 *    must pass `qemu-img check` and read back as the model says.
 *
 * STRESS_SECONDS sets the length of each stress run (default 3).
 */
#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/tap.h"

static char tmpdir[256];

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct bdev *open_rw(const char *img)
{
    struct error *err = NULL;
    struct bdev *bd = bdev_open(img, "qcow2", BDEV_O_RDWR, &err);

    if (!bd) {
        ok(0, "open %s: %s", img, err->msg);
        error_free(err);
    }
    return bd;
}

static bool close_ok(struct bdev *bd)
{
    struct error *err = NULL;

    if (bdev_close(bd, &err) < 0) {
        tap_diag("close: %s", err ? err->msg : "?");
        error_free(err);
        return false;
    }
    return true;
}

static bool all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != v) {
            return false;
        }
    }
    return true;
}

/* --- the hook: stop one sync, or one read after it mapped a given offset --- */

static pthread_mutex_t hk_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hk_cond = PTHREAD_COND_INITIALIZER;
static bool hk_sync_armed, hk_stopped, hk_release;
static int64_t hk_read_off = -1;
static uint64_t hk_host;

static void hook(struct qcow2 *s, enum qcow2_test_event ev, uint64_t a, uint64_t b)
{
    (void)s;
    pthread_mutex_lock(&hk_lock);
    if ((ev == QCOW2_TEST_SYNC_BEGIN && hk_sync_armed) ||
        (ev == QCOW2_TEST_READ_MAPPED && hk_read_off >= 0 && a == (uint64_t)hk_read_off)) {
        hk_sync_armed = false;
        hk_read_off = -1;
        hk_host = b;
        hk_stopped = true;
        pthread_cond_broadcast(&hk_cond);
        while (!hk_release) {
            pthread_cond_wait(&hk_cond, &hk_lock);
        }
        hk_release = false;
        hk_stopped = false;
        pthread_cond_broadcast(&hk_cond);
    }
    pthread_mutex_unlock(&hk_lock);
}

/* Wait (up to @secs) until the hook holds a thread. */
static bool hk_wait_stopped(double secs)
{
    struct timespec ts;
    bool r;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)secs + 1;
    pthread_mutex_lock(&hk_lock);
    while (!hk_stopped) {
        if (pthread_cond_timedwait(&hk_cond, &hk_lock, &ts) == ETIMEDOUT) {
            break;
        }
    }
    r = hk_stopped;
    pthread_mutex_unlock(&hk_lock);
    return r;
}

static void hk_let_go(void)
{
    pthread_mutex_lock(&hk_lock);
    hk_sync_armed = false;
    hk_read_off = -1;
    if (hk_stopped) {
        hk_release = true;
        pthread_cond_broadcast(&hk_cond);
        while (hk_stopped) {
            pthread_cond_wait(&hk_cond, &hk_lock);
        }
    }
    pthread_mutex_unlock(&hk_lock);
}

/* --- one request in a thread --- */

enum req_kind { REQ_READ, REQ_WRITE, REQ_FLUSH, REQ_DISCARD };

struct req {
    struct bdev *bd;
    enum req_kind kind;
    uint64_t off, len;
    uint8_t *buf;
    int ret;
    int done;                   /* atomic */
    pthread_t th;
};

static void *req_main(void *opaque)
{
    struct req *r = opaque;

    switch (r->kind) {
    case REQ_READ:
        r->ret = bdev_pread(r->bd, r->buf, r->len, r->off);
        break;
    case REQ_WRITE:
        r->ret = bdev_pwrite(r->bd, r->buf, r->len, r->off, 0);
        break;
    case REQ_FLUSH:
        r->ret = bdev_flush(r->bd);
        break;
    case REQ_DISCARD:
        r->ret = bdev_discard(r->bd, r->off, r->len);
        break;
    }
    __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void req_start(struct req *r, struct bdev *bd, enum req_kind kind, uint64_t off,
                      uint64_t len, uint8_t *buf)
{
    *r = (struct req){ .bd = bd, .kind = kind, .off = off, .len = len, .buf = buf };
    pthread_create(&r->th, NULL, req_main, r);
}

/* The zero write of test_zero_partial: [2 clusters + 512, +512). */
static void *zero_main(void *opaque)
{
    struct req *r = opaque;
    struct qcow2 *s = r->bd->opaque;

    r->ret = bdev_pwrite_zeroes(r->bd, 2 * s->cluster_size + 512, 512, 0);
    __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Did @r finish within @secs? */
static bool req_wait(struct req *r, double secs)
{
    double end = now() + secs;

    while (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
        if (now() > end) {
            return false;
        }
        usleep(2000);
    }
    return true;
}

/* --- 1. reads go on while metadata is synced --- */

static void test_sync(const char *name, const char *opts, uint64_t cs, uint64_t size)
{
    uint64_t l2_span = cs * (cs / (strstr(opts, "extended_l2=on") ? 16 : 8));
    char img[512];
    uint8_t *a = xmalloc(cs), *b = xmalloc(cs), *w = xmalloc(cs), *rb = xmalloc(cs);
    struct req wr, rd, ow, fl;
    struct bdev *bd;
    int ret;

    snprintf(img, sizeof(img), "%s/%s.qcow2", tmpdir, name);
    if (tap_sh("qemu-img create -q -f qcow2 -o %s %s %" PRIu64, opts, img, size)) {
        ok(0, "%s: create", name);
        return;
    }
    memset(a, 0xa1, cs);
    memset(b, 0xb2, cs);
    memset(w, 0xc3, cs);
    bd = open_rw(img);
    if (!bd) {
        return;
    }
    ret = bdev_pwrite(bd, a, cs, 0, 0);
    if (ret == 0) {
        ret = bdev_pwrite(bd, a, cs, 2 * cs, 0);
    }
    if (ret == 0) {
        ret = bdev_flush(bd);
    }
    if (ret == 0) {
        ret = bdev_pread(bd, rb, cs, 0);    /* its L2 table is cached now */
    }
    ok(ret == 0, "%s: setup", name);

    /* A write that needs a new L2 table syncs its refcount before the L1 update. */
    qcow2_test_hook = hook;
    hk_sync_armed = true;
    req_start(&wr, bd, REQ_WRITE, l2_span, cs, w);
    ok(hk_wait_stopped(10), "%s: the write to a new L2 table reached its sync", name);
    req_start(&rd, bd, REQ_READ, 0, cs, rb);
    ok(req_wait(&rd, 5), "%s: a read completes while that sync is in progress", name);
    ok(rd.done && rd.ret == 0 && all_bytes(rb, cs, 0xa1), "%s: and reads the data", name);
    req_start(&ow, bd, REQ_WRITE, 0, cs, b);
    ok(req_wait(&ow, 5), "%s: an overwrite of an allocated cluster completes meanwhile", name);
    hk_let_go();
    pthread_join(wr.th, NULL);
    pthread_join(rd.th, NULL);
    pthread_join(ow.th, NULL);
    ok(wr.ret == 0 && ow.ret == 0, "%s: the writes succeed", name);

    /* A flush with a queued decrement syncs the L2 tables before applying it. */
    ret = bdev_discard(bd, 2 * cs, cs);
    ok(ret == 0, "%s: discard", name);
    hk_sync_armed = true;
    req_start(&fl, bd, REQ_FLUSH, 0, 0, NULL);
    ok(hk_wait_stopped(10), "%s: the flush reached its sync", name);
    req_start(&rd, bd, REQ_READ, 0, cs, rb);
    ok(req_wait(&rd, 5), "%s: a read completes while the flush syncs", name);
    ok(rd.done && rd.ret == 0 && all_bytes(rb, cs, 0xb2), "%s: and reads the new data", name);
    hk_let_go();
    pthread_join(fl.th, NULL);
    pthread_join(rd.th, NULL);
    qcow2_test_hook = NULL;
    ok(fl.ret == 0, "%s: the flush succeeds", name);

    ret = bdev_pread(bd, rb, cs, l2_span);
    ok(ret == 0 && all_bytes(rb, cs, 0xc3), "%s: the new table's data reads back", name);
    ret = bdev_pread(bd, rb, cs, 2 * cs);
    ok(ret == 0 && all_bytes(rb, cs, 0), "%s: the discarded cluster reads zero", name);
    ok(close_ok(bd), "%s: close", name);
    ok(tap_sh("qemu-img check -q %s", img) == 0, "%s: qemu-img check is clean", name);
    free(a);
    free(b);
    free(w);
    free(rb);
}

/* --- 2. a mapped cluster is not reused under a read --- */

static void test_reuse(const char *name, const char *opts, uint64_t cs, bool compressed)
{
    char img[512];
    uint8_t *a = xmalloc(cs), *b = xmalloc(cs), *rb = xmalloc(cs);
    uint64_t A = 0, B = 3 * cs, pnum, map = 0, a_host;
    unsigned st;
    struct req rd;
    struct bdev *bd;
    int ret;

    snprintf(img, sizeof(img), "%s/%s.qcow2", tmpdir, name);
    if (tap_sh("qemu-img create -q -f qcow2 -o %s %s %" PRIu64, opts, img, 16 * cs)) {
        ok(0, "%s: create", name);
        return;
    }
    memset(a, 0xa1, cs);
    memset(b, 0xb2, cs);
    bd = open_rw(img);
    if (!bd) {
        return;
    }
    ret = bdev_pwrite(bd, a, cs, cs, 0);   /* the L2 table exists, and another cluster */
    if (ret == 0) {
        ret = compressed ? bdev_pwrite_compressed(bd, a, cs, A) : bdev_pwrite(bd, a, cs, A, 0);
    }
    if (ret == 0) {
        ret = bdev_flush(bd);
    }
    ok(ret == 0, "%s: setup", name);

    qcow2_test_hook = hook;
    hk_read_off = (int64_t)A;
    memset(rb, 0x55, cs);
    req_start(&rd, bd, REQ_READ, A, cs, rb);
    ok(hk_wait_stopped(10), "%s: the read of A mapped its cluster", name);
    a_host = hk_host;
    ret = bdev_discard(bd, A, cs);
    if (ret == 0) {
        ret = bdev_flush(bd);
    }
    if (ret == 0) {
        ret = bdev_pwrite(bd, b, cs, B, 0);
    }
    ok(ret == 0, "%s: discard A, flush, write B meanwhile", name);
    if (bdev_block_status(bd, B, cs, &pnum, &map, &st) == 0) {
        tap_diag("%s: A was at 0x%" PRIx64 ", B went to 0x%" PRIx64, name, a_host, map);
    }
    ok(ALIGN_DOWN(map, cs) != ALIGN_DOWN(a_host, cs),
       "%s: B did not get A's cluster while A's read is in flight", name);
    hk_let_go();
    pthread_join(rd.th, NULL);
    qcow2_test_hook = NULL;
    ok(rd.ret == 0 && all_bytes(rb, cs, 0xa1),
       "%s: the read returns A's data (ret %d, first byte 0x%02x)", name, rd.ret, rb[0]);

    /* Once the read is done, the decrement is applied: nothing leaks. */
    ok(bdev_flush(bd) == 0, "%s: flush", name);
    ret = bdev_pread(bd, rb, cs, B);
    ok(ret == 0 && all_bytes(rb, cs, 0xb2), "%s: B reads back", name);
    ok(close_ok(bd), "%s: close", name);
    ok(tap_sh("qemu-img check -q %s", img) == 0, "%s: qemu-img check is clean (no leak)", name);
    free(a);
    free(b);
    free(rb);
}

/* --- 3. a partial zero write does not zero away a concurrent write --- */

static void test_zero_partial(const char *name, const char *opts, uint64_t cs)
{
    char img[512];
    uint8_t *d = xmalloc(512), *rb = xmalloc(1024);
    uint64_t C = 2 * cs;
    struct req zw, wr;
    struct bdev *bd;
    int ret;

    snprintf(img, sizeof(img), "%s/%s.qcow2", tmpdir, name);
    if (tap_sh("qemu-img create -q -f qcow2 -o %s %s %" PRIu64, opts, img, 8 * cs)) {
        ok(0, "%s: create", name);
        return;
    }
    bd = open_rw(img);
    if (!bd) {
        return;
    }
    memset(d, 0xd4, 512);
    ret = bdev_pwrite(bd, d, 512, 0, 0);      /* an L2 table; cluster C stays unallocated */
    ok(ret == 0, "%s: setup", name);

    /* Zero [C+512, C+1024): it first checks that [C, C+512) reads zero. */
    qcow2_test_hook = hook;
    hk_read_off = (int64_t)C;
    zw = (struct req){ .bd = bd };
    pthread_create(&zw.th, NULL, zero_main, &zw);
    ok(hk_wait_stopped(10), "%s: the zero write is looking at the head of the subcluster", name);
    req_start(&wr, bd, REQ_WRITE, C, 512, d);
    req_wait(&wr, 1);       /* completes now without the fix; waits for the zero write with it */
    hk_let_go();
    pthread_join(zw.th, NULL);
    pthread_join(wr.th, NULL);
    qcow2_test_hook = NULL;
    ok(zw.ret == 0 && wr.ret == 0, "%s: both writes succeed", name);
    ret = bdev_pread(bd, rb, 1024, C);
    ok(ret == 0 && all_bytes(rb, 512, 0xd4), "%s: the write to the head survives", name);
    ok(ret == 0 && all_bytes(rb + 512, 512, 0), "%s: the zeroed part reads zero", name);
    ok(close_ok(bd), "%s: close", name);
    ok(tap_sh("qemu-img check -q %s", img) == 0, "%s: qemu-img check is clean", name);
    free(d);
    free(rb);
}

/* --- 4. stress against a model --- */

#define RING 64

struct model {
    struct bdev *bd;
    uint64_t size, cs, blk, nblocks;   /* the model's unit: blk bytes */
    bool compress;
    uint32_t *started, *completed;     /* per block, atomic */
    uint64_t *ring;                    /* nblocks * RING values, atomic */
    uint64_t seq;                      /* atomic */
    double deadline;
    int failures;                      /* atomic */
    uint64_t nops[6];                  /* atomic */

    /* the test's own range lock: mutating requests on one block do not overlap */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint8_t *busy;                     /* per block */
};

struct worker {
    struct model *m;
    uint64_t rng;
    pthread_t th;
};

static uint64_t wrand(struct worker *w)
{
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return w->rng;
}

static uint64_t word_for(uint64_t block, uint64_t seq)
{
    return ((block + 1) << 40) | seq;
}

static void take_blocks(struct model *m, uint64_t b0, uint64_t b1)
{
    pthread_mutex_lock(&m->lock);
again:
    for (uint64_t b = b0; b < b1; b++) {
        if (m->busy[b]) {
            pthread_cond_wait(&m->cond, &m->lock);
            goto again;
        }
    }
    memset(m->busy + b0, 1, b1 - b0);
    pthread_mutex_unlock(&m->lock);
}

static void give_blocks(struct model *m, uint64_t b0, uint64_t b1)
{
    pthread_mutex_lock(&m->lock);
    memset(m->busy + b0, 0, b1 - b0);
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

/* Announce new contents for blocks [b0, b1): data (@zero false) or zeroes. */
static void announce(struct model *m, uint64_t b0, uint64_t b1, bool zero, uint8_t *buf)
{
    uint64_t seq = __atomic_add_fetch(&m->seq, 1, __ATOMIC_RELAXED);

    for (uint64_t b = b0; b < b1; b++) {
        uint32_t v = __atomic_load_n(&m->started[b], __ATOMIC_RELAXED) + 1;
        uint64_t val = zero ? 0 : word_for(b, seq);
        __atomic_store_n(&m->ring[b * RING + v % RING], val, __ATOMIC_RELAXED);
        __atomic_store_n(&m->started[b], v, __ATOMIC_RELEASE);
        if (buf) {
            uint64_t *p = (uint64_t *)(buf + (b - b0) * m->blk);
            for (unsigned i = 0; i < m->blk / 8; i++) {
                p[i] = val;
            }
        }
    }
}

static void complete(struct model *m, uint64_t b0, uint64_t b1)
{
    for (uint64_t b = b0; b < b1; b++) {
        __atomic_store_n(&m->completed[b], __atomic_load_n(&m->started[b], __ATOMIC_RELAXED),
                         __ATOMIC_RELEASE);
    }
}

static void fail(struct model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct model *m, const char *fmt, ...)
{
    va_list ap;

    if (__atomic_add_fetch(&m->failures, 1, __ATOMIC_RELAXED) > 10) {
        return;
    }
    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

static void check_read(struct model *m, uint64_t b0, uint64_t b1, const uint32_t *lo,
                       const uint8_t *buf)
{
    for (uint64_t b = b0; b < b1; b++) {
        uint32_t l = lo[b - b0];
        uint32_t h = __atomic_load_n(&m->started[b], __ATOMIC_ACQUIRE);
        const uint64_t *p = (const uint64_t *)(buf + (b - b0) * m->blk);

        if (h - l >= RING - 1) {
            continue;   /* too much happened to that block meanwhile to tell */
        }
        for (unsigned i = 0; i < m->blk / 8; i++) {
            bool good = false;
            for (uint32_t v = l; v <= h && !good; v++) {
                good = __atomic_load_n(&m->ring[b * RING + v % RING], __ATOMIC_RELAXED) == p[i];
            }
            if (!good && __atomic_load_n(&m->started[b], __ATOMIC_ACQUIRE) - l < RING - 1) {
                uint64_t expect = __atomic_load_n(&m->ring[b * RING + l % RING],
                                                  __ATOMIC_RELAXED);
                fail(m, "block %" PRIu64 " word %u: read 0x%" PRIx64 " (block %" PRIu64
                     " seq %" PRIu64 "), versions %u..%u, the first 0x%" PRIx64, b, i, p[i],
                     (p[i] >> 40) - 1, p[i] & (((uint64_t)1 << 40) - 1), l, h, expect);
                break;
            }
        }
    }
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    struct model *m = w->m;
    uint64_t cpb = m->cs / m->blk;                    /* blocks per cluster */
    uint64_t maxb = MIN((uint64_t)256, MAX((uint64_t)8, 3 * cpb));
    uint8_t *buf = xmalloc(MAX(maxb, cpb) * m->blk);
    uint32_t *lo = xmalloc(MAX(maxb, cpb) * sizeof(*lo));

    while (now() < m->deadline && __atomic_load_n(&m->failures, __ATOMIC_RELAXED) == 0) {
        uint64_t r = wrand(w) % 100;
        uint64_t b0 = wrand(w) % m->nblocks;
        uint64_t nb = 1 + wrand(w) % maxb;
        int ret = 0, kind;

        nb = MIN(nb, m->nblocks - b0);
        if (r < 45) {
            kind = 0;
            for (uint64_t b = b0; b < b0 + nb; b++) {
                lo[b - b0] = __atomic_load_n(&m->completed[b], __ATOMIC_ACQUIRE);
            }
            ret = bdev_pread(m->bd, buf, nb * m->blk, b0 * m->blk);
            if (ret == 0) {
                check_read(m, b0, b0 + nb, lo, buf);
            }
        } else if (r < 73) {
            kind = 1;
            take_blocks(m, b0, b0 + nb);
            announce(m, b0, b0 + nb, false, buf);
            ret = bdev_pwrite(m->bd, buf, nb * m->blk, b0 * m->blk, 0);
            complete(m, b0, b0 + nb);
            give_blocks(m, b0, b0 + nb);
        } else if (r < 81) {
            kind = 2;
            take_blocks(m, b0, b0 + nb);
            announce(m, b0, b0 + nb, true, NULL);
            ret = bdev_pwrite_zeroes(m->bd, b0 * m->blk, nb * m->blk,
                                     (wrand(w) & 1) ? BDEV_REQ_MAY_UNMAP : 0);
            complete(m, b0, b0 + nb);
            give_blocks(m, b0, b0 + nb);
        } else if (r < 91) {
            /* whole clusters, which a discard turns into zeroes */
            kind = 3;
            b0 = ALIGN_DOWN(b0, cpb);
            nb = cpb * (1 + wrand(w) % 3);
            nb = MIN(nb, m->nblocks - b0);
            take_blocks(m, b0, b0 + nb);
            announce(m, b0, b0 + nb, true, NULL);
            ret = bdev_discard(m->bd, b0 * m->blk, nb * m->blk);
            complete(m, b0, b0 + nb);
            give_blocks(m, b0, b0 + nb);
        } else if (r < 95 && m->compress) {
            kind = 4;
            b0 = ALIGN_DOWN(b0, cpb);
            nb = cpb;
            take_blocks(m, b0, b0 + nb);
            announce(m, b0, b0 + nb, false, buf);
            ret = bdev_pwrite_compressed(m->bd, buf, nb * m->blk, b0 * m->blk);
            complete(m, b0, b0 + nb);
            give_blocks(m, b0, b0 + nb);
        } else {
            kind = 5;
            ret = bdev_flush(m->bd);
        }
        __atomic_add_fetch(&m->nops[kind], 1, __ATOMIC_RELAXED);
        if (ret < 0) {
            fail(m, "request kind %d at block %" PRIu64 " (+%" PRIu64 "): %s", kind, b0, nb,
                 strerror(-ret));
        }
    }
    free(buf);
    free(lo);
    return NULL;
}

static void test_stress(const char *name, const char *opts, uint64_t cs, uint64_t size,
                        uint64_t blk, bool compress, size_t l2_cache, size_t rb_cache,
                        double secs)
{
    struct model m = { .size = size, .cs = cs, .blk = blk, .nblocks = size / blk,
                       .compress = compress };
    struct worker w[4];
    char img[512];
    uint8_t *buf;
    uint64_t bad = 0;

    snprintf(img, sizeof(img), "%s/%s.qcow2", tmpdir, name);
    if (tap_sh("qemu-img create -q -f qcow2 -o %s %s %" PRIu64, opts, img, size)) {
        ok(0, "%s: create", name);
        return;
    }
    m.bd = open_rw(img);
    if (!m.bd) {
        return;
    }
    if (l2_cache || rb_cache) {
        /* small caches: evictions of dirty tables all the time */
        struct qcow2 *s = m.bd->opaque;
        assert(!s->l2_cache.nr_dirty && !s->rb_cache.nr_dirty);
        qcow2_cache_destroy(&s->l2_cache);
        qcow2_cache_destroy(&s->rb_cache);
        qcow2_cache_init(&s->l2_cache, "L2 table", l2_cache, cs);
        qcow2_cache_init(&s->rb_cache, "refcount block", rb_cache, cs);
    }
    m.started = xcalloc(m.nblocks, sizeof(*m.started));
    m.completed = xcalloc(m.nblocks, sizeof(*m.completed));
    m.ring = xcalloc(m.nblocks * RING, sizeof(*m.ring));
    m.busy = xzalloc(m.nblocks);
    pthread_mutex_init(&m.lock, NULL);
    pthread_cond_init(&m.cond, NULL);
    m.deadline = now() + secs;
    for (unsigned i = 0; i < ARRAY_SIZE(w); i++) {
        w[i] = (struct worker){ .m = &m, .rng = 0x9e3779b97f4a7c15ULL * (i + 1) + cs };
        pthread_create(&w[i].th, NULL, worker_main, &w[i]);
    }
    for (unsigned i = 0; i < ARRAY_SIZE(w); i++) {
        pthread_join(w[i].th, NULL);
    }
    tap_diag("%s: %" PRIu64 " reads, %" PRIu64 " writes, %" PRIu64 " zero writes, %" PRIu64
             " discards, %" PRIu64 " compressed writes, %" PRIu64 " flushes", name, m.nops[0],
             m.nops[1], m.nops[2], m.nops[3], m.nops[4], m.nops[5]);
    ok(m.failures == 0, "%s: every read saw what the model allows (%d failures)", name,
       m.failures);
    ok(close_ok(m.bd), "%s: close", name);
    ok(tap_sh("qemu-img check -q %s", img) == 0, "%s: qemu-img check is clean", name);

    /* The final contents: the last version of every block. */
    m.bd = open_rw(img);
    if (m.bd) {
        buf = xmalloc(size);
        if (bdev_pread(m.bd, buf, size, 0) == 0) {
            for (uint64_t b = 0; b < m.nblocks; b++) {
                uint64_t v = m.ring[b * RING + m.completed[b] % RING];
                const uint64_t *p = (const uint64_t *)(buf + b * blk);
                for (unsigned i = 0; i < blk / 8; i++) {
                    if (p[i] != v) {
                        if (!bad++) {
                            tap_diag("%s: block %" PRIu64 ": 0x%" PRIx64 ", expected 0x%"
                                     PRIx64, name, b, p[i], v);
                        }
                        break;
                    }
                }
            }
        } else {
            bad = 1;
        }
        ok(bad == 0, "%s: after reopening the image holds the model's last versions "
           "(%" PRIu64 " blocks differ)", name, bad);
        free(buf);
        close_ok(m.bd);
    }
    free(m.started);
    free(m.completed);
    free(m.ring);
    free(m.busy);
    pthread_mutex_destroy(&m.lock);
    pthread_cond_destroy(&m.cond);
}

int main(void)
{
    double secs = getenv("STRESS_SECONDS") ? atof(getenv("STRESS_SECONDS")) : 3;
    const char *only = getenv("ONLY_TEST");

    switch (tap_qemu_tmpdir(tmpdir, sizeof(tmpdir))) {
    case 1:
        return 0;
    case -1:
        return 1;
    }
    if (!only || !strcmp(only, "sync")) {
        test_sync("sync-512", "cluster_size=512", 512, 1 << 20);
        test_sync("sync-64k", "cluster_size=64k", 65536, 1ULL << 30);
        test_sync("sync-64k-extl2", "cluster_size=64k,extended_l2=on", 65536, 1ULL << 30);
    }
    if (!only || !strcmp(only, "reuse")) {
        test_reuse("reuse-512", "cluster_size=512", 512, false);
        test_reuse("reuse-64k", "cluster_size=64k", 65536, false);
        test_reuse("reuse-64k-extl2", "cluster_size=64k,extended_l2=on", 65536, false);
        test_reuse("reuse-64k-compressed", "cluster_size=64k", 65536, true);
    }
    if (!only || !strcmp(only, "zero")) {
        test_zero_partial("zero-partial-64k", "cluster_size=64k", 65536);
        test_zero_partial("zero-partial-64k-extl2", "cluster_size=64k,extended_l2=on", 65536);
    }
    if (!only || !strcmp(only, "stress")) {
        test_stress("stress-512", "cluster_size=512", 512, 1 << 20, 512, true, 0, 0, secs);
        test_stress("stress-512-small-cache", "cluster_size=512", 512, 2 << 20, 512, false, 4,
                    3, secs);
        test_stress("stress-64k", "cluster_size=64k", 65536, 8 << 20, 512, true, 0, 0, secs);
        test_stress("stress-64k-extl2", "cluster_size=64k,extended_l2=on", 65536, 8 << 20, 512,
                    false, 0, 0, secs);
        /* 4 L2 tables, 3 cached */
        test_stress("stress-16k-extl2-small-cache", "cluster_size=16k,extended_l2=on", 16384,
                    64 << 20, 4096, false, 3, 3, secs);
    }
    if (!getenv("KEEP")) {
        tap_sh("rm -rf %s", tmpdir);
    } else {
        tap_diag("kept %s", tmpdir);
    }
    return tap_done();
}
