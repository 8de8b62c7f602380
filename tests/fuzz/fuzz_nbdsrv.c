/*
 * blockctl - libFuzzer harness: the NBD server's handshake and
 * transmission parsers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The input is everything a client sends, from the client flags on.  It is
 * written into one end of a socketpair whose other end the server serves
 * (nbdsrv_add_client), while the server's replies are read and dropped;
 * then the client's side is shut down and the harness waits until the
 * server has closed the connection.  Behind it: two exports ("disk"
 * writable with qemu:allocation-depth, "ro" read-only with a description)
 * of a 1 MiB raw image in /dev/shm with data and holes, rewritten before
 * every input.  Small limits (64 KiB payloads, 4 requests in flight) so
 * that the fuzzer reaches them.  Nothing may crash, hang, leak, or touch
 * memory it should not; every connection must end.
 *
 * Build and run: scripts/fuzz.sh (make fuzz), seeds from tests/fuzz/nbd-seeds.py.
 */
#include "tests/fuzz/fuzz_common.h"
#include "lib/blk.h"
#include "lib/nbdsrv/nbdsrv.h"
#include "lib/pool.h"

#include <poll.h>
#include <sys/socket.h>

#define DISK_SIZE (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct nbdsrv *srv;
static struct workpool *pool;
static struct bdev *bd;
static struct blk *disk;
static uint8_t *image;

static void reset_image(void)
{
    int fd = open(fuzz_path, O_RDWR | O_CREAT, 0600);

    if (fd < 0 || ftruncate(fd, 0) < 0 || ftruncate(fd, DISK_SIZE) < 0 ||
        pwrite(fd, image, 256 << 10, 0) != 256 << 10 ||
        pwrite(fd, image + (512 << 10), 128 << 10, 512 << 10) != 128 << 10) {
        fuzz_fail("cannot write the image %s: %s", fuzz_path, strerror(errno));
    }
    close(fd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct nbdsrv_config cfg = {
        .max_clients = 4, .handshake_timeout = 5, .max_payload = 65536, .max_in_flight = 4,
    };
    struct nbdsrv_export_opts rw = { .id = "disk", .writable = true, .allocation_depth = true };
    struct nbdsrv_export_opts ro = { .id = "ro", .description = "read-only" };
    struct error *err = NULL;

    (void)argc;
    (void)argv;
    fuzz_init("nbdsrv");
    atexit(fuzz_cleanup);
    image = malloc(DISK_SIZE);
    if (!image) {
        abort();
    }
    for (size_t i = 0; i < DISK_SIZE; i++) {
        image[i] = (uint8_t)(i * 13 + (i >> 12));
    }
    reset_image();
    bd = bdev_open(fuzz_path, "raw", BDEV_O_RDWR, &err);
    if (!bd) {
        fuzz_fail("cannot open %s: %s", fuzz_path, err->msg);
    }
    disk = blk_new("vda", bd, false);
    pool = workpool_new(2);
    cfg.pool = pool;
    srv = nbdsrv_new(&cfg);
    rw.blk = disk;
    ro.blk = disk;
    if (nbdsrv_export_add(srv, &rw, &err) < 0 || nbdsrv_export_add(srv, &ro, &err) < 0) {
        fuzz_fail("export_add: %s", err->msg);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct error *err = NULL;
    uint8_t sink[65536];
    size_t sent = 0;
    bool eof = false, shut = false;
    int sv[2];

    reset_image();
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        fuzz_fail("socketpair: %s", strerror(errno));
    }
    if (nbdsrv_add_client(srv, sv[0], &err) < 0) {
        fuzz_fail("add_client: %s", err->msg);
    }
    /* feed the input while draining the replies, until the server hangs up */
    while (!eof) {
        struct pollfd pfd = { .fd = sv[1], .events = POLLIN };
        int r;
        if (!shut && sent == size) {
            shutdown(sv[1], SHUT_WR);
            shut = true;
        }
        if (!shut) {
            pfd.events |= POLLOUT;
        }
        r = poll(&pfd, 1, 20000);
        if (r < 0 && errno == EINTR) {
            /* libFuzzer's timeout alarm */
            continue;
        }
        if (r <= 0) {
            fuzz_fail("the server neither reads nor closes");
        }
        if (pfd.revents & POLLIN) {
            ssize_t n = recv(sv[1], sink, sizeof(sink), MSG_DONTWAIT);
            eof = n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
        } else if (pfd.revents & (POLLHUP | POLLERR)) {
            eof = true;
        }
        if (!shut && (pfd.revents & POLLOUT)) {
            ssize_t n = send(sv[1], data + sent, size - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                /* the server closed: stop feeding */
                sent = size;
            }
        }
    }
    close(sv[1]);
    for (unsigned i = 0; nbdsrv_clients(srv); i++) {
        if (i > 20000) {
            fuzz_fail("a connection did not end");
        }
        usleep(100);
    }
    return 0;
}
