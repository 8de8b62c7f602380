/*
 * blockctl - output-only JSON writer
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Pretty-prints as qemu-img does (4-space indentation, "key": value,
 * empty containers as "[\n<indent>]"), or compactly on one line.  The
 * caller keeps keys and values paired; jw checks the nesting with asserts.
 */
#ifndef BLOCKCTL_LIB_JW_H
#define BLOCKCTL_LIB_JW_H

#include "lib/compiler.h"

#include <stdio.h>

#define JW_MAX_DEPTH 32

struct jw {
    char *buf;
    size_t len, cap;
    bool pretty;
    int depth;
    bool first[JW_MAX_DEPTH];
    bool after_key;
};

void jw_init(struct jw *w, bool pretty);
void jw_free(struct jw *w);
void jw_object_begin(struct jw *w);
void jw_object_end(struct jw *w);
void jw_array_begin(struct jw *w);
void jw_array_end(struct jw *w);
/* Next value is the member @key of the current object. */
void jw_key(struct jw *w, const char *key);
void jw_string(struct jw *w, const char *s);
void jw_int(struct jw *w, int64_t v);
void jw_uint(struct jw *w, uint64_t v);
void jw_bool(struct jw *w, bool v);
void jw_null(struct jw *w);
/* Convenience: key + value */
void jw_kv_string(struct jw *w, const char *key, const char *s);
void jw_kv_int(struct jw *w, const char *key, int64_t v);
void jw_kv_uint(struct jw *w, const char *key, uint64_t v);
void jw_kv_bool(struct jw *w, const char *key, bool v);
/* The text so far (NUL-terminated). */
const char *jw_text(struct jw *w);
/* Append a JSON string literal for @s (quoted, escaped) to @out. */
void jw_print_string(FILE *out, const char *s);

#endif
