"""Synthetic datasets of any task written atomically and generated once into the cache: a
reader sees no dataset or a complete one (marked by its SYNTH.json), never a partial one, even
with concurrent writers."""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Optional


def default_cache_dir() -> Path:
    """`$CVAE_CACHE` if set, else ~/.cache/cvae-sweeps."""
    env = os.environ.get("CVAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cvae-sweeps"


def is_synthetic(path: Path) -> bool:
    """Whether path holds a complete synthetic dataset (its SYNTH.json, written last)."""
    return (Path(path) / "SYNTH.json").is_file()


def _temp_sibling(path: Path) -> Path:
    """A unique hidden name next to path, for writing before an atomic rename."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_atomically(out: str | os.PathLike, generate: Callable[[Path], dict]) -> dict[str, Any]:
    """Run `generate(tmp)` into a temporary sibling of out and rename it into place (any
    task's synthetic data). A previous synthetic dataset at out is replaced; any other
    non-empty directory raises FileExistsError. Returns generate's dict plus path."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out.is_dir() and (is_synthetic(out) or not any(out.iterdir()))):
        raise FileExistsError(f"{out}: not empty and not a previous synth output (no SYNTH.json); "
                              "refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(out)
    try:
        stats = generate(tmp)
        if out.exists():
            old = _temp_sibling(out)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(stats, path=str(out))


def ensure_generated(target: Path, generate: Callable[[Path], dict], label: str,
                     quiet: bool = False) -> tuple[Path, Optional[dict]]:
    """A synthetic dataset at the cache path target, generated once by `generate(tmp)`;
    returns (target, generate's dict, or None when it was there already).

    Safe against concurrent callers: each generates into its own temporary directory and
    renames it into place; a loser of the race discards its copy and uses the winner's.
    """
    if is_synthetic(target):
        return target, None
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target}: exists and is not a synthetic dataset (no SYNTH.json)")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"{label}: generating the synthetic dataset (once) at {target}", file=sys.stderr)
    tmp = _temp_sibling(target)
    try:
        stats = generate(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_synthetic(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, stats
