/*
 * blockctl - background jobs with QEMU's job model (stream, commit, mirror)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A job lives in a job list owned by one control thread (the agent's main
 * loop): every change of status, every event and every verb (pause,
 * resume, cancel, complete, finalize, dismiss, set-speed) happens there.
 * The work itself runs in a thread of its own (the driver's run()), which
 * calls job_pause_point() between requests: there it stops while the job
 * is paused and returns true once the job is cancelled.  When run()
 * returns, the control thread finishes the job: prepare (the graph
 * change: may still fail), then commit or abort, clean, and the events.
 *
 * States and allowed transitions are QEMU's (qapi JobStatus): created,
 * running, paused, ready, standby, waiting, pending, aborting, concluded,
 * null.  Events (through the list's emit callback): JOB_STATUS_CHANGE,
 * BLOCK_JOB_READY, BLOCK_JOB_PENDING, BLOCK_JOB_COMPLETED,
 * BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR, as QEMU 7.2 sends them.
 */
#ifndef BLOCKCTL_LIB_JOB_H
#define BLOCKCTL_LIB_JOB_H

#include "lib/compiler.h"
#include "lib/error.h"

#include <json-c/json.h>
#include <pthread.h>

struct loop;

enum job_status {
    JOB_STATUS_UNDEFINED,
    JOB_STATUS_CREATED,
    JOB_STATUS_RUNNING,
    JOB_STATUS_PAUSED,
    JOB_STATUS_READY,
    JOB_STATUS_STANDBY,
    JOB_STATUS_WAITING,
    JOB_STATUS_PENDING,
    JOB_STATUS_ABORTING,
    JOB_STATUS_CONCLUDED,
    JOB_STATUS_NULL,
    JOB_STATUS__MAX,
};

enum job_verb {
    JOB_VERB_CANCEL,
    JOB_VERB_PAUSE,
    JOB_VERB_RESUME,
    JOB_VERB_SET_SPEED,
    JOB_VERB_COMPLETE,
    JOB_VERB_FINALIZE,
    JOB_VERB_DISMISS,
    JOB_VERB__MAX,
};

const char *job_status_name(enum job_status s);
const char *job_verb_name(enum job_verb v);
/* QEMU's tables: may a job go from @from to @to; may @verb act in @s? */
bool job_transition_allowed(enum job_status from, enum job_status to);
bool job_verb_allowed(enum job_verb verb, enum job_status s);

struct job;

struct job_driver {
    const char *type;          /* QAPI JobType: "stream", "commit", "mirror" */
    /* Worker thread: the work.  0, or -errno with *errp set (-ECANCELED
     * when it stopped because the job was cancelled). */
    int (*run)(struct job *job, struct error **errp);
    /* Control thread, job ready: block-job-complete (may refuse). */
    int (*complete)(struct job *job, struct error **errp);
    /* Control thread, after run() succeeded: the graph change, which may
     * still fail (then abort() follows instead of commit()). */
    int (*prepare)(struct job *job, struct error **errp);
    void (*commit)(struct job *job);
    void (*abort)(struct job *job);
    /* Control thread, last: release what the job holds (always called). */
    void (*clean)(struct job *job);
    /* Control thread: the job goes; free the driver's part. */
    void (*free)(struct job *job);
    /* Control thread, for query-block-jobs: extra fields of the entry. */
    void (*query)(struct job *job, json_object *info);
};

/* on-source-error / on-target-error (BlockdevOnError) */
enum job_on_error {
    JOB_ERR_REPORT,
    JOB_ERR_IGNORE,
    JOB_ERR_ENOSPC,
    JOB_ERR_STOP,
    JOB_ERR_AUTO,
};

struct job_list {
    struct loop *loop;
    struct job *jobs;
    /* Control thread: send a QMP event (takes over @data). */
    void (*emit)(void *opaque, const char *name, json_object *data);
    void *opaque;
    /* Control thread: a job ended (after its last event), e.g. to save state. */
    void (*changed)(void *opaque);
};

struct job {
    struct job_list *list;
    const struct job_driver *drv;
    char *id;
    char *device;              /* the disk (BLOCK_JOB_* events' "device") */
    void *opaque;              /* the driver's */
    bool auto_finalize, auto_dismiss;

    /* the control thread's */
    enum job_status status;
    int ret;                   /* 0, or -errno once failed */
    char *error;               /* the failure's message (query, events) */
    bool finished;             /* run() returned */
    bool ready_sent;
    struct job *next;

    /* shared with the worker; guarded by lock */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned pause_count;      /* user pauses (block-job-pause) */
    bool paused;               /* the worker is stopped at a pause point */
    bool cancelled;
    bool force_cancel;
    bool busy;
    bool user_paused;
    unsigned quiesce_count;    /* job_quiesce(): the worker parks, no event */
    bool quiesced;             /* the worker is parked for that */
    bool worker_done;          /* run() returned */

