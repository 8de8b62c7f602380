/*
 * blockctl - QMP: QEMU's JSON control protocol, server and client
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Framing, greeting, capabilities negotiation, errors and events as QEMU
 * 7.2 has them (qemu docs/interop/qmp-spec.rst), so that QMP tools drive
 * the agent and blockctl's --agent drives a qemu-storage-daemon.
 *
 * Server (server.c): runs in the agent's main loop (lib/loop.h); listens
 * on a UNIX socket, accepts several clients, parses their input with
 * json-c's streaming tokenizer (messages split over reads or several per
 * read; at most 1 MiB each and nested at most QMP_MAX_DEPTH deep), checks
 * a command's arguments against its table entry before calling it, and
 * sends events to every client that has negotiated capabilities.
 * Client (client.c): a blocking client for the command line.
 */
#ifndef BLOCKCTL_LIB_QMP_H
#define BLOCKCTL_LIB_QMP_H

#include "lib/compiler.h"
#include "lib/error.h"
#include "lib/loop.h"

#include <json-c/json.h>
#include <sys/types.h>

#define QMP_MAX_MESSAGE (1u << 20)
#define QMP_MAX_DEPTH 1024

/* Error classes (QEMU's ErrorClass); an error without one is GenericError. */
#define QMP_ERR_GENERIC "GenericError"
#define QMP_ERR_COMMAND_NOT_FOUND "CommandNotFound"
#define QMP_ERR_DEVICE_NOT_FOUND "DeviceNotFound"

/* Argument types of a command's table entry */
enum qmp_type {
    QMP_STR,
    QMP_INT,        /* a JSON integer (int64) */
    QMP_BOOL,
    QMP_NUMBER,     /* integer or float */
    QMP_OBJECT,
    QMP_ARRAY,
    QMP_ENUM,       /* a string among @values */
    QMP_ANY,
};

struct qmp_arg {
    const char *name;             /* NULL ends the list */
    enum qmp_type type;
    bool optional;
    const char *const *values;    /* QMP_ENUM: NULL-terminated */
};

/*
 * A command handler: @args is the (checked) arguments object, never NULL.
 * Returns 0 and may set *ret (NULL means {}), or -errno with *errp set; an
 * error's class is set with error_set_class().  Runs in the loop thread.
 */
typedef int qmp_handler(json_object *args, json_object **ret, void *opaque,
                        struct error **errp);

struct qmp_command {
    const char *name;             /* NULL ends the table */
    qmp_handler *fn;
    const struct qmp_arg *args;   /* NULL: takes no arguments */
};

struct qmp_server;

struct qmp_server_config {
    struct loop *loop;
    const struct qmp_command *commands;   /* the agent's own table */
    void *opaque;                         /* passed to handlers */
    unsigned max_clients;                 /* 0: 16 */
    /* QEMU version to claim in the greeting and query-version */
    int version_major, version_minor, version_micro;
    const char *package;                  /* "blockctl 0.1.0" */
    /* Log one line (client connected, refused, disconnected). */
    void (*log)(void *opaque, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
};

/*
 * A server that also answers qmp_capabilities, query-version and
 * query-commands itself.  Listen on UNIX socket @path with @mode (an
 * existing live socket is an error, a stale one is replaced); clients
 * whose SO_PEERCRED uid is neither ours nor root are refused.
 */
struct qmp_server *qmp_server_new(const struct qmp_server_config *cfg);
int qmp_server_listen(struct qmp_server *srv, const char *path, mode_t mode,
                      struct error **errp);
/*
 * Any thread: send event @name with @data (taken over; NULL: no "data"
 * member) and the current time to every negotiated client.
 */
void qmp_server_event(struct qmp_server *srv, const char *name, json_object *data);
/* Stop listening, close every client, remove the socket; then free. */
void qmp_server_free(struct qmp_server *srv);

/* --- client --- */

struct qmp_client;

/*
 * Connect to the QMP socket @path, read the greeting and negotiate
 * capabilities.  @timeout_ms bounds every wait for the server (0: none).
 */
struct qmp_client *qmp_client_connect(const char *path, unsigned timeout_ms,
                                      struct error **errp);
/*
 * Run @cmd with @args (taken over; NULL: none).  On success *ret (if
 * non-NULL) gets the "return" value (the caller puts it).  A QMP error
 * comes back as -EIO with *errp holding "desc" and its class.  Events
 * that arrive meanwhile are queued.
 */
int qmp_client_execute(struct qmp_client *c, const char *cmd, json_object *args,
                       json_object **ret, struct error **errp);
/* The next queued or arriving event, waiting up to @timeout_ms (-1: for
 * ever); NULL on timeout or when the connection closed. */
json_object *qmp_client_event(struct qmp_client *c, int timeout_ms);
void qmp_client_close(struct qmp_client *c);

#endif
