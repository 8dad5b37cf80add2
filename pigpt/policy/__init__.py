"""Policy optimisation for pigpt's models: GRPO's advantages and loss, and reward functions.

    from pigpt.policy import load_reward, combine_rewards, group_advantages, grpo_loss

Everything here is pure (tensors and strings in, tensors and floats out) and follows TRL 1.16.0's
GRPOTrainer; a training loop that samples rollouts and steps an optimizer is built on top of it.
"""

from pigpt.policy.errors import PolicyError
from pigpt.policy.grpo import LOSS_TYPES, SCALES, group_advantages, grpo_loss
from pigpt.policy.rewards import CombinedReward, Reward, combine_rewards, load_reward

__all__ = ["PolicyError", "LOSS_TYPES", "SCALES", "group_advantages", "grpo_loss", "CombinedReward", "Reward",
           "combine_rewards", "load_reward"]
