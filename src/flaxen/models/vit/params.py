"""ViT <-> Hugging Face ViT (ViTModel, ViTForImageClassification).

Query, key and value are three torch Linears (out, in) fused into our `qkv`; the patch convolution's kernel
(D, C, P, P) becomes our patch projection ((P · P · C), D), rows in the (p1 p2 c) order `PatchEmbedding` flattens
patches in; Hugging Face's position embeddings carry a leading batch axis of 1.
"""

from flaxen.hf import ENCODER_CONFIG_KEYS, IDENTITY, TRANSPOSE, ParamsTable, Transform, separate_qkv

PATCH_KERNEL = Transform(
    to_flaxen=lambda w, _: w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]),
    to_hf=lambda k, config: k.reshape(config.patch_size, config.patch_size, config.channels, -1).transpose(3, 2, 0, 1),
)
UNBATCHED = Transform(lambda x, _: x[0], lambda x, _: x[None])

VIT = ParamsTable(
    model_type="vit",
    architectures={"ViT": "ViTModel", "ViTForImageClassification": "ViTForImageClassification"},
    hf_backbone_prefix="vit.",
    flaxen_backbone_prefix="vit.",
    config_keys={
        "image_size": "image_size",
        "patch_size": "patch_size",
        "num_channels": "channels",
        **ENCODER_CONFIG_KEYS,
    },
    required={"qkv_bias": True},
    tensors={
        "vit.embeddings.cls_token": ("vit.cls_token", IDENTITY),
        "vit.embeddings.position_embeddings": ("vit.position_embedding", UNBATCHED),
        "vit.embeddings.patch_embeddings.projection.weight": ("vit.patch_embedding.projection.kernel", PATCH_KERNEL),
        "vit.embeddings.patch_embeddings.projection.bias": ("vit.patch_embedding.projection.bias", IDENTITY),
        "vit.encoder.layer.{}.layernorm_before.weight": ("vit.stack.blocks.{}.attention_norm.scale", IDENTITY),
        "vit.encoder.layer.{}.layernorm_before.bias": ("vit.stack.blocks.{}.attention_norm.bias", IDENTITY),
        **separate_qkv("vit.encoder.layer.{}.attention.attention", "vit.stack.blocks.{}.attention.qkv"),
        "vit.encoder.layer.{}.attention.output.dense.weight": ("vit.stack.blocks.{}.attention.out.kernel", TRANSPOSE),
        "vit.encoder.layer.{}.attention.output.dense.bias": ("vit.stack.blocks.{}.attention.out.bias", IDENTITY),
        "vit.encoder.layer.{}.layernorm_after.weight": ("vit.stack.blocks.{}.mlp_norm.scale", IDENTITY),
        "vit.encoder.layer.{}.layernorm_after.bias": ("vit.stack.blocks.{}.mlp_norm.bias", IDENTITY),
        "vit.encoder.layer.{}.intermediate.dense.weight": ("vit.stack.blocks.{}.mlp.fc_in.kernel", TRANSPOSE),
        "vit.encoder.layer.{}.intermediate.dense.bias": ("vit.stack.blocks.{}.mlp.fc_in.bias", IDENTITY),
        "vit.encoder.layer.{}.output.dense.weight": ("vit.stack.blocks.{}.mlp.fc_out.kernel", TRANSPOSE),
        "vit.encoder.layer.{}.output.dense.bias": ("vit.stack.blocks.{}.mlp.fc_out.bias", IDENTITY),
        "vit.layernorm.weight": ("vit.final_norm.scale", IDENTITY),
        "vit.layernorm.bias": ("vit.final_norm.bias", IDENTITY),
        "classifier.weight": ("head.kernel", TRANSPOSE),
        "classifier.bias": ("head.bias", IDENTITY),
    },
    heads=("pre_logits", "head"),
    ignored={
        "vit.pooler.dense.weight": "ViTModel's pooler; flaxen classifies [CLS] without one",
        "vit.pooler.dense.bias": "ViTModel's pooler; flaxen classifies [CLS] without one",
    },
)
