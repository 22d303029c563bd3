"""Offline checks of databricks.yml: it parses, and its job is the job the code runs.

The YAML checks always run. ``databricks bundle validate`` runs too when the Databricks CLI is installed: it is
pointed at a small fake workspace on localhost that answers the three calls validation makes (host metadata,
current user, workspace folder status), so no workspace and no network are needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pyspark.sql.types import BinaryType

from fedstream import cli
from fedstream import dashboard as fedstream_dashboard
from fedstream.report.data import PSEUDONYM_DIGITS
from schemas.kafka_settings import SHADED_KAFKA_CLASS_PACKAGE
from streaming_jobs import databricks
from streaming_jobs.settings import ENVIRONMENT_VARIABLES, JobSettings
from streaming_jobs.signing_key import JobSigningKey
from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATES

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = yaml.safe_load((ROOT / "databricks.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCS = ROOT / "docs" / "databricks.md"
USER = "someone@example.com"
BOOTSTRAP = "broker-1.example.com:9096"
WAREHOUSE_ID = "0123456789abcdef"
MLFLOW_VARIABLES = {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"}
RUNTIME_OWN = {"pyspark", "delta-spark", "mlflow"}
"""Spark and Delta are the runtime's; MLflow on the cluster is the runtime's mlflow-skinny (pinned in the bundle)."""
RUNTIME_PREINSTALLED_COMPATIBLE = {"numpy", "pydantic", "pandas", "pyarrow"}
"""Preinstalled on Databricks Runtime 17.3 LTS at versions fedstream's requirements allow; never replaced."""
REFERENCE = re.compile(r"\$\{([a-z_]+(?:\.[A-Za-z_]+)+)\}")


def the_job() -> dict[str, Any]:
    jobs = BUNDLE["resources"]["jobs"]
    assert len(jobs) == 1, f"expected one job, found {sorted(jobs)}"
    job: dict[str, Any] = next(iter(jobs.values()))
    return job


def the_task() -> dict[str, Any]:
    tasks = the_job()["tasks"]
    assert len(tasks) == 1, f"expected one task, found {[task['task_key'] for task in tasks]}"
    task: dict[str, Any] = tasks[0]
    return task


def the_cluster() -> dict[str, Any]:
    clusters = {cluster["job_cluster_key"]: cluster["new_cluster"] for cluster in the_job()["job_clusters"]}
    cluster: dict[str, Any] = clusters[the_task()["job_cluster_key"]]
    return cluster


def resolve(value: str, target: str = "dev", overrides: dict[str, str] | None = None) -> str:
    """Substitute ``${var.*}``, ``${bundle.target}`` and ``${workspace.current_user.userName}`` as the CLI would."""
    variables = {name: str(spec.get("default", "")) for name, spec in BUNDLE["variables"].items()}
    variables.update(BUNDLE["targets"][target].get("variables") or {})
    variables.update(overrides or {})
    known = {"bundle.target": target, "bundle.name": BUNDLE["bundle"]["name"], "workspace.current_user.userName": USER}
    known.update({f"var.{name}": value for name, value in variables.items()})
    for _ in range(10):
        replaced = REFERENCE.sub(lambda match: known[match.group(1)], value)
        if replaced == value:
            return value
        value = replaced
    raise AssertionError(f"references in {value!r} do not resolve")


def bundle_environment(target: str = "dev") -> dict[str, str]:
    overrides = {"kafka_bootstrap_servers": BOOTSTRAP}
    return {name: resolve(str(value), target, overrides) for name, value in the_cluster()["spark_env_vars"].items()}


def bundle_parameters(target: str = "dev") -> list[str]:
    return [resolve(str(parameter), target) for parameter in the_task()["python_wheel_task"]["parameters"]]


# ── structure ───────────────────────────────────────────────────────────────────────────────────────────────────


def test_dev_and_prod_targets_exist() -> None:
    targets = BUNDLE["targets"]
    assert targets["dev"]["mode"] == "development"
    assert targets["dev"].get("default") is True
    assert targets["prod"]["mode"] == "production"
    assert targets["prod"]["workspace"]["root_path"], "production mode needs one fixed root_path"


