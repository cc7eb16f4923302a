"""Deployment files, validated by parsing (Docker is not available here: nothing was built or
run): compose services and their order, Kubernetes objects that reference each other and the
app's real routes and commands, the Dockerfile's shape, gunicorn's settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from saas.cli import main

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def _k8s() -> list[dict]:
    docs = []
    for path in sorted((INFRA / "k8s").rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _k8s() if d.get("kind") == kind}


def _command_exists(argv: list[str]) -> bool:
    assert argv[0] == "saas"
    group = main
    for word in argv[1:]:
        if word.startswith("-"):
            break
        group = group.commands.get(word) if hasattr(group, "commands") else None
        if group is None:
            return False
    return True


def _routes(app) -> set[str]:
    return {rule.rule for rule in app.url_map.iter_rules()}


def test_compose_services_order_and_health():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "app", "worker", "migrate"} <= set(services)
    assert services["migrate"]["restart"] == "no"
    assert _command_exists(services["migrate"]["entrypoint"])
    assert _command_exists(services["worker"]["entrypoint"])
    assert services["beat"]["entrypoint"][:2] == ["saas", "beat"]
    assert _command_exists(services["beat"]["entrypoint"])
    for name in ("app", "worker", "beat"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    env = services["app"]["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://") and env["REDIS_URL"].startswith("redis://")
    assert services["app"]["build"]["dockerfile"] == "infra/Dockerfile"


def test_compose_config_when_docker_compose_exists():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed here")
    subprocess.run([docker, "compose", "-f", str(INFRA / "compose.yaml"), "config", "-q"], check=True)


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck():
    text = (INFRA / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.MULTILINE)
    assert len(froms) >= 2 and all("slim" in image for image, _ in froms)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*?/healthz", text, re.MULTILINE)
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.MULTILINE)
    assert entry and '"gunicorn"' in entry.group(1) and "infra/gunicorn.conf.py" in entry.group(1)
    for copied in re.findall(r"^COPY\s+(?!--from)(\S+)", text, re.MULTILINE):
        assert (ROOT / copied).exists(), copied
    assert "COPY migrations" in text  # the Alembic tracks next to the package


def test_k8s_objects_reference_each_other_and_real_routes(app):
    deployments = _by_kind("Deployment")
    services = _by_kind("Service")
    assert {"saas-app", "saas-worker"} <= set(deployments)
    routes = _routes(app)
    api = deployments["saas-app"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = api["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8000
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"].split("?")[0] in routes
        assert container[probe]["httpGet"]["port"] in ports
    # a Redis outage must not unready every pod (limits fail open): Redis reported, not decisive
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz?optional=redis"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = services["saas-app"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    hpa = _by_kind("HorizontalPodAutoscaler")["saas-app"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "saas-app" and hpa["spec"]["minReplicas"] >= 2
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilisation needs a request

    worker = deployments["saas-worker"]["spec"]["template"]["spec"]
    assert _command_exists(worker["containers"][0]["command"])
    job = _by_kind("Job")["saas-migrate"]["spec"]["template"]["spec"]
    assert job["restartPolicy"] == "Never" and _command_exists(job["containers"][0]["command"])
    # the schedules run on Celery beat: one replica, the old pod gone before the new one starts
    assert _by_kind("CronJob") == {}
    beat_deployment = deployments["saas-beat"]["spec"]
    assert beat_deployment["replicas"] == 1 and beat_deployment["strategy"] == {"type": "Recreate"}
    beat = beat_deployment["template"]["spec"]
    assert beat["containers"][0]["command"][:2] == ["saas", "beat"]
    assert _command_exists(beat["containers"][0]["command"])

    secret_names = set(_by_kind("Secret"))
    config_names = set(_by_kind("ConfigMap"))
    for spec in (deployments["saas-app"]["spec"]["template"]["spec"], worker, job, beat):
        assert spec["securityContext"]["runAsNonRoot"] is True
        if any(v.get("secret", {}).get("defaultMode") == 0o400 for v in spec["volumes"]):
            # 0400 Secret files are readable by the non-root user only through fsGroup
            assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            for source in c["envFrom"]:
                ref = source.get("secretRef") or source.get("configMapRef")
                assert ref["name"] in secret_names | config_names
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None and not ref.get("optional"):
                    assert ref["key"] in _by_kind("Secret")[ref["name"]]["stringData"], var
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secret_names


def test_prometheus_scrapes_metrics_with_the_apps_bearer_token(app):
    """/metrics answers only ``Bearer <METRICS_TOKEN>``: the app reads the token from a Secret
    and the PodMonitor sends the same Secret key (RFC 6750), on a port and path that exist."""
    api = _by_kind("Deployment")["saas-app"]["spec"]["template"]
    container = api["spec"]["containers"][0]
    (token,) = [v for v in container["env"] if v["name"] == "METRICS_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    secret = _by_kind("Secret")[ref["name"]]
    assert ref["name"] != "saas-secrets"  # Prometheus may read this Secret and nothing else
    assert ref["key"] in secret["stringData"]
    # an annotation-driven scrape cannot send the token: it would only collect 401s
    assert not any(k.startswith("prometheus.io/") for k in api["metadata"].get("annotations", {}))

    (monitor,) = _by_kind("PodMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= api["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] in _routes(app) and endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    credentials = {"name": ref["name"], "key": ref["key"]}
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": credentials}
    assert "bearerTokenSecret" not in endpoint and "basicAuth" not in endpoint


def test_k8s_config_names_are_settings_and_secrets_are_placeholders():
    from saas.settings import Settings

    config = _by_kind("ConfigMap")["saas-config"]["data"]
    Settings.from_env({**config, "SECRET_KEY": "x"})  # every value parses
    for secret in _by_kind("Secret").values():
        for value in secret["stringData"].values():
            assert "REPLACE_ME" in value or "REPLACE" in value


def test_the_deployed_beat_schedules_the_usage_report_at_least_hourly():
    """The usage report to Stripe is a beat schedule (docs/billing.md "Usage"): the beat
    Deployment runs ``saas beat``, and the ConfigMap's interval, within the hour, is the
    schedule's."""
    from saas.schedules import by_name
    from saas.settings import Settings
    from saas.worker.engine import beat_schedule

    settings = Settings.from_env({**_by_kind("ConfigMap")["saas-config"]["data"], "SECRET_KEY": "x"})
    assert 0 < settings.usage_report_interval_seconds <= 3600
    beat = _by_kind("Deployment")["saas-beat"]["spec"]["template"]["spec"]["containers"][0]
    assert beat["command"][:2] == ["saas", "beat"]
    entry = by_name("billing.report_usage")
    every = beat_schedule([entry], settings=settings)[entry.name]["schedule"].run_every
    assert every.total_seconds() == settings.usage_report_interval_seconds


