/* Tokenizer: tiny-moe's tokenizer.json against its reference ids, llama.cpp's
 * vocabulary test vectors through both GGUF and tokenizer.json, decoding,
 * streaming decode, error messages. */
#include "tests/unit/test.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>

#include "common/common.h"
#include "format/format.h"
#include "tokenizer/tokenizer.h"

#define TINY_DIR "models/tiny-moe/"
#define TOK_DIR "tests/data/tokenizers/"

static struct moe_tokenizer *load_hf(const char *json, const char *cfg)
{
    struct moe_tokenizer *tok = NULL;
    int rc = moe_tokenizer_from_hf(moe_test_path(json), cfg ? moe_test_path(cfg) : NULL, &tok);
    if (rc)
        fail_msg("%s: %s", json, moe_err_msg());
    return tok;
}

static struct moe_tokenizer *load_gguf(const char *file, struct moe_gguf **g)
{
    struct moe_tokenizer *tok = NULL;
    int rc = moe_gguf_open(moe_test_path(file), g);
    if (rc)
        fail_msg("%s: %s", file, moe_err_msg());
    rc = moe_tokenizer_from_gguf(*g, &tok);
    if (rc)
        fail_msg("%s: %s", file, moe_err_msg());
    return tok;
}

static void encode(const struct moe_tokenizer *tok, const char *text, size_t len, bool special,
                   int32_t **ids, size_t *n)
{
    int rc = moe_tokenizer_encode(tok, text, len, special, ids, n);
    if (rc)
        fail_msg("encode: %s", moe_err_msg());
}

/* Decodes with moe_detok_* one token at a time; malloc'ed, NUL-terminated. */
static char *detok_all(const struct moe_tokenizer *tok, const int32_t *ids, size_t n,
                       size_t *len)
{
    size_t cap = moe_tokenizer_max_piece(tok), o = 0;
    char *out = malloc(n * cap + cap + 1);
    assert_non_null(out);
    struct moe_detok d;
    moe_detok_init(&d, tok);
    for (size_t i = 0; i < n; i++)
        o += moe_detok_push(&d, ids[i], out + o, cap);
    o += moe_detok_flush(&d, out + o, cap);
    out[o] = 0;
    *len = o;
    return out;
}

/* Does ids decode back to text[0..len)? */
static bool round_trips(const struct moe_tokenizer *tok, const char *text, size_t len,
                        const int32_t *ids, size_t n)
{
    size_t got;
    char *s = detok_all(tok, ids, n, &got);
    bool ok = got == len && memcmp(s, text, len) == 0;
    free(s);
    return ok;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    char line[2048];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 16 < sizeof(line); i++)
        o += (size_t)snprintf(line + o, sizeof(line) - o, " %d", ids[i]);
    line[o] = 0;
    print_message("  %s:%s\n", what, line);
}

static bool ids_equal(const int32_t *a, size_t na, const json_t *want)
{
    if (na != json_array_size(want))
        return false;
    for (size_t i = 0; i < na; i++)
        if (a[i] != json_integer_value(json_array_get(want, i)))
            return false;
    return true;
}

/* ---- tiny-moe ----------------------------------------------------------------- */
static json_t *load_reference(void)
{
    json_error_t err;
    json_t *ref = json_load_file(moe_test_path(TINY_DIR "reference.json"), 0, &err);
    if (!ref)
        fail_msg("reference.json: %s", err.text);
    return ref;
}

static void test_tiny_cases(void **state)
{
    (void)state;
    struct moe_tokenizer *tok = load_hf(TINY_DIR "tokenizer.json", TINY_DIR "tokenizer_config.json");
    json_t *ref = load_reference();
    const json_t *cases = json_object_get(ref, "tokenizer_cases");
    assert_true(json_array_size(cases) > 0);
    size_t i, bad = 0;
    const json_t *c;
    json_array_foreach(cases, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t len = json_string_length(json_object_get(c, "text"));
        int32_t *ids;
        size_t n;
        encode(tok, text, len, false, &ids, &n);
        if (!ids_equal(ids, n, json_object_get(c, "ids"))) {
            print_message("tokenizer_cases[%zu] \"%s\": wrong ids\n", i, text);
            print_ids("got", ids, n);
            bad++;
        } else if (!round_trips(tok, text, len, ids, n)) {
            print_message("tokenizer_cases[%zu] \"%s\": does not decode back\n", i, text);
            bad++;
        }
        free(ids);
    }
    print_message("tiny-moe tokenizer_cases: %zu of %zu pass\n", json_array_size(cases) - bad,
                  json_array_size(cases));
    assert_int_equal(bad, 0);
    json_decref(ref);
    moe_tokenizer_free(tok);
}

