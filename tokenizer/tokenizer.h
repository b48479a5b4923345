/* The tokenizer: Hugging Face tokenizer.json (byte-level BPE as in GPT-2 /
 * Qwen, SentencePiece-style BPE with byte fallback as in Llama / Mistral) and
 * the vocabulary embedded in GGUF files (tokenizer.ggml.model "gpt2" or
 * "llama"). One implementation serves both sources. */
#ifndef MOE_TOKENIZER_H
#define MOE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moe_gguf;
struct moe_tokenizer;

/* tokenizer_json: path to tokenizer.json; config_json: tokenizer_config.json
 * or NULL (it decides add_bos / add_eos and names bos/eos). */
int moe_tokenizer_from_hf(const char *tokenizer_json, const char *config_json,
                          struct moe_tokenizer **out);
/* The same from texts in memory (a pack's blobs); name is for messages.
 * config_json: tokenizer_config.json's text or NULL. siblings: the texts of
 * config.json and generation_config.json (entries may be NULL), read as
 * moe_tokenizer_from_hf reads the files beside tokenizer.json. */
int moe_tokenizer_from_hf_mem(const char *name, const char *tokenizer_json, size_t len,
                              const char *config_json, size_t config_len,
                              const char *const *siblings, const size_t *sibling_len,
                              size_t n_siblings, struct moe_tokenizer **out);
int moe_tokenizer_from_gguf(const struct moe_gguf *g, struct moe_tokenizer **out);
void moe_tokenizer_free(struct moe_tokenizer *tok);

int32_t moe_tokenizer_vocab_size(const struct moe_tokenizer *tok);
int32_t moe_tokenizer_bos(const struct moe_tokenizer *tok); /* -1 if none */
int32_t moe_tokenizer_eos(const struct moe_tokenizer *tok); /* -1 if none */
bool moe_tokenizer_is_eog(const struct moe_tokenizer *tok, int32_t id); /* end of generation */
/* Marks one more end-of-generation token (generation_config.json's eos ids
 * beside tokenizer.json are picked up by moe_tokenizer_from_hf already). */
int moe_tokenizer_add_eog(struct moe_tokenizer *tok, int32_t id);
/* The pre-tokenizer preset ("qwen2", "deepseek-v3", "gpt-4o", ...): a
 * GGUF's tokenizer.ggml.pre row, or what a tokenizer.json's pre_tokenizer
 * was recognised as ("custom": run as described, no preset has those steps;
 * "none": no pre-tokenizer). */
const char *moe_tokenizer_pretok_name(const struct moe_tokenizer *tok);
/* A token as the vocabulary spells it ("<s>", "Ġthe"), not NUL-terminated;
 * NULL for an id out of range. */
const char *moe_tokenizer_token_text(const struct moe_tokenizer *tok, int32_t id, size_t *len);
/* The id of a token spelled exactly so in the vocabulary ("<|im_end|>"), -1. */
int32_t moe_tokenizer_find(const struct moe_tokenizer *tok, const char *text);

/* Encodes text[0..len). add_special: add BOS/EOS as the tokenizer's config
 * says (tiny-moe: BOS). Special/added tokens written literally in the text
 * ("<s>") are matched as those tokens. *ids is malloc'ed; caller frees. */
int moe_tokenizer_encode(const struct moe_tokenizer *tok, const char *text, size_t len,
                         bool add_special, int32_t **ids, size_t *n_ids);

/* The raw bytes a token stands for (byte-level mapping undone, "▁" turned
 * into a space, <0xNN> into its byte). Control tokens give 0 bytes.
 * Returns the token's full length; copies at most cap bytes of it. */
size_t moe_tokenizer_token_bytes(const struct moe_tokenizer *tok, int32_t id,
                                 char *buf, size_t cap);
/* Room one moe_detok_push() may need: about the longest token's bytes + 3
 * (tiny-moe 13, Llama 2 30, GPT-2 131). */
size_t moe_tokenizer_max_piece(const struct moe_tokenizer *tok);

/* Streaming decode: push one token at a time; only whole UTF-8 characters
 * come out (a character split over tokens is held until complete). */
struct moe_detok {
    const struct moe_tokenizer *tok;
    char pending[8];
    int n_pending;
    bool at_start; /* SentencePiece: drop the space of the first piece */
};
void moe_detok_init(struct moe_detok *d, const struct moe_tokenizer *tok);
/* Writes at most cap bytes and returns how many. cap >=
 * moe_tokenizer_max_piece(tok) always suffices; 64 does for most vocabularies
 * but not GPT-2's (tokens of 128 bytes); what does not fit is dropped. */
size_t moe_detok_push(struct moe_detok *d, int32_t id, char *out, size_t cap);
/* At the end: whatever incomplete bytes remain, as U+FFFD replacement(s). */
size_t moe_detok_flush(struct moe_detok *d, char *out, size_t cap);

#endif
