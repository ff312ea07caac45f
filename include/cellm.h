/* cellm.h - the public interface of cellm.
 *
 * Small and opaque: a program that embeds cellm opens a model, asks for
 * completions and gets text back through a callback. Everything else is
 * internal (src/). Status codes are the negative values of the CM_E* list in
 * src/base/status.h; cellm_strerror() describes any of them. */
#ifndef CELLM_H
#define CELLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CELLM_VERSION_MAJOR 0
#define CELLM_VERSION_MINOR 1
#define CELLM_VERSION_PATCH 0

/* "0.1.0" */
const char *cellm_version(void);

/* A description of a status code returned by any cellm_* function. */
const char *cellm_strerror(int status);

/* The sentence describing the last failure on this thread (names the file,
 * field or value that was wrong), or the status text when there is none. */
const char *cellm_last_error(int status);

/* ---- a model on this machine ---- */

typedef struct cellm_model cellm_model;

typedef struct cellm_model_params {
    int n_ctx;     /* context length in tokens; <= 0: the model's, at most 4096 */
    int n_threads; /* <= 0: all cores */
} cellm_model_params;

/* Loads a GGUF model. Returns 0 and sets *out, or a negative status (see
 * cellm_last_error). Free with cellm_model_close. */
int cellm_model_open(const char *path, const cellm_model_params *params, cellm_model **out);
void cellm_model_close(cellm_model *m);

typedef struct cellm_gen_params {
    int max_tokens;      /* <= 0: until end of generation or a full context */
    float temperature;   /* <= 0: greedy */
    int top_k;           /* <= 0: off */
    float top_p;         /* >= 1: off */
    float min_p;         /* <= 0: off */
    uint64_t seed;
    int chat;            /* nonzero: wrap the prompt in the model's chat template as a user turn */
} cellm_gen_params;

/* Defaults: max_tokens 256, temperature 0.8, top_k 40, top_p 0.95,
 * min_p 0.05, seed 0, chat 0. */
cellm_gen_params cellm_gen_defaults(void);

/* Receives the completion as it is generated: `len` bytes of text (not NUL
 * terminated; a UTF-8 character is never split across calls). Return
 * nonzero to stop generating. */
typedef int (*cellm_text_fn)(void *user, const char *text, size_t len);

/* Completes `prompt`. The model keeps no conversation between calls. Returns
 * 0, or a negative status. *n_generated (may be NULL) receives the number of
 * tokens generated. */
int cellm_generate(cellm_model *m, const char *prompt, const cellm_gen_params *params, cellm_text_fn on_text,
                   void *user, int *n_generated);

#ifdef __cplusplus
}
#endif

#endif
