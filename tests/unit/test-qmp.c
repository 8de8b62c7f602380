/*
 * blockctl - unit tests of lib/qmp: QEMU's JSON dialect, the server in a
 * thread running a loop, the client against it and against misbehaving
 * servers (socketpairs).  Expected strings are QEMU 7.2's, as observed
 * from qemu-storage-daemon (tests/interop/qmp-diff.py compares the two).
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/error.h"
#include "lib/loop.h"
#include "lib/qmp/internal.h"
#include "lib/qmp/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "tests/unit/tap.h"

static bool is_str(const char *got, const char *want, const char *what)
{
    bool same = got && want ? !strcmp(got, want) : got == want;

    if (!tap_ok(same, "%s", what)) {
        printf("#   got:  %s\n#   want: %s\n", got ? got : "(null)", want ? want : "(null)");
    }
    return same;
}

/* @s with control and non-ASCII bytes as \xNN, for a test's name */
static char *printable(const char *s)
{
    struct qmp_buf b = { 0 };

    for (; *s; s++) {
        unsigned char c = *s;
        if (c < 0x20 || c >= 0x7f) {
            qmp_buf_addf(&b, "\\x%02x", c);
        } else {
            qmp_buf_add(&b, s, 1);
        }
    }
    return b.data ? b.data : xstrdup("");
}

