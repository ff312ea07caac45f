/* repack_avx2.c - AVX2 (+FMA, F16C) kernels over the repacked layouts of
 * repack.h: the same bytes as the AVX-512 VNNI kernels read (the layouts
 * are described at the top of repack_avx512.c and repack_k_avx512.c; their
 * bytes / pack / unpack_row are shared, from repack_layout.c), so a CPU
 * with AVX2 only decodes from one row-interleaved stream too.
 *
 * One 64-byte line holds 4 bytes of each of a group's 16 rows; a 256-bit
 * load takes half of it, 8 rows, one int32 lane per row. Without VNNI the
 * products are VPMADDUBSW (unsigned weight byte x signed activation byte,
 * pairs summed into i16, saturating at +-32767) followed by VPMADDWD, so
 * every weight operand must be small enough that no i16 sum saturates:
 *   - q4_0: nibbles 0..15 (w + 8); a pair is at most 2 * 15 * 128 = 3840,
 *     so a block's 8 VPMADDUBSW per row half add up in i16 exactly
 *     (at most 30720);
 *   - q8_0: the stored byte u = w + 128 (0..255) would saturate, so it is
 *     split into nibbles, u = lo + 16 * hi, each summed like q4_0 and
 *     combined in i32 (VPMADDWD by 1 and by 16); the 128 (and q4_0's 8)
 *     comes back out as off * sum(activation block), computed once per
 *     activation block and token (act_info), never per row;
 *   - q4_K: nibbles as q4_0 (the high nibbles shifted down, not used in
 *     place as the AVX-512 kernel does: 16 x the nibble would saturate);
 *     a sub-block's i16 sums go through VPMADDWD against its 6-bit scales
 *     (each row's scale in both halves of its i32 lane), and the mins come
 *     from the activation's bsums, once per tile and token;
 *   - q6_K: 6-bit q (0..63), a pair at most 2 * 63 * 128 = 16128, so two
 *     VPMADDUBSW add up in i16 before VPMADDWD against the int8 scales;
 *     the -32 comes back out as 32 * sum_k sc[k] * bsums[k].
 * Integer sums are therefore exact, and results equal the reference up to
 * float summation order, as for the AVX-512 kernels.
 *
 * Tokens: a group's column or tile is loaded and unpacked once per row half
 * and reused by up to TILE_T tokens; tokens come in chunks whose activation
 * rows stay in L2 while every group of rows [r0, r1) runs over them. For
 * one or two tokens (decode) the kernels prefetch ahead of their weight
 * stream (cm_x86_prefetch_ahead). Nothing here allocates. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/quants.h"
#include "kernels/repack.h"
#include "kernels/x86/repack_layout.h"
#include "kernels/x86/x86.h"

#define RR CM_REPACK_ROWS
#define ALWAYS_INLINE inline __attribute__((always_inline))
/* Loops over tokens and loads must become straight code, so that their
 * arrays live in registers. */
#define UNROLL _Pragma("GCC unroll 16")

/* Tokens per pass over a group's weights. */
#ifndef TILE_T
#define TILE_T 8
#endif

/* An int32 that may sit at any address and alias bytes: activation bytes
 * are broadcast 4 at a time straight from memory (a load, not a shuffle). */
typedef int32_t i32u __attribute__((may_alias, aligned(1)));

static ALWAYS_INLINE __m256i bcast(const void *p) { return _mm256_set1_epi32(*(const i32u *)p); }

/* Decode's prefetch ahead of the weight stream (the CM_X86_PF_AHEAD
 * distance and hint of x86.h), written with a constant count of lines and
 * unrolled: inlined into these kernels, gcc 12 deleted the loop of
 * cm_x86_prefetch_ahead as one without side effects (no prefetch
 * instruction was left in the object), so it is spelled out here. */
static ALWAYS_INLINE void prefetch_ahead(const uint8_t *p, const int bytes) {
    const char *q = (const char *)p + CM_X86_PF_AHEAD;
    UNROLL
    for (int o = 0; o < bytes; o += 64) _mm_prefetch(q + o, CM_X86_PF_HINT);
}

/* ---- q4_0, q8_0 ---- */

/* Per activation block and token: -off * sum of its quants, and its scale. */
typedef struct act_info {
    int32_t corr;
    float d;
} act_info;

/* act_info entries on a matmul call's stack (64 KiB), as in repack_avx512.c:
 * tokens per chunk are INFO_MAX / blocks per row. */
#define INFO_MAX 8192

