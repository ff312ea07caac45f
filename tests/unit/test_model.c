/* test_model.c - the model layer against a naive forward pass.
 *
 * The naive pass below is written to be obviously right, not fast: every
 * weight is dequantized to f32 with the reference kernels, every position is
 * recomputed from scratch with plain loops, no KV cache, no cm_matmul. Its
 * shapes, RoPE layout and scaling come from what the test asked synth to
 * write, not from the engine's hyper-parameter loader. Models are small
 * synthetic ones written into test_tmpdir(). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fp16.h"
#include "base/status.h"
#include "gguf/gguf.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/synth.h"
#include "test.h"

/* ---------------- naive reference ---------------- */

typedef struct nlayer {
    float *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *qn, *kn, *ffn_norm;
    float *gate, *up, *down;         /* dense */
    float *router, *ge, *ue, *de;    /* experts, stacked */
} nlayer;

typedef struct naive {
    cm_synth_params p;
    int hd, nq, nkv, ffe, n_vocab;
    bool neox;
    float *embd, *out_norm, *out;
    float *freq; /* per pair, scaling included */
    nlayer *L;
} naive;

static float *deq(cm_gguf *g, const char *name) {
    const cm_gguf_tensor *t = cm_gguf_find_tensor(g, name);
    if (!t) return NULL;
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float *y = malloc((size_t)n * sizeof *y);
    cm_type_traits_ref(t->type)->to_float(t->data, y, n);
    return y;
}

/* Llama 3.1's frequency factor, written out again from its definition. */
static double llama3_factor(const cm_synth_params *p, double freq) {
    double wl = 2 * M_PI / freq, orig = p->rope_orig_ctx;
    double lo = orig / p->rope_low_freq_factor, hi = orig / p->rope_high_freq_factor;
    if (wl < hi) return 1;
    if (wl > lo) return p->rope_llama3_factor;
    double sm = (orig / wl - p->rope_low_freq_factor) / (p->rope_high_freq_factor - p->rope_low_freq_factor);
    return 1 / ((1 - sm) / p->rope_llama3_factor + sm);
}

static void naive_load(naive *n, const cm_synth_params *p, cm_gguf *g, bool apply_scaling, bool neox_override,
                       bool neox_value) {
    memset(n, 0, sizeof *n);
    n->p = *p;
    n->hd = p->head_dim ? p->head_dim : p->n_embd / p->n_head;
    n->nq = p->n_head * n->hd;
    n->nkv = p->n_head_kv * n->hd;
    n->ffe = p->n_ff_expert ? p->n_ff_expert : p->n_ff;
    n->neox = strcmp(p->arch, "llama") != 0;
    if (neox_override) n->neox = neox_value;
    n->n_vocab = (int)cm_gguf_find_tensor(g, "token_embd.weight")->ne[1];
    n->embd = deq(g, "token_embd.weight");
    n->out_norm = deq(g, "output_norm.weight");
    n->out = p->tied_output ? n->embd : deq(g, "output.weight");
    n->freq = malloc(sizeof(float) * (size_t)n->hd / 2);
    for (int i = 0; i < n->hd / 2; i++) {
        double f = pow(p->rope_freq_base, -2.0 * i / n->hd);
        if (apply_scaling && p->rope_llama3_factor > 0) f /= llama3_factor(p, f);
        n->freq[i] = (float)f;
    }
    n->L = calloc((size_t)p->n_layer, sizeof *n->L);
    char nm[64];
    for (int il = 0; il < p->n_layer; il++) {
        nlayer *L = &n->L[il];
#define D(x) (snprintf(nm, sizeof nm, "blk.%d." x, il), deq(g, nm))
        L->attn_norm = D("attn_norm.weight");
        L->wq = D("attn_q.weight");
        L->wk = D("attn_k.weight");
        L->wv = D("attn_v.weight");
        L->wo = D("attn_output.weight");
        L->bq = D("attn_q.bias");
        L->bk = D("attn_k.bias");
        L->bv = D("attn_v.bias");
        L->qn = D("attn_q_norm.weight");
        L->kn = D("attn_k_norm.weight");
        L->ffn_norm = D("ffn_norm.weight");
        L->gate = D("ffn_gate.weight");
        L->up = D("ffn_up.weight");
        L->down = D("ffn_down.weight");
        L->router = D("ffn_gate_inp.weight");
        L->ge = D("ffn_gate_exps.weight");
        L->ue = D("ffn_up_exps.weight");
        L->de = D("ffn_down_exps.weight");
#undef D
    }
}

static void naive_free(naive *n) {
    for (int il = 0; il < n->p.n_layer; il++) {
        nlayer *L = &n->L[il];
        float *v[] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->bq, L->bk, L->bv, L->qn, L->kn,
                      L->ffn_norm, L->gate, L->up, L->down, L->router, L->ge, L->ue, L->de};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) free(v[i]);
    }
    free(n->L);
    if (n->out != n->embd) free(n->out);
    free(n->embd);
    free(n->out_norm);
    free(n->freq);
}

/* When set, matvec first rounds x through this type (quantize, then
 * dequantize with the reference kernels), as the engine's matmul converts
 * activations to the weights' vec_dot type. -1: exact f32. */
static int g_act_type = -1;
/* When set, K and V are rounded to f16 as the engine's cache stores them. */
static bool g_kv_f16 = false;

/* y[rows] = W[rows x cols] x[cols] (+ b) */
static void matvec(float *y, const float *W, const float *x_in, int rows, int cols, const float *b) {
    const float *x = x_in;
    float *xr = NULL;
    if (g_act_type >= 0 && g_act_type != CM_TYPE_F32) {
        const cm_type_traits *t = cm_type_traits_ref(g_act_type);
        void *q = malloc(cm_type_row_bytes(g_act_type, cols));
        xr = malloc((size_t)cols * sizeof *xr);
        t->from_float(x_in, q, cols);
        t->to_float(q, xr, cols);
        free(q);
        x = xr;
    }
    for (int r = 0; r < rows; r++) {
        double s = b ? b[r] : 0;
        for (int c = 0; c < cols; c++) s += (double)W[(size_t)r * cols + c] * x[c];
        y[r] = (float)s;
    }
    free(xr);
}

static void rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    double r = 1 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = (float)(x[i] * r * w[i]);
}

static void rope(const naive *n, float *x, int pos) {
    int half = n->hd / 2;
    for (int i = 0; i < half; i++) {
        double th = pos * (double)n->freq[i];
        int a = n->neox ? i : 2 * i, b = n->neox ? i + half : 2 * i + 1;
        double x0 = x[a], x1 = x[b];
        x[a] = (float)(x0 * cos(th) - x1 * sin(th));
        x[b] = (float)(x0 * sin(th) + x1 * cos(th));
    }
}

