"""Resolve Java dependencies once from Maven Central into the download cache.

Off Databricks the job's Spark needs the Kafka source and Delta jars (``spark-connectors.pom.xml``); the dev
stack's broker resolves its own pom the same way. Maven does the transitive resolution (``dependency:list``);
the resulting jar list is written to a manifest in the cache, and every later start reads the manifest and
never touches the network.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from schemas.paths import cache_dir

POM_SUFFIX = ".pom.xml"


class JarResolutionError(RuntimeError):
    """Maven could not resolve a set of jars (no network, no ``mvn``, or a missing artifact)."""


@dataclass(frozen=True)
class ResolvedJar:
    """One resolved Maven artifact and where its jar lies."""

    group_id: str
    artifact_id: str
    version: str
    path: Path


def resolve(pom_file: Traversable, *, quiet: bool = False) -> list[ResolvedJar]:
    """Return the runtime jars of the packaged pom ``pom_file`` (``<name>.pom.xml``), resolving them on first use.

    The manifest is named after the pom's name and content hash, so editing the pom resolves afresh.
    """
    if not pom_file.name.endswith(POM_SUFFIX):
        raise ValueError(f"{pom_file.name!r} is not a '<name>{POM_SUFFIX}' file")
    pom_name = pom_file.name.removesuffix(POM_SUFFIX)
    pom_text = pom_file.read_bytes()
    manifest = cache_dir() / "jars" / f"{pom_name}-{hashlib.sha256(pom_text).hexdigest()[:12]}.manifest"
    if manifest.exists():
        jars = _read_manifest(manifest)
        if all(jar.path.exists() for jar in jars):
            return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarResolutionError("Maven ('mvn') is needed once to fetch jars from Maven Central; install it")
    if not quiet:
        print(f"fedstream: resolving {pom_name} jars from Maven Central (once; cached after) ...", flush=True)
    listing = manifest.with_suffix(".listing")
    listing.parent.mkdir(parents=True, exist_ok=True)
    with resources.as_file(pom_file) as pom:
        completed = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                "dependency:list",
                "-DincludeScope=runtime",
                "-DoutputAbsoluteArtifactFilename=true",
                f"-DoutputFile={listing}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if completed.returncode != 0:
        raise JarResolutionError(f"mvn failed for {pom_name}:\n{completed.stdout[-3000:]}{completed.stderr[-2000:]}")
    jars = _parse_listing(listing.read_text())
    manifest.write_text("".join(f"{j.group_id}:{j.artifact_id}:{j.version}:{j.path}\n" for j in jars))
    if not quiet:
        size = sum(j.path.stat().st_size for j in jars) / 2**20
        print(f"fedstream: {len(jars)} jars for {pom_name} ({size:.0f} MiB) cached", file=sys.stderr, flush=True)
    return jars


def _parse_listing(text: str) -> list[ResolvedJar]:
    jars = []
    for line in text.splitlines():
        # group:artifact:type[:classifier]:version:scope:/absolute/path
        fields = line.strip().split(":")
        if len(fields) < 6 or fields[2] != "jar":
            continue
        jars.append(ResolvedJar(fields[0], fields[1], fields[-3], Path(fields[-1])))
    return sorted(jars, key=lambda jar: (jar.group_id, jar.artifact_id))


def _read_manifest(manifest: Path) -> list[ResolvedJar]:
    jars = []
    for line in manifest.read_text().splitlines():
        group_id, artifact_id, version, path = line.split(":", 3)
        jars.append(ResolvedJar(group_id, artifact_id, version, Path(path)))
    return jars
