/*
 * blockctl amend - change an image's options in place
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"

struct amend_args {
    struct img_opts img;     /* the shared options (imgopts.c) */
    char *opts;            /* joined -o arguments */
    const char *file;
    int nfiles;
    bool progress;
    bool force;
};

enum { OPT_FORCE = 0x100 };

static const struct argp_option options[] = {
    { "options", 'o', "OPTS", 0, "Options to change, key=val[,...]; '-o help' lists them", 0 },
    { "progress", 'p', NULL, 0, "Show progress", 0 },
    { "force", OPT_FORCE, NULL, 0, "Accepted as qemu-img does (changes nothing here)", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct amend_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case 'o':
        append_opts(&a->opts, arg);
        break;
    case 'p':
        a->progress = true;
        break;
    case OPT_FORCE:
        a->force = true;
        break;
    case ARGP_KEY_ARG:
        a->file = arg;
        a->nfiles++;
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_amend */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp amend_argp = {
    options, parse_opt, "FILE",
    "Change the options of a qcow2 image in place: compat (0.10 or 1.1), "
    "refcount_bits, lazy_refcounts, size.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    children, NULL, NULL,
};

static int cmp_desc(const void *x, const void *y)
{
    return strcmp(((const struct opt_desc *)x)->name, ((const struct opt_desc *)y)->name);
}

/* "-o help", as qemu-img prints it: the options amend supports, sorted. */
static int print_help(const struct format_driver *drv)
{
    static const char *const types[] = { "str", "bool (on/off)", "size", "num" };
    struct opt_desc *v;
    size_t n = 0;

    if (!drv->amend_opts) {
        error_report("Format driver '%s' does not support option amendment", drv->name);
        return 1;
    }
    while (drv->amend_opts[n].name) {
        n++;
    }
    v = xmalloc((n + 1) * sizeof(*v));
    memcpy(v, drv->amend_opts, n * sizeof(*v));
    qsort(v, n, sizeof(*v), cmp_desc);
    printf("Amend options for '%s':\n", drv->name);
    for (size_t i = 0; i < n; i++) {
        char head[64];
        if (!v[i].help) {
            continue; /* accepted for qemu-img's messages, not supported */
        }
        snprintf(head, sizeof(head), "  %s=<%s>", v[i].name, types[v[i].type]);
        printf("%-24s - %s\n", head, v[i].help);
    }
    free(v);
    return 0;
}

static void on_progress(double pct, void *opaque)
{
    (void)opaque;
    progress_print(pct);
}

int cmd_amend(int argc, char **argv)
{
    struct amend_args a = { 0 };
    struct optlist o = { 0 };
    struct error *err = NULL;
    struct amend_ctl ctl = { 0 };
    struct bdev *bd = NULL;
    int ret = 1, r;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_QUIET | IMGOPT_CACHE);
    argp_parse(&amend_argp, argc, argv, 0, NULL, &a);
    /* qemu-img's checks, in its order, with its messages (usage errors: 64, not 1) */
    if (!a.opts) {
        error_report("Must specify options (-o)");
        fprintf(stderr, "Try 'blockctl amend --help' for more information\n");
        return EXIT_USAGE;
    }
    if (a.img.quiet) {
        a.progress = false;
    }
    if (a.img.format && opts_want_help(a.opts)) {
        const struct format_driver *drv = bdev_find_driver(a.img.format);
        if (!drv) {
            error_report("Unknown file format '%s'", a.img.format);
        } else {
            ret = print_help(drv);
        }
        goto out;
    }
    if (a.nfiles != 1) {
        error_report("Expecting one image file name");
        ret = EXIT_USAGE;
        goto out;
    }
    bd = bdev_open(a.file, a.img.format, BDEV_O_RDWR | BDEV_O_NO_BITMAPS | a.img.cache, &err);
    if (!bd) {
        report(err);
        goto out;
    }
    if (opts_want_help(a.opts)) {
        ret = print_help(bd->drv);
        goto out;
    }
    r = bdev_amend_opts(bd->drv, a.opts, &o, &err);
    if (r < 0) {
        /* an unknown option or a value of the wrong type: a usage error */
        report(err);
        ret = r == -EINVAL ? EXIT_USAGE : 1;
        goto out;
    }
    ctl.force = a.force;
    if (a.progress) {
        ctl.progress = on_progress;
        progress_print(0);
    }
    r = bdev_amend(bd, &o, &ctl, &err);
    /* (-EDOM: a value that is not valid, refused before any change) */
    ret = r == -EDOM ? EXIT_USAGE : r < 0 ? 1 : 0;
    if (a.progress) {
        progress_print(100);
    }
    if (ret) {
        report(err);
    }
out:
    if (a.progress) {
        printf("\n");
    }
    if (bd && bdev_close(bd, ret ? NULL : &err) < 0 && ret == 0) {
        report(err);
        ret = 1;
    }
    opts_free(&o);
    free(a.opts);
    return ret;
}
