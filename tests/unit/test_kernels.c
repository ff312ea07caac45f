/* test_kernels.c - the numeric kernels against independent formulas.
 *
 *  1. hand-built blocks decode to what ggml's dequantize_row_* formulas give
 *     (re-stated here in ggml's own loop order, plus literal values worked
 *     out by hand), so a layout mistake in ref.c cannot hide;
 *  2. quantize -> dequantize of random data stays within a per-type error;
 *  3. vec_dot equals the double dot of the dequantized operands;
 *  4. cm_matmul equals a naive loop for 1 and several tokens, 1 and 3 threads;
 *  5. every dispatched (SIMD) traits entry equals the reference on random
 *     data, within a per-type tolerance: all types are looped over, so new
 *     SIMD kernels are checked as soon as they are registered. */
#include <stdint.h>
#include <stdlib.h>

#include "base/fp16.h"
#include "base/pool.h"
#include "base/rng.h"
#include "base/status.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"
#include "test.h"

static const int weight_types[] = {CM_TYPE_F32,  CM_TYPE_F16,  CM_TYPE_BF16, CM_TYPE_Q4_0, CM_TYPE_Q4_1,
                                   CM_TYPE_Q5_0, CM_TYPE_Q5_1, CM_TYPE_Q8_0, CM_TYPE_Q2_K, CM_TYPE_Q3_K,
                                   CM_TYPE_Q4_K, CM_TYPE_Q5_K, CM_TYPE_Q6_K};
static const int all_types[] = {CM_TYPE_F32,  CM_TYPE_F16,  CM_TYPE_BF16, CM_TYPE_Q4_0, CM_TYPE_Q4_1, CM_TYPE_Q5_0,
                                CM_TYPE_Q5_1, CM_TYPE_Q8_0, CM_TYPE_Q8_1, CM_TYPE_Q2_K, CM_TYPE_Q3_K, CM_TYPE_Q4_K,
                                CM_TYPE_Q5_K, CM_TYPE_Q6_K, CM_TYPE_Q8_K};
#define N_WEIGHT_TYPES ((int)(sizeof(weight_types) / sizeof(weight_types[0])))
#define N_ALL_TYPES ((int)(sizeof(all_types) / sizeof(all_types[0])))

/* Relative RMS error bound of quantize -> dequantize on N(0,1) data; the
 * test prints the measured values (noted here as of writing), the bounds
 * leave about 20% room. */
static double roundtrip_bound(int type) {
    switch (type) {
    case CM_TYPE_F32: return 1e-9;
    case CM_TYPE_F16: return 3e-4;     /* measured 0.00021 */
    case CM_TYPE_BF16: return 2.2e-3;  /* 0.00165 */
    case CM_TYPE_Q8_0: return 0.0065;  /* 0.00535 */
    case CM_TYPE_Q8_1: return 0.0065;  /* 0.00533 */
    case CM_TYPE_Q8_K: return 0.0085;  /* 0.00685 */
    case CM_TYPE_Q6_K: return 0.022;   /* 0.0172 */
    case CM_TYPE_Q5_0: return 0.05;    /* 0.0418 */
    case CM_TYPE_Q5_1: return 0.045;   /* 0.0379 */
    case CM_TYPE_Q5_K: return 0.045;   /* 0.0356 */
    case CM_TYPE_Q4_0: return 0.10;    /* 0.0866 */
    case CM_TYPE_Q4_1: return 0.09;    /* 0.0775 */
    case CM_TYPE_Q4_K: return 0.09;    /* 0.0709 */
    case CM_TYPE_Q3_K: return 0.18;    /* 0.144 */
    case CM_TYPE_Q2_K: return 0.33;    /* 0.266 */
    }
    return 0;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static void fill_normal(cm_rng *r, float *x, int64_t n, float sigma) {
    for (int64_t i = 0; i < n; i++) x[i] = sigma * cm_rng_normal(r);
}

static void fill_bytes(cm_rng *r, uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)cm_rng_u64(r);
}

static size_t row_size(const cm_type_traits *t, int64_t n) { return (size_t)(n / t->block_elems) * t->block_bytes; }

