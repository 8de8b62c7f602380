/*
 * blockctl - the agent's dirty bitmap commands
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * `node` is a disk name or a node name.  A node name means that image
 * alone, as in QEMU.  A disk name means the disk's bitmap NAME: the union
 * of the bitmaps named NAME down its chain (DESIGN.md §4), so:
 *   add               on the top image; refused if NAME is anywhere in the chain
 *   remove, clear     every image of the chain that has NAME
 *   enable, disable   the top's NAME
 *   merge             into the top's NAME; each source is the union too
 *   salvage           (x-blockctl-block-dirty-bitmap-salvage, not a transaction
 *                     action) every image of the chain that has NAME
 * The changes are made with the disk drained, and persistent bitmaps are
 * stored in their images before the command returns.
 */
#include "lib/compiler.h"
#include "lib/agent/txn.h"
#include "lib/bitmap.h"

#include <errno.h>
#include <string.h>

/* The ops for one image */
struct layer_ops {
    struct bdev *bd;
    struct bitmap_op *ops;
    size_t n;
    struct bitmap_undo *undo;
};

struct bm_state {
    struct layer_ops *layers;
    size_t nlayers;
    json_object *sources;        /* merge: the sources, resolved in apply */
    bool union_target;
    struct bdev *node;           /* the node argument's image */
    struct dirty_bitmap **srcs;  /* merge: the source contents (freed in finish) */
    size_t nsrcs;
};

static struct layer_ops *layer_for(struct bm_state *s, struct bdev *bd)
{
    for (size_t i = 0; i < s->nlayers; i++) {
        if (s->layers[i].bd == bd) {
            return &s->layers[i];
        }
    }
    s->layers = xrealloc(s->layers, (s->nlayers + 1) * sizeof(*s->layers));
    s->layers[s->nlayers] = (struct layer_ops){ .bd = bd };
    return &s->layers[s->nlayers++];
}

static void add_op(struct bm_state *s, struct bdev *bd, struct bitmap_op op)
{
    struct layer_ops *l = layer_for(s, bd);

    l->ops = xrealloc(l->ops, (l->n + 1) * sizeof(*l->ops));
    l->ops[l->n++] = op;
}

static void not_found(struct error **errp, const char *name)
{
    error_setg(errp, "Dirty bitmap '%s' not found", name);
}

/*
 * The node argument, with QEMU's error when there is none:
 * block-dirty-bitmap-add looks the node up as a device or a node name, the
 * others as a node ("Node 'X' not found").
 */
static struct bdev *find_node(struct agent *a, const char *node, bool add,
                              struct agent_disk **d, struct error **errp)
{
    struct bdev *bd = agent_find_node(a, node, d, NULL);

    if (!bd) {
        if (add) {
            error_setg(errp, "Cannot find device='%s' nor node-name='%s'", node, node);
        } else {
            error_setg(errp, "Node '%s' not found", node);
        }
    }
    return bd;
}

static int resolve(struct agent *a, struct txn_action *act, const char *node, bool add,
                   struct bm_state *s, struct error **errp)
{
    struct agent_disk *d = NULL;

    s->node = find_node(a, node, add, &d, errp);
    if (!s->node) {
        return -ENOENT;
    }
    act->disk = d;
    s->union_target = agent_find_disk(a, node) != NULL;
    return 0;
}

/* The name QEMU gives a node in messages: its device's if it is a disk's top */
static const char *device_or_node(struct agent *a, struct bdev *bd)
{
    for (struct agent_disk *d = a->disks; d; d = d->next) {
        if (blk_root(d->blk) == bd) {
            return d->name;
        }
    }
    return bd->node_name ? bd->node_name : "";
}

/* block-dirty-bitmap-add's checks, in QEMU's order and words */
static int check_add(struct agent *a, struct bm_state *s, json_object *d, const char *name,
                     struct error **errp)
{
    struct bdev *top = s->node;
    json_object *gv;
    int64_t g = txn_int(d, "granularity", 0);    /* a uint32 (checked) */
    bool has_g = json_object_object_get_ex(d, "granularity", &gv);

