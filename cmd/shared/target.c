/*
 * blockctl - the target of an offline copy (mirror, convert): an existing
 * image or NBD export written in place, or a new image built as
 * TARGET.part and renamed into place once complete
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/copy.h"
#include "lib/io.h"
#include "lib/journal.h"
#include "formats/format.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "cmd/cmd.h"

bool target_refuse_own_chain(struct bdev *src, const char *source, const char *target,
                             bool reuse, const char *cmd)
{
    char *part = NULL;
    const char *name = target;
    struct bdev *hit = bdev_chain_find(src, target);

    if (!hit && !reuse && !nbd_is_uri(target)) {
        part = xasprintf("%s.part", target);
        hit = bdev_chain_find(src, part);
        name = part;
    }
    if (!hit) {
        free(part);
        return false;
    }
    {
        /* TARGET, or "TARGET.part (where the new TARGET is written)" */
        char *what = part ? xasprintf("'%s' (where the new '%s' is written)", part, target)
                          : xasprintf("'%s'", target);
        if (hit == src) {
            error_report("%s is the source '%s' itself: %s cannot write it", what, source, cmd);
        } else if (!strcmp(name, hit->filename)) {
            error_report("%s is in the backing chain of '%s': %s cannot write it", what,
                         source, cmd);
        } else {
            error_report("%s is '%s' of the backing chain of '%s': %s cannot write it",
                         what, hit->filename, source, cmd);
        }
        free(what);
    }
    free(part);
    return true;
}

/* An existing file that nobody uses (its locks say so), or the error. */
static int check_unused(const char *path, const char *why, struct error **errp)
{
    struct bfile *f = bfile_open(path, BDEV_CREATE_PERM, 0, errp);

    if (!f) {
        error_prefix(errp, "%s", why);
        return -EBUSY;
    }
    bfile_close(f, BDEV_CREATE_PERM, 0);
    return 0;
}

/*
 * Resuming into the TARGET.part a killed copy left: its leaks (clusters
 * allocated after the last checkpoint) are repaired quietly, and so are
 * the refcounts a power failure under its unordered writes left behind
 * its mappings (everything below the checkpoint was flushed whole; what is
 * above it is copied again).  false when it is still not sound after
 * that: the copy then starts it anew.
 */
static bool part_usable(const char *part, const char *fmt)
{
    struct error *err = NULL;
    struct check_result r;
    struct bdev *bd = bdev_open(part, fmt, BDEV_O_RDWR | BDEV_O_CHECK | BDEV_O_NO_BACKING, &err);
    int saved, null;
    bool ok;

    if (!bd) {
        error_free(err);
        return false;
    }
    /* (the driver's check prints what it finds: not a user's business here) */
    fflush(stderr);
    saved = dup(STDERR_FILENO);
    null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (saved >= 0 && null >= 0) {
        dup2(null, STDERR_FILENO);
    }
    /* (a repair can leave some for another pass: a mapping past the end
     * of the file moves the refcount structures there; as in qemu-img) */
    ok = !bd->drv->check;
    for (int pass = 0; pass < 3 && !ok; pass++) {
        memset(&r, 0, sizeof(r));
        if (bd->drv->check(bd, &r, CHECK_FIX_LEAKS | CHECK_FIX_ERRORS, &err) < 0 ||
            r.check_errors) {
            break;
        }
        if (!r.corruptions_fixed && !r.corruptions) {
            ok = true;
        } else {
            /* (what the repair left: looked at again) */
            memset(&r, 0, sizeof(r));
            ok = bd->drv->check(bd, &r, 0, &err) == 0 && !r.corruptions && !r.check_errors;
            if (!ok) {
                error_free(err);
                err = NULL;
            }
        }
    }
    fflush(stderr);
    if (saved >= 0 && null >= 0) {
        dup2(saved, STDERR_FILENO);
    }
    if (saved >= 0) {
        close(saved);
    }
    if (null >= 0) {
        close(null);
    }
    error_free(err);
    err = NULL;
    if (bdev_close(bd, &err) < 0) {
        error_free(err);
        ok = false;
    }
    return ok;
}

