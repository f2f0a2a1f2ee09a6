"""The package's layering (.importlinter): each stage imports only the stages below it, the
simulator only the shared leaves. Checked here so that the test command fails on an upward import,
and shown to have teeth: the same contract rejects a copy of the package with one import added
upward."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    # The console script's module, run by this Python; PYTHONPATH makes `latbench` the copy in cwd.
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_stages_import_only_down() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ", 0 broken." in r.stdout, r.stdout


def test_an_upward_import_fails(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "latbench", tmp_path / "latbench")
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    leaf = tmp_path / "latbench" / "shared" / "errors.py"
    leaf.write_text(leaf.read_text() + "\n\ndef _upward() -> None:\n    import latbench.cli.main\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    assert "latbench.shared.errors -> latbench.cli.main" in r.stdout, r.stdout
