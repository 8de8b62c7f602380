/*
 * blockctl measure - how large a new image would be
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/jw.h"
#include "lib/size.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

struct measure_args {
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *out_format;
    char *opts;            /* joined -o arguments */
    const char *snapshot;
    const char *file;
    const char *size;
    bool too_many;
};

enum { OPT_OUTPUT = 0x100, OPT_SIZEARG };

static const struct argp_option options[] = {
    { "size", OPT_SIZEARG, "SIZE", 0, "Measure an empty image of SIZE bytes (no FILE)", 0 },
    { "output-format", 'O', "FMT", 0, "Format of the new image: raw (default) or qcow2", 0 },
    { "options", 'o', "OPTS", 0, "Options of the new image, key=val[,...]", 0 },
    { "snapshot", 'l', "SNAPSHOT", 0, "Measure FILE's internal snapshot (ID or name)", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct measure_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case 'O':
        a->out_format = parse_out_format_arg(arg, "-O", state);
        break;
    case 'o':
        append_opts(&a->opts, arg);
        break;
    case 'l':
        a->snapshot = arg;
        break;
    case OPT_SIZEARG:
        a->size = arg;
        break;
    case ARGP_KEY_ARG:
        if (a->file) {
            a->too_many = true;
        }
        a->file = arg;
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_measure */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp measure_argp = {
    options, parse_opt, "(--size SIZE | FILE)",
    "Show how large a new image of format -O would be: for the guest data of FILE "
    "(through its backing chain), or empty and of SIZE bytes.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    children, NULL, NULL,
};

static void print_json(const struct measure_info *m)
{
    struct jw w;

    /* qemu-img's key order (a QDict's), and its signed integers (QAPI 'int') */
    jw_init(&w, true);
    jw_object_begin(&w);
    if (m->has_bitmaps) {
        jw_kv_int(&w, "bitmaps", (int64_t)m->bitmaps);
    }
    jw_kv_int(&w, "required", (int64_t)m->required);
    jw_kv_int(&w, "fully-allocated", (int64_t)m->fully_allocated);
    jw_object_end(&w);
    printf("%s\n", jw_text(&w));
    jw_free(&w);
}

int cmd_measure(int argc, char **argv)
{
    struct measure_args a = { .out_format = "raw" };
    const struct format_driver *drv;
    struct optlist o = { 0 };
    struct measure_info m;
    struct bdev *in = NULL;
    struct error *err = NULL;
    uint64_t size = 0;
    int ret = 1, r;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_OUTPUT | IMGOPT_QUIET);
    argp_parse(&measure_argp, argc, argv, 0, NULL, &a);
    /*
     * qemu-img's checks, in its order, with its messages; all of them are
     * usage errors (64, where qemu-img exits 1), a bad size said as
     * create says it
     */
    ret = EXIT_USAGE;
    if (a.size && (size_parse(a.size, &size, 0) < 0 || size > INT64_MAX)) {
        error_report("invalid image size '%s': use a number of bytes with an optional "
                     "suffix k, M, G, T, P or E (at most 8E-1)", a.size);
        goto out;
    }
    if (a.too_many) {
        error_report("At most one filename argument is allowed.");
        goto out;
    }
    if (!a.file && (a.img.format || a.snapshot)) {
        error_report("--image-opts, -f, and -l require a filename argument.");
        goto out;
    }
    if (a.file && a.size) {
        error_report("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!a.file && !a.size) {
        error_report("Either --size N or one filename must be specified.");
        goto out;
    }
    drv = bdev_find_driver(a.out_format);
    if (a.opts) {
        /* an unknown key or a value of the wrong type (the format's checks: below) */
        if (bdev_measure_opts(drv, a.opts, &o, &err) < 0) {
            report(err);
            error_report("Invalid options for file format '%s'", drv->name);
            goto out;
        }
    }
    ret = 1;
    if (a.file) {
        in = bdev_open(a.file, a.img.format, a.img.force_share ? BDEV_O_FORCE_SHARE : 0, &err);
        if (!in) {
            report(err);
            goto out;
        }
        if (a.snapshot && bdev_snapshot_load_tmp(in, a.snapshot, &err) < 0) {
            error_prefix(&err, "Failed to load snapshot: ");
            report(err);
            goto out;
        }
    }
    if (a.size) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%" PRIu64, size);
        opts_set(&o, "size", buf);
    }
    r = bdev_measure(drv, &o, in, &m, &err);
    if (r < 0) {
        report(err);
        /* a value the format refuses (checked before anything is read) */
        ret = r == -EINVAL ? EXIT_USAGE : 1;
        goto out;
    }
    if (a.img.output == OUTPUT_JSON) {
        print_json(&m);
    } else {
        printf("required size: %" PRIu64 "\n", m.required);
        printf("fully allocated size: %" PRIu64 "\n", m.fully_allocated);
        if (m.has_bitmaps) {
            printf("bitmaps size: %" PRIu64 "\n", m.bitmaps);
        }
    }
    ret = 0;
out:
    if (in) {
        bdev_unref(in);
    }
    opts_free(&o);
    free(a.opts);
    return ret;
}
