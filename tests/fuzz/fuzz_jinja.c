/* libFuzzer target: arbitrary bytes as a chat template (they come from
 * checkpoints nobody vetted), compiled and rendered with a conversation that
 * has tools, tool calls and several turns. Nothing may crash, hang or leak:
 * every failure is an error return with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/engine_jinja.h"

static const char CTX[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
    " {\"role\": \"user\", \"content\": \"Weather in Paris? {{ x }}\"},"
    " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\": \"function\","
    " \"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}]},"
    " {\"role\": \"tool\", \"content\": \"18C\"}, {\"role\": \"user\", \"content\": \"é中😀\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\","
    " \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}}}],"
    " \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *ctx;
    if (!ctx) {
        json_error_t je;
        ctx = json_loads(CTX, 0, &je);
        if (!ctx)
            abort();
    }
    char *tmpl = malloc(size + 1);
    if (!tmpl)
        return 0;
    memcpy(tmpl, data, size);
    tmpl[size] = 0;
    struct moe_jinja *t = NULL;
    char err[256] = "", *out = NULL;
    struct moe_jinja_opts opts = {.max_output = 1 << 20, .max_work = 1 << 24};
    if (moe_jinja_compile(tmpl, &t, err, sizeof(err)) == 0) {
        if (moe_jinja_render_compiled(t, ctx, &opts, &out, err, sizeof(err)) != 0 && !err[0])
            abort(); /* a failure says why */
        free(out);
        moe_jinja_free(t);
    } else if (!err[0]) {
        abort();
    }
    free(tmpl);
    return 0;
}
