/*
 * blockctl - qcow2: guest cluster mapping, reads, writes, zeroes, discards
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A cluster without extended L2 entries is treated as one subcluster, so
 * the same code serves both layouts.
 *
 * Locking (qcow2.h): reads and in-place overwrites take s->map only;
 * everything that changes metadata takes the range lock (under s->map),
 * then s->lock, then s->map again, and drops both for its data I/O.
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t qcow2_l2_get(struct qcow2 *s, const uint8_t *l2, unsigned i, uint64_t *bitmap)
{
    const uint8_t *p = l2 + (size_t)i * s->l2_entry_size;

    *bitmap = s->ext_l2 ? get_be64(p + 8) : 0;
    return get_be64(p);
}

void qcow2_l2_set(struct qcow2 *s, uint8_t *l2, unsigned i, uint64_t entry, uint64_t bitmap)
{
    uint8_t *p = l2 + (size_t)i * s->l2_entry_size;

    put_be64(p, entry);
    if (s->ext_l2) {
        put_be64(p + 8, bitmap);
    }
}

enum qcow2_sc_type qcow2_sc_type(struct qcow2 *s, uint64_t l2e, uint64_t bitmap, unsigned sc)
{
    uint64_t host = l2e & QCOW2_L2E_OFFSET_MASK;
    bool alloc, zero;

    if (l2e & QCOW2_OFLAG_COMPRESSED) {
        return QCOW2_SC_COMPRESSED;
    }
    if (!s->ext_l2) {
        if (l2e & QCOW2_OFLAG_ZERO) {
            return host ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
        }
        return host ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOC_PLAIN;
    }
    alloc = (bitmap >> sc) & 1;
    zero = (bitmap >> (32 + sc)) & 1;
    if (!host) {
        if (alloc) {
            return QCOW2_SC_INVALID;
        }
        return zero ? QCOW2_SC_ZERO_PLAIN : QCOW2_SC_UNALLOC_PLAIN;
    }
    if (alloc && zero) {
        return QCOW2_SC_INVALID;
    }
    return alloc ? QCOW2_SC_NORMAL : zero ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_UNALLOC_ALLOC;
}

static bool has_host(enum qcow2_sc_type t)
{
    return t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC || t == QCOW2_SC_UNALLOC_ALLOC;
}

void qcow2_compressed_range(struct qcow2 *s, uint64_t l2e, uint64_t *off, uint64_t *bytes)
{
    uint64_t nsec = ((l2e >> s->csize_shift) & s->csize_mask) + 1;

    *off = l2e & s->coffset_mask;
    *bytes = nsec * 512 - (*off & 511);
}

/*
 * Write L1 entry @index with the rest of its 512-byte sector (zeroes past
 * the table's end, which its last cluster holds): a write cut short then
 * keeps whole entries, old or new, as a power cut keeps whole sectors.
 */
int qcow2_write_l1_entry(struct qcow2 *s, uint32_t index)
{
    uint8_t be[512];
    uint32_t first = index & ~63u;
    int ret;

    memset(be, 0, sizeof(be));
    for (uint32_t i = first; i < first + 64 && i < s->l1_size; i++) {
        put_be64(be + (i - first) * 8, s->l1[i]);
    }
    ret = io_pwrite(s->fd, be, sizeof(be), s->l1_offset + (uint64_t)first * 8);
    if (ret == 0) {
        qcow2_note_file_end(s, s->l1_offset + (uint64_t)first * 8 + sizeof(be));
    }
    return ret;
}

int qcow2_set_l1_entry(struct qcow2 *s, uint32_t index, uint64_t entry)
{
    uint64_t old = s->l1[index];
    int ret;

    s->l1[index] = entry;
    ret = qcow2_write_l1_entry(s, index);
    if (ret < 0) {
        /* A failed write may have changed part of the entry: put it back. */
        s->l1[index] = old;
        qcow2_write_l1_entry(s, index);
    }
    return ret;
}

/* --- range locks (guest cluster indexes), under s->map --- */

static struct qcow2_range *range_lock(struct qcow2 *s, uint64_t start, uint64_t end)
{
    struct qcow2_range *r;

    assert(!qcow2_meta_held(s));
again:
    for (r = s->ranges; r; r = r->next) {
        if (r->start < end && start < r->end) {
            qcow2_map_wait(s, &s->range_cond);
            goto again;
        }
    }
    r = xmalloc(sizeof(*r));
    r->start = start;
    r->end = end;
    r->next = s->ranges;
    s->ranges = r;
    return r;
}

