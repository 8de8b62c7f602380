/*
 * blockctl - the agent: disks served over NBD, controlled over QMP
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The agent owns a set of disks (struct agent_disk: a name, a struct blk
 * whose top changes under snapshots and pivots, options).  Its control
 * path runs in one thread, the main loop (lib/loop.h): QMP commands,
 * signals, graph changes, the state file.  Guest I/O runs on the NBD
 * server's connection threads and the worker pool.
 *
 * Files: agent.c (start, disks, shutdown, logging), state.c (the state
 * file), qmp-block.c (queries), qmp-bitmap.c (dirty bitmaps), transaction.c
 * (blockdev-snapshot-sync and transaction), qmp-export.c (block-export-*),
 * qmp-job.c (block jobs: block-stream, the job verbs and queries),
 * qmp-resize.c (block_resize, change-backing-file).
 */
#ifndef BLOCKCTL_LIB_AGENT_H
#define BLOCKCTL_LIB_AGENT_H

#include "lib/compiler.h"
#include "lib/blk.h"
#include "lib/block.h"
#include "lib/error.h"
#include "lib/job.h"
#include "lib/loop.h"
#include "lib/pool.h"
#include "lib/qmp/qmp.h"
#include "lib/nbdsrv/nbdsrv.h"

#include <sys/types.h>

/* How a disk was asked for on the command line or in the state file. */
struct agent_disk_spec {
    char *name;
    char *file;
    char *format;                /* NULL: probe */
    bool read_only;
    bool copy_on_read;
    char **node_names;           /* from the state file: top first; NULL-ended */
};

struct agent_disk {
    char *name;
    struct blk *blk;
    bool read_only;
    bool copy_on_read;
    unsigned next_node;          /* for generated node names */
    struct bdev *pending_top;    /* the top about to be (the state file names it) */
    struct agent_disk *next;
};

/* An export added with block-export-add (the default ones are per disk). */
struct agent_export {
    char *id;
    struct blk *blk;             /* our reference */
    struct bdev *bd;             /* a backing image exported: our reference */
    struct agent_export *next;
};

struct agent_config {
    const char *qmp_path;
    mode_t socket_mode;          /* QMP and NBD UNIX sockets */
    const char *const *nbd_addrs;/* "unix:PATH" or "tcp:HOST:PORT", NULL-ended */
    const char *state_path;      /* NULL: no state file */
    const char *state_dir;       /* the jobs' journals (NULL: the default) */
    struct agent_disk_spec *disks;
    size_t nr_disks;
    bool use_syslog;
    struct nbdsrv_tls_opts tls;  /* NBD over TLS (mode NBDSRV_TLS_OFF: none) */
};

struct agent {
    struct agent_config cfg;
    struct loop *loop;
    struct workpool *pool;
    struct nbdsrv *nbd;
    struct qmp_server *qmp;
    struct agent_disk *disks;
    struct agent_export *exports;
    struct job_list jobs;        /* qmp-job.c */
    struct agent_node *nodes;    /* blockdev-add's (qmp-node.c) */
    int sigfd;
    struct journal *restoring;   /* a job being restored from its journal (start-up) */
    struct journal *snap_jn;     /* a transaction's snapshots' journal (transaction.c) */
    int snap_n;                  /* how many disks it names so far */
    bool quitting;
    bool ready;                  /* started: with use_syslog, log there from now on (atomic: pool threads log) */
};

/* Run the agent until SIGTERM, SIGINT or QMP quit; returns the exit status. */
int agent_run(const struct agent_config *cfg, void (*ready)(void *opaque), void *opaque);

