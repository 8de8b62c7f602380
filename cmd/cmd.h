/*
 * blockctl - subcommands
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Adding a subcommand:
 *  1. write cmd/<name>.c with one struct argp and int cmd_<name>(int, char **);
 *  2. declare it below;
 *  3. add a row to the table in cmd/main.c (keep it sorted);
 *  4. nothing in the Makefile: it builds every .c of cmd/ and cmd/shared/;
 *  5. write man/blockctl-<name>.1.pod and tests/cli/<name>*.bats (the help
 *     test checks the usage line against the page's synopsis).
 *
 * A subcommand parses, calls lib/, prints, and returns the exit status.
 * It holds no block logic.  What several subcommands share (option
 * parsers, the copy target, job journals, the agent client) is in
 * cmd/shared/, one file per piece, declared below; cmd/common.c holds
 * the small helpers.
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
int cmd_convert(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_job(int argc, char **argv);
int cmd_pivot(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_resize(int argc, char **argv);
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
/*
 * Option values checked where they are parsed, exiting EXIT_USAGE with
 * what is valid: a format for -f/-F (@opt names the option), one that
 * can be created for -O; -S (0: *no_sparse); -m (1..16).  (-t/-T: imgopts.c)
 */
const char *parse_format_arg(const char *arg, const char *opt, struct argp_state *state);
const char *parse_out_format_arg(const char *arg, const char *opt, struct argp_state *state);
void parse_sparse_arg(const char *arg, uint64_t *size, bool *no_sparse,
                      struct argp_state *state);
unsigned parse_coroutines_arg(const char *arg, struct argp_state *state);
/*
 * -o lists: parse @str (NULL: nothing) against @drv's options into @o, or
 * check a whole list with the driver's check_create; 0, or EXIT_USAGE
 * with the reason said (@file, if any, named).  create_opts_validate
 * does both for a list on its own (a command's -o before anything is
 * opened).
 */
struct format_driver;
int create_opts_parse(const struct format_driver *drv, const char *str, struct optlist *o,
                      const char *file);
int create_opts_check(const struct format_driver *drv, const struct optlist *o,
                      const char *file);
int create_opts_validate(const char *fmt, const char *str);
/*
 * The options every image command shares (imgopts.c), parsed once: a
 * command lists img_opts_argp(IMGOPT_...) as an argp child and sets its
 * input (state->child_inputs[i]) to its struct img_opts.
 */
enum {
    IMGOPT_FORMAT = 1u << 0,     /* -f, --format FMT: the image's (probed when omitted) */
    IMGOPT_FORMAT_NEW = 1u << 1, /* -f, --format FMT: a new image's (create) */
    IMGOPT_SHARE = 1u << 2,      /* -U, --force-share */
    IMGOPT_OUTPUT = 1u << 3,     /* --output human|json */
    IMGOPT_QUIET = 1u << 4,      /* -q, --quiet: stdout goes nowhere, no progress */
    IMGOPT_CACHE = 1u << 5,      /* -t, --cache MODE: of the images written */
    IMGOPT_SRC_CACHE = 1u << 6,  /* -T, --source-cache MODE: of the images only read */
};
struct img_opts {
    const char *format;
    bool force_share;
    enum output_format output;
    bool quiet;
    unsigned cache;              /* -t's BDEV_O_* cache flags (writeback: 0) */
    unsigned src_cache;          /* -T's */
    const char *cache_name;      /* -t as given (NULL: not given) */
    const char *src_cache_name;
};
const struct argp *img_opts_argp(unsigned which);
/* Set by -q (progress displays check it). */
extern bool cmd_quiet;

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
    const char *state_dir;  /* --state-dir: where the job journal goes */
    const char *resume;     /* --resume ID (job resume): go on with that job */
};
extern const struct argp copy_opts_argp;
/* --state-dir (and the hidden --resume ID) of the journaled copies: a
 * second child, with the same struct copy_opts as its input */
extern const struct argp journal_opts_argp;
struct copy_params;
/* Fill the engine's parameters from the options (progress, limits, cancel flag). */
void copy_opts_apply(const struct copy_opts *o, struct copy_params *p);
/* End a progress display (newline after the percentage). */
void copy_opts_finish(const struct copy_opts *o);
/* Report a copy that had nothing to do as complete (0 of 0 bytes). */
void copy_opts_nothing(const struct copy_opts *o);

/*
 * --tls-creds DIR / --tls-psk FILE (cmd/tlsopts.c): credentials for the
 * nbds:// URIs a command opens (formats/nbd.c: nbd_tls_configure; without
 * them, BLOCKCTL_TLS_CREDS / BLOCKCTL_TLS_PSK).  An argp child with no
 * input: list it in the children of every command that opens images.
 */
extern const struct argp tls_opts_argp;

/* Does the -o string @opts ask for the option list ("help" or "?")? */
bool opts_want_help(const char *opts);

