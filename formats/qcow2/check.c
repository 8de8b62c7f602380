/*
 * blockctl - qcow2: consistency check and repair
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Count the references to every cluster from the metadata (header, L1 and
 * L2 tables of the image and of its internal snapshots, refcount
 * structures, snapshot table, bitmap directory, tables and data), compare
 * them with the stored refcounts, then check the OFLAG_COPIED bits.  The
 * diagnostics are qemu-img's, on stderr.  Repair fixes refcounts in place,
 * or writes a new refcount structure at the end of the file when the old
 * one cannot be trusted (a referenced cluster with refcount 0, a broken
 * refcount block).
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

struct chk {
    struct qcow2 *s;
    struct check_result *res;
    unsigned fix;
    uint64_t nb;             /* clusters tracked in refs[] */
    uint64_t file_size;
    uint32_t *refs;
    bool rebuild;
    uint64_t next_contig;    /* fragmentation accounting */
    uint32_t *bad_bitmaps;   /* bitmaps with broken tables (indexes) */
    size_t nr_bad_bitmaps;
    int64_t rc_corruptions;  /* corruptions a rebuilt refcount structure fixes */
    uint8_t *l2_cur;         /* the L2 table being checked (active image only) */
    uint64_t l2_off;
    bool l2_dirty;           /* repaired entries to write back */
};

