"""The ``boltzgen-airflow`` command: validate campaigns, inspect spec bundles, plan."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from boltzgen_airflow.campaign.loading import campaign_files, load_campaign
from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.specs import SpecBundle, discover_bundles
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.stages import GPU_STAGES

Handler = Callable[[argparse.Namespace, TextIO], int]

# Extra sub-commands register here before main() builds the parser:
# EXTRA_COMMANDS.append(register) where register(subparsers) adds a parser and sets `handler`.
EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def _bundles_for(campaign: Campaign) -> list[SpecBundle]:
    root = campaign.specs_root()
    if isinstance(root, str):
        raise CampaignError.single(
            str(campaign.source_path), "design.specs", f"{root} is on S3; plan from a local copy of the specs"
        )
    return discover_bundles(root, campaign.design.include)


def _cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    files: list[Path] = []
    failures = 0
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            found = campaign_files(path)
            if not found:
                print(f"{path}: no campaign files (*.yaml)", file=out)
                failures += 1
            files.extend(found)
        else:
            files.append(path)
    for path in files:
        try:
            campaign = load_campaign(path)
            errors = [] if args.no_specs else _spec_errors(campaign)
        except CampaignError as err:
            print(str(err), file=out)
            failures += 1
            continue
        if errors:
            for error in errors:
                print(f"{path}: design.specs: {error}", file=out)
            failures += 1
        else:
            print(f"{path}: ok ({campaign.dag_id})", file=out)
    return 0 if failures == 0 else 1


def _spec_errors(campaign: Campaign) -> list[str]:
    root = campaign.specs_root()
    if isinstance(root, str):
        return []  # an S3 prefix is checked when the run stages it
    bundles = discover_bundles(root, campaign.design.include)
    errors = [e for b in bundles for e in b.errors]
    if not bundles:
        errors.append(f"no design specs match {campaign.design.include!r} under {root}")
    return errors


def _cmd_specs(args: argparse.Namespace, out: TextIO) -> int:
    bundles = discover_bundles(Path(args.root), args.include)
    failed = any(b.errors for b in bundles)
    if args.json:
        json.dump({"specs": [b.to_json() for b in bundles]}, out, indent=2)
        out.write("\n")
        return 1 if failed else 0
    for bundle in bundles:
        status = "ok" if bundle.ok else "ERROR"
        print(f"{status:5} {bundle.spec}  files={len(bundle.files)} residues~{bundle.residues}", file=out)
        for error in bundle.errors:
            print(f"      {error}", file=out)
    print(f"{len(bundles)} specs, {sum(1 for b in bundles if b.errors)} with errors", file=out)
    return 1 if failed else 0


def parse_assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """
    Parse ``key=value`` pairs; values are read as YAML scalars (``10`` -> 10, ``true`` -> True).

    :param pairs: the ``--set`` arguments.
    :raises CampaignError: for a pair without ``=``.
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CampaignError.single("<command line>", pair, "expected --set key=value")
        try:
            result[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            result[key.strip()] = value
    return result


def parse_duration_hours(text: str) -> float:
    """
    Hours in ``48h``, ``2d``, ``90m`` or a bare number of hours.

    :param text: the duration.
    :raises argparse.ArgumentTypeError: for anything else or a duration not above 0.
    """
    units = {"h": 1.0, "d": 24.0, "m": 1 / 60}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1.0)
    try:
        hours = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use e.g. 48h, 2d or 90m") from None
    if not hours > 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be above 0")
    return hours


def _positive_usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid amount {text!r}; use e.g. 500") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"amount {text!r} must be above 0")
    return value


