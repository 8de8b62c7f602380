/*
 * blockctl mirror - copy a disk to new storage (a file or an NBD export)
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/bitmap.h"
#include "lib/copy.h"
#include "lib/journal.h"
#include "lib/io.h"
#include "lib/remote.h"
#include "formats/format.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "cmd/cmd.h"

enum sync_mode { SYNC_FULL, SYNC_TOP, SYNC_NONE, SYNC_BITMAP };

struct mirror_args {
    const char *agent;
    bool wait, async;
    enum at_ready at_ready;
    bool at_ready_set;
    const char *copy_mode;
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *out_format;
    const char *backing;
    const char *backing_fmt;
    const char *source;
    const char *target;
    char *opts;
    enum sync_mode sync;
    const char *bitmap;
    bool clear_bitmap;
    bool reuse;
    bool compress;
    uint64_t sparse_size;
    bool no_sparse;
    struct copy_opts copy;
};

enum { OPT_SYNC = 0x100, OPT_SHALLOW, OPT_BITMAP, OPT_CLEAR_BITMAP, OPT_AGENT, OPT_WAIT,
       OPT_PIVOT, OPT_FINISH, OPT_COPY_MODE, OPT_ASYNC };

static const struct argp_option options[] = {
    { "target-format", 'O', "FMT", 0, "Format of TARGET (default: SOURCE's format)", 0 },
    { "sync", OPT_SYNC, "MODE", 0, "full (default), top, none, or bitmap (--bitmap)", 0 },
    { "bitmap", OPT_BITMAP, "NAME", 0, "The dirty bitmap for --sync=bitmap", 0 },
    { "clear-bitmap", OPT_CLEAR_BITMAP, NULL, 0, "Clear that bitmap once TARGET is safe", 0 },
    { "shallow", OPT_SHALLOW, NULL, OPTION_HIDDEN, "Same as --sync=top", 0 },
    { "reuse-external", 'n', NULL, 0, "Copy into an existing TARGET (at least as large)", 0 },
    { "compress", 'c', NULL, 0, "Write compressed clusters (qcow2 target)", 0 },
    { "options", 'o', "OPTS", 0, "Options for creating TARGET, as create -o", 0 },
    { "backing", 'B', "FILE", 0, "Backing file of the new TARGET", 0 },
    { NULL, 'S', "SIZE", 0, "Sparse: zero runs of SIZE (4k); 0: none", 0 },
    { NULL, 'r', "RATE", OPTION_HIDDEN, "Same as --bandwidth", 0 },
    { NULL, 'm', "N", OPTION_HIDDEN, "Same as --requests (1-16)", 0 },
    { NULL, 'W', NULL, OPTION_HIDDEN, "Out-of-order writes (always)", 0 },
    { "backing-format", 'F', "FMT", 0, "Format of that backing file", 0 },
    { "agent", OPT_AGENT, "SOCKET", 0, "SOURCE is a disk of that agent (live)", 0 },
    { "wait", OPT_WAIT, NULL, 0, "Live: wait until ready (and the end)", 0 },
    { "pivot", OPT_PIVOT, NULL, 0, "--wait: once ready, switch the disk to TARGET", 0 },
    { "finish", OPT_FINISH, NULL, 0, "--wait: once ready, end without pivot", 0 },
    { "copy-mode", OPT_COPY_MODE, "MODE", 0, "Live: auto, background or write-blocking", 0 },
    { "async", OPT_ASYNC, NULL, 0, "--wait: Ctrl-C leaves the job running", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct mirror_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[2] = &a->img;
        state->child_inputs[0] = &a->copy;
        state->child_inputs[1] = &a->copy;
        break;
    case 'O':
        a->out_format = parse_out_format_arg(arg, "-O", state);
        break;
    case 'S':
        parse_sparse_arg(arg, &a->sparse_size, &a->no_sparse, state);
        break;
    case 'r':
        a->copy.bandwidth = parse_size_arg(arg, "rate limit", state);
        break;
    case 'm':
        a->copy.requests = parse_coroutines_arg(arg, state);
        break;
    case 'W':
        break;
    case OPT_SYNC:
        if (!strcmp(arg, "full")) {
            a->sync = SYNC_FULL;
        } else if (!strcmp(arg, "top")) {
            a->sync = SYNC_TOP;
        } else if (!strcmp(arg, "none")) {
            a->sync = SYNC_NONE;
        } else if (!strcmp(arg, "bitmap") || !strcmp(arg, "incremental")) {
            a->sync = SYNC_BITMAP;
        } else {
            argp_error(state, "--sync must be full, top, none or bitmap, not '%s'", arg);
        }
        break;
    case OPT_BITMAP:
        a->bitmap = arg;
        break;
    case OPT_CLEAR_BITMAP:
        a->clear_bitmap = true;
        break;
    case OPT_SHALLOW:
        a->sync = SYNC_TOP;
        break;
    case 'n':
        a->reuse = true;
        break;
    case 'c':
        a->compress = true;
        break;
    case 'B':
        a->backing = arg;
        break;
    case 'F':
        a->backing_fmt = parse_format_arg(arg, "-F", state);
        break;
    case OPT_AGENT:
        a->agent = arg;
        break;
    case OPT_WAIT:
        a->wait = true;
        break;
    case OPT_ASYNC:
        a->async = true;
        break;
    case OPT_PIVOT:
    case OPT_FINISH:
        if (a->at_ready_set) {
            argp_error(state, "--pivot and --finish exclude each other");
        }
        a->at_ready_set = true;
        a->at_ready = key == OPT_PIVOT ? AT_READY_PIVOT : AT_READY_FINISH;
        break;
    case OPT_COPY_MODE:
        if (strcmp(arg, "background") && strcmp(arg, "write-blocking") && strcmp(arg, "auto")) {
            argp_error(state, "--copy-mode must be auto, background or write-blocking, not '%s'",
                       arg);
        }
        a->copy_mode = arg;
        break;
    case 'o':
        append_opts(&a->opts, arg);
        break;
    case ARGP_KEY_ARG:
        if (!a->source) {
            a->source = arg;
        } else if (!a->target) {
            a->target = arg;
        } else {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        break;
    case ARGP_KEY_END:
        if (!a->target) {
            argp_error(state, "SOURCE and TARGET are needed");
        }
        if (a->backing_fmt && !a->backing) {
            argp_error(state, "-F gives the format of the -B backing file: -B is missing");
        }
        if (a->reuse && (a->backing || a->opts)) {
            argp_error(state, "-n copies into an existing TARGET: -B and -o do not apply");
        }
        if ((a->sync == SYNC_BITMAP) != (a->bitmap != NULL)) {
            argp_error(state, "--sync=bitmap and --bitmap NAME go together");
        }
        if (a->clear_bitmap && a->img.force_share) {
            argp_error(state, "--clear-bitmap writes SOURCE: it cannot go with -U");
        }
        if (a->clear_bitmap && a->sync != SYNC_BITMAP) {
            argp_error(state, "--clear-bitmap needs --sync=bitmap");
        }
        if (!remote_path(a->agent) && (a->wait || a->at_ready_set || a->copy_mode || a->async)) {
            argp_error(state, "--wait, --pivot, --finish, --copy-mode and --async go with "
                       "--agent");
        }
        if (a->at_ready_set && !a->wait) {
            argp_error(state, "--pivot and --finish need --wait");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [2]: the shared image options (imgopts.c), set by cmd_mirror */
