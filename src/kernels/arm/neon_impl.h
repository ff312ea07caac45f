/* neon_impl.h - the integer dot kernels for AArch64, written once and
 * compiled twice: neon.c defines CM_ARM_ISA neon and DOT16 as a widening
 * multiply-add any ARMv8 core has; neon_dotprod.c defines CM_ARM_ISA
 * dotprod and DOT16 as SDOT (vdotq_s32). DOT16(acc, a, b) adds the 16
 * products a[k]*b[k] of two int8x16 into the four i32 lanes of acc (which
 * products land in which lane differs between the two; only lane sums are
 * used). Integer sums are exact, so both match the reference up to float
 * summation order. Include only from those two files. */
#include <arm_neon.h>
#include <string.h>

#include "kernels/arm/arm.h"
#include "kernels/quants.h"

#define CM_CAT_(a, b) a##_##b
#define CM_CAT(a, b) CM_CAT_(a, b)
#define CM_ARM_FN(name) CM_CAT(name, CM_ARM_ISA)

static inline float f16_load(cm_f16 h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

void CM_ARM_FN(cm_vec_dot_q4_0_q8_0)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    const int nb = n / CM_QK;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const uint8x16_t v0 = vld1q_u8(x[i].qs), v1 = vld1q_u8(x[i + 1].qs);
        const int8x16_t l0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v0, m4)), eight);
        const int8x16_t h0 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), eight);
        const int8x16_t l1 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v1, m4)), eight);
        const int8x16_t h1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v1, 4)), eight);
        int32x4_t p0 = vdupq_n_s32(0), p1 = vdupq_n_s32(0);
        p0 = DOT16(p0, l0, vld1q_s8(y[i].qs));
        p0 = DOT16(p0, h0, vld1q_s8(y[i].qs + 16));
        p1 = DOT16(p1, l1, vld1q_s8(y[i + 1].qs));
        p1 = DOT16(p1, h1, vld1q_s8(y[i + 1].qs + 16));
        acc0 = vmlaq_n_f32(acc0, vcvtq_f32_s32(p0), f16_load(x[i].d) * f16_load(y[i].d));
        acc1 = vmlaq_n_f32(acc1, vcvtq_f32_s32(p1), f16_load(x[i + 1].d) * f16_load(y[i + 1].d));
    }
    for (; i < nb; i++) {
        const uint8x16_t v0 = vld1q_u8(x[i].qs);
        const int8x16_t l0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v0, m4)), eight);
        const int8x16_t h0 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), eight);
        int32x4_t p0 = DOT16(vdupq_n_s32(0), l0, vld1q_s8(y[i].qs));
        p0 = DOT16(p0, h0, vld1q_s8(y[i].qs + 16));
        acc0 = vmlaq_n_f32(acc0, vcvtq_f32_s32(p0), f16_load(x[i].d) * f16_load(y[i].d));
    }
    *s = vaddvq_f32(vaddq_f32(acc0, acc1));
}

void CM_ARM_FN(cm_vec_dot_q8_0_q8_0)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q8_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    const int nb = n / CM_QK;
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        int32x4_t p0 = DOT16(vdupq_n_s32(0), vld1q_s8(x[i].qs), vld1q_s8(y[i].qs));
        p0 = DOT16(p0, vld1q_s8(x[i].qs + 16), vld1q_s8(y[i].qs + 16));
        int32x4_t p1 = DOT16(vdupq_n_s32(0), vld1q_s8(x[i + 1].qs), vld1q_s8(y[i + 1].qs));
        p1 = DOT16(p1, vld1q_s8(x[i + 1].qs + 16), vld1q_s8(y[i + 1].qs + 16));
        acc0 = vmlaq_n_f32(acc0, vcvtq_f32_s32(p0), f16_load(x[i].d) * f16_load(y[i].d));
        acc1 = vmlaq_n_f32(acc1, vcvtq_f32_s32(p1), f16_load(x[i + 1].d) * f16_load(y[i + 1].d));
    }
    for (; i < nb; i++) {
        int32x4_t p0 = DOT16(vdupq_n_s32(0), vld1q_s8(x[i].qs), vld1q_s8(y[i].qs));
        p0 = DOT16(p0, vld1q_s8(x[i].qs + 16), vld1q_s8(y[i].qs + 16));
        acc0 = vmlaq_n_f32(acc0, vcvtq_f32_s32(p0), f16_load(x[i].d) * f16_load(y[i].d));
    }
    *s = vaddvq_f32(vaddq_f32(acc0, acc1));
}

