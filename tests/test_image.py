"""The 2D UNet, the drawing helpers and the image domain: data, errors, files written, edits."""

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit import viz
from toolkit.core import sampler, schedule
from toolkit.core.denoiser import Denoiser
from toolkit.domains.data import split_indices
from toolkit.domains.image import (
    ImageDomain,
    img2img_kwargs,
    inpaint_kwargs,
    load_image,
    load_mask,
    outpaint_canvas,
    outpaint_kwargs,
)
from toolkit.nets.unet import UNet

SMALL_NET = {
    "_target_": "toolkit.nets.unet.UNet",
    "base_channels": 16,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "attention_levels": [1],
}


def small_unet(**overrides) -> UNet:
    kwargs = {k: v for k, v in SMALL_NET.items() if k != "_target_"}
    net = UNet(**{"in_channels": 1, **kwargs, **overrides})
    torch.nn.init.normal_(net.output_conv.weight, std=0.1)
    return net.eval()


def write_png(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def solid(height: int, width: int, value, channels: int) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, 3)
    return np.broadcast_to(np.asarray(value, dtype=np.uint8), shape).copy()


@pytest.fixture(scope="module")
def digits():
    return ImageDomain(net=SMALL_NET)


# --- UNet -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (8, 24), (32, 12)])
def test_unet_keeps_square_and_non_square_shapes(size):
    net = small_unet(in_channels=3)
    x = torch.randn(2, 3, *size)
    assert net(x, torch.rand(2)).shape == (2, 3, *size)


def test_unet_out_channels_and_zero_initialised_output():
    net = UNet(in_channels=1, out_channels=2, base_channels=16, channel_mults=(1, 2), num_res_blocks=1)
    out = net(torch.randn(3, 1, 8, 8), torch.rand(3))
    assert out.shape == (3, 2, 8, 8)
    assert torch.count_nonzero(out) == 0


def test_unet_class_label_changes_output():
    net = small_unet(num_classes=10)
    x, t = torch.randn(1, 1, 16, 16), torch.full((1,), 0.5)
    with torch.no_grad():
        three, seven, null = (net(x, t, label) for label in (torch.tensor([3]), torch.tensor([7]), None))
        explicit_null = net(x, t, torch.tensor([10]))
    assert (three - seven).abs().max() > 1e-4
    assert (three - null).abs().max() > 1e-4
    torch.testing.assert_close(null, explicit_null)


def test_unet_time_changes_output():
    net = small_unet()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert (net(x, torch.tensor([0.1])) - net(x, torch.tensor([0.9]))).abs().max() > 1e-4


