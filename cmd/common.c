/*
 * blockctl - helpers shared by the subcommands
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/copy.h"
#include "lib/size.h"

#include <time.h>

#include <argp.h>
#include <stdio.h>
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
      "Show progress (-p: percentage on stderr; --progress=json: JSON lines on stdout)", 0 },
    { "bandwidth", OPT_BANDWIDTH, "RATE", 0, "Copy at most RATE bytes per second (k, M, G)", 0 },
    { "buf-size", OPT_BUF_SIZE, "SIZE", 0, "Copy buffer for all requests in flight (16M)", 0 },
    { "requests", OPT_REQUESTS, "N", 0, "Copies in flight at once (1-64, default 4)", 0 },
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
    if (o->progress || o->progress_json) {
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
    if (o->progress) {
        fprintf(stderr, "\n");
    }
}

void copy_opts_nothing(const struct copy_opts *o)
{
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