    if (!*name) {
        error_setg(errp, "Bitmap name cannot be empty");
        return -EINVAL;
    }
    if (has_g && (g < 512 || !IS_POWER_OF_2((uint64_t)g))) {
        error_setg(errp, "Granularity must be power of 2 and at least 512");
        return -EINVAL;
    }
    if (txn_bool(d, "persistent", false)) {
        if (strlen(name) > 1023) {
            error_setg(errp, "Can't make bitmap '%s' persistent in '%s': Name length exceeds "
                       "maximum (1023 characters)", name, device_or_node(a, top));
            return -EINVAL;
        }
        if (top->read_only) {
            error_setg(errp, "Cannot store persistent bitmaps in a read-only image '%s'",
                       top->filename);
            return -EPERM;
        }
    }
    if (s->union_target ? bdev_bitmap_in_chain(top, name) : !!bdev_bitmap_find(top, name)) {
        error_setg(errp, "Bitmap already exists: %s", name);
        return -EEXIST;
    }
    if (strlen(name) > 1023) {
        error_setg(errp, "Bitmap name too long: %s", name);
        return -EINVAL;
    }
    return 0;
}

static int bm_prepare(struct agent *a, struct txn_action *act, struct error **errp)
{
    json_object *d = act->data;
    const char *type = strrchr(act->ops->type, '-') + 1;
    const char *node = txn_str(d, "node");
    const char *name = txn_str(d, strcmp(type, "merge") ? "name" : "target");
    struct bm_state *s = xzalloc(sizeof(*s));
    struct bdev *top;
    int ret;

    act->state = s;
    ret = resolve(a, act, node, !strcmp(type, "add"), s, errp);
    if (ret < 0) {
        return ret;
    }
    top = s->node;
    if (!strcmp(type, "add")) {
        int64_t g = txn_int(d, "granularity", 0);
        ret = check_add(a, s, d, name, errp);
        if (ret < 0) {
            return ret;
        }
        add_op(s, top, (struct bitmap_op){ .type = BITMAP_OP_ADD, .name = name,
                                           .granularity = (uint64_t)g,
                                           .disabled = txn_bool(d, "disabled", false),
                                           .persistent = txn_bool(d, "persistent", false) });
    } else if (!strcmp(type, "remove") || !strcmp(type, "clear") || !strcmp(type, "salvage")) {
        enum bitmap_op_type t = type[0] == 'r' ? BITMAP_OP_REMOVE
                                : type[0] == 'c' ? BITMAP_OP_CLEAR : BITMAP_OP_SALVAGE;
        bool any = false;
        for (struct bdev *l = top; l; l = s->union_target ? l->backing : NULL) {
            struct bdev_bitmap *b = bdev_bitmap_find(l, name);
            if (!b) {
                continue;
            }
            if (b->busy) {
                error_setg(errp, "Bitmap '%s' is currently in use by another operation and "
                           "cannot be used", name);
                return -EBUSY;
            }
            if (t == BITMAP_OP_CLEAR && b->inconsistent) {
                error_setg(errp, "Bitmap '%s' is inconsistent and cannot be used", name);
                error_append_hint(errp, "Try block-dirty-bitmap-remove to delete this bitmap "
                                  "from disk");
                return -EINVAL;
            }
            add_op(s, l, (struct bitmap_op){ .type = t, .name = name });
            any = true;
        }
        if (!any) {
            not_found(errp, name);
            return -ENOENT;
        }
    } else if (!strcmp(type, "enable") || !strcmp(type, "disable")) {
        struct bdev_bitmap *b = bdev_bitmap_find(top, name);
        if (!b) {
            not_found(errp, name);
            return -ENOENT;
        }
        if (b->busy) {
            error_setg(errp, "Bitmap '%s' is currently in use by another operation and cannot "
                       "be used", name);
            return -EBUSY;
        }
        if (b->inconsistent) {
            error_setg(errp, "Bitmap '%s' is inconsistent and cannot be used", name);
            return -EINVAL;
        }
        add_op(s, top, (struct bitmap_op){
                           .type = type[0] == 'e' ? BITMAP_OP_ENABLE : BITMAP_OP_DISABLE,
                           .name = name });
    } else {
        /* merge: check the sources now, read them under the drain */
        json_object *srcs;
        struct bdev_bitmap *b = bdev_bitmap_find(top, name);
        if (!b) {
            not_found(errp, name);
            return -ENOENT;
        }
        if (b->busy || b->inconsistent) {
            error_setg(errp, "Bitmap '%s' is %s and cannot be used", name,
                       b->busy ? "currently in use by another operation" : "inconsistent");
            return -EBUSY;
        }
        json_object_object_get_ex(d, "bitmaps", &srcs);
        for (size_t i = 0; i < json_object_array_length(srcs); i++) {
            json_object *e = json_object_array_get_idx(srcs, i);
            const char *sn, *sname;
            struct bdev *sb;
            if (json_object_is_type(e, json_type_string)) {
                sn = node;
                sname = json_object_get_string(e);
            } else {
                /* {node, name}: the arguments' check saw to it */
                sn = txn_str(e, "node");
                sname = txn_str(e, "name");
            }
            sb = find_node(a, sn, false, NULL, errp);
            if (!sb) {
                return -ENOENT;
            }
            if (agent_find_disk(a, sn) ? !bdev_bitmap_in_chain(sb, sname)
                                       : !bdev_bitmap_find(sb, sname)) {
                not_found(errp, sname);
                return -ENOENT;
            }
            /* a source may be busy, never inconsistent (QEMU's rule) */
            for (struct bdev *l = sb; l; l = agent_find_disk(a, sn) ? l->backing : NULL) {
                struct bdev_bitmap *sbm = bdev_bitmap_find(l, sname);
                if (sbm && sbm->inconsistent) {
                    error_setg(errp, "Bitmap '%s' is inconsistent and cannot be used", sname);
                    return -EINVAL;
                }
            }
        }
        s->sources = srcs;
    }
    return 0;
}

