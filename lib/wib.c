/*
 * blockctl - write-intent bitmaps
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/wib.h"
#include "lib/io.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WIB_MAGIC "BLKCTLWI"
#define WIB_HEADER 64
#define WIB_MIN_GRAN (4ull << 20)
#define WIB_MAX_REGIONS 65536

struct wib {
    char *path;
    int fd;
    uint64_t size, gran, nregions;
    size_t nbytes;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint8_t *want;          /* bits asked for (and the durable ones) */
    uint8_t *durable;       /* bits on disk */
    bool syncing;           /* a writer is writing and syncing the file */
    uint64_t round;         /* syncs completed */
    int err;                /* the last sync's error (the bits it carried stay not durable) */
};

static uint8_t *dup_bits(const struct wib *w, const uint8_t *a)
{
    uint8_t *c = xmalloc(w->nbytes ? w->nbytes : 1);

    memcpy(c, a, w->nbytes);
    return c;
}

static uint64_t gran_for(uint64_t size)
{
    uint64_t g = WIB_MIN_GRAN;

    while (DIV_ROUND_UP(size, g) > WIB_MAX_REGIONS) {
        g <<= 1;
    }
    return g;
}

static struct wib *wib_alloc(const char *path, int fd, uint64_t size, uint64_t gran)
{
    struct wib *w = xzalloc(sizeof(*w));

    w->path = xstrdup(path);
    w->fd = fd;
    w->size = size;
    w->gran = gran;
    w->nregions = DIV_ROUND_UP(size, gran);
    w->nbytes = (size_t)DIV_ROUND_UP(w->nregions, 8);
    w->want = xzalloc(w->nbytes ? w->nbytes : 1);
    w->durable = xzalloc(w->nbytes ? w->nbytes : 1);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    return w;
}

struct wib *wib_create(const char *path, uint64_t size, struct error **errp)
{
    uint8_t hdr[WIB_HEADER] = { 0 };
    uint64_t gran = gran_for(size), v;
    struct wib *w;
    int fd = io_open(path, O_RDWR | O_CREAT | O_TRUNC, 0600), r;

    if (fd < 0) {
        error_setg_errno(errp, -fd, "cannot create '%s'", path);
        return NULL;
    }
    w = wib_alloc(path, fd, size, gran);
    memcpy(hdr, WIB_MAGIC, 8);
    v = htole64(1);
    memcpy(hdr + 8, &v, 8);
    v = htole64(size);
    memcpy(hdr + 16, &v, 8);
    v = htole64(gran);
    memcpy(hdr + 24, &v, 8);
    r = io_pwrite(fd, hdr, sizeof(hdr), 0);
    if (r == 0) {
        r = wib_save(w);
    }
    if (r == 0) {
        r = io_dirsync(path);
    }
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot write '%s'", path);
        wib_close(w, true);
        return NULL;
    }
    return w;
}

struct wib *wib_open(const char *path, struct error **errp)
{
    uint8_t hdr[WIB_HEADER];
    uint64_t size, gran, ver;
    struct wib *w;
    ssize_t n;
    int fd = io_open(path, O_RDWR, 0);

    if (fd < 0) {
        error_setg_errno(errp, -fd, "cannot open '%s'", path);
        return NULL;
    }
    n = io_pread(fd, hdr, sizeof(hdr), 0);
    memcpy(&ver, hdr + 8, 8);
    memcpy(&size, hdr + 16, 8);
    memcpy(&gran, hdr + 24, 8);
    ver = le64toh(ver);
    size = le64toh(size);
    gran = le64toh(gran);
    if (n != (ssize_t)sizeof(hdr) || memcmp(hdr, WIB_MAGIC, 8) || ver != 1 ||
        gran < WIB_MIN_GRAN || (gran & (gran - 1)) || DIV_ROUND_UP(size, gran) > WIB_MAX_REGIONS) {
        error_setg(errp, "'%s' is not a write-intent bitmap", path);
        io_close(fd);
        return NULL;
    }
    w = wib_alloc(path, fd, size, gran);
    n = io_pread(fd, w->want, w->nbytes, WIB_HEADER);
    if (n != (ssize_t)w->nbytes) {
        /* (short: a torn file; what is missing is taken as set) */
        memset(w->want + (n > 0 ? n : 0), 0xff, w->nbytes - (size_t)(n > 0 ? n : 0));
    }
    memcpy(w->durable, w->want, w->nbytes);
    return w;
}

uint64_t wib_granularity(const struct wib *w)
{
    return w->gran;
}

static bool bit(const uint8_t *a, uint64_t i)
{
    return a[i / 8] & (1u << (i % 8));
}

/* Are the regions [first, last] set in @a? */
static bool all_set(const uint8_t *a, uint64_t first, uint64_t last)
{
    for (uint64_t i = first; i <= last; i++) {
        if (!bit(a, i)) {
            return false;
        }
    }
    return true;
}