static void msleep(unsigned ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

/* --- the JSON writer --- */

static char *parse_one(const char *text);

static void check_write(const char *in, const char *want)
{
    char *pi = printable(in);
    char *what = xasprintf("writes %s", pi);
    char *got = parse_one(in);

    is_str(got, want, what);
    free(got);
    free(what);
    free(pi);
}

static void test_writer(void)
{
    json_object *o = json_object_new_object(), *ev;
    char *s;

    /* QAPI order major, minor, micro: micro and minor share a bucket */
    json_object_object_add(o, "major", json_object_new_int(7));
    json_object_object_add(o, "minor", json_object_new_int(2));
    json_object_object_add(o, "micro", json_object_new_int(22));
    s = qmp_json_string(o);
    is_str(s, "{\"micro\": 22, \"minor\": 2, \"major\": 7}", "QDict order within a bucket");
    free(s);
    json_object_put(o);

    ev = json_object_new_object();
    json_object_object_add(ev, "event", json_object_new_string("X"));
    json_object_object_add(ev, "data", json_object_new_object());
    json_object_object_add(ev, "timestamp", json_object_new_object());
    s = qmp_json_string(ev);
    is_str(s, "{\"timestamp\": {}, \"event\": \"X\", \"data\": {}}", "event member order");
    free(s);
    json_object_put(ev);

    check_write("{\"b\":1,\"a\":2,\"c\":{}, \"d\":[], \"e\":\"\", \"f\":true, \"g\":false, \"h\":null}",
                "{\"d\": [], \"e\": \"\", \"a\": 2, \"f\": true, \"b\": 1, \"g\": false, \"c\": {}, "
                "\"h\": null}");
    check_write("[0,-0,1.0,1.5,0.1,1e100,-1e-5,1E3,9223372036854775808,18446744073709551616,"
                "-9223372036854775809,1e400,-0.0,5e-324]",
                "[0, 0, 1, 1.5, 0.10000000000000001, 1e+100, -1.0000000000000001e-05, 1000, "
                "9223372036854775808, 1.8446744073709552e+19, -9.2233720368547758e+18, inf, -0, "
                "4.9406564584124654e-324]");
    check_write("[\"\\u00e9\",\"\xc3\xa9\",\"\\u007f\",\"\x7f\",\"/\",\"\\/\",\"\\t\\n\\r\\b\\f\","
                "\"\\u0001\",\"\\uD83D\\uDE00\",\"\xc0\x80\",\"\xf0\x9f\x98\x80\",\"\\u0000\"]",
                "[\"\\u00E9\", \"\\u00E9\", \"\\u007F\", \"\\u007F\", \"/\", \"/\", "
                "\"\\t\\n\\r\\b\\f\", \"\\u0001\", \"\\uD83D\\uDE00\", \"\\u0000\", "
                "\"\\uD83D\\uDE00\", \"\\u0000\"]");
    check_write("'single \\' \"quoted\"'", "\"single ' \\\"quoted\\\"\"");

    /* bytes that are not modified UTF-8 (from a handler): one \uFFFD a sequence */
    o = json_object_new_string("\xc3(\xe2\x82(\xed\xa0\x80|\xc1\xbf|\xf8\x88\x80\x80\x80|\xfd|\xff");
    s = qmp_json_string(o);
    is_str(s, "\"\\uFFFD(\\uFFFD(\\uFFFD|\\uFFFD|\\uFFFD|\\uFFFD|\\uFFFD\"",
           "invalid UTF-8 written as QEMU does");
    free(s);
    json_object_put(o);
    o = json_object_new_uint64(UINT64_MAX);
    s = qmp_json_string(o);
    is_str(s, "18446744073709551615", "uint64");
    free(s);
    json_object_put(o);
}

/* --- the reader --- */

struct collected {
    struct qmp_buf out;
    int n;
    int stop_after;     /* 0: never stop */
};

static bool collect(void *opaque, json_object *v, const char *err)
{
    struct collected *c = opaque;

    if (err) {
        qmp_buf_addf(&c->out, "E:%s\n", err);
    } else {
        char *s = qmp_json_string(v);
        qmp_buf_addf(&c->out, "V:%s\n", s);
        free(s);
        json_object_put(v);
    }
    c->n++;
    return !(c->stop_after && c->n >= c->stop_after);
}

/* What the reader makes of @in fed @chunk bytes at a time. */
static char *read_all(const char *in, size_t len, size_t chunk, size_t max_bytes,
                      size_t max_tokens)
{
    struct collected c = { { 0 } };
    struct qmp_reader *r = qmp_reader_new(max_bytes, max_tokens, collect, &c);

    for (size_t i = 0; i < len; i += chunk) {
        qmp_reader_feed(r, in + i, MIN(chunk, len - i));
    }
    qmp_reader_free(r);
    if (!c.out.data) {
        return xstrdup("");
    }
    return c.out.data;
}

static char *parse_one(const char *text)
{
    char *all = read_all(text, strlen(text), strlen(text), QMP_MAX_MESSAGE, QMP_MAX_TOKENS);
    char *nl = strchr(all, '\n');
    char *r;

    if (strncmp(all, "V:", 2) || !nl) {
        return all;
    }
    *nl = 0;
    r = xstrdup(all + 2);
    free(all);
    return r;
}

static void check_read(const char *in, const char *want)
{
    char *pi = printable(in);
    char *what = xasprintf("reads %s", pi);
    char *got = read_all(in, strlen(in), strlen(in), QMP_MAX_MESSAGE, QMP_MAX_TOKENS);

    is_str(got, want, what);
    free(got);
    free(what);
    free(pi);
}

static void test_reader(void)
{
    static const char mixed[] =
        "{\"execute\": \"a\"}{\"b\": [1, 2.5, \"x\\u00e9\", {}]} \"s\" 12 tru }"
        "{\"a\" 1}-x garbage, {\"e\": \"\xc3\xa9\"} [1,,2] \x01 'q' \"\\ud800\" ";
    char *whole, *piece;
    size_t n;

    check_read("{\"execute\": }", "E:JSON parse error, expecting value\n");
    check_read("}]", "E:JSON parse error, expecting value\nE:JSON parse error, expecting value\n");
    check_read("garbage", "");
    check_read("garbage ", "E:JSON parse error, invalid keyword 'garbage'\n");
    /* after an error the lexer skips to a structural character: "a" goes */
    check_read("-{\"a\":1}", "E:JSON parse error, stray '-{'\nE:JSON parse error, expecting value\n"
               "V:1\nE:JSON parse error, expecting value\n");
    check_read("-x abc , \"a\"", "E:JSON parse error, stray '-x'\nE:JSON parse error, expecting value\n"
               "V:\"a\"\n");
    check_read("-x ab\"c\"\n\"a\"", "E:JSON parse error, stray '-x'\nV:\"a\"\n");
    check_read("{\"a\":1,\"a\":2}", "E:JSON parse error, duplicate key\n");
    check_read("{\"a\":1,\"a\":}", "E:JSON parse error, expecting value\n");
    check_read("{1:2}", "E:JSON parse error, key is not a string in object\n");
    check_read("{\"a\" 1}", "E:JSON parse error, missing : in object pair\n");
    check_read("[1 2]", "E:JSON parse error, expected separator in list\n");
    check_read("{\"a\":1]", "E:JSON parse error, expected separator in dict\n");
    check_read("\"\\q\"", "E:JSON parse error, invalid escape sequence in string\n");
    check_read("\"\xc3(\"", "E:JSON parse error, invalid UTF-8 sequence in string\n");
    check_read("\"\\u12xyzw\"", "E:JSON parse error, \\u12xy is not a valid Unicode character\n");
    check_read("\"\\u\"", "E:JSON parse error, \\u\" is not a valid Unicode character\n");
    check_read("\"\\uD83F\\uDFFF\"",
               "E:JSON parse error, \\uD83F\\uDFFF is not a valid Unicode character\n");
    check_read("\"\\uD800\\u0041\"", "E:JSON parse error, \\uD800 is not a valid Unicode character\n");
    check_read("\"\\uFDD0\"", "E:JSON parse error, \\uFDD0 is not a valid Unicode character\n");
    check_read("01 ", "E:JSON parse error, stray '01'\n");
    check_read("1. ", "E:JSON parse error, stray '1. '\n");
    check_read("tRue ", "E:JSON parse error, invalid keyword 't'\nE:JSON parse error, stray 'R'\n");
    check_read("true1 ", "V:true\nV:1\n");
    check_read("[1]1", "V:[1]\n");
    check_read("\"\\u0000\"", "V:\"\\u0000\"\n");

    /* any split of the input reads the same */
    whole = read_all(mixed, sizeof(mixed) - 1, sizeof(mixed), QMP_MAX_MESSAGE, QMP_MAX_TOKENS);
    for (n = 1; n <= 7; n++) {
        piece = read_all(mixed, sizeof(mixed) - 1, n, QMP_MAX_MESSAGE, QMP_MAX_TOKENS);
        char *what = xasprintf("fed %zu byte(s) at a time, the reader finds the same", n);
        is_str(piece, whole, what);
        free(what);
        free(piece);
    }
    free(whole);

    /* emit can stop the reader */
    {
        struct collected c = { { 0 }, 0, 2 };
        struct qmp_reader *r = qmp_reader_new(1000, 100, collect, &c);
        bool more = qmp_reader_feed(r, "1 2 3 4 ", 8);
        ok(!more && c.n == 2, "the reader stops when told to (%d messages)", c.n);
        qmp_reader_free(r);
        qmp_buf_free(&c.out);
    }
}

static void test_reader_limits(void)
{
    struct qmp_buf in = { 0 };
    char *got;

    /* a message over the size limit: one error, skipped to its end */
    qmp_buf_addf(&in, "{\"execute\": \"x\", \"id\": \"");
    for (int i = 0; i < 100; i++) {
        qmp_buf_add(&in, "ab{[\\\"", 6);
    }
    qmp_buf_addf(&in, "\", \"x\": [[[[]]]]}{\"execute\": \"y\"}");
    for (size_t chunk = 1; chunk <= 1000; chunk *= 10) {
        got = read_all(in.data, in.len, chunk, 64, 1000);
        is_str(got, "E:JSON token size limit exceeded\nV:{\"execute\": \"y\"}\n",
               "a message over the size limit gets one error, the next one is read");
        free(got);
    }
    qmp_buf_free(&in);

    /* a top-level string or keyword over the limit */
    qmp_buf_add(&in, "\"", 1);
    for (int i = 0; i < 100; i++) {
        qmp_buf_add(&in, "aaaa", 4);
    }
    qmp_buf_add(&in, "\" {}", 4);
    got = read_all(in.data, in.len, 7, 64, 1000);
    is_str(got, "E:JSON token size limit exceeded\nV:{}\n", "a string over the size limit");
    free(got);
    in.data[in.len - 4] = ' ';
    got = read_all(in.data + 1, in.len - 1, 7, 64, 1000);
    is_str(got, "E:JSON token size limit exceeded\nV:{}\n", "a keyword over the size limit");
    free(got);
    qmp_buf_free(&in);

    /* just at the limit is fine */
    got = read_all("[\"12345\"]", 9, 1, 9, 1000);
    is_str(got, "V:[\"12345\"]\n", "a message of exactly the size limit");
    free(got);
    got = read_all("[\"123456\"] 1 ", 13, 1, 9, 1000);
    is_str(got, "E:JSON token size limit exceeded\nV:1\n", "one byte over");
    free(got);

    got = read_all("[1,2,3,4,5,6,7,8] {}", 20, 3, 1000, 10);
    is_str(got, "E:JSON token count limit exceeded\nV:{}\n", "the token count limit");
    free(got);

    /* nesting: QEMU's limit and recovery */
    for (int depth = QMP_MAX_DEPTH; depth <= QMP_MAX_DEPTH + 1; depth++) {
        int errs = 0;
        for (int i = 0; i < depth; i++) {
            qmp_buf_add(&in, "[", 1);
        }
        for (int i = 0; i < depth; i++) {
            qmp_buf_add(&in, "]", 1);
        }
        got = read_all(in.data, in.len, 4096, QMP_MAX_MESSAGE, QMP_MAX_TOKENS);
        for (char *p = got; (p = strstr(p, "E:JSON parse error, expecting value")); p++) {
            errs++;
        }
        if (depth == QMP_MAX_DEPTH) {
            ok(!strncmp(got, "V:[[[", 5) && !errs, "nesting %d deep is read", depth);
        } else {
            ok(!strncmp(got, "E:JSON nesting depth limit exceeded\n", 36) && errs == depth,
               "nesting %d deep: QEMU's error, then each ']' alone (%d)", depth, errs);
        }
        free(got);
        qmp_buf_free(&in);
    }
}

static void test_utf8(void)
{
    static const struct { const char *s; int32_t cp; size_t used; } cases[] = {
        { "A", 'A', 1 }, { "\xc3\xa9", 0xE9, 2 }, { "\xc0\x80", 0, 2 }, { "\xc1\xbf", -1, 2 },
        { "\xe2\x82(", -1, 2 }, { "\xed\xa0\x80", -1, 3 }, { "\xef\xbf\xbf", -1, 3 },
        { "\xef\xb7\x90", -1, 3 }, { "\xf0\x9f\x98\x80", 0x1F600, 4 },
        { "\xf4\x90\x80\x80", -1, 4 }, { "\xf8\x88\x80\x80\x80", -1, 5 }, { "\x80", -1, 1 },
        { "\xfe", -1, 1 }, { "\xfd", -1, 1 },
    };

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        size_t used;
        int32_t cp = qmp_utf8_decode((const unsigned char *)cases[i].s, strlen(cases[i].s), &used);
        ok(cp == cases[i].cp && used == cases[i].used, "utf8 case %zu: %d/%zu", i, cp, used);
    }
}

