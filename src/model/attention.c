/* attention.c - causal grouped-query attention over the f16 KV cache, in
 * tiles with an online softmax.
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
 * slice of c->att_scratch (two f32 tiles and the group's running state). */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/model_internal.h"

/* y += a x, the inner step of softmax(scores) V. A plain loop the compiler
 * vectorizes; on x86 it is also built for AVX2 and AVX-512 and the widest
 * the CPU has is picked at load time (the portable build otherwise stays at
 * SSE2 width). No intrinsics: the arch folders keep those. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ATT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ATT_CLONES
#endif
ATT_CLONES static void axpy(float *restrict y, float a, const float *restrict x, int n) {
    for (int d = 0; d < n; d++) y[d] += a * x[d];
}

typedef struct att_job {
    cm_ctx *c;
    int il;
    const cm_batch *batch;
} att_job;

static void att_worker(void *arg, int ith, int nth) {
    const att_job *j = arg;
    cm_ctx *c = j->c;
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, n_head_kv = hp->n_head_kv, group = hp->n_head / hp->n_head_kv;
    const int n_kv = c->n_kv, n_q = c->n_q;
    const float scale = 1.0f / sqrtf((float)hd);
    const cm_to_float_fn f16_to_f32 = cm_type_traits_get(CM_TYPE_F16)->to_float;
    /* the SIMD f32 dot: a plain summation loop is not vectorized by the
     * compiler (it may not reorder float additions), and scores are the
     * largest part of attention at long context */
    const cm_vec_dot_fn dot_f32 = cm_type_traits_get(CM_TYPE_F32)->vec_dot;
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

    long b, e;
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
                const float *qg = qv + (size_t)g * hd;
                float *sg = scores + (size_t)g * CM_ATT_TILE, *ag = acc + (size_t)g * hd;
                float tmax = -INFINITY;
                for (int i = 0; i < n; i++) {
                    float s;
                    dot_f32(hd, &s, kt + (size_t)i * hd, qg);
                    sg[i] = s;
                    tmax = s > tmax ? s : tmax;
                }
                float m_new = tmax > mx[g] ? tmax : mx[g];
                float corr = expf(mx[g] - m_new); /* 0 on the first tile: the max was -inf */
                sum[g] *= corr;
                for (int d = 0; d < hd; d++) ag[d] *= corr;
                for (int i = 0; i < n; i++) {
                    float w = expf(sg[i] - m_new);
                    sum[g] += w;
                    axpy(ag, w, vt + (size_t)i * hd, hd);
                }
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
