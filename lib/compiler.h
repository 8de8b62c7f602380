/*
 * blockctl - common compiler helpers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef BLOCKCTL_LIB_COMPILER_H
#define BLOCKCTL_LIB_COMPILER_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#ifdef NDEBUG
#error building with NDEBUG is not supported: blockctl relies on its asserts
#endif

#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
/* Power-of-two alignment helpers; @a must be a power of two. */
#define ALIGN_DOWN(n, a) ((n) & ~((__typeof__(n))(a) - 1))
#define ALIGN_UP(n, a) ALIGN_DOWN((n) + (a) - 1, (a))
#define IS_ALIGNED(n, a) (((n) & ((__typeof__(n))(a) - 1)) == 0)
#define IS_POWER_OF_2(n) ((n) != 0 && ((n) & ((n) - 1)) == 0)

#define ATTRIBUTE_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define ATTRIBUTE_NORETURN __attribute__((noreturn))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

static inline void cleanup_free(void *p)
{
    free(*(void **)p);
}
static inline void cleanup_close(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
    }
}
#define CLEANUP_FREE __attribute__((cleanup(cleanup_free)))
#define CLEANUP_CLOSE __attribute__((cleanup(cleanup_close)))

/* Abort on allocation failure: blockctl never limps on without memory. */
void *xmalloc(size_t n);
void *xzalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) ATTRIBUTE_PRINTF(1, 2);
/* Aligned buffer for O_DIRECT-safe I/O; free with free(). */
void *xmemalign(size_t align, size_t n);

#define BUG(...) bug_at(__FILE__, __LINE__, __VA_ARGS__)
void bug_at(const char *file, int line, const char *fmt, ...)
    ATTRIBUTE_PRINTF(3, 4) ATTRIBUTE_NORETURN;

/* Big-endian accessors for on-disk structures (never cast to packed). */
#include <endian.h>
#include <string.h>
static inline uint16_t get_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return be16toh(v);
}
static inline uint32_t get_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}
static inline uint64_t get_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}
static inline void put_be16(void *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, 2);
}
static inline void put_be32(void *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, 4);
}
static inline void put_be64(void *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, 8);
}

/* True if @len bytes at @buf are all zero. */
bool buffer_is_zero(const void *buf, size_t len);

#endif