/* --- argument tables --- */

static const char *const one_two[] = { "one", "two", NULL };
static const struct qmp_arg enum_elem = { "", QMP_ENUM, false, one_two };
static const struct qmp_arg u32_elem = { "", QMP_UINT32 };
static const struct qmp_arg inner[] = {
    { "x", QMP_INT },
    { "e", QMP_ENUM, true, one_two },
    { "g", QMP_UINT32, true },
    { NULL },
};
static const struct qmp_arg obj_elem = { "", QMP_OBJECT, .members = inner };
static const struct qmp_arg table[] = {
    { "s", QMP_STR },
    { "i", QMP_INT, true },
    { "u", QMP_UINT64, true },
    { "u32", QMP_UINT32, true },
    { "b", QMP_BOOL, true },
    { "n", QMP_NUMBER, true },
    { "e", QMP_ENUM, true, one_two },
    { "any", QMP_ANY, true },
    { "o", QMP_OBJECT, true, .members = inner },
    { "l", QMP_ARRAY, true, .element = &obj_elem },
    { "le", QMP_ARRAY, true, .element = &enum_elem },
    { "lu", QMP_ARRAY, true, .element = &u32_elem },
    { NULL },
};

static void check_args(const char *args, const char *want)
{
    json_object *o = json_tokener_parse(args);
    struct error *err = NULL;
    int r = qmp_check_args(o, table, &err);
    char *what = printable(args);

    if (want) {
        ok(r < 0 && err, "%s are refused", what);
        is_str(err ? err->msg : NULL, want, what);
    } else {
        ok(r == 0 && !err, "%s are accepted", what);
    }
    error_free(err);
    json_object_put(o);
    free(what);
}

static void test_args(void)
{
    json_object *o;
    struct error *err = NULL;
    static const struct qmp_arg speed[] = {
        { "device", QMP_STR }, { "speed", QMP_INT }, { NULL },
    };

    check_args("{\"s\": \"x\", \"i\": -5, \"u\": 18446744073709551615, \"b\": false, \"n\": 1.5, "
               "\"e\": \"two\", \"any\": null, \"o\": {\"x\": 1}, \"l\": [{\"x\": 2, \"e\": \"one\"}], "
               "\"le\": [\"one\"]}", NULL);
    check_args("{}", "Parameter 's' is missing");
    check_args("{\"s\": 1}", "Invalid parameter type for 's', expected: string");
    check_args("{\"s\": null}", "Invalid parameter type for 's', expected: string");
    check_args("{\"s\": \"\", \"i\": 1.0}", "Invalid parameter type for 'i', expected: integer");
    check_args("{\"s\": \"\", \"i\": 9223372036854775808}",
               "Invalid parameter type for 'i', expected: integer");
    check_args("{\"s\": \"\", \"u\": 1.5}", "Parameter 'u' expects uint64");
    check_args("{\"s\": \"\", \"u\": \"1\"}", "Parameter 'u' expects uint64");
    check_args("{\"s\": \"\", \"u32\": -1}", "Parameter 'u32' expects uint32_t");
    check_args("{\"s\": \"\", \"u32\": 4294967296}", "Parameter 'u32' expects uint32_t");
    check_args("{\"s\": \"\", \"u32\": 4294967295}", NULL);
    check_args("{\"s\": \"\", \"b\": 1}", "Invalid parameter type for 'b', expected: boolean");
    check_args("{\"s\": \"\", \"n\": \"1\"}", "Invalid parameter type for 'n', expected: number");
    check_args("{\"s\": \"\", \"e\": \"three\"}", "Parameter 'e' does not accept value 'three'");
    check_args("{\"s\": \"\", \"e\": 3}", "Invalid parameter type for 'e', expected: string");
    check_args("{\"s\": \"\", \"o\": []}", "Invalid parameter type for 'o', expected: object");
    check_args("{\"s\": \"\", \"o\": {}}", "Parameter 'o.x' is missing");
    check_args("{\"s\": \"\", \"o\": {\"x\": 1, \"y\": 2}}", "Parameter 'o.y' is unexpected");
    check_args("{\"s\": \"\", \"o\": {\"x\": 1, \"e\": \"no\"}}",
               "Parameter 'e' does not accept value 'no'");
    check_args("{\"s\": \"\", \"o\": {\"x\": 1, \"g\": -1}}", "Parameter 'g' expects uint32_t");
    check_args("{\"s\": \"\", \"l\": {}}", "Invalid parameter type for 'l', expected: array");
    check_args("{\"s\": \"\", \"l\": [1]}", "Invalid parameter type for 'l[0]', expected: object");
    check_args("{\"s\": \"\", \"l\": [{\"x\": 1}, {\"x\": \"1\"}]}",
               "Invalid parameter type for 'l[1].x', expected: integer");
    check_args("{\"s\": \"\", \"l\": [{\"x\": 1, \"z\": 0}]}", "Parameter 'l[0].z' is unexpected");
    check_args("{\"s\": \"\", \"le\": [\"one\", \"three\"]}",
               "Parameter 'null' does not accept value 'three'");
    check_args("{\"s\": \"\", \"le\": [1]}", "Invalid parameter type for 'le[0]', expected: string");
    check_args("{\"s\": \"\", \"lu\": [-1]}", "Parameter 'null' expects uint32_t");
    check_args("{\"s\": \"\", \"zz\": 1}", "Parameter 'zz' is unexpected");

    /* a negative uint64 is read modulo 2^64, as QEMU does */
    o = json_tokener_parse("{\"s\": \"\", \"u\": -1}");
    ok(qmp_check_args(o, table, NULL) == 0, "a negative uint64 is accepted");
    json_object *u;
    json_object_object_get_ex(o, "u", &u);
    ok(json_object_get_uint64(u) == UINT64_MAX, "and reads back as 2^64-1");
    json_object_put(o);

    /* several unknown arguments: the one QEMU names (GLib's hash table) */
    o = json_tokener_parse("{\"device\": \"a\", \"speed\": 1, \"foo\": 1, \"bar\": 2}");
    qmp_check_args(o, speed, &err);
    is_str(err ? err->msg : NULL, "Parameter 'bar' is unexpected", "QEMU's pick among foo, bar");
    error_free(err);
    err = NULL;
    json_object_put(o);
    o = json_tokener_parse("{\"device\": \"a\", \"speed\": 1, \"d\": 1, \"e\": 2, \"a\": 3}");
    qmp_check_args(o, speed, &err);
    is_str(err ? err->msg : NULL, "Parameter 'e' is unexpected", "QEMU's pick among d, e, a");
    error_free(err);
    json_object_put(o);
}

