/*
 * nbd-writer - a guest that writes random 4 KiB blocks to an NBD export at
 * a fixed rate (open loop), for benchmarks and live-operation tests
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 *   nbd-writer URI RATE SECONDS [--flush-every N] [--fua] [--seed S]
 *              [--span BYTES] [--stop-file F]
 *
 * Writes are scheduled at fixed times (RATE per second); each one's
 * latency is measured from its scheduled time, so a stalled server shows
 * up as latency even while nothing can be sent.  Prints one JSON line:
 * {"writes", "errors", "flushes", "p50_ms", "p99_ms", "max_ms"}.
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
    uint8_t buf[BLOCK];
};

static struct req reqs[MAX_IN_FLIGHT];
static double *lat;
static size_t nlat, caplat;
static uint64_t errors, flushes;
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
    if (!r->flush) {
        if (nlat == caplat) {
            caplat = caplat ? caplat * 2 : 4096;
            lat = realloc(lat, caplat * sizeof(*lat));
        }
        lat[nlat++] = l;
    } else {
        flushes++;
    }
    r->busy = false;
    return 1;
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
    const char *uri, *stop_file = NULL;
    double rate, secs, start, next;
    unsigned flush_every = 0, seed = 1;
    uint64_t span = 0, size, i = 0;
    bool fua = false;
    struct nbd_handle *h;

    if (argc < 4) {
        fprintf(stderr, "usage: %s URI RATE SECONDS [--flush-every N] [--fua] [--seed S] "
                "[--span BYTES] [--stop-file F]\n", argv[0]);
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
    start = next = now();
    while (!stop && next < start + secs) {
        double t = now();
        struct pollfd pfd;
        int dir, timeout_ms;

        while (t >= next && !stop && next < start + secs) {
            struct req *r = free_req();
            nbd_completion_callback cb = { .callback = done_cb };
            uint64_t blk, hi;

            if (!r) {
                break;      /* the server is behind: the latency grows */
            }
            /* one pair of draws per write, in this order, so that a model
             * (tests/interop/writer-model.py) can tell where write i went */
            hi = (uint64_t)rand();
            blk = (hi * RAND_MAX + (uint64_t)rand()) % (span / BLOCK);
            r->busy = true;
            r->flush = false;
            r->sched = next;
            memset(r->buf, (int)(i & 0xff), BLOCK);
            memcpy(r->buf, &i, sizeof(i));
            cb.user_data = r;
            if (nbd_aio_pwrite(h, r->buf, BLOCK, blk * BLOCK, cb, fua ? LIBNBD_CMD_FLAG_FUA : 0)
                < 0) {
                fprintf(stderr, "%s: %s\n", argv[0], nbd_get_error());
                return 1;
            }
            i++;
            if (flush_every && i % flush_every == 0 && (r = free_req())) {
                nbd_completion_callback fcb = { .callback = done_cb, .user_data = r };
                r->busy = true;
                r->flush = true;
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
        timeout_ms = next > t ? (int)((next - t) * 1000) : 0;
        if (poll(&pfd, 1, timeout_ms) > 0) {
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
    qsort(lat, nlat, sizeof(*lat), cmp);
    printf("{\"writes\": %zu, \"errors\": %" PRIu64 ", \"flushes\": %" PRIu64
           ", \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f}\n",
           nlat, errors, flushes, nlat ? lat[nlat / 2] * 1000 : 0.0,
           nlat ? lat[nlat * 99 / 100] * 1000 : 0.0, nlat ? lat[nlat - 1] * 1000 : 0.0);
    free(lat);
    return errors ? 1 : 0;
}
