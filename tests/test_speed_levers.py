"""The speed levers keep results honest: no host reads per training step, a prepared (folded) teacher
that gives the unprepared teacher's outputs, torch.compile with an eager fallback."""

import collections
import json
import sys
import traceback
from pathlib import Path

import pytest
import torch

from bornagain_kd.config import load_config
from bornagain_kd.models import create_model
from bornagain_kd.models.fold import count_batch_norms, fold_batch_norms
from bornagain_kd.vision.config import VisionConfig

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")


@pytest.fixture
def count_reads(monkeypatch):
    """Counts reads of tensor values into Python (each one a host synchronisation on a GPU) made while
    training: evaluation and the finish step, which read by design, are not counted."""
    counts = collections.Counter()
    paused = [False]
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, _name=name, **k):
            caller = traceback.extract_stack(limit=2)[0].filename
            # Hugging Face's BERT reads its attention mask once per forward (masking_utils: mask.all()) to pick
            # an attention kernel: the model library's read, not the training loop's.
            if not paused[0] and "transformers" not in caller:
                counts[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)

    def pause(cls, method):
        original = getattr(cls, method)

        def wrapped(*a, **k):
            paused[0] = True
            try:
                return original(*a, **k)
            finally:
                paused[0] = False

        monkeypatch.setattr(cls, method, wrapped)

    return counts, pause


def _run_ban(out: Path, *overrides: str) -> dict:
    from bornagain_kd.pipelines.ban import run_ban

    cfg = load_config(VisionConfig, None, ["train.epochs=2", "ban.generations=1", "data.train_subset=384",
                                           "train.progress=false", "train.trackers=[]", "train.num_threads=1",
                                           "data.val_size=64", *overrides])
    return run_ban(cfg, out, resume=False)


def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, count_reads):
    import bornagain_kd.pipelines.ban as ban
    from bornagain_kd.pipelines.classifier import ClassifierTask

    counts, pause = count_reads
    pause(ban, "summarize")  # the ensembles' metrics, after training
    pause(ban, "plot_run")  # the reliability diagrams read the saved test probabilities, after training
    pause(ban, "prepare_data")  # splits and checks, before training
    pause(ClassifierTask, "evaluate")
    pause(ClassifierTask, "finish")
    pause(ClassifierTask, "__init__")  # data checks before training
    reads = {}
    for batch in (64, 16):  # 5 and 20 steps per epoch
        counts.clear()
        _run_ban(tmp_path / f"b{batch}", f"train.batch_size={batch}")
        reads[batch] = sum(counts.values())
    # Per epoch and run, never per step: the epoch record's one reduction and the finite-loss check.
    assert reads[16] == reads[64] == 2 * 2 * 2, reads  # 2 runs x 2 epochs x 2 reads


