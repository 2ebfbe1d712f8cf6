"""benchmarks/peers.py: its help and its errors work without MediaPipe, and where the MediaPipe venv has
been made (benchmarks/peers.py --setup) the worker answers the protocol."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "benchmarks" / "peers.py"


def run_peers(*args):
    return subprocess.run([sys.executable, str(PEERS), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_peers_help_runs_without_mediapipe_and_says_how_to_set_it_up():
    assert subprocess.run([sys.executable, "-c", "import mediapipe"], capture_output=True).returncode != 0, \
        "mediapipe is importable in the project's venv: this test must show --help works without it"
    done = run_peers("--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "--setup" in text and "mediapipe==0.10.21" in text and "numpy<2" in text
    assert "benchmarks/.venv-mediapipe" in text


def test_peers_without_the_venv_fails_in_one_line_that_names_setup(tmp_path):
    done = run_peers("--venv", str(tmp_path / "none"), "--models", "mediapipe0", "--limit", "1")
    assert done.returncode == 2
    assert "no MediaPipe venv" in done.stderr and "--setup" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture()
def peers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not module.venv_python(module.VENV).exists():
        pytest.skip(f"no MediaPipe venv at {module.VENV} (python benchmarks/peers.py --setup makes it)")
    return module


def test_mediapipe_worker_returns_a_probability_map_at_the_photo_size(peers):
    from skimage import data

    model = peers.MediaPipe(0, threads=1)
    try:
        for rgb in (data.astronaut(), data.chelsea()[:301, :457]):  # odd sizes go through unchanged
            alpha = model.predict(rgb)
            assert alpha.shape == rgb.shape[:2] and alpha.dtype == np.float32
            assert 0.0 <= alpha.min() and alpha.max() <= 1.0
        assert len(model.ms) == 2 and all(ms > 0 for ms in model.ms)
        person = model.predict(data.astronaut()) >= 0.5
        assert person[80:160, 180:260].mean() > 0.9  # the astronaut's face (as in test_shipped_models)
    finally:
        model.close()
    assert model.proc.returncode == 0


def test_matting_clips_apply_the_temporal_filter_before_or_after_upsampling():
    """benchmarks/matting.py section 5: every frame comes back in order (the median's one-frame delay
    flushed at the end), and the filter runs on the low-resolution probability (before) or on the alpha
    (after)."""
    import importlib.util

    from personseg.video import TemporalMedian

    pytest.importorskip("torch")  # the benchmark draws its clips with refiner_train (training code)

    spec = importlib.util.spec_from_file_location("matting_benchmark", REPO / "benchmarks" / "matting.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class Stub:
        threshold, refiner = 0.5, None

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 12, 16, 3), dtype=np.uint8)
    probs = [rng.random((3, 4)).astype(np.float32) for _ in images]
    up = [bench.upsample(Stub, "bilinear", im, p) for im, p in zip(images, probs)]
    off, _ = bench.temporal_run(Stub, "bilinear", "median", "off", images, probs)
    np.testing.assert_array_equal(off, np.stack(up))
    for order, inputs in (("before", probs), ("after", up)):
        median = TemporalMedian(threshold=0.5)
        expected = [x for f, p in zip(range(5), inputs) for _, x in median.push(_frame(f, images[f]), p)]
        expected += [x for _, x in median.flush()]
        if order == "before":
            expected = [bench.upsample(Stub, "bilinear", im, p) for im, p in zip(images, expected)]
        alphas, seconds = bench.temporal_run(Stub, "bilinear", "median", order, images, probs)
        np.testing.assert_array_equal(alphas, np.stack(expected))
        assert seconds > 0
    assert not np.array_equal(bench.temporal_run(Stub, "bilinear", "median", "before", images, probs)[0], off)


def _frame(index, rgb):
    from fractions import Fraction

    from personseg.video import Frame

    return Frame(index, rgb, index, Fraction(1, 30))
