/*
 * blockctl - the agent's NBD server: the server object and its exports
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/nbdsrv/internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>

void nbdsrv_log(struct nbdsrv *srv, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!srv->cfg.log) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    srv->cfg.log(srv->cfg.opaque, "%s", line);
}

uint64_t nbdsrv_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int nbdsrv_spawn(pthread_t *t, void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    sigset_t all, old;
    int r;

    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1u << 20);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r = pthread_create(t, &attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return r;
}

void nbdsrv_wake(struct nbdsrv *srv)
{
    uint64_t one = 1;

    if (write(srv->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the thread is woken anyway */
    }
}

struct nbdsrv *nbdsrv_new(const struct nbdsrv_config *cfg)
{
    struct nbdsrv *srv = xzalloc(sizeof(*srv));

    srv->cfg = *cfg;
    assert(srv->cfg.pool);
    if (!srv->cfg.max_clients) {
        srv->cfg.max_clients = 100;
    }
    if (!srv->cfg.handshake_timeout) {
        srv->cfg.handshake_timeout = 10;
    }
    if (!srv->cfg.max_payload) {
        srv->cfg.max_payload = 32u << 20;
    }
    /* a reply must fit in a chunk and the preferred block size */
    srv->cfg.max_payload = MIN(MAX(srv->cfg.max_payload, 4096u), 1u << 30);
    if (!srv->cfg.max_in_flight) {
        srv->cfg.max_in_flight = 32;
    }
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->cond, NULL);
    srv->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (srv->wake_fd < 0) {
        BUG("eventfd: %s", strerror(errno));
    }
    return srv;
}

int nbdsrv_start(struct nbdsrv *srv, struct error **errp)
{
    int r;

    pthread_mutex_lock(&srv->lock);
    if (srv->started || srv->stopping) {
        pthread_mutex_unlock(&srv->lock);
        error_setg(errp, "the NBD server is already running");
        return -EBUSY;
    }
    srv->started = true;
    pthread_mutex_unlock(&srv->lock);
    r = nbdsrv_spawn(&srv->accept_thread, nbdsrv_accept_main, srv);
    if (r) {
        pthread_mutex_lock(&srv->lock);
        srv->started = false;
        pthread_mutex_unlock(&srv->lock);
        error_setg_errno(errp, r, "cannot start the NBD server");
        return -r;
    }
    return 0;
}

int nbdsrv_add_client(struct nbdsrv *srv, int fd, struct error **errp)
{
    int r;

    pthread_mutex_lock(&srv->lock);
    if (srv->stopping) {
        pthread_mutex_unlock(&srv->lock);
        close(fd);
        error_setg(errp, "the NBD server is shutting down");
        return -ESHUTDOWN;
    }
    pthread_mutex_unlock(&srv->lock);
    /* without nbdsrv_start() no accept thread reaps finished clients */
    nbdsrv_reap(srv);
    r = conn_start(srv, fd, "fd");
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot serve a new NBD client");
    }
    return r;
}

/* --- exports --- */

void strv_free(char **v)
{
    if (!v) {
        return;
    }
    for (char **p = v; *p; p++) {
        free(*p);
    }
    free(v);
}

static bool strv_has(char **v, const char *s)
{
    for (; v && *v; v++) {
        if (!strcmp(*v, s)) {
            return true;
        }
    }
    return false;
}

char **nbdsrv_export_bitmaps(struct nbd_export *exp)
{
    size_t n = 0;
    char **v;

    if (!exp->bitmaps) {
        return blk_bitmap_names(exp->blk);
    }
    while (exp->bitmaps[n]) {
        n++;
    }
    v = xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        v[i] = xstrdup(exp->bitmaps[i]);
    }
    return v;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);

    return n > 0 && n <= NBDSRV_MAX_STRING;
}

struct nbd_export *nbdsrv_find_export_locked(struct nbdsrv *srv, const char *name)
{
    struct nbd_export *only = NULL;
    unsigned visible = 0;

    for (struct nbd_export *e = srv->exports; e; e = e->next) {
        if (e->deleted) {
            continue;
        }
        if (!strcmp(e->name, name)) {
            return e;
        }
        visible++;
        only = e;
    }
    /* the default export (""): the only one there is */
    return !*name && visible == 1 ? only : NULL;
}

void nbdsrv_export_ref_locked(struct nbd_export *exp)
{
    exp->refcnt++;
}

static void export_free(struct nbd_export *exp)
{
    pthread_mutex_destroy(&exp->dc.lock);
    pthread_mutex_destroy(&exp->dc.query);
    blk_unref(exp->blk);
    strv_free(exp->bitmaps);
    free(exp->id);
    free(exp->name);
    free(exp->description);
    free(exp);
}

