/*
 * blockctl - qcow2: header, extensions, open/close, create, info
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/bitmap.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* qcow2.txt "Feature name table": the names QEMU writes, in its order */
static const struct {
    uint8_t type, bit;
    const char *name;
} feature_names[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};
#define FEATURE_ENTRY_SIZE 48

const struct opt_desc qcow2_create_opts[] = {
    { "backing_file", OPT_STRING, "File name of a base image" },
    { "backing_fmt", OPT_STRING, "Image format of the base image" },
    { "cluster_size", OPT_SIZE, "qcow2 cluster size" },
    { "compat", OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])" },
    { "compression_type", OPT_STRING, "Compression method used for image cluster compression" },
    { "data_file", OPT_STRING, "File name of an external data file", true },
    { "encryption", OPT_BOOL, "Encrypt the image", true },
    { "encrypt.format", OPT_STRING, "Encrypt the image", true },
    { "extended_l2", OPT_BOOL, "Extended L2 tables" },
    { "lazy_refcounts", OPT_BOOL, "Postpone refcount updates" },
    { "preallocation", OPT_STRING,
      "Preallocation mode (allowed values: off, metadata, falloc, full)" },
    { "refcount_bits", OPT_NUMBER, "Width of a reference count entry in bits" },
    { "size", OPT_SIZE, "Virtual disk size" },
    { NULL, 0, NULL },
};

static int qcow2_probe(const uint8_t *buf, size_t len)
{
    if (len >= 8 && get_be32(buf) == QCOW2_MAGIC && get_be32(buf + 4) >= 2) {
        return 100;
    }
    return 0;
}

void qcow2_signal_corruption(struct qcow2 *s, const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    if (!s->read_only && !s->check_mode && !s->corrupt) {
        bdev_set_error(s->bd, "'%s': %s; image marked as corrupt, run 'blockctl check -r all'",
                       s->bd->filename, msg);
        s->corrupt = true;
        s->incompat |= QCOW2_INCOMPAT_CORRUPT;
        qcow2_write_header(s, NULL);
    } else {
        bdev_set_error(s->bd, "'%s': %s", s->bd->filename, msg);
        s->corrupt = true;
    }
    free(msg);
}

#define HDR_SECTOR 512
/* How much of the header cluster a header write reads and may place the name in */
#define HDR_AREA_MAX 65536u

/* Bytes the extensions (end marker included) need after the fixed header. */
static size_t exts_size(struct qcow2 *s, const char *backing_fmt, size_t ft_entries)
{
    size_t n = 8;

    if (backing_fmt) {
        n += 8 + ALIGN_UP(strlen(backing_fmt), 8);
    }
    if (s->has_bitmaps_ext) {
        n += 32;
    }
    for (size_t i = 0; i < s->nr_unknown_ext; i++) {
        n += 8 + ALIGN_UP((size_t)s->unknown_ext[i].len, 8);
    }
    if (ft_entries) {
        n += 8 + ft_entries * FEATURE_ENTRY_SIZE;
    }
    return n;
}

static size_t header_fixed_len(struct qcow2 *s)
{
    return s->version >= 3 ? s->header_length : QCOW2_V2_HEADER_SIZE;
}

/*
 * Put the fixed header and the extensions (with @ft_entries entries of the
 * feature name table) into zeroed @buf, which has room for them; returns
 * the end of the end-of-extensions marker.  The backing file fields are
 * left for the caller.
 */
static size_t put_header(struct qcow2 *s, const char *backing_fmt, size_t ft_entries,
                         uint8_t *buf)
{
    size_t hlen = header_fixed_len(s);
    size_t pos = hlen;

    put_be32(buf + 0, QCOW2_MAGIC);
    put_be32(buf + 4, s->version);
    put_be32(buf + 20, s->cluster_bits);
    put_be64(buf + 24, s->size);
    put_be32(buf + 32, s->crypt_method);
    put_be32(buf + 36, s->l1_size);
    put_be64(buf + 40, s->l1_offset);
    put_be64(buf + 48, s->reftable_offset);
    put_be32(buf + 56, s->reftable_clusters);
    put_be32(buf + 60, s->nb_snapshots);
    put_be64(buf + 64, s->snapshots_offset);
    if (s->version >= 3) {
        put_be64(buf + 72, s->incompat);
        put_be64(buf + 80, s->compat);
        put_be64(buf + 88, s->autoclear);
        put_be32(buf + 96, s->refcount_order);
        put_be32(buf + 100, hlen);
        if (hlen > QCOW2_V3_HEADER_SIZE) {
            buf[104] = s->compression_type;
        }
        if (s->unknown_header_len) {
            memcpy(buf + QCOW2_HEADER_SIZE, s->unknown_header, s->unknown_header_len);
        }
    }
    if (backing_fmt) {
        size_t l = strlen(backing_fmt);
        put_be32(buf + pos, QCOW2_EXT_BACKING_FORMAT);
        put_be32(buf + pos + 4, l);
        memcpy(buf + pos + 8, backing_fmt, l);
        pos += 8 + ALIGN_UP(l, 8);
    }
    if (s->has_bitmaps_ext) {
        put_be32(buf + pos, QCOW2_EXT_BITMAPS);
        put_be32(buf + pos + 4, 24);
        qcow2_bitmap_ext_encode(s, buf + pos + 8);
        pos += 32;
    }
    for (size_t i = 0; i < s->nr_unknown_ext; i++) {
        struct qcow2_ext *e = &s->unknown_ext[i];
        put_be32(buf + pos, e->type);
        put_be32(buf + pos + 4, e->len);
        memcpy(buf + pos + 8, e->data, e->len);
        pos += 8 + ALIGN_UP((size_t)e->len, 8);
    }
    if (ft_entries) {
        put_be32(buf + pos, QCOW2_EXT_FEATURE_TABLE);
        put_be32(buf + pos + 4, ft_entries * FEATURE_ENTRY_SIZE);
        for (size_t i = 0; i < ft_entries; i++) {
            uint8_t *e = buf + pos + 8 + i * FEATURE_ENTRY_SIZE;
            e[0] = feature_names[i].type;
            e[1] = feature_names[i].bit;
            memcpy(e + 2, feature_names[i].name, strlen(feature_names[i].name));
        }
        pos += 8 + ft_entries * FEATURE_ENTRY_SIZE;
    }
    return pos + 8; /* end of extensions: type 0, length 0 */
}

int qcow2_header_fits(struct qcow2 *s, const char *backing, const char *backing_fmt)
{
    size_t need = header_fixed_len(s) + exts_size(s, backing_fmt, 0);

    return need + (backing ? strlen(backing) : 0) <= s->cluster_size;
}

/* What the header on disk uses of the header cluster (read into @cur, @area bytes). */
struct hdr_use {
    size_t chain_end;         /* its fixed part and extensions: [0, chain_end) */
    uint64_t name_off;        /* its backing file name */
    uint32_t name_len;
};