/*
 * How TARGET.part is opened.  A new image: a power failure makes it
 * garbage anyway, so no ordering syncs while it is built (it is flushed at
 * the end, and at each checkpoint of the journal), unless a journal is to
 * resume it and it has a backing file: the copy then writes only some of
 * it (--sync=bitmap, top), and what a resume does not copy again must be
 * what the copy left, not a cluster mapped before its data reached the
 * disk.
 */
static unsigned part_flags(const struct copy_target *t)
{
    bool ordered = t->jj && t->o && opts_get(t->o, "backing_file");

    return BDEV_O_RDWR | (ordered ? 0 : BDEV_O_UNORDERED) |
           (t->no_backing ? BDEV_O_NO_BACKING : 0);
}

/* Resuming a job: go on with the TARGET.part it left (0), or not (1). */
static int target_resume(struct copy_target *t)
{
    struct job_journal *jj = t->jj;
    const char *part = journal_image_path(jj->j, "part");
    const char *target = t->path ? t->path : t->name;
    struct error *err = NULL;
    struct stat st;
    bool after_copy = !strcmp(jj->state, "installing") || !strcmp(jj->state, "clearing-bitmap");

    if (!part || (strcmp(jj->state, "copying") && !after_copy)) {
        return 1;
    }
    if (after_copy && stat(part, &st) < 0 && stat(target, &st) == 0) {
        t->installed = true;
        return 0;
    }
    if (journal_check_image(jj->j, "part", NULL) < 0 || !part_usable(part, t->fmt)) {
        return 1;
    }
    t->part = xstrdup(part);
    t->dst = bdev_open(t->part, t->fmt, part_flags(t) | t->cache, &err);
    if (!t->dst) {
        report(err);
        free(t->part);
        t->part = NULL;
        return 1;
    }
    t->created = t->resumed = true;
    t->copied = after_copy;
    return 0;
}

int target_open(struct copy_target *t)
{
    struct error *err = NULL;
    struct stat st;
    int r;

    if (t->reuse || nbd_is_uri(t->name)) {
        bool nbd = nbd_is_uri(t->name);
        /* With its chain: whether the target already reads zero depends on it. */
        t->dst = bdev_open(t->name, nbd ? NULL : t->fmt,
                           BDEV_O_RDWR | t->cache | (nbd && t->unsafe ? BDEV_O_UNORDERED : 0),
                           &err);
        if (!t->dst) {
            report(err);
            return 1;
        }
        if (t->dst->size < t->size) {
            error_report("'%s': output file is smaller than input file (%" PRIu64 " < %" PRIu64
                         " bytes)", t->name, t->dst->size, t->size);
            return 1;
        }
        if (t->jj) {
            t->resumed = t->jj->state != NULL;
            if (job_journal_step(t->jj, "copying")) {
                return 1;
            }
            /* from now on TARGET changes: a failure leaves the job to resume
             * (a new TARGET.part is removed instead: nothing to finish) */
            t->keep_journal = true;
        }
        return 0;
    }
    if (t->jj && t->jj->state && target_resume(t) == 0) {
        return 0;
    }
    if (t->jj) {
        /* (a new job, or resumed without a usable TARGET.part: from the start) */
        t->jj->state = NULL;
        t->jj->copied = 0;
        journal_set_u64(t->jj->j, "copied", 0);
    }
    if (lstat(t->name, &st) == 0) {
        if (!t->replace) {
            error_report("'%s' already exists; use -n to copy into it", t->name);
            return 1;
        }
        if (S_ISLNK(st.st_mode)) {
            /* a symbolic link: the file it names is replaced, not the link */
            char *real = realpath(t->name, NULL);
            if (real) {
                t->path = real;
                if (stat(real, &st) < 0) {
                    st.st_mode = S_IFREG;
                }
            }
        }
        if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
            error_report("'%s' is not a regular file: use -n to copy into it", t->name);
            return 1;
        }
        if (S_ISREG(st.st_mode)) {
            /* a file a running VM (or another copy) uses is not replaced */
            if (check_unused(t->path ? t->path : t->name, "cannot replace it: ", &err) < 0) {
                error_prefix(&err, "'%s': ", t->name);
                report(err);
                return 1;
            }
        }
    }
    /*
     * A TARGET.part left by a killed copy is replaced; one that a running
     * copy is writing is locked, and refused.
     */
    t->part = xasprintf("%s.part", t->path ? t->path : t->name);
    if (t->jj) {
        journal_add_image(t->jj->j, "part", t->part, JR_WRITE);
        if (job_journal_step(t->jj, "creating")) {
            return 1;
        }
    }
    if (stat(t->part, &st) == 0) {
        char *why = xasprintf("another copy seems to be writing '%s': ", t->name);
        r = check_unused(t->part, why, &err);
        free(why);
        if (r < 0) {
            report(err);
            return 1;
        }
    }
    /*
     * TARGET.part itself appears only as a whole (empty) image: it is
     * built under a hidden name first, so that a kill while creating it
     * leaves no half-made image behind (the next copy replaces it).
     */
    {
        char *tmp;
        r = bdev_create_hidden(t->fmt, t->part, t->o, &tmp, &err);
        if (r == 0) {
            r = io_rename(tmp, t->part);
            if (r < 0) {
                error_setg_errno(&err, -r, "cannot rename '%s' to '%s'", tmp, t->part);
            }
        }
        if (r == 0 && t->jj) {
            /* the journal is to count on TARGET.part after a power failure */
            r = io_dirsync(t->part);
            if (r < 0) {
                (void)io_unlink(t->part);
                error_setg_errno(&err, -r, "cannot sync the folder of '%s'", t->part);
            }
        }
        if (r < 0) {
            (void)io_unlink(tmp);
            free(tmp);
            report(err);
            return 1;
        }
        free(tmp);
    }
    t->created = true;
    if (t->jj) {
        journal_add_image(t->jj->j, "part", t->part, JR_WRITE);   /* (its identity now) */
        if (job_journal_step(t->jj, "copying")) {
            return 1;
        }
    }
    t->dst = bdev_open(t->part, t->fmt, part_flags(t) | t->cache, &err);
    if (!t->dst) {
        report(err);
        return 1;
    }
    return 0;
}

