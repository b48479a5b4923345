#!/usr/bin/env python3
"""Writes small synthetic MoE checkpoints (random, seeded, deterministic) in Hugging Face
layout, and optionally a GGUF file of the SAME weights in llama.cpp's conventions.

  /usr/bin/python3 tests/reference/make_arch_model.py --arch mixtral|qwen2_moe|qwen3_moe|olmoe \
      --out DIR [--dtype bf16|f16|f32] [--tied] [--shards N] [--seed S] \
      [--gguf FILE [--gguf-type f32|f16|bf16|q8_0]] \
      [--kv-heads N] [--mlp-only-layers "1,2"] [--clip-qkv X] [--norm-topk 0|1]

Also the library behind tests/reference/hf_to_gguf.py (convert_hf_to_gguf()).

=====================================================================================
HF -> GGUF MAPPING TABLE (what llama.cpp's convert_hf_to_gguf.py writes / llama.cpp reads)
=====================================================================================
Verified from (ggml-org/llama.cpp, read via the code index, 2025-26 tree):
  conversion/llama.py   LlamaModel: "MixtralForCausalLM" is registered on it; permute();
                        stacks block_sparse_moe.experts.N.w{1,2,3} -> feed_forward.experts.w*
  conversion/qwen.py    Qwen2MoeModel (expert/shared FF lengths, stacks mlp.experts.N.*),
                        Qwen3MoeModel(Qwen2MoeModel) (adds nothing but vocab handling)
  conversion/olmo.py    OlmoeModel (TextModel, no permute, rms eps forced to 1e-5)
  conversion/base.py    TextModel.set_gguf_parameters (generic keys), prepare_tensors
                        (bf16 -> f32 -> out type; F32 rules; `data = data_torch.numpy()`,
                        i.e. NO squeeze any more; Q8_0 on a bad row size falls back to F16)
  gguf-py/gguf/constants.py  Keys.*, TENSOR_NAMES, GGMLQuantizationType, LlamaFileType,
                        GGUFValueType;  gguf-py/gguf/tensor_mapping.py (HF name -> tensor)
  src/models/{llama,qwen2moe,qwen3moe,olmoe}.cpp  expected ne, required/optional flags,
                        graph (build_moe_ffn norm_w flag, q/k norm placement)
  src/llama-model.cpp llama_model_rope_type(): LLAMA -> NORM; QWEN2MOE, QWEN3MOE, OLMOE -> NEOX
  transformers models/{mixtral,qwen2_moe,qwen3_moe,olmoe}/modeling_*.py (HF side)

Conventions: "ne" = GGUF/ggml dims, ne[0] is the contiguous (fastest) one; the numpy array
written has shape reversed(ne), i.e. an HF [out, in] matrix is written as-is and has
ne = [in, out].  H = hidden_size, V = vocab, nh = heads, nkv = kv heads, hd = head_dim,
E = experts, F = expert FF size, Fs = shared-expert FF size, I = dense FF size, N = layer.

general.architecture:  Mixtral -> "llama"   Qwen2-MoE -> "qwen2moe"
                       Qwen3-MoE -> "qwen3moe"   OLMoE -> "olmoe"

HF tensor (torch shape)                          GGUF tensor                         ne             type
-----------------------------------------------  ----------------------------------  -------------  -----
model.embed_tokens.weight [V,H]                  token_embd.weight                   [H, V]         ftype
lm_head.weight [V,H]  (absent if tied)           output.weight (absent if tied)      [H, V]         ftype
model.norm.weight [H]                            output_norm.weight                  [H]            F32
model.layers.N.input_layernorm.weight            blk.N.attn_norm.weight              [H]            F32
model.layers.N.post_attention_layernorm.weight   blk.N.ffn_norm.weight               [H]            F32
  .self_attn.q_proj.weight [nh*hd,H]             blk.N.attn_q.weight                 [H, nh*hd]     ftype  (*P)
  .self_attn.k_proj.weight [nkv*hd,H]            blk.N.attn_k.weight                 [H, nkv*hd]    ftype  (*P)
  .self_attn.v_proj.weight [nkv*hd,H]            blk.N.attn_v.weight                 [H, nkv*hd]    ftype
  .self_attn.o_proj.weight [H,nh*hd]             blk.N.attn_output.weight            [nh*hd, H]     ftype
  .self_attn.{q,k,v,o}_proj.bias (if present)    blk.N.attn_{q,k,v,output}.bias      [rows]         F32    (*P on q,k)
     (Qwen2-MoE has q/k/v biases; Qwen3-MoE/OLMoE only if attention_bias; Mixtral none)
  .self_attn.q_norm.weight  qwen3_moe [hd]       blk.N.attn_q_norm.weight            [hd]           F32  per-head, before rope
  .self_attn.k_norm.weight  qwen3_moe [hd]       blk.N.attn_k_norm.weight            [hd]           F32  per-head, before rope
  .self_attn.q_norm.weight  olmoe [nh*hd]        blk.N.attn_q_norm.weight            [nh*hd] (=H)   F32  whole q, before split
  .self_attn.k_norm.weight  olmoe [nkv*hd]       blk.N.attn_k_norm.weight            [nkv*hd]       F32  whole k, before split
     (llama.cpp's olmoe loader declares BOTH as {n_embd}: it only loads OLMoE with nkv == nh)
router:
  mixtral  .block_sparse_moe.gate.weight [E,H]   blk.N.ffn_gate_inp.weight           [H, E]         F32 always
  others   .mlp.gate.weight [E,H]                blk.N.ffn_gate_inp.weight           [H, E]         F32 always
experts, torch.stack over e = 0..E-1 (dim 0), i.e. expert e is the slowest index:
  mixtral  .block_sparse_moe.experts.e.w1 [F,H]  blk.N.ffn_gate_exps.weight          [H, F, E]      ftype
  mixtral  .block_sparse_moe.experts.e.w3 [F,H]  blk.N.ffn_up_exps.weight            [H, F, E]      ftype
  mixtral  .block_sparse_moe.experts.e.w2 [H,F]  blk.N.ffn_down_exps.weight          [F, H, E]      ftype
  others   .mlp.experts.e.gate_proj [F,H]        blk.N.ffn_gate_exps.weight          [H, F, E]      ftype
  others   .mlp.experts.e.up_proj   [F,H]        blk.N.ffn_up_exps.weight            [H, F, E]      ftype
  others   .mlp.experts.e.down_proj [H,F]        blk.N.ffn_down_exps.weight          [F, H, E]      ftype
  (F = intermediate_size for mixtral and olmoe, moe_intermediate_size for qwen2/3_moe)
shared expert (qwen2_moe):
  .mlp.shared_expert_gate.weight [1,H]           blk.N.ffn_gate_inp_shexp.weight     [H]            F32 always
     (this file writes ne=[H] like llama.cpp's loader spec {n_embd} and older converters,
      which squeezed; the current converter no longer squeezes and writes ne=[H,1].
      A loader must accept both.  out += sigmoid(dot(w, y)) * shared_expert(y))
  .mlp.shared_expert.gate_proj [Fs,H]            blk.N.ffn_gate_shexp.weight         [H, Fs]        ftype
  .mlp.shared_expert.up_proj   [Fs,H]            blk.N.ffn_up_shexp.weight           [H, Fs]        ftype
  .mlp.shared_expert.down_proj [H,Fs]            blk.N.ffn_down_shexp.weight         [Fs, H]        ftype
dense FFN layers (qwen2/3_moe mlp_only_layers / decoder_sparse_step; llama.cpp's qwen2moe and
qwen3moe loaders do NOT support these -- moed extension, llama-style names):
  .mlp.gate_proj / up_proj [I,H], down_proj [H,I] blk.N.ffn_gate / ffn_up [H, I], ffn_down [I, H]   ftype

(*P) Q/K row permutation: ONLY for general.architecture == "llama" (Mixtral), whose llama.cpp
     rope is "NORM" (rotates adjacent pairs 2i, 2i+1).  conversion/llama.py LlamaModel.permute:
        gguf = hf.reshape(n, 2, rows//n//2, *rest).swapaxes(1, 2).reshape(hf.shape)
     with n = nh for q_proj (weight and bias), n = nkv for k_proj.  Inverse:
        hf = gguf.reshape(n, rows//n//2, 2, *rest).swapaxes(1, 2).reshape(gguf.shape)
     qwen2moe / qwen3moe / olmoe are NOT permuted: llama.cpp uses NEOX rope for them
     (pairs i, i + hd/2), which is exactly HF's rotate_half on the unpermuted rows.

Tensor types: "ftype" = the chosen output type (F32 / F16 / BF16 / Q8_0).  F32 always for
every 1-D tensor, every name ending "_norm.weight", ffn_gate_inp, ffn_gate_inp_shexp.
Q8_0 (ggml type 8): blocks of 32 consecutive values along ne[0]; each block = fp16 d
(2 bytes, d = max|x|/127) + 32 int8 q (q = round-half-away(x / d), 0 if d == 0); 34 bytes.
A tensor with ne[0] % 32 != 0 falls back to F16 (as llama.cpp does).
ggml types: F32 0, F16 1, Q8_0 8, BF16 30.   general.file_type: F32 0, F16 1, Q8_0 7, BF16 32.
BF16 = round-to-nearest-even of the fp32 value (exact for bf16 sources).

Metadata (u32 unless noted; written in this order):
  general.architecture (str) ; general.type (str) "model" ; general.name (str)
  {arch}.block_count                        num_hidden_layers
  {arch}.context_length                     max_position_embeddings
  {arch}.embedding_length                   hidden_size
  {arch}.feed_forward_length                intermediate_size  (llama/olmoe: this IS the expert FF
                                            size F; qwen2moe/qwen3moe: the dense-MLP size, the expert
                                            size is expert_feed_forward_length; llama.cpp falls back to
                                            feed_forward_length / expert_used_count only if it is absent)
  {arch}.attention.head_count               num_attention_heads
  {arch}.attention.head_count_kv            num_key_value_heads
  {arch}.rope.freq_base (f32)               rope_theta
  {arch}.attention.layer_norm_rms_epsilon (f32)  rms_norm_eps   (olmoe: converter forces 1e-5)
  {arch}.expert_count                       num_local_experts (mixtral) / num_experts
  {arch}.expert_used_count                  num_experts_per_tok
  {arch}.attention.key_length / value_length  head_dim -- ONLY if config.json has a non-null
                                            head_dim (qwen3_moe has; else hd = H / nh)
  general.file_type
  llama only:     llama.vocab_size ; llama.rope.dimension_count = head_dim or H/nh
  qwen2moe/qwen3moe: {arch}.expert_feed_forward_length = moe_intermediate_size
  qwen2moe:          qwen2moe.expert_shared_feed_forward_length = shared_expert_intermediate_size
  general.quantization_version = 2
  tokenizer.ggml.model (str) "gpt2"; tokenizer.ggml.pre (str) "gpt-2"; tokenizer.ggml.tokens
  (str array, exactly V entries); tokenizer.ggml.token_type (i32 array: 1 normal, 3 control,
  4 user-defined, 5 unused); tokenizer.ggml.merges (str array "a b"); tokenizer.ggml.bos_token_id,
  tokenizer.ggml.eos_token_id; tokenizer.ggml.add_bos_token / add_eos_token (bool)
norm_topk_prob: llama.cpp writes NO key for these four archs; it is hard-coded in the graph
  (build_moe_ffn norm_w): llama(Mixtral) = true, qwen2moe = false, qwen3moe = true, olmoe = false.
  Gating is softmax over all experts, then top-k, then (norm_w) divide by the sum of the k.
  moed extension: this writer adds `{arch}.expert_weights_norm` (bool; a real llama.cpp key,
  used by e.g. deepseek2) ONLY when the HF config disagrees with that hard-coded default.
  A loader should read it if present, else use the per-arch default above.
clip_qkv (olmoe): llama.cpp writes nothing and does not clamp; this writer adds
  `olmoe.attention.clamp_kqv` (f32, a real llama.cpp key used by olmo/dbrx) only if clip_qkv
  is non-null.  Clamp q, k (after q_norm/k_norm) and v to [-c, c].
Tied embeddings: no output.weight; llama and qwen3moe loaders fall back to token_embd;
  llama.cpp's qwen2moe and olmoe loaders REQUIRE output.weight (tied GGUFs of those two
  archs load in moed only).
File layout (GGUF v3, little endian): "GGUF", u32 version=3, u64 n_tensors, u64 n_kv; KVs
  (str key = u64 len + bytes, u32 type, value; array = u32 elem type, u64 n, elems; bool = 1
  byte); tensor infos (str name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset relative
  to the data section); zero padding to alignment 32 (no general.alignment key); tensor data,
  each tensor starting at a multiple of 32.

=====================================================================================
PART B: THE 2026 ARCHITECTURES (convert_new_arch below; checked equal, tensor bytes and every
metadata key, to the vendored llama.cpp (2026-10) convert_hf_to_gguf.py --outtype bf16 on all
fixtures of tests/data/arch: tests/reference/make_fixtures.py --check-llamacpp)
=====================================================================================
Read from: conversion/deepseek.py DeepseekV2Model, conversion/glm.py Glm4MoeModel,
conversion/gpt_oss.py GptOssModel, conversion/minimax.py MiniMaxM2Model, conversion/ernie.py
Ernie4_5MoeModel, conversion/dots1.py Dots1Model(Qwen2MoeModel), conversion/base.py
(TextModel.set_gguf_parameters, prepare_tensors), src/models/{deepseek2,glm4-moe,openai-moe,
minimax-m2,ernie4-5,ernie4-5-moe,dots1}.cpp, src/llama-model.cpp (rope types), llama-graph.cpp
(build_moe_ffn). Same conventions as part A (ne = reversed numpy shape).

B0. Common to all (TextModel.set_gguf_parameters; key <- config.json key):
  general.architecture (str), general.type "model", general.name, general.size_label (str,
    "{E}x{shared+per-expert params}", informational), general.file_type (u32: 32 = BF16;
    gpt-oss 38 = MOSTLY_MXFP4_MOE), general.quantization_version = 2
  {a}.block_count <- num_hidden_layers (glm4moe: + num_nextn_predict_layers)
  {a}.context_length <- max_position_embeddings
  {a}.embedding_length <- hidden_size
  {a}.feed_forward_length <- intermediate_size (the DENSE FFN for deepseek2/glm4moe/dots1/
                             ernie; the EXPERT FFN for gpt-oss and minimax-m2)
  {a}.attention.head_count <- num_attention_heads; {a}.attention.head_count_kv <-
                             num_key_value_heads (deepseek2: always 1)
  {a}.rope.scaling.type "yarn", .rope.scaling.factor (f32), .rope.scaling.original_context_length
    (u32), .rope.scaling.yarn_beta_fast / yarn_beta_slow (f32), [.rope.scaling.yarn_attn_factor if
    attention_factor]  <- rope_scaling / rope_parameters with rope_type|type "yarn" only.
    NOT written: YaRN "truncate" (ggml ALWAYS floors/ceils the correction range; gpt-oss has
    truncate false in HF, so llama.cpp's gpt-oss deviates from transformers there).
  {a}.rope.freq_base (f32) <- rope_theta; {a}.attention.layer_norm_rms_epsilon (f32) <- rms_norm_eps
  {a}.expert_count <- num_local_experts | num_experts | n_routed_experts (ernie: moe_num_experts)
  {a}.expert_used_count <- num_experts_per_tok (ernie: moe_k)
  {a}.expert_group_count <- n_group, {a}.expert_group_used_count <- topk_group (only if in config)
  {a}.expert_gating_func (u32: 1 softmax, 2 sigmoid) <- scoring_func, ONLY if config.json has one
  {a}.attention.key_length / value_length <- head_dim if config.json has one (deepseek2 then
                             overwrites both, see B1)
  Types: F32 for every 1-D tensor, every *_norm.weight, ffn_gate_inp.weight (routers) and every
  tensor whose name does not end in ".weight" (biases, also 2-D ones: exp_probs_b.bias, *_exps.bias);
  BF16 otherwise (gpt-oss experts MXFP4). Expert stacks: expert e is the slowest index.
  Shared names: embed_tokens -> token_embd [H,V]; lm_head -> output [H,V] (absent when tied:
  every loader falls back to token_embd); model.norm -> output_norm [H];
  layers.N.input_layernorm -> blk.N.attn_norm [H]; layers.N.post_attention_layernorm ->
  blk.N.ffn_norm [H] EXCEPT glm4moe and gpt-oss: blk.N.post_attention_norm [H] (same role).
  q/k rows are never permuted for these architectures (llama.cpp rope NORM = adjacent pairs for
  deepseek2 and ernie4_5-moe, whose HF rope is already interleaved; NEOX = (i, i+n_rot/2) for
  glm4moe, gpt-oss, minimax-m2, dots1, as their HF rotate_half).

B1. "deepseek2" <- DeepseekV2ForCausalLM, DeepseekV3ForCausalLM (also Kimi-K2: model_type
    "kimi_k2", architectures DeepseekV3ForCausalLM). MTP layers (model.layers.{>=L}) dropped.
  HF (torch shape)                                   GGUF                              ne                  type
  self_attn.q_proj [nh*(nope+rope), H] (q_lora null) blk.N.attn_q.weight               [H, nh*(nope+rope)] BF16
  self_attn.q_a_proj [qr, H]                         blk.N.attn_q_a.weight             [H, qr]             BF16
  self_attn.q_a_layernorm [qr]                       blk.N.attn_q_a_norm.weight        [qr]                F32
  self_attn.q_b_proj [nh*(nope+rope), qr]            blk.N.attn_q_b.weight             [qr, nh*(nope+rope)] BF16
  self_attn.kv_a_proj_with_mqa [kvr+rope, H]         blk.N.attn_kv_a_mqa.weight        [H, kvr+rope]       BF16
  self_attn.kv_a_layernorm [kvr]                     blk.N.attn_kv_a_norm.weight       [kvr]               F32
  self_attn.kv_b_proj [nh*(nope+v), kvr]  SPLIT:     kvb = w.reshape(nh, nope+v, kvr)
     k part kvb[:, :nope, :] TRANSPOSED to [nh,kvr,nope] blk.N.attn_k_b.weight         [nope, kvr, nh]     BF16
     v part kvb[:, nope:, :]  as is        [nh,v,kvr]    blk.N.attn_v_b.weight         [kvr, v, nh]        BF16
     (the unsplit attn_kv_b only exists in old GGUFs; llama.cpp loads it only when not MLA)
  self_attn.o_proj [H, nh*v]                         blk.N.attn_output.weight          [nh*v, H]           BF16
  layers < first_k_dense_replace: mlp.gate_proj/up_proj [I,H], down_proj [H,I] -> blk.N.ffn_gate/ffn_up [H,I], ffn_down [I,H]
  mlp.gate.weight [E,H]                              blk.N.ffn_gate_inp.weight         [H, E]              F32
  mlp.gate.e_score_correction_bias [E] (V3 only)     blk.N.exp_probs_b.bias            [E]                 F32
  mlp.experts.e.gate_proj/up_proj [F,H] (stacked)    blk.N.ffn_gate_exps/ffn_up_exps.weight [H, F, E]      BF16
  mlp.experts.e.down_proj [H,F] (stacked)            blk.N.ffn_down_exps.weight        [F, H, E]           BF16
  mlp.shared_experts.gate_proj/up_proj [F*ns,H]      blk.N.ffn_gate_shexp/ffn_up_shexp.weight [H, F*ns]    BF16
  mlp.shared_experts.down_proj [H,F*ns]              blk.N.ffn_down_shexp.weight       [F*ns, H]           BF16
  Metadata (besides B0): deepseek2.leading_dense_block_count <- first_k_dense_replace;
  deepseek2.vocab_size; deepseek2.attention.q_lora_rank <- q_lora_rank (ABSENT when null: V2-Lite);
  deepseek2.attention.kv_lora_rank; deepseek2.attention.key_length = kv_lora_rank + qk_rope_head_dim
  and deepseek2.attention.value_length = kv_lora_rank (the absorbed-MQA view, NOT the head dims);
  deepseek2.attention.key_length_mla = qk_nope + qk_rope; deepseek2.attention.value_length_mla =
  v_head_dim; deepseek2.expert_feed_forward_length <- moe_intermediate_size;
  deepseek2.expert_shared_count <- n_shared_experts; deepseek2.expert_weights_scale (f32) <-
  routed_scaling_factor; deepseek2.expert_weights_norm (bool) = true ONLY when norm_topk_prob is
  true (absent = false); deepseek2.rope.dimension_count <- qk_rope_head_dim;
  deepseek2.rope.scaling.yarn_log_multiplier (f32) = 0.1 * mscale_all_dim (llama.cpp divides by 0.1
  again); expert_group_count / _used_count <- n_group / topk_group; expert_gating_func <-
  scoring_func (V3 "sigmoid" -> 2, V2 "softmax" -> 1; llama.cpp defaults an absent key to softmax).
  NOT in the GGUF: topk_method. V3 (noaux_tc) scores groups by the sum of their 2 best biased
  sigmoid scores; V2 group_limited_greedy by their BEST softmax probability; llama.cpp always
  uses the top-2 sum (so it differs from transformers for V2 with n_group > 1). A loader can tell
  them apart by expert_gating_func (softmax = V2 rule, sigmoid = V3 rule) or by exp_probs_b.
  transformers 5 never renormalises V2's top-k (norm_topk_prob is ignored by its V2 router; real
  V2/V2-Lite configs have it false anyway). Softmax scale: 1/sqrt(nope+rope), times
  mscale(factor, mscale_all_dim)^2 under YaRN; rope cos/sin times mscale(f, mscale) /
  mscale(f, mscale_all_dim) (1 when equal), mscale(f, m) = 0.1 m ln f + 1.
  llama.cpp itself only skips reading q_lora_rank for 26/27-layer (or 48-layer, vocab 128256)
  models, so a V2-Lite-shaped GGUF with another layer count does not load there; moed should
  take "no q_lora_rank key / attn_q present" as q_lora_rank null.
  transformers 5 writes "head_dim": qk_rope_head_dim and "qk_head_dim" into config.json: ignore.

B2. "glm4moe" <- Glm4MoeForCausalLM (GLM-4.5 / 4.5-Air / 4.6)
  self_attn.q_proj/k_proj/v_proj .weight + .bias     blk.N.attn_q/attn_k/attn_v .weight BF16, .bias F32
     (attention_bias: q, k, v only; o_proj has no bias)
  self_attn.o_proj                                   blk.N.attn_output.weight          [nh*hd, H]          BF16
  self_attn.q_norm / k_norm [hd] (use_qk_norm only)  blk.N.attn_q_norm / attn_k_norm.weight [hd]         F32
     (per head, before rope; llama.cpp loads them as optional: their presence IS use_qk_norm)
  post_attention_layernorm                           blk.N.post_attention_norm.weight  [H]                 F32
  router, exp_probs_b, experts, shared experts, dense layers: as B1
  Metadata: glm4moe.rope.dimension_count = int(head_dim * partial_rotary_factor) (0.5 when
  absent); glm4moe.expert_feed_forward_length; glm4moe.expert_shared_count;
  glm4moe.leading_dense_block_count <- first_k_dense_replace; glm4moe.expert_gating_func = 2
  (always); glm4moe.expert_weights_scale <- routed_scaling_factor; glm4moe.expert_weights_norm <-
  norm_topk_prob; glm4moe.nextn_predict_layers <- num_nextn_predict_layers (when in config; the MTP
  blocks are appended as blk.L.. with nextn.* tensors and counted in block_count; the fixtures
  have 0); attention.key_length/value_length <- head_dim; expert_group_count/_used <- n_group/topk_group.

B3. "gpt-oss" <- GptOssForCausalLM (MXFP4 checkpoints)
  self_attn.{q,k,v,o}_proj .weight / .bias           blk.N.attn_{q,k,v,output}.weight BF16 / .bias F32
  self_attn.sinks [nh]                               blk.N.attn_sinks.weight           [nh]                F32
  post_attention_layernorm                           blk.N.post_attention_norm.weight  [H]                 F32
  mlp.router.weight [E,H] / .bias [E]                blk.N.ffn_gate_inp.weight [H,E] / .bias [E]           F32
  mlp.experts.gate_up_proj_bias [E, 2F]  even cols   blk.N.ffn_gate_exps.bias          [F, E]              F32
                                          odd cols   blk.N.ffn_up_exps.bias            [F, E]              F32
  mlp.experts.down_proj_bias [E, H]                  blk.N.ffn_down_exps.bias          [H, E]              F32
  mlp.experts.gate_up_proj_blocks [E, 2F, H/32, 16] u8 + _scales [E, 2F, H/32] u8:
     rows 0::2 (gate)                                blk.N.ffn_gate_exps.weight        [H, F, E]           MXFP4
     rows 1::2 (up)                                  blk.N.ffn_up_exps.weight          [H, F, E]           MXFP4
  mlp.experts.down_proj_blocks [E, H, F/32, 16] + _scales [E, H, F/32]
                                                     blk.N.ffn_down_exps.weight        [F, H, E]           MXFP4
  (HF rows = output units; the dequantised HF parameter is gate_up_proj [E, H, 2F] = blocks
  transposed: x @ W, gate = columns 0::2, up = columns 1::2.)
  MXFP4 (ggml type 39, 17 bytes per 32 values along ne[0]): byte 0 = the e8m0 exponent (the HF
  *_scales byte as is), bytes 1..16: qs[j] = code(j) | code(j+16) << 4. HF *_blocks byte j =
  code(2j) | code(2j+1) << 4 (low nibble first). code = E2M1: bit 3 sign, bits 0-2 index into
  {0, .5, 1, 1.5, 2, 3, 4, 6}; value = that * 2^(scale - 127).
  Metadata: gpt-oss.attention.sliding_window <- sliding_window; gpt-oss.expert_feed_forward_length
  <- intermediate_size; key_length = value_length = head_dim; YaRN keys (B0).
  NOT in the GGUF (fixed in llama.cpp for gpt-oss): layer_types (even layers sliding, odd full:
  load_swa_pattern(2)), swiglu_limit 7.0 and alpha 1.702, router = softmax over the top-k logits
  (SOFTMAX_WEIGHT), YaRN without truncation (HF truncate false; llama.cpp truncates), sinks.

B4. "minimax-m2" <- MiniMaxM2ForCausalLM
  self_attn.{q,k,v,o}_proj                           blk.N.attn_{q,k,v,output}.weight                      BF16
  self_attn.q_norm [nh*hd]                           blk.N.attn_q_norm.weight          [nh*hd]             F32
  self_attn.k_norm [nkv*hd]                          blk.N.attn_k_norm.weight          [nkv*hd]            F32
     (RMSNorm over the WHOLE projection before the split into heads: qk_norm_type "per_layer")
  block_sparse_moe.gate.weight [E,H]                 blk.N.ffn_gate_inp.weight         [H, E]              F32
  block_sparse_moe.e_score_correction_bias [E]       blk.N.exp_probs_b.bias            [E]                 F32
  block_sparse_moe.experts.e.w1 [F,H] (gate)         blk.N.ffn_gate_exps.weight        [H, F, E]           BF16
  block_sparse_moe.experts.e.w3 [F,H] (up)           blk.N.ffn_up_exps.weight          [H, F, E]           BF16
  block_sparse_moe.experts.e.w2 [H,F] (down)         blk.N.ffn_down_exps.weight        [F, H, E]           BF16
  Metadata: minimax-m2.expert_feed_forward_length <- intermediate_size; minimax-m2.rope.dimension_count
  <- rotary_dim (REQUIRED: convert_hf_to_gguf fails on a config.json without rotary_dim, e.g. one
  written by transformers 5 from partial_rotary_factor alone); expert_gating_func <- scoring_func;
  key_length/value_length <- head_dim. NOT in the GGUF: top-k renormalisation (llama.cpp
  hard-codes it true), use_routing_bias (the tensor's presence).

B5. "ernie4_5-moe" <- Ernie4_5_MoeForCausalLM (ERNIE-4.5-21B-A3B, -300B-A47B)
  self_attn.{q,k,v,o}_proj (+ .bias if use_bias)     blk.N.attn_{q,k,v,output}.weight                      BF16
  mlp.gate.weight [E,H]                              blk.N.ffn_gate_inp.weight         [H, E]              F32
  mlp.moe_statics.e_score_correction_bias [1, E]     blk.N.exp_probs_b.bias            [E, 1] (2-D)        F32
  mlp.experts.e.*, mlp.shared_experts.*, dense mlp.*: as B1 (shared FFN = F * moe_num_shared_experts)
  lm_head: absent (tie_word_embeddings true in the published models): output = token_embd.
  Metadata: ernie4_5-moe.expert_count <- moe_num_experts; .expert_used_count <- moe_k;
  .interleave_moe_layer_step <- moe_layer_interval; .leading_dense_block_count <-
  moe_layer_start_index; .expert_feed_forward_length <- moe_intermediate_size;
  .expert_shared_count <- moe_num_shared_experts; .expert_shared_feed_forward_length =
  intermediate_size // num_key_value_heads (a converter heuristic that equals
  moe_intermediate_size * moe_num_shared_experts for the published models; trust the shexp shapes).
  NOT in the GGUF: moe_layer_end_index (llama.cpp: MoE at every layer >= start with (i+1) % step
  == 0, i.e. end = the last layer, as published), moe_norm_min, the gating (softmax; the bias is
  added to the probabilities for the choice only; the chosen probabilities are renormalised).
  HF rope is interleaved (pairs (2i, 2i+1)), llama.cpp NORM: no permutation.

B6. "dots1" <- Dots1ForCausalLM (dots.llm1)
  self_attn.{q,k,v,o}_proj                           blk.N.attn_{q,k,v,output}.weight                      BF16
  self_attn.q_norm / k_norm [hd]                     blk.N.attn_q_norm / attn_k_norm.weight [hd]           F32
  router, exp_probs_b, experts, shared experts, dense layers: as B1
  Metadata: dots1.expert_feed_forward_length <- moe_intermediate_size; .leading_dense_block_count <-
  first_k_dense_replace; .expert_shared_count <- n_shared_experts; .expert_weights_scale <-
  routed_scaling_factor; .expert_weights_norm <- norm_topk_prob; .expert_gating_func <-
  scoring_func ("sigmoid" in the published config); expert_count <- n_routed_experts; n_group /
  topk_group only if present (absent in the published config: one group).
  llama.cpp's dots1 loader sizes K/V as head_dim * n_head: it loads MHA models only (as published).

B7. "llama" (Mixtral) addition: llama.attention.sliding_window (u32) <- sliding_window, a moed
  extension (a real llama.cpp key of other architectures): llama.cpp's converter drops Mixtral's
  sliding window, so its GGUF cannot reproduce transformers beyond the window. Absent = no window.
  transformers applies the window to every layer: query q sees keys j with q - W < j <= q.

B8. Config keys transformers 5 writes differently from 4.x (config.json of v5/ vs v4/):
  "rope_parameters": {"rope_theta", "rope_type", [factor, original_max_position_embeddings,
  beta_fast, beta_slow, mscale, mscale_all_dim, truncate, partial_rotary_factor], and "type" when
  given} replaces top-level "rope_theta" / "rope_scaling" / "partial_rotary_factor"; "dtype"
  replaces "torch_dtype" (4.57 also writes "dtype"); Qwen3-MoE writes "num_local_experts" for
  "num_experts"; DeepSeek-V3 gains "head_dim" (= qk_rope_head_dim) and
  "qk_head_dim". Keys a config class does not know (scoring_func, topk_method, rotary_dim,
  use_qk_norm, ...) are kept as they were given. Weights: transformers 5 holds experts fused
  (mlp.experts.gate_up_proj [E, 2F, H], down_proj [E, H, F]) but save_pretrained writes them back
  per expert under the original names (mlp.experts.e.{gate,up,down}_proj.weight; Mixtral and
  MiniMax-M2: block_sparse_moe.experts.e.w1/w2/w3; ERNIE: mlp.moe_statics.e_score_correction_bias
  [1, E]); gpt-oss keeps its fused gate_up_proj [E, H, 2F] / down_proj [E, F, H] (+ _bias).
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_ref  # noqa: E402  (safetensors reader shared with the oracle)

ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
GGUF_ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe"}
HF_CLASS = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
            "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}
NORM_TOPK_LLAMACPP = {"llama": True, "qwen2moe": False, "qwen3moe": True, "olmoe": False}

# ----------------------------------------------------------------------------
# dtype helpers
# ----------------------------------------------------------------------------


def f32_to_bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16); NaN kept quiet."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def round_to_dtype(x, dtype):
    """float32 array -> float32 array holding exactly the values representable in dtype."""
    if dtype == "f32":
        return x.astype(np.float32)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return moe_ref.bf16_bits_to_f32(f32_to_bf16_bits(x))
    raise ValueError(dtype)


def quantize_q8_0(x):
    """x: float32, shape (..., K) with K % 32 == 0 -> raw bytes (uint8 array) in ggml order."""
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    d = np.max(np.abs(blocks), axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = blocks * inv
    a = np.abs(v)
    q = np.sign(v) * (np.floor(a) + np.floor(2 * (a - np.floor(a))))  # round half away from 0
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.astype(np.int8).view(np.uint8)
    return out.reshape(-1)


# ----------------------------------------------------------------------------
# safetensors writer
# ----------------------------------------------------------------------------

_ST_NAME = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def _st_bytes(x, dtype):
    if dtype == "f32":
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    if dtype == "f16":
        return np.ascontiguousarray(x.astype("<f2")).tobytes()
    return f32_to_bf16_bits(x).astype("<u2").tobytes()


def write_safetensors(path, items, dtype):
    """items: list of (name, float32 ndarray) written in order with the given dtype."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, x in items:
        b = _st_bytes(x, dtype)
        header[name] = {"dtype": _ST_NAME[dtype], "shape": list(x.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def write_hf_weights(out_dir, items, dtype, shards=1):
    """Writes model.safetensors, or N shards + model.safetensors.index.json."""
    if shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), items, dtype)
        return
    shards = min(shards, len(items))
    bounds = np.linspace(0, len(items), shards + 1).round().astype(int)
    wm, total = {}, 0
    for k in range(shards):
        fn = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = items[bounds[k]:bounds[k + 1]]
        total += write_safetensors(os.path.join(out_dir, fn), part, dtype)
        for name, _ in part:
            wm[name] = fn
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)


