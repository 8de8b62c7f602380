/*
 * blockctl - --tls-creds / --tls-psk: credentials for nbds:// URIs, an argp
 * child shared by every command that opens images
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "formats/format.h"

#include <argp.h>

#include "cmd/cmd.h"

enum { OPT_TLS_CREDS = 0x7100, OPT_TLS_PSK };

static const struct argp_option options[] = {
    { "tls-creds", OPT_TLS_CREDS, "DIR", 0, "nbds:// URIs: x509 DIR, or --tls-psk=FILE", 0 },
    /* documented with --tls-creds (one line of --help for both) */
    { "tls-psk", OPT_TLS_PSK, "FILE", OPTION_HIDDEN, "nbds:// URIs: a PSK file", 0 },
    { 0 }
};

static const char *creds, *psk;

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    switch (key) {
    case OPT_TLS_CREDS:
        if (!*arg) {
            argp_error(state, "--tls-creds: empty directory name");
        }
        creds = arg;
        break;
    case OPT_TLS_PSK:
        if (!*arg) {
            argp_error(state, "--tls-psk: empty file name");
        }
        psk = arg;
        break;
    case ARGP_KEY_END:
        if (creds && psk) {
            argp_error(state, "--tls-creds and --tls-psk exclude each other");
        }
        if (creds || psk) {
            nbd_tls_configure(creds, psk);
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

const struct argp tls_opts_argp = { options, parse_opt, NULL, NULL, NULL, NULL, NULL };
