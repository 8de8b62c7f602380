/*
 * blockctl - an image's description as QEMU's QAPI ImageInfo
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/imageinfo.h"
#include "lib/size.h"

#include <string.h>
#include <time.h>

static void add(json_object *o, const char *key, json_object *v)
{
    json_object_object_add(o, key, v);
}

static json_object *bitmap_flags(uint32_t flags)
{
    json_object *a = json_object_new_array();

    /* qemu-img lists in-use before auto */
    if (flags & BITMAP_FLAG_IN_USE) {
        json_object_array_add(a, json_object_new_string("in-use"));
    }
    if (flags & BITMAP_FLAG_AUTO) {
        json_object_array_add(a, json_object_new_string("auto"));
    }
    return a;
}

static json_object *format_specific(const struct image_info *in)
{
    json_object *fs = json_object_new_object(), *d = json_object_new_object();
    bool v3 = !strcmp(in->compat, "1.1");

    add(fs, "type", json_object_new_string("qcow2"));
    add(d, "compat", json_object_new_string(in->compat));
    if (v3) {
        add(d, "extended-l2", json_object_new_boolean(in->extended_l2));
        add(d, "lazy-refcounts", json_object_new_boolean(in->lazy_refcounts));
        add(d, "corrupt", json_object_new_boolean(in->corrupt));
    }
    add(d, "refcount-bits", json_object_new_int64(in->refcount_bits));
    if (in->has_bitmaps) {
        json_object *a = json_object_new_array();
        for (size_t i = 0; i < in->nr_bitmaps; i++) {
            const struct bitmap_info *b = &in->bitmaps[i];
            json_object *bo = json_object_new_object();
            add(bo, "name", json_object_new_string(b->name));
            add(bo, "granularity", json_object_new_int64((int64_t)b->granularity));
            add(bo, "flags", bitmap_flags(b->flags));
            json_object_array_add(a, bo);
        }
        add(d, "bitmaps", a);
    }
    add(d, "compression-type", json_object_new_string(in->compression_type));
    add(fs, "data", d);
    return fs;
}

static json_object *one_image(struct bdev *bd, struct error **errp)
{
    struct image_info in;
    json_object *o;
    int64_t actual = bd->file ? bfile_allocated(bd->file) : -1;

    if (bdev_get_info(bd, &in, errp) < 0) {
        return NULL;
    }
    o = json_object_new_object();
    add(o, "filename", json_object_new_string(bd->filename));
    add(o, "format", json_object_new_string(bdev_format_name(bd)));
    add(o, "dirty-flag", json_object_new_boolean(in.dirty_flag));
    if (actual >= 0) {
        add(o, "actual-size", json_object_new_int64(actual));
    }
    add(o, "virtual-size", json_object_new_int64((int64_t)bd->size));
    if (in.cluster_size) {
        add(o, "cluster-size", json_object_new_int64((int64_t)in.cluster_size));
    }
    if (in.encrypted) {
        add(o, "encrypted", json_object_new_boolean(true));
    }
    if (bd->backing_file) {
        add(o, "backing-filename", json_object_new_string(bd->backing_file));
        add(o, "full-backing-filename", json_object_new_string(bd->full_backing_file));
        if (bd->backing_format) {
            add(o, "backing-filename-format", json_object_new_string(bd->backing_format));
        }
    }
    if (in.nr_snapshots) {
        json_object *a = json_object_new_array();
        for (size_t i = 0; i < in.nr_snapshots; i++) {
            const struct snapshot_info *sn = &in.snapshots[i];
            json_object *so = json_object_new_object();
            add(so, "id", json_object_new_string(sn->id));
            add(so, "name", json_object_new_string(sn->name));
            add(so, "vm-state-size", json_object_new_int64((int64_t)sn->vm_state_size));
            add(so, "date-sec", json_object_new_int64(sn->date_sec));
            add(so, "date-nsec", json_object_new_int64(sn->date_nsec));
            add(so, "vm-clock-sec",
                json_object_new_int64((int64_t)(sn->vm_clock_nsec / 1000000000ULL)));
            add(so, "vm-clock-nsec",
                json_object_new_int64((int64_t)(sn->vm_clock_nsec % 1000000000ULL)));
            if (sn->has_icount) {
                add(so, "icount", json_object_new_int64((int64_t)sn->icount));
            }
            json_object_array_add(a, so);
        }
        add(o, "snapshots", a);
    }
    if (in.is_qcow2) {
        add(o, "format-specific", format_specific(&in));
    }
    image_info_free(&in);
    return o;
}

