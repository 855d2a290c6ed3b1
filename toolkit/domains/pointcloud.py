"""3D shapes as point clouds: meshes and point clouds in, PLY point clouds and renders out.

Data. ``data_dir`` is a folder of files trimesh reads: OBJ, PLY, STL, OFF, GLB. Sub-folders are
classes (sorted by name; each one's files are searched recursively); a folder with files and no
sub-folders is one unlabelled set (unconditional model). Material, texture, metadata and text
files next to the shapes are ignored (``COMPANION_FILES``); any other file is an error. Meshes
are sampled to ``num_points`` points uniformly over their surface (area-weighted,
``trimesh.sample.sample_surface``). A PLY without faces is a point cloud and is taken as it is:
with more than ``num_points`` points a random subset (without replacement) is kept; one with fewer
is an error naming the file, unless ``repeat_points=True`` allows padding it with randomly repeated
points (with replacement). Both draws are seeded by ``seed`` and the file's relative path, so they
do not depend on the other files. Without ``data_dir``, a
procedural set of five classes (airplane, chair, lamp, mug, table) built from trimesh primitives
is generated on first use and cached as PLY meshes; ``source="procedural_captioned"`` caches the
same meshes in one folder with captions made from their drawn parameters ("a tall lamp with a wide
shade"; ``captioned_procedural_dataset``). A ``data_dir`` holding ``metadata.jsonl`` or
``metadata.csv`` is captioned (``toolkit.domains.captions``).

Normalisation (published metrics depend on it), per ``normalization``:

- ``unit_sphere``: per shape, centre at the centre of the bounding box of its points, then scale so
  that the farthest point lies at radius 1.
- ``bbox``: per shape, centre at the bounding-box centre, then scale so that the longest side spans
  [-1, 1] (aspect ratio kept; every point in [-1, 1]^3).
- ``global``: one centre and scale for the whole set, from the training split: the mean of all
  training points and the largest distance of a training point from it, so that training shapes
  lie in the unit ball and keep their relative sizes. Validation shapes use the same centre/scale.

Model space is ``[num_points, 3]`` float32 in that normalised frame; ``decode`` returns it as numpy
(samples are not mapped back to any one source file's frame). Coordinates are y-up (ShapeNet and
glTF convention), which the fixed viewpoint of the renders assumes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor, nn

from toolkit import viz
from toolkit.domains.base import Domain
from toolkit.domains.captions import HELD_OUT_FILE, PARAPHRASES_FILE, captions_of, write_jsonl
from toolkit.domains.data import (
    NOTE_SUFFIXES,
    TensorDictDataModule,
    check_class_names,
    check_val_fraction,
    keep_captioned,
    scan_class_folders,
    split_indices,
)

SUPPORTED_FORMATS = (".obj", ".ply", ".stl", ".off", ".glb")
COMPANION_FILES = (".mtl", ".png", ".jpg", ".jpeg", ".bmp", ".tga", ".tif", ".tiff", *NOTE_SUFFIXES)
NORMALIZATIONS = ("unit_sphere", "bbox", "global")
PROCEDURAL_VERSION = 1
PROCEDURAL_SOURCES = ("procedural", "procedural_captioned")
RENDER_SIZE = 128
STRIP_RENDER_SIZE = 96
DEFAULT_NET = {"_target_": "toolkit.nets.point_transformer.PointTransformer"}
NEAR_COLOUR = np.array([24, 52, 128]) / 255
FAR_COLOUR = np.array([176, 204, 236]) / 255


# ----------------------------------------------------------------------------------------------
# Reading shapes


def load_geometry(path: Path) -> trimesh.Trimesh | trimesh.PointCloud:
    """Read one file into a checked triangle mesh or (PLY only) point cloud; raise ValueError with
    the reason when the file cannot serve as a shape."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        raise ValueError(f"{path}: unsupported format {suffix or '(none)'!r}; convert it to one of {SUPPORTED_FORMATS}")
    kind = suffix[1:].upper()
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes); remove it or export the shape again")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as err:
        raise ValueError(f"{path}: could not be parsed as {kind} ({err}); export the shape again") from err
    if isinstance(loaded, trimesh.Scene):
        if not loaded.geometry:
            if suffix == ".stl" and not looks_like_stl(path):
                raise ValueError(
                    f"{path}: could not be parsed as STL: it is neither ASCII STL (starting with 'solid') nor "
                    "binary STL (an 84-byte header, then 50 bytes per triangle); export the shape again"
                )
            raise ValueError(f"{path}: empty file, it holds no geometry (or nothing trimesh could read as {kind})")
        loaded = loaded.to_geometry()
    if not isinstance(loaded, trimesh.Trimesh | trimesh.PointCloud):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a mesh or point cloud")
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ValueError(f"{path}: empty mesh, it has no vertices")
    if not np.isfinite(vertices).all():
        raise ValueError(f"{path}: has NaN or infinite vertex coordinates; repair or remove the file")
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))))
    if len(faces) == 0:
        if suffix != ".ply":
            raise ValueError(
                f"{path}: mesh has no faces, so there is no surface to sample; store point clouds as PLY without faces"
            )
        return trimesh.PointCloud(vertices)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"{path}: faces refer to vertices that do not exist")
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    if not mesh.area > 0:
        raise ValueError(f"{path}: all faces have zero area, so there is no surface to sample")
    return mesh