static void header_use(const uint8_t *cur, size_t area, struct hdr_use *u)
{
    uint32_t version = get_be32(cur + 4);
    size_t hlen, bound, pos;

    memset(u, 0, sizeof(*u));
    if (get_be32(cur) != QCOW2_MAGIC || version < 2 || version > 3) {
        return; /* not a header yet (create) */
    }
    u->name_off = get_be64(cur + 8);
    u->name_len = get_be32(cur + 16);
    hlen = version == 2 ? QCOW2_V2_HEADER_SIZE : get_be32(cur + 100);
    bound = u->name_off ? MIN(u->name_off, (uint64_t)area) : area;
    u->chain_end = area; /* unless the end marker is found below */
    pos = hlen;
    while (pos + 8 <= bound) {
        uint32_t len = get_be32(cur + pos + 4);
        if (get_be32(cur + pos) == QCOW2_EXT_END) {
            u->chain_end = pos + 8;
            break;
        }
        if (len > bound - pos - 8) {
            break;
        }
        pos += 8 + ALIGN_UP((size_t)len, 8);
    }
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/*
 * Where a backing file name of @blen bytes that does not fit in sector 0
 * goes: where the header on disk has it if it does not change, else after
 * sector 0 on bytes the header on disk does not use.  0: no such place.
 */
static uint64_t tail_name_offset(const uint8_t *cur, size_t area, const struct hdr_use *u,
                                 const char *name, size_t blen)
{
    uint64_t cand[3];

    if (u->name_off >= HDR_SECTOR && u->name_len == blen && u->name_off + blen <= area &&
        !memcmp(cur + u->name_off, name, blen)) {
        return u->name_off;
    }
    cand[0] = HDR_SECTOR;
    cand[1] = ALIGN_UP((uint64_t)u->chain_end, 8);
    cand[2] = ALIGN_UP(u->name_off + u->name_len, 8);
    for (size_t i = 0; i < ARRAY_SIZE(cand); i++) {
        uint64_t c = cand[i];
        if (c >= HDR_SECTOR && c + blen <= area && !overlaps(c, blen, 0, u->chain_end) &&
            !overlaps(c, blen, u->name_off, u->name_len)) {
            return c;
        }
    }
    return 0;
}

/*
 * A header update may or may not have reached the disk, and writing the
 * old header back failed too: nothing further is written through this open
 * image (the data path refuses writes as for a corrupt image, but nothing
 * is marked on disk: the image itself is consistent, whichever header it
 * has, since callers keep what both reference allocated).
 */
static void set_unsure(struct qcow2 *s, int err)
{
    s->unsure = true;
    s->corrupt = true;
    if (s->bd) {
        bdev_set_error(s->bd, "'%s': a header update failed (%s) and may or may not have "
                       "reached the disk; no further writes to this image until it is "
                       "opened again", s->bd->filename, strerror(-err));
    }
}

/*
 * Write the header for the in-memory fields, with backing file @backing
 * (format @backing_fmt), and sync it.
 *
 * The header changes while the image is in use (bitmaps extension, dirty
 * and corrupt bits, autoclear bits, size, L1 and refcount table moves,
 * backing file) and each change must survive a kill at any instant and a
 * power cut, which keeps any subset of the 512-byte sectors written since
 * the last sync.  The scheme:
 *
 * - Sector 0 holds a complete header by itself: the fixed fields, every
 *   extension and the end-of-extensions marker.  The feature name table,
 *   which is optional, gets the room that is left (as many entries as
 *   fit, incompatible features first).
 * - The backing file name, which the header references by offset and
 *   length, follows the end marker in sector 0 when it fits there.
 *   Otherwise it lives after sector 0: where the header on disk has it if
 *   it does not change, else on bytes that the header on disk does not use
 *   (neither its extensions nor its name).
 * - Step 1, only when the name moves to or within the area after sector
 *   0: write the name, sync.  The header on disk is still the old one,
 *   complete and unchanged: old sector 0 and the bytes it references.
 * - Step 2, the switch: write sector 0, sync.  Any sector 0, old or new,
 *   is a whole header whose name is durable.  The write also rewrites
 *   sector 1 unchanged, so that a write cut off half-way (as the fault
 *   injection's "torn" does) still never splits sector 0.
 *
 * So every field (name, format, bitmaps, feature bits, size, tables)
 * switches in one sector, and every crash leaves the old or the new header.
 *
 * Failures: in step 1 the old header is known to be on disk.  In step 2,
 * either header may be on disk; after a failed sync nothing can be assumed
 * about what reached it.  Callers therefore keep everything that either
 * header references allocated (they leak rather than free).  The old
 * sector 0 is written again and synced: when that works, the old header is
 * known to be on disk again and the image stays usable; when it fails as
 * well, the image is marked unsure (set_unsure): no further writes.
 *
 * A header whose extensions do not fit in sector 0 (large unknown
 * extensions that another program added) is written in one piece, which
 * only a kill, not a power cut, leaves whole.
 */
static int write_header_with(struct qcow2 *s, const char *backing, const char *backing_fmt,
                             struct error **errp)
{
    const char *fn = s->bd ? s->bd->filename : s->create_name;
    size_t cs = s->cluster_size, area = MIN(cs, (size_t)HDR_AREA_MAX);
    size_t hlen = header_fixed_len(s), blen = backing ? strlen(backing) : 0;
    size_t base_end = hlen + exts_size(s, backing_fmt, 0);
    size_t ft = 0, chain_end, wlen, bufsz;
    uint64_t name_off = 0;
    bool sector0 = base_end <= HDR_SECTOR, name_in_tail = false;
    uint8_t *cur, *buf;
    struct hdr_use use;
    ssize_t got;
    int ret;

    if (s->unsure) {
        error_setg(errp, "'%s': cannot write the header: an earlier header update may or may "
                   "not have reached the disk", fn);
        return -EIO;
    }
    if (base_end + blen > cs) {
        error_setg(errp, "'%s': header extensions and backing file name do not fit in "
                   "one cluster", fn);
        return -ENOSPC;
    }
    /* room for a header that does not fit the area (written in one piece) */
    bufsz = MAX(area, MIN(cs, base_end + blen + 8 + ARRAY_SIZE(feature_names) *
                                                   FEATURE_ENTRY_SIZE));
    cur = xzalloc(bufsz);
    got = io_pread(s->fd, cur, bufsz, 0);
    if (got < 0) {
        error_setg_errno(errp, -got, "'%s': cannot read the header", fn);
        free(cur);
        return (int)got;
    }
    header_use(cur, area, &use);

    /* Layout */
    if (sector0 && blen && base_end + blen > HDR_SECTOR) {
        name_off = tail_name_offset(cur, area, &use, backing, blen);
        name_in_tail = name_off != 0;
        sector0 = name_in_tail;
    }
    if (s->version >= 3) {
        size_t used = sector0 ? base_end + (name_in_tail ? 0 : blen) : base_end + blen;
        size_t room = (sector0 ? HDR_SECTOR : cs) - used;
        if (room >= 8 + FEATURE_ENTRY_SIZE) {
            ft = MIN(ARRAY_SIZE(feature_names), (room - 8) / FEATURE_ENTRY_SIZE);
        }
        if (!sector0 && ft < ARRAY_SIZE(feature_names)) {
            ft = 0; /* as before: the whole table or none */
        }
    }
    buf = xmalloc(bufsz);
    memcpy(buf, cur, bufsz);
    memset(buf, 0, sector0 ? HDR_SECTOR : bufsz);
    chain_end = put_header(s, backing_fmt, ft, buf);
    if (blen) {
        if (!name_in_tail) {
            name_off = chain_end;
        }
        memcpy(buf + name_off, backing, blen);
        put_be64(buf + 8, name_off);
        put_be32(buf + 16, blen);
    }

    if (!sector0) {
        /* One piece: the extensions do not fit in sector 0. */
        wlen = MIN(ALIGN_UP(MAX(chain_end, name_off + blen), HDR_SECTOR), bufsz);
        ret = io_pwrite(s->fd, buf, wlen, 0);
    } else {
        wlen = MIN((size_t)2 * HDR_SECTOR, area);
        ret = 0;
        if (name_in_tail && memcmp(cur + name_off, backing, blen)) {
            /* step 1: the name, where the header on disk does not look */
            ret = io_pwrite(s->fd, buf + name_off, blen, name_off);
            if (ret == 0) {
                ret = qcow2_order_sync(s);
            }
            if (ret < 0) {
                error_setg_errno(errp, -ret, "'%s': cannot write the header", fn);
                goto out;
            }
            memcpy(cur + name_off, backing, blen);
        }
        /* step 2: the switch (sector 1 rewritten as it is now) */
        memcpy(buf + HDR_SECTOR, cur + HDR_SECTOR, wlen - HDR_SECTOR);
        ret = io_pwrite(s->fd, buf, wlen, 0);
    }
    if (ret == 0) {
        ret = qcow2_order_sync(s);
    }
    if (ret < 0) {
        /* Either header may be on disk: put the old one back. */
        int r = io_pwrite(s->fd, cur, wlen, 0);
        if (r == 0) {
            r = qcow2_order_sync(s);
        }
        if (r < 0) {
            set_unsure(s, ret);
        }
        error_setg_errno(errp, -ret, "'%s': cannot write the header", fn);
    }
out:
    free(cur);
    free(buf);
    return ret;
}

int qcow2_write_header(struct qcow2 *s, struct error **errp)
{
    return write_header_with(s, s->bd ? s->bd->backing_file : NULL,
                             s->bd ? s->bd->backing_format : NULL, errp);
}

/* Set the dirty bit (lazy refcounts) before the first unordered update. */
int qcow2_mark_dirty(struct qcow2 *s)
{
    int ret;

    if (s->dirty_on_disk || s->version < 3) {
        return 0;
    }
    ret = qcow2_order_sync(s);
    if (ret < 0) {
        return ret;
    }
    s->incompat |= QCOW2_INCOMPAT_DIRTY;
    ret = qcow2_write_header(s, NULL);
    if (ret < 0) {
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        return ret;
    }
    s->dirty_on_disk = true;
    return 0;
}

static const char *feature_name(struct qcow2 *s, const uint8_t *table, size_t n, int type,
                                int bit)
{
    (void)s;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *e = table + i * FEATURE_ENTRY_SIZE;
        if (e[0] == type && e[1] == bit) {
            return (const char *)e + 2;
        }
    }
    return NULL;
}

