"""`cxr train`: fine-tune (or train from scratch) a registry model on an archive's image-text pairs.

Output folder:
  checkpoint/      the best epoch by validation score, in the family's own checkpoint layout
                   (`make export MODEL=... CHECKPOINT=<out>/checkpoint`)
  state.pt         the last finished epoch (trained tensors, optimiser, schedule) for --resume
  history.jsonl    one line of validation metrics per epoch
  split.csv        which image went to train and which to validation (by patient)
  train_config.json

Deterministic on CPU for a given seed and thread count: every random draw of epoch e comes from
generators seeded with (seed, e), so a resumed run replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cxr.errors import CxrError
from cxr.registry import ModelSpec
from export.families import load_encoder
from training import data, validation
from training.config import TrainConfig
from training.dual_encoder import DualEncoder
from training.losses import LOSSES, pair_targets

STATE_FILE = "state.pt"
CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.jsonl"
CONFIG_FILE = "train_config.json"


def _seed_all(seed: int, epoch: int) -> np.random.Generator:
    torch.manual_seed(seed * 100_003 + epoch)  # torchvision's augmentations draw from torch's RNG
    return np.random.default_rng([seed, epoch])


class Trainer:
    def __init__(self, spec: ModelSpec, init_source: str, examples: list[data.Example], out: Path,
                 config: TrainConfig, log=print):
        self.spec, self.config, self.out, self.log = spec, config, out, log
        torch.use_deterministic_algorithms(True, warn_only=True)
        train, valid = data.split_by_patient(examples, config.valid_fraction, config.seed)
        self.train_pixels, self.train_examples = data.load_images(train, spec.image_size, "train images")
        self.valid_pixels, self.valid_examples = data.load_images(valid, spec.image_size, "valid images")
        out.mkdir(parents=True, exist_ok=True)
        data.write_split(out / "split.csv", self.train_examples, self.valid_examples)
        log(f"{len(self.train_examples)} train / {len(self.valid_examples)} validation images "
            f"(split by patient, seed {config.seed})")
        self.encoder = load_encoder(spec, init_source)
        self.model = DualEncoder(self.encoder, spec, config.text_tuning)
        self.loss = LOSSES[config.loss]()
        self.optimizer = torch.optim.AdamW(self.model.trainable_parameters() + list(self.loss.parameters()),
                                           lr=config.lr, weight_decay=config.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_examples) / config.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.augment = data.augmentation(spec.image_size) if config.augment else None
        self.epoch, self.best = 0, -math.inf

    def _lr_factor(self, step: int) -> float:
        warmup = self.config.warmup_epochs * self.steps_per_epoch
        total = self.config.epochs * self.steps_per_epoch
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    def fit(self) -> dict:
        """Train to `config.epochs`, validating each epoch; returns the best epoch's metrics."""
        if self.epoch == 0:
            (self.out / HISTORY_FILE).unlink(missing_ok=True)  # a run killed before its first epoch
            self._record(0, 0.0, validation.evaluate(self.model, self.valid_pixels, self.valid_examples))
        for epoch in range(self.epoch + 1, self.config.epochs + 1):
            started = time.perf_counter()
            train_loss = self._train_epoch(epoch)
            metrics = validation.evaluate(self.model, self.valid_pixels, self.valid_examples)
            metrics["seconds"] = round(time.perf_counter() - started, 2)
            self._record(epoch, train_loss, metrics)
            self.epoch = epoch
            self._save_state()
        return self.best_metrics()

    def _train_epoch(self, epoch: int) -> float:
        rng = _seed_all(self.config.seed, epoch)
        self.model.train()
        order = rng.permutation(len(self.train_examples))
        losses = []
        batches = [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
        for batch in tqdm(batches, desc=f"epoch {epoch}/{self.config.epochs}", unit="batch", leave=False):
            examples = [self.train_examples[i] for i in batch]
            pixels = self.train_pixels[batch]
            if self.augment is not None:
                pixels = torch.stack([self.augment(p) for p in pixels])
            image = self.model.embed_images(pixels.float())
            text = self.model.embed_texts([e.text(rng) for e in examples])
            loss = self.loss(image, text, pair_targets([e.keys for e in examples]))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def _record(self, epoch: int, train_loss: float, metrics: dict) -> None:
        line = {"epoch": epoch, "train_loss": round(train_loss, 5), **metrics}
        with (self.out / HISTORY_FILE).open("a") as f:
            f.write(json.dumps(line) + "\n")
        tasks = "  ".join(f"{name} mAP {task['mAP']:.3f}" for name, task in metrics.items() if isinstance(task, dict))
        improved = metrics["score"] > self.best
        self.log(f"epoch {epoch}: loss {train_loss:.4f}  {tasks}" + ("  (best)" if improved else ""))
        if improved:
            self.best = metrics["score"]
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        staging = self.out / f".{CHECKPOINT_DIR}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        self.encoder.save_checkpoint(staging)
        shutil.rmtree(self.out / CHECKPOINT_DIR, ignore_errors=True)
        staging.rename(self.out / CHECKPOINT_DIR)

    def _trained_state(self) -> dict[str, torch.Tensor]:
        frozen = self.model.frozen_names()
        return {k: v for k, v in self.encoder.model.state_dict().items() if k not in frozen}

    def _save_state(self) -> None:
        state = {"epoch": self.epoch, "best": self.best, "config": asdict(self.config),
                 "model": self._trained_state(), "loss": self.loss.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        torch.save(state, self.out / f"{STATE_FILE}.partial")
        (self.out / f"{STATE_FILE}.partial").replace(self.out / STATE_FILE)

    def resume(self) -> None:
        """Continue from `state.pt` of an earlier run with the same configuration."""
        path = self.out / STATE_FILE
        if not path.is_file():
            raise CxrError(f"nothing to resume: {path} does not exist (run without --resume to start)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["config"] != asdict(self.config):
            changed = sorted(k for k in state["config"] if state["config"][k] != asdict(self.config).get(k))
            raise CxrError(f"{path} was written with different settings ({', '.join(changed)}): "
                           "resume with the same flags, or use a new --out")
        self.encoder.model.load_state_dict(state["model"], strict=False)
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best = state["epoch"], state["best"]
        history = self.out / HISTORY_FILE
        lines = [line for line in history.read_text().splitlines() if json.loads(line)["epoch"] <= self.epoch]
        history.write_text("".join(line + "\n" for line in lines))  # drop an epoch cut short
        self.log(f"resuming after epoch {self.epoch} (best validation score {self.best:.4f})")

    def best_metrics(self) -> dict:
        lines = [json.loads(line) for line in (self.out / HISTORY_FILE).read_text().splitlines()]
        return max(lines, key=lambda line: line["score"])

    def write_config(self, source: str, init_source: str) -> dict:
        """Write train_config.json (what the run was asked to do) and return it."""
        config = {"model": self.spec.name, "archive": source, "init": init_source, **asdict(self.config),
                  "train_images": len(self.train_examples), "valid_images": len(self.valid_examples),
                  "torch_threads": torch.get_num_threads()}
        (self.out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return config
