/*
 * blockctl - qcow2: metadata cache for L2 tables and refcount blocks
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Tables are kept in on-disk byte order.  Write-back (s->lock held) in the
 * order of qcow2.h: dirty refcount blocks first, then a sync, then dirty
 * L2 tables, then (after another sync) queued refcount decrements.  The
 * cache itself is guarded by s->map: the functions that take @s take it
 * themselves; qcow2_cache_put, _mark_dirty and _discard need it held (or
 * an image nobody else uses).  Also here: the lock helpers.
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

void (*qcow2_test_hook)(struct qcow2 *s, enum qcow2_test_event ev, uint64_t a, uint64_t b);

/* --- locks --- */

/* A per-thread address identifies the thread (never 0). */
static __thread char self_anchor;

static uintptr_t self_id(void)
{
    return (uintptr_t)&self_anchor;
}

bool qcow2_map_held(struct qcow2 *s)
{
    return __atomic_load_n(&s->map_owner, __ATOMIC_RELAXED) == self_id();
}

void qcow2_map_lock(struct qcow2 *s)
{
    if (qcow2_map_held(s)) {
        s->map_depth++;
        return;
    }
    pthread_mutex_lock(&s->map);
    __atomic_store_n(&s->map_owner, self_id(), __ATOMIC_RELAXED);
    s->map_depth = 1;
}

void qcow2_map_unlock(struct qcow2 *s)
{
    assert(qcow2_map_held(s) && s->map_depth > 0);
    if (--s->map_depth == 0) {
        __atomic_store_n(&s->map_owner, 0, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&s->map);
    }
}

unsigned qcow2_map_release(struct qcow2 *s)
{
    unsigned depth;

    if (!qcow2_map_held(s)) {
        return 0;
    }
    depth = s->map_depth;
    s->map_releases++;
    s->map_depth = 0;
    __atomic_store_n(&s->map_owner, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&s->map);
    return depth;
}

void qcow2_map_reacquire(struct qcow2 *s, unsigned depth)
{
    if (!depth) {
        return;
    }
    pthread_mutex_lock(&s->map);
    __atomic_store_n(&s->map_owner, self_id(), __ATOMIC_RELAXED);
    s->map_depth = depth;
}

void qcow2_map_wait(struct qcow2 *s, pthread_cond_t *cond)
{
    unsigned depth = s->map_depth;

    assert(qcow2_map_held(s));
    __atomic_store_n(&s->map_owner, 0, __ATOMIC_RELAXED);
    pthread_cond_wait(cond, &s->map);
    __atomic_store_n(&s->map_owner, self_id(), __ATOMIC_RELAXED);
    s->map_depth = depth;
}

bool qcow2_meta_held(struct qcow2 *s)
{
    return __atomic_load_n(&s->meta_owner, __ATOMIC_RELAXED) == self_id();
}

void qcow2_meta_lock(struct qcow2 *s)
{
    assert(!qcow2_map_held(s) && !qcow2_meta_held(s));
    pthread_mutex_lock(&s->lock);
    __atomic_store_n(&s->meta_owner, self_id(), __ATOMIC_RELAXED);
}

void qcow2_meta_unlock(struct qcow2 *s)
{
    assert(qcow2_meta_held(s));
    __atomic_store_n(&s->meta_owner, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&s->lock);
}

/* --- the cache --- */

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

/* Write bytes [from, to) of dirty entry @i and call it clean. */
static int write_part(struct qcow2 *s, struct qcow2_cache *c, int i, size_t from, size_t to)
{
    struct qcow2_cache_entry *e = &c->e[i];
    int ret;

    if (!e->dirty) {
        return 0;
    }
    if (s->corrupt && !s->check_mode) {
        return -EIO;
    }
    ret = io_pwrite(s->fd, e->data + from, to - from, e->offset + from);
    if (ret < 0) {
        return ret;
    }
    qcow2_note_file_end(s, e->offset + to);
    if (c == &s->rb_cache) {
        s->rb_unsynced = true;
    } else {
        s->tables_unsynced = true;
    }
    e->dirty = false;
    c->nr_dirty--;
    return 0;
}

