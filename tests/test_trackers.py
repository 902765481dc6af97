"""`train.trackers`: tiny `bornagain ban` runs logged to MLflow (a SQLite store beside the runs) and to W&B
(offline), read back with each library's own client or record format; the old `train.tensorboard` key."""

import json
import struct
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from bornagain_kd.cli import main
from bornagain_kd.config import config_to_dict, load_config, recorded_config
from bornagain_kd.errors import RenamedKeyWarning
from bornagain_kd.vision.config import VisionConfig

TINY = ["train.epochs=2", "model.name=resnet-8", "train.batch_size=64", "train.progress=false",
        "train.num_threads=1", "data.train_subset=200", "data.val_size=50"]


@pytest.mark.slow
def test_mlflow_gets_one_run_per_training_run_nested_under_the_command(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "seq"
    args = ["ban", "--output", str(out), *TINY, "ban.generations=1", "train.trackers=[tensorboard,mlflow]"]
    assert main(args) == 0
    assert (out / "mlflow.db").is_file() and list((out / "gen1" / "tb").iterdir())  # TensorBoard as before
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bornagain")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    command = "/".join(out.parts[-2:])  # the command's run: named by its output folder
    assert set(runs) == {command, "gen0", "gen1"}
    parent = runs[command]
    for name in ("gen0", "gen1"):
        child = runs[name]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.params["train.epochs"] == "2" and child.data.params["model.name"] == "resnet-8"
        records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        history = client.get_metric_history(child.info.run_id, "train_loss")
        assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["train_loss"])) for r in records]
        results = json.loads((out / name / "results.json").read_text())
        assert child.data.metrics["results/test_error"] == pytest.approx(results["test_error"])
        files = {f.path for f in client.list_artifacts(child.info.run_id)}
        assert {"results.json", "config.yaml"} <= files and not any(f.endswith(".safetensors") for f in files)
    assert parent.data.params["ban.generations"] == "1" and parent.info.status == "FINISHED"
    assert {"results.json", "table.md", "table.csv", "generations.png"} <= {
        f.path for f in client.list_artifacts(parent.info.run_id)}
    assert runs["gen1"].data.params["ban.generations"] == "1"  # every run carries its resolved config
    # --resume of the finished sequence: nothing retrained, the same tracker runs (no new ones)
    assert main([*args, "--resume"]) == 0
    assert len(client.search_runs([experiment.experiment_id])) == 3


