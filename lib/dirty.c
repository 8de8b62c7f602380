/*
 * blockctl - dirty bitmaps in the block layer
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Every image has a list of bitmaps (struct bdev_bitmap), marked after
 * each successful write (lib/block.c).  They live in memory; persistent
 * ones are also kept by the driver in the image (qcow2's bitmaps
 * extension): the driver registers them when the image is opened
 * (loaded, for a writable image; their contents read on demand, for a
 * read-only one) and stores the list when asked (bitmap_store), at flush
 * when the list changed, and at close.
 *
 * Changes go through bitmap operations (struct bitmap_op), applied all or
 * none; with an undo record a caller (a QMP transaction) can take them
 * back until it commits.
 */
#include "lib/compiler.h"
#include "lib/bitmap.h"
#include "lib/block.h"

#include <errno.h>
#include <string.h>

#define MAX_BITMAP_NAME 1023

struct bdev_bitmap *bdev_bitmap_find(struct bdev *bd, const char *name)
{
    struct bdev_bitmap *b;

    pthread_mutex_lock(&bd->bitmap_lock);
    for (b = bd->bitmaps; b; b = b->next) {
        if (!strcmp(b->name, name)) {
            break;
        }
    }
    pthread_mutex_unlock(&bd->bitmap_lock);
    return b;
}

static void count_enabled(struct bdev *bd)
{
    unsigned n = 0;

    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        n += b->enabled && b->bm;
    }
    __atomic_store_n(&bd->nr_enabled_bitmaps, n, __ATOMIC_RELEASE);
}

void bdev_bitmap_register(struct bdev *bd, const char *name, uint64_t granularity,
                          struct dirty_bitmap *bm, bool enabled, bool persistent,
                          bool inconsistent)
{
    struct bdev_bitmap *b = xzalloc(sizeof(*b)), **pp;

    b->name = xstrdup(name);
    b->granularity = granularity;
    b->bm = bm;
    b->enabled = enabled && !inconsistent;
    b->persistent = persistent;
    b->inconsistent = inconsistent;
    b->stored_enabled = enabled;
    b->stored_gen = bm ? bitmap_gen(bm) : 0;
    pthread_mutex_lock(&bd->bitmap_lock);
    for (pp = &bd->bitmaps; *pp; pp = &(*pp)->next) {
    }
    *pp = b;
    count_enabled(bd);
    pthread_mutex_unlock(&bd->bitmap_lock);
}

static void free_one(struct bdev_bitmap *b)
{
    bitmap_free(b->bm);
    free(b->name);
    free(b);
}

void bdev_bitmaps_free(struct bdev *bd)
{
    pthread_mutex_lock(&bd->bitmap_lock);
    while (bd->bitmaps) {
        struct bdev_bitmap *b = bd->bitmaps;
        bd->bitmaps = b->next;
        free_one(b);
    }
    count_enabled(bd);
    pthread_mutex_unlock(&bd->bitmap_lock);
}

/* The contents of @b, read from the image if they are not in memory yet. */
static int load(struct bdev *bd, struct bdev_bitmap *b, struct error **errp)
{
    struct dirty_bitmap *bm;
    int ret;

    if (b->bm) {
        return 0;
    }
    if (b->inconsistent) {
        error_setg(errp, "'%s': bitmap '%s' is inconsistent (left in use by a crash) and "
                   "cannot be used", bd->filename, b->name);
        return -EINVAL;
    }
    if (!bd->drv->bitmap_load) {
        error_setg(errp, "'%s': bitmap '%s' has no contents", bd->filename, b->name);
        return -EIO;
    }
    ret = bd->drv->bitmap_load(bd, b->name, &bm, errp);
    if (ret < 0) {
        return ret;
    }
    bdev_bitmap_loaded(bd, b, bm);
    return 0;
}

void bdev_bitmap_loaded(struct bdev *bd, struct bdev_bitmap *b, struct dirty_bitmap *bm)
{
    pthread_mutex_lock(&bd->bitmap_lock);
    if (!b->bm) {
        b->bm = bm;
        b->stored_gen = bitmap_gen(bm);
        bm = NULL;
        count_enabled(bd);    /* an enabled bitmap is marked from now on */
    }
    pthread_mutex_unlock(&bd->bitmap_lock);
    bitmap_free(bm);
}

