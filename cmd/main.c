/*
 * blockctl - command table and multicall dispatch
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "lib/error.h"
#include "lib/file.h"

#include <argp.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

#ifndef BLOCKCTL_VERSION
#define BLOCKCTL_VERSION "0.1.0"
#endif

const char *argp_program_version = "blockctl " BLOCKCTL_VERSION;
const char *argp_program_bug_address = "<https://github.com/blockctl/blockctl/issues>";

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

/* Keep sorted. */
static const struct command commands[] = {
    { "agent", cmd_agent, "Serve disks over NBD with QMP control (live operations)" },
    { "amend", cmd_amend, "Change a qcow2 image's options in place (compat, refcount_bits...)" },
    { "bitmap", cmd_bitmap, "Manage persistent dirty bitmaps (add, remove, merge, dump)" },
    { "check", cmd_check, "Check an image's consistency, and repair it (-r)" },
    { "commit", cmd_commit, "Merge an overlay (or part of the chain) into its base" },
    { "compare", cmd_compare, "Compare the guest-visible contents of two images" },
    { "convert", cmd_convert, "Convert images to another format (qemu-img convert's options)" },
    { "create", cmd_create, "Create a new image (raw or qcow2, with a backing file)" },
    { "info", cmd_info, "Show an image's format, size, backing chain and features" },
    { "job", cmd_job, "List and control block jobs (of an agent, or interrupted ones)" },
    { "map", cmd_map, "Show where an image's data lives, extent by extent" },
    { "measure", cmd_measure, "Show how large a new image of some format would be" },
    { "mirror", cmd_mirror, "Copy a disk to a new file or an NBD export" },
    { "pivot", cmd_pivot, "Switch an agent's disks onto their mirror copies" },
    { "rebase", cmd_rebase, "Change an image's backing file, keeping what it reads" },
    { "resize", cmd_resize, "Grow or shrink an image's virtual size" },
    { "snapshot", cmd_snapshot, "Create external snapshots of several disks at once" },
    { "stream", cmd_stream, "Pull backing data into an overlay (copy-on-read)" },
};

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        if (!strcmp(commands[i].name, name)) {
            return &commands[i];
        }
    }
    return NULL;
}

struct top_args {
    int cmd_index;
    bool list;
    bool list_formats;
};

enum { OPT_LIST_COMMANDS = 0x100, OPT_LIST_FORMATS };

static const struct argp_option top_options[] = {
    { "list-commands", OPT_LIST_COMMANDS, NULL, OPTION_HIDDEN, "List the subcommands", 0 },
    { "list-formats", OPT_LIST_FORMATS, NULL, OPTION_HIDDEN, "List the image formats", 0 },
    { 0 }
};

static error_t top_parse(int key, char *arg, struct argp_state *state)
{
    struct top_args *a = state->input;

    (void)arg;
    switch (key) {
    case OPT_LIST_COMMANDS:
        a->list = true;
        break;
    case OPT_LIST_FORMATS:
        a->list_formats = true;
        break;
    case ARGP_KEY_ARG:
        a->cmd_index = state->next - 1;
        state->next = state->argc;
        break;
    case ARGP_KEY_END:
        if (!a->cmd_index && !a->list && !a->list_formats) {
            argp_usage(state);
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static char *top_doc(void)
{
    size_t cap = 4096, len = 0;
    char *doc = xmalloc(cap);

    len += snprintf(doc + len, cap - len,
                    "blockctl -- live and offline block operations on VM disk images"
                    "\vCommands:\n");
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        len += snprintf(doc + len, cap - len, "  %-10s %s\n", commands[i].name,
                        commands[i].summary);
    }
    snprintf(doc + len, cap - len,
             "\nRun 'blockctl COMMAND --help' for a command's options, and see "
             "blockctl(1).\nExit status: 0 on success, 1 on error, 64 for usage errors "
             "(check and compare have their own codes).");
    return doc;
}

/* "-h" is argp's "-?": qemu-img and most tools answer it with help. */
static void map_dash_h(int argc, char **argv)
{
    static char help[] = "--help";

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            break;
        }
        if (!strcmp(argv[i], "-h")) {
            argv[i] = help;
        }
    }
}

static int run(const struct command *c, int argc, char **argv)
{
    char *name = xasprintf("blockctl %s", c->name);
    int ret;

    map_dash_h(argc, argv);
    argv[0] = name;
    ret = c->fn(argc, argv);
    if (ret != 0 && ret != EXIT_USAGE && cmd_cancel) {
        /* stopped by SIGINT/SIGTERM, wherever it was: say so in the status */
        ret = cancel_exit_status();
    }
    /* stdout carries results: a failed write is an error (git's rule). */
    if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0) {
        error_report("write failure on standard output: %s", strerror(errno));
        if (ret == 0) {
            ret = 1;
        }
    }
    free(name);
    return ret;
}

/* lib/io.c's warnings (a malformed BLOCKCTL_FAULT, BLOCKCTL_IOLOG) */
static void print_io_warning(const char *msg)
{
    fprintf(stderr, "blockctl: %s\n", msg);
}

/* what check finds, in qemu-img check's words */
static void print_check_line(const char *text)
{
    fputs(text, stderr);
}

int main(int argc, char **argv)
{
    const char *base = strrchr(argv[0], '/');
    struct top_args a = { 0 };
    struct argp top = { top_options, top_parse, "COMMAND [ARG...]", NULL, NULL, NULL, NULL };
    const struct command *c;
    char *doc;

    base = base ? base + 1 : argv[0];
    io_set_warn_sink(print_io_warning);
    bdev_set_check_sink(print_check_line);
    signal(SIGPIPE, SIG_IGN);
    /* past a file-size limit, a write fails with EFBIG and is reported */
    signal(SIGXFSZ, SIG_IGN);
    if (getenv("BLOCKCTL_LOCKING") && !strcmp(getenv("BLOCKCTL_LOCKING"), "off")) {
        bfile_set_locking(false);
    }

    /* Multicall: "blockctl-info" runs "blockctl info". */
    if (!strncmp(base, "blockctl-", 9)) {
        c = find_command(base + 9);
        if (!c) {
            error_report("unknown command '%s'", base + 9);
            return EXIT_USAGE;
        }
        return run(c, argc, argv);
    }

    if (argc > 1 && !strcmp(argv[1], "-h")) {
        map_dash_h(2, argv);
    }
    doc = top_doc();
    top.doc = doc;
    argp_parse(&top, argc, argv, ARGP_IN_ORDER, NULL, &a);
    free(doc);
    if (a.list) {
        for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
            printf("%s\n", commands[i].name);
        }
        return 0;
    }
    if (a.list_formats) {
        /* the formats -f and -O take (for shell completion) */
        for (const struct format_driver *const *d = bdev_drivers(); *d; d++) {
            if (!(*d)->is_protocol) {
                printf("%s\n", (*d)->name);
            }
        }
        return 0;
    }
    c = find_command(argv[a.cmd_index]);
    if (!c) {
        error_report("unknown command '%s'", argv[a.cmd_index]);
        fprintf(stderr, "Try 'blockctl --help' for the list of commands.\n");
        return EXIT_USAGE;
    }
    return run(c, argc - a.cmd_index, argv + a.cmd_index);
}