# ----------------------------------------------------------------------------
# minimal byte-level BPE tokenizer (HF tokenizer.json) and its GGUF form
# ----------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def make_tokenizer_json(vocab_size):
    """Byte-level BPE: ids 0..255 = bytes, then single-level merges, then <s>, </s>."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    n_merge = vocab_size - 2 - 256
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    cands = [b2u[0x20] + c for c in letters] + [a + b for a in letters for b in letters]
    merges = []
    for a_b in cands[:n_merge]:
        vocab[a_b] = len(vocab)
        merges.append([a_b[0], a_b[1:]])
    if len(vocab) != vocab_size - 2:
        raise ValueError("vocab too large for the synthetic merge list")
    added = [{"id": vocab_size - 2, "content": "<s>", "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True},
             {"id": vocab_size - 1, "content": "</s>", "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


def gguf_vocab_from_hf(hf_dir, vocab_size, cfg):
    """tokenizer.json -> (tokens, token types, merges, extra kv list) the way _set_vocab_gpt2 does."""
    path = os.path.join(hf_dir, "tokenizer.json")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [5] * vocab_size  # UNUSED
    merges = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        for tok, i in tj["model"]["vocab"].items():
            if i < vocab_size:
                tokens[i], types[i] = tok, 1
        for a in tj.get("added_tokens", []):
            if a["id"] < vocab_size:
                tokens[a["id"]] = a["content"]
                types[a["id"]] = 3 if a.get("special") else 4
        for m in tj["model"].get("merges", []):
            merges.append(m if isinstance(m, str) else " ".join(m))
    else:  # no tokenizer: bytes, then filler
        b2u = bytes_to_unicode()
        for b in range(min(256, vocab_size)):
            tokens[b], types[b] = b2u[b], 1
    kv = []
    tc = {}
    tcp = os.path.join(hf_dir, "tokenizer_config.json")
    if os.path.isfile(tcp):
        with open(tcp, encoding="utf-8") as f:
            tc = json.load(f)
    for key, cfgkey in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        v = cfg.get(cfgkey)
        if isinstance(v, list):
            v = v[0] if v else None
        if v is not None and 0 <= int(v) < vocab_size:
            kv.append(("tokenizer.ggml." + key, "u32", int(v)))
    for key in ("add_bos_token", "add_eos_token"):
        if key in tc and isinstance(tc[key], bool):
            kv.append(("tokenizer.ggml." + key, "bool", tc[key]))
    return tokens, types, merges, kv


# ----------------------------------------------------------------------------
# GGUF writer
# ----------------------------------------------------------------------------

GGML_TYPE = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
ALIGN = 32


class GGUFWriter:
    def __init__(self):
        self.kv = []       # (key, kind, value)
        self.tensors = []  # (name, ne, ggml_type, bytes)

    def add(self, key, kind, value):
        for i, (k, _, _) in enumerate(self.kv):
            if k == key:  # like gguf-py: a duplicate key overwrites
                self.kv[i] = (key, kind, value)
                return
        self.kv.append((key, kind, value))

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def _value(self, kind, v):
        if kind == "u32":
            return struct.pack("<I", 4) + struct.pack("<I", v)
        if kind == "i32":
            return struct.pack("<I", 5) + struct.pack("<i", v)
        if kind == "f32":
            return struct.pack("<I", 6) + struct.pack("<f", v)
        if kind == "bool":
            return struct.pack("<I", 7) + struct.pack("<B", 1 if v else 0)
        if kind == "str":
            return struct.pack("<I", 8) + self._str(v)
        if kind == "arr_str":
            return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(self._str(s) for s in v)
        if kind == "arr_i32":
            return struct.pack("<IIQ", 9, 5, len(v)) + np.asarray(v, dtype="<i4").tobytes()
        if kind == "arr_f32":
            return struct.pack("<IIQ", 9, 6, len(v)) + np.asarray(v, dtype="<f4").tobytes()
        raise ValueError(kind)

    def add_tensor(self, name, x, qtype):
        """x: float32 ndarray in numpy order (ne = reversed(shape)); qtype f32|f16|bf16|q8_0."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        ne = list(reversed(x.shape))
        if qtype == "q8_0" and ne[0] % 32 != 0:
            qtype = "f16"  # llama.cpp: QuantError -> falls back to F16
        if qtype == "f32":
            b = x.astype("<f4").tobytes()
        elif qtype == "f16":
            b = x.astype("<f2").tobytes()
        elif qtype == "bf16":
            b = f32_to_bf16_bits(x).astype("<u2").tobytes()
        elif qtype == "q8_0":
            b = quantize_q8_0(x).tobytes()
        else:
            raise ValueError(qtype)
        self.tensors.append((name, ne, GGML_TYPE[qtype], b))

    def add_raw_tensor(self, name, ne, ggml_type, data):
        """A tensor already in its ggml block layout (e.g. MXFP4)."""
        self.tensors.append((name, list(ne), ggml_type, data))

    def size_label(self):
        """general.size_label as gguf-py computes it: "{experts}x{shared + per-expert params}"
        (K/M/B, at least 2 significant digits) when there are *_exps.* tensors of 3 dims."""
        total = shared = expert = expert_sum = n_exp = 0
        for name, ne, _, _ in self.tensors:
            shape = list(reversed(ne))
            size = int(np.prod(ne))
            total += size
            if "_exps." in name and len(shape) >= 3:
                ec = shape[-2 if ".bias" in name else -3]
                expert += size // ec
                expert_sum += ec
                n_exp += 1
            else:
                shared += size

        def pretty(n):
            for lim, scale, suf in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M")):
                if n > lim:
                    break
            else:
                scale, suf = 1e-3, "K"
            v = n * scale
            fix = max(2 - len(str(round(v)).lstrip("0")), 0)
            return f"{v:.{fix}f}{suf}"
        if n_exp:
            return f"{expert_sum // n_exp}x{pretty(shared + expert)}"
        return pretty(total)

    def write(self, path):
        head = b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for k, kind, v in self.kv:
            head += self._str(k) + self._value(kind, v)
        off, infos = 0, b""
        for name, ne, t, b in self.tensors:
            infos += self._str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
            infos += struct.pack("<IQ", t, off)
            off += (len(b) + ALIGN - 1) // ALIGN * ALIGN
        head += infos
        with open(path, "wb") as f:
            f.write(head)
            f.write(b"\0" * ((ALIGN - len(head) % ALIGN) % ALIGN))
            for _, _, _, b in self.tensors:
                f.write(b)
                f.write(b"\0" * ((ALIGN - len(b) % ALIGN) % ALIGN))


