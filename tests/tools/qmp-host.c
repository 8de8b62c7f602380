/*
 * qmp-host - a QMP server on lib/qmp with dummy commands, for the tests
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 *   qmp-host --socket PATH [--mode OCTAL] [--max-clients N]
 *
 * Serves until 'quit' or SIGTERM/SIGINT, logging to stderr.  Commands:
 * - a few of qemu-storage-daemon's, with QEMU's argument tables, answering
 *   as a daemon with no block nodes does (so that the same input gets the
 *   same answer from both): qom-get, block-job-set-speed,
 *   block-job-cancel, block-export-del, block-dirty-bitmap-add,
 *   nbd-server-start, query-block-jobs, query-named-block-nodes, quit;
 * - x-echo: arguments of every type, returned as given (normalised);
 * - x-fail {device}: DeviceNotFound, as qom-get;
 * - x-event {name, data?}: sends that event;
 * - x-event-thread {name, count}: a thread sends @count events {"n": i};
 * - x-big {size}: returns a string of @size bytes.
 */
#include "lib/compiler.h"
#include "lib/error.h"
#include "lib/loop.h"
#include "lib/qmp/qmp.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>

struct host {
    struct loop *loop;
    struct qmp_server *srv;
    pthread_t threads[16];
    int nthreads;
};

static struct host host;

static void host_log(void *opaque, const char *fmt, ...)
{
    va_list ap;

    (void)opaque;
    fprintf(stderr, "qmp-host: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static const char *str_arg(json_object *args, const char *name)
{
    json_object *v;

    return json_object_object_get_ex(args, name, &v) ? json_object_get_string(v) : NULL;
}

/* --- qemu-storage-daemon look-alikes --- */

static int do_qom_get(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)ret;
    (void)opaque;
    error_setg(errp, "Device '%s' not found", str_arg(args, "path"));
    error_set_class(errp, QMP_ERR_DEVICE_NOT_FOUND);
    return -ENOENT;
}

static int do_block_job(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)ret;
    (void)opaque;
    error_setg(errp, "Block job '%s' not found", str_arg(args, "device"));
    error_set_class(errp, QMP_ERR_DEVICE_NOT_ACTIVE);
    return -ENOENT;
}

static int do_export_del(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)ret;
    (void)opaque;
    error_setg(errp, "Export '%s' is not found", str_arg(args, "id"));
    return -ENOENT;
}

static int do_bitmap_add(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)ret;
    (void)opaque;
    error_setg(errp, "Cannot find device='%s' nor node-name='%s'", str_arg(args, "node"),
               str_arg(args, "node"));
    return -ENOENT;
}

static int do_nbd_server_start(json_object *args, json_object **ret, void *opaque,
                               struct error **errp)
{
    (void)args;
    (void)ret;
    (void)opaque;
    error_setg(errp, "qmp-host serves no NBD");
    return -ENOTSUP;
}

static int do_empty_list(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)args;
    (void)opaque;
    (void)errp;
    *ret = json_object_new_array();
    return 0;
}

static int do_quit(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    struct host *h = opaque;

    (void)args;
    (void)ret;
    (void)errp;
    qmp_server_stop(h->srv);
    loop_quit(h->loop);
    return 0;
}

/* --- test commands --- */

static int do_echo(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)opaque;
    (void)errp;
    *ret = json_object_get(args);
    return 0;
}

static int do_fail(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)ret;
    (void)opaque;
    error_setg(errp, "Device '%s' not found", str_arg(args, "device"));
    error_set_class(errp, QMP_ERR_DEVICE_NOT_FOUND);
    return -ENOENT;
}

static int do_event(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    struct host *h = opaque;
    json_object *data = NULL;

    (void)ret;
    (void)errp;
    json_object_object_get_ex(args, "data", &data);
    qmp_server_event(h->srv, str_arg(args, "name"), json_object_get(data));
    return 0;
}

