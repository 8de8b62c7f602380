/*
 * blockctl - in-memory dirty bitmaps (three-level)
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/bitmap.h"

#include <string.h>

#define WORD_BITS 64

static uint64_t words_for(uint64_t bits)
{
    return DIV_ROUND_UP(bits, WORD_BITS);
}

struct dirty_bitmap *bitmap_new(uint64_t size, uint64_t granularity)
{
    struct dirty_bitmap *bm;

    if (!IS_POWER_OF_2(granularity) || granularity < 512 || granularity > (1ULL << 31)) {
        return NULL;
    }
    bm = xzalloc(sizeof(*bm));
    bm->size = size;
    bm->gran_bits = __builtin_ctzll(granularity);
    bm->nbits = DIV_ROUND_UP(size, granularity);
    bm->nwords = words_for(bm->nbits);
    bm->l0 = xcalloc(bm->nwords ? bm->nwords : 1, sizeof(uint64_t));
    bm->l1 = xcalloc(words_for(bm->nwords) ? words_for(bm->nwords) : 1, sizeof(uint64_t));
    bm->l2 = xcalloc(words_for(words_for(bm->nwords)) ? words_for(words_for(bm->nwords)) : 1,
                     sizeof(uint64_t));
    pthread_mutex_init(&bm->lock, NULL);
    return bm;
}

void bitmap_free(struct dirty_bitmap *bm)
{
    if (!bm) {
        return;
    }
    pthread_mutex_destroy(&bm->lock);
    free(bm->l0);
    free(bm->l1);
    free(bm->l2);
    free(bm);
}

uint64_t bitmap_granularity(const struct dirty_bitmap *bm)
{
    return 1ULL << bm->gran_bits;
}

/* Keep the summary levels in step with level-0 word @w. */
static void sync_word(struct dirty_bitmap *bm, uint64_t w)
{
    uint64_t w1 = w / WORD_BITS;

    if (bm->l0[w]) {
        bm->l1[w1] |= 1ULL << (w % WORD_BITS);
        bm->l2[w1 / WORD_BITS] |= 1ULL << (w1 % WORD_BITS);
    } else {
        bm->l1[w1] &= ~(1ULL << (w % WORD_BITS));
        if (!bm->l1[w1]) {
            bm->l2[w1 / WORD_BITS] &= ~(1ULL << (w1 % WORD_BITS));
        }
    }
}

/* Set (or clear) bits [a, b) of level 0; caller holds the lock. */
static void change_bits(struct dirty_bitmap *bm, uint64_t a, uint64_t b, bool set)
{
    while (a < b) {
        uint64_t w = a / WORD_BITS;
        unsigned lo = a % WORD_BITS;
        unsigned n = (unsigned)MIN((uint64_t)(WORD_BITS - lo), b - a);
        uint64_t mask = (n == WORD_BITS) ? ~0ULL : (((1ULL << n) - 1) << lo);
        uint64_t old = bm->l0[w];
        uint64_t nw = set ? (old | mask) : (old & ~mask);

        if (nw != old) {
            bm->count += __builtin_popcountll(nw) - __builtin_popcountll(old);
            bm->l0[w] = nw;
            bm->gen++;
            if (!old || !nw) {
                sync_word(bm, w);
            }
        }
        a += n;
    }
}

void bitmap_set(struct dirty_bitmap *bm, uint64_t off, uint64_t len)
{
    uint64_t a, b;

    if (!len || off >= bm->size) {
        return;
    }
    len = MIN(len, bm->size - off);
    a = off >> bm->gran_bits;
    b = ((off + len - 1) >> bm->gran_bits) + 1;
    pthread_mutex_lock(&bm->lock);
    change_bits(bm, a, b, true);
    pthread_mutex_unlock(&bm->lock);
}

void bitmap_set_bits(struct dirty_bitmap *bm, uint64_t first_bit, uint64_t nbits)
{
    pthread_mutex_lock(&bm->lock);
    change_bits(bm, MIN(first_bit, bm->nbits), MIN(first_bit + nbits, bm->nbits), true);
    pthread_mutex_unlock(&bm->lock);
}

void bitmap_reset(struct dirty_bitmap *bm, uint64_t off, uint64_t len)
{
    uint64_t g = bitmap_granularity(bm);
    uint64_t a, b;

    if (!len || off >= bm->size) {
        return;
    }
    len = MIN(len, bm->size - off);
    a = DIV_ROUND_UP(off, g);
    b = (off + len == bm->size) ? bm->nbits : (off + len) >> bm->gran_bits;
    if (b <= a) {
        return;
    }
    pthread_mutex_lock(&bm->lock);
    change_bits(bm, a, b, false);
    pthread_mutex_unlock(&bm->lock);
}

void bitmap_set_all(struct dirty_bitmap *bm)
{
    pthread_mutex_lock(&bm->lock);
    change_bits(bm, 0, bm->nbits, true);
    pthread_mutex_unlock(&bm->lock);
}

