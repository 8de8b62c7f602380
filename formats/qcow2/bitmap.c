/*
 * blockctl - qcow2: persistent dirty bitmaps (qcow2.txt "Bitmaps extension")
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * QEMU's rules: an enabled ("auto") bitmap is loaded when the image is
 * opened read-write, marked in_use on disk, updated by every write, and
 * stored back (in_use cleared) on a clean close.  A bitmap found in_use at
 * open was left so by a crash: it is inconsistent, kept as it is and
 * never trusted.  Disabled bitmaps are never touched by writes.
 */
#include "lib/compiler.h"
#include "lib/bitmap.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#define BME_FIXED 24
#define BME_FLAG_IN_USE (1u << 0)
#define BME_FLAG_AUTO (1u << 1)
#define BME_FLAG_EXTRA_DATA_COMPAT (1u << 2)
#define BME_RESERVED_FLAGS 0xfffffff8u
#define BME_TYPE_DIRTY 1
#define BME_MIN_GRAN_BITS 9
#define BME_MAX_GRAN_BITS 31
#define BME_TABLE_OFFSET_MASK 0x00fffffffffffe00ULL
#define BME_TABLE_ALL_ONES 1ULL
#define BME_TABLE_RESERVED 0xff000000000001feULL
#define BME_MAX_TABLE_ENTRIES 0x8000000u

void qcow2_free_bitmaps(struct qcow2 *s)
{
    if (!s->bitmaps) {
        return;
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        free(s->bitmaps[i].name);
        free(s->bitmaps[i].extra);
    }
    free(s->bitmaps);
    s->bitmaps = NULL;
}

void qcow2_bitmap_ext_encode(struct qcow2 *s, uint8_t *buf)
{
    put_be32(buf, s->nb_bitmaps);
    put_be32(buf + 4, 0);
    put_be64(buf + 8, s->bitmap_dir_size);
    put_be64(buf + 16, s->bitmap_dir_offset);
}

/* Table entries a bitmap of granularity 2^@gb needs for this image. */
uint64_t qcow2_bitmap_table_entries(struct qcow2 *s, unsigned gb)
{
    uint64_t nbits = DIV_ROUND_UP(s->size, 1ULL << gb);
    return DIV_ROUND_UP(nbits, s->cluster_size * 8);
}

static uint64_t entry_len(const struct qcow2_bitmap *b)
{
    return ALIGN_UP(BME_FIXED + (uint64_t)b->extra_size + strlen(b->name), 8);
}

