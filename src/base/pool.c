/* pool.c - persistent thread pool with a spin-then-sleep wait.
 *
 * A job is announced by bumping `generation`; each worker remembers the last
 * generation it ran. Completion is counted down in `pending`. The barrier is a
 * sense-reversing counter. Every shared counter sits on its own cache line so
 * that spinning threads do not make each other's lines bounce. */
#include "base/pool.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sched.h>
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
    _Alignas(CACHELINE) atomic_int stop;
    int n_threads;
    cm_pool_fn fn;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv_job;  /* workers sleep here waiting for a generation */
    pthread_cond_t cv_done; /* the caller sleeps here waiting for pending == 0 */
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

static void finish_one(cm_pool *pool) {
    if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_signal(&pool->cv_done);
        pthread_mutex_unlock(&pool->mu);
    }
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
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->cv_job, &pool->mu);
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
    pthread_mutex_lock(&pool->mu);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->cv_job);
    pthread_mutex_unlock(&pool->mu);

    fn(arg, 0, pool->n_threads);
    finish_one(pool);

    int spins = 0;
    while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0) {
        if (++spins < SPIN_ITERS) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&pool->mu);
        while (atomic_load(&pool->pending) != 0) pthread_cond_wait(&pool->cv_done, &pool->mu);
        pthread_mutex_unlock(&pool->mu);
    }
}

void cm_pool_barrier(cm_pool *pool) {
    int n = pool->n_threads;
    if (n == 1) return;
    unsigned sense = atomic_load_explicit(&pool->barrier_sense, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&pool->barrier_count, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&pool->barrier_count, 0, memory_order_relaxed);
        atomic_store_explicit(&pool->barrier_sense, sense + 1, memory_order_release);
        return;
    }
    /* Barriers inside a job are short: spin, yielding now and then. */
    int spins = 0;
    while (atomic_load_explicit(&pool->barrier_sense, memory_order_acquire) == sense) {
        if (++spins < SPIN_ITERS)
            cpu_relax();
        else
            sched_yield();
    }
}
