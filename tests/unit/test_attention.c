/* test_attention.c - decode attention (attention.c) on its own.
 *
 * f16 conversion: every build of the decode kernel this CPU runs converts
 * all 65536 halves exactly as cm_f16_to_f32 does (bit for bit; NaN may come
 * back with its quiet bit set, still NaN).
 *
 * Long contexts: a cache filled with random f16 keys and values at up to
 * ~2000 positions (many tiles, a last partial tile, a split over threads),
 * then cm_attention for one token, compared with softmax(q K^T / sqrt(d)) V
 * in double over the very cache rows and rotated queries the engine used.
 * The head shapes cover the AVX-512 kernel (eight query heads per KV head,
 * and sixteen: two chunks), and the generic path (four per KV head with a
 * head_dim that is no multiple of 32, and one). One and two threads, and a
 * batch of two sequences (decode per KV head rather than split positions);
 * each with every build of the kernel this CPU runs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../test.h"
#include "base/rng.h"
#include "base/status.h"
#include "kernels/kernels.h"
#include "model/attention.h"
#include "model/model.h"
#include "model/model_internal.h"
#include "model/synth.h"

TEST(f16_convert_all_halves) {
    cm_f16 *h = malloc(65536 * sizeof *h);
    float *f = malloc(65536 * sizeof *f);
    for (int i = 0; i < 65536; i++) h[i] = (cm_f16)i;
    CHECK(cm_attention_convert_f16(CM_ATT_BUILD_PORTABLE, f, h, 0)); /* every binary has the portable build */
    int n_builds = 0;
    for (int b = 0; b < CM_ATT_BUILD_COUNT; b++) {
        memset(f, 0, 65536 * sizeof *f);
        if (!cm_attention_convert_f16(b, f, h, 65536)) {
            fprintf(stderr, "  build %d: not on this CPU or binary\n", b);
            continue;
        }
        n_builds++;
        int bad = 0, first = -1;
        for (int i = 0; i < 65536; i++) {
            const float ref = cm_f16_to_f32(h[i]);
            const bool ok = isnan(ref) ? isnan(f[i]) : cm_f32_bits(f[i]) == cm_f32_bits(ref);
            if (!ok && bad++ == 0) first = i;
        }
        fprintf(stderr, "  build %d: %d of 65536 halves differ from cm_f16_to_f32\n", b, bad);
        CHECK_MSG(bad == 0, "build %d: half 0x%04x gives %a, expected %a", b, first, first >= 0 ? f[first] : 0.0,
                  first >= 0 ? cm_f16_to_f32((cm_f16)first) : 0.0);
    }
    CHECK(n_builds >= 1);
    CHECK(!cm_attention_convert_f16(CM_ATT_BUILD_COUNT, f, h, 16));
    fprintf(stderr, "  decode attention runs build %d here\n", cm_attention_build());
    free(h);
    free(f);
}

typedef struct shape {
    int n_head, n_head_kv, head_dim;
} shape;

#define MAX_POS 2000

/* out[h * hd + d] for the token at `pos` of sequence `seq`, in double. */
static void reference(const cm_ctx *c, int il, int seq, int pos, const float *q, double *out) {
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    double *w = malloc((size_t)(pos + 1) * sizeof *w);
    for (int h = 0; h < hp->n_head; h++) {
        const int kvh = h / group;
        double mx = -INFINITY, sum = 0;
        for (int p = 0; p <= pos; p++) {
            const cm_f16 *k = c->k_cache[il] + ((size_t)seq * c->params.n_ctx + p) * c->n_kv + (size_t)kvh * hd;
            double s = 0;
            for (int d = 0; d < hd; d++) s += (double)q[(size_t)h * hd + d] * cm_f16_to_f32(k[d]);
            w[p] = s / sqrt((double)hd);
            mx = w[p] > mx ? w[p] : mx;
        }
        for (int p = 0; p <= pos; p++) sum += w[p] = exp(w[p] - mx);
        for (int d = 0; d < hd; d++) {
            double o = 0;
            for (int p = 0; p <= pos; p++) {
                const cm_f16 *v = c->v_cache[il] + ((size_t)seq * c->params.n_ctx + p) * c->n_kv + (size_t)kvh * hd;
                o += w[p] * cm_f16_to_f32(v[d]);
            }
            out[(size_t)h * hd + d] = o / sum;
        }
    }
    free(w);
}

/* Random K/V at positions 0..pos-1 of seq, and random q, k, v of the new
 * token (prepare_head rotates and stores them). q_scale sets how peaked the
 * softmax is. */
static void fill(cm_ctx *c, cm_rng *rng, int seq, int pos, int t, float q_scale) {
    for (int il = 0; il < c->n_layer_stage; il++)
        for (int p = 0; p < pos; p++)
            for (int i = 0; i < c->n_kv; i++) {
                const size_t at = ((size_t)seq * c->params.n_ctx + p) * c->n_kv + i;
                c->k_cache[il][at] = cm_f32_to_f16(cm_rng_normal(rng));
                c->v_cache[il][at] = cm_f32_to_f16(cm_rng_normal(rng));
            }
    for (int i = 0; i < c->n_q; i++) c->q[(size_t)t * c->n_q + i] = cm_rng_normal(rng) * q_scale;
    for (int i = 0; i < c->n_kv; i++) {
        c->k[(size_t)t * c->n_kv + i] = cm_rng_normal(rng);
        c->v[(size_t)t * c->n_kv + i] = cm_rng_normal(rng);
    }
}

/* Largest |engine - reference| over entry t's heads. */
static double max_err(const cm_ctx *c, int t, const double *ref) {
    double e = 0;
    for (int i = 0; i < c->n_q; i++) {
        const double d = fabs((double)c->att[(size_t)t * c->n_q + i] - ref[i]);
        e = d > e || isnan(d) ? d : e;
    }
    return e;
}

