"""One CPU device per core: the count chosen, and that JAX gets it when nothing else decided."""

import os
import subprocess
import sys

import pytest

from common_jax.parallel import cpu_device_count


@pytest.mark.parametrize("batches, cores, expected", [
    ((128,), 2, 2), ((128, 512), 8, 8), ((64,), 6, 4), ((6,), 8, 2), ((7,), 8, 1),
    ((128, 0), 1, 1), ((128, 100), 8, 4),
])
def test_count_is_the_largest_power_of_two_within_the_cores_dividing_every_batch(
        batches, cores, expected):
    assert cpu_device_count(batches, cores) == expected


def run_python(code: str, xla_flags: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


CODE = ("import jax; from common_jax.parallel import use_cpu_cores; "
        "n = use_cpu_cores((128,), cores=4); print(n, jax.device_count())")


def test_devices_follow_the_cores_unless_xla_flags_choose():
    assert run_python(CODE, None) == "4 4"
    assert run_python(CODE, "--xla_force_host_platform_device_count=3") == "1 3"


def test_too_late_once_devices_exist_changes_nothing():
    code = ("import jax; jax.devices(); from common_jax.parallel import use_cpu_cores; "
            "print(use_cpu_cores((128,), cores=4), jax.device_count())")
    assert run_python(code, None) == "1 1"
