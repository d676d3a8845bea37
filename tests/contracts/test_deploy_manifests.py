"""Every file in deploy/ is parsed and checked against what the worker actually understands and serves.

The checks read the worker at test time (``env_var_names()``, the health server's
routes, ``message_bytes_for``), so a config field renamed or a probe path moved
in the worker fails here instead of in a cluster. docker is not run: the image
is checked by reading the Dockerfile, not by building it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.config import WorkerConfig, env_var_names
from worker.runtime.clients import message_bytes_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
AIGIS_VAR = re.compile(r"\bAIGIS_[A-Z0-9_]+\b")


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [d for p in _yaml_files() for d in _docs(p) if isinstance(d, dict) and d.get("kind") == kind]


def _one(kind: str) -> dict[str, Any]:
    (doc,) = _k8s(kind)
    return doc


def _configmap() -> dict[str, str]:
    return _one("ConfigMap")["data"]


def _compose() -> dict[str, Any]:
    return _docs(DEPLOY / "compose.yaml")[0]


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


# -- Dockerfile, parsed line by line ------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _dockerfile_instructions():
        if word == "ENV":
            for token in shlex.split(rest):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV KEY=VALUE form: {rest}"
                env[key] = value
    return env


# -- which files exist, and that each one is checked ------------------------------------------------


def test_every_file_in_deploy_is_a_kind_this_test_checks() -> None:
    """A new file type in deploy/ must come with checks here, not slip past them."""
    known = {".yaml", ".yml", ".md", ".py", ".dockerignore", ".json", ""}  # .json: Grafana dashboards (tests/contracts/test_monitoring.py)
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert {p.name for p in files} >= {"Dockerfile", "compose.yaml", "README.md"}
    strays = [p for p in files if p.suffix not in known or (p.suffix == "" and p.name != "Dockerfile")]
    assert not strays, strays


def test_every_yaml_file_parses_and_every_kubernetes_kind_is_expected() -> None:
    kinds = set()
    for path in _yaml_files():
        for doc in _docs(path):
            assert isinstance(doc, dict), path
            if "kind" in doc:
                kinds.add(doc["kind"])
    assert kinds >= {"Deployment", "PodDisruptionBudget", "ConfigMap", "ScaledObject"}


def test_demo_producer_compiles_and_imports_nothing_heavy() -> None:
    source = (DEPLOY / "demo_producer.py").read_text()
    compile(source, "demo_producer.py", "exec")
    assert not re.search(r"^\s*(import|from)\s+(torch|open_clip|export)\b", source, re.M)


# -- environment variables ----------------------------------------------------------------------------------------


def _all_aigis_vars_set() -> dict[str, set[str]]:
    """Every AIGIS_* name each deploy file sets, found by walking keys, env 'name's and KEY=VALUE strings."""
    found: dict[str, set[str]] = {}

    def walk(node: Any, into: set[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and k.startswith("AIGIS_"):
                    into.add(k)
                if k == "name" and isinstance(v, str) and v.startswith("AIGIS_"):
                    into.add(v)
                walk(v, into)
        elif isinstance(node, list):
            for v in node:
                walk(v, into)
        elif isinstance(node, str) and re.match(r"^AIGIS_[A-Z0-9_]+=", node):
            into.add(node.split("=", 1)[0])

    for path in _yaml_files():
        names: set[str] = set()
        for doc in _docs(path):
            walk(doc, names)
        found[str(path.relative_to(DEPLOY))] = names
    found["Dockerfile"] = {k for k in _dockerfile_env() if k.startswith("AIGIS_")}
    return found


def test_every_aigis_variable_deploy_sets_is_one_the_worker_reads() -> None:
    known = env_var_names()
    per_file = _all_aigis_vars_set()
    assert per_file["k8s/configmap.yaml"] and per_file["compose.yaml"] and per_file["Dockerfile"]  # the walk found something
    unknown = {f: sorted(names - known) for f, names in per_file.items() if names - known}
    assert not unknown, f"variables the worker does not read (typo, or a renamed config field): {unknown}"


def test_every_aigis_variable_mentioned_anywhere_in_deploy_exists() -> None:
    """Comments and README text too: documentation naming a variable that does not exist misleads operators."""
    known = env_var_names()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix != ".py":
            mentioned = set(AIGIS_VAR.findall(path.read_text()))
            # AIGIS_BUNDLE_DIR is compose's own variable (the host path of the bundle), not the worker's
            mentioned -= {"AIGIS_BUNDLE_DIR"}
            assert mentioned <= known, (path.name, sorted(mentioned - known))


def test_configmap_values_validate_as_a_worker_config() -> None:
    """Not just the names: the values must pass the worker's own validation (what the pod would do at start)."""
    from worker.config import load_config

    env = dict(_configmap())
    cfg = load_config(None, env)
    assert isinstance(cfg, WorkerConfig)
    compose_env = _compose_env(_compose()["services"]["worker"])
    assert isinstance(load_config(None, compose_env), WorkerConfig)
    assert isinstance(load_config(None, {**_dockerfile_env(), "AIGIS_BUNDLE": "/models/bundle"}), WorkerConfig)


