/*
 * blockctl - BDEV_O_KILL_SAFE: writes acknowledged but never flushed
 * survive a kill -9 of the writer (formats/qcow2/wal.c), checked by
 * qemu-img
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * For each image variant a child process opens the image kill-safe,
 * writes, zeroes and discards at random (mirrored into a reference, with
 * a flush now and then), and kills itself with SIGKILL.  Then:
 *   - `qemu-img check` of the image as the kill left it: 0 or 3 (leaks);
 *   - opened for writing again (the log applied) and closed:
 *     `qemu-img check` clean (v2: leaks at most), `qemu-img compare` equal
 *     to the reference;
 *   - with the log damaged first: the open neither fails nor crashes, and
 *     the image is check clean (what the damaged records held is lost);
 *   - with the dirty bit cleared by QEMU's repair first: the log is not
 *     applied (stale), the image is check clean.
 */
#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/io.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/tap.h"

static char tmpdir[256], rundir[300];
static uint64_t rng;

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

enum damage { NONE, DAMAGED_LOG, QEMU_REPAIRED };

struct variant {
    const char *name;
    const char *opts;        /* qemu-img create -o */
    uint64_t size;
    bool backing;            /* on top of a qcow2 base with data */
    unsigned threads;        /* 0: one writer, the main thread */
    enum damage damage;
};

struct thr {
    struct bdev *bd;
    uint8_t *ref;
    uint64_t size, cs;
    unsigned id, n;
    int ops, ret;
    uint64_t seed;
};

/* Random requests (only to clusters id mod n, when n > 1), mirrored in ref. */
static void *writer(void *opaque)
{
    struct thr *t = opaque;
    uint8_t *buf = xmalloc(1 << 20);
    uint64_t nclusters = t->size / t->cs;

    for (int op = 0; op < t->ops && t->ret == 0; op++) {
        uint64_t r = rnd(&t->seed) % 100;
        uint64_t c = (rnd(&t->seed) % (nclusters / t->n)) * t->n + t->id;
        uint64_t off = c * t->cs + rnd(&t->seed) % t->cs;
        uint64_t len = 1 + rnd(&t->seed) % MIN((uint64_t)(1 << 20), t->size - off);

        if (t->n > 1) {
            len = MIN(len, (c + 1) * t->cs - off);
        }
        if (r < 70) {
            memset(buf, (int)(1 + op + t->id * 40), len);
            t->ret = bdev_pwrite(t->bd, buf, len, off, 0);
            memcpy(t->ref + off, buf, len);
        } else if (r < 85) {
            t->ret = bdev_pwrite_zeroes(t->bd, off, len, (r & 1) ? BDEV_REQ_MAY_UNMAP : 0);
            memset(t->ref + off, 0, len);
        } else if (r < 93) {
            t->ret = bdev_discard(t->bd, off, len);
            if (t->ret == 0) {
                /* a discard may leave data or not: what it left */
                t->ret = bdev_pread(t->bd, t->ref + off, len, off);
            }
        } else if (t->n == 1) {
            t->ret = bdev_flush(t->bd);
        }
    }
    free(buf);
    return NULL;
}

/* The child: write kill-safe, save the reference, die by SIGKILL. */
static void child(const struct variant *v, const char *img, const char *refp, uint8_t *ref)
{
    struct error *err = NULL;
    struct bdev *bd = bdev_open(img, "qcow2", BDEV_O_RDWR | BDEV_O_KILL_SAFE, &err);
    unsigned n = v->threads ? v->threads : 1;
    struct thr t[8];
    pthread_t th[8];
    FILE *f;

    if (!bd) {
        _exit(2);
    }
    for (unsigned i = 0; i < n; i++) {
        t[i] = (struct thr){ .bd = bd, .ref = ref, .size = v->size, .id = i, .n = n,
                             .ops = v->threads ? 150 : 120,
                             .cs = v->threads ? 65536 : v->size / 64,
                             .seed = rng + i * 0x51ed27 };
    }
    if (!v->threads) {
        writer(&t[0]);
    } else {
        for (unsigned i = 0; i < n; i++) {
            pthread_create(&th[i], NULL, writer, &t[i]);
        }
        for (unsigned i = 0; i < n; i++) {
            pthread_join(th[i], NULL);
        }
    }
    for (unsigned i = 0; i < n; i++) {
        if (t[i].ret < 0) {
            _exit(3);
        }
    }
    f = fopen(refp, "w");
    if (!f || fwrite(ref, 1, v->size, f) != v->size || fclose(f)) {
        _exit(4);
    }
    kill(getpid(), SIGKILL);
    _exit(5);
}

static unsigned logs_in(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    unsigned n = 0;

    while (d && (e = readdir(d))) {
        n += e->d_name[0] != '.';
    }
    if (d) {
        closedir(d);
    }
    return n;
}

