/*
 * blockctl convert - qemu-img convert's interface over the copy engine
 * that mirror uses: SOURCE... concatenated into a new (or, -n, an
 * existing) OUTPUT
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/bitmap.h"
#include "lib/copy.h"
#include "formats/format.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"

struct convert_args {
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *out_format;
    const char *backing;
    const char *backing_fmt;
    char *opts;
    const char *snapshot;   /* -l */
    char **files;           /* SOURCE... OUTPUT */
    int nfiles;
    bool compress, reuse, progress;
    bool target_is_zero, bitmaps, skip_broken, salvage, copy_range;
    uint64_t sparse_size;
    bool no_sparse, sparse_given;
    uint64_t rate;
    unsigned requests;
};

enum { OPT_TARGET_IS_ZERO = 0x100, OPT_BITMAPS, OPT_SKIP_BROKEN, OPT_SALVAGE };

static const struct argp_option options[] = {
    { NULL, 'O', "FMT", 0, "Format of OUTPUT: raw (default) or qcow2", 0 },
    { NULL, 'o', "OPTS", 0, "Options for creating OUTPUT, as create -o; -o help lists them", 0 },
    { NULL, 'B', "FILE", 0, "Backing file of the new OUTPUT (with -F)", 0 },
    { NULL, 'F', "FMT", 0, "Format of that backing file", 0 },
    { NULL, 'c', NULL, 0, "Write compressed clusters (qcow2)", 0 },
    { NULL, 'n', NULL, 0, "Copy into an existing OUTPUT (at least as large)", 0 },
    { NULL, 'S', "SIZE", 0, "Sparse: zero runs of SIZE (4k); 0: none", 0 },
    { NULL, 'r', "RATE", 0, "Copy at most RATE bytes per second", 0 },
    { NULL, 'm', "N", 0, "Requests in flight (1-16, default 4)", 0 },
    /* (no-ops, in the page: blockctl's writes are always out of order) */
    { NULL, 'W', NULL, OPTION_HIDDEN, "Out-of-order writes (blockctl's are always)", 0 },
    { NULL, 'C', NULL, 0, "Copy offloading (accepted; the result is the same)", 0 },
    { NULL, 'l', "SNAPSHOT", 0, "Copy that internal snapshot of FILENAME (ID or name)", 0 },
    { NULL, 'p', NULL, 0, "Show progress", 0 },
    { "target-is-zero", OPT_TARGET_IS_ZERO, NULL, 0, "-n: OUTPUT reads zero already", 0 },
    { "bitmaps", OPT_BITMAPS, NULL, 0, "Copy the source's persistent bitmaps", 0 },
    { "skip-broken-bitmaps", OPT_SKIP_BROKEN, NULL, 0, "--bitmaps: skip inconsistent ones", 0 },
    { "salvage", OPT_SALVAGE, NULL, 0, "Read errors: write zeroes there and go on", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct convert_args *a = state->input;

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
    case 'B':
        a->backing = arg;
        break;
    case 'F':
        a->backing_fmt = parse_format_arg(arg, "-F", state);
        break;
    case 'c':
        a->compress = true;
        break;
    case 'n':
        a->reuse = true;
        break;
    case 'S':
        parse_sparse_arg(arg, &a->sparse_size, &a->no_sparse, state);
        a->sparse_given = true;
        break;
    case 'C':
        a->copy_range = true;
        break;
    case 'l':
        a->snapshot = arg;
        break;
    case 'r':
        a->rate = parse_size_arg(arg, "rate limit", state);
        break;
    case 'm':
        a->requests = parse_coroutines_arg(arg, state);
        break;
    case 'W':
        break;
    case 'p':
        a->progress = true;
        break;
    case OPT_TARGET_IS_ZERO:
        a->target_is_zero = true;
        break;
    case OPT_BITMAPS:
        a->bitmaps = true;
        break;
    case OPT_SKIP_BROKEN:
        a->skip_broken = true;
        break;
    case OPT_SALVAGE:
        a->salvage = true;
        break;
    case ARGP_KEY_ARGS:
        a->files = state->argv + state->next;
        a->nfiles = state->argc - state->next;
        break;
    case ARGP_KEY_END:
        if (a->nfiles < 2 && !(a->opts && opts_want_help(a->opts))) {
            argp_error(state, "Must specify image file name");
        }
        /* qemu-img's refusals of -C */
        if (a->copy_range && a->compress) {
            argp_error(state, "Cannot enable copy offloading when -c is used");
        }
        if (a->copy_range && a->sparse_given) {
            argp_error(state, "Cannot enable copy offloading when -S is used");
        }
        if (a->copy_range && a->salvage) {
            argp_error(state, "Cannot use copy offloading in salvaging mode");
        }
        if (a->snapshot && a->nfiles > 2) {
            argp_error(state, "No support for concatenating multiple snapshot");
        }
        if (a->target_is_zero && !a->reuse) {
            argp_error(state, "--target-is-zero requires use of -n flag");
        }
        if (a->skip_broken && !a->bitmaps) {
            argp_error(state, "Use of --skip-broken-bitmaps requires --bitmaps");
        }
        if (a->bitmaps && a->nfiles > 2) {
            argp_error(state, "Copying bitmaps only possible with single source");
        }
        if (a->reuse && a->opts && !opts_want_help(a->opts)) {
            argp_error(state, "-o has no effect when skipping image creation");
        }
        if (a->backing && a->nfiles > 2 && !a->reuse) {
            argp_error(state, "Having a backing file for the target makes no sense when "
                       "concatenating multiple input images");
        }
        if (a->backing && !a->backing_fmt && !a->reuse) {
            argp_error(state, "Use of backing file requires explicit backing format");
        }
        if (a->backing_fmt && !a->backing && !a->reuse) {
            argp_error(state, "Backing format cannot be used without backing file");
        }
        if (a->img.quiet) {
            a->progress = false;
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_convert */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp convert_argp = {
    options, parse_opt, "FILENAME [FILENAME2 ...] OUTPUT_FILENAME",
    "Copy FILENAME... (one after the other) to OUTPUT_FILENAME: a new image (in place "
    "once complete), an existing one (-n) or an NBD URI.\v"
    "qemu-img convert's options; blockctl-convert(1) says what differs.\n"
    "Exit status: 0 done, 1 error, 64 usage error, 130/143 interrupted.",
    children, NULL, NULL,
};

/* progress over all the sources: @base bytes before this one, of @total */
struct convert_progress {
    uint64_t base, total;
};

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    struct convert_progress *pr = opaque;

    (void)total;
    progress_print(pr->total ? (pr->base + done) * 100.0 / pr->total : 100.0);
}

static void salvaged(void *opaque, uint64_t off, uint64_t len, int err)
{
    (void)opaque;
    error_report("warning: error while reading offset %" PRIu64 ": %s (%" PRIu64 " bytes "
                 "written as zeroes)", off, strerror(-err), len);
}

/*
 * --bitmaps: the persistent bitmaps of the source's top image, with their
 * granularity and enabled state, into OUTPUT (as qemu-img convert does).
 */
static int copy_bitmaps(struct bdev *src, struct bdev *dst, bool skip_broken)
{
    struct error *err = NULL;

    for (struct bdev_bitmap *b = src->bitmaps; b; b = b->next) {
        struct bitmap_op ops[2] = { { 0 } };
        struct dirty_bitmap *bm = NULL;

        if (!b->persistent) {
            continue;
        }
        if (b->inconsistent) {
            if (skip_broken) {
                error_report("warning: Skipping inconsistent bitmap '%s'", b->name);
                continue;
            }
            error_report("Cannot copy inconsistent bitmap '%s' of '%s': try "
                         "--skip-broken-bitmaps, or remove it (bitmap --remove)", b->name,
                         src->filename);
            return 1;
        }
        if (bdev_bitmap_get(src, b->name, &bm, &err) < 0) {
            report(err);
            return 1;
        }
        ops[0].type = BITMAP_OP_ADD;
        ops[0].name = b->name;
        ops[0].granularity = b->granularity;
        ops[0].disabled = !b->enabled;
        ops[0].persistent = true;
        ops[1].type = BITMAP_OP_MERGE;
        ops[1].name = b->name;
        ops[1].src = bm;
        if (bdev_bitmap_apply(dst, ops, 2, &err) < 0) {
            bitmap_free(bm);
            report(err);
            return 1;
        }
        bitmap_free(bm);
    }
    return 0;
}

int cmd_convert(int argc, char **argv)
{
    struct convert_args a = { 0 };
    struct error *err = NULL;
    struct optlist o = { 0 };
    struct copy_target t = { 0 };
    struct bdev **src = NULL;
    const struct format_driver *drv;
    const char *output, *fmt;
    struct convert_progress pr = { 0 };
    uint64_t total = 0;
    int nsrc, ret = 1, r;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_QUIET | IMGOPT_CACHE |
                                     IMGOPT_SRC_CACHE);
    argp_parse(&convert_argp, argc, argv, 0, NULL, &a);
    fmt = a.out_format ? a.out_format : "raw";
    drv = bdev_find_driver(fmt);
    if (a.opts && opts_want_help(a.opts)) {
        opts_print_help(drv->name, drv->create_opts);
        free(a.opts);
        return 0;
    }
    cancel_install();
    output = a.files[a.nfiles - 1];
    nsrc = a.nfiles - 1;
    src = xcalloc(nsrc, sizeof(*src));
    for (int i = 0; i < nsrc; i++) {
        src[i] = bdev_open(a.files[i], a.img.format,
                           (a.img.force_share ? BDEV_O_FORCE_SHARE : 0) | a.img.src_cache, &err);
        if (!src[i]) {
            report(err);
            goto out;
        }
        if (a.snapshot && bdev_snapshot_load_tmp(src[i], a.snapshot, &err) < 0) {
            error_prefix(&err, "Failed to load snapshot: ");
            report(err);
            goto out;
        }
        if (target_refuse_own_chain(src[i], a.files[i], output, a.reuse, "convert")) {
            goto out;
        }
        total += src[i]->size;
    }
    t.name = output;
    t.size = total;
    t.reuse = a.reuse;
    t.unsafe = a.img.cache & BDEV_O_NO_FLUSH;
    t.cache = a.img.cache;
    t.replace = true;
    if (a.reuse || nbd_is_uri(output)) {
        if (nbd_is_uri(output) && strcmp(fmt, "raw")) {
            error_report("'%s': an NBD export is written as raw: -O %s is not supported there",
                         output, fmt);
            ret = EXIT_USAGE;
            goto out;
        }
        t.fmt = nbd_is_uri(output) ? NULL : fmt;
    } else {
        if (a.compress && !drv->pwrite_compressed) {
            error_report("Compression not supported for this file format ('%s')", fmt);
            ret = EXIT_USAGE;
            goto out;
        }
        if (a.backing && !drv->supports_backing) {
            error_report("Backing file not supported for file format '%s'", fmt);
            ret = EXIT_USAGE;
            goto out;
        }
        if ((r = create_opts_parse(drv, a.opts, &o, output)) != 0) {
            ret = r;
            goto out;
        }
        if (a.backing) {
            opts_set(&o, "backing_file", a.backing);
            opts_set(&o, "backing_fmt", a.backing_fmt);
        }
        {
            char sz[32];
            snprintf(sz, sizeof(sz), "%" PRIu64, total);
            opts_set(&o, "size", sz);
        }
        if ((r = create_opts_check(drv, &o, output)) != 0) {
            ret = r;
            goto out;
        }
        t.fmt = fmt;
        t.o = &o;
    }
    if (a.bitmaps && (!src[0]->drv->bitmap_store || !drv->bitmap_store)) {
        error_report("Format driver '%s' does not support bitmaps",
                     src[0]->drv->bitmap_store ? fmt : bdev_format_name(src[0]));
        goto out;
    }
    if ((r = target_open(&t)) != 0) {
        ret = r;
        goto out;
    }
    if (a.compress && !t.dst->drv->pwrite_compressed) {
        error_report("Compression not supported for this file format ('%s')",
                     t.dst->drv->name);
        goto out;
    }
    if (a.target_is_zero && t.dst->backing_file) {
        error_report("Cannot use --target-is-zero when the destination image has a backing "
                     "file");
        goto out;
    }
    pr.total = total;
    if (a.progress) {
        progress_print(0);
    }
    for (int i = 0; i < nsrc; i++) {
        struct copy_params cp;

        memset(&cp, 0, sizeof(cp));
        cp.src = src[i];
        cp.dst = t.dst;
        /*
         * -B: OUTPUT's backing file holds what SOURCE's backing chain
         * does (qemu-img's assumption): only SOURCE's top layer is copied.
         */
        cp.mode = a.backing ? COPY_ABOVE : COPY_ALL;
        cp.base = a.backing ? src[i]->backing : NULL;
        cp.dst_offset = pr.base;
        cp.dst_is_zero = (t.created && !t.dst->backing_file) || a.target_is_zero;
        /* -B: zeroes written as zeroes over the backing file, as qemu-img does */
        cp.check_dst_zero = !cp.dst_is_zero && !a.backing;
        cp.compress = a.compress;
        cp.sparse_size = a.sparse_size;
        cp.no_sparse = a.no_sparse;
        cp.salvage = a.salvage;
        cp.salvaged = salvaged;
        /* flushed once, after the last */
        cp.no_flush = (a.img.cache & BDEV_O_NO_FLUSH) || i + 1 < nsrc;
        cp.bandwidth = a.rate;
        cp.workers = a.requests;
        cp.cancel = &cmd_cancel;
        if (a.progress) {
            cp.progress = progress_cb;
            cp.opaque = &pr;
        }
        r = target_copy(&t, &cp);
        if (r != 0) {
            if (a.progress) {
                printf("\n");
            }
            ret = r;
            goto out;
        }
        pr.base += src[i]->size;
    }
    if (a.progress) {
        progress_done();
    }
    if (a.bitmaps && copy_bitmaps(src[0], t.dst, a.skip_broken) != 0) {
        goto out;
    }
    if (target_install(&t) != 0) {
        goto out;
    }
    ret = 0;
out:
    target_cleanup(&t);
    for (int i = 0; src && i < nsrc; i++) {
        if (src[i]) {
            bdev_unref(src[i]);
        }
    }
    free(src);
    opts_free(&o);
    free(a.opts);
    return ret;
}
