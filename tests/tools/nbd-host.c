/*
 * blockctl - nbd-host: serve one image over NBD with lib/nbdsrv (a test
 * host standing in for `blockctl agent`)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 *   nbd-host [--socket PATH] [--tcp HOST:PORT] [--read-only] [--format FMT]
 *            [--description TEXT] [--no-allocation-depth] [--bitmap NAME]...
 *            [--max-clients N] [--handshake-timeout SECS] [--max-payload BYTES]
 *            [--max-in-flight N] [--threads N] [--mode OCTAL] FILE [NAME]
 *
 * Opens FILE (read-write unless --read-only), exports it as NAME (default
 * "disk"), prints "ready" once listening, logs the server's events on
 * stderr, and on SIGTERM or SIGINT shuts the server down and closes the
 * image.  Exit status 0, or 1 on an error.
 */
#include "lib/compiler.h"
#include "lib/blk.h"
#include "lib/block.h"
#include "lib/error.h"
#include "lib/nbdsrv/nbdsrv.h"
#include "lib/pool.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void log_line(void *opaque, const char *fmt, ...)
{
    va_list ap;

    (void)opaque;
    va_start(ap, fmt);
    flockfile(stderr);
    fputs("nbd-host: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(ap);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: nbd-host [--socket PATH] [--tcp HOST:PORT] [--read-only] [--format FMT]\n"
            "                [--description TEXT] [--no-allocation-depth] [--bitmap NAME]...\n"
            "                [--max-clients N] [--handshake-timeout SECS] [--max-payload BYTES]\n"
            "                [--max-in-flight N] [--threads N] [--mode OCTAL] FILE [NAME]\n");
    exit(1);
}

static unsigned num_arg(const char *s, const char *what)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 0);
    if (errno || *end || end == s || v > UINT32_MAX) {
        fprintf(stderr, "nbd-host: bad %s '%s'\n", what, s);
        exit(1);
    }
    return (unsigned)v;
}

int main(int argc, char **argv)
{
    enum { O_DESC = 256, O_NO_DEPTH, O_BITMAP, O_MAX_CLIENTS, O_TIMEOUT, O_PAYLOAD,
           O_IN_FLIGHT, O_THREADS, O_MODE };
    static const struct option longopts[] = {
        { "socket", required_argument, NULL, 's' },
        { "tcp", required_argument, NULL, 't' },
        { "read-only", no_argument, NULL, 'r' },
        { "format", required_argument, NULL, 'f' },
        { "description", required_argument, NULL, O_DESC },
        { "no-allocation-depth", no_argument, NULL, O_NO_DEPTH },
        { "bitmap", required_argument, NULL, O_BITMAP },
        { "max-clients", required_argument, NULL, O_MAX_CLIENTS },
        { "handshake-timeout", required_argument, NULL, O_TIMEOUT },
        { "max-payload", required_argument, NULL, O_PAYLOAD },
        { "max-in-flight", required_argument, NULL, O_IN_FLIGHT },
        { "threads", required_argument, NULL, O_THREADS },
        { "mode", required_argument, NULL, O_MODE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *sock = NULL, *tcp = NULL, *format = NULL, *desc = NULL;
    const char **bitmaps = NULL;
    size_t nbitmaps = 0;
    char *unix_addr = NULL, *tcp_addr = NULL;
    bool read_only = false, depth = true;
    unsigned threads = 8, mode = 0600;
    struct nbdsrv_config cfg = { .log = log_line };
    struct nbdsrv_export_opts eo = { 0 };
    struct error *err = NULL;
    struct nbdsrv *srv;
    struct workpool *pool;
    struct bdev *bd;
    struct blk *blk;
    sigset_t sigs;
    int c, sig, status = 0;

    error_progname = "nbd-host";
    while ((c = getopt_long(argc, argv, "s:t:rf:h", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            sock = optarg;
            break;
        case 't':
            tcp = optarg;
            break;
        case 'r':
            read_only = true;
            break;
        case 'f':
            format = optarg;
            break;
        case O_DESC:
            desc = optarg;
            break;
        case O_NO_DEPTH:
            depth = false;
            break;
        case O_BITMAP:
            bitmaps = xrealloc(bitmaps, (nbitmaps + 2) * sizeof(*bitmaps));
            bitmaps[nbitmaps++] = optarg;
            bitmaps[nbitmaps] = NULL;
            break;
        case O_MAX_CLIENTS:
            cfg.max_clients = num_arg(optarg, "client count");
            break;
        case O_TIMEOUT:
            cfg.handshake_timeout = num_arg(optarg, "timeout");
            break;
        case O_PAYLOAD:
            cfg.max_payload = num_arg(optarg, "payload size");
            break;
        case O_IN_FLIGHT:
            cfg.max_in_flight = num_arg(optarg, "request count");
            break;
        case O_THREADS:
            threads = num_arg(optarg, "thread count");
            break;
        case O_MODE:
            mode = num_arg(optarg, "mode");
            break;
        default:
            usage();
        }
    }
    if (optind >= argc || argc - optind > 2 || (!sock && !tcp)) {
        usage();
    }

    /* the server's threads inherit this mask: signals come to sigwait() */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    bd = bdev_open(argv[optind], format, read_only ? 0 : BDEV_O_RDWR, &err);
    if (!bd) {
        error_report_err(err);
        return 1;
    }
    blk = blk_new(argc - optind > 1 ? argv[optind + 1] : "disk", bd, read_only);
    pool = workpool_new(threads);
    cfg.pool = pool;
    srv = nbdsrv_new(&cfg);
    eo.id = blk_name(blk);
    eo.description = desc;
    eo.blk = blk;
    eo.writable = !read_only;
    eo.allocation_depth = depth;
    eo.bitmaps = bitmaps;
    unix_addr = sock ? xasprintf("unix:%s", sock) : NULL;
    tcp_addr = tcp ? xasprintf("tcp:%s", tcp) : NULL;
    if ((unix_addr && nbdsrv_listen(srv, unix_addr, mode, &err) < 0) ||
        (tcp_addr && nbdsrv_listen(srv, tcp_addr, 0, &err) < 0) ||
        nbdsrv_export_add(srv, &eo, &err) < 0 || nbdsrv_start(srv, &err) < 0) {
        error_report_err(err);
        status = 1;
    } else {
        printf("ready\n");
        fflush(stdout);
        do {
            if (sigwait(&sigs, &sig) != 0) {
                break;
            }
        } while (sig != SIGTERM && sig != SIGINT);
    }
    nbdsrv_shutdown(srv);
    nbdsrv_free(srv);
    workpool_free(pool);
    blk_unref(blk);
    if (bdev_close(bd, &err) < 0) {
        error_report_err(err);
        status = 1;
    }
    free(bitmaps);
    free(unix_addr);
    free(tcp_addr);
    return status;
}
