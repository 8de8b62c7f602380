/*
 * blockctl pivot - switch disks of an agent onto the copies their mirror
 * (or active commit) jobs made
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/remote.h"

#include <argp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd/cmd.h"

struct pivot_args {
    const char *agent;
    bool wait;
    int timeout;
    const char *state_dir;
    char **disks;
    int n;
    struct img_opts img;     /* -q */
};

enum { OPT_AGENT = 0x100, OPT_WAIT, OPT_TIMEOUT, OPT_STATE_DIR };

static const struct argp_option options[] = {
    { "agent", OPT_AGENT, "SOCKET", 0, "The agent's QMP socket (or $BLOCKCTL_AGENT)", 0 },
    { "wait", OPT_WAIT, NULL, 0, "Wait until each job is ready, instead of failing", 0 },
    { "timeout", OPT_TIMEOUT, "SEC", 0, "With --wait: give up after SEC seconds (exit 124)", 0 },
    { "state-dir", OPT_STATE_DIR, "DIR", 0, "Without --agent: where the journals are", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct pivot_args *a = state->input;
    char *end;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case OPT_AGENT:
        a->agent = arg;
        break;
    case OPT_STATE_DIR:
        a->state_dir = arg;
        break;
    case OPT_WAIT:
        a->wait = true;
        break;
    case OPT_TIMEOUT:
        a->timeout = (int)strtol(arg, &end, 10);
        if (*end || a->timeout <= 0) {
            argp_error(state, "--timeout takes a number of seconds, not '%s'", arg);
        }
        break;
    case ARGP_KEY_ARG:
        a->disks = xrealloc(a->disks, (size_t)(a->n + 1) * sizeof(*a->disks));
        a->disks[a->n++] = arg;
        break;
    case ARGP_KEY_END:
        if (!a->n) {
            argp_error(state, "no DISK given");
        }
        if (!remote_path(a->agent) && (a->n != 1 || a->wait)) {
            argp_error(state, "pivot acts on an agent's disks: --agent SOCKET (or "
                       "$BLOCKCTL_AGENT) is needed (without it: pivot ID, an interrupted "
                       "mirror's journal)");
        }
        if (a->timeout && !a->wait) {
            argp_error(state, "--timeout goes with --wait");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_pivot */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { 0 } };

static const struct argp pivot_argp = {
    options, parse_opt, "DISK...\nID",
    "Switch each DISK onto the target of its mirror (or active commit) job (the job named "
    "DISK, as blockctl mirror --agent names it), once the job is ready, then wait for the "
    "job's end.  Several DISKs of a blockctl agent pivot together in one drain, all or "
    "none; with another server, one after the other.\v"
    "Exit status: 0 when every DISK pivoted, 1 on error (a job not ready without --wait, "
    "or failed), 124 when --timeout passed, 64 for usage errors, 130/143 when interrupted "
    "(the jobs go on).",
    children, NULL, NULL,
};

/* not --wait: job @id must be ready now.  0, or 1 said. */
static int ready_now(struct qmp_client *c, const char *id)
{
    struct error *err = NULL;
    json_object *j = agent_job_find(c, id, &err), *st;
    int ret = 0;

    if (err) {
        report(err);
        return 1;
    }
    if (!j) {
        error_report("no job '%s' on the agent (start one with blockctl mirror --agent)", id);
        return 1;
    }
    json_object_object_get_ex(j, "status", &st);
    if (strcmp(json_object_get_string(st), "ready")) {
        error_report("job '%s' is not ready (%s); pivot --wait waits for it", id,
                     json_object_get_string(st));
        ret = 1;
    }
    json_object_put(j);
    return ret;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --timeout's seconds left (at least 1), or 0 for none */
static int time_left(const struct pivot_args *a, double t0)
{
    int left;

    if (!a->timeout) {
        return 0;
    }
    left = a->timeout - (int)(now_s() - t0);
    return left < 1 ? 1 : left;
}

/* One disk after the other: block-job-complete each once ready. */
static int pivot_each(struct qmp_client *c, const struct pivot_args *a, double t0)
{
    int ret = 0;

    for (int i = 0; i < a->n && !ret; i++) {
        struct job_wait w = { .id = a->disks[i], .wait = true, .at_ready = AT_READY_PIVOT,
                              .timeout_s = time_left(a, t0) };
        ret = a->wait ? 0 : ready_now(c, a->disks[i]);
        if (!ret) {
            ret = agent_job_wait(c, &w);
        }
        if (ret == 0) {
            printf("'%s' pivoted\n", a->disks[i]);
        }
    }
    return ret;
}

/*
 * A blockctl agent: all the disks in one drain, all or none (a
 * transaction of block-job-complete actions), once every job is ready.
 */
static int pivot_grouped(struct qmp_client *c, const struct pivot_args *a, double t0)
{
    int ret = 0;

    for (;;) {
        json_object *args, *acts;
        struct error *err = NULL;

        for (int i = 0; i < a->n && !ret; i++) {
            struct job_wait w = { .id = a->disks[i], .wait = true, .at_ready = AT_READY_WAIT,
                                  .timeout_s = time_left(a, t0) };
            ret = a->wait ? agent_job_wait(c, &w) : ready_now(c, a->disks[i]);
        }
        if (ret) {
            return ret;
        }
        args = json_object_new_object();
        acts = json_object_new_array();
        for (int i = 0; i < a->n; i++) {
            json_object *act = json_object_new_object(), *data = json_object_new_object();
            json_object_object_add(data, "device", json_object_new_string(a->disks[i]));
            json_object_object_add(act, "type", json_object_new_string("block-job-complete"));
            json_object_object_add(act, "data", data);
            json_object_array_add(acts, act);
        }
        json_object_object_add(args, "actions", acts);
        if (qmp_client_execute(c, "transaction", args, NULL, &err) == 0) {
            break;
        }
        /* a job fell behind between its READY and the pivot: wait again */
        if (!a->wait || !strstr(err->msg, "cannot be completed")) {
            error_report("pivot: %s (no disk was switched)", err->msg);
            error_free(err);
            return 1;
        }
        error_free(err);
        if (a->timeout && now_s() - t0 > a->timeout) {
            error_report("the jobs were not ready together after %d s", a->timeout);
            return 124;
        }
    }
    return agent_jobs_wait_end(c, a->disks, a->n, JOBS_END_PIVOT);
}

int cmd_pivot(int argc, char **argv)
{
    struct pivot_args a = { 0 };
    struct error *err = NULL;
    struct qmp_client *c;
    double t0 = now_s();
    int ret;

    children[0].argp = img_opts_argp(IMGOPT_QUIET);
    argp_parse(&pivot_argp, argc, argv, 0, NULL, &a);
    if (!remote_path(a.agent)) {
        /* an interrupted live mirror, its agent gone: finish it and switch */
        int r = job_journal_finish_live(a.state_dir, a.disks[0], true);
        free(a.disks);
        return r;
    }
    cancel_install();
    c = remote_connect(a.agent, &err);
    if (!c) {
        report(err);
        free(a.disks);
        return 1;
    }
    ret = a.n > 1 && remote_is_blockctl(c) ? pivot_grouped(c, &a, t0) : pivot_each(c, &a, t0);
    qmp_client_close(c);
    free(a.disks);
    return ret;
}
