/*
 * blockctl - QMP: checking a message and running its command
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The checks, their order and their messages are QEMU 7.2's (qmp_dispatch
 * and the QAPI input visitor), as observed: the message's members are
 * checked in QDict order, then capabilities negotiation, the command's
 * existence, its arguments in table order (a missing or mistyped one),
 * and last the arguments the table does not know (in QDict order).
 */
#include "lib/compiler.h"
#include "lib/qmp/internal.h"

#include <errno.h>
#include <string.h>

json_object *qmp_error_response(const char *cls, const char *desc, bool has_id, json_object *id)
{
    json_object *err = json_object_new_object();
    json_object *rsp = json_object_new_object();

    json_object_object_add(err, "class", json_object_new_string(cls));
    json_object_object_add(err, "desc", json_object_new_string(desc));
    json_object_object_add(rsp, "error", err);
    if (has_id) {
        json_object_object_add(rsp, "id", id);
    }
    return rsp;
}

/* The "id" member to echo (json-c's null is NULL, hence @has_id). */
static json_object *take_id(json_object *msg, bool *has_id)
{
    json_object *id = NULL;

    *has_id = json_object_is_type(msg, json_type_object) &&
              json_object_object_get_ex(msg, "id", &id);
    return json_object_get(id);
}

json_object *qmp_version_object(const struct qmp_dispatch *d)
{
    json_object *q = json_object_new_object(), *v = json_object_new_object();

    /* QAPI's member order: it decides the order within a QDict bucket */
    json_object_object_add(q, "major", json_object_new_int(d->version_major));
    json_object_object_add(q, "minor", json_object_new_int(d->version_minor));
    json_object_object_add(q, "micro", json_object_new_int(d->version_micro));
    json_object_object_add(v, "qemu", q);
    json_object_object_add(v, "package", json_object_new_string(d->package ? d->package : ""));
    return v;
}

/* --- argument checking --- */

static bool get_int64(json_object *v, int64_t *out)
{
    if (!json_object_is_type(v, json_type_int)) {
        return false;
    }
    *out = json_object_get_int64(v);
    /* a uint64 above INT64_MAX reads back as INT64_MAX */
    return *out != INT64_MAX || json_object_get_uint64(v) == (uint64_t)INT64_MAX;
}

static const char *type_name(enum qmp_type t)
{
    switch (t) {
    case QMP_STR:
    case QMP_ENUM:
        return "string";
    case QMP_INT:
    case QMP_UINT64:
    case QMP_UINT32:
        return "integer";
    case QMP_BOOL:
        return "boolean";
    case QMP_NUMBER:
        return "number";
    case QMP_OBJECT:
        return "object";
    case QMP_ARRAY:
        return "array";
    case QMP_ANY:
    case QMP_ALTERNATE:
        break;
    }
    return "any";
}

/* Does @v have the JSON type of @a's values (an alternate's branch)? */
static bool json_type_fits(json_object *v, enum qmp_type t)
{
    switch (t) {
    case QMP_STR:
    case QMP_ENUM:
        return json_object_is_type(v, json_type_string);
    case QMP_INT:
    case QMP_UINT64:
    case QMP_UINT32:
        return json_object_is_type(v, json_type_int);
    case QMP_NUMBER:
        return json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
    case QMP_BOOL:
        return json_object_is_type(v, json_type_boolean);
    case QMP_OBJECT:
        return json_object_is_type(v, json_type_object);
    case QMP_ARRAY:
        return json_object_is_type(v, json_type_array);
    case QMP_ANY:
        return true;
    case QMP_ALTERNATE:
        break;
    }
    return false;
}

static int check_members(json_object *obj, const struct qmp_arg *obj_arg, const char *prefix,
                         struct error **errp);
static int check_value(json_object **vp, const struct qmp_arg *a, const char *name,
                       const char *bare, struct error **errp);