static void act_info_fill(const uint8_t *act, size_t arb, int64_t n_tok, int64_t i0, int64_t n_blk, int off,
                          act_info *info) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t t = 0; t < n_tok; t++) {
        const cm_block_q8_0 *y = (const cm_block_q8_0 *)(act + (size_t)t * arb) + i0;
        act_info *o = info + t * n_blk;
        for (int64_t i = 0; i < n_blk; i++) {
            /* sum of the signed bytes: of (byte ^ 0x80) read unsigned, less 32 * 128 */
            const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)y[i].qs), flip),
                                              _mm256_setzero_si256());
            __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            h = _mm_add_epi64(h, _mm_unpackhi_epi64(h, h));
            o[i].corr = -off * ((int32_t)_mm_cvtsi128_si32(h) - 32 * 128);
            o[i].d = _cvtsh_ss(y[i].d);
        }
    }
}

/* One 16-row group (columns [i0, i0 + n_blk) at `wg`) against T tokens:
 * y[t * ys + 0..15] (+)= the partial dots; `accumulate` adds to y (a later
 * slab of columns). */
static ALWAYS_INLINE void group_tile(const int q8, const uint8_t *wg, int64_t i0, int64_t n_blk, const uint8_t *act,
                                     size_t arb, const act_info *info, const int T, float *y, int64_t ys,
                                     int accumulate) {
    const size_t col = q8 ? Q8_COL : Q4_COL;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i sixteen = _mm256_set1_epi16(16);
    __m256 acc[TILE_T][2];
    UNROLL
    for (int t = 0; t < T; t++) {
        acc[t][0] = accumulate ? _mm256_loadu_ps(y + t * ys) : _mm256_setzero_ps();
        acc[t][1] = accumulate ? _mm256_loadu_ps(y + t * ys + 8) : _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < n_blk; i++) {
        const uint8_t *c = wg + (size_t)i * col;
        if (T <= 2) prefetch_ahead(c, (int)col);
        UNROLL
        for (int h = 0; h < 2; h++) {
            /* rows 8h .. 8h + 7 */
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + 16 * h)));
            __m256i slo[TILE_T], shi[TILE_T];
            UNROLL
            for (int t = 0; t < T; t++) slo[t] = shi[t] = _mm256_setzero_si256();
            const int n_loads = q8 ? 8 : 4;
            UNROLL
            for (int k = 0; k < n_loads; k++) {
                const __m256i x = _mm256_loadu_si256((const __m256i *)(c + 2 * RR + 64 * k + 32 * h));
                const __m256i lo = _mm256_and_si256(x, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
                UNROLL
                for (int t = 0; t < T; t++) {
                    const int8_t *qa = ((const cm_block_q8_0 *)(act + (size_t)t * arb) + i0 + i)->qs;
                    if (q8) {
                        /* u = lo + 16 hi, both against activation bytes 4k.. */
                        const __m256i a = bcast(qa + 4 * k);
                        slo[t] = _mm256_add_epi16(slo[t], _mm256_maddubs_epi16(lo, a));
                        shi[t] = _mm256_add_epi16(shi[t], _mm256_maddubs_epi16(hi, a));
                    } else {
                        /* low nibbles: weights 4k..; high nibbles: 16 + 4k.. */
                        slo[t] = _mm256_add_epi16(slo[t], _mm256_maddubs_epi16(lo, bcast(qa + 4 * k)));
                        shi[t] = _mm256_add_epi16(shi[t], _mm256_maddubs_epi16(hi, bcast(qa + 16 + 4 * k)));
                    }
                }
            }
            UNROLL
            for (int t = 0; t < T; t++) {
                const act_info *ai = info + t * n_blk + i;
                __m256i s = q8 ? _mm256_add_epi32(_mm256_madd_epi16(slo[t], ones), _mm256_madd_epi16(shi[t], sixteen))
                               : _mm256_madd_epi16(_mm256_add_epi16(slo[t], shi[t]), ones);
                s = _mm256_add_epi32(s, _mm256_set1_epi32(ai->corr));
                acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(ai->d)), acc[t][h]);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) {
        _mm256_storeu_ps(y + t * ys, acc[t][0]);
        _mm256_storeu_ps(y + t * ys + 8, acc[t][1]);
    }
}

/* T = 1 .. TILE_T as compile-time constants, so that group_tile's loops
 * over tokens unroll and its arrays stay in registers. */
