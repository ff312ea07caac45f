/* gemm_avx512.c - the blocked matrix multiply for prompt processing with
 * AVX-512 VNNI, for weights whose activations are q8_0 (q4_0 and q8_0).
 *
 * A dot product per (row, token) spends most of its time on per-block
 * bookkeeping (unpacking, scale conversion, a float multiply-add per
 * 32-weight block), and that is what bounds prompt processing. Here one
 * 512-bit register holds one int32 lane per weight row, 16 rows at once:
 *
 *   panel (16 rows, repacked once per matmul into a small buffer that stays
 *   in L2, never a second resident copy of the weights), per 32-wide block:
 *     float d[16]                  the rows' scales
 *     u8    q[8][16][4]            group g, row r: weights 4g..4g+3 of row r,
 *                                  stored unsigned as w + off (off = 8 for
 *                                  q4_0, 128 for q8_0)
 *
 * For each token, the 4 activation bytes of group g are broadcast to every
 * lane and VPDPBUSD adds the 4 products into each row's lane; 8 of them make
 * the block's integer dot for 16 rows; the offset comes back out as
 * off * sum(activation block) (sums and scales converted once per matmul,
 * cm_gemm_act_info_avx512), and one FMA
 * scales 16 rows' results. Up to 8 tokens share each loaded weight group.
 * Integer sums are exact, so results match the reference up to float
 * summation order.
 *
 * Nothing here allocates; callers own the panel and info buffers. */
#include <immintrin.h>
#include <string.h>

#include "kernels/quants.h"
#include "kernels/x86/x86.h"

#define PANEL_BLOCK_BYTES (CM_GEMM_ROWS * 4 + 8 * CM_GEMM_ROWS * 4)

size_t cm_gemm_panel_bytes(int64_t n_cols) { return (size_t)(n_cols / CM_QK) * PANEL_BLOCK_BYTES; }

/* One row's 32 weights of block i as unsigned bytes, element order. */
static inline void unpack_row(int type, const uint8_t *row, int64_t i, uint8_t out[32], float *d) {
    if (type == CM_TYPE_Q4_0) {
        const cm_block_q4_0 *b = (const cm_block_q4_0 *)row + i;
        __m128i v = _mm_loadu_si128((const __m128i *)b->qs);
        const __m128i m4 = _mm_set1_epi8(0x0f);
        _mm_storeu_si128((__m128i *)out, _mm_and_si128(v, m4));
        _mm_storeu_si128((__m128i *)(out + 16), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
        *d = _cvtsh_ss(b->d);
    } else {
        const cm_block_q8_0 *b = (const cm_block_q8_0 *)row + i;
        __m256i v = _mm256_loadu_si256((const __m256i *)b->qs);
        _mm256_storeu_si256((__m256i *)out, _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80))); /* w + 128 */
        *d = _cvtsh_ss(b->d);
    }
}

void cm_gemm_pack_avx512(int type, const void *w, size_t w_row_bytes, int n_rows, int64_t n_cols, void *panel) {
    const int64_t nb = n_cols / CM_QK;
    uint8_t *p = panel;
    for (int64_t i = 0; i < nb; i++, p += PANEL_BLOCK_BYTES) {
        float *d = (float *)p;
        uint32_t *q = (uint32_t *)(p + CM_GEMM_ROWS * 4);
        for (int r = 0; r < CM_GEMM_ROWS; r++) {
            uint8_t vals[32];
            if (r < n_rows) {
                unpack_row(type, (const uint8_t *)w + (size_t)r * w_row_bytes, i, vals, &d[r]);
            } else {
                memset(vals, 0, sizeof vals);
                d[r] = 0.0f;
            }
            for (int g = 0; g < 8; g++) memcpy(&q[g * CM_GEMM_ROWS + r], vals + 4 * g, 4);
        }
    }
}

