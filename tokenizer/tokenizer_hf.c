/* Hugging Face tokenizer.json (+ tokenizer_config.json) -> struct moe_tokenizer.
 *
 * Supported: model BPE (byte-level as GPT-2 / Qwen, or SentencePiece-style
 * with byte_fallback as Llama / Mistral); normalizers Sequence, Prepend,
 * Replace, NFC;
 * pre-tokenizers Sequence, ByteLevel, Split, Metaspace, Digits, Whitespace,
 * WhitespaceSplit, Punctuation; decoders Sequence, ByteLevel, Replace,
 * ByteFallback, Fuse, Strip, Metaspace; post-processors TemplateProcessing,
 * ByteLevel, RobertaProcessing, BertProcessing, Sequence (for BOS / EOS).
 * Anything else is refused with a message naming the file. */
#include "tokenizer/tokenizer_int.h"

#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

#define MAX_VOCAB MOE_TOK_MAX_VOCAB

struct hf_load {
    const char *path;
    struct moe_tokenizer *tok;
    /* what the post-processor adds */
    int32_t tmpl_bos, tmpl_eos;
};

static const char *jstr(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool jbool(const json_t *o, const char *key, bool def)
{
    const json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* {"String": "..."} or {"Regex": "..."} */
static int jpattern(struct hf_load *L, const json_t *o, const char *what, const char **pat,
                    size_t *len, bool *literal)
{
    const json_t *p = json_object_get(o, "pattern");
    const json_t *s = json_object_get(p, "String");
    const json_t *r = json_object_get(p, "Regex");
    if (json_is_string(s)) {
        *pat = json_string_value(s);
        *len = json_string_length(s);
        *literal = true;
        return 0;
    }
    if (json_is_string(r)) {
        *pat = json_string_value(r);
        *len = json_string_length(r);
        *literal = false;
        return 0;
    }
    return moe_err(-EINVAL, "%s: %s: pattern must be {\"String\": ...} or {\"Regex\": ...}",
                   L->path, what);
}

/* ---- normalizer ------------------------------------------------------------------ */
static int parse_normalizer(struct hf_load *L, const json_t *n, int depth)
{
    if (!n || json_is_null(n))
        return 0;
    const char *type = jstr(n, "type");
    if (!json_is_object(n) || !type || depth > 8)
        return moe_err(-EINVAL, "%s: normalizer: expected an object with a \"type\"", L->path);
    int rc;
    if (!strcmp(type, "Sequence")) {
        const json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list))
            return moe_err(-EINVAL, "%s: normalizer Sequence: no \"normalizers\" list", L->path);
        size_t i;
        const json_t *x;
        json_array_foreach(list, i, x)
            if ((rc = parse_normalizer(L, x, depth + 1)))
                return rc;
        return 0;
    }
    if (!strcmp(type, "Prepend")) {
        const json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p))
            return moe_err(-EINVAL, "%s: normalizer Prepend: no \"prepend\" string", L->path);
        return moe_tok_add_norm(L->tok, MOE_TOK_NORM_PREPEND, json_string_value(p),
                                json_string_length(p), "", 0, NULL);
    }
    if (!strcmp(type, "Replace")) {
        const char *pat;
        size_t plen;
        bool literal;
        const json_t *c = json_object_get(n, "content");
        if ((rc = jpattern(L, n, "normalizer Replace", &pat, &plen, &literal)))
            return rc;
        if (!json_is_string(c))
            return moe_err(-EINVAL, "%s: normalizer Replace: no \"content\" string", L->path);
        return moe_tok_add_norm(L->tok, MOE_TOK_NORM_REPLACE, pat, plen, json_string_value(c),
                                json_string_length(c), literal ? NULL : pat);
    }
    if (!strcmp(type, "NFC"))
        return moe_tok_add_norm(L->tok, MOE_TOK_NORM_NFC, "", 0, "", 0, NULL);
    return moe_err(-EINVAL, "%s: unsupported normalizer \"%s\"", L->path, type);
}

