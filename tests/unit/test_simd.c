/* test_simd.c - every SIMD kernel of every ISA level this CPU has, held to
 * the reference kernels of ref.c.
 *
 * The dispatcher picks one level; this test calls each level's kernels
 * directly (AVX2 and AVX-512 on an AVX-512 machine, NEON and NEON+dotprod
 * on a dotprod arm64), so a level that is not the default is still checked.
 * Weights are random bytes (every nibble, bit and 6-bit scale pattern, q8
 * weights of -128 included) with sane f16 scales, and also quantized from
 * random floats with outliers; activations come from the reference
 * quantizer. Row lengths: one block, odd block counts (the 2-blocks-per-
 * register kernels have a tail) and a 4096-wide row. Quantizers must give
 * the same bytes as the reference. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/fp16.h"
#include "base/rng.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"
#include "test.h"

#if defined(__x86_64__)
#include "kernels/x86/x86.h"
#define HAVE_X86_KERNELS 1
/* Weak, so that a build without the SIMD kernels (cmake -DCELLM_SIMD=OFF)
 * still links: the functions are then NULL and the x86 tests skip. In a
 * SIMD build the dispatcher pulls x86.o and, through it, every kernel. */
#pragma weak cm_x86_has_avx2
#pragma weak cm_x86_has_avx512_vnni
#pragma weak cm_vec_dot_f32_f32_avx2
#pragma weak cm_vec_dot_f16_f16_avx2
#pragma weak cm_vec_dot_bf16_bf16_avx2
#pragma weak cm_vec_dot_q4_0_q8_0_avx2
#pragma weak cm_vec_dot_q4_1_q8_1_avx2
#pragma weak cm_vec_dot_q5_0_q8_0_avx2
#pragma weak cm_vec_dot_q5_1_q8_1_avx2
#pragma weak cm_vec_dot_q8_0_q8_0_avx2
#pragma weak cm_vec_dot_q2_K_q8_K_avx2
#pragma weak cm_vec_dot_q3_K_q8_K_avx2
#pragma weak cm_vec_dot_q4_K_q8_K_avx2
#pragma weak cm_vec_dot_q5_K_q8_K_avx2
#pragma weak cm_vec_dot_q6_K_q8_K_avx2
#pragma weak cm_vec_dot_f32_f32_avx512
#pragma weak cm_vec_dot_f16_f16_avx512
#pragma weak cm_vec_dot_bf16_bf16_avx512
#pragma weak cm_vec_dot_q4_0_q8_0_avx512
#pragma weak cm_vec_dot_q8_0_q8_0_avx512
#pragma weak cm_vec_dot_q4_K_q8_K_avx512
#pragma weak cm_vec_dot_q5_K_q8_K_avx512
#pragma weak cm_vec_dot_q6_K_q8_K_avx512
#pragma weak cm_quantize_q8_0_avx2
#pragma weak cm_quantize_q8_1_avx2
#pragma weak cm_quantize_q8_K_avx2
#pragma weak cm_quantize_f16_avx2
#pragma weak cm_gemm_panel_bytes
#pragma weak cm_gemm_pack_avx512
#pragma weak cm_gemm_act_info_avx512
#pragma weak cm_gemm_q8_0_avx512
#pragma weak cm_gemm_x86_applies
#pragma weak cm_gemm_x86_min_tokens
#pragma weak cm_gemm_x86
#endif
#if defined(__aarch64__)
#include "kernels/arm/arm.h"
#define HAVE_ARM_KERNELS 1
#endif

typedef struct level_dot {
    const char *level;
    int type;
    cm_vec_dot_fn fn;
} level_dot;

typedef struct level_quant {
    const char *level;
    int type;
    cm_from_float_fn fn;
} level_quant;

#define MAX_DOTS 64
static level_dot dots[MAX_DOTS];
static int n_dots;
static level_quant quants[16];
static int n_quants;

static void add_dot(const char *level, int type, cm_vec_dot_fn fn) {
    dots[n_dots++] = (level_dot){level, type, fn};
}
static void add_quant(const char *level, int type, cm_from_float_fn fn) {
    quants[n_quants++] = (level_quant){level, type, fn};
}