void cm_gemm_act_info_avx512(int type, const void *act, size_t act_row_bytes, int n_tok, int64_t n_cols,
                             cm_gemm_act_info *info) {
    const int64_t nb = n_cols / CM_QK;
    const int off = type == CM_TYPE_Q4_0 ? 8 : 128;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int t = 0; t < n_tok; t++) {
        const cm_block_q8_0 *y = (const cm_block_q8_0 *)((const uint8_t *)act + (size_t)t * act_row_bytes);
        for (int64_t i = 0; i < nb; i++) {
            /* sum of signed bytes = sum of (byte ^ 0x80) read unsigned - 32 * 128 */
            __m256i s = _mm256_sad_epu8(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)y[i].qs), flip),
                                        _mm256_setzero_si256());
            __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            h = _mm_add_epi64(h, _mm_unpackhi_epi64(h, h));
            const int32_t sum = (int32_t)_mm_cvtsi128_si32(h) - 32 * 128;
            info[(size_t)t * nb + i].corr = -off * sum;
            info[(size_t)t * nb + i].d = _cvtsh_ss(y[i].d);
        }
    }
}

/* T tokens (compile-time, so the accumulators stay in registers). */
#define GEMM_BODY(T)                                                                                           \
    do {                                                                                                       \
        __m512 acc[T];                                                                                         \
        for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();                                              \
        for (int64_t i = 0; i < nb; i++) {                                                                     \
            const uint8_t *pb = (const uint8_t *)panel + i * PANEL_BLOCK_BYTES;                                \
            const __m512 dx = _mm512_loadu_ps((const float *)pb);                                              \
            __m512i X[8];                                                                                      \
            for (int g = 0; g < 8; g++) X[g] = _mm512_loadu_si512((const void *)(pb + 64 + 64 * g));           \
            for (int t = 0; t < T; t++) {                                                                      \
                const cm_block_q8_0 *yb = (const cm_block_q8_0 *)(a + (size_t)t * act_row_bytes) + i;          \
                const int32_t *yq = (const int32_t *)(const void *)yb->qs;                                     \
                const cm_gemm_act_info *ai = info + (size_t)t * nb + i;                                        \
                __m512i s0 = _mm512_set1_epi32(ai->corr);                                                      \
                __m512i s1 = _mm512_setzero_si512();                                                           \
                int32_t w4[8];                                                                                 \
                memcpy(w4, yq, 32);                                                                            \
                s0 = _mm512_dpbusd_epi32(s0, X[0], _mm512_set1_epi32(w4[0]));                                  \
                s1 = _mm512_dpbusd_epi32(s1, X[1], _mm512_set1_epi32(w4[1]));                                  \
                s0 = _mm512_dpbusd_epi32(s0, X[2], _mm512_set1_epi32(w4[2]));                                  \
                s1 = _mm512_dpbusd_epi32(s1, X[3], _mm512_set1_epi32(w4[3]));                                  \
                s0 = _mm512_dpbusd_epi32(s0, X[4], _mm512_set1_epi32(w4[4]));                                  \
                s1 = _mm512_dpbusd_epi32(s1, X[5], _mm512_set1_epi32(w4[5]));                                  \
                s0 = _mm512_dpbusd_epi32(s0, X[6], _mm512_set1_epi32(w4[6]));                                  \
                s1 = _mm512_dpbusd_epi32(s1, X[7], _mm512_set1_epi32(w4[7]));                                  \
                const __m512 dd = _mm512_mul_ps(dx, _mm512_set1_ps(ai->d));                                    \
                acc[t] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[t]);            \
            }                                                                                                  \
        }                                                                                                      \
        for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + (size_t)t * y_stride, rmask, acc[t]);           \
    } while (0)

void cm_gemm_q8_0_avx512(int type, const void *panel, int n_rows, int64_t n_cols, const void *act,
                         size_t act_row_bytes, const cm_gemm_act_info *info, int n_tok, float *y, size_t y_stride) {
    const int64_t nb = n_cols / CM_QK;
    const __mmask16 rmask = (__mmask16)(n_rows >= 16 ? 0xffff : (1u << n_rows) - 1);
    const uint8_t *a = act;
    switch (n_tok) {
    case 8: GEMM_BODY(8); break;
    case 7: GEMM_BODY(7); break;
    case 6: GEMM_BODY(6); break;
    case 5: GEMM_BODY(5); break;
    case 4: GEMM_BODY(4); break;
    case 3: GEMM_BODY(3); break;
    case 2: GEMM_BODY(2); break;
    case 1: GEMM_BODY(1); break;
    default: break;
    }
}

