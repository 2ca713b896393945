"""Model archives (``.mh``): a zip holding ``manifest.json`` and the model's files."""

from modelhost.archive.manifest import Manifest, ModelSpec, TensorSignature, TextPreprocessing
from modelhost.archive.open import ArchiveLimits, OpenedArchive, open_archive
from modelhost.archive.pack import pack_model_dir, write_archive

__all__ = [
    "ArchiveLimits",
    "Manifest",
    "ModelSpec",
    "OpenedArchive",
    "TensorSignature",
    "TextPreprocessing",
    "open_archive",
    "pack_model_dir",
    "write_archive",
]
