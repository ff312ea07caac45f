/* test_chat.c - chat template detection and rendering.
 *
 * Rendering is compared byte for byte with what each family's reference
 * template produces for the same messages (the outputs llama.cpp's template
 * tests expect where it has them). Detection runs on the real templates
 * under ../shared/testdata when present, and on short template fragments
 * written here that carry each family's markers. */
#include <cjson/cJSON.h>

#include "base/status.h"
#include "test.h"
#include "text/chat.h"

static const cm_chat_msg conv6[] = {
    {"system", "You are a helpful assistant"},
    {"user", "Hello"},
    {"assistant", "Hi there"},
    {"user", "Who are you"},
    {"assistant", "   I am an assistant   "},
    {"user", "Another question"},
};
static const cm_chat_msg conv_user[] = {{"user", "What is 2+2?"}};
static const cm_chat_msg conv_sys[] = {{"system", "Be brief."}, {"user", " Hi \n"}};

/* renders and compares; prints both on mismatch */
static void expect(cm_chat_format f, const cm_chat_msg *m, int n, bool gen, const char *want, int line) {
    char *got = NULL;
    int rc = cm_chat_render(f, m, n, gen, &got);
    if (rc != CM_OK) {
        fprintf(stderr, "line %d: %s: render failed: %s\n", line, cm_chat_format_name(f), cm_last_error(rc));
        t_cur_failed = 1;
        return;
    }
    if (strcmp(got, want)) {
        fprintf(stderr, "line %d: %s rendered\n[%s]\nexpected\n[%s]\n", line, cm_chat_format_name(f), got, want);
        t_cur_failed = 1;
    }
    free(got);
}
#define EXPECT(f, m, gen, want) expect(f, m, (int)(sizeof m / sizeof m[0]), gen, want, __LINE__)

#define DS_U "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_A "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

