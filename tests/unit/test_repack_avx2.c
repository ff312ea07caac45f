/* test_repack_avx2.c - the AVX2 kernels over the repacked layouts
 * (x86/repack_avx2.c), called directly through cm_repack_q_avx2 and
 * cm_repack_k_avx2 so that they are checked whatever cm_repack_find selects
 * on this CPU, then as cm_repack_find hands them out under
 * CELLM_KERNELS=avx2 (which main sets).
 *
 * For each type with AVX2 ops:
 *   - the type id, bytes and pack / unpack_row are the AVX-512 ops' own
 *     (one layout, whichever kernels read it), and unpack_row(pack(x))
 *     gives x back;
 *   - matmul equals the reference vec_dot (ref.c) within 2e-5 of
 *     sum |w * a| for 1, 2, 3, 8, 9 and 17 tokens (partial and whole token
 *     tiles, and more than one tile) over all rows and over odd row ranges
 *     (one group in the middle, the last groups, the first group), and
 *     writes nothing outside its rows. The integer sums are exact, so a
 *     wrong weight, scale, min or offset lands far above the tolerance.
 * Weights: the reference quantizer's rows of different amplitudes, some
 * q8_0 rows raw random bytes (-128 included), some K rows' scale fields
 * random bytes; activations: the reference quantizer with some blocks raw
 * random bytes (-128 included; q8_K bsums recomputed), so the i16 sums
 * meet their largest magnitudes. Skips on a CPU without AVX2 or a build
 * without the x86 kernels. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"
#include "base/rng.h"
#include "base/status.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"
#include "kernels/repack.h"
#include "test.h"

#if defined(__x86_64__)
#include "kernels/x86/x86.h"
#define HAVE_X86_KERNELS 1
/* Weak, so that a build without the SIMD kernels (cmake -DCELLM_SIMD=OFF)
 * still links: the functions are then NULL and the tests skip. */
#pragma weak cm_x86_has_avx2
#pragma weak cm_repack_q_avx2
#pragma weak cm_repack_k_avx2
#pragma weak cm_repack_q_avx512
#pragma weak cm_repack_k_avx512
#endif

static cm_rng rng;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* The AVX2 ops for `type`, or NULL with a reason in *why. */
static const cm_repack_ops *avx2_ops(int type, const char **why) {
#if defined(HAVE_X86_KERNELS)
    if (!cm_x86_has_avx2 || !cm_repack_q_avx2 || !cm_repack_k_avx2) {
        *why = "built without the x86 SIMD kernels";
        return NULL;
    }
    if (!cm_x86_has_avx2()) {
        *why = "this CPU has no AVX2";
        return NULL;
    }
    const cm_repack_ops *ops = cm_repack_q_avx2(type);
    if (!ops) ops = cm_repack_k_avx2(type);
    if (!ops) *why = "no AVX2 kernels for this type's layout yet";
    return ops;
#else
    (void)type;
    *why = "not an x86-64 build";
    return NULL;
#endif
}

/* The AVX-512 ops of the same source type (only their table is read, no
 * kernel runs), or NULL. */
static const cm_repack_ops *avx512_ops(int type) {
#if defined(HAVE_X86_KERNELS)
    if (!cm_repack_q_avx512 || !cm_repack_k_avx512) return NULL;
    const cm_repack_ops *ops = cm_repack_q_avx512(type);
    return ops ? ops : cm_repack_k_avx512(type);
#else
    (void)type;
    return NULL;
#endif
}

static size_t row_bytes_of(int type, int64_t n_cols) {
    const cm_type_traits *tr = cm_type_traits_ref(type);
    return (size_t)(n_cols / tr->block_elems) * tr->block_bytes;
}

