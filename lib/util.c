/*
 * blockctl - allocation and small helpers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void ATTRIBUTE_NORETURN oom(size_t n)
{
    fprintf(stderr, "blockctl: out of memory (allocating %zu bytes)\n", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        oom(n);
    }
    return p;
}

void *xzalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        oom(n);
    }
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        oom(n * size);
    }
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        oom(n);
    }
    return p;
}

char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) {
        oom(strlen(s));
    }
    return p;
}

char *xstrndup(const char *s, size_t n)
{
    char *p = strndup(s, n);
    if (!p) {
        oom(n);
    }
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0) {
        oom(0);
    }
    va_end(ap);
    return s;
}

void *xmemalign(size_t align, size_t n)
{
    void *p;

    if (posix_memalign(&p, align, n ? n : 1) != 0) {
        oom(n);
    }
    return p;
}

void bug_at(const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "blockctl: BUG at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

bool buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t i;

    /* Check the head byte-wise, then compare the buffer against itself
     * shifted by 16 bytes: memcmp is vectorised by glibc. */
    for (i = 0; i < len && i < 16; i++) {
        if (p[i]) {
            return false;
        }
    }
    if (len <= 16) {
        return true;
    }
    return memcmp(p, p + 16, len - 16) == 0;
}