/* Parse header extensions from @hdr (one cluster) between @start and @end. */
static int read_extensions(struct qcow2 *s, const uint8_t *hdr, size_t start, size_t end,
                           const uint8_t **ft, size_t *ft_n, struct error **errp)
{
    const char *fn = s->bd->filename;
    size_t pos = start;

    while (pos + 8 <= end) {
        uint32_t type = get_be32(hdr + pos);
        uint32_t len = get_be32(hdr + pos + 4);
        const uint8_t *data = hdr + pos + 8;

        if (type == QCOW2_EXT_END) {
            return 0;
        }
        if (len > end - pos - 8) {
            error_setg(errp, "'%s': header extension 0x%08" PRIx32 " of %" PRIu32
                       " bytes runs past the header cluster", fn, type, len);
            return -EINVAL;
        }
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (len == 0 || len > 15 || memchr(data, 0, len)) {
                error_setg(errp, "'%s': invalid backing format extension (length %" PRIu32 ")",
                           fn, len);
                return -EINVAL;
            }
            free(s->backing_fmt);
            s->backing_fmt = xstrndup((const char *)data, len);
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            *ft = data;
            *ft_n = len / FEATURE_ENTRY_SIZE;
            break;
        case QCOW2_EXT_BITMAPS:
            if (len != 24) {
                error_setg(errp, "'%s': bitmaps extension has invalid length %" PRIu32
                           " (expected 24)", fn, len);
                return -EINVAL;
            }
            if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
                /*
                 * A program without bitmap support wrote the image after
                 * the bitmaps: they are all stale.  QEMU ignores them (and
                 * drops the extension on its next header update).
                 */
                break;
            }
            s->has_bitmaps_ext = true;
            s->nb_bitmaps = get_be32(data);
            if (get_be32(data + 4) != 0) {
                error_setg(errp, "'%s': bitmaps extension: reserved field is not zero", fn);
                return -EINVAL;
            }
            s->bitmap_dir_size = get_be64(data + 8);
            s->bitmap_dir_offset = get_be64(data + 16);
            break;
        default:
            s->unknown_ext = xrealloc(s->unknown_ext,
                                      (s->nr_unknown_ext + 1) * sizeof(*s->unknown_ext));
            s->unknown_ext[s->nr_unknown_ext].type = type;
            s->unknown_ext[s->nr_unknown_ext].len = len;
            s->unknown_ext[s->nr_unknown_ext].data = xmalloc(len);
            memcpy(s->unknown_ext[s->nr_unknown_ext].data, data, len);
            s->nr_unknown_ext++;
            break;
        }
        pos += 8 + ALIGN_UP((uint64_t)len, 8);
    }
    return 0;
}

static void free_state(struct qcow2 *s)
{
    /* (a log still there is the next writer's to replay) */
    qcow2_wal_close(s, false);
    free(s->l1);
    s->l1 = NULL;
    free(s->reftable);
    s->reftable = NULL;
    qcow2_cache_destroy(&s->l2_cache);
    qcow2_cache_destroy(&s->rb_cache);
    free(s->backing_fmt);
    s->backing_fmt = NULL;
    for (size_t i = 0; i < s->nr_unknown_ext; i++) {
        free(s->unknown_ext[i].data);
    }
    free(s->unknown_ext);
    s->unknown_ext = NULL;
    s->nr_unknown_ext = 0;
    free(s->unknown_header);
    s->unknown_header = NULL;
    free(s->decref);
    s->decref = NULL;
    qcow2_free_snapshots(s);
    qcow2_free_bitmaps(s);
}

static int read_table(struct qcow2 *s, uint64_t off, uint64_t entries, uint64_t **out,
                      const char *what, struct error **errp)
{
    size_t bytes = entries * 8;
    uint64_t *t = xmalloc(bytes ? bytes : 8);
    ssize_t n;

    n = bytes ? io_pread(s->fd, t, bytes, off) : 0;
    if (n < 0) {
        error_setg_errno(errp, -n, "'%s': cannot read the %s", s->bd->filename, what);
        free(t);
        return (int)n;
    }
    if ((size_t)n < bytes) {
        if (s->eof_zero) {
            /* check reports it; the missing part reads as zeroes */
            memset((uint8_t *)t + n, 0, bytes - n);
        } else {
            error_setg(errp, "'%s': the %s (offset 0x%" PRIx64 ", %zu bytes) lies past the end "
                       "of the file", s->bd->filename, what, off, bytes);
            free(t);
            return -EINVAL;
        }
    }
    for (uint64_t i = 0; i < entries; i++) {
        t[i] = be64toh(t[i]);
    }
    *out = t;
    return 0;
}

/*
 * What a writer does when it gets the image: clear unknown autoclear
 * bits, repair refcounts left dirty by a crash with lazy refcounts.
 */
