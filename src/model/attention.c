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
 * other head_dim. Prompt tiles are converted from f16 16 halves at a time
 * with integer vector ops (exact, no lookup, no per-row function pointer);
 * decode tiles as described below.
 *
 * A lone entry (decode: one new token of a sequence) takes a different
 * path, att_decode: with a single query row per head the K transpose of the
 * prompt path would cost more than the scores themselves, so there the
 * query heads of a group are the vector lanes (eight per chunk, padded with
 * zero queries): K stays row-major, and the max, exp and sum of the online
 * softmax are lane-wise with no horizontal reductions. A batch of exactly
 * one token (one sequence decoding) instead splits its positions over the
 * threads, each taking every KV head of its stretch, and the threads' partial
 * (max, sum, output) states are merged after a barrier.
 *
 * Decode tiles (ATT_DTILE positions of one KV head) go through one kernel,
 * dec_tile_body, built separately for x86-64-v4, x86-64-v3 and everything
 * else and picked per call from the CPU (dec_tile_pick): at long context
 * decode streams the whole cache once per token, so the f16 load is the
 * hot spot, and on v3/v4 it is F16C's vcvtph2ps (exact, like every f16 to
 * f32 conversion) instead of the integer sequence. The v4 build goes
 * further (chunk_avx512): V is converted in registers as P.V consumes it
 * (only K is staged, for its broadcasts), the scores use all sixteen lanes
 * (two d per head, halves added at the end), and each tile prefetches the
 * rows of the tile that follows it. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/attention.h"
#include "model/model_internal.h"

/* On x86 the tile loops are also built for AVX2 and AVX-512 and the widest
 * the CPU has is picked at load time (the portable build otherwise stays at
 * SSE2 width). The loops are GCC vector types, not intrinsics; the one
 * exception is the decode kernel's f16 conversion on x86-64-v3/v4, which
 * calls GCC's vcvtph2ps builtins (see dec_tile_body) because that
 * conversion must inline into this file's per-target builds. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* fp-contract=fast lets a * b + c become one FMA where the target has it
 * (the project builds as ISO C, which turns contraction off): half the
 * instructions of the score and P.V loops, and a rounding fewer. */
#define ATT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define ATT_CLONES
#endif

/* Every untargeted helper the per-target functions call (the clones above,
 * the decode builds below) is always inlined: called out of line it would be
 * compiled once, for the baseline target (SSE2), and run at a quarter of the
 * caller's width (prompt P.V once fell from AVX-512 to SSE2 that way). */
#if defined(__GNUC__)
#define ATT_INLINE __attribute__((always_inline)) static inline
#else
#define ATT_INLINE static inline
#endif

/* 16 floats; V16 reads or writes one at any float address (vector types
 * alias their element type). Kept out of function signatures: passing a
 * 64-byte vector by value has a different ABI with and without AVX-512. */
typedef float v16f __attribute__((vector_size(64)));

/* Prompt entries of one sequence handled together against each K/V tile. */
#define ATT_QB 16
typedef float v16u __attribute__((vector_size(64), aligned(4)));
#define V16(p) (*(v16u *)(p))

/* Eight-lane vectors for the decode path, where the lanes are the query
 * heads of one KV group rather than positions. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8s __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
#define V8(p) (*(v8u *)(p))
#define ATT_LANES 8
#ifndef ATT_DTILE
#define ATT_DTILE 32
#endif

/* f16 -> f32 on whole vectors: 16 halves at any 2-byte address. */
typedef uint32_t v16i __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32), aligned(2)));

/* dst[0..15] = src[0..15] as floats, exact for every half (subnormals,
 * infinities, NaN) and branch-free so it stays in vector registers: the
 * half's exponent and mantissa, moved to the float's positions, read as a
 * float 2^112 too small (a half subnormal lands on a float subnormal), so
 * one exact multiply rebiases normals and subnormals alike; inf/NaN only
 * need the exponent filled in (the multiply relies on subnormal inputs not
 * being flushed to zero: the project never sets DAZ). Written through a pointer: a 64-byte vector
 * return value would change ABI between the clones. */
ATT_INLINE void f16x16_to_f32(float *dst, const cm_f16 *src) {
    const v16i h = __builtin_convertvector(*(const v16h *)src, v16i);
    const v16f f = (v16f)((h & 0x7fffu) << 13) * 0x1p112f;
    const v16i special = (v16i)((h & 0x7c00u) == 0x7c00u);
    V16(dst) = (v16f)((v16i)f | (special & 0x7f800000u) | ((h & 0x8000u) << 16));
}

typedef int8_t v16c __attribute__((vector_size(16), aligned(1)));

/* dst[0 .. 32 * nb) = the nb q8_0 blocks at src as floats: d * q, as the
 * q8_0 dequantizer computes it (exact products, no sums). */
ATT_INLINE void q8_row_to_f32(float *dst, const cm_block_q8_0 *src, int nb) {
    for (int b = 0; b < nb; b++) {
        const float d = cm_f16_to_f32(src[b].d);
        V16(dst + 32 * b) = __builtin_convertvector(*(const v16c *)src[b].qs, v16f) * d;
        V16(dst + 32 * b + 16) = __builtin_convertvector(*(const v16c *)(src[b].qs + 16), v16f) * d;
    }
}

/* Where a tile's K and V rows are: f16 rows at k and v, or (k8 non-NULL)
 * q8_0 rows at k8 and v8; consecutive positions `stride` elements apart
 * (stride / 32 blocks for q8_0). */
typedef struct kv_rows {
    const cm_f16 *k, *v;
    const cm_block_q8_0 *k8, *v8;
} kv_rows;

/* The rows of positions starting at element offset `off` of layer il's cache. */
static kv_rows kv_at(const cm_ctx *c, int il, size_t off) {
    if (c->params.kv_type == CM_KV_Q8_0)
        return (kv_rows){NULL, NULL, c->k_q8[il] + off / CM_QK, c->v_q8[il] + off / CM_QK};
    return (kv_rows){c->k_cache[il] + off, c->v_cache[il] + off, NULL, NULL};
}

/* Rows 0..n-1 of a prompt K/V tile (row i `stride` elements after the
 * first) into f32: V row-major (n x hd), K transposed (kdst[d * TILE + i]).
 * (The decode tiles load in dec_tile_body.) */