def looks_like_stl(path: Path) -> bool:
    """Whether a file has the form of ASCII STL (text starting with ``solid``) or binary STL (an
    80-byte header, a triangle count, 50 bytes per triangle)."""
    with Path(path).open("rb") as file:
        head = file.read(84)
    if head.lstrip().lower().startswith(b"solid"):
        return True
    size = Path(path).stat().st_size
    return len(head) == 84 and size == 84 + 50 * int.from_bytes(head[80:84], "little")


def read_points(path: Path, num_points: int, seed: int | list[int], repeat_points: bool = False) -> np.ndarray:
    """One file as ``num_points`` points [N, 3] (see ``sample_points``). A point cloud with fewer
    points is an error naming the file, unless ``repeat_points`` allows padding it."""
    geometry = load_geometry(path)
    count = len(geometry.vertices)
    if isinstance(geometry, trimesh.PointCloud) and count < num_points and not repeat_points:
        raise ValueError(
            f"{path}: point cloud has {count} points but num_points={num_points} needs at least {num_points}; "
            "use denser clouds, lower domain.num_points, or set domain.repeat_points=true to pad clouds "
            "with repeated points"
        )
    return sample_points(geometry, num_points, seed)


def sample_points(geometry: trimesh.Trimesh | trimesh.PointCloud, num_points: int, seed: int | list[int]) -> np.ndarray:
    """``num_points`` points [N, 3]: area-weighted surface samples of a mesh, or a seeded subset /
    padding (repeated points) of a point cloud."""
    rng = np.random.default_rng(seed)
    if isinstance(geometry, trimesh.Trimesh):
        points, _ = trimesh.sample.sample_surface(geometry, num_points, seed=rng)
        return np.asarray(points, dtype=np.float64)
    vertices = np.asarray(geometry.vertices, dtype=np.float64)
    if len(vertices) >= num_points:
        return vertices[np.sort(rng.choice(len(vertices), num_points, replace=False))]
    extra = rng.choice(len(vertices), num_points - len(vertices), replace=True)
    return np.concatenate([vertices, vertices[extra]])


def list_shape_files(data_dir: Path) -> tuple[list[str] | None, list[tuple[Path, int]]]:
    """Class names (None for a flat, unlabelled folder) and ``(file, label)`` pairs, sorted (see
    ``scan_class_folders``; material, texture and note files are ignored)."""
    files, labels, names = scan_class_folders(
        data_dir,
        SUPPORTED_FORMATS,
        conditional=False,
        what="shape files",
        setting="domain.data_dir",
        ignored=COMPANION_FILES,
    )
    return names or None, list(zip(files, labels, strict=True))


def path_seed(seed: int, relative_path: str) -> list[int]:
    """A seed for one file that depends on the run seed and the file's path only."""
    return [seed, zlib.crc32(relative_path.encode())]


# ----------------------------------------------------------------------------------------------
# Normalisation


def normalize_shapes(points: np.ndarray, mode: str) -> np.ndarray:
    """Per-shape normalisation of [n, N, 3] (``unit_sphere`` or ``bbox``; see the module docstring)."""
    low, high = points.min(axis=1, keepdims=True), points.max(axis=1, keepdims=True)
    centred = points - (low + high) / 2
    if mode == "unit_sphere":
        scale = np.linalg.norm(centred, axis=2).max(axis=1)
    elif mode == "bbox":
        scale = ((high - low) / 2).max(axis=2)[:, 0]
    else:
        raise ValueError(f"unknown per-shape normalization {mode!r}; choose 'unit_sphere' or 'bbox'")
    if (scale <= 0).any():
        raise ValueError(f"{int((scale <= 0).sum())} shape(s) collapse to a single point and cannot be normalised")
    return centred / scale[:, None, None]


