"""Everything that differs on Databricks, in one place, so the rest of the job runs unchanged.

- Spark: the cluster's own session (``spark_session.get_spark``); Delta and the Kafka source are built into the
  runtime, so nothing is resolved from Maven.
- Kafka: Databricks Runtime relocates the Kafka client to ``kafkashaded.org.apache.kafka``; a JAAS string there must
  name the relocated login module (``KafkaSettings.shaded_kafka_classes``).
- Secrets: the SASL username and password, and the job's signing key (``job-signing-key``, the PEM that signs
  every global version), come from a secret scope through ``dbutils.secrets`` when ``FEDSTREAM_SECRET_SCOPE`` is
  set and the environment does not already hold them; off Databricks a missing signing key is made locally.
- Names: tables are ``catalog.schema.table`` and the registered model ``catalog.schema.fedstream_<model>``.
- Compute: the job keeps its buffer in the driver between ``foreachBatch`` calls and runs a processing-time trigger.
  Spark Connect (serverless compute, standard access mode) runs ``foreachBatch`` in a separate process that cannot
  see driver state, and serverless allows no time-based trigger, so the job refuses to start there.

Nothing in this module runs off Databricks unless a test calls it with an explicit environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from schemas.kafka_settings import KafkaSettings

if TYPE_CHECKING:
    from streaming_jobs.settings import JobSettings

RUNTIME_VERSION_VARIABLE = "DATABRICKS_RUNTIME_VERSION"
"""Set by Databricks Runtime on every cluster node; serverless sets it to ``client.<n>``."""
SECRET_SCOPE_VARIABLE = "FEDSTREAM_SECRET_SCOPE"
CATALOG_VARIABLE = "FEDSTREAM_CATALOG"
SCHEMA_VARIABLE = "FEDSTREAM_SCHEMA"
SASL_USERNAME_KEY = "kafka-sasl-username"
"""Key of the SASL username in the secret scope."""
SASL_PASSWORD_KEY = "kafka-sasl-password"
"""Key of the SASL password in the secret scope."""
SIGNING_KEY_SECRET_KEY = "job-signing-key"
"""Key of the job's Ed25519 signing key (PKCS#8 PEM, as ``fedstream job-key`` writes it) in the secret scope."""
MISSING_SIGNING_KEY = (
    "no signing key for the global versions: put the PEM that `fedstream job-key` writes into the secret scope "
    f"as {SIGNING_KEY_SECRET_KEY!r} (with {SECRET_SCOPE_VARIABLE}), or set FEDSTREAM_JOB_SIGNING_KEY_FILE to a file "
    "on a volume; clients trust only versions that key signs"
)
DURABLE_CHECKPOINT_PREFIXES = ("/Volumes/", "dbfs:/Volumes/", "s3://", "s3a://", "abfss://", "gs://")
"""Checkpoint locations that outlive a job cluster (a Unity Catalog volume or cloud storage)."""

_NAME_PART = re.compile(r"^[A-Za-z0-9_]+$")


class UnsupportedOnDatabricksError(ValueError):
    """The job's settings or compute cannot work on Databricks; the message lists every reason and the fix."""


class MissingSecretError(LookupError):
    """A secret the job needs is not in the secret scope (or no ``dbutils`` is there to read it)."""


class SecretReader(Protocol):
    """The part of ``dbutils.secrets`` the job uses."""

    def get(self, scope: str, key: str) -> str:
        """The secret's value."""
        ...


class DbutilsLike(Protocol):
    """The part of ``dbutils`` the job uses: ``dbutils.secrets.get(scope, key)``."""

    @property
    def secrets(self) -> SecretReader:
        """Secret-scope access."""
        ...


