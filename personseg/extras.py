"""The `train` extra that the light install (`pip install personseg`) leaves out, and the error that
names it. Plain constants, no imports: the library (predict.py) and the command line (cli.py) share them."""

TRAIN_EXTRA = 'pip install "personseg[train]"'

# top-level packages of the train extra (pyproject.toml); a command importing one that is missing names the extra
TRAIN_PACKAGES = {"torch", "torchvision", "albumentations", "tensorboard", "pycocotools", "yaml", "skimage",
                  "onnx", "onnxscript", "scipy", "matplotlib"}


class MissingExtraError(ImportError):
    """Something that needs a package of the `train` extra (torch for .pt checkpoints) without it."""
