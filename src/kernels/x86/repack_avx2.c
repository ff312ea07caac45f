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
 *   - q5_K: the q4_K kernel with the 5th bit ORed in (0..31): a pair is
 *     at most 2 * 31 * 128 = 7936, so i16 sums cover 4 groups, not 8;
 *   - q6_K: 6-bit q (0..63), a pair at most 2 * 63 * 128 = 16128, so two
 *     VPMADDUBSW add up in i16 before VPMADDWD against the int8 scales;
 *     the -32 comes back out as 32 * sum_k sc[k] * bsums[k].
 * Integer sums are therefore exact, and results equal the reference up to
 * float summation order, as for the AVX-512 kernels.
 *
 * Tokens: a group's column or tile is loaded and unpacked once per row half
 * and reused by up to TILE_* tokens (below); tokens come in chunks whose
 * activation rows stay in L2 while every group of rows [r0, r1) runs over
 * them. These kernels also serve prompts: against the per-row AVX2 dots on
 * the file layout they measured about 4x the prompt tokens/s (cellm bench
 * -p 64, q4_0 1B model, 2 threads). For one or two tokens (decode) they
 * prefetch ahead of their weight stream (cm_x86_prefetch_ahead, x86.h). Nothing
 * here allocates. */
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

/* Tokens per pass over a group's weights: TILE_T bounds the register
 * arrays, TILE_* is each kernel's. Unpacking is cheap next to the products
 * here (no VNNI), so reuse gains little and register pressure decides: with
 * the weights in L2 (4096 columns, 512 rows, 8 and 16 tokens), q4_0, q8_0
 * and q4_K ran 5-15% faster with 4 than with 8 (q4_0 a little faster still
 * with 2, but 4 halves the weight traffic again when they come from
 * memory), q6_K 5% faster with 8 than with 4. */
#define TILE_T 8
#define TILE_Q4_0 4
#define TILE_Q8_0 4
#define TILE_Q4_K 4
#define TILE_Q6_K 8

/* An int32 that may sit at any address and alias bytes: activation bytes
 * are broadcast 4 at a time straight from memory (a load, not a shuffle). */
typedef int32_t i32u __attribute__((may_alias, aligned(1)));

static ALWAYS_INLINE __m256i bcast(const void *p) { return _mm256_set1_epi32(*(const i32u *)p); }

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
        if (T <= 2) cm_x86_prefetch_ahead(c, (int)col);
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

/* T = 1 .. n as compile-time constants, so that the group functions' loops
 * over tokens unroll and their arrays stay in registers; n <= tile (a
 * constant), so the cases above it are never compiled. */
#define DISPATCH_T(n, tile, CALL)                  \
    do {                                           \
        if ((n) > (tile)) __builtin_unreachable(); \
        switch (n) {                               \
        case 8: CALL(8); break;                    \
        case 7: CALL(7); break;                    \
        case 6: CALL(6); break;                    \
        case 5: CALL(5); break;                    \
        case 4: CALL(4); break;                    \
        case 3: CALL(3); break;                    \
        case 2: CALL(2); break;                    \
        default: CALL(1); break;                   \
        }                                          \
    } while (0)
static_assert(TILE_Q4_0 <= TILE_T && TILE_Q8_0 <= TILE_T && TILE_Q4_K <= TILE_T && TILE_Q6_K <= TILE_T,
              "the register arrays hold a tile");
static_assert(TILE_T <= 8, "DISPATCH_T covers 1 .. 8 tokens");

