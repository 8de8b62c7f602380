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
#include "lib/io.h"
#include "lib/journal.h"
#include "lib/bitmap.h"
#include "lib/wib.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/cmd.h"

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
        t = journal_get_str(jj->j, "state");
        if (t) {
            snprintf(jj->state_buf, sizeof(jj->state_buf), "%s", t);
            jj->state = jj->state_buf;
        }
        jj->copied = journal_get_u64(jj->j, "copied");
        /* (ours while it runs: saved with the next step) */
        journal_set_owner(jj->j);
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

    return journal_checkpoint_copied(jj->j, jj->dst, below, errp);
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
        cp->checkpoint_secs = journal_checkpoint_secs();
        cp->checkpoint_opaque = jj;
    }
    return job_journal_step(jj, journal_get_str(jj->j, "state"));
}

int job_journal_end(struct job_journal *jj)
{
    struct error *err = NULL;
    char *id, *path;
    int ret = 0;

    if (!jj->j) {
        return 0;
    }
    id = xstrdup(jj->j->id);
    path = xstrdup(jj->j->path);
    if (journal_end(jj->j, &err) < 0) {
        report(err);
        if (access(path, F_OK) == 0) {
            error_report("job %s is over, but its journal is left: 'blockctl job resume %s' "
                         "removes it", id, id);
            ret = 1;
        }
        /* (else removed, the removal maybe not on disk: a journal that comes
         * back after a power failure is ended by job resume) */
    }
    free(path);
    free(id);
    jj->j = NULL;
    return ret;
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

    if (pid == getpid() || !journal_owner_alive(j)) {
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

/* --- a live job of an agent that is gone (killed, the host crashed) --- */

static bool jbool_member(json_object *o, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

/* The file the agent's state file names for disk @disk (allocated), or NULL. */
static char *state_top(const char *state, const char *disk)
{
    json_object *root = state ? json_object_from_file(state) : NULL, *disks, *v;
    char *file = NULL;

    if (root && json_object_object_get_ex(root, "disks", &disks) &&
        json_object_is_type(disks, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(disks); i++) {
            json_object *d = json_object_array_get_idx(disks, i);
            if (json_object_object_get_ex(d, "name", &v) && !strcmp(json_object_get_string(v), disk) &&
                json_object_object_get_ex(d, "file", &v)) {
                file = xstrdup(json_object_get_string(v));
            }
        }
    }
    json_object_put(root);
    return file;
}

/* Do @a and @b name the same file (or, either gone, the same path)? */
static bool same_path(const char *a, const char *b)
{
    char *ra = realpath(a, NULL), *rb = realpath(b, NULL);
    bool same = ra && rb ? !strcmp(ra, rb) : !strcmp(a, b);

    free(ra);
    free(rb);
    return same;
}

/* The string member @key of journal object @j (NULL when none). */
static const char *jo_str(json_object *j, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(j, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

/* The path of image @key of journal object @j (NULL when none). */
static const char *jo_image(json_object *j, const char *key)
{
    json_object *images, *img;

    return json_object_object_get_ex(j, "images", &images) &&
                   json_object_object_get_ex(images, key, &img)
               ? jo_str(img, "path")
               : NULL;
}

bool job_journal_snapshot_switched(json_object *j)
{
    const char *state = jo_str(j, "agent-state"), *step = jo_str(j, "state");
    json_object *v;
    int n = json_object_object_get_ex(j, "disks", &v) ? json_object_get_int(v) : 0;
    bool all = n > 0;

    if (!jbool_member(j, "live")) {
        return false;
    }
    if (!state) {
        /* (no state file: the overlays, each over its disk's old top, hold
         * every write once the switch may have been made) */
        return step && !strcmp(step, "switching");
    }
    for (int i = 1; i <= n && all; i++) {
        char key[32], *top;
        const char *ov;
        snprintf(key, sizeof(key), "disk-%d", i);
        top = jo_str(j, key) ? state_top(state, jo_str(j, key)) : NULL;
        snprintf(key, sizeof(key), "overlay-%d", i);
        ov = jo_image(j, key);
        all = top && ov && same_path(top, ov);
        free(top);
    }
    return all;
}

/*
 * Name each @files[k] (format @fmts[k]) as disk @disks[k]'s top in the
 * agent's state file @state, all in one write.  0, or 1 (said).
 */
static int state_set_tops(const char *state, int n, const char *const *disks,
                          const char *const *files, const char *const *fmts)
{
    json_object *root = json_object_from_file(state), *list, *v;
    struct error *err = NULL;
    int r;

    if (!root || !json_object_object_get_ex(root, "disks", &list) ||
        !json_object_is_type(list, json_type_array)) {
        error_report("'%s': not an agent's state file", state);
        json_object_put(root);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        bool found = false;
        for (size_t k = 0; disks[i] && files[i] && k < json_object_array_length(list); k++) {
            json_object *d = json_object_array_get_idx(list, k);
            if (json_object_object_get_ex(d, "name", &v) &&
                !strcmp(json_object_get_string(v), disks[i])) {
                json_object_object_add(d, "file", json_object_new_string(files[i]));
                json_object_object_add(d, "format", json_object_new_string(fmts[i]));
                /* (the restarted agent names the new chain's images) */
                json_object_object_add(d, "node-names", json_object_new_array());
                found = true;
            }
        }
        if (!found) {
            error_report("'%s' has no disk '%s'", state, disks[i] ? disks[i] : "?");
            json_object_put(root);
            return 1;
        }
    }
    r = json_file_replace(state, root, 0600, &err);
    json_object_put(root);
    if (r < 0) {
        report(err);
        return 1;
    }
    return 0;
}

/* Name @file (format @fmt) as disk @disk's top in the agent's state file. */
static int state_set_top(const char *state, const char *disk, const char *file, const char *fmt)
{
    return state_set_tops(state, 1, &disk, &file, &fmt);
}

int job_journal_snapshot_switch(struct journal *j)
{
    const char *state = journal_get_str(j, "agent-state");
    int n = (int)journal_get_u64(j, "disks"), r;
    const char **disks, **files, **fmts;

    if (!state) {
        return 0;
    }
    disks = xcalloc((size_t)n + 1, sizeof(*disks));
    files = xcalloc((size_t)n + 1, sizeof(*files));
    fmts = xcalloc((size_t)n + 1, sizeof(*fmts));
    /* every disk in one write: all on their overlays, or (a crash) none */
    for (int i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof(key), "disk-%d", i + 1);
        disks[i] = journal_get_str(j, key);
        snprintf(key, sizeof(key), "overlay-%d", i + 1);
        files[i] = journal_image_path(j, key);
        fmts[i] = "qcow2";
    }
    r = state_set_tops(state, n, disks, files, fmts);
    free(disks);
    free(files);
    free(fmts);
    return r;
}

void job_journal_live_view(json_object *j)
{
    json_object *v, *images, *tgt_o, *path;
    const char *state, *disk, *tgt, *type = jo_str(j, "type");
    char *top;

    if (jbool_member(j, "live") && type && !strcmp(type, "snapshot")) {
        /* the overlays, once the agent's state file names them */
        json_object *dv;
        int n = json_object_object_get_ex(j, "disks", &dv) ? json_object_get_int(dv) : 0;
        char *auth = xstrdup("");
        if (!job_journal_snapshot_switched(j)) {
            free(auth);
            return;
        }
        for (int i = 1; i <= n; i++) {
            char key[32], *t;
            snprintf(key, sizeof(key), "overlay-%d", i);
            t = xasprintf("%s%s%s", auth, i > 1 ? ", " : "", jo_image(j, key) ?: "?");
            free(auth);
            auth = t;
        }
        json_object_object_add(j, "authoritative", json_object_new_string(auth));
        json_object_object_add(j, "state", json_object_new_string("switched"));
        free(auth);
        return;
    }
    if (!jbool_member(j, "live") || !json_object_object_get_ex(j, "agent-state", &v)) {
        return;
    }
    state = json_object_get_string(v);
    disk = json_object_object_get_ex(j, "disk", &v) ? json_object_get_string(v) : NULL;
    tgt = json_object_object_get_ex(j, "images", &images) &&
                  json_object_object_get_ex(images, "target", &tgt_o) &&
                  json_object_object_get_ex(tgt_o, "path", &path)
              ? json_object_get_string(path)
              : NULL;
    top = disk ? state_top(state, disk) : NULL;
    if (top && tgt && !strcmp(top, tgt)) {
        json_object_object_add(j, "authoritative", json_object_new_string(tgt));
        json_object_object_add(j, "state", json_object_new_string("pivoted"));
    }
    free(top);
}


/*
 * Bring a live mirror's (or active commit's) target in step with its
 * source, offline: what the bulk copy had not done (from "copied") and
 * the regions the write-intent bitmap marks.  The target flushed: 0, or
 * 1 (said).
 */
static int live_catch_up(struct journal *j)
{
    const char *src_path = journal_image_path(j, "source"), *tgt_path = journal_image_path(j, "target");
    const char *wpath = journal_get_str(j, "write-intent-bitmap");
    const char *tfmt = journal_get_str(j, "target-format"), *type = journal_get_str(j, "type");
    json_object *qa = NULL, *v;
    struct error *err = NULL;
    struct bdev *src = NULL, *dst = NULL;
    struct dirty_bitmap *marked = NULL;
    struct wib *w = NULL;
    uint64_t copied = journal_get_u64(j, "copied"), done = 0, pos = 0, off, len;
    bool commit = type && !strcmp(type, "commit"), top = false;
    int ret = 1, r;

    json_object_object_get_ex(j->root, "qmp-args", &qa);
    if (qa && json_object_object_get_ex(qa, "sync", &v)) {
        top = !strcmp(json_object_get_string(v), "top");
    }
    if (job_journal_check(&(struct job_journal){ .j = j, .state = "copying" }, "source", "target",
                          NULL)) {
        return 1;
    }
    src = bdev_open(src_path, NULL, 0, &err);
    if (src) {
        /* (an active commit's target is the source's own base, in its chain) */
        dst = commit ? bdev_chain_find(src, tgt_path) : bdev_open(tgt_path, tfmt, BDEV_O_RDWR, &err);
        if (commit && dst && bdev_reopen(dst, BDEV_O_RDWR, &err) < 0) {
            dst = NULL;
        } else if (commit && !dst && !err) {
            error_setg(&err, "'%s' is no longer below '%s'", tgt_path, src_path);
        }
    }
    if (!src || !dst) {
        report(err);
        goto out;
    }
    w = wib_open(wpath, &err);
    if (!w) {
        report(err);
        goto out;
    }
    marked = bitmap_new(src->size, wib_granularity(w));
    while (wib_next(w, pos, &off, &len)) {
        bitmap_set(marked, off, len);
        pos = off + len;
    }
    for (int pass = 0; pass < 2; pass++) {
        struct copy_params cp;
        memset(&cp, 0, sizeof(cp));
        cp.src = src;
        cp.dst = dst;
        cp.check_dst_zero = true;
        cp.no_flush = pass == 0;
        if (pass == 0) {
            /* what the bulk copy had yet to do, as it would have */
            if (copied >= src->size) {
                continue;
            }
            cp.mode = commit || top ? COPY_ABOVE : COPY_ALL;
            cp.base = commit ? dst : top ? src->backing : NULL;
            cp.start = copied;
        } else {
            /* the regions the guest may have written since they were copied */
            cp.mode = COPY_BITMAP;
            cp.bitmap = marked;
        }
        r = copy_run(&cp, &err);
        if (r < 0) {
            report(err);
            goto out;
        }
        done += cp.bytes_written + cp.bytes_zeroed;
    }
    r = bdev_flush(dst);
    if (r < 0) {
        bdev_report_io_error(dst, "cannot flush", r);
        goto out;
    }
    fprintf(stderr, "blockctl: job %s: copied %" PRIu64 " bytes from offset %" PRIu64
            " and the marked regions\n", j->id, done, copied);
    ret = 0;
out:
    bitmap_free(marked);
    wib_close(w, false);
    if (dst && !commit && bdev_close(dst, &err) < 0) {
        report(err);
        ret = 1;
    }
    if (src && bdev_close(src, &err) < 0) {
        report(err);
        ret = 1;
    }
    return ret;
}

/*
 * An agent's job that an offline command finishes (its journal holds the
 * command's arguments): a stream, a snapshot.
 */
static bool live_offline_kind(const char *type)
{
    return type && (!strcmp(type, "stream") || !strcmp(type, "snapshot"));
}

/* Drop the journal of a live job (and its write-intent bitmap): 0, or 1. */
static int live_end(struct journal *j)
{
    struct error *err = NULL;
    const char *wpath = journal_get_str(j, "write-intent-bitmap");

    if (wpath) {
        (void)io_unlink(wpath);
    }
    if (journal_end(j, &err) < 0) {
        report(err);
        return 1;
    }
    return 0;
}

int job_journal_finish_live(const char *state_dir, const char *id, bool pivot)
{
    struct journal *j = load_interrupted(state_dir, id);
    const char *state, *disk, *src, *tgt;
    char *top = NULL, *full_id;
    int ret = 1;

    if (!j) {
        return 1;
    }
    if (live_offline_kind(journal_get_str(j, "type"))) {
        error_report("job %s is an agent's %s: 'blockctl job resume %s' finishes it (only a "
                     "mirror of an agent pivots)", j->id, journal_get_str(j, "type"), j->id);
        journal_free(j);
        return 1;
    }
    if (!jbool_member(j->root, "live")) {
        error_report("job %s is not an agent's job%s", j->id,
                     pivot ? ": only a mirror of an agent pivots" : "");
        journal_free(j);
        return 1;
    }
    state = journal_get_str(j, "agent-state");
    disk = journal_get_str(j, "disk");
    src = journal_image_path(j, "source");
    tgt = journal_image_path(j, "target");
    top = state && disk ? state_top(state, disk) : NULL;
    full_id = xstrdup(j->id);
    if (top && tgt && !strcmp(top, tgt)) {
        /* the pivot was done, and named in the state file, before the crash */
        printf("Job %s had pivoted: '%s' holds disk %s\n", full_id, tgt, disk);
        ret = live_end(j);
        j = NULL;
    } else if (pivot && !state) {
        error_report("job %s: its agent kept no state file (--state): nothing to pivot", j->id);
    } else if (live_catch_up(j) == 0) {
        if (pivot && state_set_top(state, disk, tgt, journal_get_str(j, "target-format")) != 0) {
            error_report("job %s: '%s' and '%s' agree; the agent still opens '%s'", j->id, src,
                         tgt, src);
        } else {
            if (pivot) {
                printf("Pivoted: '%s' holds disk %s (in '%s')\n", tgt, disk, state);
            } else {
                printf("'%s' and '%s' agree; '%s' holds disk %s\n", src, tgt, src, disk);
            }
            ret = live_end(j);
            j = NULL;
        }
    }
    if (ret == 0) {
        printf("Job %s finished\n", full_id);
    }
    free(full_id);
    free(top);
    journal_free(j);
    return ret;
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
    if (jbool_member(j->root, "live") && !live_offline_kind(type)) {
        journal_free(j);
        return job_journal_finish_live(state_dir, id, false);
    }
    if (!json_object_object_get_ex(j->root, "argv", &argv_o) ||
        !json_object_is_type(argv_o, json_type_array) || !type ||
        (strcmp(type, "mirror") && strcmp(type, "stream") && strcmp(type, "commit") &&
         strcmp(type, "snapshot") && strcmp(type, "bitmap"))) {
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
    /* the command's name, the options of the resume, then its own arguments
     * (options before operands: argp takes them so whatever the command) */
    argv[argc++] = xstrdup(n ? json_object_get_string(json_object_array_get_idx(argv_o, 0)) : type);
    sd = journal_state_dir(state_dir);
    argv[argc++] = xstrdup("--state-dir");
    argv[argc++] = sd;
    argv[argc++] = xstrdup("--resume");
    argv[argc++] = xstrdup(j->id);
    for (size_t i = 1; i < n; i++) {
        argv[argc++] = xstrdup(json_object_get_string(json_object_array_get_idx(argv_o, i)));
    }
    argv[argc] = NULL;
    if (!strcmp(type, "snapshot") || !strcmp(type, "bitmap")) {
        fprintf(stderr, "blockctl: resuming %s job %s (%s)\n", type, j->id,
                journal_get_str(j, "state") ?: "?");
    } else {
        fprintf(stderr, "blockctl: resuming %s job %s (%s, %llu of %llu bytes copied)\n", type,
                j->id, journal_get_str(j, "state") ?: "?",
                (unsigned long long)journal_get_u64(j, "copied"),
                (unsigned long long)journal_get_u64(j, "total"));
    }
    ret = !strcmp(type, "mirror")     ? cmd_mirror(argc, argv)
          : !strcmp(type, "stream")   ? cmd_stream(argc, argv)
          : !strcmp(type, "snapshot") ? cmd_snapshot(argc, argv)
          : !strcmp(type, "bitmap")   ? cmd_bitmap(argc, argv)
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
    bool taken = false;
    char *full_id;

    if (!j) {
        return 1;
    }
    type = journal_get_str(j, "type") ?: "?";
    state = journal_get_str(j, "state") ?: "?";
    if (jbool_member(j->root, "live") && !strcmp(type, "stream")) {
        /* (what it copied is what the chain read: the top reads the same) */
        printf("'%s' reads as before the stream (its backing file is left as %s)\n",
               journal_image_path(j, "top") ?: "?",
               strcmp(state, "relinking") ? "it was" : "it is on disk, old or new");
    } else if (jbool_member(j->root, "live") && !strcmp(type, "snapshot") &&
               job_journal_snapshot_switched(j->root)) {
        /* the guest may have written the overlays: they stay */
        job_journal_live_view(j->root);
        printf("The snapshot had been taken (the agent's state file names the overlays, "
               "which the guest may have written): it stays\n");
        taken = true;
    } else if (jbool_member(j->root, "live") && !strcmp(type, "snapshot")) {
        /* not switched: as an offline snapshot's, below */
    } else if (jbool_member(j->root, "live")) {
        const char *st = journal_get_str(j, "agent-state"), *disk = journal_get_str(j, "disk");
        const char *tgt = journal_image_path(j, "target");
        char *top = st && disk ? state_top(st, disk) : NULL;
        if (top && tgt && !strcmp(top, tgt)) {
            printf("The job had pivoted: '%s' holds disk %s\n", tgt, disk);
        } else {
            printf("'%s' is incomplete: do not use it\n", tgt ? tgt : "?");
            printf("'%s' holds the disk\n", journal_image_path(j, "source") ?: "?");
        }
        free(top);
        full_id = xstrdup(j->id);
        if (live_end(j) != 0) {
            free(full_id);
            return 1;
        }
        printf("Job %s aborted\n", full_id);
        free(full_id);
        return 0;
    }
    if (!strcmp(type, "mirror")) {
        const char *part = journal_image_path(j, "part"), *target = journal_image_path(j, "target");
        if (part && journal_check_image(j, "part", &err) == 0) {
            int r = io_unlink(part);
            if (r < 0 && r != -ENOENT) {
                error_report("cannot remove '%s': %s", part, strerror(-r));
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
    if (!strcmp(type, "snapshot") && !taken) {
        /* the overlays it made go: the IMAGEs hold the disks, as before */
        if (snapshot_journal_abort(j) != 0) {
            error_report("job %s is left to abort again", j->id);
            journal_free(j);
            return 1;
        }
        printf("The disks are on their images as before the snapshot\n");
    }
    if (!strcmp(type, "bitmap")) {
        /* one header write switched to the new bitmaps, or did not */
        int r = bitmap_journal_applied(j);
        printf("%s\n", r > 0    ? "The actions had taken effect, all of them: they stay"
                       : r == 0 ? "None of the actions had taken effect"
                                : "Whether the actions took effect is not known");
    }
    auth = journal_get_str(j, "authoritative");
    if (auth && !strcmp(type, "snapshot")) {
        printf("'%s' hold the disks\n", auth);
    } else if (auth) {
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
