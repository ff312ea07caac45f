/* avx512.c - AVX-512 kernels (F/BW/VL/DQ + VNNI) for the types that carry
 * most of a model's bytes: q4_0, q8_0, q4_K, q5_K, q6_K (a Q4_K_M file is
 * q4_K plus q6_K, Q5_K_M q5_K plus q6_K) and the float dots. Other types
 * keep their AVX2 kernel.
 *
 * Compiled with the AVX-512 flags (CMakeLists.txt matches "avx512" in the
 * name); x86.c registers these only on CPUs with all of the above.
 *
 * The 32-wide formats do two blocks per 512-bit register with VNNI's
 * dpbusd (unsigned x signed bytes summed into i32 lanes). The K formats
 * multiply bytes with maddubs and fold the per-sub-block scales in with
 * VNNI's dpwssd (i16 pairs x i16 scales into i32), one instruction where
 * AVX2 needs two. Integer sums are exact; only float summation order
 * differs from the reference. As in avx2.c, activation quants are in
 * [-127, 127] (the q8 quantizers never write -128), which the sign moves
 * below rely on. */
#include <immintrin.h>
#include <string.h>

#include "kernels/quants.h"
#include "kernels/x86/x86.h"

static inline float f16_load(cm_f16 h) { return _cvtsh_ss(h); }

static inline __m512i load_2x32(const int8_t *p0, const int8_t *p1) {
    __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p0));
    return _mm512_inserti64x4(v, _mm256_loadu_si256((const __m256i *)p1), 1);
}

/* The f16 scales `field` of 8 consecutive blocks, packed for one
 * conversion to 8 floats. Scalar loads assemble two 64-bit words, so only
 * two moves touch the vector shuffle port; a _cvtsh_ss per field costs two
 * shuffle-port uops each and made scales the bottleneck, and a hardware
 * gather measured slower still. */
#define GATHER8_F16(blk, field)                                                                            \
    _mm_set_epi64x((long long)((uint64_t)blk[4].field | (uint64_t)blk[5].field << 16 |                    \
                               (uint64_t)blk[6].field << 32 | (uint64_t)blk[7].field << 48),               \
                   (long long)((uint64_t)blk[0].field | (uint64_t)blk[1].field << 16 |                    \
                               (uint64_t)blk[2].field << 32 | (uint64_t)blk[3].field << 48))

/* permutexvar indices: lanes 0..7 <- 2k, 8..15 <- 2k+1 */
static inline __m512i pair_idx(int k) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * k)), _mm256_set1_epi32(2 * k + 1), 1);
}

/* ---- float dots ---- */

void cm_vec_dot_f32_f32_avx512(int n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), a3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a0);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static inline __m512 ld_f16(const cm_f16 *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const void *)p));
}

