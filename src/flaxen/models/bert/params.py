"""Bert <-> Hugging Face BERT (BertModel, BertForMaskedLM, BertForSequenceClassification, sentence-transformers).

Hugging Face keeps query, key and value as three torch Linears (out, in); they are the three column blocks of our
fused `qkv` kernel (in, 3 · out) and bias.
"""

from flaxen.hf import ENCODER_CONFIG_KEYS, IDENTITY, TRANSPOSE, ParamsTable, separate_qkv

BERT = ParamsTable(
    model_type="bert",
    architectures={
        "Bert": "BertModel",
        "BertForMaskedLM": "BertForMaskedLM",
        "BertForSequenceClassification": "BertForSequenceClassification",
    },
    hf_backbone_prefix="bert.",
    flaxen_backbone_prefix="bert.",
    config_keys={
        "vocab_size": "vocab_size",
        "max_position_embeddings": "max_positions",
        "type_vocab_size": "type_vocab_size",
        **ENCODER_CONFIG_KEYS,
        "pad_token_id": "pad_token_id",
    },
    required={
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    },
    tokenizer_fields={
        "pad_token_id": "[PAD]",
        "mask_token_id": "[MASK]",
        "special_token_ids": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    },
    tensors={
        "bert.embeddings.word_embeddings.weight": ("bert.token_embedding.embedding", IDENTITY),
        "bert.embeddings.position_embeddings.weight": ("bert.position_embedding.embedding", IDENTITY),
        "bert.embeddings.token_type_embeddings.weight": ("bert.token_type_embedding.embedding", IDENTITY),
        "bert.embeddings.LayerNorm.weight": ("bert.embedding_norm.scale", IDENTITY),
        "bert.embeddings.LayerNorm.bias": ("bert.embedding_norm.bias", IDENTITY),
        **separate_qkv("bert.encoder.layer.{}.attention.self", "bert.stack.blocks.{}.attention.qkv"),
        "bert.encoder.layer.{}.attention.output.dense.weight": ("bert.stack.blocks.{}.attention.out.kernel", TRANSPOSE),
        "bert.encoder.layer.{}.attention.output.dense.bias": ("bert.stack.blocks.{}.attention.out.bias", IDENTITY),
        "bert.encoder.layer.{}.attention.output.LayerNorm.weight": (
            "bert.stack.blocks.{}.attention_norm.scale",
            IDENTITY,
        ),
        "bert.encoder.layer.{}.attention.output.LayerNorm.bias": ("bert.stack.blocks.{}.attention_norm.bias", IDENTITY),
        "bert.encoder.layer.{}.intermediate.dense.weight": ("bert.stack.blocks.{}.mlp.fc_in.kernel", TRANSPOSE),
        "bert.encoder.layer.{}.intermediate.dense.bias": ("bert.stack.blocks.{}.mlp.fc_in.bias", IDENTITY),
        "bert.encoder.layer.{}.output.dense.weight": ("bert.stack.blocks.{}.mlp.fc_out.kernel", TRANSPOSE),
        "bert.encoder.layer.{}.output.dense.bias": ("bert.stack.blocks.{}.mlp.fc_out.bias", IDENTITY),
        "bert.encoder.layer.{}.output.LayerNorm.weight": ("bert.stack.blocks.{}.mlp_norm.scale", IDENTITY),
        "bert.encoder.layer.{}.output.LayerNorm.bias": ("bert.stack.blocks.{}.mlp_norm.bias", IDENTITY),
        "bert.pooler.dense.weight": ("bert.pooler.kernel", TRANSPOSE),
        "bert.pooler.dense.bias": ("bert.pooler.bias", IDENTITY),
        "cls.predictions.transform.dense.weight": ("lm_head.transform.kernel", TRANSPOSE),
        "cls.predictions.transform.dense.bias": ("lm_head.transform.bias", IDENTITY),
        "cls.predictions.transform.LayerNorm.weight": ("lm_head.norm.scale", IDENTITY),
        "cls.predictions.transform.LayerNorm.bias": ("lm_head.norm.bias", IDENTITY),
        "cls.predictions.bias": ("lm_head.bias", IDENTITY),
        "classifier.weight": ("classifier.kernel", TRANSPOSE),
        "classifier.bias": ("classifier.bias", IDENTITY),
    },
    heads=("bert.pooler", "lm_head", "classifier"),
    ignored={
        "bert.embeddings.position_ids": "buffer of position indices",
        "cls.predictions.decoder.weight": "a copy of the word embeddings, which flaxen's tied decoder uses",
        "cls.predictions.decoder.bias": "a copy of cls.predictions.bias",
        "cls.seq_relationship.weight": "next-sentence head; flaxen has none",
        "cls.seq_relationship.bias": "next-sentence head; flaxen has none",
    },
)
