/*
 * blockctl - qcow2: options changed in place (qemu-img amend)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * What QEMU 7.2 can amend, in its order (block/qcow2.c,
 * qcow2_amend_options): an upgrade to compat=1.1 first, then a new
 * refcount width, the backing file (only to what it is), lazy refcounts,
 * the virtual size, and a downgrade to compat=0.10 last.  Each step
 * leaves an image that is whole at every instant:
 *
 * - the compat level and lazy refcounts switch with one header write
 *   (header.c, write_header_with);
 * - a new refcount width is built beside the old structures, in clusters
 *   the old refcounts allocate (leaked if the process dies before the
 *   switch), written and synced, and then the header switches to it in
 *   one sector write; the new refcounts already count the old table and
 *   blocks as free, so nothing is left to free after the switch;
 * - a downgrade turns zero clusters into what v2 can hold first (zeroed
 *   data clusters, or unallocated ones where there is no backing file,
 *   as QEMU does), each a change that reads the same at every instant
 *   (data written and synced before the L2 entry that points at it).
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/format.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/* QEMU's amend options, in the order it looks at them; help NULL: not listed. */
const struct opt_desc qcow2_amend_opts[] = {
    { "encrypt.state", OPT_STRING, NULL },
    { "encrypt.keyslot", OPT_NUMBER, NULL },
    { "encrypt.old-secret", OPT_STRING, NULL },
    { "encrypt.new-secret", OPT_STRING, NULL },
    { "encrypt.iter-time", OPT_NUMBER, NULL },
    { "size", OPT_SIZE, "Virtual disk size" },
    { "compat", OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])" },
    { "backing_file", OPT_STRING, "File name of a base image" },
    { "backing_fmt", OPT_STRING, "Image format of the base image" },
    { "data_file", OPT_STRING, NULL },
    { "data_file_raw", OPT_BOOL, NULL },
    { "lazy_refcounts", OPT_BOOL, "Postpone refcount updates" },
    { "refcount_bits", OPT_NUMBER, "Width of a reference count entry in bits" },
    { NULL, 0, NULL },
};

static void progress(const struct amend_ctl *ctl, double pct)
{
    if (ctl && ctl->progress) {
        ctl->progress(pct, ctl->opaque);
    }
}

/* Metadata to disk, synced: the state every step starts from. */
static int settle(struct qcow2 *s, struct error **errp)
{
    int ret = qcow2_flush_metadata(s);

    if (ret == 0) {
        ret = io_fdatasync(s->fd);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot write back metadata", s->bd->filename);
    }
    return ret;
}

/* Write the header for the in-memory fields; QEMU's message on failure. */
static int update_header(struct qcow2 *s, struct error **errp)
{
    struct error *err = NULL;
    int ret = qcow2_write_header(s, &err);

    if (ret < 0) {
        error_free(err);
        error_setg_errno(errp, -ret, "Failed to update the image header");
    }
    return ret;
}

/* --- compat=1.1 --- */

static int upgrade(struct qcow2 *s, struct error **errp)
{
    uint32_t old_hlen = s->header_length;
    int ret;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (s->snapshots[i].extra_size < 16) {
            /* v3 needs their disk size in the table, which blockctl never rewrites */
            error_setg(errp, "'%s': snapshot '%s' lacks the fields compat=1.1 requires and "
                       "blockctl cannot rewrite the snapshot table", s->bd->filename,
                       s->snapshots[i].name);
            return -ENOTSUP;
        }
    }
    ret = settle(s, errp);
    if (ret < 0) {
        return ret;
    }
    s->version = 3;
    s->header_length = QCOW2_HEADER_SIZE;
    s->incompat = s->compat = s->autoclear = 0;
    s->compression_type = QCOW2_COMPRESSION_ZLIB;
    ret = update_header(s, errp);
    if (ret < 0) {
        s->version = 2;
        s->header_length = old_hlen;
    }
    return ret;
}

/* --- refcount width --- */

static void rb_set(unsigned order, uint8_t *rb, uint64_t index, uint64_t value)
{
    struct qcow2 t;

    t.refcount_order = order;
    qcow2_refblock_set(&t, rb, index, value);
}

