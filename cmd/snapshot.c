/*
 * blockctl snapshot - external snapshots, atomic over several disks
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "lib/imageinfo.h"
#include "lib/journal.h"
#include "lib/jw.h"
#include "lib/remote.h"
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
    struct img_opts img;     /* the shared options (imgopts.c) */
    char *opts;
    char **args;
    int nargs;
    const char *agent;
    struct copy_opts jopts;  /* --state-dir, --resume ID (job resume) */
};

enum { OPT_OUTPUT = 0x100, OPT_AGENT };

static const struct argp_option options[] = {
    { "format", 'F', "FMT", 0, "Format of the IMAGEs; probed when omitted", 0 },
    { "list", 'l', NULL, 0, "List IMAGE's backing chain and internal snapshots", 0 },
    { "options", 'o', "OPTS", 0, "qcow2 options for the overlays, as create -o", 0 },
    { "agent", OPT_AGENT, "SOCKET", 0, "IMAGEs are disks of the agent at SOCKET (live)", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct snapshot_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        state->child_inputs[2] = &a->jopts;
        break;
    case 'F':
        a->format = parse_format_arg(arg, "-F", state);
        break;
    case 'l':
        a->list = true;
        break;
    case OPT_AGENT:
        a->agent = arg;
        break;
    case 'o':
        append_opts(&a->opts, arg);
        if (create_opts_validate("qcow2", arg) != 0) {
            exit(EXIT_USAGE);
        }
        break;
    case ARGP_KEY_ARGS:
        a->args = state->argv + state->next;
        a->nargs = state->argc - state->next;
        break;
    case ARGP_KEY_END:
        if (!a->list && a->img.output == OUTPUT_JSON) {
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

/* [0]: the shared image options (imgopts.c), set by cmd_snapshot */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 },
                                        { &journal_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp snapshot_argp = {
    options, parse_opt, "IMAGE OVERLAY [IMAGE OVERLAY...]\n-l IMAGE",
    "Create external snapshots: each OVERLAY becomes a new qcow2 image backed by its IMAGE, "
    "all of them or none (a job journal in the state directory until all are made: "
    "'blockctl job resume' or 'job abort' after a crash).  With -l, list IMAGE's backing "
    "chain and internal snapshots.\v"
    "Exit status: 0 on success, 1 on error (no overlay is left behind), 64 for usage "
    "errors.",
    children, NULL, NULL,
};

/* -l: the chain, top first, as ImageInfo objects (from the files or the agent) */
static json_object *chain_images(struct snapshot_args *a, struct error **errp)
{
    json_object *list;

    if (remote_path(a->agent)) {
        struct qmp_client *c = remote_connect(a->agent, errp);
        struct remote_disk d;
        if (!c) {
            return NULL;
        }
        if (remote_find_disk(c, a->args[0], &d, errp) < 0) {
            qmp_client_close(c);
            return NULL;
        }
        list = json_object_new_array();
        for (json_object *img = d.image; img; img = json_object_object_get(img, "backing-image")) {
            json_object_array_add(list, json_object_get(img));
        }
        remote_disk_free(&d);
        qmp_client_close(c);
        return list;
    }
    {
        struct bdev *top = bdev_open(a->args[0], a->format, BDEV_O_FORCE_SHARE, errp);
        if (!top) {
            return NULL;
        }
        list = json_object_new_array();
        for (struct bdev *bd = top; bd; bd = bd->backing) {
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
}

static void kv_int(struct jw *w, json_object *o, const char *key, const char *as)
{
    json_object *v;

    if (json_object_object_get_ex(o, key, &v)) {
        jw_kv_int(w, as, json_object_get_int64(v));
    }
}

static int do_list(struct snapshot_args *a)
{
    struct error *err = NULL;
    json_object *imgs = chain_images(a, &err);
    struct jw w;

    if (!imgs) {
        report(err);
        return 1;
    }
    jw_init(&w, true);
    jw_array_begin(&w);
    for (size_t i = 0; i < json_object_array_length(imgs); i++) {
        json_object *img = json_object_array_get_idx(imgs, i);
        json_object *snaps = json_object_object_get(img, "snapshots");
        const char *file = json_object_get_string(json_object_object_get(img, "filename"));
        const char *fmt = json_object_get_string(json_object_object_get(img, "format"));
        const char *bf = json_object_get_string(json_object_object_get(img, "backing-filename"));
        int64_t size = json_object_get_int64(json_object_object_get(img, "virtual-size"));

        if (a->img.output == OUTPUT_JSON) {
            jw_object_begin(&w);
            jw_kv_string(&w, "filename", file);
            jw_kv_string(&w, "format", fmt);
            jw_kv_uint(&w, "virtual-size", (uint64_t)size);
            if (bf) {
                jw_kv_string(&w, "backing-filename", bf);
            }
            jw_key(&w, "snapshots");
            jw_array_begin(&w);
            for (size_t k = 0; snaps && k < json_object_array_length(snaps); k++) {
                json_object *sn = json_object_array_get_idx(snaps, k);
                jw_object_begin(&w);
                jw_kv_string(&w, "id", json_object_get_string(json_object_object_get(sn, "id")));
                jw_kv_string(&w, "name",
                             json_object_get_string(json_object_object_get(sn, "name")));
                kv_int(&w, sn, "vm-state-size", "vm-state-size");
                kv_int(&w, sn, "date-sec", "date-sec");
                kv_int(&w, sn, "date-nsec", "date-nsec");
                kv_int(&w, sn, "vm-clock-sec", "vm-clock-sec");
                kv_int(&w, sn, "vm-clock-nsec", "vm-clock-nsec");
                kv_int(&w, sn, "icount", "icount");
                jw_object_end(&w);
            }
            jw_array_end(&w);
            jw_object_end(&w);
        } else {
            char sz[32];
            size_human((uint64_t)size, sz, sizeof(sz));
            printf("%s%s (%s, %s)\n", i ? "  <- " : "", file, fmt, sz);
            if (snaps && json_object_array_length(snaps)) {
                image_info_print_snapshots(stdout, snaps);
            }
        }
    }
    jw_array_end(&w);
    if (a->img.output == OUTPUT_JSON) {
        printf("%s\n", jw_text(&w));
    }
    jw_free(&w);
    json_object_put(imgs);
    return 0;
}

/* An absolute name for a file the agent opens (its folder may differ). */
static char *absolute(const char *p)
{
    char cwd[4096];

    if (p[0] == '/' || !getcwd(cwd, sizeof(cwd))) {
        return xstrdup(p);
    }
    return xasprintf("%s/%s", cwd, p);
}

/* Is @name the node name of a node in @nodes (query-named-block-nodes), or
 * one of the @n names in @taken? */
static bool name_taken(json_object *nodes, char **taken, int n, const char *name)
{
    for (size_t i = 0; nodes && i < json_object_array_length(nodes); i++) {
        json_object *v;
        if (json_object_object_get_ex(json_object_array_get_idx(nodes, i), "node-name", &v) &&
            !strcmp(json_object_get_string(v), name)) {
            return true;
        }
    }
    for (int i = 0; i < n; i++) {
        if (taken[i] && !strcmp(taken[i], name)) {
            return true;
        }
    }
    return false;
}

/*
 * A node name for the overlay of @node: QEMU wants one when the disk is
 * named by its node (a qemu-storage-daemon has no devices).  "NODE-sN",
 * the first that is free (under QEMU's 32-byte limit: "snap-N" otherwise).
 */
static char *overlay_node_name(json_object *nodes, char **taken, int n, const char *node)
{
    for (unsigned k = 1;; k++) {
        char *name = strlen(node) < 24 ? xasprintf("%s-s%u", node, k) : xasprintf("snap-%u", k);
        if (!name_taken(nodes, taken, n, name)) {
            return name;
        }
        free(name);
    }
}

/*
 * Live: one QMP transaction of blockdev-snapshot-sync actions, so that all
 * the disks switch at once or none does.  With -o, the overlays are made
 * here first (backed by each disk's current top) and taken with mode
 * "existing".
 */
static int do_agent(struct snapshot_args *a)
{
    struct error *err = NULL;
    struct qmp_client *c = remote_connect(a->agent, &err);
    int n = a->nargs / 2, ret = 1;
    struct remote_disk *d = xcalloc(n, sizeof(*d));
    char **files = xcalloc(n, sizeof(*files));
    bool *made = xcalloc(n, sizeof(*made));
    char **snodes = xcalloc(n, sizeof(*snodes));
    json_object *actions, *nodes = NULL;

    if (!c) {
        report(err);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (remote_find_disk(c, a->args[2 * i], &d[i], &err) < 0) {
            report(err);
            goto out;
        }
        files[i] = absolute(a->args[2 * i + 1]);
        if (stat(files[i], &st) == 0) {
            error_report("'%s' already exists", a->args[2 * i + 1]);
            goto out;
        }
        for (int j = 0; j < i; j++) {
            if (!strcmp(files[j], files[i])) {
                error_report("'%s' is named twice", a->args[2 * i + 1]);
                goto out;
            }
        }
    }
    if (qmp_client_execute(c, "query-named-block-nodes", NULL, &nodes, &err) < 0) {
        report(err);
        goto out;
    }
    actions = json_object_new_array();
    for (int i = 0; i < n; i++) {
        json_object *act = json_object_new_object(), *data = json_object_new_object();
        const char *top = json_object_get_string(json_object_object_get(d[i].image, "filename"));
        const char *topfmt = json_object_get_string(json_object_object_get(d[i].image, "format"));

        if (a->opts) {
            struct optlist o = { 0 };
            char *dir = bdev_dirname(files[i]), *bname;
            char sz[32];
            int r = opts_parse(&o, a->opts, bdev_find_driver("qcow2")->create_opts, &err);

            bname = bdev_relative_path(top, dir);
            free(dir);
            snprintf(sz, sizeof(sz), "%" PRId64,
                     json_object_get_int64(json_object_object_get(d[i].image, "virtual-size")));
            opts_set(&o, "size", sz);
            opts_set(&o, "backing_file", bname);
            opts_set(&o, "backing_fmt", topfmt);
            free(bname);
            if (r == 0) {
                r = bdev_create("qcow2", files[i], &o, 0, &err);
            }
            opts_free(&o);
            if (r < 0) {
                report(err);
                json_object_put(actions);
                goto out;
            }
            made[i] = true;
        }
        json_object_object_add(act, "type", json_object_new_string("blockdev-snapshot-sync"));
        json_object_object_add(data, d[i].device ? "device" : "node-name",
                               json_object_new_string(d[i].device ? d[i].device : d[i].node));
        json_object_object_add(data, "snapshot-file", json_object_new_string(files[i]));
        if (!d[i].device) {
            snodes[i] = overlay_node_name(nodes, snodes, n, d[i].node);
            json_object_object_add(data, "snapshot-node-name", json_object_new_string(snodes[i]));
        }
        json_object_object_add(data, "format", json_object_new_string("qcow2"));
        if (a->opts) {
            json_object_object_add(data, "mode", json_object_new_string("existing"));
        }
        json_object_object_add(act, "data", data);
        json_object_array_add(actions, act);
    }
    {
        json_object *args = json_object_new_object();
        json_object_object_add(args, "actions", actions);
        if (qmp_client_execute(c, "transaction", args, NULL, &err) < 0) {
            report(err);
            goto out;
        }
    }
    ret = 0;
    if (!a->img.quiet) {
        for (int i = 0; i < n; i++) {
            printf("'%s' is now backed by '%s'\n", a->args[2 * i + 1],
                   json_object_get_string(json_object_object_get(d[i].image, "filename")));
        }
    }
out:
    for (int i = 0; i < n; i++) {
        if (ret && made[i]) {
            (void)io_unlink(files[i]);
        }
        remote_disk_free(&d[i]);
        free(files[i]);
        free(snodes[i]);
    }
    free(snodes);
    json_object_put(nodes);
    free(d);
    free(files);
    free(made);
    if (c) {
        qmp_client_close(c);
    }
    return ret;
}

/*
 * The bitmaps that follow @old to its overlay: an ADD of an enabled
 * namesake (same granularity) for each enabled, usable persistent bitmap
 * of @old.  Returns how many (*ops: a new array).
 */
static size_t follow_ops(struct bdev *old, struct bitmap_op **ops)
{
    size_t n = 0;

    *ops = NULL;
    pthread_mutex_lock(&old->bitmap_lock);
    for (struct bdev_bitmap *b = old->bitmaps; b; b = b->next) {
        if (b->enabled && b->persistent && !b->inconsistent) {
            *ops = xrealloc(*ops, (n + 1) * sizeof(**ops));
            (*ops)[n++] = (struct bitmap_op){ .type = BITMAP_OP_ADD, .name = b->name,
                                              .granularity = b->granularity,
                                              .persistent = true };
        }
    }
    pthread_mutex_unlock(&old->bitmap_lock);
    return n;
}

/* Add the @n bitmaps @ops to the new image @file (not yet in place). */
static int add_bitmaps(const char *file, const struct bitmap_op *ops, size_t n,
                       struct error **errp)
{
    struct bdev *bd;
    int r;

    if (!n) {
        return 0;
    }
    bd = bdev_open(file, "qcow2", BDEV_O_RDWR | BDEV_O_NO_BACKING | BDEV_O_NO_BITMAPS, errp);
    if (!bd) {
        return -EIO;
    }
    r = bdev_bitmap_apply(bd, ops, n, errp);
    if (r < 0) {
        bdev_unref(bd);
        return r;
    }
    return bdev_close(bd, errp);
}

/*
 * Create the qcow2 image @ov under a hidden temporary name in its folder
 * (with the bitmaps @bm), and rename it into place once complete (never
 * replacing a file), so that a kill at any instant leaves either no @ov
 * or a complete one.  *@made is set once @ov exists (@id: which file it
 * is).  Returns 0 or -errno.
 */
static int create_overlay(const char *ov, const struct optlist *o, const struct bitmap_op *bm,
                          size_t nbm, bool *made, struct stat *id, struct journal *j,
                          const char *key, struct error **errp)
{
    char *tmp;
    int r = bdev_create_hidden("qcow2", ov, o, &tmp, errp);

    if (r == 0) {
        r = add_bitmaps(tmp, bm, nbm, errp);
        if (r < 0 && *errp) {
            error_replace_name(*errp, tmp, ov);
        }
    }
    if (r == 0) {
        /* the journal knows the complete file (inode, size, header: the
         * rename keeps them) before it takes its name, so that job abort
         * removes only what was made here */
        journal_add_image_as(j, key, ov, tmp, JR_READ);
        r = journal_save(j, errp);
    }
    if (r == 0) {
        r = io_rename_noreplace(tmp, ov);
        if (r < 0) {
            error_setg_errno(errp, -r, "cannot rename '%s' to '%s'", tmp, ov);
        } else {
            /* what is removed on failure must be the file made here */
            *made = stat(ov, id) == 0;
            r = io_dirsync(ov);
            if (r < 0) {
                error_setg_errno(errp, -r, "'%s': cannot sync its folder", ov);
            }
        }
    }
    if (r < 0 && !*made) {
        (void)io_unlink(tmp);
    }
    free(tmp);
    return r;
}

static void said_removed(void *opaque, const char *path)
{
    (void)opaque;
    printf("Removed the new overlay '%s'\n", path);
}

int snapshot_journal_abort(struct journal *j)
{
    struct error *err = NULL;

    if (journal_remove_overlays(j, said_removed, NULL, &err) < 0) {
        report(err);
        return 1;
    }
    return 0;
}

int cmd_snapshot(int argc, char **argv)
{
    struct snapshot_args a = { 0 };
    struct error *err = NULL;
    struct bdev **imgs = NULL;
    bool *made = NULL;
    struct stat *ids = NULL;
    struct bitmap_op **follow = NULL;
    size_t *nfollow = NULL;
    struct job_journal jj = { 0 };
    bool clean = true;
    int n, ret = 1;

    children[0].argp = img_opts_argp(IMGOPT_OUTPUT | IMGOPT_QUIET);
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
    if (remote_path(a.agent)) {
        int r = do_agent(&a);
        free(a.opts);
        return r;
    }
    cancel_install();
    n = a.nargs / 2;
    imgs = xcalloc(n, sizeof(*imgs));
    made = xcalloc(n, sizeof(*made));
    ids = xcalloc(n, sizeof(*ids));
    follow = xcalloc(n, sizeof(*follow));
    nfollow = xcalloc(n, sizeof(*nfollow));
    if (a.jopts.resume && job_journal_begin(&jj, &a.jopts, "snapshot", argc, argv)) {
        goto out;
    }

    /*
     * Check everything first: every IMAGE opens (with its chain, and read
     * locks that keep a writer out until we are done), no OVERLAY exists
     * (resumed: but those the job made), no OVERLAY is named twice.
     */
    for (int i = 0; i < n; i++) {
        const char *img = a.args[2 * i], *ov = a.args[2 * i + 1];
        struct stat st;
        char key[32];

        imgs[i] = bdev_open(img, a.format, 0, &err);
        if (!imgs[i]) {
            report(err);
            goto out;
        }
        if (jj.j) {
            snprintf(key, sizeof(key), "image-%d", i + 1);
            if (job_journal_check(&jj, key, NULL)) {
                goto out;
            }
            snprintf(key, sizeof(key), "overlay-%d", i + 1);
            if (journal_image_known(jj.j, key) && stat(ov, &st) == 0) {
                if (job_journal_check(&jj, key, NULL)) {
                    goto out;
                }
                made[i] = true;     /* (made before the crash: kept) */
                ids[i] = st;
                continue;
            }
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
    if (!jj.j) {
        /* the journal, before anything changes: the IMAGEs hold the disks */
        char *auth = xstrdup("");
        if (job_journal_begin(&jj, &a.jopts, "snapshot", argc, argv)) {
            free(auth);
            goto out;
        }
        journal_set_u64(jj.j, "disks", (uint64_t)n);
        for (int i = 0; i < n; i++) {
            char key[32], *t;
            snprintf(key, sizeof(key), "image-%d", i + 1);
            journal_add_image(jj.j, key, imgs[i]->filename, JR_READ);
            t = xasprintf("%s%s%s", auth, i ? ", " : "", journal_image_path(jj.j, key));
            free(auth);
            auth = t;
            snprintf(key, sizeof(key), "overlay-%d", i + 1);
            journal_add_image(jj.j, key, a.args[2 * i + 1], JR_WRITE);
        }
        journal_set_str(jj.j, "authoritative", auth);
        free(auth);
    }
    if (job_journal_step(&jj, "creating")) {
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const char *ov = a.args[2 * i + 1];
        struct optlist o = { 0 };
        char *dir = bdev_dirname(ov), *bname;
        char sz[32], key[32];
        int r;

        if (made[i]) {
            free(dir);
            continue;
        }
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
        nfollow[i] = follow_ops(imgs[i], &follow[i]);
        snprintf(key, sizeof(key), "overlay-%d", i + 1);
        r = create_overlay(ov, &o, follow[i], nfollow[i], &made[i], &ids[i], jj.j, key, &err);
        opts_free(&o);
        if (r < 0) {
            report(err);
            goto out;
        }
        if (cmd_cancel) {
            error_report("interrupted%s", jj.state ? "" : ": no overlay was kept");
            ret = cancel_exit_status();
            goto out;
        }
    }
    /*
     * The overlays exist only once their folders are synced: a VM started
     * on one must not lose it in a crash.  When a sync fails, nobody knows
     * which overlays would survive one: none is kept.
     */
    for (int i = 0; i < n; i++) {
        const char *ov = a.args[2 * i + 1];
        int r = io_dirsync(ov);
        if (r < 0) {
            char *dir = bdev_dirname(ov);
            error_report("'%s': cannot sync folder '%s': %s%s", ov, dir, strerror(-r),
                         jj.state ? "" : "; no overlay was kept");
            free(dir);
            goto out;
        }
    }
    if (cmd_cancel) {
        ret = cancel_exit_status();
        error_report("interrupted%s", jj.state ? "" : ": no overlay was kept");
        goto out;
    }
    /* all of them made: the snapshot is taken, the overlays hold the disks
     * (an agent's, resumed: once its state file names them) */
    if (jj.state && journal_get_str(jj.j, "agent-state") &&
        job_journal_snapshot_switch(jj.j) != 0) {
        goto out;
    }
    ret = job_journal_end(&jj);
    if (!a.img.quiet) {
        for (int i = 0; i < n; i++) {
            printf("'%s' is now backed by '%s'\n", a.args[2 * i + 1], a.args[2 * i]);
        }
    }
out:
    if (ret && jj.j && !jj.state) {
        /* All or nothing: remove the overlays made so far (if still ours). */
        for (int i = 0; i < n; i++) {
            const char *ov = a.args[2 * i + 1];
            struct stat st;
            if (made[i] && lstat(ov, &st) == 0 && st.st_dev == ids[i].st_dev &&
                st.st_ino == ids[i].st_ino) {
                if (io_unlink(ov) < 0) {
                    clean = false;      /* (still there: job abort removes it) */
                } else {
                    (void)io_dirsync(ov);
                }
            }
        }
        if (clean) {
            job_journal_end(&jj);
        } else {
            job_journal_keep(&jj);
        }
    } else if (ret && jj.j) {
        job_journal_keep(&jj);      /* (a resume that failed: still to resume or abort) */
    }
    for (int i = 0; i < n; i++) {
        if (imgs[i]) {
            bdev_unref(imgs[i]);
        }
        free(follow[i]);
    }
    free(imgs);
    free(made);
    free(ids);
    free(follow);
    free(nfollow);
    free(a.opts);
    return ret;
}
