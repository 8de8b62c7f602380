/*
 * blockctl - the agent's NBD server: the handshake (fixed newstyle)
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/nbdsrv/internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* what an option handler tells the loop */
enum { OPT_NEXT, OPT_GO, OPT_CLOSE };

/* A length-delimited string of the client's */
struct str {
    const char *p;
    size_t len;
};

static bool str_is(struct str s, const char *lit)
{
    size_t n = strlen(lit);

    return s.len == n && !memcmp(s.p, lit, n);
}

static bool str_has_prefix(struct str s, const char *lit)
{
    size_t n = strlen(lit);

    return s.len >= n && !memcmp(s.p, lit, n);
}

/* A NUL-terminated copy, or NULL if @s holds a NUL byte. */
static char *str_dup(struct str s)
{
    if (!s.len) {
        return xstrdup("");
    }
    if (memchr(s.p, '\0', s.len)) {
        return NULL;
    }
    return xstrndup(s.p, s.len);
}

static int send_rep(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
                    size_t len)
{
    uint8_t hdr[20];

    put_be64(hdr, NBD_REP_MAGIC);
    put_be32(hdr + 8, opt);
    put_be32(hdr + 12, type);
    put_be32(hdr + 16, (uint32_t)len);
    if (conn_write(c, hdr, sizeof(hdr), len > 0) < 0 ||
        (len && conn_write(c, data, len, false) < 0)) {
        return -1;
    }
    return 0;
}

static int send_err(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
    ATTRIBUTE_PRINTF(4, 5);
static int send_err(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    n = MIN(MAX(n, 0), (int)sizeof(msg) - 1);
    return send_rep(c, opt, type, msg, (size_t)n) < 0 ? OPT_CLOSE : OPT_NEXT;
}

static int send_ack(struct nbd_conn *c, uint32_t opt)
{
    return send_rep(c, opt, NBD_REP_ACK, NULL, 0) < 0 ? OPT_CLOSE : OPT_NEXT;
}

/* A name shortened for a message */
#define NAME_FMT "%.*s%s"
#define NAME_ARG(s) (int)MIN((s).len, (size_t)64), (s).p, (s).len > 64 ? "..." : ""

uint16_t nbd_export_tflags(struct nbd_conn *c, struct nbd_export *exp)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_SEND_CACHE | NBD_FLAG_CAN_MULTI_CONN;

    /* every connection shares the one disk, and a flush flushes it */
    if (c->structured) {
        f |= NBD_FLAG_SEND_DF;
    }
    if (exp->writable) {
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    } else {
        f |= NBD_FLAG_READ_ONLY;
    }
    return f;
}

/* Look up an export by a client's name and take a reference; NULL if none. */
static struct nbd_export *export_get(struct nbd_conn *c, struct str name)
{
    CLEANUP_FREE char *n = str_dup(name);
    struct nbd_export *exp = NULL;

    if (!n) {
        return NULL;
    }
    pthread_mutex_lock(&c->srv->lock);
    exp = nbdsrv_find_export_locked(c->srv, n);
    if (exp) {
        nbdsrv_export_ref_locked(exp);
    }
    pthread_mutex_unlock(&c->srv->lock);
    return exp;
}

/*
 * Enter transmission with @exp, whose reference the connection then keeps;
 * false if it has been deleted meanwhile.  Done before the final reply, so
 * that a hard nbdsrv_export_del() after it finds the connection.
 */
static bool bind_export(struct nbd_conn *c, struct nbd_export *exp)
{
    pthread_mutex_lock(&c->srv->lock);
    if (exp->deleted) {
        pthread_mutex_unlock(&c->srv->lock);
        return false;
    }
    c->exp = exp;
    pthread_mutex_unlock(&c->srv->lock);
    c->tflags = nbd_export_tflags(c, exp);
    /* contexts set for another export do not apply */
    if (c->nctx && (!c->meta_export || strcmp(c->meta_export, exp->name))) {
        meta_ctx_clear(c);
    }
    nbdsrv_log(c->srv, "client %s uses export '%s'", c->peer, exp->name);
    return true;
}

