"""Before and after in one run: the pipeline's processes importing flashsale from another
checkout (e.g. `git worktree add /tmp/base HEAD~1`), while the load generator stays this one's."""

from __future__ import annotations


def tree_env(tree: str | None) -> dict[str, str]:
    """The environment that makes a process import flashsale from tree: first on the path, and
    not the current directory (`python -m` would put it first)."""
    return {"PYTHONPATH": tree, "PYTHONSAFEPATH": "1"} if tree else {}


def generator_env(env: dict[str, str]) -> dict[str, str]:
    """A pipeline's environment without the tree: the generator is this checkout's."""
    return {k: v for k, v in env.items() if k not in tree_env("-")}
