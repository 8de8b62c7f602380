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
 *
 * A check runs in two phases.  The first reads all the metadata it needs
 * and decides on every repair, writing nothing: a read error there stops
 * the check with the file unchanged (a table that cannot be read is never
 * taken for an empty one, a refcount never for 0).  The second writes the
 * repairs, in an order where stopping after any write leaves at worst
 * leaked clusters: references are dropped before refcounts are lowered,
 * refcounts are fixed before the OFLAG_COPIED bits that follow them.
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* An L2 entry to rewrite (with its old value, put back if the write fails). */
struct l2fix {
    uint64_t l2off;
    uint32_t index;
    uint64_t entry, bitmap;
    uint64_t old_entry, old_bitmap;
    bool with_bitmap;        /* write the subcluster bitmap too */
};

/* An L1 entry to rewrite (OFLAG_COPIED). */
struct l1fix {
    uint32_t index;
    uint64_t entry;
};

/* A bitmap whose table has broken entries. */
struct badbm {
    uint32_t index;          /* into s->bitmaps */
    uint8_t *table;          /* the table as read */
};

struct chk {
    struct qcow2 *s;
    struct check_result *res;
    unsigned fix;
    bool quiet;              /* CHECK_QUIET: nothing said (the repair of an open) */
    uint64_t nb;             /* clusters tracked in refs[] */
    uint64_t file_size;
    uint64_t file_clusters;
    uint32_t *refs;
    uint8_t *fixme;          /* bit per cluster: set its stored refcount to refs[] */
    bool rebuild;
    bool rebuilding;         /* the rebuild is going to be written */
    uint64_t next_contig;    /* fragmentation accounting */
    struct badbm *bad_bitmaps;
    size_t nr_bad_bitmaps;
    int64_t rc_corruptions;  /* corruptions a rebuilt refcount structure fixes */
    struct l2fix *l2_fixes;  /* misaligned preallocated clusters dropped */
    size_t nr_l2_fixes;
    struct l2fix *copied_fixes;  /* OFLAG_COPIED in L2 entries */
    size_t nr_copied_fixes;
    struct l1fix *l1_fixes;  /* OFLAG_COPIED in L1 entries */
    size_t nr_l1_fixes;
    uint64_t highest;        /* last cluster in use after the repair */
    bool any_highest;
    int err;                 /* why the check stopped (negative errno), or 0 */
    bool read_failed;        /* ... because some metadata could not be read */
    char what[192];          /* ... and what failed */
};

