/*
 * blockctl - the agent's jobs: block-stream, query-block-jobs, query-jobs,
 * block-job-* and job-* verbs
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A job works on one disk (its "device"), which then refuses a second job
 * and graph changes (snapshots) until the job has ended, as QEMU's op
 * blockers do.  The job model is lib/job.c; each kind of job here is a
 * driver: run() in the job's thread (the copy engine, live), prepare()
 * and the rest on the main loop.
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"
#include "lib/copy.h"
#include "lib/journal.h"

#include <errno.h>
#include <string.h>

/* --- helpers shared by the job commands --- */

static const char *arg_str(json_object *args, const char *name)
{
    json_object *v;

    return json_object_object_get_ex(args, name, &v) && v ? json_object_get_string(v) : NULL;
}

static bool arg_bool(json_object *args, const char *name, bool dflt)
{
    json_object *v;

    return json_object_object_get_ex(args, name, &v) && v ? json_object_get_boolean(v) : dflt;
}

static int64_t arg_int(json_object *args, const char *name, int64_t dflt)
{
    json_object *v;

    return json_object_object_get_ex(args, name, &v) && v ? json_object_get_int64(v) : dflt;
}

static void emit_job_event(void *opaque, const char *name, json_object *data)
{
    agent_event(opaque, name, data);
}

static void jobs_changed(void *opaque)
{
    struct agent *a = opaque;

    /* shutting down and the last job has ended: the main loop may go */
    if (a->quitting && !job_list_active(&a->jobs)) {
        loop_quit(a->loop);
    }
}

void agent_jobs_init(struct agent *a)
{
    job_list_init(&a->jobs, a->loop, emit_job_event, a);
    a->jobs.changed = jobs_changed;
}

bool agent_jobs_shutdown(struct agent *a)
{
    if (!job_list_active(&a->jobs)) {
        return false;
    }
    agent_log(a, "cancelling %d job(s)", job_list_active(&a->jobs));
    job_list_cancel_all(&a->jobs);
    return job_list_active(&a->jobs) > 0;
}

int agent_disk_check_busy(struct agent *a, struct agent_disk *d, const char *node,
                          struct error **errp)
{
    struct job *j = job_find_device(&a->jobs, d->name);

    if (j) {
        error_setg(errp, "Node '%s' is busy: block device is in use by block job: %s", node,
                   j->drv->type);
        return -EBUSY;
    }
    return 0;
}

/* --- block-stream --- */

struct stream_job {
    struct agent *a;
    struct agent_disk *d;
    struct bdev *top;            /* our reference */
    struct bdev *base;           /* NULL: everything below the top is pulled in */
    char *backing_file;          /* the name recorded in the top in the end */
    bool reopened;               /* an image below the disk's top, read-write for the job */
    struct journal *jn;          /* the job's journal (NULL: none) */
    uint64_t start;              /* restored: the copy goes on from here (the journal's) */
    uint64_t bytes;              /* what the copy wrote (the job's thread, then read on prepare) */
};

/*
 * The journal of a live stream, written before the job starts: what an
 * offline `blockctl stream` of the same image needs to finish it (its
 * arguments, absolute), and "copied": below it everything is in the top
 * and flushed.  Stream only copies what the chain already reads, so the
 * top reads the same at every step: its journal is only there to finish
 * the job (a restarted agent goes on from "copied", or `blockctl job
 * resume` with the agent stopped).  0, or -errno.
 */
static int stream_journal_begin(struct stream_job *s, const char *job_id, int64_t speed,
                                struct error **errp)
{
    struct agent *a = s->a;
    char *top = realpath(s->top->filename, NULL), *base = NULL;
    char *argv[4];
    int argc = 0, r;
    struct journal *j;