/*
 * Clusters [0, end) cover everything with a refcount; the first cluster
 * whose refcount does not fit @max sets *over (UINT64_MAX: none).
 */
static int refcount_extent(struct qcow2 *s, uint64_t max, uint64_t *end, uint64_t *over,
                           uint64_t *over_rc)
{
    uint64_t per_block = 1ULL << s->refblock_bits;

    *end = DIV_ROUND_UP(s->file_size, s->cluster_size);
    *over = UINT64_MAX;
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        if (!(s->reftable[i] & QCOW2_REFT_OFFSET_MASK)) {
            continue;
        }
        for (uint64_t c = i * per_block; c < (i + 1) * per_block; c++) {
            uint64_t rc;
            int ret = qcow2_get_refcount(s, c, &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc && c + 1 > *end) {
                *end = c + 1;
            }
            if (rc > max && *over == UINT64_MAX) {
                *over = c;
                *over_rc = rc;
            }
        }
    }
    return 0;
}

static int change_refcount_order(struct qcow2 *s, unsigned order, const struct amend_ctl *ctl,
                                 struct error **errp)
{
    const char *fn = s->bd->filename;
    uint64_t cs = s->cluster_size;
    unsigned bits = 1u << order;
    uint64_t max = bits == 64 ? UINT64_MAX : (1ULL << bits) - 1;
    uint64_t per_block = cs * 8 >> order, per_rt = cs / 8;
    uint64_t end, over, over_rc = 0, k = 0, nb = 0, nt = 0, used_end;
    uint64_t *old_rt = NULL, old_rt_size;
    uint8_t *oldmeta = NULL, *buf = NULL;
    int64_t off = -1;
    int ret;

    ret = settle(s, errp);
    if (ret < 0) {
        return ret;
    }
    ret = refcount_extent(s, max, &end, &over, &over_rc);
    if (ret < 0) {
        goto io_fail;
    }
    if (over != UINT64_MAX) {
        error_setg(errp, "Cannot decrease refcount entry width to %u bits: Cluster at offset "
                   "%#" PRIx64 " has a refcount of %" PRIu64, bits, over * cs, over_rc);
        return -EINVAL;
    }

    /*
     * Room for the new table and blocks: one run the old refcounts
     * allocate, large enough for everything including itself.
     */
    for (uint64_t margin = 4;; margin *= 2) {
        uint64_t guess = 0, t;
        for (;;) {
            nb = DIV_ROUND_UP(end + margin + guess, per_block);
            nt = DIV_ROUND_UP(nb, per_rt);
            if (nb + nt == guess) {
                break;
            }
            guess = nb + nt;
        }
        k = nb + nt;
        off = qcow2_alloc_clusters(s, k);
        if (off < 0) {
            ret = (int)off;
            goto io_fail;
        }
        ret = refcount_extent(s, UINT64_MAX, &t, &over, &over_rc);
        if (ret < 0) {
            goto io_fail;
        }
        end = t;
        nb = DIV_ROUND_UP(end, per_block);
        nt = DIV_ROUND_UP(nb, per_rt);
        if (nb + nt <= k) {
            break;
        }
        /* too small after all: give it back (leaked if that fails) and try larger */
        ret = qcow2_update_refcount(s, (uint64_t)off, k * cs, -1);
        if (ret < 0) {
            goto io_fail;
        }
    }
    ret = settle(s, errp);
    if (ret < 0) {
        return ret;
    }
    progress(ctl, 10);

