"""Prometheus config and rules under deploy/prometheus/: generated files up to date, valid for
promtool, their unit tests passing, and every metric they read one that latbench exports."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from types import ModuleType

import pytest
import yaml
from kit import paths
from kit.promql import PROMTOOL

from latbench.exporter import HISTOGRAMS, LatbenchMetrics

ROOT = paths.ROOT
DEPLOY = ROOT / "deploy" / "prometheus"
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (Debian package prometheus; .ci/run installs it)"
)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_rules", DEPLOY / "generate_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False, cwd=DEPLOY
    )


def test_committed_rules_equal_the_generators_output() -> None:
    gen = load_generator()
    for path, text in gen.outputs().items():
        assert path.read_text() == text, f"{path} is stale: run python {DEPLOY}/generate_rules.py"


@needs_promtool
def test_promtool_check_rules() -> None:
    p = promtool("check", "rules", "rules/latbench-recording.yml", "rules/latbench-alerts.yml")
    assert p.returncode == 0, p.stdout + p.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    p = promtool("check", "config", "prometheus.yml")
    assert p.returncode == 0, p.stdout + p.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_rules() -> None:
    tests = sorted(str(p.relative_to(DEPLOY)) for p in (DEPLOY / "tests").glob("*.yml"))
    assert tests
    p = promtool("test", "rules", *tests)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def exported_names() -> set[str]:
    names = set()
    for fam in LatbenchMetrics().describe():
        if fam.type == "histogram":
            names |= {f"{fam.name}_bucket", f"{fam.name}_count", f"{fam.name}_sum"}
        elif fam.type == "counter":
            names.add(f"{fam.name}_total")
        else:
            names.add(fam.name)
    return names


def test_rules_read_only_metrics_latbench_exports() -> None:
    exported = exported_names()
    assert {f"{h.name}_bucket" for h in HISTOGRAMS} <= exported
    recorded = set()
    exprs = []
    for path in (DEPLOY / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                exprs.append(rule["expr"])
                if "record" in rule:
                    recorded.add(rule["record"])
    rule_name = re.compile(r"\bscenario:[a-z_:0-9]+")
    for expr in exprs:
        for name in rule_name.findall(expr):
            assert name in recorded, (name, expr)
        for name in re.findall(r"\b(latbench_[a-z_]+)\b", rule_name.sub("", expr)):
            assert name in exported, (name, expr)