static double rel_rms(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---- 1. decoding hand-built blocks ----
 * Each expect_* restates ggml's dequantize formula for one block, walking it
 * in ggml's order, independently of ref.c's index arithmetic. */

static int qh_bit(const uint8_t qh[4], int j) { return (qh[j / 8] >> (j % 8)) & 1; }

static void expect_q4_0(const cm_block_q4_0 *b, float *y) {
    float d = cm_f16_to_f32(b->d);
    for (int j = 0; j < 16; j++) {
        y[j] = ((b->qs[j] & 0x0F) - 8) * d;
        y[j + 16] = ((b->qs[j] >> 4) - 8) * d;
    }
}

static void expect_q4_1(const cm_block_q4_1 *b, float *y) {
    float d = cm_f16_to_f32(b->d), m = cm_f16_to_f32(b->m);
    for (int j = 0; j < 16; j++) {
        y[j] = (b->qs[j] & 0x0F) * d + m;
        y[j + 16] = (b->qs[j] >> 4) * d + m;
    }
}

static void expect_q5_0(const cm_block_q5_0 *b, float *y) {
    float d = cm_f16_to_f32(b->d);
    for (int j = 0; j < 16; j++) {
        y[j] = (((b->qs[j] & 0x0F) | qh_bit(b->qh, j) << 4) - 16) * d;
        y[j + 16] = (((b->qs[j] >> 4) | qh_bit(b->qh, j + 16) << 4) - 16) * d;
    }
}

static void expect_q5_1(const cm_block_q5_1 *b, float *y) {
    float d = cm_f16_to_f32(b->d), m = cm_f16_to_f32(b->m);
    for (int j = 0; j < 16; j++) {
        y[j] = ((b->qs[j] & 0x0F) | qh_bit(b->qh, j) << 4) * d + m;
        y[j + 16] = ((b->qs[j] >> 4) | qh_bit(b->qh, j + 16) << 4) * d + m;
    }
}

static void expect_q8_0(const cm_block_q8_0 *b, float *y) {
    for (int j = 0; j < 32; j++) y[j] = b->qs[j] * cm_f16_to_f32(b->d);
}

static void expect_q8_1(const cm_block_q8_1 *b, float *y) {
    for (int j = 0; j < 32; j++) y[j] = b->qs[j] * cm_f16_to_f32(b->d);
}

static void expect_q2_K(const cm_block_q2_K *b, float *y) {
    float d = cm_f16_to_f32(b->d), dmin = cm_f16_to_f32(b->dmin);
    const uint8_t *q = b->qs;
    int is = 0;
    for (int n = 0; n < 256; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                uint8_t sc = b->scales[is++];
                for (int l = 0; l < 16; l++) *y++ = d * (sc & 0xF) * ((q[l + 16 * half] >> shift) & 3) - dmin * (sc >> 4);
            }
        }
        q += 32;
    }
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void expect_q3_K(const cm_block_q3_K *b, float *y) {
    /* ggml's kmask unpacking of the 12 scale bytes into 16 bytes */
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    uint32_t aux[4] = {le32(b->scales), le32(b->scales + 4), le32(b->scales + 8), 0};
    uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    int8_t scales[16];
    for (int i = 0; i < 16; i++) scales[i] = (int8_t)(aux[i / 4] >> (8 * (i % 4)));
    float d = cm_f16_to_f32(b->d);
    const uint8_t *q = b->qs;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < 256; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                float dl = d * (scales[is++] - 32);
                for (int l = 0; l < 16; l++) {
                    int k = l + 16 * half;
                    *y++ = dl * (((q[k] >> shift) & 3) - ((b->hmask[k] & m) ? 0 : 4));
                }
            }
            m <<= 1;
        }
        q += 32;
    }
}

static void scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

static void expect_q4_K(const cm_block_q4_K *b, float *y) {
    float d = cm_f16_to_f32(b->d), dmin = cm_f16_to_f32(b->dmin);
    const uint8_t *q = b->qs;
    for (int is = 0; is < 8; is += 2) {
        int sc1, m1, sc2, m2;
        scale_min_k4(is, b->scales, &sc1, &m1);
        scale_min_k4(is + 1, b->scales, &sc2, &m2);
        for (int l = 0; l < 32; l++) *y++ = d * sc1 * (q[l] & 0xF) - dmin * m1;
        for (int l = 0; l < 32; l++) *y++ = d * sc2 * (q[l] >> 4) - dmin * m2;
        q += 32;
    }
}

static void expect_q5_K(const cm_block_q5_K *b, float *y) {
    float d = cm_f16_to_f32(b->d), dmin = cm_f16_to_f32(b->dmin);
    const uint8_t *ql = b->qs;
    uint8_t u1 = 1, u2 = 2;
    for (int is = 0; is < 8; is += 2) {
        int sc1, m1, sc2, m2;
        scale_min_k4(is, b->scales, &sc1, &m1);
        scale_min_k4(is + 1, b->scales, &sc2, &m2);
        for (int l = 0; l < 32; l++) *y++ = d * sc1 * ((ql[l] & 0xF) + (b->qh[l] & u1 ? 16 : 0)) - dmin * m1;
        for (int l = 0; l < 32; l++) *y++ = d * sc2 * ((ql[l] >> 4) + (b->qh[l] & u2 ? 16 : 0)) - dmin * m2;
        ql += 32;
        u1 <<= 2;
        u2 <<= 2;
    }
}

