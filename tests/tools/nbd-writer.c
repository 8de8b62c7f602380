/*
 * nbd-writer - a guest that writes random 4 KiB blocks to an NBD export at
 * a fixed rate (open loop), for benchmarks and live-operation tests
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 *   nbd-writer URI RATE SECONDS [--flush-every N] [--fua] [--seed S]
 *              [--span BYTES] [--stop-file F] [--log FILE] [--model FILE]
 *              [--read-every N]
 *
 * Writes are scheduled at fixed times (RATE per second); each one's
 * latency is measured from its scheduled time, so a stalled server shows
 * up as latency even while nothing can be sent.  Prints one JSON line:
 * {"writes", "errors", "flushes", "p50_ms", "p99_ms", "max_ms", "reads",
 * "stale_reads"}.
 * --log FILE: also write each write's scheduled and completion times
 * (CLOCK_MONOTONIC seconds, one "SCHED DONE" line per write) to FILE, so
 * that a caller can see what the writes overlapping an event went through.
 *
 * Write number I fills its block with the byte I & 0xff, then puts I
 * (8 bytes, host order) at its start.  --model FILE: at the end, one line
 * per write the block may hold now, "BLOCK I"
 * (for each block written: the last write submitted to it, and any other
 * that completed after that one was submitted: their order on the server
 * is not known).  --read-every N:
 * after every N writes, read back a block written earlier whose write has
 * completed (no write to it is sent while the read is in flight); a read
 * that does not return that write counts as stale.  Exits 1 on any error
 * or stale read.
 */
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define MAX_IN_FLIGHT 256

struct req {
    double sched;          /* scheduled time */
    bool busy;
    bool flush;
    bool read;
    uint64_t idx;          /* write number (a read: the one expected) */
    uint64_t blk;
    uint8_t buf[BLOCK];
};

/* the model: every write's block and its submit/complete event numbers */
struct wrec {
    uint64_t blk, sub, comp;
};

static struct req reqs[MAX_IN_FLIGHT];
static double *lat, *sched_at;     /* latency and scheduled time per write */
static size_t nlat, caplat;
static uint64_t errors, flushes, reads, stale;
static struct wrec *wrecs;
static size_t nwrecs, capwrecs;
static uint64_t events;
static uint64_t *last_done;     /* per block: 1 + the last completed write's number, 0: none */
static uint32_t *writing;       /* per block: writes in flight */
static uint8_t *reading;        /* per block: a read in flight */
static uint8_t *ambiguous;      /* per block: its last write overlapped another */

static void fill(uint8_t *buf, uint64_t idx)
{
    memset(buf, (int)(idx & 0xff), BLOCK);
    memcpy(buf, &idx, sizeof(idx));
}

static volatile sig_atomic_t stop;

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int done_cb(void *opaque, int *error)
{
    struct req *r = opaque;
    double l = now() - r->sched;

    if (*error) {
        errors++;
    }
    if (r->read) {
        uint8_t want[BLOCK];
        fill(want, r->idx);
        reads++;
        if (!*error && memcmp(want, r->buf, BLOCK)) {
            uint64_t got;
            memcpy(&got, r->buf, sizeof(got));
            if (stale++ < 5) {
                fprintf(stderr, "stale read: block %" PRIu64 " holds write %" PRIu64
                        ", not %" PRIu64 "\n", r->blk, got, r->idx);
            }
        }
        reading[r->blk] = 0;
        r->busy = false;
        return 1;
    }
    if (!r->flush) {
        wrecs[r->idx].comp = ++events;
        writing[r->blk]--;
        if (!last_done[r->blk] || last_done[r->blk] < r->idx + 1) {
            last_done[r->blk] = r->idx + 1;
        }
        if (nlat == caplat) {
            caplat = caplat ? caplat * 2 : 4096;
            lat = realloc(lat, caplat * sizeof(*lat));
            sched_at = realloc(sched_at, caplat * sizeof(*sched_at));
            if (!lat || !sched_at) {
                abort();
            }
        }
        sched_at[nlat] = r->sched;
        lat[nlat++] = l;
    } else {
        flushes++;
    }
    r->busy = false;
    return 1;
}

