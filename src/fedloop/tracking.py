"""Experiment tracking ([tracking]): observers that copy a run into the tools ML teams already use, beside its own
files. Every round's numeric metrics go to each backend with the round as the step; the config goes as params (or
text); the final model, summary and plots as artifacts.

  csv          RUN_DIR/metrics.csv, one row per completed round (rewritten from metrics.jsonl, so a resumed run's is
               whole)
  tensorboard  event files in RUN_DIR/tensorboard (torch.utils.tensorboard; extra fedloop[tensorboard])
  mlflow       a run in an MLflow tracking store: `mlflow_uri`, or a file store in RUN_DIR/mlruns (extra
               fedloop[mlflow]); a resumed fedloop run continues its MLflow run (RUN_DIR/mlflow_run_id)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks
from .errors import ConfigError
from .observers import Observer
from .store import atomic_write_text, read_metrics
from .types import RoundRecord, RunResult, ServerState

BACKENDS = ("csv", "tensorboard", "mlflow")
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
"""backend -> (module it needs, fedloop extra that installs it)."""
ARTIFACTS = ("model.safetensors", "summary.json", "curves.png", "config.toml")


@dataclass(frozen=True)
class TrackingOptions:
    backend: tuple[str, ...] | str = ()
    """csv | tensorboard | mlflow, or a list of them."""
    mlflow_uri: str | None = None
    """An MLflow tracking URI (a server, or a database); unset: a file store in RUN_DIR/mlruns."""
    experiment: str = "fedloop"
    """The MLflow experiment the run is logged under."""

    def __post_init__(self) -> None:
        names = (self.backend,) if isinstance(self.backend, str) else tuple(self.backend)
        object.__setattr__(self, "backend", names)
        for name in names:
            if name not in BACKENDS:
                checks.fail(self, "backend", f"{name!r} is unknown; allowed: {', '.join(BACKENDS)}")
        if not self.experiment:
            checks.fail(self, "experiment", "an MLflow experiment needs a name")

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self.backend)

    def check_installed(self) -> None:
        """A ConfigError naming the extra to install, for a backend whose package is missing."""
        for name in self.backends:
            if name in EXTRAS:
                module, extra = EXTRAS[name]
                try:
                    __import__(module)
                except ImportError:
                    raise ConfigError(f"tracking.backend = {name!r} needs the {module} package: "
                                      f"pip install 'fedloop[{extra}]'", key="backend", value=name) from None


def observers(options: TrackingOptions, run_dir: str | Path, config_toml: str | None = None) -> list[Observer]:
    """The tracking observers [tracking] asks for, writing beside the run in `run_dir`."""
    options.check_installed()
    path = Path(run_dir)
    made: dict[str, Any] = {"csv": lambda: CsvTracker(path),
                            "tensorboard": lambda: TensorBoardTracker(path, config_toml),
                            "mlflow": lambda: MlflowTracker(path, options, config_toml)}
    return [made[name]() for name in options.backends]


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row's finite numbers, the phase timings as timings/<phase>; ids and lists left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "timings" and isinstance(value, dict):
            out.update({f"timings/{k}": float(v) for k, v in value.items() if _finite(v)})
        elif key not in ("round", "failed") and _finite(value):
            out[key] = float(value)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flat_config(config_toml: str | None) -> dict[str, str]:
    """The config as section.key -> value strings (MLflow params)."""
    if not config_toml:
        return {}
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

    walk("", tomllib.loads(config_toml))
    return out


class CsvTracker(Observer):
    """RUN_DIR/metrics.csv: one row per completed round, a column per metric any round has."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def round(self, record: RoundRecord, state: ServerState) -> None:
        rows = [r for r in read_metrics(self.run_dir) if not r.get("failed")]
        table = [{"round": r["round"], **scalars(r)} for r in rows]
        columns = ["round", *sorted({k for row in table for k in row} - {"round"})]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())


class TensorBoardTracker(Observer):
    """Scalars per round in RUN_DIR/tensorboard, the config as text, the curves and summary at the end."""

    def __init__(self, run_dir: Path, config_toml: str | None):
        self.run_dir = run_dir
        self.config_toml = config_toml

    def start(self, state: ServerState, resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if self.config_toml:
            self.writer.add_text("config", "```\n" + self.config_toml + "\n```", global_step=state.round)

    def round(self, record: RoundRecord, state: ServerState) -> None:
        if record.failed:
            return
        for key, value in scalars(record.to_json()).items():
            self.writer.add_scalar(key, value, global_step=record.round)
        self.writer.flush()

    def end(self, result: RunResult) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(result.summary, indent=1, default=str) + "\n```",
                             global_step=result.state.round)
        curves = self.run_dir / "curves.png"
        if curves.is_file():
            import numpy as np
            from PIL import Image

            with Image.open(curves) as img:
                self.writer.add_image("curves", np.asarray(img.convert("RGB")), global_step=result.state.round,
                                      dataformats="HWC")
        self.writer.close()


class MlflowTracker(Observer):
    """One MLflow run per fedloop run: params from the config, metrics per round, the outputs as artifacts."""

    def __init__(self, run_dir: Path, options: TrackingOptions, config_toml: str | None):
        self.run_dir = run_dir
        self.options = options
        self.config_toml = config_toml
        self.uri = options.mlflow_uri or (run_dir / "mlruns").resolve().as_uri()
        self.run_id = ""

    def start(self, state: ServerState, resumed: bool) -> None:
        if self.options.mlflow_uri is None:  # MLflow 3 keeps its file store only on request: the local default here
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        id_file = self.run_dir / "mlflow_run_id"
        if resumed and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(self.options.experiment)
        experiment_id = experiment.experiment_id if experiment is not None else \
            self.client.create_experiment(self.options.experiment)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"fedloop.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        atomic_write_text(id_file, self.run_id + "\n")
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flat_config(self.config_toml).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def round(self, record: RoundRecord, state: ServerState) -> None:
        if record.failed:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, record.round) for k, v in scalars(record.to_json()).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def end(self, result: RunResult) -> None:
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        status = "FINISHED" if result.stop_reason not in ("interrupted", "diverged") else \
            ("KILLED" if result.stop_reason == "interrupted" else "FAILED")
        self.client.set_terminated(self.run_id, status=status)
