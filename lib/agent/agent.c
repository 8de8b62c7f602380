/*
 * blockctl - the agent: start, disks, shutdown, logging
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"
#include "lib/io.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <syslog.h>
#include <time.h>

#ifndef BLOCKCTL_VERSION
#define BLOCKCTL_VERSION "0.1.0"
#endif

/* Workers for guest I/O and jobs: enough to keep a few requests per disk
 * in flight on two cores. */
#define AGENT_WORKERS 32

static void (*log_sink)(const char *line);

void agent_set_log_sink(void (*sink)(const char *line))
{
    log_sink = sink;
}

void agent_log(struct agent *a, const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0) {
        va_end(ap);
        return;
    }
    va_end(ap);
    if (a && a->cfg.use_syslog && __atomic_load_n(&a->ready, __ATOMIC_ACQUIRE)) {
        syslog(LOG_INFO, "%s", msg);
    } else {
        struct timespec ts;
        struct tm tm;
        char when[32];

        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
        if (log_sink) {
            char *line = xasprintf("%s.%03ld blockctl agent: %s", when, ts.tv_nsec / 1000000, msg);
            log_sink(line);
            free(line);
        }
    }
    free(msg);
}

static void log_hook(void *opaque, const char *fmt, ...)
{
    struct agent *a = opaque;
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0) {
        va_end(ap);
        return;
    }
    va_end(ap);
    agent_log(a, "%s", msg);
    free(msg);
}

void agent_event(struct agent *a, const char *name, json_object *data)
{
    if (a->qmp) {
        qmp_server_event(a->qmp, name, data);
    } else {
        json_object_put(data);
    }
}

/* --- disks and nodes --- */

struct agent_disk *agent_find_disk(struct agent *a, const char *name)
{
    for (struct agent_disk *d = a->disks; d; d = d->next) {
        if (!strcmp(d->name, name)) {
            return d;
        }
    }
    return NULL;
}

bool agent_same_file(const char *a, const char *b)
{
    char *ra = realpath(a, NULL), *rb = realpath(b, NULL);
    bool same = ra && rb && !strcmp(ra, rb);

    free(ra);
    free(rb);
    return same;
}

struct bdev *agent_chain_find_file(struct bdev *top, const char *path)
{
    for (struct bdev *b = top; b; b = b->backing) {
        if (agent_same_file(b->filename, path)) {
            return b;
        }
    }
    return NULL;
}

struct agent_disk *agent_disk_of(struct agent *a, struct bdev *bd)
{
    for (struct agent_disk *d = a->disks; d; d = d->next) {
        for (struct bdev *b = blk_root(d->blk); b; b = b->backing) {
            if (b == bd) {
                return d;
            }
        }
    }
    return NULL;
}

static struct bdev *find_node_name(struct agent *a, const char *name, struct agent_disk **disk)
{
    for (struct agent_disk *d = a->disks; d; d = d->next) {
        for (struct bdev *b = blk_root(d->blk); b; b = b->backing) {
            if (b->node_name && !strcmp(b->node_name, name)) {
                if (disk) {
                    *disk = d;
                }
                return b;
            }
        }
    }
    return NULL;
}

struct bdev *agent_find_node(struct agent *a, const char *name, struct agent_disk **disk,
                             struct error **errp)
{
    struct agent_disk *d = agent_find_disk(a, name);
    struct bdev *bd;

    if (d) {
        if (disk) {
            *disk = d;
        }
        return blk_root(d->blk);
    }
    bd = find_node_name(a, name, disk);
    if (!bd) {
        /* QEMU 7.2's bdrv_lookup_bs(name, name), a GenericError */
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'", name, name);
    }
    return bd;
}

char *agent_new_node_name(struct agent *a, struct agent_disk *d)
{
    for (;;) {
        char *n = xasprintf("%s-%u", d->name, d->next_node++);
        if (!agent_find_disk(a, n) && !find_node_name(a, n, NULL) && !agent_node_exists(a, n)) {
            return n;
        }
        free(n);
    }
}

