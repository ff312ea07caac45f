/* kernels.c - throughput of cm_matmul per weight type, one JSON line each.
 *
 *   bench_kernels [-t THREADS] [-n N] [--types q4_0,q8_0,...] [--tokens T] [--hot] [--cpu-time]
 *
 * For each type: an N x N weight matrix (default 4096) times one token
 * (matrix-vector, the decode case) and times T tokens (default 64, the
 * prompt case), through cm_matmul on a pool of THREADS (default 2).
 * Several copies of the matrix, together much larger than the last-level
 * cache, are used in turn so that every call streams its weights from
 * memory as decode does (--hot: one copy, which stays in cache when it
 * fits: the kernels' compute speed rather than the memory's). Reports the
 * median of the timed runs, and the fastest (the _best keys: on a shared
 * machine, the run least disturbed by other work):
 *   gb_s     weight bytes / second (matrix-vector)
 *   gflop_s  2*N*N*T / second (T tokens)
 * On AVX-512 VNNI machines, q4_0, q8_0, q4_K and q6_K also get a "gemm"
 * line: the blocked kernel (cm_gemm_x86) on the same T tokens
 * (quantization, packing and all). Types with a repacked layout (repack.h,
 * what model loading does to such weights) get a second "kernels" line with
 * "layout":"r16": the same copies packed once, then the same matrix-vector
 * and T-token runs through cm_matmul; the file-layout line says
 * "layout":"file". CELLM_REPACK=off drops the r16 lines.
 * The kernels are whatever cm_kernels_init picks (cm_matmul itself takes
 * the blocked path for enough tokens; CELLM_GEMM=off keeps it on the dots);
 * CELLM_KERNELS=ref (or avx2) in the environment selects others, so
 *   CELLM_KERNELS=ref bench_kernels ; bench_kernels
 * compares the reference with the SIMD path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/pool.h"
#include "base/rng.h"
#include "base/time.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"
#include "kernels/repack.h"
#if defined(__x86_64__)
#include "kernels/x86/x86.h"
/* Weak, so that a build without the SIMD kernels (cmake -DCELLM_SIMD=OFF)
 * links: they are then NULL and the gemm lines are left out. */
#pragma weak cm_gemm_x86
#pragma weak cm_gemm_x86_applies
#endif

#define N_REPS 7
#define CACHE_DEFEAT_BYTES (256u << 20)

/* --cpu-time: process CPU seconds instead of wall time. With -t 1 this is
 * the kernel's own time even when other programs share the cores (time
 * slices given to them do not count); with more threads it would count
 * spinning workers, so it is meant for -t 1. */
static int use_cpu_time;

