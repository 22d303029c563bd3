"""Resolve Java dependencies once from Maven Central into the download cache.

Off Databricks the job's Spark needs the Kafka source and Delta jars (``spark-connectors.pom.xml``); the dev
stack's broker resolves its own pom the same way. Maven does the transitive resolution (``dependency:list``);
the resulting jar list is written to a manifest in the cache, and every later start reads the manifest and
never touches the network.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import time
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
        command = [
            mvn,
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:list",
            "-DincludeScope=runtime",
            "-DoutputAbsoluteArtifactFilename=true",
            f"-DoutputFile={listing}",
        ]
        returncode, output_tail = _run_maven(command, DownloadProgress(pom_name, quiet=quiet))
    if returncode != 0:
        raise JarResolutionError(f"mvn failed for {pom_name}:\n{output_tail}")
    jars = _parse_listing(listing.read_text())
    manifest.write_text("".join(f"{j.group_id}:{j.artifact_id}:{j.version}:{j.path}\n" for j in jars))
    if not quiet:
        size = sum(j.path.stat().st_size for j in jars) / 2**20
        print(f"fedstream: {len(jars)} jars for {pom_name} ({size:.0f} MiB) cached", file=sys.stderr, flush=True)
    return jars


_DOWNLOADED = re.compile(r"^(?:\[INFO\] )?Downloaded from \S+: \S+ \((\d+(?:\.\d+)?) (B|kB|KB|MB|GB)")
_UNIT_BYTES = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
OUTPUT_TAIL_CHARACTERS = 5000
"""Characters of Maven's output kept for the error when it fails."""


def downloaded_bytes(line: str) -> int | None:
    """The size of the file a Maven ``Downloaded from ...`` line reports (``None`` for any other line)."""
    match = _DOWNLOADED.match(line.strip())
    if match is None:
        return None
    return round(float(match.group(1)) * _UNIT_BYTES[match.group(2)])


class DownloadProgress:
    """Counts the files Maven downloads and says so every ``every_seconds`` (never when ``quiet``)."""

    def __init__(self, pom_name: str, *, quiet: bool, every_seconds: float = 5.0) -> None:
        self.pom_name = pom_name
        self.quiet = quiet
        self.every_seconds = every_seconds
        self.files = 0
        self.bytes = 0
        self._said_at = time.monotonic()

    def line(self, text: str) -> None:
        """Take one line of Maven's output; print a progress line when one is due."""
        size = downloaded_bytes(text)
        if size is None:
            return
        self.files += 1
        self.bytes += size
        if not self.quiet and time.monotonic() - self._said_at >= self.every_seconds:
            self._said_at = time.monotonic()
            print(
                f"fedstream: {self.pom_name}: {self.files} files downloaded ({self.bytes / 2**20:.0f} MiB) ...",
                file=sys.stderr,
                flush=True,
            )


def _run_maven(command: list[str], progress: DownloadProgress) -> tuple[int, str]:
    """Run Maven, feeding each output line to ``progress``; its exit code and the end of its output."""
    tail = ""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for text in process.stdout:
            progress.line(text)
            tail = (tail + text)[-OUTPUT_TAIL_CHARACTERS:]
    return process.returncode, tail


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
