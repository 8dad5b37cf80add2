"""Pictures of a language model as a distribution and a policy: per-step bar charts (terminal and matplotlib),
the tree of rollouts, and one step under several sampling settings.

The distributions are recomputed after generation (viz.steps): one forward pass over prompt + completion,
then the same processors as the sampler, so what is shown is what was sampled from.
"""

from .steps import (Processing, StepView, distributions_under, next_token_logits, processed_logprobs,
                    raw_logits, step_views, summarize)
from .tree import Node, branch_points, build_tree, count_nodes, layout

__all__ = ["Processing", "StepView", "step_views", "raw_logits", "processed_logprobs", "summarize",
           "next_token_logits", "distributions_under", "Node", "build_tree", "layout", "count_nodes",
           "branch_points"]