static double now_s(void) {
    if (!use_cpu_time) return cm_now_s();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

#if defined(__x86_64__)
/* The blocked AVX-512 path (cm_gemm_x86, gemm_avx512.c) over the same
 * matrix, as cm_matmul would run it with the hook: quantize the tokens, then
 * each thread runs the hook over its row range (packing panels and all). */
typedef struct gemm_job {
    cm_pool *pool;
    int type, n, n_tok;
    const uint8_t *w;
    size_t rb, arb;
    const float *x;
    uint8_t *act;
    float *y;
} gemm_job;

static void gemm_worker(void *arg, int ith, int nth) {
    gemm_job *j = arg;
    const cm_type_traits *vt = cm_type_traits_get(cm_type_traits_get(j->type)->vec_dot_type);
    long t0, t1;
    cm_split_range(j->n_tok, ith, nth, &t0, &t1);
    for (long t = t0; t < t1; t++) vt->from_float(j->x + (size_t)t * j->n, j->act + (size_t)t * j->arb, j->n);
    if (nth > 1) cm_pool_barrier(j->pool);
    long r0, r1;
    cm_split_range(j->n, ith, nth, &r0, &r1);
    if (!cm_gemm_x86(j->type, j->w, j->rb, r0, r1, j->n, j->act, j->arb, j->n_tok, j->y, j->n)) abort();
}

static double gemm_seconds(gemm_job *j) {
    double t0 = now_s();
    if (cm_pool_n_threads(j->pool) > 1)
        cm_pool_run(j->pool, gemm_worker, j);
    else
        gemm_worker(j, 0, 1);
    return now_s() - t0;
}
#endif

/* Times cm_matmul of the copies at w (mat_bytes apart) for one token and
 * for n_tok, and prints one line. */
static void time_matmul(cm_pool *pool, int type, const char *tname, const char *layout, const uint8_t *w, size_t rb,
                        size_t mat_bytes, int n_copies, int n, int n_tok, const float *x, float *y, void *scratch,
                        int hot, const char *kname) {
    double tv[N_REPS], tm[N_REPS];
    int c = 0;
    for (int rep = -1; rep < N_REPS; rep++) {
        /* matrix-vector: one pass over every copy */
        double t0 = now_s();
        for (int k = 0; k < n_copies; k++, c++)
            cm_matmul(pool, type, w + (size_t)(c % n_copies) * mat_bytes, rb, n, n, x, 1, y, scratch);
        double t1 = now_s();
        cm_matmul(pool, type, w + (size_t)(c++ % n_copies) * mat_bytes, rb, n, n, x, n_tok, y, scratch);
        double t2 = now_s();
        if (rep >= 0) tv[rep] = (t1 - t0) / n_copies, tm[rep] = t2 - t1;
    }
    double sv = median(tv, N_REPS), sm = median(tm, N_REPS);
    double bv = tv[0], bm = tm[0]; /* sorted by median(): the fastest run, least disturbed by other load */
    printf("{\"bench\":\"kernels\",\"clock\":\"%s\",\"kernels\":\"%s\",\"weights\":\"%s\",\"type\":\"%s\",\"layout\":\"%s\","
           "\"n\":%d,\"threads\":%d,\"matvec_ms\":%.3f,\"gb_s\":%.2f,\"gb_s_best\":%.2f,\"tokens\":%d,\"matmul_ms\":%.2f,"
           "\"gflop_s\":%.2f,\"gflop_s_best\":%.2f}\n",
           use_cpu_time ? "cpu" : "wall", kname, hot ? "cache" : "memory", tname, layout, n, pool ? cm_pool_n_threads(pool) : 1,
           sv * 1e3, (double)mat_bytes / sv / 1e9, (double)mat_bytes / bv / 1e9, n_tok, sm * 1e3,
           2.0 * n * n * n_tok / sm / 1e9, 2.0 * n * n * n_tok / bm / 1e9);
    fflush(stdout);
}

static int bench_type(cm_pool *pool, int type, int n, int n_tok, int hot, const char *kname) {
    const cm_type_traits *t = cm_type_traits_get(type);
    if (!t || !t->vec_dot) return 0;
    const size_t rb = (size_t)(n / t->block_elems) * t->block_bytes;
    const size_t mat_bytes = rb * (size_t)n;
    int n_copies = hot ? 1 : (int)(CACHE_DEFEAT_BYTES / mat_bytes) + 1;
    if (!hot && n_copies < 2) n_copies = 2;
    uint8_t *w = malloc(mat_bytes * (size_t)n_copies);
    float *x = malloc((size_t)n * n_tok * sizeof(float));
    float *y = malloc((size_t)n * n_tok * sizeof(float));
    void *scratch = malloc(cm_matmul_scratch_bytes(type, n, n_tok) + 64);
    float *row = malloc((size_t)n * sizeof(float));
    if (!w || !x || !y || !scratch || !row) {
        fprintf(stderr, "bench_kernels: out of memory for %s\n", t->name);
        free(w), free(x), free(y), free(scratch), free(row);
        return -1;
    }
    cm_rng r;
    cm_rng_init(&r, 42);
    /* 64 distinct quantized rows, tiled over every row of every copy */
    const int distinct = 64;
    for (int i = 0; i < distinct; i++) {
        for (int k = 0; k < n; k++) row[k] = cm_rng_normal(&r);
        cm_type_traits_ref(type)->from_float(row, w + (size_t)i * rb, n);
    }
    for (size_t i = distinct; i < (size_t)n * n_copies; i++) memcpy(w + i * rb, w + (i % distinct) * rb, rb);
    for (size_t k = 0; k < (size_t)n * n_tok; k++) x[k] = cm_rng_normal(&r);

    time_matmul(pool, type, t->name, "file", w, rb, mat_bytes, n_copies, n, n_tok, x, y, scratch, hot, kname);
    /* the same copies in the repacked layout, packed once */
    const cm_repack_ops *ops = cm_repack_find(type);
    if (ops && n % CM_REPACK_ROWS == 0) {
        const size_t pbytes = ops->bytes(n, n);
        uint8_t *pw = aligned_alloc(64, (pbytes * (size_t)n_copies + 63) & ~(size_t)63);
        if (pw) {
            for (int k = 0; k < n_copies; k++) ops->pack(w + (size_t)k * mat_bytes, rb, n, n, pw + (size_t)k * pbytes);
            time_matmul(pool, ops->type, t->name, "r16", pw, rb, pbytes, n_copies, n, n_tok, x, y, scratch, hot, kname);
            free(pw);
        }
    }
#if defined(__x86_64__)
    if (cm_gemm_x86_applies && cm_gemm_x86 && cm_gemm_x86_applies(type, n_tok)) {
        const cm_type_traits *vt = cm_type_traits_get(t->vec_dot_type);
        gemm_job j = {.pool = pool, .type = type, .n = n, .n_tok = n_tok, .w = w, .rb = rb,
                      .arb = (size_t)(n / vt->block_elems) * vt->block_bytes, .x = x, .y = y};
        j.act = malloc(j.arb * (size_t)n_tok);
        if (j.act) {
            double tg[N_REPS];
            gemm_seconds(&j); /* warm-up, and the per-thread buffers grow */
            for (int rep = 0; rep < N_REPS; rep++) tg[rep] = gemm_seconds(&j);
            double sg = median(tg, N_REPS);
            printf("{\"bench\":\"gemm\",\"clock\":\"%s\",\"kernels\":\"avx512-vnni-gemm\",\"weights\":\"%s\",\"type\":\"%s\","
                   "\"n\":%d,\"threads\":%d,\"tokens\":%d,\"matmul_ms\":%.2f,\"gflop_s\":%.2f,\"gflop_s_best\":%.2f}\n",
                   use_cpu_time ? "cpu" : "wall", hot ? "cache" : "memory", t->name, n, cm_pool_n_threads(pool), n_tok,
                   sg * 1e3, 2.0 * n * n * n_tok / sg / 1e9, 2.0 * n * n * n_tok / tg[0] / 1e9);
            fflush(stdout);
        }
        free(j.act);
    }
#endif
    free(w), free(x), free(y), free(scratch), free(row);
    return 0;
}

int main(int argc, char **argv) {
    int n_threads = 2, n = 4096, n_tok = 64, hot = 0;
    const char *types = "f32,f16,bf16,q4_0,q4_1,q5_0,q5_1,q8_0,q2_K,q3_K,q4_K,q5_K,q6_K";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) n_tok = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--types") && i + 1 < argc) types = argv[++i];
        else if (!strcmp(argv[i], "--hot")) hot = 1;
        else if (!strcmp(argv[i], "--cpu-time")) use_cpu_time = 1;
        else {
            fprintf(stderr, "usage: %s [-t THREADS] [-n N] [--tokens T] [--types q4_0,q8_0,...] [--hot] [--cpu-time]\n", argv[0]);
            return 2;
        }
    }
    if (n <= 0 || n % 256 || n_tok <= 0) {
        fprintf(stderr, "bench_kernels: -n must be a positive multiple of 256 and --tokens positive\n");
        return 2;
    }
    const char *kname = cm_kernels_init(false);
    cm_pool *pool = NULL;
    if (cm_pool_create(n_threads, &pool) != 0) {
        fprintf(stderr, "bench_kernels: cannot create a pool of %d threads\n", n_threads);
        return 1;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", types);
    int rc = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int type = cm_type_from_name(tok);
        if (type < 0 || !cm_type_traits_get(type)) {
            fprintf(stderr, "bench_kernels: unknown type %s\n", tok);
            rc = 2;
            continue;
        }
        if (bench_type(pool, type, n, n_tok, hot, kname) != 0) rc = 1;
    }
    cm_pool_destroy(pool);
    return rc;
}
