/*
 * blockctl stream - pull backing data into an overlay (copy-on-read)
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

struct stream_args {
    const char *agent;
    bool wait, async;
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *base;
    const char *top;
    struct copy_opts copy;
};

enum { OPT_BASE = 0x100, OPT_AGENT, OPT_WAIT, OPT_ASYNC };

static const struct argp_option options[] = {
    { "base", OPT_BASE, "BASE", 0, "Keep BASE (an image of the chain) as the backing file", 0 },
    { "agent", OPT_AGENT, "SOCKET", 0, "TOP is a disk of the agent at SOCKET: a live "
      "block-stream job", 0 },
    { "wait", OPT_WAIT, NULL, 0, "With --agent: wait for the job's end (Ctrl-C cancels it)", 0 },
    { "async", OPT_ASYNC, NULL, 0, "With --wait: Ctrl-C stops waiting, the job goes on", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct stream_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[2] = &a->img;
        state->child_inputs[0] = &a->copy;
        state->child_inputs[1] = &a->copy;
        break;
    case OPT_BASE:
        a->base = arg;
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

/* [2]: the shared image options (imgopts.c), set by cmd_stream */
static struct argp_child children[] = { { &copy_opts_argp, 0, NULL, 0 },
                                        { &journal_opts_argp, 0, NULL, 0 },
                                        { NULL, 0, NULL, 0 },
                                        { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp stream_argp = {
    options, parse_opt, "TOP",
    "Copy into TOP everything it reads from its backing chain above BASE, then make BASE "
    "(or nothing) its backing file.  With --agent, TOP is a disk, streamed live.\v"
    "Exit status: 0 on success, 1 on error, 2 when the live job was cancelled by someone "
    "else, 64 for usage errors, 130/143 when interrupted (TOP then still has its old "
    "backing file and reads the same).",
    children, NULL, NULL,
};

/* --agent: block-stream of the disk's top, job id = the disk's name */
static int stream_agent(struct stream_args *a)
{
    struct error *err = NULL;
    struct qmp_client *c = remote_connect(a->agent, &err);
    struct remote_disk d = { 0 };
    struct job_wait w = { .id = a->top, .wait = a->wait, .progress = a->copy.progress,
                          .progress_json = a->copy.progress_json,
                          .cancel_on_signal = !a->async };
    json_object *args;
    int ret;

    if (!c || remote_find_disk(c, a->top, &d, &err) < 0) {
        report(err);
        if (c) {
            qmp_client_close(c);
        }
        return 1;
    }
    args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(d.node));
    json_object_object_add(args, "job-id", json_object_new_string(a->top));
    if (a->base) {
        char *abs = realpath(a->base, NULL);
        json_object_object_add(args, "base", json_object_new_string(abs ? abs : a->base));
        free(abs);
    }
    if (a->copy.bandwidth) {
        json_object_object_add(args, "speed", json_object_new_int64((int64_t)a->copy.bandwidth));
    }
    ret = agent_job_start(c, "block-stream", args, &w);
    remote_disk_free(&d);
    qmp_client_close(c);
    return ret;
}

int cmd_stream(int argc, char **argv)
{
    struct stream_args a = { 0 };
    struct error *err = NULL;
    struct copy_params cp;
    struct bdev *top, *base = NULL;
    struct bdev_open_opts oo = { 0 };
    struct job_journal jj = { 0 };
    char *new_backing = NULL;
    int ret = 1, r;

    children[2].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_QUIET | IMGOPT_CACHE |
                                     IMGOPT_SRC_CACHE);
    argp_parse(&stream_argp, argc, argv, 0, NULL, &a);
    cancel_install();
    if (remote_path(a.agent)) {
        return stream_agent(&a);
    }
    if (a.wait || a.async) {
        error_report("--wait and --async go with --agent");
        return 64;
    }
    /* -t for TOP, -T for its backing chain */
    oo.backing_cache_set = true;
    oo.backing_cache = a.img.src_cache;
    top = bdev_open_ext(a.top, a.img.format, BDEV_O_RDWR | a.img.cache, &oo, &err);
    if (!top) {
        report(err);
        return 1;
    }
    if (!top->backing && !a.base && !a.copy.resume) {
        /* nothing to stream, whatever the format (raw has no backing file) */
        copy_opts_nothing(&a.copy);
        ret = 0;
        goto out;
    }
    if (!top->drv->change_backing) {
        error_report("'%s': format '%s' has no backing file to stream from", a.top,
                     top->drv->name);
        goto out;
    }
    if (job_journal_begin(&jj, &a.copy, "stream", argc, argv)) {
        goto out;
    }
    if (job_journal_check(&jj, "top", "base", NULL)) {
        goto out;
    }
    if (jj.state && !strcmp(jj.state, "relinking")) {
        /* resumed after the copy: (again) the one header write */
        const char *b = journal_get_str(jj.j, "new-backing");
        const char *bf = journal_get_str(jj.j, "new-backing-format");
        if (top->drv->change_backing(top, b, bf, &err) < 0) {
            report(err);
            goto out;
        }
        ret = job_journal_end(&jj);
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
        copy_opts_nothing(&a.copy);
        ret = job_journal_end(&jj);
        goto out;
    }
    if (base) {
        new_backing = bdev_backing_name_for(top, top, base);
    }
    if (!jj.state) {
        journal_add_image(jj.j, "top", a.top, JR_WRITE);
        if (base) {
            journal_add_image(jj.j, "base", base->filename, JR_READ);
        }
        journal_set_str(jj.j, "authoritative", journal_image_path(jj.j, "top"));
        journal_set_str(jj.j, "new-backing", new_backing);
        journal_set_str(jj.j, "new-backing-format", base ? bdev_format_name(base) : NULL);
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
    if (jj.state) {
        cp.start = jj.copied;
    }
    if (job_journal_step(&jj, "copying") || job_journal_checkpoints(&jj, &cp, top)) {
        goto out;
    }
    r = copy_run(&cp, &err);
    copy_opts_finish(&a.copy);
    if (jj.state && r == 0) {
        fprintf(stderr, "blockctl: job %s: copied %" PRIu64 " bytes from offset %" PRIu64 "\n",
                jj.j->id, cp.bytes_written + cp.bytes_zeroed, cp.start);
    }
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
    if (job_journal_step(&jj, "relinking")) {
        goto out;
    }
    if (top->drv->change_backing(top, new_backing, base ? bdev_format_name(base) : NULL, &err) < 0) {
        report(err);
        job_journal_keep(&jj);      /* (the header write may have happened: resume says) */
        goto out;
    }
    ret = job_journal_end(&jj);
out:
    if (jj.j) {
        job_journal_end(&jj);       /* (stopped: the chain reads as before) */
    }
    free(new_backing);
    if (bdev_close(top, &err) < 0) {
        report(err);
        ret = ret ? ret : 1;
    }
    return ret;
}