TEST(llama3) {
    EXPECT(CM_CHAT_LLAMA3, conv6, true,
           "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    EXPECT(CM_CHAT_LLAMA3, conv_user, true,
           "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    EXPECT(CM_CHAT_LLAMA3, conv_sys, false,
           "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
}

TEST(chatml) {
    EXPECT(CM_CHAT_CHATML, conv6, true,
           "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
           "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
           "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n"
           "<|im_start|>assistant\n");
    EXPECT(CM_CHAT_CHATML, conv_user, true, "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
    EXPECT(CM_CHAT_CHATML, conv_sys, false, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi \n<|im_end|>\n");
}

TEST(mistral) {
    EXPECT(CM_CHAT_MISTRAL, conv6, true,
           "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]"
           "   I am an assistant   </s>[INST] Another question [/INST]");
    EXPECT(CM_CHAT_MISTRAL, conv_user, true, "[INST] What is 2+2? [/INST]");
    EXPECT(CM_CHAT_MISTRAL, conv_sys, false, "[INST] Be brief.\n Hi \n [/INST]");
}

TEST(llama2) {
    EXPECT(CM_CHAT_LLAMA2, conv6, true,
           "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST] Hi there </s>"
           "<s>[INST] Who are you [/INST] I am an assistant </s><s>[INST] Another question [/INST]");
    EXPECT(CM_CHAT_LLAMA2, conv_user, true, "[INST] What is 2+2? [/INST]");
    EXPECT(CM_CHAT_LLAMA2, conv_sys, false, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi [/INST]");
}

TEST(gemma) {
    EXPECT(CM_CHAT_GEMMA, conv6, true,
           "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n"
           "<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n"
           "<start_of_turn>model\nI am an assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n"
           "<start_of_turn>model\n");
    EXPECT(CM_CHAT_GEMMA, conv_user, true, "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n");
    EXPECT(CM_CHAT_GEMMA, conv_sys, false, "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n");
}

TEST(phi3) {
    EXPECT(CM_CHAT_PHI3, conv6, true,
           "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n"
           "<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n"
           "<|user|>\nAnother question<|end|>\n<|assistant|>\n");
    EXPECT(CM_CHAT_PHI3, conv_user, true, "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n");
    EXPECT(CM_CHAT_PHI3, conv_sys, false, "<|system|>\nBe brief.<|end|>\n<|user|>\n Hi \n<|end|>\n");
}

TEST(deepseek) {
    EXPECT(CM_CHAT_DEEPSEEK, conv6, true,
           "You are a helpful assistant" DS_U "Hello" DS_A "Hi there" DS_EOS DS_U "Who are you" DS_A
           "   I am an assistant   " DS_EOS DS_U "Another question" DS_A);
    EXPECT(CM_CHAT_DEEPSEEK, conv_user, true, DS_U "What is 2+2?" DS_A);
    EXPECT(CM_CHAT_DEEPSEEK, conv_sys, false, "Be brief." DS_U " Hi \n");
    /* R1: an earlier answer's reasoning is dropped from the history; two
     * system messages are joined by a blank line */
    static const cm_chat_msg r1[] = {
        {"system", "A"},
        {"system", "B"},
        {"user", "q"},
        {"assistant", "<think>\nhmm\n</think>\n\nfour"},
        {"user", "q2"},
    };
    EXPECT(CM_CHAT_DEEPSEEK, r1, true, "A\n\nB" DS_U "q" DS_A "\n\nfour" DS_EOS DS_U "q2" DS_A);
}

TEST(deepseek2) {
    EXPECT(CM_CHAT_DEEPSEEK2, conv6, true,
           "You are a helpful assistant\n\nUser: Hello\n\nAssistant: Hi there" DS_EOS
           "User: Who are you\n\nAssistant:    I am an assistant   " DS_EOS "User: Another question\n\nAssistant:");
    EXPECT(CM_CHAT_DEEPSEEK2, conv_user, true, "User: What is 2+2?\n\nAssistant:");
    EXPECT(CM_CHAT_DEEPSEEK2, conv_sys, false, "Be brief.\n\nUser:  Hi \n\n\n");
}

TEST(deepseek_coder) {
    EXPECT(CM_CHAT_DEEPSEEK_CODER, conv6, true,
           "You are a helpful assistant### Instruction:\nHello\n### Response:\nHi there\n<|EOT|>\n"
           "### Instruction:\nWho are you\n### Response:\n   I am an assistant   \n<|EOT|>\n"
           "### Instruction:\nAnother question\n### Response:\n");
    EXPECT(CM_CHAT_DEEPSEEK_CODER, conv_user, true, "### Instruction:\nWhat is 2+2?\n### Response:\n");
    EXPECT(CM_CHAT_DEEPSEEK_CODER, conv_sys, false, "Be brief.### Instruction:\n Hi \n\n");
}

/* Interactive chat appends turns: what was rendered for the model to answer
 * (ending in the generation prompt) must stay a prefix once the answer is
 * added, so the KV cache of the earlier turns can be kept. */
TEST(prefix_stable) {
    const cm_chat_format fs[] = {CM_CHAT_LLAMA3, CM_CHAT_CHATML, CM_CHAT_MISTRAL, CM_CHAT_LLAMA2, CM_CHAT_GEMMA,
                                 CM_CHAT_PHI3,   CM_CHAT_DEEPSEEK, CM_CHAT_DEEPSEEK2, CM_CHAT_DEEPSEEK_CODER};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) {
        for (int n = 2; n <= 4; n += 2) { /* conv6[0..n) ends with a user turn, conv6[n] is an answer */
            char *a = NULL, *b = NULL;
            CHECK_OK(cm_chat_render(fs[i], conv6, n, true, &a));
            CHECK_OK(cm_chat_render(fs[i], conv6, n + 1, false, &b));
            if (a && b) CHECK_MSG(!strncmp(a, b, strlen(a)), "%s n=%d", cm_chat_format_name(fs[i]), n);
            free(a);
            free(b);
        }
    }
}

TEST(errors) {
    char *out = (char *)1;
    static const cm_chat_msg bad[] = {{"tool", "x"}};
    CHECK(cm_chat_render(CM_CHAT_CHATML, bad, 1, true, &out) == CM_EINVAL);
    CHECK(out == NULL);
    CHECK(strstr(cm_last_error(CM_EINVAL), "tool") != NULL);
    CHECK(cm_chat_render(CM_CHAT_UNKNOWN, conv_user, 1, true, &out) == CM_EINVAL);
    CHECK(out == NULL);
    /* no messages: only the generation prompt */
    CHECK_OK(cm_chat_render(CM_CHAT_CHATML, NULL, 0, true, &out));
    CHECK(out && !strcmp(out, "<|im_start|>assistant\n"));
    free(out);
}

TEST(names) {
    for (int f = CM_CHAT_LLAMA3; f <= CM_CHAT_DEEPSEEK_CODER; f++) {
        const char *n = cm_chat_format_name((cm_chat_format)f);
        CHECK(strcmp(n, "unknown") != 0);
        CHECK_MSG(cm_chat_format_from_name(n) == (cm_chat_format)f, "%s", n);
    }
    CHECK(cm_chat_format_from_name("qwen") == CM_CHAT_CHATML);
    CHECK(cm_chat_format_from_name("nonsense") == CM_CHAT_UNKNOWN);
    CHECK(cm_chat_format_from_name(NULL) == CM_CHAT_UNKNOWN);
    CHECK(!strcmp(cm_chat_format_name(CM_CHAT_UNKNOWN), "unknown"));
}

/* Fragments in each family's style, written for this test. */
TEST(detect_snippets) {
    CHECK(cm_chat_detect(NULL) == CM_CHAT_UNKNOWN);
    CHECK(cm_chat_detect("") == CM_CHAT_UNKNOWN);
    CHECK(cm_chat_detect("INVALID TEMPLATE") == CM_CHAT_UNKNOWN);
    CHECK(cm_chat_detect("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}") == CM_CHAT_UNKNOWN);
    CHECK(cm_chat_detect("chatml") == CM_CHAT_CHATML);
    CHECK(cm_chat_detect("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                         "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}") ==
          CM_CHAT_LLAMA3);
    CHECK(cm_chat_detect("{% for m in messages %}{{'<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n'}}"
                         "{% endfor %}") == CM_CHAT_CHATML);
    /* Phi-4 writes <|im_start|> too but lays turns out differently */
    CHECK(cm_chat_detect("{{'<|im_start|>user<|im_sep|>' + m.content + '<|im_end|>'}}") == CM_CHAT_UNKNOWN);
    CHECK(cm_chat_detect("{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
                         "{% else %}{{ m['content'] + eos_token }}{% endif %}") == CM_CHAT_MISTRAL);
    CHECK(cm_chat_detect("{% set c = '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + c %}{{ bos_token + '[INST] ' + "
                         "c.strip() + ' [/INST]' }}") == CM_CHAT_LLAMA2);
    CHECK(cm_chat_detect("{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}") ==
          CM_CHAT_GEMMA);
    CHECK(cm_chat_detect("{{'<|user|>' + '\\n' + m['content'] + '<|end|>' + '\\n' + '<|assistant|>' + '\\n'}}") ==
          CM_CHAT_PHI3);
    CHECK(cm_chat_detect("{{'" DS_U "' + m['content']}}{{'" DS_A "' + c + '" DS_EOS "'}}") == CM_CHAT_DEEPSEEK);
    CHECK(cm_chat_detect("{{'### Instruction:\\n' + m['content'] + '\\n'}}{{'### Response:\\n' + m['content'] + "
                         "'\\n<|EOT|>\\n'}}") == CM_CHAT_DEEPSEEK_CODER);
    CHECK(cm_chat_detect("{{ 'User: ' + m['content'] + '\\n\\n' }}{{ 'Assistant: ' + m['content'] + eos_token }}"
                         "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}") == CM_CHAT_DEEPSEEK2);
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b) b[n] = 0;
    fclose(f);
    return b;
}

/* tokenizer_config.json's chat_template of a real model */
static void detect_real(const char *file, cm_chat_format want) {
    const char *dir = test_datadir();
    if (!dir) TEST_SKIP("CELLM_TESTDATA not set: no real templates to detect");
    char path[1024];
    snprintf(path, sizeof path, "%s/hf-tokenizers/%s", dir, file);
    char *text = read_file(path);
    if (!text) TEST_SKIP("%s is absent", path);
    cJSON *j = cJSON_Parse(text);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
    CHECK_MSG(cJSON_IsString(t), "%s has no chat_template string", path);
    if (cJSON_IsString(t)) CHECK_MSG(cm_chat_detect(t->valuestring) == want, "%s: detected %s", file,
                                     cm_chat_format_name(cm_chat_detect(t->valuestring)));
    cJSON_Delete(j);
    free(text);
}

TEST(detect_llama3_real) { detect_real("llama3-tokenizer_config.json", CM_CHAT_LLAMA3); }
TEST(detect_qwen3_real) { detect_real("qwen3-tokenizer_config.json", CM_CHAT_CHATML); }

int main(void) {
    RUN(llama3);
    RUN(chatml);
    RUN(mistral);
    RUN(llama2);
    RUN(gemma);
    RUN(phi3);
    RUN(deepseek);
    RUN(deepseek2);
    RUN(deepseek_coder);
    RUN(prefix_stable);
    RUN(errors);
    RUN(names);
    RUN(detect_snippets);
    RUN(detect_llama3_real);
    RUN(detect_qwen3_real);
    return test_summary();
}
