/*
 * blockctl snapshot - external snapshots, atomic over several disks
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "lib/jw.h"
#include "lib/size.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cmd/cmd.h"

struct snapshot_args {
    const char *format;
    bool list;
    bool quiet;
    enum output_format output;
    char *opts;
    char **args;
    int nargs;
};

enum { OPT_OUTPUT = 0x100 };

static const struct argp_option options[] = {
    { "format", 'F', "FMT", 0, "Format of the IMAGEs; probed when omitted", 0 },
    { "list", 'l', NULL, 0, "List IMAGE's backing chain and internal snapshots", 0 },
    { "options", 'o', "OPTS", 0, "qcow2 options for the overlays, as create -o", 0 },
    { "output", OPT_OUTPUT, "FMT", 0, "With -l: human (default) or json", 0 },
    { "quiet", 'q', NULL, 0, "Print nothing on success", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct snapshot_args *a = state->input;

    switch (key) {
    case 'F':
        a->format = arg;
        break;
    case 'l':
        a->list = true;
        break;
    case 'q':
        a->quiet = true;
        break;
    case OPT_OUTPUT:
        a->output = parse_output_format(arg, state);
        break;
    case 'o':
        append_opts(&a->opts, arg);
        break;
    case ARGP_KEY_ARGS:
        a->args = state->argv + state->next;
        a->nargs = state->argc - state->next;
        break;
    case ARGP_KEY_END:
        if (!a->list && a->output == OUTPUT_JSON) {
            argp_error(state, "--output is for -l");
        }
        if (a->list && a->opts) {
            argp_error(state, "-o is for creating overlays, not for -l");
        }
        if (a->list ? a->nargs != 1 : (a->nargs < 2 || a->nargs % 2)) {
            argp_error(state, a->list ? "-l takes one IMAGE"
                                      : "IMAGE OVERLAY pairs are needed");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp snapshot_argp = {
    options, parse_opt, "IMAGE OVERLAY [IMAGE OVERLAY...]\n-l IMAGE",
    "Create external snapshots: each OVERLAY becomes a new qcow2 image backed by its IMAGE, "
    "all of them or none.  With -l, list IMAGE's backing chain and internal snapshots.\v"
    "Exit status: 0 on success, 1 on error (no overlay is left behind), 64 for usage "
    "errors.",
    NULL, NULL, NULL,
};

static int do_list(struct snapshot_args *a)
{
    struct error *err = NULL;
    struct bdev *top = bdev_open(a->args[0], a->format, BDEV_O_FORCE_SHARE, &err);
    struct jw w;
    int ret = 0;

    if (!top) {
        report(err);
        return 1;
    }
    jw_init(&w, true);
    jw_array_begin(&w);
    for (struct bdev *bd = top; bd; bd = bd->backing) {
        struct image_info in;
        if (bdev_get_info(bd, &in, &err) < 0) {
            report(err);
            ret = 1;
            break;
        }
        if (a->output == OUTPUT_JSON) {
            jw_object_begin(&w);
            jw_kv_string(&w, "filename", bd->filename);
            jw_kv_string(&w, "format", bdev_format_name(bd));
            jw_kv_uint(&w, "virtual-size", bd->size);
            if (bd->backing_file) {
                jw_kv_string(&w, "backing-filename", bd->backing_file);
            }
            jw_key(&w, "snapshots");
            jw_array_begin(&w);
            for (size_t i = 0; i < in.nr_snapshots; i++) {
                jw_object_begin(&w);
                jw_kv_string(&w, "id", in.snapshots[i].id);
                jw_kv_string(&w, "name", in.snapshots[i].name);
                jw_kv_uint(&w, "vm-state-size", in.snapshots[i].vm_state_size);
                jw_kv_uint(&w, "date-sec", in.snapshots[i].date_sec);
                jw_kv_uint(&w, "date-nsec", in.snapshots[i].date_nsec);
                jw_kv_uint(&w, "vm-clock-sec", in.snapshots[i].vm_clock_nsec / 1000000000ULL);
                jw_kv_uint(&w, "vm-clock-nsec", in.snapshots[i].vm_clock_nsec % 1000000000ULL);
                if (in.snapshots[i].has_icount) {
                    jw_kv_uint(&w, "icount", in.snapshots[i].icount);
                }
                jw_object_end(&w);
            }
            jw_array_end(&w);
            jw_object_end(&w);
        } else {
            char sz[32];
            size_human(bd->size, sz, sizeof(sz));
            printf("%s%s (%s, %s)\n", bd == top ? "" : "  <- ", bd->filename, bdev_format_name(bd), sz);
            if (in.nr_snapshots) {
                print_snapshot_table(&in);
            }
        }
        image_info_free(&in);
    }
    jw_array_end(&w);
    if (a->output == OUTPUT_JSON && ret == 0) {
        printf("%s\n", jw_text(&w));
    }
    jw_free(&w);
    bdev_unref(top);
    return ret;
}

/*
 * Create the qcow2 image @ov under a hidden temporary name in its folder
 * and rename it into place once complete (never replacing a file), so
 * that a kill at any instant leaves either no @ov or a complete one.
 * *@made is set once @ov exists.  Returns 0 or -errno.
 */
