/*
 * blockctl - job journals
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/journal.h"
#include "lib/block.h"
#include "lib/io.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

char *journal_state_dir(const char *opt)
{
    const char *e = getenv("BLOCKCTL_STATE_DIR"), *x = getenv("XDG_STATE_HOME");
    const char *home = getenv("HOME");

    if (opt && *opt) {
        return xstrdup(opt);
    }
    if (e && *e) {
        return xstrdup(e);
    }
    if (geteuid() == 0) {
        return xstrdup("/var/lib/blockctl");
    }
    if (x && *x) {
        return xasprintf("%s/blockctl", x);
    }
    return xasprintf("%s/.local/state/blockctl", home ? home : "");
}

bool journal_pid_alive(int64_t pid)
{
    char path[64], buf[256];
    const char *p;
    FILE *f;
    size_t n;

    if (pid <= 0 || (kill((pid_t)pid, 0) < 0 && errno == ESRCH)) {
        return false;
    }
    snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
    f = fopen(path, "r");
    if (!f) {
        return true;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* "PID (COMM) STATE ...": a zombie has gone, but for its parent */
    p = strrchr(buf, ')');
    return !(p && p[1] == ' ' && p[2] == 'Z');
}

uint64_t journal_pid_start(int64_t pid)
{
    char path[64], buf[1024];
    unsigned long long start = 0;
    const char *p;
    FILE *f;
    size_t n;
    int field;

    snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
    f = fopen(path, "r");
    if (!f) {
        return 0;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* "PID (COMM) STATE PPID ...": starttime is field 22, the 20th after COMM */
    p = strrchr(buf, ')');
    for (field = 2; p && field < 22; field++) {
        p = strchr(p + 1, ' ');
    }
    if (!p || sscanf(p + 1, "%llu", &start) != 1) {
        return 0;
    }
    return start;
}

bool journal_owner_alive(json_object *root)
{
    json_object *v;
    int64_t pid = json_object_object_get_ex(root, "pid", &v) ? json_object_get_int64(v) : 0;
    uint64_t want, now;

    if (!journal_pid_alive(pid)) {
        return false;
    }
    /* (a journal of an older blockctl has no start time: the pid alone) */
    want = json_object_object_get_ex(root, "pid-start", &v) ? (uint64_t)json_object_get_int64(v)
                                                              : 0;
    now = journal_pid_start(pid);
    return !want || !now || want == now;
}

void journal_set_owner(struct journal *j)
{
    journal_set_u64(j, "pid", (uint64_t)getpid());
    journal_set_u64(j, "pid-start", journal_pid_start(getpid()));
}

double journal_checkpoint_secs(void)
{
    const char *e = getenv("BLOCKCTL_CHECKPOINT_SECS");

    return e && *e ? strtod(e, NULL) : 5.0;
}

int json_file_replace(const char *path, json_object *root, int mode, struct error **errp)
{
    const char *text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
                                                                JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t len = strlen(text);
    char *tmp = xasprintf("%s.tmp", path);
    int fd, ret;

    fd = io_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) {
        ret = fd;
        error_setg_errno(errp, -ret, "cannot write '%s'", tmp);
        goto out;
    }
    ret = io_pwrite(fd, text, len, 0);
    if (ret == 0) {
        ret = io_pwrite(fd, "\n", 1, len);
    }
    if (ret == 0) {
        ret = io_fsync(fd);
    }
    io_close(fd);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot write '%s'", tmp);
        (void)io_unlink(tmp);
        goto out;
    }
    ret = io_rename(tmp, path);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot replace '%s'", path);
        (void)io_unlink(tmp);
        goto out;
    }
    ret = io_dirsync(path);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot sync the folder of '%s'", path);
    }
out:
    free(tmp);
    return ret;
}

static double now_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* mkdir -p of @dir, mode 0700 for what it makes. */
static int make_dirs(const char *dir)
{
    char *p = xstrdup(dir);
    int ret = 0;

    for (char *s = p + 1; ; s++) {
        if (*s == '/' || !*s) {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0700) < 0 && errno != EEXIST) {
                ret = -errno;
                break;
            }
            *s = c;
            if (!c) {
                break;
            }
        }
    }
    free(p);
    return ret;
}

static char *jobs_dir(const char *state_dir)
{
    char *sd = journal_state_dir(state_dir), *d = xasprintf("%s/jobs", sd);

    free(sd);
    return d;
}

struct journal *journal_new(const char *state_dir, const char *type, int argc, char **argv,
                            struct error **errp)
{
    char *dir = jobs_dir(state_dir), *cwd;
    struct journal *j;
    json_object *args;
    char stamp[32];
    struct tm tm;
    time_t t = time(NULL);
    int r = make_dirs(dir);

