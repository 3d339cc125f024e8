"""Agents: functional environments, PPO/A2C ensembles, surrogate and sensitivity."""