static void make_weights(int type, int64_t n_rows, int64_t n_cols, uint8_t *w, size_t rb) {
    const cm_type_traits *tr = cm_type_traits_ref(type);
    float *x = xmalloc((size_t)n_cols * sizeof *x);
    for (int64_t r = 0; r < n_rows; r++) {
        const float amp = 0.01f + 2.0f * cm_rng_f32(&rng);
        for (int64_t k = 0; k < n_cols; k++) {
            x[k] = amp * cm_rng_normal(&rng);
            if (cm_rng_u64(&rng) % 97 == 0) x[k] *= 8.0f; /* outliers */
        }
        uint8_t *row = w + (size_t)r * rb;
        tr->from_float(x, row, n_cols);
        if (r % 3 != 1) continue;
        if (type == CM_TYPE_Q8_0) {
            cm_block_q8_0 *b = (cm_block_q8_0 *)row;
            for (int64_t i = 0; i < n_cols / CM_QK; i++)
                for (int j = 0; j < CM_QK; j++) b[i].qs[j] = (int8_t)(uint8_t)cm_rng_u64(&rng);
            b[0].qs[0] = -128;
            b[0].qs[1] = -128;
        }
        for (int64_t i = 0; i < n_cols / CM_QK_K && type != CM_TYPE_Q8_0 && type != CM_TYPE_Q4_0; i++) {
            if (type == CM_TYPE_Q4_K) {
                cm_block_q4_K *b = (cm_block_q4_K *)row + i;
                for (int j = 0; j < CM_K_SCALE_SIZE; j++) b->scales[j] = (uint8_t)cm_rng_u64(&rng);
            } else if (type == CM_TYPE_Q5_K) {
                cm_block_q5_K *b = (cm_block_q5_K *)row + i;
                for (int j = 0; j < CM_K_SCALE_SIZE; j++) b->scales[j] = (uint8_t)cm_rng_u64(&rng);
            } else if (type == CM_TYPE_Q6_K) {
                cm_block_q6_K *b = (cm_block_q6_K *)row + i;
                for (int j = 0; j < 16; j++) b->scales[j] = (int8_t)(uint8_t)cm_rng_u64(&rng);
                if (i == 0) b->scales[0] = -128;
            }
        }
    }
    free(x);
}

/* n_tok activation rows of the type `type` dots against; every 5th block
 * raw random bytes, the first of them starting with -128, -128. */
static void make_act(int type, int64_t n_tok, int64_t n_cols, uint8_t *act, size_t arb) {
    const int at = cm_type_traits_ref(type)->vec_dot_type;
    const cm_type_traits *q8 = cm_type_traits_ref(at);
    float *x = xmalloc((size_t)n_cols * sizeof *x);
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t k = 0; k < n_cols; k++) x[k] = cm_rng_normal(&rng) * (t % 2 ? 3.0f : 0.5f);
        uint8_t *row = act + (size_t)t * arb;
        q8->from_float(x, row, n_cols);
        const int64_t nb = n_cols / q8->block_elems;
        for (int64_t i = t % 5; i < nb; i += 5) {
            int8_t *qs = at == CM_TYPE_Q8_0 ? ((cm_block_q8_0 *)row)[i].qs : ((cm_block_q8_K *)row)[i].qs;
            for (int j = 0; j < q8->block_elems; j++) qs[j] = (int8_t)(uint8_t)cm_rng_u64(&rng);
            qs[0] = qs[1] = -128;
            if (at == CM_TYPE_Q8_K) {
                cm_block_q8_K *b = (cm_block_q8_K *)row + i;
                for (int s = 0; s < CM_QK_K / 16; s++) {
                    int sum = 0;
                    for (int j = 0; j < 16; j++) sum += b->qs[16 * s + j];
                    b->bsums[s] = (int16_t)sum;
                }
            }
        }
    }
    free(x);
}

/* matmul of rows [r0, r1) against the reference; returns the wrong count. */
static int check_range(const cm_repack_ops *ops, const uint8_t *p, int64_t n_rows, int64_t n_cols, const uint8_t *act,
                       size_t arb, int64_t n_tok, const float *ref, const float *tol, int64_t r0, int64_t r1) {
    const int64_t ys = n_rows + 5;
    float *y = xmalloc((size_t)(ys * n_tok) * sizeof *y);
    for (int64_t i = 0; i < ys * n_tok; i++) y[i] = -12345.0f;
    ops->matmul(p, n_cols, r0, r1, act, arb, n_tok, y, ys);
    int bad = 0, outside = 0;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < ys; r++) {
            const float got = y[t * ys + r];
            if (r < r0 || r >= r1) {
                outside += got != -12345.0f;
                continue;
            }
            const float want = ref[t * n_rows + r];
            if (!(fabsf(got - want) <= tol[t * n_rows + r]) && bad++ < 3)
                fprintf(stderr, "     %s %lldx%lld tokens %lld rows [%lld, %lld): y[t=%lld, r=%lld] = %g, want %g\n",
                        ops->name, (long long)n_rows, (long long)n_cols, (long long)n_tok, (long long)r0,
                        (long long)r1, (long long)t, (long long)r, got, want);
        }
    CHECK_MSG(outside == 0, "%s: %d values written outside rows [%lld, %lld)", ops->name, outside, (long long)r0,
              (long long)r1);
    free(y);
    return bad;
}