/* ---- q4_K against q8_K ----
 * Panel per 256-wide super-block (PANEL_K4_BYTES):
 *   float dsc[8][16]   row scale d times sub-block scale, per sub-block
 *   float dmin[16]     row min scale
 *   i32   mnp[4][16]   sub-block mins 2k and 2k+1 of each row as two i16
 *   u8    q[64][16][4] group g: weights 4g..4g+3 (element order) of row r
 * Per token and sub-block, 8 VPDPBUSD give 16 rows' integer dots, one FMA
 * scales them; the min term is 4 VPDPWSSD of the rows' mins against the
 * activation's 32-element sums (from q8_K's bsums). */
#define PANEL_K4_BYTES (8 * CM_GEMM_ROWS * 4 + CM_GEMM_ROWS * 4 + 4 * CM_GEMM_ROWS * 4 + 64 * CM_GEMM_ROWS * 4)

size_t cm_gemm_panel_bytes_k(int64_t n_cols) { return (size_t)(n_cols / CM_QK_K) * PANEL_K4_BYTES; }

void cm_gemm_pack_q4_K_avx512(const void *w, size_t w_row_bytes, int n_rows, int64_t n_cols, void *panel) {
    const int64_t nb = n_cols / CM_QK_K;
    uint8_t *p = panel;
    for (int64_t i = 0; i < nb; i++, p += PANEL_K4_BYTES) {
        float *dsc = (float *)p;
        float *dmin = dsc + 8 * CM_GEMM_ROWS;
        uint32_t *mnp = (uint32_t *)(dmin + CM_GEMM_ROWS);
        uint32_t *q = mnp + 4 * CM_GEMM_ROWS;
        for (int r = 0; r < CM_GEMM_ROWS; r++) {
            uint8_t vals[CM_QK_K];
            uint8_t sc[8] = {0}, mn[8] = {0};
            float d = 0.0f, dm = 0.0f;
            if (r < n_rows) {
                const cm_block_q4_K *b = (const cm_block_q4_K *)((const uint8_t *)w + (size_t)r * w_row_bytes) + i;
                d = _cvtsh_ss(b->d);
                dm = _cvtsh_ss(b->dmin);
                for (int j = 0; j < 4; j++) {
                    sc[j] = b->scales[j] & 63;
                    mn[j] = b->scales[j + 4] & 63;
                    sc[j + 4] = (uint8_t)((b->scales[j + 8] & 0x0f) | ((b->scales[j] >> 6) << 4));
                    mn[j + 4] = (uint8_t)((b->scales[j + 8] >> 4) | ((b->scales[j + 4] >> 6) << 4));
                }
                const __m256i m4 = _mm256_set1_epi8(0x0f);
                for (int j = 0; j < 4; j++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * j));
                    _mm256_storeu_si256((__m256i *)(vals + 64 * j), _mm256_and_si256(v, m4));
                    _mm256_storeu_si256((__m256i *)(vals + 64 * j + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                }
            } else {
                memset(vals, 0, sizeof vals);
            }
            for (int j = 0; j < 8; j++) dsc[j * CM_GEMM_ROWS + r] = d * (float)sc[j];
            dmin[r] = dm;
            for (int k = 0; k < 4; k++) mnp[k * CM_GEMM_ROWS + r] = (uint32_t)mn[2 * k] | (uint32_t)mn[2 * k + 1] << 16;
            for (int g = 0; g < 64; g++) memcpy(&q[g * CM_GEMM_ROWS + r], vals + 4 * g, 4);
        }
    }
}