bool wib_test(struct wib *w, uint64_t off, uint64_t len)
{
    bool r;

    if (!len || off >= w->size) {
        return true;
    }
    len = MIN(len, w->size - off);
    pthread_mutex_lock(&w->lock);
    r = all_set(w->durable, off / w->gran, (off + len - 1) / w->gran);
    pthread_mutex_unlock(&w->lock);
    return r;
}

/* Write the bits (a copy taken under the lock) and sync; called unlocked. */
static int write_bits(struct wib *w, const uint8_t *bits)
{
    int r = w->nbytes ? io_pwrite(w->fd, bits, w->nbytes, WIB_HEADER) : 0;

    return r ? r : io_fdatasync(w->fd);
}

int wib_mark(struct wib *w, uint64_t off, uint64_t len)
{
    uint64_t first, last;
    int ret = 0;

    if (!len || off >= w->size) {
        return 0;
    }
    len = MIN(len, w->size - off);
    first = off / w->gran;
    last = (off + len - 1) / w->gran;
    pthread_mutex_lock(&w->lock);
    if (all_set(w->durable, first, last)) {
        pthread_mutex_unlock(&w->lock);
        return 0;
    }
    for (uint64_t i = first; i <= last; i++) {
        w->want[i / 8] |= (uint8_t)(1u << (i % 8));
    }
    for (;;) {
        if (all_set(w->durable, first, last)) {
            break;
        }
        if (!w->syncing) {
            /* this thread writes and syncs what everyone asked for so far */
            uint8_t *snap = dup_bits(w, w->want);
            int r;
            w->syncing = true;
            pthread_mutex_unlock(&w->lock);
            r = write_bits(w, snap);
            pthread_mutex_lock(&w->lock);
            w->syncing = false;
            w->round++;
            w->err = r;
            if (r == 0) {
                for (size_t i = 0; i < w->nbytes; i++) {
                    w->durable[i] |= snap[i];
                }
            }
            free(snap);
            pthread_cond_broadcast(&w->cond);
            if (r < 0) {
                ret = r;
                break;
            }
            continue;
        }
        {
            uint64_t seen = w->round;
            while (w->syncing && w->round == seen) {
                pthread_cond_wait(&w->cond, &w->lock);
            }
            if (w->round != seen && w->err < 0 && !all_set(w->durable, first, last)) {
                ret = w->err;
                break;
            }
        }
    }
    pthread_mutex_unlock(&w->lock);
    return ret;
}

void wib_set(struct wib *w, uint64_t off, uint64_t len)
{
    if (!len || off >= w->size) {
        return;
    }
    len = MIN(len, w->size - off);
    pthread_mutex_lock(&w->lock);
    for (uint64_t i = off / w->gran; i <= (off + len - 1) / w->gran; i++) {
        w->want[i / 8] |= (uint8_t)(1u << (i % 8));
    }
    pthread_mutex_unlock(&w->lock);
}

void wib_clear_region(struct wib *w, uint64_t off)
{
    uint64_t i = off / w->gran;

    if (off >= w->size) {
        return;
    }
    pthread_mutex_lock(&w->lock);
    w->want[i / 8] &= (uint8_t)~(1u << (i % 8));
    w->durable[i / 8] &= (uint8_t)~(1u << (i % 8));
    pthread_mutex_unlock(&w->lock);
}

int wib_save(struct wib *w)
{
    uint8_t *snap;
    int r;

    pthread_mutex_lock(&w->lock);
    /* (a mark in progress writes its own bits: wait for it) */
    while (w->syncing) {
        pthread_cond_wait(&w->cond, &w->lock);
    }
    w->syncing = true;
    snap = dup_bits(w, w->want);
    pthread_mutex_unlock(&w->lock);
    r = write_bits(w, snap);
    pthread_mutex_lock(&w->lock);
    if (r == 0) {
        for (size_t i = 0; i < w->nbytes; i++) {
            w->durable[i] |= snap[i];
        }
    }
    free(snap);
    w->syncing = false;
    w->round++;
    w->err = r;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    return r;
}

bool wib_next(struct wib *w, uint64_t pos, uint64_t *off, uint64_t *len)
{
    bool found = false;

    pthread_mutex_lock(&w->lock);
    for (uint64_t i = pos / w->gran; i < w->nregions; i++) {
        if (bit(w->durable, i)) {
            *off = MAX(i * w->gran, pos);
            *len = MIN((i + 1) * w->gran, w->size) - *off;
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&w->lock);
    return found;
}

void wib_close(struct wib *w, bool remove)
{
    if (!w) {
        return;
    }
    io_close(w->fd);
    if (remove) {
        (void)io_unlink(w->path);
    }
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w->want);
    free(w->durable);
    free(w->path);
    free(w);
}
