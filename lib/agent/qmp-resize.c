/*
 * blockctl - the agent's block_resize and change-backing-file, with QEMU
 * 7.2's arguments, errors and semantics (blockdev.c's qmp_block_resize
 * and qmp_change_backing_file)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * block_resize changes the virtual size of a disk's top (or of a node)
 * with the disk drained, as QEMU does, the persistent bitmaps following.
 * change-backing-file only rewrites the name recorded in an image of a
 * disk's chain (the open chain does not change), reopening a read-only
 * image read-write for the write; as QEMU, the format it records is the
 * image's own format.
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"

#include <errno.h>
#include <string.h>

static const char *str_arg(json_object *args, const char *name)
{
    json_object *v;

    return json_object_object_get_ex(args, name, &v) ? json_object_get_string(v) : NULL;
}

/*
 * QEMU's bdrv_lookup_bs(device, node): a disk (its top), else a node name
 * (of an image of a disk's chain, a disk's name too, or a node of
 * blockdev-add).  *d: the disk whose chain has the image, or NULL.
 */
static struct bdev *lookup(struct agent *a, const char *device, const char *node,
                           struct agent_disk **d, struct error **errp)
{
    struct agent_disk *disk = device ? agent_find_disk(a, device) : NULL;
    struct bdev *bd = NULL;

    *d = NULL;
    if (disk) {
        *d = disk;
        return blk_root(disk->blk);
    }
    if (node) {
        bd = agent_find_node(a, node, d, NULL);
        if (!bd && agent_node_exists(a, node)) {
            return agent_node_bdev(a, node, errp);
        }
    }
    if (!bd) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'", device ? device : "",
                   node ? node : "");
    }
    return bd;
}

static int qmp_block_resize(json_object *args, json_object **ret, void *opaque,
                            struct error **errp)
{
    struct agent *a = opaque;
    const char *device = str_arg(args, "device");
    const char *node = str_arg(args, "node-name");
    json_object *v;
    int64_t size;
    struct agent_disk *d;
    struct bdev *bd;
    struct error *err = NULL;
    int r;

    (void)ret;
    bd = lookup(a, device, node, &d, errp);
    if (!bd) {
        return -ENOENT;
    }
    json_object_object_get_ex(args, "size", &v);
    size = json_object_get_int64(v);
    if (size < 0) {
        error_setg(errp, "Parameter 'size' expects a >0 size");
        return -EINVAL;
    }
    if (d && agent_disk_check_busy(a, d, bd->node_name ? bd->node_name : d->name, NULL) < 0) {
        /* QEMU's op blocker for resize: QERR_DEVICE_IN_USE */
        error_setg(errp, "Device '%s' is in use", device ? device : "(null)");
        return -EBUSY;
    }
    if (bd->read_only) {
        error_setg(errp, "Block node is read-only");
        return -EPERM;
    }
    if ((uint64_t)size == bd->size) {
        return 0;
    }
    if (d) {
        blk_drain_begin(d->blk);
    }
    r = bdev_truncate(bd, (uint64_t)size, &err);
    if (d) {
        blk_drain_end(d->blk);
    }
    if (r < 0) {
        error_propagate(errp, err);
        return r;
    }
    agent_log(a, "%s %s: resized to %" PRId64 " bytes", d ? "disk" : "node",
              d ? d->name : node, size);
    return 0;
}

static int qmp_change_backing_file(json_object *args, json_object **ret, void *opaque,
                                   struct error **errp)
{
    struct agent *a = opaque;
    const char *device = str_arg(args, "device");
    const char *image = str_arg(args, "image-node-name");
    const char *file = str_arg(args, "backing-file");
    struct agent_disk *d = NULL, *id = NULL;
    struct bdev *root, *bd;
    bool in_chain = false, ro;
    int r;

    (void)ret;
    /* qmp_get_root_bs(device): a disk, or the node of a disk's top */
    root = lookup(a, device, device, &d, errp);
    if (!root) {
        return -ENOENT;
    }
    if (d && root != blk_root(d->blk)) {
        error_setg(errp, "Need a root block node");
        return -EINVAL;
    }
    bd = lookup(a, NULL, image, &id, errp);
    if (!bd) {
        return -ENOENT;
    }
    if (!bd->backing_file) {
        error_setg(errp, "not allowing backing file change on an image without a backing "
                   "file");
        return -EINVAL;
    }
    if (d && agent_disk_check_busy(a, d, bd->node_name ? bd->node_name : image, errp) < 0) {
        return -EBUSY;
    }
    for (struct bdev *b = root; b; b = b->backing) {
        in_chain |= b == bd;
    }
    if (!in_chain) {
        error_setg(errp, "'%s' and image file are not in the same chain", device);
        return -EINVAL;
    }
    if (!bd->drv->change_backing) {
        error_setg_errno(errp, ENOTSUP, "Could not change backing file to '%s'", file);
        return -ENOTSUP;
    }
    ro = bd->read_only;
    if (ro && bdev_reopen(bd, BDEV_O_RDWR, errp) < 0) {
        return -EPERM;
    }
    if (d) {
        blk_drain_begin(d->blk);
    }
    /* QEMU 7.2 records the image's own format name as the backing format */
    r = bd->drv->change_backing(bd, *file ? file : NULL, *file ? bdev_format_name(bd) : NULL,
                                NULL);
    if (d) {
        blk_drain_end(d->blk);
    }
    if (r < 0) {
        error_setg_errno(errp, -r, "Could not change backing file to '%s'", file);
    }
    if (ro) {
        struct error *err = NULL;
        if (bdev_reopen(bd, 0, &err) < 0) {
            agent_log(a, "change-backing-file: %s", err->msg);
            if (r == 0) {
                error_propagate(errp, err);
                r = -EIO;
            } else {
                error_free(err);
            }
        }
    }
    if (r == 0) {
        agent_log(a, "%s: backing file name now '%s'", bd->filename, file);
    }
    return r;
}

static const struct qmp_arg block_resize_args[] = {
    { "device", QMP_STR, true, NULL },
    { "node-name", QMP_STR, true, NULL },
    { "size", QMP_INT, false, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg change_backing_file_args[] = {
    { "device", QMP_STR, false, NULL },
    { "image-node-name", QMP_STR, false, NULL },
    { "backing-file", QMP_STR, false, NULL },
    { NULL, 0, false, NULL },
};

const struct qmp_command agent_resize_commands[] = {
    { "block_resize", qmp_block_resize, block_resize_args },
    { "change-backing-file", qmp_change_backing_file, change_backing_file_args },
    { NULL, NULL, NULL },
};
