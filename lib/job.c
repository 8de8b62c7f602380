/*
 * blockctl - background jobs with QEMU's job model
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/job.h"
#include "lib/loop.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *const status_names[JOB_STATUS__MAX] = {
    [JOB_STATUS_UNDEFINED] = "undefined", [JOB_STATUS_CREATED] = "created",
    [JOB_STATUS_RUNNING] = "running",     [JOB_STATUS_PAUSED] = "paused",
    [JOB_STATUS_READY] = "ready",         [JOB_STATUS_STANDBY] = "standby",
    [JOB_STATUS_WAITING] = "waiting",     [JOB_STATUS_PENDING] = "pending",
    [JOB_STATUS_ABORTING] = "aborting",   [JOB_STATUS_CONCLUDED] = "concluded",
    [JOB_STATUS_NULL] = "null",
};

static const char *const verb_names[JOB_VERB__MAX] = {
    [JOB_VERB_CANCEL] = "cancel",     [JOB_VERB_PAUSE] = "pause",
    [JOB_VERB_RESUME] = "resume",     [JOB_VERB_SET_SPEED] = "set-speed",
    [JOB_VERB_COMPLETE] = "complete", [JOB_VERB_FINALIZE] = "finalize",
    [JOB_VERB_DISMISS] = "dismiss",
};

/*
 * The transitions QEMU allows, from (row) to (column), in the order of
 * enum job_status: U C R P Y S W D X E N.
 */
