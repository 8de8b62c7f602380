/*
 * blockctl - I/O layer with fault injection
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/io.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

enum io_op {
    OP_PREAD, OP_PWRITE, OP_FSYNC, OP_FDATASYNC, OP_FTRUNCATE, OP_FALLOCATE,
    OP_RENAME, OP_DIRSYNC, OP_OPEN, OP_UNLINK, OP__MAX
};

enum fault_action { FA_EIO, FA_ENOSPC, FA_SHORT, FA_TORN, FA_KILL };

struct fault_rule {
    unsigned ops;           /* bit mask of enum io_op */
    unsigned long nth;      /* 0: every call */
    bool and_later;
    enum fault_action action;
    char *glob;             /* NULL: any file */
    unsigned long count;    /* matching calls so far */
};

static pthread_mutex_t io_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t io_once = PTHREAD_ONCE_INIT;
static struct fault_rule *rules;
static size_t nr_rules;

/* Counting mode (BLOCKCTL_FAULT_COUNT): calls per operation, written out
 * at exit.  Set once in io_init, read without a lock afterwards. */
static const char *const op_names[OP__MAX] = {
    [OP_PREAD] = "pread", [OP_PWRITE] = "pwrite", [OP_FSYNC] = "fsync",
    [OP_FDATASYNC] = "fdatasync", [OP_FTRUNCATE] = "ftruncate",
    [OP_FALLOCATE] = "fallocate", [OP_RENAME] = "rename",
    [OP_DIRSYNC] = "dirsync", [OP_OPEN] = "open", [OP_UNLINK] = "unlink",
};
static char *count_path;
static unsigned long op_counts[OP__MAX];
static unsigned long faults_fired;
/* Where warnings about the environment go (io_set_warn_sink; none: dropped) */
static void (*warn_sink)(const char *msg);

void io_set_warn_sink(void (*sink)(const char *msg))
{
    warn_sink = sink;
}

static void io_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void io_warn(const char *fmt, ...)
{
    va_list ap;
    char *msg;

    if (!warn_sink) {
        return;
    }
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) >= 0) {
        warn_sink(msg);
        free(msg);
    }
    va_end(ap);
}

static unsigned long bounced;

/* What io_open and io_set_cache registered for each descriptor */
struct fd_info {
    char *name;
    unsigned cache;         /* IO_CACHE_* */
    size_t align;           /* O_DIRECT: the alignment it needs (else 1) */
};
static struct fd_info *fds;
static size_t nr_fds;

/*
 * O_DIRECT writes: an aligned one holds this shared, a read-modify-write
 * of a partial block exclusive, so that no write lands between its read
 * and its write of the block (QEMU serialises such requests the same way).
 */
static pthread_rwlock_t direct_lock = PTHREAD_RWLOCK_INITIALIZER;

