"""Fault injection by job-name pattern, kept in ``faults.json`` in the state directory.

Tests change the rules at runtime, either through the admin endpoint (``/_emulator/faults``) or by
writing the file; the emulator reads it on every CreateProcessingJob.

A rule::

    {"pattern": "design-*",          # glob, or "re:<regex>" (re.search)
     "action": "fail",                # fail | stop | delay | throttle | quota
     "seconds": 2,                    # delay: wait before starting; stop/fail: run this long first
     "times": 1,                      # optional: apply to the first N matching jobs only
     "exit_code": 3, "message": "..."}

A ``fail`` rule ends the job as a failing container does: its message is the job's ExitMessage
(``/opt/ml/output/message``) and its last line in the job's log.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CREATE_ACTIONS = ("throttle", "quota")
RUN_ACTIONS = ("fail", "stop", "delay")


@dataclass
class FaultRule:
    """One fault to inject into the jobs whose name matches ``pattern``."""

    pattern: str
    action: str
    seconds: float = 0.0
    times: int | None = None
    exit_code: int = 1
    message: str = ""

    def matches(self, job_name: str) -> bool:
        """:param job_name: the processing job name."""
        if self.pattern.startswith("re:"):
            return re.search(self.pattern[3:], job_name) is not None
        return fnmatch.fnmatchcase(job_name, self.pattern)


def parse_rules(raw: Any) -> list[FaultRule]:
    """
    Turn JSON rules into :class:`FaultRule` objects, naming the bad field when one is invalid.

    :param raw: a list of rule objects (or ``{"rules": [...]}``).
    """
    if isinstance(raw, dict) and "rules" in raw:
        raw = raw["rules"]
    if not isinstance(raw, list):
        raise ValueError("fault rules must be a JSON list of objects")
    rules = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"fault rule {i} must be an object, got {item!r}")
        unknown = set(item) - set(FaultRule.__dataclass_fields__)
        if unknown:
            raise ValueError(f"fault rule {i}: unknown field(s) {sorted(unknown)}")
        if not isinstance(item.get("pattern"), str) or not item["pattern"]:
            raise ValueError(f"fault rule {i}: 'pattern' must be a non-empty string")
        if item.get("action") not in CREATE_ACTIONS + RUN_ACTIONS:
            raise ValueError(
                f"fault rule {i}: 'action' must be one of {list(CREATE_ACTIONS + RUN_ACTIONS)}, "
                f"got {item.get('action')!r}"
            )
        if item["pattern"].startswith("re:"):
            try:
                re.compile(item["pattern"][3:])
            except re.error as exc:
                raise ValueError(f"fault rule {i}: invalid regex {item['pattern'][3:]!r}: {exc}") from exc
        times = item.get("times")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError(f"fault rule {i}: 'times' must be a positive integer, got {times!r}")
        rules.append(FaultRule(**item))
    return rules


class FaultBook:
    """
    The fault rules of one emulator, persisted in a JSON file.

    :param path: the rules file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def rules(self) -> list[FaultRule]:
        """The current rules (none when the file is absent)."""
        with self._lock:
            return self._load()

    def set_rules(self, rules: list[FaultRule]) -> None:
        """:param rules: the rules that replace the current ones."""
        with self._lock:
            self._save(rules)

    def take(self, job_name: str, actions: tuple[str, ...]) -> list[FaultRule]:
        """
        Return the rules among ``actions`` that apply to a job, using up one of their ``times``.

        :param job_name: the processing job name.
        :param actions: the kinds of fault the caller can inject at this point.
        """
        with self._lock:
            rules = self._load()
            taken: list[FaultRule] = []
            kept: list[FaultRule] = []
            for rule in rules:
                if rule.action in actions and rule.matches(job_name):
                    taken.append(FaultRule(**asdict(rule)))
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times == 0:
                            continue
                kept.append(rule)
            if taken:
                self._save(kept)
            return taken

    def _load(self) -> list[FaultRule]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        if not text.strip():
            return []
        try:
            return parse_rules(json.loads(text))
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from exc

    def _save(self, rules: list[FaultRule]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in rules], indent=2), encoding="utf-8")
        tmp.replace(self.path)
