/*
 * blockctl - writes through the qcow2 driver, checked by qemu-img
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * For each image variant: random writes, zero writes (with and without
 * unmap), discards and compressed writes, with reopens in between, mirrored
 * into a reference buffer; then `qemu-img check` must be clean and
 * `qemu-img compare` must find the image equal to the reference.
 */
#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/io.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/unit/tap.h"

static char tmpdir[256];
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void write_ref(const char *path, const uint8_t *ref, uint64_t size)
{
    FILE *f = fopen(path, "w");
    fwrite(ref, 1, size, f);
    fclose(f);
}

struct variant {
    const char *name;
    const char *opts;        /* qemu-img create -o */
    uint64_t size;
    bool backing;            /* on top of a qcow2 base with data */
    bool snapshot;           /* an internal snapshot exists before the writes */
    bool compressed;
    int rounds;
};

static int run_variant(const struct variant *v)
{
    char img[512], base[512], refp[512];
    struct error *err = NULL;
    struct bdev *bd;
    uint8_t *ref = xzalloc(v->size);
    uint8_t *buf = xmalloc(4 << 20);
    uint64_t cs = 65536;
    const char *p;
    int ret;

    if ((p = strstr(v->opts, "cluster_size="))) {
        char *end;
        cs = strtoull(p + 13, &end, 0);
        if (*end == 'k' || *end == 'K') {
            cs <<= 10;
        } else if (*end == 'm' || *end == 'M') {
            cs <<= 20;
        }
    }
    snprintf(img, sizeof(img), "%s/%s.qcow2", tmpdir, v->name);
    snprintf(base, sizeof(base), "%s/%s-base.qcow2", tmpdir, v->name);
    snprintf(refp, sizeof(refp), "%s/%s.raw", tmpdir, v->name);
    if (v->backing) {
        tap_sh("qemu-img create -q -f qcow2 %s %" PRIu64 " && qemu-io -c 'write -P 0x5a 0 %"
           PRIu64 "' -c 'write -z 1M 1M' %s >/dev/null", base, v->size, v->size / 2, base);
        memset(ref, 0x5a, v->size / 2);
        memset(ref + (1 << 20), 0, 1 << 20);
        ret = tap_sh("qemu-img create -q -f qcow2 -o %s -b %s -F qcow2 %s", v->opts, base, img);
    } else {
        ret = tap_sh("qemu-img create -q -f qcow2 -o %s %s %" PRIu64, v->opts, img, v->size);
    }
    if (ret) {
        return ok(0, "%s: create", v->name);
    }
    if (v->snapshot) {
        tap_sh("qemu-io -c 'write -P 0x33 0 3M' %s >/dev/null && qemu-img snapshot -c s1 %s", img,
           img);
        memset(ref, 0x33, 3 << 20);
    }

    for (int round = 0; round < v->rounds; round++) {
        bd = bdev_open(img, "qcow2", BDEV_O_RDWR, &err);
        if (!bd) {
            ok(0, "%s: open: %s", v->name, err->msg);
            error_free(err);
            return 1;
        }
        for (int op = 0; op < 40; op++) {
            uint64_t r = rnd() % 100;
            uint64_t off = rnd() % v->size;
            uint64_t len = 1 + rnd() % MIN((uint64_t)(4 << 20), v->size - off);

            if (r < 5) {
                /* small unaligned write */
                len = 1 + rnd() % 1000;
                len = MIN(len, v->size - off);
            }
            if (r < 55) {
                for (uint64_t i = 0; i < len; i++) {
                    buf[i] = (uint8_t)(op * 7 + round * 13 + (i >> 9));
                }
                ret = bdev_pwrite(bd, buf, len, off, 0);
                memcpy(ref + off, buf, len);
            } else if (r < 75) {
                unsigned fl = (rnd() & 1) ? BDEV_REQ_MAY_UNMAP : 0;
                ret = bdev_pwrite_zeroes(bd, off, len, fl);
                memset(ref + off, 0, len);
            } else if (r < 85) {
                ret = bdev_discard(bd, off, len);
                /* discard may or may not drop: read back what it left */
                if (ret == 0) {
                    uint8_t *tmp = xmalloc(len);
                    ret = bdev_pread(bd, tmp, len, off);
                    /* whole clusters inside must read zero (v3) or backing (v2) */
                    memcpy(ref + off, tmp, len);
                    free(tmp);
                }
            } else if (r < 95 && v->compressed) {
                off = ALIGN_DOWN(off, cs);
                len = MIN(cs, v->size - off);
                for (uint64_t i = 0; i < len; i++) {
                    buf[i] = (uint8_t)((i / 700) + op);
                }
                ret = bdev_pwrite_compressed(bd, buf, len, off);
                memcpy(ref + off, buf, len);
            } else {
                ret = bdev_flush(bd);
            }
            if (ret < 0) {
                ok(0, "%s: op %d (kind %" PRIu64 ") off %" PRIu64 " len %" PRIu64 ": %s",
                   v->name, op, r, off, len, strerror(-ret));
                bdev_unref(bd);
                return 1;
            }
            if (op % 10 == 9) {
                /* read back a random range through the driver */
                uint64_t o2 = rnd() % v->size;
                uint64_t l2 = 1 + rnd() % MIN((uint64_t)(4 << 20), v->size - o2);
                ret = bdev_pread(bd, buf, l2, o2);
                if (ret < 0 || memcmp(buf, ref + o2, l2)) {
                    ok(0, "%s: read back %" PRIu64 "+%" PRIu64, v->name, o2, l2);
                    bdev_unref(bd);
                    return 1;
                }
            }
        }
        if (bdev_close(bd, &err) < 0) {
            ok(0, "%s: close: %s", v->name, err->msg);
            error_free(err);
            return 1;
        }
    }
    write_ref(refp, ref, v->size);
    ok(tap_sh("qemu-img check -q %s", img) == 0, "%s: qemu-img check is clean", v->name);
    ok(tap_sh("qemu-img compare -q -f raw -F qcow2 %s %s", refp, img) == 0,
       "%s: qemu-img compare equals the reference", v->name);
    free(ref);
    free(buf);
    return 0;
}