static ALWAYS_INLINE void matmul_q(const int q8, const void *w, int64_t n_cols, int64_t r0, int64_t r1,
                                   const void *act, size_t arb, int64_t n_tokens, float *y, int64_t ys) {
    act_info info[INFO_MAX];
    const int64_t nb = n_cols / CM_QK;
    const size_t col = q8 ? Q8_COL : Q4_COL;
    const size_t group_bytes = (size_t)nb * col;
    const int off = q8 ? 128 : 8;
    const int tile = q8 ? TILE_Q8_0 : TILE_Q4_0;
    /* columns in slabs of at most INFO_MAX blocks, tokens in chunks whose
     * act_info fits */
    const int64_t slab = nb < INFO_MAX ? nb : INFO_MAX;
    int64_t chunk = INFO_MAX / slab;
    if (chunk > tile) chunk -= chunk % tile;
    for (int64_t i0 = 0; i0 < nb; i0 += slab) {
        const int64_t n_blk = nb - i0 < slab ? nb - i0 : slab;
        for (int64_t c0 = 0; c0 < n_tokens; c0 += chunk) {
            const int64_t c1 = c0 + chunk < n_tokens ? c0 + chunk : n_tokens;
            act_info_fill((const uint8_t *)act + (size_t)c0 * arb, arb, c1 - c0, i0, n_blk, off, info);
            for (int64_t r = r0; r < r1; r += RR) {
                const uint8_t *wg = (const uint8_t *)w + (size_t)(r / RR) * group_bytes + (size_t)i0 * col;
                for (int64_t t = c0; t < c1; t += tile) {
                    const uint8_t *a = (const uint8_t *)act + (size_t)t * arb;
                    const act_info *ai = info + (t - c0) * n_blk;
                    float *yt = y + t * ys + r;
                    const int n = c1 - t >= tile ? tile : (int)(c1 - t);
#define CALL(T) group_tile(q8, wg, i0, n_blk, a, arb, ai, (T) <= tile ? (T) : tile, yt, ys, i0 > 0)
                    DISPATCH_T(n, tile, CALL);
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
CM_REPACK_OPS(q4_0, Q4_0);

CM_REPACK_OPS(q8_0, Q8_0);

const struct cm_repack_ops *cm_repack_q_avx2(int src_type) {
    switch (src_type) {
    case CM_TYPE_Q4_0: return &q4_0_ops;
    case CM_TYPE_Q8_0: return &q8_0_ops;
    default: return NULL;
    }
}

/* ---- K formats ---- */

/* Activation rows per chunk: their q8_K rows should stay in L2 next to the
 * weight tile stream (as in repack_k_avx512.c). */
#define ACT_CHUNK_BYTES (512 * 1024)

static int64_t token_chunk(size_t act_row_bytes, int tile) {
    int64_t c = (int64_t)(ACT_CHUNK_BYTES / (act_row_bytes ? act_row_bytes : 1));
    c -= c % tile;
    return c < tile ? tile : c;
}

/* 8 unsigned bytes (one per row of a half group) as i16 pairs [s, s], one
 * i32 lane per row: VPMADDWD against a row's i16 sums multiplies both
 * halves of its lane by its scale and adds them. */
static ALWAYS_INLINE __m256i scale_pairs_u8(const uint8_t *p) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return _mm256_or_si256(v, _mm256_slli_epi32(v, 16));
}

/* Row halves [h0, h1) of a q4_K tile (q5 == 0) or q5_K tile (q5 == 1: the
 * same tile plus the 5th-bit planes) against T tokens: isum[t][h] +=
 * sum_j sc[j] * dot(sub-block j). One or two tokens take both halves in
 * one pass, so that each activation broadcast serves 16 rows straight from
 * a register; more tokens take one half at a time (their i16 sums would
 * not fit in registers for both). A q5_K weight (0..31) makes pairs of up
 * to 2 * 31 * 128 = 7936, so its i16 sums cover 4 groups, not 8. */
static ALWAYS_INLINE void k45_halves(const int q5, const uint8_t *tl, const uint8_t *act, size_t arb, int64_t i,
                                     const int T, const int h0, const int h1, __m256i isum[][2]) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i b0 = _mm256_set1_epi8(0x01);
    const int qs_at = q5 ? K5_QS : K4_QS;
    /* p and g stay loops: unrolled, gcc hoisted the products of every g
     * and spilled them to the stack */
    for (int p = 0; p < 4; p++) {
        /* sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles); q5_K: bits
         * 2p and 2p + 1 of qh, moved to bit 4 */
        const __m128i sh0 = _mm_cvtsi32_si128(2 * p), sh1 = _mm_cvtsi32_si128(2 * p + 1);
        const int n_gh = q5 ? 2 : 1;
        UNROLL
        for (int gh = 0; gh < n_gh; gh++) {
            __m256i s0[TILE_T][2], s1[TILE_T][2];
            UNROLL
            for (int t = 0; t < T; t++)
                UNROLL
                for (int h = h0; h < h1; h++) s0[t][h] = s1[t][h] = _mm256_setzero_si256();
            for (int g = q5 ? 4 * gh : 0; g < (q5 ? 4 * gh + 4 : 8); g++) {
                UNROLL
                for (int h = h0; h < h1; h++) {
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(tl + qs_at + (p * 8 + g) * 64 + 32 * h));
                    __m256i lo = _mm256_and_si256(x, m4);
                    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
                    if (q5) {
                        const __m256i qh = _mm256_loadu_si256((const __m256i *)(tl + K5_QH + g * 64 + 32 * h));
                        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, sh0), b0), 4));
                        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, sh1), b0), 4));
                    }
                    UNROLL
                    for (int t = 0; t < T; t++) {
                        const int8_t *qa = ((const cm_block_q8_K *)(act + (size_t)t * arb) + i)->qs + 64 * p + 4 * g;
                        s0[t][h] = _mm256_add_epi16(s0[t][h], _mm256_maddubs_epi16(lo, bcast(qa)));
                        s1[t][h] = _mm256_add_epi16(s1[t][h], _mm256_maddubs_epi16(hi, bcast(qa + 32)));
                    }
                }
            }
            UNROLL
            for (int h = h0; h < h1; h++) {
                const __m256i sc0 = scale_pairs_u8(tl + K4_SC + (2 * p) * RR + 8 * h);
                const __m256i sc1 = scale_pairs_u8(tl + K4_SC + (2 * p + 1) * RR + 8 * h);
                UNROLL
                for (int t = 0; t < T; t++)
                    isum[t][h] = _mm256_add_epi32(isum[t][h], _mm256_add_epi32(_mm256_madd_epi16(s0[t][h], sc0),
                                                                               _mm256_madd_epi16(s1[t][h], sc1)));
            }
        }
    }
}

