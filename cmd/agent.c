/*
 * blockctl agent - a storage daemon: disks served over NBD, QMP control
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "lib/compiler.h"
#include "lib/agent/agent.h"
#include "lib/io.h"
#include "formats/format.h"

#include <argp.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "cmd/cmd.h"

struct agent_args {
    const char *qmp;
    const char **nbd;
    size_t nr_nbd;
    const char *state;
    const char *state_dir;
    const char *pidfile;
    bool daemonize;
    mode_t mode;
    struct agent_disk_spec *disks;
    size_t nr_disks;
    const char *tls_creds;
    const char *tls_psk;
    int tls;                     /* -1: not given */
    struct img_opts img;     /* -q */
};

enum {
    OPT_QMP = 0x100, OPT_NBD, OPT_DISK, OPT_STATE, OPT_DAEMONIZE, OPT_PIDFILE, OPT_SOCKET_MODE,
    OPT_STATE_DIR, OPT_TLS, OPT_TLS_CREDS, OPT_TLS_PSK,
};

static const struct argp_option options[] = {
    { "qmp", OPT_QMP, "PATH", 0, "QMP control socket (UNIX, mode 0600)", 0 },
    { "nbd", OPT_NBD, "ADDR", 0, "Serve the disks over NBD at unix:PATH or tcp:HOST:PORT", 0 },
    { "disk", OPT_DISK, "NAME=FILE[,OPTS]", 0,
      "A disk: format=FMT, read-only=on, copy-on-read=on", 0 },
    { "state", OPT_STATE, "FILE", 0, "State file: which image each disk uses now", 0 },
    { "state-dir", OPT_STATE_DIR, "DIR", 0, "Where the jobs' journals go (blockctl-job(1))", 0 },
    { "daemonize", OPT_DAEMONIZE, NULL, 0, "Run in the background once ready", 0 },
    { "pidfile", OPT_PIDFILE, "FILE", 0, "Write the agent's process id to FILE", 0 },
    { "socket-mode", OPT_SOCKET_MODE, "MODE", 0, "Mode of the UNIX sockets (0600)", 0 },
    { "tls-creds", OPT_TLS_CREDS, "DIR", 0, "NBD over TLS: x509 credentials as QEMU's", 0 },
    { "tls-psk", OPT_TLS_PSK, "FILE", 0, "NBD over TLS: a PSK file as qemu-nbd's", 0 },
    { "tls", OPT_TLS, "MODE", 0, "require (default with credentials), on (clear too), off", 0 },
    { 0 }
};

/* An absolute path for @p (the daemon works from /). */
static char *absolute(const char *p)
{
    char cwd[PATH_MAX];

    if (p[0] == '/' || !getcwd(cwd, sizeof(cwd))) {
        return xstrdup(p);
    }
    return xasprintf("%s/%s", cwd, p);
}

static bool parse_onoff(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) {
        *out = false;
    } else {
        return false;
    }
    return true;
}

