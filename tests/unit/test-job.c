/*
 * blockctl - unit tests of lib/job.c: QEMU's job model (statuses, events,
 * verbs) driven by a fake driver, with the control thread a real loop
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/job.h"
#include "lib/loop.h"
#include "tests/unit/tap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct loop *L;
static struct job_list JL;

/* the events, as "NAME" or "JOB_STATUS_CHANGE:status", space-separated */
static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static char events[4096];
static char last_error[256];
static int n_ended;

static void on_emit(void *opaque, const char *name, json_object *data)
{
    json_object *v;

    (void)opaque;
    pthread_mutex_lock(&ev_lock);
    if (events[0]) {
        strcat(events, " ");
    }
    strcat(events, name);
    if (!strcmp(name, "JOB_STATUS_CHANGE") && json_object_object_get_ex(data, "status", &v)) {
        strcat(events, ":");
        strcat(events, json_object_get_string(v));
    }
    if (json_object_object_get_ex(data, "error", &v)) {
        snprintf(last_error, sizeof(last_error), "%s", json_object_get_string(v));
    }
    pthread_mutex_unlock(&ev_lock);
    json_object_put(data);
}

static void on_changed(void *opaque)
{
    (void)opaque;
    __atomic_add_fetch(&n_ended, 1, __ATOMIC_SEQ_CST);
}

static void reset_events(void)
{
    pthread_mutex_lock(&ev_lock);
    events[0] = 0;
    last_error[0] = 0;
    pthread_mutex_unlock(&ev_lock);
}

static bool events_are(const char *want)
{
    bool same;

    pthread_mutex_lock(&ev_lock);
    same = !strcmp(events, want);
    if (!same) {
        tap_diag("events: %s", events);
        tap_diag("wanted: %s", want);
    }
    pthread_mutex_unlock(&ev_lock);
    return same;
}

static bool events_have(const char *part)
{
    bool has;

    pthread_mutex_lock(&ev_lock);
    has = strstr(events, part) != NULL;
    if (!has) {
        tap_diag("events: %s", events);
    }
    pthread_mutex_unlock(&ev_lock);
    return has;
}

/* --- running things on the control thread --- */

struct ctl {
    void (*fn)(void *arg);
    void *arg;
    bool done;
    pthread_mutex_t m;
    pthread_cond_t c;
};

static void ctl_cb(void *opaque)
{
    struct ctl *c = opaque;

    c->fn(c->arg);
    pthread_mutex_lock(&c->m);
    c->done = true;
    pthread_cond_signal(&c->c);
    pthread_mutex_unlock(&c->m);
}

static void on_ctl(void (*fn)(void *), void *arg)
{
    struct ctl c = { .fn = fn, .arg = arg };

    pthread_mutex_init(&c.m, NULL);
    pthread_cond_init(&c.c, NULL);
    loop_call(L, ctl_cb, &c);
    pthread_mutex_lock(&c.m);
    while (!c.done) {
        pthread_cond_wait(&c.c, &c.m);
    }
    pthread_mutex_unlock(&c.m);
    pthread_mutex_destroy(&c.m);
    pthread_cond_destroy(&c.c);
}

/* the status of job @id as the control thread sees it ("gone" if none) */
struct status_q {
    const char *id;
    char status[32];
};

static void status_cb(void *arg)
{
    struct status_q *q = arg;
    struct job *j = job_find(&JL, q->id);

    snprintf(q->status, sizeof(q->status), "%s", j ? job_status_name(j->status) : "gone");
}

static bool wait_status(const char *id, const char *want)
{
    struct status_q q = { .id = id };

    for (int i = 0; i < 2000; i++) {
        on_ctl(status_cb, &q);
        if (!strcmp(q.status, want)) {
            return true;
        }
        usleep(1000);
    }
    tap_diag("job %s: status %s, wanted %s", id, q.status, want);
    return false;
}

/* a verb on the control thread */
enum { V_PAUSE, V_RESUME, V_CANCEL, V_FCANCEL, V_COMPLETE, V_FINALIZE, V_DISMISS, V_SPEED };
struct verb_q {
    const char *id;
    int verb;
    int64_t speed;
    int ret;
    char msg[200];
};

