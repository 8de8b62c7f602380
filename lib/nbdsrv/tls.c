/*
 * blockctl - the agent's NBD server: TLS (NBD_OPT_STARTTLS) through GnuTLS
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Credentials are QEMU's: an x509 directory as tls-creds-x509 lays it out
 * (the client must show a certificate signed by ca-cert.pem, as QEMU's
 * verify-peer=on default asks), or a PSK file as qemu-nbd's tls-creds-psk
 * reads (psktool's USERNAME:HEXKEY lines).
 *
 * After STARTTLS a connection's bytes go through its GnuTLS session: the
 * reader thread receives, and one thread at a time sends (the reader
 * during the handshake, the writer thread in transmission), which GnuTLS
 * allows on one session.  The transport functions below keep the
 * handshake deadline, as the clear path does.
 *
 * GnuTLS is loaded with dlopen when TLS is configured, as libnbd is in
 * formats/nbd.c: linking it would cost every blockctl command about a
 * millisecond at start-up (its constructor), for a feature only the
 * agent uses.
 */
#include "lib/compiler.h"
#include "lib/nbdsrv/internal.h"
#include "lib/tlsfiles.h"

#include <dlfcn.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define GNUTLS_FUNCS(X)                                                                    \
    X(gnutls_certificate_allocate_credentials) X(gnutls_certificate_free_credentials)      \
    X(gnutls_certificate_set_x509_trust_file) X(gnutls_certificate_set_x509_crl_file)      \
    X(gnutls_certificate_set_x509_key_file) X(gnutls_certificate_set_known_dh_params)      \
    X(gnutls_certificate_server_set_request) X(gnutls_psk_allocate_server_credentials)     \
    X(gnutls_psk_free_server_credentials) X(gnutls_psk_set_server_credentials_file)        \
    X(gnutls_psk_set_server_known_dh_params) X(gnutls_psk_server_get_username)             \
    X(gnutls_priority_init) X(gnutls_priority_deinit) X(gnutls_priority_set)               \
    X(gnutls_init) X(gnutls_deinit) X(gnutls_credentials_set)                              \
    X(gnutls_session_set_verify_cert) X(gnutls_session_get_verify_cert_status)             \
    X(gnutls_transport_set_ptr) X(gnutls_transport_set_push_function)                      \
    X(gnutls_transport_set_pull_function) X(gnutls_transport_set_pull_timeout_function)    \
    X(gnutls_handshake) X(gnutls_error_is_fatal) X(gnutls_strerror) X(gnutls_alert_get)    \
    X(gnutls_alert_get_name) X(gnutls_alert_send_appropriate) X(gnutls_record_recv) X(gnutls_record_send) X(gnutls_bye)    \
    X(gnutls_protocol_get_version) X(gnutls_protocol_get_name)

#define GNUTLS_DECLARE(f) static __typeof__(f) *p_##f;
GNUTLS_FUNCS(GNUTLS_DECLARE)
#undef GNUTLS_DECLARE

static pthread_once_t gnutls_once = PTHREAD_ONCE_INIT;
static char *gnutls_load_error;

