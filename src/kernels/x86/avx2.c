/* avx2.c - AVX2/FMA/F16C kernels: dot products of every weight type with its
 * activation type, and the activation quantizers (q8_0, q8_1, q8_K, f16).
 *
 * Compiled with -mavx2 -mfma -mf16c -mbmi2 (CMakeLists.txt matches "avx2" in
 * the name); x86.c calls into this file only on CPUs that have those. Each
 * kernel computes what its _ref twin in ref.c computes: integer products are
 * exact (every int8 x int8 pair sum fits the i16 lanes of maddubs because
 * one side is at most 63 or the other at most 127 in magnitude, see each
 * kernel), only the order of float additions differs. The quantizers round
 * exactly as the reference does (q8_0/q8_1 half away from zero, q8_K half to
 * even) so they produce the same bytes.
 *
 * Block layouts: kernels/quants.h. Unaligned loads throughout: rows come
 * straight from an mmap'd GGUF at any offset. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/quants.h"
#include "kernels/x86/x86.h"

/* ---- helpers ---- */

static inline float hsum_f32x8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline int hsum_i32x8(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(1, 0, 3, 2)));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

static inline float f16_load(cm_f16 h) { return _cvtsh_ss(h); }

/* 16 packed nibbles -> 32 bytes: low nibbles first (weights 0..15), then
 * high nibbles (weights 16..31), the order of the 32-wide formats. */
static inline __m256i nibbles_32(const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* 32 bits -> 32 bytes, 0xff where bit j of the word is set. */
static inline __m256i bits_32(const uint8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    /* byte j gets byte j/8 of w, then keeps only bit j%8 */
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                            3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)w), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
}

/* Sum of products of unsigned bytes u (<= 127 or paired with |s| small
 * enough, see callers) and signed bytes s, in 8 i32 lanes. */
static inline __m256i dot_us8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* Signed x signed: move x's sign onto y so maddubs sees |x| (<= 128 read
 * unsigned) against +-y. y is an activation quant, in [-127, 127] by
 * construction of the q8 quantizers, so negating it cannot overflow; pair
 * sums stay within 2 * 128 * 127. */
static inline __m256i dot_s8(__m256i x, __m256i y) {
    return dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* 16 i16 lanes as two halves, each multiplied by its own scale. */
static inline __m256i scale_pair(int lo, int hi) {
    return _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));
}

/* roundf (half away from zero) on 8 floats, exactly. */
static inline __m256 round_away(__m256 v) {
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 frac = _mm256_sub_ps(v, t); /* exact */
    __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    __m256 absf = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), frac);
    __m256 step = _mm256_and_ps(_mm256_cmp_ps(absf, _mm256_set1_ps(0.5f), _CMP_GE_OQ), _mm256_set1_ps(1.0f));
    return _mm256_add_ps(t, _mm256_or_ps(step, sign));
}

/* Four vectors of 8 i32 -> 32 i8 in order (values already in int8 range). */
static inline __m256i pack_i32_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_packs_epi32(a, b);
    __m256i cd = _mm256_packs_epi32(c, d);
    __m256i r = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline float absmax_32(const float *x, __m256 v[4]) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
    }
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* ---- activation quantizers ---- */

static inline __m256i q8_block(const float *x, float *d_out) {
    __m256 v[4];
    float amax = absmax_32(x, v);
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[k], vid)));
    *d_out = d;
    return pack_i32_i8(q[0], q[1], q[2], q[3]);
}

void cm_quantize_q8_0_avx2(const float *x, void *vy, int64_t n) {
    cm_block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / CM_QK; i++) {
        float d;
        __m256i q = q8_block(x + i * CM_QK, &d);
        y[i].d = cm_f32_to_f16(d);
        _mm256_storeu_si256((__m256i *)y[i].qs, q);
    }
}

void cm_quantize_q8_1_avx2(const float *x, void *vy, int64_t n) {
    cm_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / CM_QK; i++) {
        float d;
        __m256i q = q8_block(x + i * CM_QK, &d);
        _mm256_storeu_si256((__m256i *)y[i].qs, q);
        int sum = hsum_i32x8(dot_s8(_mm256_set1_epi8(1), q));
        y[i].d = cm_f32_to_f16(d);
        y[i].s = cm_f32_to_f16((float)sum * d);
    }
}