static const bool transitions[JOB_STATUS__MAX][JOB_STATUS__MAX] = {
    /* U */ { 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
    /* C */ { 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1 },
    /* R */ { 0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0 },
    /* P */ { 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0 },
    /* Y */ { 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0 },
    /* S */ { 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0 },
    /* W */ { 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0 },
    /* D */ { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0 },
    /* X */ { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0 },
    /* E */ { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 },
    /* N */ { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

/* Which verbs each status accepts (columns as above). */
static const bool verbs[JOB_VERB__MAX][JOB_STATUS__MAX] = {
    [JOB_VERB_CANCEL] = { 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 },
    [JOB_VERB_PAUSE] = { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_RESUME] = { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_SET_SPEED] = { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_COMPLETE] = { 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_FINALIZE] = { 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0 },
    [JOB_VERB_DISMISS] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0 },
};

const char *job_status_name(enum job_status s)
{
    return s < JOB_STATUS__MAX ? status_names[s] : "?";
}

const char *job_verb_name(enum job_verb v)
{
    return v < JOB_VERB__MAX ? verb_names[v] : "?";
}

bool job_transition_allowed(enum job_status from, enum job_status to)
{
    return from < JOB_STATUS__MAX && to < JOB_STATUS__MAX && transitions[from][to];
}

bool job_verb_allowed(enum job_verb verb, enum job_status s)
{
    return verb < JOB_VERB__MAX && s < JOB_STATUS__MAX && verbs[verb][s];
}

static int apply_verb(struct job *job, enum job_verb verb, struct error **errp)
{
    if (job_verb_allowed(verb, job->status)) {
        return 0;
    }
    error_setg(errp, "Job '%s' in state '%s' cannot accept command verb '%s'", job->id,
               job_status_name(job->status), job_verb_name(verb));
    return -EPERM;
}

static void emit(struct job *job, const char *name, json_object *data)
{
    if (job->list->emit) {
        job->list->emit(job->list->opaque, name, data);
    } else {
        json_object_put(data);
    }
}

static void transition(struct job *job, enum job_status to)
{
    json_object *d;

    if (job->status == to) {
        return;
    }
    /* (a table violation is a bug: it is not hidden, but not fatal either) */
    job->status = to;
    d = json_object_new_object();
    json_object_object_add(d, "status", json_object_new_string(job_status_name(to)));
    json_object_object_add(d, "id", json_object_new_string(job->id));
    emit(job, "JOB_STATUS_CHANGE", d);
}

/* type, device (the job id), len, offset, speed: the BLOCK_JOB_* payload */
static json_object *block_event_data(struct job *job)
{
    json_object *d = json_object_new_object();

    json_object_object_add(d, "type", json_object_new_string(job->drv->type));
    json_object_object_add(d, "device", json_object_new_string(job->id));
    json_object_object_add(d, "len", json_object_new_int64(
        (int64_t)__atomic_load_n(&job->progress_total, __ATOMIC_RELAXED)));
    json_object_object_add(d, "offset", json_object_new_int64(
        (int64_t)__atomic_load_n(&job->progress_current, __ATOMIC_RELAXED)));
    json_object_object_add(d, "speed", json_object_new_int64((int64_t)job_speed(job)));
    return d;
}

void job_list_init(struct job_list *jl, struct loop *loop,
                   void (*emit_fn)(void *opaque, const char *name, json_object *data),
                   void *opaque)
{
    memset(jl, 0, sizeof(*jl));
    jl->loop = loop;
    jl->emit = emit_fn;
    jl->opaque = opaque;
}

struct job *job_find(struct job_list *jl, const char *id)
{
    for (struct job *j = jl->jobs; j; j = j->next) {
        if (!strcmp(j->id, id)) {
            return j;
        }
    }
    return NULL;
}

struct job *job_find_device(struct job_list *jl, const char *device)
{
    for (struct job *j = jl->jobs; j; j = j->next) {
        if (j->device && !strcmp(j->device, device) && j->status != JOB_STATUS_CONCLUDED &&
            j->status != JOB_STATUS_NULL) {
            return j;
        }
    }
    return NULL;
}

/* QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_' */
static bool id_wellformed(const char *id)
{
    if (!isalpha((unsigned char)id[0])) {
        return false;
    }
    for (const char *p = id; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}

static void job_free_ex(struct job *job, bool driver_part);

struct job *job_create(struct job_list *jl, const struct job_driver *drv, const char *id,
                       const char *device, int64_t speed, bool auto_finalize,
                       bool auto_dismiss, void *opaque, struct error **errp)
{
    struct job *job, **pp;

    if (id && !id_wellformed(id)) {
        error_setg(errp, "Invalid job ID '%s'", id);
        return NULL;
    }
    if (!id) {
        id = device;
    }
    if (job_find(jl, id)) {
        error_setg(errp, "Job ID '%s' already in use", id);
        return NULL;
    }
    job = xzalloc(sizeof(*job));
    job->list = jl;
    job->drv = drv;
    job->id = xstrdup(id);
    job->device = device ? xstrdup(device) : NULL;
    job->opaque = opaque;
    job->auto_finalize = auto_finalize;
    job->auto_dismiss = auto_dismiss;
    job->speed = speed < 0 ? 0 : (uint64_t)speed;
    job->status = JOB_STATUS_UNDEFINED;
    pthread_mutex_init(&job->lock, NULL);
    pthread_cond_init(&job->cond, NULL);
    for (pp = &jl->jobs; *pp; pp = &(*pp)->next) {
    }
    *pp = job;
    transition(job, JOB_STATUS_CREATED);
    if (speed < 0) {
        /* as QEMU: the job exists for a moment, then goes */
        error_setg(errp, "Parameter 'speed' expects a non-negative value");
        transition(job, JOB_STATUS_NULL);
        job_free_ex(job, false);    /* @opaque stays the caller's */
        return NULL;
    }
    return job;
}

static void job_free_ex(struct job *job, bool driver_part)
{
    struct job **pp;

    for (pp = &job->list->jobs; *pp && *pp != job; pp = &(*pp)->next) {
    }
    if (*pp) {
        *pp = job->next;
    }
    if (driver_part && job->drv->free) {
        job->drv->free(job);
    }
    pthread_mutex_destroy(&job->lock);
    pthread_cond_destroy(&job->cond);
    free(job->error);
    free(job->run_error);
    free(job->device);
    free(job->id);
    free(job);
}

static void job_free(struct job *job)
{
    job_free_ex(job, true);
}

/* --- the end of a job (control thread) --- */

static void conclude(struct job *job)
{
    struct job_list *jl = job->list;

    if (job->drv->clean) {
        job->drv->clean(job);
    }
    if (job->ret == -ECANCELED) {
        emit(job, "BLOCK_JOB_CANCELLED", block_event_data(job));
    } else {
        json_object *d = block_event_data(job);
        if (job->ret < 0) {
            json_object_object_add(d, "error", json_object_new_string(
                job->error ? job->error : strerror(-job->ret)));
        }
        emit(job, "BLOCK_JOB_COMPLETED", d);
    }
    transition(job, JOB_STATUS_CONCLUDED);
    if (job->auto_dismiss) {
        transition(job, JOB_STATUS_NULL);
        job_free(job);
    }
    if (jl->changed) {
        jl->changed(jl->opaque);
    }
}

static void do_abort(struct job *job)
{
    transition(job, JOB_STATUS_ABORTING);
    if (job->drv->abort) {
        job->drv->abort(job);
    }
    conclude(job);
}

static void do_finalize(struct job *job)
{
    struct error *err = NULL;

    if (job->drv->prepare && job->drv->prepare(job, &err) < 0) {
        job->ret = -EIO;
        free(job->error);
        job->error = xstrdup(err ? err->msg : "the job could not finish");
        error_free(err);
        do_abort(job);
        return;
    }
    if (job->drv->commit) {
        job->drv->commit(job);
    }
    conclude(job);
}

static void on_finished(void *opaque)
{
    struct job *job = opaque;

    pthread_join(job->thread, NULL);
    job->thread_started = false;
    job->finished = true;
    job->ret = job->run_ret;
    if (job->run_error) {
        free(job->error);
        job->error = job->run_error;
        job->run_error = NULL;
    }
    pthread_mutex_lock(&job->lock);
    if (job->ret == 0 && job->cancelled && job->force_cancel) {
        job->ret = -ECANCELED;
    }
    job->busy = false;
    pthread_mutex_unlock(&job->lock);
    if (job->ret < 0) {
        do_abort(job);
        return;
    }
    transition(job, JOB_STATUS_WAITING);
    transition(job, JOB_STATUS_PENDING);
    if (!job->auto_finalize) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "type", json_object_new_string(job->drv->type));
        json_object_object_add(d, "id", json_object_new_string(job->id));
        emit(job, "BLOCK_JOB_PENDING", d);
        return;
    }
    do_finalize(job);
}

void job_thread_background(void)
{
    id_t tid = (id_t)syscall(SYS_gettid);
    int prio;

    bdev_thread_background();
    errno = 0;
    prio = getpriority(PRIO_PROCESS, tid);
    if (errno == 0 && prio < 19) {
        /* (on Linux a thread id names one thread here) */
        (void)setpriority(PRIO_PROCESS, tid, MIN(prio + 10, 19));
    }
}

static void *job_thread(void *opaque)
{
    struct job *job = opaque;
    struct error *err = NULL;
    int ret;

    job_thread_background();
    ret = job->drv->run(job, &err);

    if (ret < 0 && ret != -ECANCELED) {
        job->run_error = xstrdup(err ? err->msg : strerror(-ret));
    }
    error_free(err);
    job->run_ret = ret;     /* read by on_finished after the join */
    pthread_mutex_lock(&job->lock);
    job->worker_done = true;
    pthread_cond_broadcast(&job->cond);
    pthread_mutex_unlock(&job->lock);
    loop_call(job->list->loop, on_finished, job);
    return NULL;
}

/* status changes the worker asks for, in the order it asks */
struct status_req {
    struct job *job;
    enum job_status from, to;
};

static void on_status(void *opaque)
{
    struct status_req *r = opaque;

    if (r->job->status == r->from) {
        transition(r->job, r->to);
        if (r->to == JOB_STATUS_READY && r->from == JOB_STATUS_RUNNING) {
            emit(r->job, "BLOCK_JOB_READY", block_event_data(r->job));
        }
    }
    free(r);
}

static void request_status(struct job *job, enum job_status from, enum job_status to)
{
    struct status_req *r = xmalloc(sizeof(*r));

    *r = (struct status_req){ job, from, to };
    loop_call(job->list->loop, on_status, r);
}

void job_start(struct job *job)
{
    transition(job, JOB_STATUS_RUNNING);
    job->busy = true;
    if (pthread_create(&job->thread, NULL, job_thread, job) != 0) {
        job->ret = -EAGAIN;
        job->error = xstrdup("cannot start the job's thread");
        job->finished = true;
        do_abort(job);
        return;
    }
    job->thread_started = true;
}

/* --- the worker's side --- */

bool job_is_cancelled(struct job *job)
{
    return __atomic_load_n(&job->cancelled, __ATOMIC_ACQUIRE);
}

bool job_pause_point(struct job *job)
{
    bool c;

    pthread_mutex_lock(&job->lock);
    if (job->pause_count > 0 && !job->cancelled) {
        bool ready = job->ready_sent;
        job->paused = true;
        job->busy = false;
        request_status(job, ready ? JOB_STATUS_READY : JOB_STATUS_RUNNING,
                       ready ? JOB_STATUS_STANDBY : JOB_STATUS_PAUSED);
        while (job->pause_count > 0 && !job->cancelled) {
            pthread_cond_wait(&job->cond, &job->lock);
        }
        job->paused = false;
        job->busy = true;
        request_status(job, ready ? JOB_STATUS_STANDBY : JOB_STATUS_PAUSED,
                       ready ? JOB_STATUS_READY : JOB_STATUS_RUNNING);
    }
    while (job->quiesce_count > 0 && !job->cancelled) {
        /* the control thread works on the job's state meanwhile: no event */
        job->quiesced = true;
        pthread_cond_broadcast(&job->cond);
        pthread_cond_wait(&job->cond, &job->lock);
    }
    job->quiesced = false;
    c = job->cancelled;
    pthread_mutex_unlock(&job->lock);
    return c;
}

bool job_should_yield(struct job *job)
{
    bool r;

    pthread_mutex_lock(&job->lock);
    r = job->cancelled || job->pause_count > 0 || job->quiesce_count > 0;
    pthread_mutex_unlock(&job->lock);
    return r;
}

void job_sleep_ns(struct job *job, uint64_t ns)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec += (long)(ns % 1000000000u);
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&job->lock);
    job->busy = false;
    if (!job->cancelled && !job->pause_count && !job->quiesce_count) {
        pthread_cond_timedwait(&job->cond, &job->lock, &ts);
    }
    job->busy = true;
    pthread_mutex_unlock(&job->lock);
}