def _print_options(args: argparse.Namespace, campaign: Campaign, out: TextIO) -> int:
    from boltzgen_airflow.planning.plan import choose_option, compare_options, option_overrides

    presets = args.presets.split(",") if args.presets else ["small", "medium", "large", "xlarge"]
    gpu_types = args.gpu_types.split(",") if args.gpu_types else []
    options = compare_options(campaign, _bundles_for(campaign), option_overrides(presets, gpu_types))
    best = choose_option(options, deadline_hours=args.deadline, budget_usd=args.budget)
    print(
        f"  {'option':44} {'gpu instance':16} {'gpus':>5} {'shards':>6} {'makespan h':>11} {'cost $':>11}",
        file=out,
    )
    for o in options:
        mark = "* " if o is best else "  "
        print(
            f"{mark}{o.label:44} {o.gpu_instance_type:16} {o.gpus:5d} {o.shards:6d} "
            f"{o.makespan_hours:11.2f} {o.cost_usd:11,.2f}",
            file=out,
        )
    wanted = " and ".join(
        part
        for part in (
            f"a makespan within {args.deadline:g} h" if args.deadline else "",
            f"a cost within ${args.budget:,.2f}" if args.budget else "",
        )
        if part
    )
    if best is None:
        print(f"no option has {wanted}", file=out)
        return 1
    rule = "cheapest" if args.deadline else "fastest"
    print(f"* {rule} with {wanted}: {best.label}", file=out)
    return 0


def _print_fallbacks(campaign: Campaign, plan: Any, out: TextIO) -> None:
    """The fallback types and what the same shards take on them (the estimate above assumes none)."""
    from boltzgen_airflow.planning.plan import fallback_estimates

    for stage, res in plan.resources.items():
        if res.fallbacks:
            names = ", ".join(f.name for f in res.fallbacks)
            print(f"fallbacks: {stage} {res.instance_type.name} -> {names}", file=out)
    for option in fallback_estimates(plan, campaign):
        over = f"; {option.over_runtime} jobs would pass their max runtime" if option.over_runtime else ""
        print(
            f"  on {option.label}: makespan {option.estimate.makespan_hours:.2f} h, "
            f"${option.estimate.cost_usd:,.2f}{over}",
            file=out,
        )


def _cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    from boltzgen_airflow.planning.plan import plan_campaign
    from boltzgen_airflow.planning.summary import plan_table
    from boltzgen_airflow.run.spend import check_plan

    try:
        campaign = load_campaign(args.campaign)
        if args.set:
            campaign = campaign.with_overrides(parse_assignments(args.set))
        if args.deadline or args.budget:
            return _print_options(args, campaign, out)
        plan = plan_campaign(campaign, _bundles_for(campaign))
        # The first round of a campaign run: nothing spent yet.
        check_plan(
            str(args.campaign),
            estimate_usd=plan.estimate.cost_usd,
            cap_usd=campaign.design.max_cost_usd,
            spent_usd=0.0,
        )
    except CampaignError as err:
        print(str(err), file=out)
        return 1
    if args.json:
        json.dump(plan.to_json(), out, indent=2)
        out.write("\n")
        return 0
    for line in plan_table(plan, campaign.dag_id):
        print(line, file=out)
    _print_fallbacks(campaign, plan, out)
    figures = plan.estimate.figures
    calibrated = sorted(name for name, source in figures.items() if source != "default")
    defaults = sorted(name for name, source in figures.items() if source == "default")
    print(
        f"time model: calibrated {', '.join(calibrated) or 'none'}; defaults {', '.join(defaults)}", file=out
    )
    if args.shards:
        for shard in plan.shards:
            items = ", ".join(f"{i.spec}[{i.start}:{i.start + i.count}]" for i in shard.items)
            print(f"  {shard.id} {shard.est_seconds / 3600:6.2f} h  {items}", file=out)
    return 0


def _commits(s3: Any, layout: Any, stage: str) -> Iterable[dict[str, Any]]:
    from boltzgen_airflow.storage.layout import COMMIT_FILE

    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=layout.bucket, Prefix=layout.cache_prefix(stage)
    ):
        for entry in page.get("Contents", []):
            if entry["Key"].endswith(f"/{COMMIT_FILE}"):
                yield json.loads(s3.get_object(Bucket=layout.bucket, Key=entry["Key"])["Body"].read())


