/*
 * blockctl - subcommands
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Adding a subcommand:
 *  1. write cmd/<name>.c with one struct argp and int cmd_<name>(int, char **);
 *  2. declare it below;
 *  3. add a row to the table in cmd/main.c (keep it sorted);
 *  4. add cmd/<name>.o to the Makefile;
 *  5. write man/blockctl-<name>.1.pod and tests/cli/<name>*.bats (the help
 *     test checks the usage line against the page's synopsis).
 *
 * A subcommand parses, calls lib/, prints, and returns the exit status.
 * It holds no block logic.
 */
#ifndef BLOCKCTL_CMD_CMD_H
#define BLOCKCTL_CMD_CMD_H

#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/error.h"

#include <argp.h>
#include <json-c/json.h>
#include <signal.h>

/* Exit status for usage errors: argp's EX_USAGE */
#define EXIT_USAGE 64

int cmd_agent(int argc, char **argv);
int cmd_amend(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_job(int argc, char **argv);
int cmd_pivot(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_mirror(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_stream(int argc, char **argv);

/* cmd/common.c */
enum output_format { OUTPUT_HUMAN, OUTPUT_JSON };
/* Parse --output's argument; exits with EXIT_USAGE on a bad value. */
enum output_format parse_output_format(const char *arg, struct argp_state *state);
/* Parse a size argument for an option; exits with EXIT_USAGE when bad. */
uint64_t parse_size_arg(const char *arg, const char *what, struct argp_state *state);
/* Print an error, free it and clear the variable (so it can be reused). */
#define report(err) \
    do { \
        error_report_err(err); \
        (err) = NULL; \
    } while (0)
/* Append a -o argument to the comma-joined list *dst (allocated). */
void append_opts(char **dst, const char *arg);
/* qemu-img style progress line on stdout: "    (12.34/100%)\r" */
void progress_print(double percent);
void progress_done(void);

/*
 * Options shared by the copying commands (stream, commit, mirror): an argp
 * child; the parent sets state->child_inputs[0] to a struct copy_opts.
 */
struct copy_opts {
    bool progress;          /* -p: percentage on stderr */
    bool progress_json;     /* --progress=json: {"done":N,"total":M} lines on stdout */
    uint64_t bandwidth;     /* --bandwidth, bytes/s */
    uint64_t buf_size;      /* --buf-size */
    unsigned requests;      /* --requests: copies in flight */
};
extern const struct argp copy_opts_argp;
struct copy_params;
/* Fill the engine's parameters from the options (progress, limits, cancel flag). */
void copy_opts_apply(const struct copy_opts *o, struct copy_params *p);
/* End a progress display (newline after the percentage). */
void copy_opts_finish(const struct copy_opts *o);
/* Report a copy that had nothing to do as complete (0 of 0 bytes). */
void copy_opts_nothing(const struct copy_opts *o);

/* Does the -o string @opts ask for the option list ("help" or "?")? */
bool opts_want_help(const char *opts);

/* --- an agent's jobs (agentjob.c) --- */
struct qmp_client;
enum at_ready {
    AT_READY_WAIT,      /* the wait ends at READY (the job goes on) */
    AT_READY_PIVOT,     /* block-job-complete at READY, then wait for the end */
    AT_READY_FINISH,    /* block-job-cancel at READY (no pivot), then the end */
};
struct job_wait {
    const char *id;
    bool wait;              /* agent_job_start: wait at all */
    enum at_ready at_ready;
    bool progress, progress_json;
    bool cancel_on_signal;  /* Ctrl-C cancels the job (not --async) */
    int timeout_s;          /* 0: none */
};
/*
 * Wait for job @w->id: 0 done (or ready, with AT_READY_WAIT), 1 failed
 * (said on stderr), 2 cancelled by someone else, 124 timed out, 130/143
 * interrupted (the job cancelled unless !cancel_on_signal).
 */
int agent_job_wait(struct qmp_client *c, const struct job_wait *w);
/*
 * Wait for the end of jobs @ids (completed already: a grouped pivot),
 * printing "'ID' pivoted" for each that completed: 0, 1 failed, 2
 * cancelled, 130/143 interrupted (the jobs go on).
 */
int agent_jobs_wait_end(struct qmp_client *c, char *const *ids, int n);
/* Run @cmd (@args taken over) that starts job @w->id, then wait if asked. */
int agent_job_start(struct qmp_client *c, const char *cmd, json_object *args,
                    const struct job_wait *w);
/* block-job-VERB on @id (@extra: more arguments, taken over): 0, or 1 said. */
int agent_job_verb(struct qmp_client *c, const char *verb, const char *id, json_object *extra);
/* The query-block-jobs entry of @id (a new reference), or NULL. */
json_object *agent_job_find(struct qmp_client *c, const char *id, struct error **errp);

/* Set by SIGINT/SIGTERM once cancel_install() ran. */
extern volatile sig_atomic_t cmd_cancel;
void cancel_install(void);
/* Exit status for an interrupted operation: 128 + the signal (130, 143). */
int cancel_exit_status(void);

#endif