def _environment(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def on_databricks(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a Databricks runtime (classic or serverless)."""
    return RUNTIME_VERSION_VARIABLE in _environment(environ)


def on_serverless(environ: Mapping[str, str] | None = None) -> bool:
    """True on serverless compute, whose runtime version reads ``client.<n>``."""
    return _environment(environ).get(RUNTIME_VERSION_VARIABLE, "").startswith("client.")


def spark_connect_requested(environ: Mapping[str, str] | None = None) -> bool:
    """True when pyspark is (or will be) a Spark Connect client in this process."""
    values = _environment(environ)
    return "SPARK_CONNECT_MODE_ENABLED" in values or bool(values.get("SPARK_REMOTE"))


def is_spark_connect_session(spark: object) -> bool:
    """True when ``spark`` is a Spark Connect session rather than a classic one with a JVM in this driver."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


# ── Unity Catalog names ──────────────────────────────────────────────────────────────────────────────────────────


def catalog_schema(catalog: str, schema: str) -> str:
    """``catalog.schema`` after checking both parts need no quoting (letters, digits, underscores)."""
    problems = [
        f"{what} {value!r} ({type(value).__name__}) must be letters, digits and underscores"
        for what, value in (("catalog", catalog), ("schema", schema))
        if not isinstance(value, str) or not _NAME_PART.match(value)
    ]
    if problems:
        raise ValueError("; ".join(problems))
    return f"{catalog}.{schema}"


def catalog_schema_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``catalog.schema`` from ``FEDSTREAM_CATALOG`` and ``FEDSTREAM_SCHEMA``; None when neither is set."""
    values = _environment(environ)
    catalog, schema = values.get(CATALOG_VARIABLE), values.get(SCHEMA_VARIABLE)
    if catalog is None and schema is None:
        return None
    if catalog is None or schema is None:
        raise ValueError(f"set both {CATALOG_VARIABLE} and {SCHEMA_VARIABLE}, or neither (got {catalog=}, {schema=})")
    return catalog_schema(catalog, schema)


def table_name(schema_name: str, table: str) -> str:
    """Three-part Unity Catalog name of ``table`` in ``catalog.schema``."""
    catalog, _, schema = schema_name.partition(".")
    return f"{catalog_schema(catalog, schema)}.{table}"


def registered_model_name(schema_name: str, model_name: str) -> str:
    """Three-part Unity Catalog name of the registered model: ``catalog.schema.fedstream_<model, underscored>``."""
    catalog, _, schema = schema_name.partition(".")
    return f"{catalog_schema(catalog, schema)}.fedstream_{re.sub(r'[^A-Za-z0-9_]', '_', model_name)}"


# ── Kafka: shaded classes and secrets ────────────────────────────────────────────────────────────────────────────


def find_dbutils() -> DbutilsLike | None:
    """The runtime's ``dbutils``; None off Databricks."""
    if not on_databricks():
        return None
    try:
        from pyspark.dbutils import DBUtils  # present only in Databricks Runtime's pyspark
        from pyspark.sql import SparkSession
    except ImportError:
        pass
    else:
        found: DbutilsLike = DBUtils(SparkSession.builder.getOrCreate())
        return found
    try:
        from databricks.sdk.runtime import dbutils
    except ImportError:
        return None
    return dbutils


def read_secret(dbutils: DbutilsLike, scope: str, key: str) -> str:
    """``dbutils.secrets.get(scope, key)``, failing with the scope and key named."""
    try:
        value = dbutils.secrets.get(scope=scope, key=key)
    except Exception as error:  # dbutils raises its own (py4j or SDK) exception types
        raise MissingSecretError(
            f"cannot read secret {key!r} from secret scope {scope!r}: {error}; create it with "
            f"`databricks secrets put-secret {scope} {key}` and grant the job's identity READ on the scope"
        ) from error
    if not value:
        raise MissingSecretError(f"secret {key!r} in secret scope {scope!r} is empty")
    return str(value)


def kafka_settings_for_runtime(
    environ: Mapping[str, str] | None = None, *, dbutils: DbutilsLike | None = None
) -> KafkaSettings:
    """``KafkaSettings.from_env`` plus what Databricks needs: shaded JAAS classes, credentials from the scope.

    Off Databricks and without ``FEDSTREAM_SECRET_SCOPE`` this is exactly ``KafkaSettings.from_env(environ)``.
    """
    values = _environment(environ)
    overrides: dict[str, Any] = {}
    if on_databricks(values):
        overrides["shaded_kafka_classes"] = True
    scope = values.get(SECRET_SCOPE_VARIABLE)
    wanted = {
        "sasl_username": ("FEDSTREAM_KAFKA_SASL_USERNAME", SASL_USERNAME_KEY),
        "sasl_password": ("FEDSTREAM_KAFKA_SASL_PASSWORD", SASL_PASSWORD_KEY),
    }
    missing = {field: key for field, (variable, key) in wanted.items() if not values.get(variable)}
    if scope and missing:
        reader = dbutils if dbutils is not None else find_dbutils()
        if reader is None:
            raise MissingSecretError(
                f"{SECRET_SCOPE_VARIABLE}={scope!r} is set but no dbutils is available to read it; run on a "
                "Databricks cluster, or set FEDSTREAM_KAFKA_SASL_USERNAME and FEDSTREAM_KAFKA_SASL_PASSWORD"
            )
        overrides.update({field: read_secret(reader, scope, key) for field, key in missing.items()})
    return KafkaSettings.from_env(values, **overrides)


def signing_key_from_scope(
    environ: Mapping[str, str] | None = None, *, dbutils: DbutilsLike | None = None
) -> SecretStr | None:
    """The job's signing key (PEM) from ``FEDSTREAM_SECRET_SCOPE``; None when no scope is set."""
    scope = _environment(environ).get(SECRET_SCOPE_VARIABLE)
    if not scope:
        return None
    reader = dbutils if dbutils is not None else find_dbutils()
    if reader is None:
        raise MissingSecretError(
            f"{SECRET_SCOPE_VARIABLE}={scope!r} is set but no dbutils is available to read the job's signing key "
            "from it; run on a Databricks cluster, or set FEDSTREAM_JOB_SIGNING_KEY_FILE"
        )
    return SecretStr(read_secret(reader, scope, SIGNING_KEY_SECRET_KEY))


# ── What the job cannot do on Databricks ─────────────────────────────────────────────────────────────────────────

_CLASSIC_COMPUTE = (
    "run the job as databricks.yml defines it: a job cluster on Databricks Runtime 17.3 LTS in dedicated "
    "(single user) access mode"
)


def compute_problems(environ: Mapping[str, str] | None = None, spark: object | None = None) -> list[str]:
    """Why this compute cannot run the job (empty when it can)."""
    problems = []
    if on_serverless(environ):
        problems.append(
            "serverless compute allows no processing-time trigger and runs foreachBatch through Spark Connect; "
            + _CLASSIC_COMPUTE
        )
    if spark_connect_requested(environ) or (spark is not None and is_spark_connect_session(spark)):
        problems.append(
            "this is a Spark Connect session: foreachBatch would run in a separate Python process that cannot "
            "see the aggregation buffer the driver keeps between micro-batches (serverless and standard access "
            "mode clusters both use Spark Connect); " + _CLASSIC_COMPUTE
        )
    return problems


def settings_problems(settings: JobSettings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Why ``settings`` cannot work on Databricks (empty when they can); every reason, not the first."""
    values = _environment(environ)
    problems = compute_problems(values)
    if not settings.catalog_schema:
        problems.append(
            f"no Unity Catalog schema: set {CATALOG_VARIABLE} and {SCHEMA_VARIABLE} (without them the tables "
            f"would go to the driver's local disk, {settings.tables_root!r}, and vanish with the cluster)"
        )
    else:
        catalog, _, schema = settings.catalog_schema.partition(".")
        try:
            catalog_schema(catalog, schema)
        except ValueError as error:
            problems.append(f"catalog_schema {settings.catalog_schema!r} is not catalog.schema: {error}")
    if settings.signing_key is None and settings.signing_key_file is None:
        problems.append(MISSING_SIGNING_KEY)
    if not settings.checkpoint_location.startswith(DURABLE_CHECKPOINT_PREFIXES):
        problems.append(
            f"checkpoint {settings.checkpoint_location!r} would not outlive the cluster; use a Unity Catalog volume, "
            "/Volumes/<catalog>/<schema>/<volume>/checkpoints/<job>"
        )
    tracking = values.get("MLFLOW_TRACKING_URI", "")
    if not tracking.startswith("databricks"):
        problems.append(
            f"MLFLOW_TRACKING_URI is {tracking!r}: set it to 'databricks' so runs land in the workspace, "
            "not in a SQLite file on the driver"
        )
    elif not settings.mlflow_experiment.startswith("/"):
        problems.append(
            f"MLflow experiment {settings.mlflow_experiment!r} must be a workspace path such as "
            "/Users/<you>/fedstream (--experiment)"
        )
    registry = values.get("MLFLOW_REGISTRY_URI", tracking)
    if settings.register_every and registry.startswith("databricks-uc"):
        problems.append(
            "registering every "
            f"{settings.register_every} versions in the Unity Catalog registry is not supported yet: it accepts "
            "only MLflow models with a signature, and the job registers a bare safetensors file; pass "
            "--register-every 0 (versions stay in model_versions, fl.models and the MLflow run)"
        )
    return problems


def refuse_unsupported(settings: JobSettings, environ: Mapping[str, str] | None = None) -> None:
    """Raise ``UnsupportedOnDatabricksError`` listing every problem with ``settings`` on this Databricks compute."""
    problems = settings_problems(settings, environ)
    if problems:
        raise UnsupportedOnDatabricksError(_message(problems))


def refuse_spark_connect(spark: object, environ: Mapping[str, str] | None = None) -> None:
    """Raise ``UnsupportedOnDatabricksError`` when ``spark`` (or the environment) is Spark Connect or serverless."""
    problems = compute_problems(environ, spark)
    if problems:
        raise UnsupportedOnDatabricksError(_message(problems))


def _message(problems: list[str]) -> str:
    listed = "\n- ".join(problems)
    return f"fedstream's streaming job cannot run on Databricks like this:\n- {listed}\n(see docs/databricks.md)"


# ── Unity Catalog grants: the job's principal and auditors ──────────────────────────────────────────────────────

AUDITED_TABLES = ("updates", "rejected_updates", "model_versions", "client_keys", "update_chunks")
"""The job's tables; each has an auditor's view ``<table>_audit`` without binary blobs (``streaming_jobs.tables``)."""


def _principal(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or "`" in name:
        raise ValueError(f"principal {name!r} ({type(name).__name__}) must be a non-empty name without backticks")
    return f"`{name}`"


def job_principal_grants(schema_name: str, principal: str, volume: str) -> list[str]:
    """SQL that lets ``principal`` (the job's service principal) run the job on ``catalog.schema``.

    CREATE TABLE also covers the auditor's views the job creates; the job owns what it creates, which it needs
    to change table properties and redefine views. CREATE MODEL is for the registry (``register_every``).
    """
    catalog, _, schema = schema_name.partition(".")
    qualified, who = catalog_schema(catalog, schema), _principal(principal)
    if not isinstance(volume, str) or not _NAME_PART.match(volume):
        raise ValueError(f"volume {volume!r} ({type(volume).__name__}) must be letters, digits and underscores")
    volume_name = f"{qualified}.{volume}"
    return [
        f"GRANT USE CATALOG ON CATALOG {catalog} TO {who};",
        f"GRANT USE SCHEMA, CREATE TABLE, SELECT, MODIFY, CREATE MODEL ON SCHEMA {qualified} TO {who};",
        f"GRANT READ VOLUME, WRITE VOLUME ON VOLUME {volume_name} TO {who};",
    ]


def auditor_grants(schema_name: str, auditors: str) -> list[str]:
    """SQL that lets ``auditors`` (a group) read the auditor's views, and nothing else in the schema."""
    catalog, _, schema = schema_name.partition(".")
    qualified, who = catalog_schema(catalog, schema), _principal(auditors)
    return [
        f"GRANT USE CATALOG ON CATALOG {catalog} TO {who};",
        f"GRANT USE SCHEMA ON SCHEMA {qualified} TO {who};",
        *(f"GRANT SELECT ON VIEW {qualified}.{table}_audit TO {who};" for table in AUDITED_TABLES),
    ]


def warehouse_permission_command(warehouse_id: str, auditors: str) -> str:
    """Databricks CLI command that gives ``auditors`` CAN USE on a SQL warehouse (no SQL statement does)."""
    if not re.fullmatch(r"[0-9a-f]{16}", warehouse_id or ""):
        raise ValueError(f"warehouse id {warehouse_id!r} should be the 16 hex digits shown in the warehouse's URL")
    _principal(auditors)
    body = f'{{"access_control_list": [{{"group_name": "{auditors}", "permission_level": "CAN_USE"}}]}}'
    return f"databricks warehouses update-permissions {warehouse_id} --json '{body}'"
