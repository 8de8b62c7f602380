/*
 * blockctl - qcow2: refcounts and the cluster allocator
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Everything that changes refcounts or allocates runs under s->lock (the
 * metadata lock) and takes s->map itself for what readers can see (the
 * refcount table, the refcount block cache, file_size); syncs release
 * s->map (qcow2_order_sync), so no pointer into the cache is kept across
 * one unpinned.
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

uint64_t qcow2_refblock_get(struct qcow2 *s, const uint8_t *rb, uint64_t index)
{
    switch (s->refcount_order) {
    case 0: return (rb[index / 8] >> (index % 8)) & 1;
    case 1: return (rb[index / 4] >> (2 * (index % 4))) & 3;
    case 2: return (rb[index / 2] >> (4 * (index % 2))) & 15;
    case 3: return rb[index];
    case 4: return get_be16(rb + 2 * index);
    case 5: return get_be32(rb + 4 * index);
    default: return get_be64(rb + 8 * index);
    }
}

void qcow2_refblock_set(struct qcow2 *s, uint8_t *rb, uint64_t index, uint64_t value)
{
    unsigned shift;

    switch (s->refcount_order) {
    case 0:
    case 1:
    case 2: {
        unsigned bits = 1u << s->refcount_order;
        unsigned per = 8 / bits;
        unsigned mask = (1u << bits) - 1;
        shift = bits * (index % per);
        rb[index / per] = (rb[index / per] & ~(mask << shift)) | ((value & mask) << shift);
        break;
    }
    case 3: rb[index] = value; break;
    case 4: put_be16(rb + 2 * index, value); break;
    case 5: put_be32(rb + 4 * index, value); break;
    default: put_be64(rb + 8 * index, value); break;
    }
}

void qcow2_note_file_end(struct qcow2 *s, uint64_t end)
{
    qcow2_map_lock(s);
    if (end > s->file_size) {
        s->file_size = end;
    }
    qcow2_map_unlock(s);
}

int qcow2_refcount_init(struct qcow2 *s, struct error **errp)
{
    uint64_t bytes = (uint64_t)s->reftable_clusters * s->cluster_size;
    ssize_t n;

    /* (qcow2_open initialises s->lock; the mapping lock is set up here) */
    pthread_mutex_init(&s->map, NULL);

    s->reftable_size = bytes / 8;
    s->reftable = xmalloc(bytes);
    n = io_pread(s->fd, s->reftable, bytes, s->reftable_offset);
    if (n < 0) {
        error_setg_errno(errp, -n, "'%s': cannot read the refcount table", s->bd->filename);
        free(s->reftable);
        s->reftable = NULL;
        return (int)n;
    }
    if ((uint64_t)n < bytes) {
        memset((uint8_t *)s->reftable + n, 0, bytes - n);
    }
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        s->reftable[i] = be64toh(s->reftable[i]);
    }
    return 0;
}

/* Validated offset of refcount block @rt_index, 0 if none, or -EIO. */
static int64_t refblock_offset(struct qcow2 *s, uint64_t rt_index)
{
    uint64_t off;

    if (rt_index >= s->reftable_size) {
        return 0;
    }
    off = s->reftable[rt_index] & QCOW2_REFT_OFFSET_MASK;
    if (!off) {
        return 0;
    }
    if (!IS_ALIGNED(off, s->cluster_size)) {
        qcow2_signal_corruption(s, "refcount block offset 0x%" PRIx64 " (refcount table entry "
                                "%" PRIu64 ") is not cluster aligned", off, rt_index);
        return -EIO;
    }
    if (off >= s->file_size && !s->check_mode) {
        qcow2_signal_corruption(s, "refcount block offset 0x%" PRIx64 " (refcount table entry "
                                "%" PRIu64 ") is past the end of the file", off, rt_index);
        return -EIO;
    }
    return (int64_t)off;
}

static int get_refcount(struct qcow2 *s, uint64_t cluster, uint64_t *refcount, bool ro)
{
    uint64_t rt_index = cluster >> s->refblock_bits;
    int64_t rb_off;
    uint8_t *rb;
    bool tmp = false;
    int ret;

    qcow2_map_lock(s);
    rb_off = refblock_offset(s, rt_index);
    if (rb_off <= 0) {
        *refcount = 0;
        ret = (int)rb_off;
        goto out;
    }
    if (ro) {
        ret = qcow2_cache_get_ro(s, &s->rb_cache, rb_off, &rb, &tmp);
    } else {
        ret = qcow2_cache_get(s, &s->rb_cache, rb_off, false, &rb);
    }
    if (ret < 0) {
        goto out;
    }
    *refcount = qcow2_refblock_get(s, rb, cluster & ((1ULL << s->refblock_bits) - 1));
    qcow2_cache_put_ro(s, &s->rb_cache, rb, tmp);
out:
    qcow2_map_unlock(s);
    return ret;
}