def _wandb_records(path: Path):
    """The protobuf records of a .wandb file. wandb >= 0.2x dropped its Python reader (the Go core writes the
    file) and an offline run no longer writes config.yaml or wandb-summary.json, so the file's framing (LevelDB's
    log format: 32 KiB blocks of chunks with a 7-byte header, after a 7-byte file header) is read here."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, chunk = path.read_bytes(), 32768, 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:
            pos += left - 7
            continue
        chunk += raw[pos:pos + length]
        pos += length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def _wandb_run(run_dir: Path) -> dict:
    """name, group, job type, config, summary and history of one offline run."""
    out = {"config": {}, "summary": {}, "history": []}
    for record in _wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(name=record.run.display_name, group=record.run.run_group, job_type=record.run.job_type)
            out["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "summary":
            out["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                                   for u in record.summary.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "artifact":
            out.setdefault("artifacts", []).append(sorted(c.path for c in record.artifact.manifest.contents))
    return out


@pytest.mark.slow
def test_wandb_offline_gets_one_run_per_training_run_in_the_commands_group(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    out = tmp_path / "seq"
    assert main(["ban", "--output", str(out), *TINY, "ban.generations=0", "train.trackers=[wandb]"]) == 0
    wandb.teardown()  # W&B's service writes the files behind the runs: done when it stops (at exit, for a command)
    assert not (out / "gen0" / "tb").exists()  # tensorboard not asked for
    runs = {r["name"]: r for r in map(_wandb_run, (tmp_path / "wb" / "wandb").glob("offline-run-*"))}
    command = "/".join(out.parts[-2:])
    assert set(runs) == {"gen0", command}
    group = json.loads((out / "trackers.json").read_text())["wandb_group"]
    assert runs["gen0"]["group"] == runs[command]["group"] == group
    assert (runs["gen0"]["job_type"], runs[command]["job_type"]) == ("train", "command")
    gen0 = runs["gen0"]
    assert gen0["config"]["train"]["epochs"] == 2 and gen0["config"]["model"]["name"] == "resnet-8"
    records = [json.loads(line) for line in (out / "gen0" / "metrics.jsonl").read_text().splitlines()]
    logged = [h for h in gen0["history"] if "train_loss" in h]
    assert [(h["_step"], h["train_loss"]) for h in logged] == [(r["step"], pytest.approx(r["train_loss"]))
                                                                for r in records]
    results = json.loads((out / "gen0" / "results.json").read_text())
    assert gen0["summary"]["results/test_error"] == pytest.approx(results["test_error"])
    assert "results.json" in gen0["artifacts"][0] and "table.md" in runs[command]["artifacts"][0]


def test_a_missing_tracker_library_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python spells "not installed" for one import
    out = tmp_path / "never"
    assert main(["ban", "--output", str(out), *TINY, "train.trackers=[wandb]"]) == 2
    assert 'pip install "bornagain-kd[wandb]"' in capsys.readouterr().err
    assert not out.exists()


def test_wandb_online_without_credentials_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: nobody logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "never"
    assert main(["ban", "--output", str(out), *TINY, "train.trackers=[wandb]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bornagain: error: train.trackers has wandb, but W&B has no credentials here")
    assert "WANDB_MODE=offline" in err[-1] and "epoch" not in "".join(err)  # before any training
    assert not out.exists()


def test_the_old_tensorboard_key_maps_to_trackers_and_old_runs_still_read(tmp_path):
    with pytest.warns(RenamedKeyWarning, match="'train.tensorboard' is now 'train.trackers'"):
        assert load_config(VisionConfig, None, ["train.tensorboard=false"]).train.trackers == ()
    with pytest.warns(RenamedKeyWarning):
        assert load_config(VisionConfig, None, ["train.tensorboard=true"]).train.trackers == ("tensorboard",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(VisionConfig).train.trackers == ("tensorboard",)  # the default: as before
    # a config.yaml recorded before the rename is read back, and its run still continues with either value
    from bornagain_kd.pipelines.ban import check_output_dir

    fixed = ["train.precision=fp32", "train.channels_last=false", "train.compile=false",  # nothing left to resolve
             "train.last_batch=fill"]  # (a record holds values: a recorded `auto` now counts as none, i.e. fill)
    cfg = load_config(VisionConfig, None, [f"output_dir={tmp_path}", *fixed])
    old = config_to_dict(cfg)
    old["train"]["tensorboard"] = old["train"].pop("trackers") == ["tensorboard"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert recorded_config(VisionConfig, old).train.trackers == ("tensorboard",)
    check_output_dir(tmp_path, cfg, resume=True)
    check_output_dir(tmp_path, load_config(VisionConfig, None, [*fixed, "train.trackers=[mlflow]"]), resume=True)


@pytest.mark.parametrize("bad", [["ban.teacher_run=NOWHERE"], ["ban.teacher_run=NOWHERE/seed-{seed}", "ban.seeds=[0]"],
                                 ["data.name=imagefolder", "data.root=NOWHERE"]])
def test_a_command_refused_by_its_own_checks_leaves_nothing_with_trackers_on(tmp_path, monkeypatch, capsys, bad):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "seq"
    args = ["ban", "--output", str(out), *TINY, "train.trackers=[tensorboard,mlflow]",
            *[b.replace("NOWHERE", str(tmp_path / "nowhere")) for b in bad]]
    assert main(args) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not out.exists()  # no mlflow.db, no trackers.json: the same command, fixed, starts afresh


def test_a_tracker_that_fails_mid_run_warns_once_and_the_run_finishes(tmp_path, monkeypatch, capsys):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log_batch = mlflow.MlflowClient.log_batch

    def store_gone(self, run_id, metrics=(), **kwargs):  # the parameters reach the store, then it goes away
        if metrics:
            raise mlflow.exceptions.MlflowException("database is locked")
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", store_gone)
    out = tmp_path / "run"
    assert main(["train", "--output", str(out), *TINY, "train.trackers=[mlflow]"]) == 0
    assert (out / "results.json").is_file()
    warnings_ = [line for line in capsys.readouterr().err.splitlines() if "mlflow failed" in line]
    assert len(warnings_) == 1 and "MlflowException: database is locked" in warnings_[0]
    run = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_experiment_by_name("bornagain").experiment_id])[0]
    assert run.info.status == "FINISHED"  # still closed at the end


def test_a_run_resumed_without_its_tracking_uri_continues_in_the_store_it_recorded(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from bornagain_kd.engine.trackers import command_run

    store = f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}"
    (tmp_path / "sweep").mkdir()
    out = tmp_path / "sweep" / "point" / "seed-0"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # as a sweep runs it
    with command_run(out, ["mlflow"], params={"seed": 0}, enabled=True):
        pass
    first = json.loads((out / "trackers.json").read_text())["mlflow"]["run_id"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # resumed by hand
    with command_run(out, ["mlflow"], params={"seed": 0}, enabled=True):
        pass
    assert json.loads((out / "trackers.json").read_text())["mlflow"]["run_id"] == first
    assert not (out / "mlflow.db").exists()
    assert len(mlflow.MlflowClient(store).search_runs([mlflow.MlflowClient(store).get_experiment_by_name(
        "bornagain").experiment_id])) == 1