#define GEMM_K4_BODY(T)                                                                                        \
    do {                                                                                                       \
        __m512 acc[T];                                                                                         \
        for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();                                              \
        for (int64_t i = 0; i < nb; i++) {                                                                     \
            const uint8_t *pb = (const uint8_t *)panel + i * PANEL_K4_BYTES;                                   \
            const float *dsc = (const float *)pb;                                                              \
            const __m512 dmin = _mm512_loadu_ps(dsc + 8 * CM_GEMM_ROWS);                                       \
            const uint8_t *mnp = pb + 9 * CM_GEMM_ROWS * 4;                                                    \
            const uint8_t *qp = mnp + 4 * CM_GEMM_ROWS * 4;                                                    \
            /* min term: sum_j mn[j] * (sum of the 32 activations of sub-block j) */                           \
            for (int t = 0; t < T; t++) {                                                                      \
                const cm_block_q8_K *yb = (const cm_block_q8_K *)(a + (size_t)t * act_row_bytes) + i;          \
                __m512i m = _mm512_setzero_si512();                                                            \
                for (int k = 0; k < 4; k++) {                                                                  \
                    const int b0 = yb->bsums[4 * k] + yb->bsums[4 * k + 1];                                    \
                    const int b1 = yb->bsums[4 * k + 2] + yb->bsums[4 * k + 3];                                \
                    const int pair = (int)((uint32_t)(uint16_t)b0 | (uint32_t)(uint16_t)b1 << 16);            \
                    m = _mm512_dpwssd_epi32(m, _mm512_loadu_si512((const void *)(mnp + 64 * k)),               \
                                            _mm512_set1_epi32(pair));                                          \
                }                                                                                              \
                acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, _mm512_set1_ps(yb->d)), _mm512_cvtepi32_ps(m),   \
                                          acc[t]);                                                             \
            }                                                                                                  \
            for (int j = 0; j < 8; j++) {                                                                      \
                __m512i X[8];                                                                                  \
                for (int g = 0; g < 8; g++) X[g] = _mm512_loadu_si512((const void *)(qp + 64 * (8 * j + g)));  \
                const __m512 dsj = _mm512_loadu_ps(dsc + j * CM_GEMM_ROWS);                                    \
                for (int t = 0; t < T; t++) {                                                                  \
                    const cm_block_q8_K *yb = (const cm_block_q8_K *)(a + (size_t)t * act_row_bytes) + i;      \
                    int32_t w4[8];                                                                             \
                    memcpy(w4, yb->qs + 32 * j, 32);                                                           \
                    __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), X[0], _mm512_set1_epi32(w4[0]));  \
                    __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), X[1], _mm512_set1_epi32(w4[1]));  \
                    s0 = _mm512_dpbusd_epi32(s0, X[2], _mm512_set1_epi32(w4[2]));                              \
                    s1 = _mm512_dpbusd_epi32(s1, X[3], _mm512_set1_epi32(w4[3]));                              \
                    s0 = _mm512_dpbusd_epi32(s0, X[4], _mm512_set1_epi32(w4[4]));                              \
                    s1 = _mm512_dpbusd_epi32(s1, X[5], _mm512_set1_epi32(w4[5]));                              \
                    s0 = _mm512_dpbusd_epi32(s0, X[6], _mm512_set1_epi32(w4[6]));                              \
                    s1 = _mm512_dpbusd_epi32(s1, X[7], _mm512_set1_epi32(w4[7]));                              \
                    acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dsj, _mm512_set1_ps(yb->d)),                        \
                                             _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[t]);            \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + (size_t)t * y_stride, rmask, acc[t]);           \
    } while (0)

void cm_gemm_q4_K_avx512(const void *panel, int n_rows, int64_t n_cols, const void *act, size_t act_row_bytes,
                         int n_tok, float *y, size_t y_stride) {
    const int64_t nb = n_cols / CM_QK_K;
    const __mmask16 rmask = (__mmask16)(n_rows >= 16 ? 0xffff : (1u << n_rows) - 1);
    const uint8_t *a = act;
    switch (n_tok) {
    case 8: GEMM_K4_BODY(8); break;
    case 7: GEMM_K4_BODY(7); break;
    case 6: GEMM_K4_BODY(6); break;
    case 5: GEMM_K4_BODY(5); break;
    case 4: GEMM_K4_BODY(4); break;
    case 3: GEMM_K4_BODY(3); break;
    case 2: GEMM_K4_BODY(2); break;
    case 1: GEMM_K4_BODY(1); break;
    default: break;
    }
}

