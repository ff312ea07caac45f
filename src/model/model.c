/* model.c - opens a GGUF and binds the tensors of one stage.
 *
 * Matrices stay in the mapping (cm_weight points at them); small vectors
 * (norms, biases, rope factors) are converted to f32 copies the model owns.
 * Each tensor is checked for presence, a type the kernels support and its
 * exact shape, with a message naming the tensor, before anything runs. Tensor
 * names follow llama.cpp (token_embd.weight, blk.N.attn_q.weight, ...).
 *
 * After binding, every matrix the forward pass multiplies by (attention,
 * FFN, router, experts, an untied output) whose type has a repacked layout
 * for the chosen kernels (kernels/repack.h) and whose rows come in whole
 * groups is rewritten, tensor by tensor, into a 64-byte aligned buffer the
 * model owns; the mapped pages of its file copy are then dropped
 * (MADV_DONTNEED on the whole pages inside the tensor: the mapping is
 * private and read-only, so a later read of them would fault the file's
 * bytes back in), which keeps the resident weights near one copy during and
 * after loading. The token embedding stays in the file layout (a lookup
 * reads its rows), and so does an output tied to it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/log.h"
#include "base/status.h"
#include "base/time.h"
#include "kernels/kernels.h"
#include "kernels/repack.h"
#include "model/model_internal.h"

static const char *mpath(const cm_model *m) {
    const char *p = cm_gguf_path(m->gguf);
    return p ? p : "model";
}

static int own(cm_model *m, void *p) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **n = realloc(m->owned, (size_t)cap * sizeof *n);
        if (!n) return CM_ENOMEM;
        m->owned = n;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return CM_OK;
}

static const cm_gguf_tensor *find(cm_model *m, const char *name, bool required, int *rc) {
    const cm_gguf_tensor *t = cm_gguf_find_tensor(m->gguf, name);
    if (!t && required)
        *rc = cm_errorf(CM_EFORMAT, "%s: tensor %s is missing (needed by %s)", mpath(m), name, m->hp.arch_name);
    return t;
}

static int check_shape(cm_model *m, const cm_gguf_tensor *t, int n_dims, int64_t ne0, int64_t ne1, int64_t ne2) {
    int64_t want[3] = {ne0, ne1, ne2};
    bool ok = true;
    for (int d = 0; d < CM_GGUF_MAX_DIMS; d++) {
        int64_t w = d < n_dims ? want[d] : 1;
        if (t->ne[d] != w) ok = false;
    }
    if (!ok)
        return cm_errorf(CM_EFORMAT, "%s: tensor %s has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld]",
                         mpath(m), t->name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                         (long long)t->ne[3], (long long)ne0, (long long)(n_dims > 1 ? ne1 : 1),
                         (long long)(n_dims > 2 ? ne2 : 1));
    return CM_OK;
}

/* Binds a matrix (n_mat == 1) or a stack of expert matrices. */
static int bind_weight(cm_model *m, const char *name, int64_t n_cols, int64_t n_rows, int64_t n_mat, bool required,
                       cm_weight *w) {
    int rc = CM_OK;
    memset(w, 0, sizeof *w);
    const cm_gguf_tensor *t = find(m, name, required, &rc);
    if (!t) return rc;
    if ((rc = check_shape(m, t, n_mat > 1 ? 3 : 2, n_cols, n_rows, n_mat))) return rc;
    const cm_type_traits *tr = cm_type_traits_get(t->type);
    if (!tr || !tr->vec_dot || !tr->to_float)
        return cm_errorf(CM_EUNSUPPORTED, "%s: tensor %s has type %s, which cellm cannot compute with", mpath(m),
                         t->name, cm_type_name(t->type) ? cm_type_name(t->type) : "(unknown)");
    if (n_cols % tr->block_elems)
        return cm_errorf(CM_EFORMAT, "%s: tensor %s has rows of %lld elements, not a multiple of %s's block of %d",
                         mpath(m), t->name, (long long)n_cols, tr->name, tr->block_elems);
    w->name = t->name;
    w->type = t->type;
    w->n_cols = n_cols;
    w->n_rows = n_rows;
    w->n_mat = n_mat;
    w->row_bytes = cm_type_row_bytes(t->type, n_cols);
    w->mat_bytes = w->row_bytes * (size_t)n_rows;
    w->data = t->data;
    if ((uint64_t)w->mat_bytes * (uint64_t)n_mat > t->n_bytes)
        return cm_errorf(CM_EFORMAT, "%s: tensor %s holds %llu bytes, fewer than its shape needs", mpath(m), t->name,
                         (unsigned long long)t->n_bytes);
    return CM_OK;
}

