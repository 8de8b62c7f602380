/*
 * blockctl - unit tests of lib/nbdsrv: the NBD server against libnbd (a
 * real client) and against a raw protocol client for what libnbd would
 * never send.  The disk's dirty bitmaps are faked (linked with
 * --wrap=blk_bitmap_names,--wrap=blk_bitmap_status) until the bitmap layer
 * fills them in.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/blk.h"
#include "lib/block.h"
#include "lib/nbdsrv/nbdsrv.h"
#include "lib/pool.h"

#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "tests/unit/tap.h"

#define MiB (1u << 20)
#define DISK_SIZE (4 * MiB)

/* --- the faked bitmaps: "b0" dirty in [0,1M) and [2M,3M), "b1" clean --- */

char **__wrap_blk_bitmap_names(struct blk *blk);
int __wrap_blk_bitmap_status(struct blk *blk, const char *name, uint64_t off, uint64_t len,
                             uint64_t *pnum, bool *dirty);

char **__wrap_blk_bitmap_names(struct blk *blk)
{
    char **v = xcalloc(3, sizeof(char *));

    (void)blk;
    v[0] = xstrdup("b0");
    v[1] = xstrdup("b1");
    return v;
}

int __wrap_blk_bitmap_status(struct blk *blk, const char *name, uint64_t off, uint64_t len,
                             uint64_t *pnum, bool *dirty)
{
    (void)blk;
    if (!strcmp(name, "b1")) {
        *pnum = len;
        *dirty = false;
        return 0;
    }
    if (strcmp(name, "b0")) {
        return -ENOENT;
    }
    *dirty = (off / MiB) % 2 == 0;
    *pnum = MIN(len, MiB - off % MiB);
    return 0;
}

/* --- fixtures --- */

static char tmpdir[] = "/tmp/test-nbdsrv.XXXXXX";
static char img[256], sock[256];
static struct workpool *pool;
static struct bdev *bd;
static struct blk *disk;
static uint8_t *ref;               /* what the disk holds */

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static char deleted_ids[256];
static unsigned log_lines;

static void test_log(void *opaque, const char *fmt, ...)
{
    (void)opaque;
    (void)fmt;
    __atomic_add_fetch(&log_lines, 1, __ATOMIC_RELAXED);
}

static void on_deleted(void *opaque, const char *id)
{
    (void)opaque;
    pthread_mutex_lock(&ev_lock);
    strncat(deleted_ids, id, sizeof(deleted_ids) - strlen(deleted_ids) - 2);
    strcat(deleted_ids, ",");
    pthread_mutex_unlock(&ev_lock);
}

static bool deleted_has(const char *id, unsigned wait_ms)
{
    char want[64];

    snprintf(want, sizeof(want), "%s,", id);
    for (unsigned t = 0; t <= wait_ms; t += 10) {
        bool found;
        pthread_mutex_lock(&ev_lock);
        found = strstr(deleted_ids, want) != NULL;
        pthread_mutex_unlock(&ev_lock);
        if (found) {
            return true;
        }
        poll(NULL, 0, 10);
    }
    return false;
}

static struct nbdsrv *server(unsigned max_clients, unsigned timeout, uint32_t max_payload)
{
    struct nbdsrv_config cfg = {
        .pool = pool, .max_clients = max_clients, .handshake_timeout = timeout,
        .max_payload = max_payload, .log = test_log, .export_deleted = on_deleted,
    };
    return nbdsrv_new(&cfg);
}

static int add_export(struct nbdsrv *srv, const char *id, bool writable, const char *const *bm)
{
    struct nbdsrv_export_opts o = {
        .id = id, .description = "a test disk", .blk = disk, .writable = writable,
        .allocation_depth = true, .bitmaps = bm,
    };
    struct error *err = NULL;
    int r = nbdsrv_export_add(srv, &o, &err);

    if (r < 0) {
        tap_diag("export_add %s: %s", id, err->msg);
        error_free(err);
    }
    return r;
}

static void make_image(void)
{
    struct error *err = NULL;
    int fd;

    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(img, sizeof(img), "%s/disk.raw", tmpdir);
    snprintf(sock, sizeof(sock), "%s/nbd.sock", tmpdir);
    ref = xzalloc(DISK_SIZE);
    memset(ref, 0xab, MiB);
    memset(ref + 2 * MiB, 0xcd, MiB);
    fd = open(img, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, DISK_SIZE) < 0 || pwrite(fd, ref, MiB, 0) != MiB ||
        pwrite(fd, ref + 2 * MiB, MiB, 2 * MiB) != MiB) {
        perror("image");
        exit(1);
    }
    close(fd);
    bd = bdev_open(img, "raw", BDEV_O_RDWR, &err);
    if (!bd) {
        error_report_err(err);
        exit(1);
    }
    disk = blk_new("vda", bd, false);
    pool = workpool_new(4);
}

/* --- a raw protocol client --- */

static bool rd(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;

    while (n) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        ssize_t r;
        if (poll(&pfd, 1, 5000) <= 0) {
            return false;
        }
        r = recv(fd, p, n, 0);
        if (r <= 0) {
            return false;
        }
        p += r;
        n -= (size_t)r;
    }
    return true;
}

static bool wr(int fd, const void *buf, size_t n)
{
    return send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n;
}

/* The server closed the connection (within 5 s), whatever it sent before. */
static bool closed(int fd)
{
    uint8_t buf[4096];

    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        ssize_t r;
        if (poll(&pfd, 1, 5000) <= 0) {
            return false;
        }
        r = recv(fd, buf, sizeof(buf), 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET)) {
            return true;
        }
        if (r < 0) {
            return false;
        }
    }
}

static int raw_client(struct nbdsrv *srv)
{
    struct error *err = NULL;
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("socketpair");
        exit(1);
    }
    if (nbdsrv_add_client(srv, sv[0], &err) < 0) {
        tap_diag("add_client: %s", err->msg);
        error_free(err);
    }
    return sv[1];
}

