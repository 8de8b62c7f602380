/*
 * blockctl - the agent's transactions and live snapshots
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A live snapshot makes the pause the guest sees as short as it can be:
 * the overlay is created, opened and linked to the old top before any
 * drain, and the state file already names it (an empty overlay over the
 * old top reads exactly as the old top, so a crash at any point restarts
 * on a correct chain); under the drain only the disk's top pointer
 * changes and bitmaps are handed over; the old top is made read-only
 * after the drain (the guest no longer writes it).
 *
 * A transaction with snapshots keeps a job journal (type "snapshot", as
 * an offline `blockctl snapshot` does, with the same image-N/overlay-N
 * names and arguments): written before the first overlay is made, each
 * overlay's identity recorded before it takes its name, step "switching"
 * before the state file names the overlays, removed when the transaction
 * ends.  After a crash the agent restarted with its state file ends it
 * as `job abort` would (agent_snapshot_restore): the snapshot is taken if
 * the state file names every overlay (the guest may have written them),
 * else none is (those made are removed: the guest never wrote them, and
 * the client never saw the transaction succeed).  With the agent stopped,
 * `blockctl job resume` makes the missing overlays and names them all in
 * the state file instead, and `job abort` rolls back the same way.
 */
#include "lib/compiler.h"
#include "lib/agent/txn.h"
#include "lib/file.h"
#include "lib/io.h"
#include "lib/journal.h"
#include "lib/opts.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