static int create_overlay(const char *ov, const struct optlist *o, bool *made,
                          struct error **errp)
{
    const char *slash = strrchr(ov, '/');
    char *tmp = slash ? xasprintf("%.*s.blockctl-new.%s", (int)(slash - ov + 1), ov, slash + 1)
                      : xasprintf(".blockctl-new.%s", ov);
    int r = bdev_create("qcow2", tmp, o, BDEV_CREATE_FORCE, errp);

    if (r < 0 && *errp) {
        /* the user knows the file by its own name */
        char *m = (*errp)->msg, *at = strstr(m, tmp);
        if (at) {
            (*errp)->msg = xasprintf("%.*s%s%s", (int)(at - m), m, ov, at + strlen(tmp));
            free(m);
        }
    }
    if (r == 0) {
        r = io_rename_noreplace(tmp, ov);
        if (r < 0) {
            error_setg_errno(errp, -r, "cannot rename '%s' to '%s'", tmp, ov);
        } else {
            *made = true;
            r = io_dirsync(ov);
            if (r < 0) {
                error_setg_errno(errp, -r, "'%s': cannot sync its folder", ov);
            }
        }
    }
    if (r < 0 && !*made) {
        unlink(tmp);
    }
    free(tmp);
    return r;
}

int cmd_snapshot(int argc, char **argv)
{
    struct snapshot_args a = { 0 };
    struct error *err = NULL;
    struct bdev **imgs = NULL;
    bool *made = NULL;
    int n, ret = 1;

    argp_parse(&snapshot_argp, argc, argv, 0, NULL, &a);
    if (a.list) {
        return do_list(&a);
    }
    if (a.opts && opts_want_help(a.opts)) {
        const struct format_driver *drv = bdev_find_driver("qcow2");
        opts_print_help(drv->name, drv->create_opts);
        free(a.opts);
        return 0;
    }
    cancel_install();
    n = a.nargs / 2;
    imgs = xcalloc(n, sizeof(*imgs));
    made = xcalloc(n, sizeof(*made));

    /*
     * Check everything first: every IMAGE opens (with its chain, and read
     * locks that keep a writer out until we are done), no OVERLAY exists,
     * no OVERLAY is named twice.
     */
    for (int i = 0; i < n; i++) {
        const char *img = a.args[2 * i], *ov = a.args[2 * i + 1];
        struct stat st;

        imgs[i] = bdev_open(img, a.format, 0, &err);
        if (!imgs[i]) {
            report(err);
            goto out;
        }
        if (stat(ov, &st) == 0) {
            error_report("'%s' already exists", ov);
            goto out;
        }
        for (int j = 0; j < i; j++) {
            if (!strcmp(a.args[2 * j + 1], ov)) {
                error_report("'%s' is named twice", ov);
                goto out;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        const char *ov = a.args[2 * i + 1];
        struct optlist o = { 0 };
        char *dir = bdev_dirname(ov), *bname;
        char sz[32];
        int r;

        if (a.opts && opts_parse(&o, a.opts, bdev_find_driver("qcow2")->create_opts, &err) < 0) {
            report(err);
            free(dir);
            opts_free(&o);
            goto out;
        }
        bname = imgs[i]->drv->is_protocol ? xstrdup(imgs[i]->filename)
                                          : bdev_relative_path(imgs[i]->filename, dir);
        free(dir);
        snprintf(sz, sizeof(sz), "%" PRIu64, imgs[i]->size);
        opts_set(&o, "size", sz);
        opts_set(&o, "backing_file", bname);
        opts_set(&o, "backing_fmt", bdev_format_name(imgs[i]));
        free(bname);
        r = create_overlay(ov, &o, &made[i], &err);
        opts_free(&o);
        if (r < 0) {
            report(err);
            goto out;
        }
        if (cmd_cancel) {
            error_report("interrupted: no overlay was kept");
            ret = cancel_exit_status();
            goto out;
        }
    }
    ret = 0;
    if (!a.quiet) {
        for (int i = 0; i < n; i++) {
            printf("'%s' is now backed by '%s'\n", a.args[2 * i + 1], a.args[2 * i]);
        }
    }
out:
    if (ret == 0 && cmd_cancel) {
        ret = cancel_exit_status();
        error_report("interrupted: no overlay was kept");
    }
    if (ret) {
        /* All or nothing: remove the overlays made so far. */
        for (int i = 0; i < n; i++) {
            if (made[i]) {
                unlink(a.args[2 * i + 1]);
            }
        }
    }
    for (int i = 0; i < n; i++) {
        bdev_unref(imgs[i]);
    }
    free(imgs);
    free(made);
    free(a.opts);
    return ret;
}
