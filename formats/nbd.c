/*
 * blockctl - images on an NBD server, through libnbd
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * One connection per image.  Requests from any thread are queued to an I/O
 * thread that owns the libnbd handle: it submits them with the aio calls,
 * so many are in flight at once, and polls the socket, so a server that
 * goes away fails every request with an error naming the URI instead of
 * hanging.
 *
 * Nothing waits for ever: every request has a deadline, BLOCKCTL_NBD_TIMEOUT
 * seconds (default 30) from when it was queued; the I/O thread polls until
 * the oldest one's, and when a request misses it the connection is dead:
 * every request in flight and every later one fails with EIO and an error
 * naming the URI (a server that stopped answering may still act on what it
 * got, so nothing is retried).  The I/O thread also polls
 * bdev_interrupt_fd(): on SIGINT/SIGTERM it fails every request with
 * ECANCELED at once, and the connection is dead too.  Connecting and
 * disconnecting have the same limits.
 *
 * A dead connection is never driven again (only nbd_close() touches it):
 * libnbd would write replies into the buffers of requests whose callers
 * have already returned.
 */
#include "lib/compiler.h"
#include "formats/format.h"
#include "lib/tlsfiles.h"

#include <dlfcn.h>
#include <errno.h>
#include <libnbd.h>
#include <limits.h>
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
    X(nbd_aio_get_direction) X(nbd_aio_get_fd) X(nbd_aio_disconnect)              \
    X(nbd_aio_is_closed) X(nbd_aio_is_dead) X(nbd_aio_notify_read)                \
    X(nbd_aio_notify_write) X(nbd_aio_pread) X(nbd_aio_pwrite) X(nbd_aio_trim)    \
    X(nbd_aio_zero) X(nbd_aio_connect_uri) X(nbd_aio_is_connecting)               \
    X(nbd_can_flush) X(nbd_can_fua) X(nbd_can_meta_context)                       \
    X(nbd_can_trim) X(nbd_can_zero) X(nbd_close) X(nbd_aio_is_ready) X(nbd_create) \
    X(nbd_get_errno) X(nbd_get_error) X(nbd_get_size) X(nbd_is_read_only)         \
    X(nbd_set_tls_certificates) X(nbd_set_tls_psk_file) X(nbd_set_tls_username)    \
    X(nbd_supports_tls)

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
#define nbd_aio_disconnect p_nbd_aio_disconnect
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
#define nbd_set_tls_certificates p_nbd_set_tls_certificates
#define nbd_set_tls_psk_file p_nbd_set_tls_psk_file
#define nbd_set_tls_username p_nbd_set_tls_username
#define nbd_supports_tls p_nbd_supports_tls

#define NBD_MAX_REQ (32u << 20)
#define NBD_MAX_STATUS (1u << 30)

enum req_type { REQ_READ, REQ_WRITE, REQ_ZERO, REQ_TRIM, REQ_FLUSH, REQ_STATUS };

struct nbdc;

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
    struct nbdc *c;
    int64_t start;           /* when it was queued (ns): its deadline counts from there */
    pthread_cond_t *waiter;  /* signalled when done */
    struct nbdc_req *next;   /* in the queue of requests to submit */
    struct nbdc_req *older, *newer;  /* in the list of unfinished requests */
};