static void add_ref(struct chk *c, uint64_t off, uint64_t len)
{
    uint64_t cs = c->s->cluster_size;
    uint64_t first, last;

    if (!len) {
        return;
    }
    if (off + len < off || off + len >= c->file_size + cs) {
        fprintf(stderr, "ERROR: counting reference for region exceeding the end of the file by "
                "one cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64 "\n", off, len);
        c->res->corruptions++;
        return;
    }
    first = off >> c->s->cluster_bits;
    last = (off + len - 1) >> c->s->cluster_bits;
    for (uint64_t i = first; i <= last && i < c->nb; i++) {
        if (c->refs[i] < UINT32_MAX) {
            c->refs[i]++;
        }
    }
}

/* Read a table into @buf (zero-filled past EOF); false on I/O error. */
static bool read_buf(struct chk *c, void *buf, size_t len, uint64_t off)
{
    ssize_t n = io_pread(c->s->fd, buf, len, off);

    if (n < 0) {
        c->res->check_errors++;
        return false;
    }
    if ((size_t)n < len) {
        memset((uint8_t *)buf + n, 0, len - n);
    }
    return true;
}

static void check_l2(struct chk *c, uint8_t *l2, bool active)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;

    for (unsigned j = 0; j < s->l2_entries; j++) {
        uint64_t bm, e = qcow2_l2_get(s, l2, j, &bm);
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t coff, cbytes;
            if (e & QCOW2_OFLAG_COPIED) {
                fprintf(stderr, "ERROR: coffset=0x%" PRIx64 ": Compressed cluster has "
                        "OFLAG_COPIED set\n", e & s->coffset_mask);
                c->res->corruptions++;
            }
            if (s->ext_l2 && bm) {
                fprintf(stderr, "ERROR compressed cluster %u with non-zero subcluster "
                        "allocation bitmap, entry=0x%" PRIx64 "\n", j, bm);
                c->res->corruptions++;
            }
            qcow2_compressed_range(s, e, &coff, &cbytes);
            add_ref(c, coff, cbytes);
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            continue;
        }
        if (e & (QCOW2_L2E_STD_RESERVED | (s->ext_l2 ? QCOW2_OFLAG_ZERO : 0))) {
            fprintf(stderr, "ERROR found l2 entry with reserved bits set: %" PRIx64 "\n", e);
            c->res->corruptions++;
        }
        if (s->ext_l2) {
            bool bad = false;
            for (unsigned sc = 0; sc < QCOW2_EXTL2_SUBCLUSTERS; sc++) {
                if (qcow2_sc_type(s, e, bm, sc) == QCOW2_SC_INVALID) {
                    bad = true;
                }
            }
            if (bad) {
                fprintf(stderr, "ERROR invalid subcluster bitmap 0x%016" PRIx64 " for l2 entry "
                        "%" PRIx64 "\n", bm, e);
                c->res->corruptions++;
            }
        }
        if (!host) {
            continue;
        }
        if (!IS_ALIGNED(host, cs)) {
            bool data = s->ext_l2 ? (bm & QCOW2_BITMAP_ALL_ALLOC) != 0
                                  : !(e & QCOW2_OFLAG_ZERO);
            c->res->corruptions++;
            if (!data) {
                fprintf(stderr, "%s offset=%" PRIx64 ": Preallocated cluster is not properly "
                        "aligned; L2 entry corrupted.\n",
                        (c->fix & CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", host);
                if ((c->fix & CHECK_FIX_ERRORS) && c->l2_cur && c->l2_off) {
                    /* a zero cluster needs no host cluster: drop the bad one */
                    qcow2_l2_set(s, c->l2_cur, j, s->ext_l2 ? 0 : QCOW2_OFLAG_ZERO,
                                 s->ext_l2 ? QCOW2_BITMAP_ALL_ZERO : 0);
                    c->l2_dirty = true;
                    c->res->corruptions--;
                    c->res->corruptions_fixed++;
                    /* the entry no longer uses a cluster */
                    continue;
                }
            } else {
                fprintf(stderr, "ERROR offset=%" PRIx64 ": Data cluster is not properly aligned; "
                        "L2 entry corrupted.\n", host);
            }
        }
        /* as qemu-img: the reference counts even where the entry is bad */
        add_ref(c, host, cs);
        if (active) {
            c->res->allocated_clusters++;
            if (c->next_contig && host != c->next_contig) {
                c->res->fragmented_clusters++;
            }
            c->next_contig = host + cs;
        }
    }
}

static void check_l1(struct chk *c, uint64_t l1_off, uint32_t l1_size, bool active)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;
    uint8_t *l1, *l2;

    add_ref(c, l1_off, (uint64_t)l1_size * 8);
    if (!l1_size) {
        return;
    }
    l1 = xmalloc((size_t)l1_size * 8);
    l2 = xmalloc(cs);
    if (!read_buf(c, l1, (size_t)l1_size * 8, l1_off)) {
        goto out;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t e = get_be64(l1 + (size_t)i * 8);
        uint64_t l2off = e & QCOW2_L1E_OFFSET_MASK;

        if (e & QCOW2_L1E_RESERVED) {
            fprintf(stderr, "ERROR found L1 entry with reserved bits set: %" PRIx64 "\n", e);
            c->res->corruptions++;
        }
        if (!l2off) {
            continue;
        }
        /* as qemu-img: counted, then checked, then read even if misaligned */
        add_ref(c, l2off, cs);
        if (!IS_ALIGNED(l2off, cs)) {
            fprintf(stderr, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry "
                    "corrupted\n", l2off);
            c->res->corruptions++;
        }
        if (l2off >= c->file_size) {
            continue;
        }
        if (read_buf(c, l2, cs, l2off)) {
            /* qemu-img counts fragmentation within each L2 table */
            c->next_contig = 0;
            c->l2_cur = (active && IS_ALIGNED(l2off, cs)) ? l2 : NULL;
            c->l2_off = l2off;
            c->l2_dirty = false;
            check_l2(c, l2, active);
            if (c->l2_dirty) {
                qcow2_cache_discard(&s->l2_cache, l2off);
                if (io_pwrite(s->fd, l2, cs, l2off) < 0) {
                    c->res->check_errors++;
                }
            }
            c->l2_cur = NULL;
        }
    }
out:
    free(l1);
    free(l2);
}

static void check_refblocks(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;

    add_ref(c, s->reftable_offset, (uint64_t)s->reftable_clusters * cs);
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        uint64_t off = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;

        if (s->reftable[i] & ~QCOW2_REFT_OFFSET_MASK) {
            fprintf(stderr, "ERROR refcount table entry %" PRIu64 " has reserved bits set\n", i);
            c->res->corruptions++;
            c->rc_corruptions++;
            c->rebuild = true;
        }
        if (!off) {
            continue;
        }
        if (!IS_ALIGNED(off, cs)) {
            fprintf(stderr, "ERROR refcount block %" PRIu64 " is not cluster aligned; refcount "
                    "table entry corrupted\n", i);
            c->res->corruptions++;
            c->rc_corruptions++;
            c->rebuild = true;
            continue;
        }
        if (off >= c->file_size) {
            fprintf(stderr, "ERROR refcount block %" PRIu64 " is outside image\n", i);
            c->res->corruptions++;
            c->rc_corruptions++;
            c->rebuild = true;
            continue;
        }
        add_ref(c, off, cs);
        if (c->refs[off >> s->cluster_bits] > 1) {
            fprintf(stderr, "ERROR refcount block %" PRIu64 " refcount=%" PRIu32 "\n", i,
                    c->refs[off >> s->cluster_bits]);
            c->res->corruptions++;
            c->rc_corruptions++;
            c->rebuild = true;
        }
    }
}