ATT_CLONES static void tile_load(float *restrict kdst, float *restrict vdst, kv_rows src, size_t stride, int n, int hd) {
    if (src.k8) {
        for (int i = 0; i < n; i++) {
            const size_t bo = (size_t)i * (stride / CM_QK);
            for (int b = 0; b < hd / CM_QK; b++) {
                float tmp[CM_QK];
                q8_row_to_f32(tmp, src.k8 + bo + b, 1);
                for (int j = 0; j < CM_QK; j++) kdst[(size_t)(CM_QK * b + j) * CM_ATT_TILE + i] = tmp[j];
            }
            q8_row_to_f32(vdst + (size_t)i * hd, src.v8 + bo, hd / CM_QK);
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        const cm_f16 *kr = src.k + (size_t)i * stride, *vr = src.v + (size_t)i * stride;
        float *vd = vdst + (size_t)i * hd;
        int d = 0;
        for (; d + 16 <= hd; d += 16) {
            float tmp[16];
            f16x16_to_f32(tmp, kr + d);
            for (int j = 0; j < 16; j++) kdst[(size_t)(d + j) * CM_ATT_TILE + i] = tmp[j];
            f16x16_to_f32(vd + d, vr + d);
        }
        for (; d < hd; d++) {
            kdst[(size_t)d * CM_ATT_TILE + i] = cm_f16_to_f32(kr[d]);
            vd[d] = cm_f16_to_f32(vr[d]);
        }
    }
}

/* s[i] = dot(column i of kT, q) for i < n, where kT is the tile's K
 * transposed (kT[d * CM_ATT_TILE + i] = K[i][d]): vectorized over the
 * positions, so no horizontal sums. Whole 64-position stripes are computed
 * (kT and s have CM_ATT_TILE room, a multiple of 64); lanes at or past n
 * hold values that nobody reads. */
ATT_CLONES static void tile_scores(float *restrict s, const float *restrict kT, const float *restrict q, int n,
                                   int hd) {
    if (n > 64 && CM_ATT_TILE == 128) {
        /* the whole tile at once: eight independent sums hide the FMA latency */
        v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
        for (int d = 0; d < hd; d++) {
            const float *kr = kT + (size_t)d * CM_ATT_TILE;
            const float qd = q[d];
            a0 += qd * V16(kr), a1 += qd * V16(kr + 16), a2 += qd * V16(kr + 32), a3 += qd * V16(kr + 48);
            a4 += qd * V16(kr + 64), a5 += qd * V16(kr + 80), a6 += qd * V16(kr + 96), a7 += qd * V16(kr + 112);
        }
        V16(s) = a0, V16(s + 16) = a1, V16(s + 32) = a2, V16(s + 48) = a3;
        V16(s + 64) = a4, V16(s + 80) = a5, V16(s + 96) = a6, V16(s + 112) = a7;
        return;
    }
    for (int i0 = 0; i0 < n; i0 += 64) {
        v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int d = 0; d < hd; d++) {
            const float *kr = kT + (size_t)d * CM_ATT_TILE + i0;
            const float qd = q[d];
            a0 += qd * V16(kr), a1 += qd * V16(kr + 16), a2 += qd * V16(kr + 32), a3 += qd * V16(kr + 48);
        }
        V16(s + i0) = a0, V16(s + i0 + 16) = a1, V16(s + i0 + 32) = a2, V16(s + i0 + 48) = a3;
    }
}

/* exp(x) for x <= 0 (scores minus their running maximum), without a libm
 * call so the loop vectorizes: x = n ln2 + r with |r| <= ln2/2, e^r by its
 * degree-6 Taylor polynomial (relative error below 2e-7), 2^n built in the
 * exponent bits. Below -87 the result is clamped at about 1e-38 instead of
 * going to 0: such a weight is 1e-38 of the largest one and changes no sum. */
