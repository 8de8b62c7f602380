/*
 * qmp-call - lib/qmp's client on the command line, for the tests
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 *   qmp-call [--timeout MS] SOCKET STEP...
 *
 * Connects (greeting, negotiation), then for each STEP:
 *   CMD or CMD=ARGS   run CMD (ARGS: a JSON object) and print
 *                     "ok CMD: RETURN" or "error CMD: CLASS: DESC"
 *   @NAME             wait (up to the timeout) for the next event, print
 *                     "event NAME: DATA" or "no event"; fails unless NAME
 * JSON is printed as QEMU writes it.  Exit status: 0 if every step
 * succeeded, 1 if one failed (the others still run), 2 if connecting did.
 */
#include "lib/compiler.h"
#include "lib/error.h"
#include "lib/qmp/internal.h"
#include "lib/qmp/qmp.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static void print_json(const char *prefix, json_object *o)
{
    char *s = qmp_json_string(o);

    printf("%s%s\n", prefix, s);
    free(s);
}

int main(int argc, char **argv)
{
    unsigned timeout = 5000;
    struct qmp_client *c;
    struct error *err = NULL;
    int i = 1, status = 0;

    signal(SIGPIPE, SIG_IGN);
    error_progname = "qmp-call";
    if (i + 1 < argc && !strcmp(argv[i], "--timeout")) {
        timeout = strtoul(argv[i + 1], NULL, 10);
        i += 2;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: qmp-call [--timeout MS] SOCKET STEP...\n");
        return 2;
    }
    c = qmp_client_connect(argv[i++], timeout, &err);
    if (!c) {
        error_report_err(err);
        return 2;
    }
    for (; i < argc; i++) {
        char *step = xstrdup(argv[i]), *eq = strchr(step, '=');
        json_object *args = NULL, *ret = NULL;

        if (step[0] == '@') {
            json_object *ev = qmp_client_event(c, (int)timeout), *name, *data = NULL;
            if (!ev) {
                printf("no event\n");
                status = 1;
            } else {
                char *prefix;
                json_object_object_get_ex(ev, "event", &name);
                json_object_object_get_ex(ev, "data", &data);
                prefix = xasprintf("event %s: ", json_object_get_string(name));
                print_json(prefix, data);
                if (strcmp(json_object_get_string(name), step + 1)) {
                    status = 1;
                }
                free(prefix);
                json_object_put(ev);
            }
            free(step);
            continue;
        }
        if (eq) {
            *eq = 0;
            args = json_tokener_parse(eq + 1);
            if (!json_object_is_type(args, json_type_object)) {
                fprintf(stderr, "qmp-call: arguments of %s are not a JSON object\n", step);
                return 2;
            }
        }
        if (qmp_client_execute(c, step, args, &ret, &err) == 0) {
            char *prefix = xasprintf("ok %s: ", step);
            print_json(prefix, ret);
            free(prefix);
            json_object_put(ret);
        } else {
            printf("error %s: %s: %s\n", step, error_class(err), err->msg);
            error_free(err);
            err = NULL;
            status = 1;
        }
        fflush(stdout);
        free(step);
    }
    qmp_client_close(c);
    return status;
}
