"""LiteRT's aarch64 build under qemu: exact instruction counts and bit-exact outputs.

The emulated tests need qemu-aarch64 and a C compiler (``apt-get install -y
qemu-user gcc``) and a prepared sysroot (``python -m tfedge.arm`` as root; the
session fixture prepares it when run as root). Outside CI they are skipped
with the reason when the machine cannot emulate; in CI (``CI`` set) they fail.
"""

import os
import tempfile

import pytest

from tfedge import _bench, arm, bench, devices
from tfedge.arm import sysroot


@pytest.fixture(scope="session")
def arm_env():
    try:
        return arm.prepare()
    except arm.ArmEmulationError as err:
        if os.environ.get("CI"):
            pytest.fail(f"ARM emulation must run in CI: {err}")
        pytest.skip(f"ARM emulation unavailable here: {err}")


@pytest.fixture(scope="session")
def emulated(arm_env, digits_int8):
    """One bench of the digits int8 model on cortex-a72 (also as rpi4) and max."""
    return bench(digits_int8, target=["cortex-a72", "rpi4", "max"], runs=5, warmup=1,
                 emulation_runs=2)


@pytest.mark.slow
def test_a72_outputs_equal_the_host_bit_for_bit(emulated):
    a72 = emulated.target("cortex-a72")
    assert a72.outputs_match is True
    assert (a72.mismatched_elements, a72.max_abs_diff) == (0, 0.0)
    assert a72.delegated_nodes == emulated.host.delegated_nodes > 0


@pytest.mark.slow
def test_a72_count_is_identical_across_runs(emulated, digits_int8, arm_env):
    a72 = emulated.target("cortex-a72")
    assert len(a72.instruction_counts) == 2 and a72.deterministic
    assert a72.instructions > 1000
    # A second emulated process on the same inputs counts the same.
    arrays = _bench.make_inputs(digits_int8)
    with tempfile.TemporaryDirectory() as workdir:
        model_path = digits_int8.save(os.path.join(workdir, "m.tflite"))
        inputs = _bench._write_inputs(arrays, workdir)
        again = arm.run_counted(model_path, inputs, "cortex-a72", workdir, runs=1, env=arm_env)
    assert again.instructions == [a72.instructions]


@pytest.mark.slow
def test_a72_count_differs_from_max_for_int8(emulated):
    a72, cpu_max = emulated.target("cortex-a72"), emulated.target("max")
    assert cpu_max.deterministic
    assert cpu_max.instructions != a72.instructions


@pytest.mark.slow
def test_device_profile_estimates_from_the_count(emulated):
    a72, rpi4 = emulated.target("cortex-a72"), emulated.target("rpi4")
    profile = devices.PROFILES["rpi4"]
    assert rpi4.qemu_cpu == "cortex-a72" and rpi4.instructions == a72.instructions
    assert rpi4.instruction_estimate_ms == pytest.approx(
        1e3 * a72.instructions / (profile.ipc * profile.clock_hz))
    assert 0 < rpi4.lower_bound_ms < rpi4.mac_estimate_ms
    assert a72.instruction_estimate_ms is None  # a bare CPU model has no clock or IPC
    assert "cortex-a72" in str(emulated)


def test_cpuinfo_is_the_emulated_cores():
    text = arm.cpuinfo_text("cortex-a72", processors=2)
    assert text.count("processor\t:") == 2
    assert "CPU part\t: 0xd08" in text and "CPU implementer\t: 0x41" in text
    assert "asimddp" in arm.cpuinfo_text("cortex-a76") and "asimddp" not in text
    with pytest.raises(ValueError, match="cortex-a53"):
        arm.cpuinfo_text("pentium")


def test_missing_tools_name_the_apt_command(monkeypatch):
    monkeypatch.setattr(sysroot.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(arm.ArmEmulationError, match="apt-get install -y qemu-user gcc"):
        arm.prepare()


def test_unprepared_sysroot_needs_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TFEDGE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sysroot, "find_tools", lambda: ("/usr/bin/qemu-aarch64", "/usr/bin/cc"))
    monkeypatch.setattr(sysroot, "qemu_version", lambda qemu: "qemu-aarch64 version 7.2")
    monkeypatch.setattr(sysroot.os, "geteuid", lambda: 1000)
    with pytest.raises(arm.ArmEmulationError, match="needs root.*python -m tfedge.arm"):
        arm.prepare()
    assert str(tmp_path) in arm.cache_dir()