static float silu(float x) { return x / (1 + expf(-x)); }

/* Logits of every position of toks[0..T), recomputing everything. */
static void naive_forward(const naive *n, const int32_t *toks, int T, float *logits) {
    const cm_synth_params *p = &n->p;
    int E = p->n_embd, hd = n->hd;
    float *x = calloc((size_t)T * E, 4), *xb = malloc((size_t)E * 4), *q = malloc((size_t)T * n->nq * 4);
    float *K = malloc((size_t)T * n->nkv * 4), *V = malloc((size_t)T * n->nkv * 4);
    float *att = malloc((size_t)n->nq * 4), *o = malloc((size_t)E * 4), *sc = malloc((size_t)T * 4);
    int ffw = p->n_ff > n->ffe ? p->n_ff : n->ffe;
    float *h1 = malloc((size_t)ffw * 4), *h2 = malloc((size_t)ffw * 4), *acc = malloc((size_t)E * 4);
    float *pr = malloc((size_t)(p->n_expert + 1) * 4);
    for (int t = 0; t < T; t++) memcpy(x + (size_t)t * E, n->embd + (size_t)toks[t] * E, (size_t)E * 4);
    for (int il = 0; il < p->n_layer; il++) {
        const nlayer *L = &n->L[il];
        for (int t = 0; t < T; t++) {
            rmsnorm(xb, x + (size_t)t * E, L->attn_norm, E, p->norm_eps);
            float *qt = q + (size_t)t * n->nq, *kt = K + (size_t)t * n->nkv, *vt = V + (size_t)t * n->nkv;
            matvec(qt, L->wq, xb, n->nq, E, L->bq);
            matvec(kt, L->wk, xb, n->nkv, E, L->bk);
            matvec(vt, L->wv, xb, n->nkv, E, L->bv);
            for (int h = 0; h < p->n_head; h++) {
                if (L->qn) rmsnorm(qt + h * hd, qt + h * hd, L->qn, hd, p->norm_eps);
                rope(n, qt + h * hd, t);
            }
            for (int h = 0; h < p->n_head_kv; h++) {
                if (L->kn) rmsnorm(kt + h * hd, kt + h * hd, L->kn, hd, p->norm_eps);
                rope(n, kt + h * hd, t);
            }
            if (g_kv_f16)
                for (int i = 0; i < n->nkv; i++) {
                    kt[i] = cm_f16_to_f32(cm_f32_to_f16(kt[i]));
                    vt[i] = cm_f16_to_f32(cm_f32_to_f16(vt[i]));
                }
        }
        float *xnew = malloc((size_t)T * E * 4);
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < p->n_head; h++) {
                int kvh = h / (p->n_head / p->n_head_kv);
                const float *qh = q + (size_t)t * n->nq + h * hd;
                double mx = -1e30, sum = 0;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += (double)qh[i] * K[(size_t)s * n->nkv + kvh * hd + i];
                    sc[s] = (float)(d / sqrt(hd));
                    if (sc[s] > mx) mx = sc[s];
                }
                for (int s = 0; s <= t; s++) sum += exp(sc[s] - mx);
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int s = 0; s <= t; s++) a += exp(sc[s] - mx) / sum * V[(size_t)s * n->nkv + kvh * hd + i];
                    att[h * hd + i] = (float)a;
                }
            }
            matvec(o, L->wo, att, E, n->nq, NULL);
            float *xt = xnew + (size_t)t * E;
            for (int i = 0; i < E; i++) xt[i] = x[(size_t)t * E + i] + o[i];
            rmsnorm(xb, xt, L->ffn_norm, E, p->norm_eps);
            if (p->n_expert == 0) {
                matvec(h1, L->gate, xb, p->n_ff, E, NULL);
                matvec(h2, L->up, xb, p->n_ff, E, NULL);
                for (int i = 0; i < p->n_ff; i++) h1[i] = silu(h1[i]) * h2[i];
                matvec(o, L->down, h1, E, p->n_ff, NULL);
                for (int i = 0; i < E; i++) xt[i] += o[i];
            } else {
                int ne = p->n_expert, k = p->n_expert_used, F = n->ffe;
                int save = g_act_type;
                g_act_type = -1; /* the router is f32 in synthetic files */
                matvec(pr, L->router, xb, ne, E, NULL);
                g_act_type = save;
                double mx = -1e30, sum = 0;
                for (int e = 0; e < ne; e++) mx = pr[e] > mx ? pr[e] : mx;
                for (int e = 0; e < ne; e++) sum += exp(pr[e] - mx);
                for (int e = 0; e < ne; e++) pr[e] = (float)(exp(pr[e] - mx) / sum);
                int sel[64];
                double wsum = 0;
                float w[64];
                for (int j = 0; j < k; j++) {
                    int best = -1;
                    for (int e = 0; e < ne; e++) {
                        bool taken = false;
                        for (int jj = 0; jj < j; jj++) taken |= sel[jj] == e;
                        if (!taken && (best < 0 || pr[e] > pr[best])) best = e;
                    }
                    sel[j] = best;
                    w[j] = pr[best];
                    wsum += pr[best];
                }
                memset(acc, 0, (size_t)E * 4);
                for (int j = 0; j < k; j++) {
                    size_t e = (size_t)sel[j];
                    matvec(h1, L->ge + e * F * E, xb, F, E, NULL);
                    matvec(h2, L->ue + e * F * E, xb, F, E, NULL);
                    for (int i = 0; i < F; i++) h1[i] = silu(h1[i]) * h2[i];
                    matvec(o, L->de + e * E * F, h1, E, F, NULL);
                    for (int i = 0; i < E; i++) acc[i] += (float)(w[j] / wsum) * o[i];
                }
                for (int i = 0; i < E; i++) xt[i] += acc[i];
            }
        }
        memcpy(x, xnew, (size_t)T * E * 4);
        free(xnew);
    }
    for (int t = 0; t < T; t++) {
        rmsnorm(xb, x + (size_t)t * E, n->out_norm, E, p->norm_eps);
        matvec(logits + (size_t)t * n->n_vocab, n->out, xb, n->n_vocab, E, NULL);
    }
    free(x), free(xb), free(q), free(K), free(V), free(att), free(o), free(sc), free(h1), free(h2), free(acc),
        free(pr);
}

/* ---------------- helpers ---------------- */

static void model_path(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "%s/test_model_%d_%s.gguf", test_tmpdir(), (int)getpid(), tag);
}

/* Writes p's model to the temporary file for tag (its name goes to path)
 * and loads it; with g non-NULL also opens the file as GGUF, where the
 * naive pass reads its weights. Each step is a check; false when the model
 * (or the file) is missing, and the test then stops. */
