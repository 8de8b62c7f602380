/*
 * blockctl - the agent's NBD server: a connection's life
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Each connection has a reader thread (handshake, then requests, handed
 * to the worker pool) and, in the transmission phase, a writer thread.
 * A worker that finishes a request sends its reply itself with a
 * non-blocking sendmsg when nothing is queued before it; what the socket
 * does not take goes to the connection's reply queue, which the writer
 * thread drains.  So a client that does not read its replies never blocks
 * a worker: it only stops its own reader once its requests in flight
 * reach the limit.
 */
#include "lib/compiler.h"
#include "lib/nbdsrv/internal.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

/* --- input --- */

int conn_poll(struct nbd_conn *c, short events)
{
    for (;;) {
        struct pollfd pfd = { .fd = c->fd, .events = events };
        int timeout = -1, r;

        if (c->deadline_ms) {
            uint64_t now = nbdsrv_now_ms();
            if (now >= c->deadline_ms) {
                errno = ETIMEDOUT;
                return -1;
            }
            timeout = (int)MIN(c->deadline_ms - now, (uint64_t)INT_MAX);
        }
        r = poll(&pfd, 1, timeout);
        if (r > 0) {
            return 0;
        }
        if (r == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR) {
            return -1;
        }
    }
}

/* recv() at most @len bytes, at least one; 0 at end of file */
static ssize_t conn_recv(struct nbd_conn *c, void *buf, size_t len, bool all)
{
    if (c->tls) {
        return conn_tls_recv(c, buf, len);
    }
    for (;;) {
        ssize_t r;

        if (c->deadline_ms && conn_poll(c, POLLIN) < 0) {
            return -1;
        }
        r = recv(c->fd, buf, len, all && !c->deadline_ms ? MSG_WAITALL : 0);
        if (r >= 0 || errno != EINTR) {
            if (r == 0) {
                errno = 0;
            }
            return r;
        }
    }
}

int conn_read(struct nbd_conn *c, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len) {
        size_t avail = c->in_end - c->in_pos;
        ssize_t r;

        if (avail) {
            size_t n = MIN(avail, len);
            memcpy(p, c->in + c->in_pos, n);
            c->in_pos += n;
            p += n;
            len -= n;
            continue;
        }
        if (len >= sizeof(c->in) / 2) {
            /* large payloads go straight to their buffer */
            r = conn_recv(c, p, len, true);
            if (r <= 0) {
                return -1;
            }
            p += r;
            len -= (size_t)r;
            continue;
        }
        r = conn_recv(c, c->in, sizeof(c->in), false);
        if (r <= 0) {
            return -1;
        }
        c->in_pos = 0;
        c->in_end = (size_t)r;
    }
    return 0;
}

int conn_skip(struct nbd_conn *c, uint64_t len)
{
    while (len) {
        size_t avail = c->in_end - c->in_pos;
        ssize_t r;

        if (avail) {
            size_t n = (size_t)MIN((uint64_t)avail, len);
            c->in_pos += n;
            len -= n;
            continue;
        }
        r = conn_recv(c, c->in, sizeof(c->in), false);
        if (r <= 0) {
            return -1;
        }
        c->in_pos = 0;
        c->in_end = (size_t)r;
    }
    return 0;
}

int conn_write(struct nbd_conn *c, const void *buf, size_t len, bool more)
{
    const uint8_t *p = buf;

    if (c->tls) {
        return conn_tls_send(c, buf, len);
    }
    while (len) {
        ssize_t r = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT | (more ? MSG_MORE : 0));
        if (r > 0) {
            p += r;
            len -= (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (conn_poll(c, POLLOUT) < 0) {
                return -1;
            }
            continue;
        }
        return -1;
    }
    return 0;
}

/* --- requests --- */

void conn_wait_slot(struct nbd_conn *c)
{
    pthread_mutex_lock(&c->lock);
    while (c->in_flight >= c->srv->cfg.max_in_flight) {
        pthread_cond_wait(&c->cond, &c->lock);
    }
    pthread_mutex_unlock(&c->lock);
}

static void uncache(struct nbd_conn *c, struct nbd_req *r)
{
    c->cached_bytes -= r->cap;
    __atomic_sub_fetch(&c->srv->cached_bytes, r->cap, __ATOMIC_RELAXED);
}

void conn_req_reserve(struct nbd_req *req, size_t size)
{
    if (req->cap >= size) {
        return;
    }
    free(req->buf);
    req->cap = ALIGN_UP(size, (size_t)4096);
    req->buf = xmemalign(4096, req->cap);
}

