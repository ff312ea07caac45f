/* attention.c - the attention half of a layer after the Q, K, V matmuls:
 * biases, q/k norms, RoPE, the K/V store into the f16 cache, then causal
 * grouped-query attention over the cache in tiles with an online softmax.
 * Both run in one pool job with a barrier between them (one pool run per
 * layer instead of two; the store must be complete before any entry of the
 * batch reads the cache).
 *
 * Preparation is split over (entry, head) items, so a single decoded token
 * keeps every thread busy too: a query head is biased, normed and rotated in
 * place in c->q; a KV head additionally goes to its cache slot as f16.
 *
 * For entry t (sequence s, position p) and query head h (KV head
 * h / (n_head / n_head_kv)), the scores against positions 0..p of s are
 * visited CM_ATT_TILE at a time. A running maximum m, running sum l and
 * running output o are kept; each tile rescales them by exp(m_old - m_new),
 * so the result equals softmax(scores) V without ever holding more than one
 * tile of scores: no n_ctx x n_ctx (or even n_ctx) buffer exists. The K and V
 * rows of the batch itself were written to the cache before this runs, so
 * entries of one sequence in one batch see each other causally.
 *
 * Work items (entry, KV head) are split evenly over the pool's threads: the
 * query heads that share a KV head are done together, so each tile of K and
 * V is converted from f16 once for all of them. Each thread uses its own
 * slice of c->att_scratch (two f32 tiles and the group's running state).
 * The tile loops (scores, exponentials, P.V) are plain C over GCC vector
 * types, 16 floats wide where head_dim allows, with a scalar path for any
 * other head_dim. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/model_internal.h"

/* On x86 the tile loops are also built for AVX2 and AVX-512 and the widest
 * the CPU has is picked at load time (the portable build otherwise stays at
 * SSE2 width). No intrinsics: the arch folders keep those. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ATT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ATT_CLONES
#endif

/* 16 floats; V16 reads or writes one at any float address (vector types
 * alias their element type). Kept out of function signatures: passing a
 * 64-byte vector by value has a different ABI with and without AVX-512. */
typedef float v16f __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
#define V16(p) (*(v16u *)(p))

/* Sum of the 16 lanes of a v16f, pairwise: in registers by halving
 * shuffles where the compiler has them, else through memory. */
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define ATT_HAVE_SHUFFLE 1
#endif
#endif
#ifdef ATT_HAVE_SHUFFLE
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
#define HSUM16(out, a)                                                                                         \
    do {                                                                                                       \
        v8f h8_ = __builtin_shufflevector((a), (a), 0, 1, 2, 3, 4, 5, 6, 7) +                                  \
                  __builtin_shufflevector((a), (a), 8, 9, 10, 11, 12, 13, 14, 15);                             \
        v4f h4_ = __builtin_shufflevector(h8_, h8_, 0, 1, 2, 3) + __builtin_shufflevector(h8_, h8_, 4, 5, 6, 7); \
        (out) = (h4_[0] + h4_[2]) + (h4_[1] + h4_[3]);                                                         \
    } while (0)
#else
#define HSUM16(out, a)                                                                     \
    do {                                                                                   \
        float h_[16];                                                                      \
        memcpy(h_, &(a), sizeof h_);                                                       \
        for (int k_ = 0; k_ < 8; k_++) h_[k_] += h_[k_ + 8];                               \
        (out) = ((h_[0] + h_[4]) + (h_[1] + h_[5])) + ((h_[2] + h_[6]) + (h_[3] + h_[7])); \
    } while (0)
#endif

/* s[i] = dot(row i of k, q) for i < n; rows are hd floats apart. */
ATT_CLONES static void tile_scores(float *restrict s, const float *restrict k, const float *restrict q, int n,
                                   int hd) {
    if (hd % 16 == 0) {
        for (int i = 0; i < n; i++) {
            const float *kr = k + (size_t)i * hd;
            v16f a = {0}, b = {0};
            int d = 0;
            for (; d + 32 <= hd; d += 32) {
                a += V16(kr + d) * V16(q + d);
                b += V16(kr + d + 16) * V16(q + d + 16);
            }
            if (d < hd) a += V16(kr + d) * V16(q + d);
            a += b;
            HSUM16(s[i], a);
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        const float *kr = k + (size_t)i * hd;
        float a = 0.0f;
        for (int d = 0; d < hd; d++) a += kr[d] * q[d];
        s[i] = a;
    }
}

/* exp(x) for x <= 0 (scores minus their running maximum), without a libm
 * call so the loop vectorizes: x = n ln2 + r with |r| <= ln2/2, e^r by its
 * degree-6 Taylor polynomial (relative error below 2e-7), 2^n built in the
 * exponent bits. Below -87 the result is clamped at about 1e-38 instead of
 * going to 0: such a weight is 1e-38 of the largest one and changes no sum. */
static inline float exp_nonpos(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504f + shift) - shift;
    float r = x - n * 0.693145752f - n * 1.42860677e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    union {
        int32_t i;
        float f;
    } e = {.i = ((int32_t)n + 127) << 23};
    return p * e.f;
}