/*
 * Check @*vp against @a, naming it @name ("x.y[2].z"), or @bare where
 * QEMU names it by its member name alone ("z"; NULL in a list: "null");
 * may replace *vp by its normalised form (a negative integer given for a
 * uint64 becomes its two's complement, as QEMU reads it).
 */
static int check_value(json_object **vp, const struct qmp_arg *a, const char *name,
                       const char *bare, struct error **errp)
{
    json_object *v = *vp;
    int64_t i;

    switch (a->type) {
    case QMP_ANY:
        return 0;
    case QMP_STR:
        if (json_object_is_type(v, json_type_string)) {
            return 0;
        }
        break;
    case QMP_ENUM:
        if (json_object_is_type(v, json_type_string)) {
            const char *s = json_object_get_string(v);
            for (size_t k = 0; a->values && a->values[k]; k++) {
                if (!strcmp(s, a->values[k])) {
                    return 0;
                }
            }
            error_setg(errp, "Parameter '%s' does not accept value '%s'",
                       bare ? bare : "null", s);
            return -EINVAL;
        }
        break;
    case QMP_INT:
        if (get_int64(v, &i)) {
            return 0;
        }
        break;
    case QMP_UINT64:
    case QMP_UINT32: {
        uint64_t u;
        if (!json_object_is_type(v, json_type_int)) {
            error_setg(errp, "Parameter '%s' expects uint64", name);
            return -EINVAL;
        }
        if (get_int64(v, &i)) {
            u = (uint64_t)i;
            if (i < 0) {
                /* the caller puts it in the container, which drops @v */
                *vp = json_object_new_uint64(u);
            }
        } else {
            u = json_object_get_uint64(v);
        }
        if (a->type == QMP_UINT32 && u > UINT32_MAX) {
            error_setg(errp, "Parameter '%s' expects uint32_t", bare ? bare : "null");
            return -EINVAL;
        }
        return 0;
    }
    case QMP_BOOL:
        if (json_object_is_type(v, json_type_boolean)) {
            return 0;
        }
        break;
    case QMP_NUMBER:
        if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)) {
            return 0;
        }
        break;
    case QMP_OBJECT:
        if (json_object_is_type(v, json_type_object)) {
            return a->members ? check_members(v, a, name, errp) : 0;
        }
        break;
    case QMP_ALTERNATE:
        for (const struct qmp_arg *b = a->branches; b && b->name; b++) {
            if (json_type_fits(v, b->type)) {
                return check_value(vp, b, name, bare, errp);
            }
        }
        error_setg(errp, "Invalid parameter type for '%s', expected: %s", bare ? bare : "null",
                   a->type_name);
        return -EINVAL;
    case QMP_ARRAY:
        if (json_object_is_type(v, json_type_array)) {
            size_t n = json_object_array_length(v);
            for (size_t k = 0; a->element && k < n; k++) {
                json_object *e = json_object_array_get_idx(v, k), *e0 = e;
                char *en = xasprintf("%s[%zu]", name, k);
                int r = check_value(&e, a->element, en, NULL, errp);
                free(en);
                if (e != e0) {
                    /* takes over the normalised element, drops the old */
                    json_object_array_put_idx(v, k, e);
                }
                if (r < 0) {
                    return r;
                }
            }
            return 0;
        }
        break;
    }
    error_setg(errp, "Invalid parameter type for '%s', expected: %s", name, type_name(a->type));
    return -EINVAL;
}

/*
 * Which unknown member QEMU names when there are several.  Its input
 * visitor puts the names of an object's members (in QDict order) in a
 * GLib hash table of strings, removes each member it visits (in schema
 * order) and names the first one left in the table.  So this models
 * GLib's GHashTable (2.74): g_str_hash; 2^shift slots, the home slot
 * (hash * 11) % prime_mod[shift]; quadratic probing (+1, +2, +3...);
 * removal leaves a tombstone; after an insertion into an unused slot or a
 * removal, the table grows when used slots (tombstones included) reach
 * 16/17 of the size and shrinks when the members are fewer than a
 * quarter of it (and it is bigger than 8), to 2^(bits of
 * members * 1.333), at least 8; it then rehashes in place, in slot
 * order, each member claiming its first free new slot and evicting
 * (and rehashing next) a member not yet moved that sits there.
 */
