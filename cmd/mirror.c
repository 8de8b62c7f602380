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
    const char *format;
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
    bool unsafe;
    bool force_share;
    struct copy_opts copy;
};

enum { OPT_SYNC = 0x100, OPT_SHALLOW, OPT_BITMAP, OPT_CLEAR_BITMAP, OPT_AGENT, OPT_WAIT,
       OPT_PIVOT, OPT_FINISH, OPT_COPY_MODE, OPT_ASYNC };

static const struct argp_option options[] = {
    { "format", 'f', "FMT", 0, "Format of SOURCE; probed when omitted", 0 },
    { "force-share", 'U', NULL, 0, "Read SOURCE even while it is being written", 0 },
    { "target-format", 'O', "FMT", 0, "Format of TARGET (default: SOURCE's format)", 0 },
    { "sync", OPT_SYNC, "MODE", 0, "full (default), top, none, or bitmap (--bitmap)", 0 },
    { "bitmap", OPT_BITMAP, "NAME", 0, "The dirty bitmap for --sync=bitmap", 0 },
    { "clear-bitmap", OPT_CLEAR_BITMAP, NULL, 0, "Clear that bitmap once TARGET is safe", 0 },
    { "shallow", OPT_SHALLOW, NULL, 0, "Same as --sync=top", 0 },
    { "reuse-external", 'n', NULL, 0, "Copy into an existing TARGET (same size)", 0 },
    { "compress", 'c', NULL, 0, "Write compressed clusters (qcow2 target)", 0 },
    { "options", 'o', "OPTS", 0, "Options for creating TARGET, as create -o", 0 },
    { "backing", 'B', "FILE", 0, "Backing file of the new TARGET", 0 },
    { "cache", 't', "MODE", 0, "writeback (default) or unsafe (no final flush)", 0 },
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
        state->child_inputs[0] = &a->copy;
        break;
    case 'f':
        a->format = arg;
        break;
    case 'O':
        a->out_format = arg;
        break;
    case 'U':
        a->force_share = true;
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
    case 't':
        if (!strcmp(arg, "unsafe")) {
            a->unsafe = true;
        } else if (!strcmp(arg, "writeback")) {
            a->unsafe = false;
        } else {
            argp_error(state, "-t must be writeback or unsafe, not '%s'", arg);
        }
        break;
    case 'F':
        a->backing_fmt = arg;
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
        if (a->clear_bitmap && a->force_share) {
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

static const struct argp_child children[] = { { &copy_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp mirror_argp = {
    options, parse_opt, "SOURCE TARGET",
    "Copy the disk SOURCE shows to TARGET: a file, an image (-n) or an NBD URI.\v"
    "A new TARGET exists only whole (TARGET.part until then). --agent: live.\n"
    "Exit status: 0 on success, 1 on error, 2 when the live job was cancelled by another, "
    "64 for usage errors, 130/143 when interrupted.",
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
 * Writing an image of SOURCE's own chain would change what SOURCE (and
 * any other overlay of a backing file) reads, and the copy would read what
 * it is writing: refuse TARGET, or the TARGET.part a new TARGET is written
 * as, when it is an image of that chain (by device and inode, or the same
 * NBD URI).  qemu-img convert is refused the same by its locks.
 */
static bool refuse_own_chain(struct bdev *src, const char *source, const char *target,
                             bool reuse)
{
    char *part = NULL;
    const char *name = target;
    struct bdev *hit = bdev_chain_find(src, target);

    if (!hit && !reuse && !nbd_is_uri(target)) {
        part = xasprintf("%s.part", target);
        hit = bdev_chain_find(src, part);
        name = part;
    }
    if (!hit) {
        free(part);
        return false;
    }
    {
        /* TARGET, or "TARGET.part (where the new TARGET is written)" */
        char *what = part ? xasprintf("'%s' (where the new '%s' is written)", part, target)
                          : xasprintf("'%s'", target);
        if (hit == src) {
            error_report("%s is the source '%s' itself: mirror cannot write it", what, source);
        } else if (!strcmp(name, hit->filename)) {
            error_report("%s is in the backing chain of '%s': mirror cannot write it", what,
                         source);
        } else {
            error_report("%s is '%s' of the backing chain of '%s': mirror cannot write it",
                         what, hit->filename, source);
        }
        free(what);
    }
    free(part);
    return true;
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

    if (a->compress || a->backing || a->opts || a->force_share) {
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

/*
 * Resuming into the TARGET.part a killed mirror left: its leaks (clusters
 * allocated after the last checkpoint) are repaired quietly.  false when
 * it is not sound (a power failure under its unordered writes): the
 * mirror then starts it anew.
 */
static bool part_usable(const char *part, const char *fmt)
{
    struct error *err = NULL;
    struct check_result r;
    struct bdev *bd = bdev_open(part, fmt, BDEV_O_RDWR | BDEV_O_CHECK | BDEV_O_NO_BACKING, &err);
    int saved = dup(STDERR_FILENO), null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    bool ok;

    if (!bd) {
        error_free(err);
        if (saved >= 0) {
            close(saved);
        }
        if (null >= 0) {
            close(null);
        }
        return false;
    }
    memset(&r, 0, sizeof(r));
    /* (the driver's check prints what it finds: not a user's business here) */
    if (saved >= 0 && null >= 0) {
        fflush(stderr);
        dup2(null, STDERR_FILENO);
    }
    ok = !bd->drv->check || (bd->drv->check(bd, &r, CHECK_FIX_LEAKS, &err) == 0 &&
                             !r.corruptions && !r.check_errors);
    if (saved >= 0 && null >= 0) {
        fflush(stderr);
        dup2(saved, STDERR_FILENO);
    }
    if (saved >= 0) {
        close(saved);
    }
    if (null >= 0) {
        close(null);
    }
    error_free(err);
    err = NULL;
    if (bdev_close(bd, &err) < 0) {
        error_free(err);
        ok = false;
    }
    return ok;
}

int cmd_mirror(int argc, char **argv)
{
    struct mirror_args a = { 0 };
    struct error *err = NULL;
    struct copy_params cp;
    struct optlist o = { 0 };
    struct bdev *src = NULL, *dst = NULL;
    struct dirty_bitmap *dirty = NULL;
    char *part = NULL, *bname = NULL;
    const char *fmt, *bfmt = NULL;
    bool nbd_target, created = false, skip_copy = false, keep_journal = false;
    struct job_journal jj = { 0 };
    struct stat st;
    int ret = 1, r;

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
            struct bdev *bd = bdev_open(a.source, a.format,
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
        src = bdev_open_ext(a.source, a.format, a.force_share ? BDEV_O_FORCE_SHARE : 0, &oo,
                            &err);
    }
    if (!src) {
        report(err);
        goto out;
    }
    if (refuse_own_chain(src, a.source, a.target, a.reuse)) {
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
    /* the journal: written before anything changes (see job_journal_begin) */
    if (job_journal_begin(&jj, &a.copy, "mirror", argc, argv)) {
        goto out;
    }
    if (jj.state && strcmp(jj.state, "clearing-bitmap") &&
        job_journal_check(&jj, "source", NULL)) {
        goto out;
    }

    if (nbd_target || a.reuse) {
        if (a.sync == SYNC_NONE && !a.reuse) {
            error_report("--sync=none makes a new overlay: it cannot go to an NBD export");
            goto out;
        }
        /* With its chain: whether the target already reads zero depends on it. */
        dst = bdev_open(a.target, nbd_target ? NULL : a.out_format,
                        BDEV_O_RDWR | (nbd_target && a.unsafe ? BDEV_O_UNORDERED : 0), &err);
        if (!dst) {
            report(err);
            goto out;
        }
        if (dst->size != src->size) {
            error_report("'%s' is %" PRIu64 " bytes but '%s' is %" PRIu64 " bytes: sizes must "
                         "match", a.target, dst->size, a.source, src->size);
            goto out;
        }
        if (!jj.state) {
            journal_add_image(jj.j, "source", a.source, JR_READ);
            journal_add_image(jj.j, "target", a.target, JR_WRITE);
            journal_set_str(jj.j, "authoritative", journal_image_path(jj.j, "source"));
        }
        if (job_journal_step(&jj, "copying")) {
            goto out;
        }
        /* from now on TARGET is changing: a failure leaves the job to resume
         * (a new TARGET.part is removed instead: nothing is left to finish) */
        keep_journal = true;
    } else if (jj.state && (!strcmp(jj.state, "installing") ||
                            !strcmp(jj.state, "clearing-bitmap")) &&
               journal_image_path(jj.j, "part") &&
               stat(journal_image_path(jj.j, "part"), &st) < 0 && stat(a.target, &st) == 0) {
        /* (resumed: TARGET.part was renamed into place already) */
        skip_copy = true;
    } else {
        const struct format_driver *drv = bdev_find_driver(fmt);
        char *dir;

        if (!drv || !drv->create) {
            error_report("cannot create a target of format '%s'", fmt);
            goto out;
        }
        if (stat(a.target, &st) == 0) {
            error_report("'%s' already exists; use -n to copy into it", a.target);
            journal_free(jj.j);
            jj.j = NULL;
            goto out;
        }
        if (a.opts && opts_parse(&o, a.opts, drv->create_opts, &err) < 0) {
            error_prefix(&err, "'%s': ", a.target);
            report(err);
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
        /*
         * A TARGET.part left by a killed mirror is replaced; one that a
         * running mirror is writing is locked, and refused.
         */
        part = xasprintf("%s.part", a.target);
        if (jj.state && (!strcmp(jj.state, "copying") || !strcmp(jj.state, "installing")) &&
            journal_check_image(jj.j, "part", NULL) == 0 && part_usable(part, fmt)) {
            /* resumed: go on with the TARGET.part it was writing */
            created = true;
            dst = bdev_open(part, fmt, BDEV_O_RDWR | BDEV_O_UNORDERED, &err);
            if (!dst) {
                report(err);
                goto out;
            }
            skip_copy = !strcmp(jj.state, "installing");
            goto copy;
        }
        if (!jj.state) {
            journal_add_image(jj.j, "source", a.source, JR_READ);
            journal_add_image(jj.j, "target", a.target, JR_WRITE);
            journal_set_str(jj.j, "authoritative", journal_image_path(jj.j, "source"));
        }
        /* (resumed without a usable TARGET.part: a new copy from the start) */
        journal_set_u64(jj.j, "copied", 0);
        jj.copied = 0;
        jj.state = NULL;
        if (job_journal_step(&jj, "creating")) {
            goto out;
        }
        if (stat(part, &st) == 0) {
            struct bfile *f = bfile_open(part, BDEV_CREATE_PERM, 0, &err);
            if (!f) {
                error_prefix(&err, "another mirror seems to be writing '%s': ", a.target);
                report(err);
                goto out;
            }
            bfile_close(f, BDEV_CREATE_PERM, 0);
        }
        /*
         * TARGET.part itself appears only as a whole (empty) image: it is
         * built under a hidden name first, so that a kill while creating it
         * leaves no half-made image behind (the next mirror replaces it).
         */
        {
            char *tmp;
            r = bdev_create_hidden(fmt, part, &o, &tmp, &err);
            if (r == 0) {
                r = io_rename(tmp, part);
                if (r < 0) {
                    error_setg_errno(&err, -r, "cannot rename '%s' to '%s'", tmp, part);
                }
            }
            if (r < 0) {
                unlink(tmp);
                free(tmp);
                report(err);
                goto out;
            }
            free(tmp);
        }
        created = true;
        journal_add_image(jj.j, "part", part, JR_WRITE);
        if (job_journal_step(&jj, "copying")) {
            goto out;
        }
        /* a new image: a power failure makes it garbage anyway, so no
         * ordering syncs while it is built (it is flushed at the end, and
         * at each checkpoint of the journal) */
        dst = bdev_open(part, fmt,
                        BDEV_O_RDWR | BDEV_O_UNORDERED |
                        /* nothing is copied: its backing file (SOURCE) need not open twice */
                        (a.sync == SYNC_NONE ? BDEV_O_NO_BACKING : 0), &err);
        if (!dst) {
            report(err);
            goto out;
        }
    }
copy:
    if (!skip_copy && a.compress && !dst->drv->pwrite_compressed) {
        error_report("'%s': format '%s' has no compressed clusters", a.target, dst->drv->name);
        goto out;
    }

    if (a.sync != SYNC_NONE && !skip_copy) {
        memset(&cp, 0, sizeof(cp));
        cp.src = src;
        cp.dst = dst;
        cp.mode = a.sync == SYNC_TOP ? COPY_ABOVE : a.sync == SYNC_BITMAP ? COPY_BITMAP : COPY_ALL;
        cp.base = a.sync == SYNC_TOP ? src->backing : NULL;
        cp.bitmap = dirty;
        /* (resumed: past "copied" the target may hold anything) */
        cp.dst_is_zero = created && !dst->backing_file && !jj.state;
        cp.check_dst_zero = !cp.dst_is_zero;
        cp.compress = a.compress;
        cp.no_flush = a.unsafe;
        if (jj.state && !strcmp(jj.state, "copying")) {
            cp.start = jj.copied;
        }
        copy_opts_apply(&a.copy, &cp);
        if (job_journal_checkpoints(&jj, &cp, dst)) {
            goto out;
        }
        r = copy_run(&cp, &err);
        if (jj.state && r == 0) {
            fprintf(stderr, "blockctl: job %s: copied %" PRIu64 " bytes from offset %" PRIu64
                    "\n", jj.j->id, cp.bytes_written + cp.bytes_zeroed, cp.start);
        }
        copy_opts_finish(&a.copy);
        if (r == -ECANCELED) {
            error_report("interrupted: '%s' is incomplete%s", a.target,
                         created ? " and was removed" : "; do not use it");
            ret = cancel_exit_status();
            goto out;
        }
        if (r < 0) {
            report(err);
            if (!created) {
                error_report("'%s' is incomplete; do not use it", a.target);
            }
            goto out;
        }
    } else {
        copy_opts_nothing(&a.copy);
    }
    if (dst && bdev_close(dst, &err) < 0) {
        dst = NULL;
        report(err);
        goto out;
    }
    dst = NULL;
    if (created) {
        if (job_journal_step(&jj, "installing")) {
            goto out;
        }

        /*
         * Never replace a TARGET that appeared meanwhile.  A failed folder
         * sync takes TARGET back: the same mirror can simply be run again.
         */
        bool renamed;
        r = bdev_create_install(part, a.target, 0, &renamed, &err);
        if (renamed) {
            created = false;
        }
        if (r < 0) {
            report(err);
            goto out;
        }
    }
    if (a.clear_bitmap) {
        /* (a failure now leaves a complete TARGET: the job is over) */
        keep_journal = false;
        if (job_journal_step(&jj, "clearing-bitmap") ||
            clear_chain_bitmap(src, a.bitmap, a.target) < 0) {
            goto out;
        }
    }
    job_journal_end(&jj);
    ret = 0;
out:
    bitmap_free(dirty);
    if (dst) {
        bdev_unref(dst);
    }
    if (created && part && !keep_journal) {
        unlink(part);
    }
    if (ret != 0 && jj.j) {
        if (keep_journal) {
            job_journal_keep(&jj);
        } else {
            job_journal_end(&jj);       /* (nothing to finish: rolled back) */
        }
    }
    bdev_unref(src);
    opts_free(&o);
    free(part);
    free(bname);
    free(a.opts);
    return ret;
}
