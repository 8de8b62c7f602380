/*
 * blockctl - QMP client: blocking, for the command line
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * One command at a time, each with its own "id" ("blockctl-N"); a reply
 * with another id is a late one to an earlier command that timed out, and
 * is dropped.  Events met while waiting are queued for qmp_client_event().
 * Drives blockctl's agent, qemu-storage-daemon and QEMU alike.
 */
#include "lib/compiler.h"
#include "lib/qmp/internal.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

struct msg {
    struct msg *next;
    json_object *o;
};

struct qmp_client {
    char *name;             /* the socket, for errors */
    int fd;
    unsigned timeout_ms;
    struct qmp_reader *rd;
    struct msg *in, **in_tail;          /* read, not yet looked at */
    struct msg *events, **events_tail;  /* events for qmp_client_event */
    uint64_t next_id;
    char *parse_error;      /* the server sent something not JSON */
    int broken;             /* -errno: the connection is unusable */
    char *broken_msg;
};

static bool client_message(void *opaque, json_object *value, const char *error)
{
    struct qmp_client *c = opaque;
    struct msg *m;

    if (error) {
        if (!c->parse_error) {
            c->parse_error = xstrdup(error);
        }
        return false;
    }
    m = xzalloc(sizeof(*m));
    m->o = value;
    *c->in_tail = m;
    c->in_tail = &m->next;
    return true;
}

static json_object *pop(struct msg **head, struct msg ***tail)
{
    struct msg *m = *head;
    json_object *o;

    if (!m) {
        return NULL;
    }
    *head = m->next;
    if (!*head) {
        *tail = head;
    }
    o = m->o;
    free(m);
    return o;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until @deadline (-1: none) for poll(). */
static int left_ms(int64_t deadline)
{
    int64_t l;

    if (deadline < 0) {
        return -1;
    }
    l = deadline - now_ms();
    return l < 0 ? 0 : (int)MIN(l, INT32_MAX);
}

static int64_t deadline_in(int64_t ms)
{
    return ms < 0 ? -1 : now_ms() + ms;
}

/* Make the client unusable with errno @err and the message @fmt. */
static int ATTRIBUTE_PRINTF(3, 4) set_broken(struct qmp_client *c, int err, const char *fmt, ...)
{
    va_list ap;

    if (!c->broken) {
        c->broken = -err;
        va_start(ap, fmt);
        if (vasprintf(&c->broken_msg, fmt, ap) < 0) {
            abort();
        }
        va_end(ap);
    }
    return c->broken;
}

static int report_broken(struct qmp_client *c, struct error **errp)
{
    error_setg(errp, "%s", c->broken_msg);
    return c->broken;
}

/*
 * Read from the server until at least one message is in c->in (0), the
 * deadline passes (-ETIMEDOUT, the client stays usable) or the connection
 * breaks.
 */
static int fill(struct qmp_client *c, int64_t deadline)
{
    char buf[8192];

    while (!c->in) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        ssize_t n;
        int r;

        if (c->broken) {
            return c->broken;
        }
        r = poll(&pfd, 1, left_ms(deadline));
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return set_broken(c, errno, "QMP: '%s': poll: %s", c->name, strerror(errno));
        }
        if (r == 0) {
            return -ETIMEDOUT;
        }
        n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            if (errno != ECONNRESET) {
                return set_broken(c, errno, "QMP: '%s': %s", c->name, strerror(errno));
            }
            n = 0;  /* reset: it closed with our command unread */
        }
        if (n == 0) {
            return set_broken(c, ECONNRESET, "QMP: '%s': the server closed the connection",
                              c->name);
        }
        qmp_reader_feed(c->rd, buf, n);
        if (c->parse_error) {
            return set_broken(c, EPROTO, "QMP: '%s': the server sent invalid JSON (%s)",
                              c->name, c->parse_error);
        }
    }
    return 0;
}

static int send_all(struct qmp_client *c, const char *p, size_t len, int64_t deadline)
{
    while (len) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
        ssize_t n;
        int r = poll(&pfd, 1, left_ms(deadline));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return set_broken(c, r ? errno : ETIMEDOUT, "QMP: '%s': sending: %s", c->name,
                              strerror(r ? errno : ETIMEDOUT));
        }
        n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
                continue;
            }
            if (errno == EPIPE || errno == ECONNRESET) {
                return set_broken(c, ECONNRESET,
                                  "QMP: '%s': the server closed the connection", c->name);
            }
            return set_broken(c, errno, "QMP: '%s': sending: %s", c->name, strerror(errno));
        }
        p += n;
        len -= n;
    }
    return 0;
}