void bitmap_clear_all(struct dirty_bitmap *bm)
{
    pthread_mutex_lock(&bm->lock);
    memset(bm->l0, 0, bm->nwords * sizeof(uint64_t));
    memset(bm->l1, 0, words_for(bm->nwords) * sizeof(uint64_t));
    memset(bm->l2, 0, words_for(words_for(bm->nwords)) * sizeof(uint64_t));
    bm->count = 0;
    bm->gen++;
    pthread_mutex_unlock(&bm->lock);
}

bool bitmap_get(struct dirty_bitmap *bm, uint64_t off)
{
    uint64_t bit = off >> bm->gran_bits;
    bool r;

    if (off >= bm->size) {
        return false;
    }
    pthread_mutex_lock(&bm->lock);
    r = (bm->l0[bit / WORD_BITS] >> (bit % WORD_BITS)) & 1;
    pthread_mutex_unlock(&bm->lock);
    return r;
}

uint64_t bitmap_dirty_bytes(struct dirty_bitmap *bm)
{
    uint64_t n;

    pthread_mutex_lock(&bm->lock);
    n = bm->count << bm->gran_bits;
    if (bm->count && bm->l0[(bm->nbits - 1) / WORD_BITS] >> ((bm->nbits - 1) % WORD_BITS) & 1) {
        /* the last granule may be partial */
        n -= (bm->nbits << bm->gran_bits) - bm->size;
    }
    pthread_mutex_unlock(&bm->lock);
    return n;
}

/* First set bit >= @from, or nbits; caller holds the lock. */
static uint64_t find_set(struct dirty_bitmap *bm, uint64_t from)
{
    uint64_t w, w1, w2;
    uint64_t n1 = words_for(bm->nwords), n2 = words_for(n1);

    if (from >= bm->nbits) {
        return bm->nbits;
    }
    w = from / WORD_BITS;
    /* within the current level-0 word */
    {
        uint64_t v = bm->l0[w] & (~0ULL << (from % WORD_BITS));
        if (v) {
            return MIN(w * WORD_BITS + __builtin_ctzll(v), bm->nbits);
        }
    }
    w++;
    /* level-1 words from w */
    while (w < bm->nwords) {
        w1 = w / WORD_BITS;
        uint64_t v1 = bm->l1[w1] & (~0ULL << (w % WORD_BITS));
        if (v1) {
            w = w1 * WORD_BITS + __builtin_ctzll(v1);
            return MIN(w * WORD_BITS + __builtin_ctzll(bm->l0[w]), bm->nbits);
        }
        /* skip ahead with level 2 */
        w1++;
        w2 = w1 / WORD_BITS;
        while (w2 < n2) {
            uint64_t v2 = bm->l2[w2] & (w1 % WORD_BITS ? (~0ULL << (w1 % WORD_BITS)) : ~0ULL);
            if (v2) {
                w1 = w2 * WORD_BITS + __builtin_ctzll(v2);
                break;
            }
            w2++;
            w1 = w2 * WORD_BITS;
        }
        if (w2 >= n2) {
            return bm->nbits;
        }
        w = w1 * WORD_BITS;
    }
    return bm->nbits;
}

/* First clear bit >= @from, or nbits; caller holds the lock. */
static uint64_t find_clear(struct dirty_bitmap *bm, uint64_t from)
{
    uint64_t w = from / WORD_BITS;

    if (from >= bm->nbits) {
        return bm->nbits;
    }
    {
        uint64_t v = ~bm->l0[w] & (~0ULL << (from % WORD_BITS));
        if (v) {
            return MIN(w * WORD_BITS + __builtin_ctzll(v), bm->nbits);
        }
    }
    for (w++; w < bm->nwords; w++) {
        if (~bm->l0[w]) {
            return MIN(w * WORD_BITS + __builtin_ctzll(~bm->l0[w]), bm->nbits);
        }
    }
    return bm->nbits;
}

bool bitmap_next_dirty(struct dirty_bitmap *bm, uint64_t start, uint64_t max_len,
                       uint64_t *off, uint64_t *len)
{
    uint64_t a, b, o, e;

    if (start >= bm->size) {
        return false;
    }
    pthread_mutex_lock(&bm->lock);
    a = find_set(bm, start >> bm->gran_bits);
    if (a >= bm->nbits) {
        pthread_mutex_unlock(&bm->lock);
        return false;
    }
    b = find_clear(bm, a);
    pthread_mutex_unlock(&bm->lock);
    o = MAX(a << bm->gran_bits, start);
    e = MIN(b << bm->gran_bits, bm->size);
    if (max_len && e - o > max_len) {
        e = o + max_len;
    }
    *off = o;
    *len = e - o;
    return true;
}

