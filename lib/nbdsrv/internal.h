/*
 * blockctl - the agent's NBD server: what its files share
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Locks, outermost first: srv->lock (exports, connections, listeners),
 * conn->lock (requests in flight, buffers), conn->send_lock (the reply
 * queue).  No lock is held across file I/O; conn->send_lock is held
 * across non-blocking sends only.
 */
#ifndef BLOCKCTL_LIB_NBDSRV_INTERNAL_H
#define BLOCKCTL_LIB_NBDSRV_INTERNAL_H

#include "lib/nbdsrv/nbdsrv.h"

#include <pthread.h>
#include <stdarg.h>
#include <sys/uio.h>

/* --- protocol values (NBD doc/proto.md) --- */

#define NBD_MAGIC 0x4e42444d41474943ULL           /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC 0x49484156454f5054ULL      /* "IHAVEOPT" */
#define NBD_REP_MAGIC 0x0003e889045565a9ULL
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

/* handshake flags (server) and client flags */
#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES (1u << 1)

/* transmission flags */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_ROTATIONAL (1u << 4)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)
#define NBD_FLAG_SEND_CACHE (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO (1u << 11)

/* options */
enum {
    NBD_OPT_EXPORT_NAME = 1,
    NBD_OPT_ABORT = 2,
    NBD_OPT_LIST = 3,
    NBD_OPT_STARTTLS = 5,
    NBD_OPT_INFO = 6,
    NBD_OPT_GO = 7,
    NBD_OPT_STRUCTURED_REPLY = 8,
    NBD_OPT_LIST_META_CONTEXT = 9,
    NBD_OPT_SET_META_CONTEXT = 10,
};

/* option replies */
#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_ERR(n) ((1u << 31) | (n))
#define NBD_REP_ERR_UNSUP NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID NBD_REP_ERR(3)
#define NBD_REP_ERR_TLS_REQD NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN NBD_REP_ERR(7)
#define NBD_REP_ERR_TOO_BIG NBD_REP_ERR(9)

/* NBD_REP_INFO types */
#define NBD_INFO_EXPORT 0
#define NBD_INFO_NAME 1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE 3

/* commands and their flags */
enum {
    NBD_CMD_READ = 0,
    NBD_CMD_WRITE = 1,
    NBD_CMD_DISC = 2,
    NBD_CMD_FLUSH = 3,
    NBD_CMD_TRIM = 4,
    NBD_CMD_CACHE = 5,
    NBD_CMD_WRITE_ZEROES = 6,
    NBD_CMD_BLOCK_STATUS = 7,
};
#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define NBD_CMD_FLAG_DF (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* structured replies */
#define NBD_REPLY_FLAG_DONE (1u << 0)
#define NBD_REPLY_TYPE_NONE 0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR ((1u << 15) + 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) + 2)

/* error values */
#define NBD_EPERM 1
#define NBD_EIO 5
#define NBD_ENOMEM 12
#define NBD_EINVAL 22
#define NBD_ENOSPC 28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP 95
#define NBD_ESHUTDOWN 108

/* base:allocation and qemu:dirty-bitmap: flags */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)
#define NBD_STATE_DIRTY (1u << 0)

/* sizes on the wire */
#define NBD_REQUEST_SIZE 28
#define NBD_SIMPLE_REPLY_SIZE 16
#define NBD_CHUNK_HEADER_SIZE 20

/* --- limits --- */

/* Longest string (export name, context name, description) on the wire. */
#define NBDSRV_MAX_STRING 4096
/* Longest option payload read into memory; longer (64 KiB+) ones are refused. */
#define NBDSRV_MAX_OPTION (64u * 1024 - 1)
/* Longer option payloads than this are not even skipped: disconnect. */
#define NBDSRV_MAX_OPTION_SKIP (1u << 20)
/* Queries in one LIST/SET_META_CONTEXT, contexts selected at once. */
#define NBDSRV_MAX_QUERIES 128
#define NBDSRV_MAX_CONTEXTS 16
/* Extents in one block status chunk. */
#define NBDSRV_MAX_EXTENTS 16384
/* How far past a request block status is asked for, to fill the data cache. */
#define NBDSRV_READ_LOOKAHEAD (1ull << 30)
/* Content chunks in one structured read reply (then the rest is data). */
#define NBDSRV_MAX_READ_CHUNKS 32
/* Reply iovecs of one request: a header and a payload per chunk, plus one. */
#define NBDSRV_REQ_IOV (2 * NBDSRV_MAX_READ_CHUNKS + 4)
/* Chunk header bytes of one request: 32 per chunk at most. */
#define NBDSRV_REQ_HDR (32 * (NBDSRV_MAX_READ_CHUNKS + 2))
/* Per connection: payload bytes in flight (at least one request goes);
 * 4 MiB is 16 requests of 256 KiB, as QEMU allows a client 16 requests. */
