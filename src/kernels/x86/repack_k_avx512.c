/* repack_k_avx512.c - the repacked layouts of repack.h for the K formats
 * with AVX-512 VNNI kernels: q4_K (CM_TYPE_Q4_K_R16), q6_K
 * (CM_TYPE_Q6_K_R16) and q5_K (CM_TYPE_Q5_K_R16, the q4_K tile plus the 5th
 * bits, described with its code below).
 *
 * A repacked matrix is a run of 16-row groups, each a run of tiles, one per
 * 256-wide super-block. Within a tile, "x[k][16]" is one value per row
 * (row r of the group at index r), and quants come in 4-byte groups, one
 * 64-byte line per group index holding those 4 bytes of all 16 rows: one
 * 512-bit load, one int32 lane per row, and VPDPBUSD against 4 broadcast
 * activation bytes advances 16 dot products.
 *
 * q4_K tile (2368 bytes for 16 rows; the file has 16 x 144 = 2304, +2.8%):
 *   f16 d[16], dmin[16]
 *   u8  sc[8][16]          sub-block scales, unpacked from the 6-bit packing
 *   u8  mn[4][16][2]       mins of sub-blocks 2k and 2k+1 side by side, so
 *                          that one zero-extension to i16 gives VPDPWSSD pairs
 *   u8  qs[4][8][16][4]    pair p, group g: bytes qs[32p + 4g .. +3] of each
 *                          row; low nibbles are elements 64p + 4g.. (sub-block
 *                          2p), high nibbles 64p + 32 + 4g.. (sub-block 2p+1)
 * The high nibbles are used in place (byte & 0xf0 = 16 * nibble): their
 * integer sums are 16 times too large and the 1/16 (exact in float) goes
 * into their scale, which saves a shift per load.
 *
 * q6_K tile (3360 bytes, the same as the file's 16 x 210):
 *   f16 d[16]
 *   i8  sc[8][16][2]       scales of 16-element groups 2m and 2m+1 side by
 *                          side (sign-extended to i16: VPDPWSSD pairs)
 *   u8  ql[2][2][8][16][4] half h, c, group g: ql[64h + 32c + 4g .. +3];
 *                          low nibbles are elements 128h + 32c + 4g..,
 *                          high nibbles 128h + 64 + 32c + 4g..
 *   u8  qh[2][8][16][4]    half h, group g: qh[32h + 4g .. +3]; bit pairs
 *                          0-1, 2-3, 4-5, 6-7 top up the elements of
 *                          (c=0, low), (c=1, low), (c=0, high), (c=1, high)
 *   The weight is q - 32 for the stored 6-bit q; VPDPBUSD takes q as it
 *   is (unsigned) and the 32 comes back out as 32 * sum_k sc[k] * bsums[k]
 *   with VPDPWSSD.
 *
 * Per token, each sub-block's 16 integer sums (exact) are converted to float
 * and multiplied by d * scale; the mins (q4_K) and the offset (q6_K) are
 * taken from the activation's bsums, once per tile and token, never per
 * element. Results equal the reference up to float summation order.
 *
 * Many tokens: a group's tile is unpacked once per super-block and reused by
 * up to 8 tokens held in registers; tokens are taken in chunks whose q8_K
 * rows fit in L2, and every group of rows [r0, r1) runs over one chunk
 * before the next chunk starts. Nothing here allocates. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/quants.h"
#include "kernels/repack.h"
#include "kernels/x86/repack_layout.h"
#include "kernels/x86/x86.h"

#define RR CM_REPACK_ROWS
#define ALWAYS_INLINE inline __attribute__((always_inline))
/* Loops over tokens and quant groups must become straight code, so that
 * their arrays live in registers. */
#define UNROLL _Pragma("GCC unroll 16")

/* Activation bytes are read 4 at a time as an int32 straight from the q8_K
 * row, so that each broadcast is a load (or folds into VPDPBUSD); a memcpy
 * to a local array became general-register moves on the shuffle port. */
typedef int32_t i32u __attribute__((may_alias, aligned(1)));

/* Activation rows per chunk: their q8_K rows should stay in L2 (1.25 MiB
 * per core) next to the weight tile stream. */