def fit_global_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (mean of all points) and scale (largest distance from it) of a set [n, N, 3]."""
    centre = points.reshape(-1, 3).mean(axis=0)
    scale = float(np.linalg.norm(points - centre, axis=2).max())
    if scale <= 0:
        raise ValueError("all training points coincide; the set cannot be normalised")
    return centre, scale


# ----------------------------------------------------------------------------------------------
# The procedural default data set (z-up while building, rotated to y-up at the end)

PROCEDURAL_CLASSES = ("airplane", "chair", "lamp", "mug", "table")
Z_UP_TO_Y_UP = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])


def _box(extents, centre, angle_z: float = 0.0) -> trimesh.Trimesh:
    transform = trimesh.transformations.rotation_matrix(angle_z, [0, 0, 1])
    transform[:3, 3] = centre
    return trimesh.creation.box(extents=extents, transform=transform)


def _cylinder(radius: float, height: float, centre, axis=(0, 0, 1), sections: int = 20) -> trimesh.Trimesh:
    transform = trimesh.geometry.align_vectors([0, 0, 1], axis)
    transform[:3, 3] = centre
    return trimesh.creation.cylinder(radius=radius, height=height, sections=sections, transform=transform)


def _chair(rng: np.random.Generator) -> tuple[list[trimesh.Trimesh], dict]:
    width, depth = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.1)
    seat_height, seat_thickness = rng.uniform(0.8, 1.1), rng.uniform(0.06, 0.14)
    leg, back_height = rng.uniform(0.05, 0.11), rng.uniform(0.7, 1.4)
    parts = [_box([width, depth, seat_thickness], [0, 0, seat_height])]
    round_legs = bool(rng.random() < 0.5)
    for sx in (-1, 1):
        for sy in (-1, 1):
            centre = [sx * (width / 2 - leg), sy * (depth / 2 - leg), seat_height / 2]
            parts.append(
                _cylinder(leg / 2, seat_height, centre) if round_legs else _box([leg, leg, seat_height], centre)
            )
    back_centre = [0, depth / 2 - seat_thickness / 2, seat_height + back_height / 2]
    parts.append(_box([width, seat_thickness, back_height], back_centre))
    armrests = bool(rng.random() < 0.4)
    if armrests:
        arm_height = rng.uniform(0.2, 0.35)
        for sx in (-1, 1):
            parts.append(_box([leg, depth, leg], [sx * (width / 2 - leg / 2), 0, seat_height + arm_height]))
            parts.append(
                _box(
                    [leg, leg, arm_height],
                    [sx * (width / 2 - leg / 2), -depth / 2 + leg, seat_height + arm_height / 2],
                )
            )
    drawn = dict(width=width, depth=depth, seat_height=seat_height, back_height=back_height, leg=leg)
    return parts, {**drawn, "round_legs": round_legs, "armrests": armrests}


def _table(rng: np.random.Generator) -> tuple[list[trimesh.Trimesh], dict]:
    height, top_thickness = rng.uniform(0.9, 1.3), rng.uniform(0.05, 0.12)
    top_z = height - top_thickness / 2
    if rng.random() < 0.4:
        radius = rng.uniform(0.6, 1.0)
        pole = rng.uniform(0.06, 0.12)
        foot = rng.uniform(0.3, 0.6) * radius
        parts = [
            _cylinder(radius, top_thickness, [0, 0, top_z], sections=32),
            _cylinder(pole, height, [0, 0, height / 2]),
            _cylinder(foot, 0.06, [0, 0, 0.03], sections=32),
        ]
        return parts, dict(height=height, top_thickness=top_thickness, round=True, radius=radius, pole=pole)
    width, depth, leg = rng.uniform(1.4, 2.4), rng.uniform(0.8, 1.3), rng.uniform(0.06, 0.12)
    parts = [_box([width, depth, top_thickness], [0, 0, top_z])]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box([leg, leg, height], [sx * (width / 2 - leg), sy * (depth / 2 - leg), height / 2]))
    return parts, dict(height=height, top_thickness=top_thickness, round=False, width=width, depth=depth, leg=leg)


def _lamp(rng: np.random.Generator) -> tuple[list[trimesh.Trimesh], dict]:
    base_radius, base_height = rng.uniform(0.25, 0.45), rng.uniform(0.05, 0.12)
    pole_height, pole_radius = rng.uniform(1.0, 2.0), rng.uniform(0.02, 0.05)
    shade_radius, shade_height = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6)
    top = base_height + pole_height
    parts = [
        _cylinder(base_radius, base_height, [0, 0, base_height / 2], sections=32),
        _cylinder(pole_radius, pole_height, [0, 0, base_height + pole_height / 2]),
    ]
    cone_shade = bool(rng.random() < 0.5)
    if cone_shade:
        cone = trimesh.creation.cone(radius=shade_radius, height=shade_height * 1.6, sections=32)
        cone.apply_translation([0, 0, top - shade_height / 2])
        parts.append(cone)
    else:
        shade = trimesh.creation.annulus(
            r_min=shade_radius * 0.92, r_max=shade_radius, height=shade_height, sections=32
        )
        shade.apply_translation([0, 0, top])
        parts.append(shade)
    parts.append(trimesh.creation.icosphere(subdivisions=1, radius=pole_radius * 2.5).apply_translation([0, 0, top]))
    drawn = dict(base_radius=base_radius, base_height=base_height, pole_height=pole_height, pole_radius=pole_radius)
    return parts, {**drawn, "shade_radius": shade_radius, "shade_height": shade_height, "cone_shade": cone_shade}


def _mug(rng: np.random.Generator) -> tuple[list[trimesh.Trimesh], dict]:
    radius, height = rng.uniform(0.4, 0.6), rng.uniform(0.7, 1.2)
    wall = rng.uniform(0.04, 0.08)
    body = trimesh.creation.annulus(r_min=radius - wall, r_max=radius, height=height, sections=40)
    body.apply_translation([0, 0, height / 2])
    bottom = _cylinder(radius, wall, [0, 0, wall / 2], sections=40)
    handle_radius, handle_thickness = rng.uniform(0.22, 0.32) * height, rng.uniform(0.04, 0.07)
    handle = trimesh.creation.torus(
        major_radius=handle_radius, minor_radius=handle_thickness, major_sections=24, minor_sections=8
    )
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle.apply_translation([radius, 0, height * rng.uniform(0.45, 0.6)])
    drawn = dict(radius=radius, height=height, wall=wall, handle_radius=handle_radius)
    return [body, bottom, handle], {**drawn, "handle_thickness": handle_thickness}


def _airplane(rng: np.random.Generator) -> tuple[list[trimesh.Trimesh], dict]:
    length, body_radius = rng.uniform(2.5, 3.5), rng.uniform(0.14, 0.24)
    span, chord, sweep = rng.uniform(2.4, 3.8), rng.uniform(0.4, 0.7), rng.uniform(0.0, 0.5)
    fuselage = trimesh.creation.capsule(height=length - 2 * body_radius, radius=body_radius, count=[16, 16])
    fuselage.apply_transform(trimesh.geometry.align_vectors([0, 0, 1], [1, 0, 0]))
    parts = [fuselage]
    wing_x = rng.uniform(-0.2, 0.3)
    for side in (-1, 1):
        half = span / 2
        parts.append(
            _box([chord, half, 0.05], [wing_x - sweep * half / 2, side * half / 2, 0], -side * np.arctan(sweep))
        )
    tail_x, tail_span = -length / 2 + chord * 0.3, span * rng.uniform(0.25, 0.4)
    parts.append(_box([chord * 0.6, tail_span, 0.04], [tail_x, 0, 0]))
    fin_height = rng.uniform(0.35, 0.6)
    parts.append(_box([chord * 0.7, 0.04, fin_height], [tail_x, 0, fin_height / 2 + body_radius * 0.5]))
    engines = bool(rng.random() < 0.6)
    if engines:
        for side in (-1, 1):
            offset = rng.uniform(0.25, 0.4) * span
            parts.append(_cylinder(0.09, 0.5, [wing_x - sweep * offset + 0.15, side * offset, -0.12], axis=(1, 0, 0)))
    drawn = dict(length=length, body_radius=body_radius, span=span, chord=chord, sweep=sweep, fin_height=fin_height)
    return parts, {**drawn, "engines": engines}


# Each builder draws a shape's parameters from ``rng`` and returns its parts and the parameters drawn.
PROCEDURAL_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[list[trimesh.Trimesh], dict]]] = {
    "airplane": _airplane,
    "chair": _chair,
    "lamp": _lamp,
    "mug": _mug,
    "table": _table,
}


def procedural_shape_and_parameters(class_name: str, index: int, seed: int = 0) -> tuple[trimesh.Trimesh, dict]:
    """Shape ``index`` of a procedural class, y-up, with the parameters its builder drew; the same
    (class, index, seed) gives the same mesh."""
    if class_name not in PROCEDURAL_BUILDERS:
        raise ValueError(f"unknown procedural class {class_name!r}; choose one of {PROCEDURAL_CLASSES}")
    rng = np.random.default_rng([seed, PROCEDURAL_CLASSES.index(class_name), index])
    parts, parameters = PROCEDURAL_BUILDERS[class_name](rng)
    mesh = trimesh.util.concatenate(parts)
    mesh.apply_transform(Z_UP_TO_Y_UP)
    return mesh, parameters


def procedural_shape(class_name: str, index: int, seed: int = 0) -> trimesh.Trimesh:
    """Shape ``index`` of a procedural class, y-up; the same (class, index, seed) gives the same mesh."""
    return procedural_shape_and_parameters(class_name, index, seed)[0]


# ----------------------------------------------------------------------------------------------
# The captioned procedural set: captions from attributes measurable in a (normalised) cloud

# Per class, the attributes a caption may name; ``height`` and ``width`` are the classes' proportions
# split at their terciles within the set (the middle third unmentioned), ``part`` a drawn part.
#   height: bounding-box height over the larger horizontal side (chair, lamp, mug, table)
#   width:  lamp shade diameter over the lamp's height; airplane wing span over its length
#   part:   chair armrests or none, table round (one pole) or four legs, airplane engines or none, mug handle
CAPTION_WORDS = {"height": ("short", "tall"), "width": ("narrow", "wide")}
# Attribute combinations kept out of training (listed in held_out.jsonl): each value is seen in
# training, only not together.
HELD_OUT_SHAPES = (
    {"shape": "chair", "height": "tall", "part": "armrests"},
    {"shape": "table", "height": "short", "part": "round"},
    {"shape": "lamp", "height": "tall", "width": "wide"},
    {"shape": "airplane", "width": "wide", "part": "no engines"},
)
SHAPE_TEMPLATES = ("{shape}", "a 3d model of {shape}", "a point cloud of {shape}")
# Wordings kept out of the captions (paraphrases.jsonl): other words for every attribute.
SHAPE_PARAPHRASES = ("{shape}", "a shape of {shape}")
SYNONYMS = {
    "tall": "high",
    "short": "low",
    "wide": "broad",
    "narrow": "slender",
    "round": "circular",
    "armrests": "arms",
    "engines": "jet engines",
    "four legs": "four supports",
    "handle": "grip",
}
PARAPHRASE_LINK = "that has"


def shape_measures(class_name: str, mesh: trimesh.Trimesh, parameters: dict) -> dict:
    """The proportions (``height``, ``width``; absent where a class has none) and ``part`` of one shape."""
    x, y, z = mesh.extents
    measures = {} if class_name == "airplane" else {"height": y / max(x, z)}
    if class_name == "lamp":
        measures["width"] = 2 * parameters["shade_radius"] / y
    if class_name == "airplane":
        measures["width"] = parameters["span"] / parameters["length"]
    part = {
        "chair": "armrests" if parameters.get("armrests") else "no armrests",
        "table": "round" if parameters.get("round") else "four legs",
        "airplane": "engines" if parameters.get("engines") else "no engines",
        "mug": "handle",
    }.get(class_name)
    return {**measures, "part": part}


def tercile_words(values: np.ndarray, words: tuple[str, str]) -> list[str]:
    """``words[0]`` for the lowest third of ``values``, ``words[1]`` for the highest, "" between."""
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    return [words[0] if v < low else words[1] if v > high else "" for v in values]


def shape_phrase(attributes: dict, synonyms: dict | None = None, link: str = "with") -> str:
    """``a tall lamp with a wide shade``: a noun phrase naming a shape's attributes."""
    synonyms = synonyms or {}
    word = lambda w: synonyms.get(w, w)  # noqa: E731
    adjectives = [word(attributes["height"])] if attributes.get("height") else []
    extras = []
    part = attributes.get("part") or ""
    if part == "round":
        adjectives.append(word(part))
    width = attributes.get("width")
    if width:
        extras.append(f"a {word(width)} shade" if attributes["shape"] == "lamp" else f"{word(width)} wings")
    if part.startswith("no "):
        extras.append(f"no {word(part[3:])}")
    elif part == "handle":
        extras.append(f"a {word(part)}")
    elif part and part != "round":
        extras.append(word(part))
    noun = " ".join([*adjectives, attributes["shape"]])
    article = "an" if noun[0] in "aeiou" else "a"
    return f"{article} {noun}" + (f" {link} {' and '.join(extras)}" if extras else "")


