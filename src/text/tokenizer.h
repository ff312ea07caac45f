/* tokenizer.h - tokenizers built from GGUF `tokenizer.*` metadata:
 * SentencePiece-style (tokenizer.ggml.model = "llama") and byte-level BPE
 * ("gpt2") with the pre-tokenizer named by tokenizer.ggml.pre. */
#ifndef CM_TEXT_TOKENIZER_H
#define CM_TEXT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"

typedef struct cm_tokenizer cm_tokenizer;

int cm_tokenizer_load(const cm_gguf *g, cm_tokenizer **out);
void cm_tokenizer_destroy(cm_tokenizer *t);

int cm_tokenizer_n_vocab(const cm_tokenizer *t);
int32_t cm_tokenizer_bos(const cm_tokenizer *t);    /* -1 if none */
int32_t cm_tokenizer_eos(const cm_tokenizer *t);    /* -1 if none */
bool cm_tokenizer_add_bos(const cm_tokenizer *t);   /* tokenizer.ggml.add_bos_token or the model's default */
/* End of generation: EOS, EOT, <|im_end|>, <|eot_id|> and the like. */
bool cm_tokenizer_is_eog(const cm_tokenizer *t, int32_t token);
bool cm_tokenizer_is_control(const cm_tokenizer *t, int32_t token);
/* Token id of an exact piece (e.g. "<|im_end|>"), or -1. */
int32_t cm_tokenizer_find(const cm_tokenizer *t, const char *piece);

/* Tokenizes text[0..len). add_bos prepends BOS when the model has one;
 * parse_special recognises special/control tokens written in the text.
 * Writes at most n_max ids; *n_out receives the full count. Returns CM_OK,
 * or CM_ERANGE when n_max was too small (then call again with *n_out). */
int cm_tokenize(const cm_tokenizer *t, const char *text, size_t len, bool add_bos, bool parse_special,
                int32_t *out, int n_max, int *n_out);

/* The bytes of one token as it appears in text (byte-fallback tokens give
 * their byte, SentencePiece's U+2581 gives a space, byte-level BPE is
 * unmapped). Control tokens give their text only when render_special.
 * Returns the number of bytes (which may exceed n_buf; then nothing past
 * n_buf is written), or a negative status. */
int cm_token_to_piece(const cm_tokenizer *t, int32_t token, char *buf, int n_buf, bool render_special);

/* Detokenizes a whole sequence; removes the leading space SentencePiece adds
 * after BOS. Same return convention as cm_token_to_piece. */
int cm_detokenize(const cm_tokenizer *t, const int32_t *tokens, int n, char *buf, int n_buf, bool render_special);

#endif
