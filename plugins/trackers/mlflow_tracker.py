"""MLflow: one MLflow run per ``bench run`` (start or resume), in a SQLite store under the run directory by default.

The spec is logged as parameters, the metrics of each generation and the training curves as metrics with their
steps, the report's figures and ``results.json`` as artifacts (:class:`harness.interfaces.Tracker` says what and
under which names). MLflow's file store (``./mlruns``) is deprecated, so the default store is
``sqlite:///RUN_DIR/mlflow/mlflow.db`` with the artifacts in ``RUN_DIR/mlflow/artifacts``; read it with
``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow/mlflow.db`` or ``mlflow.search_runs``. ``tracking_uri``
sends the runs elsewhere (a tracking server, another database).

The client is used directly (:class:`mlflow.MlflowClient`), so nothing global to MLflow (the active run, the
tracking URI of ``mlflow.log_*``) is changed in the process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pydantic import Field

from harness.interfaces import Options, Param, Tracker

#: MLflow takes at most this many parameters, and this many metrics, in one call.
_PARAMS_PER_CALL = 100
_METRICS_PER_CALL = 1000


class MLflowOptions(Options):
    tracking_uri: str | None = Field(
        None, description="Where the runs go (http://host:5000, sqlite:///path.db, ...); default: a SQLite store "
        "under the run directory, RUN_DIR/mlflow/mlflow.db.")
    experiment: str = Field("bench", min_length=1, description="The MLflow experiment the runs belong to.")


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """MLflow and alembic log INFO lines of their own to stderr when a store is created: keep them at WARNING."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class MLflowTracker(Tracker):
    """Logs a run to MLflow (docs/trackers.md)."""

    Options = MLflowOptions
    library = "mlflow"
    requirements = ("mlflow-skinny>=3.17,<4", "sqlalchemy>=2.0,<3", "alembic>=1.13,<2")

    @classmethod
    def preflight(cls, options: MLflowOptions) -> None:  # type: ignore[override]
        super().preflight(options)
        if options.tracking_uri is None or options.tracking_uri.startswith("sqlite:"):
            for module in ("sqlalchemy", "alembic"):  # MLflow's SQL store needs both
                cls.require(module, *cls.requirements)

    def start(self, *, name: str, params: Mapping[str, Param], run_dir: Path) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param as MLflowParam

        o: MLflowOptions = self.options  # type: ignore[assignment]
        root = (run_dir / "mlflow").resolve()
        uri, artifacts = o.tracking_uri, None
        if uri is None:
            root.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
        with _quiet("mlflow", "alembic"):
            self.client = client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(o.experiment)
            experiment_id = experiment.experiment_id if experiment is not None else \
                client.create_experiment(o.experiment, artifact_location=artifacts)
            run = client.create_run(experiment_id, run_name=name, tags={"bench.run_dir": str(run_dir.resolve())})
        self.run_id = run.info.run_id
        items = [MLflowParam(k, "None" if v is None else str(v)) for k, v in params.items()]
        for start in range(0, len(items), _PARAMS_PER_CALL):
            client.log_batch(self.run_id, params=items[start : start + _PARAMS_PER_CALL])

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), _METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[start : start + _METRICS_PER_CALL])

    def log_files(self, paths: Sequence[Path], *, folder: str) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def finish(self, *, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