static void verb_cb(void *arg)
{
    struct verb_q *q = arg;
    struct job *j = job_find(&JL, q->id);
    struct error *err = NULL;

    if (!j) {
        q->ret = -ENOENT;
        snprintf(q->msg, sizeof(q->msg), "no job");
        return;
    }
    switch (q->verb) {
    case V_PAUSE: q->ret = job_user_pause(j, &err); break;
    case V_RESUME: q->ret = job_user_resume(j, &err); break;
    case V_CANCEL: q->ret = job_user_cancel(j, false, &err); break;
    case V_FCANCEL: q->ret = job_user_cancel(j, true, &err); break;
    case V_COMPLETE: q->ret = job_complete(j, &err); break;
    case V_FINALIZE: q->ret = job_finalize(j, &err); break;
    case V_DISMISS: q->ret = job_dismiss(j, &err); break;
    case V_SPEED: q->ret = job_set_speed(j, q->speed, &err); break;
    }
    snprintf(q->msg, sizeof(q->msg), "%s", err ? err->msg : "");
    error_free(err);
}

static int verb(const char *id, int v, char *msg)
{
    struct verb_q q = { .id = id, .verb = v, .speed = -1 };

    on_ctl(verb_cb, &q);
    if (msg) {
        strcpy(msg, q.msg);
    }
    return q.ret;
}

/* --- the fake driver --- */

struct fake {
    int steps;          /* pause points before the end (or before ready) */
    bool mirror;        /* then ready, until completed or cancelled */
    int fail_run;       /* run() returns this */
    bool fail_prepare;
    bool completed;     /* block-job-complete was called */
    int n_prepare, n_commit, n_abort, n_clean, n_free;
    bool commit_saw_cancel;
    int run_steps;
};

static int fake_run(struct job *job, struct error **errp)
{
    struct fake *f = job->opaque;

    job_progress_set_total(job, (uint64_t)f->steps);
    for (int i = 0; i < f->steps; i++) {
        if (job_pause_point(job)) {
            return -ECANCELED;
        }
        job_sleep_ns(job, 1000000);
        job_progress_add(job, 1);
        f->run_steps++;
    }
    if (f->fail_run) {
        error_setg(errp, "the fake failed");
        return f->fail_run;
    }
    if (!f->mirror) {
        return 0;
    }
    job_set_ready(job);
    while (!__atomic_load_n(&f->completed, __ATOMIC_ACQUIRE)) {
        if (job_pause_point(job)) {
            pthread_mutex_lock(&job->lock);
            bool force = job->force_cancel;
            pthread_mutex_unlock(&job->lock);
            return force ? -ECANCELED : 0;
        }
        job_sleep_ns(job, 1000000);
    }
    return 0;
}

static int fake_complete(struct job *job, struct error **errp)
{
    struct fake *f = job->opaque;

    (void)errp;
    __atomic_store_n(&f->completed, true, __ATOMIC_RELEASE);
    return 0;
}

static int fake_prepare(struct job *job, struct error **errp)
{
    struct fake *f = job->opaque;

    f->n_prepare++;
    if (f->fail_prepare) {
        error_setg(errp, "the graph change failed");
        return -EIO;
    }
    return 0;
}

static void fake_commit(struct job *job)
{
    struct fake *f = job->opaque;

    f->n_commit++;
    f->commit_saw_cancel = job_is_cancelled(job);
}

static void fake_abort(struct job *job)
{
    ((struct fake *)job->opaque)->n_abort++;
}

static void fake_clean(struct job *job)
{
    ((struct fake *)job->opaque)->n_clean++;
}

static void fake_free(struct job *job)
{
    ((struct fake *)job->opaque)->n_free++;
}

static const struct job_driver fake_drv = {
    .type = "stream", .run = fake_run, .prepare = fake_prepare, .commit = fake_commit,
    .abort = fake_abort, .clean = fake_clean, .free = fake_free,
};

static const struct job_driver fake_mirror_drv = {
    .type = "mirror", .run = fake_run, .complete = fake_complete, .prepare = fake_prepare,
    .commit = fake_commit, .abort = fake_abort, .clean = fake_clean, .free = fake_free,
};

