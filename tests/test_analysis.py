"""analysis/: a synthetic sweep experiment with known values -> frames, tables, plots, report."""
from __future__ import annotations

import csv
import json
import re
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.plots import PLOTS, param_importances
from analysis.report import build_report, main
from analysis.results import ExperimentError, best_checkpoint, load_experiment
from analysis.tables import compute_table, effect_table, fmt, mode_table, topk_table

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8
SEARCHED = {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "tfr_start_decay_epoch": {"type": "int", "low": 0, "high": 20},
            "kl_anneal": {"type": "categorical",
                          "choices": ["monotonic", "cyclical", "cyclical-sigmoid", "none"]},
            "kl_anneal_cycle": {"type": "int", "low": 1, "high": 4,
                                "when": {"kl_anneal": ["cyclical", "cyclical-sigmoid"]}}}
# number -> (trial_id, searched values, val_psnr per epoch (None: the diverged report), status)
TRIALS = {
    0: ("aaaa0_00000", ("monotonic", 4, 1e-3, 5), [20, 22, 23, 24, 24.5, 25.0, 24.8, 24.9],
        "completed"),
    1: ("aaaa1_00001", ("monotonic", 4, 5e-3, 10), [19, 21, 21.5, 22.0], "early_stopped"),
    2: ("aaaa2_00002", ("cyclical", 2, 2e-3, 0), [21, 23, 24, 25, 26, 27.0, 26.8, 26.5],
        "completed"),
    3: ("aaaa3_00003", ("cyclical", 4, 1e-4, 15), [18, 20.0], "early_stopped"),
    4: ("aaaa4_00004", ("cyclical", 1, 8e-3, 5), [18, 19.0, None], "diverged"),
    5: ("aaaa5_00005", ("none", 4, 1e-3, 10), [20, 21, 22, 23, 23.5, 24.0, 23.9, 23.8],
        "completed"),
}
REPEATED = {2: (5, 30.0)}  # trial 2 reported epoch 5 twice (restore); the first row said 30.0
KEPT = {0: (5, 7), 1: (3,), 2: (6, 8), 3: (1,), 4: (1,)}  # checkpoint indices; trial 5 kept none
TEST_PSNR = {("aaaa0_00000", "checkpoint_000005"): 24.5,  # what the fake evaluation returns
             ("aaaa2_00002", "checkpoint_000006"): 26.25}


def _rows(tid: str, psnrs: list, repeated=None) -> list[dict]:
    """result.json rows as Ray writes them: one per report, checkpoint_<report index>."""
    epochs = list(enumerate(psnrs, start=1))
    if repeated:
        epochs.insert(repeated[0] - 1, repeated)
    rows = []
    for i, (epoch, psnr) in enumerate(epochs):
        diverged = psnr is None
        rows.append({"epoch": epoch, "training_iteration": i + 1, "trial_id": tid,
                     "loss": math.nan if diverged else 1.0 / epoch, "mse": 0.01 / epoch,
                     "kld": 5.0 / epoch,
                     "beta": min(1.0, epoch / 4), "tfr": max(0.0, 1 - epoch / 8),
                     "val_psnr": 0.0 if diverged else psnr, "val_ssim": 0.5, "diverged": diverged,
                     "epoch_time_s": 10.0, "time_total_s": 10.0 * epoch,
                     "checkpoint_dir_name": f"checkpoint_{i:06d}", "config": {"lr": 1.0}})
    return rows


