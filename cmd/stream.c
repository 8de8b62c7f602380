/*
 * blockctl stream - pull backing data into an overlay (copy-on-read)
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/copy.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

struct stream_args {
    const char *format;
    const char *base;
    const char *top;
    struct copy_opts copy;
};

enum { OPT_BASE = 0x100 };

static const struct argp_option options[] = {
    { "format", 'f', "FMT", 0, "Format of TOP; probed when omitted", 0 },
    { "base", OPT_BASE, "BASE", 0, "Keep BASE (an image of the chain) as the backing file", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct stream_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->copy;
        break;
    case 'f':
        a->format = arg;
        break;
    case OPT_BASE:
        a->base = arg;
        break;
    case ARGP_KEY_ARG:
        if (a->top) {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        a->top = arg;
        break;
    case ARGP_KEY_END:
        if (!a->top) {
            argp_error(state, "missing image file name");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp_child children[] = { { &copy_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp stream_argp = {
    options, parse_opt, "TOP",
    "Copy into TOP everything it reads from its backing chain above BASE, then make BASE "
    "(or nothing) its backing file.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors, 130/143 when "
    "interrupted (TOP then still has its old backing file and reads the same).",
    children, NULL, NULL,
};

int cmd_stream(int argc, char **argv)
{
    struct stream_args a = { 0 };
    struct error *err = NULL;
    struct copy_params cp;
    struct bdev *top, *base = NULL;
    char *new_backing = NULL;
    int ret = 1, r;

    argp_parse(&stream_argp, argc, argv, 0, NULL, &a);
    cancel_install();
    top = bdev_open(a.top, a.format, BDEV_O_RDWR, &err);
    if (!top) {
        report(err);
        return 1;
    }
    if (!top->drv->change_backing) {
        error_report("'%s': format '%s' has no backing file to stream from", a.top,
                     top->drv->name);
        goto out;
    }
    if (a.base) {
        base = top->backing ? bdev_chain_find(top->backing, a.base) : NULL;
        if (!base) {
            error_report("'%s' is not in the backing chain of '%s'", a.base, a.top);
            goto out;
        }
    }
    if (!top->backing) {
        /* nothing to pull in */
        ret = 0;
        goto out;
    }
    if (base) {
        new_backing = bdev_backing_name_for(top, top, base);
    }

    memset(&cp, 0, sizeof(cp));
    cp.src = top;
    cp.dst = top;
    cp.mode = COPY_ABOVE;
    cp.base = base;
    cp.skip_top = true;
    cp.unchanged = true;
    cp.zero_over_below = true;
    cp.below = base;
    copy_opts_apply(&a.copy, &cp);
    r = copy_run(&cp, &err);
    copy_opts_finish(&a.copy);
    if (r == -ECANCELED) {
        error_report("interrupted: '%s' keeps its backing file '%s' and reads as before; run "
                     "stream again to finish", a.top, top->backing_file);
        ret = cancel_exit_status();
        goto out;
    }
    if (r < 0) {
        report(err);
        error_report("'%s' keeps its backing file '%s' and reads as before", a.top,
                     top->backing_file);
        goto out;
    }
    if (top->drv->change_backing(top, new_backing, base ? bdev_format_name(base) : NULL, &err) < 0) {
        report(err);
        goto out;
    }
    ret = 0;
out:
    free(new_backing);
    if (bdev_close(top, &err) < 0) {
        report(err);
        ret = ret ? ret : 1;
    }
    return ret;
}