int bdev_bitmap_get(struct bdev *bd, const char *name, struct dirty_bitmap **out,
                    struct error **errp)
{
    struct bdev_bitmap *b = bdev_bitmap_find(bd, name);
    int ret;

    if (!b) {
        error_setg(errp, "'%s': bitmap '%s' not found", bd->filename, name);
        return -ENOENT;
    }
    ret = load(bd, b, errp);
    if (ret < 0) {
        return ret;
    }
    *out = bitmap_copy(b->bm);
    return 0;
}

int bdev_bitmap_union(struct bdev *bd, const char *name, struct dirty_bitmap **out,
                      struct error **errp)
{
    struct dirty_bitmap *u = NULL;

    for (struct bdev *l = bd; l; l = l->backing) {
        struct bdev_bitmap *b = bdev_bitmap_find(l, name);
        int ret;

        if (!b) {
            continue;
        }
        ret = load(l, b, errp);
        if (ret < 0) {
            bitmap_free(u);
            return ret;
        }
        if (!u) {
            u = bitmap_new(bd->size, bitmap_granularity(b->bm));
        }
        bitmap_merge(u, b->bm);
    }
    if (!u) {
        error_setg(errp, "'%s': bitmap '%s' not found", bd->filename, name);
        return -ENOENT;
    }
    *out = u;
    return 0;
}

bool bdev_bitmap_in_chain(struct bdev *bd, const char *name)
{
    for (; bd; bd = bd->backing) {
        if (bdev_bitmap_find(bd, name)) {
            return true;
        }
    }
    return false;
}

/* --- operations --- */

enum undo_kind { UNDO_ADDED, UNDO_REMOVED, UNDO_CONTENTS, UNDO_ENABLED, UNDO_SALVAGED };

struct undo_step {
    enum undo_kind kind;
    struct bdev_bitmap *b;           /* ADDED, REMOVED: the entry itself */
    struct bdev_bitmap *prev;        /* REMOVED: where it was (NULL: at the head) */
    char *name;                      /* CONTENTS, ENABLED */
    struct dirty_bitmap *old;        /* CONTENTS, SALVAGED: the bits before (SALVAGED: may be
                                        NULL) */
    bool was_enabled;                /* ENABLED, SALVAGED */
    bool was_inconsistent;           /* SALVAGED */
    uint64_t old_stored_gen;         /* SALVAGED */
};

struct bitmap_undo {
    struct bdev *bd;
    struct undo_step *steps;
    size_t n;
};

static void push(struct bitmap_undo *u, struct undo_step st)
{
    u->steps = xrealloc(u->steps, (u->n + 1) * sizeof(*u->steps));
    u->steps[u->n++] = st;
}

uint64_t bdev_bitmap_default_granularity(struct bdev *bd)
{
    struct image_info in;
    uint64_t g = 65536;

    if (bdev_get_info(bd, &in, NULL) == 0) {
        if (in.cluster_size) {
            g = MIN(MAX(in.cluster_size, (uint64_t)4096), (uint64_t)65536);
        }
        image_info_free(&in);
    }
    return g;
}

/* A simulated view of the list while checking a batch. */
struct sim {
    const char *name;
    bool consistent;
    bool persistent;
    bool busy;
};

