"""XLA's CPU client must not deadlock when one-device programs queue up behind a collective.

The pattern: a data-parallel step (an all-reduce over the 8 forced devices), then a few dozen
small programs on device 0 that read its output, then the next step, with the CPU busy. With
XLA's default pool (as many threads as devices here) this hangs in the all-reduce; the suite
sets `PJRT_NPROC` (tests/conftest.py) so that it cannot. Slow (about a minute) and run with
`make test-slow`.
"""

import os
import subprocess
import sys
import textwrap

import pytest

PATTERN = textwrap.dedent("""
    import jax, jax.numpy as jnp
    step = jax.pmap(lambda w: jax.lax.pmean(jnp.tanh(w @ w.T / 300.0) @ w, "i"), axis_name="i")
    small = jax.jit(lambda a: a + 1.0)
    w = jnp.ones((8, 300, 300)) * 0.01
    for _ in range(400):
        w = step(w)
        acc = w[0, 0, 0]
        for _ in range(32):  # fills device 0's queue of 32 programs behind the step
            acc = small(acc)
    print("finished", float(acc))
""")


def run_pattern(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess | None:
    """Runs PATTERN beside two busy processes (the load that exposes the hang); None if it
    did not finish within `timeout` seconds."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        return subprocess.run([sys.executable, "-c", PATTERN], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


@pytest.mark.slow
def test_small_programs_behind_a_collective_do_not_deadlock():
    assert int(os.environ["PJRT_NPROC"]) >= 16  # conftest sets it; the child inherits it
    result = run_pattern(dict(os.environ), timeout=240)
    assert result is not None, "the collective deadlocked (no progress in 240 s)"
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished" in result.stdout