static struct argp_child children[] = { { &copy_opts_argp, 0, NULL, 0 },
                                        { &journal_opts_argp, 0, NULL, 0 },
                                        { NULL, 0, NULL, 0 },
                                        { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp mirror_argp = {
    options, parse_opt, "SOURCE TARGET",
    "Copy the disk SOURCE shows to TARGET: a file, an image (-n) or an NBD URI.\v"
    "Exit status: 0 done, 1 error, 2 cancelled by another, 64 usage, 130/143 signal",
    children, NULL, NULL,
};

/*
 * The dirty extents an NBD server reports in qemu:dirty-bitmap:NAME, as an
 * in-memory bitmap (granularity: the finest boundary seen, 512 B to 64 KiB;
 * coarser rounding only adds clean bytes, never loses dirty ones).
 */
static struct dirty_bitmap *nbd_dirty_bitmap(struct bdev *src, struct error **errp)
{
    uint64_t *ext = NULL, next = 0, cap = 0, off = 0, align = 65536;
    struct dirty_bitmap *bm;

    while (off < src->size) {
        uint64_t pnum;
        bool d;
        int ret = nbd_bitmap_status(src, off, src->size - off, &pnum, &d);
        if (ret < 0) {
            /* a dead connection says why (no reply in time, server gone) */
            char *why = bdev_last_error(src);
            if (why) {
                error_setg(errp, "cannot read the dirty bitmap: %s", why);
            } else {
                error_setg_errno(errp, -ret, "'%s': cannot read the dirty bitmap", src->filename);
            }
            free(why);
            free(ext);
            return NULL;
        }
        if (d) {
            if (next + 2 > cap) {
                cap = cap ? cap * 2 : 256;
                ext = xrealloc(ext, cap * sizeof(*ext));
            }
            ext[next++] = off;
            ext[next++] = pnum;
            while (align > 512 && ((off | (off + pnum)) & (align - 1)) &&
                   off + pnum != src->size) {
                align >>= 1;
            }
        }
        off += pnum;
    }
    bm = bitmap_new(src->size, align);
    for (uint64_t i = 0; i < next; i += 2) {
        bitmap_set(bm, ext[i], ext[i + 1]);
    }
    free(ext);
    return bm;
}

/* Format of a backing file given without -F: raw, or a qcow2 without a backing file. */
static const char *detect_backing_format(const char *path, struct error **errp)
{
    struct bdev *bd = bdev_open(path, NULL, BDEV_O_NO_BACKING | BDEV_O_FORCE_SHARE, errp);
    const char *fmt;

    if (!bd) {
        return NULL;
    }
    fmt = bdev_format_name(bd);
    if (bd->backing_file) {
        error_setg(errp, "'%s' has a backing file of its own: give its format with -F", path);
        fmt = NULL;
    }
    bdev_unref(bd);
    return fmt;
}

/*
 * TARGET is durable: only now may the record of what changed go.  Bitmap
 * @name is cleared in every image of @src's chain that has it (the disk's
 * bitmap is their union).  A failure part way leaves some cleared: safe,
 * what they recorded is in TARGET.
 */
static int clear_chain_bitmap(struct bdev *src, const char *name, const char *target)
{
    struct bitmap_op op = { .type = BITMAP_OP_CLEAR, .name = name };

    for (struct bdev *l = src; l; l = l->backing) {
        struct error *err = NULL;
        struct bdev *w;

        if (!bdev_bitmap_find(l, name)) {
            continue;
        }
        w = bdev_open(l->filename, l->drv->name,
                      BDEV_O_RDWR | BDEV_O_NO_BACKING | BDEV_O_NO_BITMAPS, &err);
        if (!w || bdev_bitmap_apply(w, &op, 1, &err) < 0) {
            report(err);
            error_report("'%s' is complete, but bitmap '%s' was not cleared", target, name);
            if (w) {
                bdev_unref(w);
            }
            return -1;
        }
        if (bdev_close(w, &err) < 0) {
            report(err);
            return -1;
        }
    }
    return 0;
}

/* --agent: drive-mirror of the disk, job id = the disk's name */
static int mirror_agent(struct mirror_args *a)
{
    static const char *const sync_names[] = { "full", "top", "none", "bitmap" };
    struct error *err = NULL;
    struct qmp_client *c;
    struct remote_disk d = { 0 };
    struct job_wait w = { .id = a->source, .wait = a->wait, .at_ready = a->at_ready,
                          .progress = a->copy.progress, .progress_json = a->copy.progress_json,
                          .cancel_on_signal = !a->async };
    json_object *args;
    char *target;
    int ret;

    if (a->compress || a->backing || a->opts || a->img.force_share) {
        error_report("-c, -B, -o and -U are for offline mirrors, not with --agent");
        return 64;
    }
    if (a->sync == SYNC_BITMAP && !a->reuse && !strstr(a->target, "://")) {
        error_report("--sync=bitmap copies into a TARGET that holds the disk as it was when "
                     "the bitmap began: -n (--reuse-external)");
        return 64;
    }
    c = remote_connect(a->agent, &err);
    if (!c || remote_find_disk(c, a->source, &d, &err) < 0) {
        report(err);
        if (c) {
            qmp_client_close(c);
        }
        return 1;
    }
    /* the agent may run elsewhere: a local TARGET by its absolute name */
    if (strstr(a->target, "://") || a->target[0] == '/') {
        target = xstrdup(a->target);
    } else {
        char *cwd = getcwd(NULL, 0);
        target = xasprintf("%s/%s", cwd ? cwd : ".", a->target);
        free(cwd);
    }
    args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(d.node));
    json_object_object_add(args, "job-id", json_object_new_string(a->source));
    json_object_object_add(args, "target", json_object_new_string(target));
    json_object_object_add(args, "sync", json_object_new_string(sync_names[a->sync]));
    if (a->out_format) {
        json_object_object_add(args, "format", json_object_new_string(a->out_format));
    } else if (strstr(a->target, "://")) {
        json_object_object_add(args, "format", json_object_new_string("raw"));
    }
    if (a->reuse || strstr(a->target, "://")) {
        json_object_object_add(args, "mode", json_object_new_string("existing"));
    }
    if (a->copy_mode || d.blockctl) {
        /* auto by default where the server has it (a blockctl agent) */
        json_object_object_add(args, "copy-mode",
                               json_object_new_string(a->copy_mode ? a->copy_mode : "auto"));
    }
    if (a->copy.bandwidth) {
        json_object_object_add(args, "speed", json_object_new_int64((int64_t)a->copy.bandwidth));
    }
    if (a->sync == SYNC_BITMAP) {
        /* a blockctl agent's own (QEMU 7.2's mirror has no sync bitmap) */
        json_object_object_add(args, "bitmap", json_object_new_string(a->bitmap));
        if (a->clear_bitmap) {
            json_object_object_add(args, "clear-bitmap", json_object_new_boolean(true));
        }
    }
    ret = agent_job_start(c, "drive-mirror", args, &w);
    free(target);
    remote_disk_free(&d);
    qmp_client_close(c);
    return ret;
}

int cmd_mirror(int argc, char **argv)
{
    struct mirror_args a = { 0 };
    struct error *err = NULL;
    struct copy_params cp;
    struct optlist o = { 0 };
    struct copy_target t = { 0 };
    struct bdev *src = NULL;
    struct dirty_bitmap *dirty = NULL;
    char *bname = NULL;
    const char *fmt, *bfmt = NULL;
    struct job_journal jj = { 0 };
    bool nbd_target;
    int ret = 1, r;

    children[2].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_QUIET | IMGOPT_CACHE |
                                     IMGOPT_SRC_CACHE);
    argp_parse(&mirror_argp, argc, argv, 0, NULL, &a);
    if (remote_path(a.agent)) {
        cancel_install();
        return mirror_agent(&a);
    }
    if (a.opts && opts_want_help(a.opts)) {
        /* the options of the format TARGET would have; nothing is copied */
        const struct format_driver *drv;
        if (a.out_format) {
            fmt = a.out_format;
        } else {
            struct bdev *bd = bdev_open(a.source, a.img.format,
                                        BDEV_O_NO_BACKING | BDEV_O_FORCE_SHARE, &err);
            fmt = bd ? bdev_format_name(bd) : "raw";
            error_free(err);
            err = NULL;
            bdev_unref(bd);
        }
        drv = bdev_find_driver(fmt);
        if (!drv || !drv->create) {
            error_report("cannot create a target of format '%s'", fmt);
            goto out;
        }
        opts_print_help(drv->name, drv->create_opts);
        ret = 0;
        goto out;
    }
    cancel_install();
    if (a.clear_bitmap && nbd_is_uri(a.source)) {
        error_report("--clear-bitmap cannot clear a bitmap over NBD: clear it where it lives "
                     "(QMP block-dirty-bitmap-clear)");
        goto out;
    }
    {
        struct bdev_open_opts oo = { .nbd_bitmap = a.sync == SYNC_BITMAP ? a.bitmap : NULL };
        src = bdev_open_ext(a.source, a.img.format,
                            (a.img.force_share ? BDEV_O_FORCE_SHARE : 0) | a.img.src_cache, &oo,
                            &err);
    }
    if (!src) {
        report(err);
        goto out;
    }
    if (target_refuse_own_chain(src, a.source, a.target, a.reuse, "mirror")) {
        goto out;
    }
    if (a.sync == SYNC_BITMAP) {
        if (src->drv->is_protocol) {
            dirty = nbd_dirty_bitmap(src, &err);
        } else if (bdev_bitmap_union(src, a.bitmap, &dirty, &err) < 0) {
            /* NAME down the chain: it follows the disk across snapshots */
            dirty = NULL;
        }
        if (!dirty) {
            report(err);
            goto out;
        }
    }
    if (a.sync == SYNC_TOP && !src->backing) {
        a.sync = SYNC_FULL;
    }
    nbd_target = nbd_is_uri(a.target);
    fmt = a.out_format ? a.out_format : bdev_format_name(src);
    t.name = a.target;
    t.fmt = a.out_format;
    t.size = src->size;
    t.reuse = a.reuse;
    t.unsafe = a.img.cache & BDEV_O_NO_FLUSH;
    t.cache = a.img.cache;
    /* the journal: written before anything changes (see job_journal_begin) */
    if (job_journal_begin(&jj, &a.copy, "mirror", argc, argv)) {
        goto out;
    }
    if (jj.state && strcmp(jj.state, "clearing-bitmap") && job_journal_check(&jj, "source", NULL)) {
        goto out;
    }
    if (!jj.state) {
        journal_add_image(jj.j, "source", a.source, JR_READ);
        journal_add_image(jj.j, "target", a.target, JR_WRITE);
        journal_set_str(jj.j, "authoritative", journal_image_path(jj.j, "source"));
    }
    t.jj = &jj;

