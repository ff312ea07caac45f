/* test_synth.c - synthetic model files: the built-in byte-level BPE
 * tokenizer works with the project's tokenizer (and round-trips text), a
 * tokenizer copied with vocab_from tokenizes like its source, the weights
 * have the scale synth promises, and every tensor type synth writes loads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/synth.h"
#include "test.h"
#include "text/tokenizer.h"

static void tmp_path(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "%s/test_synth_%d_%s.gguf", test_tmpdir(), (int)getpid(), tag);
}

static cm_synth_params tiny(void) {
    cm_synth_params p;
    cm_synth_defaults(&p);
    p.n_embd = 32, p.n_head = 2, p.n_head_kv = 1, p.n_ff = 64, p.n_layer = 1;
    p.n_threads = 2;
    return p;
}

TEST(builtin_tokenizer_round_trip) {
    cm_synth_params p = tiny();
    p.n_vocab = 8000;
    char path[512];
    tmp_path(path, sizeof path, "tok");
    CHECK_OK(cm_synth_write(&p, path));
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!g) return;
    cm_tokenizer *t = NULL;
    CHECK_OK(cm_tokenizer_load(g, &t));
    if (t) {
        CHECK(cm_tokenizer_n_vocab(t) == 8000);
        CHECK(cm_tokenizer_bos(t) == 7998 && cm_tokenizer_eos(t) == 7999);
        CHECK(cm_tokenizer_is_control(t, 7999));
        const char *text = "The cat sat on the mat, 42 times!\nÜber café\t";
        int32_t ids[256];
        int n = 0;
        CHECK_OK(cm_tokenize(t, text, strlen(text), true, false, ids, 256, &n));
        CHECK(n > 1 && ids[0] == 7998);
        /* merges make words shorter than their bytes */
        CHECK_MSG(n - 1 < (int)strlen(text) * 3 / 4, "%d tokens for %zu bytes", n - 1, strlen(text));
        char out[512];
        int m = n > 1 ? cm_detokenize(t, ids + 1, n - 1, out, sizeof out, false) : -1;
        CHECK(m == (int)strlen(text) && !memcmp(out, text, strlen(text)));
        /* " the" is one merge chain: 'Ġ' 't' 'h' 'e' -> at most two tokens */
        CHECK_OK(cm_tokenize(t, " the", 4, false, false, ids, 256, &n));
        CHECK(n >= 1 && n <= 2);
        cm_tokenizer_destroy(t);
    }
    cm_gguf_close(g);
    unlink(path);
}

TEST(vocab_from_testdata) {
    const char *d = test_datadir();
    if (!d) TEST_SKIP("CELLM_TESTDATA not set: no shared vocabularies");
    char src[512];
    snprintf(src, sizeof src, "%s/vocab/ggml-vocab-gpt-2.gguf", d);
    if (access(src, R_OK)) TEST_SKIP("%s is absent", src);
    cm_synth_params p = tiny();
    p.vocab_from = src;
    char path[512];
    tmp_path(path, sizeof path, "vfrom");
    CHECK_OK(cm_synth_write(&p, path));
    cm_gguf *a = NULL, *b = NULL;
    CHECK_OK(cm_gguf_open(src, &a));
    CHECK_OK(cm_gguf_open(path, &b));
    if (!a || !b) return;
    cm_tokenizer *ta = NULL, *tb = NULL;
    CHECK_OK(cm_tokenizer_load(a, &ta));
    CHECK_OK(cm_tokenizer_load(b, &tb));
    if (ta && tb) {
        CHECK(cm_tokenizer_n_vocab(ta) == cm_tokenizer_n_vocab(tb));
        const char *text = "Hello world, this is a synthetic model speaking.";
        int32_t ia[128], ib[128];
        int na = 0, nb = 0;
        CHECK_OK(cm_tokenize(ta, text, strlen(text), false, false, ia, 128, &na));
        CHECK_OK(cm_tokenize(tb, text, strlen(text), false, false, ib, 128, &nb));
        CHECK(na > 0 && na == nb && !memcmp(ia, ib, sizeof(int32_t) * (size_t)na));
    }
    const cm_gguf_tensor *te = cm_gguf_find_tensor(b, "token_embd.weight");
    CHECK(te && te->ne[1] == cm_tokenizer_n_vocab(tb));
    cm_tokenizer_destroy(ta);
    cm_tokenizer_destroy(tb);
    cm_gguf_close(a);
    cm_gguf_close(b);
    unlink(path);
}