static void collect(void) {
#if defined(HAVE_X86_KERNELS)
    if (!cm_x86_has_avx2 || !cm_gemm_x86) {
        fprintf(stderr, "     built without the x86 SIMD kernels\n");
        return;
    }
    if (cm_x86_has_avx2()) {
        add_dot("avx2", CM_TYPE_F32, cm_vec_dot_f32_f32_avx2);
        add_dot("avx2", CM_TYPE_F16, cm_vec_dot_f16_f16_avx2);
        add_dot("avx2", CM_TYPE_BF16, cm_vec_dot_bf16_bf16_avx2);
        add_dot("avx2", CM_TYPE_Q4_0, cm_vec_dot_q4_0_q8_0_avx2);
        add_dot("avx2", CM_TYPE_Q4_1, cm_vec_dot_q4_1_q8_1_avx2);
        add_dot("avx2", CM_TYPE_Q5_0, cm_vec_dot_q5_0_q8_0_avx2);
        add_dot("avx2", CM_TYPE_Q5_1, cm_vec_dot_q5_1_q8_1_avx2);
        add_dot("avx2", CM_TYPE_Q8_0, cm_vec_dot_q8_0_q8_0_avx2);
        add_dot("avx2", CM_TYPE_Q2_K, cm_vec_dot_q2_K_q8_K_avx2);
        add_dot("avx2", CM_TYPE_Q3_K, cm_vec_dot_q3_K_q8_K_avx2);
        add_dot("avx2", CM_TYPE_Q4_K, cm_vec_dot_q4_K_q8_K_avx2);
        add_dot("avx2", CM_TYPE_Q5_K, cm_vec_dot_q5_K_q8_K_avx2);
        add_dot("avx2", CM_TYPE_Q6_K, cm_vec_dot_q6_K_q8_K_avx2);
        add_quant("avx2", CM_TYPE_Q8_0, cm_quantize_q8_0_avx2);
        add_quant("avx2", CM_TYPE_Q8_1, cm_quantize_q8_1_avx2);
        add_quant("avx2", CM_TYPE_Q8_K, cm_quantize_q8_K_avx2);
        add_quant("avx2", CM_TYPE_F16, cm_quantize_f16_avx2);
    }
    if (cm_x86_has_avx512_vnni()) {
        add_dot("avx512", CM_TYPE_F32, cm_vec_dot_f32_f32_avx512);
        add_dot("avx512", CM_TYPE_F16, cm_vec_dot_f16_f16_avx512);
        add_dot("avx512", CM_TYPE_BF16, cm_vec_dot_bf16_bf16_avx512);
        add_dot("avx512", CM_TYPE_Q4_0, cm_vec_dot_q4_0_q8_0_avx512);
        add_dot("avx512", CM_TYPE_Q8_0, cm_vec_dot_q8_0_q8_0_avx512);
        add_dot("avx512", CM_TYPE_Q4_K, cm_vec_dot_q4_K_q8_K_avx512);
        add_dot("avx512", CM_TYPE_Q5_K, cm_vec_dot_q5_K_q8_K_avx512);
        add_dot("avx512", CM_TYPE_Q6_K, cm_vec_dot_q6_K_q8_K_avx512);
    }
#endif
#if defined(HAVE_ARM_KERNELS)
    add_dot("neon", CM_TYPE_F32, cm_vec_dot_f32_f32_neon);
    add_dot("neon", CM_TYPE_F16, cm_vec_dot_f16_f16_neon);
    add_dot("neon", CM_TYPE_Q4_0, cm_vec_dot_q4_0_q8_0_neon);
    add_dot("neon", CM_TYPE_Q8_0, cm_vec_dot_q8_0_q8_0_neon);
    add_dot("neon", CM_TYPE_Q4_K, cm_vec_dot_q4_K_q8_K_neon);
    add_dot("neon", CM_TYPE_Q6_K, cm_vec_dot_q6_K_q8_K_neon);
    add_dot("neon", CM_TYPE_BF16, cm_vec_dot_bf16_bf16_neon);
#define ADD_ARM_REST(isa)                                            \
    add_dot(#isa, CM_TYPE_Q4_1, cm_vec_dot_q4_1_q8_1_##isa);         \
    add_dot(#isa, CM_TYPE_Q5_0, cm_vec_dot_q5_0_q8_0_##isa);         \
    add_dot(#isa, CM_TYPE_Q5_1, cm_vec_dot_q5_1_q8_1_##isa);         \
    add_dot(#isa, CM_TYPE_Q2_K, cm_vec_dot_q2_K_q8_K_##isa);         \
    add_dot(#isa, CM_TYPE_Q3_K, cm_vec_dot_q3_K_q8_K_##isa);         \
    add_dot(#isa, CM_TYPE_Q5_K, cm_vec_dot_q5_K_q8_K_##isa);
    ADD_ARM_REST(neon)
    add_quant("neon", CM_TYPE_Q8_0, cm_quantize_q8_0_neon);
    add_quant("neon", CM_TYPE_Q8_1, cm_quantize_q8_1_neon);
    add_quant("neon", CM_TYPE_Q8_K, cm_quantize_q8_K_neon);
    if (cm_arm_has_dotprod()) {
        add_dot("dotprod", CM_TYPE_Q4_0, cm_vec_dot_q4_0_q8_0_dotprod);
        add_dot("dotprod", CM_TYPE_Q8_0, cm_vec_dot_q8_0_q8_0_dotprod);
        add_dot("dotprod", CM_TYPE_Q4_K, cm_vec_dot_q4_K_q8_K_dotprod);
        add_dot("dotprod", CM_TYPE_Q6_K, cm_vec_dot_q6_K_q8_K_dotprod);
        ADD_ARM_REST(dotprod)
    } else {
        fprintf(stderr, "     this CPU has no dot-product extension: dotprod kernels not checked\n");
    }
#endif
}

/* f16 scale fields of each block layout: byte offsets, -1 terminated */
static const int *f16_fields(int type) {
    static const int q4_0[] = {0, -1}, q4_1[] = {0, 2, -1}, q2_K[] = {80, 82, -1}, q3_K[] = {108, -1},
                     q4_K[] = {0, 2, -1}, q6_K[] = {208, -1}, none[] = {-1};
    switch (type) {
    case CM_TYPE_Q4_0: case CM_TYPE_Q5_0: case CM_TYPE_Q8_0: return q4_0;
    case CM_TYPE_Q4_1: case CM_TYPE_Q5_1: return q4_1;
    case CM_TYPE_Q2_K: return q2_K;
    case CM_TYPE_Q3_K: return q3_K;
    case CM_TYPE_Q4_K: case CM_TYPE_Q5_K: return q4_K;
    case CM_TYPE_Q6_K: return q6_K;
    default: return none;
    }
}

static float frand(cm_rng *r) { return (float)(cm_rng_f64(r) * 2.0 - 1.0); }

static void random_floats(cm_rng *r, float *x, int n, int outliers) {
    for (int i = 0; i < n; i++) x[i] = frand(r);
    for (int k = 0; k < outliers && n > 0; k++) x[cm_rng_u64(r) % (uint64_t)n] = frand(r) * 60.0f;
}

/* A weight row of `type`: random bytes with sane scales (raw), or the
 * reference quantizer applied to random floats. */
static void make_weights(cm_rng *r, int type, int n, void *w, float *tmp, int raw) {
    const cm_type_traits *t = cm_type_traits_ref(type);
    if (!t->is_quantized) {
        random_floats(r, tmp, n, raw ? 3 : 0);
        t->from_float(tmp, w, n);
        return;
    }
    if (!raw) {
        random_floats(r, tmp, n, 2);
        t->from_float(tmp, w, n);
        return;
    }
    uint8_t *b = w;
    size_t bytes = (size_t)(n / t->block_elems) * t->block_bytes;
    for (size_t i = 0; i < bytes; i++) b[i] = (uint8_t)cm_rng_u64(r);
    for (int blk = 0; blk < n / t->block_elems; blk++) {
        for (const int *f = f16_fields(type); *f >= 0; f++) {
            cm_f16 h = cm_f32_to_f16(frand(r) * 0.05f);
            memcpy(b + (size_t)blk * t->block_bytes + *f, &h, 2);
        }
    }
}

/* sum |w_i * y_i| over the dequantized rows: the scale of rounding error */
static double abs_dot(int type, int n, const void *w, const void *a, float *fw, float *fa) {
    const cm_type_traits *t = cm_type_traits_ref(type);
    t->to_float(w, fw, n);
    cm_type_traits_ref(t->vec_dot_type)->to_float(a, fa, n);
    double s = 0;
    for (int i = 0; i < n; i++) s += fabs((double)fw[i] * fa[i]);
    return s;
}

static const int lens_32[] = {32, 64, 96, 224, 1056, 4096};
static const int lens_256[] = {256, 512, 768, 2816, 4096};
static const int lens_1[] = {1, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 100, 4096};

TEST(dots_match_reference) {
    if (!n_dots) TEST_SKIP("no SIMD kernels for this CPU");
    cm_rng r;
    cm_rng_init(&r, 1234);
    const int nmax = 4096;
    float *xf = malloc(nmax * sizeof(float)), *fw = malloc(nmax * sizeof(float)), *fa = malloc(nmax * sizeof(float));
    void *w = malloc(nmax * 4 + 64), *a = malloc(nmax * 4 + 64);
    for (int k = 0; k < n_dots; k++) {
        const level_dot *ld = &dots[k];
        const cm_type_traits *t = cm_type_traits_ref(ld->type);
        const cm_type_traits *at = cm_type_traits_ref(t->vec_dot_type);
        const int *lens = t->block_elems == 1 ? lens_1 : t->block_elems == 32 ? lens_32 : lens_256;
        int n_lens = t->block_elems == 1 ? (int)(sizeof lens_1 / sizeof *lens_1)
                     : t->block_elems == 32 ? (int)(sizeof lens_32 / sizeof *lens_32)
                                            : (int)(sizeof lens_256 / sizeof *lens_256);
        int bad = 0;
        for (int li = 0; li < n_lens; li++) {
            const int n = lens[li];
            for (int rep = 0; rep < 6; rep++) {
                make_weights(&r, ld->type, n, w, xf, rep & 1);
                random_floats(&r, xf, n, rep >= 4 ? 3 : 0);
                at->from_float(xf, a, n);
                float want = 0, got = 0;
                t->vec_dot(n, &want, w, a);
                ld->fn(n, &got, w, a);
                double tol = 1e-5 * abs_dot(ld->type, n, w, a, fw, fa) + 1e-6;
                if (!(fabs((double)want - got) <= tol) && bad++ < 3)
                    CHECK_MSG(0, "%s %s n=%d rep=%d: ref %.9g simd %.9g (tol %.3g)", ld->level, t->name, n, rep,
                              (double)want, (double)got, tol);
            }
        }
        if (!bad) fprintf(stderr, "     %-7s %-5s matches\n", ld->level, t->name);
    }
    free(xf), free(fw), free(fa), free(w), free(a);
}

TEST(quantizers_give_reference_bytes) {
    if (!n_quants) TEST_SKIP("no SIMD quantizers for this CPU");
    cm_rng r;
    cm_rng_init(&r, 99);
    const int n = 4096;
    float *x = malloc(n * sizeof(float));
    uint8_t *want = malloc(n * 4), *got = malloc(n * 4);
    for (int k = 0; k < n_quants; k++) {
        const cm_type_traits *t = cm_type_traits_ref(quants[k].type);
        size_t bytes = (size_t)(n / t->block_elems) * t->block_bytes;
        for (int rep = 0; rep < 8; rep++) {
            random_floats(&r, x, n, rep);
            if (rep == 1) memset(x, 0, 512 * sizeof(float)); /* all-zero blocks */
            if (rep == 2)                                     /* exact halves: rounding ties */
                for (int i = 0; i < n; i++) x[i] = (float)((int)(cm_rng_u64(&r) % 255) - 127) * 0.5f;
            if (rep == 3) /* same magnitude both signs: which one sets the sign of q8_K's scale */
                for (int i = 0; i < n; i += 64) x[i] = 100.0f, x[i + 1] = -100.0f;
            memset(want, 0xaa, bytes);
            memset(got, 0x55, bytes);
            t->from_float(x, want, n);
            quants[k].fn(x, got, n);
            CHECK_MSG(!memcmp(want, got, bytes), "%s quantize %s rep %d: bytes differ from the reference",
                      quants[k].level, t->name, rep);
        }
    }
    free(x), free(want), free(got);
}

#if defined(HAVE_X86_KERNELS)
/* The blocked AVX-512 matmul: every (row, token) of panels with 1..16 rows
 * and tiles of 1..8 tokens against the reference dot. */
TEST(gemm_matches_reference) {
    if (!cm_x86_has_avx512_vnni || !cm_x86_has_avx512_vnni()) TEST_SKIP("no AVX-512 VNNI (or no SIMD build)");
    cm_rng r;
    cm_rng_init(&r, 5);
    static const int cols[] = {32, 96, 2048};
    static const int rows[] = {1, 7, 16};
    static const int toks[] = {1, 3, 8};
    const int types[] = {CM_TYPE_Q4_0, CM_TYPE_Q8_0};
    const int nmax = 2048;
    float *xf = malloc(nmax * sizeof(float)), *fw = malloc(nmax * sizeof(float)), *fa = malloc(nmax * sizeof(float));
    uint8_t *w = malloc((size_t)16 * nmax * 2), *a = malloc((size_t)8 * nmax * 2);
    void *panel = malloc(cm_gemm_panel_bytes(nmax));
    cm_gemm_act_info *info = malloc((size_t)8 * (nmax / 32) * sizeof *info);
    float y[8 * 16];
    for (int ti = 0; ti < 2; ti++) {
        const int type = types[ti];
        const cm_type_traits *t = cm_type_traits_ref(type), *at = cm_type_traits_ref(CM_TYPE_Q8_0);
        int bad = 0;
        for (int ci = 0; ci < 3; ci++) {
            const int n = cols[ci];
            const size_t wrb = (size_t)(n / 32) * t->block_bytes, arb = (size_t)(n / 32) * at->block_bytes;
            for (int k = 0; k < 16; k++) make_weights(&r, type, n, w + k * wrb, xf, k & 1);
            for (int k = 0; k < 8; k++) {
                random_floats(&r, xf, n, k & 1);
                at->from_float(xf, a + k * arb, n);
            }
            cm_gemm_act_info_avx512(type, a, arb, 8, n, info);
            for (int ri = 0; ri < 3; ri++) {
                cm_gemm_pack_avx512(type, w, wrb, rows[ri], n, panel);
                for (int ki = 0; ki < 3; ki++) {
                    for (int k = 0; k < 8 * 16; k++) y[k] = -12345.0f;
                    cm_gemm_q8_0_avx512(type, panel, rows[ri], n, a, arb, info, toks[ki], y, 16);
                    for (int tk = 0; tk < 8; tk++) {
                        for (int rr = 0; rr < 16; rr++) {
                            const float got = y[tk * 16 + rr];
                            if (tk >= toks[ki] || rr >= rows[ri]) {
                                if (got != -12345.0f && bad++ < 3)
                                    CHECK_MSG(0, "%s: wrote outside %d rows x %d tokens", t->name, rows[ri], toks[ki]);
                                continue;
                            }
                            float want;
                            t->vec_dot(n, &want, w + rr * wrb, a + tk * arb);
                            double tol = 1e-5 * abs_dot(type, n, w + rr * wrb, a + tk * arb, fw, fa) + 1e-6;
                            if (!(fabs((double)want - got) <= tol) && bad++ < 3)
                                CHECK_MSG(0, "%s n=%d row %d token %d: ref %.9g gemm %.9g", t->name, n, rr, tk,
                                          (double)want, (double)got);
                        }
                    }
                }
            }
        }
        if (!bad) fprintf(stderr, "     gemm    %-5s matches\n", t->name);
    }
    free(xf), free(fw), free(fa), free(w), free(a), free(panel), free(info);
}

/* The matmul hook: odd row ranges (partial panels) and token counts (partial
 * tiles) of a small matrix, against the reference dots. */
TEST(gemm_hook_matches_reference) {
    cm_kernels_init(false);
    if (!cm_gemm_x86_applies || !cm_gemm_x86_applies(CM_TYPE_Q4_0, 8))
        TEST_SKIP("no blocked kernel for this CPU, build or CELLM_KERNELS");
    CHECK(!cm_gemm_x86_applies(CM_TYPE_Q4_0, 1));
    CHECK(!cm_gemm_x86_applies(CM_TYPE_Q5_K, 1000));
    CHECK(!cm_gemm_x86_applies(CM_TYPE_Q6_K, cm_gemm_x86_min_tokens(CM_TYPE_Q6_K) - 1));
    cm_rng r;
    cm_rng_init(&r, 11);
    const int n_rows = 37, n_tok_max = 64 + 3;
    const int types[] = {CM_TYPE_Q4_0, CM_TYPE_Q8_0, CM_TYPE_Q4_K, CM_TYPE_Q6_K};
    const int n = 512; /* two q4_K super-blocks, sixteen 32-wide blocks */
    float *xf = malloc(n * sizeof(float)), *fw = malloc(n * sizeof(float)), *fa = malloc(n * sizeof(float));
    float *y = malloc((size_t)n_tok_max * n_rows * sizeof(float));
    uint8_t *w = malloc((size_t)n_rows * n * 2), *a = malloc((size_t)n_tok_max * n * 2);
    for (int ti = 0; ti < 4; ti++) {
        const cm_type_traits *t = cm_type_traits_ref(types[ti]), *at = cm_type_traits_ref(t->vec_dot_type);
        /* a partial tile of 8 at the end, and at least the type's minimum */
        const int n_tok = (cm_gemm_x86_min_tokens(types[ti]) > 8 ? cm_gemm_x86_min_tokens(types[ti]) : 8) + 3;
        CHECK(n_tok <= n_tok_max);
        const size_t wrb = (size_t)(n / t->block_elems) * t->block_bytes;
        const size_t arb = (size_t)(n / at->block_elems) * at->block_bytes;
        for (int k = 0; k < n_rows; k++) make_weights(&r, types[ti], n, w + k * wrb, xf, k & 1);
        for (int k = 0; k < n_tok; k++) {
            random_floats(&r, xf, n, 1);
            at->from_float(xf, a + k * arb, n);
        }
        for (int k = 0; k < n_tok * n_rows; k++) y[k] = -777.0f;
        /* rows split as two threads would: [0, 19) and [19, 37) */
        CHECK(cm_gemm_x86(types[ti], w, wrb, 0, 19, n, a, arb, n_tok, y, n_rows));
        CHECK(cm_gemm_x86(types[ti], w, wrb, 19, n_rows, n, a, arb, n_tok, y, n_rows));
        int bad = 0;
        for (int tk = 0; tk < n_tok; tk++) {
            for (int rr = 0; rr < n_rows; rr++) {
                float want;
                t->vec_dot(n, &want, w + rr * wrb, a + tk * arb);
                double tol = 1e-5 * abs_dot(types[ti], n, w + rr * wrb, a + tk * arb, fw, fa) + 1e-6;
                if (!(fabs((double)want - y[tk * n_rows + rr]) <= tol) && bad++ < 3)
                    CHECK_MSG(0, "%s row %d token %d: ref %g hook %g", t->name, rr, tk, (double)want,
                              (double)y[tk * n_rows + rr]);
            }
        }
        if (!bad) fprintf(stderr, "     hook    %-5s matches\n", t->name);
    }
    free(xf), free(fw), free(fa), free(y), free(w), free(a);
}
#endif

/* The dispatched table: whatever cm_kernels_init chose must also agree. */
TEST(dispatched_kernels_match_reference) {
    const char *name = cm_kernels_init(false);
    fprintf(stderr, "     dispatcher chose %s\n", name);
    cm_rng r;
    cm_rng_init(&r, 7);
    const int n = 2048;
    float *xf = malloc(n * sizeof(float)), *fw = malloc(n * sizeof(float)), *fa = malloc(n * sizeof(float));
    void *w = malloc(n * 4), *a = malloc(n * 4);
    for (int type = 0; type < CM_TYPE_COUNT; type++) {
        const cm_type_traits *t = cm_type_traits_get(type), *tr = cm_type_traits_ref(type);
        if (!t || !t->vec_dot) continue;
        make_weights(&r, type, n, w, xf, 1);
        random_floats(&r, xf, n, 1);
        cm_type_traits_ref(t->vec_dot_type)->from_float(xf, a, n);
        float want = 0, got = 0;
        tr->vec_dot(n, &want, w, a);
        t->vec_dot(n, &got, w, a);
        CHECK_NEAR(got, want, 1e-5 * abs_dot(type, n, w, a, fw, fa) + 1e-6);
    }
    free(xf), free(fw), free(fa), free(w), free(a);
}

int main(void) {
    collect();
    RUN(dots_match_reference);
    RUN(quantizers_give_reference_bytes);
#if defined(HAVE_X86_KERNELS)
    RUN(gemm_matches_reference);
    RUN(gemm_hook_matches_reference);
#endif
    RUN(dispatched_kernels_match_reference);
    return test_summary();
}
