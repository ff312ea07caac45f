/* chat.c - chat templates without a Jinja engine.
 *
 * A GGUF carries its chat template as Jinja source (tokenizer.chat_template).
 * Rather than interpret Jinja, we recognise which family a template belongs
 * to by markers only that family writes, and render messages with a small
 * hand-written function per family that produces, byte for byte, what the
 * family's reference template produces for plain system/user/assistant
 * messages (no tools, no images).
 *
 * Invariants:
 *  - The rendered text never starts with the BOS text: the tokenizer adds BOS.
 *    Templates that repeat BOS inside the history (Llama 2) keep those inner
 *    copies, because the model saw them in training.
 *  - Whitespace is exact: where a family's template trims message content
 *    (Llama 3, Gemma, Llama 2) we trim; where it does not, we do not.
 *  - Rendering allocates one growing buffer; on any failure nothing leaks and
 *    *out is NULL. */
#include "text/chat.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"

/* ---- a growing string ---- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int err; /* sticky: once an append fails every later one is a no-op */
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
    if (b->err) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->err = CM_ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_put(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

/* Python's str.strip() for the ASCII whitespace Jinja's `trim` removes. */
static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static void sb_put_trimmed(sbuf *b, const char *s) {
    size_t n = strlen(s), i = 0;
    while (i < n && is_ws(s[i])) i++;
    while (n > i && is_ws(s[n - 1])) n--;
    sb_putn(b, s + i, n - i);
}

/* ---- names and detection ---- */

static const struct {
    cm_chat_format f;
    const char *name;
} g_names[] = {
    {CM_CHAT_LLAMA3, "llama3"},
    {CM_CHAT_CHATML, "chatml"},
    {CM_CHAT_MISTRAL, "mistral"},
    {CM_CHAT_GEMMA, "gemma"},
    {CM_CHAT_PHI3, "phi3"},
    {CM_CHAT_DEEPSEEK, "deepseek"},
    {CM_CHAT_LLAMA2, "llama2"},
    {CM_CHAT_DEEPSEEK2, "deepseek2"},
    {CM_CHAT_DEEPSEEK_CODER, "deepseek-coder"},
};

/* Other spellings people type for the same families. */
static const struct {
    cm_chat_format f;
    const char *name;
} g_aliases[] = {
    {CM_CHAT_CHATML, "qwen"},    {CM_CHAT_CHATML, "qwen2"},      {CM_CHAT_CHATML, "qwen3"},
    {CM_CHAT_LLAMA3, "llama-3"}, {CM_CHAT_DEEPSEEK, "deepseek3"}, {CM_CHAT_DEEPSEEK, "deepseek-r1"},
    {CM_CHAT_PHI3, "phi-3"},     {CM_CHAT_LLAMA2, "llama-2"},
};

const char *cm_chat_format_name(cm_chat_format f) {
    for (size_t i = 0; i < sizeof g_names / sizeof g_names[0]; i++)
        if (g_names[i].f == f) return g_names[i].name;
    return "unknown";
}

cm_chat_format cm_chat_format_from_name(const char *name) {
    if (!name) return CM_CHAT_UNKNOWN;
    for (size_t i = 0; i < sizeof g_names / sizeof g_names[0]; i++)
        if (!strcmp(g_names[i].name, name)) return g_names[i].f;
    for (size_t i = 0; i < sizeof g_aliases / sizeof g_aliases[0]; i++)
        if (!strcmp(g_aliases[i].name, name)) return g_aliases[i].f;
    return CM_CHAT_UNKNOWN;
}

static int has(const char *s, const char *marker) { return strstr(s, marker) != NULL; }

cm_chat_format cm_chat_detect(const char *src) {
    if (!src || !*src) return CM_CHAT_UNKNOWN;
    /* Some GGUF writers store a bare family name instead of Jinja. */
    cm_chat_format named = cm_chat_format_from_name(src);
    if (named != CM_CHAT_UNKNOWN) return named;

    /* Order matters: the most specific markers first. Phi-4 and SmolVLM use
     * <|im_start|> with a different layout, so they are not ChatML; they are
     * left unknown (and the user is told) rather than rendered wrongly. */
    if (has(src, "<|start_header_id|>") && has(src, "<|end_header_id|>")) return CM_CHAT_LLAMA3;
    if (has(src, "<|im_start|>")) {
        if (has(src, "<|im_sep|>") || has(src, "<end_of_utterance>")) return CM_CHAT_UNKNOWN;
        return CM_CHAT_CHATML;
    }
    if (has(src, "<start_of_turn>")) return CM_CHAT_GEMMA;
    if (has(src, "[INST]")) return has(src, "<<SYS>>") ? CM_CHAT_LLAMA2 : CM_CHAT_MISTRAL;
    if (has(src, "<|end|>") && (has(src, "<|user|>") || has(src, "<|assistant|>"))) return CM_CHAT_PHI3;
    /* DeepSeek's full-width bars: U+FF5C around the role names. */
    if (has(src, "<\xef\xbd\x9cUser\xef\xbd\x9c>") || has(src, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"))
        return CM_CHAT_DEEPSEEK;
    if (has(src, "### Instruction")) return CM_CHAT_DEEPSEEK_CODER;
    if (has(src, "User: ") && has(src, "Assistant:")) return CM_CHAT_DEEPSEEK2;
    return CM_CHAT_UNKNOWN;
}

/* ---- rendering, one function per family ---- */

static int is_role(const cm_chat_msg *m, const char *r) { return !strcmp(m->role, r); }

/* <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT|trim<|eot_id|> */
static void render_llama3(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    for (int i = 0; i < n; i++) {
        sb_put(b, "<|start_header_id|>");
        sb_put(b, m[i].role);
        sb_put(b, "<|end_header_id|>\n\n");
        sb_put_trimmed(b, m[i].content);
        sb_put(b, "<|eot_id|>");
    }
    if (gen) sb_put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* <|im_start|>ROLE\nCONTENT<|im_end|>\n */
static void render_chatml(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    for (int i = 0; i < n; i++) {
        sb_put(b, "<|im_start|>");
        sb_put(b, m[i].role);
        sb_put(b, "\n");
        sb_put(b, m[i].content);
        sb_put(b, "<|im_end|>\n");
    }
    if (gen) sb_put(b, "<|im_start|>assistant\n");
}

/* Mistral v0.1/v0.2: "[INST] USER [/INST]ASSISTANT</s>". Those templates have
 * no system role; as llama.cpp does, a system message goes at the start of the
 * next user turn, followed by a newline. The prompt ends with "[/INST]": there
 * is no separate generation prompt. */
static void render_mistral(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    (void)gen;
    bool in_turn = false;
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "assistant")) {
            sb_put(b, m[i].content);
            sb_put(b, "</s>");
            in_turn = false;
            continue;
        }
        if (!in_turn) sb_put(b, "[INST] ");
        in_turn = true;
        sb_put(b, m[i].content);
        if (is_role(&m[i], "system")) {
            sb_put(b, "\n");
        } else {
            sb_put(b, " [/INST]");
            in_turn = false;
        }
    }
    if (in_turn) sb_put(b, " [/INST]"); /* a trailing system message still closes its turn */
}

/* Llama 2 chat (Meta's template): the leading system message is wrapped in
 * <<SYS>> and joined to the first user message; each later user turn starts
 * with the BOS text; content is stripped; assistant turns are " TEXT </s>". */
static void render_llama2(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    (void)gen;
    const char *sys = NULL;
    int start = 0;
    if (n > 0 && is_role(&m[0], "system")) sys = m[0].content, start = 1;
    bool first = true;
    for (int i = start; i < n; i++) {
        if (is_role(&m[i], "user")) {
            if (i > start) sb_put(b, "<s>");
            sb_put(b, "[INST] ");
            if (first && sys) {
                /* strip() applies to the whole "<<SYS>>..." + content string:
                 * it starts with '<', so only the end is affected. */
                sbuf t = {0};
                sb_put(&t, "<<SYS>>\n");
                sb_put(&t, sys);
                sb_put(&t, "\n<</SYS>>\n\n");
                sb_put(&t, m[i].content);
                if (t.err) b->err = t.err;
                else sb_put_trimmed(b, t.p);
                free(t.p);
            } else {
                sb_put_trimmed(b, m[i].content);
            }
            sb_put(b, " [/INST]");
        } else if (is_role(&m[i], "assistant")) {
            sb_put(b, " ");
            sb_put_trimmed(b, m[i].content);
            sb_put(b, " </s>");
        }
        /* later system messages: Meta's template ignores them */
        first = false;
    }
    if (first && sys) { /* a system message alone still reaches the model */
        sb_put(b, "[INST] <<SYS>>\n");
        sb_put(b, sys);
        sb_put(b, "\n<</SYS>>\n\n [/INST]");
    }
}

/* Gemma: roles user and model; no system role, so the system text goes at the
 * start of the next user turn followed by a blank line; content trimmed. */
static void render_gemma(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    sbuf sys = {0};
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            if (sys.n) sb_put(&sys, "\n\n");
            sb_put(&sys, m[i].content);
            continue;
        }
        bool model = is_role(&m[i], "assistant");
        sb_put(b, model ? "<start_of_turn>model\n" : "<start_of_turn>user\n");
        if (!model && sys.n) {
            sb_putn(b, sys.p, sys.n);
            sb_put(b, "\n\n");
            sys.n = 0;
        }
        sb_put_trimmed(b, m[i].content);
        sb_put(b, "<end_of_turn>\n");
    }
    if (sys.n) { /* no user turn followed: give the system text its own */
        sb_put(b, "<start_of_turn>user\n");
        sb_putn(b, sys.p, sys.n);
        sb_put(b, "<end_of_turn>\n");
    }
    if (sys.err) b->err = sys.err;
    free(sys.p);
    if (gen) sb_put(b, "<start_of_turn>model\n");
}