/* ---- q6_K against q8_K ----
 * Panel per 256-wide super-block (PANEL_K6_BYTES):
 *   float d[16]         row scales
 *   i32   scp[8][16]    the rows' int8 scales of 16-element groups 2m and
 *                       2m+1 as two i16 (for the offset term)
 *   i32   sc[16][16]    the same scales one per lane (for the products)
 *   u8    q[64][16][4]  weights + 32 (0..63), group g = elements 4g..4g+3
 * Per token: 4 VPDPBUSD per 16-element group, times its scale (VPMULLD),
 * summed in integers; the +32 offset comes back out as
 * 32 * sum_k sc[k] * bsums[k] through 8 VPDPWSSD; one FMA per super-block. */
#define PANEL_K6_BYTES (CM_GEMM_ROWS * 4 + 8 * CM_GEMM_ROWS * 4 + 16 * CM_GEMM_ROWS * 4 + 64 * CM_GEMM_ROWS * 4)

size_t cm_gemm_panel_bytes_k6(int64_t n_cols) { return (size_t)(n_cols / CM_QK_K) * PANEL_K6_BYTES; }

void cm_gemm_pack_q6_K_avx512(const void *w, size_t w_row_bytes, int n_rows, int64_t n_cols, void *panel) {
    const int64_t nb = n_cols / CM_QK_K;
    uint8_t *p = panel;
    for (int64_t i = 0; i < nb; i++, p += PANEL_K6_BYTES) {
        float *d = (float *)p;
        uint32_t *scp = (uint32_t *)(d + CM_GEMM_ROWS);
        int32_t *sc = (int32_t *)(scp + 8 * CM_GEMM_ROWS);
        uint32_t *q = (uint32_t *)(sc + 16 * CM_GEMM_ROWS);
        for (int r = 0; r < CM_GEMM_ROWS; r++) {
            uint8_t vals[CM_QK_K];
            int8_t s8[16] = {0};
            float dr = 0.0f;
            if (r < n_rows) {
                const cm_block_q6_K *b = (const cm_block_q6_K *)((const uint8_t *)w + (size_t)r * w_row_bytes) + i;
                dr = _cvtsh_ss(b->d);
                memcpy(s8, b->scales, 16);
                const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
                for (int h = 0; h < 2; h++) {
                    /* elements 32k..32k+31 of the half: low (k < 2) or high
                     * nibbles of ql[32(k&1)..], with qh bit pair k on top */
                    const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
                    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
                    const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
                    const __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                                           _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                           _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
                    for (int k = 0; k < 4; k++) {
                        const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), m3);
                        _mm256_storeu_si256((__m256i *)(vals + 128 * h + 32 * k),
                                            _mm256_or_si256(lo[k], _mm256_slli_epi16(hb, 4)));
                    }
                }
            } else {
                memset(vals, 32, sizeof vals); /* weight 0; its scale is 0 anyway */
            }
            d[r] = dr;
            for (int m = 0; m < 8; m++)
                scp[m * CM_GEMM_ROWS + r] = (uint32_t)(uint16_t)s8[2 * m] | (uint32_t)(uint16_t)s8[2 * m + 1] << 16;
            for (int k = 0; k < 16; k++) sc[k * CM_GEMM_ROWS + r] = s8[k];
            for (int g = 0; g < 64; g++) memcpy(&q[g * CM_GEMM_ROWS + r], vals + 4 * g, 4);
        }
    }
}

