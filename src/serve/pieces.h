/* pieces.h - builds the cm_pieces table (sched.h) from a tokenizer. */
#ifndef CM_SERVE_PIECES_H
#define CM_SERVE_PIECES_H

#include "serve/sched.h"
#include "text/tokenizer.h"

int cm_pieces_build(const cm_tokenizer *t, cm_pieces *out);
void cm_pieces_free(cm_pieces *p);

#endif
