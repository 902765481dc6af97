"""`ban.seeds`: the whole born-again sequence once per seed, and the aggregate over seeds.

    OUTPUT/
      config.yaml                  the resolved config, with ban.seeds
      seed-<s>/                    a complete `bornagain ban` run with seed=s (its config.yaml says so),
                                   resumable on its own; --resume on OUTPUT continues the unfinished ones;
                                   no plots of its own (`bornagain report seed-<s> --plots` draws them)
      results.json                 mean +- std per column, paired t-tests, McNemar tests (reports/seeds.py)
      table.md, table.csv, table.tex
      generations.{png,pdf}, reliability.{png,pdf}, curves.{png,pdf}

Each seed's run is exactly the single-seed run of that seed: its split, subset, initialisations and
augmentation all derive from s, so `seed-1/` equals `bornagain ban seed=1`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bornagain.config import save_config
from bornagain.engine.distributed import barrier, current
from bornagain.engine.lock import run_lock
from bornagain.pipelines.ban import check_output_dir, run_ban
from bornagain.reports.seeds import aggregate, write_aggregate
from bornagain.vision.config import VisionConfig


def seed_config(cfg: VisionConfig, seed: int, output: Path) -> VisionConfig:
    """The config of one seed's run: seed=s, no ban.seeds, its own output directory."""
    return dataclasses.replace(cfg, seed=seed, output_dir=str(output / f"seed-{seed}"),
                               ban=dataclasses.replace(cfg.ban, seeds=None))


def run_seeds(cfg: VisionConfig, output: Path, *, resume: bool) -> dict:
    """Run (or continue) every seed's sequence in order, then write the aggregate at ``output``."""
    main = current().is_main
    with run_lock(output, enabled=main):
        if main:
            output.mkdir(parents=True, exist_ok=True)
            save_config(cfg, output / "config.yaml")
        seed_dirs = []
        for seed in cfg.ban.seeds:
            run_dir = output / f"seed-{seed}"
            sub = seed_config(cfg, seed, output)
            # a seed not started yet starts fresh; a started one continues (and must have the same config)
            started = resume and run_dir.is_dir() and any(run_dir.iterdir())
            check_output_dir(run_dir, sub, resume=started)
            if main:
                print(f"bornagain ban: seed {seed} -> {run_dir}", flush=True)
            run_ban(sub, run_dir, resume=started, plots=False)  # the aggregate draws every seed at once
            seed_dirs.append(run_dir)
        agg = aggregate(seed_dirs, labels=[d.name for d in seed_dirs])
        if main:
            write_aggregate(agg, seed_dirs, output)
        barrier()
    return agg
