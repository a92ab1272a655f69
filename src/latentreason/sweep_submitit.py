"""Sweeps through a job engine: `latentreason sweep CONFIG --executor submitit` submits one job per cell with
submitit (SLURM on a cluster; `--cluster local` runs them as local processes, `debug` in this process).

Cells are submitted in waves, in dependency order: a wave holds every cell whose `{cell:...}` starting runs
have finished, and the next wave is submitted once it has settled. This submitting process waits for the
jobs (run it in tmux / screen on a login node); interrupted, it can simply be started again: finished cells
are skipped and unfinished ones resume from their checkpoints, exactly as with claim-file workers. A job
takes the cell's claim (runs/NAME/.claim) while it trains, so claim-file workers (`latentreason sweep CONFIG`
without --executor) may help on the same sweep. On SLURM a preempted or timed-out job is requeued and
resumes from its last checkpoint (submitit's Checkpointable). Jobs get a one-day time limit unless
`--executor-option timeout_min=N` says otherwise (submitit's defaults are minutes).

Job logs go to OUT_DIR/submitit/; executor parameters (`--executor-option timeout_min=120`,
`slurm_partition=gpu`, `gpus_per_node=1`, ...) are passed to `AutoExecutor.update_parameters`.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from latentreason.config import RunConfig, from_dict, parse_overrides, to_dict
from latentreason.errors import UserInputError

CLUSTERS = ("auto", "slurm", "local", "debug")
DEFAULT_TIMEOUT_MIN = 24 * 60
"""Job time limit unless `--executor-option timeout_min=N` (or slurm_time) says otherwise."""


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserInputError("--executor submitit needs the submitit package (pip install submitit, or pip install -e '.[sweep]')") from None
    return submitit


def run_cell_job(config: dict[str, Any], analyze: bool) -> str:
    """One cell, inside a job: claim it, train it (resuming from its checkpoint), analyse it if asked.

    Returns "done", "failed" (error.txt says why) or "busy" (a claim-file worker holds it). Bad input and
    crashes are caught here, as in run_sweep, so one broken cell cannot fail the job engine's bookkeeping.
    """
    from latentreason.analysis.runs import analyze_run
    from latentreason.sweep import _claim, _release, analysis_due
    from latentreason.training import train

    cfg: RunConfig = from_dict(RunConfig, config)
    run_dir = Path(cfg.out_dir)
    if not _claim(run_dir):
        return "busy"
    try:
        if not (run_dir / "done.json").exists():
            try:
                (run_dir / "error.txt").unlink(missing_ok=True)
                train(cfg, progress=False)
            except UserInputError as error:
                (run_dir / "error.txt").write_text(f"{error}\n")
                return "failed"
            except Exception:
                (run_dir / "error.txt").write_text(traceback.format_exc())
                return "failed"
        if analysis_due(cfg, analyze):
            try:
                analyze_run(run_dir, progress=False)
                (run_dir / "analysis_error.txt").unlink(missing_ok=True)
            except Exception:
                (run_dir / "analysis_error.txt").write_text(traceback.format_exc())
        return "done"
    finally:
        _release(run_dir)


def _checkpointable_job():
    """run_cell_job as a submitit Checkpointable: on preemption / timeout SLURM requeues the same call, which
    resumes the cell from its last checkpoint."""
    submitit = _submitit()

    class CellJob(submitit.helpers.Checkpointable):
        def __call__(self, config: dict[str, Any], analyze: bool) -> str:
            return run_cell_job(config, analyze)

    return CellJob()


def dependency_waves(names: list[str], depends_on: dict[str, list[str]]) -> list[list[str]]:
    """Cells grouped so that every cell comes in a later wave than all the cells it starts from."""
    depth: dict[str, int] = {}

    def level(name: str, seen: tuple[str, ...] = ()) -> int:
        if name in seen:
            raise UserInputError(f"cell references form a cycle: {' -> '.join((*seen, name))}")
        if name not in depth:
            depth[name] = 1 + max((level(d, (*seen, name)) for d in depends_on.get(name, [])), default=-1)
        return depth[name]

    for name in names:
        level(name)
    return [[n for n in names if depth[n] == wave] for wave in range(max(depth.values(), default=-1) + 1)]


def make_executor(folder: Path, cluster: str = "auto", options: list[str] | None = None):
    """A submitit AutoExecutor writing logs under `folder`; `options` are KEY=VALUE executor parameters."""
    submitit = _submitit()
    if cluster not in CLUSTERS:
        raise UserInputError(f"--cluster {cluster!r}; expected one of {list(CLUSTERS)}")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=None if cluster == "auto" else cluster)
    # submitit's own defaults (2 min local, 5 min SLURM) would kill any real cell: give a day unless told.
    parameters = {"timeout_min": DEFAULT_TIMEOUT_MIN, **parse_overrides(options or [])}
    try:
        executor.update_parameters(**parameters)
    except (ValueError, TypeError, NameError) as error:
        raise UserInputError(f"--executor-option: {error}") from None
    return executor


def submit_sweep(path: str | Path, overrides: list[str] | None = None, cluster: str = "auto", options: list[str] | None = None,
                 failures: list[str] | None = None, executor=None) -> list[dict]:
    """Run every unfinished cell of sweep `path` as a submitit job, waves in dependency order, then write
    the sweep's tables (as run_sweep does). Failed cells' names are appended to `failures`."""
    from latentreason.results import collect, write_tables
    from latentreason.sweep import analysis_due, cell_name, expand, read_sweep, record_sweep_config, resolve_cells

    sweep = read_sweep(path, overrides)
    out = Path(sweep.out_dir)
    cells = expand(sweep)
    resolved, invalid = resolve_cells(path, sweep, cells)  # every cell checked before the first job is submitted
    for message in invalid.values():
        print(f"error: {message}", file=sys.stderr)
    configs: dict[str, RunConfig] = {name: cfg for name, (cfg, _) in resolved.items()}
    depends_on = {name: [cell_name(d) for d in dependencies] for name, (_, dependencies) in resolved.items()}
    waves = dependency_waves([cell_name(cell) for cell in cells], depends_on)
    out.mkdir(parents=True, exist_ok=True)
    record_sweep_config(out, path, overrides)
    executor = executor or make_executor(out / "submitit", cluster, options)
    job_function = _checkpointable_job()
    status: dict[str, str] = {}
    failed: list[str] = [] if failures is None else failures
    for number, wave in enumerate(waves, 1):
        jobs = {}
        for name in wave:
            if name in invalid:  # bad config or data: fails alone, as in run_sweep
                (out / "runs" / name).mkdir(parents=True, exist_ok=True)
                (out / "runs" / name / "error.txt").write_text(invalid[name] + "\n")
                status[name] = "failed"
                continue
            cfg = configs[name]
            run_dir = Path(cfg.out_dir)
            broken = [d for d in depends_on[name] if status.get(d) != "done"]
            if broken:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(f"not run: the cell it starts from, {broken[0]}, did not finish\n")
                status[name] = "failed"
            elif (run_dir / "done.json").exists() and not analysis_due(cfg, sweep.analyze):
                status[name] = "done"
            else:
                jobs[name] = executor.submit(job_function, to_dict(cfg), sweep.analyze)
        if jobs:
            print(f"sweep wave {number}/{len(waves)}: submitted {len(jobs)} job(s) "
                  f"({', '.join(str(job.job_id) for job in jobs.values())}); waiting", file=sys.stderr)
        for name, job in jobs.items():
            try:
                status[name] = job.result()
            except Exception as error:  # the job itself died (killed, out of memory, node failure): the cell fails
                status[name] = "failed"
                run_dir = Path(configs[name].out_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(f"job {job.job_id} did not complete: {error}\n")
        for name in wave:
            if status[name] == "busy":
                print(f"note: cell {name} is held by another worker; start the sweep again once it finished", file=sys.stderr)
            if status[name] != "done":
                failed.append(name)
    rows = collect(out)
    write_tables(out, rows)
    if failed:
        print(f"{len(failed)} cell(s) not finished (see error.txt in their run dirs): {failed}", file=sys.stderr)
    return rows
