"""What ``tfedge.bench`` returns: the host and ARM results and the reports that print them.

:class:`BenchReport` is everything measured about one model (size, cost,
host latency, one :class:`TargetResult` per ARM target); :class:`CompareReport`
puts several side by side with ratios to the first. Both print as tables
and save as JSON. The measuring is in :mod:`tfedge._bench`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from tfedge import cost as cost_lib
from tfedge.report import format_table, to_json, write_json


def latency_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """min / p50 / p90 / p99 / mean / std / max of latencies (ms)."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        return {}
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"min": float(t.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(t.mean()), "std": float(t.std(ddof=1)) if t.size > 1 else 0.0,
            "max": float(t.max())}


@dataclasses.dataclass
class HostResult:
    """LiteRT on this machine.

    Attributes:
        init_ms: interpreter construction plus ``allocate_tensors``.
        first_ms: the first ``invoke()`` (delegate preparation included).
        warmup: untimed runs after the first.
        runs: timed runs.
        latency_ms: ``min, p50, p90, p99, mean, std, max`` of the timed runs.
        times_ms: every timed run, in order.
        num_threads: interpreter threads.
        xnnpack: whether the default XNNPACK delegate was applied.
        nodes: the model's operators.
        delegated_nodes: operators XNNPACK took (check, do not assume).
        partitions: delegate partitions (each a hand-over between kernels).
        peak_memory_bytes: rise of the process's resident-set high-water mark
            from just before the interpreter was built to the end of the runs.
        machine: the host's CPU, for the record.
    """

    init_ms: float
    first_ms: float
    warmup: int
    runs: int
    latency_ms: dict[str, float]
    times_ms: list[float]
    num_threads: int | None
    xnnpack: bool
    nodes: int
    delegated_nodes: int
    partitions: int
    peak_memory_bytes: int | None
    machine: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TargetResult:
    """One ARM target: the emulated run and the device estimates.

    Attributes:
        target: the name asked for (a device profile or a qemu CPU model).
        qemu_cpu: the emulated CPU model (None: not emulated).
        device: the device profile (None for a bare qemu CPU model).
        instructions: guest instructions of one inference (None: not emulated).
        instruction_counts: the count of each counted inference.
        deterministic: whether every counted inference had the same count.
        outputs_match: ARM outputs equal the host's bit for bit (None: not run).
        mismatched_elements: output elements that differ.
        max_abs_diff: largest output difference, in the output's own units.
        delegated_nodes: operators XNNPACK took in the aarch64 build.
        nodes: the model's operators.
        lower_bound_ms: MACs at the core's peak rate, one core (a bound).
        mac_estimate_ms: fast estimate from MACs (single thread, estimate).
        instruction_estimate_ms: estimate from the instruction count and the
            core's IPC (single thread, estimate).
        emulation_seconds: host time the emulated process took.
        note: what was not done, and why.
    """

    target: str
    qemu_cpu: str | None
    device: dict[str, Any] | None = None
    instructions: int | None = None
    instruction_counts: list[int] = dataclasses.field(default_factory=list)
    deterministic: bool | None = None
    outputs_match: bool | None = None
    mismatched_elements: int = 0
    max_abs_diff: float | None = None
    delegated_nodes: int | None = None
    nodes: int | None = None
    lower_bound_ms: float | None = None
    mac_estimate_ms: float | None = None
    instruction_estimate_ms: float | None = None
    emulation_seconds: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


