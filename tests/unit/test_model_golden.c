/* test_model_golden.c - the engine against llama.cpp.
 *
 * tests/golden/llamacpp_model_golden.h holds, for small synthetic models,
 * the greedy tokens and top log-probabilities llama.cpp computed (see
 * tests/golden/llamacpp_model_golden.mjs). This test writes the same models
 * with synth (same flags, same seed: the same bytes), runs the same prompt
 * and compares. Float models must give the same greedy tokens and
 * log-probabilities within 0.03; quantized ones, whose activations both
 * engines quantize in their own ways, the same first tokens and
 * log-probabilities within 0.3. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/synth.h"
#include "test.h"

#include "golden/llamacpp_model_golden.h"

/* The subset of `cellm model synth` flags the golden models use. */
static int parse_args(const char *args, cm_synth_params *p) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", args);
    static char arch[32];
    char *save = NULL;
    for (char *k = strtok_r(buf, " ", &save); k; k = strtok_r(NULL, " ", &save)) {
        if (!strcmp(k, "--tied")) {
            p->tied_output = true;
            continue;
        }
        char *v = strtok_r(NULL, " ", &save);
        if (!v) return -1;
        if (!strcmp(k, "--arch")) snprintf(arch, sizeof arch, "%s", v), p->arch = arch;
        else if (!strcmp(k, "--embd")) p->n_embd = atoi(v);
        else if (!strcmp(k, "--layers")) p->n_layer = atoi(v);
        else if (!strcmp(k, "--heads")) p->n_head = atoi(v);
        else if (!strcmp(k, "--kv-heads")) p->n_head_kv = atoi(v);
        else if (!strcmp(k, "--head-dim")) p->head_dim = atoi(v);
        else if (!strcmp(k, "--ffn")) p->n_ff = atoi(v);
        else if (!strcmp(k, "--experts")) p->n_expert = atoi(v);
        else if (!strcmp(k, "--experts-used")) p->n_expert_used = atoi(v);
        else if (!strcmp(k, "--expert-ffn")) p->n_ff_expert = atoi(v);
        else if (!strcmp(k, "--seed")) p->seed = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--rope-llama3")) p->rope_llama3_factor = strtof(v, NULL);
        else if (!strcmp(k, "--rope-base")) p->rope_freq_base = strtof(v, NULL);
        else if (!strcmp(k, "--type")) {
            if (cm_synth_parse_type(v, &p->type, &p->mix)) return -1;
        } else
            return -1;
    }
    return 0;
}

static void log_softmax(const float *l, int n, double *out) {
    double mx = l[0], s = 0;
    for (int i = 1; i < n; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++) s += exp(l[i] - mx);
    for (int i = 0; i < n; i++) out[i] = l[i] - mx - log(s);
}

static void check_model(const golden_model *gm) {
    cm_synth_params p;
    cm_synth_defaults(&p);
    p.n_vocab = GOLDEN_VOCAB;
    p.n_threads = 2;
    if (parse_args(gm->synth_args, &p)) {
        CHECK_MSG(0, "%s: cannot parse '%s'", gm->name, gm->synth_args);
        return;
    }
    bool quantized = cm_type_traits_get(p.type) && cm_type_traits_get(p.type)->is_quantized;
    double tol = quantized ? 0.3 : 0.03;
    char path[512];
    snprintf(path, sizeof path, "%s/test_golden_%d_%s.gguf", test_tmpdir(), (int)getpid(), gm->name);
    CHECK_OK(cm_synth_write(&p, path));
    cm_model *m = NULL;
    CHECK_OK(cm_model_load(path, NULL, &m));
    if (!m) return;
    cm_ctx_params cp = {.n_ctx = 64, .n_seq_max = 1, .n_batch_max = GOLDEN_N_PROMPT, .n_threads = 2};
    cm_ctx *c = NULL;
    CHECK_OK(cm_ctx_create(m, &cp, &c));
    if (!c) goto done;
    int32_t tok[GOLDEN_N_PROMPT], pos[GOLDEN_N_PROMPT], sid[GOLDEN_N_PROMPT] = {0};
    for (int i = 0; i < GOLDEN_N_PROMPT; i++) tok[i] = golden_prompt[i], pos[i] = i;
    cm_batch b = {GOLDEN_N_PROMPT, tok, pos, sid, NULL};
    CHECK_OK(cm_ctx_decode(c, &b));
    double lp[GOLDEN_VOCAB], worst = 0;
    int32_t gen[GOLDEN_N_GEN];
    int n_same = 0;
    for (int s = 0; s < GOLDEN_N_GEN; s++) {
        const float *l = cm_ctx_logits(c, b.n_tokens - 1);
        if (!l) break;
        log_softmax(l, GOLDEN_VOCAB, lp);
        int best = 0;
        for (int i = 1; i < GOLDEN_VOCAB; i++)
            if (lp[i] > lp[best]) best = i;
        gen[s] = best;
        if (s < GOLDEN_N_STEPS)
            for (int k = 0; k < GOLDEN_TOP_K; k++) {
                double d = fabs(lp[gm->top_id[s][k]] - gm->top_logprob[s][k]);
                worst = d > worst ? d : worst;
            }
        if (n_same == s && gen[s] == gm->greedy[s]) n_same++;
        /* follow llama.cpp's tokens so the later steps compare like with like */
        int32_t t = gm->greedy[s], ps = GOLDEN_N_PROMPT + s;
        cm_batch b1 = {1, &t, &ps, sid, NULL};
        CHECK_OK(cm_ctx_decode(c, &b1));
        b = b1;
    }
    fprintf(stderr, "  %-18s greedy tokens equal to llama.cpp's: %2d of %d; max |log p difference| %.3f (tol %.2f)\n",
            gm->name, n_same, GOLDEN_N_GEN, worst, tol);
    CHECK_MSG(worst <= tol, "%s: log-probabilities differ from llama.cpp by %g", gm->name, worst);
    CHECK_MSG(n_same >= (quantized ? GOLDEN_N_STEPS : GOLDEN_N_GEN), "%s: greedy tokens agree for %d steps only",
              gm->name, n_same);
done:
    cm_ctx_destroy(c);
    cm_model_destroy(m);
    unlink(path);
}

TEST(against_llamacpp) {
    for (size_t i = 0; i < sizeof golden_models / sizeof golden_models[0]; i++) check_model(&golden_models[i]);
}

int main(void) {
    cm_kernels_init(false);
    RUN(against_llamacpp);
    return test_summary();
}
