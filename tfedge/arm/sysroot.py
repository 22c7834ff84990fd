"""Prepares, once, everything needed to run LiteRT's aarch64 build under qemu.

Three cached pieces under :func:`cache_dir` (``$TFEDGE_CACHE_DIR`` or
``~/.cache/tfedge``), each built into a temporary folder and renamed into
place only when complete, under a file lock (safe with parallel processes):

1. **sysroot**: an aarch64 Python 3.11 made of Debian's arm64 packages,
   fetched with ``apt-get download`` and unpacked with ``dpkg -x`` (no chroot,
   nothing installed on the host). Needs root the first time, for
   ``dpkg --add-architecture arm64`` and ``apt-get update``.
2. **site**: aarch64 wheels of ``ai-edge-litert`` and ``numpy`` at the host's
   versions, fetched with ``pip download --platform ...`` and unzipped.
3. **plugin**: :file:`insn_counter.c` compiled with the system C compiler
   into a qemu TCG plugin.

The recipe and its pitfalls are written up in the project's shared notes
(ARM_EMULATION.md); the plugin targets qemu 7.2's plugin API (Debian bookworm).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Iterator

from absl import logging

from tfedge.errors import TFEdgeError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PLUGIN_SOURCE = os.path.join(PACKAGE_DIR, "insn_counter.c")
RUNNER_SCRIPT = os.path.join(PACKAGE_DIR, "runner.py")

GUEST_PYTHON = "3.11"
# Debian bookworm arm64 packages that make a working python3.11 with the
# shared libraries NumPy and LiteRT load (verified in ARM_EMULATION.md).
SYSROOT_PACKAGES = (
    "libc6", "libgcc-s1", "libstdc++6", "python3.11-minimal", "libpython3.11-minimal",
    "libpython3.11-stdlib", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0",
    "liblzma5", "libcrypt1", "libuuid1", "libncursesw6", "libtinfo6", "libreadline8",
    "libsqlite3-0", "libtirpc3", "libnsl2", "libdb5.3",
)
WHEEL_PLATFORMS = ("manylinux_2_17_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")
WHEEL_PACKAGES = ("ai-edge-litert", "numpy")

INSTALL_TOOLS = "apt-get update && apt-get install -y qemu-user gcc"


class ArmEmulationError(TFEdgeError, RuntimeError):
    """ARM emulation cannot run here: a missing tool, sysroot or a failed run."""


@dataclasses.dataclass(frozen=True)
class ArmEnvironment:
    """Paths of a prepared emulation set-up.

    Attributes:
        qemu: the ``qemu-aarch64`` executable (dynamic build: loads plugins).
        qemu_version: its version line.
        sysroot: the aarch64 root given to qemu as ``-L`` (via a per-CPU view).
        python: the guest Python inside ``sysroot``.
        site: folder of the aarch64 wheels, the guest's ``PYTHONPATH``.
        plugin: the compiled instruction-counting plugin.
        runner: the script the guest runs.
        cache: the cache folder everything lives in.
    """

    qemu: str
    qemu_version: str
    sysroot: str
    python: str
    site: str
    plugin: str
    runner: str
    cache: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def cache_dir() -> str:
    """``$TFEDGE_CACHE_DIR``, else ``~/.cache/tfedge``."""
    return os.path.abspath(os.path.expanduser(
        os.environ.get("TFEDGE_CACHE_DIR") or os.path.join("~", ".cache", "tfedge")))


def _arm_dir() -> str:
    return os.path.join(cache_dir(), "arm")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, fix: str, **kwargs) -> str:
    """Runs a set-up command unattended; raises ArmEmulationError with its output."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, **kwargs)
    except OSError as err:
        raise ArmEmulationError(f"Could not {what}: {err}. {fix}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise ArmEmulationError(f"Could not {what} (`{' '.join(cmd)}` exited with "
                                f"{proc.returncode}):\n{tail}\n{fix}")
    return proc.stdout


def find_tools() -> tuple[str, str]:
    """Paths of ``qemu-aarch64`` and the C compiler, or a clear error.

    Raises:
        ArmEmulationError: naming the exact command that installs what is missing.
    """
    qemu = shutil.which("qemu-aarch64")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    missing = [name for name, path in (("qemu-aarch64", qemu), ("a C compiler", compiler))
               if not path]
    if missing:
        raise ArmEmulationError(
            f"ARM emulation needs {' and '.join(missing)}, not found on PATH. Install them "
            f"with (as root): `{INSTALL_TOOLS}`. (qemu-user-static alone is not enough: "
            "only the dynamic qemu-aarch64 loads the instruction-counting plugin.)")
    return qemu, compiler


def qemu_version(qemu: str) -> str:
    out = _run([qemu, "--version"], "run qemu-aarch64", f"Reinstall it: `{INSTALL_TOOLS}`.")
    return out.splitlines()[0].strip() if out else "unknown"


# ----------------------------------------------------------------------------
# 1. The aarch64 sysroot
# ----------------------------------------------------------------------------
def _sysroot_path() -> str:
    key = hashlib.sha256(" ".join(SYSROOT_PACKAGES).encode()).hexdigest()[:10]
    return os.path.join(_arm_dir(), f"sysroot-py{GUEST_PYTHON}-{key}")


def _guest_python(sysroot: str) -> str:
    return os.path.join(sysroot, "usr", "bin", f"python{GUEST_PYTHON}")


def _not_root_message(sysroot: str) -> str:
    return (f"The aarch64 sysroot is not prepared yet ({sysroot} is missing) and preparing "
            "it needs root once (`dpkg --add-architecture arm64` and `apt-get update`). Run "
            f"as root: `TFEDGE_CACHE_DIR={cache_dir()} python -m tfedge.arm`, then run this "
            "again as yourself; or set TFEDGE_CACHE_DIR to a cache another user prepared.")


def _prepare_sysroot() -> str:
    sysroot = _sysroot_path()
    if os.path.exists(os.path.join(sysroot, ".complete")):
        return sysroot
    if os.geteuid() != 0:
        raise ArmEmulationError(_not_root_message(sysroot))
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise ArmEmulationError("Preparing the aarch64 sysroot uses Debian's apt-get and dpkg, "
                                "which this machine does not have (Debian or Ubuntu needed).")
    start = time.time()
    fix = ("The sysroot recipe downloads Debian bookworm arm64 packages: check that "
           "apt-get can reach its Debian mirror.")
    foreign = _run(["dpkg", "--print-foreign-architectures"], "list dpkg architectures", fix)
    updated = False
    if "arm64" not in foreign.split():
        logging.info("tfedge.arm: adding the arm64 architecture to dpkg")
        _run(["dpkg", "--add-architecture", "arm64"], "add the arm64 architecture", fix)
        _run(["apt-get", "update"], "run apt-get update", fix)
        updated = True
    debs = tempfile.mkdtemp(prefix="debs-", dir=_arm_dir())
    try:
        cmd = ["apt-get", "download"] + [f"{p}:arm64" for p in SYSROOT_PACKAGES]
        try:
            _run(cmd, "download the arm64 packages", fix, cwd=debs)
        except ArmEmulationError:
            if updated:
                raise
            _run(["apt-get", "update"], "run apt-get update", fix)
            _run(cmd, "download the arm64 packages", fix, cwd=debs)
        staging = tempfile.mkdtemp(prefix="sysroot-", dir=_arm_dir())
        try:
            for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
                _run(["dpkg", "-x", deb, staging], f"unpack {os.path.basename(deb)}", fix)
            if not os.path.exists(_guest_python(staging)):
                raise ArmEmulationError(f"The arm64 packages contain no python{GUEST_PYTHON}: "
                                        "this recipe needs Debian bookworm's package set.")
            _compile_python(os.path.join(staging, "usr", "lib", f"python{GUEST_PYTHON}"))
            with open(os.path.join(staging, ".complete"), "w") as f:
                f.write(" ".join(SYSROOT_PACKAGES) + "\n")
            os.chmod(staging, 0o755)
            os.rename(staging, sysroot)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(debs, ignore_errors=True)
    logging.info("tfedge.arm: aarch64 sysroot ready in %.0f s: %s", time.time() - start, sysroot)
    return sysroot


def _compile_python(folder: str) -> None:
    """Byte-compiles a tree with the host Python, so the guest does not.

    Debian's packages ship no ``.pyc`` files (its install scripts make them);
    compiling under emulation would add seconds to every guest start. The
    ``.pyc`` format does not depend on the CPU, only on the Python version.
    """
    if sys.version_info[:2] != tuple(int(v) for v in GUEST_PYTHON.split(".")):
        logging.info("tfedge.arm: host Python is not %s; the guest compiles its own .pyc",
                     GUEST_PYTHON)
        return
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", folder],
                   stdin=subprocess.DEVNULL, capture_output=True, check=False)


