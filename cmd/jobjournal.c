/*
 * blockctl - the journals of offline jobs (stream, commit, mirror): written
 * as they run, read by `job list`, `job resume` and `job abort`
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A command writes its journal before it changes anything and records
 * each step: "copying" with "copied" (everything below it is on the
 * target and flushed; a checkpoint every few seconds), then the steps
 * after the copy.  `job resume` runs the command again from its journal
 * (same arguments, same folder, --resume ID): the command then starts
 * its copy at "copied" and skips the steps already done.
 */
#include "lib/compiler.h"
#include "lib/copy.h"
#include "lib/journal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/cmd.h"

/* Seconds between two checkpoints of a copy (each one flushes the target). */
#define CHECKPOINT_SECS 5.0

int job_journal_begin(struct job_journal *jj, const struct copy_opts *o, const char *type,
                      int argc, char **argv)
{
    struct error *err = NULL;
    const char *t;

    memset(jj, 0, sizeof(*jj));
    if (o->resume) {
        jj->j = journal_load(o->state_dir, o->resume, &err);
        if (!jj->j) {
            report(err);
            return 1;
        }
        t = journal_get_str(jj->j, "type");
        if (!t || strcmp(t, type)) {
            error_report("job '%s' is a %s job, not a %s job", jj->j->id, t ? t : "?", type);
            journal_free(jj->j);
            jj->j = NULL;
            return 1;
        }
        jj->state = journal_get_str(jj->j, "state");
        jj->copied = journal_get_u64(jj->j, "copied");
        return 0;
    }
    jj->j = journal_new(o->state_dir, type, argc, argv, &err);
    if (!jj->j) {
        report(err);
        return 1;
    }
    return 0;
}

int job_journal_check(struct job_journal *jj, ...)
{
    struct error *err = NULL;
    const char *key;
    va_list ap;
    int ret = 0;

    if (!jj->state) {
        return 0;
    }
    va_start(ap, jj);
    while (!ret && (key = va_arg(ap, const char *))) {
        if (journal_image_path(jj->j, key) && journal_check_image(jj->j, key, &err) < 0) {
            report(err);
            error_report("cannot resume job %s ('blockctl job abort %s' ends it)", jj->j->id,
                         jj->j->id);
            journal_free(jj->j);
            jj->j = NULL;
            ret = 1;
        }
    }
    va_end(ap);
    return ret;
}

int job_journal_step(struct job_journal *jj, const char *state)
{
    struct error *err = NULL;

    if (journal_step(jj->j, state, &err) < 0) {
        report(err);
        return 1;
    }
    return 0;
}

static int checkpoint(void *opaque, uint64_t below, struct error **errp)
{
    struct job_journal *jj = opaque;
    int r;

    if (below <= journal_get_u64(jj->j, "copied")) {
        return 0;
    }
    r = bdev_flush(jj->dst);
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot flush '%s'", jj->dst->filename);
        return r;
    }
    journal_set_u64(jj->j, "copied", below);
    return journal_save(jj->j, errp);
}

int job_journal_checkpoints(struct job_journal *jj, struct copy_params *cp, struct bdev *dst)
{
    jj->dst = dst;
    journal_set_u64(jj->j, "total", cp->src->size);
    if (!journal_get_u64(jj->j, "copied")) {
        journal_set_u64(jj->j, "copied", 0);
    }
    if (!cp->no_flush) {
        /* (without flushes nothing copied is sure to be there: resume starts at 0) */
        cp->checkpoint = checkpoint;
        const char *e = getenv("BLOCKCTL_CHECKPOINT_SECS");     /* (tests) */
        cp->checkpoint_secs = e && *e ? strtod(e, NULL) : CHECKPOINT_SECS;
        cp->checkpoint_opaque = jj;
    }
    return job_journal_step(jj, journal_get_str(jj->j, "state"));
}

void job_journal_end(struct job_journal *jj)
{
    struct error *err = NULL;

    if (jj->j && journal_end(jj->j, &err) < 0) {
        report(err);
    }
    jj->j = NULL;
}

void job_journal_keep(struct job_journal *jj)
{
    if (!jj->j) {
        return;
    }
    error_report("job %s can be finished with 'blockctl job resume %s' or rolled back with "
                 "'blockctl job abort %s'", jj->j->id, jj->j->id, jj->j->id);
    journal_free(jj->j);
    jj->j = NULL;
}