static void check_snapshots(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t table_bytes = 0;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        table_bytes += ALIGN_UP(40 + (uint64_t)sn->extra_size + strlen(sn->id) +
                                strlen(sn->name), 8);
        check_l1(c, sn->l1_offset, sn->l1_size, false);
    }
    if (s->nb_snapshots) {
        add_ref(c, s->snapshots_offset, table_bytes);
    }
}

static void check_bitmaps(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;

    if (!s->has_bitmaps_ext) {
        return;
    }
    add_ref(c, s->bitmap_dir_offset, s->bitmap_dir_size);
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        size_t tbytes = (size_t)b->table_size * 8;
        uint8_t *t = xmalloc(tbytes + 1);
        bool bad = false;

        if (b->flags & BITMAP_FLAG_IN_USE) {
            fprintf(stderr, "Warning: bitmap '%s' is inconsistent: it was in use when the image "
                    "was last closed\n", b->name);
        }
        add_ref(c, b->table_offset, tbytes);
        if (read_buf(c, t, tbytes, b->table_offset)) {
            for (uint32_t j = 0; j < b->table_size; j++) {
                uint64_t e = get_be64(t + (size_t)j * 8);
                uint64_t off = e & 0x00fffffffffffe00ULL;
                if ((e & 0xff000000000001feULL) || (off && (!IS_ALIGNED(off, cs) ||
                                                            off >= c->file_size))) {
                    fprintf(stderr, "ERROR bitmap '%s': invalid bitmap table entry %" PRIu32
                            ": %" PRIx64 "\n", b->name, j, e);
                    c->res->corruptions++;
                    bad = true;
                    continue;
                }
                if (off) {
                    add_ref(c, off, cs);
                }
            }
        }
        free(t);
        if (bad) {
            c->bad_bitmaps = xrealloc(c->bad_bitmaps, (c->nr_bad_bitmaps + 1) * sizeof(uint32_t));
            c->bad_bitmaps[c->nr_bad_bitmaps++] = i;
        }
    }
}

/*
 * Repair broken bitmap tables without allocating: clear the bad entries
 * in place and mark the bitmap in use (inconsistent), so it is never
 * trusted again and can be removed.
 */
static int repair_bitmaps(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;
    int ret = 0;

    for (size_t k = 0; k < c->nr_bad_bitmaps; k++) {
        struct qcow2_bitmap *b = &s->bitmaps[c->bad_bitmaps[k]];
        size_t tbytes = (size_t)b->table_size * 8;
        uint8_t *t = xmalloc(tbytes + 1);

        if (read_buf(c, t, tbytes, b->table_offset)) {
            for (uint32_t j = 0; j < b->table_size; j++) {
                uint64_t e = get_be64(t + (size_t)j * 8);
                uint64_t off = e & 0x00fffffffffffe00ULL;
                if ((e & 0xff000000000001feULL) || (off && (!IS_ALIGNED(off, cs) ||
                                                            off >= c->file_size))) {
                    put_be64(t + (size_t)j * 8, 0);
                }
            }
            ret = io_pwrite(s->fd, t, tbytes, b->table_offset);
        }
        free(t);
        if (ret < 0) {
            return ret;
        }
        b->flags |= BITMAP_FLAG_IN_USE;
        fprintf(stderr, "Repairing bitmap '%s': broken table entries dropped, bitmap marked "
                "inconsistent\n", b->name);
        c->res->corruptions_fixed++;
        c->res->corruptions--;
    }
    if (c->nr_bad_bitmaps) {
        uint64_t len = 0;
        /* Rewrite the directory in place with the new flags. */
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
            len += ALIGN_UP(24 + (uint64_t)s->bitmaps[i].extra_size + strlen(s->bitmaps[i].name),
                            8);
        }
        uint8_t *dir = xzalloc(len);
        uint64_t pos = 0;
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
            struct qcow2_bitmap *b = &s->bitmaps[i];
            uint8_t *e = dir + pos;
            put_be64(e, b->table_offset);
            put_be32(e + 8, b->table_size);
            put_be32(e + 12, b->flags);
            e[16] = b->type;
            e[17] = b->granularity_bits;
            put_be16(e + 18, strlen(b->name));
            put_be32(e + 20, b->extra_size);
            memcpy(e + 24, b->extra, b->extra_size);
            memcpy(e + 24 + b->extra_size, b->name, strlen(b->name));
            pos += ALIGN_UP(24 + (uint64_t)b->extra_size + strlen(b->name), 8);
        }
        ret = io_pwrite(s->fd, dir, len, s->bitmap_dir_offset);
        free(dir);
    }
    return ret;
}

