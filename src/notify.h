/*
 * notify.h: systemd's readiness protocol (sd_notify) without libsystemd.
 * When devexd runs under a unit with Type=notify, systemd sets NOTIFY_SOCKET
 * to a unix datagram socket (a path, or an abstract name starting with '@')
 * and waits for "READY=1" before it considers the service started.
 * Everything here is a no-op when NOTIFY_SOCKET is unset.
 */
#ifndef DEVEX_NOTIFY_H
#define DEVEX_NOTIFY_H

/* Sends state (e.g. "READY=1\nMAINPID=123") to $NOTIFY_SOCKET.
 * Returns 1 when sent, 0 when NOTIFY_SOCKET is unset, -1 on error (errno set). */
int devex_notify(const char *state);

/* Called once after the workers listen: sends READY=1 (with MAINPID) and
 * arranges for STOPPING=1 to be sent when the process exits normally
 * (after the drain that follows SIGTERM). Errors are logged, never fatal. */
void devex_notify_ready(void);

#endif