void agent_name_nodes(struct agent *a, struct agent_disk *d, struct bdev *bd)
{
    for (; bd; bd = bd->backing) {
        if (!bd->node_name) {
            bd->node_name = agent_new_node_name(a, d);
        }
    }
}

static void io_error_hook(struct blk *blk, enum blk_io_op op, int err, void *opaque)
{
    struct agent *a = opaque;
    json_object *data = json_object_new_object();
    struct bdev *top = blk_root(blk);

    /* QEMU's BLOCK_IO_ERROR with the report policy: the request failed */
    json_object_object_add(data, "device", json_object_new_string(blk_name(blk)));
    if (top && top->node_name) {
        json_object_object_add(data, "node-name", json_object_new_string(top->node_name));
    }
    json_object_object_add(data, "operation",
                           json_object_new_string(op == BLK_IO_READ ? "read" : "write"));
    json_object_object_add(data, "action", json_object_new_string("report"));
    json_object_object_add(data, "nospace", json_object_new_boolean(err == ENOSPC));
    json_object_object_add(data, "reason", json_object_new_string(strerror(err)));
    agent_event(a, "BLOCK_IO_ERROR", data);
}

static int open_disk(struct agent *a, const struct agent_disk_spec *s, struct error **errp)
{
    struct agent_disk *d, **pp;
    struct bdev *bd;
    size_t i = 0;

    if (agent_find_disk(a, s->name)) {
        error_setg(errp, "disk '%s' is given twice", s->name);
        return -EINVAL;
    }
    bd = bdev_open(s->file, s->format,
                   BDEV_O_KILL_SAFE | (s->read_only ? 0 : BDEV_O_RDWR), errp);
    if (!bd) {
        error_prefix(errp, "disk '%s': ", s->name);
        return -EIO;
    }
    d = xzalloc(sizeof(*d));
    d->name = xstrdup(s->name);
    d->read_only = s->read_only;
    d->copy_on_read = s->copy_on_read;
    d->blk = blk_new(s->name, bd, s->read_only);
    blk_set_copy_on_read(d->blk, s->copy_on_read);
    blk_set_error_hook(d->blk, io_error_hook, a);
    /* node names kept from the state file, the rest made up */
    for (struct bdev *b = bd; b && s->node_names && s->node_names[i]; b = b->backing, i++) {
        b->node_name = xstrdup(s->node_names[i]);
    }
    for (pp = &a->disks; *pp; pp = &(*pp)->next) {
    }
    *pp = d;
    agent_name_nodes(a, d, bd);
    agent_log(a, "disk %s: %s (%s%s)", d->name, bd->filename, bdev_format_name(bd),
              s->read_only ? ", read-only" : "");
    return 0;
}

/* Flush and close every disk; returns 0 or -EIO if some failed. */
static int close_disks(struct agent *a)
{
    int ret = 0;

    while (a->disks) {
        struct agent_disk *d = a->disks;
        struct bdev *top;
        struct error *err = NULL;

        a->disks = d->next;
        blk_drain_begin(d->blk);
        top = blk_replace_root(d->blk, NULL);
        blk_drain_end(d->blk);
        if (top) {
            int r = bdev_flush(top);
            if (r < 0) {
                agent_log(a, "disk %s: flush failed: %s", d->name, strerror(-r));
                ret = -EIO;
            }
            if (bdev_close(top, &err) < 0) {
                agent_log(a, "disk %s: %s", d->name, err->msg);
                error_free(err);
                ret = -EIO;
            }
        }
        blk_unref(d->blk);
        free(d->name);
        free(d);
    }
    return ret;
}

/* --- the main loop's own work --- */

static void quit_now(void *opaque)
{
    struct agent *a = opaque;

    loop_quit(a->loop);
}

static void on_signal(int fd, short revents, void *opaque)
{
    struct agent *a = opaque;
    struct signalfd_siginfo si;

    (void)revents;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            agent_log(a, "SIGHUP ignored");
            continue;
        }
        if (!a->quitting) {
            agent_log(a, "%s: shutting down", strsignal((int)si.ssi_signo));
            a->quitting = true;
            loop_quit(a->loop);
        }
    }
}

