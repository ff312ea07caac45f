/* kernels.c - the type traits table, the choice of kernels at start-up, and
 * the matrix multiplication built on them.
 *
 * Two tables indexed by cm_type id: `ref_traits` (constant, every entry from
 * ref.c) and `active` (a copy that the architecture's registration function
 * may improve, see simd.h). Until cm_kernels_init() has run, lookups answer
 * from the reference table, so nothing ever sees a half-filled table; after
 * it, from `active`, which is never written again.
 *
 * cm_matmul runs as one pool job in two phases separated by a barrier:
 *   1. the activations x (n_tokens x n_cols f32) are converted to the weight
 *      type's vec_dot type in `scratch`, the blocks of all rows split evenly
 *      across threads (so a single token still uses every thread);
 *   2. for a batch of tokens, each thread takes a contiguous range of output
 *      rows and walks them in blocks of ROW_BLOCK rows, every token against
 *      the block, so each weight row is read from memory once per block
 *      rather than once per token; for up to DYNAMIC_TOKENS tokens (decode)
 *      threads instead take chunks of rows from a counter as they become
 *      free, so a thread the host slows down takes fewer and all finish
 *      together.
 * A repacked weight (a type id of repack.h) is quantized for as its source
 * type, and its rows are handed out in whole 16-row groups to the layout's
 * matmul. cm_matmul_rows is phase 2 for one range of rows, for callers that
 * build their own jobs (model/forward_decode.c). */
#include "kernels/kernels.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/quants.h"
#include "kernels/ref.h"
#include "kernels/repack.h"
#include "kernels/simd.h"

/* The registration functions live in these files (simd.h); call them only
 * when they are part of the build. */
#if defined(__has_include)
#if defined(CM_HAVE_X86) && __has_include("kernels/x86/x86.c")
#define CM_CALL_X86 1
#include "kernels/x86/x86.h"
#endif
#if defined(CM_HAVE_ARM) && __has_include("kernels/arm/arm.c")
#define CM_CALL_ARM 1
#endif
#endif

#define TRAITS(tname, elems, bytes, quantized, vdt, tofl, fromfl, dot) \
    { .name = tname, .block_elems = elems, .block_bytes = bytes, .is_quantized = quantized, \
      .vec_dot_type = vdt, .to_float = tofl, .from_float = fromfl, .vec_dot = dot }

static const cm_type_traits ref_traits[CM_TYPE_COUNT] = {
    [CM_TYPE_F32] = TRAITS("f32", 1, sizeof(float), false, CM_TYPE_F32, cm_dequantize_f32_ref,
                           cm_quantize_f32_ref, cm_vec_dot_f32_f32_ref),
    [CM_TYPE_F16] = TRAITS("f16", 1, sizeof(cm_f16), false, CM_TYPE_F16, cm_dequantize_f16_ref,
                           cm_quantize_f16_ref, cm_vec_dot_f16_f16_ref),
    [CM_TYPE_BF16] = TRAITS("bf16", 1, sizeof(cm_bf16), false, CM_TYPE_BF16, cm_dequantize_bf16_ref,
                            cm_quantize_bf16_ref, cm_vec_dot_bf16_bf16_ref),
    [CM_TYPE_Q4_0] = TRAITS("q4_0", CM_QK, sizeof(cm_block_q4_0), true, CM_TYPE_Q8_0, cm_dequantize_q4_0_ref,
                            cm_quantize_q4_0_ref, cm_vec_dot_q4_0_q8_0_ref),
    /* q4_1 and q5_1 pair with q8_1, whose block sum serves the min term. */
    [CM_TYPE_Q4_1] = TRAITS("q4_1", CM_QK, sizeof(cm_block_q4_1), true, CM_TYPE_Q8_1, cm_dequantize_q4_1_ref,
                            cm_quantize_q4_1_ref, cm_vec_dot_q4_1_q8_1_ref),
    [CM_TYPE_Q5_0] = TRAITS("q5_0", CM_QK, sizeof(cm_block_q5_0), true, CM_TYPE_Q8_0, cm_dequantize_q5_0_ref,
                            cm_quantize_q5_0_ref, cm_vec_dot_q5_0_q8_0_ref),
    [CM_TYPE_Q5_1] = TRAITS("q5_1", CM_QK, sizeof(cm_block_q5_1), true, CM_TYPE_Q8_1, cm_dequantize_q5_1_ref,
                            cm_quantize_q5_1_ref, cm_vec_dot_q5_1_q8_1_ref),
    [CM_TYPE_Q8_0] = TRAITS("q8_0", CM_QK, sizeof(cm_block_q8_0), true, CM_TYPE_Q8_0, cm_dequantize_q8_0_ref,
                            cm_quantize_q8_0_ref, cm_vec_dot_q8_0_q8_0_ref),
    [CM_TYPE_Q8_1] = TRAITS("q8_1", CM_QK, sizeof(cm_block_q8_1), true, CM_TYPE_Q8_1, cm_dequantize_q8_1_ref,
                            cm_quantize_q8_1_ref, NULL),
    [CM_TYPE_Q2_K] = TRAITS("q2_K", CM_QK_K, sizeof(cm_block_q2_K), true, CM_TYPE_Q8_K, cm_dequantize_q2_K_ref,
                            cm_quantize_q2_K_ref, cm_vec_dot_q2_K_q8_K_ref),
    [CM_TYPE_Q3_K] = TRAITS("q3_K", CM_QK_K, sizeof(cm_block_q3_K), true, CM_TYPE_Q8_K, cm_dequantize_q3_K_ref,
                            cm_quantize_q3_K_ref, cm_vec_dot_q3_K_q8_K_ref),
    [CM_TYPE_Q4_K] = TRAITS("q4_K", CM_QK_K, sizeof(cm_block_q4_K), true, CM_TYPE_Q8_K, cm_dequantize_q4_K_ref,
                            cm_quantize_q4_K_ref, cm_vec_dot_q4_K_q8_K_ref),
    [CM_TYPE_Q5_K] = TRAITS("q5_K", CM_QK_K, sizeof(cm_block_q5_K), true, CM_TYPE_Q8_K, cm_dequantize_q5_K_ref,
                            cm_quantize_q5_K_ref, cm_vec_dot_q5_K_q8_K_ref),
    [CM_TYPE_Q6_K] = TRAITS("q6_K", CM_QK_K, sizeof(cm_block_q6_K), true, CM_TYPE_Q8_K, cm_dequantize_q6_K_ref,
                            cm_quantize_q6_K_ref, cm_vec_dot_q6_K_q8_K_ref),
    [CM_TYPE_Q8_K] = TRAITS("q8_K", CM_QK_K, sizeof(cm_block_q8_K), true, CM_TYPE_Q8_K, cm_dequantize_q8_K_ref,
                            cm_quantize_q8_K_ref, NULL),
};

