/*
 * blockctl - image files: one descriptor per file per process, with
 * QEMU-compatible permission locks
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * QEMU's file-posix driver locks byte 100+i (F_RDLCK) for every permission
 * i it holds and byte 200+i for every permission it does not share with
 * others, and tests the opposite bytes with F_OFD_GETLK.  blockctl does the
 * same, so a running QEMU and blockctl refuse each other's conflicting
 * opens.  OFD locks belong to the open file description, so a file opened
 * twice in one process (the same base in two chains, compare a a) must
 * share one descriptor: bfile_open() caches by device and inode.
 */
#ifndef BLOCKCTL_LIB_FILE_H
#define BLOCKCTL_LIB_FILE_H

#include "lib/compiler.h"
#include "lib/error.h"

#include <sys/types.h>

/* QEMU's BLK_PERM_* bits (include/block/block-common.h) */
enum {
    PERM_CONSISTENT_READ = 0x01,
    PERM_WRITE = 0x02,
    PERM_WRITE_UNCHANGED = 0x04,
    PERM_RESIZE = 0x08,
    PERM_ALL = 0x0f,
};

struct bfile {
    int fd;
    char *path;            /* as opened */
    dev_t dev;
    ino_t ino;
    bool writable;         /* fd is O_RDWR */
    bool is_blockdev;
    unsigned cache;        /* IO_CACHE_* (lib/io.h) asked for so far */
    unsigned users;
    unsigned held[4];      /* per permission bit: users holding it */
    unsigned unshared[4];  /* per permission bit: users not sharing it */
};

/*
 * Open @path (creating nothing), or take another reference to the already
 * open descriptor of the same file.  @perm is what this user needs (read
 * only when it lacks PERM_WRITE/PERM_RESIZE), @shared what it lets others
 * do.  Fails with QEMU's message when another process holds a conflicting
 * lock.  Returns NULL on failure.
 */
struct bfile *bfile_open(const char *path, unsigned perm, unsigned shared,
                         struct error **errp);
/* Drop the reference taken by bfile_open() with the same @perm/@shared. */
void bfile_close(struct bfile *f, unsigned perm, unsigned shared);
/*
 * Change one user's permissions from (@old_perm, @old_shared) to
 * (@perm, @shared), reopening the descriptor read-write if needed.
 * On failure nothing changes.
 */
int bfile_set_perm(struct bfile *f, unsigned old_perm, unsigned old_shared,
                   unsigned perm, unsigned shared, struct error **errp);
/*
 * Add the cache mode @mode (IO_CACHE_*, lib/io.h) to @f's descriptor: the
 * descriptor is shared, so O_DIRECT and writethrough, once asked for, stay
 * (they are never less safe); IO_CACHE_NO_FLUSH holds while every user
 * asks for it.  A filesystem that refuses O_DIRECT fails with
 * "cannot open 'PATH': filesystem does not support O_DIRECT".
 */
int bfile_set_cache(struct bfile *f, unsigned mode, struct error **errp);
/* Size of the file or block device, or -errno. */
int64_t bfile_size(struct bfile *f);
/* Bytes allocated on disk (st_blocks * 512), or -errno. */
int64_t bfile_allocated(struct bfile *f);

/* Turn image locking off for this process (locking=off). */
void bfile_set_locking(bool on);

#endif
