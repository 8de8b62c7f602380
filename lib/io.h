/*
 * blockctl - the one small I/O layer every image file access goes through
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Besides retrying short transfers and EINTR, it is where faults are
 * injected for tests.  BLOCKCTL_FAULT holds comma-separated rules
 *
 *     OP:WHEN:ACTION[:GLOB]
 *
 * OP      pread pwrite fsync fdatasync sync (either) ftruncate fallocate
 *         rename dirsync open unlink any
 * WHEN    N (the Nth matching call, counted from 1), N+ (the Nth and every
 *         later one) or * (every matching call)
 * ACTION  eio, enospc (fail with that errno); short (transfer half, then
 *         fail: ENOSPC for writes, EIO for reads; calls that transfer
 *         nothing fail with ENOSPC); torn (transfer half, then SIGKILL;
 *         calls that transfer nothing: SIGKILL); kill (SIGKILL before the call)
 * GLOB    only calls on files whose path or base name matches (fnmatch);
 *         for rename the new name, for dirsync the file whose folder is
 *         synced, for unlink the file removed
 *
 * Each rule counts the matching calls that no earlier rule failed.
 *
 * e.g. BLOCKCTL_FAULT=pwrite:3:eio or BLOCKCTL_FAULT=fsync:*:eio:*.qcow2
 *
 * BLOCKCTL_FAULT_COUNT=FILE counts the calls instead: at exit, one line
 * "OP N" per operation above (and "sync", "any": the sums those match) is
 * appended to FILE, so that a test knows the range of WHEN to sweep.
 * Calls are counted whether or not a rule fails them; a last line
 * "fired N" says how many calls BLOCKCTL_FAULT failed.  A process killed
 * (or ending in _exit) writes nothing.
 *
 * BLOCKCTL_IOLOG=FILE logs every call that changes a file, for power-loss
 * tests (tests/tools/iolog-replay.py builds the states a power failure
 * could leave from it): each write with its data, each fsync, fdatasync,
 * ftruncate, fallocate, rename, unlink and folder sync, and each open that
 * creates, truncates or may write a file, with the file's device and inode
 * (unlink: the inode it removed).  Records are appended as the calls
 * complete; a sync records which records it covers (those before it
 * began).  Binary: a 64-byte header (struct iolog_rec in lib/io.c: magic
 * "BIOL", type, seq, dev, ino, off, len, aux, payload length) and the
 * payload.  Unset, it costs one test of a variable per call; nothing is
 * locked.
 */
#ifndef BLOCKCTL_LIB_IO_H
#define BLOCKCTL_LIB_IO_H

#include "lib/compiler.h"

#include <sys/types.h>

/* open(2); returns an fd or -errno.  O_CLOEXEC is always added. */
int io_open(const char *path, int flags, mode_t mode);
/* close(2) of an fd opened with io_open; returns 0 or -errno. */
int io_close(int fd);
/* Read up to @len bytes at @off, retrying short reads; returns the number
 * of bytes read (less than @len only at end of file) or -errno. */
ssize_t io_pread(int fd, void *buf, size_t len, uint64_t off);
/* Write exactly @len bytes at @off; returns 0 or -errno. */
int io_pwrite(int fd, const void *buf, size_t len, uint64_t off);
int io_fsync(int fd);
int io_fdatasync(int fd);
int io_ftruncate(int fd, uint64_t len);
/* fallocate(2); returns 0 or -errno (-EOPNOTSUPP where unsupported). */
int io_fallocate(int fd, int mode, uint64_t off, uint64_t len);
/* rename(2) of @from to @to; returns 0 or -errno. */
int io_rename(const char *from, const char *to);
/* rename(2) that fails with -EEXIST instead of replacing @to (fault op "rename"). */
int io_rename_noreplace(const char *from, const char *to);
/* unlink(2) of @path; returns 0 or -errno.  The removals that matter
 * after a crash (journals, half-made images) go through here, so that
 * faults reach them and the write log has them. */
int io_unlink(const char *path);
/* fsync the directory that contains @path; returns 0 or -errno. */
int io_dirsync(const char *path);
/*
 * Cache modes of a descriptor (QEMU's cache=): IO_CACHE_DIRECT is O_DIRECT
 * (none, directsync): every request is aligned to what the file needs
 * (io_align), through an aligned bounce buffer when the caller's is not;
 * IO_CACHE_WRITETHROUGH syncs the data after each write (writethrough,
 * directsync); IO_CACHE_NO_FLUSH makes fsync and fdatasync do nothing
 * (unsafe).  BLOCKCTL_FAULT_COUNT's "bounced N" counts the requests that
 * went through a bounce buffer.
 */
enum { IO_CACHE_DIRECT = 1u << 0, IO_CACHE_WRITETHROUGH = 1u << 1, IO_CACHE_NO_FLUSH = 1u << 2 };
/* Set @fd's mode (O_DIRECT, once on, stays on): 0 or -errno (-EINVAL:
 * the filesystem refuses O_DIRECT). */
int io_set_cache(int fd, unsigned mode);
/* The alignment O_DIRECT requests on @fd need (1: buffered). */
size_t io_align(int fd);
/* Name registered for @fd by io_open (never NULL). */
const char *io_name(int fd);
/* Where this layer's warnings (a malformed BLOCKCTL_FAULT rule, a write
 * log that cannot be written) go, one line without its newline; unset,
 * they are dropped (lib/ never prints). */
void io_set_warn_sink(void (*sink)(const char *msg));

/* Re-read BLOCKCTL_FAULT (tests and the unit harness call this). */
void io_fault_reload(void);
/*
 * Replace the rules by @spec (BLOCKCTL_FAULT's syntax; NULL or "": none),
 * their counts starting from 0: a test arms faults at the moment it wants
 * (the agent's x-blockctl-fault).  Returns how many rules there were and
 * stores up to @max of their counts (matching calls so far) in @counts.
 */
size_t io_fault_set(const char *spec, unsigned long *counts, size_t max);

#endif