/* One 16-row q4_K or q5_K group (tiles at `wg`) against T tokens:
 * y[t * ys + 0..15]. The two tiles share every offset but the quants'. */
static_assert(K5_D == K4_D && K5_DMIN == K4_DMIN && K5_SC == K4_SC && K5_MN == K4_MN, "q4_K / q5_K tile offsets");
static ALWAYS_INLINE void k45_group(const int q5, const uint8_t *wg, int64_t nb, const uint8_t *act, size_t arb,
                                    const int T, float *y, int64_t ys) {
    __m256 acc[TILE_T][2];
    UNROLL
    for (int t = 0; t < T; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *tl = wg + i * (q5 ? K5_TILE : K4_TILE);
        if (T <= 2) cm_x86_prefetch_ahead(tl, q5 ? K5_TILE : K4_TILE);
        __m256i isum[TILE_T][2];
        UNROLL
        for (int t = 0; t < T; t++) isum[t][0] = isum[t][1] = _mm256_setzero_si256();
        if (T <= 2) {
            k45_halves(q5, tl, act, arb, i, T, 0, 2, isum);
        } else {
            k45_halves(q5, tl, act, arb, i, T, 0, 1, isum);
            k45_halves(q5, tl, act, arb, i, T, 1, 2, isum);
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            const cm_block_q8_K *yb = (const cm_block_q8_K *)(act + (size_t)t * arb) + i;
            /* the activation sums of sub-blocks 2k, 2k+1 as i16 pairs (each
             * at most 32 * 128: no saturation); packed per 128-bit lane as
             * s0 s1 s2 s3 s0 s1 s2 s3 | s4 s5 s6 s7 ..., the pairs are i32
             * elements 0, 1, 4, 5 */
            const __m256i s = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)yb->bsums), _mm256_set1_epi16(1));
            const __m256i pk = _mm256_packs_epi32(s, s);
            const __m256i bp0 = _mm256_permutevar8x32_epi32(pk, _mm256_setzero_si256());
            const __m256i bp1 = _mm256_permutevar8x32_epi32(pk, _mm256_set1_epi32(1));
            const __m256i bp2 = _mm256_permutevar8x32_epi32(pk, _mm256_set1_epi32(4));
            const __m256i bp3 = _mm256_permutevar8x32_epi32(pk, _mm256_set1_epi32(5));
            const __m256 dyv = _mm256_set1_ps(yb->d);
            UNROLL
            for (int h = 0; h < 2; h++) {
                /* rows 8h .. 8h + 7; mins: sum_j mn[j] * bsum32[j], mn pairs zero-extended to i16 */
                const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tl + K4_D + 16 * h)));
                const __m256 dmv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tl + K4_DMIN + 16 * h)));
                const uint8_t *mn = tl + K4_MN + 16 * h;
                __m256i m = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)mn)), bp0);
                m = _mm256_add_epi32(m, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(mn + 32))), bp1));
                m = _mm256_add_epi32(m, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(mn + 64))), bp2));
                m = _mm256_add_epi32(m, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(mn + 96))), bp3));
                acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t][h]), _mm256_mul_ps(dv, dyv), acc[t][h]);
                acc[t][h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_mul_ps(dmv, dyv), acc[t][h]);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) {
        _mm256_storeu_ps(y + t * ys, acc[t][0]);
        _mm256_storeu_ps(y + t * ys + 8, acc[t][1]);
    }
}

