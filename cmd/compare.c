/*
 * blockctl compare - compare the guest-visible contents of two images
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Ranges that read as zero on both sides (by block status) are skipped;
 * where only one side has data, that side is read and checked for zeroes;
 * elsewhere both are read, the second image by a helper thread while the
 * first is read here.
 */
#include "lib/compiler.h"

#include <argp.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

/* qemu-img compare's exit codes */
enum {
    CMP_SAME = 0,
    CMP_DIFFERENT = 1,
    CMP_OPEN_ERROR = 2,
    CMP_STATUS_ERROR = 3,
    CMP_READ_ERROR = 4,
};

#define CMP_CHUNK (4u << 20)

struct compare_args {
    struct img_opts img;     /* -f (FILE1's format), -U, -q, -T */
    const char *fmt2;
    const char *file1, *file2;
    bool strict, progress;
};

enum { OPT_A_FORMAT = 0x100 };

static const struct argp_option options[] = {
    { "b-format", 'F', "FMT", 0, "Format of FILE2 (-f: of FILE1); probed when omitted", 0 },
    { "a-format", OPT_A_FORMAT, "FMT", OPTION_HIDDEN, "Same as -f", 0 },
    { "strict", 's', NULL, 0, "Strict: sizes and allocation must match too", 0 },
    { "progress", 'p', NULL, 0, "Show progress", 0 },
    { 0 }
};

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct compare_args *a = state->input;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case OPT_A_FORMAT:
        a->img.format = parse_format_arg(arg, "-f", state);
        break;
    case 'F':
        a->fmt2 = parse_format_arg(arg, "-F", state);
        break;
    case 's':
        a->strict = true;
        break;
    case 'p':
        a->progress = true;
        break;
    case ARGP_KEY_ARG:
        if (!a->file1) {
            a->file1 = arg;
        } else if (!a->file2) {
            a->file2 = arg;
        } else {
            argp_error(state, "unexpected argument '%s'", arg);
        }
        break;
    case ARGP_KEY_END:
        if (!a->file2) {
            argp_error(state, "two image file names are needed");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_compare */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { &tls_opts_argp, 0, NULL, 0 }, { 0 } };

static const struct argp compare_argp = {
    options, parse_opt, "FILE1 FILE2",
    "Compare the contents that two disk images show a guest.\v"
    "Exit status: 0 identical, 1 different, 2 error opening an image, 3 error getting "
    "the allocation, 4 read error, 64 usage error.",
    children, NULL, NULL,
};

/* A helper thread that reads from one image on request. */
struct reader {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct bdev *bd;
    void *buf;
    size_t len;
    uint64_t off;
    bool pending, done, quit;
    int ret;
};

