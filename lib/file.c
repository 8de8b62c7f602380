/*
 * blockctl - shared image file descriptors and QEMU-compatible locks
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/file.h"
#include "lib/io.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

/* block/file-posix.c: RAW_LOCK_PERM_BASE and RAW_LOCK_SHARED_BASE */
#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

static const char *const perm_names[4] = {
    "consistent read", "write", "write unchanged", "resize",
};

static pthread_mutex_t files_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bfile **files;
static size_t nr_files;
static bool locking_on = true;
static int use_posix_locks = -1;    /* -1 unknown, 0 OFD, 1 POSIX */

void bfile_set_locking(bool on)
{
    locking_on = on;
}

static int lock_cmd(bool test)
{
    if (use_posix_locks == 1) {
        return test ? F_GETLK : F_SETLK;
    }
    return test ? F_OFD_GETLK : F_OFD_SETLK;
}

/* Set (F_RDLCK) or drop (F_UNLCK) a one-byte lock; returns 0 or -errno. */
static int lock_byte(int fd, off_t off, bool set)
{
    struct flock fl = {
        .l_whence = SEEK_SET, .l_start = off, .l_len = 1,
        .l_type = set ? F_RDLCK : F_UNLCK,
    };

    if (fcntl(fd, lock_cmd(false), &fl) < 0) {
        if (errno == EINVAL && use_posix_locks == -1) {
            use_posix_locks = 1;
            return lock_byte(fd, off, set);
        }
        return -errno;
    }
    if (use_posix_locks == -1) {
        use_posix_locks = 0;
    }
    return 0;
}

/* True if another open file description holds a lock on byte @off. */
static int byte_taken(int fd, off_t off)
{
    struct flock fl = {
        .l_whence = SEEK_SET, .l_start = off, .l_len = 1, .l_type = F_WRLCK,
    };

    if (fcntl(fd, lock_cmd(true), &fl) < 0) {
        return -errno;
    }
    return fl.l_type != F_UNLCK;
}

static void masks(const struct bfile *f, unsigned *held, unsigned *unshared)
{
    *held = *unshared = 0;
    for (int i = 0; i < 4; i++) {
        if (f->held[i]) {
            *held |= 1u << i;
        }
        if (f->unshared[i]) {
            *unshared |= 1u << i;
        }
    }
}