void job_set_ready(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    if (!job->ready_sent) {
        job->ready_sent = true;
        request_status(job, JOB_STATUS_RUNNING, JOB_STATUS_READY);
    }
    pthread_mutex_unlock(&job->lock);
}

void job_unset_ready(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    if (job->ready_sent) {
        job->ready_sent = false;
        request_status(job, JOB_STATUS_READY, JOB_STATUS_RUNNING);
    }
    pthread_mutex_unlock(&job->lock);
}

struct job_ev {
    struct job *job;
    char *name;
    json_object *data;
};

static void on_job_event(void *opaque)
{
    struct job_ev *e = opaque;

    emit(e->job, e->name, e->data);
    free(e->name);
    free(e);
}

void job_event(struct job *job, const char *name, json_object *data)
{
    struct job_ev *e = xmalloc(sizeof(*e));

    *e = (struct job_ev){ job, xstrdup(name), data };
    loop_call(job->list->loop, on_job_event, e);
}

void job_progress_set_total(struct job *job, uint64_t total)
{
    __atomic_store_n(&job->progress_total, total, __ATOMIC_RELAXED);
}

void job_progress_add(struct job *job, uint64_t done)
{
    __atomic_add_fetch(&job->progress_current, done, __ATOMIC_RELAXED);
}

