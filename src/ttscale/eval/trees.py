"""Render a search tree as one self-contained HTML page: no scripts or styles fetched from anywhere.

Each node shows its step text, its score, and (for MCTS) visits, mean value and prior; the
chosen path is highlighted, finished solutions are marked with why they ended. Subtrees fold with
the browser's own <details> element, so the page needs no JavaScript.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ttscale.strategies.tree import Node, Tree

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; } pre.prompt { background: #f4f4f4; padding: .5em; }
ul.tree { list-style: none; padding-left: 1.2em; border-left: 1px dotted #bbb; margin: 0; }
ul.tree.top { border: none; padding-left: 0; }
li { margin: 2px 0; } summary { cursor: pointer; }
.node { font-family: ui-monospace, monospace; white-space: pre-wrap; padding: 1px 4px;
        border-radius: 3px; }
.chosen > details > summary > .node, .chosen > .leaf > .node { background: #ffe680; font-weight: bold; }
.terminal .node { border: 1px solid #999; }
.stats { color: #666; font-size: 12px; margin-left: .5em; }
.good { color: #17803d; } .bad { color: #b3261e; }
.legend span { margin-right: 1.5em; }
"""


def _stats(n: Node) -> str:
    parts = []
    if n.score is not None:
        cls = "good" if n.score >= 0.5 else "bad"
        parts.append(f'<span class="{cls}">score {n.score:.3f}</span>')
    if n.visits:
        parts.append(f"N {n.visits} · Q {n.q:.3f}")
    if n.parent is not None and n.prior != 1.0:
        parts.append(f"P {n.prior:.3f}")
    if "width" in n.meta:
        parts.append(f"width {n.meta['width']}")
    if n.terminal:
        parts.append(f"end: {html.escape(n.reason)}")
    return " · ".join(parts)


def _render(tree: Tree, node: Node, chosen: set[int], out: list[str]) -> None:
    cls = [c for c, on in (("chosen", node.id in chosen), ("terminal", node.terminal)) if on]
    text = html.escape(node.text) if node.parent is not None else "(prompt)"
    label = (f'<span class="node" title="node {node.id}, depth {node.depth}">{text}</span>'
             f'<span class="stats">{_stats(node)}</span>')
    out.append(f'<li class="{" ".join(cls)}" id="n{node.id}">')
    if node.children:
        out.append(f"<details open><summary>{label}</summary><ul class=\"tree\">")
        for cid in node.children:
            _render(tree, tree.nodes[cid], chosen, out)
        out.append("</ul></details>")
    else:
        out.append(f'<div class="leaf">{label}</div>')
    out.append("</li>")


def render_tree_html(tree: Tree | dict[str, Any], title: str | None = None) -> str:
    """The HTML page of a tree (a Tree or its JSON dict, as in `Solution.tree`)."""
    t = tree if isinstance(tree, Tree) else Tree.from_dict(tree)
    chosen = set(t.chosen)
    title = title or f"{t.strategy or 'search'} tree"
    finished = sum(1 for n in t.nodes if n.terminal)
    answer = html.escape(t.nodes[t.chosen[-1]].text) if t.chosen else "(none)"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           f'<pre class="prompt">{html.escape(t.prompt)}</pre>',
           f"<p>{len(t.nodes) - 1} steps, {finished} finished; chosen: <b>{answer}</b></p>",
           '<p class="legend"><span class="node" style="background:#ffe680">chosen path</span>'
           "<span>score: the scorer's value (last step; the aggregate when finished)</span>"
           "<span>N/Q/P: MCTS visits, mean value, prior</span></p>",
           '<ul class="tree top">']
    _render(t, t.root, chosen, out)
    out += ["</ul>", "</body></html>"]
    return "\n".join(out) + "\n"


def write_tree_html(tree: Tree | dict[str, Any], out: str | Path, title: str | None = None) -> Path:
    """Write the page to `out` and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_tree_html(tree, title))
    return out