struct gtable {
    unsigned shift, size, mod, nnodes, noccupied;
    uint32_t *hashes;       /* 0: unused, 1: tombstone */
    const char **keys;
};

static uint32_t g_str_hash_of(const char *s)
{
    uint32_t h = 5381;

    for (const signed char *p = (const signed char *)s; *p; p++) {
        h = (h << 5) + h + (uint32_t)(int32_t)*p;
    }
    return h < 2 ? 2 : h;
}

static unsigned gtable_home(const struct gtable *t, uint32_t h)
{
    return (uint32_t)(h * 11u) % t->mod;
}

static void gtable_set_shift(struct gtable *t, unsigned shift)
{
    static const unsigned prime_mod[] = {
        1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521,
        131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213,
    };

    assert(shift < ARRAY_SIZE(prime_mod));
    t->shift = shift;
    t->size = 1u << shift;
    t->mod = prime_mod[shift];
}

static void gtable_resize(struct gtable *t)
{
    unsigned old_size = t->size, n = (unsigned)(t->nnodes * 1.333), shift = 0;
    uint32_t *hashes;
    const char **keys;
    bool *moved;

    while (n) {
        shift++;
        n >>= 1;
    }
    gtable_set_shift(t, MAX(shift, 3u));
    n = MAX(old_size, t->size);
    hashes = xcalloc(n, sizeof(*hashes));
    keys = xcalloc(n, sizeof(*keys));
    moved = xcalloc(n, sizeof(*moved));
    memcpy(hashes, t->hashes, old_size * sizeof(*hashes));
    memcpy(keys, t->keys, old_size * sizeof(*keys));
    for (unsigned i = 0; i < old_size; i++) {
        uint32_t h = hashes[i];
        const char *k;
        if (h < 2) {
            hashes[i] = 0;      /* tombstones go */
            continue;
        }
        if (moved[i]) {
            continue;
        }
        hashes[i] = 0;
        k = keys[i];
        keys[i] = NULL;
        for (;;) {
            unsigned idx = gtable_home(t, h), step = 0;
            uint32_t h2;
            const char *k2;
            while (moved[idx]) {
                idx = (idx + ++step) & (t->size - 1);
            }
            moved[idx] = true;
            h2 = hashes[idx];
            k2 = keys[idx];
            hashes[idx] = h;
            keys[idx] = k;
            if (h2 < 2) {
                break;
            }
            h = h2;     /* evicted: place it next */
            k = k2;
        }
    }
    free(moved);
    free(t->hashes);
    free(t->keys);
    t->hashes = hashes;
    t->keys = keys;
    t->noccupied = t->nnodes;
}

static void gtable_maybe_resize(struct gtable *t)
{
    if ((t->size > t->nnodes * 4 && t->size > 8) || t->size <= t->noccupied + t->noccupied / 16) {
        gtable_resize(t);
    }
}

/* The slot of @key, or where to insert it (first tombstone or unused). */
static unsigned gtable_lookup(const struct gtable *t, const char *key, uint32_t h, bool *found)
{
    unsigned idx = gtable_home(t, h), step = 0, tomb = 0;
    bool have_tomb = false;

    while (t->hashes[idx]) {
        if (t->hashes[idx] == h && !strcmp(t->keys[idx], key)) {
            *found = true;
            return idx;
        }
        if (t->hashes[idx] == 1 && !have_tomb) {
            tomb = idx;
            have_tomb = true;
        }
        idx = (idx + ++step) & (t->size - 1);
    }
    *found = false;
    return have_tomb ? tomb : idx;
}

