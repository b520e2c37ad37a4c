"""The S3 attempt/commit protocol against a real S3 API (moto server)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from boltzgen_airflow.exceptions import CommitError
from boltzgen_airflow.storage.commits import (
    CommitRecord,
    commit_attempt,
    designs_by_spec,
    read_commit,
    read_commits,
    verify_manifest,
)
from boltzgen_airflow.storage.layout import COMMIT_FILE
from boltzgen_airflow.storage.s3 import list_sizes

PREFIX = "bg/cache/design/k1"


def write_attempt(
    client: Any,
    bucket: str,
    job: str,
    *,
    produced: int = 4,
    expected: int = 4,
    drop: str | None = None,
    corrupt: str | None = None,
    stage: str = "design",
    at: str | None = None,
    fused: list[dict[str, str]] | None = None,
) -> str:
    attempt = at or f"{PREFIX}/attempts/{job}/"
    files = []
    for index in range(produced):
        body = f"design {index}".encode()
        path = f"intermediate_designs/spec_{index}.cif"
        files.append({"path": path, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
        if path == drop:
            continue
        client.put_object(Bucket=bucket, Key=attempt + path, Body=body + (b"!" if path == corrupt else b""))
    manifest = {
        "schema": 1,
        "stage": stage,
        "shard": "s0000",
        "protocol": "protein-anything",
        "items": [],
        "files": files,
        "designs_expected": expected,
        "designs_produced": produced,
        "shortfall": expected - produced,
        "oom_detected": produced < expected,
        "design_ids": [f"spec_{i}" for i in range(produced)],
        "timings": [
            {"spec": "spec", "start": 0, "count": produced, "seconds": 1.5, "exit_code": 0, "gpu": 0}
        ],
        "gpu_model": None,
        "gpus": 1,
        "boltzgen_version": "0.3.2",
        "exit_codes": [0],
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:01:00Z",
        **({"fused": fused} if fused else {}),
    }
    client.put_object(Bucket=bucket, Key=attempt + "_manifest.json", Body=json.dumps(manifest).encode())
    return attempt


def commit(client: Any, bucket: str, attempt: str, job: str, **options: Any) -> CommitRecord:
    """Commit a design attempt of key ``k1``; ``options``: more of ``commit_attempt``'s arguments."""
    return commit_attempt(
        client,
        bucket=bucket,
        stage="design",
        key="k1",
        commit_key=f"{PREFIX}/{COMMIT_FILE}",
        attempt_prefix=attempt,
        job_name=job,
        min_fraction=0.9,
        **options,
    )


def test_a_verified_attempt_is_committed_and_read_back(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    assert read_commit(client, bucket, f"{PREFIX}/{COMMIT_FILE}") is None
    attempt = write_attempt(client, bucket, "job-a")
    record = commit(client, bucket, attempt, "job-a")
    assert record.designs_produced == 4 and record.seconds == 1.5
    stored = read_commit(client, bucket, f"{PREFIX}/{COMMIT_FILE}")
    assert stored is not None
    assert stored.attempt_prefix == attempt and stored.job_name == "job-a"
    # One JSON round trip: what is in S3 reads back as the record written.
    assert stored == record


def test_many_commits_read_together_come_back_in_the_order_asked(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    keys = [f"bg/cache/design/k{i}/{COMMIT_FILE}" for i in range(20)]
    for i in range(0, 20, 3):
        attempt = write_attempt(client, bucket, f"job-{i}", at=f"bg/cache/design/k{i}/attempts/job-{i}/")
        commit_attempt(
            client,
            bucket=bucket,
            stage="design",
            key=f"k{i}",
            commit_key=keys[i],
            attempt_prefix=attempt,
            job_name=f"job-{i}",
            min_fraction=0.9,
        )
    records = read_commits(client, bucket, keys)
    expected = [f"job-{i}" if i % 3 == 0 else None for i in range(20)]
    assert [r.job_name if r else None for r in records] == expected
    assert read_commits(client, bucket, keys[:1])[0] == read_commit(client, bucket, keys[0])
    assert read_commits(client, bucket, []) == []


def test_a_commit_never_replaces_another_and_a_forced_one_does(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    first = write_attempt(client, bucket, "job-a")
    commit(client, bucket, first, "job-a")
    second = write_attempt(client, bucket, "job-b")
    # A second job of the same key committing later gets the first commit back, unchanged in S3.
    assert commit(client, bucket, second, "job-b").job_name == "job-a"
    stored = read_commit(client, bucket, f"{PREFIX}/{COMMIT_FILE}")
    assert stored is not None and stored.job_name == "job-a"
    # A forced re-run replaces the pointer on purpose; the old attempt stays.
    replaced = commit(client, bucket, second, "job-b", replace=True)
    assert replaced.job_name == "job-b"
    stored = read_commit(client, bucket, f"{PREFIX}/{COMMIT_FILE}")
    assert stored is not None and stored.job_name == "job-b"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=first)["KeyCount"]
    assert listed == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": "intermediate_designs/spec_1.cif"}, "missing"),
        ({"corrupt": "intermediate_designs/spec_2.cif"}, "wrong size"),
        ({"produced": 2, "expected": 4}, r"produced 2 of 4 designs, below the minimum fraction 0\.9 \(GPU"),
    ],
)
def test_a_bad_attempt_is_not_committed(s3: tuple[Any, str], kwargs: dict, message: str) -> None:
    client, bucket = s3
    attempt = write_attempt(client, bucket, "job-bad", **kwargs)
    with pytest.raises(CommitError, match=message):
        commit(client, bucket, attempt, "job-bad")
    assert read_commit(client, bucket, f"{PREFIX}/{COMMIT_FILE}") is None