/* The 8 scales and 8 mins of a q4_K block as bytes: scales 0..3 / mins 0..3
 * are the low 6 bits of bytes 0..3 / 4..7; scales 4..7 / mins 4..7 take
 * their low 4 bits from the nibbles of bytes 8..11 and their top 2 bits
 * from the top of bytes 0..3 / 4..7. */
static inline void k4_scales_mins(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    uint32_t a0, a1, a2;
    memcpy(&a0, q, 4);
    memcpy(&a1, q + 4, 4);
    memcpy(&a2, q + 8, 4);
    uint32_t w[4] = {a0 & 0x3f3f3f3fu, (a2 & 0x0f0f0f0fu) | ((a0 >> 2) & 0x30303030u), a1 & 0x3f3f3f3fu,
                     ((a2 >> 4) & 0x0f0f0f0fu) | ((a1 >> 2) & 0x30303030u)};
    memcpy(sc, w, 8);
    memcpy(mn, w + 2, 8);
}

void CM_ARM_FN(cm_vec_dot_q4_K_q8_K)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const float dmin = y[i].d * f16_load(x[i].dmin);
        uint8_t sc[8], mn[8];
        k4_scales_mins(x[i].scales, sc, mn);
        /* min term: sum_j mn[j] * (bsums[2j] + bsums[2j+1]) */
        const int16x8_t bs = vpaddq_s16(vld1q_s16(y[i].bsums), vld1q_s16(y[i].bsums + 8));
        const int16x8_t m16 = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn)));
        int32x4_t ms = vmull_s16(vget_low_s16(bs), vget_low_s16(m16));
        ms = vmlal_s16(ms, vget_high_s16(bs), vget_high_s16(m16));
        int32x4_t isum = vdupq_n_s32(0);
        const int8_t *q8 = y[i].qs;
        for (int j = 0; j < 4; j++) {
            const uint8x16_t v0 = vld1q_u8(x[i].qs + 32 * j), v1 = vld1q_u8(x[i].qs + 32 * j + 16);
            int32x4_t pl = DOT16(vdupq_n_s32(0), vreinterpretq_s8_u8(vandq_u8(v0, m4)), vld1q_s8(q8));
            pl = DOT16(pl, vreinterpretq_s8_u8(vandq_u8(v1, m4)), vld1q_s8(q8 + 16));
            int32x4_t ph = DOT16(vdupq_n_s32(0), vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), vld1q_s8(q8 + 32));
            ph = DOT16(ph, vreinterpretq_s8_u8(vshrq_n_u8(v1, 4)), vld1q_s8(q8 + 48));
            isum = vmlaq_n_s32(isum, pl, sc[2 * j]);
            isum = vmlaq_n_s32(isum, ph, sc[2 * j + 1]);
            q8 += 64;
        }
        sum += d * (float)vaddvq_s32(isum) - dmin * (float)vaddvq_s32(ms);
    }
    *s = sum;
}