static int validate(struct bdev *bd, const struct bitmap_op *ops, size_t n, struct error **errp)
{
    const char *fn = bd->filename;
    size_t cap = n + 1, nsim = 0;
    struct sim *sim;
    int ret = -EINVAL;

    pthread_mutex_lock(&bd->bitmap_lock);
    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        cap++;
    }
    sim = xcalloc(cap, sizeof(*sim));
    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        sim[nsim++] = (struct sim){ b->name, !b->inconsistent, b->persistent, b->busy > 0 };
    }
    pthread_mutex_unlock(&bd->bitmap_lock);

    for (size_t k = 0; k < n; k++) {
        const struct bitmap_op *op = &ops[k];
        size_t nl = strlen(op->name);
        ssize_t idx = -1;

        for (size_t j = 0; j < nsim; j++) {
            if (sim[j].name && !strcmp(sim[j].name, op->name)) {
                idx = (ssize_t)j;
            }
        }
        if (op->type == BITMAP_OP_ADD) {
            uint64_t g = op->granularity ? op->granularity : 65536;
            if (nl == 0 || nl > MAX_BITMAP_NAME) {
                error_setg(errp, "'%s': bitmap name must be 1 to %d bytes long", fn,
                           MAX_BITMAP_NAME);
                goto out;
            }
            if (idx >= 0) {
                error_setg(errp, "'%s': bitmap '%s' already exists", fn, op->name);
                goto out;
            }
            if (!IS_POWER_OF_2(g) || g < 512 || g > (1ULL << 31)) {
                error_setg(errp, "'%s': bitmap granularity must be a power of two between 512 "
                           "and 2G", fn);
                goto out;
            }
            if (op->persistent) {
                if (!bd->drv->bitmap_check_add) {
                    error_setg(errp, "'%s': format '%s' does not support persistent bitmaps",
                               fn, bd->drv->name);
                    goto out;
                }
                if (bd->drv->bitmap_check_add(bd, op->name, g, errp) < 0) {
                    goto out;
                }
            }
            sim[nsim++] = (struct sim){ op->name, true, op->persistent, false };
            continue;
        }
        if (idx < 0) {
            error_setg(errp, "'%s': bitmap '%s' not found", fn, op->name);
            goto out;
        }
        if (sim[idx].busy) {
            error_setg(errp, "'%s': bitmap '%s' is in use by a job and cannot be changed", fn,
                       op->name);
            goto out;
        }
        if (op->type == BITMAP_OP_REMOVE) {
            sim[idx].name = NULL;
            continue;
        }
        if (op->type == BITMAP_OP_SALVAGE) {
            sim[idx].consistent = true;
            continue;
        }
        if (!sim[idx].consistent) {
            error_setg(errp, "'%s': bitmap '%s' is inconsistent (left in use by a crash) and "
                       "cannot be used", fn, op->name);
            error_append_hint(errp, "Remove it with 'blockctl bitmap --remove %s %s'", fn,
                              op->name);
            goto out;
        }
        if (op->type == BITMAP_OP_MERGE && op->src && op->src->size != bd->size) {
            error_setg(errp, "'%s': bitmap '%s' covers %" PRIu64 " bytes but the image has %"
                       PRIu64 ": bitmaps of different sizes cannot be merged", fn,
                       op->src_name ? op->src_name : "?", op->src->size, bd->size);
            goto out;
        }
        if (op->type == BITMAP_OP_MERGE && !op->src) {
            ssize_t si = -1;
            for (size_t j = 0; j < nsim; j++) {
                if (sim[j].name && !strcmp(sim[j].name, op->src_name)) {
                    si = (ssize_t)j;
                }
            }
            if (si < 0) {
                error_setg(errp, "'%s': bitmap '%s' not found", fn, op->src_name);
                goto out;
            }
            if (!sim[si].consistent) {
                error_setg(errp, "'%s': bitmap '%s' is inconsistent and cannot be merged", fn,
                           op->src_name);
                goto out;
            }
        }
    }
    if (bd->drv->bitmap_check_list) {
        /* the driver's limits on the whole list (count, directory size) */
        const char **names = xcalloc(nsim + 1, sizeof(*names));
        size_t m = 0;
        for (size_t j = 0; j < nsim; j++) {
            if (sim[j].name && sim[j].persistent) {
                names[m++] = sim[j].name;
            }
        }
        ret = bd->drv->bitmap_check_list(bd, names, m, errp);
        free(names);
        if (ret < 0) {
            goto out;
        }
    }
    ret = 0;
out:
    free(sim);
    return ret;
}

static struct bdev_bitmap *find_locked(struct bdev *bd, const char *name,
                                       struct bdev_bitmap **prev)
{
    struct bdev_bitmap *p = NULL;

