/* attention.c - time of decode attention alone (cm_attention for one token
 * of one sequence), one JSON line per depth.
 *
 *   bench_attention MODEL.gguf [-t THREADS] [-d DEPTH,DEPTH,...] [-s SEQS] [-r REPS] [-b BUILD]
 *
 * The model supplies the shape (heads, KV heads, head_dim) and the context
 * its attention runs in; the cache is filled with random f16 keys and values
 * (normal, sd 1) rather than by a prefill, so depth 8192 costs no prompt
 * processing. Every call goes to another (layer, sequence) pair, SEQS
 * sequences per layer (default 8), so that together the caches visited
 * exceed the last-level cache as they do in a real model of many layers:
 * each call streams its K and V from memory. Prints the median and fastest
 * microseconds per call (per layer per token), the median process CPU
 * microseconds per call (cpu_us: with -t 1 a measure that other work on the
 * machine barely disturbs) and the GB/s of K and V read. -b runs a narrower
 * build of the decode kernel than the CPU allows (model/attention.h: 0
 * portable, 1 F16C, 2 AVX-512). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/rng.h"
#include "base/status.h"
#include "base/time.h"
#include "model/attention.h"
#include "model/model.h"
#include "model/model_internal.h"

/* Weak, so the bench also links with an attention.c from before these
 * existed (timing an older kernel against a newer one); NULL there. */
#pragma weak cm_attention_set_build
#pragma weak cm_attention_build
#pragma weak cm_attention_convert_f16

/* CPU time of the whole process: with -t 1 the time the one thread really
 * ran, which another program on the machine does not inflate. */
static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *path = NULL, *depths = "512,4096,8192";
    int n_threads = 2, n_seq = 8, reps = 200, build = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-d") && i + 1 < argc) depths = argv[++i];
        else if (!strcmp(argv[i], "-s") && i + 1 < argc) n_seq = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-b") && i + 1 < argc) build = atoi(argv[++i]);
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "usage: bench_attention MODEL.gguf [-t THREADS] [-d DEPTH,...] [-s SEQS] [-r REPS] [-b BUILD]\n");
            return 2;
        }
    }
    if (!path || n_seq < 1 || reps < 1) {
        fprintf(stderr, "bench_attention: give a model (make one with: cellm model synth -o m.gguf ...)\n");
        return 2;
    }
    int max_depth = 0;
    for (const char *p = depths; *p;) {
        const int d = atoi(p);
        max_depth = d > max_depth ? d : max_depth;
        p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
    }
    cm_model *m = NULL;
    cm_ctx *c = NULL;
    uint64_t *ns = NULL, *cpu = NULL;
    int rc = 1;
    cm_model_params mp = {0, -1};
    int st = cm_model_load(path, &mp, &m);
    if (st != 0) {
        fprintf(stderr, "bench_attention: %s\n", cm_last_error(st));
        return 1;
    }
    cm_ctx_params cp = {.n_ctx = max_depth + 1, .n_seq_max = n_seq, .n_batch_max = 1, .n_threads = n_threads};
    if ((st = cm_ctx_create(m, &cp, &c)) != 0) {
        fprintf(stderr, "bench_attention: %s\n", cm_last_error(st));
        goto fail;
    }
    const cm_hparams *hp = &m->hp;
    const int n_layer = c->n_layer_stage;
    cm_rng rng;
    cm_rng_init(&rng, 1);
    const size_t cache_n = (size_t)n_seq * (size_t)cp.n_ctx * (size_t)c->n_kv;
    /* normal halves drawn once, then picked by random index: filling
     * hundreds of MiB with fresh normals would take longer than the timing */
    static cm_f16 normal[1 << 16];
    for (int i = 0; i < 1 << 16; i++) normal[i] = cm_f32_to_f16(cm_rng_normal(&rng));
    for (int il = 0; il < n_layer; il++)
        for (size_t i = 0; i < cache_n; i++) {
            const uint64_t u = cm_rng_u64(&rng);
            c->k_cache[il][i] = normal[u & 0xffff];
            c->v_cache[il][i] = normal[(u >> 16) & 0xffff];
        }
    if (build >= 0 && !cm_attention_set_build) {
        fprintf(stderr, "bench_attention: this attention.c has one build; -b ignored\n");
        build = -1;
    }
    if (build >= 0) {
        cm_attention_set_build(build);
        fprintf(stderr, "bench_attention: decode kernel build %d%s\n", build,
                cm_attention_convert_f16(build, NULL, NULL, 0) ? "" : " is not available here; running the widest");
    }
    if (!(ns = malloc((size_t)reps * sizeof *ns)) || !(cpu = malloc((size_t)reps * sizeof *cpu))) goto fail;
    for (const char *p = depths; *p;) {
        const int depth = atoi(p);
        p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
        int32_t pos = depth, seq = 0;
        cm_batch b = {.n_tokens = 1, .pos = &pos, .seq_id = &seq};
        cm_rope_angles(hp, m->rope_freq, pos, c->rope_cs);
        for (int r = -n_layer * n_seq; r < reps; r++) {
            /* fresh queries and new K/V: cm_attention rotates q and k in place */
            for (int i = 0; i < c->n_q; i++) c->q[i] = cm_rng_normal(&rng) * 2.0f;
            for (int i = 0; i < c->n_kv; i++) c->k[i] = cm_rng_normal(&rng), c->v[i] = cm_rng_normal(&rng);
            const int k = (r + n_layer * n_seq) % (n_layer * n_seq);
            seq = k % n_seq;
            const uint64_t t0 = cm_now_ns(), c0 = cpu_ns();
            cm_attention(c, k / n_seq, &b);
            if (r >= 0) ns[r] = cm_now_ns() - t0, cpu[r] = cpu_ns() - c0;
        }
        qsort(ns, (size_t)reps, sizeof *ns, cmp_u64);
        qsort(cpu, (size_t)reps, sizeof *cpu, cmp_u64);
        const double med = (double)ns[reps / 2] / 1e3, best = (double)ns[0] / 1e3;
        const double bytes = 2.0 * (depth + 1) * c->n_kv * sizeof(cm_f16);
        printf("{\"bench\":\"attention\",\"depth\":%d,\"threads\":%d,\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,"
               "\"build\":%d,\"us\":%.1f,\"us_best\":%.1f,\"cpu_us\":%.1f,\"gb_s\":%.2f}\n",
               depth, n_threads, hp->n_head, hp->n_head_kv, hp->head_dim, build >= 0 ? build : cm_attention_build ? cm_attention_build() : -1, med, best, (double)cpu[reps / 2] / 1e3,
               bytes / (med * 1e3));
        fflush(stdout);
    }
    rc = 0;
fail:
    free(ns);
    free(cpu);
    cm_ctx_destroy(c);
    cm_model_destroy(m);
    return rc;
}