static void expect_q6_K(const cm_block_q6_K *b, float *y) {
    float d = cm_f16_to_f32(b->d);
    const uint8_t *ql = b->ql, *qh = b->qh;
    const int8_t *sc = b->scales;
    for (int n = 0; n < 256; n += 128) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32;
            int q2 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32;
            int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
            int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
            y[l] = d * sc[is] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

static void expect_q8_K(const cm_block_q8_K *b, float *y) {
    for (int j = 0; j < 256; j++) y[j] = b->d * b->qs[j];
}

/* Random bytes with a sane scale: the scale fields of a block are set to
 * small finite halves so values stay finite and comparable. */
static void random_block(cm_rng *r, int type, void *blk) {
    const cm_type_traits *t = cm_type_traits_ref(type);
    fill_bytes(r, blk, t->block_bytes);
    cm_f16 h1 = cm_f32_to_f16(0.01f + cm_rng_f32(r)), h2 = cm_f32_to_f16(0.01f + cm_rng_f32(r));
    switch (type) {
    case CM_TYPE_Q4_0: ((cm_block_q4_0 *)blk)->d = h1; break;
    case CM_TYPE_Q4_1: ((cm_block_q4_1 *)blk)->d = h1, ((cm_block_q4_1 *)blk)->m = h2 ^ 0x8000; break;
    case CM_TYPE_Q5_0: ((cm_block_q5_0 *)blk)->d = h1; break;
    case CM_TYPE_Q5_1: ((cm_block_q5_1 *)blk)->d = h1, ((cm_block_q5_1 *)blk)->m = h2 ^ 0x8000; break;
    case CM_TYPE_Q8_0: ((cm_block_q8_0 *)blk)->d = h1; break;
    case CM_TYPE_Q8_1: ((cm_block_q8_1 *)blk)->d = h1, ((cm_block_q8_1 *)blk)->s = h2; break;
    case CM_TYPE_Q2_K: ((cm_block_q2_K *)blk)->d = h1, ((cm_block_q2_K *)blk)->dmin = h2; break;
    case CM_TYPE_Q3_K: ((cm_block_q3_K *)blk)->d = h1; break;
    case CM_TYPE_Q4_K: ((cm_block_q4_K *)blk)->d = h1, ((cm_block_q4_K *)blk)->dmin = h2; break;
    case CM_TYPE_Q5_K: ((cm_block_q5_K *)blk)->d = h1, ((cm_block_q5_K *)blk)->dmin = h2; break;
    case CM_TYPE_Q6_K: ((cm_block_q6_K *)blk)->d = h1; break;
    case CM_TYPE_Q8_K: ((cm_block_q8_K *)blk)->d = 0.01f + cm_rng_f32(r); break;
    }
}

TEST(decode_matches_ggml_formulas) {
    cm_rng r;
    cm_rng_init(&r, 1);
    _Alignas(8) uint8_t blk[512];
    float got[256], want[256];
    const int types[] = {CM_TYPE_Q4_0, CM_TYPE_Q4_1, CM_TYPE_Q5_0, CM_TYPE_Q5_1, CM_TYPE_Q8_0, CM_TYPE_Q8_1,
                         CM_TYPE_Q2_K, CM_TYPE_Q3_K, CM_TYPE_Q4_K, CM_TYPE_Q5_K, CM_TYPE_Q6_K, CM_TYPE_Q8_K};
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const int type = types[ti];
        const cm_type_traits *t = cm_type_traits_ref(type);
        for (int rep = 0; rep < 20; rep++) {
            random_block(&r, type, blk);
            switch (type) {
            case CM_TYPE_Q4_0: expect_q4_0((void *)blk, want); break;
            case CM_TYPE_Q4_1: expect_q4_1((void *)blk, want); break;
            case CM_TYPE_Q5_0: expect_q5_0((void *)blk, want); break;
            case CM_TYPE_Q5_1: expect_q5_1((void *)blk, want); break;
            case CM_TYPE_Q8_0: expect_q8_0((void *)blk, want); break;
            case CM_TYPE_Q8_1: expect_q8_1((void *)blk, want); break;
            case CM_TYPE_Q2_K: expect_q2_K((void *)blk, want); break;
            case CM_TYPE_Q3_K: expect_q3_K((void *)blk, want); break;
            case CM_TYPE_Q4_K: expect_q4_K((void *)blk, want); break;
            case CM_TYPE_Q5_K: expect_q5_K((void *)blk, want); break;
            case CM_TYPE_Q6_K: expect_q6_K((void *)blk, want); break;
            case CM_TYPE_Q8_K: expect_q8_K((void *)blk, want); break;
            }
            t->to_float(blk, got, t->block_elems);
            int bad = 0;
            for (int i = 0; i < t->block_elems; i++)
                if (fabsf(got[i] - want[i]) > 1e-6f * (1 + fabsf(want[i]))) bad++;
            CHECK_MSG(bad == 0, "%s: %d of %d values differ from ggml's formula", t->name, bad, t->block_elems);
        }
    }
}