#define NBDSRV_CONN_BUDGET (4u << 20)
/* Request buffers kept for reuse: per connection and in all. */
#define NBDSRV_CONN_CACHE (4u << 20)
#define NBDSRV_TOTAL_CACHE (32u << 20)
/* Chunk of a CACHE request read at a time. */
#define NBDSRV_CACHE_CHUNK (1u << 20)
/* Send buffer asked for UNIX sockets (the kernel caps it at wmem_max). */
#define NBDSRV_UNIX_SNDBUF (2 << 20)
/* nbdsrv_shutdown: how long clients may take to read their last replies. */
#define NBDSRV_SHUTDOWN_GRACE_MS 5000

/* --- objects --- */

/*
 * Ranges of an export known to hold data, so that reads and base:allocation
 * need not ask for block status each time (on a file system, finding the
 * next hole may scan the whole file).  Only data is remembered: a range
 * that became a hole since (a trim by another path) reads as zeroes sent
 * as data and is reported allocated, which the protocol allows.  Trims and
 * write zeroes through the export forget what they touch.  Block status
 * queries that miss are made one at a time (query lock), so that clients
 * starting together do not all search for the same hole.
 */
#define NBDSRV_DATA_CACHE 4
struct data_cache {
    pthread_mutex_t query;       /* held across a block status query */
    pthread_mutex_t lock;        /* the fields below */
    uint64_t gen;                /* bumped by every invalidation */
    uint64_t start[NBDSRV_DATA_CACHE];
    uint64_t end[NBDSRV_DATA_CACHE];
    unsigned next;
};

struct nbd_export {
    struct nbdsrv *srv;
    struct data_cache dc;
    char *id;
    char *name;
    char *description;
    struct blk *blk;
    bool writable;
    bool allocation_depth;
    char **bitmaps;              /* NULL: the disk's bitmaps; else NULL-terminated */
    unsigned refcnt;             /* the list's + one per connection; srv->lock */
    bool deleted;                /* nbdsrv_export_del()ed: invisible to clients */
    struct nbd_export *next;
};

enum meta_kind { META_BASE_ALLOCATION, META_ALLOCATION_DEPTH, META_DIRTY_BITMAP };

struct meta_ctx {
    enum meta_kind kind;
    uint32_t id;
    char *bitmap;                /* META_DIRTY_BITMAP: the bitmap's name */
};

struct nbd_conn;

struct nbd_req {
    struct nbd_conn *conn;
    struct nbd_req *next;        /* free list or reply queue */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t len;
    uint8_t *buf;                /* payload: write data, read data, extents */
    size_t cap;
    size_t budget;               /* bytes counted in conn->in_flight_bytes */
    /* the reply: iovecs into hdr[] and buf */
    struct iovec iov[NBDSRV_REQ_IOV];
    unsigned niov;
    unsigned iov_done;           /* iovecs fully sent */
    size_t hdr_used;
    uint8_t hdr[NBDSRV_REQ_HDR];
};

struct nbd_conn {
    struct nbdsrv *srv;
    int fd;
    char *peer;                  /* for the log */
    pthread_t reader;
    pthread_t writer;
    bool writer_started;
    bool done;                   /* the reader has finished: join it (srv->lock) */
    bool in_transmission;        /* srv->lock */
    struct nbd_conn *next;       /* srv->conns */

    /* negotiated (reader thread only, then read-only) */
    struct nbd_export *exp;
    uint64_t deadline_ms;        /* end of the handshake (monotonic) */
    bool no_zeroes;
    bool structured;
    uint16_t tflags;
    struct meta_ctx ctx[NBDSRV_MAX_CONTEXTS];
    unsigned nctx;
    char *meta_export;           /* the export the contexts were set for */
    void *tls;                   /* the GnuTLS session after STARTTLS, or NULL */
    uint8_t *tls_stage;          /* writer thread: small pieces gathered into a record */

    /* input buffer (reader thread) */
    uint8_t in[4096];
    size_t in_pos, in_end;

    /* requests in flight (lock) */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned in_flight;
    uint64_t in_flight_bytes;
    struct nbd_req *free_reqs;
    size_t cached_bytes;

    /* replies (send_lock) */
    pthread_mutex_t send_lock;
    pthread_cond_t send_cond;
    struct nbd_req *outq, **outq_tail;
    bool writer_stop;
    bool send_dead;              /* a send failed: drop every reply */
};

struct listener {
    int fd;
    char *path;                  /* UNIX socket to remove, or NULL */
    dev_t dev;
    ino_t ino;
};

struct nbdsrv {
    struct nbdsrv_config cfg;
    pthread_mutex_t lock;
    pthread_cond_t cond;         /* a connection ended */
    struct listener *listeners;
    size_t nlisteners;
    struct nbd_export *exports;
    struct nbd_conn *conns;
    unsigned nconns;             /* connections whose reader is running */
    int wake_fd;                 /* eventfd: wakes the accept thread */
    pthread_t accept_thread;
    bool started;
    bool stopping;
    bool shut_down;
    size_t cached_bytes;         /* request buffers kept by all connections (atomic) */
    struct nbdsrv_tls *tls;      /* credentials (nbdsrv_set_tls), or NULL: no TLS */
};

