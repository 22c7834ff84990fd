"""Quiet by default: TensorFlow's C++ start-up lines are held to TF_CPP_MIN_LOG_LEVEL.

TensorFlow 2.21 prints them through Abseil logging, which ignores the
variable; tfedge._quiet filters them at import. Each subprocess imports
TensorFlow afresh (about 8 s).
"""

import os
import subprocess
import sys

import pytest

from tfedge import _quiet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stderr(args, level=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def _hidden_records(stderr):
    """The messages of the Abseil records in ``stderr`` that level 2 hides.

    Which lines TensorFlow prints depends on the machine: "oneDNN custom
    operations are on" only on CPUs with AVX-512 / AMX, "Could not find cuda
    drivers" on every machine without CUDA, so the test reads them off a plain
    ``import tensorflow`` instead of naming one.
    """
    return {line.split("] ", 1)[1] for line in stderr.splitlines()
            if _quiet._RECORD.match(line) and "] " in line and not _quiet.keep_line(line, 2)}


def _shows(stderr, records):
    return any(record in stderr for record in records)


def test_abseil_records_below_the_level_are_dropped_and_the_rest_kept():
    info = "I0000 00:00:1796240400.374614   15097 port.cc:153] oneDNN custom operations are on."
    error = "E0000 00:00:1796240407.304743   15097 cuda_platform.cc:52] failed call to cuInit"
    assert not _quiet.keep_line(info, 2) and not _quiet.keep_line(_quiet._BANNER + "\n", 1)
    warning = "W0000 00:00:1796240407.304743   15097 x.cc:1] something"
    assert not _quiet.keep_line(error, 1)  # no NVIDIA driver: start-up noise on a CPU machine
    assert _quiet.keep_line(warning, 1) and not _quiet.keep_line(warning, 2)
    assert _quiet.keep_line("UserWarning: something Python said", 3)
    assert _quiet.keep_line(info, 0)


@pytest.mark.slow
def test_recipes_and_cli_start_quiet_and_verbose_brings_the_lines_back():
    # without tfedge's help TF_CPP_MIN_LOG_LEVEL=2 does not hide them (the test can fail)
    records = _hidden_records(_stderr(["-c", "import tensorflow"], level="2"))
    assert records, "TensorFlow printed no start-up record below WARNING to test against"
    assert not _shows(_stderr(["-m", "recipes.classifier", "--help"]), records)
    assert _shows(_stderr(["-m", "recipes.classifier", "--verbose", "1", "--help"]), records)
    # the tfedge command: TensorFlow's first import, whenever a subcommand makes it
    cli = "from tfedge.cli import main; main({}); import tensorflow"
    assert not _shows(_stderr(["-c", cli.format("['inspect', '/no/such.tflite']")]), records)
    assert _shows(_stderr(["-c", cli.format("['--verbose', 'inspect', '/no/such']")]), records)
