/*
 * blockctl - the agent's NBD exports: one per disk, and block-export-add/del
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"

#include <errno.h>
#include <string.h>

int agent_export_disk(struct agent *a, struct agent_disk *d, struct error **errp)
{
    struct nbdsrv_export_opts o = {
        .id = d->name,
        .name = d->name,
        .blk = d->blk,
        .writable = !d->read_only,
        .allocation_depth = true,
        .bitmaps = NULL,
    };

    return nbdsrv_export_add(a->nbd, &o, errp);
}

/* An export's last client has gone after block-export-del: release it. */
void agent_export_gone(struct agent *a, const char *id)
{
    for (struct agent_export **pp = &a->exports; *pp; pp = &(*pp)->next) {
        struct agent_export *e = *pp;
        if (!strcmp(e->id, id)) {
            *pp = e->next;
            blk_unref(e->blk);
            bdev_unref(e->bd);
            free(e->id);
            free(e);
            return;
        }
    }
}

void agent_exports_free(struct agent *a)
{
    while (a->exports) {
        struct agent_export *e = a->exports;
        a->exports = e->next;
        blk_unref(e->blk);
        bdev_unref(e->bd);
        free(e->id);
        free(e);
    }
}

static const char *str_arg(json_object *args, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(args, key, &v) ? json_object_get_string(v) : NULL;
}

static bool bool_arg(json_object *args, const char *key, bool dflt)
{
    json_object *v;

    return json_object_object_get_ex(args, key, &v) ? json_object_get_boolean(v) : dflt;
}

static bool export_exists(struct agent *a, const char *id)
{
    struct nbdsrv_export_info *info;
    size_t n = nbdsrv_list_exports(a->nbd, &info);
    bool found = false;

    for (size_t i = 0; i < n; i++) {
        found |= !strcmp(info[i].id, id);
    }
    nbdsrv_export_info_free(info, n);
    return found;
}

static int block_export_add(json_object *args, json_object **ret, void *opaque,
                            struct error **errp)
{
    struct agent *a = opaque;
    const char *type = str_arg(args, "type"), *id = str_arg(args, "id");
    const char *node = str_arg(args, "node-name"), *name = str_arg(args, "name");
    bool writable = bool_arg(args, "writable", false);
    struct agent_disk *d = NULL;
    struct bdev *bd;
    struct blk *blk;
    json_object *bms;
    const char **bitmaps = NULL;
    struct nbdsrv_export_opts o = { 0 };
    struct agent_export *e;
    int r;

    (void)ret;
    if (strcmp(type, "nbd")) {
        error_setg(errp, "Export type '%s' is not supported", type);
        return -ENOTSUP;
    }
    if (export_exists(a, id)) {
        error_setg(errp, "Block export id '%s' is already in use", id);
        return -EEXIST;
    }
    bd = agent_find_node(a, node, &d, NULL);
    if (!bd) {
        /* QEMU looks up a node name only: bdrv_lookup_bs(NULL, node) */
        error_setg(errp, "Cannot find device='' nor node-name='%s'", node);
        return -ENOENT;
    }
    if (bd == blk_root(d->blk)) {
        /* the disk itself: the export follows its top across snapshots */
        if (writable && d->read_only) {
            error_setg(errp, "Cannot export '%s' writable: the disk is read-only", node);
            return -EPERM;
        }
        blk = d->blk;
        blk_ref(blk);
    } else {
        if (writable) {
            error_setg(errp, "Cannot export node '%s' writable: it is a backing image of "
                       "disk '%s'", node, d->name);
            return -EPERM;
        }
        bdev_ref(bd);
        blk = blk_new(bd->node_name ? bd->node_name : node, bd, true);
    }
    if (json_object_object_get_ex(args, "bitmaps", &bms)) {
        size_t n = json_object_array_length(bms);
        bitmaps = xcalloc(n + 1, sizeof(*bitmaps));
        for (size_t i = 0; i < n; i++) {
            json_object *b = json_object_array_get_idx(bms, i);
            if (!json_object_is_type(b, json_type_string)) {
                error_setg(errp, "Invalid parameter type for 'bitmaps[%zu]', expected: string",
                           i);
                free(bitmaps);
                goto fail;
            }
            bitmaps[i] = json_object_get_string(b);
        }
        for (size_t i = 0; i < n; i++) {
            uint64_t pnum;
            bool dirty;
            if (blk_size(blk) &&
                blk_bitmap_status(blk, bitmaps[i], 0, 1, &pnum, &dirty) == -ENOENT) {
                error_setg(errp, "Bitmap '%s' is not found", bitmaps[i]);
                free(bitmaps);
                goto fail;
            }
        }
    }
    o.id = id;
    o.name = name ? name : node;
    o.description = str_arg(args, "description");
    o.blk = blk;
    o.writable = writable;
    o.allocation_depth = bool_arg(args, "allocation-depth", false);
    o.bitmaps = bitmaps;
    r = nbdsrv_export_add(a->nbd, &o, errp);
    free(bitmaps);
    if (r < 0) {
        goto fail;
    }
    e = xzalloc(sizeof(*e));
    e->id = xstrdup(id);
    e->blk = blk;
    e->bd = blk != d->blk ? bd : NULL;
    e->next = a->exports;
    a->exports = e;
    agent_log(a, "export %s added (%s%s)", id, node, writable ? ", writable" : "");
    return 0;

fail:
    if (blk != d->blk) {
        /* our own disk for a backing image: release the image too */
        bdev_unref(bd);
    }
    blk_unref(blk);
    return -EINVAL;
}

