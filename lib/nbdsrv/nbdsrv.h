/*
 * blockctl - the agent's NBD server
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Serves disks (struct blk) over the NBD protocol (NetworkBlockDevice/nbd
 * doc/proto.md; QEMU's extensions in qemu docs/interop/nbd.rst): fixed
 * newstyle handshake, structured replies, meta contexts base:allocation,
 * qemu:allocation-depth and qemu:dirty-bitmap:NAME.
 *
 * Threads: one accept thread per server; one reader thread per connection
 * that parses requests and hands them to the shared worker pool; replies
 * are written by the workers under the connection's send lock, so they go
 * out of order.  Nothing here prints or exits: events are reported through
 * the hooks in struct nbdsrv_config.
 *
 * Files: server.c (the server object, exports, shutdown), sockets.c
 * (listen, accept, limits), conn.c (a connection's life: reader and writer
 * threads, request buffers, the reply queue), handshake.c (options phase),
 * protocol.c (transmission phase: request checks and commands),
 * internal.h (what they share).
 *
 * Limits: options of 64 KiB or more are refused without being read into
 * memory (longer than 1 MiB: disconnect), strings at most 4096 bytes, at
 * most 128 queries and 16 selected metadata contexts per option; a write
 * larger than max_payload is answered EINVAL and the connection closed;
 * each connection has at most max_in_flight requests and 32 MiB of
 * payload in flight (its reader waits beyond that).  A protocol violation
 * closes that connection only.
 */
#ifndef BLOCKCTL_LIB_NBDSRV_H
#define BLOCKCTL_LIB_NBDSRV_H

#include "lib/compiler.h"
#include "lib/blk.h"
#include "lib/error.h"
#include "lib/pool.h"

#include <sys/types.h>

struct nbdsrv;

struct nbdsrv_config {
    struct workpool *pool;        /* where requests run */
    unsigned max_clients;         /* connections at once (0: 100) */
    unsigned handshake_timeout;   /* seconds to finish the handshake (0: 10) */
    uint32_t max_payload;         /* largest read/write request (0: 32 MiB) */
    unsigned max_in_flight;       /* requests in flight per connection (0: 32) */
    /* Log one line (a client connected, was refused, disconnected...). */
    void (*log)(void *opaque, const char *fmt, ...) ATTRIBUTE_PRINTF(2, 3);
    /* An export removed with nbdsrv_export_del() is gone (no client uses
     * it any more): QEMU's BLOCK_EXPORT_DELETED.  Called from any thread
     * (a client's, or nbdsrv_export_del's own) with no lock of the server
     * held; it must not wait for the server (defer to the main loop with
     * loop_call).  Not called for exports that nbdsrv_free releases. */
    void (*export_deleted)(void *opaque, const char *id);
    void *opaque;
};

struct nbdsrv *nbdsrv_new(const struct nbdsrv_config *cfg);

/*
 * NBD over TLS (NBD_OPT_STARTTLS), with GnuTLS: x509 credentials in a
 * directory laid out as QEMU's tls-creds-x509 (ca-cert.pem,
 * server-cert.pem, server-key.pem, optionally ca-crl.pem; a client must
 * show a certificate signed by that CA), or a PSK file as qemu-nbd's
 * (lines USERNAME:HEXKEY, as psktool writes).  NBDSRV_TLS_ON offers TLS
 * and lets clients stay in clear, NBDSRV_TLS_REQUIRE answers every option
 * but STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD.  The same for every
 * listener and client.
 */
enum nbdsrv_tls_mode { NBDSRV_TLS_OFF, NBDSRV_TLS_ON, NBDSRV_TLS_REQUIRE };
struct nbdsrv_tls_opts {
    enum nbdsrv_tls_mode mode;
    const char *creds_dir;        /* x509 credentials, or */
    const char *psk_file;         /* a PSK file (exactly one of the two) */
};
/* Set TLS up (before nbdsrv_start and any client): the credentials are
 * loaded now, so that a missing or malformed file is an error here. */
int nbdsrv_set_tls(struct nbdsrv *srv, const struct nbdsrv_tls_opts *o, struct error **errp);

/*
 * Listen on @addr: "unix:PATH" (created with @mode; an existing socket
 * nobody listens on is replaced, a live one is an error) or
 * "tcp:HOST:PORT" (HOST may be empty or a bracketed IPv6 address).
 * May be called several times before nbdsrv_start().
 */
int nbdsrv_listen(struct nbdsrv *srv, const char *addr, mode_t mode, struct error **errp);
/* Start accepting clients. */
int nbdsrv_start(struct nbdsrv *srv, struct error **errp);
/*
 * Serve a client on the connected stream socket @fd (taken over, even on
 * failure): socket activation, a descriptor passed in, tests.  Counts
 * against max_clients; needs no nbdsrv_start().
 */
int nbdsrv_add_client(struct nbdsrv *srv, int fd, struct error **errp);

struct nbdsrv_export_opts {
    const char *id;               /* export id (QMP block-export-add's id) */
    const char *name;             /* the name clients ask for (default: id) */
    const char *description;      /* NBD_INFO_DESCRIPTION, or NULL */
    struct blk *blk;              /* the disk (the export takes a reference) */
    bool writable;                /* false: NBD_FLAG_READ_ONLY */
    bool allocation_depth;        /* offer qemu:allocation-depth */
    /*
     * Which qemu:dirty-bitmap:NAME contexts to offer: NULL means every
     * bitmap the disk has when the client asks (blk_bitmap_names), a
     * NULL-terminated list means just those.
     */
    const char *const *bitmaps;
};

/*
 * Add an export; its id and name must be new (also among exports still
 * shutting down), and bitmaps listed must exist.  A client asking for the
 * empty name ("the default export") gets the only export, if there is
 * exactly one.
 */
int nbdsrv_export_add(struct nbdsrv *srv, const struct nbdsrv_export_opts *o,
                      struct error **errp);
/*
 * Remove export @id: new clients no longer see it; with @hard, its
 * connections are closed now, otherwise they go on until the clients
 * disconnect.  config.export_deleted fires when the last one has gone.
 */
int nbdsrv_export_del(struct nbdsrv *srv, const char *id, bool hard, struct error **errp);

/* What query-block-exports lists. */
struct nbdsrv_export_info {
    char *id;
    char *name;
    char *disk;                   /* blk_name() of the exported disk */
    bool shutting_down;
};
/* A snapshot of the exports; free with nbdsrv_export_info_free. */
size_t nbdsrv_list_exports(struct nbdsrv *srv, struct nbdsrv_export_info **out);
void nbdsrv_export_info_free(struct nbdsrv_export_info *info, size_t n);

/* Number of connected clients (all exports). */
unsigned nbdsrv_clients(struct nbdsrv *srv);

/*
 * Stop accepting, let requests in flight finish and answer them, close
 * every connection and remove UNIX sockets this server created (if they
 * are still its own).  Clients that do not read their replies are cut off
 * after 5 seconds.  Waits for all of its threads.  Exports still there
 * are released by nbdsrv_free (without export_deleted).  Then free it
 * (nbdsrv_free shuts down first if needed).
 */
void nbdsrv_shutdown(struct nbdsrv *srv);
void nbdsrv_free(struct nbdsrv *srv);

#endif
