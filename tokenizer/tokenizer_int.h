/* The tokenizer's private parts, shared by tokenizer*.c.
 *
 * One representation serves both sources (tokenizer.json and GGUF):
 *   text -> added tokens split out (literal, longest first)
 *        -> each remaining segment: normalizers -> pre-tokenizer pieces
 *        -> each piece: BPE merges (by merge rank, or by SentencePiece
 *           score) -> ids, unknown pieces through byte fallback / unk.
 * Loaders fill the vocabulary, the merge table and the pipeline steps, then
 * call moe_tok_finish(). */
#ifndef MOE_TOKENIZER_INT_H
#define MOE_TOKENIZER_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

/* Far above any real vocabulary (Gemma's 256k); keeps a corrupt file from
 * asking for gigabytes. */
#define MOE_TOK_MAX_VOCAB (1 << 22)

/* Token types, numbered as GGUF's tokenizer.ggml.token_type (llama.cpp). */
enum moe_tok_type {
    MOE_TOK_UNDEFINED = 0,
    MOE_TOK_NORMAL = 1,
    MOE_TOK_UNKNOWN = 2,
    MOE_TOK_CONTROL = 3,
    MOE_TOK_USER_DEFINED = 4,
    MOE_TOK_UNUSED = 5,
    MOE_TOK_BYTE = 6,
};

/* How adjacent symbols are chosen for merging. */
enum moe_tok_algo {
    MOE_TOK_ALGO_RANK,  /* BPE merge list: the pair of lowest rank (HF, GGUF gpt2) */
    MOE_TOK_ALGO_SCORE, /* SentencePiece: the pair whose concatenation scores
                         * highest (GGUF llama, as llama.cpp's SPM tokenizer) */
};

/* ---- normalizers (applied to each segment between added tokens) ----------- */
enum moe_tok_norm_kind {
    MOE_TOK_NORM_PREPEND, /* a = prefix, when the segment is not empty */
    MOE_TOK_NORM_REPLACE, /* every a (literal) or every match of re -> b */
    MOE_TOK_NORM_NFC,     /* Unicode NFC (tokenizer_nfc.c) */
};

struct moe_tok_norm {
    enum moe_tok_norm_kind kind;
    char *a, *b;
    size_t alen, blen;
    pcre2_code *re; /* Replace with a Regex pattern, else NULL */
};

/* ---- pre-tokenizer steps ---------------------------------------------------
 * One Hugging Face pre-tokenizer each, run in order over the pieces of a
 * segment, with Hugging Face's semantics (a ByteLevel or Metaspace edit
 * applies to every piece it is given; a step after ByteLevel sees the
 * byte-mapped text). tokenizer.json is read into these; the presets of
 * tokenizer_preset.c are written as these. */
enum moe_tok_step_kind {
    MOE_TOK_STEP_NONE,        /* ends a preset's list */
    MOE_TOK_STEP_SPLIT,       /* Split: a regex or a literal string */
    MOE_TOK_STEP_DIGITS,      /* Digits: each numeric character, or runs of them */
    MOE_TOK_STEP_PUNCTUATION, /* Punctuation: each punctuation character */
    MOE_TOK_STEP_WHITESPACE,  /* Whitespace: \w+|[^\w\s]+, the rest removed */
    MOE_TOK_STEP_WSSPLIT,     /* WhitespaceSplit: split at white space, removed */
    MOE_TOK_STEP_BYTELEVEL,   /* ByteLevel: prefix space, GPT-2 split, byte mapping */
    MOE_TOK_STEP_METASPACE,   /* Metaspace: ' ' -> replacement, prefix, split */
};

enum moe_tok_split_behavior { /* Hugging Face's SplitDelimiterBehavior */
    MOE_TOK_SPLIT_REMOVED,
    MOE_TOK_SPLIT_ISOLATED,
    MOE_TOK_SPLIT_MERGED_PREV,
    MOE_TOK_SPLIT_MERGED_NEXT,
    MOE_TOK_SPLIT_CONTIGUOUS,
};

enum moe_tok_prepend { MOE_TOK_PREPEND_ALWAYS, MOE_TOK_PREPEND_FIRST, MOE_TOK_PREPEND_NEVER };

/* A step as tokenizer.json describes it. */
struct moe_tok_step {
    enum moe_tok_step_kind kind;
    const char *pattern;  /* Split: the regex (Oniguruma syntax) or string */
    size_t pattern_len;   /* 0: strlen(pattern) */
    bool literal;         /* Split: {"String": ...} */
    enum moe_tok_split_behavior behavior; /* Split, Punctuation */
    bool invert;          /* Split */
    bool individual;      /* Digits: individual_digits */
    bool add_prefix_space; /* ByteLevel */
    bool use_regex;       /* ByteLevel */
    const char *replacement; /* Metaspace (UTF-8, NULL: "▁") */
    enum moe_tok_prepend prepend; /* Metaspace */
    bool split;           /* Metaspace */
};

