import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvae import checkpoint
from cvae.__main__ import main
from cvae.config import preset
from cvae.data import BairDataset
from cvae.evaluate import evaluate, evaluate_checkpoint
from cvae.metrics import psnr
from cvae.train import fit


@pytest.fixture(scope="module")
def tiny_checkpoint(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    fit(preset("tiny", data=str(synth_root), epochs=1),
        lambda row, d: checkpoint.save(out, checkpoint.load(d)))
    return out


def test_evaluate_on_the_real_sample_reports_the_copy_last_frame_baseline(
        tiny_checkpoint, bair_sample, capsys):
    r = evaluate_checkpoint(tiny_checkpoint, data=str(bair_sample), split="test")
    assert r["n_sequences"] == 1 and len(r["psnr_per_frame"]) == 10
    seq = bair_sample / "test" / "traj_0_to_255.tfrecords" / "175"
    frames = torch.stack([torch.from_numpy(np.asarray(Image.open(seq / f"{t}.png"), np.float32)
                                           / 255).permute(2, 0, 1) for t in range(12)])[None]
    copy = frames[:, 1:2].expand(1, 10, 3, 64, 64)
    expected = psnr(copy, frames[:, 2:])[0]
    assert r["baseline_psnr_per_frame"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert r["baseline_psnr"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(bair_sample)]) == 0
    out = capsys.readouterr().out
    assert "copy last frame" in out and f"{r['baseline_psnr']:6.2f} dB" in out


def test_best_of_n_samples_and_shuffled_conditions(tiny_checkpoint, synth_root):
    one = evaluate_checkpoint(tiny_checkpoint, split="test", samples=1)
    best = evaluate_checkpoint(tiny_checkpoint, split="test", samples=4)
    assert best["ssim"] >= one["ssim"] - 1e-9  # the first sample is among the four
    assert best["baseline_psnr"] == one["baseline_psnr"]
    shuffled = evaluate_checkpoint(tiny_checkpoint, split="test", shuffle_conditions=True)
    assert shuffled["shuffle_conditions"] and shuffled["baseline_psnr"] == one["baseline_psnr"]


class CondEcho(torch.nn.Module):
    """A stand-in model whose prediction is a grey level set by each step's conditions (a
    fraction of their scaled sum), so its output depends on them by construction; records
    what it was fed."""

    def __init__(self):
        super().__init__()
        self.fed = []

    def predict(self, past, cond, n_future, **kwargs):
        self.fed.append(cond.clone())
        level = (1000 * cond[:, -n_future:].sum(-1)).remainder(1)[..., None, None, None]
        # (B, T, 1, 1, 1)
        return level.expand(-1, -1, *past.shape[2:]).clone()  # (B, T, C, H, W)


@pytest.mark.parametrize("batch_size", [3, 32])
def test_shuffled_conditions_are_a_derangement_of_other_sequences(synth_root, batch_size):
    ds = BairDataset(synth_root, "test", seq_len=12)
    own = torch.stack([ds[i][1] for i in range(len(ds))])  # (N, 12, 7)
    assert len({tuple(c.flatten().tolist()) for c in own}) == len(ds)  # all distinct
    runs = {}
    for shuffle in (False, True):
        model = CondEcho()
        runs[shuffle] = evaluate(model, ds, shuffle_conditions=shuffle, batch_size=batch_size,
                                 keep_predictions=len(ds))
        fed = torch.cat(model.fed)
        source = [next(j for j in range(len(ds)) if torch.equal(fed[i], own[j]))
                  for i in range(len(ds))]
        if shuffle:  # every sequence gets another sequence's conditions, each used once
            assert sorted(source) == list(range(len(ds)))
            assert all(j != i for i, j in enumerate(source))
        else:
            assert source == list(range(len(ds)))
    # the scored prediction of sequence i is the one made from sequence source[i]'s conditions
    shuffled, own_pred = runs[True]["prediction"], runs[False]["prediction"]
    for i, j in enumerate(source):
        assert torch.equal(shuffled[i], own_pred[j]) and not torch.equal(shuffled[i], own_pred[i])
    assert torch.equal(runs[True]["ground_truth"], runs[False]["ground_truth"])
    assert runs[True]["psnr"] != runs[False]["psnr"]
    assert runs[True]["baseline_psnr"] == runs[False]["baseline_psnr"]


def test_evaluate_cli_json_horizon_and_media(tiny_checkpoint, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--n-future", "28",
                 "--max-sequences", "3", "--media", str(tmp_path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_sequences"] == 3 and len(r["ssim_per_frame"]) == 28
    for name in ("gif", "grid", "psnr_plot"):
        assert (tmp_path / r["media"][name].rsplit("/", 1)[-1]).stat().st_size > 0


def test_evaluate_cli_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none")]) == 2
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--n-future", "29"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "n_past + n_future" in lines[1]