ATT_INLINE float exp_nonpos(float x) {
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

/* acc = acc * corr + sum_i w[i * ws] v_i over the tile's n rows (hd floats
 * apart). With hd a multiple of 64 each 64-float stripe of acc stays in
 * four vector registers over all n rows. */
ATT_INLINE void pv_lane(float *restrict acc, float corr, const float *restrict w, int ws,
                           const float *restrict v, int n, int hd) {
    if (hd % 64 == 0) {
        for (int d = 0; d < hd; d += 64) {
            /* even rows into a, odd rows into b: eight independent sums */
            v16f a0 = V16(acc + d) * corr, a1 = V16(acc + d + 16) * corr;
            v16f a2 = V16(acc + d + 32) * corr, a3 = V16(acc + d + 48) * corr;
            v16f b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
            int i = 0;
            for (; i + 2 <= n; i += 2) {
                const float *vr = v + (size_t)i * hd + d, *vs = vr + hd;
                a0 += w[(size_t)i * ws] * V16(vr), a1 += w[(size_t)i * ws] * V16(vr + 16);
                a2 += w[(size_t)i * ws] * V16(vr + 32), a3 += w[(size_t)i * ws] * V16(vr + 48);
                b0 += w[(size_t)(i + 1) * ws] * V16(vs), b1 += w[(size_t)(i + 1) * ws] * V16(vs + 16);
                b2 += w[(size_t)(i + 1) * ws] * V16(vs + 32), b3 += w[(size_t)(i + 1) * ws] * V16(vs + 48);
            }
            if (i < n) {
                const float *vr = v + (size_t)i * hd + d;
                a0 += w[(size_t)i * ws] * V16(vr), a1 += w[(size_t)i * ws] * V16(vr + 16);
                a2 += w[(size_t)i * ws] * V16(vr + 32), a3 += w[(size_t)i * ws] * V16(vr + 48);
            }
            V16(acc + d) = a0 + b0, V16(acc + d + 16) = a1 + b1;
            V16(acc + d + 32) = a2 + b2, V16(acc + d + 48) = a3 + b3;
        }
        return;
    }
    if (hd % 16 == 0) {
        for (int d = 0; d < hd; d += 16) {
            v16f a = V16(acc + d) * corr;
            for (int i = 0; i < n; i++) a += w[(size_t)i * ws] * V16(v + (size_t)i * hd + d);
            V16(acc + d) = a;
        }
        return;
    }
    for (int d = 0; d < hd; d++) acc[d] *= corr;
    for (int i = 0; i < n; i++)
        for (int d = 0; d < hd; d++) acc[d] += w[(size_t)i * ws] * v[(size_t)i * hd + d];
}

ATT_CLONES static void tile_pv(float *restrict acc, float corr, const float *restrict w, int ws,
                               const float *restrict v, int n, int hd) {
    pv_lane(acc, corr, w, ws, v, n, hd);
}

/* exp_nonpos on the eight floats at px, in place (same steps, same
 * results; through a pointer for the same ABI reason as f16x16_to_f32). */
ATT_INLINE void exp_nonpos8(float *px) {
    v8f x = V8(px);
    const v8s low = (v8s)(x < -87.0f);
    x = (v8f)((low & (v8s)((v8f){0} - 87.0f)) | (~low & (v8s)x));
    const float shift = 12582912.0f;
    const v8f n = (x * 1.44269504f + shift) - shift;
    const v8f r = x - n * 0.693145752f - n * 1.42860677e-6f;
    const v8f p =
        1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    const v8s e = (__builtin_convertvector(n, v8s) + 127) << 23;
    V8(px) = p * (v8f)e;
}

/* P.V of all eight lanes of a chunk for the portable build (the form of
 * pv8_f16c below), over the staged f32 V (vt, n x hd), four columns at a
 * time: eight 4-float accumulators fit the sixteen registers of SSE2 and
 * half of NEON's, where sixteen-float ones (pv_lane) spill. Lanes past the
 * chunk's live heads are computed too. hd a multiple of 4. */
typedef float v4f __attribute__((vector_size(16)));
typedef float v4u __attribute__((vector_size(16), aligned(4)));
ATT_INLINE void pv8_staged(float *restrict acc, const float *restrict corr, const float *restrict sT,
                              const float *restrict vt, int n, int hd) {
    for (int d = 0; d < hd; d += 4) {
        v4f a[ATT_LANES];
#pragma GCC unroll 8
        for (int l = 0; l < ATT_LANES; l++) a[l] = *(const v4u *)(acc + (size_t)l * hd + d) * corr[l];
        for (int i = 0; i < n; i++) {
            const v4f x = *(const v4u *)(vt + (size_t)i * hd + d);
            const float *w = sT + (size_t)i * ATT_LANES;
#pragma GCC unroll 8
            for (int l = 0; l < ATT_LANES; l++) a[l] += w[l] * x;
        }
#pragma GCC unroll 8
        for (int l = 0; l < ATT_LANES; l++) *(v4u *)(acc + (size_t)l * hd + d) = a[l];
    }
}

/* The decode tile kernel (dec_tile_body) is built up to three times, each
 * build a plain function with its own target, picked once per
 * cm_attention call (dec_tile_pick) rather than by target_clones: its f16
 * loads differ by more than vector width. x86-64-v3 and v4 convert with
 * F16C's vcvtph2ps, one instruction per 8 or 16 halves and exact for every
 * half (subnormals included; a signalling NaN comes back quiet, still a
 * NaN); everything else uses f16x16_to_f32. The v3 and v4 builds also
 * apply V straight from the cache (pv8_f16c, pv8_avx512) instead of
 * staging it as f32, and v4 has its own chunk kernel (chunk_avx512). The
 * converters and those kernels are static inline
 * functions with their own target attribute: inlined (flatten) into the
 * build that selects them, dead code in the others. */
#define ATT_QP_MAX (256 * 8) /* the AVX-512 chunk's queries: head_dim up to 256 */
enum { DEC_PORTABLE = CM_ATT_BUILD_PORTABLE, DEC_F16C = CM_ATT_BUILD_F16C, DEC_AVX512 = CM_ATT_BUILD_AVX512 };

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ATT_X86_BUILDS 1
typedef short v8hs __attribute__((vector_size(16), aligned(2)));
typedef short v16hs __attribute__((vector_size(32), aligned(2)));
typedef int32_t v16s __attribute__((vector_size(64)));

__attribute__((target("avx,f16c"))) static inline void cvt16_f16c(float *dst, const cm_f16 *src) {
    V8(dst) = __builtin_ia32_vcvtph2ps256(*(const v8hs *)src);
    V8(dst + 8) = __builtin_ia32_vcvtph2ps256(*(const v8hs *)(src + 8));
}

/* pv8_avx512 for the F16C build, eight columns at a time: the eight
 * lanes' accumulators are eight 8-float registers (of AVX2's sixteen; the
 * sixteen-float form would spill). Lanes past the chunk's live heads are
 * computed too (their rows of acc exist and nobody reads them). hd a
 * multiple of 8. */
__attribute__((target("avx2,fma,f16c"), optimize("fp-contract=fast"))) static inline void
pv8_f16c(float *restrict acc, const float *restrict corr, const float *restrict sT, const cm_f16 *v, size_t stride,
         int n, int hd) {
    for (int d = 0; d < hd; d += 8) {
        v8f a[ATT_LANES];
#pragma GCC unroll 8
        for (int l = 0; l < ATT_LANES; l++) a[l] = V8(acc + (size_t)l * hd + d) * corr[l];
        for (int i = 0; i < n; i++) {
            const v8f x = __builtin_ia32_vcvtph2ps256(*(const v8hs *)(v + (size_t)i * stride + d));
            const float *w = sT + (size_t)i * ATT_LANES;
#pragma GCC unroll 8
            for (int l = 0; l < ATT_LANES; l++) a[l] += w[l] * x;
        }
#pragma GCC unroll 8
        for (int l = 0; l < ATT_LANES; l++) V8(acc + (size_t)l * hd + d) = a[l];
    }
}

__attribute__((target("avx512f"))) static inline void cvt16_avx512(float *dst, const cm_f16 *src) {
    V16(dst) = __builtin_ia32_vcvtph2ps512_mask(*(const v16hs *)src, (v16f){0}, 0xffff, 4 /* current rounding */);
}

/* acc[l] = acc[l] * corr[l] + sum_i sT[i * 8 + l] V_i for the eight lanes
 * l, V row i at v + i * stride (f16, converted here: no staging buffer).
 * hd a multiple of 32: 32 columns of all eight lanes are sixteen
 * accumulators that stay in registers over the tile's n rows, and each
 * weight broadcast feeds two FMAs. */
__attribute__((target("avx512f"), optimize("fp-contract=fast"))) static inline void
pv8_avx512(float *restrict acc, const float *restrict corr, const float *restrict sT, const cm_f16 *v, size_t stride,
           int n, int hd) {
    for (int d = 0; d < hd; d += 32) {
        v16f a[ATT_LANES][2];
#pragma GCC unroll 8
        for (int l = 0; l < ATT_LANES; l++) {
            a[l][0] = V16(acc + (size_t)l * hd + d) * corr[l];
            a[l][1] = V16(acc + (size_t)l * hd + d + 16) * corr[l];
        }
        for (int i = 0; i < n; i++) {
            const cm_f16 *vr = v + (size_t)i * stride + d;
            const v16f v0 = __builtin_ia32_vcvtph2ps512_mask(*(const v16hs *)vr, (v16f){0}, 0xffff, 4);
            const v16f v1 = __builtin_ia32_vcvtph2ps512_mask(*(const v16hs *)(vr + 16), (v16f){0}, 0xffff, 4);
            const float *w = sT + (size_t)i * ATT_LANES;
#pragma GCC unroll 8
            for (int l = 0; l < ATT_LANES; l++) {
                a[l][0] += w[l] * v0;
                a[l][1] += w[l] * v1;
            }
        }
#pragma GCC unroll 8
        for (int l = 0; l < ATT_LANES; l++) {
            V16(acc + (size_t)l * hd + d) = a[l][0];
            V16(acc + (size_t)l * hd + d + 16) = a[l][1];
        }
    }
}

typedef double v8d __attribute__((vector_size(64)));
typedef double f64u __attribute__((may_alias, aligned(4)));

/* exp_nonpos8 on sixteen floats (same steps, same results). */
__attribute__((target("avx512f"), optimize("fp-contract=fast"))) static inline void exp_nonpos16(float *px) {
    v16f x = V16(px);
    const v16s low = (v16s)(x < -87.0f);
    x = (v16f)((low & (v16s)((v16f){0} - 87.0f)) | (~low & (v16s)x));
    const float shift = 12582912.0f;
    const v16f n = (x * 1.44269504f + shift) - shift;
    const v16f r = x - n * 0.693145752f - n * 1.42860677e-6f;
    const v16f p =
        1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    const v16s e = (__builtin_convertvector(n, v16s) + 127) << 23;
    V16(px) = p * (v16f)e;
}

/* One full chunk (eight query heads) of a tile on AVX-512: scores, online
 * softmax update and P.V, with the K rows already in kf (n x hd floats)
 * and V read from the cache. hd a multiple of 32.
 *
 * The scores use all sixteen lanes: lane 2h + j sums q_h[d + j] K[d + j]
 * over the even d, so one 64-bit broadcast of K[d], K[d + 1] (a plain load)
 * feeds one FMA for all eight heads, and the two halves of each head are
 * added once per position at the end; half the FMAs and loads of eight
 * lanes with one broadcast each. */
__attribute__((target("avx512f"), optimize("fp-contract=fast"))) static inline void
chunk_avx512(float *restrict sT, float *restrict m8, float *restrict l8, float *restrict acc,
             const float *restrict qT, const float *restrict kf, const cm_f16 *v, size_t stride, int n, int hd) {
    float qp[ATT_QP_MAX] __attribute__((aligned(64))); /* qp[d * 8 + 2h + j] = q_h[d + j], d even */
    for (int d = 0; d < hd; d += 2)
        V16(qp + (size_t)d * 8) = __builtin_shufflevector(V16(qT + (size_t)d * 8), V16(qT + (size_t)d * 8), 0, 8, 1, 9,
                                                          2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
#define BC2(p) ((v16f)(v8d){*(const f64u *)(p), *(const f64u *)(p), *(const f64u *)(p), *(const f64u *)(p), \
                            *(const f64u *)(p), *(const f64u *)(p), *(const f64u *)(p), *(const f64u *)(p)})
#define EVEN(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
#define ODD(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const float *k0 = kf + (size_t)i * hd;
        v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
        for (int d = 0; d < hd; d += 2) {
            const v16f q = V16(qp + (size_t)d * 8);
            a0 += BC2(k0 + d) * q, a1 += BC2(k0 + hd + d) * q, a2 += BC2(k0 + 2 * hd + d) * q;
            a3 += BC2(k0 + 3 * hd + d) * q, a4 += BC2(k0 + 4 * hd + d) * q, a5 += BC2(k0 + 5 * hd + d) * q;
            a6 += BC2(k0 + 6 * hd + d) * q, a7 += BC2(k0 + 7 * hd + d) * q;
        }
        float *so = sT + (size_t)i * 8; /* rows i, i + 1 of sT per vector */
        V16(so) = EVEN(a0, a1) + ODD(a0, a1), V16(so + 16) = EVEN(a2, a3) + ODD(a2, a3);
        V16(so + 32) = EVEN(a4, a5) + ODD(a4, a5), V16(so + 48) = EVEN(a6, a7) + ODD(a6, a7);
    }
    for (; i < n; i++) {
        const float *kr = kf + (size_t)i * hd;
        v16f s = {0};
        for (int d = 0; d < hd; d += 2) s += BC2(kr + d) * V16(qp + (size_t)d * 8);
        const v16f h = EVEN(s, s) + ODD(s, s);
        V8(sT + (size_t)i * 8) = __builtin_shufflevector(h, h, 0, 1, 2, 3, 4, 5, 6, 7);
    }