    for (struct bdev_bitmap *b = bd->bitmaps; b; p = b, b = b->next) {
        if (!strcmp(b->name, name)) {
            if (prev) {
                *prev = p;
            }
            return b;
        }
    }
    return NULL;
}

int bdev_bitmap_apply_undo(struct bdev *bd, const struct bitmap_op *ops, size_t n,
                           struct bitmap_undo **undo, struct error **errp)
{
    struct bitmap_undo *u;
    int ret;

    for (size_t k = 0; k < n; k++) {
        /* what may have to be read is read before anything changes */
        if (ops[k].type == BITMAP_OP_CLEAR || ops[k].type == BITMAP_OP_MERGE ||
            ops[k].type == BITMAP_OP_ENABLE || ops[k].type == BITMAP_OP_DISABLE) {
            struct bdev_bitmap *b = bdev_bitmap_find(bd, ops[k].name);
            if (b && !b->inconsistent && (ret = load(bd, b, errp)) < 0) {
                return ret;
            }
        }
        if (ops[k].type == BITMAP_OP_MERGE && !ops[k].src) {
            struct bdev_bitmap *b = bdev_bitmap_find(bd, ops[k].src_name);
            if (b && !b->inconsistent && (ret = load(bd, b, errp)) < 0) {
                return ret;
            }
        }
    }
    ret = validate(bd, ops, n, errp);
    if (ret < 0) {
        return ret;
    }
    u = xzalloc(sizeof(*u));
    u->bd = bd;
    for (size_t k = 0; k < n; k++) {
        const struct bitmap_op *op = &ops[k];
        struct bdev_bitmap *b, *prev = NULL;

        if (op->type == BITMAP_OP_ADD) {
            uint64_t g = op->granularity ? op->granularity
                                         : bdev_bitmap_default_granularity(bd);
            struct dirty_bitmap *bm = bitmap_new(bd->size, g);
            bdev_bitmap_register(bd, op->name, g, bm, !op->disabled, op->persistent, false);
            b = bdev_bitmap_find(bd, op->name);
            /* a new persistent bitmap must be stored even while clean */
            b->stored_gen = ~bitmap_gen(bm);
            push(u, (struct undo_step){ .kind = UNDO_ADDED, .b = b });
            continue;
        }
        pthread_mutex_lock(&bd->bitmap_lock);
        b = find_locked(bd, op->name, &prev);
        switch (op->type) {
        case BITMAP_OP_REMOVE:
            if (prev) {
                prev->next = b->next;
            } else {
                bd->bitmaps = b->next;
            }
            push(u, (struct undo_step){ .kind = UNDO_REMOVED, .b = b, .prev = prev });
            break;
        case BITMAP_OP_ENABLE:
        case BITMAP_OP_DISABLE:
            push(u, (struct undo_step){ .kind = UNDO_ENABLED, .name = xstrdup(b->name),
                                        .was_enabled = b->enabled });
            b->enabled = op->type == BITMAP_OP_ENABLE;
            b->flags_changed = true;
            break;
        case BITMAP_OP_CLEAR:
            push(u, (struct undo_step){ .kind = UNDO_CONTENTS, .name = xstrdup(b->name),
                                        .old = bitmap_copy(b->bm) });
            bitmap_clear_all(b->bm);
            break;
        case BITMAP_OP_SALVAGE:
            /* the old bits (if any) are kept for undo; the new ones say
             * "everything changed", which is true of any bitmap */
            push(u, (struct undo_step){ .kind = UNDO_SALVAGED, .name = xstrdup(b->name),
                                        .old = b->bm, .was_enabled = b->enabled,
                                        .was_inconsistent = b->inconsistent,
                                        .old_stored_gen = b->stored_gen });
            b->bm = bitmap_new(bd->size, b->granularity);
            bitmap_set_all(b->bm);
            if (b->inconsistent) {
                b->enabled = b->stored_enabled;
                b->inconsistent = false;
            }
            b->stored_gen = ~bitmap_gen(b->bm);    /* to be stored */
            b->flags_changed = true;
            break;
        case BITMAP_OP_MERGE: {
            struct dirty_bitmap *src = op->src;
            push(u, (struct undo_step){ .kind = UNDO_CONTENTS, .name = xstrdup(b->name),
                                        .old = bitmap_copy(b->bm) });
            if (!src) {
                struct bdev_bitmap *sb = find_locked(bd, op->src_name, NULL);
                src = sb->bm;
            }
            bitmap_merge(b->bm, src);
            break;
        }
        default:
            break;
        }
        count_enabled(bd);
        bd->bitmaps_changed = true;
        pthread_mutex_unlock(&bd->bitmap_lock);
    }
    pthread_mutex_lock(&bd->bitmap_lock);
    bd->bitmaps_changed = true;
    pthread_mutex_unlock(&bd->bitmap_lock);
    *undo = u;
    return 0;
}

