/*
 * blockctl - job journals: what an interrupted job was doing
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Every job that changes images writes a journal before it changes
 * anything, updates it at each step that matters (a state name, and how
 * far the copy got: everything below "copied" is on the target and
 * flushed), and removes it when it ends.  A journal left behind is an
 * interrupted job: `blockctl job list` shows it, `job resume` finishes it
 * and `job abort` rolls it back.
 *
 * Journals are JSON files STATE_DIR/jobs/ID.json, replaced atomically
 * (a temporary file, fsync, rename, fsync of the folder).  They name each
 * image by absolute path and by identity (device and inode; for an image
 * the job does not write, also its size and a checksum of its first
 * sector), so that an image moved or replaced meanwhile is noticed rather
 * than trusted.
 */
#ifndef BLOCKCTL_LIB_JOURNAL_H
#define BLOCKCTL_LIB_JOURNAL_H

#include "lib/compiler.h"
#include "lib/error.h"

#include <json-c/json.h>

/*
 * The state directory: @opt (--state-dir), else $BLOCKCTL_STATE_DIR, else
 * /var/lib/blockctl for root, else $XDG_STATE_HOME/blockctl
 * (~/.local/state/blockctl).  Allocated.
 */
char *journal_state_dir(const char *opt);

/*
 * Seconds between two checkpoints of a copy (each flushes the target):
 * 5, or $BLOCKCTL_CHECKPOINT_SECS (tests: 0, at every look).
 */
double journal_checkpoint_secs(void);

/* Is process @pid alive (not gone, not a zombie)? */
bool journal_pid_alive(int64_t pid);
/* When process @pid started (/proc/PID/stat's starttime), 0 if unknown. */
uint64_t journal_pid_start(int64_t pid);
/*
 * Is the process that wrote journal object @root alive: its "pid" alive
 * and, where the journal recorded it, started when "pid-start" says (not
 * another process that reuses the number)?
 */
bool journal_owner_alive(json_object *root);

/* Replace @path by @root's text atomically (mode @mode for a new file). */
int json_file_replace(const char *path, json_object *root, int mode, struct error **errp);

struct journal {
    char *path;             /* STATE_DIR/jobs/ID.json */
    char *id;
    json_object *root;
    double saved_at;        /* CLOCK_MONOTONIC seconds of the last save */
};

/* Image roles whose content the job does not change: identity checked in full. */
enum journal_role { JR_READ, JR_WRITE };

/*
 * Start the journal of a @type job ("mirror", "stream", "commit") run as
 * @argv (stored with the working directory, so that `job resume` can run
 * it again) in @state_dir (NULL: the default).  Nothing is written until
 * journal_save.  NULL with *errp set when the state directory cannot be
 * made.
 */
struct journal *journal_new(const char *state_dir, const char *type, int argc, char **argv,
                            struct error **errp);
/* Record image @path in @role under @key ("source", "target", ...). */
void journal_add_image(struct journal *j, const char *key, const char *path,
                       enum journal_role role);
/*
 * The same with the identity of the file @id_of (NULL: @path), e.g. a
 * file made under a hidden name and renamed to @path once complete.
 */
void journal_add_image_as(struct journal *j, const char *key, const char *path,
                          const char *id_of, enum journal_role role);
/* Set a string member ("state", "authoritative", ...); NULL removes it. */
void journal_set_str(struct journal *j, const char *key, const char *val);
void journal_set_u64(struct journal *j, const char *key, uint64_t val);
const char *journal_get_str(struct journal *j, const char *key);
uint64_t journal_get_u64(struct journal *j, const char *key);
/* This process owns @j now ("pid", "pid-start"; saved with the next save). */
void journal_set_owner(struct journal *j);
/* Write it (atomically).  0 or -errno with *errp set. */
int journal_save(struct journal *j, struct error **errp);
/*
 * A copy's checkpoint: once everything under @below is on @dst (flushed),
 * "copied" says so (saved).  Nothing when it says as much already.
 * 0, or -errno with *errp set.
 */
struct bdev;
int journal_checkpoint_copied(struct journal *j, struct bdev *dst, uint64_t below,
                              struct error **errp);
/* The state @state, then saved. */
int journal_step(struct journal *j, const char *state, struct error **errp);
/* The job ended: remove the journal (and free @j).  0 or -errno. */
int journal_end(struct journal *j, struct error **errp);
/* Free @j, leaving its file as it is (an interrupted job). */
void journal_free(struct journal *j);

/* Load journal @id (an ID or a unique prefix of one) from @state_dir. */
struct journal *journal_load(const char *state_dir, const char *id, struct error **errp);
/* Every journal in @state_dir, as a new array (empty when none). */
int journal_list(const char *state_dir, json_object **out, struct error **errp);
/*
 * Is image @key of @j still the one recorded?  0, or -ESTALE with *errp
 * saying what changed (-ENOENT when it is gone).
 */
int journal_check_image(struct journal *j, const char *key, struct error **errp);
/* Does the journal record the identity of image @key (it existed then)? */
bool journal_image_known(struct journal *j, const char *key);
/* The path of image @key (NULL when none). */
const char *journal_image_path(struct journal *j, const char *key);
/*
 * The journals that name the file @path (by identity, or by path when it
 * does not exist): a new array of their objects (empty when none).
 */
json_object *journal_find_image(const char *state_dir, const char *path);
/*
 * A snapshot's rollback: remove the overlays (images overlay-1 ...
 * overlay-N) the job made, those whose identity the journal recorded and
 * which are still those files, and any half-made one under blockctl's
 * hidden name; @removed (if set) is told of each overlay removed.  0, or
 * -errno with *errp set by the first failure (the other overlays are
 * still tried).
 */
int journal_remove_overlays(struct journal *j, void (*removed)(void *opaque, const char *path),
                            void *opaque, struct error **errp);

#endif
