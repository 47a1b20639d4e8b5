"""The dance lab's data in its on-disk layout, the decoded cache and `check_dance`.

Layout (the lab's `dataloader.py` and `Tester.py`; the embedded synthetic data alike)::

    ROOT/train/train_img/frame<N>.png     ROOT/train/train_label/frame<N>.png
    ROOT/val/val_img/frame<N>.png         ROOT/val/val_label/frame<N>.png
    ROOT/test/test_img/<k>/frame0.png     ROOT/test/test_label/<k>/frame{0..629}.png
    ROOT/test/test_truth/<k>/frame{0..629}.png   optional: every frame of test sequence k,
                                           which the lab's data lacks; the embedded synthetic
                                           data has it, so the test protocol can be scored

A label is the RGB stick-figure rendering of the pose of the frame with the same file name.
Frames are ordered by the integer N (frame10 after frame9), converted to RGB and resized to
32x64 (H x W) with PIL's bilinear filter, as the lab's `transforms.Resize` does on PIL images.
Training clips are consecutive non-overlapping windows of `train_vi_len` (16) frames, of which
`partial` keeps the first int(N * partial) // 16; validation is one sequence of 630 frames.

Each split is decoded once into uint8 arrays (N, 32, 64, 3) for frames and labels in the user
cache (`$CVAE_CACHE`, beside the BAIR caches), keyed by the file names, sizes and modification
times, and memory-mapped afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from cvae.data import DataError, cache_dir, natural_key

FRAME_H, FRAME_W = 32, 64  # the lab's frame_H, frame_W
TRAIN_VI_LEN = 16  # the lab's train_vi_len: frames per training clip
VAL_VI_LEN = 630  # the lab's val_vi_len: frames of the validation (and each test) sequence
SPLITS = ("train", "val")  # the sequential splits; "test" has its own layout
TRUTH_FOLDER = "test_truth"  # test/<TRUTH_FOLDER>/<k>/: the optional test ground truth
CACHE_VERSION = 1
_FRAME_NAME = re.compile(r"frame(\d+)\.png")


# ----------------------------------------------------------------------------- file lists

def list_frames(folder: Path) -> list[Path]:
    """The frame<N>.png files of a folder ordered by N. A PNG with another name, or two files
    with the same N (frame7.png, frame07.png), is a DataError."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    numbered: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.suffix.lower() != ".png":
            continue
        m = _FRAME_NAME.fullmatch(path.name)
        if m is None:
            raise DataError(f"{path}: expected a name frame<N>.png")
        n = int(m.group(1))
        if n in numbered:
            raise DataError(f"{path}: frame number {n} also used by {numbered[n].name}")
        numbered[n] = path
    return [numbered[n] for n in sorted(numbered)]


def frame_number(path: Path) -> int:
    return int(_FRAME_NAME.fullmatch(Path(path).name).group(1))


def split_pairs(root: Path | str, split: str) -> list[tuple[Path, Path]]:
    """(frame, label) paths of a sequential split in frame order; every frame needs the label
    of the same name and every label a frame."""
    base = Path(root) / split
    frames = list_frames(base / f"{split}_img")
    labels = list_frames(base / f"{split}_label")
    if not frames:
        raise DataError(f"{base / f'{split}_img'}: no frame<N>.png files")
    names = {p.name for p in labels}
    for f in frames:
        if f.name not in names:
            raise DataError(f"{base / f'{split}_label' / f.name}: missing label for frame {f}")
    if len(labels) != len(frames):
        extra = next(p for p in labels if p.name not in {f.name for f in frames})
        raise DataError(f"{extra}: label without a frame ({len(labels)} labels for "
                        f"{len(frames)} frames)")
    return [(f, f.parent.parent / f"{split}_label" / f.name) for f in frames]


def test_sequences(root: Path | str) -> list[tuple[Path, list[Path]]]:
    """(first frame, labels) of each test sequence k, in the order of k. Labels must be
    frame0..frame<L-1>.png without gaps: frame t of the generated sequence follows label t."""
    base = Path(root) / "test"
    img_root, label_root = base / "test_img", base / "test_label"
    for d in (img_root, label_root):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found")
    seqs = sorted((p for p in img_root.iterdir() if p.is_dir()), key=natural_key)
    if not seqs:
        raise DataError(f"{img_root}: no test sequence folders")
    out = []
    for d in seqs:
        first = d / "frame0.png"
        if not first.is_file():
            raise DataError(f"{first}: missing first frame of test sequence {d.name}")
        labels = list_frames(label_root / d.name)
        for t, p in enumerate(labels):
            if frame_number(p) != t:
                raise DataError(f"{p.parent / f'frame{t}.png'}: missing label (labels of a "
                                "test sequence are frame0..frame<L-1>.png)")
        if not labels:
            raise DataError(f"{label_root / d.name}: no labels")
        out.append((first, labels))
    return out