static int opt_export_name(struct nbd_conn *c, const uint8_t *data, uint32_t len)
{
    struct str name = { (const char *)data, len };
    struct nbd_export *exp;
    uint8_t reply[8 + 2 + 124] = { 0 };

    exp = export_get(c, name);
    if (!exp) {
        /* NBD_OPT_EXPORT_NAME cannot fail: the session ends */
        nbdsrv_log(c->srv, "client %s asked for unknown export '" NAME_FMT "'", c->peer,
                   NAME_ARG(name));
        return OPT_CLOSE;
    }
    if (!bind_export(c, exp)) {
        nbdsrv_log(c->srv, "client %s asked for export '%s', being removed", c->peer, exp->name);
        nbdsrv_export_unref(exp);
        return OPT_CLOSE;
    }
    put_be64(reply, blk_size(exp->blk));
    put_be16(reply + 8, c->tflags);
    if (conn_write(c, reply, c->no_zeroes ? 10 : sizeof(reply), false) < 0) {
        return OPT_CLOSE;
    }
    return OPT_GO;
}

static int opt_info_go(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
    struct str name;
    uint32_t namelen;
    uint16_t nreq;
    bool want_name = false, want_desc = false;
    struct nbd_export *exp;
    uint8_t info[2 + NBDSRV_MAX_STRING];
    int ret = OPT_CLOSE;

    if (len < 6) {
        return send_err(c, opt, NBD_REP_ERR_INVALID, "option too short");
    }
    namelen = get_be32(data);
    if (namelen > len - 6) {
        return send_err(c, opt, NBD_REP_ERR_INVALID, "export name length out of bounds");
    }
    nreq = get_be16(data + 4 + namelen);
    if (4ull + namelen + 2 + 2ull * nreq != len) {
        return send_err(c, opt, NBD_REP_ERR_INVALID, "option length does not match its contents");
    }
    name.p = (const char *)data + 4;
    name.len = namelen;
    if (namelen > NBDSRV_MAX_STRING) {
        return send_err(c, opt, NBD_REP_ERR_INVALID, "export name is too long");
    }
    for (uint16_t i = 0; i < nreq; i++) {
        switch (get_be16(data + 4 + namelen + 2 + 2 * i)) {
        case NBD_INFO_NAME:
            want_name = true;
            break;
        case NBD_INFO_DESCRIPTION:
            want_desc = true;
            break;
        default:
            break;
        }
    }
    exp = export_get(c, name);
    if (!exp) {
        return send_err(c, opt, NBD_REP_ERR_UNKNOWN, "export '" NAME_FMT "' not found",
                        NAME_ARG(name));
    }

    put_be16(info, NBD_INFO_EXPORT);
    put_be64(info + 2, blk_size(exp->blk));
    put_be16(info + 10, nbd_export_tflags(c, exp));
    if (send_rep(c, opt, NBD_REP_INFO, info, 12) < 0) {
        goto out;
    }
    if (want_name) {
        size_t n = strlen(exp->name);
        put_be16(info, NBD_INFO_NAME);
        memcpy(info + 2, exp->name, n);
        if (send_rep(c, opt, NBD_REP_INFO, info, 2 + n) < 0) {
            goto out;
        }
    }
    if (want_desc && exp->description) {
        size_t n = strlen(exp->description);
        put_be16(info, NBD_INFO_DESCRIPTION);
        memcpy(info + 2, exp->description, n);
        if (send_rep(c, opt, NBD_REP_INFO, info, 2 + n) < 0) {
            goto out;
        }
    }
    /* any alignment works; requests up to max_payload */
    put_be16(info, NBD_INFO_BLOCK_SIZE);
    put_be32(info + 2, 1);
    put_be32(info + 6, 4096);
    put_be32(info + 10, c->srv->cfg.max_payload);
    if (send_rep(c, opt, NBD_REP_INFO, info, 14) < 0) {
        goto out;
    }
    if (opt == NBD_OPT_GO) {
        if (!bind_export(c, exp)) {
            ret = send_err(c, opt, NBD_REP_ERR_UNKNOWN, "export '%s' is being removed", exp->name);
            goto out;
        }
        /* the connection holds the reference now, whatever happens */
        return send_rep(c, opt, NBD_REP_ACK, NULL, 0) < 0 ? OPT_CLOSE : OPT_GO;
    }
    if (send_rep(c, opt, NBD_REP_ACK, NULL, 0) < 0) {
        goto out;
    }
    ret = OPT_NEXT;
out:
    nbdsrv_export_unref(exp);
    return ret;
}

