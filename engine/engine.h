/* engine: sampling and generation over a model. (Continuous batching of many
 * sequences arrives with the daemon.) */
#ifndef MOE_ENGINE_H
#define MOE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- sampling ---------------------------------------------------------------
 * Order (as llama.cpp / vLLM): penalties -> temperature 0 ? greedy :
 * top-k -> top-p -> min-p -> temperature -> softmax -> draw. */
struct moe_sampling {
    float temperature;        /* 0 = greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off; >1 divides positive logits, multiplies negative */
    float presence_penalty;   /* 0 = off; subtracted once per token seen */
    float frequency_penalty;  /* 0 = off; subtracted per occurrence */
    int penalty_last_n;       /* window of history the penalties look at; 0 = all */
    uint64_t seed;            /* same seed, same draws */
};
void moe_sampling_defaults(struct moe_sampling *s);

struct moe_sampler;
int moe_sampler_create(const struct moe_sampling *s, int32_t vocab, struct moe_sampler **out);
void moe_sampler_free(struct moe_sampler *smp);
/* Picks the next token, or returns a negative errno (no finite logit).
 * logits[vocab] is used as scratch (modified). history: the tokens so far
 * (prompt and generated) for the penalties. top-p and min-p look at the
 * distribution at temperature 1, as llama.cpp's default chain does. */
int32_t moe_sampler_sample(struct moe_sampler *smp, float *logits,
                           const int32_t *history, size_t n_history);

/* ---- stop strings -------------------------------------------------------------
 * Text is pushed as it is generated; bytes that could still be the start of
 * a stop string are held back. */
struct moe_stop;
int moe_stop_create(const char *const *stops, size_t n_stops, struct moe_stop **out);
void moe_stop_free(struct moe_stop *st);
/* Appends text; returns true once a stop string has matched. *emit / *n_emit
 * is the text now safe to show (excluding the stop string itself); valid
 * until the next call. */
bool moe_stop_push(struct moe_stop *st, const char *text, size_t len,
                   const char **emit, size_t *n_emit);
/* At the end of generation without a stop match: the held-back text. */
void moe_stop_flush(struct moe_stop *st, const char **emit, size_t *n_emit);

/* ---- chat templates ------------------------------------------------------------- */
struct moe_chat_message;

enum moe_chat_template {
    MOE_CHAT_CHATML,  /* <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n */
    MOE_CHAT_MISTRAL, /* <s> [INST] user [/INST] assistant</s> [INST] ... (system folded into the first user turn) */
};
/* "chatml" / "mistral" -> template; -EINVAL for other names */
int moe_chat_template_from_name(const char *name, enum moe_chat_template *out);
/* From a tokenizer_config.json's chat_template string, when it is
 * recognisably one of ours; -ENOENT otherwise (then the INI decides). */
int moe_chat_template_detect(const char *tokenizer_config_path, enum moe_chat_template *out);
/* Renders messages into a prompt (malloc'ed). Roles other than system, user
 * and assistant, or an empty list, are -EINVAL with a message. bos: the BOS
 * text to start with ("<s>") or NULL when the tokenizer adds it itself. */
int moe_chat_render(enum moe_chat_template t, const struct moe_chat_message *msgs, size_t n,
                    const char *bos, char **out);

#endif