struct nbdc {
    struct bdev *bd;
    struct nbd_handle *h;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int efd;                 /* wakes the I/O thread from poll() */
    bool polling;            /* the I/O thread is in poll() (or about to be) */
    bool kicked;             /* ... and efd was written since */
    struct nbdc_req *queue, *queue_tail;   /* not submitted yet */
    struct nbdc_req *oldest, *newest;      /* every unfinished request, by age */
    int64_t timeout;         /* ns: BLOCKCTL_NBD_TIMEOUT */
    double timeout_s;
    bool quit;
    bool dead;               /* never driven again: see the top of the file */
    int dead_err;            /* what later requests fail with */
    char *dead_why;
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

/* --- TLS (nbds://) --- */

static char *tls_creds, *tls_psk;
static bool tls_configured;

void nbd_tls_configure(const char *creds_dir, const char *psk_file)
{
    free(tls_creds);
    free(tls_psk);
    tls_creds = creds_dir ? xstrdup(creds_dir) : NULL;
    tls_psk = psk_file ? xstrdup(psk_file) : NULL;
    tls_configured = creds_dir || psk_file;
}

static bool is_tls_uri(const char *uri)
{
    return !strncmp(uri, "nbds://", 7) || !strncmp(uri, "nbds+unix://", 12);
}

static const char *env_path(const char *name)
{
    const char *v = getenv(name);

    return v && *v ? v : NULL;
}

/* Give handle @h the credentials, for a TLS URI: 0 or -1 (said). */
static int tls_setup(struct nbdc *c, struct error **errp)
{
    const char *uri = c->bd->filename;
    const char *creds = tls_configured ? tls_creds : env_path("BLOCKCTL_TLS_CREDS");
    const char *psk = tls_configured ? tls_psk : env_path("BLOCKCTL_TLS_PSK");
    struct error *err = NULL;

    if (!is_tls_uri(uri)) {
        return 0;
    }
    if (nbd_supports_tls(c->h) <= 0) {
        error_setg(errp, "'%s': this libnbd was built without TLS", uri);
        return -1;
    }
    if (creds && psk) {
        error_setg(errp, "'%s': both x509 credentials '%s' and a PSK file '%s' are given "
                   "(BLOCKCTL_TLS_CREDS, BLOCKCTL_TLS_PSK): use one", uri, creds, psk);
        return -1;
    }
    if (creds) {
        if (tls_x509_dir_check(creds, false, &err) < 0 ||
            nbd_set_tls_certificates(c->h, creds) < 0) {
            error_setg(errp, "'%s': %s", uri, err ? err->msg : nbd_get_error());
            error_free(err);
            return -1;
        }
    } else if (psk) {
        CLEANUP_FREE char *user = NULL;

        if (tls_psk_file_check(psk, &user, &err) < 0 || nbd_set_tls_psk_file(c->h, psk) < 0 ||
            nbd_set_tls_username(c->h, user) < 0) {
            error_setg(errp, "'%s': %s", uri, err ? err->msg : nbd_get_error());
            error_free(err);
            return -1;
        }
    }
    return 0;
}

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* BLOCKCTL_NBD_TIMEOUT, in seconds (default 30) */
static double nbd_timeout(void)
{
    const char *env = getenv("BLOCKCTL_NBD_TIMEOUT");

    if (env && *env) {
        char *end;
        double v = strtod(env, &end);
        if (!*end && v > 0 && v < 1e9) {
            return v;
        }
    }
    return 30;
}

/* @r is done (@err: 0 or an errno); called with c->lock held. */
static void finish(struct nbdc_req *r, int err)
{
    struct nbdc *c = r->c;

    if (r->older) {
        r->older->newer = r->newer;
    } else {
        c->oldest = r->newer;
    }
    if (r->newer) {
        r->newer->older = r->older;
    } else {
        c->newest = r->older;
    }
    r->older = r->newer = NULL;
    r->ret = err ? -err : 0;
    r->done = true;
    pthread_cond_signal(r->waiter);
}

static int complete_cb(void *opaque, int *error)
{
    /* called from the I/O thread, with our lock held by it */
    finish(opaque, *error);
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
        finish(r, e ? e : EIO);
    }
}

/*
 * The connection is dead (@why, owned by it now): fail every unfinished
 * request with @err, and every later one.  Called with c->lock held.
 */
static void kill_conn(struct nbdc *c, int err, char *why)
{
    if (c->dead) {
        free(why);
    } else {
        c->dead = true;
        c->dead_err = err;
        c->dead_why = why;
        bdev_set_error(c->bd, "'%s': %s", c->bd->filename, why);
    }
    c->queue = c->queue_tail = NULL;
    while (c->oldest) {
        finish(c->oldest, c->dead_err);
    }
}

/*
 * libnbd's last error in plain words (allocated): without the names of
 * its functions and internal steps ("nbd_aio_notify_read: recv: ..."),
 * which say nothing to the person reading, and with its few stock
 * phrases said plainly.
 */