static void parse_rules(const char *env)
{
    char *copy, *save = NULL, *tok;

    for (size_t i = 0; i < nr_rules; i++) {
        free(rules[i].glob);
    }
    free(rules);
    rules = NULL;
    nr_rules = 0;
    if (!env || !*env) {
        return;
    }
    copy = xstrdup(env);
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *f[4] = { NULL };
        char *p = tok;
        int n = 0;
        struct fault_rule r = { 0 };

        while (n < 4 && p) {
            f[n++] = p;
            p = (n < 4) ? strchr(p, ':') : NULL;
            if (p) {
                *p++ = '\0';
            }
        }
        if (n < 3) {
            io_warn("BLOCKCTL_FAULT: ignoring malformed rule '%s'", tok);
            continue;
        }
        if (!strcmp(f[0], "pread")) {
            r.ops = 1u << OP_PREAD;
        } else if (!strcmp(f[0], "pwrite")) {
            r.ops = 1u << OP_PWRITE;
        } else if (!strcmp(f[0], "fsync")) {
            r.ops = 1u << OP_FSYNC;
        } else if (!strcmp(f[0], "fdatasync")) {
            r.ops = 1u << OP_FDATASYNC;
        } else if (!strcmp(f[0], "sync")) {
            r.ops = (1u << OP_FSYNC) | (1u << OP_FDATASYNC);
        } else if (!strcmp(f[0], "ftruncate")) {
            r.ops = 1u << OP_FTRUNCATE;
        } else if (!strcmp(f[0], "fallocate")) {
            r.ops = 1u << OP_FALLOCATE;
        } else if (!strcmp(f[0], "rename")) {
            r.ops = 1u << OP_RENAME;
        } else if (!strcmp(f[0], "dirsync")) {
            r.ops = 1u << OP_DIRSYNC;
        } else if (!strcmp(f[0], "open")) {
            r.ops = 1u << OP_OPEN;
        } else if (!strcmp(f[0], "unlink")) {
            r.ops = 1u << OP_UNLINK;
        } else if (!strcmp(f[0], "any")) {
            r.ops = (1u << OP__MAX) - 1;
        } else {
            io_warn("BLOCKCTL_FAULT: unknown operation '%s'", f[0]);
            continue;
        }
        if (!strcmp(f[1], "*")) {
            r.nth = 0;
        } else {
            char *end;
            r.nth = strtoul(f[1], &end, 10);
            if (*end == '+') {
                r.and_later = true;
                end++;
            }
            if (*end || r.nth == 0) {
                io_warn("BLOCKCTL_FAULT: bad count '%s'", f[1]);
                continue;
            }
        }
        if (!strcmp(f[2], "eio")) {
            r.action = FA_EIO;
        } else if (!strcmp(f[2], "enospc")) {
            r.action = FA_ENOSPC;
        } else if (!strcmp(f[2], "short")) {
            r.action = FA_SHORT;
        } else if (!strcmp(f[2], "torn")) {
            r.action = FA_TORN;
        } else if (!strcmp(f[2], "kill")) {
            r.action = FA_KILL;
        } else {
            io_warn("BLOCKCTL_FAULT: unknown action '%s'", f[2]);
            continue;
        }
        r.glob = (n == 4 && *f[3]) ? xstrdup(f[3]) : NULL;
        rules = xrealloc(rules, (nr_rules + 1) * sizeof(*rules));
        rules[nr_rules++] = r;
    }
    free(copy);
}

/* At exit: append one "OP N" line per operation (the names BLOCKCTL_FAULT
 * takes, with "sync" and "any" as the sums it matches) to count_path. */
static void write_counts(void)
{
    unsigned long n[OP__MAX], any = 0;
    int fd;

    if (!count_path) {
        return;
    }
    for (int op = 0; op < OP__MAX; op++) {
        n[op] = __atomic_load_n(&op_counts[op], __ATOMIC_RELAXED);
        any += n[op];
    }
    /* not io_open: the count file is not an image, and not counted */
    fd = open(count_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        io_warn("BLOCKCTL_FAULT_COUNT: '%s': %s", count_path, strerror(errno));
        return;
    }
    for (int op = 0; op < OP__MAX; op++) {
        dprintf(fd, "%s %lu\n", op_names[op], n[op]);
    }
    if (dprintf(fd, "sync %lu\nany %lu\nfired %lu\nbounced %lu\n",
                n[OP_FSYNC] + n[OP_FDATASYNC], any,
                __atomic_load_n(&faults_fired, __ATOMIC_RELAXED),
                __atomic_load_n(&bounced, __ATOMIC_RELAXED)) < 0) {
        io_warn("BLOCKCTL_FAULT_COUNT: '%s': %s", count_path, strerror(errno));
    }
    close(fd);
}

/*
 * Write log (BLOCKCTL_IOLOG): one record per call that changes a file, in
 * the order they completed (see lib/io.h).  iolog_fd is set once in
 * io_init; while it is -1 nothing here runs and no lock is taken.
 */
