/*
 * blockctl - shared helpers of the libFuzzer harnesses
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Each harness writes the fuzz input to one temporary file (in /dev/shm
 * when it exists, reused for the whole process) and opens it through the
 * block layer exactly as the commands do.  The drivers print diagnostics on
 * stderr (check, warnings); the init function sends stderr to /dev/null
 * unless FUZZ_VERBOSE is set, while keeping a duplicate of the original
 * stderr for the sanitizers' reports.
 */
#ifndef BLOCKCTL_TESTS_FUZZ_COMMON_H
#define BLOCKCTL_TESTS_FUZZ_COMMON_H

#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Virtual bytes read per input at most: keeps huge images fast. */
#define FUZZ_READ_CAP ((uint64_t)64 << 20)
/* Bytes per bdev_pread() call */
#define FUZZ_CHUNK ((size_t)1 << 20)
/* Block status calls per walk at most (a walk this long is reported). */
#define FUZZ_MAX_EXTENTS (1u << 22)

static char fuzz_path[128];
static uint8_t *fuzz_buf;

/* libFuzzer's own output must stay visible: it writes to fd 2 as well, so
 * route everything the library prints through stdio's stderr instead. */
static void fuzz_init(const char *tag)
{
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

    snprintf(fuzz_path, sizeof(fuzz_path), "%s/blockctl-%s-%ld.img", dir, tag, (long)getpid());
    fuzz_buf = malloc(FUZZ_CHUNK);
    if (!fuzz_buf) {
        abort();
    }
    if (!getenv("FUZZ_VERBOSE")) {
        /*
         * libFuzzer and the sanitizers report on fd 2; the library only
         * uses the stdio stream.  Point the stream at /dev/null and leave
         * fd 2 alone so crash reports still reach the log.
         */
        FILE *null = fopen("/dev/null", "w");
        if (null) {
            stderr = null;
        }
    }
    error_progname = "blockctl-fuzz";
}

/* Report a broken invariant on fd 2 (stderr the stream is /dev/null) and
 * abort, so that libFuzzer keeps the input. */
static void fuzz_fail(const char *fmt, ...) ATTRIBUTE_PRINTF(1, 2);
static void fuzz_fail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    dprintf(2, "fuzz: ");
    vdprintf(2, fmt, ap);
    dprintf(2, "\n");
    va_end(ap);
    abort();
}

static void fuzz_cleanup(void)
{
    unlink(fuzz_path);
}

/* Write @data to the temporary image (truncating the previous input). */
static int fuzz_write_file(const uint8_t *data, size_t size)
{
    int fd = open(fuzz_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t done = 0;

    if (fd < 0) {
        abort();
    }
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            abort();
        }
        done += n;
    }
    close(fd);
    return 0;
}

/* A cheap hash of the input, to pick offsets deterministically. */
static uint64_t fuzz_hash(const uint8_t *data, size_t size)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < size; i += 1 + size / 4096) {
        h = (h ^ data[i]) * 0x100000001b3ull;
    }
    return h ^ size;
}

/*
 * Walk the whole image by extents with bdev_block_status_above(), reading
 * the extents that hold data (up to FUZZ_READ_CAP bytes in all).
 */
static void fuzz_walk_and_read(struct bdev *bd)
{
    uint64_t off = 0, read_total = 0;
    unsigned extents = 0;

    while (off < bd->size) {
        struct bdev_map m;
        int ret = bdev_block_status_above(bd, NULL, off, bd->size - off, &m);

        if (ret < 0) {
            return;
        }
        /* The block layer promises progress and no overrun. */
        if (m.len == 0 || m.len > bd->size - off) {
            fuzz_fail("block status returned length %llu at %llu (size %llu)",
                      (unsigned long long)m.len, (unsigned long long)off,
                      (unsigned long long)bd->size);
        }
        if (!(m.status & BDEV_BLOCK_ZERO) || (m.status & BDEV_BLOCK_DATA)) {
            uint64_t pos = off, end = off + m.len;
            while (pos < end && read_total < FUZZ_READ_CAP) {
                size_t n = (size_t)MIN((uint64_t)FUZZ_CHUNK, end - pos);
                n = (size_t)MIN((uint64_t)n, FUZZ_READ_CAP - read_total);
                if (bdev_pread(bd, fuzz_buf, n, pos) < 0) {
                    break;
                }
                pos += n;
                read_total += n;
            }
        }
        off += m.len;
        if (++extents >= FUZZ_MAX_EXTENTS) {
            return;
        }
    }
}

/* A few unaligned reads at places chosen from the input, holes included. */
static void fuzz_spot_reads(struct bdev *bd, uint64_t h)
{
    if (!bd->size) {
        return;
    }
    for (int i = 0; i < 4; i++) {
        uint64_t off = h % bd->size;
        size_t len = (size_t)MIN((uint64_t)(1 + (h >> 40) % 70000), bd->size - off);
        (void)bdev_pread(bd, fuzz_buf, MIN(len, FUZZ_CHUNK), off);
        h = h * 6364136223846793005ull + 1442695040888963407ull;
    }
    /* the last bytes of the disk */
    (void)bdev_pread(bd, fuzz_buf, (size_t)MIN((uint64_t)4096, bd->size),
                     bd->size - MIN((uint64_t)4096, bd->size));
}

static void fuzz_info(struct bdev *bd)
{
    struct image_info info;
    struct error *err = NULL;

    if (bdev_get_info(bd, &info, &err) == 0) {
        image_info_free(&info);
    }
    error_free(err);
}

static int fuzz_check(struct bdev *bd, unsigned fix, struct check_result *res)
{
    struct error *err = NULL;
    int ret = -ENOTSUP;

    memset(res, 0, sizeof(*res));
    if (bd->drv->check) {
        ret = bd->drv->check(bd, res, fix, &err);
    }
    error_free(err);
    return ret;
}

static struct bdev *fuzz_open(const char *fmt, unsigned flags)
{
    struct error *err = NULL;
    struct bdev *bd = bdev_open(fuzz_path, fmt, flags, &err);

    error_free(err);
    return bd;
}

static void fuzz_close(struct bdev *bd)
{
    struct error *err = NULL;

    bdev_close(bd, &err);
    error_free(err);
}

#endif
