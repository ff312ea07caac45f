/* ref.c - the portable reference of every kernel: dequantize, quantize and
 * dot product for each type, written for clarity rather than speed.
 *
 * Block layouts are those of quants.h (ggml's, byte for byte). Where an
 * element sits inside a K super-block of 256 is spelled out once, in the
 * unpack_* helpers, which turn a block into small integers (quants, sub-block
 * scales and mins); dequantize and vec_dot are then one formula each:
 *
 *   q2_K  e -> qs[32*(e/128) + e%32] bits 2*((e%128)/32); scale/min nibble e/16
 *   q3_K  same 2 bits, plus hmask[e%32] bit e/32 (clear means "minus 4");
 *         16 x 6-bit signed scales (low 4 bits in scales[0..7] nibbles,
 *         high 2 bits in scales[8..11]) minus 32
 *   q4_K  e -> qs[32*(e/64) + e%32], low nibble if e%64 < 32; 6-bit scale and
 *         min of sub-block e/32 packed as get_scale_min_k4 reads them
 *   q5_K  as q4_K, plus qh[e%32] bit e/32 as bit 4
 *   q6_K  low 4 bits in ql[64*(e/128) + 32*((e%128)/32 & 1) + e%32] (low
 *         nibble for (e%128) < 64), high 2 bits in qh[32*(e/128) + e%32] at
 *         bit 2*((e%128)/32); int8 scale e/16; value minus 32
 *
 * Dot products accumulate integer products per block (exact) and apply the
 * float scales once per block, as ggml's *_generic kernels do; the float
 * types accumulate in double. */
#include "kernels/ref.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "base/fp16.h"
#include "kernels/quants.h"

#define QK CM_QK
#define QKK CM_QK_K

static inline float h2f(cm_f16 h) { return cm_f16_to_f32(h); }
static inline cm_f16 f2h(float f) { return cm_f32_to_f16(f); }

/* Round half to even, like ggml's nearest_int (the K formats use it). */
static inline int nearest(float v) { return (int)lrintf(v); }

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The value of largest magnitude, sign kept (0 for an all-zero block). */
static float signed_absmax(const float *x, int n) {
    float amax = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            mx = x[i];
        }
    }
    return mx;
}

/* ---- float types ---- */

void cm_dequantize_f32_ref(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }
void cm_quantize_f32_ref(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

void cm_dequantize_f16_ref(const void *x, float *y, int64_t n) {
    const cm_f16 *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = cm_f16_to_f32(h[i]);
}

void cm_quantize_f16_ref(const float *x, void *y, int64_t n) {
    cm_f16 *h = y;
    for (int64_t i = 0; i < n; i++) h[i] = cm_f32_to_f16(x[i]);
}

void cm_dequantize_bf16_ref(const void *x, float *y, int64_t n) {
    const cm_bf16 *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = cm_bf16_to_f32(h[i]);
}

void cm_quantize_bf16_ref(const float *x, void *y, int64_t n) {
    cm_bf16 *h = y;
    for (int64_t i = 0; i < n; i++) h[i] = cm_f32_to_bf16(x[i]);
}

void cm_vec_dot_f32_f32_ref(int n, float *s, const void *x, const void *y) {
    const float *a = x, *b = y;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)a[i] * b[i];
    *s = (float)sum;
}

void cm_vec_dot_f16_f16_ref(int n, float *s, const void *x, const void *y) {
    const cm_f16 *a = x, *b = y;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)(cm_f16_to_f32(a[i]) * cm_f16_to_f32(b[i]));
    *s = (float)sum;
}

void cm_vec_dot_bf16_bf16_ref(int n, float *s, const void *x, const void *y) {
    const cm_bf16 *a = x, *b = y;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)(cm_bf16_to_f32(a[i]) * cm_bf16_to_f32(b[i]));
    *s = (float)sum;
}

/* ---- 32-wide formats ---- */

void cm_quantize_q4_0_ref(const float *x, void *vy, int64_t n) {
    cm_block_q4_0 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        /* The extreme value maps to -8, the one end of [-8, 7] that has no
         * positive twin, so the whole range is used. */
        const float d = signed_absmax(x, QK) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[ib].d = f2h(d);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + QK / 2] * id + 8.5f);
            y[ib].qs[j] = (uint8_t)(clampi(q0, 0, 15) | clampi(q1, 0, 15) << 4);
        }
    }
}

