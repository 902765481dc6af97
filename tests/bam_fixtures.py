"""A tiny GLUE folder, tokenizer and encoder config written by the tests themselves (no shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = "the a man woman dog cat is was runs sleeps eats big small red blue good bad happy sad not very".split()


def _sentence(rng: np.random.Generator, good: bool) -> str:
    words = list(rng.choice(WORDS, size=int(rng.integers(3, 8))))
    return " ".join(words + (["good"] if good else ["bad"]))


def write_tiny_glue(root: Path, n_train: int = 24, n_dev: int = 12, seed: int = 0) -> Path:
    """CoLA (headerless), MRPC (byte-order mark), STS-B (regression) in the classic TSV layout."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        cola = []
        for i in range(n):
            label = i % 2
            cola.append(f"src\t{label}\t\t{_sentence(rng, bool(label))}")
        (root / "CoLA").mkdir(parents=True, exist_ok=True)
        (root / "CoLA" / f"{split}.tsv").write_text("\n".join(cola) + "\n", encoding="utf-8")
        mrpc = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            label = i % 2
            mrpc.append(f"{label}\t{i}\t{i + 1000}\t{_sentence(rng, bool(label))}\t{_sentence(rng, True)}")
        (root / "MRPC").mkdir(parents=True, exist_ok=True)
        (root / "MRPC" / f"{split}.tsv").write_text("\n".join(mrpc) + "\n", encoding="utf-8")
        sts = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        for i in range(n):
            score = 5.0 * (i % 6) / 5
            sts.append(f"{i}\tg\tf\t2012\t{i}\tnone\tnone\t{_sentence(rng, score > 2.5)}\t{_sentence(rng, True)}\t{score:.3f}")
        (root / "STS-B").mkdir(parents=True, exist_ok=True)
        (root / "STS-B" / f"{split}.tsv").write_text("\n".join(sts) + "\n", encoding="utf-8")
    return root


def write_tiny_encoder(root: Path, num_hidden_layers: int = 1) -> Path:
    """A directory holding a tiny BERT config.json and a WordPiece vocabulary (tokenizer files)."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    config = {
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(vocab), "hidden_size": 16,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64,
        "type_vocab_size": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
    }
    (root / "config.json").write_text(json.dumps(config))
    return root


def tiny_overrides(data_dir: Path, encoder_dir: Path) -> list[str]:
    """Config overrides for a seconds-long CPU run of the whole BAM pipeline."""
    return [
        f"glue.data_dir={data_dir}", "glue.tasks=[CoLA,MRPC,STS-B]", f"encoder.name_or_path={encoder_dir}",
        "encoder.from_scratch=true", "max_seq_length=32", "train.epochs=1", "train.batch_size=8",
        "bam.batch_size=8", "bam.epochs=1", "bam.seeds=[0,1]", "train.device=cpu", "train.progress=false", "train.num_threads=1",
        "optim.lr=0.001", "bam.lr=0.001",
    ]