void CM_ARM_FN(cm_vec_dot_q6_K_q8_K)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q6_K *x = vx;
    const cm_block_q8_K *y = vy;
    const int nb = n / CM_QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const uint8x16_t m3 = vdupq_n_u8(0x03);
    const int8x16_t m32 = vdupq_n_s8(32);
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        int32x4_t isum = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const uint8_t *qh = x[i].qh + 32 * h;
            const int8_t *sc = x[i].scales + 8 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            /* 16 weights at a time: r selects the 32-weight run (ql low or
             * high nibbles of the first or second 32 bytes, qh bit pair r),
             * k the 16-weight half of it */
            for (int r = 0; r < 4; r++) {
                for (int k = 0; k < 2; k++) {
                    const uint8x16_t l = vld1q_u8(ql + 32 * (r & 1) + 16 * k);
                    const uint8x16_t hb = vld1q_u8(qh + 16 * k);
                    const uint8x16_t lo = r < 2 ? vandq_u8(l, m4) : vshrq_n_u8(l, 4);
                    uint8x16_t hi;
                    switch (r) {
                    case 0: hi = vandq_u8(hb, m3); break;
                    case 1: hi = vandq_u8(vshrq_n_u8(hb, 2), m3); break;
                    case 2: hi = vandq_u8(vshrq_n_u8(hb, 4), m3); break;
                    default: hi = vshrq_n_u8(hb, 6); break;
                    }
                    const int8x16_t q = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hi, 4))), m32);
                    const int32x4_t p = DOT16(vdupq_n_s32(0), q, vld1q_s8(q8 + 32 * r + 16 * k));
                    isum = vmlaq_n_s32(isum, p, sc[2 * r + k]);
                }
            }
        }
        sum += d * (float)vaddvq_s32(isum);
    }
    *s = sum;
}

/* ---- the other 32-wide and K formats ---- */

static inline int8x16_t nib_lo(uint8x16_t v) { return vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))); }
static inline int8x16_t nib_hi(uint8x16_t v) { return vreinterpretq_s8_u8(vshrq_n_u8(v, 4)); }

/* 0x10 in byte j where bit j of the 32-bit word is set, for bytes 0..15
 * (half 0) or 16..31 (half 1): the 5th bit of q5_0/q5_1 weights */
static inline uint8x16_t q5_high(const uint8_t *qh, int half) {
    uint32_t w;
    memcpy(&w, qh, 4);
    const uint8x16_t bytes = vreinterpretq_u8_u32(vdupq_n_u32(w));
    static const uint8_t idx[2][16] = {{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
                                       {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3}};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t spread = vqtbl1q_u8(bytes, vld1q_u8(idx[half]));
    return vandq_u8(vtstq_u8(spread, vld1q_u8(bit)), vdupq_n_u8(0x10));
}

void CM_ARM_FN(cm_vec_dot_q4_1_q8_1)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_1 *x = vx;
    const cm_block_q8_1 *y = vy;
    float32x4_t acc = vdupq_n_f32(0);
    float summs = 0.0f;
    for (int i = 0; i < n / CM_QK; i++) {
        const uint8x16_t v = vld1q_u8(x[i].qs);
        int32x4_t p = DOT16(vdupq_n_s32(0), nib_lo(v), vld1q_s8(y[i].qs));
        p = DOT16(p, nib_hi(v), vld1q_s8(y[i].qs + 16));
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), f16_load(x[i].d) * f16_load(y[i].d));
        summs += f16_load(x[i].m) * f16_load(y[i].s);
    }
    *s = vaddvq_f32(acc) + summs;
}

void CM_ARM_FN(cm_vec_dot_q5_0_q8_0)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    const int8x16_t m16 = vdupq_n_s8(16);
    float32x4_t acc = vdupq_n_f32(0);
    for (int i = 0; i < n / CM_QK; i++) {
        const uint8x16_t v = vld1q_u8(x[i].qs);
        const int8x16_t lo = vsubq_s8(vorrq_s8(nib_lo(v), vreinterpretq_s8_u8(q5_high(x[i].qh, 0))), m16);
        const int8x16_t hi = vsubq_s8(vorrq_s8(nib_hi(v), vreinterpretq_s8_u8(q5_high(x[i].qh, 1))), m16);
        int32x4_t p = DOT16(vdupq_n_s32(0), lo, vld1q_s8(y[i].qs));
        p = DOT16(p, hi, vld1q_s8(y[i].qs + 16));
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), f16_load(x[i].d) * f16_load(y[i].d));
    }
    *s = vaddvq_f32(acc);
}