int qcow2_read_bitmap_dir(struct qcow2 *s, struct error **errp)
{
    const char *fn = s->bd->filename;
    uint8_t *dir = NULL;
    uint64_t pos = 0;
    ssize_t n;

    if (!s->has_bitmaps_ext) {
        return 0;
    }
    if (s->nb_bitmaps == 0 || s->nb_bitmaps > QCOW2_MAX_BITMAPS) {
        error_setg(errp, "'%s': bitmaps extension: invalid number of bitmaps %" PRIu32, fn,
                   s->nb_bitmaps);
        return -EINVAL;
    }
    if (s->bitmap_dir_size == 0 || s->bitmap_dir_size > QCOW2_MAX_BITMAP_DIR_BYTES ||
        s->bitmap_dir_size < (uint64_t)s->nb_bitmaps * BME_FIXED) {
        error_setg(errp, "'%s': bitmaps extension: invalid directory size %" PRIu64, fn,
                   s->bitmap_dir_size);
        return -EINVAL;
    }
    if (!IS_ALIGNED(s->bitmap_dir_offset, s->cluster_size) || s->bitmap_dir_offset == 0 ||
        s->bitmap_dir_offset >= s->file_size ||
        s->bitmap_dir_size > s->file_size - s->bitmap_dir_offset) {
        error_setg(errp, "'%s': bitmaps extension: invalid directory offset 0x%" PRIx64, fn,
                   s->bitmap_dir_offset);
        return -EINVAL;
    }
    dir = xmalloc(s->bitmap_dir_size);
    n = io_pread(s->fd, dir, s->bitmap_dir_size, s->bitmap_dir_offset);
    if (n < 0 || (uint64_t)n != s->bitmap_dir_size) {
        error_setg(errp, "'%s': cannot read the bitmap directory", fn);
        free(dir);
        return n < 0 ? (int)n : -EINVAL;
    }
    s->bitmaps = xcalloc(s->nb_bitmaps, sizeof(*s->bitmaps));
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        const uint8_t *e = dir + pos;
        uint16_t name_len;
        uint64_t len;

        if (s->bitmap_dir_size - pos < BME_FIXED) {
            error_setg(errp, "'%s': bitmap directory entry %" PRIu32 " is truncated", fn, i);
            goto fail;
        }
        b->table_offset = get_be64(e);
        b->table_size = get_be32(e + 8);
        b->flags = get_be32(e + 12);
        b->type = e[16];
        b->granularity_bits = e[17];
        name_len = get_be16(e + 18);
        b->extra_size = get_be32(e + 20);
        len = ALIGN_UP(BME_FIXED + (uint64_t)b->extra_size + name_len, 8);
        if (len > s->bitmap_dir_size - pos) {
            error_setg(errp, "'%s': bitmap directory entry %" PRIu32 " runs past the "
                       "directory", fn, i);
            goto fail;
        }
        if (name_len == 0 || name_len > QCOW2_MAX_BITMAP_NAME) {
            error_setg(errp, "'%s': bitmap %" PRIu32 " has an invalid name length %u", fn, i,
                       name_len);
            goto fail;
        }
        b->extra = xmalloc(b->extra_size ? b->extra_size : 1);
        memcpy(b->extra, e + BME_FIXED, b->extra_size);
        b->name = xstrndup((const char *)e + BME_FIXED + b->extra_size, name_len);
        if (strlen(b->name) != name_len) {
            error_setg(errp, "'%s': bitmap %" PRIu32 " has a NUL byte in its name", fn, i);
            goto fail;
        }
        if (b->flags & BME_RESERVED_FLAGS) {
            error_setg(errp, "'%s': bitmap '%s' has reserved flags set (0x%" PRIx32 ")", fn,
                       b->name, b->flags);
            goto fail;
        }
        if (b->type != BME_TYPE_DIRTY) {
            error_setg(errp, "'%s': bitmap '%s' has unknown type %u", fn, b->name, b->type);
            goto fail;
        }
        if (b->granularity_bits < BME_MIN_GRAN_BITS || b->granularity_bits > BME_MAX_GRAN_BITS) {
            error_setg(errp, "'%s': bitmap '%s' has invalid granularity bits %u", fn, b->name,
                       b->granularity_bits);
            goto fail;
        }
        if (b->table_size > BME_MAX_TABLE_ENTRIES ||
            b->table_size != qcow2_bitmap_table_entries(s, b->granularity_bits)) {
            error_setg(errp, "'%s': bitmap '%s' has a bitmap table of %" PRIu32 " entries "
                       "(expected %" PRIu64 ")", fn, b->name, b->table_size,
                       qcow2_bitmap_table_entries(s, b->granularity_bits));
            goto fail;
        }
        if (!IS_ALIGNED(b->table_offset, s->cluster_size) || b->table_offset == 0 ||
            b->table_offset >= s->file_size ||
            (uint64_t)b->table_size * 8 > s->file_size - b->table_offset) {
            error_setg(errp, "'%s': bitmap '%s' has an invalid table offset 0x%" PRIx64, fn,
                       b->name, b->table_offset);
            goto fail;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (!strcmp(s->bitmaps[j].name, b->name)) {
                error_setg(errp, "'%s': two bitmaps are named '%s'", fn, b->name);
                goto fail;
            }
        }
        pos += len;
    }
    if (pos != s->bitmap_dir_size) {
        error_setg(errp, "'%s': bitmap directory size %" PRIu64 " does not match its entries "
                   "(%" PRIu64 " bytes)", fn, s->bitmap_dir_size, pos);
        goto fail;
    }
    free(dir);
    return 0;

fail:
    free(dir);
    qcow2_free_bitmaps(s);
    return -EINVAL;
}

/* Serialise the directory for @s->bitmaps; returns the buffer and *len. */
static uint8_t *encode_dir(struct qcow2 *s, uint64_t *len)
{
    uint64_t total = 0, pos = 0;
    uint8_t *dir;

    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        total += entry_len(&s->bitmaps[i]);
    }
    dir = xzalloc(total ? total : 1);
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        uint8_t *e = dir + pos;
        size_t nl = strlen(b->name);

        put_be64(e, b->table_offset);
        put_be32(e + 8, b->table_size);
        put_be32(e + 12, b->flags);
        e[16] = b->type;
        e[17] = b->granularity_bits;
        put_be16(e + 18, nl);
        put_be32(e + 20, b->extra_size);
        memcpy(e + BME_FIXED, b->extra, b->extra_size);
        memcpy(e + BME_FIXED + b->extra_size, b->name, nl);
        pos += entry_len(b);
    }
    *len = total;
    return dir;
}