# ----------------------------------------------------------------------------
# HF dir -> GGUF (llama.cpp's way)
# ----------------------------------------------------------------------------


def hf_arch(cfg):
    mt = cfg.get("model_type")
    if mt in ARCHS:
        return mt
    arch = (cfg.get("architectures") or [""])[0]
    for k, v in HF_CLASS.items():
        if v == arch:
            return k
    raise ValueError(f"unsupported HF model (model_type={mt!r}, architectures={arch!r})")


def permute_llama_qk(w, n):
    """conversion/llama.py LlamaModel.permute (n = nh for q, nkv for k)."""
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_hf_to_gguf(hf_dir, out_path, qtype="f16", name=None, vocab=True, pre=None):
    """vocab: True = always write tokenizer.ggml.* (a byte vocabulary when the directory has no
    tokenizer.json), "auto" = only from a tokenizer.json, False = never. pre: the vocabulary's
    tokenizer.ggml.pre (what convert_hf_to_gguf's tokenizer hash gives the real family); None =
    the architecture's usual one."""
    if qtype not in GGML_TYPE:
        raise ValueError(f"--type must be one of {sorted(GGML_TYPE)}")
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    if (cfg.get("architectures") or [""])[0] in NEW_ARCHS:
        if qtype != "bf16":
            raise ValueError("the new architectures are written with bf16 matrices only")
        return convert_new_arch(hf_dir, out_path, cfg, name,
                                vocab=vocab if vocab != "auto" else os.path.isfile(os.path.join(hf_dir, "tokenizer.json")),
                                pre=pre)
    # transformers 5 writes rope_theta inside rope_parameters and num_local_experts for num_experts
    if cfg.get("rope_theta") is None and (cfg.get("rope_parameters") or {}).get("rope_theta") is not None:
        cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    if cfg.get("num_experts") is None and cfg.get("num_local_experts") is not None:
        cfg["num_experts"] = cfg["num_local_experts"]
    arch = hf_arch(cfg)
    ga = GGUF_ARCH[arch]
    t = moe_ref.read_hf_dir(hf_dir)
    H = int(cfg["hidden_size"])
    nh = int(cfg["num_attention_heads"])
    nkv = int(cfg.get("num_key_value_heads") or nh)
    L = int(cfg["num_hidden_layers"])
    E = int(cfg["num_local_experts"] if arch == "mixtral" else cfg.get("num_experts", 0))
    V = t["model.embed_tokens.weight"].shape[0]
    tied = bool(cfg.get("tie_word_embeddings", False)) or "lm_head.weight" not in t
    probe = moe_ref.Model(cfg, t)  # for the dense/MoE layer rule

    w = GGUFWriter()
    w.add("general.architecture", "str", ga)
    w.add("general.type", "str", "model")
    w.add("general.name", "str", name or os.path.basename(os.path.normpath(hf_dir)))
    w.add(f"{ga}.block_count", "u32", L)
    if cfg.get("max_position_embeddings") is not None:
        w.add(f"{ga}.context_length", "u32", int(cfg["max_position_embeddings"]))
    w.add(f"{ga}.embedding_length", "u32", H)
    if cfg.get("intermediate_size") is not None:
        w.add(f"{ga}.feed_forward_length", "u32", int(cfg["intermediate_size"]))
    w.add(f"{ga}.attention.head_count", "u32", nh)
    w.add(f"{ga}.attention.head_count_kv", "u32", nkv)
    w.add(f"{ga}.rope.freq_base", "f32", float(cfg.get("rope_theta", 10000.0)))
    w.add(f"{ga}.attention.layer_norm_rms_epsilon", "f32", float(cfg.get("rms_norm_eps", 1e-6)))
    w.add(f"{ga}.expert_count", "u32", E)
    w.add(f"{ga}.expert_used_count", "u32", int(cfg["num_experts_per_tok"]))
    if cfg.get("head_dim") is not None:
        w.add(f"{ga}.attention.key_length", "u32", int(cfg["head_dim"]))
        w.add(f"{ga}.attention.value_length", "u32", int(cfg["head_dim"]))
    w.add("general.file_type", "u32", FILE_TYPE[qtype])
    if ga == "llama":
        w.add("llama.vocab_size", "u32", int(cfg.get("vocab_size", V)))
        w.add("llama.rope.dimension_count", "u32", int(cfg.get("head_dim") or H // nh))
    if ga in ("qwen2moe", "qwen3moe") and cfg.get("moe_intermediate_size") is not None:
        w.add(f"{ga}.expert_feed_forward_length", "u32", int(cfg["moe_intermediate_size"]))
    if ga == "qwen2moe" and cfg.get("shared_expert_intermediate_size") is not None:
        w.add(f"{ga}.expert_shared_feed_forward_length", "u32", int(cfg["shared_expert_intermediate_size"]))
    if ga == "olmoe":
        w.add("olmoe.attention.layer_norm_rms_epsilon", "f32", 1e-5)  # OlmoeModel does this
    # moed extensions (real llama.cpp key names), only where the HF config needs them
    if probe.norm_topk != NORM_TOPK_LLAMACPP[ga]:
        w.add(f"{ga}.expert_weights_norm", "bool", probe.norm_topk)
    if arch == "olmoe" and cfg.get("clip_qkv") is not None:
        w.add("olmoe.attention.clamp_kqv", "f32", float(cfg["clip_qkv"]))
    if arch == "mixtral" and cfg.get("sliding_window"):
        w.add("llama.attention.sliding_window", "u32", int(cfg["sliding_window"]))
    w.add("general.quantization_version", "u32", 2)
    if vocab is True or (vocab == "auto" and os.path.isfile(os.path.join(hf_dir, "tokenizer.json"))):
        tokens, types, merges, tkv = gguf_vocab_from_hf(hf_dir, V, cfg)
        w.add("tokenizer.ggml.model", "str", "gpt2")
        w.add("tokenizer.ggml.pre", "str", pre or "gpt-2")
        w.add("tokenizer.ggml.tokens", "arr_str", tokens)
        w.add("tokenizer.ggml.token_type", "arr_i32", types)
        w.add("tokenizer.ggml.merges", "arr_str", merges)
        for k, kind, v in tkv:
            w.add(k, kind, v)

    F32 = "f32"
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"], qtype)
    for i in range(L):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(g + "attn_norm.weight", t[p + "input_layernorm.weight"], F32)
        for hfn, gn in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            for suf in ("weight", "bias"):
                x = t.get(f"{p}self_attn.{hfn}.{suf}")
                if x is None:
                    continue
                if ga == "llama" and hfn in ("q_proj", "k_proj"):
                    x = permute_llama_qk(x, nh if hfn == "q_proj" else nkv)
                w.add_tensor(f"{g}{gn}.{suf}", x, F32 if x.ndim <= 1 else qtype)
        for hfn, gn in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
            if f"{p}self_attn.{hfn}.weight" in t:
                w.add_tensor(f"{g}{gn}.weight", t[f"{p}self_attn.{hfn}.weight"], F32)
        w.add_tensor(g + "ffn_norm.weight", t[p + "post_attention_layernorm.weight"], F32)
        if probe.is_moe_layer(i):
            moe = "block_sparse_moe" if arch == "mixtral" else "mlp"
            w.add_tensor(g + "ffn_gate_inp.weight", t[f"{p}{moe}.gate.weight"], F32)
            names = (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")) if arch == "mixtral" \
                else (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps"))
            for hfn, gn in names:
                stack = np.stack([t[f"{p}{moe}.experts.{e}.{hfn}.weight"] for e in range(E)], axis=0)
                w.add_tensor(f"{g}{gn}.weight", stack, qtype)
            if f"{p}mlp.shared_expert_gate.weight" in t:
                w.add_tensor(g + "ffn_gate_inp_shexp.weight", t[f"{p}mlp.shared_expert_gate.weight"].reshape(H), F32)
                for hfn, gn in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"),
                                ("down_proj", "ffn_down_shexp")):
                    w.add_tensor(f"{g}{gn}.weight", t[f"{p}mlp.shared_expert.{hfn}.weight"], qtype)
        else:
            for hfn, gn in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                w.add_tensor(f"{g}{gn}.weight", t[f"{p}mlp.{hfn}.weight"], qtype)
    w.add_tensor("output_norm.weight", t["model.norm.weight"], F32)
    if not tied:
        w.add_tensor("output.weight", t["lm_head.weight"], qtype)
    w.add("general.size_label", "str", w.size_label())
    w.write(out_path)
    return out_path