def test_hpa_owns_the_app_replicas_and_the_app_waits_for_migrations():
    app = _by_kind("Deployment")["saas-app"]
    assert "replicas" not in app["spec"]  # a value would fight the HPA on every apply
    (init,) = app["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:4] == ["saas", "db", "check", "--migrations-only"] and "--wait" in init["command"]
    assert _command_exists(init["command"])
    assert init["image"] == app["spec"]["template"]["spec"]["containers"][0]["image"] == "saas-backend"
    worker = _by_kind("Deployment")["saas-worker"]["spec"]["template"]["spec"]
    assert worker["initContainers"][0]["command"] == init["command"]


def test_every_image_is_set_by_kustomize_in_one_place():
    images = [d for d in _k8s() if d.get("kind") == "Component"]
    assert [i["name"] for i in images[0]["images"]] == ["saas-backend"]
    for kustomization in ("kustomization.yaml", "migrate/kustomization.yaml"):
        doc = yaml.safe_load((INFRA / "k8s" / kustomization).read_text())
        assert "images" not in doc and any(c.rstrip("/").endswith("images") for c in doc["components"])
    job = _by_kind("Job")["saas-migrate"]["spec"]["template"]["spec"]["containers"][0]
    assert job["image"] == "saas-backend"  # never a hard-coded registry tag


def test_kustomize_builds_when_kubectl_exists():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed here")
    out = subprocess.run([kubectl, "kustomize", str(INFRA / "k8s")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(out.stdout) if d}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"} <= kinds
    images = {line.split("image:")[1].strip() for line in out.stdout.splitlines() if "image:" in line}
    migrate = subprocess.run(
        [kubectl, "kustomize", str(INFRA / "k8s" / "migrate")], capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    job_images = {line.split("image:")[1].strip() for line in migrate.stdout.splitlines() if "image:" in line}
    assert len(images) == 1 and job_images == images and "saas-backend:" in images.pop()
    monitoring = subprocess.run(
        [kubectl, "kustomize", str(INFRA / "k8s" / "monitoring")], capture_output=True, text=True
    )
    assert monitoring.returncode == 0, monitoring.stderr
    assert [d["kind"] for d in yaml.safe_load_all(monitoring.stdout) if d] == ["PodMonitor"]


def test_gunicorn_config(monkeypatch, tmp_path):
    monkeypatch.delenv("GUNICORN_WORKERS", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # restored after the test
    namespace: dict = {}
    exec(compile((INFRA / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), namespace)  # noqa: S102
    import multiprocessing

    assert namespace["workers"] == multiprocessing.cpu_count() * 2 + 1
    assert namespace["max_requests"] > 0 and namespace["max_requests_jitter"] > 0
    assert 0 < namespace["graceful_timeout"] < 30  # below the pods' termination grace period
    assert callable(namespace["child_exit"]) and callable(namespace["on_starting"])
