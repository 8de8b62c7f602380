/*
 * blockctl - the agent's own nodes: blockdev-add and blockdev-del, for
 * images that belong to no disk yet (blockdev-mirror's targets)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Drivers file, raw, qcow2 and nbd, with QEMU 7.2's arguments.  A file
 * node only names its file: the format node above it opens the image
 * (one user at most, as QEMU's permissions allow); used itself as an
 * image, it is opened raw.  A node stays the agent's until blockdev-del,
 * or until a pivot makes it a disk's top (then it is that disk's node,
 * under the same name).
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct agent_node {
    char *name;
    char *driver;                /* file, raw, qcow2, nbd */
    char *filename;              /* file: its file */
    bool read_only;
    struct bdev *bd;             /* our reference (a file node: once used raw) */
    struct agent_node *file;     /* a format node's file node, if one was named */
    struct agent_node *user;     /* a file node's format node */
    struct agent_node *next;
};

static const char *str_of(json_object *o, const char *key)
{
    json_object *v;

    return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

static struct agent_node *find(struct agent *a, const char *name)
{
    for (struct agent_node *n = a->nodes; n; n = n->next) {
        if (!strcmp(n->name, name)) {
            return n;
        }
    }
    return NULL;
}

bool agent_node_exists(struct agent *a, const char *name)
{
    return find(a, name) != NULL;
}

static int open_node(struct agent_node *n, const char *path, const char *fmt, unsigned flags,
                     struct error **errp)
{
    struct error *err = NULL;

    n->bd = bdev_open(path, fmt, flags | BDEV_O_KILL_SAFE | (n->read_only ? 0 : BDEV_O_RDWR),
                      &err);
    if (!n->bd) {
        if (!strncmp(err->msg, "cannot open", 11)) {
            char *m = xasprintf("Could not open%s", err->msg + 11);   /* QEMU's words */
            free(err->msg);
            err->msg = m;
        }
        error_propagate(errp, err);
        return -EIO;
    }
    free(n->bd->node_name);
    n->bd->node_name = xstrdup(n->name);
    return 0;
}

struct bdev *agent_node_bdev(struct agent *a, const char *name, struct error **errp)
{
    struct agent_node *n = find(a, name);

    if (!n) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'", name, name);
        return NULL;
    }
    if (!n->bd && n->user) {
        error_setg(errp, "Node '%s' is in use by node '%s'", name, n->user->name);
        return NULL;
    }
    if (!n->bd && open_node(n, n->filename, "raw", 0, errp) < 0) {
        return NULL;
    }
    return n->bd;
}

static void node_free(struct agent *a, struct agent_node *n, bool close_bd)
{
    struct agent_node **pp;

    for (pp = &a->nodes; *pp != n; pp = &(*pp)->next) {
    }
    *pp = n->next;
    if (n->file) {
        n->file->user = NULL;
    }
    if (n->bd && close_bd) {
        struct error *err = NULL;
        if (bdev_close(n->bd, &err) < 0) {
            agent_log(a, "node %s: %s", n->name, err->msg);
            error_free(err);
        }
    }
    free(n->name);
    free(n->driver);
    free(n->filename);
    free(n);
}

void agent_node_adopted(struct agent *a, struct bdev *bd)
{
    for (struct agent_node *n = a->nodes; n; n = n->next) {
        if (n->bd == bd) {
            struct agent_node *file = n->file;
            /* the disk holds its own reference; ours goes */
            bdev_unref(bd);
            node_free(a, n, false);
            if (file) {
                node_free(a, file, true);
            }
            return;
        }
    }
}

struct bdev *agent_nodes_next(struct agent *a, struct bdev *prev)
{
    bool past = !prev;

    for (struct agent_node *n = a->nodes; n; n = n->next) {
        if (!n->bd) {
            continue;
        }
        if (past) {
            return n->bd;
        }
        past = n->bd == prev;
    }
    return NULL;
}

void agent_nodes_free(struct agent *a)
{
    while (a->nodes) {
        /* format nodes first: their file nodes are theirs */
        struct agent_node *n = a->nodes;
        while (n->user) {
            n = n->user;
        }
        node_free(a, n, true);
    }
}

/* The file under a format node: a node name, or {"driver": "file", "filename": ...}. */
static const char *file_of(struct agent *a, json_object *ref, struct agent_node **fnode,
                           struct error **errp)
{
    *fnode = NULL;
    if (json_object_is_type(ref, json_type_string)) {
        struct agent_node *f = find(a, json_object_get_string(ref));
        if (!f) {
            const char *s = json_object_get_string(ref);
            error_setg(errp, "Cannot find device='%s' nor node-name='%s'", s, s);
            return NULL;
        }
        if (strcmp(f->driver, "file") || f->user || f->bd) {
            error_setg(errp, "Node '%s' is in use%s%s", f->name, f->user ? " by node " : "",
                       f->user ? f->user->name : "");
            return NULL;
        }
        *fnode = f;
        return f->filename;
    }
    if (!str_of(ref, "driver") || strcmp(str_of(ref, "driver"), "file") ||
        !str_of(ref, "filename")) {
        error_setg(errp, "Parameter 'file' must name a node or be a file driver's options "
                   "{\"driver\": \"file\", \"filename\": ...}");
        return NULL;
    }
    return str_of(ref, "filename");
}