/* Read the greeting and send client flags; false if the greeting is wrong. */
static bool greet(int fd, uint32_t cflags)
{
    uint8_t g[18], f[4];

    if (!rd(fd, g, sizeof(g)) || get_be64(g) != 0x4e42444d41474943ULL ||
        get_be64(g + 8) != 0x49484156454f5054ULL || get_be16(g + 16) != 3) {
        return false;
    }
    put_be32(f, cflags);
    return wr(fd, f, 4);
}

static bool send_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];

    put_be64(h, 0x49484156454f5054ULL);
    put_be32(h + 8, opt);
    put_be32(h + 12, len);
    return wr(fd, h, 16) && (!len || wr(fd, data, len));
}

/* One option reply: its type (0 on a broken reply), payload in @data. */
static uint32_t opt_reply(int fd, uint32_t opt, uint8_t *data, uint32_t *len)
{
    uint8_t h[20];
    uint32_t n;

    if (!rd(fd, h, 20) || get_be64(h) != 0x3e889045565a9ULL || get_be32(h + 8) != opt) {
        return 0;
    }
    n = get_be32(h + 16);
    if (n > 65536 || (n && !rd(fd, data, n))) {
        return 0;
    }
    if (len) {
        *len = n;
    }
    return get_be32(h + 12);
}

#define REP_ACK 1u
#define REP_INFO 3u
#define REP_META 4u
#define REP_ERR_UNSUP 0x80000001u
#define REP_ERR_POLICY 0x80000002u
#define REP_ERR_INVALID 0x80000003u
#define REP_ERR_UNKNOWN 0x80000006u
#define REP_ERR_TOO_BIG 0x80000009u

/* replies of the raw client's options (single-threaded) */
static uint8_t scratch[65536];

/* NBD_OPT_GO for @name: the final reply type */
static uint32_t go(int fd, const char *name)
{
    uint8_t *buf = scratch;
    size_t n = strlen(name);
    uint32_t t;

    put_be32(buf, (uint32_t)n);
    memcpy(buf + 4, name, n);
    put_be16(buf + 4 + n, 0);
    if (!send_opt(fd, 7, buf, (uint32_t)(n + 6))) {
        return 0;
    }
    while ((t = opt_reply(fd, 7, buf, NULL)) == REP_INFO) {
    }
    return t;
}

/* An option with no data and one reply: that reply's type */
static uint32_t simple_opt(int fd, uint32_t opt)
{
    uint8_t *buf = scratch;

    return send_opt(fd, opt, NULL, 0) ? opt_reply(fd, opt, buf, NULL) : 0;
}

static bool send_req(int fd, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t off,
                     uint32_t len)
{
    uint8_t h[28];

    put_be32(h, 0x25609513);
    put_be16(h + 4, flags);
    put_be16(h + 6, type);
    put_be64(h + 8, cookie);
    put_be64(h + 16, off);
    put_be32(h + 24, len);
    return wr(fd, h, 28);
}

/* A simple reply: its error, or -1 if broken */
static int64_t simple_reply(int fd, uint64_t cookie)
{
    uint8_t h[16];

    if (!rd(fd, h, 16) || get_be32(h) != 0x67446698 || get_be64(h + 8) != cookie) {
        return -1;
    }
    return get_be32(h + 4);
}

struct chunk {
    uint16_t flags, type;
    uint64_t cookie;
    uint32_t len;
    uint8_t data[MiB + 64];
};

static bool read_chunk(int fd, struct chunk *c)
{
    uint8_t h[20];

    if (!rd(fd, h, 20) || get_be32(h) != 0x668e33ef) {
        return false;
    }
    c->flags = get_be16(h + 4);
    c->type = get_be16(h + 6);
    c->cookie = get_be64(h + 8);
    c->len = get_be32(h + 16);
    return c->len <= sizeof(c->data) && (!c->len || rd(fd, c->data, c->len));
}

/* Connected and in transmission on export @name (structured or not). */
static int transmission(struct nbdsrv *srv, const char *name, bool structured)
{
    int fd = raw_client(srv);

    if (!greet(fd, 3) || (structured && simple_opt(fd, 8) != REP_ACK) || go(fd, name) != REP_ACK) {
        tap_diag("could not reach transmission on '%s'", name);
    }
    return fd;
}

/* --- tests --- */

static struct nbd_handle *nbd_open(const char *name, const char *const *contexts)
{
    struct nbd_handle *h = nbd_create();

    if (!h) {
        return NULL;
    }
    nbd_set_export_name(h, name);
    nbd_set_full_info(h, true);
    for (; contexts && *contexts; contexts++) {
        nbd_add_meta_context(h, *contexts);
    }
    if (nbd_connect_unix(h, sock) < 0) {
        tap_diag("connect: %s", nbd_get_error());
        nbd_close(h);
        return NULL;
    }
    return h;
}

static void test_info(void)
{
    struct nbd_handle *h = nbd_open("vda", NULL);
    char *desc, *canon;

    if (!ok(h, "libnbd connects to export vda")) {
        return;
    }
    is_int(nbd_get_size(h), DISK_SIZE, "export size");
    is_int(nbd_can_multi_conn(h), 1, "CAN_MULTI_CONN");
    is_int(nbd_is_read_only(h), 0, "writable");
    is_int(nbd_can_fast_zero(h), 1, "SEND_FAST_ZERO");
    is_int(nbd_can_df(h), 1, "SEND_DF with structured replies");
    is_int(nbd_can_cache(h), 1, "SEND_CACHE");
    is_int(nbd_can_trim(h), 1, "SEND_TRIM");
    is_int(nbd_can_fua(h), 1, "SEND_FUA");
    is_int(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 1, "minimum block size");
    is_int(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 4096, "preferred block size");
    is_int(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), 32 * MiB, "maximum payload");
    desc = nbd_get_export_description(h);
    canon = nbd_get_canonical_export_name(h);
    ok(desc && !strcmp(desc, "a test disk"), "NBD_INFO_DESCRIPTION: %s", desc ? desc : "none");
    ok(canon && !strcmp(canon, "vda"), "NBD_INFO_NAME: %s", canon ? canon : "none");
    free(desc);
    free(canon);
    nbd_shutdown(h, 0);
    nbd_close(h);
}

