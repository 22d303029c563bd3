"""The SparkSession the job runs on: the cluster's own on Databricks, a local one with Delta and Kafka here."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

from pyspark.sql import SparkSession

from streaming_jobs.jars import resolve

CONNECTORS_POM = "spark-connectors.pom.xml"
"""The Kafka source and Delta for local Spark (Databricks has both built in), beside this module."""
CONNECTORS_POM_VARIABLE = "FEDSTREAM_SPARK_CONNECTORS_POM"
"""Another ``*.pom.xml`` for another local Spark (``make test-runtime`` runs Spark 4.0 with its own)."""


def on_databricks() -> bool:
    """True inside a Databricks runtime (where Delta and the Kafka source are built in)."""
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(app_name: str = "fedstream", *, shuffle_partitions: int = 2) -> SparkSession:
    """Return the active session on Databricks, or build a local ``local[*]`` session with Delta and Kafka."""
    if on_databricks():
        from streaming_jobs.databricks import refuse_spark_connect

        session = SparkSession.builder.getOrCreate()
        refuse_spark_connect(session)
        session.conf.set(DELTA_TRANSACTIONS_IN_CHECKSUM, "true")
        return session
    # executors' Python workers run this interpreter, where fedstream is installed (local-cluster executors too)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(os.environ.get("FEDSTREAM_SPARK_MASTER", "local[*]"))
        .config("spark.jars", ",".join(str(path) for path in connector_jars()))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.default.parallelism", str(shuffle_partitions))
        .config("spark.ui.enabled", os.environ.get("FEDSTREAM_SPARK_UI", "false"))
        .config("spark.driver.memory", os.environ.get("FEDSTREAM_SPARK_DRIVER_MEMORY", "2g"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider",
        )
    )
    spark = builder.getOrCreate()
    spark.conf.set(DELTA_TRANSACTIONS_IN_CHECKSUM, "true")
    spark.sparkContext.setLogLevel(os.environ.get("FEDSTREAM_SPARK_LOG_LEVEL", "WARN"))
    return spark


DELTA_TRANSACTIONS_IN_CHECKSUM = "spark.databricks.delta.setTransactionsInCrc.writeOnCommit"
"""Delta keeps the tables' ``txnAppId`` versions in each commit's checksum file, so an idempotent append reads
them from there instead of reconstructing the table's state: ~0.3 s less per commit (``bench.delta_commits``)."""


def connector_jars() -> list[Path]:
    """Jars of the Kafka source and Delta that pyspark does not already ship, resolved once and cached."""
    import pyspark

    bundled = {path.name for path in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    jars = []
    override = os.environ.get(CONNECTORS_POM_VARIABLE)
    pom = Path(override) if override else resources.files("streaming_jobs") / CONNECTORS_POM
    for jar in resolve(pom):
        already_in_spark = any(
            name.startswith(f"{jar.artifact_id}-")
            and name[len(jar.artifact_id) + 1 : len(jar.artifact_id) + 2].isdigit()
            for name in bundled
        )
        if not already_in_spark:
            jars.append(jar.path)
    return jars
