/* test.h - the tiny test harness every tests/unit program uses.
 *
 *   TEST(name) { CHECK(x == 1); CHECK_NEAR(a, b, 1e-3); }
 *   int main(void) { RUN(name); return test_summary(); }
 *
 * A failed CHECK prints file:line and the expression, marks the current test
 * failed and goes on. test_summary() prints "N passed, N failed" and returns
 * the exit code. TEST_SKIP("why") ends a test as skipped, saying why. */
#ifndef CM_TESTS_TEST_H
#define CM_TESTS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_passed, t_failed, t_skipped, t_cur_failed, t_cur_skipped;
static const char *t_cur_name;

#define TEST(name) static void test_##name(void)

#define RUN(name)                                                      \
    do {                                                               \
        t_cur_name = #name;                                            \
        t_cur_failed = 0;                                              \
        t_cur_skipped = 0;                                             \
        test_##name();                                                 \
        if (t_cur_skipped)                                             \
            t_skipped++;                                               \
        else if (t_cur_failed)                                         \
            t_failed++, fprintf(stderr, "FAIL %s\n", #name);           \
        else                                                           \
            t_passed++, fprintf(stderr, "ok   %s\n", #name);           \
    } while (0)

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__, t_cur_name, \
                    #cond);                                                                \
            t_cur_failed = 1;                                                              \
        }                                                                                  \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                  \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: %s: check failed: %s: ", __FILE__, __LINE__, t_cur_name, \
                    #cond);                                                                   \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            t_cur_failed = 1;                                                                 \
        }                                                                                     \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                    \
    do {                                                                                         \
        double t_a = (a), t_b = (b);                                                             \
        if (!(fabs(t_a - t_b) <= (tol))) {                                                       \
            fprintf(stderr, "%s:%d: %s: %s = %g, %s = %g, differ by more than %g\n", __FILE__,   \
                    __LINE__, t_cur_name, #a, t_a, #b, t_b, (double)(tol));                      \
            t_cur_failed = 1;                                                                    \
        }                                                                                        \
    } while (0)

#define CHECK_OK(expr)                                                                          \
    do {                                                                                        \
        int t_rc = (expr);                                                                      \
        if (t_rc != 0) {                                                                        \
            fprintf(stderr, "%s:%d: %s: %s returned %d: %s\n", __FILE__, __LINE__, t_cur_name, \
                    #expr, t_rc, cm_last_error(t_rc));                                          \
            t_cur_failed = 1;                                                                   \
        }                                                                                       \
    } while (0)

#define TEST_SKIP(...)                                          \
    do {                                                        \
        fprintf(stderr, "skip %s: ", t_cur_name);               \
        fprintf(stderr, __VA_ARGS__);                           \
        fputc('\n', stderr);                                    \
        t_cur_skipped = 1;                                      \
        return;                                                 \
    } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed", t_passed, t_failed);
    if (t_skipped) printf(", %d skipped", t_skipped);
    printf("\n");
    return t_failed ? 1 : 0;
}

/* A scratch directory for files a test writes (CELLM_TMP or /tmp). */
static inline const char *test_tmpdir(void) {
    const char *d = getenv("CELLM_TMP");
    return d && *d ? d : "/tmp";
}

/* ../shared/testdata, or NULL when it is absent. */
static inline const char *test_datadir(void) {
    const char *d = getenv("CELLM_TESTDATA");
    return d && *d ? d : NULL;
}

#endif
