/* cmd_bench.c - `cellm bench`: prompt-processing and generation speed of a
 * model on this machine, next to the machine's own read bandwidth.
 *
 *   cellm bench -m MODEL [-p 512[,N...]] [-n 128[,N...]] [-d 0[,D...]] [-t THREADS] [-r REPS] [-b BATCH]
 *               [--json]
 *
 * Tests (as llama-bench names them):
 *   ppN  N random prompt tokens from an empty cache, in batches of at most
 *        BATCH; tok/s = N / time.
 *   tgN  N tokens decoded one at a time from an empty cache; tok/s = N / time.
 * With -d D (depth), every test starts from a cache already holding D prompt
 * tokens instead ("tg128 @ d4096"): attention then reads D more positions
 * per token. The D tokens are fed once per depth, untimed, and each timed
 * run cuts the cache back to them.
 * Each test first runs a few tokens untimed (warm-up: page cache, thread
 * wake-up), then REPS timed times; the median, min and max tok/s are reported.
 *
 * Decode reads every weight once per token, so its speed limit is
 * bandwidth / bytes_per_token. bytes_per_token is cm_model_weight_bytes()
 * (the weights a decoded token reads). The bandwidth is measured in the same
 * run, before the tests: every thread of the model's pool streams its own
 * contiguous half (third, ...) of a 512 MiB buffer, far larger than any
 * last-level cache, with 64-byte loads into eight independent accumulators,
 * BW_PASSES times; the median pass counts (the best is shown beside it).
 * roofline = tok/s * bytes_per_token / bandwidth, for tg tests.
 *
 * Output: a table, or with --json one object per test and line:
 *   {"test":"tg128","tok_s":..,"tok_s_min":..,"tok_s_max":..,"bytes_per_token":..,
 *    "bandwidth_gb_s":..,"bandwidth_best_gb_s":..,"roofline":..,"model":..,"depth":..,"threads":..,
 *    "reps":..,"batch":..,"kernels":..,"kv_type":..}
 * At a depth, roofline still counts only the weights (the KV cache read
 * per token comes on top).
 *
 * Exit codes: 0 done, 1 a runtime failure, 2 bad usage. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"
#include "base/rng.h"
#include "base/status.h"
#include "base/time.h"
#include "cmd.h"
#include "kernels/kernels.h"
#include "model/model.h"

#define MAX_TESTS 16
#define BW_BYTES ((size_t)512 << 20) /* ten times a large last-level cache */
#define BW_PASSES 9

typedef struct bench_opts {
    const char *model;
    int n_prompt[MAX_TESTS], n_pp;
    int n_gen[MAX_TESTS], n_tg;
    int depth[MAX_TESTS], n_depth;
    int n_threads;
    int reps;
    int n_batch;
    int kv_type; /* cm_kv_type */
    bool json;
} bench_opts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: cellm bench -m MODEL.gguf [options]\n"
            "\n"
            "Measures prompt processing (ppN: N prompt tokens in batches) and generation\n"
            "(tgN: N tokens one at a time) in tokens/s, and the machine's read bandwidth in the\n"
            "same run, to show how close decode comes to the memory limit (roofline =\n"
            "tok/s x bytes read per token / bandwidth).\n"
            "\n"
            "  -m, --model FILE     GGUF model (required)\n"
            "  -p, --n-prompt N,..  prompt lengths (default 512; 0 = no pp test)\n"
            "  -n, --n-gen N,..     generation lengths (default 128; 0 = no tg test)\n"
            "  -d, --depth D,..     run every test after D prompt tokens already in the cache\n"
            "                       (default 0: from an empty cache)\n"
            "  -t, --threads N      threads (default: all cores)\n"
            "  -r, --reps N         timed repetitions per test (default 5)\n"
            "  -b, --batch N        prompt tokens per forward pass (default 512)\n"
            "      --kv-type T      KV cache element type: f16 (default) or q8_0\n"
            "      --json           one JSON object per test and line instead of a table\n"
            "\n"
            "CELLM_KERNELS=ref (or avx2, neon) in the environment selects other kernels;\n"
            "CELLM_REPACK=off keeps the weights in the file's layout (no repacking at load);\n"
            "CELLM_DECODE_FUSED=off runs decode steps through the general layer path.\n");
}

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "cellm bench: %s needs an integer in [%d, %d], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* "512,1024" -> list; 0 entries are dropped (0 = no test of this kind)
 * unless keep_zero. */