void bdev_bitmap_undo(struct bitmap_undo *u)
{
    struct bdev *bd;

    if (!u) {
        return;
    }
    bd = u->bd;
    pthread_mutex_lock(&bd->bitmap_lock);
    for (size_t k = u->n; k-- > 0;) {
        struct undo_step *st = &u->steps[k];
        struct bdev_bitmap *b, *prev = NULL;

        switch (st->kind) {
        case UNDO_ADDED:
            b = find_locked(bd, st->b->name, &prev);
            if (b) {
                if (prev) {
                    prev->next = b->next;
                } else {
                    bd->bitmaps = b->next;
                }
                free_one(b);
            }
            break;
        case UNDO_REMOVED:
            if (st->prev) {
                st->b->next = st->prev->next;
                st->prev->next = st->b;
            } else {
                st->b->next = bd->bitmaps;
                bd->bitmaps = st->b;
            }
            st->b = NULL;
            break;
        case UNDO_ENABLED:
            b = find_locked(bd, st->name, NULL);
            if (b) {
                b->enabled = st->was_enabled;
            }
            break;
        case UNDO_CONTENTS:
            b = find_locked(bd, st->name, NULL);
            if (b) {
                bitmap_assign(b->bm, st->old);
            }
            break;
        case UNDO_SALVAGED:
            b = find_locked(bd, st->name, NULL);
            if (b) {
                bitmap_free(b->bm);
                b->bm = st->old;
                st->old = NULL;
                b->enabled = st->was_enabled;
                b->inconsistent = st->was_inconsistent;
                b->stored_gen = st->old_stored_gen;
            }
            break;
        }
    }
    count_enabled(bd);
    pthread_mutex_unlock(&bd->bitmap_lock);
    /* (what went back into place is no longer the steps': NULL there) */
    bdev_bitmap_undo_free(u);
}

void bdev_bitmap_undo_free(struct bitmap_undo *u)
{
    if (!u) {
        return;
    }
    for (size_t k = 0; k < u->n; k++) {
        struct undo_step *st = &u->steps[k];
        if (st->kind == UNDO_REMOVED && st->b) {
            free_one(st->b);
        }
        free(st->name);
        bitmap_free(st->old);
    }
    free(u->steps);
    free(u);
}

bool bdev_bitmaps_need_store(struct bdev *bd)
{
    bool need = false;

    pthread_mutex_lock(&bd->bitmap_lock);
    need = bd->bitmaps_changed;
    for (struct bdev_bitmap *b = bd->bitmaps; b && !need; b = b->next) {
        need = b->persistent && b->bm && bitmap_gen(b->bm) != b->stored_gen;
    }
    pthread_mutex_unlock(&bd->bitmap_lock);
    return need;
}

int bdev_bitmaps_store(struct bdev *bd, struct error **errp)
{
    if (bd->read_only || !bd->drv->bitmap_store) {
        return 0;
    }
    return bd->drv->bitmap_store(bd, true, errp);
}

int bdev_bitmap_apply(struct bdev *bd, const struct bitmap_op *ops, size_t n,
                      struct error **errp)
{
    struct bitmap_undo *u;
    bool persistent = false;
    int ret;

