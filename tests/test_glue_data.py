"""GLUE loading: the real TSV quirks (on small files written here), stable ids, subsampling, hub path."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from bornagain_kd.errors import UserError
from bornagain_kd.glue import data as glue_data
from bornagain_kd.glue.data import load_hub_split, load_split, read_glue_tsv, subsample_examples
from bornagain_kd.glue.tasks import GLUE_TASKS, get_task


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_cola_has_no_header_row_and_keeps_its_first_example(tmp_path):
    write(tmp_path / "CoLA" / "train.tsv",
          "gj04\t1\t\tOur friends won't buy this analysis.\n"
          "gj04\t0\t*\tOne more pseudo generalization or I'm giving up.\n")
    examples = load_split("CoLA", "train", data_dir=tmp_path)
    assert [e.text_a for e in examples] == ["Our friends won't buy this analysis.",
                                            "One more pseudo generalization or I'm giving up."]
    assert [e.label for e in examples] == [1, 0]
    assert [e.id for e in examples] == ["CoLA/train/0", "CoLA/train/1"]
    assert examples[0].text_b is None


def test_cola_test_file_has_a_header_and_no_labels(tmp_path):
    write(tmp_path / "CoLA" / "test.tsv", "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked.\n")
    examples = load_split("CoLA", "test", data_dir=tmp_path)
    assert [(e.index, e.label) for e in examples] == [(0, None), (1, None)]
    assert examples[1].text_a == "The car honked."


def test_mrpc_byte_order_mark_and_quotes(tmp_path):
    # A CSV reader would treat `"` as a quote and swallow the tab and the next field.
    write(tmp_path / "MRPC" / "train.tsv",
          "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
          '1\t702876\t702977\tHe called " the witness " a liar .\tReferring to him as " the witness " .\n'
          '0\t2108705\t2108831\t" Quoted start\tAn odd " single quote\n')
    assert (tmp_path / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    examples = load_split("MRPC", "train", data_dir=tmp_path)
    assert len(examples) == 2
    assert examples[0].text_a == 'He called " the witness " a liar .'
    assert examples[0].text_b == 'Referring to him as " the witness " .'
    assert examples[1].text_a == '" Quoted start' and examples[1].text_b == 'An odd " single quote'
    assert [e.label for e in examples] == [1, 0]


def test_mrpc_test_file_uses_its_index_column(tmp_path):
    write(tmp_path / "MRPC" / "test.tsv",
          "\ufeffindex\t#1 ID\t#2 ID\t#1 String\t#2 String\n7\t1\t2\tA .\tB .\n3\t4\t5\tC .\tD .\n")
    examples = load_split("MRPC", "test", data_dir=tmp_path)
    assert [e.id for e in examples] == ["MRPC/test/7", "MRPC/test/3"]
    assert all(e.label is None for e in examples)


def test_stsb_scores_are_floats_and_rte_labels_are_names(tmp_path):
    write(tmp_path / "STS-B" / "dev.tsv",
          "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
          "0\tg\tf\t2012\t0\tnone\tnone\tA man.\tA person.\t3.800\n")
    assert load_split("STS-B", "dev", data_dir=tmp_path)[0].label == pytest.approx(3.8)
    write(tmp_path / "RTE" / "dev.tsv",
          "index\tsentence1\tsentence2\tlabel\n0\tP.\tH.\tnot_entailment\n1\tP2.\tH2.\tentailment\n")
    assert [e.label for e in load_split("RTE", "dev", data_dir=tmp_path)] == [1, 0]  # `datasets` order


def test_mnli_matched_dev_and_qqp_malformed_row(tmp_path):
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse"
              "\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
    write(tmp_path / "MNLI" / "dev_matched.tsv",
          header + "0\t1\t1n\tgov\tx\tx\tx\tx\tThe cat sat.\tA cat.\tneutral\tneutral\n"
                   "1\t2\t2c\tgov\tx\tx\tx\tx\tIt rains.\tIt is dry.\tcontradiction\tcontradiction\n")
    mnli = load_split("MNLI", "dev_matched", data_dir=tmp_path)
    assert [e.label for e in mnli] == [1, 2] and mnli[0].id == "MNLI/dev_matched/0"
    write(tmp_path / "QQP" / "train.tsv",
          "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
          "5\t1\t2\tHow?\tWhy?\t0\n"
          "6\t3\t4\tA truncated row\n"  # real QQP has a few of these
          "9\t5\t6\tWhat?\tWhat is it?\t1\n")
    with pytest.warns(UserWarning, match="skipped 1 malformed row"):
        qqp = load_split("QQP", "train", data_dir=tmp_path)
    assert [(e.id, e.label) for e in qqp] == [("QQP/train/5", 0), ("QQP/train/9", 1)]


def test_bad_files_raise_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_split("RTE", "train", data_dir=tmp_path)
    with pytest.raises(UserError, match="glue.data_dir"):
        load_split("RTE", "train", data_dir=None)
    write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tP.\tH.\tmaybe\n")
    with pytest.raises(UserError, match="'maybe' is not one of"):
        load_split("RTE", "train", data_dir=tmp_path)
    write(tmp_path / "SST-2" / "train.tsv", "text\tlabel\nfoo\t1\n")
    with pytest.raises(UserError, match="no column"):
        load_split("SST-2", "train", data_dir=tmp_path)
    with pytest.raises(UserError, match="unknown GLUE task"):
        get_task("SQuAD")


def test_ids_are_stable_across_reads_and_unique(tmp_path):
    text = "sentence\tlabel\n" + "".join(f"sentence number {i}\t{i % 2}\n" for i in range(20))
    path = write(tmp_path / "SST-2" / "train.tsv", text)
    first = [e.id for e in read_glue_tsv("SST-2", path, "train")]
    assert first == [e.id for e in read_glue_tsv("SST-2", path, "train")]
    assert len(set(first)) == 20


def test_subsample_is_seeded_stratified_and_keeps_ids(tmp_path):
    text = "sentence\tlabel\n" + "".join(f"s{i}\t{int(i % 4 == 0)}\n" for i in range(400))  # 25% positive
    examples = load_split("SST-2", "train", data_dir=write(tmp_path / "SST-2" / "train.tsv", text).parents[1])
    a = subsample_examples(examples, 40, seed=1, is_regression=False)
    assert len(a) == 40 and Counter(e.label for e in a) == {0: 30, 1: 10}
    assert [e.id for e in a] == [e.id for e in subsample_examples(examples, 40, seed=1, is_regression=False)]
    assert [e.id for e in a] != [e.id for e in subsample_examples(examples, 40, seed=2, is_regression=False)]
    positions = [examples.index(e) for e in a]
    assert positions == sorted(positions)  # original order kept
    assert subsample_examples(examples, None, seed=0, is_regression=False) == examples


def test_hub_loader_monkeypatched(monkeypatch):
    calls = []

    def fake_loader(name, split):
        calls.append((name, split))
        if name == "stsb":
            return [{"sentence1": "A b.", "sentence2": "C d.", "label": 4.2, "idx": 0}]
        return [{"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
                {"premise": "P2.", "hypothesis": "H2.", "label": -1, "idx": 1}]

    monkeypatch.setattr(glue_data, "_load_hub_dataset", fake_loader)
    mnli = load_split("MNLI", "dev_mismatched", data_dir=None, source="hub")
    assert calls[-1] == ("mnli", "validation_mismatched")
    assert [(e.id, e.text_a, e.text_b, e.label) for e in mnli] == [
        ("MNLI/dev_mismatched/0", "P.", "H.", 2), ("MNLI/dev_mismatched/1", "P2.", "H2.", None)]
    sts = load_hub_split("STS-B", "dev")
    assert calls[-1] == ("stsb", "validation") and sts[0].label == pytest.approx(4.2)


def test_hub_without_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match="pip install"):
        load_split("RTE", "train", data_dir=None, source="hub")


def test_task_table_is_consistent():
    assert set(GLUE_TASKS) == {"CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI"}
    assert get_task("sst2").name == "SST-2" and get_task("STSB").is_regression
    assert get_task("MNLI").num_labels == 3 and get_task("STS-B").num_labels == 1
    assert get_task("MNLI").score_keys == ("accuracy_m", "accuracy_mm")
    for task in GLUE_TASKS.values():
        assert len(task.submission_files) == len(task.test_splits)
        assert len(task.hub_text_columns) == len(task.text_columns)


@pytest.mark.data
def test_real_glue_files_load_with_the_documented_counts(shared_data):
    counts = {"CoLA": (8551, 1043), "SST-2": (67349, 872), "MRPC": (3667, 408), "STS-B": (5749, 1500),
              "RTE": (2490, 277), "WNLI": (635, 71)}
    for name, (n_train, n_dev) in counts.items():
        root = shared_data / "glue"
        assert len(load_split(name, "train", data_dir=root)) == n_train
        dev = load_split(name, "dev", data_dir=root)
        assert len(dev) == n_dev and all(e.label is not None for e in dev)
        assert all(e.label is None for e in load_split(name, "test", data_dir=root))