static void test_tiny_prompts(void **state)
{
    (void)state;
    struct moe_tokenizer *tok = load_hf(TINY_DIR "tokenizer.json", TINY_DIR "tokenizer_config.json");
    assert_int_equal(moe_tokenizer_bos(tok), 1022);
    assert_int_equal(moe_tokenizer_eos(tok), 1023);
    assert_true(moe_tokenizer_is_eog(tok, 1023));
    assert_false(moe_tokenizer_is_eog(tok, 1022));
    assert_int_equal(moe_tokenizer_vocab_size(tok), 1024);
    json_t *ref = load_reference();
    const json_t *prompts = json_object_get(ref, "prompts");
    assert_true(json_array_size(prompts) > 0);
    size_t i;
    const json_t *p;
    json_array_foreach(prompts, i, p) {
        const char *text = json_string_value(json_object_get(p, "text"));
        int32_t *ids;
        size_t n;
        encode(tok, text, strlen(text), true, &ids, &n);
        if (!ids_equal(ids, n, json_object_get(p, "ids"))) {
            print_ids("got", ids, n);
            fail_msg("prompt \"%s\": wrong ids", text);
        }
        assert_int_equal(ids[0], 1022);
        /* BOS decodes to nothing, so the text comes back */
        assert_true(round_trips(tok, text, strlen(text), ids, n));
        free(ids);

        /* greedy continuation decodes to greedy_text */
        const json_t *g = json_object_get(p, "greedy_ids");
        const char *want = json_string_value(json_object_get(p, "greedy_text"));
        int32_t gi[256];
        size_t ng = MOE_MIN(json_array_size(g), MOE_ARRAY_SIZE(gi));
        for (size_t k = 0; k < ng; k++)
            gi[k] = (int32_t)json_integer_value(json_array_get(g, k));
        assert_true(round_trips(tok, want, strlen(want), gi, ng));
    }
    json_decref(ref);
    moe_tokenizer_free(tok);
}

/* Special tokens written in the text are those tokens, with or without
 * add_special. */
static void test_tiny_added_tokens(void **state)
{
    (void)state;
    struct moe_tokenizer *tok = load_hf(TINY_DIR "tokenizer.json", TINY_DIR "tokenizer_config.json");
    const char *text = "Hello<s> world</s></s>x<s";
    int32_t *ids, *a, *b, *c;
    size_t n, na, nb, nc;
    encode(tok, text, strlen(text), false, &ids, &n);
    encode(tok, "Hello", 5, false, &a, &na);
    encode(tok, " world", 6, false, &b, &nb);
    encode(tok, "x<s", 3, false, &c, &nc);
    assert_int_equal(n, na + nb + nc + 3);
    assert_memory_equal(ids + n - nc, c, nc * sizeof(*c));
    free(c);
    assert_memory_equal(ids, a, na * sizeof(*a));
    assert_int_equal(ids[na], 1022);
    assert_memory_equal(ids + na + 1, b, nb * sizeof(*b));
    assert_int_equal(ids[na + 1 + nb], 1023);
    assert_int_equal(ids[na + 2 + nb], 1023);
    assert_int_equal(moe_tokenizer_find(tok, "</s>"), 1023);
    char buf[8];
    assert_int_equal(moe_tokenizer_token_bytes(tok, 1022, buf, sizeof(buf)), 0);
    free(ids);
    free(a);
    free(b);

    /* empty text: nothing, or only BOS */
    encode(tok, "", 0, false, &ids, &n);
    assert_int_equal(n, 0);
    free(ids);
    encode(tok, NULL, 0, true, &ids, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1022);
    free(ids);
    moe_tokenizer_free(tok);
}

/* The perplexity reference: the validation text, encoded at once without
 * BOS. valid_tokens counts the scored tokens, every token but the first
 * (windows score tokens [kW+1, kW+W+1)): a plain Python BPE over the same
 * tokenizer.json also gives 49452 tokens. Also the speed check. */
static void test_tiny_validation_text(void **state)
{
    (void)state;
    struct moe_tokenizer *tok = load_hf(TINY_DIR "tokenizer.json", TINY_DIR "tokenizer_config.json");
    json_t *ref = load_reference();
    size_t start_char = (size_t)json_integer_value(json_object_get(ref, "valid_start_char"));
    size_t want = (size_t)json_integer_value(json_object_get(ref, "valid_tokens"));
    char *corpus;
    size_t len;
    assert_int_equal(moe_read_text_file(moe_test_path("data/tinyshakespeare.txt"), &corpus, &len), 0);
    size_t off = 0; /* characters -> bytes */
    for (size_t c = 0; c < start_char && off < len; c++)
        for (off++; off < len && ((uint8_t)corpus[off] & 0xc0) == 0x80; off++)
            ;
    int32_t *ids;
    size_t n;
    double t0 = moe_now_s();
    encode(tok, corpus + off, len - off, false, &ids, &n);
    double t1 = moe_now_s();
    print_message("tiny-moe validation text: %zu bytes -> %zu tokens in %.1f ms (%.1f MB/s)\n",
                  len - off, n, (t1 - t0) * 1e3, (double)(len - off) / (t1 - t0) / 1e6);
    assert_int_equal(n - 1, want);
    assert_true(round_trips(tok, corpus + off, len - off, ids, n));
    free(ids);

    /* the whole corpus, for a steadier speed figure */
    t0 = moe_now_s();
    encode(tok, corpus, len, false, &ids, &n);
    t1 = moe_now_s();
    print_message("tiny-moe whole corpus: %zu bytes -> %zu tokens in %.1f ms\n", len, n,
                  (t1 - t0) * 1e3);
    assert_true(t1 - t0 < 20.0);
    free(ids);
    free(corpus);
    json_decref(ref);
    moe_tokenizer_free(tok);
}

