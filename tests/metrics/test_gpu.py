"""NVML telemetry: the import guard (real: no pynvml here) and the mapping, against a stand-in module.

The stand-in implements the few NVML calls rllmtop makes, with their documented signatures and units
(memory in bytes, power in milliwatts); no real GPU is on these machines.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from rllmtop.metrics.gpu import GpuUnavailable, NvmlGpus


def test_without_pynvml_opening_says_what_to_install() -> None:
    with pytest.raises(GpuUnavailable) as e:
        NvmlGpus.open(module="rllmtop_no_such_nvml_module")
    assert "nvidia-ml-py" in str(e.value)


class NVMLError(Exception):
    pass


@pytest.fixture
def fake_nvml() -> Iterator[types.ModuleType]:
    m = types.ModuleType("fake_pynvml")
    m.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    m.NVML_CLOCK_SM = 1  # type: ignore[attr-defined]
    m.state = {"init": 0, "shutdown": 0, "count": 2, "fail_init": False}  # type: ignore[attr-defined]

    def init() -> None:
        if m.state["fail_init"]:  # type: ignore[attr-defined]
            raise NVMLError("Driver Not Loaded")
        m.state["init"] += 1  # type: ignore[attr-defined]

    def power(h: int) -> int:
        if h == 1:
            raise NVMLError("Not Supported")
        return 612_347  # milliwatts

    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: m.state.__setitem__("shutdown", m.state["shutdown"] + 1)  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: m.state["count"]  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=[97, 0][h], memory=40)  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(  # type: ignore[attr-defined]
        total=80 * 2**30, used=[76483, 0][h] * 2**20, free=[4521, 81004][h] * 2**20
    )
    m.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    m.nvmlDeviceGetTemperature = lambda h, kind: [61, 2**31][h]  # type: ignore[attr-defined]
    m.nvmlDeviceGetClockInfo = lambda h, kind: [1980, 345][h]  # type: ignore[attr-defined]
    sys.modules["fake_pynvml"] = m
    yield m
    del sys.modules["fake_pynvml"]


def test_nvml_values_map_to_the_dcgm_neutral_names_and_units(fake_nvml: types.ModuleType) -> None:
    gpus = NvmlGpus.open(module="fake_pynvml")
    got = {(s.name, s.labels): s.value for s in gpus.read(2.0)}
    g0, g1 = (("gpu", "0"),), (("gpu", "1"),)
    assert got[("gpu_util_percent", g0)] == 97.0 and got[("gpu_util_percent", g1)] == 0.0
    assert got[("gpu_fb_used_mib", g0)] == 76483.0 and got[("gpu_fb_free_mib", g1)] == 81004.0
    assert got[("gpu_power_watts", g0)] == pytest.approx(612.347)
    assert ("gpu_power_watts", g1) not in got  # Not Supported: missing, never 0
    assert got[("gpu_temp_celsius", g0)] == 61.0
    assert ("gpu_temp_celsius", g1) not in got  # out of range: dropped
    assert got[("gpu_sm_clock_mhz", g1)] == 345.0
    gpus.close()
    assert fake_nvml.state["shutdown"] == 1  # type: ignore[attr-defined]


def test_nvml_errors_are_one_line_gpu_unavailable(fake_nvml: types.ModuleType) -> None:
    with pytest.raises(GpuUnavailable, match="no GPU 5 on this host"):
        NvmlGpus.open([5], module="fake_pynvml")
    fake_nvml.state["fail_init"] = True  # type: ignore[attr-defined]
    with pytest.raises(GpuUnavailable, match="Driver Not Loaded"):
        NvmlGpus.open(module="fake_pynvml")
