"""tfedge.bench without running a model: clear input errors, device profiles, output comparison."""


import numpy as np
import pytest

from tfedge import _bench, bench, devices
from tfedge.errors import InvalidModelFileError


def test_missing_path_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such model file"):
        bench(str(tmp_path / "nope.tflite"))


def test_non_tflite_file_gives_clear_error(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"this is a text file, not a flatbuffer")
    with pytest.raises(InvalidModelFileError, match="Not a TFLite model"):
        bench(str(path))
    with pytest.raises(InvalidModelFileError, match="folder"):
        bench(str(tmp_path))


def test_device_profiles_round_trip_and_cite_sources():
    for profile in devices.PROFILES.values():
        assert devices.DeviceProfile.from_config(profile.get_config()) == profile
        assert profile.notes and profile.clock_hz > 0 and profile.cores >= 1
        assert set(profile.macs_per_cycle) == set(profile.efficiency) == {"int8", "fp32"}
    with pytest.raises(ValueError, match="rpi3"):
        devices.get_profile("rpi9")


def test_output_mismatch_is_counted(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.array([[1, 2, 3]], np.int8))
    np.save(b, np.array([[1, 2, 5]], np.int8))
    assert _bench._compare_outputs([str(a)], [str(b)]) == (False, 1, 2.0)
    assert _bench._compare_outputs([str(a)], [str(a)]) == (True, 0, 0.0)