    if (getenv("BLOCKCTL_NO_JOURNAL")) {
        free(top);
        return 0;
    }
    if (s->base) {
        base = realpath(s->base->filename, NULL);
    }
    argv[argc++] = "stream";
    if (s->base) {
        argv[argc++] = "--base";
        argv[argc++] = base ? base : s->base->filename;
    }
    argv[argc++] = top ? top : s->top->filename;
    j = journal_new(a->cfg.state_dir, "stream", argc, argv, errp);
    free(top);
    free(base);
    if (!j) {
        return -EIO;
    }
    json_object_object_add(j->root, "live", json_object_new_boolean(true));
    journal_set_str(j, "agent-state", a->cfg.state_path);
    journal_set_str(j, "agent-qmp", a->cfg.qmp_path);
    journal_set_str(j, "disk", s->d->name);
    journal_set_str(j, "job-id", job_id);
    journal_add_image(j, "top", s->top->filename, JR_WRITE);
    if (s->base) {
        journal_add_image(j, "base", s->base->filename, JR_READ);
    }
    journal_set_str(j, "authoritative", journal_image_path(j, "top"));
    journal_set_str(j, "new-backing", s->backing_file);
    journal_set_str(j, "new-backing-format", s->base ? bdev_format_name(s->base) : NULL);
    journal_set_u64(j, "copied", 0);
    journal_set_u64(j, "total", s->top->size);
    journal_set_u64(j, "speed", speed);
    r = journal_step(j, "copying", errp);
    if (r < 0) {
        journal_end(j, NULL);
        return r;
    }
    s->jn = j;
    return 0;
}

/*
 * Restored (agent_stream_restore): the job goes on with journal @j, its
 * copy from "copied" (everything below it is in the top, flushed).
 */
static int stream_journal_adopt(struct stream_job *s, struct journal *j, struct error **errp)
{
    journal_set_owner(j);
    if (journal_step(j, "copying", errp) < 0) {
        return -EIO;
    }
    s->jn = j;
    s->start = MIN(journal_get_u64(j, "copied"), s->top->size);
    return 0;
}

/* A checkpoint of the copy: the top flushed, then "copied" recorded. */
static int stream_checkpoint(void *opaque, uint64_t below, struct error **errp)
{
    struct stream_job *s = opaque;

    return journal_checkpoint_copied(s->jn, s->top, below, errp);
}

static int stream_run(struct job *job, struct error **errp)
{
    struct stream_job *s = job->opaque;
    struct copy_params cp;
    int r;

    if (!s->top->backing || s->top->backing == s->base) {
        job_progress_set_total(job, s->top->size);
        job_progress_add(job, s->top->size);
        return 0;
    }
    memset(&cp, 0, sizeof(cp));
    cp.src = s->top;
    cp.dst = s->top;
    cp.mode = COPY_ABOVE;
    cp.base = s->base;
    cp.skip_top = true;
    cp.unchanged = true;
    cp.zero_over_below = true;
    cp.below = s->base;
    cp.job = job;
    cp.live = true;
    if (s->jn) {
        cp.checkpoint = stream_checkpoint;
        cp.checkpoint_opaque = s;
        cp.checkpoint_secs = journal_checkpoint_secs();
    }
    if (s->start) {
        /* restored: what the journal says is copied counts as done */
        cp.start = s->start;
        job_progress_set_total(job, s->start);
        job_progress_add(job, s->start);
    }
    r = copy_run(&cp, errp);
    s->bytes = cp.bytes_written + cp.bytes_zeroed;
    return r;
}

/* The top now holds everything above the base: relink it, under drain. */
static int stream_prepare(struct job *job, struct error **errp)
{
    struct stream_job *s = job->opaque;
    int ret = 0;

    agent_log(s->a, "disk %s: job %s: copied %" PRIu64 " bytes from offset %" PRIu64, s->d->name,
              job->id, s->bytes, s->start);
    if (s->top->backing == s->base) {
        return 0;
    }
    if (s->jn && (ret = journal_step(s->jn, "relinking", errp)) < 0) {
        return ret;
    }
    blk_drain_begin(s->d->blk);
    ret = s->top->drv->change_backing(s->top, s->backing_file,
                                      s->base ? bdev_format_name(s->base) : NULL, errp);
    if (ret == 0) {
        /* the images in between are no longer used: they go */
        bdev_set_backing(s->top, s->base);
    }
    blk_drain_end(s->d->blk);
    if (ret == 0) {
        struct error *err = NULL;
        agent_log(s->a, "disk %s: streamed into %s, backing file now %s", s->d->name,
                  s->top->filename, s->base ? s->base->filename : "none");
        if (agent_state_save(s->a, &err) < 0) {
            agent_log(s->a, "%s", err->msg);
            error_free(err);
        }
    }
    return ret;
}

