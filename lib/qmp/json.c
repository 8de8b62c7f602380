/*
 * blockctl - QMP: QEMU's JSON dialect, read and written
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * QMP clients can tell a server's JSON apart byte by byte, so this file
 * reproduces what QEMU 7.2's monitor does, as observed by experiment
 * (tests/interop/qmp-diff.py compares it with qemu-storage-daemon):
 *
 * Reading.  A lexer cuts the bytes into tokens: the structural characters,
 * strings in double or single quotes (any byte 0x20..0xFD inside, any such
 * byte after a backslash; escapes and UTF-8 are checked later), numbers
 * as JSON has them, keywords [a-z]+.  A byte no token can take makes an
 * error token of the text so far plus that byte ("stray"), after which
 * the lexer skips bytes up to a structural character, a control character
 * other than tab, or 0xFE/0xFF.  Messages are split by counting brackets
 * and braces: a message ends at a token that leaves both counts at zero,
 * or either negative.  Only then is an error of the parser reported (the
 * first one in token order); a lexical error or an exceeded limit is
 * reported at once and starts a new message.
 *
 * Limits: nesting (open brackets plus braces) beyond QMP_MAX_DEPTH is
 * QEMU's error, with QEMU's recovery (the closing brackets that follow are
 * parsed as new messages).  A message's tokens may not exceed @max_bytes
 * of text or @max_tokens tokens (QEMU: 64 MiB, 2M tokens): unlike QEMU,
 * the rest of such a message is then skipped (lexed, not stored) up to its
 * end, so one error answers it and the next message is read normally.
 *
 * Writing.  Compact, with ", " and ": "; an object's members in the order
 * QEMU's QDict iterates them (512 buckets by the TDB hash of the key,
 * ascending; within a bucket the member added last first); strings in
 * ASCII: \" \\ \b \f \n \r \t, other code points below 0x20 or from 0x7F
 * as \uXXXX (upper case hex, surrogate pairs above U+FFFF), bytes that are
 * not modified UTF-8 as \uFFFD; doubles as "%.17g".
 */
#include "lib/compiler.h"
#include "lib/qmp/internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* --- buffers --- */

static void buf_reserve(struct qmp_buf *b, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        b->data = xrealloc(b->data, cap);
        b->cap = cap;
    }
}