json_object *image_info_json(struct bdev *bd, bool chain, struct error **errp)
{
    json_object *top = NULL, *prev = NULL;

    for (; bd; bd = chain ? bd->backing : NULL) {
        json_object *o = one_image(bd, errp);
        if (!o) {
            json_object_put(top);
            return NULL;
        }
        if (prev) {
            /* before format-specific, as QAPI orders it: re-add that after */
            json_object *fs = json_object_object_get(prev, "format-specific");
            if (fs) {
                json_object_get(fs);
                json_object_object_del(prev, "format-specific");
            }
            add(prev, "backing-image", o);
            if (fs) {
                add(prev, "format-specific", fs);
            }
        } else {
            top = o;
        }
        prev = o;
    }
    return top;
}

/* --- printing --- */

static const char *get_str(json_object *o, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

static bool get_int(json_object *o, const char *key, int64_t *out)
{
    json_object *v;

    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int)) {
        return false;
    }
    *out = json_object_get_int64(v);
    return true;
}

static bool get_bool(json_object *o, const char *key, bool dflt)
{
    json_object *v;

    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_boolean)) {
        return dflt;
    }
    return json_object_get_boolean(v);
}

static json_object *get(json_object *o, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

void image_info_print_snapshots(FILE *out, json_object *a)
{
    fprintf(out, "Snapshot list:\n");
    fprintf(out, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
            "ICOUNT");
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *sn = json_object_array_get_idx(a, i);
        char sz[32], date[32], clock[32], icount[32] = "";
        int64_t vmsize = 0, dsec = 0, csec = 0, cnsec = 0, ic;
        time_t t;
        struct tm tm;

        get_int(sn, "vm-state-size", &vmsize);
        get_int(sn, "date-sec", &dsec);
        get_int(sn, "vm-clock-sec", &csec);
        get_int(sn, "vm-clock-nsec", &cnsec);
        t = (time_t)dsec;
        localtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(csec / 3600),
                 (int)((csec / 60) % 60), (int)(csec % 60), (int)((cnsec / 1000000) % 1000));
        if (get_int(sn, "icount", &ic)) {
            snprintf(icount, sizeof(icount), "%" PRId64, ic);
        }
        size_human((uint64_t)vmsize, sz, sizeof(sz));
        fprintf(out, "%-9s %-16s %8s%20s%13s%11s\n", get_str(sn, "id") ?: "",
                get_str(sn, "name") ?: "", sz, date, clock, icount);
    }
}

void image_info_print_human(FILE *out, json_object *img)
{
    const char *bf = get_str(img, "backing-filename");
    const char *fbf = get_str(img, "full-backing-filename");
    const char *bff = get_str(img, "backing-filename-format");
    json_object *fs = get(img, "format-specific"), *snaps = get(img, "snapshots");
    int64_t vsize = 0, actual, cs;
    char sz[32];

    fprintf(out, "image: %s\n", get_str(img, "filename") ?: "");
    fprintf(out, "file format: %s\n", get_str(img, "format") ?: "");
    get_int(img, "virtual-size", &vsize);
    size_human((uint64_t)vsize, sz, sizeof(sz));
    fprintf(out, "virtual size: %s (%" PRId64 " bytes)\n", sz, vsize);
    if (get_int(img, "actual-size", &actual)) {
        size_human((uint64_t)actual, sz, sizeof(sz));
        fprintf(out, "disk size: %s\n", sz);
    } else {
        fprintf(out, "disk size: unavailable\n");
    }
    if (get_bool(img, "encrypted", false)) {
        fprintf(out, "encrypted: yes\n");
    }
    if (get_int(img, "cluster-size", &cs)) {
        fprintf(out, "cluster_size: %" PRId64 "\n", cs);
    }
    if (bf) {
        fprintf(out, "backing file: %s", bf);
        if (fbf && strcmp(bf, fbf)) {
            fprintf(out, " (actual path: %s)", fbf);
        }
        fprintf(out, "\n");
        if (bff) {
            fprintf(out, "backing file format: %s\n", bff);
        }
    }
    if (get_bool(img, "dirty-flag", false)) {
        fprintf(out, "cleanly shut down: no\n");
    }
    if (snaps && json_object_array_length(snaps)) {
        image_info_print_snapshots(out, snaps);
    }
    if (fs && get_str(fs, "type") && !strcmp(get_str(fs, "type"), "qcow2")) {
        json_object *d = get(fs, "data"), *bms;
        const char *compat = d ? get_str(d, "compat") : NULL;
        bool v3 = compat && !strcmp(compat, "1.1");
        int64_t rb = 0;

        fprintf(out, "Format specific information:\n");
        fprintf(out, "    compat: %s\n", compat ?: "");
        fprintf(out, "    compression type: %s\n", get_str(d, "compression-type") ?: "zlib");
        if (v3) {
            fprintf(out, "    lazy refcounts: %s\n",
                    get_bool(d, "lazy-refcounts", false) ? "true" : "false");
        }
        bms = get(d, "bitmaps");
        if (bms) {
            fprintf(out, "    bitmaps:\n");
            for (size_t i = 0; i < json_object_array_length(bms); i++) {
                json_object *b = json_object_array_get_idx(bms, i), *fl = get(b, "flags");
                int64_t g = 0;
                fprintf(out, "        [%zu]:\n", i);
                fprintf(out, "            flags:\n");
                for (size_t k = 0; fl && k < json_object_array_length(fl); k++) {
                    fprintf(out, "                [%zu]: %s\n", k,
                            json_object_get_string(json_object_array_get_idx(fl, k)));
                }
                fprintf(out, "            name: %s\n", get_str(b, "name") ?: "");
                get_int(b, "granularity", &g);
                fprintf(out, "            granularity: %" PRId64 "\n", g);
            }
        }
        get_int(d, "refcount-bits", &rb);
        fprintf(out, "    refcount bits: %" PRId64 "\n", rb);
        if (v3) {
            fprintf(out, "    corrupt: %s\n", get_bool(d, "corrupt", false) ? "true" : "false");
            fprintf(out, "    extended l2: %s\n",
                    get_bool(d, "extended-l2", false) ? "true" : "false");
        }
    }
}