static void range_unlock(struct qcow2 *s, struct qcow2_range *r)
{
    struct qcow2_range **pp;

    for (pp = &s->ranges; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    free(r);
    pthread_cond_broadcast(&s->range_cond);
}

/* Take the range lock for guest clusters [start, end), then s->lock and s->map. */
static struct qcow2_range *lock_for_update(struct qcow2 *s, uint64_t start, uint64_t end)
{
    struct qcow2_range *r;

    qcow2_map_lock(s);
    r = range_lock(s, start, end);
    qcow2_map_unlock(s);
    qcow2_meta_lock(s);
    qcow2_map_lock(s);
    return r;
}

static void unlock_after_update(struct qcow2 *s, struct qcow2_range *r)
{
    range_unlock(s, r);
    qcow2_map_unlock(s);
    qcow2_meta_unlock(s);
}

/*
 * Report corruption.  A thread without s->lock (a reader) takes it first,
 * as the header is rewritten; it holds s->map again afterwards.
 */
static void corruption(struct qcow2 *s, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
static void corruption(struct qcow2 *s, const char *fmt, ...)
{
    va_list ap;
    char *msg;
    unsigned depth;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    if (qcow2_meta_held(s)) {
        qcow2_signal_corruption(s, "%s", msg);
    } else {
        depth = qcow2_map_release(s);
        qcow2_meta_lock(s);
        qcow2_signal_corruption(s, "%s", msg);
        qcow2_map_reacquire(s, depth);
        qcow2_meta_unlock(s);
    }
    free(msg);
}

/* --- L2 tables --- */

static int check_l2_offset(struct qcow2 *s, uint64_t l1i, uint64_t l2off)
{
    if (!IS_ALIGNED(l2off, s->cluster_size)) {
        corruption(s, "L2 table offset 0x%" PRIx64 " (L1 index %" PRIu64 ") is not "
                   "cluster aligned", l2off, l1i);
        return -EIO;
    }
    if (l2off + s->cluster_size > s->file_size) {
        corruption(s, "L2 table offset 0x%" PRIx64 " (L1 index %" PRIu64 ") is "
                   "past the end of the file", l2off, l1i);
        return -EIO;
    }
    return 0;
}

/*
 * For readers (s->map held): the L2 table covering @off, or *l2 = NULL if
 * there is none.  Release it with put_l2 (*tmp: a private copy).
 */
static int get_l2(struct qcow2 *s, uint64_t off, uint8_t **l2, unsigned *idx, bool *tmp)
{
    uint64_t l1i = off >> (s->cluster_bits + s->l2_bits);
    uint64_t l2off;
    int ret;

    *idx = (off >> s->cluster_bits) & (s->l2_entries - 1);
    *l2 = NULL;
    *tmp = false;
    if (l1i >= s->l1_size) {
        return 0;
    }
    l2off = s->l1[l1i] & QCOW2_L1E_OFFSET_MASK;
    if (!l2off) {
        return 0;
    }
    ret = check_l2_offset(s, l1i, l2off);
    if (ret < 0) {
        return ret;
    }
    return qcow2_cache_get_ro(s, &s->l2_cache, l2off, l2, tmp);
}

static void put_l2(struct qcow2 *s, uint8_t *l2, bool tmp)
{
    qcow2_cache_put_ro(s, &s->l2_cache, l2, tmp);
}

/* The L2 table covering @off, allocated (or copied, if shared) as needed. */
static int get_l2_for_write(struct qcow2 *s, uint64_t off, uint8_t **l2, unsigned *idx)
{
    uint64_t l1i = off >> (s->cluster_bits + s->l2_bits);
    uint64_t l1e, l2off, rc;
    uint8_t *old, *tbl;
    int64_t new;
    int ret;

    *idx = (off >> s->cluster_bits) & (s->l2_entries - 1);
    if (l1i >= s->l1_size) {
        corruption(s, "guest offset 0x%" PRIx64 " beyond the L1 table", off);
        return -EIO;
    }
    l1e = s->l1[l1i];
    l2off = l1e & QCOW2_L1E_OFFSET_MASK;
    if (l2off) {
        ret = check_l2_offset(s, l1i, l2off);
        if (ret < 0) {
            return ret;
        }
        if (l1e & QCOW2_OFLAG_COPIED) {
            return qcow2_cache_get(s, &s->l2_cache, l2off, false, l2);
        }
        ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc == 1) {
            ret = qcow2_set_l1_entry(s, l1i, l2off | QCOW2_OFLAG_COPIED);
            if (ret < 0) {
                return ret;
            }
            return qcow2_cache_get(s, &s->l2_cache, l2off, false, l2);
        }
    }

    /* A new table, empty or a copy of the shared one. */
    new = qcow2_alloc_clusters(s, 1);
    if (new < 0) {
        return (int)new;
    }
    ret = qcow2_cache_get(s, &s->l2_cache, new, true, &tbl);
    if (ret < 0) {
        qcow2_update_refcount(s, new, 1, -1);
        return ret;
    }
    if (l2off) {
        ret = qcow2_cache_get(s, &s->l2_cache, l2off, false, &old);
        if (ret < 0) {
            goto fail;
        }
        memcpy(tbl, old, s->cluster_size);
        qcow2_cache_put(&s->l2_cache, old);
    }
    qcow2_cache_mark_dirty(&s->l2_cache, tbl);
    ret = qcow2_cache_write_entry(s, &s->l2_cache, tbl);
    if (ret == 0) {
        ret = qcow2_flush_refblocks(s);
    }
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_set_l1_entry(s, l1i, (uint64_t)new | QCOW2_OFLAG_COPIED);
    if (ret < 0) {
        goto fail;
    }
    /* the old table's decrement waits for a sync after this L1 write */
    s->tables_unsynced = true;
    if (l2off) {
        qcow2_queue_decref(s, l2off, 1);
    }
    *l2 = tbl;
    return 0;

fail:
    qcow2_cache_put(&s->l2_cache, tbl);
    qcow2_cache_discard(&s->l2_cache, new);
    qcow2_update_refcount(s, new, 1, -1);
    return ret;
}

/*
 * BDEV_O_KILL_SAFE: L2 entries [i0, i0+n) that a request changed reach the
 * file before it completes, in the power-failure order (the refcounts and
 * the data they point to synced first), so that a kill -9 after the reply
 * loses none of it.  @was_dirty: the table held other unwritten changes.
 */
static int write_through(struct qcow2 *s, uint8_t *l2, unsigned i0, uint64_t n, bool was_dirty)
{
    int ret = qcow2_flush_refblocks(s);

    if (ret == 0) {
        ret = qcow2_cache_write_range(s, &s->l2_cache, l2, (size_t)i0 * s->l2_entry_size,
                                      (size_t)(i0 + n) * s->l2_entry_size, was_dirty);
    }
    return ret;
}

/*
 * A request changed L2 entries [i0, i0+n) of @l2 (the table of guest
 * offset @off): on a BDEV_O_KILL_SAFE image, make the change outlive a
 * kill of the process before the request completes: in the kill log if
 * there is one (wal.c), else written through (a guest's requests only).
 */
static int keep_changes(struct qcow2 *s, uint64_t off, uint8_t *l2, unsigned i0, uint64_t n,
                        bool was_dirty)
{
    if (s->wal) {
        qcow2_wal_log_l2(s, off >> (s->cluster_bits + s->l2_bits), l2, i0, n);
    }
    if (s->wal_lost) {
        /* the log failed: what it held goes to the file */
        int ret = qcow2_flush_metadata(s);
        if (ret == 0) {
            s->wal_lost = false;
        }
        return ret;
    }
    if (s->wal || !s->kill_safe || bdev_thread_is_background()) {
        return 0;
    }
    return write_through(s, l2, i0, n, was_dirty);
}

/* --- mapping --- */

struct qmap {
    enum qcow2_sc_type type;
    uint64_t host;       /* host offset of the first byte (types with a host) */
    uint64_t bytes;
    uint64_t l2e;        /* the L2 entry (compressed clusters) */
};

static int check_entry(struct qcow2 *s, uint64_t guest, uint64_t l2e, enum qcow2_sc_type t)
{
    uint64_t host = l2e & QCOW2_L2E_OFFSET_MASK;

    if (t == QCOW2_SC_INVALID) {
        corruption(s, "invalid L2 entry 0x%" PRIx64 " for guest offset 0x%" PRIx64,
                   l2e, guest);
        return -EIO;
    }
    if (t == QCOW2_SC_COMPRESSED) {
        uint64_t coff, cbytes;
        qcow2_compressed_range(s, l2e, &coff, &cbytes);
        if (coff >= s->file_size || coff < s->cluster_size) {
            corruption(s, "compressed cluster for guest offset 0x%" PRIx64
                       " at 0x%" PRIx64 " lies outside the file", guest, coff);
            return -EIO;
        }
        return 0;
    }
    if (has_host(t)) {
        if (!IS_ALIGNED(host, s->cluster_size)) {
            corruption(s, "cluster offset 0x%" PRIx64 " for guest offset 0x%" PRIx64
                       " is not cluster aligned", host, guest);
            return -EIO;
        }
        if (t == QCOW2_SC_NORMAL && host >= s->file_size) {
            corruption(s, "L2 entry for guest offset 0x%" PRIx64 " points past the "
                       "end of the file (0x%" PRIx64 ")", guest, host);
            return -EIO;
        }
    }
    return 0;
}

/* Under s->map: the run of equally mapped bytes starting at @off. */
static int get_mapping(struct qcow2 *s, uint64_t off, uint64_t len, struct qmap *m)
{
    uint64_t cs = s->cluster_size, scsz = s->sc_size;
    uint64_t l2_span = cs << s->l2_bits;
    unsigned nsc = 1u << s->sc_bits, idx, sc;
    uint64_t e, bm, host0, covered, expect;
    uint8_t *l2;
    bool tmp;
    int ret;

    len = MIN(len, l2_span - (off & (l2_span - 1)));
    ret = get_l2(s, off, &l2, &idx, &tmp);
    if (ret < 0) {
        return ret;
    }
    if (!l2) {
        m->type = QCOW2_SC_UNALLOC_PLAIN;
        m->host = 0;
        m->bytes = len;
        m->l2e = 0;
        return 0;
    }
    sc = (off & (cs - 1)) / scsz;
    e = qcow2_l2_get(s, l2, idx, &bm);
    m->type = qcow2_sc_type(s, e, bm, sc);
    m->l2e = e;
    ret = check_entry(s, off, e, m->type);
    if (ret < 0) {
        put_l2(s, l2, tmp);
        return ret;
    }
    host0 = e & QCOW2_L2E_OFFSET_MASK;
    m->host = has_host(m->type) ? host0 + (off & (cs - 1)) : 0;
    if (m->type == QCOW2_SC_COMPRESSED) {
        m->bytes = MIN(len, cs - (off & (cs - 1)));
        put_l2(s, l2, tmp);
        return 0;
    }
    covered = scsz - (off & (scsz - 1));
    expect = host0 + (uint64_t)(sc + 1) * scsz;
    sc++;
    while (covered < len) {
        enum qcow2_sc_type t;
        if (sc == nsc) {
            sc = 0;
            if (++idx == s->l2_entries) {
                break;
            }
            e = qcow2_l2_get(s, l2, idx, &bm);
            t = qcow2_sc_type(s, e, bm, 0);
            if (t != m->type || check_entry(s, off + covered, e, t) < 0) {
                break;
            }
            if (has_host(t) && (e & QCOW2_L2E_OFFSET_MASK) != expect) {
                break;
            }
        } else {
            t = qcow2_sc_type(s, e, bm, sc);
            if (t != m->type) {
                break;
            }
        }
        covered += scsz;
        expect += scsz;
        sc++;
    }
    m->bytes = MIN(len, covered);
    put_l2(s, l2, tmp);
    return 0;
}

int qcow2_read_compressed(struct qcow2 *s, uint64_t l2e, uint8_t *out)
{
    uint64_t coff, cbytes;
    uint8_t *in;
    ssize_t n;
    int ret;

    qcow2_compressed_range(s, l2e, &coff, &cbytes);
    in = xmalloc(cbytes);
    n = io_pread(s->fd, in, cbytes, coff);
    if (n < 0) {
        free(in);
        return (int)n;
    }
    ret = qcow2_decompress(s->compression_type, out, s->cluster_size, in, n);
    free(in);
    if (ret < 0) {
        bdev_set_error(s->bd, "'%s': compressed cluster at 0x%" PRIx64 " does not decompress",
                       s->bd->filename, coff);
    }
    return ret;
}

/* Register (or with @m NULL, unregister) the host range a read is about to use. */
static void read_register(struct qcow2 *s, struct qcow2_inflight *in, const struct qmap *m,
                          bool *registered)
{
    if (*registered) {
        struct qcow2_inflight **pp = &s->inflight;
        while (*pp != in) {
            pp = &(*pp)->next;
        }
        *pp = in->next;
        *registered = false;
    }
    if (!m || (m->type != QCOW2_SC_NORMAL && m->type != QCOW2_SC_COMPRESSED)) {
        return;
    }
    if (m->type == QCOW2_SC_COMPRESSED) {
        uint64_t coff, cbytes;
        qcow2_compressed_range(s, m->l2e, &coff, &cbytes);
        in->start = coff;
        in->end = coff + cbytes;
    } else {
        in->start = m->host;
        in->end = m->host + m->bytes;
    }
    in->next = s->inflight;
    s->inflight = in;
    *registered = true;
}

int qcow2_pread(struct bdev *bd, void *buf, size_t len, uint64_t off)
{
    struct qcow2 *s = bd->opaque;
    struct qcow2_inflight in;
    bool registered = false;
    uint8_t *cbuf = NULL;
    uint64_t cbuf_e = 0;
    int ret = 0;

    while (len) {
        struct qmap m;
        ssize_t n;

        /*
         * The host range stays registered until its data is read, so that
         * a discard and flush meanwhile cannot give it to other data.
         */
        qcow2_map_lock(s);
        ret = get_mapping(s, off, len, &m);
        read_register(s, &in, ret < 0 ? NULL : &m, &registered);
        qcow2_map_unlock(s);
        if (ret < 0) {
            break;
        }
        if (qcow2_test_hook) {
            qcow2_test_hook(s, QCOW2_TEST_READ_MAPPED, off, registered ? in.start : 0);
        }
        switch (m.type) {
        case QCOW2_SC_UNALLOC_PLAIN:
        case QCOW2_SC_UNALLOC_ALLOC:
            ret = bdev_read_backing(bd, buf, m.bytes, off);
            break;
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            memset(buf, 0, m.bytes);
            break;
        case QCOW2_SC_NORMAL:
            n = io_pread(s->fd, buf, m.bytes, m.host);
            if (n < 0) {
                ret = (int)n;
                bdev_set_error(bd, "'%s': read error at offset %" PRIu64 ": %s", bd->filename,
                               m.host, strerror(-ret));
            } else if ((uint64_t)n < m.bytes) {
                memset((uint8_t *)buf + n, 0, m.bytes - n);
            }
            break;
        case QCOW2_SC_COMPRESSED:
            if (!cbuf) {
                cbuf = xmalloc(s->cluster_size);
            }
            if (!cbuf_e || cbuf_e != m.l2e) {
                ret = qcow2_read_compressed(s, m.l2e, cbuf);
                cbuf_e = ret < 0 ? 0 : m.l2e;
            }
            if (ret == 0) {
                memcpy(buf, cbuf + (off & (s->cluster_size - 1)), m.bytes);
            }
            break;
        default:
            ret = -EIO;
        }
        if (ret < 0) {
            break;
        }
        buf = (uint8_t *)buf + m.bytes;
        off += m.bytes;
        len -= m.bytes;
    }
    if (registered) {
        qcow2_map_lock(s);
        read_register(s, &in, NULL, &registered);
        qcow2_map_unlock(s);
    }
    free(cbuf);
    return ret;
}

/*
 * Was metadata preallocated (many clusters allocated but not stored)?  Then,
 * as QEMU does, data clusters over holes of the file read as zero.  The
 * test is QEMU's: more refcounted clusters than the file's allocated
 * clusters allow (with 10% slack).  Under s->map.
 */
static bool prealloc_detected(struct qcow2 *s)
{
    int64_t alloc, real, threshold, count = 0;
    uint64_t end;

    if (s->prealloc_detected >= 0) {
        return s->prealloc_detected;
    }
    s->prealloc_detected = 0;
    alloc = bfile_allocated(s->bd->file);
    if (alloc < 0 || s->bd->file->is_blockdev) {
        return false;
    }
    real = alloc / s->cluster_size;
    threshold = MAX(real * 10 / 9, real + 2);
    end = qcow2_size_to_clusters(s, s->file_size);
    for (uint64_t i = 0; i < end && count <= threshold; i++) {
        uint64_t rc;
        if (qcow2_get_refcount_ro(s, i, &rc) < 0) {
            return false;
        }
        count += rc != 0;
    }
    s->prealloc_detected = count > threshold;
    return s->prealloc_detected;
}

/* Limit a data run at @host to the file's data or hole extent there. */
static bool host_hole(int fd, uint64_t host, uint64_t *len)
{
    off_t d = lseek(fd, (off_t)host, SEEK_DATA);

    if (d < 0) {
        return errno == ENXIO;   /* hole up to the end of the file */
    }
    if ((uint64_t)d > host) {
        *len = MIN(*len, (uint64_t)d - host);
        return true;
    }
    d = lseek(fd, (off_t)host, SEEK_HOLE);
    if (d > 0 && (uint64_t)d > host) {
        *len = MIN(*len, (uint64_t)d - host);
    }
    return false;
}

int qcow2_block_status(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum,
                       uint64_t *map, unsigned *status)
{
    struct qcow2 *s = bd->opaque;
    struct qmap m;
    bool recurse;
    int ret;

    qcow2_map_lock(s);
    ret = get_mapping(s, off, len, &m);
    recurse = ret == 0 && m.type == QCOW2_SC_NORMAL && prealloc_detected(s);
    qcow2_map_unlock(s);
    if (ret < 0) {
        return ret;
    }
    *pnum = m.bytes;
    *map = m.host;
    switch (m.type) {
    case QCOW2_SC_NORMAL:
        *status = BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
        if (recurse && host_hole(s->fd, m.host, pnum)) {
            *status |= BDEV_BLOCK_ZERO;
        }
        break;
    case QCOW2_SC_ZERO_PLAIN:
        *status = BDEV_BLOCK_ZERO | BDEV_BLOCK_ALLOCATED;
        break;
    case QCOW2_SC_ZERO_ALLOC:
        *status = BDEV_BLOCK_ZERO | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
        break;
    case QCOW2_SC_COMPRESSED:
        *status = BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_COMPRESSED;
        *map = 0;
        break;
    case QCOW2_SC_UNALLOC_ALLOC:
        *status = BDEV_BLOCK_OFFSET_VALID;
        break;
    default:
        *status = 0;
        *map = 0;
        break;
    }
    return 0;
}

/* --- writes --- */

enum fill_src { FILL_ZERO, FILL_BACKING, FILL_OLDHOST, FILL_DECOMP };

struct fill {
    uint64_t start, len;        /* relative to the cluster */
    enum fill_src src;
};

struct cplan {
    uint64_t old_e, old_bm;
    bool in_place;
    uint64_t host;              /* cluster-aligned host offset to write */
    struct fill fills[2 * QCOW2_EXTL2_SUBCLUSTERS + 2];
    int nfills;
};

static void add_fill(struct cplan *p, uint64_t start, uint64_t len, enum fill_src src)
{
    if (!len) {
        return;
    }
    if (p->nfills && p->fills[p->nfills - 1].src == src &&
        p->fills[p->nfills - 1].start + p->fills[p->nfills - 1].len == start) {
        p->fills[p->nfills - 1].len += len;
        return;
    }
    assert(p->nfills < (int)ARRAY_SIZE(p->fills));
    p->fills[p->nfills].start = start;
    p->fills[p->nfills].len = len;
    p->fills[p->nfills].src = src;
    p->nfills++;
}

static enum fill_src view_src(enum qcow2_sc_type t, bool in_place)
{
    switch (t) {
    case QCOW2_SC_ZERO_PLAIN:
    case QCOW2_SC_ZERO_ALLOC:
        return FILL_ZERO;
    case QCOW2_SC_UNALLOC_PLAIN:
    case QCOW2_SC_UNALLOC_ALLOC:
        return FILL_BACKING;
    case QCOW2_SC_COMPRESSED:
        return FILL_DECOMP;
    default:
        return in_place ? FILL_ZERO /* unused */ : FILL_OLDHOST;
    }
}

/* Work out what must be copied around the written part [ws, we) of a cluster. */
static void plan_fills(struct qcow2 *s, struct cplan *p, uint64_t ws, uint64_t we)
{
    uint64_t cs = s->cluster_size, scsz = s->sc_size;
    unsigned nsc = 1u << s->sc_bits;

    p->nfills = 0;
    if (ws == 0 && we == cs) {
        return;
    }
    if (p->old_e & QCOW2_OFLAG_COMPRESSED) {
        add_fill(p, 0, ws, FILL_DECOMP);
        add_fill(p, we, cs - we, FILL_DECOMP);
        return;
    }
    for (unsigned sc = 0; sc < nsc; sc++) {
        uint64_t scs = sc * scsz, sce = scs + scsz;
        enum qcow2_sc_type t = qcow2_sc_type(s, p->old_e, p->old_bm, sc);
        bool touched = scs < we && ws < sce;

        if (touched) {
            if (t == QCOW2_SC_NORMAL && p->in_place) {
                continue;
            }
            if (ws > scs) {
                add_fill(p, scs, ws - scs, view_src(t, p->in_place));
            }
            if (we < sce) {
                add_fill(p, we, sce - we, view_src(t, p->in_place));
            }
        } else if (!s->ext_l2) {
            /* whole-cluster granularity: handled through "touched" above */
        } else if (t == QCOW2_SC_NORMAL && !p->in_place) {
            add_fill(p, scs, scsz, FILL_OLDHOST);
        }
    }
}

static uint64_t new_bitmap(struct qcow2 *s, struct cplan *p, uint64_t ws, uint64_t we)
{
    uint64_t bm;
    unsigned first, last;

    if (!s->ext_l2) {
        return 0;
    }
    if (p->old_e & QCOW2_OFLAG_COMPRESSED) {
        return QCOW2_BITMAP_ALL_ALLOC;
    }
    bm = p->old_bm;
    first = ws / s->sc_size;
    last = (we - 1) / s->sc_size;
    for (unsigned sc = first; sc <= last; sc++) {
        bm |= 1ULL << sc;
        bm &= ~(1ULL << (32 + sc));
    }
    return bm;
}

/* Release the host storage an old L2 entry referenced (after the write-back). */
static void drop_old(struct qcow2 *s, uint64_t old_e)
{
    if (old_e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff, cbytes, first, last;
        qcow2_compressed_range(s, old_e, &coff, &cbytes);
        first = coff >> s->cluster_bits;
        last = (coff + cbytes - 1) >> s->cluster_bits;
        for (uint64_t c = first; c <= last; c++) {
            qcow2_queue_decref(s, c << s->cluster_bits, 1);
        }
    } else if (old_e & QCOW2_L2E_OFFSET_MASK) {
        qcow2_queue_decref(s, old_e & QCOW2_L2E_OFFSET_MASK, 1);
    }
}

static int do_fill(struct qcow2 *s, struct cplan *p, uint64_t guest_cluster, uint8_t **decomp)
{
    for (int i = 0; i < p->nfills; i++) {
        struct fill *f = &p->fills[i];
        uint8_t *tmp = xmalloc(f->len);
        int ret = 0;

        switch (f->src) {
        case FILL_ZERO:
            memset(tmp, 0, f->len);
            break;
        case FILL_BACKING:
            ret = bdev_read_backing(s->bd, tmp, f->len, guest_cluster + f->start);
            break;
        case FILL_OLDHOST: {
            ssize_t n = io_pread(s->fd, tmp, f->len,
                                 (p->old_e & QCOW2_L2E_OFFSET_MASK) + f->start);
            if (n < 0) {
                ret = (int)n;
            } else if ((uint64_t)n < f->len) {
                memset(tmp + n, 0, f->len - n);
            }
            break;
        }
        case FILL_DECOMP:
            if (!*decomp) {
                *decomp = xmalloc(s->cluster_size);
                ret = qcow2_read_compressed(s, p->old_e, *decomp);
                if (ret < 0) {
                    free(*decomp);
                    *decomp = NULL;
                    break;
                }
            }
            memcpy(tmp, *decomp + f->start, f->len);
            break;
        }
        if (ret == 0) {
            ret = io_pwrite(s->fd, tmp, f->len, p->host + f->start);
        }
        free(tmp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Overwrite in place: when every cluster of [off, off+len) is allocated
 * and owned (COPIED, in an owned L2 table) and the written subclusters
 * already hold data, the write changes no metadata.  The data then goes
 * straight to its clusters without s->lock, and nothing is dirtied.
 * Called with s->map and the range lock (which keeps the entries as they
 * are) held; returns false when the general path must do the write.
 */
static bool write_in_place(struct qcow2 *s, const uint8_t *buf, uint64_t off, uint64_t len,
                           int *ret)
{
    uint64_t cs = s->cluster_size;
    uint64_t first = off >> s->cluster_bits;
    uint64_t n = ((off + len - 1) >> s->cluster_bits) - first + 1;
    uint64_t l1i = off >> (s->cluster_bits + s->l2_bits);
    uint64_t end = off + len;
    uint64_t hosts_local[16], *hosts = hosts_local;
    unsigned idx0, depth;
    bool tmp, fits = true;
    uint8_t *l2;

    if (l1i >= s->l1_size || !(s->l1[l1i] & QCOW2_OFLAG_COPIED)) {
        return false;
    }
    *ret = get_l2(s, off, &l2, &idx0, &tmp);
    if (*ret < 0) {
        return true;
    }
    if (!l2) {
        return false;
    }
    if (n > ARRAY_SIZE(hosts_local)) {
        hosts = xmalloc(n * sizeof(*hosts));
    }
    for (uint64_t i = 0; i < n && fits; i++) {
        uint64_t bm, e = qcow2_l2_get(s, l2, idx0 + i, &bm);
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

        fits = e == (host | QCOW2_OFLAG_COPIED) && host && IS_ALIGNED(host, cs) &&
               host < s->file_size;
        if (fits && s->ext_l2) {
            uint64_t cstart = (first + i) << s->cluster_bits;
            unsigned a = (MAX(off, cstart) - cstart) / s->sc_size;
            unsigned b = (MIN(end, cstart + cs) - cstart - 1) / s->sc_size;
            uint64_t mask = ((2ULL << b) - 1) & ~((1ULL << a) - 1);
            fits = (bm & mask) == mask && !((bm >> 32) & mask) &&
                   !(bm & (bm >> 32) & QCOW2_BITMAP_ALL_ALLOC);
        }
        hosts[i] = host;
    }
    put_l2(s, l2, tmp);
    if (!fits) {
        if (hosts != hosts_local) {
            free(hosts);
        }
        return false;
    }

    depth = qcow2_map_release(s);
    *ret = 0;
    for (uint64_t i = 0; i < n && *ret == 0;) {
        uint64_t j = i + 1;
        uint64_t gstart = MAX(off, (first + i) << s->cluster_bits);
        uint64_t gend;

        while (j < n && hosts[j] == hosts[j - 1] + cs) {
            j++;
        }
        gend = MIN(end, (first + j) << s->cluster_bits);
        *ret = io_pwrite(s->fd, buf + (gstart - off), gend - gstart,
                         hosts[i] + (gstart - ((first + i) << s->cluster_bits)));
        i = j;
    }
    if (*ret < 0) {
        bdev_set_error(s->bd, "'%s': write error: %s", s->bd->filename, strerror(-*ret));
    }
    qcow2_map_reacquire(s, depth);
    if (hosts != hosts_local) {
        free(hosts);
    }
    return true;
}

/* Write [off, off+len), which lies within one L2 table. */
static int write_chunk(struct qcow2 *s, const uint8_t *buf, uint64_t off, uint64_t len)
{
    uint64_t cs = s->cluster_size;
    uint64_t first = off >> s->cluster_bits;
    uint64_t last = (off + len - 1) >> s->cluster_bits;
    uint64_t n = last - first + 1;
    struct cplan *plan;
    struct qcow2_range *rl;
    uint8_t *l2;
    unsigned idx0;
    uint64_t end = off + len, max_end = 0;
    bool changed = false;
    int ret;

    qcow2_map_lock(s);
    rl = range_lock(s, first, last + 1);
    if (s->corrupt) {
        ret = -EIO;
    } else if (!write_in_place(s, buf, off, len, &ret)) {
        ret = 1;
    }
    if (ret <= 0) {
        range_unlock(s, rl);
        qcow2_map_unlock(s);
        return ret;
    }
    qcow2_map_unlock(s);
    qcow2_meta_lock(s);
    qcow2_map_lock(s);

    plan = xcalloc(n, sizeof(*plan));
    if (s->corrupt) {
        ret = -EIO;
        goto out_locked;
    }
    ret = get_l2_for_write(s, off, &l2, &idx0);
    if (ret < 0) {
        goto out_locked;
    }
    for (uint64_t i = 0; i < n; i++) {
        struct cplan *p = &plan[i];
        uint64_t host;
        enum qcow2_sc_type t;

        p->old_e = qcow2_l2_get(s, l2, idx0 + i, &p->old_bm);
        host = p->old_e & QCOW2_L2E_OFFSET_MASK;
        t = qcow2_sc_type(s, p->old_e, p->old_bm, 0);
        for (unsigned sc = 0; sc < (1u << s->sc_bits) && t != QCOW2_SC_INVALID; sc++) {
            t = qcow2_sc_type(s, p->old_e, p->old_bm, sc);
        }
        if (t == QCOW2_SC_INVALID ||
            (!(p->old_e & QCOW2_OFLAG_COMPRESSED) && host && !IS_ALIGNED(host, cs))) {
            qcow2_cache_put(&s->l2_cache, l2);
            check_entry(s, (first + i) << s->cluster_bits, p->old_e,
                        t == QCOW2_SC_INVALID ? t : QCOW2_SC_NORMAL);
            ret = -EIO;
            goto out_free;
        }
        p->in_place = !(p->old_e & QCOW2_OFLAG_COMPRESSED) && host &&
                      (p->old_e & QCOW2_OFLAG_COPIED);
        if (p->in_place && host >= s->file_size) {
            qcow2_cache_put(&s->l2_cache, l2);
            check_entry(s, (first + i) << s->cluster_bits, p->old_e, QCOW2_SC_NORMAL);
            ret = -EIO;
            goto out_free;
        }
        p->host = p->in_place ? host : 0;
    }
    qcow2_cache_put(&s->l2_cache, l2);

    /* Allocate runs of new clusters contiguously. */
    for (uint64_t i = 0; i < n;) {
        uint64_t j = i;
        int64_t h;
        if (plan[i].in_place) {
            i++;
            continue;
        }
        while (j < n && !plan[j].in_place) {
            j++;
        }
        h = qcow2_alloc_clusters(s, j - i);
        if (h < 0) {
            ret = (int)h;
            goto out_free;
        }
        for (uint64_t k = i; k < j; k++) {
            plan[k].host = h + (k - i) * cs;
        }
        i = j;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t cstart = (first + i) << s->cluster_bits;
        uint64_t ws = MAX(off, cstart) - cstart;
        uint64_t we = MIN(end, cstart + cs) - cstart;
        plan_fills(s, &plan[i], ws, we);
        max_end = MAX(max_end, plan[i].host + cs);
    }
    qcow2_map_unlock(s);
    qcow2_meta_unlock(s);

    /* Data: fills around the edges, then the guest data in host-contiguous runs. */
    for (uint64_t i = 0; i < n && ret == 0; i++) {
        uint8_t *decomp = NULL;
        if (plan[i].nfills) {
            ret = do_fill(s, &plan[i], (first + i) << s->cluster_bits, &decomp);
        }
        free(decomp);
    }
    for (uint64_t i = 0; i < n && ret == 0;) {
        uint64_t j = i + 1;
        uint64_t gstart = MAX(off, (first + i) << s->cluster_bits);
        uint64_t gend;

        while (j < n && plan[j].host == plan[j - 1].host + cs) {
            j++;
        }
        gend = MIN(end, (first + j) << s->cluster_bits);
        ret = io_pwrite(s->fd, buf + (gstart - off), gend - gstart,
                        plan[i].host + (gstart - ((first + i) << s->cluster_bits)));
        i = j;
    }

    qcow2_meta_lock(s);
    qcow2_map_lock(s);
    if (ret < 0) {
        bdev_set_error(s->bd, "'%s': write error: %s", s->bd->filename, strerror(-ret));
        goto out_free;
    }
    qcow2_note_file_end(s, max_end);
    ret = get_l2_for_write(s, off, &l2, &idx0);
    if (ret < 0) {
        goto out_free;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t cstart = (first + i) << s->cluster_bits;
        uint64_t ws = MAX(off, cstart) - cstart;
        uint64_t we = MIN(end, cstart + cs) - cstart;
        uint64_t ne = plan[i].host | QCOW2_OFLAG_COPIED, nbm = new_bitmap(s, &plan[i], ws, we);
        uint64_t cur_bm, cur = qcow2_l2_get(s, l2, idx0 + i, &cur_bm);

        if (cur == ne && cur_bm == nbm) {
            continue;
        }
        qcow2_l2_set(s, l2, idx0 + i, ne, nbm);
        changed = true;
        if (!plan[i].in_place) {
            drop_old(s, plan[i].old_e);
        }
    }
    ret = 0;
    if (changed) {
        bool was_dirty = qcow2_cache_is_dirty(&s->l2_cache, l2);
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
        s->data_unsynced = true;
        ret = keep_changes(s, off, l2, idx0, n, was_dirty);
    }
    qcow2_cache_put(&s->l2_cache, l2);
    goto out_locked;

out_free:
    /* Clusters allocated for this write are referenced by nothing yet. */
    for (uint64_t i = 0; i < n; i++) {
        if (!plan[i].in_place && plan[i].host) {
            qcow2_update_refcount(s, plan[i].host, cs, -1);
        }
    }
out_locked:
    unlock_after_update(s, rl);
    free(plan);
    return ret;
}

int qcow2_pwrite(struct bdev *bd, const void *buf, size_t len, uint64_t off, unsigned flags)
{
    struct qcow2 *s = bd->opaque;
    uint64_t l2_span = s->cluster_size << s->l2_bits;
    const uint8_t *p = buf;
    int ret = 0;

    if (s->corrupt) {
        return -EIO;
    }
    while (len) {
        uint64_t n = MIN((uint64_t)len, l2_span - (off & (l2_span - 1)));
        ret = write_chunk(s, p, off, n);
        if (ret < 0) {
            return ret;
        }
        p += n;
        off += n;
        len -= n;
    }
    if (flags & BDEV_REQ_FUA) {
        ret = bd->drv->flush(bd);
    }
    return ret;
}

/* --- zeroes and discards --- */

enum zop { ZOP_ZERO, ZOP_DISCARD, ZOP_UNMAP };

/*
 * Zero (or discard) the subcluster-aligned range [off, off+len) inside one
 * L2 table by changing L2 entries.  Returns -ENOTSUP for pieces that need
 * data to be written instead (*done tells how far it got).
 */
static int modify_chunk(struct qcow2 *s, uint64_t off, uint64_t len, enum zop op,
                        unsigned flags, uint64_t *done, struct qcow2_range *held)
{
    uint64_t cs = s->cluster_size, scsz = s->sc_size;
    uint64_t first = off >> s->cluster_bits;
    uint64_t last = (off + len - 1) >> s->cluster_bits;
    bool unmap = (flags & BDEV_REQ_MAY_UNMAP) || op != ZOP_ZERO;
    bool has_backing = s->bd->backing_file != NULL;
    struct qcow2_range *rl;
    uint8_t *l2 = NULL;
    unsigned idx0;
    bool dirty = false;
    int ret = 0;

    *done = 0;
    if (held) {
        /* the caller holds the range lock already */
        rl = held;
        qcow2_meta_lock(s);
        qcow2_map_lock(s);
    } else {
        rl = lock_for_update(s, first, last + 1);
    }
    if (s->corrupt) {
        ret = -EIO;
        goto out;
    }
    if (op != ZOP_ZERO) {
        bool tmp;
        ret = get_l2(s, off, &l2, &idx0, &tmp);
        if (ret < 0 || !l2) {
            /* nothing allocated: a discard has nothing to drop */
            if (ret == 0 && op == ZOP_DISCARD && has_backing && s->version >= 3) {
                ret = get_l2_for_write(s, off, &l2, &idx0);
            }
            if (ret < 0 || !l2) {
                *done = ret < 0 ? 0 : len;
                goto out;
            }
        } else {
            put_l2(s, l2, tmp);
            ret = get_l2_for_write(s, off, &l2, &idx0);
        }
    } else {
        ret = get_l2_for_write(s, off, &l2, &idx0);
    }
    if (ret < 0) {
        goto out;
    }
    for (uint64_t c = first; c <= last; c++) {
        uint64_t cstart = c << s->cluster_bits;
        uint64_t ws = MAX(off, cstart) - cstart;
        uint64_t we = MIN(off + len, cstart + cs) - cstart;
        bool whole = ws == 0 && we == cs;
        unsigned i = idx0 + (unsigned)(c - first);
        uint64_t e, bm, host, ne, nbm;
        bool compressed, copied;

        e = qcow2_l2_get(s, l2, i, &bm);
        host = e & QCOW2_L2E_OFFSET_MASK;
        compressed = e & QCOW2_OFLAG_COMPRESSED;
        copied = e & QCOW2_OFLAG_COPIED;

        if (!whole) {
            /* Only with subclusters, and only for zeroing. */
            unsigned a = ws / scsz, b = we / scsz;
            uint64_t mask = 0;
            assert(s->ext_l2 && op == ZOP_ZERO);
            if (compressed || (host && !copied)) {
                ret = -ENOTSUP;
                break;
            }
            for (unsigned sc = a; sc < b; sc++) {
                mask |= 1ULL << sc;
            }
            nbm = (bm & ~mask) | (mask << 32);
            qcow2_l2_set(s, l2, i, e, nbm);
            dirty = true;
            *done += we - ws;
            continue;
        }
        if (op == ZOP_UNMAP) {
            ne = 0;
            nbm = 0;
        } else if (op == ZOP_DISCARD) {
            bool allocated = compressed || host ||
                             (!s->ext_l2 && (e & QCOW2_OFLAG_ZERO));
            if (s->ext_l2) {
                ne = 0;
                nbm = (has_backing || allocated) ? QCOW2_BITMAP_ALL_ZERO : 0;
            } else {
                ne = (has_backing || allocated) && s->version >= 3 ? QCOW2_OFLAG_ZERO : 0;
                nbm = 0;
            }
        } else if (s->version < 3) {
            /* v2 has no zero clusters: only "unallocated" without a backing file. */
            if (has_backing || !unmap) {
                ret = -ENOTSUP;
                break;
            }
            ne = 0;
            nbm = 0;
        } else if (host && copied && !compressed && !unmap) {
            /* keep the allocation (a later write needs no new cluster) */
            ne = s->ext_l2 ? host | QCOW2_OFLAG_COPIED : host | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO;
            nbm = QCOW2_BITMAP_ALL_ZERO;
        } else {
            ne = s->ext_l2 ? 0 : QCOW2_OFLAG_ZERO;
            nbm = QCOW2_BITMAP_ALL_ZERO;
        }
        if (!s->ext_l2) {
            nbm = 0;
        }
        if (ne != e || nbm != bm) {
            qcow2_l2_set(s, l2, i, ne, nbm);
            dirty = true;
            if ((e & QCOW2_L2E_OFFSET_MASK) != (ne & QCOW2_L2E_OFFSET_MASK) || compressed) {
                drop_old(s, e);
            }
        }
        *done += cs;
    }
    if (dirty) {
        bool was_dirty = qcow2_cache_is_dirty(&s->l2_cache, l2);
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
        int r = keep_changes(s, off, l2, idx0, last - first + 1, was_dirty);
        if (r < 0) {
            ret = r;
        }
    }
    qcow2_cache_put(&s->l2_cache, l2);
out:
    if (held) {
        qcow2_map_unlock(s);
        qcow2_meta_unlock(s);
    } else {
        unlock_after_update(s, rl);
    }
    return ret;
}

/* Does the image (this layer with its backing) read zero in [off, off+len)? */
static int reads_zero(struct qcow2 *s, uint64_t off, uint64_t len, bool *zero)
{
    uint8_t *tmp = xmalloc(len);
    int ret = qcow2_pread(s->bd, tmp, len, off);

    *zero = ret == 0 && buffer_is_zero(tmp, len);
    free(tmp);
    return ret;
}

static int zero_data(struct qcow2 *s, uint64_t off, uint64_t len)
{
    size_t bufsz = MIN(len, (uint64_t)1 << 20);
    uint8_t *zero = xzalloc(bufsz);
    uint64_t l2_span = s->cluster_size << s->l2_bits;
    int ret = 0;

    while (len) {
        uint64_t n = MIN(len, (uint64_t)bufsz);
        n = MIN(n, l2_span - (off & (l2_span - 1)));
        ret = write_chunk(s, zero, off, n);
        if (ret < 0) {
            break;
        }
        off += n;
        len -= n;
    }
    free(zero);
    return ret;
}

/* Zero an aligned range through the L2 entries, falling back to data. */
static int zero_aligned(struct qcow2 *s, uint64_t off, uint64_t len, unsigned flags)
{
    uint64_t l2_span = s->cluster_size << s->l2_bits;

    while (len) {
        uint64_t n = MIN(len, l2_span - (off & (l2_span - 1)));
        uint64_t done;
        int ret = modify_chunk(s, off, n, ZOP_ZERO, flags, &done, NULL);

        if (ret == -ENOTSUP) {
            /* Zero the piece that could not be zeroed cheaply as data. */
            uint64_t p = off + done;
            uint64_t pe = MIN(off + n, ALIGN_UP(p + 1, s->cluster_size));
            if (flags & BDEV_REQ_NO_FALLBACK) {
                return -ENOTSUP;
            }
            ret = zero_data(s, p, pe - p);
            if (ret < 0) {
                return ret;
            }
            n = pe - off;
        } else if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

/*
 * Zero a piece smaller than one subcluster at [off, off+len).  When the
 * rest of the subcluster reads zero, the whole subcluster becomes a zero
 * one; the cluster's range lock is held from that check to the change, so
 * that a write to the rest of it meanwhile is not zeroed away.
 */
static int zero_partial(struct qcow2 *s, uint64_t off, uint64_t len, unsigned flags)
{
    uint64_t scs = ALIGN_DOWN(off, s->sc_size);
    uint64_t sce = MIN(scs + s->sc_size, s->bd->size);
    uint64_t c = scs >> s->cluster_bits;
    bool head_zero = true, tail_zero = true;
    struct qcow2_range *rl;
    uint64_t done;
    int ret = 0;

    if (s->version >= 3 && sce == scs + s->sc_size) {
        qcow2_map_lock(s);
        rl = range_lock(s, c, c + 1);
        qcow2_map_unlock(s);
        if (off > scs) {
            ret = reads_zero(s, scs, off - scs, &head_zero);
        }
        if (ret == 0 && head_zero && off + len < sce) {
            ret = reads_zero(s, off + len, sce - off - len, &tail_zero);
        }
        if (ret == 0 && head_zero && tail_zero) {
            ret = modify_chunk(s, scs, s->sc_size, ZOP_ZERO, flags, &done, rl);
            if (ret != -ENOTSUP) {
                qcow2_map_lock(s);
                range_unlock(s, rl);
                qcow2_map_unlock(s);
                return ret;
            }
            ret = 0;
        }
        qcow2_map_lock(s);
        range_unlock(s, rl);
        qcow2_map_unlock(s);
        if (ret < 0) {
            return ret;
        }
    }
    if (flags & BDEV_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    return zero_data(s, off, len);
}

int qcow2_pwrite_zeroes(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags)
{
    struct qcow2 *s = bd->opaque;
    uint64_t scsz = s->sc_size;
    uint64_t end = off + len, aend, a, b;
    int ret = 0;

    if (s->corrupt) {
        return -EIO;
    }
    if (!len) {
        return 0;
    }
    /* The image's last partial subcluster counts as whole. */
    aend = (end == bd->size) ? ALIGN_UP(end, scsz) : end;
    a = ALIGN_UP(off, scsz);
    b = ALIGN_DOWN(aend, scsz);
    if (a >= b) {
        if (ALIGN_DOWN(off, scsz) == ALIGN_DOWN(end - 1, scsz)) {
            ret = zero_partial(s, off, len, flags);
        } else {
            ret = zero_partial(s, off, a - off, flags);
            if (ret == 0) {
                ret = zero_partial(s, a, end - a, flags);
            }
        }
    } else {
        if (off < a) {
            ret = zero_partial(s, off, a - off, flags);
        }
        if (ret == 0) {
            ret = zero_aligned(s, a, b - a, flags);
        }
        if (ret == 0 && b < end) {
            ret = zero_partial(s, b, end - b, flags);
        }
    }
    if (ret == 0 && (flags & BDEV_REQ_FUA)) {
        ret = bd->drv->flush(bd);
    }
    return ret;
}

int qcow2_discard(struct bdev *bd, uint64_t off, uint64_t len)
{
    struct qcow2 *s = bd->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t l2_span = cs << s->l2_bits;
    uint64_t start = ALIGN_UP(off, cs);
    uint64_t end = off + len;

    if (s->corrupt) {
        return -EIO;
    }
    /* The image's last partial cluster may be discarded whole. */
    end = (end == bd->size) ? ALIGN_UP(end, cs) : ALIGN_DOWN(end, cs);
    if (end <= start) {
        return 0;
    }
    while (start < end) {
        uint64_t n = MIN(end - start, l2_span - (start & (l2_span - 1)));
        uint64_t done;
        int ret = modify_chunk(s, start, n, ZOP_DISCARD, 0, &done, NULL);
        if (ret < 0) {
            return ret;
        }
        start += n;
    }
    return 0;
}

int qcow2_make_empty(struct bdev *bd)
{
    struct qcow2 *s = bd->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t l2_span = cs << s->l2_bits;
    uint64_t end = ALIGN_UP(bd->size, cs);
    int ret = 0;

    if (s->corrupt) {
        return -EIO;
    }
    for (uint64_t off = 0; off < end && ret == 0; off += l2_span) {
        uint64_t n = MIN(end - off, l2_span);
        uint64_t done;
        ret = modify_chunk(s, off, n, ZOP_UNMAP, 0, &done, NULL);
    }
    if (ret == 0) {
        ret = bd->drv->flush(bd);
    }
    return ret;
}

int qcow2_pwrite_compressed(struct bdev *bd, const void *buf, size_t len, uint64_t off)
{
    struct qcow2 *s = bd->opaque;
    uint64_t cs = s->cluster_size;
    struct qcow2_range *rl;
    uint8_t *in, *out, *l2;
    unsigned idx;
    uint64_t old_e, old_bm, nsec;
    ssize_t clen;
    int64_t coff;
    int ret;

    if (!IS_ALIGNED(off, cs) || len > cs || (len < cs && off + len != bd->size)) {
        return -EINVAL;
    }
    if (s->corrupt) {
        return -EIO;
    }
    in = (uint8_t *)buf;
    if (len < cs) {
        in = xzalloc(cs);
        memcpy(in, buf, len);
    }
    out = xmalloc(cs);
    clen = qcow2_compress(s->compression_type, out, cs - 1, in, cs);
    if (in != buf) {
        free(in);
    }
    if (clen < 0) {
        /* Does not shrink: store it plainly, as qemu-img does. */
        free(out);
        return clen == -ENOSPC ? qcow2_pwrite(bd, buf, len, off, 0) : (int)clen;
    }
    rl = lock_for_update(s, off >> s->cluster_bits, (off >> s->cluster_bits) + 1);
    ret = get_l2_for_write(s, off, &l2, &idx);
    if (ret < 0) {
        goto out;
    }
    qcow2_cache_put(&s->l2_cache, l2);
    coff = qcow2_alloc_bytes(s, clen);
    if (coff < 0) {
        ret = (int)coff;
        goto out;
    }
    qcow2_map_unlock(s);
    qcow2_meta_unlock(s);
    ret = io_pwrite(s->fd, out, clen, coff);
    qcow2_meta_lock(s);
    qcow2_map_lock(s);
    if (ret < 0) {
        /* Give back the bytes' cluster references. */
        uint64_t first = coff >> s->cluster_bits, last = (coff + clen - 1) >> s->cluster_bits;
        for (uint64_t c = first; c <= last; c++) {
            qcow2_update_refcount(s, c << s->cluster_bits, 1, -1);
        }
        goto out;
    }
    qcow2_note_file_end(s, coff + clen);
    ret = get_l2_for_write(s, off, &l2, &idx);
    if (ret < 0) {
        goto out;
    }
    old_e = qcow2_l2_get(s, l2, idx, &old_bm);
    nsec = ((coff + clen - 1) >> 9) - (coff >> 9);
    s->data_unsynced = true;
    qcow2_l2_set(s, l2, idx, QCOW2_OFLAG_COMPRESSED | (uint64_t)coff | (nsec << s->csize_shift),
                 0);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    qcow2_cache_put(&s->l2_cache, l2);
    drop_old(s, old_e);
out:
    unlock_after_update(s, rl);
    free(out);
    return ret;
}

int qcow2_preallocate_range(struct qcow2 *s, uint64_t start, uint64_t end, bool write_zeroes,
                            bool falloc, struct error **errp)
{
    uint64_t cs = s->cluster_size;
    uint64_t l2_span = cs << s->l2_bits;
    int ret = 0;

    qcow2_meta_lock(s);
    qcow2_map_lock(s);
    for (uint64_t off = ALIGN_DOWN(start, cs); off < end;) {
        uint64_t span_end = MIN(ALIGN_DOWN(off, l2_span) + l2_span, end);
        uint64_t n = DIV_ROUND_UP(span_end - off, cs), k = 0, j = 0;
        uint8_t *l2;
        unsigned idx;
        int64_t h;

        ret = get_l2_for_write(s, off, &l2, &idx);
        if (ret < 0) {
            break;
        }
        /* only clusters that have nothing yet (a grown image keeps its data) */
        for (uint64_t i = 0; i < n; i++) {
            uint64_t bm;
            k += qcow2_l2_get(s, l2, idx + i, &bm) == 0 && bm == 0;
        }
        h = k ? qcow2_alloc_clusters(s, k) : 0;
        if (h < 0) {
            qcow2_cache_put(&s->l2_cache, l2);
            ret = (int)h;
            break;
        }
        for (uint64_t i = 0; i < n && k; i++) {
            uint64_t bm;
            if (qcow2_l2_get(s, l2, idx + i, &bm) != 0 || bm != 0) {
                continue;
            }
            /*
             * With subclusters, as QEMU: the clusters get their place in
             * the file but every subcluster stays unallocated, so that a
             * backing file still shows through (and reads are zero without
             * one) until the guest writes.
             */
            qcow2_l2_set(s, l2, idx + i, (h + j++ * cs) | QCOW2_OFLAG_COPIED, 0);
        }
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
        qcow2_cache_put(&s->l2_cache, l2);
        off = span_end;
        if (!k) {
            continue;
        }
        /* Extend the file so the data clusters lie inside it (sparse). */
        if (!write_zeroes && !falloc && (uint64_t)h + k * cs > s->file_size) {
            ret = io_ftruncate(s->fd, h + k * cs);
            if (ret < 0) {
                break;
            }
            qcow2_note_file_end(s, h + k * cs);
        }
        if (falloc) {
            ret = io_fallocate(s->fd, 0, h, k * cs);
            if (ret < 0) {
                break;
            }
            qcow2_note_file_end(s, h + k * cs);
        }
        if (write_zeroes) {
            uint8_t *z = xzalloc(MIN(k * cs, (uint64_t)1 << 20));
            for (uint64_t p = 0; p < k * cs && ret == 0; p += 1u << 20) {
                ret = io_pwrite(s->fd, z, MIN(k * cs - p, (uint64_t)1 << 20), h + p);
            }
            free(z);
            if (ret < 0) {
                break;
            }
            qcow2_note_file_end(s, h + k * cs);
        }
    }
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    qcow2_map_unlock(s);
    qcow2_meta_unlock(s);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot preallocate", s->bd->filename);
    }
    return ret;
}

int qcow2_preallocate(struct qcow2 *s, uint64_t size, bool write_zeroes, bool falloc,
                      struct error **errp)
{
    return qcow2_preallocate_range(s, 0, size, write_zeroes, falloc, errp);
}

/* Write the header with the new size (locks held); on failure the old one stays. */
static int record_size(struct qcow2 *s, uint64_t size)
{
    uint64_t old_size = s->size;
    int ret;

    s->size = size;
    ret = qcow2_write_header(s, NULL);
    if (ret == 0) {
        ret = qcow2_order_sync(s);
    }
    if (ret < 0) {
        s->size = old_size;
    }
    return ret;
}

/*
 * After a shrink, as QEMU does: the file ends after its last cluster in
 * use (refcounts written and synced first, so that a crash leaves no
 * refcount past the end).  Best effort: a file left longer is still a
 * good image.  Locks held.
 */
static void trim_file_end(struct qcow2 *s)
{
    uint64_t cs = s->cluster_size, c = DIV_ROUND_UP(s->file_size, cs), rc = 0;

    if (qcow2_flush_metadata(s) < 0 || qcow2_order_sync(s) < 0) {
        return;
    }
    while (c > 0) {
        if (qcow2_get_refcount(s, c - 1, &rc) < 0) {
            return;
        }
        if (rc) {
            break;
        }
        c--;
    }
    if (c > 0 && c * cs < s->file_size && io_ftruncate(s->fd, c * cs) == 0) {
        s->file_size = c * cs;
    }
}

/*
 * Shrink to @size, as QEMU does: the clusters past the new end are
 * dropped, the L2 tables wholly past it freed (the L1 table keeps its
 * size), then the header records the size, and the file is cut after
 * its last cluster in use.  The tail of the last cluster
 * is zeroed first, so that growing the image again shows none of it.  A
 * crash part-way leaves the old size with the area past the new end
 * partly dropped (reading zero or the backing file's data): running the
 * shrink again finishes it.
 */
static int shrink(struct bdev *bd, uint64_t size, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    uint64_t cs = s->cluster_size, l2_span = cs << s->l2_bits;
    uint64_t start = ALIGN_UP(size, cs), end = ALIGN_UP(s->size, cs);
    uint64_t new_l1 = DIV_ROUND_UP(size, l2_span);
    int ret = 0;

    if (start > size && size < s->size) {
        ret = qcow2_pwrite_zeroes(bd, size, MIN(start, s->size) - size, 0);
    }
    for (uint64_t off = start; off < end && ret == 0;) {
        uint64_t n = MIN(end - off, l2_span - (off & (l2_span - 1)));
        uint64_t done;
        ret = modify_chunk(s, off, n, ZOP_UNMAP, 0, &done, NULL);
        off += n;
    }
    qcow2_meta_lock(s);
    qcow2_map_lock(s);
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    for (uint64_t i = new_l1; i < s->l1_size && ret == 0; i++) {
        uint64_t l2off = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2off) {
            continue;
        }
        ret = qcow2_set_l1_entry(s, (uint32_t)i, 0);
        if (ret == 0) {
            qcow2_cache_discard(&s->l2_cache, l2off);
            /* freed once the L1 write is synced */
            s->tables_unsynced = true;
            qcow2_queue_decref(s, l2off, 1);
        }
    }
    if (ret == 0) {
        ret = qcow2_order_sync(s);
    }
    if (ret == 0) {
        ret = record_size(s, size);
    }
    if (ret == 0) {
        trim_file_end(s);
    }
    qcow2_map_unlock(s);
    qcow2_meta_unlock(s);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot shrink", bd->filename);
        return ret;
    }
    bd->size = ALIGN_DOWN(size, 512);
    return 0;
}

int qcow2_preallocate_grown(struct bdev *bd, uint64_t start, uint64_t end,
                            enum bdev_prealloc mode, struct error **errp)
{
    if (end <= start) {
        return 0;
    }
    return qcow2_preallocate_range(bd->opaque, start, end, mode == BDEV_PREALLOC_FULL,
                                   mode == BDEV_PREALLOC_FALLOC, errp);
}

int qcow2_truncate(struct bdev *bd, uint64_t size, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t l2_coverage = cs << s->l2_bits;
    uint64_t new_l1 = DIV_ROUND_UP(size, l2_coverage);
    uint64_t old_size = s->size;
    int ret = 0;

    if (size & 511) {
        error_setg(errp, "The new size must be a multiple of 512");
        return -EINVAL;
    }
    if (s->version == 2 && s->nb_snapshots) {
        /* v2 snapshots do not record their size: as QEMU, refuse */
        error_setg(errp, "'%s': cannot resize a compat=0.10 image that has internal snapshots",
                   bd->filename);
        return -ENOTSUP;
    }
    if (new_l1 * 8 > QCOW2_MAX_L1_BYTES || size > (uint64_t)INT64_MAX - 511) {
        error_setg(errp, "'%s': %" PRIu64 " bytes is too large for this cluster size",
                   bd->filename, size);
        return -EFBIG;
    }
    if (size < s->size) {
        return shrink(bd, size, errp);
    }
    qcow2_meta_lock(s);
    qcow2_map_lock(s);
    if (new_l1 > s->l1_size) {
        uint64_t bytes = ALIGN_UP(new_l1 * 8, cs);
        uint64_t old_off = s->l1_offset, old_bytes = ALIGN_UP((uint64_t)s->l1_size * 8, cs);
        uint32_t old_l1_size = s->l1_size;
        uint64_t *old_l1 = s->l1;
        uint64_t *nl1 = xzalloc(bytes);
        uint8_t *be = xzalloc(bytes);
        int64_t off;

        memcpy(nl1, s->l1, (size_t)s->l1_size * 8);
        for (uint64_t i = 0; i < new_l1; i++) {
            put_be64(be + i * 8, nl1[i]);
        }
        off = qcow2_alloc_clusters(s, bytes / cs);
        ret = off < 0 ? (int)off : io_pwrite(s->fd, be, bytes, off);
        free(be);
        if (ret == 0) {
            qcow2_note_file_end(s, off + bytes);
            ret = qcow2_flush_metadata(s);
        }
        if (ret == 0) {
            ret = qcow2_order_sync(s);
        }
        if (ret == 0) {
            /* readers see the new table and its size together (the sync releases s->map) */
            s->l1 = nl1;
            s->l1_offset = off;
            s->l1_size = new_l1;
            s->size = size;
            ret = qcow2_write_header(s, NULL);
            if (ret == 0) {
                ret = qcow2_order_sync(s);
            }
            if (ret < 0) {
                s->l1 = old_l1;
                s->l1_offset = old_off;
                s->l1_size = old_l1_size;
                s->size = old_size;
            }
        }
        if (ret < 0) {
            free(nl1);
            if (off >= 0) {
                qcow2_update_refcount(s, off, bytes, -1);
            }
        } else {
            free(old_l1);
            if (old_l1_size) {
                qcow2_update_refcount(s, old_off, old_bytes, -1);
            }
        }
    } else {
        ret = record_size(s, size);
    }
    qcow2_map_unlock(s);
    qcow2_meta_unlock(s);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot resize", bd->filename);
        return ret;
    }
    bd->size = ALIGN_DOWN(size, 512);
    return 0;
}
