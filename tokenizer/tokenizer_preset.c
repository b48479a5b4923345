/* The pre-tokenizers of the model families people run, one row per preset:
 * its steps exactly as the family's tokenizer.json describes them (Hugging
 * Face pre-tokenizers, regexes in Oniguruma syntax as written there), the
 * tokenizer.ggml.pre names llama.cpp writes for it in GGUF files, what
 * llama.cpp sets with that name, and which of those families normalize to
 * NFC first (tokenizer.json says so; a GGUF does not). A GGUF's name picks its row; a
 * tokenizer.json runs its own steps and is recognised by them (the first
 * row with the same steps names it). A name not here fails the load.
 *
 * Sources: the tokenizer.json files of the models named (as transformers'
 * converters write them: Qwen2Converter, TikTokenConverter), the original
 * patterns quoted in llama.cpp's src/llama-vocab.cpp, and, where marked
 * "llama.cpp", llama.cpp's own regex list (no Hugging Face original known). */
#include "tokenizer/tokenizer_int.h"

#include <string.h>

#include "common/common.h"

#define SPLIT(re) \
    { .kind = MOE_TOK_STEP_SPLIT, .pattern = (re), .behavior = MOE_TOK_SPLIT_ISOLATED }
#define BYTES { .kind = MOE_TOK_STEP_BYTELEVEL }                      /* use_regex false */
#define BYTES_GPT2 { .kind = MOE_TOK_STEP_BYTELEVEL, .use_regex = true } /* the GPT-2 split */
#define DIGITS(each) { .kind = MOE_TOK_STEP_DIGITS, .individual = (each) }

/* (?i:'s|'t|'re|'ve|'m|'ll|'d): English contractions, any case */
#define CONTRACTIONS "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
/* cl100k: Llama 3, GLM-4.5, DBRX */
#define CL100K_RE CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" \
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen2 / Qwen3: digits one by one */
#define QWEN2_RE CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" \
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen3.5: marks stay with their letters */
#define QWEN35_RE CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}" \
    "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* o200k (GPT-4o, gpt-oss's o200k_harmony, MiniMax-M2, Llama 4): case-split words */
