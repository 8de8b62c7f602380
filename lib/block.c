/*
 * blockctl - images, chains and the checked request wrappers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/bitmap.h"
#include "lib/io.h"
#include "formats/format.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct format_driver *const drivers[] = {
    &raw_driver,
    &qcow2_driver,
    &nbd_driver,
    NULL,
};

const struct format_driver *const *bdev_drivers(void)
{
    return drivers;
}

const struct format_driver *bdev_find_driver(const char *name)
{
    for (size_t i = 0; drivers[i]; i++) {
        if (!strcmp(drivers[i]->name, name)) {
            return drivers[i];
        }
    }
    return NULL;
}

const struct format_driver *bdev_probe(const uint8_t *buf, size_t len)
{
    const struct format_driver *best = &raw_driver;
    int best_score = 0;

    for (size_t i = 0; drivers[i]; i++) {
        if (drivers[i]->probe) {
            int s = drivers[i]->probe(buf, len);
            if (s > best_score) {
                best = drivers[i];
                best_score = s;
            }
        }
    }
    return best;
}

void image_info_free(struct image_info *info)
{
    for (size_t i = 0; i < info->nr_snapshots; i++) {
        free(info->snapshots[i].id);
        free(info->snapshots[i].name);
    }
    free(info->snapshots);
    for (size_t i = 0; i < info->nr_bitmaps; i++) {
        free(info->bitmaps[i].name);
    }
    free(info->bitmaps);
    memset(info, 0, sizeof(*info));
}

/*
 * Protocol prefixes QEMU would interpret instead of opening a file.  A
 * filename starting with one of these followed by ':' is refused rather
 * than silently read as a plain file (or, worse, handed to a protocol).
 */
static const char *const pseudo_protocols[] = {
    "json", "file", "host_device", "host_cdrom", "nbd", "nbd+unix", "nbd+tcp", "nbds",
    "nbds+unix", "nbds+tcp", "http", "https", "ftp", "ftps", "ssh", "iscsi", "iser",
    "gluster", "gluster+tcp", "gluster+unix", "gluster+rdma", "rbd", "sheepdog", "vvfat",
    "fat", "blkdebug", "blkverify", "null-co", "null-aio", "nvme", "vxhs", "quorum",
    "throttle", "replication", "nfs", "curl", "vhdx", "luks", "raw", "qcow2", "qcow",
    "vmdk", "vdi", "vpc", "parallels", "bochs", "cloop", "dmg", "qed", "io_uring",
    NULL,
};

static int check_filename(const char *name, const char *what, struct error **errp)
{
    const char *colon = strchr(name, ':');
    const char *slash = strchr(name, '/');

    if (!*name) {
        error_setg(errp, "empty %s name", what);
        return -EINVAL;
    }
    if (nbd_is_uri(name)) {
        return 0;
    }
    if (!colon || (slash && slash < colon)) {
        return 0;
    }
    for (size_t i = 0; pseudo_protocols[i]; i++) {
        size_t n = strlen(pseudo_protocols[i]);
        if ((size_t)(colon - name) == n && !strncasecmp(name, pseudo_protocols[i], n)) {
            error_setg(errp, "'%s': %s names with a '%.*s:' prefix are not supported", name,
                       what, (int)n, name);
            error_append_hint(errp, "blockctl opens plain files only; write './%s' for a "
                              "file of that name", name);
            return -EINVAL;
        }
    }
    return 0;
}

char *bdev_path_combine(const char *overlay_name, const char *backing)
{
    const char *slash;

    if (backing[0] == '/' || nbd_is_uri(backing)) {
        return xstrdup(backing);
    }
    slash = strrchr(overlay_name, '/');
    if (!slash) {
        return xstrdup(backing);
    }
    return xasprintf("%.*s%s", (int)(slash - overlay_name + 1), overlay_name, backing);
}

/* Read the first bytes of @path for probing; returns bytes read or -errno. */
static ssize_t read_head(const char *path, uint8_t *buf, size_t len)
{
    /* O_NONBLOCK: a FIFO must not block us here (bfile_open refuses it) */
    int fd = io_open(path, O_RDONLY | O_NONBLOCK, 0);
    ssize_t n;

    if (fd < 0) {
        return fd;
    }
    n = io_pread(fd, buf, len, 0);
    io_close(fd);
    return n;
}

struct chain_seen {
    dev_t dev[BDEV_MAX_CHAIN + 1];
    ino_t ino[BDEV_MAX_CHAIN + 1];
    int n;
    int backing_cache;      /* the backing chain's cache flags; -1: the top's */
};

int bdev_cache_parse(const char *name, unsigned *flags)
{
    static const struct {
        const char *name;
        unsigned flags;
    } modes[] = {
        { "writeback", 0 },
        { "off", 0 },
        { "none", BDEV_O_NOCACHE },
        { "writethrough", BDEV_O_WRITETHROUGH },
        { "directsync", BDEV_O_NOCACHE | BDEV_O_WRITETHROUGH },
        { "unsafe", BDEV_O_NO_FLUSH },
    };

    for (size_t i = 0; i < ARRAY_SIZE(modes); i++) {
        if (!strcmp(name, modes[i].name)) {
            *flags = modes[i].flags;
            return 0;
        }
    }
    return -EINVAL;
}

/* The io layer's mode for BDEV_O_* cache flags */
static unsigned io_cache_mode(unsigned flags)
{
    return ((flags & BDEV_O_NOCACHE) ? IO_CACHE_DIRECT : 0) |
           ((flags & BDEV_O_WRITETHROUGH) ? IO_CACHE_WRITETHROUGH : 0) |
           ((flags & BDEV_O_NO_FLUSH) ? IO_CACHE_NO_FLUSH : 0);
}