# ----------------------------------------------------------------------------
# 2. aarch64 wheels of LiteRT and NumPy
# ----------------------------------------------------------------------------
def _host_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ArmEmulationError(f"{dist} is not installed on the host; `pip install {dist}`.") \
            from None


def _prepare_site() -> str:
    pins = [f"{dist}=={_host_version(dist)}" for dist in WHEEL_PACKAGES]
    name = "site-" + "-".join(p.replace("==", "") for p in pins) + f"-cp{GUEST_PYTHON}"
    site = os.path.join(_arm_dir(), name.replace(".", "_"))
    if os.path.exists(os.path.join(site, ".complete")):
        return site
    start = time.time()
    wheels = tempfile.mkdtemp(prefix="wheels-", dir=_arm_dir())
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", GUEST_PYTHON, "--implementation", "cp", "--dest", wheels]
        for platform in WHEEL_PLATFORMS:
            cmd += ["--platform", platform]
        _run(cmd + pins, "download the aarch64 wheels",
             f"Check that pip can reach PyPI and that {', '.join(pins)} publish "
             "manylinux aarch64 wheels for CPython " + GUEST_PYTHON + ".")
        staging = tempfile.mkdtemp(prefix="site-", dir=_arm_dir())
        try:
            for wheel in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(staging)
            os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from other users
            _compile_python(staging)
            with open(os.path.join(staging, ".complete"), "w") as f:
                f.write(" ".join(pins) + "\n")
            os.rename(staging, site)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
    logging.info("tfedge.arm: aarch64 wheels ready in %.0f s: %s", time.time() - start, site)
    return site