/* --- the target of an offline copy: mirror, convert (target.c) --- */
struct copy_target {
    /* in */
    const char *name;       /* TARGET as given: a file or an NBD URI */
    const char *fmt;        /* its format (a new one: required) */
    const struct optlist *o; /* a new one: create options (size included) */
    uint64_t size;          /* bytes to copy: an existing one must be at least as large */
    bool reuse;             /* -n: write an existing image in place */
    bool replace;           /* a new TARGET replaces an existing file (convert) */
    bool unsafe;            /* -t unsafe: an NBD target without ordering flushes */
    unsigned cache;         /* -t: BDEV_O_* cache flags of a file target */
    bool no_backing;        /* open a new one without its backing file */
    struct job_journal *jj; /* the job's journal (NULL: none) */
    /* out */
    struct bdev *dst;
    bool created;           /* dst is TARGET.part, removed unless installed */
    bool resumed;           /* dst is the TARGET.part of the job resumed */
    bool copied;            /* resumed after the copy: nothing to copy */
    bool installed;         /* resumed after TARGET.part was put in place */
    bool keep_journal;      /* a failure leaves the job to resume (an -n target) */
    char *part;
    char *path;             /* where a symbolic link TARGET points (replaced there) */
};
/*
 * Refuse (one line said) a TARGET that is an image of @src's chain, or
 * whose TARGET.part would be: true when refused.  @cmd names the command.
 */
bool target_refuse_own_chain(struct bdev *src, const char *source, const char *target,
                             bool reuse, const char *cmd);
/* Open or create the target: 0, or the exit status (said). */
int target_open(struct copy_target *t);
/* copy_run() into it: 0, or the exit status (said: interrupted, failed). */
int target_copy(struct copy_target *t, struct copy_params *cp);
/* Close it and put a new one in place: 0, or 1 (said). */
int target_install(struct copy_target *t);
/* Drop what is left (a TARGET.part not installed is removed). */
void target_cleanup(struct copy_target *t);

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
/* What was asked of the jobs whose end agent_jobs_wait_end waits for */
enum jobs_end {
    JOBS_END_PIVOT,     /* a pivot: "'ID' pivoted" printed for each */
    JOBS_END_COMPLETE,  /* block-job-complete: nothing printed */
    JOBS_END_CANCEL,    /* block-job-cancel: being cancelled is the end asked for */
};
/*
 * Wait for the end of jobs @ids, asked to end (@how): gone from the
 * agent's jobs, or concluded or pending (left for a dismiss or a
 * finalize).  0, 1 failed, 2 cancelled (not JOBS_END_CANCEL), said;
 * 130/143 interrupted (what was asked goes on).
 */
int agent_jobs_wait_end(struct qmp_client *c, char *const *ids, int n, enum jobs_end how);
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

/* --- journals of offline jobs (jobjournal.c) --- */
struct journal;
struct copy_params;
struct job_journal {
    struct journal *j;
    struct bdev *dst;       /* flushed before each checkpoint */
    const char *state;      /* the resumed journal's state (NULL: a new job) */
    uint64_t copied;        /* the resumed journal's "copied" */
    char state_buf[64];     /* (state's copy: a step replaces the journal's string) */
};
/*
 * A new journal for a @type job run as @argv, or (--resume) the journal
 * of the job being resumed.  0, or 1 (said).
 */
int job_journal_begin(struct job_journal *jj, const struct copy_opts *o, const char *type,
                      int argc, char **argv);
/*
 * Resuming: are the images named (a NULL-terminated list of keys; keys
 * the journal lacks are skipped) still those the job used?  0, or 1
 * (said; the journal is left as it is).  0 for a new job.
 */
int job_journal_check(struct job_journal *jj, ...) __attribute__((sentinel));
/* Record a step (state @state, saved): 0, or 1 (said). */
int job_journal_step(struct job_journal *jj, const char *state);
/* Checkpoints of the copy into @dst: a flush, then "copied" saved.  The
 * journal is saved (with the total): 0, or 1 (said). */
int job_journal_checkpoints(struct job_journal *jj, struct copy_params *cp, struct bdev *dst);
/* The job ended (done, or rolled back): the journal goes.  0, or 1 (said:
 * it could not be removed; job resume removes it). */
int job_journal_end(struct job_journal *jj);
/* The job stopped and can be resumed: the journal stays (says how). */
void job_journal_keep(struct job_journal *jj);
/* Is the process that wrote journal object @j still running it? */
bool job_journal_running(json_object *j);
/*
 * A live job's journal @j (job list, job show) as it stands now: when the
 * agent's state file already names the target as the disk (killed after
 * the pivot was saved, before the journal was removed), the target is
 * authoritative and the step "pivoted".
 */
void job_journal_live_view(json_object *j);
/* Resume or abort interrupted job @id (cmd/job.c): the exit status. */
int job_journal_resume(const char *state_dir, const char *id);
/* An interrupted job of an agent (the agent gone): bring its target in
 * step offline, then end it, or (@pivot) name the target in the agent's
 * state file: the exit status. */
int job_journal_finish_live(const char *state_dir, const char *id, bool pivot);
int job_journal_abort(const char *state_dir, const char *id);
/*
 * An agent's snapshot (journal object @j) whose overlays its state file
 * names (all of them: one write), or, without a state file, that may
 * have switched: the overlays hold the disks.
 */
bool job_journal_snapshot_switched(json_object *j);
/* Name every overlay of snapshot journal @j in its agent's state file: 0, or 1 (said). */
int job_journal_snapshot_switch(struct journal *j);
/* job abort of an offline snapshot (snapshot.c): the overlays it made go. 0, or 1 (said). */
int snapshot_journal_abort(struct journal *j);
/*
 * Has the offline bitmap transaction of journal @j taken effect (bitmap.c)?
 * 1 yes, 0 no, -1 unknown (said).
 */
int bitmap_journal_applied(struct journal *j);

/* Print a format's creation options as "-o help" does (cmd/shared/imgopts.c). */
void opts_print_help(const char *format, const struct opt_desc *desc);

#endif
