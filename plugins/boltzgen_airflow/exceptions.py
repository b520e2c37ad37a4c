"""Validation findings and the exception that carries them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ConfigIssue:
    """
    One finding about a campaign or spec file.

    :param severity: "error" stops the campaign; "warning" is reported only.
    :param file: the file the finding is about.
    :param path: dotted location inside the file, e.g. ``design.num_designs`` ("" for the whole file).
    :param message: what is wrong and, where it helps, how to fix it.
    """

    severity: Literal["error", "warning"]
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        location = f"{self.file}: {self.path}" if self.path else self.file
        prefix = "" if self.severity == "error" else "warning: "
        return f"{location}: {prefix}{self.message}"


class CampaignError(Exception):
    """A campaign (or what it references) is invalid; ``issues`` lists every finding."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        if not self.issues:
            return "invalid campaign"
        return "\n".join(str(issue) for issue in self.issues)

    @classmethod
    def single(cls, file: str, path: str, message: str) -> CampaignError:
        """
        Build an error with one finding.

        :param file: the file at fault.
        :param path: dotted location inside the file.
        :param message: what is wrong.
        """
        return cls([ConfigIssue("error", file, path, message)])


class CommitError(RuntimeError):
    """An attempt cannot be committed; the message says why."""


class JobRequestError(ValueError):
    """A value that would reach SageMaker is invalid; the message names it."""


class UnknownInstanceTypeError(KeyError):
    """An instance type that the catalog does not list."""

    def __str__(self) -> str:
        return str(self.args[0])


class ReportInputError(ValueError):
    """The manifest or a metrics file does not have the shape the report needs."""


class RunStateError(RuntimeError):
    """A run's state in S3 is missing or inconsistent (a descriptor, the shard list)."""


class SpendCapReached(RuntimeError):
    """A job would take a campaign run's spend past its ``max_cost_usd``; no job was started."""