static void stream_free(struct job *job)
{
    struct stream_job *s = job->opaque;

    if (s->reopened) {
        struct error *err = NULL;
        /* a backing image again */
        if (bdev_reopen(s->top, 0, &err) < 0) {
            agent_log(s->a, "stream into %s: %s", s->top->filename, err->msg);
            error_free(err);
        }
    }
    if (s->jn) {
        /* the job is over (done, failed or cancelled: the top reads the same) */
        struct error *err = NULL;
        if (journal_end(s->jn, &err) < 0) {
            agent_log(s->a, "%s", err->msg);
            error_free(err);
        }
    }
    bdev_unref(s->top);
    if (s->base) {
        bdev_unref(s->base);
    }
    free(s->backing_file);
    free(s);
}

static const struct job_driver stream_driver = {
    .type = "stream",
    .run = stream_run,
    .prepare = stream_prepare,
    .free = stream_free,
};

static void node_not_found(struct error **errp, const char *device, const char *node)
{
    error_setg(errp, "Cannot find device='%s' nor node-name='%s'", device, node);
}

/*
 * The job id: @id, or for a disk named as the device, its name (as QEMU
 * names a job after its BlockBackend); a node has none.
 */
static const char *job_id_for(const char *id, const char *device, struct agent_disk *d)
{
    if (id) {
        return id;
    }
    return d && !strcmp(device, d->name) ? d->name : "";
}

static int stream_start(struct agent *a, struct agent_disk *d, const char *device,
                        struct bdev *top, struct bdev *base, const char *bfile,
                        const char *job_id, int64_t speed, bool auto_finalize,
                        bool auto_dismiss, struct journal *restoring, struct error **errp);

static int qmp_block_stream(json_object *args, json_object **ret, void *opaque,
                            struct error **errp)
{
    struct agent *a = opaque;
    const char *device = arg_str(args, "device");
    const char *base_name = arg_str(args, "base");
    const char *base_node = arg_str(args, "base-node");
    const char *bfile = arg_str(args, "backing-file");
    struct agent_disk *d = NULL;
    struct bdev *top, *base = NULL;

    (void)ret;
    top = agent_find_node(a, device, &d, NULL);
    if (!top || !d) {
        node_not_found(errp, device, device);
        return -ENOENT;
    }
    if (base_name && base_node) {
        error_setg(errp, "'base' and 'base-node' cannot be specified at the same time");
        return -EINVAL;
    }
    if (base_name) {
        base = top->backing ? bdev_chain_find(top->backing, base_name) : NULL;
        if (!base) {
            error_setg(errp, "Can't find '%s' in the backing chain", base_name);
            return -ENOENT;
        }
    } else if (base_node) {
        struct agent_disk *bd = NULL;
        base = agent_find_node(a, base_node, &bd, NULL);
        if (!base) {
            node_not_found(errp, "", base_node);
            return -ENOENT;
        }
        bool in_chain = false;
        for (struct bdev *b = top->backing; b; b = b->backing) {
            in_chain |= b == base;
        }
        if (!in_chain) {
            error_setg(errp, "Node '%s' is not a backing image of '%s'", base_node, device);
            return -EINVAL;
        }
    }
    return stream_start(a, d, device, top, base, bfile, job_id_for(arg_str(args, "job-id"), device, d),
                        arg_int(args, "speed", 0), arg_bool(args, "auto-finalize", true),
                        arg_bool(args, "auto-dismiss", true), NULL, errp);
}

/*
 * A stream of disk @d's image @top (named @device in errors) above @base
 * (NULL: everything below), the top then naming @bfile (NULL: the base's
 * name relative to it): started, or, @restoring (a journal), restored,
 * paused.  0, or -errno with *errp set (@restoring is then left alone).
 */