# ----------------------------------------------------------------------------- decoding

def read_image(path: Path, expect: Optional[tuple[int, int]] = None,
               like: str = "the rest of its sequence") -> tuple[np.ndarray, tuple[int, int]]:
    """An image as uint8 (32, 64, 3) RGB, resized when needed, and its size (W, H) on disk.
    expect: the size (W, H) the image must have on disk, that of `like`."""
    try:
        with Image.open(path) as im:
            size = im.size
            if expect is not None and size != expect:
                raise DataError(f"{path}: image is {size[0]}x{size[1]}, expected "
                                f"{expect[0]}x{expect[1]} like {like}")
            rgb = im.convert("RGB")
            if size != (FRAME_W, FRAME_H):
                rgb = rgb.resize((FRAME_W, FRAME_H), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8), size
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: missing file") from None
    except Exception as e:  # PIL raises many types on corrupt files
        raise DataError(f"{path}: cannot decode image ({type(e).__name__})") from None


def read_pair(frame: Path, label: Path, size: Optional[tuple[int, int]] = None
              ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A frame and its label (uint8 (32, 64, 3) each) and their size on disk; the label must
    have the frame's size (else the stick figure would not be aligned), the frame `size`."""
    f, fsize = read_image(frame, size)
    lab, _ = read_image(label, fsize, like=f"its frame {frame}")
    return f, lab, fsize


# ----------------------------------------------------------------------------- decoded cache

def _fingerprint(paths: list[Path]) -> str:
    """File names, sizes and modification times."""
    h = hashlib.sha1(f"dance-{CACHE_VERSION}:{FRAME_H}x{FRAME_W}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.parent.name}/{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _cached(root: Path, key: str, fingerprint: str, build: Callable[[], dict]
            ) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays {name: array} and the index of a cache entry, memory-mapped; `build()` returns
    {"arrays": {name: array}, "index": {...}} when the entry is absent or stale."""
    stem = cache_dir(root) / f"dance-{key}"
    index_path = Path(f"{stem}.index.json")
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            if index.get("fingerprint") == fingerprint:
                return {n: np.load(f"{stem}.{n}.npy", mmap_mode="r")
                        for n in index["arrays"]}, index
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it
    built = build()
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{stem}.{socket.gethostname()}.{os.getpid()}.tmp"  # caches may be shared by hosts
    for n, a in built["arrays"].items():
        np.save(f"{tmp}.{n}.npy", a)
        os.replace(f"{tmp}.{n}.npy", f"{stem}.{n}.npy")
    index = dict(built["index"], fingerprint=fingerprint, arrays=list(built["arrays"]))
    Path(f"{tmp}.index.json").write_text(json.dumps(index))
    os.replace(f"{tmp}.index.json", index_path)
    return {n: np.load(f"{stem}.{n}.npy", mmap_mode="r") for n in built["arrays"]}, index


@dataclass
class DanceSplit:
    """A decoded sequential split: frames and labels uint8 (N, 32, 64, 3), frame numbers (N,)."""
    split: str
    frames: np.ndarray
    labels: np.ndarray
    numbers: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def load_dance_split(root: Path | str, split: str) -> DanceSplit:
    """Decode a train/val split once into the cache and memory-map it."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS} (test: load_dance_test)")
    root = Path(root)
    pairs = split_pairs(root, split)

    def build() -> dict:
        frames = np.empty((len(pairs), FRAME_H, FRAME_W, 3), np.uint8)
        labels = np.empty_like(frames)
        size = None
        for i, (f, lab) in enumerate(pairs):
            frames[i], labels[i], size = read_pair(f, lab, size)
        numbers = np.array([frame_number(f) for f, _ in pairs], dtype=np.int64)
        return {"arrays": {"frames": frames, "labels": labels, "numbers": numbers},
                "index": {"size_on_disk": list(size)}}

    arrays, _ = _cached(root, split, _fingerprint([p for pair in pairs for p in pair]), build)
    return DanceSplit(split, arrays["frames"], arrays["labels"], arrays["numbers"])


