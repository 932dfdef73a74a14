"""Training: AdamW with warmup + cosine, the Trainer loop, and device meshes (data + FSDP)."""

from flaxen.runs import load_checkpoint
from flaxen.train.optim import adamw, learning_rate_schedule
from flaxen.train.sharding import ShardingRules, make_mesh, parameter_sharding
from flaxen.train.trainer import Trainer, TrainingDiverged, resolve_compute_dtype

__all__ = [
    "ShardingRules",
    "Trainer",
    "TrainingDiverged",
    "adamw",
    "learning_rate_schedule",
    "load_checkpoint",
    "make_mesh",
    "parameter_sharding",
    "resolve_compute_dtype",
]