void nbdsrv_export_unref(struct nbd_export *exp)
{
    struct nbdsrv *srv = exp->srv;
    bool gone, notify;

    pthread_mutex_lock(&srv->lock);
    gone = --exp->refcnt == 0;
    if (gone) {
        struct nbd_export **pp = &srv->exports;
        while (*pp && *pp != exp) {
            pp = &(*pp)->next;
        }
        if (*pp) {
            *pp = exp->next;
        }
    }
    notify = gone && exp->deleted && !srv->shut_down;
    pthread_mutex_unlock(&srv->lock);
    if (!gone) {
        return;
    }
    if (notify) {
        nbdsrv_log(srv, "export '%s' deleted", exp->id);
        if (srv->cfg.export_deleted) {
            srv->cfg.export_deleted(srv->cfg.opaque, exp->id);
        }
    }
    export_free(exp);
}

int nbdsrv_export_add(struct nbdsrv *srv, const struct nbdsrv_export_opts *o,
                      struct error **errp)
{
    const char *name = o->name ? o->name : o->id;
    struct nbd_export *exp;

    if (!o->id || !valid_name(o->id)) {
        error_setg(errp, "NBD export id must be 1 to %d bytes", NBDSRV_MAX_STRING);
        return -EINVAL;
    }
    if (!valid_name(name)) {
        error_setg(errp, "NBD export name must be 1 to %d bytes", NBDSRV_MAX_STRING);
        return -EINVAL;
    }
    if (o->description && strlen(o->description) > NBDSRV_MAX_STRING) {
        error_setg(errp, "NBD export description is longer than %d bytes", NBDSRV_MAX_STRING);
        return -EINVAL;
    }
    if (!o->blk) {
        error_setg(errp, "NBD export '%s' has no disk", o->id);
        return -EINVAL;
    }
    if (o->writable && blk_is_read_only(o->blk)) {
        error_setg(errp, "disk '%s' is read-only: cannot export it writable", blk_name(o->blk));
        return -EPERM;
    }
    if (o->bitmaps) {
        char **have = blk_bitmap_names(o->blk);
        size_t n = 0;
        for (; o->bitmaps[n]; n++) {
            if (!strv_has(have, o->bitmaps[n])) {
                error_setg(errp, "disk '%s' has no bitmap '%s'", blk_name(o->blk), o->bitmaps[n]);
                strv_free(have);
                return -ENOENT;
            }
            if (strlen(o->bitmaps[n]) > NBDSRV_MAX_STRING - 20) {
                error_setg(errp, "bitmap name '%s' is too long for NBD", o->bitmaps[n]);
                strv_free(have);
                return -EINVAL;
            }
        }
        strv_free(have);
    }

    exp = xzalloc(sizeof(*exp));
    exp->srv = srv;
    exp->id = xstrdup(o->id);
    exp->name = xstrdup(name);
    exp->description = o->description ? xstrdup(o->description) : NULL;
    exp->blk = o->blk;
    exp->writable = o->writable;
    exp->allocation_depth = o->allocation_depth;
    if (o->bitmaps) {
        size_t n = 0;
        while (o->bitmaps[n]) {
            n++;
        }
        exp->bitmaps = xcalloc(n + 1, sizeof(char *));
        for (size_t i = 0; i < n; i++) {
            exp->bitmaps[i] = xstrdup(o->bitmaps[i]);
        }
    }
    exp->refcnt = 1;
    pthread_mutex_init(&exp->dc.lock, NULL);
    pthread_mutex_init(&exp->dc.query, NULL);

    pthread_mutex_lock(&srv->lock);
    if (srv->stopping) {
        pthread_mutex_unlock(&srv->lock);
        error_setg(errp, "the NBD server is shutting down");
        exp->blk = NULL;
        export_free(exp);
        return -ESHUTDOWN;
    }
    for (struct nbd_export *e = srv->exports; e; e = e->next) {
        if (!strcmp(e->id, exp->id) || !strcmp(e->name, exp->name)) {
            bool same_id = !strcmp(e->id, exp->id);
            pthread_mutex_unlock(&srv->lock);
            if (same_id) {
                error_setg(errp, "NBD export '%s' already exists", exp->id);
            } else {
                error_setg(errp, "NBD export name '%s' is already in use", exp->name);
            }
            exp->blk = NULL;
            export_free(exp);
            return -EEXIST;
        }
    }
    blk_ref(exp->blk);
    /* appended: NBD_OPT_LIST lists exports in the order they were added */
    {
        struct nbd_export **pp = &srv->exports;
        while (*pp) {
            pp = &(*pp)->next;
        }
        *pp = exp;
    }
    pthread_mutex_unlock(&srv->lock);
    nbdsrv_log(srv, "export '%s' added (disk '%s', %s)", exp->name, blk_name(exp->blk),
               exp->writable ? "writable" : "read-only");
    return 0;
}