static void parse_disk(struct agent_args *a, const char *arg, struct argp_state *state)
{
    struct agent_disk_spec d = { 0 };
    char *copy = xstrdup(arg), *eq = strchr(copy, '='), *opt, *save = NULL;

    if (!eq || eq == copy || !eq[1]) {
        argp_error(state, "--disk '%s': expected NAME=FILE[,format=FMT][,read-only=on]", arg);
    }
    *eq = '\0';
    for (const char *p = copy; *p; p++) {
        if (!(*p == '-' || *p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
              (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) {
            argp_error(state, "--disk '%s': a disk name has letters, digits, '-', '_', '.'",
                       arg);
        }
    }
    d.name = xstrdup(copy);
    opt = strtok_r(eq + 1, ",", &save);
    /* kept as given (a snapshot's overlay then names it as given, relative
     * or not); made absolute for --daemonize, which works from / */
    d.file = xstrdup(opt);
    while ((opt = strtok_r(NULL, ",", &save))) {
        char *v = strchr(opt, '=');
        if (!v) {
            argp_error(state, "--disk '%s': option '%s' has no value", arg, opt);
        }
        *v++ = '\0';
        if (!strcmp(opt, "format")) {
            free(d.format);
            d.format = xstrdup(parse_format_arg(v, "--disk format=", state));
        } else if (!strcmp(opt, "read-only") || !strcmp(opt, "readonly")) {
            if (!parse_onoff(v, &d.read_only)) {
                argp_error(state, "--disk '%s': read-only takes on or off", arg);
            }
        } else if (!strcmp(opt, "copy-on-read")) {
            if (!parse_onoff(v, &d.copy_on_read)) {
                argp_error(state, "--disk '%s': copy-on-read takes on or off", arg);
            }
        } else {
            argp_error(state, "--disk '%s': unknown option '%s' (format, read-only, "
                       "copy-on-read)", arg, opt);
        }
    }
    free(copy);
    for (size_t i = 0; i < a->nr_disks; i++) {
        if (!strcmp(a->disks[i].name, d.name)) {
            argp_error(state, "disk '%s' is given twice", d.name);
        }
    }
    a->disks = xrealloc(a->disks, (a->nr_disks + 1) * sizeof(*a->disks));
    a->disks[a->nr_disks++] = d;
}

static const char *absolute_addr(const char *addr)
{
    if (!strncmp(addr, "unix:", 5)) {
        char *p = absolute(addr + 5), *r = xasprintf("unix:%s", p);
        free(p);
        return r;
    }
    return xstrdup(addr);
}

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
    struct agent_args *a = state->input;
    char *end;
    unsigned long m;

    switch (key) {
    case ARGP_KEY_INIT:
        state->child_inputs[0] = &a->img;
        break;
    case OPT_QMP:
        a->qmp = absolute(arg);
        break;
    case OPT_NBD:
        if (strncmp(arg, "unix:", 5) && strncmp(arg, "tcp:", 4)) {
            argp_error(state, "--nbd '%s': expected unix:PATH or tcp:HOST:PORT", arg);
        }
        a->nbd = xrealloc(a->nbd, (a->nr_nbd + 2) * sizeof(*a->nbd));
        a->nbd[a->nr_nbd++] = absolute_addr(arg);
        a->nbd[a->nr_nbd] = NULL;
        break;
    case OPT_DISK:
        parse_disk(a, arg, state);
        break;
    case OPT_STATE:
        a->state = absolute(arg);
        break;
    case OPT_STATE_DIR:
        a->state_dir = absolute(arg);
        break;
    case OPT_DAEMONIZE:
        a->daemonize = true;
        break;
    case OPT_PIDFILE:
        a->pidfile = absolute(arg);
        break;
    case OPT_SOCKET_MODE:
        errno = 0;
        m = strtoul(arg, &end, 8);
        if (errno || *end || end == arg || m > 0777) {
            argp_error(state, "--socket-mode '%s': expected an octal mode such as 0600", arg);
        }
        a->mode = (mode_t)m;
        break;
    case OPT_TLS_CREDS:
        a->tls_creds = absolute(arg);
        break;
    case OPT_TLS_PSK:
        a->tls_psk = absolute(arg);
        break;
    case OPT_TLS:
        if (!strcmp(arg, "off")) {
            a->tls = NBDSRV_TLS_OFF;
        } else if (!strcmp(arg, "on")) {
            a->tls = NBDSRV_TLS_ON;
        } else if (!strcmp(arg, "require")) {
            a->tls = NBDSRV_TLS_REQUIRE;
        } else {
            argp_error(state, "--tls '%s': expected require, on or off", arg);
        }
        break;
    case ARGP_KEY_ARG:
        argp_error(state, "unexpected argument '%s'", arg);
        break;
    case ARGP_KEY_END:
        if (a->tls_creds && a->tls_psk) {
            argp_error(state, "--tls-creds and --tls-psk exclude each other");
        }
        if (a->tls < 0) {
            a->tls = a->tls_creds || a->tls_psk ? NBDSRV_TLS_REQUIRE : NBDSRV_TLS_OFF;
        } else if (a->tls != NBDSRV_TLS_OFF && !a->tls_creds && !a->tls_psk) {
            argp_error(state, "--tls=%s needs --tls-creds DIR or --tls-psk FILE",
                       a->tls == NBDSRV_TLS_ON ? "on" : "require");
        } else if (a->tls == NBDSRV_TLS_OFF && (a->tls_creds || a->tls_psk)) {
            argp_error(state, "--tls=off and --%s contradict each other",
                       a->tls_creds ? "tls-creds" : "tls-psk");
        }
        if (!a->qmp && !a->nr_nbd) {
            argp_error(state, "nothing to serve: give --qmp PATH and/or --nbd ADDR");
        }
        if (!a->nr_disks && !a->state) {
            argp_error(state, "no disks: give --disk NAME=FILE or --state FILE");
        }
        if (a->pidfile && !a->daemonize) {
            /* a pidfile without --daemonize is fine too (a supervisor may want it) */
        }
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

/* [0]: the shared image options (imgopts.c), set by cmd_agent */
static struct argp_child children[] = { { NULL, 0, NULL, 0 }, { 0 } };

static const struct argp agent_argp = {
    options, parse_opt, NULL,
    "Serve disks over NBD and take QMP commands on a UNIX socket, as "
    "qemu-storage-daemon does: live snapshots and dirty bitmaps while a guest "
    "writes.  Stops on SIGTERM, SIGINT or QMP quit.\v"
    "Each disk is exported under its NAME (nbd+unix:///NAME?socket=PATH).  With "
    "--state, the images each disk uses are kept in FILE and a restart with the "
    "same FILE opens them.  Exit status: 0 after a clean stop, 1 on error, 64 for "
    "usage errors.",
    children, NULL, NULL,
};

/* --- start-up around agent_run --- */

struct startup {
    int ready_fd;                /* --daemonize: tell the parent we are up */
    const char *pidfile;
};

static void sd_notify_ready(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    char msg[64];
    socklen_t len;
    int fd;

    if (!path || !*path || strlen(path) >= sizeof(sa.sun_path)) {
        return;
    }
    strcpy(sa.sun_path, path);
    len = offsetof(struct sockaddr_un, sun_path) + strlen(path);
    if (path[0] == '@') {
        sa.sun_path[0] = '\0';   /* an abstract socket */
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return;
    }
    snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%d", (int)getpid());
    (void)sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    close(fd);
}

static int write_pidfile(const char *path)
{
    char buf[32];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int n;

    if (fd < 0) {
        return -errno;
    }
    n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (write(fd, buf, n) != n) {
        close(fd);
        return -EIO;
    }
    close(fd);
    return 0;
}

static void on_ready(void *opaque)
{
    struct startup *st = opaque;

    if (st->pidfile) {
        int r = write_pidfile(st->pidfile);
        if (r < 0) {
            error_report("cannot write pid file '%s': %s", st->pidfile, strerror(-r));
        }
    }
    sd_notify_ready();
    if (st->ready_fd >= 0) {
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        char ok = 1;
        ssize_t w;

        do {
            w = write(st->ready_fd, &ok, 1);
        } while (w < 0 && errno == EINTR);
        close(st->ready_fd);
        st->ready_fd = -1;
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
            dup2(devnull, 2);
            close(devnull);
        }
    }
}

/* Fork; the parent returns the exit status once the child is ready or
 * has failed, the child returns -1 with *ready_fd set. */
static int daemonize(int *ready_fd)
{
    int p[2];
    pid_t pid;

    if (pipe2(p, O_CLOEXEC) < 0) {
        error_report("pipe: %s", strerror(errno));
        return 1;
    }
    pid = fork();
    if (pid < 0) {
        error_report("fork: %s", strerror(errno));
        return 1;
    }
    if (pid > 0) {
        char ok = 0;
        ssize_t r;
        int status;

        close(p[1]);
        do {
            r = read(p[0], &ok, 1);
        } while (r < 0 && errno == EINTR);
        close(p[0]);
        if (r == 1 && ok) {
            return 0;
        }
        /* the child failed before it was ready (it printed why) */
        waitpid(pid, &status, 0);
        return WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : 1;
    }
    close(p[0]);
    setsid();
    if (chdir("/") < 0) {
        /* nothing depends on it: every path was made absolute */
    }
    *ready_fd = p[1];
    return -1;
}

/* agent_log's lines until syslog takes over */
static void print_log_line(const char *line)
{
    fprintf(stderr, "%s\n", line);
}

int cmd_agent(int argc, char **argv)
{
    struct agent_args a = { .mode = 0600, .tls = -1 };
    struct agent_config cfg = { 0 };
    struct startup st = { .ready_fd = -1 };
    struct agent_disk_spec *specs = NULL;
    struct error *err = NULL;
    size_t nspecs = 0;
    int ret;

    agent_set_log_sink(print_log_line);
    children[0].argp = img_opts_argp(IMGOPT_QUIET);
    argp_parse(&agent_argp, argc, argv, 0, NULL, &a);

    if (a.state) {
        ret = agent_state_load(a.state, &specs, &nspecs, &err);
        if (ret < 0 && ret != -ENOENT) {
            report(err);
            return 1;
        }
    }
    /* --disk adds disks the state file does not have; the state file's
     * images win for those it has (they may have moved on by a snapshot) */
    for (size_t i = 0; i < a.nr_disks; i++) {
        bool known = false;
        for (size_t k = 0; k < nspecs; k++) {
            known |= !strcmp(specs[k].name, a.disks[i].name);
        }
        if (!known) {
            specs = xrealloc(specs, (nspecs + 1) * sizeof(*specs));
            specs[nspecs++] = a.disks[i];
            memset(&a.disks[i], 0, sizeof(a.disks[i]));
        }
    }
    if (!nspecs) {
        error_report("no disks: the state file '%s' has none and no --disk was given",
                     a.state);
        return 1;
    }

    cfg.qmp_path = a.qmp;
    cfg.socket_mode = a.mode;
    cfg.nbd_addrs = a.nbd;
    cfg.state_path = a.state;
    cfg.state_dir = a.state_dir;
    cfg.disks = specs;
    cfg.use_syslog = a.daemonize;
    cfg.nr_disks = nspecs;
    cfg.tls.mode = (enum nbdsrv_tls_mode)a.tls;
    cfg.tls.creds_dir = a.tls_creds;
    cfg.tls.psk_file = a.tls_psk;
    /* and nbds:// images the agent opens (disks, mirror targets) use them too */
    if (a.tls_creds || a.tls_psk) {
        nbd_tls_configure(a.tls_creds, a.tls_psk);
    }
    st.pidfile = a.pidfile;
    if (a.daemonize) {
        for (size_t i = 0; i < nspecs; i++) {
            char *abs = absolute(specs[i].file);
            free(specs[i].file);
            specs[i].file = abs;
        }
        ret = daemonize(&st.ready_fd);
        if (ret >= 0) {
            _exit(ret);
        }
    }
    ret = agent_run(&cfg, on_ready, &st);
    if (a.pidfile) {
        unlink(a.pidfile);
    }
    agent_disk_specs_free(specs, nspecs);
    agent_disk_specs_free(a.disks, a.nr_disks);
    for (size_t i = 0; i < a.nr_nbd; i++) {
        free((char *)a.nbd[i]);
    }
    free(a.nbd);
    free((char *)a.qmp);
    free((char *)a.state);
    free((char *)a.pidfile);
    free((char *)a.tls_creds);
    free((char *)a.tls_psk);
    return ret;
}
