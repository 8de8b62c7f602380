/*
 * blockctl commit - merge an overlay (or a part of the chain) into its base
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/copy.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

struct commit_args {
    const char *format;
    const char *top;
    const char *base;
    const char *image;
    bool keep;
    struct copy_opts copy;
};

enum { OPT_TOP = 0x100, OPT_BASE };

static const struct argp_option options[] = {
    { "format", 'f', "FMT", 0, "Format of IMAGE; probed when omitted", 0 },
    { "top", OPT_TOP, "TOP", 0, "Commit from TOP (an image of the chain; default IMAGE)", 0 },
    { "base", OPT_BASE, "BASE", 0, "Commit into BASE (default: TOP's backing file)", 0 },
    { "keep", 'd', NULL, 0, "Keep TOP's data (do not empty it afterwards)", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct commit_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->copy;
        break;
    case 'f':
        a->format = arg;
        break;
    case OPT_TOP:
        a->top = arg;
        break;
    case OPT_BASE:
        a->base = arg;
        break;
    case 'd':
        a->keep = true;
        break;
    case ARGP_KEY_ARG:
        if (a->image) {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        a->image = arg;
        break;
    case ARGP_KEY_END:
        if (!a->image) {
            argp_error(state, "missing image file name");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp_child children[] = { { &copy_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp commit_argp = {
    options, parse_opt, "IMAGE",
    "Merge into BASE everything from TOP down to just above BASE, and re-point the image "
    "above TOP at BASE, so that IMAGE reads the same before and after.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors, 130/143 when "
    "interrupted (the chain then still reads as before).",
    children, NULL, NULL,
};

int cmd_commit(int argc, char **argv)
{
    struct commit_args a = { 0 };
    struct error *err = NULL;
    struct copy_params cp;
    struct bdev *img, *top, *base, *parent;
    char *name = NULL;
    int ret = 1, r;

    argp_parse(&commit_argp, argc, argv, 0, NULL, &a);
    cancel_install();
    img = bdev_open(a.image, a.format, 0, &err);
    if (!img) {
        report(err);
        return 1;
    }
    top = a.top ? bdev_chain_find(img, a.top) : img;
    if (!top) {
        error_report("'%s' is not in the backing chain of '%s'", a.top, a.image);
        goto out;
    }
    if (!top->backing) {
        error_report("'%s' has no backing file to commit into", top->filename);
        goto out;
    }
    base = a.base ? bdev_chain_find(top->backing, a.base) : top->backing;
    if (!base) {
        error_report("'%s' is not below '%s' in the backing chain of '%s'", a.base,
                     top->filename, a.image);
        goto out;
    }
    parent = bdev_chain_parent(img, top);
    /* Everything that will be written takes its write locks now. */
    if (bdev_reopen(base, BDEV_O_RDWR, &err) < 0) {
        report(err);
        goto out;
    }
    if (parent && bdev_reopen(parent, BDEV_O_RDWR, &err) < 0) {
        report(err);
        goto out;
    }
    if ((!a.keep || (top == img && base != top->backing)) &&
        bdev_reopen(top, BDEV_O_RDWR, &err) < 0) {
        report(err);
        goto out;
    }

    if (base->size < top->size) {
        /* as qemu-img commit: the base grows to the size of what is committed */
        if (bdev_truncate(base, top->size, &err) < 0) {
            report(err);
            goto out;
        }
    }
    memset(&cp, 0, sizeof(cp));
    cp.src = top;
    cp.dst = base;
    cp.mode = COPY_ABOVE;
    cp.base = base;
    cp.check_dst_zero = true;
    copy_opts_apply(&a.copy, &cp);
    r = copy_run(&cp, &err);
    copy_opts_finish(&a.copy);
    if (r == -ECANCELED) {
        error_report("interrupted: the chain of '%s' still reads as before; '%s' holds part of "
                     "the committed data; run commit again to finish", a.image, base->filename);
        ret = cancel_exit_status();
        goto out;
    }
    if (r < 0) {
        report(err);
        error_report("the chain of '%s' still reads as before", a.image);
        goto out;
    }

    /*
     * The image above TOP read zeroes past TOP's end; on BASE it would
     * read BASE there: keep the zeroes, in it (as qemu-img rebase does).
     */
    if (parent && parent->size > top->size && base->size > top->size) {
        uint64_t off = top->size, end = MIN(parent->size, base->size);
        while (off < end) {
            struct bdev_map m;
            r = bdev_block_status_above(parent, parent->backing, off, end - off, &m);
            if (r == 0 && !(m.status & BDEV_BLOCK_ALLOCATED)) {
                r = bdev_pwrite_zeroes(parent, off, m.len, BDEV_REQ_WRITE_UNCHANGED);
            }
            if (r < 0) {
                bdev_report_io_error(parent, "cannot write zeroes to", r);
                error_report("the chain of '%s' still reads as before", a.image);
                goto out;
            }
            off += m.len;
        }
    }

    /* Drop TOP .. above BASE from the chain: one header write. */
    if (parent || base != top->backing) {
        struct bdev *above = parent ? parent : top;
        name = bdev_backing_name_for(above, img, base);
        if (above->drv->change_backing(above, name, bdev_format_name(base), &err) < 0) {
            report(err);
            goto out;
        }
    }
    if (!a.keep) {
        r = bdev_make_empty(top);
        if (r < 0 && r != -ENOTSUP) {
            bdev_report_io_error(top, "cannot empty", r);
            goto out;
        }
    }
    ret = 0;
out:
    free(name);
    if (bdev_close(img, &err) < 0) {
        report(err);
        ret = ret ? ret : 1;
    }
    return ret;
}