static struct bdev *open_one(const char *filename, const struct format_driver *drv,
                             unsigned flags, const char *nbd_bitmap, struct error **errp)
{
    struct bdev *bd = xzalloc(sizeof(*bd));
    int ret;

    bd->nbd_bitmap = nbd_bitmap;

    bd->drv = drv;
    bd->filename = xstrdup(filename);
    bd->flags = flags;
    bd->read_only = !(flags & BDEV_O_RDWR);
    bd->refcnt = 1;
    pthread_mutex_init(&bd->gate_lock, NULL);
    pthread_cond_init(&bd->gate_cond, NULL);
    pthread_mutex_init(&bd->bitmap_lock, NULL);
    if (bd->read_only) {
        bd->perm = PERM_CONSISTENT_READ;
        bd->shared = (flags & BDEV_O_FORCE_SHARE) ? PERM_ALL
                                                  : PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
    } else {
        bd->perm = PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE;
        bd->shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
    }
    if (drv->priv_size) {
        bd->opaque = xzalloc(drv->priv_size);
    }
    if (!drv->is_protocol) {
        bd->file = bfile_open(filename, bd->perm, bd->shared, errp);
        if (!bd->file) {
            goto fail;
        }
        if (bfile_set_cache(bd->file, io_cache_mode(flags), errp) < 0) {
            bfile_close(bd->file, bd->perm, bd->shared);
            goto fail;
        }
    }
    ret = drv->open(bd, flags, errp);
    if (ret < 0) {
        if (bd->file) {
            bfile_close(bd->file, bd->perm, bd->shared);
        }
        goto fail;
    }
    return bd;

fail:
    pthread_mutex_destroy(&bd->gate_lock);
    pthread_cond_destroy(&bd->gate_cond);
    pthread_mutex_destroy(&bd->bitmap_lock);
    free(bd->opaque);
    free(bd->filename);
    free(bd->backing_file);
    free(bd->backing_format);
    free(bd);
    return NULL;
}

static void close_one(struct bdev *bd, struct error **errp)
{
    if (bd->drv->close && !bd->drv_closed) {
        bd->drv->close(bd, errp);
    }
    if (bd->file) {
        bfile_close(bd->file, bd->perm, bd->shared);
    }
    bdev_bitmaps_free(bd);
    assert(!bd->reqs && !bd->in_flight);
    pthread_mutex_destroy(&bd->gate_lock);
    pthread_cond_destroy(&bd->gate_cond);
    pthread_mutex_destroy(&bd->bitmap_lock);
    free(bd->opaque);
    free(bd->filename);
    free(bd->backing_file);
    free(bd->backing_format);
    free(bd->full_backing_file);
    free(bd->last_error);
    free(bd->node_name);
    free(bd);
}

/*
 * Choose the driver for a backing file whose format the overlay does not
 * record, as libvirt does: raw, or a qcow2 that has no backing file of its
 * own; anything else could be a raw image crafted to look like a qcow2
 * pointing at a host file, so it is refused.
 */
static const struct format_driver *probe_backing(const char *overlay, const char *path,
                                                 struct error **errp)
{
    uint8_t head[512];
    ssize_t n = read_head(path, head, sizeof(head));
    const struct format_driver *drv;

    if (n < 0) {
        error_setg_errno(errp, -n, "cannot open backing file '%s' of '%s'", path, overlay);
        return NULL;
    }
    drv = bdev_probe(head, n);
    if (drv == &qcow2_driver) {
        /* qcow2 header: backing_file_offset at bytes 8..15 */
        if (n >= 16 && get_be64(head + 8) != 0) {
            error_setg(errp, "'%s': backing file '%s' has no recorded format and is a qcow2 "
                       "image with a backing file of its own", overlay, path);
            error_append_hint(errp, "Record the backing format, e.g. with "
                              "'blockctl rebase -u -F qcow2 -b %s %s'", path, overlay);
            return NULL;
        }
    }
    return drv;
}

static struct bdev *open_chain(const char *filename, const struct format_driver *drv,
                               unsigned flags, const char *nbd_bitmap, struct chain_seen *seen,
                               struct error **errp);

/* Open the backing chain recorded in @bd. */
static int open_backing(struct bdev *bd, unsigned flags, struct chain_seen *seen,
                        struct error **errp)
{
    const struct format_driver *bdrv;
    unsigned bflags = flags & (BDEV_O_FORCE_SHARE | BDEV_O_NO_BITMAPS | BDEV_O_INFO |
                               BDEV_O_CACHE_MASK | BDEV_O_KILL_SAFE);

    if (seen->backing_cache >= 0) {
        bflags = (bflags & ~BDEV_O_CACHE_MASK) | (unsigned)seen->backing_cache;
    }

    if (check_filename(bd->backing_file, "backing file", errp) < 0) {
        error_prefix(errp, "'%s': ", bd->filename);
        return -EINVAL;
    }
    if (nbd_is_uri(bd->full_backing_file)) {
        if (bd->backing_format && strcmp(bd->backing_format, "raw")) {
            error_setg(errp, "'%s': backing file '%s' is an NBD export; its format must be "
                       "raw, not '%s'", bd->filename, bd->backing_file, bd->backing_format);
            return -EINVAL;
        }
        bd->backing = open_chain(bd->full_backing_file, &nbd_driver, bflags, NULL, seen, errp);
        return bd->backing ? 0 : -EIO;
    }
    if (bd->backing_format) {
        bdrv = bdev_find_driver(bd->backing_format);
        if (!bdrv || bdrv->is_protocol) {
            error_setg(errp, "'%s': unknown backing file format '%s'", bd->filename,
                       bd->backing_format);
            return -EINVAL;
        }
    } else {
        bdrv = probe_backing(bd->filename, bd->full_backing_file, errp);
        if (!bdrv) {
            return -EINVAL;
        }
    }
    if (access(bd->full_backing_file, F_OK) < 0) {
        error_setg_errno(errp, errno, "cannot open backing file '%s' of '%s'",
                         bd->full_backing_file, bd->filename);
        return -ENOENT;
    }
    bd->backing = open_chain(bd->full_backing_file, bdrv, bflags, NULL, seen, errp);
    if (!bd->backing && errp && *errp && !strstr((*errp)->msg, bd->filename) &&
        strncmp((*errp)->msg, "backing file of '", 17) &&
        strncmp((*errp)->msg, "cannot open backing file '", 26)) {
        /* name the image whose backing file it is, once: deeper in the
         * chain, the image below already did */
        error_prefix(errp, "backing file of '%s': ", bd->filename);
    }
    return bd->backing ? 0 : -EIO;
}

static struct bdev *open_chain(const char *filename, const struct format_driver *drv,
                               unsigned flags, const char *nbd_bitmap, struct chain_seen *seen,
                               struct error **errp)
{
    struct bdev *bd;
    struct stat st;

    if (stat(filename, &st) == 0) {
        for (int i = 0; i < seen->n; i++) {
            if (seen->dev[i] == st.st_dev && seen->ino[i] == st.st_ino) {
                error_setg(errp, "'%s': backing chain loops back to this image", filename);
                return NULL;
            }
        }
        if (seen->n > BDEV_MAX_CHAIN) {
            error_setg(errp, "'%s': backing chain deeper than %d images", filename,
                       BDEV_MAX_CHAIN);
            return NULL;
        }
        seen->dev[seen->n] = st.st_dev;
        seen->ino[seen->n] = st.st_ino;
        seen->n++;
    }

