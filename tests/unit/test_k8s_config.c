/*
 * test_k8s_config.c: unit tests of k8s_config.c and the pure parts of k8s.c:
 * kubeconfig parsing (token, tokenFile, client certificate files, inline
 * *-data, paths relative to the kubeconfig's directory, a chosen context,
 * exec / auth-provider / basic auth refused, missing context / cluster /
 * user, malformed YAML, YAML aliases), in-cluster detection, the order of
 * sources, base64, DNS name checks, and k8s.path / k8s.query / k8s.load_config
 * from Lua. Every file lives in a fresh temp directory.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "k8s.h"
#include "k8s_config.h"
#include "unit.h"

static char tmpdir[256];

static char *tpath(const char *rel)
{
    static char buf[8][512];
    static int i;
    char *p = buf[i++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, rel);
    return p;
}

static void write_file(const char *rel, const char *text)
{
    char *p = tpath(rel);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s", p);
    char *slash = strrchr(dir, '/');
    *slash = '\0';
    mkdir(dir, 0700);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* "hello CA\n" and friends, base64 */
#define CA_B64 "aGVsbG8gQ0EK"            /* hello CA\n */
#define CERT_B64 "Y2xpZW50IGNlcnQK"      /* client cert\n */
#define KEY_B64 "Y2xpZW50IGtleQo="       /* client key\n */

static const char *KC_HEAD = "apiVersion: v1\n"
                             "kind: Config\n"
                             "clusters:\n"
                             "- name: c1\n"
                             "  cluster:\n"
                             "    server: https://127.0.0.1:6443/\n"
                             "    certificate-authority: pki/ca.crt\n"
                             "- name: c2\n"
                             "  cluster:\n"
                             "    server: https://k8s.example:443\n"
                             "    certificate-authority-data: " CA_B64 "\n"
                             "    tls-server-name: kubernetes\n"
                             "- name: c3\n"
                             "  cluster:\n"
                             "    server: https://insecure.example\n"
                             "    insecure-skip-tls-verify: true\n";

static int load(const char *yaml_rest, const char *context, devex_k8s_config_t *c, devex_k8s_error_t *e)
{
    char text[8192];
    snprintf(text, sizeof(text), "%s%s", KC_HEAD, yaml_rest);
    write_file("kube/config", text);
    memset(e, 0, sizeof(*e));
    return devex_k8s_config_kubeconfig(tpath("kube/config"), context, c, e);
}

static void test_token_and_relative_ca(void)
{
    devex_k8s_config_t c;
    devex_k8s_error_t e;
    int rc = load("contexts:\n"
                  "- name: ctx\n"
                  "  context: {cluster: c1, user: u1, namespace: team-a}\n"
                  "current-context: ctx\n"
                  "users:\n"
                  "- name: u1\n"
                  "  user:\n"
                  "    token: abc.def\n",
                  NULL, &c, &e);
    CHECK(rc == 0);
    if (rc != 0) {
        fprintf(stderr, "  %s: %s\n", e.code, e.message);
        return;
    }
    CHECK_STR(c.source, "kubeconfig");
    CHECK_STR(c.server, "https://127.0.0.1:6443");
    CHECK_STR(c.ca_file, tpath("kube/pki/ca.crt"));
    CHECK(c.ca_pem == NULL);
    CHECK_STR(c.token, "abc.def");
    CHECK(c.token_file == NULL);
    CHECK_STR(c.namespace, "team-a");
    CHECK_STR(c.context, "ctx");
    CHECK_STR(c.cluster, "c1");
    CHECK_STR(c.user, "u1");
    CHECK(!c.insecure);
    devex_k8s_config_free(&c);
}

