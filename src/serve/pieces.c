/* pieces.c - the table of every token's text for the engine thread (see
 * cm_pieces in sched.h), built once from the tokenizer at start-up. */
#include "serve/pieces.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

int cm_pieces_build(const cm_tokenizer *t, cm_pieces *out) {
    memset(out, 0, sizeof *out);
    int n = cm_tokenizer_n_vocab(t);
    size_t cap = (size_t)n * 8 + 64, used = 0;
    out->n_vocab = n;
    out->bytes = malloc(cap);
    out->off = malloc(sizeof(uint32_t) * ((size_t)n + 1));
    out->eog = calloc((size_t)n + 1, 1);
    if (!out->bytes || !out->off || !out->eog) goto oom;
    for (int i = 0; i < n; i++) {
        out->off[i] = (uint32_t)used;
        out->eog[i] = cm_tokenizer_is_eog(t, i);
        for (;;) {
            int k = cm_token_to_piece(t, i, out->bytes + used, (int)(cap - used), false);
            if (k < 0) {
                k = 0; /* a token without text (unknown id kinds) renders as nothing */
                break;
            }
            if ((size_t)k <= cap - used) {
                used += (size_t)k;
                break;
            }
            size_t ncap = cap * 2 + (size_t)k;
            char *nb = realloc(out->bytes, ncap);
            if (!nb) goto oom;
            out->bytes = nb;
            cap = ncap;
        }
        if (used > UINT32_MAX / 2) {
            cm_pieces_free(out);
            return cm_errorf(CM_EFORMAT, "the vocabulary's token texts exceed 2 GiB");
        }
    }
    out->off[n] = (uint32_t)used;
    return CM_OK;
oom:
    cm_pieces_free(out);
    return cm_errorf(CM_ENOMEM, "out of memory building the token text table");
}

void cm_pieces_free(cm_pieces *p) {
    free(p->bytes);
    free(p->off);
    free(p->eog);
    memset(p, 0, sizeof *p);
}
