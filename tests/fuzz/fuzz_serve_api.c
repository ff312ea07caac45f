/* fuzz_serve_api.c - fuzz target for the OpenAI request parser: any body,
 * for both endpoints, must parse or give an OpenAI error with a 4xx status;
 * an error must render as JSON. Seeds are well-formed requests to mutate. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api.h"

static const char *const g_seeds[] = {
    "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
    "{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":8,\"temperature\":0.5,"
    "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"stop\":[\"a\",\"bc\"]}",
    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}],"
    "\"logprobs\":true,\"top_logprobs\":3,\"seed\":42,\"top_p\":0.9}",
    "{\"prompt\":\"once upon\",\"max_tokens\":4,\"stop\":\"\\n\",\"presence_penalty\":1.5,"
    "\"frequency_penalty\":-0.5,\"logprobs\":2}",
    "{\"prompt\":[1,2,3,4],\"max_completion_tokens\":2,\"stream\":false}",
};

size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap) {
    if (i < 0 || i >= (int)(sizeof g_seeds / sizeof g_seeds[0])) return 0;
    size_t n = strlen(g_seeds[i]);
    if (n > cap) n = cap;
    memcpy(buf, g_seeds[i], n);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int kind = CM_API_CHAT; kind <= CM_API_COMPLETION; kind++) {
        cm_api_req req;
        cm_api_error err;
        memset(&req, 0, sizeof req);
        memset(&err, 0, sizeof err);
        int rc = cm_api_parse((const char *)data, size, (cm_api_kind)kind, &req, &err);
        if (rc != 0) {
            if (err.http < 400 || err.http > 499) abort();
            char *json = cm_api_error_json(&err);
            if (!json || json[0] != '{') abort();
            free(json);
        }
        cm_api_req_free(&req);
    }
    return 0;
}