static void gnutls_load(void)
{
    void *h = dlopen("libgnutls.so.30", RTLD_NOW | RTLD_LOCAL);

    if (!h) {
        gnutls_load_error = xasprintf("TLS needs GnuTLS (Debian package libgnutls30): %s",
                                      dlerror());
        return;
    }
#define GNUTLS_LOAD(f)                                                          \
    if (!gnutls_load_error && !(p_##f = (__typeof__(f) *)dlsym(h, #f))) {     \
        gnutls_load_error = xasprintf("libgnutls.so.30 lacks %s", #f);        \
    }
    GNUTLS_FUNCS(GNUTLS_LOAD)
#undef GNUTLS_LOAD
}

/* the loaded functions under their own names */
#define G(f) p_##f

struct nbdsrv_tls {
    enum nbdsrv_tls_mode mode;
    bool psk;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_cred;
    gnutls_priority_t prio;
};

/* x509: QEMU's priority; PSK adds the PSK key exchanges, as QEMU does */
#define PRIO_X509 "NORMAL"
#define PRIO_PSK "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"

static int load_x509(struct nbdsrv_tls *t, const char *dir, struct error **errp)
{
    CLEANUP_FREE char *ca = xasprintf("%s/ca-cert.pem", dir);
    CLEANUP_FREE char *crl = xasprintf("%s/ca-crl.pem", dir);
    CLEANUP_FREE char *cert = xasprintf("%s/server-cert.pem", dir);
    CLEANUP_FREE char *key = xasprintf("%s/server-key.pem", dir);
    int r;

    if (tls_x509_dir_check(dir, true, errp) < 0) {
        return -EINVAL;
    }
    r = G(gnutls_certificate_allocate_credentials)(&t->x509);
    if (r < 0) {
        error_setg(errp, "TLS: %s", G(gnutls_strerror)(r));
        return -ENOMEM;
    }
    r = G(gnutls_certificate_set_x509_trust_file)(t->x509, ca, GNUTLS_X509_FMT_PEM);
    if (r <= 0) {
        error_setg(errp, "TLS credentials '%s': ca-cert.pem: %s", dir,
                   r < 0 ? G(gnutls_strerror)(r) : "no certificate in it");
        return -EINVAL;
    }
    if (access(crl, F_OK) == 0) {
        r = G(gnutls_certificate_set_x509_crl_file)(t->x509, crl, GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            error_setg(errp, "TLS credentials '%s': ca-crl.pem: %s", dir, G(gnutls_strerror)(r));
            return -EINVAL;
        }
    }
    r = G(gnutls_certificate_set_x509_key_file)(t->x509, cert, key, GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        error_setg(errp, "TLS credentials '%s': server-cert.pem and server-key.pem: %s", dir,
                   G(gnutls_strerror)(r));
        return -EINVAL;
    }
    G(gnutls_certificate_set_known_dh_params)(t->x509, GNUTLS_SEC_PARAM_MEDIUM);
    return 0;
}

static int load_psk(struct nbdsrv_tls *t, const char *file, struct error **errp)
{
    int r;

    if (tls_psk_file_check(file, NULL, errp) < 0) {
        return -EINVAL;
    }
    r = G(gnutls_psk_allocate_server_credentials)(&t->psk_cred);
    if (r < 0) {
        error_setg(errp, "TLS: %s", G(gnutls_strerror)(r));
        return -ENOMEM;
    }
    r = G(gnutls_psk_set_server_credentials_file)(t->psk_cred, file);
    if (r < 0) {
        error_setg(errp, "TLS PSK file '%s': %s", file, G(gnutls_strerror)(r));
        return -EINVAL;
    }
    G(gnutls_psk_set_server_known_dh_params)(t->psk_cred, GNUTLS_SEC_PARAM_MEDIUM);
    t->psk = true;
    return 0;
}

void nbdsrv_tls_free(struct nbdsrv_tls *t)
{
    if (!t) {
        return;
    }
    if (t->prio) {
        G(gnutls_priority_deinit)(t->prio);
    }
    if (t->x509) {
        G(gnutls_certificate_free_credentials)(t->x509);
    }
    if (t->psk_cred) {
        G(gnutls_psk_free_server_credentials)(t->psk_cred);
    }
    free(t);
}

int nbdsrv_set_tls(struct nbdsrv *srv, const struct nbdsrv_tls_opts *o, struct error **errp)
{
    struct nbdsrv_tls *t;
    int r;

    if (srv->started || srv->nconns) {
        error_setg(errp, "TLS must be set up before the NBD server starts");
        return -EBUSY;
    }
    if (o->mode == NBDSRV_TLS_OFF) {
        nbdsrv_tls_free(srv->tls);
        srv->tls = NULL;
        return 0;
    }
    if (!o->creds_dir == !o->psk_file) {
        error_setg(errp, "TLS needs either x509 credentials or a PSK file");
        return -EINVAL;
    }
    pthread_once(&gnutls_once, gnutls_load);
    if (gnutls_load_error) {
        error_setg(errp, "%s", gnutls_load_error);
        return -ENOTSUP;
    }
    t = xzalloc(sizeof(*t));
    t->mode = o->mode;
    r = o->creds_dir ? load_x509(t, o->creds_dir, errp) : load_psk(t, o->psk_file, errp);
    if (r == 0) {
        r = G(gnutls_priority_init)(&t->prio, t->psk ? PRIO_PSK : PRIO_X509, NULL);
        if (r < 0) {
            error_setg(errp, "TLS priority: %s", G(gnutls_strerror)(r));
            t->prio = NULL;
            r = -EINVAL;
        }
    }
    if (r < 0) {
        nbdsrv_tls_free(t);
        return r;
    }
    nbdsrv_tls_free(srv->tls);
    srv->tls = t;
    return 0;
}

bool nbdsrv_tls_required(struct nbdsrv *srv)
{
    return srv->tls && srv->tls->mode == NBDSRV_TLS_REQUIRE;
}

/* --- the transport under a session --- */

static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
    struct nbd_conn *c = ptr;

    for (;;) {
        ssize_t r;

        if (c->deadline_ms && conn_poll(c, POLLIN) < 0) {
            return -1;
        }
        r = recv(c->fd, buf, len, 0);
        if (r >= 0 || errno != EINTR) {
            return r;
        }
    }
}

static int tls_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
    struct nbd_conn *c = ptr;
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
    int r;

    do {
        r = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)MIN(ms, (unsigned)INT_MAX));
    } while (r < 0 && errno == EINTR);
    return r;
}

