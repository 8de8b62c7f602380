/*
 * blockctl - disks: a stable name in front of a changing image graph
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/blk.h"

#include <errno.h>
#include <string.h>

struct blk {
    char *name;
    bool read_only;
    bool copy_on_read;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct bdev *root;          /* guarded by lock; stable while in_flight */
    unsigned refcnt;
    unsigned in_flight;
    unsigned quiesce;           /* nested drains */
    pthread_t drainer;          /* the thread that holds the drain */
    void (*error_hook)(struct blk *, enum blk_io_op, int, void *);
    void *error_opaque;
};

struct blk *blk_new(const char *name, struct bdev *root, bool read_only)
{
    struct blk *blk = xzalloc(sizeof(*blk));

    blk->name = xstrdup(name);
    blk->root = root;
    blk->read_only = read_only;
    blk->refcnt = 1;
    pthread_mutex_init(&blk->lock, NULL);
    pthread_cond_init(&blk->cond, NULL);
    return blk;
}

void blk_ref(struct blk *blk)
{
    __atomic_add_fetch(&blk->refcnt, 1, __ATOMIC_RELAXED);
}

void blk_unref(struct blk *blk)
{
    if (!blk || __atomic_sub_fetch(&blk->refcnt, 1, __ATOMIC_ACQ_REL)) {
        return;
    }
    pthread_mutex_destroy(&blk->lock);
    pthread_cond_destroy(&blk->cond);
    free(blk->name);
    free(blk);
}

const char *blk_name(const struct blk *blk)
{
    return blk->name;
}

bool blk_is_read_only(const struct blk *blk)
{
    return blk->read_only;
}

struct bdev *blk_root(struct blk *blk)
{
    return blk->root;
}

uint64_t blk_size(struct blk *blk)
{
    uint64_t size;

    pthread_mutex_lock(&blk->lock);
    size = blk->root->size;
    pthread_mutex_unlock(&blk->lock);
    return size;
}

void blk_set_error_hook(struct blk *blk,
                        void (*hook)(struct blk *, enum blk_io_op, int, void *), void *opaque)
{
    pthread_mutex_lock(&blk->lock);
    blk->error_hook = hook;
    blk->error_opaque = opaque;
    pthread_mutex_unlock(&blk->lock);
}

/* Enter the gate; returns the top image to use for this request. */
static struct bdev *blk_enter(struct blk *blk)
{
    struct bdev *bd;

    pthread_mutex_lock(&blk->lock);
    while (blk->quiesce && !pthread_equal(blk->drainer, pthread_self())) {
        pthread_cond_wait(&blk->cond, &blk->lock);
    }
    blk->in_flight++;
    bd = blk->root;
    pthread_mutex_unlock(&blk->lock);
    return bd;
}

static int blk_exit(struct blk *blk, enum blk_io_op op, int ret)
{
    void (*hook)(struct blk *, enum blk_io_op, int, void *);
    void *opaque;

    pthread_mutex_lock(&blk->lock);
    if (--blk->in_flight == 0 && blk->quiesce) {
        pthread_cond_broadcast(&blk->cond);
    }
    hook = blk->error_hook;
    opaque = blk->error_opaque;
    pthread_mutex_unlock(&blk->lock);
    if (ret < 0 && hook) {
        hook(blk, op, -ret, opaque);
    }
    return ret;
}

void blk_set_copy_on_read(struct blk *blk, bool on)
{
    blk->copy_on_read = on;
}

/*
 * Copy-on-read: what the read found below the top is written into the top
 * (as an unchanged write: no bitmap records it), inside a serialising
 * section, so that a guest write to the range is never overwritten by the
 * older data read here.  A failure to copy up is not the read's failure.
 */
static int read_copy_up(struct bdev *bd, void *buf, size_t len, uint64_t off)
{
    struct bdev_serial *sec = bdev_serialise_begin(bd, off, len);
    uint64_t pos = off, end = off + len;
    int ret = bdev_pread(bd, buf, len, off);

    while (ret == 0 && pos < end) {
        struct bdev_map m;
        const uint8_t *p = (const uint8_t *)buf + (pos - off);

        if (bdev_block_status_above(bd, bd->backing, pos, end - pos, &m) < 0 || !m.len) {
            break;
        }
        m.len = MIN(m.len, end - pos);
        if (!(m.status & BDEV_BLOCK_ALLOCATED)) {
            if (buffer_is_zero(p, m.len)) {
                bdev_pwrite_zeroes(bd, pos, m.len, BDEV_REQ_WRITE_UNCHANGED);
            } else {
                bdev_pwrite(bd, p, m.len, pos, BDEV_REQ_WRITE_UNCHANGED);
            }
        }
        pos += m.len;
    }
    bdev_serialise_end(sec);
    return ret;
}