/* ---- llama.cpp vocabulary test vectors -------------------------------------------- */
struct vectors {
    char *inp, *out;
    char **text;
    size_t *len;
    char **ids_line;
    size_t n;
};

static void vectors_load(const char *gguf, struct vectors *v)
{
    char path[512];
    memset(v, 0, sizeof(*v));
    snprintf(path, sizeof(path), "%s.inp", gguf);
    assert_int_equal(moe_read_text_file(moe_test_path(path), &v->inp, NULL), 0);
    snprintf(path, sizeof(path), "%s.out", gguf);
    assert_int_equal(moe_read_text_file(moe_test_path(path), &v->out, NULL), 0);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t cap = 256;
    v->text = calloc(cap, sizeof(char *));
    v->len = calloc(cap, sizeof(size_t));
    v->ids_line = calloc(cap, sizeof(char *));
    char *p = v->inp, *q;
    while ((q = strstr(p, sep)) && v->n < cap) {
        *q = 0;
        v->text[v->n] = p;
        v->len[v->n] = (size_t)(q - p);
        v->n++;
        p = q + strlen(sep);
    }
    size_t k = 0;
    for (char *line = v->out; k < v->n && line; k++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        v->ids_line[k] = line;
        line = nl ? nl + 1 : NULL;
    }
    assert_int_equal(k, v->n);
    assert_true(v->n > 40);
}

static void vectors_free(struct vectors *v)
{
    free(v->inp);
    free(v->out);
    free(v->text);
    free(v->len);
    free(v->ids_line);
}

static size_t parse_ids(const char *line, int32_t *out, size_t cap)
{
    size_t n = 0;
    char *end;
    for (;;) {
        long x = strtol(line, &end, 10);
        if (end == line || n == cap)
            break;
        out[n++] = (int32_t)x;
        line = end;
    }
    return n;
}

static void run_vectors(const struct moe_tokenizer *tok, const char *name, const char *gguf)
{
    struct vectors v;
    vectors_load(gguf, &v);
    size_t pass = 0;
    for (size_t i = 0; i < v.n; i++) {
        int32_t want[512], *ids;
        size_t nw = parse_ids(v.ids_line[i], want, MOE_ARRAY_SIZE(want)), n;
        encode(tok, v.text[i], v.len[i], false, &ids, &n);
        bool ok = n == nw && memcmp(ids, want, n * sizeof(*ids)) == 0;
        if (!ok) {
            print_message("%s: vector %zu \"%s\": wrong ids\n", name, i, v.text[i]);
            print_ids("want", want, nw);
            print_ids("got ", ids, n);
        } else if (!round_trips(tok, v.text[i], v.len[i], ids, n)) {
            print_message("%s: vector %zu \"%s\": does not decode back\n", name, i, v.text[i]);
            ok = false;
        }
        pass += ok;
        free(ids);
    }
    print_message("%s: %zu of %zu vectors pass\n", name, pass, v.n);
    assert_int_equal(pass, v.n);
    vectors_free(&v);
}

static void test_gguf_llama_spm(void **state)
{
    (void)state;
    struct moe_gguf *g;
    struct moe_tokenizer *tok = load_gguf(TOK_DIR "ggml-vocab-llama-spm.gguf", &g);
    assert_int_equal(moe_tokenizer_vocab_size(tok), 32000);
    assert_string_equal(moe_tokenizer_pretok_name(tok), "none");
    assert_int_equal(moe_tokenizer_bos(tok), 1);
    assert_int_equal(moe_tokenizer_eos(tok), 2);
    assert_true(moe_tokenizer_is_eog(tok, 2));
    run_vectors(tok, "llama-spm (GGUF)", TOK_DIR "ggml-vocab-llama-spm.gguf");
    /* BOS with add_special */
    int32_t *ids;
    size_t n;
    encode(tok, "Hello", 5, true, &ids, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 15043);
    free(ids);
    moe_tokenizer_free(tok);
    moe_gguf_close(g);
}

static void test_gguf_gpt2(void **state)
{
    (void)state;
    struct moe_gguf *g;
    struct moe_tokenizer *tok = load_gguf(TOK_DIR "ggml-vocab-gpt-2.gguf", &g);
    assert_int_equal(moe_tokenizer_vocab_size(tok), 50257);
    assert_string_equal(moe_tokenizer_pretok_name(tok), "gpt2");
    assert_true(moe_tokenizer_is_eog(tok, 50256));
    run_vectors(tok, "gpt-2 (GGUF)", TOK_DIR "ggml-vocab-gpt-2.gguf");
    moe_tokenizer_free(tok);
    moe_gguf_close(g);
}

/* llama.cpp's vocabularies of other families, split by their
 * tokenizer.ggml.pre preset: DeepSeek Coder (five splits, digits one by one)
 * and StarCoder 2 (digits, then GPT-2's split) */