def make_experiment(root: Path, finished=True, trials_json=True, num_samples=6,
                    with_ckpt_names=True, numbers=tuple(TRIALS)) -> Path:
    """<root>/exp with the TRIALS in `numbers`, laid out as search/ writes a sweep."""
    exp = root / "exp"
    exp.mkdir(parents=True)
    registry = {}
    for n in numbers:
        tid, (mode, cycles, lr, tfr_start), psnrs, status = TRIALS[n]
        trial_dir = exp / f"t{n}_{tid}"
        trial_dir.mkdir()
        params = {"kl_anneal": mode, "kl_anneal_cycle": cycles, "lr": lr,
                  "tfr_start_decay_epoch": tfr_start, "epochs": EPOCHS, "batch_size": 16}
        (trial_dir / "params.json").write_text(json.dumps(params))
        rows = _rows(tid, psnrs, REPEATED.get(n))
        for i in KEPT.get(n, ()):
            (trial_dir / f"checkpoint_{i:06d}").mkdir()
            torch.save({"epoch": rows[i]["epoch"]}, trial_dir / f"checkpoint_{i:06d}" / "state.pt")
        if not with_ckpt_names:
            for row in rows:
                del row["checkpoint_dir_name"]
        (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        registry[tid] = {"dir": trial_dir.name, "status": status, "epochs": len(psnrs),
                         "best_val_psnr": max(p for p in psnrs if p), "optuna_state": None}
    sweep = {"name": "annealing", "space_file": "spaces/annealing.yaml", "metric": "val_psnr",
             "mode": "max", "scheduler_metric": "best", "num_samples": num_samples,
             "epochs": EPOCHS, "searched": SEARCHED,
             "base": {"epochs": EPOCHS, "kl_anneal": "cyclical", "kl_anneal_cycle": 4, "lr": 0.002,
                      "tfr_start_decay_epoch": 10},
             "started": "2025-01-01T00:00:00", "finished": finished,
             "wall_time_s": 500.0 if finished else None}
    (exp / "sweep.json").write_text(json.dumps(sweep))
    if trials_json:
        (exp / "trials.json").write_text(json.dumps(registry))
    return exp


@pytest.fixture
def fake_evaluate(monkeypatch):
    """Replace cvae.evaluate.evaluate_checkpoint with a fake writing tiny media; record calls."""
    calls = []

    def evaluate_checkpoint(path, data=None, split="test", n_past=2, n_future=10, media_dir=None,
                            **kwargs):
        path, media = Path(path), Path(media_dir)
        calls.append({"path": path, "data": data, "split": split, "n_past": n_past,
                      "n_future": n_future, "media_dir": media})
        media.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(media / "grid.png")
        Image.new("RGB", (8, 8), "blue").save(media / "psnr_per_frame.png")
        Image.new("RGB", (8, 8), "green").save(media / "prediction.gif")
        return {"psnr": TEST_PSNR[(path.parent.name.split("_", 1)[1], path.name)], "ssim": 0.8,
                "baseline_psnr": 20.0, "baseline_ssim": 0.7, "psnr_per_frame": [25.0] * n_future,
                "n_sequences": 8, "media": {"gif": str(media / "prediction.gif"),
                                            "grid": str(media / "grid.png"),
                                            "psnr_plot": str(media / "psnr_per_frame.png")}}

    monkeypatch.setattr("cvae.evaluate.evaluate_checkpoint", evaluate_checkpoint)
    return calls


def _by(table, key: str) -> dict:
    return {row[key]: row for row in table.frame.to_dict("records")}


def test_loader_dedupes_repeated_epochs_and_reads_statuses(tmp_path):
    exp = load_experiment(make_experiment(tmp_path))
    hist = exp.trial_history("aaaa2_00002")
    assert hist["epoch"].tolist() == list(range(1, 9))
    assert hist.loc[hist["epoch"] == 5, "val_psnr"].item() == 26  # the last row of epoch 5 wins
    t = exp.trials
    assert t.loc["aaaa2_00002", "best_val_psnr"] == 27.0 and t.loc["aaaa2_00002", "best_epoch"] == 6
    assert t["epochs"].tolist() == [8, 4, 8, 2, 3, 8]
    assert t["status"].tolist() == ["completed", "early_stopped", "completed", "early_stopped",
                                    "diverged", "completed"]
    cyclical = [False, False, True, True, True, False]
    assert t["kl_anneal_cycle"].notna().tolist() == cyclical  # cycles count for cyclical modes only
    assert t.loc["aaaa4_00004", "best_val_psnr"] == 19.0


@pytest.mark.parametrize("finished, short",
                         [(True, "early_stopped"), (False, "running/incomplete")])
def test_status_inferred_without_trials_json(tmp_path, finished, short):
    exp = load_experiment(make_experiment(tmp_path, finished=finished, trials_json=False))
    assert exp.trials["status"].tolist() == ["completed", short, "completed", short, "diverged",
                                             "completed"]
    assert set(exp.trials["status_source"]) == {"inferred"}


@pytest.mark.parametrize("with_ckpt_names", [True, False])
def test_best_checkpoint_matches_result_rows(tmp_path, with_ckpt_names):
    """Via Ray's checkpoint_dir_name column, or the epoch in state.pt when rows do not name them."""
    exp = load_experiment(make_experiment(tmp_path, with_ckpt_names=with_ckpt_names))
    path, epoch = best_checkpoint(exp, "aaaa2_00002")
    assert (path.name, epoch) == ("checkpoint_000006", 6)
    path, epoch = best_checkpoint(exp, "aaaa0_00000")
    assert (path.name, epoch) == ("checkpoint_000005", 6)
    assert best_checkpoint(exp, "aaaa5_00005") is None


def test_mode_table_numbers(tmp_path):
    exp = load_experiment(make_experiment(tmp_path))
    rows = _by(mode_table(exp, {"monotonic": 24.5, "cyclical": 26.25}), "mode")
    assert list(rows) == ["monotonic", "cyclical", "none"]
    expect = {"monotonic": (2, 25.0, 23.5, 24.5, "aaaa0_00000", 1e-3, 5, None, 8),
              "cyclical": (3, 27.0, 20.0, 26.25, "aaaa2_00002", 2e-3, 0, 2, 8),
              "none": (1, 24.0, 24.0, None, "aaaa5_00005", 1e-3, 10, None, 8)}
    for mode, values in expect.items():
        row = rows[mode]
        got = tuple(row[c] for c in ["trials", "best val PSNR", "median val PSNR",
                                     "test PSNR (best)", "best trial", "lr", "tfr decay start",
                                     "cycles", "epochs run (best)"])
        assert tuple(None if fmt(g) == "-" else g for g in got) == values


def test_topk_and_effects_and_compute(tmp_path):
    exp = load_experiment(make_experiment(tmp_path))
    top = topk_table(exp, 3).frame
    assert top["trial"].tolist() == ["aaaa2_00002", "aaaa0_00000", "aaaa5_00005"]
    assert top["rank"].tolist() == [1, 2, 3] and top["best val PSNR"].tolist() == [27.0, 25.0, 24.0]
    assert set(SEARCHED) | {"status", "epochs"} <= set(top.columns)

    effects = effect_table(exp).frame
    mode = effects[effects["parameter"] == "kl_anneal"].set_index("group")
    assert mode["trials"].to_dict() == {"monotonic": 2, "cyclical": 3, "none": 1}
    assert mode["median"].to_dict() == {"monotonic": 23.5, "cyclical": 20.0, "none": 24.0}
    assert mode["best group"].to_dict() == {"monotonic": False, "cyclical": False, "none": True}
    cycles = effects[effects["parameter"] == "kl_anneal_cycle"]
    assert cycles["group"].tolist() == ["1", "2", "4"]  # cyclical trials only, one group per value
    assert cycles["spearman rho"].iloc[0] == pytest.approx(0.5)
    lr = effects[effects["parameter"] == "lr"]
    assert len(lr) == 3 and lr["trials"].sum() == 6  # terciles

    compute = compute_table(exp).frame.set_index("quantity")["value"]
    assert compute["trial-epochs run"] == 33
    assert compute["grid budget (trials x epochs)"] == 48
    assert compute["fraction saved"] == pytest.approx(15 / 48)
    assert compute["total trial time (s)"] == pytest.approx(330.0)
    assert compute["sweep wall time (s)"] == 500.0


def _md_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines()
             if line.startswith("|") and not re.fullmatch(r"\|[-:|]+\|", line)]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def _tex_rows(text: str) -> list[list[str]]:
    body = text.split(r"\toprule")[1].split(r"\bottomrule")[0].replace(r"\midrule", "")
    unescape = {r"\_": "_", r"\&": "&", r"\%": "%", r"\#": "#"}
    rows = []
    for line in filter(None, body.strip().splitlines()):
        cells = line.removesuffix(r" \\").split(" & ")
        for old, new in unescape.items():
            cells = [c.replace(old, new) for c in cells]
        rows.append([c.strip() for c in cells])
    return rows