/* Literal values worked out by hand from the layouts, one or more per type. */
TEST(decode_literal_blocks) {
    float y[256];
    {
        const uint16_t h[3] = {0x3c00, 0xc000, 0x3555}; /* 1, -2, 0.33325 */
        cm_type_traits_ref(CM_TYPE_F16)->to_float(h, y, 3);
        CHECK(y[0] == 1.0f && y[1] == -2.0f && y[2] == 0.333251953125f);
        const uint16_t b[2] = {0x3fc0, 0xc120}; /* 1.5, -10 */
        cm_type_traits_ref(CM_TYPE_BF16)->to_float(b, y, 2);
        CHECK(y[0] == 1.5f && y[1] == -10.0f);
    }
    {
        cm_block_q4_0 b = {.d = 0x3800}; /* d = 0.5 */
        b.qs[0] = 0x1F;                  /* w0 = (15-8)*0.5, w16 = (1-8)*0.5 */
        b.qs[15] = 0x80;                 /* w15 = -4, w31 = 0 */
        cm_type_traits_ref(CM_TYPE_Q4_0)->to_float(&b, y, 32);
        CHECK(y[0] == 3.5f && y[16] == -3.5f && y[15] == -4.0f && y[31] == 0.0f && y[1] == -4.0f);
    }
    {
        cm_block_q4_1 b = {.d = 0x3400, .m = 0xbc00}; /* d = 0.25, m = -1 */
        b.qs[3] = 0xC2;                              /* w3 = 2*0.25-1, w19 = 12*0.25-1 */
        cm_type_traits_ref(CM_TYPE_Q4_1)->to_float(&b, y, 32);
        CHECK(y[3] == -0.5f && y[19] == 2.0f && y[0] == -1.0f);
    }
    {
        cm_block_q5_0 b = {.d = 0x3c00}; /* d = 1 */
        b.qs[2] = 0x53;                  /* w2 lo=3, w18 lo=5 */
        b.qh[0] = 0x04;                  /* bit 2: w2 += 16 */
        b.qh[3] = 0x80;                  /* bit 31: w31 += 16 */
        cm_type_traits_ref(CM_TYPE_Q5_0)->to_float(&b, y, 32);
        CHECK(y[2] == 3.0f && y[18] == -11.0f && y[31] == 0.0f && y[0] == -16.0f);
    }
    {
        cm_block_q5_1 b = {.d = 0x3800, .m = 0x3c00}; /* d = 0.5, m = 1 */
        b.qs[15] = 0xF1;
        b.qh[2] = 0x01; /* bit 16: w16 = (0 | 16) */
        b.qh[1] = 0x80; /* bit 15: w15 = 1 | 16 */
        cm_type_traits_ref(CM_TYPE_Q5_1)->to_float(&b, y, 32);
        CHECK(y[15] == 17 * 0.5f + 1 && y[31] == 15 * 0.5f + 1 && y[16] == 16 * 0.5f + 1 && y[0] == 1.0f);
    }
    {
        cm_block_q8_0 b = {.d = 0x3800};
        b.qs[0] = -128;
        b.qs[31] = 127;
        cm_type_traits_ref(CM_TYPE_Q8_0)->to_float(&b, y, 32);
        CHECK(y[0] == -64.0f && y[31] == 63.5f);
    }
    {
        cm_block_q2_K b = {.d = 0x3c00, .dmin = 0x3800}; /* d = 1, dmin = 0.5 */
        b.scales[0] = 0x23;  /* sub-block 0: scale 3, min 2 */
        b.scales[2] = 0x05;  /* sub-block 2 (elements 32..47): scale 5, min 0 */
        b.scales[9] = 0xF1;  /* sub-block 9 (elements 144..159): scale 1, min 15 */
        b.qs[0] = 0x0E;      /* bits 0-1 -> w0 = 2, bits 2-3 -> w32 = 3 */
        b.qs[32 + 16] = 0x0C; /* element 128+32+16 = 176 (sub-block 11), bits 2-3 = 3 */
        b.qs[32 + 17] = 0x01; /* element 128+17 = 145, bits 0-1 = 1 */
        cm_type_traits_ref(CM_TYPE_Q2_K)->to_float(&b, y, 256);
        CHECK(y[0] == 3 * 2 - 1.0f && y[32] == 15.0f && y[1] == -1.0f && y[145] == 1 - 7.5f && y[176] == 0.0f);
    }
    {
        cm_block_q3_K b = {.d = 0x3c00};
        /* scale 0 = 0x21 - 32 = 1 (low nibble 1 in scales[0], high bits 2 in
         * scales[8] bits 0-1); scale 13 = 0x0A - 32 = -22 (low nibble in the
         * high nibble of scales[5], high bits 0 in scales[9] bits 6-7). */
        b.scales[0] = 0x01;
        b.scales[8] = 0x02;
        b.scales[5] = 0xA0;
        b.qs[0] = 0x03;      /* w0: low bits 3 */
        b.hmask[0] = 0x01;   /* w0: high bit set -> 3 - 0 */
        b.qs[1] = 0x00;      /* w1: 0 - 4 */
        /* element 208 = 128 + 64 + 16: sub-block 13, qs[32 + 16] bits 4-5, hmask[16] bit 6 */
        b.qs[48] = 0x20;     /* bits 4-5 = 2, hmask clear -> 2 - 4 = -2 */
        cm_type_traits_ref(CM_TYPE_Q3_K)->to_float(&b, y, 256);
        CHECK(y[0] == 3.0f && y[1] == -4.0f && y[208] == 44.0f);
        /* scales 1..12 are 0 - 32 = -32, qs 0, hmask clear: -32 * -4 */
        CHECK(y[20] == 128.0f);
    }
    {
        cm_block_q4_K b = {.d = 0x3c00, .dmin = 0x3c00};
        b.scales[0] = 2 | 1 << 6; /* scale 0 = 2; top bits of scale 4 = 1 */
        b.scales[4] = 1 | 2 << 6; /* min 0 = 1; top bits of min 4 = 2 */
        b.scales[8] = 0x53;       /* scale 4 low = 3, min 4 low = 5 */
        b.qs[0] = 0x97;           /* w0 = 7 (sub-block 0), w32 = 9 (sub-block 1: scale 0, min 0) */
        b.qs[64] = 0x04;          /* w128 = 4 (sub-block 4) */
        cm_type_traits_ref(CM_TYPE_Q4_K)->to_float(&b, y, 256);
        CHECK(y[0] == 2 * 7 - 1.0f && y[32] == 0.0f && y[128] == 19 * 4 - 37.0f);
    }
    {
        cm_block_q5_K b = {.d = 0x3c00, .dmin = 0x0000};
        b.scales[3] = 1;   /* scale 3 = 1 (elements 96..127) */
        b.scales[2] = 1;   /* scale 2 = 1 (elements 64..95) */
        b.qs[32 + 5] = 0x2F; /* w69 low 15, w101 low 2 */
        b.qh[5] = 0x08;    /* bit 3 -> sub-block 3 (w101) gets +16; bit 2 clear for w69 */
        cm_type_traits_ref(CM_TYPE_Q5_K)->to_float(&b, y, 256);
        CHECK(y[69] == 15.0f && y[101] == 18.0f && y[0] == 0.0f);
    }
    {
        cm_block_q6_K b = {.d = 0x3800}; /* d = 0.5 */
        for (int j = 0; j < 16; j++) b.scales[j] = (int8_t)(j + 1);
        /* element 200 = 128 + 64 + 8: ql[64 + 8] high nibble, qh[32 + 8] bits 4-5, scale 12 */
        b.ql[72] = 0x70;
        b.qh[40] = 0x20; /* bits 4-5 = 2 -> q = 7 | 32 = 39 - 32 = 7 */
        /* element 40 = 32 + 8: ql[32 + 8] low nibble, qh[8] bits 2-3, scale 2 */
        b.ql[40] = 0x0A;
        b.qh[8] = 0x0C; /* bits 2-3 = 3 -> 10 | 48 = 58 - 32 = 26 */
        cm_type_traits_ref(CM_TYPE_Q6_K)->to_float(&b, y, 256);
        CHECK(y[200] == 0.5f * 13 * 7 && y[40] == 0.5f * 3 * 26 && y[0] == 0.5f * 1 * -32);
    }
    {
        cm_block_q8_K b = {.d = 0.25f};
        b.qs[255] = -7;
        cm_type_traits_ref(CM_TYPE_Q8_K)->to_float(&b, y, 256);
        CHECK(y[255] == -1.75f && y[0] == 0.0f);
    }
}

