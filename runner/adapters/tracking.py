"""MLflow for sweeps: one experiment per sweep, a parent run, one child run per trial.

Only the driver writes (SQLite allows one writer). Runs are found again by tags, never held in
memory only, so a restored sweep reopens its runs instead of duplicating them, and a metric step
already logged is not logged twice. Credentials come from MLflow's own environment variables
and are never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dcsweep.runner.cycle import FINAL, PHASES, STEPS, ConfigError, CycleResult, Report, Trial
from dcsweep.runner.cycle.pareto import Front, hypervolume, mark_front, write_csv, write_png
from dcsweep.runner.cycle.results import RATIO_METRIC
from dcsweep.runner.cycle.run import SENSITIVITY_DIR

from . import pyfunc

log = logging.getLogger("dcsweep")
ROLE, SWEEP, TRIAL = "dcsweep.role", "dcsweep.sweep", "dcsweep.trial_id"
STAGE_TAG = "dcsweep.stage"  # dcsweep.stage.pruned = the key of the pruned stage a trial used
WORLD_SIZE_TAG = "dcsweep.world_size"  # how many Ray Train workers ran a multi-worker trial
#: Child param: the layers a start from given weights left at their initialisation.
REINITIALISED_PARAM = "pretrained_reinitialised"
PARENT_TAG = "mlflow.parentRunId"
PARETO_TAG = "pareto_optimal"
PYFUNC_TAG = "dcsweep.model"  # on a child run: the id of the MLflow model it logged (its output, `model`)
#: Runs asked of MLflow per call; every search pages through all of them.
PAGE_SIZE = 1000


class SweepTracker:
    """The MLflow side of one sweep; every method is idempotent across driver restarts."""

    def __init__(self, client: MlflowClient | str, name: str, artifact_root: str | None = None,
                 params: dict[str, Any] | None = None, new: bool = False) -> None:
        # a client may come ready-made: a new SQLite store takes a second to create its tables,
        # which the driver spends while Ray starts
        self.client = MlflowClient(client) if isinstance(client, str) else client
        self.name = name
        self.stopped_by: str | None = None  # a resumed sweep's error from when it last stopped
        exp = self.client.get_experiment_by_name(name)
        if new and exp is not None:  # another storage's sweep, or a user's: its runs would be taken over
            raise ConfigError(f"the tracking store already has an experiment named {name!r} (id {exp.experiment_id}, "
                              f"{exp.lifecycle_stage}); a new sweep needs its own: give another --name, or "
                              f"`dcsweep resume {name}` with the storage that sweep ran in")
        if new and self._registered(name):  # its versions and `best` alias would be taken over
            raise ConfigError(f"the tracking store already has a registered model named {name!r}, not made by this "
                              f"sweep; a new sweep registers its front under its own name: give another --name")
        if exp is None:
            location = f"{artifact_root.rstrip('/')}/{name}" if artifact_root else None  # a URI
            self.experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        parents = self._search(f"tags.`{ROLE}` = 'parent'")
        # a parent made here has no child runs but those this driver makes: a trial's run is
        # then looked up only after an attempt to make it (a search a trial, growing with them)
        self._fresh = not parents
        self._attempted: set[str] = set()  # trial ids whose run this driver tried to create
        if parents:  # a resumed sweep: its parent runs again
            self.parent_id = parents[0].info.run_id
            if parents[0].info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")
                if "error" in parents[0].data.tags:  # why it stopped last time
                    self.stopped_by = parents[0].data.tags["error"]
                    self.client.delete_tag(self.parent_id, "error")
        else:
            self.parent_id = self.client.create_run(self.experiment_id, run_name=name,
                                                    tags={ROLE: "parent", SWEEP: name}).info.run_id
            self.client.log_batch(self.parent_id, params=[Param(k, _param(v)) for k, v in (params or {}).items()])
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, set[int]] = {}  # run id -> metric steps logged (a resumed trial can skip some)
        # run id -> step -> (metrics, tags) held back to go with the run's next call (see log_phase)
        self._held: dict[str, dict[int, tuple[list[Metric], list[RunTag]]]] = {}
        self._held_since: dict[str, float] = {}  # run id -> monotonic time its oldest held step came
        self._status: dict[str, str] = {}  # run id -> status as this driver knows it
        self._front: Front | None = None  # run id -> (val accuracy, bytes) of the runs on the front
        self._tables: set[str] = set()  # sensitivity tables logged on the parent by this driver
        self._logged_parent: dict[str, set[int]] = {}  # parent metric -> its steps (see _parent_steps)
        self._finished_count = 0  # finished trials: the step of the front's summary
        self._reference: float | None = None  # the dense model's bytes: the hypervolume's reference point
        self._best = _Best()  # the parent's summary of every finished trial, kept as they finish
        self.swept: tuple[str, ...] = ()  # the settings the space sweeps: pareto.csv's first columns
        self.registered: dict[str, int] = {}  # alias -> version of the registered front, once made

    def describe(self, text: str) -> None:
        """The experiment's description in the UI (its note): the space's."""
        if text.strip():
            self.client.set_experiment_tag(self.experiment_id, "mlflow.note.content", text.strip())

    def _registered(self, name: str) -> bool:
        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def _search(self, query: str) -> list[Run]:
        return list(search_all(self.client, self.experiment_id, query))

    # -- trials ---------------------------------------------------------------------------
    def trial_run(self, trial_id: str, params: dict[str, Any], run_name: str) -> str:
        """The child run of ``trial_id``: found by its tag (a restored sweep), else created with
        its params. Its status is left as it is."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        unseen = self._fresh and trial_id not in self._attempted
        found = [] if unseen else self._search(f"tags.`{TRIAL}` = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
            self._status[run_id] = found[0].info.status
            history = self.client.get_metric_history(run_id, "accuracy")
            self._logged[run_id] = {m.step for m in history}
            missing = {k: v for k, v in params.items() if k not in found[0].data.params}
            if missing:  # created just before MLflow went away: its params never arrived
                self.client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in missing.items()])
        else:
            self._attempted.add(trial_id)
            run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags={
                PARENT_TAG: self.parent_id, ROLE: "child", SWEEP: self.name, TRIAL: trial_id}).info.run_id
            self.client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in params.items()])
            self._logged[run_id], self._status[run_id] = set(), "RUNNING"
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
            with contextlib.suppress(MlflowException):  # the last attempt's error, if it has one
                self.client.delete_tag(run_id, "error")

    def log_phase(self, trial_id: str, phase: str, metrics: Mapping[str, float],
                  stages: Mapping[str, tuple[str, bool]] | None = None, hold: bool = False,
                  recomputed: Mapping[str, str] | None = None, world_size: int | None = None) -> None:
        """Metrics of one finished phase at step 0 (dense) .. 3 (final), and the keys of the
        stages the trial used so far as tags (``dcsweep.stage.<phase>``, with ``...reused``, and
        ``...recomputed`` = the damage found when a stored stage was set aside and computed again),
        and for a multi-worker trial ``dcsweep.world_size``, the workers that ran it;
        a step already logged (a resumed trial redoing a phase) is skipped.

        With ``hold`` the batch waits to go with the run's next call (its next phase, its end,
        or :meth:`flush` after ``max_hold`` seconds): a phase taken from the stages comes a few
        milliseconds before the next, and the final phase just before the trial's artifacts, so
        a trial costs one MLflow call where it cost four (each 10-20 ms on SQLite, a round trip
        on a server). Nothing held is lost with a killed driver: a trial's end logs every step
        its run lacks from the trial's result (:meth:`finish_trial`), and a resumed sweep's end
        those of unfinished trials from Tune's rows (``sync_results``)."""
        run_id = self._runs[trial_id]
        step = STEPS[phase]
        held = self._held.setdefault(run_id, {})
        if step in self._logged.setdefault(run_id, set()) or step in held or self.finished(trial_id):
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        tags = [RunTag(f"{STAGE_TAG}.{p}", key) for p, (key, _) in (stages or {}).items()]
        tags += [RunTag(f"{STAGE_TAG}.{p}.reused", str(reused).lower()) for p, (_, reused) in (stages or {}).items()]
        tags += [RunTag(f"{STAGE_TAG}.{p}.recomputed", why) for p, why in (recomputed or {}).items()]
        tags += [RunTag(WORLD_SIZE_TAG, str(world_size))] if world_size else []
        held[step] = (batch, tags)
        self._held_since.setdefault(run_id, time.monotonic())
        if not hold:
            self._send(run_id)

    def flush(self, max_hold: float = 0.0) -> None:
        """Send every held batch that has waited ``max_hold`` seconds or more."""
        now = time.monotonic()
        for run_id, since in list(self._held_since.items()):
            if now - since >= max_hold:
                self._send(run_id)

    def _send(self, run_id: str, metrics: list[Metric] | None = None, tags: list[RunTag] | None = None) -> None:
        """The run's held batches with ``metrics`` and ``tags`` in one call (a tag given twice:
        its latest value)."""
        held = self._held.pop(run_id, {})
        self._held_since.pop(run_id, None)
        every = [m for step in sorted(held) for m in held[step][0]] + list(metrics or [])
        latest = {t.key: t for step in sorted(held) for t in held[step][1]}
        latest.update({t.key: t for t in tags or []})
        if every or latest:
            self.client.log_batch(run_id, metrics=every, tags=list(latest.values()))
        if held:
            self._logged.setdefault(run_id, set()).update(held)

    def log_stage_totals(self, computed: int, reused: int, seconds_saved: float) -> None:
        """On the parent: stages this sweep's trials computed and took from others (or from
        earlier sweeps), and the trial-seconds that taking them saved; at step = finished
        trials, once (a resumed sweep that ends with as many logs nothing new)."""
        step = self._finished_count
        if step in self._parent_steps("stages_computed"):
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[
            Metric("stages_computed", computed, now, step), Metric("stages_reused", reused, now, step),
            Metric("trial_seconds_saved", seconds_saved, now, step)])
        self._parent_steps("stages_computed").add(step)

    def _parent_steps(self, key: str) -> set[int]:
        """The steps the parent has of metric ``key``: read from MLflow once per driver (a
        resumed sweep's earlier drivers logged some), then kept here as this one logs more."""
        if key not in self._logged_parent:
            self._logged_parent[key] = {m.step for m in self.client.get_metric_history(self.parent_id, key)}
        return self._logged_parent[key]

    def finish_trial(self, trial_id: str, result: CycleResult | None, files: Mapping[str, Path]) -> None:
        run_id = self._runs[trial_id]
        if self.finished(trial_id):  # logged before a restart: never touched again
            return
        allocation = dict(result.allocation) if result else {}
        tags: list[RunTag] = []  # sent with the final metrics held back by log_phase, in one call
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "layers.json"
            layers = [dict(row) for row in result.encoded.layers] if result and result.encoded else []
            for row in layers:  # an allocated run: what the allocator chose for each layer
                chosen = allocation.get(str(row["name"]).removesuffix(".weight"))
                if chosen is not None:
                    row["allocated"] = dict(chosen)
            table.write_text(json.dumps(layers, indent=1))
            self.client.log_artifact(run_id, str(table))
            for path in files.values():
                if path.is_dir():
                    self.client.log_artifacts(run_id, str(path), path.name)
                elif path.is_file():
                    self.client.log_artifact(run_id, str(path))
                    if path.suffix == ".dcz":  # and as an MLflow model that decodes it
                        model_id = pyfunc.log_model(self.client, self.experiment_id, run_id, path, Path(tmp))
                        tags.append(RunTag(PYFUNC_TAG, model_id))
        if result and allocation:
            self._log_allocation(run_id, result, files)
        if result and result.start:  # the layers the start's weights could not give, "none" when all fit
            reinitialised = ",".join(result.start.get("reinitialised", [])) or "none"
            self.client.log_batch(run_id, params=[Param(REINITIALISED_PARAM, reinitialised)])
        have = self._logged.get(run_id, set()) | set(self._held.get(run_id, {}))
        if result is not None:  # steps MLflow lacks (held when an earlier driver died): from the result
            for phase in (*(p for p in PHASES if p in result.accuracy), FINAL):
                if STEPS[phase] not in have:
                    report = Report.from_metrics((result if phase == FINAL else result.as_of(phase)).metrics(phase))
                    self.log_phase(trial_id, phase, report.numbers, report.stages, hold=True,
                                   recomputed=report.recomputed)
        self._join_front(run_id, result, tags)  # tags now; the parent's csv/png at the end

    def _log_allocation(self, run_id: str, result: CycleResult, files: Mapping[str, Path]) -> None:
        """An allocated trial's choice as params, one per layer (``allocation.<layer>``), and the
        sensitivity table it chose from on the parent, once per table."""
        params = {f"allocation.{name}": f"sparsity={v['sparsity']:g} k={v['k']}" for name, v in
                  result.allocation.items()}
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])  # same values on a rerun
        key = str(result.allocation_predicted.get("table", ""))
        folder = next((p / SENSITIVITY_DIR for p in files.values() if (p / SENSITIVITY_DIR).is_dir()), None)
        if key and folder is not None and key not in self._tables:
            self.client.log_artifacts(self.parent_id, str(folder), f"sensitivity/{key}")
            self._tables.add(key)

    def _join_front(self, run_id: str, result: CycleResult | None, tags: list[RunTag]) -> None:
        """End a newly finished run with its held metrics, ``tags`` and its Pareto flag in one
        call, and flag the runs it pushes off the front. The finished runs are read from MLflow
        once per driver; after that each trial costs a look at the front and a tag or two for
        others, however many trials the sweep has. Then the front's summary on the parent."""
        if self._front is None or result is None or result.encoded is None:
            self._end(run_id, tags=tags)
            self.update_pareto(artifacts=False)
            return
        self._finished_count += 1
        self._reference = float(result.encoded.dense_bytes)
        final = result.metrics(FINAL)
        self._best.add(final.get("val_accuracy"), final.get("val_accuracy_dense"), final.get(RATIO_METRIC))
        point = None if final.get("val_accuracy") is None else (  # from before the validation split: never on it
            float(final["val_accuracy"]), int(final["compressed_bytes"]))
        optimal, off = self._front.add(run_id, point) if point is not None else (False, [])
        for other in off:
            self._flag(other, False)
        metrics, flags = self._flag_batch(optimal)
        self._end(run_id, metrics, [*tags, *flags])
        self._log_summary()

    def _end(self, run_id: str, metrics: list[Metric] | None = None, tags: list[RunTag] | None = None) -> None:
        self._send(run_id, metrics, tags)
        self.client.set_terminated(run_id, "FINISHED")
        self._status[run_id] = "FINISHED"

    def _flag_batch(self, optimal: bool) -> tuple[list[Metric], list[RunTag]]:
        """``pareto_optimal`` as a tag (to filter by) and a 0/1 metric (to colour charts by), at
        step = the sweep's finished trials: a run joins the front at its own finish and leaves
        it at a later one, so its history says when, one value a step."""
        now = int(time.time() * 1000)
        return ([Metric(PARETO_TAG, float(optimal), now, self._finished_count)],
                [RunTag(PARETO_TAG, str(optimal).lower())])

    def _flag(self, run_id: str, optimal: bool) -> None:
        metrics, tags = self._flag_batch(optimal)
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def _log_summary(self) -> None:
        """``hypervolume`` (of the front on validation accuracy and bytes, reference point
        accuracy 0 at the dense model's bytes, as a share of that rectangle: see
        :func:`~dcsweep.runner.cycle.pareto.hypervolume`) and ``front_size`` on the parent, at
        step = finished trials: one number per sweep to compare sweeps by, charted as it grows."""
        if self._front is None or not self._reference:
            return
        now, step = int(time.time() * 1000), self._finished_count
        if step in self._parent_steps("trials"):  # the end of a sweep, or a resume, with no trial finished since
            return
        volume = hypervolume(list(self._front.points.values()), self._reference)
        summary = {"hypervolume": volume, "front_size": len(self._front.points), "trials": step, **self._best.metrics()}
        self.client.log_batch(self.parent_id, metrics=[Metric(k, v, now, step) for k, v in summary.items()])
        self._parent_steps("trials").add(step)

    def fail_trial(self, trial_id: str, error: str) -> None:
        run_id = self._runs.get(trial_id)
        if run_id is None or self.finished(trial_id):
            return
        self._send(run_id, tags=[RunTag("error", error[-4000:])])
        self.client.set_terminated(run_id, "FAILED")
        self._status[run_id] = "FAILED"

    def finish(self, status: str = "FINISHED", children: str = "KILLED", error: str | None = None) -> None:
        """End the parent with ``status`` and any child still RUNNING with ``children`` (and an
        ``error`` tag when given); a resumed sweep reopens them."""
        with contextlib.suppress(MlflowException):  # what was held back, if MLflow takes it
            self.flush()
        for run in self._search(f"tags.`{ROLE}` = 'child' and attributes.status = 'RUNNING'"):
            if error:
                self.client.set_tag(run.info.run_id, "error", error[-4000:])
            self.client.set_terminated(run.info.run_id, children)
        if error:
            self.client.set_tag(self.parent_id, "error", error[-4000:])
        self.client.set_terminated(self.parent_id, status)

    # -- Pareto -----------------------------------------------------------------------------
    def update_pareto(self, artifacts: bool = True) -> list[Trial]:
        """Set every child's ``pareto_optimal`` tag; with ``artifacts``, log pareto.csv/png on
        the parent. Returns the trials, front marked."""
        rows = list(_finished(self.client, self.experiment_id))
        tags = {trial.run_id: run.data.tags.get(PARETO_TAG) for run, trial in rows}
        trials = mark_front([trial for _, trial in rows])
        self._best = _Best()
        for run, _ in rows:
            m = run.data.metrics
            self._best.add(m.get("val_accuracy"), m.get("val_accuracy_dense"), m.get(RATIO_METRIC))
        models = {run.info.run_id: run.data.tags[PYFUNC_TAG] for run, _ in rows if PYFUNC_TAG in run.data.tags}
        self._front = Front({t.run_id: (t.val_accuracy, t.compressed_bytes) for t in trials
                             if t.pareto_optimal and t.run_id and t.val_accuracy is not None})
        self._finished_count = len(trials)
        self._reference = next((t.ratio * t.compressed_bytes for t in trials if t.ratio), self._reference)
        self._log_summary()
        for t in trials:
            if tags[t.run_id] != str(t.pareto_optimal).lower() and t.run_id is not None:
                self._flag(t.run_id, t.pareto_optimal)
        if trials and artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                csv = write_csv(Path(tmp) / "pareto.csv", trials, first=self.swept)
                self.client.log_artifact(self.parent_id, str(csv))
                png = write_png(Path(tmp) / "pareto.png", trials, f"{self.name}: accuracy vs size",
                                self._best.dense_val_accuracy, self._reference)
                self.client.log_artifact(self.parent_id, str(png))
            front = [t for t in trials if t.pareto_optimal and t.run_id in models]
            try:
                self.registered = pyfunc.register_front(self.client, self.name, front, models,
                                                        self._best.dense_val_accuracy)
            except MlflowException as exc:  # the runs, tags and front stand without it
                log.warning("registering the front of %s as a model failed: %s", self.name, exc)
        return trials