struct chunks {
    unsigned data, holes;
    uint64_t hole_bytes;
    bool bad;
};

static int chunk_cb(void *opaque, const void *buf, size_t count, uint64_t off, unsigned status,
                    int *error)
{
    struct chunks *c = opaque;

    (void)buf;
    (void)error;
    if (status == LIBNBD_READ_HOLE) {
        c->holes++;
        c->hole_bytes += count;
        for (size_t i = 0; i < count; i++) {
            c->bad |= ref[off + i] != 0;
        }
    } else if (status == LIBNBD_READ_DATA) {
        c->data++;
    }
    return 0;
}

static void test_read(void)
{
    struct nbd_handle *h = nbd_open("vda", NULL);
    uint8_t *buf = xmalloc(DISK_SIZE);
    struct chunks c = { 0 };

    if (!ok(h, "connect for reads")) {
        free(buf);
        return;
    }
    ok(nbd_pread(h, buf, DISK_SIZE, 0, 0) == 0 && !memcmp(buf, ref, DISK_SIZE),
       "the whole disk reads as written");
    ok(nbd_pread(h, buf, 3000, 1 * MiB - 1000, 0) == 0 && !memcmp(buf, ref + MiB - 1000, 3000),
       "an unaligned read across data and hole");
    memset(buf, 0x55, DISK_SIZE);
    ok(nbd_pread_structured(h, buf, DISK_SIZE, 0,
                            (nbd_chunk_callback){ .callback = chunk_cb, .user_data = &c }, 0) == 0,
       "structured read of the whole disk");
    ok(!memcmp(buf, ref, DISK_SIZE), "its contents are right");
    is_int(c.holes, 2, "the two holes come as NBD_REPLY_TYPE_OFFSET_HOLE");
    is_int(c.hole_bytes, 2 * MiB, "hole bytes");
    ok(!c.bad, "holes only where zeroes are");
    memset(&c, 0, sizeof(c));
    ok(nbd_pread_structured(h, buf, 2 * MiB, 0,
                            (nbd_chunk_callback){ .callback = chunk_cb, .user_data = &c },
                            LIBNBD_CMD_FLAG_DF) == 0 &&
       c.holes == 0 && c.data == 1 && !memcmp(buf, ref, 2 * MiB),
       "with DF: one data chunk, zeroes included");
    nbd_shutdown(h, 0);
    nbd_close(h);
    free(buf);
}

struct extents {
    char ctx[64];
    uint32_t e[64];
    size_t n;
    uint64_t off;
};

static int extent_cb(void *opaque, const char *metacontext, uint64_t off, uint32_t *entries,
                     size_t nr, int *error)
{
    struct extents *x = opaque;

    (void)error;
    snprintf(x->ctx, sizeof(x->ctx), "%s", metacontext);
    x->off = off;
    x->n = MIN(nr, ARRAY_SIZE(x->e));
    memcpy(x->e, entries, x->n * sizeof(uint32_t));
    return 0;
}

static bool extents_are(const struct extents *x, const uint32_t *want, size_t n)
{
    if (x->n != n || memcmp(x->e, want, n * sizeof(uint32_t))) {
        for (size_t i = 0; i + 1 < x->n; i += 2) {
            tap_diag("  extent %u flags %u", x->e[i], x->e[i + 1]);
        }
        return false;
    }
    return true;
}

static void test_block_status(void)
{
    static const char *const base[] = { "base:allocation", NULL };
    static const char *const depth[] = { "qemu:allocation-depth", NULL };
    static const char *const b0[] = { "qemu:dirty-bitmap:b0", NULL };
    static const uint32_t want_base[] = { MiB, 0, MiB, 3, MiB, 0, MiB, 3 };
    static const uint32_t want_depth[] = { 4 * MiB, 1 };
    static const uint32_t want_b0[] = { MiB, 1, MiB, 0, MiB, 1, MiB, 0 };
    static const uint32_t want_one[] = { MiB, 1 };
    struct nbd_handle *h;
    struct extents x = { 0 };
    nbd_extent_callback cb = { .callback = extent_cb, .user_data = &x };

    h = nbd_open("vda", base);
    ok(h && nbd_can_meta_context(h, "base:allocation") == 1, "base:allocation negotiated");
    ok(h && nbd_block_status(h, DISK_SIZE, 0, cb, 0) == 0 && !strcmp(x.ctx, "base:allocation") &&
       extents_are(&x, want_base, ARRAY_SIZE(want_base)),
       "base:allocation: data, hole+zero, data, hole+zero");
    ok(h && nbd_block_status(h, 1000, 1 * MiB - 500, cb, LIBNBD_CMD_FLAG_REQ_ONE) == 0 &&
       x.n == 2 && x.e[0] == 500 && x.e[1] == 0, "REQ_ONE: one extent, within the request");
    nbd_close(h);

    h = nbd_open("vda", depth);
    ok(h && nbd_block_status(h, DISK_SIZE, 0, cb, 0) == 0 &&
       !strcmp(x.ctx, "qemu:allocation-depth") && extents_are(&x, want_depth, 2),
       "qemu:allocation-depth of a raw file: all at depth 1");
    nbd_close(h);

    h = nbd_open("vda", b0);
    ok(h && nbd_can_meta_context(h, "qemu:dirty-bitmap:b0") == 1, "a bitmap context negotiated");
    ok(h && nbd_block_status(h, DISK_SIZE, 0, cb, 0) == 0 &&
       extents_are(&x, want_b0, ARRAY_SIZE(want_b0)), "qemu:dirty-bitmap:b0 extents");
    ok(h && nbd_block_status(h, DISK_SIZE, 0, cb, LIBNBD_CMD_FLAG_REQ_ONE) == 0 &&
       extents_are(&x, want_one, 2), "qemu:dirty-bitmap:b0 with REQ_ONE");
    nbd_close(h);
}

