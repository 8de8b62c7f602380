/*
 * blockctl - qcow2: what a new image needs (qemu-img measure), and
 * internal snapshots loaded read-only (qemu-img's -l)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The figures are QEMU 7.2's (block/qcow2.c, qcow2_measure): the metadata
 * of a fully allocated image of the virtual size (header, L2 and L1
 * tables, refcount structures at their fixed point), plus the clusters
 * that hold data; "bitmaps" adds the persistent bitmaps of the source as
 * a v3 image would store them.
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/format.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/* Refcount table and blocks that count @clusters clusters and themselves. */
static uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cs, unsigned order)
{
    uint64_t per_table_cluster = cs / 8;
    uint64_t per_block = cs * 8 >> order;
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = DIV_ROUND_UP(clusters + table + blocks, per_block);
        table = DIV_ROUND_UP(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cs;
}

/* Size of a fully allocated image of @size bytes. */
static uint64_t prealloc_size(uint64_t size, uint64_t cs, unsigned order, bool ext_l2)
{
    uint64_t l2e = ext_l2 ? 16 : 8;
    uint64_t total = ALIGN_UP(size, cs);
    uint64_t meta = cs; /* header */
    uint64_t nl2e, nl1e;

    nl2e = ALIGN_UP(total / cs, cs / l2e);
    meta += nl2e * l2e;
    nl1e = ALIGN_UP(nl2e * l2e / cs, cs / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_size((meta + total) / cs, cs, order);
    return meta + total;
}

/* Space the persistent bitmaps of @in take in a qcow2 image of cluster size @cs. */
static uint64_t bitmaps_size(struct bdev *in, uint64_t cs)
{
    uint64_t total = 0, dir = 0;

    for (struct bdev_bitmap *b = in->bitmaps; b; b = b->next) {
        uint64_t bytes, clusters;
        if (!b->persistent) {
            continue;
        }
        bytes = DIV_ROUND_UP(DIV_ROUND_UP(in->size, b->granularity), 8);
        clusters = DIV_ROUND_UP(bytes, cs);
        total += clusters * cs;              /* the bitmap, all of it allocated */
        total += ALIGN_UP(clusters * 8, cs); /* its table */
        dir += ALIGN_UP(24 + strlen(b->name), 8);
    }
    return total + ALIGN_UP(dir, cs);
}

int qcow2_measure(const struct optlist *o, struct bdev *in, struct measure_info *out,
                  struct error **errp)
{
    bool ext_l2 = false, backing;
    uint64_t cs = 65536, refcount_bits = 16, size = 0, required = 0, l2_tables;
    unsigned order;
    int version = 3;
    const char *v;

    if (opts_get_bool(o, "extended_l2", &ext_l2, errp) < 0 ||
        opts_get_size(o, "cluster_size", &cs, errp) < 0 ||
        opts_get_number(o, "refcount_bits", &refcount_bits, errp) < 0 ||
        opts_get_size(o, "size", &size, errp) < 0) {
        return -EINVAL;
    }
    if (!IS_POWER_OF_2(cs) || cs < 512 || cs > (2u << 20)) {
        error_setg(errp, "Cluster size must be a power of two between 512 and 2048k");
        return -EINVAL;
    }
    if (ext_l2 && cs < 512 * QCOW2_EXTL2_SUBCLUSTERS) {
        error_setg(errp, "Extended L2 entries are only supported with cluster sizes of at "
                   "least %u bytes", 512 * QCOW2_EXTL2_SUBCLUSTERS);
        return -EINVAL;
    }
    v = opts_get(o, "compat");
    if (v && !strcmp(v, "0.10")) {
        version = 2;
    } else if (v && strcmp(v, "1.1")) {
        error_setg(errp, "Invalid compatibility level: '%s' (valid: 0.10, 1.1)", v);
        return -EINVAL;
    }
    if (refcount_bits > 64 || !IS_POWER_OF_2(refcount_bits)) {
        error_setg(errp, "Refcount width must be a power of two and may not exceed 64 bits");
        return -EINVAL;
    }
    if (version < 3 && refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require compatibility level "
                   "1.1 or above (use compat=1.1 or greater)");
        return -EINVAL;
    }
    order = __builtin_ctzll(refcount_bits);
    v = opts_get(o, "preallocation");
    if (v && strcmp(v, "off") && strcmp(v, "metadata") && strcmp(v, "falloc") &&
        strcmp(v, "full")) {
        error_setg(errp, "invalid parameter value: %s (valid: off, metadata, falloc, full)", v);
        return -EINVAL;
    }
    /* as QEMU: an empty backing_file= counts as one */
    backing = opts_get(o, "backing_file") != NULL;
    if (opts_get(o, "encrypt.format") && !strcmp(opts_get(o, "encrypt.format"), "luks")) {
        error_setg(errp, "encrypted qcow2 images are not supported");
        return -ENOTSUP;
    }

    if (size > UINT64_MAX - cs) {
        error_setg(errp, "The image size is too large (try using a larger cluster size)");
        return -EFBIG;
    }
    size = ALIGN_UP(size, cs);
    l2_tables = DIV_ROUND_UP(size / cs, cs / (ext_l2 ? 16 : 8));
    if (l2_tables * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "The image size is too large (try using a larger cluster size)");
        return -EFBIG;
    }

    if (in) {
        uint64_t isize = in->size;

        size = ALIGN_UP(isize, cs);
        if (backing) {
            /* nothing is known to be shared with the new image's backing file */
            required = size;
        } else {
            for (uint64_t off = 0; off < isize;) {
                struct bdev_map m;
                int ret = bdev_block_status_above(in, NULL, off, isize - off, &m);
                if (ret < 0) {
                    error_setg_errno(errp, -ret, "Unable to get block status");
                    return ret;
                }
                if (m.status & BDEV_BLOCK_ZERO) {
                    /* reads as zero: nothing to store */
                } else if ((m.status & (BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED)) ==
                           (BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED)) {
                    /* the clusters this data touches, each once */
                    m.len = ALIGN_UP(off + m.len, cs) - off;
                    required += off % cs + m.len;
                }
                off += m.len;
            }
        }
    }
    if (v && (!strcmp(v, "full") || !strcmp(v, "falloc"))) {
        required = size;
    }
    out->fully_allocated = prealloc_size(size, cs, order, ext_l2);
    out->required = out->fully_allocated - size + required;
    out->has_bitmaps = version >= 3 && in && in->drv == &qcow2_driver &&
                       ((struct qcow2 *)in->opaque)->version >= 3;
    out->bitmaps = out->has_bitmaps ? bitmaps_size(in, cs) : 0;
    return 0;
}

/* Index of the snapshot matching @id and @name (NULL: any), or -1. */
static int find_snapshot(struct qcow2 *s, const char *id, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if ((!id || !strcmp(s->snapshots[i].id, id)) &&
            (!name || !strcmp(s->snapshots[i].name, name))) {
            return (int)i;
        }
    }
    return -1;
}

int qcow2_snapshot_load_tmp(struct bdev *bd, const char *id, const char *name,
                            struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    struct qcow2_snapshot *sn;
    uint64_t *l1;
    int i, ret;

    if (!bd->read_only) {
        error_setg(errp, "Device is not readonly");
        return -EINVAL;
    }
    i = find_snapshot(s, id, name);
    if (i < 0) {
        error_setg(errp, "Can't find snapshot");
        return -ENOENT;
    }
    sn = &s->snapshots[i];
    ret = qcow2_snapshot_read_l1(s, (uint32_t)i, &l1);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot read the L1 table of snapshot '%s'",
                         bd->filename, sn->name);
        return ret;
    }
    qcow2_map_lock(s);
    free(s->l1);
    s->l1 = l1;
    s->l1_size = sn->l1_size;
    s->l1_offset = sn->l1_offset;
    qcow2_map_unlock(s);
    return 0;
}