/* Row halves [h0, h1) of a q6_K tile against T tokens: isum[t][h] +=
 * sum_k sc[k] * dot(sub-block k) with q unsigned (0..63); both halves in
 * one pass for one or two tokens, as for q4_K and q5_K. */
static ALWAYS_INLINE void q6_K_halves(const uint8_t *tl, const uint8_t *act, size_t arb, int64_t i, const int T,
                                      const int h0, const int h1, __m256i isum[][2]) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    /* within each row's i32 lane of sign-extended [sc 2m, sc 2m+1]: the
     * first (even sub-block) or the second (odd) in both halves */
    const __m256i dup_even = _mm256_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13, 0, 1, 0, 1, 4, 5, 4,
                                              5, 8, 9, 8, 9, 12, 13, 12, 13);
    const __m256i dup_odd = _mm256_setr_epi8(2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15, 2, 3, 2, 3, 6, 7,
                                             6, 7, 10, 11, 10, 11, 14, 15, 14, 15);
    /* h and gg stay loops, as p and g in q4_K_halves */
    for (int h = 0; h < 2; h++) {
        for (int gg = 0; gg < 2; gg++) {
            UNROLL
            for (int c = 0; c < 4; c++) {
                /* sub-block k = 8h + gg + 2c: elements 128h + 32c + 16gg + 4j of the low (c < 2) or high nibbles
                 * of ql half c % 2, topped up by qh bit pair c */
                const int k = 8 * h + gg + 2 * c;
                UNROLL
                for (int rh = h0; rh < h1; rh++) {
                    /* rows 8rh .. 8rh + 7 */
                    const __m256i sp =
                        _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(tl + K6_SC + 32 * (k / 2) + 16 * rh)));
                    const __m256i sc = _mm256_shuffle_epi8(sp, k % 2 ? dup_odd : dup_even);
                    __m256i V[4];
                    UNROLL
                    for (int j = 0; j < 4; j++) {
                        const int g = 4 * gg + j;
                        const __m256i l = _mm256_loadu_si256((const __m256i *)(tl + k6_ql_at(h, c % 2, g, 0) + 32 * rh));
                        const __m256i qh = _mm256_loadu_si256((const __m256i *)(tl + k6_qh_at(h, g, 0) + 32 * rh));
                        const __m256i lo = _mm256_and_si256(c < 2 ? l : _mm256_srli_epi16(l, 4), m4);
                        __m256i hi;
                        switch (c) {
                        case 0: hi = _mm256_slli_epi16(qh, 4); break;
                        case 1: hi = _mm256_slli_epi16(qh, 2); break;
                        case 2: hi = qh; break;
                        default: hi = _mm256_srli_epi16(qh, 2); break;
                        }
                        V[j] = _mm256_or_si256(lo, _mm256_and_si256(hi, m30));
                    }
                    UNROLL
                    for (int t = 0; t < T; t++) {
                        const int8_t *qa =
                            ((const cm_block_q8_K *)(act + (size_t)t * arb) + i)->qs + 128 * h + 32 * c + 16 * gg;
                        /* two products of q <= 63 add up in i16 (at most 32256) */
                        const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(V[0], bcast(qa)),
                                                             _mm256_maddubs_epi16(V[1], bcast(qa + 4)));
                        const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(V[2], bcast(qa + 8)),
                                                             _mm256_maddubs_epi16(V[3], bcast(qa + 12)));
                        isum[t][rh] = _mm256_add_epi32(isum[t][rh], _mm256_add_epi32(_mm256_madd_epi16(s01, sc),
                                                                                     _mm256_madd_epi16(s23, sc)));
                    }
                }
            }
        }
    }
}