/* Refcount of cluster @i as stored; 0 where the structure is unusable. */
static uint64_t stored_refcount(struct chk *c, uint64_t i)
{
    uint64_t rc = 0;

    if (qcow2_get_refcount(c->s, i, &rc) < 0) {
        return 0;
    }
    return rc;
}

/* Set the stored refcount of cluster @i (its refcount block exists). */
static int set_refcount(struct chk *c, uint64_t i, uint64_t val)
{
    struct qcow2 *s = c->s;
    uint64_t rt = i >> s->refblock_bits;
    uint64_t off = rt < s->reftable_size ? s->reftable[rt] & QCOW2_REFT_OFFSET_MASK : 0;
    uint8_t *rb;
    int ret;

    if (!off) {
        return -ENOENT;
    }
    ret = qcow2_cache_get(s, &s->rb_cache, off, false, &rb);
    if (ret < 0) {
        return ret;
    }
    qcow2_refblock_set(s, rb, i & ((1ULL << s->refblock_bits) - 1), val);
    qcow2_cache_mark_dirty(&s->rb_cache, rb);
    qcow2_cache_put(&s->rb_cache, rb);
    return 0;
}

/*
 * Write a new refcount structure describing @c->refs (minus the old
 * structure) at the end of the file and switch the header to it.
 */
