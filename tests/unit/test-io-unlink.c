/*
 * blockctl - unit tests of lib/io.c's io_unlink: a fault point (BLOCKCTL_FAULT
 * op "unlink", and "any"), counted by BLOCKCTL_FAULT_COUNT, and a record of
 * the write log (BLOCKCTL_IOLOG) with the path and the inode it removed
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The files live in a new folder under $TMPDIR (default /tmp).
 */
#include "lib/compiler.h"
#include "lib/io.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/tap.h"

/* lib/io.c's struct iolog_rec, as the log holds it */
struct rec {
    uint32_t magic, type;
    uint64_t seq, dev, ino, off, len, aux, plen;
};
#define REC_MAGIC 0x4c4f4942u
#define REC_UNLINK 9

static char dir[4096];

static char *in_dir(const char *name)
{
    return xasprintf("%s/%s", dir, name);
}

/* A new file @name in the folder, mode @mode; its stat in @st. */
static char *make_file(const char *name, mode_t mode, struct stat *st)
{
    char *p = in_dir(name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);

    if (fd < 0 || write(fd, "x", 1) != 1) {
        printf("Bail out! cannot create '%s': %s\n", p, strerror(errno));
        exit(1);
    }
    close(fd);
    chmod(p, mode);
    if (st) {
        stat(p, st);
    }
    return p;
}

static bool exists(const char *p)
{
    return access(p, F_OK) == 0;
}

/* The value of line "NAME N" in the count file @p (-1: none). */
static long count_of(const char *p, const char *name)
{
    FILE *f = fopen(p, "r");
    char key[64];
    long v, found = -1;

    if (!f) {
        return -1;
    }
    while (fscanf(f, "%63s %ld", key, &v) == 2) {
        if (!strcmp(key, name)) {
            found = v;
        }
    }
    fclose(f);
    return found;
}

/*
 * In a child that has not touched lib/io.c yet (so that it reads its own
 * environment): two removals and one of a missing file, counted.
 */
static void test_counts(void)
{
    char *cnt = in_dir("counts"), *a = make_file("count-a", 0644, NULL);
    pid_t pid;
    int status;

    pid = fork();
    if (pid == 0) {
        unsetenv("BLOCKCTL_IOLOG");
        unsetenv("BLOCKCTL_FAULT");
        setenv("BLOCKCTL_FAULT_COUNT", cnt, 1);
        int first = io_unlink(a), second = io_unlink(a);
        free(a);
        free(cnt);
        exit(first == 0 && second == -ENOENT ? 0 : 3);     /* (exit: the counts are written) */
    }
    waitpid(pid, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "counting run: exit %d", status);
    is_int(count_of(cnt, "unlink"), 2, "BLOCKCTL_FAULT_COUNT: 'unlink 2' (one of them ENOENT)");
    is_int(count_of(cnt, "any"), 2, "BLOCKCTL_FAULT_COUNT: 'any' counts them");
    ok(!exists(a), "the file is gone");
    free(cnt);
    free(a);
}

static void test_faults(void)
{
    char *a = make_file("fault-a.json", 0600, NULL), *b = make_file("fault-b.qcow2", 0600, NULL);
    unsigned long counts[4] = { 0 };
    pid_t pid;
    int status;

    io_fault_set("unlink:1:eio", NULL, 0);
    is_int(io_unlink(a), -EIO, "unlink:1:eio: the 1st unlink fails with EIO");
    ok(exists(a), "... and removes nothing");
    is_int(io_unlink(a), 0, "unlink:1:eio: the 2nd one is done");
    ok(!exists(a), "... and the file is gone");
    is_int(io_fault_set(NULL, counts, 4), 1, "one rule");
    is_int(counts[0], 2, "the rule counted both calls");

    free(a);
    a = make_file("fault-a.json", 0600, NULL);
    io_fault_set("unlink:*:enospc:*.qcow2", NULL, 0);
    is_int(io_unlink(a), 0, "unlink:*:enospc:*.qcow2: another name is removed");
    is_int(io_unlink(b), -ENOSPC, "... a matching one fails with ENOSPC");
    ok(exists(b), "... and stays");

    io_fault_set("any:1:eio", NULL, 0);
    is_int(io_unlink(b), -EIO, "any:1:eio: an unlink is one of 'any'");
    io_fault_set("unlink:1:short", NULL, 0);
    is_int(io_unlink(b), -ENOSPC, "unlink:1:short: ENOSPC, as other calls that transfer nothing");
    io_fault_set(NULL, NULL, 0);

    /* kill: the process dies before the call; torn: likewise */
    for (int i = 0; i < 2; i++) {
        const char *rule = i ? "unlink:1:torn" : "unlink:1:kill";
        pid = fork();
        if (pid == 0) {
            io_fault_set(rule, NULL, 0);
            io_unlink(b);
            _exit(0);
        }
        waitpid(pid, &status, 0);
        ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: killed (status %d)", rule,
           status);
        ok(exists(b), "%s: the file is still there", rule);
    }
    is_int(io_unlink(b), 0, "without rules: removed");
    free(a);
    free(b);
}

