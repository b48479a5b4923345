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

/* ---- one generation loop (engine_gen.c) ---------------------------------------
 * From a row of logits to the next token and the text to show, for the
 * engine's sequences, moe-run and the benchmarks alike: logprobs (from the
 * model's distribution as it came), logit_bias, the sampler under the
 * grammar's mask, end of generation, detokenization, stop strings, and
 * the reasons to end. */
#define MOE_LOGPROBS_MAX 20   /* top alternatives per token, as OpenAI */
#define MOE_TOKEN_BYTES 128   /* bytes of one token's text kept for logprobs */

/* One token's logprobs: its text's bytes (a control token's: none; longer
 * ones cut at MOE_TOKEN_BYTES), its log probability, and the most likely
 * tokens at its step. */
struct moe_token_text {
    float logprob;
    uint8_t len;
    char bytes[MOE_TOKEN_BYTES];
};
struct moe_token_logprob {
    struct moe_token_text tok;
    int32_t n_top;
    struct moe_token_text top[MOE_LOGPROBS_MAX];
};

struct moe_tokenizer;
struct moe_grammar;
/* What all sequences of one model share, used by one thread at a time:
 * scratch rows, and the vocabulary trie a grammar needs (made at the first). */
struct moe_gen_shared;
int moe_gen_shared_create(const struct moe_tokenizer *tok, int32_t vocab,
                          struct moe_gen_shared **out);
void moe_gen_shared_free(struct moe_gen_shared *sh);

struct moe_gen_params {
    struct moe_sampling sampling;
    const char *const *stop; /* stop strings (borrowed for the gen's life) */
    size_t n_stop;
    bool ignore_eos;
    int32_t max_new;         /* tokens to generate at most; < 0: no limit */
    bool logprobs;           /* each token's logprob ... */
    int32_t top_logprobs;    /* ... and this many alternatives */
    const int32_t *bias_id;  /* logit_bias (borrowed) */
    const float *bias;
    size_t n_bias;
    struct moe_grammar *grammar; /* the text must be a sentence of it; NULL: free */
    /* trigger: the grammar holds only from where the text first contains this
     * (its root starts with it: a tool call's opening tag under tool_choice
     * auto); NULL: from the start */
    const char *trigger;
};
struct moe_gen; /* one sequence's */
int moe_gen_create(struct moe_gen_shared *sh, const struct moe_gen_params *p,
                   struct moe_gen **out);
void moe_gen_free(struct moe_gen *g);

struct moe_gen_token {
    int32_t id;
    bool eog;          /* end of generation: not part of the text */
    const char *text;  /* the text to show now (whole characters, stop strings out) */
    size_t len;
    const char *finish; /* NULL: go on; "stop" or "length" */
    bool flush;        /* finishing: moe_gen_rest's text is output too (not after a stop
                        * string) */
    const struct moe_token_logprob *lp; /* logprobs asked: this token's */
    bool masked;       /* a grammar mask was built, taking mask_s seconds */
    double mask_s;
};
/* Samples the next token from lg (edited in place; hist: the tokens so far,
 * for the penalties) and takes it. 0, or -errno with the message set. The
 * text and lp stay valid until the next call. */
int moe_gen_step(struct moe_gen *g, float *lg, const int32_t *hist, size_t n_hist,
                 struct moe_gen_token *out);
/* At an end without a stop string: the bytes still held (a character's
 * start, as U+FFFD) as text, then *more: what the stop filter held back. */
size_t moe_gen_rest(struct moe_gen *g, const char **text, const char **more, size_t *n_more);
/* The tokens generated so far */
int32_t moe_gen_count(const struct moe_gen *g);
/* The logprob of token tok at row (NULL: none, as for a prompt's first
 * token) with n_top alternatives: echo's prompt logprobs */
void moe_gen_score(struct moe_gen_shared *sh, const float *row, int32_t n_top, int32_t tok,
                   struct moe_token_logprob *out);

/* ---- fill in the middle (engine_fim.c) ------------------------------------
 * The model's three FIM tokens (prefix, suffix, middle), -ENOENT naming the
 * spellings looked for when it has none; and a completion's prompt with its
 * suffix as those models were trained: [BOS] PRE prefix SUF suffix MID. */
struct moe_tokenizer;
int moe_fim_tokens(const struct moe_tokenizer *tok, int32_t out[3]);
int moe_fim_prompt(const struct moe_tokenizer *tok, const char *prefix, const char *suffix,
                   int32_t **ids, size_t *n_ids);