#undef BC2
#undef EVEN
#undef ODD
#define VMAX(si, a, b) ((__typeof__(a))(((si)((a) > (b)) & (si)(a)) | (~(si)((a) > (b)) & (si)(b))))
    /* max, exponentials and sum two positions per vector, an odd last row
     * on its own (for n == 1 the upper half of the first vector is a stale
     * row, and is dropped) */
    v16f mx = V16(sT);
    for (i = 2; i + 2 <= n; i += 2) mx = VMAX(v16s, mx, V16(sT + (size_t)i * 8));
    v8f m_new = __builtin_shufflevector(mx, mx, 0, 1, 2, 3, 4, 5, 6, 7);
    v8f m_hi = __builtin_shufflevector(mx, mx, 8, 9, 10, 11, 12, 13, 14, 15);
    if (n == 1) m_hi = m_new;
    if (n & 1) m_new = VMAX(v8s, m_new, V8(sT + (size_t)(n - 1) * 8));
    m_new = VMAX(v8s, m_new, m_hi);
    const v8f m_old = V8(m8);
    m_new = VMAX(v8s, m_new, m_old);
#undef VMAX
    const v16f m16 = __builtin_shufflevector(m_new, m_new, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7);
    v16f sum = {0};
    for (i = 0; i + 2 <= n; i += 2) {
        float *w = sT + (size_t)i * 8;
        V16(w) = V16(w) - m16;
        exp_nonpos16(w);
        sum += V16(w);
    }
    v8f sum8 = __builtin_shufflevector(sum, sum, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(sum, sum, 8, 9, 10, 11, 12, 13, 14, 15);
    if (n & 1) {
        float *w = sT + (size_t)(n - 1) * 8;
        V8(w) = V8(w) - m_new;
        exp_nonpos8(w);
        sum8 += V8(w);
    }
    /* on the first tile m_old is -inf and corr about 1e-38 (exp_nonpos
     * clamps): it multiplies sums and outputs that are still 0 */
    float corr[8];
    V8(corr) = m_old - m_new;
    exp_nonpos8(corr);
    V8(l8) = V8(l8) * V8(corr) + sum8;
    V8(m8) = m_new;
    pv8_avx512(acc, corr, sT, v, stride, n, hd);
}
#else
#define ATT_X86_BUILDS 0
#endif

/* dst[0..15] = src[0..15] as floats with the build's converter. */
ATT_INLINE void cvt16(float *dst, const cm_f16 *src, int isa) {
#if ATT_X86_BUILDS
    if (isa == DEC_AVX512) {
        cvt16_avx512(dst, src);
        return;
    }
    if (isa == DEC_F16C) {
        cvt16_f16c(dst, src);
        return;
    }
#endif
    f16x16_to_f32(dst, src);
}

