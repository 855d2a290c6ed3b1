"""Where the toolkit's own files are: ``conf/`` (Hydra configs) and ``data/`` (shipped data sets).

In a source checkout they sit beside the ``toolkit`` package; a wheel (``pip install .``) carries
them inside it as ``toolkit/conf`` and ``toolkit/data``. Code asks here instead of guessing paths.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """``conf`` or ``data``: the copy inside an installed package, else the source checkout's."""
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"the toolkit's {name}/ folder is missing (looked in {PACKAGE_DIR} and {PACKAGE_DIR.parent}); "
        "reinstall the toolkit: pip install -c constraints.txt ."
    )


def torchaudio_load_error(error: BaseException) -> ImportError:
    """An ImportError that says why torchaudio did not load and how to fix it: its compiled library is
    built for one exact torch release, so a mismatched pair fails with an undefined symbol."""
    versions = {}
    for package in ("torch", "torchaudio"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return ImportError(
        f"torchaudio could not be loaded ({type(error).__name__}: {error}). Installed: torch {versions['torch']}, "
        f"torchaudio {versions['torchaudio']}; torchaudio only works with the torch release it was built for. "
        "Reinstall the matched pair from the project's lock file: pip install -c constraints.txt -e . "
        "(only the audio domain needs torchaudio; the other domains work without it)"
    )
