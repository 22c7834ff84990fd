"""``tfedge.devices``: named edge devices and the constants behind latency estimates.

A :class:`DeviceProfile` describes one core of a target board: clock, core
count, the qemu CPU model that emulates it, and three per-core constants:

* ``macs_per_cycle``: the core's peak multiply-accumulate rate per data type,
  from Arm Compute Library's own GEMM kernel performance tables. A model's
  MACs divided by this rate and the clock give a **lower bound** of its
  single-thread latency.
* ``efficiency``: the fraction of that peak that LiteRT/XNNPACK reaches on a
  reference network, for the **fast estimate** (MACs only, no emulation).
* ``ipc``: instructions per cycle of LiteRT/XNNPACK kernels on the core, for
  the **instruction estimate** (exact emulated instruction count / IPC / clock).

IPC and efficiency are *derived* constants: calibrated on MobileNetV2 1.0 224
(300.77 M MACs, measured by :mod:`tfedge.cost`) against published
single-thread latencies of XNNPACK, using the instruction counts tfedge's
emulator measures for the same network (one thread, XNNPACK, LiteRT 2.3,
qemu 7.2). Each constant's source and arithmetic is written beside it. They
are estimates: real latency also depends on caches, memory bandwidth, thermal
throttling and the LiteRT version, so treat them as +-30 % at best.

Framework-neutral: no TensorFlow import.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# --- Sources ---------------------------------------------------------------
# [ACL]  Arm Compute Library, src/core/NEON/kernels/arm_gemm/kernels/:
#        a64_sgemm_8x12.hpp (fp32: A53 2.777, A55r1 3.954, A73 2.885,
#        default 7.2307 MACs/cycle), a64_gemm_s8_8x12.hpp (int8 SDOT:
#        A55r1 15.361, default 29.0698), a64_gemm_s8_4x4.hpp (int8 without
#        dot product: A55 3.12, default 7.97), a64_gemm_u8_4x4.hpp (A55 2.25).
#        "default" is the figure ACL uses for every big core it does not name.
# [XNN]  google/XNNPACK README.md, "Performance": MobileNet v2 1.0X fp32,
#        single-threaded: Pixel 2 53 ms, Pixel 3a 55 ms; multi-threaded (4
#        threads, 32-bit Raspbian): RPi 3+ 79 ms, RPi 4 44 ms.
# [EMU]  tfedge's own exact instruction counts of MobileNetV2 1.0 224 under
#        qemu-aarch64 (one thread, XNNPACK, LiteRT 2.3): fp32 cortex-a53
#        195,886,740 / cortex-a72 123,351,334 / cortex-a76 120,463,901;
#        int8 cortex-a53 131,929,733 / cortex-a72 113,674,594 /
#        cortex-a76 49,176,817. Reproduce with
#        `python benchmarks/harness.py --calibrate`.
# [TINY] MLPerf Tiny v1.1 closed results (mlcommons/tiny_results_v1.1,
#        closed/Krai): NUCLEO-H7A3ZI (Cortex-M7, 280 MHz), X-CUBE-AI 7.3,
#        Person Detection 19.838 inferences/s; the network is MobileNetV1 0.25
#        96x96, 7,489,664 MACs by tfedge.cost.
# [M7]   Arm Cortex-M7 Technical Reference Manual: SMLAD (two 16-bit MACs) and
#        VFMA.F32 each issue once per cycle; CMSIS-NN (Lai et al. 2018,
#        arXiv:1801.06601) builds its int8 kernels on SMLAD.


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """One target device, described per core for latency estimates.

    Args:
        name: short name used on the command line, e.g. ``"rpi4"``.
        description: the board or SoC, for humans.
        core: the CPU core, e.g. ``"Cortex-A72"``.
        clock_hz: core clock.
        cores: cores a multi-threaded run could use.
        qemu_cpu: ``qemu-aarch64 -cpu`` model that emulates the core, or None
            when it is not an aarch64 core (Cortex-M).
        ipc: instructions per cycle of LiteRT's kernels on this core (derived,
            see the module docstring), or None.
        macs_per_cycle: peak MACs per cycle, ``{"int8": ..., "fp32": ...}``.
        efficiency: fraction of the peak reached on the reference network,
            ``{"int8": ..., "fp32": ...}`` (derived).
        notes: where the constants come from.

    Example:

    >>> rpi4 = tfedge.devices.get_profile("rpi4")  # doctest: +SKIP
    >>> rpi4.lower_bound_ms({"INT8": 58_000_000})  # doctest: +SKIP
    4.85
    """

    name: str
    description: str
    core: str
    clock_hz: float
    cores: int
    qemu_cpu: str | None
    ipc: float | None
    macs_per_cycle: Mapping[str, float]
    efficiency: Mapping[str, float]
    notes: str = ""

    @staticmethod
    def rate_key(dtype: str) -> str:
        """``"int8"`` for 8-bit computation types, ``"fp32"`` for the rest.

        int16 activations (int16x8 models) and float16 run on slower kernels
        than int8; counting them at the fp32 rate keeps the bound a bound.
        """
        return "int8" if dtype.upper() in ("INT8", "UINT8") else "fp32"

    def _split(self, macs: int | Mapping[str, int]) -> dict[str, int]:
        if isinstance(macs, Mapping):
            split: dict[str, int] = {}
            for dtype, n in macs.items():
                key = self.rate_key(dtype)
                split[key] = split.get(key, 0) + int(n)
            return split
        return {"fp32": int(macs)}

    def lower_bound_ms(self, macs: int | Mapping[str, int], threads: int = 1) -> float:
        """Latency no implementation can beat: MACs at the core's peak rate.

        Args:
            macs: MACs by computation type (``ModelCost.macs_by_dtype()``), or
                a plain count (taken as fp32).
            threads: cores working in parallel (at most ``cores``).
        """
        threads = max(1, min(threads, self.cores))
        cycles = sum(n / self.macs_per_cycle[k] for k, n in self._split(macs).items())
        return 1e3 * cycles / (self.clock_hz * threads)

    def mac_estimate_ms(self, macs: int | Mapping[str, int]) -> float:
        """Fast single-thread estimate: the lower bound over the calibrated efficiency."""
        cycles = sum(n / (self.macs_per_cycle[k] * self.efficiency[k])
                     for k, n in self._split(macs).items())
        return 1e3 * cycles / self.clock_hz

    def instruction_estimate_ms(self, instructions: int) -> float | None:
        """Single-thread estimate from an exact instruction count (None without IPC)."""
        if self.ipc is None:
            return None
        return 1e3 * instructions / (self.ipc * self.clock_hz)

    def get_config(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        config["macs_per_cycle"] = dict(self.macs_per_cycle)
        config["efficiency"] = dict(self.efficiency)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DeviceProfile":
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return self.get_config()


# --- Derivations (numbers from the sources above) ---------------------------
# IPC, A75/A76 class: Pixel 3a big core (Kryo 360 Gold, Cortex-A75 based,
#   2.0 GHz) runs MobileNetV2 fp32 in 55 ms [XNN] = 110.0 M cycles; our A76
#   count is 120.46 M instructions [EMU] -> IPC 1.095. Used for the A76 (a
#   wider core, so this errs slow).
# IPC, A72: Pixel 2 big core (Kryo 280, Cortex-A73 based, 2.35 GHz), 53 ms
#   [XNN] = 124.6 M cycles; our A72 count 123.35 M [EMU] -> IPC 0.990 (A73 is
#   the nearest core with a published single-thread figure). Cross-check:
#   predicts 83.1 ms single-thread on a 1.5 GHz Pi 4, against 44 ms with 4
#   threads [XNN], i.e. a 1.89x four-thread speed-up.
# IPC, A53: RPi 3+ (1.4 GHz) 79 ms with 4 threads [XNN]; with the Pi 4's
#   1.89x speed-up that is ~149 ms single-thread = 209 M cycles; our A53
#   count 195.89 M [EMU] -> IPC 0.937. The weakest of the three (32-bit build,
#   assumed scaling).
# Efficiency fp32 = lower bound / single-thread time on the reference network:
#   A76: 300.77 M / 7.2307 / 2.0 GHz = 20.80 ms vs 55 ms -> 0.378.
#   A72: 300.77 M / 7.2307 / 1.5 GHz = 27.73 ms vs 83.1 ms -> 0.334.
#   A53: 300.77 M / 2.777 / 1.4 GHz = 77.36 ms vs 149 ms -> 0.519.
# Efficiency int8 = int8 lower bound / instruction estimate of the int8
#   reference network (no published single-thread XNNPACK int8 figure):
#   A76: 300.77 M / 29.0698 / 2.4 GHz = 4.31 ms vs 49.18 M / 1.095 / 2.4 GHz
#        = 18.71 ms -> 0.230 (depthwise convolutions get no dot-product gain).
#   A72: 300.77 M / 7.97 / 1.5 GHz = 25.16 ms vs 113.67 M / 0.990 / 1.5 GHz
#        = 76.55 ms -> 0.329.
#   A53: 300.77 M / 2.25 / 1.4 GHz = 95.48 ms vs 131.93 M / 0.937 / 1.4 GHz
#        = 100.57 ms -> 0.949 (ACL's 2.25 is an A55 proxy, so high).
# Cortex-M7: 1 / 19.838 s = 50.41 ms at 280 MHz = 14.11 M cycles for
#   7.49 M MACs [TINY] -> 0.531 MACs/cycle = 0.265 of the 2.0 peak [M7].

_A76_RATES = {"int8": 29.0698, "fp32": 7.2307}
_A76_EFFICIENCY = {"int8": 0.230, "fp32": 0.378}

PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile(
        name="rpi3", description="Raspberry Pi 3 Model B+ (BCM2837B0)", core="Cortex-A53",
        clock_hz=1.4e9, cores=4, qemu_cpu="cortex-a53", ipc=0.937,
        macs_per_cycle={"int8": 2.25, "fp32": 2.777}, efficiency={"int8": 0.949, "fp32": 0.519},
        notes="clock: Raspberry Pi 3B+ product brief; rates: ACL A53 fp32 / A55 u8 proxy; "
              "IPC and efficiency derived in tfedge/devices.py"),
    DeviceProfile(
        name="rpi4", description="Raspberry Pi 4 Model B (BCM2711), 1.5 GHz (1.8 GHz on "
                                 "boards from late 2022)", core="Cortex-A72",
        clock_hz=1.5e9, cores=4, qemu_cpu="cortex-a72", ipc=0.990,
        macs_per_cycle={"int8": 7.97, "fp32": 7.2307}, efficiency={"int8": 0.329, "fp32": 0.334},
        notes="clock: Raspberry Pi 4 product brief; rates: ACL default (no dot product); "
              "IPC from the Pixel 2 (A73) single-thread figure"),
    DeviceProfile(
        name="rpi5", description="Raspberry Pi 5 (BCM2712)", core="Cortex-A76",
        clock_hz=2.4e9, cores=4, qemu_cpu="cortex-a76", ipc=1.095,
        macs_per_cycle=_A76_RATES, efficiency=_A76_EFFICIENCY,
        notes="clock: Raspberry Pi 5 product brief; rates: ACL default with SDOT; "
              "IPC from the Pixel 3a (A75) single-thread figure"),
    DeviceProfile(
        name="phone", description="mid-range phone big core (e.g. Snapdragon 730/730G "
                                  "Kryo 470 Gold)", core="Cortex-A76",
        clock_hz=2.2e9, cores=2, qemu_cpu="cortex-a76", ipc=1.095,
        macs_per_cycle=_A76_RATES, efficiency=_A76_EFFICIENCY,
        notes="clock and big-core count: Qualcomm Snapdragon 730 specification; "
              "constants as rpi5"),
    DeviceProfile(
        name="cortex-m7", description="Cortex-M7 microcontroller (STM32H7A3 class, 280 MHz)",
        core="Cortex-M7", clock_hz=280e6, cores=1, qemu_cpu=None, ipc=None,
        macs_per_cycle={"int8": 2.0, "fp32": 1.0}, efficiency={"int8": 0.265, "fp32": 0.265},
        notes="rates: Cortex-M7 TRM (SMLAD, VFMA.F32); efficiency from MLPerf Tiny v1.1 "
              "(X-CUBE-AI); fp32 reuses the int8 factor (no published figure). Not aarch64: "
              "no emulated instruction count (use tfedge.micro for TFLM)"),
)}


def get_profile(target: str | DeviceProfile) -> DeviceProfile:
    """The profile named ``target`` (a profile passes through).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if isinstance(target, DeviceProfile):
        return target
    if target in PROFILES:
        return PROFILES[target]
    raise ValueError(f"Unknown device {target!r}; device profiles: {', '.join(PROFILES)}.")
