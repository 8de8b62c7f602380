/*
 * blockctl - a small pool of worker threads for blocking I/O
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * NBD connections and jobs hand requests to the pool instead of doing the
 * file I/O themselves, so that many requests run at once on a few
 * threads.  The queue is unbounded by itself: every submitter bounds its
 * own requests in flight (an NBD connection, a job's copy window).
 */
#ifndef BLOCKCTL_LIB_POOL_H
#define BLOCKCTL_LIB_POOL_H

#include "lib/compiler.h"

struct workpool;

struct workpool *workpool_new(unsigned threads);
/* Run @fn(@arg) on a worker thread, in submission order of start. */
void workpool_submit(struct workpool *p, void (*fn)(void *arg), void *arg);
/* Wait for everything submitted to finish, then stop the threads. */
void workpool_free(struct workpool *p);
unsigned workpool_threads(const struct workpool *p);

#endif
