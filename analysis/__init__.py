"""Sweep analysis: experiment dir -> frames (results) -> plots, tables -> report.

`python -m analysis.report EXPERIMENT_DIR` writes the lab report; `analysis.report.build_report`
does the same from Python (the sweep launcher calls it when a sweep ends).
"""
from analysis.results import Experiment, ExperimentError, best_checkpoint, load_experiment

__all__ = ["Experiment", "ExperimentError", "best_checkpoint", "load_experiment"]
