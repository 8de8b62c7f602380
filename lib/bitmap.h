/*
 * blockctl - in-memory dirty bitmaps
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * One bit per granule (a power of two, 512 B to 2 GiB, QEMU's range).  Three levels: the bits, one
 * summary bit per non-zero 64-bit word, and one per non-zero summary
 * word, so finding the next dirty extent in a mostly clean bitmap skips
 * 4096 granules per look at the top level.  All functions lock the
 * bitmap; they are safe to call from several threads.
 */
#ifndef BLOCKCTL_LIB_BITMAP_H
#define BLOCKCTL_LIB_BITMAP_H

#include "lib/compiler.h"

#include <pthread.h>

struct dirty_bitmap {
    uint64_t size;          /* bytes covered */
    uint32_t gran_bits;     /* log2(granularity) */
    uint64_t nbits;
    uint64_t nwords;        /* level-0 words */
    uint64_t *l0;
    uint64_t *l1;
    uint64_t *l2;
    uint64_t count;         /* set bits */
    uint64_t gen;           /* changes whenever a bit changes */
    pthread_mutex_t lock;
};

/* A clean bitmap covering @size bytes; NULL if @granularity is not a
 * power of two in 512 .. 2^31. */
struct dirty_bitmap *bitmap_new(uint64_t size, uint64_t granularity);
void bitmap_free(struct dirty_bitmap *bm);
uint64_t bitmap_granularity(const struct dirty_bitmap *bm);
/* Mark every granule that [off, off+len) touches. */
void bitmap_set(struct dirty_bitmap *bm, uint64_t off, uint64_t len);
/* Clear the granules that [off, off+len) covers completely (the range's
 * last granule also when it ends at the end of the bitmap). */
void bitmap_reset(struct dirty_bitmap *bm, uint64_t off, uint64_t len);
void bitmap_set_all(struct dirty_bitmap *bm);
void bitmap_clear_all(struct dirty_bitmap *bm);
bool bitmap_get(struct dirty_bitmap *bm, uint64_t off);
/* Dirty bytes (whole granules, capped at the size). */
uint64_t bitmap_dirty_bytes(struct dirty_bitmap *bm);
/*
 * The first dirty extent at or after byte @start (granule aligned except
 * at the end of the bitmap): true and *off, *len set, or false.  @max_len
 * bounds *len (0: no bound).
 */
bool bitmap_next_dirty(struct dirty_bitmap *bm, uint64_t start, uint64_t max_len,
                       uint64_t *off, uint64_t *len);
/* dst |= src (any granularities; same size or src smaller). */
void bitmap_merge(struct dirty_bitmap *dst, struct dirty_bitmap *src);
/* A copy of @bm (contents and granularity). */
struct dirty_bitmap *bitmap_copy(struct dirty_bitmap *bm);
/* Make @dst's bits those of @src (same size and granularity). */
void bitmap_assign(struct dirty_bitmap *dst, struct dirty_bitmap *src);
/* @bm->gen read under its lock */
uint64_t bitmap_gen(struct dirty_bitmap *bm);
/*
 * Serialisation as qcow2 stores it: bit i of the bitmap is bit (i % 8) of
 * byte i / 8.  Granule indexes; @nbytes * 8 granules from @first_bit
 * (which must be a multiple of 8).  Bits past the end read as zero.
 */
void bitmap_serialize(struct dirty_bitmap *bm, uint64_t first_bit, uint8_t *out, size_t nbytes);
void bitmap_deserialize(struct dirty_bitmap *bm, uint64_t first_bit, const uint8_t *in,
                        size_t nbytes);
/* Set granules [first_bit, first_bit + nbits). */
void bitmap_set_bits(struct dirty_bitmap *bm, uint64_t first_bit, uint64_t nbits);
/* True if no granule in [first_bit, first_bit+nbits) is set. */
bool bitmap_bits_clear(struct dirty_bitmap *bm, uint64_t first_bit, uint64_t nbits);

#endif