@dataclasses.dataclass
class BenchReport:
    """Everything measured about one model.

    Attributes:
        name: the model's name in tables.
        size_bytes: flatbuffer size.
        sha256: flatbuffer hash.
        mode: conversion mode, when known.
        cost: MACs, parameters, activation memory (:class:`tfedge.cost.ModelCost`).
        host: LiteRT on this machine (:class:`HostResult`).
        targets: one :class:`TargetResult` per ARM target.
        inputs: how the inputs were made.
    """

    name: str
    size_bytes: int
    sha256: str
    mode: str
    cost: cost_lib.ModelCost
    host: HostResult
    targets: list[TargetResult]
    inputs: str

    def target(self, name: str) -> TargetResult:
        """The result for target ``name``."""
        for t in self.targets:
            if t.target == name:
                return t
        raise KeyError(f"No target {name!r} in this report; it has "
                       f"{', '.join(t.target for t in self.targets) or 'none'}.")

    @property
    def outputs_match(self) -> bool | None:
        """False if any emulated target's outputs differ from the host's."""
        checked = [t.outputs_match for t in self.targets if t.outputs_match is not None]
        return all(checked) if checked else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size_bytes": self.size_bytes, "sha256": self.sha256,
                "mode": self.mode, "cost": self.cost.to_dict(), "host": self.host.to_dict(),
                "targets": [t.to_dict() for t in self.targets], "inputs": self.inputs,
                "estimates_note": "latency estimates are single-thread estimates from "
                                  "calibrated per-core constants (tfedge/devices.py); "
                                  "lower_bound_ms is a bound"}

    def to_json(self) -> str:
        return to_json(self.to_dict())

    def save(self, path: str | os.PathLike) -> str:
        """Writes the report as JSON; returns the path."""
        return write_json(path, self.to_dict())

    def __str__(self) -> str:
        h, lat = self.host, self.host.latency_ms
        mem = "-" if h.peak_memory_bytes is None else f"{h.peak_memory_bytes / 1024:,.0f} KiB"
        summary = format_table(["", "value"], [
            ["size", f"{self.size_bytes:,} B"], ["mode", self.mode],
            ["MACs", f"{self.cost.macs:,}"], ["parameters", f"{self.cost.params:,}"],
            ["activation peak", f"{self.cost.activation_peak_bytes:,} B"],
            ["host init", f"{h.init_ms:.3g} ms"], ["host first run", f"{h.first_ms:.3g} ms"],
            ["host peak memory", mem],
            ["XNNPACK", f"{h.delegated_nodes} of {h.nodes} nodes, {h.partitions} partition(s)"
                        if h.xnnpack else "off"],
            ["inputs", self.inputs]], title=f"{self.name}")
        host = format_table(
            ["host", "threads", "runs", "min", "p50", "p90", "p99", "mean", "std"],
            [[h.machine[:40], h.num_threads, h.runs] + [_ms(lat.get(k)) for k in
                                                        ("min", "p50", "p90", "p99", "mean",
                                                         "std")]],
            title="host latency (ms, LiteRT on this machine)")
        out = [summary, host]
        if self.targets:
            rows = [[t.target, t.qemu_cpu or "-",
                     "-" if t.instructions is None else f"{t.instructions:,}",
                     {True: "yes", False: "NO", None: "-"}[t.deterministic],
                     {True: "yes", False: f"NO ({t.mismatched_elements} differ)",
                      None: "-"}[t.outputs_match],
                     _ms(t.instruction_estimate_ms), _ms(t.mac_estimate_ms),
                     _ms(t.lower_bound_ms)] for t in self.targets]
            out.append(format_table(
                ["target", "qemu cpu", "instructions", "repeatable", "= host",
                 "est. ms (instr)", "est. ms (MACs)", "bound ms"], rows,
                title="ARM targets (one thread; est. = estimate, bound = MACs at peak rate)"))
            notes = [f"  {t.target}: {t.note}" for t in self.targets if t.note]
            if notes:
                out.append("notes:\n" + "\n".join(notes))
        return "\n\n".join(out)


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


@dataclasses.dataclass
class CompareReport:
    """Several models side by side; ratios are against the first (the baseline).

    Attributes:
        reports: one :class:`BenchReport` per model, baseline first.
    """

    reports: list[BenchReport]

    @property
    def baseline(self) -> BenchReport:
        return self.reports[0]

    def ratios(self) -> list[dict[str, Any]]:
        """Per model: size, MACs, host p50 and per-target figures over the baseline's."""
        base = self.baseline
        rows = []
        for r in self.reports:
            row: dict[str, Any] = {
                "name": r.name, "size": _ratio(r.size_bytes, base.size_bytes),
                "macs": _ratio(r.cost.macs, base.cost.macs),
                "host_p50": _ratio(r.host.latency_ms.get("p50"), base.host.latency_ms.get("p50")),
                "targets": {}}
            for t in r.targets:
                try:
                    b = base.target(t.target)
                except KeyError:
                    continue
                row["targets"][t.target] = {
                    "instructions": _ratio(t.instructions, b.instructions),
                    "instruction_estimate_ms": _ratio(t.instruction_estimate_ms,
                                                      b.instruction_estimate_ms),
                    "mac_estimate_ms": _ratio(t.mac_estimate_ms, b.mac_estimate_ms)}
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline.name, "models": [r.to_dict() for r in self.reports],
                "ratios": self.ratios()}

    def to_json(self) -> str:
        return to_json(self.to_dict())

    def save(self, path: str | os.PathLike) -> str:
        return write_json(path, self.to_dict())

    def __str__(self) -> str:
        def x(v):
            return "-" if v is None else f"{v:.2f}x"
        ratios = {row["name"]: row for row in self.ratios()}
        models = format_table(
            ["model", "size KB", "x", "MACs M", "params", "act. peak KB", "host p50 ms",
             "host p99 ms", "x"],
            [[r.name, f"{r.size_bytes / 1024:.1f}", x(ratios[r.name]["size"]),
              f"{r.cost.macs / 1e6:.2f}", f"{r.cost.params:,}",
              f"{r.cost.activation_peak_bytes / 1024:.1f}", _ms(r.host.latency_ms.get("p50")),
              _ms(r.host.latency_ms.get("p99")), x(ratios[r.name]["host_p50"])]
             for r in self.reports],
            title=f"models (x = ratio to {self.baseline.name})")
        rows = []
        for r in self.reports:
            for t in r.targets:
                tr = ratios[r.name]["targets"].get(t.target, {})
                rows.append([r.name, t.target,
                             "-" if t.instructions is None else f"{t.instructions:,}",
                             x(tr.get("instructions")), _ms(t.instruction_estimate_ms),
                             _ms(t.mac_estimate_ms), _ms(t.lower_bound_ms),
                             {True: "yes", False: "NO", None: "-"}[t.outputs_match]])
        out = [models]
        if rows:
            out.append(format_table(
                ["model", "target", "instructions", "x", "est. ms (instr)", "est. ms (MACs)",
                 "bound ms", "= host"], rows,
                title="ARM targets (one thread; est. = estimate, bound = MACs at peak rate)"))
        return "\n\n".join(out)
