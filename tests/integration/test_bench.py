"""tfedge.bench host mode, tfedge.cost, tfedge.devices and the bench CLI (no emulation)."""

import json

import numpy as np
import pytest

import tfedge
from tfedge import cli, devices
from tfedge import bench, estimate_latency
from tfedge.cost import model_cost


@pytest.fixture(scope="module")
def host_report(digits_int8):
    return bench(digits_int8, runs=40, warmup=3)


def test_host_percentiles_are_sane_and_ordered(host_report):
    lat = host_report.host.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert lat["std"] >= 0
    assert len(host_report.host.times_ms) == host_report.host.runs == 40
    assert lat["p50"] == pytest.approx(float(np.median(host_report.host.times_ms)))
    assert host_report.host.init_ms > 0 and host_report.host.first_ms > 0


def test_host_reports_delegation_memory_and_size(host_report, digits_int8):
    host = host_report.host
    assert host.nodes == len(digits_int8.flatbuffer.ops)
    assert 0 < host.delegated_nodes <= host.nodes and host.partitions >= 1
    assert host.peak_memory_bytes is not None and host.peak_memory_bytes > 0
    assert host_report.size_bytes == digits_int8.size_bytes
    assert host_report.targets == []
    text = str(host_report)
    assert "p99" in text and "XNNPACK" in text


def test_xnnpack_off_delegates_nothing(digits_int8):
    host = bench(digits_int8, runs=3, warmup=0, xnnpack=False).host
    assert (host.xnnpack, host.delegated_nodes, host.partitions) == (False, 0, 0)


def test_unknown_target_names_the_choices(digits_int8):
    with pytest.raises(ValueError, match="rpi4.*cortex-a72"):
        bench(digits_int8, target="pentium")


def test_cost_matches_the_architecture(digits_int8, trained_digits_cnn):
    cost = model_cost(digits_int8)
    # conv 3x3x1->16 on 8x8, conv 3x3x16->32 stride 2 (4x4), dense 512->64, dense 64->10
    expected = 8 * 8 * 16 * 9 + 4 * 4 * 32 * 9 * 16 + 512 * 64 + 64 * 10
    assert cost.macs == expected
    assert cost.macs_by_dtype() == {"INT8": expected}
    assert cost.params == trained_digits_cnn.count_params()
    largest = cost.largest_tensors[0][1]
    assert largest == 8 * 8 * 16  # int8 output of the first convolution
    assert cost.activation_peak_bytes >= largest + 8 * 8  # with its input alive


def test_fast_estimate_is_above_the_bound(digits_int8):
    est = estimate_latency(digits_int8, "rpi4")
    assert est.method == "macs" and est.is_estimate
    assert est.latency_ms > est.lower_bound_ms > 0
    assert est["macs"] == model_cost(digits_int8).macs
    assert dict(est)["target"] == "rpi4"
    rpi5 = estimate_latency(digits_int8.content, "rpi5")
    assert rpi5.lower_bound_ms < est.lower_bound_ms  # SDOT and a faster clock


def test_estimate_from_a_given_instruction_count(digits_int8):
    est = tfedge.estimate_latency(digits_int8, "rpi4", instructions=1_485_000)
    rpi4 = devices.PROFILES["rpi4"]
    assert est.method == "instructions"
    assert est.latency_ms == pytest.approx(1e3 * 1_485_000 / (rpi4.ipc * rpi4.clock_hz))
    with pytest.raises(ValueError, match="cannot be emulated"):
        estimate_latency(digits_int8, "cortex-m7", method="instructions")


def test_compare_gives_ratios_to_the_baseline(trained_digits_cnn, digits_int8):
    f32 = tfedge.convert(trained_digits_cnn, mode="float32")
    report = bench(f32, compare=[digits_int8], target="rpi4", emulate=False, runs=5, warmup=1,
                   name="float")
    assert isinstance(report, tfedge.CompareReport)
    ratios = {row["name"]: row for row in report.ratios()}
    assert ratios["float"]["size"] == 1.0
    int8_row = ratios[report.reports[1].name]
    assert int8_row["size"] < 0.5 and int8_row["macs"] == 1.0
    assert int8_row["targets"]["rpi4"]["mac_estimate_ms"] is not None
    assert "float" in str(report)
    json.loads(report.to_json())


def test_report_goes_into_the_model_card(host_report, digits_int8):
    from tfedge.card import model_card

    card = model_card(digits_int8, name="digits", benchmark=host_report)
    assert card["benchmark"]["host"]["latency_ms"]["p99"] > 0
    json.loads(tfedge.report.to_json(card))


def test_cli_bench_prints_json(tmp_path, digits_int8, capsys):
    path = digits_int8.save(tmp_path / "digits.tflite")
    out = tmp_path / "bench.json"
    status = cli.main(["bench", path, "--runs", "5", "--warmup", "1", "--target", "rpi4",
                       "--no-emulation", "--json", "--output", str(out)])
    assert status == 0
    data = json.loads(capsys.readouterr().out)
    assert data["host"]["runs"] == 5 and data["targets"][0]["target"] == "rpi4"
    assert json.loads(out.read_text())["sha256"] == digits_int8.sha256
    assert cli.main(["bench", str(tmp_path / "missing.tflite")]) == 2
    assert "missing.tflite' does not exist" in capsys.readouterr().err
