/*
 * blockctl info - show an image's format, size, backing chain and features
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/imageinfo.h"
#include "lib/journal.h"
#include "lib/jw.h"
#include "lib/remote.h"
#include "lib/size.h"

#include <argp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd/cmd.h"

struct info_args {
    struct img_opts img;     /* the shared options (imgopts.c) */
    const char *file;
    bool chain;
    const char *agent;
};

enum { OPT_BACKING_CHAIN = 0x100, OPT_AGENT };

static const struct argp_option options[] = {
    { "backing-chain", OPT_BACKING_CHAIN, NULL, 0, "Show every image of the backing chain", 0 },
    { "agent", OPT_AGENT, "SOCKET", 0, "FILE is a disk of the agent at SOCKET", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct info_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case OPT_BACKING_CHAIN:
        a->chain = true;
        break;
    case OPT_AGENT:
        a->agent = arg;
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

/* [0]: the shared image options (imgopts.c), set by cmd_info */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp info_argp = {
    options, parse_opt, "FILE",
    "Show information about a disk image.\v"
    "Exit status: 0 on success, 1 on error, 64 for usage errors.",
    children, NULL, NULL,
};

/* The ImageInfo of each image to print, top first, from the files. */
static json_object *local_images(struct info_args *a, struct error **errp)
{
    unsigned flags = (a->img.force_share ? BDEV_O_FORCE_SHARE : 0) | BDEV_O_INFO |
                     (a->chain ? 0 : BDEV_O_NO_BACKING);
    struct bdev *top = bdev_open(a->file, a->img.format, flags, errp);
    json_object *list;

    if (!top) {
        return NULL;
    }
    list = json_object_new_array();
    for (struct bdev *bd = top; bd; bd = a->chain ? bd->backing : NULL) {
        json_object *img = image_info_json(bd, false, errp);
        if (!img) {
            json_object_put(list);
            list = NULL;
            break;
        }
        json_object_array_add(list, img);
    }
    bdev_unref(top);
    return list;
}

/* The same from an agent: its disk's ImageInfo, backing images nested. */
static json_object *agent_images(struct info_args *a, struct error **errp)
{
    struct qmp_client *c = remote_connect(a->agent, errp);
    struct remote_disk d;
    json_object *list, *img;

    if (!c) {
        return NULL;
    }
    if (remote_find_disk(c, a->file, &d, errp) < 0) {
        qmp_client_close(c);
        return NULL;
    }
    list = json_object_new_array();
    for (img = d.image; img; img = a->chain ? json_object_object_get(img, "backing-image")
                                           : NULL) {
        json_object_array_add(list, json_object_get(img));
    }
    remote_disk_free(&d);
    qmp_client_close(c);
    return list;
}

/* On stderr: the interrupted jobs (journals) that used @path. */
static void note_interrupted_jobs(const char *path)
{
    json_object *jobs = journal_find_image(NULL, path);

    for (size_t i = 0; i < json_object_array_length(jobs); i++) {
        json_object *j = json_object_array_get_idx(jobs, i), *v;
        const char *id = json_object_object_get_ex(j, "id", &v) ? json_object_get_string(v) : "?";
        const char *type = json_object_object_get_ex(j, "type", &v) ? json_object_get_string(v)
                                                                      : "?";
        const char *auth;
        if (job_journal_running(j)) {
            continue;
        }
        job_journal_live_view(j);
        auth = json_object_object_get_ex(j, "authoritative", &v) ? json_object_get_string(v)
                                                                  : "?";
        /* (a snapshot of several disks names each disk's image) */
        fprintf(stderr, "blockctl: note: '%s' is part of interrupted %s job %s; '%s' %s; "
                "'blockctl job resume %s' finishes the job, 'blockctl job abort %s' rolls it "
                "back\n", path, type, id, auth,
                strcmp(type, "snapshot") ? "holds the disk" : "hold the disks", id, id);
    }
    json_object_put(jobs);
}

int cmd_info(int argc, char **argv)
{
    struct info_args a = { 0 };
    struct error *err = NULL;
    json_object *imgs;
    struct jw w;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_OUTPUT | IMGOPT_QUIET);
    argp_parse(&info_argp, argc, argv, 0, NULL, &a);
    imgs = remote_path(a.agent) ? agent_images(&a, &err) : local_images(&a, &err);
    if (!imgs) {
        report(err);
        return 1;
    }
    jw_init(&w, true);
    if (a.chain && a.img.output == OUTPUT_JSON) {
        jw_array_begin(&w);
    }
    for (size_t i = 0; i < json_object_array_length(imgs); i++) {
        json_object *img = json_object_array_get_idx(imgs, i);

        if (a.img.output == OUTPUT_JSON) {
            image_info_write_json(&w, img);
        } else {
            if (i) {
                printf("\n");
            }
            image_info_print_human(stdout, img);
        }
    }
    if (a.chain && a.img.output == OUTPUT_JSON) {
        jw_array_end(&w);
    }
    if (a.img.output == OUTPUT_JSON) {
        printf("%s\n", jw_text(&w));
    }
    jw_free(&w);
    json_object_put(imgs);
    if (!remote_path(a.agent) && !strstr(a.file, "://")) {
        note_interrupted_jobs(a.file);
    }
    return 0;
}
