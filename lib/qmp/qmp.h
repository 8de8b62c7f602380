/*
 * blockctl - QMP: QEMU's JSON control protocol, server and client
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Framing, greeting, capabilities negotiation, errors and events as QEMU
 * 7.2 has them (qemu docs/interop/qmp-spec.rst), so that QMP tools drive
 * the agent and blockctl's --agent drives a qemu-storage-daemon.
 *
 * Server (server.c): runs in the agent's main loop (lib/loop.h); listens
 * on a UNIX socket, accepts several clients, parses their input as
 * QEMU's monitor does (json.c: its lexer, message splitting, error
 * recovery and messages; messages split over reads or several per read;
 * at most QMP_MAX_MESSAGE bytes of tokens each and nested at most
 * QMP_MAX_DEPTH deep), checks a command's arguments against its table
 * entry before calling it (dispatch.c), and sends events to every client
 * that has negotiated capabilities.  Values are json-c objects.
 * Client (client.c): a blocking client for the command line.
 *
 * Output is written as QEMU writes it, and QEMU orders an object's
 * members by a hash of their names (and, for names in the same hash
 * bucket, newest first): to come out in QEMU's order, build a handler's
 * return objects adding members in the order of QEMU's QAPI schema.
 *
 * Limits (QEMU's in brackets): a message to the server may have
 * QMP_MAX_MESSAGE bytes of tokens [64 MiB] and 128 Ki tokens [2 Mi]:
 * past that it gets the error "JSON token size limit exceeded" (or
 * "...count...") and the rest of it is skipped [QEMU lexes the rest as new
 * messages]; nesting beyond QMP_MAX_DEPTH is QEMU's error with QEMU's
 * recovery.  Replies waiting for a client that does not read stop the
 * server reading its commands past 1 MiB, and disconnect it past 16 MiB
 * (events keep coming).  The client reads replies up to 64 MiB.
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
#define QMP_ERR_DEVICE_NOT_ACTIVE "DeviceNotActive"
#define QMP_ERR_KVM_MISSING_CAP "KVMMissingCap"

/*
 * Argument types of a command's table entry, with QEMU's messages when
 * a value does not fit: "Invalid parameter type for 'NAME', expected:
 * string|integer|boolean|number|object|array", "Parameter 'NAME' does not
 * accept value 'V'" (enum), "Parameter 'NAME' expects uint64|uint32_t".
 * null is a value, not an absent argument: only QMP_ANY takes it.
 */
enum qmp_type {
    QMP_STR,
    QMP_INT,        /* a JSON integer that fits int64 (QAPI 'int') */
    QMP_BOOL,
    QMP_NUMBER,     /* integer or float */
    QMP_OBJECT,
    QMP_ARRAY,
    QMP_ENUM,       /* a string among @values */
    QMP_ANY,
    QMP_UINT64,     /* QAPI 'uint64': a negative integer is taken modulo
                     * 2^64 (the arguments then hold it as a uint64: read
                     * it with json_object_get_uint64) */
    QMP_UINT32,     /* QAPI 'uint32': as QMP_UINT64, then at most 2^32-1 */
    QMP_ALTERNATE,  /* QAPI alternate: the one of @branches whose JSON type
                     * the value has; otherwise "Invalid parameter type for
                     * 'NAME', expected: TYPE_NAME" (NAME bare, "null" in a
                     * list, as QEMU) */
};

struct qmp_arg;

/* A variant of a union (QMP_OBJECT with a discriminator) */
struct qmp_variant {
    const char *tag;                  /* NULL ends the list */
    const struct qmp_arg *members;    /* what the object has besides the base */
};

/*
 * A command's argument table is a list of members; or, for a command whose
 * arguments are a union (QAPI's boxed arguments, e.g. blockdev-add), a
 * single entry named "" of type QMP_OBJECT with a discriminator.
 */