/* One 16-row q6_K group against T tokens. */
static ALWAYS_INLINE void q6_K_group(const uint8_t *wg, int64_t nb, const uint8_t *act, size_t arb, const int T,
                                     float *y, int64_t ys) {
    __m256 acc[TILE_T][2];
    UNROLL
    for (int t = 0; t < T; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *tl = wg + i * K6_TILE;
        if (T <= 2) cm_x86_prefetch_ahead(tl, K6_TILE);
        __m256i isum[TILE_T][2];
        /* the -32 per weight first: -32 * sum_k sc[k] * bsums[k], scale
         * pairs against bsum pairs */
        UNROLL
        for (int rh = 0; rh < 2; rh++) {
            __m256i sp[8];
            UNROLL
            for (int m = 0; m < 8; m++)
                sp[m] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(tl + K6_SC + 32 * m + 16 * rh)));
            UNROLL
            for (int t = 0; t < T; t++) {
                const cm_block_q8_K *yb = (const cm_block_q8_K *)(act + (size_t)t * arb) + i;
                __m256i o = _mm256_madd_epi16(sp[0], bcast(yb->bsums));
                UNROLL
                for (int m = 1; m < 8; m++) o = _mm256_add_epi32(o, _mm256_madd_epi16(sp[m], bcast(yb->bsums + 2 * m)));
                isum[t][rh] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(o, 5));
            }
        }
        if (T <= 2) {
            q6_K_halves(tl, act, arb, i, T, 0, 2, isum);
        } else {
            q6_K_halves(tl, act, arb, i, T, 0, 1, isum);
            q6_K_halves(tl, act, arb, i, T, 1, 2, isum);
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            const __m256 dyv = _mm256_set1_ps(((const cm_block_q8_K *)(act + (size_t)t * arb) + i)->d);
            UNROLL
            for (int rh = 0; rh < 2; rh++) {
                const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tl + K6_D + 16 * rh)));
                acc[t][rh] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t][rh]), _mm256_mul_ps(dv, dyv), acc[t][rh]);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) {
        _mm256_storeu_ps(y + t * ys, acc[t][0]);
        _mm256_storeu_ps(y + t * ys + 8, acc[t][1]);
    }
}

