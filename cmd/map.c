/*
 * blockctl map - show where an image's data lives, extent by extent
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

struct map_args {
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *file;
    uint64_t start;
    uint64_t max_len;
    bool has_max_len;
};

enum { OPT_OUTPUT = 0x100, OPT_START, OPT_MAX_LEN };

static const struct argp_option options[] = {
    { "start-offset", OPT_START, "OFFSET", 0, "Start at this guest offset", 0 },
    { "max-length", OPT_MAX_LEN, "LENGTH", 0, "Map at most this many bytes", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct map_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case OPT_START:
        a->start = parse_size_arg(arg, "start offset", state);
        break;
    case OPT_MAX_LEN:
        a->max_len = parse_size_arg(arg, "maximum length", state);
        a->has_max_len = true;
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

/* [0]: the shared image options (imgopts.c), set by cmd_map */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp map_argp = {
    options, parse_opt, "FILE",
    "Show the allocation of a disk image and its backing chain.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    children, NULL, NULL,
};

struct extent {
    uint64_t start, length;
    int depth;
    bool present, zero, data, has_offset;
    uint64_t offset;
    struct bdev *layer;
};

static bool can_merge(const struct extent *a, const struct extent *b)
{
    if (a->depth != b->depth || a->present != b->present || a->zero != b->zero ||
        a->data != b->data || a->has_offset != b->has_offset || a->layer != b->layer) {
        return false;
    }
    return !a->has_offset || a->offset + a->length == b->offset;
}

static int print_extent(const struct extent *e, enum output_format out, bool first)
{
    if (out == OUTPUT_JSON) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, "
               "\"present\": %s, \"zero\": %s, \"data\": %s",
               first ? "[" : ",\n", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset) {
            printf(", \"offset\": %" PRIu64, e->offset);
        }
        printf("}");
        return 0;
    }
    if (e->data && !e->has_offset) {
        error_report("'%s': file contains external, encrypted or compressed clusters; use "
                     "--output=json", e->layer->filename);
        return -ENOTSUP;
    }
    if (e->data && !e->zero) {
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length,
               e->offset, e->layer->filename);
    }
    return 0;
}

int cmd_map(int argc, char **argv)
{
    struct map_args a = { 0 };
    struct error *err = NULL;
    struct extent cur = { 0 };
    bool have = false, first = true;
    struct bdev *bd;
    uint64_t off, end;
    int ret = 0;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_OUTPUT | IMGOPT_QUIET);
    argp_parse(&map_argp, argc, argv, 0, NULL, &a);
    bd = bdev_open(a.file, a.img.format, a.img.force_share ? BDEV_O_FORCE_SHARE : 0, &err);
    if (!bd) {
        report(err);
        return 1;
    }
    end = bd->size;
    if (a.has_max_len && a.start + a.max_len < end && a.start + a.max_len >= a.start) {
        end = a.start + a.max_len;
    }
    if (a.img.output == OUTPUT_HUMAN) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    }
    for (off = a.start; off < end;) {
        struct bdev_map m;
        struct extent e;

        ret = bdev_block_status_above(bd, NULL, off, end - off, &m);
        if (ret < 0) {
            bdev_report_io_error(bd, "cannot get the block status", ret);
            break;
        }
        e.start = off;
        e.length = m.len;
        e.depth = m.depth;
        e.present = m.status & BDEV_BLOCK_ALLOCATED;
        e.zero = m.status & BDEV_BLOCK_ZERO;
        e.data = m.status & BDEV_BLOCK_DATA;
        e.has_offset = m.status & BDEV_BLOCK_OFFSET_VALID;
        e.offset = e.has_offset ? m.offset : 0;
        e.layer = m.layer;
        if (have && can_merge(&cur, &e)) {
            cur.length += e.length;
        } else {
            if (have) {
                ret = print_extent(&cur, a.img.output, first);
                first = false;
                if (ret < 0) {
                    break;
                }
            }
            cur = e;
            have = true;
        }
        off += m.len;
    }
    if (ret == 0 && !have && a.img.output == OUTPUT_JSON) {
        /* as qemu-img: an empty range is one extent of length 0 */
        memset(&cur, 0, sizeof(cur));
        cur.start = a.start;
        cur.layer = bd;
        have = true;
    }
    if (ret == 0 && have) {
        ret = print_extent(&cur, a.img.output, first);
        first = false;
    }
    if (a.img.output == OUTPUT_JSON && !(ret < 0 && first)) {
        /* (nothing at all when it failed before the first extent) */
        printf(first ? "[]\n" : "]\n");
    }
    bdev_unref(bd);
    return ret < 0 ? 1 : 0;
}
