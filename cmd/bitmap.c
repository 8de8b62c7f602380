/*
 * blockctl bitmap - persistent dirty bitmaps in qcow2 images
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/bitmap.h"
#include "lib/journal.h"
#include "lib/jw.h"
#include "lib/remote.h"
#include "lib/size.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

#define MAX_ACTIONS 64

struct bitmap_args {
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *src_image;
    const char *src_format;
    const char *image;
    const char *name;
    uint64_t granularity;
    bool disabled;
    bool list;
    bool dump;
    const char *agent;
    struct bitmap_op ops[MAX_ACTIONS];
    size_t nops;
    struct copy_opts jopts;  /* --state-dir, --resume ID (job resume) */
};

enum {
    OPT_ADD = 0x100, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE, OPT_MERGE, OPT_DISABLED,
    OPT_LIST, OPT_DUMP, OPT_OUTPUT, OPT_AGENT, OPT_SALVAGE,
};

static const struct argp_option options[] = {
    { "add", OPT_ADD, NULL, 0, "Add bitmap NAME (enabled unless --disabled)", 0 },
    { "remove", OPT_REMOVE, NULL, 0, "Remove bitmap NAME", 0 },
    { "clear", OPT_CLEAR, NULL, 0, "Clear every bit of NAME", 0 },
    { "enable", OPT_ENABLE, NULL, 0, "Make NAME record writes", 0 },
    { "disable", OPT_DISABLE, NULL, 0, "Stop NAME recording writes", 0 },
    { "merge", OPT_MERGE, "SOURCE", 0, "Merge bitmap SOURCE into NAME", 0 },
    { "salvage", OPT_SALVAGE, NULL, 0, "Set every bit of NAME and make it consistent", 0 },
    { "source-file", 'b', "FILE", 0, "Image holding the --merge SOURCE bitmaps", 0 },
    { "source-format", 'F', "FMT", 0, "Format of that image", 0 },
    { "granularity", 'g', "SIZE", 0, "Granularity for --add (512 to 2G, power of two)", 0 },
    { "disabled", OPT_DISABLED, NULL, 0, "--add the bitmap disabled", 0 },
    { "list", OPT_LIST, NULL, 0, "List IMAGE's bitmaps", 0 },
    { "dump", OPT_DUMP, NULL, 0, "Print the dirty extents of NAME", 0 },
    { "agent", OPT_AGENT, "SOCKET", 0, "IMAGE is a disk of the agent at SOCKET (live)", 0 },
    { 0 }
};

