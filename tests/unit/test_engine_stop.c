/* Stop strings over streamed text: matches in one piece and across pieces,
 * overlapping prefixes, flush, multibyte text, validation, and a randomised
 * comparison with a plain search over the whole text. */
#include "tests/unit/test.h"

#include "common/common.h"
#include "engine/engine.h"

#include <errno.h>

/* ---- helpers ------------------------------------------------------------- */

struct out {
    char text[8192];
    size_t len;
    bool stopped;
};

static struct moe_stop *mk(const char *const *stops, size_t n)
{
    struct moe_stop *st = NULL;
    if (moe_stop_create(stops, n, &st))
        fail_msg("moe_stop_create: %s", moe_err_msg());
    return st;
}

static void take(struct out *o, const char *emit, size_t n)
{
    assert_true(o->len + n <= sizeof(o->text));
    memcpy(o->text + o->len, emit, n);
    o->len += n;
}

/* pushes s, checks that exactly `want` is emitted and the return value */
static void push_expect(struct moe_stop *st, const char *s, const char *want, bool stop)
{
    const char *emit = NULL;
    size_t n = 999;
    bool r = moe_stop_push(st, s, strlen(s), &emit, &n);
    assert_int_equal(r, stop);
    assert_int_equal(n, strlen(want));
    if (n)
        assert_memory_equal(emit, want, n);
}

static void flush_expect(struct moe_stop *st, const char *want)
{
    const char *emit = NULL;
    size_t n = 999;
    moe_stop_flush(st, &emit, &n);
    assert_int_equal(n, strlen(want));
    if (n)
        assert_memory_equal(emit, want, n);
}

/* ---- cases ----------------------------------------------------------------- */

static void test_match_in_one_piece(void **state)
{
    const char *stops[] = {"STOP"};
    struct moe_stop *st = mk(stops, 1);
    push_expect(st, "hello STOP world", "hello ", true);
    push_expect(st, "more", "", true); /* nothing after a match */
    flush_expect(st, "");
    moe_stop_free(st);

    st = mk(stops, 1);
    push_expect(st, "STOP", "", true); /* at the very start */
    moe_stop_free(st);
}

static void test_match_across_pieces(void **state)
{
    const char *stops[] = {"STOP"};
    struct moe_stop *st = mk(stops, 1);
    push_expect(st, "hel", "hel", false);
    push_expect(st, "lo ST", "lo ", false); /* "ST" held */
    push_expect(st, "O", "", false);         /* "STO" held */
    push_expect(st, "P and more", "", true);
    moe_stop_free(st);

    /* one byte at a time */
    st = mk(stops, 1);
    const char *text = "ab STOSTOP";
    struct out o = {0};
    bool stopped = false;
    for (size_t i = 0; text[i] && !stopped; i++) {
        const char *emit;
        size_t n;
        stopped = moe_stop_push(st, text + i, 1, &emit, &n);
        take(&o, emit, n);
    }
    assert_true(stopped);
    assert_int_equal(o.len, 6);
    assert_memory_equal(o.text, "ab STO", 6);
    moe_stop_free(st);
}

static void test_overlapping_prefixes(void **state)
{
    const char *stops[] = {"abc", "bd"};
    struct moe_stop *st = mk(stops, 2);
    push_expect(st, "xab", "x", false); /* "ab" could start "abc"; "b" could start "bd" */
    push_expect(st, "d", "a", true);    /* "bd" */
    moe_stop_free(st);

    st = mk(stops, 2);
    push_expect(st, "ab", "", false);
    push_expect(st, "c", "", true);
    moe_stop_free(st);

    st = mk(stops, 2);
    push_expect(st, "ab", "", false);
    push_expect(st, "x", "abx", false);
    push_expect(st, "b", "", false);
    push_expect(st, "b", "b", false);
    flush_expect(st, "b");
    moe_stop_free(st);

    /* the first stop string to complete wins, whichever it is */
    const char *stops2[] = {"world", "lo w"};
    st = mk(stops2, 2);
    push_expect(st, "hel", "he", false); /* "l" could start "lo w" */
    push_expect(st, "lo world", "l", true);
    moe_stop_free(st);

    /* ... even when a longer one started earlier: pieces do not matter */
    const char *stops4[] = {"abab", "ba"};
    st = mk(stops4, 2);
    push_expect(st, "xabab", "xa", true);
    moe_stop_free(st);
    st = mk(stops4, 2);
    push_expect(st, "xab", "x", false);
    push_expect(st, "ab", "a", true);
    moe_stop_free(st);

    /* two completing at the same byte: the longer one cuts */
    const char *stops5[] = {"bc", "abc"};
    st = mk(stops5, 2);
    push_expect(st, "xabcd", "x", true);
    moe_stop_free(st);

    /* a stop string that is a prefix of another: the shorter matches first */
    const char *stops3[] = {"<|end|>", "<|"};
    st = mk(stops3, 2);
    push_expect(st, "x<", "x", false);
    push_expect(st, "|en", "", true);
    moe_stop_free(st);
}

