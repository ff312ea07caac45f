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
 * each with every build of the kernel this CPU runs. All of it again over a
 * q8_0 cache (random bytes and scales; the reference reads d * q), whose
 * shapes with head_dim % 32 != 0 must be refused at context creation. */
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

/* Element i of position p of sequence seq in layer il's K (v = 0) or V
 * cache, as the engine's cache holds it (f16, or q8_0 blocks: d * q). */
static float kv_val(const cm_ctx *c, int il, int v, int seq, int p, int i) {
    const size_t at = ((size_t)seq * c->params.n_ctx + p) * c->n_kv + (size_t)i;
    if (c->params.kv_type == CM_KV_Q8_0) {
        const cm_block_q8_0 *b = (v ? c->v_q8 : c->k_q8)[il] + at / CM_QK;
        return cm_f16_to_f32(b->d) * (float)b->qs[at % CM_QK];
    }
    return cm_f16_to_f32((v ? c->v_cache : c->k_cache)[il][at]);
}

/* out[h * hd + d] for the token at `pos` of sequence `seq`, in double. */
static void reference(const cm_ctx *c, int il, int seq, int pos, const float *q, double *out) {
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    double *w = malloc((size_t)(pos + 1) * sizeof *w);
    for (int h = 0; h < hp->n_head; h++) {
        const int kvh = h / group;
        double mx = -INFINITY, sum = 0;
        for (int p = 0; p <= pos; p++) {
            double s = 0;
            for (int d = 0; d < hd; d++) s += (double)q[(size_t)h * hd + d] * kv_val(c, il, 0, seq, p, kvh * hd + d);
            w[p] = s / sqrt((double)hd);
            mx = w[p] > mx ? w[p] : mx;
        }
        for (int p = 0; p <= pos; p++) sum += w[p] = exp(w[p] - mx);
        for (int d = 0; d < hd; d++) {
            double o = 0;
            for (int p = 0; p <= pos; p++) o += w[p] * kv_val(c, il, 1, seq, p, kvh * hd + d);
            out[(size_t)h * hd + d] = o / sum;
        }
    }
    free(w);
}

/* Random K/V at positions 0..pos-1 of seq, and random q, k, v of the new
 * token (prepare_head rotates and stores them). q_scale sets how peaked the
 * softmax is. */
static void fill(cm_ctx *c, cm_rng *rng, int seq, int pos, int t, float q_scale) {
    const bool q8 = c->params.kv_type == CM_KV_Q8_0;
    for (int il = 0; il < c->n_layer_stage; il++)
        for (int p = 0; p < pos; p++)
            for (int i = 0; i < c->n_kv; i++) {
                const size_t at = ((size_t)seq * c->params.n_ctx + p) * c->n_kv + i;
                if (!q8) {
                    c->k_cache[il][at] = cm_f32_to_f16(cm_rng_normal(rng));
                    c->v_cache[il][at] = cm_f32_to_f16(cm_rng_normal(rng));
                    continue;
                }
                /* q8_0: every byte value, with block scales that make
                 * values of about unit size */
                cm_block_q8_0 *kb = c->k_q8[il] + at / CM_QK, *vb = c->v_q8[il] + at / CM_QK;
                kb->qs[at % CM_QK] = (int8_t)(cm_rng_u64(rng) & 0xff);
                vb->qs[at % CM_QK] = (int8_t)(cm_rng_u64(rng) & 0xff);
                if (at % CM_QK == 0) {
                    kb->d = cm_f32_to_f16(0.006f + 0.01f * cm_rng_f32(rng));
                    vb->d = cm_f32_to_f16(0.006f + 0.01f * cm_rng_f32(rng));
                }
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

static void check_shape(shape s, int n_threads, int build, int kv_type) {
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
    cm_ctx_params cp = {.n_ctx = MAX_POS + 1, .n_seq_max = 2, .n_batch_max = 2, .n_threads = n_threads, .kv_type = kv_type};
    cm_ctx *c = NULL;
    if (kv_type == CM_KV_Q8_0 && s.head_dim % CM_QK) {
        /* q8_0 blocks would straddle heads: refused with a reason */
        CHECK(cm_ctx_create(m, &cp, &c) == CM_EINVAL && !c);
        cm_model_destroy(m);
        return;
    }
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
            CHECK_MSG(e <= 2e-5, "build %d, %s: %d/%d heads x %d, %d threads, pos %d, q x%g: max error %g", build,
                      cm_kv_type_name(kv_type), s.n_head, s.n_head_kv, s.head_dim, n_threads, pos,
                      (double)q_scales[qs], e);
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
        CHECK_MSG(e0 <= 2e-5 && e1 <= 2e-5, "build %d, %s: %d/%d heads x %d, batch of two: max errors %g %g", build,
                  cm_kv_type_name(kv_type), s.n_head, s.n_head_kv, s.head_dim, e0, e1);
    }
    fprintf(stderr, "  build %d, %-4s: %2d/%d heads x %3d, %d thread(s): worst |engine - reference| %.1e\n", build,
            cm_kv_type_name(kv_type), s.n_head, s.n_head_kv, s.head_dim, n_threads, worst);
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
        {8, 2, 64},  /* four, head_dim a multiple of 32 (q8_0 too) */
    };
    /* every build this CPU runs, the widest last (what it is left with) */
    for (int b = 0; b < CM_ATT_BUILD_COUNT; b++) {
        float f[16];
        const cm_f16 h[16] = {0};
        if (!cm_attention_convert_f16(b, f, h, 16)) continue;
        cm_attention_set_build(b);
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            for (int nt = 1; nt <= 2; nt++)
                for (int kv = CM_KV_F16; kv <= CM_KV_Q8_0; kv++) check_shape(shapes[i], nt, b, kv);
    }
    cm_attention_set_build(-1);
}

