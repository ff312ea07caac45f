/* repack_avx512.c - the repacked layouts of repack.h for q4_0
 * (CM_TYPE_Q4_0_R16) and q8_0 (CM_TYPE_Q8_0_R16) with AVX-512 VNNI kernels.
 *
 * A repacked matrix is a run of 16-row groups; a group is a run of columns,
 * one per 32-wide block, each holding the 16 rows' blocks side by side:
 *
 *   q4_0 column (288 bytes, the same as 16 file blocks of 18):
 *     f16 d[16]            the rows' scales
 *     u8  qs[4][16][4]     load k, lane r: bytes qs[4k .. 4k+3] of row r;
 *                          low nibbles are weights 4k..4k+3, high nibbles
 *                          weights 16+4k..16+4k+3, both stored as w + 8
 *   q8_0 column (544 bytes, the same as 16 file blocks of 34):
 *     f16 d[16]
 *     u8  qs[8][16][4]     load k, lane r: weights 4k..4k+3 of row r stored
 *                          unsigned as w + 128 (w ^ 0x80)
 *
 * One 512-bit load gives 4 weights of each of the 16 rows (one int32 lane
 * per row); VPDPBUSD against the 4 matching activation bytes broadcast to
 * every lane advances 16 dot products, 8 of them make a block's integer
 * dot for 16 rows. The storage offset (8 or 128) comes back out as
 * off * sum(activation block), computed once per activation block and
 * token for a matmul call (act_info), never per row; it is the initial
 * value of the integer sum. One FMA then scales 16 rows by d_w * d_a.
 * Integer sums are exact (at most 32 * 255 * 128 per block), so results
 * equal the reference up to float summation order.
 *
 * Many tokens: a group's column is loaded and unpacked once and reused by up
 * to 8 tokens held in registers (the group's columns stay in L1/L2 across
 * tiles of tokens); tokens are taken in chunks whose activation rows and
 * act_info (64 KiB on the stack) stay in L2, and every group of rows
 * [r0, r1) runs over one chunk before the next chunk starts, so weights
 * stream from memory once per chunk. Nothing here allocates. */
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

/* Q4_COL, Q8_COL and the bytes / pack / unpack_row functions: repack_layout.h */

/* An int32 that may sit at any address and alias bytes. */
typedef int32_t i32u __attribute__((may_alias, aligned(1)));

/* Per activation block and token: -off * sum of its quants, and its scale. */
typedef struct act_info {
    int32_t corr;
    float d;
} act_info;

/* act_info entries on a matmul call's stack (64 KiB): tokens per chunk are
 * INFO_MAX / blocks per row, which keeps the chunk's q8_0 rows (34 bytes a
 * block) near 280 KiB, inside L2 beside the weight stream. */
#define INFO_MAX 8192

/* ---- kernels ---- */

/* act_info of blocks [i0, i0 + n_blk) of tokens [0, n_tok) of `act`:
 * info[t * n_blk + (i - i0)]. */
static void act_info_fill(const uint8_t *act, size_t arb, int64_t n_tok, int64_t i0, int64_t n_blk, int off,
                          act_info *info) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t t = 0; t < n_tok; t++) {
        const cm_block_q8_0 *y = (const cm_block_q8_0 *)(act + (size_t)t * arb) + i0;
        act_info *o = info + t * n_blk;
        for (int64_t i = 0; i < n_blk; i++) {
            /* sum of signed bytes = sum of (byte ^ 0x80) read unsigned - 32 * 128 */
            const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)y[i].qs), flip),
                                              _mm256_setzero_si256());
            __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            h = _mm_add_epi64(h, _mm_unpackhi_epi64(h, h));
            o[i].corr = -off * ((int32_t)_mm_cvtsi128_si32(h) - 32 * 128);
            o[i].d = _cvtsh_ss(y[i].d);
        }
    }
}

/* One 16-row group (columns [i0, i0 + n_blk) at `wg`, the first of them
 * being column i0) against T tokens: y[t * ys + 0..15] (+)= the partial
 * dots. `accumulate` adds to y (a later slab of columns). */
