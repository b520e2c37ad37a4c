"""
Reading a campaign file: ``.env`` files beside it, ``${VAR}`` / ``${VAR:default}`` substitution,
validation into a :class:`~boltzgen_airflow.campaign.model.Campaign`, and the instance catalog checks.

Loading never touches the network and is cheap: the DAG processor calls it on every parse.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from boltzgen_airflow.campaign.catalog import load_catalog, stage_instance
from boltzgen_airflow.campaign.model import SPOT_REASON, Campaign, issues_from_validation
from boltzgen_airflow.exceptions import CampaignError, ConfigIssue
from boltzgen_airflow.stages import STAGES

_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Yield (path, container, key) for every mapping key and list entry below ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key)), node, key
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, str(index)), node, index
            yield from _walk(value, (*path, str(index)))


def read_dotenv(path: Path) -> dict[str, str]:
    """
    Read ``KEY=VALUE`` lines (``export`` and quotes allowed, ``#`` comments) from a .env file.

    :param path: the file; a missing file gives an empty mapping.
    """
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\Z", key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key] = value
    return values


def project_root(start: Path) -> Path | None:
    """
    Return the nearest folder at or above ``start`` holding pyproject.toml or .git.

    :param start: where to begin looking.
    """
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return None


def campaign_environment(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    Build the variables a campaign file sees: the project's .env, then the one beside the file, then
    the real environment (which always wins).

    :param path: the campaign file.
    :param environ: the environment (default ``os.environ``).
    """
    env: dict[str, str] = {}
    folder = path.resolve().parent
    root = project_root(folder)
    if root is not None and root != folder:
        env.update(read_dotenv(root / ".env"))
    env.update(read_dotenv(folder / ".env"))
    env.update(os.environ if environ is None else environ)
    return env


def substitute(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """
    Replace ``${VAR}`` and ``${VAR:default}`` in ``text``; ``$$`` stands for a literal ``$``.

    :param text: the string.
    :param env: variables.
    :return: the new string and the names of variables that were missing without a default.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return match.group(0)

    return _VAR_RE.sub(replace, text), missing


def _substitute_tree(
    data: Any, env: Mapping[str, str], file: str, issues: list[ConfigIssue], path: tuple[str, ...] = ()
) -> Any:
    if isinstance(data, dict):
        return {
            key: _substitute_tree(value, env, file, issues, (*path, str(key))) for key, value in data.items()
        }
    if isinstance(data, list):
        return [_substitute_tree(value, env, file, issues, (*path, str(i))) for i, value in enumerate(data)]
    if isinstance(data, str) and "$" in data:
        new, missing = substitute(data, env)
        for name in missing:
            issues.append(
                ConfigIssue(
                    "error",
                    file,
                    ".".join(path),
                    f"environment variable {name} is not set and has no default",
                )
            )
        # A whole-value substitution yields a YAML scalar so ${N:10} can fill an integer field.
        if new != data and _VAR_RE.fullmatch(data.strip()):
            try:
                scalar = yaml.load(new, Loader=_LOADER)  # noqa: S506 - a safe loader
            except yaml.YAMLError:
                return new
            return scalar if isinstance(scalar, (int, float, bool)) or scalar is None else new
        return new
    return data


def _instance_issues(campaign: Campaign, file: str) -> list[ConfigIssue]:
    """Check per-stage instance type overrides against the packaged catalog."""

    catalog = load_catalog()
    issues = []
    for stage in STAGES:
        name = campaign.scaling.stage(stage).instance_type
        if name is not None:
            _, issue = stage_instance(catalog, stage, name, file)
            issues.extend([issue] if issue else [])
    return issues


def parse_campaign(
    data: Any, file: str, environ: Mapping[str, str] | None = None, *, source: Path | None = None
) -> Campaign:
    """
    Validate an already-parsed campaign document.

    :param data: the YAML document.
    :param file: name used in error messages.
    :param environ: variables for ``${VAR}`` substitution (default: none beyond ``os.environ``).
    :param source: the file the document came from (sets ``source_path``).
    :raises CampaignError: listing every issue.
    """
    issues: list[ConfigIssue] = []
    if not isinstance(data, dict):
        raise CampaignError.single(file, "", "a campaign file must be a YAML mapping of settings")
    env = dict(os.environ if environ is None else environ)
    data = _substitute_tree(data, env, file, issues)
    for path, container, key in list(_walk(data)):
        if isinstance(container, dict) and key == "use_spot":
            issues.append(ConfigIssue("error", file, ".".join(path), SPOT_REASON))
            del container[key]
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as err:
        # A field whose variable is missing already has its issue; its placeholder is noise.
        reported = {issue.path for issue in issues}
        issues.extend(i for i in issues_from_validation(err, file) if i.path not in reported)
        raise CampaignError(issues) from None
    campaign.with_source(source)
    issues.extend(_instance_issues(campaign, file))
    root = campaign.specs_root()
    if isinstance(root, Path) and not root.is_dir():
        issues.append(ConfigIssue("error", file, "design.specs", f"specs folder {root} does not exist"))
    if issues:
        raise CampaignError(issues)
    return campaign


def load_campaign(path: str | Path, environ: Mapping[str, str] | None = None) -> Campaign:
    """
    Load and validate a campaign file.

    :param path: the campaign YAML.
    :param environ: the environment for ``${VAR}`` (default ``os.environ``); .env files beside the
        file and at the project root fill in what it lacks.
    :raises CampaignError: listing every issue of the file.
    """
    file_path = Path(path)
    file = str(file_path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CampaignError.single(file, "", f"cannot read campaign file: {err}") from None
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CampaignError.single(file, "", f"invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, RecursionError, OverflowError) as err:
        raise CampaignError.single(file, "", f"invalid YAML: {err}") from None
    env = campaign_environment(file_path, environ)
    return parse_campaign(data, file, env, source=file_path.resolve())


def campaign_files(folder: str | Path) -> list[Path]:
    """
    List the campaign files of a folder (``*.yaml`` and ``*.yml``, not hidden), sorted.

    :param folder: the campaigns folder; a missing folder gives an empty list.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    files = [p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")]
    return sorted(p for p in files if p.is_file())