    /* The old table and blocks are free once the header points elsewhere. */
    oldmeta = xzalloc(DIV_ROUND_UP(end, 8));
    for (uint64_t c = 0; c < s->reftable_clusters; c++) {
        uint64_t i = (s->reftable_offset / cs) + c;
        if (i < end) {
            oldmeta[i / 8] |= 1u << (i % 8);
        }
    }
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        uint64_t o = (s->reftable[i] & QCOW2_REFT_OFFSET_MASK) / cs;
        if (o && o < end) {
            oldmeta[o / 8] |= 1u << (o % 8);
        }
    }
    /* Layout of the run: the table, then the blocks, then what is not needed (free). */
    used_end = (uint64_t)off / cs + nt + nb;
    buf = xmalloc(cs);
    for (uint64_t b = 0; b < nb; b++) {
        memset(buf, 0, cs);
        for (uint64_t i = 0; i < per_block; i++) {
            uint64_t c = b * per_block + i, rc;
            if (c >= end) {
                break;
            }
            if ((oldmeta[c / 8] >> (c % 8)) & 1) {
                continue;
            }
            if (c >= used_end && c < (uint64_t)off / cs + k) {
                continue;
            }
            ret = qcow2_get_refcount(s, c, &rc);
            if (ret < 0) {
                goto io_fail;
            }
            rb_set(order, buf, i, rc);
        }
        ret = io_pwrite(s->fd, buf, cs, (uint64_t)off + (nt + b) * cs);
        if (ret < 0) {
            goto io_fail;
        }
        progress(ctl, 10 + 80.0 * (b + 1) / nb);
    }
    free(buf);
    buf = xzalloc(nt * cs);
    for (uint64_t b = 0; b < nb; b++) {
        put_be64(buf + b * 8, (uint64_t)off + (nt + b) * cs);
    }
    ret = io_pwrite(s->fd, buf, nt * cs, (uint64_t)off);
    if (ret == 0) {
        qcow2_note_file_end(s, (uint64_t)off + (nt + nb) * cs);
        ret = io_fdatasync(s->fd);
    }
    if (ret < 0) {
        goto io_fail;
    }

    /* The switch: one header write. */
    {
        uint32_t o_order = s->refcount_order, o_clusters = s->reftable_clusters;
        uint64_t o_off = s->reftable_offset;

        s->refcount_order = order;
        s->reftable_offset = (uint64_t)off;
        s->reftable_clusters = nt;
        ret = update_header(s, errp);
        if (ret < 0) {
            s->refcount_order = o_order;
            s->reftable_offset = o_off;
            s->reftable_clusters = o_clusters;
            goto out;
        }
    }
    /* In memory: the new structures (the cached old blocks are clean). */
    qcow2_map_lock(s);
    old_rt = s->reftable;
    old_rt_size = s->reftable_size;
    for (uint64_t i = 0; i < old_rt_size; i++) {
        if (old_rt[i] & QCOW2_REFT_OFFSET_MASK) {
            qcow2_cache_discard(&s->rb_cache, old_rt[i] & QCOW2_REFT_OFFSET_MASK);
        }
    }
    s->refcount_bits = bits;
    s->refcount_max = max;
    s->refblock_bits = s->cluster_bits + 3 - order;
    s->reftable_size = nt * cs / 8;
    s->reftable = xzalloc(nt * cs);
    for (uint64_t b = 0; b < nb; b++) {
        s->reftable[b] = (uint64_t)off + (nt + b) * cs;
    }
    s->free_cluster_index = 0;
    qcow2_map_unlock(s);
    free(old_rt);
    progress(ctl, 100);
    ret = 0;
    goto out;

io_fail:
    error_setg_errno(errp, -ret, "'%s': cannot change the refcount width", fn);
out:
    free(buf);
    free(oldmeta);
    return ret;
}

/* --- compat=0.10 --- */

struct zfix {
    unsigned idx;
    uint64_t entry;
    uint64_t old;     /* a shared cluster the entry leaves, or 0 */
};