enum iolog_type {
    IOLOG_OPEN = 1, IOLOG_WRITE, IOLOG_FSYNC, IOLOG_FDATASYNC, IOLOG_FTRUNCATE,
    IOLOG_FALLOCATE, IOLOG_RENAME, IOLOG_DIRSYNC, IOLOG_UNLINK
};

struct iolog_rec {
    uint32_t magic;         /* IOLOG_MAGIC */
    uint32_t type;          /* enum iolog_type */
    uint64_t seq;           /* 1, 2, ...: the order of the records */
    uint64_t dev, ino;      /* the file (rename: the file renamed; unlink: the one removed) */
    uint64_t off, len;      /* write, fallocate: the range; ftruncate: off = the size;
                             * open: off = 1 when the call created the file */
    uint64_t aux;           /* sync, dirsync: the seq before the call began (the
                             * records up to it are covered); open: the flags;
                             * fallocate: the mode; rename: the inode replaced (0: none);
                             * unlink: the file's permission bits */
    uint64_t plen;          /* payload that follows: write: the data; open, dirsync,
                             * unlink: the absolute path; rename: FROM NUL TO NUL */
};

#define IOLOG_MAGIC 0x4c4f4942u     /* "BIOL" */

static int iolog_fd = -1;
static pthread_mutex_t iolog_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t iolog_seq;

static void iolog_init(const char *path)
{
    /* not io_open: the log is not an image, and not counted */
    iolog_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (iolog_fd < 0) {
        io_warn("BLOCKCTL_IOLOG: '%s': %s", path, strerror(errno));
    }
}

/* The seq of the last record so far (a sync covers the records up to it). */
static uint64_t iolog_mark(void)
{
    return __atomic_load_n(&iolog_seq, __ATOMIC_SEQ_CST);
}

/* Append one record (@r without magic, seq and plen) and its payload. */
static void iolog_put(struct iolog_rec *r, const void *p1, size_t n1, const void *p2, size_t n2)
{
    struct iovec iov[3] = {
        { r, sizeof(*r) }, { (void *)p1, n1 }, { (void *)p2, n2 },
    };
    size_t want = sizeof(*r) + n1 + n2, done = 0;
    int i = 0;

    r->magic = IOLOG_MAGIC;
    r->plen = n1 + n2;
    pthread_mutex_lock(&iolog_lock);
    r->seq = __atomic_add_fetch(&iolog_seq, 1, __ATOMIC_SEQ_CST);
    while (done < want) {
        ssize_t w = writev(iolog_fd, iov + i, 3 - i);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            io_warn("BLOCKCTL_IOLOG: %s", w < 0 ? strerror(errno) : "short write");
            break;
        }
        done += w;
        /* (a partial writev: go on from where it stopped) */
        while (i < 3 && (size_t)w >= iov[i].iov_len) {
            w -= iov[i].iov_len;
            iov[i++].iov_len = 0;
        }
        if (i < 3) {
            iov[i].iov_base = (char *)iov[i].iov_base + w;
            iov[i].iov_len -= w;
        }
    }
    pthread_mutex_unlock(&iolog_lock);
}

static void iolog_fd_rec(int type, int fd, uint64_t off, uint64_t len, uint64_t aux,
                         const void *data, size_t n)
{
    struct iolog_rec r = { .type = type, .off = off, .len = len, .aux = aux };
    struct stat st;

    if (fstat(fd, &st) == 0) {
        r.dev = st.st_dev;
        r.ino = st.st_ino;
    }
    iolog_put(&r, data, n, NULL, 0);
}

/* @path made absolute (allocated) */
static char *iolog_abs(const char *path)
{
    char *cwd, *abs;

    if (path[0] == '/' || !(cwd = getcwd(NULL, 0))) {
        return xstrdup(path);
    }
    abs = xasprintf("%s/%s", cwd, path);
    free(cwd);
    return abs;
}