/* Converts a 1-D tensor of n elements to an owned f32 copy. */
static int bind_vec(cm_model *m, const char *name, int64_t n, bool required, float **out) {
    int rc = CM_OK;
    *out = NULL;
    const cm_gguf_tensor *t = find(m, name, required, &rc);
    if (!t) return rc;
    if ((rc = check_shape(m, t, 1, n, 1, 1))) return rc;
    const cm_type_traits *tr = cm_type_traits_get(t->type);
    if (!tr || !tr->to_float || n % tr->block_elems)
        return cm_errorf(CM_EUNSUPPORTED, "%s: tensor %s has type %s, which cellm cannot read as a vector", mpath(m),
                         t->name, cm_type_name(t->type) ? cm_type_name(t->type) : "(unknown)");
    float *v = malloc((size_t)n * sizeof *v);
    if (!v || own(m, v)) {
        free(v);
        return CM_ENOMEM;
    }
    tr->to_float(t->data, v, n);
    *out = v;
    return CM_OK;
}

static int bind_layer(cm_model *m, int il, cm_layer *L) {
    const cm_hparams *hp = &m->hp;
    int64_t n_q = (int64_t)hp->n_head * hp->head_dim, n_kv = (int64_t)hp->n_head_kv * hp->head_dim;
    char name[96];
    int rc;
#define NAME(s) (snprintf(name, sizeof name, "blk.%d." s, il), name)
    if ((rc = bind_vec(m, NAME("attn_norm.weight"), hp->n_embd, true, &L->attn_norm))) return rc;
    if ((rc = bind_weight(m, NAME("attn_q.weight"), hp->n_embd, n_q, 1, true, &L->wq))) return rc;
    if ((rc = bind_weight(m, NAME("attn_k.weight"), hp->n_embd, n_kv, 1, true, &L->wk))) return rc;
    if ((rc = bind_weight(m, NAME("attn_v.weight"), hp->n_embd, n_kv, 1, true, &L->wv))) return rc;
    if ((rc = bind_weight(m, NAME("attn_output.weight"), n_q, hp->n_embd, 1, true, &L->wo))) return rc;
    /* Qwen2 requires the biases; llama files may carry them too (some
     * fine-tunes do), so they are optional there. */
    bool need_bias = hp->arch == CM_ARCH_QWEN2;
    if ((rc = bind_vec(m, NAME("attn_q.bias"), n_q, need_bias, &L->bq))) return rc;
    if ((rc = bind_vec(m, NAME("attn_k.bias"), n_kv, need_bias, &L->bk))) return rc;
    if ((rc = bind_vec(m, NAME("attn_v.bias"), n_kv, need_bias, &L->bv))) return rc;
    if (hp->arch == CM_ARCH_QWEN3 || hp->arch == CM_ARCH_QWEN3MOE) {
        if ((rc = bind_vec(m, NAME("attn_q_norm.weight"), hp->head_dim, true, &L->q_norm))) return rc;
        if ((rc = bind_vec(m, NAME("attn_k_norm.weight"), hp->head_dim, true, &L->k_norm))) return rc;
    }
    if ((rc = bind_vec(m, NAME("ffn_norm.weight"), hp->n_embd, true, &L->ffn_norm))) return rc;
    if (hp->n_expert > 0) {
        if ((rc = bind_weight(m, NAME("ffn_gate_inp.weight"), hp->n_embd, hp->n_expert, 1, true, &L->gate_inp)))
            return rc;
        int64_t ne = hp->n_expert, ff = hp->n_ff_expert;
        if ((rc = bind_weight(m, NAME("ffn_gate_exps.weight"), hp->n_embd, ff, ne, true, &L->gate_exps))) return rc;
        if ((rc = bind_weight(m, NAME("ffn_up_exps.weight"), hp->n_embd, ff, ne, true, &L->up_exps))) return rc;
        if ((rc = bind_weight(m, NAME("ffn_down_exps.weight"), ff, hp->n_embd, ne, true, &L->down_exps))) return rc;
    } else {
        if ((rc = bind_weight(m, NAME("ffn_gate.weight"), hp->n_embd, hp->n_ff, 1, true, &L->ffn_gate))) return rc;
        if ((rc = bind_weight(m, NAME("ffn_up.weight"), hp->n_embd, hp->n_ff, 1, true, &L->ffn_up))) return rc;
        if ((rc = bind_weight(m, NAME("ffn_down.weight"), hp->n_ff, hp->n_embd, 1, true, &L->ffn_down))) return rc;
    }
#undef NAME
    return CM_OK;
}