    bd = open_one(filename, drv, flags, nbd_bitmap, errp);
    if (!bd) {
        return NULL;
    }
    if (bd->backing_file) {
        bd->full_backing_file = bdev_path_combine(filename, bd->backing_file);
        if (!(flags & BDEV_O_NO_BACKING) && open_backing(bd, flags, seen, errp) < 0) {
            close_one(bd, NULL);
            return NULL;
        }
    }
    return bd;
}

struct bdev *bdev_open(const char *filename, const char *format, unsigned flags,
                       struct error **errp)
{
    return bdev_open_ext(filename, format, flags, NULL, errp);
}

struct bdev *bdev_open_ext(const char *filename, const char *format, unsigned flags,
                           const struct bdev_open_opts *opts, struct error **errp)
{
    const struct format_driver *drv;
    struct chain_seen *seen;
    struct bdev *bd;

    if ((flags & BDEV_O_FORCE_SHARE) && (flags & BDEV_O_RDWR)) {
        error_setg(errp, "force-share (-U) is only allowed for read-only opens");
        return NULL;
    }
    if (check_filename(filename, "image", errp) < 0) {
        return NULL;
    }
    if (nbd_is_uri(filename)) {
        /* An NBD export is the guest's disk itself: raw data. */
        if (format && strcmp(format, "raw") && strcmp(format, "nbd")) {
            error_setg(errp, "'%s': an NBD export is read as raw data, not as '%s'", filename,
                       format);
            return NULL;
        }
        drv = &nbd_driver;
    } else if (format) {
        drv = bdev_find_driver(format);
        if (!drv || drv->is_protocol) {
            error_setg(errp, "unknown format '%s'", format);
            return NULL;
        }
    } else {
        uint8_t head[512];
        ssize_t n = read_head(filename, head, sizeof(head));
        if (n < 0) {
            error_setg_errno(errp, -n, "cannot open '%s'", filename);
            return NULL;
        }
        drv = bdev_probe(head, n);
    }
    seen = xzalloc(sizeof(*seen));
    seen->backing_cache = opts && opts->backing_cache_set
                              ? (int)(opts->backing_cache & BDEV_O_CACHE_MASK) : -1;
    bd = open_chain(filename, drv, flags, opts ? opts->nbd_bitmap : NULL, seen, errp);
    free(seen);
    return bd;
}

void bdev_ref(struct bdev *bd)
{
    __atomic_add_fetch(&bd->refcnt, 1, __ATOMIC_RELAXED);
}

int bdev_close(struct bdev *bd, struct error **errp)
{
    struct error *err = NULL;

    while (bd && __atomic_sub_fetch(&bd->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        struct bdev *next = bd->backing;
        close_one(bd, err ? NULL : &err);
        bd = next;
    }
    if (err) {
        error_propagate(errp, err);
        return -EIO;
    }
    return 0;
}

void bdev_unref(struct bdev *bd)
{
    bdev_close(bd, NULL);
}

void bdev_set_backing(struct bdev *bd, struct bdev *backing)
{
    struct bdev *old = bd->backing;

    if (backing) {
        bdev_ref(backing);
    }
    bd->backing = backing;
    if (old) {
        bdev_unref(old);
    }
}

void bdev_set_error(struct bdev *bd, const char *fmt, ...)
{
    va_list ap;
    char *msg, *old;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    pthread_mutex_lock(&bd->gate_lock);
    old = bd->last_error;
    bd->last_error = msg;
    pthread_mutex_unlock(&bd->gate_lock);
    free(old);
}

static volatile sig_atomic_t *interrupt_flag;
static volatile sig_atomic_t interrupt_fd = -1;

void bdev_set_interrupt_flag(volatile sig_atomic_t *flag)
{
    if (interrupt_fd < 0) {
        interrupt_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    interrupt_flag = flag;
    if (*flag) {
        /* set before we were told about it */
        bdev_interrupt_notify();
    }
}

void bdev_interrupt_notify(void)
{
    int fd = interrupt_fd, saved = errno;
    uint64_t one = 1;

    /* never read: the descriptor stays readable for every waiter */
    if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
        /* the counter is already huge: readable anyway */
    }
    errno = saved;
}

int bdev_interrupt_fd(void)
{
    return interrupt_fd;
}

bool bdev_interrupted(void)
{
    return interrupt_flag && __atomic_load_n(interrupt_flag, __ATOMIC_RELAXED);
}

const char *bdev_format_name(const struct bdev *bd)
{
    return bd->drv->is_protocol ? "raw" : bd->drv->name;
}

char *bdev_last_error(struct bdev *bd)
{
    char *copy = NULL;

    for (; bd && !copy; bd = bd->backing) {
        pthread_mutex_lock(&bd->gate_lock);
        copy = bd->last_error ? xstrdup(bd->last_error) : NULL;
        pthread_mutex_unlock(&bd->gate_lock);
    }
    return copy;
}

void bdev_report_io_error(struct bdev *bd, const char *what, int ret)
{
    char *detail = bdev_last_error(bd);

    if (detail) {
        error_report("%s: %s", what, detail);
    } else {
        error_report("%s: '%s': %s", what, bd->filename, strerror(ret < 0 ? -ret : ret));
    }
    free(detail);
}

struct bdev *bdev_chain_find(struct bdev *bd, const char *name)
{
    struct stat want, st;

    if (nbd_is_uri(name)) {
        for (; bd; bd = bd->backing) {
            if (bd->drv->is_protocol && !strcmp(bd->filename, name)) {
                return bd;
            }
        }
        return NULL;
    }
    if (stat(name, &want) < 0) {
        return NULL;
    }
    for (; bd; bd = bd->backing) {
        if (bd->file && fstat(bd->file->fd, &st) == 0 && st.st_dev == want.st_dev &&
            st.st_ino == want.st_ino) {
            return bd;
        }
    }
    return NULL;
}

struct bdev *bdev_chain_parent(struct bdev *bd, struct bdev *child)
{
    for (; bd; bd = bd->backing) {
        if (bd->backing == child) {
            return bd;
        }
    }
    return NULL;
}

char *bdev_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');

    if (!slash) {
        return xstrdup(".");
    }
    if (slash == path) {
        return xstrdup("/");
    }
    return xstrndup(path, slash - path);
}