static int writer_setup(struct qcow2 *s, struct error **errp)
{
    struct bdev *bd = s->bd;
    const char *fn = bd->filename;
    unsigned replayed;
    int ret = 0;

    bool rewrite = false;

    /* Unknown autoclear bits must be cleared by a writer (qcow2.txt). */
    if (s->autoclear & ~QCOW2_AUTOCLEAR_KNOWN) {
        s->autoclear &= QCOW2_AUTOCLEAR_KNOWN;
        rewrite = true;
    }
    if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) && s->version >= 3) {
        /* Stale bitmap extension (see read_extensions): dropped. */
    }
    /* A kill log a killed writer of this boot left (wal.c): applied if the
     * image has the dirty bit still, else stale and removed. */
    ret = qcow2_wal_replay(s, &replayed);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot apply the log of the killed writer", fn);
        return ret;
    }
    if (s->incompat & QCOW2_INCOMPAT_DIRTY) {
        struct check_result res;
        struct error *err = NULL;

        /* Left dirty by a crash with lazy refcounts (or a kill): rebuild them. */
        memset(&res, 0, sizeof(res));
        s->check_mode = true;
        ret = qcow2_check(bd, &res, CHECK_FIX_LEAKS | CHECK_FIX_ERRORS | CHECK_QUIET, &err);
        s->check_mode = false;
        if (ret < 0 || res.corruptions || res.check_errors) {
            if (!err) {
                error_setg(&err, "'%s': the image was not closed cleanly and repairing "
                           "its refcounts failed", fn);
            }
            error_propagate(errp, err);
            ret = ret < 0 ? ret : -EIO;
            return ret < 0 ? ret : -EIO;
        }
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        rewrite = true;
    }
    if (rewrite) {
        ret = qcow2_write_header(s, errp);
        if (ret == 0 && s->unordered) {
            ret = io_fdatasync(s->fd);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': cannot update the header", fn);
            return ret < 0 ? ret : -EIO;
        }
    }
    qcow2_wal_open(s);
    return 0;
}