static ALWAYS_INLINE void group_tile(const int q8, const uint8_t *wg, int64_t i0, int64_t n_blk, const uint8_t *act,
                                     size_t arb, const act_info *info, const int T, float *y, int64_t ys,
                                     int accumulate) {
    const size_t col = q8 ? Q8_COL : Q4_COL;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[8];
    UNROLL
    for (int t = 0; t < T; t++) acc[t] = accumulate ? _mm512_loadu_ps(y + t * ys) : _mm512_setzero_ps();
    for (int64_t i = 0; i < n_blk; i++) {
        const uint8_t *c = wg + (size_t)i * col;
        if (T <= 2) cm_x86_prefetch_ahead(c, (int)col);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
        __m512i W[8];
        if (q8) {
            UNROLL
            for (int k = 0; k < 8; k++) W[k] = _mm512_loadu_si512((const void *)(c + 2 * RR + 64 * k));
        } else {
            UNROLL
            for (int k = 0; k < 4; k++) {
                const __m512i x = _mm512_loadu_si512((const void *)(c + 2 * RR + 64 * k));
                W[k] = _mm512_and_si512(x, m4);
                W[4 + k] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
            }
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            const cm_block_q8_0 *yb = (const cm_block_q8_0 *)(act + (size_t)t * arb) + i0 + i;
            const act_info *ai = info + t * n_blk + i;
            /* read as int32 straight from memory, so that each broadcast
             * is a load (or folds into VPDPBUSD), not a shuffle-port move
             * from a general register as a memcpy to a local becomes */
            const i32u *a = (const i32u *)(const void *)yb->qs;
            /* q4_0: load k's low nibbles meet activation bytes 4k.., its
             * high nibbles bytes 16 + 4k..; q8_0: load k meets bytes 4k.. */
            __m512i s = _mm512_set1_epi32(ai->corr);
            if (T >= 4) {
                /* the tokens' chains run side by side: one chain each
                 * saves the zeroing and the add of a second */
                UNROLL
                for (int k = 0; k < 8; k++) s = _mm512_dpbusd_epi32(s, W[k], _mm512_set1_epi32(a[k]));
            } else {
                /* few tokens: two chains per token halve the latency */
                __m512i s1 = _mm512_setzero_si512();
                UNROLL
                for (int k = 0; k < 8; k += 2) {
                    s = _mm512_dpbusd_epi32(s, W[k], _mm512_set1_epi32(a[k]));
                    s1 = _mm512_dpbusd_epi32(s1, W[k + 1], _mm512_set1_epi32(a[k + 1]));
                }
                s = _mm512_add_epi32(s, s1);
            }
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(ai->d)), acc[t]);
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) _mm512_storeu_ps(y + t * ys, acc[t]);
}

static ALWAYS_INLINE void matmul_q(const int q8, const void *w, int64_t n_cols, int64_t r0, int64_t r1,
                                   const void *act, size_t arb, int64_t n_tokens, float *y, int64_t ys) {
    act_info info[INFO_MAX];
    const int64_t nb = n_cols / CM_QK;
    const size_t col = q8 ? Q8_COL : Q4_COL;
    const size_t group_bytes = (size_t)nb * col;
    const int off = q8 ? 128 : 8;
    /* Columns in slabs of at most INFO_MAX blocks (one slab for any real
     * model: 262144 columns), tokens in chunks whose act_info fits. */
    const int64_t slab = nb < INFO_MAX ? nb : INFO_MAX;
    int64_t chunk = INFO_MAX / slab;
    if (chunk > 8) chunk &= ~(int64_t)7;
    for (int64_t i0 = 0; i0 < nb; i0 += slab) {
        const int64_t n_blk = nb - i0 < slab ? nb - i0 : slab;
        for (int64_t c0 = 0; c0 < n_tokens; c0 += chunk) {
            const int64_t c1 = c0 + chunk < n_tokens ? c0 + chunk : n_tokens;
            const uint8_t *ac = (const uint8_t *)act + (size_t)c0 * arb;
            act_info_fill(ac, arb, c1 - c0, i0, n_blk, off, info);
            for (int64_t r = r0; r < r1; r += RR) {
                const uint8_t *wg = (const uint8_t *)w + (size_t)(r / RR) * group_bytes + (size_t)i0 * col;
                for (int64_t t = c0; t < c1; t += 8) {
                    const uint8_t *a = (const uint8_t *)act + (size_t)t * arb;
                    const act_info *ai = info + (t - c0) * n_blk;
                    float *yt = y + t * ys + r;
                    const int acc = i0 > 0;
                    switch (c1 - t >= 8 ? 8 : (int)(c1 - t)) {
                    case 8: group_tile(q8, wg, i0, n_blk, a, arb, ai, 8, yt, ys, acc); break;
                    case 7: group_tile(q8, wg, i0, n_blk, a, arb, ai, 7, yt, ys, acc); break;
                    case 6: group_tile(q8, wg, i0, n_blk, a, arb, ai, 6, yt, ys, acc); break;
                    case 5: group_tile(q8, wg, i0, n_blk, a, arb, ai, 5, yt, ys, acc); break;
                    case 4: group_tile(q8, wg, i0, n_blk, a, arb, ai, 4, yt, ys, acc); break;
                    case 3: group_tile(q8, wg, i0, n_blk, a, arb, ai, 3, yt, ys, acc); break;
                    case 2: group_tile(q8, wg, i0, n_blk, a, arb, ai, 2, yt, ys, acc); break;
                    default: group_tile(q8, wg, i0, n_blk, a, arb, ai, 1, yt, ys, acc); break;
                    }
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

CM_REPACK_OPS(q4_0, Q4_0);

CM_REPACK_OPS(q8_0, Q8_0);

const struct cm_repack_ops *cm_repack_q_avx512(int src_type) {
    switch (src_type) {
    case CM_TYPE_Q4_0: return &q4_0_ops;
    case CM_TYPE_Q8_0: return &q8_0_ops;
    default: return NULL;
    }
}