static void gtable_insert(struct gtable *t, const char *key)
{
    uint32_t h = g_str_hash_of(key);
    bool found;
    unsigned idx = gtable_lookup(t, key, h, &found);
    bool was_unused;

    if (found) {
        return;
    }
    was_unused = t->hashes[idx] == 0;
    t->hashes[idx] = h;
    t->keys[idx] = key;
    t->nnodes++;
    if (was_unused) {
        t->noccupied++;
        gtable_maybe_resize(t);
    }
}

static void gtable_remove(struct gtable *t, const char *key)
{
    bool found;
    unsigned idx = gtable_lookup(t, key, g_str_hash_of(key), &found);

    if (!found) {
        return;
    }
    t->hashes[idx] = 1;
    t->keys[idx] = NULL;
    t->nnodes--;
    gtable_maybe_resize(t);
}

static const char *unexpected_member(json_object *obj, const struct qmp_arg *args,
                                     const struct qmp_arg *more)
{
    size_t n = json_object_object_length(obj);
    const char **keys = xcalloc(n ? n : 1, sizeof(*keys));
    const char *found = NULL;
    struct gtable t = { 0 };

    gtable_set_shift(&t, 3);
    t.hashes = xcalloc(t.size, sizeof(*t.hashes));
    t.keys = xcalloc(t.size, sizeof(*t.keys));
    qmp_json_members(obj, keys, NULL);
    for (size_t i = 0; i < n; i++) {
        gtable_insert(&t, keys[i]);
    }
    for (const struct qmp_arg *a = args; a && a->name; a++) {
        gtable_remove(&t, a->name);
    }
    for (const struct qmp_arg *a = more; a && a->name; a++) {
        gtable_remove(&t, a->name);
    }
    for (unsigned i = 0; i < t.size && !found; i++) {
        if (t.hashes[i] >= 2) {
            found = t.keys[i];
        }
    }
    free(t.hashes);
    free(t.keys);
    free(keys);
    assert(found);
    return found;
}