static void check_shape(const cm_repack_ops *ops, int64_t n_rows, int64_t n_cols, const int64_t *toks, int n_toks) {
    const int type = ops->src_type;
    const cm_type_traits *tr = cm_type_traits_ref(type);
    const cm_type_traits *q8 = cm_type_traits_ref(tr->vec_dot_type);
    const size_t rb = row_bytes_of(type, n_cols);
    const size_t arb = row_bytes_of(tr->vec_dot_type, n_cols);
    uint8_t *w = xmalloc(rb * (size_t)n_rows);
    make_weights(type, n_rows, n_cols, w, rb);

    const size_t bytes = ops->bytes(n_rows, n_cols);
    CHECK(bytes == (size_t)(n_rows / CM_REPACK_ROWS) * ops->bytes(CM_REPACK_ROWS, n_cols));
    uint8_t *p = xmalloc(bytes + 64);
    memset(p, 0xa5, bytes + 64);
    ops->pack(w, rb, n_rows, n_cols, p);
    int tail = 1;
    for (int i = 0; i < 64; i++) tail &= p[bytes + i] == 0xa5;
    CHECK_MSG(tail, "%s: pack wrote past bytes()", ops->name);
    uint8_t *back = xmalloc(rb);
    int same = 1;
    for (int64_t r = 0; r < n_rows; r++) {
        ops->unpack_row(p, n_cols, r, back);
        same &= memcmp(back, w + (size_t)r * rb, rb) == 0;
    }
    CHECK_MSG(same, "%s %lldx%lld: unpack_row(pack(x)) differs", ops->name, (long long)n_rows, (long long)n_cols);

    int64_t max_tok = 0;
    for (int i = 0; i < n_toks; i++) max_tok = toks[i] > max_tok ? toks[i] : max_tok;
    uint8_t *act = xmalloc(arb * (size_t)max_tok);
    make_act(type, max_tok, n_cols, act, arb);
    float *wf = xmalloc((size_t)n_cols * sizeof *wf), *af = xmalloc((size_t)n_cols * sizeof *af);
    float *ref = xmalloc((size_t)(n_rows * max_tok) * sizeof *ref);
    float *tol = xmalloc((size_t)(n_rows * max_tok) * sizeof *tol);
    for (int64_t r = 0; r < n_rows; r++) {
        tr->to_float(w + (size_t)r * rb, wf, n_cols);
        for (int64_t t = 0; t < max_tok; t++) {
            q8->to_float(act + (size_t)t * arb, af, n_cols);
            double mag = 0;
            for (int64_t k = 0; k < n_cols; k++) mag += fabs((double)wf[k] * af[k]);
            tr->vec_dot((int)n_cols, &ref[t * n_rows + r], w + (size_t)r * rb, act + (size_t)t * arb);
            tol[t * n_rows + r] = (float)(2e-5 * mag + 1e-6);
        }
    }
    /* tokens of a shorter run are the first rows of the longest: ref and
     * tol are indexed t * n_rows + r either way */
    const int64_t g = CM_REPACK_ROWS;
    const int64_t ranges[][2] = {{0, n_rows}, {g, 2 * g}, {n_rows - 2 * g, n_rows}, {0, g}};
    for (int i = 0; i < n_toks; i++)
        for (size_t k = 0; k < sizeof ranges / sizeof ranges[0]; k++) {
            const int64_t r0 = ranges[k][0], r1 = ranges[k][1];
            if (r0 < 0 || r1 > n_rows || r0 >= r1 || (k > 0 && r0 == 0 && r1 == n_rows)) continue;
            CHECK(check_range(ops, p, n_rows, n_cols, act, arb, toks[i], ref, tol, r0, r1) == 0);
        }
    free(tol), free(ref), free(af), free(wf), free(act), free(back), free(p), free(w);
}

static void check_type(int type) {
    const char *why = "";
    const cm_repack_ops *ops = avx2_ops(type, &why);
    if (!ops) {
        TEST_SKIP("%s", why);
        return;
    }
    CHECK(ops->src_type == type);
    CHECK(!cm_type_traits_get(ops->type)); /* never a file type */
    /* one layout: the AVX-512 ops' id and pack / unpack_row */
    const cm_repack_ops *o512 = avx512_ops(type);
    if (o512) {
        CHECK(o512->type == ops->type);
        CHECK(o512->bytes == ops->bytes);
        CHECK(o512->pack == ops->pack);
        CHECK(o512->unpack_row == ops->unpack_row);
        CHECK(!strcmp(o512->name, ops->name));
    }
    static const int64_t toks[] = {1, 2, 3, 8, 9, 17};
    const int n_toks = (int)(sizeof toks / sizeof toks[0]);
    const bool k = cm_type_traits_ref(type)->block_elems == CM_QK_K;
    /* odd numbers of groups, and several block columns */
    check_shape(ops, 16, k ? 256 : 32, toks, n_toks);
    check_shape(ops, 48, k ? 768 : 96, toks, n_toks);
    check_shape(ops, 80, k ? 2048 : 1024, toks, n_toks);
    check_shape(ops, 32, 4096, toks, 3); /* 1, 2, 3 tokens: decode's width */
}