/* ---- pre-tokenizer ---------------------------------------------------------------- */
static int split_behavior(struct hf_load *L, const char *s, enum moe_tok_split_behavior *out)
{
    static const struct {
        const char *name;
        enum moe_tok_split_behavior b;
    } tab[] = {
        { "Removed", MOE_TOK_SPLIT_REMOVED },
        { "Isolated", MOE_TOK_SPLIT_ISOLATED },
        { "MergedWithPrevious", MOE_TOK_SPLIT_MERGED_PREV },
        { "MergedWithNext", MOE_TOK_SPLIT_MERGED_NEXT },
        { "Contiguous", MOE_TOK_SPLIT_CONTIGUOUS },
    };
    for (size_t i = 0; s && i < MOE_ARRAY_SIZE(tab); i++) {
        if (!strcmp(s, tab[i].name)) {
            *out = tab[i].b;
            return 0;
        }
    }
    return moe_err(-EINVAL, "%s: pre-tokenizer Split: unknown behavior \"%s\"", L->path,
                   s ? s : "(none)");
}

/* Metaspace's replacement and prepend_scheme (the pre-tokenizer's and the
 * decoder's). */
static int metaspace_common(struct hf_load *L, const json_t *n, const char *what,
                            struct moe_tok_step *st)
{
    const json_t *r = json_object_get(n, "replacement");
    st->replacement = "\xe2\x96\x81"; /* ▁ */
    if (json_is_string(r)) {
        st->replacement = json_string_value(r);
        size_t rl = json_string_length(r);
        if (rl == 0 || rl != strlen(st->replacement) ||
            moe_utf8_len((const uint8_t *)st->replacement, rl) != rl)
            return moe_err(-EINVAL, "%s: %s: the replacement must be one character", L->path,
                           what);
    }
    const char *scheme = jstr(n, "prepend_scheme");
    if (scheme) {
        if (!strcmp(scheme, "always"))
            st->prepend = MOE_TOK_PREPEND_ALWAYS;
        else if (!strcmp(scheme, "first"))
            st->prepend = MOE_TOK_PREPEND_FIRST;
        else if (!strcmp(scheme, "never"))
            st->prepend = MOE_TOK_PREPEND_NEVER;
        else
            return moe_err(-EINVAL, "%s: %s: unknown prepend_scheme \"%s\"", L->path, what,
                           scheme);
    } else {
        st->prepend = jbool(n, "add_prefix_space", true) ? MOE_TOK_PREPEND_ALWAYS
                                                         : MOE_TOK_PREPEND_NEVER;
    }
    return 0;
}

/* One pre-tokenizer (a Sequence: each of its members) -> steps. */
static int parse_pre(struct hf_load *L, const json_t *n, int depth)
{
    if (!n || json_is_null(n))
        return 0;
    const char *type = jstr(n, "type");
    if (!json_is_object(n) || !type || depth > 8)
        return moe_err(-EINVAL, "%s: pre_tokenizer: expected an object with a \"type\"", L->path);
    struct moe_tok_step st = { .behavior = MOE_TOK_SPLIT_ISOLATED };
    int rc;
    if (!strcmp(type, "Sequence")) {
        const json_t *list = json_object_get(n, "pretokenizers");
        if (!json_is_array(list))
            return moe_err(-EINVAL, "%s: pre_tokenizer Sequence: no \"pretokenizers\" list",
                           L->path);
        size_t i;
        const json_t *x;
        json_array_foreach(list, i, x)
            if ((rc = parse_pre(L, x, depth + 1)))
                return rc;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        st.kind = MOE_TOK_STEP_BYTELEVEL;
        st.add_prefix_space = jbool(n, "add_prefix_space", true);
        st.use_regex = jbool(n, "use_regex", true);
    } else if (!strcmp(type, "Split")) {
        bool literal;
        st.kind = MOE_TOK_STEP_SPLIT;
        if ((rc = jpattern(L, n, "pre-tokenizer Split", &st.pattern, &st.pattern_len,
                           &literal)) ||
            (rc = split_behavior(L, jstr(n, "behavior"), &st.behavior)))
            return rc;
        st.literal = literal;
        st.invert = jbool(n, "invert", false);
        if (st.pattern_len == 0)
            return moe_err(-EINVAL, "%s: pre-tokenizer Split: an empty pattern", L->path);
    } else if (!strcmp(type, "Metaspace")) {
        st.kind = MOE_TOK_STEP_METASPACE;
        if ((rc = metaspace_common(L, n, "pre-tokenizer Metaspace", &st)))
            return rc;
        st.split = jbool(n, "split", true);
    } else if (!strcmp(type, "Digits")) {
        st.kind = MOE_TOK_STEP_DIGITS;
        st.individual = jbool(n, "individual_digits", false);
    } else if (!strcmp(type, "Whitespace")) {
        st.kind = MOE_TOK_STEP_WHITESPACE;
    } else if (!strcmp(type, "WhitespaceSplit")) {
        st.kind = MOE_TOK_STEP_WSSPLIT;
    } else if (!strcmp(type, "Punctuation")) {
        st.kind = MOE_TOK_STEP_PUNCTUATION;
        const char *b = jstr(n, "behavior");
        if (b && (rc = split_behavior(L, b, &st.behavior)))
            return rc;
    } else {
        return moe_err(-EINVAL, "%s: unsupported pre_tokenizer \"%s\"", L->path, type);
    }
    return moe_tok_add_step(L->tok, &st);
}

