/* Constrained decoding: a context-free grammar in llama.cpp's GBNF notation,
 * matched one byte at a time, and the token mask it gives each step.
 *
 *   root   ::= "{" ws "\"a\"" ws ":" ws [0-9]+ ws "}"
 *   ws     ::= [ \t\n]{0,20}
 *
 * Rules are alternatives (|) of sequences; items are "literals", [classes]
 * (ranges, ^ negation, escapes \n \t \\ \" \] \xHH \uHHHH), rule names,
 * ( groups ) and . (any character), with * + ? {m} {m,} {m,n}. Classes
 * match Unicode code points; the bytes of a token may split one, which the
 * matcher carries over. Left recursion is refused at compile time.
 *
 * A compiled grammar is immutable and shared by reference count (the
 * request, its n > 1 copies, the engine). A state belongs to one sequence:
 * it holds the set of parse stacks the text so far leaves possible. */
#ifndef MOE_ENGINE_GRAMMAR_H
#define MOE_ENGINE_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moe_grammar;
struct moe_grammar_state;
struct moe_tokenizer;

/* Compiles GBNF text; the start rule is "root". -EINVAL naming the line and
 * what is wrong (an undefined rule, left recursion, a bad escape). */
int moe_grammar_compile(const char *gbnf, struct moe_grammar **out);
struct moe_grammar *moe_grammar_ref(struct moe_grammar *g);
void moe_grammar_unref(struct moe_grammar *g); /* NULL: no-op */

/* A fresh state at the start of root. */
int moe_grammar_state_new(struct moe_grammar *g, struct moe_grammar_state **out);
void moe_grammar_state_free(struct moe_grammar_state *st);
/* Whether bytes b[0..n) may follow the text so far (the state is unchanged). */
bool moe_grammar_accepts(struct moe_grammar_state *st, const char *b, size_t n);
/* Takes bytes b[0..n): 0, or -EINVAL (state unchanged) when they may not follow. */
int moe_grammar_advance(struct moe_grammar_state *st, const char *b, size_t n);
/* The text so far is a whole sentence of the grammar (generation may end). */
bool moe_grammar_can_end(const struct moe_grammar_state *st);
/* ... and nothing may follow it (generation must end). */
bool moe_grammar_done(const struct moe_grammar_state *st);

/* Every token's bytes in one trie, built once per tokenizer. Control tokens
 * (no bytes) are not in it: the caller decides end-of-generation tokens by
 * moe_grammar_can_end. */
struct moe_vocab_trie;
int moe_vocab_trie_build(const struct moe_tokenizer *tok, struct moe_vocab_trie **out);
void moe_vocab_trie_free(struct moe_vocab_trie *t);

/* Sets bit id of allowed (vocab bits, zeroed first) for every token whose
 * bytes may follow the text so far. Recent masks are remembered by parse
 * state, so the many steps inside one JSON string cost one walk. Returns
 * the number of tokens allowed. */
int32_t moe_grammar_mask(struct moe_grammar_state *st, const struct moe_vocab_trie *t,
                         uint64_t *allowed, int32_t vocab);

/* ---- JSON Schema (engine_schema.c) ----------------------------------------
 * A JSON Schema as GBNF: root ::= prefix <the schema's value> suffix, both
 * GBNF (a tool call's wrapping); NULL prefix: optional whitespace, NULL
 * suffix: nothing, so that generation ends with the value. Every text the grammar allows is valid against the
 * schema. -EINVAL naming the keyword and the schema path for what is not
 * supported. *out is malloc'ed. */
struct json_t;
int moe_schema_to_gbnf(const struct json_t *schema, const char *prefix, const char *suffix,
                       char **out);
/* The rules for schema alone, appended to out, named TAG-N; the rule for the
 * schema's value into name (up to cap bytes). */
struct moe_sbuf;
int moe_schema_rules(const struct json_t *schema, const char *tag, struct moe_sbuf *out,
                     char *name, size_t cap);
/* rules (GBNF text with its own root) followed by the JSON rules they may
 * use: value object array string number integer boolean null ws */
int moe_gbnf_with_json(const char *rules, char **out);

#endif