/* A family's pre-tokenizer (tokenizer_preset.c). */
struct moe_tok_preset {
    const char *name;     /* "qwen2" */
    const char *models;   /* who uses it */
    const char *gguf[20]; /* tokenizer.ggml.pre names that mean it (llama.cpp's) */
    struct moe_tok_step steps[8]; /* as its tokenizer.json has them, in order */
    bool ignore_merges;   /* set by llama.cpp for these GGUF names */
    bool add_bos;         /* GGUF default without tokenizer.ggml.add_bos_token */
    /* GGUF names whose tokenizer.json normalizes to NFC first (a GGUF does
     * not say; llama.cpp does not normalize) */
    const char *nfc[4];
};

/* The preset for a GGUF's tokenizer.ggml.pre, or NULL. */
const struct moe_tok_preset *moe_tok_preset_by_gguf(const char *name, size_t len);
/* Sets up a GGUF vocabulary as the preset says for its tokenizer.ggml.pre
 * name: the NFC normalizer where the family has one, the steps,
 * ignore_merges; names the tokenizer's pre-tokenizer after the preset. */
int moe_tok_preset_apply(struct moe_tokenizer *tok, const struct moe_tok_preset *p,
                         const char *gguf_name, size_t len);
/* The preset whose steps the tokenizer's are ("custom" when none is,
 * "none" without steps). */
const char *moe_tok_preset_recognise(const struct moe_tokenizer *tok);

/* A step as it runs. */
struct moe_tok_pre {
    struct moe_tok_step step; /* pattern and replacement point into pattern_buf, repl */
    char *pattern_buf;
    pcre2_code *re; /* what the step splits at; NULL: it does not split */
    bool jit; /* re was JIT-compiled */
    enum moe_tok_split_behavior behavior;
    bool invert;
    char repl[8]; /* Metaspace replacement */
    size_t repl_len;
};

/* ---- added tokens: a byte trie, matched on the raw text ------------------- */
struct moe_tok_trie_node {
    int32_t child;   /* first child, -1 if none */
    int32_t sibling; /* next sibling, -1 if none */
    int32_t id;      /* token ending here, -1 if none */
    uint8_t byte;
};

/* ---- hash maps ------------------------------------------------------------- */
struct moe_tok_vocab_slot {
    uint64_t hash;
    int32_t id; /* -1: empty */
};

struct moe_tok_pair_slot {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX: empty */
    int32_t rank;
    int32_t id; /* the merged token */
};

/* word -> ids memo for byte-level BPE (pieces repeat a lot in real text) */
struct moe_tok_cache {
    pthread_mutex_t lock;
    struct moe_tok_cache_slot {
        uint64_t hash;
        uint32_t key_off, key_len; /* into arena */
        uint32_t ids_off, n_ids;   /* into ids */
    } *slots;
    size_t mask, used;
    char *arena;
    size_t arena_len, arena_cap;
    int32_t *ids;
    size_t ids_len, ids_cap;
};

struct moe_tokenizer {
    int32_t n_vocab;
    /* token text as the vocabulary spells it ("Ġthe", "▁the", "<0x0A>") */
    char *text;               /* arena */
    size_t text_len, text_cap;
    uint32_t *text_off, *text_n;
    /* what the token decodes to (byte-level mapping undone, ...) */
    char *dec;
    uint32_t *dec_off, *dec_n;
    uint32_t max_dec;
    size_t max_out; /* moe_tokenizer_max_piece() */
    uint8_t *type; /* enum moe_tok_type */
    float *score;  /* SentencePiece scores (GGUF llama), else NULL */
    uint8_t *eog;  /* 1: ends generation */
    uint8_t *lstrip, *rstrip; /* added tokens eat whitespace left / right */

    struct moe_tok_vocab_slot *vocab;
    size_t vocab_mask;
    struct moe_tok_pair_slot *pairs;
    size_t pairs_mask, n_pairs;

    enum moe_tok_algo algo;
    bool byte_level;    /* model input is bytes mapped to GPT-2's unicode chars */
    bool byte_fallback; /* unknown characters -> <0xNN> tokens */
    bool ignore_merges; /* a piece that is a whole token is taken as is */
    bool fuse_unk;
    /* No token has "▁" after another character, so a text can be cut before
     * every such "▁" without changing the result: SentencePiece text is
     * merged word by word instead of as one long piece. */
    bool spm_word_split;
    int32_t unk_id;
    int32_t byte_id[256]; /* byte-level: token of the byte's char; else <0xNN> */

    struct moe_tok_norm *norms;
    int n_norms;
    struct moe_tok_pre *pres;
    int n_pres;
    const char *pretok_name; /* the preset (static), "custom" or "none" */

    /* decoding */
    bool dec_byte_level;    /* undo the byte->unicode mapping */
    bool strip_first_space; /* drop the leading space of the output (SentencePiece) */
    struct moe_tok_norm *dec_repl; /* Replace decoders, in order (literal only) */
    int n_dec_repl;

    struct moe_tok_trie_node *trie;
    size_t n_trie, cap_trie;
    uint8_t trie_first[256]; /* 1: some added token starts with this byte */

    int32_t bos, eos, eot, eom;
    bool add_bos, add_eos;