/* Two bitmaps' locks, always in the same order (their addresses): no
 * thread holds one while waiting for the other in the opposite order. */
static void lock_two(struct dirty_bitmap *a, struct dirty_bitmap *b)
{
    if ((uintptr_t)a > (uintptr_t)b) {
        struct dirty_bitmap *t = a;
        a = b;
        b = t;
    }
    pthread_mutex_lock(&a->lock);
    pthread_mutex_lock(&b->lock);
}

void bitmap_merge(struct dirty_bitmap *dst, struct dirty_bitmap *src)
{
    uint64_t pos = 0, off, len;

    if (dst == src) {
        return;
    }
    if (dst->gran_bits == src->gran_bits && dst->nbits >= src->nbits) {
        lock_two(src, dst);
        for (uint64_t w = 0; w < src->nwords; w++) {
            uint64_t old = dst->l0[w], nw = old | src->l0[w];
            if (nw != old) {
                dst->count += __builtin_popcountll(nw) - __builtin_popcountll(old);
                dst->l0[w] = nw;
                dst->gen++;
                sync_word(dst, w);
            }
        }
        pthread_mutex_unlock(&dst->lock);
        pthread_mutex_unlock(&src->lock);
        return;
    }
    while (bitmap_next_dirty(src, pos, 0, &off, &len)) {
        bitmap_set(dst, off, len);
        pos = off + len;
    }
}

void bitmap_serialize(struct dirty_bitmap *bm, uint64_t first_bit, uint8_t *out, size_t nbytes)
{
    assert(first_bit % 8 == 0);
    pthread_mutex_lock(&bm->lock);
    for (size_t i = 0; i < nbytes; i++) {
        uint64_t bit = first_bit + i * 8;
        uint8_t v = 0;
        if (bit < bm->nbits) {
            v = (uint8_t)(bm->l0[bit / WORD_BITS] >> (bit % WORD_BITS));
            if (bit + 8 > bm->nbits) {
                v &= (uint8_t)((1u << (bm->nbits - bit)) - 1);
            }
        }
        out[i] = v;
    }
    pthread_mutex_unlock(&bm->lock);
}

void bitmap_deserialize(struct dirty_bitmap *bm, uint64_t first_bit, const uint8_t *in,
                        size_t nbytes)
{
    assert(first_bit % 8 == 0);
    pthread_mutex_lock(&bm->lock);
    for (size_t i = 0; i < nbytes; i++) {
        uint64_t bit = first_bit + i * 8;
        uint64_t w = bit / WORD_BITS;
        uint8_t v = in[i];
        uint64_t old, nw;

        if (bit >= bm->nbits) {
            break;
        }
        if (bit + 8 > bm->nbits) {
            v &= (uint8_t)((1u << (bm->nbits - bit)) - 1);
        }
        old = bm->l0[w];
        nw = (old & ~(0xffULL << (bit % WORD_BITS))) | ((uint64_t)v << (bit % WORD_BITS));
        if (nw != old) {
            bm->count += __builtin_popcountll(nw) - __builtin_popcountll(old);
            bm->l0[w] = nw;
            bm->gen++;
            sync_word(bm, w);
        }
    }
    pthread_mutex_unlock(&bm->lock);
}

struct dirty_bitmap *bitmap_copy(struct dirty_bitmap *bm)
{
    struct dirty_bitmap *c = bitmap_new(bm->size, bitmap_granularity(bm));

    bitmap_assign(c, bm);
    return c;
}

void bitmap_assign(struct dirty_bitmap *dst, struct dirty_bitmap *src)
{
    uint64_t n1 = DIV_ROUND_UP(src->nwords, WORD_BITS);

    assert(dst->nbits == src->nbits && dst->gran_bits == src->gran_bits);
    if (dst == src) {
        return;
    }
    lock_two(src, dst);
    memcpy(dst->l0, src->l0, src->nwords * sizeof(uint64_t));
    memcpy(dst->l1, src->l1, n1 * sizeof(uint64_t));
    memcpy(dst->l2, src->l2, DIV_ROUND_UP(n1, WORD_BITS) * sizeof(uint64_t));
    dst->count = src->count;
    dst->gen++;
    pthread_mutex_unlock(&dst->lock);
    pthread_mutex_unlock(&src->lock);
}

uint64_t bitmap_gen(struct dirty_bitmap *bm)
{
    uint64_t g;

    pthread_mutex_lock(&bm->lock);
    g = bm->gen;
    pthread_mutex_unlock(&bm->lock);
    return g;
}

bool bitmap_bits_clear(struct dirty_bitmap *bm, uint64_t first_bit, uint64_t nbits)
{
    uint64_t f;

    if (first_bit >= bm->nbits) {
        return true;
    }
    pthread_mutex_lock(&bm->lock);
    f = find_set(bm, first_bit);
    pthread_mutex_unlock(&bm->lock);
    return f >= first_bit + nbits;
}