/* ggml's reference quantizers for the 32-wide formats, restated: activations
 * must quantize to the same bytes as llama.cpp's. */
TEST(quantize_matches_ggml_32wide) {
    cm_rng r;
    cm_rng_init(&r, 7);
    float x[32 * 8];
    fill_normal(&r, x, 32 * 8, 1.0f);
    x[5] = -3.0f; /* a negative extreme in block 0 */
    cm_block_q8_0 q8[8];
    cm_type_traits_ref(CM_TYPE_Q8_0)->from_float(x, q8, 32 * 8);
    cm_block_q4_0 q4[8];
    cm_type_traits_ref(CM_TYPE_Q4_0)->from_float(x, q4, 32 * 8);
    cm_block_q8_1 q81[8];
    cm_type_traits_ref(CM_TYPE_Q8_1)->from_float(x, q81, 32 * 8);
    int bad = 0;
    for (int b = 0; b < 8; b++) {
        const float *xb = x + 32 * b;
        float amax = 0, mx = 0;
        for (int j = 0; j < 32; j++)
            if (fabsf(xb[j]) > amax) amax = fabsf(xb[j]), mx = xb[j];
        float d = amax / 127, id = 1 / d;
        if (q8[b].d != cm_f32_to_f16(d)) bad++;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int8_t q = (int8_t)roundf(xb[j] * id);
            sum += q;
            if (q8[b].qs[j] != q || q81[b].qs[j] != q) bad++;
        }
        if (q81[b].s != cm_f32_to_f16(sum * d)) bad++;
        float d4 = mx / -8, id4 = 1 / d4;
        if (q4[b].d != cm_f32_to_f16(d4)) bad++;
        for (int j = 0; j < 16; j++) {
            int a = (int)(xb[j] * id4 + 8.5f), c = (int)(xb[j + 16] * id4 + 8.5f);
            a = a > 15 ? 15 : a;
            c = c > 15 ? 15 : c;
            if (q4[b].qs[j] != (uint8_t)(a | c << 4)) bad++;
        }
    }
    CHECK(bad == 0);
    CHECK((q4[0].qs[5] & 15) == 0); /* the extreme maps to -8, i.e. nibble 0 */
}

/* q8_K: ggml's formula (scale from the signed extreme, -127) and bsums. */
TEST(quantize_q8_K_matches_ggml) {
    cm_rng r;
    cm_rng_init(&r, 8);
    float x[512];
    fill_normal(&r, x, 512, 2.0f);
    cm_block_q8_K q[2];
    cm_type_traits_ref(CM_TYPE_Q8_K)->from_float(x, q, 512);
    int bad = 0;
    for (int b = 0; b < 2; b++) {
        float amax = 0, mx = 0;
        for (int j = 0; j < 256; j++)
            if (fabsf(x[256 * b + j]) > amax) amax = fabsf(x[256 * b + j]), mx = x[256 * b + j];
        float iscale = -127.f / mx;
        if (q[b].d != 1 / iscale) bad++;
        for (int j = 0; j < 256; j++) {
            int v = (int)nearbyintf(iscale * x[256 * b + j]);
            if (q[b].qs[j] != (v > 127 ? 127 : v)) bad++;
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += q[b].qs[16 * g + l];
            if (q[b].bsums[g] != s) bad++;
        }
    }
    CHECK(bad == 0);
}

/* ---- 2. round trips ---- */

