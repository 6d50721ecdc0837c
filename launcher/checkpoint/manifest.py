"""The checksum manifest of a checkpoint: sha256 and size of every file, written by the rank that
publishes it (atomic.py) after every rank has finished, and checked by `launch` before a resume.

A checkpoint published by several nodes without a shared file system holds one manifest per
publishing node (`launcher-manifest-node<K>.json`, each naming the nodes whose files it covers),
so folders gathered from every node merge without clashing. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from launcher.errors import CheckpointDamaged

LAUNCHER = "llm-launcher"  # the `launcher` field: who wrote the manifest
MANIFEST_GLOB = "launcher-manifest-node*.json"
CHUNK = 8 << 20


def manifest_name(node_rank: int) -> str:
    return f"launcher-manifest-node{node_rank}.json"


def _launcher_version() -> str:
    try:
        return version(LAUNCHER)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_all(paths: list[Path]) -> list[str]:
    """sha256 of many files at once: hashlib releases the GIL, so the shards hash on several cores."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(sha256, paths))


def _files(checkpoint: Path) -> list[Path]:
    """Every file of the checkpoint except the manifests themselves, as relative paths."""
    return sorted(
        p.relative_to(checkpoint) for p in checkpoint.rglob("*") if p.is_file() and not p.match(MANIFEST_GLOB)
    )


def write_manifest(checkpoint: Path, node_rank: int, nodes: list[int], run: dict) -> Path:
    """Hash every file in `checkpoint` (this node's view of it) into its manifest; returns the path."""
    files = _files(checkpoint)
    digests = sha256_all([checkpoint / rel for rel in files])
    manifest = {
        "launcher": LAUNCHER,
        "version": _launcher_version(),
        "node_rank": node_rank,
        "nodes": nodes,
        "run": run,
        "files": {
            str(rel): {"size": (checkpoint / rel).stat().st_size, "sha256": digest}
            for rel, digest in zip(files, digests)
        },
    }
    path = checkpoint / manifest_name(node_rank)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_manifests(checkpoint: Path) -> list[dict]:
    """The launcher manifests in `checkpoint` (empty: none, i.e. not written by this launcher)."""
    manifests = []
    for path in sorted(checkpoint.glob(MANIFEST_GLOB)):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointDamaged(f"{path} is not a readable manifest ({err})") from None
        if (
            not isinstance(manifest, dict)
            or manifest.get("launcher") != LAUNCHER
            or not isinstance(manifest.get("files"), dict)
        ):
            raise CheckpointDamaged(f"{path} is not a manifest written by {LAUNCHER}")
        manifests.append(manifest)
    return manifests


def verify(checkpoint: Path, manifests: list[dict], say=print) -> None:
    """Every node's files present, nothing unlisted, sizes, then sha256 (the slow part, announced)."""
    nnodes = manifests[0]["run"].get("nnodes", 1)
    covered = {node for manifest in manifests for node in manifest["nodes"]}
    if missing := sorted(set(range(nnodes)) - covered):
        raise CheckpointDamaged(
            f"{checkpoint} holds the files of node(s) {sorted(covered)} only; node(s) {missing} published theirs on "
            f"their own disks ({', '.join(manifest_name(k) for k in missing)} missing). Fix: copy every node's "
            f"output.dir/{checkpoint.name} into this folder (docs/multinode.md)"
        )
    listed = {rel: entry for manifest in manifests for rel, entry in manifest["files"].items()}
    for rel in map(str, _files(checkpoint)):
        if rel not in listed:
            raise CheckpointDamaged(f"{checkpoint / rel} is not in the checkpoint's manifest (added after the save)")
    for rel, entry in listed.items():
        path = checkpoint / rel
        if not path.is_file():
            raise CheckpointDamaged(f"{path} is missing")
        if path.stat().st_size != entry["size"]:
            raise CheckpointDamaged(f"{path} has {path.stat().st_size} bytes, the manifest says {entry['size']}")
    total = sum(entry["size"] for entry in listed.values())
    say(f"[launch] verifying {checkpoint}: sha256 of {len(listed)} files, {total / 2**20:,.1f} MiB ...")
    digests = sha256_all([checkpoint / rel for rel in listed])
    for (rel, entry), digest in zip(listed.items(), digests):
        if digest != entry["sha256"]:
            raise CheckpointDamaged(
                f"{checkpoint / rel} does not match its sha256 in the manifest (changed after the save)"
            )
