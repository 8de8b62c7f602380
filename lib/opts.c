/*
 * blockctl - "-o" option lists
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/opts.h"
#include "lib/size.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void opts_set(struct optlist *l, const char *key, const char *value)
{
    for (size_t i = 0; i < l->n; i++) {
        if (!strcmp(l->v[i].key, key)) {
            free(l->v[i].value);
            l->v[i].value = xstrdup(value);
            return;
        }
    }
    l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n].key = xstrdup(key);
    l->v[l->n].value = xstrdup(value);
    l->n++;
}

static const struct opt_desc *find_desc(const struct opt_desc *desc, const char *key)
{
    for (; desc && desc->name; desc++) {
        if (!strcmp(desc->name, key)) {
            return desc;
        }
    }
    return NULL;
}

int opts_parse(struct optlist *l, const char *str, const struct opt_desc *desc,
               struct error **errp)
{
    const char *p = str;

    if (!*p) {
        error_setg(errp, "invalid option list '': no option given");
        return -EINVAL;
    }
    while (*p) {
        const char *eq = p;
        char *key, *val;
        size_t vlen = 0;

        while (*eq && *eq != '=' && *eq != ',') {
            eq++;
        }
        key = xstrndup(p, eq - p);
        if (*eq != '=') {
            /* Bare key: "help", or a flag meaning "on". */
            val = xstrdup(!strcmp(key, "help") || !strcmp(key, "?") ? "" : "on");
            p = *eq ? eq + 1 : eq;
        } else {
            const char *q = eq + 1;
            val = xmalloc(strlen(q) + 1);
            while (*q) {
                if (*q == ',') {
                    if (q[1] == ',') {
                        val[vlen++] = ',';
                        q += 2;
                        continue;
                    }
                    break;
                }
                val[vlen++] = *q++;
            }
            val[vlen] = '\0';
            p = *q ? q + 1 : q;
        }
        if (!*key) {
            error_setg(errp, "invalid option list '%s': empty option name", str);
            free(key);
            free(val);
            return -EINVAL;
        }
        if (desc && strcmp(key, "help") && strcmp(key, "?") && !find_desc(desc, key)) {
            char *valid = xstrdup("");
            for (const struct opt_desc *d = desc; d->name; d++) {
                char *j = xasprintf("%s%s%s", valid, *valid ? ", " : "", d->name);
                free(valid);
                valid = j;
            }
            error_setg(errp, "invalid parameter '%s' (valid: %s)", key, valid);
            free(valid);
            free(key);
            free(val);
            return -EINVAL;
        }
        opts_set(l, key, val);
        if (desc && find_desc(desc, key)) {
            /* a value of the wrong type is an error of the list itself */
            const struct opt_desc *d = find_desc(desc, key);
            bool bv;
            uint64_t nv;
            int r = d->type == OPT_BOOL     ? opts_get_bool(l, key, &bv, errp)
                    : d->type == OPT_SIZE   ? opts_get_size(l, key, &nv, errp)
                    : d->type == OPT_NUMBER ? opts_get_number(l, key, &nv, errp)
                                            : 0;
            if (r < 0) {
                free(key);
                free(val);
                return -EINVAL;
            }
        }
        free(key);
        free(val);
    }
    return 0;
}

const char *opts_get(const struct optlist *l, const char *key)
{
    for (size_t i = 0; i < l->n; i++) {
        if (!strcmp(l->v[i].key, key)) {
            return l->v[i].value;
        }
    }
    return NULL;
}

int opts_get_bool(const struct optlist *l, const char *key, bool *out, struct error **errp)
{
    const char *v = opts_get(l, key);

    if (!v) {
        return 0;
    }
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false")) {
        *out = false;
    } else {
        error_setg(errp, "parameter '%s' expects 'on' or 'off'", key);
        return -EINVAL;
    }
    return 1;
}

int opts_get_size(const struct optlist *l, const char *key, uint64_t *out, struct error **errp)
{
    const char *v = opts_get(l, key);

    if (!v) {
        return 0;
    }
    if (size_parse(v, out, 0) < 0) {
        error_setg(errp, "parameter '%s' expects a size, not '%s' (digits with an optional "
                   "suffix k, M, G, T, P or E)", key, v);
        return -EINVAL;
    }
    return 1;
}

int opts_get_number(const struct optlist *l, const char *key, uint64_t *out,
                    struct error **errp)
{
    const char *v = opts_get(l, key);
    char *end;

    if (!v) {
        return 0;
    }
    errno = 0;
    *out = strtoull(v, &end, 0);
    if (!*v || *end || errno || *v == '-') {
        error_setg(errp, "parameter '%s' expects a number, not '%s'", key, v);
        return -EINVAL;
    }
    return 1;
}

void opts_free(struct optlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].key);
        free(l->v[i].value);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}
