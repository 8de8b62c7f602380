/*
 * blockctl - the agent's queries: query-block, query-named-block-nodes
 * (query-block-jobs and query-jobs are in qmp-job.c)
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"
#include "lib/bitmap.h"
#include "lib/imageinfo.h"

#include <errno.h>
#include <string.h>

static void add(json_object *o, const char *key, json_object *v)
{
    json_object_object_add(o, key, v);
}

/* BlockDirtyInfo of every bitmap of @bd itself */
static json_object *dirty_bitmaps(struct bdev *bd)
{
    json_object *a = json_object_new_array();

    /* contents not read yet (a read-only image's) are read now, out of
     * the lock (the list is the control thread's: b stays); an
     * inconsistent bitmap has none: it counts 0, as in QEMU */
    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        struct dirty_bitmap *copy = NULL;

        if (!b->bm && !b->inconsistent && bdev_bitmap_get(bd, b->name, &copy, NULL) == 0) {
            bitmap_free(copy);
        }
    }
    pthread_mutex_lock(&bd->bitmap_lock);
    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        json_object *o = json_object_new_object();
        add(o, "name", json_object_new_string(b->name));
        add(o, "recording", json_object_new_boolean(b->enabled));
        add(o, "persistent", json_object_new_boolean(b->persistent));
        add(o, "busy", json_object_new_boolean(b->busy > 0));
        add(o, "count", json_object_new_int64(b->bm ? (int64_t)bitmap_dirty_bytes(b->bm) : 0));
        add(o, "granularity", json_object_new_int64(b->bm ? (int64_t)bitmap_granularity(b->bm)
                                                          : (int64_t)b->granularity));
        if (b->inconsistent) {
            add(o, "inconsistent", json_object_new_boolean(true));
        }
        json_object_array_add(a, o);
    }
    pthread_mutex_unlock(&bd->bitmap_lock);
    return a;
}

/* QAPI BlockDeviceInfo of @bd (the image and, with @chain, its backing images) */
static json_object *device_info(struct bdev *bd, bool chain, struct error **errp)
{
    json_object *o, *img, *cache;
    int depth = 0;

    img = image_info_json(bd, chain, errp);
    if (!img) {
        return NULL;
    }
    for (struct bdev *b = bd->backing; b; b = b->backing) {
        depth++;
    }
    o = json_object_new_object();
    add(o, "file", json_object_new_string(bd->filename));
    add(o, "node-name", json_object_new_string(bd->node_name ? bd->node_name : ""));
    add(o, "ro", json_object_new_boolean(bd->read_only));
    add(o, "drv", json_object_new_string(bdev_format_name(bd)));
    if (bd->backing_file) {
        add(o, "backing_file", json_object_new_string(bd->backing_file));
    }
    add(o, "backing_file_depth", json_object_new_int(depth));
    add(o, "encrypted", json_object_new_boolean(false));
    add(o, "detect_zeroes", json_object_new_string("off"));
    add(o, "bps", json_object_new_int(0));
    add(o, "bps_rd", json_object_new_int(0));
    add(o, "bps_wr", json_object_new_int(0));
    add(o, "iops", json_object_new_int(0));
    add(o, "iops_rd", json_object_new_int(0));
    add(o, "iops_wr", json_object_new_int(0));
    add(o, "image", img);
    cache = json_object_new_object();
    add(cache, "writeback", json_object_new_boolean(true));
    add(cache, "direct", json_object_new_boolean(false));
    add(cache, "no-flush", json_object_new_boolean(false));
    add(o, "cache", cache);
    add(o, "write_threshold", json_object_new_int(0));
    add(o, "dirty-bitmaps", dirty_bitmaps(bd));
    return o;
}

static int query_block(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    struct agent *a = opaque;
    json_object *list = json_object_new_array();

    (void)args;
    for (struct agent_disk *d = a->disks; d; d = d->next) {
        json_object *o = json_object_new_object(), *ins;

        ins = device_info(blk_root(d->blk), true, errp);
        if (!ins) {
            json_object_put(o);
            json_object_put(list);
            return -EIO;
        }
        add(o, "device", json_object_new_string(d->name));
        add(o, "type", json_object_new_string("unknown"));
        add(o, "removable", json_object_new_boolean(false));
        add(o, "locked", json_object_new_boolean(false));
        add(o, "inserted", ins);
        add(o, "io-status", json_object_new_string("ok"));
        json_object_array_add(list, o);
    }
    *ret = list;
    return 0;
}

static int query_named_block_nodes(json_object *args, json_object **ret, void *opaque,
                                   struct error **errp)
{
    struct agent *a = opaque;
    json_object *list = json_object_new_array(), *flat;
    bool chain = !(json_object_object_get_ex(args, "flat", &flat) &&
                   json_object_get_boolean(flat));

    for (struct agent_disk *d = a->disks; d; d = d->next) {
        for (struct bdev *b = blk_root(d->blk); b; b = b->backing) {
            json_object *o = device_info(b, chain, errp);
            if (!o) {
                json_object_put(list);
                return -EIO;
            }
            json_object_array_add(list, o);
        }
    }
    for (struct bdev *b = agent_nodes_next(a, NULL); b; b = agent_nodes_next(a, b)) {
        json_object *o = device_info(b, chain, errp);
        if (!o) {
            json_object_put(list);
            return -EIO;
        }
        json_object_array_add(list, o);
    }
    *ret = list;
    return 0;
}

static const struct qmp_arg named_nodes_args[] = {
    { "flat", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

const struct qmp_command agent_block_commands[] = {
    { "query-block", query_block, NULL },
    { "query-named-block-nodes", query_named_block_nodes, named_nodes_args },
    { NULL, NULL, NULL },
};
