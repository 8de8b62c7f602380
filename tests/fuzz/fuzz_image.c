/*
 * blockctl - libFuzzer harness: open an image and read, map, inspect and
 * check it read-only
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The input is an image file.  It is opened three ways, as the commands
 * open it: as qcow2 (`info -f qcow2`, `map`, `compare`), probed (no -f),
 * and as `check` opens it; whatever opens is read across its whole
 * virtual size (by extents, data only, at most 64 MiB), mapped with
 * block status, described with get_info and checked.  Nothing may crash,
 * hang, leak or allocate without bound (libFuzzer's -rss_limit_mb and
 * -malloc_limit_mb catch the last).
 *
 * Build and run: scripts/fuzz.sh (make fuzz).
 */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init("image");
    atexit(fuzz_cleanup);
    return 0;
}

static void exercise(struct bdev *bd, uint64_t h)
{
    struct check_result res;

    fuzz_info(bd);
    fuzz_walk_and_read(bd);
    fuzz_spot_reads(bd, h);
    fuzz_check(bd, 0, &res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t h = fuzz_hash(data, size);
    struct bdev *bd;
    bool is_qcow2;

    fuzz_write_file(data, size);

    /* qcow2, as `info -f qcow2 -u` / `map -f qcow2` open it */
    bd = fuzz_open("qcow2", BDEV_O_NO_BACKING);
    is_qcow2 = bd != NULL;
    if (bd) {
        exercise(bd, h);
        fuzz_close(bd);
    }

    /* probed, as a command without -f opens it */
    bd = fuzz_open(NULL, BDEV_O_NO_BACKING);
    if (bd) {
        /* A raw image is trivial: only map it and read its head. */
        if (strcmp(bd->drv->name, "raw") == 0) {
            fuzz_walk_and_read(bd);
        } else if (!is_qcow2) {
            exercise(bd, h);
        }
        fuzz_close(bd);
    }

    /* as `check` opens it: tolerant, no bitmaps loaded */
    bd = fuzz_open("qcow2", BDEV_O_NO_BACKING | BDEV_O_CHECK | BDEV_O_NO_BITMAPS);
    if (bd) {
        struct check_result res;
        fuzz_check(bd, 0, &res);
        fuzz_walk_and_read(bd);
        fuzz_close(bd);
    }
    return 0;
}
