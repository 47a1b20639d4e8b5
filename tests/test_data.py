import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvae import data
from cvae.__main__ import main
from cvae.data import (BairDataset, CondStats, DataError, cache_dir, check_data, load_split,
                       read_sequence, sequence_dirs)

SEQ = "traj_0_to_255.tfrecords/175"


def copy_sample(bair_sample: Path, dst: Path) -> Path:
    shutil.copytree(bair_sample / "test", dst / "test")
    return dst / "test" / SEQ


# ------------------------------------------------------------------ the real BAIR sample

def test_loader_reads_the_real_sample_exactly(bair_sample):
    seq = bair_sample / "test" / SEQ
    ds = BairDataset(bair_sample, "test", seq_len=30)
    assert len(ds) == 1
    frames, conds = ds[0]
    assert frames.shape == (30, 3, 64, 64) and frames.dtype == torch.float32
    assert conds.shape == (30, 7)
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    actions = np.loadtxt(seq / "actions.csv", delimiter=",")
    positions = np.loadtxt(seq / "endeffector_positions.csv", delimiter=",")
    assert np.allclose(conds[:, :4].numpy(), actions, atol=1e-7)
    assert np.allclose(conds[:, 4:].numpy(), positions, atol=1e-7)
    for t in (0, 13, 29):
        png = np.asarray(Image.open(seq / f"{t}.png"), dtype=np.float32) / 255
        assert torch.equal(frames[t], torch.from_numpy(png).permute(2, 0, 1))


def test_sequence_length_and_normalization_on_the_real_sample(bair_sample):
    full = BairDataset(bair_sample, "test", seq_len=30)[0][1].numpy()
    stats = CondStats.of(full[None])
    frames, conds = BairDataset(bair_sample, "test", seq_len=12, cond_stats=stats)[0]
    assert frames.shape == (12, 3, 64, 64) and conds.shape == (12, 7)
    assert np.allclose(conds.numpy(), (full[:12] - stats.mean) / stats.std, atol=1e-5)
    # statistics survive a round trip through plain data (as stored in checkpoints)
    again = CondStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert np.array_equal(again.mean, stats.mean) and np.array_equal(again.std, stats.std)


