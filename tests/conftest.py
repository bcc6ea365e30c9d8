"""Shared fixtures: tiny random encoders built from configs (nothing downloaded), the packaged MiniLM
backbone, and the local data folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertModel,
    RobertaConfig,
    RobertaModel,
)

REPO = Path(__file__).resolve().parent.parent


#: The size of every tiny random model the tests build from a config.
TINY_CONFIG = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
)


def tiny_encoder(kind: str = "bert", seed: int = 0):
    """A 2-layer, 32-wide random encoder of the given architecture."""
    torch.manual_seed(seed)
    common = TINY_CONFIG
    if kind == "bert":
        model = BertModel(BertConfig(**common), add_pooling_layer=False)
    elif kind == "roberta":
        model = RobertaModel(RobertaConfig(**common, pad_token_id=1), add_pooling_layer=False)
    elif kind == "albert":
        model = AlbertModel(AlbertConfig(**common, embedding_size=16), add_pooling_layer=False)
    else:
        raise ValueError(kind)
    model.config.tinyattn_backbone = f"tiny-{kind}"
    return model


def tiny_batch(batch: int = 3, length: int = 9, seed: int = 0) -> dict:
    """Random ids with right padding of different lengths (row 0 unpadded)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - 2 * row :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


def fake_record(
    params, curve, evals_per_epoch: int = 1, status: str = "done", wall_seconds: float = 70.0
) -> dict:
    """A run record as the study writes it, for a planned run (``RunParams``): its evaluations reach
    the scores in ``curve``, ``evals_per_epoch`` to an epoch, on the task's main metric."""
    metric = "pearson" if params.task == "stsb" else "accuracy"
    evaluations = [
        {
            "step": 10 * (i + 1),
            "epoch": (i + 1) / evals_per_epoch,
            "train_loss": 1.0 / (i + 1),
            "metrics": {metric: score},
        }
        for i, score in enumerate(curve)
    ]
    record = {
        "run_id": params.run_id,
        "status": status,
        "task": params.task,
        "method": params.method,
        "seed": params.seed,
        "select_metric": metric,
        "params": {"label": params.label, "backbone": params.backbone, **vars(params)},
        "params_count": {"adapter_params": 1000, "head_params": 770, "backbone_params": 22_565_376},
        "best": evaluations[-1],
        "final": evaluations[-1],
        "evaluations": evaluations,
        "steps": 10 * len(curve),
        "epochs_run": len(curve) / evals_per_epoch,
        "train_examples": 100,
        "eval_examples": 50,
        "train_seconds": 60.0,
        "eval_seconds": 5.0,
        "wall_seconds": wall_seconds,
        "tokens_per_second": 1800.0,
    }
    if params.two_stage:
        record["stage_one"] = {"run_id": params.stage_one().run_id, "source": "saved adapter"}
    return record


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: more intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local GLUE/SuperGLUE folder: $TINYATTN_DATA_DIR, else ../shared/data beside the repo."""
    candidate = Path(os.environ.get("TINYATTN_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (candidate / "glue").is_dir():
        pytest.skip(f"no local data folder at {candidate} (set TINYATTN_DATA_DIR)")
    return candidate


#: A two-run study profile (one step each on 16 SST-2 examples): the runner's tests' toy.
TOY = {
    "name": "toy",
    "backbone": "minilm-l6",
    "seeds": [1],
    "defaults": {"max_steps": 1, "batch_size": 8, "max_train_samples": 16, "max_eval_samples": 16},
    "tasks": {"sst2": {}},
    "methods": {
        "head_only": {"method": "head_only", "learning_rate": 1.0e-3},
        "tinyattn_e1": {"method": "tinyattn", "learning_rate": 1.0e-3},
    },
}


def records(folder: str | Path = "results/runs") -> dict[str, dict]:
    """Every record of a runs folder, by run id."""
    return {p.stem: json.loads(p.read_text()) for p in Path(folder).glob("*.json")}


@pytest.fixture
def write_toy(tmp_path, data_dir, monkeypatch):
    """In a fresh working folder with the local data: ``write_toy(profile)`` saves ``profile`` (a
    dict) as ``toy.yaml`` there and returns its path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYATTN_DATA_DIR", str(data_dir))

    def write(profile: dict) -> Path:
        path = tmp_path / "toy.yaml"
        path.write_text(yaml.safe_dump(profile))
        return path

    return write


@pytest.fixture(scope="session")
def minilm():
    """The packaged offline backbone, loaded once (tests must not modify it)."""
    from tinyattn.model import load_encoder

    return load_encoder("minilm-l6")


@pytest.fixture
def fresh_minilm(minilm):
    """A private copy of the packaged backbone (adapters attach hooks to the encoder they are given)."""
    import copy

    return copy.deepcopy(minilm)


def pytest_collection_modifyitems(config, items):
    """Without the optional `adapters` extra (the core environment, e.g. on transformers 5), skip the
    parametrised cases of the methods that come from it; everything else still runs."""
    import importlib.util

    if importlib.util.find_spec("adapters") is not None:
        return
    from tinyattn.methods import ADAPTERS_METHODS

    skip = pytest.mark.skip(
        reason="needs the optional `adapters` extra: pip install 'tinyattn[adapters]'"
    )
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(v, str) and v in ADAPTERS_METHODS for v in params.values()):
            item.add_marker(skip)
