/*
 * blockctl create - create a new image
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "lib/size.h"

#include <argp.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/cmd.h"

struct create_args {
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *backing;
    const char *backing_fmt;
    const char *file;
    const char *size;
    char *opts;            /* joined -o arguments */
    bool unsafe;
    bool force;
};

enum { OPT_FORCE = 0x100 };

static const struct argp_option options[] = {
    { "backing", 'b', "FILE", 0, "Backing file (its size is the default size)", 0 },
    { "backing-format", 'F', "FMT", 0, "Format of the backing file (required with -b)", 0 },
    { NULL, 'B', "FMT", OPTION_HIDDEN, "Same as -F", 0 },
    { "unsafe", 'u', NULL, 0, "Do not open the backing file", 0 },
    { "options", 'o', "OPTS", 0, "Format options key=val[,...]; '-o help' lists them", 0 },
    { "force", OPT_FORCE, NULL, 0, "Replace FILE if it exists", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct create_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case 'b':
        a->backing = arg;
        break;
    case 'F':
    case 'B':
        a->backing_fmt = parse_format_arg(arg, "-F", state);
        break;
    case 'u':
        a->unsafe = true;
        break;
    case OPT_FORCE:
        a->force = true;
        break;
    case 'o':
        append_opts(&a->opts, arg);
        break;
    case ARGP_KEY_ARG:
        if (!a->file) {
            a->file = arg;
        } else if (!a->size) {
            a->size = arg;
        } else {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        break;
    case ARGP_KEY_END:
        if (!a->file && !(a->opts && (!strcmp(a->opts, "help") || !strcmp(a->opts, "?") ||
                                      strstr(a->opts, ",help") || strstr(a->opts, "help,")))) {
            argp_error(state, "missing image file name");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_create */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp create_argp = {
    options, parse_opt, "FILE [SIZE]",
    "Create a new disk image of SIZE bytes (suffixes k, M, G, T, P, E).\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    children, NULL, NULL,
};

/* The "Formatting" line, in qemu-img's option order. */
static void print_formatting(const char *file, const char *fmt, const struct optlist *o,
                             uint64_t size)
{
    static const char *const qcow2_order[] = {
        "cluster_size", "extended_l2", "preallocation", "compression_type", "size", "compat",
        "backing_file", "backing_fmt", "lazy_refcounts", "refcount_bits", NULL,
    };
    static const char *const raw_order[] = { "size", "preallocation", NULL };
    const char *const *order = strcmp(fmt, "qcow2") ? raw_order : qcow2_order;

    printf("Formatting '%s', fmt=%s", file, fmt);
    for (size_t i = 0; order[i]; i++) {
        const char *v = opts_get(o, order[i]);
        uint64_t n;
        if (!strcmp(order[i], "size")) {
            printf(" size=%" PRIu64, size);
            continue;
        }
        if (!strcmp(fmt, "qcow2") && !v) {
            if (!strcmp(order[i], "cluster_size")) {
                v = "65536";
            } else if (!strcmp(order[i], "extended_l2") || !strcmp(order[i], "lazy_refcounts")) {
                v = "off";
            } else if (!strcmp(order[i], "compression_type")) {
                v = "zlib";
            } else if (!strcmp(order[i], "refcount_bits")) {
                v = "16";
            }
        }
        if (!v) {
            continue;
        }
        if (!strcmp(order[i], "cluster_size") && size_parse(v, &n, 0) == 0) {
            printf(" %s=%" PRIu64, order[i], n);
        } else {
            printf(" %s=%s", order[i], v);
        }
    }
    printf("\n");
    fflush(stdout);
}

/*
 * Can FILE be created (its folder written) or, @in_place (a device),
 * written?  0, or -1 with the reason said as creating it would say it.
 */
static int may_write(const char *file, bool in_place)
{
    char *copy = xstrdup(file);
    const char *dir = dirname(copy);
    int r = access(in_place ? file : dir, in_place ? W_OK : W_OK | X_OK);

    if (r < 0) {
        error_report("cannot create '%s': %s", file, strerror(errno));
    }
    free(copy);
    return r;
}

int cmd_create(int argc, char **argv)
{
    struct create_args a = { 0 };
    struct optlist o = { 0 };
    struct error *err = NULL;
    const struct format_driver *drv;
    uint64_t size = 0;
    bool have_size = false;
    char sizebuf[32];
    int ret = 1;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT_NEW | IMGOPT_QUIET);
    argp_parse(&create_argp, argc, argv, 0, NULL, &a);
    if (!a.img.format) {
        a.img.format = "raw";
    }
    drv = bdev_find_driver(a.img.format);
    if (!drv || !drv->create) {
        error_report("unknown image format '%s' (use raw or qcow2)", a.img.format);
        goto out;
    }
    if (a.opts) {
        if ((ret = create_opts_parse(drv, a.opts, &o, a.file)) != 0) {
            goto out;
        }
        ret = 1;
        if (opts_get(&o, "help") || opts_get(&o, "?")) {
            opts_print_help(drv->name, drv->create_opts);
            ret = 0;
            goto out;
        }
    }
    if (!a.file) {
        error_report("missing image file name");
        ret = EXIT_USAGE;
        goto out;
    }
    if (a.backing) {
        if (!drv->supports_backing) {
            error_report("'%s': format '%s' does not support backing files", a.file, a.img.format);
            goto out;
        }
        opts_set(&o, "backing_file", a.backing);
    }
    if (a.backing_fmt) {
        opts_set(&o, "backing_fmt", a.backing_fmt);
    }
    if (a.size) {
        int r = size_parse(a.size, &size, 0);
        if (r < 0 || size > INT64_MAX) {
            error_report("invalid image size '%s': use a number of bytes with an optional "
                         "suffix k, M, G, T, P or E (at most 8E-1)", a.size);
            ret = EXIT_USAGE;
            goto out;
        }
        if (opts_get(&o, "size")) {
            error_report("'%s': the image size must be specified only once", a.file);
            goto out;
        }
        have_size = true;
    } else if (opts_get(&o, "size")) {
        if (opts_get_size(&o, "size", &size, &err) < 0) {
            report(err);
            ret = EXIT_USAGE;
            goto out;
        }
        have_size = true;
    }

    if (opts_get(&o, "backing_file")) {
        const char *bf = opts_get(&o, "backing_file");
        const char *bfmt = opts_get(&o, "backing_fmt");
        char *full = bdev_path_combine(a.file, bf);
        struct stat st1, st2;

        if (!strcmp(full, a.file) ||
            (stat(full, &st1) == 0 && stat(a.file, &st2) == 0 && st1.st_dev == st2.st_dev &&
             st1.st_ino == st2.st_ino)) {
            error_report("'%s': trying to create an image with the same file name as its "
                         "backing file", a.file);
            free(full);
            goto out;
        }
        if (!bfmt) {
            struct bdev *probe = NULL;
            error_report("'%s': backing file specified without backing format", a.file);
            if (!a.unsafe) {
                probe = bdev_open(full, NULL, BDEV_O_NO_BACKING | BDEV_O_FORCE_SHARE, NULL);
            }
            if (probe) {
                fprintf(stderr, "Detected format of %s; add -F %s.\n", probe->drv->name,
                        probe->drv->name);
                bdev_unref(probe);
            }
            free(full);
            goto out;
        }
        if (!bdev_find_driver(bfmt) || bdev_find_driver(bfmt)->is_protocol) {
            error_report("'%s': unknown backing file format '%s' (valid: raw, qcow2)", a.file,
                         bfmt);
            free(full);
            ret = EXIT_USAGE;
            goto out;
        }
        if (!a.unsafe) {
            struct bdev *bk = bdev_open(full, bfmt, BDEV_O_FORCE_SHARE, &err);
            if (!bk) {
                error_prefix(&err, "'%s': cannot open the backing image: ", a.file);
                report(err);
                free(full);
                goto out;
            }
            if (bk->backing && bdev_chain_find(bk->backing, a.file)) {
                /* --force would make FILE an overlay of its own overlay: a loop */
                error_report("'%s' is in the backing chain of '%s': it cannot become its "
                             "overlay", a.file, bf);
                bdev_unref(bk);
                free(full);
                goto out;
            }
            if (!have_size) {
                size = bk->size;
                have_size = true;
            }
            bdev_unref(bk);
        }
        free(full);
    }
    if (!have_size) {
        error_report("'%s': image creation needs a size", a.file);
        goto out;
    }
    /* qemu-img creates whole sectors (the Formatting line shows the size asked) */
    snprintf(sizebuf, sizeof(sizebuf), "%" PRIu64, ALIGN_UP(size, 512));
    opts_set(&o, "size", sizebuf);
    if ((ret = create_opts_check(drv, &o, a.file)) != 0) {
        goto out;
    }
    ret = 1;
    {
        struct stat st;
        bool existed = stat(a.file, &st) == 0;
        struct bfile *old = NULL;
        char *tmp;
        int r;

        /* nothing said about formatting what cannot be written */
        if (existed && S_ISREG(st.st_mode) && !a.force) {
            error_report("'%s' already exists", a.file);
            fprintf(stderr, "Use --force to replace it\n");
            goto out;
        }
        if (may_write(a.file, existed && !S_ISREG(st.st_mode)) < 0) {
            goto out;
        }
        if (!a.img.quiet) {
            print_formatting(a.file, drv->name, &o, size);
        }
        if (existed && !S_ISREG(st.st_mode)) {
            /* a block device: written in place (it cannot be replaced) */
            if (bdev_create(drv->name, a.file, &o, a.force ? BDEV_CREATE_FORCE : 0, &err) < 0) {
                report(err);
                goto out;
            }
            ret = 0;
            goto out;
        }
        if (existed) {
            /* nobody may be using the image we replace: hold its locks meanwhile */
            old = bfile_open(a.file, BDEV_CREATE_PERM, 0, &err);
            if (!old) {
                report(err);
                goto out;
            }
        }
        /*
         * Build the image under a temporary name and rename it into place,
         * so that a failure or a kill never leaves a half-written FILE (nor
         * spoils the one --force replaces).
         */
        r = bdev_create_hidden(drv->name, a.file, &o, &tmp, &err);
        if (r < 0) {
            (void)io_unlink(tmp);
        } else {
            /*
             * A failed folder sync takes a new FILE back (a rerun creates
             * it afresh); one that replaced a file stays (see --force).
             */
            bool renamed;
            r = bdev_create_install(tmp, a.file, existed ? BDEV_CREATE_FORCE : 0, &renamed,
                                    &err);
            if (r < 0 && !renamed) {
                (void)io_unlink(tmp);
            }
        }
        if (r < 0) {
            report(err);
        }
        free(tmp);
        if (old) {
            bfile_close(old, BDEV_CREATE_PERM, 0);
        }
        if (r < 0) {
            goto out;
        }
    }
    ret = 0;
out:
    opts_free(&o);
    free(a.opts);
    return ret;
}
