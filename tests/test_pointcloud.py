"""Point-cloud domain: file formats, normalisation, the procedural set, rendering and saving, the
permutation-equivariant network, and the Chamfer/EMD/MMD/COV/1-NNA metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from conftest import load_benchmark, save_untrained_checkpoint
from PIL import Image

from toolkit.core import schedule
from toolkit.domains import pointcloud as pc
from toolkit.domains.pointcloud import PointCloudDomain
from toolkit.metrics import pointcloud as metrics
from toolkit.nets.point_transformer import PointTransformer

MESH_FORMATS = ["obj", "ply", "stl", "off", "glb"]


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is fastest, and on a busy machine extra threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def box_mesh(extents=(2.0, 1.0, 0.5), centre=(3.0, -1.0, 2.0)) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents).apply_translation(centre)


def random_cloud(n: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [5.0, 0.0, -1.0]


@pytest.fixture
def tiny_set(tmp_path):
    """Two classes of a few boxes and spheres of different sizes, in assorted formats."""
    root = tmp_path / "shapes"
    for i, ext in enumerate(MESH_FORMATS):
        (root / "box").mkdir(parents=True, exist_ok=True)
        (root / "sphere").mkdir(parents=True, exist_ok=True)
        box_mesh(extents=(1 + i, 1.0, 0.5), centre=(i, 0, 0)).export(root / "box" / f"b{i}.{ext}")
        trimesh.creation.icosphere(2, radius=1 + i).export(root / "sphere" / f"s{i}.{ext}")
    return root


def perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The network with every parameter (the zero-initialised ones included) randomised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net.eval()


# ----------------------------------------------------------------------------------------------
# Reading files


@pytest.mark.parametrize("ext", MESH_FORMATS)
def test_each_mesh_format_is_sampled_on_the_surface(tmp_path, ext):
    path = tmp_path / f"box.{ext}"
    box_mesh().export(path)
    geometry = pc.load_geometry(path)
    assert isinstance(geometry, trimesh.Trimesh)
    points = pc.sample_points(geometry, 500, seed=1)
    assert points.shape == (500, 3)
    # every sample lies on a face of the box: on at least one of its six planes, inside the box
    low, high = np.array([2.0, -1.5, 1.75]), np.array([4.0, -0.5, 2.25])
    assert np.all(points >= low - 1e-6) and np.all(points <= high + 1e-6)
    on_face = np.isclose(points, low, atol=1e-6) | np.isclose(points, high, atol=1e-6)
    assert on_face.any(axis=1).all()
    # area weighting: the two 2 x 1 faces hold 4 of the 7 square units of area
    big_faces = np.isclose(points[:, 2], 1.75, atol=1e-6) | np.isclose(points[:, 2], 2.25, atol=1e-6)
    assert abs(big_faces.mean() - 4 / 7) < 0.07


def test_point_cloud_ply_is_taken_as_is_then_subsampled_or_padded(tmp_path):
    cloud = random_cloud(300)
    path = tmp_path / "cloud.ply"
    trimesh.PointCloud(cloud).export(path)
    geometry = pc.load_geometry(path)
    assert isinstance(geometry, trimesh.PointCloud)

    def from_source(points):
        return np.linalg.norm(points[:, None] - cloud[None], axis=2).min(axis=1).max() < 1e-5

    fewer = pc.sample_points(geometry, 100, seed=3)
    assert fewer.shape == (100, 3) and len(np.unique(fewer, axis=0)) == 100 and from_source(fewer)
    np.testing.assert_array_equal(fewer, pc.sample_points(geometry, 100, seed=3))
    assert not np.array_equal(fewer, pc.sample_points(geometry, 100, seed=4))

    more = pc.sample_points(geometry, 500, seed=3)
    assert more.shape == (500, 3) and from_source(more)
    np.testing.assert_allclose(more[:300], cloud, atol=1e-5)


def test_folder_with_class_subfolders_gives_sorted_labels(tiny_set):
    classes, files = pc.list_shape_files(tiny_set)
    assert classes == ["box", "sphere"]
    assert len(files) == 10 and {label for _, label in files} == {0, 1}
    assert all(f.parent.name == classes[label] for f, label in files)


def test_companion_files_are_ignored_but_other_files_are_an_error(tiny_set):
    (tiny_set / "box" / "b0.mtl").write_text("newmtl x\n")
    (tiny_set / "box" / "notes.txt").write_text("hi")
    assert len(pc.list_shape_files(tiny_set)[1]) == 10
    (tiny_set / "box" / "extra.xyz2").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="unsupported file format.*extra.xyz2"):
        pc.list_shape_files(tiny_set)


def test_flat_folder_is_one_unlabelled_set(tmp_path):
    for i in range(3):
        box_mesh(centre=(i, 0, 0)).export(tmp_path / f"{i}.stl")
    domain = PointCloudDomain(data_dir=str(tmp_path), num_points=64, val_fraction=0.34)
    assert domain.num_classes == 0 and domain.class_names is None
    dm = domain.datamodule(batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x"} and batch["x"].shape == (2, 64, 3)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PointCloudDomain(data_dir=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("ext", ["ply", "stl", "off", "glb"])
def test_empty_mesh(tmp_path, ext):
    path = tmp_path / f"empty.{ext}"
    trimesh.Trimesh().export(path)
    with pytest.raises(ValueError, match="empty"):
        pc.load_geometry(path)


@pytest.mark.parametrize("ext", ["obj", "off"])
def test_mesh_without_faces(tmp_path, ext):
    path = tmp_path / f"loose.{ext}"
    trimesh.Trimesh(vertices=random_cloud(10), faces=np.zeros((0, 3), dtype=int)).export(path)
    with pytest.raises(ValueError, match="no faces"):
        pc.load_geometry(path)


@pytest.mark.parametrize("ext", ["obj", "ply"])
def test_nan_vertices(tmp_path, ext):
    mesh = box_mesh()
    mesh.vertices[3] = np.nan
    path = tmp_path / f"nan.{ext}"
    mesh.export(path)
    with pytest.raises(ValueError, match="NaN"):
        pc.load_geometry(path)


def test_zero_area_mesh(tmp_path):
    path = tmp_path / "flat.off"
    trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [2, 0, 0]], faces=[[0, 1, 2]], process=False).export(path)
    with pytest.raises(ValueError, match="zero area"):
        pc.load_geometry(path)


def test_unsupported_format(tmp_path):
    path = tmp_path / "shape.fbx"
    path.write_bytes(b"not a mesh")
    with pytest.raises(ValueError, match="unsupported format"):
        pc.load_geometry(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.glb"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.glb: could not be parsed as GLB"):
        pc.load_geometry(path)


def test_text_named_stl_is_not_called_empty(tmp_path):
    path = tmp_path / "notes.stl"
    path.write_text("vertex 1 2 3, sent by e-mail\n")
    with pytest.raises(ValueError, match="notes.stl: could not be parsed as STL: it is neither ASCII STL") as error:
        pc.load_geometry(path)
    assert "empty" not in str(error.value)
    (tmp_path / "zero.stl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero.stl: empty file \(0 bytes\)"):
        pc.load_geometry(tmp_path / "zero.stl")
    box_mesh().export(tmp_path / "box.stl")
    box_mesh().export(tmp_path / "box_ascii.stl", file_type="stl_ascii")
    assert pc.looks_like_stl(tmp_path / "box.stl") and pc.looks_like_stl(tmp_path / "box_ascii.stl")
    assert not pc.looks_like_stl(path)


def test_point_cloud_with_fewer_points_than_needed_is_an_error_unless_repeating(tmp_path):
    (tmp_path / "few").mkdir()
    trimesh.PointCloud(random_cloud(3)).export(tmp_path / "few" / "three.ply")
    trimesh.PointCloud(random_cloud(100)).export(tmp_path / "few" / "many.ply")
    domain = PointCloudDomain(data_dir=str(tmp_path / "few"), num_points=64, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"three.ply: point cloud has 3 points but num_points=64 needs at least 64"):
        domain.split("train")
    padded = PointCloudDomain(data_dir=str(tmp_path / "few"), num_points=64, val_fraction=0.0, repeat_points=True)
    assert padded.split("train").points.shape == (2, 64, 3)


def test_bad_settings():
    with pytest.raises(ValueError, match="normalization"):
        PointCloudDomain(normalization="unit_cube")
    with pytest.raises(ValueError, match="val_fraction"):
        PointCloudDomain(val_fraction=1.0)


def test_stray_files_next_to_class_folders(tiny_set):
    box_mesh().export(tiny_set / "loose.stl")
    with pytest.raises(ValueError, match="class folder"):
        pc.list_shape_files(tiny_set)


# ----------------------------------------------------------------------------------------------
# Normalisation


def test_unit_sphere_normalisation():
    points = np.stack([random_cloud(200, seed) * (seed + 1) for seed in range(3)])
    out = pc.normalize_shapes(points, "unit_sphere")
    np.testing.assert_allclose(np.linalg.norm(out, axis=2).max(axis=1), 1.0, rtol=1e-12)
    centres = (out.min(axis=1) + out.max(axis=1)) / 2
    np.testing.assert_allclose(centres, 0.0, atol=1e-12)


def test_bbox_normalisation_keeps_aspect_ratio():
    points = np.stack([random_cloud(200, seed) for seed in range(3)])
    out = pc.normalize_shapes(points, "bbox")
    assert out.min() >= -1 - 1e-12 and out.max() <= 1 + 1e-12
    extents_in, extents_out = np.ptp(points, axis=1), np.ptp(out, axis=1)
    np.testing.assert_allclose(extents_out.max(axis=1), 2.0)
    np.testing.assert_allclose(extents_out / extents_out[:, :1], extents_in / extents_in[:, :1])


def test_collapsed_shape_cannot_be_normalised():
    with pytest.raises(ValueError, match="single point"):
        pc.normalize_shapes(np.ones((1, 10, 3)), "unit_sphere")


def test_normalisations_through_the_domain(tiny_set):
    per_shape = PointCloudDomain(data_dir=str(tiny_set), num_points=128, normalization="unit_sphere", val_fraction=0.2)
    train = per_shape.split("train").points
    torch.testing.assert_close(train.norm(dim=2).amax(dim=1), torch.ones(len(train)))

    bbox = PointCloudDomain(data_dir=str(tiny_set), num_points=128, normalization="bbox", val_fraction=0.2)
    extents = bbox.split("train").points.amax(dim=1) - bbox.split("train").points.amin(dim=1)
    torch.testing.assert_close(extents.amax(dim=1), torch.full((len(extents),), 2.0))

    glob = PointCloudDomain(data_dir=str(tiny_set), num_points=128, normalization="global", val_fraction=0.2)
    train, val = glob.split("train").points, glob.split("val").points
    assert train.norm(dim=2).max().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(train.reshape(-1, 3).mean(dim=0), torch.zeros(3), atol=1e-5, rtol=0)
    # one frame for all shapes: the relative sizes of the spheres (radius 1..5) survive
    radii = train[per_shape.split("train").labels == 1].norm(dim=2).amax(dim=1)
    assert radii.max() / radii.min() > 2.5
    # validation shapes are placed in the training frame, not normalised one by one
    per_shape_val = per_shape.split("val").points.numpy().astype(np.float64)
    np.testing.assert_allclose(
        pc.normalize_shapes(val.numpy().astype(np.float64), "unit_sphere"), per_shape_val, atol=1e-4
    )
    assert not np.allclose(val.norm(dim=2).amax(dim=1).numpy(), 1.0)


def test_checkpoint_kwargs_rebuild_the_domain_without_its_data(tiny_set, tmp_path):
    domain = PointCloudDomain(data_dir=str(tiny_set), num_points=64, normalization="global", val_fraction=0.2)
    kwargs = domain.checkpoint_kwargs()
    assert kwargs["class_names"] == ["box", "sphere"] and kwargs["global_frame"]["scale"] > 0
    rebuilt = PointCloudDomain(data_dir=str(tmp_path / "gone"), num_points=64, normalization="global", **kwargs)
    assert rebuilt.num_classes == 2 and rebuilt.class_names == ["box", "sphere"]
    x = domain.split("train").points[:2]
    np.testing.assert_allclose(rebuilt.decode(x), domain.decode(x), atol=1e-6)
    # global normalisation decodes to the data's units: spheres centred at 0 with radii 1, 2, ... 5
    spheres = domain.decode(domain.split("train").points[domain.split("train").labels == 1])
    radii = np.linalg.norm(spheres, axis=2).max(axis=1)
    assert np.all(np.abs(radii - np.round(radii)) < 0.1) and set(np.round(radii)) <= {1, 2, 3, 4, 5}
    unlabelled = PointCloudDomain(data_dir=str(tmp_path / "gone"), class_names=[])
    assert unlabelled.num_classes == 0 and unlabelled.checkpoint_kwargs() == {"class_names": []}


def test_class_names_must_match_the_folders(tiny_set):
    domain = PointCloudDomain(data_dir=str(tiny_set), num_points=16, class_names=["sphere", "box"])
    with pytest.raises(ValueError, match="class folders must match"):
        domain.split("train")


def test_split_is_stratified_and_deterministic(tiny_set):
    a = PointCloudDomain(data_dir=str(tiny_set), num_points=32, val_fraction=0.2, seed=4)
    b = PointCloudDomain(data_dir=str(tiny_set), num_points=32, val_fraction=0.2, seed=4)
    assert sorted(a.split("val").labels.tolist()) == [0, 1]
    torch.testing.assert_close(a.split("train").points, b.split("train").points)
    torch.testing.assert_close(a.split("val").points, b.split("val").points)


# ----------------------------------------------------------------------------------------------
# The procedural set


def test_procedural_shapes_are_deterministic_and_varied():
    for name in pc.PROCEDURAL_CLASSES:
        first, again = pc.procedural_shape(name, 0), pc.procedural_shape(name, 0)
        np.testing.assert_array_equal(first.vertices, again.vertices)
        other = pc.procedural_shape(name, 1)
        assert first.area > 0 and not np.allclose(first.extents, other.extents)
        assert not np.allclose(first.extents, pc.procedural_shape(name, 0, seed=1).extents)


@pytest.mark.parametrize("index", range(0, 40, 7))
def test_procedural_classes_have_their_characteristic_proportions(index):
    """Extents (x, y, z) with y up."""
    extents = {name: pc.procedural_shape(name, index).extents for name in pc.PROCEDURAL_CLASSES}
    x, y, z = extents["airplane"]
    assert y < min(x, z) / 2  # long, wide and flat
    for tall in ("lamp", "chair"):
        x, y, z = extents[tall]
        assert y > 1.2 * max(x, z)
    for wide in ("table", "mug"):
        x, y, z = extents[wide]
        assert x > y


def test_procedural_set_is_generated_once_and_cached(tmp_path):
    root = pc.procedural_dataset(3, seed=0, cache_dir=tmp_path)
    assert sorted(p.name for p in root.iterdir()) == sorted(pc.PROCEDURAL_CLASSES)
    assert all(len(list((root / c).glob("*.ply"))) == 3 for c in pc.PROCEDURAL_CLASSES)
    assert not any(p.name.startswith(".partial") for p in tmp_path.iterdir())
    stamp = (root / "mug" / "0000.ply").stat().st_mtime_ns
    assert pc.procedural_dataset(3, seed=0, cache_dir=tmp_path) == root
    assert (root / "mug" / "0000.ply").stat().st_mtime_ns == stamp
    assert pc.procedural_dataset(3, seed=1, cache_dir=tmp_path) != root


def test_default_domain_batches(tmp_path):
    domain = PointCloudDomain(num_points=64, shapes_per_class=4, cache_dir=str(tmp_path), val_fraction=0.25)
    assert domain.sample_shape == (64, 3) and domain.num_classes == 5
    assert domain.class_names == ["airplane", "chair", "lamp", "mug", "table"]
    dm = domain.datamodule(batch_size=5, seed=0)
    assert len(dm.train_set) == 15 and len(dm.val_set) == 5
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (5, 64, 3) and batch["x"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64
    torch.testing.assert_close(batch["x"].norm(dim=2).amax(dim=1), torch.ones(5))
    again = PointCloudDomain(num_points=64, shapes_per_class=4, cache_dir=str(tmp_path), val_fraction=0.25)
    torch.testing.assert_close(again.split("train").points, domain.split("train").points)


# ----------------------------------------------------------------------------------------------
# Pictures and files


def test_render_draws_near_points_darker_over_far_ones():
    # points given in view coordinates (x right, y up, z towards the viewer); VIEW is a rotation,
    # so v @ VIEW is the data point that the camera sees at v
    near, far = np.array([[0.0, 0.0, 0.5]]) @ pc.VIEW, np.array([[0.0, 0.0, -0.8]]) @ pc.VIEW
    image = pc.render_cloud(np.concatenate([far, near]), size=64)
    centre = image[31:34, 31:34].reshape(-1, 3)
    only_far = pc.render_cloud(far, size=64)[31:34, 31:34].reshape(-1, 3)
    assert centre.sum() < only_far.sum()
    assert image.shape == (64, 64, 3) and image.min() >= 0 and image.max() == 1
    assert (pc.render_cloud(np.zeros((0, 3)), size=16) == 1).all()
    assert (pc.render_cloud(np.array([[5.0, 5.0, 5.0]]), size=16) == 1).all()  # outside the frame


def test_save_writes_ply_png_npz_grid_and_strip(tmp_path):
    domain = PointCloudDomain(num_points=50, shapes_per_class=2, cache_dir=str(tmp_path / "cache"))
    x = torch.from_numpy(pc.normalize_shapes(np.stack([random_cloud(50, s) for s in range(3)]), "unit_sphere")).float()
    trajectory = torch.stack([x * 0, x * 0.5, x])
    paths = domain.save(x, tmp_path / "out", torch.tensor([0, 3, 4]), [7, 8, 9], trajectory=trajectory)
    names = {p.name for p in paths}
    assert {
        "000_airplane_seed7.ply",
        "001_mug_seed8.png",
        "samples.npz",
        "grid.png",
        "strip.png",
    } <= names
    cloud = trimesh.load(tmp_path / "out" / "002_table_seed9.ply")
    np.testing.assert_allclose(cloud.vertices, x[2].numpy(), atol=1e-6)
    saved = np.load(tmp_path / "out" / "samples.npz")
    np.testing.assert_allclose(saved["points"], x.numpy())
    assert saved["labels"].tolist() == [0, 3, 4] and saved["seeds"].tolist() == [7, 8, 9]
    render = np.asarray(Image.open(tmp_path / "out" / "000_airplane_seed7.png"))
    assert render.shape[:2] == (pc.RENDER_SIZE, pc.RENDER_SIZE) and (render < 200).any()
    assert all(p.exists() for p in paths)


def test_save_unconditional_and_preview(tmp_path):
    domain = PointCloudDomain(num_points=40, shapes_per_class=2, cache_dir=str(tmp_path / "cache"))
    x = torch.randn(2, 40, 3) * 0.3
    paths = domain.save(x, tmp_path / "out", None, [0, 1])
    assert np.load(tmp_path / "out" / "samples.npz")["labels"].tolist() == [-1, -1]
    assert "strip.png" not in {p.name for p in paths}
    preview = domain.preview(x, tmp_path / "preview.png", torch.tensor([1, 2]))
    assert Image.open(preview).size[0] >= 2 * 64


# ----------------------------------------------------------------------------------------------
# The network


@pytest.mark.parametrize("fourier_bands", [0, 4])
def test_network_is_permutation_equivariant(fourier_bands):
    net = perturbed(PointTransformer(num_classes=3, dim=32, depth=2, heads=4, fourier_bands=fourier_bands))
    x, t, label = torch.randn(2, 40, 3), torch.tensor([0.3, 0.8]), torch.tensor([1, 3])
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    out = net(x, t, label=label)
    assert out.abs().mean() > 1e-3
    torch.testing.assert_close(net(x[:, perm], t, label=label), out[:, perm], atol=1e-5, rtol=1e-4)


def test_fourier_features_resolve_small_offsets():
    net = PointTransformer(dim=32, depth=1, heads=2, fourier_bands=6)
    x = torch.zeros(1, 1, 3)
    near = x + torch.tensor([0.01, 0.0, 0.0])
    features, features_near = net.coordinate_features(x), net.coordinate_features(near)
    assert features.shape == (1, 1, 3 * 13)
    assert (features_near - features).abs().max() > 10 * 0.01  # the top octave moves ~2^5 pi times faster


def test_latent_attention_is_permutation_equivariant():
    net = perturbed(PointTransformer(num_classes=0, dim=32, depth=2, heads=2, num_latents=8))
    x, t = torch.randn(2, 40, 3), torch.tensor([0.1, 0.9])
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(net(x[:, perm], t), net(x, t)[:, perm], atol=1e-5, rtol=1e-4)


def test_network_starts_at_zero_and_conditions_on_time_and_class():
    net = PointTransformer(num_classes=3, dim=32, depth=1, heads=2)
    x = torch.randn(2, 16, 3)
    assert net(x, torch.rand(2)).abs().max() == 0
    net = perturbed(net)
    t = torch.tensor([0.5, 0.5])
    assert not torch.allclose(net(x, t, label=torch.tensor([0, 0])), net(x, t, label=torch.tensor([1, 1])))
    assert not torch.allclose(net(x, t), net(x, torch.tensor([0.1, 0.1])))
    torch.testing.assert_close(net(x, t), net(x, t, label=torch.tensor([3, 3])))  # None = null class


def test_network_samples_are_independent_and_deterministic():
    net = perturbed(PointTransformer(num_classes=0, dim=32, depth=2, heads=2))
    x, t = torch.randn(3, 24, 3), torch.rand(3)
    torch.testing.assert_close(net(x[1:2], t[1:2]), net(x, t)[1:2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net(x, t), net(x, t))


def test_sampling_with_the_network_is_seeded_per_sample():
    from toolkit.core import sampler
    from toolkit.core.denoiser import Denoiser

    sched = schedule.get("cosine")
    denoiser = Denoiser(perturbed(PointTransformer(num_classes=2, dim=16, depth=1, heads=2)), sched)
    labels = torch.tensor([0, 1, 2])
    batch = sampler.sample(denoiser, (3, 20, 3), sched, "dpmpp_2m", steps=4, seed=[5, 6, 7], cond={"label": labels})
    alone = sampler.sample(denoiser, (1, 20, 3), sched, "dpmpp_2m", steps=4, seed=[6], cond={"label": labels[1:2]})
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=1e-4)
    again = sampler.sample(denoiser, (3, 20, 3), sched, "dpmpp_2m", steps=4, seed=[5, 6, 7], cond={"label": labels})
    torch.testing.assert_close(again, batch)


def test_network_rejects_bad_input():
    net = PointTransformer(num_classes=2, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        net(torch.randn(2, 3, 10), torch.rand(2))
    with pytest.raises(ValueError, match="labels must be in"):
        net(torch.randn(2, 5, 3), torch.rand(2), label=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="divisible"):
        PointTransformer(dim=30, heads=4)


def test_domain_builds_network_from_config(tmp_path):
    domain = PointCloudDomain(
        num_points=32,
        cache_dir=str(tmp_path),
        net={
            "_target_": "toolkit.nets.point_transformer.PointTransformer",
            "dim": 32,
            "depth": 1,
            "heads": 2,
        },
    )
    net = domain.build_net()
    assert isinstance(net, PointTransformer) and net.num_classes == 5 and net.dim == 32
    assert net(torch.randn(2, 32, 3), torch.rand(2), label=torch.tensor([0, 5])).shape == (2, 32, 3)


def test_training_step_reduces_loss_on_one_batch():
    from toolkit.core import loss

    torch.manual_seed(0)
    net = PointTransformer(num_classes=0, dim=32, depth=2, heads=2)
    x0 = torch.from_numpy(pc.normalize_shapes(np.stack([random_cloud(64, s) for s in range(4)]), "unit_sphere")).float()
    sched = schedule.get("cosine")
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    t, noise = torch.rand(4, generator=gen), torch.randn(x0.shape, generator=gen)
    first = loss.diffusion_loss(net, x0, sched, t=t, noise=noise).item()
    for _ in range(80):
        opt.zero_grad()
        loss.diffusion_loss(net, x0, sched, t=t, noise=noise).backward()
        opt.step()
    assert loss.diffusion_loss(net, x0, sched, t=t, noise=noise).item() < 0.5 * first


# ----------------------------------------------------------------------------------------------
# Metrics


def grid_cloud(spacing: float = 1.0) -> torch.Tensor:
    axis = torch.arange(4, dtype=torch.float64) * spacing
    return torch.cartesian_prod(axis, axis, axis)  # 64 points, nearest neighbours 1 apart


def test_chamfer_of_identical_and_shifted_clouds():
    a = grid_cloud()[None]
    assert metrics.chamfer_distance(a, a).item() == 0
    shift = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    # each point's nearest neighbour is its own shifted copy: both means are |shift|^2
    expected = 2 * shift.square().sum().item()
    assert metrics.chamfer_distance(a, a + shift).item() == pytest.approx(expected, rel=1e-9)


def test_chamfer_hand_computed_with_different_sizes():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    b = torch.tensor([[[0.0, 0, 0], [0, 2, 0], [3, 0, 0]]])
    # a -> b: 0, 1 (mean 0.5); b -> a: 0, 4, 4 (mean 8/3)
    assert metrics.chamfer_distance(a, b).item() == pytest.approx(0.5 + 8 / 3, rel=1e-6)
    assert metrics.chamfer_distance(b, a).item() == pytest.approx(0.5 + 8 / 3, rel=1e-6)


def test_emd_of_permutation_and_shift():
    a = torch.from_numpy(random_cloud(40)).double()[None]
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    assert metrics.earth_movers_distance(a, a[:, perm]).item() == pytest.approx(0.0, abs=1e-12)
    shift = torch.tensor([0.3, 0.4, 0.0], dtype=torch.float64)
    # a rigid shift is matched point to itself (no other bijection is cheaper): distance |shift| = 0.5
    assert metrics.earth_movers_distance(a, a[:, perm] + shift).item() == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(ValueError, match="equal size"):
        metrics.earth_movers_distance(a, a[:, :10])


def test_emd_hand_computed():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    b = torch.tensor([[[1.0, 1, 0], [0, 1, 0]]])
    # best matching pairs points straight up: each moves 1
    assert metrics.earth_movers_distance(a, b).item() == pytest.approx(1.0)


def test_pairwise_matrix_matches_pair_by_pair():
    x = torch.randn(5, 30, 3)
    y = torch.randn(4, 20, 3)
    matrix = metrics.pairwise_distances(x, y, "cd", pairs_per_batch=3)
    expected = torch.stack([metrics.chamfer_distance(x[i : i + 1].expand(4, -1, -1), y) for i in range(5)])
    torch.testing.assert_close(matrix, expected)


def test_mmd_and_cov_on_hand_made_matrix():
    # 3 generated shapes x 4 reference shapes
    gen_ref = torch.tensor(
        [
            [1.0, 5.0, 9.0, 9.0],
            [2.0, 4.0, 9.0, 9.0],
            [3.0, 3.0, 9.0, 7.0],
        ]
    )
    assert metrics.minimum_matching_distance(gen_ref) == pytest.approx((1 + 3 + 9 + 7) / 4)
    # nearest references: 0, 0, then 0 or 1 (tie; first index) -> one reference of four covered
    assert metrics.coverage(gen_ref) == pytest.approx(1 / 4)


def test_set_metrics_on_tiny_sets_with_known_answers():
    base = grid_cloud()
    reference = torch.stack([base, base + 10, base + 20])
    generated = torch.stack([base + 0.1, base + 0.1 + 10, base + 0.1 + 10.2])  # misses the 3rd shape
    result = metrics.set_metrics(generated, reference)
    assert result["cov-cd"] == pytest.approx(2 / 3)
    expected_mmd = (2 * 3 * 0.01 + 2 * 3 * 0.01 + metrics.chamfer_distance(generated[2:], reference[2:]).item()) / 3
    assert result["mmd-cd"] == pytest.approx(expected_mmd, rel=1e-6)


def test_one_nna_extremes_and_identical_sets():
    base = grid_cloud(0.2)
    shapes = torch.stack([base * (1 + 0.1 * i) for i in range(6)])
    identical = metrics.set_metrics(shapes, shapes.clone())
    assert identical["mmd-cd"] == 0 and identical["cov-cd"] == 1
    # each shape's nearest neighbour is its twin in the other set: every classification is wrong
    assert identical["1nna-cd"] == 0
    apart = metrics.set_metrics(shapes, shapes + 5)
    assert apart["1nna-cd"] == 1


def test_one_nna_near_half_for_two_samples_of_one_distribution():
    gen = torch.Generator().manual_seed(0)
    sphere = torch.randn(64, 3, generator=gen)
    sphere = sphere / sphere.norm(dim=1, keepdim=True)

    def draw(n):
        scales = 0.5 + torch.rand(n, 1, 1, generator=gen)
        return sphere[None] * scales + 0.02 * torch.randn(n, 64, 3, generator=gen)

    result = metrics.set_metrics(draw(40), draw(40))
    assert 0.3 <= result["1nna-cd"] <= 0.7
    assert result["cov-cd"] > 0.4


def test_set_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.set_metrics(torch.randn(1, 10, 3), torch.randn(3, 10, 3))
    with pytest.raises(ValueError, match="unknown distance"):
        metrics.pairwise_distances(torch.randn(2, 10, 3), torch.randn(2, 10, 3), "hausdorff")


def test_emd_set_metrics_agree_with_cd_on_separated_sets():
    base = grid_cloud(0.5)[:27]
    reference = torch.stack([base, base + 3])
    generated = torch.stack([base + 0.05, base + 3.05])
    result = metrics.set_metrics(generated, reference, distance="emd")
    assert result["cov-emd"] == 1
    assert result["mmd-emd"] == pytest.approx(math.sqrt(3 * 0.05**2), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# The quality benchmark (its metric part; the checkpoint loading needs a trained module)


def test_benchmark_class_matched_floor_subset():
    bench = load_benchmark("pointcloud_quality")
    points = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 2, 3)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    picked = bench.class_matched_subset(points, labels, torch.tensor([1, 0, 1, 0, 2, 2]))
    picked_labels = labels[picked[:, 0, 0].long()]
    assert picked_labels.tolist() == [1, 0, 1, 0, 2, 2]
    assert picked[0, 0, 0] != picked[2, 0, 0] and picked[1, 0, 0] != picked[3, 0, 0]
    with pytest.raises(ValueError, match="class 3"):
        bench.class_matched_subset(points, labels, torch.tensor([3]))


def test_benchmark_end_to_end_with_a_stand_in_denoiser(tmp_path):
    """A denoiser that always answers with one held-out shape: its samples all equal that shape
    (every sampler ends on the denoiser's answer), so COV is 1 / n and the rows are consistent."""
    from omegaconf import OmegaConf

    from toolkit.config import compose_config
    from toolkit.module import DiffusionModule

    bench = load_benchmark("pointcloud_quality")
    overrides = ["domain=pointcloud", "domain.num_points=32", "domain.shapes_per_class=5", "domain.val_fraction=0.4"]
    overrides += [f"domain.cache_dir={tmp_path}", "domain.net.dim=16", "domain.net.depth=1", "domain.net.heads=2"]
    config = OmegaConf.to_container(compose_config([*overrides, "schedule=cosine"]), resolve=True)
    module = DiffusionModule(config)
    target = module.domain.split("val").points[0]
    module.denoiser = lambda: lambda x_t, t, label=None: target.expand_as(x_t)

    rows, n_ref = bench.run_benchmark(module, ["ddim", "heun"], [4], batch_size=3, log=lambda _: None)
    assert n_ref == 10 and [r.name for r in rows] == ["floor: train vs held-out", "ddim", "heun"]
    for row in rows[1:]:
        assert row.metrics["cov-cd"] == pytest.approx(1 / n_ref)
        assert row.metrics["1nna-cd"] >= 0.5
    assert rows[1].steps == 4 and rows[2].steps == 2  # Heun spends two evaluations per step but the last
    # The floor row is training shapes: all copies, at distance 0 from the training set.
    assert rows[0].metrics["copies"] == 1.0 and rows[0].metrics["nn-ratio"] == 0.0
    report = "\n".join(bench.report(rows, n_ref, ["- Data: test"]))
    assert "| ddim | 4 | 4 |" in report and "| heun | 4 | 2 |" in report and "floor" in report


def test_hydra_config_builds_the_domain_and_network(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "domain" / "pointcloud.yaml")
    assert cfg.trainer.max_steps > 0 and cfg.data.batch_size > 0
    cfg.domain.cache_dir, cfg.domain.shapes_per_class = str(tmp_path), 2
    domain = instantiate(cfg.domain, _recursive_=False, _convert_="all")
    assert isinstance(domain, PointCloudDomain) and domain.sample_shape == (cfg.domain.num_points, 3)
    net = domain.build_net()
    assert net(torch.randn(2, 16, 3), torch.rand(2), label=torch.tensor([0, 4])).shape == (2, 16, 3)


def test_benchmark_cli_on_an_untrained_checkpoint(tmp_path):

    overrides = [
        "domain=pointcloud",
        "domain.num_points=32",
        "domain.shapes_per_class=4",
        "domain.val_fraction=0.5",
        f"domain.cache_dir={tmp_path / 'cache'}",
        "domain.net.dim=16",
        "domain.net.depth=1",
        "domain.net.heads=2",
    ]
    ckpt = save_untrained_checkpoint(tmp_path / "untrained.ckpt", overrides)

    out = tmp_path / "pointcloud.md"
    argv = ["--ckpt", str(ckpt), "--samplers", "ddim", "euler", "--nfe", "2", "--batch-size", "4", "--out", str(out)]
    assert load_benchmark("pointcloud_quality").main(argv) == out
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| floor", "| ddim", "| euler"))]
    assert len(rows) == 3 and "Reproduce: `python benchmarks/pointcloud_quality.py --ckpt" in out.read_text()
    assert all(math.isfinite(float(row.split(" | ")[3])) for row in rows)