static int bm_apply(struct agent *a, struct txn_action *act, struct error **errp)
{
    struct bm_state *s = act->state;
    int ret;

    if (s->sources) {
        /* merge: read the sources now that nothing writes */
        const char *node = txn_str(act->data, "node");
        const char *target = txn_str(act->data, "target");
        size_t n = json_object_array_length(s->sources);
        s->srcs = xcalloc(n + 1, sizeof(*s->srcs));
        for (size_t i = 0; i < n; i++) {
            json_object *e = json_object_array_get_idx(s->sources, i);
            bool str = json_object_is_type(e, json_type_string);
            const char *sn = str ? node : txn_str(e, "node");
            const char *sname = str ? json_object_get_string(e) : txn_str(e, "name");
            struct bdev *sb = agent_find_node(a, sn, NULL, errp);
            if (!sb) {
                return -ENOENT;
            }
            ret = agent_find_disk(a, sn) ? bdev_bitmap_union(sb, sname, &s->srcs[i], errp)
                                         : bdev_bitmap_get(sb, sname, &s->srcs[i], errp);
            if (ret < 0) {
                return ret;
            }
            s->nsrcs++;
            add_op(s, s->node, (struct bitmap_op){ .type = BITMAP_OP_MERGE, .name = target,
                                                   .src_name = sname, .src = s->srcs[i] });
        }
    }
    for (size_t i = 0; i < s->nlayers; i++) {
        struct layer_ops *l = &s->layers[i];
        ret = bdev_bitmap_apply_undo(l->bd, l->ops, l->n, &l->undo, errp);
        if (ret < 0) {
            while (i-- > 0) {
                bdev_bitmap_undo(s->layers[i].undo);
                s->layers[i].undo = NULL;
            }
            return ret;
        }
    }
    return 0;
}