static void add_op(struct bitmap_args *a, enum bitmap_op_type t, const char *src,
                   struct argp_state *state)
{
    if (a->nops == MAX_ACTIONS) {
        argp_error(state, "too many actions (at most %d)", MAX_ACTIONS);
    }
    a->ops[a->nops].type = t;
    a->ops[a->nops].src_name = src;
    a->nops++;
}

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct bitmap_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        state->child_inputs[2] = &a->jopts;
        break;
    case OPT_ADD:
        add_op(a, BITMAP_OP_ADD, NULL, state);
        break;
    case OPT_REMOVE:
        add_op(a, BITMAP_OP_REMOVE, NULL, state);
        break;
    case OPT_CLEAR:
        add_op(a, BITMAP_OP_CLEAR, NULL, state);
        break;
    case OPT_ENABLE:
        add_op(a, BITMAP_OP_ENABLE, NULL, state);
        break;
    case OPT_DISABLE:
        add_op(a, BITMAP_OP_DISABLE, NULL, state);
        break;
    case OPT_MERGE:
        add_op(a, BITMAP_OP_MERGE, arg, state);
        break;
    case OPT_SALVAGE:
        add_op(a, BITMAP_OP_SALVAGE, NULL, state);
        break;
    case 'b':
        a->src_image = arg;
        break;
    case 'F':
        a->src_format = parse_format_arg(arg, "-F", state);
        break;
    case 'g':
        a->granularity = parse_size_arg(arg, "granularity", state);
        if (!IS_POWER_OF_2(a->granularity) || a->granularity < 512 ||
            a->granularity > (1ULL << 31)) {
            argp_error(state, "granularity must be a power of two between 512 and 2G");
        }
        break;
    case OPT_DISABLED:
        a->disabled = true;
        break;
    case OPT_LIST:
        a->list = true;
        break;
    case OPT_DUMP:
        a->dump = true;
        break;
    case OPT_AGENT:
        a->agent = arg;
        break;
    case ARGP_KEY_ARG:
        if (!a->image) {
            a->image = arg;
        } else if (!a->name) {
            a->name = arg;
        } else {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        break;
    case ARGP_KEY_END:
        if (a->list + a->dump + (a->nops > 0) != 1) {
            argp_error(state, "give either actions (--add, --remove, --clear, --enable, "
                       "--disable, --merge, --salvage), or --list, or --dump");
        }
        if (!a->image) {
            argp_error(state, "missing image file name");
        }
        if (!a->list && !a->name) {
            argp_error(state, "missing bitmap name");
        }
        if (a->list && a->name) {
            argp_error(state, "--list takes only IMAGE");
        }
        if (a->img.force_share && a->nops) {
            argp_error(state, "-U is only for --list and --dump");
        }
        for (size_t i = 0; remote_path(a->agent) && a->nops > 1 && i < a->nops; i++) {
            if (a->ops[i].type == BITMAP_OP_SALVAGE) {
                argp_error(state, "with --agent, --salvage must be the only action");
            }
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_bitmap */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 },
                                        { &journal_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp bitmap_argp = {
    options, parse_opt, "ACTION... [-g SIZE] [--disabled] IMAGE NAME\n"
    "--list [--output=human|json] IMAGE\n--dump [--output=human|json] IMAGE NAME",
    "Manage the persistent dirty bitmaps stored in a qcow2 image.  Actions apply in the "
    "order given, all or none (a job journal in the state directory while they are "
    "written).\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    children, NULL, NULL,
};

static int do_list(struct bitmap_args *a)
{
    struct error *err = NULL;
    struct bdev *bd = bdev_open(a->image, a->img.format,
                                BDEV_O_NO_BACKING | (a->img.force_share ? BDEV_O_FORCE_SHARE : 0),
                                &err);
    struct image_info in;
    struct jw w;
    int ret = 0;

    if (!bd) {
        report(err);
        return 1;
    }
    if (!bd->drv->bitmap_load) {
        error_report("'%s': format '%s' does not support persistent bitmaps", a->image,
                     bd->drv->name);
        bdev_unref(bd);
        return 1;
    }
    if (bdev_get_info(bd, &in, &err) < 0) {
        report(err);
        bdev_unref(bd);
        return 1;
    }
    jw_init(&w, true);
    jw_array_begin(&w);
    if (a->img.output == OUTPUT_HUMAN && in.nr_bitmaps) {
        printf("%-24s %12s  %-8s %-12s %s\n", "NAME", "GRANULARITY", "ENABLED", "STATE", "DIRTY");
    } else if (a->img.output == OUTPUT_HUMAN) {
        printf("'%s' has no persistent bitmaps\n", a->image);
    }
    for (size_t i = 0; i < in.nr_bitmaps; i++) {
        struct bitmap_info *b = &in.bitmaps[i];
        struct dirty_bitmap *bm = NULL;
        uint64_t count = 0;
        bool broken = false;

        if (!b->inconsistent) {
            if (bdev_bitmap_get(bd, b->name, &bm, &err) == 0) {
                count = bitmap_dirty_bytes(bm);
                bitmap_free(bm);
            } else {
                /* its table is damaged: say so, and fail at the end */
                report(err);
                broken = true;
                ret = 1;
            }
        }
        if (a->img.output == OUTPUT_JSON) {
            jw_object_begin(&w);
            jw_kv_string(&w, "name", b->name);
            jw_kv_uint(&w, "granularity", b->granularity);
            jw_kv_bool(&w, "recording", b->flags & BITMAP_FLAG_AUTO);
            jw_kv_bool(&w, "inconsistent", b->inconsistent);
            jw_kv_bool(&w, "persistent", true);
            if (broken) {
                jw_kv_bool(&w, "broken", true);
            } else if (!b->inconsistent) {
                jw_kv_uint(&w, "count", count);
            }
            jw_key(&w, "flags");
            jw_array_begin(&w);
            if (b->flags & BITMAP_FLAG_IN_USE) {
                jw_string(&w, "in-use");
            }
            if (b->flags & BITMAP_FLAG_AUTO) {
                jw_string(&w, "auto");
            }
            jw_array_end(&w);
            jw_object_end(&w);
        } else {
            char sz[32] = "-";
            if (!b->inconsistent && !broken) {
                size_human(count, sz, sizeof(sz));
            }
            printf("%-24s %12" PRIu64 "  %-8s %-12s %s\n", b->name, b->granularity,
                   (b->flags & BITMAP_FLAG_AUTO) ? "yes" : "no",
                   broken ? "broken" : b->inconsistent ? "inconsistent" : "consistent", sz);
        }
    }
    jw_array_end(&w);
    if (a->img.output == OUTPUT_JSON) {
        printf("%s\n", jw_text(&w));
    }
    jw_free(&w);
    image_info_free(&in);
    bdev_unref(bd);
    return ret;
}

static int do_dump(struct bitmap_args *a)
{
    struct error *err = NULL;
    struct bdev *bd = bdev_open(a->image, a->img.format,
                                a->img.force_share ? BDEV_O_FORCE_SHARE : 0, &err);
    struct dirty_bitmap *bm = NULL;
    uint64_t pos = 0, off, len;
    bool first = true;

    if (!bd) {
        report(err);
        return 1;
    }
    /* the disk's bitmap: NAME down the chain (it follows across snapshots) */
    if (bdev_bitmap_union(bd, a->name, &bm, &err) < 0) {
        report(err);
        bdev_unref(bd);
        return 1;
    }
    if (a->img.output == OUTPUT_HUMAN) {
        printf("%-16s%-16s\n", "Offset", "Length");
    }
    while (bitmap_next_dirty(bm, pos, 0, &off, &len)) {
        if (a->img.output == OUTPUT_JSON) {
            printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 "}", first ? "[" : ",\n",
                   off, len);
        } else {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "\n", off, len);
        }
        first = false;
        pos = off + len;
    }
    if (a->img.output == OUTPUT_JSON) {
        printf(first ? "[]\n" : "]\n");
    }
    bitmap_free(bm);
    bdev_unref(bd);
    return 0;
}