void cm_dequantize_q4_0_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q4_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = ((x[ib].qs[j] & 15) - 8) * d;
            y[j + QK / 2] = ((x[ib].qs[j] >> 4) - 8) * d;
        }
    }
}

static void minmax(const float *x, int n, float *lo, float *hi) {
    *lo = x[0];
    *hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < *lo) *lo = x[i];
        if (x[i] > *hi) *hi = x[i];
    }
}

void cm_quantize_q4_1_ref(const float *x, void *vy, int64_t n) {
    cm_block_q4_1 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        float lo, hi;
        minmax(x, QK, &lo, &hi);
        const float d = (hi - lo) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[ib].d = f2h(d);
        y[ib].m = f2h(lo);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (int)((x[j] - lo) * id + 0.5f), q1 = (int)((x[j + QK / 2] - lo) * id + 0.5f);
            y[ib].qs[j] = (uint8_t)(clampi(q0, 0, 15) | clampi(q1, 0, 15) << 4);
        }
    }
}

void cm_dequantize_q4_1_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q4_1 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d), m = h2f(x[ib].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (x[ib].qs[j] & 15) * d + m;
            y[j + QK / 2] = (x[ib].qs[j] >> 4) * d + m;
        }
    }
}

/* q5 blocks: bit j of the little-endian 32-bit qh is the 5th bit of weight j. */
static inline uint32_t load_qh(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

static inline void store_qh(uint8_t qh[4], uint32_t v) {
    for (int i = 0; i < 4; i++) qh[i] = (uint8_t)(v >> (8 * i));
}

/* Weight j (0..31) of a q5 block as an unsigned 5-bit value. */
static inline int q5_get(const uint8_t *qs, uint32_t qh, int j) {
    int lo = j < QK / 2 ? qs[j] & 15 : qs[j - QK / 2] >> 4;
    return lo | (int)((qh >> j) & 1) << 4;
}

static void q5_put(const int q[QK], uint8_t *qs, uint8_t qh[4]) {
    uint32_t h = 0;
    for (int j = 0; j < QK / 2; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | (q[j + QK / 2] & 15) << 4);
        h |= (uint32_t)(q[j] >> 4 & 1) << j;
        h |= (uint32_t)(q[j + QK / 2] >> 4 & 1) << (j + QK / 2);
    }
    store_qh(qh, h);
}

void cm_quantize_q5_0_ref(const float *x, void *vy, int64_t n) {
    cm_block_q5_0 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        const float d = signed_absmax(x, QK) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        int q[QK];
        for (int j = 0; j < QK; j++) q[j] = clampi((int)(x[j] * id + 16.5f), 0, 31);
        y[ib].d = f2h(d);
        q5_put(q, y[ib].qs, y[ib].qh);
    }
}

void cm_dequantize_q5_0_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q5_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d);
        const uint32_t qh = load_qh(x[ib].qh);
        for (int j = 0; j < QK; j++) y[j] = (q5_get(x[ib].qs, qh, j) - 16) * d;
    }
}

void cm_quantize_q5_1_ref(const float *x, void *vy, int64_t n) {
    cm_block_q5_1 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        float lo, hi;
        minmax(x, QK, &lo, &hi);
        const float d = (hi - lo) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        int q[QK];
        for (int j = 0; j < QK; j++) q[j] = clampi((int)((x[j] - lo) * id + 0.5f), 0, 31);
        y[ib].d = f2h(d);
        y[ib].m = f2h(lo);
        q5_put(q, y[ib].qs, y[ib].qh);
    }
}

void cm_dequantize_q5_1_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q5_1 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d), m = h2f(x[ib].m);
        const uint32_t qh = load_qh(x[ib].qh);
        for (int j = 0; j < QK; j++) y[j] = q5_get(x[ib].qs, qh, j) * d + m;
    }
}

static float absmax(const float *x, int n) {
    float amax = 0;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

void cm_quantize_q8_0_ref(const float *x, void *vy, int64_t n) {
    cm_block_q8_0 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        const float d = absmax(x, QK) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[ib].d = f2h(d);
        for (int j = 0; j < QK; j++) y[ib].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

void cm_dequantize_q8_0_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q8_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d);
        for (int j = 0; j < QK; j++) y[j] = x[ib].qs[j] * d;
    }
}

