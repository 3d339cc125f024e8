"""Agents: functional environments, PPO/A2C ensembles, surrogate and sensitivity."""

from hirelc_jax.agents.ensemble import rounded_mean_vote
from hirelc_jax.agents.ensemble import update_member_weights
from hirelc_jax.agents.ensemble import vote
from hirelc_jax.agents.networks import ActorCritic
from hirelc_jax.agents.networks import multi_categorical
from hirelc_jax.agents.ppo import Hyperparams
from hirelc_jax.agents.ppo import LearnerConfig
from hirelc_jax.agents.ppo import RunnerState
from hirelc_jax.agents.ppo import TrainState
from hirelc_jax.agents.ppo import Transition
from hirelc_jax.agents.ppo import a2c_loss
from hirelc_jax.agents.ppo import act
from hirelc_jax.agents.ppo import gae
from hirelc_jax.agents.ppo import make_network
from hirelc_jax.agents.ppo import make_optimizer
from hirelc_jax.agents.ppo import make_train
from hirelc_jax.agents.ppo import ppo_loss
from hirelc_jax.agents.ppo import sb3_a2c
from hirelc_jax.agents.ppo import sb3_ppo
from hirelc_jax.agents.spaces import MultiDiscrete
