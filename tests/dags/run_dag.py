"""
Run a campaign DAG with real Airflow in this process and print the outcome as JSON.

    python run_dag.py test <dag_id> '<conf json>'      one run with ``dag.test()``
    python run_dag.py resume <dag_id> <run_id>          run the tasks of an existing run that are not
                                                        done (e.g. after ``airflow dags clear``) to the end
    python run_dag.py rounds <dag_id> '<conf json>'    one run with ``dag.test()``, then each run it
                                                        triggered (a campaign's next rounds), in order

``resume`` drives the existing run with the same loop ``dag.test()`` uses (it has no way to resume
a run); it clears nothing itself. The environment (AIRFLOW_HOME, the stack,
BOLTZGEN_CAMPAIGNS_DIR) comes from the caller.

The outcome holds every task instance's state, tries, label (rendered map index), start and end,
the error each failed try
raised (what the task log shows as the task's exception) and the run's start and end.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
# "<task_id>[<map_index>]" -> the exception text of each try that raised, in order.
ERRORS: dict[str, list[str]] = {}


def _record_errors() -> None:
    """Keep the exception of every task try that dag.test() and ``resume`` run in this process."""
    from airflow.sdk.definitions import dag as dag_module

    run_task = dag_module._run_task

    def recording(*, ti: Any, task: Any, run_triggerer: bool = False) -> Any:
        result = run_task(ti=ti, task=task, run_triggerer=run_triggerer)
        if result is not None and result.error is not None:
            ERRORS.setdefault(f"{ti.task_id}[{ti.map_index}]", []).append(str(result.error))
        return result

    dag_module._run_task = recording


def _dag(dag_id: str) -> Any:
    namespace = runpy.run_path(str(PROJECT / "dags" / "boltzgen_campaigns.py"))
    return namespace[dag_id]


def _outcome(dag_run: Any, session: Any) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    states = {
        f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in dag_run.get_task_instances(session=session)
    }
    rows = session.execute(
        select(XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value).where(
            XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id
        )
    ).all()
    xcoms = {}
    for task_id, map_index, key, value in rows:
        try:
            xcoms[f"{task_id}[{map_index}]:{key}"] = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            xcoms[f"{task_id}[{map_index}]:{key}"] = value
    times = {
        f"{ti.task_id}[{ti.map_index}]": {
            "try_number": ti.try_number,
            "label": ti.rendered_map_index,
            "start": ti.start_date.isoformat() if ti.start_date else None,
            "end": ti.end_date.isoformat() if ti.end_date else None,
        }
        for ti in dag_run.get_task_instances(session=session)
    }
    return {
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "tis": states,
        "xcoms": xcoms,
        "errors": ERRORS,
        "times": times,
        "run_start": dag_run.start_date.isoformat() if dag_run.start_date else None,
        "run_end": dag_run.end_date.isoformat() if dag_run.end_date else None,
    }


def run_test(dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    from airflow import settings

    dag = _dag(dag_id)
    dag_run = dag.test(run_conf=conf)
    session = settings.Session()
    dag_run = session.merge(dag_run)
    return _outcome(dag_run, session)


def run_resume(dag_id: str, run_id: str) -> dict[str, Any]:
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.sdk import DagRunState, TaskInstanceState, timezone
    from airflow.sdk.definitions import dag as dag_module
    from airflow.serialization.serialized_objects import DagSerialization
    from sqlalchemy import select

    dag = _dag(dag_id)
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    session = settings.Session()
    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    dag_run.dag = scheduler_dag
    if not dag_run.get_task_instances(session=session):
        # A run another run triggered: queued, without task instances until a scheduler makes them.
        dag_run.verify_integrity(session=session, dag_version_id=dag_run.created_dag_version_id)
        session.commit()
    tis = dag_run.get_task_instances(session=session)
    pending = sorted(f"{ti.task_id}[{ti.map_index}]" for ti in tis if ti.state is None)
    dag_run.state = DagRunState.RUNNING
    session.commit()
    # The loop of dag.test(): schedule what is ready, run it in this process, repeat.
    while dag_run.state == DagRunState.RUNNING:
        session.expire_all()
        schedulable, _ = dag_run.update_state(session=session)
        for ti in schedulable:
            if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
            ti.scheduled_dttm = timezone.utcnow()
        session.commit()
        for ti in [
            t for t in dag_run.get_task_instances(session=session) if t.state == TaskInstanceState.SCHEDULED
        ]:
            try:
                dag_module._run_task(ti=ti, task=dag.task_dict[ti.task_id], run_triggerer=True)
            except Exception as err:
                print(f"task {ti.task_id}[{ti.map_index}] raised {err}", file=sys.stderr)
    return {"pending": pending, **_outcome(dag_run, session)}


def run_rounds(dag_id: str, conf: dict[str, Any], limit: int = 10) -> dict[str, Any]:
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.sdk import DagRunState
    from sqlalchemy import select

    runs = [run_test(dag_id, conf)]
    while len(runs) < limit:
        session = settings.Session()
        queued = session.scalars(
            select(DagRun.run_id)
            .where(DagRun.dag_id == dag_id, DagRun.state == DagRunState.QUEUED)
            .order_by(DagRun.id)
        ).first()
        session.close()
        if queued is None:
            break
        runs.append(run_resume(dag_id, queued))
    return {"runs": runs}


def main() -> None:
    mode, dag_id, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    _record_errors()
    if mode == "rounds":
        result = run_rounds(dag_id, json.loads(arg))
    else:
        result = run_test(dag_id, json.loads(arg)) if mode == "test" else run_resume(dag_id, arg)
    print("RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main()