void cm_quantize_q8_1_ref(const float *x, void *vy, int64_t n) {
    cm_block_q8_1 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        const float d = absmax(x, QK) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[ib].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[ib].qs[j];
        }
        y[ib].d = f2h(d);
        /* s carries the block's sum for the min term of q4_1/q5_1 dots. */
        y[ib].s = f2h((float)sum * d);
    }
}

void cm_dequantize_q8_1_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q8_1 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d);
        for (int j = 0; j < QK; j++) y[j] = x[ib].qs[j] * d;
    }
}

void cm_vec_dot_q4_0_q8_0_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += ((x[ib].qs[j] & 15) - 8) * y[ib].qs[j];
            sumi += ((x[ib].qs[j] >> 4) - 8) * y[ib].qs[j + QK / 2];
        }
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d));
    }
    *s = sum;
}

void cm_vec_dot_q4_1_q8_1_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_1 *x = vx;
    const cm_block_q8_1 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += (x[ib].qs[j] & 15) * y[ib].qs[j];
            sumi += (x[ib].qs[j] >> 4) * y[ib].qs[j + QK / 2];
        }
        /* sum_j (d*q_j + m) * dy*y_j = d*dy*sumi + m * (dy * sum_j y_j) */
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d)) + h2f(x[ib].m) * h2f(y[ib].s);
    }
    *s = sum;
}

void cm_vec_dot_q5_0_q8_0_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        const uint32_t qh = load_qh(x[ib].qh);
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += (q5_get(x[ib].qs, qh, j) - 16) * y[ib].qs[j];
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d));
    }
    *s = sum;
}

void cm_vec_dot_q5_1_q8_1_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_1 *x = vx;
    const cm_block_q8_1 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        const uint32_t qh = load_qh(x[ib].qh);
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += q5_get(x[ib].qs, qh, j) * y[ib].qs[j];
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d)) + h2f(x[ib].m) * h2f(y[ib].s);
    }
    *s = sum;
}

void cm_vec_dot_q8_0_q8_0_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q8_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += x[ib].qs[j] * y[ib].qs[j];
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d));
    }
    *s = sum;
}

/* ---- K formats: unpacking ---- */

/* 2-bit field of element e in the q2_K/q3_K qs array. */
static inline int k_2bit(const uint8_t *qs, int e) {
    return (qs[32 * (e >> 7) + (e & 31)] >> (2 * ((e & 127) >> 5))) & 3;
}

static void unpack_q2_K(const cm_block_q2_K *b, int8_t q[QKK]) {
    for (int e = 0; e < QKK; e++) q[e] = (int8_t)k_2bit(b->qs, e);
}

static void unpack_q3_K(const cm_block_q3_K *b, int8_t q[QKK], int sc[16]) {
    for (int e = 0; e < QKK; e++) {
        int high = (b->hmask[e & 31] >> (e >> 5)) & 1;
        q[e] = (int8_t)(k_2bit(b->qs, e) - (high ? 0 : 4));
    }
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? b->scales[j] & 15 : b->scales[j - 8] >> 4;
        int hi = (b->scales[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        sc[j] = (lo | hi << 4) - 32;
    }
}

/* Scale and min of sub-block j (0..7) from the 12 packed bytes of q4_K/q5_K:
 * bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3, bytes 8-11 the
 * low nibbles of scale (lo) and min (hi) 4-7, whose top 2 bits ride in the
 * top 2 bits of bytes 0-3 (scales) and 4-7 (mins). */
static inline void k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

static void k4_pack(uint8_t *s, const int sc[8], const int m[8]) {
    memset(s, 0, CM_K_SCALE_SIZE);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] |= (uint8_t)sc[j];
            s[j + 4] |= (uint8_t)m[j];
        } else {
            s[j + 4] = (uint8_t)((sc[j] & 15) | (m[j] & 15) << 4);
            s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            s[j] |= (uint8_t)((m[j] >> 4) << 6);
        }
    }
}

static inline int q4k_nibble(const uint8_t *qs, int e) {
    uint8_t byte = qs[32 * (e >> 6) + (e & 31)];
    return (e & 63) < 32 ? byte & 15 : byte >> 4;
}