struct names {
    char all[1024];
    unsigned n;
};

static int name_cb(void *opaque, const char *name)
{
    struct names *l = opaque;

    l->n++;
    strncat(l->all, name, sizeof(l->all) - strlen(l->all) - 2);
    strcat(l->all, " ");
    return 0;
}

/* NBD_OPT_LIST_META_CONTEXT on @exp with @queries */
static unsigned list_contexts(const char *exp, const char *const *queries, struct names *l)
{
    struct nbd_handle *h = nbd_create();
    int r;

    memset(l, 0, sizeof(*l));
    nbd_set_opt_mode(h, true);
    nbd_set_export_name(h, exp);
    for (; queries && *queries; queries++) {
        nbd_add_meta_context(h, *queries);
    }
    if (nbd_connect_unix(h, sock) < 0) {
        tap_diag("connect: %s", nbd_get_error());
        nbd_close(h);
        return 0;
    }
    r = nbd_opt_list_meta_context(h, (nbd_context_callback){ .callback = name_cb,
                                                              .user_data = l });
    if (r < 0) {
        tap_diag("list: %s", nbd_get_error());
    }
    nbd_opt_abort(h);
    nbd_close(h);
    return r < 0 ? 0 : l->n;
}

static void test_list_contexts(struct nbdsrv *srv)
{
    static const char *const qemu[] = { "qemu:", NULL };
    static const char *const bitmaps[] = { "qemu:dirty-bitmap:", NULL };
    static const char *const base[] = { "base:", "nosuch:thing", "base:allocation", NULL };
    static const char *const only_b1[] = { "b1", NULL };
    static const char *const missing[] = { "zz", NULL };
    struct names l;

    list_contexts("vda", NULL, &l);
    ok(l.n == 4 && !strcmp(l.all, "base:allocation qemu:allocation-depth "
                                  "qemu:dirty-bitmap:b0 qemu:dirty-bitmap:b1 "),
       "LIST_META_CONTEXT without queries lists all: %s", l.all);
    list_contexts("vda", qemu, &l);
    ok(l.n == 3 && !strcmp(l.all, "qemu:allocation-depth qemu:dirty-bitmap:b0 "
                                  "qemu:dirty-bitmap:b1 "),
       "'qemu:' lists the qemu namespace: %s", l.all);
    list_contexts("vda", bitmaps, &l);
    ok(l.n == 2, "'qemu:dirty-bitmap:' lists the bitmaps: %s", l.all);
    list_contexts("vda", base, &l);
    ok(l.n == 1 && !strcmp(l.all, "base:allocation "),
       "'base:' lists base:allocation once, unknown namespaces are ignored: %s", l.all);

    ok(add_export(srv, "vdb", true, only_b1) == 0, "an export offering bitmap b1 only");
    list_contexts("vdb", bitmaps, &l);
    ok(l.n == 1 && !strcmp(l.all, "qemu:dirty-bitmap:b1 "), "it lists just b1: %s", l.all);
    ok(add_export(srv, "vdc", true, missing) == -ENOENT, "a bitmap the disk lacks is refused");
}

static void test_write(void)
{
    struct nbd_handle *h = nbd_open("vda", NULL);
    uint8_t *buf = xmalloc(2 * MiB), *back = xmalloc(2 * MiB);

    if (!ok(h, "connect for writes")) {
        free(buf);
        free(back);
        return;
    }
    for (size_t i = 0; i < 2 * MiB; i++) {
        buf[i] = (uint8_t)(i * 7 + 3);
    }
    ok(nbd_pwrite(h, buf, 300000, 1 * MiB + 12345, 0) == 0, "write into the hole");
    memcpy(ref + MiB + 12345, buf, 300000);
    ok(nbd_pwrite(h, buf, 4096, 0, LIBNBD_CMD_FLAG_FUA) == 0, "FUA write");
    memcpy(ref, buf, 4096);
    ok(nbd_zero(h, 65536, 2 * MiB, 0) == 0, "write zeroes");
    memset(ref + 2 * MiB, 0, 65536);
    ok(nbd_zero(h, 65536, 2 * MiB + 65536, LIBNBD_CMD_FLAG_NO_HOLE) == 0, "write zeroes, NO_HOLE");
    memset(ref + 2 * MiB + 65536, 0, 65536);
    {
        int r = nbd_zero(h, 65536, 3 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO);
        ok(r == 0 || nbd_get_errno() == ENOTSUP,
           "FAST_ZERO succeeds or fails fast with ENOTSUP (%d)", r);
        if (r == 0) {
            memset(ref + 3 * MiB, 0, 65536);
        }
    }
    ok(nbd_trim(h, 8192, 2 * MiB + 200000, 0) == 0, "trim");
    ok(nbd_pread(h, back, 8192, 2 * MiB + 200000, 0) == 0, "read the trimmed range");
    memcpy(ref + 2 * MiB + 200000, back, 8192);
    ok(nbd_flush(h, 0) == 0, "flush");
    ok(nbd_cache(h, MiB, 0, 0) == 0, "cache");
    ok(nbd_pread(h, back, 2 * MiB, MiB, 0) == 0 && !memcmp(back, ref + MiB, 2 * MiB),
       "reads back what was written");
    nbd_shutdown(h, 0);
    nbd_close(h);
    free(buf);
    free(back);
}

