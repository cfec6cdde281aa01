/*
 * main.c: devexd's entry point: command line, configuration, worker threads
 * and signals. Signals are taken synchronously with sigwait() in the main
 * thread (blocked in every worker), then forwarded to the workers' loops:
 * SIGHUP reloads the Lua app in each worker, SIGTERM/SIGINT drain and exit 0.
 */
#include "devex.h"
#include "http.h"
#include "log.h"
#include "notify.h"
#include "sandbox.h"
#include "server.h"
#include "settings.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static devex_worker_t *workers;

/* `devexd runner --dir DIR [--port N] [--host H] [--socket PATH]`: the
 * workspace agent. With --socket it listens on that Unix socket (a sandboxed
 * agent has no network devexd can reach), and on TCP too only when --port or
 * --host is given as well. It
 * serves like devexd itself (same workers, signals and drain) but with its
 * own config, lua/runner/conf.lua, which reads what is parsed here from the
 * DEVEXD_RUNNER_* variables set below, and runs the app lua/runner/app.lua.
 * Returns the config path (caller frees), or NULL after printing the error. */
static char *runner_setup(int argc, char **argv, const char *lua_dir)
{
    const char *dir = NULL, *port = NULL, *host = NULL, *sock = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        const char *names[] = {"--dir", "--port", "--host", "--socket"};
        const char **dst[] = {&dir, &port, &host, &sock};
        int matched = 0;
        for (int k = 0; k < 4; k++) {
            size_t n = strlen(names[k]);
            if (strncmp(a, names[k], n) == 0 && (a[n] == '\0' || a[n] == '=')) {
                v = a[n] == '=' ? a + n + 1 : (i + 1 < argc ? argv[++i] : NULL);
                if (v == NULL || *v == '\0') {
                    fprintf(stderr, "devexd runner: %s needs a value\n", names[k]);
                    return NULL;
                }
                *dst[k] = v;
                matched = 1;
            }
        }
        if (!matched) {
            fprintf(stderr, "devexd runner: unknown argument '%s'\nusage: devexd runner --dir DIR [--port PORT] [--host HOST] [--socket PATH]\n", a);
            return NULL;
        }
    }
    if (dir == NULL) {
        fprintf(stderr, "devexd runner: --dir DIR is required (the workspace directory)\n");
        return NULL;
    }
    char *real = realpath(dir, NULL);
    struct stat st;
    if (real == NULL || stat(real, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "devexd runner: %s is not a directory\n", dir);
        free(real);
        return NULL;
    }
    /* TCP unless only a socket was asked for; without --port/--host the
     * environment's $PORT/$HOST as before (the runner image's convention) */
    int tcp = sock == NULL || port != NULL || host != NULL;
    if (port == NULL)
        port = getenv("PORT");
    if (host == NULL)
        host = getenv("HOST");
    if (sock != NULL && (sock[0] != '/' || strlen(sock) >= sizeof(((struct sockaddr_un *)0)->sun_path))) {
        fprintf(stderr, "devexd runner: --socket must be an absolute path of at most %zu bytes\n",
                sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        free(real);
        return NULL;
    }
    char *end;
    long p = strtol(port && *port ? port : "8081", &end, 10);
    if (*end != '\0' || p < 1 || p > 65535) {
        fprintf(stderr, "devexd runner: the port must be from 1 to 65535, got '%s'\n", port);
        free(real);
        return NULL;
    }
    char pbuf[16];
    snprintf(pbuf, sizeof(pbuf), "%ld", p);
    setenv("DEVEXD_RUNNER_DIR", real, 1);
    setenv("DEVEXD_RUNNER_PORT", pbuf, 1);
    setenv("DEVEXD_RUNNER_HOST", host && *host ? host : "0.0.0.0", 1);
    setenv("DEVEXD_RUNNER_TCP", tcp ? "1" : "0", 1);
    if (sock != NULL)
        setenv("DEVEXD_RUNNER_SOCKET", sock, 1);
    else
        unsetenv("DEVEXD_RUNNER_SOCKET");
    free(real);
    /* the agent's config lives beside its app, in the first Lua directory that has it */
    const char *d = lua_dir;
    while (*d) {
        size_t n = strcspn(d, ":");
        char path[4096];
        snprintf(path, sizeof(path), "%.*s/runner/conf.lua", (int)n, d);
        if (n > 0 && access(path, R_OK) == 0)
            return strdup(path);
        d += n;
        if (*d == ':')
            d++;
    }
    fprintf(stderr, "devexd runner: runner/conf.lua not found in the Lua directories %s\n", lua_dir);
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: devexd [OPTIONS]\n"
            "       devexd [OPTIONS] COMMAND [ARGS...]\n"
            "\n"
            "The control plane of the devex cloud IDE: HTTP/1.1 and HTTP/2 on H2O, behaviour in Lua.\n"
            "\n"
            "Options:\n"
            "  -c, --config FILE    configuration file (default: $DEVEXD_CONFIG or %s)\n"
            "  -L, --lua-dir DIRS   directories of the Lua app, ':'-separated (default: $DEVEXD_LUA_DIR or %s)\n"
            "  -t, --threads N      worker threads (default: the config's server.threads, else the number of CPUs)\n"
            "      --check          load the configuration, the app and the policy, report errors, exit\n"
            "  -v, --version        print the version and exit\n"
            "  -h, --help           print this help and exit\n"
            "\n"
            "Commands (run once, then exit):\n"
            "  templates sync [DIR]  upload DIR/<name>/** (default: the shipped templates) to templates/<name>/ in storage\n"
            "  workload render --template T [--repl ID] [--user U]  print the session's Kubernetes objects and identity as JSON (no cluster contacted)\n"
            "  migrate from-go --map FILE [--apply]  adopt the Go service's REPLs (repl:<id>, user:<login>) under devexd's owner keys\n"
            "\n"
            "  runner --dir DIR [--port PORT] [--host HOST] [--socket PATH]  serve (not once: until TERM) the workspace\n"
            "                       agent over DIR: the IDE page's runner protocol, terminals, /user-app/ (port default\n"
            "                       $PORT or 8081, host $HOST or 0.0.0.0; --socket: a Unix socket, alone or besides\n"
            "                       TCP when --port/--host are given; REPL_ID, RUNNER_TOKEN, CALLBACK_URL from the environment)\n"
            "\n"
            "Signals: HUP reloads the Lua app and policy; TERM and INT finish in-flight requests and exit.\n",
            DEVEX_DEFAULT_CONF, DEVEX_DEFAULT_LUA_DIR);
}