TEST(roundtrip_error_bounds) {
    cm_rng r;
    cm_rng_init(&r, 2);
    const int64_t n = 256 * 32;
    float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
    void *q = xmalloc((size_t)n * 4);
    fill_normal(&r, x, n, 1.0f);
    for (int ti = 0; ti < N_ALL_TYPES; ti++) {
        const cm_type_traits *t = cm_type_traits_ref(all_types[ti]);
        CHECK(t != NULL);
        if (!t) continue;
        t->from_float(x, q, n);
        t->to_float(q, y, n);
        double e = rel_rms(y, x, n);
        fprintf(stderr, "     roundtrip %-5s rel rms %.5f (bound %.5f)\n", t->name, e, roundtrip_bound(all_types[ti]));
        CHECK_MSG(e <= roundtrip_bound(all_types[ti]), "%s: %.5f", t->name, e);
        /* all-zero input stays zero (no NaN from a zero scale) */
        memset(x + n - 512, 0, 512 * sizeof(float));
        t->from_float(x + n - 512, q, 512);
        t->to_float(q, y, 512);
        int nonzero = 0;
        for (int i = 0; i < 512; i++) nonzero += y[i] != 0;
        CHECK_MSG(nonzero == 0, "%s: zeros decode to %d non-zeros", t->name, nonzero);
        fill_normal(&r, x + n - 512, 512, 1.0f);
    }
    /* offsets and scales that vary per block: constant blocks, tiny and huge values */
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const cm_type_traits *t = cm_type_traits_ref(weight_types[ti]);
        for (int64_t i = 0; i < 1024; i++) x[i] = (i < 256) ? 0.75f : (i < 512 ? 1e-3f * cm_rng_normal(&r) : 100 * cm_rng_normal(&r) + 30);
        t->from_float(x, q, 1024);
        t->to_float(q, y, 1024);
        double e1 = rel_rms(y, x, 256), e2 = rel_rms(y + 256, x + 256, 256), e3 = rel_rms(y + 512, x + 512, 512);
        double b = roundtrip_bound(weight_types[ti]);
        CHECK_MSG(e1 <= b && e2 <= 1.5 * b && e3 <= 1.5 * b, "%s: constant %.4f tiny %.4f shifted %.4f", t->name, e1, e2, e3);
    }
    free(x);
    free(y);
    free(q);
}

/* The K quantizers on inputs unlike N(0,1): heavy tails (the product of two
 * normals, whose outliers stretch a sub-block's range as real weights'
 * do), and non-finite or extreme values, which must neither crash nor
 * disturb the blocks around them (every block is quantized on its own). */
static double heavy_tail_bound(int type) {
    switch (type) { /* measured values noted; about 20% room */
    case CM_TYPE_Q2_K: return 0.36;  /* 0.297 */
    case CM_TYPE_Q3_K: return 0.205; /* 0.171 */
    case CM_TYPE_Q4_K: return 0.108; /* 0.0901 */
    case CM_TYPE_Q5_K: return 0.055; /* 0.0451 */
    case CM_TYPE_Q6_K: return 0.028; /* 0.0233 */
    }
    return 0;
}

TEST(k_quantizers_odd_inputs) {
    static const int k_types[] = {CM_TYPE_Q2_K, CM_TYPE_Q3_K, CM_TYPE_Q4_K, CM_TYPE_Q5_K, CM_TYPE_Q6_K};
    cm_rng r;
    cm_rng_init(&r, 5);
    const int64_t n = 256 * 16;
    float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
    void *q = xmalloc((size_t)n * 4);
    for (int ti = 0; ti < 5; ti++) {
        const cm_type_traits *t = cm_type_traits_ref(k_types[ti]);
        for (int64_t i = 0; i < n; i++) x[i] = cm_rng_normal(&r) * fabsf(cm_rng_normal(&r));
        t->from_float(x, q, n);
        t->to_float(q, y, n);
        double e = rel_rms(y, x, n);
        fprintf(stderr, "     heavy tail %-5s rel rms %.5f (bound %.5f)\n", t->name, e, heavy_tail_bound(k_types[ti]));
        CHECK_MSG(e <= heavy_tail_bound(k_types[ti]), "%s heavy tail: %.5f", t->name, e);
        /* block 1: NaN and infinities among normals; block 2: one value
         * far beyond the rest; block 3: all equal and negative */
        fill_normal(&r, x, 1024, 1.0f);
        x[256 + 3] = NAN, x[256 + 100] = INFINITY, x[256 + 200] = -INFINITY;
        x[512 + 17] = 3e4f;
        for (int i = 768; i < 1024; i++) x[i] = -0.75f;
        t->from_float(x, q, 1024);
        t->to_float(q, y, 1024);
        double e0 = rel_rms(y, x, 256), e3 = rel_rms(y + 768, x + 768, 256);
        int near_outlier = fabsf(y[512 + 17] - 3e4f) <= 0.1f * 3e4f;
        CHECK_MSG(e0 <= 1.5 * roundtrip_bound(k_types[ti]), "%s: block next to a NaN block: %.5f", t->name, e0);
        CHECK_MSG(near_outlier, "%s: outlier 3e4 decodes to %g", t->name, y[512 + 17]);
        CHECK_MSG(e3 <= roundtrip_bound(k_types[ti]), "%s: constant -0.75 block: %.5f", t->name, e3);
    }
    free(x);
    free(y);
    free(q);
}

/* ---- 3. vec_dot against the dot of dequantized operands ---- */

static double dot_tolerance(int type) {
    /* q8_1's block sum is stored as f16, so the min term of q4_1/q5_1
     * carries a 2^-11 relative rounding per block. */
    return (type == CM_TYPE_Q4_1 || type == CM_TYPE_Q5_1) ? 2e-3 : 2e-5;
}