def test_unet_sample_does_not_depend_on_the_rest_of_the_batch():
    net = small_unet(num_classes=4)
    x, t, labels = torch.randn(5, 1, 16, 16), torch.rand(5), torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        together = net(x, t, labels)
        alone = torch.cat([net(x[i : i + 1], t[i : i + 1], labels[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_unet_rejects_sizes_the_levels_cannot_halve():
    net = small_unet(channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 16, 10), torch.rand(1))


def test_unet_rejects_bad_labels_and_configs():
    with pytest.raises(ValueError, match="unconditional"):
        small_unet()(torch.randn(1, 1, 8, 8), torch.rand(1), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"ints in \[0, 3\]"):
        small_unet(num_classes=3)(torch.randn(1, 1, 8, 8), torch.rand(1), torch.tensor([4]))
    with pytest.raises(ValueError, match="divisible by groups"):
        UNet(in_channels=1, base_channels=12, groups=8)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(in_channels=1, channel_mults=(1, 2), attention_levels=(2,))


# --- drawing helpers --------------------------------------------------------------------------


def test_to_uint8_clips_and_rounds():
    assert viz.to_uint8([-0.5, 0.0, 0.5, 1.0, 2.0]).tolist() == [0, 0, 128, 255, 255]


def test_make_grid_places_tiles_row_by_row():
    images = np.stack([np.full((2, 3, 1), v, dtype=np.float32) for v in (0.1, 0.2, 0.3)])
    grid = viz.make_grid(images, ncol=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == pytest.approx(0.1)
    assert grid[1, 5, 0] == pytest.approx(0.2)
    assert grid[4, 1, 0] == pytest.approx(0.3)
    assert grid[4, 5, 0] == 1.0  # the empty cell keeps the padding value


def test_save_png_and_strip_sizes(tmp_path):
    grey = viz.save_png(np.linspace(0, 1, 12).reshape(3, 4), tmp_path / "grey.png", scale=2)
    with Image.open(grey) as image:
        assert image.mode == "L" and image.size == (8, 6)
    frames = np.random.default_rng(0).random((2, 5, 4, 4, 3))
    strip = viz.save_strip(frames, tmp_path / "strip.png")
    with Image.open(strip) as image:
        assert image.mode == "RGB" and image.size == (5 * 5 + 1, 2 * 5 + 1)


def test_rows_by_label_gives_one_row_per_label():
    images = np.stack([np.full((2, 2, 1), v, dtype=np.float32) for v in (0.1, 0.2, 0.3)])
    arranged, ncol = viz.rows_by_label(images, np.array([5, 2, 5]))
    assert ncol == 2
    np.testing.assert_allclose(arranged[:, 0, 0, 0], [0.2, 0.0, 0.1, 0.3])


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_range_and_labels(digits):
    images, labels = digits.load()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert digits.num_classes == 10 and digits.class_names == [str(d) for d in range(10)]
    assert digits.sample_shape == (1, 16, 16)


def test_digits_datamodule_batches_in_model_space(digits):
    module = digits.datamodule(batch_size=32, seed=0)
    batch = next(iter(module.train_dataloader()))
    assert batch["x"].shape == (32, 1, 16, 16) and batch["label"].dtype == torch.int64
    assert batch["x"].min() >= -1 and batch["x"].max() <= 1 and batch["x"].min() < -0.99
    assert len(module.train_set) == 1617 and len(module.val_set) == 180


def test_split_is_deterministic_and_disjoint(digits):
    def val_rows(domain):
        return domain.datamodule(batch_size=8).val_set.tensors["x"]

    first, again = val_rows(digits), val_rows(ImageDomain(net=SMALL_NET))
    assert torch.equal(first, again)
    assert not torch.equal(first, val_rows(ImageDomain(split_seed=1, net=SMALL_NET)))
    train, val = split_indices(1797, 0.1, seed=0)
    assert len(val) == 180 and torch.equal(torch.cat([train, val]).sort().values, torch.arange(1797))
    assert torch.equal(first, digits.load()[0][val] * 2 - 1)
    assert split_indices(5, 0.01, seed=0)[1].numel() == 1  # a tiny fraction still validates on one
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, 1.0, seed=0)


def test_training_order_follows_the_seed(digits):
    def first_labels(seed):
        return next(iter(digits.datamodule(batch_size=16, seed=seed).train_dataloader()))["label"]

    assert torch.equal(first_labels(3), first_labels(3))
    assert not torch.equal(first_labels(3), first_labels(4))


def test_unconditional_digits_have_no_labels():
    domain = ImageDomain(conditional=False, net=SMALL_NET)
    assert domain.num_classes == 0
    assert "label" not in next(iter(domain.datamodule(batch_size=4).train_dataloader()))
    assert domain.build_net().class_embedding is None


def test_build_net_gets_channels_and_classes(digits):
    net = digits.build_net()
    assert net.in_channels == 1 and net.num_classes == 10
    with pytest.raises(ValueError, match="not divisible by 4"):
        ImageDomain(resolution=10, net={**SMALL_NET, "channel_mults": [1, 2, 2]}).build_net()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 4}, "resolution must be >= 8"),
        ({"channels": 3}, "digits are grey"),
        ({"channels": 2}, "channels must be 1"),
        ({"source": "cifar"}, "unknown image source"),
    ],
)
def test_bad_digits_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageDomain(net=SMALL_NET, **kwargs)