static ssize_t tls_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
    struct nbd_conn *c = ptr;

    for (;;) {
        ssize_t r = send(c->fd, buf, len, MSG_NOSIGNAL | (c->deadline_ms ? MSG_DONTWAIT : 0));

        if (r >= 0) {
            return r;
        }
        if (errno == EINTR) {
            continue;
        }
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && c->deadline_ms) {
            if (conn_poll(c, POLLOUT) < 0) {
                return -1;
            }
            continue;
        }
        return -1;
    }
}

/* Why the handshake with @c failed (@r: what gnutls_handshake returned). */
static void log_handshake_error(struct nbd_conn *c, gnutls_session_t s, int r, int err)
{
    const char *why = G(gnutls_strerror)(r);
    char buf[160];

    if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
        unsigned status = G(gnutls_session_get_verify_cert_status)(s);
        if (status & GNUTLS_CERT_SIGNER_NOT_FOUND) {
            why = "its certificate is not signed by our CA (ca-cert.pem)";
        } else if (status & GNUTLS_CERT_EXPIRED) {
            why = "its certificate has expired";
        } else if (status & GNUTLS_CERT_NOT_ACTIVATED) {
            why = "its certificate is not valid yet";
        } else if (status & GNUTLS_CERT_REVOKED) {
            why = "its certificate is revoked";
        } else {
            why = "its certificate does not verify";
        }
    } else if (r == GNUTLS_E_NO_CERTIFICATE_FOUND || r == GNUTLS_E_CERTIFICATE_REQUIRED) {
        why = "it showed no certificate (one signed by our CA is required)";
    } else if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        const char *alert = G(gnutls_alert_get_name)(G(gnutls_alert_get)(s));
        snprintf(buf, sizeof(buf), "it sent the alert '%s'", alert ? alert : "?");
        why = buf;
    } else if ((r == GNUTLS_E_PULL_ERROR || r == GNUTLS_E_PUSH_ERROR) && err == ETIMEDOUT) {
        why = "handshake timed out";
    } else if (r == GNUTLS_E_DECRYPTION_FAILED || r == GNUTLS_E_MAC_VERIFY_FAILED) {
        why = "decryption failed (not the same pre-shared key?)";
    }
    nbdsrv_log(c->srv, "client %s refused: TLS handshake failed: %s", c->peer, why);
}

