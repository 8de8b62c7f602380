/*
 * blockctl - the agent's NBD server: the transmission phase
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The reader thread checks each request and hands it to the worker pool;
 * a worker runs it on the disk and builds the reply in the request
 * (headers in req->hdr, data in req->buf), which goes out with one
 * sendmsg when the socket takes it.
 */
#include "lib/compiler.h"
#include "lib/nbdsrv/internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* --- building replies --- */

static void add_iov(struct nbd_req *req, void *p, size_t len)
{
    assert(req->niov < NBDSRV_REQ_IOV);
    req->iov[req->niov].iov_base = p;
    req->iov[req->niov].iov_len = len;
    req->niov++;
}

/* Room for @n header bytes in req->hdr, added as an iovec of their own. */
static uint8_t *add_hdr(struct nbd_req *req, size_t n)
{
    uint8_t *p = req->hdr + req->hdr_used;

    assert(req->hdr_used + n <= sizeof(req->hdr));
    req->hdr_used += n;
    add_iov(req, p, n);
    return p;
}

static void put_simple(struct nbd_req *req, uint32_t err)
{
    uint8_t *h = add_hdr(req, NBD_SIMPLE_REPLY_SIZE);

    put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
    put_be32(h + 4, err);
    put_be64(h + 8, req->cookie);
}

/* A structured chunk header followed by @extra bytes of its payload (in
 * the same iovec); returns where those go. */
static uint8_t *put_chunk(struct nbd_req *req, uint16_t flags, uint16_t type, uint32_t len,
                          size_t extra)
{
    uint8_t *h = add_hdr(req, NBD_CHUNK_HEADER_SIZE + extra);

    put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
    put_be16(h + 4, flags);
    put_be16(h + 6, type);
    put_be64(h + 8, req->cookie);
    put_be32(h + 16, len);
    return h + NBD_CHUNK_HEADER_SIZE;
}

static void reply_reset(struct nbd_req *req)
{
    req->niov = 0;
    req->iov_done = 0;
    req->hdr_used = 0;
}

static uint32_t nbd_errno(int err)
{
    switch (err) {
    case EPERM:
    case EROFS:
        return NBD_EPERM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EINVAL:
        return NBD_EINVAL;
    case ENOMEM:
        return NBD_ENOMEM;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

/* Answer @req with error @err (a positive errno) and send it. */
static void reply_error(struct nbd_req *req, int err, const char *msg)
{
    struct nbd_conn *c = req->conn;

    reply_reset(req);
    if (c->structured) {
        size_t n = MIN(strlen(msg), (size_t)200);
        uint8_t *p = put_chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                               (uint32_t)(6 + n), 6 + n);
        put_be32(p, nbd_errno(err));
        put_be16(p + 4, (uint16_t)n);
        memcpy(p + 6, msg, n);
    } else {
        put_simple(req, nbd_errno(err));
    }
    conn_send_reply(req);
}

static void reply_status(struct nbd_req *req, int ret, const char *what)
{
    if (ret < 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "%s failed: %s", what, strerror(-ret));
        reply_error(req, -ret, msg);
        return;
    }
    reply_reset(req);
    put_simple(req, 0);
    conn_send_reply(req);
}

/* --- commands --- */

static struct blk *req_blk(struct nbd_req *req)
{
    return req->conn->exp->blk;
}

/* --- the data cache (see struct data_cache) --- */

/* If @off lies in a range known to be data, that range's end, else 0. */
static uint64_t dc_data_end(struct data_cache *dc, uint64_t off)
{
    uint64_t e = 0;

    pthread_mutex_lock(&dc->lock);
    for (unsigned i = 0; i < NBDSRV_DATA_CACHE; i++) {
        if (dc->start[i] <= off && off < dc->end[i]) {
            e = MAX(e, dc->end[i]);
        }
    }
    pthread_mutex_unlock(&dc->lock);
    return e;
}

