/*
 * blockctl - the agent's NBD server: listening sockets, accepting clients
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/nbdsrv/internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

static void add_listener(struct nbdsrv *srv, int fd, const char *path, const struct stat *st)
{
    struct listener *l;

    pthread_mutex_lock(&srv->lock);
    srv->listeners = xrealloc(srv->listeners, (srv->nlisteners + 1) * sizeof(*srv->listeners));
    l = &srv->listeners[srv->nlisteners++];
    l->fd = fd;
    l->path = path ? xstrdup(path) : NULL;
    l->dev = st ? st->st_dev : 0;
    l->ino = st ? st->st_ino : 0;
    pthread_mutex_unlock(&srv->lock);
}

/* Is somebody listening on the UNIX socket @sa? */
static int unix_socket_live(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int r;

    if (fd < 0) {
        return -errno;
    }
    r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    r = r == 0 ? 1 : errno == ECONNREFUSED ? 0 : -errno;
    close(fd);
    return r;
}

static int listen_unix(struct nbdsrv *srv, const char *path, mode_t mode, struct error **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    int fd, r;

    if (!*path) {
        error_setg(errp, "NBD server: empty UNIX socket path");
        return -EINVAL;
    }
    if (strlen(path) >= sizeof(sa.sun_path)) {
        error_setg(errp, "NBD server: '%s': socket path is longer than %zu bytes", path,
                   sizeof(sa.sun_path) - 1);
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            error_setg(errp, "NBD server: '%s': exists and is not a socket", path);
            return -EEXIST;
        }
        r = unix_socket_live(&sa);
        if (r > 0) {
            error_setg(errp, "NBD server: '%s': another server is listening on it", path);
            return -EADDRINUSE;
        }
        if (r < 0) {
            error_setg_errno(errp, -r, "NBD server: '%s'", path);
            return r;
        }
        /* a stale socket: nobody listens on it any more */
        if (unlink(path) < 0 && errno != ENOENT) {
            r = -errno;
            error_setg_errno(errp, -r, "NBD server: cannot remove stale socket '%s'", path);
            return r;
        }
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        r = -errno;
        error_setg_errno(errp, -r, "NBD server: socket");
        return r;
    }
    /*
     * bind() creates the file with the socket's mode less the umask, so
     * it is never more open than @mode; chmod() then gives exactly @mode.
     */
    if (fchmod(fd, mode & 07777) < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        r = -errno;
        error_setg_errno(errp, -r, "NBD server: cannot bind '%s'", path);
        close(fd);
        return r;
    }
    if (chmod(path, mode & 07777) < 0 || listen(fd, 128) < 0 || stat(path, &st) < 0) {
        r = -errno;
        error_setg_errno(errp, -r, "NBD server: cannot listen on '%s'", path);
        unlink(path);
        close(fd);
        return r;
    }
    add_listener(srv, fd, path, &st);
    nbdsrv_log(srv, "listening on unix:%s", path);
    return 0;
}

