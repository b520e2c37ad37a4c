"""Every S3 key the system writes, in one place (see docs/architecture.md, "S3 keys")."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

from boltzgen_airflow.sagemaker.limits import JOB_NAME_RE
from boltzgen_airflow.stages import STAGES

_HASH_RE = re.compile(r"^[0-9a-f]{8,64}\Z")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
_SHARD_RE = re.compile(r"^[sf]\d{4}\Z")
_PREFIX_PART_RE = re.compile(r"^[A-Za-z0-9!_.*'()-]+\Z")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")

_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}\Z")


PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*\Z")

COMMIT_FILE = "_COMMITTED.json"
CLAIM_FILE = "_CLAIM.json"
#: Under ``<prefix>/cache/``: the object the conditional-write probe keeps (storage.claims).
PROBE_FILE = "_CONDITIONAL_WRITE_PROBE.json"
MANIFEST_FILE = "_manifest.json"
MAX_KEY_BYTES = 1024


def safe_run_id(run_id: str) -> str:
    """
    Turn an Airflow run id (``manual__2025-01-01T00:00:00+00:00``) into a safe S3 key segment.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; the result is at most 200 characters.

    :param run_id: the run id.
    :raises ValueError: when nothing usable is left.
    """
    safe = _UNSAFE_RE.sub("_", run_id).strip("._")[:200]
    if not safe or set(safe) <= {"_", "-", "."}:
        raise ValueError(f"run id {run_id!r} has no usable characters for an S3 key")
    return safe


def key_problem(key: str) -> str | None:
    """
    Say why S3 would refuse ``key`` (or mangle it in a listing), or return None.

    :param key: an S3 object key.
    """
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_KEY_BYTES:
        return f"is {size} bytes long, above S3's {MAX_KEY_BYTES}"
    if any(unicodedata.category(char) == "Cc" for char in key):
        return "holds a control character"
    return None


def _check(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"invalid {what} {value!r} for an S3 key")
    return value


def _stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    return stage


def attempt_prefix_of(attempts_prefix: str, job_name: str) -> str:
    """
    Return ``<attempts prefix>/<job-name>/``: the folder one job writes.

    :param attempts_prefix: ``<prefix>/cache/<stage>/<key>/attempts/``.
    :param job_name: the SageMaker job name.
    """
    return f"{attempts_prefix.rstrip('/')}/{_check(job_name, JOB_NAME_RE, 'job name')}/"


def claim_key_of(commit_key: str) -> str:
    """
    Return ``<prefix>/cache/<stage>/<key>/_CLAIM.json``, beside a stage key's commit.

    :param commit_key: ``<prefix>/cache/<stage>/<key>/_COMMITTED.json``.
    """
    if not commit_key.endswith("/" + COMMIT_FILE):
        raise ValueError(f"{commit_key!r} is not a {COMMIT_FILE} key")
    return commit_key[: -len(COMMIT_FILE)] + CLAIM_FILE


def probe_key_of(commit_key: str) -> str:
    """
    Return ``<prefix>/cache/_CONDITIONAL_WRITE_PROBE.json`` for a commit key of that prefix.

    :param commit_key: ``<prefix>/cache/<stage>/<key>/_COMMITTED.json``.
    """
    head, found, _ = f"/{commit_key}".rpartition("/cache/")
    if not found:
        raise ValueError(f"{commit_key!r} is not under a cache/ folder")
    return f"{head}/cache/{PROBE_FILE}".lstrip("/")


@dataclass(frozen=True)
class Layout:
    """
    The S3 layout of one bucket and prefix.

    :param bucket: the bucket.
    :param prefix: the key prefix (no leading or trailing slash).
    """

    bucket: str
    prefix: str

    def __post_init__(self) -> None:
        validate_bucket_name(self.bucket)
        prefix = self.prefix.strip("/")
        if not prefix or not all(
            _PREFIX_PART_RE.match(p) and p not in (".", "..") for p in prefix.split("/")
        ):
            raise ValueError(f"invalid S3 prefix {self.prefix!r}")
        object.__setattr__(self, "prefix", prefix)

    def uri(self, key: str) -> str:
        """
        ``s3://bucket/key``.

        :param key: a key from this layout.
        """
        return f"s3://{self.bucket}/{key}"

    def inputs_prefix(self) -> str:
        """``<prefix>/inputs/``: the ManifestFile prefix of staged bundles."""
        return f"{self.prefix}/inputs/"

    def bundle_prefix(self, bundle_hash: str) -> str:
        """
        ``<prefix>/inputs/<bundle-hash>/``.

        :param bundle_hash: a spec bundle hash.
        """
        return f"{self.prefix}/inputs/{_check(bundle_hash, _HASH_RE, 'bundle hash')}/"

    def bundle_file_key(self, bundle_hash: str, rel_path: str) -> str:
        """
        ``<prefix>/inputs/<bundle-hash>/<path relative to the specs root>``.

        :param bundle_hash: a spec bundle hash.
        :param rel_path: a posix path relative to the specs root.
        """
        parts = rel_path.split("/")
        if rel_path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid bundle file path {rel_path!r}")
        key = self.bundle_prefix(bundle_hash) + rel_path
        problem = key_problem(key)
        if problem:
            raise ValueError(f"invalid bundle file path {rel_path!r}: the S3 key {problem}")
        return key

    def specs_manifest_key(self, manifest_hash: str) -> str:
        """
        ``<prefix>/inputs/_manifests/<hash>.json``.

        :param manifest_hash: hash of the manifest's content.
        """
        return f"{self.prefix}/inputs/_manifests/{_check(manifest_hash, _HASH_RE, 'manifest hash')}.json"

    def code_prefix(self, code_hash: str) -> str:
        """
        ``<prefix>/code/<code-hash>/``.

        :param code_hash: hash of the step scripts.
        """
        return f"{self.prefix}/code/{_check(code_hash, _HASH_RE, 'code hash')}/"

    def cache_prefix(self, stage: str) -> str:
        """
        ``<prefix>/cache/<stage>/``: every cached output of a stage.

        :param stage: the stage.
        """
        return f"{self.prefix}/cache/{_stage(stage)}/"

    def stage_prefix(self, stage: str, key: str) -> str:
        """
        ``<prefix>/cache/<stage>/<key>/``.

        :param stage: the stage.
        :param key: the cache key.
        """
        return f"{self.cache_prefix(stage)}{_check(key, _HASH_RE, 'cache key')}/"

    def attempts_prefix(self, stage: str, key: str) -> str:
        """
        ``<prefix>/cache/<stage>/<key>/attempts/``.

        :param stage: the stage.
        :param key: the cache key.
        """
        return self.stage_prefix(stage, key) + "attempts/"

    def attempt_prefix(self, stage: str, key: str, job_name: str) -> str:
        """
        ``<prefix>/cache/<stage>/<key>/attempts/<job-name>/``.

        :param stage: the stage.
        :param key: the cache key.
        :param job_name: the SageMaker job name.
        """
        return attempt_prefix_of(self.attempts_prefix(stage, key), job_name)

    def stage_root(self, stage: str) -> str:
        """
        ``<prefix>/cache/<stage>/``: the ManifestFile prefix of a stage's attempts.

        :param stage: the stage.
        """
        return f"{self.prefix}/cache/{_stage(stage)}/"

    def manifest_key(self, stage: str, key: str, job_name: str) -> str:
        """
        ``.../attempts/<job-name>/_manifest.json``.

        :param stage: the stage.
        :param key: the cache key.
        :param job_name: the SageMaker job name.
        """
        return self.attempt_prefix(stage, key, job_name) + MANIFEST_FILE

    def commit_key(self, stage: str, key: str) -> str:
        """
        ``<prefix>/cache/<stage>/<key>/_COMMITTED.json``.

        :param stage: the stage.
        :param key: the cache key.
        """
        return self.stage_prefix(stage, key) + COMMIT_FILE

    def campaign_prefix(self, campaign: str) -> str:
        """
        ``<prefix>/campaigns/<campaign>``: the campaign's folder (its Asset's URI, without a slash).

        :param campaign: the campaign name.
        """
        return f"{self.prefix}/campaigns/{_check(campaign, _NAME_RE, 'campaign name')}"

    def run_prefix(self, campaign: str, run_id: str) -> str:
        """
        ``<prefix>/campaigns/<campaign>/runs/<run>/`` (the run id made safe).

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        """
        return f"{self.campaign_prefix(campaign)}/runs/{safe_run_id(run_id)}/"

    def run_manifest_key(self, campaign: str, run_id: str) -> str:
        """
        ``<run prefix>/run.json``.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        """
        return self.run_prefix(campaign, run_id) + "run.json"

    def rounds_key(self, campaign: str, campaign_run_id: str) -> str:
        """
        ``<run prefix of round 1>/rounds.json``: the ledger of a campaign run's rounds and spend.

        :param campaign: the campaign name.
        :param campaign_run_id: the run id of the campaign run's first round.
        """
        return self.run_prefix(campaign, campaign_run_id) + "rounds.json"

    def shards_key(self, campaign: str, run_id: str) -> str:
        """
        ``<run prefix>/shards.json``: every shard descriptor of the run, as planned.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        """
        return self.run_prefix(campaign, run_id) + "shards.json"

    def shard_key(self, campaign: str, run_id: str, shard: str) -> str:
        """
        ``<run prefix>/shards/<shard>.json``: one shard's descriptor, read by its tasks.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        :param shard: the shard id (``s0000``).
        """
        shard = _check(shard, _SHARD_RE, "shard id")
        return f"{self.run_prefix(campaign, run_id)}shards/{shard}.json"

    def work_prefix(self, campaign: str, run_id: str, stage: str, shard: str) -> str:
        """
        ``<run prefix>/work/<stage>/<shard>/``: the folder of one job's work.json.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        :param stage: the stage.
        :param shard: the shard id (``s0000``) or filter id (``f0000``).
        """
        shard = _check(shard, _SHARD_RE, "shard id")
        return f"{self.run_prefix(campaign, run_id)}work/{_stage(stage)}/{shard}/"

    def work_key(self, campaign: str, run_id: str, stage: str, shard: str) -> str:
        """
        ``<run prefix>/work/<stage>/<shard>/work.json``.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        :param stage: the stage.
        :param shard: the shard id (``s0000``) or filter id (``f0000``).
        """
        return self.work_prefix(campaign, run_id, stage, shard) + "work.json"

    def filtering_prefix(self, campaign: str, run_id: str, filter_id: str) -> str:
        """
        ``<run prefix>/filtering/<filter id>/``: a spec's filtering inputs.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        :param filter_id: the spec's filter id (``f0000``).
        """
        filter_id = _check(filter_id, _SHARD_RE, "filter id")
        return f"{self.run_prefix(campaign, run_id)}filtering/{filter_id}/"

    def filtering_key(self, campaign: str, run_id: str, filter_id: str) -> str:
        """
        ``<run prefix>/filtering/<filter id>/descriptor.json``: a spec's filtering descriptor.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        :param filter_id: the spec's filter id (``f0000``).
        """
        return self.filtering_prefix(campaign, run_id, filter_id) + "descriptor.json"

    def analysis_manifest_key(self, campaign: str, run_id: str, filter_id: str) -> str:
        """
        ``<run prefix>/filtering/<filter id>/analysis.manifest``: the ManifestFile of the spec's
        committed analysis attempts.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        :param filter_id: the spec's filter id (``f0000``).
        """
        return self.filtering_prefix(campaign, run_id, filter_id) + "analysis.manifest"

    def spec_results_prefix(self, campaign: str, run_id: str, spec: str) -> str:
        """
        ``<run prefix>/results/<spec without .yaml>/``: one spec's final designs.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        :param spec: the spec path (relative to the specs root).
        """
        return f"{self.results_prefix(campaign, run_id)}{PurePosixPath(spec).with_suffix('').as_posix()}/"

    def report_prefix(self, campaign: str, run_id: str) -> str:
        """
        ``<run prefix>/report/``.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        """
        return self.run_prefix(campaign, run_id) + "report/"

    def results_prefix(self, campaign: str, run_id: str) -> str:
        """
        ``<run prefix>/results/``: final designs of the run.

        :param campaign: the campaign name.
        :param run_id: the Airflow run id.
        """
        return self.run_prefix(campaign, run_id) + "results/"


def validate_bucket_name(name: str) -> str:
    """
    Check an S3 bucket name against the general-purpose bucket naming rules.

    :param name: the bucket name.
    :return: the name unchanged.
    :raises ValueError: naming the rule that fails.
    """
    if not _S3_BUCKET_RE.match(name):
        raise ValueError(
            f"invalid S3 bucket name {name!r}: 3-63 characters of lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    if ".." in name or _IPV4_RE.match(name):
        raise ValueError(f"invalid S3 bucket name {name!r}: no '..' and not an IP address")
    if name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3", "--x-s3")):
        raise ValueError(f"invalid S3 bucket name {name!r}: reserved prefix or suffix")
    return name


def split_s3_uri(uri: str) -> tuple[str, str]:
    """
    Split ``s3://bucket/key`` into bucket and key, validating the bucket.

    :param uri: an ``s3://`` URI.
    :raises ValueError: when the URI is not an S3 URI or the bucket name is invalid.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    validate_bucket_name(bucket)
    if key and not PREFIX_RE.match(key.rstrip("/")):
        raise ValueError(f"invalid S3 key prefix {key!r} in {uri!r}")
    return bucket, key


def s3_uri(bucket: str, key: str) -> str:
    """
    Return ``s3://bucket/key``.

    :param bucket: the bucket.
    :param key: the key.
    """
    return f"s3://{bucket}/{key}"