struct qmp_arg {
    const char *name;             /* NULL ends the list */
    enum qmp_type type;
    bool optional;
    const char *const *values;    /* QMP_ENUM: NULL-terminated */
    /* QMP_OBJECT: if set, the object's members, checked as a command's
     * arguments are (named 'NAME.MEMBER' in errors) */
    const struct qmp_arg *members;
    /* QMP_ARRAY: if set, what each element must be (its name is unused;
     * errors name 'NAME[i]') */
    const struct qmp_arg *element;
    /* QMP_OBJECT with @members: a union (QAPI's flat union) if set: the
     * member of @members (a QMP_ENUM) whose value picks the variant; the
     * variant's members are checked after the base's, and the unknown
     * members after both.  A tag without a variant adds no members. */
    const char *discriminator;
    const struct qmp_variant *variants;
    /* QMP_ALTERNATE: one branch per JSON type (names unused, NULL name
     * ends) and the QAPI type's name */
    const struct qmp_arg *branches;
    const char *type_name;
};

/*
 * A command handler: @args is the (checked) arguments object, never NULL.
 * Returns 0 and may set *ret (NULL means {}), or -errno with *errp set; an
 * error's class is set with error_set_class(); the reply's "desc" is the
 * error's message (its hint is not sent).  Runs in the loop thread and
 * may call qmp_server_event() (the event goes out before the reply, as in
 * QEMU), but not qmp_server_free().
 */
typedef int qmp_handler(json_object *args, json_object **ret, void *opaque,
                        struct error **errp);

struct qmp_command {
    const char *name;             /* NULL ends the table */
    qmp_handler *fn;
    const struct qmp_arg *args;   /* NULL: takes no arguments */
};

/*
 * Check @args (an object) against @table as the server does before calling
 * a handler: the first missing or mistyped argument in table order, then
 * an unknown one (of several, the one QEMU names); may normalise values
 * (see QMP_UINT64).  For handlers that check nested arguments themselves.
 */
int qmp_check_args(json_object *args, const struct qmp_arg *table, struct error **errp);

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
 * query-commands itself (the table may not redefine them).  Listen on
 * UNIX socket @path with @mode (an existing live socket is an error, a
 * stale one is replaced, any other file is left alone and is an error);
 * clients whose SO_PEERCRED uid is neither ours nor root are refused.
 * Loop thread only, except qmp_server_event().
 */
struct qmp_server *qmp_server_new(const struct qmp_server_config *cfg);
int qmp_server_listen(struct qmp_server *srv, const char *path, mode_t mode,
                      struct error **errp);
/*
 * Any thread: send event @name with @data (taken over; NULL: no "data"
 * member) and the current time to every negotiated client.  From the loop
 * thread it is queued to the clients at once; from another thread it is
 * handed to the loop thread (in order of calls).  Every other thread must
 * have stopped sending events before qmp_server_free().
 */
void qmp_server_event(struct qmp_server *srv, const char *name, json_object *data);
/*
 * Loop thread (a handler may call it, e.g. 'quit' before loop_quit()):
 * run no more commands; those already read are dropped, replies already
 * queued still go out with qmp_server_free().
 */
void qmp_server_stop(struct qmp_server *srv);
/*
 * Stop listening, send what is queued for the clients (waiting at most a
 * moment), close them, remove the socket (if it is still ours); then free.
 */
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
 * comes back as -EIO with *errp holding "desc" and its class (one of the
 * QMP_ERR_* strings; an unknown class becomes GenericError).  Events
 * that arrive meanwhile are queued.  -ETIMEDOUT when the server does not
 * answer in time (the client stays usable: the late reply is dropped, by
 * its id), -ECONNRESET when it closed, -EPROTO when it sent something that
 * is not QMP: after those two (and a timeout while sending) the client is
 * unusable and every later call fails the same way.  Errors other than
 * QMP errors name the socket.
 */
int qmp_client_execute(struct qmp_client *c, const char *cmd, json_object *args,
                       json_object **ret, struct error **errp);
/* The next queued or arriving event, waiting up to @timeout_ms (-1: for
 * ever); NULL on timeout or when the connection closed. */
json_object *qmp_client_event(struct qmp_client *c, int timeout_ms);
void qmp_client_close(struct qmp_client *c);

#endif