void cm_vec_dot_f16_f16_avx512(int n, float *s, const void *vx, const void *vy) {
    const cm_f16 *x = vx, *y = vy;
    const __mmask16 all = 0xffff;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(ld_f16(x + i, all), ld_f16(y + i, all), a0);
        a1 = _mm512_fmadd_ps(ld_f16(x + i + 16, all), ld_f16(y + i + 16, all), a1);
        a2 = _mm512_fmadd_ps(ld_f16(x + i + 32, all), ld_f16(y + i + 32, all), a2);
        a3 = _mm512_fmadd_ps(ld_f16(x + i + 48, all), ld_f16(y + i + 48, all), a3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? all : (__mmask16)((1u << (n - i)) - 1);
        a0 = _mm512_fmadd_ps(ld_f16(x + i, m), ld_f16(y + i, m), a0);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static inline __m512 ld_bf16(const cm_bf16 *p, __mmask16 m) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const void *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

void cm_vec_dot_bf16_bf16_avx512(int n, float *s, const void *vx, const void *vy) {
    const cm_bf16 *x = vx, *y = vy;
    const __mmask16 all = 0xffff;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(ld_bf16(x + i, all), ld_bf16(y + i, all), a0);
        a1 = _mm512_fmadd_ps(ld_bf16(x + i + 16, all), ld_bf16(y + i + 16, all), a1);
        a2 = _mm512_fmadd_ps(ld_bf16(x + i + 32, all), ld_bf16(y + i + 32, all), a2);
        a3 = _mm512_fmadd_ps(ld_bf16(x + i + 48, all), ld_bf16(y + i + 48, all), a3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? all : (__mmask16)((1u << (n - i)) - 1);
        a0 = _mm512_fmadd_ps(ld_bf16(x + i, m), ld_bf16(y + i, m), a0);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* ---- 32-wide formats ---- */

/* idx for permutexvar: 128-bit lanes 0, 2 <- scale 2k; lanes 1, 3 <- 2k+1
 * (the block order of the interleaved q4_0 registers below) */
static inline __m512i interleave_idx(int k) {
    const __m128i a = _mm_set1_epi32(2 * k), b = _mm_set1_epi32(2 * k + 1);
    __m512i v = _mm512_castsi128_si512(a);
    v = _mm512_inserti32x4(v, b, 1);
    v = _mm512_inserti32x4(v, a, 2);
    return _mm512_inserti32x4(v, b, 3);
}

/* 16-byte runs of blocks A and B interleaved: [A lo, B lo, A hi, B hi] for
 * nibbles, and the same order for the activations they multiply. Inserting
 * from memory costs no shuffle-port uop; only the one 256-bit insert does. */
static inline __m512i q4_pair(const uint8_t *a, const uint8_t *b) {
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                        _mm_loadu_si128((const __m128i *)b), 1);
    __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
    return _mm512_and_si512(w, _mm512_set1_epi8(0x0f));
}

static inline __m512i q8_pair_interleaved(const int8_t *a, const int8_t *b) {
    __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                         _mm_loadu_si128((const __m128i *)b), 1);
    __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + 16))),
                                         _mm_loadu_si128((const __m128i *)(b + 16)), 1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

void cm_vec_dot_q4_0_q8_0_avx512(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    const int nb = n / CM_QK;
    const __m512i eight = _mm512_set1_epi8(8);
    const __m512i idx0 = interleave_idx(0), idx1 = interleave_idx(1), idx2 = interleave_idx(2),
                  idx3 = interleave_idx(3);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    int i = 0;
    for (; i + 8 <= nb; i += 8) {
        const cm_block_q4_0 *xb = x + i;
        const cm_block_q8_0 *yb = y + i;
        __m512 dd = _mm512_castps256_ps512(
            _mm256_mul_ps(_mm256_cvtph_ps(GATHER8_F16(xb, d)), _mm256_cvtph_ps(GATHER8_F16(yb, d))));
        __m512i p[4];
        for (int k = 0; k < 4; k++) {
            __m512i qx = q4_pair(xb[2 * k].qs, xb[2 * k + 1].qs);
            __m512i qy = q8_pair_interleaved(yb[2 * k].qs, yb[2 * k + 1].qs);
            /* sum (q - 8) * y = sum q*y - sum 8*y, both unsigned x signed */
            __m512i m = _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, qy);
            p[k] = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qx, qy), m);
        }
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx0, dd), _mm512_cvtepi32_ps(p[0]), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx1, dd), _mm512_cvtepi32_ps(p[1]), acc1);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx2, dd), _mm512_cvtepi32_ps(p[2]), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx3, dd), _mm512_cvtepi32_ps(p[3]), acc1);
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < CM_QK / 2; j++) {
            sumi += ((x[i].qs[j] & 15) - 8) * y[i].qs[j];
            sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + CM_QK / 2];
        }
        sum += (float)sumi * (f16_load(x[i].d) * f16_load(y[i].d));
    }
    *s = sum;
}