void job_progress_add_total(struct job *job, uint64_t more)
{
    __atomic_add_fetch(&job->progress_total, more, __ATOMIC_RELAXED);
}

void job_progress_set_remaining(struct job *job, uint64_t remaining)
{
    __atomic_store_n(&job->progress_total, __atomic_load_n(&job->progress_current,
                                                           __ATOMIC_RELAXED) + remaining,
                     __ATOMIC_RELAXED);
}

bool job_cancel_forced(struct job *job)
{
    bool f;

    pthread_mutex_lock(&job->lock);
    f = job->force_cancel || !job->ready_sent;
    pthread_mutex_unlock(&job->lock);
    return f;
}

void job_report_error(struct job *job, bool is_read, enum job_on_error action, int err)
{
    json_object *d = json_object_new_object();

    json_object_object_add(d, "device", json_object_new_string(job->id));
    json_object_object_add(d, "operation", json_object_new_string(is_read ? "read" : "write"));
    json_object_object_add(d, "action", json_object_new_string(
        action == JOB_ERR_IGNORE ? "ignore" : action == JOB_ERR_STOP ? "stop" : "report"));
    job_event(job, "BLOCK_JOB_ERROR", d);
    if (action == JOB_ERR_STOP) {
        pthread_mutex_lock(&job->lock);
        job->io_status = err == ENOSPC ? ENOSPC : EIO;
        if (!job->user_paused) {
            job->user_paused = true;
            job->pause_count++;
        }
        pthread_mutex_unlock(&job->lock);
    }
}