/* Make the lock bytes of @f reflect @held and @unshared. */
static int apply_locks(struct bfile *f, unsigned held, unsigned unshared)
{
    int ret;

    for (int i = 0; i < 4; i++) {
        ret = lock_byte(f->fd, LOCK_PERM_BASE + i, held & (1u << i));
        if (ret < 0) {
            return ret;
        }
        ret = lock_byte(f->fd, LOCK_SHARED_BASE + i, unshared & (1u << i));
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Check that nobody else refuses to share what we hold (their 200+i) and
 * nobody else holds what we refuse to share (their 100+i).
 */
static int check_locks(struct bfile *f, unsigned held, unsigned unshared,
                       struct error **errp)
{
    for (int i = 0; i < 4; i++) {
        int r;

        if (held & (1u << i)) {
            r = byte_taken(f->fd, LOCK_SHARED_BASE + i);
            if (r) {
                error_setg(errp, "'%s': Failed to get \"%s\" lock", f->path, perm_names[i]);
                error_append_hint(errp, "Is another process using the image [%s]? (If a blockctl "
                                  "agent serves it, use --agent.)", f->path);
                return -EAGAIN;
            }
        }
        if (unshared & (1u << i)) {
            r = byte_taken(f->fd, LOCK_PERM_BASE + i);
            if (r) {
                error_setg(errp, "'%s': Failed to get shared \"%s\" lock", f->path,
                           perm_names[i]);
                error_append_hint(errp, "Is another process using the image [%s]? (If a blockctl "
                                  "agent serves it, use --agent.)", f->path);
                return -EAGAIN;
            }
        }
    }
    return 0;
}

/* Apply the current user set's locks; roll back to (old) on failure. */
static int relock(struct bfile *f, unsigned old_held, unsigned old_unshared,
                  struct error **errp)
{
    unsigned held, unshared;
    int ret;

    if (!locking_on) {
        return 0;
    }
    masks(f, &held, &unshared);
    ret = apply_locks(f, held, unshared);
    if (ret < 0) {
        if (ret == -ENOLCK || ret == -EOPNOTSUPP) {
            /* Filesystem without byte-range locks: as QEMU, go on. */
            return 0;
        }
        error_setg_errno(errp, -ret, "'%s': cannot lock", f->path);
        apply_locks(f, old_held, old_unshared);
        return ret;
    }
    ret = check_locks(f, held, unshared, errp);
    if (ret < 0) {
        apply_locks(f, old_held, old_unshared);
    }
    return ret;
}

static void add_user(struct bfile *f, unsigned perm, unsigned shared, int delta)
{
    for (int i = 0; i < 4; i++) {
        if (perm & (1u << i)) {
            f->held[i] += delta;
        }
        if (!(shared & (1u << i))) {
            f->unshared[i] += delta;
        }
    }
}

static bool needs_write(unsigned perm)
{
    return perm & (PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE);
}

/* Reopen @f's descriptor read-write in place (same fd number). */
static int upgrade_fd(struct bfile *f, struct error **errp)
{
    int fd = io_open(f->path, O_RDWR | ((f->cache & IO_CACHE_DIRECT) ? O_DIRECT : 0), 0);

    if (fd < 0) {
        error_setg_errno(errp, -fd, "cannot open '%s' for writing", f->path);
        return fd;
    }
    if (dup3(fd, f->fd, O_CLOEXEC) < 0) {
        int e = errno;
        io_close(fd);
        error_setg_errno(errp, e, "cannot reopen '%s'", f->path);
        return -e;
    }
    io_close(fd);
    f->writable = true;
    return 0;
}

int bfile_set_cache(struct bfile *f, unsigned mode, struct error **errp)
{
    unsigned want;
    int ret;

    if (!f->cache && !mode) {
        return 0;
    }
    pthread_mutex_lock(&files_lock);
    want = (f->cache | mode) & (IO_CACHE_DIRECT | IO_CACHE_WRITETHROUGH);
    if (f->users <= 1 || (f->cache & IO_CACHE_NO_FLUSH)) {
        want |= mode & IO_CACHE_NO_FLUSH;
    }
    ret = io_set_cache(f->fd, want);
    if (ret < 0) {
        if (ret == -EINVAL && (want & IO_CACHE_DIRECT)) {
            error_setg(errp, "cannot open '%s': filesystem does not support O_DIRECT", f->path);
        } else {
            error_setg_errno(errp, -ret, "cannot open '%s'", f->path);
        }
    } else {
        f->cache = want;
    }
    pthread_mutex_unlock(&files_lock);
    return ret;
}

struct bfile *bfile_open(const char *path, unsigned perm, unsigned shared,
                         struct error **errp)
{
    struct stat st;
    struct bfile *f = NULL;
    unsigned old_held = 0, old_unshared = 0;
    int fd;

    if (stat(path, &st) < 0) {
        error_setg_errno(errp, errno, "cannot open '%s'", path);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        error_setg(errp, "cannot open '%s': Is a directory", path);
        return NULL;
    }
    if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
        /* opening a FIFO would block until a writer comes */
        error_setg(errp, "cannot open '%s': not a regular file or block device", path);
        return NULL;
    }
    pthread_mutex_lock(&files_lock);
    for (size_t i = 0; i < nr_files; i++) {
        if (files[i]->dev == st.st_dev && files[i]->ino == st.st_ino) {
            f = files[i];
            break;
        }
    }
    if (f) {
        masks(f, &old_held, &old_unshared);
        if (needs_write(perm) && !f->writable && upgrade_fd(f, errp) < 0) {
            pthread_mutex_unlock(&files_lock);
            return NULL;
        }
        add_user(f, perm, shared, 1);
        if (relock(f, old_held, old_unshared, errp) < 0) {
            add_user(f, perm, shared, -1);
            pthread_mutex_unlock(&files_lock);
            return NULL;
        }
        f->users++;
        pthread_mutex_unlock(&files_lock);
        return f;
    }

    fd = io_open(path, needs_write(perm) ? O_RDWR : O_RDONLY, 0);
    if (fd < 0) {
        pthread_mutex_unlock(&files_lock);
        error_setg_errno(errp, -fd, "cannot open '%s'", path);
        return NULL;
    }
    if (fstat(fd, &st) < 0) {
        int e = errno;
        io_close(fd);
        pthread_mutex_unlock(&files_lock);
        error_setg_errno(errp, e, "cannot stat '%s'", path);
        return NULL;
    }
    f = xzalloc(sizeof(*f));
    f->fd = fd;
    f->path = xstrdup(path);
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->writable = needs_write(perm);
    f->is_blockdev = S_ISBLK(st.st_mode);
    add_user(f, perm, shared, 1);
    if (relock(f, 0, 0, errp) < 0) {
        io_close(fd);
        free(f->path);
        free(f);
        pthread_mutex_unlock(&files_lock);
        return NULL;
    }
    f->users = 1;
    files = xrealloc(files, (nr_files + 1) * sizeof(*files));
    files[nr_files++] = f;
    pthread_mutex_unlock(&files_lock);
    return f;
}

void bfile_close(struct bfile *f, unsigned perm, unsigned shared)
{
    unsigned old_held, old_unshared;

    if (!f) {
        return;
    }
    pthread_mutex_lock(&files_lock);
    masks(f, &old_held, &old_unshared);
    add_user(f, perm, shared, -1);
    if (--f->users > 0) {
        relock(f, old_held, old_unshared, NULL);
        pthread_mutex_unlock(&files_lock);
        return;
    }
    for (size_t i = 0; i < nr_files; i++) {
        if (files[i] == f) {
            files[i] = files[--nr_files];
            break;
        }
    }
    pthread_mutex_unlock(&files_lock);
    io_close(f->fd);
    free(f->path);
    free(f);
}

int bfile_set_perm(struct bfile *f, unsigned old_perm, unsigned old_shared,
                   unsigned perm, unsigned shared, struct error **errp)
{
    unsigned old_held, old_unshared;
    int ret;

    pthread_mutex_lock(&files_lock);
    masks(f, &old_held, &old_unshared);
    if (needs_write(perm) && !f->writable) {
        ret = upgrade_fd(f, errp);
        if (ret < 0) {
            pthread_mutex_unlock(&files_lock);
            return ret;
        }
    }
    add_user(f, old_perm, old_shared, -1);
    add_user(f, perm, shared, 1);
    ret = relock(f, old_held, old_unshared, errp);
    if (ret < 0) {
        add_user(f, perm, shared, -1);
        add_user(f, old_perm, old_shared, 1);
    }
    pthread_mutex_unlock(&files_lock);
    return ret;
}

int64_t bfile_size(struct bfile *f)
{
    struct stat st;

    if (f->is_blockdev) {
        uint64_t sz;
        if (ioctl(f->fd, BLKGETSIZE64, &sz) < 0) {
            return -errno;
        }
        return (int64_t)sz;
    }
    if (fstat(f->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
}

int64_t bfile_allocated(struct bfile *f)
{
    struct stat st;

    if (fstat(f->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}