static int rebuild_refcounts(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;
    uint64_t E = 1ULL << s->refblock_bits;
    uint64_t highest = 0, A, nb, nt, total;
    uint32_t *refs = c->refs;
    uint8_t *buf;
    uint64_t *table;
    int ret;

    fprintf(stderr, "Rebuilding refcount structure\n");
    /* The old structure is dropped. */
    if (s->reftable_offset && IS_ALIGNED(s->reftable_offset, cs)) {
        for (uint64_t k = 0; k < s->reftable_clusters; k++) {
            uint64_t ci = (s->reftable_offset >> s->cluster_bits) + k;
            if (ci < c->nb && refs[ci]) {
                refs[ci]--;
            }
        }
    }
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        uint64_t off = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        if (off && IS_ALIGNED(off, cs) && off < c->file_size && refs[off >> s->cluster_bits]) {
            refs[off >> s->cluster_bits]--;
        }
    }
    for (uint64_t i = 0; i < c->nb; i++) {
        if (refs[i]) {
            highest = i;
        }
    }
    A = MAX(highest + 1, DIV_ROUND_UP(c->file_size, cs));
    /* Blocks then table at A; solve for their sizes. */
    nb = 1;
    nt = 1;
    for (;;) {
        total = A + nb + nt;
        uint64_t need_nb = DIV_ROUND_UP(total, E);
        uint64_t need_nt = DIV_ROUND_UP(need_nb * 8, cs);
        if (need_nb <= nb && need_nt <= nt) {
            break;
        }
        nb = MAX(nb, need_nb);
        nt = MAX(nt, need_nt);
    }
    /* blocks cover ranges 0 .. nb-1; only ranges with something in use get one */
    buf = xzalloc(cs);
    table = xzalloc(nt * cs);
    uint64_t next = A;
    uint64_t *block_at = xcalloc(nb, sizeof(uint64_t));
    for (uint64_t r = 0; r < nb; r++) {
        block_at[r] = next++;
    }
    uint64_t table_at = next;
    for (uint64_t r = 0; r < nb; r++) {
        bool any = false;
        memset(buf, 0, cs);
        for (uint64_t k = 0; k < E; k++) {
            uint64_t ci = r * E + k;
            uint64_t v = ci < c->nb ? refs[ci] : 0;
            if (ci >= A && ci < A + nb + nt) {
                v = 1;
            }
            if (v) {
                qcow2_refblock_set(s, buf, k, MIN(v, s->refcount_max));
                any = true;
            }
        }
        (void)any;
        ret = io_pwrite(s->fd, buf, cs, block_at[r] * cs);
        if (ret < 0) {
            goto out;
        }
        put_be64((uint8_t *)table + r * 8, block_at[r] * cs);
    }
    ret = io_pwrite(s->fd, table, nt * cs, table_at * cs);
    if (ret == 0) {
        ret = io_fdatasync(s->fd);
    }
    if (ret < 0) {
        goto out;
    }
    qcow2_note_file_end(s, (table_at + nt) * cs);
    /* Forget cached blocks of the old structure. */
    for (size_t i = 0; i < s->rb_cache.n; i++) {
        if (s->rb_cache.e[i].offset && !s->rb_cache.e[i].ref) {
            qcow2_cache_discard(&s->rb_cache, s->rb_cache.e[i].offset);
        }
    }
    s->reftable_offset = table_at * cs;
    s->reftable_clusters = nt;
    free(s->reftable);
    s->reftable_size = nt * cs / 8;
    s->reftable = xcalloc(s->reftable_size, sizeof(uint64_t));
    for (uint64_t r = 0; r < nb; r++) {
        s->reftable[r] = block_at[r] * cs;
    }
    ret = qcow2_write_header(s, NULL);
    if (ret == 0) {
        ret = io_fdatasync(s->fd);
    }
    /* What the new structure describes. */
    for (uint64_t i = A; i < A + nb + nt && i < c->nb; i++) {
        refs[i] = 1;
    }
    s->free_cluster_index = 0;
out:
    free(block_at);
    free(buf);
    free(table);
    return ret;
}

static int check_copied(struct chk *c, bool repair)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;
    uint8_t *l2 = xmalloc(cs);
    int ret = 0;

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t e = s->l1[i];
        uint64_t l2off = e & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        bool dirty = false;

        if (!l2off) {
            continue;
        }
        /* as qemu-img: whatever the offset (misaligned, past the end) */
        rc = stored_refcount(c, l2off >> s->cluster_bits);
        if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
            fprintf(stderr, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32 " l1_entry=%" PRIx64
                    " refcount=%" PRIu64 "\n", repair ? "Repairing" : "ERROR", i, e, rc);
            if (repair) {
                s->l1[i] = rc == 1 ? (e | QCOW2_OFLAG_COPIED) : (e & ~QCOW2_OFLAG_COPIED);
                ret = qcow2_write_l1_entry(s, i);
                if (ret < 0) {
                    break;
                }
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
        }
        if (!read_buf(c, l2, cs, l2off)) {
            continue;
        }
        for (unsigned j = 0; j < s->l2_entries; j++) {
            uint64_t bm, le = qcow2_l2_get(s, l2, j, &bm);
            uint64_t host = le & QCOW2_L2E_OFFSET_MASK;

            if ((le & QCOW2_OFLAG_COMPRESSED) || !host) {
                continue;
            }
            rc = stored_refcount(c, host >> s->cluster_bits);
            if ((rc == 1) != !!(le & QCOW2_OFLAG_COPIED)) {
                fprintf(stderr, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%"
                        PRIu64 "\n", repair ? "Repairing" : "ERROR", le, rc);
                if (repair) {
                    le = rc == 1 ? (le | QCOW2_OFLAG_COPIED) : (le & ~QCOW2_OFLAG_COPIED);
                    qcow2_l2_set(s, l2, j, le, bm);
                    dirty = true;
                    c->res->corruptions_fixed++;
                } else {
                    c->res->corruptions++;
                }
            }
        }
        if (dirty) {
            qcow2_cache_discard(&s->l2_cache, l2off);
            ret = io_pwrite(s->fd, l2, cs, l2off);
            if (ret < 0) {
                break;
            }
        }
    }
    free(l2);
    return ret;
}