uint64_t job_speed(struct job *job)
{
    return __atomic_load_n(&job->speed, __ATOMIC_RELAXED);
}

/* --- verbs (control thread) --- */

int job_user_pause(struct job *job, struct error **errp)
{
    int ret = apply_verb(job, JOB_VERB_PAUSE, errp);

    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&job->lock);
    if (job->user_paused) {
        pthread_mutex_unlock(&job->lock);
        error_setg(errp, "Job is already paused");
        return -EBUSY;
    }
    job->user_paused = true;
    job->pause_count++;
    pthread_mutex_unlock(&job->lock);
    return 0;
}

int job_user_resume(struct job *job, struct error **errp)
{
    int ret;

    if (!job->user_paused) {
        error_setg(errp, "Can't resume a job that was not paused");
        return -EINVAL;
    }
    ret = apply_verb(job, JOB_VERB_RESUME, errp);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&job->lock);
    job->user_paused = false;
    job->pause_count--;
    job->io_status = 0;
    pthread_cond_broadcast(&job->cond);
    pthread_mutex_unlock(&job->lock);
    return 0;
}

int job_set_speed(struct job *job, int64_t speed, struct error **errp)
{
    int ret = apply_verb(job, JOB_VERB_SET_SPEED, errp);

    if (ret < 0) {
        return ret;
    }
    if (speed < 0) {
        error_setg(errp, "Parameter 'speed' expects a non-negative value");
        return -EINVAL;
    }
    __atomic_store_n(&job->speed, (uint64_t)speed, __ATOMIC_RELAXED);
    pthread_mutex_lock(&job->lock);
    pthread_cond_broadcast(&job->cond);     /* a sleeping rate limit looks again */
    pthread_mutex_unlock(&job->lock);
    return 0;
}

int job_user_cancel(struct job *job, bool force, struct error **errp)
{
    int ret = apply_verb(job, JOB_VERB_CANCEL, errp);

    if (ret < 0) {
        return ret;
    }
    /* a job not ready has nothing to finish early: cancelling it is forced */
    if (job->status != JOB_STATUS_READY && job->status != JOB_STATUS_STANDBY) {
        force = true;
    }
    pthread_mutex_lock(&job->lock);
    if (job->user_paused) {
        job->user_paused = false;
        job->pause_count--;
    }
    job->force_cancel |= force;
    __atomic_store_n(&job->cancelled, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&job->cond);
    pthread_mutex_unlock(&job->lock);
    if (job->finished && (job->status == JOB_STATUS_PENDING ||
                          job->status == JOB_STATUS_WAITING)) {
        /* done but not finalized: nothing is changed yet */
        job->ret = -ECANCELED;
        do_abort(job);
    }
    return 0;
}

int job_can_complete(struct job *job, struct error **errp)
{
    int ret = apply_verb(job, JOB_VERB_COMPLETE, errp);

    if (ret < 0) {
        return ret;
    }
    if (job->cancelled || !job->drv->complete) {
        error_setg(errp, "The active block job '%s' cannot be completed", job->id);
        return -EINVAL;
    }
    return 0;
}

int job_complete(struct job *job, struct error **errp)
{
    int ret = job_can_complete(job, errp);

    return ret < 0 ? ret : job->drv->complete(job, errp);
}

bool job_quiesce(struct job *job)
{
    bool parked;

    pthread_mutex_lock(&job->lock);
    job->quiesce_count++;
    pthread_cond_broadcast(&job->cond);
    while (!job->quiesced && !job->paused && !job->worker_done) {
        pthread_cond_wait(&job->cond, &job->lock);
    }
    parked = !job->worker_done;
    pthread_mutex_unlock(&job->lock);
    return parked;
}