/* Phi-3: <|ROLE|>\nCONTENT<|end|>\n */
static void render_phi3(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    for (int i = 0; i < n; i++) {
        sb_put(b, "<|");
        sb_put(b, m[i].role);
        sb_put(b, "|>\n");
        sb_put(b, m[i].content);
        sb_put(b, "<|end|>\n");
    }
    if (gen) sb_put(b, "<|assistant|>\n");
}

#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

/* DeepSeek V3 / R1: all system messages first (joined by a blank line, with
 * nothing between them and the first turn), then <｜User｜>TEXT and
 * <｜Assistant｜>TEXT<｜end▁of▁sentence｜>. R1's template drops an earlier
 * answer's reasoning (everything up to </think>) from the history. */
static void render_deepseek(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    bool first_sys = true;
    for (int i = 0; i < n; i++) {
        if (!is_role(&m[i], "system")) continue;
        if (!first_sys) sb_put(b, "\n\n");
        sb_put(b, m[i].content);
        first_sys = false;
    }
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            sb_put(b, DS_USER);
            sb_put(b, m[i].content);
        } else if (is_role(&m[i], "assistant")) {
            const char *c = m[i].content, *t;
            while ((t = strstr(c, "</think>")) != NULL) c = t + strlen("</think>");
            sb_put(b, DS_ASSISTANT);
            sb_put(b, c);
            sb_put(b, DS_EOS);
        }
    }
    if (gen) sb_put(b, DS_ASSISTANT);
}

