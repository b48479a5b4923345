/* The NFC normalizer against Hugging Face's: the strings of
 * tests/data/tokenizers/nfc_cases.json (random runs of combining marks,
 * Hangul jamo and composable pairs) and their NFC as tokenizers 0.23 gives
 * it, written by tests/reference/make_unicode_table.py; and the quick check. */
#include "tests/unit/test.h"

#include <jansson.h>

#include "common/common.h"
#include "tokenizer/tokenizer_int.h"

static void test_nfc_cases(void **state)
{
    (void)state;
    json_error_t err;
    json_t *j = json_load_file(moe_test_path("tests/data/tokenizers/nfc_cases.json"), 0, &err);
    if (!j)
        fail_msg("nfc_cases.json: %s", err.text);
    const json_t *cases = json_object_get(j, "cases");
    assert_true(json_array_size(cases) >= 300);
    char *out = NULL;
    uint32_t *cps = NULL;
    size_t cap = 0, cps_cap = 0, bad = 0, changed = 0, i;
    const json_t *c;
    json_array_foreach(cases, i, c) {
        const json_t *in = json_array_get(c, 0), *want = json_array_get(c, 1);
        size_t n;
        assert_int_equal(moe_tok_nfc(json_string_value(in), json_string_length(in), &out, &cap,
                                     &n, &cps, &cps_cap), 0);
        bool same = n == json_string_length(want) && !memcmp(out, json_string_value(want), n);
        if (!same && bad++ < 5)
            print_message("case %zu: NFC differs from Hugging Face's\n", i);
        /* the quick check never calls text NFC that is not */
        bool unchanged = json_string_length(in) == json_string_length(want) &&
                         !memcmp(json_string_value(in), json_string_value(want), n);
        changed += !unchanged;
        if (!unchanged && moe_tok_is_nfc(json_string_value(in), json_string_length(in)) &&
            bad++ < 5)
            print_message("case %zu: the quick check passed text that changes\n", i);
        /* NFC text is its own NFC (the quick check may still say "maybe":
         * U+0301 after a letter it does not compose with is NFC) */
        size_t n2;
        assert_int_equal(moe_tok_nfc(json_string_value(want), json_string_length(want), &out,
                                     &cap, &n2, &cps, &cps_cap), 0);
        assert_int_equal(n2, json_string_length(want));
        assert_memory_equal(out, json_string_value(want), n2);
    }
    print_message("%zu NFC cases (%zu change), %zu differ\n", json_array_size(cases), changed,
                  bad);
    assert_true(changed > 100);
    assert_int_equal(bad, 0);
    free(out);
    free(cps);
    json_decref(j);
}

static void expect_nfc(const char *in, const char *want)
{
    char *out = NULL;
    uint32_t *cps = NULL;
    size_t cap = 0, cps_cap = 0, n;
    assert_int_equal(moe_tok_nfc(in, strlen(in), &out, &cap, &n, &cps, &cps_cap), 0);
    if (n != strlen(want) || memcmp(out, want, n))
        fail_msg("NFC(\"%s\") = \"%.*s\", want \"%s\"", in, (int)n, out, want);
    free(out);
    free(cps);
}

static void test_nfc_fixed(void **state)
{
    (void)state;
    expect_nfc("cafe\xcc\x81", "caf\xc3\xa9");                   /* e + U+0301 -> é */
    expect_nfc("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81"); /* jamo -> 각 */
    expect_nfc("\xe2\x84\xa6", "\xce\xa9");                      /* Ω ohm sign -> omega */
    expect_nfc("a\xcc\x81\xcc\xa3", "\xe1\xba\xa1\xcc\x81");       /* reordered, then ạ + U+0301 */
    expect_nfc("\xe0\xa5\x98", "\xe0\xa4\x95\xe0\xa4\xbc");       /* क़: an exclusion */
    expect_nfc("x\xff" "e\xcc\x81", "x\xff" "\xc3\xa9");         /* a stray byte stays */
    expect_nfc("\xf0\x91\xa4\xb8", "\xf0\x91\xa4\xb8"); /* U+11938: Hugging Face keeps it */
    assert_true(moe_tok_is_nfc("plain ASCII", 11));
    assert_true(moe_tok_is_nfc("\xe6\x88\x91\xe6\x83\xb3 caf\xc3\xa9", 13));
    assert_false(moe_tok_is_nfc("cafe\xcc\x81", 6));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nfc_cases),
        cmocka_unit_test(test_nfc_fixed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