    uint64_t progress_current; /* atomics */
    uint64_t progress_total;
    uint64_t speed;            /* bytes per second, 0: unlimited (atomic) */
    int io_status;             /* 0 ok, else the BlockDeviceIoStatus "failed"/"nospace" */

    pthread_t thread;
    bool thread_started;
    int run_ret;               /* the worker's result, read after the join */
    char *run_error;
};

void job_list_init(struct job_list *jl, struct loop *loop,
                   void (*emit)(void *opaque, const char *name, json_object *data),
                   void *opaque);
/*
 * Shutdown: cancel every job that has not concluded (force); one that
 * waits to be finalized is aborted at once, the others end through the
 * loop as usual.
 */
void job_list_cancel_all(struct job_list *jl);
/* How many jobs have not concluded yet. */
int job_list_active(struct job_list *jl);
struct job *job_find(struct job_list *jl, const char *id);
/* The job working on disk @device (one at most), or NULL. */
struct job *job_find_device(struct job_list *jl, const char *device);

/*
 * Create a job (status created) with a unique @id (NULL: @device), in the
 * list; refused if the id is malformed or in use, or @speed is negative.  Then job_start() runs it.
 */
struct job *job_create(struct job_list *jl, const struct job_driver *drv, const char *id,
                       const char *device, int64_t speed, bool auto_finalize,
                       bool auto_dismiss, void *opaque, struct error **errp);
void job_start(struct job *job);

/* The verbs, control thread: 0 or -errno with QEMU's message. */
int job_user_pause(struct job *job, struct error **errp);
int job_user_resume(struct job *job, struct error **errp);
int job_set_speed(struct job *job, int64_t speed, struct error **errp);
int job_user_cancel(struct job *job, bool force, struct error **errp);
int job_complete(struct job *job, struct error **errp);
/* Would block-job-complete be accepted now?  0, or -errno with QEMU's message. */
int job_can_complete(struct job *job, struct error **errp);
/*
 * Control thread: park the worker at its next pause point without a
 * status change (a grouped pivot works on the job's state meanwhile).
 * False if the worker has ended instead.  Undo with job_unquiesce().
 */
bool job_quiesce(struct job *job);
void job_unquiesce(struct job *job);
/* Any thread: ready, and neither cancelled nor ended. */
bool job_is_ready(struct job *job);
int job_finalize(struct job *job, struct error **errp);
int job_dismiss(struct job *job, struct error **errp);

/* Worker: stop here while paused; true once the job is cancelled. */
bool job_pause_point(struct job *job);
/* Worker: should it reach a pause point soon (cancel, pause, quiesce)? */
bool job_should_yield(struct job *job);
/*
 * Make the calling thread a background one (nice 10 above the process):
 * a job's copy threads then give way to the guest's requests, which wake
 * up and run first when both want a CPU (best effort); and its requests
 * do not count as the guest's (bdev_foreground_within).
 */
void job_thread_background(void);
/* Worker: sleep up to @ns nanoseconds (shorter if cancelled or paused). */
void job_sleep_ns(struct job *job, uint64_t ns);
bool job_is_cancelled(struct job *job);
/* Worker: the job is ready (ready for block-job-complete), or no more. */
void job_set_ready(struct job *job);
/* Worker: no longer ready (the target fell behind): back to running. */
void job_unset_ready(struct job *job);
/* Any thread: send event @name (@data taken over) from the control thread. */
void job_event(struct job *job, const char *name, json_object *data);
/* Worker: progress. */
void job_progress_set_total(struct job *job, uint64_t total);
void job_progress_add(struct job *job, uint64_t done);
void job_progress_add_total(struct job *job, uint64_t more);
/* The total becomes what is done plus @remaining (QEMU's len = offset + what is left). */
void job_progress_set_remaining(struct job *job, uint64_t remaining);
uint64_t job_speed(struct job *job);
/* Worker: was the cancel forced (or the job not ready when cancelled)? */
bool job_cancel_forced(struct job *job);
/*
 * Worker: an I/O error (@is_read, -@err's errno) met under policy
 * @action (JOB_ERR_IGNORE, _REPORT or _STOP): BLOCK_JOB_ERROR is sent;
 * with _STOP the job pauses (io-status "failed" or "nospace") until
 * resumed, at its next pause point.
 */
void job_report_error(struct job *job, bool is_read, enum job_on_error action, int err);

/* query-block-jobs / query-jobs entries (new objects). */
json_object *job_block_info(struct job *job);
json_object *job_info(struct job *job);

#endif
