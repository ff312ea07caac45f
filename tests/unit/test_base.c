/* test_base.c - status messages, fp16/bf16 conversion, the rng and the pool. */
#include <stdatomic.h>
#include <time.h>

#include "base/fp16.h"
#include "base/pool.h"
#include "base/rng.h"
#include "base/status.h"
#include "test.h"

TEST(status_messages) {
    CHECK(!strcmp(cm_strerror(CM_OK), "ok"));
    CHECK(!strcmp(cm_strerror(CM_EFORMAT), "malformed input"));
    CHECK(!strcmp(cm_strerror(12345), "unknown status"));
    cm_error_clear();
    CHECK(!strcmp(cm_last_error(CM_EIO), "input/output error"));
    CHECK(cm_errorf(CM_EFORMAT, "file %s at byte %d", "x.gguf", 7) == CM_EFORMAT);
    CHECK(!strcmp(cm_last_error(CM_EFORMAT), "file x.gguf at byte 7"));
}

TEST(f16_roundtrip_all_halves) {
    /* Every finite half converts to f32 and back unchanged. */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        if (cm_f32_to_f16(cm_f16_to_f32((cm_f16)h)) != h) bad++;
    }
    CHECK(bad == 0);
    CHECK(cm_f16_to_f32(0x3c00) == 1.0f);
    CHECK(cm_f16_to_f32(0xc000) == -2.0f);
    CHECK(cm_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(cm_f32_to_f16(1e6f) == 0x7c00);
    CHECK(cm_f32_to_f16(1.0f + 0x1.0p-11f) == 0x3c00);            /* tie rounds to even */
    CHECK(cm_f32_to_f16(1.0f + 3 * 0x1.0p-11f) == 0x3c02);        /* tie rounds to even (up) */
    CHECK(cm_f32_to_f16(0x1.0p-24f) == 0x0001);                   /* smallest subnormal */
    CHECK(cm_bf16_to_f32(cm_f32_to_bf16(1.5f)) == 1.5f);
    CHECK(cm_f32_to_bf16(1.0f + 0x1.0p-8f) == 0x3f80);            /* tie to even */
}

TEST(rng_reproducible) {
    cm_rng a, b;
    cm_rng_init(&a, 42);
    cm_rng_init(&b, 42);
    int same = 1;
    double sum = 0;
    for (int i = 0; i < 10000; i++) {
        uint64_t x = cm_rng_u64(&a);
        same &= x == cm_rng_u64(&b);
        double u = cm_rng_f64(&a);
        same &= u == cm_rng_f64(&b);
        sum += u;
    }
    CHECK(same);
    CHECK_NEAR(sum / 10000, 0.5, 0.02);
}

struct pool_job {
    atomic_long sum;
    long n;
    int phase_ok;
    atomic_int arrived;
    cm_pool *pool;
};

static void pool_fn(void *arg, int ith, int nth) {
    struct pool_job *j = arg;
    long b, e;
    cm_split_range(j->n, ith, nth, &b, &e);
    long s = 0;
    for (long i = b; i < e; i++) s += i;
    atomic_fetch_add(&j->sum, s);
    atomic_fetch_add(&j->arrived, 1);
    cm_pool_barrier(j->pool);
    /* after the barrier every thread has arrived */
    if (atomic_load(&j->arrived) % nth != 0) j->phase_ok = 0;
    cm_pool_barrier(j->pool);
}

TEST(pool_runs_and_barriers) {
    for (int nt = 1; nt <= 4; nt++) {
        cm_pool *pool;
        CHECK_OK(cm_pool_create(nt, &pool));
        CHECK(cm_pool_n_threads(pool) == nt);
        struct pool_job j = {.n = 100001, .phase_ok = 1, .pool = pool};
        for (int rep = 0; rep < 200; rep++) {
            atomic_store(&j.sum, 0);
            cm_pool_run(pool, pool_fn, &j);
            CHECK(atomic_load(&j.sum) == 100001L * 100000L / 2);
        }
        CHECK(j.phase_ok);
        cm_pool_destroy(pool);
    }
}

/* The sleeping side of every wait: a thread that is late by more than the
 * spin time sends the others to sleep in the barrier (and the caller in its
 * wait for the job's end), and pauses between jobs send the workers to sleep
 * waiting for the next one. Each must be woken, with the work all done. */
static void sleepy_fn(void *arg, int ith, int nth) {
    struct pool_job *j = arg;
    const struct timespec late = {0, 4 * 1000 * 1000};
    if (ith == (int)(atomic_load(&j->sum) % nth)) nanosleep(&late, NULL);
    atomic_fetch_add(&j->arrived, 1);
    cm_pool_barrier(j->pool);
    if (atomic_load(&j->arrived) % nth != 0) j->phase_ok = 0;
    cm_pool_barrier(j->pool);
    if (ith == nth - 1) nanosleep(&late, NULL); /* the caller sleeps until this one finishes */
}

TEST(pool_sleeps_and_wakes) {
    for (int nt = 2; nt <= 3; nt++) {
        cm_pool *pool;
        CHECK_OK(cm_pool_create(nt, &pool));
        struct pool_job j = {.phase_ok = 1, .pool = pool};
        const struct timespec pause = {0, 4 * 1000 * 1000};
        for (int rep = 0; rep < 12; rep++) {
            atomic_store(&j.sum, rep);
            cm_pool_run(pool, sleepy_fn, &j);
            CHECK(atomic_load(&j.arrived) == (rep + 1) * nt);
            if (rep % 2) nanosleep(&pause, NULL); /* workers go to sleep waiting for a job */
        }
        CHECK(j.phase_ok);
        cm_pool_destroy(pool);
    }
}

TEST(split_range_covers) {
    for (int nth = 1; nth < 7; nth++) {
        long prev = 0;
        for (int i = 0; i < nth; i++) {
            long b, e;
            cm_split_range(10, i, nth, &b, &e);
            CHECK(b == prev && e >= b);
            prev = e;
        }
        CHECK(prev == 10);
    }
}

int main(void) {
    RUN(status_messages);
    RUN(f16_roundtrip_all_halves);
    RUN(rng_reproducible);
    RUN(pool_runs_and_barriers);
    RUN(pool_sleeps_and_wakes);
    RUN(split_range_covers);
    return test_summary();
}