/* Read one bitmap's data into a new in-memory bitmap. */
int qcow2_bitmap_load(struct qcow2 *s, struct qcow2_bitmap *b, struct dirty_bitmap **out)
{
    uint64_t cs = s->cluster_size;
    struct dirty_bitmap *bm = bitmap_new(s->size, 1ULL << b->granularity_bits);
    uint8_t *tbl, *buf;
    ssize_t n;
    int ret = 0;

    if (!bm) {
        return -EINVAL;
    }
    tbl = xmalloc((size_t)b->table_size * 8 + 1);
    buf = xmalloc(cs);
    n = io_pread(s->fd, tbl, (size_t)b->table_size * 8, b->table_offset);
    if (n < 0 || (uint64_t)n != (uint64_t)b->table_size * 8) {
        ret = n < 0 ? (int)n : -EIO;
        goto out;
    }
    for (uint32_t i = 0; i < b->table_size; i++) {
        uint64_t e = get_be64(tbl + (size_t)i * 8);
        uint64_t off = e & BME_TABLE_OFFSET_MASK;
        uint64_t first_bit = (uint64_t)i * cs * 8;

        if (e & BME_TABLE_RESERVED) {
            bdev_set_error(s->bd, "'%s': bitmap '%s': invalid bitmap table entry %" PRIu32,
                           s->bd->filename, b->name, i);
            ret = -EINVAL;
            goto out;
        }
        if (!off) {
            if (e & BME_TABLE_ALL_ONES) {
                bitmap_set_bits(bm, first_bit, cs * 8);
            }
            continue;
        }
        if (!IS_ALIGNED(off, cs) || off >= s->file_size) {
            bdev_set_error(s->bd, "'%s': bitmap '%s': data cluster 0x%" PRIx64 " is invalid",
                           s->bd->filename, b->name, off);
            ret = -EINVAL;
            goto out;
        }
        n = io_pread(s->fd, buf, cs, off);
        if (n < 0) {
            ret = (int)n;
            goto out;
        }
        if ((uint64_t)n < cs) {
            memset(buf + n, 0, cs - n);
        }
        bitmap_deserialize(bm, first_bit, buf, cs);
    }
out:
    free(tbl);
    free(buf);
    if (ret < 0) {
        bitmap_free(bm);
        return ret;
    }
    *out = bm;
    return 0;
}

/* Release the table and data clusters of a stored bitmap (unreferenced on disk). */
static int free_bitmap_clusters(struct qcow2 *s, uint64_t table_offset, uint32_t table_size)
{
    uint64_t cs = s->cluster_size;
    uint8_t *tbl;
    ssize_t n;

    if (!table_offset) {
        return 0;
    }
    tbl = xmalloc((size_t)table_size * 8 + 1);
    n = io_pread(s->fd, tbl, (size_t)table_size * 8, table_offset);
    if (n == (ssize_t)table_size * 8) {
        for (uint32_t i = 0; i < table_size; i++) {
            uint64_t off = get_be64(tbl + (size_t)i * 8) & BME_TABLE_OFFSET_MASK;
            if (off && IS_ALIGNED(off, cs)) {
                qcow2_update_refcount(s, off, cs, -1);
            }
        }
    }
    free(tbl);
    return qcow2_update_refcount(s, table_offset, ALIGN_UP((uint64_t)table_size * 8, cs), -1);
}

