"""Checkpoints a user may hand to `cvae evaluate`: every unusable one is one line naming the
file and the problem, exit 2, and nothing in it is unpickled beyond tensors and plain data."""
import os
import pathlib

import pytest
import torch

from cvae import checkpoint
from cvae.__main__ import main
from cvae.checkpoint import CheckpointError, load_model
from cvae.config import preset
from cvae.model import SVG


class Planted:
    """Unpickling this would create a folder: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def good_state() -> dict:
    cfg = preset("tiny")
    return {"config": cfg.to_dict(), "model": SVG(cfg).state_dict(), "cond_stats": None,
            "epoch": 1}


def write(directory: pathlib.Path, how: str) -> tuple[pathlib.Path, str]:
    """A checkpoint directory broken in one way, and the problem its error must name."""
    file = directory / checkpoint.STATE_FILE
    if how == "missing":
        return directory, "checkpoint not found"
    state = good_state()
    if how == "empty":
        directory.mkdir()
        file.write_bytes(b"")
        return file, "empty file"
    if how == "no config":
        del state["config"]
        expected = "no config in the checkpoint"
    elif how == "bad config":
        state["config"]["rnn_sise"] = 64
        expected = "bad config: unknown config key 'rnn_sise'"
    elif how == "size mismatch":
        state["config"]["rnn_size"] = 48
        expected = "weights do not fit the checkpoint's config: "
    elif how == "not a dict":
        state = [1, 2, 3]
        expected = "not a checkpoint of this project (a list, expected a dict)"
    elif how == "pickled object":
        state["history"] = [Planted(directory.parent / "code-ran")]
        expected = ("not a checkpoint of this project (it holds objects other than tensors and "
                    f"plain data: {os.mkdir.__module__}.mkdir); not loaded")
    checkpoint.save(directory, state)
    if how == "truncated":
        data = file.read_bytes()
        file.write_bytes(data[:len(data) // 2])
        expected = f"not a readable checkpoint ({len(data) // 2} bytes: truncated"
    return file, expected


CASES = ["missing", "empty", "truncated", "no config", "bad config", "size mismatch",
         "not a dict", "pickled object"]


def test_a_good_checkpoint_loads(tmp_path):
    checkpoint.save(tmp_path, good_state())
    model, cfg, stats = load_model(tmp_path)
    assert cfg.rnn_size == preset("tiny").rnn_size and stats is None and not model.training


@pytest.mark.parametrize("how", CASES)
def test_unusable_checkpoints_are_one_line_errors(tmp_path, how, capsys):
    directory = tmp_path / "ckpt"
    file, expected = write(directory, how)
    with pytest.raises(CheckpointError) as err:
        load_model(directory)
    message = str(err.value)
    assert message.startswith(f"{file}: ") and expected in message and "\n" not in message
    assert "weights_only" not in message
    assert not (tmp_path / "code-ran").exists()
    assert main(["evaluate", "--checkpoint", str(directory)]) == 2
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"error: {message}"] and out.out == ""


def test_size_mismatch_names_the_first_tensor_and_counts_the_rest(tmp_path):
    state = good_state()
    state["config"]["z_dim"] = 5
    checkpoint.save(tmp_path, state)
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    expected = SVG(preset("tiny", z_dim=5)).state_dict()
    differ = [k for k, v in expected.items() if v.shape != state["model"][k].shape]
    k = differ[0]
    shape = "x".join(map(str, state["model"][k].shape))
    want = "x".join(map(str, expected[k].shape))
    assert (f"{k} is {shape} in the file, {want} for the config (and {len(differ) - 1} more)"
            in str(err.value))


def test_checkpoints_load_on_cpu_then_move(tmp_path):
    checkpoint.save(tmp_path, good_state())
    model, _, _ = load_model(tmp_path / checkpoint.STATE_FILE, device="cpu")
    assert all(p.device == torch.device("cpu") for p in model.parameters())
