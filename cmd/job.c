/*
 * blockctl job - the jobs of an agent, and interrupted jobs on disk
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/journal.h"
#include "lib/jw.h"
#include "lib/remote.h"
#include "lib/size.h"

#include <argp.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

struct job_args {
    const char *agent;
    const char *state_dir;
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *verb;
    char *id;
    const char *speed;
    bool async;              /* cancel, complete: return once asked, not once ended */
};

static const char *const verbs[] = { "list", "show", "pause", "resume", "cancel", "complete",
                                     "wait", "set-speed", "abort", NULL };

enum { OPT_AGENT = 0x100, OPT_OUTPUT, OPT_STATE_DIR, OPT_ASYNC };

static const struct argp_option options[] = {
    { "agent", OPT_AGENT, "SOCKET", 0, "The agent's QMP socket (or $BLOCKCTL_AGENT)", 0 },
    { "state-dir", OPT_STATE_DIR, "DIR", 0, "Where job journals are kept", 0 },
    { "async", OPT_ASYNC, NULL, 0, "cancel, complete: return once the agent took it, not "
      "once the job has ended", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct job_args *a = state->input;

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
    case OPT_ASYNC:
        a->async = true;
        break;
    case ARGP_KEY_ARG:
        if (!a->verb) {
            size_t i;
            for (i = 0; verbs[i] && strcmp(verbs[i], arg); i++) {
            }
            if (!verbs[i]) {
                argp_error(state, "unknown action '%s' (list, show, pause, resume, cancel, "
                           "complete, wait, set-speed, abort)", arg);
            }
            a->verb = arg;
        } else if (!a->id && strcmp(a->verb, "list")) {
            a->id = arg;
        } else if (!a->speed && !strcmp(a->verb, "set-speed")) {
            a->speed = arg;
        } else {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        break;
    case ARGP_KEY_END:
        if (!a->verb) {
            a->verb = "list";
        }
        if (strcmp(a->verb, "list") && !a->id) {
            argp_error(state, "%s: which JOB?", a->verb);
        }
        if (!strcmp(a->verb, "set-speed") && !a->speed) {
            argp_error(state, "set-speed JOB BYTES-PER-SECOND");
        }
        if (strcmp(a->verb, "list") && strcmp(a->verb, "show") && strcmp(a->verb, "resume") &&
            strcmp(a->verb, "abort") && !remote_path(a->agent)) {
            argp_error(state, "%s acts on an agent's job: --agent SOCKET (or $BLOCKCTL_AGENT)",
                       a->verb);
        }
        if (!strcmp(a->verb, "abort") && remote_path(a->agent)) {
            argp_error(state, "abort acts on an interrupted job: without --agent (an agent's "
                       "job is cancelled: cancel JOB)");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_job */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp job_argp = {
    options, parse_opt, "[list]\nshow|pause|resume|cancel|complete|wait JOB\n"
    "set-speed JOB BYTES-PER-SECOND\nshow|resume|abort ID",
    "List the block jobs of an agent (with --agent), or the jobs that were interrupted "
    "(their journals in the state directory); show or control one job of an agent.  "
    "cancel of a ready mirror ends it without pivot; complete pivots; both wait until the "
    "job has ended (--async: not); wait waits until the job ends or is ready.  Without "
    "--agent: resume finishes an interrupted job, copying only what it had not copied; "
    "abort rolls it back.\v"
    "Exit status: 0 on success, 1 on error (or, for wait and complete, a failed job), 2 "
    "(wait, complete) when the job was cancelled, 64 for usage errors, 130/143 when "
    "interrupted.",
    children, NULL, NULL,
};

static const char *jstr(json_object *o, const char *key, const char *dflt)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : dflt;
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static bool jbool(json_object *o, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

/* The block jobs of an agent: query-block-jobs, with query-jobs' ids. */
static int list_agent(struct job_args *a)
{
    struct error *err = NULL;
    struct qmp_client *c = remote_connect(a->agent, &err);
    json_object *jobs = NULL;
    struct jw w;

    if (!c) {
        report(err);
        return 1;
    }
    if (qmp_client_execute(c, "query-block-jobs", NULL, &jobs, &err) < 0) {
        report(err);
        qmp_client_close(c);
        return 1;
    }
    if (a->img.output == OUTPUT_JSON) {
        jw_init(&w, true);
        jw_array_begin(&w);
        for (size_t i = 0; i < json_object_array_length(jobs); i++) {
            json_object *j = json_object_array_get_idx(jobs, i);
            jw_object_begin(&w);
            jw_kv_string(&w, "id", jstr(j, "device", ""));
            jw_kv_string(&w, "type", jstr(j, "type", ""));
            jw_kv_string(&w, "status", jstr(j, "status", ""));
            jw_kv_int(&w, "offset", jint(j, "offset"));
            jw_kv_int(&w, "len", jint(j, "len"));
            jw_kv_int(&w, "speed", jint(j, "speed"));
            jw_kv_bool(&w, "ready", jbool(j, "ready"));
            jw_kv_bool(&w, "paused", jbool(j, "paused"));
            jw_kv_string(&w, "io-status", jstr(j, "io-status", "ok"));
            if (jstr(j, "error", NULL)) {
                jw_kv_string(&w, "error", jstr(j, "error", NULL));
            }
            jw_object_end(&w);
        }
        jw_array_end(&w);
        printf("%s\n", jw_text(&w));
        jw_free(&w);
    } else if (json_object_array_length(jobs)) {
        printf("%-16s %-8s %-10s %8s  %s\n", "ID", "TYPE", "STATUS", "PROGRESS", "SPEED");
        for (size_t i = 0; i < json_object_array_length(jobs); i++) {
            json_object *j = json_object_array_get_idx(jobs, i);
            int64_t len = jint(j, "len"), off = jint(j, "offset"), speed = jint(j, "speed");
            char sp[32] = "unlimited";
            if (speed) {
                size_human((uint64_t)speed, sp, sizeof(sp));
                strcat(sp, "/s");
            }
            printf("%-16s %-8s %-10s %7.2f%%  %s\n", jstr(j, "device", ""),
                   jstr(j, "type", ""), jstr(j, "status", ""),
                   len ? 100.0 * (double)off / (double)len : 100.0, sp);
        }
    } else {
        printf("No block jobs\n");
    }
    json_object_put(jobs);
    qmp_client_close(c);
    return 0;
}

/* "12.3%" of an interrupted job's copy ("-" when it has no total) */
static void job_progress_str(json_object *j, char *buf, size_t len)
{
    int64_t total = jint(j, "total"), copied = jint(j, "copied");

    if (total > 0) {
        snprintf(buf, len, "%.1f%%", (double)copied * 100.0 / (double)total);
    } else {
        snprintf(buf, len, "-");
    }
}

/* Jobs interrupted before they finished: the journals they left. */
static int list_journals(struct job_args *a)
{
    struct error *err = NULL;
    json_object *all;
    size_t n;

    if (journal_list(a->state_dir, &all, &err) < 0) {
        report(err);
        json_object_put(all);
        return 1;
    }
    n = json_object_array_length(all);
    for (size_t i = 0; i < n; i++) {
        json_object *j = json_object_array_get_idx(all, i);
        json_object_object_add(j, "running", json_object_new_boolean(job_journal_running(j)));
        job_journal_live_view(j);
    }
    if (a->img.output == OUTPUT_JSON) {
        printf("%s\n", json_object_to_json_string_ext(all, JSON_C_TO_STRING_PRETTY |
                                                               JSON_C_TO_STRING_SPACED |
                                                               JSON_C_TO_STRING_NOSLASHESCAPE));
    } else if (!n) {
        printf("No interrupted jobs\n");
    } else {
        printf("%-32s %-8s %-12s %-16s %-7s %s\n", "ID", "TYPE", "STATUS", "STEP", "COPIED",
               "AUTHORITATIVE");
        for (size_t i = 0; i < n; i++) {
            json_object *j = json_object_array_get_idx(all, i);
            char prog[32];
            job_progress_str(j, prog, sizeof(prog));
            printf("%-32s %-8s %-12s %-16s %-7s %s\n", jstr(j, "id", "?"), jstr(j, "type", "?"),
                   jbool(j, "running") ? "running" : "interrupted", jstr(j, "state", "?"), prog,
                   jstr(j, "authoritative", "?"));
        }
    }
    json_object_put(all);
    return 0;
}

/* show ID of an interrupted job: its journal */
static int show_journal(struct job_args *a)
{
    struct error *err = NULL;
    struct journal *j = journal_load(a->state_dir, a->id, &err);
    json_object *images;
    char prog[32];

    if (!j) {
        report(err);
        return 1;
    }
    json_object_object_add(j->root, "running", json_object_new_boolean(job_journal_running(j->root)));
    job_journal_live_view(j->root);
    if (a->img.output == OUTPUT_JSON) {
        printf("%s\n", json_object_to_json_string_ext(j->root, JSON_C_TO_STRING_PRETTY |
                                                                   JSON_C_TO_STRING_SPACED |
                                                                   JSON_C_TO_STRING_NOSLASHESCAPE));
        journal_free(j);
        return 0;
    }
    job_progress_str(j->root, prog, sizeof(prog));
    printf("id:            %s\n", j->id);
    printf("type:          %s\n", jstr(j->root, "type", "?"));
    printf("status:        %s\n", jbool(j->root, "running") ? "running" : "interrupted");
    printf("step:          %s\n", jstr(j->root, "state", "?"));
    printf("started:       %s\n", jstr(j->root, "started", "?"));
    if (json_object_object_get_ex(j->root, "total", NULL)) {
        printf("copied:        %" PRId64 " of %" PRId64 " bytes (%s)\n", jint(j->root, "copied"),
               jint(j->root, "total"), prog);
    }
    printf("authoritative: %s\n", jstr(j->root, "authoritative", "?"));
    if (json_object_object_get_ex(j->root, "images", &images)) {
        json_object_object_foreach(images, k, v) {
            printf("%-14s %s\n", k, jstr(v, "path", "?"));
        }
    }
    if (!jbool(j->root, "running")) {
        printf("Run 'blockctl job resume %s' to finish it, or 'blockctl job abort %s' to roll "
               "it back.\n", j->id, j->id);
    }
    journal_free(j);
    return 0;
}

/* show, pause, resume, cancel, complete, wait, set-speed on an agent's job */
static int job_verb(struct job_args *a)
{
    struct error *err = NULL;
    struct qmp_client *c = remote_connect(a->agent, &err);
    int ret = 0;

    if (!c) {
        report(err);
        return 1;
    }
    if (!strcmp(a->verb, "show")) {
        json_object *j = agent_job_find(c, a->id, &err);
        if (!j) {
            if (err) {
                report(err);
            } else {
                error_report("no job '%s' on the agent", a->id);
            }
            ret = 1;
        } else if (a->img.output == OUTPUT_JSON) {
            printf("%s\n", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY |
                                                                 JSON_C_TO_STRING_SPACED));
        } else {
            json_object_object_foreach(j, k, v) {
                printf("%-14s %s\n", k, json_object_get_string(v));
            }
        }
        json_object_put(j);
    } else if (!strcmp(a->verb, "wait")) {
        struct job_wait w = { .id = a->id, .wait = true, .at_ready = AT_READY_WAIT };
        cancel_install();
        ret = agent_job_wait(c, &w);
    } else if (!strcmp(a->verb, "set-speed")) {
        uint64_t sp;
        if (size_parse(a->speed, &sp, 'B') < 0) {
            error_report("set-speed: '%s' is not a number of bytes per second (digits with an "
                         "optional suffix k, M, G, T, P or E)", a->speed);
            ret = 64;
        } else {
            json_object *x = json_object_new_object();
            json_object_object_add(x, "speed", json_object_new_int64((int64_t)sp));
            ret = agent_job_verb(c, "set-speed", a->id, x);
        }
    } else {
        ret = agent_job_verb(c, a->verb, a->id, NULL);
        if (!ret && (!strcmp(a->verb, "cancel") || !strcmp(a->verb, "complete")) && !a->async) {
            cancel_install();
            ret = agent_jobs_wait_end(c, &a->id, 1, !strcmp(a->verb, "cancel") ? JOBS_END_CANCEL
                                                                                 : JOBS_END_COMPLETE);
        }
    }
    qmp_client_close(c);
    return ret;
}

int cmd_job(int argc, char **argv)
{
    struct job_args a = { 0 };

    children[0].argp = img_opts_argp(IMGOPT_OUTPUT | IMGOPT_QUIET);
    argp_parse(&job_argp, argc, argv, 0, NULL, &a);
    if (!remote_path(a.agent)) {
        if (!strcmp(a.verb, "show")) {
            return show_journal(&a);
        }
        if (!strcmp(a.verb, "resume")) {
            cancel_install();
            return job_journal_resume(a.state_dir, a.id);
        }
        if (!strcmp(a.verb, "abort")) {
            return job_journal_abort(a.state_dir, a.id);
        }
    }
    if (strcmp(a.verb, "list")) {
        return job_verb(&a);
    }
    if (remote_path(a.agent)) {
        return list_agent(&a);
    }
    return list_journals(&a);
}