static void test_inline_data_and_context(void)
{
    devex_k8s_config_t c;
    devex_k8s_error_t e;
    const char *rest = "contexts:\n"
                       "- name: ctx\n"
                       "  context: {cluster: c1, user: u1}\n"
                       "- name: other\n"
                       "  context: {cluster: c2, user: u2}\n"
                       "current-context: ctx\n"
                       "users:\n"
                       "- name: u1\n"
                       "  user: {token: t1}\n"
                       "- name: u2\n"
                       "  user:\n"
                       "    client-certificate-data: " CERT_B64 "\n"
                       "    client-key-data: |\n"
                       "      " KEY_B64 "\n"
                       "    client-certificate: ignored.crt\n";
    int rc = load(rest, "other", &c, &e);
    CHECK(rc == 0);
    if (rc == 0) {
        CHECK_STR(c.server, "https://k8s.example:443");
        CHECK(c.ca_file == NULL);
        CHECK_STR(c.ca_pem, "hello CA\n");
        CHECK(c.ca_pem_len == 9);
        CHECK_STR(c.client_cert_pem, "client cert\n");
        CHECK(c.client_cert == NULL); /* -data wins */
        CHECK_STR(c.client_key_pem, "client key\n");
        CHECK(c.token == NULL);
        CHECK_STR(c.tls_server_name, "kubernetes");
        CHECK(c.namespace == NULL);
        devex_k8s_config_free(&c);
    }
    rc = load(rest, "nope", &c, &e);
    CHECK(rc == -1);
    CHECK_STR(e.code, "invalid");
    CHECK(strstr(e.message, "context \"nope\" is not defined") != NULL);
}

static void test_client_cert_files_and_token_file(void)
{
    devex_k8s_config_t c;
    devex_k8s_error_t e;
    int rc = load("contexts:\n"
                  "- name: ctx\n"
                  "  context: {cluster: c3, user: u}\n"
                  "current-context: \"ctx\"\n"
                  "users:\n"
                  "- name: u\n"
                  "  user:\n"
                  "    client-certificate: certs/me.crt\n"
                  "    client-key: /abs/me.key\n"
                  "    tokenFile: ../token\n",
                  NULL, &c, &e);
    CHECK(rc == 0);
    if (rc == 0) {
        CHECK(c.insecure);
        CHECK_STR(c.client_cert, tpath("kube/certs/me.crt"));
        CHECK_STR(c.client_key, "/abs/me.key");
        CHECK_STR(c.token_file, tpath("kube/../token"));
        devex_k8s_config_free(&c);
    }
    /* a certificate without its key */
    rc = load("contexts:\n- name: ctx\n  context: {cluster: c1, user: u}\ncurrent-context: ctx\n"
              "users:\n- name: u\n  user: {client-certificate: a.crt}\n",
              NULL, &c, &e);
    CHECK(rc == -1);
    CHECK(strstr(e.message, "without its key") != NULL);
}