/* Zero clusters of the L2 table at @l2off turned into what v2 can hold. */
static int expand_l2(struct qcow2 *s, uint64_t l2off, bool backing, const uint8_t *zero)
{
    uint64_t cs = s->cluster_size, l2rc;
    struct zfix *fix = NULL;
    size_t nfix = 0;
    uint8_t *l2;
    int ret;

    ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &l2rc);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_cache_get(s, &s->l2_cache, l2off, false, &l2);
    if (ret < 0) {
        return ret;
    }
    for (unsigned i = 0; i < s->l2_entries; i++) {
        uint64_t bm, e = qcow2_l2_get(s, l2, i, &bm);
        if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO)) {
            continue;
        }
        fix = xrealloc(fix, (nfix + 1) * sizeof(*fix));
        fix[nfix].idx = i;
        fix[nfix].entry = e;
        fix[nfix].old = 0;
        nfix++;
    }
    qcow2_cache_put(&s->l2_cache, l2);
    if (!nfix) {
        return 0;
    }
    for (size_t j = 0; j < nfix; j++) {
        uint64_t host = fix[j].entry & QCOW2_L2E_OFFSET_MASK, rc = 0;
        if (host) {
            ret = qcow2_get_refcount(s, host >> s->cluster_bits, &rc);
            if (ret < 0) {
                goto out;
            }
            if (rc > l2rc) {
                /*
                 * Another L2 table (a snapshot's) holds data there: zeroes
                 * go to a cluster of this table's own (QEMU 7.2 writes them
                 * in place, over the snapshot's data), and this table's
                 * references to the old one go once the table is written.
                 */
                fix[j].old = host;
                host = 0;
                fix[j].entry &= ~(QCOW2_L2E_OFFSET_MASK | QCOW2_OFLAG_COPIED);
            }
        }
        if (!host) {
            if (!backing && !fix[j].old) {
                fix[j].entry = 0; /* unallocated reads as zero too */
                continue;
            }
            int64_t o = qcow2_alloc_clusters(s, 1);
            if (o < 0) {
                ret = (int)o;
                goto out;
            }
            host = (uint64_t)o;
            if (l2rc > 1) {
                ret = qcow2_update_refcount(s, host, cs, (int64_t)l2rc - 1);
                if (ret < 0) {
                    goto out;
                }
            }
        }
        ret = io_pwrite(s->fd, zero, cs, host);
        if (ret < 0) {
            goto out;
        }
        qcow2_note_file_end(s, host + cs);
        if (fix[j].entry & QCOW2_L2E_OFFSET_MASK) {
            /*
             * A cluster kept: its own refcount decides, as the entry had it
             * (QEMU 7.2 sets COPIED from the L2 table's refcount here, which
             * qemu-img check then finds wrong for a cluster a snapshot shares).
             */
            fix[j].entry = host | (fix[j].entry & QCOW2_OFLAG_COPIED);
        } else {
            fix[j].entry = host | (l2rc == 1 ? QCOW2_OFLAG_COPIED : 0);
        }
    }
    /* the zeroes and their refcounts on disk before the entries that point at them */
    ret = qcow2_flush_refblocks(s);
    if (ret == 0) {
        ret = io_fdatasync(s->fd);
    }
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_cache_get(s, &s->l2_cache, l2off, false, &l2);
    if (ret < 0) {
        goto out;
    }
    for (size_t j = 0; j < nfix; j++) {
        qcow2_l2_set(s, l2, fix[j].idx, fix[j].entry, 0);
    }
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    qcow2_cache_put(&s->l2_cache, l2);
    for (size_t j = 0; j < nfix; j++) {
        for (uint64_t r = 0; fix[j].old && r < l2rc; r++) {
            qcow2_queue_decref(s, fix[j].old, 1);
        }
    }
    ret = qcow2_flush_metadata(s);
out:
    free(fix);
    return ret;
}

/*
 * Call @fn for the L2 tables of the active L1 and of every snapshot's
 * (a shared table once per L1 that references it).
 */
static int each_l2(struct qcow2 *s, int (*fn)(struct qcow2 *s, uint64_t l2off, void *opaque),
                   void *opaque)
{
    int ret = 0;

    for (int64_t t = -1; t < (int64_t)s->nb_snapshots && ret == 0; t++) {
        uint64_t *l1 = s->l1;
        uint32_t n = s->l1_size;
        if (t >= 0) {
            ret = qcow2_snapshot_read_l1(s, (uint32_t)t, &l1);
            if (ret < 0) {
                break;
            }
            n = s->snapshots[t].l1_size;
        }
        for (uint32_t i = 0; i < n && ret == 0; i++) {
            uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
            if (l2off) {
                ret = fn(s, l2off, opaque);
            }
        }
        if (t >= 0) {
            free(l1);
        }
    }
    return ret;
}

struct expand_ctx {
    bool backing;
    uint8_t *zero;
};

static int expand_one(struct qcow2 *s, uint64_t l2off, void *opaque)
{
    struct expand_ctx *x = opaque;
    return expand_l2(s, l2off, x->backing, x->zero);
}

