/*
 * unit.h: a tiny assertion helper for the C unit tests. Each test binary
 * counts checks and failures and exits non-zero when any check failed.
 */
#ifndef DEVEX_UNIT_H
#define DEVEX_UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_checks, unit_failures;

#define CHECK(cond)                                                                 \
    do {                                                                            \
        unit_checks++;                                                              \
        if (!(cond)) {                                                              \
            unit_failures++;                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                           \
    } while (0)

#define CHECK_STR(a, b)                                                                                 \
    do {                                                                                                \
        const char *a_ = (a), *b_ = (b);                                                                \
        unit_checks++;                                                                                  \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                                          \
            unit_failures++;                                                                            \
            fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
        }                                                                                               \
    } while (0)

static inline int unit_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, unit_checks, unit_failures);
    return unit_failures ? 1 : 0;
}

#endif