/* Logits (V floats each) of the entries of a P-token prompt fed as one
 * batch (prompt attention) into `batch`, and of the same tokens fed one at
 * a time (decode attention) into `single`. */
static void run_both_ways(cm_model *m, int kv_type, int nt, const int32_t *toks, int P, int V, float *batch,
                          float *single) {
    for (int way = 0; way < 2; way++) {
        cm_ctx_params cp = {.n_ctx = P, .n_seq_max = 1, .n_batch_max = P, .n_threads = nt, .kv_type = kv_type};
        cm_ctx *c = NULL;
        CHECK_OK(cm_ctx_create(m, &cp, &c));
        if (!c) return;
        int32_t pos[64], seq[64] = {0};
        int8_t want[64];
        for (int i = 0; i < P; i++) pos[i] = i, want[i] = 1;
        if (way == 0) {
            cm_batch b = {.n_tokens = P, .token = toks, .pos = pos, .seq_id = seq, .want_logits = want};
            CHECK_OK(cm_ctx_decode(c, &b));
            for (int i = 0; i < P; i++) memcpy(batch + (size_t)i * V, cm_ctx_logits(c, i), (size_t)V * sizeof(float));
        } else {
            for (int i = 0; i < P; i++) {
                cm_batch b = {.n_tokens = 1, .token = toks + i, .pos = pos + i, .seq_id = seq};
                CHECK_OK(cm_ctx_decode(c, &b));
                memcpy(single + (size_t)i * V, cm_ctx_logits(c, 0), (size_t)V * sizeof(float));
            }
        }
        cm_ctx_destroy(c);
    }
}

static double max_abs_diff(const float *a, const float *b, size_t n, double *max_abs) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - b[i]);
        e = d > e || isnan(d) ? d : e;
        m = fabs((double)a[i]) > m ? fabs((double)a[i]) : m;
    }
    if (max_abs) *max_abs = m;
    return e;
}

/* A whole model over a q8_0 KV cache: a 40-token prompt as one batch and
 * token by token give the same logits (both read the same quantized rows;
 * only float summation order differs), and they stay close to the f16
 * cache's logits without being equal to them (the rows really were
 * rounded to 8 bits). */
TEST(q8_0_cache_whole_model) {
    cm_synth_params p;
    cm_synth_defaults(&p);
    p.arch = "llama";
    p.type = CM_TYPE_Q8_0;
    p.n_embd = 512;
    p.n_head = 8;
    p.n_head_kv = 2;
    p.n_ff = 512;
    p.n_layer = 2;
    p.n_vocab = 300;
    char path[512];
    snprintf(path, sizeof path, "%s/test_attention_q8kv_%d.gguf", test_tmpdir(), (int)getpid());
    CHECK_OK(cm_synth_write(&p, path));
    cm_model *m = NULL;
    CHECK_OK(cm_model_load(path, NULL, &m));
    unlink(path);
    if (!m) return;
    enum { P = 40 };
    const int V = p.n_vocab;
    int32_t toks[P];
    for (int i = 0; i < P; i++) toks[i] = (i * 37 + 11) % V;
    float *fb = malloc((size_t)4 * P * V * sizeof *fb);
    float *fs = fb + (size_t)P * V, *qb = fs + (size_t)P * V, *qs = qb + (size_t)P * V;
    for (int nt = 1; nt <= 2; nt++) {
        run_both_ways(m, CM_KV_F16, nt, toks, P, V, fb, fs);
        run_both_ways(m, CM_KV_Q8_0, nt, toks, P, V, qb, qs);
        double range;
        const double e_f16 = max_abs_diff(fb, fs, (size_t)P * V, &range);
        const double e_q8 = max_abs_diff(qb, qs, (size_t)P * V, NULL);
        const double e_types = max_abs_diff(fb, qb, (size_t)P * V, NULL);
        fprintf(stderr, "  %d thread(s): largest |logit| %.2f; batch vs one by one: f16 %.1e, q8_0 %.1e; q8_0 vs f16 %.1e\n",
                nt, range, e_f16, e_q8, e_types);
        CHECK_MSG(e_q8 <= 1e-3 * range, "q8_0 cache: batch and one-by-one logits differ by %g", e_q8);
        CHECK_MSG(e_types > 0 && e_types <= 0.05 * range, "q8_0 vs f16 cache: logits differ by %g (largest %g)",
                  e_types, range);
    }
    free(fb);
    cm_model_destroy(m);
}

int main(void) {
    cm_kernels_init(false);
    RUN(f16_convert_all_halves);
    RUN(decode_long_context);
    RUN(q8_0_cache_whole_model);
    return test_summary();
}