def is_held_out(attributes: dict, combinations=HELD_OUT_SHAPES) -> bool:
    return any(all(attributes.get(k) == v for k, v in combination.items()) for combination in combinations)


def procedural_captions(shapes_per_class: int, seed: int = 0) -> list[dict]:
    """One row per shape of the procedural set (``file_name``, ``text``, ``shape``, ``height``,
    ``width``, ``part``, ``held_out``), captions rotating through ``SHAPE_TEMPLATES``."""
    rows = []
    for class_index, class_name in enumerate(PROCEDURAL_CLASSES):
        measures = [
            shape_measures(class_name, *procedural_shape_and_parameters(class_name, i, seed))
            for i in range(shapes_per_class)
        ]
        words = {
            key: tercile_words(np.array([m[key] for m in measures]), CAPTION_WORDS[key])
            for key in CAPTION_WORDS
            if key in measures[0]
        }
        for i, measure in enumerate(measures):
            attributes = {"shape": class_name, "height": "", "width": "", "part": measure["part"] or ""}
            attributes.update({key: values[i] for key, values in words.items()})
            template = SHAPE_TEMPLATES[(class_index + i) % len(SHAPE_TEMPLATES)]
            text = template.format(shape=shape_phrase(attributes))
            rows.append(
                {
                    "file_name": f"{class_name}_{i:04d}.ply",
                    "text": text,
                    **attributes,
                    "held_out": is_held_out(attributes),
                }
            )
    return rows


