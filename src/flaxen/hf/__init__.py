"""Model weights in and out: Hugging Face folders (config.json + safetensors) and flaxen's own, for every family.

Knows no model by name: a family's `params.py` describes its layout in a `ParamsTable`, and its model classes
inherit `PretrainedMixin`.
"""

from flaxen.hf.load import CONFIG_FILE, WEIGHTS_FILE, read_config_file
from flaxen.hf.pretrained import PretrainedMixin
from flaxen.hf.table import ENCODER_CONFIG_KEYS, IDENTITY, TRANSPOSE, ParamsTable, Transform, separate_qkv

__all__ = [
    "CONFIG_FILE",
    "ENCODER_CONFIG_KEYS",
    "IDENTITY",
    "TRANSPOSE",
    "WEIGHTS_FILE",
    "ParamsTable",
    "PretrainedMixin",
    "Transform",
    "read_config_file",
    "separate_qkv",
]
