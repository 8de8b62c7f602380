/*
 * blockctl info - show an image's format, size, backing chain and features
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/jw.h"
#include "lib/size.h"

#include <argp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd/cmd.h"

struct info_args {
    const char *format;
    const char *file;
    bool force_share;
    bool chain;
    enum output_format output;
};

enum { OPT_OUTPUT = 0x100, OPT_BACKING_CHAIN };

static const struct argp_option options[] = {
    { "format", 'f', "FMT", 0, "Image format (raw, qcow2); probed when omitted", 0 },
    { "force-share", 'U', NULL, 0, "Open read-only sharing the image with a writer", 0 },
    { "backing-chain", OPT_BACKING_CHAIN, NULL, 0, "Show every image of the backing chain", 0 },
    { "output", OPT_OUTPUT, "FMT", 0, "Output format: human (default) or json", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct info_args *a = state->input;

    switch (key) {
    case 'f':
        a->format = arg;
        break;
    case 'U':
        a->force_share = true;
        break;
    case OPT_BACKING_CHAIN:
        a->chain = true;
        break;
    case OPT_OUTPUT:
        a->output = parse_output_format(arg, state);
        break;
    case ARGP_KEY_ARG:
        if (a->file) {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        a->file = arg;
        break;
    case ARGP_KEY_END:
        if (!a->file) {
            argp_error(state, "missing image file name");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp info_argp = {
    options, parse_opt, "FILE",
    "Show information about a disk image.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    NULL, NULL, NULL,
};

static const char *bitmap_flag_names(uint32_t flags, int i)
{
    /* qemu-img lists in-use before auto */
    int n = 0;
    if (flags & BITMAP_FLAG_IN_USE) {
        if (n++ == i) {
            return "in-use";
        }
    }
    if (flags & BITMAP_FLAG_AUTO) {
        if (n++ == i) {
            return "auto";
        }
    }
    return NULL;
}

static void json_image(struct jw *w, struct bdev *bd, const struct image_info *in)
{
    int64_t actual = bd->file ? bfile_allocated(bd->file) : -1;

    jw_object_begin(w);
    if (in->nr_snapshots) {
        jw_key(w, "snapshots");
        jw_array_begin(w);
        for (size_t i = 0; i < in->nr_snapshots; i++) {
            const struct snapshot_info *sn = &in->snapshots[i];
            jw_object_begin(w);
            if (sn->has_icount) {
                jw_kv_uint(w, "icount", sn->icount);
            }
            jw_kv_uint(w, "vm-clock-nsec", sn->vm_clock_nsec % 1000000000ULL);
            jw_kv_string(w, "name", sn->name);
            jw_kv_uint(w, "date-sec", sn->date_sec);
            jw_kv_uint(w, "date-nsec", sn->date_nsec);
            jw_kv_uint(w, "vm-clock-sec", sn->vm_clock_nsec / 1000000000ULL);
            jw_kv_string(w, "id", sn->id);
            jw_kv_uint(w, "vm-state-size", sn->vm_state_size);
            jw_object_end(w);
        }
        jw_array_end(w);
    }
    if (bd->backing_file && bd->backing_format) {
        jw_kv_string(w, "backing-filename-format", bd->backing_format);
    }
    jw_kv_uint(w, "virtual-size", bd->size);
    jw_kv_string(w, "filename", bd->filename);
    if (in->cluster_size) {
        jw_kv_uint(w, "cluster-size", in->cluster_size);
    }
    /* an NBD export is raw data over a protocol, as qemu-img says */
    jw_kv_string(w, "format", bdev_format_name(bd));
    if (actual >= 0) {
        jw_kv_int(w, "actual-size", actual);
    }
    if (in->is_qcow2) {
        bool v3 = !strcmp(in->compat, "1.1");
        jw_key(w, "format-specific");
        jw_object_begin(w);
        jw_kv_string(w, "type", "qcow2");
        jw_key(w, "data");
        jw_object_begin(w);
        jw_kv_string(w, "compat", in->compat);
        jw_kv_string(w, "compression-type", in->compression_type);
        if (v3) {
            jw_kv_bool(w, "lazy-refcounts", in->lazy_refcounts);
        }
        if (in->has_bitmaps) {
            jw_key(w, "bitmaps");
            jw_array_begin(w);
            for (size_t i = 0; i < in->nr_bitmaps; i++) {
                const struct bitmap_info *b = &in->bitmaps[i];
                const char *f;
                jw_object_begin(w);
                jw_key(w, "flags");
                jw_array_begin(w);
                for (int k = 0; (f = bitmap_flag_names(b->flags, k)); k++) {
                    jw_string(w, f);
                }
                jw_array_end(w);
                jw_kv_string(w, "name", b->name);
                jw_kv_uint(w, "granularity", b->granularity);
                jw_object_end(w);
            }
            jw_array_end(w);
        }
        jw_kv_uint(w, "refcount-bits", in->refcount_bits);
        if (v3) {
            jw_kv_bool(w, "corrupt", in->corrupt);
            jw_kv_bool(w, "extended-l2", in->extended_l2);
        }
        jw_object_end(w);
        jw_object_end(w);
    }
    if (bd->backing_file) {
        jw_kv_string(w, "full-backing-filename", bd->full_backing_file);
        jw_kv_string(w, "backing-filename", bd->backing_file);
    }
    jw_kv_bool(w, "dirty-flag", in->dirty_flag);
    jw_object_end(w);
}