# ----------------------------------------------------------------------------
# the 2026 architectures (tables B1-B8 at the top): DeepSeek-V2/V3 (Kimi-K2), GLM-4.5,
# gpt-oss, MiniMax-M2, ERNIE-4.5-MoE, dots.llm1; read from an HF checkpoint directory
# ----------------------------------------------------------------------------

NEW_ARCHS = {
    "DeepseekV2ForCausalLM": "deepseek2", "DeepseekV3ForCausalLM": "deepseek2",
    "Glm4MoeForCausalLM": "glm4moe", "GptOssForCausalLM": "gpt-oss",
    "MiniMaxM2ForCausalLM": "minimax-m2", "Ernie4_5_MoeForCausalLM": "ernie4_5-moe",
    "Dots1ForCausalLM": "dots1",
}
GGML_MXFP4 = 39
FILE_TYPE_MXFP4_MOE = 38
# tokenizer.ggml.pre that convert_hf_to_gguf's tokenizer hash gives the real tokenizers
TOKENIZER_PRE = {"deepseek2": "deepseek-v3", "glm4moe": "glm4", "gpt-oss": "gpt-4o",
                 "minimax-m2": "minimax-m2", "dots1": "dots1", "qwen3moe": "qwen2",
                 "llama": "default", "ernie4_5-moe": "default"}