/* --model: per block, the writes it may hold (see the top) */
static int write_model(const char *path, uint64_t nblocks)
{
    uint64_t *max_sub = calloc(nblocks, sizeof(*max_sub));
    FILE *f = fopen(path, "w");

    if (!f || !max_sub) {
        free(max_sub);
        return -1;
    }
    for (size_t k = 0; k < nwrecs; k++) {
        if (wrecs[k].sub > max_sub[wrecs[k].blk]) {
            max_sub[wrecs[k].blk] = wrecs[k].sub;
        }
    }
    for (size_t k = 0; k < nwrecs; k++) {
        const struct wrec *w = &wrecs[k];
        /* the last submitted, or completed after it was submitted (comp 0:
         * never completed: its fate is unknown too) */
        if (w->sub == max_sub[w->blk] || !w->comp || w->comp > max_sub[w->blk]) {
            fprintf(f, "%" PRIu64 " %zu\n", w->blk, k);
        }
    }
    free(max_sub);
    return fclose(f) == 0 ? 0 : -1;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static struct req *free_req(void)
{
    for (int i = 0; i < MAX_IN_FLIGHT; i++) {
        if (!reqs[i].busy) {
            return &reqs[i];
        }
    }
    return NULL;
}

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    const char *uri, *stop_file = NULL, *log_file = NULL, *model = NULL;
    unsigned read_every = 0;
    double rate, secs, start, next;
    unsigned flush_every = 0, seed = 1;
    uint64_t span = 0, size, i = 0;
    bool fua = false;
    struct nbd_handle *h;

    if (argc < 4) {
        fprintf(stderr, "usage: %s URI RATE SECONDS [--flush-every N] [--fua] [--seed S] "
                "[--span BYTES] [--stop-file F] [--log FILE] [--model FILE] [--read-every N]\n",
                argv[0]);
        return 2;
    }
    uri = argv[1];
    rate = atof(argv[2]);
    secs = atof(argv[3]);
    for (int k = 4; k < argc; k++) {
        if (!strcmp(argv[k], "--flush-every") && k + 1 < argc) {
            flush_every = (unsigned)atoi(argv[++k]);
        } else if (!strcmp(argv[k], "--fua")) {
            fua = true;
        } else if (!strcmp(argv[k], "--seed") && k + 1 < argc) {
            seed = (unsigned)atoi(argv[++k]);
        } else if (!strcmp(argv[k], "--span") && k + 1 < argc) {
            span = strtoull(argv[++k], NULL, 0);
        } else if (!strcmp(argv[k], "--stop-file") && k + 1 < argc) {
            stop_file = argv[++k];
        } else if (!strcmp(argv[k], "--log") && k + 1 < argc) {
            log_file = argv[++k];
        } else if (!strcmp(argv[k], "--model") && k + 1 < argc) {
            model = argv[++k];
        } else if (!strcmp(argv[k], "--read-every") && k + 1 < argc) {
            read_every = (unsigned)atoi(argv[++k]);
        } else {
            fprintf(stderr, "%s: unknown option '%s'\n", argv[0], argv[k]);
            return 2;
        }
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    srand(seed);
    h = nbd_create();
    if (!h || nbd_connect_uri(h, uri) < 0) {
        fprintf(stderr, "%s: %s\n", argv[0], nbd_get_error());
        return 1;
    }
    size = (uint64_t)nbd_get_size(h);
    if (!span || span > size) {
        span = size;
    }
    last_done = calloc(span / BLOCK, sizeof(*last_done));
    writing = calloc(span / BLOCK, sizeof(*writing));
    reading = calloc(span / BLOCK, 1);
    ambiguous = calloc(span / BLOCK, 1);
    start = next = now();
    while (!stop && next < start + secs) {
        double t = now();
        struct pollfd pfd;
        struct timespec timeout;
        double wait;
        int dir;

        while (t >= next && !stop && next < start + secs) {
            struct req *r = free_req();
            nbd_completion_callback cb = { .callback = done_cb };
            uint64_t blk, hi;

            if (!r) {
                break;      /* the server is behind: the latency grows */
            }
            /* drawn only now, one pair of draws per write, in this order: a
             * seed gives the same blocks however slow the server, and a
             * model (tests/interop/writer-model.py) can tell where write i
             * went (--read-every moves a write off a block being read) */
            hi = (uint64_t)rand();
            blk = (hi * RAND_MAX + (uint64_t)rand()) % (span / BLOCK);
            while (reading[blk]) {
                blk = (blk + 1) % (span / BLOCK);     /* never under a read */
            }
            r->busy = true;
            r->flush = false;
            r->read = false;
            r->sched = next;
            r->idx = i;
            r->blk = blk;
            fill(r->buf, i);
            if (nwrecs == capwrecs) {
                capwrecs = capwrecs ? capwrecs * 2 : 4096;
                wrecs = realloc(wrecs, capwrecs * sizeof(*wrecs));
            }
            wrecs[nwrecs++] = (struct wrec){ .blk = blk, .sub = ++events };
            ambiguous[blk] = writing[blk] > 0;
            writing[blk]++;
            cb.user_data = r;
            if (nbd_aio_pwrite(h, r->buf, BLOCK, blk * BLOCK, cb, fua ? LIBNBD_CMD_FLAG_FUA : 0)
                < 0) {
                fprintf(stderr, "%s: %s\n", argv[0], nbd_get_error());
                return 1;
            }
            i++;
            if (read_every && i % read_every == 0 && (r = free_req())) {
                /* a block written a little while ago, if it is quiet now */
                uint64_t rb = wrecs[nwrecs - 1 - (nwrecs - 1) / 2].blk;
                if (last_done[rb] && !writing[rb] && !reading[rb] && !ambiguous[rb]) {
                    nbd_completion_callback rcb = { .callback = done_cb, .user_data = r };
                    r->busy = true;
                    r->flush = false;
                    r->read = true;
                    r->blk = rb;
                    r->idx = last_done[rb] - 1;
                    r->sched = next;
                    reading[rb] = 1;
                    if (nbd_aio_pread(h, r->buf, BLOCK, rb * BLOCK, rcb, 0) < 0) {
                        fprintf(stderr, "%s: %s\n", argv[0], nbd_get_error());
                        return 1;
                    }
                }
            }
            if (flush_every && i % flush_every == 0 && (r = free_req())) {
                nbd_completion_callback fcb = { .callback = done_cb, .user_data = r };
                r->busy = true;
                r->flush = true;
                r->read = false;
                r->sched = next;
                nbd_aio_flush(h, fcb, 0);
            }
            next = start + (double)i / rate;
        }
        if (stop_file && access(stop_file, F_OK) == 0) {
            break;
        }
        dir = nbd_aio_get_direction(h);
        pfd.fd = nbd_aio_get_fd(h);
        pfd.events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                     ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
        t = now();
        /* sleep until the next write is due, to the microsecond: a
         * millisecond timeout would be 0 for the last one before it, and
         * the writer would spin, taking the CPU from the server it measures */
        wait = next > t ? next - t : 0;
        timeout.tv_sec = (time_t)wait;
        timeout.tv_nsec = (long)((wait - (double)timeout.tv_sec) * 1e9);
        if (ppoll(&pfd, 1, &timeout, NULL) > 0) {
            if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                nbd_aio_notify_read(h);
            } else if (pfd.revents & POLLOUT) {
                nbd_aio_notify_write(h);
            }
        }
    }
    while (nbd_aio_in_flight(h) > 0) {
        if (nbd_poll(h, 10000) < 0) {
            break;
        }
    }
    nbd_shutdown(h, 0);
    nbd_close(h);
    if (log_file) {
        FILE *f = fopen(log_file, "w");

        if (!f) {
            fprintf(stderr, "%s: %s: %s\n", argv[0], log_file, strerror(errno));
            return 1;
        }
        for (size_t k = 0; k < nlat; k++) {
            fprintf(f, "%.6f %.6f\n", sched_at[k], sched_at[k] + lat[k]);
        }
        if (fclose(f) != 0) {
            fprintf(stderr, "%s: %s: %s\n", argv[0], log_file, strerror(errno));
            return 1;
        }
    }
    if (model && write_model(model, span / BLOCK) < 0) {
        fprintf(stderr, "%s: %s: %s\n", argv[0], model, strerror(errno));
        return 1;
    }
    qsort(lat, nlat, sizeof(*lat), cmp);
    printf("{\"writes\": %zu, \"errors\": %" PRIu64 ", \"flushes\": %" PRIu64
           ", \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, \"reads\": %" PRIu64
           ", \"stale_reads\": %" PRIu64 "}\n",
           nlat, errors, flushes, nlat ? lat[nlat / 2] * 1000 : 0.0,
           nlat ? lat[nlat * 99 / 100] * 1000 : 0.0, nlat ? lat[nlat - 1] * 1000 : 0.0, reads,
           stale);
    free(lat);
    free(sched_at);
    return errors || stale ? 1 : 0;
}
