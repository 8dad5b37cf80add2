"""Rollouts as a tree: every distinct prefix is a node, so a token drawn at step t starts its own path at t+1.

Rollouts of one prompt share their first tokens until a draw differs; from there they branch. The tree is a
trie over the completions; each edge carries the probability of its token given the path above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    token: int | None  # None at the root (the prompt)
    depth: int  # 0 at the root; a token generated at step t sits at depth t + 1
    prob: float = 1.0  # probability of `token` given the path to its parent
    children: dict = field(default_factory=dict)  # token -> Node, in first-seen order
    rollouts: list = field(default_factory=list)  # indices of the rollouts that pass through this node
    ends: list = field(default_factory=list)  # (rollout index, label) of rollouts ending here
    y: float = 0.0  # vertical position, set by layout()

    def walk(self):
        yield self
        for child in self.children.values():
            yield from child.walk()


def build_tree(completions: list[list[int]], probs: list[list[float]],
               labels: list[str] | None = None) -> Node:
    """A trie over `completions`; probs[i][t] is the probability of completions[i][t] at its step; labels[i]
    is shown where completion i ends (its seed, its finish reason)."""
    if len(probs) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(probs)} probability lists")
    root = Node(token=None, depth=0)
    for i, (tokens, ps) in enumerate(zip(completions, probs)):
        if len(ps) != len(tokens):
            raise ValueError(f"completion {i} has {len(tokens)} tokens but {len(ps)} probabilities")
        node = root
        node.rollouts.append(i)
        for token, p in zip(tokens, ps):
            if token not in node.children:
                node.children[token] = Node(token=token, depth=node.depth + 1, prob=p)
            node = node.children[token]
            node.rollouts.append(i)
        node.ends.append((i, labels[i] if labels else ""))
    return root


def layout(root: Node) -> int:
    """Give every node a y: leaves get 0, 1, 2, ... in depth-first order; a parent sits at its children's
    mean. Returns the number of leaves (the height the picture needs)."""
    next_leaf = 0

    def place(node: Node) -> float:
        nonlocal next_leaf
        if not node.children:
            node.y = float(next_leaf)
            next_leaf += 1
        else:
            ys = [place(c) for c in node.children.values()]
            node.y = sum(ys) / len(ys)
        return node.y

    place(root)
    return next_leaf


def count_nodes(root: Node) -> int:
    """Nodes below the root: the number of distinct non-empty prefixes of the completions."""
    return sum(1 for _ in root.walk()) - 1


def branch_points(root: Node) -> list[Node]:
    """Nodes where rollouts part ways (two or more children)."""
    return [n for n in root.walk() if len(n.children) > 1]