static void test_gguf_presets(void **state)
{
    (void)state;
    static const struct {
        const char *file, *preset;
        int32_t n_vocab;
    } vocabs[] = {
        { TOK_DIR "ggml-vocab-deepseek-coder.gguf", "deepseek-coder", 32256 },
        { TOK_DIR "ggml-vocab-starcoder.gguf", "starcoder", 49152 },
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(vocabs); i++) {
        struct moe_gguf *g;
        struct moe_tokenizer *tok = load_gguf(vocabs[i].file, &g);
        assert_int_equal(moe_tokenizer_vocab_size(tok), vocabs[i].n_vocab);
        assert_string_equal(moe_tokenizer_pretok_name(tok), vocabs[i].preset);
        run_vectors(tok, vocabs[i].preset, vocabs[i].file);
        moe_tokenizer_free(tok);
        moe_gguf_close(g);
    }
}

static void test_json_llama_spm(void **state)
{
    (void)state;
    struct moe_tokenizer *tok = load_hf(TOK_DIR "ggml-vocab-llama-spm.tokenizer.json", NULL);
    /* no tokenizer_config.json: the TemplateProcessing post-processor adds BOS */
    assert_int_equal(moe_tokenizer_bos(tok), 1);
    run_vectors(tok, "llama-spm (tokenizer.json)", TOK_DIR "ggml-vocab-llama-spm.gguf");
    int32_t *ids;
    size_t n;
    encode(tok, "Hello", 5, true, &ids, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    free(ids);
    moe_tokenizer_free(tok);
}

static void test_json_gpt2(void **state)
{
    (void)state;
    struct moe_tokenizer *tok = load_hf(TOK_DIR "ggml-vocab-gpt-2.tokenizer.json", NULL);
    run_vectors(tok, "gpt-2 (tokenizer.json)", TOK_DIR "ggml-vocab-gpt-2.gguf");
    /* a ByteLevel post-processor adds nothing */
    int32_t *ids;
    size_t n;
    encode(tok, "Hello", 5, true, &ids, &n);
    assert_int_equal(n, 1);
    free(ids);
    moe_tokenizer_free(tok);
}

/* GGUF (merge by score) and tokenizer.json (merge by rank) agree on real
 * text, not only on the vectors. */
static void test_sources_agree(void **state)
{
    (void)state;
    static const char *const pairs[][2] = {
        { TOK_DIR "ggml-vocab-llama-spm.gguf", TOK_DIR "ggml-vocab-llama-spm.tokenizer.json" },
        { TOK_DIR "ggml-vocab-gpt-2.gguf", TOK_DIR "ggml-vocab-gpt-2.tokenizer.json" },
    };
    char *corpus;
    size_t len;
    assert_int_equal(moe_read_text_file(moe_test_path("data/tinyshakespeare.txt"), &corpus, &len), 0);
    len = MOE_MIN(len, (size_t)200000);
    for (size_t k = 0; k < MOE_ARRAY_SIZE(pairs); k++) {
        struct moe_gguf *g;
        struct moe_tokenizer *a = load_gguf(pairs[k][0], &g);
        struct moe_tokenizer *b = load_hf(pairs[k][1], NULL);
        int32_t *ia, *ib;
        size_t na, nb;
        double t0 = moe_now_s();
        encode(a, corpus, len, true, &ia, &na);
        double t1 = moe_now_s();
        encode(b, corpus, len, true, &ib, &nb);
        double t2 = moe_now_s();
        print_message("%s: %zu bytes -> %zu tokens: GGUF %.1f ms, tokenizer.json %.1f ms\n",
                      pairs[k][0], len, na, (t1 - t0) * 1e3, (t2 - t1) * 1e3);
        assert_int_equal(na, nb);
        assert_memory_equal(ia, ib, na * sizeof(*ia));
        assert_true(round_trips(a, corpus, len, ia, na));
        free(ia);
        free(ib);
        moe_tokenizer_free(a);
        moe_tokenizer_free(b);
        moe_gguf_close(g);
    }
    free(corpus);
}

/* ---- decoding ------------------------------------------------------------------------ */
static void test_detok_streaming(void **state)
{
    (void)state;
    struct moe_gguf *g;
    struct moe_tokenizer *tok = load_gguf(TOK_DIR "ggml-vocab-llama-spm.gguf", &g);
    char out[512];
    struct moe_detok d;
    size_t n;

    /* 🦙 is not in the vocabulary: four byte tokens, the character comes
     * out whole with the last one */
    int32_t *ids;
    size_t nids;
    encode(tok, "\xf0\x9f\xa6\x99", 4, false, &ids, &nids);
    assert_int_equal(nids, 5); /* "▁" then <0xF0> <0x9F> <0xA6> <0x99> */
    assert_int_equal(moe_tokenizer_token_bytes(tok, ids[1], out, sizeof(out)), 1);
    assert_int_equal((uint8_t)out[0], 0xf0);
    moe_detok_init(&d, tok);
    /* the space of the first piece is dropped (SentencePiece) */
    assert_int_equal(moe_detok_push(&d, ids[0], out, sizeof(out)), 0);
    assert_int_equal(moe_detok_push(&d, ids[1], out, sizeof(out)), 0);
    assert_int_equal(moe_detok_push(&d, ids[2], out, sizeof(out)), 0);
    assert_int_equal(moe_detok_push(&d, ids[3], out, sizeof(out)), 0);
    n = moe_detok_push(&d, ids[4], out, sizeof(out));
    assert_int_equal(n, 4);
    assert_memory_equal(out, "\xf0\x9f\xa6\x99", 4);
    assert_int_equal(moe_detok_flush(&d, out, sizeof(out)), 0);
    free(ids);

    /* later pieces keep their space */
    int32_t hello = 15043; /* "▁Hello" */
    moe_detok_init(&d, tok);
    assert_int_equal(moe_detok_push(&d, 1, out, sizeof(out)), 0); /* BOS: nothing */
    n = moe_detok_push(&d, hello, out, sizeof(out));
    assert_int_equal(n, 5);
    assert_memory_equal(out, "Hello", 5);
    n = moe_detok_push(&d, hello, out, sizeof(out));
    assert_int_equal(n, 6);
    assert_memory_equal(out, " Hello", 6);

    /* an incomplete character at the end: U+FFFD */
    int32_t f0 = 3 + 0xf0, x9f = 3 + 0x9f, a = 3 + 'a';
    moe_detok_init(&d, tok);
    assert_int_equal(moe_detok_push(&d, f0, out, sizeof(out)), 0);
    assert_int_equal(moe_detok_push(&d, x9f, out, sizeof(out)), 0);
    n = moe_detok_flush(&d, out, sizeof(out));
    assert_int_equal(n, 3);
    assert_memory_equal(out, "\xef\xbf\xbd", 3);

    /* an incomplete character followed by ASCII: U+FFFD then the letter */
    moe_detok_init(&d, tok);
    assert_int_equal(moe_detok_push(&d, f0, out, sizeof(out)), 0);
    n = moe_detok_push(&d, a, out, sizeof(out));
    assert_int_equal(n, 4);
    assert_memory_equal(out, "\xef\xbf\xbd" "a", 4);

    /* a stray continuation byte: U+FFFD at once */
    moe_detok_init(&d, tok);
    n = moe_detok_push(&d, x9f, out, sizeof(out));
    assert_int_equal(n, 3);
    assert_memory_equal(out, "\xef\xbf\xbd", 3);
    moe_tokenizer_free(tok);
    moe_gguf_close(g);

    /* byte-level: "€" (e2 82 ac) through single-byte tokens */
    tok = load_hf(TINY_DIR "tokenizer.json", TINY_DIR "tokenizer_config.json");
    int32_t e2 = -1, x82 = -1, xac = -1;
    for (int32_t id = 0; id < moe_tokenizer_vocab_size(tok); id++) {
        char b[8];
        if (moe_tokenizer_token_bytes(tok, id, b, sizeof(b)) != 1)
            continue;
        if ((uint8_t)b[0] == 0xe2)
            e2 = id;
        if ((uint8_t)b[0] == 0x82)
            x82 = id;
        if ((uint8_t)b[0] == 0xac)
            xac = id;
    }
    assert_true(e2 >= 0 && x82 >= 0 && xac >= 0);
    moe_detok_init(&d, tok);
    assert_int_equal(moe_detok_push(&d, 72, out, sizeof(out)), 1); /* "H", no space dropping */
    assert_int_equal(moe_detok_push(&d, e2, out, sizeof(out)), 0);
    assert_int_equal(moe_detok_push(&d, x82, out, sizeof(out)), 0);
    n = moe_detok_push(&d, xac, out, sizeof(out));
    assert_int_equal(n, 3);
    assert_memory_equal(out, "\xe2\x82\xac", 3);
    /* the ByteLevel decoder keeps a leading space */
    moe_detok_init(&d, tok);
    assert_int_equal(moe_detok_push(&d, 32, out, sizeof(out)), 1);
    assert_int_equal(out[0], ' ');
    /* out-of-range ids decode to nothing */
    assert_int_equal(moe_detok_push(&d, -1, out, sizeof(out)), 0);
    assert_int_equal(moe_detok_push(&d, 1 << 20, out, sizeof(out)), 0);
    moe_tokenizer_free(tok);
}

/* ---- errors ---------------------------------------------------------------------------- */
static const char *write_tmp(const char *name, const char *text)
{
    static char path[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(path[k], sizeof(path[k]), "%s/%s", moe_test_tmpdir(), name);
    moe_test_write_file(path[k], text, strlen(text));
    return path[k];
}

static void expect_error(const char *path, const char *cfg, int code, const char *needle)
{
    struct moe_tokenizer *tok = (struct moe_tokenizer *)1;
    moe_err_clear();
    int rc = moe_tokenizer_from_hf(path, cfg, &tok);
    if (rc == 0)
        fail_msg("%s: loaded, expected an error", path);
    assert_null(tok);
    if (code)
        assert_int_equal(rc, code);
    const char *msg = moe_err_msg();
    if (!strstr(msg, needle) || !strstr(msg, cfg ? cfg : path))
        fail_msg("message \"%s\" lacks \"%s\" or the file name", msg, needle);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("/nonexistent/tokenizer.json", NULL, -ENOENT, "cannot open");
    expect_error(write_tmp("bad.json", "{\"model\": {\"type\": \"BPE\", "), NULL, -EINVAL,
                 "invalid JSON");
    expect_error(write_tmp("list.json", "[1, 2]"), NULL, -EINVAL, "JSON object");
    expect_error(write_tmp("wp.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": "
                                      "{\"a\": 0}}}"),
                 NULL, -EINVAL, "unsupported tokenizer model \"WordPiece\"");
    expect_error(write_tmp("uni.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": "
                                       "[[\"a\", -1.0]]}}"),
                 NULL, -EINVAL, "unsupported tokenizer model \"Unigram\"");
    expect_error(write_tmp("nomodel.json", "{\"added_tokens\": []}"), NULL, -EINVAL,
                 "no \"model\"");
    expect_error(write_tmp("badid.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": "
                                         "{\"a\": -3}, \"merges\": []}}"),
                 NULL, -EINVAL, "id must be");
    expect_error(write_tmp("norm.json", "{\"normalizer\": {\"type\": \"BertNormalizer\"}, "
                                        "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                                        "\"merges\": []}}"),
                 NULL, -EINVAL, "unsupported normalizer \"BertNormalizer\"");
    expect_error(write_tmp("re.json", "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
                                      "{\"Regex\": \"(a\"}, \"behavior\": \"Isolated\"}, "
                                      "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                                      "\"merges\": []}}"),
                 NULL, -EINVAL, "regex");
    /* a regex construct PCRE2 cannot match as Oniguruma does: refused, named */
    expect_error(write_tmp("posix.json", "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
                                         "{\"Regex\": \"[[:alpha:]]+\"}, \"behavior\": \"Isolated\"}, "
                                         "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                                         "\"merges\": []}}"),
                 NULL, -EINVAL, "POSIX bracket");
    expect_error(write_tmp("bert.json", "{\"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}, "
                                        "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                                        "\"merges\": []}}"),
                 NULL, -EINVAL, "unsupported pre_tokenizer \"BertPreTokenizer\"");
    /* a good tokenizer.json with a broken tokenizer_config.json */
    expect_error(moe_test_path(TINY_DIR "tokenizer.json"), write_tmp("cfg.json", "{,}"), -EINVAL,
                 "invalid JSON");
}

/* A minimal tokenizer.json: Metaspace pre-tokenizer, byte fallback, unk. */
static void test_metaspace_minimal(void **state)
{
    (void)state;
    const char *json =
        "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"
        "  {\"id\": 9, \"content\": \"<eot>\", \"special\": true, \"lstrip\": true}],"
        " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\xe2\x96\x81\","
        "  \"prepend_scheme\": \"first\", \"split\": true},"
        " \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\xe2\x96\x81\","
        "  \"prepend_scheme\": \"first\"},"
        " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
        "  \"vocab\": {\"<unk>\": 0, \"\xe2\x96\x81\": 1, \"a\": 2, \"b\": 3, \"\xe2\x96\x81" "a\": 4,"
        "   \"ab\": 5, \"\xe2\x96\x81" "ab\": 6, \"<0x21>\": 7},"
        "  \"merges\": [\"a b\", [\"\xe2\x96\x81\", \"ab\"], \"\xe2\x96\x81 a\"]}}";
    const char *path = write_tmp("meta.json", json);
    struct moe_tokenizer *tok = NULL;
    if (moe_tokenizer_from_hf(path, NULL, &tok))
        fail_msg("%s", moe_err_msg());
    int32_t *ids;
    size_t n;
    /* "ab ab": "▁ab" "▁ab"; "a" after the first piece; "xy" unknown -> one
     * fused <unk> (no byte fallback) */
    encode(tok, "ab ab a xy", 10, false, &ids, &n);
    int32_t want[] = { 6, 6, 4, 1, 0 };
    if (n != MOE_ARRAY_SIZE(want) || memcmp(ids, want, sizeof(want)))
        print_ids("got", ids, n);
    assert_int_equal(n, MOE_ARRAY_SIZE(want));
    assert_memory_equal(ids, want, sizeof(want));
    free(ids);
    /* the added token eats the space on its left; the text after it gets
     * no "▁" (prepend_scheme first) */
    encode(tok, "ab <eot>ab", 10, false, &ids, &n);
    int32_t want2[] = { 6, 9, 5 };
    assert_int_equal(n, MOE_ARRAY_SIZE(want2));
    assert_memory_equal(ids, want2, sizeof(want2));
    free(ids);
    char buf[16];
    assert_int_equal(moe_tokenizer_token_bytes(tok, 6, buf, sizeof(buf)), 3);
    assert_memory_equal(buf, " ab", 3);
    moe_tokenizer_free(tok);
}

/* tokenizer_config.json decides BOS / EOS; bos_token may be an object. */
static void test_config_variants(void **state)
{
    (void)state;
    const char *cfg = write_tmp("tcfg.json",
                                "{\"bos_token\": {\"content\": \"<s>\", \"special\": true},"
                                " \"eos_token\": \"</s>\", \"add_bos_token\": false,"
                                " \"add_eos_token\": true}");
    struct moe_tokenizer *tok = NULL;
    if (moe_tokenizer_from_hf(moe_test_path(TINY_DIR "tokenizer.json"), cfg, &tok))
        fail_msg("%s", moe_err_msg());
    assert_int_equal(moe_tokenizer_bos(tok), 1022);
    int32_t *ids;
    size_t n;
    encode(tok, "Hello world", 11, true, &ids, &n);
    int32_t want[] = { 72, 414, 111, 881, 1023 };
    assert_int_equal(n, MOE_ARRAY_SIZE(want));
    assert_memory_equal(ids, want, sizeof(want));
    free(ids);
    moe_tokenizer_free(tok);

    /* no tokenizer_config.json and a null post-processor: no BOS added, but
     * config.json beside tokenizer.json still names BOS / EOS */
    tok = load_hf(TINY_DIR "tokenizer.json", NULL);
    assert_int_equal(moe_tokenizer_bos(tok), 1022);
    assert_int_equal(moe_tokenizer_eos(tok), 1023);
    assert_true(moe_tokenizer_is_eog(tok, 1023));
    encode(tok, "Hello world", 11, true, &ids, &n);
    assert_int_equal(n, 4);
    free(ids);
    assert_int_equal(moe_tokenizer_add_eog(tok, 10), 0);
    assert_true(moe_tokenizer_is_eog(tok, 10));
    assert_int_not_equal(moe_tokenizer_add_eog(tok, 5000), 0);
    moe_tokenizer_free(tok);
}

/* The GPT-2 vocabulary with a Qwen2-style pre-tokenizer (Split regex, then
 * ByteLevel without its own regex) must give the same ids. */
static void test_json_split_pretokenizer(void **state)
{
    (void)state;
    json_error_t err;
    json_t *j = json_load_file(moe_test_path(TOK_DIR "ggml-vocab-gpt-2.tokenizer.json"), 0, &err);
    if (!j)
        fail_msg("%s", err.text);
    json_t *pre = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}",
                            "type", "Sequence", "pretokenizers",
                            "type", "Split", "pattern", "Regex",
                            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
                            "|\\s+(?!\\S)|\\s+",
                            "behavior", "Isolated", "invert", 0,
                            "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                            "use_regex", 0);
    assert_non_null(pre);
    json_object_set_new(j, "pre_tokenizer", pre);
    char path[512];
    snprintf(path, sizeof(path), "%s/split.json", moe_test_tmpdir());
    assert_int_equal(json_dump_file(j, path, JSON_COMPACT), 0);
    json_decref(j);
    struct moe_tokenizer *tok = NULL;
    if (moe_tokenizer_from_hf(path, NULL, &tok))
        fail_msg("%s", moe_err_msg());
    assert_string_equal(moe_tokenizer_pretok_name(tok), "custom"); /* no preset splits so */
    run_vectors(tok, "gpt-2 (tokenizer.json, Split + ByteLevel)", TOK_DIR "ggml-vocab-gpt-2.gguf");
    moe_tokenizer_free(tok);
}

/* Several threads encode with one tokenizer (its word cache is shared). */
struct thread_arg {
    const struct moe_tokenizer *tok;
    const char *text;
    size_t len;
    int32_t *ids;
    size_t n;
    int rc;
};

static void *encode_thread(void *p)
{
    struct thread_arg *a = p;
    for (int k = 0; k < 3 && !a->rc; k++) {
        free(a->ids);
        a->rc = moe_tokenizer_encode(a->tok, a->text + k, a->len - k, false, &a->ids, &a->n);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct moe_tokenizer *tok = load_hf(TOK_DIR "ggml-vocab-gpt-2.tokenizer.json", NULL);
    char *corpus;
    size_t len;
    assert_int_equal(moe_read_text_file(moe_test_path("data/tinyshakespeare.txt"), &corpus, &len), 0);
    len = MOE_MIN(len, (size_t)300000);
    int32_t *ref;
    size_t nref;
    encode(tok, corpus + 2, len - 2, false, &ref, &nref);
    moe_tokenizer_free(tok);
    tok = load_hf(TOK_DIR "ggml-vocab-gpt-2.tokenizer.json", NULL); /* a cold cache */
    pthread_t th[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){ tok, corpus, len, NULL, 0, 0 };
        assert_int_equal(pthread_create(&th[i], NULL, encode_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].rc, 0);
        assert_int_equal(args[i].n, nref);
        assert_memory_equal(args[i].ids, ref, nref * sizeof(*ref));
        free(args[i].ids);
    }
    free(ref);
    free(corpus);
    moe_tokenizer_free(tok);
}

/* A GGUF whose tokenizer moed does not do, and one without a vocabulary. */
static void put_str(FILE *f, const char *s)
{
    uint64_t n = strlen(s);
    fwrite(&n, 8, 1, f);
    fwrite(s, 1, n, f);
}

static const char *gguf_with_model(const char *name, const char *model)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", moe_test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint32_t version = 3, type_str = 8;
    uint64_t n_tensors = 0, n_kv = 1;
    fwrite("GGUF", 1, 4, f);
    fwrite(&version, 4, 1, f);
    fwrite(&n_tensors, 8, 1, f);
    fwrite(&n_kv, 8, 1, f);
    put_str(f, model ? "tokenizer.ggml.model" : "general.name");
    fwrite(&type_str, 4, 1, f);
    put_str(f, model ? model : "x");
    fclose(f);
    return path;
}