def _rope_params(cfg):
    """convert_hf_to_gguf's view: rope_parameters (transformers 5) or rope_scaling (4.x), with
    rope_type filled from the legacy 'type' and rope_theta from the top level."""
    rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if "rope_type" not in rp and "type" in rp:
        rp["rope_type"] = rp["type"]
    if "rope_theta" not in rp and cfg.get("rope_theta") is not None:
        rp["rope_theta"] = cfg["rope_theta"]
    return rp


def _first(cfg, *keys):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


def mxfp4_to_ggml(blocks, scales):
    """OpenAI layout (blocks u8 [..., G, 16]: byte j = element 2j (low nibble) | 2j+1 (high);
    scales u8 [..., G]) -> ggml MXFP4 blocks u8 [..., G, 17]: the scale byte, then byte j =
    element j (low nibble) | element j + 16 (high nibble). Same 4-bit codes and exponent."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    qs = (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)
    return np.concatenate([scales[..., None].astype(np.uint8), qs], axis=-1)


def ggml_to_mxfp4(raw):
    """The inverse of mxfp4_to_ggml: u8 [..., G, 17] -> (blocks [..., G, 16], scales [..., G])."""
    qs = raw[..., 1:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return blocks, raw[..., 0].copy()


def _kv_common(w, ga, cfg, L, E, rp):
    """TextModel.set_gguf_parameters (conversion/base.py), in its order."""
    w.add(f"{ga}.block_count", "u32", L)
    if cfg.get("max_position_embeddings") is not None:
        w.add(f"{ga}.context_length", "u32", int(cfg["max_position_embeddings"]))
    w.add(f"{ga}.embedding_length", "u32", int(cfg["hidden_size"]))
    ff = _first(cfg, "prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size")
    if ff is not None:
        w.add(f"{ga}.feed_forward_length", "u32", int(ff))
    w.add(f"{ga}.attention.head_count", "u32", int(cfg["num_attention_heads"]))
    nkv = 1 if ga == "deepseek2" else _first(cfg, "num_key_value_heads")
    if nkv is not None:
        w.add(f"{ga}.attention.head_count_kv", "u32", int(nkv))
    if rp.get("rope_type") == "yarn" and rp.get("factor") is not None:
        w.add(f"{ga}.rope.scaling.type", "str", "yarn")
        w.add(f"{ga}.rope.scaling.factor", "f32", float(rp["factor"]))
        w.add(f"{ga}.rope.scaling.original_context_length", "u32", int(rp["original_max_position_embeddings"]))
        if rp.get("extrapolation_factor") is not None:
            w.add(f"{ga}.rope.scaling.yarn_ext_factor", "f32", float(rp["extrapolation_factor"]))
        af = rp.get("attention_factor", rp.get("attn_factor"))
        if af is not None:
            w.add(f"{ga}.rope.scaling.yarn_attn_factor", "f32", float(af))
        if rp.get("beta_fast") is not None:
            w.add(f"{ga}.rope.scaling.yarn_beta_fast", "f32", float(rp["beta_fast"]))
        if rp.get("beta_slow") is not None:
            w.add(f"{ga}.rope.scaling.yarn_beta_slow", "f32", float(rp["beta_slow"]))
    if rp.get("rope_theta") is not None:
        w.add(f"{ga}.rope.freq_base", "f32", float(rp["rope_theta"]))
    if cfg.get("rms_norm_eps") is not None:
        w.add(f"{ga}.attention.layer_norm_rms_epsilon", "f32", float(cfg["rms_norm_eps"]))
    ne = _first(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    if ne is not None:
        w.add(f"{ga}.expert_count", "u32", int(ne))
    nu = _first(cfg, "num_experts_per_tok", "num_experts_per_token", "top_k_experts")
    if nu is not None:
        w.add(f"{ga}.expert_used_count", "u32", int(nu))
    if cfg.get("n_group") is not None:
        w.add(f"{ga}.expert_group_count", "u32", int(cfg["n_group"]))
    if cfg.get("topk_group") is not None:
        w.add(f"{ga}.expert_group_used_count", "u32", int(cfg["topk_group"]))
    sf = _first(cfg, "score_function", "scoring_func", "score_func", "moe_router_activation",
                "moe_router_activation_func", "expert_selection_fn")
    if sf is not None:
        if sf not in ("sigmoid", "softmax"):
            raise ValueError(f"unsupported expert score function {sf!r}")
        w.add(f"{ga}.expert_gating_func", "u32", 2 if sf == "sigmoid" else 1)
    if cfg.get("head_dim") is not None:
        w.add(f"{ga}.attention.key_length", "u32", int(cfg["head_dim"]))
        w.add(f"{ga}.attention.value_length", "u32", int(cfg["head_dim"]))


def _stack(t, fmt, E):
    return np.stack([t[fmt.format(e)] for e in range(E)], axis=0)


def convert_new_arch(hf_dir, out_path, cfg, name=None, vocab=True, pre=None):
    """HF checkpoint dir of a NEW_ARCHS model -> GGUF as convert_hf_to_gguf.py writes it with
    --outtype bf16 (matrices BF16, 1-D / norms / routers / biases F32, gpt-oss experts MXFP4)."""
    hfa = cfg["architectures"][0]
    ga = NEW_ARCHS[hfa]
    t = moe_ref.read_hf_dir(hf_dir)
    rp = _rope_params(cfg)
    L = int(cfg["num_hidden_layers"])
    H = int(cfg["hidden_size"])
    nh = int(cfg["num_attention_heads"])
    E = int(_first(cfg, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"))
    tied = bool(cfg.get("tie_word_embeddings", False)) or "lm_head.weight" not in t
    mxfp4 = (cfg.get("quantization_config") or {}).get("quant_method") == "mxfp4"
    B = "bf16"
    w = GGUFWriter()
    w.add("general.architecture", "str", ga)
    w.add("general.type", "str", "model")
    w.add("general.name", "str", name or os.path.basename(os.path.normpath(hf_dir)))
    w.add("general.size_label", "str", "")  # filled in below, once the tensors are known
    _kv_common(w, ga, cfg, L, E, rp)
    w.add("general.file_type", "u32", FILE_TYPE_MXFP4_MOE if mxfp4 else FILE_TYPE["bf16"])

    def add(name_, x, qtype=B):
        """The converter's type rule: F32 for 1-D tensors, *_norm.weight, ffn_gate_inp and
        anything not named *.weight (biases, exp_probs_b); else the output type."""
        if x.ndim <= 1 or name_.endswith("_norm.weight") or ".ffn_gate_inp." in name_ \
                or not name_.endswith(".weight"):
            qtype = "f32"
        w.add_tensor(name_, x, qtype)

    dense_lead = 0
    if ga == "deepseek2":
        first = cfg.get("first_k_dense_replace")
        dense_lead = int(first if first is not None else 0)
        w.add("deepseek2.leading_dense_block_count", "u32", dense_lead)
        w.add("deepseek2.vocab_size", "u32", int(cfg["vocab_size"]))
        if cfg.get("q_lora_rank") is not None:
            w.add("deepseek2.attention.q_lora_rank", "u32", int(cfg["q_lora_rank"]))
        kvr = int(cfg.get("kv_lora_rank", 512))
        w.add("deepseek2.attention.kv_lora_rank", "u32", kvr)
        w.add("deepseek2.attention.key_length", "u32", kvr + int(cfg["qk_rope_head_dim"]))
        w.add("deepseek2.attention.value_length", "u32", kvr)
        w.add("deepseek2.attention.key_length_mla", "u32", int(cfg["qk_nope_head_dim"]) + int(cfg["qk_rope_head_dim"]))
        w.add("deepseek2.attention.value_length_mla", "u32", int(cfg["v_head_dim"]))
        w.add("deepseek2.expert_feed_forward_length", "u32", int(_first(cfg, "moe_intermediate_size", "intermediate_size")))
        w.add("deepseek2.expert_count", "u32", E)
        w.add("deepseek2.expert_shared_count", "u32", int(cfg.get("n_shared_experts", 0)))
        if cfg.get("routed_scaling_factor") is not None:
            w.add("deepseek2.expert_weights_scale", "f32", float(cfg["routed_scaling_factor"]))
        if cfg.get("norm_topk_prob"):
            w.add("deepseek2.expert_weights_norm", "bool", True)
        w.add("deepseek2.rope.dimension_count", "u32", int(cfg["qk_rope_head_dim"]))
        if rp.get("mscale_all_dim") is not None:
            w.add("deepseek2.rope.scaling.yarn_log_multiplier", "f32", 0.1 * float(rp["mscale_all_dim"]))
    elif ga == "glm4moe":
        hd = cfg.get("head_dim") or H // nh
        w.add("glm4moe.rope.dimension_count", "u32", int(hd * rp.get("partial_rotary_factor",
                                                                       cfg.get("partial_rotary_factor", 0.5))))
        w.add("glm4moe.expert_count", "u32", E)
        w.add("glm4moe.expert_feed_forward_length", "u32", int(cfg["moe_intermediate_size"]))
        w.add("glm4moe.expert_shared_count", "u32", int(cfg["n_shared_experts"]))
        dense_lead = int(cfg.get("first_k_dense_replace") or 0)
        w.add("glm4moe.leading_dense_block_count", "u32", dense_lead)
        w.add("glm4moe.expert_gating_func", "u32", 2)
        if cfg.get("routed_scaling_factor") is not None:
            w.add("glm4moe.expert_weights_scale", "f32", float(cfg["routed_scaling_factor"]))
        if cfg.get("norm_topk_prob") is not None:
            w.add("glm4moe.expert_weights_norm", "bool", bool(cfg["norm_topk_prob"]))
        if cfg.get("num_nextn_predict_layers") is not None:
            w.add("glm4moe.nextn_predict_layers", "u32", int(cfg["num_nextn_predict_layers"]))
            L_mtp = int(cfg["num_nextn_predict_layers"])
            if L_mtp:
                w.add("glm4moe.block_count", "u32", L + L_mtp)
    elif ga == "gpt-oss":
        w.add("gpt-oss.attention.sliding_window", "u32", int(cfg["sliding_window"]))
        w.add("gpt-oss.expert_feed_forward_length", "u32", int(cfg["intermediate_size"]))
    elif ga == "minimax-m2":
        w.add("minimax-m2.expert_feed_forward_length", "u32", int(cfg["intermediate_size"]))
        if cfg.get("rotary_dim") is None:
            raise ValueError("minimax-m2: config.json has no rotary_dim (convert_hf_to_gguf needs it)")
        w.add("minimax-m2.rope.dimension_count", "u32", int(cfg["rotary_dim"]))
    elif ga == "ernie4_5-moe":
        w.add("ernie4_5-moe.expert_count", "u32", E)
        w.add("ernie4_5-moe.expert_used_count", "u32", int(cfg["moe_k"]))
        w.add("ernie4_5-moe.interleave_moe_layer_step", "u32", int(cfg["moe_layer_interval"]))
        dense_lead = int(cfg["moe_layer_start_index"])
        w.add("ernie4_5-moe.leading_dense_block_count", "u32", dense_lead)
        if cfg.get("moe_intermediate_size") is not None:
            w.add("ernie4_5-moe.expert_feed_forward_length", "u32", int(cfg["moe_intermediate_size"]))
        ns = cfg.get("moe_num_shared_experts")
        if ns is not None:
            w.add("ernie4_5-moe.expert_shared_count", "u32", int(ns))
            if ns > 0 and cfg.get("intermediate_size") is not None and cfg.get("num_key_value_heads") is not None:
                w.add("ernie4_5-moe.expert_shared_feed_forward_length", "u32",
                      int(cfg["intermediate_size"]) // int(cfg["num_key_value_heads"]))
    elif ga == "dots1":
        if cfg.get("moe_intermediate_size") is not None:
            w.add("dots1.expert_feed_forward_length", "u32", int(cfg["moe_intermediate_size"]))
        dense_lead = int(cfg["first_k_dense_replace"])
        w.add("dots1.leading_dense_block_count", "u32", dense_lead)
        w.add("dots1.expert_shared_count", "u32", int(cfg["n_shared_experts"]))
        w.add("dots1.expert_weights_scale", "f32", float(cfg["routed_scaling_factor"]))
        w.add("dots1.expert_weights_norm", "bool", bool(cfg["norm_topk_prob"]))
    w.add("general.quantization_version", "u32", 2)
    if vocab:
        _add_vocab(w, hf_dir, cfg, ga, int(cfg["vocab_size"]), pre)

    # tensors
    add("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(L):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        a = p + "self_attn."
        add(g + "attn_norm.weight", t[p + "input_layernorm.weight"])
        post = "post_attention_norm" if ga in ("glm4moe", "gpt-oss") else "ffn_norm"
        add(g + post + ".weight", t[p + "post_attention_layernorm.weight"])
        if ga == "deepseek2":
            if a + "q_proj.weight" in t:
                add(g + "attn_q.weight", t[a + "q_proj.weight"])
            else:
                add(g + "attn_q_a.weight", t[a + "q_a_proj.weight"])
                add(g + "attn_q_a_norm.weight", t[a + "q_a_layernorm.weight"])
                add(g + "attn_q_b.weight", t[a + "q_b_proj.weight"])
            add(g + "attn_kv_a_mqa.weight", t[a + "kv_a_proj_with_mqa.weight"])
            add(g + "attn_kv_a_norm.weight", t[a + "kv_a_layernorm.weight"])
            nope, vd = int(cfg["qk_nope_head_dim"]), int(cfg["v_head_dim"])
            kvb = t[a + "kv_b_proj.weight"].reshape(nh, nope + vd, -1)   # [nh, nope + v, kv_lora]
            add(g + "attn_k_b.weight", np.ascontiguousarray(kvb[:, :nope, :].transpose(0, 2, 1)))
            add(g + "attn_v_b.weight", np.ascontiguousarray(kvb[:, nope:, :]))
            add(g + "attn_output.weight", t[a + "o_proj.weight"])
        else:
            for hfn, gn in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
                for suf in ("weight", "bias"):
                    if f"{a}{hfn}.{suf}" in t:
                        add(f"{g}{gn}.{suf}", t[f"{a}{hfn}.{suf}"])
            for hfn, gn in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
                if f"{a}{hfn}.weight" in t:
                    add(f"{g}{gn}.weight", t[f"{a}{hfn}.weight"])
            if a + "sinks" in t:
                add(g + "attn_sinks.weight", t[a + "sinks"])
        # feed-forward
        m = p + "mlp."
        if ga == "gpt-oss":
            add(g + "ffn_gate_inp.weight", t[m + "router.weight"])
            add(g + "ffn_gate_inp.bias", t[m + "router.bias"])
            gub = t[m + "experts.gate_up_proj_bias"]
            add(g + "ffn_gate_exps.bias", np.ascontiguousarray(gub[:, 0::2]))
            add(g + "ffn_up_exps.bias", np.ascontiguousarray(gub[:, 1::2]))
            add(g + "ffn_down_exps.bias", t[m + "experts.down_proj_bias"])
            if not mxfp4:
                raise ValueError("gpt-oss: only the MXFP4 checkpoint layout is written")
            bl, sc = t[m + "experts.gate_up_proj_blocks"], t[m + "experts.gate_up_proj_scales"]
            for rows, gn in ((slice(0, None, 2), "ffn_gate_exps"), (slice(1, None, 2), "ffn_up_exps")):
                raw = mxfp4_to_ggml(bl[:, rows], sc[:, rows])
                w.add_raw_tensor(f"{g}{gn}.weight", [raw.shape[-2] * 32, raw.shape[1], raw.shape[0]],
                                 GGML_MXFP4, raw.tobytes())
            raw = mxfp4_to_ggml(t[m + "experts.down_proj_blocks"], t[m + "experts.down_proj_scales"])
            w.add_raw_tensor(g + "ffn_down_exps.weight", [raw.shape[-2] * 32, raw.shape[1], raw.shape[0]],
                             GGML_MXFP4, raw.tobytes())
            continue
        if ga in ("minimax-m2", "llama"):
            s = p + "block_sparse_moe."
            add(g + "ffn_gate_inp.weight", t[s + "gate.weight"])
            add(g + "exp_probs_b.bias", t[s + "e_score_correction_bias"])
            for wn, gn in (("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")):
                add(f"{g}{gn}.weight", _stack(t, s + "experts.{}." + wn + ".weight", E))
            continue
        if m + "gate.weight" not in t:         # a dense layer
            for hfn, gn in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                add(f"{g}{gn}.weight", t[f"{m}{hfn}.weight"])
            continue
        add(g + "ffn_gate_inp.weight", t[m + "gate.weight"])
        if m + "gate.e_score_correction_bias" in t:
            add(g + "exp_probs_b.bias", t[m + "gate.e_score_correction_bias"])
        if m + "moe_statics.e_score_correction_bias" in t:      # ERNIE: [1, E] -> ne [E, 1]
            add(g + "exp_probs_b.bias", t[m + "moe_statics.e_score_correction_bias"])
        for hfn, gn in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")):
            add(f"{g}{gn}.weight", _stack(t, m + "experts.{}." + hfn + ".weight", E))
        for hfn, gn in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")):
            if f"{m}shared_experts.{hfn}.weight" in t:
                add(f"{g}{gn}.weight", t[f"{m}shared_experts.{hfn}.weight"])
    add("output_norm.weight", t["model.norm.weight"])
    if not tied:
        add("output.weight", t["lm_head.weight"])
    w.add("general.size_label", "str", w.size_label())
    w.write(out_path)
    return out_path


def _add_vocab(w, hf_dir, cfg, ga, V, pre=None):
    """tokenizer.ggml.* from HF tokenizer.json, byte-level BPE only ("gpt2" + the family's pre),
    as convert_hf_to_gguf's _set_vocab_gpt2; nothing when the directory has no tokenizer.json,
    nor for a SentencePiece-style vocabulary (byte fallback: ERNIE, Mixtral), whose GGUF form
    llama.cpp builds from tokenizer.model with its scores (the GGUF then holds no vocabulary)."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    if (tj.get("model") or {}).get("type") != "BPE" or (tj["model"].get("byte_fallback")):
        print(f"note: {path}: not byte-level BPE: the GGUF gets no vocabulary", file=sys.stderr)
        return
    tokens, types, merges, tkv = gguf_vocab_from_hf(hf_dir, V, cfg)
    w.add("tokenizer.ggml.model", "str", "gpt2")
    w.add("tokenizer.ggml.pre", "str", pre or TOKENIZER_PRE.get(ga, "default"))
    w.add("tokenizer.ggml.tokens", "arr_str", tokens)
    w.add("tokenizer.ggml.token_type", "arr_i32", types)
    w.add("tokenizer.ggml.merges", "arr_str", merges)
    for k, kind, v in tkv:
        w.add(k, kind, v)


def gguf_to_hf_tensors(path):
    """The inverse of the tables: a GGUF written above (or by llama.cpp) -> {HF checkpoint name:
    array} (float32; gpt-oss MXFP4 as u8 blocks / scales), for round-trip checks."""
    meta, gt = moe_ref.read_gguf(path)
    ga = meta["general.architecture"]
    A = lambda k, d=None: meta.get(f"{ga}.{k}", d)  # noqa: E731
    L, nh = int(A("block_count")), int(A("attention.head_count"))
    out = {}
    put = out.__setitem__
    put("model.embed_tokens.weight", gt["token_embd.weight"])
    put("model.norm.weight", gt["output_norm.weight"])
    if "output.weight" in gt:
        put("lm_head.weight", gt["output.weight"])
    for i in range(L):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        a, m = p + "self_attn.", p + "mlp."
        put(p + "input_layernorm.weight", gt[g + "attn_norm.weight"])
        post = g + ("post_attention_norm" if ga in ("glm4moe", "gpt-oss") else "ffn_norm") + ".weight"
        put(p + "post_attention_layernorm.weight", gt[post])
        simple = {"attn_q_a.weight": a + "q_a_proj.weight", "attn_q_a_norm.weight": a + "q_a_layernorm.weight",
                  "attn_q_b.weight": a + "q_b_proj.weight", "attn_kv_a_mqa.weight": a + "kv_a_proj_with_mqa.weight",
                  "attn_kv_a_norm.weight": a + "kv_a_layernorm.weight", "attn_sinks.weight": a + "sinks"}
        for gn, hn in simple.items():
            if g + gn in gt:
                put(hn, gt[g + gn])
        for gn, hn in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj"),
                       ("attn_q_norm", "q_norm"), ("attn_k_norm", "k_norm")):
            for suf in ("weight", "bias"):
                if f"{g}{gn}.{suf}" in gt:
                    put(f"{a}{hn}.{suf}", gt[f"{g}{gn}.{suf}"])
        if ga == "llama":   # undo LlamaModel.permute (n = nh for q, nkv for k)
            nkv = int(A("attention.head_count_kv", nh))
            for hn, n in (("q_proj", nh), ("k_proj", nkv)):
                for suf in ("weight", "bias"):
                    if f"{a}{hn}.{suf}" in out:
                        put(f"{a}{hn}.{suf}", moe_ref.unpermute_llama_qk(out[f"{a}{hn}.{suf}"], n))
        if g + "attn_k_b.weight" in gt:   # [nh, kv_lora, nope] + [nh, v, kv_lora] -> [nh * (nope + v), kv_lora]
            kb, vb = gt[g + "attn_k_b.weight"], gt[g + "attn_v_b.weight"]
            kv = np.concatenate([kb.transpose(0, 2, 1), vb], axis=1)
            put(a + "kv_b_proj.weight", kv.reshape(-1, kv.shape[-1]))
        if ga == "gpt-oss":
            put(m + "router.weight", gt[g + "ffn_gate_inp.weight"])
            put(m + "router.bias", gt[g + "ffn_gate_inp.bias"])
            gb, ub = gt[g + "ffn_gate_exps.bias"], gt[g + "ffn_up_exps.bias"]
            put(m + "experts.gate_up_proj_bias", np.stack([gb, ub], axis=-1).reshape(gb.shape[0], -1))
            put(m + "experts.down_proj_bias", gt[g + "ffn_down_exps.bias"])
            (bg, sg), (bu, su) = ggml_to_mxfp4(gt[g + "ffn_gate_exps.weight"]), ggml_to_mxfp4(gt[g + "ffn_up_exps.weight"])
            put(m + "experts.gate_up_proj_blocks", np.stack([bg, bu], axis=2).reshape(bg.shape[0], -1, *bg.shape[2:]))
            put(m + "experts.gate_up_proj_scales", np.stack([sg, su], axis=2).reshape(sg.shape[0], -1, sg.shape[2]))
            bd, sd = ggml_to_mxfp4(gt[g + "ffn_down_exps.weight"])
            put(m + "experts.down_proj_blocks", bd)
            put(m + "experts.down_proj_scales", sd)
            continue
        if g + "ffn_gate_inp.weight" not in gt:
            for gn, hn in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
                put(f"{m}{hn}.weight", gt[f"{g}{gn}.weight"])
            continue
        if ga in ("minimax-m2", "llama"):
            s = p + "block_sparse_moe."
            put(s + "gate.weight", gt[g + "ffn_gate_inp.weight"])
            if g + "exp_probs_b.bias" in gt:
                put(s + "e_score_correction_bias", gt[g + "exp_probs_b.bias"])
            for gn, wn in (("ffn_gate_exps", "w1"), ("ffn_down_exps", "w2"), ("ffn_up_exps", "w3")):
                for e, x in enumerate(gt[f"{g}{gn}.weight"]):
                    put(f"{s}experts.{e}.{wn}.weight", x)
            continue
        put(m + "gate.weight", gt[g + "ffn_gate_inp.weight"])
        if g + "exp_probs_b.bias" in gt:
            b = gt[g + "exp_probs_b.bias"]
            put(m + ("moe_statics." if b.ndim == 2 else "gate.") + "e_score_correction_bias", b)
        for gn, hn in (("ffn_gate_exps", "gate_proj"), ("ffn_up_exps", "up_proj"), ("ffn_down_exps", "down_proj")):
            for e, x in enumerate(gt[f"{g}{gn}.weight"]):
                put(f"{m}experts.{e}.{hn}.weight", x)
        for gn, hn in (("ffn_gate_shexp", "gate_proj"), ("ffn_up_shexp", "up_proj"), ("ffn_down_shexp", "down_proj")):
            if f"{g}{gn}.weight" in gt:
                put(f"{m}shared_experts.{hn}.weight", gt[f"{g}{gn}.weight"])
    return out