/* --- a server in a thread --- */

struct fixture {
    struct loop *loop;
    struct qmp_server *srv;
    pthread_t thread;
    char dir[64], path[128];
    pthread_mutex_t lock;
    struct qmp_buf log;
    pthread_t emitters[8];
    int nemitters;
    /* a thread started before the loop thread, as a worker pool is: it
     * has not synchronised with the loop thread when it sends events */
    pthread_t early;
    int early_go;       /* relaxed atomics: 1 go, -1 quit */
};

static void *early_thread(void *opaque)
{
    struct fixture *f = opaque;
    int go;

    while (!(go = __atomic_load_n(&f->early_go, __ATOMIC_RELAXED))) {
        msleep(1);
    }
    for (int i = 0; go > 0 && i < 50; i++) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "n", json_object_new_int(i));
        qmp_server_event(f->srv, "EARLY", d);
    }
    return NULL;
}

static void fx_log(void *opaque, const char *fmt, ...)
{
    struct fixture *f = opaque;
    va_list ap;
    char *m;

    va_start(ap, fmt);
    if (vasprintf(&m, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    pthread_mutex_lock(&f->lock);
    qmp_buf_addf(&f->log, "%s\n", m);
    pthread_mutex_unlock(&f->lock);
    free(m);
}

static bool log_has(struct fixture *f, const char *s)
{
    bool r;

    pthread_mutex_lock(&f->lock);
    r = f->log.data && strstr(f->log.data, s);
    pthread_mutex_unlock(&f->lock);
    return r;
}

static bool wait_log(struct fixture *f, const char *s)
{
    for (int i = 0; i < 500; i++) {
        if (log_has(f, s)) {
            return true;
        }
        msleep(10);
    }
    return false;
}

static int h_echo(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)opaque;
    (void)errp;
    *ret = json_object_get(args);
    return 0;
}

static int h_fail(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    json_object *d;

    (void)ret;
    (void)opaque;
    json_object_object_get_ex(args, "device", &d);
    error_setg(errp, "Device '%s' not found", json_object_get_string(d));
    error_append_hint(errp, "a hint is not sent");
    error_set_class(errp, QMP_ERR_DEVICE_NOT_FOUND);
    return -ENOENT;
}

static int h_errno(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    (void)args;
    (void)ret;
    (void)opaque;
    (void)errp;
    return -EPERM;
}

struct emit_job {
    struct fixture *f;
    int64_t count, size, delay;
};

static json_object *event_data(int64_t i, int64_t size)
{
    json_object *d = json_object_new_object();

    json_object_object_add(d, "n", json_object_new_int64(i));
    if (size) {
        char *s = xmalloc(size + 1);
        memset(s, 'p', size);
        s[size] = 0;
        json_object_object_add(d, "pad", json_object_new_string(s));
        free(s);
    }
    return d;
}

static void *emitter(void *opaque)
{
    struct emit_job *j = opaque;

    for (int64_t i = 0; i < j->count; i++) {
        qmp_server_event(j->f->srv, "TICK", event_data(i, j->size));
        if (j->delay) {
            msleep(j->delay);
        }
    }
    free(j);
    return NULL;
}

static int64_t get_int(json_object *args, const char *name, int64_t dflt)
{
    json_object *v;

    return json_object_object_get_ex(args, name, &v) ? json_object_get_int64(v) : dflt;
}

/* emit {count, size?, thread?}: events TICK {"n": i}, here or from a thread */
static int h_emit(json_object *args, json_object **ret, void *opaque, struct error **errp)
{
    struct fixture *f = opaque;
    struct emit_job *j = xzalloc(sizeof(*j));

    (void)ret;
    (void)errp;
    j->f = f;
    j->count = get_int(args, "count", 1);
    j->size = get_int(args, "size", 0);
    j->delay = get_int(args, "delay", 0);
    if (get_int(args, "thread", 0) && f->nemitters < (int)ARRAY_SIZE(f->emitters)) {
        pthread_create(&f->emitters[f->nemitters++], NULL, emitter, j);
    } else {
        emitter(j);
    }
    return 0;
}

static const struct qmp_arg echo_args[] = {
    { "s", QMP_STR }, { "u", QMP_UINT64, true }, { "o", QMP_OBJECT, true, .members = inner },
    { NULL },
};
static const struct qmp_arg fail_args[] = { { "device", QMP_STR }, { NULL } };
static const struct qmp_arg emit_args[] = {
    { "count", QMP_INT, true }, { "size", QMP_INT, true }, { "thread", QMP_BOOL, true },
    { "delay", QMP_INT, true }, { NULL },
};
static const struct qmp_command fx_commands[] = {
    { "echo", h_echo, echo_args },
    { "fail", h_fail, fail_args },
    { "fail-errno", h_errno, NULL },
    { "emit", h_emit, emit_args },
    { NULL },
};

static void *loop_thread(void *opaque)
{
    loop_run(opaque);
    return NULL;
}

static void fx_start(struct fixture *f, unsigned max_clients)
{
    struct error *err = NULL;

    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    strcpy(f->dir, "/tmp/test-qmp.XXXXXX");
    if (!mkdtemp(f->dir)) {
        BUG("mkdtemp: %s", strerror(errno));
    }
    snprintf(f->path, sizeof(f->path), "%s/qmp.sock", f->dir);
    f->loop = loop_new();
    f->srv = qmp_server_new(&(struct qmp_server_config){
        .loop = f->loop, .commands = fx_commands, .opaque = f, .max_clients = max_clients,
        .version_major = 7, .version_minor = 2, .version_micro = 0, .package = "test",
        .log = fx_log,
    });
    if (qmp_server_listen(f->srv, f->path, 0600, &err) < 0) {
        BUG("listen: %s", err->msg);
    }
    pthread_create(&f->early, NULL, early_thread, f);
    pthread_create(&f->thread, NULL, loop_thread, f->loop);
}

static void fx_stop(struct fixture *f)
{
    int quit = -1, zero = 0;

    __atomic_compare_exchange_n(&f->early_go, &zero, quit, false, __ATOMIC_RELAXED,
                                __ATOMIC_RELAXED);
    pthread_join(f->early, NULL);
    loop_quit(f->loop);
    pthread_join(f->thread, NULL);
    for (int i = 0; i < f->nemitters; i++) {
        pthread_join(f->emitters[i], NULL);
    }
    qmp_server_free(f->srv);
    loop_free(f->loop);
    ok(access(f->path, F_OK) < 0, "the server removed its socket");
    rmdir(f->dir);
    qmp_buf_free(&f->log);
    pthread_mutex_destroy(&f->lock);
}

/* a raw connection */
struct raw {
    int fd;
    struct qmp_buf in;
    size_t scanned;     /* bytes of in known to hold no newline */
};

static void raw_open(struct raw *r, const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    memset(r, 0, sizeof(*r));
    strcpy(sa.sun_path, path);
    r->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        BUG("connect: %s", strerror(errno));
    }
}