def _job_record(sagemaker: Any, job_name: str) -> dict[str, Any]:
    """SageMaker's record of a job, or ``{}`` once it no longer keeps it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return dict(sagemaker.describe_processing_job(ProcessingJobName=job_name))
    except (BotoCoreError, ClientError):
        return {}


def _gpu_model(stage: str, manifest: Mapping[str, Any], job: Mapping[str, Any]) -> str | None:
    """The GPU a stage ran on: the manifest's, else the catalog's for the job's instance type."""
    from boltzgen_airflow.campaign.catalog import load_catalog

    if stage not in GPU_STAGES:
        return None
    if manifest.get("gpu_model"):
        return str(manifest["gpu_model"])
    cluster = job.get("ProcessingResources", {}).get("ClusterConfig", {})
    try:
        return load_catalog().get(cluster.get("SelectedInstanceType") or cluster["InstanceType"]).gpu_model
    except (KeyError, CampaignError):
        return None


def _stage_samples(stage: str, manifest: Mapping[str, Any], gpu: str | None) -> list[Any]:
    """One sample per successful process of a manifest, matched to its work item."""
    from boltzgen_airflow.planning.plan import TimingSample

    residues = {(i["spec"], int(i["start"])): int(i.get("residues", 0)) for i in manifest.get("items", [])}
    return [
        TimingSample(stage, residues[(t["spec"], int(t["start"]))], int(t["count"]), float(t["seconds"]), gpu)
        for t in manifest.get("timings") or []
        if t.get("exit_code") == 0 and (t["spec"], int(t["start"])) in residues
    ]


def read_timings(s3: Any, sagemaker: Any, layout: Any) -> tuple[list[Any], list[float]]:
    """
    Per-process timings of every committed shard stage under ``layout``, and each job's
    provisioning seconds: from its creation (SageMaker's record, while it keeps it) to its
    script's start (the manifest's ``started_at``).

    :param s3: a boto3 S3 client.
    :param sagemaker: a boto3 SageMaker client.
    :param layout: the campaign's S3 layout.
    """
    from boltzgen_airflow.stages import SHARD_STAGES
    from boltzgen_airflow.storage.layout import MANIFEST_FILE

    samples: list[Any] = []
    provisioning: list[float] = []
    for stage in SHARD_STAGES:
        for commit in _commits(s3, layout, stage):
            key = f"{commit['attempt_prefix']}{MANIFEST_FILE}"
            manifest = json.loads(s3.get_object(Bucket=commit["bucket"], Key=key)["Body"].read())
            job = _job_record(sagemaker, commit["job_name"])
            samples.extend(_stage_samples(stage, manifest, _gpu_model(stage, manifest, job)))
            if job.get("CreationTime") and manifest.get("started_at"):
                started = datetime.fromisoformat(manifest["started_at"])
                provisioning.append(max(0.0, (started - job["CreationTime"]).total_seconds()))
    return samples, provisioning


def _cmd_calibrate(args: argparse.Namespace, out: TextIO) -> int:
    import boto3

    from boltzgen_airflow.planning.plan import StageTimeModel, calibrate_time_model, campaign_time_model
    from boltzgen_airflow.storage.layout import Layout

    try:
        campaign = load_campaign(args.campaign)
        model = campaign_time_model(campaign)
    except CampaignError as err:
        print(str(err), file=out)
        return 1
    region = campaign.aws.region
    samples, provisioning = read_timings(
        boto3.client("s3", region_name=region),
        boto3.client("sagemaker", region_name=region),
        Layout(campaign.aws.bucket, campaign.aws.prefix),
    )
    if not samples and not provisioning:
        print(f"no committed stage under s3://{campaign.aws.bucket}/{campaign.aws.prefix}/cache/", file=out)
        return 1
    data = calibrate_time_model(model, samples, provisioning, campaign=campaign)
    fitted = StageTimeModel(data)
    print(f"{len(samples)} processes, {len(provisioning)} jobs", file=out)
    for name, source in fitted.figures().items():
        print(f"  {name:30} {source}", file=out)
    text = yaml.safe_dump(data, sort_keys=False)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}; set sharding.time_model to it to plan with it", file=out)
    else:
        out.write(text)
    return 0


