/*
 * blockctl - the drivers formats/ provides
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A new format is one new driver: write formats/<name>.c ending with its
 * table, declare it here and list it in lib/block.c's driver table.
 */
#ifndef BLOCKCTL_FORMATS_FORMAT_H
#define BLOCKCTL_FORMATS_FORMAT_H

#include "lib/block.h"

extern const struct format_driver raw_driver;
extern const struct format_driver qcow2_driver;
extern const struct format_driver nbd_driver;

/* formats/nbd.c */
/* True if @name is an NBD URI (nbd://, nbd+unix://, nbds://...). */
bool nbd_is_uri(const char *name);
/*
 * Credentials for nbds:// and nbds+unix:// URIs opened from now on: an
 * x509 directory laid out as QEMU's tls-creds-x509 (ca-cert.pem, and
 * client-cert.pem + client-key.pem if the server asks for a certificate)
 * or a PSK file as qemu-nbd's (USERNAME:HEXKEY lines; the URI's user, or
 * the file's first, is the PSK identity).  At most one of them; both NULL
 * means the environment's: BLOCKCTL_TLS_CREDS, BLOCKCTL_TLS_PSK (without
 * either, libnbd's default: the system's CAs, no client certificate).
 * Call before any NBD image is opened.
 */
void nbd_tls_configure(const char *creds_dir, const char *psk_file);
/*
 * The server's qemu:dirty-bitmap:NAME context (for an image opened with
 * BDEV_O_NBD_BITMAP and bdev_open_opts.nbd_bitmap): *dirty tells whether
 * [off, off + *pnum) is dirty.  -ENOTSUP when the server has no such bitmap.
 */
int nbd_bitmap_status(struct bdev *bd, uint64_t off, uint64_t len, uint64_t *pnum, bool *dirty);

#endif
