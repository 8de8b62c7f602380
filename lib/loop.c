/*
 * blockctl - the agent's main loop
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/loop.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>

struct watch {
    int id;           /* 0: free slot */
    int fd;
    short events;
    loop_fd_fn *fn;
    void *opaque;
};

struct call {
    loop_call_fn *fn;
    void *opaque;
    struct call *next;
};

struct timer {
    int id;
    uint64_t due_ms;
    loop_call_fn *fn;
    void *opaque;
    struct timer *next;
};

struct loop {
    struct watch *w;
    size_t nw;
    int next_id;
    struct timer *timers;        /* sorted by due time */
    pthread_mutex_t lock;        /* calls and quit */
    struct call *calls, **calls_tail;
    bool quit;
    int efd;
    pthread_t thread;
    bool running;
};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void run_calls(struct loop *l);

struct loop *loop_new(void)
{
    struct loop *l = xzalloc(sizeof(*l));

    pthread_mutex_init(&l->lock, NULL);
    l->calls_tail = &l->calls;
    l->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->efd < 0) {
        BUG("eventfd: %s", strerror(errno));
    }
    l->next_id = 1;
    return l;
}

void loop_free(struct loop *l)
{
    if (!l) {
        return;
    }
    /* calls made while shutting down still run (they may free things) */
    while (l->calls) {
        run_calls(l);
    }
    while (l->timers) {
        struct timer *t = l->timers;
        l->timers = t->next;
        free(t);
    }
    close(l->efd);
    pthread_mutex_destroy(&l->lock);
    free(l->w);
    free(l);
}

int loop_watch(struct loop *l, int fd, short events, loop_fd_fn *fn, void *opaque)
{
    size_t i;

    for (i = 0; i < l->nw && l->w[i].id; i++) {
    }
    if (i == l->nw) {
        l->w = xrealloc(l->w, (l->nw + 8) * sizeof(*l->w));
        memset(l->w + l->nw, 0, 8 * sizeof(*l->w));
        l->nw += 8;
    }
    l->w[i] = (struct watch){ .id = l->next_id++, .fd = fd, .events = events, .fn = fn,
                              .opaque = opaque };
    return l->w[i].id;
}

static struct watch *find_watch(struct loop *l, int id)
{
    for (size_t i = 0; i < l->nw; i++) {
        if (l->w[i].id == id) {
            return &l->w[i];
        }
    }
    return NULL;
}

void loop_watch_set_events(struct loop *l, int id, short events)
{
    struct watch *w = find_watch(l, id);

    if (w) {
        w->events = events;
    }
}

void loop_unwatch(struct loop *l, int id)
{
    struct watch *w = find_watch(l, id);

    if (w) {
        w->id = 0;
    }
}

static void wake(struct loop *l)
{
    uint64_t one = 1;
    ssize_t r;

    do {
        r = write(l->efd, &one, sizeof(one));
    } while (r < 0 && errno == EINTR);
}

void loop_call(struct loop *l, loop_call_fn *fn, void *opaque)
{
    struct call *c = xmalloc(sizeof(*c));

    c->fn = fn;
    c->opaque = opaque;
    c->next = NULL;
    pthread_mutex_lock(&l->lock);
    *l->calls_tail = c;
    l->calls_tail = &c->next;
    pthread_mutex_unlock(&l->lock);
    wake(l);
}

int loop_timer(struct loop *l, unsigned ms, loop_call_fn *fn, void *opaque)
{
    struct timer *t = xmalloc(sizeof(*t)), **pp;

    t->id = l->next_id++;
    t->due_ms = now_ms() + ms;
    t->fn = fn;
    t->opaque = opaque;
    for (pp = &l->timers; *pp && (*pp)->due_ms <= t->due_ms; pp = &(*pp)->next) {
    }
    t->next = *pp;
    *pp = t;
    return t->id;
}

void loop_cancel_timer(struct loop *l, int id)
{
    for (struct timer **pp = &l->timers; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct timer *t = *pp;
            *pp = t->next;
            free(t);
            return;
        }
    }
}

void loop_quit(struct loop *l)
{
    pthread_mutex_lock(&l->lock);
    l->quit = true;
    pthread_mutex_unlock(&l->lock);
    wake(l);
}

bool loop_in_thread(struct loop *l)
{
    pthread_t t;

    if (!__atomic_load_n(&l->running, __ATOMIC_ACQUIRE)) {
        return false;
    }
    __atomic_load(&l->thread, &t, __ATOMIC_RELAXED);
    return pthread_equal(t, pthread_self());
}

static void run_calls(struct loop *l)
{
    struct call *c;

    pthread_mutex_lock(&l->lock);
    c = l->calls;
    l->calls = NULL;
    l->calls_tail = &l->calls;
    pthread_mutex_unlock(&l->lock);
    while (c) {
        struct call *next = c->next;
        c->fn(c->opaque);
        free(c);
        c = next;
    }
}

static void run_timers(struct loop *l)
{
    uint64_t now = now_ms();

    while (l->timers && l->timers->due_ms <= now) {
        struct timer *t = l->timers;
        l->timers = t->next;
        t->fn(t->opaque);
        free(t);
    }
}

void loop_run(struct loop *l)
{
    struct pollfd *pfd = NULL;
    int *ids = NULL;
    size_t cap = 0;

    {
        pthread_t self = pthread_self();
        __atomic_store(&l->thread, &self, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&l->running, true, __ATOMIC_RELEASE);
    for (;;) {
        size_t n = 0;
        int timeout = -1, r;
        bool quit;

        pthread_mutex_lock(&l->lock);
        quit = l->quit;
        l->quit = false;
        pthread_mutex_unlock(&l->lock);
        if (quit) {
            break;
        }
        if (cap < l->nw + 1) {
            cap = l->nw + 1;
            pfd = xrealloc(pfd, cap * sizeof(*pfd));
            ids = xrealloc(ids, cap * sizeof(*ids));
        }
        pfd[n].fd = l->efd;
        pfd[n].events = POLLIN;
        ids[n++] = 0;
        for (size_t i = 0; i < l->nw; i++) {
            if (l->w[i].id) {
                pfd[n].fd = l->w[i].fd;
                pfd[n].events = l->w[i].events;
                ids[n++] = l->w[i].id;
            }
        }
        if (l->timers) {
            uint64_t now = now_ms();
            timeout = l->timers->due_ms <= now ? 0 : (int)MIN(l->timers->due_ms - now, 60000);
        }
        r = poll(pfd, n, timeout);
        if (r < 0 && errno != EINTR) {
            BUG("poll: %s", strerror(errno));
        }
        if (r > 0 && (pfd[0].revents & POLLIN)) {
            uint64_t v;
            while (read(l->efd, &v, sizeof(v)) > 0) {
            }
        }
        run_calls(l);
        for (size_t i = 1; r > 0 && i < n; i++) {
            struct watch *w;
            if (!pfd[i].revents) {
                continue;
            }
            /* the watch may have gone (or its slot been reused) meanwhile */
            w = find_watch(l, ids[i]);
            if (w && w->fd == pfd[i].fd) {
                w->fn(w->fd, pfd[i].revents, w->opaque);
            }
        }
        run_timers(l);
    }
    __atomic_store_n(&l->running, false, __ATOMIC_RELEASE);
    free(pfd);
    free(ids);
}