static void test_unsupported_and_missing(void)
{
    devex_k8s_config_t c;
    devex_k8s_error_t e;
    int rc = load("contexts:\n- name: ctx\n  context: {cluster: c1, user: u}\ncurrent-context: ctx\n"
                  "users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n"
                  "      command: aws\n      args: [eks, get-token]\n",
                  NULL, &c, &e);
    CHECK(rc == -1);
    CHECK_STR(e.code, "unsupported");
    CHECK(strstr(e.message, "exec plugin") != NULL);
    CHECK(strstr(e.message, "user \"u\"") != NULL);

    rc = load("contexts:\n- name: ctx\n  context: {cluster: c1, user: u}\ncurrent-context: ctx\n"
              "users:\n- name: u\n  user:\n    auth-provider: {name: gcp}\n",
              NULL, &c, &e);
    CHECK(rc == -1);
    CHECK_STR(e.code, "unsupported");
    CHECK(strstr(e.message, "auth-provider") != NULL);

    rc = load("contexts:\n- name: ctx\n  context: {cluster: c1, user: u}\ncurrent-context: ctx\n"
              "users:\n- name: u\n  user: {username: a, password: b}\n",
              NULL, &c, &e);
    CHECK(rc == -1);
    CHECK_STR(e.code, "unsupported");

    /* no current-context */
    rc = load("contexts:\n- name: ctx\n  context: {cluster: c1, user: u}\nusers: []\n", NULL, &c, &e);
    CHECK(rc == -1);
    CHECK_STR(e.code, "invalid");
    CHECK(strstr(e.message, "no current-context") != NULL);

    /* current-context names a context that is not there */
    rc = load("contexts: []\ncurrent-context: gone\n", NULL, &c, &e);
    CHECK(rc == -1);
    CHECK(strstr(e.message, "context \"gone\" is not defined") != NULL);

    /* a context whose cluster or user is not there */
    rc = load("contexts:\n- name: ctx\n  context: {cluster: c9, user: u}\ncurrent-context: ctx\n", NULL, &c, &e);
    CHECK(rc == -1);
    CHECK(strstr(e.message, "cluster \"c9\"") != NULL);
    rc = load("contexts:\n- name: ctx\n  context: {cluster: c1, user: u9}\ncurrent-context: ctx\nusers: []\n", NULL,
              &c, &e);
    CHECK(rc == -1);
    CHECK(strstr(e.message, "user \"u9\"") != NULL);

    /* bad base64 */
    rc = load("contexts:\n- name: ctx\n  context: {cluster: c1, user: u}\ncurrent-context: ctx\n"
              "users:\n- name: u\n  user: {client-certificate-data: '!!!', client-key-data: " KEY_B64 "}\n",
              NULL, &c, &e);
    CHECK(rc == -1);
    CHECK(strstr(e.message, "not valid base64") != NULL);

    /* malformed YAML, not a mapping, a missing file */
    write_file("bad.yaml", "clusters: [\n  - {name: x\n");
    rc = devex_k8s_config_kubeconfig(tpath("bad.yaml"), NULL, &c, &e);
    CHECK(rc == -1);
    CHECK_STR(e.code, "invalid");
    CHECK(strstr(e.message, "YAML error") != NULL);
    write_file("list.yaml", "- a\n- b\n");
    rc = devex_k8s_config_kubeconfig(tpath("list.yaml"), NULL, &c, &e);
    CHECK(rc == -1);
    CHECK(strstr(e.message, "not a YAML mapping") != NULL);
    rc = devex_k8s_config_kubeconfig(tpath("missing.yaml"), NULL, &c, &e);
    CHECK(rc == -1);
    CHECK_STR(e.code, "not_found");

    /* a self-referencing alias is read along fixed paths only: no loop */
    write_file("alias.yaml", "a: &x\n  b: *x\ncurrent-context: ctx\ncontexts: &y [ *y ]\n");
    rc = devex_k8s_config_kubeconfig(tpath("alias.yaml"), NULL, &c, &e);
    CHECK(rc == -1);
}

