"""`make bench-gpu` where there is no GPU: a clear refusal, and every step run on the CPU with --cpu."""

import subprocess
import sys

import pytest

from benchmarks import gpu

pytestmark = pytest.mark.skipif(gpu.gpu() is not None, reason="a GPU is here: `make bench-gpu` measures it")


def test_without_a_gpu_it_stops_at_once_and_says_what_to_do():
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no NVIDIA GPU" in done.stderr and "--cpu" in done.stderr and "Traceback" not in done.stderr
