/*
 * sandbox.c: `devexd sandbox-exec` and `devexd sandbox-kill`, the two
 * privileged steps of the single-host runtime's isolation
 * (lua/runtime/sandbox.lua decides everything else: which uid, which
 * cgroups, which limits, bubblewrap's arguments).
 *
 * sandbox-exec runs as devexd's own user (root, or the service user with
 * CAP_SETUID/CAP_SETGID) and, in this order: joins the given cgroups (writes
 * its pid to each cgroup.procs, so that every process the runner ever starts
 * is counted from the first one on), sets the resource limits, switches to
 * the runner's uid and gid (no supplementary groups), drops every capability
 * (a non-root service user with ambient capabilities would otherwise keep
 * them across setuid), sets no_new_privs and execs the command (bwrap).
 * Doing it here rather than in devexd's worker means nothing races with the
 * child: it is in its cgroup and under its uid before its first instruction.
 *
 * sandbox-kill --uid N switches to uid N and sends SIGKILL to every process
 * that uid may signal (kill(-1)): exactly the processes of that runner
 * (each runner has a uid of its own), wherever they forked to, in any pid
 * namespace. It repeats until none is left, since a fork may slip past one
 * sweep.
 */
#include "sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Runner uids below this are refused: they are system users (and 0 is root). */
#define MIN_UID 1000

static int parse_id(const char *s, const char *what, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s ? s : "", &end, 10);
    if (s == NULL || *s == '\0' || *end != '\0' || errno != 0 || v < MIN_UID || v > 0x7ffffffeUL) {
        fprintf(stderr, "devexd sandbox: %s must be a number from %d, got '%s'\n", what, MIN_UID, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int ok = fputs(text, f) >= 0;
    if (fclose(f) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

static const struct {
    const char *name;
    int resource;
} rlimits[] = {
    {"nproc", RLIMIT_NPROC}, {"fsize", RLIMIT_FSIZE}, {"as", RLIMIT_AS},
    {"nofile", RLIMIT_NOFILE}, {"cpu", RLIMIT_CPU}, {"core", RLIMIT_CORE},
};

/* "name=value": sets soft and hard limit to value. */
static int set_rlimit(const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (eq != NULL) {
        for (size_t i = 0; i < sizeof(rlimits) / sizeof(rlimits[0]); i++) {
            if (strlen(rlimits[i].name) != (size_t)(eq - spec) || strncmp(spec, rlimits[i].name, (size_t)(eq - spec)) != 0)
                continue;
            char *end;
            errno = 0;
            unsigned long long v = strtoull(eq + 1, &end, 10);
            if (eq[1] == '\0' || *end != '\0' || errno != 0)
                break;
            struct rlimit rl = {.rlim_cur = (rlim_t)v, .rlim_max = (rlim_t)v};
            if (setrlimit(rlimits[i].resource, &rl) != 0) {
                fprintf(stderr, "devexd sandbox: setrlimit %s: %s\n", spec, strerror(errno));
                return -1;
            }
            return 0;
        }
    }
    fprintf(stderr, "devexd sandbox: bad --rlimit '%s' (nproc|fsize|as|nofile|cpu|core=NUMBER)\n", spec);
    return -1;
}

/* Becomes uid:gid with no supplementary groups and no capabilities left. */
static int become(unsigned long uid, unsigned long gid)
{
    /* ambient capabilities survive a setuid between non-zero uids: clear them */
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    gid_t g = (gid_t)gid;
    if (setgroups(1, &g) != 0 || setresgid(g, g, g) != 0 || setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) {
        fprintf(stderr, "devexd sandbox: cannot switch to uid %lu gid %lu: %s (devexd needs root or CAP_SETUID "
                        "and CAP_SETGID for runtime.isolation)\n", uid, gid, strerror(errno));
        return -1;
    }
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) != 0) {
        fprintf(stderr, "devexd sandbox: cannot drop capabilities: %s\n", strerror(errno));
        return -1;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "devexd sandbox: no_new_privs: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

static int sandbox_exec(int argc, char **argv)
{
    const char *uid_s = NULL, *gid_s = NULL;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "devexd sandbox-exec: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--uid") == 0) {
            uid_s = v;
        } else if (strcmp(a, "--gid") == 0) {
            gid_s = v;
        } else if (strcmp(a, "--cgroup") == 0) {
            /* a cgroup directory: this process (and so all it starts) joins it */
            char path[4096], pid[32];
            snprintf(path, sizeof(path), "%s/cgroup.procs", v);
            snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
            if (v[0] != '/' || write_file(path, pid) != 0) {
                fprintf(stderr, "devexd sandbox-exec: cannot join cgroup %s: %s\n", v, strerror(errno));
                return 1;
            }
        } else if (strcmp(a, "--rlimit") == 0) {
            if (set_rlimit(v) != 0)
                return 1;
        } else {
            fprintf(stderr, "devexd sandbox-exec: unknown option '%s'\n"
                            "usage: devexd sandbox-exec --uid N --gid N [--cgroup DIR]... [--rlimit NAME=N]... -- COMMAND [ARGS...]\n", a);
            return 2;
        }
    }
    unsigned long uid, gid;
    if (parse_id(uid_s, "--uid", &uid) != 0 || parse_id(gid_s, "--gid", &gid) != 0)
        return 2;
    if (i >= argc) {
        fprintf(stderr, "devexd sandbox-exec: no command after --\n");
        return 2;
    }
    if (become(uid, gid) != 0)
        return 1;
    execvp(argv[i], argv + i);
    fprintf(stderr, "devexd sandbox-exec: cannot run %s: %s\n", argv[i], strerror(errno));
    return 127;
}

/* How many processes other than this one have real uid `uid` and are not
 * zombies (or dead), from /proc/<pid>/status. */
static int live_processes_of(uid_t uid)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return -1;
    int n = 0;
    pid_t self = getpid();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || atol(e->d_name) == (long)self)
            continue;
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%.20s/status", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        char state = '?';
        long ruid = -1;
        while (fgets(line, sizeof(line), f) != NULL) {
            if (strncmp(line, "State:", 6) == 0)
                sscanf(line + 6, " %c", &state);
            else if (strncmp(line, "Uid:", 4) == 0) {
                ruid = strtol(line + 4, NULL, 10);
                break;
            }
        }
        fclose(f);
        if (ruid == (long)uid && state != 'Z' && state != 'X')
            n++;
    }
    closedir(d);
    return n;
}

static int sandbox_kill(int argc, char **argv)
{
    unsigned long uid;
    if (argc != 3 || strcmp(argv[1], "--uid") != 0) {
        fprintf(stderr, "usage: devexd sandbox-kill --uid N\n");
        return 2;
    }
    if (parse_id(argv[2], "--uid", &uid) != 0)
        return 2;
    if (become(uid, uid) != 0)
        return 1;
    /* kill(-1) as uid N reaches every process whose real or saved uid is N
     * (never this one). Its result does not say whether any was reached (it
     * succeeds whenever any other process exists), so /proc says when none
     * that still runs is left (a zombie is only waiting for its parent). */
    for (int round = 0; round < 1000; round++) {
        kill(-1, SIGKILL);
        if (live_processes_of((uid_t)uid) == 0)
            return 0;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "devexd sandbox-kill: processes of uid %lu keep appearing\n", uid);
    return 1;
}

int devex_sandbox_main(int argc, char **argv)
{
    if (strcmp(argv[0], "sandbox-exec") == 0)
        return sandbox_exec(argc, argv);
    return sandbox_kill(argc, argv);
}