static void test_in_cluster_and_order(void)
{
    devex_k8s_config_t c;
    devex_k8s_error_t e = {0};
    write_file("sa/token", "sa-token\n");
    write_file("sa/ca.crt", "CA\n");
    write_file("sa/namespace", "devex-system\n");
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
    CHECK(devex_k8s_config_in_cluster(tpath("sa"), &c, &e) == 1);
    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    CHECK(devex_k8s_config_in_cluster(tpath("nosa"), &c, &e) == 1);
    int rc = devex_k8s_config_in_cluster(tpath("sa"), &c, &e);
    CHECK(rc == 0);
    if (rc == 0) {
        CHECK_STR(c.source, "in-cluster");
        CHECK_STR(c.server, "https://10.96.0.1:443");
        CHECK_STR(c.token_file, tpath("sa/token"));
        CHECK(c.token == NULL); /* re-read by the client: it rotates */
        CHECK_STR(c.ca_file, tpath("sa/ca.crt"));
        CHECK_STR(c.namespace, "devex-system");
        devex_k8s_config_free(&c);
    }
    setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
    rc = devex_k8s_config_in_cluster(tpath("sa"), &c, &e);
    CHECK(rc == 0);
    if (rc == 0) {
        CHECK_STR(c.server, "https://[fd00::1]:443");
        devex_k8s_config_free(&c);
    }

    /* order: explicit > in-cluster > kubeconfig */
    load("contexts:\n- name: ctx\n  context: {cluster: c2}\ncurrent-context: ctx\n", NULL, &c, &e);
    devex_k8s_config_free(&c);
    setenv("KUBE_CONFIG_PATH", tpath("kube/config"), 1);
    devex_k8s_settings_t s = {0};
    s.in_cluster_root = tpath("sa");
    CHECK(devex_k8s_config_load(&s, &c, &e) == 0);
    CHECK_STR(c.source, "in-cluster");
    devex_k8s_config_free(&c);
    s.server = "https://explicit:6443";
    s.token_file = "/tok";
    CHECK(devex_k8s_config_load(&s, &c, &e) == 0);
    CHECK_STR(c.source, "explicit");
    CHECK_STR(c.server, "https://explicit:6443");
    CHECK_STR(c.token_file, "/tok");
    devex_k8s_config_free(&c);
    s.server = NULL;
    s.token_file = NULL;
    unsetenv("KUBERNETES_SERVICE_HOST");
    CHECK(devex_k8s_config_load(&s, &c, &e) == 0);
    CHECK_STR(c.source, "kubeconfig");
    CHECK_STR(c.server, "https://k8s.example:443");
    CHECK(c.user == NULL && c.token == NULL);
    devex_k8s_config_free(&c);
    /* a namespace given explicitly overrides the source's */
    s.namespace = "mine";
    CHECK(devex_k8s_config_load(&s, &c, &e) == 0);
    CHECK_STR(c.namespace, "mine");
    devex_k8s_config_free(&c);
    unsetenv("KUBE_CONFIG_PATH");
    setenv("HOME", tmpdir, 1); /* ~/.kube/config is tmpdir/.kube/config: missing */
    s.namespace = NULL;
    CHECK(devex_k8s_config_load(&s, &c, &e) == -1);
    CHECK_STR(e.code, "not_found");
    /* explicit misuse */
    s.server = "ftp://x";
    CHECK(devex_k8s_config_load(&s, &c, &e) == -1);
    CHECK_STR(e.code, "invalid");
    s.server = "https://x";
    s.client_cert = "/a.crt";
    CHECK(devex_k8s_config_load(&s, &c, &e) == -1);
    CHECK(strstr(e.message, "needs its key") != NULL);
    unsetenv("KUBERNETES_SERVICE_PORT");
}

static void test_base64_and_names(void)
{
    size_t n;
    char *d = devex_k8s_base64_decode("aGVsbG8=", 8, &n);
    CHECK_STR(d, "hello");
    CHECK(n == 5);
    free(d);
    d = devex_k8s_base64_decode("aGVs\nbG8", 8, &n); /* no padding, a line break */
    CHECK_STR(d, "hello");
    free(d);
    CHECK(devex_k8s_base64_decode("aGVsbG8=x", 9, &n) == NULL);
    CHECK(devex_k8s_base64_decode("a", 1, &n) == NULL);
    CHECK(devex_k8s_base64_decode("a-b_", 4, &n) == NULL);
    d = devex_k8s_base64_decode("", 0, &n);
    CHECK(d && n == 0);
    free(d);

#define L(s) devex_k8s_check_dns1123_label(s, strlen(s))
#define S(s) devex_k8s_check_dns1123_subdomain(s, strlen(s))
#define D(s) devex_k8s_check_dns1035_label(s, strlen(s))
    CHECK(L("repl-abc123") == NULL);
    CHECK(L("0abc") == NULL);
    CHECK(L("") != NULL);
    CHECK(L("Abc") != NULL);
    CHECK(L("-a") != NULL);
    CHECK(L("a-") != NULL);
    CHECK(L("a.b") != NULL);
    CHECK(L("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") == NULL); /* 63 */
    CHECK(L("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") != NULL); /* 64 */
    CHECK(S("a.b-c.d") == NULL);
    CHECK(S("a..b") != NULL);
    CHECK(S(".a") != NULL);
    CHECK(S("a.") != NULL);
    CHECK(S("a/b") != NULL);
    CHECK(S("a_b") != NULL);
    CHECK(D("svc-1") == NULL);
    CHECK(D("1svc") != NULL);
}

