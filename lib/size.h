/*
 * blockctl - sizes: parsing as qemu-img does, printing as qemu-img does
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef BLOCKCTL_LIB_SIZE_H
#define BLOCKCTL_LIB_SIZE_H

#include "lib/compiler.h"

/*
 * Parse a size: decimal with optional suffix b/B (bytes), k/K, m/M, g/G,
 * t/T, p/P, e/E (powers of 1024); a decimal fraction only with a suffix
 * ("1.5G"); hexadecimal "0x..." (qemu-img 7.2 still accepts a suffix on
 * it, deprecated, and so does blockctl).  @default_suffix applies
 * when none is given (0 means bytes).  Returns 0, -EINVAL (malformed) or
 * -ERANGE (too large).
 */
int size_parse(const char *str, uint64_t *out, char default_suffix);
/* Human size as qemu-img prints it: "64 MiB", "1.28 MiB", "512 B". */
void size_human(uint64_t n, char *buf, size_t len);

#endif
