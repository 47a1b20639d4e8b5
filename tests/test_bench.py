import json

import pytest
import torch

from cvae.__main__ import main
from cvae.config import preset
from cvae.model import SVG


def test_channels_last_does_not_change_cpu_results():
    torch.manual_seed(0)
    a = SVG(preset("tiny")).eval()
    b = SVG(preset("tiny")).eval()
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    x, c = torch.rand(2, 6, 3, 64, 64), torch.randn(2, 6, 7)
    outs = []
    for m in (a, b):
        torch.manual_seed(1)
        out = m(x, c, True)
        (out.mse + out.kld).backward()
        outs.append((out.mse.item(), [p.grad for p in m.parameters()]))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-5)
    for ga, gb in zip(outs[0][1], outs[1][1]):
        assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-6)


def test_bench_cli_reports_timings_and_comparison(capsys):
    assert main(["bench", "--preset", "tiny", "--batch", "2", "--seq-len", "6", "--steps", "1",
                 "--warmup", "0", "--threads", "1", "--device", "cpu", "--compare",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["runs"]) == {"project", "reference", "floor"}
    for run in result["runs"].values():
        assert run["s_per_step"] > 0
        assert run["frames_per_s"] == pytest.approx(12 / run["s_per_step"])
    assert result["threads"] == 1 and result["parameters"] > 0
    assert result["speedup_vs_reference"] > 0


def test_bench_loader_on_the_real_sample(bair_sample, capsys):
    assert main(["bench", "--data", str(bair_sample), "--split", "test", "--batch", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sequences"] == 1 and result["sequences_per_s"] > 0


def test_bench_loader_missing_split_is_one_line(bair_sample, capsys):
    assert main(["bench", "--data", str(bair_sample), "--split", "train"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "split folder not found" in err