static int stream_start(struct agent *a, struct agent_disk *d, const char *device,
                        struct bdev *top, struct bdev *base, const char *bfile,
                        const char *job_id, int64_t speed, bool auto_finalize,
                        bool auto_dismiss, struct journal *restoring, struct error **errp)
{
    struct stream_job *s;
    struct job *job;
    bool reopen;

    if (agent_disk_check_busy(a, d, device, errp) < 0) {
        return -EBUSY;
    }
    if (d->read_only) {
        error_setg(errp, "Block node is read-only");
        return -EPERM;
    }
    if (top->backing && !top->drv->change_backing) {
        error_setg(errp, "Driver '%s' does not support changing the backing file",
                   bdev_format_name(top));
        return -ENOTSUP;
    }
    /*
     * An image below the top: the guest only reads it, through the images
     * above, and sees the same data before and after each copy (it comes
     * from below); the job alone writes it, reopened read-write meanwhile.
     */
    reopen = top != blk_root(d->blk) && top->backing && top->backing != base && top->read_only;
    if (reopen && bdev_reopen(top, BDEV_O_RDWR, errp) < 0) {
        return -EIO;
    }
    s = xzalloc(sizeof(*s));
    s->a = a;
    s->d = d;
    s->top = top;
    s->reopened = reopen;
    bdev_ref(top);
    s->base = base;
    if (base) {
        bdev_ref(base);
        s->backing_file = bfile ? xstrdup(bfile) : bdev_backing_name_for(top, top, base);
    }
    /* (a job id already taken fails job_create, which ends the journal) */
    if ((restoring ? stream_journal_adopt(s, restoring, errp)
                   : stream_journal_begin(s, job_id, speed, errp)) < 0) {
        stream_free(&(struct job){ .opaque = s });
        return -EIO;
    }
    job = job_create(&a->jobs, &stream_driver, job_id, d->name, speed, auto_finalize,
                     auto_dismiss, s, errp);
    if (!job) {
        if (restoring) {
            s->jn = NULL;       /* (left as it is: the caller's) */
        }
        stream_free(&(struct job){ .opaque = s });
        return -EINVAL;
    }
    agent_log(a, "disk %s: job %s: stream into %s%s%s%s", d->name, job->id, top->filename,
              base ? " above " : "", base ? base->filename : "",
              restoring ? " (restored, paused)" : "");
    if (restoring) {
        struct error *err = NULL;
        if (job_user_pause(job, &err) < 0) {
            agent_log(a, "job %s: %s", job->id, err->msg);
            error_free(err);
        }
    }
    job_start(job);
    return 0;
}

/* The restore failed: @j is no longer this agent's (the offline tools may take it). */
static void stream_restore_failed(struct agent *a, struct journal *j, const char *why)
{
    struct error *err = NULL;

    agent_log(a, "stream job %s (disk %s) cannot go on here: %s; 'blockctl job resume %s' "
              "(this agent stopped) finishes it, 'blockctl job abort %s' drops it", j->id,
              journal_get_str(j, "disk") ?: "?", why, j->id, j->id);
    if (json_object_object_get_ex(j->root, "pid", NULL) &&
        journal_get_u64(j, "pid") == (uint64_t)getpid()) {
        json_object_object_del(j->root, "pid");
        json_object_object_del(j->root, "pid-start");
        if (journal_save(j, &err) < 0) {
            agent_log(a, "%s", err->msg);
            error_free(err);
        }
    }
    journal_free(j);
}