static void unpack_q4_K(const cm_block_q4_K *b, int8_t q[QKK], int sc[8], int m[8]) {
    for (int e = 0; e < QKK; e++) q[e] = (int8_t)q4k_nibble(b->qs, e);
    for (int j = 0; j < 8; j++) k4_scale_min(b->scales, j, &sc[j], &m[j]);
}

static void unpack_q5_K(const cm_block_q5_K *b, int8_t q[QKK], int sc[8], int m[8]) {
    for (int e = 0; e < QKK; e++) q[e] = (int8_t)(q4k_nibble(b->qs, e) | ((b->qh[e & 31] >> (e >> 5)) & 1) << 4);
    for (int j = 0; j < 8; j++) k4_scale_min(b->scales, j, &sc[j], &m[j]);
}

static void unpack_q6_K(const cm_block_q6_K *b, int8_t q[QKK]) {
    for (int e = 0; e < QKK; e++) {
        int h = e >> 7, r = e & 127, k = r >> 5, l = e & 31;
        uint8_t lo = b->ql[64 * h + 32 * (k & 1) + l];
        int nib = k < 2 ? lo & 15 : lo >> 4;
        int hi = (b->qh[32 * h + l] >> (2 * k)) & 3;
        q[e] = (int8_t)((nib | hi << 4) - 32);
    }
}

/* ---- K formats: dequantize ---- */

void cm_dequantize_q2_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q2_K *x = vx;
    int8_t q[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d), dmin = h2f(x[ib].dmin);
        unpack_q2_K(&x[ib], q);
        for (int e = 0; e < QKK; e++) {
            const uint8_t sm = x[ib].scales[e / 16];
            y[e] = d * (sm & 15) * q[e] - dmin * (sm >> 4);
        }
    }
}

void cm_dequantize_q3_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q3_K *x = vx;
    int8_t q[QKK];
    int sc[16];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d);
        unpack_q3_K(&x[ib], q, sc);
        for (int e = 0; e < QKK; e++) y[e] = d * sc[e / 16] * q[e];
    }
}

void cm_dequantize_q4_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q4_K *x = vx;
    int8_t q[QKK];
    int sc[8], m[8];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d), dmin = h2f(x[ib].dmin);
        unpack_q4_K(&x[ib], q, sc, m);
        for (int e = 0; e < QKK; e++) y[e] = d * sc[e / 32] * q[e] - dmin * m[e / 32];
    }
}

void cm_dequantize_q5_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q5_K *x = vx;
    int8_t q[QKK];
    int sc[8], m[8];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d), dmin = h2f(x[ib].dmin);
        unpack_q5_K(&x[ib], q, sc, m);
        for (int e = 0; e < QKK; e++) y[e] = d * sc[e / 32] * q[e] - dmin * m[e / 32];
    }
}

void cm_dequantize_q6_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q6_K *x = vx;
    int8_t q[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d);
        unpack_q6_K(&x[ib], q);
        for (int e = 0; e < QKK; e++) y[e] = d * x[ib].scales[e / 16] * q[e];
    }
}

void cm_dequantize_q8_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q8_K *x = vx;
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK)
        for (int e = 0; e < QKK; e++) y[e] = x[ib].d * x[ib].qs[e];
}

/* ---- K formats: dot products against q8_K ---- */

/* sum over sub-block j of q*y, for sub-blocks of `len` elements */
static void subdots(const int8_t *q, const int8_t *y, int len, int n_sub, int *out) {
    for (int j = 0; j < n_sub; j++) {
        int s = 0;
        for (int l = 0; l < len; l++) s += q[j * len + l] * y[j * len + l];
        out[j] = s;
    }
}

void cm_vec_dot_q2_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q2_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sd[16];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q2_K(&x[ib], q);
        subdots(q, y[ib].qs, 16, 16, sd);
        int isum = 0, msum = 0;
        for (int j = 0; j < 16; j++) {
            isum += (x[ib].scales[j] & 15) * sd[j];
            msum += (x[ib].scales[j] >> 4) * y[ib].bsums[j];
        }
        sum += y[ib].d * h2f(x[ib].d) * isum - y[ib].d * h2f(x[ib].dmin) * msum;
    }
    *s = sum;
}

void cm_vec_dot_q3_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q3_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sc[16], sd[16];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q3_K(&x[ib], q, sc);
        subdots(q, y[ib].qs, 16, 16, sd);
        int isum = 0;
        for (int j = 0; j < 16; j++) isum += sc[j] * sd[j];
        sum += y[ib].d * h2f(x[ib].d) * isum;
    }
    *s = sum;
}