def test_step_records_are_read_in_batches(tmp_path, count_reads):
    """The BAM student logs every step, yet reads the device once per 32 records (plus once per epoch)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bam_student import fake_data, tiny_model

    from bornagain_kd.glue.bam_config import BamConfig
    from bornagain_kd.glue.config import NlpTrainConfig, OptimConfig
    from bornagain_kd.pipelines.bam_student import StudentSetup, StudentTask, train_student

    counts, pause = count_reads
    pause(StudentTask, "evaluate")
    pause(StudentTask, "finish")
    torch.set_num_threads(1)
    bam = BamConfig(batch_size=2, epochs=2.0)
    setup = StudentSetup(arm="annealed", seed=0, bam=bam, optim_cfg=OptimConfig(lr=1e-3),
                         train_cfg=NlpTrainConfig(progress=False, trackers=()), device=torch.device("cpu"))
    train_student(tiny_model(), fake_data(), setup, run_dir=tmp_path / "s", resume=False)
    records = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "lambda" in r]
    assert len(steps) >= 40 and all(isinstance(r["loss"], float) for r in steps)
    epochs = len(records) - len(steps)
    assert sum(counts.values()) <= len(steps) // 32 * 2 + epochs * 4, (counts, len(steps))


@pytest.mark.parametrize("name,folds", [("resnet-20", 19), ("densenet-bc-28-12", 12), ("wrn-16-4", 0)])
def test_a_prepared_teacher_gives_the_same_outputs(name, folds):
    """Folding is exact in real arithmetic; in fp32 the outputs agree to 1e-4 (measured about 1e-6)."""
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    with torch.no_grad():  # trained-looking statistics, so that folding has something to do
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    before = count_batch_norms(model)
    folded, n = fold_batch_norms(model)
    assert n == folds and count_batch_norms(model) == before  # the original is left as it was
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - folded(x)).abs().max() < 1e-4
    assert not any(p.requires_grad for p in folded.parameters())


def test_teacher_precision_and_folding_are_recorded(tmp_path):
    _run_ban(tmp_path / "run", "train.epochs=1", "ban.teacher_precision=bf16")
    gen1 = json.loads((tmp_path / "run" / "gen1" / "results.json").read_text())
    assert gen1["teacher_batch_norms_folded"] == 7 and gen1["teacher_precision"] == "bf16"  # resnet-8: every BN


def test_compile_falls_back_to_eager_with_one_line(tmp_path, monkeypatch, capsys):
    import bornagain_kd.engine.compile as compile_module

    monkeypatch.setattr(compile_module, "compile_unavailable", lambda: "CalledProcessError: no C++ compiler")
    _run_ban(tmp_path / "run", "train.epochs=1", "ban.generations=0", "train.compile=true")
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "train.compile" in line]) == 1
    assert "training eagerly" in err[0] and "no C++ compiler" in err[0]
    assert "compile_seconds" not in json.loads((tmp_path / "run" / "gen0" / "results.json").read_text())


def test_compiled_training_reports_its_compile_time_apart(tmp_path):
    from bornagain_kd.engine.compile import compile_unavailable

    if compile_unavailable():
        pytest.skip(f"torch.compile cannot run here: {compile_unavailable()}")
    args = ("train.epochs=1", "ban.generations=0", "model.name=resnet-8", "data.train_subset=256")
    _run_ban(tmp_path / "eager", *args)
    _run_ban(tmp_path / "compiled", *args, "train.compile=true")
    r = json.loads((tmp_path / "compiled" / "gen0" / "results.json").read_text())
    assert r["compile_seconds"] > 0 and r["train_seconds"] > 0
    # Compiled kernels fuse and reorder float operations, so the run follows the eager one closely, not exactly.
    losses = [json.loads((tmp_path / d / "gen0" / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
              for d in ("eager", "compiled")]
    assert abs(losses[0] - losses[1]) < 0.02, losses


def test_bf16_on_a_cpu_without_bf16_instructions_warns_once(monkeypatch, capsys):
    import bornagain_kd.pipelines.common as common
    from bornagain_kd.glue.config import NlpTrainConfig

    monkeypatch.setattr(common, "native_bf16", lambda device: False)
    common._warn_once.cache_clear()
    threads = torch.get_num_threads()
    for _ in range(2):
        common.start_process(NlpTrainConfig(device="cpu", precision="bf16", num_threads=threads))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no bf16 instructions" in err[0] and "train.precision=fp32" in err[0]
    common.start_process(NlpTrainConfig(device="cpu", precision="fp32", num_threads=threads))
    assert capsys.readouterr().err == ""


def test_each_cpu_kernel_setting_compiles_into_a_kernel_cache_of_its_own():
    """TorchInductor's disk cache ignores ATEN_CPU_CAPABILITY; a kernel compiled under the default setting and
    loaded under avx2 crashed the test process (segmentation fault). A setting gets its own cache; a cache the
    user names, or no setting, is left alone."""
    from bornagain_kd.engine.compile import separate_kernel_cache

    env = {"ATEN_CPU_CAPABILITY": "avx2"}
    chosen = separate_kernel_cache(env)
    assert chosen is not None and chosen.endswith("_avx2") and env["TORCHINDUCTOR_CACHE_DIR"] == chosen
    assert separate_kernel_cache({"ATEN_CPU_CAPABILITY": "avx2", "TORCHINDUCTOR_CACHE_DIR": "/mine"}) is None
    assert separate_kernel_cache({}) is None
