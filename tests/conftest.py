"""Shared fixtures. Real data comes from $PERSONSEG_DATA (CI: ../shared/data); tests that need it skip
with a reason when it is absent, as in a user's clone."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("PERSONSEG_DATA")
    if not value:
        pytest.skip("PERSONSEG_DATA is not set: point it at the shared data folder (CI uses ../shared/data)")
    path = Path(value)
    if not path.is_absolute():
        path = (REPO / path).resolve() if (REPO / path).exists() else path.resolve()
    if not path.is_dir():
        pytest.skip(f"PERSONSEG_DATA={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def pretrained_dir(data_dir) -> Path:
    path = data_dir.parent / "pretrained"
    if not path.is_dir():
        pytest.skip(f"no pretrained weights folder beside the data ({path})")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small UNet-MobileNetV2 checkpoint with random weights, for plumbing tests (CLI, I/O)."""
    import torch

    from personseg.checkpoint import save_checkpoint
    from personseg.models import create_model

    torch.manual_seed(0)
    kwargs = {"alpha": 0.35}
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, create_model("unet_mobilenet_v2", **kwargs), arch="unet_mobilenet_v2",
                    model_kwargs=kwargs, input_size=(160, 96))
    return path


@pytest.fixture()
def one_thread():
    """One torch thread: on a busy 2-core machine two OpenMP threads spin-wait on each other (20x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