static cm_type_traits active[CM_TYPE_COUNT];
static const cm_type_traits *_Atomic table = ref_traits;
static const char *chosen_name;
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;

const char *cm_kernels_init(bool force_ref) {
    pthread_mutex_lock(&init_mu);
    if (chosen_name) goto done;
    const char *env = getenv("CELLM_KERNELS");
    if (env && !strcmp(env, "ref")) force_ref = true;
    memcpy(active, ref_traits, sizeof(active));
    chosen_name = "ref";
    if (!force_ref) {
#if defined(CM_CALL_X86)
        cm_kernels_register_x86(active, CM_TYPE_COUNT);
        if (cm_kernels_x86_name()) chosen_name = cm_kernels_x86_name();
#endif
#if defined(CM_CALL_ARM)
        cm_kernels_register_arm(active, CM_TYPE_COUNT);
        if (cm_kernels_arm_name()) chosen_name = cm_kernels_arm_name();
#endif
    }
    /* Registration may swap functions, never what a type is. */
    for (int t = 0; t < CM_TYPE_COUNT; t++) {
        assert(active[t].name == ref_traits[t].name);
        assert(active[t].block_elems == ref_traits[t].block_elems);
        assert(active[t].block_bytes == ref_traits[t].block_bytes);
        assert(active[t].vec_dot_type == ref_traits[t].vec_dot_type);
        assert(!ref_traits[t].name || (active[t].to_float && active[t].from_float));
        assert(!ref_traits[t].vec_dot == !active[t].vec_dot);
    }
    atomic_store_explicit(&table, active, memory_order_release);
done:
    pthread_mutex_unlock(&init_mu);
    return chosen_name;
}

const char *cm_kernels_name(void) {
    pthread_mutex_lock(&init_mu);
    const char *name = chosen_name ? chosen_name : "ref";
    pthread_mutex_unlock(&init_mu);
    return name;
}

const cm_type_traits *cm_type_traits_get(int type) {
    if (type < 0 || type >= CM_TYPE_COUNT || !ref_traits[type].name) return NULL;
    return &atomic_load_explicit(&table, memory_order_acquire)[type];
}

const cm_type_traits *cm_type_traits_ref(int type) {
    if (type < 0 || type >= CM_TYPE_COUNT || !ref_traits[type].name) return NULL;
    return &ref_traits[type];
}

/* ---- matmul ---- */

#define ROW_BLOCK 16

static size_t row_bytes(const cm_type_traits *t, int64_t n) { return (size_t)(n / t->block_elems) * t->block_bytes; }

