"""Pictures of a language model as a distribution and a policy: per-step bar charts (terminal and matplotlib),
the tree of rollouts, and one step under several sampling settings.

The distributions come from the decoding engine as it draws (viz.steps' recorders are its step callbacks),
so what is shown is what was sampled from, and nothing runs the model a second time.
"""

from .steps import (BeamRecorder, StepRecorder, StepView, compare_settings, is_identity, label, processed_logprobs,
                    summarize)
from .tree import Node, branch_points, build_tree, count_nodes, layout

__all__ = ["StepView", "StepRecorder", "BeamRecorder", "summarize", "processed_logprobs", "compare_settings", "label",
           "is_identity", "Node", "build_tree", "layout", "count_nodes", "branch_points"]
