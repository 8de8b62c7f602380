/*
 * blockctl info - show an image's format, size, backing chain and features
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/imageinfo.h"
#include "lib/jw.h"
#include "lib/size.h"

#include <argp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd/cmd.h"

struct info_args {
    const char *format;
    const char *file;
    bool force_share;
    bool chain;
    enum output_format output;
};

enum { OPT_OUTPUT = 0x100, OPT_BACKING_CHAIN };

static const struct argp_option options[] = {
    { "format", 'f', "FMT", 0, "Image format (raw, qcow2); probed when omitted", 0 },
    { "force-share", 'U', NULL, 0, "Open read-only sharing the image with a writer", 0 },
    { "backing-chain", OPT_BACKING_CHAIN, NULL, 0, "Show every image of the backing chain", 0 },
    { "output", OPT_OUTPUT, "FMT", 0, "Output format: human (default) or json", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct info_args *a = state->input;

    switch (key) {
    case 'f':
        a->format = arg;
        break;
    case 'U':
        a->force_share = true;
        break;
    case OPT_BACKING_CHAIN:
        a->chain = true;
        break;
    case OPT_OUTPUT:
        a->output = parse_output_format(arg, state);
        break;
    case ARGP_KEY_ARG:
        if (a->file) {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        a->file = arg;
        break;
    case ARGP_KEY_END:
        if (!a->file) {
            argp_error(state, "missing image file name");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp info_argp = {
    options, parse_opt, "FILE",
    "Show information about a disk image.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    NULL, NULL, NULL,
};

int cmd_info(int argc, char **argv)
{
    struct info_args a = { 0 };
    struct error *err = NULL;
    struct bdev *top, *bd;
    struct jw w;
    unsigned flags;
    int ret = 0;

    argp_parse(&info_argp, argc, argv, 0, NULL, &a);
    flags = (a.force_share ? BDEV_O_FORCE_SHARE : 0) | (a.chain ? 0 : BDEV_O_NO_BACKING);
    top = bdev_open(a.file, a.format, flags, &err);
    if (!top) {
        report(err);
        return 1;
    }
    jw_init(&w, true);
    if (a.chain && a.output == OUTPUT_JSON) {
        jw_array_begin(&w);
    }
    for (bd = top; bd; bd = a.chain ? bd->backing : NULL) {
        json_object *img = image_info_json(bd, false, &err);

        if (!img) {
            report(err);
            ret = 1;
            break;
        }
        if (a.output == OUTPUT_JSON) {
            image_info_write_json(&w, img);
        } else {
            if (bd != top) {
                printf("\n");
            }
            image_info_print_human(stdout, img);
        }
        json_object_put(img);
    }
    if (a.chain && a.output == OUTPUT_JSON) {
        jw_array_end(&w);
    }
    if (a.output == OUTPUT_JSON && ret == 0) {
        printf("%s\n", jw_text(&w));
    }
    jw_free(&w);
    bdev_unref(top);
    return ret;
}