static int opt_list(struct nbd_conn *c, uint32_t len)
{
    struct nbdsrv *srv = c->srv;
    uint8_t *buf = NULL;
    size_t size = 0, used = 0;
    int ret = OPT_NEXT;

    if (len) {
        return send_err(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    }
    /* the replies are built under the lock, sent after it */
    pthread_mutex_lock(&srv->lock);
    for (struct nbd_export *e = srv->exports; e; e = e->next) {
        size_t nl = strlen(e->name), dl = e->description ? strlen(e->description) : 0;
        size_t need = 20 + 4 + nl + dl;
        if (e->deleted) {
            continue;
        }
        if (used + need > size) {
            size = MAX(size * 2, used + need);
            buf = xrealloc(buf, size);
        }
        put_be64(buf + used, NBD_REP_MAGIC);
        put_be32(buf + used + 8, NBD_OPT_LIST);
        put_be32(buf + used + 12, NBD_REP_SERVER);
        put_be32(buf + used + 16, (uint32_t)(4 + nl + dl));
        put_be32(buf + used + 20, (uint32_t)nl);
        memcpy(buf + used + 24, e->name, nl);
        if (dl) {
            memcpy(buf + used + 24 + nl, e->description, dl);
        }
        used += need;
    }
    pthread_mutex_unlock(&srv->lock);
    if ((used && conn_write(c, buf, used, true) < 0) || send_ack(c, NBD_OPT_LIST) == OPT_CLOSE) {
        ret = OPT_CLOSE;
    }
    free(buf);
    return ret;
}

void meta_ctx_clear(struct nbd_conn *c)
{
    for (unsigned i = 0; i < c->nctx; i++) {
        free(c->ctx[i].bitmap);
    }
    c->nctx = 0;
}

/* Contexts matched by a LIST or SET query */
struct ctx_list {
    struct meta_ctx *v;
    size_t n;
};

static void ctx_add(struct ctx_list *l, enum meta_kind kind, const char *bitmap)
{
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].kind == kind && (!bitmap || !strcmp(l->v[i].bitmap, bitmap))) {
            return;
        }
    }
    l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n].kind = kind;
    l->v[l->n].id = 0;
    l->v[l->n].bitmap = bitmap ? xstrdup(bitmap) : NULL;
    l->n++;
}

static void ctx_list_free(struct ctx_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].bitmap);
    }
    free(l->v);
}

#define BITMAP_PREFIX "qemu:dirty-bitmap:"

static void ctx_match(struct ctx_list *l, struct nbd_export *exp, char **bitmaps, struct str q,
                      bool list)
{
    if (str_is(q, "base:allocation") || (list && str_is(q, "base:"))) {
        ctx_add(l, META_BASE_ALLOCATION, NULL);
        return;
    }
    if (str_is(q, "qemu:allocation-depth") || (list && str_is(q, "qemu:"))) {
        if (exp->allocation_depth) {
            ctx_add(l, META_ALLOCATION_DEPTH, NULL);
        }
        if (!str_is(q, "qemu:")) {
            return;
        }
    }
    if ((list && (str_is(q, "qemu:") || str_is(q, BITMAP_PREFIX)))) {
        for (char **b = bitmaps; b && *b; b++) {
            ctx_add(l, META_DIRTY_BITMAP, *b);
        }
        return;
    }
    if (str_has_prefix(q, BITMAP_PREFIX) && q.len > strlen(BITMAP_PREFIX)) {
        struct str b = { q.p + strlen(BITMAP_PREFIX), q.len - strlen(BITMAP_PREFIX) };
        for (char **p = bitmaps; p && *p; p++) {
            if (str_is(b, *p)) {
                ctx_add(l, META_DIRTY_BITMAP, *p);
                return;
            }
        }
    }
    /* anything else is ignored, as the spec asks for unknown namespaces */
}

static int send_ctx(struct nbd_conn *c, uint32_t opt, const struct meta_ctx *m)
{
    uint8_t buf[4 + NBDSRV_MAX_STRING];
    size_t n;

    put_be32(buf, m->id);
    switch (m->kind) {
    case META_BASE_ALLOCATION:
        n = (size_t)snprintf((char *)buf + 4, sizeof(buf) - 4, "base:allocation");
        break;
    case META_ALLOCATION_DEPTH:
        n = (size_t)snprintf((char *)buf + 4, sizeof(buf) - 4, "qemu:allocation-depth");
        break;
    default:
        n = (size_t)snprintf((char *)buf + 4, sizeof(buf) - 4, BITMAP_PREFIX "%s", m->bitmap);
        break;
    }
    n = MIN(n, sizeof(buf) - 5);
    return send_rep(c, opt, NBD_REP_META_CONTEXT, buf, 4 + n);
}

