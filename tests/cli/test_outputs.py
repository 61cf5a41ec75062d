"""Outputs: written atomically (a temporary file, then a rename), checked writable before any work starts (one
message, exit 2), and never left half-done: a command whose second output fails leaves none of them.

Unwritable folders are made with a parent path that is a file (``file.txt/out.json``), ``/sys`` (read-only even
for root) and, when the tests do not run as root, a folder without write permission (root writes anywhere, so
that case is skipped under root).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from patchscopes.cli import app
from patchscopes.errors import PatchscopesError
from patchscopes.storage import all_or_nothing, check_writable, write_output, write_output_text

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
MISSING_MODEL = "/nonexistent/model"  # an output refused before the model loads never reaches this


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env=ENV)


def assert_refused(result, *fragments: str) -> None:
    """Exit 2, one error line with a hint, no traceback, the fragments in the message."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "hint:" in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output


def sys_unwritable() -> Path:
    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(name)
    pytest.skip("/sys is writable here")


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "file.txt"
    path.write_text("not a folder")
    return path


def test_a_parent_path_that_is_a_file_is_refused_before_the_model_loads(tmp_path, a_file):
    ok = tmp_path / "ok.json"
    result = invoke("inspect", "Hi you", "--model", MISSING_MODEL, "--json", ok, "--csv", a_file / "x.csv")
    assert_refused(result, "--csv", "is a file, not a folder")
    assert "File exists" not in result.output
    assert not ok.exists()


def test_a_folder_it_cannot_write_is_refused(tmp_path):
    folder = sys_unwritable()
    result = invoke("inspect", "Hi you", "--model", MISSING_MODEL, "--json", tmp_path / "ok.json",
                    "--html", folder / "map.html")
    assert_refused(result, "--html", "cannot write in /sys")
    assert not (tmp_path / "ok.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a folder without write permission")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = invoke("inspect", "Hi you", "--model", MISSING_MODEL, "--json", folder / "out.json")
        assert_refused(result, "--json", "cannot write in")
    finally:
        folder.chmod(0o700)


def test_an_output_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "out.json").mkdir()
    assert_refused(invoke("inspect", "Hi you", "--model", MISSING_MODEL, "--json", tmp_path / "out.json"),
                   "is a folder")


def test_an_unwritable_run_dir_is_refused_before_the_model_loads(a_file):
    assert_refused(invoke("inspect", "Hi you", "--model", MISSING_MODEL, "--run-dir", a_file / "run"),
                   "--run-dir", "is a file")
    assert_refused(invoke("inspect", "Hi you", "--model", MISSING_MODEL, "--run-dir", sys_unwritable() / "run"),
                   "--run-dir", "cannot write in")


def test_the_python_api_refuses_an_unwritable_run_dir_in_one_message(tiny_llama, a_file):
    import patchscopes as ps

    scope = ps.Patchscope(ps.Source("hello", 1, -1), ps.Target("cat -> cat; x", 1, -1))
    with pytest.raises(PatchscopesError, match="is a file, not a folder"):
        ps.run(scope, tiny_llama, run_dir=a_file / "run")


def test_fit_lens_fails_before_fitting_when_its_output_is_unwritable(tmp_path, a_file):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {k}: the quick brown fox." for k in range(5)))
    result = invoke("fit-lens", "--model", MISSING_MODEL, "--text", text, "--out", a_file / "lens")
    assert_refused(result, "--out", "is a file, not a folder")
    result = invoke("fit-lens", "--model", MISSING_MODEL, "--text", text, "--out", a_file)
    assert_refused(result, "--out", "is a file, not a folder")


def test_eval_and_fit_outputs_are_checked_before_the_model_loads(tmp_path, a_file):
    relations = tmp_path / "relations"
    result = invoke("fit-lre", "--model", MISSING_MODEL, "--relation", relations, "--layer", "1",
                    "--out", a_file / "x.safetensors")
    assert_refused(result, "--out", "is a file")
    result = invoke("trace", "The cat sat", "--subject", "The cat", "--model", MISSING_MODEL,
                    "--json", tmp_path / "ok.json", "--plot", a_file / "trace.html")
    assert_refused(result, "--plot", "is a file")
    assert not (tmp_path / "ok.json").exists()


def test_a_second_output_failing_leaves_no_first_output(tiny_dir, tmp_path, monkeypatch):
    from patchscopes.cli import inspect_cmd

    def broken(frame):
        raise PatchscopesError("the heatmap broke", hint="(a test)")

    monkeypatch.setattr(inspect_cmd, "heatmap", broken)
    (tmp_path / "old.json").write_text("[]")
    result = invoke("inspect", "Hi you", "--model", tiny_dir, "--layers", "0", "--json", tmp_path / "new.json",
                    "--csv", tmp_path / "new.csv", "--html", tmp_path / "new.html")
    assert_refused(result, "the heatmap broke")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # no outputs, no temporary files


def test_outputs_replace_existing_files_by_rename(tiny_dir, tmp_path):
    out = tmp_path / "out.json"
    out.write_text("old")
    inode = out.stat().st_ino
    result = invoke("inspect", "Hi you", "--model", tiny_dir, "--layers", "0", "--json", out)
    assert result.exit_code == 0, result.output
    assert out.stat().st_ino != inode  # a new file renamed over the old one, not the old one rewritten in place
    assert json.loads(out.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_write_that_fails_part_way_keeps_the_old_file_and_no_temporary_file(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(PatchscopesError, match="No space left"):
        write_output(out, half, "the JSON")
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_all_or_nothing_writes_all_at_the_end_or_none(tmp_path):
    with all_or_nothing():
        write_output_text(tmp_path / "a.json", "a")
        assert not (tmp_path / "a.json").exists()  # not before the block ends
        write_output_text(tmp_path / "b.json", "b")
    assert (tmp_path / "a.json").read_text() == "a" and (tmp_path / "b.json").read_text() == "b"
    with pytest.raises(RuntimeError), all_or_nothing():
        write_output_text(tmp_path / "c.json", "c")
        raise RuntimeError("the second output failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_check_writable_creates_nothing(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "out.json", "--json")
    check_writable(tmp_path / "lens", "--out", folder=True)
    assert list(tmp_path.iterdir()) == []


def test_describe_vectors_checks_its_outputs_before_reading_anything(tmp_path, a_file):
    result = invoke("describe-vectors", tmp_path / "missing.safetensors", "--model", MISSING_MODEL, "--layer", "0",
                    "--json", tmp_path / "ok.json", "--csv", a_file / "x.csv")
    assert_refused(result, "--csv", "is a file, not a folder")
    assert not (tmp_path / "ok.json").exists()


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """The temporary file of an atomic write is private (0600); the output it becomes is not."""
    import os

    from patchscopes.storage import atomic_write, write_output_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_output_text(tmp_path / "out.json", "{}")
    atomic_write(tmp_path / "state.json", lambda tmp: tmp.write_text("{}"))
    for path in (written, tmp_path / "state.json"):
        assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777, path
