/* chat.h - chat templates: recognise the family of the Jinja template in
 * tokenizer.chat_template and render messages the way that family does, with
 * the generation prompt. */
#ifndef CM_TEXT_CHAT_H
#define CM_TEXT_CHAT_H

#include <stdbool.h>

typedef enum cm_chat_format {
    CM_CHAT_UNKNOWN = 0,
    CM_CHAT_LLAMA3,
    CM_CHAT_CHATML,   /* Qwen and other <|im_start|> templates */
    CM_CHAT_MISTRAL,  /* [INST] ... [/INST] (Mistral; Llama 2 templates without <<SYS>>) */
    CM_CHAT_GEMMA,
    CM_CHAT_PHI3,
    CM_CHAT_DEEPSEEK, /* DeepSeek V3 / R1: <｜User｜> <｜Assistant｜> */
    CM_CHAT_LLAMA2,         /* [INST] <<SYS>> ... <</SYS>> (Llama 2 chat) */
    CM_CHAT_DEEPSEEK2,      /* DeepSeek LLM / V2: "User: ... Assistant:" */
    CM_CHAT_DEEPSEEK_CODER, /* "### Instruction: ... ### Response:" */
} cm_chat_format;

typedef struct cm_chat_msg {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} cm_chat_msg;

/* Recognises the family from the template source (NULL or empty: unknown). */
cm_chat_format cm_chat_detect(const char *template_src);
const char *cm_chat_format_name(cm_chat_format f);
/* Parses a name as accepted by --chat-template ("llama3", "chatml", ...); CM_CHAT_UNKNOWN if none. */
cm_chat_format cm_chat_format_from_name(const char *name);

/* Renders messages into a malloc'd string (*out, caller frees). The BOS text
 * is not included: the tokenizer adds BOS. Returns CM_EINVAL with a message
 * for an unknown role or format. */
int cm_chat_render(cm_chat_format f, const cm_chat_msg *msgs, int n_msgs, bool add_generation_prompt, char **out);

#endif
