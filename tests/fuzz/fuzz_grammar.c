/* libFuzzer target: arbitrary bytes as a JSON Schema (when they parse as
 * JSON) or as GBNF text, compiled; a grammar that compiles is then fed the
 * same bytes as text to match. Nothing may crash, loop or leak; a schema's
 * grammar must compile (what the schema compiler writes is valid GBNF) and a
 * refusal must say why. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/common.h"
#include "engine/engine_grammar.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    json_error_t je;
    json_t *schema = json_loadb(text, size, JSON_DECODE_ANY, &je);
    char *gbnf = NULL;
    if (schema) {
        if (moe_schema_to_gbnf(schema, NULL, NULL, &gbnf) < 0 && !moe_err_msg()[0])
            abort();
        json_decref(schema);
    }
    struct moe_grammar *g = NULL;
    int rc = moe_grammar_compile(gbnf ? gbnf : text, &g);
    if (rc < 0 && (gbnf || !moe_err_msg()[0]))
        abort(); /* the schema compiler wrote a grammar that does not compile */
    struct moe_grammar_state *st = NULL;
    if (g && moe_grammar_state_new(g, &st) == 0) {
        for (size_t i = 0; i < size && i < 256; i++) /* a byte at a time, as tokens come */
            if (moe_grammar_accepts(st, text + i, 1))
                moe_grammar_advance(st, text + i, 1);
        (void)moe_grammar_can_end(st);
        moe_grammar_state_free(st);
    }
    moe_grammar_unref(g);
    free(gbnf);
    free(text);
    return 0;
}