static int qcow2_open(struct bdev *bd, unsigned flags, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    const char *fn = bd->filename;
    uint8_t head[QCOW2_HEADER_SIZE];
    uint8_t *hdr = NULL;
    const uint8_t *ft = NULL;
    size_t ft_n = 0;
    int64_t fsize;
    ssize_t n;
    uint64_t l2_coverage, need_l1;
    int ret = -EINVAL;

    s->bd = bd;
    s->fd = bd->file->fd;
    s->prealloc_detected = -1;
    s->unordered = flags & BDEV_O_UNORDERED;
    s->kill_safe = flags & BDEV_O_KILL_SAFE;
    s->read_only = bd->read_only;
    s->check_mode = flags & BDEV_O_CHECK;
    s->eof_zero = s->check_mode || ((flags & BDEV_O_INFO) && !(flags & BDEV_O_RDWR));
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->range_cond, NULL);

    fsize = bfile_size(bd->file);
    if (fsize < 0) {
        error_setg_errno(errp, -fsize, "'%s': cannot get size", fn);
        return (int)fsize;
    }
    s->file_size = fsize;
    memset(head, 0, sizeof(head));
    n = io_pread(s->fd, head, sizeof(head), 0);
    if (n < 0) {
        error_setg_errno(errp, -n, "'%s': cannot read the header", fn);
        return (int)n;
    }
    if (n < 4 || get_be32(head) != QCOW2_MAGIC) {
        error_setg(errp, "'%s': not a qcow2 image (bad magic)", fn);
        return -EINVAL;
    }
    if (n < QCOW2_V2_HEADER_SIZE) {
        error_setg(errp, "'%s': qcow2 header too short", fn);     /* QEMU's words */
        return -EINVAL;
    }
    s->version = get_be32(head + 4);
    if (s->version < 2 || s->version > 3) {
        error_setg(errp, "'%s': unsupported qcow2 version %" PRIu32, fn, s->version);
        return -ENOTSUP;
    }
    s->backing_file_offset = get_be64(head + 8);
    s->backing_file_size = get_be32(head + 16);
    s->cluster_bits = get_be32(head + 20);
    s->size = get_be64(head + 24);
    s->crypt_method = get_be32(head + 32);
    s->l1_size = get_be32(head + 36);
    s->l1_offset = get_be64(head + 40);
    s->reftable_offset = get_be64(head + 48);
    s->reftable_clusters = get_be32(head + 56);
    s->nb_snapshots = get_be32(head + 60);
    s->snapshots_offset = get_be64(head + 64);

    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        error_setg(errp, "'%s': invalid cluster_bits %" PRIu32 " (must be 9..21)", fn,
                   s->cluster_bits);
        return -EINVAL;
    }
    s->cluster_size = 1ULL << s->cluster_bits;

    if (s->version == 2) {
        s->refcount_order = 4;
        s->header_length = QCOW2_V2_HEADER_SIZE;
    } else {
        if (n < QCOW2_V3_HEADER_SIZE) {     /* QEMU's words */
            error_setg(errp, "'%s': qcow2 header too short", fn);
            return -EINVAL;
        }
        s->incompat = get_be64(head + 72);
        s->compat = get_be64(head + 80);
        s->autoclear = get_be64(head + 88);
        s->refcount_order = get_be32(head + 96);
        s->header_length = get_be32(head + 100);
        if (s->header_length < QCOW2_V3_HEADER_SIZE || s->header_length > s->cluster_size ||
            s->header_length % 8) {
            error_setg(errp, "'%s': invalid header_length %" PRIu32, fn, s->header_length);
            return -EINVAL;
        }
        if (s->header_length > QCOW2_V3_HEADER_SIZE) {
            s->compression_type = head[104];
        }
    }
    /* Read the whole header cluster (extensions, backing name). */
    hdr = xzalloc(s->cluster_size);
    n = io_pread(s->fd, hdr, s->cluster_size, 0);
    if (n < 0) {
        error_setg_errno(errp, -n, "'%s': cannot read the header", fn);
        ret = (int)n;
        goto fail;
    }
    if (s->header_length > QCOW2_HEADER_SIZE) {
        s->unknown_header_len = s->header_length - QCOW2_HEADER_SIZE;
        s->unknown_header = xmalloc(s->unknown_header_len);
        memcpy(s->unknown_header, hdr + QCOW2_HEADER_SIZE, s->unknown_header_len);
    }

    /* Backing file name */
    if (s->backing_file_offset) {
        if (s->backing_file_offset > s->cluster_size ||
            s->backing_file_size > QCOW2_MAX_BACKING_NAME ||
            s->backing_file_size > s->cluster_size - s->backing_file_offset ||
            s->backing_file_offset < s->header_length) {
            error_setg(errp, "'%s': invalid backing file name location (offset %" PRIu64
                       ", %" PRIu32 " bytes)", fn, s->backing_file_offset,
                       s->backing_file_size);
            goto fail;
        }
        if (s->backing_file_size) {
            if (memchr(hdr + s->backing_file_offset, 0, s->backing_file_size)) {
                error_setg(errp, "'%s': backing file name contains a NUL byte", fn);
                goto fail;
            }
            bd->backing_file = xstrndup((const char *)hdr + s->backing_file_offset,
                                        s->backing_file_size);
        }
    }

    ret = read_extensions(s, hdr, s->header_length,
                          s->backing_file_offset ? s->backing_file_offset : s->cluster_size,
                          &ft, &ft_n, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = -EINVAL;

    /* Features */
    if (s->incompat & ~QCOW2_INCOMPAT_KNOWN) {
        char list[512] = "";
        for (int bit = 0; bit < 64; bit++) {
            if ((s->incompat & ~QCOW2_INCOMPAT_KNOWN) & (1ULL << bit)) {
                const char *nm = feature_name(s, ft, ft_n, 0, bit);
                char item[80];
                if (nm) {
                    snprintf(item, sizeof(item), "%.46s", nm);
                } else {
                    snprintf(item, sizeof(item), "unknown incompatible feature bit %d", bit);
                }
                if (strlen(list) + strlen(item) + 3 < sizeof(list)) {
                    if (*list) {
                        strcat(list, ", ");
                    }
                    strcat(list, item);
                }
            }
        }
        error_setg(errp, "'%s': unsupported qcow2 feature(s): %s", fn, list);
        ret = -ENOTSUP;
        goto fail;
    }
    if (s->incompat & QCOW2_INCOMPAT_DATA_FILE) {
        error_setg(errp, "'%s': qcow2 images with an external data file are not supported", fn);
        ret = -ENOTSUP;
        goto fail;
    }
    if (s->crypt_method) {
        error_setg(errp, "'%s': encrypted qcow2 images are not supported", fn);
        ret = -ENOTSUP;
        goto fail;
    }
    if (s->version == 3 && s->refcount_order > 6) {
        error_setg(errp, "'%s': invalid refcount_order %" PRIu32 " (must be 0..6)", fn,
                   s->refcount_order);
        goto fail;
    }
    if (s->compression_type > QCOW2_COMPRESSION_ZSTD) {
        error_setg(errp, "'%s': unknown compression type %u", fn, s->compression_type);
        ret = -ENOTSUP;
        goto fail;
    }
    if ((s->compression_type != QCOW2_COMPRESSION_ZLIB) !=
        !!(s->incompat & QCOW2_INCOMPAT_COMPRESSION)) {
        error_setg(errp, "'%s': compression type field and the compression type feature bit "
                   "disagree", fn);
        goto fail;
    }
    s->ext_l2 = s->incompat & QCOW2_INCOMPAT_EXTL2;
    if (s->ext_l2 && s->cluster_bits < 14) {
        error_setg(errp, "'%s': extended L2 entries need clusters of at least 16 KiB", fn);
        goto fail;
    }
    s->corrupt = s->incompat & QCOW2_INCOMPAT_CORRUPT;
    if (s->corrupt && !s->read_only && !s->check_mode) {
        error_setg(errp, "'%s': the image is marked as corrupt and cannot be opened for "
                   "writing", fn);
        error_append_hint(errp, "Repair it with 'blockctl check -r all %s'", fn);
        ret = -EACCES;
        goto fail;
    }

    /* Derived geometry */
    s->refcount_bits = 1u << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX : (1ULL << s->refcount_bits) - 1;
    s->refblock_bits = s->cluster_bits + 3 - s->refcount_order;
    s->l2_entry_size = s->ext_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->ext_l2 ? 4 : 3);
    s->l2_entries = 1u << s->l2_bits;
    s->sc_bits = s->ext_l2 ? 5 : 0;
    s->sc_size = s->cluster_size >> s->sc_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ULL << (s->cluster_bits - 8)) - 1;
    s->coffset_mask = (1ULL << s->csize_shift) - 1;

    /* Virtual size and L1 */
    l2_coverage = 1ULL << (s->cluster_bits + s->l2_bits);
    if (s->size > (uint64_t)INT64_MAX - 511) {
        error_setg(errp, "'%s': invalid virtual size %" PRIu64, fn, s->size);
        goto fail;
    }
    need_l1 = DIV_ROUND_UP(s->size, l2_coverage);
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "'%s': L1 table too large (%" PRIu32 " entries)", fn, s->l1_size);
        goto fail;
    }
    if (need_l1 > s->l1_size) {
        error_setg(errp, "'%s': L1 table too small (%" PRIu32 " entries) for the virtual size "
                   "%" PRIu64, fn, s->l1_size, s->size);
        goto fail;
    }
    if (s->l1_size && !IS_ALIGNED(s->l1_offset, s->cluster_size)) {
        error_setg(errp, "'%s': L1 table offset 0x%" PRIx64 " is not cluster aligned", fn,
                   s->l1_offset);
        goto fail;
    }
    if (s->l1_size && !s->eof_zero &&
        (s->l1_offset > (uint64_t)fsize ||
         (uint64_t)s->l1_size * 8 > (uint64_t)fsize - s->l1_offset)) {
        error_setg(errp, "'%s': L1 table (offset 0x%" PRIx64 ", %" PRIu32 " entries) lies "
                   "past the end of the file", fn, s->l1_offset, s->l1_size);
        goto fail;
    }
    /* Refcount table */
    if (!IS_ALIGNED(s->reftable_offset, s->cluster_size) || s->reftable_offset == 0) {
        error_setg(errp, "'%s': refcount table offset 0x%" PRIx64 " is invalid", fn,
                   s->reftable_offset);
        goto fail;
    }
    if (s->reftable_clusters == 0 ||
        (uint64_t)s->reftable_clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
        error_setg(errp, "'%s': invalid refcount table size (%" PRIu32 " clusters)", fn,
                   s->reftable_clusters);
        goto fail;
    }
    if (s->reftable_offset > (uint64_t)fsize ||
        (uint64_t)s->reftable_clusters * s->cluster_size > (uint64_t)fsize - s->reftable_offset) {
        /* QEMU tolerates a table whose tail is past EOF (reads zeroes). */
        if (s->reftable_offset >= (uint64_t)fsize && !s->eof_zero) {
            error_setg(errp, "'%s': refcount table (offset 0x%" PRIx64 ") lies past the end of "
                       "the file", fn, s->reftable_offset);
            goto fail;
        }
    }
    /* Snapshot table location */
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        error_setg(errp, "'%s': too many snapshots (%" PRIu32 ")", fn, s->nb_snapshots);
        goto fail;
    }
    if (s->nb_snapshots && (!IS_ALIGNED(s->snapshots_offset, s->cluster_size) ||
                            s->snapshots_offset >= (uint64_t)fsize)) {
        error_setg(errp, "'%s': snapshot table offset 0x%" PRIx64 " is invalid", fn,
                   s->snapshots_offset);
        goto fail;
    }

    /* QEMU's block layer counts whole sectors of the header's size. */
    bd->size = ALIGN_DOWN(s->size, 512);
    if (s->backing_fmt) {
        bd->backing_format = xstrdup(s->backing_fmt);
    }

    /* Tables */
    if (s->l1_size) {
        ret = read_table(s, s->l1_offset, s->l1_size, &s->l1, "L1 table", errp);
        if (ret < 0) {
            goto fail;
        }
    } else {
        s->l1 = xzalloc(8);
    }
    ret = qcow2_refcount_init(s, errp);
    if (ret < 0) {
        goto fail;
    }
    {
        /* L2 cache: about 4 MiB (at least 16 tables); refblocks: 1 MiB. */
        size_t nl2 = MAX((size_t)16, (size_t)((4u << 20) >> s->cluster_bits));
        size_t nrb = MAX((size_t)8, (size_t)((1u << 20) >> s->cluster_bits));
        qcow2_cache_init(&s->l2_cache, "L2 table", MIN(nl2, (size_t)4096), s->cluster_size);
        qcow2_cache_init(&s->rb_cache, "refcount block", MIN(nrb, (size_t)2048),
                         s->cluster_size);
    }
    ret = qcow2_read_snapshots(s, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_read_bitmap_dir(s, errp);
    if (ret < 0) {
        goto fail;
    }

    if (!s->read_only && s->check_mode && (s->incompat & QCOW2_INCOMPAT_DIRTY)) {
        /* check -r: the image as a killed writer left it, its kill log applied */
        unsigned replayed;
        ret = qcow2_wal_replay(s, &replayed);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': cannot apply the log of the killed writer", fn);
            goto fail;
        }
    }
    if (!s->read_only && !s->check_mode) {
        ret = writer_setup(s, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    if (!s->check_mode) {
        ret = qcow2_bitmaps_register(s, !s->read_only && !(flags & BDEV_O_NO_BITMAPS), errp);
        if (ret < 0) {
            bdev_bitmaps_free(bd);
            goto fail;
        }
    }
    free(hdr);
    return 0;

fail:
    free(hdr);
    free_state(s);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->range_cond);
    return ret < 0 ? ret : -EINVAL;
}

