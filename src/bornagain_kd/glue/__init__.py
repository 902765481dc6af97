"""GLUE with Hugging Face encoders: tasks, data, metrics, encoders, cache (the teachers and the BAM student are in pipelines/).

Public API (import from the submodules; this package imports nothing heavy itself)
--------------------------------------------------------------------------------
tasks.py
    GlueTask                      name, text_columns, tsv_labels, metrics, dev_splits, test_splits,
                                  is_regression, num_labels, is_pair, label_scale (STS-B 5.0),
                                  score_keys, metric_suffix(split)
    GLUE_TASKS: dict[str, GlueTask]  CoLA SST-2 MRPC STS-B QQP MNLI QNLI RTE WNLI
    BAM_TASKS                     the paper's 8 tasks (no WNLI)
    get_task(name) -> GlueTask    case-insensitive, "sst2" ok; UserError if unknown
config.py
    GlueExperimentConfig          seed, output_dir, max_seq_length, glue (GlueDataConfig), encoder
                                  (EncoderConfig), optim (OptimConfig), teacher (TeacherConfig),
                                  train (NlpTrainConfig: device, precision, progress, num_threads),
                                  bam (BamConfig from bam_config.py). Load with
                                  bornagain_kd.config.load_config(GlueExperimentConfig, path, overrides).
data.py
    GlueExample(id, index, text_a, text_b, label)   id = "<task>/<split>/<index>", stable;
                                  label: class index, raw score (STS-B 0..5) or None (test)
    load_split(task, split, *, data_dir, source="tsv") -> list[GlueExample]
                                  split: train | dev | test | dev_matched | dev_mismatched | ...
    has_split(task, split, *, data_dir, source) -> bool
    subsample_examples(examples, max_examples, *, seed, is_regression) -> list[GlueExample]
    load_train_examples(cfg, task) -> list[GlueExample]   (applies
                                  glue.max_train_examples with seed derive_seed(cfg.seed, "subsample", task):
                                  the student MUST use this to get the teachers' exact examples)
    majority_label(examples) -> int
tokenization.py
    load_tokenizer(name_or_path); tokenizer_fingerprint(tokenizer) -> str
    EncodedSplit(task, ids, input_ids, token_type_ids, labels)   labels: int64 class (-1 none) or
                                  float32 y / label_scale (NaN none)
    encode_examples(task, examples, tokenizer, max_seq_length) -> EncodedSplit
    collate(split, indices, pad_token_id) -> dict(input_ids, attention_mask, token_type_ids (b, t),
                                  labels (b,), index (b,) = positions in split)
    train_batch_indices(lengths, batch_size, *, seed, bucket=True) -> list[np.ndarray]
    eval_batch_indices(lengths, batch_size) -> list[np.ndarray]
metrics.py
    accuracy, f1, matthews_corr, pearson, spearman (pred, labels) -> float   (fractions, not %)
    predictions_from_outputs(task, outputs) -> argmax or regression values
    compute_metrics(task, pred, labels, suffix="") -> dict;  task_score(task, metrics) -> float
    glue_score({task: metrics}) -> float
model.py
    MultiTaskModel(encoder, heads: nn.ModuleDict)
        .forward(input_ids, attention_mask, token_type_ids, task) -> (b, num_labels) logits | (b,) regression
    build_model(cfg, tasks) -> MultiTaskModel     (seed torch before calling: from-scratch init is random)
    TaskHead(hidden, num_labels, *, regression, dropout)
optim.py
    layerwise_lr_groups(model, *, lr, layerwise_lr_decay, weight_decay) -> list[dict]  (any number of heads)
    parameter_depths(model) -> dict[name, depth]
    build_optimizer(model, optim_cfg, *, lr=None) -> AdamW     (lr=None -> optim_cfg.lr; student: cfg.bam.lr)
    build_scheduler(optimizer, *, total_steps, warmup_fraction) -> LambdaLR  (call .step() per optimizer step)
    clip_gradients(model, max_grad_norm) -> Tensor (norm before clipping)
cache.py
    dataset_fingerprint(examples, *, tokenizer_fingerprint, max_seq_length) -> str
    file_fingerprint(path) -> str;  prediction_fingerprint(dataset_fp, teacher_fp) -> str
    save_teacher_predictions(path, *, task, example_ids, outputs, fingerprint)
    load_teacher_predictions(path, *, task, expected_fingerprint, expected_ids=None) -> TeacherPredictions
    TeacherPredictions(task, example_ids, outputs, fingerprint).lookup(ids) -> Tensor
evaluation.py
    Predicting(device, precision="fp32", batch_size=128, pad_token_id=0)   how a split is predicted
    predict_outputs(model, split, task, how: Predicting, *, show_progress=False, dist=None)
                                  -> float32 CPU tensor (n, num_labels) | (n,), in split order, eval mode
                                  (dist: every rank predicts its share of the batches, all get all outputs)
    evaluate_dev(model, dev_splits: {split: EncodedSplit}, task, how: Predicting, *, dist=None)
                                  -> {metric: value, ..., "score": task score}
    majority_baseline(task, train_examples, {split: dev_examples}) -> dict
submission.py
    write_submission(path, task, test_examples, outputs) -> Path   GLUE-server TSV (index<TAB>prediction)
    submission_file_name(task, test_split="test") -> "CoLA.tsv", "MNLI-m.tsv", ...

The teachers and the BAM student that use this library are pipelines (pipelines/glue_teachers.py,
pipelines/bam.py, pipelines/bam_student.py); BAM's targets are in distill/bam_targets.py and its
tables in reports/bam_tables.py. A teacher's run directory, OUTPUT/teachers/<TASK>/, follows the
engine's contract (config.yaml, checkpoint.safetensors while unfinished, metrics.jsonl, tb/,
model.safetensors, results.json last) plus teacher_settings.json (what defines the teacher; compared
on reuse/resume), dev_metrics.json, train_predictions.safetensors (outputs on its own training set,
keyed by id) and submission/<FILE>.tsv.
"""
