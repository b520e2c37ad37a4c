"""
Rounds of a campaign run: design until enough designs of each spec pass BoltzGen's filters.

A campaign run is its first run (round 1) and the runs its ``report`` started, each a run of the
same DAG. ``rounds.json`` under the first round's run folder is its ledger: per round, the designs
of each spec, how many passed and what the round spent. After a round, each spec short of
``until_passing`` gets a next round sized from its observed pass rate (:func:`size_round`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.storage.s3 import list_sizes, put_json, read_json

if TYPE_CHECKING:
    from boltzgen_airflow.campaign.model import Campaign
    from boltzgen_airflow.campaign.params import RunOptions
    from boltzgen_airflow.run.manifest import RunManifest

LEDGER_SCHEMA = 1
#: A next round asks for this much more than the observed pass rate says it needs.
ROUND_MARGIN = 1.25
#: The fewest new designs a spec gets in a next round.
MIN_ROUND_DESIGNS = 2
#: Why a spec got no next round.
REACHED, ROUNDS, CAP = "target reached", "max rounds", "spend cap"


@dataclass(frozen=True)
class RoundRecord:
    """
    One round of a campaign run.

    :param round: its number, from 1.
    :param run_id: its Airflow run.
    :param designs: spec -> designs of the spec after this round (its ids run from 0).
    :param made: spec -> designs analysis handed to filtering (over all rounds so far).
    :param passing: spec -> designs passing BoltzGen's filters over the merged union.
    :param new: spec -> designs this round added.
    :param spend_usd: what this round's jobs cost.
    :param estimate_usd: what the plan estimated for this round.
    :param results_prefix: where the round's results are (the union of every round so far).
    """

    round: int
    run_id: str
    designs: Mapping[str, int]
    made: Mapping[str, int] = field(default_factory=dict)
    passing: Mapping[str, int] = field(default_factory=dict)
    new: Mapping[str, int] = field(default_factory=dict)
    spend_usd: float = 0.0
    estimate_usd: float = 0.0
    results_prefix: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "round": self.round,
            "run_id": self.run_id,
            "designs": dict(self.designs),
            "made": dict(self.made),
            "passing": dict(self.passing),
            "new": dict(self.new),
            "spend_usd": round(self.spend_usd, 6),
            "estimate_usd": round(self.estimate_usd, 6),
            "results_prefix": self.results_prefix,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> RoundRecord:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            round=int(document["round"]),
            run_id=str(document["run_id"]),
            designs={str(k): int(v) for k, v in (document.get("designs") or {}).items()},
            made={str(k): int(v) for k, v in (document.get("made") or {}).items()},
            passing={str(k): int(v) for k, v in (document.get("passing") or {}).items()},
            new={str(k): int(v) for k, v in (document.get("new") or {}).items()},
            spend_usd=float(document.get("spend_usd", 0.0)),
            estimate_usd=float(document.get("estimate_usd", 0.0)),
            results_prefix=str(document.get("results_prefix", "")),
        )


@dataclass(frozen=True)
class Ledger:
    """
    ``rounds.json``: a campaign run's rounds, its design id width and why each spec stopped.

    :param campaign_run_id: the run id of round 1.
    :param width: digits of design ids, fixed by round 1 so later rounds' shards keep their keys.
    :param rounds: the rounds, in order.
    :param stopped: spec -> why it got no next round (empty while rounds go on).
    :param reason: why the campaign run ended, in words (empty while rounds go on).
    """

    campaign_run_id: str
    width: int
    rounds: tuple[RoundRecord, ...] = ()
    stopped: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""

    def before(self, round_number: int) -> tuple[RoundRecord, ...]:
        """
        The rounds before one round.

        :param round_number: the round.
        """
        return tuple(r for r in self.rounds if r.round < round_number)

    def spent_before(self, round_number: int) -> float:
        """
        What the rounds before one round spent.

        :param round_number: the round.
        """
        return sum(r.spend_usd for r in self.before(round_number))

    def with_round(self, record: RoundRecord) -> Ledger:
        """
        Return the ledger with a round recorded (replacing an earlier record of the same round).

        :param record: the round.
        """
        kept = {r.round: r for r in self.rounds}
        kept[record.round] = record
        return replace(self, rounds=tuple(kept[n] for n in sorted(kept)), stopped={}, reason="")

    def to_json(self) -> dict[str, Any]:
        """Return the ``rounds.json`` document."""
        return {
            "schema": LEDGER_SCHEMA,
            "campaign_run_id": self.campaign_run_id,
            "width": self.width,
            "rounds": [r.to_json() for r in self.rounds],
            "stopped": dict(self.stopped),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Ledger:
        """
        Inverse of :meth:`to_json`.

        :param document: the parsed ``rounds.json``.
        """
        return cls(
            campaign_run_id=str(document["campaign_run_id"]),
            width=int(document["width"]),
            rounds=tuple(RoundRecord.from_json(r) for r in document.get("rounds", [])),
            stopped={str(k): str(v) for k, v in (document.get("stopped") or {}).items()},
            reason=str(document.get("reason", "")),
        )


def read_ledger(client: Any, layout: Layout, campaign: str, campaign_run_id: str) -> Ledger | None:
    """
    Read a campaign run's ledger.

    :param client: a boto3 S3 client.
    :param layout: the campaign's layout.
    :param campaign: the campaign name.
    :param campaign_run_id: the run id of round 1.
    """
    document = read_json(client, layout.bucket, layout.rounds_key(campaign, campaign_run_id))
    return Ledger.from_json(document) if document else None


def write_ledger(client: Any, layout: Layout, campaign: str, ledger: Ledger) -> str:
    """
    Write a campaign run's ledger; return its key.

    :param client: a boto3 S3 client.
    :param layout: the campaign's layout.
    :param campaign: the campaign name.
    :param ledger: the ledger.
    """
    key = layout.rounds_key(campaign, ledger.campaign_run_id)
    put_json(client, layout.bucket, key, ledger.to_json())
    return key


def passing_designs(client: Any, bucket: str, attempt_prefix: str) -> int:
    """
    Designs BoltzGen's filtering marked ``pass_filters`` in a spec's ``all_designs_metrics.csv``.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param attempt_prefix: the spec's committed filtering attempt.
    """
    csvs = [k for k in list_sizes(client, bucket, attempt_prefix) if k.endswith("all_designs_metrics.csv")]
    if not csvs:
        return 0
    body = client.get_object(Bucket=bucket, Key=attempt_prefix + sorted(csvs, key=len)[0])["Body"].read()
    rows = csv.DictReader(io.StringIO(body.decode()))
    return sum(1 for row in rows if str(row.get("pass_filters", "")).strip().lower() in ("true", "1"))


def wanted_designs(made: int, passing: int, target: int) -> int:
    """
    New designs a spec short of its target asks for: what its pass rate says, with a margin.

    A spec with no passing design yet counts half a pass, so its next round grows with what it made.

    :param made: designs filtered so far.
    :param passing: of those, passing.
    :param target: ``until_passing``.
    """
    short = target - passing
    if short <= 0:
        return 0
    rate = max(passing, 0.5) / max(made, 1)
    return max(MIN_ROUND_DESIGNS, math.ceil(short / rate * ROUND_MARGIN))


@dataclass(frozen=True)
class NextRound:
    """
    What comes after a round.

    :param designs: spec -> designs after the next round (None: no next round).
    :param stopped: spec -> why it gets no new designs.
    :param reason: why the campaign run ends (empty when a next round starts).
    """

    designs: Mapping[str, int] | None
    stopped: Mapping[str, str]
    reason: str


def size_round(
    record: RoundRecord,
    *,
    until_passing: int,
    rounds_left: int,
    budget_left: float | None,
    usd_per_design: float,
) -> NextRound:
    """
    Size the next round of every spec from the pass rate the last round observed.

    :param record: the round just done.
    :param until_passing: passing designs each spec needs.
    :param rounds_left: rounds the campaign run may still take.
    :param budget_left: what is left of ``max_cost_usd`` (None: no cap).
    :param usd_per_design: estimated cost of one more design.
    """
    want = {
        spec: wanted_designs(record.made.get(spec, 0), record.passing.get(spec, 0), until_passing)
        for spec in record.designs
    }
    stopped = {spec: REACHED for spec, n in want.items() if n == 0}
    short = {spec: n for spec, n in want.items() if n > 0}
    if not short:
        return NextRound(None, stopped, f"every spec has {until_passing} passing designs")
    if rounds_left <= 0:
        return NextRound(
            None,
            {**stopped, **dict.fromkeys(short, ROUNDS)},
            f"max rounds reached with {sorted(short)} short",
        )
    if budget_left is not None:
        affordable = math.floor(budget_left / usd_per_design) if usd_per_design > 0 else sum(short.values())
        total = sum(short.values())
        if affordable < MIN_ROUND_DESIGNS * len(short):
            return NextRound(
                None,
                {**stopped, **dict.fromkeys(short, CAP)},
                f"spend cap: ${max(budget_left, 0.0):.2f} left pays for about {max(affordable, 0)} more "
                f"designs at ${usd_per_design:.4f} each, fewer than the next round's {total}",
            )
        if affordable < total:
            # Each spec gets its share of what the budget pays for.
            short = {s: max(MIN_ROUND_DESIGNS, n * affordable // total) for s, n in short.items()}
    designs = {spec: record.designs[spec] + short.get(spec, 0) for spec in record.designs}
    return NextRound(designs, stopped, "")


def usd_per_design(rounds: Sequence[RoundRecord]) -> float:
    """
    What one more design costs, from the rounds so far: the larger of their estimates and their spend.

    :param rounds: the rounds so far.
    """
    new = sum(sum(r.new.values()) for r in rounds)
    spent = max(sum(r.estimate_usd for r in rounds), sum(r.spend_usd for r in rounds))
    return spent / new if new else 0.0


@dataclass(frozen=True)
class SpecRounds:
    """
    One spec over a campaign run, for the report and the campaign view.

    :param spec: the spec path.
    :param rounds: rounds that made designs of it.
    :param made: designs made.
    :param passing: of those, passing BoltzGen's filters.
    :param spend_usd: its share of the spend (each round's spend split by the designs it added).
    :param stopped: why it stopped (empty while it goes on).
    """

    spec: str
    rounds: int
    made: int
    passing: int
    spend_usd: float
    stopped: str

    @property
    def pass_rate(self) -> float | None:
        """Passing over made (None before any design is made)."""
        return self.passing / self.made if self.made else None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "spec": self.spec,
            "rounds": self.rounds,
            "made": self.made,
            "passing": self.passing,
            "pass_rate": None if self.pass_rate is None else round(self.pass_rate, 4),
            "spend_usd": round(self.spend_usd, 4),
            "stopped": self.stopped,
        }


def spec_rounds(ledger: Ledger) -> list[SpecRounds]:
    """
    Per spec: rounds, designs made, passing, spend and why it stopped.

    :param ledger: the campaign run's ledger.
    """
    if not ledger.rounds:
        return []
    last = ledger.rounds[-1]
    share: dict[str, float] = {}
    for record in ledger.rounds:
        added = sum(record.new.values())
        for spec, n in record.new.items():
            share[spec] = share.get(spec, 0.0) + (record.spend_usd * n / added if added else 0.0)
    return [
        SpecRounds(
            spec=spec,
            rounds=sum(1 for r in ledger.rounds if r.new.get(spec, 0) > 0),
            made=last.made.get(spec, 0),
            passing=last.passing.get(spec, 0),
            spend_usd=share.get(spec, 0.0),
            stopped=ledger.stopped.get(spec, ""),
        )
        for spec in sorted(last.designs)
    ]


def _capped_during(ledger: Ledger, manifest: RunManifest, cap: float, until_passing: int | None) -> NextRound:
    """Why a partial round ended when its spend left too little for another design (else: no reason)."""
    spent = sum(r.spend_usd for r in ledger.rounds)
    if spent + usd_per_design(ledger.rounds) <= cap:
        return NextRound(None, {}, "")
    last = ledger.rounds[-1]
    short = [s.spec for s in manifest.specs if s.missing_shards]
    if until_passing is not None:
        short += [spec for spec, n in last.passing.items() if n < until_passing and spec not in short]
    missing = sorted({shard for s in manifest.specs for shard in s.missing_shards})
    return NextRound(
        None,
        dict.fromkeys(short, CAP),
        f"spend cap: ${spent:.2f} of max_cost_usd ${cap:.2f} spent, so no job started for shards "
        f"{missing}; the results hold the designs committed before",
    )


def next_run_id(campaign_run_id: str, round_number: int) -> str:
    """
    The run id of a round after the first: the same for every try, so a round starts once.

    :param campaign_run_id: the run id of round 1.
    :param round_number: the round.
    """
    return f"round{round_number}__{campaign_run_id}"[:250]


@dataclass(frozen=True)
class ClosedRound:
    """
    A round's outcome, as its report records it.

    :param ledger: the ledger with the round's counts and spend.
    :param summary: the ``rounds`` entry of the run manifest.
    :param next_conf: the conf of the next round's run (None: the campaign run ends here).
    :param next_run_id: that run's id.
    """

    ledger: Ledger
    summary: Mapping[str, Any]
    next_conf: Mapping[str, Any] | None
    next_run_id: str | None


def close_round(
    client: Any,
    layout: Layout,
    campaign: Campaign,
    options: RunOptions,
    *,
    run_id: str,
    manifest: RunManifest,
    conf: Mapping[str, Any],
) -> ClosedRound | None:
    """
    Record a round's designs, passing designs and spend, and size the next round.

    :param client: a boto3 S3 client.
    :param layout: the campaign's layout.
    :param campaign: the campaign with the run's overrides applied.
    :param options: the run's validated params.
    :param run_id: this run's id.
    :param manifest: this run's manifest.
    :param conf: this run's conf (carried into the next round, its round keys replaced).
    :return: None when the run has no ledger (planned before rounds existed).
    """
    campaign_run_id = options.campaign_run_id or run_id
    ledger = read_ledger(client, layout, campaign.name, campaign_run_id)
    planned = next((r for r in ledger.rounds if r.round == options.round), None) if ledger else None
    if ledger is None or planned is None:
        return None
    record = replace(
        planned,
        made={s.spec: s.designs_produced for s in manifest.specs},
        passing={
            spec: passing_designs(client, layout.bucket, attempt)
            for spec, attempt in manifest.filter_attempts.items()
        },
        spend_usd=float(manifest.actual.get("cost_usd", 0.0)),
        results_prefix=manifest.results_prefix,
    )
    ledger = ledger.with_round(record)
    design = campaign.design
    decision = NextRound(None, {}, "")
    if design.until_passing is not None and manifest.complete:
        spent = ledger.spent_before(options.round + 1)
        decision = size_round(
            record,
            until_passing=design.until_passing,
            rounds_left=design.rounds - options.round,
            budget_left=None if design.max_cost_usd is None else design.max_cost_usd - spent,
            usd_per_design=usd_per_design(ledger.rounds),
        )
    elif design.max_cost_usd is not None and not manifest.complete:
        decision = _capped_during(ledger, manifest, design.max_cost_usd, design.until_passing)
    ledger = replace(ledger, stopped=decision.stopped, reason=decision.reason)
    write_ledger(client, layout, campaign.name, ledger)
    summary = {
        "round": options.round,
        "campaign_run_id": campaign_run_id,
        "until_passing": design.until_passing,
        "max_rounds": design.rounds,
        "max_cost_usd": design.max_cost_usd,
        "spent_usd": round(sum(r.spend_usd for r in ledger.rounds), 6),
        "reason": decision.reason,
        "specs": [s.to_json() for s in spec_rounds(ledger)],
    }
    if decision.designs is None:
        return ClosedRound(ledger, summary, None, None)
    next_conf = {
        **conf,
        "round": options.round + 1,
        "designs_per_spec": dict(decision.designs),
        "campaign_run_id": campaign_run_id,
    }
    return ClosedRound(ledger, summary, next_conf, next_run_id(campaign_run_id, options.round + 1))
