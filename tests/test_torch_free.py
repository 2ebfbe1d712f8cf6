"""The light install: inference without torch. Each test runs Python in a subprocess where `import torch`
(and the other packages of the train extra) raises ImportError, as in `pip install personseg`."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from personseg.segment_cli import write_example_photo

REPO = Path(__file__).resolve().parents[1]

TRAIN_EXTRA_MODULES = {"torch", "torchvision", "albumentations", "skimage", "yaml", "tensorboard", "pycocotools",
                       "onnx", "onnxscript", "scipy", "matplotlib"}


def blocking(modules: set[str]) -> str:
    """Python source of a meta-path finder that refuses `modules`, installed before anything is imported."""
    return textwrap.dedent(f"""\
        import sys
        BLOCKED = {sorted(modules)!r}

        class NoTrainExtra:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"No module named {{name!r}} (blocked by the test)", name=name)
                return None

        sys.meta_path.insert(0, NoTrainExtra())
    """)


NO_TORCH = blocking(TRAIN_EXTRA_MODULES)


def run_without_torch(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


CLI = "import sys\nfrom personseg.cli import main\nsys.exit(main(sys.argv[1:]))\n"
SHIPPED_ONNX = sorted(p.stem for p in (REPO / "personseg" / "weights").glob("*.onnx")
                      if not p.stem.endswith("_refiner"))  # NAME_refiner.onnx: a model's refiner
needs_onnx = pytest.mark.skipif("accurate" not in SHIPPED_ONNX,
                                reason="no personseg/weights/accurate.onnx: run python scripts/ship_onnx.py accurate")


def test_the_blocker_blocks():
    result = run_without_torch("import torch")
    assert result.returncode != 0 and "blocked by the test" in result.stderr


@needs_onnx
def test_load_and_predict_without_torch(tmp_path):
    photo = write_example_photo(tmp_path)  # scikit-image is blocked in the subprocess, not here
    result = run_without_torch("""
        import sys
        import numpy as np
        import personseg
        from personseg.imageio import read_image

        rgb = read_image(sys.argv[1])
        for name in (None, "fast"):
            seg = personseg.load(name)
            alpha = seg.predict(rgb)
            assert alpha.shape == rgb.shape[:2] and alpha.dtype == np.float32, alpha.shape
            mask = seg.predict_mask(rgb)
            assert mask[80:160, 180:260].mean() > 0.9 * 255, "the astronaut's face is not found"
            assert len(seg.predict_batch([rgb, rgb[:300]])) == 2
            assert seg.backend == "onnx"
        assert "torch" not in sys.modules
        print("ok")
    """, str(photo))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


@needs_onnx
def test_segment_cli_without_torch(tmp_path, data_dir):
    photo = next((data_dir / "portraits" / "images").glob("*.jpg"))
    example = write_example_photo(tmp_path / "in")
    result = run_without_torch(CLI, "segment", str(photo), str(example), "-o", str(tmp_path / "out"),
                               "--save", "mask,cutout")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / f"{photo.stem}_mask.png").is_file()
    assert (tmp_path / "out" / "astronaut_cutout.png").is_file()


@needs_onnx
def test_video_cli_without_torch(tmp_path):
    import av

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(6):
            frame = np.full((64, 96, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    result = run_without_torch(CLI, "video", str(clip), "-o", str(tmp_path / "out.mp4"), "--quiet")
    assert result.returncode == 0, result.stderr
    with av.open(str(tmp_path / "out.mp4")) as done:
        assert sum(1 for _ in done.decode(video=0)) == 6


def test_a_command_needing_torch_names_the_extra(tmp_path):
    result = run_without_torch(CLI, "train", "configs/none.yaml", "--out", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "personseg[train]"' in lines[0], result.stderr


def test_a_pt_checkpoint_without_torch_names_the_extra(tiny_checkpoint, tmp_path):
    photo = write_example_photo(tmp_path / "in")
    result = run_without_torch(CLI, "segment", str(photo), "-o", str(tmp_path / "out"), "--model",
                               str(tiny_checkpoint))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "personseg[train]"' in lines[0], result.stderr


def test_help_without_torch():
    result = run_without_torch(CLI, "--help")
    assert result.returncode == 0 and "segment" in result.stdout, result.stderr
