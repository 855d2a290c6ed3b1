"""Hugging Face ``transformers`` models from a local folder (``text_encoder.kind=hf``): an optional
extra, loaded only when configured and never downloaded."""

from __future__ import annotations

from pathlib import Path


def hf_folder(path) -> Path:
    """The folder of a saved model (``save_pretrained``), checked, with transformers importable."""
    if not path:
        raise ValueError(
            "text_encoder.kind=hf needs text_encoder.path=<folder of a saved transformers model and tokenizer>"
        )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"text_encoder.path={path} is not a folder; give the folder a transformers model and its tokenizer "
            "were saved to (save_pretrained)"
        )
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ValueError("text_encoder.kind=hf needs the transformers package: pip install toolkit[text-hf]") from None
    return folder
