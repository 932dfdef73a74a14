import jax
import pytest

# Parity and invariance checks compare float32 results to tight tolerances.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def key():
    return jax.random.key(0)