/* w[i] = exp(s[i] - m) in place; returns their sum. */
ATT_CLONES static float tile_exp(float *restrict s, int n, float m) {
    for (int i = 0; i < n; i++) s[i] = exp_nonpos(s[i] - m);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += s[i];
    return sum;
}

/* acc = acc * corr + sum_i w[i] v_i over the tile's n rows (hd floats
 * apart). With hd a multiple of 64 each 64-float stripe of acc stays in
 * four vector registers over all n rows. */
ATT_CLONES static void tile_pv(float *restrict acc, float corr, const float *restrict w, const float *restrict v,
                               int n, int hd) {
    if (hd % 64 == 0) {
        for (int d = 0; d < hd; d += 64) {
            v16f a0 = V16(acc + d) * corr, a1 = V16(acc + d + 16) * corr;
            v16f a2 = V16(acc + d + 32) * corr, a3 = V16(acc + d + 48) * corr;
            for (int i = 0; i < n; i++) {
                const float *vr = v + (size_t)i * hd + d;
                a0 += w[i] * V16(vr), a1 += w[i] * V16(vr + 16);
                a2 += w[i] * V16(vr + 32), a3 += w[i] * V16(vr + 48);
            }
            V16(acc + d) = a0, V16(acc + d + 16) = a1, V16(acc + d + 32) = a2, V16(acc + d + 48) = a3;
        }
        return;
    }
    if (hd % 16 == 0) {
        for (int d = 0; d < hd; d += 16) {
            v16f a = V16(acc + d) * corr;
            for (int i = 0; i < n; i++) a += w[i] * V16(v + (size_t)i * hd + d);
            V16(acc + d) = a;
        }
        return;
    }
    for (int d = 0; d < hd; d++) acc[d] *= corr;
    for (int i = 0; i < n; i++)
        for (int d = 0; d < hd; d++) acc[d] += w[i] * v[(size_t)i * hd + d];
}

typedef struct att_job {
    cm_ctx *c;
    int il;
    const cm_batch *batch;
} att_job;

/* Biases, q/k norms and RoPE of one head of entry t; a KV head (h >=
 * n_head) also goes to the cache. */
static void prepare_head(cm_ctx *c, const cm_layer *L, int il, const cm_batch *b, int t, int h) {
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim;
    const float *cs = c->rope_cs + (size_t)t * hp->rope_dim;
    if (h < hp->n_head) {
        float *q = c->q + (size_t)t * c->n_q + (size_t)h * hd;
        if (L->bq)
            for (int i = 0; i < hd; i++) q[i] += L->bq[(size_t)h * hd + i];
        if (L->q_norm) cm_rmsnorm(q, q, L->q_norm, hd, hp->norm_eps);
        cm_rope_apply(hp, cs, q);
        return;
    }
    const size_t off = (size_t)(h - hp->n_head) * hd;
    float *k = c->k + (size_t)t * c->n_kv + off, *v = c->v + (size_t)t * c->n_kv + off;
    if (L->bk)
        for (int i = 0; i < hd; i++) k[i] += L->bk[off + i];
    if (L->bv)
        for (int i = 0; i < hd; i++) v[i] += L->bv[off + i];
    if (L->k_norm) cm_rmsnorm(k, k, L->k_norm, hd, hp->norm_eps);
    cm_rope_apply(hp, cs, k);
    size_t slot = ((size_t)b->seq_id[t] * (size_t)c->params.n_ctx + (size_t)b->pos[t]) * (size_t)c->n_kv + off;
    cm_f16 *kd = c->k_cache[il] + slot, *vd = c->v_cache[il] + slot;
    for (int i = 0; i < hd; i++) {
        kd[i] = cm_f32_to_f16(k[i]);
        vd[i] = cm_f32_to_f16(v[i]);
    }
}