int nbdsrv_export_del(struct nbdsrv *srv, const char *id, bool hard, struct error **errp)
{
    struct nbd_export *exp;

    pthread_mutex_lock(&srv->lock);
    for (exp = srv->exports; exp; exp = exp->next) {
        if (!strcmp(exp->id, id)) {
            break;
        }
    }
    if (!exp || (exp->deleted && !hard)) {
        pthread_mutex_unlock(&srv->lock);
        if (exp) {
            error_setg(errp, "NBD export '%s' is already shutting down", id);
            return -EBUSY;
        }
        error_setg(errp, "NBD export '%s' does not exist", id);
        return -ENOENT;
    }
    if (hard) {
        for (struct nbd_conn *c = srv->conns; c; c = c->next) {
            if (!c->done && c->fd >= 0 && c->exp == exp) {
                shutdown(c->fd, SHUT_RDWR);
            }
        }
    }
    if (exp->deleted) {
        pthread_mutex_unlock(&srv->lock);
        return 0;
    }
    exp->deleted = true;
    pthread_mutex_unlock(&srv->lock);
    nbdsrv_export_unref(exp);
    return 0;
}

size_t nbdsrv_list_exports(struct nbdsrv *srv, struct nbdsrv_export_info **out)
{
    size_t n = 0, i = 0;

    pthread_mutex_lock(&srv->lock);
    for (struct nbd_export *e = srv->exports; e; e = e->next) {
        n++;
    }
    *out = xcalloc(n ? n : 1, sizeof(**out));
    for (struct nbd_export *e = srv->exports; e; e = e->next, i++) {
        (*out)[i].id = xstrdup(e->id);
        (*out)[i].name = xstrdup(e->name);
        (*out)[i].disk = xstrdup(blk_name(e->blk));
        (*out)[i].shutting_down = e->deleted;
    }
    pthread_mutex_unlock(&srv->lock);
    return n;
}

void nbdsrv_export_info_free(struct nbdsrv_export_info *info, size_t n)
{
    if (!info) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        free(info[i].id);
        free(info[i].name);
        free(info[i].disk);
    }
    free(info);
}

unsigned nbdsrv_clients(struct nbdsrv *srv)
{
    unsigned n;

    pthread_mutex_lock(&srv->lock);
    n = srv->nconns;
    pthread_mutex_unlock(&srv->lock);
    return n;
}

/* Wait until no connection is left, or until @deadline_ms (0: forever). */
static bool wait_conns(struct nbdsrv *srv, uint64_t deadline_ms)
{
    while (srv->nconns) {
        if (deadline_ms) {
            uint64_t now = nbdsrv_now_ms();
            struct timespec ts;
            if (now >= deadline_ms) {
                return false;
            }
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += (time_t)((deadline_ms - now) / 1000);
            ts.tv_nsec += (long)((deadline_ms - now) % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&srv->cond, &srv->lock, &ts);
        } else {
            pthread_cond_wait(&srv->cond, &srv->lock);
        }
    }
    return true;
}

void nbdsrv_shutdown(struct nbdsrv *srv)
{
    bool started;

    pthread_mutex_lock(&srv->lock);
    if (srv->shut_down) {
        pthread_mutex_unlock(&srv->lock);
        return;
    }
    srv->stopping = true;
    started = srv->started;
    pthread_mutex_unlock(&srv->lock);

    /* no new clients */
    if (started) {
        nbdsrv_wake(srv);
        pthread_join(srv->accept_thread, NULL);
    }
    nbdsrv_close_listeners(srv);

    /*
     * No new requests: the readers see end of file, the requests in
     * flight finish and are answered.  Clients still in the handshake are
     * just closed.
     */
    pthread_mutex_lock(&srv->lock);
    for (struct nbd_conn *c = srv->conns; c; c = c->next) {
        if (!c->done && c->fd >= 0) {
            shutdown(c->fd, c->in_transmission ? SHUT_RD : SHUT_RDWR);
        }
    }
    if (!wait_conns(srv, nbdsrv_now_ms() + NBDSRV_SHUTDOWN_GRACE_MS)) {
        /* a client that does not read its replies: cut it off */
        for (struct nbd_conn *c = srv->conns; c; c = c->next) {
            if (!c->done && c->fd >= 0) {
                shutdown(c->fd, SHUT_RDWR);
            }
        }
        wait_conns(srv, 0);
    }
    srv->shut_down = true;
    pthread_mutex_unlock(&srv->lock);
    nbdsrv_reap(srv);
}

void nbdsrv_free(struct nbdsrv *srv)
{
    struct nbd_export *e, *next;

    if (!srv) {
        return;
    }
    nbdsrv_shutdown(srv);
    for (e = srv->exports; e; e = next) {
        next = e->next;
        export_free(e);
    }
    close(srv->wake_fd);
    nbdsrv_tls_free(srv->tls);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->cond);
    free(srv);
}
