/*
 * blockctl - "-o key=val,key=val" option lists (QemuOpts syntax: a literal
 * comma inside a value is written ",,") checked against a table
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef BLOCKCTL_LIB_OPTS_H
#define BLOCKCTL_LIB_OPTS_H

#include "lib/compiler.h"
#include "lib/error.h"

enum opt_type { OPT_STRING, OPT_BOOL, OPT_SIZE, OPT_NUMBER };

struct opt_desc {
    const char *name;
    enum opt_type type;
    const char *help;
    bool unsupported;   /* known (its use is refused with a reason), not listed by -o help */
};

struct opt {
    char *key;
    char *value;
};

struct optlist {
    struct opt *v;
    size_t n;
};

/*
 * Parse @str and append to @l (later keys override earlier ones).  When
 * @desc is non-NULL, unknown keys are an error.  Returns 0 or -EINVAL.
 */
int opts_parse(struct optlist *l, const char *str, const struct opt_desc *desc,
               struct error **errp);
/* Set @key to @value, replacing an existing value. */
void opts_set(struct optlist *l, const char *key, const char *value);
/* Value of @key, or NULL. */
const char *opts_get(const struct optlist *l, const char *key);
/* Typed getters: return 1 and set *out when present, 0 when absent,
 * -EINVAL (error set) when the value is malformed. */
int opts_get_bool(const struct optlist *l, const char *key, bool *out, struct error **errp);
int opts_get_size(const struct optlist *l, const char *key, uint64_t *out, struct error **errp);
int opts_get_number(const struct optlist *l, const char *key, uint64_t *out,
                    struct error **errp);
void opts_free(struct optlist *l);

#endif