int qcow2_get_refcount(struct qcow2 *s, uint64_t cluster, uint64_t *refcount)
{
    return get_refcount(s, cluster, refcount, false);
}

int qcow2_get_refcount_ro(struct qcow2 *s, uint64_t cluster, uint64_t *refcount)
{
    return get_refcount(s, cluster, refcount, true);
}

static int write_reftable_entry(struct qcow2 *s, uint64_t index)
{
    uint8_t be[8];

    put_be64(be, s->reftable[index]);
    return io_pwrite(s->fd, be, 8, s->reftable_offset + index * 8);
}

static int sync_unless_lazy(struct qcow2 *s)
{
    return qcow2_lazy(s) ? 0 : qcow2_order_sync(s);
}

/*
 * Grow the refcount table so that it has an entry for range @rt_index.
 * The new refcount blocks and the new table go to a fresh area at the
 * start of range @rt_index (which is entirely free: it has no refcount
 * block), each block describing the area's clusters in its range.
 */
static int grow_reftable(struct qcow2 *s, uint64_t rt_index)
{
    uint64_t E = 1ULL << s->refblock_bits;
    uint64_t cs = s->cluster_size;
    uint64_t A = MAX(rt_index, s->reftable_size) * E;   /* first cluster of the area */
    uint64_t nb = 1, nt = 1, entries;
    uint64_t old_off = s->reftable_offset, old_clusters = s->reftable_clusters;
    uint64_t *newt;
    uint8_t *buf;
    int ret;

    for (;;) {
        uint64_t area = nb + nt;
        uint64_t need_nb = DIV_ROUND_UP(area, E);
        uint64_t last_range = (A + area - 1) / E;
        entries = MAX(s->reftable_size * 2, last_range + 1);
        entries = MAX(entries, rt_index + 1);
        uint64_t need_nt = DIV_ROUND_UP(entries * 8, cs);
        if (need_nb <= nb && need_nt <= nt) {
            break;
        }
        nb = MAX(nb, need_nb);
        nt = MAX(nt, need_nt);
    }
    entries = nt * cs / 8;
    if (nt * cs > QCOW2_MAX_REFTABLE_BYTES) {
        return -EFBIG;
    }

    buf = xzalloc(cs);
    /* refcount blocks at A .. A+nb-1 */
    for (uint64_t b = 0; b < nb; b++) {
        uint64_t range = A / E + b;
        memset(buf, 0, cs);
        for (uint64_t c = A; c < A + nb + nt; c++) {
            if (c / E == range) {
                qcow2_refblock_set(s, buf, c % E, 1);
            }
        }
        ret = io_pwrite(s->fd, buf, cs, (A + b) * cs);
        if (ret < 0) {
            free(buf);
            return ret;
        }
    }
    free(buf);
    /* the new table at A+nb */
    newt = xzalloc(entries * 8);
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        newt[i] = htobe64(s->reftable[i]);
    }
    for (uint64_t b = 0; b < nb; b++) {
        newt[A / E + b] = htobe64((A + b) * cs);
    }
    ret = io_pwrite(s->fd, newt, entries * 8, (A + nb) * cs);
    if (ret == 0) {
        ret = qcow2_order_sync(s);
    }
    if (ret < 0) {
        free(newt);
        return ret;
    }
    qcow2_note_file_end(s, (A + nb + nt) * cs);

    /* Switch the header to the new table in one write. */
    s->reftable_offset = (A + nb) * cs;
    s->reftable_clusters = nt;
    ret = qcow2_write_header(s, NULL);
    if (ret == 0) {
        ret = qcow2_order_sync(s);
    }
    if (ret < 0) {
        s->reftable_offset = old_off;
        s->reftable_clusters = old_clusters;
        free(newt);
        return ret;
    }
    for (uint64_t i = 0; i < entries; i++) {
        newt[i] = be64toh(newt[i]);
    }
    free(s->reftable);
    s->reftable = newt;
    s->reftable_size = entries;
    /* The old table is no longer referenced on disk: free it. */
    return qcow2_update_refcount(s, old_off, old_clusters * cs, -1);
}