static const char *const op_names[] = {
    [BITMAP_OP_ADD] = "add", [BITMAP_OP_REMOVE] = "remove", [BITMAP_OP_CLEAR] = "clear",
    [BITMAP_OP_ENABLE] = "enable", [BITMAP_OP_DISABLE] = "disable", [BITMAP_OP_MERGE] = "merge",
    [BITMAP_OP_SALVAGE] = "salvage",
};

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;

    return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

/* The flags ("in-use", "auto") a qcow2 top stores for bitmap @name, or NULL. */
static json_object *stored_flags(json_object *image, const char *name)
{
    json_object *fs = json_object_object_get(image, "format-specific");
    json_object *bms = json_object_object_get(json_object_object_get(fs, "data"), "bitmaps");

    for (size_t i = 0; bms && i < json_object_array_length(bms); i++) {
        json_object *b = json_object_array_get_idx(bms, i);
        if (jstr(b, "name") && !strcmp(jstr(b, "name"), name)) {
            return json_object_object_get(b, "flags");
        }
    }
    return NULL;
}

/* --list with --agent: the bitmaps of the disk's top image, as the agent has them */
static int agent_list(struct bitmap_args *a, struct qmp_client *c, struct remote_disk *d)
{
    json_object *bms = d->bitmaps;
    struct jw w;

    (void)c;
    jw_init(&w, true);
    jw_array_begin(&w);
    if (a->img.output == OUTPUT_HUMAN && bms && json_object_array_length(bms)) {
        printf("%-24s %12s  %-8s %-12s %s\n", "NAME", "GRANULARITY", "ENABLED", "STATE", "DIRTY");
    } else if (a->img.output == OUTPUT_HUMAN) {
        printf("disk '%s' has no bitmaps\n", a->image);
    }
    for (size_t i = 0; bms && i < json_object_array_length(bms); i++) {
        json_object *b = json_object_array_get_idx(bms, i), *fl;
        const char *name = jstr(b, "name");
        bool rec = json_object_get_boolean(json_object_object_get(b, "recording"));
        bool inc = json_object_get_boolean(json_object_object_get(b, "inconsistent"));
        bool pers = json_object_get_boolean(json_object_object_get(b, "persistent"));
        int64_t gran = json_object_get_int64(json_object_object_get(b, "granularity"));
        int64_t count = json_object_get_int64(json_object_object_get(b, "count"));

        if (!name) {
            continue;
        }
        if (a->img.output == OUTPUT_JSON) {
            jw_object_begin(&w);
            jw_kv_string(&w, "name", name);
            jw_kv_uint(&w, "granularity", (uint64_t)gran);
            jw_kv_bool(&w, "recording", rec);
            jw_kv_bool(&w, "inconsistent", inc);
            jw_kv_bool(&w, "persistent", pers);
            if (!inc) {
                jw_kv_uint(&w, "count", (uint64_t)count);
            }
            jw_key(&w, "flags");
            jw_array_begin(&w);
            fl = stored_flags(d->image, name);
            for (size_t k = 0; fl && k < json_object_array_length(fl); k++) {
                jw_string(&w, json_object_get_string(json_object_array_get_idx(fl, k)));
            }
            jw_array_end(&w);
            jw_object_end(&w);
        } else {
            char sz[32] = "-";
            if (!inc) {
                size_human((uint64_t)count, sz, sizeof(sz));
            }
            printf("%-24s %12" PRId64 "  %-8s %-12s %s\n", name, gran, rec ? "yes" : "no",
                   inc ? "inconsistent" : "consistent", sz);
        }
    }
    jw_array_end(&w);
    if (a->img.output == OUTPUT_JSON) {
        printf("%s\n", jw_text(&w));
    }
    jw_free(&w);
    return 0;
}