static void att_worker(void *arg, int ith, int nth) {
    const att_job *j = arg;
    cm_ctx *c = j->c;
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, n_head_kv = hp->n_head_kv, group = hp->n_head / hp->n_head_kv;
    const int n_kv = c->n_kv, n_q = c->n_q;
    const float scale = 1.0f / sqrtf((float)hd);
    const cm_to_float_fn f16_to_f32 = cm_type_traits_get(CM_TYPE_F16)->to_float;

    long b, e;
    const int n_heads_all = hp->n_head + n_head_kv;
    cm_split_range((long)j->batch->n_tokens * n_heads_all, ith, nth, &b, &e);
    const cm_layer *L = &c->model->layers[j->il];
    for (long it = b; it < e; it++) prepare_head(c, L, j->il, j->batch, (int)(it / n_heads_all), (int)(it % n_heads_all));
    if (nth > 1) cm_pool_barrier(c->pool); /* every K/V row of the batch is in the cache */

    /* per-thread: K and V tiles in f32, then per query head of the group its
     * scores, running output, query, running max and sum */
    float *kt = c->att_scratch + (size_t)ith * (size_t)c->att_scratch_stride;
    float *vt = kt + (size_t)CM_ATT_TILE * hd;
    float *scores = vt + (size_t)CM_ATT_TILE * hd; /* group x TILE */
    float *acc = scores + (size_t)group * CM_ATT_TILE; /* group x hd */
    float *qv = acc + (size_t)group * hd;               /* group x hd */
    float *mx = qv + (size_t)group * hd;                /* group */
    float *sum = mx + group;                            /* group */
    const cm_f16 *kc = c->k_cache[j->il], *vc = c->v_cache[j->il];

    cm_split_range((long)j->batch->n_tokens * n_head_kv, ith, nth, &b, &e);
    for (long it = b; it < e; it++) {
        int t = (int)(it / n_head_kv), kvh = (int)(it % n_head_kv);
        int pos = j->batch->pos[t], seq = j->batch->seq_id[t];
        for (int g = 0; g < group; g++) {
            const float *q = c->q + (size_t)t * n_q + (size_t)(kvh * group + g) * hd;
            for (int d = 0; d < hd; d++) qv[g * hd + d] = q[d] * scale;
            mx[g] = -INFINITY;
            sum[g] = 0.0f;
        }
        memset(acc, 0, (size_t)group * hd * sizeof *acc);
        size_t base = (size_t)seq * (size_t)c->params.n_ctx;
        for (int p0 = 0; p0 <= pos; p0 += CM_ATT_TILE) {
            int n = pos + 1 - p0 < CM_ATT_TILE ? pos + 1 - p0 : CM_ATT_TILE;
            /* one conversion of the tile serves every query head of the group */
            for (int i = 0; i < n; i++) {
                size_t off = (base + (size_t)(p0 + i)) * (size_t)n_kv + (size_t)kvh * hd;
                f16_to_f32(kc + off, kt + (size_t)i * hd, hd);
                f16_to_f32(vc + off, vt + (size_t)i * hd, hd);
            }
            for (int g = 0; g < group; g++) {
                float *sg = scores + (size_t)g * CM_ATT_TILE;
                tile_scores(sg, kt, qv + (size_t)g * hd, n, hd);
                float tmax = -INFINITY;
                for (int i = 0; i < n; i++) tmax = sg[i] > tmax ? sg[i] : tmax;
                float m_new = tmax > mx[g] ? tmax : mx[g];
                float corr = expf(mx[g] - m_new); /* 0 on the first tile: the max was -inf */
                sum[g] = sum[g] * corr + tile_exp(sg, n, m_new);
                tile_pv(acc + (size_t)g * hd, corr, sg, vt, n, hd);
                mx[g] = m_new;
            }
        }
        for (int g = 0; g < group; g++) {
            float *o = c->att + (size_t)t * n_q + (size_t)(kvh * group + g) * hd;
            float inv = 1.0f / sum[g];
            for (int d = 0; d < hd; d++) o[d] = acc[(size_t)g * hd + d] * inv;
        }
    }
}

/* Floats of per-thread scratch att_worker needs. */
size_t cm_attention_scratch_floats(const cm_hparams *hp) {
    size_t hd = (size_t)hp->head_dim, group = (size_t)(hp->n_head / hp->n_head_kv);
    return 2 * CM_ATT_TILE * hd + group * CM_ATT_TILE + 2 * group * hd + 2 * group + 16;
}

void cm_attention(cm_ctx *c, int il, const cm_batch *batch) {
    att_job j = {c, il, batch};
    cm_pool_run(c->pool, att_worker, &j);
}