/*
 * Create the refcount block for range @rt_index (which has none, so all
 * its clusters are free) at cluster @pos: either inside the range (then it
 * describes itself) or in a range that has a block, where the caller has
 * already counted it.  A range past the refcount table grows the table
 * instead; the caller searches again afterwards.
 */
static int create_refblock(struct qcow2 *s, uint64_t rt_index, uint64_t pos)
{
    uint64_t off = pos << s->cluster_bits;
    uint8_t *rb;
    int ret;

    if (rt_index >= s->reftable_size) {
        return grow_reftable(s, rt_index);
    }
    if (rt_index == 0) {
        qcow2_signal_corruption(s, "the first refcount block (refcount table entry 0) is "
                                "missing");
        return -EIO;
    }
    ret = qcow2_cache_get(s, &s->rb_cache, off, true, &rb);
    if (ret < 0) {
        return ret;
    }
    if ((pos >> s->refblock_bits) == rt_index) {
        qcow2_refblock_set(s, rb, pos & ((1ULL << s->refblock_bits) - 1), 1);
    }
    qcow2_cache_mark_dirty(&s->rb_cache, rb);
    ret = qcow2_cache_write_entry(s, &s->rb_cache, rb);
    qcow2_cache_put(&s->rb_cache, rb);
    if (ret == 0) {
        ret = sync_unless_lazy(s);
    }
    if (ret < 0) {
        qcow2_cache_discard(&s->rb_cache, off);
        return ret;
    }
    s->reftable[rt_index] = off;
    ret = write_reftable_entry(s, rt_index);
    if (ret < 0) {
        /* a failed write may have changed part of the entry: put it back */
        s->reftable[rt_index] = 0;
        write_reftable_entry(s, rt_index);
        qcow2_cache_discard(&s->rb_cache, off);
    }
    return ret;
}

static int update_refcount(struct qcow2 *s, uint64_t offset, uint64_t length, int64_t addend)
{
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + length - 1) >> s->cluster_bits;
    uint64_t mask = (1ULL << s->refblock_bits) - 1;
    int ret;

    if (length == 0) {
        return 0;
    }
    if (qcow2_lazy(s) && !s->check_mode) {
        ret = qcow2_mark_dirty(s);
        if (ret < 0) {
            return ret;
        }
    }
    for (uint64_t c = first; c <= last;) {
        uint64_t rt_index = c >> s->refblock_bits;
        int64_t rb_off = refblock_offset(s, rt_index);
        uint8_t *rb;

        if (rb_off < 0) {
            return (int)rb_off;
        }
        if (rb_off == 0) {
            if (addend < 0) {
                qcow2_signal_corruption(s, "freeing cluster 0x%" PRIx64 " which has no "
                                        "refcount block", c << s->cluster_bits);
                return -EIO;
            }
            /* Only for ranges the allocator did not prepare (rare). */
            ret = create_refblock(s, rt_index, rt_index << s->refblock_bits);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        ret = qcow2_cache_get(s, &s->rb_cache, rb_off, false, &rb);
        if (ret < 0) {
            return ret;
        }
        for (; c <= last && (c >> s->refblock_bits) == rt_index; c++) {
            uint64_t old = qcow2_refblock_get(s, rb, c & mask);
            uint64_t val;
            if (addend < 0 && old < (uint64_t)-addend) {
                qcow2_cache_put(&s->rb_cache, rb);
                qcow2_signal_corruption(s, "refcount of cluster 0x%" PRIx64 " would drop "
                                        "below zero", c << s->cluster_bits);
                return -EIO;
            }
            if (addend > 0 && s->refcount_max - old < (uint64_t)addend) {
                qcow2_cache_put(&s->rb_cache, rb);
                return -ERANGE;
            }
            val = old + addend;
            qcow2_refblock_set(s, rb, c & mask, val);
            qcow2_wal_log_ref(s, (uint64_t)rb_off, rt_index, c & mask, val);
            if (val == 0) {
                if (c < s->free_cluster_index) {
                    s->free_cluster_index = c;
                }
                if (s->free_byte_offset &&
                    (s->free_byte_offset >> s->cluster_bits) == c) {
                    /* the cluster compressed data was being packed into is gone */
                    s->free_byte_offset = 0;
                }
                qcow2_cache_discard(&s->l2_cache, c << s->cluster_bits);
                if ((c << s->cluster_bits) != (uint64_t)rb_off) {
                    qcow2_cache_discard(&s->rb_cache, c << s->cluster_bits);
                }
            }
        }
        qcow2_cache_mark_dirty(&s->rb_cache, rb);
        qcow2_cache_put(&s->rb_cache, rb);
    }
    return 0;
}