int qcow2_check(struct bdev *bd, struct check_result *res, unsigned fix, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    struct chk c;
    uint64_t cs = s->cluster_size;
    uint64_t highest = 0, cmp_end;
    bool any_highest = false;
    int64_t fsize;
    int ret;

    if (s->read_only) {
        fix = 0;
    }
    memset(&c, 0, sizeof(c));
    c.s = s;
    c.res = res;
    c.fix = fix;
    pthread_mutex_lock(&s->lock);
    if (!s->read_only) {
        ret = qcow2_flush_metadata(s);
        if (ret < 0) {
            pthread_mutex_unlock(&s->lock);
            error_setg_errno(errp, -ret, "'%s': cannot write back metadata", bd->filename);
            return ret;
        }
    }
    fsize = bfile_size(bd->file);
    if (fsize < 0) {
        pthread_mutex_unlock(&s->lock);
        error_setg_errno(errp, -fsize, "'%s': cannot get the file size", bd->filename);
        return (int)fsize;
    }
    c.file_size = fsize;
    c.nb = DIV_ROUND_UP((uint64_t)fsize, cs) + 1;
    c.refs = xcalloc(c.nb, sizeof(uint32_t));

    add_ref(&c, 0, cs);
    check_l1(&c, s->l1_offset, s->l1_size, true);
    check_snapshots(&c);
    check_bitmaps(&c);
    check_refblocks(&c);   /* last, as QEMU: a refcount block anything else uses is shared */

    if (c.nr_bad_bitmaps && (fix & CHECK_FIX_ERRORS)) {
        ret = repair_bitmaps(&c);
        if (ret < 0) {
            goto fail_io;
        }
        /* The dropped data clusters are no longer referenced. */
        memset(c.refs, 0, c.nb * sizeof(uint32_t));
        int64_t saved_corr = res->corruptions;
        uint64_t a = res->allocated_clusters, f = res->fragmented_clusters,
                 cc = res->compressed_clusters;
        c.nr_bad_bitmaps = 0;
        c.next_contig = 0;
        add_ref(&c, 0, cs);
        check_l1(&c, s->l1_offset, s->l1_size, false);
        check_snapshots(&c);
        check_bitmaps(&c);
        check_refblocks(&c);
        res->corruptions = saved_corr;
        res->allocated_clusters = a;
        res->fragmented_clusters = f;
        res->compressed_clusters = cc;
    }

    /*
     * Compare the stored refcounts with the references, as QEMU does: for
     * the clusters of the file, and those past its end that something
     * references.
     */
    cmp_end = DIV_ROUND_UP((uint64_t)fsize, cs);
    for (uint64_t i = cmp_end; i < c.nb; i++) {
        if (c.refs[i]) {
            cmp_end = i + 1;
        }
    }
    /*
     * As QEMU: first decide whether the refcount structure must be rebuilt;
     * then no single refcount is written (the old refcount blocks may be
     * shared with other data).
     */
    for (uint64_t i = 0; i < cmp_end && !c.rebuild; i++) {
        uint64_t rc = stored_refcount(&c, i);
        if (rc < c.refs[i] && (rc == 0 || c.refs[i] > s->refcount_max)) {
            c.rebuild = true;
        }
    }
    for (uint64_t i = 0; i < cmp_end; i++) {
        uint64_t rc = stored_refcount(&c, i);
        uint64_t ref = c.refs[i];

        if (rc == ref) {
            continue;
        }
        if (rc > ref) {
            fprintf(stderr, "Leaked cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64
                    "\n", i, rc, ref);
            if ((fix & CHECK_FIX_LEAKS) && !c.rebuild) {
                fprintf(stderr, "Repairing cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
                        PRIu64 "\n", i, rc, ref);
                if (set_refcount(&c, i, ref) < 0) {
                    c.rebuild = true;
                    res->leaks++;
                } else {
                    res->leaks_fixed++;
                }
            } else {
                res->leaks++;
            }
        } else {
            fprintf(stderr, "ERROR cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64
                    "\n", i, rc, ref);
            res->corruptions++;
            c.rc_corruptions++;
            if (rc == 0 || ref > s->refcount_max) {
                c.rebuild = true;
            } else if ((fix & CHECK_FIX_ERRORS) && !c.rebuild) {
                fprintf(stderr, "Repairing cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
                        PRIu64 "\n", i, rc, ref);
                if (set_refcount(&c, i, ref) < 0) {
                    c.rebuild = true;
                } else {
                    res->corruptions--;
                    c.rc_corruptions--;
                    res->corruptions_fixed++;
                }
            }
        }
    }
    if (c.rebuild && (fix & CHECK_FIX_ERRORS)) {
        ret = qcow2_flush_metadata(s);
        if (ret == 0) {
            ret = rebuild_refcounts(&c);
        }
        if (ret < 0) {
            goto fail_io;
        }
        /* Everything the old structure got wrong is now right. */
        res->corruptions_fixed += c.rc_corruptions;
        res->corruptions -= c.rc_corruptions;
        c.rc_corruptions = 0;
        res->leaks_fixed += res->leaks;
        res->leaks = 0;
    } else if (c.rebuild && (fix & CHECK_FIX_LEAKS)) {
        fprintf(stderr, "ERROR need to rebuild refcount structures\n");
        free(c.refs);
        free(c.bad_bitmaps);
        pthread_mutex_unlock(&s->lock);
        error_setg(errp, "'%s': check failed: the refcount structure must be rebuilt (use "
                   "-r all)", bd->filename);
        return -EIO;
    }
    if (fix) {
        ret = qcow2_flush_metadata(s);
        if (ret < 0) {
            goto fail_io;
        }
    }

    /* OFLAG_COPIED, against the (repaired) refcounts. */
    {
        bool repair = (fix & CHECK_FIX_ERRORS) ||
                      ((fix & CHECK_FIX_LEAKS) && !res->check_errors && !res->corruptions &&
                       !res->leaks);
        ret = check_copied(&c, repair);
        if (ret < 0) {
            goto fail_io;
        }
    }

    for (uint64_t i = 0; i < c.nb; i++) {
        if (c.refs[i] || (i < DIV_ROUND_UP((uint64_t)fsize, cs) && stored_refcount(&c, i))) {
            highest = i;
            any_highest = true;
        }
    }
    res->image_end_offset = any_highest ? (highest + 1) * cs : 0;
    res->total_clusters = DIV_ROUND_UP(s->size, cs);
    res->has_cluster_stats = true;

    if (fix && !s->read_only) {
        /* A clean image: no dirty or corrupt marks left. */
        bool rewrite = false;
        ret = qcow2_flush_metadata(s);
        if (ret == 0) {
            ret = io_fdatasync(s->fd);
        }
        if (ret < 0) {
            goto fail_io;
        }
        if ((s->incompat & QCOW2_INCOMPAT_DIRTY) && !res->corruptions) {
            s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
            s->dirty_on_disk = false;
            rewrite = true;
        }
        if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && !res->corruptions) {
            s->incompat &= ~QCOW2_INCOMPAT_CORRUPT;
            s->corrupt = false;
            rewrite = true;
        }
        if (rewrite) {
            ret = qcow2_write_header(s, NULL);
            if (ret == 0) {
                ret = io_fdatasync(s->fd);
            }
            if (ret < 0) {
                goto fail_io;
            }
        }
        /* Leaks at the end of the file: give the space back. */
        if (!bd->file->is_blockdev && res->image_end_offset &&
            res->image_end_offset < (uint64_t)fsize && !res->corruptions &&
            (res->leaks_fixed || res->corruptions_fixed)) {
            ret = io_ftruncate(s->fd, res->image_end_offset);
            if (ret == 0) {
                s->file_size = res->image_end_offset;
            }
        }
    }
    free(c.refs);
    free(c.bad_bitmaps);
    pthread_mutex_unlock(&s->lock);
    return 0;

fail_io:
    free(c.refs);
    free(c.bad_bitmaps);
    pthread_mutex_unlock(&s->lock);
    error_setg_errno(errp, -ret, "'%s': check failed", bd->filename);
    return ret;
}