#define ACT_CHUNK_BYTES (512 * 1024)

static int64_t token_chunk(size_t act_row_bytes) {
    int64_t c = (int64_t)(ACT_CHUNK_BYTES / (act_row_bytes ? act_row_bytes : 1));
    c &= ~(int64_t)7;
    return c < 8 ? 8 : c;
}

/* ---- q4_K ---- */
/* offsets, bytes / pack / unpack_row of every tile: repack_layout.h */

/* (bsums[4k] + bsums[4k+1]) | (bsums[4k+2] + bsums[4k+3]) << 16 for k < 4:
 * the activation sums of sub-blocks 2k and 2k+1 as one VPDPWSSD pair
 * (each at most 32 * 128, so the i16 packing never saturates). */
static ALWAYS_INLINE void k4_bsum_pairs(const cm_block_q8_K *yb, int32_t out[8]) {
    const __m256i s = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)yb->bsums), _mm256_set1_epi16(1));
    /* i16 order per 128-bit lane: s0 s1 s2 s3 s0 s1 s2 s3 | s4 s5 s6 s7 ...;
     * the pairs are i32 elements 0, 1, 4, 5 */
    _mm256_storeu_si256((__m256i *)out, _mm256_packs_epi32(s, s));
}

/* after the q5_K layout below: one kernel serves both formats */
static void q4_K_matmul(const void *w, int64_t n_cols, int64_t r0, int64_t r1, const void *act, size_t arb,
                        int64_t n_tokens, float *y, int64_t ys);

CM_REPACK_OPS(q4_K, Q4_K);

/* ---- q6_K ---- */

/* (a & 0x0f) | b, b already holding only bits 4-5 (vpternlogd 0xec with
 * c = 0x0f in every byte) */
static ALWAYS_INLINE __m512i k6_merge(__m512i a, __m512i b, __m512i m4) { return _mm512_ternarylogic_epi32(a, b, m4, 0xec); }