/* Check the members @args lists; count in *known those present. */
static int check_member_list(json_object *obj, const struct qmp_arg *args, const char *prefix,
                             size_t *known, struct error **errp)
{
    for (const struct qmp_arg *a = args; a && a->name; a++) {
        json_object *v, *v0;
        char *name;
        int r;

        if (!json_object_object_get_ex(obj, a->name, &v)) {
            if (!a->optional) {
                if (prefix) {
                    error_setg(errp, "Parameter '%s.%s' is missing", prefix, a->name);
                } else {
                    error_setg(errp, "Parameter '%s' is missing", a->name);
                }
                return -EINVAL;
            }
            continue;
        }
        (*known)++;
        name = prefix ? xasprintf("%s.%s", prefix, a->name) : xstrdup(a->name);
        v0 = v;
        r = check_value(&v, a, name, a->name, errp);
        free(name);
        if (v != v0) {
            json_object_object_add(obj, a->name, v);
        }
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

/* The members of a union's variant (NULL if none) */
static const struct qmp_arg *variant_members(json_object *obj, const struct qmp_arg *obj_arg)
{
    const char *tag = NULL;
    json_object *v;

    if (!obj_arg->discriminator) {
        return NULL;
    }
    if (json_object_object_get_ex(obj, obj_arg->discriminator, &v)) {
        tag = json_object_get_string(v);
    }
    for (const struct qmp_variant *var = obj_arg->variants; tag && var && var->tag; var++) {
        if (!strcmp(var->tag, tag)) {
            return var->members;
        }
    }
    return NULL;
}

/*
 * Check the object @obj against @obj_arg: the members (the base's, then
 * the variant's for a union), then the unknown ones.
 */
static int check_members(json_object *obj, const struct qmp_arg *obj_arg, const char *prefix,
                         struct error **errp)
{
    size_t n = json_object_object_length(obj), known = 0;
    const struct qmp_arg *more;
    int r;

    r = check_member_list(obj, obj_arg->members, prefix, &known, errp);
    if (r < 0) {
        return r;
    }
    /* the discriminator is a known value now */
    more = variant_members(obj, obj_arg);
    r = check_member_list(obj, more, prefix, &known, errp);
    if (r < 0) {
        return r;
    }
    if (known < n) {
        const char *key = unexpected_member(obj, obj_arg->members, more);
        if (prefix) {
            error_setg(errp, "Parameter '%s.%s' is unexpected", prefix, key);
        } else {
            error_setg(errp, "Parameter '%s' is unexpected", key);
        }
        return -EINVAL;
    }
    return 0;
}

int qmp_check_args(json_object *args, const struct qmp_arg *table, struct error **errp)
{
    const struct qmp_arg top = { "", QMP_OBJECT, false, NULL, .members = table };

    if (table && table[0].name && !table[0].name[0] && table[0].discriminator) {
        return check_members(args, &table[0], NULL, errp);   /* boxed: the union itself */
    }
    return check_members(args, &top, NULL, errp);
}

/* --- built-in commands --- */

static const char *const capability_values[] = { "oob", NULL };
static const struct qmp_arg capability_elem = { "", QMP_ENUM, false, capability_values };
static const struct qmp_arg capabilities_args[] = {
    { "enable", QMP_ARRAY, true, .element = &capability_elem },
    { NULL },
};

static const struct qmp_command builtins[] = {
    { "qmp_capabilities", NULL, capabilities_args },
    { "query-version", NULL, NULL },
    { "query-commands", NULL, NULL },
    { NULL },
};

static const struct qmp_command *find_command(const struct qmp_dispatch *d, const char *name)
{
    for (const struct qmp_command *c = builtins; c->name; c++) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    for (const struct qmp_command *c = d->commands; c && c->name; c++) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

static json_object *query_commands(const struct qmp_dispatch *d)
{
    json_object *list = json_object_new_array();
    size_t n = 0;

    /* QEMU lists the commands in the reverse order of registration;
     * the built-ins are registered first */
    while (d->commands && d->commands[n].name) {
        n++;
    }
    for (size_t i = n; i-- > 0;) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(d->commands[i].name));
        json_object_array_add(list, o);
    }
    for (size_t i = ARRAY_SIZE(builtins) - 1; i-- > 0;) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(builtins[i].name));
        json_object_array_add(list, o);
    }
    return list;
}

static int run_builtin(const struct qmp_dispatch *d, const char *name, json_object *args,
                       bool *negotiated, json_object **ret, struct error **errp)
{
    if (!strcmp(name, "qmp_capabilities")) {
        json_object *en;
        struct qmp_buf missing = { 0 };
        if (*negotiated) {
            error_setg(errp, "Capabilities negotiation is already complete, command ignored");
            error_set_class(errp, QMP_ERR_COMMAND_NOT_FOUND);
            return -EINVAL;
        }
        /* we offer no capability: any one asked for is missing */
        if (json_object_object_get_ex(args, "enable", &en)) {
            size_t n = json_object_array_length(en);
            for (size_t i = 0; i < n; i++) {
                qmp_buf_addf(&missing, "%s%s", i ? ", " : "",
                             json_object_get_string(json_object_array_get_idx(en, i)));
            }
        }
        if (missing.len) {
            error_setg(errp, "Capability %s not available", missing.data);
            qmp_buf_free(&missing);
            return -EINVAL;
        }
        *negotiated = true;
        return 0;
    }
    if (!strcmp(name, "query-version")) {
        *ret = qmp_version_object(d);
        return 0;
    }
    if (!strcmp(name, "query-commands")) {
        *ret = query_commands(d);
        return 0;
    }
    BUG("QMP: no built-in command %s", name);
}

/* --- a message --- */

