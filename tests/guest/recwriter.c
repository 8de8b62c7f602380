/*
 * recwriter - the guest side of tests/interop/guest.bats: runs as the
 * init of a small Linux guest whose disk is an NBD export of the agent.
 *
 *   recwriter write DEV [MAX [RATE]]
 *                              append records 1, 2, ... (record n in the
 *                              n-th 4 KiB block of DEV), each written with
 *                              O_DIRECT then fdatasync'd (a flush the
 *                              virtio disk passes on to the NBD server);
 *                              print "ACK n" once n is durable, at most
 *                              RATE records a second (0: no limit).  Stops
 *                              at the end of DEV ("FULL n") or after MAX
 *                              records (0: no limit), or on an I/O error
 *                              ("ERROR n ...").
 *   recwriter verify DEV       read every block; print "CORRUPT n why"
 *                              for each block that is neither all zeros
 *                              nor record n intact, then one line
 *                              "VERIFY contiguous=C valid=V corrupt=X":
 *                              C the highest n with records 1..n all
 *                              intact, V the intact records in all.
 *
 * A record: magic, its number, 4064 bytes of data drawn from the number,
 * and an FNV-1a 64 checksum of all that, so a record that is torn,
 * stale, misplaced or another's is seen.  Built with gcc -static: the
 * initramfs has no libc.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define REC 4096
#define MAGIC 0x314345524c544342ULL /* "BCTLREC1" */
#define DATA_OFF 16
#define SUM_OFF (REC - 8)

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    while (n--) {
        h ^= *p++;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* record n's bytes into buf */
static void make_record(unsigned char *buf, uint64_t n)
{
    uint64_t x = n * 0x9e3779b97f4a7c15ULL + 1, m = MAGIC, sum;

    memcpy(buf, &m, 8);
    memcpy(buf + 8, &n, 8);
    for (size_t i = DATA_OFF; i < SUM_OFF; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
    sum = fnv1a(buf, SUM_OFF);
    memcpy(buf + SUM_OFF, &sum, 8);
}

/* print a line on the console in one write (it is the only output) */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[160];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    while (write(STDOUT_FILENO, line, (size_t)n) < 0 && errno == EINTR)
        ;
}

static uint64_t dev_size(int fd, const char *dev)
{
    uint64_t size = 0;

    if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
        off_t end = lseek(fd, 0, SEEK_END);

        if (end < 0) {
            say("ERROR 0 size of %s: %s\n", dev, strerror(errno));
            exit(1);
        }
        size = (uint64_t)end;
    }
    return size;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int do_write(const char *dev, uint64_t max, unsigned rate)
{
    double start;
    unsigned char *buf;
    uint64_t n, slots;
    int fd;

    fd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0) {
        say("ERROR 0 open %s: %s\n", dev, strerror(errno));
        return 1;
    }
    slots = dev_size(fd, dev) / REC;
    if (max == 0 || max > slots)
        max = slots;
    if (posix_memalign((void **)&buf, REC, REC) != 0) {
        say("ERROR 0 out of memory\n");
        return 1;
    }
    say("START slots=%" PRIu64 "\n", max);
    start = now();
    for (n = 1; n <= max; n++) {
        ssize_t w;

        if (rate) {
            double ahead = start + (double)(n - 1) / rate - now();

            if (ahead > 0)
                usleep((useconds_t)(ahead * 1e6));
        }
        make_record(buf, n);
        w = pwrite(fd, buf, REC, (off_t)((n - 1) * REC));
        if (w != REC) {
            say("ERROR %" PRIu64 " write: %s\n", n, w < 0 ? strerror(errno) : "short");
            return 1;
        }
        if (fdatasync(fd) < 0) {
            say("ERROR %" PRIu64 " fdatasync: %s\n", n, strerror(errno));
            return 1;
        }
        say("ACK %" PRIu64 "\n", n);
    }
    say("FULL %" PRIu64 "\n", max);
    return 0;
}

static int all_zero(const unsigned char *p, size_t n)
{
    while (n--)
        if (*p++)
            return 0;
    return 1;
}

static int do_verify(const char *dev)
{
    static unsigned char want[REC];
    unsigned char *chunk;
    const size_t per = 256; /* records read at once (1 MiB) */
    uint64_t slots, n = 0, contiguous = 0, valid = 0, corrupt = 0;
    int fd, gap = 0;

    fd = open(dev, O_RDONLY | O_DIRECT);
    if (fd < 0) {
        say("ERROR 0 open %s: %s\n", dev, strerror(errno));
        return 1;
    }
    slots = dev_size(fd, dev) / REC;
    if (posix_memalign((void **)&chunk, REC, per * REC) != 0) {
        say("ERROR 0 out of memory\n");
        return 1;
    }
    while (n < slots) {
        size_t k = slots - n < per ? (size_t)(slots - n) : per;
        ssize_t r = pread(fd, chunk, k * REC, (off_t)(n * REC));

        if (r != (ssize_t)(k * REC)) {
            say("ERROR %" PRIu64 " read: %s\n", n + 1, r < 0 ? strerror(errno) : "short");
            return 1;
        }
        for (size_t i = 0; i < k; i++) {
            const unsigned char *p = chunk + i * REC;
            uint64_t num = n + i + 1, m, seq, sum;

            if (all_zero(p, REC)) {
                gap = 1;
                continue;
            }
            make_record(want, num);
            if (memcmp(p, want, REC) == 0) {
                valid++;
                if (!gap)
                    contiguous = num;
                continue;
            }
            gap = 1;
            memcpy(&m, p, 8);
            memcpy(&seq, p + 8, 8);
            memcpy(&sum, p + SUM_OFF, 8);
            if (++corrupt > 20)
                continue;
            if (m != MAGIC)
                say("CORRUPT %" PRIu64 " no record here (bad magic)\n", num);
            else if (seq != num)
                say("CORRUPT %" PRIu64 " holds record %" PRIu64 "\n", num, seq);
            else if (sum != fnv1a(p, SUM_OFF))
                say("CORRUPT %" PRIu64 " bad checksum (torn)\n", num);
            else
                say("CORRUPT %" PRIu64 " data differs\n", num);
        }
        n += k;
    }
    say("VERIFY contiguous=%" PRIu64 " valid=%" PRIu64 " corrupt=%" PRIu64 "\n",
        contiguous, valid, corrupt);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && argc <= 5 && strcmp(argv[1], "write") == 0)
        return do_write(argv[2], argc > 3 ? strtoull(argv[3], NULL, 10) : 0,
                        argc > 4 ? (unsigned)strtoul(argv[4], NULL, 10) : 0);
    if (argc == 3 && strcmp(argv[1], "verify") == 0)
        return do_verify(argv[2]);
    say("usage: recwriter write DEV [MAX [RATE]] | verify DEV\n");
    return 64;
}