static ALWAYS_INLINE void q6_K_group(const uint8_t *wg, int64_t nb, const uint8_t *act, size_t arb, const int T,
                                     float *y, int64_t ys) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i m30 = _mm512_set1_epi8(0x30);
    __m512 acc[8];
    UNROLL
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *tl = wg + i * K6_TILE;
        if (T <= 2) cm_x86_prefetch_ahead(tl, K6_TILE);
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tl + K6_D)));
        /* weights are q + 32: take 32 * sum_k sc[k] * bsums[k] back out */
        {
            __m512i scp[8];
            UNROLL
            for (int m = 0; m < 8; m++)
                scp[m] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(tl + K6_SC + 32 * m)));
            const __m512 d32 = _mm512_mul_ps(dv, _mm512_set1_ps(32.0f));
            UNROLL
            for (int t = 0; t < T; t++) {
                const cm_block_q8_K *yb = (const cm_block_q8_K *)(act + (size_t)t * arb) + i;
                int32_t bp[8];
                memcpy(bp, yb->bsums, 32);
                __m512i c = _mm512_dpwssd_epi32(_mm512_setzero_si512(), scp[0], _mm512_set1_epi32(bp[0]));
                UNROLL
                for (int m = 1; m < 8; m++) c = _mm512_dpwssd_epi32(c, scp[m], _mm512_set1_epi32(bp[m]));
                acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(d32, _mm512_set1_ps(yb->d)), _mm512_cvtepi32_ps(c), acc[t]);
            }
        }
        /* per token, sum of d * sc[k] * dot(sub-block k) for this super-block */
        __m512 f[8];
        UNROLL
        for (int t = 0; t < T; t++) f[t] = _mm512_setzero_ps();
        UNROLL
        for (int h = 0; h < 2; h++) {
            UNROLL
            for (int gg = 0; gg < 2; gg++) {
                UNROLL
                for (int c = 0; c < 4; c++) {
                    /* sub-block k = 8h + gg + 2c: elements 128h + 32c + 16gg
                     * + 4j of the low (c < 2) or high nibbles of ql half
                     * c % 2, topped up by qh bit pair c; scale k sits at pair
                     * k / 2, half k % 2 */
                    const int k = 8 * h + gg + 2 * c;
                    const __m512i pr =
                        _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(tl + K6_SC + 32 * (k / 2))));
                    const __m512i s32 =
                        k % 2 ? _mm512_srai_epi32(pr, 16) : _mm512_srai_epi32(_mm512_slli_epi32(pr, 16), 16);
                    const __m512 fs = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(s32));
                    __m512i V[4];
                    UNROLL
                    for (int j = 0; j < 4; j++) {
                        const int g = 4 * gg + j;
                        const __m512i l = _mm512_loadu_si512((const void *)(tl + k6_ql_at(h, c % 2, g, 0)));
                        const __m512i qh = _mm512_loadu_si512((const void *)(tl + k6_qh_at(h, g, 0)));
                        const __m512i lo = c < 2 ? l : _mm512_srli_epi16(l, 4);
                        __m512i hi;
                        switch (c) {
                        case 0: hi = _mm512_slli_epi16(qh, 4); break;
                        case 1: hi = _mm512_slli_epi16(qh, 2); break;
                        case 2: hi = qh; break;
                        default: hi = _mm512_srli_epi16(qh, 2); break;
                        }
                        V[j] = k6_merge(lo, _mm512_and_si512(hi, m30), m4);
                    }
                    UNROLL
                    for (int t = 0; t < T; t++) {
                        const cm_block_q8_K *yb = (const cm_block_q8_K *)(act + (size_t)t * arb) + i;
                        const int8_t *qa = yb->qs + 128 * h + 32 * c + 16 * gg;
                        int32_t al[4];
                        const i32u *a = (const i32u *)(const void *)qa;
                        if (T < 4) { /* as for q4_K: the local copy measured faster for few tokens */
                            memcpy(al, qa, 16);
                            a = al;
                        }
                        __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), V[0], _mm512_set1_epi32(a[0]));
                        sum = _mm512_dpbusd_epi32(sum, V[1], _mm512_set1_epi32(a[1]));
                        sum = _mm512_dpbusd_epi32(sum, V[2], _mm512_set1_epi32(a[2]));
                        sum = _mm512_dpbusd_epi32(sum, V[3], _mm512_set1_epi32(a[3]));
                        f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), fs, f[t]);
                    }
                }
            }
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            const cm_block_q8_K *yb = (const cm_block_q8_K *)(act + (size_t)t * arb) + i;
            acc[t] = _mm512_fmadd_ps(f[t], _mm512_set1_ps(yb->d), acc[t]);
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) _mm512_storeu_ps(y + t * ys, acc[t]);
}

static void q6_K_matmul(const void *w, int64_t n_cols, int64_t r0, int64_t r1, const void *act, size_t arb,
                        int64_t n_tokens, float *y, int64_t ys) {
    const int64_t nb = n_cols / CM_QK_K;
    const size_t group_bytes = (size_t)nb * K6_TILE;
    const int64_t chunk = token_chunk(arb);
    for (int64_t c0 = 0; c0 < n_tokens; c0 += chunk) {
        const int64_t c1 = c0 + chunk < n_tokens ? c0 + chunk : n_tokens;
        for (int64_t r = r0; r < r1; r += RR) {
            const uint8_t *wg = (const uint8_t *)w + (size_t)(r / RR) * group_bytes;
            for (int64_t t = c0; t < c1; t += 8) {
                const uint8_t *a = (const uint8_t *)act + (size_t)t * arb;
                float *yt = y + t * ys + r;
                switch (c1 - t >= 8 ? 8 : (int)(c1 - t)) {
                case 8: q6_K_group(wg, nb, a, arb, 8, yt, ys); break;
                case 7: q6_K_group(wg, nb, a, arb, 7, yt, ys); break;
                case 6: q6_K_group(wg, nb, a, arb, 6, yt, ys); break;
                case 5: q6_K_group(wg, nb, a, arb, 5, yt, ys); break;
                case 4: q6_K_group(wg, nb, a, arb, 4, yt, ys); break;
                case 3: q6_K_group(wg, nb, a, arb, 3, yt, ys); break;
                case 2: q6_K_group(wg, nb, a, arb, 2, yt, ys); break;
                default: q6_K_group(wg, nb, a, arb, 1, yt, ys); break;
                }
            }
        }
    }
}

