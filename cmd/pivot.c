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

#include "cmd/cmd.h"

struct pivot_args {
    const char *agent;
    bool wait;
    int timeout;
    char **disks;
    int n;
};

enum { OPT_AGENT = 0x100, OPT_WAIT, OPT_TIMEOUT };

static const struct argp_option options[] = {
    { "agent", OPT_AGENT, "SOCKET", 0, "The agent's QMP socket (or $BLOCKCTL_AGENT)", 0 },
    { "wait", OPT_WAIT, NULL, 0, "Wait until each job is ready, instead of failing", 0 },
    { "timeout", OPT_TIMEOUT, "SEC", 0, "With --wait: give up after SEC seconds (exit 124)", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct pivot_args *a = state->input;
    char *end;

    switch (key) {
    case OPT_AGENT:
        a->agent = arg;
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
        if (!remote_path(a->agent)) {
            argp_error(state, "pivot acts on an agent's disks: --agent SOCKET (or "
                       "$BLOCKCTL_AGENT) is needed");
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

static const struct argp pivot_argp = {
    options, parse_opt, "DISK...",
    "Switch each DISK onto the target of its mirror job (the job named DISK, as blockctl "
    "mirror --agent names it), once the job is ready: block-job-complete, then wait for "
    "the job's end.  The disks are pivoted one after the other, in the order given.\v"
    "Exit status: 0 when every DISK pivoted, 1 on error (a job not ready without --wait, "
    "or failed), 124 when --timeout passed, 64 for usage errors, 130/143 when interrupted "
    "(the jobs go on).",
    NULL, NULL, NULL,
};

int cmd_pivot(int argc, char **argv)
{
    struct pivot_args a = { 0 };
    struct error *err = NULL;
    struct qmp_client *c;
    int ret = 0;

    argp_parse(&pivot_argp, argc, argv, 0, NULL, &a);
    cancel_install();
    c = remote_connect(a.agent, &err);
    if (!c) {
        report(err);
        free(a.disks);
        return 1;
    }
    for (int i = 0; i < a.n && !ret; i++) {
        struct job_wait w = { .id = a.disks[i], .wait = true, .at_ready = AT_READY_PIVOT,
                              .cancel_on_signal = false, .timeout_s = a.timeout };
        if (!a.wait) {
            json_object *j = agent_job_find(c, a.disks[i], &err), *st;
            if (err) {
                report(err);
                ret = 1;
                break;
            }
            if (!j) {
                error_report("no job '%s' on the agent (start one with blockctl mirror "
                             "--agent)", a.disks[i]);
                ret = 1;
                break;
            }
            json_object_object_get_ex(j, "status", &st);
            if (strcmp(json_object_get_string(st), "ready")) {
                error_report("job '%s' is not ready (%s); pivot --wait waits for it",
                             a.disks[i], json_object_get_string(st));
                json_object_put(j);
                ret = 1;
                break;
            }
            json_object_put(j);
        }
        ret = agent_job_wait(c, &w);
        if (ret == 0) {
            printf("'%s' pivoted\n", a.disks[i]);
        }
    }
    qmp_client_close(c);
    free(a.disks);
    return ret;
}