struct create_q {
    const struct job_driver *drv;
    const char *id, *device;
    bool auto_finalize, auto_dismiss;
    struct fake *f;
    bool ok;
    char msg[200];
};

static void create_cb(void *arg)
{
    struct create_q *q = arg;
    struct error *err = NULL;
    struct job *j = job_create(&JL, q->drv, q->id, q->device, 0, q->auto_finalize,
                               q->auto_dismiss, q->f, &err);

    q->ok = j != NULL;
    snprintf(q->msg, sizeof(q->msg), "%s", err ? err->msg : "");
    error_free(err);
    if (j) {
        job_start(j);
    }
}

static bool start(const struct job_driver *drv, const char *id, const char *device,
                  struct fake *f, bool auto_fin, bool auto_dis, char *msg)
{
    struct create_q q = { drv, id, device, auto_fin, auto_dis, f, false, "" };

    on_ctl(create_cb, &q);
    if (msg) {
        strcpy(msg, q.msg);
    }
    return q.ok;
}

static bool wait_ended(int n)
{
    for (int i = 0; i < 5000; i++) {
        if (__atomic_load_n(&n_ended, __ATOMIC_SEQ_CST) >= n) {
            return true;
        }
        usleep(1000);
    }
    return false;
}

static void *loop_thread(void *arg)
{
    (void)arg;
    loop_run(L);
    return NULL;
}

/* A job thread's reads (job_thread_background) are not the guest's */
static void *bg_reader(void *opaque)
{
    char buf[512];

    job_thread_background();
    for (int i = 0; i < 3; i++) {
        (void)bdev_pread(opaque, buf, sizeof(buf), 0);
    }
    return NULL;
}

static void test_foreground(void)
{
    char path[] = "/tmp/blockctl-test-job-XXXXXX", buf[512];
    struct error *err = NULL;
    struct bdev *bd;
    pthread_t t;
    int fd = mkstemp(path);

    if (fd < 0 || ftruncate(fd, 1 << 20) < 0) {
        ok(0, "a scratch file: %s", strerror(errno));
        return;
    }
    close(fd);
    bd = bdev_open(path, "raw", BDEV_O_RDWR, &err);
    ok(bd != NULL, "a raw scratch image opens");
    if (!bd) {
        error_free(err);
        unlink(path);
        return;
    }
    ok(bdev_pread(bd, buf, sizeof(buf), 0) == 0 && bdev_foreground_within(1000),
       "a read of this thread is foreground");
    usleep(120 * 1000);
    ok(!bdev_foreground_within(60), "60 ms later, nothing in the last 60 ms");
    pthread_create(&t, NULL, bg_reader, bd);
    pthread_join(t, NULL);
    ok(!bdev_foreground_within(60), "a background thread's reads do not count");
    ok(bdev_pwrite(bd, buf, sizeof(buf), 4096, 0) == 0 && bdev_foreground_within(60),
       "a write of this thread does");
    ok(bdev_close(bd, NULL) == 0, "the scratch image closes");
    unlink(path);
}