def shape_paraphrases(rows: list[dict]) -> list[dict]:
    """Every attribute combination of ``rows`` in the wordings kept out of the captions."""
    keys = ("shape", "height", "width", "part")
    combinations = sorted({tuple(row[k] for k in keys) for row in rows})
    out = []
    for combination in combinations:
        attributes = dict(zip(keys, combination, strict=True))
        phrase = shape_phrase(attributes, SYNONYMS, PARAPHRASE_LINK)
        for template in SHAPE_PARAPHRASES:
            out.append({"text": template.format(shape=phrase), **attributes, "held_out": is_held_out(attributes)})
    return out


# ----------------------------------------------------------------------------------------------
# The procedural sets on disk (cached)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "toolkit" / "pointcloud"


def write_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """``target`` as ``fill(folder)`` writes it, unless it exists. It is written to a temporary folder
    and renamed into place, so a half-written set is never seen, even with several processes at once."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        fill(staging)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def procedural_folder(kind: str, shapes_per_class: int, seed: int, cache_dir: str | Path | None) -> Path:
    """The cache folder of a procedural set: ``<kind>-v<version>-seed<seed>-n<shapes_per_class>``."""
    if shapes_per_class < 1:
        raise ValueError(f"shapes_per_class must be >= 1, got {shapes_per_class}")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / f"{kind}-v{PROCEDURAL_VERSION}-seed{seed}-n{shapes_per_class}"


def procedural_dataset(shapes_per_class: int, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """The folder of the procedural set (one sub-folder of PLY meshes per class), generated on
    first use (``write_once``)."""

    def fill(staging: Path) -> None:
        for class_name in PROCEDURAL_CLASSES:
            (staging / class_name).mkdir()
            for i in range(shapes_per_class):
                procedural_shape(class_name, i, seed).export(staging / class_name / f"{i:04d}.ply")

    return write_once(procedural_folder("procedural", shapes_per_class, seed, cache_dir), fill)


def captioned_procedural_dataset(shapes_per_class: int, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """The folder of the captioned procedural set, generated on first use: the same meshes as
    ``procedural_dataset``, all in one folder (``chair_0007.ply``: no class labels, the caption names
    the shape), with ``metadata.jsonl`` (captions and attributes of the training shapes),
    ``held_out.jsonl`` (the shapes of ``HELD_OUT_SHAPES``) and ``paraphrases.jsonl``."""

    def fill(staging: Path) -> None:
        for class_name in PROCEDURAL_CLASSES:
            for i in range(shapes_per_class):
                procedural_shape(class_name, i, seed).export(staging / f"{class_name}_{i:04d}.ply")
        rows = procedural_captions(shapes_per_class, seed)
        for name, held_out in (("metadata.jsonl", False), (HELD_OUT_FILE, True)):
            write_jsonl(
                staging / name,
                [{k: v for k, v in r.items() if k != "held_out"} for r in rows if r["held_out"] == held_out],
            )
        write_jsonl(staging / PARAPHRASES_FILE, shape_paraphrases(rows))

    return write_once(procedural_folder("procedural-captioned", shapes_per_class, seed, cache_dir), fill)


# ----------------------------------------------------------------------------------------------
# Pictures


def view_rotation(azimuth_deg: float = 35.0, elevation_deg: float = 25.0) -> np.ndarray:
    """Rotation [3, 3] of the fixed camera: turn about the up axis (y), then tilt towards the viewer."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    turn = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return tilt @ turn


