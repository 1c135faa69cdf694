"""The paper's protocol in one call: pretrain → fine-tune → evaluate over a grid, then report.

Layout of ``EXP/``::

    config.yaml                                 the resolved ExperimentConfig
    split.json                                  fingerprint of the cache split it was made on,
                                                and each case's input file SHA-256s
    timings.json                                wall seconds per finished stage
    pretrain/<method>/                          one pretraining run per non-random method
    finetune/<method>/f<fraction>/s<seed>/      one fine-tuning run per cell (no encoder: random)
        eval-test/{per_case.csv,summary.json,pred/}
    results.csv · table.md · stats.md · report.md · figures/*.png

Every stage is resumable on its own, so a killed experiment rerun does only what is missing:

* a pretraining run is complete when ``encoder.safetensors`` exists; a partial run resumes from
  ``checkpoint.pt`` if there is one, otherwise it restarts with ``overwrite=True`` — the run
  folder policy of :mod:`pimpic.training.run_folder`, so a restart removes only what pimpic
  wrote and refuses a folder that holds anything else;
* a cell is complete when its ``eval-<split>/summary.json`` exists; a fine-tuning run that
  finished (``run.json`` ``completed``) is only evaluated; a partial one resumes or restarts.

``pimpic demo`` builds an :class:`ExperimentConfig` in code and calls :func:`run_experiment`;
``on_stage`` lets it show its own progress display (the default prints one line per stage with
elapsed time and an ETA from the durations of the stages finished in this invocation).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pimpic.config import config_differences, flatten, load_yaml, save_config, to_dict
from pimpic.data.cache import Cache, check_same_inputs
from pimpic.data.leakage import check_pool, warn_transductive
from pimpic.data.splits import PARTS, Split
from pimpic.errors import PimpicError
from pimpic.io import (
    HeldLock,
    LockHeld,
    acquire_lock,
    exclusive_lock,
    read_json,
    write_json,
)
from pimpic.paths import (
    CHECKPOINT,
    CLAIMS,
    CONFIG,
    ENCODER_FILE,
    FAILURES,
    MODEL_FILE,
    RUN_INFO,
    RUN_LOCK,
    SPLIT_RECORD,
    SUMMARY,
    TIMINGS,
    cell_dir,
    eval_dir,
    pretrain_dir,
)
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.engine import pretrain
from pimpic.pretraining.sources import open_source
from pimpic.protocol.grid import (
    BASELINE,
    GRID_KEYS,
    ExperimentConfig,
    load_experiment_config,
    transductive,
)
from pimpic.protocol.report import write_all
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.evaluate import evaluate
from pimpic.segmentation.finetune import finetune, num_classes
from pimpic.training.guard import TrainingDiverged
from pimpic.training.run_folder import RUNTIME_KEYS

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    """One unit of resumable work. ``kind`` groups stages of similar cost for the ETA."""

    name: str
    kind: str
    run_dir: Path
    is_done: Callable[[], bool]
    run: Callable[[], None]
    #: the stage whose output this one needs (a cell's pretraining), by name
    needs: str | None = None


def _restart(run_dir: Path) -> tuple[bool, bool]:
    """``(resume, overwrite)``: resume a partial run that left a checkpoint; otherwise start over
    in place (the stage's run folder policy decides what may be removed, and refuses a folder
    that is not its run)."""
    if (run_dir / CHECKPOINT).is_file():
        return True, False
    return False, run_dir.exists()


def _finetune_finished(run_dir: Path) -> bool:
    info = run_dir / RUN_INFO
    if not info.is_file() or not (run_dir / MODEL_FILE).is_file():
        return False
    try:
        return bool(read_json(info).get("completed"))
    except PimpicError:
        return False


def pretraining_pool(cfg: ExperimentConfig) -> tuple[Path, list[str] | None]:
    """Where pretraining reads (``pretrain_cache`` or ``cache``) and which cases (all of a
    separate pool; None: the task cache's ``pretrain_pool``, which the engine resolves)."""
    if not cfg.pretrain_cache or Path(cfg.pretrain_cache).resolve() == Path(cfg.cache).resolve():
        return Path(cfg.cache), None
    if cfg.pretrain_pool != "train":
        raise PimpicError(f"experiment config: pretrain_pool {cfg.pretrain_pool!r} chooses "
                          "cases of 'cache'; with a separate pretrain_cache every case of that "
                          "pool is read (leave pretrain_pool: train, or drop pretrain_cache)")
    return Path(cfg.pretrain_cache), list(open_source(cfg.pretrain_cache).case_ids)


def check_pool_leakage(cfg: ExperimentConfig) -> None:
    """A separate pool must not hold the task's evaluation cases (by id or by content)."""
    pool, pool_ids = pretraining_pool(cfg)
    if pool_ids is None or all(m == BASELINE for m in cfg.methods):
        return
    task = Cache(cfg.cache)
    check_pool(task, list(task.split().part(cfg.split)), open_source(pool), pool_ids)


def check_evaluation_split(cfg: ExperimentConfig, cache: Cache) -> None:
    """Refuse, before any training, a ``split`` the grid's evaluations would refuse at the end:
    one that does not exist, is empty or unlabelled, or holds cases some cell fine-tunes on or
    pretraining sees (only held-out cases measure generalisation)."""
    split = cache.split()
    where = f"experiment config: split {cfg.split!r}"
    if cfg.split not in PARTS:
        raise PimpicError(f"{where} is not one of train, val, test")
    ids = list(split.part(cfg.split))
    if not ids:
        raise PimpicError(f"{where}: {cache.root} has no {cfg.split} cases")
    unlabelled = [c for c in ids if not (cache.case_dir(c) / "label.npy").is_file()]
    if unlabelled:
        raise PimpicError(f"{where}: case(s) without a label in {cache.root}: "
                          f"{', '.join(unlabelled[:5])}")
    tuned = {c for f in cfg.fractions for c in split.fraction(f)}
    # a separate pool: check_pool_leakage; every cached case: transductive, as configured
    own = pretraining_pool(cfg)[1] is None and not transductive(cfg)
    pretrained = set(split.pool(cfg.pretrain_pool) if own else [])
    seen = {"fine-tuning set": tuned,
            "pretraining pool": pretrained if set(cfg.methods) - {BASELINE} else set()}
    for what, cases in seen.items():
        both = [c for c in ids if c in cases]
        if both:
            raise PimpicError(f"{where} has {len(both)} case(s) in the {what} "
                              f"({', '.join(both[:5])}{', …' if len(both) > 5 else ''}); "
                              "evaluate on held-out cases (split: test)")


def plan_stages(cfg: ExperimentConfig, exp: Path, *, progress: bool = True) -> list[Stage]:
    """The grid as an ordered list of stages: every pretraining first, then every cell."""
    cache = Path(cfg.cache)
    pool, pool_ids = pretraining_pool(cfg)
    allow = transductive(cfg)  # pretrain_pool: all is the user's statement
    stages: list[Stage] = []
    for method in cfg.methods:
        if method == BASELINE:
            continue
        rd = pretrain_dir(exp, method)
        pcfg = cfg.pretrain_config(method)

        def run_pre(rd: Path = rd, pcfg: PretrainConfig = pcfg) -> None:
            resume, overwrite = _restart(rd)
            pretrain(pool, rd, pcfg, progress=progress, case_ids=pool_ids, resume=resume,
                     overwrite=overwrite, pool=cfg.pretrain_pool)

        def pre_done(rd: Path = rd) -> bool:
            return (rd / ENCODER_FILE).is_file()

        stages.append(Stage(f"pretrain {method}", "pretrain", rd, pre_done, run_pre))
    for method in cfg.methods:
        encoder = None if method == BASELINE else pretrain_dir(exp, method) / ENCODER_FILE
        needs = None if method == BASELINE else f"pretrain {method}"
        for fraction in cfg.fractions:
            for seed in cfg.seeds:
                rd = cell_dir(exp, method, fraction, seed)
                fcfg = cfg.finetune_config(fraction, seed)

                def run_cell(rd: Path = rd, fcfg: FinetuneConfig = fcfg,
                             encoder: Path | None = encoder) -> None:
                    if not _finetune_finished(rd):
                        resume, overwrite = _restart(rd)
                        finetune(cache, rd, fcfg, encoder=encoder, progress=progress,
                                 resume=resume, overwrite=overwrite,
                                 allow_transductive=allow)
                    evaluate(rd, split=cfg.split, cache=cache, lcc=cfg.lcc, absent=cfg.absent,
                             progress=progress, save_predictions=True,
                             allow_transductive=allow)

                def cell_done(rd: Path = rd) -> bool:
                    return (eval_dir(rd, cfg.split) / SUMMARY).is_file()

                stages.append(Stage(f"finetune {method} {fraction}% seed {seed}", "finetune",
                                    rd, cell_done, run_cell, needs))
    return stages


def _fmt_s(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclasses.dataclass
class StageEvent:
    """What ``on_stage`` receives before (``finished=False``) and after each stage."""

    index: int  # 1-based position in the plan
    total: int
    stage: Stage
    finished: bool
    skipped: bool  # complete before this invocation
    seconds: float  # this stage's duration (0 before it runs)
    elapsed: float  # seconds since run_experiment started
    eta: float | None  # seconds left (None: no finished stage to estimate from yet)


def estimate_eta(remaining: list[Stage], durations: dict[str, list[float]]) -> float | None:
    """Sum over ``remaining`` of the mean duration of finished stages of the same kind (of any
    kind where that kind has none yet); None before any stage finished."""
    every = [d for ds in durations.values() for d in ds]
    if not every:
        return None if remaining else 0.0
    fallback = sum(every) / len(every)
    mean = {k: sum(v) / len(v) for k, v in durations.items() if v}
    return sum(mean.get(s.kind, fallback) for s in remaining)


def log_status(event: StageEvent) -> None:
    """The default progress line (logged), e.g. ``[3/14] pretrain pimpic: done in 1m02s ...``."""
    head = f"[{event.index}/{event.total}] {event.stage.name}"
    if event.skipped:
        line = f"{head}: already complete, skipped"
    elif event.finished:
        line = f"{head}: done in {_fmt_s(event.seconds)}"
    else:
        line = f"{head}: running"
    eta = "?" if event.eta is None else _fmt_s(event.eta)
    log.info("%s (elapsed %s, ETA %s)", line, _fmt_s(event.elapsed), eta)


def _unused_override(key: str, exp: Path) -> bool:
    """``pretrain_overrides.<method>.…`` of a method this folder has not pretrained yet: free to
    change (a method added on resume brings its own settings; nothing run used them)."""
    parts = key.split(".")
    return (len(parts) > 1 and parts[0] == "pretrain_overrides"
            and not pretrain_dir(exp, parts[1]).exists())


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys and their values; an empty mapping (e.g. no overrides) sets nothing."""
    return {k: v for k, v in flatten(config).items() if v != {}}


def _check_same_setup(cfg: ExperimentConfig, exp: Path, split: Split) -> None:
    """Refuse to mix runs made with other settings, or on another split, into one table."""
    saved_path = exp / CONFIG
    if not saved_path.is_file():
        return
    digest, record = split.digest, exp / SPLIT_RECORD
    made_on = read_json(record).get("digest") if record.is_file() else None
    if made_on not in (None, digest):
        raise PimpicError(f"{exp}: holds an experiment made on another split of {cfg.cache} "
                          f"(split {made_on}, now {digest}); use a new --out folder")
    # keys an older pimpic did not record take today's defaults (the behaviour it had)
    diffs = config_differences(
        _settings(load_yaml(saved_path)), _settings(to_dict(cfg)),
        lambda k: (k.split(".")[0] in GRID_KEYS or k.split(".")[-1] in RUNTIME_KEYS
                   or _unused_override(k, exp)),
        _settings(to_dict(ExperimentConfig(cache=cfg.cache))))
    if diffs:
        raise PimpicError(
            f"{exp}: holds an experiment made with different settings ({'; '.join(diffs)}); "
            "use a new --out folder (methods, fractions and seeds may change)")


def _run_stages(stages: list[Stage], exp: Path, *, share: bool, poll_s: float,
                on_stage: Callable[[StageEvent], None] | None) -> dict[str, str]:
    """Run every stage not yet done, in order, each under its claim lock; returns the failed
    ones (name → reason). ``share``: a stage claimed by another process, or whose pretraining
    another process is still running, is left for later, and the pass is repeated every
    ``poll_s`` seconds until no stage is left that way."""
    by_name = {stage.name: stage for stage in stages}
    claims = exp / CLAIMS
    claims.mkdir(exist_ok=True)
    durations: dict[str, list[float]] = {}
    failures: dict[str, str] = {}
    finished: set[str] = set()  # done or failed, as far as this process knows
    start = time.perf_counter()
    while True:
        elsewhere = False
        for i, stage in enumerate(stages, 1):
            if stage.name in finished:
                continue
            remaining = [s for s in stages[i - 1:] if s.name not in finished and not s.is_done()]
            if stage.is_done():
                finished.add(stage.name)
                if on_stage:
                    on_stage(StageEvent(i, len(stages), stage, True, True, 0.0,
                                        time.perf_counter() - start,
                                        estimate_eta(remaining, durations)))
                continue
            if stage.needs in failures:
                failures[stage.name] = f"not run: {stage.needs} failed"
                finished.add(stage.name)
                log.error("[%d/%d] %s: %s", i, len(stages), stage.name, failures[stage.name])
                continue
            if stage.needs is not None and not by_name[stage.needs].is_done():
                elsewhere = True  # (share) its pretraining is running in another worker
                continue
            try:
                claim = acquire_lock(claims / f"{stage.name.replace(' ', '_')}.lock",
                                     "`pimpic experiment --share`")
            except LockHeld:
                if not share:
                    raise
                elsewhere = True
                continue
            try:
                if stage.is_done():  # finished by another worker since the check above
                    continue
                if on_stage:
                    on_stage(StageEvent(i, len(stages), stage, False, False, 0.0,
                                        time.perf_counter() - start,
                                        estimate_eta(remaining, durations)))
                t0 = time.perf_counter()
                try:
                    stage.run()
                except TrainingDiverged as err:  # the cell failed; the others go on
                    failures[stage.name] = str(err)
                    finished.add(stage.name)
                    log.error("[%d/%d] %s: failed — %s", i, len(stages), stage.name, err)
                    continue
                seconds = time.perf_counter() - t0
                finished.add(stage.name)
                durations.setdefault(stage.kind, []).append(seconds)
                _record_timing(exp / TIMINGS, stage.name, seconds)
                if on_stage:
                    on_stage(StageEvent(i, len(stages), stage, True, False, seconds,
                                        time.perf_counter() - start,
                                        estimate_eta(remaining[1:], durations)))
            finally:
                claim.release()
        if not (share and elsewhere):
            return failures
        time.sleep(poll_s)


def _lock_experiment(exp: Path, share: bool, tries: int = 60) -> HeldLock:
    """The experiment folder's lock. A ``share`` worker waits (up to ``tries`` seconds) while
    another one checks the set-up; an invocation without ``share`` never waits."""
    for _ in range(tries if share else 1):
        try:
            return acquire_lock(exp / RUN_LOCK, "`pimpic experiment`")
        except LockHeld:
            if not share:
                raise
            time.sleep(1.0)
    return acquire_lock(exp / RUN_LOCK, "`pimpic experiment`")


def _record_timing(path: Path, name: str, seconds: float) -> None:
    """Add one stage's duration to ``timings.json`` (read again first: other workers write it
    too)."""
    timings: dict[str, float] = read_json(path) if path.is_file() else {}
    timings[name] = round(seconds, 2)
    write_json(path, timings)


def run_experiment(
    config: str | Path | ExperimentConfig,
    out: str | Path,
    *,
    progress: bool = True,
    on_stage: Callable[[StageEvent], None] | None = log_status,
    report: bool = True,
    share: bool = False,
    poll_s: float = 60.0,
) -> Path:
    """Run (or resume) the whole grid in ``out`` and write the report; returns ``out``.

    Args:
        config: an :class:`ExperimentConfig` or the path of its YAML file.
        out: the experiment folder (created; reused to resume).
        progress: show the stages' own progress bars.
        on_stage: called before and after every stage (None: silent).
        report: write results.csv, table.md, stats.md, figures and report.md at the end.
        share: work on the grid beside other ``share`` invocations on the same folder (one
            per core or machine): each stage is claimed by the process that runs it (a lock
            under ``.claims/``), the others take the next free stage whose pretraining is
            finished and, when none is left, wait for those still running; the last to end
            writes the report. Without it the folder is this invocation's alone.
        poll_s: how often a ``share`` worker with nothing to do looks again (seconds).
    """
    cfg = config if isinstance(config, ExperimentConfig) else load_experiment_config(config)
    if not cfg.cache:
        raise PimpicError("experiment config: 'cache' (a prepared cache folder) is required")
    cache = Cache(cfg.cache)
    if not cache.has_splits():
        raise PimpicError(f"{cache.root}: no splits.json (run `pimpic prepare`)")
    check_evaluation_split(cfg, cache)
    # the cache's labels decide the network's outputs; the resolved number is what the
    # experiment records (and what an experiment made before it was derived recorded)
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(
        cfg.finetune, num_classes=num_classes(cfg.finetune, cache)))
    exp = Path(out)
    exp.mkdir(parents=True, exist_ok=True)
    lock = _lock_experiment(exp, share)  # until this call ends, or (share) its set-up does
    split = cache.split()
    check_pool_leakage(cfg)
    _check_same_setup(cfg, exp, split)
    if transductive(cfg):
        warn_transductive(cache.root, cfg.split, len(split.part(cfg.split)))
    inputs = cache.input_sha256([*split.train, *split.val, *split.test])
    if (exp / CONFIG).is_file() and (exp / SPLIT_RECORD).is_file():
        check_same_inputs(read_json(exp / SPLIT_RECORD).get("case_inputs"), inputs,
                          f"{exp}: holds an experiment made on other data of {cfg.cache}",
                          "use a new --out folder (its cells were made on the old cases)")
    save_config(cfg, exp / CONFIG)
    write_json(exp / SPLIT_RECORD, {"digest": split.digest,
                                    **{k: len(split.part(k)) for k in PARTS},
                                    "case_inputs": inputs})

    if share:  # from here on the stages are claimed one by one: other --share workers join
        lock.release()
    stages = plan_stages(cfg, exp, progress=progress)
    failures = _run_stages(stages, exp, share=share, poll_s=poll_s, on_stage=on_stage)
    by_name = {stage.name: stage for stage in stages}
    if share and (exp / FAILURES).is_file():  # other workers' failures, unless redone since
        failures = {k: v for k, v in {**read_json(exp / FAILURES), **failures}.items()
                    if k in by_name and not by_name[k].is_done()}
    if failures:
        write_json(exp / FAILURES, failures)
    elif (exp / FAILURES).is_file():
        (exp / FAILURES).unlink()  # an earlier run's failures, all rerun successfully
    if report and not share:
        write_all(exp, cfg)
    elif report:
        try:  # every worker ends when the grid does; one of them writes the report
            with exclusive_lock(exp / RUN_LOCK, "`pimpic experiment` (its report)"):
                write_all(exp, cfg)
        except LockHeld:
            log.info("%s: another worker is writing the report", exp)
    lock.release()
    if failures:
        first = next(iter(failures.items()))
        raise PimpicError(f"{exp}: {len(failures)} of {len(stages)} stages failed, the rest "
                          f"finished ({exp / FAILURES}); first: {first[0]}: {first[1]}")
    return exp
