/*
 * blockctl - the command line's side of --agent: find a disk on a QMP
 * server (a blockctl agent, a qemu-storage-daemon or a QEMU monitor)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A disk NAME is found as the agent names its disks (query-block's
 * device), or, for a qemu-storage-daemon, as an export whose id (or NBD
 * name) is NAME (query-block-exports), whose node is then the disk's top;
 * failing both, as a node name or (NAME with a '/') the image file of a
 * node (query-named-block-nodes).
 */
#ifndef BLOCKCTL_LIB_REMOTE_H
#define BLOCKCTL_LIB_REMOTE_H

#include "lib/compiler.h"
#include "lib/error.h"
#include "lib/qmp/qmp.h"

struct remote_disk {
    char *name;          /* as asked */
    char *node;          /* what to pass as `node`/`node-name` */
    char *device;        /* the device name, or NULL (a qemu-storage-daemon's export) */
    char *top_node;      /* the node name of the disk's top image, or NULL */
    bool blockctl;       /* the server is a blockctl agent (union bitmaps etc.) */
    json_object *image;  /* ImageInfo of the top, with "backing-image" nested */
    json_object *bitmaps;/* BlockDirtyInfo list of the top node */
};

/* Connect to @path (NULL: $BLOCKCTL_AGENT); errors name the socket. */
struct qmp_client *remote_connect(const char *path, struct error **errp);
/* The socket path to use: @path or $BLOCKCTL_AGENT, or NULL. */
const char *remote_path(const char *path);

/* Is the server blockctl's agent (query-version's package)? */
bool remote_is_blockctl(struct qmp_client *c);
int remote_find_disk(struct qmp_client *c, const char *name, struct remote_disk *out,
                     struct error **errp);
void remote_disk_free(struct remote_disk *d);

/* The BlockDirtyInfo lists of every node of the disk's chain, top first
 * (a JSON array of arrays; the caller puts it). */
json_object *remote_chain_bitmaps(struct qmp_client *c, struct remote_disk *d,
                                  struct error **errp);

#endif
