"""hirelc_jax: hierarchical RL search for joint quantization and pruning, in JAX."""

__version__ = "0.1.0"