void qmp_buf_add(struct qmp_buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

static inline void buf_addc(struct qmp_buf *b, char c)
{
    buf_reserve(b, 1);
    b->data[b->len++] = c;
    b->data[b->len] = 0;
}

static inline void buf_adds(struct qmp_buf *b, const char *s)
{
    qmp_buf_add(b, s, strlen(s));
}

void qmp_buf_addf(struct qmp_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert(n >= 0);
    buf_reserve(b, n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, n + 1, fmt, ap);
    va_end(ap);
    b->len += n;
}

void qmp_buf_consume(struct qmp_buf *b, size_t n)
{
    assert(n <= qmp_buf_pending(b));
    b->off += n;
    if (b->off == b->len) {
        b->off = b->len = 0;
    } else if (b->off >= 65536 && b->off * 2 >= b->len) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    /* give back a large buffer once it is empty */
    if (b->len == 0 && b->cap > (1u << 20)) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

void qmp_buf_free(struct qmp_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* --- modified UTF-8 --- */

static bool valid_code_point(uint32_t cp)
{
    return cp <= 0x10FFFF &&
           !(cp >= 0xD800 && cp <= 0xDFFF) &&         /* surrogates */
           !(cp >= 0xFDD0 && cp <= 0xFDEF) &&         /* noncharacters */
           (cp & 0xFFFE) != 0xFFFE;
}

int32_t qmp_utf8_decode(const unsigned char *s, size_t n, size_t *used)
{
    static const uint32_t smallest[7] = { 0, 0, 0x80, 0x800, 0x10000, 0x200000, 0x4000000 };
    unsigned lead = s[0], len = 0;
    uint32_t cp;

    *used = 1;
    if (lead < 0x80) {
        return lead;
    }
    if (lead >= 0xFE || (lead & 0xC0) == 0x80) {
        return -1;  /* impossible byte, or a continuation byte first */
    }
    while (lead & (0x80 >> len)) {
        len++;
    }
    cp = lead & (0xFF >> (len + 1));
    for (unsigned i = 1; i < len; i++) {
        if (i >= n || (s[i] & 0xC0) != 0x80) {
            *used = i;  /* the sequence ends early: the next byte starts anew */
            return -1;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    *used = len;
    if (!valid_code_point(cp)) {
        return -1;
    }
    if (cp < smallest[len] && !(cp == 0 && len == 2)) {
        return -1;  /* overlong, except C0 80 for U+0000 */
    }
    return (int32_t)cp;
}

static void put_utf8(struct qmp_buf *b, uint32_t cp)
{
    char out[4];
    size_t n;

    if (cp == 0) {
        out[0] = (char)0xC0;
        out[1] = (char)0x80;
        n = 2;
    } else if (cp < 0x80) {
        out[0] = cp;
        n = 1;
    } else if (cp < 0x800) {
        out[0] = 0xC0 | (cp >> 6);
        out[1] = 0x80 | (cp & 0x3F);
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = 0xE0 | (cp >> 12);
        out[1] = 0x80 | ((cp >> 6) & 0x3F);
        out[2] = 0x80 | (cp & 0x3F);
        n = 3;
    } else {
        out[0] = 0xF0 | (cp >> 18);
        out[1] = 0x80 | ((cp >> 12) & 0x3F);
        out[2] = 0x80 | ((cp >> 6) & 0x3F);
        out[3] = 0x80 | (cp & 0x3F);
        n = 4;
    }
    qmp_buf_add(b, out, n);
}

/* --- writing --- */

unsigned qmp_qdict_bucket(const char *key)
{
    /* the TDB hash, as QEMU's QDict uses it, over its 512 buckets */
    size_t n = strlen(key);
    uint32_t v = (uint32_t)n * 0x238F13AFu;

    for (size_t i = 0; i < n; i++) {
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512;
}

struct member {
    const char *key;
    json_object *val;
    unsigned bucket;
    size_t index;
};

static int member_cmp(const void *a, const void *b)
{
    const struct member *x = a, *y = b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    /* a bucket is a list with the newest member first */
    return x->index < y->index ? 1 : -1;
}

size_t qmp_json_members(json_object *obj, const char **keys, json_object **vals)
{
    size_t n = json_object_object_length(obj), i = 0;
    struct member *m;

    if (!n) {
        return 0;
    }
    m = xcalloc(n, sizeof(*m));
    json_object_object_foreach(obj, k, v) {
        m[i].key = k;
        m[i].val = v;
        m[i].bucket = qmp_qdict_bucket(k);
        m[i].index = i;
        i++;
    }
    qsort(m, n, sizeof(*m), member_cmp);
    for (i = 0; i < n; i++) {
        keys[i] = m[i].key;
        if (vals) {
            vals[i] = m[i].val;
        }
    }
    free(m);
    return n;
}

static void put_string(struct qmp_buf *b, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, used;

    buf_addc(b, '"');
    while (i < len) {
        int32_t cp = qmp_utf8_decode(s + i, len - i, &used);
        i += used;
        switch (cp) {
        case '"':
            buf_adds(b, "\\\"");
            break;
        case '\\':
            buf_adds(b, "\\\\");
            break;
        case '\b':
            buf_adds(b, "\\b");
            break;
        case '\f':
            buf_adds(b, "\\f");
            break;
        case '\n':
            buf_adds(b, "\\n");
            break;
        case '\r':
            buf_adds(b, "\\r");
            break;
        case '\t':
            buf_adds(b, "\\t");
            break;
        default:
            if (cp < 0) {
                buf_adds(b, "\\uFFFD");
            } else if (cp > 0xFFFF) {
                cp -= 0x10000;
                qmp_buf_addf(b, "\\u%04X\\u%04X", 0xD800 | (cp >> 10), 0xDC00 | (cp & 0x3FF));
            } else if (cp < 0x20 || cp >= 0x7F) {
                qmp_buf_addf(b, "\\u%04X", (unsigned)cp);
            } else {
                buf_addc(b, (char)cp);
            }
        }
    }
    buf_addc(b, '"');
}

void qmp_json_append(struct qmp_buf *b, json_object *obj)
{
    switch (json_object_get_type(obj)) {
    case json_type_null:
        buf_adds(b, "null");
        break;
    case json_type_boolean:
        buf_adds(b, json_object_get_boolean(obj) ? "true" : "false");
        break;
    case json_type_int: {
        int64_t v = json_object_get_int64(obj);
        if (v == INT64_MAX) {
            /* a uint64 above INT64_MAX reads back clamped */
            qmp_buf_addf(b, "%" PRIu64, json_object_get_uint64(obj));
        } else {
            qmp_buf_addf(b, "%" PRId64, v);
        }
        break;
    }
    case json_type_double:
        qmp_buf_addf(b, "%.17g", json_object_get_double(obj));
        break;
    case json_type_string:
        put_string(b, json_object_get_string(obj), json_object_get_string_len(obj));
        break;
    case json_type_array: {
        size_t n = json_object_array_length(obj);
        buf_addc(b, '[');
        for (size_t i = 0; i < n; i++) {
            if (i) {
                buf_adds(b, ", ");
            }
            qmp_json_append(b, json_object_array_get_idx(obj, i));
        }
        buf_addc(b, ']');
        break;
    }
    case json_type_object: {
        size_t n = json_object_object_length(obj);
        const char **keys = xcalloc(n ? n : 1, sizeof(*keys));
        json_object **vals = xcalloc(n ? n : 1, sizeof(*vals));
        qmp_json_members(obj, keys, vals);
        buf_addc(b, '{');
        for (size_t i = 0; i < n; i++) {
            if (i) {
                buf_adds(b, ", ");
            }
            put_string(b, keys[i], strlen(keys[i]));
            buf_adds(b, ": ");
            qmp_json_append(b, vals[i]);
        }
        buf_addc(b, '}');
        free(keys);
        free(vals);
        break;
    }
    }
}

char *qmp_json_string(json_object *obj)
{
    struct qmp_buf b = { 0 };

    qmp_json_append(&b, obj);
    return b.data;
}

/* --- reading --- */

enum tok {
    T_LCURLY, T_RCURLY, T_LSQUARE, T_RSQUARE, T_COLON, T_COMMA,
    T_STRING, T_INTEGER, T_FLOAT, T_KEYWORD,
};

enum lex_state {
    L_START, L_RECOVER,
    L_DQ, L_DQ_ESC, L_SQ, L_SQ_ESC,
    L_NEG, L_ZERO, L_INT, L_DOT, L_FRAC, L_EXP, L_EXP_SIGN, L_EXP_DIG,
    L_KW,
};

/* where a frame of the parser is */
enum parse_state {
    P_ARR_FIRST,    /* after '[' */
    P_ARR_VALUE,    /* after ',' */
    P_ARR_SEP,      /* after an element */
    P_OBJ_FIRST,    /* after '{' */
    P_OBJ_KEY,      /* after ',' */
    P_OBJ_COLON,    /* after a key */
    P_OBJ_VALUE,    /* after ':' */
    P_OBJ_SEP,      /* after a member */
};

struct frame {
    json_object *container;
    char *key;      /* P_OBJ_COLON / P_OBJ_VALUE: the member's key */
    enum parse_state st;
};

struct qmp_reader {
    size_t max_bytes, max_tokens;
    qmp_reader_emit *emit;
    void *opaque;
    bool stopped;

    /* lexer */
    enum lex_state ls;
    struct qmp_buf tok;     /* the token so far (not kept while skipping) */

    /* message splitting */
    long braces, brackets;
    size_t msg_bytes, msg_tokens;
    bool skip;              /* a limit was exceeded: drop the rest of the message */

    /* parser */
    struct frame *stack;
    size_t depth, stack_cap;
    json_object *result;
    bool have_result;
    char *err;              /* the message's first parse error */
};

struct qmp_reader *qmp_reader_new(size_t max_bytes, size_t max_tokens,
                                  qmp_reader_emit *emit, void *opaque)
{
    struct qmp_reader *r = xzalloc(sizeof(*r));

    r->max_bytes = max_bytes;
    r->max_tokens = max_tokens;
    r->emit = emit;
    r->opaque = opaque;
    r->ls = L_START;
    return r;
}

static void parser_reset(struct qmp_reader *r)
{
    for (size_t i = 0; i < r->depth; i++) {
        json_object_put(r->stack[i].container);
        free(r->stack[i].key);
    }
    r->depth = 0;
    if (r->have_result) {
        json_object_put(r->result);
    }
    r->result = NULL;
    r->have_result = false;
    free(r->err);
    r->err = NULL;
}

static void message_reset(struct qmp_reader *r)
{
    parser_reset(r);
    r->braces = r->brackets = 0;
    r->msg_bytes = r->msg_tokens = 0;
}

void qmp_reader_free(struct qmp_reader *r)
{
    if (r) {
        parser_reset(r);
        free(r->stack);
        qmp_buf_free(&r->tok);
        free(r);
    }
}

static void emit(struct qmp_reader *r, json_object *value, const char *error)
{
    if (r->stopped) {
        json_object_put(value);
        return;
    }
    if (!r->emit(r->opaque, value, error)) {
        r->stopped = true;
    }
}

/* Report @msg for the message so far and start a new one. */
static void emit_error(struct qmp_reader *r, const char *msg)
{
    message_reset(r);
    emit(r, NULL, msg);
}

static void ATTRIBUTE_PRINTF(2, 3) parse_error(struct qmp_reader *r, const char *fmt, ...)
{
    va_list ap;
    char *m;

    if (r->err) {
        return;
    }
    va_start(ap, fmt);
    if (vasprintf(&m, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    r->err = xasprintf("JSON parse error, %s", m);
    free(m);
}

static int hex4(const char *s, size_t n)
{
    int v = 0;

    if (n < 4) {
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= c - '0';
        } else if (c >= 'a' && c <= 'f') {
            v |= c - 'a' + 10;
        } else if (c >= 'A' && c <= 'F') {
            v |= c - 'A' + 10;
        } else {
            return -1;
        }
    }
    return v;
}

/* Decode the string token @s (quotes included); NULL after parse_error. */
static json_object *decode_string(struct qmp_reader *r, const char *s, size_t len)
{
    struct qmp_buf out = { 0 };
    const char *end = s + len - 1;  /* the closing quote */
    const char *p = s + 1;
    json_object *o;

    while (p < end) {
        if (*p == '\\') {
            char e = p[1];
            switch (e) {
            case '"':
            case '\'':
            case '\\':
            case '/':
                buf_addc(&out, e);
                p += 2;
                continue;
            case 'b':
                buf_addc(&out, '\b');
                p += 2;
                continue;
            case 'f':
                buf_addc(&out, '\f');
                p += 2;
                continue;
            case 'n':
                buf_addc(&out, '\n');
                p += 2;
                continue;
            case 'r':
                buf_addc(&out, '\r');
                p += 2;
                continue;
            case 't':
                buf_addc(&out, '\t');
                p += 2;
                continue;
            case 'u': {
                /* the rest of the token, closing quote included */
                size_t left = (size_t)(s + len - p);
                int cp = hex4(p + 2, left - 2);
                const char *esc = p;
                size_t elen = 6;    /* the escape(s) named in an error */
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    int lo = -1;
                    if (left >= 12 && p[6] == '\\' && p[7] == 'u') {
                        lo = hex4(p + 8, left - 8);
                    }
                    if (lo >= 0xDC00 && lo <= 0xDFFF) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        elen = 12;
                        p += 6;
                    } else {
                        cp = -1;
                    }
                }
                if (cp < 0 || !valid_code_point(cp)) {
                    parse_error(r, "%.*s is not a valid Unicode character",
                                (int)MIN(left, elen), esc);
                    qmp_buf_free(&out);
                    return NULL;
                }
                put_utf8(&out, cp);
                p += 6;
                continue;
            }
            default:
                parse_error(r, "invalid escape sequence in string");
                qmp_buf_free(&out);
                return NULL;
            }
        } else {
            size_t used;
            if (qmp_utf8_decode((const unsigned char *)p, end - p, &used) < 0) {
                parse_error(r, "invalid UTF-8 sequence in string");
                qmp_buf_free(&out);
                return NULL;
            }
            qmp_buf_add(&out, p, used);
            p += used;
        }
    }
    o = json_object_new_string_len(out.data ? out.data : "", out.len);
    qmp_buf_free(&out);
    return o;
}

static json_object *decode_number(const char *s, bool integer)
{
    if (integer) {
        char *e;
        errno = 0;
        long long v = strtoll(s, &e, 10);
        if (!errno && !*e) {
            return json_object_new_int64(v);
        }
        if (s[0] != '-') {
            errno = 0;
            unsigned long long u = strtoull(s, &e, 10);
            if (!errno && !*e) {
                return json_object_new_uint64(u);
            }
        }
    }
    return json_object_new_double(strtod(s, NULL));
}

static void push_frame(struct qmp_reader *r, json_object *c, enum parse_state st)
{
    if (r->depth == r->stack_cap) {
        r->stack_cap = r->stack_cap ? r->stack_cap * 2 : 16;
        r->stack = xrealloc(r->stack, r->stack_cap * sizeof(*r->stack));
    }
    r->stack[r->depth++] = (struct frame){ .container = c, .st = st };
}

/* A value is complete: give it to the frame below (taking it over). */
static void complete_value(struct qmp_reader *r, json_object *v)
{
    struct frame *f;

    if (!r->depth) {
        r->result = v;
        r->have_result = true;
        return;
    }
    f = &r->stack[r->depth - 1];
    switch (f->st) {
    case P_ARR_FIRST:
    case P_ARR_VALUE:
        json_object_array_add(f->container, v);
        f->st = P_ARR_SEP;
        break;
    case P_OBJ_FIRST:
    case P_OBJ_KEY:
        if (!json_object_is_type(v, json_type_string)) {
            json_object_put(v);
            parse_error(r, "key is not a string in object");
            return;
        }
        f->key = xstrdup(json_object_get_string(v));
        json_object_put(v);
        f->st = P_OBJ_COLON;
        break;
    case P_OBJ_VALUE:
        if (json_object_object_get_ex(f->container, f->key, NULL)) {
            json_object_put(v);
            parse_error(r, "duplicate key");
            return;
        }
        json_object_object_add(f->container, f->key, v);
        free(f->key);
        f->key = NULL;
        f->st = P_OBJ_SEP;
        break;
    default:
        BUG("QMP reader: value in state %d", f->st);
    }
}

static void pop_frame(struct qmp_reader *r)
{
    json_object *c = r->stack[--r->depth].container;

    complete_value(r, c);
}

/* A token where a value belongs. */
static void parse_value(struct qmp_reader *r, enum tok t, const char *text, size_t len)
{
    json_object *v;

    switch (t) {
    case T_LCURLY:
        push_frame(r, json_object_new_object(), P_OBJ_FIRST);
        return;
    case T_LSQUARE:
        push_frame(r, json_object_new_array(), P_ARR_FIRST);
        return;
    case T_STRING:
        v = decode_string(r, text, len);
        if (!v) {
            return;
        }
        break;
    case T_INTEGER:
    case T_FLOAT:
        v = decode_number(text, t == T_INTEGER);
        break;
    case T_KEYWORD:
        if (!strcmp(text, "true")) {
            v = json_object_new_boolean(1);
        } else if (!strcmp(text, "false")) {
            v = json_object_new_boolean(0);
        } else if (!strcmp(text, "null")) {
            v = NULL;
        } else {
            parse_error(r, "invalid keyword '%s'", text);
            return;
        }
        break;
    default:
        parse_error(r, "expecting value");
        return;
    }
    complete_value(r, v);
}

static void parse_token(struct qmp_reader *r, enum tok t, const char *text, size_t len)
{
    struct frame *f;

    if (r->err) {
        return;
    }
    if (!r->depth) {
        parse_value(r, t, text, len);
        return;
    }
    f = &r->stack[r->depth - 1];
    switch (f->st) {
    case P_ARR_FIRST:
        if (t == T_RSQUARE) {
            pop_frame(r);
            return;
        }
        parse_value(r, t, text, len);
        return;
    case P_ARR_SEP:
        if (t == T_COMMA) {
            f->st = P_ARR_VALUE;
        } else if (t == T_RSQUARE) {
            pop_frame(r);
        } else {
            parse_error(r, "expected separator in list");
        }
        return;
    case P_OBJ_FIRST:
        if (t == T_RCURLY) {
            pop_frame(r);
            return;
        }
        parse_value(r, t, text, len);
        return;
    case P_OBJ_COLON:
        if (t == T_COLON) {
            f->st = P_OBJ_VALUE;
        } else {
            parse_error(r, "missing : in object pair");
        }
        return;
    case P_OBJ_SEP:
        if (t == T_COMMA) {
            f->st = P_OBJ_KEY;
        } else if (t == T_RCURLY) {
            pop_frame(r);
        } else {
            parse_error(r, "expected separator in dict");
        }
        return;
    case P_ARR_VALUE:
    case P_OBJ_KEY:
    case P_OBJ_VALUE:
        parse_value(r, t, text, len);
        return;
    }
}

static bool message_open(const struct qmp_reader *r)
{
    return (r->braces > 0 || r->brackets > 0) && r->braces >= 0 && r->brackets >= 0;
}

/* The lexer finished a token (its text is in r->tok). */
static void token(struct qmp_reader *r, enum tok t)
{
    switch (t) {
    case T_LCURLY:
        r->braces++;
        break;
    case T_RCURLY:
        r->braces--;
        break;
    case T_LSQUARE:
        r->brackets++;
        break;
    case T_RSQUARE:
        r->brackets--;
        break;
    default:
        break;
    }
    if (r->skip) {
        r->tok.len = 0;
        if (!message_open(r)) {
            r->skip = false;
            message_reset(r);
        }
        return;
    }
    r->msg_bytes += r->tok.len;
    if (++r->msg_tokens > r->max_tokens) {
        r->tok.len = 0;
        parser_reset(r);
        emit(r, NULL, "JSON token count limit exceeded");
        if (message_open(r)) {
            r->skip = true;
        } else {
            message_reset(r);
        }
        return;
    }
    if (r->braces + r->brackets > QMP_MAX_DEPTH) {
        r->tok.len = 0;
        emit_error(r, "JSON nesting depth limit exceeded");
        return;
    }
    parse_token(r, t, r->tok.data, r->tok.len);
    r->tok.len = 0;
    if (!message_open(r)) {
        if (r->err) {
            char *e = r->err;
            r->err = NULL;
            emit_error(r, e);
            free(e);
        } else if (r->have_result) {
            json_object *v = r->result;
            r->have_result = false;
            r->result = NULL;
            message_reset(r);
            emit(r, v, NULL);
        } else {
            /* cannot happen: a closing token that leaves the counts at or
             * below zero always completes the value or is an error */
            emit_error(r, "JSON parse error, premature EOI");
        }
    }
}

/* Add @c to the token; false once the message is over its size limit. */
static bool tok_add(struct qmp_reader *r, unsigned char c)
{
    if (r->skip) {
        return true;
    }
    if (r->msg_bytes + r->tok.len + 1 > r->max_bytes) {
        r->tok.len = 0;
        parser_reset(r);
        emit(r, NULL, "JSON token size limit exceeded");
        r->skip = true;     /* drop the rest of the message */
        return false;
    }
    buf_addc(&r->tok, (char)c);
    return true;
}

/* A byte no token can take: report the token so far and it, recover. */
static void lex_error(struct qmp_reader *r, unsigned char c)
{
    r->ls = L_RECOVER;
    if (r->skip) {
        r->skip = false;
        r->tok.len = 0;
        message_reset(r);
        return;
    }
    buf_addc(&r->tok, (char)c);
    char *msg = xasprintf("JSON parse error, stray '%s'", r->tok.data);
    r->tok.len = 0;
    emit_error(r, msg);
    free(msg);
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static void lex(struct qmp_reader *r, unsigned char c)
{
again:
    switch (r->ls) {
    case L_START:
        switch (c) {
        case ' ':
        case '\t':
        case '\n':
        case '\r':
            return;
        case '{':
            tok_add(r, c);
            token(r, T_LCURLY);
            return;
        case '}':
            tok_add(r, c);
            token(r, T_RCURLY);
            return;
        case '[':
            tok_add(r, c);
            token(r, T_LSQUARE);
            return;
        case ']':
            tok_add(r, c);
            token(r, T_RSQUARE);
            return;
        case ':':
            tok_add(r, c);
            token(r, T_COLON);
            return;
        case ',':
            tok_add(r, c);
            token(r, T_COMMA);
            return;
        case '"':
            r->ls = L_DQ;
            break;
        case '\'':
            r->ls = L_SQ;
            break;
        case '-':
            r->ls = L_NEG;
            break;
        case '0':
            r->ls = L_ZERO;
            break;
        default:
            if (c >= '1' && c <= '9') {
                r->ls = L_INT;
            } else if (c >= 'a' && c <= 'z') {
                r->ls = L_KW;
            } else {
                lex_error(r, c);
                return;
            }
        }
        tok_add(r, c);
        return;
    case L_RECOVER:
        if (((c >= 0x20 && c <= 0xFD) || c == '\t') && !strchr("[]{}:,", c)) {
            return;
        }
        r->ls = L_START;
        goto again;
    case L_DQ:
    case L_SQ:
        if (c == (r->ls == L_DQ ? '"' : '\'')) {
            r->ls = L_START;
            tok_add(r, c);
            token(r, T_STRING);
            return;
        }
        if (c < 0x20 || c > 0xFD) {
            lex_error(r, c);
            return;
        }
        if (c == '\\') {
            r->ls = r->ls == L_DQ ? L_DQ_ESC : L_SQ_ESC;
        }
        tok_add(r, c);
        return;
    case L_DQ_ESC:
    case L_SQ_ESC:
        if (c < 0x20 || c > 0xFD) {
            lex_error(r, c);
            return;
        }
        r->ls = r->ls == L_DQ_ESC ? L_DQ : L_SQ;
        tok_add(r, c);
        return;
    case L_NEG:
        if (c == '0') {
            r->ls = L_ZERO;
        } else if (is_digit(c)) {
            r->ls = L_INT;
        } else {
            lex_error(r, c);
            return;
        }
        tok_add(r, c);
        return;
    case L_ZERO:
    case L_INT:
        if (is_digit(c)) {
            if (r->ls == L_ZERO) {
                lex_error(r, c);
                return;
            }
        } else if (c == '.') {
            r->ls = L_DOT;
        } else if (c == 'e' || c == 'E') {
            r->ls = L_EXP;
        } else {
            r->ls = L_START;
            token(r, T_INTEGER);
            goto again;
        }
        tok_add(r, c);
        return;
    case L_DOT:
        if (!is_digit(c)) {
            lex_error(r, c);
            return;
        }
        r->ls = L_FRAC;
        tok_add(r, c);
        return;
    case L_FRAC:
        if (c == 'e' || c == 'E') {
            r->ls = L_EXP;
        } else if (!is_digit(c)) {
            r->ls = L_START;
            token(r, T_FLOAT);
            goto again;
        }
        tok_add(r, c);
        return;
    case L_EXP:
        if (c == '+' || c == '-') {
            r->ls = L_EXP_SIGN;
        } else if (is_digit(c)) {
            r->ls = L_EXP_DIG;
        } else {
            lex_error(r, c);
            return;
        }
        tok_add(r, c);
        return;
    case L_EXP_SIGN:
        if (!is_digit(c)) {
            lex_error(r, c);
            return;
        }
        r->ls = L_EXP_DIG;
        tok_add(r, c);
        return;
    case L_EXP_DIG:
        if (!is_digit(c)) {
            r->ls = L_START;
            token(r, T_FLOAT);
            goto again;
        }
        tok_add(r, c);
        return;
    case L_KW:
        if (c >= 'a' && c <= 'z') {
            tok_add(r, c);
            return;
        }
        r->ls = L_START;
        token(r, T_KEYWORD);
        goto again;
    }
}

bool qmp_reader_feed(struct qmp_reader *r, const char *buf, size_t len)
{
    for (size_t i = 0; i < len && !r->stopped; i++) {
        lex(r, (unsigned char)buf[i]);
    }
    return !r->stopped;
}
