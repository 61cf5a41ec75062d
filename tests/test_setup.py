"""What ``make test`` needs: the set-up installs Chromium for the browser tests where it may, else says loudly
which tests will be skipped; the test run names the browser tests it skipped and the command that enables them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install_chromium.sh"


def _run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The install script with a PATH holding only ``id`` and ``cat`` (so no browser and no apt-get)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("id", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return subprocess.run([shutil.which("bash"), str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(bin_dir), **env})


def test_without_a_browser_the_script_names_the_skipped_tests_and_the_command(tmp_path):
    out = _run_script(tmp_path, PATCHSCOPES_NO_CHROMIUM_INSTALL="1")
    assert out.returncode == 0  # never fails the set-up
    assert "tests/serve/test_browser.py" in out.stderr
    assert "SKIPPED" in out.stderr
    assert "sudo apt-get install -y chromium" in out.stderr


def test_a_browser_given_by_path_is_used(tmp_path):
    fake = tmp_path / "my-chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    out = _run_script(tmp_path, PATCHSCOPES_CHROMIUM=str(fake))
    assert out.returncode == 0
    assert f"using {fake}" in out.stdout
    assert "WARNING" not in out.stderr


def test_make_setup_and_the_ci_run_share_the_install_script():
    makefile = (ROOT / "Makefile").read_text()
    assert "setup: $(VENV)/.setup-done browser" in makefile
    assert "scripts/install_chromium.sh" in makefile
    assert "scripts/install_chromium.sh" in (ROOT / ".ci" / "run").read_text()
    if shutil.which("make"):
        dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        lines = dry.stdout.splitlines()
        assert any("install_chromium.sh" in line for line in lines)
        assert lines.index(next(line for line in lines if "install_chromium.sh" in line)) < \
            lines.index(next(line for line in lines if "pytest" in line))


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell test")
def test_the_test_run_names_skipped_browser_tests_and_the_command(tmp_path):
    """A copy of the suite's conftest over a stand-in browser test that skips: the run's summary names it."""
    tests = tmp_path / "tests"
    (tests / "serve").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "serve" / "test_browser.py").write_text(
        "import pytest\n\ndef test_in_chromium():\n    pytest.skip('no Chromium found: stand-in reason')\n\n"
        "def test_other():\n    pass\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                          str(tmp_path), str(tests)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert "browser tests skipped" in out.stdout, out.stdout + out.stderr
    assert "tests/serve/test_browser.py::test_in_chromium: no Chromium found: stand-in reason" in out.stdout
    assert "test_other:" not in out.stdout
    assert "enable them with: sudo apt-get install -y chromium" in out.stdout
