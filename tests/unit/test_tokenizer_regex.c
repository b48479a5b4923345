/* The Oniguruma -> PCRE2 rewrite of pre-tokenizer regexes: every Unicode
 * class against the code points Oniguruma matches (as Hugging Face
 * tokenizers 0.23 runs it: tests/data/tokenizers/regex_classes.json, written
 * by tests/reference/make_unicode_table.py), the Ruby-syntax differences,
 * and the constructs refused by name. */
#include "tests/unit/test.h"

#include <errno.h>
#include <jansson.h>

#include "common/common.h"
#include "tokenizer/tokenizer_int.h"

static pcre2_code *compile(const char *pattern)
{
    pcre2_code *re = NULL;
    if (moe_tok_compile("test", pattern, strlen(pattern), false, &re))
        fail_msg("%s: %s", pattern, moe_err_msg());
    return re;
}

/* Does re match exactly the one character cp? */
static bool matches_cp(const pcre2_code *re, pcre2_match_data *md, uint32_t cp)
{
    char s[4];
    size_t n = moe_utf8_put(cp, s);
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, 0, PCRE2_ANCHORED, md, NULL);
    return rc >= 0 && pcre2_get_ovector_pointer(md)[1] == n;
}

static bool in_ranges(const json_t *flat, uint32_t cp)
{
    size_t n = json_array_size(flat), lo = 0, hi = n / 2;
    while (lo < hi) { /* the first range whose last code point is >= cp */
        size_t mid = (lo + hi) / 2;
        if ((uint32_t)json_integer_value(json_array_get(flat, 2 * mid + 1)) < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n / 2 && (uint32_t)json_integer_value(json_array_get(flat, 2 * lo)) <= cp;
}

/* Every code point below U+3400, both sides of every range end, and a
 * stride over the rest: a whole sweep of 1.1M code points per class is
 * what tests/reference/make_unicode_table.py's author ran by hand. */
static size_t check_class(const char *pattern, const json_t *flat, bool complement)
{
    pcre2_code *re = compile(pattern);
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    size_t bad = 0, checked = 0;
    for (uint32_t c = 0; c < 0x110000; c++) {
        if ((c >= 0x3400 && c % 61) || (c >= 0xd800 && c <= 0xdfff))
            continue;
        bool want = in_ranges(flat, c) != complement;
        checked++;
        if (matches_cp(re, md, c) != want && bad++ < 5)
            print_message("%s: U+%04X: Oniguruma %d, moed %d\n", pattern, c, want, !want);
    }
    for (size_t k = 0; k < json_array_size(flat); k++) {
        uint32_t e = (uint32_t)json_integer_value(json_array_get(flat, k));
        uint32_t around[2] = { e - 1, e + 1 };
        for (size_t i = 0; i < 3; i++) {
            uint32_t c = i < 2 ? around[i] : e;
            if (c >= 0x110000 || (c >= 0xd800 && c <= 0xdfff))
                continue;
            bool want = in_ranges(flat, c) != complement;
            checked++;
            if (matches_cp(re, md, c) != want && bad++ < 5)
                print_message("%s: U+%04X: Oniguruma %d, moed %d\n", pattern, c, want, !want);
        }
    }
    assert_true(checked > 0x3000);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return bad;
}

static void test_unicode_classes(void **state)
{
    (void)state;
    json_error_t err;
    json_t *j = json_load_file(moe_test_path("tests/data/tokenizers/regex_classes.json"), 0, &err);
    if (!j)
        fail_msg("regex_classes.json: %s", err.text);
    const json_t *classes = json_object_get(j, "classes");
    const json_t *complements = json_object_get(j, "complements");
    assert_true(json_object_size(classes) >= 25);
    assert_true(json_object_size(complements) >= 5);
    size_t bad = 0, n = 0;
    const char *pattern;
    const json_t *v;
    json_object_foreach((json_t *)classes, pattern, v) {
        bad += check_class(pattern, v, false);
        n++;
    }
    json_object_foreach((json_t *)complements, pattern, v) {
        bad += check_class(pattern, json_object_get(classes, json_string_value(v)), true);
        n++;
    }
    print_message("%zu Oniguruma classes checked, %zu code points differ\n", n, bad);
    assert_int_equal(bad, 0);
    json_decref(j);
}

/* The pieces a one-step Isolated split makes of text: matches and the text
 * between them, "|"-joined (what Hugging Face's Split(pattern, Isolated)
 * gives; expectations below were printed by tokenizers 0.23.3). */
static void expect_split(const char *pattern, const char *text, const char *want)
{
    pcre2_code *re = compile(pattern);
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    char got[512];
    size_t o = 0, prev = 0, at = 0, n = strlen(text);
    got[0] = 0;
    while (at <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)text, n, at, 0, md, NULL);
        if (rc < 0)
            break;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) { /* this helper is for patterns without empty matches */
            at = ov[0] + 1;
            continue;
        }
        if (ov[0] > prev)
            o += (size_t)snprintf(got + o, sizeof(got) - o, "%s%.*s", o ? "|" : "",
                                  (int)(ov[0] - prev), text + prev);
        o += (size_t)snprintf(got + o, sizeof(got) - o, "%s%.*s", o ? "|" : "",
                              (int)(ov[1] - ov[0]), text + ov[0]);
        prev = at = ov[1];
    }
    if (prev < n)
        snprintf(got + o, sizeof(got) - o, "%s%s", o ? "|" : "", text + prev);
    if (strcmp(got, want))
        fail_msg("/%s/ on \"%s\": got \"%s\", want \"%s\"", pattern, text, got, want);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
}