const char *txn_str(json_object *args, const char *key)
{
    json_object *v;

    return args && json_object_object_get_ex(args, key, &v) &&
                   json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

bool txn_bool(json_object *args, const char *key, bool dflt)
{
    json_object *v;

    return args && json_object_object_get_ex(args, key, &v) &&
                   json_object_is_type(v, json_type_boolean)
               ? json_object_get_boolean(v)
               : dflt;
}

int64_t txn_int(json_object *args, const char *key, int64_t dflt)
{
    json_object *v;

    return args && json_object_object_get_ex(args, key, &v) &&
                   json_object_is_type(v, json_type_int)
               ? json_object_get_int64(v)
               : dflt;
}

/* --- blockdev-snapshot-sync --- */

/* QEMU's rule for a node name: a letter, then letters, digits, '-', '.',
 * '_', under 32 bytes in all. */
static bool node_name_ok(const char *n)
{
    size_t len = strlen(n);

    if (!len || len > 31 || !((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= 'A' && n[0] <= 'Z'))) {
        return false;
    }
    return strspn(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._") == len;
}

/* Does another process hold @file open for writing (QEMU's image locks)? */
static bool locked_by_another(const char *file)
{
    struct error *err = NULL;
    struct bfile *f = bfile_open(file, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL, &err);

    if (!f) {
        bool locked = err && strstr(err->msg, "lock");
        error_free(err);
        return locked;
    }
    bfile_close(f, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    return false;
}

struct snap {
    struct bdev *old_top;
    struct bdev *overlay;        /* our reference until applied */
    char *file;
    bool created;                /* we made the file (remove it on abort) */
    struct bitmap_undo *bm_old;  /* bitmaps disabled in the old top */
    struct bitmap_undo *bm_new;  /* namesakes added to the overlay */
};

/*
 * The journal names disk @d's snapshot: its top @top (IMAGE) and the
 * overlay @file (OVERLAY; one given, @existing, is not the job's to
 * remove: no identity recorded), as arguments of an offline snapshot too.
 */
static int snap_journal_add(struct agent *a, struct agent_disk *d, struct bdev *top,
                            const char *file, bool existing, struct error **errp)
{
    struct journal *j = a->snap_jn;
    const char *auth = journal_get_str(j, "authoritative");
    char key[32], *t;
    json_object *argv;
    int i = ++a->snap_n;

    snprintf(key, sizeof(key), "image-%d", i);
    journal_add_image(j, key, top->filename, JR_WRITE);
    t = xasprintf("%s%s%s", auth ? auth : "", auth ? ", " : "", journal_image_path(j, key));
    journal_set_str(j, "authoritative", t);
    free(t);
    json_object_object_get_ex(j->root, "argv", &argv);
    json_object_array_add(argv, json_object_new_string(journal_image_path(j, key)));
    snprintf(key, sizeof(key), "overlay-%d", i);
    /* (an identity of "": none, the file not being ours) */
    journal_add_image_as(j, key, file, existing ? "" : NULL, JR_WRITE);
    json_object_array_add(argv, json_object_new_string(journal_image_path(j, key)));
    snprintf(key, sizeof(key), "disk-%d", i);
    journal_set_str(j, key, d->name);
    journal_set_u64(j, "disks", (uint64_t)i);
    return journal_step(j, "creating", errp);
}

/* A transaction with snapshots: its journal (nothing written yet). */
static int snap_journal_begin(struct agent *a, struct error **errp)
{
    char *argv[] = { "snapshot", NULL };

    a->snap_n = 0;
    if (getenv("BLOCKCTL_NO_JOURNAL")) {
        return 0;
    }
    a->snap_jn = journal_new(a->cfg.state_dir, "snapshot", 1, argv, errp);
    if (!a->snap_jn) {
        return -EIO;
    }
    json_object_object_add(a->snap_jn->root, "live", json_object_new_boolean(true));
    journal_set_str(a->snap_jn, "agent-state", a->cfg.state_path);
    journal_set_str(a->snap_jn, "agent-qmp", a->cfg.qmp_path);
    return 0;
}

/* The transaction is over (committed or rolled back): its journal goes. */
static void snap_journal_end(struct agent *a)
{
    struct error *err = NULL;

    if (a->snap_jn && journal_end(a->snap_jn, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
    }
    a->snap_jn = NULL;
}

static int snap_prepare(struct agent *a, struct txn_action *act, struct error **errp)
{
    json_object *d = act->data;
    const char *device = txn_str(d, "device"), *node = txn_str(d, "node-name");
    const char *file = txn_str(d, "snapshot-file"), *snode = txn_str(d, "snapshot-node-name");
    const char *fmt = txn_str(d, "format"), *mode = txn_str(d, "mode");
    bool existing = mode && !strcmp(mode, "existing");
    struct agent_disk *disk = NULL;
    struct snap *s;
    struct bdev *top;
    struct stat st;

    if (!fmt) {
        fmt = "qcow2";
    }
    /* QEMU's checks, in QEMU's order and words */
    if (device && node) {
        /* QEMU takes the device when both are given; so do we, if they agree */
        struct bdev *b1 = agent_find_node(a, device, &disk, NULL);
        struct bdev *b2 = b1 ? agent_find_node(a, node, NULL, NULL) : NULL;
        if (b1 && b2 && b1 != b2) {
            error_setg(errp, "device '%s' and node-name '%s' are different nodes", device,
                       node);
            return -EINVAL;
        }
        top = b1;
    } else {
        top = device || node ? agent_find_node(a, device ? device : node, &disk, NULL) : NULL;
    }
    if (!top) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'", device ? device : "",
                   node ? node : "");
        return -ENOENT;
    }
    if (top != blk_root(disk->blk)) {
        error_setg(errp, "The node '%s' is not the top of disk '%s'; only a disk's top image "
                   "can be snapshotted", device ? device : node, disk->name);
        return -EINVAL;
    }
    if (agent_disk_check_busy(a, disk, device ? device : node, errp) < 0) {
        return -EBUSY;
    }
    if (disk->read_only) {
        error_setg(errp, "Disk '%s' is read-only", disk->name);
        return -EPERM;
    }
    if (node && !snode) {
        error_setg(errp, "New overlay node-name missing");
        return -EINVAL;
    }
    if (snode && (agent_find_disk(a, snode) || agent_find_node(a, snode, NULL, NULL))) {
        error_setg(errp, "New overlay node-name already in use");
        return -EEXIST;
    }
    if (snode && !node_name_ok(snode)) {
        error_setg(errp, "Invalid node-name: '%s'", snode);
        return -EINVAL;
    }
    if (!bdev_find_driver(fmt) || bdev_find_driver(fmt)->is_protocol) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        return -EINVAL;
    }
    if (!existing && strcmp(fmt, "qcow2")) {
        error_setg(errp, "Backing file not supported for file format '%s'", fmt);
        return -EINVAL;
    }
    if (!existing && stat(file, &st) == 0) {
        /* QEMU would overwrite it unless another process has it open: we
         * never overwrite (blockctl's own rule), but name a lock as QEMU */
        if (locked_by_another(file)) {
            error_setg(errp, "Failed to get \"write\" lock");
            error_append_hint(errp, "Is another process using the image [%s]?", file);
            return -EAGAIN;
        }
        error_setg(errp, "'%s' already exists", file);
        error_append_hint(errp, "Use mode 'existing' to use an overlay made beforehand");
        return -EEXIST;
    }

    s = xzalloc(sizeof(*s));
    act->state = s;
    act->disk = disk;
    s->old_top = top;
    s->file = xstrdup(file);
    if (a->snap_jn && snap_journal_add(a, disk, top, file, existing, errp) < 0) {
        return -EIO;
    }
    if (!existing) {
        struct optlist o = { 0 };
        char *dir = bdev_dirname(file), *bname, *tmp = NULL;
        char sz[32];
        bool renamed = false;
        int r;

        bname = top->drv->is_protocol ? xstrdup(top->filename)
                                      : bdev_relative_path(top->filename, dir);
        free(dir);
        snprintf(sz, sizeof(sz), "%" PRIu64, top->size);
        opts_set(&o, "size", sz);
        if (!strcmp(fmt, "qcow2")) {
            opts_set(&o, "backing_file", bname);
            opts_set(&o, "backing_fmt", bdev_format_name(top));
        }
        free(bname);
        dir = bdev_dirname(file);
        r = access(dir, W_OK) < 0 ? -errno : 0;
        free(dir);
        if (r < 0) {
            /* QEMU's words for a file it cannot make */
            opts_free(&o);
            error_setg(errp, "Could not create '%s': %s", file, strerror(-r));
            return r;
        }
        /* made under a hidden name, then renamed: a crash never leaves a
         * half-made overlay under the name asked for */
        r = bdev_create_hidden(fmt, file, &o, &tmp, errp);
        opts_free(&o);
        if (r == 0 && a->snap_jn) {
            /* the journal knows the file before it takes its name */
            char key[32];
            snprintf(key, sizeof(key), "overlay-%d", a->snap_n);
            journal_add_image_as(a->snap_jn, key, file, tmp, JR_WRITE);
            r = journal_save(a->snap_jn, errp);
        }
        if (r == 0) {
            r = bdev_create_install(tmp, file, 0, &renamed, errp);
        }
        if (r < 0) {
            if (!renamed) {
                (void)io_unlink(tmp);
            }
            free(tmp);
            return r;
        }
        free(tmp);
        s->created = true;
    }
    s->overlay = bdev_open(file, fmt, BDEV_O_RDWR | BDEV_O_NO_BACKING | BDEV_O_KILL_SAFE, errp);
    if (!s->overlay) {
        return -EIO;
    }
    if (s->overlay->size != top->size) {
        error_setg(errp, "'%s' is %" PRIu64 " bytes but disk '%s' is %" PRIu64, file,
                   s->overlay->size, disk->name, top->size);
        return -EINVAL;
    }
    if (!s->overlay->drv->supports_backing) {
        error_setg(errp, "'%s': format '%s' cannot have a backing file", file, fmt);
        return -EINVAL;
    }
    bdev_set_backing(s->overlay, top);
    s->overlay->node_name = snode ? xstrdup(snode) : agent_new_node_name(a, disk);
    /* most of the old top's unflushed data reaches the disk before the pause */
    bdev_flush(top);
    return 0;
}

/*
 * Bitmaps follow the disk: every enabled bitmap of the old top gets an
 * enabled namesake of the same granularity in the overlay (persistent if
 * it was), and the old one stops recording.
 */
static int snap_move_bitmaps(struct snap *s, struct error **errp)
{
    struct bitmap_op *add = NULL, *dis = NULL;
    size_t n = 0;
    int ret = 0;

    pthread_mutex_lock(&s->old_top->bitmap_lock);
    for (struct bdev_bitmap *b = s->old_top->bitmaps; b; b = b->next) {
        if (!b->enabled) {
            continue;
        }
        add = xrealloc(add, (n + 1) * sizeof(*add));
        dis = xrealloc(dis, (n + 1) * sizeof(*dis));
        add[n] = (struct bitmap_op){ .type = BITMAP_OP_ADD, .name = xstrdup(b->name),
                                     .granularity = b->granularity,
                                     .persistent = b->persistent };
        dis[n] = (struct bitmap_op){ .type = BITMAP_OP_DISABLE, .name = add[n].name };
        n++;
    }
    pthread_mutex_unlock(&s->old_top->bitmap_lock);
    if (n) {
        ret = bdev_bitmap_apply_undo(s->overlay, add, n, &s->bm_new, errp);
        if (ret == 0) {
            ret = bdev_bitmap_apply_undo(s->old_top, dis, n, &s->bm_old, errp);
            if (ret < 0) {
                bdev_bitmap_undo(s->bm_new);
                s->bm_new = NULL;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        free((char *)add[i].name);
    }
    free(add);
    free(dis);
    return ret;
}

static int snap_apply(struct agent *a, struct txn_action *act, struct error **errp)
{
    struct snap *s = act->state;
    struct bdev *old;
    int ret;

    (void)a;
    ret = snap_move_bitmaps(s, errp);
    if (ret < 0) {
        return ret;
    }
    old = blk_replace_root(act->disk->blk, s->overlay);
    assert(old == s->old_top);
    (void)old;
    return 0;
}

static void snap_undo(struct agent *a, struct txn_action *act)
{
    struct snap *s = act->state;

    (void)a;
    blk_replace_root(act->disk->blk, s->old_top);
    bdev_bitmap_undo(s->bm_old);
    bdev_bitmap_undo(s->bm_new);
    s->bm_old = s->bm_new = NULL;
}

static void snap_finish(struct agent *a, struct txn_action *act, bool committed)
{
    struct snap *s = act->state;
    struct error *err = NULL;

    if (!s) {
        return;
    }
    if (committed) {
        bdev_bitmap_undo_free(s->bm_old);
        bdev_bitmap_undo_free(s->bm_new);
        /* the disk holds the overlay now; the overlay holds the old top */
        bdev_unref(s->old_top);
        if (bdev_bitmaps_store(s->overlay, &err) < 0) {
            agent_log(a, "disk %s: %s", act->disk->name, err->msg);
            error_free(err);
            err = NULL;
        }
        if (bdev_reopen(s->old_top, 0, &err) < 0) {
            agent_log(a, "disk %s: cannot make '%s' read-only: %s", act->disk->name,
                      s->old_top->filename, err->msg);
            error_free(err);
        }
        agent_log(a, "disk %s: snapshot: now on '%s' (%s), backed by '%s'", act->disk->name,
                  s->overlay->filename, s->overlay->node_name, s->old_top->filename);
    } else {
        if (s->overlay) {
            bdev_unref(s->overlay);
        }
        if (s->created) {
            (void)io_unlink(s->file);
        }
    }
    free(s->file);
    free(s);
    act->state = NULL;
}

static const char *const snapshot_modes[] = { "existing", "absolute-paths", NULL };

static const struct qmp_arg snapshot_args[] = {
    { "device", QMP_STR, true, NULL },
    { "node-name", QMP_STR, true, NULL },
    { "snapshot-file", QMP_STR, false, NULL },
    { "snapshot-node-name", QMP_STR, true, NULL },
    { "format", QMP_STR, true, NULL },
    { "mode", QMP_ENUM, true, snapshot_modes },
    { NULL, 0, false, NULL },
};

const struct txn_ops txn_snapshot_ops = {
    .type = "blockdev-snapshot-sync",
    .args = snapshot_args,
    .prepare = snap_prepare,
    .apply = snap_apply,
    .undo = snap_undo,
    .finish = snap_finish,
};

/* --- start-up: a transaction a killed agent left --- */

static void restore_removed(void *opaque, const char *path)
{
    agent_log(opaque, "snapshot: removed the new overlay '%s' (never used)", path);
}

void agent_snapshot_restore(struct agent *a, struct journal *j)
{
    int n = (int)journal_get_u64(j, "disks"), on_overlay = 0, on_image = 0;
    struct error *err = NULL;
    char *disks = xstrdup("");

    for (int i = 1; i <= n; i++) {
        char key[32], *t;
        const char *name, *ov, *img;
        struct agent_disk *d;
        snprintf(key, sizeof(key), "disk-%d", i);
        name = journal_get_str(j, key);
        d = name ? agent_find_disk(a, name) : NULL;
        snprintf(key, sizeof(key), "overlay-%d", i);
        ov = journal_image_path(j, key);
        snprintf(key, sizeof(key), "image-%d", i);
        img = journal_image_path(j, key);
        if (d && ov && agent_same_file(blk_root(d->blk)->filename, ov)) {
            on_overlay++;
        } else if (d && img && agent_same_file(blk_root(d->blk)->filename, img)) {
            on_image++;
        }
        t = xasprintf("%s%s%s", disks, i > 1 ? ", " : "", name ? name : "?");
        free(disks);
        disks = t;
    }
    if (on_overlay + on_image < n || (on_overlay && on_image)) {
        /* (disks not served here, or on other images: not ours to decide) */
        agent_log(a, "snapshot job %s (disks %s) was interrupted and its disks are not all on "
                  "their images or all on their overlays here: 'blockctl job resume %s' (this "
                  "agent stopped) finishes it, 'blockctl job abort %s' rolls it back", j->id,
                  disks, j->id, j->id);
        journal_free(j);
        free(disks);
        return;
    }
    if (on_overlay) {
        /* the state file named the overlays: the guest may have written them */
        agent_log(a, "snapshot job %s was interrupted once the state file named the overlays: "
                  "the snapshot of %s is taken", j->id, disks);
    } else if (journal_remove_overlays(j, restore_removed, a, &err) < 0) {
        agent_log(a, "snapshot job %s: %s: 'blockctl job abort %s' (this agent stopped) rolls "
                  "it back", j->id, err->msg, j->id);
        error_free(err);
        journal_free(j);
        free(disks);
        return;
    } else {
        agent_log(a, "snapshot job %s was interrupted before the switch: rolled back, %s on "
                  "their images as before", j->id, disks);
    }
    free(disks);
    if (journal_end(j, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
    }
}

/* --- the transaction itself --- */

static bool has_snapshot(struct txn_action *acts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (acts[i].ops == &txn_snapshot_ops) {
            return true;
        }
    }
    return false;
}

/* The disks to drain, each once. */
static size_t disks_of(struct txn_action *acts, size_t n, struct agent_disk **out)
{
    size_t m = 0;

    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        if (!acts[i].disk) {
            continue;
        }
        for (size_t j = 0; j < m; j++) {
            seen |= out[j] == acts[i].disk;
        }
        if (!seen) {
            out[m++] = acts[i].disk;
        }
    }
    return m;
}

int txn_run(struct agent *a, struct txn_action *acts, size_t n, struct error **errp)
{
    struct agent_disk **disks = xcalloc(n + 1, sizeof(*disks));
    struct bdev **tops = xcalloc(n + 1, sizeof(*tops));
    size_t nd = 0, i;
    int ret = 0;

    if (has_snapshot(acts, n)) {
        ret = snap_journal_begin(a, errp);
    }
    for (i = 0; i < n && ret == 0; i++) {
        if (acts[i].ops->locate) {
            acts[i].disk = acts[i].ops->locate(a, &acts[i]);
            continue;
        }
        ret = acts[i].ops->prepare(a, &acts[i], errp);
        acts[i].prepared = true;
    }
    if (ret == 0 && a->snap_jn) {
        /* from here on the overlays may hold the disks */
        ret = journal_step(a->snap_jn, "switching", errp);
    }
    if (ret == 0 && has_snapshot(acts, n) && a->cfg.state_path) {
        /*
         * Name the overlays in the state file before the switch: each is
         * empty over the old top, so a crash from here on restarts on a
         * chain that reads the same.
         */
        for (i = 0; i < n; i++) {
            if (acts[i].ops == &txn_snapshot_ops) {
                acts[i].disk->pending_top = ((struct snap *)acts[i].state)->overlay;
            }
        }
        ret = agent_state_save(a, errp);
        for (i = 0; i < n; i++) {
            if (acts[i].disk) {
                acts[i].disk->pending_top = NULL;
            }
        }
    }
    if (ret == 0) {
        nd = disks_of(acts, n, disks);
        for (size_t k = 0; k < nd; k++) {
            blk_drain_begin(disks[k]->blk);
            tops[k] = blk_root(disks[k]->blk);
            bdev_drain_begin(tops[k]);
        }
        for (i = 0; i < n && ret == 0; i++) {
            if (acts[i].ops->locate) {
                ret = acts[i].ops->prepare(a, &acts[i], errp);
                acts[i].prepared = true;
                if (ret < 0) {
                    break;
                }
            }
            if (acts[i].ops->apply) {
                ret = acts[i].ops->apply(a, &acts[i], errp);
                acts[i].applied = ret == 0;
            }
        }
        if (ret < 0) {
            for (i = n; i-- > 0;) {
                if (acts[i].applied && acts[i].ops->undo) {
                    acts[i].ops->undo(a, &acts[i]);
                    acts[i].applied = false;
                }
            }
        }
        for (size_t k = nd; k-- > 0;) {
            bdev_drain_end(tops[k]);
            blk_drain_end(disks[k]->blk);
        }
    }
    for (i = 0; i < n; i++) {
        if (acts[i].prepared && acts[i].ops->finish) {
            acts[i].ops->finish(a, &acts[i], ret == 0);
        }
    }
    if (has_snapshot(acts, n) && a->cfg.state_path) {
        /* the tops as they are now (after an abort: as they were) */
        struct error *err = NULL;
        if (agent_state_save(a, &err) < 0) {
            agent_log(a, "%s", err->msg);
            if (ret == 0) {
                error_propagate(errp, err);
                ret = -EIO;
            } else {
                error_free(err);
            }
        }
    }
    snap_journal_end(a);
    free(disks);
    free(tops);
    return ret;
}

static const struct txn_ops *find_ops(const char *type)
{
    if (!strcmp(type, txn_snapshot_ops.type)) {
        return &txn_snapshot_ops;
    }
    for (const struct txn_ops *o = txn_bitmap_ops; o->type; o++) {
        if (!strcmp(type, o->type)) {
            return o;
        }
    }
    return NULL;
}

static int qmp_snapshot_sync(json_object *args, json_object **ret, void *opaque,
                             struct error **errp)
{
    struct txn_action act = { .ops = &txn_snapshot_ops, .data = args };

    (void)ret;
    return txn_run(opaque, &act, 1, errp);
}

static const char *const txn_types[] = {
    "abort", "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge",
    "blockdev-backup", "blockdev-snapshot", "blockdev-snapshot-internal-sync",
    "blockdev-snapshot-sync", "drive-backup",
    "block-job-complete",       /* blockctl's: a grouped pivot */
    NULL,
};

/*
 * Actions block-job-complete (blockctl's own): the mirror and active
 * commit jobs they name pivot together, in one drain, all or none.  They
 * make up the whole transaction.
 */
static int grouped_pivot(struct agent *a, json_object *list, struct error **errp)
{
    size_t n = json_object_array_length(list);
    struct job **jobs = xcalloc(n + 1, sizeof(*jobs));
    int r = 0;

    for (size_t i = 0; i < n; i++) {
        json_object *act = json_object_array_get_idx(list, i), *data = NULL;
        const char *dev;

        if (strcmp(txn_str(act, "type"), "block-job-complete")) {
            error_setg(errp, "Action '%s' cannot be in a transaction with block-job-complete",
                       txn_str(act, "type"));
            r = -EINVAL;
            break;
        }
        json_object_object_get_ex(act, "data", &data);
        dev = txn_str(data, "device");
        jobs[i] = job_find(&a->jobs, dev);
        if (!jobs[i]) {
            error_setg(errp, "Block job '%s' not found", dev);
            error_set_class(errp, QMP_ERR_DEVICE_NOT_ACTIVE);
            r = -ENOENT;
            break;
        }
    }
    if (r == 0) {
        r = agent_jobs_complete_group(a, jobs, n, errp);
    }
    free(jobs);
    return r;
}

static bool has_pivot(json_object *list)
{
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        if (!strcmp(txn_str(json_object_array_get_idx(list, i), "type"), "block-job-complete")) {
            return true;
        }
    }
    return false;
}

static int qmp_transaction(json_object *args, json_object **ret, void *opaque,
                           struct error **errp)
{
    struct agent *a = opaque;
    json_object *list, *props;
    struct txn_action *acts;
    const char *cm = NULL, *stop = NULL;
    size_t n;
    int r;

    (void)ret;
    /* the arguments are checked (transaction_args) */
    json_object_object_get_ex(args, "actions", &list);
    if (json_object_object_get_ex(args, "properties", &props)) {
        cm = txn_str(props, "completion-mode");
        if (cm && !strcmp(cm, "individual")) {
            cm = NULL;
        }
    }
    if (has_pivot(list)) {
        return grouped_pivot(a, list, errp);
    }
    n = json_object_array_length(list);
    acts = xcalloc(n + 1, sizeof(*acts));
    for (size_t i = 0; i < n; i++) {
        json_object *act = json_object_array_get_idx(list, i), *data = NULL;
        const char *type = txn_str(act, "type");
        const struct txn_ops *ops;

        if (!strcmp(type, "abort")) {
            /* (as QEMU: once every action's arguments are checked, the
             * first action that cannot run says why) */
            stop = stop ? stop : type;
            continue;
        }
        if (cm && !stop) {
            stop = type;    /* no action of ours supports grouped completion */
        }
        ops = find_ops(type);
        if (!ops) {
            error_setg(errp, "Action '%s' is not supported by blockctl's agent", type);
            goto fail;
        }
        json_object_object_get_ex(act, "data", &data);
        acts[i].ops = ops;
        acts[i].data = data;
    }
    if (stop && !strcmp(stop, "abort")) {
        error_setg(errp, "Transaction aborted using Abort action");
        goto fail;
    }
    if (stop) {
        error_setg(errp, "Action '%s' does not support Transaction property completion-mode = %s",
                   stop, cm);
        free(acts);
        return -ENOTSUP;
    }
    r = txn_run(a, acts, n, errp);
    free(acts);
    return r;

fail:
    free(acts);
    return -EINVAL;
}

/*
 * QAPI's TransactionAction: a union on "type" whose variants hold the
 * action's arguments in "data" (any object for the actions the agent does
 * not run: they are refused once all the arguments are checked).
 */
#define TXN_DATA(var, members_)                                             \
    static const struct qmp_arg var[] = {                                   \
        { "data", QMP_OBJECT, false, NULL, .members = members_ },           \
        { NULL, 0, false, NULL },                                           \
    }
static const struct qmp_arg no_members[] = { { NULL, 0, false, NULL } };
TXN_DATA(abort_data, no_members);
TXN_DATA(bitmap_add_data, txn_bitmap_add_args);
TXN_DATA(bitmap_name_data, txn_bitmap_name_args);
TXN_DATA(bitmap_merge_data, txn_bitmap_merge_args);
TXN_DATA(snapshot_data, snapshot_args);
TXN_DATA(other_data, NULL);
static const struct qmp_arg job_complete_members[] = {
    { "device", QMP_STR, false, NULL },
    { NULL, 0, false, NULL },
};
TXN_DATA(job_complete_data, job_complete_members);

static const struct qmp_variant action_variants[] = {
    { "abort", abort_data },
    { "block-dirty-bitmap-add", bitmap_add_data },
    { "block-dirty-bitmap-remove", bitmap_name_data },
    { "block-dirty-bitmap-clear", bitmap_name_data },
    { "block-dirty-bitmap-enable", bitmap_name_data },
    { "block-dirty-bitmap-disable", bitmap_name_data },
    { "block-dirty-bitmap-merge", bitmap_merge_data },
    { "blockdev-backup", other_data },
    { "blockdev-snapshot", other_data },
    { "blockdev-snapshot-internal-sync", other_data },
    { "blockdev-snapshot-sync", snapshot_data },
    { "drive-backup", other_data },
    { "block-job-complete", job_complete_data },
    { NULL, NULL },
};

static const struct qmp_arg action_base[] = {
    { "type", QMP_ENUM, false, txn_types },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg action_arg = { "", QMP_OBJECT, false, NULL, .members = action_base,
                                           .discriminator = "type",
                                           .variants = action_variants };

static const char *const completion_modes[] = { "individual", "grouped", NULL };

static const struct qmp_arg properties_members[] = {
    { "completion-mode", QMP_ENUM, true, completion_modes },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg transaction_args[] = {
    { "actions", QMP_ARRAY, false, NULL, .element = &action_arg },
    { "properties", QMP_OBJECT, true, NULL, .members = properties_members },
    { NULL, 0, false, NULL },
};

const struct qmp_command agent_transaction_commands[] = {
    { "blockdev-snapshot-sync", qmp_snapshot_sync, snapshot_args },
    { "transaction", qmp_transaction, transaction_args },
    { NULL, NULL, NULL },
};