static int qcow2_flush(struct bdev *bd)
{
    struct qcow2 *s = bd->opaque;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_flush_metadata(s);
    if (ret == 0) {
        /* the tables are in the file: the kill log starts again */
        qcow2_wal_flushed(s);
    }
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && !s->read_only && !s->corrupt && bd->bitmaps_changed) {
        /* bitmaps added or removed: the directory follows at a flush */
        ret = qcow2_bitmap_store_hook(bd, true, NULL);
    }
    if (ret == 0) {
        ret = io_fdatasync(s->fd);
    }
    if (ret < 0) {
        bdev_set_error(bd, "'%s': flush failed: %s", bd->filename, strerror(-ret));
    }
    return ret;
}

static int write_back(struct bdev *bd, bool closing, struct error **errp);

static int qcow2_close(struct bdev *bd, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    int ret = 0;

    if (!s->read_only) {
        ret = write_back(bd, true, errp);
    }
    free_state(s);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->range_cond);
    return ret;
}

/*
 * Write everything back: metadata, the bitmaps (stored with their
 * contents, no longer in use), the dirty bit cleared.  @closing: the
 * state goes next, and the header's clearing need not be synced (if it
 * is lost, the next open repairs).
 */
static int write_back(struct bdev *bd, bool closing, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_flush_metadata(s);
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && !s->corrupt && (s->bitmaps_loaded_rw || bdev_bitmaps_need_store(bd))) {
        ret = qcow2_bitmap_store_hook(bd, false, errp);
    }
    if (ret == 0) {
        pthread_mutex_lock(&s->lock);
        ret = qcow2_flush_metadata(s);
        pthread_mutex_unlock(&s->lock);
    }
    if (ret == 0) {
        ret = qcow2_order_sync(s);
    }
    if (ret == 0 && s->dirty_on_disk && !s->unsure) {
        /* (unsure: the dirty bit stays, and the next open repairs) */
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        ret = qcow2_write_header(s, errp);
        if (ret == 0 && !closing) {
            ret = qcow2_order_sync(s);
        }
        if (ret == 0) {
            s->dirty_on_disk = false;
            qcow2_wal_close(s, true);
        }
    }
    if (ret < 0 && errp && !*errp) {
        error_setg_errno(errp, -ret, "'%s': cannot write back metadata", bd->filename);
    }
    return ret;
}

/*
 * Read-only <-> read-write without closing: caches stay warm.  To
 * read-only, everything is written back and the bitmaps stored (no longer
 * in use); to read-write, the bitmaps are loaded and marked in use again.
 */
static int qcow2_reopen(struct bdev *bd, unsigned flags, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    int ret;

    if (!(flags & BDEV_O_RDWR)) {
        ret = write_back(bd, false, errp);
        if (ret == 0) {
            s->read_only = true;
            s->bitmaps_track = false;
        }
        return ret;
    }
    if (s->corrupt) {
        error_setg(errp, "'%s': the image is marked as corrupt and cannot be opened for "
                   "writing", bd->filename);
        return -EACCES;
    }
    s->read_only = false;
    ret = writer_setup(s, errp);
    if (ret == 0 && !(flags & BDEV_O_NO_BITMAPS)) {
        /* every consistent persistent bitmap in memory, then in use on disk */
        bool any = false;
        for (struct bdev_bitmap *b = bd->bitmaps; b && ret == 0; b = b->next) {
            struct dirty_bitmap *bm;
            int i;
            if (!b->persistent || b->inconsistent) {
                continue;
            }
            any = true;
            if (b->bm) {
                continue;
            }
            pthread_mutex_lock(&s->lock);
            i = qcow2_find_bitmap(s, b->name);
            ret = i < 0 ? -ENOENT : qcow2_bitmap_load(s, &s->bitmaps[i], &bm);
            pthread_mutex_unlock(&s->lock);
            if (ret == 0) {
                bdev_bitmap_loaded(bd, b, bm);
            } else {
                error_setg_errno(errp, -ret, "'%s': cannot load bitmap '%s'", bd->filename,
                                 b->name);
            }
        }
        if (ret == 0) {
            s->bitmaps_track = true;
        }
        if (ret == 0 && any) {
            ret = qcow2_bitmap_store_hook(bd, true, errp);
        }
    }
    if (ret < 0) {
        s->read_only = true;
    }
    return ret;
}

static int qcow2_get_info(struct bdev *bd, struct image_info *out, struct error **errp)
{
    struct qcow2 *s = bd->opaque;

    (void)errp;
    out->cluster_size = s->cluster_size;
    out->has_dirty_flag = true;
    out->dirty_flag = s->incompat & QCOW2_INCOMPAT_DIRTY;
    out->is_qcow2 = true;
    out->compat = s->version >= 3 ? "1.1" : "0.10";
    out->compression_type = s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib";
    out->lazy_refcounts = s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS;
    out->refcount_bits = s->refcount_bits;
    out->corrupt = s->incompat & QCOW2_INCOMPAT_CORRUPT;
    out->extended_l2 = s->ext_l2;
    out->nr_snapshots = s->nb_snapshots;
    out->snapshots = xcalloc(s->nb_snapshots ? s->nb_snapshots : 1, sizeof(*out->snapshots));
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        struct snapshot_info *o = &out->snapshots[i];
        o->id = xstrdup(sn->id);
        o->name = xstrdup(sn->name);
        o->vm_state_size = sn->vm_state_size;
        if (sn->extra_size >= 8) {
            o->vm_state_size = get_be64(sn->extra);
        }
        o->date_sec = sn->date_sec;
        o->date_nsec = sn->date_nsec;
        o->vm_clock_nsec = sn->vm_clock_nsec;
        if (sn->extra_size >= 24) {
            o->has_icount = true;
            o->icount = get_be64(sn->extra + 16);
            if (o->icount == UINT64_MAX) {
                o->has_icount = false;
            }
        }
    }
    out->has_bitmaps = s->has_bitmaps_ext && s->nb_bitmaps;
    out->bitmap_dir_offset = s->has_bitmaps_ext ? s->bitmap_dir_offset : 0;
    out->nr_bitmaps = s->has_bitmaps_ext ? s->nb_bitmaps : 0;
    out->bitmaps = xcalloc(out->nr_bitmaps ? out->nr_bitmaps : 1, sizeof(*out->bitmaps));
    for (size_t i = 0; i < out->nr_bitmaps; i++) {
        out->bitmaps[i].name = xstrdup(s->bitmaps[i].name);
        out->bitmaps[i].granularity = 1ULL << s->bitmaps[i].granularity_bits;
        out->bitmaps[i].flags = s->bitmaps[i].flags & (BITMAP_FLAG_IN_USE | BITMAP_FLAG_AUTO);
        if (s->bitmaps[i].bm) {
            /* in_use is ours (open read-write), not a crash's */
            out->bitmaps[i].flags &= ~BITMAP_FLAG_IN_USE;
        }
        out->bitmaps[i].inconsistent = out->bitmaps[i].flags & BITMAP_FLAG_IN_USE;
    }
    return 0;
}

