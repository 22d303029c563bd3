"""The job's signing key: where it comes from (environment, file, secret scope, local stack) and what it signs."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from fedstream import cli
from producers.trusted_versions import VersionChain
from schemas.rows import ModelVersionRow
from schemas.tensors import encode_tensors, parameter_hash
from streaming_jobs import databricks
from streaming_jobs.settings import ENVIRONMENT_VARIABLES, JobSettings
from streaming_jobs.signing_key import (
    SIGNING_KEY_FILE_VARIABLE,
    SIGNING_KEY_VARIABLE,
    JobSigningKey,
    SigningKeyError,
    job_signing_key,
    local_job_key,
)
from tests.unit.test_job_settings import DATABRICKS_ENV, FakeDbutils, good_databricks_settings
from tests.unit.test_trusted_versions import parameters

KEY = JobSigningKey.generate()
PEM = KEY.private_pem().decode()
SCOPE = {
    "FEDSTREAM_SECRET_SCOPE": "fedstream",
    "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "FEDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "FEDSTREAM_KAFKA_SASL_USERNAME": "job",  # Kafka credentials from the environment: only the key is in the scope
    "FEDSTREAM_KAFKA_SASL_PASSWORD": "s3cret",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [*ENVIRONMENT_VARIABLES, *DATABRICKS_ENV]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEDSTREAM_HOME", str(tmp_path / "state"))


def test_the_key_in_the_environment_is_used() -> None:
    settings = JobSettings.from_env({SIGNING_KEY_VARIABLE: PEM})
    assert job_signing_key(settings).public_key == KEY.public_key
    assert PEM not in repr(settings) and "BEGIN" not in repr(settings)


def test_the_key_file_is_used(tmp_path: Path) -> None:
    private_path, public_path = KEY.save(tmp_path / "keys")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert public_path.read_text() == KEY.public_key.hex() + "\n"
    settings = JobSettings.from_env({SIGNING_KEY_FILE_VARIABLE: str(private_path)})
    loaded = job_signing_key(settings)
    assert (loaded.public_key, loaded.source) == (KEY.public_key, str(private_path))


def test_the_key_comes_from_the_secret_scope_unless_the_environment_names_one() -> None:
    dbutils = FakeDbutils({("fedstream", "job-signing-key"): PEM})
    settings = JobSettings.from_env(SCOPE, dbutils=dbutils)
    assert job_signing_key(settings).public_key == KEY.public_key
    assert dbutils.secrets.calls == [("fedstream", "job-signing-key")]

    file_instead = FakeDbutils({})
    settings = JobSettings.from_env({**SCOPE, SIGNING_KEY_FILE_VARIABLE: "/keys/job.key"}, dbutils=file_instead)
    assert settings.signing_key_file == "/keys/job.key"
    assert file_instead.secrets.calls == []


def test_a_missing_secret_says_how_to_put_it() -> None:
    with pytest.raises(databricks.MissingSecretError) as missing:
        JobSettings.from_env(SCOPE, dbutils=FakeDbutils({}))
    assert "databricks secrets put-secret fedstream job-signing-key" in str(missing.value)


def test_two_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"signing_key and signing_key_file .* are both set"):
        JobSettings.from_env({SIGNING_KEY_VARIABLE: PEM, SIGNING_KEY_FILE_VARIABLE: "/keys/job.key"})


def test_a_key_that_is_not_an_ed25519_pem_is_refused_without_showing_it() -> None:
    settings = JobSettings.from_env({SIGNING_KEY_VARIABLE: "not a key at all"})
    with pytest.raises(SigningKeyError) as refused:
        job_signing_key(settings)
    assert str(refused.value) == "JobSettings.signing_key is not an unencrypted PEM private key (ValueError)"
    elliptic = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(SigningKeyError, match="holds a ECPrivateKey, not an Ed25519 private key"):
        job_signing_key(JobSettings(signing_key=elliptic.decode()))


def test_an_unreadable_key_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match=f"cannot read the job's signing key {tmp_path / 'missing.key'}"):
        job_signing_key(JobSettings(signing_key_file=str(tmp_path / "missing.key")))


def test_a_local_job_without_a_key_makes_the_local_stacks_once(tmp_path: Path) -> None:
    first = job_signing_key(JobSettings())
    private_path = tmp_path / "state" / "keys" / "fedstream-job.key"
    assert first.source == str(private_path)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert (tmp_path / "state" / "keys" / "fedstream-job.pub").read_text().strip() == first.public_key.hex()
    assert job_signing_key(JobSettings()).public_key == first.public_key
    assert local_job_key().public_key == first.public_key


def test_on_databricks_a_missing_key_is_a_problem_not_a_local_key(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = databricks.settings_problems(good_databricks_settings(signing_key_file=None), DATABRICKS_ENV)
    assert problems == [databricks.MISSING_SIGNING_KEY]
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    with pytest.raises(SigningKeyError, match="no signing key for the global versions"):
        job_signing_key(JobSettings.model_construct(signing_key=None, signing_key_file=None))


def test_the_publisher_signs_each_version_so_that_clients_take_it() -> None:
    from streaming_jobs.publisher import model_message

    rows = []
    for version in range(2):
        params = parameters(version)
        rows.append(
            ModelVersionRow.model_construct(
                model_name="har-cnn",
                version=version,
                parent_version=None if version == 0 else version - 1,
                parent_parameter_hash=None if version == 0 else parameter_hash(parameters(version - 1)),
                parameter_hash=parameter_hash(params),
                parameters=encode_tensors(params),
                created_at=datetime(2025, 3, 1, tzinfo=UTC),
                update_ids=[],
            )
        )
    chain = VersionChain(KEY.public_key, "har-cnn")
    for row in rows:
        taken = chain.offer(model_message(row, KEY.sign))
        assert taken is not None and not isinstance(taken, str)
    assert chain.newest is not None and chain.newest.header.version == 1
    assert VersionChain(JobSigningKey.generate().public_key, "har-cnn").offer(model_message(rows[0], KEY.sign))


def test_the_cli_makes_a_key_pair_and_never_replaces_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["job-key", "--out", str(tmp_path)]) == 0
    made = JobSigningKey.from_file(tmp_path / "fedstream-job.key")
    assert (tmp_path / "fedstream-job.pub").read_text().strip() == made.public_key.hex()
    assert "FEDSTREAM_JOB_PUBLIC_KEY_FILE" in capsys.readouterr().out
    assert cli.main(["job-key", "--out", str(tmp_path)]) == 1
    assert JobSigningKey.from_file(tmp_path / "fedstream-job.key").public_key == made.public_key


def test_the_job_command_takes_a_signing_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    private_path, _ = KEY.save(tmp_path)
    monkeypatch.setenv(SIGNING_KEY_VARIABLE, JobSigningKey.generate().private_pem().decode())
    built: list[JobSettings] = []
    monkeypatch.setattr("streaming_jobs.job.run_job", lambda settings, **_: built.append(settings))
    assert cli.main(["job", "--signing-key", str(private_path)]) == 0
    (settings,) = built
    assert job_signing_key(settings).public_key == KEY.public_key, "--signing-key wins over the environment"