static int bind_rope(cm_model *m) {
    cm_hparams *hp = &m->hp;
    int half = hp->rope_dim / 2, rc = CM_OK;
    m->rope_freq = malloc((size_t)half * sizeof(float));
    if (!m->rope_freq || own(m, m->rope_freq)) {
        free(m->rope_freq);
        m->rope_freq = NULL;
        return CM_ENOMEM;
    }
    cm_rope_freqs_default(hp, m->rope_freq);
    /* A rope_freqs.weight tensor (written by converters for Llama 3.1)
     * overrides the computed llama3 factors: angle speed is divided by it. */
    const cm_gguf_tensor *t = cm_gguf_find_tensor(m->gguf, "rope_freqs.weight");
    if (t) {
        float *f;
        if ((rc = bind_vec(m, "rope_freqs.weight", half, true, &f))) return rc;
        cm_hparams plain = *hp;
        plain.rope_scale_factor = 0; /* the tensor is the scaling */
        cm_rope_freqs_default(&plain, m->rope_freq);
        for (int i = 0; i < half; i++) {
            if (!(f[i] > 0))
                return cm_errorf(CM_EFORMAT, "%s: rope_freqs.weight[%d] = %g is not positive", mpath(m), i, f[i]);
            m->rope_freq[i] /= f[i];
        }
    }
    /* Linear scaling: every angle slowed by the same factor. */
    char key[160];
    const char *stype = NULL;
    snprintf(key, sizeof key, "%s.rope.scaling.type", hp->arch_name);
    if (cm_gguf_get_str(m->gguf, key, &stype, NULL) == CM_OK && !strcmp(stype, "linear")) {
        float factor = 1;
        snprintf(key, sizeof key, "%s.rope.scaling.factor", hp->arch_name);
        if (cm_gguf_get_f32(m->gguf, key, &factor) == CM_OK && factor > 0)
            for (int i = 0; i < half; i++) m->rope_freq[i] /= factor;
    }
    return CM_OK;
}

/* Drops the mapped pages that lie wholly inside [p, p + n). */
static void release_pages(const void *p, size_t n) {
    const long ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0 || n == 0) return;
    const uintptr_t page = (uintptr_t)ps;
    const uintptr_t b = ((uintptr_t)p + page - 1) & ~(page - 1), e = ((uintptr_t)p + n) & ~(page - 1);
    if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
}

/* Rewrites w into its repacked layout when it has one; keeps the file
 * layout otherwise (also when the buffer cannot be had: slower, not wrong). */
static int repack_weight(cm_model *m, cm_weight *w, uint64_t *n_bytes) {
    if (!w->data || w->n_rows % CM_REPACK_ROWS) return CM_OK;
    const cm_repack_ops *ops = cm_repack_find(w->type);
    if (!ops) return CM_OK;
    const size_t mb = ops->bytes(w->n_rows, w->n_cols);
    const size_t total = mb * (size_t)w->n_mat, rounded = (total + 63) & ~(size_t)63;
    uint8_t *buf = NULL;
    if (m->arena && m->arena_bytes - m->arena_used >= rounded) {
        buf = m->arena + m->arena_used;
        m->arena_used += rounded;
    } else {
        buf = aligned_alloc(64, rounded);
        if (!buf || own(m, buf)) {
            free(buf);
            CM_LOGW("%s: no memory for a repacked copy of %s (%zu bytes): it keeps the file layout", mpath(m),
                    w->name, total);
            return CM_OK;
        }
    }
    for (int64_t e = 0; e < w->n_mat; e++)
        ops->pack(w->data + (size_t)e * w->mat_bytes, w->row_bytes, w->n_rows, w->n_cols, buf + (size_t)e * mb);
    release_pages(w->data, w->mat_bytes * (size_t)w->n_mat);
    w->type = ops->type;
    w->data = buf;
    w->mat_bytes = mb;
    w->row_bytes = mb / (size_t)w->n_rows;
    *n_bytes += total;
    return CM_OK;
}

