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
import inspect
import json
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from onnxslim_compress.errors import BadInputError

_ATTR = "onnxslim_compress.settings"
_OPEN_ATTEMPTS = 6
#: seconds between a running trial's heartbeats (a killed worker's trial is failed after GRACE_FACTOR x this)
HEARTBEAT_S = 30.0
GRACE_FACTOR = 4
#: how often a trial whose worker was killed is re-queued (RetryFailedTrialCallback)
MAX_RETRY = 2
#: the table of claimed candidate keys, beside Optuna's tables in the same database
CLAIMS_TABLE = "onnxslim_compress_claims"
#: Optuna 4.9 renamed RDBStorage's failed_trial_callback (deprecated) to heartbeat_stale_trial_callback
_RETRY_ARG = ("heartbeat_stale_trial_callback"
              if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage.__init__).parameters
              else "failed_trial_callback")
_RETRY_CALLBACK = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
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
    sampler: str = "tpe"
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


def open_storage(url: str, heartbeat: float = HEARTBEAT_S) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so a trial of a killed worker is failed (after GRACE_FACTOR x
    `heartbeat` seconds without one) and re-queued once per MAX_RETRY, never left running."""
    if "://" not in url:
        raise BadInputError(f"--storage {url!r}: expected an SQLAlchemy URL such as sqlite:///study.db or postgresql://...")
    if heartbeat <= 0:
        raise BadInputError("--heartbeat must be > 0")
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
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=max(1, round(heartbeat)),
                    grace_period=max(2, round(GRACE_FACTOR * heartbeat)),
                    **{_RETRY_ARG: _RETRY_CALLBACK(max_retry=MAX_RETRY)},
                )
            if url.startswith("sqlite"):
                _sqlite_serialized(storage)
            _create_claims_table(storage)
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


def _sqlite_serialized(storage: optuna.storages.RDBStorage) -> None:
    """Every transaction starts with BEGIN IMMEDIATE (the write lock), WAL journal, synchronous=NORMAL.

    Why: SQLite ignores SELECT ... FOR UPDATE, and Python's sqlite3 begins a transaction only at
    the first write, so Optuna's read-then-write steps race between processes: two workers popped
    the same queued trial (WAITING -> RUNNING read by both) and one then failed with "Cannot tell a
    COMPLETE trial". Taking the lock at BEGIN makes each step atomic. WAL keeps the many small
    commits cheap (no fsync per commit with synchronous=NORMAL); a crash can lose the last commits,
    never corrupt the file."""
    from sqlalchemy import event  # lazy: see _schema_race_errors

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - called by SQLAlchemy
        dbapi_conn.isolation_level = None  # autocommit at the driver: SQLAlchemy's BEGIN below rules
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # pragma: no cover - called by SQLAlchemy
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the tables reconnect with the settings


def _claims_table(metadata: Any) -> Any:
    from sqlalchemy import Column, Integer, String, Table  # lazy: see _schema_race_errors

    return Table(
        CLAIMS_TABLE, metadata,
        Column("study", String(512), primary_key=True),
        Column("key_hash", String(64), primary_key=True),
        Column("trial_number", Integer, nullable=False),
        Column("worker", String(256), nullable=False),
    )


def _create_claims_table(storage: optuna.storages.RDBStorage) -> None:
    from sqlalchemy import MetaData  # lazy: see _schema_race_errors

    md = MetaData()
    _claims_table(md)
    md.create_all(storage.engine, checkfirst=True)


class KeyClaims:
    """Which trial builds which candidate, claimed atomically before anything is built.

    A claim is a row keyed by (study, candidate key) in a table of the study's own database: the
    primary key makes the INSERT succeed for exactly one trial, so two workers never build the same
    candidate, whatever order their trials set their attributes in. A claim whose trial died (failed
    by the heartbeat, or pruned) is taken over with a compare-and-set UPDATE, again by one trial
    only. In-memory studies (one process) keep the claims in a dict under a lock."""

    def __init__(self, storage: Any, study_name: str):
        self.study = study_name
        self.engine = storage.engine if isinstance(storage, optuna.storages.RDBStorage) else None
        self._mem: dict[str, int] = {}
        self._lock = threading.Lock()
        if self.engine is not None:
            from sqlalchemy import MetaData  # lazy: see _schema_race_errors

            self.table = _claims_table(MetaData())

    @staticmethod
    def _hash(key: str) -> str:
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    def claim(self, key: str, trial_number: int, worker: str) -> int:
        """The number of the trial that owns `key`: `trial_number` if this call claimed it."""
        h = self._hash(key)
        if self.engine is None:
            with self._lock:
                return self._mem.setdefault(h, trial_number)
        from sqlalchemy import exc, insert, select  # lazy: see _schema_race_errors

        t = self.table
        try:
            with self.engine.begin() as c:
                c.execute(insert(t).values(study=self.study, key_hash=h, trial_number=trial_number, worker=worker))
            return trial_number
        except exc.IntegrityError:
            with self.engine.begin() as c:
                row = c.execute(select(t.c.trial_number).where(t.c.study == self.study, t.c.key_hash == h)).first()
            if row is None:  # pragma: no cover - claims are never deleted
                return self.claim(key, trial_number, worker)
            return int(row[0])

    def take_over(self, key: str, old: int, new: int, worker: str) -> bool:
        """Move the claim from dead trial `old` to `new`; False if another trial moved it first."""
        h = self._hash(key)
        if self.engine is None:
            with self._lock:
                if self._mem.get(h) != old:
                    return False
                self._mem[h] = new
                return True
        from sqlalchemy import update  # lazy: see _schema_race_errors

        t = self.table
        with self.engine.begin() as c:
            r = c.execute(update(t).where(t.c.study == self.study, t.c.key_hash == h, t.c.trial_number == old)
                          .values(trial_number=new, worker=worker))
            return r.rowcount == 1


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
