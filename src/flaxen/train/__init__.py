"""Training: AdamW with warmup + cosine, the Trainer loop, and run-folder checkpoints."""

from flaxen.train.checkpoints import load_checkpoint
from flaxen.train.optim import adamw, learning_rate_schedule
from flaxen.train.trainer import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged", "adamw", "learning_rate_schedule", "load_checkpoint"]
