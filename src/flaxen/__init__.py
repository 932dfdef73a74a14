"""flaxen: a transformer model zoo on JAX/Flax NNX."""

__version__ = "0.1.0.dev0"
