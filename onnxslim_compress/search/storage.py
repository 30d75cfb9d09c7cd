"""Where a study lives: Optuna's RDB storage (an SQLite file beside the output by default, any
SQLAlchemy URL for a fleet), and the settings a worker needs to join it.

Why the settings go into the study: `worker --storage URL --study NAME` on another machine must
rebuild exactly the same search (model, recipe, data, metric, budget) without being told again, and
a re-run of `search` must refuse to resume a study that was started with other settings instead of
silently mixing two experiments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from onnxslim_compress.errors import BadInputError

_ATTR = "onnxslim_compress.settings"
_OPEN_ATTEMPTS = 6
#: settings that define the experiment: a resumed study must agree on these
_IDENTITY = ("model", "recipe", "target", "eval", "labels", "metric", "max_drop", "objective", "multi_objective")


@dataclass
class StudySettings:
    """Everything needed to rebuild a search in another process. Paths are absolute."""

    model: str
    recipe: dict[str, Any]
    target: dict[str, Any]
    max_drop: float
    metric: str
    objective: str = "latency"
    trials: int = 20
    calib: str | None = None
    eval: str | None = None
    labels: str | None = None
    seed: int = 0
    runs: int = 50
    warmup: int = 10
    sampler: str = "gp"
    strategy: str = "auto"
    multi_objective: bool = False
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    num_samples: int | None = None
    image: dict[str, Any] | None = None
    timeout: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def identity(self) -> dict[str, Any]:
        d = self.as_dict()
        return {k: d[k] for k in _IDENTITY}

    def default_study_name(self) -> str:
        """Stable for the same experiment, so re-running the same command resumes its study."""
        h = hashlib.blake2b(json.dumps(self.identity(), sort_keys=True, default=str).encode(), digest_size=4).hexdigest()
        return f"{Path(self.model).stem}-{h}"


def default_storage_url(output: str | os.PathLike) -> str:
    """`sqlite:///<output stem>.search.db` beside the output model."""
    p = Path(output).resolve()
    return f"sqlite:///{p.with_name(p.stem + '.search.db')}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so a trial of a killed worker is failed and not left running."""
    if "://" not in url:
        raise BadInputError(f"--storage {url!r}: expected an SQLAlchemy URL such as sqlite:///study.db or postgresql://...")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes on one file: wait for the lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    # processes starting together race to create the schema (a UNIQUE violation on Optuna's
    # version table for the loser); the schema exists a moment later, so retry briefly
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120)
            if url.startswith("sqlite"):
                _sqlite_wal(storage)
            return storage
        except ImportError as e:
            raise BadInputError(f"--storage {url.split('://')[0]}: the database driver is not installed ({e})") from None
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's connection errors are many classes
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if attempt + 1 < _OPEN_ATTEMPTS and isinstance(e, _schema_race_errors()):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise BadInputError(f"--storage: cannot open {redact(url)}: {msg}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _schema_race_errors() -> tuple[type[BaseException], ...]:
    """What a process sees when another one is creating the same schema: a duplicate row or table,
    or (SQLite) a locked database."""
    from sqlalchemy import exc  # lazy: only RDB storages need SQLAlchemy (optuna imports it lazily too)

    return (exc.IntegrityError, exc.OperationalError, exc.ProgrammingError)


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal + synchronous=NORMAL: each of a trial's small writes is a commit, and with the
    default rollback journal every commit is an fsync (~10 ms each here). WAL also lets workers read
    while another writes. A crash can lose the last commits, never corrupt the file."""
    from sqlalchemy import event  # lazy: see _schema_race_errors

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - called by SQLAlchemy
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    engine.dispose()  # connections opened while creating the tables reconnect with the pragma
    with engine.connect() as c:
        c.exec_driver_sql("PRAGMA journal_mode=WAL")


def redact(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        cred, _, host = rest.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url


def create_or_resume(storage: optuna.storages.RDBStorage, name: str, settings: StudySettings, sampler: Any) -> optuna.Study:
    """Create the study, or resume it if the settings that define the experiment agree."""
    directions = ["minimize", "minimize"] if settings.multi_objective else ["minimize"]
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, directions=directions, load_if_exists=True)
    old = study.user_attrs.get(_ATTR)
    if old is None:
        study.set_user_attr(_ATTR, settings.as_dict())
        return study
    prev = StudySettings.from_dict(old)
    diff = [k for k, v in settings.identity().items() if json.dumps(v, sort_keys=True, default=str) != json.dumps(prev.identity()[k], sort_keys=True, default=str)]
    if diff:
        raise BadInputError(
            f"study {name!r} exists with different settings ({', '.join(diff)}); pick another --study name"
        )
    if settings.trials != prev.trials:  # the budget may grow (or shrink) on resume
        study.set_user_attr(_ATTR, settings.as_dict())
    return study


def load_settings(storage: optuna.storages.RDBStorage, name: str) -> StudySettings:
    """The settings a worker joins with; BadInputError if the study is missing or not ours."""
    try:
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as e:  # noqa: BLE001
        raise BadInputError(f"cannot read studies from the storage: {str(e).splitlines()[0]}") from None
    names = [s.study_name for s in summaries]
    if name not in names:
        raise BadInputError(f"study {name!r} not found in the storage (studies: {', '.join(names) or 'none'})")
    study = optuna.load_study(study_name=name, storage=storage)
    attrs = study.user_attrs.get(_ATTR)
    if attrs is None:
        raise BadInputError(f"study {name!r} was not created by onnxslim-compress search (no settings stored)")
    return StudySettings.from_dict(attrs)