class _Best:
    """The parent's summary, kept as trials finish: the best validation accuracy, and the
    largest ratio of a trial within one point of the dense model's validation accuracy."""

    def __init__(self) -> None:
        self.val_accuracy: float | None = None
        self.ratio_within_1pt: float | None = None
        self.dense_val_accuracy: float | None = None  # the same for every trial of a sweep

    def add(self, val_accuracy: float | None, dense_val_accuracy: float | None, ratio: float | None) -> None:
        if dense_val_accuracy is not None:
            self.dense_val_accuracy = dense_val_accuracy
        if val_accuracy is None:
            return
        self.val_accuracy = max(val_accuracy, self.val_accuracy or 0.0)
        within = dense_val_accuracy is not None and val_accuracy >= dense_val_accuracy - pyfunc.WITHIN_1PT
        if within and ratio:
            self.ratio_within_1pt = max(ratio, self.ratio_within_1pt or 0.0)

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in (("best_val_accuracy", self.val_accuracy),
                                  ("best_ratio_within_1pt", self.ratio_within_1pt)) if v is not None}


def open_client(tracking_uri: str) -> MlflowClient:
    """A client of the store. A new SQLite store is made from a copy of an empty one that this
    MLflow version made before, kept in the user's cache (``$XDG_CACHE_HOME/dcsweep``): making
    its tables runs MLflow's schema migrations, 2-3 s of CPU at every new sweep storage, where
    the copy takes milliseconds. MLflow checks the copy's schema as it opens any store; a copy
    it refuses is removed and the store made anew."""
    new = _new_sqlite_file(tracking_uri)
    template = _template()
    if new is None or template is None:
        return MlflowClient(tracking_uri)
    if _is_store(template) and _copy_whole(template, new):
        try:
            return MlflowClient(tracking_uri)
        except Exception as exc:  # noqa: BLE001 - a template MLflow refuses: make the store anew
            log.warning("the cached empty MLflow store %s was refused (%s); creating the tables instead",
                        template, str(exc).splitlines()[0][:200])
            new.unlink(missing_ok=True)
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            with contextlib.suppress(Exception):  # MLflow keeps one engine per URI: not that file's
                SqlAlchemyStore._engine_map.pop(tracking_uri).dispose()
    client = MlflowClient(tracking_uri)
    _copy_whole(new, template)  # still empty: the template of the next new store
    return client


