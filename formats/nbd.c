/*
 * blockctl - images on an NBD server, through libnbd
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * One connection per image.  Requests from any thread are queued to an I/O
 * thread that owns the libnbd handle: it submits them with the aio calls,
 * so many are in flight at once, and polls the socket, so a server that
 * goes away fails every request with an error naming the URI instead of
 * hanging.
 */
#include "lib/compiler.h"
#include "formats/format.h"

#include <dlfcn.h>
#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>

/*
 * libnbd is loaded when the first NBD image is opened, not at start-up:
 * it pulls in gnutls, libxml2 and more, which would slow down every
 * blockctl command by several milliseconds.
 */
#define NBD_FUNCS(X)                                                              \
    X(nbd_add_meta_context) X(nbd_aio_block_status) X(nbd_aio_flush)              \
    X(nbd_aio_get_direction) X(nbd_aio_get_fd) X(nbd_aio_in_flight)               \
    X(nbd_aio_is_closed) X(nbd_aio_is_dead) X(nbd_aio_notify_read)                \
    X(nbd_aio_notify_write) X(nbd_aio_pread) X(nbd_aio_pwrite) X(nbd_aio_trim)    \
    X(nbd_aio_zero) X(nbd_aio_connect_uri) X(nbd_aio_is_connecting)               \
    X(nbd_poll) X(nbd_can_flush) X(nbd_can_fua) X(nbd_can_meta_context)       \
    X(nbd_can_trim) X(nbd_can_zero) X(nbd_close) X(nbd_aio_is_ready) X(nbd_create) \
    X(nbd_get_errno) X(nbd_get_error) X(nbd_get_size) X(nbd_is_read_only)         \
    X(nbd_shutdown)

#define NBD_DECLARE(f) static __typeof__(f) *p_##f;
NBD_FUNCS(NBD_DECLARE)

static pthread_once_t libnbd_once = PTHREAD_ONCE_INIT;
static char *libnbd_error;