#define GEMM_K6_BODY(T)                                                                                        \
    do {                                                                                                       \
        __m512 acc[T];                                                                                         \
        for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();                                              \
        for (int64_t i = 0; i < nb; i++) {                                                                     \
            const uint8_t *pb = (const uint8_t *)panel + i * PANEL_K6_BYTES;                                   \
            const __m512 dx = _mm512_loadu_ps((const float *)pb);                                              \
            const uint8_t *scp = pb + CM_GEMM_ROWS * 4;                                                        \
            const uint8_t *scv = scp + 8 * CM_GEMM_ROWS * 4;                                                   \
            const uint8_t *qp = scv + 16 * CM_GEMM_ROWS * 4;                                                   \
            __m512i isum[T];                                                                                   \
            for (int t = 0; t < T; t++) {                                                                      \
                /* -32 * sum_k sc[k] * bsums[k] */                                                             \
                const cm_block_q8_K *yb = (const cm_block_q8_K *)(a + (size_t)t * act_row_bytes) + i;          \
                int32_t bp[8];                                                                                 \
                memcpy(bp, yb->bsums, 32);                                                                     \
                __m512i c = _mm512_setzero_si512();                                                            \
                for (int m = 0; m < 8; m++)                                                                    \
                    c = _mm512_dpwssd_epi32(c, _mm512_loadu_si512((const void *)(scp + 64 * m)),               \
                                            _mm512_set1_epi32(bp[m]));                                         \
                isum[t] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(c, 5));                   \
            }                                                                                                  \
            for (int k = 0; k < 16; k += 2) {                                                                  \
                __m512i X[8];                                                                                  \
                for (int g = 0; g < 8; g++) X[g] = _mm512_loadu_si512((const void *)(qp + 64 * (4 * k + g)));  \
                const __m512i sa = _mm512_loadu_si512((const void *)(scv + 64 * k));                           \
                const __m512i sb = _mm512_loadu_si512((const void *)(scv + 64 * (k + 1)));                     \
                for (int t = 0; t < T; t++) {                                                                  \
                    const cm_block_q8_K *yb = (const cm_block_q8_K *)(a + (size_t)t * act_row_bytes) + i;      \
                    int32_t w4[8];                                                                             \
                    memcpy(w4, yb->qs + 16 * k, 32);                                                           \
                    __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), X[0], _mm512_set1_epi32(w4[0]));  \
                    __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), X[4], _mm512_set1_epi32(w4[4]));  \
                    s0 = _mm512_dpbusd_epi32(s0, X[1], _mm512_set1_epi32(w4[1]));                              \
                    s1 = _mm512_dpbusd_epi32(s1, X[5], _mm512_set1_epi32(w4[5]));                              \
                    s0 = _mm512_dpbusd_epi32(s0, X[2], _mm512_set1_epi32(w4[2]));                              \
                    s1 = _mm512_dpbusd_epi32(s1, X[6], _mm512_set1_epi32(w4[6]));                              \
                    s0 = _mm512_dpbusd_epi32(s0, X[3], _mm512_set1_epi32(w4[3]));                              \
                    s1 = _mm512_dpbusd_epi32(s1, X[7], _mm512_set1_epi32(w4[7]));                              \
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(s0, sa));                           \
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(s1, sb));                           \
                }                                                                                              \
            }                                                                                                  \
            for (int t = 0; t < T; t++) {                                                                      \
                const cm_block_q8_K *yb = (const cm_block_q8_K *)(a + (size_t)t * act_row_bytes) + i;          \
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dx, _mm512_set1_ps(yb->d)), _mm512_cvtepi32_ps(isum[t]), \
                                         acc[t]);                                                              \
            }                                                                                                  \
        }                                                                                                      \
        for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + (size_t)t * y_stride, rmask, acc[t]);           \
    } while (0)

void cm_gemm_q6_K_avx512(const void *panel, int n_rows, int64_t n_cols, const void *act, size_t act_row_bytes,
                         int n_tok, float *y, size_t y_stride) {
    const int64_t nb = n_cols / CM_QK_K;
    const __mmask16 rmask = (__mmask16)(n_rows >= 16 ? 0xffff : (1u << n_rows) - 1);
    const uint8_t *a = act;
    switch (n_tok) {
    case 8: GEMM_K6_BODY(8); break;
    case 7: GEMM_K6_BODY(7); break;
    case 6: GEMM_K6_BODY(6); break;
    case 5: GEMM_K6_BODY(5); break;
    case 4: GEMM_K6_BODY(4); break;
    case 3: GEMM_K6_BODY(3); break;
    case 2: GEMM_K6_BODY(2); break;
    case 1: GEMM_K6_BODY(1); break;
    default: break;
    }
}