static void test_errors(struct nbdsrv *srv)
{
    struct nbd_handle *h = nbd_create();
    uint8_t buf[4096];

    (void)srv;
    nbd_set_export_name(h, "vda");
    nbd_set_strict_mode(h, 0);
    if (!ok(nbd_connect_unix(h, sock) == 0, "connect without client-side checks")) {
        nbd_close(h);
        return;
    }
    ok(nbd_pread(h, buf, 4096, DISK_SIZE - 2048, 0) < 0 && nbd_get_errno() == EINVAL,
       "read past the end: EINVAL");
    ok(nbd_pwrite(h, buf, 4096, DISK_SIZE - 2048, 0) < 0 && nbd_get_errno() == ENOSPC,
       "write past the end: ENOSPC");
    ok(nbd_zero(h, 4096, DISK_SIZE, 0) < 0 && nbd_get_errno() == ENOSPC,
       "write zeroes past the end: ENOSPC");
    ok(nbd_trim(h, 4096, DISK_SIZE, 0) < 0 && nbd_get_errno() == EINVAL,
       "trim past the end: EINVAL");
    ok(nbd_pread(h, buf, 10, 0, 0) == 0, "the connection goes on");
    nbd_close(h);

    h = nbd_create();
    nbd_set_export_name(h, "ro");
    nbd_set_strict_mode(h, 0);
    if (ok(nbd_connect_unix(h, sock) == 0, "connect to a read-only export")) {
        is_int(nbd_is_read_only(h), 1, "NBD_FLAG_READ_ONLY");
        is_int(nbd_can_trim(h), 0, "no SEND_TRIM");
        is_int(nbd_can_zero(h), 0, "no SEND_WRITE_ZEROES");
        ok(nbd_pwrite(h, buf, 512, 0, 0) < 0 && nbd_get_errno() == EPERM, "write: EPERM");
        ok(nbd_trim(h, 512, 0, 0) < 0 && nbd_get_errno() == EPERM, "trim: EPERM");
        ok(nbd_pread(h, buf, 512, 0, 0) == 0 && !memcmp(buf, ref, 512), "reads work");
        ok(nbd_flush(h, 0) == 0, "flush works");
    }
    nbd_close(h);
}

/* Many requests in flight at once on several connections */
struct worker {
    unsigned id;
    bool ok;
};

static void *io_worker(void *opaque)
{
    struct worker *w = opaque;
    struct nbd_handle *h = nbd_create();
    enum { N = 48, LEN = 16384 };
    uint8_t *buf = xmalloc(N * LEN), *back = xmalloc(N * LEN);
    int64_t cookies[N];
    uint64_t base = 3 * MiB + (uint64_t)w->id * (N * LEN / 4);

    w->ok = false;
    nbd_set_export_name(h, "vda");
    if (nbd_connect_unix(h, sock) < 0) {
        goto out;
    }
    for (unsigned round = 0; round < 4; round++) {
        for (size_t i = 0; i < (size_t)N * LEN; i++) {
            buf[i] = (uint8_t)(i + w->id * 31 + round);
        }
        /* disjoint 4 KiB pieces per worker, written in one burst */
        for (unsigned i = 0; i < N; i++) {
            cookies[i] = nbd_aio_pwrite(h, buf + i * 4096, 4096, base + i * 4096,
                                        NBD_NULL_COMPLETION, 0);
            if (cookies[i] < 0) {
                goto out;
            }
        }
        while (nbd_aio_in_flight(h) > 0) {
            if (nbd_poll(h, -1) < 0) {
                goto out;
            }
        }
        for (unsigned i = 0; i < N; i++) {
            if (nbd_aio_command_completed(h, (uint64_t)cookies[i]) != 1) {
                goto out;
            }
        }
        for (unsigned i = 0; i < N; i++) {
            cookies[i] = nbd_aio_pread(h, back + i * 4096, 4096, base + i * 4096,
                                       NBD_NULL_COMPLETION, 0);
            if (cookies[i] < 0) {
                goto out;
            }
        }
        while (nbd_aio_in_flight(h) > 0) {
            if (nbd_poll(h, -1) < 0) {
                goto out;
            }
        }
        for (unsigned i = 0; i < N; i++) {
            if (nbd_aio_command_completed(h, (uint64_t)cookies[i]) != 1) {
                goto out;
            }
        }
        if (memcmp(buf, back, (size_t)N * 4096)) {
            goto out;
        }
    }
    w->ok = true;
out:
    if (!w->ok) {
        tap_diag("worker %u: %s", w->id, nbd_get_error() ? nbd_get_error() : "data mismatch");
    }
    nbd_close(h);
    free(buf);
    free(back);
    return NULL;
}

static void test_concurrency(void)
{
    struct worker w[4];
    pthread_t t[4];
    bool all = true;

    for (unsigned i = 0; i < 4; i++) {
        w[i].id = i;
        pthread_create(&t[i], NULL, io_worker, &w[i]);
    }
    for (unsigned i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        all &= w[i].ok;
    }
    ok(all, "4 connections with 48 requests in flight each: every reply right");
    /* they wrote to [3M, 4M) */
    ok(blk_pread(disk, ref, DISK_SIZE, 0) == 0, "(reference contents reloaded)");
}

