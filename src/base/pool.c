/* pool.c - persistent thread pool with a spin-then-sleep wait.
 *
 * A job is announced by bumping `generation`; each worker remembers the last
 * generation it ran. Completion is counted down in `pending`. The barrier is a
 * sense-reversing counter. Every shared counter sits on its own cache line so
 * that spinning threads do not make each other's lines bounce.
 *
 * Every wait spins for a while (SPIN_ITERS pauses, about a millisecond) and
 * then sleeps on a condition variable. The mutex is taken only by a thread
 * going to sleep and by one that must wake a sleeper: each sleeper first
 * announces itself in a counter (`sleepers`, `caller_asleep`,
 * `bar_sleepers`) and re-checks its condition under the mutex, and the
 * thread that changes the condition reads that counter after changing it,
 * all with sequentially consistent atomics, so at least one of the two sees
 * the other and no wake-up is lost. While everybody spins (one token after
 * another), a job and a barrier cost a few atomic operations and no lock. */
#include "base/pool.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/status.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ITERS 20000
#define CACHELINE 64

struct cm_pool {
    _Alignas(CACHELINE) atomic_uint generation;
    _Alignas(CACHELINE) atomic_int pending;
    _Alignas(CACHELINE) atomic_int barrier_count;
    _Alignas(CACHELINE) atomic_uint barrier_sense;
    _Alignas(CACHELINE) atomic_int sleepers;      /* workers asleep (or going to sleep) on cv_job */
    _Alignas(CACHELINE) atomic_int caller_asleep; /* the caller is asleep (or going to sleep) on cv_done */
    _Alignas(CACHELINE) atomic_int bar_sleepers;  /* threads asleep (or going to sleep) on cv_bar */
    _Alignas(CACHELINE) atomic_int stop;
    int n_threads;
    cm_pool_fn fn;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv_job;  /* workers sleep here waiting for a generation */
    pthread_cond_t cv_done; /* the caller sleeps here waiting for pending == 0 */
    pthread_cond_t cv_bar;  /* threads sleep here waiting for the barrier's sense to change */
    pthread_t *threads;
    struct worker *workers;
};

struct worker {
    cm_pool *pool;
    int ith;
};

int cm_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

void cm_split_range(long n, int ith, int nth, long *begin, long *end) {
    long base = n / nth, extra = n % nth;
    *begin = ith * base + (ith < extra ? ith : extra);
    *end = *begin + base + (ith < extra ? 1 : 0);
}

/* Wakes whoever sleeps on cv; called after the condition changed, and only
 * when that thread's counter said somebody sleeps or is about to. */
static void wake(cm_pool *pool, pthread_cond_t *cv) {
    pthread_mutex_lock(&pool->mu);
    pthread_cond_broadcast(cv);
    pthread_mutex_unlock(&pool->mu);
}

static void finish_one(cm_pool *pool) {
    if (atomic_fetch_sub(&pool->pending, 1) == 1 && atomic_load(&pool->caller_asleep)) wake(pool, &pool->cv_done);
}

static void *worker_main(void *p) {
    struct worker *w = p;
    cm_pool *pool = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->sleepers, 1);
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->cv_job, &pool->mu);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
        seen = gen;
        pool->fn(pool->arg, w->ith, pool->n_threads);
        finish_one(pool);
    }
}

int cm_pool_create(int n_threads, cm_pool **out) {
    if (n_threads <= 0) n_threads = cm_cpu_count();
    cm_pool *pool = aligned_alloc(CACHELINE, (sizeof *pool + CACHELINE - 1) / CACHELINE * CACHELINE);
    if (!pool) return CM_ENOMEM;
    *pool = (cm_pool){0};
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv_job, NULL);
    pthread_cond_init(&pool->cv_done, NULL);
    pthread_cond_init(&pool->cv_bar, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
    pool->workers = calloc((size_t)n_threads, sizeof *pool->workers);
    if (!pool->threads || !pool->workers) {
        cm_pool_destroy(pool);
        return CM_ENOMEM;
    }
    for (int i = 1; i < n_threads; i++) {
        pool->workers[i] = (struct worker){pool, i};
        if (pthread_create(&pool->threads[i], NULL, worker_main, &pool->workers[i]) != 0) {
            pool->n_threads = i; /* join only what started */
            cm_pool_destroy(pool);
            return cm_errorf(CM_ENOMEM, "could not start thread %d of the pool", i);
        }
    }
    *out = pool;
    return CM_OK;
}

void cm_pool_destroy(cm_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->cv_job);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n_threads; i++)
        if (pool->threads && pool->threads[i]) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv_job);
    pthread_cond_destroy(&pool->cv_done);
    pthread_cond_destroy(&pool->cv_bar);
    free(pool->threads);
    free(pool->workers);
    free(pool);
}

int cm_pool_n_threads(const cm_pool *pool) { return pool->n_threads; }

void cm_pool_run(cm_pool *pool, cm_pool_fn fn, void *arg) {
    if (pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->pending, pool->n_threads, memory_order_relaxed);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->sleepers)) wake(pool, &pool->cv_job);

    fn(arg, 0, pool->n_threads);
    finish_one(pool);

    int spins = 0;
    while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0) {
        if (++spins < SPIN_ITERS) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&pool->mu);
        atomic_store(&pool->caller_asleep, 1);
        while (atomic_load(&pool->pending) != 0) pthread_cond_wait(&pool->cv_done, &pool->mu);
        atomic_store(&pool->caller_asleep, 0);
        pthread_mutex_unlock(&pool->mu);
    }
}

void cm_pool_barrier(cm_pool *pool) {
    int n = pool->n_threads;
    if (n == 1) return;
    unsigned sense = atomic_load_explicit(&pool->barrier_sense, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&pool->barrier_count, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&pool->barrier_count, 0, memory_order_relaxed);
        atomic_store(&pool->barrier_sense, sense + 1);
        if (atomic_load(&pool->bar_sleepers)) wake(pool, &pool->cv_bar);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&pool->barrier_sense, memory_order_acquire) == sense) {
        if (++spins < SPIN_ITERS) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&pool->mu);
        atomic_fetch_add(&pool->bar_sleepers, 1);
        while (atomic_load(&pool->barrier_sense) == sense) pthread_cond_wait(&pool->cv_bar, &pool->mu);
        atomic_fetch_sub(&pool->bar_sleepers, 1);
        pthread_mutex_unlock(&pool->mu);
    }
}
