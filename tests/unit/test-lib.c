/*
 * blockctl - unit tests of lib/: sizes, option lists, JSON writer, dirty bitmaps
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/bitmap.h"
#include "lib/jw.h"
#include "lib/opts.h"
#include "lib/size.h"

#include <errno.h>
#include <string.h>

#include "tests/unit/tap.h"

static void test_size_parse(void)
{
    static const struct { const char *s; int ret; uint64_t v; } cases[] = {
        { "0", 0, 0 }, { "512", 0, 512 }, { "1k", 0, 1024 }, { "1K", 0, 1024 },
        { "64M", 0, 64ULL << 20 }, { "1.5G", 0, 3ULL << 29 }, { "1.5k", 0, 1536 },
        { "0x10", 0, 16 }, { "010", 0, 10 }, { " 5", 0, 5 }, { "5b", 0, 5 }, { "5B", 0, 5 },
        { "1T", 0, 1ULL << 40 }, { "2P", 0, 2ULL << 50 }, { "7E", 0, 7ULL << 60 },
        { "1.5", -EINVAL, 0 }, { "1e3", -EINVAL, 0 }, { "abc", -EINVAL, 0 }, { "", -EINVAL, 0 },
        { "1MB", -EINVAL, 0 }, { "1k5", -EINVAL, 0 }, { "1.5b", -EINVAL, 0 }, { "-1", -EINVAL, 0 },
        { "16E", -ERANGE, 0 }, { "18446744073709551616", -ERANGE, 0 },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        uint64_t v = 0;
        int r = size_parse(cases[i].s, &v, 0);
        ok(r == cases[i].ret && (r < 0 || v == cases[i].v), "size_parse('%s') = %d, %" PRIu64,
           cases[i].s, r, v);
    }
}

static void test_size_human(void)
{
    static const struct { uint64_t v; const char *s; } cases[] = {
        { 0, "0 B" }, { 512, "512 B" }, { 999, "999 B" }, { 1000, "0.977 KiB" },
        { 1024, "1 KiB" }, { 1536, "1.5 KiB" }, { 196 * 1024, "196 KiB" },
        { 1342177, "1.28 MiB" }, { 64ULL << 20, "64 MiB" }, { 10ULL << 30, "10 GiB" },
        { 1ULL << 40, "1 TiB" }, { 1023488, "1e+03 KiB" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char buf[32];
        size_human(cases[i].v, buf, sizeof(buf));
        ok(!strcmp(buf, cases[i].s), "size_human(%" PRIu64 ") = '%s' (want '%s')", cases[i].v,
           buf, cases[i].s);
    }
}

static void test_opts(void)
{
    static const struct opt_desc desc[] = {
        { "a", OPT_STRING, NULL }, { "b", OPT_BOOL, NULL }, { "size", OPT_SIZE, NULL },
        { NULL, 0, NULL },
    };
    struct optlist l = { 0 };
    struct error *err = NULL;
    bool b = false;
    uint64_t sz = 0;

    ok(opts_parse(&l, "a=x,,y,b=on,size=1M", desc, &err) == 0, "opts_parse accepts a list");
    ok(opts_get(&l, "a") && !strcmp(opts_get(&l, "a"), "x,y"), "',,' is a literal comma");
    ok(opts_get_bool(&l, "b", &b, NULL) == 1 && b, "bool option");
    ok(opts_get_size(&l, "size", &sz, NULL) == 1 && sz == (1u << 20), "size option");
    ok(opts_parse(&l, "zzz=1", desc, &err) < 0 && err, "unknown key refused");
    error_free(err);
    err = NULL;
    ok(opts_parse(&l, "b=maybe", desc, &err) < 0 && err && strstr(err->msg, "'b'"),
       "bad bool refused while parsing, naming the parameter");
    error_free(err);
    err = NULL;
    ok(opts_parse(&l, "b=maybe", NULL, NULL) == 0 && opts_get_bool(&l, "b", &b, NULL) < 0,
       "bad bool refused by the getter");
    opts_free(&l);
}

static void test_jw(void)
{
    struct jw w;

    jw_init(&w, true);
    jw_object_begin(&w);
    jw_kv_string(&w, "s", "a\"b\n");
    jw_key(&w, "l");
    jw_array_begin(&w);
    jw_array_end(&w);
    jw_kv_int(&w, "n", -3);
    jw_kv_bool(&w, "t", true);
    jw_object_end(&w);
    ok(!strcmp(jw_text(&w), "{\n    \"s\": \"a\\\"b\\n\",\n    \"l\": [\n    ],\n"
                            "    \"n\": -3,\n    \"t\": true\n}"),
       "pretty JSON as qemu-img prints it");
    jw_free(&w);

    jw_init(&w, false);
    jw_object_begin(&w);
    jw_kv_string(&w, "u", "e\xe2\x82\xac\xf0\x9f\x98\x80\x7f\xff.\xe2\x82|\xc0\xaf");
    jw_object_end(&w);
    ok(strstr(jw_text(&w), "\"e\\u20AC\\uD83D\\uDE00\\u007F\\uFFFD.\\uFFFD|\\uFFFD\"") != NULL,
       "non-ASCII as \\uXXXX (surrogate pairs), invalid UTF-8 as U+FFFD, as QEMU");
    jw_free(&w);
}

/* Naive reference bitmap for the randomized test */
static void test_bitmap_random(void)
{
    uint64_t size = (37ULL << 20) + 12345, gran = 65536;
    uint64_t nbits = DIV_ROUND_UP(size, gran);
    struct dirty_bitmap *bm = bitmap_new(size, gran);
    bool *ref = xzalloc(nbits);
    uint64_t seed = 42;
    bool good = true;

    for (int op = 0; op < 3000 && good; op++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t off = (seed >> 20) % size;
        uint64_t len = 1 + (seed >> 7) % (4ULL << 20);
        len = MIN(len, size - off);
        if ((seed >> 3) % 3) {
            bitmap_set(bm, off, len);
            for (uint64_t b = off / gran; b <= (off + len - 1) / gran; b++) {
                ref[b] = true;
            }
        } else {
            bitmap_reset(bm, off, len);
            uint64_t a = DIV_ROUND_UP(off, gran);
            uint64_t e = (off + len == size) ? nbits : (off + len) / gran;
            for (uint64_t b = a; b < e; b++) {
                ref[b] = false;
            }
        }
        /* walk the extents and compare */
        uint64_t pos = 0, o, l, cnt = 0;
        bool *seen = xzalloc(nbits);
        while (bitmap_next_dirty(bm, pos, 0, &o, &l)) {
            for (uint64_t b = o / gran; b < DIV_ROUND_UP(o + l, gran); b++) {
                seen[b] = true;
            }
            pos = o + l;
        }
        for (uint64_t b = 0; b < nbits; b++) {
            if (seen[b] != ref[b]) {
                good = false;
                tap_diag("op %d: bit %" PRIu64 " is %d, expected %d", op, b, seen[b], ref[b]);
                break;
            }
            cnt += ref[b];
        }
        if (good && bm->count != cnt) {
            good = false;
            tap_diag("op %d: count %" PRIu64 " expected %" PRIu64, op, bm->count, cnt);
        }
        free(seen);
    }
    ok(good, "bitmap: 3000 random set/reset operations agree with a naive bitmap");

    /* serialize / deserialize round trip */
    size_t nbytes = DIV_ROUND_UP(nbits, 8);
    uint8_t *ser = xzalloc(ALIGN_UP(nbytes, 64));
    bitmap_serialize(bm, 0, ser, nbytes);
    struct dirty_bitmap *bm2 = bitmap_new(size, gran);
    bitmap_deserialize(bm2, 0, ser, nbytes);
    good = bm2->count == bm->count;
    for (uint64_t b = 0; b < nbits && good; b++) {
        good = ((ser[b / 8] >> (b % 8)) & 1) == ref[b];
    }
    ok(good, "bitmap: serialisation is LSB-first per byte and round-trips");
    bitmap_free(bm2);
    bitmap_free(bm);
    free(ser);
    free(ref);
}