void cm_vec_dot_q8_0_q8_0_avx512(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q8_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    const int nb = n / CM_QK;
    const __m512i idx0 = pair_idx(0), idx1 = pair_idx(1), idx2 = pair_idx(2), idx3 = pair_idx(3);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    int i = 0;
    for (; i + 8 <= nb; i += 8) {
        const cm_block_q8_0 *xb = x + i;
        const cm_block_q8_0 *yb = y + i;
        __m512 dd = _mm512_castps256_ps512(
            _mm256_mul_ps(_mm256_cvtph_ps(GATHER8_F16(xb, d)), _mm256_cvtph_ps(GATHER8_F16(yb, d))));
        __m512i p[4];
        for (int k = 0; k < 4; k++) {
            __m512i qx = load_2x32(xb[2 * k].qs, xb[2 * k + 1].qs);
            __m512i qy = load_2x32(yb[2 * k].qs, yb[2 * k + 1].qs);
            /* |x| read unsigned (so -128 is 128) against y carrying x's sign */
            __mmask64 neg = _mm512_movepi8_mask(qx);
            __m512i sy = _mm512_mask_sub_epi8(qy, neg, _mm512_setzero_si512(), qy);
            p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(qx), sy);
        }
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx0, dd), _mm512_cvtepi32_ps(p[0]), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx1, dd), _mm512_cvtepi32_ps(p[1]), acc1);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx2, dd), _mm512_cvtepi32_ps(p[2]), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx3, dd), _mm512_cvtepi32_ps(p[3]), acc1);
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < CM_QK; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sum += (float)sumi * (f16_load(x[i].d) * f16_load(y[i].d));
    }
    *s = sum;
}

/* ---- K formats ---- */

/* The 8 scales and 8 mins of a q4_K block as bytes (see avx2.c). */
static inline void k4_scales_mins(const uint8_t *q, uint64_t *sc, uint64_t *mn) {
    uint32_t a0, a1, a2;
    memcpy(&a0, q, 4);
    memcpy(&a1, q + 4, 4);
    memcpy(&a2, q + 8, 4);
    uint32_t sc_lo = a0 & 0x3f3f3f3fu, mn_lo = a1 & 0x3f3f3f3fu;
    uint32_t sc_hi = (a2 & 0x0f0f0f0fu) | ((a0 >> 2) & 0x30303030u);
    uint32_t mn_hi = ((a2 >> 4) & 0x0f0f0f0fu) | ((a1 >> 2) & 0x30303030u);
    *sc = (uint64_t)sc_hi << 32 | sc_lo;
    *mn = (uint64_t)mn_hi << 32 | mn_lo;
}

/* pshufb pattern: i16 lane a of each 128-bit lane into the low 256 bits,
 * lane b into the high 256 bits */
static inline __m512i lanes16(int a, int b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)((2 * a + 1) << 8 | (2 * a)))),
                              _mm256_set1_epi16((short)((2 * b + 1) << 8 | (2 * b))), 1);
}

void cm_vec_dot_q4_K_q8_K_avx512(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m512i sh0 = lanes16(0, 1), sh1 = lanes16(2, 3), sh2 = lanes16(4, 5), sh3 = lanes16(6, 7);
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const float dmin = y[i].d * f16_load(x[i].dmin);
        uint64_t sc8, mn8;
        k4_scales_mins(x[i].scales, &sc8, &mn8);
        /* min term: sum_j mn[j] * (bsums[2j] + bsums[2j+1]) */
        __m128i m = _mm_cvtsi64_si128((long long)mn8);
        __m256i mins = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m)),
                                         _mm256_loadu_si256((const __m256i *)y[i].bsums));
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mins), accm);
        const __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc8)));
        const __m512i shuf[4] = {sh0, sh1, sh2, sh3};
        __m512i sumi = _mm512_setzero_si512();
        for (int j = 0; j < 4; j++) {
            /* 32 bytes of nibbles -> [low nibbles | high nibbles], which is
             * the order of the 64 activations they multiply */
            __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(q4, m4)),
                                           _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), 1);
            __m512i p = _mm512_maddubs_epi16(q, _mm512_loadu_si512((const void *)(y[i].qs + 64 * j)));
            sumi = _mm512_dpwssd_epi32(sumi, p, _mm512_shuffle_epi8(sc, shuf[j]));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    a8 = _mm256_sub_ps(a8, accm);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    *s = _mm_cvtss_f32(r);
}