static void raw_send(struct raw *r, const char *s)
{
    size_t len = strlen(s);

    while (len) {
        ssize_t n = send(r->fd, s, len, MSG_NOSIGNAL);
        if (n <= 0) {
            return;
        }
        s += n;
        len -= n;
    }
}

/* The next line (with its "\r\n"); "<EOF>" or "<TIMEOUT>". */
static char *raw_line(struct raw *r, int timeout_ms)
{
    for (;;) {
        size_t have = qmp_buf_pending(&r->in);
        char *start = r->in.data + r->in.off;
        char *nl = have > r->scanned ? memchr(start + r->scanned, '\n', have - r->scanned) : NULL;
        struct pollfd p = { .fd = r->fd, .events = POLLIN };
        ssize_t n;
        if (nl) {
            char *line = xstrndup(start, nl + 1 - start);
            qmp_buf_consume(&r->in, nl + 1 - start);
            r->scanned = 0;
            return line;
        }
        r->scanned = have;
        if (poll(&p, 1, timeout_ms) <= 0) {
            return xstrdup("<TIMEOUT>");
        }
        /* read straight into the buffer: lines of a megabyte come */
        qmp_buf_add(&r->in, "", 0);
        if (r->in.cap - r->in.len < 65537) {
            r->in.data = xrealloc(r->in.data, r->in.cap + 65537);
            r->in.cap += 65537;
        }
        n = recv(r->fd, r->in.data + r->in.len, r->in.cap - r->in.len - 1, 0);
        if (n <= 0) {
            return xstrdup("<EOF>");
        }
        r->in.len += n;
    }
}

static void raw_close(struct raw *r)
{
    close(r->fd);
    qmp_buf_free(&r->in);
}

static void expect_line(struct raw *r, const char *want, const char *what)
{
    char *l = raw_line(r, 5000);

    is_str(l, want, what);
    free(l);
}