def test_a_missing_manifest_is_named(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    with pytest.raises(CommitError, match=r"no _manifest\.json under"):
        commit(client, bucket, f"{PREFIX}/attempts/never-ran/", "never-ran")


def test_the_manifest_must_belong_to_the_stage() -> None:
    result = verify_manifest({"schema": 1, "stage": "folding", "files": []}, {}, 0.9, stage="design")
    assert not result.ok and "expected 'design'" in result.problems[0]


def test_a_small_shortfall_within_the_fraction_commits() -> None:
    manifest = {"schema": 1, "stage": "design", "files": [], "designs_expected": 10, "designs_produced": 9}
    assert verify_manifest(manifest, {}, 0.9).ok
    assert not verify_manifest(manifest, {}, 0.95).ok


def test_listing_a_folder_or_a_whole_bucket_gives_paths_relative_to_it(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    for key in ("specs/a.yaml", "specs/sub/b.cif", "specs-old/c.yaml"):
        client.put_object(Bucket=bucket, Key=key, Body=b"12345")
    # A sibling folder sharing the name's first letters is not part of the folder.
    assert list_sizes(client, bucket, "specs") == {"a.yaml": 5, "sub/b.cif": 5}
    assert list_sizes(client, bucket, "specs/") == {"a.yaml": 5, "sub/b.cif": 5}
    # Specs at the top of a bucket (design.specs: s3://bucket/) are found too.
    assert list_sizes(client, bucket, "") == {"specs/a.yaml": 5, "specs/sub/b.cif": 5, "specs-old/c.yaml": 5}


def test_a_shard_of_several_specs_counts_each_spec_s_designs_exactly() -> None:
    # Three designs of one spec and one of the other: an even split would say two and two.
    items = [
        {"spec_name": "pep/a.yaml", "start": 0, "count": 3},
        {"spec_name": "a_b.yaml", "start": 4, "count": 2},
    ]
    ids = ["a_0", "a_1", "a_2", "a_b_4", "a_b_9", "other_0"]
    assert designs_by_spec(ids, items) == {"pep/a.yaml": 3, "a_b.yaml": 1}
    record = CommitRecord.of_attempt(
        stage="analysis",
        key="k1",
        bucket="b",
        attempt_prefix="p/attempts/j",
        job_name="j",
        manifest={"design_ids": ids, "items": items, "designs_produced": 6},
    )
    assert record.designs_by_spec == {"pep/a.yaml": 3, "a_b.yaml": 1}
    assert CommitRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_the_stages_fused_into_a_job_are_committed_under_their_own_keys(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    inv_key, fold_key = "a" * 32, "b" * 32
    fused = [
        {"stage": "inverse_folding", "key": inv_key, "path": "_fused/inverse_folding/"},
        {"stage": "folding", "key": fold_key, "path": "_fused/folding/"},
    ]
    attempt = write_attempt(client, bucket, "job-a", fused=fused)
    write_attempt(client, bucket, "job-a", stage="inverse_folding", at=f"{attempt}_fused/inverse_folding/")
    # The folding step fell short: its attempt stays uncommitted, so its task runs a job of its own.
    write_attempt(
        client, bucket, "job-a", stage="folding", at=f"{attempt}_fused/folding/", produced=1, expected=4
    )
    record = commit(client, bucket, attempt, "job-a")
    assert record.stage == "design" and record.attempt_prefix == attempt
    inverse = read_commit(client, bucket, f"bg/cache/inverse_folding/{inv_key}/{COMMIT_FILE}")
    assert inverse is not None
    assert inverse.stage == "inverse_folding" and inverse.key == inv_key and inverse.job_name == "job-a"
    assert inverse.attempt_prefix == f"{attempt}_fused/inverse_folding/"
    assert read_commit(client, bucket, f"bg/cache/folding/{fold_key}/{COMMIT_FILE}") is None


def test_a_fused_entry_with_a_key_that_is_not_one_commits_nothing(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    fused = [{"stage": "inverse_folding", "key": "../../x", "path": "_fused/inverse_folding/"}]
    attempt = write_attempt(client, bucket, "job-a", fused=fused)
    write_attempt(client, bucket, "job-a", stage="inverse_folding", at=f"{attempt}_fused/inverse_folding/")
    commit(client, bucket, attempt, "job-a")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert [k for k in keys if k.endswith(COMMIT_FILE)] == [f"{PREFIX}/{COMMIT_FILE}"]


def test_the_instance_type_a_job_ran_on_is_committed_with_its_fused_stages(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    fused = [{"stage": "inverse_folding", "key": "a" * 32, "path": "_fused/inverse_folding/"}]
    attempt = write_attempt(client, bucket, "job-a", fused=fused)
    write_attempt(client, bucket, "job-a", stage="inverse_folding", at=f"{attempt}_fused/inverse_folding/")
    record = commit(client, bucket, attempt, "job-a", instance_type="ml.g6.xlarge")
    assert record.instance_type == "ml.g6.xlarge"
    assert read_commit(client, bucket, f"{PREFIX}/{COMMIT_FILE}") == record
    inverse = read_commit(client, bucket, f"bg/cache/inverse_folding/{'a' * 32}/{COMMIT_FILE}")
    assert inverse is not None and inverse.instance_type == "ml.g6.xlarge"
