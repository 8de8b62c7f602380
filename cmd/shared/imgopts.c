/*
 * blockctl - the options every image command shares, parsed once: -f,
 * -U, --output, -q, -t and -T mean the same wherever they are taken
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A command asks img_opts_argp() for the ones it takes and lists the
 * result as an argp child whose input is its struct img_opts.
 */
#include "lib/compiler.h"

#include <argp.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

enum { OPT_OUTPUT = 0x300 };

bool cmd_quiet;

static const struct {
    unsigned which;
    struct argp_option opt;
} all_options[] = {
    { IMGOPT_FORMAT,
      { "format", 'f', "FMT", 0, "Image format (raw, qcow2); probed when omitted", 0 } },
    { IMGOPT_FORMAT_NEW,
      { "format", 'f', "FMT", 0, "Image format: raw (default) or qcow2", 0 } },
    { IMGOPT_SHARE,
      { "force-share", 'U', NULL, 0, "Read images another process writes (read-only)", 0 } },
    { IMGOPT_OUTPUT,
      { "output", OPT_OUTPUT, "FMT", 0, "Output format: human (default) or json", 0 } },
    { IMGOPT_QUIET, { "quiet", 'q', NULL, 0, "Quiet: print nothing but errors", 0 } },
    { IMGOPT_CACHE,
      { "cache", 't', "MODE", 0, "Written images' cache: writeback, none, unsafe...", 0 } },
    { IMGOPT_SRC_CACHE,
      { "source-cache", 'T', "MODE", 0, "Read-only images' cache (as -t, writeback)", 0 } },
};

static unsigned taken;

/* qemu-img's words, and what is valid */
static unsigned cache_arg(const char *arg, const char *which, struct argp_state *state)
{
    unsigned flags = 0;

    if (bdev_cache_parse(arg, &flags) < 0) {
        argp_error(state, "Invalid %scache option: %s (valid: none, writeback, writethrough, "
                   "directsync, unsafe)", which, arg);
    }
    return flags;
}

static error_t img_parse(int key, char *arg, struct argp_state *state)
{
    struct img_opts *o = state->input;

    switch (key) {
    case 'f':
        o->format = (taken & IMGOPT_FORMAT_NEW) ? parse_out_format_arg(arg, "-f", state)
                                                : parse_format_arg(arg, "-f", state);
        break;
    case 'U':
        o->force_share = true;
        break;
    case OPT_OUTPUT:
        o->output = parse_output_format(arg, state);
        break;
    case 'q':
        o->quiet = true;
        cmd_quiet = true;
        break;
    case 't':
        o->cache = cache_arg(arg, "", state);
        o->cache_name = arg;
        break;
    case 'T':
        o->src_cache = cache_arg(arg, "source ", state);
        o->src_cache_name = arg;
        break;
    case ARGP_KEY_SUCCESS:
        /* -q: nothing on stdout, whatever prints there (errors go to stderr) */
        if (o->quiet && !freopen("/dev/null", "w", stdout)) {
            argp_failure(state, 1, errno, "cannot silence stdout");
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

const struct argp *img_opts_argp(unsigned which)
{
    static struct argp_option opts[ARRAY_SIZE(all_options) + 1];
    static struct argp a = { opts, img_parse, NULL, NULL, NULL, NULL, NULL };
    size_t n = 0;

    taken = which;
    for (size_t i = 0; i < ARRAY_SIZE(all_options); i++) {
        if (which & all_options[i].which) {
            opts[n++] = all_options[i].opt;
        }
    }
    memset(&opts[n], 0, sizeof(opts[n]));
    return &a;
}

/* Print the option table as "-o help" does. */
void opts_print_help(const char *format, const struct opt_desc *desc)
{
    static const char *const types[] = { "str", "bool (on/off)", "size", "num" };

    printf("Supported options for '%s':\n", format);
    for (; desc && desc->name; desc++) {
        if (desc->unsupported) {
            continue;
        }
        printf("  %-22s <%s>\n", desc->name, types[desc->type]);
        if (desc->help) {
            printf("      %s\n", desc->help);
        }
    }
}