/* ---- decoder ------------------------------------------------------------------------ */
static int parse_decoder(struct hf_load *L, const json_t *n, int depth)
{
    if (!n || json_is_null(n))
        return 0;
    const char *type = jstr(n, "type");
    if (!json_is_object(n) || !type || depth > 8)
        return moe_err(-EINVAL, "%s: decoder: expected an object with a \"type\"", L->path);
    struct moe_tokenizer *tok = L->tok;
    int rc;
    if (!strcmp(type, "Sequence")) {
        const json_t *list = json_object_get(n, "decoders");
        if (!json_is_array(list))
            return moe_err(-EINVAL, "%s: decoder Sequence: no \"decoders\" list", L->path);
        size_t i;
        const json_t *x;
        json_array_foreach(list, i, x)
            if ((rc = parse_decoder(L, x, depth + 1)))
                return rc;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        tok->dec_byte_level = true;
        return 0;
    }
    if (!strcmp(type, "ByteFallback") || !strcmp(type, "Fuse"))
        return 0; /* <0xNN> tokens are bytes anyway; output is one stream */
    if (!strcmp(type, "Replace")) {
        const char *pat;
        size_t plen;
        bool literal;
        const json_t *c = json_object_get(n, "content");
        if ((rc = jpattern(L, n, "decoder Replace", &pat, &plen, &literal)))
            return rc;
        if (!literal || !json_is_string(c))
            return moe_err(-EINVAL, "%s: decoder Replace: only a String pattern with a content "
                           "string is supported", L->path);
        return moe_tok_add_dec_replace(tok, pat, plen, json_string_value(c),
                                       json_string_length(c));
    }
    if (!strcmp(type, "Strip")) {
        const char *c = jstr(n, "content");
        const json_t *start = json_object_get(n, "start");
        if (c && !strcmp(c, " ") && json_is_integer(start) && json_integer_value(start) > 0)
            tok->strip_first_space = true;
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        struct moe_tok_step st = { 0 };
        if ((rc = metaspace_common(L, n, "decoder Metaspace", &st)))
            return rc;
        if (st.prepend != MOE_TOK_PREPEND_NEVER)
            tok->strip_first_space = true;
        return moe_tok_add_dec_replace(tok, st.replacement, strlen(st.replacement), " ", 1);
    }
    return moe_err(-EINVAL, "%s: unsupported decoder \"%s\"", L->path, type);
}

/* ---- post-processor: which special tokens a sequence gets ---------------------------- */
static int32_t template_id(struct hf_load *L, const json_t *pp, const char *name)
{
    const json_t *st = json_object_get(json_object_get(pp, "special_tokens"), name);
    const json_t *ids = json_object_get(st, "ids");
    if (json_is_array(ids) && json_array_size(ids) == 1 &&
        json_is_integer(json_array_get(ids, 0)))
        return (int32_t)json_integer_value(json_array_get(ids, 0));
    return moe_tok_lookup(L->tok, name, strlen(name));
}

static void parse_post(struct hf_load *L, const json_t *pp, int depth)
{
    const char *type = jstr(pp, "type");
    if (!type || depth > 8)
        return;
    if (!strcmp(type, "Sequence")) {
        size_t i;
        const json_t *x;
        json_array_foreach(json_object_get(pp, "processors"), i, x)
            parse_post(L, x, depth + 1);
    } else if (!strcmp(type, "TemplateProcessing")) {
        bool seen_a = false;
        size_t i;
        const json_t *x;
        json_array_foreach(json_object_get(pp, "single"), i, x) {
            const json_t *sp = json_object_get(x, "SpecialToken");
            if (json_object_get(x, "Sequence")) {
                seen_a = true;
            } else if (sp) {
                const char *name = jstr(sp, "id");
                int32_t id = name ? template_id(L, pp, name) : -1;
                if (id >= 0 && !seen_a && L->tmpl_bos < 0)
                    L->tmpl_bos = id;
                if (id >= 0 && seen_a && L->tmpl_eos < 0)
                    L->tmpl_eos = id;
            }
        }
    } else if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const json_t *cls = json_object_get(pp, "cls"), *sep = json_object_get(pp, "sep");
        if (json_is_integer(json_array_get(cls, 1)))
            L->tmpl_bos = (int32_t)json_integer_value(json_array_get(cls, 1));
        if (json_is_integer(json_array_get(sep, 1)))
            L->tmpl_eos = (int32_t)json_integer_value(json_array_get(sep, 1));
    }
}

