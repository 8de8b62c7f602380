/*
 * blockctl - image options checked as QemuOpts does, sizes a new image
 * needs (qemu-img measure), internal snapshots shown read-only (-l), and
 * options changed in place (qemu-img amend)
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/size.h"

#include <errno.h>
#include <string.h>

/* What qemu-img measure accepts besides a format's create options: the file's. */
static const struct opt_desc file_create_opts[] = {
    { "size", OPT_SIZE, "Virtual disk size" },
    { "preallocation", OPT_STRING, "Preallocation mode" },
    { "nocow", OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)" },
    { "extent_size_hint", OPT_SIZE, "Extent size hint for the image file, 0 to disable" },
    { NULL, 0, NULL },
};

static const struct opt_desc *find_in(const struct opt_desc *d, const char *key)
{
    for (; d && d->name; d++) {
        if (!strcmp(d->name, key)) {
            return d;
        }
    }
    return NULL;
}

/* Check one value as QemuOpts does, with its messages. */
static int check_value(const struct opt_desc *d, const char *v, struct error **errp)
{
    uint64_t n;
    char *end;

    switch (d->type) {
    case OPT_BOOL:
        if (strcmp(v, "on") && strcmp(v, "off") && strcmp(v, "yes") && strcmp(v, "no") &&
            strcmp(v, "true") && strcmp(v, "false")) {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'", d->name);
            return -EINVAL;
        }
        break;
    case OPT_NUMBER:
        errno = 0;
        n = strtoull(v, &end, 0);
        (void)n;
        if (!*v || *end || errno || *v == '-') {
            error_setg(errp, "Parameter '%s' expects a number", d->name);
            return -EINVAL;
        }
        break;
    case OPT_SIZE:
        if (size_parse(v, &n, 0) < 0) {
            error_setg(errp, "Parameter '%s' expects a non-negative number below 2^64", d->name);
            error_append_hint(errp, "Optional suffix k, M, G, T, P or E means kilo-, mega-, "
                              "giga-, tera-, peta-\nand exabytes, respectively.");
            return -EINVAL;
        }
        break;
    case OPT_STRING:
        break;
    }
    return 0;
}

/* "a, b, c": the names -o help lists (all of them if it lists none) */
static char *valid_names(const struct opt_desc *a, const struct opt_desc *b, bool all)
{
    const struct opt_desc *set[2] = { a, b };
    char *list = xstrdup("");

    for (int k = 0; k < 2; k++) {
        for (const struct opt_desc *d = set[k]; d && d->name; d++) {
            char *j;
            if ((!all && (!d->help || d->unsupported)) || (k == 1 && find_in(a, d->name))) {
                continue;
            }
            j = xasprintf("%s%s%s", list, *list ? ", " : "", d->name);
            free(list);
            list = j;
        }
    }
    if (!*list && !all) {
        free(list);
        return valid_names(a, b, true);
    }
    return list;
}

int bdev_opts_check(const char *str, const struct opt_desc *a, const struct opt_desc *b,
                    struct optlist *out, struct error **errp)
{
    if (opts_parse(out, str, NULL, errp) < 0) {
        return -EINVAL;
    }
    for (size_t i = 0; i < out->n; i++) {
        const struct opt_desc *d = find_in(a, out->v[i].key);
        if (!d) {
            d = find_in(b, out->v[i].key);
        }
        if (!d) {
            char *valid = valid_names(a, b, false);
            error_setg(errp, "Invalid parameter '%s' (valid: %s)", out->v[i].key, valid);
            free(valid);
            return -EINVAL;
        }
        if (check_value(d, out->v[i].value, errp) < 0) {
            return -EINVAL;
        }
    }
    return 0;
}

int bdev_measure_opts(const struct format_driver *drv, const char *str, struct optlist *out,
                      struct error **errp)
{
    return bdev_opts_check(str, drv->create_opts, file_create_opts, out, errp);
}

int bdev_measure(const struct format_driver *drv, const struct optlist *o, struct bdev *in,
                 struct measure_info *out, struct error **errp)
{
    memset(out, 0, sizeof(*out));
    if (!drv->measure) {
        error_setg(errp, "Block driver '%s' does not support size measurement", drv->name);
        return -ENOTSUP;
    }
    return drv->measure(o, in, out, errp);
}

static int load_tmp(struct bdev *bd, const char *id, const char *name, struct error **errp)
{
    if (!bd->drv->snapshot_load_tmp) {
        error_setg(errp, "Block format '%s' used by device '' does not support temporarily "
                   "loading internal snapshots", bdev_format_name(bd));
        return -ENOTSUP;
    }
    return bd->drv->snapshot_load_tmp(bd, id, name, errp);
}

int bdev_snapshot_load_tmp(struct bdev *bd, const char *spec, struct error **errp)
{
    struct error *err = NULL;
    int ret;

    if (!strncmp(spec, "snapshot.", 9)) {
        struct optlist o = { 0 };
        static const struct opt_desc sn_opts[] = {
            { "snapshot.id", OPT_STRING, NULL },
            { "snapshot.name", OPT_STRING, NULL },
            { NULL, 0, NULL },
        };
        ret = bdev_opts_check(spec, sn_opts, NULL, &o, errp);
        if (ret == 0) {
            const char *id = opts_get(&o, "snapshot.id"), *name = opts_get(&o, "snapshot.name");
            if (!id && !name) {
                error_setg(errp, "snapshot_id and name are both NULL");
                ret = -EINVAL;
            } else {
                ret = load_tmp(bd, id, name, errp);
            }
        } else {
            error_prefix(errp, "Failed in parsing snapshot param '%s': ", spec);
        }
        opts_free(&o);
        return ret;
    }
    /* an ID first, then a name (bdrv_snapshot_load_tmp_by_id_or_name) */
    ret = load_tmp(bd, spec, NULL, &err);
    if (ret == -ENOENT || ret == -EINVAL) {
        error_free(err);
        err = NULL;
        ret = load_tmp(bd, NULL, spec, &err);
    }
    error_propagate(errp, err);
    return ret;
}

int bdev_amend_opts(const struct format_driver *drv, const char *str, struct optlist *out,
                    struct error **errp)
{
    struct error *err = NULL;
    int ret;

    if (!drv->amend_opts) {
        error_setg(errp, "Format driver '%s' does not support option amendment", drv->name);
        return -ENOTSUP;
    }
    ret = bdev_opts_check(str, drv->amend_opts, NULL, out, &err);
    if (ret < 0) {
        struct optlist c = { 0 };
        if (bdev_opts_check(str, drv->create_opts, NULL, &c, NULL) == 0) {
            error_append_hint(&err, "This option is only supported for image creation");
        }
        opts_free(&c);
        error_propagate(errp, err);
    }
    return ret;
}

int bdev_amend(struct bdev *bd, const struct optlist *o, const struct amend_ctl *ctl,
               struct error **errp)
{
    if (!bd->drv->amend) {
        error_setg(errp, "Format driver '%s' does not support option amendment", bd->drv->name);
        return -ENOTSUP;
    }
    if (bd->read_only) {
        error_setg(errp, "'%s': opened read-only", bd->filename);
        return -EPERM;
    }
    return bd->drv->amend(bd, o, ctl, errp);
}