/* A "gpt2" GGUF of tokens a, b, ab (merge "a b") whose tokenizer.ggml.pre
 * is pre (NULL: none). */
static const char *gguf_gpt2(const char *name, const char *pre)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", moe_test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint32_t version = 3, type_str = 8, type_arr = 9;
    uint64_t n_tensors = 0, n_kv = pre ? 4 : 3;
    fwrite("GGUF", 1, 4, f);
    fwrite(&version, 4, 1, f);
    fwrite(&n_tensors, 8, 1, f);
    fwrite(&n_kv, 8, 1, f);
    put_str(f, "tokenizer.ggml.model");
    fwrite(&type_str, 4, 1, f);
    put_str(f, "gpt2");
    static const char *const toks[] = { "a", "b", "ab" };
    uint64_t n = 3, one = 1;
    put_str(f, "tokenizer.ggml.tokens");
    fwrite(&type_arr, 4, 1, f);
    fwrite(&type_str, 4, 1, f);
    fwrite(&n, 8, 1, f);
    for (int i = 0; i < 3; i++)
        put_str(f, toks[i]);
    put_str(f, "tokenizer.ggml.merges");
    fwrite(&type_arr, 4, 1, f);
    fwrite(&type_str, 4, 1, f);
    fwrite(&one, 8, 1, f);
    put_str(f, "a b");
    if (pre) {
        put_str(f, "tokenizer.ggml.pre");
        fwrite(&type_str, 4, 1, f);
        put_str(f, pre);
    }
    fclose(f);
    return path;
}

