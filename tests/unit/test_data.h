/* Tests that read vectors from tests/data: a JSON file or a text file by its
 * path from the repository root (the test fails naming the file when it
 * cannot be read), and a string member of a JSON object. */
#ifndef MOE_TEST_DATA_H
#define MOE_TEST_DATA_H

#include <jansson.h>

#include "common/common.h"

static __attribute__((unused)) json_t *moe_test_load_json(const char *rel)
{
    json_error_t jerr;
    json_t *j = json_load_file(moe_test_path(rel), 0, &jerr);
    if (!j)
        fail_msg("%s:%d: %s", rel, jerr.line, jerr.text);
    return j;
}

static __attribute__((unused)) char *moe_test_load_text(const char *rel)
{
    char *text = NULL;
    size_t len;
    if (moe_read_text_file(moe_test_path(rel), &text, &len))
        fail_msg("%s: %s", rel, moe_err_msg());
    return text;
}

/* o[key] when it is a string, else NULL */
static __attribute__((unused)) const char *moe_test_str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

#endif
