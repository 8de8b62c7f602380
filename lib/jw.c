/*
 * blockctl - output-only JSON writer
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/jw.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

static void put(struct jw *w, const char *s, size_t n)
{
    if (w->len + n + 1 > w->cap) {
        w->cap = MAX(w->cap * 2, w->len + n + 64);
        w->buf = xrealloc(w->buf, w->cap);
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = '\0';
}

static void puts_(struct jw *w, const char *s)
{
    put(w, s, strlen(s));
}

static void putf(struct jw *w, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
static void putf(struct jw *w, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    put(w, tmp, (size_t)n);
}

void jw_init(struct jw *w, bool pretty)
{
    memset(w, 0, sizeof(*w));
    w->pretty = pretty;
    put(w, "", 0);
}

void jw_free(struct jw *w)
{
    free(w->buf);
    memset(w, 0, sizeof(*w));
}

static void newline(struct jw *w, int depth)
{
    if (!w->pretty) {
        return;
    }
    put(w, "\n", 1);
    for (int i = 0; i < depth; i++) {
        put(w, "    ", 4);
    }
}

/* Separator and indentation before a value (or a key). */
static void before_item(struct jw *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0) {
        if (!w->first[w->depth]) {
            put(w, w->pretty ? "," : ", ", w->pretty ? 1 : 2);
        }
        w->first[w->depth] = false;
        newline(w, w->depth);
    }
}

static void open_(struct jw *w, char c)
{
    before_item(w);
    put(w, &c, 1);
    assert(w->depth + 1 < JW_MAX_DEPTH);
    w->depth++;
    w->first[w->depth] = true;
}

static void close_(struct jw *w, char c)
{
    assert(w->depth > 0);
    w->depth--;
    newline(w, w->depth);
    put(w, &c, 1);
}

void jw_object_begin(struct jw *w)
{
    open_(w, '{');
}

void jw_object_end(struct jw *w)
{
    close_(w, '}');
}

void jw_array_begin(struct jw *w)
{
    open_(w, '[');
}

void jw_array_end(struct jw *w)
{
    close_(w, ']');
}

/*
 * Decode the UTF-8 sequence at @p (its first byte >= 0x80): the code point,
 * or -1 for an invalid sequence; *end is set past the bytes it used (an
 * invalid sequence uses its valid beginning, at least one byte).
 */
static long utf8_next(const unsigned char *p, const unsigned char **end)
{
    unsigned n;
    long cp, min;

    if (*p >= 0xc0 && *p < 0xe0) {
        n = 1, cp = *p & 0x1f, min = 0x80;
    } else if (*p >= 0xe0 && *p < 0xf0) {
        n = 2, cp = *p & 0x0f, min = 0x800;
    } else if (*p >= 0xf0 && *p < 0xf8) {
        n = 3, cp = *p & 0x07, min = 0x10000;
    } else {
        *end = p + 1;
        return -1;
    }
    for (unsigned i = 1; i <= n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            *end = p + i;
            return -1;
        }
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    *end = p + n + 1;
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return -1;
    }
    return cp;
}

static void escaped(struct jw *w, const char *s)
{
    put(w, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': puts_(w, "\\\""); break;
        case '\\': puts_(w, "\\\\"); break;
        case '\n': puts_(w, "\\n"); break;
        case '\r': puts_(w, "\\r"); break;
        case '\t': puts_(w, "\\t"); break;
        case '\b': puts_(w, "\\b"); break;
        case '\f': puts_(w, "\\f"); break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                putf(w, "\\u%04X", *p);
            } else if (*p < 0x80) {
                put(w, (const char *)p, 1);
            } else {
                /* as QEMU: non-ASCII as \uXXXX (UTF-16), invalid UTF-8 as U+FFFD */
                const unsigned char *end;
                long cp = utf8_next(p, &end);
                if (cp < 0) {
                    puts_(w, "\\uFFFD");
                } else if (cp > 0xffff) {
                    cp -= 0x10000;
                    putf(w, "\\u%04lX\\u%04lX", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
                } else {
                    putf(w, "\\u%04lX", cp);
                }
                p = end - 1;
            }
        }
    }
    put(w, "\"", 1);
}

void jw_key(struct jw *w, const char *key)
{
    before_item(w);
    escaped(w, key);
    put(w, ": ", 2);
    w->after_key = true;
}

void jw_string(struct jw *w, const char *s)
{
    before_item(w);
    escaped(w, s);
}

void jw_int(struct jw *w, int64_t v)
{
    before_item(w);
    putf(w, "%" PRId64, v);
}

void jw_uint(struct jw *w, uint64_t v)
{
    before_item(w);
    putf(w, "%" PRIu64, v);
}

void jw_bool(struct jw *w, bool v)
{
    before_item(w);
    puts_(w, v ? "true" : "false");
}

void jw_null(struct jw *w)
{
    before_item(w);
    puts_(w, "null");
}

void jw_kv_string(struct jw *w, const char *key, const char *s)
{
    jw_key(w, key);
    jw_string(w, s);
}

void jw_kv_int(struct jw *w, const char *key, int64_t v)
{
    jw_key(w, key);
    jw_int(w, v);
}

void jw_kv_uint(struct jw *w, const char *key, uint64_t v)
{
    jw_key(w, key);
    jw_uint(w, v);
}

void jw_kv_bool(struct jw *w, const char *key, bool v)
{
    jw_key(w, key);
    jw_bool(w, v);
}

const char *jw_text(struct jw *w)
{
    return w->buf;
}

void jw_print_string(FILE *out, const char *s)
{
    struct jw w;

    jw_init(&w, false);
    escaped(&w, s);
    fputs(w.buf, out);
    jw_free(&w);
}
