"""Which artifacts an experiment instance's cost is made of: everything upstream of its scored run (the final corpus
encode and index included), the run and its score left out (evaluation is not training cost).

Shared work is counted in full: the warm-up model and what it was built from (BM25, its negatives, the tokenized
corpus) count towards every method built on it, and are flagged ``shared`` so the table can say how much of a total
they are. The report reads each artifact's summary.json (`stages.report.costs`).
"""

from __future__ import annotations

from typing import Iterable


def upstream(roots: Iterable) -> list:
    """Every artifact (`dag.Node`) reachable from ``roots`` through their inputs, roots included, each once,
    upstream first (depth-first, inputs in order; iterative, so that a long chain such as many ANCE rounds needs no
    recursion); raw files (no summary) are left out."""
    seen: dict[str, object] = {}
    for root in roots:
        stack = [(root, iter(root.inputs.values()))] if hasattr(root, "stage") and root.key not in seen else []
        while stack:
            node, pending = stack[-1]
            item = next(pending, None)
            if item is None:
                stack.pop()
                seen[node.key] = node
            elif hasattr(item, "stage") and item.key not in seen:
                stack.append((item, iter(item.inputs.values())))
    return list(seen.values())


def cost_nodes(roles: dict, split: str, method: str) -> list[tuple[object, bool]]:
    """(node, shared) of each artifact the instance's ``split`` run was built from."""
    run = roles[f"score-{split}"].inputs["run"]
    warmup = roles.get("warmup")
    shared = {node.key for node in upstream([warmup])} if warmup is not None and method != "warmup" else set()
    return [(node, node.key in shared) for node in upstream(run.inputs.values())]