static bool is_event(json_object *o)
{
    return json_object_object_get_ex(o, "event", NULL);
}

/* A QMP error class as one of our static strings. */
static const char *static_class(const char *cls)
{
    static const char *const known[] = {
        QMP_ERR_GENERIC, QMP_ERR_COMMAND_NOT_FOUND, QMP_ERR_DEVICE_NOT_FOUND,
        QMP_ERR_DEVICE_NOT_ACTIVE, QMP_ERR_KVM_MISSING_CAP,
    };

    for (size_t i = 0; cls && i < ARRAY_SIZE(known); i++) {
        if (!strcmp(cls, known[i])) {
            return known[i];
        }
    }
    return QMP_ERR_GENERIC;
}

/*
 * Wait for the reply with id @id (NULL: the greeting); events are queued.
 * Returns it, or NULL with *errp set.
 */
static json_object *wait_reply(struct qmp_client *c, const char *what, const char *id,
                               int64_t deadline, struct error **errp)
{
    for (;;) {
        json_object *o, *v;
        int r = fill(c, deadline);

        if (r == -ETIMEDOUT) {
            if (id) {
                error_setg(errp, "QMP: '%s': no answer to '%s' within %u ms", c->name, what,
                           c->timeout_ms);
            } else {
                error_setg(errp, "QMP: '%s': no greeting within %u ms (a QEMU monitor serves "
                           "one client at a time: is another one connected?)", c->name,
                           c->timeout_ms);
            }
            return NULL;
        }
        if (r < 0) {
            report_broken(c, errp);
            return NULL;
        }
        o = pop(&c->in, &c->in_tail);
        if (!json_object_is_type(o, json_type_object)) {
            json_object_put(o);
            set_broken(c, EPROTO, "QMP: '%s': the server sent a message that is not an object",
                       c->name);
            report_broken(c, errp);
            return NULL;
        }
        if (!id) {
            return o;   /* the greeting is the first message */
        }
        if (is_event(o)) {
            struct msg *m = xzalloc(sizeof(*m));
            m->o = o;
            *c->events_tail = m;
            c->events_tail = &m->next;
            continue;
        }
        if (json_object_object_get_ex(o, "id", &v)) {
            if (!json_object_is_type(v, json_type_string) || strcmp(json_object_get_string(v), id)) {
                json_object_put(o);     /* a late reply to an earlier command */
                continue;
            }
        } else if (!json_object_object_get_ex(o, "error", NULL) &&
                   !json_object_object_get_ex(o, "return", NULL)) {
            json_object_put(o);
            continue;
        }
        /* ours (or, without an id, the answer to the only command in flight) */
        return o;
    }
}

static int execute(struct qmp_client *c, const char *cmd, json_object *args, json_object **ret,
                   struct error **errp)
{
    json_object *msg = json_object_new_object(), *rsp, *v, *e;
    char *id;
    struct qmp_buf b = { 0 };
    int r;

    if (ret) {
        *ret = NULL;
    }
    if (c->broken) {
        json_object_put(args);
        json_object_put(msg);
        return report_broken(c, errp);
    }
    id = xasprintf("blockctl-%" PRIu64, ++c->next_id);
    json_object_object_add(msg, "execute", json_object_new_string(cmd));
    if (args) {
        json_object_object_add(msg, "arguments", args);
    }
    json_object_object_add(msg, "id", json_object_new_string(id));
    qmp_json_append(&b, msg);
    qmp_buf_add(&b, "\n", 1);
    json_object_put(msg);

