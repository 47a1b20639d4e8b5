"""The sweep report: `python -m analysis.report EXPERIMENT_DIR` or `build_report(exp_dir)`.

Loads the experiment (analysis.results), writes the figures (analysis.plots) and tables
(analysis.tables), evaluates each annealing mode's best checkpoint on the test split with the demo
protocol, and ties it all together in report.md and a self-contained report.html (images embedded
as base64), opening with one answer per searched parameter (analysis.answers). Works offline on
finished and partly finished sweeps alike.
(Over 350 lines: most of it is the report's prose, one function per section.)
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from markdown import Markdown
from markdown.treeprocessors import Treeprocessor

from analysis.answers import answers, confirm_headline, never_reached
from analysis.plots import PLOTS, confirm_plots, make_plots
from analysis.results import (INCOMPLETE, KEY_PARAMS, MISSING, MODE, NOT_STARTED, Experiment,
                              ExperimentError, best_checkpoint, load_experiment)
from analysis.tables import (METRIC_NAMES, Table, all_tables, confirm_metrics, confirm_tables,
                             fmt)
from cvae import jsonsafe

N_PAST, N_FUTURE = 2, 10  # BAIR's test protocol, for results that do not say (each task's
# checkpoint is scored with its own: BAIR 2 -> 10, SM-MNIST the run's n_past -> eval_n_future)
UNFINISHED = (MISSING, INCOMPLETE, "running", "pending")  # statuses listed as missing/incomplete
CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
       "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #bbb;padding:2px 8px}"
       "th{background:#eee}img{max-width:100%}code{background:#f4f4f4}")


@dataclass
class ModeEvaluation:
    """Test-set evaluation of one annealing mode's best trial, or why it was skipped."""
    mode: str
    trial_id: str
    checkpoint: Optional[Path] = None
    epoch: Optional[int] = None
    result: Optional[dict] = None  # evaluate_checkpoint's dict
    note: str = ""


def build_report(exp_dir: Path | str, out_dir: Path | str | None = None, evaluate: bool = True,
                 quiet: bool = False, top_k: int = 5, data: Optional[str] = None) -> Path:
    """Write plots/, tables/, media/, report.md and report.html into out_dir (default: exp_dir);
    return the path of report.md. Raises ExperimentError if exp_dir is not a sweep experiment."""
    def log(message: str) -> None:
        if not quiet:
            print(f"analysis: {message}", file=sys.stderr)

    exp = load_experiment(exp_dir)
    out = Path(out_dir) if out_dir is not None else exp.path
    out.mkdir(parents=True, exist_ok=True)
    evaluations = evaluate_best(exp, out, data, evaluate)
    for ev in evaluations:
        if ev.note:
            log(f"{ev.mode}: {ev.note}")
    test_psnr = {ev.mode: float(ev.result["psnr"]) for ev in evaluations if ev.result}
    tables = all_tables(exp, top_k, test_psnr)
    for table in tables:
        table.write(out / "tables")
    plots = make_plots(exp, out / "plots")
    confirmations = []
    for stem, summary in load_confirmations(exp.path):
        extra = confirm_tables(summary, stem)
        for table in extra:
            table.write(out / "tables")
        confirmations.append(Confirmation(stem, summary, extra,
                                          confirm_plots(summary, out / "plots", stem)))
    blocks = _document(exp, out, tables, plots, evaluations, confirmations)
    text = _markdown(blocks)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(_html(text, out, f"Sweep report: {exp.name}"))
    log(f"wrote {out / 'report.md'} and report.html")
    return out / "report.md"


@dataclass
class Confirmation:
    """A multi-seed confirmation of the sweep (search.confirm) with its tables and figures."""
    stem: str  # its directory in the experiment, confirm-<factor>
    summary: dict  # confirm.json
    tables: list[Table]
    plots: dict[str, tuple[Path, str]]  # name -> (png, caption)


def load_confirmations(exp_dir: Path) -> list[tuple[str, dict]]:
    """(directory name, confirm.json) of every confirm-*/confirm.json in the experiment."""
    found = []
    for path in sorted(Path(exp_dir).glob("confirm-*/confirm.json")):
        try:
            found.append((path.parent.name, json.loads(path.read_text())))
        except (OSError, ValueError) as err:
            raise ExperimentError(f"{path}: {err}") from None
    return found


