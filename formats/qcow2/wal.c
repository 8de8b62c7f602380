/*
 * blockctl - qcow2 driver: the kill log (BDEV_O_KILL_SAFE)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The agent acknowledges a guest's write once its data is in the file and
 * its metadata (new L2 entries, refcounts) in the caches; the caches reach
 * the file at a flush.  A kill -9 before that flush would lose writes the
 * guest was told were done, which a guest whose flush is retried on a
 * restarted agent cannot tell from durable ones.  Writing the tables
 * through would cost a sync per allocating write (an L2 entry must not
 * reach the disk before its refcount and its data: power failures).
 *
 * Instead every change to an L2 entry or a refcount is also appended to a
 * small log in memory that outlives the process but not the machine: a
 * file in a tmpfs folder (BLOCKCTL_RUN_DIR, else /dev/shm/blockctl-UID),
 * named after the image's device and inode.  A record is 64 bytes written
 * in one call inside one page, so a kill never tears it.  A flush, once it
 * has written the caches back (s->lock held: they are clean), starts a new
 * epoch: the records before it are in the file, synced or not, which is
 * all a kill needs.  Records are absolute values, so replaying them in order
 * gives the caches as they were at the kill.
 *
 * Power failure: the log (tmpfs) is gone, or belongs to another boot (its
 * boot id), and is ignored: the image alone is as consistent as without a
 * log.  Another writer: while the log exists the image carries the dirty
 * bit; QEMU (and blockctl) repair an image that has it when they open it
 * for writing, and clear it, so a log found with the bit clear is stale.
 * At the next open for writing, before that repair, blockctl replays a
 * log whose identity matches (device, inode, birth time, boot): each
 * record must still name a table the L1 table or the refcount table
 * points to, else it is skipped.  Then the caches are written back in the
 * crash-safe order and the log removed.
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define WAL_MAGIC "BCTLKLG1"
#define WAL_REC_MAGIC 0x4b4c5231u     /* "KLR1" */
#define WAL_HDR 4096                  /* records start here */
#define WAL_REC 64
#define WAL_BATCH 64                  /* records per write */
#define WAL_TRIM (1u << 20)           /* a new epoch gives back a bigger file's memory */

enum { WAL_L2 = 1, WAL_REF = 2 };

struct wal_hdr {
    char magic[8];
    uint64_t dev, ino, btime_sec, btime_nsec;
    uint64_t epoch;
    char boot[40];
    uint32_t cluster_bits;
    uint32_t crc;                     /* of everything before it */
};

struct wal_rec {
    uint32_t magic;
    uint32_t kind;
    uint64_t epoch;
    uint64_t table;                   /* file offset of the L2 table or refblock */
    uint64_t tindex;                  /* its index in the L1 table or refcount table */
    uint64_t index;                   /* the entry */
    uint64_t value;
    uint32_t bitmap_lo, bitmap_hi;    /* (extended L2) */
    uint32_t crc;                     /* of everything before it */
    uint32_t pad;
};

struct qcow2_wal {
    int fd;
    char *path;
    struct wal_hdr hdr;       /* identity (epoch and crc filled when written) */
    uint64_t epoch;
    uint64_t pos;             /* where the next record goes */
};

_Static_assert(sizeof(struct wal_rec) == WAL_REC, "a record is 64 bytes");
_Static_assert(sizeof(struct wal_hdr) <= WAL_HDR, "the header fits");

static void boot_id(char out[40])
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");

    memset(out, 0, 40);
    if (f) {
        if (!fgets(out, 40, f)) {
            out[0] = 0;
        }
        fclose(f);
    }
}