# --- image folders ----------------------------------------------------------------------------


def test_class_folders_give_labels_in_sorted_folder_order(tmp_path):
    write_png(tmp_path / "zebra" / "a.png", solid(20, 20, (255, 0, 0), 3))
    write_png(tmp_path / "apple" / "b.png", solid(12, 30, (0, 0, 255), 3))
    write_png(tmp_path / "apple" / "c.PNG", solid(8, 8, (0, 255, 0), 3))
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    domain = ImageDomain(root=str(tmp_path), channels=3, resolution=8, net=SMALL_NET)
    assert domain.class_names == ["apple", "zebra"] and domain.num_classes == 2
    images, labels = domain.load()
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 0, 1]
    expected = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(images.mean(dim=(2, 3)), expected)


def test_grey_images_directly_in_root_are_unconditional(tmp_path):
    write_png(tmp_path / "one.png", solid(16, 16, 255, 1))
    Image.fromarray(solid(32, 32, 0, 1)).save(tmp_path / "two.jpg")
    palette = Image.fromarray(solid(16, 16, 128, 1)).convert("P")
    palette.save(tmp_path / "three.png")
    domain = ImageDomain(root=str(tmp_path), channels=1, resolution=16, net=SMALL_NET)
    assert domain.num_classes == 0 and domain.class_names is None
    images, _ = domain.load()
    assert images.shape == (3, 1, 16, 16)
    means = sorted(images.mean(dim=(1, 2, 3)).tolist())
    assert means == pytest.approx([0.0, 128 / 255, 1.0], abs=0.02)
    batch = next(iter(domain.datamodule(batch_size=2).train_dataloader()))
    assert set(batch) == {"x"}


def test_mixed_sizes_are_resized_with_one_warning_counting_them(tmp_path, recwarn):
    for name, (height, width) in {"a": (16, 16), "b": (16, 16), "c": (20, 10), "d": (32, 32)}.items():
        write_png(tmp_path / f"{name}.png", solid(height, width, 200, 1))
    domain = ImageDomain(root=str(tmp_path), resolution=16, net=SMALL_NET)
    images, _ = domain.load()
    domain.load()
    assert images.shape == (4, 1, 16, 16)
    messages = [str(w.message) for w in recwarn if "resized to" in str(w.message)]
    assert len(messages) == 1, "one warning, also when the data is asked for again"
    assert "3 size(s)" in messages[0] and "2 of 16x16, 1 of 10x20, 1 of 32x32" in messages[0]
    assert str(tmp_path) in messages[0] and "resized to 16x16; non-square ones are stretched" in messages[0]


def test_one_square_size_resizes_without_a_warning(tmp_path, recwarn):
    for name in "ab":
        write_png(tmp_path / f"{name}.png", solid(32, 32, 200, 1))
    images, _ = ImageDomain(root=str(tmp_path), resolution=16, net=SMALL_NET).load()
    assert images.shape == (2, 1, 16, 16) and not [w for w in recwarn if "resized to" in str(w.message)]
    write_png(tmp_path / "c.png", solid(32, 32, 200, 1))
    (tmp_path / "a.png").unlink()
    (tmp_path / "b.png").unlink()
    write_png(tmp_path / "wide.png", solid(16, 32, 200, 1))
    with pytest.warns(UserWarning, match=r"2 size\(s\).*1 of 32x32, 1 of 32x16.*non-square ones are stretched"):
        ImageDomain(root=str(tmp_path), resolution=16, net=SMALL_NET).load()


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageDomain(root=str(tmp_path / "nowhere"), net=SMALL_NET)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="no PNG/JPEG images"):
        ImageDomain(root=str(tmp_path), net=SMALL_NET)