void job_unquiesce(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    job->quiesce_count--;
    pthread_cond_broadcast(&job->cond);
    pthread_mutex_unlock(&job->lock);
}

bool job_is_ready(struct job *job)
{
    bool r;

    pthread_mutex_lock(&job->lock);
    r = job->ready_sent && !job->cancelled && !job->worker_done;
    pthread_mutex_unlock(&job->lock);
    return r;
}

int job_finalize(struct job *job, struct error **errp)
{
    int ret = apply_verb(job, JOB_VERB_FINALIZE, errp);

    if (ret < 0) {
        return ret;
    }
    do_finalize(job);
    return 0;
}

int job_dismiss(struct job *job, struct error **errp)
{
    int ret = apply_verb(job, JOB_VERB_DISMISS, errp);

    if (ret < 0) {
        return ret;
    }
    transition(job, JOB_STATUS_NULL);
    job_free(job);
    return 0;
}

void job_list_cancel_all(struct job_list *jl)
{
    struct job *j = jl->jobs;

    while (j) {
        struct job *next = j->next;     /* an abort may free @j */
        if (j->status != JOB_STATUS_CONCLUDED && j->status != JOB_STATUS_NULL) {
            if (j->finished) {
                if (j->status == JOB_STATUS_PENDING || j->status == JOB_STATUS_WAITING) {
                    j->ret = -ECANCELED;
                    do_abort(j);
                }
            } else {
                pthread_mutex_lock(&j->lock);
                j->force_cancel = true;
                if (j->user_paused) {
                    j->user_paused = false;
                    j->pause_count--;
                }
                __atomic_store_n(&j->cancelled, true, __ATOMIC_RELEASE);
                pthread_cond_broadcast(&j->cond);
                pthread_mutex_unlock(&j->lock);
            }
        }
        j = next;
    }
}

int job_list_active(struct job_list *jl)
{
    int n = 0;

    for (struct job *j = jl->jobs; j; j = j->next) {
        n += j->status != JOB_STATUS_CONCLUDED && j->status != JOB_STATUS_NULL;
    }
    return n;
}

/* --- queries --- */

json_object *job_block_info(struct job *job)
{
    json_object *o = block_event_data(job);
    bool paused;
    int io;

    pthread_mutex_lock(&job->lock);
    paused = job->pause_count > 0;
    io = job->io_status;
    json_object_object_add(o, "busy", json_object_new_boolean(job->busy));
    pthread_mutex_unlock(&job->lock);
    json_object_object_add(o, "paused", json_object_new_boolean(paused));
    json_object_object_add(o, "io-status", json_object_new_string(
        io == ENOSPC ? "nospace" : io ? "failed" : "ok"));
    json_object_object_add(o, "ready", json_object_new_boolean(
        job->status == JOB_STATUS_READY || job->status == JOB_STATUS_STANDBY));
    json_object_object_add(o, "status", json_object_new_string(job_status_name(job->status)));
    json_object_object_add(o, "auto-finalize", json_object_new_boolean(job->auto_finalize));
    json_object_object_add(o, "auto-dismiss", json_object_new_boolean(job->auto_dismiss));
    if (job->ret < 0 && job->ret != -ECANCELED) {
        json_object_object_add(o, "error", json_object_new_string(
            job->error ? job->error : strerror(-job->ret)));
    }
    if (job->drv->query) {
        job->drv->query(job, o);
    }
    return o;
}

json_object *job_info(struct job *job)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(job->id));
    json_object_object_add(o, "type", json_object_new_string(job->drv->type));
    json_object_object_add(o, "status", json_object_new_string(job_status_name(job->status)));
    json_object_object_add(o, "current-progress", json_object_new_int64(
        (int64_t)__atomic_load_n(&job->progress_current, __ATOMIC_RELAXED)));
    json_object_object_add(o, "total-progress", json_object_new_int64(
        (int64_t)__atomic_load_n(&job->progress_total, __ATOMIC_RELAXED)));
    if (job->ret < 0 && job->finished) {
        json_object_object_add(o, "error", json_object_new_string(
            job->ret == -ECANCELED ? "Operation canceled"
                                   : job->error ? job->error : strerror(-job->ret)));
    }
    return o;
}
