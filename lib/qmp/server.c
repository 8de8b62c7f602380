/*
 * blockctl - QMP server: the control socket of the agent
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Everything runs in the loop thread: the listening socket and each
 * client are loop watches.  A client's bytes go through its reader
 * (json.c), each message through qmp_dispatch(), and the replies into its
 * output queue, sent as the socket takes them.  Events from other threads
 * wait in a queue behind an eventfd; the loop thread sends them first
 * whenever it sends an event itself, so events keep the order of the
 * calls that made them.
 *
 * A client is freed only outside its own callback: closing it from inside
 * (its output queue overflowed while it was being served, or it hung up)
 * marks it dead, and the callback frees it on the way out.
 */
#include "lib/compiler.h"
#include "lib/qmp/internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#define READ_CHUNK 8192
#define OUT_PAUSE (1u << 20)     /* stop reading a client's commands */
#define OUT_MAX (16u << 20)      /* disconnect a client that does not read */
#define FREE_FLUSH_MS 200        /* qmp_server_free: time to send the rest */

struct conn {
    struct qmp_server *srv;
    struct conn *next;
    unsigned id;
    int fd, watch;
    struct qmp_reader *rd;
    struct qmp_buf out;
    bool negotiated;
    bool busy;      /* inside its callback */
    bool dead;      /* closed: free once not busy */
};

struct pending_event {
    struct pending_event *next;
    json_object *ev;
};

struct qmp_server {
    struct qmp_server_config cfg;
    struct qmp_dispatch disp;
    int lfd, lwatch, ltimer;
    char *path;
    dev_t dev;
    ino_t ino;
    struct conn *conns;
    unsigned nconns, next_id;

    pthread_mutex_t lock;   /* events from other threads */
    struct pending_event *evq, **evq_tail;
    int efd, ewatch;

    /*
     * The loop thread, as seen from our callbacks (atomics: other threads
     * read it).  Not loop_in_thread(): a thread started before loop_run()
     * would race with loop_run() setting it up.  A loop-thread call made
     * before any of our callbacks ran takes the other threads' way, which
     * is only later, never out of order.
     */
    pthread_t owner;
    bool owner_known;

    bool stopped;           /* qmp_server_stop(): run no more commands */
};

static void note_loop_thread(struct qmp_server *srv)
{
    if (!__atomic_load_n(&srv->owner_known, __ATOMIC_RELAXED)) {
        __atomic_store_n(&srv->owner, pthread_self(), __ATOMIC_RELAXED);
        __atomic_store_n(&srv->owner_known, true, __ATOMIC_RELEASE);
    }
}

static bool in_loop_thread(struct qmp_server *srv)
{
    return __atomic_load_n(&srv->owner_known, __ATOMIC_ACQUIRE) &&
           pthread_equal(__atomic_load_n(&srv->owner, __ATOMIC_RELAXED), pthread_self());
}