    int64_t deadline = deadline_in(c->timeout_ms ? (int64_t)c->timeout_ms : -1);
    r = send_all(c, b.data, b.len, deadline);
    qmp_buf_free(&b);
    if (r < 0) {
        free(id);
        return report_broken(c, errp);
    }
    rsp = wait_reply(c, cmd, id, deadline, errp);
    free(id);
    if (!rsp) {
        return c->broken ? c->broken : -ETIMEDOUT;
    }
    if (json_object_object_get_ex(rsp, "return", &v)) {
        if (ret) {
            *ret = json_object_get(v);
        }
        json_object_put(rsp);
        return 0;
    }
    if (json_object_object_get_ex(rsp, "error", &e) && json_object_is_type(e, json_type_object)) {
        json_object *cls = NULL, *desc = NULL;
        json_object_object_get_ex(e, "class", &cls);
        json_object_object_get_ex(e, "desc", &desc);
        error_setg(errp, "%s", desc ? json_object_get_string(desc) : "(no description)");
        error_set_class(errp, static_class(cls ? json_object_get_string(cls) : NULL));
        json_object_put(rsp);
        return -EIO;
    }
    json_object_put(rsp);
    set_broken(c, EPROTO, "QMP: '%s': the reply to '%s' has neither \"return\" nor \"error\"",
               c->name, cmd);
    return report_broken(c, errp);
}

int qmp_client_execute(struct qmp_client *c, const char *cmd, json_object *args,
                       json_object **ret, struct error **errp)
{
    return execute(c, cmd, args, ret, errp);
}

/* A client on the connected socket @fd (taken over); @name names it in errors. */
struct qmp_client *qmp_client_new_fd(int fd, const char *name, unsigned timeout_ms,
                                     struct error **errp)
{
    struct qmp_client *c = xzalloc(sizeof(*c));
    json_object *greeting, *v;
    int64_t deadline;
    int r;

    c->fd = fd;
    c->name = xstrdup(name);
    c->timeout_ms = timeout_ms;
    c->in_tail = &c->in;
    c->events_tail = &c->events;
    c->rd = qmp_reader_new(QMP_CLIENT_MAX_MESSAGE, QMP_CLIENT_MAX_TOKENS, client_message, c);

    deadline = deadline_in(timeout_ms ? (int64_t)timeout_ms : -1);
    greeting = wait_reply(c, NULL, NULL, deadline, errp);
    if (!greeting) {
        goto fail;
    }
    if (!json_object_object_get_ex(greeting, "QMP", &v) || !json_object_is_type(v, json_type_object)) {
        json_object_put(greeting);
        error_setg(errp, "QMP: '%s': not a QMP server (no greeting)", name);
        goto fail;
    }
    json_object_put(greeting);
    r = execute(c, "qmp_capabilities", NULL, NULL, errp);
    if (r < 0) {
        if (r == -EIO) {
            error_prefix(errp, "QMP: '%s': capabilities negotiation: ", name);
        }
        goto fail;
    }
    return c;

fail:
    qmp_client_close(c);
    return NULL;
}

struct qmp_client *qmp_client_connect(const char *path, unsigned timeout_ms,
                                      struct error **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        error_setg(errp, "QMP: '%s': path too long for a socket", path);
        return NULL;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "QMP: '%s'", path);
        return NULL;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        error_setg_errno(errp, errno, "QMP: '%s'", path);
        close(fd);
        return NULL;
    }
    return qmp_client_new_fd(fd, path, timeout_ms, errp);
}

json_object *qmp_client_event(struct qmp_client *c, int timeout_ms)
{
    int64_t deadline = deadline_in(timeout_ms);

    for (;;) {
        json_object *o = pop(&c->events, &c->events_tail);
        if (o) {
            return o;
        }
        if (fill(c, deadline) < 0) {
            return NULL;
        }
        while ((o = pop(&c->in, &c->in_tail))) {
            if (json_object_is_type(o, json_type_object) && is_event(o)) {
                struct msg *m = xzalloc(sizeof(*m));
                m->o = o;
                *c->events_tail = m;
                c->events_tail = &m->next;
            } else {
                json_object_put(o);     /* a late reply */
            }
        }
    }
}

void qmp_client_close(struct qmp_client *c)
{
    json_object *o;

    if (!c) {
        return;
    }
    while ((o = pop(&c->in, &c->in_tail))) {
        json_object_put(o);
    }
    while ((o = pop(&c->events, &c->events_tail))) {
        json_object_put(o);
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    qmp_reader_free(c->rd);
    free(c->parse_error);
    free(c->broken_msg);
    free(c->name);
    free(c);
}
