/*
 * blockctl - helpers shared by the subcommands
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/copy.h"
#include "lib/size.h"

#include <time.h>

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"

enum output_format parse_output_format(const char *arg, struct argp_state *state)
{
    if (!strcmp(arg, "human")) {
        return OUTPUT_HUMAN;
    }
    if (!strcmp(arg, "json")) {
        return OUTPUT_JSON;
    }
    argp_error(state, "--output must be 'human' or 'json', not '%s'", arg);
    return OUTPUT_HUMAN;
}

uint64_t parse_size_arg(const char *arg, const char *what, struct argp_state *state)
{
    uint64_t v;

    if (size_parse(arg, &v, 0) < 0) {
        argp_error(state, "invalid %s '%s' (a size: digits with an optional suffix k, M, G, "
                   "T, P, E)", what, arg);
    }
    return v;
}

void progress_print(double percent)
{
    printf("    (%3.2f/100%%)\r", percent);
    fflush(stdout);
}

void progress_done(void)
{
    printf("    (100.00/100%%)\r\n");
    fflush(stdout);
}

volatile sig_atomic_t cmd_cancel;
static volatile sig_atomic_t cancel_signal;

static void on_signal(int sig)
{
    __atomic_store_n(&cmd_cancel, 1, __ATOMIC_RELAXED);
    cancel_signal = sig;
    bdev_interrupt_notify();
}

void cancel_install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    bdev_set_interrupt_flag(&cmd_cancel);
}

int cancel_exit_status(void)
{
    return 128 + (cancel_signal ? cancel_signal : SIGINT);
}

enum { OPT_PROGRESS = 0x200, OPT_BANDWIDTH, OPT_BUF_SIZE, OPT_REQUESTS, OPT_STATE_DIR, OPT_RESUME };

static const struct argp_option copy_options[] = {
    { "progress", 'p', "json", OPTION_ARG_OPTIONAL,
      "Progress: % on stderr (-p) or JSON lines (=json)", 0 },
    { "bandwidth", OPT_BANDWIDTH, "RATE", 0, "Copy at most RATE bytes per second (k, M, G)", 0 },
    { "buf-size", OPT_BUF_SIZE, "SIZE", 0, "Copy buffer for all requests in flight (16M)", 0 },
    { "requests", OPT_REQUESTS, "N", 0, "Copies in flight at once (1-64, default 4)", 0 },
    { 0 }
};

/* The journaled copies' options (stream, commit, mirror): the same input. */
static const struct argp_option journal_options[] = {
    { "state-dir", OPT_STATE_DIR, "DIR", 0, "Where the job journal goes (blockctl-job(1))", 0 },
    { "resume", OPT_RESUME, "ID", OPTION_HIDDEN, "(job resume: go on with job ID)", 0 },
    { 0 }
};