static void iolog_path_rec(int type, const char *path, uint64_t off, uint64_t aux)
{
    struct iolog_rec r = { .type = type, .off = off, .aux = aux };
    char *abs = iolog_abs(path);
    struct stat st;

    if (stat(path, &st) == 0) {
        r.dev = st.st_dev;
        r.ino = st.st_ino;
    }
    iolog_put(&r, abs, strlen(abs) + 1, NULL, 0);
    free(abs);
}

/* An unlink of @path, which was the file @gone (lstat before the call). */
static void iolog_unlink(const char *path, const struct stat *gone)
{
    struct iolog_rec r = { .type = IOLOG_UNLINK, .dev = gone->st_dev, .ino = gone->st_ino,
                           .aux = gone->st_mode & 07777 };
    char *abs = iolog_abs(path);

    iolog_put(&r, abs, strlen(abs) + 1, NULL, 0);
    free(abs);
}

static void iolog_rename(const char *from, const char *to, const struct stat *moved,
                         uint64_t replaced)
{
    struct iolog_rec r = { .type = IOLOG_RENAME, .dev = moved->st_dev, .ino = moved->st_ino,
                           .aux = replaced };
    char *a = iolog_abs(from), *b = iolog_abs(to);

    iolog_put(&r, a, strlen(a) + 1, b, strlen(b) + 1);
    free(a);
    free(b);
}

static void io_init(void)
{
    const char *cp = getenv("BLOCKCTL_FAULT_COUNT");
    const char *lp = getenv("BLOCKCTL_IOLOG");

    parse_rules(getenv("BLOCKCTL_FAULT"));
    if (cp && *cp) {
        count_path = xstrdup(cp);
        atexit(write_counts);
    }
    if (lp && *lp) {
        iolog_init(lp);
    }
}

void io_fault_reload(void)
{
    pthread_once(&io_once, io_init);
    pthread_mutex_lock(&io_lock);
    parse_rules(getenv("BLOCKCTL_FAULT"));
    pthread_mutex_unlock(&io_lock);
}

size_t io_fault_set(const char *spec, unsigned long *counts, size_t max)
{
    size_t n;

    pthread_once(&io_once, io_init);
    pthread_mutex_lock(&io_lock);
    n = nr_rules;
    for (size_t i = 0; i < n && i < max; i++) {
        counts[i] = rules[i].count;
    }
    parse_rules(spec);
    pthread_mutex_unlock(&io_lock);
    return n;
}

static bool name_matches(const char *glob, const char *path)
{
    const char *base;

    if (!path) {
        return false;
    }
    if (fnmatch(glob, path, 0) == 0) {
        return true;
    }
    base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return fnmatch(glob, base, 0) == 0;
}

/*
 * Decide whether this call fails.  Returns -1 for no fault, otherwise the
 * action to take.  The file is @path, or when NULL the one open as @fd
 * (looked up only when a rule names files: without rules, no lock).
 */
static int fault_check(enum io_op op, int fd, const char *path)
{
    int act = -1;

    pthread_once(&io_once, io_init);
    if (count_path) {
        __atomic_add_fetch(&op_counts[op], 1, __ATOMIC_RELAXED);
    }
    if (!nr_rules) {
        return -1;
    }
    pthread_mutex_lock(&io_lock);
    if (!path) {
        /* (io_lock held: not fd_get) */
        path = fd >= 0 && (size_t)fd < nr_fds && fds[fd].name ? fds[fd].name : "(unnamed)";
    }
    for (size_t i = 0; i < nr_rules; i++) {
        struct fault_rule *r = &rules[i];

        if (!(r->ops & (1u << op))) {
            continue;
        }
        if (r->glob && !name_matches(r->glob, path)) {
            continue;
        }
        r->count++;
        if (r->nth == 0 || r->count == r->nth || (r->and_later && r->count > r->nth)) {
            act = r->action;
            break;
        }
    }
    pthread_mutex_unlock(&io_lock);
    if (act >= 0 && count_path) {
        __atomic_add_fetch(&faults_fired, 1, __ATOMIC_RELAXED);
    }
    if (act == FA_KILL) {
        raise(SIGKILL);
    }
    return act;
}