static char *plain_error(void)
{
    static const char *const steps[] = { "connect: ", "recv: ", "send: ", "handshake: ",
                                         "poll: " };
    static const struct {
        const char *libnbd, *plain;
    } phrases[] = {
        { "server disconnected unexpectedly", "server closed the connection" },
        { "could not connect to remote host: ", "" },
    };
    const char *e = nbd_get_error();
    char *out, *p;
    bool again = true;

    if (!e || !*e) {
        return xstrdup("server closed the connection");
    }
    while (again) {
        size_t n = strspn(e, "abcdefghijklmnopqrstuvwxyz_");
        again = false;
        if (!strncmp(e, "nbd_", 4) && !strncmp(e + n, ": ", 2)) {
            e += n + 2;
            again = true;
        }
        for (size_t i = 0; i < ARRAY_SIZE(steps); i++) {
            if (!strncmp(e, steps[i], strlen(steps[i]))) {
                e += strlen(steps[i]);
                again = true;
            }
        }
    }
    out = xstrdup(e);
    for (size_t i = 0; i < ARRAY_SIZE(phrases); i++) {
        p = strstr(out, phrases[i].libnbd);
        if (p) {
            /* "HOST:PORT: could not connect...": the URI names the host */
            char *from = phrases[i].plain[0] ? p : out;
            char *j = xasprintf("%.*s%s%s", (int)(from - out), out, phrases[i].plain,
                                p + strlen(phrases[i].libnbd));
            free(out);
            out = j;
        }
    }
    /* "server has no export named 'x': No such file or directory" */
    p = strstr(out, "': No such file or directory");
    if (p && strstr(out, "no export named '")) {
        p[1] = '\0';
    }
    return out;
}

static char *lost_why(void)
{
    char *e = plain_error();
    char *why = xasprintf("NBD server connection lost: %s", e);

    free(e);
    return why;
}