int main(void)
{
    pthread_t lt;
    char msg[200];
    int ended = 0;

    L = loop_new();
    job_list_init(&JL, L, on_emit, NULL);
    JL.changed = on_changed;
    pthread_create(&lt, NULL, loop_thread, NULL);

    test_foreground();

    /* the tables */
    ok(job_transition_allowed(JOB_STATUS_RUNNING, JOB_STATUS_READY) &&
       job_transition_allowed(JOB_STATUS_READY, JOB_STATUS_STANDBY) &&
       !job_transition_allowed(JOB_STATUS_PAUSED, JOB_STATUS_READY) &&
       !job_transition_allowed(JOB_STATUS_CONCLUDED, JOB_STATUS_RUNNING),
       "transitions as QEMU's table");
    ok(job_verb_allowed(JOB_VERB_COMPLETE, JOB_STATUS_READY) &&
       job_verb_allowed(JOB_VERB_COMPLETE, JOB_STATUS_STANDBY) &&
       !job_verb_allowed(JOB_VERB_COMPLETE, JOB_STATUS_RUNNING) &&
       job_verb_allowed(JOB_VERB_DISMISS, JOB_STATUS_CONCLUDED) &&
       !job_verb_allowed(JOB_VERB_CANCEL, JOB_STATUS_CONCLUDED),
       "verbs as QEMU's table");

    /* 1. a job that runs to its end */
    struct fake f1 = { .steps = 5 };
    reset_events();
    ok(start(&fake_drv, NULL, "vda", &f1, true, true, msg), "a job starts (id = device)");
    ok(wait_ended(++ended), "it ends");
    ok(events_are("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending "
                  "BLOCK_JOB_COMPLETED JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null"),
       "its events are QEMU's");
    ok(f1.run_steps == 5 && f1.n_prepare == 1 && f1.n_commit == 1 && !f1.n_abort &&
       f1.n_clean == 1 && f1.n_free == 1, "prepare, commit, clean, free once each");
    ok(wait_status("vda", "gone"), "auto-dismiss: the job is gone");

    /* 2. ids */
    struct fake f2 = { .steps = 100000 };
    ok(!start(&fake_drv, "1bad", "vda", &f2, true, true, msg) &&
       !strcmp(msg, "Invalid job ID '1bad'"), "a malformed id is refused: %s", msg);
    reset_events();
    ok(start(&fake_drv, "j2", "vda", &f2, true, true, msg), "job j2 starts");
    ok(!start(&fake_drv, "j2", "vdb", &f1, true, true, msg) &&
       !strcmp(msg, "Job ID 'j2' already in use"), "a second j2 is refused: %s", msg);

    /* 3. pause, resume, set-speed, then cancel before ready */
    is_int(verb("j2", V_PAUSE, msg), 0, "pause");
    ok(wait_status("j2", "paused"), "the job is paused");
    ok(verb("j2", V_PAUSE, msg) < 0 && !strcmp(msg, "Job is already paused"),
       "a second pause: %s", msg);
    ok(verb("j2", V_COMPLETE, msg) < 0 &&
       !strcmp(msg, "Job 'j2' in state 'paused' cannot accept command verb 'complete'"),
       "complete while paused: %s", msg);
    is_int(verb("j2", V_RESUME, msg), 0, "resume");
    ok(wait_status("j2", "running"), "running again");
    ok(verb("j2", V_RESUME, msg) < 0 && !strcmp(msg, "Can't resume a job that was not paused"),
       "resume when not paused: %s", msg);
    struct verb_q sq = { .id = "j2", .verb = V_SPEED, .speed = -1 };
    on_ctl(verb_cb, &sq);
    ok(sq.ret < 0 && !strcmp(sq.msg, "Parameter 'speed' expects a non-negative value"), "negative speed: %s", sq.msg);
    is_int(verb("j2", V_CANCEL, msg), 0, "cancel");
    ok(wait_ended(++ended), "the cancelled job ends");
    ok(events_are("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:paused JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:aborting BLOCK_JOB_CANCELLED "
                  "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null"),
       "cancel before ready: aborting, BLOCK_JOB_CANCELLED");
    ok(f2.n_abort == 1 && !f2.n_commit && !f2.n_prepare && f2.n_clean == 1,
       "abort, not prepare or commit");

    /* 4. a mirror: ready, then complete */
    struct fake f3 = { .steps = 50, .mirror = true };
    reset_events();
    ok(start(&fake_mirror_drv, "m", "vda", &f3, true, true, msg), "a mirror starts");
    ok(verb("m", V_COMPLETE, msg) < 0 &&
       !strcmp(msg, "Job 'm' in state 'running' cannot accept command verb 'complete'"),
       "complete before ready is refused: %s", msg);
    ok(wait_status("m", "ready"), "it becomes ready");
    is_int(verb("m", V_PAUSE, msg), 0, "pause a ready job");
    ok(wait_status("m", "standby"), "ready + paused = standby");
    is_int(verb("m", V_RESUME, msg), 0, "resume");
    ok(wait_status("m", "ready"), "ready again");
    is_int(verb("m", V_COMPLETE, msg), 0, "complete");
    ok(wait_ended(++ended), "it ends");
    ok(events_are("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:ready BLOCK_JOB_READY JOB_STATUS_CHANGE:standby "
                  "JOB_STATUS_CHANGE:ready JOB_STATUS_CHANGE:waiting "
                  "JOB_STATUS_CHANGE:pending BLOCK_JOB_COMPLETED "
                  "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null"),
       "a completed mirror's events");
    ok(f3.n_commit == 1 && !f3.commit_saw_cancel, "commit, not cancelled");

    /* 5. a mirror cancelled when ready: it completes, without pivot */
    struct fake f4 = { .steps = 2, .mirror = true };
    reset_events();
    ok(start(&fake_mirror_drv, "m2", "vdb", &f4, true, true, msg), "a second mirror");
    ok(wait_status("m2", "ready"), "ready");
    is_int(verb("m2", V_CANCEL, msg), 0, "cancel (not forced)");
    ok(wait_ended(++ended), "it ends");
    ok(events_are("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:ready BLOCK_JOB_READY JOB_STATUS_CHANGE:waiting "
                  "JOB_STATUS_CHANGE:pending BLOCK_JOB_COMPLETED "
                  "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null"),
       "cancel on ready: BLOCK_JOB_COMPLETED");
    ok(f4.n_commit == 1 && f4.commit_saw_cancel, "commit sees the cancel (no pivot)");

    /* 6. forced cancel on ready: cancelled */
    struct fake f5 = { .steps = 1, .mirror = true };
    reset_events();
    ok(start(&fake_mirror_drv, "m3", "vdb", &f5, true, true, msg), "a third mirror");
    ok(wait_status("m3", "ready"), "ready");
    is_int(verb("m3", V_FCANCEL, msg), 0, "cancel force=true");
    ok(wait_ended(++ended), "it ends");
    ok(events_have("BLOCK_JOB_CANCELLED") && f5.n_abort == 1 && !f5.n_commit,
       "forced: BLOCK_JOB_CANCELLED, abort");

    /* 7. manual finalize and dismiss */
    struct fake f6 = { .steps = 2 };
    reset_events();
    ok(start(&fake_drv, "s", "vdc", &f6, false, false, msg), "auto-finalize off");
    ok(wait_status("s", "pending"), "it waits in pending");
    ok(verb("s", V_DISMISS, msg) < 0 &&
       !strcmp(msg, "Job 's' in state 'pending' cannot accept command verb 'dismiss'"),
       "dismiss in pending: %s", msg);
    is_int(verb("s", V_FINALIZE, msg), 0, "finalize");
    ok(wait_status("s", "concluded"), "concluded, kept");
    ok(wait_ended(++ended), "ended");
    is_int(verb("s", V_DISMISS, msg), 0, "dismiss");
    ok(wait_status("s", "gone"), "gone");
    ok(events_are("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending BLOCK_JOB_PENDING "
                  "BLOCK_JOB_COMPLETED JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null"),
       "pending, finalize, dismiss");

    /* 8. failures: run, then prepare */
    struct fake f7 = { .steps = 1, .fail_run = -EIO };
    reset_events();
    ok(start(&fake_drv, "f", "vdd", &f7, true, true, msg), "a failing job");
    ok(wait_ended(++ended), "it ends");
    ok(events_have("aborting BLOCK_JOB_COMPLETED") && !strcmp(last_error, "the fake failed") &&
       f7.n_abort == 1 && !f7.n_commit, "BLOCK_JOB_COMPLETED with its error: %s", last_error);
    struct fake f8 = { .steps = 1, .fail_prepare = true };
    reset_events();
    ok(start(&fake_drv, "g", "vdd", &f8, true, true, msg), "a job whose prepare fails");
    ok(wait_ended(++ended), "it ends");
    ok(!strcmp(last_error, "the graph change failed") && f8.n_abort == 1 && !f8.n_commit,
       "abort after a failed prepare: %s", last_error);

    loop_quit(L);
    pthread_join(lt, NULL);
    loop_free(L);
    return tap_done();
}