/* Log one line (stderr, or syslog once daemonized). */
void agent_log(struct agent *a, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
/* Where agent_log's lines go until syslog takes over (one timestamped
 * line, no newline; the caller prints it); unset, they are dropped. */
void agent_set_log_sink(void (*sink)(const char *line));

/* Disks and nodes */
struct agent_disk *agent_find_disk(struct agent *a, const char *name);
/*
 * Resolve a QMP node argument: a disk name (its current top) or a node
 * name of an image in some disk's chain.  *disk (if non-NULL) gets the
 * disk.  NULL and QEMU's GenericError "Cannot find device='NAME' nor
 * node-name='NAME'" when nothing matches.
 */
struct bdev *agent_find_node(struct agent *a, const char *name, struct agent_disk **disk,
                             struct error **errp);
/* Do paths @a and @b name the same existing file? */
bool agent_same_file(const char *a, const char *b);
/* The image of @top's chain (@top included) that is the file @path, or NULL. */
struct bdev *agent_chain_find_file(struct bdev *top, const char *path);
/* The disk whose chain contains @bd, or NULL. */
struct agent_disk *agent_disk_of(struct agent *a, struct bdev *bd);
/* A new node name for an image of @d ("NAME-N"). */
char *agent_new_node_name(struct agent *a, struct agent_disk *d);
/* Give every image of @bd's chain without a node name one. */
void agent_name_nodes(struct agent *a, struct agent_disk *d, struct bdev *bd);

/* The state file (state.c) */
/* Write the state file for the current disks (atomically); 0 or -errno. */
int agent_state_save(struct agent *a, struct error **errp);
/* Read the disks of a state file; -ENOENT if it does not exist. */
int agent_state_load(const char *path, struct agent_disk_spec **disks, size_t *n,
                     struct error **errp);
void agent_disk_specs_free(struct agent_disk_spec *d, size_t n);

/* QMP command tables of the parts */
extern const struct qmp_command agent_block_commands[];
extern const struct qmp_command agent_bitmap_commands[];
extern const struct qmp_command agent_transaction_commands[];
extern const struct qmp_command agent_export_commands[];
extern const struct qmp_command agent_job_commands[];
extern const struct qmp_command agent_mirror_commands[];
extern const struct qmp_command agent_node_commands[];
extern const struct qmp_command agent_resize_commands[];

/* Nodes of blockdev-add (qmp-node.c) */
struct agent_node;
bool agent_node_exists(struct agent *a, const char *name);
/* The image of node @name (a file node is opened raw), or NULL and QEMU's error. */
struct bdev *agent_node_bdev(struct agent *a, const char *name, struct error **errp);
/* A pivot made @bd a disk's top: its node (if one) is the disk's from now on. */
void agent_node_adopted(struct agent *a, struct bdev *bd);
void agent_nodes_free(struct agent *a);
/* The opened nodes, one after the other (NULL: the first; returns NULL after the last). */
struct bdev *agent_nodes_next(struct agent *a, struct bdev *prev);

/* Jobs (qmp-job.c) */
void agent_jobs_init(struct agent *a);
/*
 * At start-up: the live jobs a killed agent with this state file left
 * (their journals): mirrors, active commits and streams come back as
 * paused jobs, to go on with job-resume (or to cancel); those that had
 * pivoted (relinked), or whose disk moved, end; snapshot transactions
 * are ended (agent_snapshot_restore).
 */
void agent_jobs_restore(struct agent *a);
/*
 * The same for one interrupted live stream (qmp-job.c): back as a paused
 * job that goes on from the journal's checkpoint, or, the relink done
 * before the kill, ended.  Takes @j.
 */
void agent_stream_restore(struct agent *a, struct journal *j);
/*
 * An interrupted transaction's snapshots (transaction.c), at start-up:
 * taken if the state file (the tops just opened) names every overlay,
 * else rolled back (the overlays it made removed): the journal ends.
 * Left as it is, and said, when neither holds.  Takes @j.
 */
void agent_snapshot_restore(struct agent *a, struct journal *j);
/* Shutdown: cancel the jobs; true if some are still ending (the main loop
 * then runs until they have, and quits). */
bool agent_jobs_shutdown(struct agent *a);
/* Grouped pivot of mirror / active commit jobs: all or none (qmp-mirror.c). */
int agent_jobs_complete_group(struct agent *a, struct job **jobs, size_t n,
                              struct error **errp);
/* A disk with a job refuses graph changes: 0, or -EBUSY with QEMU's
 * "Node 'NODE' is busy" error. */
int agent_disk_check_busy(struct agent *a, struct agent_disk *d, const char *node,
                          struct error **errp);

/* Events (any thread) */
void agent_event(struct agent *a, const char *name, json_object *data);

/* Exports (qmp-export.c) */
int agent_export_disk(struct agent *a, struct agent_disk *d, struct error **errp);
void agent_exports_free(struct agent *a);
void agent_export_gone(struct agent *a, const char *id);

#endif
