"""The launch paths users take on GPUs, run once end to end: one line per check.

    python benchmarks/gpu_check.py                 # on a CUDA machine: NCCL, bf16
    python benchmarks/gpu_check.py --device cpu    # the same script on a CPU (gloo, fp32): checks the script

For each command (`ban`, `glue-teachers`, `bam`) and each process count (1, and 2 where two GPUs exist), it
launches `torchrun --nproc_per_node=N -m bornagain_kd ...` as a user would, sends SIGTERM in the middle of a run
(BORNAGAIN_TERM_AT_STEP, after more than STOP_CHECK_EVERY steps, so the ranks' stop agreement runs more than
twice with NCCL), expects the clean stop (every rank says where it stopped and exits with 128 + 15, a checkpoint is written), then `--resume` and expects a
finished run. One process also joins an NCCL process group (BORNAGAIN_PROCESS_GROUP=always): with a single GPU
that is the only way the data-parallel path (DDP, the collectives) runs at all.

The data are made here: the bundled digits for `ban`, a tiny GLUE folder and BERT config from the test
fixtures (tests/bam_fixtures.py) for the other two. Nothing is downloaded. With --device cpu, 1 and 2
processes: 95 s on 2 CPU cores (most of it process start-up); not yet timed on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bam_fixtures import write_tiny_encoder, write_tiny_glue  # noqa: E402

from bornagain_kd.engine.signals import STOP_CHECK_EVERY  # noqa: E402

TERM_AT = 2 * STOP_CHECK_EVERY + 3  # SIGTERM here; the ranks agree to stop at the next multiple of 8


def commands(work: Path, device: str) -> dict[str, tuple[list[str], str]]:
    """{command: (its arguments, the run name whose step gets the SIGTERM)}; every run has > TERM_AT steps."""
    precision = "bf16" if device == "cuda" else "fp32"
    common = [f"train.device={device}", f"train.precision={precision}", "train.trackers=[]",
              "train.progress=false"]
    glue = write_tiny_glue(work / "glue", n_train=96, n_dev=24)
    encoder = write_tiny_encoder(work / "encoder", max_position_embeddings=64)
    nlp = [*common, f"glue.data_dir={glue}", "glue.tasks=[CoLA,MRPC,STS-B]", f"encoder.name_or_path={encoder}",
           "encoder.from_scratch=true", "max_seq_length=32", "train.batch_size=8", "train.epochs=3",
           "optim.lr=0.001", "bam.lr=0.001", "bam.batch_size=8", "bam.epochs=1", "bam.seeds=[0]",
           "bam.targets=[annealed]"]
    return {
        # digits: 1617 training images in batches of 64: 26 steps an epoch, 52 a generation
        "ban": ([*common, "model.name=resnet-8", "train.epochs=2", "train.batch_size=64", "ban.generations=1",
                 f"train.channels_last={'true' if device == 'cuda' else 'false'}"], "gen1"),
        # 96 examples a task in batches of 8: 12 steps an epoch, 36 a teacher
        "glue-teachers": (nlp, "CoLA teacher"),
        # 288 mixed examples in batches of 8: 36 steps (the teachers come from the glue-teachers run's folder)
        "bam": (nlp, "annealed seed 0"),
    }


def torchrun(nproc: int, command: str, args: list[str], output: Path, *, resume: bool, term_at: str | None,
             group: bool) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    env.pop("BORNAGAIN_TERM_AT_STEP", None)
    env.pop("BORNAGAIN_KILL_AT_STEP", None)
    if term_at:
        env["BORNAGAIN_TERM_AT_STEP"] = term_at
    if group:
        env["BORNAGAIN_PROCESS_GROUP"] = "always"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "bornagain_kd", command, "--output", str(output), *(["--resume"] if resume else []), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    return proc, time.perf_counter() - start


def finished_runs(output: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(output.rglob("results.json"))]


def check(nproc: int, command: str, args: list[str], run_name: str, output: Path, backend: str) -> bool:
    """SIGTERM mid-run, then --resume: one line saying what happened."""
    label = f"{command:<13} nproc={nproc} {backend}"
    stopped, t1 = torchrun(nproc, command, args, output, resume=False, term_at=f"{run_name}:{TERM_AT}", group=True)
    checkpoints = list(output.rglob("checkpoint.safetensors"))
    said = [line for line in stopped.stderr.splitlines() if "stopped after step" in line]
    # each rank says so (two ranks' lines may share one line of stderr) and exits with 128 + SIGTERM; torchrun
    # itself then exits with 1
    if stopped.returncode == 0 or stopped.stderr.count("stopped after step") != nproc or "exitcode  : 143" not in stopped.stderr or not checkpoints:
        print(f"FAIL {label}: SIGTERM at step {TERM_AT} of {run_name} gave exit {stopped.returncode}, "
              f"{stopped.stderr.count('stopped after step')} stop message(s) and {len(checkpoints)} checkpoint(s)\n{stopped.stderr[-4000:]}", flush=True)
        return False
    resumed, t2 = torchrun(nproc, command, args, output, resume=True, term_at=None, group=True)
    runs = finished_runs(output)
    left = list(output.rglob("checkpoint.safetensors"))
    ok = resumed.returncode == 0 and runs and not left and all(r.get("world_size") == nproc for r in runs
                                                                 if "world_size" in r)
    if not ok:
        print(f"FAIL {label}: resume gave exit {resumed.returncode}, {len(runs)} finished run(s), {len(left)} "
              f"checkpoint(s) left\n{resumed.stderr[-4000:]}", flush=True)
        return False
    where = said[0].split("bornagain: ")[1] if said else "stopped"
    print(f"ok   {label}: SIGTERM at step {TERM_AT} -> {where.split(' and wrote')[0]}; resumed -> "
          f"{len(runs)} finished run(s), world_size {nproc} ({t1:.0f} s + {t2:.0f} s)", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--nproc", type=int, nargs="*", help="process counts (default: 1, and 2 with two GPUs)")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)

    import torch  # noqa: PLC0415

    if args.device == "cuda" and not torch.cuda.is_available():
        print("FAIL no CUDA GPU visible: run with --device cpu to check the script itself", flush=True)
        return 1
    gpus = torch.cuda.device_count() if args.device == "cuda" else 2
    nprocs = args.nproc or ([1, 2] if gpus >= 2 else [1])
    backend = "nccl" if args.device == "cuda" else "gloo"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bornagain-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda":
        print(f"torch {torch.__version__}, {gpus} x {torch.cuda.get_device_name(0)}", flush=True)
    runs = commands(work, args.device)
    failures = 0
    for nproc in nprocs:
        for command, (cmd_args, run_name) in runs.items():
            # bam reuses the teachers of the glue-teachers run: both write into one output folder per nproc
            output = work / f"nproc{nproc}" / ("ban" if command == "ban" else "glue")
            failures += not check(nproc, command, cmd_args, run_name, output, backend)
    print(f"{'all checks passed' if not failures else f'{failures} check(s) failed'} ({work})", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