/*
 * Several threads write to one image at once, each to its own clusters
 * (interleaved, so they share L2 tables and refcount blocks and allocate
 * side by side), with zero writes and discards mixed in.
 */
struct thr {
    struct bdev *bd;
    uint8_t *ref;
    uint64_t size, cs;
    unsigned id, n;
    uint64_t seed;
    int ret;
};

static void *thr_main(void *opaque)
{
    struct thr *t = opaque;
    uint64_t nclusters = t->size / t->cs;
    uint8_t *buf = xmalloc(t->cs);

    for (int op = 0; op < 400 && t->ret == 0; op++) {
        uint64_t c, r;
        t->seed = t->seed * 6364136223846793005ULL + 1442695040888963407ULL;
        r = t->seed >> 33;
        c = (r % (nclusters / t->n)) * t->n + t->id;
        if (r % 7 == 0) {
            t->ret = bdev_pwrite_zeroes(t->bd, c * t->cs, t->cs, (r & 8) ? BDEV_REQ_MAY_UNMAP : 0);
            memset(t->ref + c * t->cs, 0, t->cs);
        } else if (r % 11 == 0) {
            t->ret = bdev_discard(t->bd, c * t->cs, t->cs);
            memset(t->ref + c * t->cs, 0, t->cs);
        } else {
            uint64_t off = (r >> 8) % t->cs, len = 1 + (r >> 20) % (t->cs - off);
            memset(buf, (int)(op + t->id * 50), len);
            t->ret = bdev_pwrite(t->bd, buf, len, c * t->cs + off, 0);
            memcpy(t->ref + c * t->cs + off, buf, len);
        }
    }
    free(buf);
    return NULL;
}