static void human_image(struct bdev *bd, const struct image_info *in)
{
    int64_t actual = bd->file ? bfile_allocated(bd->file) : -1;
    char sz[32];

    printf("image: %s\n", bd->filename);
    printf("file format: %s\n", bdev_format_name(bd));
    size_human(bd->size, sz, sizeof(sz));
    printf("virtual size: %s (%" PRIu64 " bytes)\n", sz, bd->size);
    if (actual >= 0) {
        size_human(actual, sz, sizeof(sz));
        printf("disk size: %s\n", sz);
    } else {
        printf("disk size: unavailable\n");
    }
    if (in->encrypted) {
        printf("encrypted: yes\n");
    }
    if (in->cluster_size) {
        printf("cluster_size: %" PRIu64 "\n", in->cluster_size);
    }
    if (bd->backing_file) {
        printf("backing file: %s", bd->backing_file);
        if (strcmp(bd->backing_file, bd->full_backing_file)) {
            printf(" (actual path: %s)", bd->full_backing_file);
        }
        printf("\n");
        if (bd->backing_format) {
            printf("backing file format: %s\n", bd->backing_format);
        }
    }
    if (in->dirty_flag) {
        printf("cleanly shut down: no\n");
    }
    if (in->nr_snapshots) {
        print_snapshot_table(in);
    }
    if (in->is_qcow2) {
        bool v3 = !strcmp(in->compat, "1.1");
        printf("Format specific information:\n");
        printf("    compat: %s\n", in->compat);
        printf("    compression type: %s\n", in->compression_type);
        if (v3) {
            printf("    lazy refcounts: %s\n", in->lazy_refcounts ? "true" : "false");
        }
        if (in->has_bitmaps) {
            printf("    bitmaps:\n");
            for (size_t i = 0; i < in->nr_bitmaps; i++) {
                const struct bitmap_info *b = &in->bitmaps[i];
                const char *f;
                printf("        [%zu]:\n", i);
                printf("            flags:\n");
                for (int k = 0; (f = bitmap_flag_names(b->flags, k)); k++) {
                    printf("                [%d]: %s\n", k, f);
                }
                printf("            name: %s\n", b->name);
                printf("            granularity: %" PRIu64 "\n", b->granularity);
            }
        }
        printf("    refcount bits: %u\n", in->refcount_bits);
        if (v3) {
            printf("    corrupt: %s\n", in->corrupt ? "true" : "false");
            printf("    extended l2: %s\n", in->extended_l2 ? "true" : "false");
        }
    }
}

int cmd_info(int argc, char **argv)
{
    struct info_args a = { 0 };
    struct error *err = NULL;
    struct bdev *top, *bd;
    struct jw w;
    unsigned flags;
    int ret = 0;

    argp_parse(&info_argp, argc, argv, 0, NULL, &a);
    flags = (a.force_share ? BDEV_O_FORCE_SHARE : 0) | (a.chain ? 0 : BDEV_O_NO_BACKING);
    top = bdev_open(a.file, a.format, flags, &err);
    if (!top) {
        report(err);
        return 1;
    }
    jw_init(&w, true);
    if (a.chain && a.output == OUTPUT_JSON) {
        jw_array_begin(&w);
    }
    for (bd = top; bd; bd = a.chain ? bd->backing : NULL) {
        struct image_info in;

        if (bdev_get_info(bd, &in, &err) < 0) {
            report(err);
            ret = 1;
            break;
        }
        if (a.output == OUTPUT_JSON) {
            json_image(&w, bd, &in);
        } else {
            if (bd != top) {
                printf("\n");
            }
            human_image(bd, &in);
        }
        image_info_free(&in);
    }
    if (a.chain && a.output == OUTPUT_JSON) {
        jw_array_end(&w);
    }
    if (a.output == OUTPUT_JSON && ret == 0) {
        printf("%s\n", jw_text(&w));
    }
    jw_free(&w);
    bdev_unref(top);
    return ret;
}