def evaluate_best(exp: Experiment, out: Path, data: Optional[str],
                  enabled: bool) -> list[ModeEvaluation]:
    """Evaluate the best kept checkpoint of each mode's best trial on the test split, writing its
    media under <out>/media/<mode>/ and the returned metrics to media/<mode>/test_metrics.json."""
    evaluations = []
    for mode, tid in exp.best_by_mode().items():
        ev = ModeEvaluation(mode, tid)
        evaluations.append(ev)
        if not enabled:
            ev.note = "skipped: evaluation disabled (--no-evaluate)"
            continue
        media = out / "media" / mode
        try:
            found = best_checkpoint(exp, tid)
            if found is None:
                ev.note = f"skipped: trial {tid} kept no checkpoint"
                continue
            ev.checkpoint, ev.epoch = found
            from cvae.evaluate import evaluate_checkpoint
            ev.result = evaluate_checkpoint(ev.checkpoint, data=data, split="test",
                                            media_dir=media)
        except Exception as err:  # a failed evaluation must not cost the rest of the report
            ev.note = f"evaluation failed: {type(err).__name__}: {err}"
            continue
        media.mkdir(parents=True, exist_ok=True)
        (media / "test_metrics.json").write_text(
            jsonsafe.dumps(ev.result, indent=1, default=jsonsafe.plain))
    return evaluations


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Turn a finished or partly finished sweep experiment directory into plots, "
                    "tables (Markdown, LaTeX, CSV), report.md and a self-contained report.html.")
    parser.add_argument("experiment_dir", metavar="EXPERIMENT_DIR", type=Path,
                        help="Ray Tune experiment directory written by the sweep "
                             "(holds sweep.json)")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="output directory (default: EXPERIMENT_DIR itself)")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="skip the test-set evaluation of each annealing mode's best "
                             "checkpoint")
    parser.add_argument("--top-k", metavar="K", type=int, default=5,
                        help="trials listed in the top-k table (default: 5)")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset root for the test evaluation (default: the checkpoint's own)")
    parser.add_argument("--quiet", action="store_true",
                        help="print nothing but errors and the report path")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k: expected an integer >= 1")
    try:
        path = build_report(args.experiment_dir, args.out, evaluate=not args.no_evaluate,
                            quiet=args.quiet, top_k=args.top_k, data=args.data)
    except ExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


# The report is a list of blocks, written as Markdown (report.md, which report.html renders):
# ("h", level, text) | ("p", text) | ("ul", [text]) | ("table", Table) | ("img", path, caption),
# image paths relative to the output dir. Text may hold `code`, **bold** and [label](link).

def _document(exp: Experiment, out: Path, tables: list[Table], plots: dict[str, Path],
              evaluations: list[ModeEvaluation],
              confirmations: list[Confirmation] = ()) -> list[tuple]:
    sweep, base = exp.sweep, exp.sweep.get("base") or {}
    state = "finished" if exp.finished else "**not finished** (sweep.json `finished` is false)"
    wall = sweep.get("wall_time_s")
    blocks: list[tuple] = [
        ("h", 1, f"Sweep report: {exp.name}"),
        ("p", f"{len(exp.ran())} of {exp.planned} planned trials have results; the sweep is "
              f"{state}. Objective `{sweep.get('metric', 'val_psnr')}` "
              f"({sweep.get('mode', 'max')}); ASHA early stopping (scheduler metric "
              f"`{sweep.get('scheduler_metric', '-')}`), at most {exp.epochs} epochs per trial. "
              f"Started {sweep.get('started', '-')}"
              + (f", wall time {fmt(float(wall))} s." if wall is not None else ".")),
        ("h", 2, "Answers"),
        ("ul", answers(exp, [(c.stem, c.summary) for c in confirmations])
         or ["nothing was searched (sweep.json `searched` is empty)"]),
        ("h", 2, "What was swept"),
        ("ul", [f"`{p}`: `{json.dumps(spec)}`" for p, spec in (sweep.get("searched") or {}).items()]
         + [f"`{k}` fixed at `{base[k]}` (sweep.json base)"
            for k in KEY_PARAMS if k not in exp.searched and k in base]),
        ("h", 2, "Headline"),
        ("ul", _headline(exp, evaluations)
         + [line for c in confirmations for line in confirm_headline(c.stem, c.summary)]),
    ]
    for confirmation in confirmations:
        blocks += _confirmation(confirmation, out)
    unfinished = exp.trials[exp.trials["status"].isin(UNFINISHED)]
    if len(unfinished) or not exp.finished:
        blocks += [("h", 2, "Missing or incomplete trials"),
                   ("ul", [_unfinished(exp, t) for _, t in unfinished.iterrows()]
                    or ["none: every trial has a final status"])]
    blocks.append(("h", 2, "Tables"))
    for table in tables:
        blocks += _table_blocks(table)
    blocks.append(("h", 2, "Plots"))
    for name, path in plots.items():
        blocks += [("h", 3, PLOTS[name][1]), ("img", _rel(path, out), name)]
    from cvae.evaluate import protocol_words

    scored = [ev.result for ev in evaluations if ev.result]
    first = scored[0] if scored else {}
    protocol = protocol_words(int(first.get("n_past", N_PAST)),
                              int(first.get("n_future", N_FUTURE)))
    blocks += [("h", 2, "Test-set evaluation"),
               ("p", "Best trial of each annealing mode, from its kept checkpoint with the highest "
                     f"`val_psnr`, on the test split: {protocol}.")]
    for ev in evaluations:
        blocks += _evaluation(exp, ev, out)
    return blocks


def _headline(exp: Experiment, evaluations: list[ModeEvaluation]) -> list[str]:
    ranked = exp.ranked().dropna(subset=["best_val_psnr"])
    if ranked.empty:
        return ["no trial has reported a validation PSNR yet"]
    top = ranked.iloc[0]
    params = ", ".join(f"`{p}`={fmt(top[p])}" for p in exp.searched)
    lines = [f"Best configuration: trial `{top['trial_id']}` ({params}) reached validation PSNR "
             f"**{fmt(top['best_val_psnr'])} dB** at epoch {top['best_epoch']} of "
             f"{top['epochs']} run ({top['status']}). Traceability: max of column `val_psnr` in "
             f"`{top['dir']}/result.json`; hyperparameters from `{top['dir']}/params.json`."]
    mode = top[MODE]
    group = exp.ran().loc[exp.ran()[MODE] == mode, "best_val_psnr"]
    lines.append(f"Best annealing mode in the sweep (that of the best trial; single runs, one "
                 f"seed each, so a gap can be seed noise): **{mode}** (best "
                 f"{fmt(group.max())} dB, median {fmt(group.median())} dB over {group.count()} "
                 f"trial{'s' if group.count() != 1 else ''}). Traceability: `tables/modes.csv` "
                 "columns `best val PSNR`, `median val PSNR`, from `val_psnr` in each trial's "
                 "result.json grouped by `kl_anneal` in params.json.")
    ev = next((e for e in evaluations if e.mode == mode and e.result), None)
    if ev:
        lines.append(f"Test PSNR of the best {mode} trial: **{fmt(float(ev.result['psnr']))} dB** "
                     f"(SSIM {fmt(float(ev.result['ssim']))}). Traceability: keys `psnr`, `ssim` "
                     f"in `media/{mode}/test_metrics.json` (evaluate_checkpoint on "
                     f"`{_rel(ev.checkpoint, exp.path)}`).")
    why = "saved by early stopping" if exp.finished else "unspent so far (sweep not finished)"
    saved = f", {exp.saved_fraction():.0%} {why}" if exp.budget else ""
    lines.append(f"Compute: {exp.trial_epochs()} of {exp.budget} trial-epochs run{saved}. "
                 "Traceability: `tables/compute.csv` rows `trial-epochs run`, "
                 "`grid budget (trials x epochs)`, `fraction saved`.")
    return lines


def _confirmation(c: Confirmation, out: Path) -> list[tuple]:
    """The confirmation section: what was re-run, tables, comparison sentences, figures."""
    s = c.summary
    state = "finished" if s["finished"] else "**not finished** (some runs are missing)"
    blocks: list[tuple] = [
        ("h", 2, f"Confirmation over seeds: {s['factor']}"
         + "".join(f", {k}={fmt(v)}" for k, v in (s.get("fixed") or {}).items())),
        ("p", f"The sweep's best configuration{'s' if len(s['configs']) > 1 else ''} re-run for "
              f"each level of `{s['factor']}` ({', '.join(s['labels'])}), only that factor "
              f"changed"
              + "".join(f", `{k}`={fmt(v)}" for k, v in (s.get("fixed") or {}).items())
              + (" set in every run" if s.get("fixed") else "")
              + f", with seeds {', '.join(map(str, s['seeds']))}, {s['epochs']} epochs each "
              f"and no early stopping (search.confirm, `{c.stem}/`); {state}. Unlike the sweep's "
              "tables, these compare means over seeds."),
    ]
    blocks += [("p", f"Note: {note}") for note in s.get("notes") or []]
    for group in s["configs"]:
        settings = ", ".join(f"`{k}`={fmt(v)}" for k, v in group["searched"].items())
        blocks.append(("p", f"Configuration {group['rank']}: sweep trial `{group['trial_id']}` "
                            f"(best val PSNR {fmt(group['best_val_psnr'])} dB; {settings})."))
        blocks.append(("ul", [f"{METRIC_NAMES.get(metric, metric)}: {x['sentence']}"
                              for metric in confirm_metrics(s)
                              for key in ("comparisons", "paired_comparisons")
                              for x in group.get(key, {}).get(metric, [])]
                       + never_reached(group)
                       or ["one level: nothing to compare"]))
    for table in c.tables:
        blocks += _table_blocks(table)
    for name, (path, caption) in c.plots.items():
        blocks += [("h", 3, caption), ("img", _rel(path, out), name)]
    return blocks


def _table_blocks(table: Table) -> list[tuple]:
    """A table with its title, traceability note and links to its files."""
    files = ", ".join(f"[{ext}](tables/{table.name}.{ext})" for ext in ("md", "tex", "csv"))
    return [("h", 3, table.title), ("table", table), ("p", f"Traceability: {table.source}"),
            ("p", f"Files: {files}")]


def _unfinished(exp: Experiment, trial: Any) -> str:
    name = f"`{trial['trial_id']}`"
    if isinstance(trial["dir"], str):
        name += f" (`{trial['dir']}`)"
    if trial["status"] != MISSING:
        return f"{name}: {trial['status']} after {trial['epochs']} epochs"
    if trial["trial_id"].startswith(NOT_STARTED):
        return (f"{name}: never started (expected by sweep.json num_samples = "
                f"{exp.sweep.get('num_samples')})")
    return f"{name}: missing, no result.json rows"


def _evaluation(exp: Experiment, ev: ModeEvaluation, out: Path) -> list[tuple]:
    blocks: list[tuple] = [("h", 3, f"{ev.mode}: trial {ev.trial_id}")]
    if not ev.result:
        return blocks + [("p", ev.note)]
    from cvae.evaluate import baseline_name

    r, media = ev.result, ev.result.get("media") or {}
    blocks.append(("ul", [
        f"checkpoint `{_rel(ev.checkpoint, exp.path)}` (epoch {ev.epoch})",
        f"PSNR **{fmt(float(r['psnr']))} dB**, SSIM {fmt(float(r['ssim']))} over "
        f"{r.get('n_sequences', '-')} test sequences",
        f"{baseline_name(int(r.get('n_past', N_PAST)))} (baseline): PSNR "
        f"{fmt(float(r['baseline_psnr']))} dB, "
        f"SSIM {fmt(float(r['baseline_ssim']))}",
        f"Traceability: keys `psnr`, `ssim`, `baseline_psnr`, `baseline_ssim` in "
        f"`media/{ev.mode}/test_metrics.json`",
    ]))
    shown = {k: _rel(Path(media[k]), out) for k in ("psnr_plot", "grid", "gif")
             if media.get(k) and Path(media[k]).is_file()}
    captions = {"psnr_plot": "PSNR per predicted frame", "grid": "per-timestep grid", "gif": "GIF"}
    blocks += [("img", path, f"{ev.mode} {captions[k]}") for k, path in shown.items()]
    if "gif" in shown:
        blocks.append(("p", f"GIF: [{shown['gif']}]({shown['gif']})"))
    return blocks


def _markdown(blocks: list[tuple]) -> str:
    parts = []
    for kind, *args in blocks:
        if kind == "h":
            parts.append("#" * args[0] + " " + args[1])
        elif kind == "p":
            parts.append(args[0])
        elif kind == "ul":
            parts.append("\n".join(f"- {item}" for item in args[0]))
        elif kind == "table":
            parts.append(args[0].markdown())
        elif kind == "img":
            parts.append(f"![{args[1]}]({args[0]})")
    return "\n\n".join(parts) + "\n"


class _EmbedImages(Treeprocessor):
    """Each <img> of the page as a data: URI of the file it names (relative to `out`)."""

    def __init__(self, md: Markdown, out: Path):
        super().__init__(md)
        self.out = out

    def run(self, root: Any) -> None:
        for img in root.iter("img"):
            path = self.out / img.get("src")
            mime = "image/gif" if path.suffix.lower() == ".gif" else "image/png"
            img.set("src", f"data:{mime};base64,"
                           + base64.b64encode(path.read_bytes()).decode("ascii"))


def _html(text: str, out: Path, title: str) -> str:
    """report.md as a self-contained page: Python-Markdown with its tables extension, images
    embedded."""
    md = Markdown(extensions=["tables"])
    md.treeprocessors.register(_EmbedImages(md, out), "embed_images", 0)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>\n{md.convert(text)}\n</body></html>\n")


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


if __name__ == "__main__":
    sys.exit(main())