    if (r == 0 && access(dir, W_OK) < 0) {
        r = -errno;
    }
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot keep a job journal in '%s' (--state-dir or "
                         "BLOCKCTL_STATE_DIR choose another folder)", dir);
        free(dir);
        return NULL;
    }
    j = xzalloc(sizeof(*j));
    localtime_r(&t, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
    {
        /* (an agent starts several jobs: a count after its process id) */
        static unsigned seq;
        unsigned n = __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED);
        j->id = n ? xasprintf("%s-%s-%ld-%u", type, stamp, (long)getpid(), n)
                  : xasprintf("%s-%s-%ld", type, stamp, (long)getpid());
    }
    j->path = xasprintf("%s/%s.json", dir, j->id);
    free(dir);
    j->root = json_object_new_object();
    json_object_object_add(j->root, "version", json_object_new_int(1));
    json_object_object_add(j->root, "id", json_object_new_string(j->id));
    json_object_object_add(j->root, "type", json_object_new_string(type));
    json_object_object_add(j->root, "state", json_object_new_string("starting"));
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S%z", &tm);
    json_object_object_add(j->root, "started", json_object_new_string(stamp));
    json_object_object_add(j->root, "pid", json_object_new_int64(getpid()));
    json_object_object_add(j->root, "pid-start",
                           json_object_new_int64((int64_t)journal_pid_start(getpid())));
    cwd = getcwd(NULL, 0);
    json_object_object_add(j->root, "cwd", json_object_new_string(cwd ? cwd : "/"));
    free(cwd);
    args = json_object_new_array();
    for (int i = 0; i < argc; i++) {
        json_object_array_add(args, json_object_new_string(argv[i]));
    }
    json_object_object_add(j->root, "argv", args);
    json_object_object_add(j->root, "images", json_object_new_object());
    return j;
}

/* The identity of file @path now (NULL: not a file, e.g. an NBD URI). */
static json_object *identity(const char *path, enum journal_role role)
{
    json_object *o;
    struct stat st;

    if (strstr(path, "://") || stat(path, &st) < 0) {
        return NULL;
    }
    o = json_object_new_object();
    json_object_object_add(o, "dev", json_object_new_int64((int64_t)st.st_dev));
    json_object_object_add(o, "ino", json_object_new_int64((int64_t)st.st_ino));
    if (role == JR_READ) {
        unsigned char hdr[512] = { 0 };
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? pread(fd, hdr, sizeof(hdr), 0) : -1;
        if (fd >= 0) {
            close(fd);
        }
        json_object_object_add(o, "size", json_object_new_int64((int64_t)st.st_size));
        json_object_object_add(o, "header-crc32",
                               json_object_new_int64(n < 0 ? -1 : (int64_t)crc32(0, hdr, (uInt)n)));
    }
    return o;
}

void journal_add_image(struct journal *j, const char *key, const char *path,
                       enum journal_role role)
{
    journal_add_image_as(j, key, path, NULL, role);
}

void journal_add_image_as(struct journal *j, const char *key, const char *path,
                          const char *id_of, enum journal_role role)
{
    json_object *images, *img = json_object_new_object(), *id;
    char *abs = strstr(path, "://") ? NULL : realpath(path, NULL);

    if (!abs && !strstr(path, "://") && path[0] != '/') {
        /* (not there yet: absolute by the working directory) */
        char *cwd = getcwd(NULL, 0);
        abs = xasprintf("%s/%s", cwd ? cwd : "", path);
        free(cwd);
    }
    json_object_object_add(img, "path", json_object_new_string(abs ? abs : path));
    json_object_object_add(img, "role",
                           json_object_new_string(role == JR_READ ? "read" : "write"));
    id = identity(id_of ? id_of : abs ? abs : path, role);
    if (id) {
        json_object_object_add(img, "identity", id);
    }
    free(abs);
    json_object_object_get_ex(j->root, "images", &images);
    json_object_object_add(images, key, img);
}

void journal_set_str(struct journal *j, const char *key, const char *val)
{
    if (val) {
        json_object_object_add(j->root, key, json_object_new_string(val));
    } else {
        json_object_object_del(j->root, key);
    }
}

void journal_set_u64(struct journal *j, const char *key, uint64_t val)
{
    json_object_object_add(j->root, key, json_object_new_int64((int64_t)val));
}

const char *journal_get_str(struct journal *j, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(j->root, key, &v) || !json_object_is_type(v, json_type_string)) {
        return NULL;
    }
    return json_object_get_string(v);
}

uint64_t journal_get_u64(struct journal *j, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(j->root, key, &v) || !json_object_is_type(v, json_type_int)) {
        return 0;
    }
    return (uint64_t)json_object_get_int64(v);
}

int journal_save(struct journal *j, struct error **errp)
{
    int r = json_file_replace(j->path, j->root, 0600, errp);

    if (r < 0) {
        error_prefix(errp, "job journal: ");
    }
    j->saved_at = now_mono();
    return r;
}

