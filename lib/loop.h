/*
 * blockctl - the agent's main loop: file descriptors and calls from other
 * threads, run in one thread
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The control path of the agent (QMP, signals, job completion, graph
 * changes) runs in the thread that calls loop_run(); other threads hand it
 * work with loop_call().  Built on poll(2) and an eventfd; a few dozen
 * descriptors at most, so a linear scan is fine.
 */
#ifndef BLOCKCTL_LIB_LOOP_H
#define BLOCKCTL_LIB_LOOP_H

#include "lib/compiler.h"

struct loop;

/* @revents: POLLIN/POLLOUT/POLLERR/POLLHUP as poll(2) returned them. */
typedef void loop_fd_fn(int fd, short revents, void *opaque);
typedef void loop_call_fn(void *opaque);

struct loop *loop_new(void);
/* Free a loop that is not running; calls still pending are run first. */
void loop_free(struct loop *l);

/*
 * Watch @fd for @events (POLLIN, POLLOUT); returns a watch id.  Loop
 * thread only.  Removing a watch inside a callback is allowed.
 */
int loop_watch(struct loop *l, int fd, short events, loop_fd_fn *fn, void *opaque);
void loop_watch_set_events(struct loop *l, int id, short events);
void loop_unwatch(struct loop *l, int id);

/* Any thread: run @fn(@opaque) in the loop thread, in order of calls. */
void loop_call(struct loop *l, loop_call_fn *fn, void *opaque);

/* Loop thread: run @fn(@opaque) once, @ms milliseconds from now; returns
 * a timer id for loop_cancel_timer. */
int loop_timer(struct loop *l, unsigned ms, loop_call_fn *fn, void *opaque);
void loop_cancel_timer(struct loop *l, int id);

/* Run until loop_quit(); returns then. */
void loop_run(struct loop *l);
/* Any thread: make loop_run() return after the current iteration. */
void loop_quit(struct loop *l);
/* True in the thread running @l. */
bool loop_in_thread(struct loop *l);

#endif
