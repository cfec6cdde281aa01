/*
 * fuzz_kubeconfig: kubeconfig YAML (src/k8s_config.c: libyaml's document
 * loader, then the lookup of contexts, clusters and users, *-data base64,
 * relative paths), plus the base64 decoder and the Kubernetes name checks on
 * the raw input. The input is written to a kubeconfig file in a private
 * temporary directory (the loader takes a path) and read with the current
 * context and with a named one.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "k8s_config.h"

static char dir[64], path[96];

static void load(const char *context)
{
    devex_k8s_config_t c;
    devex_k8s_error_t err = {0};
    if (devex_k8s_config_kubeconfig(path, context, &c, &err) == 0) {
        if (c.server == NULL || strcmp(c.source, "kubeconfig") != 0)
            abort();
        devex_k8s_config_free(&c);
    } else if (err.code == NULL) {
        abort(); /* an error has a code */
    }
}

static void cleanup(void)
{
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dir[0] == '\0') {
        snprintf(dir, sizeof dir, "%s", "/tmp/devex-fuzz-kubeconfig-XXXXXX");
        if (mkdtemp(dir) == NULL)
            abort();
        snprintf(path, sizeof path, "%s/config", dir);
        atexit(cleanup);
    }
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    load(NULL);
    load("dev");

    size_t n;
    char *b = devex_k8s_base64_decode((const char *)data, size, &n);
    if (b != NULL && (n > size || b[n] != '\0'))
        abort();
    free(b);
    devex_k8s_check_dns1123_label((const char *)data, size);
    devex_k8s_check_dns1123_subdomain((const char *)data, size);
    devex_k8s_check_dns1035_label((const char *)data, size);
    return 0;
}