#define UPPER "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define LOWER "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
#define O200K_RE "[^\\r\\n\\p{L}\\p{N}]?" UPPER "*" LOWER "+" CONTRACTIONS "?" \
    "|[^\\r\\n\\p{L}\\p{N}]?" UPPER "+" LOWER "*" CONTRACTIONS "?" \
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Kimi-K2 (tokenization_kimi.py's pat_str): Han apart, o200k-like otherwise */
#define UPPER_NO_HAN "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]"
#define LOWER_NO_HAN "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]"
#define KIMI_RE "[\\p{Han}]+" \
    "|[^\\r\\n\\p{L}\\p{N}]?" UPPER_NO_HAN "*" LOWER_NO_HAN "+" CONTRACTIONS "?" \
    "|[^\\r\\n\\p{L}\\p{N}]?" UPPER_NO_HAN "+" LOWER_NO_HAN "*" CONTRACTIONS "?" \
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Mistral Nemo (tekken): o200k without contractions, digits one by one */
#define TEKKEN_RE "[^\\r\\n\\p{L}\\p{N}]?" UPPER "*" LOWER "+" \
    "|[^\\r\\n\\p{L}\\p{N}]?" UPPER "+" LOWER "*" \
    "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* DeepSeek-V3 / R1 / V3.1: numbers by three, CJK and kana runs, then words */
#define DSV3_NUM_RE "\\p{N}{1,3}"
#define DSV3_CJK_RE "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
#define DSV3_RE "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+" \
    "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+" \
    "|\\s+(?!\\S)|\\s+"
/* DeepSeek LLM / Coder (v1) */
#define DS_CJK_RE "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
#define DSLLM_LETTERS_RE "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf" \
    "\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a" \
    "\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5" \
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a" \
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d" \
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3" \
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115" \
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149" \
    "\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d" \
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17" \
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb" \
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
#define DSLLM_PUNCT_RE "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"

static const struct moe_tok_preset presets[] = {
    {
        .name = "gpt2",
        .models = "GPT-2, GPT-NeoX, OLMo / OLMoE, MPT, Jais, GigaChat, EXAONE 4",
        .gguf = { "gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "trillion", "gigachat",
                  "granite-docling", "exaone4", "mellum", "a.x-4.0", "modern-bert",
                  "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "jina-v1-en",
                  "jina-v2-code", "roberta-bpe" },
        .steps = { BYTES_GPT2 },
        .nfc = { "mpt", "olmo" }, /* GPT-NeoX's tokenizer.json */
    },
    {
        .name = "llama3",
        .models = "Llama 3.x, Falcon 3, Falcon-H1, LFM2",
        .gguf = { "llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral",
                  "midm-2.0", "lfm2", "jina-v5-nano" },
        .steps = { SPLIT(CL100K_RE), BYTES },
        .ignore_merges = true,
        .add_bos = true,
    },
    {
        .name = "glm4",
        .models = "GLM-4, GLM-4.5 / 4.6 / 4.7, GLM-5 (the cl100k split, as Llama 3)",
        .gguf = { "glm4", "glm5" },
        .steps = { SPLIT(CL100K_RE), BYTES },
        .ignore_merges = true,
    },
    {
        .name = "dbrx",
        .models = "DBRX, Smaug, ChatGLM-4 9B (the cl100k split, as Llama 3)",
        .gguf = { "dbrx", "smaug-bpe", "chatglm-bpe" },
        .steps = { SPLIT(CL100K_RE), BYTES },
    },
    {
        .name = "qwen2",
        .models = "Qwen2 / 2.5 / 3 (+ MoE), dots.llm1, DeepSeek-R1-Distill-Qwen, Hunyuan-A13B, "
                  "Solar Open, Grok-2, StableLM 2",
        .gguf = { "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2",
                  "hunyuan", "solar-open", "grok-2" },
        .steps = { SPLIT(QWEN2_RE), BYTES },
        .nfc = { "qwen2", "deepseek-r1-qwen" }, /* Qwen2Converter's NFC */
    },
    {
        .name = "qwen35",
        .models = "Qwen3.5",
        .gguf = { "qwen35" },
        .steps = { SPLIT(QWEN35_RE), BYTES }, /* no NFC: llama.cpp's qwen35 vectors */
    },
    {
        .name = "deepseek-v3",
        .models = "DeepSeek-V3 / R1 / V3.1 / V3.2, Hunyuan dense, JoyAI",
        .gguf = { "deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4" },
        .steps = { SPLIT(DSV3_NUM_RE), SPLIT(DSV3_CJK_RE), SPLIT(DSV3_RE), BYTES },
    },
    {
        .name = "deepseek-llm",
        .models = "DeepSeek LLM 7B / 67B, DeepSeek-MoE 16B, DeepSeek-V2",
        .gguf = { "deepseek-llm" },
        .steps = { SPLIT("[\r\n]"), SPLIT(DSLLM_LETTERS_RE), SPLIT(DSLLM_PUNCT_RE),
                   SPLIT("\\s+$"), SPLIT(DS_CJK_RE), DIGITS(true), BYTES },
    },
    {
        .name = "deepseek-coder",
        .models = "DeepSeek Coder (v1)",
        .gguf = { "deepseek-coder" },
        .steps = { SPLIT("[\r\n]"), SPLIT("\\s?\\p{L}+"), SPLIT("\\s?\\p{P}+"), SPLIT(DS_CJK_RE),
                   DIGITS(true), BYTES },
    },
    {
        .name = "gpt-4o",
        .models = "GPT-4o (o200k), gpt-oss (o200k_harmony), MiniMax-M2 / M2.x, Llama 4",
        .gguf = { "gpt-4o", "minimax-m2", "llama4", "kanana2", "talkie" },
        .steps = { SPLIT(O200K_RE), BYTES },
    },
    {
        .name = "kimi-k2",
        .models = "Kimi-K2 / K2.5 / K3 (tiktoken, converted)",
        .gguf = { "kimi-k2" },
        .steps = { SPLIT(KIMI_RE), BYTES },
    },
    {
        .name = "tekken",
        .models = "Mistral Nemo, Pixtral's tokenizer.json",
        .gguf = { "tekken" },
        .steps = { SPLIT(TEKKEN_RE), BYTES },
        .ignore_merges = true,
        .add_bos = true,
    },
    {
        .name = "starcoder",
        .models = "StarCoder 2, Command-R / R+, Refact, SmolLM, CodeShell, EXAONE 3, Minerva",
        .gguf = { "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone",
                  "minerva-7b", "mellum2" },
        .steps = { DIGITS(true), BYTES_GPT2 },
        .nfc = { "command-r" },
    },
    {
        .name = "falcon",
        .models = "Falcon 7B / 40B / 180B",
        .gguf = { "falcon" },
        .steps = { { .kind = MOE_TOK_STEP_PUNCTUATION, .behavior = MOE_TOK_SPLIT_CONTIGUOUS },
                   BYTES_GPT2, DIGITS(false), SPLIT("[0-9][0-9][0-9]") },
    },
    {
        .name = "bailingmoe",
        .models = "Ling / Ring (Bailing MoE, MoE 2.0), LLaDA-MoE",
        .gguf = { "bailingmoe", "bailingmoe2", "llada-moe" },
        .steps = { SPLIT("'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}+|\\p{N}"
                         "| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"),
                   BYTES },
    },
    {
        .name = "exaone-moe",
        .models = "K-EXAONE (MoE)",
        .gguf = { "exaone-moe" },
        .steps = { SPLIT(CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+"
                         "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"),
                   BYTES },
    },
    {
        .name = "tiny_aya",
        .models = "Tiny Aya, Cohere2 MoE (North)",
        .gguf = { "tiny_aya", "cohere2moe" },
        .steps = { SPLIT("\\d{1,3}(?=(?:\\d{3})*\\b)"), SPLIT(O200K_RE), BYTES },
    },
    {
        .name = "seed-coder",
        .models = "Seed-Coder",
        .gguf = { "seed-coder" },
        .steps = { SPLIT(CONTRACTIONS "|[^\r\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}"
                         "| ?[^\\s\\p{L}\\p{N}\r\n]+|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
                   BYTES },
    },
    {
        .name = "minicpm5",
        .models = "MiniCPM5",
        .gguf = { "minicpm5" },
        .steps = { SPLIT("\\p{N}{1,3}"),
                   SPLIT(CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+"
                         "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
                   BYTES },
        .ignore_merges = true,
    },
    {
        .name = "jais-2",
        .models = "Jais 2",
        .gguf = { "jais-2" },
        .steps = { SPLIT(CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
                         "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)"
                         "|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)"
                         "|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}"),
                   BYTES },
    },
    {
        .name = "ufakzeka",
        .models = "ufakzeka (the Qwen2 split without contractions)",
        .gguf = { "ufakzeka" },
        .steps = { SPLIT("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                         "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
                   BYTES },
    },
    {
        .name = "bloom",
        .models = "BLOOM, Poro, GPT-3 Finnish (llama.cpp's split)",
        .gguf = { "bloom", "poro-chat", "gpt3-finnish" },
        .steps = { SPLIT(" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"), BYTES },
    },
    {
        .name = "viking",
        .models = "Viking (llama.cpp's split)",
        .gguf = { "viking" },
        .steps = { SPLIT(" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"),
                   SPLIT("\\p{N}"), BYTES },
    },
    {
        .name = "superbpe",
        .models = "OLMo 2 SuperBPE (llama.cpp's split)",
        .gguf = { "superbpe" },
        .steps = { SPLIT("\\p{N}+"), SPLIT("(?=(\\d{3})+(?!\\d))"), BYTES },
    },
    {
        /* llama.cpp's own fallback for a gpt2 GGUF without tokenizer.ggml.pre
         * (it warns that quality suffers): no Hugging Face tokenizer has it */
        .name = "default",
        .models = "GGUF files without tokenizer.ggml.pre (llama.cpp's fallback)",
        .gguf = { "default" },
        .steps = { SPLIT("[\\p{P}\\$\\+<=>\\^~\\|]+"),
                   SPLIT("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
                         "|\\s+(?!\\S)"),
                   SPLIT("\\p{N}+"), SPLIT("[0-9][0-9][0-9]"), BYTES },
    },
};

static bool listed(const char *const *names, size_t n_names, const char *name, size_t len);

const struct moe_tok_preset *moe_tok_preset_by_gguf(const char *name, size_t len)
{
    for (size_t i = 0; i < MOE_ARRAY_SIZE(presets); i++)
        if (listed(presets[i].gguf, MOE_ARRAY_SIZE(presets[i].gguf), name, len))
            return &presets[i];
    return NULL;
}

static size_t n_steps(const struct moe_tok_preset *p)
{
    size_t n = 0;
    while (n < MOE_ARRAY_SIZE(p->steps) && p->steps[n].kind != MOE_TOK_STEP_NONE)
        n++;
    return n;
}

static bool listed(const char *const *names, size_t n_names, const char *name, size_t len)
{
    for (size_t k = 0; k < n_names && names[k]; k++)
        if (strlen(names[k]) == len && !memcmp(names[k], name, len))
            return true;
    return false;
}

int moe_tok_preset_apply(struct moe_tokenizer *tok, const struct moe_tok_preset *p,
                         const char *gguf_name, size_t len)
{
    int rc;
    if (listed(p->nfc, MOE_ARRAY_SIZE(p->nfc), gguf_name, len) &&
        (rc = moe_tok_add_norm(tok, MOE_TOK_NORM_NFC, "", 0, "", 0, NULL)))
        return rc;
    size_t n = n_steps(p);
    for (size_t i = 0; i < n; i++)
        if ((rc = moe_tok_add_step(tok, &p->steps[i])))
            return rc;
    tok->ignore_merges = p->ignore_merges;
    tok->pretok_name = p->name;
    return 0;
}

/* The same step as tokenizer.json would describe it? */
static bool same_step(const struct moe_tok_step *a, const struct moe_tok_step *b)
{
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case MOE_TOK_STEP_SPLIT: {
        size_t la = a->pattern_len ? a->pattern_len : strlen(a->pattern);
        size_t lb = b->pattern_len ? b->pattern_len : strlen(b->pattern);
        return la == lb && !memcmp(a->pattern, b->pattern, la) && a->literal == b->literal &&
               a->behavior == b->behavior && a->invert == b->invert;
    }
    case MOE_TOK_STEP_DIGITS:
        return a->individual == b->individual;
    case MOE_TOK_STEP_PUNCTUATION:
        return a->behavior == b->behavior;
    case MOE_TOK_STEP_BYTELEVEL:
        return a->use_regex == b->use_regex && a->add_prefix_space == b->add_prefix_space;
    case MOE_TOK_STEP_METASPACE:
        return false; /* no preset has one */
    default:
        return true;
    }
}

const char *moe_tok_preset_recognise(const struct moe_tokenizer *tok)
{
    if (tok->n_pres == 0)
        return "none";
    for (size_t i = 0; i < MOE_ARRAY_SIZE(presets); i++) {
        const struct moe_tok_preset *p = &presets[i];
        if (n_steps(p) != (size_t)tok->n_pres)
            continue;
        bool same = true;
        for (int k = 0; k < tok->n_pres && same; k++)
            same = same_step(&p->steps[k], &tok->pres[k].step);
        if (same)
            return p->name;
    }
    return "custom";
}