static int parse_list(const char *flag, const char *s, bool keep_zero, int *out, int *n_out) {
    char buf[256];
    if (strlen(s) >= sizeof buf) {
        fprintf(stderr, "cellm bench: %s list too long\n", flag);
        return -1;
    }
    strcpy(buf, s);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int v;
        if (parse_int(flag, tok, 0, 1 << 20, &v)) return -1;
        if (v == 0 && !keep_zero) continue;
        if (n == MAX_TESTS) {
            fprintf(stderr, "cellm bench: %s takes at most %d values\n", flag, MAX_TESTS);
            return -1;
        }
        out[n++] = v;
    }
    *n_out = n;
    return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_prompt[0] = 512, o->n_pp = 1;
    o->n_gen[0] = 128, o->n_tg = 1;
    o->depth[0] = 0, o->n_depth = 1;
    o->reps = 5;
    o->n_batch = 512;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "cellm bench: %s needs a value (or is unknown; see --help)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt")) {
            if (parse_list(a, v, false, o->n_prompt, &o->n_pp)) return -1;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-gen")) {
            if (parse_list(a, v, false, o->n_gen, &o->n_tg)) return -1;
        } else if (!strcmp(a, "-d") || !strcmp(a, "--depth")) {
            if (parse_list(a, v, true, o->depth, &o->n_depth)) return -1;
            if (!o->n_depth) {
                fprintf(stderr, "cellm bench: %s needs at least one depth\n", a);
                return -1;
            }
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (parse_int(a, v, 1, 1024, &o->n_threads)) return -1;
        } else if (!strcmp(a, "-r") || !strcmp(a, "--reps")) {
            if (parse_int(a, v, 1, 1000, &o->reps)) return -1;
        } else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) {
            if (parse_int(a, v, 1, 1 << 16, &o->n_batch)) return -1;
        } else if (!strcmp(a, "--kv-type")) {
            if ((o->kv_type = cm_kv_type_from_name(v)) < 0) {
                fprintf(stderr, "cellm bench: %s must be f16 or q8_0, got '%s'\n", a, v);
                return -1;
            }
        } else {
            fprintf(stderr, "cellm bench: unknown option '%s' (see --help)\n", a);
            return -1;
        }
    }
    if (!o->model) {
        fprintf(stderr, "cellm bench: -m MODEL is required (see --help)\n");
        return -1;
    }
    if (!o->n_pp && !o->n_tg) {
        fprintf(stderr, "cellm bench: nothing to run (-p 0 and -n 0)\n");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- bandwidth */

/* 64 bytes: one AVX-512 load, two AVX2 or four SSE2 loads, whatever the
 * build targets; a GCC vector extension, so this stays plain C. */
typedef uint64_t u64x8 __attribute__((vector_size(64), aligned(64)));

/* On x86 the read loop is also built for AVX2 and AVX-512 and the widest
 * the CPU has is picked at load time: the portable build's SSE2 loads issue
 * four times as many load instructions for the same bytes, which costs read
 * bandwidth on a core that can retire two 64-byte loads per cycle. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BW_CLONES
#endif

typedef struct bw_job {
    const u64x8 *buf;
    size_t n_vec;     /* 64-byte vectors in buf, a multiple of 8 */
    uint64_t sink[64]; /* one slot per thread, 8 apart: no false sharing */
} bw_job;

/* Sums n 64-byte vectors (n a multiple of 8) with eight independent
 * accumulators, so the loads, not the add chains, set the pace. */
BW_CLONES static uint64_t bw_sum(const u64x8 *restrict p, size_t n) {
    u64x8 a0 = {0}, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i < n; i += 8) {
        a0 += p[i], a1 += p[i + 1], a2 += p[i + 2], a3 += p[i + 3];
        a4 += p[i + 4], a5 += p[i + 5], a6 += p[i + 6], a7 += p[i + 7];
    }
    u64x8 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    uint64_t r = 0;
    for (int k = 0; k < 8; k++) r += s[k];
    return r;
}

/* Each thread streams its own contiguous slice (in whole 512-byte steps),
 * as a decode step streams each thread's rows of a weight matrix. */
