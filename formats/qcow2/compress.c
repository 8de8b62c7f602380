/*
 * blockctl - qcow2: cluster compression (zlib raw deflate, zstd)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * qcow2.txt: zlib clusters are a raw deflate stream (no zlib header, 4 KiB
 * window as QEMU writes them); zstd clusters are one zstd frame.  The
 * compressed data is followed by padding up to the end of its last
 * sector, so decompression stops once the cluster is full.
 */
#include "lib/compiler.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

static ssize_t zlib_compress(void *dst, size_t dst_len, const void *src, size_t src_len)
{
    z_stream z;
    ssize_t ret;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = src_len;
    z.next_out = dst;
    z.avail_out = dst_len;
    ret = deflate(&z, Z_FINISH);
    if (ret == Z_STREAM_END) {
        ret = dst_len - z.avail_out;
    } else if (ret == Z_OK || ret == Z_BUF_ERROR) {
        ret = -ENOSPC;
    } else {
        ret = -EIO;
    }
    deflateEnd(&z);
    return ret;
}

static int zlib_decompress(void *dst, size_t dst_len, const void *src, size_t src_len)
{
    z_stream z;
    int ret;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = src_len;
    z.next_out = dst;
    z.avail_out = dst_len;
    ret = inflate(&z, Z_FINISH);
    /* Z_BUF_ERROR with a full output: the stream continues into padding. */
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0) {
        ret = 0;
    } else {
        ret = -EIO;
    }
    inflateEnd(&z);
    return ret;
}

static ssize_t zstd_compress(void *dst, size_t dst_len, const void *src, size_t src_len)
{
    size_t r = ZSTD_compress(dst, dst_len, src, src_len, ZSTD_CLEVEL_DEFAULT);

    if (ZSTD_isError(r)) {
        return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
    }
    return (ssize_t)r;
}

static int zstd_decompress(void *dst, size_t dst_len, const void *src, size_t src_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    ZSTD_inBuffer in = { src, src_len, 0 };
    ZSTD_outBuffer out = { dst, dst_len, 0 };
    size_t r = 1;
    int ret = 0;

    if (!dctx) {
        return -ENOMEM;
    }
    while (out.pos < out.size) {
        size_t in_pos = in.pos, out_pos = out.pos;
        r = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(r)) {
            ret = -EIO;
            break;
        }
        if (in.pos == in_pos && out.pos == out_pos) {
            /* no progress: truncated or damaged frame */
            ret = -EIO;
            break;
        }
        if (r == 0 && out.pos < out.size) {
            /* frame ended before the cluster was full */
            ret = -EIO;
            break;
        }
    }
    if (ret == 0 && r != 0) {
        /* the frame claims more data than one cluster */
        ret = -EIO;
    }
    ZSTD_freeDCtx(dctx);
    return ret;
}

ssize_t qcow2_compress(int type, void *dst, size_t dst_len, const void *src, size_t src_len)
{
    return type == QCOW2_COMPRESSION_ZSTD ? zstd_compress(dst, dst_len, src, src_len)
                                          : zlib_compress(dst, dst_len, src, src_len);
}

int qcow2_decompress(int type, void *dst, size_t dst_len, const void *src, size_t src_len)
{
    return type == QCOW2_COMPRESSION_ZSTD ? zstd_decompress(dst, dst_len, src, src_len)
                                          : zlib_decompress(dst, dst_len, src, src_len);
}