struct event_thread {
    struct host *h;
    char *name;
    int64_t count;
};

static void *event_thread(void *opaque)
{
    struct event_thread *t = opaque;

    for (int64_t i = 0; i < t->count; i++) {
        json_object *data = json_object_new_object();
        json_object_object_add(data, "n", json_object_new_int64(i));
        qmp_server_event(t->h->srv, t->name, data);
    }
    free(t->name);
    free(t);
    return NULL;
}

static int do_event_thread(json_object *args, json_object **ret, void *opaque,
                           struct error **errp)
{
    struct host *h = opaque;
    struct event_thread *t;
    json_object *v;

    (void)ret;
    if (h->nthreads == ARRAY_SIZE(h->threads)) {
        error_setg(errp, "too many threads");
        return -EAGAIN;
    }
    t = xzalloc(sizeof(*t));
    t->h = h;
    t->name = xstrdup(str_arg(args, "name"));
    json_object_object_get_ex(args, "count", &v);
    t->count = json_object_get_int64(v);
    if (pthread_create(&h->threads[h->nthreads], NULL, event_thread, t)) {
        free(t->name);
        free(t);
        error_setg(errp, "cannot start a thread");
        return -EAGAIN;
    }
    h->nthreads++;
    return 0;
}

static int do_big(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    json_object *v;
    int64_t n;
    char *s;

    (void)opaque;
    json_object_object_get_ex(args, "size", &v);
    n = json_object_get_int64(v);
    if (n < 0 || n > (256 << 20)) {
        error_setg(errp, "size out of range");
        return -EINVAL;
    }
    s = xmalloc(n + 1);
    memset(s, 'x', n);
    s[n] = 0;
    *ret = json_object_new_string_len(s, (int)n);
    free(s);
    return 0;
}

static const char *const enum_one_two[] = { "one", "two", NULL };
static const char *const export_mode[] = { "safe", "hard", NULL };
static const char *const socket_type[] = { "inet", "unix", "vsock", "fd", NULL };
static const struct qmp_arg one_two = { "", QMP_ENUM, false, enum_one_two };
static const struct qmp_arg int_elem = { "", QMP_INT };

static const struct qmp_arg echo_nested[] = {
    { "x", QMP_INT },
    { "y", QMP_STR, true },
    { NULL },
};
static const struct qmp_arg echo_args[] = {
    { "s", QMP_STR },
    { "i", QMP_INT, true },
    { "u", QMP_UINT64, true },
    { "u32", QMP_UINT32, true },
    { "b", QMP_BOOL, true },
    { "n", QMP_NUMBER, true },
    { "o", QMP_OBJECT, true },
    { "a", QMP_ARRAY, true },
    { "e", QMP_ENUM, true, enum_one_two },
    { "any", QMP_ANY, true },
    { "nested", QMP_OBJECT, true, .members = echo_nested },
    { "enums", QMP_ARRAY, true, .element = &one_two },
    { "ints", QMP_ARRAY, true, .element = &int_elem },
    { NULL },
};
static const struct qmp_arg device_args[] = { { "device", QMP_STR }, { NULL } };
static const struct qmp_arg event_args[] = {
    { "name", QMP_STR },
    { "data", QMP_OBJECT, true },
    { NULL },
};
static const struct qmp_arg event_thread_args[] = {
    { "name", QMP_STR },
    { "count", QMP_INT },
    { NULL },
};
static const struct qmp_arg big_args[] = { { "size", QMP_INT }, { NULL } };
static const struct qmp_arg qom_get_args[] = {
    { "path", QMP_STR },
    { "property", QMP_STR },
    { NULL },
};
static const struct qmp_arg set_speed_args[] = {
    { "device", QMP_STR },
    { "speed", QMP_INT },
    { NULL },
};
static const struct qmp_arg cancel_args[] = {
    { "device", QMP_STR },
    { "force", QMP_BOOL, true },
    { NULL },
};
static const struct qmp_arg export_del_args[] = {
    { "id", QMP_STR },
    { "mode", QMP_ENUM, true, export_mode },
    { NULL },
};
static const struct qmp_arg bitmap_add_args[] = {
    { "node", QMP_STR },
    { "name", QMP_STR },
    { "granularity", QMP_UINT32, true },
    { "persistent", QMP_BOOL, true },
    { "disabled", QMP_BOOL, true },
    { NULL },
};
/* QEMU's legacy SocketAddress: {type, data}, checked as far as that */
static const struct qmp_arg socket_legacy[] = {
    { "type", QMP_ENUM, false, socket_type },
    { "data", QMP_OBJECT },
    { NULL },
};
static const struct qmp_arg nbd_start_args[] = {
    { "addr", QMP_OBJECT, .members = socket_legacy },
    { "tls-creds", QMP_STR, true },
    { "tls-authz", QMP_STR, true },
    { "max-connections", QMP_UINT32, true },
    { NULL },
};
static const struct qmp_arg flat_args[] = { { "flat", QMP_BOOL, true }, { NULL } };