static int qcow2_change_backing(struct bdev *bd, const char *file, const char *fmt,
                                struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    int ret;

    if (file && strlen(file) > QCOW2_MAX_BACKING_NAME) {
        error_setg(errp, "'%s': backing file name too long", bd->filename);
        return -EINVAL;
    }
    if (fmt && strlen(fmt) > 15) {
        error_setg(errp, "'%s': backing format name too long", bd->filename);
        return -EINVAL;
    }
    pthread_mutex_lock(&s->lock);
    ret = qcow2_flush_metadata(s);
    if (ret == 0) {
        ret = io_fdatasync(s->fd);
    }
    if (ret < 0) {
        pthread_mutex_unlock(&s->lock);
        error_setg_errno(errp, -ret, "'%s': cannot write back metadata", bd->filename);
        return ret;
    }
    ret = write_header_with(s, file, file ? fmt : NULL, errp);
    if (ret == 0 && s->unordered) {
        ret = io_fdatasync(s->fd);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': cannot sync", bd->filename);
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    free(bd->backing_file);
    free(bd->backing_format);
    free(s->backing_fmt);
    bd->backing_file = file ? xstrdup(file) : NULL;
    bd->backing_format = (file && fmt) ? xstrdup(fmt) : NULL;
    s->backing_fmt = (file && fmt) ? xstrdup(fmt) : NULL;
    free(bd->full_backing_file);
    bd->full_backing_file = file ? bdev_path_combine(bd->filename, file) : NULL;
    return 0;
}

static uint64_t qcow2_compress_granularity(struct bdev *bd)
{
    struct qcow2 *s = bd->opaque;
    return s->cluster_size;
}

/* --- create --- */

struct create_params {
    uint64_t size;
    uint64_t cluster_size;
    int version;
    bool lazy;
    bool ext_l2;
    unsigned refcount_bits;
    int compression;
    const char *prealloc;
    const char *backing;
    const char *backing_fmt;
};

static int parse_create_opts(const char *fn, const struct optlist *o, struct create_params *p,
                             struct error **errp)
{
    const char *v;
    uint64_t num;
    int r;

    memset(p, 0, sizeof(*p));
    p->cluster_size = 65536;
    p->version = 3;
    p->refcount_bits = 16;
    if (opts_get_size(o, "size", &p->size, errp) < 0) {
        return -EINVAL;
    }
    r = opts_get_size(o, "cluster_size", &p->cluster_size, errp);
    if (r < 0) {
        return -EINVAL;
    }
    if (!IS_POWER_OF_2(p->cluster_size) || p->cluster_size < 512 ||
        p->cluster_size > (2u << 20)) {
        error_setg(errp, "'%s': cluster size must be a power of two between 512 and 2048k", fn);
        return -EINVAL;
    }
    v = opts_get(o, "compat");
    if (v) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
            p->version = 2;
        } else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
            p->version = 3;
        } else {
            error_setg(errp, "'%s': invalid compat level '%s' (use 0.10/v2 or 1.1/v3)", fn, v);
            return -EINVAL;
        }
    }
    if (opts_get_bool(o, "lazy_refcounts", &p->lazy, errp) < 0 ||
        opts_get_bool(o, "extended_l2", &p->ext_l2, errp) < 0) {
        return -EINVAL;
    }
    r = opts_get_number(o, "refcount_bits", &num, errp);
    if (r < 0) {
        return -EINVAL;
    }
    if (r > 0) {
        if (num == 0 || num > 64 || !IS_POWER_OF_2(num)) {
            error_setg(errp, "'%s': refcount width must be a power of two and may not exceed "
                       "64 bits", fn);
            return -EINVAL;
        }
        p->refcount_bits = num;
    }
    v = opts_get(o, "compression_type");
    if (v) {
        if (!strcmp(v, "zlib")) {
            p->compression = QCOW2_COMPRESSION_ZLIB;
        } else if (!strcmp(v, "zstd")) {
            p->compression = QCOW2_COMPRESSION_ZSTD;
        } else {
            error_setg(errp, "'%s': invalid compression type '%s' (use zlib or zstd)", fn, v);
            return -EINVAL;
        }
    }
    p->prealloc = opts_get(o, "preallocation");
    if (p->prealloc && strcmp(p->prealloc, "off") && strcmp(p->prealloc, "metadata") &&
        strcmp(p->prealloc, "falloc") && strcmp(p->prealloc, "full")) {
        error_setg(errp, "'%s': invalid preallocation mode '%s' (use off, metadata, falloc "
                   "or full)", fn, p->prealloc);
        return -EINVAL;
    }
    if (p->prealloc && !strcmp(p->prealloc, "off")) {
        p->prealloc = NULL;
    }
    if (opts_get(o, "data_file")) {
        error_setg(errp, "'%s': external data files are not supported", fn);
        return -ENOTSUP;
    }
    if (opts_get(o, "encrypt.format") || opts_get(o, "encryption")) {
        bool enc = true;
        if (opts_get(o, "encryption") && opts_get_bool(o, "encryption", &enc, NULL) >= 0 &&
            !enc && !opts_get(o, "encrypt.format")) {
            /* encryption=off: fine */
        } else {
            error_setg(errp, "'%s': encrypted qcow2 images are not supported", fn);
            return -ENOTSUP;
        }
    }
    p->backing = opts_get(o, "backing_file");
    p->backing_fmt = opts_get(o, "backing_fmt");
    if (p->backing && !*p->backing) {
        p->backing = NULL;
    }
    if (p->version == 2) {
        const char *what = NULL;
        if (p->lazy) {
            what = "lazy refcounts";
        } else if (p->refcount_bits != 16) {
            what = "refcount widths other than 16 bits";
        } else if (p->compression != QCOW2_COMPRESSION_ZLIB) {
            what = "compression types other than zlib";
        } else if (p->ext_l2) {
            what = "extended L2 entries";
        }
        if (what) {
            error_setg(errp, "'%s': %s need compatibility level 1.1 (compat=1.1)", fn, what);
            return -EINVAL;
        }
    }
    if (p->ext_l2 && p->cluster_size < 16384) {
        error_setg(errp, "'%s': extended L2 entries are only supported with cluster sizes of "
                   "at least 16384 bytes", fn);
        return -EINVAL;
    }
    if (p->backing && strlen(p->backing) > QCOW2_MAX_BACKING_NAME) {
        error_setg(errp, "'%s': backing file name too long", fn);
        return -ENOTSUP;     /* (options that do not go together: exit 1) */
    }
    if (p->backing_fmt && !p->backing) {
        error_setg(errp, "'%s': a backing format cannot be given without a backing file", fn);
        return -ENOTSUP;     /* (options that do not go together: exit 1) */
    }
    if (p->backing && p->prealloc && !p->ext_l2) {
        /* preallocated clusters would hide the backing file's data */
        error_setg(errp, "'%s': a backing file and preallocation can only be used together "
                   "with extended_l2=on", fn);
        return -ENOTSUP;     /* (options that do not go together: exit 1) */
    }
    if (p->backing_fmt && (strlen(p->backing_fmt) > 15 || !*p->backing_fmt)) {
        error_setg(errp, "'%s': invalid backing format name '%s'", fn, p->backing_fmt);
        return -EINVAL;
    }
    return 0;
}

