/*
 * blockctl - a small pool of worker threads for blocking I/O
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/pool.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

struct work {
    void (*fn)(void *);
    void *arg;
    struct work *next;
};

struct workpool {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct work *head, **tail;
    bool stop;
    unsigned nthreads;
    pthread_t *threads;
};

static void *worker(void *opaque)
{
    struct workpool *p = opaque;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        struct work *w;

        while (!p->head && !p->stop) {
            pthread_cond_wait(&p->cond, &p->lock);
        }
        w = p->head;
        if (!w) {
            break;
        }
        p->head = w->next;
        if (!p->head) {
            p->tail = &p->head;
        }
        pthread_mutex_unlock(&p->lock);
        w->fn(w->arg);
        free(w);
        pthread_mutex_lock(&p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

struct workpool *workpool_new(unsigned threads)
{
    struct workpool *p = xzalloc(sizeof(*p));

    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->tail = &p->head;
    p->nthreads = MAX(threads, 1u);
    p->threads = xcalloc(p->nthreads, sizeof(*p->threads));
    for (unsigned i = 0; i < p->nthreads; i++) {
        int r = pthread_create(&p->threads[i], NULL, worker, p);
        if (r) {
            BUG("pthread_create: %s", strerror(r));
        }
    }
    return p;
}

void workpool_submit(struct workpool *p, void (*fn)(void *), void *arg)
{
    struct work *w = xmalloc(sizeof(*w));

    w->fn = fn;
    w->arg = arg;
    w->next = NULL;
    pthread_mutex_lock(&p->lock);
    *p->tail = w;
    p->tail = &w->next;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void workpool_free(struct workpool *p)
{
    if (!p) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->nthreads; i++) {
        pthread_join(p->threads[i], NULL);
    }
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p->threads);
    free(p);
}

unsigned workpool_threads(const struct workpool *p)
{
    return p->nthreads;
}
