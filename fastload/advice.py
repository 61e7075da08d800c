"""The advice fastload's errors give, written once: each error names what is wrong and appends one of these."""

from __future__ import annotations

from pathlib import Path


def rebuild_shard(root: str | Path | None = None) -> str:
    """A sample of a built cache is damaged or lies: find every such sample, then rebuild those shards."""
    verify = f"`fastload cache verify {root}`" if root is not None else "`fastload cache verify` on the cache"
    return f"run {verify} and rebuild the shard with `fastload cache build ... --resume`"


def resume_build(out: str | Path) -> str:
    """A build stopped before it finished: the same command with --resume completes it."""
    return f"run the same `fastload cache build ... --out {out}` again with --resume"