static void run_threads(const char *name, const char *opts, uint64_t cs)
{
    char img[512], refp[512];
    uint64_t size = 16 << 20;
    uint8_t *ref = xzalloc(size);
    struct thr t[4];
    pthread_t th[4];
    struct error *err = NULL;
    struct bdev *bd;
    bool good = true;

    snprintf(img, sizeof(img), "%s/%s.qcow2", tmpdir, name);
    snprintf(refp, sizeof(refp), "%s/%s.raw", tmpdir, name);
    if (tap_sh("qemu-img create -q -f qcow2 -o %s %s %" PRIu64, opts, img, size)) {
        ok(0, "%s: create", name);
        return;
    }
    bd = bdev_open(img, "qcow2", BDEV_O_RDWR, &err);
    if (!bd) {
        ok(0, "%s: open: %s", name, err->msg);
        error_free(err);
        return;
    }
    for (unsigned i = 0; i < 4; i++) {
        t[i] = (struct thr){ .bd = bd, .ref = ref, .size = size, .cs = cs, .id = i, .n = 4,
                             .seed = rng + i };
        pthread_create(&th[i], NULL, thr_main, &t[i]);
    }
    for (unsigned i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        good = good && t[i].ret == 0;
    }
    ok(good, "%s: four threads wrote without errors", name);
    ok(bdev_close(bd, &err) == 0, "%s: close", name);
    write_ref(refp, ref, size);
    ok(tap_sh("qemu-img check -q %s", img) == 0, "%s: qemu-img check is clean", name);
    ok(tap_sh("qemu-img compare -q -f raw -F qcow2 %s %s", refp, img) == 0,
       "%s: qemu-img compare equals the reference", name);
    free(ref);
}

int main(void)
{
    static const struct variant variants[] = {
        { "default", "cluster_size=64k", 32 << 20, false, false, true, 3 },
        { "c512", "cluster_size=512", 8 << 20, false, false, true, 2 },
        { "c4k", "cluster_size=4k", 16 << 20, false, false, true, 2 },
        { "c2m", "cluster_size=2M", 32 << 20, false, false, true, 2 },
        { "extl2", "extended_l2=on", 32 << 20, false, false, true, 3 },
        { "extl2-16k", "extended_l2=on,cluster_size=16k", 16 << 20, true, false, false, 2 },
        { "rc1", "refcount_bits=1", 16 << 20, false, false, true, 2 },
        { "rc64-growth", "refcount_bits=64,cluster_size=512", 8 << 20, false, false, false, 2 },
        { "v2", "compat=0.10", 16 << 20, false, false, true, 2 },
        { "v2-backing", "compat=0.10", 16 << 20, true, false, false, 2 },
        { "lazy", "lazy_refcounts=on", 16 << 20, false, false, true, 2 },
        { "zstd", "compression_type=zstd", 16 << 20, false, false, true, 2 },
        { "backing", "cluster_size=64k", 16 << 20, true, false, true, 2 },
        { "snapshot", "cluster_size=64k", 16 << 20, false, true, true, 2 },
        { "extl2-snap", "extended_l2=on", 16 << 20, true, true, false, 2 },
    };

    uint64_t seed = getenv("SEED") ? strtoull(getenv("SEED"), NULL, 0) : 0;

    switch (tap_qemu_tmpdir(tmpdir, sizeof(tmpdir))) {
    case 1:
        return 0;
    case -1:
        return 1;
    }
    for (size_t i = 0; i < ARRAY_SIZE(variants); i++) {
        if (getenv("VARIANT") && strcmp(getenv("VARIANT"), variants[i].name)) {
            continue;
        }
        rng = 0x9e3779b97f4a7c15ULL * (i + 1) + seed;
        run_variant(&variants[i]);
    }
    if (!getenv("VARIANT")) {
        rng = 0x1234567 + seed;
        run_threads("threads-64k", "cluster_size=64k", 65536);
        run_threads("threads-4k-extl2", "cluster_size=16k,extended_l2=on", 16384);
        run_threads("threads-512-rc64", "cluster_size=512,refcount_bits=64", 512);
    }
    if (!getenv("KEEP")) {
        tap_sh("rm -rf %s", tmpdir);
    } else {
        tap_diag("kept %s", tmpdir);
    }
    return tap_done();
}