static bool model_make(const char *tag, const cm_synth_params *p, char *path, size_t cap, cm_model **m, cm_gguf **g) {
    model_path(path, cap, tag);
    CHECK_OK(cm_synth_write(p, path));
    *m = NULL;
    CHECK_OK(cm_model_load(path, NULL, m));
    if (!g) return *m != NULL;
    *g = NULL;
    CHECK_OK(cm_gguf_open(path, g));
    return *m && *g;
}

/* Undoes model_make (g may be NULL). */
static void model_drop(const char *path, cm_model *m, cm_gguf *g) {
    cm_gguf_close(g);
    cm_model_destroy(m);
    unlink(path);
}

static cm_synth_params small(const char *arch, int type) {
    cm_synth_params p;
    cm_synth_defaults(&p);
    p.arch = arch;
    p.type = type;
    p.n_threads = 2;
    bool kq = cm_type_block_elems(type) == CM_QK_K;
    p.n_embd = kq ? 256 : 64;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = kq ? 512 : 96;
    p.n_layer = 2;
    p.n_vocab = 300;
    if (!strcmp(arch, "qwen3")) p.head_dim = kq ? 64 : 32; /* qwen3 heads are wider than n_embd/n_head */
    return p;
}

static int engine_all(cm_ctx *c, int seq, const int32_t *toks, int T, int pos0, float *logits, int n_vocab) {
    int32_t pos[64], sid[64];
    int8_t want[64];
    for (int t = 0; t < T; t++) pos[t] = pos0 + t, sid[t] = seq, want[t] = 1;
    cm_batch b = {T, toks, pos, sid, want};
    int rc = cm_ctx_decode(c, &b);
    if (rc) return rc;
    for (int t = 0; t < T; t++) memcpy(logits + (size_t)t * n_vocab, cm_ctx_logits(c, t), (size_t)n_vocab * 4);
    return CM_OK;
}

/* rms of a-b over the rms of b */
static double rms_err(const float *a, const float *b, size_t n) {
    double sd = 0, ss = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        sd += d * d;
        ss += (double)b[i] * b[i];
    }
    return sqrt(sd / (ss + 1e-30));
}

/* max |a-b| over the rms of b */
static double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, ss = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d; /* NaN propagates as a failure */
        ss += (double)b[i] * b[i];
    }
    return md / sqrt(ss / n + 1e-30);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static const int32_t g_toks[12] = {257, 3, 100, 200, 42, 299, 7, 150, 151, 88, 256, 1};

/* Writes the model, runs the engine over g_toks as one batch and again in
 * two pieces through the cache, and compares both with the naive pass. */
typedef struct tol {
    double rms, max;
} tol;

static void check_against_naive(const char *tag, const cm_synth_params *p, tol tl) {
    char path[512];
    cm_model *m;
    cm_gguf *g;
    if (!model_make(tag, p, path, sizeof path, &m, &g)) return;
    naive n;
    naive_load(&n, p, g, true, false, false);
    const int T = 12, V = n.n_vocab;
    float *ref = malloc((size_t)T * V * 4), *got = malloc((size_t)T * V * 4);
    naive_forward(&n, g_toks, T, ref);

    cm_ctx_params cp = {.n_ctx = 32, .n_seq_max = 2, .n_batch_max = 16, .n_threads = 2};
    cm_ctx *c = NULL;
    CHECK_OK(cm_ctx_create(m, &cp, &c));
    CHECK_OK(engine_all(c, 0, g_toks, T, 0, got, V));
    double e1 = rel_err(got, ref, (size_t)T * V), r1 = rms_err(got, ref, (size_t)T * V);
    /* same tokens on sequence 1, fed 5 + 7 so the second part reads the cache */
    CHECK_OK(engine_all(c, 1, g_toks, 5, 0, got, V));
    CHECK_OK(engine_all(c, 1, g_toks + 5, 7, 5, got + (size_t)5 * V, V));
    double e2 = rel_err(got, ref, (size_t)T * V), r2 = rms_err(got, ref, (size_t)T * V);
    fprintf(stderr, "  %-20s error/rms(logits): rms %.1e max %.1e; through cache: rms %.1e max %.1e (tol %.0e %.0e)\n",
            tag, r1, e1, r2, e2, tl.rms, tl.max);
    CHECK_MSG(r1 <= tl.rms && e1 <= tl.max, "%s: rms %g max %g", tag, r1, e1);
    CHECK_MSG(r2 <= tl.rms && e2 <= tl.max, "%s: rms %g max %g", tag, r2, e2);
    /* The same naive pass with activations rounded through the vec_dot type
     * the kernels use, and K/V rounded to f16 as the cache stores them, must
     * agree far more tightly: most models agree to 1e-7, which shows the
     * difference above is quantization noise, not a bug. The bound is kept
     * loose because a rounding flip from summation order (or q8_1's
     * f16-rounded block sum) occasionally lifts a model to ~1e-2. */
    int vdt = cm_type_traits_get(p->mix == CM_SYNTH_MIX_NONE ? p->type : CM_TYPE_Q4_K)->vec_dot_type;
    {
        g_act_type = vdt;
        g_kv_f16 = true;
        naive_forward(&n, g_toks, T, ref);
        g_act_type = -1;
        g_kv_f16 = false;
        double r3 = rms_err(got, ref, (size_t)T * V);
        fprintf(stderr, "  %-20s   activations rounded to %s, K/V to f16 like the engine: rms %.1e\n", "", cm_type_name(vdt), r3);
        double tight = 3e-2;
        CHECK_MSG(r3 <= tight, "%s: rounded-activation rms error %g > %g", tag, r3, tight);
    }
    cm_ctx_destroy(c);
    naive_free(&n);
    free(ref);
    free(got);
    model_drop(path, m, g);
}

/* Tolerances, relative to the logits' rms: f32 weights leave only the f16
 * KV cache; f16 adds f16 activations; quantized types see activations
 * quantized to q8_0 / q8_K before the dot products. */
static tol tol_for(int type) {
    switch (type) {
    case CM_TYPE_F32: return (tol){1e-3, 5e-3};
    case CM_TYPE_F16: return (tol){3e-3, 2e-2};
    case CM_TYPE_BF16: return (tol){1e-2, 5e-2};
    default: return (tol){5e-2, 0.3};
    }
}

static bool have_type(int type) {
    const cm_type_traits *t = cm_type_traits_get(type);
    return t && t->from_float && t->vec_dot && cm_type_traits_ref(type) && cm_type_traits_ref(type)->to_float;
}


/* Copies a GGUF, dropping one key or one tensor, or declaring one tensor
 * with its first two dimensions swapped (data copied as is). */
typedef struct rewrite_ctx {
    cm_gguf *src;
} rewrite_ctx;