/* --dump with --agent: the dirty extents of the disk's bitmap NAME (the
 * union down its chain), from a blockctl agent's x-blockctl-dirty-bitmap-dump */
static int agent_dump(struct bitmap_args *a, struct qmp_client *c, struct remote_disk *d)
{
    struct error *err = NULL;
    json_object *args = json_object_new_object(), *ext = NULL;

    if (!d->blockctl) {
        error_report("'%s': the agent is not a blockctl agent: it cannot list a bitmap's "
                     "extents (read its NBD export's qemu:dirty-bitmap:%s context instead)",
                     a->image, a->name);
        json_object_put(args);
        return 1;
    }
    json_object_object_add(args, "node", json_object_new_string(d->node));
    json_object_object_add(args, "name", json_object_new_string(a->name));
    if (qmp_client_execute(c, "x-blockctl-dirty-bitmap-dump", args, &ext, &err) < 0) {
        report(err);
        return 1;
    }
    if (a->img.output == OUTPUT_HUMAN) {
        printf("%-16s%-16s\n", "Offset", "Length");
    }
    for (size_t i = 0; i < json_object_array_length(ext); i++) {
        json_object *e = json_object_array_get_idx(ext, i);
        uint64_t off = (uint64_t)json_object_get_int64(json_object_object_get(e, "start"));
        uint64_t len = (uint64_t)json_object_get_int64(json_object_object_get(e, "length"));
        if (a->img.output == OUTPUT_JSON) {
            printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 "}", i ? ",\n" : "[",
                   off, len);
        } else {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "\n", off, len);
        }
    }
    if (a->img.output == OUTPUT_JSON) {
        printf(json_object_array_length(ext) ? "]\n" : "[]\n");
    }
    json_object_put(ext);
    return 0;
}

/* Actions with --agent: one QMP transaction of block-dirty-bitmap-* actions. */
static int agent_actions(struct bitmap_args *a, struct qmp_client *c, struct remote_disk *d)
{
    struct error *err = NULL;
    json_object *actions = json_object_new_array(), *args;
    struct remote_disk src = { 0 };
    const char *fmt = jstr(d->image, "format");

    if (a->src_image && remote_find_disk(c, a->src_image, &src, &err) < 0) {
        report(err);
        json_object_put(actions);
        return 1;
    }
    for (size_t i = 0; i < a->nops; i++) {
        const struct bitmap_op *op = &a->ops[i];
        json_object *act = json_object_new_object(), *data = json_object_new_object();
        char *type = xasprintf("block-dirty-bitmap-%s", op_names[op->type]);

        json_object_object_add(data, "node", json_object_new_string(d->node));
        if (op->type == BITMAP_OP_MERGE) {
            json_object *list = json_object_new_array(), *s;
            json_object_object_add(data, "target", json_object_new_string(a->name));
            if (a->src_image) {
                s = json_object_new_object();
                json_object_object_add(s, "node", json_object_new_string(src.node));
                json_object_object_add(s, "name", json_object_new_string(op->src_name));
            } else {
                s = json_object_new_string(op->src_name);
            }
            json_object_array_add(list, s);
            json_object_object_add(data, "bitmaps", list);
        } else {
            json_object_object_add(data, "name", json_object_new_string(a->name));
        }
        if (op->type == BITMAP_OP_ADD) {
            if (a->granularity) {
                json_object_object_add(data, "granularity",
                                       json_object_new_int64((int64_t)a->granularity));
            }
            /* stored in the image where the format can (qcow2), as offline */
            json_object_object_add(data, "persistent",
                                   json_object_new_boolean(fmt && !strcmp(fmt, "qcow2")));
            if (a->disabled) {
                json_object_object_add(data, "disabled", json_object_new_boolean(true));
            }
        }
        json_object_object_add(act, "type", json_object_new_string(type));
        json_object_object_add(act, "data", data);
        json_object_array_add(actions, act);
        free(type);
    }
    remote_disk_free(&src);
    args = json_object_new_object();
    json_object_object_add(args, "actions", actions);
    if (qmp_client_execute(c, "transaction", args, NULL, &err) < 0) {
        report(err);
        return 1;
    }
    return 0;
}

