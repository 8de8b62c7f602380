/*
 * blockctl - the files TLS credentials are kept in
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/tlsfiles.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int tls_x509_dir_check(const char *dir, bool server, struct error **errp)
{
    static const char *const server_files[] = { "ca-cert.pem", "server-cert.pem",
                                                "server-key.pem", NULL };
    static const char *const client_files[] = { "ca-cert.pem", NULL };
    const char *const *files = server ? server_files : client_files;
    struct stat st;

    if (stat(dir, &st) < 0) {
        error_setg_errno(errp, errno, "TLS credentials '%s'", dir);
        return -errno;
    }
    if (!S_ISDIR(st.st_mode)) {
        error_setg(errp, "TLS credentials '%s': not a directory (one with ca-cert.pem, "
                   "%s-cert.pem, %s-key.pem)", dir, server ? "server" : "client",
                   server ? "server" : "client");
        return -ENOTDIR;
    }
    for (size_t i = 0; files[i]; i++) {
        CLEANUP_FREE char *p = xasprintf("%s/%s", dir, files[i]);
        if (access(p, R_OK) < 0) {
            int e = errno;
            error_setg_errno(errp, e, "TLS credentials '%s': cannot read %s", dir, files[i]);
            return -e;
        }
    }
    return 0;
}

int tls_psk_file_check(const char *path, char **first_user, struct error **errp)
{
    FILE *f = fopen(path, "re");
    char *line = NULL;
    size_t cap = 0, lineno = 0, entries = 0;
    ssize_t n;
    int ret = 0;

    if (!f) {
        error_setg_errno(errp, errno, "TLS PSK file '%s'", path);
        return -errno;
    }
    while ((n = getline(&line, &cap, f)) > 0) {
        char *colon, *p;

        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
            line[--n] = '\0';
        }
        if (!n) {
            continue;
        }
        colon = strchr(line, ':');
        for (p = colon ? colon + 1 : NULL; p && isxdigit((unsigned char)*p); p++) {
        }
        if (!colon || colon == line || !colon[1] || *p || (p - colon - 1) % 2) {
            error_setg(errp, "TLS PSK file '%s': line %zu is not USERNAME:HEXKEY (psktool's "
                       "format)", path, lineno);
            ret = -EINVAL;
            break;
        }
        if (!entries++ && first_user) {
            *first_user = xstrndup(line, (size_t)(colon - line));
        }
    }
    if (!ret && ferror(f)) {
        error_setg_errno(errp, errno, "TLS PSK file '%s': read error", path);
        ret = -EIO;
    }
    if (!ret && !entries) {
        error_setg(errp, "TLS PSK file '%s' holds no key (lines USERNAME:HEXKEY)", path);
        ret = -EINVAL;
    }
    if (ret && first_user && entries) {
        free(*first_user);
        *first_user = NULL;
    }
    free(line);
    fclose(f);
    return ret;
}
