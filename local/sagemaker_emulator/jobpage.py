"""
The emulator's page of one processing job (``GET /_emulator/jobs/<name>``): its description and
its log, what the SageMaker and CloudWatch consoles show for a job on AWS. The stage tasks' extra
links point here on the local stack.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}\Z")
LOG_TAIL_LINES = 500
_STYLE = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2733}"
    "header{background:#16324f;color:#fff;padding:.7rem 1.2rem}main{padding:1rem 1.2rem}"
    "pre{background:#f4f6f8;border:1px solid #dfe3e8;padding:.7rem;overflow:auto;font-size:12px}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{color:#5d6d7e}dd{margin:0}"
    ".Failed,.Stopped{color:#a93226}.Completed{color:#1e6b3a}"
)


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> tuple[str, int]:
    """:param text: a job's log; its last ``lines`` lines and how many were left out."""
    all_lines = text.splitlines()
    return "\n".join(all_lines[-lines:]), max(0, len(all_lines) - lines)


def render_job_page(description: Mapping[str, Any], log_text: str | None) -> str:
    """
    The page of one job.

    :param description: what DescribeProcessingJob returns for it.
    :param log_text: the job's log (None when it has none yet).
    """
    name = html.escape(str(description.get("ProcessingJobName", "")))
    status = html.escape(str(description.get("ProcessingJobStatus", "")))
    facts = [
        ("Status", f'<span class="{status}">{status}</span>'),
        ("Failure reason", html.escape(str(description.get("FailureReason", "")))),
        ("Exit message", html.escape(str(description.get("ExitMessage", "")))),
        ("Instance", html.escape(str(description.get("ProcessingResources", {}).get("ClusterConfig", {})))),
        ("Created", html.escape(str(description.get("CreationTime", "")))),
        ("Started", html.escape(str(description.get("ProcessingStartTime", "")))),
        ("Ended", html.escape(str(description.get("ProcessingEndTime", "")))),
    ]
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts if v)
    if log_text is None:
        log_html = "<p>No log yet.</p>"
    else:
        tail, cut = log_tail(log_text)
        note = f"<p>First {cut} lines left out.</p>" if cut else ""
        log_html = f'{note}<pre id="log">{html.escape(tail)}</pre>'
    body = html.escape(json.dumps(description, indent=2, default=str))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{name} · SageMaker emulator</title><style>{_STYLE}</style></head><body>"
        f"<header>SageMaker emulator · processing job <strong>{name}</strong></header><main>"
        f"<dl>{rows}</dl><h2>Log</h2>{log_html}"
        f'<h2>Description</h2><pre id="description">{body}</pre></main></body></html>'
    )
