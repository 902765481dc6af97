"""Student training throughput: teacher annealing (`annealed`) against plain multi-task (`labels`).

The student never runs a teacher; distillation should cost only the look-up of the
cached teacher outputs and a few element-wise operations on the targets, so the
throughput ratio annealed / labels should be within 5% of 1.0.

Both arms train side by side in ONE process, from the same initial weights, on the
same mixed minibatches, with the same training step as `bornagain bam`
(the engine's `train_step` on the pipeline's `StudentTask`). Many short rounds alternate which arm goes first, so that a
slowdown of a shared machine hits both arms alike; the reported ratio is the median
of the per-round ratios (robust to a round disturbed by another process), beside the
ratio of the summed times.

    python benchmarks/bench_bam_targets.py                         # synthetic GLUE-like data
    python benchmarks/bench_bam_targets.py --data-dir ../shared/data/glue \
        --tokenizer ../shared/data/bert-uncased-tokenizer         # real tasks, BERT-Tiny from scratch

Environment variables BORNAGAIN_GLUE_DIR / BORNAGAIN_TOKENIZER_DIR stand in for the flags.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch

from bornagain_kd.glue.config import NlpTrainConfig, OptimConfig
from bornagain_kd.glue.model import MultiTaskModel, TaskHead
from bornagain_kd.glue.optim import build_optimizer, build_scheduler
from bornagain_kd.glue.sampling import plan_epoch
from bornagain_kd.engine.trainer import EngineSettings, train_step
from bornagain_kd.glue.bam_config import BamConfig
from bornagain_kd.pipelines.bam_student import StudentData, StudentSetup, StudentTask
from bornagain_kd.glue.tasks import get_task
from bornagain_kd.glue.tokenization import EncodedSplit

TASKS = ("CoLA", "SST-2", "MRPC", "STS-B", "RTE")


def tiny_bert(vocab_size: int, tasks: tuple[str, ...]) -> MultiTaskModel:
    """BERT-Tiny (2 layers, hidden 128, 2 heads) from random weights, one head per task."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512)
    heads = torch.nn.ModuleDict({t: TaskHead(128, get_task(t).num_labels, regression=get_task(t).is_regression)
                                 for t in tasks})
    return MultiTaskModel(BertModel(config), heads)


def synthetic_data(n_per_task: int, seed: int = 0) -> tuple[StudentData, int]:
    """Token sequences of GLUE-like lengths (10-60 tokens) with labels and random teacher outputs."""
    rng = np.random.default_rng(seed)
    train, teacher = {}, {}
    for name in TASKS:
        task = get_task(name)
        lengths = rng.integers(10, 60, n_per_task)
        ids = [rng.integers(1000, 30000, n).astype(np.int32) for n in lengths]
        types = [np.zeros(n, dtype=np.int8) for n in lengths]
        labels = (torch.rand(n_per_task) if task.is_regression
                  else torch.randint(0, task.num_labels, (n_per_task,)))
        train[name] = EncodedSplit(name, [f"{name}/train/{i}" for i in range(n_per_task)], ids, types, labels)
        teacher[name] = torch.rand(n_per_task) if task.is_regression else torch.randn(n_per_task, task.num_labels)
    return StudentData(TASKS, train, {}, teacher_outputs=teacher, label_means={"STS-B": 0.5}), 30522


def real_data(data_dir: str, tokenizer_dir: str, n_per_task: int) -> tuple[StudentData, int]:
    """Real GLUE training examples, tokenised; teacher outputs random (their values cost nothing)."""
    from bornagain_kd.glue.data import load_split, subsample_examples
    from bornagain_kd.glue.tokenization import encode_examples, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    train, teacher = {}, {}
    for name in TASKS:
        task = get_task(name)
        examples = subsample_examples(load_split(task, "train", data_dir=data_dir), n_per_task, seed=0,
                                      is_regression=task.is_regression)
        train[name] = encode_examples(task, examples, tokenizer, 128)
        n = len(examples)
        teacher[name] = torch.rand(n) if task.is_regression else torch.randn(n, task.num_labels)
    return StudentData(TASKS, train, {}, teacher_outputs=teacher, label_means={"STS-B": 0.5}), tokenizer.vocab_size


