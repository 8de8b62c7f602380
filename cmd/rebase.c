/*
 * blockctl rebase - give an image another backing file, keeping what it
 * reads (safe mode) or rewriting the link alone (-u)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Safe mode writes into FILE, through the copy engine, what its old
 * backing chain shows where FILE has nothing of its own and the new
 * backing file reads differently, then records the new name.  Until the
 * name is recorded FILE keeps its old backing file and reads the same, so
 * an interrupted rebase can simply be run again.
 */
#include "lib/compiler.h"
#include "lib/copy.h"
#include "lib/remote.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"

struct rebase_args {
    const char *agent;
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *backing;        /* -b: "" flattens; NULL: none given */
    const char *backing_fmt;
    const char *file;
    bool unsafe;
    struct copy_opts copy;
};

enum { OPT_AGENT = 0x100 };

static const struct argp_option options[] = {
    { "backing", 'b', "BACKING", 0, "The new backing file ('' for none: FILE becomes "
      "standalone); relative to FILE's folder", 0 },
    { "backing-format", 'F', "FMT", 0, "Format of BACKING (required with a BACKING)", 0 },
    { "unsafe", 'u', NULL, 0, "Only rewrite the backing file name (no data is compared "
      "or copied)", 0 },
    { "agent", OPT_AGENT, "SOCKET", 0, "With -u: FILE is a disk of that agent "
      "(change-backing-file, live)", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct rebase_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[1] = &a->img;
        state->child_inputs[0] = &a->copy;
        break;
    case 'b':
        a->backing = arg;
        break;
    case 'F':
        a->backing_fmt = parse_format_arg(arg, "-F", state);
        break;
    case 'u':
        a->unsafe = true;
        break;
    case OPT_AGENT:
        a->agent = arg;
        break;
    case ARGP_KEY_ARG:
        if (a->file) {
            argp_error(state, "Expecting one image file name");
        }
        a->file = arg;
        break;
    case ARGP_KEY_END:
        if (!a->file) {
            argp_error(state, "Expecting one image file name");
        }
        if (!a->unsafe && !a->backing) {
            argp_error(state, "Must specify backing file (-b) or use unsafe mode (-u)");
        }
        if (remote_path(a->agent) && !a->unsafe) {
            argp_error(state, "--agent goes with -u: a live rebase only rewrites the link "
                       "(change-backing-file)");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [1]: the shared image options (imgopts.c), set by cmd_rebase */
static struct argp_child children[] = { { &copy_opts_argp, 0, NULL, 0 },
                                        { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp rebase_argp = {
    options, parse_opt, "FILE",
    "Make BACKING the backing file of FILE.  Safe mode (the default) first writes into FILE "
    "what differs between the old and the new backing file where FILE has no data of its "
    "own, so that FILE reads the same; -u only rewrites the name.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors, 130/143 when interrupted "
    "(FILE then keeps its old backing file and reads as before).",
    children, NULL, NULL,
};

/* --agent -u: change-backing-file of the disk's top image */
static int rebase_agent(struct rebase_args *a)
{
    struct error *err = NULL;
    struct qmp_client *c = remote_connect(a->agent, &err);
    struct remote_disk d = { 0 };
    json_object *args;
    int ret = 1;

    if (!c || remote_find_disk(c, a->file, &d, &err) < 0) {
        report(err);
        goto out;
    }
    if (!d.top_node) {
        error_report("disk '%s': its top image has no node name", a->file);
        goto out;
    }
    args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(d.device ? d.device
                                                                          : d.node));
    json_object_object_add(args, "image-node-name", json_object_new_string(d.top_node));
    json_object_object_add(args, "backing-file",
                           json_object_new_string(a->backing ? a->backing : ""));
    if (qmp_client_execute(c, "change-backing-file", args, NULL, &err) < 0) {
        report(err);
        goto out;
    }
    ret = 0;
out:
    remote_disk_free(&d);
    if (c) {
        qmp_client_close(c);
    }
    return ret;
}

/*
 * Open the new backing file @name (relative to @top's folder), or find it
 * in @top's old chain (*in_chain).  NULL with the error reported.
 */
static struct bdev *open_new_backing(struct rebase_args *a, struct bdev *top, bool *in_chain)
{
    struct error *err = NULL;
    char *path = bdev_path_combine(top->filename, a->backing);
    struct bdev *nb = top->backing ? bdev_chain_find(top->backing, path) : NULL;

    *in_chain = nb != NULL;
    if (!nb) {
        nb = bdev_open(path, a->backing_fmt,
                       BDEV_O_NO_BITMAPS | (a->img.force_share ? BDEV_O_FORCE_SHARE : 0) |
                           a->img.src_cache, &err);
        if (!nb) {
            if (!strncmp(err->msg, "cannot open", 11)) {
                char *m = xasprintf("Could not open%s", err->msg + 11);   /* QEMU's words */
                free(err->msg);
                err->msg = m;
            }
            error_prefix(&err, "Could not open new backing file '%s': ", a->backing);
            report(err);
        }
    }
    free(path);
    return nb;
}

/* Safe mode: write into @top what the new backing @nb (NULL: none) reads differently. */
static int copy_differences(struct rebase_args *a, struct bdev *top, struct bdev *nb,
                            bool in_chain)
{
    struct error *err = NULL;
    struct copy_params cp;
    int r;

    memset(&cp, 0, sizeof(cp));
    cp.src = top;
    cp.dst = top;
    /* onto an image of the old chain: only what lies above it can differ */
    cp.mode = in_chain ? COPY_ABOVE : COPY_ALL;
    cp.base = in_chain ? nb : NULL;
    cp.skip_top = true;
    cp.zero_over_below = true;
    cp.diff_below = true;
    cp.below = nb;
    if (!a->img.quiet) {
        copy_opts_apply(&a->copy, &cp);
    } else {
        struct copy_opts q = a->copy;
        q.progress = q.progress_json = false;
        copy_opts_apply(&q, &cp);
    }
    cp.no_flush = a->img.cache & BDEV_O_NO_FLUSH;
    r = copy_run(&cp, &err);
    if (!a->img.quiet) {
        copy_opts_finish(&a->copy);
    }
    if (r == -ECANCELED) {
        error_report("interrupted: '%s' keeps its backing file and reads as before; run "
                     "rebase again to finish", a->file);
        return cancel_exit_status();
    }
    if (r < 0) {
        report(err);
        error_report("'%s' keeps its backing file and reads as before", a->file);
        return 1;
    }
    return 0;
}

int cmd_rebase(int argc, char **argv)
{
    struct rebase_args a = { 0 };
    struct error *err = NULL;
    struct bdev *top, *nb = NULL;
    struct bdev_open_opts oo = { 0 };
    bool in_chain = false;
    const char *name;
    int ret = 1, r;

    children[1].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_QUIET | IMGOPT_CACHE |
                                     IMGOPT_SRC_CACHE);
    argp_parse(&rebase_argp, argc, argv, 0, NULL, &a);
    cancel_install();
    if (remote_path(a.agent)) {
        if (a.backing_fmt) {
            error_report("-F does not go with --agent: change-backing-file records the "
                         "backing format itself");
            return EXIT_USAGE;
        }
        return rebase_agent(&a);
    }
    name = a.backing ? a.backing : "";
    /* -t for FILE, -T for the backing files (old and new) */
    oo.backing_cache_set = true;
    oo.backing_cache = a.img.src_cache;
    top = bdev_open_ext(a.file, a.img.format,
                        BDEV_O_RDWR | (a.unsafe ? BDEV_O_NO_BACKING : 0) | a.img.cache |
                            ((a.img.cache & BDEV_O_NO_FLUSH) ? BDEV_O_UNORDERED : 0),
                        &oo, &err);
    if (!top) {
        report(err);
        return 1;
    }
    if (!top->drv->change_backing) {
        error_report("Could not change the backing file to '%s': %s", name, strerror(ENOTSUP));
        goto out;
    }
    if (*name && !a.backing_fmt) {
        /* qemu-img 7.2 finds this only after the copy; the answer is the same */
        error_report("Could not change the backing file to '%s': backing format must be "
                     "specified", name);
        goto out;
    }
    if (!a.unsafe) {
        if (*name && !(nb = open_new_backing(&a, top, &in_chain))) {
            goto out;
        }
        r = copy_differences(&a, top, nb, in_chain);
        if (r) {
            ret = r;
            goto out;
        }
    } else if (!a.img.quiet) {
        copy_opts_nothing(&a.copy);
    }
    if (top->drv->change_backing(top, *name ? name : NULL, *name ? a.backing_fmt : NULL,
                                 &err) < 0) {
        if (err->errnum == ENOSPC) {
            error_report("Could not change the backing file to '%s': No space left in the "
                         "file header", name);
            error_free(err);
        } else {
            report(err);
        }
        goto out;
    }
    ret = 0;
out:
    if (nb && !in_chain) {
        bdev_unref(nb);
    }
    if (bdev_close(top, &err) < 0) {
        report(err);
        ret = ret ? ret : 1;
    }
    return ret;
}
