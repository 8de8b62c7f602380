/*
 * blockctl - the command line's side of --agent
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/remote.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Every wait for the server is bounded by this (BLOCKCTL_AGENT_TIMEOUT, seconds). */
static unsigned timeout_ms(void)
{
    const char *t = getenv("BLOCKCTL_AGENT_TIMEOUT");
    char *end;
    unsigned long v;

    if (t && *t) {
        v = strtoul(t, &end, 10);
        if (!*end && v > 0 && v < 86400) {
            return (unsigned)v * 1000;
        }
    }
    return 30000;
}

const char *remote_path(const char *path)
{
    if (path && *path) {
        return path;
    }
    path = getenv("BLOCKCTL_AGENT");
    return path && *path ? path : NULL;
}

struct qmp_client *remote_connect(const char *path, struct error **errp)
{
    path = remote_path(path);
    if (!path) {
        error_setg(errp, "no agent: give --agent SOCKET or set BLOCKCTL_AGENT");
        return NULL;
    }
    return qmp_client_connect(path, timeout_ms(), errp);
}

static const char *str(json_object *o, const char *key)
{
    json_object *v;

    return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

static json_object *member(json_object *o, const char *key)
{
    json_object *v;

    return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

void remote_disk_free(struct remote_disk *d)
{
    free(d->name);
    free(d->node);
    free(d->device);
    free(d->top_node);
    json_object_put(d->image);
    json_object_put(d->bitmaps);
    memset(d, 0, sizeof(*d));
}

bool remote_is_blockctl(struct qmp_client *c)
{
    json_object *v = NULL;
    const char *pkg;
    bool r;

    if (qmp_client_execute(c, "query-version", NULL, &v, NULL) < 0) {
        return false;
    }
    pkg = str(v, "package");
    r = pkg && !strncmp(pkg, "blockctl", 8);
    json_object_put(v);
    return r;
}

/* The entry of query-named-block-nodes for @node, or NULL (a new reference). */
/* The node named @node, or (@by_file) the one whose image is the file @node. */
static json_object *find_node(struct qmp_client *c, const char *node, bool by_file,
                              struct error **errp)
{
    json_object *nodes = NULL, *found = NULL;
    char *want = by_file ? realpath(node, NULL) : NULL;

    if (qmp_client_execute(c, "query-named-block-nodes", NULL, &nodes, errp) < 0) {
        free(want);
        return NULL;
    }
    for (size_t i = 0; i < json_object_array_length(nodes); i++) {
        json_object *n = json_object_array_get_idx(nodes, i);
        const char *nn = str(n, by_file ? "file" : "node-name");
        char *real = by_file && nn ? realpath(nn, NULL) : NULL;
        bool match = nn && (!strcmp(nn, node) || (want && real && !strcmp(real, want)));
        free(real);
        /* (by file: a format node, not the protocol node under it) */
        if (match && (!by_file || strcmp(str(n, "drv") ? str(n, "drv") : "", "file"))) {
            found = json_object_get(n);
            break;
        }
    }
    free(want);
    json_object_put(nodes);
    if (!found) {
        error_setg(errp, "the server has no node '%s'", node);
    }
    return found;
}

static json_object *named_node(struct qmp_client *c, const char *node, struct error **errp)
{
    return find_node(c, node, false, errp);
}

/* Is @name one of the ", "-separated @names? */
static bool has_name(const char *names, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = names; (p = strstr(p, name)); p += n) {
        if ((p == names || p[-1] == ' ') && (p[n] == ',' || !p[n])) {
            return true;
        }
    }
    return false;
}

int remote_find_disk(struct qmp_client *c, const char *name, struct remote_disk *out,
                     struct error **errp)
{
    json_object *blocks = NULL, *exports = NULL, *ins = NULL, *n;
    char *names = xstrdup("");
    int ret = -ENOENT;

    memset(out, 0, sizeof(*out));
    out->name = xstrdup(name);
    out->blockctl = remote_is_blockctl(c);
    if (qmp_client_execute(c, "query-block", NULL, &blocks, errp) < 0) {
        free(names);
        return -EIO;
    }
    for (size_t i = 0; i < json_object_array_length(blocks); i++) {
        json_object *b = json_object_array_get_idx(blocks, i);
        const char *dev = str(b, "device");
        if (dev && *dev) {
            char *nn = xasprintf("%s%s%s", names, *names ? ", " : "", dev);
            free(names);
            names = nn;
        }
        if (dev && !strcmp(dev, name) && (ins = member(b, "inserted"))) {
            out->device = xstrdup(dev);
            /* a blockctl agent takes the disk name (the union of bitmaps) */
            out->node = xstrdup(out->blockctl || !str(ins, "node-name") ? dev
                                                                       : str(ins, "node-name"));
            out->image = json_object_get(member(ins, "image"));
            out->bitmaps = json_object_get(member(ins, "dirty-bitmaps"));
            out->top_node = str(ins, "node-name") ? xstrdup(str(ins, "node-name")) : NULL;
            ret = 0;
            goto out;
        }
    }
    /* a qemu-storage-daemon: the export of that name */
    if (qmp_client_execute(c, "query-block-exports", NULL, &exports, NULL) == 0) {
        for (size_t i = 0; i < json_object_array_length(exports); i++) {
            json_object *e = json_object_array_get_idx(exports, i);
            const char *id = str(e, "id"), *node = str(e, "node-name");
            if (id && !has_name(names, id)) {
                char *nn = xasprintf("%s%s%s", names, *names ? ", " : "", id);
                free(names);
                names = nn;
            }
            if (id && node && !strcmp(id, name)) {
                n = named_node(c, node, errp);
                if (!n) {
                    ret = -EIO;
                    goto out;
                }
                out->node = xstrdup(node);
                out->top_node = xstrdup(node);
                out->image = json_object_get(member(n, "image"));
                out->bitmaps = json_object_get(member(n, "dirty-bitmaps"));
                json_object_put(n);
                ret = 0;
                goto out;
            }
        }
    }
    /* a node name, or the file of a node (one image of a chain: the
     * bitmaps of that image alone) */
    if ((n = find_node(c, name, strchr(name, '/') != NULL, NULL))) {
        out->node = xstrdup(str(n, "node-name") ? str(n, "node-name") : name);
        out->top_node = xstrdup(out->node);
        out->image = json_object_get(member(n, "image"));
        out->bitmaps = json_object_get(member(n, "dirty-bitmaps"));
        json_object_put(n);
        ret = 0;
        goto out;
    }
    error_setg(errp, "no disk or node named '%s' on the agent (%s%s)", name,
               *names ? "disks: " : "it has no disks", names);
out:
    if (ret == 0 && !out->image) {
        error_setg(errp, "disk '%s' has no image inserted", name);
        ret = -ENOMEDIUM;
    }
    if (ret < 0) {
        remote_disk_free(out);
    }
    json_object_put(blocks);
    json_object_put(exports);
    free(names);
    return ret;
}

json_object *remote_chain_bitmaps(struct qmp_client *c, struct remote_disk *d,
                                  struct error **errp)
{
    json_object *nodes = NULL, *res = json_object_new_array();

    if (qmp_client_execute(c, "query-named-block-nodes", NULL, &nodes, errp) < 0) {
        json_object_put(res);
        return NULL;
    }
    for (json_object *img = d->image; img; img = member(img, "backing-image")) {
        const char *file = str(img, "filename");
        json_object *bms = NULL;
        for (size_t i = 0; file && i < json_object_array_length(nodes); i++) {
            json_object *n = json_object_array_get_idx(nodes, i);
            const char *nf = str(member(n, "image"), "filename");
            if (nf && !strcmp(nf, file)) {
                bms = member(n, "dirty-bitmaps");
                break;
            }
        }
        json_object_array_add(res, bms ? json_object_get(bms) : json_object_new_array());
    }
    json_object_put(nodes);
    return res;
}