static void check_vec_dot(const cm_type_traits *wt, const cm_type_traits *vt, int type, cm_rng *r, const char *what) {
    const int n = 1024;
    float *a = xmalloc(n * sizeof(float)), *b = xmalloc(n * sizeof(float));
    float *ad = xmalloc(n * sizeof(float)), *bd = xmalloc(n * sizeof(float));
    void *qa = xmalloc(row_size(wt, n)), *qb = xmalloc(row_size(vt, n));
    for (int rep = 0; rep < 4; rep++) {
        fill_normal(r, a, n, 1.0f);
        fill_normal(r, b, n, 1.0f);
        if (rep & 1)
            for (int i = 0; i < n; i++) a[i] += 0.5f; /* a mean, so min terms matter */
        cm_type_traits_ref(type)->from_float(a, qa, n);
        cm_type_traits_ref(wt->vec_dot_type)->from_float(b, qb, n);
        cm_type_traits_ref(type)->to_float(qa, ad, n);
        cm_type_traits_ref(wt->vec_dot_type)->to_float(qb, bd, n);
        double want = 0, mag = 0;
        for (int i = 0; i < n; i++) {
            want += (double)ad[i] * bd[i];
            mag += fabs((double)ad[i] * bd[i]);
        }
        float got = NAN;
        wt->vec_dot(n, &got, qa, qb);
        CHECK_MSG(fabs(got - want) <= dot_tolerance(type) * mag, "%s %s: got %.6f want %.6f (sum|xy| %.2f)", what,
                  wt->name, got, want, mag);
    }
    free(a), free(b), free(ad), free(bd), free(qa), free(qb);
}

TEST(vec_dot_matches_dequantized_dot) {
    cm_rng r;
    cm_rng_init(&r, 3);
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const cm_type_traits *wt = cm_type_traits_ref(weight_types[ti]);
        CHECK(wt && wt->vec_dot && cm_type_traits_ref(wt->vec_dot_type));
        check_vec_dot(wt, cm_type_traits_ref(wt->vec_dot_type), weight_types[ti], &r, "ref");
    }
}

/* ---- 4. matmul ---- */

static void check_matmul(cm_pool *pool, int type, int64_t n_rows, int64_t n_cols, int64_t n_tokens, cm_rng *r) {
    const cm_type_traits *wt = cm_type_traits_get(type);
    const cm_type_traits *vt = cm_type_traits_get(wt->vec_dot_type);
    const size_t rb = row_size(wt, n_cols) + 64; /* padded rows: w_row_bytes is honoured */
    float *wf = xmalloc((size_t)(n_rows * n_cols) * sizeof(float));
    float *wd = xmalloc((size_t)(n_rows * n_cols) * sizeof(float));
    uint8_t *w = xmalloc(rb * (size_t)n_rows);
    float *x = xmalloc((size_t)(n_tokens * n_cols) * sizeof(float));
    float *y = xmalloc((size_t)(n_tokens * n_rows) * sizeof(float));
    size_t sb = cm_matmul_scratch_bytes(type, n_cols, n_tokens);
    void *scratch = sb ? xmalloc(sb) : NULL;
    void *xq = xmalloc(row_size(vt, n_cols));
    fill_normal(r, wf, n_rows * n_cols, 1.0f);
    fill_normal(r, x, n_tokens * n_cols, 1.0f);
    for (int64_t i = 0; i < n_rows; i++) {
        wt->from_float(wf + i * n_cols, w + i * rb, n_cols);
        wt->to_float(w + i * rb, wd + i * n_cols, n_cols);
    }
    for (int64_t i = 0; i < n_tokens * n_rows; i++) y[i] = NAN;
    cm_matmul(pool, type, w, rb, n_rows, n_cols, x, n_tokens, y, scratch);
    int bad_same = 0, bad_exact = 0;
    for (int64_t t = 0; t < n_tokens; t++) {
        vt->from_float(x + t * n_cols, xq, n_cols);
        for (int64_t i = 0; i < n_rows; i++) {
            float s;
            wt->vec_dot((int)n_cols, &s, w + i * rb, xq);
            double exact = 0, mag = 0;
            for (int64_t k = 0; k < n_cols; k++) {
                exact += (double)wd[i * n_cols + k] * x[t * n_cols + k];
                mag += fabs((double)wd[i * n_cols + k] * x[t * n_cols + k]);
            }
            float got = y[t * n_rows + i];
            if (!(fabsf(got - s) <= 1e-6f * (float)mag)) bad_same++;
            /* against f32 activations: the activation quantization error */
            if (!(fabs(got - exact) <= 0.02 * mag)) bad_exact++;
        }
    }
    CHECK_MSG(bad_same == 0 && bad_exact == 0, "%s %lldx%lld tokens %lld threads %d: %d differ from the row loop, %d from f32",
              wt->name, (long long)n_rows, (long long)n_cols, (long long)n_tokens, pool ? cm_pool_n_threads(pool) : 0,
              bad_same, bad_exact);
    free(wf), free(wd), free(w), free(x), free(y), free(scratch), free(xq);
}