int main(int argc, char **argv)
{
    const char *conf = getenv("DEVEXD_CONFIG");
    const char *lua_dir = getenv("DEVEXD_LUA_DIR");
    int threads = 0, check = 0;
    static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                             {"lua-dir", required_argument, NULL, 'L'},
                                             {"threads", required_argument, NULL, 't'},
                                             {"check", no_argument, NULL, 'C'},
                                             {"version", no_argument, NULL, 'v'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int opt;
    /* "+": options end at the first command word, so a command's own options
     * (templates sync --dry-run, workload render --template T) reach it */
    while ((opt = getopt_long(argc, argv, "+c:L:t:vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf = optarg;
            break;
        case 'L':
            lua_dir = optarg;
            break;
        case 't': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end != '\0' || n < 1 || n > 256) {
                fprintf(stderr, "devexd: --threads must be an integer from 1 to 256, got '%s'\n", optarg);
                return 2;
            }
            threads = (int)n;
            break;
        }
        case 'C':
            check = 1;
            break;
        case 'v':
            printf("devexd %s\n", DEVEX_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    int cli_argc = argc - optind;
    char **cli_argv = argv + optind;
    if (conf == NULL || *conf == '\0')
        conf = DEVEX_DEFAULT_CONF;
    if (lua_dir == NULL || *lua_dir == '\0')
        lua_dir = DEVEX_DEFAULT_LUA_DIR;
    /* the local runtime's isolation steps (sandbox.c): no config, no server */
    if (cli_argc > 0 && (strcmp(cli_argv[0], "sandbox-exec") == 0 || strcmp(cli_argv[0], "sandbox-kill") == 0))
        return devex_sandbox_main(cli_argc, cli_argv);
    static char *runner_conf; /* kept for the process's life */
    if (cli_argc > 0 && strcmp(cli_argv[0], "runner") == 0) {
        runner_conf = runner_setup(cli_argc, cli_argv, lua_dir);
        if (runner_conf == NULL)
            return 2;
        conf = runner_conf;
        cli_argc = 0; /* it serves */
        threads = 1;  /* one workspace, one loop: terminals and sockets share it */
    }

    static char err[8192];
    if (devex_settings_load(conf, lua_dir, err, sizeof(err)) != 0) {
        fprintf(stderr, "devexd: configuration error in %s:\n%s\n", conf, err);
        return 1;
    }
    devex_log_set_level(devex_settings.log_level);
    if (threads > 0)
        devex_settings.threads = threads;
    if (devex_settings.threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        devex_settings.threads = n > 0 ? (int)n : 1;
    }
    if (cli_argc > 0) {
        static devex_worker_t w;
        devex_http_global_init();
        if (devex_server_init(0, err, sizeof(err)) != 0 || devex_worker_init(&w, 0, false, err, sizeof(err)) != 0) {
            fprintf(stderr, "devexd: cannot load the Lua app:\n%s\n", err);
            return 1;
        }
        return devex_worker_run_cli(&w, cli_argc, cli_argv);
    }
    if (check) {
        /* static: what H2O and libuv allocated for it stays reachable at exit */
        static devex_worker_t w;
        if (devex_server_init(0, err, sizeof(err)) != 0 || devex_worker_init(&w, 0, false, err, sizeof(err)) != 0) {
            fprintf(stderr, "devexd: check failed:\n%s\n", err);
            return 1;
        }
        devex_vm_close(w.vm);
        printf("devexd: configuration %s and Lua app OK\n", conf);
        return 0;
    }

    /* Workers inherit this mask: only the main thread takes these signals. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    int n = devex_settings.threads;
    devex_http_global_init(); /* libcurl's global state, before any thread uses it */
    if (devex_server_init(n, err, sizeof(err)) != 0) {
        fprintf(stderr, "devexd: %s\n", err);
        return 1;
    }
    /* kept in a global so the workers' loops, H2O contexts and open
     * connections stay reachable until exit (they die with the process) */
    workers = calloc((size_t)n, sizeof(*workers));
    for (int i = 0; i < n; i++) {
        if (devex_worker_init(&workers[i], i, true, err, sizeof(err)) != 0) {
            fprintf(stderr, "devexd: cannot load the Lua app:\n%s\n", err);
            return 1;
        }
    }
    if (devex_workers_start(workers, n) != 0) {
        fprintf(stderr, "devexd: cannot start worker threads\n");
        return 1;
    }
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_log_begin(&b, DEVEX_LOG_INFO, "devexd started", NULL);
    devex_log_str(&b, "version", DEVEX_VERSION);
    devex_log_int(&b, "threads", n);
    for (size_t i = 0; i < devex_settings.nlisteners; i++) {
        char key[32], val[300];
        snprintf(key, sizeof(key), "listen%zu", i);
        if (devex_settings.listeners[i].socket_path != NULL)
            snprintf(val, sizeof(val), "unix:%s", devex_settings.listeners[i].socket_path);
        else
            snprintf(val, sizeof(val), "%s://%s:%d", devex_settings.listeners[i].tls_cert ? "https" : "http",
                     devex_settings.listeners[i].host, devex_settings.listeners[i].port);
        devex_log_str(&b, key, val);
    }
    devex_log_end(&b);
    devex_buf_free(&b);
    /* systemd Type=notify: the listeners are bound and the workers run, so
     * tell systemd we are ready (no-op without $NOTIFY_SOCKET; src/notify.c) */
    devex_notify_ready();

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            devex_log(DEVEX_LOG_INFO, "SIGHUP: reloading the Lua app", NULL);
            devex_workers_control(workers, n, DEVEX_CTL_RELOAD);
            continue;
        }
        devex_logf(DEVEX_LOG_INFO, "%s: finishing in-flight requests, then exiting", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        devex_workers_control(workers, n, DEVEX_CTL_SHUTDOWN);
        break;
    }
    devex_workers_join(workers, n);
    devex_log(DEVEX_LOG_INFO, "devexd stopped", NULL);
    return 0;
}