/* Matrices are N(0, 1/fan_in) (the LM head 2x that), norms near 1. */
TEST(weight_scale) {
    cm_synth_params p = tiny();
    p.n_embd = 256, p.n_ff = 512, p.n_head = 4, p.n_head_kv = 4;
    char path[512];
    tmp_path(path, sizeof path, "scale");
    CHECK_OK(cm_synth_write(&p, path));
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!g) return;
    struct {
        const char *name;
        double mean, sd;
    } want[] = {
        {"blk.0.attn_q.weight", 0, 1 / 16.0},  {"blk.0.ffn_down.weight", 0, 1 / sqrt(512.0)},
        {"output.weight", 0, 2 / 16.0},        {"blk.0.attn_norm.weight", 1, 0.1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const cm_gguf_tensor *t = cm_gguf_find_tensor(g, want[i].name);
        CHECK(t != NULL);
        if (!t) continue;
        int64_t n = t->ne[0] * t->ne[1];
        float *x = malloc((size_t)n * sizeof *x);
        cm_type_traits_ref(t->type)->to_float(t->data, x, n);
        double s = 0, ss = 0;
        for (int64_t j = 0; j < n; j++) s += x[j], ss += (double)x[j] * x[j];
        double mean = s / n, sd = sqrt(ss / n - mean * mean);
        /* four standard errors of the estimates from n samples */
        double se = 4 / sqrt((double)n);
        CHECK_MSG(fabs(mean - want[i].mean) < se * want[i].sd + 1e-3 && fabs(sd / want[i].sd - 1) < se + 0.02,
                  "%s: mean %g sd %g", want[i].name, mean, sd);
        free(x);
    }
    cm_gguf_close(g);
    unlink(path);
}

/* Every type synth accepts writes a file the engine loads, with the type
 * where the row length allows it and llama.cpp's fallback where not. */
TEST(every_type_loads) {
    const char *names[] = {"f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
                           "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        cm_synth_params p = tiny();
        p.n_embd = 256, p.n_ff = 96; /* ffn_down rows of 96: not a K block */
        CHECK_OK(cm_synth_parse_type(names[i], &p.type, &p.mix));
        char path[512];
        tmp_path(path, sizeof path, names[i]);
        CHECK_OK(cm_synth_write(&p, path));
        cm_model *m = NULL;
        CHECK_OK(cm_model_load(path, NULL, &m));
        cm_gguf *g = NULL;
        CHECK_OK(cm_gguf_open(path, &g));
        if (g) {
            int tq = cm_gguf_find_tensor(g, "blk.0.attn_q.weight")->type;
            int td = cm_gguf_find_tensor(g, "blk.0.ffn_down.weight")->type;
            CHECK_MSG(tq == p.type, "%s: attn_q is %s", names[i], cm_type_name(tq));
            bool kq = cm_type_block_elems(p.type) == CM_QK_K;
            CHECK_MSG(kq ? td == CM_TYPE_Q8_0 : td == p.type, "%s: ffn_down is %s", names[i], cm_type_name(td));
            cm_gguf_close(g);
        }
        cm_model_destroy(m);
        unlink(path);
    }
    int t, mix;
    CHECK(cm_synth_parse_type("q7_0", &t, &mix) == CM_EINVAL);
    CHECK(cm_synth_parse_type("q8_K", &t, &mix) == CM_EINVAL);
}

int main(void) {
    cm_kernels_init(false);
    RUN(builtin_tokenizer_round_trip);
    RUN(vocab_from_testdata);
    RUN(weight_scale);
    RUN(every_type_loads);
    return test_summary();
}