static int rewrite_fill(void *user, int64_t i, const char *name, void *buf, uint64_t n_bytes) {
    rewrite_ctx *r = user;
    const cm_gguf_tensor *t = cm_gguf_find_tensor(r->src, name);
    if (!t || t->n_bytes != n_bytes) return CM_EINVAL;
    memcpy(buf, t->data, n_bytes);
    return CM_OK;
}

static int rewrite(const char *src, const char *dst, const char *drop_key, const char *drop_tensor,
                   const char *swap_tensor) {
    rewrite_ctx r = {NULL};
    cm_gguf_writer *w = NULL;
    int rc = cm_gguf_open(src, &r.src);
    if (rc) return rc;
    if ((rc = cm_gguf_writer_create(&w))) goto done;
    for (int64_t i = 0; i < cm_gguf_n_kv(r.src); i++)
        if ((!drop_key || strcmp(cm_gguf_kv_key(r.src, i), drop_key)) && (rc = cm_gguf_writer_copy_kv(w, r.src, i)))
            goto done;
    for (int64_t i = 0; i < cm_gguf_n_tensors(r.src); i++) {
        const cm_gguf_tensor *t = cm_gguf_tensor_at(r.src, i);
        if (drop_tensor && !strcmp(t->name, drop_tensor)) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        if (swap_tensor && !strcmp(t->name, swap_tensor)) ne[0] = t->ne[1], ne[1] = t->ne[0];
        if ((rc = cm_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, ne))) goto done;
    }
    rc = cm_gguf_writer_write(w, dst, rewrite_fill, &r);
done:
    cm_gguf_writer_destroy(w);
    cm_gguf_close(r.src);
    return rc;
}

/* ---------------- tests ---------------- */

static void naive_types(const char *arch, const int *types, int n_types, int n_expert) {
    for (int i = 0; i < n_types; i++) {
        if (!have_type(types[i])) {
            fprintf(stderr, "  (type %s has no kernels yet; not checked)\n", cm_type_name(types[i]));
            continue;
        }
        cm_synth_params p = small(arch, types[i]);
        if (n_expert) {
            p.n_expert = n_expert;
            p.n_expert_used = 2;
            p.n_ff_expert = strcmp(arch, "llama") ? (cm_type_block_elems(types[i]) == CM_QK_K ? 256 : 64) : 0;
        }
        p.seed = 11 + (uint64_t)i;
        char tag[64];
        snprintf(tag, sizeof tag, "%s%s_%s", arch, n_expert ? "_moe" : "", cm_type_name(types[i]));
        check_against_naive(tag, &p, tol_for(types[i]));
    }
}

static const int g_types[] = {CM_TYPE_F32, CM_TYPE_F16, CM_TYPE_Q8_0, CM_TYPE_Q4_0, CM_TYPE_Q4_K, CM_TYPE_Q6_K};
#define N_TYPES ((int)(sizeof g_types / sizeof g_types[0]))

TEST(naive_llama) { naive_types("llama", g_types, N_TYPES, 0); }
TEST(naive_llama_experts) { naive_types("llama", g_types, 3, 4); }
TEST(naive_qwen2) { naive_types("qwen2", g_types, N_TYPES, 0); }
TEST(naive_qwen3) { naive_types("qwen3", g_types, N_TYPES, 0); }
TEST(naive_qwen3moe) { naive_types("qwen3moe", g_types, 3, 4); }

TEST(naive_more_types) {
    static const int more[] = {CM_TYPE_BF16, CM_TYPE_Q4_1, CM_TYPE_Q5_0, CM_TYPE_Q5_1,
                               CM_TYPE_Q2_K, CM_TYPE_Q3_K, CM_TYPE_Q5_K};
    naive_types("llama", more, (int)(sizeof more / sizeof more[0]), 0);
}

TEST(naive_tied_output) {
    cm_synth_params p = small("llama", CM_TYPE_F32);
    p.tied_output = true;
    check_against_naive("llama_tied", &p, tol_for(CM_TYPE_F32));
    p = small("qwen2", CM_TYPE_Q8_0);
    p.tied_output = true;
    check_against_naive("qwen2_tied", &p, tol_for(CM_TYPE_Q8_0));
}

TEST(q4_k_m_mix) {
    cm_synth_params p = small("llama", CM_TYPE_Q4_K);
    if (!have_type(CM_TYPE_Q4_K) || !have_type(CM_TYPE_Q6_K)) TEST_SKIP("q4_K/q6_K kernels not available yet");
    CHECK_OK(cm_synth_parse_type("q4_k_m", &p.type, &p.mix));
    char path[512];
    model_path(path, sizeof path, "mix");
    CHECK_OK(cm_synth_write(&p, path));
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!g) return;
    CHECK(cm_gguf_find_tensor(g, "output.weight")->type == CM_TYPE_Q6_K);
    /* llama.cpp's rule for 2 layers upgrades layer 1 only */
    CHECK(cm_gguf_find_tensor(g, "blk.1.attn_v.weight")->type == CM_TYPE_Q6_K);
    CHECK(cm_gguf_find_tensor(g, "blk.0.attn_v.weight")->type == CM_TYPE_Q4_K);
    CHECK(cm_gguf_find_tensor(g, "blk.1.ffn_down.weight")->type == CM_TYPE_Q6_K);
    CHECK(cm_gguf_find_tensor(g, "blk.0.attn_q.weight")->type == CM_TYPE_Q4_K);
    CHECK(cm_gguf_find_tensor(g, "blk.0.attn_norm.weight")->type == CM_TYPE_F32);
    cm_gguf_close(g);
    unlink(path);
    check_against_naive("llama_q4_k_m", &p, tol_for(CM_TYPE_Q4_K));
}

/* The naive pass must be able to tell the layouts and the scaling apart,
 * or agreeing with it would prove nothing. */