static int action_errno(int act)
{
    return act == FA_EIO ? EIO : ENOSPC;
}

/* For calls that transfer nothing: torn = killed, short = ENOSPC. */
static int simple_fault(int act)
{
    if (act == FA_TORN) {
        raise(SIGKILL);
    }
    return -action_errno(act);
}

static void set_name(int fd, const char *path)
{
    pthread_mutex_lock(&io_lock);
    if ((size_t)fd >= nr_fds) {
        size_t n = MAX((size_t)fd + 1, nr_fds * 2);
        fds = xrealloc(fds, n * sizeof(*fds));
        memset(fds + nr_fds, 0, (n - nr_fds) * sizeof(*fds));
        nr_fds = n;
    }
    free(fds[fd].name);
    fds[fd].name = path ? xstrdup(path) : NULL;
    fds[fd].cache = 0;
    fds[fd].align = 1;
    pthread_mutex_unlock(&io_lock);
}

/* @fd's registration (name never NULL; cache 0 and align 1 if unknown) */
static struct fd_info fd_get(int fd)
{
    struct fd_info i = { NULL, 0, 1 };

    pthread_mutex_lock(&io_lock);
    if (fd >= 0 && (size_t)fd < nr_fds) {
        i = fds[fd];
    }
    pthread_mutex_unlock(&io_lock);
    if (!i.name) {
        i.name = "(unnamed)";
    }
    if (!i.align) {
        i.align = 1;
    }
    return i;
}

const char *io_name(int fd)
{
    return fd_get(fd).name;
}

/* The alignment O_DIRECT needs on @fd: the device's logical block size,
 * what statx says the filesystem needs, or 4096 when it says nothing. */
static size_t direct_align(int fd)
{
    struct stat st;
    struct statx stx;
    size_t a = 0;

    if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        int ss;
        if (ioctl(fd, BLKSSZGET, &ss) == 0 && ss > 0) {
            a = (size_t)ss;
        }
    } else if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
               (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
        a = MAX(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
    }
    if (!a || (a & (a - 1)) || a > 65536) {
        a = 4096;
    }
    return MAX(a, (size_t)512);
}

int io_set_cache(int fd, unsigned mode)
{
    int fl = fcntl(fd, F_GETFL);
    size_t align = 1;

    if (fl < 0) {
        return -errno;
    }
    if (fl & O_DIRECT) {
        mode |= IO_CACHE_DIRECT;
    } else if (mode & IO_CACHE_DIRECT) {
        if (fcntl(fd, F_SETFL, fl | O_DIRECT) < 0) {
            return -errno;
        }
    }
    if (mode & IO_CACHE_DIRECT) {
        align = direct_align(fd);
    }
    pthread_mutex_lock(&io_lock);
    if (fd >= 0 && (size_t)fd < nr_fds && fds[fd].name) {
        fds[fd].cache = mode;
        fds[fd].align = align;
    }
    pthread_mutex_unlock(&io_lock);
    return 0;
}

size_t io_align(int fd)
{
    return fd_get(fd).align;
}

int io_open(const char *path, int flags, mode_t mode)
{
    int act = fault_check(OP_OPEN, -1, path);
    bool existed = true;
    struct stat st;
    int fd;

    if (act >= 0) {
        return simple_fault(act);
    }
    if (iolog_fd >= 0 && (flags & O_CREAT)) {
        existed = stat(path, &st) == 0;
    }
    do {
        fd = open(path, flags | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        return -errno;
    }
    set_name(fd, path);
    if (iolog_fd >= 0 && (!existed || (flags & (O_TRUNC | O_ACCMODE)))) {
        iolog_path_rec(IOLOG_OPEN, path, !existed, (uint64_t)flags);
    }
    return fd;
}

int io_close(int fd)
{
    set_name(fd, NULL);
    if (close(fd) < 0 && errno != EINTR) {
        return -errno;
    }
    return 0;
}

/*
 * pread(2) until @len bytes, the end of the file or an error.  With
 * O_DIRECT (@align > 1) a read that stops at an unaligned position has
 * met the end of the file (a further one would fail with EINVAL).
 */
static ssize_t read_full(int fd, void *buf, size_t len, uint64_t off, size_t align)
{
    size_t done = 0;

    while (done < len) {
        ssize_t r = pread(fd, (char *)buf + done, len - done, off + done);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            break;
        }
        done += r;
        if (align > 1 && !IS_ALIGNED(off + done, align)) {
            break;
        }
    }
    return (ssize_t)done;
}