static void ATTRIBUTE_PRINTF(2, 3) slog(struct qmp_server *srv, const char *fmt, ...)
{
    va_list ap;
    char *m;

    if (!srv->cfg.log) {
        return;
    }
    va_start(ap, fmt);
    if (vasprintf(&m, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    srv->cfg.log(srv->cfg.opaque, "%s", m);
    free(m);
}

/* --- clients --- */

static void conn_free(struct conn *c)
{
    struct qmp_server *srv = c->srv;

    for (struct conn **pp = &srv->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    srv->nconns--;
    qmp_reader_free(c->rd);
    qmp_buf_free(&c->out);
    free(c);
}

static void conn_close(struct conn *c, const char *why)
{
    if (c->dead) {
        return;
    }
    slog(c->srv, "QMP client %u disconnected%s%s", c->id, why ? ": " : "", why ? why : "");
    c->dead = true;
    loop_unwatch(c->srv->cfg.loop, c->watch);
    close(c->fd);
    c->fd = -1;
    if (!c->busy) {
        conn_free(c);
    }
}

static void conn_update_watch(struct conn *c)
{
    short ev = 0;

    if (c->dead) {
        return;
    }
    if (qmp_buf_pending(&c->out) < OUT_PAUSE && !c->srv->stopped) {
        ev |= POLLIN;
    }
    if (qmp_buf_pending(&c->out)) {
        ev |= POLLOUT;
    }
    loop_watch_set_events(c->srv->cfg.loop, c->watch, ev);
}

/* Send what the socket takes now; false if the client is gone. */
static bool conn_flush(struct conn *c)
{
    if (c->dead) {
        return false;
    }
    while (qmp_buf_pending(&c->out)) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, qmp_buf_pending(&c->out),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            char *why = xasprintf("send: %s", strerror(errno));
            conn_close(c, why);
            free(why);
            return false;
        }
        qmp_buf_consume(&c->out, n);
    }
    return true;
}

/* Queue one message (with its "\r\n") for @c and send what can be sent. */
static void conn_send(struct conn *c, const char *text, size_t len)
{
    if (c->dead) {
        return;
    }
    qmp_buf_add(&c->out, text, len);
    if (!conn_flush(c)) {
        return;     /* closed, and freed unless busy */
    }
    if (qmp_buf_pending(&c->out) > OUT_MAX) {
        conn_close(c, "it does not read (more than 16 MiB of output queued)");
        return;
    }
    conn_update_watch(c);
}

static void conn_send_object(struct conn *c, json_object *o)
{
    struct qmp_buf b = { 0 };

    qmp_json_append(&b, o);
    qmp_buf_add(&b, "\r\n", 2);
    conn_send(c, b.data, b.len);
    qmp_buf_free(&b);
}

static bool conn_message(void *opaque, json_object *value, const char *error)
{
    struct conn *c = opaque;
    json_object *rsp;

    if (c->dead || c->srv->stopped) {
        json_object_put(value);
        return false;
    }
    if (error) {
        rsp = qmp_error_response(QMP_ERR_GENERIC, error, false, NULL);
    } else {
        rsp = qmp_dispatch(&c->srv->disp, value, &c->negotiated);
    }
    conn_send_object(c, rsp);
    json_object_put(rsp);
    return !c->dead && !c->srv->stopped;
}

static void conn_io(int fd, short revents, void *opaque)
{
    struct conn *c = opaque;
    char buf[READ_CHUNK];

    (void)fd;
    note_loop_thread(c->srv);
    c->busy = true;
    if (revents & POLLOUT) {
        conn_flush(c);
    }
    if (!c->dead && (revents & (POLLIN | POLLHUP | POLLERR)) &&
        qmp_buf_pending(&c->out) < OUT_PAUSE && !c->srv->stopped) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            qmp_reader_feed(c->rd, buf, n);
        } else if (n == 0) {
            /* what it sent before is answered: send what the socket takes */
            conn_flush(c);
            conn_close(c, NULL);
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            char *why = xasprintf("recv: %s", strerror(errno));
            conn_close(c, why);
            free(why);
        }
    } else if (!c->dead && (revents & (POLLHUP | POLLERR)) && !(revents & POLLIN)) {
        conn_close(c, "hung up");
    }
    c->busy = false;
    if (c->dead) {
        conn_free(c);
    } else {
        conn_update_watch(c);
    }
}

static void conn_new(struct qmp_server *srv, int fd, const struct ucred *cred)
{
    struct conn *c = xzalloc(sizeof(*c));
    json_object *greeting, *qmp;

    c->srv = srv;
    c->id = ++srv->next_id;
    c->fd = fd;
    c->rd = qmp_reader_new(QMP_MAX_MESSAGE, QMP_MAX_TOKENS, conn_message, c);
    c->watch = loop_watch(srv->cfg.loop, fd, POLLIN, conn_io, c);
    c->next = srv->conns;
    srv->conns = c;
    srv->nconns++;
    slog(srv, "QMP client %u connected (pid %ld, uid %ld)", c->id, (long)cred->pid,
         (long)cred->uid);

    qmp = json_object_new_object();
    json_object_object_add(qmp, "version", qmp_version_object(&srv->disp));
    /* no capability: out-of-band execution is not offered */
    json_object_object_add(qmp, "capabilities", json_object_new_array());
    greeting = json_object_new_object();
    json_object_object_add(greeting, "QMP", qmp);
    conn_send_object(c, greeting);
    json_object_put(greeting);
}

/* --- listening --- */

static void listen_io(int fd, short revents, void *opaque);

static void listen_resume(void *opaque)
{
    struct qmp_server *srv = opaque;

    srv->ltimer = 0;
    loop_watch_set_events(srv->cfg.loop, srv->lwatch, POLLIN);
}