/* ---- model --------------------------------------------------------------------------- */
static int json_id(struct hf_load *L, const json_t *v, const char *what, int32_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MAX_VOCAB)
        return moe_err(-EINVAL, "%s: %s: id must be an integer in [0, %d)", L->path, what,
                       MAX_VOCAB);
    *id = (int32_t)json_integer_value(v);
    return 0;
}

static int load_merges(struct hf_load *L, const json_t *merges)
{
    if (!merges || json_is_null(merges))
        return 0;
    if (!json_is_array(merges))
        return moe_err(-EINVAL, "%s: model.merges must be a list", L->path);
    int rc = moe_tok_reserve_merges(L->tok, json_array_size(merges));
    if (rc)
        return rc;
    size_t i;
    const json_t *m;
    json_array_foreach(merges, i, m) {
        const char *a, *b;
        size_t alen, blen;
        if (json_is_string(m)) {
            /* "a b": split at the first space after the first byte */
            const char *s = json_string_value(m);
            size_t n = json_string_length(m);
            const char *sp = n > 1 ? memchr(s + 1, ' ', n - 1) : NULL;
            if (!sp)
                return moe_err(-EINVAL, "%s: merge %zu \"%.*s\" is not \"a b\"", L->path, i,
                               (int)MOE_MIN(n, 100), s);
            a = s;
            alen = (size_t)(sp - s);
            b = sp + 1;
            blen = n - alen - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            alen = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            blen = json_string_length(json_array_get(m, 1));
        } else {
            return moe_err(-EINVAL, "%s: merge %zu is neither \"a b\" nor [a, b]", L->path, i);
        }
        if ((rc = moe_tok_add_merge(L->tok, a, alen, b, blen, (int32_t)i)))
            return rc;
    }
    return 0;
}

static int load_model(struct hf_load *L, const json_t *root)
{
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return moe_err(-EINVAL, "%s: no \"model\" object", L->path);
    const char *type = jstr(model, "type");
    const json_t *vocab = json_object_get(model, "vocab");
    if (!type && json_is_object(vocab) && json_object_get(model, "merges"))
        type = "BPE"; /* files from before "type" was written */
    if (!type)
        return moe_err(-EINVAL, "%s: model has no \"type\"", L->path);
    if (strcmp(type, "BPE"))
        return moe_err(-EINVAL, "%s: unsupported tokenizer model \"%s\" (moed supports BPE)",
                       L->path, type);
    if (!json_is_object(vocab))
        return moe_err(-EINVAL, "%s: model.vocab must be an object", L->path);
    const char *cont = jstr(model, "continuing_subword_prefix");
    const char *suffix = jstr(model, "end_of_word_suffix");
    if ((cont && cont[0]) || (suffix && suffix[0]))
        return moe_err(-EINVAL, "%s: unsupported BPE option: continuing_subword_prefix / "
                       "end_of_word_suffix", L->path);

    /* the size: one past the largest id of the vocabulary and the added tokens */
    int32_t n_vocab = 0, id;
    const char *key;
    const json_t *v;
    int rc;
    json_object_foreach((json_t *)vocab, key, v) {
        if ((rc = json_id(L, v, "model.vocab", &id)))
            return rc;
        n_vocab = MOE_MAX(n_vocab, id + 1);
    }
    const json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added) && !json_is_null(added))
        return moe_err(-EINVAL, "%s: added_tokens must be a list", L->path);
    size_t i;
    const json_t *a;
    json_array_foreach(added, i, a) {
        if (!json_is_string(json_object_get(a, "content")))
            return moe_err(-EINVAL, "%s: added_tokens[%zu]: no \"content\"", L->path, i);
        if ((rc = json_id(L, json_object_get(a, "id"), "added_tokens", &id)))
            return rc;
        n_vocab = MOE_MAX(n_vocab, id + 1);
    }
    if (n_vocab == 0)
        return moe_err(-EINVAL, "%s: empty vocabulary", L->path);

    if ((rc = moe_tok_new(n_vocab, L->path, &L->tok)))
        return rc;
    struct moe_tokenizer *tok = L->tok;
    json_object_foreach((json_t *)vocab, key, v) {
        size_t klen = json_object_iter_key_len(json_object_key_to_iter(key));
        if ((rc = moe_tok_set_token(tok, (int32_t)json_integer_value(v), key, klen,
                                    MOE_TOK_NORMAL)))
            return rc;
    }
    json_array_foreach(added, i, a) {
        const json_t *c = json_object_get(a, "content");
        id = (int32_t)json_integer_value(json_object_get(a, "id"));
        bool special = jbool(a, "special", false);
        if ((rc = moe_tok_set_token(tok, id, json_string_value(c), json_string_length(c),
                                    special ? MOE_TOK_CONTROL : MOE_TOK_USER_DEFINED)))
            return rc;
        tok->lstrip[id] = jbool(a, "lstrip", false);
        tok->rstrip[id] = jbool(a, "rstrip", false);
    }
    if ((rc = moe_tok_build_vocab(tok)))
        return rc;

    tok->algo = MOE_TOK_ALGO_RANK;
    tok->byte_fallback = jbool(model, "byte_fallback", false);
    tok->ignore_merges = jbool(model, "ignore_merges", false);
    tok->fuse_unk = jbool(model, "fuse_unk", false);
    const char *unk = jstr(model, "unk_token");
    if (unk) {
        tok->unk_id = moe_tok_lookup(tok, unk, strlen(unk));
        if (tok->unk_id < 0)
            return moe_err(-EINVAL, "%s: unk_token \"%s\" is not in the vocabulary", L->path, unk);
    }
    return load_merges(L, json_object_get(model, "merges"));
}