/*
 * Find @n free clusters in a row at or after cluster @from; clusters of
 * ranges without a refcount block count as free.
 */
static int find_free_run(struct qcow2 *s, uint64_t from, uint64_t n, uint64_t *start)
{
    uint64_t max_cluster = 1ULL << (56 - s->cluster_bits);
    uint64_t idx = from, run = 0;
    int ret;

    while (run < n) {
        uint64_t rt = idx >> s->refblock_bits;
        int64_t rb_off;
        uint64_t rc;

        if (idx >= max_cluster) {
            return -EFBIG;
        }
        rb_off = refblock_offset(s, rt);
        if (rb_off < 0) {
            return (int)rb_off;
        }
        if (rb_off == 0) {
            uint64_t range_end = (rt + 1) << s->refblock_bits;
            if (run == 0) {
                *start = idx;
            }
            run += range_end - idx;
            idx = range_end;
            continue;
        }
        ret = qcow2_get_refcount(s, idx, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc == 0) {
            if (run == 0) {
                *start = idx;
            }
            run++;
        } else {
            run = 0;
            if (idx == s->free_cluster_index) {
                s->free_cluster_index = idx + 1;
            }
        }
        idx++;
    }
    return 0;
}

int qcow2_update_refcount(struct qcow2 *s, uint64_t offset, uint64_t length, int64_t addend)
{
    int ret;

    qcow2_map_lock(s);
    ret = update_refcount(s, offset, length, addend);
    qcow2_map_unlock(s);
    return ret;
}

static int64_t alloc_clusters(struct qcow2 *s, uint64_t n)
{
    uint64_t E = 1ULL << s->refblock_bits;
    int ret;

    if (s->corrupt) {
        return -EIO;
    }
    for (;;) {
        uint64_t start, pos, rs, uncovered = UINT64_MAX;
        int64_t rb_off;

        ret = find_free_run(s, s->free_cluster_index, n, &start);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t rt = start >> s->refblock_bits; rt <= (start + n - 1) >> s->refblock_bits;
             rt++) {
            rb_off = refblock_offset(s, rt);
            if (rb_off < 0) {
                return rb_off;
            }
            if (rb_off == 0) {
                uncovered = rt;
                break;
            }
        }
        if (uncovered == UINT64_MAX) {
            ret = qcow2_update_refcount(s, start << s->cluster_bits, n << s->cluster_bits, 1);
            if (ret < 0) {
                return ret;
            }
            if (start == s->free_cluster_index) {
                s->free_cluster_index = start + n;
            }
            return (int64_t)(start << s->cluster_bits);
        }
        /* Give range @uncovered a refcount block outside the run, then search again. */
        rs = uncovered * E;
        if (rs < start) {
            pos = rs;
        } else if (rs + E > start + n) {
            pos = start + n;
        } else {
            ret = find_free_run(s, start + n, 1, &pos);
            if (ret < 0) {
                return ret;
            }
            rb_off = refblock_offset(s, pos >> s->refblock_bits);
            if (rb_off < 0) {
                return rb_off;
            }
            if (rb_off == 0) {
                /* that range first, describing itself */
                ret = create_refblock(s, pos >> s->refblock_bits, pos);
                if (ret < 0) {
                    return ret;
                }
                continue;
            }
            ret = qcow2_update_refcount(s, pos << s->cluster_bits, s->cluster_size, 1);
            if (ret < 0) {
                return ret;
            }
        }
        ret = create_refblock(s, uncovered, pos);
        if (ret < 0) {
            return ret;
        }
    }
}

int64_t qcow2_alloc_clusters(struct qcow2 *s, uint64_t n)
{
    int64_t ret;

    qcow2_map_lock(s);
    ret = alloc_clusters(s, n);
    qcow2_map_unlock(s);
    return ret;
}

