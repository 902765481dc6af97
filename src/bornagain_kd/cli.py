"""`bornagain` command line: one subcommand -> one function.

    bornagain ban [--config FILE] [--output DIR] [--resume] [key=value ...]   teacher + born-again generations + table
    bornagain train [--config FILE] [--output DIR] [--resume] [key=value ...] one classification run
    bornagain report RUN_DIR [RUN_DIR ...] [--format F]                       tables of finished runs (any kind)
    bornagain report --compare SWEEP_A SWEEP_B [--adjust holm]               two sweeps over the same teachers, pair by pair
    bornagain export RUN_DIR OUT_DIR                                          a finished vision run as a folder to share
    bornagain models [--match-table]                                          model families, the paper's zoo with parameter counts
    bornagain config [ban|train|glue-teachers|bam] [--markdown]               every config key: default and meaning
    bornagain recipes                                                         the packaged recipes, for --config NAME
    bornagain env                                                             versions, CPU flags, GPUs, auto's choices
    bornagain predict RUN_OR_EXPORT IMAGES --output preds.csv                 class probabilities of new images
    bornagain --version
    bornagain glue-teachers [...]                                             single-task GLUE teachers + cached predictions
    bornagain bam [...]                                                       multi-task students with teacher annealing
    bornagain sweep COMMAND --output DIR [--seeds 0,1] [key=[a,b] ...]        seeds x a grid: here, or a SLURM array
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from bornagain_kd.errors import RenamedKeyWarning, UserError


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a recipe's name (`bornagain recipes` lists them) or a YAML file; keys not given "
                                    "keep their defaults")
    p.add_argument("--output", help="run directory (default: output_dir from the config)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.epochs=10")


def _vision_setup(args) -> tuple:
    from bornagain_kd.api import start_vision_run, vision_config

    cfg = vision_config(args.config, args.overrides, args.output)
    output, info = start_vision_run(cfg, resume=args.resume)
    return cfg, output, info


def cmd_ban(args) -> None:
    from bornagain_kd.pipelines.ban import run_ban

    cfg, output, info = _vision_setup(args)
    if info.is_main:
        epochs = f"{cfg.train.epochs} epoch{'s' if cfg.train.epochs != 1 else ''}"
        data = cfg.data.name if cfg.data.name == "digits" or not cfg.data.root else f"{cfg.data.name} ({cfg.data.root})"
        print(f"bornagain ban: {cfg.model.name} on {data}, {cfg.ban.generations} generation(s), "
              f"loss {cfg.ban.loss}, {epochs} each -> {output}; {_speed_summary(cfg, output)}", flush=True)
        skipped = _skipped_ensembles(cfg.ban)
        if skipped:
            print(f"bornagain ban: {skipped}", flush=True)
    results = run_ban(cfg, output, resume=args.resume)
    if info.is_main:
        print((output / "table.md").read_text())
        if results.get("readings"):  # each student (and control) against its reference
            print("\n".join([results["readings_note"] + ":", *results["readings"]]))
        print(f"results: {output / 'results.json'}")


def _skipped_ensembles(ban) -> str:
    """The ban.ensembles windows this sequence is too short for (reports/ensembles.ensemble_windows skips them),
    said rather than silently dropped."""
    from bornagain_kd.reports.ensembles import ensemble_windows

    kept = {name for name, _ in ensemble_windows(list(range(ban.generations + 1)), ban.ensembles,
                                                 include_teacher=ban.include_teacher_in_ensembles)}
    skipped = [k for k in ban.ensembles if f"Ens*{k}" not in kept]
    if not skipped:
        return ""
    members = ban.generations + (1 if ban.include_teacher_in_ensembles else 0)
    whose = ("student" if members == 1 else "students") + (" and teacher" if ban.include_teacher_in_ensembles else "")
    made = ", ".join(sorted(kept, key=lambda n: (n == "All", n))) or "none"
    return (f"ensembles {made}; {', '.join(f'Ens*{k}' for k in skipped)} of ban.ensembles need more than the "
            f"{members} {whose} of ban.generations={ban.generations}")


def _speed_summary(cfg, output: Path) -> str:
    """'speed: bf16 (native bf16 on this CPU), channels_last (...), compile decided per run' (engine/speed.py)."""
    from bornagain_kd.engine.speed import Choice, speed_line
    from bornagain_kd.pipelines.vision_speed import resolve_vision_speed

    _, choices = resolve_vision_speed(cfg, output)
    if cfg.train.compile == "auto":
        choices["compile"] = Choice(None, "decided per run from its length: see each run's line", "auto")
    return speed_line(choices)


def cmd_train(args) -> None:
    from bornagain_kd.pipelines.ban import run_train

    cfg, output, info = _vision_setup(args)
    results = run_train(cfg, output, resume=args.resume)
    if info.is_main:
        val = results["val_accuracy"]
        val = "no validation split" if val != val else f"val accuracy {val:.2f}%"  # NaN: data.val_size=0
        tta = "" if results.get("tta", "off") == "off" else f", TTA {results['tta']}"
        print(f"{cfg.model.name} on {results['dataset']}: test error {results['test_error']:.2f}%{tta} "
              f"({val}), {results['params']:,} parameters -> {output}")


def cmd_report(args) -> None:
    from bornagain_kd.reports.runs import report_command

    print(report_command(args.run_dirs, args.output, plots=args.plots, fmt=args.format, per_run=args.per_run,
                         effect=args.effect, adjust=args.adjust, compare=args.compare), end="")


def cmd_export(args) -> None:
    from bornagain_kd.pipelines.export import export_run

    settings = export_run(args.run_dir, args.out_dir)
    files = ", ".join(sorted(p.name for p in Path(args.out_dir).iterdir()))
    print(f"exported {settings['model']['name']} ({settings['data']['dataset']}) from {args.run_dir} -> "
          f"{args.out_dir}: {files}\nshare it: hf upload OWNER/NAME {args.out_dir}; reuse it: bornagain ban "
          f"ban.teacher_run={args.out_dir} (or hf://OWNER/NAME) ... (its README.md gives the keys)")


def cmd_models(args) -> None:
    from bornagain_kd.models import list_models

    if args.match_table:
        from bornagain_kd.models.match import match_parameter_table, render_match_table

        print(render_match_table(match_parameter_table(num_classes=args.num_classes)), end="")
        return
    print("Registered families (a name fills the {fields}: resnet-20, densenet-bc-80-80, wrn-28-10, ...):")
    for name in list_models():
        print(f"  {name}")
    from bornagain_kd.models.zoo import render_zoo

    print(render_zoo(num_classes=args.num_classes), end="")


def cmd_recipes(args) -> None:
    from bornagain_kd.recipes import render_recipes

    print(render_recipes(), end="")


def cmd_predict(args) -> None:
    from bornagain_kd.pipelines.predict import predict_command

    print(predict_command(args.run, args.images, args.output, ensemble=args.ensemble, split=args.split,
                          layout=args.layout, image_column=args.image_column, device=args.device))


def cmd_env(args) -> None:
    from bornagain_kd.env_report import render

    print(render(), end="")


def cmd_config(args) -> None:
    from bornagain_kd.config_doc import render_markdown, render_text

    print(render_markdown() if args.markdown else render_text(args.kind), end="")


def glue_teachers_command(config: str | None, output: str | None, resume: bool, overrides: list[str]) -> None:
    """`bornagain glue-teachers [--config FILE] [--output DIR] [--resume] [key=value ...]`."""
    from bornagain_kd.api import glue_config
    from bornagain_kd.engine.distributed import current
    from bornagain_kd.pipelines import glue_teachers

    cfg = glue_config(config, overrides)  # a wrong path or name fails here, before any file is written
    output_dir = Path(output or cfg.output_dir)
    runs, summary = glue_teachers.run(cfg, output_dir, resume=resume)
    if current().is_main:
        print(glue_teachers.format_teacher_table(runs))
        print(f"GLUE average over {len(runs)} task(s): {100 * summary['glue_score_of_these_tasks']:.1f}")
        print(f"teachers in {output_dir / 'teachers'}")


def bam_command(config: str | None, output: str | None, resume: bool, overrides: list[str]) -> None:
    """`bornagain bam [--config FILE] [--output DIR] [--resume] [key=value ...]`."""
    from bornagain_kd.api import glue_config
    from bornagain_kd.engine.distributed import current
    from bornagain_kd.reports.bam_tables import render_markdown
    from bornagain_kd.pipelines import bam

    cfg = glue_config(config, overrides)  # a wrong path or name fails here, before any file is written
    output_dir = Path(output or cfg.output_dir)
    if os.environ.get("RANK", "0") == "0":  # the first line at once: teachers take minutes before the students
        seeds = len(cfg.bam.seeds)
        print(f"bornagain bam: {cfg.encoder.name_or_path}, {len(cfg.glue.tasks)} task(s) "
              f"({', '.join(cfg.glue.tasks)}), arms {', '.join(cfg.bam.targets)}, {seeds} seed{'s' * (seeds != 1)}: "
              f"teachers, then students -> {output_dir}", flush=True)
    results = bam.run(cfg, output_dir, resume=resume)
    if current().is_main:
        print(render_markdown(results))
        minutes, seconds = divmod(round(results["wall_seconds"]), 60)
        print(f"results in {output_dir}: results.json, table.md, table.csv ({minutes} min {seconds} s)")


def cmd_glue_teachers(args) -> None:
    glue_teachers_command(args.config, args.output, args.resume, args.overrides)


def cmd_bam(args) -> None:
    bam_command(args.config, args.output, args.resume, args.overrides)


def cmd_sweep(args) -> None:
    from bornagain_kd.pipelines.sweep import SlurmOptions, sweep

    seeds = _seed_list(args.seeds)
    slurm = SlurmOptions(partition=args.slurm_partition, gpus_per_task=args.gpus_per_task, time_min=args.time,
                         cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, max_parallel=args.max_parallel)
    record = sweep(args.command, args.config, args.output, seeds=seeds, overrides=args.overrides,
                   launcher=args.launcher, slurm=slurm)
    point = "/<point>" if "/" in record["runs"][0]["name"] else ""
    # a `ban` point holds its seeds' aggregate (as ban.seeds writes it); other commands' runs are reported as runs
    where = f"{args.output}{point}" if args.command == "ban" else f"{args.output}{point}/seed-*"
    print(f"bornagain sweep: all {len(record['runs'])} run(s) finished in {args.output} (sweep.json lists them); "
          f"tables: bornagain report {where}")


def _seed_list(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text}: give whole numbers separated by commas, e.g. --seeds 0,1,2") from None


def _add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="seeds x a grid of key=[a,b] overrides, one run each: here one after another, "
                                       "or as a SLURM array (submitit); a re-run launches only the unfinished")
    p.add_argument("command", choices=("ban", "train", "glue-teachers", "bam"), help="the command each run runs")
    p.add_argument("--config", help="the recipe of every run: a name (`bornagain recipes`) or a YAML file")
    p.add_argument("--output", required=True, help="the sweep's directory: one run directory per grid point and seed")
    p.add_argument("--seeds", help="comma-separated seeds (seed=<s> in each run), e.g. 0,1,2")
    p.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                   help="local: one after another here; slurm: a SLURM array (submitit); submitit-local: the same "
                        "array as local processes (to try it before the cluster)")
    p.add_argument("--slurm-partition", help="SLURM partition of the array's tasks")
    p.add_argument("--gpus-per-task", type=int, default=0, help="GPUs of each task (more than 1: torchrun in it)")
    p.add_argument("--time", type=int, default=60, metavar="MINUTES", help="time limit of each task (default 60)")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem-gb", type=float)
    p.add_argument("--max-parallel", type=int, help="at most this many tasks of the array at once")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of every run; key=[a,b] is a grid axis (a key that takes a list: key=[[a],[a,b]])")
    p.set_defaults(func=cmd_sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bornagain", description="Born-again knowledge distillation (BAN, BAM).")
    parser.add_argument("--version", action="version", version=f"bornagain {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ban", help="teacher + born-again generations + ensembles + table (default: digits demo)")
    _add_run_args(p)
    p.set_defaults(func=cmd_ban)
    p = sub.add_parser("train", help="train one classifier into a run directory")
    _add_run_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("report", help="tables of finished runs: `ban` runs one row each, or pooled over seeds where "
                                        "they differ only in seed; any other run directory (a generation, a GLUE "
                                        "teacher, a BAM student, a bam output) printed alone")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--output", help="also write table.md, table.csv and table.tex here (--compare: table.md, "
                   "table.csv and results.json)")
    p.add_argument("--plots", action="store_true",
                   help="(re)draw the plots (PNG and PDF) in each run (pooled runs and --compare: in --output)")
    p.add_argument("--format", choices=("markdown", "csv", "latex"), default="markdown",
                   help="what to print (--output writes all three)")
    p.add_argument("--per-run", action="store_true",
                   help="one row per `ban` run even where they differ only in seed (default: pool them over seeds)")
    p.add_argument("--effect", type=float, metavar="POINTS",
                   help="with runs pooled over seeds: how many seeds would detect a difference of this many test-error "
                        "points with 80%% power (e.g. 0.3)")
    p.add_argument("--adjust", choices=("none", "holm"), default="none",
                   help="pooled tables: Holm-adjusted paired-t p-values over the table's comparisons")
    p.add_argument("--compare", action="store_true",
                   help="two sweeps A B over the same teachers (ban.seeds outputs): every column's test error B - A, "
                        "pair by pair over the seeds, with the paired test and interval")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="a finished `train` run or `ban` generation as a folder to share: "
                                        "model.safetensors, config.json, README.md model card (reusable as ban.teacher_run)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR", help="a new or empty folder (or an earlier export of the same run)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("models", help="list registered model families")
    p.add_argument("--match-table", action="store_true", help="Match-architecture parameter counts beside the paper's")
    p.add_argument("--num-classes", type=int, default=100)
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("config", help="every config key of a command with its default and meaning")
    p.add_argument("kind", nargs="?", default="ban", choices=("ban", "train", "glue-teachers", "bam"),
                   help="the command whose keys to list (default: ban)")
    p.add_argument("--markdown", action="store_true",
                   help="the whole reference as Markdown (docs/configuration.md is this output)")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("predict", help="class probabilities of new images from a finished run, a `ban` generation, "
                                         "an exported folder or a `ban` ensemble, as one CSV")
    p.add_argument("run", metavar="RUN_OR_EXPORT", help="a finished run, a ban generation (gen1/), an exported "
                                                        "folder, or a ban output with --ensemble")
    p.add_argument("images", metavar="IMAGES", help="a folder of images (or of class folders), an image file, a "
                                                    ".safetensors / .npz file, or hf://DATASET")
    p.add_argument("--output", required=True, help="the CSV to write: image, prediction, label, p_<class> ...")
    p.add_argument("--ensemble", metavar="NAME", help="with a ban output: one of its ensembles ('Ens*2', All, ...; "
                                                       "quote the *)")
    p.add_argument("--split", default="test", help="the split of a dataset folder, tensors file or hf dataset "
                                                   "(default: test)")
    p.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto",
                   help="where a tensors file's channels are (as data.layout)")
    p.add_argument("--image-column", help="an hf dataset's image column (default: detected)")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when one is visible, else the CPU), cpu or cuda")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("recipes", help="the packaged recipes (--config NAME): purpose, data, expected time")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("env", help="versions, CPU flags, GPUs, threads and what `auto` picks here: for bug reports")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser("glue-teachers", help="fine-tune one single-task teacher per GLUE task; cache predictions")
    _add_run_args(p)
    p.set_defaults(func=cmd_glue_teachers)
    p = sub.add_parser("bam", help="born-again multi-task students with teacher annealing (and ablations)")
    _add_run_args(p)
    p.set_defaults(func=cmd_bam)
    _add_sweep_parser(sub)
    return parser


def _version() -> str:
    from bornagain_kd import installed_version

    return installed_version()


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting key=value overrides stand on both sides of options
    (`bornagain ban seed=1 --config F train.epochs=2`): argparse alone takes only the first run."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = [*args.overrides, *extra]
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from rank 0 only (under torchrun every rank runs the same code and meets the same warning, e.g.
    DDP's find_unused_parameters note once per rank): ours as one `bornagain: warning:` line, others as Python
    prints them."""
    if os.environ.get("RANK", "0") != "0":
        return
    if issubclass(category, RenamedKeyWarning):
        print(f"bornagain: warning: {message}", file=sys.stderr)
        return
    _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


RANK_ERROR_GRACE = 5.0  # seconds a rank other than 0 waits, on an error, before it exits


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("RANK", "0") != "0":
        # PyTorch's C++ warnings (DDP's find_unused_parameters note, once per rank) bypass Python's warnings: on
        # ranks other than 0 only errors, set before torch loads (it reads the level once)
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    args = parse_args(build_parser(), argv)
    warnings.showwarning = _show_warning
    from bornagain_kd.engine.distributed import shutdown
    from bornagain_kd.engine.trainer import TrainingInterrupted

    try:
        args.func(args)
    except TrainingInterrupted as e:  # SIGTERM/SIGINT: the step finished and a checkpoint was written
        print(f"bornagain: {e}", file=sys.stderr)
        return e.exit_code
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank meets the same error: say it once
            print(f"bornagain: error: {e}", file=sys.stderr)
        else:  # the others leave rank 0 time to say it: torchrun stops every process when the first one exits
            time.sleep(RANK_ERROR_GRACE)
        return 2
    except KeyboardInterrupt:
        print("bornagain: interrupted" + ("; continue with --resume" if hasattr(args, "resume") else ""),
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bornagain models | head`: the reader left; nothing to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 0
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
