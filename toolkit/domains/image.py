"""Images: scikit-learn's 8x8 digits (shipped with the library), the captioned digits shipped in
data/images/captioned_digits, or a folder of PNG/JPEG files (captioned when it holds a metadata file).

Model space is ``[-1, 1]`` with shape ``[channels, resolution, resolution]``. Besides the domain,
this module holds the image edits (inpainting, outpainting, image-to-image) as small functions that
turn files into the keyword arguments of ``toolkit.core.sampler.sample``; the sampler does the work.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from toolkit import viz
from toolkit.domains.base import Domain
from toolkit.domains.captions import captions_of
from toolkit.domains.data import (
    TensorDictDataModule,
    check_class_names,
    keep_captioned,
    scan_class_folders,
    split_indices,
)
from toolkit.resources import resource_dir

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")
COLOUR_MODES = ("RGB", "RGBA", "CMYK", "YCbCr")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L")
SOURCES = ("digits", "captioned_digits")
CAPTIONED_DIGITS_ROOT = resource_dir("data") / "images" / "captioned_digits"


def encode(images: Tensor) -> Tensor:
    """Pixels in [0, 1] -> model space [-1, 1]."""
    return images * 2.0 - 1.0


def decode_to_unit(x: Tensor) -> Tensor:
    """Model space -> pixels in [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def resize(images: Tensor, resolution: int) -> Tensor:
    """Bilinear resize of ``[n, C, H, W]`` to ``resolution x resolution``; antialiased, which only
    matters when shrinking."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    resized = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True)
    return resized.clamp(0.0, 1.0)


def read_image_file(path: str | Path, channels: int) -> Tensor:
    """One PNG/JPEG as float ``[channels, H, W]`` in [0, 1]; alpha is dropped.

    Grey files for ``channels=3`` and colour files for ``channels=1`` are errors, not silent
    conversions, so that a mixed folder is noticed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}; is it a valid PNG/JPEG file?") from error

    if image.mode in ("P", "PA"):
        rgb = np.asarray(image.convert("RGB"))
        is_grey = bool((rgb == rgb[:, :, :1]).all())
        pixels = (rgb[:, :, 0] if is_grey else rgb).astype(np.float32) / 255.0
    elif image.mode in SIXTEEN_BIT_MODES:
        is_grey, pixels = True, np.asarray(image, dtype=np.float32) / 65535.0
    elif image.mode in GREY_MODES:
        is_grey, pixels = True, np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    elif image.mode in COLOUR_MODES:
        is_grey, pixels = False, np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    else:
        raise ValueError(f"image {path} has unsupported pixel mode {image.mode!r}; save it as 8-bit grey or RGB")

    found = 1 if is_grey else 3
    if found != channels:
        kind = "grey (1 channel)" if is_grey else "colour (3 channels)"
        raise ValueError(
            f"image {path} is {kind} but channels={channels}; set the domain's channels={found} "
            f"or convert the file to {'RGB' if channels == 3 else 'greyscale'}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).clamp(0.0, 1.0)
    return tensor[None] if is_grey else tensor.permute(2, 0, 1).contiguous()


def load_image(path: str | Path, channels: int, resolution: int) -> Tensor:
    """A file as float ``[channels, resolution, resolution]`` in [0, 1], ready for editing."""
    return resize(read_image_file(path, channels)[None], resolution)[0]


def load_mask(path: str | Path, size: int | tuple[int, int]) -> Tensor:
    """An edit mask as float ``[H, W]``: 1 where the picture is white (the region to regenerate),
    0 where black (kept). ``size`` is the image's ``(height, width)`` (or one int for squares)."""
    height, width = (size, size) if isinstance(size, int) else size
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    try:
        with Image.open(path) as opened:
            grey = np.asarray(opened.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read mask {path}: {error}; is it a valid PNG/JPEG file?") from error
    if grey.shape != (height, width):
        raise ValueError(
            f"mask {path} is {grey.shape[1]}x{grey.shape[0]} (WxH) but the image is {width}x{height}; "
            "draw the mask at the image's size (white = regenerate, black = keep)"
        )
    return torch.from_numpy((grey >= 0.5).astype(np.float32))


def outpaint_canvas(
    image: Tensor, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, fill: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Extend ``image [C, H, W]`` by the given margins (pixels).

    Returns the canvas ``[C, H + top + bottom, W + left + right]`` (margins filled with ``fill``)
    and the known mask ``[H', W']`` (1 = the original pixels, 0 = to generate).
    """
    margins = {"left": left, "right": right, "top": top, "bottom": bottom}
    if any(int(v) != v or v < 0 for v in margins.values()):
        raise ValueError(f"outpainting margins must be non-negative ints, got {margins}")
    if not any(margins.values()):
        raise ValueError("outpainting needs at least one margin > 0 (left, right, top or bottom)")
    channels, height, width = image.shape
    canvas = image.new_full((channels, height + top + bottom, width + left + right), fill)
    known = image.new_zeros(canvas.shape[1:])
    canvas[:, top : top + height, left : left + width] = image
    known[top : top + height, left : left + width] = 1.0
    return canvas, known


def inpaint_kwargs(image: Tensor, regenerate: Tensor, n: int = 1) -> dict:
    """Sampler arguments that regenerate the region where ``regenerate [H, W]`` is 1 and keep the
    rest of ``image [C, H, W]`` (pixels in [0, 1]) exactly, for ``n`` samples."""
    if regenerate.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"mask size {tuple(regenerate.shape[-2:])} differs from image size {tuple(image.shape[-2:])}")
    shape = (n, *image.shape)
    known = (1.0 - regenerate.float()).expand(shape).contiguous()
    return {"shape": shape, "known_mask": known, "known_values": encode(image).expand(shape).contiguous()}


def outpaint_kwargs(image: Tensor, n: int = 1, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0) -> dict:
    """Sampler arguments that extend ``image [C, H, W]`` by the margins, keeping it exactly."""
    canvas, known = outpaint_canvas(image, left, right, top, bottom)
    return inpaint_kwargs(canvas, 1.0 - known, n)


def img2img_kwargs(image: Tensor, n: int = 1, strength: float = 0.6) -> dict:
    """Sampler arguments that start from ``image [C, H, W]`` noised to time ``strength`` (0 keeps
    the image, 1 ignores it)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    shape = (n, *image.shape)
    return {"shape": shape, "x_init": encode(image).expand(shape).contiguous(), "strength": float(strength)}


def load_digits_images(resolution: int) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 handwritten digits as ``[1797, 1, res, res]`` in [0, 1] and labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    return resize(images, resolution), torch.from_numpy(digits.target.astype(np.int64))


def scan_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``root``: either all directly in it (no labels, no class names) or in one
    sub-folder per class (see ``scan_class_folders``). Returns files, labels and class names."""
    return scan_class_folders(root, IMAGE_EXTENSIONS, conditional=False, what="PNG/JPEG images")


def warn_if_stretched(root: Path, sizes: Counter, resolution: int, shown: int = 5) -> None:
    """One warning when a folder's images come in several sizes or are not square: each is resized
    to ``resolution x resolution``, so non-square ones are stretched. ``sizes``: (width, height) -> count."""
    stretched = any(width != height for width, height in sizes)
    if len(sizes) == 1 and not stretched:
        return
    counts = [f"{count} of {width}x{height}" for (width, height), count in sizes.most_common(shown)]
    more = f" and {len(sizes) - shown} more sizes" if len(sizes) > shown else ""
    advice = (
        "non-square ones are stretched (proportions not kept): crop them to squares first to avoid distortion"
        if stretched
        else "resize them to one size first if you want another resampling"
    )
    warnings.warn(
        f"images in {root} come in {len(sizes)} size(s) (width x height): {', '.join(counts)}{more}; all are "
        f"resized to {resolution}x{resolution}; {advice}",
        UserWarning,
        stacklevel=3,
    )


class ImageDomain(Domain):
    """Grey or colour images of one square size.

    ``source="digits"`` uses scikit-learn's digits (grey, 10 classes); ``source="captioned_digits"`` the
    same digits at 16x16 with captions (data/images/captioned_digits, needs ``text_encoder``);
    ``root=<folder>`` uses the PNG/JPEG files of a folder, labelled by class sub-folder when it has them
    and captioned when it holds a metadata file (``toolkit.domains.captions``; needs ``text_encoder``).
    Images are stretched to ``resolution x resolution``, with one warning (the counts of each size)
    when a folder's images differ in size or are not square. ``class_names`` may be given to skip
    scanning the folder (e.g. when sampling from a checkpoint on a machine without the data); it must
    match the folder when data is loaded.
    """

    name = "image"

    def __init__(
        self,
        source: str = "digits",
        root: str | None = None,
        channels: int = 1,
        resolution: int = 16,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        conditional: bool = True,
        class_names: list[str] | None = None,
        net: dict | DictConfig | None = None,
        text_encoder: dict | None = None,
    ):
        if root is None and source not in SOURCES:
            raise ValueError(f"unknown image source {source!r}: use one of {SOURCES} or set root=<image folder>")
        if root is None and source == "captioned_digits":
            root = str(CAPTIONED_DIGITS_ROOT)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {resolution}")
        if root is None and channels != 1:
            raise ValueError("the digits are grey: use channels=1 with source=digits")
        self.root = None if root is None else Path(root).expanduser()
        self.channels, self.resolution = channels, resolution
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.net_cfg = net
        self.text_encoder = None if text_encoder is None else dict(text_encoder)
        self.sample_shape = (channels, resolution, resolution)

        if self.root is None:
            found_names = [str(digit) for digit in range(10)]
        elif class_names is None:
            found_names = scan_image_folder(self.root)[2]
        else:
            found_names = list(class_names)
        self.conditional = conditional and bool(found_names)
        self.class_names = found_names if self.conditional else None
        self.num_classes = len(found_names) if self.conditional else 0
        self.expected_class_names = class_names
        self._data: tuple[Tensor, Tensor] | None = None
        self.captions: list[str] | None = None  # one per image of ``load`` when the folder is captioned

    def checkpoint_kwargs(self) -> dict:
        """A folder's class names, so that a checkpoint samples without the folder at hand."""
        return {"class_names": self.class_names} if self.root is not None and self.class_names else {}

    EDITS = ("inpaint", "outpaint", "img2img")
    edit_options = ("image", "mask", "strength", "left", "right", "top", "bottom")

    def edit_inputs(
        self,
        edit: str,
        n: int,
        image: str | None = None,
        mask: str | None = None,
        strength: float = 0.6,
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
    ) -> dict:
        """Inpainting (``image`` + ``mask``, white = regenerate), outpainting (``image`` + margins in
        pixels) or image-to-image (``image`` + ``strength``), for ``n`` samples."""
        if edit not in self.EDITS:
            raise ValueError(f"unknown edit {edit!r}; choose one of {self.EDITS}")
        if image is None:
            raise ValueError(f"edit={edit} needs image=PATH, the picture to edit")
        picture = load_image(image, self.channels, self.resolution)
        if edit == "inpaint":
            if mask is None:
                raise ValueError("edit=inpaint needs mask=PATH: a picture of the image's size, white = regenerate")
            return inpaint_kwargs(picture, load_mask(mask, picture.shape[-2:]), n)
        if edit == "outpaint":
            return outpaint_kwargs(picture, n, left=left, right=right, top=top, bottom=bottom)
        return img2img_kwargs(picture, n, strength)

    def load(self) -> tuple[Tensor, Tensor]:
        """All images ``[N, C, res, res]`` in [0, 1] and their labels ``[N]`` (zeros when unlabelled);
        read once and cached."""
        if self._data is None:
            self._data = self._read_all()
        return self._data

    def _read_all(self) -> tuple[Tensor, Tensor]:
        if self.root is None:
            if self.text_encoder is not None:
                raise ValueError(
                    "text_encoder is set but scikit-learn's digits have no captions; use source=captioned_digits "
                    "(e.g. experiment=image_prompts) or a captioned root"
                )
            return load_digits_images(self.resolution)
        files, labels, names = scan_image_folder(self.root)
        if self.expected_class_names is not None:
            check_class_names(self.root, names, self.expected_class_names)
        captions = captions_of(self.root, files, self.text_encoder, self.name, "PNG/JPEG images")
        files, labels, self.captions = keep_captioned(files, labels, captions)
        images, sizes = [], Counter()
        for path in files:
            image = read_image_file(path, self.channels)
            sizes[(image.shape[-1], image.shape[-2])] += 1
            images.append(resize(image[None], self.resolution)[0])
        warn_if_stretched(self.root, sizes, self.resolution)
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)

    def encode(self, images: Tensor) -> Tensor:
        return encode(images)

    def decode(self, x: Tensor) -> np.ndarray:
        """Model space -> float32 ``[n, C, H, W]`` pixels in [0, 1]."""
        return decode_to_unit(x.detach().float().cpu()).numpy()

    def datamodule(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> TensorDictDataModule:
        images, labels = self.load()
        tokens = None if self.captions is None else self.tokenize(self.captions)
        train_index, val_index = split_indices(len(images), self.val_fraction, self.split_seed)

        def rows(index: Tensor) -> dict[str, Tensor]:
            batch = {"x": encode(images[index])}
            if self.conditional:
                batch["label"] = labels[index]
            if tokens is not None:
                batch["tokens"] = tokens[index]
            return batch

        return TensorDictDataModule(rows(train_index), rows(val_index), batch_size, num_workers, seed)

    def build_net(self) -> nn.Module:
        sizes = {"resolution": self.resolution}
        return self.build_net_from(self.net_cfg, sizes, in_channels=self.channels, num_classes=self.num_classes)

    @property
    def picture_scale(self) -> int:
        return viz.display_scale(self.resolution)

    def pictures(self, x: Tensor) -> np.ndarray:
        """Model space ``[n, C, H, W]`` -> pictures ``[n, H, W, C]`` in [0, 1] for the viz helpers."""
        return self.decode(x).transpose(0, 2, 3, 1)

    def sample_stem(self, index: int, label: int | None, seed: int) -> str:
        return f"sample_{index:04d}"

    def write_sample(self, out_dir: Path, stem: str, data: np.ndarray, picture: np.ndarray) -> list[Path]:
        """``sample_0000.png`` at the model's resolution."""
        return [viz.save_png(picture, out_dir / f"{stem}.png")]