TEST(rope_layout_and_llama3_scaling) {
    cm_synth_params p = small("llama", CM_TYPE_F32);
    p.rope_llama3_factor = 8;
    p.rope_low_freq_factor = 1;
    p.rope_high_freq_factor = 4;
    p.rope_orig_ctx = 16; /* so that the pairs that matter at 12 positions are scaled */
    char path[512];
    for (int keys_only = 0; keys_only < 2; keys_only++) {
        p.rope_llama3_keys_only = keys_only;
        cm_model *m;
        cm_gguf *g;
        if (!model_make(keys_only ? "l3keys" : "l3tensor", &p, path, sizeof path, &m, &g)) return;
        CHECK((cm_gguf_find_tensor(g, "rope_freqs.weight") != NULL) == !keys_only);
        naive good, unscaled, wrong_layout;
        naive_load(&good, &p, g, true, false, false);
        naive_load(&unscaled, &p, g, false, false, false);
        naive_load(&wrong_layout, &p, g, true, true, true);
        const int T = 12, V = good.n_vocab;
        float *ref = malloc((size_t)T * V * 4), *alt = malloc((size_t)T * V * 4), *got = malloc((size_t)T * V * 4);
        naive_forward(&good, g_toks, T, ref);
        cm_ctx_params cp = {.n_ctx = 16, .n_seq_max = 1, .n_batch_max = 16, .n_threads = 2};
        cm_ctx *c = NULL;
        CHECK_OK(cm_ctx_create(m, &cp, &c));
        CHECK_OK(engine_all(c, 0, g_toks, T, 0, got, V));
        double e = rel_err(got, ref, (size_t)T * V);
        CHECK_MSG(e <= 2e-3, "llama3 scaling (%s): %g", keys_only ? "keys" : "tensor", e);
        naive_forward(&unscaled, g_toks, T, alt);
        double d1 = rel_err(alt, ref, (size_t)T * V);
        naive_forward(&wrong_layout, g_toks, T, alt);
        double d2 = rel_err(alt, ref, (size_t)T * V);
        fprintf(stderr, "  llama3 %s: err %.2e; unscaled differs by %.2e, neox layout by %.2e\n",
                keys_only ? "keys" : "tensor", e, d1, d2);
        CHECK(d1 > 20 * 2e-3);
        CHECK(d2 > 20 * 2e-3);
        cm_ctx_destroy(c);
        naive_free(&good), naive_free(&unscaled), naive_free(&wrong_layout);
        free(ref), free(alt), free(got);
        model_drop(path, m, g);
    }
}

/* Positions past one attention tile (CM_ATT_TILE = 128): the online softmax
 * must carry its running max and sum across tiles. */
TEST(long_context_tiles) {
    cm_synth_params p = small("qwen3", CM_TYPE_F32);
    p.n_layer = 1;
    char path[512];
    cm_model *m;
    cm_gguf *g;
    if (!model_make("long", &p, path, sizeof path, &m, &g)) return;
    naive n;
    naive_load(&n, &p, g, true, false, false);
    enum { T = 300, CHUNK = 50 };
    int V = n.n_vocab;
    int32_t toks[T];
    for (int i = 0; i < T; i++) toks[i] = (i * 131 + 7) % V;
    float *ref = malloc((size_t)T * V * 4), *got = malloc((size_t)T * V * 4);
    naive_forward(&n, toks, T, ref);
    cm_ctx_params cp = {.n_ctx = T, .n_seq_max = 1, .n_batch_max = CHUNK, .n_threads = 2};
    cm_ctx *c = NULL;
    CHECK_OK(cm_ctx_create(m, &cp, &c));
    for (int i = 0; i < T && c; i += CHUNK) CHECK_OK(engine_all(c, 0, toks + i, CHUNK, i, got + (size_t)i * V, V));
    double e = rms_err(got + (size_t)250 * V, ref + (size_t)250 * V, (size_t)50 * V);
    fprintf(stderr, "  positions 250..299: rms error %.1e\n", e);
    CHECK(e <= 1e-3);
    cm_ctx_destroy(c);
    naive_free(&n);
    free(ref), free(got);
    model_drop(path, m, g);
}

/* Decode one token at a time (the path that splits a lone token's cache
 * positions over the threads and takes a group's query heads as vector
 * lanes) against the naive model, for groups of 8 and 4 query heads per KV
 * head, on 1, 2 and 3 threads, past several attention tiles. */
TEST(decode_one_token_at_a_time) {
    static const int kv_heads[] = {1, 2};
    for (int h = 0; h < 2; h++) {
        cm_synth_params p = small("llama", CM_TYPE_F32);
        p.n_layer = 1;
        p.n_embd = 256;
        p.n_head = 8;
        p.n_head_kv = kv_heads[h];
        p.n_ff = 128;
        char path[512];
        cm_model *m;
        cm_gguf *g;
        if (!model_make("decode1", &p, path, sizeof path, &m, &g)) return;
        naive n;
        naive_load(&n, &p, g, true, false, false);
        enum { T = 150 };
        const int V = n.n_vocab;
        int32_t toks[T];
        for (int i = 0; i < T; i++) toks[i] = (i * 97 + 5) % V;
        float *ref = malloc((size_t)T * V * 4), *got = malloc((size_t)T * V * 4);
        naive_forward(&n, toks, T, ref);
        for (int nt = 1; nt <= 3; nt++) {
            cm_ctx_params cp = {.n_ctx = T, .n_seq_max = 1, .n_batch_max = 1, .n_threads = nt};
            cm_ctx *c = NULL;
            CHECK_OK(cm_ctx_create(m, &cp, &c));
            for (int i = 0; i < T && c; i++) CHECK_OK(engine_all(c, 0, toks + i, 1, i, got + (size_t)i * V, V));
            const double e = rms_err(got, ref, (size_t)T * V);
            fprintf(stderr, "  %d query heads per KV head, %d threads: rms error %.1e\n", p.n_head / p.n_head_kv, nt,
                    e);
            CHECK(e <= 1e-3);
            cm_ctx_destroy(c);
        }
        naive_free(&n);
        free(ref), free(got);
        model_drop(path, m, g);
    }
}

/* The fused decode path (batches of up to 8 tokens: three pool jobs a layer,
 * rows handed out in chunks) gives bit for bit the logits of the general
 * path, which CELLM_DECODE_FUSED=off keeps: a 6-token prompt, then 4 single
 * tokens, over 2 and 3 threads. Matrices are wide enough to make several
 * chunks each; the types cover f32 and f16 activations, q8_0 and q8_K
 * ones, the q4_K/q6_K mix (and the repacked layouts where the CPU has them),
 * qwen2's biases and qwen3's head norms with n_head * head_dim != n_embd. */