static void bw_worker(void *arg, int ith, int nth) {
    bw_job *job = arg;
    long b, e;
    cm_split_range((long)(job->n_vec / 8), ith, nth, &b, &e);
    uint64_t s = bw_sum(job->buf + (size_t)b * 8, (size_t)(e - b) * 8);
    if (ith < 8) job->sink[ith * 8] += s; /* kept, so the loads are not dropped */
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Read bandwidth in GB/s (1e9 bytes/s) with the pool's threads: the median
 * of BW_PASSES passes, and the best pass in *best. < 0 without memory. */
static double measure_bandwidth(cm_pool *pool, double *best) {
    bw_job *job = calloc(1, sizeof *job);
    u64x8 *buf = aligned_alloc(64, BW_BYTES);
    if (!job || !buf) {
        free(job), free(buf);
        return -1;
    }
    memset(buf, 1, BW_BYTES); /* fault every page in before timing */
    job->buf = buf;
    job->n_vec = BW_BYTES / sizeof(u64x8);
    double gbs[BW_PASSES];
    cm_pool_run(pool, bw_worker, job); /* warm-up: wakes the threads, settles the clocks */
    for (int k = 0; k < BW_PASSES; k++) {
        double t0 = cm_now_s();
        cm_pool_run(pool, bw_worker, job);
        gbs[k] = (double)BW_BYTES / (cm_now_s() - t0) / 1e9;
    }
    qsort(gbs, BW_PASSES, sizeof *gbs, cmp_double);
    free(buf);
    free(job);
    *best = gbs[BW_PASSES - 1];
    return gbs[BW_PASSES / 2];
}

/* ---------------------------------------------------------------- tests */

typedef struct bench_ctx {
    cm_model *model;
    cm_ctx *ctx;
    int n_vocab, n_batch;
    int32_t *tok, *pos, *seq;
    cm_rng rng;
} bench_ctx;

/* Feeds n random prompt tokens at positions d.. in batches (the cache is
 * first cut back to its first d positions). */
static int feed(bench_ctx *b, int d, int n) {
    cm_ctx_seq_rm(b->ctx, 0, d, -1);
    for (int i = 0; i < n; i += b->n_batch) {
        int nt = n - i < b->n_batch ? n - i : b->n_batch;
        for (int k = 0; k < nt; k++) {
            b->tok[k] = (int32_t)(cm_rng_u64(&b->rng) % (uint64_t)b->n_vocab);
            b->pos[k] = d + i + k, b->seq[k] = 0;
        }
        cm_batch batch = {.n_tokens = nt, .token = b->tok, .pos = b->pos, .seq_id = b->seq, .want_logits = NULL};
        int rc = cm_ctx_decode(b->ctx, &batch);
        if (rc) return rc;
    }
    return CM_OK;
}

/* The cache holds exactly positions 0..d-1 afterwards (fed untimed where
 * it held fewer). */
static int fill_to(bench_ctx *b, int d) {
    int len = cm_ctx_seq_len(b->ctx, 0);
    if (len >= d) {
        cm_ctx_seq_rm(b->ctx, 0, d, -1);
        return CM_OK;
    }
    return feed(b, len, d - len);
}

/* Prompt of n random tokens after the d already in the cache, in batches. */
static int run_pp(bench_ctx *b, int d, int n, double *secs) {
    cm_ctx_seq_rm(b->ctx, 0, d, -1);
    for (int i = 0; i < n; i++) b->tok[i] = (int32_t)(cm_rng_u64(&b->rng) % (uint64_t)b->n_vocab);
    double t0 = cm_now_s();
    for (int i = 0; i < n; i += b->n_batch) {
        int nt = n - i < b->n_batch ? n - i : b->n_batch;
        for (int k = 0; k < nt; k++) b->pos[k] = d + i + k, b->seq[k] = 0;
        cm_batch batch = {.n_tokens = nt, .token = b->tok + i, .pos = b->pos, .seq_id = b->seq, .want_logits = NULL};
        int rc = cm_ctx_decode(b->ctx, &batch);
        if (rc) return rc;
    }
    *secs = cm_now_s() - t0;
    return CM_OK;
}

/* n tokens decoded one at a time after the d already in the cache. */
static int run_tg(bench_ctx *b, int d, int n, double *secs) {
    cm_ctx_seq_rm(b->ctx, 0, d, -1);
    double t0 = cm_now_s();
    for (int i = 0; i < n; i++) {
        int32_t tok = (int32_t)(cm_rng_u64(&b->rng) % (uint64_t)b->n_vocab), pos = d + i, seq = 0;
        cm_batch batch = {.n_tokens = 1, .token = &tok, .pos = &pos, .seq_id = &seq, .want_logits = NULL};
        int rc = cm_ctx_decode(b->ctx, &batch);
        if (rc) return rc;
    }
    *secs = cm_now_s() - t0;
    return CM_OK;
}

typedef struct result {
    char test[40];
    bool gen;
    double med, min, max;
} result;

static int run_test(bench_ctx *b, const bench_opts *o, bool gen, int d, int n, result *r) {
    double *tps = malloc((size_t)o->reps * sizeof *tps);
    if (!tps) return cm_errorf(CM_ENOMEM, "out of memory");
    double secs;
    /* warm-up: any forward pass reads every weight, which pages in the
     * mapped file and wakes the pool; a few tokens are enough */
    int rc = gen ? run_tg(b, d, n < 8 ? n : 8, &secs) : run_pp(b, d, n < 8 ? n : 8, &secs);
    for (int k = 0; !rc && k < o->reps; k++) {
        rc = gen ? run_tg(b, d, n, &secs) : run_pp(b, d, n, &secs);
        tps[k] = n / secs;
    }
    if (!rc) {
        if (d)
            snprintf(r->test, sizeof r->test, "%s%d @ d%d", gen ? "tg" : "pp", n, d);
        else
            snprintf(r->test, sizeof r->test, "%s%d", gen ? "tg" : "pp", n);
        r->gen = gen;
        qsort(tps, (size_t)o->reps, sizeof *tps, cmp_double);
        r->min = tps[0], r->max = tps[o->reps - 1];
        r->med = o->reps % 2 ? tps[o->reps / 2] : 0.5 * (tps[o->reps / 2 - 1] + tps[o->reps / 2]);
    }
    free(tps);
    return rc;
}

static void print_json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

int cmd_bench(int argc, char **argv) {
    bench_opts o;
    int prc = parse_args(argc, argv, &o);
    if (prc) return prc > 0 ? 0 : 2;

    const char *kernels = cm_kernels_init(false);
    bench_ctx b = {0};
    int rc;
    /* Bandwidth first, on a pool of the same size as the context's, so its
     * buffer is freed before the weights are resident (peak memory is the
     * model's, not model plus probe). */
    double bw = -1, bw_best = 0;
    {
        cm_pool *bw_pool = NULL;
        if ((rc = cm_pool_create(o.n_threads, &bw_pool))) goto fail;
        bw = measure_bandwidth(bw_pool, &bw_best);
        cm_pool_destroy(bw_pool);
    }
    if (bw <= 0) {
        rc = cm_errorf(CM_ENOMEM, "no memory for the %zu MiB bandwidth buffer", BW_BYTES >> 20);
        goto fail;
    }
    cm_model_params mp = {.layer_begin = 0, .layer_end = -1};
    rc = cm_model_load(o.model, &mp, &b.model);
    if (rc) goto fail;
    const cm_hparams *hp = cm_model_hparams(b.model);
    b.n_vocab = hp->n_vocab;
    int n_test = 1, max_pp = 1, max_d = 0;
    for (int i = 0; i < o.n_pp; i++) {
        if (o.n_prompt[i] > n_test) n_test = o.n_prompt[i];
        if (o.n_prompt[i] > max_pp) max_pp = o.n_prompt[i];
    }
    for (int i = 0; i < o.n_tg; i++)
        if (o.n_gen[i] > n_test) n_test = o.n_gen[i];
    for (int i = 0; i < o.n_depth; i++)
        if (o.depth[i] > max_d) max_d = o.depth[i];
    if (max_d > (1 << 24) - n_test) {
        rc = cm_errorf(CM_EINVAL, "depth %d plus a test of %d tokens is too long a context (use a smaller -d, -p or -n)", max_d, n_test);
        goto fail;
    }
    const int n_ctx = max_d + n_test;
    /* the depth is fed in the same batches as a prompt */
    if (max_d > max_pp) max_pp = max_d < o.n_batch ? max_d : o.n_batch;
    b.n_batch = o.n_batch < max_pp ? o.n_batch : max_pp;
    cm_ctx_params cp = {
        .n_ctx = n_ctx, .n_seq_max = 1, .n_batch_max = b.n_batch, .n_threads = o.n_threads, .kv_type = o.kv_type};
    rc = cm_ctx_create(b.model, &cp, &b.ctx);
    if (rc) goto fail;
    b.tok = malloc((size_t)max_pp * sizeof *b.tok);
    b.pos = malloc((size_t)b.n_batch * sizeof *b.pos);
    b.seq = malloc((size_t)b.n_batch * sizeof *b.seq);
    if (!b.tok || !b.pos || !b.seq) {
        rc = cm_errorf(CM_ENOMEM, "out of memory");
        goto fail;
    }
    cm_rng_init(&b.rng, 1234);
    cm_pool *pool = cm_ctx_pool(b.ctx);
    const int n_threads = cm_pool_n_threads(pool);

    const uint64_t bpt = cm_model_weight_bytes(b.model);
    const char *mname = strrchr(o.model, '/') ? strrchr(o.model, '/') + 1 : o.model;

    if (!o.json) {
        printf("model %s: %s, %d layers, n_embd %d, %.1f MiB of weights read per token\n", mname, hp->arch_name,
               hp->n_layer, hp->n_embd, (double)bpt / (1 << 20));
        printf("kernels %s, %d threads, %d reps, %s KV cache; read bandwidth %.1f GB/s median, %.1f best pass "
               "(this run, %d threads)\n\n",
               kernels, n_threads, o.reps, cm_kv_type_name(o.kv_type), bw, bw_best, n_threads);
        printf("| %-14s | %10s | %10s | %10s | %8s |\n", "test", "tok/s", "min", "max", "roofline");
        printf("|----------------|------------|------------|------------|----------|\n");
        fflush(stdout);
    }
    for (int di = 0; di < o.n_depth; di++) {
        const int d = o.depth[di];
        if ((rc = fill_to(&b, d))) goto fail;
        for (int pass = 0; pass < 2; pass++) {
            const bool gen = pass == 1;
            const int nt = gen ? o.n_tg : o.n_pp;
            for (int i = 0; i < nt; i++) {
                result r;
                rc = run_test(&b, &o, gen, d, gen ? o.n_gen[i] : o.n_prompt[i], &r);
                if (rc) goto fail;
                const double roof = r.med * (double)bpt / (bw * 1e9);
                if (o.json) {
                    printf("{\"test\":\"%s\",\"tok_s\":%.3f,\"tok_s_min\":%.3f,\"tok_s_max\":%.3f,"
                           "\"bytes_per_token\":%" PRIu64 ",\"bandwidth_gb_s\":%.3f,\"bandwidth_best_gb_s\":%.3f,",
                           r.test, r.med, r.min, r.max, bpt, bw, bw_best);
                    if (gen) printf("\"roofline\":%.4f,", roof);
                    printf("\"model\":");
                    print_json_str(mname);
                    printf(",\"depth\":%d,\"threads\":%d,\"reps\":%d,\"batch\":%d,\"kernels\":", d, n_threads,
                           o.reps, b.n_batch);
                    print_json_str(kernels);
                    printf(",\"kv_type\":\"%s\"}\n", cm_kv_type_name(o.kv_type));
                } else if (gen) {
                    printf("| %-14s | %10.2f | %10.2f | %10.2f | %8.3f |\n", r.test, r.med, r.min, r.max, roof);
                } else {
                    printf("| %-14s | %10.2f | %10.2f | %10.2f | %8s |\n", r.test, r.med, r.min, r.max, "");
                }
                fflush(stdout);
            }
        }
    }
    if (!o.json)
        printf("\nroofline = tok/s x bytes read per token / read bandwidth (decode's memory limit is 1.0)\n");

fail:
    if (rc) fprintf(stderr, "cellm bench: %s\n", cm_last_error(rc));
    free(b.tok), free(b.pos), free(b.seq);
    if (b.ctx) cm_ctx_destroy(b.ctx);
    if (b.model) cm_model_destroy(b.model);
    return rc ? (rc == CM_EINVAL ? 2 : 1) : 0;
}