def test_the_job_is_continuous_and_single_run() -> None:
    job = the_job()
    assert job["continuous"] == {"pause_status": "UNPAUSED"}
    assert "schedule" not in job and "trigger" not in job
    assert job["max_concurrent_runs"] == 1


def test_every_variable_reference_is_declared() -> None:
    text = (ROOT / "databricks.yml").read_text()
    used = {match.group(1).split(".", 1)[1] for match in REFERENCE.finditer(text) if match.group(1).startswith("var.")}
    assert used <= set(BUNDLE["variables"]), f"undeclared: {sorted(used - set(BUNDLE['variables']))}"
    assert not set(BUNDLE["variables"]) - used, f"unused: {sorted(set(BUNDLE['variables']) - used)}"


def test_the_issue_variables_exist() -> None:
    wanted = {"catalog", "schema", "checkpoint_location", "kafka_bootstrap_servers", "secret_scope"}
    assert wanted <= set(BUNDLE["variables"])
    assert "default" not in BUNDLE["variables"]["kafka_bootstrap_servers"], "the broker must be given explicitly"


def test_checkpoint_is_on_a_unity_catalog_volume() -> None:
    checkpoint = resolve("${var.checkpoint_location}")
    assert re.fullmatch(r"/Volumes/[a-z0-9_]+/[a-z0-9_]+/[a-z0-9_]+/checkpoints/[a-z0-9_-]+", checkpoint), checkpoint


# ── the entry point is fedstream's ─────────────────────────────────────────────────────────────────────────────


def test_the_wheel_task_runs_the_fedstream_console_script() -> None:
    wheel_task = the_task()["python_wheel_task"]
    assert wheel_task["package_name"] == PYPROJECT["project"]["name"]
    scripts = PYPROJECT["project"]["scripts"]
    assert wheel_task["entry_point"] in scripts
    assert scripts[wheel_task["entry_point"]] == "fedstream.cli:main"
    assert bundle_parameters()[0] == "job"


def test_every_parameter_is_accepted_by_the_cli() -> None:
    parameters = bundle_parameters()
    try:
        arguments = cli._parser().parse_args(parameters)
    except SystemExit as exit_:
        pytest.fail(f"`fedstream {' '.join(parameters)}` is refused by the CLI parser (exit {exit_.code})")
    assert arguments.handler is cli._job
    flags = [parameter for parameter in parameters if parameter.startswith("--")]
    assert len(flags) == len(set(flags)), f"a flag is passed twice: {flags}"