VIEW = view_rotation()


def render_cloud(points: np.ndarray, size: int = RENDER_SIZE, extent: float = 1.0) -> np.ndarray:
    """Render [N, 3] points as depth-shaded dots: RGB floats in [0, 1], [size, size, 3], on white.

    Orthographic projection after the fixed rotation ``VIEW``; the square [-extent, extent]^2 (plus
    a 5% margin) fills the picture, points outside it are cut. Each dot is a small disc; where dots
    overlap the nearest wins (a z-buffer), and nearer points are darker.
    """
    points = np.asarray(points, dtype=np.float64)
    image = np.ones((size * size, 3), dtype=np.float32)
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) == 0:
        return image.reshape(size, size, 3)
    rotated = points @ VIEW.T
    half = (size - 1) / 2
    scale = half / (1.05 * extent)
    rows = np.rint(half - rotated[:, 1] * scale).astype(np.int64)
    cols = np.rint(half + rotated[:, 0] * scale).astype(np.int64)
    depth = rotated[:, 2]
    nearness = np.clip((depth / extent + 1) / 2, 0, 1)[:, None]
    colours = (FAR_COLOUR + nearness * (NEAR_COLOUR - FAR_COLOUR)).astype(np.float32)

    radius = max(1, round(size / 110))
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = dy**2 + dx**2 <= radius**2 + radius / 2
    dot_rows = (rows[:, None] + dy[disc][None]).ravel()
    dot_cols = (cols[:, None] + dx[disc][None]).ravel()
    owner = np.repeat(np.arange(len(points)), disc.sum())
    inside = (dot_rows >= 0) & (dot_rows < size) & (dot_cols >= 0) & (dot_cols < size)
    pixel, owner = dot_rows[inside] * size + dot_cols[inside], owner[inside]
    if len(pixel) == 0:
        return image.reshape(size, size, 3)
    order = np.lexsort((depth[owner], pixel))
    nearest = order[np.r_[pixel[order][1:] != pixel[order][:-1], True]]
    image[pixel[nearest]] = colours[owner[nearest]]
    return image.reshape(size, size, 3)


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class PointSet:
    """Normalised clouds [n, N, 3] with their labels [n] (all 0 for an unlabelled set) and, for a
    captioned set, their captions."""

    points: Tensor
    labels: Tensor
    captions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.points)


