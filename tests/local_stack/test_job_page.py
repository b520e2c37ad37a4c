"""The emulator's page of a job (where the stage tasks' extra links point on the local stack)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
from emulator_helpers import job_request, put_script, unique, wait_terminal

from sagemaker_emulator.stack import LocalStack

pytestmark = pytest.mark.stack

FAILING = """
import os, pathlib, sys
print("computing <the> answer", flush=True)
message = pathlib.Path(os.environ["BOLTZGEN_STEP_ROOT"], "output", "message")
message.write_text("step failed: no answer & no luck")
sys.exit(3)
"""


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_a_failed_jobs_page_shows_its_exit_message_and_log(stack: LocalStack, sm: Any, s3: Any) -> None:
    name = unique("page")
    code = put_script(s3, name, FAILING)
    sm.create_processing_job(**job_request(name, code))
    assert wait_terminal(sm, name)["ProcessingJobStatus"] == "Failed"
    status, content_type, page = _get(f"{stack.emulator_url}/_emulator/jobs/{name}")
    assert status == 200 and content_type.startswith("text/html")
    assert f"<strong>{name}</strong>" in page
    assert '<span class="Failed">Failed</span>' in page
    assert "step failed: no answer &amp; no luck" in page  # the exit message, escaped
    assert "computing &lt;the&gt; answer" in page  # the job's own log
    assert "<the>" not in page


def test_an_unknown_or_malformed_job_name_is_refused(stack: LocalStack) -> None:
    status, _, body = _get(f"{stack.emulator_url}/_emulator/jobs/no-such-job")
    assert status == 400 and "no-such-job" in body
    status, _, body = _get(f"{stack.emulator_url}/_emulator/jobs/..%2Fjobs.sqlite")
    assert status == 400 and "not a processing job name" in body
