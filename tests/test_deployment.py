"""Deployment files stay true: `.env.example` names every variable the code reads, the YAML files
parse and say what docs/deployment.md says, and RUN_EXECUTOR fails clearly without its package."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from dagster_project.core.settings import Settings
from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "dagster_project"


def _env_example_names() -> set[str]:
    text = (PROJECT_ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def _variables_read_in_code() -> set[str]:
    """Names in os.environ[...], os.environ.get(...), os.getenv(...) and dg.EnvVar(...) calls."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            key = None
            if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                key = node.slice
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
                    "os.environ.get", "os.getenv", "os.environ.setdefault", "dg.EnvVar", "EnvVar"):
                key = node.args[0] if node.args else None
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                names.add(key.value)
    return names


def test_env_example_names_every_setting_and_every_variable_the_code_reads():
    documented = _env_example_names()
    settings = {name.upper() for name in Settings.model_fields}
    assert settings - documented == set(), "add these settings to .env.example"
    # Variables the code sets for libraries (Hugging Face offline mode) are not settings.
    read = _variables_read_in_code() - {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS",
                                        "TRANSFORMERS_VERBOSITY"}
    assert read - documented == set(), "add these variables to .env.example"


def test_dagster_yaml_has_postgres_storage_from_the_environment_and_the_queue_limits():
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    runs = config["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == 4
    assert runs["tag_concurrency_limits"] == [
        {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
    assert config["concurrency"]["pools"] == {"granularity": "op", "default_limit": 2}


def test_dagster_yaml_is_a_valid_instance_config(monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://dagster@db.invalid/dagster")
    config, _ = dagster_instance_config(str(PROJECT_ROOT))  # validates against Dagster's schema
    assert config["concurrency"]["pools"]["granularity"] == "op"


def test_helm_values_deploy_the_code_location_with_k8s_runs_and_secrets_from_the_cluster():
    values = yaml.safe_load((PROJECT_ROOT / "deploy" / "helm" / "values.yaml").read_text())
    deployment, = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "dagster_project.definitions"]
    assert deployment["envSecrets"] == [{"name": "refinery-env"}]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    env = {e["name"] for e in deployment["env"]}
    assert env <= _env_example_names() and not env & {"DATABASE_URL", "OPENAI_API_KEY"}  # secrets stay in the Secret
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["global"]["postgresqlSecretName"]
    assert values["concurrency"]["runs"]["tagConcurrencyLimits"][0]["key"] == "dagster/partition"
    dockerfile = (PROJECT_ROOT / "deploy" / "Dockerfile").read_text()
    assert 'pip install -e ".[${EXTRAS}]"' in dockerfile and "dagster_project.definitions" in dockerfile


def test_celery_worker_config_takes_the_broker_from_the_environment():
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "celery" / "celery.yaml").read_text())
    assert config["execution"]["celery"]["broker"] == {"env": "CELERY_BROKER_URL"}


def test_run_executor_without_its_package_says_what_to_install(monkeypatch):
    import importlib.util

    from dagster_project.definitions import EXECUTORS, run_executor

    assert run_executor("multiprocess") is None
    # The test extra installs dagster-celery (the Celery test); dagster-k8s stays out of it.
    missing = [name for name, (package, _) in EXECUTORS.items() if importlib.util.find_spec(package) is None]
    if not missing:
        pytest.skip("every executor's package is installed")
    name, package = missing[0], EXECUTORS[missing[0]][0]
    extra = name.split("_")[0]
    with pytest.raises(ImportError, match=rf"RUN_EXECUTOR={name} needs the {package.replace('_', '-')} package "
                                          rf".*\[{extra}\]"):
        run_executor(name)
    with pytest.raises(ValueError, match="run_executor"):
        Settings(run_executor="spark")
