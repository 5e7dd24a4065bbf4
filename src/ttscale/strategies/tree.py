"""A search tree of solution steps, shared by beam search, DVTS, MCTS and REBASE.

Each node holds one step (a line of the solution, without its delimiter). The partial solution
at a node is the text of the steps on its path, each followed by the delimiter, so a prompt for
the next step is `problem.prompt + tree.text(node)`. The tree exports to a JSON-able dict (kept in
`Solution.tree`) that `ttscale tree` renders as a local HTML page.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ttscale.errors import TTScaleError

FORMAT = "ttscale.tree/1"


@dataclass
class Node:
    """One step of a partial solution, with what the search learned about it."""

    id: int
    parent: int | None
    text: str  # the step, without the delimiter; "" for the root
    depth: int  # steps from the root; the root has depth 0
    score: float | None = None  # the scorer's value of the partial solution ending here
    prior: float = 1.0  # MCTS: the policy's probability of this step among its siblings
    visits: int = 0  # MCTS: evaluations counted in this subtree
    value_sum: float = 0.0  # MCTS: sum of those evaluations
    terminal: bool = False
    reason: str = ""  # why a node is terminal: answer, eos, length, max_depth, context, error
    children: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def q(self) -> float:
        """Mean value of the evaluations in this subtree (the node's own score before any)."""
        if self.visits:
            return self.value_sum / self.visits
        return self.score if self.score is not None else 0.0


class Tree:
    """Nodes in creation order; node 0 is the root (the bare prompt)."""

    def __init__(self, prompt: str, delimiter: str = "\n", strategy: str = "") -> None:
        self.prompt = prompt
        self.delimiter = delimiter
        self.strategy = strategy
        self.nodes: list[Node] = [Node(id=0, parent=None, text="", depth=0)]
        self.chosen: list[int] = []  # node ids of the chosen path, root first
        self.meta: dict[str, Any] = {}

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add(self, parent: Node, text: str, **fields: Any) -> Node:
        node = Node(id=len(self.nodes), parent=parent.id, text=text, depth=parent.depth + 1, **fields)
        self.nodes.append(node)
        parent.children.append(node.id)
        return node

    def path(self, node: Node) -> list[Node]:
        """Nodes from the root to `node`, both included."""
        out = [node]
        while out[-1].parent is not None:
            out.append(self.nodes[out[-1].parent])
        return out[::-1]

    def steps(self, node: Node) -> list[str]:
        return [n.text for n in self.path(node)[1:]]

    def text(self, node: Node) -> str:
        """The partial solution at `node`: each step followed by the delimiter."""
        return "".join(s + self.delimiter for s in self.steps(node))

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not n.children and n.parent is not None]

    def choose(self, node: Node) -> None:
        """Mark the path to `node` as the search's answer."""
        self.chosen = [n.id for n in self.path(node)]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "strategy": self.strategy, "prompt": self.prompt,
                "delimiter": self.delimiter, "chosen": list(self.chosen), "meta": self.meta,
                "nodes": [asdict(n) for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tree":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise TTScaleError(f"not a ttscale tree (format {d.get('format') if isinstance(d, dict) else None!r}); "
                               f"accepted: a JSON object with format {FORMAT!r}")
        t = cls(d["prompt"], d.get("delimiter", "\n"), d.get("strategy", ""))
        t.nodes = [Node(**n) for n in d["nodes"]]
        t.chosen = list(d.get("chosen", []))
        t.meta = dict(d.get("meta", {}))
        for i, n in enumerate(t.nodes):
            if n.id != i:
                raise TTScaleError(f"tree node at position {i} has id {n.id}; accepted: ids 0..n-1 in order")
        return t

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Tree":
        p = Path(path)
        if not p.is_file():
            raise TTScaleError(f"tree file {str(p)!r} does not exist")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise TTScaleError(f"tree file {str(p)!r} is not JSON: {e}") from None
        if isinstance(d, dict) and "tree" in d and "format" not in d:
            d = d["tree"]  # a saved Solution
        return cls.from_dict(d)