def _csv_value(text: str):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def test_report_files_agree_and_embed(tmp_path, fake_evaluate):
    exp_dir = make_experiment(tmp_path)
    out = tmp_path / "out"
    report = build_report(exp_dir, out, quiet=True, top_k=3)
    assert report == out / "report.md"

    assert {c["path"].name for c in fake_evaluate} == {"checkpoint_000005", "checkpoint_000006"}
    for call in fake_evaluate:
        assert (call["split"], call["n_past"], call["n_future"]) == ("test", 2, 10)
        assert call["media_dir"].parent == out / "media"

    for name in PLOTS:
        png = out / "plots" / f"{name}.png"
        assert png.stat().st_size > 1000, name
    for name in ("modes", "top_trials", "effects", "compute"):
        md = _md_rows((out / "tables" / f"{name}.md").read_text())
        tex = _tex_rows((out / "tables" / f"{name}.tex").read_text())
        with open(out / "tables" / f"{name}.csv", newline="") as f:
            rows = list(csv.reader(f))
        as_csv = [rows[0]] + [[fmt(_csv_value(c)) for c in row] for row in rows[1:]]
        assert md == tex == as_csv, name
    modes = _md_rows((out / "tables" / "modes.md").read_text())
    assert modes[2][:5] == ["cyclical", "3", "27.00", "20.00", "26.25"] and modes[3][4] == "-"

    text = report.read_text()
    assert "Traceability" in text and "![val_psnr](plots/val_psnr.png)" in text
    assert "aaaa2_00002" in text and "media/cyclical/prediction.gif" in text
    assert "trial aaaa5_00005 kept no checkpoint" in text
    assert "Missing or incomplete" not in text
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64") >= len(PLOTS) + 4 and "data:image/gif;base64" in page
    assert "<table>" in page and "src='plots/" not in page


