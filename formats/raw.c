/*
 * blockctl - raw images: plain files and block devices
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/format.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>

static const struct opt_desc raw_create_opts[] = {
    { "size", OPT_SIZE, "Virtual disk size" },
    { "preallocation", OPT_STRING, "Preallocation mode (allowed values: off, falloc, full)" },
    { NULL, 0, NULL },
};

static int raw_probe(const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    return 1;
}

static int write_zero_range(int fd, uint64_t off, uint64_t len)
{
    size_t bufsz = MIN(len, (uint64_t)1 << 20);
    void *zero = xzalloc(bufsz);
    int ret = 0;

    while (len) {
        size_t n = MIN(len, (uint64_t)bufsz);
        ret = io_pwrite(fd, zero, n, off);
        if (ret < 0) {
            break;
        }
        off += n;
        len -= n;
    }
    free(zero);
    return ret;
}

static int raw_check_create(const char *filename, const struct optlist *o,
                            struct error **errp)
{
    const char *prealloc = opts_get(o, "preallocation");
    uint64_t size = 0;

    if (opts_get_size(o, "size", &size, errp) < 0) {
        return -EINVAL;
    }
    if (size > INT64_MAX) {
        error_setg(errp, "'%s': the image size is too large for format 'raw'", filename);
        return -EFBIG;
    }
    if (prealloc && strcmp(prealloc, "off") && strcmp(prealloc, "falloc") &&
        strcmp(prealloc, "full")) {
        error_setg(errp, "'%s': unsupported preallocation mode '%s' for format 'raw' (valid: "
                   "off, falloc, full)", filename, prealloc);
        return -EINVAL;
    }
    return 0;
}

static int raw_create(const char *filename, const struct optlist *o, unsigned flags,
                      struct error **errp)
{
    const char *prealloc = opts_get(o, "preallocation");
    uint64_t size = 0;
    struct bfile *f;
    int ret;

    ret = raw_check_create(filename, o, errp);
    if (ret < 0) {
        return ret;
    }
    (void)opts_get_size(o, "size", &size, NULL);
    f = bdev_create_file(filename, flags, errp);
    if (!f) {
        return -EIO;
    }
    if (f->is_blockdev) {
        int64_t devsz = bfile_size(f);
        if (devsz >= 0 && (uint64_t)devsz < size) {
            error_setg(errp, "'%s': the device is smaller than %" PRIu64 " bytes", filename, size);
            ret = -ENOSPC;
            goto out;
        }
        ret = 0;
        goto out;
    }
    ret = io_ftruncate(f->fd, size);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot resize", filename);
        goto out;
    }
    if (prealloc && !strcmp(prealloc, "falloc") && size) {
        ret = io_fallocate(f->fd, 0, 0, size);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': cannot preallocate", filename);
            goto out;
        }
    } else if (prealloc && !strcmp(prealloc, "full") && size) {
        ret = write_zero_range(f->fd, 0, size);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': cannot preallocate", filename);
            goto out;
        }
    }
    ret = io_fsync(f->fd);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot sync", filename);
    }
out:
    bfile_close(f, BDEV_CREATE_PERM, 0);
    return ret;
}

static int raw_open(struct bdev *bd, unsigned flags, struct error **errp)
{
    int64_t size = bfile_size(bd->file);

    (void)flags;
    if (size < 0) {
        error_setg_errno(errp, -size, "'%s': cannot get size", bd->filename);
        return (int)size;
    }
    /* QEMU's block layer works in sectors: a file's tail reads as zeroes. */
    bd->size = bd->file->is_blockdev ? (uint64_t)size : ALIGN_UP((uint64_t)size, 512);
    return 0;
}

static int raw_close(struct bdev *bd, struct error **errp)
{
    int ret = 0;

    if (!bd->read_only && !(bd->flags & BDEV_O_UNORDERED)) {
        ret = io_fdatasync(bd->file->fd);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': cannot sync", bd->filename);
        }
    }
    return ret;
}

static int raw_reopen(struct bdev *bd, unsigned flags, struct error **errp)
{
    int ret = 0;

    if (!(flags & BDEV_O_RDWR) && !(bd->flags & BDEV_O_UNORDERED)) {
        /* what was written reaches the disk before we stop writing */
        ret = io_fdatasync(bd->file->fd);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "'%s': cannot sync", bd->filename);
        }
    }
    return ret;
}

static int raw_pread(struct bdev *bd, void *buf, size_t len, uint64_t off)
{
    ssize_t n = io_pread(bd->file->fd, buf, len, off);

    if (n < 0) {
        bdev_set_error(bd, "'%s': read error at offset %" PRIu64 ": %s", bd->filename, off,
                       strerror((int)-n));
        return (int)n;
    }
    if ((size_t)n < len) {
        /* The file shrank under us: read as zeroes, as QEMU does. */
        memset((char *)buf + n, 0, len - n);
    }
    return 0;
}