/* Bytes w takes once repacked (64-byte aligned), or 0 if it keeps its layout. */
static size_t repacked_bytes(const cm_weight *w) {
    if (!w->data || w->n_rows % CM_REPACK_ROWS) return 0;
    const cm_repack_ops *ops = cm_repack_find(w->type);
    return ops ? ((ops->bytes(w->n_rows, w->n_cols) * (size_t)w->n_mat + 63) & ~(size_t)63) : 0;
}

/* One mapping for every repacked matrix, 2 MiB aligned and marked for
 * transparent huge pages: decode streams all of it every token, and with 4
 * KiB pages that is a TLB miss (in a VM, a two-level page walk) every 4 KiB.
 * Without it (mmap refused) each matrix gets its own allocation. */
static void map_arena(cm_model *m, size_t need) {
    const size_t huge = (size_t)2 << 20;
    if (!need) return;
    const size_t len = (need + huge - 1) & ~(huge - 1);
    uint8_t *p = mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    /* trim to a 2 MiB aligned start */
    uint8_t *a = (uint8_t *)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
    if (a > p) munmap(p, (size_t)(a - p));
    if (a + len < p + len + huge) munmap(a + len, (size_t)(p + len + huge - (a + len)));
#ifdef MADV_HUGEPAGE
    madvise(a, len, MADV_HUGEPAGE);
#endif
    m->arena = a;
    m->arena_bytes = len;
}

static int repack_weights(cm_model *m) {
    const double t0 = cm_now_s();
    uint64_t n_bytes = 0;
    int rc;
    const int nl = m->layer_end - m->layer_begin;
    /* a tied output is the embedding table, read row by row by the lookup */
    cm_weight *out = m->output.data && !m->hp.tied_output ? &m->output : NULL;
    size_t need = out ? repacked_bytes(out) : 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < nl; i++) {
            cm_layer *L = &m->layers[i];
            cm_weight *ws[] = {&L->wq,       &L->wk,       &L->wv,     &L->wo,        &L->ffn_gate,
                               &L->ffn_up,   &L->ffn_down, &L->gate_inp, &L->gate_exps, &L->up_exps,
                               &L->down_exps};
            for (size_t k = 0; k < sizeof ws / sizeof ws[0]; k++) {
                if (pass == 0)
                    need += repacked_bytes(ws[k]);
                else if ((rc = repack_weight(m, ws[k], &n_bytes)))
                    return rc;
            }
        }
        if (pass == 0) map_arena(m, need);
    }
    if (out && (rc = repack_weight(m, out, &n_bytes))) return rc;
    if (n_bytes)
        CM_LOGI("%s: repacked %.1f MB of weights for the %s kernels in %.0f ms", mpath(m), (double)n_bytes / 1e6,
                cm_kernels_name(), (cm_now_s() - t0) * 1e3);
    return CM_OK;
}