/* tokenizer.ggml.pre picks the preset; a name moed does not know fails the
 * load, naming it (it used to split as GPT-2 with a warning); no name at all
 * splits as llama.cpp's "default", as llama.cpp does. */
static void test_gguf_pre(void **state)
{
    (void)state;
    static const struct {
        const char *pre, *preset;
    } known[] = {
        { "qwen2", "qwen2" }, { "deepseek-v3", "deepseek-v3" }, { "gpt-4o", "gpt-4o" },
        { "minimax-m2", "gpt-4o" }, { "kimi-k2", "kimi-k2" }, { "glm4", "glm4" },
        { "llama-bpe", "llama3" }, { "command-r", "starcoder" }, { NULL, "default" },
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(known); i++) {
        struct moe_gguf *g;
        struct moe_tokenizer *tok;
        assert_int_equal(moe_gguf_open(gguf_gpt2("pre.gguf", known[i].pre), &g), 0);
        if (moe_tokenizer_from_gguf(g, &tok))
            fail_msg("%s: %s", known[i].pre, moe_err_msg());
        assert_string_equal(moe_tokenizer_pretok_name(tok), known[i].preset);
        int32_t *ids;
        size_t n;
        assert_int_equal(moe_tokenizer_encode(tok, "ab", 2, false, &ids, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(ids[0], 2);
        free(ids);
        moe_tokenizer_free(tok);
        moe_gguf_close(g);
    }
    struct moe_gguf *g;
    struct moe_tokenizer *tok = (struct moe_tokenizer *)1;
    const char *path = gguf_gpt2("unknown-pre.gguf", "nonesuch-bpe");
    assert_int_equal(moe_gguf_open(path, &g), 0);
    assert_int_equal(moe_tokenizer_from_gguf(g, &tok), -EINVAL);
    assert_null(tok);
    assert_non_null(strstr(moe_err_msg(), "tokenizer.ggml.pre \"nonesuch-bpe\""));
    assert_non_null(strstr(moe_err_msg(), path));
    moe_gguf_close(g);
}

static void test_gguf_errors(void **state)
{
    (void)state;
    struct moe_gguf *g;
    struct moe_tokenizer *tok;
    const char *path = gguf_with_model("bert.gguf", "bert");
    assert_int_equal(moe_gguf_open(path, &g), 0);
    assert_int_equal(moe_tokenizer_from_gguf(g, &tok), -EINVAL);
    assert_null(tok);
    assert_non_null(strstr(moe_err_msg(), "unsupported tokenizer model \"bert\""));
    assert_non_null(strstr(moe_err_msg(), path));
    moe_gguf_close(g);

    path = gguf_with_model("novocab.gguf", "llama");
    assert_int_equal(moe_gguf_open(path, &g), 0);
    assert_int_equal(moe_tokenizer_from_gguf(g, &tok), -ENOENT);
    assert_non_null(strstr(moe_err_msg(), "tokenizer.ggml.tokens"));
    moe_gguf_close(g);

    path = gguf_with_model("nomodel.gguf", NULL);
    assert_int_equal(moe_gguf_open(path, &g), 0);
    assert_int_equal(moe_tokenizer_from_gguf(g, &tok), -ENOENT);
    assert_non_null(strstr(moe_err_msg(), "tokenizer.ggml.model"));
    moe_gguf_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_cases),
        cmocka_unit_test(test_tiny_prompts),
        cmocka_unit_test(test_tiny_added_tokens),
        cmocka_unit_test(test_tiny_validation_text),
        cmocka_unit_test(test_gguf_llama_spm),
        cmocka_unit_test(test_gguf_gpt2),
        cmocka_unit_test(test_gguf_presets),
        cmocka_unit_test(test_json_llama_spm),
        cmocka_unit_test(test_json_gpt2),
        cmocka_unit_test(test_sources_agree),
        cmocka_unit_test(test_detok_streaming),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_metaspace_minimal),
        cmocka_unit_test(test_config_variants),
        cmocka_unit_test(test_json_split_pretokenizer),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_gguf_errors),
        cmocka_unit_test(test_gguf_pre),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