    if (bd->read_only) {
        error_setg(errp, "'%s': opened read-only", bd->filename);
        return -EPERM;
    }
    ret = bdev_bitmap_apply_undo(bd, ops, n, &u, errp);
    if (ret < 0) {
        return ret;
    }
    for (size_t k = 0; k < u->n; k++) {
        struct undo_step *st = &u->steps[k];
        struct bdev_bitmap *b = st->b ? st->b : bdev_bitmap_find(bd, st->name);
        persistent |= !b || b->persistent;
    }
    if (persistent && bd->drv->bitmap_store) {
        /* the changes are durable when this returns */
        ret = bd->drv->bitmap_store(bd, true, errp);
        if (ret < 0) {
            bdev_bitmap_undo(u);
            return ret;
        }
    }
    bdev_bitmap_undo_free(u);
    return 0;
}

int bdev_bitmap_status(struct bdev *bd, const char *name, uint64_t off, uint64_t len,
                       uint64_t *pnum, bool *dirty)
{
    uint64_t dirty_run = 0, clean_run = len;
    bool found = false, any_dirty = false;

    /* contents of stored bitmaps are read first, without the lock */
    for (struct bdev *l = bd; l; l = l->backing) {
        struct bdev_bitmap *b = bdev_bitmap_find(l, name);
        if (b && !b->bm && load(l, b, NULL) < 0) {
            return -EIO;
        }
    }
    for (struct bdev *l = bd; l; l = l->backing) {
        pthread_mutex_lock(&l->bitmap_lock);
        for (struct bdev_bitmap *b = l->bitmaps; b; b = b->next) {
            uint64_t doff, dlen;
            if (strcmp(b->name, name) || !b->bm) {
                continue;
            }
            found = true;
            if (off >= b->bm->size) {
                break;
            }
            if (bitmap_next_dirty(b->bm, off, len, &doff, &dlen) && doff < off + len) {
                if (doff <= off) {
                    any_dirty = true;
                    dirty_run = MAX(dirty_run, MIN(dlen - (off - doff), len));
                } else {
                    clean_run = MIN(clean_run, doff - off);
                }
            }
            break;
        }
        pthread_mutex_unlock(&l->bitmap_lock);
    }
    if (!found) {
        return -ENOENT;
    }
    *dirty = any_dirty;
    *pnum = any_dirty ? dirty_run : clean_run;
    if (*pnum == 0) {
        *pnum = MIN(len, (uint64_t)512);
    }
    return 0;
}

char **bdev_bitmap_names(struct bdev *bd)
{
    char **names = xcalloc(1, sizeof(char *));
    size_t n = 0;

    for (struct bdev *l = bd; l; l = l->backing) {
        pthread_mutex_lock(&l->bitmap_lock);
        for (struct bdev_bitmap *b = l->bitmaps; b; b = b->next) {
            bool dup = false;
            for (size_t i = 0; i < n; i++) {
                dup |= !strcmp(names[i], b->name);
            }
            if (!dup && !b->inconsistent) {
                names = xrealloc(names, (n + 2) * sizeof(char *));
                names[n++] = xstrdup(b->name);
                names[n] = NULL;
            }
        }
        pthread_mutex_unlock(&l->bitmap_lock);
    }
    return names;
}

int bdev_bitmaps_follow(struct bdev *from, struct bdev *to, struct error **errp)
{
    struct bitmap_op *ops = NULL;
    size_t n = 0;
    bool can_store = !strcmp(bdev_format_name(to), "qcow2");
    int ret = 0;

    pthread_mutex_lock(&from->bitmap_lock);
    for (struct bdev_bitmap *b = from->bitmaps; b; b = b->next) {
        if (!b->enabled || !b->bm) {
            continue;
        }
        ops = xrealloc(ops, (n + 2) * sizeof(*ops));
        if (!bdev_bitmap_find(to, b->name)) {
            ops[n++] = (struct bitmap_op){ .type = BITMAP_OP_ADD, .name = b->name,
                                           .granularity = bitmap_granularity(b->bm),
                                           .persistent = b->persistent && can_store };
        }
        ops[n++] = (struct bitmap_op){ .type = BITMAP_OP_MERGE, .name = b->name, .src = b->bm };
    }
    pthread_mutex_unlock(&from->bitmap_lock);
    if (n) {
        ret = bdev_bitmap_apply(to, ops, n, errp);
    }
    free(ops);
    return ret;
}