static void test_raw_handshake(struct nbdsrv *srv)
{
    static uint8_t buf[65536];
    uint32_t len;
    int fd;

    fd = raw_client(srv);
    ok(greet(fd, 0x10), "greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES");
    ok(closed(fd), "an unknown client flag: closed");
    close(fd);

    fd = raw_client(srv);
    greet(fd, 1);
    is_int(simple_opt(fd, 5), REP_ERR_POLICY, "STARTTLS: NBD_REP_ERR_POLICY");
    is_int(simple_opt(fd, 99), REP_ERR_UNSUP, "an unknown option: NBD_REP_ERR_UNSUP");
    is_int(simple_opt(fd, 11), REP_ERR_UNSUP, "NBD_OPT_EXTENDED_HEADERS: NBD_REP_ERR_UNSUP");
    send_opt(fd, 3, "x", 1);
    is_int(opt_reply(fd, 3, buf, NULL), REP_ERR_INVALID, "LIST with data: NBD_REP_ERR_INVALID");
    put_be32(buf, 3);
    memcpy(buf + 4, "vda", 3);
    put_be32(buf + 7, 1);
    put_be32(buf + 11, 15);
    memcpy(buf + 15, "base:allocation", 15);
    send_opt(fd, 10, buf, 30);
    is_int(opt_reply(fd, 10, buf, NULL), REP_ERR_INVALID,
           "SET_META_CONTEXT before STRUCTURED_REPLY: NBD_REP_ERR_INVALID");
    is_int(simple_opt(fd, 8), REP_ACK, "STRUCTURED_REPLY: ACK");
    is_int(simple_opt(fd, 8), REP_ERR_INVALID, "STRUCTURED_REPLY again: NBD_REP_ERR_INVALID");
    put_be32(buf, 3);
    memcpy(buf + 4, "vda", 3);
    put_be32(buf + 7, 2);
    put_be32(buf + 11, 15);
    memcpy(buf + 15, "base:allocation", 15);
    put_be32(buf + 30, 15);
    memcpy(buf + 34, "base:allocation", 15);
    send_opt(fd, 10, buf, 49);
    ok(opt_reply(fd, 10, buf, &len) == REP_META && len == 19 && get_be32(buf) != 0 &&
       !memcmp(buf + 4, "base:allocation", 15), "SET_META_CONTEXT: one context, nonzero id");
    is_int(opt_reply(fd, 10, buf, NULL), REP_ACK, "a context asked twice is selected once");
    put_be32(buf, 3);
    memcpy(buf + 4, "vda", 3);
    put_be32(buf + 7, 2);
    put_be32(buf + 11, 100);
    send_opt(fd, 10, buf, 15);
    is_int(opt_reply(fd, 10, buf, NULL), REP_ERR_INVALID, "a query past the option: INVALID");
    is_int(go(fd, "nosuch"), REP_ERR_UNKNOWN, "GO to an unknown export: NBD_REP_ERR_UNKNOWN");
    put_be32(buf, 50);
    send_opt(fd, 7, buf, 6);
    is_int(opt_reply(fd, 7, buf, NULL), REP_ERR_INVALID, "GO with a bad name length: INVALID");
    memset(buf, 'x', sizeof(buf));
    send_opt(fd, 6, buf, sizeof(buf));
    send_opt(fd, 6, buf, 40000);
    is_int(opt_reply(fd, 6, buf, NULL), REP_ERR_TOO_BIG,
           "a 64 KiB option: NBD_REP_ERR_TOO_BIG, not read into memory");
    is_int(opt_reply(fd, 6, buf, NULL), REP_ERR_INVALID, "the next option is read in sync");
    is_int(go(fd, "vda"), REP_ACK, "GO after all that still works");
    close(fd);

    fd = raw_client(srv);
    greet(fd, 1);
    put_be64(buf, 0x49484156454f5054ULL);
    put_be32(buf + 8, 6);
    put_be32(buf + 12, 0x7fffffff);
    wr(fd, buf, 16);
    ok(closed(fd), "an option of 2 GiB: disconnected at once");
    close(fd);

    fd = raw_client(srv);
    greet(fd, 1);
    put_be64(buf, 0x1122334455667788ULL);
    wr(fd, buf, 16);
    ok(closed(fd), "bad option magic: closed");
    close(fd);

    fd = raw_client(srv);
    greet(fd, 1);
    send_opt(fd, 1, "nosuch", 6);
    ok(closed(fd), "EXPORT_NAME of an unknown export: closed");
    close(fd);

    fd = raw_client(srv);
    greet(fd, 1);
    is_int(go(fd, ""), REP_ERR_UNKNOWN, "GO with an empty name and several exports: UNKNOWN");
    send_opt(fd, 1, NULL, 0);
    ok(closed(fd), "EXPORT_NAME with an empty name and several exports: closed");
    close(fd);

    fd = raw_client(srv);
    greet(fd, 1);
    send_opt(fd, 2, NULL, 0);
    ok(opt_reply(fd, 2, buf, NULL) == REP_ACK && closed(fd), "ABORT: ACK, then closed");
    close(fd);

    fd = raw_client(srv);
    greet(fd, 1);
    send_opt(fd, 3, NULL, 0);
    {
        unsigned servers = 0;
        uint32_t t;
        while ((t = opt_reply(fd, 3, buf, &len)) == 2) {
            servers++;
        }
        ok(t == REP_ACK && servers >= 2, "LIST: %u NBD_REP_SERVER then ACK", servers);
    }
    close(fd);
}