static void listen_io(int fd, short revents, void *opaque)
{
    struct qmp_server *srv = opaque;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    int cfd;

    (void)revents;
    note_loop_thread(srv);
    cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* the client stays in the backlog: look again in a moment
             * rather than spin on a readable socket */
            slog(srv, "QMP: cannot accept a client: %s", strerror(errno));
            loop_watch_set_events(srv->cfg.loop, srv->lwatch, 0);
            if (!srv->ltimer) {
                srv->ltimer = loop_timer(srv->cfg.loop, 100, listen_resume, srv);
            }
        }
        return;
    }
    if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        slog(srv, "QMP: refused a client: SO_PEERCRED: %s", strerror(errno));
        close(cfd);
        return;
    }
    if (cred.uid != geteuid() && cred.uid != 0) {
        slog(srv, "QMP: refused a client (pid %ld, uid %ld): neither root nor uid %ld",
             (long)cred.pid, (long)cred.uid, (long)geteuid());
        close(cfd);
        return;
    }
    if (srv->nconns >= srv->cfg.max_clients) {
        slog(srv, "QMP: refused a client (pid %ld, uid %ld): already %u clients",
             (long)cred.pid, (long)cred.uid, srv->nconns);
        close(cfd);
        return;
    }
    conn_new(srv, cfd, &cred);
}

int qmp_server_listen(struct qmp_server *srv, const char *path, mode_t mode,
                      struct error **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    int fd;

    assert(srv->lfd < 0);
    if (strlen(path) >= sizeof(sa.sun_path)) {
        error_setg(errp, "QMP socket: '%s': path too long (at most %zu bytes)", path,
                   sizeof(sa.sun_path) - 1);
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    if (lstat(path, &st) == 0) {
        int probe, r;
        if (!S_ISSOCK(st.st_mode)) {
            error_setg(errp, "QMP socket: '%s': exists and is not a socket", path);
            return -EEXIST;
        }
        probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0) {
            error_setg_errno(errp, errno, "QMP socket: '%s'", path);
            return -errno;
        }
        r = connect(probe, (struct sockaddr *)&sa, sizeof(sa));
        int e = errno;
        close(probe);
        if (r == 0) {
            error_setg(errp, "QMP socket: '%s': a server is already listening on it", path);
            return -EADDRINUSE;
        }
        if (e != ECONNREFUSED) {
            error_setg_errno(errp, e, "QMP socket: '%s'", path);
            return -e;
        }
        /* nobody listens: left behind by a server that died */
        if (unlink(path) < 0 && errno != ENOENT) {
            error_setg_errno(errp, errno, "QMP socket: '%s': removing the stale socket", path);
            return -errno;
        }
    } else if (errno != ENOENT) {
        error_setg_errno(errp, errno, "QMP socket: '%s'", path);
        return -errno;
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "QMP socket: '%s'", path);
        return -errno;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        error_setg_errno(errp, e, "QMP socket: '%s': bind", path);
        close(fd);
        return -e;
    }
    /* no client can connect before listen(): the mode is set in time */
    if (chmod(path, mode) < 0 || stat(path, &st) < 0 || listen(fd, 16) < 0) {
        int e = errno;
        error_setg_errno(errp, e, "QMP socket: '%s'", path);
        unlink(path);
        close(fd);
        return -e;
    }
    srv->lfd = fd;
    srv->dev = st.st_dev;
    srv->ino = st.st_ino;
    if (path[0] != '/') {
        /* removed at the end, perhaps after a chdir (--daemonize) */
        char *cwd = getcwd(NULL, 0);
        srv->path = cwd ? xasprintf("%s/%s", cwd, path) : xstrdup(path);
        free(cwd);
    } else {
        srv->path = xstrdup(path);
    }
    srv->lwatch = loop_watch(srv->cfg.loop, fd, POLLIN, listen_io, srv);
    slog(srv, "QMP: listening on '%s'", path);
    return 0;
}

/* --- events --- */

static void broadcast(struct qmp_server *srv, json_object *ev)
{
    struct qmp_buf b = { 0 };
    struct conn *c, *next;

    qmp_json_append(&b, ev);
    qmp_buf_add(&b, "\r\n", 2);
    for (c = srv->conns; c; c = next) {
        next = c->next;     /* conn_send may free @c */
        if (c->negotiated && !c->dead) {
            conn_send(c, b.data, b.len);
        }
    }
    qmp_buf_free(&b);
}

/* Send the events other threads queued (loop thread). */
static void drain_events(struct qmp_server *srv)
{
    struct pending_event *p;

    pthread_mutex_lock(&srv->lock);
    p = srv->evq;
    srv->evq = NULL;
    srv->evq_tail = &srv->evq;
    pthread_mutex_unlock(&srv->lock);
    while (p) {
        struct pending_event *next = p->next;
        broadcast(srv, p->ev);
        json_object_put(p->ev);
        free(p);
        p = next;
    }
}

static void events_io(int fd, short revents, void *opaque)
{
    uint64_t v;

    (void)revents;
    note_loop_thread(opaque);
    while (read(fd, &v, sizeof(v)) > 0) {
    }
    drain_events(opaque);
}

