"""The CPUs latbench may use (latbench/load/cpus.py): the affinity mask, capped by the cgroup's
CPU quota, not the machine's count, so a client pinned away from a co-located server starts a
worker per core it was given."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kit.cli import COMMAND

from latbench.load.cpus import cgroup_cpus, quota_cpus, usable_cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [
        ("max", "100000", None),  # cgroup v2: no limit
        ("-1", "100000", None),  # cgroup v1: no limit
        ("200000", "100000", 2.0),
        ("150000", "100000", 1.5),
        ("50000", "100000", 0.5),
        ("0", "100000", None),
        ("100000", "0", None),
        ("lots", "100000", None),
    ],
)
def test_a_quota_is_a_number_of_cpus(quota: str, period: str, cpus: float | None) -> None:
    assert quota_cpus(quota, period) == cpus


def test_the_quota_is_read_from_either_cgroup_version(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpus(v2) == 2.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(v1) == 1.0
    assert cgroup_cpus(tmp_path / "none") is None


def test_a_quota_caps_the_affinity_rounded_up(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one worker core
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == usable_cpus(tmp_path / "none") >= 1


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs util-linux's taskset")
def test_a_pinned_process_counts_the_cores_it_was_given() -> None:
    code = "from latbench.load.cpus import usable_cpus; print(usable_cpus())"
    pinned = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert pinned.stdout.strip() == "1"


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs util-linux's taskset")
def test_a_pinned_run_reports_the_cpus_it_could_use(tmp_path: Path) -> None:
    # The machine's count and the usable count side by side in results.json: the second is what
    # the default worker count is made from (worker_count), and what a reader should compare.
    r = subprocess.run(
        ["taskset", "-c", "0", *COMMAND, "run", "--requests", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode in (0, 4), r.stderr  # 4: one core shared with the simulator
    (results,) = tmp_path.glob("*/results.json")
    env = json.loads(results.read_text())["environment"]
    assert env["cpus_usable"] == 1
    assert env["cpu_count"] == os.cpu_count()
