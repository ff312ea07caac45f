/* test_api.c - the public interface of include/cellm.h on a small synthetic
 * model: greedy text equals an independent greedy loop over the internal
 * engine, seeds reproduce, limits and the stop callback hold, errors explain. */
#include <stdio.h>
#include <unistd.h>

#include "base/status.h"
#include "cellm.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/synth.h"
#include "test.h"
#include "text/tokenizer.h"

static char g_path[512];

typedef struct sink {
    char buf[8192];
    size_t n;
    int calls, stop_after;
} sink;

static int on_text(void *user, const char *text, size_t len) {
    sink *s = user;
    if (s->n + len < sizeof s->buf) {
        memcpy(s->buf + s->n, text, len);
        s->n += len;
        s->buf[s->n] = 0;
    }
    s->calls++;
    return s->stop_after && s->calls >= s->stop_after;
}

static int make_model(void) {
    cm_synth_params p;
    cm_synth_defaults(&p);
    p.n_embd = 64;
    p.n_layer = 2;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 128;
    p.n_vocab = 400;
    p.type = CM_TYPE_F16;
    p.seed = 11;
    snprintf(g_path, sizeof g_path, "%s/test_api_%d.gguf", test_tmpdir(), (int)getpid());
    return cm_synth_write(&p, g_path);
}

/* Greedy tokens by recomputing the whole sequence each step (no API code). */
static int reference_greedy(const char *prompt, int n_gen, char *out, int cap) {
    cm_model *m = NULL;
    cm_tokenizer *tok = NULL;
    cm_ctx *c = NULL;
    int rc = cm_model_load(g_path, &(cm_model_params){0, -1}, &m);
    if (!rc) rc = cm_tokenizer_load(cm_model_gguf(m), &tok);
    if (!rc) rc = cm_ctx_create(m, &(cm_ctx_params){.n_ctx = 128, .n_seq_max = 1, .n_batch_max = 128, .n_threads = 1}, &c);
    int32_t toks[128], pos[128], seq[128];
    int n = 0;
    if (!rc) rc = cm_tokenize(tok, prompt, strlen(prompt), cm_tokenizer_add_bos(tok), true, toks, 64, &n);
    int n_prompt = n;
    for (int step = 0; !rc && step < n_gen; step++) {
        cm_ctx_seq_rm(c, 0, 0, -1);
        for (int i = 0; i < n; i++) pos[i] = i, seq[i] = 0;
        cm_batch b = {.n_tokens = n, .token = toks, .pos = pos, .seq_id = seq, .want_logits = NULL};
        rc = cm_ctx_decode(c, &b);
        if (rc) break;
        const float *l = cm_ctx_logits(c, n - 1);
        int best = 0;
        for (int v = 1; v < cm_model_hparams(m)->n_vocab; v++)
            if (l[v] > l[best]) best = v;
        if (cm_tokenizer_is_eog(tok, best)) break;
        toks[n++] = best;
    }
    int len = rc ? rc : cm_detokenize(tok, toks + n_prompt, n - n_prompt, out, cap - 1, false);
    if (len >= 0) out[len < cap - 1 ? len : cap - 1] = 0;
    cm_ctx_destroy(c);
    cm_tokenizer_destroy(tok);
    cm_model_destroy(m);
    return len < 0 ? len : CM_OK;
}

TEST(greedy_matches_reference) {
    cellm_model *m;
    CHECK_OK(cellm_model_open(g_path, &(cellm_model_params){.n_ctx = 128, .n_threads = 2}, &m));
    if (!m) return;
    cellm_gen_params gp = cellm_gen_defaults();
    gp.temperature = 0;
    gp.max_tokens = 12;
    sink s = {0};
    int n_gen = -1;
    CHECK_OK(cellm_generate(m, "hello world", &gp, on_text, &s, &n_gen));
    CHECK(n_gen > 0 && n_gen <= 12);
    char ref[8192];
    CHECK_OK(reference_greedy("hello world", n_gen, ref, sizeof ref));
    CHECK_MSG(!strcmp(ref, s.buf), "api '%s' vs reference '%s'", s.buf, ref);
    /* the cache starts empty each call: the same call gives the same text */
    sink s2 = {0};
    CHECK_OK(cellm_generate(m, "hello world", &gp, on_text, &s2, NULL));
    CHECK(!strcmp(s.buf, s2.buf));
    cellm_model_close(m);
}

TEST(seed_reproduces_and_limits_hold) {
    cellm_model *m;
    CHECK_OK(cellm_model_open(g_path, NULL, &m));
    if (!m) return;
    cellm_gen_params gp = cellm_gen_defaults();
    gp.temperature = 1.0f;
    gp.max_tokens = 20;
    gp.seed = 5;
    sink a = {0}, b = {0};
    int na = 0, nb = 0;
    CHECK_OK(cellm_generate(m, "abc", &gp, on_text, &a, &na));
    CHECK_OK(cellm_generate(m, "abc", &gp, on_text, &b, &nb));
    CHECK(na == nb && !strcmp(a.buf, b.buf));
    CHECK(na <= 20);
    sink c = {.stop_after = 1};
    int nc = 0;
    CHECK_OK(cellm_generate(m, "abc", &gp, on_text, &c, &nc));
    CHECK(c.calls == 1);
    CHECK(nc >= 1 && nc < na + 1);
    gp.chat = 1;
    sink d = {0};
    CHECK_OK(cellm_generate(m, "abc", &gp, on_text, &d, NULL));
    cellm_model_close(m);
}

TEST(errors_explain) {
    cellm_model *m = (cellm_model *)1;
    int rc = cellm_model_open("/nonexistent/model.gguf", NULL, &m);
    CHECK(rc < 0 && m == NULL);
    CHECK(strstr(cellm_last_error(rc), "/nonexistent/model.gguf") != NULL);
    CHECK(strlen(cellm_strerror(rc)) > 0);
    CHECK(cellm_generate(NULL, "x", NULL, NULL, NULL, NULL) < 0);
    CHECK(!strcmp(cellm_version(), "0.1.0"));
}

int main(void) {
    cm_kernels_init(false);
    if (make_model()) {
        fprintf(stderr, "cannot write the test model: %s\n", cm_last_error(-1));
        return 1;
    }
    RUN(greedy_matches_reference);
    RUN(seed_reproduces_and_limits_hold);
    RUN(errors_explain);
    remove(g_path);
    return test_summary();
}