static error_t copy_parse(int key, char *arg, struct argp_state *state)
{
    struct copy_opts *o = state->input;

    switch (key) {
    case 'p':
        if (!arg || !strcmp(arg, "human")) {
            o->progress = true;
        } else if (!strcmp(arg, "json")) {
            o->progress_json = true;
        } else {
            argp_error(state, "--progress takes 'json' (or nothing), not '%s'", arg);
        }
        break;
    case OPT_BANDWIDTH:
        o->bandwidth = parse_size_arg(arg, "bandwidth", state);
        break;
    case OPT_BUF_SIZE:
        o->buf_size = parse_size_arg(arg, "buffer size", state);
        if (o->buf_size < (64u << 10) || o->buf_size > (1ULL << 30)) {
            argp_error(state, "--buf-size must be between 64k and 1G");
        }
        break;
    case OPT_STATE_DIR:
        o->state_dir = arg;
        break;
    case OPT_RESUME:
        o->resume = arg;
        break;
    case OPT_REQUESTS: {
        char *end;
        unsigned long n = strtoul(arg, &end, 10);
        if (*end || n < 1 || n > 64) {
            argp_error(state, "--requests must be a number from 1 to 64");
        }
        o->requests = (unsigned)n;
        break;
    }
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

const struct argp copy_opts_argp = { copy_options, copy_parse, NULL, NULL, NULL, NULL, NULL };
const struct argp journal_opts_argp = { journal_options, copy_parse, NULL, NULL, NULL, NULL,
                                        NULL };

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    const struct copy_opts *o = opaque;

    if (o->progress) {
        fprintf(stderr, "    (%3.2f/100%%)\r", total ? done * 100.0 / total : 100.0);
        fflush(stderr);
    }
    if (o->progress_json) {
        printf("{\"done\": %" PRIu64 ", \"total\": %" PRIu64 "}\n", done, total);
        fflush(stdout);
    }
}

void copy_opts_apply(const struct copy_opts *o, struct copy_params *p)
{
    if ((o->progress || o->progress_json) && !cmd_quiet) {
        p->progress = progress_cb;
        p->opaque = (void *)o;
    }
    p->bandwidth = o->bandwidth;
    p->buf_size = o->buf_size;
    p->workers = o->requests;
    p->cancel = &cmd_cancel;
}

void copy_opts_finish(const struct copy_opts *o)
{
    if (o->progress && !cmd_quiet) {
        fprintf(stderr, "\n");
    }
}

void copy_opts_nothing(const struct copy_opts *o)
{
    if (cmd_quiet) {
        return;
    }
    progress_cb((void *)o, 0, 0);
    copy_opts_finish(o);
}

bool opts_want_help(const char *opts)
{
    const char *p = opts;

    while (p && *p) {
        size_t n = strcspn(p, ",");
        if ((n == 4 && !strncmp(p, "help", 4)) || (n == 1 && *p == '?')) {
            return true;
        }
        p += n;
        p += *p == ',';
    }
    return false;
}

/* The name to record for @base in an image living next to @top. */
void append_opts(char **dst, const char *arg)
{
    if (*dst) {
        char *j = xasprintf("%s,%s", *dst, arg);
        free(*dst);
        *dst = j;
    } else {
        *dst = xstrdup(arg);
    }
}


/* "raw, qcow2": the formats -f (or, @create, -O) takes */
static char *format_list(bool create)
{
    const struct format_driver *const *d = bdev_drivers();
    char *list = xstrdup("");

    for (size_t i = 0; d[i]; i++) {
        char *j;
        if (d[i]->is_protocol || (create && !d[i]->create)) {
            continue;
        }
        j = xasprintf("%s%s%s", list, *list ? ", " : "", d[i]->name);
        free(list);
        list = j;
    }
    return list;
}

static const char *format_arg(const char *arg, const char *opt, bool create,
                              struct argp_state *state)
{
    const struct format_driver *drv = bdev_find_driver(arg);

    if (!drv || drv->is_protocol || (create && !drv->create)) {
        char *list = format_list(create);
        argp_error(state, "invalid format '%s' for %s (valid: %s)", arg, opt,
                     list);
        free(list);
    }
    return arg;
}

const char *parse_format_arg(const char *arg, const char *opt, struct argp_state *state)
{
    return format_arg(arg, opt, false, state);
}

const char *parse_out_format_arg(const char *arg, const char *opt, struct argp_state *state)
{
    return format_arg(arg, opt, true, state);
}

int create_opts_parse(const struct format_driver *drv, const char *str, struct optlist *o,
                      const char *file)
{
    struct error *err = NULL;

    if (str && opts_parse(o, str, drv->create_opts, &err) < 0) {
        if (file) {
            error_prefix(&err, "'%s': ", file);
        }
        report(err);
        return EXIT_USAGE;
    }
    return 0;
}

int create_opts_check(const struct format_driver *drv, const struct optlist *o,
                      const char *file)
{
    struct error *err = NULL;

    int r;

    if (drv->check_create && (r = drv->check_create(file ? file : "", o, &err)) < 0) {
        if (!file && err && !strncmp(err->msg, "'': ", 4)) {
            /* no file yet: the message is about the -o list alone */
            memmove(err->msg, err->msg + 4, strlen(err->msg + 4) + 1);
        }
        report(err);
        /* a value that is wrong is a usage error; options that are each
         * right but do not go together fail as in qemu-img */
        return r == -EINVAL ? EXIT_USAGE : 1;
    }
    return 0;
}

int create_opts_validate(const char *fmt, const char *str)
{
    const struct format_driver *drv = bdev_find_driver(fmt);
    struct optlist o = { 0 };
    int r;

    if (!drv || !str || opts_want_help(str)) {
        return 0;
    }
    r = create_opts_parse(drv, str, &o, NULL);
    if (r == 0) {
        r = create_opts_check(drv, &o, NULL);
    }
    opts_free(&o);
    return r;
}

void parse_sparse_arg(const char *arg, uint64_t *size, bool *no_sparse,
                      struct argp_state *state)
{
    uint64_t v;

    if (size_parse(arg, &v, 0) < 0 || v % 512 || v > (16u << 20)) {
        argp_error(state, "invalid buffer size for sparse output '%s': valid "
                     "sizes are multiples of 512 up to 16777216 (k, M suffixes); 0 disables "
                     "sparse detection (fully allocates output)", arg);
    }
    *size = v;
    *no_sparse = v == 0;
}

unsigned parse_coroutines_arg(const char *arg, struct argp_state *state)
{
    char *end;
    unsigned long n;

    errno = 0;
    n = strtoul(arg, &end, 10);
    if (!*arg || *end || errno || n < 1 || n > 16) {
        argp_error(state, "invalid number of coroutines '%s': allowed is "
                     "1 to 16", arg);
    }
    return (unsigned)n;
}