def test_check_data_on_the_real_sample(bair_sample, capsys):
    report = check_data(bair_sample)
    assert report["problems"] == []
    info = report["splits"]["test"]
    assert info["sequences"] == 1 and info["frame_shape"] == [64, 64, 3]
    lo = min(info["action_range"][0][0], info["action_range"][1][0])  # planar actions dx, dy
    hi = max(info["action_range"][0][1], info["action_range"][1][1])
    assert lo == pytest.approx(-0.065, abs=0.005) and hi == pytest.approx(0.070, abs=0.005)
    assert main(["check-data", str(bair_sample), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"]["sequences"] == 1


def test_decoded_cache_is_reused_and_refreshed(bair_sample, tmp_path):
    seq = copy_sample(bair_sample, tmp_path)
    first = load_split(tmp_path, "test", progress=False)
    assert isinstance(first.frames, np.memmap)
    again = load_split(tmp_path, "test", progress=False)
    assert np.array_equal(first.frames, again.frames)
    # replacing a frame changes the sequence folder: the cache is rebuilt
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(seq / "0.tmp.png")
    (seq / "0.tmp.png").replace(seq / "0.png")
    rebuilt = load_split(tmp_path, "test", progress=False)
    assert rebuilt.frames[0, 0].max() == 0


def test_in_place_edits_refresh_the_decoded_cache(bair_sample, tmp_path):
    """Overwriting a PNG or editing a CSV in place leaves the folder's mtime as it was (here
    restored explicitly); the cache must still see the change."""
    seq = copy_sample(bair_sample, tmp_path)
    frames_file = cache_dir(tmp_path) / "test.frames.npy"

    def reload_keeping_folder_mtime(edit) -> tuple:
        before = os.stat(seq)
        edit()
        os.utime(seq, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(seq).st_mtime_ns == before.st_mtime_ns
        return load_split(tmp_path, "test", progress=False)

    first = load_split(tmp_path, "test", progress=False)
    inode = frames_file.stat().st_ino
    assert first.frames[0, 5].max() > 0 and first.conds[0, 3, 0] != 0.25
    same = load_split(tmp_path, "test", progress=False)
    assert frames_file.stat().st_ino == inode  # unchanged data: the cache is reused
    assert np.array_equal(same.frames, first.frames)

    def overwrite_png():
        with open(seq / "5.png", "r+b") as f:  # same file, new content
            buf = io.BytesIO()
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="PNG")
            f.write(buf.getvalue())
            f.truncate()

    png = reload_keeping_folder_mtime(overwrite_png)
    assert png.frames[0, 5].max() == 0 and np.array_equal(png.frames[0, 4], first.frames[0, 4])

    def edit_csv():
        lines = (seq / "actions.csv").read_text().splitlines()
        lines[3] = ",".join(["0.25"] + lines[3].split(",")[1:])
        with open(seq / "actions.csv", "r+") as f:
            f.write("\n".join(lines) + "\n")
            f.truncate()

    csv = reload_keeping_folder_mtime(edit_csv)
    assert csv.conds[0, 3, 0] == 0.25 and np.array_equal(csv.conds[0, 4], first.conds[0, 4])


@pytest.mark.parametrize("failure", ["bad frame", "interrupted"])
def test_a_failed_decode_leaves_no_temp_files(bair_sample, tmp_path, monkeypatch, failure):
    seq = copy_sample(bair_sample, tmp_path)
    if failure == "bad frame":
        (seq / "5.png").write_bytes(b"not a png")
        expected = DataError
    else:
        def interrupt(d, n_frames=30):
            raise KeyboardInterrupt
        monkeypatch.setattr(data, "read_sequence", interrupt)
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        load_split(tmp_path, "test", progress=False)
    cache = cache_dir(tmp_path)
    assert cache.is_dir() and sorted(p.name for p in cache.iterdir()) == []


def test_stale_temp_files_of_dead_processes_are_removed(bair_sample, tmp_path):
    copy_sample(bair_sample, tmp_path)
    cache = cache_dir(tmp_path)
    cache.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is no longer alive
    dead, alive = child.pid, os.getppid()
    names = {f"test.{data._HOST}.{dead}.tmp.frames.npy": False,  # killed decode: removed
             f"test.{data._HOST}.{dead}.tmp.index.json": False,
             f"validate.{dead}.tmp.conds.npy": False,  # older name without the host
             f"test.{data._HOST}.{alive}.tmp.frames.npy": True,  # still decoding: kept
             f"test.elsewhere.{dead}.tmp.frames.npy": True}  # another host's pid: kept
    for name in names:
        (cache / name).write_bytes(b"\0" * 1000)
    load_split(tmp_path, "test", progress=False)
    left = {p.name for p in cache.iterdir()}
    assert {n for n, kept in names.items() if n in left} == {n for n, kept in names.items()
                                                             if kept}
    assert {"test.frames.npy", "test.conds.npy", "test.index.json"} <= left


def test_enumeration_is_deterministic_and_does_not_assume_k(tmp_path, bair_sample):
    src = bair_sample / "test" / SEQ
    for traj, ks in (("traj_256_to_511.tfrecords", ["300", "9"]), ("traj_0_to_255.tfrecords", ["17"])):
        for k in ks:
            shutil.copytree(src, tmp_path / "test" / traj / k)
    names = [f"{p.parent.name}/{p.name}" for p in sequence_dirs(tmp_path, "test")]
    assert names == ["traj_0_to_255.tfrecords/17", "traj_256_to_511.tfrecords/9",
                     "traj_256_to_511.tfrecords/300"]


# ------------------------------------------------------------------ bad data: one line each

def _break(seq: Path, how: str) -> str:
    if how == "missing frame":
        (seq / "7.png").unlink()
        return "7.png: missing frame"
    if how == "wrong size":
        Image.new("RGB", (32, 64)).save(seq / "3.png")
        return "3.png: image is 32x64, expected 64x64"
    if how == "wrong mode":
        Image.new("L", (64, 64)).save(seq / "3.png")
        return "3.png: image mode L, expected RGB"
    if how == "columns":
        (seq / "actions.csv").write_text("1,2,3\n" * 30)
        return "actions.csv: line 1 has 3 columns, expected 4"
    if how == "rows":
        (seq / "endeffector_positions.csv").write_text("1,2,3\n" * 12)
        return "endeffector_positions.csv: 12 rows, expected 30 (one per frame)"
    if how == "extra rows":
        with open(seq / "actions.csv", "a") as f:
            f.write("0.1,0.2,0,1\n")
        return "actions.csv: 31 rows, expected 30 (one per frame)"
    if how == "non-numeric":
        lines = (seq / "actions.csv").read_text().splitlines()
        lines[4] = "0.1,abc,0,0"
        (seq / "actions.csv").write_text("\n".join(lines))
        return "actions.csv: line 5 has a non-numeric value"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing frame", "wrong size", "wrong mode", "columns", "rows",
                                 "extra rows", "non-numeric"])