static void test_server_basics(void)
{
    struct fixture f;
    struct raw a, b;
    struct stat st;
    char *l;

    fx_start(&f, 0);
    ok(stat(f.path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600,
       "the socket has the mode asked for (%o)", st.st_mode & 0777);

    raw_open(&a, f.path);
    expect_line(&a, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, "
                "\"package\": \"test\"}, \"capabilities\": []}}\r\n", "the greeting");
    raw_send(&a, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"x\"}}");
    expect_line(&a, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities "
                "negotiation with 'qmp_capabilities'\"}}\r\n", "no command before negotiation");
    raw_send(&a, "{\"execute\": \"qmp_capabilities\", \"id\": {\"n\": [1, null]}}");
    expect_line(&a, "{\"return\": {}, \"id\": {\"n\": [1, null]}}\r\n", "negotiation, id echoed");
    raw_send(&a, "{\"execute\": \"qmp_capabilities\"}");
    expect_line(&a, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities "
                "negotiation is already complete, command ignored\"}}\r\n", "negotiation twice");
    raw_send(&a, "{\"execute\": \"fail\", \"arguments\": {\"device\": \"vda\"}, \"id\": 1}");
    expect_line(&a, "{\"id\": 1, \"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'vda' "
                "not found\"}}\r\n", "a handler's error class, without its hint");
    raw_send(&a, "{\"execute\": \"fail-errno\"}");
    expect_line(&a, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"fail-errno failed: "
                "Operation not permitted\"}}\r\n", "a handler that sets no error");
    raw_send(&a, "{\"execute\": \"query-commands\"}");
    expect_line(&a, "{\"return\": [{\"name\": \"emit\"}, {\"name\": \"fail-errno\"}, {\"name\": \"fail\"}, "
                "{\"name\": \"echo\"}, {\"name\": \"query-commands\"}, {\"name\": \"query-version\"}, "
                "{\"name\": \"qmp_capabilities\"}]}\r\n", "query-commands");
    raw_send(&a, "{\"execute\": \"query-version\", \"arguments\": {}}");
    expect_line(&a, "{\"return\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, "
                "\"package\": \"test\"}}\r\n", "query-version");
    raw_send(&a, "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}}");
    expect_line(&a, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities "
                "negotiation is already complete, command ignored\"}}\r\n", "oob after negotiation");

    /* a second client, still negotiating: oob is not offered */
    raw_open(&b, f.path);
    free(raw_line(&b, 5000));
    raw_send(&b, "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}}");
    expect_line(&b, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Capability oob not "
                "available\"}}\r\n", "oob is not available");

    /* pipelined, split, interleaved between clients */
    raw_send(&a, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"1\"}}{\"execute\": \"nope\"} [");
    raw_send(&b, "{\"execute\": \"qmp_capabilities\"}");
    expect_line(&a, "{\"return\": {\"s\": \"1\"}}\r\n", "pipelined 1");
    expect_line(&a, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has "
                "not been found\"}}\r\n", "pipelined 2");
    expect_line(&b, "{\"return\": {}}\r\n", "the other client is served meanwhile");
    raw_send(&a, "1]");
    expect_line(&a, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON "
                "object\"}}\r\n", "a message across writes");

    /* events: to negotiated clients only, before the reply, QEMU's format */
    struct raw c;
    raw_open(&c, f.path);
    free(raw_line(&c, 5000));
    raw_send(&a, "{\"execute\": \"emit\", \"arguments\": {\"count\": 2}, \"id\": \"e\"}");
    for (int i = 0; i < 2; i++) {
        long long s, us;
        int n, end = 0;
        char want[64];
        l = raw_line(&a, 5000);
        snprintf(want, sizeof(want), "\"event\": \"TICK\", \"data\": {\"n\": %d}}\r\n", i);
        n = sscanf(l, "{\"timestamp\": {\"seconds\": %lld, \"microseconds\": %lld}, %n", &s, &us, &end);
        ok(n == 2 && end && !strcmp(l + end, want) && llabs(s - (long long)time(NULL)) < 60 &&
           us >= 0 && us < 1000000, "event %d as QEMU writes it: %.*s", i, (int)strcspn(l, "\r"), l);
        free(l);
        l = raw_line(&b, 5000);
        ok(strstr(l, want) != NULL, "event %d reaches the other negotiated client", i);
        free(l);
    }
    expect_line(&a, "{\"return\": {}, \"id\": \"e\"}\r\n", "the reply after the events");
    raw_send(&c, "{\"execute\": \"qmp_capabilities\"}");
    expect_line(&c, "{\"return\": {}}\r\n", "no event for a client still negotiating");
    raw_close(&c);

    /* disconnect mid-message; others go on */
    raw_send(&b, "{\"execute\": \"ec");
    raw_close(&b);
    ok(wait_log(&f, "QMP client 2 disconnected"), "a client gone mid-message is logged");
    raw_send(&a, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"still\"}}");
    expect_line(&a, "{\"return\": {\"s\": \"still\"}}\r\n", "the others are still served");

    /* a message over the size limit */
    {
        size_t big = QMP_MAX_MESSAGE + 100;
        char *m = xmalloc(big + 128);
        int k = sprintf(m, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"");
        memset(m + k, 'z', big);
        strcpy(m + k + big, "\"}}{\"execute\": \"echo\", \"arguments\": {\"s\": \"after\"}}");
        raw_send(&a, m);
        free(m);
        expect_line(&a, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON token size limit "
                    "exceeded\"}}\r\n", "a message over 1 MiB gets one error");
        expect_line(&a, "{\"return\": {\"s\": \"after\"}}\r\n", "and the connection goes on");
    }
    raw_close(&a);
    fx_stop(&f);
}

/* The client API against the server. */
static void test_client(void)
{
    struct fixture f;
    struct qmp_client *c, *d;
    struct error *err = NULL;
    json_object *ret = NULL, *ev;
    int r;

    fx_start(&f, 0);
    c = qmp_client_connect(f.path, 5000, &err);
    ok(c && !err, "the client connects and negotiates");
    r = qmp_client_execute(c, "query-version", NULL, &ret, &err);
    ok(r == 0 && json_object_is_type(ret, json_type_object), "query-version returns an object");
    json_object_put(ret);
    r = qmp_client_execute(c, "echo", json_tokener_parse("{\"s\": \"x\", \"u\": -1}"), &ret, &err);
    {
        char *s = qmp_json_string(ret);
        is_str(s, "{\"s\": \"x\", \"u\": 18446744073709551615}", "arguments and return values");
        free(s);
    }
    json_object_put(ret);
    r = qmp_client_execute(c, "fail", json_tokener_parse("{\"device\": \"vdb\"}"), &ret, &err);
    ok(r == -EIO && err && !strcmp(err->msg, "Device 'vdb' not found") &&
       !strcmp(error_class(err), QMP_ERR_DEVICE_NOT_FOUND) && !ret,
       "a QMP error keeps its desc and class");
    error_free(err);
    err = NULL;
    r = qmp_client_execute(c, "echo", json_tokener_parse("{\"s\": 1}"), NULL, &err);
    ok(r == -EIO && err && !strcmp(err->msg, "Invalid parameter type for 's', expected: string") &&
       !strcmp(error_class(err), QMP_ERR_GENERIC), "argument errors: %s", err ? err->msg : "");
    error_free(err);
    err = NULL;
    r = qmp_client_execute(c, "nope", NULL, NULL, &err);
    ok(r == -EIO && err && !strcmp(error_class(err), QMP_ERR_COMMAND_NOT_FOUND), "CommandNotFound");
    error_free(err);
    err = NULL;

    /* events met while waiting for a reply are queued */
    d = qmp_client_connect(f.path, 5000, &err);
    r = qmp_client_execute(c, "emit", json_tokener_parse("{\"count\": 3}"), NULL, &err);
    ok(r == 0, "emit");
    for (int i = 0; i < 3; i++) {
        json_object *data, *n, *ts;
        ev = qmp_client_event(c, 0);
        ok(ev && json_object_object_get_ex(ev, "data", &data) &&
           json_object_object_get_ex(data, "n", &n) && json_object_get_int(n) == i &&
           json_object_object_get_ex(ev, "timestamp", &ts), "queued event %d", i);
        json_object_put(ev);
        ev = qmp_client_event(d, 5000);
        ok(ev && json_object_object_get_ex(ev, "data", &data) &&
           json_object_object_get_ex(data, "n", &n) && json_object_get_int(n) == i,
           "the other client gets event %d too", i);
        json_object_put(ev);
    }
    ok(!qmp_client_event(c, 50), "no more events: NULL after the timeout");
    {
        /* from a thread that has not synchronised with the loop thread
         * (ThreadSanitizer watches) */
        json_object *data, *n;
        bool order = true;
        __atomic_store_n(&f.early_go, 1, __ATOMIC_RELAXED);
        for (int i = 0; i < 50; i++) {
            ev = qmp_client_event(c, 5000);
            order &= ev && json_object_object_get_ex(ev, "data", &data) &&
                     json_object_object_get_ex(data, "n", &n) && json_object_get_int(n) == i;
            json_object_put(ev);
            ev = qmp_client_event(d, 5000);
            json_object_put(ev);
        }
        ok(order, "events from a thread started before the loop, in order");
    }

    /* from other threads, in order, to every client */
    r = qmp_client_execute(c, "emit", json_tokener_parse("{\"count\": 500, \"thread\": true}"),
                           NULL, &err);
    ok(r == 0, "events from a thread");
    {
        int got_c = 0, got_d = 0;
        bool order = true;
        for (int i = 0; i < 500; i++) {
            json_object *data, *n;
            ev = qmp_client_event(c, 5000);
            if (ev && json_object_object_get_ex(ev, "data", &data) &&
                json_object_object_get_ex(data, "n", &n)) {
                order &= json_object_get_int(n) == i;
                got_c++;
            }
            json_object_put(ev);
            ev = qmp_client_event(d, 5000);
            if (ev && json_object_object_get_ex(ev, "data", &data) &&
                json_object_object_get_ex(data, "n", &n)) {
                order &= json_object_get_int(n) == i;
                got_d++;
            }
            json_object_put(ev);
        }
        ok(got_c == 500 && got_d == 500 && order, "500 events from a thread, in order (%d, %d)",
           got_c, got_d);
    }
    qmp_client_close(d);
    qmp_client_close(c);

    /* errors name the socket */
    c = qmp_client_connect("/nonexistent/qmp.sock", 1000, &err);
    ok(!c && err && strstr(err->msg, "'/nonexistent/qmp.sock'"), "%s", err ? err->msg : "");
    error_free(err);
    err = NULL;
    fx_stop(&f);
}

static void test_hardening(void)
{
    struct fixture f;
    struct raw r[3];
    struct error *err = NULL;
    struct qmp_server *other;
    char *l;
    int fd;

    /* max clients */
    fx_start(&f, 2);
    raw_open(&r[0], f.path);
    raw_open(&r[1], f.path);
    raw_open(&r[2], f.path);
    l = raw_line(&r[0], 5000);
    ok(!strncmp(l, "{\"QMP\"", 6), "client 1 of 2 is greeted");
    free(l);
    l = raw_line(&r[1], 5000);
    ok(!strncmp(l, "{\"QMP\"", 6), "client 2 of 2 is greeted");
    free(l);
    l = raw_line(&r[2], 5000);
    is_str(l, "<EOF>", "client 3 of 2 is closed");
    free(l);
    ok(wait_log(&f, "already 2 clients"), "and that is logged");
    raw_close(&r[2]);

    /* a live socket is an error, a regular file is left alone */
    struct loop *l2 = loop_new();
    other = qmp_server_new(&(struct qmp_server_config){ .loop = l2, .commands = fx_commands });
    ok(qmp_server_listen(other, f.path, 0600, &err) == -EADDRINUSE && err &&
       strstr(err->msg, f.path), "a live socket is not taken over: %s", err ? err->msg : "");
    error_free(err);
    err = NULL;
    {
        char file[160];
        snprintf(file, sizeof(file), "%s/file", f.dir);
        fd = open(file, O_CREAT | O_WRONLY, 0600);
        close(fd);
        ok(qmp_server_listen(other, file, 0600, &err) == -EEXIST && access(file, F_OK) == 0,
           "a file that is not a socket is left alone: %s", err ? err->msg : "");
        error_free(err);
        err = NULL;
        unlink(file);
    }
    qmp_server_free(other);
    loop_free(l2);

    /* a client that does not read is dropped once 16 MiB wait for it */
    raw_send(&r[0], "{\"execute\": \"qmp_capabilities\"}");
    expect_line(&r[0], "{\"return\": {}}\r\n", "client 1 negotiates");
    raw_send(&r[1], "{\"execute\": \"qmp_capabilities\"}");
    expect_line(&r[1], "{\"return\": {}}\r\n", "client 2 negotiates, then reads no more");
    raw_send(&r[0], "{\"execute\": \"emit\", \"arguments\": {\"count\": 24, \"size\": 1048576, "
             "\"thread\": true, \"delay\": 30}}");
    {
        int events = 0;
        for (;;) {
            l = raw_line(&r[0], 10000);
            if (!strncmp(l, "{\"timestamp\"", 12)) {
                events++;
            } else if (strncmp(l, "{\"return\"", 9)) {
                free(l);
                break;
            }
            free(l);
            if (events == 24) {
                break;
            }
        }
        ok(events == 24, "a client that reads gets all 24 MiB of events (%d)", events);
    }
    ok(wait_log(&f, "QMP client 2 disconnected: it does not read"),
       "the one that does not read is disconnected");
    raw_close(&r[1]);
    raw_close(&r[0]);
    fx_stop(&f);

    /* a stale socket is replaced */
    fx_start(&f, 0);
    {
        struct qmp_server *again;
        struct loop *l3 = loop_new();
        char stale[160];
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(stale, sizeof(stale), "%s/stale.sock", f.dir);
        strcpy(sa.sun_path, stale);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);      /* bound, never listened: nobody answers */
        again = qmp_server_new(&(struct qmp_server_config){ .loop = l3, .commands = fx_commands });
        ok(qmp_server_listen(again, stale, 0640, &err) == 0, "a stale socket is replaced");
        struct stat st;
        ok(stat(stale, &st) == 0 && (st.st_mode & 0777) == 0640, "with the mode asked for");
        qmp_server_free(again);
        ok(access(stale, F_OK) < 0, "and removed when the server goes");
        loop_free(l3);
    }

    /* a relative path is removed even after a chdir */
    {
        struct loop *l4 = loop_new();
        struct qmp_server *rel = qmp_server_new(&(struct qmp_server_config){ .loop = l4 });
        char cwd[4096], abs[200];
        if (!getcwd(cwd, sizeof(cwd)) || chdir(f.dir) < 0) {
            BUG("chdir");
        }
        ok(qmp_server_listen(rel, "rel.sock", 0600, NULL) == 0, "listen on a relative path");
        if (chdir("/") < 0) {
            BUG("chdir");
        }
        qmp_server_free(rel);
        loop_free(l4);
        snprintf(abs, sizeof(abs), "%s/rel.sock", f.dir);
        ok(access(abs, F_OK) < 0, "removed from where it was made, after a chdir");
        if (chdir(cwd) < 0) {
            BUG("chdir");
        }
    }

    /* uid: neither ours nor root is refused (needs root to try) */
    if (geteuid() == 0) {
        pid_t pid;
        int st;
        chmod(f.dir, 0755);
        chmod(f.path, 0777);
        pid = fork();
        if (pid == 0) {
            struct raw x;
            char *line;
            if (setgid(65534) || setuid(65534)) {
                _exit(3);
            }
            raw_open(&x, f.path);
            line = raw_line(&x, 5000);
            _exit(!strcmp(line, "<EOF>") ? 0 : 1);
        }
        waitpid(pid, &st, 0);
        ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a client of another uid is refused");
        ok(wait_log(&f, "neither root nor uid 0"), "and that is logged");
    } else {
        ok(1, "# SKIP not root: cannot connect as another uid");
        ok(1, "# SKIP not root");
    }
    fx_stop(&f);
}