void cm_quantize_q8_K_avx2(const float *x, void *vy, int64_t n) {
    cm_block_q8_K *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / CM_QK_K; i++) {
        const float *xb = x + i * CM_QK_K;
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < CM_QK_K; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + k)));
        __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        r = _mm_max_ps(r, _mm_movehl_ps(r, r));
        r = _mm_max_ss(r, _mm_movehdup_ps(r));
        float amax = _mm_cvtss_f32(r);
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* the reference keeps the signed value of the first element of
         * largest magnitude; its sign decides which end gets -127 */
        float max = 0.0f;
        for (int k = 0; k < CM_QK_K; k++) {
            if (fabsf(xb[k]) == amax) {
                max = xb[k];
                break;
            }
        }
        const float iscale = -127.0f / max;
        __m256 vis = _mm256_set1_ps(iscale);
        for (int k = 0; k < CM_QK_K; k += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; j++) {
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xb + k + 8 * j), vis);
                /* cvtps rounds half to even, as the reference's lrintf */
                __m256i qr = _mm256_min_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(127));
                q[j] = _mm256_max_epi32(qr, _mm256_set1_epi32(-127));
            }
            _mm256_storeu_si256((__m256i *)(y[i].qs + k), pack_i32_i8(q[0], q[1], q[2], q[3]));
        }
        for (int j = 0; j < CM_QK_K / 16; j++) {
            __m128i q = _mm_loadu_si128((const __m128i *)(y[i].qs + 16 * j));
            __m256i w = _mm256_cvtepi8_epi16(q);
            __m256i s = _mm256_madd_epi16(w, _mm256_set1_epi16(1));
            y[i].bsums[j] = (int16_t)hsum_i32x8(s);
        }
        y[i].d = 1.0f / iscale;
    }
}

void cm_quantize_f16_avx2(const float *x, void *vy, int64_t n) {
    cm_f16 *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = cm_f32_to_f16(x[i]);
}

void cm_dequantize_f16_avx2(const void *vx, float *y, int64_t n) {
    const cm_f16 *x = vx;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = cm_f16_to_f32(x[i]);
}

/* ---- float dots ---- */

