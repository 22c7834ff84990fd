"""What a search found: the Pareto front, the result table and JSON, the plot, the best model."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import Any, Sequence


from tfedge.artifact import load
from tfedge.card import model_card, write_model_card
from tfedge.report import format_table, write_atomic, write_json
from tfedge._tune.space import Budget
from tfedge._tune.space import TrialSettings
from tfedge._tune.trial import MODEL_FILENAME, TRIAL_FILENAME, TrialRecord


def pareto_front(points: Sequence[dict[str, float]], maximize: Sequence[str] = ("accuracy",),
                 minimize: Sequence[str] = ("size_bytes", "latency_ms")) -> list[int]:
    """Indices of the points no other point dominates.

    ``a`` dominates ``b`` when it is at least as good on every objective and
    better on one. Objectives missing from every point are ignored.

    Example:

    >>> pareto_front([{"accuracy": .9, "size_bytes": 10}, {"accuracy": .8, "size_bytes": 20},
    ...               {"accuracy": .7, "size_bytes": 5}])
    [0, 2]
    """
    keys = [(k, 1.0) for k in maximize] + [(k, -1.0) for k in minimize]
    keys = [(k, s) for k, s in keys if any(p.get(k) is not None for p in points)]

    def vector(p):
        return [s * p[k] if p.get(k) is not None else -math.inf for k, s in keys]

    def dominates(b, a):
        return all(bj >= aj for aj, bj in zip(a, b)) and any(bj > aj for aj, bj in zip(a, b))

    vectors = [vector(p) for p in points]
    return [i for i, a in enumerate(vectors)
            if not any(dominates(b, a) for j, b in enumerate(vectors) if j != i)]


@dataclasses.dataclass
class TuneResult:
    """What a search found.

    Attributes:
        trials: every trial, feasible or not, in id order.
        front: ids of the feasible trials on the Pareto front.
        best: the best feasible trial (highest int8 accuracy, then smallest,
            then fastest), or None when no trial met the budget.
        budget: the budget the trials were checked against.
        ran: ids of the trials this call ran (the rest were loaded).
        role: ``"single"``, ``"chief"`` or ``"worker"`` (keras-tuner's
            distributed mode; only the chief and single processes report).
        files: paths of the written table, JSON, plot and best bundle.
        seconds: wall time of this call.
    """

    trials: list[TrialRecord]
    front: list[str]
    best: TrialRecord | None
    budget: Budget
    ran: list[str] = dataclasses.field(default_factory=list)
    role: str = "single"
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def infeasible(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status == "COMPLETED" and t.violations]

    def table(self) -> str:
        """All trials as a text table (Pareto members marked ``*``)."""
        has_latency = any("latency_ms" in t.metrics for t in self.trials)
        has_arena = any("arena_bytes" in t.metrics for t in self.trials)
        headers = ["trial", "sparsity", "prune end", "structured", "qat", "width", "res",
                   "distill", "epochs",
                   "int8 acc", "float acc", "size B", "zlib B"]
        headers += ["latency ms"] * has_latency + ["arena B"] * has_arena
        headers += ["feasible", "pareto", "note"]
        rows = []
        for t in self.trials:
            s, m = t.settings, t.metrics
            row = [t.trial_id, s.get("final_sparsity"), s.get("prune_end")
                   if s.get("final_sparsity") else "-", _structured(s),
                   "on" if s.get("quantize") else "off",
                   s.get("width"), s.get("resolution") or "native",
                   f"a={s.get('distill_alpha')} T={s.get('temperature'):g}"
                   if s.get("distill") else "-", s.get("epochs") or "-",
                   _fmt(m.get("accuracy")), _fmt(m.get("keras_accuracy")),
                   _fmt(m.get("size_bytes"), int), _fmt(m.get("compressed_bytes"), int)]
            row += [_fmt(m.get("latency_ms"))] * has_latency
            row += [_fmt(m.get("arena_bytes"), int)] * has_arena
            row += ["yes" if t.feasible else ("no" if t.status == "COMPLETED" else t.status),
                    "*" if t.trial_id in self.front else "", _note(t)]
            rows.append(row)
        return format_table(headers, rows, title=f"tfedge tune: {len(self.trials)} trials, "
                                                  f"budget {budget_text(self.budget)}")

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget.get_config(), "role": self.role,
                "trials": [t.to_dict() for t in self.trials], "pareto_front": self.front,
                "best": self.best.trial_id if self.best else None, "ran": self.ran,
                "files": self.files, "seconds": self.seconds}

    def __str__(self) -> str:
        if self.best is None:
            tail = "No trial met the budget."
        else:
            m = self.best.metrics
            tail = (f"Best feasible: trial {self.best.trial_id}, int8 accuracy "
                    f"{100 * m['accuracy']:.2f}%, {int(m['size_bytes']):,} bytes"
                    + (f", {m['latency_ms']:.3g} ms on {self.budget.target}"
                       if "latency_ms" in m else "")
                    + (f" -> {self.files['best']}" if "best" in self.files else ""))
        return self.table() + "\n" + tail


_KINDS = {"size_bytes": int, "arena_bytes": int, "compressed_bytes": int}


def _structured(settings: dict[str, Any]) -> str:
    """Channel pruning and low-rank settings of a trial, e.g. ``"channels 0.5 to 1; rank e=0.9"``."""
    parts = []
    if settings.get("channel_fraction"):
        parts.append(f"channels {settings['channel_fraction']:g} to {settings['channel_end']:g}")
    if settings.get("rank_energy"):
        parts.append(f"rank e={settings['rank_energy']:g}")
    elif settings.get("rank_macs"):
        parts.append(f"rank macs={settings['rank_macs']:g}")
    return "; ".join(parts) or "-"


def _note(trial: TrialRecord, width: int = 70) -> str:
    """The table's note: broken limits and measurement notes, or why it failed."""
    if trial.status != "COMPLETED":
        return (trial.message or "").splitlines()[0][:width] if trial.message else ""
    parts = []
    for key, v in trial.violations.items():
        kind = _KINDS.get(key, float)
        if v["value"] is None:
            parts.append(f"{key} over {_fmt(v['limit'], kind)}")
        elif key == "accuracy":
            parts.append(f"accuracy {_fmt(v['value'])} < {_fmt(v['limit'])}")
        else:
            parts.append(f"{key} {_fmt(v['value'], kind)} > {_fmt(v['limit'], kind)}")
    parts += [m.split(";")[0].split(" (")[0] for m in (trial.message or "").split("; ")
              if m.startswith("arena:")]
    return "; ".join(parts)[:width]