static void dc_forget(struct data_cache *dc, uint64_t off, uint64_t len)
{
    pthread_mutex_lock(&dc->lock);
    dc->gen++;
    for (unsigned i = 0; i < NBDSRV_DATA_CACHE; i++) {
        if (dc->start[i] < off + len && dc->end[i] > off) {
            dc->start[i] = dc->end[i] = 0;
        }
    }
    pthread_mutex_unlock(&dc->lock);
}

/*
 * Status of [off, off+len) through the disk, or from the data cache:
 * *data then says the extent of m->len bytes is data (else it is m's
 * status).  A data extent found is remembered.  Returns 0 or -errno.
 */
static int export_status(struct nbd_export *exp, uint64_t off, uint64_t len,
                         struct bdev_map *m, bool *data)
{
    struct data_cache *dc = &exp->dc;
    uint64_t e = dc_data_end(dc, off), gen;
    int ret;

    m->len = 0;
    if (!e) {
        /* one query at a time: the others may then find its answer cached */
        pthread_mutex_lock(&dc->query);
        e = dc_data_end(dc, off);
        if (e) {
            pthread_mutex_unlock(&dc->query);
        }
    }
    if (e) {
        m->len = MIN(e - off, len);
        *data = true;
        return 0;
    }
    pthread_mutex_lock(&dc->lock);
    gen = dc->gen;
    pthread_mutex_unlock(&dc->lock);
    ret = blk_block_status(exp->blk, off, MAX(len, NBDSRV_READ_LOOKAHEAD), m);
    if (ret == 0 && (m->status & BDEV_BLOCK_DATA) && !(m->status & BDEV_BLOCK_ZERO)) {
        pthread_mutex_lock(&dc->lock);
        if (dc->gen == gen) {
            dc->start[dc->next] = off;
            dc->end[dc->next] = off + m->len;
            dc->next = (dc->next + 1) % NBDSRV_DATA_CACHE;
        }
        pthread_mutex_unlock(&dc->lock);
    }
    pthread_mutex_unlock(&dc->query);
    if (ret == 0) {
        m->len = MIN(m->len, len);
    }
    *data = false;
    return ret;
}

struct read_ext {
    uint64_t off;
    uint32_t len;
    bool zero;
};