static int write_entry(struct qcow2 *s, struct qcow2_cache *c, int i)
{
    return write_part(s, c, i, 0, s->cluster_size);
}

int qcow2_cache_write_entry(struct qcow2 *s, struct qcow2_cache *c, uint8_t *table)
{
    int ret;

    qcow2_map_lock(s);
    ret = write_entry(s, c, find_entry(c, table));
    qcow2_map_unlock(s);
    return ret;
}

bool qcow2_cache_is_dirty(struct qcow2_cache *c, const uint8_t *table)
{
    return c->e[find_entry(c, table)].dirty;
}

int qcow2_cache_write_range(struct qcow2 *s, struct qcow2_cache *c, uint8_t *table, size_t from,
                            size_t to, bool whole)
{
    size_t align = MIN(c->table_size, (uint64_t)4096);
    int ret;

    if (whole) {
        from = 0;
        to = c->table_size;
    }
    qcow2_map_lock(s);
    ret = write_part(s, c, find_entry(c, table), ALIGN_DOWN(from, align),
                     MIN(ALIGN_UP(to, align), c->table_size));
    qcow2_map_unlock(s);
    return ret;
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

/*
 * Refcount blocks to disk (and synced unless lazy), and the data that L2
 * entries now point to synced: before any L2 write.
 */
int qcow2_flush_refblocks(struct qcow2 *s)
{
    bool wrote;
    int ret;

    qcow2_map_lock(s);
    ret = write_all(s, &s->rb_cache, &wrote);
    if (ret == 0 && ((s->rb_unsynced && !qcow2_lazy(s)) || s->data_unsynced)) {
        ret = qcow2_order_sync(s);
    }
    qcow2_map_unlock(s);
    return ret;
}

int qcow2_order_sync(struct qcow2 *s)
{
    bool rb, tables, data;
    unsigned depth;
    int ret;

    if (s->unordered) {
        return 0;
    }
    /* The sync covers every write so far; another writer waits for s->lock. */
    qcow2_map_lock(s);
    rb = s->rb_unsynced;
    tables = s->tables_unsynced;
    data = s->data_unsynced;
    s->rb_unsynced = false;
    s->tables_unsynced = false;
    s->data_unsynced = false;
    depth = qcow2_map_release(s);
    if (qcow2_test_hook) {
        qcow2_test_hook(s, QCOW2_TEST_SYNC_BEGIN, 0, 0);
    }
    ret = io_fdatasync(s->fd);
    if (qcow2_test_hook) {
        qcow2_test_hook(s, QCOW2_TEST_SYNC_END, 0, 0);
    }
    qcow2_map_reacquire(s, depth);
    if (ret < 0) {
        s->rb_unsynced |= rb;
        s->tables_unsynced |= tables;
        s->data_unsynced |= data;
    }
    qcow2_map_unlock(s);
    return ret;
}

int qcow2_flush_metadata(struct qcow2 *s)
{
    bool wrote;
    int ret;

    qcow2_map_lock(s);
    ret = qcow2_flush_refblocks(s);
    if (ret < 0) {
        goto out;
    }
    ret = write_all(s, &s->l2_cache, &wrote);
    if (ret < 0) {
        goto out;
    }
    if (s->nr_decref) {
        /* the tables that dropped the references reach the disk first */
        if (s->tables_unsynced && !qcow2_lazy(s)) {
            ret = qcow2_order_sync(s);
            if (ret < 0) {
                goto out;
            }
        }
        ret = qcow2_apply_decrefs(s);
        if (ret < 0) {
            goto out;
        }
        ret = write_all(s, &s->rb_cache, &wrote);
    }
out:
    qcow2_map_unlock(s);
    return ret;
}

/* Least recently used unpinned entry (a free slot first); -1 if none. */
static int pick_victim(struct qcow2_cache *c, bool clean_only)
{
    int victim = -1;

    for (size_t k = 0; k < c->n; k++) {
        if (c->e[k].ref || (clean_only && c->e[k].dirty)) {
            continue;
        }
        if (c->e[k].offset == 0) {
            return (int)k;
        }
        if (victim < 0 || c->e[k].lru < c->e[victim].lru) {
            victim = (int)k;
        }
    }
    return victim;
}

static int read_table(struct qcow2 *s, uint8_t *buf, uint64_t offset)
{
    ssize_t n = io_pread(s->fd, buf, s->cluster_size, offset);

    if (n < 0) {
        return (int)n;
    }
    if ((uint64_t)n < s->cluster_size) {
        memset(buf + n, 0, s->cluster_size - n);
    }
    return 0;
}

/* Put the table at @offset into clean, unpinned entry @victim and pin it. */
static int load_entry(struct qcow2 *s, struct qcow2_cache *c, int victim, uint64_t offset,
                      bool fresh, uint8_t **table)
{
    struct qcow2_cache_entry *e = &c->e[victim];

    assert(!e->ref && !e->dirty);
    if (e->offset) {
        unhash(c, victim);
    }
    e->offset = 0;
    if (!e->data) {
        e->data = xmemalign(MIN(c->table_size, (uint64_t)4096), c->table_size);
    }
    if (fresh) {
        memset(e->data, 0, s->cluster_size);
    } else {
        int ret = read_table(s, e->data, offset);
        if (ret < 0) {
            return ret;
        }
    }
    e->offset = offset;
    e->ref = 1;
    e->lru = ++c->lru_clock;
    rehash(c, victim);
    *table = e->data;
    c->last = victim;
    return 0;
}

static bool get_hit(struct qcow2 *s, struct qcow2_cache *c, uint64_t offset, bool fresh,
                    uint8_t **table)
{
    int i = lookup(c, offset);

    if (i < 0) {
        return false;
    }
    c->e[i].ref++;
    c->e[i].lru = ++c->lru_clock;
    if (fresh) {
        memset(c->e[i].data, 0, s->cluster_size);
    }
    *table = c->e[i].data;
    c->last = i;
    return true;
}

int qcow2_cache_get(struct qcow2 *s, struct qcow2_cache *c, uint64_t offset, bool fresh,
                    uint8_t **table)
{
    int ret = 0;

    qcow2_map_lock(s);
    for (;;) {
        int victim;

        if (get_hit(s, c, offset, fresh, table)) {
            break;
        }
        victim = pick_victim(c, false);
        if (victim < 0) {
            BUG("all %zu entries of the %s cache are pinned", c->n, c->name);
        }
        if (c->e[victim].dirty) {
            if (c == &s->l2_cache) {
                uint64_t releases = s->map_releases;
                ret = qcow2_flush_refblocks(s);
                if (ret < 0) {
                    break;
                }
                if (s->map_releases != releases) {
                    /* s->map was released: readers may have changed the cache */
                    continue;
                }
            }
            ret = write_entry(s, c, victim);
            if (ret < 0) {
                break;
            }
        }
        ret = load_entry(s, c, victim, offset, fresh, table);
        break;
    }
    qcow2_map_unlock(s);
    return ret;
}

int qcow2_cache_get_ro(struct qcow2 *s, struct qcow2_cache *c, uint64_t offset,
                       uint8_t **table, bool *tmp)
{
    int victim;
    int ret;

    *tmp = false;
    qcow2_map_lock(s);
    if (get_hit(s, c, offset, false, table)) {
        qcow2_map_unlock(s);
        return 0;
    }
    victim = pick_victim(c, true);
    if (victim >= 0) {
        ret = load_entry(s, c, victim, offset, false, table);
    } else {
        /* Not cached, so not dirty: the disk has it as it is. */
        uint8_t *buf = xmemalign(MIN(c->table_size, (uint64_t)4096), c->table_size);
        ret = read_table(s, buf, offset);
        if (ret < 0) {
            free(buf);
        } else {
            *table = buf;
            *tmp = true;
        }
    }
    qcow2_map_unlock(s);
    return ret;
}

void qcow2_cache_put_ro(struct qcow2 *s, struct qcow2_cache *c, uint8_t *table, bool tmp)
{
    if (tmp) {
        free(table);
        return;
    }
    qcow2_map_lock(s);
    qcow2_cache_put(c, table);
    qcow2_map_unlock(s);
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