static ALWAYS_INLINE void k45_matmul(const int q5, const void *w, int64_t n_cols, int64_t r0, int64_t r1,
                                     const void *act, size_t arb, int64_t n_tokens, float *y, int64_t ys) {
    const int64_t nb = n_cols / CM_QK_K;
    const size_t group_bytes = (size_t)nb * (q5 ? K5_TILE : K4_TILE);
    const int64_t chunk = token_chunk(arb, TILE_Q4_K);
    for (int64_t c0 = 0; c0 < n_tokens; c0 += chunk) {
        const int64_t c1 = c0 + chunk < n_tokens ? c0 + chunk : n_tokens;
        for (int64_t r = r0; r < r1; r += RR) {
            const uint8_t *wg = (const uint8_t *)w + (size_t)(r / RR) * group_bytes;
            for (int64_t t = c0; t < c1; t += TILE_Q4_K) {
                const uint8_t *a = (const uint8_t *)act + (size_t)t * arb;
                float *yt = y + t * ys + r;
                const int n = c1 - t >= TILE_Q4_K ? TILE_Q4_K : (int)(c1 - t);
#define CALL(T) k45_group(q5, wg, nb, a, arb, (T) <= TILE_Q4_K ? (T) : TILE_Q4_K, yt, ys)
                DISPATCH_T(n, TILE_Q4_K, CALL);
#undef CALL
            }
        }
    }
}

static void q4_K_matmul(const void *w, int64_t n_cols, int64_t r0, int64_t r1, const void *act, size_t arb,
                        int64_t n_tokens, float *y, int64_t ys) {
    k45_matmul(0, w, n_cols, r0, r1, act, arb, n_tokens, y, ys);
}

static void q5_K_matmul(const void *w, int64_t n_cols, int64_t r0, int64_t r1, const void *act, size_t arb,
                        int64_t n_tokens, float *y, int64_t ys) {
    k45_matmul(1, w, n_cols, r0, r1, act, arb, n_tokens, y, ys);
}

static void q6_K_matmul(const void *w, int64_t n_cols, int64_t r0, int64_t r1, const void *act, size_t arb,
                        int64_t n_tokens, float *y, int64_t ys) {
    const int64_t nb = n_cols / CM_QK_K;
    const size_t group_bytes = (size_t)nb * K6_TILE;
    const int64_t chunk = token_chunk(arb, TILE_Q6_K);
    for (int64_t c0 = 0; c0 < n_tokens; c0 += chunk) {
        const int64_t c1 = c0 + chunk < n_tokens ? c0 + chunk : n_tokens;
        for (int64_t r = r0; r < r1; r += RR) {
            const uint8_t *wg = (const uint8_t *)w + (size_t)(r / RR) * group_bytes;
            for (int64_t t = c0; t < c1; t += TILE_Q6_K) {
                const uint8_t *a = (const uint8_t *)act + (size_t)t * arb;
                float *yt = y + t * ys + r;
                const int n = c1 - t >= TILE_Q6_K ? TILE_Q6_K : (int)(c1 - t);
#define CALL(T) q6_K_group(wg, nb, a, arb, (T) <= TILE_Q6_K ? (T) : TILE_Q6_K, yt, ys)
                DISPATCH_T(n, TILE_Q6_K, CALL);
#undef CALL
            }
        }
    }
}

CM_REPACK_OPS(q4_K, Q4_K);

CM_REPACK_OPS(q6_K, Q6_K);

CM_REPACK_OPS(q5_K, Q5_K);

const struct cm_repack_ops *cm_repack_k_avx2(int src_type) {
    switch (src_type) {
    case CM_TYPE_Q4_K: return &q4_K_ops;
    case CM_TYPE_Q6_K: return &q6_K_ops;
    case CM_TYPE_Q5_K: return &q5_K_ops;
    default: return NULL;
    }
}