def _forward_local(stack_args: Sequence[str]) -> int:
    # A subprocess, not an import: plugins/ and local/ meet only at the command line and the AWS API.
    import subprocess

    return subprocess.call([sys.executable, "-m", "sagemaker_emulator.stack", *stack_args])


def _collect_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        files.extend(campaign_files(path) if path.is_dir() else [path])
    return files


def _cmd_pools(args: argparse.Namespace, out: TextIO) -> int:
    from boltzgen_airflow.dag.pools import ensure_pools, stage_pools

    campaigns = [load_campaign(path) for path in _collect_files(args.paths)]
    wanted: dict[str, int] = {}
    for campaign in campaigns:
        for name, slots in stage_pools(campaign).values():
            wanted[name] = max(wanted.get(name, 0), slots)
    if args.create:
        # Needs the Airflow metadata database of this environment (AIRFLOW_HOME / AIRFLOW__DATABASE__*).
        ensure_pools(campaigns)
    for name, slots in sorted(wanted.items()):
        action = "created or resized" if args.create else "needed"
        print(f"{name}: {slots} slots (include deferred), {action}", file=out)
    return 0


def _cmd_local(args: argparse.Namespace, out: TextIO) -> int:
    return _forward_local(args.stack_args)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser, including registered extra sub-commands."""
    parser = argparse.ArgumentParser(prog="boltzgen-airflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="validate campaign files or folders of them")
    validate.add_argument("paths", nargs="+", help="campaign files or folders")
    validate.add_argument("--no-specs", action="store_true", help="skip resolving the spec bundles")
    validate.set_defaults(handler=_cmd_validate)

    specs = sub.add_parser("specs", help="resolve and check the spec bundles under a folder")
    specs.add_argument("root", help="the specs root")
    specs.add_argument("--include", default="**/*.yaml", help="glob of candidate files (default **/*.yaml)")
    specs.add_argument("--json", action="store_true", help="print JSON")
    specs.set_defaults(handler=_cmd_specs)

    plan = sub.add_parser("plan", help="show the shards and the time/cost estimate of a campaign")
    plan.add_argument("campaign", help="campaign file")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.add_argument("--shards", action="store_true", help="list the shards")
    plan.add_argument(
        "--deadline",
        type=parse_duration_hours,
        help="compare presets and GPU types; mark the cheapest ending within this (48h, 2d, 90m)",
    )
    plan.add_argument(
        "--budget", type=_positive_usd, help="compare presets and GPU types; mark the fastest within USD"
    )
    plan.add_argument("--presets", help="presets to compare (default small,medium,large,xlarge)")
    plan.add_argument("--gpu-types", help="GPU instance types to try on every preset, comma-separated")
    plan.set_defaults(handler=_cmd_plan)

    calibrate = sub.add_parser(
        "calibrate", help="fit the stage time model to the committed stages of a campaign"
    )
    calibrate.add_argument("campaign", help="campaign file")
    calibrate.add_argument("--out", help="write the fitted time model here (default: print it)")
    calibrate.set_defaults(handler=_cmd_calibrate)

    pools = sub.add_parser(
        "pools", help="the Airflow pools the campaigns need (one per instance type); --create makes them"
    )
    pools.add_argument("paths", nargs="+", help="campaign files or folders")
    pools.add_argument(
        "--create", action="store_true", help="create or resize them in this Airflow's metadata database"
    )
    pools.set_defaults(handler=_cmd_pools)

    local = sub.add_parser(
        "local",
        help="run the one-machine stack: local up|down|status|env (python -m sagemaker_emulator.stack)",
        add_help=False,
    )
    local.add_argument("stack_args", nargs=argparse.REMAINDER)
    local.set_defaults(handler=_cmd_local)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line.

    :param argv: arguments (default ``sys.argv[1:]``).
    :return: the exit code.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["local"]:
        # Forwarded untouched, so `local --help` and every stack flag reach the stack's own parser.
        return _forward_local(argv[1:])
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, sys.stdout)
    except CampaignError as err:
        print(str(err), file=sys.stdout)
        return 1


if __name__ == "__main__":
    sys.exit(main())