/* --salvage with --agent: a blockctl agent's command of its own */
static int agent_salvage(struct bitmap_args *a, struct qmp_client *c, struct remote_disk *d)
{
    struct error *err = NULL;
    json_object *args = json_object_new_object();

    if (!d->blockctl) {
        error_report("'%s': the agent is not a blockctl agent: it cannot salvage bitmap "
                     "'%s' (remove it and add it again)", a->image, a->name);
        json_object_put(args);
        return 1;
    }
    json_object_object_add(args, "node", json_object_new_string(d->node));
    json_object_object_add(args, "name", json_object_new_string(a->name));
    if (qmp_client_execute(c, "x-blockctl-block-dirty-bitmap-salvage", args, NULL, &err) < 0) {
        report(err);
        return 1;
    }
    return 0;
}

static int do_agent(struct bitmap_args *a)
{
    struct error *err = NULL;
    struct qmp_client *c = remote_connect(a->agent, &err);
    struct remote_disk d;
    int ret;

    if (!c) {
        report(err);
        return 1;
    }
    if (remote_find_disk(c, a->image, &d, &err) < 0) {
        report(err);
        qmp_client_close(c);
        return 1;
    }
    ret = a->list ? agent_list(a, c, &d)
          : a->dump ? agent_dump(a, c, &d)
          : a->ops[0].type == BITMAP_OP_SALVAGE ? agent_salvage(a, c, &d)
          : agent_actions(a, c, &d);
    remote_disk_free(&d);
    qmp_client_close(c);
    return ret;
}

/* Where @bd's bitmap directory is on disk now (0: none): 0, or -errno (said). */
static int dir_offset(struct bdev *bd, uint64_t *off)
{
    struct error *err = NULL;
    struct image_info in;
    int r = bdev_get_info(bd, &in, &err);

    if (r < 0) {
        report(err);
        return r;
    }
    *off = in.bitmap_dir_offset;
    image_info_free(&in);
    return 0;
}

/* The directory of image @path (format @fmt) as a new open finds it. */
static int dir_offset_of(const char *path, const char *fmt, uint64_t *off)
{
    struct error *err = NULL;
    struct bdev *bd = bdev_open(path, fmt, BDEV_O_NO_BACKING | BDEV_O_NO_BITMAPS |
                                               BDEV_O_FORCE_SHARE, &err);
    int r;

    if (!bd) {
        report(err);
        return -EIO;
    }
    r = dir_offset(bd, off);
    bdev_unref(bd);
    return r;
}

int bitmap_journal_applied(struct journal *j)
{
    struct error *err = NULL;
    const char *path = journal_image_path(j, "image");
    uint64_t off;

    if (journal_check_image(j, "image", &err) < 0) {
        report(err);
        return -1;
    }
    if (dir_offset_of(path, journal_get_str(j, "format"), &off) < 0) {
        return -1;
    }
    return off != journal_get_u64(j, "bitmap-dir-before");
}

/*
 * The offline actions, journaled: the journal names the image and where
 * its bitmap directory was before.  The actions write new tables and a
 * new directory, then switch the header to it in one write: a directory
 * elsewhere than before means the transaction took effect, all of it.
 */
