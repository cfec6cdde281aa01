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
#include "server.h"
#include "settings.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static devex_worker_t *workers;

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