void CM_ARM_FN(cm_vec_dot_q5_1_q8_1)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_1 *x = vx;
    const cm_block_q8_1 *y = vy;
    float32x4_t acc = vdupq_n_f32(0);
    float summs = 0.0f;
    for (int i = 0; i < n / CM_QK; i++) {
        const uint8x16_t v = vld1q_u8(x[i].qs);
        const int8x16_t lo = vorrq_s8(nib_lo(v), vreinterpretq_s8_u8(q5_high(x[i].qh, 0)));
        const int8x16_t hi = vorrq_s8(nib_hi(v), vreinterpretq_s8_u8(q5_high(x[i].qh, 1)));
        int32x4_t p = DOT16(vdupq_n_s32(0), lo, vld1q_s8(y[i].qs));
        p = DOT16(p, hi, vld1q_s8(y[i].qs + 16));
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), f16_load(x[i].d) * f16_load(y[i].d));
        summs += f16_load(x[i].m) * f16_load(y[i].s);
    }
    *s = vaddvq_f32(acc) + summs;
}

void CM_ARM_FN(cm_vec_dot_q2_K_q8_K)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q2_K *x = vx;
    const cm_block_q8_K *y = vy;
    const uint8x16_t m3 = vdupq_n_u8(3);
    float sum = 0.0f;
    for (int i = 0; i < n / CM_QK_K; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const float dmin = y[i].d * f16_load(x[i].dmin);
        int mins = 0;
        for (int k = 0; k < 16; k++) mins += (x[i].scales[k] >> 4) * y[i].bsums[k];
        int32x4_t isum = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8x16_t b0 = vld1q_u8(x[i].qs + 32 * h), b1 = vld1q_u8(x[i].qs + 32 * h + 16);
            for (int j = 0; j < 4; j++) {
                const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * j));
                const int8_t *q8 = y[i].qs + 128 * h + 32 * j;
                const uint8_t *sc = x[i].scales + 8 * h + 2 * j;
                const int8x16_t q0 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(b0, sh), m3));
                const int8x16_t q1 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(b1, sh), m3));
                isum = vmlaq_n_s32(isum, DOT16(vdupq_n_s32(0), q0, vld1q_s8(q8)), sc[0] & 0x0f);
                isum = vmlaq_n_s32(isum, DOT16(vdupq_n_s32(0), q1, vld1q_s8(q8 + 16)), sc[1] & 0x0f);
            }
        }
        sum += d * (float)vaddvq_s32(isum) - dmin * (float)mins;
    }
    *s = sum;
}

void CM_ARM_FN(cm_vec_dot_q3_K_q8_K)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q3_K *x = vx;
    const cm_block_q8_K *y = vy;
    const uint8x16_t m3 = vdupq_n_u8(3), one = vdupq_n_u8(1);
    const int8x16_t four = vdupq_n_s8(4);
    float sum = 0.0f;
    for (int i = 0; i < n / CM_QK_K; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        int sc[16];
        for (int k = 0; k < 16; k++) {
            const uint8_t *q = x[i].scales;
            int lo = k < 8 ? (q[k] & 0x0f) : (q[k - 8] >> 4);
            int hi = (q[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
            sc[k] = (lo | (hi << 4)) - 32;
        }
        const uint8x16_t hm0 = vld1q_u8(x[i].hmask), hm1 = vld1q_u8(x[i].hmask + 16);
        int32x4_t isum = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8x16_t b0 = vld1q_u8(x[i].qs + 32 * h), b1 = vld1q_u8(x[i].qs + 32 * h + 16);
            for (int j = 0; j < 4; j++) {
                const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * j));
                const int8x16_t shm = vdupq_n_s8((int8_t)(-(4 * h + j)));
                const int8_t *q8 = y[i].qs + 128 * h + 32 * j;
                /* (2 low bits | high-mask bit << 2) - 4, in [-4, 3] */
                const uint8x16_t h0 = vshlq_n_u8(vandq_u8(vshlq_u8(hm0, shm), one), 2);
                const uint8x16_t h1 = vshlq_n_u8(vandq_u8(vshlq_u8(hm1, shm), one), 2);
                const int8x16_t q0 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(vshlq_u8(b0, sh), m3), h0)), four);
                const int8x16_t q1 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(vshlq_u8(b1, sh), m3), h1)), four);
                const int *scp = sc + 8 * h + 2 * j;
                isum = vmlaq_n_s32(isum, DOT16(vdupq_n_s32(0), q0, vld1q_s8(q8)), scp[0]);
                isum = vmlaq_n_s32(isum, DOT16(vdupq_n_s32(0), q1, vld1q_s8(q8 + 16)), scp[1]);
            }
        }
        sum += d * (float)vaddvq_s32(isum);
    }
    *s = sum;
}