/* The log from byte @from on: its unlink records in @out, their paths in @paths. */
static size_t read_unlinks(const char *log, long from, struct rec *out, char (*paths)[4096],
                           size_t max)
{
    FILE *f = fopen(log, "rb");
    struct rec r;
    size_t n = 0;

    if (!f || fseek(f, from, SEEK_SET) < 0) {
        if (f) {
            fclose(f);
        }
        return 0;
    }
    while (fread(&r, sizeof(r), 1, f) == 1 && r.magic == REC_MAGIC) {
        char *p = xmalloc(r.plen + 1);
        if (fread(p, 1, r.plen, f) != r.plen) {
            free(p);
            break;
        }
        p[r.plen] = '\0';
        if (r.type == REC_UNLINK && n < max) {
            out[n] = r;
            snprintf(paths[n], sizeof(paths[n]), "%s", p);
            n++;
        }
        free(p);
    }
    fclose(f);
    return n;
}

static void test_log(const char *log)
{
    struct stat sa, sb;
    char *a = make_file("log-a.json", 0640, &sa), *b = make_file("log-b", 0604, &sb);
    char *c = make_file("log-c", 0600, NULL), *cwd = getcwd(NULL, 0);
    struct rec r[4];
    static char paths[4][4096];
    struct stat st;
    long from = stat(log, &st) == 0 ? (long)st.st_size : 0;
    size_t n;

    ok(sizeof(struct rec) == 64, "a record header is 64 bytes");
    is_int(io_unlink(a), 0, "io_unlink of an absolute path");
    /* a relative path is logged absolute */
    if (chdir(dir) < 0) {
        printf("Bail out! chdir: %s\n", strerror(errno));
        exit(1);
    }
    is_int(io_unlink("log-b"), 0, "io_unlink of a relative path");
    if (chdir(cwd) < 0) {
        printf("Bail out! chdir: %s\n", strerror(errno));
        exit(1);
    }
    /* calls that remove nothing are not logged */
    io_fault_set("unlink:1:eio", NULL, 0);
    is_int(io_unlink(c), -EIO, "a failed unlink (fault)");
    io_fault_set(NULL, NULL, 0);
    is_int(io_unlink(b), -ENOENT, "an unlink of a missing file");

    n = read_unlinks(log, from, r, paths, 4);
    is_int(n, 2, "two unlink records (none for the failed calls)");
    if (n == 2) {
        ok(!strcmp(paths[0], a), "record 1: the path '%s'", paths[0]);
        ok(r[0].ino == sa.st_ino && r[0].dev == sa.st_dev, "record 1: the inode removed");
        is_int(r[0].aux, 0640, "record 1: its permissions");
        ok(!strcmp(paths[1], b), "record 2: the relative path made absolute ('%s')", paths[1]);
        ok(r[1].ino == sb.st_ino && r[1].dev == sb.st_dev, "record 2: the inode removed");
        is_int(r[1].aux, 0604, "record 2: its permissions");
        ok(r[1].seq > r[0].seq, "records in order (seq %" PRIu64 ", %" PRIu64 ")", r[0].seq,
           r[1].seq);
    }
    io_unlink(c);
    free(a);
    free(b);
    free(c);
    free(cwd);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char *log, *cnt;

    snprintf(dir, sizeof(dir), "%s/blockctl-io-unlink.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    log = in_dir("iolog");
    cnt = in_dir("counts");
    unsetenv("BLOCKCTL_FAULT");
    unsetenv("BLOCKCTL_FAULT_COUNT");
    setenv("BLOCKCTL_IOLOG", log, 1);
    /* first, in a child, before this process reads the environment */
    test_counts();
    test_faults();
    test_log(log);
    unlink(log);
    unlink(cnt);
    if (rmdir(dir) < 0) {
        tap_diag("rmdir '%s': %s", dir, strerror(errno));
    }
    free(log);
    free(cnt);
    return tap_done();
}
