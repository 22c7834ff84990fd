"""``tfedge.bench``: how big, how fast, how much memory, on which device.

Entry points
------------
``bench(model, target="host", ...) -> BenchReport``
    Host latency in LiteRT on this machine, plus, for each ARM target, the
    exact instruction count of one inference in LiteRT's own aarch64 build
    under qemu, a bit-for-bit comparison of its outputs with the host's, and
    latency estimates for the device. ``bench(model, compare=[other, ...])``
    or :func:`compare` returns a :class:`CompareReport` with ratios.

``estimate_latency(model, target, *, method="macs", instructions=None) -> LatencyEstimate``
    The call for other stages (``tfedge.tune``) that need one number::

        est = tfedge.estimate_latency(artifact_or_bytes_or_path, "rpi4")
        est.latency_ms          # float: the estimate of the chosen method
        est["lower_bound_ms"]   # also a read-only mapping / est.to_dict()

    ``model``: a TFLiteArtifact, flatbuffer bytes or a ``.tflite`` path.
    ``target``: a device profile name (``tfedge.devices.PROFILES``: rpi3,
    rpi4, rpi5, phone, cortex-m7) or a DeviceProfile.
    ``method="macs"`` (default) is the fast path: MACs read from the
    flatbuffer over the device's calibrated MAC rate; no emulation, about a
    millisecond. ``method="instructions"`` runs the model once under
    ``qemu-aarch64`` (seconds to minutes; needs :func:`tfedge.arm.prepare`)
    and divides the exact instruction count by the core's IPC; pass
    ``instructions=`` to reuse a count you already have. The result holds
    ``target, method, latency_ms, lower_bound_ms, mac_estimate_ms,
    instruction_estimate_ms, instructions, macs, macs_by_dtype, clock_hz,
    ipc, is_estimate`` (always True), ``note``. All latencies are single-thread
    milliseconds and estimates, except ``lower_bound_ms``, which is a bound.

Host mode wraps LiteRT's Python interpreter (``ai_edge_litert``) and ARM mode
runs the same interpreter's aarch64 wheel; neither re-implements a kernel.
LiteRT's Python API has no per-operator profiler, so per-op figures here are
MACs from :mod:`tfedge.cost`, not times.

The result and report classes (``BenchReport``, ``CompareReport``,
``HostResult``, ``TargetResult``) are in :mod:`tfedge.bench_report`; the
layers below are :mod:`tfedge.cost`, :mod:`tfedge.devices` and
:mod:`tfedge.arm`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any, Sequence

import numpy as np
from absl import logging

from tfedge import cost as cost_lib
from tfedge import devices
from tfedge.arm import CPUS, run_counted
from tfedge.arm.sysroot import RUNNER_SCRIPT
from tfedge.artifact import as_artifact
from tfedge.errors import TFEdgeError
from tfedge.bench_report import (BenchReport, CompareReport, HostResult, TargetResult,
                                 latency_stats)
from tfedge.report import write_json

HOST = "host"


class BenchmarkError(TFEdgeError, RuntimeError):
    """LiteRT failed while benchmarking (the message keeps its output)."""


# ----------------------------------------------------------------------------
# Models and inputs
# ----------------------------------------------------------------------------
def _name(model: Any, index: int) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.basename(os.fspath(model))
    mode = getattr(model, "mode", None)
    return f"model {index + 1}" + (f" ({mode})" if mode and mode != "unknown" else "")


def make_inputs(artifact: Any, inputs: Any = None, seed: int = 0) -> list[np.ndarray]:
    """One batch-1 array per model input, in the input tensor's own dtype.

    Args:
        artifact: the model.
        inputs: None for seeded random inputs (integers over the type's full
            range, floats uniform in [-1, 1]); else an array or a list of
            arrays, one per input, with or without the batch dimension. Float
            arrays for integer inputs are quantized with the input's scale
            and zero point.
        seed: random seed.

    Raises:
        ValueError: wrong number of inputs or shapes.
    """
    infos = artifact.inputs
    rng = np.random.default_rng(seed)
    if inputs is None:
        arrays = []
        for info in infos:
            shape = (1,) + tuple(max(d, 1) for d in info.shape[1:])
            dtype = info.numpy_dtype
            if dtype.kind in "iu":
                limits = np.iinfo(dtype)
                arrays.append(rng.integers(limits.min, limits.max, shape, endpoint=True,
                                           dtype=dtype))
            elif dtype.kind == "b":
                arrays.append(rng.integers(0, 2, shape).astype(dtype))
            else:
                arrays.append(rng.uniform(-1, 1, shape).astype(dtype))
        return arrays
    given = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if len(given) != len(infos):
        raise ValueError(f"The model has {len(infos)} input(s); got {len(given)} array(s).")
    arrays = []
    for info, x in zip(infos, given):
        x = np.asarray(x)
        want = tuple(max(d, 1) for d in info.shape[1:])
        if x.shape == want:
            x = x[None]
        if x.shape[1:] != want:
            raise ValueError(f"Input {info.name!r} takes samples of shape {want}; got {x.shape}.")
        x = x[:1]
        dtype = info.numpy_dtype
        if x.dtype != dtype:
            if dtype.kind in "iu" and x.dtype.kind == "f" and info.scale:
                limits = np.iinfo(dtype)
                q = np.round(x / info.scale[0] + (info.zero_point[0] if info.zero_point else 0))
                x = np.clip(q, limits.min, limits.max)
            x = x.astype(dtype)
        arrays.append(x)
    return arrays


def _write_inputs(arrays: list[np.ndarray], workdir: str) -> list[str]:
    paths = []
    for i, x in enumerate(arrays):
        path = os.path.join(workdir, f"input_{i}.npy")
        np.save(path, x)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------
# Host mode
# ----------------------------------------------------------------------------
def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _run_host(model_path: str, input_paths: list[str], workdir: str, *, runs: int,
              warmup: int, num_threads: int | None, xnnpack: bool,
              timeout: float) -> tuple[HostResult, list[str]]:
    """Runs the benchmark runner in a fresh host process (no TF imported there)."""
    outputs_dir = os.path.join(workdir, "outputs-host")
    os.makedirs(outputs_dir, exist_ok=True)
    spec = {"model": model_path, "inputs": input_paths, "outputs_dir": outputs_dir,
            "result": os.path.join(workdir, "result-host.json"), "mode": "host",
            "num_threads": num_threads, "op_resolver": "auto" if xnnpack else "no_delegates",
            "warmup": warmup, "runs": runs, "empty_windows": 0}
    spec_path = os.path.join(workdir, "spec-host.json")
    write_json(spec_path, spec)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        proc = subprocess.run([sys.executable, RUNNER_SCRIPT, spec_path], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"The host benchmark took over {timeout:.0f} s; pass fewer "
                             "runs or a longer timeout.") from None
    if proc.returncode != 0:
        signal = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
        raise BenchmarkError(f"LiteRT failed on this machine, exit status {proc.returncode}"
                             f"{signal}:\n{proc.stderr.strip()[-2000:]}")
    with open(spec["result"]) as f:
        r = json.load(f)
    times = [t / 1e6 for t in r["times_ns"]]
    peak = None
    if r.get("hwm_after_kb") is not None and r.get("rss_before_kb") is not None:
        peak = 1024 * max(r["hwm_after_kb"] - r["rss_before_kb"], 0)
    host = HostResult(
        init_ms=r["init_ns"] / 1e6, first_ms=r["first_ns"] / 1e6, warmup=warmup, runs=runs,
        latency_ms=latency_stats(times), times_ms=times, num_threads=num_threads,
        xnnpack=xnnpack, nodes=r["nodes"], delegated_nodes=r["delegated_nodes"],
        partitions=r["partitions"], peak_memory_bytes=peak, machine=_machine())
    return host, r["outputs"]


# ----------------------------------------------------------------------------
# ARM targets
# ----------------------------------------------------------------------------
def _compare_outputs(host_paths: list[str], arm_paths: list[str]) -> tuple[bool, int, float]:
    match, mismatched, worst = True, 0, 0.0
    for h, a in zip(host_paths, arm_paths):
        x, y = np.load(h), np.load(a)
        if x.shape != y.shape or x.dtype != y.dtype:
            return False, int(max(x.size, y.size)), float("inf")
        differ = x.tobytes() != y.tobytes()
        if differ:
            match = False
            neq = x != y
            mismatched += int(np.count_nonzero(neq)) or x.size  # NaN payloads differ bytewise
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return match, mismatched, worst


def _resolve_target(target: Any) -> tuple[str, str | None, devices.DeviceProfile | None]:
    """(name, qemu cpu, profile) of a target given by name or profile."""
    if isinstance(target, devices.DeviceProfile):
        return target.name, target.qemu_cpu, target
    if target in devices.PROFILES:
        profile = devices.PROFILES[target]
        return target, profile.qemu_cpu, profile
    if isinstance(target, str) and target.split(",")[0] in CPUS:  # e.g. "max,sve=off"
        return target, target, None
    raise ValueError(f"Unknown target {target!r}. Use 'host', a device profile "
                     f"({', '.join(devices.PROFILES)}) or a qemu CPU model "
                     f"({', '.join(CPUS)}).")


def _emulate(model_path: str, input_paths: list[str], cpu: str, workdir: str, *,
             runs: int, xnnpack: bool, timeout: float):
    return run_counted(model_path, input_paths, cpu, workdir,
                       op_resolver="auto" if xnnpack else "no_delegates", runs=runs,
                       timeout=timeout)


# ----------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------
def bench(model: Any, target: str | Sequence[Any] = HOST, *, compare: Any = None,
          inputs: Any = None, runs: int = 100, warmup: int = 10, num_threads: int | None = 1,
          xnnpack: bool = True, emulate: bool = True, emulation_runs: int = 2, seed: int = 0,
          timeout: float = 900.0, name: str | None = None) -> BenchReport | CompareReport:
    """Benchmarks a TFLite model on this machine and on emulated ARM targets.

    Host mode runs LiteRT here in a fresh process: init time, first run,
    ``warmup`` untimed runs, ``runs`` timed runs (min / p50 / p90 / p99 /
    mean / std), XNNPACK delegation, peak memory. For each ARM target
    (device profile or qemu CPU model) the model runs in LiteRT's aarch64
    build under ``qemu-aarch64`` on the same inputs: exact instructions per
    inference, whether they repeat, and whether the outputs equal the host's
    bit for bit (a mismatch is reported, never hidden). Device profiles add
    latency estimates (labelled as such) and a MAC-bound lower bound.

    Args:
        model: a ``.tflite`` path, flatbuffer bytes or a TFLiteArtifact.
        target: ``"host"``, a device profile name (``rpi3``, ``rpi4``,
            ``rpi5``, ``phone``, ``cortex-m7``), a qemu CPU model
            (``cortex-a53``, ``cortex-a72``, ``cortex-a76``, ``neoverse-n1``,
            ``max``, ...), or a list of them. The host always runs: it is the
            reference the ARM outputs are compared with.
        compare: another model, or a list of them, to benchmark the same
            way; returns a :class:`CompareReport` with ratios to ``model``.
        inputs: input arrays (see :func:`make_inputs`); default: seeded random.
        runs: timed host runs.
        warmup: untimed host runs after the first.
        num_threads: host interpreter threads (ARM counts use one thread).
        xnnpack: apply LiteRT's default XNNPACK delegate (host and ARM).
        emulate: False skips qemu; device targets then get MAC-based figures only.
        emulation_runs: counted inferences per ARM target (>= 2 checks repeatability).
        seed: seed of the random inputs.
        timeout: seconds allowed per process (host or emulated).
        name: the model's name in tables (default: file name).

    Returns:
        A :class:`BenchReport` (or :class:`CompareReport` with ``compare``);
        both print as tables and have ``to_dict`` / ``to_json`` / ``save``.

    Raises:
        FileNotFoundError: no such model file.
        InvalidModelFileError: not a TFLite model.
        ValueError: unknown target, bad inputs or counts.
        ArmEmulationError: qemu or a compiler missing (with the apt-get
            command), sysroot not prepared, or the emulated run failed.
        BenchmarkError: LiteRT failed on the host.

    Example:

    >>> report = tfedge.bench("model.tflite", target=["rpi4", "rpi5"])  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    >>> report.target("rpi4").instructions  # doctest: +SKIP
    """
    if compare is not None and (isinstance(compare, (str, bytes, bytearray, os.PathLike))
                                or not isinstance(compare, Sequence)):
        compare = [compare]  # one model (a path, bytes or an artifact) instead of a list
    if compare:
        models = [model] + list(compare)
        names = [name] + [None] * len(compare) if name else None
        return _compare_models(models, target=target, names=names, inputs=inputs, runs=runs,
                               warmup=warmup, num_threads=num_threads, xnnpack=xnnpack,
                               emulate=emulate, emulation_runs=emulation_runs, seed=seed,
                               timeout=timeout)
    if runs < 1 or warmup < 0 or emulation_runs < 1:
        raise ValueError(f"runs must be >= 1, warmup >= 0 and emulation_runs >= 1; got "
                         f"runs={runs}, warmup={warmup}, emulation_runs={emulation_runs}.")
    targets = [target] if isinstance(target, (str, devices.DeviceProfile)) else list(target)
    resolved = [_resolve_target(t) for t in targets if t != HOST]
    artifact = as_artifact(model)
    name = name or _name(model, 0)
    arrays = make_inputs(artifact, inputs, seed)
    model_cost = cost_lib.model_cost(artifact)

    with tempfile.TemporaryDirectory(prefix="tfedge-bench-") as workdir:
        model_path = os.path.join(workdir, "model.tflite")
        artifact.save(model_path)
        input_paths = _write_inputs(arrays, workdir)
        logging.info("tfedge.bench: %s on the host (%d runs)", name, runs)
        host, host_outputs = _run_host(model_path, input_paths, workdir, runs=runs,
                                       warmup=warmup, num_threads=num_threads,
                                       xnnpack=xnnpack, timeout=timeout)
        emulated: dict[str, Any] = {}
        results = []
        for tname, cpu, profile in resolved:
            result = TargetResult(target=tname, qemu_cpu=cpu,
                                  device=profile.to_dict() if profile else None)
            if profile is not None:
                split = model_cost.macs_by_dtype()
                result.lower_bound_ms = profile.lower_bound_ms(split)
                result.mac_estimate_ms = profile.mac_estimate_ms(split)
            if cpu is None:
                result.note = (f"{profile.core} is not an aarch64 core: no emulated run; "
                               "figures from MACs only.")
            elif not emulate:
                result.note = "emulation skipped: figures from MACs only."
            else:
                if cpu not in emulated:
                    logging.info("tfedge.bench: %s under qemu-aarch64 -cpu %s", name, cpu)
                    emulated[cpu] = _emulate(model_path, input_paths, cpu, workdir,
                                             runs=emulation_runs, xnnpack=xnnpack,
                                             timeout=timeout)
                run = emulated[cpu]
                result.instruction_counts = list(run.instructions)
                result.instructions = min(run.instructions)
                result.deterministic = len(set(run.instructions)) == 1
                result.emulation_seconds = run.wall_seconds
                result.nodes = run.delegation["nodes"]
                result.delegated_nodes = run.delegation["delegated_nodes"]
                match, mismatched, worst = _compare_outputs(host_outputs, run.outputs)
                result.outputs_match, result.mismatched_elements = match, mismatched
                result.max_abs_diff = worst
                if not match:
                    logging.warning("tfedge.bench: %s: the aarch64 outputs differ from the "
                                    "host's in %d element(s) (max abs diff %g).", tname,
                                    mismatched, worst)
                if not result.deterministic:
                    result.note = "instruction counts differ between runs: " + ", ".join(
                        f"{c:,}" for c in run.instructions)
                if profile is not None:
                    result.instruction_estimate_ms = profile.instruction_estimate_ms(
                        result.instructions)
            results.append(result)

    return BenchReport(name=name, size_bytes=artifact.size_bytes, sha256=artifact.sha256,
                       mode=artifact.mode, cost=model_cost, host=host, targets=results,
                       inputs="given" if inputs is not None else f"random (seed {seed})")


def compare(models: Sequence[Any] | dict[str, Any], target: str | Sequence[Any] = HOST, *,
            names: Sequence[str | None] | None = None, **kwargs: Any) -> CompareReport:
    """Benchmarks several models the same way, side by side.

    Args:
        models: a list of models (paths, bytes, artifacts), or a dict
            ``{name: model}``; the first is the baseline of the ratios.
        target: as for :func:`bench`.
        names: names for the tables (default: file names or "model N").
        **kwargs: any other :func:`bench` argument.

    Returns:
        A :class:`CompareReport`.

    Example:

    >>> print(tfedge.compare({"float": f32, "int8": i8}, target="rpi4"))  # doctest: +SKIP
    """
    if isinstance(models, dict):
        names, models = list(models), list(models.values())
    models = list(models)
    if len(models) < 2:
        raise ValueError("compare needs at least two models.")
    names = list(names) if names else [None] * len(models)
    reports = [bench(m, target, name=n or _name(m, i), **kwargs)
               for i, (m, n) in enumerate(zip(models, names))]
    return CompareReport(reports)


_compare_models = compare  # bench()'s ``compare`` argument hides the function's name


@dataclasses.dataclass(frozen=True)
class LatencyEstimate(collections.abc.Mapping):
    """A single-thread latency estimate for one model on one device.

    Reads as an object (``est.latency_ms``) and as a mapping (``est["macs"]``,
    ``dict(est)``). See the module docstring for the fields.
    """

    target: str
    method: str
    latency_ms: float
    lower_bound_ms: float
    mac_estimate_ms: float
    instruction_estimate_ms: float | None
    instructions: int | None
    macs: int
    macs_by_dtype: dict[str, int]
    clock_hz: float
    ipc: float | None
    is_estimate: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(dataclasses.fields(self))


def estimate_latency(model: Any, target: str | devices.DeviceProfile = "rpi4", *,
                     method: str = "macs", instructions: int | None = None,
                     timeout: float = 900.0) -> LatencyEstimate:
    """Estimated single-thread latency of a model on a device.

    Args:
        model: a TFLiteArtifact, flatbuffer bytes or a ``.tflite`` path.
        target: a device profile name or :class:`~tfedge.devices.DeviceProfile`.
        method: ``"macs"`` (fast, no emulation) or ``"instructions"`` (one
            emulated run under qemu, exact count / IPC / clock).
        instructions: an instruction count already measured on the profile's
            qemu CPU; implies ``method="instructions"`` without emulating.
        timeout: seconds allowed for the emulated run.

    Returns:
        A :class:`LatencyEstimate`; ``latency_ms`` is the chosen method's estimate.

    Raises:
        ValueError: unknown target or method, or ``"instructions"`` for a
            device with no aarch64 core (Cortex-M).
        ArmEmulationError: emulation needed but not available.

    Example:

    >>> tfedge.estimate_latency(artifact, "rpi4").latency_ms  # doctest: +SKIP
    12.7
    """
    profile = devices.get_profile(target)
    if instructions is not None:
        method = "instructions"
    if method not in ("macs", "instructions"):
        raise ValueError(f"method={method!r}; use 'macs' (fast) or 'instructions' (emulated).")
    artifact = as_artifact(model)
    model_cost = cost_lib.model_cost(artifact)
    split = model_cost.macs_by_dtype()
    note = "single-thread estimate from calibrated constants (tfedge/devices.py)"
    if method == "instructions":
        if profile.qemu_cpu is None or profile.ipc is None:
            raise ValueError(f"{profile.name} ({profile.core}) cannot be emulated with "
                             "qemu-aarch64; use method='macs'.")
        if instructions is None:
            with tempfile.TemporaryDirectory(prefix="tfedge-estimate-") as workdir:
                model_path = artifact.save(os.path.join(workdir, "model.tflite"))
                input_paths = _write_inputs(make_inputs(artifact), workdir)
                run = _emulate(model_path, input_paths, profile.qemu_cpu, workdir, runs=1,
                               xnnpack=True, timeout=timeout)
                instructions = run.instructions[0]
    instr_ms = (profile.instruction_estimate_ms(instructions)
                if instructions is not None else None)
    mac_ms = profile.mac_estimate_ms(split)
    return LatencyEstimate(
        target=profile.name, method=method,
        latency_ms=float(instr_ms if method == "instructions" else mac_ms),
        lower_bound_ms=profile.lower_bound_ms(split), mac_estimate_ms=mac_ms,
        instruction_estimate_ms=instr_ms, instructions=instructions, macs=model_cost.macs,
        macs_by_dtype=split, clock_hz=profile.clock_hz, ipc=profile.ipc, note=note)