int journal_step(struct journal *j, const char *state, struct error **errp)
{
    journal_set_str(j, "state", state);
    return journal_save(j, errp);
}

int journal_end(struct journal *j, struct error **errp)
{
    int r = 0;

    char *tmp;

    if (!j) {
        return 0;
    }
    tmp = xasprintf("%s.tmp", j->path);     /* (left by a kill during a save) */
    if (access(tmp, F_OK) == 0) {
        (void)io_unlink(tmp);
    }
    free(tmp);
    r = io_unlink(j->path);
    if (r < 0 && r != -ENOENT) {
        error_setg_errno(errp, -r, "cannot remove job journal '%s'", j->path);
    } else {
        r = io_dirsync(j->path);
        if (r < 0) {
            error_setg_errno(errp, -r, "cannot sync the folder of '%s'", j->path);
        }
    }
    journal_free(j);
    return r;
}

void journal_free(struct journal *j)
{
    if (!j) {
        return;
    }
    json_object_put(j->root);
    free(j->path);
    free(j->id);
    free(j);
}

static bool is_journal_name(const char *n)
{
    size_t l = strlen(n);

    return l > 5 && !strcmp(n + l - 5, ".json") && n[0] != '.';
}

/* A journal object that looks right (an object with a string "id" and "type"). */
static json_object *read_journal(const char *path)
{
    json_object *o = json_object_from_file(path), *v;

    if (o && (!json_object_is_type(o, json_type_object) ||
              !json_object_object_get_ex(o, "id", &v) || !json_object_is_type(v, json_type_string) ||
              !json_object_object_get_ex(o, "type", &v) || !json_object_is_type(v, json_type_string))) {
        json_object_put(o);
        o = NULL;
    }
    return o;
}

int journal_list(const char *state_dir, json_object **out, struct error **errp)
{
    char *dir = jobs_dir(state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;

    *out = json_object_new_array();
    if (!d) {
        int e = errno;
        if (e != ENOENT) {
            error_setg_errno(errp, e, "cannot read '%s'", dir);
        }
        free(dir);
        return e == ENOENT ? 0 : -e;
    }
    while ((de = readdir(d))) {
        char *path;
        json_object *o;
        if (!is_journal_name(de->d_name)) {
            continue;
        }
        path = xasprintf("%s/%s", dir, de->d_name);
        o = read_journal(path);
        if (o) {
            json_object_array_add(*out, o);
        }
        free(path);
    }
    closedir(d);
    free(dir);
    return 0;
}

struct journal *journal_load(const char *state_dir, const char *id, struct error **errp)
{
    json_object *all = NULL, *found = NULL;
    size_t n, matches = 0, il = strlen(id);
    struct journal *j;
    char *dir;

    if (journal_list(state_dir, &all, errp) < 0) {
        json_object_put(all);
        return NULL;
    }
    n = json_object_array_length(all);
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_array_get_idx(all, i), *v;
        const char *oid;
        json_object_object_get_ex(o, "id", &v);
        oid = json_object_get_string(v);
        if (!strcmp(oid, id)) {
            found = o;
            matches = 1;
            break;
        }
        if (!strncmp(oid, id, il)) {
            found = o;
            matches++;
        }
    }
    if (matches != 1) {
        dir = jobs_dir(state_dir);
        if (matches) {
            error_setg(errp, "'%s' names %zu interrupted jobs in '%s': give more of the ID", id,
                       matches, dir);
        } else {
            error_setg(errp, "no interrupted job '%s' in '%s'", id, dir);
        }
        free(dir);
        json_object_put(all);
        return NULL;
    }
    j = xzalloc(sizeof(*j));
    j->root = json_object_get(found);
    j->id = xstrdup(journal_get_str(j, "id"));
    dir = jobs_dir(state_dir);
    j->path = xasprintf("%s/%s.json", dir, j->id);
    free(dir);
    json_object_put(all);
    return j;
}

static json_object *image_obj(struct journal *j, const char *key)
{
    json_object *images, *img;

    if (!json_object_object_get_ex(j->root, "images", &images) ||
        !json_object_object_get_ex(images, key, &img) ||
        !json_object_is_type(img, json_type_object)) {
        return NULL;
    }
    return img;
}

bool journal_image_known(struct journal *j, const char *key)
{
    json_object *img = image_obj(j, key), *v;

    return img && json_object_object_get_ex(img, "identity", &v);
}

const char *journal_image_path(struct journal *j, const char *key)
{
    json_object *img = image_obj(j, key), *v;

    if (!img || !json_object_object_get_ex(img, "path", &v)) {
        return NULL;
    }
    return json_object_get_string(v);
}

static int64_t member_i64(json_object *o, const char *key, int64_t dflt)
{
    json_object *v;

    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : dflt;
}