/* The logs' folder (ours, not a link; @make: made 0700 if missing), or NULL. */
static char *run_dir(bool make)
{
    const char *e = getenv("BLOCKCTL_RUN_DIR");
    char *d = e && *e ? xstrdup(e) : xasprintf("/dev/shm/blockctl-%u", (unsigned)getuid());
    struct stat st;

    if (make && mkdir(d, 0700) < 0 && errno != EEXIST) {
        free(d);
        return NULL;
    }
    if (lstat(d, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid()) {
        free(d);
        return NULL;
    }
    return d;
}

/* The image's identity; false if it has none we can use. */
static bool identity(struct qcow2 *s, struct wal_hdr *h)
{
    struct statx stx;

    memset(h, 0, sizeof(*h));
    memcpy(h->magic, WAL_MAGIC, 8);
    if (statx(s->fd, "", AT_EMPTY_PATH, STATX_INO | STATX_BTIME, &stx) < 0) {
        return false;
    }
    h->dev = ((uint64_t)stx.stx_dev_major << 32) | stx.stx_dev_minor;
    h->ino = stx.stx_ino;
    if (stx.stx_mask & STATX_BTIME) {
        h->btime_sec = (uint64_t)stx.stx_btime.tv_sec;
        h->btime_nsec = stx.stx_btime.tv_nsec;
    }
    boot_id(h->boot);
    h->cluster_bits = s->cluster_bits;
    return true;
}

static char *wal_path(const struct wal_hdr *h, bool make)
{
    char *d = run_dir(make);
    char *p;

    if (!d) {
        return NULL;
    }
    p = xasprintf("%s/kill-%" PRIx64 "-%" PRIu64 ".log", d, h->dev, h->ino);
    free(d);
    return p;
}

static int write_hdr(struct qcow2_wal *w)
{
    struct wal_hdr h = w->hdr;

    h.epoch = w->epoch;
    h.crc = (uint32_t)crc32(0, (const Bytef *)&h, offsetof(struct wal_hdr, crc));
    return pwrite(w->fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) ? 0 : -EIO;
}

void qcow2_wal_open(struct qcow2 *s)
{
    struct wal_hdr h;
    char *path;
    int fd;

    if (s->wal || !s->kill_safe || s->read_only || s->unordered || s->check_mode ||
        s->version < 3 || qcow2_lazy(s) || !identity(s, &h) || !(path = wal_path(&h, true))) {
        return;
    }
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        free(path);
        return;
    }
    s->wal = xzalloc(sizeof(*s->wal));
    s->wal->fd = fd;
    s->wal->path = path;
    s->wal->hdr = h;
    s->wal->epoch = 1;
    s->wal->pos = WAL_HDR;
    /* a log is only trusted while the image has the dirty bit */
    if (write_hdr(s->wal) < 0 || qcow2_mark_dirty(s) < 0) {
        qcow2_wal_close(s, true);
    }
}

void qcow2_wal_close(struct qcow2 *s, bool remove)
{
    if (!s->wal) {
        return;
    }
    close(s->wal->fd);
    if (remove) {
        unlink(s->wal->path);
    }
    free(s->wal->path);
    free(s->wal);
    s->wal = NULL;
}

static void fill(struct qcow2 *s, struct wal_rec *r, uint32_t kind, uint64_t table,
                 uint64_t tindex, uint64_t index, uint64_t value, uint64_t bitmap)
{
    memset(r, 0, sizeof(*r));
    r->magic = WAL_REC_MAGIC;
    r->kind = kind;
    r->epoch = s->wal->epoch;
    r->table = table;
    r->tindex = tindex;
    r->index = index;
    r->value = value;
    r->bitmap_lo = (uint32_t)bitmap;
    r->bitmap_hi = (uint32_t)(bitmap >> 32);
    r->crc = (uint32_t)crc32(0, (const Bytef *)r, offsetof(struct wal_rec, crc));
}

static int append(struct qcow2 *s, const struct wal_rec *r, size_t n)
{
    size_t bytes = n * WAL_REC;

    if (pwrite(s->wal->fd, r, bytes, (off_t)s->wal->pos) != (ssize_t)bytes) {
        return -EIO;
    }
    s->wal->pos += bytes;
    return 0;
}

/* The log failed: no more log; what it held goes to the file (s->wal_lost). */
static void give_up(struct qcow2 *s)
{
    qcow2_wal_close(s, true);
    s->wal_lost = true;
}

void qcow2_wal_log_ref(struct qcow2 *s, uint64_t rb_off, uint64_t rt_index, uint64_t index,
                       uint64_t value)
{
    struct wal_rec r;

    if (!s->wal) {
        return;
    }
    fill(s, &r, WAL_REF, rb_off, rt_index, index, value, 0);
    if (append(s, &r, 1) < 0) {
        give_up(s);
    }
}

void qcow2_wal_log_l2(struct qcow2 *s, uint64_t l1_index, const uint8_t *l2, unsigned i0,
                      uint64_t n)
{
    struct wal_rec r[WAL_BATCH];
    uint64_t table = s->l1[l1_index] & QCOW2_L1E_OFFSET_MASK;

    if (!s->wal) {
        return;
    }
    for (uint64_t done = 0; done < n;) {
        size_t k = 0;
        for (; k < WAL_BATCH && done < n; k++, done++) {
            uint64_t bm, e = qcow2_l2_get(s, l2, i0 + (unsigned)done, &bm);
            fill(s, &r[k], WAL_L2, table, l1_index, i0 + done, e, bm);
        }
        if (append(s, r, k) < 0) {
            give_up(s);
            return;
        }
    }
}

