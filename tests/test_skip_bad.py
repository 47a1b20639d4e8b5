"""skip_bad / --skip-bad: sequences that fail the data checks are left out and listed instead
of stopping the run; without it (the default) the first one stops it."""
import json
import shutil

import numpy as np
import pytest

from cvae import data
from cvae.__main__ import main
from cvae.config import preset
from cvae.data import DataError, cache_dir, load_split, sequence_dirs


@pytest.fixture(scope="module")
def corrupt_root(synth_root, tmp_path_factory):
    """The synthetic dataset with one undecodable PNG in train (sequence 5) and in test (2)."""
    root = tmp_path_factory.mktemp("corrupt") / "data"
    shutil.copytree(synth_root, root)
    bad = {}
    for split, i in (("train", 5), ("test", 2)):
        seq = sequence_dirs(root, split)[i]
        (seq / "7.png").write_bytes(b"not a png")
        bad[split] = (i, f"{seq / '7.png'}: cannot decode image")
    return root, bad


def test_load_split_skips_and_lists_bad_sequences(corrupt_root, synth_root, capsys):
    root, bad = corrupt_root
    i, problem = bad["train"]
    with pytest.raises(DataError, match="cannot decode image") as err:
        load_split(root, "train", progress=False)
    assert str(err.value).startswith(problem)
    clean = load_split(synth_root, "train", progress=False)
    kept = load_split(root, "train", progress=False, skip_bad=True)
    assert len(kept) == len(clean) - 1 and len(kept.skipped) == 1
    assert kept.skipped[0].startswith(problem)
    assert kept.names == clean.names[:i] + clean.names[i + 1:]
    others = [j for j in range(len(clean)) if j != i]
    assert np.array_equal(kept.frames, clean.frames[others])
    assert np.array_equal(kept.conds, clean.conds[others])
    err = capsys.readouterr().err
    assert f"warning: {root / 'train'}: skipped 1 of 24 sequences" in err and problem in err
    # the cache built while skipping serves skip_bad again, and never a strict load
    frames_file = cache_dir(root) / "train.frames.npy"
    inode = frames_file.stat().st_ino
    again = load_split(root, "train", progress=False, skip_bad=True)
    assert frames_file.stat().st_ino == inode and again.names == kept.names
    assert again.skipped == kept.skipped
    with pytest.raises(DataError, match="cannot decode image"):
        load_split(root, "train", progress=False)


def test_the_list_shows_the_first_few_and_counts_the_rest(tmp_path, capsys):
    problems = [f"{tmp_path}/traj/{k}/3.png: missing frame" for k in range(8)]
    data._note_skipped(tmp_path, problems, total=100)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (f"warning: {tmp_path}: skipped 8 of 100 sequences that fail the data "
                        "checks (skip_bad):")
    assert lines[1:6] == [f"  {p}" for p in problems[:5]]
    assert lines[6:] == ["  ... and 3 more (cvae check-data lists them all)"]


def test_a_split_with_no_good_sequence_is_an_error(corrupt_root, tmp_path):
    root, bad = corrupt_root
    seq = sequence_dirs(root, "train")[0]
    shutil.copytree(seq, tmp_path / "test" / "traj" / "0")
    (tmp_path / "test" / "traj" / "0" / "actions.csv").write_text("")
    with pytest.raises(DataError, match="no sequence passes the data checks"):
        load_split(tmp_path, "test", progress=False, skip_bad=True)


def test_skip_bad_is_a_config_field_the_sweep_can_set():
    assert preset("tiny").skip_bad is False
    assert preset("tiny", skip_bad="true").skip_bad is True  # as from a YAML or key=value


def test_train_and_evaluate_cli_skip_bad(corrupt_root, tmp_path, capsys, monkeypatch):
    root, bad = corrupt_root
    monkeypatch.setattr(data, "_noted", set())  # lists already shown in this process show again
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(root), "--out", str(out), "epochs=1",
            "epoch_size=2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {bad['train'][1]}")
    assert main(args + ["--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert f"{root / 'train'}: skipped 1 of 24" in err and bad["train"][1] in err
    assert f"{root / 'test'}: skipped 1 of 8" in err and bad["test"][1] in err
    assert json.loads((out / "config.json").read_text())["skip_bad"] is True
    assert json.loads((out / "test_metrics.json").read_text())["n_sequences"] == 7

    evaluate = ["evaluate", "--checkpoint", str(out / "checkpoint"), "--data", str(root)]
    assert main(evaluate) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad['test'][1]}")
    assert main(evaluate + ["--skip-bad", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_sequences"] == 7 and len(result["skipped"]) == 1
    assert result["skipped"][0].startswith(bad["test"][1])