static int qmp_quit(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    struct agent *a = opaque;

    (void)args;
    (void)ret;
    (void)errp;
    if (!a->quitting) {
        agent_log(a, "quit: shutting down");
        a->quitting = true;
        /* this reply goes out; nothing after it runs */
        qmp_server_stop(a->qmp);
        loop_call(a->loop, quit_now, a);
    }
    return 0;
}

static const struct qmp_command agent_commands[] = {
    { "quit", qmp_quit, NULL },
    { NULL, NULL, NULL },
};

/*
 * x-blockctl-fault {"rules": "OP:WHEN:ACTION[:GLOB],..."}: for tests, the
 * fault rules of lib/io.h from now on (counted from here), so that a
 * fault finds a live operation and not the agent's start; returns the
 * counts of the rules it replaces ({"counts": [N...]}).  Only there when
 * BLOCKCTL_FAULT is in the agent's environment (empty is enough).
 */
static int qmp_x_fault(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    json_object *v, *list = json_object_new_array();
    unsigned long counts[16];
    size_t n;

    (void)opaque;
    (void)errp;
    n = io_fault_set(json_object_object_get_ex(args, "rules", &v) ? json_object_get_string(v)
                                                                   : NULL,
                     counts, ARRAY_SIZE(counts));
    for (size_t i = 0; i < n && i < ARRAY_SIZE(counts); i++) {
        json_object_array_add(list, json_object_new_int64((int64_t)counts[i]));
    }
    *ret = json_object_new_object();
    json_object_object_add(*ret, "counts", list);
    return 0;
}

static const struct qmp_arg x_fault_args[] = {
    { "rules", QMP_STR, true, NULL },
    { NULL, 0, false, NULL },
};

static const struct qmp_command agent_test_commands[] = {
    { "x-blockctl-fault", qmp_x_fault, x_fault_args },
    { NULL, NULL, NULL },
};

static struct qmp_command *all_commands(void)
{
    const struct qmp_command *parts[] = {
        agent_commands, agent_block_commands, agent_bitmap_commands,
        agent_transaction_commands, agent_export_commands, agent_job_commands,
        agent_mirror_commands, agent_node_commands,
        agent_resize_commands,
        /* (the terminator alone: an empty table) */
        getenv("BLOCKCTL_FAULT") ? agent_test_commands : &agent_test_commands[1],
    };
    struct qmp_command *all;
    size_t n = 0, k = 0;

    for (size_t p = 0; p < ARRAY_SIZE(parts); p++) {
        for (const struct qmp_command *c = parts[p]; c->name; c++) {
            n++;
        }
    }
    all = xcalloc(n + 1, sizeof(*all));
    for (size_t p = 0; p < ARRAY_SIZE(parts); p++) {
        for (const struct qmp_command *c = parts[p]; c->name; c++) {
            all[k++] = *c;
        }
    }
    return all;
}

struct gone {
    struct agent *a;
    char *id;
};

static void export_gone_in_loop(void *opaque)
{
    struct gone *g = opaque;

    agent_export_gone(g->a, g->id);
    free(g->id);
    free(g);
}

/* From any thread: the export's last client has gone. */
static void export_deleted(void *opaque, const char *id)
{
    struct agent *a = opaque;
    json_object *data = json_object_new_object();
    struct gone *g = xmalloc(sizeof(*g));

    json_object_object_add(data, "id", json_object_new_string(id));
    agent_event(a, "BLOCK_EXPORT_DELETED", data);
    g->a = a;
    g->id = xstrdup(id);
    loop_call(a->loop, export_gone_in_loop, g);
}

