"""Progress while Maven fetches jars the first time: each ``Downloaded from`` line counted, a line every few seconds."""

import pytest

from streaming_jobs.jars import DownloadProgress, downloaded_bytes

MAVEN_LINES = [
    "[INFO] Scanning for projects...",
    "[INFO] Downloading from central: https://repo.maven.apache.org/maven2/org/apache/apache/10/apache-10.pom",
    "[INFO] Downloaded from central: https://repo.maven.apache.org/maven2/org/apache/apache/10/apache-10.pom "
    "(15 kB at 740 kB/s)",
    "[INFO] Downloaded from central: https://repo.maven.apache.org/maven2/io/delta/delta-spark_2.13/4.0.0/"
    "delta-spark_2.13-4.0.0.jar (7.2 MB at 9.1 MB/s)",
    "Downloaded from central: https://repo.maven.apache.org/maven2/a/b/1/b-1.pom (912 B at 30 kB/s)",
    "[INFO] BUILD SUCCESS",
]


def test_only_downloaded_lines_count_with_their_size() -> None:
    assert [downloaded_bytes(line) for line in MAVEN_LINES] == [None, None, 15_000, 7_200_000, 912, None]


def test_progress_is_printed_to_stderr_when_due_and_never_when_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    loud = DownloadProgress("spark-connectors", quiet=False, every_seconds=0.0)
    for line in MAVEN_LINES:
        loud.line(line)
    assert (loud.files, loud.bytes) == (3, 7_215_912)
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.splitlines()[-1] == "fedstream: spark-connectors: 3 files downloaded (7 MiB) ..."
    quiet = DownloadProgress("spark-connectors", quiet=True, every_seconds=0.0)
    for line in MAVEN_LINES:
        quiet.line(line)
    assert quiet.files == 3 and capsys.readouterr().err == ""