/* One tile of decode attention: n positions of one KV head against all
 * `group` query heads that share it. */
typedef struct dec_tile {
    float *kf, *vt, *sT;    /* scratch: K (n x hd), V (n x hd), weights (n x 8) */
    const float *qT;        /* chunks x hd x 8: scaled queries, lanes past group zero */
    float *mx, *sum, *acc;  /* lanes; lanes; lanes x hd: running state */
    kv_rows r;              /* the tile's first K and V row of this KV head */
    size_t stride;          /* elements from one cache row to the next */
    ptrdiff_t next;         /* elements from k to the k of the tile done next (prefetched), 0: none */
    int n, hd, group;
} dec_tile;

typedef void dec_tile_fn(const dec_tile *a);

/* The query heads of the group are the lanes, eight per chunk (padded with
 * zero queries): K stays row-major and is converted once for all of them,
 * and the max, exponentials and sums of the online softmax are lane-wise
 * vector ops with no horizontal reductions. Eight positions at a time give
 * eight independent FMA chains for the scores. */
ATT_INLINE void dec_tile_body(const dec_tile *a, int isa) {
    const int n = a->n, hd = a->hd, group = a->group;
    const int chunks = (group + ATT_LANES - 1) / ATT_LANES;
    /* the AVX-512 chunk kernel needs full chunks; V comes straight from the
     * cache there and in the F16C build's P.V, and is staged otherwise */
    const bool q8 = a->r.k8 != NULL; /* q8_0 rows: both staged as floats */
    const bool chunk512 = !q8 && isa == DEC_AVX512 && hd % 32 == 0 && hd <= ATT_QP_MAX / 8 && group % ATT_LANES == 0;
    const bool pv_f16c = !q8 && isa == DEC_F16C && hd % 8 == 0;
    const bool fused = chunk512 || pv_f16c;
    float *restrict kf = a->kf, *restrict vt = a->vt, *restrict sT = a->sT;
    for (int i = 0; q8 && i < n; i++) {
        const size_t bs = a->stride / CM_QK, nb = (size_t)hd / CM_QK;
        const cm_block_q8_0 *kr = a->r.k8 + (size_t)i * bs, *vr = a->r.v8 + (size_t)i * bs;
        if (a->next)
            for (size_t pb = 0; pb < nb * sizeof *kr; pb += 64) {
                __builtin_prefetch((const char *)(kr + a->next / CM_QK) + pb);
                __builtin_prefetch((const char *)(vr + a->next / CM_QK) + pb);
            }
        q8_row_to_f32(kf + (size_t)i * hd, kr, (int)nb);
        q8_row_to_f32(vt + (size_t)i * hd, vr, (int)nb);
    }
    for (int i = 0; !q8 && i < n; i++) {
        const cm_f16 *kr = a->r.k + (size_t)i * a->stride, *vr = a->r.v + (size_t)i * a->stride;
        float *kd = kf + (size_t)i * hd, *vd = vt + (size_t)i * hd;
        if (a->next)
            for (int pb = 0; pb < hd * (int)sizeof(cm_f16); pb += 64) {
                __builtin_prefetch((const char *)(kr + a->next) + pb);
                __builtin_prefetch((const char *)(vr + a->next) + pb);
            }
        int d = 0;
        for (; d + 16 <= hd; d += 16) {
            cvt16(kd + d, kr + d, isa);
            if (!fused) cvt16(vd + d, vr + d, isa);
        }
        for (; d < hd; d++) {
            kd[d] = cm_f16_to_f32(kr[d]);
            if (!fused) vd[d] = cm_f16_to_f32(vr[d]);
        }
    }
    for (int ck = 0; ck < chunks; ck++) {
        const int live = group - ck * ATT_LANES < ATT_LANES ? group - ck * ATT_LANES : ATT_LANES;
        const float *restrict qT = a->qT + (size_t)ck * hd * ATT_LANES;
        float *m8 = a->mx + ck * ATT_LANES, *l8 = a->sum + ck * ATT_LANES;
        float *acc = a->acc + (size_t)ck * ATT_LANES * hd;
#if ATT_X86_BUILDS
        if (chunk512) {
            chunk_avx512(sT, m8, l8, acc, qT, kf, a->r.v, a->stride, n, hd);
            continue;
        }
#endif
        int i = 0;
        for (; i + 8 <= n; i += 8) {
            const float *k0 = kf + (size_t)i * hd;
            v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
            for (int d = 0; d < hd; d++) {
                const v8f q = V8(qT + (size_t)d * 8);
                a0 += k0[d] * q, a1 += k0[hd + d] * q, a2 += k0[2 * hd + d] * q, a3 += k0[3 * hd + d] * q;
                a4 += k0[4 * hd + d] * q, a5 += k0[5 * hd + d] * q, a6 += k0[6 * hd + d] * q;
                a7 += k0[7 * hd + d] * q;
            }
            float *so = sT + (size_t)i * 8;
            V8(so) = a0, V8(so + 8) = a1, V8(so + 16) = a2, V8(so + 24) = a3;
            V8(so + 32) = a4, V8(so + 40) = a5, V8(so + 48) = a6, V8(so + 56) = a7;
        }
        for (; i < n; i++) {
            const float *kr = kf + (size_t)i * hd;
            v8f s = {0};
            for (int d = 0; d < hd; d++) s += kr[d] * V8(qT + (size_t)d * 8);
            V8(sT + (size_t)i * 8) = s;
        }
        const v8f m_old = V8(m8);
        v8f m_new = m_old;
        for (i = 0; i < n; i++) {
            const v8f x = V8(sT + (size_t)i * 8);
            const v8s gt = (v8s)(x > m_new);
            m_new = (v8f)((gt & (v8s)x) | (~gt & (v8s)m_new));
        }
        v8f sum = {0};
        for (i = 0; i < n; i++) {
            float *w = sT + (size_t)i * 8;
            V8(w) = V8(w) - m_new;
            exp_nonpos8(w);
            sum += V8(w);
        }
        float corr[8];
        for (int l = 0; l < 8; l++) corr[l] = expf(m_old[l] - m_new[l]); /* 0 on the first tile: the max was -inf */
        V8(l8) = V8(l8) * V8(corr) + sum;
        V8(m8) = m_new;
#if ATT_X86_BUILDS
        if (pv_f16c) {
            pv8_f16c(acc, corr, sT, a->r.v, a->stride, n, hd);
            continue;
        }
#endif
        if ((isa == DEC_PORTABLE || q8) && hd % 4 == 0) {
            pv8_staged(acc, corr, sT, vt, n, hd);
            continue;
        }
        for (int l = 0; l < live; l++) pv_lane(acc + (size_t)l * hd, corr[l], sT + l, 8, vt, n, hd);
    }
}