int blk_pread(struct blk *blk, void *buf, size_t len, uint64_t off)
{
    struct bdev *bd = blk_enter(blk);

    if (blk->copy_on_read && !blk->read_only && bd->backing) {
        return blk_exit(blk, BLK_IO_READ, read_copy_up(bd, buf, len, off));
    }
    return blk_exit(blk, BLK_IO_READ, bdev_pread(bd, buf, len, off));
}

int blk_pwrite(struct blk *blk, const void *buf, size_t len, uint64_t off, unsigned flags)
{
    struct bdev *bd;

    if (blk->read_only) {
        return -EPERM;
    }
    bd = blk_enter(blk);
    return blk_exit(blk, BLK_IO_WRITE, bdev_pwrite(bd, buf, len, off, flags));
}

int blk_pwrite_zeroes(struct blk *blk, uint64_t off, uint64_t len, unsigned flags)
{
    struct bdev *bd;

    if (blk->read_only) {
        return -EPERM;
    }
    bd = blk_enter(blk);
    return blk_exit(blk, BLK_IO_WRITE, bdev_pwrite_zeroes(bd, off, len, flags));
}

int blk_discard(struct blk *blk, uint64_t off, uint64_t len)
{
    struct bdev *bd;

    if (blk->read_only) {
        return -EPERM;
    }
    bd = blk_enter(blk);
    return blk_exit(blk, BLK_IO_WRITE, bdev_discard(bd, off, len));
}

int blk_flush(struct blk *blk)
{
    struct bdev *bd = blk_enter(blk);
    int ret = 0;

    /* a flush covers the whole chain the guest writes through */
    if (!blk->read_only) {
        ret = bdev_flush(bd);
    }
    return blk_exit(blk, BLK_IO_WRITE, ret);
}

/* Leave the gate without reporting (queries are not guest I/O). */
static void blk_leave(struct blk *blk)
{
    pthread_mutex_lock(&blk->lock);
    if (--blk->in_flight == 0 && blk->quiesce) {
        pthread_cond_broadcast(&blk->cond);
    }
    pthread_mutex_unlock(&blk->lock);
}

int blk_block_status(struct blk *blk, uint64_t off, uint64_t len, struct bdev_map *out)
{
    struct bdev *bd = blk_enter(blk);
    int ret = bdev_block_status_above(bd, NULL, off, len, out);

    blk_leave(blk);
    return ret;
}

char **blk_bitmap_names(struct blk *blk)
{
    struct bdev *bd = blk_enter(blk);
    char **names = bdev_bitmap_names(bd);

    blk_leave(blk);
    return names;
}

int blk_bitmap_status(struct blk *blk, const char *name, uint64_t off, uint64_t len,
                      uint64_t *pnum, bool *dirty)
{
    struct bdev *bd = blk_enter(blk);
    int ret = bdev_bitmap_status(bd, name, off, MIN(len, bd->size - MIN(off, bd->size)), pnum,
                                 dirty);

    blk_leave(blk);
    return ret;
}

void blk_drain_begin(struct blk *blk)
{
    pthread_mutex_lock(&blk->lock);
    if (blk->quiesce && pthread_equal(blk->drainer, pthread_self())) {
        blk->quiesce++;
        pthread_mutex_unlock(&blk->lock);
        return;
    }
    while (blk->quiesce) {
        pthread_cond_wait(&blk->cond, &blk->lock);
    }
    blk->quiesce = 1;
    blk->drainer = pthread_self();
    while (blk->in_flight) {
        pthread_cond_wait(&blk->cond, &blk->lock);
    }
    pthread_mutex_unlock(&blk->lock);
}

void blk_drain_end(struct blk *blk)
{
    pthread_mutex_lock(&blk->lock);
    assert(blk->quiesce && pthread_equal(blk->drainer, pthread_self()));
    if (--blk->quiesce == 0) {
        pthread_cond_broadcast(&blk->cond);
    }
    pthread_mutex_unlock(&blk->lock);
}

struct bdev *blk_replace_root(struct blk *blk, struct bdev *root)
{
    struct bdev *old;

    pthread_mutex_lock(&blk->lock);
    assert(blk->quiesce && pthread_equal(blk->drainer, pthread_self()));
    old = blk->root;
    blk->root = root;
    pthread_mutex_unlock(&blk->lock);
    return old;
}
