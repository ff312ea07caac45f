/* hf_import.h - turns a Hugging Face tokenizer.json (byte-level BPE, as
 * used by Llama 3, Qwen2/2.5/3, GPT-2 and most recent models) and its
 * tokenizer_config.json into GGUF `tokenizer.*` metadata on a writer. */
#ifndef CM_TEXT_HF_IMPORT_H
#define CM_TEXT_HF_IMPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf/gguf.h"

typedef struct cm_hf_import_opts {
    /* tokenizer.ggml.pre to write; NULL detects it from the pre_tokenizer's
     * regex (llama-bpe, qwen2, gpt-2, starcoder) and fails, asking for it,
     * when the regex is not one it knows. */
    const char *pre;
} cm_hf_import_opts;

typedef struct cm_hf_import_info {
    int n_vocab;        /* tokens written (max id + 1, gaps filled with [PADn]) */
    int n_merges;
    int n_added;        /* added_tokens entries */
    int n_gaps;         /* [PADn] fillers */
    char pre[32];       /* tokenizer.ggml.pre written */
    int32_t bos, eos;   /* -1 when not set */
    bool add_bos;
    bool has_chat_template;
} cm_hf_import_info;

/* Adds to w: tokenizer.ggml.model "gpt2", .pre, .tokens (by id), .token_type
 * (1 normal, 3 control for special added tokens and <|...|>-looking ones,
 * 4 user-defined for other added tokens, 5 for [PADn] gaps), .merges ("a b"
 * strings, from either the string or the [a, b] form), .bos_token_id /
 * .eos_token_id and .add_bos_token (from the config, else from the
 * post-processor, else true for llama-bpe only) and tokenizer.chat_template.
 * tokenizer_config_path may be NULL. opts and info may be NULL.
 * Errors name the file and the field (CM_EIO, CM_EFORMAT, CM_EUNSUPPORTED). */
int cm_hf_import(const char *tokenizer_json_path, const char *tokenizer_config_path, cm_gguf_writer *w,
                 const cm_hf_import_opts *opts, cm_hf_import_info *info);

#endif