/* Write @bm's data and table; returns the table offset or -errno. */
static int64_t store_bitmap_data(struct qcow2 *s, struct dirty_bitmap *bm, uint32_t table_size)
{
    uint64_t cs = s->cluster_size;
    uint8_t *tbl = xzalloc(ALIGN_UP((uint64_t)table_size * 8, cs));
    uint8_t *buf = xmalloc(cs);
    int64_t toff = 0;
    int ret = 0;

    for (uint32_t i = 0; i < table_size; i++) {
        uint64_t first_bit = (uint64_t)i * cs * 8;
        int64_t off;

        if (bitmap_bits_clear(bm, first_bit, cs * 8)) {
            continue;
        }
        bitmap_serialize(bm, first_bit, buf, cs);
        off = qcow2_alloc_clusters(s, 1);
        if (off < 0) {
            ret = (int)off;
            break;
        }
        put_be64(tbl + (size_t)i * 8, off);
        ret = io_pwrite(s->fd, buf, cs, off);
        if (ret < 0) {
            break;
        }
        qcow2_note_file_end(s, off + cs);
    }
    if (ret == 0) {
        uint64_t tbytes = ALIGN_UP((uint64_t)table_size * 8, cs);
        toff = qcow2_alloc_clusters(s, tbytes / cs);
        if (toff < 0) {
            ret = (int)toff;
        } else {
            ret = io_pwrite(s->fd, tbl, tbytes, toff);
            qcow2_note_file_end(s, toff + tbytes);
            if (ret < 0) {
                qcow2_update_refcount(s, toff, tbytes, -1);
            }
        }
    }
    if (ret < 0) {
        /* Give back the data clusters written so far. */
        for (uint32_t i = 0; i < table_size; i++) {
            uint64_t off = get_be64(tbl + (size_t)i * 8);
            if (off) {
                qcow2_update_refcount(s, off, cs, -1);
            }
        }
    }
    free(tbl);
    free(buf);
    return ret < 0 ? ret : toff;
}

/*
 * Write the directory for the current s->bitmaps to new clusters and point
 * the header at it; then free the old directory.  Called under s->lock.
 *
 * On failure *@switched tells whether the header switch was attempted.
 * If not, nothing on disk references the new directory (it is freed) and
 * the old one is in force.  If so, the header on disk may reference the old
 * or the new directory: both, and everything either references, stay
 * allocated (the new directory is leaked, never freed), and the header
 * writer has put the old header back or marked the image unsure.
 */
static int write_dir(struct qcow2 *s, bool *switched)
{
    uint64_t old_off = s->has_bitmaps_ext ? s->bitmap_dir_offset : 0;
    uint64_t old_size = s->has_bitmaps_ext ? s->bitmap_dir_size : 0;
    bool old_has = s->has_bitmaps_ext;
    uint64_t old_autoclear = s->autoclear;
    uint64_t len = 0, new_off = 0;
    uint8_t *dir;
    int ret = 0;

    *switched = false;
    if (s->unsure) {
        return -EIO;
    }
    dir = encode_dir(s, &len);
    if (s->nb_bitmaps) {
        int64_t off = qcow2_alloc_clusters(s, DIV_ROUND_UP(len, s->cluster_size));
        if (off < 0) {
            free(dir);
            return (int)off;
        }
        new_off = off;
        ret = io_pwrite(s->fd, dir, len, new_off);
        if (ret == 0) {
            qcow2_note_file_end(s, new_off + ALIGN_UP(len, s->cluster_size));
        }
    }
    free(dir);
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    if (ret == 0) {
        ret = qcow2_order_sync(s);
    }
    if (ret < 0) {
        /* the header was not touched: the new directory is no one's */
        if (new_off) {
            qcow2_update_refcount(s, new_off, ALIGN_UP(len, s->cluster_size), -1);
        }
        return ret;
    }
    s->has_bitmaps_ext = s->nb_bitmaps > 0;
    s->bitmap_dir_offset = new_off;
    s->bitmap_dir_size = len;
    if (s->nb_bitmaps) {
        s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    } else {
        s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    }
    *switched = true;
    ret = qcow2_write_header(s, NULL);
    if (ret < 0) {
        s->has_bitmaps_ext = old_has;
        s->bitmap_dir_offset = old_off;
        s->bitmap_dir_size = old_size;
        s->autoclear = old_autoclear;
        return ret;
    }
    if (old_off) {
        /* failing to free only leaks */
        qcow2_update_refcount(s, old_off, ALIGN_UP(old_size, s->cluster_size), -1);
    }
    return 0;
}

/* Rewrite the directory where it is (same size; only flags changed). */
static int write_dir_in_place(struct qcow2 *s)
{
    uint64_t len;
    uint8_t *dir;
    int ret;

    if (s->unsure) {
        return -EIO;
    }
    dir = encode_dir(s, &len);
    assert(len == s->bitmap_dir_size);
    ret = io_pwrite(s->fd, dir, len, s->bitmap_dir_offset);
    free(dir);
    if (ret == 0) {
        ret = qcow2_order_sync(s);
    }
    return ret;
}