static int raw_pwrite(struct bdev *bd, const void *buf, size_t len, uint64_t off,
                      unsigned flags)
{
    int ret = io_pwrite(bd->file->fd, buf, len, off);

    if (ret == 0 && (flags & BDEV_REQ_FUA)) {
        ret = io_fdatasync(bd->file->fd);
    }
    if (ret < 0) {
        bdev_set_error(bd, "'%s': write error at offset %" PRIu64 ": %s", bd->filename, off,
                       strerror(-ret));
    }
    return ret;
}

static int raw_pwrite_zeroes(struct bdev *bd, uint64_t off, uint64_t len, unsigned flags)
{
    int fd = bd->file->fd;
    int ret;

    if (bd->file->is_blockdev) {
        uint64_t range[2] = { off, len };
        if (flags & BDEV_REQ_NO_FALLBACK) {
            return -ENOTSUP;
        }
        if (ioctl(fd, BLKZEROOUT, range) == 0) {
            return 0;
        }
        return -ENOTSUP;
    }
    if (flags & BDEV_REQ_MAY_UNMAP) {
        ret = io_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
        if (ret == 0) {
            goto done;
        }
    }
    ret = io_fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, len);
    if (ret == -EOPNOTSUPP || ret == -ENOSYS || ret == -EINVAL) {
        return -ENOTSUP;
    }
done:
    if (ret == 0 && (flags & BDEV_REQ_FUA)) {
        ret = io_fdatasync(fd);
    }
    return ret;
}

static int raw_discard(struct bdev *bd, uint64_t off, uint64_t len)
{
    int ret;

    if (bd->file->is_blockdev) {
        uint64_t range[2] = { off, len };
        return ioctl(bd->file->fd, BLKDISCARD, range) == 0 ? 0 : -ENOTSUP;
    }
    ret = io_fallocate(bd->file->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
    if (ret == -EOPNOTSUPP || ret == -ENOSYS) {
        return -ENOTSUP;
    }
    return ret;
}

static int raw_flush(struct bdev *bd)
{
    int ret = io_fdatasync(bd->file->fd);

    if (ret < 0) {
        bdev_set_error(bd, "'%s': flush failed: %s", bd->filename, strerror(-ret));
    }
    return ret;
}

static int raw_block_status(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum,
                            uint64_t *map, unsigned *status)
{
    int fd = bd->file->fd;
    off_t data, hole;

    *map = off;
    if (bd->file->is_blockdev) {
        goto all_data;
    }
    data = lseek(fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            /* Only a hole from here to the end of the file. */
            *pnum = len;
            *status = BDEV_BLOCK_ZERO | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
            return 0;
        }
        goto all_data;
    }
    if ((uint64_t)data > off) {
        *pnum = MIN(len, (uint64_t)data - off);
        *status = BDEV_BLOCK_ZERO | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
        return 0;
    }
    hole = lseek(fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off) {
        goto all_data;
    }
    *pnum = MIN(len, (uint64_t)hole - off);
    *status = BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
    return 0;

all_data:
    *pnum = len;
    *status = BDEV_BLOCK_DATA | BDEV_BLOCK_ALLOCATED | BDEV_BLOCK_OFFSET_VALID;
    return 0;
}

static int raw_truncate(struct bdev *bd, uint64_t size, struct error **errp)
{
    int ret;

    if (bd->file->is_blockdev) {
        error_setg(errp, "'%s': cannot resize a block device", bd->filename);
        return -ENOTSUP;
    }
    ret = io_ftruncate(bd->file->fd, size);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot resize", bd->filename);
        return ret;
    }
    bd->size = size;
    return 0;
}

static int raw_preallocate(struct bdev *bd, uint64_t start, uint64_t end,
                           enum bdev_prealloc mode, struct error **errp)
{
    int ret = 0;

    if (mode != BDEV_PREALLOC_FALLOC && mode != BDEV_PREALLOC_FULL) {
        error_setg(errp, "Unsupported preallocation mode: %s", bdev_prealloc_name(mode));
        return -ENOTSUP;
    }
    if (end <= start) {
        return 0;
    }
    ret = mode == BDEV_PREALLOC_FALLOC ? io_fallocate(bd->file->fd, 0, start, end - start)
                                       : write_zero_range(bd->file->fd, start, end - start);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "'%s': cannot preallocate", bd->filename);
    }
    return ret;
}

/* qemu-img measure -O raw: every byte of the virtual size is in the file. */
static int raw_measure(const struct optlist *o, struct bdev *in, struct measure_info *out,
                       struct error **errp)
{
    uint64_t size = 0;

    if (in) {
        size = in->size;
    } else if (opts_get_size(o, "size", &size, errp) < 0) {
        return -EINVAL;
    } else {
        size = ALIGN_UP(size, 512);
    }
    out->required = size;
    out->fully_allocated = size;
    out->has_bitmaps = false;
    out->bitmaps = 0;
    return 0;
}

const struct format_driver raw_driver = {
    .name = "raw",
    .create_opts = raw_create_opts,
    .probe = raw_probe,
    .create = raw_create,
    .check_create = raw_check_create,
    .open = raw_open,
    .close = raw_close,
    .reopen = raw_reopen,
    .truncate = raw_truncate,
    .preallocate = raw_preallocate,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .discard = raw_discard,
    .flush = raw_flush,
    .block_status = raw_block_status,
    .measure = raw_measure,
};