/* The kernel and the converter of each build (the converter only for
 * tests: cm_attention_convert_f16); TARGET is the build's target attribute
 * or nothing. */
#if defined(__GNUC__) && !defined(__clang__)
#define DEC_OPT optimize("fp-contract=fast"),
#else
#define DEC_OPT
#endif
#define DEC_BUILD(name, isa, TARGET)                                                               \
    TARGET __attribute__((DEC_OPT flatten)) static void name(const dec_tile *a) {                 \
        dec_tile_body(a, isa);                                                                     \
    }                                                                                              \
    TARGET __attribute__((flatten)) static void name##_convert(float *dst, const cm_f16 *src, size_t n) { \
        for (size_t i = 0; i + 16 <= n; i += 16) cvt16(dst + i, src + i, isa);                    \
    }
#if ATT_X86_BUILDS
DEC_BUILD(dec_tile_avx512, DEC_AVX512, __attribute__((target("arch=x86-64-v4"))))
DEC_BUILD(dec_tile_f16c, DEC_F16C, __attribute__((target("arch=x86-64-v3"))))
#endif
DEC_BUILD(dec_tile_portable, DEC_PORTABLE, )
#undef DEC_BUILD
#undef DEC_OPT

/* Whether the CPU runs a build (the same levels target_clones checks). */
static bool build_runs(int build) {
#if ATT_X86_BUILDS
    if (build == DEC_AVX512) return __builtin_cpu_supports("x86-64-v4");
    if (build == DEC_F16C) return __builtin_cpu_supports("x86-64-v3");
#endif
    return build == DEC_PORTABLE;
}

int cm_attention_build(void) {
    for (int b = CM_ATT_BUILD_COUNT - 1; b > 0; b--)
        if (build_runs(b)) return b;
    return DEC_PORTABLE;
}

/* cm_attention_set_build's choice; -1: the widest */
static int g_build = -1;

void cm_attention_set_build(int build) {
    g_build = build >= 0 && build < CM_ATT_BUILD_COUNT && build_runs(build) ? build : -1;
}

/* The build set for tests, or the widest this CPU runs. */
static dec_tile_fn *dec_tile_pick(void) {
#if ATT_X86_BUILDS
    switch (g_build >= 0 ? g_build : cm_attention_build()) {
    case DEC_AVX512: return dec_tile_avx512;
    case DEC_F16C: return dec_tile_f16c;
    }
#endif
    return dec_tile_portable;
}

bool cm_attention_convert_f16(int build, float *dst, const cm_f16 *src, size_t n) {
    if (build < 0 || build >= CM_ATT_BUILD_COUNT || !build_runs(build)) return false;
#if ATT_X86_BUILDS
    if (build == DEC_AVX512) dec_tile_avx512_convert(dst, src, n);
    if (build == DEC_F16C) dec_tile_f16c_convert(dst, src, n);
#endif
    if (build == DEC_PORTABLE) dec_tile_portable_convert(dst, src, n);
    return true;
}

/* Decode attention of entry t (one query row per head) for the query heads
 * of KV head kvh, in chunks of eight heads: each K/V tile is read and
 * converted once and applied to the whole group. */
static void att_decode(cm_ctx *c, int il, const cm_batch *b, int t, int kvh, float *ws, dec_tile_fn *tile) {
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv, n_kv = c->n_kv, n_q = c->n_q;
    const int lanes = (group + ATT_LANES - 1) / ATT_LANES * ATT_LANES;
    const float scale = 1.0f / sqrtf((float)hd);
    /* same scratch footprint as att_block (lanes <= 2 * group <= ATT_QB * group) */
    float *kf = ws;                                     /* TILE x hd */
    float *vt = kf + (size_t)hd * CM_ATT_TILE;          /* TILE x hd */
    float *sT = vt + (size_t)CM_ATT_TILE * hd + hd;     /* TILE x 8 */
    float *acc = sT + (size_t)ATT_QB * group * CM_ATT_TILE; /* lanes x hd */
    float *qT = acc + (size_t)ATT_QB * group * hd;      /* chunks x hd x 8 */
    float *mx = qT + (size_t)ATT_QB * group * hd;       /* lanes */
    float *sum = mx + (size_t)ATT_QB * group;           /* lanes */
    for (int l = 0; l < lanes; l++) {
        const int ck = l / ATT_LANES, ln = l % ATT_LANES;
        const float *q = l < group ? c->q + (size_t)t * n_q + (size_t)(kvh * group + l) * hd : NULL;
        for (int d = 0; d < hd; d++) qT[((size_t)ck * hd + d) * ATT_LANES + ln] = q ? q[d] * scale : 0.0f;
        mx[l] = -INFINITY;
        sum[l] = 0.0f;
    }
    memset(acc, 0, (size_t)lanes * hd * sizeof *acc);
    const int pos = b->pos[t];
    const size_t base = (size_t)b->seq_id[t] * (size_t)c->params.n_ctx;
    for (int p0 = 0; p0 <= pos; p0 += ATT_DTILE) {
        const int n = pos + 1 - p0 < ATT_DTILE ? pos + 1 - p0 : ATT_DTILE;
        const size_t off = (base + (size_t)p0) * (size_t)n_kv + (size_t)kvh * hd;
        const ptrdiff_t next = p0 + ATT_DTILE <= pos ? (ptrdiff_t)ATT_DTILE * n_kv : 0;
        const dec_tile a = {kf, vt, sT, qT, mx, sum, acc, kv_at(c, il, off), (size_t)n_kv, next, n, hd, group};
        tile(&a);
    }
    for (int l = 0; l < group; l++) {
        float *o = c->att + (size_t)t * n_q + (size_t)(kvh * group + l) * hd;
        const float inv = 1.0f / sum[l];
        for (int d = 0; d < hd; d++) o[d] = acc[(size_t)l * hd + d] * inv;
    }
}


/* Per-thread state of att_decode_range: the tile buffers, then for each KV
 * head its lanes' acc (lanes x hd), qT (lanes x hd), max and sum. */
static size_t decode_state_floats(const cm_hparams *hp) {
    const size_t hd = (size_t)hp->head_dim, group = (size_t)(hp->n_head / hp->n_head_kv);
    const size_t lanes = (group + ATT_LANES - 1) / ATT_LANES * ATT_LANES;
    return 2 * (size_t)ATT_DTILE * hd + (size_t)ATT_DTILE * ATT_LANES + (size_t)hp->n_head_kv * lanes * (2 * hd + 2);
}

/* Decode attention of the one entry t over positions pa..pb-1 only, for
 * every KV head: the tile loop is outermost, so a tile's K and V rows of all
 * KV heads (adjacent in the cache) are read together, front to back, and each
 * thread streams one contiguous stretch of the cache. Leaves each head's
 * unnormalized partial state (max, sum, acc) in ws for att_decode_merge;
 * with pb - pa covering everything, also writes the output when `finish`. */
