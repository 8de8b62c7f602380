/*
 * blockctl - error objects (QEMU's Error ** convention)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Rules: @errp is the last parameter and may be NULL; a function never
 * touches *errp on success and always also returns a failure indicator
 * (< 0, NULL or false).  The callee detects, the caller decides: only
 * cmd/ prints errors and chooses exit codes.
 */
#ifndef BLOCKCTL_LIB_ERROR_H
#define BLOCKCTL_LIB_ERROR_H

#include "lib/compiler.h"

struct error {
    int errnum;     /* positive errno value, or 0 */
    char *msg;      /* one line, no trailing newline */
    char *hint;     /* optional further line(s), or NULL */
    const char *cls; /* QMP error class (a static string), NULL: GenericError */
};

/* Set *errp to a new error (if errp is non-NULL and *errp is NULL). */
void error_setg(struct error **errp, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
/* As error_setg, appending ": strerror(errnum)"; @errnum is positive. */
void error_setg_errno(struct error **errp, int errnum, const char *fmt, ...)
    ATTRIBUTE_PRINTF(3, 4);
/* Add a hint line to an already set error. */
void error_append_hint(struct error **errp, const char *fmt, ...)
    ATTRIBUTE_PRINTF(2, 3);
/* Give the error in *errp (if set) a QMP error class, e.g. "DeviceNotFound". */
void error_set_class(struct error **errp, const char *cls);
/* The QMP error class of @err ("GenericError" unless set). */
const char *error_class(const struct error *err);
/* Prefix the message of *errp (if set) with the formatted text. */
void error_prefix(struct error **errp, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
/* In the message of @err (if any), write @to where it says @from (once). */
void error_replace_name(struct error *err, const char *from, const char *to);
/* Move @err into *dst (freeing it if *dst is already set or dst is NULL). */
void error_propagate(struct error **dst, struct error *err);
/* Print "blockctl: msg" (and the hint) on stderr, then free @err. */
void error_report_err(struct error *err);
/* Print a formatted "blockctl: ..." line on stderr. */
void error_report(const char *fmt, ...) ATTRIBUTE_PRINTF(1, 2);
void error_free(struct error *err);

/* Name used in error_report's prefix (set by main). */
extern const char *error_progname;

#endif
