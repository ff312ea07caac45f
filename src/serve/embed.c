/* embed.c - the public embedding interface (include/cellm.h): one model on
 * this machine, one completion at a time, text back through a callback.
 *
 * A cellm_model owns the model, its tokenizer and a context with one
 * sequence; every buffer is sized at open (prompt tokens grow with the
 * prompt). Each cellm_generate starts from an empty cache. */
#include "cellm.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/sample.h"
#include "text/chat.h"
#include "text/stop.h"
#include "text/tokenizer.h"

#define EMBED_BATCH 256

struct cellm_model {
    cm_model *model;
    cm_tokenizer *tok;
    cm_ctx *ctx;
    int n_ctx, n_vocab;
    cm_chat_format chat;
    float *logits;                   /* n_vocab, the sampler works on a copy */
    int32_t b_tok[EMBED_BATCH], b_pos[EMBED_BATCH], b_seq[EMBED_BATCH];
    int8_t b_want[EMBED_BATCH];
    char *piece;
    int cap_piece;
};

const char *cellm_last_error(int status) { return cm_last_error(status); }

cellm_gen_params cellm_gen_defaults(void) {
    return (cellm_gen_params){.max_tokens = 256, .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f};
}

void cellm_model_close(cellm_model *m) {
    if (!m) return;
    cm_ctx_destroy(m->ctx);
    cm_tokenizer_destroy(m->tok);
    cm_model_destroy(m->model);
    free(m->logits);
    free(m->piece);
    free(m);
}

int cellm_model_open(const char *path, const cellm_model_params *params, cellm_model **out) {
    *out = NULL;
    if (!path) return cm_errorf(CM_EINVAL, "cellm_model_open: no path");
    cm_kernels_init(false);
    cellm_model *m = calloc(1, sizeof *m);
    if (!m) return CM_ENOMEM;
    cm_model_params mp = {.layer_begin = 0, .layer_end = -1};
    int rc = cm_model_load(path, &mp, &m->model);
    if (rc) goto fail;
    rc = cm_tokenizer_load(cm_model_gguf(m->model), &m->tok);
    if (rc) goto fail;
    const cm_hparams *hp = cm_model_hparams(m->model);
    m->n_vocab = hp->n_vocab;
    if (cm_tokenizer_n_vocab(m->tok) > m->n_vocab) {
        rc = cm_errorf(CM_EFORMAT, "%s: the tokenizer has %d tokens but the model only %d", path,
                       cm_tokenizer_n_vocab(m->tok), m->n_vocab);
        goto fail;
    }
    int n_ctx = params && params->n_ctx > 0 ? params->n_ctx : hp->n_ctx_train;
    if (n_ctx <= 0 || (!(params && params->n_ctx > 0) && n_ctx > 4096)) n_ctx = 4096;
    m->n_ctx = n_ctx;
    cm_ctx_params cp = {.n_ctx = n_ctx, .n_seq_max = 1, .n_batch_max = EMBED_BATCH,
                        .n_threads = params ? params->n_threads : 0};
    rc = cm_ctx_create(m->model, &cp, &m->ctx);
    if (rc) goto fail;
    const char *tmpl = NULL;
    cm_gguf_get_str(cm_model_gguf(m->model), "tokenizer.chat_template", &tmpl, NULL);
    m->chat = cm_chat_detect(tmpl);
    if (m->chat == CM_CHAT_UNKNOWN) m->chat = CM_CHAT_CHATML; /* the documented fallback */
    m->logits = malloc((size_t)m->n_vocab * sizeof *m->logits);
    m->cap_piece = 256;
    m->piece = malloc((size_t)m->cap_piece);
    if (!m->logits || !m->piece) {
        rc = CM_ENOMEM;
        goto fail;
    }
    *out = m;
    return CM_OK;
fail:
    cellm_model_close(m);
    return rc;
}

/* Runs toks[0..n) from position pos0; keeps the last entry's logits. */
static int feed(cellm_model *m, const int32_t *toks, int n, int pos0) {
    for (int i0 = 0; i0 < n; i0 += EMBED_BATCH) {
        int nb = n - i0 < EMBED_BATCH ? n - i0 : EMBED_BATCH;
        for (int j = 0; j < nb; j++) {
            m->b_tok[j] = toks[i0 + j];
            m->b_pos[j] = pos0 + i0 + j;
            m->b_seq[j] = 0;
            m->b_want[j] = (int8_t)(j == nb - 1);
        }
        cm_batch b = {.n_tokens = nb, .token = m->b_tok, .pos = m->b_pos, .seq_id = m->b_seq, .want_logits = m->b_want};
        int rc = cm_ctx_decode(m->ctx, &b);
        if (rc) return rc;
    }
    const float *l = cm_ctx_logits(m->ctx, (n - 1) % EMBED_BATCH);
    if (!l) return cm_errorf(CM_EINVAL, "no logits after the prompt");
    memcpy(m->logits, l, (size_t)m->n_vocab * sizeof *l);
    return CM_OK;
}