static void do_read(struct nbd_req *req)
{
    struct nbd_conn *c = req->conn;
    struct blk *blk = req_blk(req);
    struct read_ext ext[NBDSRV_MAX_READ_CHUNKS];
    uint64_t pos = req->offset, end = req->offset + req->len;
    unsigned n = 0;
    int ret;

    reply_reset(req);
    if (!c->structured) {
        ret = req->len ? blk_pread(blk, req->buf, req->len, req->offset) : 0;
        if (ret < 0) {
            reply_status(req, ret, "read");
            return;
        }
        put_simple(req, 0);
        add_iov(req, req->buf, req->len);
        conn_send_reply(req);
        return;
    }
    if (!req->len) {
        put_chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 0, 0);
        conn_send_reply(req);
        return;
    }
    /*
     * What reads as zeroes goes as holes, unless the client wants a
     * single chunk (DF).  Past the last chunk we describe, all is data.
     */
    if (!(req->flags & NBD_CMD_FLAG_DF)) {
        while (pos < end && n < NBDSRV_MAX_READ_CHUNKS - 1) {
            struct bdev_map m;
            bool data, zero;
            if (export_status(c->exp, pos, end - pos, &m, &data) < 0 || !m.len) {
                break;
            }
            zero = !data && (m.status & BDEV_BLOCK_ZERO);
            if (n && ext[n - 1].zero == zero) {
                ext[n - 1].len += (uint32_t)m.len;
            } else {
                ext[n].off = pos;
                ext[n].len = (uint32_t)m.len;
                ext[n].zero = zero;
                n++;
            }
            pos += m.len;
        }
    }
    if (pos < end) {
        if (n && !ext[n - 1].zero) {
            ext[n - 1].len += (uint32_t)(end - pos);
        } else {
            ext[n].off = pos;
            ext[n].len = (uint32_t)(end - pos);
            ext[n].zero = false;
            n++;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        if (ext[i].zero) {
            continue;
        }
        ret = blk_pread(blk, req->buf + (ext[i].off - req->offset), ext[i].len, ext[i].off);
        if (ret < 0) {
            reply_status(req, ret, "read");
            return;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        uint16_t flags = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;
        uint8_t *p;
        if (ext[i].zero) {
            p = put_chunk(req, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12, 12);
            put_be64(p, ext[i].off);
            put_be32(p + 8, ext[i].len);
        } else {
            p = put_chunk(req, flags, NBD_REPLY_TYPE_OFFSET_DATA, 8 + ext[i].len, 8);
            put_be64(p, ext[i].off);
            add_iov(req, req->buf + (ext[i].off - req->offset), ext[i].len);
        }
    }
    conn_send_reply(req);
}

static void do_cache(struct nbd_req *req)
{
    struct blk *blk = req_blk(req);
    uint64_t pos = req->offset, end = req->offset + req->len;

    /* read through the disk (a copy-on-read disk keeps what it read) */
    while (pos < end) {
        size_t n = (size_t)MIN(end - pos, (uint64_t)req->cap);
        int ret = blk_pread(blk, req->buf, n, pos);
        if (ret < 0) {
            reply_status(req, ret, "cache");
            return;
        }
        pos += n;
    }
    reply_status(req, 0, NULL);
}

/* allocation depth as qemu:allocation-depth counts it: 0 unallocated, 1 top */
static uint32_t depth_flags(const struct bdev_map *m)
{
    if (m->status & BDEV_BLOCK_ALLOCATED) {
        return (uint32_t)m->depth + 1;
    }
    if (m->past_end) {
        /* zeroes past the end of a short backing image: that image's */
        return (uint32_t)m->depth + 2;
    }
    return 0;
}

/* One context's extents of [offset, offset+len) at req->buf + @at: the
 * context id, then (length, flags) pairs.  Returns the bytes used or -errno. */
static ssize_t ctx_extents(struct nbd_req *req, const struct meta_ctx *ctx, size_t at,
                           unsigned max)
{
    struct blk *blk = req_blk(req);
    uint64_t pos = req->offset, end = req->offset + req->len;
    unsigned n = 0;
    uint8_t *p = req->buf + at;
    uint32_t last = 0;

    put_be32(p, ctx->id);
    p += 4;
    while (pos < end) {
        uint64_t len;
        uint32_t flags;
        int ret;

        if (ctx->kind == META_DIRTY_BITMAP) {
            uint64_t pnum = 0;
            bool dirty = false;
            ret = blk_bitmap_status(blk, ctx->bitmap, pos, end - pos, &pnum, &dirty);
            len = pnum;
            flags = dirty ? NBD_STATE_DIRTY : 0;
        } else if (ctx->kind == META_BASE_ALLOCATION) {
            struct bdev_map m;
            bool data;
            ret = export_status(req->conn->exp, pos, end - pos, &m, &data);
            len = m.len;
            flags = data ? 0 : ((m.status & BDEV_BLOCK_DATA) ? 0 : NBD_STATE_HOLE) |
                               ((m.status & BDEV_BLOCK_ZERO) ? NBD_STATE_ZERO : 0);
        } else {
            struct bdev_map m;
            ret = blk_block_status(blk, pos, end - pos, &m);
            len = m.len;
            flags = depth_flags(&m);
        }
        if (ret < 0) {
            return ret;
        }
        if (!len) {
            return -EIO;
        }
        len = MIN(len, end - pos);
        if (n && flags == last) {
            /* the same status goes on: one extent (the request is < 4 GiB) */
            put_be32(p - 8, get_be32(p - 8) + (uint32_t)len);
        } else {
            if (n == max) {
                break;
            }
            put_be32(p, (uint32_t)len);
            put_be32(p + 4, flags);
            p += 8;
            n++;
            last = flags;
        }
        pos += len;
    }
    return 4 + 8 * (ssize_t)n;
}

static void do_block_status(struct nbd_req *req)
{
    struct nbd_conn *c = req->conn;
    unsigned max = (req->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBDSRV_MAX_EXTENTS;
    size_t per = 4 + 8 * (size_t)max;
    ssize_t used[NBDSRV_MAX_CONTEXTS];

    conn_req_reserve(req, per * c->nctx);
    for (unsigned i = 0; i < c->nctx; i++) {
        used[i] = ctx_extents(req, &c->ctx[i], per * i, max);
        if (used[i] < 0) {
            reply_status(req, (int)used[i], "block status");
            return;
        }
    }
    reply_reset(req);
    for (unsigned i = 0; i < c->nctx; i++) {
        uint16_t flags = i == c->nctx - 1 ? NBD_REPLY_FLAG_DONE : 0;
        put_chunk(req, flags, NBD_REPLY_TYPE_BLOCK_STATUS, (uint32_t)used[i], 0);
        add_iov(req, req->buf + per * i, (size_t)used[i]);
    }
    conn_send_reply(req);
}

static void req_run(void *opaque)
{
    struct nbd_req *req = opaque;
    struct blk *blk = req_blk(req);
    bool fua = req->flags & NBD_CMD_FLAG_FUA;
    int ret;

    switch (req->type) {
    case NBD_CMD_READ:
        do_read(req);
        return;
    case NBD_CMD_WRITE:
        ret = blk_pwrite(blk, req->buf, req->len, req->offset, fua ? BDEV_REQ_FUA : 0);
        reply_status(req, ret, "write");
        return;
    case NBD_CMD_FLUSH:
        reply_status(req, blk_flush(blk), "flush");
        return;
    case NBD_CMD_TRIM:
        dc_forget(&req->conn->exp->dc, req->offset, req->len);
        ret = req->len ? blk_discard(blk, req->offset, req->len) : 0;
        dc_forget(&req->conn->exp->dc, req->offset, req->len);
        if (ret == 0 && fua) {
            ret = blk_flush(blk);
        }
        reply_status(req, ret, "trim");
        return;
    case NBD_CMD_WRITE_ZEROES: {
        unsigned flags = (fua ? BDEV_REQ_FUA : 0);
        if (!(req->flags & NBD_CMD_FLAG_NO_HOLE)) {
            flags |= BDEV_REQ_MAY_UNMAP;
        }
        if (req->flags & NBD_CMD_FLAG_FAST_ZERO) {
            flags |= BDEV_REQ_NO_FALLBACK;
        }
        dc_forget(&req->conn->exp->dc, req->offset, req->len);
        ret = req->len ? blk_pwrite_zeroes(blk, req->offset, req->len, flags) : 0;
        dc_forget(&req->conn->exp->dc, req->offset, req->len);
        if (ret == -ENOTSUP && !(req->flags & NBD_CMD_FLAG_FAST_ZERO)) {
            ret = -EIO;
        }
        reply_status(req, ret, "write zeroes");
        return;
    }
    case NBD_CMD_CACHE:
        do_cache(req);
        return;
    case NBD_CMD_BLOCK_STATUS:
        do_block_status(req);
        return;
    default:
        BUG("NBD request type %u got through", req->type);
    }
}

/* --- the reader --- */

/* Why @req cannot run (a positive errno and a message), or 0. */
static int req_check(struct nbd_conn *c, struct nbd_req *req, const char **msg)
{
    struct nbd_export *exp = c->exp;
    uint64_t size = blk_size(exp->blk);
    uint16_t allowed = NBD_CMD_FLAG_FUA;
    bool write = false, past_end;

    switch (req->type) {
    case NBD_CMD_READ:
        if (c->structured) {
            allowed |= NBD_CMD_FLAG_DF;
        }
        break;
    case NBD_CMD_WRITE:
    case NBD_CMD_TRIM:
        write = true;
        break;
    case NBD_CMD_WRITE_ZEROES:
        write = true;
        allowed |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        break;
    case NBD_CMD_FLUSH:
    case NBD_CMD_CACHE:
        break;
    case NBD_CMD_BLOCK_STATUS:
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
    default:
        *msg = "unknown command";
        return EINVAL;
    }
    if (req->flags & ~allowed) {
        *msg = "invalid flags for this command";
        return EINVAL;
    }
    if (write && !exp->writable) {
        *msg = "the export is read-only";
        return EPERM;
    }
    if (req->type == NBD_CMD_FLUSH) {
        return 0;
    }
    past_end = req->offset > size || req->len > size - req->offset;
    if (past_end) {
        *msg = "request past the end of the export";
        return req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES ? ENOSPC : EINVAL;
    }
    if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) &&
        req->len > c->srv->cfg.max_payload) {
        *msg = "request larger than the maximum payload";
        return EINVAL;
    }
    if (req->type == NBD_CMD_BLOCK_STATUS) {
        if (!c->nctx) {
            *msg = "no metadata context was negotiated";
            return EINVAL;
        }
        if (!req->len) {
            *msg = "block status of nothing";
            return EINVAL;
        }
    }
    return 0;
}