/* --- the client against misbehaving servers --- */

struct fake {
    int fd;
    const char *const *script;
};

/*
 * Steps: "<" read one message (up to a newline), ">TEXT" send, "1TEXT"
 * send a byte at a time, "c" close, "sN" sleep N ms, "w" wait for EOF.
 */
static void *fake_server(void *opaque)
{
    struct fake *fk = opaque;

    for (const char *const *s = fk->script; *s; s++) {
        const char *st = *s;
        char ch;
        switch (st[0]) {
        case '<':
            while (read(fk->fd, &ch, 1) == 1 && ch != '\n') {
            }
            break;
        case '>':
            if (send(fk->fd, st + 1, strlen(st + 1), MSG_NOSIGNAL) < 0) {
                return NULL;
            }
            break;
        case '1':
            for (const char *p = st + 1; *p; p++) {
                if (send(fk->fd, p, 1, MSG_NOSIGNAL) < 0) {
                    return NULL;
                }
                msleep(1);
            }
            break;
        case 'c':
            close(fk->fd);
            fk->fd = -1;
            return NULL;
        case 's':
            msleep(atoi(st + 1));
            break;
        case 'w':
            while (read(fk->fd, &ch, 1) > 0) {
            }
            break;
        }
    }
    return NULL;
}

#define GREETING ">{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n"