int target_copy(struct copy_target *t, struct copy_params *cp)
{
    struct error *err = NULL;
    int r;

    if (t->resumed) {
        /* past "copied" the target may hold anything */
        cp->dst_is_zero = false;
        cp->check_dst_zero = true;
        cp->start = t->jj->copied;
    }
    if (t->jj && job_journal_checkpoints(t->jj, cp, t->dst)) {
        return 1;
    }
    r = copy_run(cp, &err);
    if (t->resumed && r == 0) {
        fprintf(stderr, "blockctl: job %s: copied %" PRIu64 " bytes from offset %" PRIu64 "\n",
                t->jj->j->id, cp->bytes_written + cp->bytes_zeroed, cp->start);
    }

    if (r == -ECANCELED) {
        error_report("interrupted: '%s' is incomplete%s", t->name,
                     t->created ? " and was removed" : "; do not use it");
        return cancel_exit_status();
    }
    if (r < 0) {
        report(err);
        if (!t->created) {
            error_report("'%s' is incomplete; do not use it", t->name);
        }
        return 1;
    }
    return 0;
}

int target_install(struct copy_target *t)
{
    struct error *err = NULL;
    struct bdev *dst = t->dst;

    t->dst = NULL;
    if (bdev_close(dst, &err) < 0) {
        report(err);
        return 1;
    }
    if (t->created) {
        if (t->jj && job_journal_step(t->jj, "installing")) {
            return 1;
        }
        /*
         * Never replace a TARGET that appeared meanwhile (unless replacing
         * is what was asked).  A failed folder sync takes a new TARGET
         * back: the same command can simply be run again.
         */
        bool renamed;
        int r = bdev_create_install(t->part, t->path ? t->path : t->name,
                                    t->replace ? BDEV_CREATE_FORCE : 0, &renamed, &err);
        if (renamed) {
            t->created = false;
        }
        if (r < 0) {
            report(err);
            return 1;
        }
    }
    return 0;
}

void target_cleanup(struct copy_target *t)
{
    if (t->dst) {
        bdev_unref(t->dst);
        t->dst = NULL;
    }
    if (t->created && t->part) {
        (void)io_unlink(t->part);
    }
    free(t->part);
    free(t->path);
    t->part = NULL;
    t->path = NULL;
}