/* server.c */
void nbdsrv_log(struct nbdsrv *srv, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
/* Find a visible export by name ("" is the only export, if there is one);
 * with @ref, take a reference.  srv->lock held by the caller. */
struct nbd_export *nbdsrv_find_export_locked(struct nbdsrv *srv, const char *name);
void nbdsrv_export_ref_locked(struct nbd_export *exp);
void nbdsrv_export_unref(struct nbd_export *exp);
/* A NULL-terminated list of the export's bitmap names (free with strv_free). */
char **nbdsrv_export_bitmaps(struct nbd_export *exp);
void strv_free(char **v);
/* Wake the accept thread (to reap a finished connection). */
void nbdsrv_wake(struct nbdsrv *srv);
uint64_t nbdsrv_now_ms(void);
/* pthread_create with every signal blocked and a modest stack. */
int nbdsrv_spawn(pthread_t *t, void *(*fn)(void *), void *arg);

/* sockets.c */
void *nbdsrv_accept_main(void *opaque);
/* Join and free connections whose threads have finished. */
void nbdsrv_reap(struct nbdsrv *srv);
void nbdsrv_close_listeners(struct nbdsrv *srv);

/* conn.c */
/* Take over connected socket @fd: start its reader thread. */
int conn_start(struct nbdsrv *srv, int fd, const char *peer);
/*
 * Read exactly @len bytes (from the input buffer first).  Before the
 * handshake deadline passes (conn->deadline_ms, 0: none).  Returns 0, or
 * -1 on end of file, error or timeout (errno: 0 for a clean end of file,
 * ETIMEDOUT).
 */
int conn_read(struct nbd_conn *c, void *buf, size_t len);
/* poll() @c's socket for @events until the handshake deadline: 0 ready,
 * -1 timed out (errno ETIMEDOUT) or failed. */
int conn_poll(struct nbd_conn *c, short events);
/* Skip @len bytes of input. */
int conn_skip(struct nbd_conn *c, uint64_t len);
/* Handshake: write @len bytes (blocking, within the deadline); @more:
 * more follows at once (MSG_MORE: one TCP segment for a reply). */
int conn_write(struct nbd_conn *c, const void *buf, size_t len, bool more);
/* A request object with a buffer of at least @bufsize bytes, counted as
 * in flight; waits while the connection's byte budget is used up. */
struct nbd_req *conn_req_get(struct nbd_conn *c, size_t bufsize, size_t budget);
/* Grow @req's buffer to @size bytes (contents not kept). */
void conn_req_reserve(struct nbd_req *req, size_t size);
/* Send @req's reply (req->iov) and release it; any thread. */
void conn_send_reply(struct nbd_req *req);
/* Release a request without a reply. */
void conn_req_put(struct nbd_req *req);
/* Wait until fewer than max_in_flight requests are in flight. */
void conn_wait_slot(struct nbd_conn *c);
/* Hard-disconnect: stop reading and sending. */
void conn_abort(struct nbd_conn *c);

/* tls.c (GnuTLS is loaded when nbdsrv_set_tls is first called) */
void nbdsrv_tls_free(struct nbdsrv_tls *t);
/* Does the server refuse clients that do not STARTTLS? */
bool nbdsrv_tls_required(struct nbdsrv *srv);
/* STARTTLS was acknowledged: the TLS handshake on @c (c->tls set).  0, or
 * -1 (logged: the client is refused). */
int conn_tls_start(struct nbd_conn *c);
/* recv and send through c->tls, as conn_recv and conn_write do in clear:
 * recv returns at least one byte, 0 at the end (errno 0), or -1 (errno,
 * ETIMEDOUT past the handshake deadline); send sends all or fails. */
ssize_t conn_tls_recv(struct nbd_conn *c, void *buf, size_t len);
int conn_tls_send(struct nbd_conn *c, const void *buf, size_t len);
/* Close the session (@bye: send close_notify first) and free it. */
void conn_tls_end(struct nbd_conn *c, bool bye);
/* Size of c->tls_stage: one TLS record. */
#define NBDSRV_TLS_STAGE (16u << 10)

/* handshake.c: returns 0 when transmission may start, -1 to close. */
int nbd_handshake(struct nbd_conn *c);
void meta_ctx_clear(struct nbd_conn *c);

/* protocol.c: the transmission phase, until the client leaves. */
void nbd_transmission(struct nbd_conn *c);
/* Transmission flags of @exp for connection @c. */
uint16_t nbd_export_tflags(struct nbd_conn *c, struct nbd_export *exp);

#endif