int journal_check_image(struct journal *j, const char *key, struct error **errp)
{
    json_object *img = image_obj(j, key), *want, *role, *now;
    const char *path = journal_image_path(j, key);
    static const char *const fields[] = { "dev", "ino", "size", "header-crc32" };
    static const char *const what[] = { "its device", "its inode", "its size", "its header" };
    enum journal_role r;

    if (!img || !path) {
        error_setg(errp, "the journal of job '%s' names no %s image", j->id, key);
        return -ESTALE;
    }
    if (!json_object_object_get_ex(img, "identity", &want)) {
        return 0;       /* (an NBD URI: nothing to check) */
    }
    r = json_object_object_get_ex(img, "role", &role) &&
                !strcmp(json_object_get_string(role), "read")
            ? JR_READ
            : JR_WRITE;
    now = identity(path, r);
    if (!now) {
        error_setg(errp, "'%s' is gone", path);
        return -ENOENT;
    }
    for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
        int64_t a = member_i64(want, fields[i], INT64_MIN), b = member_i64(now, fields[i], INT64_MIN);
        if (a != b) {
            error_setg(errp, "'%s' is not the image job '%s' was using (%s changed)", path,
                       j->id, what[i]);
            json_object_put(now);
            return -ESTALE;
        }
    }
    json_object_put(now);
    return 0;
}

json_object *journal_find_image(const char *state_dir, const char *path)
{
    json_object *all = NULL, *out = json_object_new_array();
    struct error *err = NULL;
    struct stat st;
    char *abs = realpath(path, NULL);
    bool have = stat(path, &st) == 0;

    if (journal_list(state_dir, &all, &err) < 0) {
        error_free(err);
        json_object_put(all);
        free(abs);
        return out;
    }
    for (size_t i = 0; i < json_object_array_length(all); i++) {
        json_object *o = json_object_array_get_idx(all, i), *images;
        bool hit = false;
        if (!json_object_object_get_ex(o, "images", &images)) {
            continue;
        }
        json_object_object_foreach(images, key, img) {
            json_object *p, *id;
            (void)key;
            if (!json_object_object_get_ex(img, "path", &p)) {
                continue;
            }
            if (have && json_object_object_get_ex(img, "identity", &id)) {
                hit |= member_i64(id, "dev", -1) == (int64_t)st.st_dev &&
                       member_i64(id, "ino", -1) == (int64_t)st.st_ino;
            } else {
                hit |= abs && !strcmp(json_object_get_string(p), abs);
            }
        }
        if (hit) {
            json_object_array_add(out, json_object_get(o));
        }
    }
    json_object_put(all);
    free(abs);
    return out;
}

int journal_checkpoint_copied(struct journal *j, struct bdev *dst, uint64_t below,
                              struct error **errp)
{
    int r;

    if (below <= journal_get_u64(j, "copied")) {
        return 0;
    }
    r = bdev_flush(dst);
    if (r < 0) {
        error_setg_errno(errp, -r, "cannot flush '%s'", dst->filename);
        return r;
    }
    journal_set_u64(j, "copied", below);
    return journal_save(j, errp);
}

int journal_remove_overlays(struct journal *j, void (*removed)(void *opaque, const char *path),
                            void *opaque, struct error **errp)
{
    struct error *err = NULL;
    int n = (int)journal_get_u64(j, "disks"), ret = 0;

    for (int i = 1; i <= n; i++) {
        char key[32];
        const char *ov;
        char *tmp;
        int r = 0;

        snprintf(key, sizeof(key), "overlay-%d", i);
        ov = journal_image_path(j, key);
        if (!ov) {
            continue;
        }
        /* a half-made file under blockctl's hidden name: never in use */
        tmp = bdev_hidden_name(ov);
        if (access(tmp, F_OK) == 0 && io_unlink(tmp) == 0) {
            (void)io_dirsync(tmp);
        }
        free(tmp);
        if (!journal_image_known(j, key)) {
            continue;       /* (not made: nothing of ours under that name) */
        }
        if (journal_check_image(j, key, &err) < 0) {
            /* gone, or another file now: not ours to remove */
            error_free(err);
            err = NULL;
            continue;
        }
        if ((r = io_unlink(ov)) < 0 && r != -ENOENT) {
            error_setg_errno(&err, -r, "cannot remove '%s'", ov);
        } else if ((r = io_dirsync(ov)) < 0) {
            error_setg_errno(&err, -r, "'%s': cannot sync its folder", ov);
        } else if (removed) {
            removed(opaque, ov);
        }
        if (r < 0) {
            /* (the first failure is said; the other overlays are tried) */
            if (ret == 0) {
                error_propagate(errp, err);
                ret = r;
            } else {
                error_free(err);
            }
            err = NULL;
        }
    }
    return ret;
}
