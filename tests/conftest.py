"""Test set-up: 8 forced CPU devices (so data-parallel code runs for real) and shared helpers."""

import os

# Must be set before JAX initialises its backends.
# XLA's CPU collectives abort the process when one device arrives more than 60 s after the
# others; on a loaded 2-core machine a starved device thread can be that late, so allow more.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_collective_call_terminate_timeout_seconds=1800").strip()
# XLA's CPU client runs every device's share of a multi-device program on a pool of
# max(cores, devices) threads, and a share first waits on its device's limit of 32 queued
# programs. When a device has 32 one-device programs queued behind a running collective (say,
# small ops on a shard of the last step's output) and the next collective program is dispatched,
# seven of its shares can fill the pool waiting in the all-reduce while the eighth holds the last
# thread waiting for its device's queue, which has no thread left to run on: a deadlock, seen
# here under load (tests/test_cpu_collectives.py reproduces it; with 8 threads it hangs, with
# 16 it does not). Twice the devices' threads leaves room for the queue; `PJRT_NPROC` sets it.
os.environ.setdefault("PJRT_NPROC", "16")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session", autouse=True)
def _fast_compiles():
    # Tests check behaviour, not speed: skip most XLA optimisations to compile faster.
    jax.config.update("jax_disable_most_optimizations", True)
    yield


def shared_data(name: str) -> Path:
    """A path under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (see ../shared/data/README.md)")
    return path