TEST(decode_fused_matches_general) {
    static const struct {
        const char *arch;
        int type, mix;
    } cases[] = {
        {"llama", CM_TYPE_F32, 0},        {"llama", CM_TYPE_F16, 0},
        {"llama", CM_TYPE_Q8_0, 0},       {"llama", CM_TYPE_Q4_0, 0},
        {"llama", 0, CM_SYNTH_MIX_Q4_K_M}, {"qwen2", CM_TYPE_Q8_0, 0},
        {"qwen3", CM_TYPE_Q4_K, 0},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        cm_synth_params p = small(cases[ci].arch, cases[ci].mix ? CM_TYPE_Q4_K : cases[ci].type);
        p.mix = cases[ci].mix;
        p.n_embd = 1024;
        p.n_head = 8;
        p.n_head_kv = 2;
        p.n_ff = 2816;
        p.head_dim = !strcmp(cases[ci].arch, "qwen3") ? 160 : 0;
        /* gate/up must make several chunks, or no two threads share one */
        CHECK(cm_matmul_chunk_rows(cases[ci].mix ? CM_TYPE_Q4_K : cases[ci].type, p.n_embd, 1) * 3 <= p.n_ff);
        char path[512];
        cm_model *m;
        if (!model_make("fused", &p, path, sizeof path, &m, NULL)) return;
        enum { P = 6, D = 4, T = P + D };
        const int V = p.n_vocab;
        int32_t toks[T];
        for (int i = 0; i < T; i++) toks[i] = (i * 37 + 11) % V;
        float *want = malloc((size_t)T * V * 4), *got = malloc((size_t)T * V * 4);
        for (int nt = 2; nt <= 3; nt++) {
            for (int fused = 0; fused < 2; fused++) {
                if (!fused) setenv("CELLM_DECODE_FUSED", "off", 1);
                cm_ctx_params cp = {.n_ctx = T, .n_seq_max = 1, .n_batch_max = P, .n_threads = nt};
                cm_ctx *c = NULL;
                CHECK_OK(cm_ctx_create(m, &cp, &c));
                unsetenv("CELLM_DECODE_FUSED");
                float *out = fused ? got : want;
                if (c) CHECK_OK(engine_all(c, 0, toks, P, 0, out, V));
                for (int i = P; i < T && c; i++) CHECK_OK(engine_all(c, 0, toks + i, 1, i, out + (size_t)i * V, V));
                cm_ctx_destroy(c);
            }
            size_t diff = 0;
            for (size_t i = 0; i < (size_t)T * V; i++) diff += memcmp(&got[i], &want[i], sizeof(float)) != 0;
            if (diff)
                fprintf(stderr, "  %s type %d mix %d, %d threads: %zu of %d logits differ\n", cases[ci].arch,
                        cases[ci].type, cases[ci].mix, nt, diff, T * V);
            CHECK(diff == 0);
        }
        free(want), free(got);
        model_drop(path, m, NULL);
    }
}

/* Greedy decoding through the KV cache equals recomputing the whole
 * sequence at every step. */
TEST(greedy_cache_vs_recompute) {
    const char *archs[] = {"llama", "qwen3moe"};
    for (int a = 0; a < 2; a++) {
        cm_synth_params p = small(archs[a], CM_TYPE_Q8_0);
        if (a == 1) p.n_expert = 4, p.n_expert_used = 2, p.n_ff_expert = 64;
        char path[512];
        cm_model *m;
        if (!model_make("greedy", &p, path, sizeof path, &m, NULL)) return;
        int V = cm_model_hparams(m)->n_vocab;
        cm_ctx_params cp = {.n_ctx = 40, .n_seq_max = 2, .n_batch_max = 40, .n_threads = 2};
        cm_ctx *c = NULL;
        CHECK_OK(cm_ctx_create(m, &cp, &c));
        int32_t seq_a[40] = {257, 10, 20, 30}, seq_b[40] = {257, 10, 20, 30};
        int n0 = 4, steps = 20;
        float *lg = malloc((size_t)40 * V * 4);
        /* a: prompt once, then one token per call */
        CHECK_OK(engine_all(c, 0, seq_a, n0, 0, lg, V));
        seq_a[n0] = argmax(lg + (size_t)(n0 - 1) * V, V);
        for (int s = 1; s < steps; s++) {
            CHECK_OK(engine_all(c, 0, seq_a + n0 + s - 1, 1, n0 + s - 1, lg, V));
            seq_a[n0 + s] = argmax(lg, V);
        }
        /* b: forget everything and recompute the whole sequence every step */
        for (int s = 0; s < steps; s++) {
            cm_ctx_seq_rm(c, 1, 0, -1);
            CHECK(cm_ctx_seq_len(c, 1) == 0);
            CHECK_OK(engine_all(c, 1, seq_b, n0 + s, 0, lg, V));
            seq_b[n0 + s] = argmax(lg + (size_t)(n0 + s - 1) * V, V);
        }
        CHECK(memcmp(seq_a, seq_b, sizeof(int32_t) * (size_t)(n0 + steps)) == 0);
        int distinct = 0;
        for (int i = n0; i < n0 + steps; i++) distinct += seq_a[i] != seq_a[i - 1];
        CHECK(distinct > 0); /* a generation that is not one token over and over */
        CHECK(cm_ctx_seq_len(c, 0) == n0 + steps - 1);
        free(lg);
        cm_ctx_destroy(c);
        model_drop(path, m, NULL);
    }
}

/* Two sequences interleaved in one batch give each one's logits alone; so
 * does a model split into two stages chained through hidden states. */