static bool usable(const struct qcow2_bitmap *b)
{
    return !(b->flags & BME_FLAG_IN_USE) &&
           (!b->extra_size || (b->flags & BME_FLAG_EXTRA_DATA_COMPAT));
}

/*
 * Store the loaded bitmaps that changed (new tables), write the directory
 * with @in_use for the loaded ones, then free the replaced tables and
 * those listed in @dropped (removed bitmaps).  Under s->lock.
 *
 * On failure the in-memory bitmaps are as before.  New tables are freed
 * only while nothing on disk can reference them: once the header switch
 * to the new directory was attempted, they are leaked, as the old tables
 * and the dropped ones are (see write_dir).
 */
static int store_locked(struct qcow2 *s, bool in_use, uint64_t *dropped_off,
                        uint32_t *dropped_size, size_t ndropped)
{
    uint64_t *old_tables = xcalloc(s->nb_bitmaps + 1, sizeof(*old_tables));
    uint64_t *new_tables = xcalloc(s->nb_bitmaps + 1, sizeof(*new_tables));
    uint32_t *saved_flags = xcalloc(s->nb_bitmaps + 1, sizeof(*saved_flags));
    uint32_t *old_sizes = xcalloc(s->nb_bitmaps + 1, sizeof(*old_sizes));
    bool switched = false;
    int ret = 0;

    if (s->unsure) {
        ret = -EIO;
        goto out;
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        saved_flags[i] = s->bitmaps[i].flags;
        old_sizes[i] = s->bitmaps[i].table_size;
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        uint32_t want;
        int64_t toff;

        if (!b->bm) {
            continue;
        }
        /* the table follows the image size (which a resize may change) */
        want = (uint32_t)qcow2_bitmap_table_entries(s, b->granularity_bits);
        if (b->modified || !b->table_offset || want != b->table_size) {
            toff = store_bitmap_data(s, b->bm, want);
            if (toff < 0) {
                ret = (int)toff;
                break;
            }
            old_tables[i] = b->table_offset;
            new_tables[i] = toff;
            b->table_offset = toff;
            b->table_size = want;
        }
        if (in_use) {
            b->flags |= BME_FLAG_IN_USE;
        } else {
            b->flags &= ~BME_FLAG_IN_USE;
        }
    }
    if (ret == 0) {
        ret = write_dir(s, &switched);
    }
    if (ret < 0) {
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
            s->bitmaps[i].flags = saved_flags[i];
            if (new_tables[i]) {
                if (!switched) {
                    free_bitmap_clusters(s, new_tables[i], s->bitmaps[i].table_size);
                }
                s->bitmaps[i].table_offset = old_tables[i];
                s->bitmaps[i].table_size = old_sizes[i];
            }
        }
        goto out;
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        if (new_tables[i]) {
            s->bitmaps[i].modified = false;
            if (old_tables[i]) {
                free_bitmap_clusters(s, old_tables[i], old_sizes[i]);
            }
        }
    }
    for (size_t k = 0; k < ndropped; k++) {
        free_bitmap_clusters(s, dropped_off[k], dropped_size[k]);
    }
out:
    free(old_tables);
    free(new_tables);
    free(saved_flags);
    free(old_sizes);
    return ret;
}

int qcow2_find_bitmap(struct qcow2 *s, const char *name)
{
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        if (!strcmp(s->bitmaps[i].name, name)) {
            return (int)i;
        }
    }
    return -1;
}

/* --- the block layer's side: bd->bitmaps (lib/dirty.c) --- */

int qcow2_bitmaps_register(struct qcow2 *s, bool track, struct error **errp)
{
    struct bdev *bd = s->bd;
    bool any = false;
    int ret;

    s->bitmaps_track = track;
    if (!s->has_bitmaps_ext) {
        return 0;
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        uint64_t g = 1ULL << b->granularity_bits;
        struct dirty_bitmap *bm = NULL;

        if (track && usable(b)) {
            ret = qcow2_bitmap_load(s, b, &bm);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "'%s': cannot load bitmap '%s'", bd->filename,
                                 b->name);
                return ret;
            }
            b->flags |= BME_FLAG_IN_USE;
            any = true;
        }
        bdev_bitmap_register(bd, b->name, g, bm, b->flags & BME_FLAG_AUTO, true, !usable(b) &&
                             !bm);
    }
    s->bitmaps_track = track;
    if (!any) {
        return 0;
    }
    /* as QEMU: in use on disk while we have them, so a crash is noticed */
    ret = write_dir_in_place(s);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot mark bitmaps in use", bd->filename);
        return ret;
    }
    s->bitmaps_loaded_rw = true;
    return 0;
}