static int listen_tcp(struct nbdsrv *srv, const char *hostport, struct error **errp)
{
    struct addrinfo hints = { .ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res, *ai;
    CLEANUP_FREE char *host = NULL;
    const char *colon = strrchr(hostport, ':');
    const char *port;
    int r, n = 0, first_err = 0;

    if (!colon || !colon[1]) {
        error_setg(errp, "NBD server: 'tcp:%s': expected tcp:HOST:PORT", hostport);
        return -EINVAL;
    }
    port = colon + 1;
    host = xstrndup(hostport, (size_t)(colon - hostport));
    if (host[0] == '[') {
        size_t hl = strlen(host);
        if (hl < 2 || host[hl - 1] != ']') {
            error_setg(errp, "NBD server: 'tcp:%s': bad IPv6 address", hostport);
            return -EINVAL;
        }
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    r = getaddrinfo(*host ? host : NULL, port, &hints, &res);
    if (r) {
        error_setg(errp, "NBD server: 'tcp:%s': %s", hostport, gai_strerror(r));
        return -EINVAL;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        int one = 1;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
        if (fd < 0) {
            first_err = first_err ? first_err : errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            first_err = first_err ? first_err : errno;
            close(fd);
            continue;
        }
        add_listener(srv, fd, NULL, NULL);
        n++;
    }
    freeaddrinfo(res);
    if (!n) {
        error_setg_errno(errp, first_err ? first_err : EADDRNOTAVAIL,
                         "NBD server: cannot listen on 'tcp:%s'", hostport);
        return -(first_err ? first_err : EADDRNOTAVAIL);
    }
    nbdsrv_log(srv, "listening on tcp:%s", hostport);
    return 0;
}

int nbdsrv_listen(struct nbdsrv *srv, const char *addr, mode_t mode, struct error **errp)
{
    bool started;

    pthread_mutex_lock(&srv->lock);
    started = srv->started || srv->stopping;
    pthread_mutex_unlock(&srv->lock);
    if (started) {
        error_setg(errp, "NBD server: cannot add '%s' once the server runs", addr);
        return -EBUSY;
    }
    if (!strncmp(addr, "unix:", 5)) {
        return listen_unix(srv, addr + 5, mode, errp);
    }
    if (!strncmp(addr, "tcp:", 4)) {
        return listen_tcp(srv, addr + 4, errp);
    }
    error_setg(errp, "NBD server: '%s': expected unix:PATH or tcp:HOST:PORT", addr);
    return -EINVAL;
}

void nbdsrv_close_listeners(struct nbdsrv *srv)
{
    struct listener *ls;
    size_t n;

    pthread_mutex_lock(&srv->lock);
    ls = srv->listeners;
    n = srv->nlisteners;
    srv->listeners = NULL;
    srv->nlisteners = 0;
    pthread_mutex_unlock(&srv->lock);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        close(ls[i].fd);
        /* remove the socket only if it still is ours */
        if (ls[i].path && lstat(ls[i].path, &st) == 0 && st.st_dev == ls[i].dev &&
            st.st_ino == ls[i].ino) {
            unlink(ls[i].path);
        }
        free(ls[i].path);
    }
    free(ls);
}

static char *peer_name(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN] = "?";

    switch (ss->ss_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        return xasprintf("%s:%u", host, ntohs(in->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        return xasprintf("[%s]:%u", host, ntohs(in6->sin6_port));
    }
    default:
        return xstrdup("unix");
    }
}

void nbdsrv_reap(struct nbdsrv *srv)
{
    struct nbd_conn *done = NULL, **pp;

    pthread_mutex_lock(&srv->lock);
    pp = &srv->conns;
    while (*pp) {
        struct nbd_conn *c = *pp;
        if (c->done) {
            *pp = c->next;
            c->next = done;
            done = c;
        } else {
            pp = &c->next;
        }
    }
    pthread_mutex_unlock(&srv->lock);
    while (done) {
        struct nbd_conn *c = done;
        done = c->next;
        pthread_join(c->reader, NULL);
        while (c->free_reqs) {
            struct nbd_req *r = c->free_reqs;
            c->free_reqs = r->next;
            free(r->buf);
            free(r);
        }
        __atomic_sub_fetch(&srv->cached_bytes, c->cached_bytes, __ATOMIC_RELAXED);
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->send_lock);
        pthread_cond_destroy(&c->send_cond);
        free(c->peer);
        free(c);
    }
}

void *nbdsrv_accept_main(void *opaque)
{
    struct nbdsrv *srv = opaque;
    struct pollfd *pfd = NULL;
    size_t n;

    pthread_mutex_lock(&srv->lock);
    n = srv->nlisteners;
    pfd = xcalloc(n + 1, sizeof(*pfd));
    for (size_t i = 0; i < n; i++) {
        pfd[i + 1].fd = srv->listeners[i].fd;
        pfd[i + 1].events = POLLIN;
    }
    pthread_mutex_unlock(&srv->lock);
    pfd[0].fd = srv->wake_fd;
    pfd[0].events = POLLIN;

    for (;;) {
        bool stop;

        if (poll(pfd, n + 1, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            nbdsrv_log(srv, "NBD server: poll: %s", strerror(errno));
            break;
        }
        if (pfd[0].revents) {
            uint64_t v;
            if (read(srv->wake_fd, &v, sizeof(v)) < 0) {
                /* nothing pending */
            }
            nbdsrv_reap(srv);
        }
        pthread_mutex_lock(&srv->lock);
        stop = srv->stopping;
        pthread_mutex_unlock(&srv->lock);
        if (stop) {
            break;
        }
        for (size_t i = 1; i <= n; i++) {
            if (!pfd[i].revents) {
                continue;
            }
            for (;;) {
                struct sockaddr_storage ss;
                socklen_t sl = sizeof(ss);
                int fd = accept4(pfd[i].fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
                char *peer;
                if (fd < 0) {
                    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                        errno == ENOMEM) {
                        nbdsrv_log(srv, "NBD server: cannot accept a client: %s",
                                   strerror(errno));
                        /* back off a little instead of spinning */
                        poll(NULL, 0, 100);
                    }
                    break;
                }
                peer = peer_name(&ss);
                conn_start(srv, fd, peer);
                free(peer);
            }
        }
    }
    free(pfd);
    return NULL;
}