/* q4_K and q5_K differ only in unpacking. */
static float dot_k4(const int8_t *q, const int sc[8], const int m[8], cm_f16 d, cm_f16 dmin, const cm_block_q8_K *y) {
    int sd[8];
    subdots(q, y->qs, 32, 8, sd);
    int isum = 0, msum = 0;
    for (int j = 0; j < 8; j++) {
        isum += sc[j] * sd[j];
        msum += m[j] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    return y->d * h2f(d) * isum - y->d * h2f(dmin) * msum;
}

void cm_vec_dot_q4_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sc[8], m[8];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q4_K(&x[ib], q, sc, m);
        sum += dot_k4(q, sc, m, x[ib].d, x[ib].dmin, &y[ib]);
    }
    *s = sum;
}

void cm_vec_dot_q5_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sc[8], m[8];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q5_K(&x[ib], q, sc, m);
        sum += dot_k4(q, sc, m, x[ib].d, x[ib].dmin, &y[ib]);
    }
    *s = sum;
}

void cm_vec_dot_q6_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q6_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sd[16];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q6_K(&x[ib], q);
        subdots(q, y[ib].qs, 16, 16, sd);
        int isum = 0;
        for (int j = 0; j < 16; j++) isum += x[ib].scales[j] * sd[j];
        sum += y[ib].d * h2f(x[ib].d) * isum;
    }
    *s = sum;
}

/* ---- K formats: quantizers ----
 *
 * Simpler than ggml's weighted search, same bytes format: each sub-block is
 * fitted on its own (min/max, then a few least-squares refinements for the
 * asymmetric formats; max-abs, then one least-squares step for the
 * symmetric ones), the sub-block scales are quantized to their stored width
 * against the super-block's largest, and finally every weight is rounded
 * again against the scales as they will be decoded, so rounding of the
 * scales does not add to the error twice. */

/* Squared error of x against step*L + mn, L rounded into [0, nmax]. */
static float asym_error(const float *x, int n, int nmax, float step, float mn, uint8_t *L) {
    float err = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(nearest((x[i] - mn) / step), 0, nmax);
        const float e = step * L[i] + mn - x[i];
        err += e * e;
    }
    return err;
}

/* Least-squares step and offset for fixed L, the offset kept <= 0. */
static int asym_lsq(const float *x, const uint8_t *L, int n, float *step, float *mn) {
    float sl = 0, sl2 = 0, sx = 0, sxl = 0;
    for (int i = 0; i < n; i++) {
        sl += L[i];
        sl2 += (float)L[i] * L[i];
        sx += x[i];
        sxl += x[i] * L[i];
    }
    const float det = n * sl2 - sl * sl;
    if (!(det > 0)) return 0;
    float s = (n * sxl - sx * sl) / det, m = (sl2 * sx - sl * sxl) / det;
    if (m > 0) {
        m = 0;
        s = sxl / sl2;
    }
    if (!(s > 0)) return 0;
    *step = s;
    *mn = m;
    return 1;
}

/* Fits x ~= scale*L - the_min with L in [0, nmax] and the_min >= 0 (the
 * formats subtract a non-negative min). Starts from min/max, then tries a
 * few steps around (max-min)/nmax, each refitted by least squares, and keeps
 * the one with the least squared error. Returns scale >= 0. */
static float fit_asym(const float *x, int n, int nmax, float *the_min) {
    float lo, hi;
    minmax(x, n, &lo, &hi);
    if (lo > 0) lo = 0;
    if (hi <= lo) {
        *the_min = -lo;
        return 0;
    }
    uint8_t L[32];
    float scale = (hi - lo) / nmax, mn = lo;
    float best = asym_error(x, n, nmax, scale, mn, L);
    for (int k = -10; k <= 10; k++) {
        float s, m;
        asym_error(x, n, nmax, (hi - lo) / (nmax + 0.1f * k), lo, L);
        if (!asym_lsq(x, L, n, &s, &m)) continue;
        const float err = asym_error(x, n, nmax, s, m, L);
        if (err < best) {
            best = err;
            scale = s;
            mn = m;
        }
    }
    *the_min = -mn;
    return scale;
}