static int has_compressed_one(struct qcow2 *s, uint64_t l2off, void *opaque)
{
    uint8_t *l2;
    int ret;

    (void)opaque;
    ret = qcow2_cache_get(s, &s->l2_cache, l2off, false, &l2);
    if (ret < 0) {
        return ret;
    }
    for (unsigned i = 0; i < s->l2_entries && ret == 0; i++) {
        uint64_t bm;
        if (qcow2_l2_get(s, l2, i, &bm) & QCOW2_OFLAG_COMPRESSED) {
            ret = 1;
        }
    }
    qcow2_cache_put(&s->l2_cache, l2);
    return ret;
}

static int downgrade(struct qcow2 *s, const struct amend_ctl *ctl, struct error **errp)
{
    struct bdev *bd = s->bd;
    struct expand_ctx x;
    uint64_t incompat;
    int ret;

    if (s->refcount_order != 4) {
        error_setg(errp, "compat=0.10 requires refcount_bits=16");
        return -ENOTSUP;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint64_t vm = sn->extra_size >= 8 ? get_be64(sn->extra) : sn->vm_state_size;
        uint64_t disk = sn->extra_size >= 16 ? get_be64(sn->extra + 8) : bd->size;
        if (vm > UINT32_MAX || disk != bd->size) {
            error_setg(errp, "Internal snapshots prevent downgrade of image");
            return -ENOTSUP;
        }
    }
    ret = settle(s, errp);
    if (ret < 0) {
        return ret;
    }
    incompat = s->incompat & ~(QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_DIRTY);
    if (incompat) {
        error_setg(errp, "Cannot downgrade an image with incompatible features 0x%" PRIx64
                   " set", incompat);
        return -ENOTSUP;
    }
    if (s->nb_bitmaps || s->has_bitmaps_ext) {
        /* QEMU leaves them in a v2 image that no longer accounts for them (leaks) */
        error_setg(errp, "Cannot downgrade an image with persistent bitmaps");
        error_append_hint(errp, "Remove them first with 'blockctl bitmap --remove'.");
        return -ENOTSUP;
    }
    progress(ctl, 10);
    x.backing = bd->backing_file != NULL;
    x.zero = xzalloc(s->cluster_size);
    ret = each_l2(s, expand_one, &x);
    free(x.zero);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to turn zero into data clusters");
        return ret;
    }
    progress(ctl, 80);
    if (s->compression_type != QCOW2_COMPRESSION_ZLIB) {
        ret = each_l2(s, has_compressed_one, NULL);
        if (ret < 0) {
            error_setg(errp, "Failed to check block status");
            return -EINVAL;
        }
        if (ret) {
            error_setg(errp, "Cannot downgrade an image with zstd compression type and "
                       "existing compressed clusters");
            return -ENOTSUP;
        }
    }
    ret = settle(s, errp);
    if (ret < 0) {
        return ret;
    }
    {
        uint64_t o_incompat = s->incompat, o_compat = s->compat, o_autoclear = s->autoclear;
        uint8_t o_ct = s->compression_type;

        s->version = 2;
        s->incompat = 0;
        s->compat = 0;
        s->autoclear = 0;
        s->compression_type = QCOW2_COMPRESSION_ZLIB;
        ret = update_header(s, errp);
        if (ret < 0) {
            s->version = 3;
            s->incompat = o_incompat;
            s->compat = o_compat;
            s->autoclear = o_autoclear;
            s->compression_type = o_ct;
            return ret;
        }
        s->header_length = QCOW2_V2_HEADER_SIZE;
        s->dirty_on_disk = false;
    }
    return 0;
}

/* --- lazy refcounts --- */

static int set_lazy(struct qcow2 *s, bool on, struct error **errp)
{
    uint64_t o_compat = s->compat, o_incompat = s->incompat;
    int ret;

    ret = settle(s, errp);
    if (ret < 0) {
        return ret;
    }
    if (on) {
        s->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    } else {
        /* the refcounts are on disk (settled): the image is clean */
        s->compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
    }
    ret = update_header(s, errp);
    if (ret < 0) {
        s->compat = o_compat;
        s->incompat = o_incompat;
        return ret;
    }
    if (!on) {
        s->dirty_on_disk = false;
    }
    return 0;
}

