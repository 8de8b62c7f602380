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

int agent_job_wait_gone(struct qmp_client *c, const char *id, bool completing)
{
    struct error *err = NULL;
    int ret = 0;

    for (;;) {
        json_object *j = agent_job_find(c, id, &err), *ev, *d = NULL;
        const char *st, *name, *dev;
        bool ended;

        if (err) {
            report(err);
            return 1;
        }
        st = jstr(j, "status");
        ended = !j || (st && (!strcmp(st, "concluded") || !strcmp(st, "pending")));
        if (j && st && !strcmp(st, "concluded") && jstr(j, "error") && completing && !ret) {
            error_report("job '%s' failed: %s", id, jstr(j, "error"));
            ret = 1;
        }
        json_object_put(j);
        if (ended) {
            return ret;
        }
        if (cmd_cancel) {
            error_report("interrupted: job '%s' is being %s", id,
                         completing ? "completed" : "cancelled");
            return cancel_exit_status();
        }
        /* the events pace the polls; a completion's error is only in its event */
        ev = qmp_client_event(c, 50);
        name = jstr(ev, "event");
        if (ev) {
            json_object_object_get_ex(ev, "data", &d);
        }
        dev = jstr(d, "device");
        if (completing && name && dev && !strcmp(dev, id) && !ret) {
            if (!strcmp(name, "BLOCK_JOB_COMPLETED") && jstr(d, "error")) {
                error_report("job '%s' failed: %s", id, jstr(d, "error"));
                ret = 1;
            } else if (!strcmp(name, "BLOCK_JOB_CANCELLED")) {
                error_report("job '%s' was cancelled", id);
                ret = 2;
            }
        }
        json_object_put(ev);
    }
}

int agent_jobs_wait_end(struct qmp_client *c, char *const *ids, int n)
{
    int *res = xcalloc((size_t)n, sizeof(*res)), left = n, ret = 0;
    double *gone = xcalloc((size_t)n, sizeof(*gone)), last_poll = now_s();
    struct error *err = NULL;

    for (int i = 0; i < n; i++) {
        res[i] = -1;
    }
    while (left > 0) {
        json_object *ev = qmp_client_event(c, 200), *d = NULL;
        const char *name, *dev;

        if (cmd_cancel) {
            error_report("interrupted: the jobs go on");
            ret = cancel_exit_status();
            break;
        }
        if (ev) {
            name = jstr(ev, "event");
            json_object_object_get_ex(ev, "data", &d);
            dev = jstr(d, "device");
            for (int i = 0; i < n && name && dev; i++) {
                if (res[i] >= 0 || strcmp(dev, ids[i])) {
                    continue;
                }
                if (!strcmp(name, "BLOCK_JOB_COMPLETED")) {
                    const char *e = jstr(d, "error");
                    if (e) {
                        error_report("job '%s' failed: %s", ids[i], e);
                    }
                    res[i] = e ? 1 : 0;
                    left--;
                } else if (!strcmp(name, "BLOCK_JOB_CANCELLED")) {
                    error_report("job '%s' was cancelled", ids[i]);
                    res[i] = 2;
                    left--;
                }
            }
            json_object_put(ev);
            continue;
        }
        if (now_s() - last_poll < 0.5) {
            continue;
        }
        /* no event for a while: a job gone without one was never ours */
        last_poll = now_s();
        for (int i = 0; i < n; i++) {
            json_object *j;
            if (res[i] >= 0) {
                continue;
            }
            j = agent_job_find(c, ids[i], &err);
            if (err) {
                report(err);
                err = NULL;
                res[i] = 1;
                left--;
            } else if (j) {
                gone[i] = 0;
                json_object_put(j);
            } else if (gone[i] == 0) {
                gone[i] = now_s();
            } else if (now_s() - gone[i] > 1.0) {
                error_report("no job '%s' on the agent", ids[i]);
                res[i] = 1;
                left--;
            }
        }
    }
    for (int i = 0; i < n && !ret; i++) {
        if (res[i] > 0) {
            ret = res[i];
        }
    }
    for (int i = 0; i < n; i++) {
        if (res[i] == 0) {
            printf("'%s' pivoted\n", ids[i]);
        }
    }
    free(res);
    free(gone);
    return ret;
}