TEST(q4_0) { check_type(CM_TYPE_Q4_0); }
TEST(q8_0) { check_type(CM_TYPE_Q8_0); }
TEST(q4_K) { check_type(CM_TYPE_Q4_K); }
TEST(q6_K) { check_type(CM_TYPE_Q6_K); }
TEST(q5_K) { check_type(CM_TYPE_Q5_K); }

/* Under CELLM_KERNELS=avx2, cm_repack_find hands out the AVX2 ops (and
 * cm_repack_ops_of knows their ids), and cm_matmul on a repacked weight
 * equals cm_matmul on the file layout (the pool's chunks of rows for few
 * tokens, contiguous ranges for many). */
static void check_cm_matmul(int type, cm_pool *pool, int64_t n_rows, int64_t n_cols, int64_t n_tok) {
    const cm_repack_ops *ops = cm_repack_find(type);
    const size_t rb = row_bytes_of(type, n_cols);
    uint8_t *w = xmalloc(rb * (size_t)n_rows);
    make_weights(type, n_rows, n_cols, w, rb);
    uint8_t *p = xmalloc(ops->bytes(n_rows, n_cols));
    ops->pack(w, rb, n_rows, n_cols, p);
    float *x = xmalloc((size_t)(n_cols * n_tok) * sizeof *x);
    for (int64_t i = 0; i < n_cols * n_tok; i++) x[i] = cm_rng_normal(&rng);
    void *scratch = xmalloc(cm_matmul_scratch_bytes(type, n_cols, n_tok));
    float *y0 = xmalloc((size_t)(n_rows * n_tok) * sizeof *y0), *y1 = xmalloc((size_t)(n_rows * n_tok) * sizeof *y1);
    for (int64_t i = 0; i < n_rows * n_tok; i++) y0[i] = y1[i] = NAN;
    cm_matmul(pool, type, w, rb, n_rows, n_cols, x, n_tok, y0, scratch);
    cm_matmul(pool, ops->type, p, rb, n_rows, n_cols, x, n_tok, y1, scratch);
    int bad = 0;
    for (int64_t i = 0; i < n_rows * n_tok; i++)
        if (!(fabsf(y0[i] - y1[i]) <= 1e-4f * (1.0f + fabsf(y0[i]))) && bad++ < 3)
            fprintf(stderr, "     %s %lldx%lld tokens %lld: y[%lld] = %g repacked, %g file\n", ops->name,
                    (long long)n_rows, (long long)n_cols, (long long)n_tok, (long long)i, y1[i], y0[i]);
    CHECK(bad == 0);
    free(y1), free(y0), free(scratch), free(x), free(p), free(w);
}

TEST(selected_under_avx2) {
    const char *k = cm_kernels_init(false);
    if (strcmp(k, "avx2") != 0) {
        TEST_SKIP("kernels are %s, not avx2 (CPU without AVX2, or a build without the x86 kernels)", k);
        return;
    }
    cm_pool *pool = NULL;
    CHECK_OK(cm_pool_create(2, &pool));
    const int types[] = {CM_TYPE_Q4_0, CM_TYPE_Q8_0, CM_TYPE_Q4_K, CM_TYPE_Q6_K, CM_TYPE_Q5_K};
    int checked = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const char *why = "";
        const cm_repack_ops *ops = avx2_ops(types[i], &why);
        CHECK(cm_repack_find(types[i]) == ops);
        if (!ops) continue;
        CHECK(cm_repack_ops_of(ops->type) == ops);
        const int64_t cols = cm_type_traits_ref(types[i])->block_elems == CM_QK_K ? 512 : 256;
        check_cm_matmul(types[i], NULL, 80, cols, 1);
        check_cm_matmul(types[i], pool, 80, cols, 1);
        check_cm_matmul(types[i], pool, 80, cols, 2);
        check_cm_matmul(types[i], pool, 48, cols, 33);
        checked++;
    }
    CHECK(checked >= 2);
    setenv("CELLM_REPACK", "off", 1);
    CHECK(cm_repack_find(CM_TYPE_Q4_0) == NULL);
    unsetenv("CELLM_REPACK");
    cm_pool_destroy(pool);
}

int main(void) {
    cm_rng_init(&rng, 20261123);
    /* the selection test needs the AVX2 choice; the direct tests run on
     * any CPU with AVX2 either way */
    setenv("CELLM_KERNELS", "avx2", 1);
    unsetenv("CELLM_REPACK");
    RUN(q4_0);
    RUN(q8_0);
    RUN(q4_K);
    RUN(q6_K);
    RUN(q5_K);
    RUN(selected_under_avx2);
    return test_summary();
}