def test_partial_experiment_names_missing_trials(tmp_path):
    exp_dir = make_experiment(tmp_path, finished=False, num_samples=9, numbers=(0, 1, 2, 3))
    registry = json.loads((exp_dir / "trials.json").read_text())
    for tid in ("aaaa1_00001", "aaaa3_00003"):  # still training: not yet in trials.json
        del registry[tid]
    (exp_dir / "t6_bbbb6_00006").mkdir()
    params = {"kl_anneal": "none", "lr": 1e-3}
    (exp_dir / "t6_bbbb6_00006" / "params.json").write_text(json.dumps(params))
    registry["bbbb6_00006"] = {"dir": "t6_bbbb6_00006", "status": "pending", "epochs": 0,
                               "best_val_psnr": None, "optuna_state": None}
    (exp_dir / "trials.json").write_text(json.dumps(registry))

    exp = load_experiment(exp_dir)
    assert exp.trials["status"].to_dict() == {
        "aaaa0_00000": "completed", "aaaa1_00001": "running/incomplete", "aaaa2_00002": "completed",
        "aaaa3_00003": "running/incomplete", "bbbb6_00006": "missing",
        "not-started-6": "missing", "not-started-7": "missing", "not-started-8": "missing",
        "not-started-9": "missing"}
    text = build_report(exp_dir, quiet=True, evaluate=False).read_text()
    section = text.split("## Missing or incomplete trials")[1].split("\n## ")[0]
    for tid in ("bbbb6_00006", "aaaa1_00001", "aaaa3_00003", "not-started-9"):
        assert tid in section
    assert "never started" in section and "evaluation disabled" in text
    assert (exp_dir / "report.html").is_file() and (exp_dir / "plots" / "compute.png").is_file()


def test_importance_needs_three_trials(tmp_path):
    exp = load_experiment(make_experiment(tmp_path / "a", numbers=(0, 2), num_samples=2))
    assert param_importances(exp) is None
    build_report(exp.path, quiet=True, evaluate=False)
    assert (exp.path / "plots" / "importance.png").stat().st_size > 1000
    full = param_importances(load_experiment(make_experiment(tmp_path / "b")))
    assert set(full) == set(SEARCHED) and sum(full.values()) == pytest.approx(1.0)


