/*
 * blockctl - helpers shared by the subcommands
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/size.h"

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

void report(struct error *err)
{
    error_report_err(err);
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