TEST(matmul_matches_naive_loop) {
    cm_kernels_init(false);
    cm_rng r;
    cm_rng_init(&r, 4);
    cm_pool *pool3 = NULL, *pool1 = NULL;
    CHECK_OK(cm_pool_create(3, &pool3));
    CHECK_OK(cm_pool_create(1, &pool1));
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        check_matmul(NULL, weight_types[ti], 37, 512, 1, &r);
        check_matmul(pool1, weight_types[ti], 19, 256, 3, &r);
        check_matmul(pool3, weight_types[ti], 37, 512, 1, &r);
        check_matmul(pool3, weight_types[ti], 41, 512, 5, &r);
        check_matmul(pool3, weight_types[ti], 2, 256, 2, &r); /* fewer rows than threads */
    }
    cm_pool_destroy(pool3);
    cm_pool_destroy(pool1);
}

/* ---- 5. dispatched kernels against the reference ---- */

TEST(dispatched_equals_reference) {
    const char *name = cm_kernels_init(false);
    CHECK(name != NULL && !strcmp(name, cm_kernels_name()));
    fprintf(stderr, "     kernels: %s\n", name);
    cm_rng r;
    cm_rng_init(&r, 5);
    const int n = 1024;
    float *x = xmalloc(n * sizeof(float)), *y1 = xmalloc(n * sizeof(float)), *y2 = xmalloc(n * sizeof(float));
    uint8_t *q1 = xmalloc((size_t)n * 4), *q2 = xmalloc((size_t)n * 4);
    int n_differs = 0;
    for (int ti = 0; ti < N_ALL_TYPES; ti++) {
        const int type = all_types[ti];
        const cm_type_traits *d = cm_type_traits_get(type), *f = cm_type_traits_ref(type);
        CHECK(d && f && d->block_bytes == f->block_bytes && d->vec_dot_type == f->vec_dot_type);
        if (!d || !f) continue;
        n_differs += d->to_float != f->to_float || d->from_float != f->from_float || d->vec_dot != f->vec_dot;
        for (int rep = 0; rep < 3; rep++) {
            fill_normal(&r, x, n, rep == 2 ? 30.0f : 1.0f);
            /* to_float on the same bytes */
            f->from_float(x, q1, n);
            f->to_float(q1, y1, n);
            d->to_float(q1, y2, n);
            CHECK_MSG(rel_rms(y2, y1, n) <= 1e-6, "%s to_float: rel diff %g", f->name, rel_rms(y2, y1, n));
            /* from_float: both decoded by the reference; a different rounding
             * of ties may move a few quants by one step */
            d->from_float(x, q2, n);
            f->to_float(q2, y2, n);
            double e = rel_rms(y2, y1, n);
            CHECK_MSG(e <= 0.25 * roundtrip_bound(type), "%s from_float: rel diff %g", f->name, e);
            /* vec_dot on the same bytes */
            if (f->vec_dot) {
                const cm_type_traits *vt = cm_type_traits_ref(f->vec_dot_type);
                fill_normal(&r, y1, n, 1.0f);
                vt->from_float(y1, q2, n);
                float s_ref, s_got;
                f->vec_dot(n, &s_ref, q1, q2);
                d->vec_dot(n, &s_got, q1, q2);
                vt->to_float(q2, y2, n);
                f->to_float(q1, y1, n);
                double mag = 0;
                for (int i = 0; i < n; i++) mag += fabs((double)y1[i] * y2[i]);
                CHECK_MSG(fabs(s_got - s_ref) <= 1e-5 * mag, "%s vec_dot: %g vs ref %g", f->name, s_got, s_ref);
            }
        }
    }
    fprintf(stderr, "     %d types have a kernel other than the reference\n", n_differs);
    free(x), free(y1), free(y2), free(q1), free(q2);
}

TEST(traits_table) {
    for (int ti = 0; ti < N_ALL_TYPES; ti++) {
        const cm_type_traits *t = cm_type_traits_ref(all_types[ti]);
        CHECK(t && !strcmp(t->name, cm_type_name(all_types[ti])));
        CHECK(t && t->block_elems == cm_type_block_elems(all_types[ti]));
        CHECK(t && t->block_bytes == cm_type_block_bytes(all_types[ti]));
    }
    CHECK(cm_type_traits_get(4) == NULL); /* ids 4 and 5 are retired q4_2/q4_3 */
    CHECK(cm_type_traits_get(-1) == NULL && cm_type_traits_get(CM_TYPE_COUNT) == NULL);
    CHECK(cm_type_traits_ref(CM_TYPE_Q4_1)->vec_dot_type == CM_TYPE_Q8_1);
    CHECK(cm_type_traits_ref(CM_TYPE_Q6_K)->vec_dot_type == CM_TYPE_Q8_K);
    CHECK(cm_type_traits_ref(CM_TYPE_F16)->vec_dot_type == CM_TYPE_F16);
    CHECK(cm_matmul_scratch_bytes(CM_TYPE_Q4_0, 512, 3) == 3 * 16 * sizeof(cm_block_q8_0));
    CHECK(cm_matmul_scratch_bytes(CM_TYPE_F32, 512, 3) == 0);
}

int main(void) {
    RUN(traits_table);
    RUN(decode_matches_ggml_formulas);
    RUN(decode_literal_blocks);
    RUN(quantize_matches_ggml_32wide);
    RUN(quantize_q8_K_matches_ggml);
    RUN(roundtrip_error_bounds);
    RUN(k_quantizers_odd_inputs);
    RUN(vec_dot_matches_dequantized_dot);
    RUN(matmul_matches_naive_loop);
    RUN(dispatched_equals_reference);
    return test_summary();
}
