/*
 * blockctl - qcow2: metadata cache for L2 tables and refcount blocks
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Tables are kept in on-disk byte order.  All functions run under s->lock.
 * Write-back order (see qcow2.h): dirty refcount blocks first, then a
 * sync, then dirty L2 tables, then queued refcount decrements.
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

void qcow2_cache_init(struct qcow2_cache *c, const char *name, size_t n, uint64_t cluster_size)
{
    memset(c, 0, sizeof(*c));
    c->name = name;
    c->n = n;
    c->e = xcalloc(n, sizeof(*c->e));
    c->table_size = cluster_size;
    for (size_t i = 0; i < n; i++) {
        /* buffers are allocated on first use: small images stay small */
        c->e[i].hnext = -1;
    }
    c->nbuckets = n * 2;
    c->hash = xmalloc(c->nbuckets * sizeof(*c->hash));
    for (size_t i = 0; i < c->nbuckets; i++) {
        c->hash[i] = -1;
    }
}

void qcow2_cache_destroy(struct qcow2_cache *c)
{
    if (!c->e) {
        return;
    }
    for (size_t i = 0; i < c->n; i++) {
        free(c->e[i].data);
    }
    free(c->e);
    free(c->hash);
    memset(c, 0, sizeof(*c));
}

static size_t bucket(struct qcow2_cache *c, uint64_t offset)
{
    uint64_t h = offset >> 9;
    h ^= h >> 17;
    h *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(h % c->nbuckets);
}

static int lookup(struct qcow2_cache *c, uint64_t offset)
{
    for (int i = c->hash[bucket(c, offset)]; i >= 0; i = c->e[i].hnext) {
        if (c->e[i].offset == offset) {
            return i;
        }
    }
    return -1;
}

static void unhash(struct qcow2_cache *c, int idx)
{
    int *pp = &c->hash[bucket(c, c->e[idx].offset)];

    while (*pp >= 0) {
        if (*pp == idx) {
            *pp = c->e[idx].hnext;
            c->e[idx].hnext = -1;
            return;
        }
        pp = &c->e[*pp].hnext;
    }
}

static void rehash(struct qcow2_cache *c, int idx)
{
    size_t b = bucket(c, c->e[idx].offset);

    c->e[idx].hnext = c->hash[b];
    c->hash[b] = idx;
}

static int find_entry(struct qcow2_cache *c, const uint8_t *table)
{
    if (c->last < c->n && c->e[c->last].data == table && table) {
        return (int)c->last;
    }
    for (size_t i = 0; i < c->n; i++) {
        if (c->e[i].data == table && table) {
            return (int)i;
        }
    }
    BUG("table not in the %s cache", c->name);
}

static int write_entry(struct qcow2 *s, struct qcow2_cache *c, int i)
{
    struct qcow2_cache_entry *e = &c->e[i];
    int ret;

    if (!e->dirty) {
        return 0;
    }
    if (s->corrupt && !s->check_mode) {
        return -EIO;
    }
    ret = io_pwrite(s->fd, e->data, s->cluster_size, e->offset);
    if (ret < 0) {
        return ret;
    }
    qcow2_note_file_end(s, e->offset + s->cluster_size);
    e->dirty = false;
    c->nr_dirty--;
    return 0;
}

int qcow2_cache_write_entry(struct qcow2 *s, struct qcow2_cache *c, uint8_t *table)
{
    return write_entry(s, c, find_entry(c, table));
}

/* Write every dirty entry of @c; *wrote tells whether anything was written. */
static int write_all(struct qcow2 *s, struct qcow2_cache *c, bool *wrote)
{
    *wrote = false;
    if (!c->nr_dirty) {
        return 0;
    }
    /* Ascending offsets make the write-back mostly sequential. */
    for (;;) {
        int best = -1;
        for (size_t i = 0; i < c->n; i++) {
            if (c->e[i].dirty && (best < 0 || c->e[i].offset < c->e[best].offset)) {
                best = (int)i;
            }
        }
        if (best < 0) {
            return 0;
        }
        int ret = write_entry(s, c, best);
        if (ret < 0) {
            return ret;
        }
        *wrote = true;
    }
}