static void libnbd_load(void)
{
    void *h = dlopen("libnbd.so.0", RTLD_NOW | RTLD_LOCAL);

    if (!h) {
        libnbd_error = xasprintf("NBD images need libnbd (Debian package libnbd0): %s",
                                 dlerror());
        return;
    }
#define NBD_LOAD(f)                                                             \
    if (!libnbd_error && !(p_##f = (__typeof__(f) *)dlsym(h, #f))) {            \
        libnbd_error = xasprintf("libnbd.so.0 lacks %s", #f);                 \
    }
    NBD_FUNCS(NBD_LOAD)
#undef NBD_LOAD
}

#define nbd_add_meta_context p_nbd_add_meta_context
#define nbd_aio_block_status p_nbd_aio_block_status
#define nbd_aio_flush p_nbd_aio_flush
#define nbd_aio_get_direction p_nbd_aio_get_direction
#define nbd_aio_get_fd p_nbd_aio_get_fd
#define nbd_aio_in_flight p_nbd_aio_in_flight
#define nbd_aio_is_closed p_nbd_aio_is_closed
#define nbd_aio_is_dead p_nbd_aio_is_dead
#define nbd_aio_notify_read p_nbd_aio_notify_read
#define nbd_aio_notify_write p_nbd_aio_notify_write
#define nbd_aio_pread p_nbd_aio_pread
#define nbd_aio_pwrite p_nbd_aio_pwrite
#define nbd_aio_trim p_nbd_aio_trim
#define nbd_aio_zero p_nbd_aio_zero
#define nbd_aio_connect_uri p_nbd_aio_connect_uri
#define nbd_aio_is_connecting p_nbd_aio_is_connecting
#define nbd_poll p_nbd_poll
#define nbd_can_flush p_nbd_can_flush
#define nbd_can_fua p_nbd_can_fua
#define nbd_can_meta_context p_nbd_can_meta_context
#define nbd_can_trim p_nbd_can_trim
#define nbd_can_zero p_nbd_can_zero
#define nbd_close p_nbd_close
#define nbd_aio_is_ready p_nbd_aio_is_ready
#define nbd_create p_nbd_create
#define nbd_get_errno p_nbd_get_errno
#define nbd_get_error p_nbd_get_error
#define nbd_get_size p_nbd_get_size
#define nbd_is_read_only p_nbd_is_read_only
#define nbd_shutdown p_nbd_shutdown

#define NBD_MAX_REQ (32u << 20)
#define NBD_MAX_STATUS (1u << 30)

enum req_type { REQ_READ, REQ_WRITE, REQ_ZERO, REQ_TRIM, REQ_FLUSH, REQ_STATUS };

struct nbdc_req {
    enum req_type type;
    void *buf;
    uint64_t len;
    uint64_t off;
    uint32_t flags;
    const char *context;     /* REQ_STATUS: which meta context to report */
    uint64_t st_len;         /* REQ_STATUS results */
    uint32_t st_flags;
    bool st_got;
    int ret;
    bool done;
    pthread_cond_t *waiter;  /* signalled when done */
    struct nbdc_req *next;
};

struct nbdc {
    struct bdev *bd;
    struct nbd_handle *h;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int efd;
    struct nbdc_req *queue, *queue_tail;
    bool quit;
    bool dead;
    char *dead_msg;
    bool can_zero, can_trim, can_flush, can_fua, has_alloc;
    char *bitmap_ctx;        /* "qemu:dirty-bitmap:NAME" when asked for */
    bool has_bitmap_ctx;
};

bool nbd_is_uri(const char *name)
{
    return !strncmp(name, "nbd://", 6) || !strncmp(name, "nbd+unix://", 11) ||
           !strncmp(name, "nbds://", 7) || !strncmp(name, "nbds+unix://", 12) ||
           !strncmp(name, "nbd+tcp://", 10);
}

static void fail_request(struct nbdc_req *r, int err)
{
    r->ret = -err;
    r->done = true;
    pthread_cond_signal(r->waiter);
}

static int complete_cb(void *opaque, int *error)
{
    struct nbdc_req *r = opaque;

    /* called from the I/O thread, with our lock held by it */
    r->ret = *error ? -*error : 0;
    r->done = true;
    pthread_cond_signal(r->waiter);
    return 1;
}

static int extent_cb(void *opaque, const char *ctx, uint64_t off, uint32_t *entries,
                     size_t n, int *error)
{
    struct nbdc_req *r = opaque;

    (void)off;
    (void)error;
    if (!r->st_got && n >= 2 && !strcmp(ctx, r->context)) {
        r->st_len = entries[0];
        r->st_flags = entries[1];
        r->st_got = true;
    }
    return 0;
}

/* Submit @r on the handle; called by the I/O thread. */
static void submit(struct nbdc *c, struct nbdc_req *r)
{
    nbd_completion_callback cb = { .callback = complete_cb, .user_data = r };
    int64_t cookie = -1;

    switch (r->type) {
    case REQ_READ:
        cookie = nbd_aio_pread(c->h, r->buf, r->len, r->off, cb, 0);
        break;
    case REQ_WRITE:
        cookie = nbd_aio_pwrite(c->h, r->buf, r->len, r->off, cb, r->flags);
        break;
    case REQ_ZERO:
        cookie = nbd_aio_zero(c->h, r->len, r->off, cb, r->flags);
        break;
    case REQ_TRIM:
        cookie = nbd_aio_trim(c->h, r->len, r->off, cb, 0);
        break;
    case REQ_FLUSH:
        cookie = nbd_aio_flush(c->h, cb, 0);
        break;
    case REQ_STATUS: {
        nbd_extent_callback ecb = { .callback = extent_cb, .user_data = r };
        cookie = nbd_aio_block_status(c->h, r->len, r->off, ecb, cb, 0);
        break;
    }
    }
    if (cookie < 0) {
        int e = nbd_get_errno();
        fail_request(r, e ? e : EIO);
    }
}

static void mark_dead(struct nbdc *c, const char *why)
{
    if (!c->dead) {
        c->dead = true;
        free(c->dead_msg);
        c->dead_msg = xasprintf("'%s': NBD server connection lost: %s", c->bd->filename,
                                why && *why ? why : "connection closed");
        bdev_set_error(c->bd, "%s", c->dead_msg);
    }
}

static void *io_thread(void *opaque)
{
    struct nbdc *c = opaque;

    pthread_mutex_lock(&c->lock);
    for (;;) {
        struct pollfd fds[2];
        unsigned dir;
        int fd, r;

        while (c->queue) {
            struct nbdc_req *req = c->queue;
            c->queue = req->next;
            if (!c->queue) {
                c->queue_tail = NULL;
            }
            req->next = NULL;
            if (c->dead) {
                fail_request(req, ENOTCONN);
            } else {
                submit(c, req);
            }
        }
        if (c->quit && !c->queue) {
            break;
        }
        if (c->dead && !nbd_aio_in_flight(c->h)) {
            /* wait for new requests (to fail them) or quit */
            pthread_cond_wait(&c->cond, &c->lock);
            continue;
        }
        fd = nbd_aio_get_fd(c->h);
        dir = nbd_aio_get_direction(c->h);
        fds[0].fd = fd;
        fds[0].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                        ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
        fds[0].revents = 0;
        fds[1].fd = c->efd;
        fds[1].events = POLLIN;
        fds[1].revents = 0;
        pthread_mutex_unlock(&c->lock);
        r = poll(fds, 2, 1000);
        pthread_mutex_lock(&c->lock);
        if (r < 0) {
            continue;
        }
        if (fds[1].revents & POLLIN) {
            uint64_t v;
            if (read(c->efd, &v, sizeof(v)) < 0) {
                /* nothing to do: the counter is reset anyway */
            }
        }
        if (fd < 0) {
            mark_dead(c, nbd_get_error());
            continue;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (nbd_aio_notify_read(c->h) < 0) {
                mark_dead(c, nbd_get_error());
            }
        }
        if (fds[0].revents & POLLOUT) {
            if (nbd_aio_notify_write(c->h) < 0) {
                mark_dead(c, nbd_get_error());
            }
        }
        if (nbd_aio_is_dead(c->h) > 0 || nbd_aio_is_closed(c->h) > 0) {
            mark_dead(c, nbd_get_error());
        }
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Queue @n requests at once and wait for all of them; the first error. */
static int run_reqs(struct nbdc *c, struct nbdc_req *r, size_t n)
{
    pthread_cond_t waiter;
    uint64_t one = 1;
    int ret = 0;

    pthread_cond_init(&waiter, NULL);
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        pthread_mutex_unlock(&c->lock);
        pthread_cond_destroy(&waiter);
        return -ENOTCONN;
    }
    for (size_t i = 0; i < n; i++) {
        r[i].done = false;
        r[i].waiter = &waiter;
        r[i].next = NULL;
        if (c->queue_tail) {
            c->queue_tail->next = &r[i];
        } else {
            c->queue = &r[i];
        }
        c->queue_tail = &r[i];
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    if (write(c->efd, &one, sizeof(one)) < 0) {
        /* the I/O thread wakes up within a second anyway */
    }
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < n; i++) {
        while (!r[i].done) {
            pthread_cond_wait(&waiter, &c->lock);
        }
        if (r[i].ret < 0 && !ret) {
            ret = r[i].ret;
        }
    }
    if (ret == -ENOTCONN || ret == -ESHUTDOWN || ret == -ECONNRESET || ret == -EPIPE) {
        mark_dead(c, strerror(-ret));
    }
    pthread_mutex_unlock(&c->lock);
    pthread_cond_destroy(&waiter);
    return ret;
}

/* Queue @r and wait for it. */
static int run_req(struct nbdc *c, struct nbdc_req *r)
{
    return run_reqs(c, r, 1);
}

/*
 * Connect and negotiate, giving up after BLOCKCTL_NBD_TIMEOUT seconds
 * (default 30) or when a signal asks to stop: a server that accepts the
 * connection but never answers (qemu-nbd serving another client, without
 * --shared) is an error, not a hang.
 */
static int nbdc_connect(struct nbdc *c, struct error **errp)
{
    const char *uri = c->bd->filename, *env = getenv("BLOCKCTL_NBD_TIMEOUT");
    double limit = 30, waited = 0;
    struct timespec t0, t1;

    if (env && *env) {
        char *end;
        double v = strtod(env, &end);
        if (!*end && v > 0) {
            limit = v;
        }
    }
    if (nbd_aio_connect_uri(c->h, uri) < 0) {
        error_setg(errp, "'%s': cannot connect: %s", uri, nbd_get_error());
        return -EIO;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (nbd_aio_is_connecting(c->h) > 0) {
        if (bdev_interrupted()) {
            error_setg(errp, "'%s': interrupted while connecting", uri);
            return -EINTR;
        }
        if (waited >= limit) {
            error_setg(errp, "'%s': the NBD server did not answer in %g s (is it serving "
                       "another client? qemu-nbd needs --shared=N for more than one)",
                       uri, limit);
            return -ETIMEDOUT;
        }
        if (nbd_poll(c->h, 200) < 0) {
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        waited = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    }
    if (nbd_aio_is_ready(c->h) <= 0) {
        const char *why;
        if (bdev_interrupted()) {
            error_setg(errp, "'%s': interrupted while connecting", uri);
            return -EINTR;
        }
        why = nbd_get_error();
        error_setg(errp, "'%s': cannot connect: %s", uri, why && *why ? why : "connection closed");
        return -EIO;
    }
    return 0;
}

static int nbdc_open(struct bdev *bd, unsigned flags, struct error **errp)
{
    struct nbdc *c = bd->opaque;
    int64_t size;

    c->bd = bd;
    c->efd = -1;
    pthread_once(&libnbd_once, libnbd_load);
    if (libnbd_error) {
        error_setg(errp, "'%s': %s", bd->filename, libnbd_error);
        return -ENOTSUP;
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->h = nbd_create();
    if (!c->h) {
        error_setg(errp, "'%s': %s", bd->filename, nbd_get_error());
        return -ENOMEM;
    }
    nbd_add_meta_context(c->h, "base:allocation");
    if (bd->nbd_bitmap) {
        c->bitmap_ctx = xasprintf("qemu:dirty-bitmap:%s", bd->nbd_bitmap);
    }
    if (c->bitmap_ctx) {
        nbd_add_meta_context(c->h, c->bitmap_ctx);
    }
    if (nbdc_connect(c, errp) < 0) {
        goto fail;
    }
    size = nbd_get_size(c->h);
    if (size < 0) {
        error_setg(errp, "'%s': %s", bd->filename, nbd_get_error());
        goto fail;
    }
    if ((flags & BDEV_O_RDWR) && nbd_is_read_only(c->h) > 0) {
        error_setg(errp, "'%s': the NBD export is read-only", bd->filename);
        goto fail;
    }
    bd->size = size;
    c->can_zero = nbd_can_zero(c->h) > 0;
    c->can_trim = nbd_can_trim(c->h) > 0;
    c->can_flush = nbd_can_flush(c->h) > 0;
    c->can_fua = nbd_can_fua(c->h) > 0;
    c->has_alloc = nbd_can_meta_context(c->h, "base:allocation") > 0;
    if (c->bitmap_ctx) {
        c->has_bitmap_ctx = nbd_can_meta_context(c->h, c->bitmap_ctx) > 0;
        if (!c->has_bitmap_ctx) {
            error_setg(errp, "'%s': the server offers no bitmap '%s' (meta context '%s')",
                       bd->filename, bd->nbd_bitmap, c->bitmap_ctx);
            goto fail;
        }
    }
    c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->efd < 0) {
        error_setg_errno(errp, errno, "'%s': eventfd", bd->filename);
        goto fail;
    }
    if (pthread_create(&c->thread, NULL, io_thread, c) != 0) {
        error_setg(errp, "'%s': cannot start the I/O thread", bd->filename);
        goto fail;
    }
    c->thread_started = true;
    return 0;

fail:
    if (c->efd >= 0) {
        close(c->efd);
    }
    nbd_close(c->h);
    c->h = NULL;
    free(c->bitmap_ctx);
    c->bitmap_ctx = NULL;
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    return -EIO;
}

static int nbdc_close(struct bdev *bd, struct error **errp)
{
    struct nbdc *c = bd->opaque;
    uint64_t one = 1;
    int ret = 0;

    if (!bd->read_only && c->can_flush && !c->dead && !(bd->flags & BDEV_O_UNORDERED)) {
        struct nbdc_req r = { .type = REQ_FLUSH };
        ret = run_req(c, &r);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': flush failed", bd->filename);
        }
    }
    if (c->thread_started) {
        pthread_mutex_lock(&c->lock);
        c->quit = true;
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
        if (write(c->efd, &one, sizeof(one)) < 0) {
            /* it polls with a timeout */
        }
        pthread_join(c->thread, NULL);
    }
    if (c->h && !c->dead) {
        nbd_shutdown(c->h, 0);
    }
    if (c->h) {
        nbd_close(c->h);
    }
    if (c->efd >= 0) {
        close(c->efd);
    }
    free(c->dead_msg);
    free(c->bitmap_ctx);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    return ret;
}

/*
 * Reads and writes go out as pieces of at most NBD_PIECE bytes, all in
 * flight at once: the server works on them in parallel.
 */
#define NBD_PIECE (512u << 10)
#define NBD_PIECES 64

static int nbdc_rw(struct bdev *bd, enum req_type t, void *buf, size_t len, uint64_t off,
                   uint32_t flags)
{
    struct nbdc *c = bd->opaque;
    struct nbdc_req r[NBD_PIECES];

    while (len) {
        size_t n = 0;
        int ret;

        memset(r, 0, sizeof(r));
        while (len && n < NBD_PIECES) {
            r[n].type = t;
            r[n].buf = buf;
            r[n].len = MIN(len, (size_t)NBD_PIECE);
            r[n].off = off;
            r[n].flags = flags;
            if (buf) {
                buf = (uint8_t *)buf + r[n].len;
            }
            off += r[n].len;
            len -= r[n].len;
            n++;
        }
        ret = run_reqs(c, r, n);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int nbdc_pread(struct bdev *bd, void *buf, size_t len, uint64_t off)
{
    return nbdc_rw(bd, REQ_READ, buf, len, off, 0);
}

static int nbdc_pwrite(struct bdev *bd, const void *buf, size_t len, uint64_t off,
                       unsigned flags)
{
    struct nbdc *c = bd->opaque;
    uint32_t f = ((flags & BDEV_REQ_FUA) && c->can_fua) ? LIBNBD_CMD_FLAG_FUA : 0;
    int ret = nbdc_rw(bd, REQ_WRITE, (void *)buf, len, off, f);

    if (ret == 0 && (flags & BDEV_REQ_FUA) && !c->can_fua && c->can_flush) {
        struct nbdc_req r = { .type = REQ_FLUSH };
        ret = run_req(c, &r);
    }
    return ret;
}

static int nbdc_pwrite_zeroes(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags)
{
    struct nbdc *c = bd->opaque;
    uint32_t f = 0;

    if (!c->can_zero) {
        return -ENOTSUP;
    }
    if (!(flags & BDEV_REQ_MAY_UNMAP)) {
        f |= LIBNBD_CMD_FLAG_NO_HOLE;
    }
    if ((flags & BDEV_REQ_FUA) && c->can_fua) {
        f |= LIBNBD_CMD_FLAG_FUA;
    }
    while (len) {
        uint64_t n = MIN(len, (uint64_t)NBD_MAX_STATUS);
        struct nbdc_req r = { .type = REQ_ZERO, .len = n, .off = off, .flags = f };
        int ret = run_req(c, &r);
        if (ret < 0) {
            return ret == -EOPNOTSUPP || ret == -EINVAL ? -ENOTSUP : ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static int nbdc_discard(struct bdev *bd, uint64_t off, uint64_t len)
{
    struct nbdc *c = bd->opaque;

    if (!c->can_trim) {
        return -ENOTSUP;
    }
    while (len) {
        uint64_t n = MIN(len, (uint64_t)NBD_MAX_STATUS);
        struct nbdc_req r = { .type = REQ_TRIM, .len = n, .off = off };
        int ret = run_req(c, &r);
        if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static int nbdc_flush(struct bdev *bd)
{
    struct nbdc *c = bd->opaque;
    struct nbdc_req r = { .type = REQ_FLUSH };

    if (!c->can_flush) {
        return 0;
    }
    return run_req(c, &r);
}

static int nbdc_block_status(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum,
                             uint64_t *map, unsigned *status)
{
    struct nbdc *c = bd->opaque;
    struct nbdc_req r = { .type = REQ_STATUS, .len = MIN(len, (uint64_t)NBD_MAX_STATUS),
                          .off = off, .context = "base:allocation" };
    int ret;

    *map = off;
    if (!c->has_alloc) {
        *pnum = len;
        *status = BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
        return 0;
    }
    ret = run_req(c, &r);
    if (ret < 0) {
        return ret;
    }
    if (!r.st_got || r.st_len == 0) {
        *pnum = MIN(len, (uint64_t)512);
        *status = BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
        return 0;
    }
    *pnum = MIN(len, r.st_len);
    *status = BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
    if (r.st_flags & LIBNBD_STATE_ZERO) {
        *status |= BDEV_BLOCK_ZERO;
    }
    if (!(r.st_flags & LIBNBD_STATE_HOLE)) {
        *status |= BDEV_BLOCK_DATA;
    }
    return 0;
}

int nbd_bitmap_status(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum, bool *dirty)
{
    struct nbdc *c = bd->opaque;
    struct nbdc_req r = { .type = REQ_STATUS, .len = MIN(len, (uint64_t)NBD_MAX_STATUS),
                          .off = off, .context = c->bitmap_ctx };
    int ret;

    if (!c->has_bitmap_ctx) {
        return -ENOTSUP;
    }
    ret = run_req(c, &r);
    if (ret < 0) {
        return ret;
    }
    if (!r.st_got || r.st_len == 0) {
        return -EIO;
    }
    *pnum = MIN(len, r.st_len);
    *dirty = r.st_flags & 1;
    return 0;
}

const struct format_driver nbd_driver = {
    .name = "nbd",
    .priv_size = sizeof(struct nbdc),
    .is_protocol = true,
    .open = nbdc_open,
    .close = nbdc_close,
    .pread = nbdc_pread,
    .pwrite = nbdc_pwrite,
    .pwrite_zeroes = nbdc_pwrite_zeroes,
    .discard = nbdc_discard,
    .flush = nbdc_flush,
    .block_status = nbdc_block_status,
};