void cm_vec_dot_q5_K_q8_K_avx512(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i b4 = _mm256_set1_epi8(0x10);
    const __m512i sh0 = lanes16(0, 1), sh1 = lanes16(2, 3), sh2 = lanes16(4, 5), sh3 = lanes16(6, 7);
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const float dmin = y[i].d * f16_load(x[i].dmin);
        uint64_t sc8, mn8;
        k4_scales_mins(x[i].scales, &sc8, &mn8);
        __m128i m = _mm_cvtsi64_si128((long long)mn8);
        __m256i mins = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m)),
                                         _mm256_loadu_si256((const __m256i *)y[i].bsums));
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mins), accm);
        const __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc8)));
        const __m512i shuf[4] = {sh0, sh1, sh2, sh3};
        const __m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);
        __m512i sumi = _mm512_setzero_si512();
        for (int j = 0; j < 4; j++) {
            /* bit 2j of qh[l] is the 5th bit of the low nibble, 2j+1 of the high */
            __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            __m256i hl = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * j), 4), b4);
            __m256i hh = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * j + 1), 4), b4);
            __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_or_si256(_mm256_and_si256(q4, m4), hl)),
                                           _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), hh), 1);
            __m512i p = _mm512_maddubs_epi16(q, _mm512_loadu_si512((const void *)(y[i].qs + 64 * j)));
            sumi = _mm512_dpwssd_epi32(sumi, p, _mm512_shuffle_epi8(sc, shuf[j]));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    a8 = _mm256_sub_ps(a8, accm);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    *s = _mm_cvtss_f32(r);
}

void cm_vec_dot_q6_K_q8_K_avx512(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q6_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i m3 = _mm512_set1_epi8(3);
    /* the 2 high bits of the first register of a pair sit at qh >> 0 / >> 4,
     * of the second at qh >> 2 / >> 6 (per 256-bit half) */
    const __m512i sh_a = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i sh_b = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
    /* i16 lane l of a maddubs result covers bytes 2l, 2l+1: its 16-byte
     * group (one scale) is l / 8 */
    const __m512i idx_a = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0,
                                           0, 0, 0, 0, 0, 0, 0);
    const __m512i idx_b = _mm512_add_epi16(idx_a, _mm512_set1_epi16(4));
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const int8_t *sc = x[i].scales;
        /* value = q6 - 32, q6 in 0..63: dot the unsigned part, take
         * 32 * sum(y) per 16-group back out through bsums */
        int corr = 0;
        for (int k = 0; k < 16; k++) corr += sc[k] * y[i].bsums[k];
        __m512i sumi = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            __m512i l = _mm512_loadu_si512((const void *)(x[i].ql + 64 * h));
            __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h)));
            __m512i ha = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, sh_a), m3), 4);
            __m512i hb = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, sh_b), m3), 4);
            __m512i qa = _mm512_or_si512(_mm512_and_si512(l, m4), ha);
            __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), hb);
            __m512i sc16 = _mm512_broadcast_i32x4(_mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(sc + 8 * h))));
            const int8_t *q8 = y[i].qs + 128 * h;
            __m512i pa = _mm512_maddubs_epi16(qa, _mm512_loadu_si512((const void *)q8));
            __m512i pb = _mm512_maddubs_epi16(qb, _mm512_loadu_si512((const void *)(q8 + 64)));
            sumi = _mm512_dpwssd_epi32(sumi, pa, _mm512_permutexvar_epi16(idx_a, sc16));
            sumi = _mm512_dpwssd_epi32(sumi, pb, _mm512_permutexvar_epi16(idx_b, sc16));
        }
        sumi = _mm512_sub_epi32(sumi, _mm512_maskz_set1_epi32(1, 32 * corr));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    *s = _mm512_reduce_add_ps(acc);
}