static int write_full(int fd, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;

    while (done < len) {
        ssize_t r = pwrite(fd, (const char *)buf + done, len - done, off + done);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            return -ENOSPC;
        }
        done += r;
    }
    return 0;
}

static bool direct_ok(const void *buf, size_t len, uint64_t off, size_t align)
{
    return IS_ALIGNED((uintptr_t)buf, align) && IS_ALIGNED(len, align) &&
           IS_ALIGNED(off, align);
}

/* Largest aligned window a bounced request goes through at once */
#define BOUNCE_MAX ((size_t)1 << 20)

/* A bounce buffer for @len bytes at some offset (freed by the caller). */
static uint8_t *bounce_alloc(size_t len, size_t align)
{
    __atomic_add_fetch(&bounced, 1, __ATOMIC_RELAXED);
    return xmemalign(MAX(align, (size_t)4096), MIN(ALIGN_UP(len, align) + align, BOUNCE_MAX));
}

/*
 * An O_DIRECT request that is not aligned goes through an aligned buffer
 * covering the aligned window around it, at most BOUNCE_MAX at a time.
 * Reads: bytes read (fewer at the end of the file) or -errno.
 */
static ssize_t bounce_read(int fd, void *buf, size_t len, uint64_t off, size_t align)
{
    uint8_t *b = bounce_alloc(len, align);
    size_t done = 0;

    while (done < len) {
        uint64_t pos = off + done, ws = ALIGN_DOWN(pos, (uint64_t)align);
        size_t piece = MIN(len - done, BOUNCE_MAX - (size_t)(pos - ws));
        uint64_t we = ALIGN_UP(pos + piece, (uint64_t)align);
        ssize_t r = read_full(fd, b, we - ws, ws, align);
        size_t got;

        if (r < 0) {
            free(b);
            return r;
        }
        got = (uint64_t)r > pos - ws ? MIN((size_t)r - (size_t)(pos - ws), piece) : 0;
        memcpy((char *)buf + done, b + (pos - ws), got);
        done += got;
        if (got < piece) {
            break;
        }
    }
    free(b);
    return (ssize_t)done;
}

/*
 * Writes: a partial first or last block is read, changed and written
 * whole (callers hold direct_lock exclusively).  A window that ran past
 * the end of the file is cut back, so the file ends where it would have.
 */
static int bounce_write(int fd, const void *buf, size_t len, uint64_t off, size_t align)
{
    uint8_t *b = bounce_alloc(len, align);
    size_t done = 0;
    int ret = 0;

    while (done < len && ret == 0) {
        uint64_t pos = off + done, ws = ALIGN_DOWN(pos, (uint64_t)align);
        size_t piece = MIN(len - done, BOUNCE_MAX - (size_t)(pos - ws));
        uint64_t we = ALIGN_UP(pos + piece, (uint64_t)align);
        size_t win = (size_t)(we - ws);
        bool partial = pos != ws || pos + piece != we;
        ssize_t r = (ssize_t)win;

        if (partial) {
            r = read_full(fd, b, win, ws, align);
            if (r < 0) {
                ret = (int)r;
                break;
            }
            memset(b + r, 0, win - (size_t)r);
        }
        memcpy(b + (pos - ws), (const char *)buf + done, piece);
        ret = write_full(fd, b, win, ws);
        if (ret == 0 && (size_t)r < win && we > pos + piece) {
            /* the file ended inside the window: end it where it would */
            uint64_t end = MAX(ws + (uint64_t)r, pos + piece);
            while (ftruncate(fd, (off_t)end) < 0) {
                if (errno != EINTR) {
                    ret = -errno;
                    break;
                }
            }
        }
        done += piece;
    }
    free(b);
    return ret;
}

