"""JobSettings and KafkaSettings: local defaults unchanged, environment, SASL/TLS, and the Databricks differences.

The ``dbutils`` here is a plain test double: what is tested is fedstream's lookup (which scope, which keys, what
happens when one is missing), not Databricks' secret service.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from schemas.kafka_settings import ENVIRONMENT_VARIABLES as KAFKA_VARIABLES
from schemas.kafka_settings import LOCAL_PORT_VARIABLE, KafkaSettings, jaas_config, login_module
from schemas.topics import topic_message_bytes
from streaming_jobs import databricks
from streaming_jobs.settings import ENVIRONMENT_VARIABLES, JobSettings

DATABRICKS_ENV = {
    "DATABRICKS_RUNTIME_VERSION": "17.3",
    "MLFLOW_TRACKING_URI": "databricks",
    "MLFLOW_REGISTRY_URI": "databricks-uc",
}


class FakeSecrets:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values = values
        self.calls: list[tuple[str, str]] = []

    def get(self, scope: str, key: str) -> str:
        self.calls.append((scope, key))
        if (scope, key) not in self.values:
            raise RuntimeError(f"Secret does not exist with scope: {scope} and key: {key}")
        return self.values[(scope, key)]


class FakeDbutils:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.secrets = FakeSecrets(values)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [
        *ENVIRONMENT_VARIABLES,
        *DATABRICKS_ENV,
        "SPARK_CONNECT_MODE_ENABLED",
        "SPARK_REMOTE",
        LOCAL_PORT_VARIABLE,
    ]:
        monkeypatch.delenv(name, raising=False)


def scram(**overrides: object) -> KafkaSettings:
    values: dict[str, object] = {
        "bootstrap_servers": "broker-1.example.com:9096,broker-2.example.com:9096",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "fedstream-job",
        "sasl_password": "s3cret",
    }
    return KafkaSettings.model_validate({**values, **overrides})


def good_databricks_settings(**overrides: object) -> JobSettings:
    values: dict[str, object] = {
        "catalog_schema": "main.federated",
        "checkpoint_location": "/Volumes/main/federated/fedstream/checkpoints/aggregation-job",
        "mlflow_experiment": "/Users/someone@example.com/fedstream",
        "register_every": 0,
        "kafka": scram(shaded_kafka_classes=True),
        "signing_key_file": "/Volumes/main/federated/fedstream/keys/fedstream-job.key",
    }
    return JobSettings.model_validate({**values, **overrides})


# ── local defaults stay what they were ──────────────────────────────────────────────────────────────────────────


@pytest.mark.usefixtures("clean_env")
def test_local_defaults_are_unchanged() -> None:
    settings = JobSettings()
    assert settings.catalog_schema is None
    assert settings.kafka == KafkaSettings()
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert not settings.kafka.shaded_kafka_classes
    assert settings.registered_model_name == "fedstream-har-cnn"
    assert settings.checkpoint_location.endswith("checkpoints/aggregation-job")
    assert JobSettings.from_env({}) == settings


def test_plaintext_client_options_are_unchanged() -> None:
    kafka = KafkaSettings(bootstrap_servers="a:9092,b:9092")
    assert kafka.producer_options() == {
        "bootstrap_servers": ["a:9092", "b:9092"],
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": topic_message_bytes(kafka.max_message_bytes),
        "retries": 10,
    }
    assert kafka.consumer_options() == {
        "bootstrap_servers": ["a:9092", "b:9092"],
        "max_partition_fetch_bytes": topic_message_bytes(kafka.max_message_bytes),
        "fetch_max_bytes": topic_message_bytes(kafka.max_message_bytes),
    }
    assert kafka.admin_options() == {"bootstrap_servers": ["a:9092", "b:9092"]}
    assert kafka.spark_source_options() == {
        "kafka.bootstrap.servers": "a:9092,b:9092",
        "kafka.max.partition.fetch.bytes": str(topic_message_bytes(kafka.max_message_bytes)),
        "kafka.fetch.max.bytes": str(topic_message_bytes(kafka.max_message_bytes)),
        "kafka.fetch.max.wait.ms": "10",
    }


def test_from_env_still_reads_the_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "broker:19092")
    assert KafkaSettings.from_env() == KafkaSettings(bootstrap_servers="broker:19092")


# ── SASL / TLS ──────────────────────────────────────────────────────────────────────────────────────────────────


def test_sasl_ssl_reaches_every_kafka_python_client() -> None:
    kafka = scram(ssl_cafile="/etc/ssl/private-ca.pem")
    security = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "fedstream-job",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": "/etc/ssl/private-ca.pem",
    }
    for options in (kafka.producer_options(), kafka.consumer_options(), kafka.admin_options()):
        assert security.items() <= options.items()


def test_sasl_ssl_reaches_the_spark_source_with_an_unshaded_jaas_string() -> None:
    options = scram(ssl_cafile="/Volumes/main/federated/fedstream/ca.pem").spark_source_options()
    assert options["kafka.security.protocol"] == "SASL_SSL"
    assert options["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert options["kafka.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="fedstream-job" password="s3cret";'
    )
    assert options["kafka.ssl.truststore.type"] == "PEM"
    assert options["kafka.ssl.truststore.location"] == "/Volumes/main/federated/fedstream/ca.pem"


def test_jaas_string_names_the_shaded_class_on_databricks() -> None:
    options = scram(shaded_kafka_classes=True).spark_source_options()
    assert options["kafka.sasl.jaas.config"] == (
        "kafkashaded.org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="fedstream-job" password="s3cret";'
    )


@pytest.mark.parametrize(
    ("mechanism", "shaded", "expected"),
    [
        ("SCRAM-SHA-256", False, "org.apache.kafka.common.security.scram.ScramLoginModule"),
        ("SCRAM-SHA-512", True, "kafkashaded.org.apache.kafka.common.security.scram.ScramLoginModule"),
        ("PLAIN", False, "org.apache.kafka.common.security.plain.PlainLoginModule"),
        ("PLAIN", True, "kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule"),
    ],
)
def test_login_module_per_mechanism(mechanism: str, shaded: bool, expected: str) -> None:
    assert login_module(mechanism, shaded=shaded) == expected  # type: ignore[arg-type]


def test_jaas_values_are_escaped_and_control_characters_refused() -> None:
    config = jaas_config("PLAIN", "$ConnectionString", 'Endpoint=sb://x/;Key="a\\b"', shaded=False)
    assert config.endswith('username="$ConnectionString" password="Endpoint=sb://x/;Key=\\"a\\\\b\\"";')
    with pytest.raises(ValueError, match="control character"):
        jaas_config("PLAIN", "user", "line\nbreak", shaded=True)


def test_password_never_shows_in_repr_or_json() -> None:
    kafka = scram()
    assert "s3cret" not in repr(kafka)
    assert "s3cret" not in kafka.model_dump_json()
    assert isinstance(kafka.sasl_password, SecretStr)


def test_inconsistent_security_settings_name_every_problem() -> None:
    with pytest.raises(ValidationError) as missing:
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    assert "needs sasl_username, sasl_password" in str(missing.value)
    with pytest.raises(ValidationError) as stray:
        KafkaSettings(sasl_username="user", ssl_cafile="/ca.pem")
    assert "sasl_username given but security_protocol is PLAINTEXT" in str(stray.value)
    assert "ssl_cafile given but security_protocol PLAINTEXT does not use TLS" in str(stray.value)
    with pytest.raises(ValidationError, match="SCRAM-SHA-1"):
        scram(sasl_mechanism="SCRAM-SHA-1")


# ── one settings object from the environment ────────────────────────────────────────────────────────────────────


def test_every_environment_variable_is_read() -> None:
    environ = {
        "FEDSTREAM_CATALOG": "main",
        "FEDSTREAM_SCHEMA": "federated",
        "FEDSTREAM_CHECKPOINT_LOCATION": "/Volumes/main/federated/fedstream/checkpoints/job",
        "FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS": "broker:9096",
        "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FEDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "FEDSTREAM_KAFKA_SASL_USERNAME": "job",
        "FEDSTREAM_KAFKA_SASL_PASSWORD": "pw",
        "FEDSTREAM_KAFKA_SSL_CAFILE": "/ca.pem",
        "FEDSTREAM_KAFKA_MAX_MESSAGE_BYTES": "1000000",
        "FEDSTREAM_JOB_SIGNING_KEY_FILE": "/keys/fedstream-job.key",
    }
    # FEDSTREAM_JOB_SIGNING_KEY (the PEM itself) is the file's alternative: tests/unit/test_signing_key.py
    assert set(environ) | {"FEDSTREAM_SECRET_SCOPE", "FEDSTREAM_JOB_SIGNING_KEY"} == set(ENVIRONMENT_VARIABLES)
    assert set(KAFKA_VARIABLES) <= set(ENVIRONMENT_VARIABLES)
    settings = JobSettings.from_env(environ, model_name="hospital-mlp")
    assert settings.catalog_schema == "main.federated"
    assert settings.checkpoint_location == "/Volumes/main/federated/fedstream/checkpoints/job"
    assert settings.model_name == "hospital-mlp"
    assert settings.kafka.bootstrap_servers == "broker:9096"
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-256"
    assert settings.kafka.sasl_password == SecretStr("pw")
    assert settings.kafka.ssl_cafile == "/ca.pem"
    assert settings.kafka.max_message_bytes == 1_000_000
    assert not settings.kafka.shaded_kafka_classes
    assert (settings.signing_key, settings.signing_key_file) == (None, "/keys/fedstream-job.key")


def test_default_factories_read_the_same_environment(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.setenv("FEDSTREAM_CATALOG", "main")
    monkeypatch.setenv("FEDSTREAM_SCHEMA", "federated")
    monkeypatch.setenv("FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "broker:9096")
    assert JobSettings() == JobSettings.from_env()
    assert JobSettings().catalog_schema == "main.federated"


def test_catalog_without_schema_is_refused() -> None:
    with pytest.raises(ValueError, match="set both FEDSTREAM_CATALOG and FEDSTREAM_SCHEMA"):
        JobSettings.from_env({"FEDSTREAM_CATALOG": "main"})


# ── Unity Catalog names ─────────────────────────────────────────────────────────────────────────────────────────


def test_unity_catalog_three_part_names() -> None:
    assert databricks.catalog_schema("main", "federated") == "main.federated"
    assert databricks.table_name("main.federated", "updates") == "main.federated.updates"
    assert databricks.registered_model_name("main.federated", "har-cnn") == "main.federated.fedstream_har_cnn"
    settings = JobSettings(catalog_schema="main.federated", kafka=KafkaSettings())
    assert settings.registered_model_name == "main.federated.fedstream_har_cnn"


def test_names_that_need_quoting_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError) as refused:
        databricks.catalog_schema("my-catalog", "fl.v2")
    assert "catalog 'my-catalog' (str)" in str(refused.value)
    assert "schema 'fl.v2' (str)" in str(refused.value)


# ── secrets through dbutils ─────────────────────────────────────────────────────────────────────────────────────


def test_credentials_come_from_the_secret_scope() -> None:
    dbutils = FakeDbutils({("kafka", "kafka-sasl-username"): "job", ("kafka", "kafka-sasl-password"): 'p"w'})
    environ = {
        **DATABRICKS_ENV,
        "FEDSTREAM_SECRET_SCOPE": "kafka",
        "FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS": "broker:9096",
        "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FEDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    }
    kafka = databricks.kafka_settings_for_runtime(environ, dbutils=dbutils)
    assert dbutils.secrets.calls == [("kafka", "kafka-sasl-username"), ("kafka", "kafka-sasl-password")]
    assert kafka.sasl_username == "job"
    assert kafka.shaded_kafka_classes
    assert kafka.spark_source_options()["kafka.sasl.jaas.config"] == (
        'kafkashaded.org.apache.kafka.common.security.scram.ScramLoginModule required username="job" password="p\\"w";'
    )
    assert kafka.producer_options()["sasl_plain_password"] == 'p"w'


def test_credentials_in_the_environment_win_over_the_scope() -> None:
    dbutils = FakeDbutils({})
    environ = {
        "FEDSTREAM_SECRET_SCOPE": "kafka",
        "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FEDSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
        "FEDSTREAM_KAFKA_SASL_USERNAME": "key",
        "FEDSTREAM_KAFKA_SASL_PASSWORD": "secret",
    }
    kafka = databricks.kafka_settings_for_runtime(environ, dbutils=dbutils)
    assert dbutils.secrets.calls == []
    assert kafka.sasl_username == "key"


def test_a_missing_secret_names_the_scope_and_key() -> None:
    dbutils = FakeDbutils({("kafka", "kafka-sasl-username"): "job"})
    environ = {"FEDSTREAM_SECRET_SCOPE": "kafka", "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    with pytest.raises(databricks.MissingSecretError) as missing:
        databricks.kafka_settings_for_runtime(environ, dbutils=dbutils)
    assert "'kafka-sasl-password' from secret scope 'kafka'" in str(missing.value)
    assert "databricks secrets put-secret kafka kafka-sasl-password" in str(missing.value)


def test_a_secret_scope_without_dbutils_says_what_to_do() -> None:
    with pytest.raises(databricks.MissingSecretError, match="no dbutils is available"):
        databricks.kafka_settings_for_runtime({"FEDSTREAM_SECRET_SCOPE": "kafka"})


# ── refusing what cannot work on Databricks ─────────────────────────────────────────────────────────────────────


def test_a_complete_databricks_configuration_has_no_problem() -> None:
    assert databricks.settings_problems(good_databricks_settings(), DATABRICKS_ENV) == []


@pytest.mark.usefixtures("clean_env")
def test_local_defaults_on_databricks_list_every_problem() -> None:
    problems = databricks.settings_problems(JobSettings(), {"DATABRICKS_RUNTIME_VERSION": "17.3"})
    text = "\n".join(problems)
    assert len(problems) == 4
    assert "no signing key for the global versions" in text
    assert "no Unity Catalog schema: set FEDSTREAM_CATALOG and FEDSTREAM_SCHEMA" in text
    assert "would not outlive the cluster" in text
    assert "MLFLOW_TRACKING_URI is ''" in text


def test_serverless_is_refused_with_the_alternative() -> None:
    environ = {**DATABRICKS_ENV, "DATABRICKS_RUNTIME_VERSION": "client.4.9"}
    with pytest.raises(databricks.UnsupportedOnDatabricksError) as refused:
        databricks.refuse_unsupported(good_databricks_settings(), environ)
    message = str(refused.value)
    assert message.startswith("fedstream's streaming job cannot run on Databricks like this:")
    assert "serverless compute allows no processing-time trigger" in message
    assert "dedicated (single user) access mode" in message


def test_a_spark_connect_session_is_refused() -> None:
    connect_session = type("SparkSession", (), {"__module__": "pyspark.sql.connect.session"})()
    classic_session = type("SparkSession", (), {"__module__": "pyspark.sql.classic.session"})()
    databricks.refuse_spark_connect(classic_session, DATABRICKS_ENV)
    with pytest.raises(databricks.UnsupportedOnDatabricksError, match="cannot see the aggregation buffer"):
        databricks.refuse_spark_connect(connect_session, DATABRICKS_ENV)
    with pytest.raises(databricks.UnsupportedOnDatabricksError, match="Spark Connect session"):
        databricks.refuse_spark_connect(classic_session, {**DATABRICKS_ENV, "SPARK_CONNECT_MODE_ENABLED": "1"})


def test_registering_in_unity_catalog_is_refused_until_models_carry_a_signature() -> None:
    problems = databricks.settings_problems(good_databricks_settings(register_every=10), DATABRICKS_ENV)
    assert len(problems) == 1
    assert "--register-every 0" in problems[0]
    workspace_registry = {**DATABRICKS_ENV, "MLFLOW_REGISTRY_URI": "databricks"}
    assert databricks.settings_problems(good_databricks_settings(register_every=10), workspace_registry) == []


def test_relative_experiment_names_are_refused() -> None:
    problems = databricks.settings_problems(good_databricks_settings(mlflow_experiment="fedstream"), DATABRICKS_ENV)
    assert problems == [
        "MLflow experiment 'fedstream' must be a workspace path such as /Users/<you>/fedstream (--experiment)"
    ]


@pytest.mark.usefixtures("clean_env")
def test_job_settings_refuse_on_databricks_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    with pytest.raises(ValidationError, match="no Unity Catalog schema"):
        JobSettings()
    for name, value in DATABRICKS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = good_databricks_settings()
    assert settings.catalog_schema == "main.federated"


def test_without_bootstrap_servers_the_local_stacks_port_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("FEDSTREAM_KAFKA_PORT", "29092")  # where `fedstream stack up` then starts the broker
    assert KafkaSettings.from_env().bootstrap_servers == "localhost:29092"
    monkeypatch.setenv("FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "broker:19092")  # named servers win
    assert KafkaSettings.from_env().bootstrap_servers == "broker:19092"
    monkeypatch.delenv("FEDSTREAM_KAFKA_PORT")
    monkeypatch.delenv("FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS")
    assert KafkaSettings.from_env().bootstrap_servers == "localhost:9092"