/* ---- BOS / EOS ------------------------------------------------------------------------- */
/* "<s>" or {"content": "<s>", ...} -> id; -1 when absent or unknown */
static int32_t config_token(const struct moe_tokenizer *tok, const json_t *cfg, const char *key)
{
    const json_t *v = json_object_get(cfg, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return -1;
    return moe_tok_lookup(tok, json_string_value(v), json_string_length(v));
}

/* config.json / generation_config.json: an id or a list of ids */
static void config_ids(struct moe_tokenizer *tok, const json_t *cfg, const char *key,
                       int32_t *first, bool eog)
{
    const json_t *v = json_object_get(cfg, key);
    json_t *one = NULL;
    if (json_is_integer(v))
        v = one = json_pack("[O]", v);
    size_t i;
    const json_t *x;
    json_array_foreach(v, i, x) {
        if (!json_is_integer(x) || json_integer_value(x) < 0 ||
            json_integer_value(x) >= tok->n_vocab)
            continue;
        int32_t id = (int32_t)json_integer_value(x);
        if (first && *first < 0)
            *first = id;
        if (eog)
            tok->eog[id] = 1;
    }
    json_decref(one);
}

static json_t *parse_json(const char *path, const char *text, size_t len, int *rc)
{
    json_error_t err;
    json_t *j = json_loadb(text, len, 0, &err);
    if (!j) {
        *rc = moe_err(-EINVAL, "%s:%d:%d: invalid JSON: %s", path, err.line, err.column,
                      err.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *rc = moe_err(-EINVAL, "%s: expected a JSON object", path);
        return NULL;
    }
    *rc = 0;
    return j;
}

static json_t *load_json(const char *path, bool quiet_missing, int *rc)
{
    char *text;
    size_t len;
    *rc = moe_read_text_file(path, &text, &len);
    if (*rc) {
        if (quiet_missing && *rc == -ENOENT)
            *rc = 0;
        return NULL;
    }
    json_t *j = parse_json(path, text, len, rc);
    free(text);
    return j;
}

/* config.json's ids when nothing else named BOS / EOS, generation_config.json's
 * eos ids as end of generation. */
static void sibling_apply(struct hf_load *L, const json_t *j)
{
    config_ids(L->tok, j, "bos_token_id", &L->tok->bos, false);
    config_ids(L->tok, j, "eos_token_id", &L->tok->eos, true);
}

/* Files beside tokenizer.json: config.json, generation_config.json. */
static int sibling_configs(struct hf_load *L)
{
    char *dup = strdup(L->path);
    if (!dup)
        return moe_err(-ENOMEM, "out of memory");
    const char *dir = dirname(dup);
    static const char *const names[] = { "config.json", "generation_config.json" };
    int rc = 0;
    for (size_t k = 0; k < MOE_ARRAY_SIZE(names) && !rc; k++) {
        char *p = moe_path_join(dir, names[k]);
        if (!p) {
            rc = moe_err(-ENOMEM, "out of memory");
            break;
        }
        json_t *j = load_json(p, true, &rc);
        free(p);
        if (!j)
            continue; /* missing is fine; a broken file is an error */
        sibling_apply(L, j);
        json_decref(j);
    }
    free(dup);
    return rc;
}

/* The texts of the sibling files, when they come from memory (a pack). */
struct hf_siblings {
    const char *const *text;
    const size_t *len;
    size_t n;
};

/* cfg: tokenizer_config.json parsed, or NULL (borrowed). sib NULL: read
 * the sibling files beside name when from_dir. */
static int hf_build(const char *name, const char *text, size_t len, const json_t *cfg,
                    bool from_dir, const struct hf_siblings *sib, struct moe_tokenizer **out)
{
    struct hf_load L = { .path = name, .tmpl_bos = -1, .tmpl_eos = -1 };
    json_t *root = NULL;
    int rc;
    *out = NULL;
    root = parse_json(name, text, len, &rc);
    if (!root)
        goto fail;
    if ((rc = load_model(&L, root)) ||
        (rc = parse_normalizer(&L, json_object_get(root, "normalizer"), 0)) ||
        (rc = parse_pre(&L, json_object_get(root, "pre_tokenizer"), 0)) ||
        (rc = parse_decoder(&L, json_object_get(root, "decoder"), 0)))
        goto fail;
    struct moe_tokenizer *tok = L.tok;
    tok->pretok_name = moe_tok_preset_recognise(tok);
    parse_post(&L, json_object_get(root, "post_processor"), 0);

    tok->bos = config_token(tok, cfg, "bos_token");
    tok->eos = config_token(tok, cfg, "eos_token");
    if (tok->bos < 0)
        tok->bos = L.tmpl_bos;
    const json_t *ab = json_object_get(cfg, "add_bos_token");
    const json_t *ae = json_object_get(cfg, "add_eos_token");
    tok->add_bos = json_is_boolean(ab) ? json_is_true(ab) : L.tmpl_bos >= 0;
    tok->add_eos = json_is_boolean(ae) ? json_is_true(ae) : L.tmpl_eos >= 0;
    if (tok->add_eos && tok->eos < 0)
        tok->eos = L.tmpl_eos;
    if (from_dir && (rc = sibling_configs(&L)))
        goto fail;
    for (size_t k = 0; sib && k < sib->n; k++) {
        if (!sib->text[k])
            continue;
        json_t *j = parse_json(name, sib->text[k], sib->len[k], &rc);
        if (!j)
            goto fail;
        sibling_apply(&L, j);
        json_decref(j);
    }
    if ((rc = moe_tok_finish(tok)))
        goto fail;
    json_decref(root);
    *out = tok;
    return 0;
fail:
    json_decref(root);
    moe_tokenizer_free(L.tok);
    return rc;
}

int moe_tokenizer_from_hf(const char *tokenizer_json, const char *config_json,
                          struct moe_tokenizer **out)
{
    char *text;
    size_t len;
    *out = NULL;
    int rc = moe_read_text_file(tokenizer_json, &text, &len);
    if (rc)
        return rc;
    rc = moe_tok_from_hf_text(tokenizer_json, text, len, config_json, true, out);
    free(text);
    return rc;
}

int moe_tok_from_hf_text(const char *name, const char *text, size_t len,
                         const char *config_json, bool siblings, struct moe_tokenizer **out)
{
    json_t *cfg = NULL;
    int rc;
    *out = NULL;
    if (config_json) {
        cfg = load_json(config_json, false, &rc);
        if (!cfg)
            return rc;
    }
    rc = hf_build(name, text, len, cfg, siblings, NULL, out);
    json_decref(cfg);
    return rc;
}

int moe_tokenizer_from_hf_mem(const char *name, const char *tokenizer_json, size_t len,
                              const char *config_json, size_t config_len,
                              const char *const *siblings, const size_t *sibling_len,
                              size_t n_siblings, struct moe_tokenizer **out)
{
    json_t *cfg = NULL;
    int rc;
    *out = NULL;
    if (config_json) {
        cfg = parse_json(name, config_json, config_len, &rc);
        if (!cfg)
            return rc;
    }
    struct hf_siblings sib = { siblings, sibling_len, n_siblings };
    rc = hf_build(name, tokenizer_json, len, cfg, false, &sib, out);
    json_decref(cfg);
    return rc;
}