# ----------------------------------------------------------------------------
# synthetic models
# ----------------------------------------------------------------------------


def synthetic_config(arch, tied=False, dtype="bf16", kv_heads=None, mlp_only_layers=None,
                     clip_qkv=None, norm_topk=None):
    base = {"architectures": [HF_CLASS[arch]], "model_type": arch, "hidden_act": "silu",
            "max_position_embeddings": 512, "initializer_range": 0.02, "attention_dropout": 0.0,
            "use_cache": True, "tie_word_embeddings": bool(tied),
            "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]}
    if arch == "mixtral":
        c = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                 num_experts_per_tok=2, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=None,
                 router_aux_loss_coef=0.01, output_router_logits=False)
    elif arch == "qwen2_moe":
        c = dict(vocab_size=768, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                 shared_expert_intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
                 decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6, rope_theta=1000000.0,
                 use_sliding_window=False, sliding_window=None, max_window_layers=3,
                 router_aux_loss_coef=0.001, output_router_logits=False)
    elif arch == "qwen3_moe":
        c = dict(vocab_size=640, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
                 mlp_only_layers=[], attention_bias=False, rms_norm_eps=1e-6, rope_theta=1000000.0,
                 use_sliding_window=False, sliding_window=None, max_window_layers=2,
                 router_aux_loss_coef=0.001, output_router_logits=False)
    elif arch == "olmoe":
        # llama.cpp's olmoe loader wants attn_k_norm of n_embd => n_kv == n_heads by default
        c = dict(vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
                 norm_topk_prob=False, clip_qkv=None, attention_bias=False, rms_norm_eps=1e-5,
                 rope_theta=10000.0, router_aux_loss_coef=0.01, output_router_logits=False)
    else:
        raise ValueError(arch)
    c.update(base)
    V = c["vocab_size"]
    c["bos_token_id"], c["eos_token_id"] = V - 2, V - 1
    if kv_heads is not None:
        c["num_key_value_heads"] = int(kv_heads)
    if mlp_only_layers:
        if arch not in ("qwen2_moe", "qwen3_moe"):
            raise ValueError("--mlp-only-layers is for qwen2_moe / qwen3_moe")
        c["mlp_only_layers"] = sorted(int(i) for i in mlp_only_layers)
    if clip_qkv is not None:
        if arch != "olmoe":
            raise ValueError("--clip-qkv is for olmoe")
        c["clip_qkv"] = float(clip_qkv)
    if norm_topk is not None:
        if arch == "mixtral":
            raise ValueError("Mixtral always renormalises the top-k weights")
        c["norm_topk_prob"] = bool(norm_topk)
    return c


