/*
 * blockctl - the command line's side of an agent's jobs: start one (stream,
 * mirror), wait for it with progress, act at READY (pivot or finish), and
 * cancel it on Ctrl-C
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/remote.h"
#include "lib/size.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd/cmd.h"

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;

    return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

json_object *agent_job_find(struct qmp_client *c, const char *id, struct error **errp)
{
    json_object *jobs = NULL, *found = NULL;

    if (qmp_client_execute(c, "query-block-jobs", NULL, &jobs, errp) < 0) {
        return NULL;
    }
    for (size_t i = 0; i < json_object_array_length(jobs); i++) {
        json_object *j = json_object_array_get_idx(jobs, i);
        if (jstr(j, "device") && !strcmp(jstr(j, "device"), id)) {
            found = json_object_get(j);
            break;
        }
    }
    json_object_put(jobs);
    return found;
}

/* A verb on job @id: block-job-VERB {device: id, ...}; 0 or 1 with a message. */
int agent_job_verb(struct qmp_client *c, const char *verb, const char *id, json_object *extra)
{
    struct error *err = NULL;
    json_object *args = extra ? extra : json_object_new_object();
    char *cmd = xasprintf("block-job-%s", verb);
    int r;

    json_object_object_add(args, !strcmp(verb, "dismiss") || !strcmp(verb, "finalize") ? "id"
                                                                                       : "device",
                           json_object_new_string(id));
    r = qmp_client_execute(c, cmd, args, NULL, &err);
    free(cmd);
    if (r < 0) {
        error_report("job '%s': %s: %s", id, verb, err->msg);
        error_free(err);
        return 1;
    }
    return 0;
}

static void show_progress(const struct job_wait *w, json_object *j, double t0)
{
    int64_t len = jint(j, "len"), off = jint(j, "offset");
    double pct = len ? 100.0 * (double)off / (double)len : 0;

    if (w->progress_json) {
        printf("{\"done\": %" PRId64 ", \"total\": %" PRId64 ", \"status\": \"%s\"}\n", off, len,
               jstr(j, "status") ? jstr(j, "status") : "");
        fflush(stdout);
    } else if (w->progress) {
        double el = now_s() - t0, rate = el > 0 ? (double)off / el : 0;
        char r[32] = "-", eta[32] = "-";
        if (rate > 0) {
            size_human((uint64_t)rate, r, sizeof(r));
            if (len > off) {
                snprintf(eta, sizeof(eta), "%.0fs", (double)(len - off) / rate);
            }
        }
        fprintf(stderr, "\r%s %s: %6.2f%% %s/s ETA %s   ", w->id,
                jstr(j, "status") ? jstr(j, "status") : "", pct, r, eta);
    }
}

static void end_progress(const struct job_wait *w)
{
    if (w->progress && !w->progress_json) {
        fprintf(stderr, "\n");
    }
}

/* The job's status ("ready"...), from a query; NULL if it is gone. */
static int act_at_ready(struct qmp_client *c, const struct job_wait *w, bool *acted)
{
    if (*acted || w->at_ready == AT_READY_WAIT) {
        return 0;
    }
    *acted = true;
    return agent_job_verb(c, w->at_ready == AT_READY_PIVOT ? "complete" : "cancel", w->id, NULL);
}

int agent_job_wait(struct qmp_client *c, const struct job_wait *w)
{
    double t0 = now_s(), last_poll = 0, gone_at = 0;
    bool acted = false, seen = false;
    struct error *err = NULL;

    for (;;) {
        json_object *ev, *d;
        const char *name, *dev;

        if (cmd_cancel) {
            end_progress(w);
            if (w->cancel_on_signal) {
                json_object *a = json_object_new_object();
                json_object_object_add(a, "force", json_object_new_boolean(true));
                agent_job_verb(c, "cancel", w->id, a);
                error_report("interrupted: job '%s' was cancelled", w->id);
            } else {
                error_report("interrupted: job '%s' goes on", w->id);
            }
            return cancel_exit_status();
        }
        if (w->timeout_s > 0 && now_s() - t0 > w->timeout_s) {
            end_progress(w);
            error_report("job '%s': not ready after %d s", w->id, w->timeout_s);
            return 124;
        }
        if (now_s() - last_poll >= 0.5) {
            json_object *j = agent_job_find(c, w->id, &err);
            last_poll = now_s();
            if (err) {
                end_progress(w);
                report(err);
                return 1;
            }
            if (!j) {
                /* gone: its last events may still be queued; else it never was */
                if (!seen && gone_at == 0) {
                    gone_at = now_s();
                } else if (!seen && now_s() - gone_at > 1.0) {
                    end_progress(w);
                    error_report("no job '%s' on the agent", w->id);
                    return 1;
                }
            } else {
                const char *st = jstr(j, "status");
                seen = true;
                show_progress(w, j, t0);
                if (st && !strcmp(st, "ready")) {
                    if (w->at_ready == AT_READY_WAIT) {
                        json_object_put(j);
                        end_progress(w);
                        return 0;
                    }
                    if (act_at_ready(c, w, &acted)) {
                        json_object_put(j);
                        return 1;
                    }
                }
                if (st && !strcmp(st, "concluded")) {
                    /* auto-dismiss off: it ended before we listened */
                    const char *e = jstr(j, "error");
                    end_progress(w);
                    if (e) {
                        error_report("job '%s' failed: %s", w->id, e);
                    }
                    json_object_put(j);
                    return e ? 1 : 0;
                }
                json_object_put(j);
            }
        }
        ev = qmp_client_event(c, 200);
        if (!ev) {
            continue;
        }
        name = jstr(ev, "event");
        json_object_object_get_ex(ev, "data", &d);
        dev = jstr(d, "device") ? jstr(d, "device") : jstr(d, "id");
        if (!name || !dev || strcmp(dev, w->id)) {
            json_object_put(ev);
            continue;
        }
        seen = true;
        if (!strcmp(name, "BLOCK_JOB_READY")) {
            if (w->at_ready == AT_READY_WAIT) {
                json_object_put(ev);
                end_progress(w);
                return 0;
            }
            if (act_at_ready(c, w, &acted)) {
                json_object_put(ev);
                return 1;
            }
        } else if (!strcmp(name, "BLOCK_JOB_COMPLETED")) {
            const char *e = jstr(d, "error");
            if (!e) {
                show_progress(w, d, t0);
            }
            end_progress(w);
            if (e) {
                error_report("job '%s' failed: %s", w->id, e);
            }
            json_object_put(ev);
            return e ? 1 : 0;
        } else if (!strcmp(name, "BLOCK_JOB_CANCELLED")) {
            end_progress(w);
            error_report("job '%s' was cancelled", w->id);
            json_object_put(ev);
            return 2;
        } else if (!strcmp(name, "BLOCK_JOB_ERROR")) {
            end_progress(w);
            error_report("job '%s': %s error (%s)", w->id, jstr(d, "operation"),
                         jstr(d, "action"));
        }
        json_object_put(ev);
    }
}