def _fmt(value: Any, kind: type = float) -> Any:
    if value is None:
        return "-"
    if kind is int:
        return int(value)
    return round(float(value), 4)


def budget_text(budget: Budget) -> str:
    parts = [f"{k}={v}" for k, v in budget.get_config().items() if v is not None]
    return ", ".join(parts) or "none"


def plot_pareto(result: TuneResult, path: str) -> str:
    """Writes accuracy vs size (and vs latency, when measured) as a PNG.

    Feasible trials are dots, infeasible ones crosses, the Pareto front is a
    line; budget limits are dashed lines. Uses matplotlib's Agg backend.

    Returns:
        ``path``.

    Raises:
        ImportError: matplotlib is missing (``pip install 'tfedge[tune]'``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("The Pareto plot needs matplotlib: pip install 'tfedge[tune]' "
                          "(or pass plot=False).") from err
    done = [t for t in result.trials if t.status == "COMPLETED"]
    axes_keys = [("size_bytes", "model size (KB)", 1e-3, result.budget.max_size_bytes)]
    if any("latency_ms" in t.metrics for t in done):
        axes_keys.append(("latency_ms", f"estimated latency on {result.budget.target} (ms)",
                          1.0, result.budget.max_latency_ms))
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(6 * len(axes_keys), 4.5), squeeze=False)
    for ax, (key, label, unit, limit) in zip(axes[0], axes_keys):
        for feasible, marker, color, name in ((True, "o", "tab:blue", "feasible"),
                                              (False, "x", "tab:red", "infeasible")):
            pts = [t for t in done if t.feasible == feasible and key in t.metrics]
            ax.scatter([t.metrics[key] * unit for t in pts],
                       [100 * t.metrics["accuracy"] for t in pts],
                       marker=marker, color=color, label=name)
            for t in pts:
                ax.annotate(t.trial_id, (t.metrics[key] * unit, 100 * t.metrics["accuracy"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((t for t in done if t.trial_id in result.front and key in t.metrics),
                       key=lambda t: t.metrics[key])
        if front:
            ax.plot([t.metrics[key] * unit for t in front],
                    [100 * t.metrics["accuracy"] for t in front], "-o", color="tab:green",
                    markersize=11, markerfacecolor="none", label="Pareto front", zorder=0)
        if limit is not None:
            ax.axvline(limit * unit, linestyle="--", color="gray", label="budget")
        if result.budget.min_accuracy is not None:
            ax.axhline(100 * result.budget.min_accuracy, linestyle="--", color="gray")
        ax.set_xlabel(label)
        ax.set_ylabel("int8 top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tfedge tune: {len(done)} trials, budget {budget_text(result.budget)}",
                 fontsize=9)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, image.getvalue())


def _best(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        return None
    return max(feasible, key=lambda t: (t.metrics["accuracy"], -t.metrics["size_bytes"],
                                        -t.metrics.get("latency_ms", 0.0)))


def collect_trials(tuner: Any) -> list[TrialRecord]:
    """Every trial the oracle knows, with tfedge's per-trial files when present."""
    records = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        path = os.path.join(tuner.project_dir, f"trial_{trial_id}", TRIAL_FILENAME)
        saved = None
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
        status = str(trial.status)
        settings = TrialSettings.from_values(trial.hyperparameters.values, 0).to_dict()
        metrics = {name: float(trial.metrics.get_last_value(name))
                   for name in trial.metrics.metrics}
        record = TrialRecord(trial_id, status, settings, metrics)
        if saved:
            record.settings = saved.get("settings", settings)
            record.violations = saved.get("violations", {}) if status == "COMPLETED" else {}
            record.artifact_path = saved.get("artifact_path")
            record.seconds = saved.get("seconds")
            record.validation = saved.get("validation")
            record.message = saved.get("message")
        elif status == "COMPLETED" and metrics.get("feasible") == 0.0:
            record.violations = {"unknown": {"value": None, "limit": None}}
        if status != "COMPLETED" and trial.message and not record.message:
            record.message = trial.message.strip().splitlines()[-1]
        records.append(record)
    return records