    if (nbd_target || a.reuse) {
        if (a.sync == SYNC_NONE && !a.reuse) {
            error_report("--sync=none makes a new overlay: it cannot go to an NBD export");
            goto out;
        }
    } else {
        const struct format_driver *drv = bdev_find_driver(fmt);
        char *dir;

        if (!drv || !drv->create) {
            error_report("cannot create a target of format '%s'", fmt);
            goto out;
        }
        if ((r = create_opts_parse(drv, a.opts, &o, a.target)) != 0) {
            ret = r;
            goto out;
        }
        /* The target's backing file, if it gets one. */
        dir = bdev_dirname(a.target);
        if (a.backing) {
            bfmt = a.backing_fmt;
            if (!bfmt) {
                char *full = bdev_path_combine(a.target, a.backing);
                bfmt = detect_backing_format(full, &err);
                free(full);
                if (!bfmt) {
                    report(err);
                    free(dir);
                    goto out;
                }
            }
            bname = xstrdup(a.backing);
        } else if (a.sync == SYNC_TOP) {
            bname = bdev_backing_name_for_dir(dir, src, src->backing);
            bfmt = bdev_format_name(src->backing);
        } else if (a.sync == SYNC_NONE) {
            bname = src->drv->is_protocol ? xstrdup(a.source) : bdev_relative_path(a.source, dir);
            bfmt = bdev_format_name(src);
        }
        free(dir);
        if (bname && !drv->supports_backing) {
            error_report("'%s': format '%s' cannot have a backing file", a.target, fmt);
            goto out;
        }
        if (bname) {
            opts_set(&o, "backing_file", bname);
            opts_set(&o, "backing_fmt", bfmt);
        }
        {
            char sz[32];
            snprintf(sz, sizeof(sz), "%" PRIu64, src->size);
            opts_set(&o, "size", sz);
        }
        if ((r = create_opts_check(drv, &o, a.target)) != 0) {
            ret = r;
            goto out;
        }
        t.fmt = fmt;
        t.o = &o;
        /* nothing is copied: its backing file (SOURCE) need not open twice */
        t.no_backing = a.sync == SYNC_NONE;
    }
    if ((r = target_open(&t)) != 0) {
        ret = r;
        goto out;
    }
    if (t.installed) {
        goto installed;     /* (resumed: TARGET.part was renamed into place already) */
    }
    if (a.compress && !t.dst->drv->pwrite_compressed) {
        error_report("'%s': format '%s' has no compressed clusters", a.target,
                     t.dst->drv->name);
        goto out;
    }

