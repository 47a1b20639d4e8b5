"""What the report concludes (analysis.answers): one answer per searched parameter, over seeds
for a confirmation's factor, from single runs otherwise; on a fake sweep and confirmation."""
from __future__ import annotations

from test_analysis import SEARCHED, make_experiment
from test_confirm_metrics import KL, UNITS, write_confirmation

from analysis import stats
from analysis.report import build_report
from analysis.tables import fmt


def _answers(text: str) -> list[str]:
    return text.split("## Answers\n\n")[1].split("\n\n")[0].splitlines()


def test_answers_come_first_one_line_per_searched_parameter(tmp_path):
    exp = make_experiment(tmp_path)
    write_confirmation(exp, val_kl=KL, active_units=UNITS)
    text = build_report(exp, quiet=True, evaluate=False).read_text()
    assert text.split("\n\n")[2] == "## Answers"  # after the title and the status line
    assert text.index("## Answers") < text.index("## What was swept")
    lines = dict(zip(SEARCHED, _answers(text)))
    assert [line.split(": **")[0] for line in lines.values()] == [f"- `{p}`" for p in SEARCHED]
    factor = lines["kl_anneal"]
    for words in ("**monotonic** (mean test PSNR 21.70 dB over 3 seeds)",
                  "vs cyclical, paired by seed: +3.10 dB [2.85, 3.35], p < 0.001 (Holm)",
                  "KL 1.10 nats/step for monotonic vs 0.02 for cyclical, +1.08 nats/step [",
                  "3 of 3 cyclical runs never reached + 1 dB", "confirmed over 3 seeds",
                  "`confirm-kl_anneal/confirm.json`"):
        assert words in factor, factor
    assert "active units" not in factor  # no effect: no clause
    # lr: the best trial's 0.002; above the median 0.0015 (2e-3, 5e-3, 8e-3) vs the rest
    diff, low, high, _, _ = stats.welch([27.0, 22.0, 19.0], [25.0, 20.0, 24.0])
    assert lines["lr"].startswith("- `lr`: **0.002** (best trial `aaaa2_00002`")
    assert (f"trials with lr > 0.0015 vs the rest: mean best val PSNR {fmt(diff)} dB "
            f"[{fmt(low)}, {fmt(high)}] (Welch 95% CI, 3 vs 3 trials") in lines["lr"]
    # cycles: cyclical trials only (1, 2, 4); one above the median 2
    assert "**2**" in lines["kl_anneal_cycle"]
    assert "(no interval: too few trials, 1 vs 2)" in lines["kl_anneal_cycle"]
    for param in ("lr", "tfr_start_decay_epoch", "kl_anneal_cycle"):
        assert "single runs, not confirmed over seeds" in lines[param]


def test_single_runs_and_an_unconfirmed_gap_say_so(tmp_path):
    exp = make_experiment(tmp_path)
    text = build_report(exp, quiet=True, evaluate=False).read_text()
    lines = dict(zip(SEARCHED, _answers(text)))
    assert len(_answers(text)) == len(SEARCHED)
    # kl_anneal: the best trial's cyclical (27, 20, 19) vs the other modes' trials (25, 22, 24)
    diff, low, high, _, _ = stats.welch([27.0, 20.0, 19.0], [25.0, 22.0, 24.0])
    assert lines["kl_anneal"].startswith(
        f"- `kl_anneal`: **cyclical** (best trial `aaaa2_00002`, best val PSNR 27.00 dB); its "
        f"trials vs the others: mean best val PSNR {fmt(diff)} dB [{fmt(low)}, {fmt(high)}]")
    assert all("single runs, not confirmed over seeds" in line for line in lines.values())

    # test PSNR within seed noise, no latent scored: no confirmation, and no latent noise
    psnr = {("monotonic", 1): 20.0, ("monotonic", 2): 20.5, ("monotonic", 3): 19.8,
            ("cyclical", 1): 20.2, ("cyclical", 2): 19.9, ("cyclical", 3): 19.8}
    none = {k: None for k in psnr}
    summary = write_confirmation(exp, psnr=psnr, val_kl=none, val_kl_per_dim=none,
                                 active_units=none, posterior_psnr=none)
    assert set(summary["configs"][0]["comparisons"]) == {"val_psnr", "test_psnr",
                                                         "seconds_to_1db"}
    text = build_report(exp, quiet=True, evaluate=False).read_text()
    factor = dict(zip(SEARCHED, _answers(text)))["kl_anneal"]
    assert "**monotonic** (mean test PSNR 20.10 dB over 3 seeds)" in factor
    assert "not confirmed over 3 seeds (the gap is within seed noise)" in factor
    assert "KL" not in text.split("## Confirmation over seeds")[1].split("### ")[0]


def test_a_factor_confirmed_again_at_another_value_gets_its_own_line(tmp_path):
    """search.confirm --set beta_max=1e-5 beside the sweep's own confirmation."""
    import json

    from test_confirm import _write_runs

    from search.confirm import make_plan, summarize

    exp = make_experiment(tmp_path)
    write_confirmation(exp, val_kl=KL, active_units=UNITS)
    plan = make_plan(exp, levels=["monotonic", "cyclical"], seeds=3, epochs=3,
                     fixed={"beta_max": "1e-5"})
    _write_runs(plan)
    (plan.directory / "confirm.json").write_text(json.dumps(summarize(plan)))
    text = build_report(exp, quiet=True, evaluate=False).read_text()
    lines = [line for line in _answers(text) if line.startswith("- `kl_anneal`")]
    assert len(lines) == 2 and "(at" not in lines[0]
    assert lines[1].startswith("- `kl_anneal` (at beta_max=1e-05): **")
    assert "`confirm-kl_anneal-beta_max_1e-05/confirm.json`" in lines[1]
    assert "## Confirmation over seeds: kl_anneal, beta_max=1e-05" in text
    assert "`beta_max`=1e-05 set in every run" in text