    struct moe_tok_cache cache;
    const char *source; /* for messages (owned) */
};

/* ---- building (loaders) ---------------------------------------------------- */
/* tokenizer.json's text (name for messages); siblings: also read config.json
 * and generation_config.json beside name. For tests and the fuzzer. */
int moe_tok_from_hf_text(const char *name, const char *text, size_t len,
                         const char *config_json, bool siblings, struct moe_tokenizer **out);

int moe_tok_new(int32_t n_vocab, const char *source, struct moe_tokenizer **out);
/* Copies the text; type is enum moe_tok_type. */
int moe_tok_set_token(struct moe_tokenizer *tok, int32_t id, const char *s, size_t n, int type);
/* After every token is set: the text -> id map (the lowest id wins for
 * duplicated text). */
int moe_tok_build_vocab(struct moe_tokenizer *tok);
int32_t moe_tok_lookup(const struct moe_tokenizer *tok, const char *s, size_t n); /* -1 */
/* Merge "a b" of the given rank (lower merges first). Merges naming tokens
 * not in the vocabulary are skipped (returns 0) as llama.cpp does; a later
 * duplicate of a pair keeps the first rank. */
int moe_tok_add_merge(struct moe_tokenizer *tok, const char *a, size_t alen, const char *b,
                      size_t blen, int32_t rank);
int moe_tok_reserve_merges(struct moe_tokenizer *tok, size_t n);
/* Pipeline steps; the pattern is compiled UTF + UCP (+ JIT). */
int moe_tok_add_norm(struct moe_tokenizer *tok, enum moe_tok_norm_kind kind, const char *a,
                     size_t alen, const char *b, size_t blen, const char *regex);
/* Appends a pre-tokenizer step (the pattern is copied and compiled). */
int moe_tok_add_step(struct moe_tokenizer *tok, const struct moe_tok_step *st);
int moe_tok_add_dec_replace(struct moe_tokenizer *tok, const char *a, size_t alen,
                            const char *b, size_t blen);
/* Compiles a pattern (UTF, UCP, invalid UTF-8 tolerated; JIT when there).
 * A regex is read as Hugging Face reads it (Oniguruma syntax). */
int moe_tok_compile(const char *src, const char *pattern, size_t len, bool literal,
                    pcre2_code **out);
/* After everything: decoded bytes, byte tokens, the added-token trie (every
 * CONTROL / USER_DEFINED / UNKNOWN token), end-of-generation set. */
int moe_tok_finish(struct moe_tokenizer *tok);

/* An Oniguruma pattern (as Hugging Face tokenizers compiles it) rewritten
 * for PCRE2 so that both match the same text; *out is malloc'ed. Refuses,
 * naming it, what has no exact PCRE2 equivalent. src is for messages. */
int moe_tok_regex_translate(const char *src, const char *pattern, size_t len, char **out);

/* The GPT-2 pre-tokenizer pattern (Hugging Face ByteLevel use_regex). */
extern const char moe_tok_gpt2_pattern[];

/* GPT-2's byte -> unicode code point mapping and its inverse (-1 if none). */
uint32_t moe_tok_byte_to_cp(uint8_t b);
int moe_tok_cp_to_byte(uint32_t cp);

/* NFC as Hugging Face's normalizer composes. moe_tok_is_nfc: the quick
 * check (true: s cannot change). moe_tok_nfc: s[0..n) normalized into *out
 * (grown as needed, capacity *cap); *cps is scratch of *cps_cap. */
bool moe_tok_is_nfc(const char *s, size_t n);
int moe_tok_nfc(const char *s, size_t n, char **out, size_t *cap, size_t *out_n,
                uint32_t **cps, size_t *cps_cap);

/* UTF-8 helpers. moe_utf8_len: length of the valid sequence starting at
 * s[0..n), or 0 when s[0] does not start one (invalid or truncated). */
size_t moe_utf8_len(const uint8_t *s, size_t n);
bool moe_utf8_valid(const uint8_t *s, size_t n); /* the whole of s[0..n) */
size_t moe_utf8_put(uint32_t cp, char *out); /* out needs 4 bytes */

/* ---- encoding internals (tokenizer_bpe.c) ---------------------------- */
struct moe_tok_ids {
    int32_t *v;
    size_t n, cap;
};
int moe_tok_ids_push(struct moe_tok_ids *ids, int32_t id);

struct moe_tok_scratch; /* per encode call */
struct moe_tok_scratch *moe_tok_scratch_new(void);
void moe_tok_scratch_free(struct moe_tok_scratch *s);
/* One pre-tokenized piece through the model: ids appended to out. */
int moe_tok_encode_piece(const struct moe_tokenizer *tok, struct moe_tok_scratch *s,
                         const char *p, size_t n, struct moe_tok_ids *out);
void moe_tok_cache_init(struct moe_tok_cache *c);
void moe_tok_cache_free(struct moe_tok_cache *c);

uint64_t moe_tok_hash(const void *p, size_t n);

/* the merge table's key (left id << 32 | right id) -> slot hash */
static inline uint64_t moe_tok_pair_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

#endif