int qcow2_bitmap_load_hook(struct bdev *bd, const char *name, struct dirty_bitmap **out,
                           struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    int i, ret;

    pthread_mutex_lock(&s->lock);
    i = qcow2_find_bitmap(s, name);
    if (i < 0) {
        pthread_mutex_unlock(&s->lock);
        error_setg(errp, "'%s': bitmap '%s' not found", bd->filename, name);
        return -ENOENT;
    }
    if (!usable(&s->bitmaps[i])) {
        pthread_mutex_unlock(&s->lock);
        error_setg(errp, "'%s': bitmap '%s' is inconsistent (in use: left so by a crash, or "
                   "another process has the image open for writing) and cannot be used",
                   bd->filename, name);
        error_append_hint(errp, "Remove it with 'blockctl bitmap --remove %s %s'",
                          bd->filename, name);
        return -EINVAL;
    }
    ret = qcow2_bitmap_load(s, &s->bitmaps[i], out);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        char *d = bdev_last_error(bd);
        if (d) {
            error_setg(errp, "%s", d);
        } else {
            error_setg_errno(errp, -ret, "'%s': cannot read bitmap '%s'", bd->filename, name);
        }
        free(d);
    }
    return ret;
}

int qcow2_bitmap_check_add(struct bdev *bd, const char *name, uint64_t granularity,
                           struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    unsigned gb = __builtin_ctzll(granularity);

    if (s->version < 3) {
        error_setg(errp, "'%s': persistent bitmaps need a qcow2 v3 image (compat=1.1)",
                   bd->filename);
        return -ENOTSUP;
    }
    if (strlen(name) > QCOW2_MAX_BITMAP_NAME) {
        error_setg(errp, "'%s': bitmap name must be 1 to %d bytes long", bd->filename,
                   QCOW2_MAX_BITMAP_NAME);
        return -EINVAL;
    }
    if (gb < BME_MIN_GRAN_BITS || gb > BME_MAX_GRAN_BITS) {
        error_setg(errp, "'%s': bitmap granularity must be a power of two between 512 and 2G",
                   bd->filename);
        return -EINVAL;
    }
    if (qcow2_bitmap_table_entries(s, gb) > BME_MAX_TABLE_ENTRIES) {
        error_setg(errp, "'%s': bitmap '%s' would be too large for its granularity",
                   bd->filename, name);
        return -EINVAL;
    }
    return 0;
}

int qcow2_bitmap_check_list(struct bdev *bd, const char **names, size_t n, struct error **errp)
{
    uint64_t bytes = 0;

    if (n > QCOW2_MAX_BITMAPS) {
        error_setg(errp, "'%s': too many bitmaps (at most %d)", bd->filename,
                   QCOW2_MAX_BITMAPS);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        bytes += ALIGN_UP(BME_FIXED + strlen(names[i]), 8);
    }
    if (bytes > QCOW2_MAX_BITMAP_DIR_BYTES) {
        error_setg(errp, "'%s': the bitmap directory would be full", bd->filename);
        return -EINVAL;
    }
    return 0;
}

/*
 * Store the block layer's persistent bitmaps of @bd: the directory becomes
 * theirs (names, granularities, enabled as "auto"), tables are written for
 * the bitmaps whose bits changed since they were loaded or stored, and
 * stored bitmaps no longer listed are dropped.  All in one header switch
 * (store_locked), so the image holds the old set or the new one.
 */
