/*
 * blockctl - QMP internals shared by server.c, client.c, json.c, dispatch.c
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef BLOCKCTL_LIB_QMP_INTERNAL_H
#define BLOCKCTL_LIB_QMP_INTERNAL_H

#include "lib/qmp/qmp.h"

/* --- json.c: QEMU's JSON dialect, both ways --- */

/*
 * A growable byte buffer; @off bytes at the front are already consumed
 * (an output queue sends from there).
 */
struct qmp_buf {
    char *data;
    size_t len, off, cap;
};

void qmp_buf_add(struct qmp_buf *b, const void *p, size_t n);
void qmp_buf_addf(struct qmp_buf *b, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
/* Drop @n consumed bytes from the front. */
void qmp_buf_consume(struct qmp_buf *b, size_t n);
static inline size_t qmp_buf_pending(const struct qmp_buf *b)
{
    return b->len - b->off;
}
void qmp_buf_free(struct qmp_buf *b);

/*
 * Append @obj as QEMU 7.2 writes it: compact with ", " and ": " separators,
 * object members in QEMU's QDict iteration order (see qmp.h), strings as
 * ASCII with \uXXXX escapes, doubles as "%.17g".
 */
void qmp_json_append(struct qmp_buf *b, json_object *obj);
/* The same as a new NUL-terminated string. */
char *qmp_json_string(json_object *obj);

/*
 * @obj's members in QEMU's QDict iteration order: fills @keys (and @vals
 * if non-NULL) with up to json_object_object_length(obj) entries.
 */
size_t qmp_json_members(json_object *obj, const char **keys, json_object **vals);

/*
 * A streaming reader that splits a byte stream into JSON values exactly
 * as QEMU's QMP monitor does: its lexer (with single-quoted strings and
 * its error recovery), its message splitting by bracket counting, its
 * limits and its parse error messages.  For each message @emit gets
 * either a value (owned by the callee) or an error message ("JSON parse
 * error, ..."), never both; returning false stops qmp_reader_feed().
 *
 * Strings are stored as QEMU stores them: modified UTF-8, U+0000 as the
 * two bytes C0 80.
 */
typedef bool qmp_reader_emit(void *opaque, json_object *value, const char *error);

struct qmp_reader;
/* @max_bytes: sum of a message's token lengths; @max_tokens: its tokens. */
struct qmp_reader *qmp_reader_new(size_t max_bytes, size_t max_tokens,
                                  qmp_reader_emit *emit, void *opaque);
/* Returns false if @emit asked to stop. */
bool qmp_reader_feed(struct qmp_reader *r, const char *buf, size_t len);
void qmp_reader_free(struct qmp_reader *r);

/*
 * One modified-UTF-8 sequence at @s (@n bytes): the code point, or -1
 * for an invalid sequence; *@used gets the bytes it takes (at least 1).
 */
int32_t qmp_utf8_decode(const unsigned char *s, size_t n, size_t *used);

/* QEMU's QDict bucket of @key (its iteration order). */
unsigned qmp_qdict_bucket(const char *key);

/* --- dispatch.c --- */

/* The error response {"error": {"class": ..., "desc": ...}} (+ "id"). */
json_object *qmp_error_response(const char *cls, const char *desc, bool has_id, json_object *id);

struct qmp_dispatch {
    const struct qmp_command *commands;
    void *opaque;
    /* built-ins */
    int version_major, version_minor, version_micro;
    const char *package;
};

/*
 * Answer one message (a value from the reader, taken over) of a client
 * whose negotiation state is *@negotiated; returns the response.
 */
json_object *qmp_dispatch(const struct qmp_dispatch *d, json_object *msg, bool *negotiated);
/* {"qemu": {"major": .., "minor": .., "micro": ..}, "package": ..} */
json_object *qmp_version_object(const struct qmp_dispatch *d);

/* --- client.c --- */

/* A client on the connected socket @fd (taken over); @name names it in errors. */
struct qmp_client *qmp_client_new_fd(int fd, const char *name, unsigned timeout_ms,
                                     struct error **errp);

/* --- limits --- */
#define QMP_MAX_TOKENS (1u << 17)          /* tokens in a message to the server */
#define QMP_CLIENT_MAX_MESSAGE (64u << 20) /* a reply to the client */
#define QMP_CLIENT_MAX_TOKENS (1u << 22)

#endif