static void test_no_match_flush(void **state)
{
    const char *stops[] = {"end", "STOP"};
    struct moe_stop *st = mk(stops, 2);
    push_expect(st, "the e", "the ", false);
    push_expect(st, "n", "", false);
    flush_expect(st, "en");
    flush_expect(st, ""); /* nothing twice */
    moe_stop_free(st);

    st = mk(stops, 2);
    push_expect(st, "plain text", "plain text", false);
    flush_expect(st, "");
    moe_stop_free(st);

    /* no stop strings: everything passes straight through */
    st = mk(NULL, 0);
    push_expect(st, "a", "a", false);
    push_expect(st, "", "", false);
    push_expect(st, "STOP", "STOP", false);
    flush_expect(st, "");
    moe_stop_free(st);
}

static void test_emit_valid_until_next_call(void **state)
{
    const char *stops[] = {"xyz"};
    struct moe_stop *st = mk(stops, 1);
    const char *emit;
    size_t n;
    char piece[] = "abcx";
    assert_false(moe_stop_push(st, piece, 4, &emit, &n));
    memset(piece, '#', 4); /* the caller may reuse its buffer at once */
    assert_int_equal(n, 3);
    assert_memory_equal(emit, "abc", 3);
    moe_stop_flush(st, &emit, &n);
    assert_int_equal(n, 1);
    assert_memory_equal(emit, "x", 1);
    moe_stop_free(st);
}

/* a chunk is valid UTF-8 (whole characters only) */
static bool utf8_whole(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                   : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

static void test_multibyte(void **state)
{
    /* "本当" shares its first character with the text's "本" */
    const char *stops[] = {"本当", "。"};
    struct moe_stop *st = mk(stops, 2);
    push_expect(st, "日本", "日", false); /* "本" held whole */
    push_expect(st, "語", "本語", false);
    push_expect(st, "で本", "で", false);
    push_expect(st, "当に", "", true);
    moe_stop_free(st);

    /* pieces of whole characters give chunks of whole characters */
    const char *pieces[] = {"Größe", " 本", "日は", "晴れ", "🙂", "本", "。", "x"};
    st = mk(stops, 2);
    struct out o = {0};
    bool stopped = false;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(pieces) && !stopped; i++) {
        const char *emit;
        size_t n;
        stopped = moe_stop_push(st, pieces[i], strlen(pieces[i]), &emit, &n);
        assert_true(utf8_whole((const unsigned char *)emit, n));
        take(&o, emit, n);
    }
    assert_true(stopped);
    const char *want = "Größe 本日は晴れ🙂本";
    assert_int_equal(o.len, strlen(want));
    assert_memory_equal(o.text, want, o.len);
    moe_stop_free(st);

    /* pieces that split characters (byte-level BPE): bytes come out
     * unchanged, and the total is right */
    const char *text = "Größe 本日は晴れ🙂本当";
    st = mk(stops, 2);
    memset(&o, 0, sizeof(o));
    stopped = false;
    for (size_t i = 0; text[i] && !stopped; i++) {
        const char *emit;
        size_t n;
        stopped = moe_stop_push(st, text + i, 1, &emit, &n);
        take(&o, emit, n);
    }
    assert_true(stopped);
    want = "Größe 本日は晴れ🙂";
    assert_int_equal(o.len, strlen(want));
    assert_memory_equal(o.text, want, o.len);
    assert_true(utf8_whole((const unsigned char *)o.text, o.len));
    moe_stop_free(st);
}

static void test_long_piece(void **state)
{
    /* a piece far larger than the initial buffer, stop string near its end */
    enum { N = 20000 };
    char *big = malloc(N + 1);
    assert_non_null(big);
    memset(big, 'a', N);
    memcpy(big + N - 10, "STOP", 4);
    big[N] = '\0';
    const char *stops[] = {"STOP"};
    struct moe_stop *st = mk(stops, 1);
    const char *emit;
    size_t n;
    assert_false(moe_stop_push(st, "ST", 2, &emit, &n));
    assert_true(moe_stop_push(st, big, N, &emit, &n));
    assert_int_equal(n, 2 + N - 10);
    assert_memory_equal(emit, "ST", 2);
    for (size_t i = 2; i < n; i++)
        assert_int_equal(emit[i], 'a');
    moe_stop_free(st);
    free(big);
}

