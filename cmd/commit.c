/*
 * blockctl commit - merge an overlay (or a part of the chain) into its base
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/copy.h"
#include "lib/journal.h"
#include "lib/remote.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"

struct commit_args {
    const char *agent;
    bool wait, async, active;
    enum at_ready at_ready;
    bool at_ready_set;
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *top;
    const char *base;
    const char *image;
    bool keep;
    struct copy_opts copy;
};

enum { OPT_TOP = 0x100, OPT_AGENT, OPT_WAIT, OPT_ASYNC, OPT_ACTIVE, OPT_PIVOT,
       OPT_KEEP_OVERLAY };

static const struct argp_option options[] = {
    { "top", OPT_TOP, "TOP", 0, "Commit from TOP (an image of the chain; default IMAGE)", 0 },
    { "base", 'b', "BASE", 0, "Commit into BASE (default: TOP's backing file)", 0 },
    { "keep", 'd', NULL, 0, "Keep TOP's data (do not empty it afterwards)", 0 },
    { "agent", OPT_AGENT, "SOCKET", 0, "IMAGE is a disk of that agent (live)", 0 },
    { "active", OPT_ACTIVE, NULL, 0, "Live: TOP is the disk's top (an active commit)", 0 },
    { "wait", OPT_WAIT, NULL, 0, "Live: wait for the end (active: until ready)", 0 },
    { "pivot", OPT_PIVOT, NULL, 0, "--active --wait: once ready, switch the disk to BASE", 0 },
    { "keep-overlay", OPT_KEEP_OVERLAY, NULL, 0, "--active --wait: once ready, end, no pivot",
      0 },
    { "async", OPT_ASYNC, NULL, 0, "--wait: Ctrl-C leaves the job running", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct commit_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[2] = &a->img;
        state->child_inputs[0] = &a->copy;
        state->child_inputs[1] = &a->copy;
        break;
    case OPT_TOP:
        a->top = arg;
        break;
    case 'b':
        a->base = arg;
        break;
    case 'd':
        a->keep = true;
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
    case OPT_ACTIVE:
        a->active = true;
        break;
    case OPT_PIVOT:
    case OPT_KEEP_OVERLAY:
        if (a->at_ready_set) {
            argp_error(state, "--pivot and --keep-overlay exclude each other");
        }
        a->at_ready_set = true;
        a->at_ready = key == OPT_PIVOT ? AT_READY_PIVOT : AT_READY_FINISH;
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
        if (!remote_path(a->agent) && (a->wait || a->active || a->at_ready_set || a->async)) {
            argp_error(state, "--active, --wait, --pivot, --keep-overlay and --async go with "
                       "--agent");
        }
        if (a->at_ready_set && !(a->wait && a->active)) {
            argp_error(state, "--pivot and --keep-overlay need --active and --wait");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [2]: the shared image options (imgopts.c), set by cmd_commit */