void cm_vec_dot_f32_f32_avx2(int n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    float sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

static inline __m256 ld_f16(const cm_f16 *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

void cm_vec_dot_f16_f16_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_f16 *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(ld_f16(x + i), ld_f16(y + i), a0);
        a1 = _mm256_fmadd_ps(ld_f16(x + i + 8), ld_f16(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(ld_f16(x + i + 16), ld_f16(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(ld_f16(x + i + 24), ld_f16(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(ld_f16(x + i), ld_f16(y + i), a0);
    float sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += cm_f16_to_f32(x[i]) * cm_f16_to_f32(y[i]);
    *s = sum;
}

static inline __m256 ld_bf16(const cm_bf16 *p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

void cm_vec_dot_bf16_bf16_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_bf16 *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(ld_bf16(x + i), ld_bf16(y + i), a0);
        a1 = _mm256_fmadd_ps(ld_bf16(x + i + 8), ld_bf16(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(ld_bf16(x + i + 16), ld_bf16(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(ld_bf16(x + i + 24), ld_bf16(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(ld_bf16(x + i), ld_bf16(y + i), a0);
    float sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += cm_bf16_to_f32(x[i]) * cm_bf16_to_f32(y[i]);
    *s = sum;
}

/* ---- 32-wide formats ---- */

void cm_vec_dot_q4_0_q8_0_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    const int nb = n / CM_QK;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m256 d = _mm256_set1_ps(f16_load(x[i].d) * f16_load(y[i].d));
        /* nibble - 8 in [-8, 7] */
        __m256i qx = _mm256_sub_epi8(nibbles_32(x[i].qs), _mm256_set1_epi8(8));
        __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_s8(qx, qy)), acc);
    }
    *s = hsum_f32x8(acc);
}

void cm_vec_dot_q4_1_q8_1_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_1 *x = vx;
    const cm_block_q8_1 *y = vy;
    const int nb = n / CM_QK;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < nb; i++) {
        summs += f16_load(x[i].m) * f16_load(y[i].s);
        __m256 d = _mm256_set1_ps(f16_load(x[i].d) * f16_load(y[i].d));
        /* nibbles are 0..15: maddubs pair sums stay within 2 * 15 * 128 */
        __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_us8(nibbles_32(x[i].qs), qy)), acc);
    }
    *s = hsum_f32x8(acc) + summs;
}

void cm_vec_dot_q5_0_q8_0_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    const int nb = n / CM_QK;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m256 d = _mm256_set1_ps(f16_load(x[i].d) * f16_load(y[i].d));
        /* q - 16 as int8: where the 5th bit is clear, nibble | 0xf0 is
         * nibble - 16; where set, the nibble itself is (nibble + 16) - 16 */
        __m256i hi = _mm256_andnot_si256(bits_32(x[i].qh), _mm256_set1_epi8((char)0xf0));
        __m256i qx = _mm256_or_si256(nibbles_32(x[i].qs), hi);
        __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_s8(qx, qy)), acc);
    }
    *s = hsum_f32x8(acc);
}

void cm_vec_dot_q5_1_q8_1_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_1 *x = vx;
    const cm_block_q8_1 *y = vy;
    const int nb = n / CM_QK;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < nb; i++) {
        summs += f16_load(x[i].m) * f16_load(y[i].s);
        __m256 d = _mm256_set1_ps(f16_load(x[i].d) * f16_load(y[i].d));
        __m256i hi = _mm256_and_si256(bits_32(x[i].qh), _mm256_set1_epi8(0x10));
        __m256i qx = _mm256_or_si256(nibbles_32(x[i].qs), hi); /* 0..31 */
        __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_us8(qx, qy)), acc);
    }
    *s = hsum_f32x8(acc) + summs;
}

void cm_vec_dot_q8_0_q8_0_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q8_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    const int nb = n / CM_QK;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m256 d = _mm256_set1_ps(f16_load(x[i].d) * f16_load(y[i].d));
        __m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs);
        __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_s8(qx, qy)), acc);
    }
    *s = hsum_f32x8(acc);
}

/* ---- K formats ---- */

/* q3_K: 16 six-bit scales (stored +32) packed in 12 bytes. */
static inline void unpack_k3_scales(const uint8_t *q, int sc[16]) {
    for (int k = 0; k < 16; k++) {
        int lo = k < 8 ? (q[k] & 0x0f) : (q[k - 8] >> 4);
        int hi = (q[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
        sc[k] = (lo | (hi << 4)) - 32;
    }
}

static inline int dot_scales_bsums(const int *sc, const int16_t *bsums, int n) {
    int r = 0;
    for (int k = 0; k < n; k++) r += sc[k] * bsums[k];
    return r;
}

void cm_vec_dot_q2_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q2_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const float dmin = y[i].d * f16_load(x[i].dmin);
        int mins = 0;
        for (int k = 0; k < 16; k++) mins += (x[i].scales[k] >> 4) * y[i].bsums[k];
        summ -= dmin * (float)mins;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int j = 0; j < 4; j++) {
                /* values 0..3: maddubs pair sums within 2 * 3 * 128 */
                __m256i q2 = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), m3);
                __m256i p = _mm256_maddubs_epi16(q2, _mm256_loadu_si256((const __m256i *)q8));
                const uint8_t *sc = x[i].scales + 8 * h + 2 * j;
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sc[0] & 0x0f, sc[1] & 0x0f)));
                q8 += 32;
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc) + summ;
}