def test_every_environment_variable_is_read_by_the_settings() -> None:
    names = set(the_cluster()["spark_env_vars"])
    fedstream = {name for name in names if name.startswith("FEDSTREAM_")}
    assert fedstream <= set(ENVIRONMENT_VARIABLES), (
        f"not read by JobSettings: {sorted(fedstream - set(ENVIRONMENT_VARIABLES))}"
    )
    assert names - fedstream == MLFLOW_VARIABLES


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_the_bundle_builds_settings_the_job_accepts_on_databricks(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``fedstream job`` exactly as the wheel task does, on a pretend runtime, and keep the settings it builds."""

    class Secrets:
        def get(self, scope: str, key: str) -> str:
            assert scope == resolve("${var.secret_scope}", target)
            return {
                databricks.SASL_USERNAME_KEY: "fedstream-job",
                databricks.SASL_PASSWORD_KEY: "s3cret",
                databricks.SIGNING_KEY_SECRET_KEY: JobSigningKey.generate().private_pem().decode(),
            }[key]

    class Dbutils:
        secrets = Secrets()

    for name in ENVIRONMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**bundle_environment(target), "DATABRICKS_RUNTIME_VERSION": "17.3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(databricks, "find_dbutils", Dbutils)
    built: list[JobSettings] = []
    monkeypatch.setattr("streaming_jobs.job.run_job", lambda settings, **_: built.append(settings))

    assert cli.main(bundle_parameters(target)) == 0

    (settings,) = built
    assert settings.catalog_schema == f"{resolve('${var.catalog}', target)}.{resolve('${var.schema}', target)}"
    assert settings.checkpoint_location == resolve("${var.checkpoint_location}", target)
    assert settings.initial_model_path == resolve("${var.initial_model}", target)
    assert settings.kafka.bootstrap_servers == BOOTSTRAP
    jaas = settings.kafka.spark_source_options()["kafka.sasl.jaas.config"]
    assert jaas.startswith(f"{SHADED_KAFKA_CLASS_PACKAGE}.common.security.scram.ScramLoginModule required ")
    assert settings.signing_key is not None, "the job's signing key comes from the secret scope"
    assert databricks.settings_problems(settings) == []


# ── compute and libraries ───────────────────────────────────────────────────────────────────────────────────────


def test_the_cluster_is_classic_dedicated_spark_4() -> None:
    cluster = the_cluster()
    version = resolve(cluster["spark_version"])
    match = re.fullmatch(r"(\d+)\.(\d+)\.x-scala2\.13", version)
    assert match and int(match.group(1)) >= 17, f"{version} is not a Databricks Runtime with Spark 4"
    assert cluster["data_security_mode"] == "SINGLE_USER", "Spark Connect (standard access mode) cannot run the job"
    assert "environment_key" not in the_task(), "serverless compute cannot run the job"


def test_no_jar_resolution_and_no_spark_from_pypi() -> None:
    cluster, task = the_cluster(), the_task()
    assert not any(key.startswith("spark.jars") for key in cluster.get("spark_conf", {}))
    kinds = {kind for library in task["libraries"] for kind in library}
    assert kinds <= {"whl", "pypi"}, f"unexpected library kinds {kinds}"
    packages = [library["pypi"]["package"] for library in task["libraries"] if "pypi" in library]
    names = {re.split(r"[<>=!~\[ ]", package, maxsplit=1)[0] for package in packages}
    assert not names & {"pyspark", "delta-spark"}, "the runtime's own pyspark and Delta must not be replaced"


def bundle_pins() -> dict[str, str]:
    """``name: version`` of every PyPI library of the job's task."""
    pins = {}
    for library in the_task()["libraries"]:
        if "pypi" in library:
            name, _, version = library["pypi"]["package"].partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_every_pypi_library_is_pinned_to_one_version() -> None:
    """A range installs whatever PyPI has at each cluster start: the job would change under a running deployment."""
    packages = [library["pypi"]["package"] for library in the_task()["libraries"] if "pypi" in library]
    assert packages
    for package in packages:
        requirement = Requirement(package)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and "*" not in specifier.version, f"{package!r} is not pinned with =="
        assert not requirement.extras and requirement.marker is None and requirement.url is None, package
    assert len(bundle_pins()) == len(packages), "a library is listed twice"


def test_the_cluster_installs_every_server_extra_the_runtime_lacks_at_a_version_it_allows() -> None:
    server = [Requirement(requirement) for requirement in PYPROJECT["project"]["optional-dependencies"]["server"]]
    core = [Requirement(requirement) for requirement in PYPROJECT["project"]["dependencies"]]
    pins = bundle_pins()
    for requirement in [*server, *core]:
        name = canonicalize_name(requirement.name)
        if name in RUNTIME_OWN or name in RUNTIME_PREINSTALLED_COMPATIBLE:
            continue
        assert name in pins, f"{name} missing from the job cluster"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} not in {requirement}"
        )


