/* pretok.h - byte-level BPE pre-tokenizers: the regex cascade named by
 * tokenizer.ggml.pre, run with PCRE2 (UTF + UCP).
 *
 * A pre-tokenizer is a list of regexes applied in turn. Each stage cuts
 * every piece left by the previous stage into its matches and the text
 * between matches; both are kept, so the pieces always tile the input
 * exactly. Invalid UTF-8 never matches any regex item, so stray bytes end up
 * in the between-match pieces and survive unchanged. */
#ifndef CM_TEXT_PRETOK_H
#define CM_TEXT_PRETOK_H

#include <stdbool.h>
#include <stddef.h>

typedef struct cm_pretok cm_pretok;

typedef struct cm_span {
    size_t off, len;
} cm_span;

/* Builds the pre-tokenizer named `pre` (tokenizer.ggml.pre). Known names:
 * gpt-2/default (and gpt-2-like mpt, olmo, jais), llama-bpe/llama3 (and
 * dbrx, smaug, chatglm-bpe...), qwen2 (and stablelm2), deepseek-llm,
 * deepseek-coder, starcoder (and refact, command-r, smollm, codeshell),
 * falcon. An unknown or NULL name falls back to gpt-2's regex with a
 * warning (*fell_back set when not NULL). */
int cm_pretok_create(const char *pre, cm_pretok **out, bool *fell_back);
void cm_pretok_destroy(cm_pretok *p);

/* The canonical name of the regex list in use ("gpt-2", "llama-bpe", ...). */
const char *cm_pretok_name(const cm_pretok *p);
/* Whether a whole piece that is already a token skips BPE merging
 * (Llama 3's ignore_merges). */
bool cm_pretok_ignore_merges(const cm_pretok *p);

/* Splits text[0..len) into non-empty pieces, written to spans (capacity at
 * least len entries; `scratch` likewise). *n_spans receives the count.
 * Returns CM_OK, or CM_EINVAL/CM_ENOMEM with a message on a PCRE2 failure. */
int cm_pretok_split(const cm_pretok *p, const char *text, size_t len, cm_span *spans, cm_span *scratch,
                    size_t *n_spans);

#endif