static void att_decode_range(cm_ctx *c, int il, const cm_batch *b, int t, int pa, int pb, float *ws, bool finish,
                             dec_tile_fn *tile) {
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv, n_kv = c->n_kv, n_q = c->n_q;
    const int lanes = (group + ATT_LANES - 1) / ATT_LANES * ATT_LANES;
    const size_t S = (size_t)lanes * (2 * (size_t)hd + 2);
    const float scale = 1.0f / sqrtf((float)hd);
    float *kf = ws, *vt = kf + (size_t)ATT_DTILE * hd, *sT = vt + (size_t)ATT_DTILE * hd;
    float *st = sT + (size_t)ATT_DTILE * ATT_LANES;
    for (int kvh = 0; kvh < hp->n_head_kv; kvh++) {
        float *acc = st + (size_t)kvh * S, *qT = acc + (size_t)lanes * hd, *mx = qT + (size_t)lanes * hd;
        float *sum = mx + lanes;
        for (int l = 0; l < lanes; l++) {
            const int ck = l / ATT_LANES, ln = l % ATT_LANES;
            const float *q = l < group ? c->q + (size_t)t * n_q + (size_t)(kvh * group + l) * hd : NULL;
            for (int d = 0; d < hd; d++) qT[((size_t)ck * hd + d) * ATT_LANES + ln] = q ? q[d] * scale : 0.0f;
            mx[l] = -INFINITY;
            sum[l] = 0.0f;
        }
        memset(acc, 0, (size_t)lanes * hd * sizeof *acc);
    }
    const size_t base = (size_t)b->seq_id[t] * (size_t)c->params.n_ctx;
    for (int p0 = pa; p0 < pb; p0 += ATT_DTILE) {
        const int n = pb - p0 < ATT_DTILE ? pb - p0 : ATT_DTILE;
        for (int kvh = 0; kvh < hp->n_head_kv; kvh++) {
            float *acc = st + (size_t)kvh * S, *qT = acc + (size_t)lanes * hd, *mx = qT + (size_t)lanes * hd;
            float *sum = mx + lanes;
            const size_t off = (base + (size_t)p0) * (size_t)n_kv + (size_t)kvh * hd;
            /* the next KV head of this tile, or the first of the next tile */
            const ptrdiff_t next = kvh + 1 < hp->n_head_kv ? hd
                                   : p0 + ATT_DTILE < pb  ? (ptrdiff_t)ATT_DTILE * n_kv - (ptrdiff_t)kvh * hd
                                                          : 0;
            const dec_tile b2 = {kf, vt, sT, qT, mx, sum, acc, kv_at(c, il, off), (size_t)n_kv, next, n, hd, group};
            tile(&b2);
        }
    }
    if (!finish) return;
    for (int h = 0; h < hp->n_head; h++) {
        const int kvh = h / group, l = h % group;
        const float *acc = st + (size_t)kvh * S, *sum = acc + 2 * (size_t)lanes * hd + lanes;
        float *o = c->att + (size_t)t * n_q + (size_t)h * hd;
        const float inv = 1.0f / sum[l];
        for (int d = 0; d < hd; d++) o[d] = acc[(size_t)l * hd + d] * inv;
    }
}

/* Output heads h0..h1-1 of entry t from the partial states that threads
 * 0..nth-1 left in their scratch: rescaled to the largest max of them all
 * (a thread whose stretch was empty has max -inf and weight 0). */
static void att_decode_merge(cm_ctx *c, int t, int h0, int h1, int nth) {
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    const int lanes = (group + ATT_LANES - 1) / ATT_LANES * ATT_LANES;
    const size_t S = (size_t)lanes * (2 * (size_t)hd + 2);
    const size_t st0 = 2 * (size_t)ATT_DTILE * hd + (size_t)ATT_DTILE * ATT_LANES;
    for (int h = h0; h < h1; h++) {
        const int kvh = h / group, l = h % group;
        float m = -INFINITY;
        for (int i = 0; i < nth; i++) {
            const float *acc = c->att_scratch + (size_t)i * (size_t)c->att_scratch_stride + st0 + (size_t)kvh * S;
            const float mi = acc[2 * (size_t)lanes * hd + l];
            m = mi > m ? mi : m;
        }
        float *o = c->att + (size_t)t * c->n_q + (size_t)h * hd;
        float total = 0.0f;
        memset(o, 0, (size_t)hd * sizeof *o);
        for (int i = 0; i < nth; i++) {
            const float *acc = c->att_scratch + (size_t)i * (size_t)c->att_scratch_stride + st0 + (size_t)kvh * S;
            const float mi = acc[2 * (size_t)lanes * hd + l];
            if (mi == -INFINITY) continue;
            const float w = expf(mi - m);
            total += w * acc[2 * (size_t)lanes * hd + lanes + l];
            for (int d = 0; d < hd; d++) o[d] += w * acc[(size_t)l * hd + d];
        }
        const float inv = 1.0f / total;
        for (int d = 0; d < hd; d++) o[d] *= inv;
    }
}

typedef struct att_job {
    cm_ctx *c;
    int il;
    const cm_batch *batch;
    dec_tile_fn *dec_tile; /* dec_tile_pick() */
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
    if (c->params.kv_type == CM_KV_Q8_0) {
        const cm_type_traits *q8 = cm_type_traits_get(CM_TYPE_Q8_0);
        q8->from_float(k, c->k_q8[il] + slot / CM_QK, hd);
        q8->from_float(v, c->v_q8[il] + slot / CM_QK, hd);
        return;
    }
    cm_f16 *kd = c->k_cache[il] + slot, *vd = c->v_cache[il] + slot;
    for (int i = 0; i < hd; i++) {
        kd[i] = cm_f32_to_f16(k[i]);
        vd[i] = cm_f32_to_f16(v[i]);
    }
}

/* Entries t0..t0+nt-1 of the batch are one sequence at consecutive
 * positions: they can share each converted K/V tile. */
static bool block_is_run(const cm_batch *b, int t0, int nt) {
    for (int k = 1; k < nt; k++)
        if (b->seq_id[t0 + k] != b->seq_id[t0] || b->pos[t0 + k] != b->pos[t0] + k) return false;
    return true;
}

/* Attention of the query heads of KV head kvh for entries t0..t0+nt-1 (one
 * sequence, consecutive positions, nt <= ATT_QB): each K/V tile is
 * converted once for all nt x group query rows; row r (entry t0 + r/group)
 * only takes the tile's positions up to its own. ws: this thread's scratch. */
