/*
 * blockctl - an image's description as QEMU's QAPI ImageInfo
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * One builder for `info` (offline) and the agent's query-block and
 * query-named-block-nodes, so that both say the same; printers turn an
 * ImageInfo (ours or a qemu-storage-daemon's) into qemu-img info's human
 * or JSON output.
 */
#ifndef BLOCKCTL_LIB_IMAGEINFO_H
#define BLOCKCTL_LIB_IMAGEINFO_H

#include "lib/compiler.h"
#include "lib/block.h"
#include "lib/jw.h"

#include <json-c/json.h>
#include <stdio.h>

/*
 * ImageInfo of @bd (members in QAPI schema order); with @chain, the
 * backing images nested as "backing-image".  NULL and *errp on failure.
 */
json_object *image_info_json(struct bdev *bd, bool chain, struct error **errp);

/* qemu-img info's human output for one ImageInfo (no "backing-image"). */
void image_info_print_human(FILE *out, json_object *img);
/* qemu-img's "Snapshot list:" table for an ImageInfo's "snapshots". */
void image_info_print_snapshots(FILE *out, json_object *snapshots);
/* qemu-img info --output=json's member order, for one ImageInfo. */
void image_info_write_json(struct jw *w, json_object *img);

#endif