size_t cm_matmul_scratch_bytes(int w_type, int64_t n_cols, int64_t n_tokens) {
    const cm_repack_ops *ops = cm_repack_ops_of(w_type);
    if (ops) w_type = ops->src_type;
    const cm_type_traits *wt = cm_type_traits_ref(w_type);
    if (!wt || !wt->vec_dot) return 0;
    /* f32 weights dot straight against x: nothing to convert */
    if (wt->vec_dot_type == CM_TYPE_F32) return 0;
    return row_bytes(cm_type_traits_ref(wt->vec_dot_type), n_cols) * (size_t)n_tokens;
}

typedef struct matmul_job {
    cm_pool *pool;
    int w_type;
    const cm_type_traits *wt; /* weight type (the source type of a repacked one) */
    const cm_repack_ops *ops; /* non-NULL: w is in this repacked layout */
    const cm_type_traits *vt; /* its vec_dot type */
    const uint8_t *w;         /* n_rows x n_cols in wt, rows w_row_bytes apart */
    size_t w_row_bytes;
    int64_t n_rows, n_cols, n_tokens;
    const float *x;    /* n_tokens x n_cols */
    float *y;          /* n_tokens x n_rows */
    const uint8_t *act; /* n_tokens x n_cols in vt, rows act_row_bytes apart */
    uint8_t *scratch;   /* == act when x must be converted first, else NULL */
    size_t act_row_bytes;
    _Alignas(64) atomic_long next_chunk; /* a few tokens: the next chunk of rows to take */
} matmul_job;

/* Up to this many tokens, threads take rows in chunks as they become free
 * (the weights are the whole cost, and a thread the host slows down takes
 * fewer); above, each takes one contiguous range, which the blocked kernels
 * tile best. */
#define DYNAMIC_TOKENS 8
/* Weight bytes per chunk: taking one (an atomic add) is noise next to
 * streaming them, and a 1B model's smallest matrices still make a few.
 * Each chunk starts a new stream that prefetching (the hardware's and the
 * kernels') has to pick up again; in alternating runs on the 1B models,
 * 256 KiB decoded faster than 48, 96, 192, 320 and 512 KiB
 * (docs/performance.md). */
#define CHUNK_BYTES (256 * 1024)

static void matmul_worker(void *arg, int ith, int nth) {
    const matmul_job *job = arg;
    if (job->scratch) {
        const int64_t be = job->vt->block_elems;
        const int64_t nb = job->n_cols / be;
        long u, u_end;
        cm_split_range((long)(nb * job->n_tokens), ith, nth, &u, &u_end);
        while (u < u_end) {
            const int64_t t = u / nb, k = u % nb;
            const int64_t run = (u_end - u < nb - k) ? u_end - u : nb - k;
            job->vt->from_float(job->x + t * job->n_cols + k * be,
                                job->scratch + (size_t)t * job->act_row_bytes + (size_t)k * job->vt->block_bytes, run * be);
            u += (long)run;
        }
        if (nth > 1) cm_pool_barrier(job->pool);
    }
    const int type = job->ops ? job->ops->type : job->w_type;
    if (job->n_tokens <= DYNAMIC_TOKENS && nth > 1) {
        matmul_job *mj = (matmul_job *)job;
        const int64_t rows = cm_matmul_chunk_rows(type, job->n_cols, 1);
        const int64_t nc = (job->n_rows + rows - 1) / rows;
        for (long k; (k = atomic_fetch_add_explicit(&mj->next_chunk, 1, memory_order_relaxed)) < nc;) {
            const int64_t r0 = k * rows, r1 = r0 + rows < job->n_rows ? r0 + rows : job->n_rows;
            cm_matmul_rows(type, job->w, job->w_row_bytes, job->n_rows, job->n_cols, job->act, job->act_row_bytes,
                           job->n_tokens, job->y, r0, r1);
        }
        return;
    }
    long r0, r1;
    const int64_t step = job->ops ? CM_REPACK_ROWS : 1;
    cm_split_range((long)(job->n_rows / step), ith, nth, &r0, &r1);
    if (r1 > r0)
        cm_matmul_rows(type, job->w, job->w_row_bytes, job->n_rows, job->n_cols, job->act, job->act_row_bytes,
                       job->n_tokens, job->y, r0 * step, r1 * step);
}

/* The weight type's traits, or those of the type a repacked layout was made
 * from (then *ops is set). */
static const cm_type_traits *weight_traits(int w_type, const cm_repack_ops **ops) {
    *ops = cm_type_traits_get(w_type) ? NULL : cm_repack_ops_of(w_type);
    return cm_type_traits_get(*ops ? (*ops)->src_type : w_type);
}

int cm_matmul_act_type(int w_type) {
    const cm_repack_ops *ops;
    const cm_type_traits *wt = weight_traits(w_type, &ops);
    assert(wt && wt->vec_dot);
    return wt->vec_dot_type;
}

