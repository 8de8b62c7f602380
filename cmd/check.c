/*
 * blockctl check - check an image's consistency, and repair it
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/jw.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

/* qemu-img check's exit codes */
enum {
    CHECK_OK = 0,
    CHECK_NOT_COMPLETED = 1,
    CHECK_CORRUPT = 2,
    CHECK_LEAKS = 3,
    CHECK_UNSUPPORTED = 63,
};

struct check_args {
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *file;
    unsigned fix;
};

enum { OPT_OUTPUT = 0x100 };

static const struct argp_option options[] = {
    { "repair", 'r', "leaks|all", 0, "Repair leaked clusters, or everything that can be", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct check_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case 'r':
        if (!strcmp(arg, "leaks")) {
            a->fix = CHECK_FIX_LEAKS;
        } else if (!strcmp(arg, "all")) {
            a->fix = CHECK_FIX_LEAKS | CHECK_FIX_ERRORS;
        } else {
            argp_error(state, "-r must be 'leaks' or 'all', not '%s'", arg);
        }
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
        if (a->fix && a->img.force_share) {
            argp_error(state, "-U cannot be combined with -r (repairing needs write access)");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_check */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp check_argp = {
    options, parse_opt, "FILE",
    "Check a disk image for consistency; with -r, repair it.\v"
    "Exit status: 0 consistent (or repaired), 1 check not completed, 2 corruptions "
    "found, 3 leaked clusters only, 63 format without checks, 64 usage error.",
    children, NULL, NULL,
};

static void print_human(const struct check_result *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            printf("\n%" PRId64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        }
        if (r->leaks) {
            printf("\n%" PRId64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n", r->leaks);
        }
        if (r->check_errors) {
            printf("\n%" PRId64 " internal errors have occurred during the check.\n",
                   r->check_errors);
        }
    }
    if (r->total_clusters && r->allocated_clusters) {
        printf("%" PRIu64 "/%" PRIu64 " = %.2f%% allocated, %.2f%% fragmented, %.2f%% "
               "compressed clusters\n", r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
    }
}

static void print_json(const struct check_result *r, const char *file, const char *fmt)
{
    struct jw w;

    jw_init(&w, true);
    jw_object_begin(&w);
    if (r->image_end_offset) {
        jw_kv_uint(&w, "image-end-offset", r->image_end_offset);
    }
    if (r->compressed_clusters) {
        jw_kv_uint(&w, "compressed-clusters", r->compressed_clusters);
    }
    if (r->total_clusters) {
        jw_kv_uint(&w, "total-clusters", r->total_clusters);
    }
    if (r->corruptions) {
        jw_kv_int(&w, "corruptions", r->corruptions);
    }
    if (r->corruptions_fixed) {
        jw_kv_int(&w, "corruptions-fixed", r->corruptions_fixed);
    }
    jw_kv_int(&w, "check-errors", r->check_errors);
    if (r->leaks) {
        jw_kv_int(&w, "leaks", r->leaks);
    }
    if (r->leaks_fixed) {
        jw_kv_int(&w, "leaks-fixed", r->leaks_fixed);
    }
    if (r->allocated_clusters) {
        jw_kv_uint(&w, "allocated-clusters", r->allocated_clusters);
    }
    jw_kv_string(&w, "filename", file);
    jw_kv_string(&w, "format", fmt);
    if (r->fragmented_clusters) {
        jw_kv_uint(&w, "fragmented-clusters", r->fragmented_clusters);
    }
    jw_object_end(&w);
    printf("%s\n", jw_text(&w));
    jw_free(&w);
}

static void print_result(const struct check_args *a, const struct check_result *r,
                         const char *fmt)
{
    if (a->img.quiet) {
        /* as qemu-img: -q prints nothing, whatever the format */
    } else if (a->img.output == OUTPUT_JSON) {
        print_json(r, a->file, fmt);
    } else {
        print_human(r);
    }
}

/*
 * A check that stopped: as qemu-img, the internal errors (metadata that
 * could not be read) are counted in the results, then the error follows.
 */
static int check_failed(const struct check_args *a, const struct check_result *r,
                        const char *fmt, struct error *err)
{
    if (r->check_errors) {
        print_result(a, r, fmt);
    }
    report(err);
    return CHECK_NOT_COMPLETED;
}

int cmd_check(int argc, char **argv)
{
    struct check_args a = { 0 };
    struct check_result r, r2;
    struct error *err = NULL;
    struct bdev *bd;
    const char *fmt;
    unsigned flags;
    int ret;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_OUTPUT | IMGOPT_QUIET |
                                     IMGOPT_SRC_CACHE);
    argp_parse(&check_argp, argc, argv, 0, NULL, &a);
    /* with its backing chain, as qemu-img: a missing backing file is an error */
    flags = BDEV_O_CHECK | BDEV_O_NO_BITMAPS |
            (a.fix ? BDEV_O_RDWR : 0) | (a.img.force_share ? BDEV_O_FORCE_SHARE : 0);
    bd = bdev_open(a.file, a.img.format, flags | a.img.src_cache, &err);
    if (!bd) {
        report(err);
        return CHECK_NOT_COMPLETED;
    }
    fmt = bd->drv->name;
    if (!bd->drv->check) {
        error_report("'%s': this image format (%s) does not support checks", a.file,
                     bd->drv->name);
        bdev_unref(bd);
        return CHECK_UNSUPPORTED;
    }
    memset(&r, 0, sizeof(r));
    ret = bd->drv->check(bd, &r, a.fix, &err);
    if (ret < 0) {
        bdev_unref(bd);
        return check_failed(&a, &r, fmt, err);
    }
    if (a.fix && (r.leaks_fixed || r.corruptions_fixed)) {
        if (a.img.output == OUTPUT_HUMAN && !a.img.quiet) {
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %" PRId64 " leaked clusters\n    %" PRId64 " corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   r.leaks_fixed, r.corruptions_fixed);
        }
        memset(&r2, 0, sizeof(r2));
        ret = bd->drv->check(bd, &r2, 0, &err);
        if (ret < 0) {
            bdev_unref(bd);
            return check_failed(&a, &r2, fmt, err);
        }
        r2.leaks_fixed = r.leaks_fixed;
        r2.corruptions_fixed = r.corruptions_fixed;
        r = r2;
    }
    if (bdev_close(bd, &err) < 0) {
        report(err);
        return CHECK_NOT_COMPLETED;
    }
    print_result(&a, &r, fmt);
    if (r.check_errors) {
        return CHECK_NOT_COMPLETED;
    }
    if (r.corruptions) {
        return CHECK_CORRUPT;
    }
    if (r.leaks) {
        return CHECK_LEAKS;
    }
    return CHECK_OK;
}
