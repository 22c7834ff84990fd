"""``tfedge.arm``: LiteRT's own aarch64 build under qemu user-mode emulation.

:func:`prepare` builds (once, cached) an aarch64 sysroot, aarch64 wheels of
LiteRT and NumPy, and a qemu plugin that counts guest instructions;
:func:`run_counted` runs a model under ``qemu-aarch64 -cpu <model>`` and
returns the exact instruction count of each inference and its outputs.
``python -m tfedge.arm`` prepares everything (run it once as root, e.g. in CI).
"""

from tfedge.arm.qemu import CPUS, CountedRun, cpuinfo_text, run_counted
from tfedge.arm.sysroot import (INSTALL_TOOLS, ArmEmulationError, ArmEnvironment, cache_dir,
                                find_tools, prepare)

__all__ = ["prepare", "run_counted", "CountedRun", "ArmEnvironment", "ArmEmulationError",
           "CPUS", "cpuinfo_text", "cache_dir", "find_tools", "INSTALL_TOOLS"]