static void test_lua(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "k8s", luaopen_devex_k8s, 1);
    lua_pop(L, 1);
    lua_pushcfunction(L, unit_lua_check);
    lua_setglobal(L, "check");
    lua_pushstring(L, tmpdir);
    lua_setglobal(L, "TMP");
    const char *code =
        "local p = k8s.path{prefix='/api/v1', resource='pods', namespace='ns', name='a.b', subresource='status'}\n"
        "check(p == '/api/v1/namespaces/ns/pods/a.b/status', p)\n"
        "check(k8s.path{prefix='/apis/traefik.io/v1alpha1', resource='middlewares'} == '/apis/traefik.io/v1alpha1/middlewares')\n"
        "check(k8s.path{prefix='/apis/rbac.authorization.k8s.io/v1', resource='clusterroles', name='system:x y'}"
        "  == '/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Ax%20y')\n"
        "check(not pcall(k8s.path, {prefix='/api/v1', resource='pods', name='../x'}))\n"
        "check(not pcall(k8s.path, {prefix='/api/v1', resource='pods', name='..'}))\n"
        "check(not pcall(k8s.path, {prefix='/api/v1', resource='pods', namespace='Bad'}))\n"
        "check(not pcall(k8s.path, {prefix='/evil', resource='pods'}))\n"
        "check(not pcall(k8s.path, {prefix='/api/v1', resource='Pods'}))\n"
        "check(not pcall(k8s.path, {prefix='/api/v1', resource='pods', subresource='status'}))\n"
        "local q = k8s.query{labelSelector='app=x,tier in (a,b)', limit=500, watch=true}\n"
        "check(q == '?labelSelector=app%3Dx%2Ctier%20in%20%28a%2Cb%29&limit=500&watch=true', q)\n"
        "check(k8s.query{} == '')\n"
        "check(k8s.query{{'b','1'},{'a','&'}} == '?b=1&a=%26')\n"
        "check(k8s.escape('a b/c') == 'a%20b%2Fc')\n"
        "check(k8s.check_name('ok-name') == true)\n"
        "local ok, why = k8s.check_name('Bad_Name')\n"
        "check(ok == nil and why:find('RFC 1123'), why)\n"
        "check(k8s.check_name('1svc', 'dns1035') == nil)\n"
        "check(k8s.base64_decode('aGk=') == 'hi')\n"
        "local c, e = k8s.load_config{kubeconfig = TMP .. '/kube/config', context = 'ctx'}\n"
        "check(c and c.source == 'kubeconfig' and c.server == 'https://k8s.example:443' and c.ca_pem == 'hello CA\\n', tostring(e))\n"
        "check(c.insecure == false)\n"
        "c, e = k8s.load_config{kubeconfig = TMP .. '/nothing'}\n"
        "check(c == nil and e.code == 'not_found' and tostring(e):find('^not_found: '), tostring(e))\n"
        "c, e = k8s.load_config{server = 'https://h:1/', token = 't', namespace = 'n', insecure = true}\n"
        "check(c.source == 'explicit' and c.server == 'https://h:1' and c.token == 't' and c.insecure == true)\n"
        "check(not pcall(k8s.load_config, {servr = 'x'}))\n"
        "check(not pcall(k8s.load_config, {server = 1}))\n"
        "check(k8s.in_cluster(TMP .. '/nosa') == false)\n";
    unit_checks++;
    if (luaL_loadbuffer(L, code, strlen(code), "=lua") != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK) {
        unit_failures++;
        fprintf(stderr, "lua error: %s\n", lua_tostring(L, -1));
    }
    lua_close(L);
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/devexd-k8s-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_token_and_relative_ca();
    test_inline_data_and_context();
    test_client_cert_files_and_token_file();
    test_unsupported_and_missing();
    test_in_cluster_and_order();
    test_base64_and_names();
    test_lua();
    rm_rf(tmpdir);
    return unit_done("test_k8s_config");
}