static struct argp_child children[] = { { &copy_opts_argp, 0, NULL, 0 },
                                        { &journal_opts_argp, 0, NULL, 0 },
                                        { NULL, 0, NULL, 0 },
                                        { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp commit_argp = {
    options, parse_opt, "IMAGE",
    "Merge into BASE everything from TOP down to just above BASE, and re-point the image "
    "above TOP at BASE, so that IMAGE reads the same before and after.\v"
    "--agent: IMAGE is a disk, committed live (BASE: the chain's bottom by default).\n"
    "Exit status: 0 on success, 1 on error, 2 when the live job was cancelled by another, "
    "64 for usage errors, 130/143 when interrupted (the chain still reads as before).",
    children, NULL, NULL,
};

static char *abs_name(const char *f)
{
    char *r = realpath(f, NULL);

    return r ? r : xstrdup(f);
}

/* --agent: block-commit on the disk, job id = the disk's name */
static int commit_agent(struct commit_args *a)
{
    struct error *err = NULL;
    struct qmp_client *c;
    struct remote_disk d = { 0 };
    struct job_wait w = { .id = a->image, .wait = a->wait,
                          .at_ready = a->at_ready_set ? a->at_ready : AT_READY_WAIT,
                          .progress = a->copy.progress, .progress_json = a->copy.progress_json,
                          .cancel_on_signal = !a->async };
    json_object *args, *file;
    bool top_is_top = true;
    int ret;

    if (a->keep || a->img.format) {
        error_report("-d and -f are for offline commits, not with --agent");
        return 64;
    }
    c = remote_connect(a->agent, &err);
    if (!c || remote_find_disk(c, a->image, &d, &err) < 0) {
        report(err);
        if (c) {
            qmp_client_close(c);
        }
        return 1;
    }
    if (a->top) {
        /* is TOP the disk's top image? */
        char *t = abs_name(a->top), *f = NULL;
        if (json_object_object_get_ex(d.image, "filename", &file)) {
            f = abs_name(json_object_get_string(file));
        }
        top_is_top = f && !strcmp(t, f);
        free(t);
        free(f);
    }
    if (top_is_top && !a->active) {
        error_report("committing the top of disk '%s' is an active commit: add --active",
                     a->image);
        remote_disk_free(&d);
        qmp_client_close(c);
        return 1;
    }
    if (!top_is_top && a->active) {
        error_report("--active commits the disk's top; '%s' is below it", a->top);
        remote_disk_free(&d);
        qmp_client_close(c);
        return 1;
    }
    args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(d.node));
    json_object_object_add(args, "job-id", json_object_new_string(a->image));
    /* TOP and BASE by their node names (files are named differently by
     * each server) */
    for (int k = 0; k < 2; k++) {
        const char *f = k ? a->base : (top_is_top ? NULL : a->top);
        struct remote_disk n = { 0 };
        char *name;
        if (!f) {
            continue;
        }
        name = abs_name(f);
        if (remote_find_disk(c, name, &n, &err) < 0) {
            free(name);
            json_object_put(args);
            report(err);
            remote_disk_free(&d);
            qmp_client_close(c);
            return 1;
        }
        json_object_object_add(args, k ? "base-node" : "top-node", json_object_new_string(n.node));
        remote_disk_free(&n);
        free(name);
    }
    if (a->copy.bandwidth) {
        json_object_object_add(args, "speed", json_object_new_int64((int64_t)a->copy.bandwidth));
    }
    ret = agent_job_start(c, "block-commit", args, &w);
    remote_disk_free(&d);
    qmp_client_close(c);
    return ret;
}

/* Resumed after the relink: empty TOP (unless -d) and end the job. */
static int commit_resume_empty(struct job_journal *jj, bool keep)
{
    const char *path = journal_image_path(jj->j, "top");
    struct error *err = NULL;
    struct bdev *top;
    int r;

    if (!keep) {
        top = bdev_open(path, NULL, BDEV_O_RDWR | BDEV_O_NO_BACKING, &err);
        if (!top) {
            report(err);
            return 1;
        }
        r = bdev_make_empty(top);
        if (r < 0 && r != -ENOTSUP) {
            bdev_report_io_error(top, "cannot empty", r);
            bdev_unref(top);
            return 1;
        }
        if (bdev_close(top, &err) < 0) {
            report(err);
            return 1;
        }
    }
    return job_journal_end(jj);
}

int cmd_commit(int argc, char **argv)
{
    struct commit_args a = { 0 };
    struct error *err = NULL;
    struct copy_params cp;
    struct bdev *img, *top, *base, *parent;
    struct job_journal jj = { 0 };
    char *name = NULL;
    int ret = 1, r;

    children[2].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_QUIET | IMGOPT_CACHE);
    argp_parse(&commit_argp, argc, argv, 0, NULL, &a);
    cancel_install();
    if (remote_path(a.agent)) {
        return commit_agent(&a);
    }
    img = bdev_open(a.image, a.img.format, a.img.cache, &err);
    if (!img) {
        report(err);
        return 1;
    }
    if (job_journal_begin(&jj, &a.copy, "commit", argc, argv)) {
        goto out;
    }
    if (job_journal_check(&jj, "image", "top", "base", NULL)) {
        goto out;
    }
    top = a.top ? bdev_chain_find(img, a.top) : img;
    if (!top && jj.state && !strcmp(jj.state, "finishing")) {
        /* resumed after the relink: TOP is out of the chain; empty it */
        ret = commit_resume_empty(&jj, a.keep);
        goto out;
    }
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

    if (!jj.state) {
        journal_add_image(jj.j, "image", a.image, JR_WRITE);
        journal_add_image(jj.j, "top", top->filename, JR_WRITE);
        journal_add_image(jj.j, "base", base->filename, JR_WRITE);
        journal_set_str(jj.j, "authoritative", journal_image_path(jj.j, "image"));
    }
    if (job_journal_step(&jj, jj.state && !strcmp(jj.state, "finishing") ? "finishing"
                                                                          : "copying")) {
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
    if (jj.state) {
        /* (resumed: after the copy, nothing is left to copy) */
        cp.start = !strcmp(jj.state, "finishing") ? top->size : jj.copied;
    }
    if (job_journal_checkpoints(&jj, &cp, base)) {
        goto out;
    }
    r = copy_run(&cp, &err);
    copy_opts_finish(&a.copy);
    if (jj.state && r == 0) {
        fprintf(stderr, "blockctl: job %s: copied %" PRIu64 " bytes from offset %" PRIu64 "\n",
                jj.j->id, cp.bytes_written + cp.bytes_zeroed, cp.start);
    }
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

    if (job_journal_step(&jj, "finishing")) {
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
    ret = job_journal_end(&jj);
out:
    if (jj.j) {
        /* stopped while copying: the chain reads as before (nothing to
         * finish); after the copy, resume finishes it */
        if (jj.j && journal_get_str(jj.j, "state") &&
            !strcmp(journal_get_str(jj.j, "state"), "finishing")) {
            job_journal_keep(&jj);
        } else {
            job_journal_end(&jj);
        }
    }
    free(name);
    if (bdev_close(img, &err) < 0) {
        report(err);
        ret = ret ? ret : 1;
    }
    return ret;
}
