/*
 * notify.c: systemd readiness notification (see notify.h). The protocol is
 * one datagram of newline-separated VAR=value assignments on the unix socket
 * named by $NOTIFY_SOCKET; a leading '@' names a socket in the abstract
 * namespace (the '@' becomes a NUL byte, and the address length counts only
 * the name's bytes). No credentials or file descriptors are passed.
 */
#include "notify.h"
#include "log.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int devex_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    size_t len = strlen(path);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if ((path[0] != '/' && path[0] != '@') || len < 2 || len > sizeof(sa.sun_path) - (path[0] == '/')) {
        errno = EINVAL;
        return -1;
    }
    memcpy(sa.sun_path, path, len);
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: no terminating NUL counted */
    else
        salen += 1; /* a path: include its NUL */

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    ssize_t n;
    do
        n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (n < 0) {
        errno = saved;
        return -1;
    }
    return 1;
}

static void notify_stopping(void)
{
    (void)devex_notify("STOPPING=1");
}

void devex_notify_ready(void)
{
    char msg[64];
    snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%ld", (long)getpid());
    int r = devex_notify(msg);
    if (r < 0) {
        devex_log(DEVEX_LOG_WARN, "systemd notification failed", strerror(errno));
        return;
    }
    if (r > 0) {
        devex_log(DEVEX_LOG_DEBUG, "systemd notified: READY=1", NULL);
        atexit(notify_stopping);
    }
}