SETTINGS = EngineSettings(device=torch.device("cpu"), max_grad_norm=1.0, progress=False, trackers=())


def run_steps(model, optimizer, scheduler, data, batches, arm: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for the training steps of ``batches`` (teacher outputs
    looked up per batch, as in training)."""
    setup = StudentSetup(arm=arm, seed=0, bam=BamConfig(batch_size=len(batches[0]), epochs=1.0), optim_cfg=OptimConfig(),
                         train_cfg=NlpTrainConfig(), device=torch.device("cpu"), pad_token_id=0)
    task = StudentTask(data, setup)
    started, cpu_started = time.perf_counter(), time.process_time()
    for k, triples in enumerate(batches):
        train_step(model, task, triples, k, optimizer, scheduler, SETTINGS)
    return time.perf_counter() - started, time.process_time() - cpu_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("BORNAGAIN_GLUE_DIR"))
    parser.add_argument("--tokenizer", default=os.environ.get("BORNAGAIN_TOKENIZER_DIR"))
    parser.add_argument("--examples-per-task", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir and args.tokenizer:
        data, vocab = real_data(args.data_dir, args.tokenizer, args.examples_per_task)
        source = f"GLUE {args.data_dir}"
    else:
        data, vocab = synthetic_data(args.examples_per_task)
        source = "synthetic GLUE-like sequences"
    torch.manual_seed(0)
    models = {"annealed": tiny_bert(vocab, TASKS)}
    models["labels"] = copy.deepcopy(models["annealed"])
    total = args.rounds * args.steps_per_round
    opt = {arm: build_optimizer(m, OptimConfig(lr=1e-4)) for arm, m in models.items()}
    sched = {arm: build_scheduler(o, total_steps=total, warmup_fraction=0.1) for arm, o in opt.items()}
    plan = plan_epoch(data.task_sizes, 0.75, args.batch_size, seed=0, epoch=0)
    batches = [plan.batch(i % plan.num_batches) for i in range(total + args.steps_per_round)]
    for arm in models:  # warm-up round, not timed (allocator, first-call overheads)
        run_steps(models[arm], opt[arm], sched[arm], data, batches[:2], arm)
    seconds = {"annealed": 0.0, "labels": 0.0}
    cpu_seconds = {"annealed": 0.0, "labels": 0.0}
    round_ratios = []
    for r in range(args.rounds):
        chunk = batches[r * args.steps_per_round:(r + 1) * args.steps_per_round]
        spent = {}
        for arm in (("annealed", "labels") if r % 2 == 0 else ("labels", "annealed")):
            spent[arm], cpu = run_steps(models[arm], opt[arm], sched[arm], data, chunk, arm)
            seconds[arm] += spent[arm]
            cpu_seconds[arm] += cpu
        round_ratios.append(spent["labels"] / spent["annealed"])  # throughput ratio of this round
    examples = sum(len(b) for b in batches[:total])
    print(f"data: {source}; BERT-Tiny from scratch; batch {args.batch_size}; {total} steps per arm; "
          f"torch threads {torch.get_num_threads()}")
    for arm in ("annealed", "labels"):
        print(f"{arm:>9}: {examples / seconds[arm]:8.1f} examples/s ({seconds[arm]:.2f} s wall, "
              f"{cpu_seconds[arm]:.2f} s CPU)")
    ratio = seconds["labels"] / seconds["annealed"]
    q1, median, q3 = np.percentile(round_ratios, [25, 50, 75])
    print(f"throughput ratio annealed / labels: median over {args.rounds} rounds {median:.3f} "
          f"(quartiles {q1:.3f}-{q3:.3f}); summed wall times {ratio:.3f}; "
          f"CPU times {cpu_seconds['labels'] / cpu_seconds['annealed']:.3f}; target within 0.95-1.05")


if __name__ == "__main__":
    main()
