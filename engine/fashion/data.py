"""Fashion-MNIST as the book uses it: idx files read with numpy, padded to 32 px, scaled to [-1, 1].

The data set comes from Debian's ``dataset-fashion-mnist`` package, installed at
``/usr/share/datasets/fashion-mnist/``; the environment variable
``EXPLORER_FASHION_ROOT`` names another folder. Only training, evaluation and
tests read it (``load_split``): the app shows the 20 test images shipped in
``assets/fashion/test_examples.npz`` (``example_images``), so it runs without
the package. A script that needs the data set calls ``require_dataset`` first,
which says in one line how to install it.

The idx format (LeCun et al., "MNIST") is a big-endian header followed by raw
uint8 data: magic ``0x00000803`` (images, 3 dimensions) or ``0x00000801``
(labels, 1 dimension), then one uint32 per dimension.

torch is imported inside the functions that make tensors: the Fashion tab lays
out its class and example choices before torch is imported (``engine.imports``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import whole_number_in_range
from engine.fashion.configs import CLASS_NAMES, NULL_CLASS, NUM_CLASSES  # noqa: F401 - their home is configs

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ROOT_VARIABLE = "EXPLORER_FASHION_ROOT"
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}


class DatasetMissing(FileNotFoundError):
    """Fashion-MNIST's idx files are not in the data root; the message says how to install them."""


def data_dir() -> Path:
    """The data root: ``$EXPLORER_FASHION_ROOT``, else Debian's ``/usr/share/datasets/fashion-mnist``."""
    return Path(os.environ.get(ROOT_VARIABLE) or DEFAULT_DIR)


def split_files(split: str, root: Path) -> tuple[Path, Path]:
    """The images and labels files of ``split`` ("train" or "test") under ``root``."""
    if split not in SPLIT_PREFIXES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    prefix = SPLIT_PREFIXES[split]
    return root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"


def missing_message(root: Path) -> str:
    return (f"Fashion-MNIST is not in {root}: install it with `apt-get install dataset-fashion-mnist` "
            f"(Debian), or set {ROOT_VARIABLE} to a folder with its idx files.")


def require_dataset(root: str | os.PathLike | None = None) -> Path:
    """For the command-line scripts that read the data set: its root, or exit with one line saying how to
    install it (no traceback)."""
    root = Path(root) if root is not None else data_dir()
    if not all(f.is_file() for split in SPLIT_PREFIXES for f in split_files(split, root)):
        raise SystemExit(f"error: {missing_message(root)}")
    return root


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one (optionally gzipped) idx file into a uint8 array.

    Returns shape ``(N, 28, 28)`` for image files and ``(N,)`` for label files.
    Raises ValueError on a file that is not idx uint8 data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of uint8 data.")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {array.size} values.")
    return array.reshape(shape)


def load_split(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 in [0, 255] and labels ``(N,)`` uint8 in [0, 9].

    ``split`` is "train" (60,000 images) or "test" (10,000, the ``t10k`` files);
    ``root`` defaults to ``data_dir()``. ``DatasetMissing`` when its files are not there.
    """
    root = Path(root) if root is not None else data_dir()
    image_file, label_file = split_files(split, root)
    if not (image_file.is_file() and label_file.is_file()):
        raise DatasetMissing(missing_message(root))
    images, labels = read_idx(image_file), read_idx(label_file)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split.")
    return images, labels


def to_model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` in [0, 255] -> float ``(N, 1, 32, 32)`` in [-1, 1], padded with 2 px of -1.

    Padding happens after scaling so the border is black (0 in pixel space,
    -1 in model space), as the book's ``Pad(2)`` on a [0, 1] tensor followed by
    ``Normalize(0.5, 0.5)`` gives.
    """
    import torch

    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    x = x.unsqueeze(1) / 127.5 - 1.0
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``x`` ``(N, C, H, W)`` left-right with probability 1/2."""
    import torch

    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> [0, 1], clamped."""
    return (x / 2 + 0.5).clamp(0, 1)


#: The test images the app shows (two per class, in class order), shipped so that it needs no data set:
#: the forward process, the timestep experiment: the first two test images of each class.
EXAMPLES_FILE = Path(__file__).resolve().parents[2] / "assets" / "fashion" / "test_examples.npz"


def example_images() -> tuple[np.ndarray, np.ndarray]:
    """The shipped test images ``(N, 28, 28)`` uint8 and their labels ``(N,)``."""
    with np.load(EXAMPLES_FILE) as f:
        return f["images"], f["labels"]


def example_image(example) -> tuple[torch.Tensor, int]:
    """Shipped test image number ``example``: x0 [1, 1, 32, 32] in [-1, 1], and its label."""
    images, labels = example_images()
    index = whole_number_in_range(example, "The test image (example)", 0, len(images) - 1)
    return to_model_space(images[index: index + 1]), int(labels[index])