CM_REPACK_OPS(q6_K, Q6_K);

/* ---- q5_K ----
 * The q4_K tile with the 5th bits added: u8 qh[8][16][4], group g = bytes
 * qh[4g .. +3] of each row (bit j of qh[l] tops up element 32j + l), after
 * mn and before qs. 2880 bytes for 16 rows; the file has 16 x 176 = 2816,
 * +2.3%. */

/* Rows of one 16-row group (tiles at `wg`) against T tokens, for q4_K
 * (q5 == 0) or q5_K (q5 == 1: the same tile plus the 5th-bit planes). */
static ALWAYS_INLINE void k45_group(const int q5, const uint8_t *wg, int64_t nb, const uint8_t *act, size_t arb,
                                    const int T, float *y, int64_t ys) {
    const __m512i m10 = _mm512_set1_epi8(0x10);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[8];
    UNROLL
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *tl = wg + i * (q5 ? K5_TILE : K4_TILE);
        if (T <= 2) cm_x86_prefetch_ahead(tl, q5 ? K5_TILE : K4_TILE);
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tl + (q5 ? K5_D : K4_D))));
        const __m512 dmv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tl + (q5 ? K5_DMIN : K4_DMIN))));
        const __m512 dv16 = _mm512_mul_ps(dv, _mm512_set1_ps(1.0f / 16.0f));
        /* min term first: acc -= dmin * dy * sum_j mn[j] * bsum32[j] */
        {
            __m512i mnv[4];
            UNROLL
            for (int k = 0; k < 4; k++)
                mnv[k] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(tl + (q5 ? K5_MN : K4_MN) + 32 * k)));
            UNROLL
            for (int t = 0; t < T; t++) {
                const cm_block_q8_K *yb = (const cm_block_q8_K *)(act + (size_t)t * arb) + i;
                int32_t bp[8];
                k4_bsum_pairs(yb, bp);
                __m512i m = _mm512_dpwssd_epi32(_mm512_setzero_si512(), mnv[0], _mm512_set1_epi32(bp[0]));
                m = _mm512_dpwssd_epi32(m, mnv[1], _mm512_set1_epi32(bp[1]));
                m = _mm512_dpwssd_epi32(m, mnv[2], _mm512_set1_epi32(bp[4]));
                m = _mm512_dpwssd_epi32(m, mnv[3], _mm512_set1_epi32(bp[5]));
                acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmv, _mm512_set1_ps(yb->d)), _mm512_cvtepi32_ps(m), acc[t]);
            }
        }
        /* per token, sum of d * sc[j] * dot(sub-block j) for this super-block */
        __m512 f[8];
        UNROLL
        for (int t = 0; t < T; t++) f[t] = _mm512_setzero_ps();
        UNROLL
        for (int j = 0; j < 8; j++) {
            /* sub-block j: the low (j even) or high nibbles of pair j / 2 */
            const int p = j / 2;
            const __m512 fs = _mm512_mul_ps(
                (j % 2 && !q5) ? dv16 : dv,
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tl + (q5 ? K5_SC : K4_SC) + j * RR)))));
            __m512i W[8];
            UNROLL
            for (int g = 0; g < 8; g++) {
                const __m512i x = _mm512_loadu_si512((const void *)(tl + (q5 ? K5_QS : K4_QS) + (p * 8 + g) * 64));
                if (q5) {
                    /* 5th bit = bit j of qh, moved to bit 4 */
                    const __m512i qh = _mm512_loadu_si512((const void *)(tl + K5_QH + g * 64));
                    const __m512i hb = j <= 4 ? _mm512_slli_epi16(qh, 4 - j) : _mm512_srli_epi16(qh, j - 4);
                    W[g] = k6_merge(j % 2 ? _mm512_srli_epi16(x, 4) : x, _mm512_and_si512(hb, m10), m4);
                } else {
                    /* high nibbles in place: 16 x the nibble, the 1/16 is in dv16 */
                    W[g] = j % 2 ? _mm512_andnot_si512(m4, x) : _mm512_and_si512(x, m4);
                }
            }
            UNROLL
            for (int t = 0; t < T; t++) {
                const cm_block_q8_K *yb = (const cm_block_q8_K *)(act + (size_t)t * arb) + i;
                __m512i s0;
                if (T >= 4) {
                    /* the tokens' chains overlap: one chain each */
                    const i32u *a = (const i32u *)(const void *)(yb->qs + 32 * j);
                    s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], _mm512_set1_epi32(a[0]));
                    UNROLL
                    for (int g = 1; g < 8; g++) s0 = _mm512_dpbusd_epi32(s0, W[g], _mm512_set1_epi32(a[g]));
                } else {
                    /* few tokens: two chains per token halve the latency;
                     * here the copy to a local measured faster than
                     * broadcasts from memory (decode is one token) */
                    int32_t a[8];
                    memcpy(a, yb->qs + 32 * j, 32);
                    s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], _mm512_set1_epi32(a[0]));
                    __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[1], _mm512_set1_epi32(a[1]));
                    UNROLL
                    for (int g = 2; g < 8; g += 2) {
                        s0 = _mm512_dpbusd_epi32(s0, W[g], _mm512_set1_epi32(a[g]));
                        s1 = _mm512_dpbusd_epi32(s1, W[g + 1], _mm512_set1_epi32(a[g + 1]));
                    }
                    s0 = _mm512_add_epi32(s0, s1);
                }
                f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), fs, f[t]);
            }
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            const cm_block_q8_K *yb = (const cm_block_q8_K *)(act + (size_t)t * arb) + i;
            acc[t] = _mm512_fmadd_ps(f[t], _mm512_set1_ps(yb->d), acc[t]);
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) _mm512_storeu_ps(y + t * ys, acc[t]);
}