static bool str_differ(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b));
}

int qcow2_amend(struct bdev *bd, const struct optlist *o, const struct amend_ctl *ctl,
                struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    int old_version = (int)s->version, new_version = old_version;
    bool lazy = qcow2_lazy(s), have_size = false;
    uint64_t new_size = 0, refcount_bits = s->refcount_bits;
    const char *backing_file = NULL, *backing_fmt = NULL;
    int ret;

    /* The options, in QEMU's order, with its messages */
    for (const struct opt_desc *d = qcow2_amend_opts; d->name; d++) {
        const char *v = opts_get(o, d->name);
        if (!v) {
            continue;
        }
        if (!strncmp(d->name, "encrypt.", 8)) {
            error_setg(errp, "Can't amend encryption options - encryption not present");
            return -EINVAL;
        } else if (!strcmp(d->name, "size")) {
            opts_get_size(o, "size", &new_size, NULL);
            have_size = new_size != 0;
        } else if (!strcmp(d->name, "compat")) {
            if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
                new_version = 2;
            } else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
                new_version = 3;
            } else {
                error_setg(errp, "Unknown compatibility level %s (valid: 0.10 or v2, 1.1 or v3)",
                           v);
                return -EDOM;
            }
        } else if (!strcmp(d->name, "backing_file")) {
            backing_file = v;
        } else if (!strcmp(d->name, "backing_fmt")) {
            backing_fmt = v;
        } else if (!strcmp(d->name, "data_file")) {
            error_setg(errp, "data-file can only be set for images that use an external data "
                       "file");
            return -EINVAL;
        } else if (!strcmp(d->name, "data_file_raw")) {
            bool raw = false;
            opts_get_bool(o, "data_file_raw", &raw, NULL);
            if (raw) {
                error_setg(errp, "data-file-raw cannot be set on existing images");
                return -EINVAL;
            }
        } else if (!strcmp(d->name, "lazy_refcounts")) {
            opts_get_bool(o, "lazy_refcounts", &lazy, NULL);
        } else if (!strcmp(d->name, "refcount_bits")) {
            opts_get_number(o, "refcount_bits", &refcount_bits, NULL);
            if (refcount_bits == 0 || refcount_bits > 64 || !IS_POWER_OF_2(refcount_bits)) {
                error_setg(errp, "Refcount width must be a power of two and may not exceed 64 "
                           "bits");
                return -EDOM;
            }
        }
    }

    /* (the steps hold the metadata lock; the resize takes it itself) */
    qcow2_meta_lock(s);
    ret = 0;
    if (new_version > old_version) {
        ret = upgrade(s, errp);
    }
    if (ret == 0 && refcount_bits != s->refcount_bits) {
        if (new_version < 3 && refcount_bits != 16) {
            error_setg(errp, "Refcount widths other than 16 bits require compatibility level "
                       "1.1 or above (use compat=1.1 or greater)");
            ret = -EINVAL;
        } else {
            ret = change_refcount_order(s, __builtin_ctzll(refcount_bits), ctl, errp);
        }
    }
    if (ret == 0 && (backing_file || backing_fmt) &&
        (str_differ(backing_file, bd->backing_file) || str_differ(backing_fmt, s->backing_fmt))) {
        error_setg(errp, "Cannot amend the backing file");
        error_append_hint(errp, "You can use 'blockctl rebase' instead.");
        ret = -EINVAL;
    }
    if (ret == 0 && lazy != qcow2_lazy(s)) {
        if (lazy && new_version < 3) {
            error_setg(errp, "Lazy refcounts only supported with compatibility level 1.1 and "
                       "above (use compat=1.1 or greater)");
            ret = -EINVAL;
        } else {
            ret = set_lazy(s, lazy, errp);
        }
    }
    qcow2_meta_unlock(s);
    if (ret < 0) {
        return ret;
    }
    if (have_size) {
        if (new_size % 512) {
            error_setg(errp, "The new size must be a multiple of 512");
            return -EINVAL;
        }
        ret = bdev_truncate(bd, new_size, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (new_version < old_version) {
        qcow2_meta_lock(s);
        ret = downgrade(s, ctl, errp);
        qcow2_meta_unlock(s);
    }
    return ret;
}