static void test_bitmap_sparse_big(void)
{
    /* 16 TiB at 64 KiB: 256 Mi bits; a few dirty extents far apart */
    uint64_t size = 16ULL << 40;
    struct dirty_bitmap *bm = bitmap_new(size, 65536);
    uint64_t pos = 0, o, l, n = 0;

    bitmap_set(bm, 5ULL << 40, 1);
    bitmap_set(bm, (9ULL << 40) + 100, 200000);
    bitmap_set(bm, size - 1, 1);
    while (bitmap_next_dirty(bm, pos, 0, &o, &l)) {
        n++;
        pos = o + l;
    }
    ok(n == 3, "bitmap: three extents found in a 16 TiB bitmap (%" PRIu64 ")", n);
    ok(bitmap_dirty_bytes(bm) == 65536 + 4 * 65536 + 65536,
       "bitmap: dirty bytes %" PRIu64, bitmap_dirty_bytes(bm));
    ok(bitmap_get(bm, size - 1) && !bitmap_get(bm, 0), "bitmap_get");
    bitmap_free(bm);
    ok(bitmap_new(1 << 20, 1000) == NULL && bitmap_new(1 << 20, 256) == NULL,
       "bitmap: bad granularities refused");
}

int main(void)
{
    test_size_parse();
    test_size_human();
    test_opts();
    test_jw();
    test_bitmap_random();
    test_bitmap_sparse_big();
    return tap_done();
}