static void test_raw_transmission(struct nbdsrv *srv)
{
    struct chunk *ch = xmalloc(sizeof(*ch));
    uint8_t buf[8192];
    int fd;

    /* EXPORT_NAME with NO_ZEROES, simple replies */
    fd = raw_client(srv);
    greet(fd, 3);
    send_opt(fd, 1, "vda", 3);
    ok(rd(fd, buf, 10) && get_be64(buf) == DISK_SIZE && (get_be16(buf + 8) & 1),
       "EXPORT_NAME: size and flags, no zeroes");
    send_req(fd, 0, 0, 1, 0, 4096);
    ok(simple_reply(fd, 1) == 0 && rd(fd, buf, 4096) && !memcmp(buf, ref, 4096),
       "READ: a simple reply with the data");
    send_req(fd, 0, 42, 2, 0, 0);
    is_int(simple_reply(fd, 2), 22, "an unknown command: EINVAL");
    send_req(fd, 4, 0, 3, 0, 512);
    is_int(simple_reply(fd, 3), 22, "DF without structured replies: EINVAL");
    send_req(fd, 0, 7, 4, 0, 512);
    is_int(simple_reply(fd, 4), 22, "BLOCK_STATUS without contexts: EINVAL");
    send_req(fd, 0, 0, 5, DISK_SIZE, 1);
    is_int(simple_reply(fd, 5), 22, "READ past the end: EINVAL (no payload)");
    send_req(fd, 0, 1, 6, DISK_SIZE - 1, 2);
    wr(fd, "xy", 2);
    is_int(simple_reply(fd, 6), 28, "WRITE past the end: ENOSPC (payload skipped)");
    send_req(fd, 0, 0, 7, UINT64_MAX - 10, 100);
    is_int(simple_reply(fd, 7), 22, "READ at an offset that would overflow: EINVAL");
    send_req(fd, 0x100, 3, 8, 0, 0);
    is_int(simple_reply(fd, 8), 22, "an unknown flag: EINVAL");
    /* several in flight, then DISC: all answered, then closed */
    for (unsigned i = 0; i < 8; i++) {
        send_req(fd, 0, 0, 100 + i, i * 4096, 4096);
    }
    send_req(fd, 0, 2, 200, 0, 0);
    {
        unsigned got = 0, mask = 0;
        for (unsigned i = 0; i < 8; i++) {
            uint8_t h[16];
            if (!rd(fd, h, 16) || get_be32(h + 4) != 0 || get_be64(h + 8) < 100 ||
                get_be64(h + 8) >= 108 || !rd(fd, buf, 4096) ||
                memcmp(buf, ref + (get_be64(h + 8) - 100) * 4096, 4096)) {
                break;
            }
            mask |= 1u << (get_be64(h + 8) - 100);
            got++;
        }
        ok(got == 8 && mask == 0xff, "DISC after 8 reads: all 8 answered (in any order)");
    }
    ok(closed(fd), "and then closed");
    close(fd);

    /* structured */
    fd = transmission(srv, "vda", true);
    send_req(fd, 0, 0, 9, DISK_SIZE - 100, 200);
    ok(read_chunk(fd, ch) && ch->cookie == 9 && ch->type == 0x8001 && (ch->flags & 1) &&
       get_be32(ch->data) == 22, "structured READ past the end: an ERROR chunk, EINVAL, DONE");
    send_req(fd, 0, 0, 10, MiB - 4096, 8192);
    {
        bool good = read_chunk(fd, ch) && ch->type == 1 && !(ch->flags & 1) &&
                    get_be64(ch->data) == MiB - 4096 && ch->len == 8 + 4096 &&
                    !memcmp(ch->data + 8, ref + MiB - 4096, 4096);
        good = good && read_chunk(fd, ch) && ch->type == 2 && (ch->flags & 1) &&
               ch->len == 12 && get_be64(ch->data) == MiB && get_be32(ch->data + 8) == 4096;
        ok(good, "READ over data then hole: OFFSET_DATA, then OFFSET_HOLE with DONE");
    }
    send_req(fd, 0, 1, 11, 0, 33 * MiB);
    ok(read_chunk(fd, ch) && ch->cookie == 11 && get_be32(ch->data) == 22 && closed(fd),
       "a WRITE larger than the maximum payload: EINVAL, then closed unread");
    close(fd);

    fd = transmission(srv, "vda", true);
    send_req(fd, 0, 0, 12, 0, 512);
    read_chunk(fd, ch);
    put_be32(buf, 0xdeadbeef);
    wr(fd, buf, 28);
    ok(closed(fd), "a bad request magic: closed");
    close(fd);

    fd = transmission(srv, "vda", true);
    wr(fd, "\x25\x60\x95\x13\0\0\0\1", 8);
    shutdown(fd, SHUT_WR);
    ok(closed(fd), "a truncated request then EOF: closed");
    close(fd);
    free(ch);
}

