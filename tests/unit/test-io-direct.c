/*
 * blockctl - unit tests of lib/io.c's cache modes: O_DIRECT requests of
 * any alignment (bounced through an aligned buffer, partial blocks read,
 * changed and written whole, the file's end kept), and concurrent
 * unaligned writes into one block losing nothing
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The file lives in $TMPDIR (default /tmp), which must accept O_DIRECT;
 * the tests are skipped where it does not.
 */
#include "lib/compiler.h"
#include "lib/io.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/tap.h"

static char path[4096];

static int64_t file_size(int fd)
{
    struct stat st;

    return fstat(fd, &st) < 0 ? -1 : st.st_size;
}

/* The model: what the file should hold, written with plain I/O. */
static uint8_t model[3 << 16];
static size_t model_len;

static void model_write(const uint8_t *buf, size_t len, uint64_t off)
{
    memcpy(model + off, buf, len);
    model_len = MAX(model_len, off + len);
}

static bool file_matches(int fd)
{
    int rfd = open(path, O_RDONLY);
    uint8_t *got = xmalloc(sizeof(model));
    ssize_t n;
    bool same;

    (void)fd;
    n = pread(rfd, got, sizeof(model), 0);
    close(rfd);
    same = n == (ssize_t)model_len && !memcmp(got, model, model_len);
    free(got);
    return same;
}

static void test_unaligned(int fd)
{
    /* offset, length, pattern */
    static const struct { uint64_t off; size_t len; } w[] = {
        { 0, 104 },           /* a header-sized write at 0 */
        { 4096, 8192 },       /* aligned */
        { 4000, 200 },        /* across a block boundary */
        { 12289, 7 },         /* past the end, unaligned: the end is 12296 */
        { 70000, 1000 },      /* far past the end, in a new window */
        { 1, 65536 * 2 },     /* longer than nothing aligns */
    };
    uint8_t *buf = xmalloc(65536 * 2 + 8);

    for (size_t i = 0; i < ARRAY_SIZE(w); i++) {
        int r;

        for (size_t j = 0; j < w[i].len; j++) {
            buf[j + 1] = (uint8_t)(i * 31 + j * 7 + 1);
        }
        /* buf + 1: an unaligned buffer too */
        r = io_pwrite(fd, buf + 1, w[i].len, w[i].off);
        model_write(buf + 1, w[i].len, w[i].off);
        ok(r == 0, "pwrite of %zu at %" PRIu64 ": %d", w[i].len, w[i].off, r);
        ok(file_size(fd) == (int64_t)model_len, "the file ends at %zu: %" PRId64, model_len,
           file_size(fd));
        ok(file_matches(fd), "the file holds what was written (write %zu)", i);
    }
    /* unaligned reads, one across the end of the file */
    {
        uint64_t offs[] = { 3, 4095, 12290, model_len - 10 };
        for (size_t i = 0; i < ARRAY_SIZE(offs); i++) {
            ssize_t n = io_pread(fd, buf + 1, 100, offs[i]);
            size_t want = MIN((size_t)100, model_len - (size_t)offs[i]);
            ok(n == (ssize_t)want && !memcmp(buf + 1, model + offs[i], want),
               "pread of 100 at %" PRIu64 ": %zd (want %zu)", offs[i], n, want);
        }
    }
    free(buf);
}

struct writer {
    int fd;
    unsigned idx;
    int ret;
};

/* 64 writers of 8 bytes each into the same 512 bytes, 200 times */
static void *writer_main(void *opaque)
{
    struct writer *w = opaque;
    uint8_t b[8];

    w->ret = 0;
    for (int round = 0; round < 200 && !w->ret; round++) {
        memset(b, (int)(w->idx + round) & 0xff, sizeof(b));
        w->ret = io_pwrite(w->fd, b, sizeof(b), 8 * w->idx);
    }
    return NULL;
}

static void test_concurrent(int fd)
{
    struct writer w[64];
    pthread_t t[64];
    uint8_t got[512];
    bool all = true;

    for (unsigned i = 0; i < 64; i++) {
        w[i].fd = fd;
        w[i].idx = i;
        pthread_create(&t[i], NULL, writer_main, &w[i]);
    }
    for (unsigned i = 0; i < 64; i++) {
        pthread_join(t[i], NULL);
        all = all && w[i].ret == 0;
    }
    ok(all, "concurrent unaligned writes succeed");
    ok(io_pread(fd, got, sizeof(got), 0) == sizeof(got), "read back");
    for (unsigned i = 0; i < 64; i++) {
        for (unsigned j = 0; j < 8; j++) {
            all = all && got[8 * i + j] == (uint8_t)(i + 199);
        }
    }
    ok(all, "every writer's last write is there (none was lost to another's "
       "read-modify-write)");
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    int fd, r;

    snprintf(path, sizeof(path), "%s/blockctl-io-direct-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    fd = mkstemp(path);
    if (fd < 0) {
        printf("1..0 # SKIP cannot create a temporary file\n");
        return 0;
    }
    close(fd);
    fd = io_open(path, O_RDWR, 0);
    r = io_set_cache(fd, IO_CACHE_DIRECT);
    if (r == -EINVAL) {
        printf("1..0 # SKIP %s does not accept O_DIRECT\n", path);
        io_close(fd);
        unlink(path);
        return 0;
    }
    ok(r == 0, "O_DIRECT on: %d", r);
    ok(io_align(fd) >= 512 && !(io_align(fd) & (io_align(fd) - 1)),
       "the alignment is a power of two of at least 512: %zu", io_align(fd));
    ok((fcntl(fd, F_GETFL) & O_DIRECT) != 0, "the descriptor has O_DIRECT");
    test_unaligned(fd);
    test_concurrent(fd);
    io_close(fd);
    unlink(path);
    return tap_done();
}