def test_empty_class_folder_and_mixed_layout(tmp_path):
    write_png(tmp_path / "cats" / "a.png", solid(8, 8, 0, 1))
    (tmp_path / "dogs").mkdir()
    with pytest.raises(ValueError, match="'dogs'.*has no PNG/JPEG images"):
        ImageDomain(root=str(tmp_path), net=SMALL_NET)
    write_png(tmp_path / "dogs" / "b.png", solid(8, 8, 0, 1))
    write_png(tmp_path / "loose.png", solid(8, 8, 0, 1))
    with pytest.raises(ValueError, match="both class sub-folders and loose PNG/JPEG images"):
        ImageDomain(root=str(tmp_path), net=SMALL_NET)


def test_unreadable_image_names_the_file(tmp_path):
    write_png(tmp_path / "good.png", solid(8, 8, 0, 1))
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    domain = ImageDomain(root=str(tmp_path), resolution=8, net=SMALL_NET)
    with pytest.raises(ValueError, match="broken.png"):
        domain.datamodule(batch_size=2)


@pytest.mark.parametrize(
    ("channels", "pixels", "message"),
    [(3, solid(8, 8, 100, 1), "grey.*channels=1"), (1, solid(8, 8, (1, 2, 3), 3), "colour.*channels=3")],
)
def test_wrong_channel_count_names_the_file_and_the_fix(tmp_path, channels, pixels, message):
    write_png(tmp_path / "odd_one.png", pixels)
    domain = ImageDomain(root=str(tmp_path), channels=channels, resolution=8, net=SMALL_NET)
    with pytest.raises(ValueError, match="odd_one.png") as error:
        domain.load()
    assert error.match(message)


def test_given_class_names_must_match_the_folder(tmp_path):
    write_png(tmp_path / "cats" / "a.png", solid(8, 8, 0, 1))
    domain = ImageDomain(root=str(tmp_path / "elsewhere"), class_names=["cats", "dogs"], net=SMALL_NET)
    assert domain.num_classes == 2  # built without the data, e.g. for sampling
    mismatched = ImageDomain(root=str(tmp_path), class_names=["cats", "dogs"], resolution=8, net=SMALL_NET)
    with pytest.raises(ValueError, match="built for"):
        mismatched.load()


# --- files written ----------------------------------------------------------------------------


def test_save_writes_pngs_grid_strip_and_npz(tmp_path, digits):
    x = torch.linspace(-1.5, 1.5, 3 * 256).reshape(3, 1, 16, 16)
    trajectory = torch.stack([x * 0.1, x * 0.5, x])
    labels = torch.tensor([7, 1, 7])
    paths = digits.save(x, tmp_path, labels, seeds=[10, 11, 12], trajectory=trajectory)
    names = {p.name for p in paths}
    assert names == {
        "sample_0000.png",
        "sample_0001.png",
        "sample_0002.png",
        "grid.png",
        "strip.png",
        "samples.npz",
    }
    assert all(p.exists() for p in paths)

    data = np.load(tmp_path / "samples.npz")
    assert data["x"].shape == (3, 1, 16, 16) and data["x"].dtype == np.float32
    assert data["x"].min() == 0.0 and data["x"].max() == 1.0
    assert data["labels"].tolist() == [7, 1, 7] and data["seeds"].tolist() == [10, 11, 12]
    assert data["class_names"].tolist() == [str(d) for d in range(10)]

    with Image.open(tmp_path / "sample_0001.png") as image:
        written = np.asarray(image, dtype=np.float32) / 255
    np.testing.assert_allclose(written, data["x"][1, 0], atol=1 / 255)
    scale = viz.display_scale(16)
    with Image.open(tmp_path / "strip.png") as strip, Image.open(tmp_path / "grid.png") as grid:
        assert strip.size == (3 * (16 * scale + 1) + 1, 3 * (16 * scale + 1) + 1)
        assert grid.size == (2 * (16 * scale + 1) + 1, 2 * (16 * scale + 1) + 1)  # rows: label 1, label 7


def test_save_without_labels_or_trajectory(tmp_path, digits):
    paths = digits.save(torch.zeros(2, 1, 16, 16), tmp_path, None, seeds=[0, 1])
    assert "strip.png" not in {p.name for p in paths}
    assert np.load(tmp_path / "samples.npz")["labels"].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="2 samples but 1 seeds"):
        digits.save(torch.zeros(2, 1, 16, 16), tmp_path, None, seeds=[0])