static int qcow2_check_create(const char *filename, const struct optlist *o,
                              struct error **errp)
{
    struct create_params p;

    return parse_create_opts(filename, o, &p, errp);
}

int qcow2_create(const char *filename, const struct optlist *o, unsigned flags,
                 struct error **errp)
{
    struct create_params p;
    struct qcow2 st, *s = &st;
    struct bfile *f;
    uint64_t cs, l2_coverage, l1_size, l1_clusters, entries_per_rb;
    uint64_t total, nrb, nrt, l1_off, rt_off, file_end;
    uint8_t *buf = NULL;
    int ret;

    ret = parse_create_opts(filename, o, &p, errp);
    if (ret < 0) {
        return ret;
    }
    /* as qemu-img: the size is rounded up to whole sectors */
    p.size = ALIGN_UP(p.size, 512);
    cs = p.cluster_size;
    l2_coverage = cs * (cs / (p.ext_l2 ? 16 : 8));
    l1_size = DIV_ROUND_UP(p.size, l2_coverage);
    if (p.size > (uint64_t)INT64_MAX - 511 || l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "'%s': the image size is too large for format 'qcow2' (try using a "
                   "larger cluster size)", filename);
        return -EFBIG;
    }
    if (l1_size == 0) {
        l1_size = 1;
    }
    l1_clusters = DIV_ROUND_UP(l1_size * 8, cs);
    entries_per_rb = cs * 8 / p.refcount_bits;

    /*
     * Layout as qemu-img: header, refcount table, refcount block(s), L1.
     * Solve for the number of refcount blocks covering everything.
     */
    nrb = 1;
    nrt = 1;
    for (;;) {
        total = 1 + nrt + nrb + l1_clusters;
        uint64_t need_rb = DIV_ROUND_UP(total, entries_per_rb);
        uint64_t need_rt = DIV_ROUND_UP(need_rb * 8, cs);
        if (need_rb <= nrb && need_rt <= nrt) {
            break;
        }
        nrb = MAX(nrb, need_rb);
        nrt = MAX(nrt, need_rt);
    }
    rt_off = cs;
    l1_off = (1 + nrt + nrb) * cs;
    file_end = l1_off + l1_size * 8;

    memset(s, 0, sizeof(*s));
    s->create_name = filename;
    s->version = p.version;
    s->cluster_bits = __builtin_ctzll(cs);
    s->cluster_size = cs;
    s->size = p.size;
    s->l1_size = l1_size;
    s->l1_offset = l1_off;
    s->reftable_offset = rt_off;
    s->reftable_clusters = nrt;
    s->refcount_order = __builtin_ctz(p.refcount_bits);
    s->header_length = p.version >= 3 ? QCOW2_HEADER_SIZE : QCOW2_V2_HEADER_SIZE;
    s->compression_type = p.compression;
    if (p.compression != QCOW2_COMPRESSION_ZLIB) {
        s->incompat |= QCOW2_INCOMPAT_COMPRESSION;
    }
    if (p.ext_l2) {
        s->incompat |= QCOW2_INCOMPAT_EXTL2;
    }
    if (p.lazy) {
        s->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    if (!qcow2_header_fits(s, p.backing, p.backing_fmt)) {
        error_setg(errp, "'%s': backing file name too long for the cluster size", filename);
        return -EINVAL;
    }

    f = bdev_create_file(filename, flags, errp);
    if (!f) {
        return -EIO;
    }
    s->fd = f->fd;
    buf = xzalloc(cs * MAX(nrt, nrb));

    /* Refcount blocks: clusters 0 .. total-1 have refcount 1. */
    s->refcount_bits = p.refcount_bits;
    for (uint64_t b = 0; b < nrb; b++) {
        memset(buf, 0, cs);
        for (uint64_t c = b * entries_per_rb; c < MIN(total, (b + 1) * entries_per_rb); c++) {
            qcow2_refblock_set(s, buf, c - b * entries_per_rb, 1);
        }
        ret = io_pwrite(f->fd, buf, cs, (1 + nrt + b) * cs);
        if (ret < 0) {
            goto io_fail;
        }
    }
    /* Refcount table */
    memset(buf, 0, cs * nrt);
    for (uint64_t b = 0; b < nrb; b++) {
        put_be64(buf + b * 8, (1 + nrt + b) * cs);
    }
    ret = io_pwrite(f->fd, buf, cs * nrt, rt_off);
    if (ret < 0) {
        goto io_fail;
    }
    /* L1 table (all zero) and the file end */
    ret = io_ftruncate(f->fd, file_end);
    if (ret < 0) {
        goto io_fail;
    }
    /* Header last: until it is there, the file is not a qcow2 image. */
    ret = write_header_with(s, p.backing, p.backing ? p.backing_fmt : NULL, errp);
    if (ret < 0) {
        goto out;
    }
    ret = io_fsync(f->fd);
    if (ret < 0) {
        goto io_fail;
    }
    free(buf);
    buf = NULL;
    bfile_close(f, BDEV_CREATE_PERM, 0);
    f = NULL;

    if (p.prealloc) {
        struct bdev *bd = bdev_open(filename, "qcow2",
                                    BDEV_O_RDWR | BDEV_O_NO_BACKING | BDEV_O_NO_BITMAPS, errp);
        if (!bd) {
            return -EIO;
        }
        ret = qcow2_preallocate(bd->opaque, p.size, !strcmp(p.prealloc, "full"),
                                !strcmp(p.prealloc, "falloc"), errp);
        if (bdev_close(bd, ret < 0 ? NULL : errp) < 0 && ret == 0) {
            ret = -EIO;
        }
    }
    return ret;

io_fail:
    error_setg_errno(errp, -ret, "'%s': cannot write the new image", filename);
out:
    free(buf);
    if (f) {
        bfile_close(f, BDEV_CREATE_PERM, 0);
    }
    return ret;
}

const struct format_driver qcow2_driver = {
    .name = "qcow2",
    .priv_size = sizeof(struct qcow2),
    .supports_backing = true,
    .create_opts = qcow2_create_opts,
    .check_create = qcow2_check_create,
    .probe = qcow2_probe,
    .create = qcow2_create,
    .open = qcow2_open,
    .close = qcow2_close,
    .reopen = qcow2_reopen,
    .get_info = qcow2_get_info,
    .check = qcow2_check,
    .change_backing = qcow2_change_backing,
    .truncate = qcow2_truncate,
    .preallocate = qcow2_preallocate_grown,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite,
    .pwrite_zeroes = qcow2_pwrite_zeroes,
    .discard = qcow2_discard,
    .flush = qcow2_flush,
    .block_status = qcow2_block_status,
    .pwrite_compressed = qcow2_pwrite_compressed,
    .compress_granularity = qcow2_compress_granularity,
    .make_empty = qcow2_make_empty,
    .bitmap_load = qcow2_bitmap_load_hook,
    .bitmap_check_add = qcow2_bitmap_check_add,
    .bitmap_check_list = qcow2_bitmap_check_list,
    .bitmap_store = qcow2_bitmap_store_hook,
    .measure = qcow2_measure,
    .snapshot_load_tmp = qcow2_snapshot_load_tmp,
    .amend_opts = qcow2_amend_opts,
    .amend = qcow2_amend,
};