void CM_ARM_FN(cm_vec_dot_q5_K_q8_K)(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_K *x = vx;
    const cm_block_q8_K *y = vy;
    const uint8x16_t m4 = vdupq_n_u8(0x0f), b4 = vdupq_n_u8(0x10);
    float sum = 0.0f;
    for (int i = 0; i < n / CM_QK_K; i++) {
        const float d = y[i].d * f16_load(x[i].d);
        const float dmin = y[i].d * f16_load(x[i].dmin);
        uint8_t sc[8], mn[8];
        k4_scales_mins(x[i].scales, sc, mn);
        const int16x8_t bs = vpaddq_s16(vld1q_s16(y[i].bsums), vld1q_s16(y[i].bsums + 8));
        const int16x8_t m16 = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn)));
        int32x4_t ms = vmull_s16(vget_low_s16(bs), vget_low_s16(m16));
        ms = vmlal_s16(ms, vget_high_s16(bs), vget_high_s16(m16));
        const uint8x16_t qh0 = vld1q_u8(x[i].qh), qh1 = vld1q_u8(x[i].qh + 16);
        int32x4_t isum = vdupq_n_s32(0);
        const int8_t *q8 = y[i].qs;
        for (int j = 0; j < 4; j++) {
            const uint8x16_t v0 = vld1q_u8(x[i].qs + 32 * j), v1 = vld1q_u8(x[i].qs + 32 * j + 16);
            /* bit 2j of qh[l] is the 5th bit of the low nibble, 2j+1 of the high */
            const int8x16_t sl = vdupq_n_s8((int8_t)(4 - 2 * j)), sh = vdupq_n_s8((int8_t)(3 - 2 * j));
            const uint8x16_t l0 = vorrq_u8(vandq_u8(v0, m4), vandq_u8(vshlq_u8(qh0, sl), b4));
            const uint8x16_t l1 = vorrq_u8(vandq_u8(v1, m4), vandq_u8(vshlq_u8(qh1, sl), b4));
            const uint8x16_t h0 = vorrq_u8(vshrq_n_u8(v0, 4), vandq_u8(vshlq_u8(qh0, sh), b4));
            const uint8x16_t h1 = vorrq_u8(vshrq_n_u8(v1, 4), vandq_u8(vshlq_u8(qh1, sh), b4));
            int32x4_t pl = DOT16(vdupq_n_s32(0), vreinterpretq_s8_u8(l0), vld1q_s8(q8));
            pl = DOT16(pl, vreinterpretq_s8_u8(l1), vld1q_s8(q8 + 16));
            int32x4_t ph = DOT16(vdupq_n_s32(0), vreinterpretq_s8_u8(h0), vld1q_s8(q8 + 32));
            ph = DOT16(ph, vreinterpretq_s8_u8(h1), vld1q_s8(q8 + 48));
            isum = vmlaq_n_s32(isum, pl, sc[2 * j]);
            isum = vmlaq_n_s32(isum, ph, sc[2 * j + 1]);
            q8 += 64;
        }
        sum += d * (float)vaddvq_s32(isum) - dmin * (float)vaddvq_s32(ms);
    }
    *s = sum;
}