ssize_t io_pread(int fd, void *buf, size_t len, uint64_t off)
{
    struct fd_info fi = fd_get(fd);
    int act = fault_check(OP_PREAD, fd, fi.name);
    ssize_t r;

    if (act == FA_EIO || act == FA_ENOSPC) {
        return -action_errno(act);
    }
    if (act == FA_SHORT || act == FA_TORN) {
        len /= 2;
    }
    if (fi.align > 1 && !direct_ok(buf, len, off, fi.align)) {
        r = bounce_read(fd, buf, len, off, fi.align);
    } else {
        r = read_full(fd, buf, len, off, fi.align);
    }
    if (r < 0) {
        return r;
    }
    if (act == FA_TORN) {
        raise(SIGKILL);
    }
    if (act == FA_SHORT) {
        return -EIO;
    }
    return r;
}

int io_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    struct fd_info fi = fd_get(fd);
    int act = fault_check(OP_PWRITE, fd, fi.name);
    size_t want = len;
    int ret;

    if (act == FA_EIO || act == FA_ENOSPC) {
        return -action_errno(act);
    }
    if (act == FA_SHORT || act == FA_TORN) {
        /* Tear at a sector boundary when the write spans several. */
        want = len / 2;
        if (want >= 512) {
            want &= ~(size_t)511;
        }
    }
    if (fi.align > 1) {
        bool ok = direct_ok(buf, want, off, fi.align);
        if (ok) {
            pthread_rwlock_rdlock(&direct_lock);
        } else {
            pthread_rwlock_wrlock(&direct_lock);
        }
        ret = ok ? write_full(fd, buf, want, off) : bounce_write(fd, buf, want, off, fi.align);
        pthread_rwlock_unlock(&direct_lock);
    } else {
        ret = write_full(fd, buf, want, off);
    }
    if (ret < 0) {
        return ret;
    }
    if (iolog_fd >= 0 && want) {
        iolog_fd_rec(IOLOG_WRITE, fd, off, want, 0, buf, want);
    }
    if (act == FA_TORN) {
        raise(SIGKILL);
    }
    if (act == FA_SHORT) {
        return -ENOSPC;
    }
    if (fi.cache & IO_CACHE_WRITETHROUGH) {
        return io_fdatasync(fd);
    }
    return 0;
}

int io_fsync(int fd)
{
    int act;
    uint64_t mark = 0;

    if (fd_get(fd).cache & IO_CACHE_NO_FLUSH) {
        return 0;
    }
    act = fault_check(OP_FSYNC, fd, NULL);

    if (act >= 0) {
        return simple_fault(act);
    }
    if (iolog_fd >= 0) {
        mark = iolog_mark();
    }
    if (fsync(fd) < 0) {
        return -errno;
    }
    if (iolog_fd >= 0) {
        iolog_fd_rec(IOLOG_FSYNC, fd, 0, 0, mark, NULL, 0);
    }
    return 0;
}

int io_fdatasync(int fd)
{
    int act;
    uint64_t mark = 0;

    if (fd_get(fd).cache & IO_CACHE_NO_FLUSH) {
        return 0;
    }
    act = fault_check(OP_FDATASYNC, fd, NULL);

    if (act >= 0) {
        return simple_fault(act);
    }
    if (iolog_fd >= 0) {
        mark = iolog_mark();
    }
    if (fdatasync(fd) < 0) {
        return -errno;
    }
    if (iolog_fd >= 0) {
        iolog_fd_rec(IOLOG_FDATASYNC, fd, 0, 0, mark, NULL, 0);
    }
    return 0;
}