/* Squared error of x against step*L, L rounded into [-nlo, nlo-1]; also
 * the least-squares step for that L. */
static float sym_error(const float *x, int n, int nlo, float step, float *lsq_step) {
    float err = 0, sxl = 0, sl2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest(x[i] / step), -nlo, nlo - 1);
        const float e = step * l - x[i];
        err += e * e;
        sxl += x[i] * l;
        sl2 += (float)l * l;
    }
    *lsq_step = sl2 > 0 && sxl != 0 ? sxl / sl2 : step;
    return err;
}

/* Fits x ~= scale*L with L in [-nlo, nlo-1]. The scale is signed so that
 * the value of largest magnitude lands near -nlo, the end without a positive
 * twin; a few steps around that are tried, each refitted by least squares. */
static float fit_sym(const float *x, int n, int nlo) {
    const float mx = signed_absmax(x, n);
    if (mx == 0) return 0;
    float lsq, scale = mx / -nlo;
    float best = sym_error(x, n, nlo, scale, &lsq);
    for (int k = -10; k <= 10; k++) {
        sym_error(x, n, nlo, mx / -(nlo + 0.1f * k), &lsq);
        float unused;
        const float err = sym_error(x, n, nlo, lsq, &unused);
        if (err < best) {
            best = err;
            scale = lsq;
        }
    }
    return scale;
}

/* Quantizes n_sub non-negative values v to integers in [0, qmax] against
 * their maximum; returns the step (0 when all are 0). */
static float quant_pos(const float *v, int n_sub, int qmax, int *out) {
    float mx = 0;
    for (int j = 0; j < n_sub; j++) mx = fmaxf(mx, v[j]);
    float inv = mx > 0 ? qmax / mx : 0;
    for (int j = 0; j < n_sub; j++) out[j] = clampi(nearest(inv * v[j]), 0, qmax);
    return mx / qmax;
}

void cm_quantize_q2_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q2_K *y = vy;
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        float scales[16], mins[16];
        int ls[16], lm[16];
        for (int j = 0; j < 16; j++) scales[j] = fit_asym(x + 16 * j, 16, 3, &mins[j]);
        y[ib].d = f2h(quant_pos(scales, 16, 15, ls));
        y[ib].dmin = f2h(quant_pos(mins, 16, 15, lm));
        const float d = h2f(y[ib].d), dmin = h2f(y[ib].dmin);
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        for (int j = 0; j < 16; j++) {
            y[ib].scales[j] = (uint8_t)(ls[j] | lm[j] << 4);
            const float dl = d * ls[j], ml = dmin * lm[j];
            for (int l = 0; l < 16; l++) {
                int e = 16 * j + l;
                int q = dl ? clampi(nearest((x[e] + ml) / dl), 0, 3) : 0;
                y[ib].qs[32 * (e >> 7) + (e & 31)] |= (uint8_t)(q << (2 * ((e & 127) >> 5)));
            }
        }
    }
}

void cm_quantize_q3_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q3_K *y = vy;
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        float scales[16];
        for (int j = 0; j < 16; j++) scales[j] = fit_sym(x + 16 * j, 16, 4);
        const float smax = signed_absmax(scales, 16);
        memset(y[ib].scales, 0, sizeof(y[ib].scales));
        memset(y[ib].hmask, 0, sizeof(y[ib].hmask));
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        /* 6-bit signed sub-scales in [-32, 31]; the largest maps to -32. */
        const float inv = smax ? -32 / smax : 0;
        y[ib].d = f2h(smax ? 1 / inv : 0.0f);
        const float d = h2f(y[ib].d);
        for (int j = 0; j < 16; j++) {
            int sc = clampi(nearest(inv * scales[j]), -32, 31);
            int u = sc + 32;
            if (j < 8)
                y[ib].scales[j] |= (uint8_t)(u & 15);
            else
                y[ib].scales[j - 8] |= (uint8_t)((u & 15) << 4);
            y[ib].scales[8 + (j & 3)] |= (uint8_t)((u >> 4) << (2 * (j >> 2)));
            const float dl = d * sc;
            for (int l = 0; l < 16; l++) {
                int e = 16 * j + l;
                int q = dl ? clampi(nearest(x[e] / dl), -4, 3) : 0;
                /* stored as q+4 in 3 bits: the high bit set means "no -4" */
                int u3 = q + 4;
                if (u3 > 3) y[ib].hmask[e & 31] |= (uint8_t)(1 << (e >> 5));
                y[ib].qs[32 * (e >> 7) + (e & 31)] |= (uint8_t)((u3 & 3) << (2 * ((e & 127) >> 5)));
            }
        }
    }
}

