"""benchmarks/structured_seeds.py: the multi-seed aggregate of structured.py results
(paired differences, statistics, costs taken from a seed that emulated)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import structured_seeds  # noqa: E402

PLAN = "channel 0.500x MACs, plan: stem 0.5, e1 0.67, early x8, rest x16"


def row(variant, accuracy, instructions=None, size=1.0):
    counts = {t: instructions for t in ("rpi3", "rpi4", "rpi5")}
    return {"variant": variant, "tflite_accuracy": accuracy, "keras_accuracy": accuracy,
            "note": "", "instructions": counts,
            "ratios": {"size": size, "macs": size,
                       "targets": {t: {"instructions": instructions and instructions / 100}
                                   for t in counts}}}


def result(tmp_path, seed, rows):
    path = tmp_path / f"seed{seed}.json"
    path.write_text(json.dumps({"settings": {"seed": seed}, "rows": rows}))
    return str(path)


def test_short_names_drop_the_plan_description_and_keep_the_suffixes():
    assert structured_seeds.short(PLAN + " + low-rank Conv_1 r32 + QAT") == \
        "channel 0.500x MACs plan + low-rank Conv_1 r32 + QAT"
    assert structured_seeds.short("scratch 0.5x MACs") == "scratch 0.5x MACs"
    assert structured_seeds.short(f"scratch, shape of {PLAN}, 52 epochs distilled + QAT") == \
        "scratch, shape of channel 0.500x MACs plan, 52 epochs distilled + QAT"


def test_paired_differences_statistics_and_goals(tmp_path):
    emulated = result(tmp_path, 0, [row("dense int8", 0.98, 100), row(PLAN, 0.97, 50, 0.55),
                                    row("scratch 0.5x MACs", 0.96, 65, 0.5)])
    host_only = result(tmp_path, 1, [row("dense int8", 0.96), row(PLAN, 0.97),
                                     row("scratch 0.5x MACs", 0.97)])
    out = tmp_path / "agg.json"
    structured_seeds.main(["--group", "g", emulated, host_only, "--out", str(out)])
    plan = json.loads(out.read_text())["groups"]["g"]["variants"]["channel 0.500x MACs plan"]
    assert plan["minus_dense_pp"]["per_seed"] == pytest.approx({"0": -1.0, "1": 1.0})
    assert plan["minus_dense_pp"]["mean"] == pytest.approx(0.0)
    assert plan["minus_scratch_pp"]["min"] == pytest.approx(0.0)
    assert plan["tflite_accuracy"]["std"] == pytest.approx(0.0)
    assert plan["cost"]["rpi4"] == pytest.approx(0.5)  # from seed 0, the one that emulated
    assert plan["goals"] == {"within_1pp_of_dense": True, "no_worse_than_scratch": True,
                             "rpi4_instructions_at_most_0.6x": True,
                             "rpi5_instructions_at_most_0.6x": True, "file_at_most_0.6x": True}


def test_a_seed_given_twice_in_a_group_is_an_error(tmp_path):
    path = result(tmp_path, 0, [row("dense int8", 0.98, 100)])
    with pytest.raises(SystemExit, match="seed 0 is already given"):
        structured_seeds.main(["--group", "g", path, path, "--out", str(tmp_path / "a.json")])


def test_dense_runs_join_the_group_as_a_paired_reference(tmp_path):
    seed0 = result(tmp_path, 0, [row("dense int8", 0.98, 100), row(PLAN, 0.97, 50, 0.55)])
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"runs": [
        {"seed": 0, "epochs": 52, "int8_accuracy": 0.99, "test_accuracy": [0.5, 0.99]},
        {"seed": 7, "epochs": 52, "int8_accuracy": 0.5, "test_accuracy": [0.5]}]}))
    out = tmp_path / "agg.json"
    structured_seeds.main(["--group", "g", seed0, "--dense-runs", "g", str(curve),
                           "--out", str(out)])
    group = json.loads(out.read_text())["groups"]["g"]
    assert group["references"] == ["dense int8, 52 epochs alone"]
    paired = group["variants"]["channel 0.500x MACs plan"]["paired_pp"]
    assert paired["dense int8, 52 epochs alone"]["mean"] == pytest.approx(-2.0)  # seed 7 left out
    with pytest.raises(SystemExit, match="no --group of that name"):
        structured_seeds.main(["--group", "g", seed0, "--dense-runs", "h", str(curve),
                               "--out", str(out)])


def test_detector_plans_made_per_seed_pair_by_name_and_report_the_worst_cost(tmp_path):
    def detector_result(seed, plan_macs, plan_rpi5):
        path = tmp_path / f"det{seed}.json"
        path.write_text(json.dumps({
            "settings": {"seed": seed, "detector": True,
                         "detector_plan": [{"instructions": 0.55}]},
            "rows": [row("dense int8", 0.97, 100),
                     row(f"plan instructions=0.55 on rpi4+rpi5, {plan_macs}x MACs, distilled",
                         0.975, plan_rpi5, 0.3),
                     row(f"scratch {plan_macs}x MACs, 83 epochs", 0.96, 60, 0.4)]}))
        return str(path)
    out = tmp_path / "agg.json"
    structured_seeds.main(["--group", "det", detector_result(0, 0.36, 52),
                           detector_result(1, 0.38, 57), "--out", str(out)])
    group = json.loads(out.read_text())["groups"]["det"]
    assert group["seeds"] == [0, 1]
    assert group["scratch"] == "scratch, nearest width, 83 epochs"
    plan = group["variants"]["plan instructions=0.55 on rpi4+rpi5, distilled"]
    assert plan["minus_scratch_pp"]["per_seed"] == pytest.approx({"0": 1.5, "1": 1.5})
    assert plan["cost"]["rpi5"] == pytest.approx(0.57)  # the worse of the two seeds' plans
    assert len(plan["cost"]["from"]) == 2