static int64_t alloc_bytes(struct qcow2 *s, uint64_t bytes)
{
    uint64_t cs = s->cluster_size;
    uint64_t off = s->free_byte_offset;
    int64_t new_off;
    int ret;

    assert(bytes > 0 && bytes <= cs);
    if (off && qcow2_offset_into_cluster(s, off) &&
        cs - qcow2_offset_into_cluster(s, off) >= bytes) {
        /* Fits in the partly used cluster: one more user of it. */
        uint64_t rc;
        ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc > 0 && rc < s->refcount_max) {
            ret = qcow2_update_refcount(s, off, 1, 1);
            if (ret < 0) {
                return ret;
            }
            s->free_byte_offset = off + bytes;
            if (!qcow2_offset_into_cluster(s, s->free_byte_offset)) {
                s->free_byte_offset = 0;
            }
            return (int64_t)off;
        }
    }
    new_off = qcow2_alloc_clusters(s, 1);
    if (new_off < 0) {
        return new_off;
    }
    if (off && qcow2_offset_into_cluster(s, off) &&
        (uint64_t)new_off == ALIGN_UP(off, cs)) {
        /* The new cluster follows the partly used one: span both. */
        uint64_t rc;
        ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
        if (ret == 0 && rc > 0 && rc < s->refcount_max &&
            qcow2_update_refcount(s, off, 1, 1) == 0) {
            s->free_byte_offset = off + bytes;
            if (!qcow2_offset_into_cluster(s, s->free_byte_offset)) {
                s->free_byte_offset = 0;
            }
            return (int64_t)off;
        }
    }
    s->free_byte_offset = new_off + bytes;
    if (!qcow2_offset_into_cluster(s, s->free_byte_offset)) {
        s->free_byte_offset = 0;
    }
    return new_off;
}

int64_t qcow2_alloc_bytes(struct qcow2 *s, uint64_t bytes)
{
    int64_t ret;

    qcow2_map_lock(s);
    ret = alloc_bytes(s, bytes);
    qcow2_map_unlock(s);
    return ret;
}

void qcow2_queue_decref(struct qcow2 *s, uint64_t offset, uint64_t count)
{
    if (s->nr_decref &&
        s->decref[s->nr_decref - 1].offset + (s->decref[s->nr_decref - 1].count << s->cluster_bits)
            == offset) {
        s->decref[s->nr_decref - 1].count += count;
        return;
    }
    if (s->nr_decref == s->cap_decref) {
        s->cap_decref = s->cap_decref ? s->cap_decref * 2 : 64;
        s->decref = xrealloc(s->decref, s->cap_decref * sizeof(*s->decref));
    }
    s->decref[s->nr_decref].offset = offset;
    s->decref[s->nr_decref].count = count;
    s->nr_decref++;
}

/*
 * The first read in flight that overlaps host clusters [pos, end), as
 * whole clusters clipped to the range; false if none.
 */
static bool inflight_overlap(struct qcow2 *s, uint64_t pos, uint64_t end, uint64_t *os,
                             uint64_t *oe)
{
    bool found = false;

    for (struct qcow2_inflight *r = s->inflight; r; r = r->next) {
        uint64_t a = ALIGN_DOWN(r->start, s->cluster_size);
        uint64_t b = ALIGN_UP(r->end, s->cluster_size);
        if (a >= end || b <= pos) {
            continue;
        }
        a = MAX(a, pos);
        b = MIN(b, end);
        if (!found || a < *os) {
            *os = a;
            *oe = b;
            found = true;
        }
    }
    return found;
}

/*
 * A decrement under a read in flight stays queued: the cluster must not
 * be freed (and reused for other data) before the read is done with it.
 */
int qcow2_apply_decrefs(struct qcow2 *s)
{
    struct qcow2_decref *list = s->decref;
    size_t n = s->nr_decref;
    int ret = 0;

    qcow2_map_lock(s);
    s->decref = NULL;
    s->nr_decref = 0;
    s->cap_decref = 0;
    for (size_t i = n; i-- > 0;) {
        uint64_t pos = list[i].offset;
        uint64_t end = pos + (list[i].count << s->cluster_bits);

        while (pos < end) {
            uint64_t os = 0, oe = 0;
            if (ret < 0) {
                /* keep what is left for a later flush */
                qcow2_queue_decref(s, pos, (end - pos) >> s->cluster_bits);
                break;
            }
            if (!inflight_overlap(s, pos, end, &os, &oe)) {
                os = oe = end;
            }
            if (os > pos) {
                ret = update_refcount(s, pos, os - pos, -1);
                if (ret < 0) {
                    continue;
                }
            }
            if (oe > os) {
                qcow2_queue_decref(s, os, (oe - os) >> s->cluster_bits);
            }
            pos = oe;
        }
    }
    free(list);
    qcow2_map_unlock(s);
    return ret;
}
