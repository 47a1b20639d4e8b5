"""BAIR robot pushing data in the lab's on-disk layout, the decoded cache and `cvae check-data`.

Layout (real BAIR and the embedded synthetic data alike)::

    <root>/<split>/<traj_dir>/<k>/{0..29}.png, actions.csv, endeffector_positions.csv

Each split is decoded once into a uint8 array (N, 30, 64, 64, 3) plus float32 conditions
(N, 30, 7), saved as .npy beside the data in the user cache (`$CVAE_CACHE`) and
memory-mapped afterwards, so training never decodes PNGs in the steady state.

Over 350 lines because the reader, the cache keyed on the files it read and `check-data` share one
definition of what a valid sequence is (the same checks, the same one-line errors); the
statistics that compare a dataset with real BAIR are in cvae.datastats.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from cvae.synth import N_FRAMES, SIZE, SPLITS, default_cache_dir, ensure_synthetic

IMAGE_SIZE = SIZE  # BAIR's 64x64 frames; SPLITS and N_FRAMES (30) are the simulator's too
ACTION_DIM = 4  # dx, dy, lift, gripper
POSITION_DIM = 3  # end-effector x, y, z
COND_DIM = ACTION_DIM + POSITION_DIM
CACHE_VERSION = 2  # bump when the fingerprint or the cached arrays change meaning


class DataError(ValueError):
    """Bad or missing data; the message is one line naming the file and the problem."""


def natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def scan_split(root: Path, split: str) -> tuple[list[Path], list[str]]:
    """Every sequence directory of a split in a deterministic (natural) order, and a problem
    line for each file standing where the layout has a folder (hidden files are ignored).

    Sequence directories are found by enumeration, never by assuming the range of `k`.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        return [], []
    found, stray = [], []

    def listing(folder: Path) -> list[Path]:
        return sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                      key=natural_key)

    for traj in listing(split_dir):
        if not traj.is_dir():
            stray.append(f"{traj}: a file where a trajectory folder is expected")
            continue
        for seq in listing(traj):
            if seq.is_dir():
                found.append(seq)
            else:
                stray.append(f"{seq}: a file where a sequence folder is expected")
    return found, stray


def sequence_dirs(root: Path, split: str) -> list[Path]:
    """Every sequence directory of a split in a deterministic (natural) order."""
    return scan_split(root, split)[0]


