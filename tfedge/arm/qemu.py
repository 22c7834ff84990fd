"""Runs a .tflite model in LiteRT's aarch64 build under ``qemu-aarch64`` and
counts the guest instructions of each ``invoke()`` exactly.

The guest sees a per-CPU view of the sysroot whose ``/proc/cpuinfo`` is the
one Linux prints on that core. Without it LiteRT reads the host's x86 file and
crashes (SIGSEGV in ``CreateWrapperFromFile``); with it, the kernels XNNPACK
picks follow the emulated core: its feature bits come from qemu's ``-cpu``
model (hardware capabilities) and its micro-architecture from the MIDR fields
of this file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from typing import Sequence

from absl import logging

from tfedge.report import write_json
from tfedge.arm.sysroot import PACKAGE_DIR, ArmEmulationError, ArmEnvironment, prepare

MARKER_SYSCALL = 124  # aarch64 sched_yield, what os.sched_yield() makes


@dataclasses.dataclass(frozen=True)
class CpuIdentity:
    """What ``/proc/cpuinfo`` shows for one core (MIDR fields and feature list)."""

    implementer: str
    part: str
    variant: str
    revision: int
    features: str


_BASE = "fp asimd evtstrm crc32 cpuid"
_CRYPTO = "aes pmull sha1 sha2"
_V82 = f"fp asimd evtstrm {_CRYPTO} crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"

# One entry per ``qemu-aarch64 -cpu`` model of qemu 7.2. MIDR values are Arm's
# part numbers (each core's Technical Reference Manual, "Main ID Register");
# the revisions are those of the boards named (Pi 3 r0p4, Pi 4 r0p3, Pi 5 r4p1),
# the feature lists what Linux prints there. ``max`` is qemu's own CPU: qemu
# sets implementer 0 ("reserved for software") and part 'Q' (0x051) for it.
CPUS: dict[str, CpuIdentity] = {
    "cortex-a35": CpuIdentity("0x41", "0xd04", "0x0", 2, f"fp asimd evtstrm {_CRYPTO} crc32 cpuid"),
    "cortex-a53": CpuIdentity("0x41", "0xd03", "0x0", 4, _BASE),
    "cortex-a57": CpuIdentity("0x41", "0xd07", "0x1", 1, f"fp asimd evtstrm {_CRYPTO} crc32 cpuid"),
    "cortex-a72": CpuIdentity("0x41", "0xd08", "0x0", 3, _BASE),
    "cortex-a76": CpuIdentity("0x41", "0xd0b", "0x4", 1, _V82),
    "neoverse-n1": CpuIdentity("0x41", "0xd0c", "0x3", 1, _V82 + " ssbs"),
    "a64fx": CpuIdentity("0x46", "0x001", "0x1", 0, _V82 + " sha3 sha512 sve"),
    "max": CpuIdentity("0x00", "0x051", "0x0", 0,
                       _V82 + " jscvt fcma sha3 sm3 sm4 sha512 sve asimdfhm dit uscat ilrcpc "
                              "flagm ssbs sb paca pacg dcpodp sve2 sveaes svepmull svebitperm "
                              "svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh rng bti"),
}


def cpuinfo_text(cpu: str, processors: int | None = None) -> str:
    """The ``/proc/cpuinfo`` an aarch64 Linux prints for ``cpu``.

    Args:
        cpu: a qemu CPU model name (see :data:`CPUS`).
        processors: number of identical entries (default: the host's CPU count,
            matching the ``/sys`` the guest also sees).
    """
    if cpu not in CPUS:
        raise ValueError(f"Unknown qemu CPU model {cpu!r}; use one of {', '.join(CPUS)}.")
    with open(os.path.join(PACKAGE_DIR, "cpuinfo.txt")) as f:
        template = f.read()
    ident = CPUS[cpu]
    return "".join(template.format(processor=i, bogomips="50.00", features=ident.features,
                                   implementer=ident.implementer, variant=ident.variant,
                                   part=ident.part, revision=ident.revision)
                   for i in range(processors or os.cpu_count() or 1))


def cpu_view(env: ArmEnvironment, cpu: str) -> str:
    """A folder that looks like the sysroot but has ``cpu``'s ``/proc/cpuinfo``.

    qemu's ``-L`` prefix takes one folder, so each CPU model gets a view made of
    symlinks to the sysroot's top-level entries plus its own ``proc/cpuinfo``;
    runs on different CPU models can then proceed in parallel.
    """
    view = os.path.join(os.path.dirname(env.sysroot), "views",
                        os.path.basename(env.sysroot), cpu)
    os.makedirs(os.path.join(view, "proc"), exist_ok=True)
    for entry in os.listdir(env.sysroot):
        link = os.path.join(view, entry)
        if entry in ("proc", ".complete") or os.path.lexists(link):
            continue
        try:
            os.symlink(os.path.join(env.sysroot, entry), link)
        except FileExistsError:  # another process made it first
            pass
    text = cpuinfo_text(cpu)
    path = os.path.join(view, "proc", "cpuinfo")
    if not os.path.exists(path) or open(path).read() != text:
        fd, tmp = tempfile.mkstemp(dir=os.path.join(view, "proc"))
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return view


@dataclasses.dataclass
class CountedRun:
    """What one emulated process measured.

    Attributes:
        cpu: the qemu CPU model.
        instructions: guest instructions of each bracketed ``invoke()``, the
            cost of an empty bracket subtracted.
        raw_windows: instructions of each bracket as read (``invoke()`` plus
            the marker calls around it).
        empty_windows: instructions of each empty bracket.
        outputs: paths of the ``.npy`` outputs of the first inference.
        delegation: ``{"nodes", "delegated_nodes", "partitions"}`` in the guest.
        total_instructions: instructions of the whole guest process.
        wall_seconds: host time the emulated process took.
    """

    cpu: str
    instructions: list[int]
    raw_windows: list[int]
    empty_windows: list[int]
    outputs: list[str]
    delegation: dict[str, int]
    total_instructions: int
    wall_seconds: float


def _windows(readings: list[int]) -> list[int]:
    return [readings[i + 1] - readings[i] for i in range(0, len(readings), 2)]


def run_counted(model_path: str, input_paths: Sequence[str], cpu: str, workdir: str, *,
                op_resolver: str = "auto", runs: int = 2, warmup: int = 1,
                empty_windows: int = 2, timeout: float = 900.0,
                env: ArmEnvironment | None = None) -> CountedRun:
    """Runs the model under ``qemu-aarch64 -cpu <cpu>`` and counts instructions.

    The interpreter runs with one thread (the count of a multi-threaded run
    depends on scheduling). The first ``invoke()`` and ``warmup`` more are not
    counted; each of the ``runs`` counted ones is bracketed by two marker
    system calls.

    Args:
        model_path: the ``.tflite`` file.
        input_paths: one ``.npy`` file per model input, already of the input's dtype.
        cpu: qemu CPU model, e.g. ``"cortex-a72"`` or ``"max"``, optionally with
            qemu CPU properties, e.g. ``"max,sve=off"``.
        workdir: folder for the spec, the plugin's readings and the outputs.
        op_resolver: LiteRT op resolver (``"auto"`` applies XNNPACK).
        runs: counted inferences.
        warmup: uncounted inferences after the first.
        empty_windows: brackets around nothing, to subtract their cost.
        timeout: seconds before the emulated process is stopped.
        env: a prepared environment (default: :func:`prepare`).

    Returns:
        A :class:`CountedRun`.

    Raises:
        ArmEmulationError: the emulated process failed, timed out, or made an
            unexpected number of marker calls.
    """
    env = env or prepare()
    base, tag = cpu.split(",")[0], cpu.replace(",", "_").replace("=", "-")
    view = cpu_view(env, base)
    readings_path = os.path.join(workdir, f"readings-{tag}.txt")
    outputs_dir = os.path.join(workdir, f"outputs-{tag}")
    os.makedirs(outputs_dir, exist_ok=True)
    for path in (readings_path, env.plugin, model_path, *input_paths):
        if "," in path:
            raise ArmEmulationError(f"qemu cannot take a path with a comma: {path!r}.")
    spec = {"model": os.path.abspath(model_path),
            "inputs": [os.path.abspath(p) for p in input_paths],
            "outputs_dir": outputs_dir, "result": os.path.join(workdir, f"result-{tag}.json"),
            "mode": "count", "num_threads": 1, "op_resolver": op_resolver,
            "warmup": warmup, "runs": runs, "empty_windows": empty_windows}
    spec_path = os.path.join(workdir, f"spec-{tag}.json")
    write_json(spec_path, spec)
    cmd = [env.qemu, "-cpu", cpu, "-L", view,
           "-plugin", f"{env.plugin},out={readings_path},syscall={MARKER_SYSCALL}",
           "-E", f"PYTHONPATH={env.site}", "-E", "PYTHONHASHSEED=0",
           "-E", "PYTHONNOUSERSITE=1", "-E", "PYTHONDONTWRITEBYTECODE=1",
           "-E", "TF_CPP_MIN_LOG_LEVEL=2",
           env.python, env.runner, spec_path]
    clean_env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    logging.info("tfedge.arm: %s", " ".join(cmd))
    start = time.time()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=clean_env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ArmEmulationError(
            f"The emulated run on {cpu} took over {timeout:.0f} s and was stopped. Large "
            "models are slow under emulation: pass a longer timeout.") from None
    wall = time.time() - start
    if proc.returncode != 0:
        signal = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
        raise ArmEmulationError(
            f"LiteRT's aarch64 build failed under qemu-aarch64 -cpu {cpu}, exit status "
            f"{proc.returncode}{signal}:\n{proc.stderr.strip()[-2000:]}\n"
            f"({env.qemu_version}; the counting plugin targets qemu 7.2's plugin API.)")
    with open(readings_path) as f:
        lines = f.read().split()
    total = 0
    readings = []
    for i, token in enumerate(lines):
        if token == "exit":
            total = int(lines[i + 1])
            break
        readings.append(int(token))
    expected = 2 * (empty_windows + runs)
    if len(readings) != expected:
        raise ArmEmulationError(
            f"The emulated run made {len(readings)} marker calls (sched_yield), expected "
            f"{expected}: something else in the guest calls sched_yield, so the brackets "
            "cannot be trusted. Run with one thread and the default op resolver.")
    windows = _windows(readings)
    empty, raw = windows[:empty_windows], windows[empty_windows:]
    overhead = min(empty) if empty else 0
    with open(spec["result"]) as f:
        result = json.load(f)
    return CountedRun(cpu=cpu, instructions=[w - overhead for w in raw], raw_windows=raw,
                      empty_windows=empty, outputs=result["outputs"],
                      delegation={k: result[k] for k in ("nodes", "delegated_nodes",
                                                         "partitions")},
                      total_instructions=total, wall_seconds=wall)