def write_report(trials: list[TrialRecord], budget: Budget, out_dir: str, *, plot: bool,
            name: str, **fields: Any) -> TuneResult:
    """Builds the result and writes pareto.txt / .json / .png and best/ into ``out_dir``."""
    feasible = [t for t in trials if t.feasible]
    front = [feasible[i].trial_id for i in pareto_front([t.metrics for t in feasible])]
    result = TuneResult(trials, front, _best(trials), budget, **fields)
    os.makedirs(out_dir, exist_ok=True)
    files = {"table": os.path.join(out_dir, "pareto.txt"),
             "json": os.path.join(out_dir, "pareto.json")}
    if plot:
        files["plot"] = plot_pareto(result, os.path.join(out_dir, "pareto.png"))
    best = result.best
    if best is not None and best.artifact_path and os.path.exists(best.artifact_path):
        files["best"] = _write_best(best, budget, os.path.join(out_dir, "best"), name)
    result.files = files
    write_atomic(files["table"], str(result) + "\n")
    write_json(files["json"], result.to_dict())
    return result


def _write_best(best: TrialRecord, budget: Budget, directory: str, name: str) -> str:

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MODEL_FILENAME)
    with open(best.artifact_path, "rb") as f:
        write_atomic(path, f.read())
    artifact = load(path)
    artifact.mode = "int8"
    card = model_card(artifact, name=name,
                      description="Best feasible model of a tfedge.tune search.",
                      validation=best.validation,
                      extra={"tune": {"trial_id": best.trial_id, "settings": best.settings,
                                      "metrics": best.metrics, "budget": budget.get_config()}})
    write_model_card(directory, card)
    return path