/* q4_K and q5_K share everything but the width of a quant. */
static void quantize_k4(const float *x, int nmax, cm_f16 *d_out, cm_f16 *dmin_out, uint8_t *scales, int L[QKK]) {
    float sub_scale[8], sub_min[8];
    int ls[8], lm[8];
    for (int j = 0; j < 8; j++) sub_scale[j] = fit_asym(x + 32 * j, 32, nmax, &sub_min[j]);
    *d_out = f2h(quant_pos(sub_scale, 8, 63, ls));
    *dmin_out = f2h(quant_pos(sub_min, 8, 63, lm));
    k4_pack(scales, ls, lm);
    const float d = h2f(*d_out), dmin = h2f(*dmin_out);
    for (int j = 0; j < 8; j++) {
        const float dl = d * ls[j], ml = dmin * lm[j];
        for (int l = 0; l < 32; l++) L[32 * j + l] = dl ? clampi(nearest((x[32 * j + l] + ml) / dl), 0, nmax) : 0;
    }
}

void cm_quantize_q4_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q4_K *y = vy;
    int L[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        quantize_k4(x, 15, &y[ib].d, &y[ib].dmin, y[ib].scales, L);
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        for (int e = 0; e < QKK; e++)
            y[ib].qs[32 * (e >> 6) + (e & 31)] |= (uint8_t)((e & 63) < 32 ? L[e] : L[e] << 4);
    }
}

void cm_quantize_q5_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q5_K *y = vy;
    int L[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        quantize_k4(x, 31, &y[ib].d, &y[ib].dmin, y[ib].scales, L);
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        memset(y[ib].qh, 0, sizeof(y[ib].qh));
        for (int e = 0; e < QKK; e++) {
            int lo = L[e] & 15;
            y[ib].qs[32 * (e >> 6) + (e & 31)] |= (uint8_t)((e & 63) < 32 ? lo : lo << 4);
            if (L[e] & 16) y[ib].qh[e & 31] |= (uint8_t)(1 << (e >> 5));
        }
    }
}

void cm_quantize_q6_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q6_K *y = vy;
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        float scales[16];
        for (int j = 0; j < 16; j++) scales[j] = fit_sym(x + 16 * j, 16, 32);
        const float smax = signed_absmax(scales, 16);
        memset(&y[ib], 0, sizeof(y[ib]));
        if (smax == 0) continue; /* all zero: d = 0 decodes to zeros */
        /* int8 sub-scales; the largest maps to -128. */
        const float inv = -128 / smax;
        y[ib].d = f2h(1 / inv);
        const float d = h2f(y[ib].d);
        for (int j = 0; j < 16; j++) {
            int sc = clampi(nearest(inv * scales[j]), -128, 127);
            y[ib].scales[j] = (int8_t)sc;
            const float dl = d * sc;
            for (int l = 0; l < 16; l++) {
                int e = 16 * j + l;
                int u = (dl ? clampi(nearest(x[e] / dl), -32, 31) : 0) + 32;
                int h = e >> 7, r = e & 127, k = r >> 5, i = e & 31;
                y[ib].ql[64 * h + 32 * (k & 1) + i] |= (uint8_t)(k < 2 ? (u & 15) : (u & 15) << 4);
                y[ib].qh[32 * h + i] |= (uint8_t)((u >> 4) << (2 * k));
            }
        }
    }
}

void cm_quantize_q8_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q8_K *y = vy;
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        const float mx = signed_absmax(x, QKK);
        if (mx == 0) {
            memset(&y[ib], 0, sizeof(y[ib]));
            continue;
        }
        /* -127 rather than -128 keeps every quant in [-127, 127]. */
        const float iscale = -127.f / mx;
        for (int e = 0; e < QKK; e++) y[ib].qs[e] = (int8_t)clampi(nearest(iscale * x[e]), -127, 127);
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[ib].qs[16 * j + l];
            y[ib].bsums[j] = (int16_t)sum;
        }
        y[ib].d = 1 / iscale;
    }
}