TEST(interleaved_sequences_and_stages) {
    cm_synth_params p = small("qwen2", CM_TYPE_F16);
    p.n_layer = 3;
    char path[512];
    cm_model *m;
    if (!model_make("inter", &p, path, sizeof path, &m, NULL)) return;
    int V = cm_model_hparams(m)->n_vocab, E = cm_model_hparams(m)->n_embd;
    cm_ctx_params cp = {.n_ctx = 16, .n_seq_max = 3, .n_batch_max = 16, .n_threads = 2};
    cm_ctx *c = NULL;
    CHECK_OK(cm_ctx_create(m, &cp, &c));
    const int32_t A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {250, 9, 8, 7, 6, 5};
    float *la = malloc((size_t)6 * V * 4), *lb = malloc((size_t)6 * V * 4);
    CHECK_OK(engine_all(c, 0, A, 6, 0, la, V));
    CHECK_OK(engine_all(c, 1, B, 6, 0, lb, V));
    /* interleaved into sequence 2 (A) and 0 (B, after forgetting it) */
    cm_ctx_seq_rm(c, 0, 0, -1);
    int32_t tok[12], pos[12], sid[12];
    int8_t want[12];
    for (int i = 0; i < 6; i++) {
        tok[2 * i] = A[i], pos[2 * i] = i, sid[2 * i] = 2, want[2 * i] = 1;
        tok[2 * i + 1] = B[i], pos[2 * i + 1] = i, sid[2 * i + 1] = 0, want[2 * i + 1] = 1;
    }
    cm_batch b = {12, tok, pos, sid, want};
    CHECK_OK(cm_ctx_decode(c, &b));
    double ea = 0, eb = 0;
    for (int i = 0; i < 6; i++) {
        double x = rel_err(cm_ctx_logits(c, 2 * i), la + (size_t)i * V, (size_t)V);
        double y = rel_err(cm_ctx_logits(c, 2 * i + 1), lb + (size_t)i * V, (size_t)V);
        ea = x > ea ? x : ea;
        eb = y > eb ? y : eb;
    }
    fprintf(stderr, "  interleaved vs alone: %.2e %.2e\n", ea, eb);
    CHECK(ea <= 1e-4 && eb <= 1e-4);

    /* want_logits NULL: only the last entry */
    cm_ctx_seq_rm(c, 1, 0, -1);
    cm_batch b1 = {6, B, pos, (int32_t[]){1, 1, 1, 1, 1, 1}, NULL};
    int32_t p6[6] = {0, 1, 2, 3, 4, 5};
    b1.pos = p6;
    CHECK_OK(cm_ctx_decode(c, &b1));
    CHECK(cm_ctx_logits(c, 0) == NULL);
    CHECK(cm_ctx_logits(c, 5) != NULL);
    if (cm_ctx_logits(c, 5)) CHECK(rel_err(cm_ctx_logits(c, 5), lb + (size_t)5 * V, (size_t)V) <= 1e-4);

    /* stages [0,1) and [1,3) */
    cm_model *s0 = NULL, *s1 = NULL;
    cm_model_params mp0 = {0, 1}, mp1 = {1, -1};
    CHECK_OK(cm_model_load(path, &mp0, &s0));
    CHECK_OK(cm_model_load(path, &mp1, &s1));
    if (s0 && s1) {
        CHECK(cm_model_is_first(s0) && !cm_model_is_last(s0));
        CHECK(!cm_model_is_first(s1) && cm_model_is_last(s1));
        CHECK(cm_model_kv_bytes_per_token(s0) * 3 == cm_model_kv_bytes_per_token(m));
        cm_ctx *c0 = NULL, *c1 = NULL;
        CHECK_OK(cm_ctx_create(s0, &cp, &c0));
        CHECK_OK(cm_ctx_create(s1, &cp, &c1));
        float *h = malloc((size_t)6 * E * 4);
        cm_batch bs = {6, A, p6, (int32_t[]){0, 0, 0, 0, 0, 0}, (int8_t[]){1, 1, 1, 1, 1, 1}};
        CHECK_OK(cm_stage_forward(c0, &bs, NULL, h));
        cm_batch bs1 = bs;
        bs1.token = NULL;
        CHECK_OK(cm_stage_forward(c1, &bs1, h, NULL));
        CHECK(cm_ctx_decode(c1, &bs1) != CM_OK); /* not a whole model */
        double es = 0;
        for (int i = 0; i < 6; i++) {
            double x = rel_err(cm_ctx_logits(c1, i), la + (size_t)i * V, (size_t)V);
            es = x > es ? x : es;
        }
        CHECK_MSG(es <= 1e-4, "stages vs whole: %g", es);
        free(h);
        cm_ctx_destroy(c0);
        cm_ctx_destroy(c1);
    }
    cm_model_destroy(s0);
    cm_model_destroy(s1);
    free(la), free(lb);
    cm_ctx_destroy(c);
    model_drop(path, m, NULL);
}

TEST(batch_errors_leave_cache) {
    cm_synth_params p = small("llama", CM_TYPE_F32);
    char path[512];
    cm_model *m;
    if (!model_make("errors", &p, path, sizeof path, &m, NULL)) return;
    int V = cm_model_hparams(m)->n_vocab;
    cm_ctx_params cp = {.n_ctx = 8, .n_seq_max = 2, .n_batch_max = 8, .n_threads = 1};
    cm_ctx *c = NULL;
    CHECK_OK(cm_ctx_create(m, &cp, &c));
    CHECK(cm_ctx_kv_bytes(c) == cm_model_kv_bytes_per_token(m) * 8 * 2);
    CHECK(cm_ctx_scratch_bytes(c) > 0);
    float *ref = malloc((size_t)8 * V * 4), *got = malloc((size_t)8 * V * 4);
    const int32_t t8[8] = {5, 6, 7, 8, 9, 10, 11, 12};
    CHECK_OK(engine_all(c, 0, t8, 7, 0, ref, V)); /* reference: positions 0..6, then 7 */
    CHECK_OK(engine_all(c, 0, t8 + 7, 1, 7, ref + (size_t)7 * V, V));
    cm_ctx_seq_rm(c, 0, 0, -1);

    CHECK_OK(engine_all(c, 0, t8, 7, 0, got, V));
    int32_t tok[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, pos[9], sid[9] = {0};
    /* a valid entry followed by an invalid one: nothing may change */
    pos[0] = 7, pos[1] = 8;
    cm_batch b = {2, tok, pos, sid, NULL};
    CHECK(cm_ctx_decode(c, &b) == CM_ERANGE); /* position 8 is past n_ctx 8 */
    CHECK(strstr(cm_last_error(CM_ERANGE), "past the context") != NULL);
    pos[0] = 7, pos[1] = 7;
    CHECK(cm_ctx_decode(c, &b) == CM_EINVAL); /* the second 7 does not follow 7 */
    CHECK(strstr(cm_last_error(CM_EINVAL), "continues at position 8") != NULL);
    pos[0] = 3;
    b.n_tokens = 1;
    CHECK(cm_ctx_decode(c, &b) == CM_EINVAL); /* 3 is already in the cache */
    pos[0] = 7, sid[0] = 2;
    CHECK(cm_ctx_decode(c, &b) == CM_ERANGE); /* sequence 2 of 2 */
    sid[0] = -1;
    CHECK(cm_ctx_decode(c, &b) == CM_ERANGE);
    sid[0] = 0, tok[0] = V;
    CHECK(cm_ctx_decode(c, &b) == CM_ERANGE); /* token id */
    tok[0] = 1;
    b.n_tokens = 9;
    CHECK(cm_ctx_decode(c, &b) == CM_ERANGE); /* more than n_batch_max */
    b.n_tokens = 0;
    CHECK(cm_ctx_decode(c, &b) == CM_ERANGE);
    CHECK(cm_ctx_seq_len(c, 0) == 7);
    CHECK(cm_ctx_seq_len(c, 1) == 0);
    /* the cache still holds exactly positions 0..6 */
    CHECK_OK(engine_all(c, 0, t8 + 7, 1, 7, got, V));
    CHECK(rel_err(got, ref + (size_t)7 * V, (size_t)V) == 0);
    CHECK(cm_ctx_seq_len(c, 0) == 8);
    free(ref), free(got);
    cm_ctx_destroy(c);
    model_drop(path, m, NULL);
}

TEST(hparams_and_synth_metadata) {
    cm_synth_params p = small("qwen3moe", CM_TYPE_F16);
    p.n_expert = 8, p.n_expert_used = 2, p.n_ff_expert = 32, p.n_ff = 32, p.seed = 5;
    char path[512], path2[512];
    model_path(path, sizeof path, "meta");
    model_path(path2, sizeof path2, "meta2");
    CHECK_OK(cm_synth_write(&p, path));
    p.n_threads = 1; /* the file must not depend on the thread count */
    CHECK_OK(cm_synth_write(&p, path2));
    cm_gguf *g = NULL, *g2 = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    CHECK_OK(cm_gguf_open(path2, &g2));
    if (!g || !g2) return;
    CHECK(cm_gguf_file_bytes(g) == cm_gguf_file_bytes(g2));
    const cm_gguf_tensor *a = cm_gguf_find_tensor(g, "blk.1.ffn_down_exps.weight"),
                         *b = cm_gguf_find_tensor(g2, "blk.1.ffn_down_exps.weight");
    CHECK(a && b && a->n_bytes == b->n_bytes && !memcmp(a->data, b->data, a->n_bytes));
    cm_hparams hp;
    CHECK_OK(cm_hparams_load(g, &hp));
    CHECK(hp.arch == CM_ARCH_QWEN3MOE && hp.rope_neox);
    CHECK(hp.n_embd == 64 && hp.n_layer == 2 && hp.n_head == 4 && hp.n_head_kv == 2 && hp.head_dim == 16);
    CHECK(hp.n_expert == 8 && hp.n_expert_used == 2 && hp.n_ff_expert == 32 && hp.n_vocab == 300);
    CHECK(!hp.tied_output && hp.rope_dim == 16 && fabsf(hp.norm_eps - 1e-5f) < 1e-9f);
    /* the built-in tokenizer: 300 tokens, 256 bytes first, two controls last */
    int et;
    uint64_t n = 0;
    CHECK_OK(cm_gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n));
    CHECK(n == 300 && et == CM_GGUF_STRING);
    CHECK_OK(cm_gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &n));
    CHECK(n == 300 - 258);
    const char *s;
    size_t len;
    CHECK_OK(cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", ' ', &s, &len));
    CHECK(len == 2 && !memcmp(s, "\xc4\xa0", 2)); /* byte 0x20 is U+0120 'Ġ' */
    CHECK_OK(cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 'a', &s, &len));
    CHECK(len == 1 && s[0] == 'a');
    CHECK_OK(cm_gguf_get_arr_str(g, "tokenizer.ggml.merges", 0, &s, &len));
    CHECK(len == 4 && !memcmp(s, "\xc4\xa0 e", 4));
    CHECK_OK(cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 256, &s, &len));
    CHECK(len == 3 && !memcmp(s, "\xc4\xa0" "e", 3));
    uint32_t bos = 0;
    CHECK_OK(cm_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &bos));
    CHECK(bos == 298);
    const void *tt;
    CHECK_OK(cm_gguf_get_arr_data(g, "tokenizer.ggml.token_type", &tt, &n));
    int32_t t298;
    memcpy(&t298, (const char *)tt + 298 * 4, 4);
    CHECK(t298 == 3);
    cm_gguf_close(g);
    cm_gguf_close(g2);

    /* --vocab-from copies the tokenizer of another file */
    cm_synth_params q = small("llama", CM_TYPE_F32);
    q.vocab_from = path;
    q.n_vocab = 0;
    char path3[512];
    model_path(path3, sizeof path3, "meta3");
    CHECK_OK(cm_synth_write(&q, path3));
    CHECK_OK(cm_gguf_open(path3, &g));
    if (g) {
        CHECK_OK(cm_gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &n));
        CHECK(n == 42);
        CHECK(cm_gguf_find_tensor(g, "token_embd.weight")->ne[1] == 300);
        cm_gguf_close(g);
    }
    /* bad parameters are refused with a message */
    q.vocab_from = NULL;
    q.n_vocab = 100;
    CHECK(cm_synth_write(&q, path3) == CM_EINVAL);
    q.n_vocab = 300, q.n_head_kv = 3;
    CHECK(cm_synth_write(&q, path3) == CM_EINVAL);
    unlink(path), unlink(path2), unlink(path3);
}