static char *nbd_uri(json_object *args, struct error **errp)
{
    json_object *srv = NULL;
    const char *type, *exp = str_of(args, "export");

    json_object_object_get_ex(args, "server", &srv);
    type = str_of(srv, "type");
    if (type && !strcmp(type, "unix") && str_of(srv, "path")) {
        return xasprintf("nbd+unix:///%s?socket=%s", exp ? exp : "", str_of(srv, "path"));
    }
    if (type && !strcmp(type, "inet") && str_of(srv, "host") && str_of(srv, "port")) {
        return xasprintf("nbd://%s:%s/%s", str_of(srv, "host"), str_of(srv, "port"),
                         exp ? exp : "");
    }
    error_setg(errp, "Parameter 'server' must be {\"type\": \"unix\", \"path\": ...} or "
               "{\"type\": \"inet\", \"host\": ..., \"port\": ...}");
    return NULL;
}

static int qmp_blockdev_add(json_object *args, json_object **ret, void *opaque,
                            struct error **errp)
{
    struct agent *a = opaque;
    const char *driver = str_of(args, "driver"), *name = str_of(args, "node-name");
    struct agent_node *n;
    json_object *v;
    int r = 0;

    (void)ret;
    if (!name) {
        error_setg(errp, "'node-name' must be specified for the root node");
        return -EINVAL;
    }
    if (find(a, name) || agent_find_node(a, name, NULL, NULL)) {
        error_setg(errp, "Duplicate nodes with node-name='%s'", name);
        return -EEXIST;
    }
    if (strcmp(driver, "file") && strcmp(driver, "raw") && strcmp(driver, "qcow2") &&
        strcmp(driver, "nbd")) {
        error_setg(errp, "Driver '%s' is not supported by blockctl's agent (file, raw, "
                   "qcow2, nbd)", driver);
        return -ENOTSUP;
    }
    n = xzalloc(sizeof(*n));
    n->name = xstrdup(name);
    n->driver = xstrdup(driver);
    n->read_only = json_object_object_get_ex(args, "read-only", &v) && json_object_get_boolean(v);
    if (!strcmp(driver, "file")) {
        const char *fn = str_of(args, "filename");
        int fd = open(fn, n->read_only ? O_RDONLY : O_RDWR);
        if (fd < 0) {
            error_setg(errp, "Could not open '%s': %s", fn, strerror(errno));
            r = -errno;
        } else {
            close(fd);
            n->filename = xstrdup(fn);
        }
    } else if (!strcmp(driver, "nbd")) {
        char *uri = nbd_uri(args, errp);
        r = uri ? open_node(n, uri, "raw", 0, errp) : -EINVAL;
        free(uri);
    } else {
        json_object *file = NULL, *backing = NULL;
        struct agent_node *fnode = NULL;
        struct bdev *bk = NULL;
        const char *path;
        bool has_backing = json_object_object_get_ex(args, "backing", &backing);
        unsigned flags = 0;

        json_object_object_get_ex(args, "file", &file);
        path = file_of(a, file, &fnode, errp);
        if (!path) {
            r = -EINVAL;
        } else if (has_backing && !strcmp(driver, "raw")) {
            error_setg(errp, "Parameter 'backing' is unexpected");
            r = -EINVAL;
        } else if (has_backing && backing) {
            bk = agent_find_node(a, json_object_get_string(backing), NULL, NULL);
            if (!bk && find(a, json_object_get_string(backing))) {
                bk = find(a, json_object_get_string(backing))->bd;
            }
            if (!bk) {
                const char *s = json_object_get_string(backing);
                error_setg(errp, "Cannot find device='%s' nor node-name='%s'", s, s);
                r = -ENOENT;
            }
        }
        if (has_backing) {
            flags |= BDEV_O_NO_BACKING;     /* null: none; a node: that one */
        }
        if (r == 0) {
            r = open_node(n, path, driver, flags, errp);
        }
        if (r == 0 && bk) {
            bdev_set_backing(n->bd, bk);
        }
        if (r == 0 && fnode) {
            n->file = fnode;
            fnode->user = n;
        }
    }
    if (r < 0) {
        free(n->name);
        free(n->driver);
        free(n->filename);
        free(n);
        return r;
    }
    n->next = a->nodes;
    a->nodes = n;
    agent_log(a, "node %s added (%s%s%s)", name, driver, n->filename ? " " : "",
              n->filename ? n->filename : "");
    return 0;
}

static int qmp_blockdev_del(json_object *args, json_object **ret, void *opaque,
                            struct error **errp)
{
    struct agent *a = opaque;
    const char *name = str_of(args, "node-name");
    struct agent_node *n = find(a, name);
    struct agent_disk *d = NULL;

