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


def write_tiny_encoder(root: Path, num_hidden_layers: int = 1, max_position_embeddings: int = 64) -> Path:
    """A directory holding a tiny BERT config.json and a WordPiece vocabulary (tokenizer files)."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    config = {
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(vocab), "hidden_size": 16,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": max_position_embeddings,
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


def write_tiny_pretrained_encoder(root: Path, max_position_embeddings: int = 128, seed: int = 0) -> Path:
    """`write_tiny_encoder` plus random weights saved as a Hugging Face checkpoint (model.safetensors), so a
    recipe with encoder.from_scratch=false loads them as it would load bert-base-uncased."""
    import torch  # noqa: PLC0415
    from transformers import AutoConfig, AutoModel  # noqa: PLC0415

    write_tiny_encoder(root, max_position_embeddings=max_position_embeddings)
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(root)).save_pretrained(root, safe_serialization=True)
    return root


# The classic GLUE TSV layouts of every task (write_glue_tasks). Test files have no label column, as the real ones.
def _labelled(task: str, i: int, rng: np.random.Generator) -> tuple[str, list[str]]:
    """(label as the TSV spells it, texts) of example i of ``task``."""
    if task == "STS-B":
        score = 5.0 * (i % 6) / 5
        return f"{score:.3f}", [_sentence(rng, score > 2.5), _sentence(rng, True)]
    if task == "MNLI":
        label = ("entailment", "neutral", "contradiction")[i % 3]
        return label, [_sentence(rng, True), _sentence(rng, label == "entailment")]
    if task in ("QNLI", "RTE"):
        label = ("entailment", "not_entailment")[i % 2]
        return label, [_sentence(rng, True), _sentence(rng, label == "entailment")]
    label = i % 2
    texts = [_sentence(rng, bool(label))] + ([] if task in ("CoLA", "SST-2") else [_sentence(rng, True)])
    return str(label), texts


def _glue_rows(task: str, split: str, n: int, rng: np.random.Generator) -> list[str]:
    test = split.startswith("test")
    lines = []
    for i in range(n):
        label, texts = _labelled(task, i, rng)
        a, b = texts[0], texts[-1]
        if task == "CoLA":
            lines.append(f"{i}\t{a}" if test else f"src\t{label}\t\t{a}")
        elif task == "SST-2":
            lines.append(f"{i}\t{a}" if test else f"{a}\t{label}")
        elif task == "MRPC":
            lines.append(f"{i}\t{i}\t{i + 1000}\t{a}\t{b}" if test else f"{label}\t{i}\t{i + 1000}\t{a}\t{b}")
        elif task == "STS-B":
            lines.append(f"{i}\tg\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}" + ("" if test else f"\t{label}"))
        elif task == "QQP":
            lines.append(f"{i}\t{a}\t{b}" if test else f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{label}")
        elif task == "MNLI":
            lines.append(f"{i}\t{i}\t{i}n\tfiction\t{a}\t{b}" + ("" if test else f"\t{label}\t{label}"))
        else:  # QNLI, RTE, WNLI: index, two texts, label
            lines.append(f"{i}\t{a}\t{b}" + ("" if test else f"\t{label}"))
    return lines


_GLUE_HEADERS = {
    "CoLA": (None, "index\tsentence"),
    "SST-2": ("sentence\tlabel", "index\tsentence"),
    "MRPC": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", "\ufeffindex\t#1 ID\t#2 ID\t#1 String\t#2 String"),
    "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
              "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"),
    "QQP": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "id\tquestion1\tquestion2"),
    "MNLI": ("index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label",
             "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2"),
    "QNLI": ("index\tquestion\tsentence\tlabel", "index\tquestion\tsentence"),
    "RTE": ("index\tsentence1\tsentence2\tlabel", "index\tsentence1\tsentence2"),
    "WNLI": ("index\tsentence1\tsentence2\tlabel", "index\tsentence1\tsentence2"),
}


def write_glue_tasks(root: Path, tasks, n_train: int = 16, n_dev: int = 8, n_test: int = 0, seed: int = 0) -> Path:
    """Any GLUE tasks in their classic TSV layouts (CoLA headerless, MRPC with a byte-order mark, MNLI with
    matched and mismatched dev and test files); test files (no labels) when ``n_test`` > 0."""
    from bornagain_kd.glue.tasks import get_task  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    for name in tasks:
        task = get_task(name)
        folder = root / task.name
        folder.mkdir(parents=True, exist_ok=True)
        header, test_header = _GLUE_HEADERS[task.name]
        splits = [("train", n_train, header)] + [(s, n_dev, header) for s in task.dev_splits]
        splits += [(s, n_test, test_header) for s in task.test_splits] if n_test else []
        for split, n, head in splits:
            lines = ([head] if head else []) + _glue_rows(task.name, split, n, rng)
            (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