# -- Kubernetes ------------------------------------------------------------------------------------------------------


def _container() -> dict[str, Any]:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _probe_port(probe: dict[str, Any], container: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return match


@pytest.fixture(scope="module")
def served_paths() -> dict[str, int]:
    """Status codes the worker's real health server gives for each probe path in deploy/ (port 0, real HTTP)."""
    from worker.ops.health import HealthServer
    from worker.ops.metrics import WorkerMetrics

    paths = {p["httpGet"]["path"] for p in _probes()} | {"/healthz", "/metrics", "/does-not-exist"}
    server = HealthServer(0, WorkerMetrics(), lambda: [], lambda: [], host="127.0.0.1")
    server.start()
    codes = {}
    try:
        for path in paths:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as resp:
                    codes[path] = resp.status
            except urllib.error.HTTPError as exc:
                codes[path] = exc.code
    finally:
        server.stop()
    return codes


def _probes() -> list[dict[str, Any]]:
    c = _container()
    return [c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c]


def test_probes_point_at_paths_the_worker_serves_on_its_metrics_port(served_paths: dict[str, int]) -> None:
    assert served_paths["/does-not-exist"] == 404  # the server does say no
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in _probes():
        assert served_paths[probe["httpGet"]["path"]] == 200, probe
        assert _probe_port(probe, container) == int(_configmap()["AIGIS_METRICS_PORT"])


def test_deployment_requests_a_gpu_runs_as_non_root_and_reads_the_configmap() -> None:
    dep = _one("Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = _container()
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
    assert refs == [_one("ConfigMap")["metadata"]["name"]]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_termination_grace_covers_the_workers_drain_with_a_small_margin() -> None:
    grace = float(_configmap().get("AIGIS_SHUTDOWN_GRACE_S", WorkerConfig.model_fields["shutdown_grace_s"].default))
    period = _one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace < period <= grace + 15, (grace, period)


def test_pdb_selects_the_worker_pods() -> None:
    pdb = _one("PodDisruptionBudget")
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def test_keda_scales_the_worker_on_its_own_group_lag_capped_at_the_partitions() -> None:
    so = _one("ScaledObject")
    cm = _configmap()
    assert so["spec"]["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == cm["AIGIS_GROUP_ID"]
    assert meta["topic"] == cm["AIGIS_INPUT_TOPIC"]
    assert meta["bootstrapServers"] == cm["AIGIS_BOOTSTRAP_SERVERS"]
    partitions = int(cm["AIGIS_TOPIC_PARTITIONS"])
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions
    assert str(meta.get("allowIdleConsumers", "false")).lower() == "false"


def test_kustomization_lists_every_manifest() -> None:
    k8s = DEPLOY / "k8s"
    listed = set(_docs(k8s / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml"}


# -- the image --------------------------------------------------------------------------------------------------------


def test_dockerfile_is_a_cuda_runtime_non_root_worker_image_with_a_healthcheck() -> None:
    ins = _dockerfile_instructions()
    words = [w for w, _ in ins]
    text = "\n".join(f"{w} {r}" for w, r in ins)
    (base,) = [r for w, r in ins if w == "ARG" and r.startswith("CUDA_IMAGE=")]
    assert base.split("=", 1)[1].startswith("nvidia/cuda:") and "runtime" in base
    assert words.count("FROM") == 1
    # no torch, no export extra: the worker only
    assert not re.search(r"\btorch\b|open_clip|\[export|\.\[", text), "the image must install the base dependencies only"
    # from the hash-pinned worker lock, then the project itself without dependencies
    runs = [r for w, r in ins if w == "RUN" and "pip install" in r]
    assert any("--require-hashes -r requirements/build.txt -r requirements/worker.txt" in r for r in runs), runs
    assert any(re.search(r"pip install --no-deps --no-build-isolation \.(\s|$|&)", r) for r in runs), runs
    assert all("--require-hashes" in r or "--no-deps" in r for r in runs), "every pip install in the image is locked or dependency-free"
    copied = {src.rstrip("/").removeprefix("./") for w, r in ins if w == "COPY" for src in shlex.split(r)[:-1]}
    assert not {src.split("/")[0] for src in copied} & DEVELOPMENT, copied
    # non-root: the last USER is neither root nor uid 0
    users = [r for w, r in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    # HEALTHCHECK hits /healthz on the metrics port the image turns on
    (hc,) = [r for w, r in ins if w == "HEALTHCHECK"]
    assert "/healthz" in hc and "AIGIS_METRICS_PORT" in hc
    env = _dockerfile_env()
    assert int(env["AIGIS_METRICS_PORT"]) > 0
    assert any(w == "EXPOSE" and r.split("/")[0] == env["AIGIS_METRICS_PORT"] for w, r in ins)
    (entry,) = [r for w, r in ins if w == "ENTRYPOINT"]
    assert json.loads(entry) == ["aigis-worker"]


#: Development code: never in the build context, never in the image.
DEVELOPMENT = {"devkit", "tests", "bench", "export"}


def _dockerignore_rules() -> list[tuple[bool, str]]:
    """(negated, pattern) in file order."""
    rules = []
    for raw in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def _sent_to_docker(path: str) -> bool:
    """Whether the build context includes ``path`` (docker's rule: the last matching pattern wins; a pattern matching a directory covers its files)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, pattern in _dockerignore_rules():
        pat = pattern.removeprefix("**/")
        anywhere = pattern.startswith("**/")
        if any(fnmatch.fnmatchcase(p, pattern) or (anywhere and fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pat)) for p in prefixes):
            included = negated
    return included


def test_dockerignore_keeps_development_code_out_of_the_build_context() -> None:
    root = DEPLOY.parent
    for pkg in DEVELOPMENT:
        files = [p for p in (root / pkg).rglob("*.py")]
        assert files, f"{pkg}/ has no Python files: this test is not looking at the checkout"
        sent = [str(p.relative_to(root)) for p in files if _sent_to_docker(str(p.relative_to(root)))]
        assert not sent, f"the image's build context would carry development code: {sent[:5]}"
    for private in (".venv/bin/python", ".aigis/demo/bundle/manifest.json", "requirements/dev.txt", "requirements/export.txt", ".git/config"):
        assert not _sent_to_docker(private), private
    for needed in ("worker/app.py", "worker/runtime/clients.py", "schemas/__init__.py", "pyproject.toml", "requirements/worker.txt", "requirements/build.txt"):
        assert _sent_to_docker(needed), needed
    assert not _sent_to_docker("worker/__pycache__/app.cpython-311.pyc")


def test_the_dockerignore_matcher_sees_an_allowed_path() -> None:
    """Guard against a matcher that excludes everything: a rule that re-includes a development package is seen."""
    rules = _dockerignore_rules()
    assert (False, "*") in rules and (True, "worker") in rules
    assert _sent_to_docker("worker/cli.py") and not _sent_to_docker("devkit/harness.py")


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for word, rest in _dockerfile_instructions():
        if word == "COPY":
            for src in shlex.split(rest)[:-1]:
                assert src.rstrip("/") in allowed, src


# -- compose ------------------------------------------------------------------------------------------------------


def test_compose_runs_kraft_kafka_redis_one_worker_and_a_producer() -> None:
    services = _compose()["services"]
    assert set(services) == {"kafka", "redis", "worker", "producer"}
    kafka = _compose_env(services["kafka"])
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and not any("ZOOKEEPER" in k for k in kafka)
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile" and (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert services["producer"]["image"] == worker["image"]
    assert services["producer"]["entrypoint"][-1] == "/opt/aigis-tools/demo_producer.py"
    assert "deploy" not in worker  # no GPU reservation in the base file: it must run on CPU hosts too (compose.gpu.yaml adds it)


def test_compose_broker_accepts_the_largest_record_the_worker_produces() -> None:
    services = _compose()["services"]
    worker_env = _compose_env(services["worker"])
    max_image = int(worker_env.get("AIGIS_MAX_IMAGE_BYTES", WorkerConfig.model_fields["max_image_bytes"].default))
    kafka = _compose_env(services["kafka"])
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= message_bytes_for(max_image)
    assert int(kafka["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= message_bytes_for(max_image)


def test_compose_stop_grace_covers_the_drain() -> None:
    worker = _compose()["services"]["worker"]
    grace = float(_compose_env(worker).get("AIGIS_SHUTDOWN_GRACE_S", WorkerConfig.model_fields["shutdown_grace_s"].default))
    assert float(worker["stop_grace_period"].rstrip("s")) > grace


def test_compose_gpu_override_reserves_a_gpu_for_the_worker() -> None:
    override = _docs(DEPLOY / "compose.gpu.yaml")[0]
    (device,) = override["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