void qmp_server_event(struct qmp_server *srv, const char *name, json_object *data)
{
    json_object *ev = json_object_new_object(), *ts = json_object_new_object();
    struct timespec now;

    clock_gettime(CLOCK_REALTIME, &now);
    json_object_object_add(ev, "event", json_object_new_string(name));
    json_object_object_add(ts, "seconds", json_object_new_int64(now.tv_sec));
    json_object_object_add(ts, "microseconds", json_object_new_int64(now.tv_nsec / 1000));
    json_object_object_add(ev, "timestamp", ts);
    if (data) {
        json_object_object_add(ev, "data", data);
    }
    if (in_loop_thread(srv)) {
        drain_events(srv);
        broadcast(srv, ev);
        json_object_put(ev);
    } else {
        struct pending_event *p = xzalloc(sizeof(*p));
        uint64_t one = 1;
        ssize_t r;
        p->ev = ev;
        pthread_mutex_lock(&srv->lock);
        *srv->evq_tail = p;
        srv->evq_tail = &p->next;
        pthread_mutex_unlock(&srv->lock);
        do {
            r = write(srv->efd, &one, sizeof(one));
        } while (r < 0 && errno == EINTR);
    }
}

/* --- life --- */

void qmp_server_stop(struct qmp_server *srv)
{
    srv->stopped = true;
    if (srv->lfd >= 0) {
        loop_watch_set_events(srv->cfg.loop, srv->lwatch, 0);
    }
}

struct qmp_server *qmp_server_new(const struct qmp_server_config *cfg)
{
    struct qmp_server *srv = xzalloc(sizeof(*srv));

    srv->cfg = *cfg;
    if (!srv->cfg.max_clients) {
        srv->cfg.max_clients = 16;
    }
    srv->disp = (struct qmp_dispatch){
        .commands = cfg->commands,
        .opaque = cfg->opaque,
        .version_major = cfg->version_major,
        .version_minor = cfg->version_minor,
        .version_micro = cfg->version_micro,
        .package = cfg->package,
    };
    for (const struct qmp_command *c = cfg->commands; c && c->name; c++) {
        assert(c->fn);
        assert(strcmp(c->name, "qmp_capabilities") && strcmp(c->name, "query-version") &&
               strcmp(c->name, "query-commands"));
    }
    srv->lfd = -1;
    pthread_mutex_init(&srv->lock, NULL);
    srv->evq_tail = &srv->evq;
    srv->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (srv->efd < 0) {
        BUG("eventfd: %s", strerror(errno));
    }
    srv->ewatch = loop_watch(srv->cfg.loop, srv->efd, POLLIN, events_io, srv);
    return srv;
}

/* Send what is queued for the clients, for at most FREE_FLUSH_MS. */
static void flush_all(struct qmp_server *srv)
{
    struct timespec t0, t;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct pollfd pfd[64];
        nfds_t n = 0;
        long left;
        for (struct conn *c = srv->conns; c && n < ARRAY_SIZE(pfd); c = c->next) {
            if (!c->dead && conn_flush(c) && qmp_buf_pending(&c->out)) {
                pfd[n++] = (struct pollfd){ .fd = c->fd, .events = POLLOUT };
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        left = FREE_FLUSH_MS - ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
        if (!n || left <= 0 || poll(pfd, n, left) <= 0) {
            return;
        }
    }
}

void qmp_server_free(struct qmp_server *srv)
{
    struct stat st;

    if (!srv) {
        return;
    }
    /* from here on, closing a client does not free it: the end does */
    for (struct conn *c = srv->conns; c; c = c->next) {
        c->busy = true;
    }
    if (srv->lfd >= 0) {
        loop_unwatch(srv->cfg.loop, srv->lwatch);
        if (srv->ltimer) {
            loop_cancel_timer(srv->cfg.loop, srv->ltimer);
        }
        close(srv->lfd);
        /* remove the socket unless another server has replaced it */
        if (stat(srv->path, &st) == 0 && st.st_dev == srv->dev && st.st_ino == srv->ino) {
            unlink(srv->path);
        }
        slog(srv, "QMP: stopped listening on '%s'", srv->path);
    }
    drain_events(srv);
    flush_all(srv);
    while (srv->conns) {
        struct conn *c = srv->conns;
        conn_close(c, "the server is shutting down");
        conn_free(c);
    }
    loop_unwatch(srv->cfg.loop, srv->ewatch);
    close(srv->efd);
    pthread_mutex_destroy(&srv->lock);
    free(srv->path);
    free(srv);
}