void qcow2_wal_flushed(struct qcow2 *s)
{
    struct qcow2_wal *w = s->wal;
    uint64_t used;

    if (s->l2_cache.nr_dirty || s->rb_cache.nr_dirty) {
        return;         /* (a write-back that failed: its records stay) */
    }
    s->wal_lost = false;
    if (!w) {
        return;
    }
    used = w->pos;
    w->epoch++;
    w->pos = WAL_HDR;
    if (write_hdr(w) < 0) {
        qcow2_wal_close(s, true);
        s->wal_lost = true;
        return;
    }
    if (used > WAL_TRIM && ftruncate(w->fd, WAL_HDR) < 0) {
        /* (harmless: records of an older epoch are never read) */
    }
}

/* Does record @r still name a table of the image, with a sane value? */
static bool rec_ok(struct qcow2 *s, const struct wal_rec *r)
{
    uint64_t host = r->value & QCOW2_L2E_OFFSET_MASK;

    if (r->kind == WAL_REF) {
        return r->tindex < s->reftable_size &&
               (s->reftable[r->tindex] & QCOW2_L1E_OFFSET_MASK) == r->table && r->table &&
               r->index < (1ULL << s->refblock_bits) && r->value <= s->refcount_max;
    }
    if (r->kind != WAL_L2 || r->tindex >= s->l1_size || !r->table ||
        (s->l1[r->tindex] & QCOW2_L1E_OFFSET_MASK) != r->table || r->index >= s->l2_entries) {
        return false;
    }
    if (r->value & QCOW2_OFLAG_COMPRESSED) {
        return true;
    }
    return IS_ALIGNED(host, s->cluster_size) && host < (1ULL << 56);
}

int qcow2_wal_replay(struct qcow2 *s, unsigned *applied)
{
    struct wal_hdr want, h;
    struct wal_rec r[WAL_BATCH];
    char *path;
    uint64_t pos = WAL_HDR;
    int fd, ret = 0;

    *applied = 0;
    if (!identity(s, &want) || !(path = wal_path(&want, false))) {
        return 0;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        free(path);
        return 0;
    }
    if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
        h.crc != (uint32_t)crc32(0, (const Bytef *)&h, offsetof(struct wal_hdr, crc)) ||
        memcmp(h.magic, want.magic, 8) || h.dev != want.dev || h.ino != want.ino ||
        h.btime_sec != want.btime_sec || h.btime_nsec != want.btime_nsec ||
        memcmp(h.boot, want.boot, sizeof(h.boot)) || h.cluster_bits != s->cluster_bits ||
        !(s->incompat & QCOW2_INCOMPAT_DIRTY)) {
        goto done;              /* another image's, another boot's, or stale */
    }
    qcow2_meta_lock(s);
    for (;;) {
        ssize_t n = pread(fd, r, sizeof(r), (off_t)pos);
        size_t k;

        if (n < WAL_REC) {
            break;
        }
        for (k = 0; k < (size_t)n / WAL_REC; k++) {
            uint8_t *t;
            if (r[k].magic != WAL_REC_MAGIC || r[k].epoch != h.epoch ||
                r[k].crc != (uint32_t)crc32(0, (const Bytef *)&r[k],
                                            offsetof(struct wal_rec, crc))) {
                /* the end of this epoch (or damage: the records before it are
                 * whole changes, refcounts before the entries that use them) */
                goto write_back;
            }
            if (!rec_ok(s, &r[k])) {
                continue;               /* a table no longer there */
            }
            if (r[k].kind == WAL_REF) {
                ret = qcow2_cache_get(s, &s->rb_cache, r[k].table, false, &t);
                if (ret < 0) {
                    goto unlock;
                }
                qcow2_refblock_set(s, t, r[k].index, r[k].value);
                qcow2_cache_mark_dirty(&s->rb_cache, t);
                qcow2_cache_put(&s->rb_cache, t);
            } else {
                ret = qcow2_cache_get(s, &s->l2_cache, r[k].table, false, &t);
                if (ret < 0) {
                    goto unlock;
                }
                qcow2_l2_set(s, t, (unsigned)r[k].index, r[k].value,
                             ((uint64_t)r[k].bitmap_hi << 32) | r[k].bitmap_lo);
                qcow2_cache_mark_dirty(&s->l2_cache, t);
                qcow2_cache_put(&s->l2_cache, t);
            }
            (*applied)++;
        }
        pos += (uint64_t)n / WAL_REC * WAL_REC;
    }
write_back:
    if (*applied) {
        ret = qcow2_flush_metadata(s);
        if (ret == 0) {
            ret = qcow2_order_sync(s);
        }
    }
unlock:
    qcow2_meta_unlock(s);
done:
    close(fd);
    if (ret == 0) {
        unlink(path);
    }
    free(path);
    return ret;
}
