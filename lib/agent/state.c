/*
 * blockctl - the agent's state file: which image is each disk's top
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 *   {"version": 1, "disks": [{"name": "vda", "file": "/abs/top.qcow2",
 *     "format": "qcow2", "read-only": false, "copy-on-read": false,
 *     "node-names": ["vda-2", "vda-0", "vda-1"]}]}
 *
 * Replaced atomically (a temporary file, fsync, rename, fsync of the
 * folder) on every change of the graph, so that a restarted agent opens
 * the right images.
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"
#include "lib/io.h"
#include "lib/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define STATE_MAX_BYTES (16u << 20)

static char *abs_path(const char *name)
{
    char buf[PATH_MAX];

    if (name[0] == '/' || strstr(name, "://")) {
        return xstrdup(name);
    }
    if (!getcwd(buf, sizeof(buf))) {
        return xstrdup(name);
    }
    return xasprintf("%s/%s", buf, name);
}

static json_object *disk_json(struct agent_disk *d)
{
    json_object *o = json_object_new_object(), *nodes = json_object_new_array();
    struct bdev *top = d->pending_top ? d->pending_top : blk_root(d->blk);
    char *file = abs_path(top->filename);

    json_object_object_add(o, "name", json_object_new_string(d->name));
    json_object_object_add(o, "file", json_object_new_string(file));
    json_object_object_add(o, "format", json_object_new_string(bdev_format_name(top)));
    json_object_object_add(o, "read-only", json_object_new_boolean(d->read_only));
    json_object_object_add(o, "copy-on-read", json_object_new_boolean(d->copy_on_read));
    for (struct bdev *b = top; b; b = b->backing) {
        json_object_array_add(nodes, json_object_new_string(b->node_name ? b->node_name : ""));
    }
    json_object_object_add(o, "node-names", nodes);
    free(file);
    return o;
}

int agent_state_save(struct agent *a, struct error **errp)
{
    const char *path = a->cfg.state_path;
    json_object *root, *disks;
    int ret;

    if (!path) {
        return 0;
    }
    root = json_object_new_object();
    disks = json_object_new_array();
    json_object_object_add(root, "version", json_object_new_int(1));
    for (struct agent_disk *d = a->disks; d; d = d->next) {
        json_object_array_add(disks, disk_json(d));
    }
    json_object_object_add(root, "disks", disks);
    ret = json_file_replace(path, root, 0600, errp);
    if (ret < 0) {
        error_prefix(errp, "state file: ");
    }
    json_object_put(root);
    return ret;
}

void agent_disk_specs_free(struct agent_disk_spec *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(d[i].name);
        free(d[i].file);
        free(d[i].format);
        for (size_t k = 0; d[i].node_names && d[i].node_names[k]; k++) {
            free(d[i].node_names[k]);
        }
        free(d[i].node_names);
    }
    free(d);
}

static const char *member_str(json_object *o, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string)) {
        return NULL;
    }
    return json_object_get_string(v);
}

static bool member_bool(json_object *o, const char *key)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_boolean) &&
           json_object_get_boolean(v);
}

int agent_state_load(const char *path, struct agent_disk_spec **out, size_t *nout,
                     struct error **errp)
{
    struct agent_disk_spec *specs = NULL;
    json_object *root = NULL, *disks;
    struct stat st;
    char *text = NULL;
    size_t n = 0;
    ssize_t got;
    int fd, ret = -EINVAL;

    fd = io_open(path, O_RDONLY, 0);
    if (fd < 0) {
        if (fd != -ENOENT) {
            error_setg_errno(errp, -fd, "cannot read state file '%s'", path);
        }
        return fd;
    }
    if (fstat(fd, &st) < 0 || st.st_size > STATE_MAX_BYTES) {
        error_setg(errp, "state file '%s' is not a state file (too large)", path);
        io_close(fd);
        return -EINVAL;
    }
    text = xmalloc(st.st_size + 1);
    got = io_pread(fd, text, st.st_size, 0);
    io_close(fd);
    if (got < 0) {
        error_setg_errno(errp, (int)-got, "cannot read state file '%s'", path);
        free(text);
        return (int)got;
    }
    text[got] = '\0';
    root = json_tokener_parse(text);
    free(text);
    if (!root || !json_object_object_get_ex(root, "disks", &disks) ||
        !json_object_is_type(disks, json_type_array)) {
        error_setg(errp, "state file '%s' is not a blockctl agent state file", path);
        goto out;
    }
    n = json_object_array_length(disks);
    specs = xcalloc(n ? n : 1, sizeof(*specs));
    for (size_t i = 0; i < n; i++) {
        json_object *d = json_object_array_get_idx(disks, i), *nodes;
        const char *name = member_str(d, "name"), *file = member_str(d, "file");
        const char *fmt = member_str(d, "format");

        if (!name || !file || !*name || !*file) {
            error_setg(errp, "state file '%s': disk %zu has no name or file", path, i);
            agent_disk_specs_free(specs, n);
            specs = NULL;
            goto out;
        }
        specs[i].name = xstrdup(name);
        specs[i].file = xstrdup(file);
        specs[i].format = fmt ? xstrdup(fmt) : NULL;
        specs[i].read_only = member_bool(d, "read-only");
        specs[i].copy_on_read = member_bool(d, "copy-on-read");
        if (json_object_object_get_ex(d, "node-names", &nodes) &&
            json_object_is_type(nodes, json_type_array)) {
            size_t k, m = json_object_array_length(nodes);
            specs[i].node_names = xcalloc(m + 1, sizeof(char *));
            for (k = 0; k < m; k++) {
                json_object *v = json_object_array_get_idx(nodes, k);
                const char *s = json_object_get_string(v);
                if (!json_object_is_type(v, json_type_string) || !*s) {
                    break;
                }
                specs[i].node_names[k] = xstrdup(s);
            }
        }
    }
    *out = specs;
    *nout = n;
    ret = 0;
out:
    json_object_put(root);
    return ret;
}