def synthetic_weights(cfg, seed=0):
    """Ordered list of (HF name, float32 array). Scales keep activations O(1) and logits spread."""
    arch = cfg["model_type"]
    salt = {"mixtral": 11, "qwen2_moe": 22, "qwen3_moe": 33, "olmoe": 44}[arch]
    rng = np.random.default_rng([seed, salt])
    H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    E = cfg["num_local_experts"] if arch == "mixtral" else cfg["num_experts"]
    F = cfg["moe_intermediate_size"] if arch in ("qwen2_moe", "qwen3_moe") else cfg["intermediate_size"]

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_w(n):
        return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)

    def lin(out, inp, gain=0.8):
        return normal((out, inp), gain / np.sqrt(inp))

    items = [("model.embed_tokens.weight", normal((V, H), 1.0))]
    probe = None
    for i in range(L):
        p = f"model.layers.{i}."
        items.append((p + "input_layernorm.weight", norm_w(H)))
        items.append((p + "self_attn.q_proj.weight", lin(nh * hd, H, 1.0)))
        items.append((p + "self_attn.k_proj.weight", lin(nkv * hd, H, 1.0)))
        items.append((p + "self_attn.v_proj.weight", lin(nkv * hd, H, 1.0)))
        if arch == "qwen2_moe":
            items.append((p + "self_attn.q_proj.bias", normal(nh * hd, 0.1)))
            items.append((p + "self_attn.k_proj.bias", normal(nkv * hd, 0.1)))
            items.append((p + "self_attn.v_proj.bias", normal(nkv * hd, 0.1)))
        items.append((p + "self_attn.o_proj.weight", lin(H, nh * hd, 0.8)))
        if arch == "qwen3_moe":
            items.append((p + "self_attn.q_norm.weight", norm_w(hd)))
            items.append((p + "self_attn.k_norm.weight", norm_w(hd)))
        if arch == "olmoe":
            items.append((p + "self_attn.q_norm.weight", norm_w(nh * hd)))
            items.append((p + "self_attn.k_norm.weight", norm_w(nkv * hd)))
        items.append((p + "post_attention_layernorm.weight", norm_w(H)))
        if probe is None:
            probe = moe_ref.Model(cfg, {"model.embed_tokens.weight": items[0][1]})
        if not probe.is_moe_layer(i):
            I = cfg["intermediate_size"]
            items.append((p + "mlp.gate_proj.weight", lin(I, H)))
            items.append((p + "mlp.up_proj.weight", lin(I, H)))
            items.append((p + "mlp.down_proj.weight", lin(H, I)))
            continue
        router = lin(E, H, 2.0)
        router[0] *= 2.0          # a few larger rows: routing is clearly non-uniform
        router[E // 2] *= 1.5
        if arch == "mixtral":
            items.append((p + "block_sparse_moe.gate.weight", router))
            for e in range(E):
                q = f"{p}block_sparse_moe.experts.{e}."
                items.append((q + "w1.weight", lin(F, H)))
                items.append((q + "w2.weight", lin(H, F)))
                items.append((q + "w3.weight", lin(F, H)))
        else:
            items.append((p + "mlp.gate.weight", router))
            for e in range(E):
                q = f"{p}mlp.experts.{e}."
                items.append((q + "gate_proj.weight", lin(F, H)))
                items.append((q + "up_proj.weight", lin(F, H)))
                items.append((q + "down_proj.weight", lin(H, F)))
        if arch == "qwen2_moe":
            Fs = cfg["shared_expert_intermediate_size"]
            items.append((p + "mlp.shared_expert.gate_proj.weight", lin(Fs, H)))
            items.append((p + "mlp.shared_expert.up_proj.weight", lin(Fs, H)))
            items.append((p + "mlp.shared_expert.down_proj.weight", lin(H, Fs)))
            items.append((p + "mlp.shared_expert_gate.weight", lin(1, H, 1.5)))
    items.append(("model.norm.weight", norm_w(H)))
    lm = normal((V, H), 1.5 / np.sqrt(H))
    if not cfg.get("tie_word_embeddings"):
        items.append(("lm_head.weight", lm))
    return items


def make_model(arch, out_dir, dtype="bf16", tied=False, shards=1, seed=0, gguf=None,
               gguf_type="f32", kv_heads=None, mlp_only_layers=None, clip_qkv=None, norm_topk=None):
    """Writes the HF checkpoint dir (and the GGUF if asked). Returns the config dict."""
    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {ARCHS}")
    os.makedirs(out_dir, exist_ok=True)
    cfg = synthetic_config(arch, tied, dtype, kv_heads, mlp_only_layers, clip_qkv, norm_topk)
    items = synthetic_weights(cfg, seed)
    write_hf_weights(out_dir, items, dtype, shards)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, f, indent=2)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(make_tokenizer_json(cfg["vocab_size"]), f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False,
                   "model_max_length": cfg["max_position_embeddings"],
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    if gguf:
        convert_hf_to_gguf(out_dir, gguf, gguf_type, name=f"synthetic-{arch}")
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a small synthetic MoE checkpoint (HF, optional GGUF).")
    ap.add_argument("--arch", required=True, choices=ARCHS)
    ap.add_argument("--out", required=True, help="output HF checkpoint directory")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "f16", "f32"))
    ap.add_argument("--tied", action="store_true", help="tie_word_embeddings (no lm_head.weight)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf", help="also write this GGUF file (same weights)")
    ap.add_argument("--gguf-type", default="f32", choices=sorted(GGML_TYPE))
    ap.add_argument("--kv-heads", type=int, help="override num_key_value_heads")
    ap.add_argument("--mlp-only-layers", help='qwen2/3_moe dense layers, e.g. "1"')
    ap.add_argument("--clip-qkv", type=float, help="olmoe clip_qkv")
    ap.add_argument("--norm-topk", type=int, choices=(0, 1), help="override norm_topk_prob")
    a = ap.parse_args(argv)
    mlp_only = [int(s) for s in a.mlp_only_layers.replace(",", " ").split()] if a.mlp_only_layers else None
    make_model(a.arch, a.out, a.dtype, a.tied, a.shards, a.seed, a.gguf, a.gguf_type, a.kv_heads,
               mlp_only, a.clip_qkv, a.norm_topk)
    print(f"wrote {a.out}" + (f" and {a.gguf}" if a.gguf else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