    (void)ret;
    if (!n) {
        if (agent_find_node(a, name, &d, NULL) && d) {
            if (agent_disk_check_busy(a, d, name, errp) < 0) {
                return -EBUSY;
            }
            error_setg(errp, "Node %s is in use", name);
            return -EBUSY;
        }
        error_setg(errp, "Failed to find node with node-name='%s'", name);
        return -ENOENT;
    }
    if (n->user) {
        error_setg(errp, "Block device %s is in use", name);
        return -EBUSY;
    }
    if (n->bd && __atomic_load_n(&n->bd->refcnt, __ATOMIC_ACQUIRE) > 1) {
        error_setg(errp, "Node %s is in use", name);
        return -EBUSY;
    }
    agent_log(a, "node %s deleted", name);
    node_free(a, n, true);
    return 0;
}

/* QEMU 7.2's BlockdevOptions, for the drivers the agent opens: a union
 * on "driver"; members the agent does not act on are accepted (any). */
static const char *const drivers[] = {
    "blkdebug", "blklogwrites", "blkverify", "blkreplay", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "ftp", "ftps", "gluster",
    "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs", "null-aio",
    "null-co", "nvme", "parallels", "preallocate", "qcow2", "qcow", "qed", "quorum", "raw",
    "rbd", "replication", "snapshot-access", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc",
    "vvfat", NULL,
};

static const char *const discard_modes[] = { "ignore", "unmap", NULL };
static const char *const dz_modes[] = { "off", "on", "unmap", NULL };

static const struct qmp_arg ref_branches[] = {
    { "", QMP_STR, false, NULL },
    { "", QMP_OBJECT, false, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg file_members[] = {
    { "filename", QMP_STR, false, NULL },
    { "pr-manager", QMP_STR, true, NULL },
    { "locking", QMP_ANY, true, NULL },
    { "aio", QMP_ANY, true, NULL },
    { "aio-max-batch", QMP_INT, true, NULL },
    { "drop-cache", QMP_BOOL, true, NULL },
    { "x-check-cache-dropped", QMP_BOOL, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg raw_members[] = {
    { "file", QMP_ALTERNATE, false, NULL, .branches = ref_branches,
      .type_name = "BlockdevRef" },
    { "offset", QMP_INT, true, NULL },
    { "size", QMP_INT, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg qcow2_members[] = {
    { "file", QMP_ALTERNATE, false, NULL, .branches = ref_branches,
      .type_name = "BlockdevRef" },
    { "backing", QMP_ANY, true, NULL },
    { "lazy-refcounts", QMP_BOOL, true, NULL },
    { "pass-discard-request", QMP_BOOL, true, NULL },
    { "pass-discard-snapshot", QMP_BOOL, true, NULL },
    { "pass-discard-other", QMP_BOOL, true, NULL },
    { "overlap-check", QMP_ANY, true, NULL },
    { "cache-size", QMP_INT, true, NULL },
    { "l2-cache-size", QMP_INT, true, NULL },
    { "l2-cache-entry-size", QMP_INT, true, NULL },
    { "refcount-cache-size", QMP_INT, true, NULL },
    { "cache-clean-interval", QMP_INT, true, NULL },
    { "encrypt", QMP_ANY, true, NULL },
    { "data-file", QMP_ANY, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg nbd_members[] = {
    { "server", QMP_OBJECT, false, NULL },
    { "export", QMP_STR, true, NULL },
    { "tls-creds", QMP_STR, true, NULL },
    { "tls-hostname", QMP_STR, true, NULL },
    { "x-dirty-bitmap", QMP_STR, true, NULL },
    { "reconnect-delay", QMP_INT, true, NULL },
    { "open-timeout", QMP_INT, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_variant driver_variants[] = {
    { "file", file_members },
    { "raw", raw_members },
    { "qcow2", qcow2_members },
    { "nbd", nbd_members },
    { NULL, NULL },
};

static const struct qmp_arg add_base[] = {
    { "driver", QMP_ENUM, false, drivers },
    { "node-name", QMP_STR, true, NULL },
    { "discard", QMP_ENUM, true, discard_modes },
    { "cache", QMP_OBJECT, true, NULL },
    { "read-only", QMP_BOOL, true, NULL },
    { "auto-read-only", QMP_BOOL, true, NULL },
    { "force-share", QMP_BOOL, true, NULL },
    { "detect-zeroes", QMP_ENUM, true, dz_modes },
    { NULL, 0, false, NULL },
};

/* (the command's arguments are the union itself: checked as an object's members) */
static const struct qmp_arg add_args[] = {
    { "", QMP_OBJECT, false, NULL, .members = add_base, .discriminator = "driver",
      .variants = driver_variants },
    { NULL, 0, false, NULL },
};

static const struct qmp_arg del_args[] = {
    { "node-name", QMP_STR, false, NULL },
    { NULL, 0, false, NULL },
};

const struct qmp_command agent_node_commands[] = {
    { "blockdev-add", qmp_blockdev_add, add_args },
    { "blockdev-del", qmp_blockdev_del, del_args },
    { NULL, NULL, NULL },
};