struct nbd_req *conn_req_get(struct nbd_conn *c, size_t bufsize, size_t budget)
{
    struct nbd_req *req = NULL, **pp, **best = NULL;

    pthread_mutex_lock(&c->lock);
    while (c->in_flight_bytes && c->in_flight_bytes + budget > NBDSRV_CONN_BUDGET) {
        pthread_cond_wait(&c->cond, &c->lock);
    }
    c->in_flight++;
    c->in_flight_bytes += budget;
    /* a cached request whose buffer is large enough, else any */
    for (pp = &c->free_reqs; *pp; pp = &(*pp)->next) {
        if ((*pp)->cap >= bufsize) {
            best = pp;
            break;
        }
    }
    if (!best && c->free_reqs) {
        best = &c->free_reqs;
    }
    if (best) {
        req = *best;
        *best = req->next;
        uncache(c, req);
    }
    pthread_mutex_unlock(&c->lock);

    if (!req) {
        req = xzalloc(sizeof(*req));
    }
    req->conn = c;
    req->next = NULL;
    req->budget = budget;
    req->niov = 0;
    req->iov_done = 0;
    req->hdr_used = 0;
    if (bufsize) {
        conn_req_reserve(req, bufsize);
    }
    return req;
}

void conn_req_put(struct nbd_req *req)
{
    struct nbd_conn *c = req->conn;
    struct nbdsrv *srv = c->srv;

    pthread_mutex_lock(&c->lock);
    c->in_flight--;
    c->in_flight_bytes -= req->budget;
    if (req->cap) {
        size_t total = __atomic_load_n(&srv->cached_bytes, __ATOMIC_RELAXED);
        if (c->cached_bytes + req->cap > NBDSRV_CONN_CACHE ||
            total + req->cap > NBDSRV_TOTAL_CACHE) {
            free(req->buf);
            req->buf = NULL;
            req->cap = 0;
        } else {
            c->cached_bytes += req->cap;
            __atomic_add_fetch(&srv->cached_bytes, req->cap, __ATOMIC_RELAXED);
        }
    }
    req->next = c->free_reqs;
    c->free_reqs = req;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

/* --- output --- */

/* Advance @req's iovecs past @n sent bytes; returns the bytes not used. */
static size_t req_advance(struct nbd_req *req, size_t n)
{
    while (n && req->iov_done < req->niov) {
        struct iovec *v = &req->iov[req->iov_done];
        if (n < v->iov_len) {
            v->iov_base = (uint8_t *)v->iov_base + n;
            v->iov_len -= n;
            return 0;
        }
        n -= v->iov_len;
        req->iov_done++;
    }
    /* skip empty iovecs */
    while (req->iov_done < req->niov && !req->iov[req->iov_done].iov_len) {
        req->iov_done++;
    }
    return n;
}

static bool req_sent(const struct nbd_req *req)
{
    return req->iov_done >= req->niov;
}

/*
 * Send as much of the queue starting at @head as the socket takes without
 * blocking.  Returns 0 (all sent, or the socket is full) or -1 on an error.
 */
static int send_some(struct nbd_conn *c, struct nbd_req *head)
{
    struct iovec iov[256];

    for (;;) {
        struct msghdr msg = { .msg_iov = iov };
        size_t n = 0, left;
        ssize_t r;

        while (head && req_sent(head)) {
            head = head->next;
        }
        if (!head) {
            return 0;
        }
        for (struct nbd_req *q = head; q && n < ARRAY_SIZE(iov); q = q->next) {
            for (unsigned i = q->iov_done; i < q->niov && n < ARRAY_SIZE(iov); i++) {
                iov[n++] = q->iov[i];
            }
        }
        msg.msg_iovlen = n;
        r = sendmsg(c->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        if (r == 0) {
            return 0;
        }
        left = (size_t)r;
        while (head && left) {
            left = req_advance(head, left);
            if (!req_sent(head)) {
                break;
            }
            head = head->next;
        }
    }
}

void conn_send_reply(struct nbd_req *req)
{
    struct nbd_conn *c = req->conn;

    req->next = NULL;
    req_advance(req, 0);
    pthread_mutex_lock(&c->send_lock);
    if (c->send_dead) {
        pthread_mutex_unlock(&c->send_lock);
        conn_req_put(req);
        return;
    }
    /* with TLS, only the writer thread sends (GnuTLS: one sender at a time) */
    if (!c->outq && !c->tls) {
        if (send_some(c, req) < 0) {
            c->send_dead = true;
            pthread_mutex_unlock(&c->send_lock);
            shutdown(c->fd, SHUT_RDWR);
            conn_req_put(req);
            return;
        }
        if (req_sent(req)) {
            pthread_mutex_unlock(&c->send_lock);
            conn_req_put(req);
            return;
        }
    }
    *c->outq_tail = req;
    c->outq_tail = &req->next;
    pthread_cond_signal(&c->send_cond);
    pthread_mutex_unlock(&c->send_lock);
}

/*
 * TLS: send the replies of queue @q (the writer thread, without the send
 * lock), blocking.  Pieces are gathered into records of NBDSRV_TLS_STAGE
 * bytes, so that a header and a small payload go as one record; large
 * payloads go straight from their buffers.
 */
static int tls_send_queue(struct nbd_conn *c, struct nbd_req *q)
{
    size_t staged = 0;

    if (!c->tls_stage) {
        c->tls_stage = xmalloc(NBDSRV_TLS_STAGE);
    }
    for (; q; q = q->next) {
        for (unsigned i = q->iov_done; i < q->niov; i++) {
            const uint8_t *p = q->iov[i].iov_base;
            size_t n = q->iov[i].iov_len;

            while (n) {
                size_t k;

                if (!staged && n >= NBDSRV_TLS_STAGE) {
                    if (conn_tls_send(c, p, n) < 0) {
                        return -1;
                    }
                    break;
                }
                k = MIN(n, NBDSRV_TLS_STAGE - staged);
                memcpy(c->tls_stage + staged, p, k);
                staged += k;
                p += k;
                n -= k;
                if (staged == NBDSRV_TLS_STAGE) {
                    if (conn_tls_send(c, c->tls_stage, staged) < 0) {
                        return -1;
                    }
                    staged = 0;
                }
            }
        }
    }
    return staged ? conn_tls_send(c, c->tls_stage, staged) : 0;
}

/* The writer thread of a TLS connection: it sends every reply (workers
 * only queue them), the queue taken whole each time. */
static void writer_tls(struct nbd_conn *c)
{
    pthread_mutex_lock(&c->send_lock);
    for (;;) {
        struct nbd_req *q;
        bool dead;

        while (!c->outq && !c->writer_stop) {
            pthread_cond_wait(&c->send_cond, &c->send_lock);
        }
        if (!c->outq) {
            break;
        }
        q = c->outq;
        c->outq = NULL;
        c->outq_tail = &c->outq;
        dead = c->send_dead;
        pthread_mutex_unlock(&c->send_lock);
        if (!dead && tls_send_queue(c, q) < 0) {
            pthread_mutex_lock(&c->send_lock);
            c->send_dead = true;
            pthread_mutex_unlock(&c->send_lock);
            shutdown(c->fd, SHUT_RDWR);
        }
        while (q) {
            struct nbd_req *r = q;
            q = r->next;
            conn_req_put(r);
        }
        pthread_mutex_lock(&c->send_lock);
    }
    pthread_mutex_unlock(&c->send_lock);
}

static void *writer_main(void *opaque)
{
    struct nbd_conn *c = opaque;

    if (c->tls) {
        writer_tls(c);
        return NULL;
    }
    pthread_mutex_lock(&c->send_lock);
    for (;;) {
        struct nbd_req *done = NULL, **done_tail = &done;
        bool blocked = false;

        while (!c->outq && !c->writer_stop) {
            pthread_cond_wait(&c->send_cond, &c->send_lock);
        }
        if (!c->outq) {
            break;
        }
        if (!c->send_dead && send_some(c, c->outq) < 0) {
            c->send_dead = true;
            shutdown(c->fd, SHUT_RDWR);
        }
        /* take what is sent (or everything, when sending failed) off the queue */
        while (c->outq && (c->send_dead || req_sent(c->outq))) {
            struct nbd_req *r = c->outq;
            c->outq = r->next;
            r->next = NULL;
            *done_tail = r;
            done_tail = &r->next;
        }
        if (!c->outq) {
            c->outq_tail = &c->outq;
        } else {
            blocked = true;
        }
        pthread_mutex_unlock(&c->send_lock);
        while (done) {
            struct nbd_req *r = done;
            done = r->next;
            conn_req_put(r);
        }
        if (blocked) {
            struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
            while (poll(&pfd, 1, -1) < 0 && errno == EINTR) {
            }
        }
        pthread_mutex_lock(&c->send_lock);
    }
    pthread_mutex_unlock(&c->send_lock);
    return NULL;
}

void conn_abort(struct nbd_conn *c)
{
    shutdown(c->fd, SHUT_RDWR);
}

/* --- a connection's life --- */

static void *conn_main(void *opaque)
{
    struct nbd_conn *c = opaque;
    struct nbdsrv *srv = c->srv;
    struct nbd_export *exp;

    c->deadline_ms = nbdsrv_now_ms() + (uint64_t)srv->cfg.handshake_timeout * 1000;
    if (nbd_handshake(c) == 0) {
        int r;

        pthread_mutex_lock(&srv->lock);
        c->in_transmission = true;
        if (srv->stopping) {
            shutdown(c->fd, SHUT_RDWR);
        }
        pthread_mutex_unlock(&srv->lock);
        c->deadline_ms = 0;
        r = nbdsrv_spawn(&c->writer, writer_main, c);
        if (r) {
            nbdsrv_log(srv, "client %s: cannot start its writer thread: %s", c->peer,
                       strerror(r));
        } else {
            c->writer_started = true;
            nbd_transmission(c);
        }
        /* let the requests in flight finish and their replies go out */
        pthread_mutex_lock(&c->lock);
        while (c->in_flight) {
            pthread_cond_wait(&c->cond, &c->lock);
        }
        pthread_mutex_unlock(&c->lock);
        if (c->writer_started) {
            pthread_mutex_lock(&c->send_lock);
            c->writer_stop = true;
            pthread_cond_signal(&c->send_cond);
            pthread_mutex_unlock(&c->send_lock);
            pthread_join(c->writer, NULL);
        }
    }
    conn_tls_end(c, !c->send_dead);
    exp = c->exp;
    meta_ctx_clear(c);
    free(c->meta_export);
    c->meta_export = NULL;
    nbdsrv_log(srv, "client %s disconnected", c->peer);

    pthread_mutex_lock(&srv->lock);
    close(c->fd);
    c->fd = -1;
    c->exp = NULL;
    pthread_mutex_unlock(&srv->lock);
    if (exp) {
        nbdsrv_export_unref(exp);
    }
    pthread_mutex_lock(&srv->lock);
    c->done = true;
    srv->nconns--;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
    nbdsrv_wake(srv);
    return NULL;
}

int conn_start(struct nbdsrv *srv, int fd, const char *peer)
{
    struct nbd_conn *c;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int r;

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        } else if (ss.ss_family == AF_UNIX) {
            /*
             * Room for a few large replies, so that a worker's send seldom
             * leaves a rest for the writer thread (TCP tunes itself).
             */
            int size = NBDSRV_UNIX_SNDBUF;
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        }
    }

    pthread_mutex_lock(&srv->lock);
    if (srv->stopping) {
        pthread_mutex_unlock(&srv->lock);
        close(fd);
        return -ESHUTDOWN;
    }
    if (srv->nconns >= srv->cfg.max_clients) {
        unsigned n = srv->nconns;
        pthread_mutex_unlock(&srv->lock);
        close(fd);
        nbdsrv_log(srv, "client %s refused: %u clients already connected", peer, n);
        return -EBUSY;
    }
    c = xzalloc(sizeof(*c));
    c->srv = srv;
    c->fd = fd;
    c->peer = xstrdup(peer);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    pthread_mutex_init(&c->send_lock, NULL);
    pthread_cond_init(&c->send_cond, NULL);
    c->outq_tail = &c->outq;
    nbdsrv_log(srv, "client %s connected", peer);
    /*
     * Spawned under the lock, so that the thread cannot end (and the
     * reaper cannot look at c->reader) before both are set.
     */
    srv->nconns++;
    c->next = srv->conns;
    srv->conns = c;
    r = nbdsrv_spawn(&c->reader, conn_main, c);
    if (r) {
        srv->nconns--;
        srv->conns = c->next;
        pthread_mutex_unlock(&srv->lock);
        nbdsrv_log(srv, "client %s refused: cannot start a thread: %s", peer, strerror(r));
        close(fd);
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->send_lock);
        pthread_cond_destroy(&c->send_cond);
        free(c->peer);
        free(c);
        return -r;
    }
    pthread_mutex_unlock(&srv->lock);
    return 0;
}