int agent_run(const struct agent_config *cfg, void (*ready)(void *opaque), void *opaque)
{
    struct agent *a = xzalloc(sizeof(*a));
    struct error *err = NULL;
    struct qmp_command *cmds = all_commands();
    struct nbdsrv_config ncfg = { 0 };
    struct qmp_server_config qcfg = { 0 };
    sigset_t mask;
    int ret = 1;

    a->cfg = *cfg;
    a->sigfd = -1;
    if (cfg->use_syslog) {
        openlog("blockctl-agent", LOG_PID, LOG_DAEMON);
    }

    /* Signals come through the main loop; threads made from here on
     * inherit the mask. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    a->sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (a->sigfd < 0) {
        agent_log(a, "signalfd: %s", strerror(errno));
        goto out;
    }

    a->loop = loop_new();
    a->pool = workpool_new(AGENT_WORKERS);
    agent_jobs_init(a);
    for (size_t i = 0; i < cfg->nr_disks; i++) {
        if (open_disk(a, &cfg->disks[i], &err) < 0) {
            agent_log(a, "%s", err->msg);
            error_free(err);
            goto out;
        }
    }
    if (cfg->state_path && agent_state_save(a, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
        goto out;
    }
    agent_jobs_restore(a);

    ncfg.pool = a->pool;
    ncfg.log = log_hook;
    ncfg.export_deleted = export_deleted;
    ncfg.opaque = a;
    a->nbd = nbdsrv_new(&ncfg);
    if (cfg->tls.mode != NBDSRV_TLS_OFF && nbdsrv_set_tls(a->nbd, &cfg->tls, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
        goto out;
    }
    for (size_t i = 0; cfg->nbd_addrs && cfg->nbd_addrs[i]; i++) {
        if (nbdsrv_listen(a->nbd, cfg->nbd_addrs[i], cfg->socket_mode, &err) < 0) {
            agent_log(a, "%s", err->msg);
            error_free(err);
            goto out;
        }
    }
    for (struct agent_disk *d = a->disks; d; d = d->next) {
        if (agent_export_disk(a, d, &err) < 0) {
            agent_log(a, "%s", err->msg);
            error_free(err);
            goto out;
        }
    }

    qcfg.loop = a->loop;
    qcfg.commands = cmds;
    qcfg.opaque = a;
    qcfg.version_major = 7;
    qcfg.version_minor = 2;
    qcfg.version_micro = 0;
    qcfg.package = "blockctl " BLOCKCTL_VERSION;
    qcfg.log = log_hook;
    a->qmp = qmp_server_new(&qcfg);
    if (cfg->qmp_path && qmp_server_listen(a->qmp, cfg->qmp_path, cfg->socket_mode, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
        goto out;
    }
    if (nbdsrv_start(a->nbd, &err) < 0) {
        agent_log(a, "%s", err->msg);
        error_free(err);
        goto out;
    }
    loop_watch(a->loop, a->sigfd, POLLIN, on_signal, a);
    agent_log(a, "ready: %zu disk(s)%s%s", cfg->nr_disks, cfg->qmp_path ? ", QMP on " : "",
              cfg->qmp_path ? cfg->qmp_path : "");
    if (ready) {
        ready(opaque);
    }
    __atomic_store_n(&a->ready, true, __ATOMIC_RELEASE);
    loop_run(a->loop);
    a->quitting = true;
    if (agent_jobs_shutdown(a)) {
        /* the jobs end through the loop; the last one quits it */
        loop_run(a->loop);
    }
    ret = 0;

out:
    /* stop the guest's I/O first, then the control path, then the images */
    if (a->nbd) {
        nbdsrv_shutdown(a->nbd);
    }
    if (a->qmp) {
        qmp_server_free(a->qmp);
        a->qmp = NULL;
    }
    agent_exports_free(a);
    if (a->nbd) {
        nbdsrv_free(a->nbd);
    }
    agent_nodes_free(a);
    if (close_disks(a) < 0) {
        ret = 1;
    }
    workpool_free(a->pool);
    loop_free(a->loop);
    if (a->sigfd >= 0) {
        close(a->sigfd);
    }
    if (ret == 0) {
        agent_log(a, "stopped");
    }
    free(cmds);
    free(a);
    return ret;
}
