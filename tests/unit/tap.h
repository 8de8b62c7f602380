/*
 * blockctl - a tiny TAP producer for the C unit tests
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef BLOCKCTL_TESTS_TAP_H
#define BLOCKCTL_TESTS_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_n, tap_failed;

static inline int tap_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;

    tap_n++;
    printf("%sok %d - ", cond ? "" : "not ", tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (!cond) {
        tap_failed++;
    }
    return cond;
}

#define ok(cond, ...) tap_ok(!!(cond), __VA_ARGS__)
#define is_int(a, b, ...)                                                          \
    do {                                                                           \
        long long _a = (long long)(a), _b = (long long)(b);                        \
        if (!tap_ok(_a == _b, __VA_ARGS__)) {                                      \
            printf("#   got %lld, expected %lld\n", _a, _b);                       \
        }                                                                          \
    } while (0)

static inline void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;

    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

static inline int tap_done(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}

#endif