/* ---- chat templates -------------------------------------------------------------
 * Each format reproduces one model family's own chat template byte for byte
 * (transformers' apply_chat_template, add_generation_prompt=True, the
 * template's default thinking setting); tests/data/chat/ holds the real
 * templates and transformers' renderings. Values are stable (the daemon's
 * INI names them): add new ones before MOE_CHAT_COUNT. */
struct moe_chat_message;

enum moe_chat_template {
    MOE_CHAT_CHATML,  /* <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n */
    MOE_CHAT_MISTRAL, /* <s> [INST] user [/INST] assistant</s> [INST] ... (system folded into the first user turn) */
    MOE_CHAT_QWEN3,   /* ChatML, <think> parts dropped from answers before the last query */
    MOE_CHAT_DEEPSEEK_V2,              /* DeepSeek-V2 / V2-Lite: User: ...\n\nAssistant: ... */
    MOE_CHAT_DEEPSEEK_V3,              /* DeepSeek-V3 (and V3-0324) */
    MOE_CHAT_DEEPSEEK_R1,              /* DeepSeek-R1 as first published */
    MOE_CHAT_DEEPSEEK_R1_DISTILL,      /* DeepSeek-R1-Distill-*: prompt ends "<think>\n" */
    MOE_CHAT_DEEPSEEK_R1_DISTILL_QWEN, /* llama.cpp's R1-Distill-Qwen-32B: "<think>\n</think>" */
    MOE_CHAT_DEEPSEEK_R1_LLAMACPP,     /* llama.cpp's own R1 template */
    MOE_CHAT_DEEPSEEK_V31,             /* DeepSeek-V3.1 (thinking off) */
    MOE_CHAT_KIMI_K2,                  /* Kimi-K2: <|im_user|>user<|im_middle|>...<|im_end|> */
    MOE_CHAT_GLM45,                    /* GLM-4.5 / 4.6: [gMASK]<sop><|user|>\n... */
    MOE_CHAT_GPT_OSS,                  /* gpt-oss harmony, dated system message */
    MOE_CHAT_MINIMAX_M2,               /* MiniMax-M2: ]~b]user\n...[e~[\n */
    MOE_CHAT_ERNIE45,                  /* ERNIE-4.5: User: ...\nAssistant: ... */
    MOE_CHAT_QWEN35,                   /* Qwen3.5: contents trimmed, prompt ends "<think>\n" */
    MOE_CHAT_COUNT
};
/* "chatml", "mistral" (or "mixtral"), "qwen3", "deepseek-v3" ... -> template;
 * -EINVAL naming the known ones for other names */
int moe_chat_template_from_name(const char *name, enum moe_chat_template *out);
/* the name moe_chat_template_from_name takes */
const char *moe_chat_template_name(enum moe_chat_template t);
/* From a template's Jinja text: the format it renders, when it is
 * recognisably one of ours; -ENOENT otherwise. */
int moe_chat_template_classify(const char *text, enum moe_chat_template *out);
/* A tokenizer_config.json's chat_template: a string, or a list of {"name",
 * "template"} (the one named "default", else the first); malloc'ed, NULL
 * when it has none (or is not JSON). */
char *moe_chat_template_of_config(const char *json, size_t len);
/* The template of the model whose tokenizer_config.json this is: the
 * chat_template.jinja beside it (transformers 5 writes it there), else the
 * config's own; *where names which file. -ENOENT when there is none, -EINVAL
 * naming the file when the config is not JSON. */
int moe_chat_template_read(const char *tokenizer_config_path, char **text, const char **where);
/* That template's built-in format, when it is recognisably one of ours;
 * -ENOENT otherwise (then the INI decides). */
int moe_chat_template_detect(const char *tokenizer_config_path, enum moe_chat_template *out);

struct moe_chat_opts {
    /* the text the template's bos_token stands for ("<s>",
     * "<｜begin▁of▁sentence｜>"), for the formats whose template writes it
     * (ChatML and Mistral write it first too); NULL when the tokenizer adds
     * BOS itself */
    const char *bos;
    /* "YYYY-MM-DD" for templates that write today's date (gpt-oss); NULL:
     * today, UTC */
    const char *date;
};
/* Renders messages into a prompt (malloc'ed). Roles other than system, user
 * and assistant, an empty list, or a conversation the model's template
 * refuses, are -EINVAL with a message naming the message at fault. opts may
 * be NULL (no BOS text, today's date). */
int moe_chat_render(enum moe_chat_template t, const struct moe_chat_message *msgs, size_t n,
                    const struct moe_chat_opts *opts, char **out);

#endif