static void *reader_main(void *opaque)
{
    struct reader *r = opaque;

    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->pending && !r->quit) {
            pthread_cond_wait(&r->cond, &r->lock);
        }
        if (r->quit) {
            break;
        }
        pthread_mutex_unlock(&r->lock);
        int ret = bdev_pread(r->bd, r->buf, r->len, r->off);
        pthread_mutex_lock(&r->lock);
        r->ret = ret;
        r->pending = false;
        r->done = true;
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static void reader_submit(struct reader *r, void *buf, size_t len, uint64_t off)
{
    pthread_mutex_lock(&r->lock);
    r->buf = buf;
    r->len = len;
    r->off = off;
    r->done = false;
    r->pending = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static int reader_wait(struct reader *r)
{
    int ret;

    pthread_mutex_lock(&r->lock);
    while (!r->done) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    ret = r->ret;
    pthread_mutex_unlock(&r->lock);
    return ret;
}

/* Offset of the first differing 512-byte sector, as qemu-img reports it. */
static uint64_t first_diff(const uint8_t *a, const uint8_t *b, size_t len, uint64_t base)
{
    size_t i = 0;

    while (i + 512 <= len && !memcmp(a + i, b + i, 512)) {
        i += 512;
    }
    return base + i;
}

static uint64_t first_nonzero(const uint8_t *a, size_t len, uint64_t base)
{
    size_t i = 0;

    while (i + 512 <= len && buffer_is_zero(a + i, 512)) {
        i += 512;
    }
    return base + i;
}

/* Check that [off, end) of @bd reads as zeroes; returns CMP_* */
static int check_zero_tail(struct bdev *bd, uint64_t off, uint64_t end, uint8_t *buf,
                           bool quiet)
{
    while (off < end) {
        struct bdev_map m;
        int ret = bdev_block_status_above(bd, NULL, off, end - off, &m);
        uint64_t n;

        if (ret < 0) {
            bdev_report_io_error(bd, "cannot get the block status", ret);
            return CMP_STATUS_ERROR;
        }
        n = MIN(m.len, (uint64_t)CMP_CHUNK);
        if (!(m.status & BDEV_BLOCK_ZERO)) {
            ret = bdev_pread(bd, buf, n, off);
            if (ret < 0) {
                bdev_report_io_error(bd, "cannot read", ret);
                return CMP_READ_ERROR;
            }
            if (!buffer_is_zero(buf, n)) {
                if (!quiet) {
                    printf("Content mismatch at offset %" PRIu64 "!\n",
                           first_nonzero(buf, n, off));
                }
                return CMP_DIFFERENT;
            }
        }
        off += n;
    }
    return CMP_SAME;
}

/*
 * What strict mode compares: the status flags as qemu-img sees them,
 * including "this extent reaches the end of the image".
 */
static unsigned strict_status(const struct bdev_map *m)
{
    unsigned st = m->status & (BDEV_BLOCK_DATA | BDEV_BLOCK_ZERO | BDEV_BLOCK_ALLOCATED |
                               BDEV_BLOCK_OFFSET_VALID | BDEV_BLOCK_COMPRESSED);
    if (m->past_end) {
        /* QEMU: zeroes past a shorter backing image count as allocated */
        st |= BDEV_BLOCK_ALLOCATED;
    }
    if (m->eof) {
        st |= BDEV_BLOCK_EOF;
    }
    return st;
}

int cmd_compare(int argc, char **argv)
{
    struct compare_args a = { 0 };
    struct error *err = NULL;
    struct bdev *b1 = NULL, *b2 = NULL;
    struct reader rd = { 0 };
    uint8_t *buf1 = NULL, *buf2 = NULL;
    uint64_t off = 0, common, total;
    unsigned flags;
    int ret = CMP_SAME;
    bool thread = false;

    children[0].argp = img_opts_argp(IMGOPT_FORMAT | IMGOPT_SHARE | IMGOPT_QUIET |
                                     IMGOPT_SRC_CACHE);
    argp_parse(&compare_argp, argc, argv, 0, NULL, &a);
    flags = (a.img.force_share ? BDEV_O_FORCE_SHARE : 0) | a.img.src_cache;
    b1 = bdev_open(a.file1, a.img.format, flags, &err);
    if (!b1) {
        report(err);
        return CMP_OPEN_ERROR;
    }
    b2 = bdev_open(a.file2, a.fmt2, flags, &err);
    if (!b2) {
        report(err);
        bdev_unref(b1);
        return CMP_OPEN_ERROR;
    }
    if (b1->size != b2->size) {
        if (a.strict) {
            if (!a.img.quiet) {
                printf("Strict mode: Image size mismatch!\n");
            }
            ret = CMP_DIFFERENT;
            goto out;
        }
    }
    common = MIN(b1->size, b2->size);
    total = MAX(b1->size, b2->size);
    buf1 = xmemalign(4096, CMP_CHUNK);
    buf2 = xmemalign(4096, CMP_CHUNK);
    rd.bd = b2;
    pthread_mutex_init(&rd.lock, NULL);
    pthread_cond_init(&rd.cond, NULL);
    if (pthread_create(&rd.thread, NULL, reader_main, &rd) == 0) {
        thread = true;
    }

    while (off < common) {
        struct bdev_map m1, m2;
        uint64_t n;
        bool z1, z2;
        int r;

        if (a.progress && !a.img.quiet) {
            progress_print(total ? off * 100.0 / total : 100.0);
        }
        r = bdev_block_status_above(b1, NULL, off, common - off, &m1);
        if (r == 0) {
            r = bdev_block_status_above(b2, NULL, off, common - off, &m2);
        }
        if (r < 0) {
            char *d1 = bdev_last_error(b1);
            bdev_report_io_error(d1 ? b1 : b2, "cannot get the block status", r);
            free(d1);
            ret = CMP_STATUS_ERROR;
            goto out;
        }
        n = MIN(MIN(m1.len, m2.len), (uint64_t)CMP_CHUNK);
        if (a.strict && strict_status(&m1) != strict_status(&m2)) {
            if (!a.img.quiet) {
                printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", off);
            }
            ret = CMP_DIFFERENT;
            goto out;
        }
        z1 = m1.status & BDEV_BLOCK_ZERO;
        z2 = m2.status & BDEV_BLOCK_ZERO;
        if (z1 && z2) {
            off += n;
            continue;
        }
        if (z1 || z2) {
            struct bdev *d = z1 ? b2 : b1;
            r = bdev_pread(d, buf1, n, off);
            if (r < 0) {
                bdev_report_io_error(d, "cannot read", r);
                ret = CMP_READ_ERROR;
                goto out;
            }
            if (!buffer_is_zero(buf1, n)) {
                if (!a.img.quiet) {
                    printf("Content mismatch at offset %" PRIu64 "!\n",
                           first_nonzero(buf1, n, off));
                }
                ret = CMP_DIFFERENT;
                goto out;
            }
            off += n;
            continue;
        }
        if (thread) {
            reader_submit(&rd, buf2, n, off);
            r = bdev_pread(b1, buf1, n, off);
            int r2 = reader_wait(&rd);
            if (r < 0) {
                bdev_report_io_error(b1, "cannot read", r);
                ret = CMP_READ_ERROR;
                goto out;
            }
            if (r2 < 0) {
                bdev_report_io_error(b2, "cannot read", r2);
                ret = CMP_READ_ERROR;
                goto out;
            }
        } else {
            r = bdev_pread(b1, buf1, n, off);
            if (r == 0) {
                r = bdev_pread(b2, buf2, n, off);
            }
            if (r < 0) {
                bdev_report_io_error(b1, "cannot read", r);
                ret = CMP_READ_ERROR;
                goto out;
            }
        }
        if (memcmp(buf1, buf2, n)) {
            if (!a.img.quiet) {
                printf("Content mismatch at offset %" PRIu64 "!\n",
                       first_diff(buf1, buf2, n, off));
            }
            ret = CMP_DIFFERENT;
            goto out;
        }
        off += n;
    }
    if (b1->size != b2->size) {
        /* as qemu-img: warned once the common part matched */
        if (!a.img.quiet) {
            printf("Warning: Image size mismatch!\n");
        }
        ret = check_zero_tail(b1->size > b2->size ? b1 : b2, common, total, buf1, a.img.quiet);
        if (ret != CMP_SAME) {
            goto out;
        }
    }
    if (a.progress && !a.img.quiet) {
        progress_done();
    }
    if (!a.img.quiet) {
        printf("Images are identical.\n");
    }

out:
    if (thread) {
        pthread_mutex_lock(&rd.lock);
        rd.quit = true;
        pthread_cond_broadcast(&rd.cond);
        pthread_mutex_unlock(&rd.lock);
        pthread_join(rd.thread, NULL);
    }
    free(buf1);
    free(buf2);
    bdev_unref(b1);
    bdev_unref(b2);
    return ret;
}
