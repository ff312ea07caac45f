/* synth.h - synthetic models: GGUF files with random weights from a seed,
 * the metadata an independent reader (llama.cpp) needs for the arch, and a
 * tokenizer (copied from another GGUF, or a built-in byte-level BPE).
 * Tests, benchmarks and demos run on these. */
#ifndef CM_MODEL_SYNTH_H
#define CM_MODEL_SYNTH_H

#include <stdbool.h>
#include <stdint.h>

/* Quantization mixes beyond "every matrix of one type". */
enum cm_synth_mix {
    CM_SYNTH_MIX_NONE = 0,
    CM_SYNTH_MIX_Q4_K_M, /* Q4_K, with Q6_K for output and some attn_v / ffn_down (llama.cpp's choice) */
    CM_SYNTH_MIX_Q5_K_M, /* Q5_K, same upgrades to Q6_K */
};

typedef struct cm_synth_params {
    const char *arch;        /* "llama", "qwen2", "qwen3", "qwen3moe" */
    int n_embd, n_layer, n_head, n_head_kv;
    int head_dim;            /* 0: n_embd / n_head */
    int n_ff;                /* dense FFN width (llama with experts: the expert width) */
    int n_expert, n_expert_used, n_ff_expert;
    int n_vocab;             /* built-in tokenizer size when vocab_from is NULL */
    const char *vocab_from;  /* GGUF whose tokenizer.* keys are copied, or NULL */
    int type;                /* cm_type of the matrices */
    int mix;                 /* enum cm_synth_mix; overrides `type` */
    uint64_t seed;
    int n_ctx_train;
    float rope_freq_base;
    float norm_eps;
    bool tied_output;        /* no output.weight */
    /* Llama 3.1 rope scaling (llama only); factor 0 = none. Written as a
     * rope_freqs.weight tensor (as converters do) unless rope_llama3_keys_only,
     * which writes only the rope.scaling.* metadata. */
    float rope_llama3_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_ctx;
    bool rope_llama3_keys_only;
    int n_threads;           /* <= 0: all cores */
    bool progress;           /* lines on stderr */
} cm_synth_params;

/* Small llama-shaped defaults (f32, 64-wide, 2 layers, vocab 300, seed 1). */
void cm_synth_defaults(cm_synth_params *p);

/* Parses a --type name: any tensor type name ("q4_0", "q4_k", "f16") or a
 * mix ("q4_k_m", "q5_k_m"). CM_EINVAL for unknown names. */
int cm_synth_parse_type(const char *name, int *type, int *mix);

/* Writes the model to `path`, tensor by tensor (never the whole model in
 * memory), quantizing rows in parallel. */
int cm_synth_write(const cm_synth_params *p, const char *path);

#endif