# ----------------------------------------------------------------------------------------------
# The domain


class PointCloudDomain(Domain):
    """Point clouds [num_points, 3] from a folder of meshes / point clouds or the procedural set.

    See the module docstring for how files become points and how they are normalised.
    ``val_fraction`` of each class (at least one shape when a class has two or more) is held out,
    chosen by ``seed``; ``shapes_per_class`` and ``cache_dir`` concern the procedural set only.
    ``repeat_points=True`` pads PLY point clouds with fewer than ``num_points`` points by repeating
    some (otherwise they are an error).

    Without ``data_dir``, ``source`` picks the procedural set: ``procedural`` (class labels) or
    ``procedural_captioned`` (one unlabelled folder with captions such as "a tall lamp with a wide
    shade", see ``captioned_procedural_dataset``). A ``data_dir`` with a metadata file is captioned
    (``toolkit.domains.captions``); captioned data needs ``text_encoder`` and ``text_encoder`` needs it.

    ``class_names`` and ``global_frame`` (``{"centre": [x, y, z], "scale": s}``) are normally found
    from the data; checkpoints store them (``checkpoint_kwargs``) so that the domain rebuilds, and
    samples decode, without the data at hand. ``class_names=[]`` means an unlabelled set.
    """

    name = "pointcloud"

    def __init__(
        self,
        data_dir: str | None = None,
        num_points: int = 2048,
        normalization: str = "unit_sphere",
        val_fraction: float = 0.1,
        shapes_per_class: int = 200,
        cache_dir: str | None = None,
        seed: int = 0,
        class_names: list[str] | None = None,
        global_frame: dict | None = None,
        net: dict | None = None,
        repeat_points: bool = False,
        source: str = "procedural",
        text_encoder: dict | None = None,
    ):
        if source not in PROCEDURAL_SOURCES:
            raise ValueError(
                f"unknown point-cloud source {source!r}; choose one of {PROCEDURAL_SOURCES} or set data_dir"
            )
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        check_val_fraction(val_fraction)
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.num_points, self.normalization, self.val_fraction = num_points, normalization, val_fraction
        self.shapes_per_class, self.cache_dir, self.seed = shapes_per_class, cache_dir, seed
        self.repeat_points, self.source = repeat_points, source
        self.text_encoder = None if text_encoder is None else dict(text_encoder)
        self.net_cfg = DEFAULT_NET if net is None else net
        self.sample_shape = (num_points, 3)
        if class_names is not None:
            self.class_names = list(class_names) or None
        elif self.data_dir is None:
            self.class_names = list(PROCEDURAL_CLASSES) if source == "procedural" else None
        else:
            self.class_names, _ = list_shape_files(self.data_dir)
        self.num_classes = len(self.class_names) if self.class_names else 0
        self.global_centre: np.ndarray | None = None
        self.global_scale: float | None = None
        if global_frame is not None:
            self.global_centre = np.asarray(global_frame["centre"], dtype=np.float64).reshape(3)
            self.global_scale = float(global_frame["scale"])
            if not self.global_scale > 0:
                raise ValueError(f"global_frame scale must be > 0, got {self.global_scale}")
        self._splits: dict[str, PointSet] | None = None

    def checkpoint_kwargs(self) -> dict:
        """Class names and, for ``global`` normalisation, the training set's frame (reads the data
        once if it was not given)."""
        kwargs: dict = {"class_names": list(self.class_names or [])}
        if self.normalization == "global":
            if self.global_scale is None:
                self.split("train")
            kwargs["global_frame"] = {"centre": self.global_centre.tolist(), "scale": self.global_scale}
        return kwargs

    # -- data -------------------------------------------------------------------------------

    def source_dir(self) -> Path:
        """The folder the shapes are read from (generating the procedural set if needed)."""
        if self.data_dir is not None:
            return self.data_dir
        make = procedural_dataset if self.source == "procedural" else captioned_procedural_dataset
        return make(self.shapes_per_class, self.seed, self.cache_dir)

    def split(self, name: str) -> PointSet:
        """The normalised ``train`` or ``val`` set (read and sampled once, then kept in memory)."""
        if name not in ("train", "val"):
            raise ValueError(f"unknown split {name!r}; choose 'train' or 'val'")
        if self._splits is None:
            self._splits = self._load_splits()
        return self._splits[name]

    def _load_splits(self) -> dict[str, PointSet]:
        root = self.source_dir()
        found_classes, files = list_shape_files(root)
        check_class_names(root, found_classes, self.class_names)
        paths, file_labels = [f for f, _ in files], [label for _, label in files]
        captions = captions_of(root, paths, self.text_encoder, self.name, "shape files")
        paths, file_labels, texts = keep_captioned(paths, file_labels, captions)
        files = list(zip(paths, file_labels, strict=True))
        raw = np.stack([self.read_cloud(root, f) for f, _ in files])
        labels = torch.tensor([label for _, label in files], dtype=torch.long)
        # numpy's permutations, as before this split was shared: the checkpoints' splits stay the same
        permutation = np.random.default_rng(self.seed).permutation
        train, val = split_indices(len(labels), self.val_fraction, self.seed, labels, permutation)
        if self.normalization == "global" and self.global_scale is None:
            self.global_centre, self.global_scale = fit_global_frame(raw[train.numpy()])
        points = torch.from_numpy(self.normalise(raw).astype(np.float32))

        def subset(index: Tensor) -> PointSet:
            captions = None if texts is None else [texts[i] for i in index.tolist()]
            return PointSet(points[index], labels[index], captions)

        return {"train": subset(train), "val": subset(val)}

    def read_cloud(self, root: Path, file: Path) -> np.ndarray:
        """One file of ``root`` as read for training: ``num_points`` points [N, 3], seeded by its path."""
        return read_points(
            file, self.num_points, path_seed(self.seed, file.relative_to(root).as_posix()), self.repeat_points
        )

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Clouds [n, N, 3] as read -> model space: per shape, or in the training set's frame for ``global``."""
        if self.normalization != "global":
            return normalize_shapes(raw, self.normalization)
        if self.global_scale is None:
            self.split("train")
        return (raw - self.global_centre) / self.global_scale

    def datamodule(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> TensorDictDataModule:
        def rows(split: PointSet) -> dict[str, Tensor]:
            batch = {"x": split.points, "label": split.labels} if self.num_classes else {"x": split.points}
            if split.captions is not None:
                batch["tokens"] = self.tokenize(split.captions)
            return batch

        return TensorDictDataModule(rows(self.split("train")), rows(self.split("val")), batch_size, num_workers, seed)

    def build_net(self) -> nn.Module:
        return self.build_net_from(self.net_cfg, num_classes=self.num_classes)

    # -- output -----------------------------------------------------------------------------

    def decode(self, x: Tensor) -> np.ndarray:
        """Model space -> float32 numpy [..., N, 3]: in the data's units for ``global`` normalisation
        (one frame for all shapes), in the normalised frame for per-shape normalisations (each
        source shape had its own, so there is no one frame to return to)."""
        points = x.detach().to("cpu", torch.float64).numpy()
        if self.normalization == "global":
            if self.global_scale is None:
                self.split("train")
            points = points * self.global_scale + self.global_centre
        return points.astype(np.float32)

    def render_extent(self) -> float:
        """Half-width of the rendered square: the unit ball, or the cube [-1, 1]^3 for ``bbox``."""
        return float(np.sqrt(3.0)) if self.normalization == "bbox" else 1.0

    def render(self, x: Tensor | np.ndarray, size: int = RENDER_SIZE) -> np.ndarray:
        """Picture of one cloud given in model space (the normalised frame)."""
        points = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
        return render_cloud(points, size, self.render_extent())

    def pictures(self, x: Tensor) -> np.ndarray:
        return np.stack([self.render(cloud) for cloud in x])

    def strip_pictures(self, x: Tensor) -> np.ndarray:
        return np.stack([self.render(cloud, size=STRIP_RENDER_SIZE) for cloud in x])

    def write_sample(self, out_dir: Path, stem: str, data: np.ndarray, picture: np.ndarray) -> list[Path]:
        """A PLY point cloud (``decode``d) and a PNG render."""
        ply = out_dir / f"{stem}.ply"
        trimesh.PointCloud(data).export(ply)
        return [ply, viz.save_png(picture, out_dir / f"{stem}.png")]

    def sample_arrays(self, data: np.ndarray) -> dict[str, np.ndarray]:
        """``points`` [n, N, 3], as in the PLY files."""
        return {"points": data}