def test_bad_data_gives_one_line_naming_the_file(bair_sample, tmp_path, how, capsys):
    seq = copy_sample(bair_sample, tmp_path)
    expected = _break(seq, how)
    with pytest.raises(DataError) as err:
        read_sequence(seq)
    message = str(err.value)
    assert "\n" not in message and expected in message and str(seq) in message
    assert main(["check-data", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and expected in out


def test_empty_split_and_missing_root(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    report = check_data(tmp_path)
    assert any("no sequences in split" in p for p in report["problems"])
    with pytest.raises(DataError, match="no sequences in split"):
        BairDataset(tmp_path, "train")
    assert main(["check-data", str(tmp_path / "nowhere")]) == 1
    assert "data folder not found" in capsys.readouterr().out


def test_files_where_the_layout_has_folders_are_problems(bair_sample, tmp_path, capsys):
    for k in ("1", "2"):
        shutil.copytree(bair_sample / "test" / SEQ, tmp_path / "test" / "traj" / k)
    shutil.rmtree(tmp_path / "test" / "traj" / "2")
    (tmp_path / "test" / "traj" / "2").write_text("not a sequence")
    (tmp_path / "test" / "traj" / ".hidden").write_text("ignored")
    (tmp_path / "train").write_text("not a split")
    report = check_data(tmp_path)
    assert report["problems"] == [
        f"{tmp_path / 'train'}: not a folder",
        f"{tmp_path / 'test' / 'traj' / '2'}: a file where a sequence folder is expected"]
    assert report["splits"]["test"]["sequences"] == 2
    assert report["splits"]["test"]["bad_sequences"] == 1
    assert main(["check-data", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and not out.strip().endswith("ok")
    with pytest.raises(DataError, match="a file where a sequence folder is expected"):
        load_split(tmp_path, "test", progress=False)
    with pytest.raises(DataError, match="train: not a folder"):
        load_split(tmp_path, "train", progress=False)


def test_check_data_lists_every_bad_sequence(bair_sample, tmp_path, capsys):
    for k in ("1", "2", "3"):
        shutil.copytree(bair_sample / "test" / SEQ, tmp_path / "test" / "traj" / k)
    _break(tmp_path / "test" / "traj" / "1", "missing frame")
    _break(tmp_path / "test" / "traj" / "3", "columns")
    assert main(["check-data", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and "traj/1/7.png" in out and "traj/3/actions.csv" in out


def test_check_data_passes_on_generated_synthetic_data(synth_root, capsys):
    report = check_data(synth_root)
    assert report["problems"] == []
    assert {s: i["sequences"] for s, i in report["splits"].items()} == \
        {"train": 24, "validate": 8, "test": 8}
    assert main(["check-data", str(synth_root)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    frames, conds = BairDataset(synth_root, "train", seq_len=12)[3]
    assert frames.shape == (12, 3, 64, 64) and conds.shape == (12, 7)
