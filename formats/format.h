/*
 * blockctl - the drivers formats/ provides
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A new format is one new driver: write formats/<name>.c ending with its
 * table, declare it here and list it in lib/block.c's driver table.
 */
#ifndef BLOCKCTL_FORMATS_FORMAT_H
#define BLOCKCTL_FORMATS_FORMAT_H

#include "lib/block.h"

extern const struct format_driver raw_driver;
extern const struct format_driver qcow2_driver;

#endif