static int tokenize(cellm_model *m, const char *text, int32_t **out, int *n_out) {
    size_t len = strlen(text);
    int n = 0, cap = (int)(len < (1u << 28) ? len : (1u << 28)) + 8;
    int32_t *t = malloc((size_t)cap * sizeof *t);
    if (!t) return CM_ENOMEM;
    int rc = cm_tokenize(m->tok, text, len, cm_tokenizer_add_bos(m->tok), true, t, cap, &n);
    if (rc == CM_ERANGE) { /* cannot happen with one slot per byte, but the contract allows it */
        free(t);
        return cm_errorf(CM_ERANGE, "prompt tokenizes to %d tokens", n);
    }
    if (rc) {
        free(t);
        return rc;
    }
    *out = t;
    *n_out = n;
    return CM_OK;
}

static int piece_of(cellm_model *m, int32_t t, const char **p) {
    int n = cm_token_to_piece(m->tok, t, m->piece, m->cap_piece, false);
    if (n > m->cap_piece) {
        char *q = realloc(m->piece, (size_t)n);
        if (!q) return CM_ENOMEM;
        m->piece = q;
        m->cap_piece = n;
        n = cm_token_to_piece(m->tok, t, m->piece, m->cap_piece, false);
    }
    *p = m->piece;
    return n;
}

int cellm_generate(cellm_model *m, const char *prompt, const cellm_gen_params *params, cellm_text_fn on_text,
                   void *user, int *n_generated) {
    if (n_generated) *n_generated = 0;
    if (!m || !prompt) return cm_errorf(CM_EINVAL, "cellm_generate: no model or prompt");
    cellm_gen_params gp = params ? *params : cellm_gen_defaults();
    char *rendered = NULL;
    int32_t *toks = NULL;
    cm_sampler *smp = NULL;
    cm_stop *stop = NULL; /* no stop strings: it only keeps UTF-8 characters whole */
    int n_toks = 0, n_gen = 0, rc;
    if (gp.chat) {
        cm_chat_msg msg = {.role = "user", .content = prompt};
        if ((rc = cm_chat_render(m->chat, &msg, 1, true, &rendered))) goto done;
    }
    if ((rc = tokenize(m, rendered ? rendered : prompt, &toks, &n_toks))) goto done;
    if (n_toks == 0) {
        rc = cm_errorf(CM_EINVAL, "the prompt is empty after tokenization");
        goto done;
    }
    if (n_toks >= m->n_ctx) {
        rc = cm_errorf(CM_ERANGE, "the prompt has %d tokens but the context holds %d", n_toks, m->n_ctx);
        goto done;
    }
    cm_sampler_params sp = cm_sampler_defaults();
    sp.temperature = gp.temperature;
    sp.top_k = gp.top_k;
    sp.top_p = gp.top_p;
    sp.min_p = gp.min_p;
    sp.seed = gp.seed;
    if ((rc = cm_sampler_create(&sp, m->n_vocab, &smp))) goto done;
    if ((rc = cm_stop_create(NULL, 0, &stop))) goto done;
    cm_ctx_seq_rm(m->ctx, 0, 0, -1);
    for (int i = 0; i < n_toks; i++) cm_sampler_accept(smp, toks[i]);
    if ((rc = feed(m, toks, n_toks, 0))) goto done;
    int pos = n_toks;
    const char *em;
    size_t n_em;
    for (;;) {
        int32_t t = cm_sampler_sample(smp, m->logits, NULL);
        if (cm_tokenizer_is_eog(m->tok, t)) break;
        cm_sampler_accept(smp, t);
        n_gen++;
        const char *p;
        int np = piece_of(m, t, &p);
        if (np < 0) {
            rc = np;
            goto done;
        }
        cm_stop_feed(stop, p, (size_t)np, &em, &n_em);
        if (n_em && on_text && on_text(user, em, n_em)) goto done;
        if ((gp.max_tokens > 0 && n_gen >= gp.max_tokens) || pos >= m->n_ctx) break;
        if ((rc = feed(m, &t, 1, pos++))) goto done;
    }
    cm_stop_flush(stop, &em, &n_em);
    if (n_em && on_text) on_text(user, em, n_em);
done:
    if (n_generated) *n_generated = n_gen;
    cm_stop_destroy(stop);
    cm_sampler_destroy(smp);
    free(toks);
    free(rendered);
    return rc;
}
