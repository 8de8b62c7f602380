/*
 * blockctl - the agent's transactions: actions prepared outside the drain,
 * applied inside it, all or none
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A QMP transaction (and a single blockdev-snapshot-sync or bitmap
 * command, which are one-action transactions) runs in four steps:
 *   prepare  outside any drain: checks, and the slow work that changes
 *            nothing the guest sees (creating and opening an overlay);
 *            or, for an action with a locate hook (the quick bitmap
 *            actions), inside the drain just before its apply, so that
 *            its checks see what the earlier actions did, as in QEMU
 *            (add a bitmap, then merge into it);
 *   apply    with every disk involved drained, in order: the switch
 *            (a new top, bitmap changes); quick and, after prepare, not
 *            expected to fail, but may (then the applied ones are undone);
 *   undo     take back an applied action (still drained);
 *   finish   after the drain, committed or not: release, remove what an
 *            aborted prepare created, make the change durable.
 */
#ifndef BLOCKCTL_LIB_AGENT_TXN_H
#define BLOCKCTL_LIB_AGENT_TXN_H

#include "lib/agent/agent.h"

struct txn_action;

struct txn_ops {
    const char *type;
    const struct qmp_arg *args;
    int (*prepare)(struct agent *a, struct txn_action *act, struct error **errp);
    int (*apply)(struct agent *a, struct txn_action *act, struct error **errp);
    void (*undo)(struct agent *a, struct txn_action *act);
    void (*finish)(struct agent *a, struct txn_action *act, bool committed);
    /* If set: the disk to drain (NULL if none: prepare says why), and
     * prepare runs drained, right before apply. */
    struct agent_disk *(*locate)(struct agent *a, struct txn_action *act);
};

struct txn_action {
    const struct txn_ops *ops;
    json_object *data;           /* the action's arguments (borrowed) */
    struct agent_disk *disk;     /* set by prepare: the disk to drain */
    bool prepared, applied;
    void *state;                 /* the action's own */
};

extern const struct txn_ops txn_snapshot_ops;
extern const struct txn_ops txn_bitmap_ops[];   /* ends with type NULL */
/* The bitmap actions' arguments (QAPI's BlockDirtyBitmapAdd,
 * BlockDirtyBitmap, BlockDirtyBitmapMerge) */
extern const struct qmp_arg txn_bitmap_add_args[], txn_bitmap_name_args[],
    txn_bitmap_merge_args[];

/* Run @n actions as one transaction. */
int txn_run(struct agent *a, struct txn_action *acts, size_t n, struct error **errp);

/* Argument helpers for handlers */
const char *txn_str(json_object *args, const char *key);
bool txn_bool(json_object *args, const char *key, bool dflt);
int64_t txn_int(json_object *args, const char *key, int64_t dflt);

#endif