static void test_validation(void **state)
{
    struct moe_stop *st = (struct moe_stop *)&st;
    const char *empty[] = {"ok", ""};
    assert_int_equal(moe_stop_create(empty, 2, &st), -EINVAL);
    assert_null(st);
    assert_non_null(strstr(moe_err_msg(), "stop string 1 is empty"));

    const char *null[] = {NULL};
    assert_int_equal(moe_stop_create(null, 1, &st), -EINVAL);
    assert_int_equal(moe_stop_create(NULL, 2, &st), -EINVAL);

    const char *many[17];
    for (int i = 0; i < 17; i++)
        many[i] = "x";
    assert_int_equal(moe_stop_create(many, 17, &st), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "at most 16 stop strings, got 17"));
    st = mk(many, 16);
    moe_stop_free(st);

    char longs[258];
    memset(longs, 'y', 257);
    longs[257] = '\0';
    const char *toolong[] = {longs};
    assert_int_equal(moe_stop_create(toolong, 1, &st), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "stop string 0 is 257 bytes, at most 256"));
    longs[256] = '\0';
    st = mk(toolong, 1);
    moe_stop_free(st);
    moe_stop_free(NULL);
}

/* Random texts over a small alphabet, random splits: the streamed result
 * must equal a plain scan over the whole text, whatever the pieces, and the held-back part must
 * stay shorter than the longest stop string. */
static void test_random_against_reference(void **state)
{
    const char *stops[] = {"abc", "bca", "cc", "abab", "ba"};
    const size_t n_stops = MOE_ARRAY_SIZE(stops);
    uint64_t rng = 12345;
#define RND(n) ((size_t)((rng = rng * 6364136223846793005ull + 1442695040888963407ull) >> 33) % (n))
    for (int iter = 0; iter < 3000; iter++) {
        char text[64];
        size_t len = RND(sizeof(text) - 1) + 1;
        /* 'a'/'b' often, 'c' rarely, so texts sometimes have no match */
        for (size_t i = 0; i < len; i++)
            text[i] = "aabbaabbc"[RND(9)];
        text[len] = '\0';
        /* 'ba' is too common; use it in a third of the runs only */
        size_t ns = iter % 3 ? n_stops - 1 : n_stops;

        /* reference: the first end position where some stop string ends;
         * the longest of those ending there */
        size_t want = len;
        for (size_t end = 1; end <= len && want == len; end++) {
            for (size_t s = 0; s < ns; s++) {
                size_t sl = strlen(stops[s]);
                if (sl <= end && !memcmp(text + end - sl, stops[s], sl) && end - sl < want)
                    want = end - sl;
            }
        }

        struct moe_stop *st = mk(stops, ns);
        struct out o = {0};
        size_t pos = 0, pushed = 0;
        bool stopped = false;
        while (pos < len && !stopped) {
            size_t piece = RND(5); /* empty pieces too */
            piece = MOE_MIN(piece, len - pos);
            const char *emit;
            size_t n;
            stopped = moe_stop_push(st, text + pos, piece, &emit, &n);
            take(&o, emit, n);
            pos += piece;
            pushed = pos;
            if (!stopped)
                assert_true(pushed - o.len < 4); /* held < longest stop (4) */
            /* never ahead of the truth */
            assert_true(o.len <= want);
            assert_memory_equal(o.text, text, o.len);
        }
        if (!stopped) {
            const char *emit;
            size_t n;
            moe_stop_flush(st, &emit, &n);
            take(&o, emit, n);
        }
        assert_int_equal(stopped, want < len);
        assert_int_equal(o.len, want);
        assert_memory_equal(o.text, text, want);
        moe_stop_free(st);
    }
#undef RND
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_in_one_piece),
        cmocka_unit_test(test_match_across_pieces),
        cmocka_unit_test(test_overlapping_prefixes),
        cmocka_unit_test(test_no_match_flush),
        cmocka_unit_test(test_emit_valid_until_next_call),
        cmocka_unit_test(test_multibyte),
        cmocka_unit_test(test_long_piece),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_random_against_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