int qcow2_bitmap_store_hook(struct bdev *bd, bool in_use, struct error **errp)
{
    struct qcow2 *s = bd->opaque;
    struct qcow2_bitmap *old, *list;
    uint32_t old_nb, nb = 0;
    uint64_t *dropped_off, *gens;
    uint32_t *dropped_size;
    struct bdev_bitmap **ents;
    size_t ndropped = 0, nent = 0;
    bool *kept;
    int ret;

    /* in use only while writes are tracked (an offline `bitmap` is not) */
    in_use = in_use && s->bitmaps_track;
    pthread_mutex_lock(&bd->bitmap_lock);
    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        nent += b->persistent;
    }
    ents = xcalloc(nent + 1, sizeof(*ents));
    gens = xcalloc(nent + 1, sizeof(*gens));
    nent = 0;
    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        if (b->persistent) {
            gens[nent] = b->bm ? bitmap_gen(b->bm) : 0;
            ents[nent++] = b;
        }
    }
    pthread_mutex_unlock(&bd->bitmap_lock);

    list = xcalloc(nent + 1, sizeof(*list));
    pthread_mutex_lock(&s->lock);
    old = s->bitmaps;
    old_nb = s->nb_bitmaps;
    kept = xcalloc(old_nb + 1, sizeof(*kept));
    dropped_off = xcalloc(old_nb + 1, sizeof(*dropped_off));
    dropped_size = xcalloc(old_nb + 1, sizeof(*dropped_size));
    for (size_t k = 0; k < nent; k++) {
        struct bdev_bitmap *e = ents[k];
        struct qcow2_bitmap *q = &list[nb++];
        unsigned gb = __builtin_ctzll(e->granularity);
        int i = -1;

        for (uint32_t j = 0; j < old_nb; j++) {
            if (!kept[j] && !strcmp(old[j].name, e->name) && old[j].granularity_bits == gb) {
                i = (int)j;
            }
        }
        if (i >= 0) {
            *q = old[i];        /* the stored table, name and extra data */
            kept[i] = true;
            q->bm = e->bm;
            q->modified = e->bm && gens[k] != e->stored_gen;
        } else {
            memset(q, 0, sizeof(*q));
            q->name = xstrdup(e->name);
            q->type = BME_TYPE_DIRTY;
            q->granularity_bits = gb;
            q->table_size = (uint32_t)qcow2_bitmap_table_entries(s, gb);
            q->extra = xmalloc(1);
            q->bm = e->bm;
            q->modified = true;
            if (!e->bm) {
                /* a bitmap known but never read cannot be written: keep nothing */
                nb--;
                free(q->name);
                free(q->extra);
                continue;
            }
        }
        if (q->bm) {
            q->flags = (q->flags & ~(BME_FLAG_AUTO | BME_FLAG_IN_USE)) |
                       (e->enabled ? BME_FLAG_AUTO : 0);
            if (q->extra_size && !(q->flags & BME_FLAG_EXTRA_DATA_COMPAT)) {
                /* salvaged: extra data nobody can read would keep it unusable */
                q->extra_size = 0;
            }
        }
    }
    for (uint32_t j = 0; j < old_nb; j++) {
        if (!kept[j]) {
            dropped_off[ndropped] = old[j].table_offset;
            dropped_size[ndropped] = old[j].table_size;
            ndropped++;
        }
    }
    s->bitmaps = list;
    s->nb_bitmaps = nb;
    ret = store_locked(s, in_use, dropped_off, dropped_size, ndropped);
    for (uint32_t j = 0; j < nb; j++) {
        s->bitmaps[j].bm = NULL;      /* the block layer's: only borrowed here */
    }
    if (ret < 0) {
        /* the old list stays: free what this call made */
        for (uint32_t j = 0; j < nb; j++) {
            bool shared = false;
            for (uint32_t m = 0; m < old_nb; m++) {
                shared |= list[j].name == old[m].name;
            }
            if (!shared) {
                free(list[j].name);
                free(list[j].extra);
            }
        }
        free(list);
        s->bitmaps = old;
        s->nb_bitmaps = old_nb;
        pthread_mutex_unlock(&s->lock);
        error_setg_errno(errp, -ret, "'%s': cannot store bitmaps", bd->filename);
        goto out;
    }
    for (uint32_t j = 0; j < old_nb; j++) {
        if (!kept[j]) {
            free(old[j].name);
            free(old[j].extra);
        }
    }
    free(old);
    s->bitmaps_loaded_rw = in_use;
    pthread_mutex_unlock(&s->lock);

    pthread_mutex_lock(&bd->bitmap_lock);
    for (size_t k = 0; k < nent; k++) {
        ents[k]->stored_gen = gens[k];
        ents[k]->flags_changed = false;
    }
    bd->bitmaps_changed = false;
    pthread_mutex_unlock(&bd->bitmap_lock);
out:
    free(ents);
    free(gens);
    free(kept);
    free(dropped_off);
    free(dropped_size);
    return ret;
}