/* DeepSeek LLM / V2: "User: TEXT\n\nAssistant: TEXT<｜end▁of▁sentence｜>". */
static void render_deepseek2(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sb_put(b, m[i].content);
            sb_put(b, "\n\n");
        } else if (is_role(&m[i], "user")) {
            sb_put(b, "User: ");
            sb_put(b, m[i].content);
            sb_put(b, "\n\n");
        } else {
            sb_put(b, "Assistant: ");
            sb_put(b, m[i].content);
            sb_put(b, DS_EOS);
        }
    }
    if (gen) sb_put(b, "Assistant:");
}

/* DeepSeek Coder instruct. Its template inserts a long default system prompt
 * when none is given; we do not (pass --system to get one). */
static void render_deepseek_coder(sbuf *b, const cm_chat_msg *m, int n, bool gen) {
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sb_put(b, m[i].content);
        } else if (is_role(&m[i], "user")) {
            sb_put(b, "### Instruction:\n");
            sb_put(b, m[i].content);
            sb_put(b, "\n");
        } else {
            sb_put(b, "### Response:\n");
            sb_put(b, m[i].content);
            sb_put(b, "\n<|EOT|>\n");
        }
    }
    if (gen) sb_put(b, "### Response:\n");
}

int cm_chat_render(cm_chat_format f, const cm_chat_msg *msgs, int n_msgs, bool add_generation_prompt, char **out) {
    *out = NULL;
    if (n_msgs < 0 || (n_msgs > 0 && !msgs)) return cm_errorf(CM_EINVAL, "chat: %d messages", n_msgs);
    for (int i = 0; i < n_msgs; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return cm_errorf(CM_EINVAL, "chat: message %d has no %s", i, msgs[i].role ? "content" : "role");
        if (strcmp(msgs[i].role, "system") && strcmp(msgs[i].role, "user") && strcmp(msgs[i].role, "assistant"))
            return cm_errorf(CM_EINVAL, "chat: message %d has role '%s'; expected system, user or assistant", i,
                             msgs[i].role);
    }
    sbuf b = {0};
    sb_put(&b, ""); /* an empty conversation still renders to "" rather than NULL */
    switch (f) {
    case CM_CHAT_LLAMA3: render_llama3(&b, msgs, n_msgs, add_generation_prompt); break;
    case CM_CHAT_CHATML: render_chatml(&b, msgs, n_msgs, add_generation_prompt); break;
    case CM_CHAT_MISTRAL: render_mistral(&b, msgs, n_msgs, add_generation_prompt); break;
    case CM_CHAT_LLAMA2: render_llama2(&b, msgs, n_msgs, add_generation_prompt); break;
    case CM_CHAT_GEMMA: render_gemma(&b, msgs, n_msgs, add_generation_prompt); break;
    case CM_CHAT_PHI3: render_phi3(&b, msgs, n_msgs, add_generation_prompt); break;
    case CM_CHAT_DEEPSEEK: render_deepseek(&b, msgs, n_msgs, add_generation_prompt); break;
    case CM_CHAT_DEEPSEEK2: render_deepseek2(&b, msgs, n_msgs, add_generation_prompt); break;
    case CM_CHAT_DEEPSEEK_CODER: render_deepseek_coder(&b, msgs, n_msgs, add_generation_prompt); break;
    default:
        free(b.p);
        return cm_errorf(CM_EINVAL, "chat: unknown template format %d", (int)f);
    }
    if (b.err) {
        free(b.p);
        return cm_errorf(CM_ENOMEM, "chat: out of memory rendering %d messages", n_msgs);
    }
    *out = b.p;
    return CM_OK;
}
