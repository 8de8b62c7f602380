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

/* Run a shell command (printf-style); its exit status, or -1. */
static inline int tap_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static inline int tap_sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    st = system(cmd);
    return st != -1 && (st & 0x7f) == 0 ? (st >> 8) & 0xff : -1;
}

/*
 * For tests that use qemu-img: a new folder under $TMPDIR (or /tmp) in
 * @buf; 1 after printing the plan of a skip when qemu-img is missing, -1
 * on an error, else 0.
 */
static inline int tap_qemu_tmpdir(char *buf, size_t n) __attribute__((unused));
static inline int tap_qemu_tmpdir(char *buf, size_t n)
{
    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        printf("1..0 # SKIP qemu-img not installed\n");
        return 1;
    }
    snprintf(buf, n, "%s/blockctl-unit-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

#endif