/* The first problem of the message's members, in QDict order. */
static const char *check_message(json_object *msg, char **msgbuf)
{
    size_t n = json_object_object_length(msg);
    const char **keys = xcalloc(n ? n : 1, sizeof(*keys));
    json_object **vals = xcalloc(n ? n : 1, sizeof(*vals));
    bool has_execute = false;

    *msgbuf = NULL;
    qmp_json_members(msg, keys, vals);
    for (size_t i = 0; i < n && !*msgbuf; i++) {
        if (!strcmp(keys[i], "execute")) {
            if (!json_object_is_type(vals[i], json_type_string)) {
                *msgbuf = xstrdup("QMP input member 'execute' must be a string");
            }
            has_execute = true;
        } else if (!strcmp(keys[i], "arguments")) {
            if (!json_object_is_type(vals[i], json_type_object)) {
                *msgbuf = xstrdup("QMP input member 'arguments' must be an object");
            }
        } else if (strcmp(keys[i], "id")) {
            /* "exec-oob" included: out-of-band execution is not offered */
            *msgbuf = xasprintf("QMP input member '%s' is unexpected", keys[i]);
        }
    }
    if (!*msgbuf && !has_execute) {
        *msgbuf = xstrdup("QMP input lacks member 'execute'");
    }
    free(keys);
    free(vals);
    return *msgbuf;
}

json_object *qmp_dispatch(const struct qmp_dispatch *d, json_object *msg, bool *negotiated)
{
    bool has_id;
    json_object *id = take_id(msg, &has_id), *args = NULL, *ret = NULL, *rsp, *v;
    const struct qmp_command *cmd;
    struct error *err = NULL;
    const char *name;
    char *problem;

    if (!json_object_is_type(msg, json_type_object)) {
        rsp = qmp_error_response(QMP_ERR_GENERIC, "QMP input must be a JSON object", has_id, id);
        goto out;
    }
    if (check_message(msg, &problem)) {
        rsp = qmp_error_response(QMP_ERR_GENERIC, problem, has_id, id);
        free(problem);
        goto out;
    }
    json_object_object_get_ex(msg, "execute", &v);
    name = json_object_get_string(v);
    cmd = find_command(d, name);
    if (!*negotiated && (!cmd || strcmp(name, "qmp_capabilities"))) {
        rsp = qmp_error_response(QMP_ERR_COMMAND_NOT_FOUND,
                                 "Expecting capabilities negotiation with 'qmp_capabilities'",
                                 has_id, id);
        goto out;
    }
    if (!cmd) {
        char *desc = xasprintf("The command %s has not been found", name);
        rsp = qmp_error_response(QMP_ERR_COMMAND_NOT_FOUND, desc, has_id, id);
        free(desc);
        goto out;
    }
    if (json_object_object_get_ex(msg, "arguments", &v)) {
        args = json_object_get(v);
    } else {
        args = json_object_new_object();
    }
    if (qmp_check_args(args, cmd->args, &err) == 0) {
        int r;
        if (cmd->fn) {
            r = cmd->fn(args, &ret, d->opaque, &err);
        } else {
            r = run_builtin(d, cmd->name, args, negotiated, &ret, &err);
        }
        if (r < 0 && !err) {
            error_setg_errno(&err, -r, "%s failed", cmd->name);
        }
        if (r >= 0 && err) {
            /* a handler must not return success with an error set */
            error_free(err);
            err = NULL;
        }
    }
    if (err) {
        json_object_put(ret);
        rsp = qmp_error_response(error_class(err), err->msg, has_id, id);
        error_free(err);
    } else {
        rsp = json_object_new_object();
        json_object_object_add(rsp, "return", ret ? ret : json_object_new_object());
        if (has_id) {
            json_object_object_add(rsp, "id", id);
        }
    }
    json_object_put(args);
out:
    json_object_put(msg);
    return rsp;
}