static void *io_thread(void *opaque)
{
    struct nbdc *c = opaque;
    int ifd = bdev_interrupt_fd();

    pthread_mutex_lock(&c->lock);
    for (;;) {
        struct pollfd fds[3];
        unsigned dir;
        int fd, r, ms = -1, nfds = 2;

        if (!c->dead && bdev_interrupted()) {
            kill_conn(c, ECANCELED, xstrdup("interrupted"));
        }
        while (c->queue) {
            struct nbdc_req *req = c->queue;
            c->queue = req->next;
            if (!c->queue) {
                c->queue_tail = NULL;
            }
            req->next = NULL;
            submit(c, req);
        }
        if (c->dead) {
            /* run_reqs() fails new requests by itself: wait to quit */
            if (c->quit) {
                break;
            }
            pthread_cond_wait(&c->cond, &c->lock);
            continue;
        }
        if (c->quit && !c->oldest) {
            break;
        }
        if (c->oldest) {
            int64_t left = c->oldest->start + c->timeout - now_ns();
            if (left <= 0) {
                kill_conn(c, EIO, xasprintf("no reply from the server in %g s", c->timeout_s));
                continue;
            }
            ms = (int)MIN((left + 999999) / 1000000, (int64_t)INT_MAX);
            if (ifd < 0) {
                /* only the flag tells of an interrupt: look at it now and then */
                ms = MIN(ms, 1000);
            }
        }
        fd = nbd_aio_get_fd(c->h);
        if (fd < 0) {
            kill_conn(c, EIO, lost_why());
            continue;
        }
        dir = nbd_aio_get_direction(c->h);
        fds[0].fd = fd;
        fds[0].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                        ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
        fds[0].revents = 0;
        fds[1].fd = c->efd;
        fds[1].events = POLLIN;
        fds[1].revents = 0;
        if (ifd >= 0) {
            fds[2].fd = ifd;
            fds[2].events = POLLIN;
            fds[2].revents = 0;
            nfds = 3;
        }
        c->polling = true;
        pthread_mutex_unlock(&c->lock);
        r = poll(fds, nfds, ms);
        pthread_mutex_lock(&c->lock);
        c->polling = false;
        c->kicked = false;
        if (r <= 0) {
            continue;
        }
        if (fds[1].revents & POLLIN) {
            uint64_t v;
            if (read(c->efd, &v, sizeof(v)) < 0) {
                /* nothing to do: the counter is reset anyway */
            }
        }
        if (nfds > 2 && fds[2].revents) {
            kill_conn(c, ECANCELED, xstrdup("interrupted"));
            continue;
        }
        if (fds[0].revents & POLLNVAL) {
            kill_conn(c, EIO, lost_why());
            continue;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (nbd_aio_notify_read(c->h) < 0) {
                kill_conn(c, EIO, lost_why());
                continue;
            }
        }
        if (fds[0].revents & POLLOUT) {
            if (nbd_aio_notify_write(c->h) < 0) {
                kill_conn(c, EIO, lost_why());
                continue;
            }
        }
        if (nbd_aio_is_dead(c->h) > 0 || nbd_aio_is_closed(c->h) > 0) {
            kill_conn(c, EIO, lost_why());
        }
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Queue @n requests at once and wait for all of them; the first error. */
static int run_reqs(struct nbdc *c, struct nbdc_req *r, size_t n)
{
    pthread_cond_t waiter;
    bool kick = false;
    int64_t now;
    int ret = 0;

    if (bdev_interrupted()) {
        return -ECANCELED;
    }
    pthread_cond_init(&waiter, NULL);
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        ret = -c->dead_err;
        pthread_mutex_unlock(&c->lock);
        pthread_cond_destroy(&waiter);
        return ret;
    }
    now = now_ns();
    for (size_t i = 0; i < n; i++) {
        r[i].done = false;
        r[i].c = c;
        r[i].start = now;
        r[i].waiter = &waiter;
        r[i].next = NULL;
        if (c->queue_tail) {
            c->queue_tail->next = &r[i];
        } else {
            c->queue = &r[i];
        }
        c->queue_tail = &r[i];
        r[i].older = c->newest;
        r[i].newer = NULL;
        if (c->newest) {
            c->newest->newer = &r[i];
        } else {
            c->oldest = &r[i];
        }
        c->newest = &r[i];
    }
    /* a busy I/O thread sees the queue before it polls again */
    if (c->polling && !c->kicked) {
        c->kicked = kick = true;
    }
    pthread_mutex_unlock(&c->lock);
    if (kick) {
        uint64_t one = 1;
        if (write(c->efd, &one, sizeof(one)) < 0) {
            /* cannot fail: the counter is far from full */
        }
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
    pthread_mutex_unlock(&c->lock);
    pthread_cond_destroy(&waiter);
    return ret;
}

/* Queue @r and wait for it. */
static int run_req(struct nbdc *c, struct nbdc_req *r)
{
    return run_reqs(c, r, 1);
}

static int is_disconnecting(struct nbd_handle *h)
{
    return nbd_aio_is_closed(h) <= 0 && nbd_aio_is_dead(h) <= 0;
}

/*
 * Drive the handle from this thread (no I/O thread runs) while @busy(h),
 * for at most the timeout: 0, -ETIMEDOUT, -ECANCELED (SIGINT/SIGTERM) or
 * -EIO (libnbd failed: nbd_get_error() says why).
 */
static int drive(struct nbdc *c, int (*busy)(struct nbd_handle *))
{
    int64_t deadline = now_ns() + c->timeout;
    int ifd = bdev_interrupt_fd();

    while (busy(c->h) > 0) {
        struct pollfd fds[2];
        int fd = nbd_aio_get_fd(c->h), nfds = 1, ms;
        unsigned dir = nbd_aio_get_direction(c->h);
        int64_t left = deadline - now_ns();

        if (bdev_interrupted()) {
            return -ECANCELED;
        }
        if (left <= 0) {
            return -ETIMEDOUT;
        }
        if (fd < 0) {
            return -EIO;
        }
        ms = (int)MIN((left + 999999) / 1000000, (int64_t)INT_MAX);
        fds[0].fd = fd;
        fds[0].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                        ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
        fds[0].revents = 0;
        if (ifd >= 0) {
            fds[1].fd = ifd;
            fds[1].events = POLLIN;
            fds[1].revents = 0;
            nfds = 2;
        } else {
            ms = MIN(ms, 250);
        }
        if (poll(fds, nfds, ms) <= 0) {
            continue;
        }
        if (nfds > 1 && fds[1].revents) {
            return -ECANCELED;
        }
        if (fds[0].revents & POLLNVAL) {
            return -EIO;
        }
        /* a hang-up is told to the side libnbd waits on: while it
         * connects that is writing, and a read there is invalid */
        if ((fds[0].revents & POLLIN ||
             ((fds[0].revents & (POLLHUP | POLLERR)) && (dir & LIBNBD_AIO_DIRECTION_READ))) &&
            nbd_aio_notify_read(c->h) < 0) {
            return -EIO;
        }
        if ((fds[0].revents & POLLOUT ||
             ((fds[0].revents & (POLLHUP | POLLERR)) && !(dir & LIBNBD_AIO_DIRECTION_READ))) &&
            nbd_aio_notify_write(c->h) < 0) {
            return -EIO;
        }
    }
    return 0;
}

/* What a TLS failure libnbd reports (@why) may mean, said after it. */
static const char *tls_failure_hint(const char *uri, const char *why)
{
    if (!why || !is_tls_uri(uri)) {
        return strstr(why ? why : "", "requires TLS") ? " (use nbds://)" : "";
    }
    if (strstr(why, "certificate verification")) {
        return " (the server's certificate is not signed by our ca-cert.pem, or not for "
               "this host)";
    }
    if (strstr(why, "gnutls")) {
        return " (the server refused the TLS session: our certificate, key or PSK?)";
    }
    return "";
}

/*
 * Connect and negotiate, giving up after the timeout or when a signal asks
 * to stop: a server that accepts the connection but never answers
 * (qemu-nbd serving another client, without --shared) is an error, not a
 * hang.
 */
static int nbdc_connect(struct nbdc *c, struct error **errp)
{
    const char *uri = c->bd->filename;
    int ret;

    if (nbd_aio_connect_uri(c->h, uri) < 0) {
        char *e = plain_error();
        error_setg(errp, "cannot reach %s: %s", uri, e);
        free(e);
        return -EIO;
    }
    ret = drive(c, nbd_aio_is_connecting);
    if (ret == -ECANCELED) {
        error_setg(errp, "'%s': interrupted while connecting", uri);
        return ret;
    }
    if (ret == -ETIMEDOUT) {
        error_setg(errp, "'%s': the NBD server did not answer in %g s (is it serving "
                   "another client? qemu-nbd needs --shared=N for more than one)",
                   uri, c->timeout_s);
        return ret;
    }
    if (ret < 0 || nbd_aio_is_ready(c->h) <= 0) {
        const char *why = nbd_get_error();
        char *e = plain_error();
        error_setg(errp, "cannot reach %s: %s%s", uri, e, tls_failure_hint(uri, why));
        free(e);
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
    c->timeout_s = nbd_timeout();
    c->timeout = (int64_t)(c->timeout_s * 1e9);
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
    if (tls_setup(c, errp) < 0 || nbdc_connect(c, errp) < 0) {
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
    bool dead;
    int ret = 0;

    pthread_mutex_lock(&c->lock);
    dead = c->dead;
    pthread_mutex_unlock(&c->lock);
    if (!bd->read_only && c->can_flush && !dead && !bdev_interrupted() &&
        !(bd->flags & BDEV_O_UNORDERED)) {
        struct nbdc_req r = { .type = REQ_FLUSH };
        ret = run_req(c, &r);
        if (ret < 0) {
            pthread_mutex_lock(&c->lock);
            error_setg(errp, "'%s': flush failed: %s", bd->filename,
                       c->dead_why ? c->dead_why : strerror(-ret));
            pthread_mutex_unlock(&c->lock);
        }
    }
    if (c->thread_started) {
        pthread_mutex_lock(&c->lock);
        c->quit = true;
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
        if (write(c->efd, &one, sizeof(one)) < 0) {
            /* cannot fail: the counter is far from full */
        }
        pthread_join(c->thread, NULL);
    }
    if (c->h && !c->dead && !bdev_interrupted()) {
        /* tell the server, but wait no longer than for any request */
        if (nbd_aio_disconnect(c->h, 0) == 0) {
            drive(c, is_disconnecting);
        }
    }
    if (c->h) {
        nbd_close(c->h);
    }
    if (c->efd >= 0) {
        close(c->efd);
    }
    free(c->dead_why);
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