static int idle_client(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (strlen(path) >= sizeof(sa.sun_path)) {
        close(fd);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool wait_clients(struct nbdsrv *srv, unsigned n)
{
    for (unsigned t = 0; t < 500; t++) {
        if (nbdsrv_clients(srv) == n) {
            return true;
        }
        poll(NULL, 0, 10);
    }
    return false;
}

static void test_limits(void)
{
    char path[300];
    struct error *err = NULL;
    struct nbdsrv *srv = server(2, 1, 0);
    struct timespec t0, t1;
    uint8_t g[18];
    int a, b, c;

    char *addr;

    snprintf(path, sizeof(path), "%s/limits.sock", tmpdir);
    addr = xasprintf("unix:%s", path);
    add_export(srv, "vda", true, NULL);
    if (nbdsrv_listen(srv, addr, 0600, &err) < 0 || nbdsrv_start(srv, &err) < 0) {
        tap_diag("%s", err->msg);
        error_free(err);
        err = NULL;
    }
    free(addr);
    a = idle_client(path);
    b = idle_client(path);
    ok(rd(a, g, 18) && rd(b, g, 18) && wait_clients(srv, 2), "two clients in the handshake");
    c = idle_client(path);
    ok(closed(c), "a third one is closed at once (max_clients 2)");
    close(c);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ok(closed(a), "a client idling in the handshake is closed");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ok(t1.tv_sec - t0.tv_sec <= 3, "after the 1 s handshake timeout (%ld s)",
       (long)(t1.tv_sec - t0.tv_sec));
    ok(closed(b), "so is the other");
    close(a);
    close(b);
    ok(wait_clients(srv, 0), "no client left");
    nbdsrv_shutdown(srv);
    nbdsrv_free(srv);
}

static void test_sockets(void)
{
    char path[300], *addr;
    struct error *err = NULL;
    struct nbdsrv *s1 = server(0, 0, 0), *s2 = server(0, 0, 0);
    struct stat st;
    int fd;

    snprintf(path, sizeof(path), "%s/mode.sock", tmpdir);
    addr = xasprintf("unix:%s", path);
    ok(nbdsrv_listen(s1, addr, 0640, &err) == 0, "listen on a UNIX socket");
    ok(stat(path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 07777) == 0640,
       "it has the mode asked for (0%o)", (unsigned)(st.st_mode & 07777));
    ok(nbdsrv_listen(s2, addr, 0600, &err) == -EADDRINUSE && err, "a live socket is not replaced");
    error_free(err);
    err = NULL;
    nbdsrv_shutdown(s1);
    ok(stat(path, &st) < 0, "shutdown removes the socket");

    /* a stale socket: bound, nobody listening */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        memcpy(sa.sun_path, path, MIN(strlen(path), sizeof(sa.sun_path) - 1));
        ok(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "(a stale socket made)");
    }
    close(fd);
    ok(nbdsrv_listen(s2, addr, 0600, &err) == 0, "a stale socket is replaced");
    nbdsrv_free(s2);
    nbdsrv_free(s1);
    fd = open(path, O_CREAT | O_WRONLY, 0600);
    close(fd);
    s1 = server(0, 0, 0);
    ok(nbdsrv_listen(s1, addr, 0600, &err) < 0 && err, "a regular file is never replaced");
    error_free(err);
    err = NULL;
    ok(nbdsrv_listen(s1, "tcp:127.0.0.1:0", 0, &err) == 0, "listen on TCP");
    ok(nbdsrv_listen(s1, "udp:x", 0, &err) == -EINVAL, "an unknown address kind is refused");
    error_free(err);
    nbdsrv_free(s1);
    unlink(path);
    free(addr);
}

static void test_export_del(struct nbdsrv *srv)
{
    struct nbdsrv_export_info *info;
    struct nbd_handle *h, *h2;
    struct error *err = NULL;
    uint8_t buf[512];
    size_t n;
    bool shutting = false;

    ok(add_export(srv, "gone", true, NULL) == 0, "add export 'gone'");
    ok(add_export(srv, "gone", true, NULL) == -EEXIST, "its id cannot be added twice");
    h = nbd_open("gone", NULL);
    ok(h != NULL, "a client uses it");
    ok(nbdsrv_export_del(srv, "gone", false, &err) == 0, "soft delete");
    n = nbdsrv_list_exports(srv, &info);
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(info[i].id, "gone")) {
            shutting = info[i].shutting_down && !strcmp(info[i].disk, "vda");
        }
    }
    nbdsrv_export_info_free(info, n);
    ok(shutting, "it is listed as shutting down");
    h2 = nbd_create();
    nbd_set_export_name(h2, "gone");
    ok(nbd_connect_unix(h2, sock) < 0, "new clients no longer find it");
    nbd_close(h2);
    ok(h && nbd_pread(h, buf, 512, 0, 0) == 0, "the connected client goes on");
    ok(!deleted_has("gone", 0), "no BLOCK_EXPORT_DELETED yet");
    nbd_shutdown(h, 0);
    nbd_close(h);
    ok(deleted_has("gone", 3000), "export_deleted once the last client left");

    ok(add_export(srv, "hard", true, NULL) == 0, "add export 'hard'");
    h = nbd_open("hard", NULL);
    ok(nbdsrv_export_del(srv, "hard", true, &err) == 0, "hard delete");
    ok(h && nbd_pread(h, buf, 512, 0, 0) < 0, "the client's connection is closed");
    nbd_close(h);
    ok(deleted_has("hard", 3000), "export_deleted");
    ok(nbdsrv_export_del(srv, "nosuch", false, &err) == -ENOENT, "deleting nothing fails");
    error_free(err);
}

static void *shutdown_thread(void *opaque)
{
    nbdsrv_shutdown(opaque);
    return NULL;
}

static void test_shutdown(void)
{
    char path[300], *addr;
    struct error *err = NULL;
    struct nbdsrv *srv = server(0, 0, 0);
    uint8_t *buf = xmalloc(MiB);
    unsigned mask = 0;
    struct stat st;
    pthread_t t;
    int fd;

    snprintf(path, sizeof(path), "%s/shut.sock", tmpdir);
    addr = xasprintf("unix:%s", path);
    add_export(srv, "vda", true, NULL);
    nbdsrv_listen(srv, addr, 0600, &err);
    nbdsrv_start(srv, &err);
    fd = transmission(srv, "vda", false);
    for (unsigned i = 0; i < 16; i++) {
        send_req(fd, 0, 0, i, (uint64_t)(i % 4) * MiB, MiB);
    }
    /* most replies wait in the server until the client reads them */
    poll(NULL, 0, 200);
    pthread_create(&t, NULL, shutdown_thread, srv);
    for (unsigned i = 0; i < 16; i++) {
        uint8_t h[16];
        uint64_t cookie;
        if (!rd(fd, h, 16) || get_be32(h + 4) != 0 || (cookie = get_be64(h + 8)) >= 16 ||
            !rd(fd, buf, MiB) || memcmp(buf, ref + (cookie % 4) * MiB, MiB)) {
            break;
        }
        mask |= 1u << cookie;
    }
    ok(mask == 0xffff, "shutdown answers the 16 reads in flight (0x%x)", mask);
    ok(closed(fd), "then closes the connection");
    pthread_join(t, NULL);
    ok(stat(path, &st) < 0, "the socket is gone after shutdown");
    ok(nbdsrv_clients(srv) == 0, "no client left");
    close(fd);
    nbdsrv_free(srv);
    free(addr);
    free(buf);
}

int main(void)
{
    struct error *err = NULL;
    struct nbdsrv *srv;
    char *addr;

    make_image();
    srv = server(0, 0, 0);
    addr = xasprintf("unix:%s", sock);
    if (add_export(srv, "vda", true, NULL) < 0 || add_export(srv, "ro", false, NULL) < 0 ||
        nbdsrv_listen(srv, addr, 0600, &err) < 0 || nbdsrv_start(srv, &err) < 0) {
        if (err) {
            error_report_err(err);
        }
        return 1;
    }
    free(addr);

    test_info();
    test_read();
    test_block_status();
    test_list_contexts(srv);
    test_write();
    test_errors(srv);
    test_concurrency();
    test_raw_handshake(srv);
    test_raw_transmission(srv);
    test_export_del(srv);
    test_limits();
    test_sockets();
    test_shutdown();

    nbdsrv_shutdown(srv);
    ok(nbdsrv_clients(srv) == 0, "shutdown: no client left");
    nbdsrv_free(srv);
    workpool_free(pool);
    blk_unref(disk);
    bdev_close(bd, NULL);
    unlink(img);
    rmdir(tmpdir);
    free(ref);
    ok(log_lines > 0, "the server logged its events");
    return tap_done();
}
