/*
 * smtp.h: devex.smtp, one e-mail submitted over SMTP (smtps://, or smtp://
 * with STARTTLS required except to loopback) with libcurl on the worker's
 * curl multi handle; the Lua API is described in smtp.c.
 */
#ifndef DEVEX_SMTP_H
#define DEVEX_SMTP_H

#include <lua.h>

int luaopen_devex_smtp(lua_State *L);

#endif