void cm_vec_dot_q3_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q3_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        int sc[16];
        unpack_k3_scales(x[i].scales, sc);
        /* value = (q2 + 4*hbit) - 4: dot the unsigned 0..7 part, then take
         * 4 * sum(y) of each 16-group back out through bsums */
        int corr = 4 * dot_scales_bsums(sc, y[i].bsums, 16);
        __m256i hm = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int j = 0; j < 4; j++) {
                __m256i q2 = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), m3);
                __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + j), one);
                __m256i q3 = _mm256_or_si256(q2, _mm256_slli_epi16(hb, 2));
                __m256i p = _mm256_maddubs_epi16(q3, _mm256_loadu_si256((const __m256i *)q8));
                const int *scp = sc + 8 * h + 2 * j;
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(scp[0], scp[1])));
                q8 += 32;
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi, _mm256_setr_epi32(corr, 0, 0, 0, 0, 0, 0, 0))), acc);
    }
    *s = hsum_f32x8(acc);
}

/* The 8 scales and 8 mins of a q4_K/q5_K block as bytes, with 32-bit
 * masks rather than a loop: scales 0..3 / mins 0..3 are the low 6 bits of
 * bytes 0..3 / 4..7; scales 4..7 / mins 4..7 take their low 4 bits from the
 * nibbles of bytes 8..11 and their top 2 bits from the top of bytes
 * 0..3 / 4..7. */
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

/* sum_j mn[j] * (bsums[2j] + bsums[2j+1]) in 8 i32 lanes */
static inline __m256i k4_mins_dot(uint64_t mn, const int16_t *bsums) {
    __m128i m = _mm_cvtsi64_si128((long long)mn);
    __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m)); /* each min twice */
    return _mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i *)bsums));
}

/* pshufb pattern that copies i16 lane `l` (of a 128-bit lane) everywhere */
static inline __m256i lane16(int l) { return _mm256_set1_epi16((short)((2 * l + 1) << 8 | (2 * l))); }

void cm_vec_dot_q4_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const float dmin = y[i].d * f16_load(x[i].dmin);
        uint64_t sc8, mn8;
        k4_scales_mins(x[i].scales, &sc8, &mn8);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(k4_mins_dot(mn8, y[i].bsums)), accm);
        const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc8)));
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            __m256i lo = _mm256_and_si256(q4, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j)));
            __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j + 32)));
            pl = _mm256_madd_epi16(pl, _mm256_shuffle_epi8(sc, lane16(2 * j)));
            ph = _mm256_madd_epi16(ph, _mm256_shuffle_epi8(sc, lane16(2 * j + 1)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(_mm256_sub_ps(acc, accm));
}

void cm_vec_dot_q5_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i b4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const float dmin = y[i].d * f16_load(x[i].dmin);
        uint64_t sc8, mn8;
        k4_scales_mins(x[i].scales, &sc8, &mn8);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(k4_mins_dot(mn8, y[i].bsums)), accm);
        const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc8)));
        __m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            /* bit 2j of qh[l] is the 5th bit of the low nibble, 2j+1 of the high */
            __m256i hl = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * j), 4), b4);
            __m256i hh = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * j + 1), 4), b4);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q4, m4), hl);
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), hh);
            __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j)));
            __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j + 32)));
            pl = _mm256_madd_epi16(pl, _mm256_shuffle_epi8(sc, lane16(2 * j)));
            ph = _mm256_madd_epi16(ph, _mm256_shuffle_epi8(sc, lane16(2 * j + 1)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(_mm256_sub_ps(acc, accm));
}

void cm_vec_dot_q6_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q6_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const int8_t *sc = x[i].scales;
        /* value = q6 - 32 with q6 in 0..63: dot the unsigned part (pair sums
         * within 2 * 63 * 128 = 16128), take 32 * sum(y) out via bsums */
        int corr = 0;
        for (int k = 0; k < 16; k++) corr += sc[k] * y[i].bsums[k];
        corr *= 32;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            const int8_t *sch = sc + 8 * h;
            __m256i qh = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
            __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            for (int j = 0; j < 4; j++) {
                __m256i p = _mm256_maddubs_epi16(q[j], _mm256_loadu_si256((const __m256i *)(q8 + 32 * j)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sch[2 * j], sch[2 * j + 1])));
            }
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_setr_epi32(corr, 0, 0, 0, 0, 0, 0, 0));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc);
}
