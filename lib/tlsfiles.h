/*
 * blockctl - the files TLS credentials are kept in
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Checked before GnuTLS or libnbd read them, so that a wrong path or a
 * malformed file is an error naming it at start-up, not a handshake
 * failure later.
 *
 * x509 credentials are a directory laid out as QEMU's tls-creds-x509:
 * ca-cert.pem, and server-cert.pem + server-key.pem (a server) or
 * client-cert.pem + client-key.pem (a client), optionally ca-crl.pem.
 * A PSK file is qemu-nbd's (psktool's): lines USERNAME:HEXKEY.
 */
#ifndef BLOCKCTL_LIB_TLSFILES_H
#define BLOCKCTL_LIB_TLSFILES_H

#include "lib/error.h"

#include <stdbool.h>

/*
 * Check the x509 directory @dir: it exists and holds ca-cert.pem, and with
 * @server, server-cert.pem and server-key.pem (a client's certificate is
 * optional: the server may not ask for one).  0 or -errno.
 */
int tls_x509_dir_check(const char *dir, bool server, struct error **errp);

/*
 * Check the PSK file @path (readable, each line USERNAME:HEXKEY, at least
 * one) and, with @first_user, return the first line's user name
 * (allocated).  0 or -errno.
 */
int tls_psk_file_check(const char *path, char **first_user, struct error **errp);

#endif