TEST(load_errors) {
    cm_model *m = NULL;
    CHECK(cm_model_load("/nonexistent/model.gguf", NULL, &m) != CM_OK && m == NULL);
    cm_synth_params p = small("llama", CM_TYPE_F32);
    char path[512];
    model_path(path, sizeof path, "stage");
    CHECK_OK(cm_synth_write(&p, path));
    cm_model_params bad = {1, 5};
    CHECK(cm_model_load(path, &bad, &m) == CM_EINVAL && m == NULL);
    /* a broken file names what is wrong */
    char bad_path[512];
    model_path(bad_path, sizeof bad_path, "broken");
    struct {
        const char *key, *tensor, *swap, *expect;
    } cases[] = {
        {"llama.embedding_length", NULL, NULL, "llama.embedding_length is missing"},
        {"general.architecture", NULL, NULL, "general.architecture is missing"},
        {NULL, "blk.1.ffn_up.weight", NULL, "tensor blk.1.ffn_up.weight is missing"},
        {NULL, "output_norm.weight", NULL, "tensor output_norm.weight is missing"},
        {NULL, NULL, "blk.0.attn_output.weight", NULL}, /* square: swapping changes nothing */
        {NULL, NULL, "blk.0.attn_k.weight", "tensor blk.0.attn_k.weight has shape [32, 64"},
        {NULL, NULL, "blk.1.ffn_down.weight", "tensor blk.1.ffn_down.weight has shape [64, 96"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK_OK(rewrite(path, bad_path, cases[i].key, cases[i].tensor, cases[i].swap));
        int rc = cm_model_load(bad_path, NULL, &m);
        if (!cases[i].expect) {
            CHECK_OK(rc);
            cm_model_destroy(m);
            m = NULL;
            continue;
        }
        CHECK(rc == CM_EFORMAT && m == NULL);
        CHECK_MSG(strstr(cm_last_error(rc), cases[i].expect) != NULL, "got '%s', want '%s'", cm_last_error(rc),
                  cases[i].expect);
    }
    unlink(bad_path);
    cm_model_params mid = {1, 2};
    CHECK_OK(cm_model_load(path, &mid, &m));
    if (m) {
        CHECK(!cm_model_is_first(m) && cm_model_is_last(m));
        CHECK(cm_model_weight_bytes(m) > 0);
        cm_model_destroy(m);
    }
    unlink(path);
}

int main(void) {
    cm_kernels_init(false);
    RUN(hparams_and_synth_metadata);
    RUN(load_errors);
    RUN(naive_llama);
    RUN(naive_llama_experts);
    RUN(naive_qwen2);
    RUN(naive_qwen3);
    RUN(naive_qwen3moe);
    RUN(naive_more_types);
    RUN(naive_tied_output);
    RUN(q4_k_m_mix);
    RUN(rope_layout_and_llama3_scaling);
    RUN(long_context_tiles);
    RUN(decode_one_token_at_a_time);
    RUN(decode_fused_matches_general);
    RUN(greedy_cache_vs_recompute);
    RUN(interleaved_sequences_and_stages);
    RUN(batch_errors_leave_cache);
    return test_summary();
}