/* A line of what qemu-img check reports, to the check sink (lib/block.h). */
static void say(const struct chk *c, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
static void say(const struct chk *c, const char *fmt, ...)
{
    va_list ap;
    char *text;

    if (c->quiet) {
        return;
    }
    va_start(ap, fmt);
    if (vasprintf(&text, fmt, ap) >= 0) {
        bdev_check_report(text);
        free(text);
    }
    va_end(ap);
}

/* Record why the check stops (the first reason only); returns @ret. */
static int ATTRIBUTE_PRINTF(4, 5) stop(struct chk *c, int ret, bool read, const char *fmt, ...)
{
    va_list ap;

    if (!c->err) {
        c->err = ret;
        c->read_failed = read;
        va_start(ap, fmt);
        vsnprintf(c->what, sizeof(c->what), fmt, ap);
        va_end(ap);
    }
    return ret;
}

static void add_ref(struct chk *c, uint64_t off, uint64_t len)
{
    uint64_t cs = c->s->cluster_size;
    uint64_t first, last;

    if (!len) {
        return;
    }
    if (off + len < off || off + len >= c->file_size + cs) {
        say(c, "ERROR: counting reference for region exceeding the end of the file by "
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

/* Read a table into @buf (zero-filled past EOF); 0 or -errno. */
static int read_table(struct chk *c, void *buf, size_t len, uint64_t off)
{
    ssize_t n = io_pread(c->s->fd, buf, len, off);

    if (n < 0) {
        return (int)n;
    }
    if ((size_t)n < len) {
        memset((uint8_t *)buf + n, 0, len - n);
    }
    return 0;
}

static void add_l2fix(struct l2fix **v, size_t *n, const struct l2fix *f)
{
    if ((*n & (*n - 1)) == 0) {
        *v = xrealloc(*v, (*n ? *n * 2 : 1) * sizeof(**v));
    }
    (*v)[(*n)++] = *f;
}

static void check_l2(struct chk *c, uint8_t *l2, uint64_t l2off, bool active)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;
    /* as qemu-img: misaligned entries are repaired in the active image's
     * (aligned) tables only */
    bool can_fix = (c->fix & CHECK_FIX_ERRORS) && active && l2off && IS_ALIGNED(l2off, cs);

    for (unsigned j = 0; j < s->l2_entries; j++) {
        uint64_t bm, e = qcow2_l2_get(s, l2, j, &bm);
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t coff, cbytes;
            if (e & QCOW2_OFLAG_COPIED) {
                say(c, "ERROR: coffset=0x%" PRIx64 ": Compressed cluster has "
                    "OFLAG_COPIED set\n", e & s->coffset_mask);
                c->res->corruptions++;
            }
            if (s->ext_l2 && bm) {
                say(c, "ERROR compressed cluster %u with non-zero subcluster "
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
            say(c, "ERROR found l2 entry with reserved bits set: %" PRIx64 "\n", e);
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
                say(c, "ERROR invalid subcluster bitmap 0x%016" PRIx64 " for l2 entry "
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
                say(c, "%s offset=%" PRIx64 ": Preallocated cluster is not properly "
                    "aligned; L2 entry corrupted.\n",
                    (c->fix & CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", host);
                if (can_fix) {
                    /* a zero cluster needs no host cluster: drop the bad one */
                    struct l2fix f = {
                        .l2off = l2off, .index = j,
                        .entry = s->ext_l2 ? 0 : QCOW2_OFLAG_ZERO,
                        .bitmap = s->ext_l2 ? QCOW2_BITMAP_ALL_ZERO : 0,
                        .old_entry = e, .old_bitmap = bm, .with_bitmap = s->ext_l2,
                    };
                    add_l2fix(&c->l2_fixes, &c->nr_l2_fixes, &f);
                    c->res->corruptions--;
                    c->res->corruptions_fixed++;
                    /* the entry no longer uses a cluster */
                    continue;
                }
            } else {
                say(c, "ERROR offset=%" PRIx64 ": Data cluster is not properly aligned; "
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

/* Count the references from an L1 table (@snap: the snapshot's name, or NULL). */
static int check_l1(struct chk *c, uint64_t l1_off, uint32_t l1_size, bool active,
                    const char *snap)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;
    uint8_t *l1, *l2;
    int ret;

    add_ref(c, l1_off, (uint64_t)l1_size * 8);
    if (!l1_size) {
        return 0;
    }
    l1 = xmalloc((size_t)l1_size * 8);
    l2 = xmalloc(cs);
    ret = read_table(c, l1, (size_t)l1_size * 8, l1_off);
    if (ret < 0) {
        if (snap) {
            stop(c, ret, true, "cannot read the L1 table of snapshot '%s' at 0x%" PRIx64, snap,
                 l1_off);
        } else {
            stop(c, ret, true, "cannot read the L1 table at 0x%" PRIx64, l1_off);
        }
        goto out;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t e = get_be64(l1 + (size_t)i * 8);
        uint64_t l2off = e & QCOW2_L1E_OFFSET_MASK;

        if (e & QCOW2_L1E_RESERVED) {
            say(c, "ERROR found L1 entry with reserved bits set: %" PRIx64 "\n", e);
            c->res->corruptions++;
        }
        if (!l2off) {
            continue;
        }
        /* as qemu-img: counted, then checked, then read even if misaligned */
        add_ref(c, l2off, cs);
        if (!IS_ALIGNED(l2off, cs)) {
            say(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry "
                "corrupted\n", l2off);
            c->res->corruptions++;
        }
        if (l2off >= c->file_size) {
            continue;
        }
        ret = read_table(c, l2, cs, l2off);
        if (ret < 0) {
            stop(c, ret, true, "cannot read L2 table at 0x%" PRIx64, l2off);
            goto out;
        }
        /* qemu-img counts fragmentation within each L2 table */
        c->next_contig = 0;
        check_l2(c, l2, l2off, active);
    }
out:
    free(l1);
    free(l2);
    return ret < 0 ? ret : 0;
}

static int check_snapshots(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t table_bytes = 0;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        int ret;

        table_bytes += ALIGN_UP(40 + (uint64_t)sn->extra_size + strlen(sn->id) +
                                strlen(sn->name), 8);
        ret = check_l1(c, sn->l1_offset, sn->l1_size, false, sn->name);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->nb_snapshots) {
        add_ref(c, s->snapshots_offset, table_bytes);
    }
    return 0;
}

static bool bitmap_entry_bad(struct chk *c, uint64_t e)
{
    uint64_t off = e & 0x00fffffffffffe00ULL;

    return (e & 0xff000000000001feULL) ||
           (off && (!IS_ALIGNED(off, c->s->cluster_size) || off >= c->file_size));
}

static int check_bitmaps(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;

    if (!s->has_bitmaps_ext) {
        return 0;
    }
    add_ref(c, s->bitmap_dir_offset, s->bitmap_dir_size);
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        size_t tbytes = (size_t)b->table_size * 8;
        uint8_t *t = xmalloc(tbytes + 1);
        bool bad = false;
        int ret;

        if (b->flags & BITMAP_FLAG_IN_USE) {
            say(c, "Warning: bitmap '%s' is inconsistent: it was in use when the image "
                "was last closed\n", b->name);
        }
        add_ref(c, b->table_offset, tbytes);
        ret = read_table(c, t, tbytes, b->table_offset);
        if (ret < 0) {
            free(t);
            return stop(c, ret, true, "cannot read the table of bitmap '%s' at 0x%" PRIx64,
                        b->name, b->table_offset);
        }
        for (uint32_t j = 0; j < b->table_size; j++) {
            uint64_t e = get_be64(t + (size_t)j * 8);
            uint64_t off = e & 0x00fffffffffffe00ULL;
            if (bitmap_entry_bad(c, e)) {
                say(c, "ERROR bitmap '%s': invalid bitmap table entry %" PRIu32
                    ": %" PRIx64 "\n", b->name, j, e);
                c->res->corruptions++;
                bad = true;
                continue;
            }
            if (off) {
                add_ref(c, off, cs);
            }
        }
        if (bad && (c->fix & CHECK_FIX_ERRORS)) {
            c->bad_bitmaps = xrealloc(c->bad_bitmaps,
                                      (c->nr_bad_bitmaps + 1) * sizeof(*c->bad_bitmaps));
            c->bad_bitmaps[c->nr_bad_bitmaps].index = i;
            c->bad_bitmaps[c->nr_bad_bitmaps].table = t;
            c->nr_bad_bitmaps++;
        } else {
            free(t);
        }
    }
    return 0;
}

static void check_refblocks(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;

    add_ref(c, s->reftable_offset, (uint64_t)s->reftable_clusters * cs);
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        uint64_t off = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;

        if (s->reftable[i] & ~QCOW2_REFT_OFFSET_MASK) {
            say(c, "ERROR refcount table entry %" PRIu64 " has reserved bits set\n", i);
            c->res->corruptions++;
            c->rc_corruptions++;
            c->rebuild = true;
        }
        if (!off) {
            continue;
        }
        if (!IS_ALIGNED(off, cs)) {
            say(c, "ERROR refcount block %" PRIu64 " is not cluster aligned; refcount "
                "table entry corrupted\n", i);
            c->res->corruptions++;
            c->rc_corruptions++;
            c->rebuild = true;
            continue;
        }
        if (off >= c->file_size) {
            say(c, "ERROR refcount block %" PRIu64 " is outside image\n", i);
            c->res->corruptions++;
            c->rc_corruptions++;
            c->rebuild = true;
            continue;
        }
        add_ref(c, off, cs);
        if (c->refs[off >> s->cluster_bits] > 1) {
            say(c, "ERROR refcount block %" PRIu64 " refcount=%" PRIu32 "\n", i,
                c->refs[off >> s->cluster_bits]);
            c->res->corruptions++;
            c->rc_corruptions++;
            c->rebuild = true;
        }
    }
}

/* Count every reference to every cluster (reads only). */
static int count_refs(struct chk *c)
{
    struct qcow2 *s = c->s;
    int ret;

    add_ref(c, 0, s->cluster_size);
    ret = check_l1(c, s->l1_offset, s->l1_size, true, NULL);
    if (ret == 0) {
        ret = check_snapshots(c);
    }
    if (ret == 0) {
        ret = check_bitmaps(c);
    }
    if (ret == 0) {
        /* last, as QEMU: a refcount block anything else uses is shared */
        check_refblocks(c);
    }
    return ret;
}

/*
 * Refcount of cluster @i as stored.  Ranges without a usable refcount
 * block (none, misaligned: check_refblocks has asked for a rebuild) read
 * as 0; a block that cannot be read stops the check.
 */
static int stored_refcount(struct chk *c, uint64_t i, uint64_t *rc)
{
    struct qcow2 *s = c->s;
    uint64_t rt = i >> s->refblock_bits;
    uint64_t off = rt < s->reftable_size ? s->reftable[rt] & QCOW2_REFT_OFFSET_MASK : 0;
    uint8_t *rb;
    int ret;

    *rc = 0;
    if (!off || !IS_ALIGNED(off, s->cluster_size)) {
        return 0;
    }
    ret = qcow2_cache_get(s, &s->rb_cache, off, false, &rb);
    if (ret < 0) {
        return stop(c, ret, true, "cannot read refcount block at 0x%" PRIx64, off);
    }
    *rc = qcow2_refblock_get(s, rb, i & ((1ULL << s->refblock_bits) - 1));
    qcow2_cache_put(&s->rb_cache, rb);
    return 0;
}

/* Set the stored refcount of cluster @i (its refcount block exists). */
static int set_refcount(struct chk *c, uint64_t i, uint64_t val)
{
    struct qcow2 *s = c->s;
    uint64_t rt = i >> s->refblock_bits;
    uint64_t off = rt < s->reftable_size ? s->reftable[rt] & QCOW2_REFT_OFFSET_MASK : 0;
    uint8_t *rb;
    int ret;

    if (!off || !IS_ALIGNED(off, s->cluster_size)) {
        /* compare_refcounts only fixes clusters with a refcount block */
        return stop(c, -EIO, false, "cluster %" PRIu64 " has no refcount block to repair", i);
    }
    ret = qcow2_cache_get(s, &s->rb_cache, off, false, &rb);
    if (ret < 0) {
        return stop(c, ret, false, "cannot update refcount block at 0x%" PRIx64, off);
    }
    qcow2_refblock_set(s, rb, i & ((1ULL << s->refblock_bits) - 1), val);
    qcow2_cache_mark_dirty(&s->rb_cache, rb);
    qcow2_cache_put(&s->rb_cache, rb);
    return 0;
}

static bool fixme_test(struct chk *c, uint64_t i)
{
    return i < c->nb && (c->fixme[i / 8] & (1u << (i % 8)));
}

static void note_highest(struct chk *c, uint64_t i)
{
    if (!c->any_highest || i > c->highest) {
        c->highest = i;
        c->any_highest = true;
    }
}

/*
 * Compare the stored refcounts with the references, as QEMU does: for the
 * clusters of the file, and those past its end that something references.
 * Decides which refcounts a repair sets (c->fixme) or whether it rebuilds
 * the structure; reads only.
 */
static int compare_refcounts(struct chk *c)
{
    struct qcow2 *s = c->s;
    struct check_result *res = c->res;
    uint64_t cmp_end = c->file_clusters;
    uint64_t rc;
    int ret;

    for (uint64_t i = cmp_end; i < c->nb; i++) {
        if (c->refs[i]) {
            cmp_end = i + 1;
        }
    }
    /*
     * As QEMU: first decide whether the refcount structure must be rebuilt;
     * then no single refcount is written (the old refcount blocks may be
     * shared with other data).
     */
    for (uint64_t i = 0; i < cmp_end && !c->rebuild; i++) {
        ret = stored_refcount(c, i, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc < c->refs[i] && (rc == 0 || c->refs[i] > s->refcount_max)) {
            c->rebuild = true;
        }
    }
    for (uint64_t i = 0; i < cmp_end; i++) {
        uint64_t ref = c->refs[i];
        bool fixed = false;

        ret = stored_refcount(c, i, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc > ref) {
            say(c, "Leaked cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64
                "\n", i, rc, ref);
            if ((c->fix & CHECK_FIX_LEAKS) && !c->rebuild) {
                say(c, "Repairing cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
                    PRIu64 "\n", i, rc, ref);
                fixed = true;
                res->leaks_fixed++;
            } else {
                res->leaks++;
            }
        } else if (rc < ref) {
            say(c, "ERROR cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64
                "\n", i, rc, ref);
            res->corruptions++;
            c->rc_corruptions++;
            if (rc == 0 || ref > s->refcount_max) {
                c->rebuild = true;
            } else if ((c->fix & CHECK_FIX_ERRORS) && !c->rebuild) {
                say(c, "Repairing cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
                    PRIu64 "\n", i, rc, ref);
                fixed = true;
                res->corruptions--;
                c->rc_corruptions--;
                res->corruptions_fixed++;
            }
        }
        if (fixed) {
            c->fixme[i / 8] |= 1u << (i % 8);
        }
        /* the end of the image once the repairs are written */
        if (ref || (i < c->file_clusters && (fixed ? ref : rc))) {
            note_highest(c, i);
        }
    }
    return 0;
}

/*
 * The refcount a cluster has once the planned repairs are written: as the
 * rebuilt structure describes it, as repaired, or as stored.
 */
static int final_refcount(struct chk *c, uint64_t i, uint64_t *rc)
{
    if (c->rebuilding) {
        *rc = i < c->nb ? MIN((uint64_t)c->refs[i], c->s->refcount_max) : 0;
        return 0;
    }
    if (fixme_test(c, i)) {
        *rc = c->refs[i];
        return 0;
    }
    return stored_refcount(c, i, rc);
}

/*
 * The rebuilt structure replaces the old one: drop the old table and
 * blocks from the references (they are free once the header points to the
 * new structure).
 */
static void drop_old_structure(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;
    uint32_t *refs = c->refs;

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
}

/* Whether the header on disk points to the refcount table at @off. */
static bool header_reftable_is(struct chk *c, uint64_t off)
{
    uint8_t b[8];

    return io_pread(c->s->fd, b, 8, 48) == 8 && get_be64(b) == off;
}

/*
 * A rebuild that failed before the header pointed to the new structure:
 * nothing references what it wrote past the old end of the file.
 */
static void give_back_tail(struct chk *c)
{
    if (!c->s->bd->file->is_blockdev) {
        io_ftruncate(c->s->fd, c->file_size);
    }
}

/*
 * Write a new refcount structure describing @c->refs at the end of the
 * file and switch the header to it.
 */
static int rebuild_refcounts(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint64_t cs = s->cluster_size;
    uint64_t E = 1ULL << s->refblock_bits;
    uint64_t highest = 0, A, nb, nt, total, old_off;
    uint32_t old_clusters;
    uint32_t *refs = c->refs;
    uint8_t *buf;
    uint64_t *table;
    int ret;

    for (uint64_t i = 0; i < c->nb; i++) {
        if (refs[i]) {
            highest = i;
        }
    }
    A = MAX(highest + 1, c->file_clusters);
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
    /* blocks cover ranges 0 .. nb-1 */
    buf = xzalloc(cs);
    table = xzalloc(nt * cs);
    uint64_t next = A;
    uint64_t *block_at = xcalloc(nb, sizeof(uint64_t));
    for (uint64_t r = 0; r < nb; r++) {
        block_at[r] = next++;
    }
    uint64_t table_at = next;
    for (uint64_t r = 0; r < nb; r++) {
        memset(buf, 0, cs);
        for (uint64_t k = 0; k < E; k++) {
            uint64_t ci = r * E + k;
            uint64_t v = ci < c->nb ? refs[ci] : 0;
            if (ci >= A && ci < A + nb + nt) {
                v = 1;
            }
            if (v) {
                qcow2_refblock_set(s, buf, k, MIN(v, s->refcount_max));
            }
        }
        ret = io_pwrite(s->fd, buf, cs, block_at[r] * cs);
        if (ret < 0) {
            stop(c, ret, false, "cannot write the new refcount blocks");
            give_back_tail(c);
            goto out;
        }
        put_be64((uint8_t *)table + r * 8, block_at[r] * cs);
    }
    ret = io_pwrite(s->fd, table, nt * cs, table_at * cs);
    if (ret == 0) {
        ret = io_fdatasync(s->fd);
    }
    if (ret < 0) {
        stop(c, ret, false, "cannot write the new refcount table");
        give_back_tail(c);
        goto out;
    }
    /* Switch the header to the new table in one write. */
    old_off = s->reftable_offset;
    old_clusters = s->reftable_clusters;
    s->reftable_offset = table_at * cs;
    s->reftable_clusters = nt;
    ret = qcow2_write_header(s, NULL);
    if (ret < 0) {
        s->reftable_offset = old_off;
        s->reftable_clusters = old_clusters;
        stop(c, ret, false, "cannot switch the header to the new refcount table");
        if (header_reftable_is(c, old_off)) {
            give_back_tail(c);
        }
        goto out;
    }
    qcow2_note_file_end(s, (table_at + nt) * cs);
    /* Forget cached blocks of the old structure. */
    for (size_t i = 0; i < s->rb_cache.n; i++) {
        if (s->rb_cache.e[i].offset && !s->rb_cache.e[i].ref) {
            qcow2_cache_discard(&s->rb_cache, s->rb_cache.e[i].offset);
        }
    }
    free(s->reftable);
    s->reftable_size = nt * cs / 8;
    s->reftable = xcalloc(s->reftable_size, sizeof(uint64_t));
    for (uint64_t r = 0; r < nb; r++) {
        s->reftable[r] = block_at[r] * cs;
    }
    s->free_cluster_index = 0;
    ret = io_fdatasync(s->fd);
    if (ret < 0) {
        stop(c, ret, false, "cannot sync the new refcount structure");
        goto out;
    }
    /* What the new structure describes. */
    for (uint64_t i = A; i < A + nb + nt && i < c->nb; i++) {
        refs[i] = 1;
    }
    note_highest(c, table_at + nt - 1);
out:
    free(block_at);
    free(buf);
    free(table);
    return ret;
}

/*
 * Check OFLAG_COPIED against the refcounts the image has once repaired
 * (reads only); with @repair, plan the fixes.
 */
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

        if (!l2off) {
            continue;
        }
        /* as qemu-img: whatever the offset (misaligned, past the end) */
        ret = final_refcount(c, l2off >> s->cluster_bits, &rc);
        if (ret < 0) {
            break;
        }
        if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
            say(c, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32 " l1_entry=%" PRIx64
                " refcount=%" PRIu64 "\n", repair ? "Repairing" : "ERROR", i, e, rc);
            if (repair) {
                c->l1_fixes = xrealloc(c->l1_fixes, (c->nr_l1_fixes + 1) * sizeof(*c->l1_fixes));
                c->l1_fixes[c->nr_l1_fixes].index = i;
                c->l1_fixes[c->nr_l1_fixes].entry = rc == 1 ? (e | QCOW2_OFLAG_COPIED)
                                                            : (e & ~QCOW2_OFLAG_COPIED);
                c->nr_l1_fixes++;
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
        }
        ret = read_table(c, l2, cs, l2off);
        if (ret < 0) {
            stop(c, ret, true, "cannot read L2 table at 0x%" PRIx64, l2off);
            break;
        }
        /* as the table is once the misaligned entries are dropped */
        for (size_t k = 0; k < c->nr_l2_fixes; k++) {
            if (c->l2_fixes[k].l2off == l2off) {
                qcow2_l2_set(s, l2, c->l2_fixes[k].index, c->l2_fixes[k].entry,
                             c->l2_fixes[k].bitmap);
            }
        }
        for (unsigned j = 0; j < s->l2_entries; j++) {
            uint64_t bm, le = qcow2_l2_get(s, l2, j, &bm);
            uint64_t host = le & QCOW2_L2E_OFFSET_MASK;

            if ((le & QCOW2_OFLAG_COMPRESSED) || !host) {
                continue;
            }
            ret = final_refcount(c, host >> s->cluster_bits, &rc);
            if (ret < 0) {
                goto out;
            }
            if ((rc == 1) != !!(le & QCOW2_OFLAG_COPIED)) {
                say(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%"
                    PRIu64 "\n", repair ? "Repairing" : "ERROR", le, rc);
                if (repair) {
                    struct l2fix f = {
                        .l2off = l2off, .index = j,
                        .entry = rc == 1 ? (le | QCOW2_OFLAG_COPIED) : (le & ~QCOW2_OFLAG_COPIED),
                        .old_entry = le,
                    };
                    add_l2fix(&c->copied_fixes, &c->nr_copied_fixes, &f);
                    c->res->corruptions_fixed++;
                } else {
                    c->res->corruptions++;
                }
            }
        }
    }
out:
    free(l2);
    return ret;
}

/*
 * Write an L2 entry (with its subcluster bitmap if @f says so); a write
 * that fails may have changed part of the entry: the old one is put back.
 */
static int write_l2_entry(struct chk *c, const struct l2fix *f)
{
    struct qcow2 *s = c->s;
    uint64_t pos = f->l2off + (uint64_t)f->index * s->l2_entry_size;
    size_t len = f->with_bitmap ? 16 : 8;
    uint8_t buf[16], old[16];
    int ret;

    put_be64(buf, f->entry);
    put_be64(buf + 8, f->bitmap);
    put_be64(old, f->old_entry);
    put_be64(old + 8, f->old_bitmap);
    qcow2_cache_discard(&s->l2_cache, f->l2off);
    ret = io_pwrite(s->fd, buf, len, pos);
    if (ret < 0) {
        io_pwrite(s->fd, old, len, pos);
        return stop(c, ret, false, "cannot write L2 table at 0x%" PRIx64, f->l2off);
    }
    return 0;
}

/*
 * Repair broken bitmap tables without allocating: mark the bitmaps in use
 * (inconsistent), so that they are never trusted again and can be
 * removed, then clear the bad entries in place.  (In this order: a
 * cleared entry reads as "nothing changed here", which only an
 * inconsistent bitmap may say wrongly.)
 */
static int repair_bitmaps(struct chk *c)
{
    struct qcow2 *s = c->s;
    uint8_t *dir;
    uint64_t len = 0, pos = 0;
    int ret;

    if (!c->nr_bad_bitmaps) {
        return 0;
    }
    for (size_t k = 0; k < c->nr_bad_bitmaps; k++) {
        s->bitmaps[c->bad_bitmaps[k].index].flags |= BITMAP_FLAG_IN_USE;
    }
    /* Rewrite the directory in place with the new flags. */
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        len += ALIGN_UP(24 + (uint64_t)s->bitmaps[i].extra_size + strlen(s->bitmaps[i].name), 8);
    }
    dir = xzalloc(len);
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
    if (ret == 0) {
        ret = io_fdatasync(s->fd);
    }
    if (ret < 0) {
        return stop(c, ret, false, "cannot write the bitmap directory");
    }
    for (size_t k = 0; k < c->nr_bad_bitmaps; k++) {
        struct qcow2_bitmap *b = &s->bitmaps[c->bad_bitmaps[k].index];
        size_t tbytes = (size_t)b->table_size * 8;
        uint8_t *old = c->bad_bitmaps[k].table;
        uint8_t *t = xmalloc(tbytes + 1);

        memcpy(t, old, tbytes);
        for (uint32_t j = 0; j < b->table_size; j++) {
            if (bitmap_entry_bad(c, get_be64(t + (size_t)j * 8))) {
                put_be64(t + (size_t)j * 8, 0);
            }
        }
        ret = io_pwrite(s->fd, t, tbytes, b->table_offset);
        free(t);
        if (ret < 0) {
            io_pwrite(s->fd, old, tbytes, b->table_offset);
            return stop(c, ret, false, "cannot write the table of bitmap '%s'", b->name);
        }
    }
    return 0;
}

/*
 * Write the planned repairs: references dropped first (bitmap entries,
 * misaligned clusters), then the refcounts, then the OFLAG_COPIED bits
 * that depend on them.
 */
static int write_repairs(struct chk *c)
{
    struct qcow2 *s = c->s;
    int ret;

    ret = repair_bitmaps(c);
    for (size_t k = 0; ret == 0 && k < c->nr_l2_fixes; k++) {
        ret = write_l2_entry(c, &c->l2_fixes[k]);
    }
    if (ret == 0 && c->rebuilding) {
        ret = qcow2_flush_metadata(s);
        if (ret < 0) {
            stop(c, ret, false, "cannot write back metadata");
        } else {
            ret = rebuild_refcounts(c);
        }
    } else if (ret == 0) {
        for (uint64_t i = 0; ret == 0 && i < c->nb; i++) {
            if (fixme_test(c, i)) {
                ret = set_refcount(c, i, c->refs[i]);
            }
        }
    }
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
        if (ret < 0) {
            stop(c, ret, false, "cannot write the repaired refcounts");
        }
    }
    for (size_t k = 0; ret == 0 && k < c->nr_l1_fixes; k++) {
        ret = qcow2_set_l1_entry(s, c->l1_fixes[k].index, c->l1_fixes[k].entry);
        if (ret < 0) {
            stop(c, ret, false, "cannot write the L1 table");
        }
    }
    for (size_t k = 0; ret == 0 && k < c->nr_copied_fixes; k++) {
        ret = write_l2_entry(c, &c->copied_fixes[k]);
    }
    return ret;
}

/*
 * A repair that stopped writes nothing more: refcount updates still in
 * the cache are dropped (closing the image would write them, after the
 * writes that failed).
 */
static void drop_unwritten(struct qcow2 *s)
{
    for (size_t i = 0; i < s->rb_cache.n; i++) {
        if (s->rb_cache.e[i].offset && s->rb_cache.e[i].dirty) {
            qcow2_cache_discard(&s->rb_cache, s->rb_cache.e[i].offset);
        }
    }
}

static void chk_free(struct chk *c)
{
    for (size_t k = 0; k < c->nr_bad_bitmaps; k++) {
        free(c->bad_bitmaps[k].table);
    }
    free(c->bad_bitmaps);
    free(c->refs);
    free(c->fixme);
    free(c->l2_fixes);
    free(c->copied_fixes);
    free(c->l1_fixes);
}

int qcow2_check(struct bdev *bd, struct check_result *res, unsigned fix, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    struct chk c;
    uint64_t cs = s->cluster_size;
    int64_t fsize;
    int ret;

    memset(&c, 0, sizeof(c));
    c.quiet = fix & CHECK_QUIET;
    fix &= ~CHECK_QUIET;
    if (s->read_only) {
        fix = 0;
    }
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
    c.file_clusters = DIV_ROUND_UP((uint64_t)fsize, cs);
    c.nb = c.file_clusters + 1;
    c.refs = xcalloc(c.nb, sizeof(uint32_t));
    c.fixme = xzalloc(DIV_ROUND_UP(c.nb, 8));

    /* Phase 1: read, count, compare and plan; nothing is written. */
    ret = count_refs(&c);
    if (ret < 0) {
        goto fail;
    }
    for (size_t k = 0; k < c.nr_bad_bitmaps; k++) {
        say(&c, "Repairing bitmap '%s': broken table entries dropped, bitmap marked "
            "inconsistent\n", s->bitmaps[c.bad_bitmaps[k].index].name);
        res->corruptions_fixed++;
        res->corruptions--;
    }
    ret = compare_refcounts(&c);
    if (ret < 0) {
        goto fail;
    }
    if (c.rebuild && (fix & CHECK_FIX_ERRORS)) {
        say(&c, "Rebuilding refcount structure\n");
        c.rebuilding = true;
        drop_old_structure(&c);
        /* Everything the old structure got wrong is right once rebuilt. */
        res->corruptions_fixed += c.rc_corruptions;
        res->corruptions -= c.rc_corruptions;
        c.rc_corruptions = 0;
        res->leaks_fixed += res->leaks;
        res->leaks = 0;
    } else if (c.rebuild && (fix & CHECK_FIX_LEAKS)) {
        say(&c, "ERROR need to rebuild refcount structures\n");
        chk_free(&c);
        pthread_mutex_unlock(&s->lock);
        error_setg(errp, "'%s': check failed: the refcount structure must be rebuilt (use "
                   "-r all)", bd->filename);
        return -EIO;
    }
    /* OFLAG_COPIED, against the refcounts as repaired. */
    ret = check_copied(&c, (fix & CHECK_FIX_ERRORS) ||
                           ((fix & CHECK_FIX_LEAKS) && !res->check_errors &&
                            !res->corruptions && !res->leaks));
    if (ret < 0) {
        goto fail;
    }

    /* Phase 2: write the repairs. */
    if (fix) {
        ret = write_repairs(&c);
        if (ret < 0) {
            goto fail;
        }
    }
    res->image_end_offset = c.any_highest ? (c.highest + 1) * cs : 0;
    res->total_clusters = DIV_ROUND_UP(s->size, cs);
    res->has_cluster_stats = true;

    if (fix && !s->read_only) {
        /* A clean image: no dirty or corrupt marks left. */
        bool rewrite = false;
        ret = io_fdatasync(s->fd);
        if (ret < 0) {
            stop(&c, ret, false, "cannot sync the repairs");
            goto fail;
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
                stop(&c, ret, false, "cannot write the header");
                goto fail;
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
    chk_free(&c);
    pthread_mutex_unlock(&s->lock);
    return 0;

fail:
    chk_free(&c);
    if (fix) {
        drop_unwritten(s);
    }
    pthread_mutex_unlock(&s->lock);
    if (c.read_failed) {
        /* The check did not complete: none of its findings are reliable. */
        memset(res, 0, sizeof(*res));
        res->check_errors = 1;
    }
    error_setg_errno(errp, c.err ? -c.err : -ret, "check: '%s': %s", bd->filename,
                     c.err ? c.what : "check failed");
    return ret;
}
