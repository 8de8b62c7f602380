/*
 * blockctl - qcow2: internal snapshot table (read, listed, preserved)
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * qcow2.txt "Snapshots": each entry is 40 bytes of fixed fields, extra
 * data, the ID string and the name, padded to a multiple of 8.  blockctl
 * never rewrites the table; it reads it to list the snapshots and to
 * account for their L1 tables in check.
 */
#include "lib/compiler.h"
#include "lib/io.h"
#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

void qcow2_free_snapshots(struct qcow2 *s)
{
    if (!s->snapshots) {
        return;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        free(s->snapshots[i].id);
        free(s->snapshots[i].name);
        free(s->snapshots[i].extra);
    }
    free(s->snapshots);
    s->snapshots = NULL;
}

int qcow2_read_snapshots(struct qcow2 *s, struct error **errp)
{
    const char *fn = s->bd->filename;
    uint64_t pos = s->snapshots_offset;
    uint64_t table_bytes = 0;
    uint8_t fixed[40];

    if (!s->nb_snapshots) {
        return 0;
    }
    s->snapshots = xcalloc(s->nb_snapshots, sizeof(*s->snapshots));
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint16_t id_len, name_len;
        uint64_t entry_len;
        ssize_t n;
        char *strs;

        n = io_pread(s->fd, fixed, sizeof(fixed), pos);
        if (n < 0) {
            error_setg_errno(errp, -n, "'%s': cannot read the snapshot table", fn);
            goto fail;
        }
        if (n < (ssize_t)sizeof(fixed)) {
            error_setg(errp, "'%s': snapshot table entry %" PRIu32 " lies past the end of the "
                       "file", fn, i);
            goto fail;
        }
        sn->l1_offset = get_be64(fixed);
        sn->l1_size = get_be32(fixed + 8);
        id_len = get_be16(fixed + 12);
        name_len = get_be16(fixed + 14);
        sn->date_sec = get_be32(fixed + 16);
        sn->date_nsec = get_be32(fixed + 20);
        sn->vm_clock_nsec = get_be64(fixed + 24);
        sn->vm_state_size = get_be32(fixed + 32);
        sn->extra_size = get_be32(fixed + 36);
        if (sn->extra_size > QCOW2_MAX_SNAPSHOT_EXTRA) {
            error_setg(errp, "'%s': snapshot %" PRIu32 " has too much extra data (%" PRIu32
                       " bytes)", fn, i, sn->extra_size);
            goto fail;
        }
        if (s->version >= 3 && sn->extra_size < 16) {
            /* qcow2.txt: v3 snapshots carry vm_state_size_large and disk_size */
        }
        entry_len = ALIGN_UP(40 + (uint64_t)sn->extra_size + id_len + name_len, 8);
        table_bytes += entry_len;
        if (table_bytes > QCOW2_MAX_SNAPSHOTS_BYTES) {
            error_setg(errp, "'%s': snapshot table too large", fn);
            goto fail;
        }
        if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8) {
            error_setg(errp, "'%s': snapshot %" PRIu32 " has an oversized L1 table (%" PRIu32
                       " entries)", fn, i, sn->l1_size);
            goto fail;
        }
        if (!IS_ALIGNED(sn->l1_offset, s->cluster_size) ||
            sn->l1_offset + (uint64_t)sn->l1_size * 8 > s->file_size) {
            error_setg(errp, "'%s': snapshot %" PRIu32 " has an invalid L1 table offset 0x%"
                       PRIx64, fn, i, sn->l1_offset);
            goto fail;
        }
        sn->extra = xzalloc(sn->extra_size ? sn->extra_size : 1);
        strs = xzalloc((size_t)id_len + name_len + 1);
        n = io_pread(s->fd, sn->extra, sn->extra_size, pos + 40);
        if (n >= 0 && (uint64_t)n == sn->extra_size) {
            n = io_pread(s->fd, strs, (size_t)id_len + name_len, pos + 40 + sn->extra_size);
            if (n >= 0 && n != id_len + name_len) {
                n = -1;
            }
        } else if (n >= 0) {
            n = -1;
        }
        if (n < 0) {
            error_setg(errp, "'%s': snapshot table entry %" PRIu32 " is truncated", fn, i);
            free(strs);
            goto fail;
        }
        sn->id = xstrndup(strs, id_len);
        sn->name = xstrndup(strs + id_len, name_len);
        free(strs);
        pos += entry_len;
    }
    return 0;

fail:
    qcow2_free_snapshots(s);
    return -EINVAL;
}

int qcow2_snapshot_read_l1(struct qcow2 *s, uint32_t i, uint64_t **out)
{
    struct qcow2_snapshot *sn = &s->snapshots[i];
    size_t bytes = (size_t)sn->l1_size * 8;
    uint64_t *l1 = xzalloc(bytes ? bytes : 8);
    ssize_t n = bytes ? io_pread(s->fd, l1, bytes, sn->l1_offset) : 0;

    if (n < 0 || (size_t)n != bytes) {
        free(l1);
        return n < 0 ? (int)n : -EIO;
    }
    for (uint32_t k = 0; k < sn->l1_size; k++) {
        l1[k] = be64toh(l1[k]);
    }
    *out = l1;
    return 0;
}
