"""``structured.py`` repeated over seeds: per-seed accuracies, mean / std / min
per variant, and the paired differences that decide issue 13's accuracy goals.

Reads result files of ``structured.py --seed N`` (each the same variants on
another seed; the seed is read from each file's ``settings``), one group per
protocol (``--group NAME FILE ...``, e.g. the dense model at 12 epochs and
at a longer budget), and writes one JSON. Per group:

* the ``structured.py`` settings of the group's first file, less seed and out;
* per seed and variant: int8 (TFLite) and float accuracy, the training note;
* per variant: mean, std (sample, n-1), min and max of the int8 accuracy
  (over the seeds that ran it: ``n`` says how many);
* per variant and seed: the paired difference to dense int8 and to the
  scratch baseline (the same seed's data order and initial weights), with
  mean / std / min;
* per variant: int8 file, MACs and emulated instructions ratios to dense int8,
  from the files that emulated (instruction counts depend on the architecture
  only, so seeds run with ``--no-emulate`` take them from one that did, in
  this group or another: the ``from`` field names it), and
  issue 13's four 0.5x-MACs goals on the mean: int8 accuracy at most 1 pp
  below dense, no worse than scratch, rpi4 / rpi5 instructions and file at
  most 0.6x.

``--dense-runs GROUP JSON`` adds a ``structured_dense_curve.py`` result's int8
runs to a group as ``dense int8, N epochs alone`` (dense trained for the
pruned models' whole budget), and pairs every variant with them too
(``paired_pp``).

Variants are named without the channel plan's per-group description
(``channel 0.500x MACs, plan: stem 0.5, ...`` -> ``channel 0.500x MACs plan``).

    python benchmarks/structured_seeds.py \\
        --group "dense 12 epochs" benchmarks/results/structured_plan50_lowrank.json ... \\
        --group "dense 32 epochs" .../structured_plan50_d32_seed0.json ... \\
        --dense-runs "dense 32 epochs" .../structured_dense_curve_52.json \\
        --out benchmarks/results/structured_plan50_seeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from typing import Any, Sequence

from tfedge.report import format_table, write_json

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "structured_plan50_seeds.json")
TARGETS = ("rpi4", "rpi5")
PP = 100.0  # accuracies are fractions; differences are reported in percentage points


def short(variant: str) -> str:
    """A variant's name without its channel plan's per-group description (also inside
    a ``--scratch-shape`` row's ``scratch, shape of channel ...``)."""
    return re.sub(r"^((?:scratch, shape of )?channel [\d.]+x MACs), plan: .*?"
                  r"(?=(, \d+ epochs| \+ |$))", r"\1 plan", variant)


def detector_short(variant: str) -> str:
    """A ``structured.py --detector-plan`` row's name without the MAC ratio its seed's
    own plan reached (each seed plans on its own dense model): ``plan SPEC, 0.36x MACs,
    distilled`` -> ``plan SPEC, distilled``; ``scratch 0.36x MACs, 83 epochs`` (the
    width nearest the plan's) -> ``scratch, nearest width, 83 epochs``."""
    variant = re.sub(r"^(plan .*?), [\d.]+x MACs", r"\1", variant)
    return re.sub(r"^scratch [\d.]+x MACs, ", "scratch, nearest width, ", variant)


def stats(values: list[float]) -> dict[str, float]:
    """Mean, sample std (0 for one value), min and max."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def load(paths: list[str]) -> dict[int, dict[str, dict[str, Any]]]:
    """{seed: {short variant name: row}}; a seed given twice is an error."""
    seeds: dict[int, dict[str, dict[str, Any]]] = {}
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        settings = result["settings"]
        seed = settings.get("seed", 0)
        if seed in seeds:
            raise SystemExit(f"{path}: seed {seed} is already given by another file of the "
                             "group; give each seed once.")
        name = detector_short if settings.get("detector_plan") else short
        seeds[seed] = {name(r["variant"]): {**r, "file": os.path.relpath(path)}
                       for r in result["rows"]}
    return seeds


def add_dense_runs(seeds: dict[int, dict[str, dict[str, Any]]], path: str) -> list[str]:
    """Adds a ``structured_dense_curve.py`` result's runs to ``seeds`` as variants
    ``dense int8, N epochs alone`` (int8 accuracy; no costs: the dense architecture's).
    Returns their names."""
    with open(path) as f:
        runs = json.load(f)["runs"]
    names = []
    for run in runs:
        if run["seed"] not in seeds or "int8_accuracy" not in run:
            continue  # a seed the group did not run, or a float-only curve
        name = f"dense int8, {run['epochs']} epochs alone"
        seeds[run["seed"]][name] = {
            "variant": name, "tflite_accuracy": run["int8_accuracy"],
            "keras_accuracy": run["test_accuracy"][-1], "file": os.path.relpath(path),
            "note": f"{run['epochs']} epochs from scratch (structured_dense_curve.py)",
            "instructions": {}, "ratios": {}}
        names.append(name)
    return list(dict.fromkeys(names))


def costs(own: list[dict[str, dict[str, Any]]], pool: list[dict[str, dict[str, Any]]],
          variant: str) -> dict[str, Any] | None:
    """The file / MACs / instruction ratios of ``variant`` from the results that emulated
    it: the worst, per ratio, of the group's ``own`` seeds that did (their
    architectures differ when each seed made its own plan; ``from`` lists them), else
    the first result of ``pool`` (every seed of every group) that did."""
    def emulated(results):
        found = []
        for rows in results:
            row = rows.get(variant)
            if row and all(row["instructions"].get(t) is not None for t in TARGETS):
                ra = row["ratios"]
                found.append({"size": ra["size"], "macs": ra["macs"], "from": row["file"],
                              **{t: ra["targets"][t]["instructions"] for t in TARGETS}})
        return found

    found = emulated(own) or emulated(pool)[:1]
    if len(found) < 2:
        return found[0] if found else None
    return {**{k: max(c[k] for c in found) for k in ("size", "macs", *TARGETS)},
            "from": [c["from"] for c in found]}


def aggregate(seeds: dict[int, dict[str, dict[str, Any]]], scratch: str | None,
              pool: list[dict[str, dict[str, Any]]],
              references: Sequence[str] = ()) -> dict[str, Any]:
    """Per-seed rows, per-variant statistics and paired differences of one group
    (costs from ``pool`` when none of the group's seeds emulated a variant);
    ``references``: more variants every other is paired with (``paired_pp``)."""
    variants = list(dict.fromkeys(v for rows in seeds.values() for v in rows))
    dense = "dense int8"
    scratch = scratch or next((v for v in variants if v.startswith("scratch")), None)
    per_seed = [{"seed": seed, "variant": v, "tflite_accuracy": rows[v]["tflite_accuracy"],
                 "keras_accuracy": rows[v]["keras_accuracy"], "note": rows[v]["note"],
                 "file": rows[v]["file"]}
                for seed, rows in sorted(seeds.items()) for v in variants if v in rows]
    summary = {}
    for v in variants:
        acc = {seed: rows[v]["tflite_accuracy"] for seed, rows in sorted(seeds.items())
               if v in rows}  # a variant missing on a seed counts on the others only
        entry: dict[str, Any] = {"tflite_accuracy": stats(list(acc.values())),
                                 "per_seed": acc,
                                 "cost": costs(list(seeds.values()), pool, v)}
        pairs = [(dense, "minus_dense_pp"), (scratch, "minus_scratch_pp")]
        for ref, key in pairs + [(r, f"minus {r} (pp)") for r in references]:
            if ref and ref != v:
                diffs = {seed: PP * (rows[v]["tflite_accuracy"] - rows[ref]["tflite_accuracy"])
                         for seed, rows in sorted(seeds.items()) if v in rows and ref in rows}
                entry[key] = {"per_seed": diffs, **stats(list(diffs.values()))}
        entry["paired_pp"] = {r: entry.pop(f"minus {r} (pp)") for r in references
                              if f"minus {r} (pp)" in entry}
        cost = entry["cost"]
        baseline = v in (dense, scratch, *references)
        if not baseline and cost and "minus_scratch_pp" in entry:
            entry["goals"] = {
                "within_1pp_of_dense": entry["minus_dense_pp"]["mean"] >= -1.0,
                "no_worse_than_scratch": entry["minus_scratch_pp"]["mean"] >= 0.0,
                **{f"{t}_instructions_at_most_0.6x": cost[t] <= 0.6 for t in TARGETS},
                "file_at_most_0.6x": cost["size"] <= 0.6,
                **{f"within_1pp_of {r}": d["mean"] >= -1.0 for r, d in entry["paired_pp"].items()
                   if r.startswith("dense")}}
        summary[v] = entry
    return {"seeds": sorted(seeds), "dense": dense, "scratch": scratch,
            "references": list(references), "rows": per_seed,
            "variants": summary}


def print_group(name: str, group: dict[str, Any]) -> None:
    seeds = group["seeds"]
    table = []
    for v, e in group["variants"].items():
        a = e["tflite_accuracy"]
        diffs = [e.get("minus_dense_pp"), e.get("minus_scratch_pp")] + [
            e["paired_pp"].get(r) for r in group["references"]]
        diff = [f"{d['mean']:+.2f} ± {d['std']:.2f} (min {d['min']:+.2f})" if d else ""
                for d in diffs]
        cost = e["cost"]
        table.append([v] + [f"{PP * e['per_seed'][s]:.2f}" if s in e["per_seed"] else "-"
                             for s in seeds]
                     + [f"{PP * a['mean']:.2f} ± {PP * a['std']:.2f}", f"{PP * a['min']:.2f}"]
                     + diff + ([f"{cost['size']:.3f}x"] + [f"{cost[t]:.3f}x" for t in TARGETS]
                               if cost else ["-"] * 3))
    print(format_table(["variant"] + [f"seed {s}" for s in seeds]
                       + ["mean ± std", "min", "- dense (pp)", "- scratch (pp)"]
                       + [f"- {r} (pp)" for r in group["references"]] + ["file"]
                       + [f"{t} instr" for t in TARGETS], table,
                       title=f"{name}: int8 accuracy (%) over seeds {seeds}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", nargs="+", action="append", required=True,
                        metavar=("NAME", "FILE"),
                        help="A protocol's name and its structured.py results, one per seed.")
    parser.add_argument("--scratch", default=None,
                        help="The scratch baseline's variant (default: the first 'scratch ...').")
    parser.add_argument("--dense-runs", nargs=2, action="append", default=[],
                        metavar=("GROUP", "JSON"),
                        help="A structured_dense_curve.py result whose int8 runs join GROUP "
                             "as 'dense int8, N epochs alone', every variant paired with them.")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    loaded = {}
    for name, *paths in args.group:
        if not paths:
            raise SystemExit(f"--group {name!r}: give the result files after the name.")
        loaded[name] = load(paths)
    references: dict[str, list[str]] = {}
    for name, path in args.dense_runs:
        if name not in loaded:
            raise SystemExit(f"--dense-runs {name!r}: no --group of that name "
                             f"(groups: {', '.join(loaded)}).")
        references[name] = list(dict.fromkeys(  # two files of one budget: one reference
            references.get(name, []) + add_dense_runs(loaded[name], path)))
    pool = [rows for seeds in loaded.values() for rows in seeds.values()]
    groups = {}
    for name, seeds in loaded.items():
        groups[name] = aggregate(seeds, args.scratch, pool, references.get(name, []))
        print_group(name, groups[name])
    for name, (_, *paths) in zip(groups, args.group):  # the flags, minus the per-seed ones
        with open(paths[0]) as f:
            settings = json.load(f)["settings"]
        groups[name]["settings"] = {k: v for k, v in settings.items() if k not in ("seed", "out")}
    write_json(args.out, {"groups": groups})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
