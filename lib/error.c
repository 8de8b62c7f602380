/*
 * blockctl - error objects
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *error_progname = "blockctl";

static void error_setv(struct error **errp, int errnum, const char *fmt, va_list ap)
{
    struct error *err;
    char *msg;

    if (!errp || *errp) {
        return;
    }
    if (vasprintf(&msg, fmt, ap) < 0) {
        abort();
    }
    if (errnum) {
        char *full = xasprintf("%s: %s", msg, strerror(errnum));
        free(msg);
        msg = full;
    }
    err = xzalloc(sizeof(*err));
    err->errnum = errnum;
    err->msg = msg;
    *errp = err;
}

void error_setg(struct error **errp, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    error_setv(errp, 0, fmt, ap);
    va_end(ap);
}

void error_setg_errno(struct error **errp, int errnum, const char *fmt, ...)
{
    va_list ap;

    if (errnum < 0) {
        errnum = -errnum;
    }
    va_start(ap, fmt);
    error_setv(errp, errnum, fmt, ap);
    va_end(ap);
}

void error_append_hint(struct error **errp, const char *fmt, ...)
{
    va_list ap;
    char *add;

    if (!errp || !*errp) {
        return;
    }
    va_start(ap, fmt);
    if (vasprintf(&add, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    if ((*errp)->hint) {
        char *h = xasprintf("%s\n%s", (*errp)->hint, add);
        free((*errp)->hint);
        free(add);
        add = h;
    }
    (*errp)->hint = add;
}

void error_set_class(struct error **errp, const char *cls)
{
    if (errp && *errp) {
        (*errp)->cls = cls;
    }
}

const char *error_class(const struct error *err)
{
    return err->cls ? err->cls : "GenericError";
}

void error_prefix(struct error **errp, const char *fmt, ...)
{
    va_list ap;
    char *pre, *msg;

    if (!errp || !*errp) {
        return;
    }
    va_start(ap, fmt);
    if (vasprintf(&pre, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    msg = xasprintf("%s%s", pre, (*errp)->msg);
    free(pre);
    free((*errp)->msg);
    (*errp)->msg = msg;
}

void error_replace_name(struct error *err, const char *from, const char *to)
{
    char *m, *at;

    if (!err || !(at = strstr(err->msg, from))) {
        return;
    }
    m = err->msg;
    err->msg = xasprintf("%.*s%s%s", (int)(at - m), m, to, at + strlen(from));
    free(m);
}

void error_propagate(struct error **dst, struct error *err)
{
    if (!err) {
        return;
    }
    if (dst && !*dst) {
        *dst = err;
    } else {
        error_free(err);
    }
}

void error_free(struct error *err)
{
    if (err) {
        free(err->msg);
        free(err->hint);
        free(err);
    }
}

void error_report_err(struct error *err)
{
    if (!err) {
        return;
    }
    fprintf(stderr, "%s: %s\n", error_progname, err->msg);
    if (err->hint) {
        fprintf(stderr, "%s\n", err->hint);
    }
    error_free(err);
}

void error_report(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", error_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