static ALWAYS_INLINE void k45_matmul(const int q5, const void *w, int64_t n_cols, int64_t r0, int64_t r1,
                                     const void *act, size_t arb, int64_t n_tokens, float *y, int64_t ys) {
    const int64_t nb = n_cols / CM_QK_K;
    const size_t group_bytes = (size_t)nb * (q5 ? K5_TILE : K4_TILE);
    const int64_t chunk = token_chunk(arb);
    for (int64_t c0 = 0; c0 < n_tokens; c0 += chunk) {
        const int64_t c1 = c0 + chunk < n_tokens ? c0 + chunk : n_tokens;
        for (int64_t r = r0; r < r1; r += RR) {
            const uint8_t *wg = (const uint8_t *)w + (size_t)(r / RR) * group_bytes;
            for (int64_t t = c0; t < c1; t += 8) {
                const uint8_t *a = (const uint8_t *)act + (size_t)t * arb;
                float *yt = y + t * ys + r;
                switch (c1 - t >= 8 ? 8 : (int)(c1 - t)) {
                case 8: k45_group(q5, wg, nb, a, arb, 8, yt, ys); break;
                case 7: k45_group(q5, wg, nb, a, arb, 7, yt, ys); break;
                case 6: k45_group(q5, wg, nb, a, arb, 6, yt, ys); break;
                case 5: k45_group(q5, wg, nb, a, arb, 5, yt, ys); break;
                case 4: k45_group(q5, wg, nb, a, arb, 4, yt, ys); break;
                case 3: k45_group(q5, wg, nb, a, arb, 3, yt, ys); break;
                case 2: k45_group(q5, wg, nb, a, arb, 2, yt, ys); break;
                default: k45_group(q5, wg, nb, a, arb, 1, yt, ys); break;
                }
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

CM_REPACK_OPS(q5_K, Q5_K);

const struct cm_repack_ops *cm_repack_k_avx512(int src_type) {
    switch (src_type) {
    case CM_TYPE_Q4_K: return &q4_K_ops;
    case CM_TYPE_Q6_K: return &q6_K_ops;
    case CM_TYPE_Q5_K: return &q5_K_ops;
    default: return NULL;
    }
}
