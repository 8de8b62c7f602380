/*
 * blockctl - size parsing and printing
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/size.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static int suffix_shift(char c)
{
    switch (c) {
    case 'b': case 'B': return 0;
    case 'k': case 'K': return 10;
    case 'm': case 'M': return 20;
    case 'g': case 'G': return 30;
    case 't': case 'T': return 40;
    case 'p': case 'P': return 50;
    case 'e': case 'E': return 60;
    default: return -1;
    }
}

int size_parse(const char *str, uint64_t *out, char default_suffix)
{
    const char *p = str;
    uint64_t val = 0;
    double frac = 0;
    bool have_frac = false, hex = false, digits = false;
    int shift;

    while (isspace((unsigned char)*p)) {
        p++;
    }
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        hex = true;
        p += 2;
        while (isxdigit((unsigned char)*p)) {
            unsigned d = isdigit((unsigned char)*p) ? *p - '0' : (tolower(*p) - 'a' + 10);
            if (val > (UINT64_MAX >> 4)) {
                return -ERANGE;
            }
            val = (val << 4) | d;
            digits = true;
            p++;
        }
    } else {
        while (isdigit((unsigned char)*p)) {
            unsigned d = *p - '0';
            if (val > (UINT64_MAX - d) / 10) {
                return -ERANGE;
            }
            val = val * 10 + d;
            digits = true;
            p++;
        }
        if (*p == '.') {
            double scale = 0.1;
            bool fdigits = false;
            p++;
            while (isdigit((unsigned char)*p)) {
                frac += (*p - '0') * scale;
                scale /= 10;
                fdigits = true;
                p++;
            }
            if (!fdigits && !digits) {
                return -EINVAL;
            }
            have_frac = true;
        }
    }
    if (!digits && !have_frac) {
        return -EINVAL;
    }
    if (*p) {
        shift = suffix_shift(*p);
        if (shift < 0 || p[1] != '\0') {
            return -EINVAL;
        }
        if (have_frac && shift == 0) {
            return -EINVAL;
        }
    } else {
        if (have_frac) {
            return -EINVAL;
        }
        shift = default_suffix ? suffix_shift(default_suffix) : 0;
        if (shift < 0) {
            shift = 0;
        }
    }
    (void)hex;
    if (shift > 0) {
        if (val > (UINT64_MAX >> shift)) {
            return -ERANGE;
        }
        double f = frac * (double)(1ULL << shift);
        val <<= shift;
        if (f >= (double)(UINT64_MAX - val)) {
            return -ERANGE;
        }
        val += (uint64_t)f;
    }
    *out = val;
    return 0;
}

void size_human(uint64_t n, char *buf, size_t len)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    int i = 0;

    /* Move to the next unit once the number would reach 1000 (qemu-img). */
    while (i < 6 && (double)n >= 1000.0 * (double)(1ULL << (10 * i))) {
        i++;
    }
    snprintf(buf, len, "%0.3g %sB", (double)n / (double)(1ULL << (10 * i)), suffixes[i]);
}