# --- edits ------------------------------------------------------------------------------------


def test_load_image_and_its_errors(tmp_path):
    write_png(tmp_path / "rgb.png", solid(32, 32, (255, 0, 0), 3))
    image = load_image(tmp_path / "rgb.png", channels=3, resolution=16)
    assert image.shape == (3, 16, 16) and image[0].min() == 1.0 and image[1:].max() == 0.0
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png", 3, 16)
    with pytest.raises(ValueError, match="channels=3"):
        load_image(tmp_path / "rgb.png", 1, 16)
    (tmp_path / "junk.jpg").write_bytes(b"\x00" * 50)
    with pytest.raises(ValueError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg", 1, 16)


def test_load_mask_white_means_regenerate(tmp_path):
    pixels = solid(16, 16, 0, 1)
    pixels[4:8, 2:10] = 255
    write_png(tmp_path / "mask.png", pixels)
    mask = load_mask(tmp_path / "mask.png", 16)
    assert mask.shape == (16, 16) and mask.sum() == 32 and mask[5, 3] == 1 and mask[0, 0] == 0
    with pytest.raises(ValueError, match="16x16.*20x12"):
        load_mask(tmp_path / "mask.png", (12, 20))
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "nomask.png", 16)


def test_outpaint_canvas_shapes_and_mask():
    image = torch.rand(3, 8, 8)
    canvas, known = outpaint_canvas(image, left=4, right=0, top=2, bottom=6)
    assert canvas.shape == (3, 16, 12) and known.shape == (16, 12)
    assert known.sum() == 64 and known[2:10, 4:12].all()
    assert torch.equal(canvas[:, 2:10, 4:12], image)
    assert (canvas[:, :2] == 0.5).all()
    with pytest.raises(ValueError, match="non-negative"):
        outpaint_canvas(image, left=-1)
    with pytest.raises(ValueError, match="at least one margin"):
        outpaint_canvas(image)


def denoiser() -> Denoiser:
    torch.manual_seed(0)
    return Denoiser(small_unet(num_classes=10), schedule.get("cosine"), prediction="v")


def test_inpainting_with_the_core_sampler_keeps_known_pixels_exactly(tmp_path):
    pixels = solid(16, 16, 0, 1)
    pixels[:, 8:] = 255
    write_png(tmp_path / "mask.png", pixels)
    image = torch.rand(1, 16, 16)
    edit = inpaint_kwargs(image, load_mask(tmp_path / "mask.png", 16), n=2)
    cond = {"label": torch.tensor([3, 5])}
    x = sampler.sample(denoiser(), schedule="cosine", method="dpmpp_2m", steps=4, seed=[1, 2], cond=cond, **edit)
    expected = image * 2 - 1
    assert x.shape == (2, 1, 16, 16)
    assert torch.equal(x[:, :, :, :8], expected[:, :, :8].expand(2, 1, 16, 8))
    assert not torch.allclose(x[:, :, :, 8:], expected[:, :, 8:].expand(2, 1, 16, 8), atol=1e-2)


def test_outpainting_and_img2img_kwargs_drive_the_sampler():
    image = torch.rand(1, 16, 8)
    edit = outpaint_kwargs(image, n=1, left=4, right=4)
    x = sampler.sample(denoiser(), schedule="cosine", method="ddim", steps=3, seed=0, **edit)
    assert x.shape == (1, 1, 16, 16)
    assert torch.equal(x[0, :, :, 4:12], image * 2 - 1)

    edit = img2img_kwargs(image, n=2, strength=0.3)
    x = sampler.sample(denoiser(), schedule="cosine", method="ddim", steps=3, seed=[0, 1], **edit)
    assert x.shape == (2, 1, 16, 8)
    with pytest.raises(ValueError, match="strength"):
        img2img_kwargs(image, strength=0.0)
