"""scripts/soup.py: the weighted mean of checkpoints' float tensors."""
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from personseg.checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from personseg.models import create_model  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soup.py"
KWARGS = {"alpha": 0.35}


def _checkpoint(path: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    model = create_model("unet_mobilenet_v2", **KWARGS)
    for m in model.modules():  # running statistics differ too: they are averaged like the weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_()
    save_checkpoint(path, model, arch="unet_mobilenet_v2", model_kwargs=KWARGS)
    return read_checkpoint(path)["state_dict"]


def test_soup_is_the_weighted_mean_and_never_overwrites(tmp_path):
    a, b = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    out = tmp_path / "soup.pt"
    run = lambda: subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a.pt"), str(tmp_path / "b.pt"),  # noqa: E731
                                  "--weights", "3", "1", "--out", str(out)], capture_output=True, text=True)
    assert run().returncode == 0
    soup = read_checkpoint(out)["state_dict"]
    for k, v in soup.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * a[k] + 0.25 * b[k])
        else:
            assert torch.equal(v, a[k])
    again = run()
    assert again.returncode != 0 and "exists" in again.stderr
