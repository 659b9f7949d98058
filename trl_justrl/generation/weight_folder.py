"""Versioned weight folders: how the trainer hands its weights to a generation server through a shared folder.

The trainer writes version N as safetensors shards into a hidden temporary folder, then a manifest (`weights.json`:
version, each shard's name and size), then renames the folder to `v<N>` in one step; a reader sees a whole version or
none. The server loads only the version it was asked for, after checking the manifest against the files, so a cut or
stale file is never loaded. Older versions are removed once the server serves a newer one.

Imports nothing of the project: the vLLM server process (another environment) loads it through the worker extension.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no torch import at run time: the trainer's pre-flight loads this module before torch
    import torch

MANIFEST = "weights.json"
FORMAT = 1
DEFAULT_SHARD_BYTES = 512 * 2**20  # a shard is built in memory before it is written: bounds the trainer's extra RAM
VERSION_PATTERN = re.compile(r"^v(\d+)$")


class WeightFolderError(RuntimeError):
    """A weight folder that is missing, incomplete, or not the version asked for (the message names it)."""


def version_folder(root: str | Path, version: int) -> Path:
    return Path(root) / f"v{version:08d}"


def _fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shards(named_tensors: Iterable[tuple[str, torch.Tensor]], shard_bytes: int
            ) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors as CPU copies, grouped into dicts of at most `shard_bytes` (a larger tensor alone)."""
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named_tensors:
        if name in shard:
            raise WeightFolderError(f"The tensor {name!r} was given twice.")
        # a copy: a gathered (ZeRO-3 / FSDP) parameter is released when the iteration moves on
        copy = tensor.detach().to("cpu", copy=True).contiguous()
        nbytes = copy.numel() * copy.element_size()
        if shard and size + nbytes > shard_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = copy
        size += nbytes
    if shard:
        yield shard


def write_version(root: str | Path, version: int, named_tensors: Iterable[tuple[str, torch.Tensor]],
                  shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write `named_tensors` as version `version` under `root`, atomically; returns the version's folder.

    The iteration is consumed once, in order (TRL's parameter iteration gathers each tensor as it goes)."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = version_folder(root, version)
    if final.exists():
        raise WeightFolderError(f"{final} exists already: each version is written once.")
    temporary = root / f".{final.name}.{os.getpid()}.partial"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    files: dict[str, int] = {}
    count = 0
    try:
        for index, shard in enumerate(_shards(named_tensors, shard_bytes)):
            name = f"shard-{index:05d}.safetensors"
            save_file(shard, str(temporary / name))
            files[name] = (temporary / name).stat().st_size
            count += len(shard)
        if not files:
            raise WeightFolderError("No tensors were given: nothing to write.")
        manifest = {"format": FORMAT, "version": version, "tensors": count, "files": files}
        with open(temporary / MANIFEST, "w") as handle:
            json.dump(manifest, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for name in files:
            with open(temporary / name, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(temporary, final)  # the version appears whole, or not at all
        _fsync_folder(root)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def read_manifest(folder: str | Path, version: int) -> dict:
    """The manifest of `folder`, checked: it is version `version`, and every shard it lists is there at its size."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightFolderError(f"{folder} has no {MANIFEST}: not a complete weight version.") from None
    except (OSError, ValueError) as err:
        raise WeightFolderError(f"{path} cannot be read: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise WeightFolderError(f"{path} is not a weight manifest of format {FORMAT}.")
    if manifest.get("version") != version:
        raise WeightFolderError(f"{path} holds version {manifest.get('version')}, not the {version} asked for.")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise WeightFolderError(f"{path} lists no weight files.")
    for name, size in files.items():
        shard = folder / name
        if Path(name).name != name or not shard.is_file():
            raise WeightFolderError(f"{shard} is listed in {path} but missing.")
        if shard.stat().st_size != size:
            raise WeightFolderError(f"{shard} has {shard.stat().st_size} bytes where {path} says {size}: cut or "
                                    "replaced, not loaded.")
    return manifest


def check_version(folder: str | Path, version: int) -> dict:
    """`read_manifest`, then every shard's safetensors header read (which checks it against the file's length) and
    the tensors counted: all that can go wrong with the files goes wrong here, before any weight is loaded."""
    from safetensors import safe_open

    folder = Path(folder)
    manifest = read_manifest(folder, version)
    count = 0
    for name in manifest["files"]:
        try:
            with safe_open(str(folder / name), framework="pt", device="cpu") as handle:
                count += len(handle.keys())
        except Exception as err:  # safetensors raises its own error types
            raise WeightFolderError(f"{folder / name} is not a readable safetensors file: {err}") from err
    if count != manifest["tensors"]:
        raise WeightFolderError(f"{folder} holds {count} tensors where its manifest says {manifest['tensors']}.")
    return manifest


def iter_version(folder: str | Path, manifest: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs of a version folder `check_version` passed, shard by shard (one in memory at a
    time)."""
    from safetensors import safe_open

    for name in manifest["files"]:
        with safe_open(str(Path(folder) / name), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield key, handle.get_tensor(key)


def versions(root: str | Path) -> list[int]:
    """The whole versions under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = (VERSION_PATTERN.match(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def remove_older(root: str | Path, keep: int) -> list[int]:
    """Remove the versions older than `keep`, and temporary folders a crashed writer left (one run writes a folder:
    called between writes, no other write is under way); returns the versions removed."""
    root = Path(root)
    removed = [v for v in versions(root) if v < keep]
    for version in removed:
        shutil.rmtree(version_folder(root, version), ignore_errors=True)
    for leftover in root.glob(".v*.partial") if root.is_dir() else ():
        shutil.rmtree(leftover, ignore_errors=True)
    return removed