static void test_ruby_syntax(void **state)
{
    (void)state;
    expect_split("\\s+$", "a  \nb  ", "a|  |\nb|  ");           /* $: end of a line */
    expect_split("^a", "aa\nab", "a|a\n|a|b");                   /* ^: start of a line */
    expect_split("a.b", "a\nb a.b", "a\nb |a.b");                /* . excludes \n */
    expect_split("(?m)a.b", "a\nb a.b", "a\nb| |a.b");           /* Ruby's m: dotall */
    expect_split("\\v", "a\x0b\nb", "a|\x0b|\nb");               /* \v: VT only */
    expect_split("\\h+", "afg1 ", "af|g|1| ");                   /* \h: hex digit */
    expect_split("xa{,2}", "xaaa{,2}", "xaa|a{,2}");             /* {,n} = {0,n} */
    expect_split("\\uFF5C", "a\xef\xbd\x9c" "b", "a|\xef\xbd\x9c|b");
    expect_split("\\s", "a\xe1\xa0\x8e" "b\xc2\x85" "c", "a\xe1\xa0\x8e" "b|\xc2\x85|c");
    expect_split("\\bx", "x x_x \xc3\xa9x", "x| |x|_x \xc3\xa9x");
    expect_split("[\\w&&[^a]]+", "abcab", "a|bc|a|b");
    expect_split("[a-c[x-z]]+", "abxyq", "abxy|q");
    expect_split("(?i)'S", "'s '\xc5\xbf", "'s| |'\xc5\xbf");     /* ſ folds to s */
    expect_split("\\p{^L}", "a1", "a|1");
    expect_split("'(?i:[sdmt]|ll|ve|re)", "'S '\xc5\xbf 'LL", "'S| |'\xc5\xbf| |'LL"); /* Ling */
    expect_split("(?i)[^a-z]", "\xc5\xbf" "a\xe2\x84\xaa" "1", "\xc5\xbf" "a\xe2\x84\xaa|1");
    expect_split("(?#a comment)b", "abc", "a|b|c");
    /* the qwen2 split, as Hugging Face's Split gives it */
    expect_split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
                 "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
                 "I'LL be 12 !!\n\n  x", "I|'LL| be| |1|2| !!\n\n| | x");
}

static void expect_refused(const char *pattern, const char *why)
{
    pcre2_code *re = (pcre2_code *)1;
    moe_err_clear();
    int rc = moe_tok_compile("refuse.json", pattern, strlen(pattern), false, &re);
    if (rc == 0)
        fail_msg("/%s/ compiled; expected it refused (%s)", pattern, why);
    assert_int_equal(rc, -EINVAL);
    assert_null(re);
    const char *msg = moe_err_msg();
    if (!strstr(msg, why) || !strstr(msg, "refuse.json") || !strstr(msg, pattern))
        fail_msg("message \"%s\" lacks \"%s\", the file or the pattern", msg, why);
}

static void test_refused(void **state)
{
    (void)state;
    expect_refused("[[:alpha:]]+", "POSIX bracket");
    expect_refused("(?~abc)", "unknown group");
    expect_refused("\\g<1>", "no PCRE2 equivalent");
    expect_refused("a{1,2}+", "{n,m}+");
    expect_refused("(?i:ss)", "multi-character case fold");
    expect_refused("(?i)\xc3\x9f", "non-ASCII literal under (?i)");
    expect_refused("(?i)[\\w]", "\\w or \\W under (?i)");
    expect_refused("(?i:\\p{Lu})", "property under (?i)");
    expect_refused("\\p{Kawi}", "no table for");
    expect_refused("\\p{Cn}", "no table for");
    expect_refused("[a", "unterminated [");
    expect_refused("(a", "unterminated (");
    expect_refused("a)", "unmatched )");
    expect_refused("[]", "unterminated [");
    expect_refused("\\q", "no PCRE2 equivalent");
    expect_refused("ab\xff", "invalid UTF-8");
    /* what PCRE2 itself refuses is named too */
    expect_refused("a**", "quantifier does not follow");
}

/* a file's pattern nesting classes 100000 deep is refused, not a stack
 * overflow (each [ level recurses, as groups would) */
static void test_nesting_bounded(void **state)
{
    (void)state;
    enum { N = 100000 };
    char *p = malloc(2 * N + 2);
    assert_non_null(p);
    for (int pass = 0; pass < 2; pass++) {
        size_t n = 0;
        for (int i = 0; i < N; i++)
            p[n++] = pass ? '(' : '[';
        p[n++] = 'a';
        for (int i = 0; i < N; i++)
            p[n++] = pass ? ')' : ']';
        pcre2_code *re = NULL;
        assert_true(moe_tok_compile("deep.json", p, n, false, &re) < 0);
        assert_non_null(strstr(moe_err_msg(), pass ? "groups nested too deep"
                                                   : "classes nested too deep"));
    }
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unicode_classes),
        cmocka_unit_test(test_ruby_syntax),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_nesting_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
