"""Experiment presets (JSON), installed as hirelc_jax.configs so a wheel can find them."""