static int opt_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
    bool list = opt == NBD_OPT_LIST_META_CONTEXT;
    struct ctx_list l = { 0 };
    struct str name, *q = NULL;
    struct nbd_export *exp;
    char **bitmaps = NULL;
    uint32_t namelen, nq, pos;
    int ret = OPT_CLOSE;

    if (!list) {
        /* a SET replaces the contexts, whether it succeeds or not */
        meta_ctx_clear(c);
        free(c->meta_export);
        c->meta_export = NULL;
    }
    if (!c->structured) {
        return send_err(c, opt, NBD_REP_ERR_INVALID, "structured replies are not negotiated");
    }
    if (len < 8) {
        return send_err(c, opt, NBD_REP_ERR_INVALID, "option too short");
    }
    namelen = get_be32(data);
    if (namelen > len - 8) {
        return send_err(c, opt, NBD_REP_ERR_INVALID, "export name length out of bounds");
    }
    if (namelen > NBDSRV_MAX_STRING) {
        return send_err(c, opt, NBD_REP_ERR_INVALID, "export name is too long");
    }
    name.p = (const char *)data + 4;
    name.len = namelen;
    pos = 4 + namelen;
    nq = get_be32(data + pos);
    pos += 4;
    if (nq > NBDSRV_MAX_QUERIES) {
        return send_err(c, opt, NBD_REP_ERR_TOO_BIG, "more than %d queries",
                        NBDSRV_MAX_QUERIES);
    }
    q = nq ? xcalloc(nq, sizeof(*q)) : NULL;
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t ql;
        if (len - pos < 4) {
            ret = send_err(c, opt, NBD_REP_ERR_INVALID, "query length out of bounds");
            goto out_q;
        }
        ql = get_be32(data + pos);
        pos += 4;
        if (ql > len - pos) {
            ret = send_err(c, opt, NBD_REP_ERR_INVALID, "query out of bounds");
            goto out_q;
        }
        if (ql > NBDSRV_MAX_STRING) {
            ret = send_err(c, opt, NBD_REP_ERR_INVALID, "query is too long");
            goto out_q;
        }
        q[i].p = (const char *)data + pos;
        q[i].len = ql;
        pos += ql;
    }
    if (pos != len) {
        ret = send_err(c, opt, NBD_REP_ERR_INVALID, "option length does not match its contents");
        goto out_q;
    }
    exp = export_get(c, name);
    if (!exp) {
        ret = send_err(c, opt, NBD_REP_ERR_UNKNOWN, "export '" NAME_FMT "' not found",
                       NAME_ARG(name));
        goto out_q;
    }
    bitmaps = nbdsrv_export_bitmaps(exp);
    if (list && !nq) {
        ctx_add(&l, META_BASE_ALLOCATION, NULL);
        if (exp->allocation_depth) {
            ctx_add(&l, META_ALLOCATION_DEPTH, NULL);
        }
        for (char **b = bitmaps; b && *b; b++) {
            ctx_add(&l, META_DIRTY_BITMAP, *b);
        }
    }
    for (uint32_t i = 0; i < nq; i++) {
        ctx_match(&l, exp, bitmaps, q[i], list);
    }
    if (!list && l.n > NBDSRV_MAX_CONTEXTS) {
        ret = send_err(c, opt, NBD_REP_ERR_TOO_BIG, "more than %d metadata contexts selected",
                       NBDSRV_MAX_CONTEXTS);
        goto out;
    }
    for (size_t i = 0; i < l.n; i++) {
        l.v[i].id = list ? 0 : (uint32_t)i + 1;
        if (send_ctx(c, opt, &l.v[i]) < 0) {
            goto out;
        }
    }
    if (!list) {
        for (size_t i = 0; i < l.n; i++) {
            c->ctx[i] = l.v[i];
            l.v[i].bitmap = NULL;
        }
        c->nctx = (unsigned)l.n;
        c->meta_export = xstrdup(exp->name);
    }
    ret = send_ack(c, opt);
out:
    nbdsrv_export_unref(exp);
out_q:
    strv_free(bitmaps);
    ctx_list_free(&l);
    free(q);
    return ret;
}

static int opt_starttls(struct nbd_conn *c, uint32_t len)
{
    if (!c->srv->tls) {
        return send_err(c, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
                        "TLS is not enabled on this server");
    }
    if (len) {
        return send_err(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                        "NBD_OPT_STARTTLS takes no data");
    }
    if (c->tls) {
        return send_err(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "TLS is already negotiated");
    }
    if (send_ack(c, NBD_OPT_STARTTLS) == OPT_CLOSE) {
        return OPT_CLOSE;
    }
    if (c->in_pos != c->in_end) {
        /* bytes sent in clear after STARTTLS, before our reply */
        nbdsrv_log(c->srv, "client %s: data in clear after NBD_OPT_STARTTLS", c->peer);
        return OPT_CLOSE;
    }
    if (conn_tls_start(c) < 0) {
        return OPT_CLOSE;
    }
    /* what was negotiated in clear does not count (doc/proto.md) */
    c->structured = false;
    meta_ctx_clear(c);
    free(c->meta_export);
    c->meta_export = NULL;
    return OPT_NEXT;
}

