"""A plain Hugging Face `Trainer` fine-tune of graft's packaged MiniLM on a text folder's train.csv
(the same 90% graft trains on), tested on its test.csv: the text anchor."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any


def hf_trainer(folder: Path, seed: int, epochs: int = 3, use_cpu: bool = True) -> dict[str, Any]:
    """A plain Hugging Face fine-tune of the packaged MiniLM: the usual Trainer recipe (bf16 where
    the device has it, off the CPU)."""
    started = time.perf_counter()
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from graft.backbones._text import packaged_minilm_folder
    from graft.data.splits import stratified_split
    from graft.data.text import read_text_data

    train_table = read_text_data(folder / "train.csv", ["text"], "label")
    test_table = read_text_data(folder / "test.csv", ["text"], "label")
    classes = sorted(set(train_table.labels))
    labels = np.array([classes.index(label) for label in train_table.labels])
    train_idx, _ = stratified_split(labels, 0.1, seed, "trec6")
    model_dir = str(packaged_minilm_folder())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(classes))

    class Texts(torch.utils.data.Dataset):
        def __init__(self, texts: list[str], ys: list[int]) -> None:
            self.enc = tokenizer(texts, truncation=True, max_length=128)
            self.ys = ys

        def __len__(self) -> int:
            return len(self.ys)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.ys[i]}

    train_set = Texts([train_table.texts[i] for i in train_idx], labels[train_idx].tolist())
    test_set = Texts(test_table.texts, [classes.index(label) for label in test_table.labels])
    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-trainer-"), num_train_epochs=epochs, learning_rate=2e-5,
        per_device_train_batch_size=16, per_device_eval_batch_size=64, seed=seed, report_to=[],
        save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=use_cpu,
        bf16=not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )  # fmt: skip
    trainer = Trainer(model=model, args=training, train_dataset=train_set, processing_class=tokenizer)
    trainer.train()
    predictions = trainer.predict(test_set)
    accuracy = float((predictions.predictions.argmax(1) == np.array(test_set.ys)).mean())
    return {"test_accuracy": accuracy, "wall_seconds": time.perf_counter() - started}