def test_pins_of_preinstalled_libraries_are_the_runtimes_own_versions() -> None:
    """Pinning a preinstalled library to another version would replace the runtime's copy at every start."""
    preinstalled = {
        canonicalize_name(line.split("==")[0]): line.split("==")[1].strip()
        for line in (ROOT / "databricks-runtime" / "preinstalled-17.3.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    pins = bundle_pins()
    replaced = {name: (pins[name], preinstalled[name]) for name in pins.keys() & preinstalled.keys()}
    assert {"cryptography", "mlflow-skinny"} <= replaced.keys()
    replaced = {name: versions for name, versions in replaced.items() if versions[0] != versions[1]}
    assert replaced == {"attrs": ("23.2.0", "24.3.0")}, "only attrs is replaced (dp-accounting needs attrs<24)"
    for name in RUNTIME_PREINSTALLED_COMPATIBLE:
        requirement = next(
            Requirement(r)
            for r in [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["server"]]
            if canonicalize_name(Requirement(r).name) == name
        )
        assert requirement.specifier.contains(preinstalled[name]), (
            f"the runtime's {name} {preinstalled[name]} ∉ {requirement}"
        )


def test_the_wheel_library_is_the_artifact_built_here() -> None:
    (artifact,) = BUNDLE["artifacts"].values()
    assert artifact["type"] == "whl"
    assert artifact["path"] == "."
    assert "--wheel-dir dist" in artifact["build"]
    wheels = [library["whl"] for library in the_task()["libraries"] if "whl" in library]
    assert wheels == ["./dist/fedstream-*.whl"]


def test_the_docs_cover_every_variable() -> None:
    text = DOCS.read_text()
    missing = [name for name in BUNDLE["variables"] if name not in text]
    assert not missing, f"docs/databricks.md does not mention {missing}"


# ── `databricks bundle validate` against a fake workspace ──────────────────────────────────────────────────────


class FakeWorkspace(BaseHTTPRequestHandler):
    """Answers what ``bundle validate`` asks a workspace; anything else is a 404 the CLI would report."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlparse(self.path)
        status, body = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{url.path} is not faked"}
        if url.path == "/api/2.0/preview/scim/v2/Me":
            status, body = 200, {"id": "1000", "userName": USER, "active": True}
        elif url.path == "/api/2.0/workspace/get-status":
            status, body = 200, {"object_type": "DIRECTORY", "path": parse_qs(url.query)["path"][0], "object_id": 1}
        elif url.path == "/api/2.0/workspace/mkdirs":
            status, body = 200, {}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def databricks_cli() -> str | None:
    """The Go Databricks CLI (the legacy Python one has no ``bundle`` command), or None."""
    candidate = os.environ.get("FEDSTREAM_DATABRICKS_CLI") or shutil.which("databricks")
    if candidate is None:
        return None
    probe = subprocess.run([candidate, "bundle", "--help"], capture_output=True, text=True, timeout=60, check=False)
    return candidate if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def fake_workspace() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWorkspace)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_databricks_bundle_validate(target: str, fake_workspace: str, tmp_path: Path) -> None:
    executable = databricks_cli()
    if executable is None:
        pytest.skip("the Databricks CLI (Go, `databricks bundle`) is not installed; the YAML checks above still ran")
    shutil.copy(ROOT / "databricks.yml", tmp_path / "databricks.yml")  # validate writes .databricks/ beside it
    shutil.copytree(ROOT / "dashboards", tmp_path / "dashboards")  # the dashboard resource's file_path
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DATABRICKS_HOST": fake_workspace,
        "DATABRICKS_TOKEN": "dapi-placeholder",
        "DATABRICKS_CONFIG_FILE": str(tmp_path / "no-databrickscfg"),
    }
    command = [executable, "bundle", "validate", "--strict", "-t", target, "-o", "json"]
    command += ["--var", f"kafka_bootstrap_servers={BOOTSTRAP}"]
    command += ["--var", f"warehouse_id={WAREHOUSE_ID}"]
    result = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    (job,) = resolved["resources"]["jobs"].values()
    assert job["continuous"]["pause_status"] == "UNPAUSED"
    (task,) = job["tasks"]
    assert task["python_wheel_task"]["parameters"] == bundle_parameters(target)
    (cluster,) = job["job_clusters"]
    assert cluster["new_cluster"]["spark_env_vars"] == bundle_environment(target)
    assert "${" not in json.dumps(job)
    (dashboard,) = resolved["resources"]["dashboards"].values()
    assert (dashboard["dataset_catalog"], dashboard["dataset_schema"], dashboard["warehouse_id"]) == (
        resolve("${var.catalog}", target),
        resolve("${var.schema}", target),
        WAREHOUSE_ID,
    )


def test_dev_and_prod_share_no_schema_checkpoint_writer_or_kafka_identity() -> None:
    """A `deploy -t dev` must never run on production's tables, checkpoint, writer id or Kafka login."""
    parameters = the_task()["python_wheel_task"]["parameters"]

    def flag(name: str, target: str) -> str:
        return resolve(str(parameters[parameters.index(name) + 1]), target)

    for name in ("--checkpoint", "--writer-id"):
        assert flag(name, "dev") != flag(name, "prod"), name
    for variable in ("${var.schema}", "${var.secret_scope}"):
        assert resolve(variable, "dev") != resolve(variable, "prod"), variable
    assert flag("--checkpoint", "dev").startswith(f"/Volumes/{resolve('${var.catalog}', 'dev')}/federated_dev/")


def test_dev_is_paused_and_prod_runs() -> None:
    dev = BUNDLE["targets"]["dev"]["resources"]["jobs"]
    assert dev[next(iter(BUNDLE["resources"]["jobs"]))]["continuous"]["pause_status"] == "PAUSED"
    assert the_job()["continuous"]["pause_status"] == "UNPAUSED"
    assert "resources" not in BUNDLE["targets"]["prod"]


# ── the AI/BI dashboard ─────────────────────────────────────────────────────────────────────────────────────────


def the_dashboard_resource() -> dict[str, Any]:
    dashboards = BUNDLE["resources"]["dashboards"]
    assert len(dashboards) == 1, f"expected one dashboard, found {sorted(dashboards)}"
    resource: dict[str, Any] = next(iter(dashboards.values()))
    return resource


def serialized_dashboard() -> dict[str, Any]:
    committed: dict[str, Any] = json.loads(fedstream_dashboard.DASHBOARD_FILE.read_text(encoding="utf-8"))
    return committed


def widget_queries() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (widget, query) of every page of the committed dashboard."""
    for page in serialized_dashboard()["pages"]:
        for entry in page["layout"]:
            for query in entry["widget"].get("queries", []):
                yield entry["widget"], query


def test_the_committed_dashboard_is_what_the_module_generates() -> None:
    """dashboards/*.lvdash.json is generated: edit fedstream/dashboard.py and run `python -m fedstream.dashboard`."""
    committed = fedstream_dashboard.DASHBOARD_FILE.read_text(encoding="utf-8")
    assert committed == fedstream_dashboard.render(), "run `.venv/bin/python -m fedstream.dashboard`"
    assert fedstream_dashboard.main(["--check"]) == 0


def test_the_bundle_deploys_the_dashboard_on_the_bundles_schema() -> None:
    resource = the_dashboard_resource()
    assert (ROOT / resource["file_path"]).resolve() == fedstream_dashboard.DASHBOARD_FILE
    assert resource["dataset_catalog"] == "${var.catalog}"
    assert resource["dataset_schema"] == "${var.schema}"
    assert resource["warehouse_id"] == "${var.warehouse_id}"
    assert resource["embed_credentials"] is False, "viewers query with their own grants (the auditors' views)"
    assert resource["display_name"]
    assert resolve("${var.schema}", "dev") != resolve("${var.schema}", "prod"), "dev's dashboard reads dev's tables"
    warehouse = BUNDLE["variables"]["warehouse_id"]
    assert warehouse["description"] and "default" not in warehouse, "the warehouse must be given explicitly"


def test_every_widget_query_reads_a_dataset_and_columns_it_selects() -> None:
    serialized = serialized_dashboard()
    declared = {dataset.name: dataset.columns for dataset in fedstream_dashboard.DATASETS}
    names = [dataset["name"] for dataset in serialized["datasets"]]
    assert names == list(declared), "the file's datasets are the module's"
    widgets = [entry["widget"]["name"] for page in serialized["pages"] for entry in page["layout"]]
    assert len(widgets) == len(set(widgets)), f"a widget name is used twice: {widgets}"
    used = set()
    for widget, query in widget_queries():
        dataset = query["query"]["datasetName"]
        assert dataset in declared, f"{widget['name']} reads no dataset of the dashboard: {dataset!r}"
        used.add(dataset)
        for field in query["query"]["fields"]:
            (column,) = re.findall(r"`([^`]+)`", field["expression"])
            assert column in declared[dataset], f"{widget['name']}: {dataset} selects no {column!r}"
        assert isinstance(query["query"]["disaggregated"], bool)
    assert used == set(declared), f"datasets no widget shows: {sorted(set(declared) - used)}"


def test_every_encoding_names_a_field_of_its_widgets_queries() -> None:
    for page in serialized_dashboard()["pages"]:
        for entry in page["layout"]:
            widget, spec = entry["widget"], entry["widget"]["spec"]
            queries = {
                query["name"]: {field["name"] for field in query["query"]["fields"]} for query in widget["queries"]
            }
            encodings = spec["encodings"]
            if spec["widgetType"].startswith("filter-"):
                for field in encodings["fields"]:
                    assert field["fieldName"] in queries[field["queryName"]], widget["name"]
                assert {field["queryName"] for field in encodings["fields"]} == set(queries), widget["name"]
                continue
            (fields,) = queries.values()
            named = [column["fieldName"] for column in encodings.get("columns", [])]
            named += [encoding["fieldName"] for key, encoding in encodings.items() if key != "columns"]
            assert set(named) == fields, f"{widget['name']}: encodings {named} but query fields {sorted(fields)}"
            assert spec["frame"]["showTitle"] and spec["frame"]["title"]


def test_the_widgets_tile_a_six_column_grid_without_overlap() -> None:
    for page in serialized_dashboard()["pages"]:
        cells: dict[tuple[int, int], str] = {}
        for entry in page["layout"]:
            position, name = entry["position"], entry["widget"]["name"]
            assert position["x"] >= 0 and position["x"] + position["width"] <= 6, name
            for x in range(position["x"], position["x"] + position["width"]):
                for y in range(position["y"], position["y"] + position["height"]):
                    assert (x, y) not in cells, f"{name} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = name


BLOB_COLUMNS = {
    field.name
    for table in (UPDATES, REJECTED_UPDATES, MODEL_VERSIONS)
    for field in table.schema.fields
    if isinstance(field.dataType, BinaryType)
}
ALLOWED_CLIENT_ID = re.compile(
    r"sha2\((?:\w+\.)?client_id, 256\)|count\(DISTINCT client_id\)|WHERE client_id IS NOT NULL", re.IGNORECASE
)


def test_no_dataset_reads_a_blob_or_returns_a_client_id() -> None:
    assert {"payload", "signature", "raw_value", "key", "parameters", "optimizer_state"} <= BLOB_COLUMNS
    for dataset in serialized_dashboard()["datasets"]:
        sql = "".join(dataset["queryLines"])
        words = set(re.findall(r"\w+", sql.lower()))
        assert not words & BLOB_COLUMNS, f"{dataset['name']} mentions {sorted(words & BLOB_COLUMNS)}"
        assert "client_id" not in ALLOWED_CLIENT_ID.sub("", sql), f"{dataset['name']} uses client_id bare"
    for dataset in fedstream_dashboard.DATASETS:
        assert "client_id" not in dataset.columns and not BLOB_COLUMNS & set(dataset.columns), dataset.name
    pseudonym = fedstream_dashboard.pseudonym_sql("client_id")
    assert pseudonym == f"substr(sha2(client_id, 256), 1, {PSEUDONYM_DIGITS})", "the report's pseudonym"


def test_datasets_read_only_the_auditors_views_by_unqualified_name() -> None:
    views = {table.audit_view for table in (UPDATES, REJECTED_UPDATES, MODEL_VERSIONS)}
    assert {
        fedstream_dashboard.UPDATES_VIEW,
        fedstream_dashboard.REJECTED_VIEW,
        fedstream_dashboard.VERSIONS_VIEW,
    } == views
    assert views <= {f"{table}_audit" for table in databricks.AUDITED_TABLES}, "the auditors are granted these"
    for dataset in serialized_dashboard()["datasets"]:
        sql = "".join(dataset["queryLines"])
        common = set(re.findall(r"(?:WITH|,)\s*(\w+) AS \(", sql))
        sources = set(re.findall(r"\b(?:FROM|JOIN)\s+([\w.`]+)", sql))
        assert sources <= views | common, f"{dataset['name']} reads {sorted(sources - views - common)}"