void cm_matmul_act_convert(int w_type, const float *x, int64_t n, void *act) {
    const cm_type_traits *vt = cm_type_traits_get(cm_matmul_act_type(w_type));
    assert(n % vt->block_elems == 0);
    vt->from_float(x, act, n);
}

int64_t cm_matmul_row_step(int w_type) {
    const cm_repack_ops *ops;
    (void)weight_traits(w_type, &ops);
    return ops ? CM_REPACK_ROWS : 1;
}

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        const int64_t t = a % b;
        a = b, b = t;
    }
    return a;
}

int64_t cm_matmul_chunk_rows(int w_type, int64_t n_cols, int64_t align) {
    const cm_repack_ops *ops;
    const cm_type_traits *wt = weight_traits(w_type, &ops);
    const int64_t step = ops ? CM_REPACK_ROWS : 1;
    const int64_t unit = step / gcd64(step, align) * align;
    const size_t per_row = ops ? ops->bytes(CM_REPACK_ROWS, n_cols) / CM_REPACK_ROWS : row_bytes(wt, n_cols);
    const int64_t rows = (int64_t)(CHUNK_BYTES / (per_row ? per_row : 1)) / unit * unit;
    return rows < unit ? unit : rows;
}

void cm_matmul_rows(int w_type, const void *w, size_t w_row_bytes, int64_t n_rows, int64_t n_cols, const void *act,
                    size_t act_row_bytes, int64_t n_tokens, float *y, int64_t r0, int64_t r1) {
    const cm_repack_ops *ops;
    const cm_type_traits *wt = weight_traits(w_type, &ops);
    const uint8_t *wb = w, *ab = act;
    if (ops) {
        assert(r0 % CM_REPACK_ROWS == 0 && r1 % CM_REPACK_ROWS == 0);
        ops->matmul(w, n_cols, r0, r1, act, act_row_bytes, n_tokens, y, n_rows);
        return;
    }
#ifdef CM_CALL_X86
    /* Many tokens at once: the blocked kernel reuses each repacked panel of
     * weight rows for every token (it declines shapes it does not handle). */
    if (wt->vec_dot_type != CM_TYPE_F32 &&
        cm_gemm_x86(w_type, w, w_row_bytes, r0, r1, n_cols, act, act_row_bytes, n_tokens, y, n_rows))
        return;
#endif
    const int n = (int)n_cols;
    for (int64_t rb = r0; rb < r1; rb += ROW_BLOCK) {
        const int64_t re = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;
        for (int64_t t = 0; t < n_tokens; t++) {
            const uint8_t *a = ab + (size_t)t * act_row_bytes;
            float *yt = y + t * n_rows;
            for (int64_t r = rb; r < re; r++) wt->vec_dot(n, &yt[r], wb + (size_t)r * w_row_bytes, a);
        }
    }
}

void cm_matmul(cm_pool *pool, int w_type, const void *w, size_t w_row_bytes, int64_t n_rows, int64_t n_cols,
               const float *x, int64_t n_tokens, float *y, void *scratch) {
    /* A repacked weight: rows are not w_row_bytes apart any more, the
     * layout's kernel walks the whole matrix; activations as for the source
     * type. */
    const cm_repack_ops *ops;
    const cm_type_traits *wt = weight_traits(w_type, &ops);
    assert(wt && wt->vec_dot && "cm_matmul: weight type has no dot product");
    assert(n_cols % wt->block_elems == 0 && n_cols <= 0x7fffffff);
    assert(ops || w_row_bytes >= row_bytes(wt, n_cols));
    assert(!ops || (n_rows % CM_REPACK_ROWS == 0 && wt->vec_dot_type != CM_TYPE_F32));
    if (n_rows <= 0 || n_tokens <= 0) return;
    matmul_job job = {
        .pool = pool,
        .w_type = ops ? ops->src_type : w_type,
        .wt = wt,
        .ops = ops,
        .vt = cm_type_traits_get(wt->vec_dot_type),
        .w = w,
        .w_row_bytes = w_row_bytes,
        .n_rows = n_rows,
        .n_cols = n_cols,
        .n_tokens = n_tokens,
        .x = x,
        .y = y,
    };
    if (wt->vec_dot_type == CM_TYPE_F32) {
        job.act = (const uint8_t *)x;
        job.act_row_bytes = (size_t)n_cols * sizeof(float);
    } else {
        assert(scratch);
        assert(n_cols % job.vt->block_elems == 0);
        job.scratch = scratch;
        job.act = scratch;
        job.act_row_bytes = row_bytes(job.vt, n_cols);
    }
    if (pool && cm_pool_n_threads(pool) > 1)
        cm_pool_run(pool, matmul_worker, &job);
    else
        matmul_worker(&job, 0, 1);
}
