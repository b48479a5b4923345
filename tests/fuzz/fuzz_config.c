/* libFuzzer target: a model's architecture config, through the readers the
 * loaders use. An input starting with "GGUF" is a GGUF file (read from
 * memory) whose metadata moe_config_from_gguf reads; any other input is a
 * Hugging Face config.json for moe_config_from_hf, which picks the
 * architecture's row and runs its keys, hooks and checks. Either must answer
 * with a config or an error message, never crash; a config that passed is
 * written as a pack's "config" object and read back (moe_config_to_json,
 * moe_config_from_json), which must accept it unchanged in what it names.
 * Seeds: tests/fuzz/corpus/fuzz_config/ holds every arch fixture's v5 and v4
 * config.json and a small GGUF of each (tests/fuzz/make_arch_seeds.py). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model_int.h"

static void fuzz_check_msg(const char *name)
{
    const char *m = moe_err_msg();
    if (!m[0] || strchr(m, '\n') || !strstr(m, name))
        __builtin_trap(); /* every failure must say why, naming the file */
}

static char path[64];

static void fuzz_cleanup(void)
{
    unlink(path);
}

/* the pack's copy of a config reads back as the same model */
static void fuzz_roundtrip(const struct moe_config *cfg)
{
    json_t *o = moe_config_to_json(cfg);
    if (!o)
        return; /* out of memory */
    struct moe_config back;
    moe_err_clear();
    if (moe_config_from_json(o, "pack", &back) < 0)
        __builtin_trap();
    if (back.arch != cfg->arch || back.vocab != cfg->vocab || back.hidden != cfg->hidden ||
        back.n_layers != cfg->n_layers || back.n_experts != cfg->n_experts ||
        back.top_k != cfg->top_k || back.attn != cfg->attn ||
        memcmp(back.layer_dense, cfg->layer_dense, sizeof(cfg->layer_dense)))
        __builtin_trap();
    json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_config cfg;
    if (size >= 4 && !memcmp(data, "GGUF", 4)) {
        struct moe_gguf *g;
        moe_err_clear();
        if (moe_gguf_open_mem(data, size, "fuzz.gguf", &g) < 0) {
            fuzz_check_msg("fuzz.gguf");
            return 0;
        }
        moe_err_clear();
        if (moe_config_from_gguf(g, &cfg) < 0)
            fuzz_check_msg("fuzz.gguf");
        else
            fuzz_roundtrip(&cfg);
        moe_gguf_close(g);
        return 0;
    }

    if (!path[0]) {
        snprintf(path, sizeof(path), "/tmp/fuzz-config-%d.json", (int)getpid());
        atexit(fuzz_cleanup);
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    moe_err_clear();
    if (moe_config_from_hf(path, &cfg) < 0)
        fuzz_check_msg(path);
    else
        fuzz_roundtrip(&cfg);
    return 0;
}