# ----------------------------------------------------------------------------
# 3. The instruction-counting plugin
# ----------------------------------------------------------------------------
def _prepare_plugin(compiler: str, version: str) -> str:
    with open(PLUGIN_SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + version.encode()).hexdigest()[:12]
    plugin = os.path.join(_arm_dir(), f"insn_counter-{key}.so")
    if os.path.exists(plugin):
        return plugin
    staging = plugin + f".{os.getpid()}.tmp"
    _run([compiler, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", staging,
          PLUGIN_SOURCE], "compile the qemu instruction-counting plugin",
         f"Check the C compiler ({compiler}); reinstall with `{INSTALL_TOOLS}`.")
    os.rename(staging, plugin)
    return plugin


def prepare() -> ArmEnvironment:
    """Prepares (first call) or finds (later calls) the ARM emulation set-up.

    The first call on a fresh machine downloads about 12 MB of Debian arm64
    packages and 30 MB of wheels and must run as root; later calls only
    check the cache and return at once.

    Returns:
        An :class:`ArmEnvironment`.

    Raises:
        ArmEmulationError: qemu or a C compiler is missing (the message gives
            the apt-get command), the sysroot is not prepared and this is not
            root, or a download failed.

    Example:

    >>> env = tfedge.arm.prepare()  # doctest: +SKIP
    >>> env.qemu_version  # doctest: +SKIP
    'qemu-aarch64 version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)'
    """
    qemu, compiler = find_tools()
    version = qemu_version(qemu)
    os.makedirs(_arm_dir(), exist_ok=True)
    with _locked(os.path.join(_arm_dir(), ".lock")):
        sysroot = _prepare_sysroot()
        site = _prepare_site()
        plugin = _prepare_plugin(compiler, version)
    return ArmEnvironment(qemu=qemu, qemu_version=version, sysroot=sysroot,
                          python=_guest_python(sysroot), site=site, plugin=plugin,
                          runner=RUNNER_SCRIPT, cache=cache_dir())