static void att_block(cm_ctx *c, int il, const cm_batch *b, int t0, int nt, int kvh, float *ws) {
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv, n_kv = c->n_kv, n_q = c->n_q;
    const int rows = nt * group, rmax = ATT_QB * group;
    const float scale = 1.0f / sqrtf((float)hd);
    float *kT = ws;                                    /* hd x TILE, K transposed */
    float *vt = kT + (size_t)hd * CM_ATT_TILE;         /* TILE x hd */
    float *scores = vt + (size_t)CM_ATT_TILE * hd + hd; /* rmax x TILE */
    float *acc = scores + (size_t)rmax * CM_ATT_TILE;  /* rmax x hd */
    float *qv = acc + (size_t)rmax * hd;               /* rmax x hd */
    float *mx = qv + (size_t)rmax * hd;                /* rmax */
    float *sum = mx + rmax;                            /* rmax */
    for (int r = 0; r < rows; r++) {
        const float *q = c->q + (size_t)(t0 + r / group) * n_q + (size_t)(kvh * group + r % group) * hd;
        for (int d = 0; d < hd; d++) qv[(size_t)r * hd + d] = q[d] * scale;
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    memset(acc, 0, (size_t)rows * hd * sizeof *acc);
    const int pos0 = b->pos[t0], pos_last = pos0 + nt - 1;
    const size_t base = (size_t)b->seq_id[t0] * (size_t)c->params.n_ctx;
    for (int p0 = 0; p0 <= pos_last; p0 += CM_ATT_TILE) {
        const int n = pos_last + 1 - p0 < CM_ATT_TILE ? pos_last + 1 - p0 : CM_ATT_TILE;
        const size_t off = (base + (size_t)p0) * (size_t)n_kv + (size_t)kvh * hd;
        tile_load(kT, vt, kv_at(c, il, off), (size_t)n_kv, n, hd);
        for (int r = 0; r < rows; r++) {
            const int nr = pos0 + r / group + 1 - p0 < n ? pos0 + r / group + 1 - p0 : n; /* causal */
            if (nr <= 0) continue;
            float *sg = scores + (size_t)r * CM_ATT_TILE;
            tile_scores(sg, kT, qv + (size_t)r * hd, nr, hd);
            float tmax = -INFINITY;
            for (int i = 0; i < nr; i++) tmax = sg[i] > tmax ? sg[i] : tmax;
            const float m_new = tmax > mx[r] ? tmax : mx[r];
            const float corr = expf(mx[r] - m_new); /* 0 on the first tile: the max was -inf */
            sum[r] = sum[r] * corr + tile_exp(sg, nr, m_new);
            tile_pv(acc + (size_t)r * hd, corr, sg, 1, vt, nr, hd);
            mx[r] = m_new;
        }
    }
    for (int r = 0; r < rows; r++) {
        float *o = c->att + (size_t)(t0 + r / group) * n_q + (size_t)(kvh * group + r % group) * hd;
        const float inv = 1.0f / sum[r];
        for (int d = 0; d < hd; d++) o[d] = acc[(size_t)r * hd + d] * inv;
    }
}

static void att_worker(void *arg, int ith, int nth) {
    const att_job *j = arg;
    cm_ctx *c = j->c;
    const cm_hparams *hp = &c->model->hp;
    const int n_head_kv = hp->n_head_kv;
    long b, e;
    const int n_heads_all = hp->n_head + n_head_kv;
    cm_split_range((long)j->batch->n_tokens * n_heads_all, ith, nth, &b, &e);
    const cm_layer *L = &c->model->layers[j->il];
    for (long it = b; it < e; it++)
        prepare_head(c, L, j->il, j->batch, (int)(it / n_heads_all), (int)(it % n_heads_all));
    if (nth > 1) cm_pool_barrier(c->pool); /* every K/V row of the batch is in the cache */

    /* Attention items are (block of entries, KV head), KV head fastest,
     * dealt round-robin: later blocks of a prompt see more positions, and
     * dealing keeps the threads' shares even where contiguous ranges would
     * give the last thread the longest rows. */
    float *ws = c->att_scratch + (size_t)ith * (size_t)c->att_scratch_stride;
    const int n_tok = j->batch->n_tokens, group = hp->n_head / n_head_kv;
    if (n_tok == 1) {
        /* One decoded token: the threads split its positions (whole decode
         * tiles) instead of its KV heads, so each streams one contiguous
         * stretch of the cache, then merge their partial softmax states. */
        const int np = j->batch->pos[0] + 1;
        long tb, te;
        cm_split_range((np + ATT_DTILE - 1) / ATT_DTILE, ith, nth, &tb, &te);
        const int pa = (int)tb * ATT_DTILE, pb = (int)te * ATT_DTILE < np ? (int)te * ATT_DTILE : np;
        att_decode_range(c, j->il, j->batch, 0, pa, pb, ws, nth == 1, j->dec_tile);
        if (nth == 1) return;
        cm_pool_barrier(c->pool); /* every thread's partial state is written */
        long hb, he;
        cm_split_range(hp->n_head, ith, nth, &hb, &he);
        att_decode_merge(c, 0, (int)hb, (int)he, nth);
        return;
    }
    const long n_blocks = (n_tok + ATT_QB - 1) / ATT_QB;
    for (long it = ith; it < n_blocks * n_head_kv; it += nth) {
        const int t0 = (int)(it / n_head_kv) * ATT_QB, kvh = (int)(it % n_head_kv);
        const int nt = n_tok - t0 < ATT_QB ? n_tok - t0 : ATT_QB;
        if (nt == 1 && group >= ATT_LANES / 2) {
            att_decode(c, j->il, j->batch, t0, kvh, ws, j->dec_tile);
        } else if (block_is_run(j->batch, t0, nt)) {
            att_block(c, j->il, j->batch, t0, nt, kvh, ws);
        } else {
            for (int k = 0; k < nt; k++) {
                if (group >= ATT_LANES / 2)
                    att_decode(c, j->il, j->batch, t0 + k, kvh, ws, j->dec_tile);
                else
                    att_block(c, j->il, j->batch, t0 + k, 1, kvh, ws);
            }
        }
    }
}

/* Floats of per-thread scratch att_worker needs. */
size_t cm_attention_scratch_floats(const cm_hparams *hp) {
    size_t hd = (size_t)hp->head_dim, rmax = (size_t)ATT_QB * (size_t)(hp->n_head / hp->n_head_kv);
    const size_t prompt = 2 * CM_ATT_TILE * hd + hd + rmax * CM_ATT_TILE + 2 * rmax * hd + 2 * rmax + 16;
    const size_t decode = decode_state_floats(hp) + 16;
    return prompt > decode ? prompt : decode;
}

void cm_attention(cm_ctx *c, int il, const cm_batch *batch) {
    att_job j = {c, il, batch, dec_tile_pick()};
    cm_pool_run(c->pool, att_worker, &j);
}