int io_ftruncate(int fd, uint64_t len)
{
    int act = fault_check(OP_FTRUNCATE, fd, NULL);

    if (act >= 0) {
        return simple_fault(act);
    }
    if (len > INT64_MAX) {
        return -EFBIG;
    }
    while (ftruncate(fd, (off_t)len) < 0) {
        if (errno != EINTR) {
            return -errno;
        }
    }
    if (iolog_fd >= 0) {
        iolog_fd_rec(IOLOG_FTRUNCATE, fd, len, 0, 0, NULL, 0);
    }
    return 0;
}

int io_fallocate(int fd, int mode, uint64_t off, uint64_t len)
{
    int act = fault_check(OP_FALLOCATE, fd, NULL);

    if (act >= 0) {
        return simple_fault(act);
    }
    while (fallocate(fd, mode, (off_t)off, (off_t)len) < 0) {
        if (errno != EINTR) {
            return -errno;
        }
    }
    if (iolog_fd >= 0) {
        iolog_fd_rec(IOLOG_FALLOCATE, fd, off, len, (uint64_t)mode, NULL, 0);
    }
    if (fd_get(fd).cache & IO_CACHE_WRITETHROUGH) {
        return io_fdatasync(fd);
    }
    return 0;
}

int io_rename(const char *from, const char *to)
{
    int act = fault_check(OP_RENAME, -1, to);
    struct stat moved, old;
    uint64_t replaced = 0;

    if (act >= 0) {
        return simple_fault(act);
    }
    if (iolog_fd >= 0) {
        if (lstat(from, &moved) < 0) {
            memset(&moved, 0, sizeof(moved));
        }
        replaced = lstat(to, &old) == 0 ? old.st_ino : 0;
    }
    if (rename(from, to) < 0) {
        return -errno;
    }
    if (iolog_fd >= 0) {
        iolog_rename(from, to, &moved, replaced);
    }
    return 0;
}

int io_rename_noreplace(const char *from, const char *to)
{
    int act = fault_check(OP_RENAME, -1, to);
    struct stat st, moved;

    if (act >= 0) {
        return simple_fault(act);
    }
    if (iolog_fd >= 0 && lstat(from, &moved) < 0) {
        memset(&moved, 0, sizeof(moved));
    }
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) < 0) {
        if (errno != EINVAL && errno != ENOSYS) {
            return -errno;
        }
        /* a filesystem without RENAME_NOREPLACE: check, then rename */
        if (stat(to, &st) == 0) {
            return -EEXIST;
        }
        if (rename(from, to) < 0) {
            return -errno;
        }
    }
    if (iolog_fd >= 0) {
        iolog_rename(from, to, &moved, 0);
    }
    return 0;
}

int io_unlink(const char *path)
{
    int act = fault_check(OP_UNLINK, -1, path);
    struct stat gone;

    if (act >= 0) {
        return simple_fault(act);
    }
    if (iolog_fd >= 0 && lstat(path, &gone) < 0) {
        memset(&gone, 0, sizeof(gone));
    }
    if (unlink(path) < 0) {
        return -errno;
    }
    if (iolog_fd >= 0) {
        iolog_unlink(path, &gone);
    }
    return 0;
}

int io_dirsync(const char *path)
{
    char *copy = xstrdup(path);
    const char *dir = dirname(copy);
    int act = fault_check(OP_DIRSYNC, -1, path);
    uint64_t mark;
    int fd, ret = 0;

    if (act >= 0) {
        free(copy);
        return simple_fault(act);
    }
    mark = iolog_fd >= 0 ? iolog_mark() : 0;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        ret = -errno;
    } else {
        if (fsync(fd) < 0 && errno != EINVAL) {
            ret = -errno;
        }
        close(fd);
    }
    if (iolog_fd >= 0 && !ret) {
        iolog_path_rec(IOLOG_DIRSYNC, dir, 0, mark);
    }
    free(copy);
    return ret;
}