static void bm_undo(struct agent *a, struct txn_action *act)
{
    struct bm_state *s = act->state;

    (void)a;
    for (size_t i = s->nlayers; i-- > 0;) {
        bdev_bitmap_undo(s->layers[i].undo);
        s->layers[i].undo = NULL;
    }
}

/* Store the persistent bitmaps of @bd if they changed (a read-only image
 * is made writable for it, briefly). */
static void store_layer(struct agent *a, struct bdev *bd)
{
    struct error *err = NULL;
    bool ro = bd->read_only;

    if (!bdev_bitmaps_need_store(bd)) {
        return;
    }
    if (ro && bdev_reopen(bd, BDEV_O_RDWR, &err) < 0) {
        agent_log(a, "'%s': cannot store bitmaps: %s", bd->filename, err->msg);
        error_free(err);
        return;
    }
    if (bdev_bitmaps_store(bd, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
        err = NULL;
    }
    if (ro && bdev_reopen(bd, 0, &err) < 0) {
        agent_log(a, "'%s': %s", bd->filename, err->msg);
        error_free(err);
    }
}

static void bm_finish(struct agent *a, struct txn_action *act, bool committed)
{
    struct bm_state *s = act->state;

    if (!s) {
        return;
    }
    for (size_t i = 0; i < s->nlayers; i++) {
        bdev_bitmap_undo_free(s->layers[i].undo);
        if (committed) {
            store_layer(a, s->layers[i].bd);
        }
        free(s->layers[i].ops);
    }
    for (size_t i = 0; i < s->nsrcs; i++) {
        bitmap_free(s->srcs[i]);
    }
    free(s->srcs);
    free(s->layers);
    free(s);
    act->state = NULL;
}

const struct qmp_arg txn_bitmap_add_args[] = {
    { "node", QMP_STR, false, NULL },
    { "name", QMP_STR, false, NULL },
    { "granularity", QMP_UINT32, true, NULL },
    { "persistent", QMP_BOOL, true, NULL },
    { "disabled", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

const struct qmp_arg txn_bitmap_name_args[] = {
    { "node", QMP_STR, false, NULL },
    { "name", QMP_STR, false, NULL },
    { NULL, 0, false, NULL },
};

/* QAPI's BlockDirtyBitmapOrStr: a bitmap of the target's node, or {node, name} */
static const struct qmp_arg merge_source_branches[] = {
    { "", QMP_STR, false, NULL },
    { "", QMP_OBJECT, false, NULL, .members = txn_bitmap_name_args },
    { NULL, 0, false, NULL },
};
static const struct qmp_arg merge_source = { "", QMP_ALTERNATE, false, NULL,
                                             .branches = merge_source_branches,
                                             .type_name = "BlockDirtyBitmapOrStr" };

const struct qmp_arg txn_bitmap_merge_args[] = {
    { "node", QMP_STR, false, NULL },
    { "target", QMP_STR, false, NULL },
    { "bitmaps", QMP_ARRAY, false, NULL, .element = &merge_source },
    { NULL, 0, false, NULL },
};

/* The disk of the node argument (the one to drain) */
static struct agent_disk *bm_locate(struct agent *a, struct txn_action *act)
{
    struct agent_disk *d = NULL;
    const char *node = txn_str(act->data, "node");

    return node && agent_find_node(a, node, &d, NULL) ? d : NULL;
}

#define BM_OPS(t, args) \
    { "block-dirty-bitmap-" t, args, bm_prepare, bm_apply, bm_undo, bm_finish, bm_locate }

const struct txn_ops txn_bitmap_ops[] = {
    BM_OPS("add", txn_bitmap_add_args),
    BM_OPS("remove", txn_bitmap_name_args),
    BM_OPS("clear", txn_bitmap_name_args),
    BM_OPS("enable", txn_bitmap_name_args),
    BM_OPS("disable", txn_bitmap_name_args),
    BM_OPS("merge", txn_bitmap_merge_args),
    { NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

static int run_one(json_object *args, void *opaque, size_t k, struct error **errp)
{
    struct txn_action act = { .ops = &txn_bitmap_ops[k], .data = args };

    return txn_run(opaque, &act, 1, errp);
}

#define BM_CMD(fn, k)                                                                    \
    static int fn(json_object *args, json_object **ret, void *opaque, struct error **errp) \
    {                                                                                    \
        (void)ret;                                                                       \
        return run_one(args, opaque, k, errp);                                           \
    }
BM_CMD(qmp_bm_add, 0)
BM_CMD(qmp_bm_remove, 1)
BM_CMD(qmp_bm_clear, 2)
BM_CMD(qmp_bm_enable, 3)
BM_CMD(qmp_bm_disable, 4)
BM_CMD(qmp_bm_merge, 5)

/*
 * x-blockctl-block-dirty-bitmap-salvage {node, name}: every bit of NAME
 * set, and an inconsistent one (left in use by a crash) made consistent,
 * recording again if it was; for a disk name, every namesake down the
 * chain.  blockctl's own: QEMU has no way to do this.
 */
static const struct txn_ops salvage_ops =
    BM_OPS("salvage", txn_bitmap_name_args);

static int qmp_bm_salvage(json_object *args, json_object **ret, void *opaque,
                          struct error **errp)
{
    struct txn_action act = { .ops = &salvage_ops, .data = args };

    (void)ret;
    return txn_run(opaque, &act, 1, errp);
}

/*
 * x-blockctl-dirty-bitmap-dump {node, name}: the dirty extents, as
 * [{"start", "length"}] (the union down the chain for a disk name).
 */
static int qmp_bm_dump(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    struct agent *a = opaque;
    const char *node = txn_str(args, "node"), *name = txn_str(args, "name");
    struct bdev *bd = agent_find_node(a, node, NULL, errp);
    struct dirty_bitmap *bm = NULL;
    json_object *list;
    uint64_t pos = 0, off, len;
    int r;

    if (!bd) {
        return -ENOENT;
    }
    r = agent_find_disk(a, node) ? bdev_bitmap_union(bd, name, &bm, NULL)
                                 : bdev_bitmap_get(bd, name, &bm, NULL);
    if (r < 0) {
        not_found(errp, name);
        return r;
    }
    list = json_object_new_array();
    while (bitmap_next_dirty(bm, pos, 0, &off, &len)) {
        json_object *e = json_object_new_object();
        json_object_object_add(e, "start", json_object_new_int64((int64_t)off));
        json_object_object_add(e, "length", json_object_new_int64((int64_t)len));
        json_object_array_add(list, e);
        pos = off + len;
    }
    bitmap_free(bm);
    *ret = list;
    return 0;
}

const struct qmp_command agent_bitmap_commands[] = {
    { "x-blockctl-dirty-bitmap-dump", qmp_bm_dump, txn_bitmap_name_args },
    { "x-blockctl-block-dirty-bitmap-salvage", qmp_bm_salvage, txn_bitmap_name_args },
    { "block-dirty-bitmap-add", qmp_bm_add, txn_bitmap_add_args },
    { "block-dirty-bitmap-remove", qmp_bm_remove, txn_bitmap_name_args },
    { "block-dirty-bitmap-clear", qmp_bm_clear, txn_bitmap_name_args },
    { "block-dirty-bitmap-enable", qmp_bm_enable, txn_bitmap_name_args },
    { "block-dirty-bitmap-disable", qmp_bm_disable, txn_bitmap_name_args },
    { "block-dirty-bitmap-merge", qmp_bm_merge, txn_bitmap_merge_args },
    { NULL, NULL, NULL },
};
