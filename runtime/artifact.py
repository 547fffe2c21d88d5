"""Reading an artifact directory: the manifest (runtime/manifest.py: every file's sha256, the versions
that wrote it), interface.json (runtime/interface.py) and model.py, under the readers' shared lock.
This is all the runtime reads of a compiled model. Importing this module costs no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from runtime.errors import ArtifactError
from runtime.interface import Interface, read_interface
from runtime.manifest import MANIFEST, files_match, read_manifest, reading


def import_file(name: str, path: Path):
    """Import an artifact's Python file as module `name` (once per process); a failed import leaves
    nothing half-registered in sys.modules."""
    import importlib.util
    import sys
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


@dataclass
class Artifact:
    directory: Path
    manifest: dict
    interface: Interface
    module: ModuleType           # model.py: Config, MODEL, HEADS


def _installed(package: str) -> str | None:
    # from the package metadata, as the compiler records it (pipeline.versions)
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def check_manifest(directory: Path) -> dict:
    """The manifest of a complete artifact written by this graphspec for the installed torch."""
    from runtime import __version__
    manifest = read_manifest(directory)     # an ArtifactError naming the file and the field
    if not files_match(directory, manifest):
        raise ArtifactError(f"{directory}: files do not match {MANIFEST} (edited or half-written); compile again")
    versions = manifest["versions"]
    if versions.get("graphspec") != __version__ or versions.get("torch") != _installed("torch"):
        raise ArtifactError(f"{directory}: compiled by graphspec {versions.get('graphspec')} for torch "
                            f"{versions.get('torch')}; this is graphspec {__version__} with torch "
                            f"{_installed('torch')}: compile again")
    return manifest


def import_model(directory: Path, manifest: dict) -> ModuleType:
    """model.py of an artifact, imported once per process under a name unique to its compile key."""
    return import_file(f"graphspec_artifact_{manifest['key'][:16]}_{manifest['name']}", Path(directory) / "model.py")


def open_artifact(directory: str | Path) -> Artifact:
    """Manifest (hashes, versions), interface.json (validated) and model.py of an artifact directory."""
    directory = Path(directory)
    with reading(directory):     # a compile swapping in a new version waits until all is read
        manifest = check_manifest(directory)
        interface = read_interface(directory)
        return Artifact(directory, manifest, interface, import_model(directory, manifest))
