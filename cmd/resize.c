/*
 * blockctl resize - grow or shrink an image's virtual size
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/remote.h"
#include "lib/size.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"

struct resize_args {
    const char *agent;
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *file;
    const char *size;            /* as given, with its sign */
    bool shrink;
    enum bdev_prealloc prealloc;
};

enum { OPT_SHRINK = 0x100, OPT_PREALLOC, OPT_AGENT };

static const struct argp_option options[] = {
    { "shrink", OPT_SHRINK, NULL, 0, "Allow making the image smaller (the data past the new "
      "end is lost)", 0 },
    { "preallocation", OPT_PREALLOC, "MODE", 0, "Allocate the grown area: off (default), "
      "metadata (qcow2), falloc, full", 0 },
    { "agent", OPT_AGENT, "SOCKET", 0, "FILE is a disk of that agent (block_resize, live)", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct resize_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case OPT_SHRINK:
        a->shrink = true;
        break;
    case OPT_PREALLOC:
        if (bdev_prealloc_parse(arg, &a->prealloc) < 0) {
            argp_error(state, "Invalid preallocation mode '%s'", arg);
        }
        break;
    case OPT_AGENT:
        a->agent = arg;
        break;
    case ARGP_KEY_ARG:
        if (a->file) {
            argp_error(state, "Expecting image file name and size");
        }
        a->file = arg;
        break;
    case ARGP_KEY_END:
        if (!a->file || !a->size) {
            argp_error(state, "Expecting image file name and size");
        }
        if (remote_path(a->agent) && a->prealloc != BDEV_PREALLOC_OFF) {
            argp_error(state, "--preallocation does not go with --agent (block_resize "
                       "never preallocates)");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_resize */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp resize_argp = {
    options, parse_opt, "FILE [+|-]SIZE",
    "Change the virtual size of FILE to SIZE, or by SIZE with + or -.  SIZE is in bytes, "
    "or with a suffix k, M, G, T, P, E (powers of 1024).  Shrinking needs --shrink.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    children, NULL, NULL,
};

/*
 * Does the last argument look like the size (qemu-img takes it off before
 * parsing the options, so that "-1G" is no option)?
 */
static bool is_size_arg(const char *s)
{
    if (s[0] != '-') {
        return true;
    }
    return (s[1] >= '0' && s[1] <= '9') || s[1] == '.';
}

/* The new size from @a->size and the current @cur: 0, or the exit status (message printed). */
static int new_size(const struct resize_args *a, uint64_t cur, uint64_t *out)
{
    const char *s = a->size;
    int rel = 0;
    uint64_t n;

    if (*s == '+' || *s == '-') {
        rel = *s == '+' ? 1 : -1;
        s++;
    }
    if (size_parse(s, &n, 0) < 0 || n > (uint64_t)INT64_MAX) {
        error_report("Parameter 'size' expects a non-negative number below 2^64");
        fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                "peta-\nand exabytes, respectively.\n");
        return EXIT_USAGE;
    }
    if (rel > 0) {
        n = n > (uint64_t)INT64_MAX - cur ? (uint64_t)INT64_MAX : cur + n;
    } else if (rel < 0) {
        n = n >= cur ? 0 : cur - n;
    }
    if (n == 0) {
        error_report("New image size must be positive");
        return 1;
    }
    if (n <= cur && a->prealloc != BDEV_PREALLOC_OFF) {
        error_report("Preallocation can only be used for growing images");
        return 1;
    }
    if (n < cur && !a->shrink) {
        error_report("Use the --shrink option to perform a shrink operation.");
        error_report("warning: Shrinking an image will delete all data beyond the shrunken "
                     "image's end. Before performing such an operation, make sure there is "
                     "no important data there.");
        return 1;
    }
    *out = n;
    return 0;
}

/* --agent: block_resize of the disk's top image */
static int resize_agent(struct resize_args *a)
{
    struct error *err = NULL;
    struct qmp_client *c = remote_connect(a->agent, &err);
    struct remote_disk d = { 0 };
    json_object *args, *vs;
    uint64_t size;
    int ret = 1;

    if (!c || remote_find_disk(c, a->file, &d, &err) < 0) {
        report(err);
        goto out;
    }
    if (!json_object_object_get_ex(d.image, "virtual-size", &vs)) {
        error_report("disk '%s': the agent does not tell its size", a->file);
        goto out;
    }
    ret = new_size(a, (uint64_t)json_object_get_int64(vs), &size);
    if (ret) {
        goto out;
    }
    ret = 1;
    args = json_object_new_object();
    if (d.device) {
        json_object_object_add(args, "device", json_object_new_string(d.device));
    } else {
        json_object_object_add(args, "node-name", json_object_new_string(d.node));
    }
    json_object_object_add(args, "size", json_object_new_int64((int64_t)size));
    if (qmp_client_execute(c, "block_resize", args, NULL, &err) < 0) {
        report(err);
        goto out;
    }
    if (!a->img.quiet) {
        printf("Image resized.\n");
    }
    ret = 0;
out:
    remote_disk_free(&d);
    if (c) {
        qmp_client_close(c);
    }
    return ret;
}

int cmd_resize(int argc, char **argv)
{
    struct resize_args a = { 0 };
    struct error *err = NULL;
    struct bdev *bd;
    uint64_t size;
    int ret;

    if (argc >= 3 && is_size_arg(argv[argc - 1])) {
        a.size = argv[--argc];
    }
    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_QUIET | IMGOPT_CACHE);
    argp_parse(&resize_argp, argc, argv, 0, NULL, &a);
    if (remote_path(a.agent)) {
        return resize_agent(&a);
    }
    bd = bdev_open(a.file, a.img.format, BDEV_O_RDWR | a.img.cache, &err);
    if (!bd) {
        report(err);
        return 1;
    }
    ret = new_size(&a, bd->size, &size);
    if (ret == 0 && bdev_resize(bd, size, a.prealloc, &err) < 0) {
        report(err);
        ret = 1;
    }
    if (bdev_close(bd, &err) < 0) {
        report(err);
        ret = ret ? ret : 1;
    }
    if (ret == 0 && !a.img.quiet) {
        printf("Image resized.\n");
    }
    return ret;
}