static void kv_str(struct jw *w, json_object *o, const char *key)
{
    const char *s = get_str(o, key);

    if (s) {
        jw_kv_string(w, key, s);
    }
}

static void kv_int(struct jw *w, json_object *o, const char *key)
{
    int64_t v;

    if (get_int(o, key, &v)) {
        jw_kv_int(w, key, v);
    }
}

void image_info_write_json(struct jw *w, json_object *img)
{
    json_object *snaps = get(img, "snapshots"), *fs = get(img, "format-specific");

    jw_object_begin(w);
    if (snaps && json_object_array_length(snaps)) {
        jw_key(w, "snapshots");
        jw_array_begin(w);
        for (size_t i = 0; i < json_object_array_length(snaps); i++) {
            json_object *sn = json_object_array_get_idx(snaps, i);
            jw_object_begin(w);
            kv_int(w, sn, "icount");
            kv_int(w, sn, "vm-clock-nsec");
            kv_str(w, sn, "name");
            kv_int(w, sn, "date-sec");
            kv_int(w, sn, "date-nsec");
            kv_int(w, sn, "vm-clock-sec");
            kv_str(w, sn, "id");
            kv_int(w, sn, "vm-state-size");
            jw_object_end(w);
        }
        jw_array_end(w);
    }
    if (get_str(img, "backing-filename")) {
        kv_str(w, img, "backing-filename-format");
    }
    kv_int(w, img, "virtual-size");
    kv_str(w, img, "filename");
    kv_int(w, img, "cluster-size");
    kv_str(w, img, "format");
    kv_int(w, img, "actual-size");
    if (fs && get_str(fs, "type") && !strcmp(get_str(fs, "type"), "qcow2")) {
        json_object *d = get(fs, "data"), *bms = get(d, "bitmaps");
        const char *compat = get_str(d, "compat");
        bool v3 = compat && !strcmp(compat, "1.1");

        jw_key(w, "format-specific");
        jw_object_begin(w);
        jw_kv_string(w, "type", "qcow2");
        jw_key(w, "data");
        jw_object_begin(w);
        kv_str(w, d, "compat");
        kv_str(w, d, "compression-type");
        if (v3) {
            jw_kv_bool(w, "lazy-refcounts", get_bool(d, "lazy-refcounts", false));
        }
        if (bms) {
            jw_key(w, "bitmaps");
            jw_array_begin(w);
            for (size_t i = 0; i < json_object_array_length(bms); i++) {
                json_object *b = json_object_array_get_idx(bms, i), *fl = get(b, "flags");
                jw_object_begin(w);
                jw_key(w, "flags");
                jw_array_begin(w);
                for (size_t k = 0; fl && k < json_object_array_length(fl); k++) {
                    jw_string(w, json_object_get_string(json_object_array_get_idx(fl, k)));
                }
                jw_array_end(w);
                kv_str(w, b, "name");
                kv_int(w, b, "granularity");
                jw_object_end(w);
            }
            jw_array_end(w);
        }
        kv_int(w, d, "refcount-bits");
        if (v3) {
            jw_kv_bool(w, "corrupt", get_bool(d, "corrupt", false));
            jw_kv_bool(w, "extended-l2", get_bool(d, "extended-l2", false));
        }
        jw_object_end(w);
        jw_object_end(w);
    }
    kv_str(w, img, "full-backing-filename");
    kv_str(w, img, "backing-filename");
    jw_kv_bool(w, "dirty-flag", get_bool(img, "dirty-flag", false));
    jw_object_end(w);
}
