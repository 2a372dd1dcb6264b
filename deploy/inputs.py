"""What predict.py classifies: image files, directories of them, IDX files and .npy arrays, as uint8 28x28.

The exported model expects what Fashion-MNIST is made of, so every input is turned into that first, and all
of it is decoded and checked before any image is classified: bad files are refused in one line that names
them (up to MAX_LISTED of them, and the count of the rest), each with its reason.

    PNG / JPEG (any file Pillow reads)   one image, converted by the rule below
    a directory                          its .png/.jpg/.jpeg files, sorted by name (not its subdirectories)
    *-images-idx3-ubyte[.gz]             the Fashion-MNIST image files: (N, 28, 28) uint8, used as they are
    *.npy                                uint8 arrays of shape (N, 28, 28) or (28, 28), used as they are

The conversion rule (Fashion-MNIST's own pipeline, so a photo looks like a training image):
  1. open with Pillow and apply the EXIF orientation;
  2. convert to grey ("L"; a 16-bit grey image keeps its top 8 bits); an image with alpha is first composited
     onto the background: black, or white with --invert;
  3. with --invert, negate (255 - x): Fashion-MNIST is a light object on a dark background, product photos
     are usually dark on light;
  4. an image that is now 28x28 is used as it is, so Fashion-MNIST's own images round-trip exactly;
  5. otherwise trim the borders whose pixels are all within 5% of 255 of the corner colour (the median of the
     four corner pixels), resize so the longer side is 28 (aspect ratio kept, Pillow LANCZOS) and centre it
     on a 28x28 canvas of 0, the dark background. A blank image (nothing left after trimming) is resized
     whole.

No torch here: predict.py's onnxruntime path must start without it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from distributed.data import DataError, read_idx

SIZE = 28
TRIM_TOLERANCE = 0.05 * 255  # a pixel this close to the corner colour counts as border
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what a directory is searched for
IDX_NAME = re.compile(r"-idx\d-ubyte(\.gz)?$")
MAX_LISTED = 3  # bad files named in the one-line refusal; the others are counted

Progress = Callable[[int, int], None]  # (done, total)


class InputError(ValueError):
    """An input that is missing, unreadable, undecodable or of the wrong shape (one line, naming the file)."""


@dataclass(frozen=True)
class Inputs:
    names: list[str]    # one per image: the file path, or FILE[i] for the i-th image of an array or IDX file
    images: np.ndarray  # (N, 28, 28) uint8, a light object on a dark background
    notes: list[str]    # what was found, for the user ("photos: 12 images")


def to_fashion_mnist(img: Image.Image, invert: bool = False) -> np.ndarray:
    """One decoded image as a (28, 28) uint8 array, by the rule in the module docstring."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):  # 16-bit grey PNG: convert("L") would clip, not scale
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
    if img.has_transparency_data:
        background = Image.new("RGBA", img.size, (255, 255, 255, 255) if invert else (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    a = np.asarray(img.convert("L"))
    if invert:
        a = 255 - a
    if a.shape == (SIZE, SIZE):
        return a.copy()

    corner = np.median([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]])
    content = np.abs(a.astype(np.float32) - corner) > TRIM_TOLERANCE
    rows, cols = np.flatnonzero(content.any(1)), np.flatnonzero(content.any(0))
    if rows.size:  # else blank: resized whole
        a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = a.shape
    longest = max(h, w)
    size = (max(1, round(w * SIZE / longest)), max(1, round(h * SIZE / longest)))
    fitted = Image.fromarray(a).resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (SIZE, SIZE), 0)
    canvas.paste(fitted, ((SIZE - size[0]) // 2, (SIZE - size[1]) // 2))
    return np.asarray(canvas).copy()


def read_image(path: Path, invert: bool = False) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return to_fashion_mnist(img, invert)
    except UnidentifiedImageError:
        raise InputError(f"{path}: cannot decode it as an image (not a format Pillow reads; expected PNG or "
                         f"JPEG, a .npy array or a *-images-idx3-ubyte[.gz] file)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # truncated or corrupt data
        raise InputError(f"{path}: cannot decode this image ({e})") from None


def read_array(path: Path) -> np.ndarray:
    """A .npy of uint8 images: (N, 28, 28), or (28, 28) for one."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot read it as a .npy array ({e})") from None
    if not isinstance(a, np.ndarray):  # an .npz archive under a .npy name
        raise InputError(f"{path}: an .npz archive, not a .npy array")
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or a.shape[-2:] != (SIZE, SIZE):
        raise InputError(f"{path}: array of shape {a.shape} and dtype {a.dtype}; expected dtype uint8 (0-255) "
                         f"and shape (N, 28, 28) or (28, 28)")
    if a.size == 0:
        raise InputError(f"{path}: holds no images (shape {a.shape})")
    return a


def read_idx_images(path: Path) -> np.ndarray:
    try:
        a = read_idx(path)
    except DataError as e:
        raise InputError(str(e)) from None
    if a.ndim != 3:
        raise InputError(f"{path}: an IDX file of labels ({a.ndim}-d), expected images (*-images-idx3-ubyte[.gz])")
    if len(a) == 0:
        raise InputError(f"{path}: holds no images")
    return a


def expand(paths: list[str]) -> tuple[list[Path], list[str]]:
    """The files to read, directories expanded (sorted), and a note per directory; refuses missing, unreadable
    and empty paths."""
    files, notes = [], []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        if not os.access(path, os.R_OK | os.X_OK if path.is_dir() else os.R_OK):
            raise InputError(f"{path}: not readable (permission denied)")
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                       key=lambda p: p.name)
        if not found:
            raise InputError(f"{path}: no PNG or JPEG images in this directory (looked for "
                             f"{', '.join(IMAGE_SUFFIXES)}; subdirectories are not searched)")
        files += found
        notes.append(f"{path}: {len(found)} images found")
    return files, notes


def read_file(path: Path, invert: bool = False) -> tuple[list[str], np.ndarray]:
    """One file's image names and (n, 28, 28) uint8 images, by its name: .npy, IDX, else an image."""
    if not os.access(path, os.R_OK):  # a file of a directory (the paths given are checked in expand)
        raise InputError(f"{path}: not readable (permission denied)")
    if path.is_file() and path.stat().st_size == 0:  # else Pillow or numpy call it corrupt
        raise InputError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() == ".npy":
        a = read_array(path)
        return ([str(path)] if a.ndim == 2 else [f"{path}[{i}]" for i in range(len(a))]), a.reshape(-1, SIZE, SIZE)
    if IDX_NAME.search(path.name):
        a = read_idx_images(path)
        return [f"{path}[{i}]" for i in range(len(a))], a
    return [str(path)], read_image(path, invert)[None]


def refusal(failures: list[str], total: int) -> str:
    """One line for the files that failed ("PATH: reason" each): the one message, or the first MAX_LISTED
    of them and the count of the others."""
    if len(failures) == 1:
        return failures[0]
    listed = "; ".join(failures[:MAX_LISTED])
    more = len(failures) - MAX_LISTED
    return (f"{len(failures)} of {total} input files cannot be used (fix or remove them): {listed}"
            + (f"; and {more} more" if more > 0 else ""))


def load(paths: list[str], invert: bool = False, progress: Progress | None = None) -> Inputs:
    """Every input decoded and checked, in the order given; progress(done, total) after each file. Every file
    is tried, so that one InputError names all the bad ones."""
    files, notes = expand(paths)
    names, arrays, failures = [], [], []
    for done, path in enumerate(files, 1):
        try:
            file_names, a = read_file(path, invert)
        except InputError as e:
            failures.append(str(e))
        else:
            names += file_names
            arrays.append(a)
        if progress:
            progress(done, len(files))
    if failures:
        raise InputError(refusal(failures, len(files)))
    return Inputs(names, np.concatenate(arrays), notes)