static const struct qmp_command commands[] = {
    { "query-block-jobs", do_empty_list, NULL },
    { "query-named-block-nodes", do_empty_list, flat_args },
    { "block-dirty-bitmap-add", do_bitmap_add, bitmap_add_args },
    { "block-job-set-speed", do_block_job, set_speed_args },
    { "block-job-cancel", do_block_job, cancel_args },
    { "nbd-server-start", do_nbd_server_start, nbd_start_args },
    { "block-export-del", do_export_del, export_del_args },
    { "quit", do_quit, NULL },
    { "qom-get", do_qom_get, qom_get_args },
    { "x-echo", do_echo, echo_args },
    { "x-fail", do_fail, device_args },
    { "x-event", do_event, event_args },
    { "x-event-thread", do_event_thread, event_thread_args },
    { "x-big", do_big, big_args },
    { NULL },
};

static void on_signal(int fd, short revents, void *opaque)
{
    struct signalfd_siginfo si;

    (void)revents;
    if (read(fd, &si, sizeof(si)) == sizeof(si)) {
        host_log(NULL, "signal %u: quitting", si.ssi_signo);
        loop_quit(opaque);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: qmp-host --socket PATH [--mode OCTAL] [--max-clients N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "socket", required_argument, NULL, 's' },
        { "mode", required_argument, NULL, 'm' },
        { "max-clients", required_argument, NULL, 'c' },
        { NULL, 0, NULL, 0 },
    };
    const char *path = NULL;
    mode_t mode = 0600;
    unsigned max_clients = 0;
    struct error *err = NULL;
    sigset_t mask;
    int c, sfd;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            path = optarg;
            break;
        case 'm':
            mode = strtoul(optarg, NULL, 8);
            break;
        case 'c':
            max_clients = strtoul(optarg, NULL, 10);
            break;
        default:
            usage();
        }
    }
    if (!path || optind != argc) {
        usage();
    }
    error_progname = "qmp-host";
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

    host.loop = loop_new();
    host.srv = qmp_server_new(&(struct qmp_server_config){
        .loop = host.loop,
        .commands = commands,
        .opaque = &host,
        .max_clients = max_clients,
        .version_major = 7,
        .version_minor = 2,
        .version_micro = 0,
        .package = "blockctl qmp-host",
        .log = host_log,
    });
    if (qmp_server_listen(host.srv, path, mode, &err) < 0) {
        error_report_err(err);
        qmp_server_free(host.srv);
        loop_free(host.loop);
        return 1;
    }
    loop_watch(host.loop, sfd, POLLIN, on_signal, host.loop);
    loop_run(host.loop);
    for (int i = 0; i < host.nthreads; i++) {
        pthread_join(host.threads[i], NULL);
    }
    qmp_server_free(host.srv);
    loop_free(host.loop);
    close(sfd);
    return 0;
}
