"""MLflow for sweeps: one experiment per sweep, a parent run, one child run per trial.

Only the driver writes (SQLite allows one writer). Runs are found again by tags, never held in
memory only, so a restored sweep reopens its runs instead of duplicating them, and a metric step
already logged is not logged twice. Credentials come from MLflow's own environment variables
and are never logged.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from .pareto import mark_front, write_csv, write_png

log = logging.getLogger("dcsweep")
ROLE, SWEEP, TRIAL = "dcsweep.role", "dcsweep.sweep", "dcsweep.trial_id"
PARENT_TAG = "mlflow.parentRunId"
STEPS = {"dense": 0, "pruned": 1, "shared": 2, "final": 3}


class SweepTracker:
    """The MLflow side of one sweep; every method is idempotent across driver restarts."""

    def __init__(self, client: MlflowClient | str, name: str, artifact_root: str | None = None,
                 params: dict[str, Any] | None = None) -> None:
        # a client may come ready-made: a new SQLite store takes a second to create its tables,
        # which the driver spends while Ray starts
        self.client = MlflowClient(client) if isinstance(client, str) else client
        self.name = name
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = f"{artifact_root.rstrip('/')}/{name}" if artifact_root else None  # a URI
            self.experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        parents = self._search(f"tags.`{ROLE}` = 'parent'")
        if parents:  # a resumed sweep: its parent runs again
            self.parent_id = parents[0].info.run_id
            if parents[0].info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")
        else:
            self.parent_id = self.client.create_run(self.experiment_id, run_name=name,
                                                    tags={ROLE: "parent", SWEEP: name}).info.run_id
            self.client.log_batch(self.parent_id, params=[Param(k, _param(v)) for k, v in (params or {}).items()])
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_step: dict[str, int] = {}  # run id -> last metric step logged
        self._status: dict[str, str] = {}  # run id -> status as this driver knows it

    def _search(self, query: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=10_000)

    # -- trials ---------------------------------------------------------------------------
    def trial_run(self, trial_id: str, params: dict[str, Any], run_name: str) -> str:
        """The child run of ``trial_id``: found by its tag (a restored sweep), else created with
        its params. Its status is left as it is."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self._search(f"tags.`{TRIAL}` = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
            self._status[run_id] = found[0].info.status
            history = self.client.get_metric_history(run_id, "accuracy")
            self._last_step[run_id] = max((m.step for m in history), default=-1)
            missing = {k: v for k, v in params.items() if k not in found[0].data.params}
            if missing:  # created just before MLflow went away: its params never arrived
                self.client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in missing.items()])
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags={
                PARENT_TAG: self.parent_id, ROLE: "child", SWEEP: self.name, TRIAL: trial_id}).info.run_id
            self.client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in params.items()])
            self._last_step[run_id], self._status[run_id] = -1, "RUNNING"
        self._runs[trial_id] = run_id
        return run_id

    def finished(self, trial_id: str) -> bool:
        return self._status.get(self._runs.get(trial_id, ""), "") == "FINISHED"

    def reopen(self, trial_id: str) -> None:
        """A trial runs again (a retry, a resumed sweep): its run is RUNNING unless it finished."""
        run_id = self._runs[trial_id]
        if self._status[run_id] not in ("RUNNING", "FINISHED"):
            self.client.update_run(run_id, status="RUNNING")
            self._status[run_id] = "RUNNING"

    def log_phase(self, trial_id: str, phase: str, metrics: dict[str, float]) -> None:
        """Metrics of one finished phase at step 0 (dense) .. 3 (final); a step already logged
        (a resumed trial redoing a phase) is skipped."""
        run_id = self._runs[trial_id]
        step = STEPS[phase]
        if step <= self._last_step.get(run_id, -1) or self.finished(trial_id):
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self.client.log_batch(run_id, metrics=batch)
        self._last_step[run_id] = step

    def finish_trial(self, trial_id: str, result: dict[str, Any], files: dict[str, Path]) -> None:
        run_id = self._runs[trial_id]
        if self.finished(trial_id):  # logged before a restart: never touched again
            return
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "layers.json"
            table.write_text(json.dumps(result.get("layers", []), indent=1))
            self.client.log_artifact(run_id, str(table))
            for path in files.values():
                if path.is_dir():
                    self.client.log_artifacts(run_id, str(path), path.name)
                elif path.is_file():
                    self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")
        self._status[run_id] = "FINISHED"
        self.update_pareto(artifacts=False)  # tags now; the parent's csv/png at the end

    def fail_trial(self, trial_id: str, error: str) -> None:
        run_id = self._runs.get(trial_id)
        if run_id is None or self.finished(trial_id):
            return
        self.client.set_tag(run_id, "error", error[-4000:])
        self.client.set_terminated(run_id, "FAILED")
        self._status[run_id] = "FAILED"

    def finish(self, status: str = "FINISHED") -> None:
        for run in self._search(f"tags.`{ROLE}` = 'child' and attributes.status = 'RUNNING'"):
            self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.set_terminated(self.parent_id, status)

    # -- Pareto -----------------------------------------------------------------------------
    def trials(self) -> list[dict[str, Any]]:
        return read_trials(self.client, self.experiment_id)

    def update_pareto(self, artifacts: bool = True) -> list[dict[str, Any]]:
        """Set every child's ``pareto_optimal`` tag; with ``artifacts``, log pareto.csv/png on
        the parent."""
        trials = self.trials()
        for t in trials:
            if t["tags"].get("pareto_optimal") != str(t["pareto_optimal"]).lower():
                self.client.set_tag(t["run_id"], "pareto_optimal", str(t["pareto_optimal"]).lower())
        if trials and artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                self.client.log_artifact(self.parent_id, str(write_csv(Path(tmp) / "pareto.csv", trials)))
                png = write_png(Path(tmp) / "pareto.png", trials, f"{self.name}: accuracy vs size")
                self.client.log_artifact(self.parent_id, str(png))
        return trials


def read_trials(client: Any, experiment_id: str) -> list[dict[str, Any]]:
    """Finished child runs with their params, accuracy, size and Pareto flag (recomputed)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'child'", max_results=10_000)
    trials = []
    for run in runs:
        m = run.data.metrics
        if run.info.status != "FINISHED" or "accuracy" not in m or "compressed_bytes" not in m:
            continue
        trials.append({"run_id": run.info.run_id, "params": dict(run.data.params), "accuracy": m["accuracy"],
                       "compressed_bytes": int(m["compressed_bytes"]), "ratio": m.get("compression_ratio"),
                       "tags": dict(run.data.tags)})
    return mark_front(trials)


def _param(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