def test_unsearched_mode_uses_base(tmp_path):
    exp_dir = make_experiment(tmp_path)
    sweep = json.loads((exp_dir / "sweep.json").read_text())
    del sweep["searched"]["kl_anneal"], sweep["searched"]["kl_anneal_cycle"]
    (exp_dir / "sweep.json").write_text(json.dumps(sweep))
    for params_file in exp_dir.glob("*/params.json"):
        params = json.loads(params_file.read_text())
        del params["kl_anneal"], params["kl_anneal_cycle"]
        params_file.write_text(json.dumps(params))
    exp = load_experiment(exp_dir)
    assert set(exp.trials["kl_anneal"]) == {"cyclical"}
    assert exp.trials["kl_anneal_cycle"].eq(4).all()
    build_report(exp_dir, quiet=True, evaluate=False)
    modes = _md_rows((exp_dir / "tables" / "modes.md").read_text())
    assert modes[1][:3] == ["cyclical", "6", "27.00"] and len(modes) == 2


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "sweep.json" in err
    exp_dir = make_experiment(tmp_path)
    args = [str(exp_dir), "--no-evaluate", "--top-k", "2", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "report.md")
    assert len(_md_rows((tmp_path / "r" / "tables" / "top_trials.md").read_text())) == 3
    with pytest.raises(ExperimentError):
        load_experiment(tmp_path)


def test_module_entry_point(tmp_path):
    run = subprocess.run([sys.executable, "-m", "analysis.report", "--help"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0
    assert all(flag in run.stdout for flag in ("--out", "--no-evaluate", "--top-k", "--data"))
    bad = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def _effect_groups(searched: dict, columns: dict) -> dict:
    """effect_table of trials with the given parameter values: {param: {group label: trials}}."""
    from analysis.results import Experiment

    n = len(next(iter(columns.values())))
    trials = pd.DataFrame({**columns, "best_val_psnr": [20.0 + i for i in range(n)],
                           "status": ["completed"] * n})
    exp = Experiment(Path("exp"), {"searched": searched}, trials, pd.DataFrame(),
                     pd.DataFrame())
    frame = effect_table(exp).frame
    return {p: dict(zip(g["group"], g["trials"])) for p, g in frame.groupby("parameter")}


def test_effect_groups_are_disjoint_with_unambiguous_labels():
    searched = {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                "tfr_start_decay_epoch": {"type": "int", "low": 0, "high": 5}}
    groups = _effect_groups(searched, {
        "lr": [0.000329, 0.001, 0.002, 0.002, 0.002, 0.002, 0.0045, 0.009],
        "tfr_start_decay_epoch": pd.array([0, 0, 1, 3, 3, 3, 5, 2], dtype="Int64")})
    # ties stay together: 0.002 is one group, not also the top of "[0.000329, 0.002]"
    assert groups["lr"] == {"[0.000329, 0.001]": 2, "0.002": 4, "[0.0045, 0.009]": 2}
    assert groups["tfr_start_decay_epoch"] == {"0": 2, "1": 1, "2": 1, "3": 3, "5": 1}
    close = _effect_groups({"lr": searched["lr"]},
                           {"lr": [0.001, 0.0015, 0.002, 0.0020001, 0.003, 0.004]})
    assert list(close["lr"]) == ["[0.001, 0.0015]", "[0.002, 0.0020001]", "[0.003, 0.004]"]


def test_importances_come_from_the_sweeps_optuna_study(tmp_path):
    """With the journal in the experiment, the study's own trials count (PRUNED ones at their
    best intermediate value); without it, the trials table is used."""
    import optuna

    from analysis.results import OPTUNA_JOURNAL, OPTUNA_STUDY

    exp = load_experiment(make_experiment(tmp_path))
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp.path / OPTUNA_JOURNAL)))
    study = optuna.create_study(study_name=OPTUNA_STUDY, storage=storage, direction="maximize")
    for i in range(6):  # only lr is in the study: the table's other columns must not count
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        for step in (1, 2):
            trial.report(20.0 - abs(math.log10(lr / 2e-3)) * step, step)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if i % 2 else None,
                   values=None if i % 2 else 25.0 - abs(math.log10(lr / 2e-3)))
    failed = study.ask()
    failed.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    importances = param_importances(exp)
    assert set(importances) == {"lr"} and importances["lr"] == pytest.approx(1.0)
    (exp.path / OPTUNA_JOURNAL).unlink()
    assert set(param_importances(exp)) == set(SEARCHED)