static int apply_journaled(struct bitmap_args *a, struct bdev *bd, int argc, char **argv)
{
    struct job_journal jj = { 0 };
    struct error *err = NULL;
    uint64_t before = 0, now;

    if (!bd->drv->bitmap_store) {
        /* (refused below: nothing to journal) */
        if (bdev_bitmap_apply(bd, a->ops, a->nops, &err) < 0) {
            report(err);
            return 1;
        }
        return 0;
    }
    if (job_journal_begin(&jj, &a->jopts, "bitmap", argc, argv) ||
        job_journal_check(&jj, "image", "source-file", NULL)) {
        return 1;
    }
    if (jj.state) {
        if (dir_offset(bd, &now) < 0) {
            job_journal_keep(&jj);
            return 1;
        }
        if (now != journal_get_u64(jj.j, "bitmap-dir-before")) {
            fprintf(stderr, "blockctl: job %s: the actions had taken effect, all of them\n",
                    jj.j->id);
            return job_journal_end(&jj);
        }
    } else {
        if (dir_offset(bd, &before) < 0) {
            journal_free(jj.j);
            return 1;
        }
        journal_add_image(jj.j, "image", a->image, JR_WRITE);
        journal_set_str(jj.j, "format", bdev_format_name(bd));
        if (a->src_image) {
            journal_add_image(jj.j, "source-file", a->src_image, JR_READ);
        }
        journal_set_str(jj.j, "authoritative", journal_image_path(jj.j, "image"));
        journal_set_u64(jj.j, "bitmap-dir-before", before);
        journal_set_str(jj.j, "bitmap", a->name);
    }
    if (job_journal_step(&jj, "applying")) {
        job_journal_end(&jj);       /* (nothing was changed) */
        return 1;
    }
    if (bdev_bitmap_apply(bd, a->ops, a->nops, &err) == 0) {
        return job_journal_end(&jj);
    }
    report(err);
    /* what is on disk decides: the old directory (nothing applied) or not known */
    if (dir_offset_of(a->image, bdev_format_name(bd), &now) == 0 &&
        now == journal_get_u64(jj.j, "bitmap-dir-before")) {
        job_journal_end(&jj);
    } else {
        job_journal_keep(&jj);
    }
    return 1;
}

int cmd_bitmap(int argc, char **argv)
{
    struct bitmap_args a = { 0 };
    struct error *err = NULL;
    struct bdev *bd = NULL, *src = NULL;
    int ret = 1;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_OUTPUT | IMGOPT_QUIET);
    argp_parse(&bitmap_argp, argc, argv, 0, NULL, &a);
    if (remote_path(a.agent)) {
        for (size_t i = 0; i < a.nops; i++) {
            a.ops[i].name = a.name;
        }
        return do_agent(&a);
    }
    if (a.list) {
        return do_list(&a);
    }
    if (a.dump) {
        return do_dump(&a);
    }
    /*
     * Opened without loading the bitmaps for writes (nothing else is
     * written): the new directory replaces the old one in one header
     * write, so the actions take effect all together or not at all.
     */
    bd = bdev_open(a.image, a.img.format, BDEV_O_RDWR | BDEV_O_NO_BACKING | BDEV_O_NO_BITMAPS,
                   &err);
    if (!bd) {
        report(err);
        goto out;
    }
    if (a.src_image) {
        src = bdev_open(a.src_image, a.src_format, BDEV_O_NO_BACKING, &err);
        if (!src) {
            report(err);
            goto out;
        }
    }
    for (size_t i = 0; i < a.nops; i++) {
        a.ops[i].name = a.name;
        if (a.ops[i].type == BITMAP_OP_ADD) {
            a.ops[i].granularity = a.granularity;
            a.ops[i].disabled = a.disabled;
            a.ops[i].persistent = true;   /* stored in the image: that is all this command does */
        }
        if (a.ops[i].type == BITMAP_OP_MERGE && src) {
            if (bdev_bitmap_get(src, a.ops[i].src_name, &a.ops[i].src, &err) < 0) {
                report(err);
                goto out;
            }
        }
    }
    ret = apply_journaled(&a, bd, argc, argv);
out:
    for (size_t i = 0; i < a.nops; i++) {
        bitmap_free(a.ops[i].src);
    }
    if (src) {
        bdev_unref(src);
    }
    if (bd && bdev_close(bd, &err) < 0) {
        report(err);
        ret = 1;
    }
    return ret;
}