int conn_tls_start(struct nbd_conn *c)
{
    struct nbdsrv_tls *t = c->srv->tls;
    gnutls_session_t s;
    int r, err = 0;

    r = G(gnutls_init)(&s, GNUTLS_SERVER);
    if (r < 0) {
        nbdsrv_log(c->srv, "client %s: TLS: %s", c->peer, G(gnutls_strerror)(r));
        return -1;
    }
    r = G(gnutls_priority_set)(s, t->prio);
    if (r == 0) {
        if (t->psk) {
            r = G(gnutls_credentials_set)(s, GNUTLS_CRD_PSK, t->psk_cred);
        } else {
            r = G(gnutls_credentials_set)(s, GNUTLS_CRD_CERTIFICATE, t->x509);
            G(gnutls_certificate_server_set_request)(s, GNUTLS_CERT_REQUIRE);
            /* the client's certificate: signed by our CA (no host name to match) */
            G(gnutls_session_set_verify_cert)(s, NULL, 0);
        }
    }
    if (r < 0) {
        nbdsrv_log(c->srv, "client %s: TLS: %s", c->peer, G(gnutls_strerror)(r));
        G(gnutls_deinit)(s);
        return -1;
    }
    G(gnutls_transport_set_ptr)(s, c);
    G(gnutls_transport_set_push_function)(s, tls_push);
    G(gnutls_transport_set_pull_function)(s, tls_pull);
    G(gnutls_transport_set_pull_timeout_function)(s, tls_pull_timeout);
    do {
        errno = 0;
        r = G(gnutls_handshake)(s);
        err = errno;
    } while (r < 0 && !G(gnutls_error_is_fatal)(r));
    if (r < 0) {
        log_handshake_error(c, s, r, err);
        /* tell the client why (an unknown CA, no certificate...) */
        G(gnutls_alert_send_appropriate)(s, r);
        G(gnutls_deinit)(s);
        return -1;
    }
    c->tls = s;
    if (t->psk) {
        const char *user = G(gnutls_psk_server_get_username)(s);
        nbdsrv_log(c->srv, "client %s: %s with the key of '%s'", c->peer,
                   G(gnutls_protocol_get_name)(G(gnutls_protocol_get_version)(s)),
                   user ? user : "?");
    } else {
        nbdsrv_log(c->srv, "client %s: %s, its certificate verified", c->peer,
                   G(gnutls_protocol_get_name)(G(gnutls_protocol_get_version)(s)));
    }
    return 0;
}

ssize_t conn_tls_recv(struct nbd_conn *c, void *buf, size_t len)
{
    for (;;) {
        ssize_t r;

        errno = 0;
        r = G(gnutls_record_recv)((gnutls_session_t)c->tls, buf, len);
        if (r >= 0) {
            errno = 0;
            return r;
        }
        if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN) {
            continue;
        }
        if (r == GNUTLS_E_PREMATURE_TERMINATION) {
            /* closed without close_notify: the end, as in clear */
            errno = 0;
            return 0;
        }
        if (errno == ETIMEDOUT || (c->deadline_ms && nbdsrv_now_ms() >= c->deadline_ms)) {
            errno = ETIMEDOUT;
        } else {
            if (r != GNUTLS_E_PULL_ERROR) {
                nbdsrv_log(c->srv, "client %s: TLS: %s", c->peer, G(gnutls_strerror)((int)r));
            }
            errno = errno ? errno : EPROTO;
        }
        return -1;
    }
}

int conn_tls_send(struct nbd_conn *c, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    while (len) {
        ssize_t r = G(gnutls_record_send)((gnutls_session_t)c->tls, p, len);
        if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN) {
            continue;
        }
        if (r < 0) {
            errno = errno ? errno : EPIPE;
            return -1;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

void conn_tls_end(struct nbd_conn *c, bool bye)
{
    gnutls_session_t s = c->tls;

    if (!s) {
        return;
    }
    if (bye) {
        /* close_notify, if the client still reads: a second at most */
        c->deadline_ms = nbdsrv_now_ms() + 1000;
        G(gnutls_bye)(s, GNUTLS_SHUT_WR);
    }
    G(gnutls_deinit)(s);
    c->tls = NULL;
    free(c->tls_stage);
    c->tls_stage = NULL;
}