void agent_stream_restore(struct agent *a, struct journal *j)
{
    const char *disk = journal_get_str(j, "disk"), *jid = journal_get_str(j, "job-id");
    const char *top_path = journal_image_path(j, "top"), *base_path = journal_image_path(j, "base");
    struct agent_disk *d = disk ? agent_find_disk(a, disk) : NULL;
    struct bdev *top, *base = NULL;
    struct error *err = NULL;
    int r;

    if (!d || !top_path) {
        stream_restore_failed(a, j, "its disk is not served here");
        return;
    }
    top = agent_chain_find_file(blk_root(d->blk), top_path);
    if (!top || journal_check_image(j, "top", &err) < 0 ||
        (base_path && journal_check_image(j, "base", &err) < 0)) {
        char *why = top ? xstrdup(err->msg)
                        : xasprintf("'%s' is not in the chain of disk %s", top_path, d->name);
        error_free(err);
        stream_restore_failed(a, j, why);
        free(why);
        return;
    }
    if (base_path) {
        base = top->backing ? agent_chain_find_file(top->backing, base_path) : NULL;
        if (!base) {
            char *why = xasprintf("'%s' is not below '%s'", base_path, top_path);
            stream_restore_failed(a, j, why);
            free(why);
            return;
        }
    }
    if (top->backing == base) {
        /* the relink was on disk before the kill: the stream is over */
        agent_log(a, "disk %s: stream job %s had finished (%s's backing file: %s)", d->name,
                  j->id, top->filename, base ? base->filename : "none");
        if (journal_end(j, &err) < 0) {
            agent_log(a, "%s", err->msg);
            error_free(err);
        }
        return;
    }
    r = stream_start(a, d, d->name, top, base, journal_get_str(j, "new-backing"),
                     jid && *jid ? jid : d->name, (int64_t)journal_get_u64(j, "speed"), true, true,
                     j, &err);
    if (r < 0) {
        stream_restore_failed(a, j, err->msg);
        error_free(err);
        return;
    }
    agent_log(a, "disk %s: stream job %s (journal %s) restored, paused from offset %" PRIu64
              ": job-resume goes on with it", d->name, jid && *jid ? jid : d->name, j->id,
              journal_get_u64(j, "copied"));
}

/* --- queries --- */

static json_object *list_jobs(struct agent *a, json_object *(*info)(struct job *))
{
    json_object *list = json_object_new_array();

    for (struct job *j = a->jobs.jobs; j; j = j->next) {
        json_object_array_add(list, info(j));
    }
    return list;
}

static int qmp_query_block_jobs(json_object *args, json_object **ret, void *opaque,
                                struct error **errp)
{
    (void)args;
    (void)errp;
    *ret = list_jobs(opaque, job_block_info);
    return 0;
}

static int qmp_query_jobs(json_object *args, json_object **ret, void *opaque,
                          struct error **errp)
{
    (void)args;
    (void)errp;
    *ret = list_jobs(opaque, job_info);
    return 0;
}

/* --- verbs --- */

/* block-job-*: by "device" (or "id"), DeviceNotActive when unknown */
static struct job *find_block_job(struct agent *a, json_object *args, struct error **errp)
{
    const char *id = arg_str(args, "device");
    struct job *j;

    if (!id) {
        id = arg_str(args, "id");
    }
    j = job_find(&a->jobs, id);
    if (!j) {
        error_setg(errp, "Block job '%s' not found", id);
        error_set_class(errp, QMP_ERR_DEVICE_NOT_ACTIVE);
    }
    return j;
}

/* job-*: by "id" */
static struct job *find_job(struct agent *a, json_object *args, struct error **errp)
{
    struct job *j = job_find(&a->jobs, arg_str(args, "id"));

    if (!j) {
        error_setg(errp, "Job not found");
    }
    return j;
}

enum verb { V_PAUSE, V_RESUME, V_CANCEL, V_COMPLETE, V_FINALIZE, V_DISMISS, V_SPEED };

static int do_verb(struct agent *a, struct job *j, enum verb v, json_object *args, bool block,
                   struct error **errp)
{
    switch (v) {
    case V_PAUSE:
        return job_user_pause(j, errp);
    case V_RESUME:
        return job_user_resume(j, errp);
    case V_CANCEL:
        if (block) {
            bool force = arg_bool(args, "force", false);
            if (j->user_paused && !force) {
                error_setg(errp, "The block job for device '%s' is currently paused", j->id);
                return -EBUSY;
            }
            return job_user_cancel(j, force, errp);
        }
        return job_user_cancel(j, true, errp);
    case V_COMPLETE:
        return job_complete(j, errp);
    case V_FINALIZE:
        return job_finalize(j, errp);
    case V_DISMISS:
        return job_dismiss(j, errp);
    case V_SPEED:
        return job_set_speed(j, arg_int(args, "speed", 0), errp);
    }
    (void)a;
    return -EINVAL;
}