/* Make @p absolute and lexically normal (no ".", "..", "//"). */
static char *abs_normal(const char *p)
{
    char *joined, *out, *save = NULL, *tok;
    size_t n = 0;
    char **parts;
    size_t np = 0;

    if (p[0] == '/') {
        joined = xstrdup(p);
    } else {
        char cwd[4096];
        if (!getcwd(cwd, sizeof(cwd))) {
            strcpy(cwd, ".");
        }
        joined = xasprintf("%s/%s", cwd, p);
    }
    parts = xcalloc(strlen(joined) + 1, sizeof(char *));
    for (tok = strtok_r(joined, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
        if (!strcmp(tok, ".")) {
            continue;
        }
        if (!strcmp(tok, "..")) {
            if (np) {
                np--;
            }
            continue;
        }
        parts[np++] = tok;
    }
    for (size_t i = 0; i < np; i++) {
        n += strlen(parts[i]) + 1;
    }
    out = xmalloc(n + 2);
    out[0] = '\0';
    for (size_t i = 0; i < np; i++) {
        strcat(out, "/");
        strcat(out, parts[i]);
    }
    if (!np) {
        strcpy(out, "/");
    }
    free(parts);
    free(joined);
    return out;
}

char *bdev_relative_path(const char *target, const char *dir)
{
    if (target[0] == '/') {
        return xstrdup(target);
    }
    return bdev_make_relative(target, dir);
}

char *bdev_make_relative(const char *target, const char *dir)
{
    char *t, *d, *res;
    size_t common = 0, i;
    int ups = 0;

    t = abs_normal(target);
    d = abs_normal(dir);
    /* longest common prefix ending at a component boundary */
    for (i = 0; t[i] && d[i] && t[i] == d[i]; i++) {
        if (t[i] == '/') {
            common = i;
        }
    }
    if (!d[i] && (t[i] == '/' || !t[i])) {
        common = i;
    } else if (!strcmp(d, "/")) {
        common = 0;
    }
    for (const char *p = d + common; *p; p++) {
        if (*p == '/') {
            ups++;
        }
    }
    res = xstrdup("");
    for (int k = 0; k < ups; k++) {
        char *r = xasprintf("%s../", res);
        free(res);
        res = r;
    }
    {
        const char *rest = t + common;
        if (*rest == '/') {
            rest++;
        }
        char *r = xasprintf("%s%s", res, rest);
        free(res);
        res = r;
    }
    free(t);
    free(d);
    return res;
}

/* For drivers without a reopen hook: close and open the driver again. */
static int reopen_by_close(struct bdev *bd, unsigned flags, struct error **errp)
{
    bool rw = flags & BDEV_O_RDWR;
    unsigned perm, shared;
    struct error *err = NULL;
    int ret;

    if (bd->drv->is_protocol) {
        error_setg(errp, "'%s': an NBD export cannot be reopened %s", bd->filename,
                   rw ? "read-write" : "read-only");
        return -ENOTSUP;
    }
    perm = rw ? PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE : PERM_CONSISTENT_READ;
    shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
    bdev_drain_begin(bd);
    if (bd->file) {
        ret = bfile_set_perm(bd->file, bd->perm, bd->shared, perm, shared, errp);
        if (ret < 0) {
            bdev_drain_end(bd);
            return ret;
        }
    }
    if (bd->drv->close) {
        bd->drv->close(bd, &err);
    }
    /* the driver registers its bitmaps again when it opens */
    bdev_bitmaps_free(bd);
    if (err) {
        error_propagate(errp, err);
        ret = -EIO;
    } else {
        ret = 0;
    }
    free(bd->backing_file);
    free(bd->backing_format);
    bd->backing_file = bd->backing_format = NULL;
    if (bd->opaque) {
        memset(bd->opaque, 0, bd->drv->priv_size);
    }
    bd->perm = perm;
    bd->shared = shared;
    bd->read_only = !rw;
    bd->flags = (bd->flags & ~BDEV_O_RDWR) | (flags & BDEV_O_RDWR);
    if (ret == 0) {
        ret = bd->drv->open(bd, bd->flags | BDEV_O_NO_BACKING, errp);
    }
    if (ret < 0) {
        /* The driver state is gone: make every request fail. */
        bd->size = 0;
        bd->drv_closed = true;
    }
    bdev_drain_end(bd);
    return ret;
}

int bdev_reopen(struct bdev *bd, unsigned flags, struct error **errp)
{
    bool rw = flags & BDEV_O_RDWR;
    unsigned perm, shared;
    int ret = 0;

    if (rw == !bd->read_only) {
        return 0;
    }
    if (!bd->drv->reopen) {
        return reopen_by_close(bd, flags, errp);
    }
    if (rw && (bd->flags & BDEV_O_FORCE_SHARE)) {
        error_setg(errp, "'%s': opened with force-share (-U): cannot be written",
                   bd->filename);
        return -EPERM;
    }
    perm = rw ? PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE : PERM_CONSISTENT_READ;
    shared = bd->shared;
    bdev_drain_begin(bd);
    if (rw) {
        /* the write locks first: nobody else may write once we do */
        if (bd->file) {
            ret = bfile_set_perm(bd->file, bd->perm, bd->shared, perm, shared, errp);
        }
        if (ret == 0) {
            bd->read_only = false;
            ret = bd->drv->reopen(bd, flags, errp);
            if (ret < 0) {
                bd->read_only = true;
                if (bd->file) {
                    bfile_set_perm(bd->file, perm, shared, bd->perm, bd->shared, NULL);
                }
            }
        }
    } else {
        /* everything written back while we may still write */
        ret = bd->drv->reopen(bd, flags, errp);
        if (ret == 0) {
            bd->read_only = true;
            if (bd->file) {
                bfile_set_perm(bd->file, bd->perm, bd->shared, perm, shared, NULL);
            }
        }
    }
    if (ret == 0) {
        bd->perm = perm;
        bd->flags = (bd->flags & ~BDEV_O_RDWR) | (flags & BDEV_O_RDWR);
    }
    bdev_drain_end(bd);
    return ret;
}

int bdev_chain_length(struct bdev *bd)
{
    int n = 0;

    for (; bd; bd = bd->backing) {
        n++;
    }
    return n;
}

/* --- in-flight gate and request tracking --- */

/*
 * A write (or a serialising section) in flight over [off, end).  Lives on
 * the stack of the request's thread while it is linked in bd->reqs.
 */
struct bdev_req {
    uint64_t off, end;
    bool serialising;
    pthread_t thread;
    struct bdev_req *next;
};

static bool is_drainer(struct bdev *bd)
{
    return bd->quiesce && pthread_equal(bd->drainer, pthread_self());
}

/* Under gate_lock: wait on the gate's condition. */
static void gate_wait(struct bdev *bd)
{
    bd->gate_waiters++;
    pthread_cond_wait(&bd->gate_cond, &bd->gate_lock);
    bd->gate_waiters--;
}

/* Under gate_lock: a serialising section of another thread overlaps. */
static bool blocked_by_serialising(struct bdev *bd, uint64_t off, uint64_t end, bool any)
{
    for (struct bdev_req *r = bd->reqs; r; r = r->next) {
        if ((any || r->serialising) && r->off < end && off < r->end &&
            !pthread_equal(r->thread, pthread_self())) {
            return true;
        }
    }
    return false;
}

static void unlink_req(struct bdev *bd, struct bdev_req *req)
{
    for (struct bdev_req **pp = &bd->reqs; *pp; pp = &(*pp)->next) {
        if (*pp == req) {
            *pp = req->next;
            return;
        }
    }
    BUG("request not tracked");
}

/*
 * Enter the gate for a request; @req (for writes) is tracked so that
 * serialising sections wait for it, and it waits for them.  The thread
 * that drains @bd passes (it is the one changing things), and waits for
 * no serialising section: a section's owner may be stopped at the gate.
 */
static void gate_enter_req(struct bdev *bd, struct bdev_req *req, uint64_t off, uint64_t len)
{
    pthread_mutex_lock(&bd->gate_lock);
    for (;;) {
        if (bd->quiesce && !is_drainer(bd)) {
            gate_wait(bd);
            continue;
        }
        if (req && !is_drainer(bd) && bd->reqs &&
            blocked_by_serialising(bd, off, off + len, false)) {
            gate_wait(bd);
            continue;
        }
        break;
    }
    if (req) {
        req->off = off;
        req->end = off + len;
        req->serialising = false;
        req->thread = pthread_self();
        req->next = bd->reqs;
        bd->reqs = req;
    }
    bd->in_flight++;
    pthread_mutex_unlock(&bd->gate_lock);
}

static void gate_exit_req(struct bdev *bd, struct bdev_req *req)
{
    pthread_mutex_lock(&bd->gate_lock);
    if (req) {
        unlink_req(bd, req);
    }
    bd->in_flight--;
    if (bd->gate_waiters) {
        pthread_cond_broadcast(&bd->gate_cond);
    }
    pthread_mutex_unlock(&bd->gate_lock);
}

static void gate_enter(struct bdev *bd)
{
    gate_enter_req(bd, NULL, 0, 0);
}

static void gate_exit(struct bdev *bd)
{
    gate_exit_req(bd, NULL);
}

void bdev_drain_begin(struct bdev *bd)
{
    pthread_mutex_lock(&bd->gate_lock);
    if (is_drainer(bd)) {
        bd->quiesce++;
        pthread_mutex_unlock(&bd->gate_lock);
        return;
    }
    while (bd->quiesce) {
        gate_wait(bd);
    }
    bd->quiesce = 1;
    bd->drainer = pthread_self();
    while (bd->in_flight) {
        gate_wait(bd);
    }
    pthread_mutex_unlock(&bd->gate_lock);
}

void bdev_drain_end(struct bdev *bd)
{
    pthread_mutex_lock(&bd->gate_lock);
    assert(is_drainer(bd));
    if (--bd->quiesce == 0 && bd->gate_waiters) {
        pthread_cond_broadcast(&bd->gate_cond);
    }
    pthread_mutex_unlock(&bd->gate_lock);
}

bool bdev_is_drained(struct bdev *bd)
{
    bool r;

    pthread_mutex_lock(&bd->gate_lock);
    r = is_drainer(bd);
    pthread_mutex_unlock(&bd->gate_lock);
    return r;
}

struct bdev_serial *bdev_serialise_begin(struct bdev *bd, uint64_t off, uint64_t len)
{
    struct bdev_serial *s = xmalloc(sizeof(*s));
    struct bdev_req *req = xmalloc(sizeof(*req));

    s->bd = bd;
    s->req = req;
    pthread_mutex_lock(&bd->gate_lock);
    while (blocked_by_serialising(bd, off, off + len, true)) {
        gate_wait(bd);
    }
    req->off = off;
    req->end = off + len;
    req->serialising = true;
    req->thread = pthread_self();
    req->next = bd->reqs;
    bd->reqs = req;
    pthread_mutex_unlock(&bd->gate_lock);
    return s;
}

void bdev_serialise_end(struct bdev_serial *s)
{
    struct bdev *bd;

    if (!s) {
        return;
    }
    bd = s->bd;
    pthread_mutex_lock(&bd->gate_lock);
    unlink_req(bd, s->req);
    if (bd->gate_waiters) {
        pthread_cond_broadcast(&bd->gate_cond);
    }
    pthread_mutex_unlock(&bd->gate_lock);
    free(s->req);
    free(s);
}

/* --- write notifiers and dirty bitmaps --- */

void bdev_add_write_notifier(struct bdev *bd, struct bdev_write_notifier *n)
{
    pthread_mutex_lock(&bd->bitmap_lock);
    n->next = bd->notifiers;
    bd->notifiers = n;
    pthread_mutex_unlock(&bd->bitmap_lock);
}

void bdev_remove_write_notifier(struct bdev *bd, struct bdev_write_notifier *n)
{
    pthread_mutex_lock(&bd->bitmap_lock);
    for (struct bdev_write_notifier **pp = &bd->notifiers; *pp; pp = &(*pp)->next) {
        if (*pp == n) {
            *pp = n->next;
            break;
        }
    }
    pthread_mutex_unlock(&bd->bitmap_lock);
}

/*
 * Before a write: the notifiers' before hooks (write-blocking mirror).
 * Notifiers are added and removed with the image drained, so the list is
 * stable while a request is in flight.
 */
static int write_before(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags,
                        const void *buf)
{
    for (struct bdev_write_notifier *n = bd->notifiers; n; n = n->next) {
        if (n->before) {
            int ret = n->before(n, off, len, flags, buf);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* After a write: dirty the enabled bitmaps (on success), then the notifiers. */
static void write_after(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags, int ret)
{
    if (ret == 0 && !(flags & BDEV_REQ_WRITE_UNCHANGED) &&
        __atomic_load_n(&bd->nr_enabled_bitmaps, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&bd->bitmap_lock);
        for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
            if (b->enabled && b->bm) {
                bitmap_set(b->bm, off, len);
            }
        }
        pthread_mutex_unlock(&bd->bitmap_lock);
    }
    for (struct bdev_write_notifier *n = bd->notifiers; n; n = n->next) {
        if (n->after) {
            n->after(n, off, len, flags, ret);
        }
    }
}

/* --- foreground and background requests --- */

static __thread bool background_thread;
static uint64_t foreground_ms;          /* CLOCK_MONOTONIC_COARSE, ms */

static uint64_t coarse_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void (*check_sink)(const char *text);

void bdev_set_check_sink(void (*sink)(const char *text))
{
    check_sink = sink;
}

void bdev_check_report(const char *text)
{
    if (check_sink) {
        check_sink(text);
    }
}

void bdev_thread_background(void)
{
    background_thread = true;
}

bool bdev_thread_is_background(void)
{
    return background_thread;
}

/* A data request begins (stored only when the stamp moves: no cache line
 * bouncing between the guest's threads) */
static void note_request(void)
{
    if (!background_thread) {
        uint64_t now = coarse_ms();
        if (__atomic_load_n(&foreground_ms, __ATOMIC_RELAXED) != now) {
            __atomic_store_n(&foreground_ms, now, __ATOMIC_RELAXED);
        }
    }
}

bool bdev_foreground_within(unsigned ms)
{
    uint64_t last = __atomic_load_n(&foreground_ms, __ATOMIC_RELAXED);

    return last && coarse_ms() - last < ms;
}

/* --- data path --- */

/* Requests are passed down (and drains wait for them) in pieces this big. */
#define GATE_CHUNK ((size_t)64 << 20)

static int check_range(struct bdev *bd, uint64_t off, uint64_t len)
{
    if (off > bd->size || len > bd->size - off) {
        return -EINVAL;
    }
    return 0;
}

static int check_write(struct bdev *bd, uint64_t off, uint64_t len)
{
    if (bd->read_only) {
        return -EPERM;
    }
    return check_range(bd, off, len);
}

int bdev_pread(struct bdev *bd, void *buf, size_t len, uint64_t off)
{
    int ret = check_range(bd, off, len);

    note_request();
    while (ret == 0 && len) {
        size_t n = MIN(len, GATE_CHUNK);

        gate_enter(bd);
        /* the size may have changed while we waited at the gate */
        ret = check_range(bd, off, n);
        if (ret == 0) {
            ret = bd->drv->pread(bd, buf, n, off);
        }
        gate_exit(bd);
        buf = (char *)buf + n;
        off += n;
        len -= n;
    }
    return ret;
}

int bdev_pwrite(struct bdev *bd, const void *buf, size_t len, uint64_t off, unsigned flags)
{
    int ret = check_write(bd, off, len);

    note_request();
    while (ret == 0 && len) {
        size_t n = MIN(len, GATE_CHUNK);
        struct bdev_req req;

        gate_enter_req(bd, &req, off, n);
        ret = check_write(bd, off, n);
        if (ret == 0) {
            ret = write_before(bd, off, n, flags, buf);
        }
        if (ret == 0) {
            ret = bd->drv->pwrite(bd, buf, n, off, flags);
            write_after(bd, off, n, flags, ret);
        }
        gate_exit_req(bd, &req);
        buf = (const char *)buf + n;
        off += n;
        len -= n;
    }
    return ret;
}

static int write_zero_buffers(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags)
{
    size_t bufsz = MIN(len, (uint64_t)1 << 20);
    void *zero = xzalloc(bufsz);
    int ret = 0;

    while (len) {
        size_t n = MIN(len, (uint64_t)bufsz);
        ret = bd->drv->pwrite(bd, zero, n, off,
                              flags & (BDEV_REQ_FUA | BDEV_REQ_WRITE_UNCHANGED));
        if (ret < 0) {
            break;
        }
        off += n;
        len -= n;
    }
    free(zero);
    return ret;
}

int bdev_pwrite_zeroes(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags)
{
    int ret = check_write(bd, off, len);
    struct bdev_req req;

    note_request();
    if (ret < 0) {
        return ret;
    }
    gate_enter_req(bd, &req, off, len);
    ret = check_write(bd, off, len);
    if (ret == 0) {
        ret = write_before(bd, off, len, flags | BDEV_REQ_ZERO_WRITE, NULL);
    }
    if (ret == 0) {
        ret = -ENOTSUP;
        if (bd->drv->pwrite_zeroes) {
            ret = bd->drv->pwrite_zeroes(bd, off, len, flags);
        }
        if (ret == -ENOTSUP && !(flags & BDEV_REQ_NO_FALLBACK)) {
            ret = write_zero_buffers(bd, off, len, flags);
        }
        write_after(bd, off, len, flags | BDEV_REQ_ZERO_WRITE, ret);
    }
    gate_exit_req(bd, &req);
    return ret;
}

int bdev_discard(struct bdev *bd, uint64_t off, uint64_t len)
{
    int ret = check_write(bd, off, len);
    struct bdev_req req;

    note_request();
    if (ret < 0) {
        return ret;
    }
    if (!bd->drv->discard) {
        return 0;
    }
    gate_enter_req(bd, &req, off, len);
    ret = check_write(bd, off, len);
    if (ret == 0) {
        ret = write_before(bd, off, len, BDEV_REQ_DISCARD, NULL);
    }
    if (ret == 0) {
        ret = bd->drv->discard(bd, off, len);
        if (ret == -ENOTSUP) {
            ret = 0;
        }
        write_after(bd, off, len, BDEV_REQ_DISCARD, ret);
    }
    gate_exit_req(bd, &req);
    return ret;
}

int bdev_flush(struct bdev *bd)
{
    int ret = 0;

    note_request();
    if (bd->read_only || !bd->drv->flush) {
        return 0;
    }
    gate_enter(bd);
    ret = bd->drv->flush(bd);
    gate_exit(bd);
    return ret;
}

int bdev_pwrite_compressed(struct bdev *bd, const void *buf, size_t len, uint64_t off)
{
    int ret = check_write(bd, off, len);
    struct bdev_req req;

    if (ret < 0) {
        return ret;
    }
    if (!bd->drv->pwrite_compressed) {
        return -ENOTSUP;
    }
    gate_enter_req(bd, &req, off, len);
    ret = write_before(bd, off, len, 0, buf);
    if (ret == 0) {
        ret = bd->drv->pwrite_compressed(bd, buf, len, off);
        write_after(bd, off, len, 0, ret);
    }
    gate_exit_req(bd, &req);
    return ret;
}

void bdev_start_writeback(struct bdev *bd)
{
    if (bd->file && !bd->file->is_blockdev && !bd->read_only) {
        /* errors do not matter: the flush that follows reports them */
        (void)sync_file_range(bd->file->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    }
}

/* Every bitmap must be in memory and consistent to follow a resize. */
static int bitmaps_resize_check(struct bdev *bd, struct error **errp)
{
    int ret = 0;

    pthread_mutex_lock(&bd->bitmap_lock);
    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        if (!b->bm || b->inconsistent) {
            error_setg(errp, "'%s': cannot resize: bitmap '%s' is %s", bd->filename, b->name,
                       b->inconsistent ? "inconsistent; remove it first" : "not loaded");
            ret = -ENOTSUP;
            break;
        }
    }
    pthread_mutex_unlock(&bd->bitmap_lock);
    return ret;
}

/* After a resize: the bitmaps take the new size (a grown area clean, as in QEMU). */
static void bitmaps_resize(struct bdev *bd, uint64_t old_size)
{
    pthread_mutex_lock(&bd->bitmap_lock);
    for (struct bdev_bitmap *b = bd->bitmaps; b; b = b->next) {
        struct dirty_bitmap *nb = bitmap_new(bd->size, bitmap_granularity(b->bm));
        uint64_t pos = 0, off, len;

        while (pos < old_size && bitmap_next_dirty(b->bm, pos, 0, &off, &len) &&
               off < bd->size) {
            bitmap_set(nb, off, MIN(len, bd->size - off));
            pos = off + len;
        }
        bitmap_free(b->bm);
        b->bm = nb;
        b->stored_gen = ~bitmap_gen(nb);   /* the stored table has the old size */
    }
    bd->bitmaps_changed = true;
    pthread_mutex_unlock(&bd->bitmap_lock);
}

int bdev_truncate(struct bdev *bd, uint64_t size, struct error **errp)
{
    uint64_t old = bd->size;
    int ret;

    if (bd->read_only) {
        error_setg(errp, "'%s': opened read-only", bd->filename);
        return -EPERM;
    }
    if (!bd->drv->truncate) {
        error_setg(errp, "'%s': format '%s' cannot be resized", bd->filename, bd->drv->name);
        return -ENOTSUP;
    }
    ret = bitmaps_resize_check(bd, errp);
    if (ret < 0) {
        return ret;
    }
    bdev_drain_begin(bd);
    ret = bd->drv->truncate(bd, size, errp);
    if (ret == 0) {
        bitmaps_resize(bd, old);
    }
    bdev_drain_end(bd);
    if (ret == 0 && bd->size > old && bd->backing && bd->backing->size > old) {
        /*
         * As QEMU: a backing file longer than the old size would show
         * through the new area, which must read as zeroes.
         */
        uint64_t end = MIN(bd->size, bd->backing->size);
        ret = bdev_pwrite_zeroes(bd, old, end - old, BDEV_REQ_WRITE_UNCHANGED);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': cannot zero the new area", bd->filename);
        }
    }
    return ret;
}

static const char *const prealloc_names[] = {
    [BDEV_PREALLOC_OFF] = "off", [BDEV_PREALLOC_METADATA] = "metadata",
    [BDEV_PREALLOC_FALLOC] = "falloc", [BDEV_PREALLOC_FULL] = "full",
};

int bdev_prealloc_parse(const char *name, enum bdev_prealloc *out)
{
    for (size_t i = 0; i < ARRAY_SIZE(prealloc_names); i++) {
        if (!strcmp(name, prealloc_names[i])) {
            *out = (enum bdev_prealloc)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *bdev_prealloc_name(enum bdev_prealloc p)
{
    return (size_t)p < ARRAY_SIZE(prealloc_names) ? prealloc_names[p] : "?";
}

int bdev_resize(struct bdev *bd, uint64_t size, enum bdev_prealloc prealloc,
                struct error **errp)
{
    uint64_t old = bd->size;
    int ret;

    if (prealloc != BDEV_PREALLOC_OFF) {
        if (size <= old) {
            error_setg(errp, "Preallocation can only be used for growing images");
            return -EINVAL;
        }
        if (!bd->drv->preallocate) {
            error_setg(errp, "Unsupported preallocation mode: %s", bdev_prealloc_name(prealloc));
            return -ENOTSUP;
        }
        /* ask before resizing: a mode the driver refuses changes nothing */
        ret = bd->drv->preallocate(bd, old, old, prealloc, errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = bdev_truncate(bd, size, errp);
    if (ret < 0 || prealloc == BDEV_PREALLOC_OFF) {
        return ret;
    }
    bdev_drain_begin(bd);
    ret = bd->drv->preallocate(bd, old, bd->size, prealloc, errp);
    bdev_drain_end(bd);
    return ret;
}

int bdev_make_empty(struct bdev *bd)
{
    int ret;

    if (bd->read_only) {
        return -EPERM;
    }
    if (!bd->drv->make_empty) {
        return -ENOTSUP;
    }
    gate_enter(bd);
    ret = bd->drv->make_empty(bd);
    gate_exit(bd);
    return ret;
}

int bdev_read_backing(struct bdev *bd, void *buf, size_t len, uint64_t off)
{
    struct bdev *bk = bd->backing;
    size_t n = 0;
    int ret;

    if (bk && off < bk->size) {
        n = MIN((uint64_t)len, bk->size - off);
        ret = bdev_pread(bk, buf, n, off);
        if (ret < 0) {
            return ret;
        }
    }
    if (n < len) {
        memset((char *)buf + n, 0, len - n);
    }
    return 0;
}

int bdev_block_status(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum,
                      uint64_t *map, unsigned *status)
{
    int ret;

    if (off >= bd->size || len == 0) {
        return -EINVAL;
    }
    len = MIN(len, bd->size - off);
    *map = 0;
    if (!bd->drv->block_status) {
        *pnum = len;
        *status = BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED;
        return 0;
    }
    gate_enter(bd);
    ret = bd->drv->block_status(bd, off, len, pnum, map, status);
    gate_exit(bd);
    if (ret == 0) {
        assert(*pnum > 0 && *pnum <= len);
    }
    return ret;
}

int bdev_block_status_above(struct bdev *bd, struct bdev *base, uint64_t off, uint64_t len,
                            struct bdev_map *out)
{
    struct bdev *cur = bd;
    int depth = 0;
    uint64_t eof = 0;   /* where the top's unallocated run reaches its end */

    if (off >= bd->size || len == 0) {
        return -EINVAL;
    }
    len = MIN(len, bd->size - off);
    for (;;) {
        uint64_t pnum, map;
        unsigned st;
        int ret;

        ret = bdev_block_status(cur, off, len, &pnum, &map, &st);
        if (ret < 0) {
            return ret;
        }
        len = pnum;
        out->len = len;
        out->status = st;
        out->offset = map;
        out->depth = depth;
        out->layer = cur;
        out->past_end = false;
        /*
         * EOF as QEMU reports it: the deciding layer's own end for the top
         * and for the bottom, and otherwise only where the top's
         * unallocated run reached the end of the top.
         */
        out->eof = (eof && off + len == eof) ||
                   ((cur == bd || (!cur->backing && !(st & BDEV_BLOCK_ALLOCATED))) &&
                    off + len == cur->size);
        if (st & BDEV_BLOCK_ALLOCATED) {
            return 0;
        }
        if (cur == bd && off + len == bd->size) {
            eof = off + len;
        }
        if (!cur->backing) {
            /* unallocated at the bottom: reads as zeroes */
            out->status |= BDEV_BLOCK_ZERO;
            return 0;
        }
        if (cur->backing == base) {
            return 0;
        }
        if (off >= cur->backing->size) {
            /* past the end of a shorter backing image: zeroes */
            out->status |= BDEV_BLOCK_ZERO;
            out->past_end = true;
            out->eof = eof && off + len == eof;
            return 0;
        }
        len = MIN(len, cur->backing->size - off);
        cur = cur->backing;
        depth++;
    }
}

int bdev_get_info(struct bdev *bd, struct image_info *out, struct error **errp)
{
    memset(out, 0, sizeof(*out));
    if (!bd->drv->get_info) {
        return 0;
    }
    return bd->drv->get_info(bd, out, errp);
}

/*
 * The file the last bdev_create_file() of this thread brought into being
 * (not one it reused): bdev_create() removes it when the creation fails.
 */
static __thread struct {
    bool set;
    dev_t dev;
    ino_t ino;
} created_file;

struct bfile *bdev_create_file(const char *filename, unsigned flags, struct error **errp)
{
    struct bfile *f;
    struct stat st;
    int fd, ret;

    if (stat(filename, &st) < 0) {
        if (errno != ENOENT) {
            error_setg_errno(errp, errno, "cannot create '%s'", filename);
            return NULL;
        }
        fd = io_open(filename, O_RDWR | O_CREAT | O_EXCL, 0644);
        if (fd < 0) {
            error_setg_errno(errp, -fd, "cannot create '%s'", filename);
            return NULL;
        }
        if (fstat(fd, &st) == 0) {
            created_file.set = true;
            created_file.dev = st.st_dev;
            created_file.ino = st.st_ino;
        }
        io_close(fd);
    } else if (!(flags & BDEV_CREATE_FORCE)) {
        error_setg(errp, "'%s' already exists", filename);
        error_append_hint(errp, "Use --force to replace it");
        return NULL;
    } else if (S_ISDIR(st.st_mode)) {
        error_setg(errp, "cannot create '%s': Is a directory", filename);
        return NULL;
    }
    f = bfile_open(filename, BDEV_CREATE_PERM, 0, errp);
    if (!f) {
        return NULL;
    }
    if (!f->is_blockdev) {
        ret = io_ftruncate(f->fd, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "cannot truncate '%s'", filename);
            bfile_close(f, BDEV_CREATE_PERM, 0);
            return NULL;
        }
    }
    return f;
}

int bdev_create(const char *fmt, const char *filename, const struct optlist *o,
                unsigned flags, struct error **errp)
{
    const struct format_driver *drv = bdev_find_driver(fmt);
    int ret;

    if (!drv || !drv->create) {
        error_setg(errp, "format '%s' does not support image creation", fmt);
        return -ENOTSUP;
    }
    if (check_filename(filename, "image", errp) < 0) {
        return -EINVAL;
    }
    created_file.set = false;
    ret = drv->create(filename, o, flags, errp);
    if (ret < 0 && created_file.set) {
        /* never leave a half-made image behind (nor remove somebody else's) */
        struct stat st;
        if (stat(filename, &st) == 0 && st.st_dev == created_file.dev &&
            st.st_ino == created_file.ino) {
            (void)io_unlink(filename);
        }
    }
    created_file.set = false;
    return ret;
}

char *bdev_hidden_name(const char *name)
{
    const char *slash = strrchr(name, '/');

    return slash ? xasprintf("%.*s.blockctl-new.%s", (int)(slash - name + 1), name, slash + 1)
                 : xasprintf(".blockctl-new.%s", name);
}

int bdev_create_hidden(const char *fmt, const char *name, const struct optlist *o,
                       char **tmp, struct error **errp)
{
    struct error *err = NULL;
    int r;

    *tmp = bdev_hidden_name(name);
    r = bdev_create(fmt, *tmp, o, BDEV_CREATE_FORCE, &err);
    /* the user knows the file by its own name */
    error_replace_name(err, *tmp, name);
    error_propagate(errp, err);
    return r;
}

int bdev_create_install(const char *tmp, const char *name, unsigned flags, bool *renamed,
                        struct error **errp)
{
    struct stat made, st;
    const char *outcome;
    char *dir;
    int ret;

    *renamed = false;
    if (stat(tmp, &made) < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "cannot rename '%s' to '%s'", tmp, name);
        return ret;
    }
    ret = (flags & BDEV_CREATE_FORCE) ? io_rename(tmp, name) : io_rename_noreplace(tmp, name);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot rename '%s' to '%s'", tmp, name);
        return ret;
    }
    *renamed = true;
    ret = io_dirsync(name);
    if (ret == 0) {
        return 0;
    }
    /*
     * The rename is done but may not survive a crash.  A file that
     * replaced another stays: the old one is gone either way.  A new name
     * is taken back, but only if it still is our file.
     */
    if (flags & BDEV_CREATE_FORCE) {
        outcome = "the new image replaced the old one, but a crash may bring the old one back";
    } else if (lstat(name, &st) < 0 || st.st_dev != made.st_dev || st.st_ino != made.st_ino) {
        outcome = "it was replaced meanwhile and is left as it is";
    } else if (io_unlink(name) < 0) {
        outcome = "the new image is in place, but may not survive a crash";
    } else {
        (void)io_dirsync(name);
        outcome = "the new image was removed again: nothing was created";
    }
    dir = bdev_dirname(name);
    error_setg(errp, "'%s': cannot sync folder '%s': %s; %s", name, dir, strerror(-ret), outcome);
    free(dir);
    return ret;
}

char *bdev_backing_name_for_dir(const char *dir, struct bdev *chain, struct bdev *base)
{
    struct bdev *parent = bdev_chain_parent(chain, base);

    if (base->drv->is_protocol || (parent && parent->backing_file &&
                                   parent->backing_file[0] == '/')) {
        return xstrdup(parent && parent->backing_file ? parent->backing_file : base->filename);
    }
    /* the chain names it relatively: so does the new name */
    return bdev_make_relative(base->filename, dir);
}

char *bdev_backing_name_for(struct bdev *top, struct bdev *chain, struct bdev *base)
{
    char *dir = bdev_dirname(top->filename);
    char *name = bdev_backing_name_for_dir(dir, chain, base);

    free(dir);
    return name;
}