static int block_export_del(json_object *args, json_object **ret, void *opaque,
                            struct error **errp)
{
    struct agent *a = opaque;
    const char *id = str_arg(args, "id"), *mode = str_arg(args, "mode");
    bool hard = mode && !strcmp(mode, "hard");
    struct nbdsrv_export_info *info;
    size_t n = nbdsrv_list_exports(a->nbd, &info);
    int found = -1;

    (void)ret;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(info[i].id, id)) {
            found = (int)i;
        }
    }
    if (found < 0) {
        nbdsrv_export_info_free(info, n);
        error_setg(errp, "Export '%s' is not found", id);
        return -ENOENT;
    }
    if (info[found].shutting_down) {
        nbdsrv_export_info_free(info, n);
        error_setg(errp, "Export '%s' is already shutting down", id);
        return -EBUSY;
    }
    nbdsrv_export_info_free(info, n);
    if (nbdsrv_export_del(a->nbd, id, hard, errp) < 0) {
        return -EBUSY;
    }
    agent_log(a, "export %s removed%s", id, hard ? " (hard)" : "");
    return 0;
}

static int query_block_exports(json_object *args, json_object **ret, void *opaque,
                               struct error **errp)
{
    struct agent *a = opaque;
    struct nbdsrv_export_info *info;
    size_t n = nbdsrv_list_exports(a->nbd, &info);
    json_object *list = json_object_new_array();

    (void)args;
    (void)errp;
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_new_object();
        struct agent_disk *d = agent_find_disk(a, info[i].disk);
        const char *node = info[i].disk;

        if (d && blk_root(d->blk) && blk_root(d->blk)->node_name) {
            node = blk_root(d->blk)->node_name;
        }
        json_object_object_add(o, "type", json_object_new_string("nbd"));
        json_object_object_add(o, "id", json_object_new_string(info[i].id));
        json_object_object_add(o, "node-name", json_object_new_string(node));
        json_object_object_add(o, "shutting-down",
                               json_object_new_boolean(info[i].shutting_down));
        json_object_array_add(list, o);
    }
    nbdsrv_export_info_free(info, n);
    *ret = list;
    return 0;
}

static const char *const export_types[] = { "nbd", "vhost-user-blk", "fuse", "vduse-blk", NULL };
static const char *const del_modes[] = { "safe", "hard", NULL };

static const struct qmp_arg export_add_args[] = {
    { "type", QMP_ENUM, false, export_types },
    { "id", QMP_STR, false, NULL },
    { "node-name", QMP_STR, false, NULL },
    { "fixed-iothread", QMP_BOOL, true, NULL },
    { "iothread", QMP_STR, true, NULL },
    { "writable", QMP_BOOL, true, NULL },
    { "writethrough", QMP_BOOL, true, NULL },
    { "name", QMP_STR, true, NULL },
    { "description", QMP_STR, true, NULL },
    { "bitmaps", QMP_ARRAY, true, NULL },
    { "allocation-depth", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg export_del_args[] = {
    { "id", QMP_STR, false, NULL },
    { "mode", QMP_ENUM, true, del_modes },
    { NULL, 0, false, NULL },
};

const struct qmp_command agent_export_commands[] = {
    { "block-export-add", block_export_add, export_add_args },
    { "block-export-del", block_export_del, export_del_args },
    { "query-block-exports", query_block_exports, NULL },
    { NULL, NULL, NULL },
};