/* TLS is required and @c has not started it: refuse option @opt. */
static int tls_refuse(struct nbd_conn *c, uint32_t opt)
{
    if (opt == NBD_OPT_EXPORT_NAME) {
        /* it has no error reply: the session ends */
        nbdsrv_log(c->srv, "client %s refused: TLS is required", c->peer);
        return OPT_CLOSE;
    }
    if (opt == NBD_OPT_GO || opt == NBD_OPT_INFO) {
        nbdsrv_log(c->srv, "client %s refused: TLS is required", c->peer);
    }
    return send_err(c, opt, NBD_REP_ERR_TLS_REQD,
                    "TLS is required on this server (connect with TLS: nbds://)");
}

static int handle_option(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
    if (!c->tls && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT &&
        nbdsrv_tls_required(c->srv)) {
        return tls_refuse(c, opt);
    }
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        return opt_export_name(c, data, len);
    case NBD_OPT_ABORT:
        /* the client may already have gone: no matter */
        send_ack(c, opt);
        return OPT_CLOSE;
    case NBD_OPT_LIST:
        return opt_list(c, len);
    case NBD_OPT_STARTTLS:
        return opt_starttls(c, len);
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return opt_info_go(c, opt, data, len);
    case NBD_OPT_STRUCTURED_REPLY:
        if (len) {
            return send_err(c, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        }
        if (c->structured) {
            return send_err(c, opt, NBD_REP_ERR_INVALID, "structured replies already negotiated");
        }
        c->structured = true;
        return send_ack(c, opt);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return opt_meta(c, opt, data, len);
    default:
        return send_err(c, opt, NBD_REP_ERR_UNSUP, "option %" PRIu32 " is not supported", opt);
    }
}

static const char *why(void)
{
    if (errno == ETIMEDOUT) {
        return "handshake timed out";
    }
    return errno ? strerror(errno) : "client closed the connection";
}

int nbd_handshake(struct nbd_conn *c)
{
    uint8_t greeting[18], cflags[4], ohdr[16];
    uint32_t flags;
    uint8_t *data = NULL;

    put_be64(greeting, NBD_MAGIC);
    put_be64(greeting + 8, NBD_OPTS_MAGIC);
    put_be16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (conn_write(c, greeting, sizeof(greeting), false) < 0 || conn_read(c, cflags, 4) < 0) {
        nbdsrv_log(c->srv, "client %s: handshake failed: %s", c->peer, why());
        return -1;
    }
    flags = get_be32(cflags);
    if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        nbdsrv_log(c->srv, "client %s: unknown client flags 0x%" PRIx32, c->peer, flags);
        return -1;
    }
    c->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;

    for (;;) {
        uint32_t opt, len;
        int r;

        if (conn_read(c, ohdr, sizeof(ohdr)) < 0) {
            nbdsrv_log(c->srv, "client %s: handshake ended: %s", c->peer, why());
            return -1;
        }
        if (get_be64(ohdr) != NBD_OPTS_MAGIC) {
            nbdsrv_log(c->srv, "client %s: bad option magic", c->peer);
            return -1;
        }
        opt = get_be32(ohdr + 8);
        len = get_be32(ohdr + 12);
        if (len > NBDSRV_MAX_OPTION || (opt == NBD_OPT_EXPORT_NAME && len > NBDSRV_MAX_STRING)) {
            /* refused without reading it into memory */
            if (opt == NBD_OPT_EXPORT_NAME || len > NBDSRV_MAX_OPTION_SKIP) {
                nbdsrv_log(c->srv, "client %s: option %" PRIu32 " of %" PRIu32 " bytes: disconnecting",
                           c->peer, opt, len);
                return -1;
            }
            if (conn_skip(c, len) < 0 ||
                send_err(c, opt, NBD_REP_ERR_TOO_BIG, "option longer than %u bytes",
                         NBDSRV_MAX_OPTION) == OPT_CLOSE) {
                nbdsrv_log(c->srv, "client %s: handshake ended: %s", c->peer, why());
                return -1;
            }
            continue;
        }
        data = len ? xmalloc(len) : NULL;
        if (len && conn_read(c, data, len) < 0) {
            nbdsrv_log(c->srv, "client %s: handshake ended: %s", c->peer, why());
            free(data);
            return -1;
        }
        r = handle_option(c, opt, data, len);
        free(data);
        data = NULL;
        if (r == OPT_GO) {
            return 0;
        }
        if (r == OPT_CLOSE) {
            return -1;
        }
    }
}