#define DISPATCH_T(n, CALL)                  \
    switch (n) {                             \
    case 8: CALL(8); break;                  \
    case 7: CALL(7); break;                  \
    case 6: CALL(6); break;                  \
    case 5: CALL(5); break;                  \
    case 4: CALL(4); break;                  \
    case 3: CALL(3); break;                  \
    case 2: CALL(2); break;                  \
    default: CALL(1); break;                 \
    }
static_assert(TILE_T >= 1 && TILE_T <= 8, "DISPATCH_T covers 1 .. 8 tokens");

static ALWAYS_INLINE void matmul_q(const int q8, const void *w, int64_t n_cols, int64_t r0, int64_t r1,
                                   const void *act, size_t arb, int64_t n_tokens, float *y, int64_t ys) {
    act_info info[INFO_MAX];
    const int64_t nb = n_cols / CM_QK;
    const size_t col = q8 ? Q8_COL : Q4_COL;
    const size_t group_bytes = (size_t)nb * col;
    const int off = q8 ? 128 : 8;
    /* columns in slabs of at most INFO_MAX blocks, tokens in chunks whose
     * act_info fits */
    const int64_t slab = nb < INFO_MAX ? nb : INFO_MAX;
    int64_t chunk = INFO_MAX / slab;
    if (chunk > TILE_T) chunk -= chunk % TILE_T;
    for (int64_t i0 = 0; i0 < nb; i0 += slab) {
        const int64_t n_blk = nb - i0 < slab ? nb - i0 : slab;
        for (int64_t c0 = 0; c0 < n_tokens; c0 += chunk) {
            const int64_t c1 = c0 + chunk < n_tokens ? c0 + chunk : n_tokens;
            act_info_fill((const uint8_t *)act + (size_t)c0 * arb, arb, c1 - c0, i0, n_blk, off, info);
            for (int64_t r = r0; r < r1; r += RR) {
                const uint8_t *wg = (const uint8_t *)w + (size_t)(r / RR) * group_bytes + (size_t)i0 * col;
                for (int64_t t = c0; t < c1; t += TILE_T) {
                    const uint8_t *a = (const uint8_t *)act + (size_t)t * arb;
                    const act_info *ai = info + (t - c0) * n_blk;
                    float *yt = y + t * ys + r;
                    const int n = c1 - t >= TILE_T ? TILE_T : (int)(c1 - t);
#define CALL(T) group_tile(q8, wg, i0, n_blk, a, arb, ai, (T) <= TILE_T ? (T) : TILE_T, yt, ys, i0 > 0)
                    DISPATCH_T(n, CALL)
#undef CALL
                }
            }
        }
    }
}

static void q4_0_matmul(const void *w, int64_t n_cols, int64_t r0, int64_t r1, const void *act, size_t arb,
                        int64_t n_tokens, float *y, int64_t ys) {
    matmul_q(0, w, n_cols, r0, r1, act, arb, n_tokens, y, ys);
}

static void q8_0_matmul(const void *w, int64_t n_cols, int64_t r0, int64_t r1, const void *act, size_t arb,
                        int64_t n_tokens, float *y, int64_t ys) {
    matmul_q(1, w, n_cols, r0, r1, act, arb, n_tokens, y, ys);
}

/* Same type ids and pack functions as the AVX-512 ops: a matrix packed for
 * one is valid for the other. */
static const cm_repack_ops q4_0_ops = {
    .type = CM_TYPE_Q4_0_R16,
    .src_type = CM_TYPE_Q4_0,
    .name = "q4_0_r16",
    .bytes = cm_repack_q4_0_bytes,
    .pack = cm_repack_q4_0_pack,
    .matmul = q4_0_matmul,
    .unpack_row = cm_repack_q4_0_unpack_row,
};

static const cm_repack_ops q8_0_ops = {
    .type = CM_TYPE_Q8_0_R16,
    .src_type = CM_TYPE_Q8_0,
    .name = "q8_0_r16",
    .bytes = cm_repack_q8_0_bytes,
    .pack = cm_repack_q8_0_pack,
    .matmul = q8_0_matmul,
    .unpack_row = cm_repack_q8_0_unpack_row,
};

const struct cm_repack_ops *cm_repack_q_avx2(int src_type) {
    switch (src_type) {
    case CM_TYPE_Q4_0: return &q4_0_ops;
    case CM_TYPE_Q8_0: return &q8_0_ops;
    default: return NULL;
    }
}

/* ---- K formats ---- */

const struct cm_repack_ops *cm_repack_k_avx2(int src_type) {
    (void)src_type;
    return NULL;
}