#define BLOCK_VERB(fn, v)                                                                  \
    static int fn(json_object *args, json_object **ret, void *opaque, struct error **errp) \
    {                                                                                      \
        struct job *j = find_block_job(opaque, args, errp);                                \
        (void)ret;                                                                         \
        return j ? do_verb(opaque, j, v, args, true, errp) : -ENOENT;                      \
    }
#define JOB_VERB(fn, v)                                                                    \
    static int fn(json_object *args, json_object **ret, void *opaque, struct error **errp) \
    {                                                                                      \
        struct job *j = find_job(opaque, args, errp);                                      \
        (void)ret;                                                                         \
        return j ? do_verb(opaque, j, v, args, false, errp) : -ENOENT;                     \
    }

BLOCK_VERB(qmp_bj_pause, V_PAUSE)
BLOCK_VERB(qmp_bj_resume, V_RESUME)
BLOCK_VERB(qmp_bj_cancel, V_CANCEL)
BLOCK_VERB(qmp_bj_complete, V_COMPLETE)
BLOCK_VERB(qmp_bj_finalize, V_FINALIZE)
BLOCK_VERB(qmp_bj_dismiss, V_DISMISS)
BLOCK_VERB(qmp_bj_speed, V_SPEED)
JOB_VERB(qmp_job_pause, V_PAUSE)
JOB_VERB(qmp_job_resume, V_RESUME)
JOB_VERB(qmp_job_cancel, V_CANCEL)
JOB_VERB(qmp_job_complete, V_COMPLETE)
JOB_VERB(qmp_job_finalize, V_FINALIZE)
JOB_VERB(qmp_job_dismiss, V_DISMISS)

static const char *const on_error_values[] = { "report", "ignore", "enospc", "stop", "auto",
                                               NULL };

static const struct qmp_arg stream_args[] = {
    { "job-id", QMP_STR, true, NULL },
    { "device", QMP_STR, false, NULL },
    { "base", QMP_STR, true, NULL },
    { "base-node", QMP_STR, true, NULL },
    { "backing-file", QMP_STR, true, NULL },
    { "bottom", QMP_STR, true, NULL },
    { "speed", QMP_INT, true, NULL },
    { "on-error", QMP_ENUM, true, on_error_values },
    { "filter-node-name", QMP_STR, true, NULL },
    { "auto-finalize", QMP_BOOL, true, NULL },
    { "auto-dismiss", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg device_args[] = {
    { "device", QMP_STR, false, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg cancel_args[] = {
    { "device", QMP_STR, false, NULL },
    { "force", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg speed_args[] = {
    { "device", QMP_STR, false, NULL },
    { "speed", QMP_INT, false, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg id_args[] = {
    { "id", QMP_STR, false, NULL },
    { NULL, 0, false, NULL },
};

const struct qmp_command agent_job_commands[] = {
    { "block-stream", qmp_block_stream, stream_args },
    { "query-block-jobs", qmp_query_block_jobs, NULL },
    { "query-jobs", qmp_query_jobs, NULL },
    { "block-job-set-speed", qmp_bj_speed, speed_args },
    { "block-job-pause", qmp_bj_pause, device_args },
    { "block-job-resume", qmp_bj_resume, device_args },
    { "block-job-cancel", qmp_bj_cancel, cancel_args },
    { "block-job-complete", qmp_bj_complete, device_args },
    { "block-job-finalize", qmp_bj_finalize, id_args },
    { "block-job-dismiss", qmp_bj_dismiss, id_args },
    { "job-pause", qmp_job_pause, id_args },
    { "job-resume", qmp_job_resume, id_args },
    { "job-cancel", qmp_job_cancel, id_args },
    { "job-complete", qmp_job_complete, id_args },
    { "job-finalize", qmp_job_finalize, id_args },
    { "job-dismiss", qmp_job_dismiss, id_args },
    { NULL, NULL, NULL },
};
