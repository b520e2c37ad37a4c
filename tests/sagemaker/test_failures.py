"""The task's error for a job that did not complete: SageMaker's reason, the script's and the log's."""

from __future__ import annotations

from boltzgen_airflow.sagemaker.failures import job_failure_text

FAILED = {
    "ProcessingJobStatus": "Failed",
    "FailureReason": "AlgorithmError: See job logs for more information (exit code 1)",
    "ExitMessage": "folding: boltzgen exited 1 for spec a.yaml (CUDA out of memory)\n",
}


def test_the_error_holds_both_reasons_and_the_tail_of_the_log() -> None:
    tail = [f"[job/algo-1] line {i}" for i in range(50)]
    text = job_failure_text("bg-c-fold-s0001-0123456789", FAILED, tail)
    lines = text.splitlines()
    assert lines[0] == "job bg-c-fold-s0001-0123456789 ended Failed"
    assert lines[1] == "FailureReason: AlgorithmError: See job logs for more information (exit code 1)"
    assert lines[2] == "ExitMessage: folding: boltzgen exited 1 for spec a.yaml (CUDA out of memory)"
    assert lines[3] == "last 20 log lines:"
    assert lines[4:] == [f"  [job/algo-1] line {i}" for i in range(30, 50)]


def test_what_the_wait_said_stands_in_for_a_missing_description() -> None:
    text = job_failure_text("bg-x", {}, [], waiter_message="(error) Waiter error: max attempts reached")
    assert text == "job bg-x ended unknown\nwait: (error) Waiter error: max attempts reached"
    stopped = job_failure_text("bg-x", {"ProcessingJobStatus": "Stopped"}, [], waiter_message="(failed) x")
    assert stopped == "job bg-x ended Stopped\nwait: (failed) x"