    if (a.sync != SYNC_NONE && !t.copied) {
        memset(&cp, 0, sizeof(cp));
        cp.src = src;
        cp.dst = t.dst;
        cp.mode = a.sync == SYNC_TOP ? COPY_ABOVE : a.sync == SYNC_BITMAP ? COPY_BITMAP : COPY_ALL;
        cp.base = a.sync == SYNC_TOP ? src->backing : NULL;
        cp.bitmap = dirty;
        cp.dst_is_zero = t.created && !t.dst->backing_file;
        cp.check_dst_zero = !cp.dst_is_zero;
        cp.compress = a.compress;
        cp.no_flush = a.img.cache & BDEV_O_NO_FLUSH;
        cp.sparse_size = a.sparse_size;
        cp.no_sparse = a.no_sparse;
        copy_opts_apply(&a.copy, &cp);
        r = target_copy(&t, &cp);
        copy_opts_finish(&a.copy);
        if (r != 0) {
            ret = r;
            goto out;
        }
    } else {
        copy_opts_nothing(&a.copy);
    }
    if (target_install(&t) != 0) {
        goto out;
    }
installed:
    if (a.clear_bitmap) {
        /* (a failure now leaves a complete TARGET: the job is over) */
        t.keep_journal = false;
        if (job_journal_step(&jj, "clearing-bitmap") ||
            clear_chain_bitmap(src, a.bitmap, a.target) < 0) {
            goto out;
        }
    }
    ret = 0;
out:
    bitmap_free(dirty);
    target_cleanup(&t);
    if (jj.j) {
        if (ret != 0 && t.keep_journal) {
            job_journal_keep(&jj);
        } else {
            if (job_journal_end(&jj) && ret == 0) {     /* done, or rolled back */
                ret = 1;
            }
        }
    }
    bdev_unref(src);
    opts_free(&o);
    free(bname);
    free(a.opts);
    return ret;
}