static void run_variant(const struct variant *v)
{
    char img[512], base[512], refp[512];
    uint8_t *ref = xzalloc(v->size);
    struct error *err = NULL;
    struct bdev *bd;
    int st, rc;
    pid_t pid;

    snprintf(img, sizeof(img), "%s/%s.qcow2", tmpdir, v->name);
    snprintf(base, sizeof(base), "%s/%s-base.qcow2", tmpdir, v->name);
    snprintf(refp, sizeof(refp), "%s/%s.raw", tmpdir, v->name);
    if (v->backing) {
        rc = tap_sh("qemu-img create -q -f qcow2 %s %" PRIu64 " && qemu-io -c 'write -P 0x5a 0 %"
                PRIu64 "' %s >/dev/null && qemu-img create -q -f qcow2 -o %s -b %s -F qcow2 %s",
                base, v->size, v->size / 2, base, v->opts, base, img);
        memset(ref, 0x5a, v->size / 2);
    } else {
        rc = tap_sh("qemu-img create -q -f qcow2 -o %s %s %" PRIu64, v->opts, img, v->size);
    }
    if (rc) {
        ok(0, "%s: create", v->name);
        free(ref);
        return;
    }
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        child(v, img, refp, ref);
    }
    waitpid(pid, &st, 0);
    if (!ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s: the writer died by SIGKILL",
            v->name)) {
        tap_diag("status %d", st);
        free(ref);
        return;
    }
    rc = tap_sh("qemu-img check -q %s", img);
    ok(rc == 0 || rc == 3, "%s: as killed, qemu-img check gives %d (0 or 3)", v->name, rc);

    if (v->damage == DAMAGED_LOG) {
        /* every other 64-byte record of every log here gets a flipped byte */
        tap_sh("for f in %s/*.log; do s=$(stat -c %%s \"$f\"); o=4100; while [ $o -lt $s ]; do "
           "printf '\\377' | dd of=\"$f\" bs=1 seek=$o conv=notrunc status=none; "
           "o=$((o + 128)); done; done", rundir);
    } else if (v->damage == QEMU_REPAIRED) {
        tap_sh("qemu-img check -q -r all %s >/dev/null 2>&1", img);
    }
    bd = bdev_open(img, "qcow2", BDEV_O_RDWR, &err);
    if (!ok(bd != NULL, "%s: opened for writing again", v->name)) {
        tap_diag("%s", err->msg);
        error_free(err);
        free(ref);
        return;
    }
    ok(bdev_close(bd, &err) == 0, "%s: closed", v->name);
    ok(logs_in(rundir) == 0, "%s: no log left", v->name);
    rc = tap_sh("qemu-img check -q %s", img);
    if (strstr(v->opts, "compat=0.10")) {
        /* (v2 has no dirty bit: nothing tells the next writer to repair) */
        ok(rc == 0 || rc == 3, "%s: qemu-img check gives %d (0 or 3)", v->name, rc);
    } else {
        ok(rc == 0, "%s: qemu-img check is clean", v->name);
    }
    if (v->damage == NONE) {
        ok(tap_sh("qemu-img compare -q -f raw -F qcow2 %s %s", refp, img) == 0,
           "%s: every write acknowledged before the kill is there (qemu-img compare)", v->name);
    }
    free(ref);
}

int main(void)
{
    static const struct variant variants[] = {
        { "default", "cluster_size=64k", 16 << 20, false, 0, NONE },
        { "c512", "cluster_size=512", 2 << 20, false, 0, NONE },
        { "c2m", "cluster_size=2M", 32 << 20, false, 0, NONE },
        { "extl2", "extended_l2=on", 16 << 20, false, 0, NONE },
        { "extl2-backing", "extended_l2=on,cluster_size=16k", 8 << 20, true, 0, NONE },
        { "backing", "cluster_size=64k", 16 << 20, true, 0, NONE },
        { "rc1", "refcount_bits=1", 8 << 20, false, 0, NONE },
        { "rc64", "refcount_bits=64,cluster_size=4k", 8 << 20, false, 0, NONE },
        /* no dirty bit (v2), lazy refcounts: written through instead of a log */
        { "v2", "compat=0.10", 8 << 20, true, 0, NONE },
        { "lazy", "lazy_refcounts=on", 8 << 20, false, 0, NONE },
        { "threads", "cluster_size=64k", 16 << 20, false, 4, NONE },
        { "damaged-log", "cluster_size=64k", 16 << 20, false, 0, DAMAGED_LOG },
        { "qemu-repaired", "cluster_size=64k", 16 << 20, true, 0, QEMU_REPAIRED },
    };
    uint64_t seed = getenv("SEED") ? strtoull(getenv("SEED"), NULL, 0) : 0;

    switch (tap_qemu_tmpdir(tmpdir, sizeof(tmpdir))) {
    case 1:
        return 0;
    case -1:
        return 1;
    }
    /* the logs of this test in a folder of its own */
    snprintf(rundir, sizeof(rundir), "%s/run", tmpdir);
    setenv("BLOCKCTL_RUN_DIR", rundir, 1);
    for (size_t i = 0; i < ARRAY_SIZE(variants); i++) {
        if (getenv("VARIANT") && strcmp(getenv("VARIANT"), variants[i].name)) {
            continue;
        }
        rng = 0x9e3779b97f4a7c15ULL * (i + 1) + seed;
        run_variant(&variants[i]);
    }
    if (!getenv("KEEP")) {
        tap_sh("rm -rf %s", tmpdir);
    } else {
        tap_diag("kept %s", tmpdir);
    }
    return tap_done();
}