@dataclass
class DanceTest:
    """Decoded test split: first frames uint8 (K, 32, 64, 3) and every sequence's labels
    concatenated (sum L_k, 32, 64, 3); sequence k's labels are labels[offsets[k]:offsets[k+1]].
    `truth`, aligned with labels, holds every frame where the data has test ground truth."""
    first: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    names: list[str]
    truth: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.names)

    def sequence(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First frame (3, 32, 64) and labels (L, 3, 32, 64), float in [0, 1]."""
        lo, hi = self.offsets[k], self.offsets[k + 1]
        return to_tensor(self.first[k]), to_tensor(self.labels[lo:hi])


def ground_truth_files(root: Path | str, seqs: list[tuple[Path, list[Path]]]
                       ) -> Optional[list[Path]]:
    """The ground-truth frames of every test sequence (test/test_truth/<k>/frame<t>.png, one
    per label), or None when the data has none; truth for only some sequences, or a frame
    missing, is a DataError."""
    base = Path(root) / "test" / TRUTH_FOLDER
    if not base.is_dir():
        return None
    files = []
    for first, labels in seqs:
        for label in labels:
            path = base / first.parent.name / label.name
            if not path.is_file():
                raise DataError(f"{path}: missing ground-truth frame (test/{TRUTH_FOLDER} "
                                "holds every frame of every test sequence, or is absent)")
            files.append(path)
    return files


def load_dance_test(root: Path | str) -> DanceTest:
    """Decode the test split (and its ground truth, where present) once into the cache and
    memory-map it."""
    root = Path(root)
    seqs = test_sequences(root)
    truth_files = ground_truth_files(root, seqs)

    def build() -> dict:
        first = np.empty((len(seqs), FRAME_H, FRAME_W, 3), np.uint8)
        offsets = np.cumsum([0] + [len(labels) for _, labels in seqs])
        labels = np.empty((offsets[-1], FRAME_H, FRAME_W, 3), np.uint8)
        truth = None if truth_files is None else np.empty_like(labels)
        for k, (f, seq_labels) in enumerate(seqs):
            first[k], size = read_image(f)
            for t, lab in enumerate(seq_labels):
                i = offsets[k] + t
                labels[i], _ = read_image(lab, size)
                if truth is not None:
                    truth[i], _ = read_image(truth_files[i], size, like=f"its first frame {f}")
        arrays = {"first": first, "labels": labels, "offsets": offsets}
        if truth is not None:
            arrays["truth"] = truth
        return {"arrays": arrays, "index": {"names": [f.parent.name for f, _ in seqs]}}

    files = [p for f, labels in seqs for p in [f, *labels]] + (truth_files or [])
    arrays, index = _cached(root, "test", _fingerprint(files), build)
    return DanceTest(arrays["first"], arrays["labels"], np.asarray(arrays["offsets"]),
                     index["names"], arrays.get("truth"))


# ----------------------------------------------------------------------------- dataset

def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1] (the lab's ToTensor)."""
    x = torch.from_numpy(np.array(images))  # a copy: memory maps are read-only
    return x.movedim(-1, -3).float().div_(255.0)


class DanceClips(torch.utils.data.Dataset):
    """Consecutive non-overlapping windows of `clip_len` frames of a split (the lab's
    `Dataset_Dance`): clip i is frames [i * clip_len, (i + 1) * clip_len); `partial` keeps the
    first int(N * partial) // clip_len. Items are (frames, labels), float (clip_len, 3, 32, 64).
    Validation is `DanceClips(root, "val", VAL_VI_LEN)`: one 630-frame sequence."""

    def __init__(self, root: Path | str, split: str = "train", clip_len: int = TRAIN_VI_LEN,
                 partial: float = 1.0):
        if clip_len < 2 or not 0.0 < partial <= 1.0:
            raise ValueError(f"clip_len={clip_len}, partial={partial}: expected clip_len >= 2 "
                             "and 0 < partial <= 1")
        self.data = load_dance_split(root, split)
        self.clip_len = clip_len
        self.n_clips = int(len(self.data) * partial) // clip_len
        if self.n_clips == 0:
            raise DataError(f"{Path(root) / split / f'{split}_img'}: {len(self.data)} frames "
                            f"(partial {partial:g}) make no clip of {clip_len}")

    def __len__(self) -> int:
        return self.n_clips

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames, labels = self.batch(np.array([i]))
        return frames[0], labels[0]

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips `indices` in one gather: frames and labels float (B, clip_len, 3, 32, 64)."""
        indices = np.asarray(indices)
        if len(indices) and not (0 <= indices.min() and indices.max() < self.n_clips):
            raise IndexError(f"clip index out of range 0..{self.n_clips - 1}")
        rows = (indices[:, None] * self.clip_len + np.arange(self.clip_len)).ravel()
        shape = (len(indices), self.clip_len, FRAME_H, FRAME_W, 3)
        return (to_tensor(self.data.frames[rows].reshape(shape)),
                to_tensor(self.data.labels[rows].reshape(shape)))


# ----------------------------------------------------------------------------- check-data

def check_dance(root: Path | str, val_len: int = VAL_VI_LEN) -> dict:
    """Validate every file of every split without caching; a report dict with counts, sizes
    and one line per problem (`check-data --task dance`)."""
    root = Path(root)
    report: dict = {"root": str(root), "task": "dance", "splits": {}, "problems": []}
    problems = report["problems"]
    if not root.is_dir():
        problems.append(f"{root}: data folder not found")
        return report
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        info: dict = {}
        report["splits"][split] = info
        try:
            pairs = split_pairs(root, split)
        except DataError as e:
            problems.append(str(e))
            continue
        numbers = [frame_number(f) for f, _ in pairs]
        info["frames"] = len(pairs)
        info["gaps"] = int(sum(b - a > 1 for a, b in zip(numbers, numbers[1:])))
        size, bad = None, 0
        for f, lab in pairs:
            try:
                _, _, size = read_pair(f, lab, size)
            except DataError as e:
                bad += 1
                problems.append(str(e))
        info["bad_frames"] = bad
        if size is not None:
            info["size_on_disk"] = [size[1], size[0]]  # H, W
            info["resized"] = size != (FRAME_W, FRAME_H)
        if split == "train":
            info["clips"] = len(pairs) // TRAIN_VI_LEN
        elif len(pairs) < val_len:
            problems.append(f"{root / 'val' / 'val_img'}: {len(pairs)} frames, the validation "
                            f"protocol needs {val_len}")
    if (root / "test").is_dir():
        info = {}
        report["splits"]["test"] = info
        try:
            seqs = test_sequences(root)
        except DataError as e:
            problems.append(str(e))
            seqs = []
        info["sequences"] = len(seqs)
        info["labels_per_sequence"] = [len(labels) for _, labels in seqs]
        try:
            truth = ground_truth_files(root, seqs)
        except DataError as e:
            problems.append(str(e))
            truth = None
        info["ground_truth"] = truth is not None
        truth_of = dict(zip([lab for _, labels in seqs for lab in labels], truth or []))
        for f, labels in seqs:
            try:
                _, size = read_image(f)
                for lab in labels:
                    read_image(lab, size)
                    if lab in truth_of:
                        read_image(truth_of[lab], size, like=f"its first frame {f}")
            except DataError as e:
                problems.append(str(e))
    if not report["splits"]:
        problems.append(f"{root}: no split folder (expected train/, val/ and/or test/)")
    return report


def format_dance_report(report: dict) -> str:
    """`check_dance`'s report as the lines `check-data` prints."""
    lines = [f"data: {report['root']} (dance layout)"]
    for split, info in report["splits"].items():
        if split == "test":
            lengths = sorted(set(info["labels_per_sequence"]))
            lines.append(f"  test  {info['sequences']:6d} sequences, first frame given, "
                         f"{'/'.join(map(str, lengths)) or 0} pose labels each"
                         + (f", ground truth in test/{TRUTH_FOLDER}" if info["ground_truth"]
                            else ""))
            continue
        line = f"  {split:5s} {info.get('frames', 0):6d} frames with labels"
        if "size_on_disk" in info:
            h, w = info["size_on_disk"]
            line += f", {h}x{w}" + (f" resized to {FRAME_H}x{FRAME_W}" if info["resized"] else "")
        if "clips" in info:
            line += f", {info['clips']} clips of {TRAIN_VI_LEN}"
        if info.get("gaps"):
            line += f", {info['gaps']} gaps in the numbering"
        if info.get("bad_frames"):
            line += f", {info['bad_frames']} bad"
        lines.append(line)
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines.extend(f"  {p}" for p in report["problems"])
    else:
        lines.append("ok")
    return "\n".join(lines)
