"""GPT <-> Hugging Face GPT-2 (GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification).

GPT-2's Conv1D weights are stored (in, out), as nnx.Linear keeps them, and c_attn is already our fused [q | k | v],
so every tensor but the classifier's maps unchanged.
"""

from flaxen.hf import IDENTITY, TRANSPOSE, ParamsTable

GPT2 = ParamsTable(
    model_type="gpt2",
    architectures={
        "GPT": "GPT2Model",
        "GPTForCausalLM": "GPT2LMHeadModel",
        "GPTForSequenceClassification": "GPT2ForSequenceClassification",
    },
    hf_backbone_prefix="transformer.",
    flaxen_backbone_prefix="gpt.",
    config_keys={
        "vocab_size": "vocab_size",
        "n_positions": "context_length",
        "n_embd": "hidden_size",
        "n_layer": "num_layers",
        "n_head": "num_heads",
        "n_inner": "mlp_dim",
        "activation_function": "activation",
        "layer_norm_epsilon": "layer_norm_eps",
        "initializer_range": "initializer_range",
        "resid_pdrop": "dropout",
        "embd_pdrop": "dropout",
    },
    computed_defaults={"n_inner": lambda hf: 4 * hf.get("n_embd", 768)},  # GPT-2 writes n_inner: null for 4 × width
    required={
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    },
    tensors={
        "transformer.wte.weight": ("gpt.token_embedding.embedding", IDENTITY),
        "transformer.wpe.weight": ("gpt.position_embedding.embedding", IDENTITY),
        "transformer.h.{}.ln_1.weight": ("gpt.stack.blocks.{}.attention_norm.scale", IDENTITY),
        "transformer.h.{}.ln_1.bias": ("gpt.stack.blocks.{}.attention_norm.bias", IDENTITY),
        "transformer.h.{}.attn.c_attn.weight": ("gpt.stack.blocks.{}.attention.qkv.kernel", IDENTITY),
        "transformer.h.{}.attn.c_attn.bias": ("gpt.stack.blocks.{}.attention.qkv.bias", IDENTITY),
        "transformer.h.{}.attn.c_proj.weight": ("gpt.stack.blocks.{}.attention.out.kernel", IDENTITY),
        "transformer.h.{}.attn.c_proj.bias": ("gpt.stack.blocks.{}.attention.out.bias", IDENTITY),
        "transformer.h.{}.ln_2.weight": ("gpt.stack.blocks.{}.mlp_norm.scale", IDENTITY),
        "transformer.h.{}.ln_2.bias": ("gpt.stack.blocks.{}.mlp_norm.bias", IDENTITY),
        "transformer.h.{}.mlp.c_fc.weight": ("gpt.stack.blocks.{}.mlp.fc_in.kernel", IDENTITY),
        "transformer.h.{}.mlp.c_fc.bias": ("gpt.stack.blocks.{}.mlp.fc_in.bias", IDENTITY),
        "transformer.h.{}.mlp.c_proj.weight": ("gpt.stack.blocks.{}.mlp.fc_out.kernel", IDENTITY),
        "transformer.h.{}.mlp.c_proj.bias": ("gpt.stack.blocks.{}.mlp.fc_out.bias", IDENTITY),
        "transformer.ln_f.weight": ("gpt.final_norm.scale", IDENTITY),
        "transformer.ln_f.bias": ("gpt.final_norm.bias", IDENTITY),
        "score.weight": ("score.kernel", TRANSPOSE),
    },
    heads=("score",),
    ignored={
        "transformer.h.{}.attn.bias": "causal-mask buffer",
        "transformer.h.{}.attn.masked_bias": "causal-mask buffer",
        "lm_head.weight": "a copy of transformer.wte.weight, which flaxen's tied output uses",
    },
)