static void check_shape(shape s, int n_threads, int build) {
    cm_synth_params p;
    cm_synth_defaults(&p);
    p.arch = "llama";
    p.type = CM_TYPE_Q8_0;
    p.n_threads = 2;
    p.n_head = s.n_head;
    p.n_head_kv = s.n_head_kv;
    p.n_embd = s.n_head * s.head_dim;
    p.n_ff = 64;
    p.n_layer = 1;
    p.n_vocab = 300;
    char path[512];
    snprintf(path, sizeof path, "%s/test_attention_%d_%d_%d_%d.gguf", test_tmpdir(), (int)getpid(), s.n_head,
             s.n_head_kv, s.head_dim);
    CHECK_OK(cm_synth_write(&p, path));
    cm_model *m = NULL;
    CHECK_OK(cm_model_load(path, NULL, &m));
    unlink(path);
    if (!m) return;
    CHECK(m->hp.head_dim == s.head_dim && m->hp.n_head == s.n_head && m->hp.n_head_kv == s.n_head_kv);
    cm_ctx_params cp = {.n_ctx = MAX_POS + 1, .n_seq_max = 2, .n_batch_max = 2, .n_threads = n_threads};
    cm_ctx *c = NULL;
    CHECK_OK(cm_ctx_create(m, &cp, &c));
    if (!c) {
        cm_model_destroy(m);
        return;
    }
    cm_rng rng;
    cm_rng_init(&rng, 7);
    double *ref = malloc((size_t)c->n_q * sizeof *ref), *ref2 = malloc((size_t)c->n_q * sizeof *ref2);
    float *q_rot = malloc((size_t)2 * c->n_q * sizeof *q_rot);
    /* positions around tile edges (multiples of 32 and 64), odd tile ends,
     * a split where one thread gets nothing, and long runs */
    static const int positions[] = {0, 1, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 511, 777, 1999};
    static const float q_scales[] = {1.0f, 6.0f};
    double worst = 0;
    for (size_t pi = 0; pi < sizeof positions / sizeof *positions; pi++)
        for (size_t qs = 0; qs < 2; qs++) {
            const int pos = positions[pi];
            int32_t bp = pos, bs = 1;
            cm_batch b = {.n_tokens = 1, .pos = &bp, .seq_id = &bs};
            fill(c, &rng, 1, pos, 0, q_scales[qs]);
            cm_rope_angles(&m->hp, m->rope_freq, pos, c->rope_cs);
            cm_attention(c, 0, &b);
            reference(c, 0, 1, pos, c->q, ref); /* c->q and the cache as the engine left them */
            const double e = max_err(c, 0, ref);
            worst = e > worst ? e : worst;
            CHECK_MSG(e <= 2e-5, "build %d: %d/%d heads x %d, %d threads, pos %d, q x%g: max error %g", build,
                      s.n_head, s.n_head_kv, s.head_dim, n_threads, pos, (double)q_scales[qs], e);
        }
    /* two sequences in one batch: per-KV-head decode instead of the split */
    {
        const int pos0 = 1500, pos1 = 333;
        int32_t bp[2] = {pos0, pos1}, bs[2] = {0, 1};
        cm_batch b = {.n_tokens = 2, .pos = bp, .seq_id = bs};
        fill(c, &rng, 0, pos0, 0, 3.0f);
        fill(c, &rng, 1, pos1, 1, 3.0f);
        cm_rope_angles(&m->hp, m->rope_freq, pos0, c->rope_cs);
        cm_rope_angles(&m->hp, m->rope_freq, pos1, c->rope_cs + m->hp.rope_dim);
        cm_attention(c, 0, &b);
        memcpy(q_rot, c->q, (size_t)2 * c->n_q * sizeof *q_rot);
        reference(c, 0, 0, pos0, q_rot, ref);
        reference(c, 0, 1, pos1, q_rot + c->n_q, ref2);
        const double e0 = max_err(c, 0, ref), e1 = max_err(c, 1, ref2);
        worst = e0 > worst ? e0 : worst;
        worst = e1 > worst ? e1 : worst;
        CHECK_MSG(e0 <= 2e-5 && e1 <= 2e-5, "build %d: %d/%d heads x %d, batch of two: max errors %g %g", build,
                  s.n_head, s.n_head_kv, s.head_dim, e0, e1);
    }
    fprintf(stderr, "  build %d: %2d/%d heads x %3d, %d thread(s): worst |engine - reference| %.1e\n", build, s.n_head,
            s.n_head_kv, s.head_dim, n_threads, worst);
    free(ref);
    free(ref2);
    free(q_rot);
    cm_ctx_destroy(c);
    cm_model_destroy(m);
}

TEST(decode_long_context) {
    static const shape shapes[] = {
        {16, 2, 64}, /* eight query heads per KV head: the AVX-512 kernel */
        {16, 1, 32}, /* sixteen: two chunks of eight */
        {8, 2, 48},  /* four, head_dim no multiple of 32: generic path */
        {4, 4, 16},  /* one */
    };
    /* every build this CPU runs, the widest last (what it is left with) */
    for (int b = 0; b < CM_ATT_BUILD_COUNT; b++) {
        float f[16];
        const cm_f16 h[16] = {0};
        if (!cm_attention_convert_f16(b, f, h, 16)) continue;
        cm_attention_set_build(b);
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            for (int nt = 1; nt <= 2; nt++) check_shape(shapes[i], nt, b);
    }
    cm_attention_set_build(-1);
}

int main(void) {
    cm_kernels_init(false);
    RUN(f16_convert_all_halves);
    RUN(decode_long_context);
    return test_summary();
}