def _read_csv(path: Path, columns: int, rows: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    values = []
    for i, line in enumerate(lines, 1):
        cells = line.split(",")
        if len(cells) != columns:
            raise DataError(f"{path}: line {i} has {len(cells)} columns, expected {columns}")
        try:
            values.append([float(c) for c in cells])
        except ValueError:
            raise DataError(f"{path}: line {i} has a non-numeric value: {line[:60]!r}") from None
    if len(values) != rows:
        raise DataError(f"{path}: {len(values)} rows, expected {rows} (one per frame)")
    out = np.asarray(values, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{path}: non-finite value (nan or inf)")
    return out


def _read_frame(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing frame")
    try:
        with Image.open(path) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{path}: image is {im.size[0]}x{im.size[1]}, expected "
                                f"{IMAGE_SIZE}x{IMAGE_SIZE}")
            if im.mode != "RGB":
                raise DataError(f"{path}: image mode {im.mode}, expected RGB")
            return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # PIL raises many types on corrupt files
        raise DataError(f"{path}: cannot decode image ({type(e).__name__})") from None


def read_sequence(seq_dir: Path, n_frames: int = N_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """One sequence: frames uint8 (T, 64, 64, 3) and conditions float32 (T, 7); each CSV must
    hold exactly one row per frame."""
    seq_dir = Path(seq_dir)
    actions = _read_csv(seq_dir / "actions.csv", ACTION_DIM, n_frames)
    positions = _read_csv(seq_dir / "endeffector_positions.csv", POSITION_DIM, n_frames)
    frames = np.stack([_read_frame(seq_dir / f"{t}.png") for t in range(n_frames)])
    return frames, np.concatenate([actions, positions], axis=1)


# ----------------------------------------------------------------------------- decoded cache

def cache_dir(root: Path) -> Path:
    """The decoded cache of a dataset root: beside the data, in the user cache, so data
    folders (possibly read-only or shared) are never written to."""
    root = Path(root).resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return default_cache_dir() / "decoded" / f"{root.name}-{digest}"


def _fingerprint(root: Path, dirs: Sequence[Path]) -> str:
    """Name, size and modification time of every file of every sequence folder: an in-place
    edit (a PNG overwritten, a CSV edited) changes it even where the folder's mtime does not.
    One stat call per file, no reading."""
    h = hashlib.sha1(str(CACHE_VERSION).encode())
    for d in dirs:
        h.update(f"{d.relative_to(root)}/".encode())
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            st = entry.stat()
            h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


@dataclass
class SplitArrays:
    """A decoded split: frames uint8 (N, 30, 64, 64, 3), conds float32 (N, 30, 7); `skipped`
    holds a problem line per sequence left out by `skip_bad`."""
    split: str
    frames: np.ndarray
    conds: np.ndarray
    names: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


_HOST = socket.gethostname()  # temp files carry host and pid: caches may be shared between hosts
_TMP_SUFFIXES = ("frames.npy", "conds.npy", "index.json")
_TMP_NAME = re.compile(r"^[^.]+\.(?:(?P<host>.+)\.)?(?P<pid>\d+)\.tmp\.(?:"
                       + "|".join(re.escape(s) for s in _TMP_SUFFIXES) + ")$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temp_files() -> list[Path]:
    """Remove the decoded caches' temp files left by killed processes of this host (pid no
    longer alive); returns the removed paths."""
    removed = []
    for path in (default_cache_dir() / "decoded").glob("*/*.tmp.*"):
        m = _TMP_NAME.match(path.name)
        if m and m["host"] in (None, _HOST) and not _pid_alive(int(m["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


_noted: set[tuple[str, ...]] = set()  # skipped lists already printed by this process


def _note_skipped(where: Path, skipped: list[str], total: int, shown: int = 5) -> None:
    """Tell (once per process and list) which sequences `skip_bad` left out."""
    key = (str(where), *skipped)
    if key in _noted:
        return
    _noted.add(key)
    lines = [f"warning: {where}: skipped {len(skipped)} of {total} sequences that fail the "
             "data checks (skip_bad):"] + [f"  {p}" for p in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"  ... and {len(skipped) - shown} more (cvae check-data lists them all)")
    print("\n".join(lines), file=sys.stderr)


def load_split(root: Path | str, split: str, progress: bool = True,
               skip_bad: bool = False) -> SplitArrays:
    """Decode a split once into the cache and memory-map it; reuse while the data is unchanged.

    A sequence that fails the checks (`read_sequence`, or a file where its folder should be)
    is a DataError, or with `skip_bad` left out and listed on stderr. The frames file of a
    split with skipped sequences keeps their unused rows at its end.
    """
    root = Path(root)
    remove_stale_temp_files()
    dirs, stray = scan_split(root, split)
    where = root / split
    if not where.is_dir():
        raise DataError(f"{where}: " + ("not a folder" if where.exists()
                                          else "split folder not found"))
    if stray and not skip_bad:
        raise DataError(stray[0])
    if not dirs:
        raise DataError(stray[0] if stray else f"{where}: no sequences in split")
    cache = cache_dir(root)
    stem = cache / split

    def arrays(names: list[str], bad: list[str]) -> SplitArrays:
        if bad and not skip_bad:
            raise DataError(bad[0])
        if not names:
            raise DataError(f"{where}: no sequence passes the data checks ({bad[0]}, ...)")
        skipped = stray + bad
        if skipped:
            _note_skipped(where, skipped, len(dirs) + len(stray))
        n = len(names)
        return SplitArrays(split, np.load(f"{stem}.frames.npy", mmap_mode="r")[:n],
                           np.load(f"{stem}.conds.npy", mmap_mode="r")[:n], names, skipped)

    index_path = stem.with_suffix(".index.json")
    fingerprint = _fingerprint(root, dirs)
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            if index.get("fingerprint") == fingerprint:
                return arrays(index["names"], index["skipped"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it
    cache.mkdir(parents=True, exist_ok=True)
    tmp = f"{stem}.{_HOST}.{os.getpid()}.tmp"
    names, bad = [], []
    try:
        frames = np.lib.format.open_memmap(f"{tmp}.frames.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(dirs), N_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3))
        conds = np.empty((len(dirs), N_FRAMES, COND_DIM), dtype=np.float32)
        start = time.time()
        for i, d in enumerate(dirs):
            try:
                frames[len(names)], conds[len(names)] = read_sequence(d)
            except DataError as e:
                if not skip_bad:
                    raise
                bad.append(str(e))
            else:
                names.append(str(d.relative_to(where)))
            if progress and len(dirs) >= 100 and (i + 1) % (len(dirs) // 10) == 0:
                print(f"decoding {where}: {i + 1}/{len(dirs)} sequences "
                      f"({time.time() - start:.0f} s)", file=sys.stderr)
        frames.flush()
        del frames
        np.save(f"{tmp}.conds.npy", conds[:len(names)])
        index_path.unlink(missing_ok=True)  # no index may vouch for half-replaced arrays
        os.replace(f"{tmp}.frames.npy", f"{stem}.frames.npy")
        os.replace(f"{tmp}.conds.npy", f"{stem}.conds.npy")
        Path(f"{tmp}.index.json").write_text(json.dumps({"fingerprint": fingerprint,
                                                          "names": names, "skipped": bad}))
        os.replace(f"{tmp}.index.json", index_path)
    finally:  # a failed or interrupted decode leaves nothing behind
        for suffix in _TMP_SUFFIXES:
            Path(f"{tmp}.{suffix}").unlink(missing_ok=True)
    if progress:
        print(f"decoded cache of {where}: {stem}.frames.npy", file=sys.stderr)
    return arrays(names, bad)


# ----------------------------------------------------------------------------- dataset

@dataclass
class CondStats:
    """Per-dimension mean and std of the conditions, computed on the training split."""
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, conds: np.ndarray) -> "CondStats":
        flat = np.asarray(conds, dtype=np.float64).reshape(-1, COND_DIM)
        std = flat.std(axis=0)
        return cls(flat.mean(axis=0).astype(np.float32),
                   np.where(std > 1e-8, std, 1.0).astype(np.float32))

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["CondStats"]:
        if d is None:
            return None
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def resolve_root(data: Optional[str]) -> Path:
    """The dataset root: the given folder, or the embedded synthetic data (generated once)."""
    if data is None:
        return ensure_synthetic()
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    return root


class BairDataset(torch.utils.data.Dataset):
    """`(frames, conditions)` pairs: frames float (T, 3, 64, 64) in [0, 1], conditions (T, 7)
    (actions then end-effector positions), T = `seq_len` frames from `start` (the first frames,
    as in the evaluation protocol). `cond_stats` standardizes the conditions; `skip_bad` leaves
    out (and lists) sequences that fail the data checks instead of raising DataError."""

    def __init__(self, root: Path | str, split: str, seq_len: int = 12,
                 cond_stats: Optional[CondStats] = None, start: int = 0, skip_bad: bool = False):
        if not 1 <= seq_len <= N_FRAMES - start:
            raise ValueError(f"seq_len={seq_len}: expected 1..{N_FRAMES - start}")
        self.arrays = load_split(root, split, skip_bad=skip_bad)
        self.seq_len, self.start, self.cond_stats = seq_len, start, cond_stats

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames, conds = self.batch(np.array([i]), np.array([self.start]))
        return frames[0], conds[0]

    def batch(self, indices: np.ndarray, starts: np.ndarray,
              seq_len: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch in one gather: frames (B, T, 3, 64, 64) float, conditions (B, T, 7)."""
        t = seq_len or self.seq_len
        window = starts[:, None] + np.arange(t)[None, :]  # (B, T)
        order = np.argsort(indices, kind="stable")  # sorted reads are kinder to the memmap
        frames = np.empty((len(indices), t, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        conds = np.empty((len(indices), t, COND_DIM), np.float32)
        for j in order:
            frames[j] = self.arrays.frames[indices[j], window[j, 0]:window[j, -1] + 1]
            conds[j] = self.arrays.conds[indices[j], window[j, 0]:window[j, -1] + 1]
        if self.cond_stats is not None:
            conds = (conds - self.cond_stats.mean) / self.cond_stats.std
        # (B, T, H, W, C) uint8 -> (B, T, C, H, W) float in [0, 1]
        x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float().div_(255.0)
        return x, torch.from_numpy(conds)


# ----------------------------------------------------------------------------- check-data

def check_data(root: Path) -> dict:
    """Validate every sequence of every split; a report dict with counts, ranges and problems."""
    root = Path(root)
    report: dict = {"root": str(root), "splits": {}, "problems": []}
    if not root.is_dir():
        report["problems"].append(f"{root}: data folder not found")
        return report
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            if split_dir.exists():
                report["problems"].append(f"{split_dir}: not a folder")
            continue
        dirs, stray = scan_split(root, split)
        info: dict = {"sequences": len(dirs) + len(stray), "bad_sequences": len(stray)}
        report["splits"][split] = info
        report["problems"].extend(stray)
        if not dirs:
            if not stray:
                report["problems"].append(f"{split_dir}: no sequences in split")
            continue
        lo = np.full(COND_DIM, np.inf)
        hi = np.full(COND_DIM, -np.inf)
        for d in dirs:
            try:
                frames, conds = read_sequence(d)
            except DataError as e:
                info["bad_sequences"] += 1
                report["problems"].append(str(e))
                continue
            lo, hi = np.minimum(lo, conds.min(0)), np.maximum(hi, conds.max(0))
            info.setdefault("frame_shape", list(frames.shape[1:]))
        if "frame_shape" in info:  # at least one good sequence
            info["frames_per_sequence"] = N_FRAMES
            info["condition_dims"] = {"actions": ACTION_DIM, "positions": POSITION_DIM}
            info["action_range"] = [[float(a), float(b)] for a, b in zip(lo[:4], hi[:4])]
            info["position_range"] = [[float(a), float(b)] for a, b in zip(lo[4:], hi[4:])]
    if not report["splits"]:
        report["problems"].append(f"{root}: no split folder (expected one of {', '.join(SPLITS)})")
    return report


def _format_report(report: dict) -> str:
    lines = [f"data: {report['root']}"]
    for split, info in report["splits"].items():
        line = f"  {split:9s} {info['sequences']:6d} sequences"
        if "frame_shape" in info:
            h, w, c = info["frame_shape"]
            line += f", {N_FRAMES} frames of {h}x{w}x{c}, conditions 4 actions + 3 positions"
        if info["bad_sequences"]:
            line += f", {info['bad_sequences']} bad"
        lines.append(line)
        for name in ("action_range", "position_range"):
            if name in info:
                ranges = " ".join(f"[{a:.3g}, {b:.3g}]" for a, b in info[name])
                lines.append(f"            {name.replace('_', ' ')}: {ranges}")
    absent = [s for s in SPLITS if s not in report["splits"]]
    if absent and report["splits"]:
        lines.append(f"  absent splits: {', '.join(absent)}")
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines.extend(f"  {p}" for p in report["problems"])
    else:
        lines.append("ok")
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dir] or [resolve_root(None)]
    if args.stats:
        from cvae.datastats import dataset_stats, format_stats
        try:
            columns = [dataset_stats(d, max_sequences=args.max_sequences) for d in dirs]
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(columns, indent=2) if args.json else format_stats(columns))
        return 0
    status = 0
    for d in dirs:
        report = check_data(d)
        print(json.dumps(report, indent=2) if args.json else _format_report(report))
        status = max(status, 1 if report["problems"] else 0)
    return status


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check-data", help="validate a dataset root in the BAIR layout",
        description="Validate every sequence of a dataset root (<root>/<split>/<traj>/<k>/...): "
                    "print per-split counts, frame shape, condition dims and value ranges. "
                    "Exits 1 when any sequence is bad, listing each problem.")
    p.add_argument("dir", nargs="*",
                   help="dataset roots holding train/, validate/ and/or test/ (default: the "
                        "embedded synthetic data); with --stats also a GIF of frames")
    p.add_argument("--stats", action="store_true",
                   help="print statistics to compare with real BAIR (colour, pixels changed "
                        "between frames, position step per action, action value sets, "
                        "copy-last PSNR), one column per dataset")
    p.add_argument("--max-sequences", type=int, default=40,
                   help="sequences per dataset for --stats (default: 40)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_check)