/* Run @script against a client: connects, and if @cmd, executes it. */
static int fake_run(const char *const *script, const char *cmd, unsigned timeout,
                    json_object **ret, struct error **errp, struct qmp_client **keep)
{
    int sv[2];
    struct fake fk;
    pthread_t t;
    struct qmp_client *c;
    int r = 0;

    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    fk.fd = sv[1];
    fk.script = script;
    pthread_create(&t, NULL, fake_server, &fk);
    c = qmp_client_new_fd(sv[0], "fake.sock", timeout, errp);
    if (!c) {
        r = -1;
    } else if (cmd) {
        r = qmp_client_execute(c, cmd, NULL, ret, errp);
    }
    if (keep && c) {
        *keep = c;
        pthread_join(t, NULL);
    } else {
        qmp_client_close(c);
        pthread_join(t, NULL);
    }
    if (fk.fd >= 0) {
        close(fk.fd);
    }
    return r;
}

static void check_fake(const char *const *script, const char *cmd, unsigned timeout, int want_r,
                       const char *want_msg, const char *what)
{
    struct error *err = NULL;
    json_object *ret = NULL;
    int r = fake_run(script, cmd, timeout, &ret, &err, NULL);

    ok(r == want_r && (want_msg ? err && strstr(err->msg, want_msg) : !err),
       "%s: %d %s", what, r, err ? err->msg : "(no error)");
    json_object_put(ret);
    error_free(err);
}

static void test_client_faults(void)
{
    static const char *const silent[] = { "s300", NULL };
    static const char *const garbage[] = { ">}}}\n", "w", NULL };
    static const char *const not_qmp[] = { ">{\"hello\": 1}\r\n", "w", NULL };
    static const char *const not_object[] = { ">[1]\r\n", "w", NULL };
    static const char *const closes[] = { "c", NULL };
    static const char *const closes_after_greeting[] = { GREETING, "<", "c", NULL };
    static const char *const refuses_caps[] = {
        GREETING, "<", ">{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, "
        "\"id\": \"blockctl-1\"}\r\n", "w", NULL,
    };
    static const char *const closes_on_command[] = {
        GREETING, "<", ">{\"return\": {}, \"id\": \"blockctl-1\"}\r\n", "<", "c", NULL,
    };
    static const char *const ok_script[] = {
        "1{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\r\n", "<",
        ">{\"return\": {}, \"id\": \"blockctl-1\"}", "<",
        ">{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"A\"}\r\n"
        "{\"return\": 1, \"id\": \"blockctl-0\"}\r\n",     /* a stale reply */
        "1{\"event\": \"B\", \"data\": {}}{\"return\": {\"x\": [1]}, \"id\": \"blockctl-2\"}",
        NULL,
    };
    static const char *const strange_class[] = {
        GREETING, "<", ">{\"return\": {}, \"id\": \"blockctl-1\"}", "<",
        ">{\"id\": \"blockctl-2\", \"error\": {\"class\": \"SomethingNew\", \"desc\": \"odd\"}}",
        "w", NULL,
    };
    static const char *const no_return[] = {
        GREETING, "<", ">{\"return\": {}, \"id\": \"blockctl-1\"}", "<",
        ">{\"id\": \"blockctl-2\"}\r\n{\"id\": \"blockctl-2\", \"foo\": 1}", "w", NULL,
    };
    static const char *const slow_reply[] = {
        GREETING, "<", ">{\"return\": {}, \"id\": \"blockctl-1\"}", "<", "s400",
        ">{\"return\": \"late\", \"id\": \"blockctl-2\"}\r\n", "<",
        ">{\"return\": \"second\", \"id\": \"blockctl-3\"}\r\n", "w", NULL,
    };
    struct error *err = NULL;
    struct qmp_client *c = NULL;
    json_object *ret = NULL, *ev;
    int r;

    check_fake(silent, NULL, 100, -1, "'fake.sock': no greeting within 100 ms", "no greeting");
    check_fake(garbage, NULL, 5000, -1, "'fake.sock': the server sent invalid JSON", "garbage");
    check_fake(not_qmp, NULL, 5000, -1, "'fake.sock': not a QMP server", "not QMP");
    check_fake(not_object, NULL, 5000, -1, "not an object", "a greeting not an object");
    check_fake(closes, NULL, 5000, -1, "'fake.sock': the server closed the connection",
               "closed before the greeting");
    check_fake(closes_after_greeting, NULL, 5000, -1,
               "'fake.sock': the server closed the connection", "closed during negotiation");
    check_fake(refuses_caps, NULL, 5000, -1, "capabilities negotiation: no", "negotiation refused");
    check_fake(closes_on_command, "query-block", 5000, -ECONNRESET,
               "'fake.sock': the server closed the connection", "closed during a command");
    check_fake(strange_class, "x", 5000, -EIO, "odd", "an unknown error class");
    check_fake(no_return, "x", 5000, -EPROTO, "neither \"return\" nor \"error\"",
               "a reply without return or error");

    r = fake_run(ok_script, "query-block", 5000, &ret, &err, &c);
    {
        char *s = ret ? qmp_json_string(ret) : NULL;
        is_str(s, "{\"x\": [1]}", "the reply by id, past a stale reply and events, byte by byte");
        free(s);
    }
    ok(r == 0 && !err, "that command succeeded");
    json_object_put(ret);
    ev = qmp_client_event(c, 0);
    ok(ev && !strcmp(json_object_get_string(json_object_object_get(ev, "event")), "A"),
       "event A was queued");
    json_object_put(ev);
    ev = qmp_client_event(c, 0);
    ok(ev && !strcmp(json_object_get_string(json_object_object_get(ev, "event")), "B"),
       "event B was queued");
    json_object_put(ev);
    ok(!qmp_client_event(c, 100), "then the connection's end: NULL");
    qmp_client_close(c);

    {
        int sv[2];
        struct fake fk;
        pthread_t t;
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
        fk.fd = sv[1];
        fk.script = slow_reply;
        pthread_create(&t, NULL, fake_server, &fk);
        c = qmp_client_new_fd(sv[0], "fake.sock", 150, &err);
        r = qmp_client_execute(c, "slow", NULL, &ret, &err);
        ok(r == -ETIMEDOUT && err && strstr(err->msg, "no answer to 'slow' within 150 ms"),
           "a command times out: %s", err ? err->msg : "");
        error_free(err);
        err = NULL;
        msleep(400);
        r = qmp_client_execute(c, "next", NULL, &ret, &err);
        ok(r == 0 && ret && !strcmp(json_object_get_string(ret), "second"),
           "the late reply is dropped, the next command works");
        json_object_put(ret);
        qmp_client_close(c);
        pthread_join(t, NULL);
        close(fk.fd);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_writer();
    test_reader();
    test_reader_limits();
    test_utf8();
    test_args();
    test_server_basics();
    test_client();
    test_hardening();
    test_client_faults();
    return tap_done();
}