def _new_sqlite_file(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store that does not exist yet (None for anything else)."""
    if not tracking_uri.startswith("sqlite:///") or "?" in tracking_uri:
        return None
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    return None if path.exists() or not path.parent.is_dir() else path


def _template() -> Path | None:
    import mlflow

    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    if not Path(cache).is_absolute():  # the XDG rule: a relative value is invalid, ignore it
        return None
    return Path(cache) / "dcsweep" / f"mlflow-{mlflow.__version__}-empty.db"


def _is_store(path: Path) -> bool:
    """Whether ``path`` is a whole SQLite file with MLflow's tables (checked before copying it:
    MLflow would keep a connection to a file it refused)."""
    import sqlite3

    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return db.execute("PRAGMA quick_check").fetchone() == ("ok",) and {
                "alembic_version", "experiments", "runs"} <= tables
    except sqlite3.Error:
        return False


def _copy_whole(source: Path, target: Path) -> bool:
    """``source`` copied to ``target`` under a temporary name and renamed into place, so no
    reader ever sees part of it; False (and nothing left) when the copy fails."""
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, part)
        os.replace(part, target)
        return True
    except OSError:
        part.unlink(missing_ok=True)
        return False


def search_all(client: MlflowClient, experiment_id: str, query: str) -> Iterator[Run]:
    """Every run that matches, a page at a time: a sweep may hold any number of trials."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=PAGE_SIZE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _finished(client: MlflowClient, experiment_id: str) -> Iterator[tuple[Run, Trial]]:
    for run in search_all(client, experiment_id, f"tags.`{ROLE}` = 'child'"):
        m = run.data.metrics
        if run.info.status != "FINISHED" or "accuracy" not in m or "compressed_bytes" not in m:
            continue
        yield run, Trial(run.info.run_id, dict(run.data.params), m["accuracy"], int(m["compressed_bytes"]),
                         m.get(RATIO_METRIC), m.get("val_accuracy"))


def read_trials(client: MlflowClient, experiment_id: str) -> list[Trial]:
    """Finished child runs with their params, test and validation accuracy, size and Pareto
    flag (recomputed on validation accuracy)."""
    return mark_front([trial for _, trial in _finished(client, experiment_id)])


def sweep_trials(tracking_uri: str, name: str) -> list[Trial]:
    """``dcsweep pareto NAME``: the sweep's trials from its MLflow store. ConfigError when the
    store holds no such sweep, naming the ones it holds."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise ConfigError(f"no sweep named {name!r} in {tracking_uri}; sweeps there: {names}")
    return read_trials(client, experiment.experiment_id)


def _param(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