int cm_model_load(const char *path, const cm_model_params *params, cm_model **out) {
    *out = NULL;
    int rc;
    cm_model *m = calloc(1, sizeof *m);
    if (!m) return CM_ENOMEM;
    cm_kernels_init(false);
    if ((rc = cm_gguf_open(path, &m->gguf))) goto fail;
    if ((rc = cm_hparams_load(m->gguf, &m->hp))) goto fail;
    cm_hparams *hp = &m->hp;
    m->layer_begin = params ? params->layer_begin : 0;
    m->layer_end = params && params->layer_end >= 0 ? params->layer_end : hp->n_layer;
    if (m->layer_begin < 0 || m->layer_end > hp->n_layer || m->layer_begin >= m->layer_end) {
        rc = cm_errorf(CM_EINVAL, "%s: stage layers [%d, %d) do not fit the model's %d layers", path, m->layer_begin,
                       m->layer_end, hp->n_layer);
        goto fail;
    }
    m->moe_norm_topk = true;
    if (hp->n_expert > 0) {
        char key[160];
        snprintf(key, sizeof key, "%s.expert_weights_norm", hp->arch_name);
        bool b;
        if (cm_gguf_get_bool(m->gguf, key, &b) == CM_OK) m->moe_norm_topk = b;
    }
    m->layers = calloc((size_t)(m->layer_end - m->layer_begin), sizeof *m->layers);
    if (!m->layers) {
        rc = CM_ENOMEM;
        goto fail;
    }
    bool first = m->layer_begin == 0, last = m->layer_end == hp->n_layer;
    if (first || (last && hp->tied_output)) {
        if ((rc = bind_weight(m, "token_embd.weight", hp->n_embd, hp->n_vocab, 1, true, &m->tok_embd))) goto fail;
    }
    for (int il = m->layer_begin; il < m->layer_end; il++)
        if ((rc = bind_layer(m, il, &m->layers[il - m->layer_begin]))) goto fail;
    if (last) {
        if ((rc = bind_vec(m, "output_norm.weight", hp->n_embd, true, &m->output_norm))) goto fail;
        if (hp->tied_output) {
            m->output = m->tok_embd;
        } else if ((rc = bind_weight(m, "output.weight", hp->n_embd, hp->n_vocab, 1, true, &m->output))) {
            goto fail;
        }
    }
    if ((rc = bind_rope(m))) goto fail;
    if ((rc = repack_weights(m))) goto fail;
    *out = m;
    return CM_OK;
fail:
    cm_model_destroy(m);
    return rc;
}

void cm_model_destroy(cm_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    if (m->arena) munmap(m->arena, m->arena_bytes);
    free(m->layers);
    cm_gguf_close(m->gguf);
    free(m);
}

const cm_hparams *cm_model_hparams(const cm_model *m) { return &m->hp; }
const cm_gguf *cm_model_gguf(const cm_model *m) { return m->gguf; }
int cm_model_layer_begin(const cm_model *m) { return m->layer_begin; }
int cm_model_layer_end(const cm_model *m) { return m->layer_end; }
bool cm_model_is_first(const cm_model *m) { return m->layer_begin == 0; }
bool cm_model_is_last(const cm_model *m) { return m->layer_end == m->hp.n_layer; }

static uint64_t wbytes(const cm_weight *w) { return w->data ? (uint64_t)w->mat_bytes * (uint64_t)w->n_mat : 0; }

uint64_t cm_model_weight_bytes(const cm_model *m) {
    const cm_hparams *hp = &m->hp;
    uint64_t b = 0;
    /* The embedding is a lookup: a token reads one row of it. */
    if (cm_model_is_first(m) && m->tok_embd.data) b += m->tok_embd.row_bytes;
    for (int i = 0; i < m->layer_end - m->layer_begin; i++) {
        const cm_layer *L = &m->layers[i];
        b += wbytes(&L->wq) + wbytes(&L->wk) + wbytes(&L->wv) + wbytes(&L->wo);
        b += wbytes(&L->ffn_gate) + wbytes(&L->ffn_up) + wbytes(&L->ffn_down) + wbytes(&L->gate_inp);
        if (hp->n_expert > 0)
            b += (uint64_t)hp->n_expert_used *
                 (L->gate_exps.mat_bytes + L->up_exps.mat_bytes + L->down_exps.mat_bytes);
        b += (uint64_t)(2 * hp->n_embd) * sizeof(float);
    }
    if (cm_model_is_last(m)) b += wbytes(&m->output) + (uint64_t)hp->n_embd * sizeof(float);
    return b;
}

uint64_t cm_model_kv_bytes_per_token(const cm_model *m) {
    const cm_hparams *hp = &m->hp;
    return (uint64_t)(m->layer_end - m->layer_begin) * 2u * (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim *
           sizeof(cm_f16);
}
