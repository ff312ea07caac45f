/* pool.h - the one persistent thread pool.
 *
 * Threads are created once (cm_pool_create) and park between jobs. A job is a
 * function run by every thread at once, the caller being thread 0; the call
 * returns when all threads have finished it. Inside a job, cm_pool_barrier()
 * makes all threads meet. Waiting spins briefly, then sleeps on a condition
 * variable, so short per-token jobs cost microseconds and an idle pool costs
 * nothing. No allocation and no thread creation per job. */
#ifndef CM_BASE_POOL_H
#define CM_BASE_POOL_H

typedef struct cm_pool cm_pool;

/* fn(arg, ith, nth): ith in [0, nth). */
typedef void (*cm_pool_fn)(void *arg, int ith, int nth);

/* n_threads <= 0 means the number of online CPUs. */
int cm_pool_create(int n_threads, cm_pool **out);
void cm_pool_destroy(cm_pool *pool);
int cm_pool_n_threads(const cm_pool *pool);

/* Runs fn on every thread of the pool and waits for all of them. Not
 * reentrant: call it from one thread at a time and never from inside a job. */
void cm_pool_run(cm_pool *pool, cm_pool_fn fn, void *arg);

/* Inside a job: returns once every thread of the pool has called it. */
void cm_pool_barrier(cm_pool *pool);

/* Splits [0, n) into nth nearly equal parts; part ith is [*begin, *end). */
void cm_split_range(long n, int ith, int nth, long *begin, long *end);

/* Number of online CPUs (at least 1). */
int cm_cpu_count(void);

#endif
