"""Monte Carlo tree search over solution steps, with a step scorer as the value function.

Each iteration:
1. selection: from the root, follow the child maximising PUCT
   Q(c) + c_puct · P(c) · sqrt(N(parent)) / (1 + N(c)) until a leaf or a finished solution;
2. expansion: sample `width` next steps of the leaf (one generator call); a child's prior P is
   the policy's probability of its step (exp of its mean token logprob), normalised over its
   siblings, or uniform;
3. evaluation: score every new child (one scorer call); a child starts with N=1, W=its value;
4. backpropagation: the leaf and every ancestor add the children's visits and values.
   A selected finished solution is not expanded: its value is backed up once more instead.

So N(node) counts the evaluations in its subtree and Q = W/N is their mean. The answer follows the
most visited children from the root (`final="visits"`) or is the best finished solution by
value (`final="value"`); a path that ends unfinished is completed greedily.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ttscale.engine.base import Generator
from ttscale.errors import out_of_range, unknown
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Solution, register, require_scorer
from ttscale.strategies.stepwise import StepSearch, StepSettings, check_step_settings, finish, positive
from ttscale.strategies.tree import Node
from ttscale.tasks.base import Task
from ttscale.types import Problem

PRIORS = ("policy", "uniform")
FINALS = ("visits", "value")


@dataclass
class MCTSParams(StepSettings):
    """MCTS: `iterations` selections, `width` children per expansion, PUCT constant `c_puct`."""

    iterations: int = 16
    width: int = 3
    c_puct: float = 1.0
    prior: str = "policy"  # "policy": exp(mean logprob) of the step; "uniform": 1/width
    final: str = "visits"  # answer by the most visited path, or by the best value

    def __post_init__(self) -> None:
        check_step_settings(self)
        positive("iterations", self.iterations)
        positive("width", self.width)
        if not self.c_puct >= 0:
            raise out_of_range("c_puct", self.c_puct, "a number >= 0")
        if self.prior not in PRIORS:
            raise unknown("prior", self.prior, PRIORS)
        if self.final not in FINALS:
            raise unknown("final", self.final, FINALS)


def puct(parent: Node, child: Node, c_puct: float) -> float:
    return child.q + c_puct * child.prior * math.sqrt(parent.visits) / (1 + child.visits)


def select_leaf(search: StepSearch, c_puct: float) -> list[Node]:
    """The path from the root to the leaf (or finished node) that PUCT selects."""
    node = search.tree.root
    path = [node]
    while node.children and not node.terminal:
        kids = [search.tree.nodes[i] for i in node.children]
        node = max(kids, key=lambda c: (puct(path[-1], c, c_puct), -c.id))
        path.append(node)
    return path


def backpropagate(path: list[Node], visits: int, value_sum: float) -> None:
    for node in path:
        node.visits += visits
        node.value_sum += value_sum


def _set_priors(children: list[Node], mode: str) -> None:
    total = sum(c.prior for c in children)
    for c in children:
        c.prior = 1.0 / len(children) if mode == "uniform" or total <= 0 else c.prior / total


def _final_node(search: StepSearch, params: MCTSParams) -> Node | None:
    finished = [n for n in search.tree.nodes if n.terminal]
    if params.final == "visits":
        node = search.tree.root
        while node.children:
            node = max((search.tree.nodes[i] for i in node.children),
                       key=lambda c: (c.visits, c.q, -c.id))
        if node.terminal:
            return node
    elif finished:
        return max(finished, key=lambda n: (n.score if n.score is not None else -math.inf, -n.id))
    else:
        node = max(search.tree.leaves(), key=lambda n: (n.q, -n.id), default=None)
    return complete(search, node) if node is not None else None


def complete(search: StepSearch, node: Node) -> Node:
    """Finish an unfinished path greedily, one step per call, and score the result."""
    while not node.terminal:
        kids = search.expand([node], [1], temperature=0.0)[0]
        if not kids:
            node.terminal, node.reason = True, "error"
            break
        node = kids[0]
    search.evaluate([node])
    return node


@register("mcts", MCTSParams)
def mcts(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
         params: MCTSParams) -> Solution:
    """Monte Carlo tree search with PUCT selection and the scorer as value function."""
    scorer = require_scorer(scorer, "mcts")
    search = StepSearch(problem, task, generator, scorer, params, "mcts")
    for _ in range(params.iterations):
        path = select_leaf(search, params.c_puct)
        leaf = path[-1]
        if leaf.terminal:
            backpropagate(path, 1, leaf.score or 0.0)
            continue
        children = search.expand([leaf], [params.width])[0]
        if not children:  # the backend failed: nothing to grow here
            if leaf is search.tree.root:
                break
            leaf.terminal, leaf.reason = True, "error"
            continue
        _set_priors(children, params.prior)
        values = search.evaluate(children)
        for c, v in zip(children, values):
            c.visits, c.value_sum = 1, v
        backpropagate(path, len(children), sum(values))
    search.tree.meta["iterations"] = params.iterations
    chosen = _final_node(search, params)
    finished = [n for n in search.tree.nodes if n.terminal]
    return finish(search, chosen, finished, params)
