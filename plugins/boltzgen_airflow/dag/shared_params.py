"""DAG params whose per-operator copies share their JSON schemas (parse time)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from airflow.sdk.definitions.param import ParamsDict

if TYPE_CHECKING:
    from airflow.sdk import DAG


class SharedSchemaParams(ParamsDict):
    """
    A DAG's params whose copies share each param's JSON schema.

    Airflow deep-copies the DAG's params into every operator it builds (``BaseOperator``'s
    ``apply_defaults``). The schemas (form sections, descriptions, enums) are never changed after
    parsing, so copying them for each of a campaign's ~45 operators only costs parse time. A copy
    holds new :class:`~airflow.sdk.Param` objects with their own ``source`` and value, and is a
    plain :class:`ParamsDict`, so operators and their serialization are as before.
    """

    def __deepcopy__(self, memo: dict[int, Any] | None) -> ParamsDict:
        copies = {}
        for key in self:
            param = self.get_param(key)
            # A new Param with the same attributes (the schema shared); ``Param.__copy__`` would
            # re-check the default's JSON for each operator.
            clone = param.__class__.__new__(param.__class__)
            clone.__dict__.update(param.__dict__)
            if isinstance(param.value, (list, dict)):
                clone.value = copy.deepcopy(param.value, memo)
            copies[key] = clone
        return ParamsDict(copies, self.suppress_exception)


def share_param_schemas(dag: DAG) -> None:
    """
    Replace the params of a DAG by a :class:`SharedSchemaParams` holding the same params.

    :param dag: a DAG before its tasks are added.
    """
    shared = SharedSchemaParams({key: dag.params.get_param(key) for key in dag.params})
    # Assigning ``dag.params`` runs the DAG's converter, which makes a plain ParamsDict again.
    object.__setattr__(dag, "params", shared)
