/*
 * sandbox.h: the privileged helpers of the single-host runtime's isolation
 * (`devexd sandbox-exec`, `devexd sandbox-kill`), see sandbox.c.
 */
#ifndef DEVEX_SANDBOX_H
#define DEVEX_SANDBOX_H

/* argv[0] is "sandbox-exec" or "sandbox-kill"; returns the exit status
 * (sandbox-exec only returns when it could not exec). */
int devex_sandbox_main(int argc, char **argv);

#endif
