/*
 * blockctl - libFuzzer harness: repair an image, then write to it
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The input is an image file, written to a private temporary file (the
 * copy repair works on).  It is opened read-write as `check -r all` opens
 * it and repaired with CHECK_FIX_LEAKS | CHECK_FIX_ERRORS, then checked
 * again, closed, reopened read-write as a guest's disk and written to:
 * a data write, a zero write, a discard and (where the format has them) a
 * compressed write at offsets chosen from the input, then flushed.
 *
 * Repair and writes must never crash, hang or leak.  Beyond that:
 *  - when the check after repair reports the image clean (no corruption,
 *    no check error), every write that succeeded must read back as
 *    written; a mismatch aborts ("read-after-write mismatch");
 *  - FUZZ_STRICT_REPAIR=1 also aborts when repair leaves corruptions.
 *    QEMU cannot repair everything either (an L2 entry pointing past the
 *    end of the file stays a corruption after `qemu-img check -r all`),
 *    so this is off by default and its finds need comparing with qemu-img.
 *
 * Build and run: scripts/fuzz.sh (make fuzz; FUZZ_TARGETS=fuzz_repair).
 */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool strict_repair;
static uint8_t *pattern;
#define PATTERN_MAX ((size_t)1 << 17)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init("repair");
    atexit(fuzz_cleanup);
    strict_repair = getenv("FUZZ_STRICT_REPAIR") && atoi(getenv("FUZZ_STRICT_REPAIR"));
    pattern = malloc(PATTERN_MAX);
    if (!pattern) {
        abort();
    }
    return 0;
}

static uint64_t next(uint64_t *h)
{
    *h = *h * 6364136223846793005ull + 1442695040888963407ull;
    return *h >> 11;
}

static void mismatch(const char *what, uint64_t off, size_t len)
{
    fuzz_fail("read-after-write mismatch after %s at %llu+%zu on an image that "
              "checked clean", what, (unsigned long long)off, len);
}

/* Write, zero, discard and compress-write; verify when @verify. */
static void write_phase(struct bdev *bd, uint64_t h, bool verify)
{
    uint64_t size = bd->size;

    if (size == 0) {
        return;
    }
    for (int i = 0; i < 3; i++) {
        uint64_t off = next(&h) % size;
        size_t len = (size_t)MIN((uint64_t)(1 + next(&h) % PATTERN_MAX), size - off);
        memset(pattern, 0x40 + i, len);
        pattern[0] = (uint8_t)h;
        if (bdev_pwrite(bd, pattern, len, off, 0) == 0 && verify) {
            if (bdev_pread(bd, fuzz_buf, len, off) < 0 || memcmp(fuzz_buf, pattern, len)) {
                mismatch("write", off, len);
            }
        }
    }
    {
        uint64_t off = next(&h) % size;
        size_t len = (size_t)MIN((uint64_t)(1 + next(&h) % (1u << 20)), size - off);
        if (bdev_pwrite_zeroes(bd, off, len, (h & 1) ? BDEV_REQ_MAY_UNMAP : 0) == 0 && verify) {
            memset(pattern, 0, MIN(len, PATTERN_MAX));
            len = MIN(len, PATTERN_MAX);
            if (bdev_pread(bd, fuzz_buf, len, off) < 0 || memcmp(fuzz_buf, pattern, len)) {
                mismatch("write_zeroes", off, len);
            }
        }
    }
    {
        uint64_t off = next(&h) % size;
        (void)bdev_discard(bd, off, MIN(next(&h) % (1u << 20), size - off));
    }
    if (bd->drv->compress_granularity) {
        uint64_t g = bd->drv->compress_granularity(bd);
        if (g && g <= PATTERN_MAX) {
            uint64_t off = (next(&h) % size) / g * g;
            size_t len = (size_t)MIN(g, size - off);
            for (size_t j = 0; j < len; j++) {
                pattern[j] = (uint8_t)(j / 7);
            }
            if (bdev_pwrite_compressed(bd, pattern, len, off) == 0 && verify) {
                if (bdev_pread(bd, fuzz_buf, len, off) < 0 || memcmp(fuzz_buf, pattern, len)) {
                    mismatch("compressed write", off, len);
                }
            }
        }
    }
    (void)bdev_flush(bd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t h = fuzz_hash(data, size);
    struct check_result res, res2;
    bool clean = false;
    struct bdev *bd;

    fuzz_write_file(data, size);

    /* check -r all */
    bd = fuzz_open("qcow2", BDEV_O_RDWR | BDEV_O_NO_BACKING | BDEV_O_CHECK | BDEV_O_NO_BITMAPS);
    if (!bd) {
        return 0;
    }
    (void)fuzz_check(bd, CHECK_FIX_LEAKS | CHECK_FIX_ERRORS, &res);
    {
        /* as cmd/check.c: check again after repairing */
        int ret = fuzz_check(bd, 0, &res2);
        clean = ret == 0 && res2.corruptions == 0 && res2.check_errors == 0;
        if (strict_repair && ret == 0 && res2.corruptions) {
            fuzz_fail("repair left %lld corruptions", (long long)res2.corruptions);
        }
    }
    fuzz_close(bd);

    /* the repaired image as a guest's disk */
    bd = fuzz_open("qcow2", BDEV_O_RDWR | BDEV_O_NO_BACKING);
    if (!bd) {
        return 0;
    }
    write_phase(bd, h, clean);
    fuzz_walk_and_read(bd);
    fuzz_close(bd);
    return 0;
}