void nbd_transmission(struct nbd_conn *c)
{
    struct nbdsrv *srv = c->srv;
    uint32_t max_payload = srv->cfg.max_payload;
    uint8_t h[NBD_REQUEST_SIZE];

    for (;;) {
        struct nbd_req *req;
        uint16_t flags, type;
        uint32_t len;
        size_t bufsize = 0, budget = 0;
        const char *msg = NULL;
        int err;

        conn_wait_slot(c);
        if (conn_read(c, h, sizeof(h)) < 0) {
            if (errno) {
                nbdsrv_log(srv, "client %s: connection lost: %s", c->peer, strerror(errno));
            }
            return;
        }
        if (get_be32(h) != NBD_REQUEST_MAGIC) {
            nbdsrv_log(srv, "client %s: bad request magic 0x%08" PRIx32 ": disconnecting",
                       c->peer, get_be32(h));
            conn_abort(c);
            return;
        }
        flags = get_be16(h + 4);
        type = get_be16(h + 6);
        len = get_be32(h + 24);
        if (type == NBD_CMD_DISC) {
            return;
        }
        switch (type) {
        case NBD_CMD_READ:
        case NBD_CMD_WRITE:
            if (len <= max_payload) {
                bufsize = budget = len;
            }
            break;
        case NBD_CMD_CACHE:
            bufsize = budget = MIN(len, NBDSRV_CACHE_CHUNK);
            break;
        case NBD_CMD_BLOCK_STATUS:
            budget = c->nctx * (4 + 8 * (size_t)NBDSRV_MAX_EXTENTS);
            break;
        default:
            break;
        }
        req = conn_req_get(c, bufsize, budget);
        req->flags = flags;
        req->type = type;
        req->cookie = get_be64(h + 8);
        req->offset = get_be64(h + 16);
        req->len = len;

        if (type == NBD_CMD_WRITE) {
            if (len > max_payload) {
                /* not read into memory: answer, then hang up */
                nbdsrv_log(srv, "client %s: write of %" PRIu32 " bytes exceeds the maximum "
                           "payload: disconnecting", c->peer, len);
                reply_error(req, EINVAL, "request larger than the maximum payload");
                return;
            }
            if (len && conn_read(c, req->buf, len) < 0) {
                nbdsrv_log(srv, "client %s: connection lost in a write payload", c->peer);
                conn_req_put(req);
                return;
            }
        }
        err = req_check(c, req, &msg);
        if (err) {
            reply_error(req, err, msg);
            continue;
        }
        workpool_submit(srv->cfg.pool, req_run, req);
    }
}
