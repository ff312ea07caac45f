/* repack.c - which repacked layouts (repack.h) this build and CPU offer.
 *
 * The x86 kernels have them: AVX-512 VNNI (x86/repack_avx512.c for q4_0
 * and q8_0, x86/repack_k_avx512.c for the K formats) when cm_kernels_init
 * chose "avx512-vnni", AVX2 (x86/repack_avx2.c: all five) when it chose
 * "avx2" (a CPU without AVX-512 VNNI, or CELLM_KERNELS=avx2). Both read
 * the same bytes under the same type ids. CELLM_KERNELS=ref turns them off
 * with the rest, and CELLM_REPACK=off turns off just the repacking (to
 * compare against the file layout). Portable and ARM builds have none.
 *
 * cm_repack_ops_of answers for a type id already handed out, whatever
 * CELLM_REPACK says now: a matrix that was repacked must stay computable.
 * It runs once per cm_matmul, so its answers are cached (a pointer per
 * repacked id, written once, read with relaxed atomics). */
#include "kernels/repack.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

/* The same guard as kernels.c: the x86 files exist and are compiled. */
#if defined(__has_include)
#if defined(CM_HAVE_X86) && __has_include("kernels/x86/x86.c")
#define CM_CALL_X86 1
#include "kernels/x86/x86.h"
#endif
#endif

/* Source types that may have a repacked layout. */
static const int candidates[] = {CM_TYPE_Q4_0, CM_TYPE_Q8_0, CM_TYPE_Q4_K, CM_TYPE_Q5_K, CM_TYPE_Q6_K};

static const cm_repack_ops *lookup(int src_type) {
#if defined(CM_CALL_X86)
    /* "avx512-vnni" is chosen only on a CPU that has it, and not under
     * CELLM_KERNELS=ref or =avx2; "avx2" only on a CPU with AVX2 (and FMA,
     * F16C: x86.c checks them together). */
    const char *k = cm_kernels_name();
    if (!strcmp(k, "avx512-vnni")) {
        const cm_repack_ops *ops = cm_repack_q_avx512(src_type);
        return ops ? ops : cm_repack_k_avx512(src_type);
    }
    if (!strcmp(k, "avx2")) {
        const cm_repack_ops *ops = cm_repack_q_avx2(src_type);
        return ops ? ops : cm_repack_k_avx2(src_type);
    }
    return NULL;
#else
    (void)src_type;
    return NULL;
#endif
}

const cm_repack_ops *cm_repack_find(int src_type) {
    const char *env = getenv("CELLM_REPACK");
    if (env && !strcmp(env, "off")) return NULL;
    return lookup(src_type);
}

#define N_IDS 64
static const cm_repack_ops *_Atomic cache[N_IDS];

const cm_repack_ops *cm_repack_ops_of(int repacked_type) {
    if (repacked_type < CM_TYPE_Q4_0_R16 || repacked_type >= N_IDS) return NULL;
    const cm_repack_ops *ops = atomic_load_explicit(&cache[repacked_type], memory_order_relaxed);
    if (ops) return ops;
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        const cm_repack_ops *o = lookup(candidates[i]);
        if (o && o->type == repacked_type) {
            atomic_store_explicit(&cache[repacked_type], o, memory_order_relaxed);
            return o;
        }
    }
    return NULL;
}