/* Refcount blocks to disk (and synced unless lazy): before any L2 write. */
int qcow2_flush_refblocks(struct qcow2 *s)
{
    bool wrote;
    int ret = write_all(s, &s->rb_cache, &wrote);

    if (ret == 0 && wrote && !qcow2_lazy(s)) {
        ret = qcow2_order_sync(s);
    }
    return ret;
}

int qcow2_order_sync(struct qcow2 *s)
{
    return s->unordered ? 0 : io_fdatasync(s->fd);
}

int qcow2_flush_metadata(struct qcow2 *s)
{
    bool wrote;
    int ret;

    ret = qcow2_flush_refblocks(s);
    if (ret < 0) {
        return ret;
    }
    ret = write_all(s, &s->l2_cache, &wrote);
    if (ret < 0) {
        return ret;
    }
    if (s->nr_decref) {
        if (wrote && !qcow2_lazy(s)) {
            ret = qcow2_order_sync(s);
            if (ret < 0) {
                return ret;
            }
        }
        ret = qcow2_apply_decrefs(s);
        if (ret < 0) {
            return ret;
        }
        ret = write_all(s, &s->rb_cache, &wrote);
    }
    return ret;
}

int qcow2_cache_get(struct qcow2 *s, struct qcow2_cache *c, uint64_t offset, bool fresh,
                    uint8_t **table)
{
    int i = lookup(c, offset);
    int victim = -1;
    int ret;

    if (i >= 0) {
        c->e[i].ref++;
        c->e[i].lru = ++c->lru_clock;
        if (fresh) {
            memset(c->e[i].data, 0, s->cluster_size);
        }
        *table = c->e[i].data;
        c->last = i;
        return 0;
    }
    for (size_t k = 0; k < c->n; k++) {
        if (c->e[k].ref) {
            continue;
        }
        if (c->e[k].offset == 0) {
            victim = (int)k;
            break;
        }
        if (victim < 0 || c->e[k].lru < c->e[victim].lru) {
            victim = (int)k;
        }
    }
    if (victim < 0) {
        BUG("all %zu entries of the %s cache are pinned", c->n, c->name);
    }
    if (c->e[victim].dirty) {
        if (c == &s->l2_cache) {
            ret = qcow2_flush_refblocks(s);
            if (ret < 0) {
                return ret;
            }
        }
        ret = write_entry(s, c, victim);
        if (ret < 0) {
            return ret;
        }
    }
    if (c->e[victim].offset) {
        unhash(c, victim);
    }
    c->e[victim].offset = 0;
    if (!c->e[victim].data) {
        c->e[victim].data = xmemalign(MIN(c->table_size, (uint64_t)4096), c->table_size);
    }
    if (fresh) {
        memset(c->e[victim].data, 0, s->cluster_size);
    } else {
        ssize_t n = io_pread(s->fd, c->e[victim].data, s->cluster_size, offset);
        if (n < 0) {
            return (int)n;
        }
        if ((uint64_t)n < s->cluster_size) {
            memset(c->e[victim].data + n, 0, s->cluster_size - n);
        }
    }
    c->e[victim].offset = offset;
    c->e[victim].ref = 1;
    c->e[victim].lru = ++c->lru_clock;
    rehash(c, victim);
    *table = c->e[victim].data;
    c->last = victim;
    return 0;
}

void qcow2_cache_put(struct qcow2_cache *c, uint8_t *table)
{
    int i = find_entry(c, table);

    assert(c->e[i].ref > 0);
    c->e[i].ref--;
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, uint8_t *table)
{
    int i = find_entry(c, table);

    if (!c->e[i].dirty) {
        c->e[i].dirty = true;
        c->nr_dirty++;
    }
}

void qcow2_cache_discard(struct qcow2_cache *c, uint64_t offset)
{
    int i = lookup(c, offset);

    if (i < 0 || c->e[i].ref) {
        return;
    }
    if (c->e[i].dirty) {
        c->e[i].dirty = false;
        c->nr_dirty--;
    }
    unhash(c, i);
    c->e[i].offset = 0;
}
