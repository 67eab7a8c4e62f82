/* check.h: the assertions of the C test executables (run by CTest).
 * A failed CHECK prints file:line and the expression, and the test exits 1 at the end.
 * CHECK_SKIP exits 77, which CTest reports as skipped (a failure when CI sets
 * PEFT_REQUIRE_ORACLES=1, see CMakeLists.txt). CHECK_SKIP_PART skips one part of a test whose
 * oracle is missing: a message in a user's run, a failed check under PEFT_REQUIRE_ORACLES=1. */
#ifndef PEFT_TESTS_CHECK_H
#define PEFT_TESTS_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int check_failures_ = 0;
static int check_count_ = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        check_count_++;                                                              \
        if (!(cond)) {                                                               \
            check_failures_++;                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                         \
    do {                                                                             \
        check_count_++;                                                              \
        if (!(cond)) {                                                               \
            check_failures_++;                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
        }                                                                            \
    } while (0)

/* |a-b| <= tol * max(1, |b|) */
#define CHECK_CLOSE(a, b, tol) \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol) * fmax(1.0, fabs((double)(b))), "%.9g vs %.9g", (double)(a), (double)(b))

#define CHECK_SKIP(...)                      \
    do {                                     \
        fprintf(stderr, "SKIP: " __VA_ARGS__); \
        fputc('\n', stderr);                 \
        exit(77);                            \
    } while (0)

#define CHECK_SKIP_PART(...)                                                             \
    do {                                                                                 \
        const char *required_ = getenv("PEFT_REQUIRE_ORACLES");                          \
        int strict_ = required_ && required_[0] == '1';                                  \
        fprintf(strict_ ? stderr : stdout, strict_ ? "%s:%d: oracle required (PEFT_REQUIRE_ORACLES=1) but missing: " \
                                                   : "SKIP part: ", __FILE__, __LINE__); \
        fprintf(strict_ ? stderr : stdout, __VA_ARGS__);                                 \
        fputc('\n', strict_ ? stderr : stdout);                                          \
        check_count_++;                                                                  \
        check_failures_ += strict_;                                                      \
    } while (0)

static inline int check_report(const char *name) {
    printf("%s: %d checks, %d failed\n", name, check_count_, check_failures_);
    return check_failures_ ? 1 : 0;
}

#endif