bool job_journal_running(json_object *j)
{
    json_object *v;
    int64_t pid = json_object_object_get_ex(j, "pid", &v) ? json_object_get_int64(v) : 0;
    char path[64], buf[256] = { 0 };
    FILE *f;
    size_t n;

    if (pid <= 0 || pid == getpid() || (kill((pid_t)pid, 0) < 0 && errno == ESRCH)) {
        return false;
    }
    snprintf(path, sizeof(path), "/proc/%lld/cmdline", (long long)pid);
    f = fopen(path, "r");
    if (!f) {
        return false;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    /* (cmdline is NUL-separated: look in each part) */
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1) {
        if (strstr(buf + i, "blockctl")) {
            return true;
        }
    }
    return false;
}

static struct journal *load_interrupted(const char *state_dir, const char *id)
{
    struct error *err = NULL;
    struct journal *j = journal_load(state_dir, id, &err);

    if (!j) {
        report(err);
        return NULL;
    }
    if (job_journal_running(j->root)) {
        error_report("job %s is running (process %llu): it is not interrupted", j->id,
                     (unsigned long long)journal_get_u64(j, "pid"));
        journal_free(j);
        return NULL;
    }
    return j;
}

int job_journal_resume(const char *state_dir, const char *id)
{
    struct journal *j = load_interrupted(state_dir, id);
    json_object *argv_o;
    const char *type, *cwd;
    char *sd, **argv;
    size_t n;
    int argc = 0, ret;

    if (!j) {
        return 1;
    }
    type = journal_get_str(j, "type");
    cwd = journal_get_str(j, "cwd");
    if (!json_object_object_get_ex(j->root, "argv", &argv_o) ||
        !json_object_is_type(argv_o, json_type_array) || !type ||
        (strcmp(type, "mirror") && strcmp(type, "stream") && strcmp(type, "commit"))) {
        error_report("'%s': not a job blockctl can resume", j->path);
        journal_free(j);
        return 1;
    }
    if (cwd && chdir(cwd) < 0) {
        error_report("cannot go to '%s', where job %s ran: %s", cwd, j->id, strerror(errno));
        journal_free(j);
        return 1;
    }
    n = json_object_array_length(argv_o);
    argv = xcalloc(n + 6, sizeof(*argv));
    for (size_t i = 0; i < n; i++) {
        argv[argc++] = xstrdup(json_object_get_string(json_object_array_get_idx(argv_o, i)));
    }
    sd = journal_state_dir(state_dir);
    argv[argc++] = xstrdup("--state-dir");
    argv[argc++] = sd;
    argv[argc++] = xstrdup("--resume");
    argv[argc++] = xstrdup(j->id);
    argv[argc] = NULL;
    fprintf(stderr, "blockctl: resuming %s job %s (%s, %llu of %llu bytes copied)\n", type,
            j->id, journal_get_str(j, "state") ?: "?",
            (unsigned long long)journal_get_u64(j, "copied"),
            (unsigned long long)journal_get_u64(j, "total"));
    ret = !strcmp(type, "mirror")   ? cmd_mirror(argc, argv)
          : !strcmp(type, "stream") ? cmd_stream(argc, argv)
                                    : cmd_commit(argc, argv);
    for (int i = 0; i < argc; i++) {
        free(argv[i]);
    }
    free(argv);
    journal_free(j);
    return ret;
}

int job_journal_abort(const char *state_dir, const char *id)
{
    struct journal *j = load_interrupted(state_dir, id);
    struct error *err = NULL;
    const char *type, *state, *auth;
    char *full_id;

    if (!j) {
        return 1;
    }
    type = journal_get_str(j, "type") ?: "?";
    state = journal_get_str(j, "state") ?: "?";
    if (!strcmp(type, "mirror")) {
        const char *part = journal_image_path(j, "part"), *target = journal_image_path(j, "target");
        if (part && journal_check_image(j, "part", &err) == 0) {
            if (unlink(part) < 0 && errno != ENOENT) {
                error_report("cannot remove '%s': %s", part, strerror(errno));
                journal_free(j);
                return 1;
            }
            printf("Removed the incomplete copy '%s'\n", part);
        } else if (part) {
            error_free(err);    /* (gone or replaced: not ours to remove) */
            err = NULL;
        } else if (target && strcmp(state, "installing")) {
            printf("'%s' is incomplete: do not use it\n", target);
        }
        if (!strcmp(state, "installing") && target && access(target, F_OK) == 0 &&
            (!part || access(part, F_OK) < 0)) {
            printf("'%s' is a complete copy\n", target);
        }
    }
    auth = journal_get_str(j, "authoritative");
    if (auth) {
        printf("'%s' holds the disk\n", auth);
    }
    full_id = xstrdup(j->id);
    if (journal_end(j, &err) < 0) {
        report(err);
        free(full_id);
        return 1;
    }
    printf("Job %s aborted\n", full_id);
    free(full_id);
    return 0;
}