int agent_job_start(struct qmp_client *c, const char *cmd, json_object *args,
                    const struct job_wait *w)
{
    struct error *err = NULL;

    if (qmp_client_execute(c, cmd, args, NULL, &err) < 0) {
        report(err);
        return 1;
    }
    if (!w->wait) {
        printf("Job '%s' started\n", w->id);
        return 0;
    }
    return agent_job_wait(c, w);
}

/* agent_jobs_wait_end: what became of one job (failed, cancelled: the exit status) */
enum { END_WAITING = -1, END_DONE = 0, END_FAILED = 1, END_CANCELLED = 2, END_LEFT };

/* Job @id's end from its BLOCK_JOB_* event @name (data @d), or END_WAITING. */
static int end_of_event(const char *id, const char *name, json_object *d, enum jobs_end how)
{
    const char *e = jstr(d, "error");

    if (!strcmp(name, "BLOCK_JOB_COMPLETED")) {
        if (e) {
            error_report("job '%s' failed: %s", id, e);
        }
        return e ? END_FAILED : END_DONE;
    }
    if (!strcmp(name, "BLOCK_JOB_CANCELLED")) {
        if (how == JOBS_END_CANCEL) {
            return END_DONE;
        }
        error_report("job '%s' was cancelled", id);
        return END_CANCELLED;
    }
    return END_WAITING;
}

/* Job @id's end from a query (no event for a while), or END_WAITING. */
static int end_of_query(struct qmp_client *c, const char *id, double *gone)
{
    struct error *err = NULL;
    json_object *j = agent_job_find(c, id, &err);
    const char *st = jstr(j, "status");
    int r = END_WAITING;

    if (err) {
        report(err);
        return END_FAILED;
    }
    if (j) {
        *gone = 0;
        if (st && !strcmp(st, "concluded") && jstr(j, "error")) {
            error_report("job '%s' failed: %s", id, jstr(j, "error"));
            r = END_FAILED;
        } else if (st && (!strcmp(st, "concluded") || !strcmp(st, "pending"))) {
            r = END_LEFT;       /* for job-dismiss or job-finalize */
        }
        json_object_put(j);
    } else if (*gone == 0) {
        *gone = now_s();
    } else if (now_s() - *gone > 1.0) {
        /* gone with no event: it was never ours */
        error_report("no job '%s' on the agent", id);
        r = END_FAILED;
    }
    return r;
}

int agent_jobs_wait_end(struct qmp_client *c, char *const *ids, int n, enum jobs_end how)
{
    int *res = xcalloc((size_t)n, sizeof(*res)), left = n, ret = 0;
    double *gone = xcalloc((size_t)n, sizeof(*gone)), last_poll = now_s();

    for (int i = 0; i < n; i++) {
        res[i] = END_WAITING;
    }
    while (left > 0 && !cmd_cancel) {
        json_object *ev = qmp_client_event(c, 200), *d = NULL;
        const char *name = jstr(ev, "event"), *dev;

        if (ev) {
            json_object_object_get_ex(ev, "data", &d);
            dev = jstr(d, "device");
            for (int i = 0; i < n && name && dev; i++) {
                if (res[i] == END_WAITING && !strcmp(dev, ids[i])) {
                    res[i] = end_of_event(ids[i], name, d, how);
                    left -= res[i] != END_WAITING;
                }
            }
            json_object_put(ev);
            continue;
        }
        if (now_s() - last_poll < 0.5) {
            continue;
        }
        last_poll = now_s();
        for (int i = 0; i < n; i++) {
            if (res[i] == END_WAITING) {
                res[i] = end_of_query(c, ids[i], &gone[i]);
                left -= res[i] != END_WAITING;
            }
        }
    }
    if (left > 0) {
        error_report(how == JOBS_END_CANCEL ? "interrupted: the cancel goes on"
                                            : "interrupted: the jobs go on");
        ret = cancel_exit_status();
    }
    for (int i = 0; i < n && !ret; i++) {
        if (res[i] == END_FAILED || res[i] == END_CANCELLED) {
            ret = res[i];
        }
    }
    for (int i = 0; i < n && how == JOBS_END_PIVOT; i++) {
        if (res[i] == END_DONE) {
            printf("'%s' pivoted\n", ids[i]);
        }
    }
    free(res);
    free(gone);
    return ret;
}
