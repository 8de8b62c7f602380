/*
 * blockctl - write-intent bitmaps (as md-raid keeps one)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A live mirror's record of the regions where its source may differ from
 * its target, kept in a small file beside the job's journal: a bit is
 * durable (written and synced) before any guest write it covers reaches
 * the source, and is cleared only once the copy of its region is durable
 * on the target, lazily.  After a crash, the set bits are a superset of
 * what a resumed mirror still has to copy.
 *
 * Regions are coarse (4 MiB at least; at most 65536 of them), so the bits
 * of a disk fit in 8 KiB and a guest rarely waits for one.  Writers that
 * need bits at the same time share one write and sync of the file.
 *
 * File: a 64-byte header ("BLKCTLWI", version 1, the disk's size and the
 * region size, little endian) and the bits, region I at byte I/8, bit
 * I%8.
 */
#ifndef BLOCKCTL_LIB_WIB_H
#define BLOCKCTL_LIB_WIB_H

#include "lib/compiler.h"
#include "lib/error.h"

struct wib;

/* A new bitmap file @path for a disk of @size bytes, all clear and synced. */
struct wib *wib_create(const char *path, uint64_t size, struct error **errp);
/* An existing one (resuming a job). */
struct wib *wib_open(const char *path, struct error **errp);
uint64_t wib_granularity(const struct wib *w);

/*
 * The regions of [off, off+len) marked, durably, before this returns:
 * 0, or -errno (nothing can be promised: the write must not go ahead).
 */
int wib_mark(struct wib *w, uint64_t off, uint64_t len);
/* Mark [off, off+len) in memory only: durable once a wib_save (or a
 * wib_mark's sync) has written it; a wib_mark meanwhile still waits. */
void wib_set(struct wib *w, uint64_t off, uint64_t len);
/* Is [off, off+len) wholly marked (durably)? */
bool wib_test(struct wib *w, uint64_t off, uint64_t len);
/* Clear the region containing @off (in memory; wib_save writes it). */
void wib_clear_region(struct wib *w, uint64_t off);
/* Write the bits out (those asked for, cleared ones gone) and sync: 0 or -errno. */
int wib_save(struct wib *w);
/* The next marked region at or after @pos: false when none. */
bool wib_next(struct wib *w, uint64_t pos, uint64_t *off, uint64_t *len);
/* Close; with @remove, the file goes too. */
void wib_close(struct wib *w, bool remove);

#endif
