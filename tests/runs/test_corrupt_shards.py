"""Damaged shards: each is detected by its checksums or its records' checks, reported in one line, redone, and
the run ends with exactly the uninterrupted run's results; 0.2's shards (no checksums) are still read."""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import pytest

import patchscopes as ps
from patchscopes.runs import CorruptShardWarning

PROMPTS = ["The cat sat on the mat", "Paris is in France"]
SHARD = 16


def cut_mid_line(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:3]) + lines[3][: len(lines[3]) // 2]


def drop_a_field(text: str) -> str:
    lines = text.splitlines(keepends=True)
    record = json.loads(lines[2])
    del record["top_probs"]
    return "".join([*lines[:2], json.dumps(record) + "\n", *lines[3:]])


def edit_a_value(text: str) -> str:
    lines = text.splitlines(keepends=True)
    record = json.loads(lines[2])
    record["top_token_ids"][0] = (record["top_token_ids"][0] + 1) % 200
    return "".join([*lines[:2], json.dumps(record, ensure_ascii=False) + "\n", *lines[3:]])


def duplicate_a_line(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join([*lines[:3], lines[2], *lines[4:]])  # line 3 over line 4: the count is unchanged


CORRUPTIONS = {
    "cut mid-line": cut_mid_line,
    "record missing a field": drop_a_field,
    "random bytes": None,
    "edited value": edit_a_value,
    "duplicated line": duplicate_a_line,
}


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, tmp_path_factory):
    """The scopes and the results of a run that was never interrupted."""
    scopes = ps.plan_sweep(tiny_llama, PROMPTS, "token-identity", layers="all", positions="all")
    folder = tmp_path_factory.mktemp("clean") / "run"
    results = ps.run(scopes, tiny_llama, shard_size=SHARD, run_dir=folder)
    return scopes, results


def resume(scopes, model, folder, counter):
    """Run again on ``folder`` with ``counter`` (a counting executor): the results, the number of shards run, and
    the warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = ps.run(scopes, model, shard_size=SHARD, run_dir=folder, executor=counter)
    return results, counter.shards, [w for w in caught if issubclass(w.category, CorruptShardWarning)]


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_damaged_shard_is_reported_redone_and_never_used(case, tmp_path, tiny_llama, uninterrupted, same_readings,
                                                          counting_executor):
    scopes, expected = uninterrupted
    folder = tmp_path / "run"
    ps.run(scopes, tiny_llama, shard_size=SHARD, run_dir=folder)
    shard = sorted((folder / "shards").glob("*.jsonl"))[1]
    damage = CORRUPTIONS[case]
    if damage is None:
        shard.write_bytes(os.urandom(shard.stat().st_size))
    else:
        shard.write_text(damage(shard.read_text(encoding="utf-8")), encoding="utf-8")
    results, redone, reports = resume(scopes, tiny_llama, folder, counting_executor())
    assert redone == 1
    assert len(reports) == 1 and "\n" not in str(reports[0].message)
    assert shard.name in str(reports[0].message) and "running it again" in str(reports[0].message)
    same_readings(results, expected, exact=True)
    assert [r.to_record() for r in results] == [r.to_record() for r in expected]
    again, redone, reports = resume(scopes, tiny_llama, folder, counting_executor())  # the redone shard is whole again
    assert redone == 0 and not reports
    same_readings(again, expected, exact=True)


def test_a_shard_carries_the_checksum_of_its_records(tmp_path, tiny_llama, uninterrupted):
    scopes, _ = uninterrupted
    ps.run(scopes, tiny_llama, shard_size=SHARD, run_dir=tmp_path / "run")

    for shard in (tmp_path / "run" / "shards").glob("*.jsonl"):
        header, _, body = shard.read_text(encoding="utf-8").partition("\n")
        header = json.loads(header)
        assert header["sha256"] == hashlib.sha256(body.encode()).hexdigest()
        assert header["records"] == body.count("\n") > 0


def test_damaged_full_logits_are_redone(tmp_path, tiny_llama):
    scope = ps.Patchscope(ps.Source("hello world", 1, -1), ps.Target("cat -> cat; x", 1, -1),
                          ps.NextToken(top_k=3, full_logits=True))
    first = ps.run([scope, scope], tiny_llama, run_dir=tmp_path / "run")
    (tensors,) = (tmp_path / "run" / "shards").glob("*.safetensors")
    blob = bytearray(tensors.read_bytes())
    blob[-4] ^= 0xFF  # one byte of a logit
    tensors.write_bytes(bytes(blob))
    with pytest.warns(CorruptShardWarning, match="tensors file"):
        again = ps.run([scope, scope], tiny_llama, run_dir=tmp_path / "run")
    assert again[0].logits.equal(first[0].logits)


def old_shards(folder) -> None:
    """Make ``folder`` a 0.2 run directory: manifest version 1, shards without their header line."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for shard in (folder / "shards").glob("*.jsonl"):
        shard.write_text(shard.read_text(encoding="utf-8").partition("\n")[2], encoding="utf-8")


def test_shards_of_0_2_are_read_and_their_records_checked(tmp_path, tiny_llama, uninterrupted, same_readings,
                                                        counting_executor):
    scopes, expected = uninterrupted
    folder = tmp_path / "run"
    ps.run(scopes, tiny_llama, shard_size=SHARD, run_dir=folder)
    old_shards(folder)
    results, redone, reports = resume(scopes, tiny_llama, folder, counting_executor())
    assert redone == 0 and not reports  # accepted without a checksum
    same_readings(results, expected, exact=True)
    shard = sorted((folder / "shards").glob("*.jsonl"))[0]
    lines = shard.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[0])
    del record["top_token_ids"]
    shard.write_text(json.dumps(record) + "\n" + "".join(lines[1:]), encoding="utf-8")
    results, redone, reports = resume(scopes, tiny_llama, folder, counting_executor())
    assert redone == 1 and len(reports) == 1 and "lacks top_token_ids" in str(reports[0].message)
    same_readings(results, expected, exact=True)


def test_a_shard_without_its_header_in_a_new_run_dir_is_redone(tmp_path, tiny_llama, uninterrupted, counting_executor):
    scopes, _ = uninterrupted
    folder = tmp_path / "run"
    ps.run(scopes, tiny_llama, shard_size=SHARD, run_dir=folder)
    shard = sorted((folder / "shards").glob("*.jsonl"))[0]
    shard.write_text(shard.read_text(encoding="utf-8").partition("\n")[2], encoding="utf-8")
    _, redone, reports = resume(scopes, tiny_llama, folder, counting_executor())
    assert redone == 1 and "header" in str(reports[0].message)


def test_the_cli_reports_a_damaged_shard_in_one_line_and_writes_the_uninterrupted_output(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from patchscopes.cli import app

    env = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = ["inspect", "Hi you", "--model", tiny_dir, "--run-dir", str(tmp_path / "run")]
    first = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "a.json")], env=env)
    assert first.exit_code == 0, first.output
    (shard,) = (tmp_path / "run" / "shards").glob("*.jsonl")
    shard.write_text(edit_a_value(shard.read_text(encoding="utf-8")), encoding="utf-8")
    again = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "b.json")], env=env)
    assert again.exit_code == 0, again.output
    warned = [line for line in again.output.splitlines() if "corrupt shard" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: ") and "running it again" in warned[0]
    assert "Traceback" not in again.output and "warnings.warn" not in again.output
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
