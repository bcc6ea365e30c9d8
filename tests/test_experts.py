"""Heads as experts: attention probabilities, statistics, deployment variants, reports, and the notebook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_batch, tiny_encoder

from tinyattn.adapter import TinyAttention
from tinyattn.analysis import deployment, expert_stats, experts
from tinyattn.checkpoint import trainable_state
from tinyattn.inject import average_experts
from tinyattn.methods import build_model
from tinyattn.metrics import compute_metrics

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "experts.ipynb"


def randomised(module: TinyAttention, seed: int = 0, scale: float = 0.5) -> TinyAttention:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()


def hidden(B=2, T=7, D=16, seed=1, padded=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        mask[B - 1, T - 3 :] = 0  # the last row ends with 3 padding tokens
    return x, mask


@pytest.mark.parametrize("context", ["self", "full"])
def test_self_context_removes_cross_token_interaction(context):
    module = randomised(TinyAttention(16, experts=3, head_dim=2, context=context))
    x, mask = hidden(B=1, padded=False)
    j = 4
    moved = x.clone()
    moved[0, j] += 3.0 * torch.randn(16, generator=torch.Generator().manual_seed(7))
    before, after = module(x, mask), module(moved, mask)
    others = [i for i in range(x.shape[1]) if i != j]
    change = (after[0, others] - before[0, others]).abs().max().item()
    assert (after[0, j] - before[0, j]).abs().max().item() > 1e-2  # token j's own update moves
    if context == "self":
        assert change == 0.0
    else:
        assert change > 1e-3


@pytest.mark.parametrize("context", ["full", "self"])
def test_attention_probs_reproduce_forward(context):
    module = randomised(TinyAttention(16, experts=3, head_dim=2, context=context))
    x, mask = hidden()
    probs = module.attention_probs(x, mask)
    E, d = 3, 2
    assert probs.shape == (2, E, 7, 7)
    assert torch.allclose(probs.sum(-1), torch.ones(2, E, 7))
    if context == "full":
        assert probs[1, :, :, 4:].abs().max() == 0  # padding keys
    else:
        assert torch.equal(probs, torch.eye(7).expand(2, E, 7, 7))
    update = 0
    for e in range(E):
        h = F.layer_norm(x, (16,), module.norm_weight[e], module.norm_bias[e])
        v = (h @ module.qkv_weight[e].T + module.qkv_bias[e])[..., 2 * d :]
        update = update + (probs[:, e] @ v) @ module.out_weight[e].T + module.out_bias[e]
    assert torch.allclose(update / E, module(x, mask), atol=1e-6)


def test_attention_probs_refuse_sequential_experts():
    module = TinyAttention(16, experts=2, combine="sequential")
    with pytest.raises(NotImplementedError, match="combine='mean'"):
        module.attention_probs(*hidden())


def test_attention_stats_on_a_hand_made_map():
    # one sequence: [CLS] a [SEP] <pad>; expert 0 attends to itself, expert 1 uniformly
    ids = torch.tensor([[101, 7, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    eye = torch.eye(4)
    uniform = torch.zeros(4, 4)
    uniform[:, :3] = 1 / 3
    probs = torch.stack([eye, uniform])[None]  # (1, 2, 4, 4)
    stats = expert_stats.attention_stats([probs, probs], ids, mask, special_token_ids=[101, 102])
    assert len(stats) == 4 and set(stats["layer"]) == {0, 1}
    own, spread = stats.iloc[0], stats.iloc[1]
    assert own["entropy"] == pytest.approx(0.0)
    assert own["self_share"] == pytest.approx(1.0)
    assert own["mean_distance"] == pytest.approx(0.0)
    assert own["special_share"] == pytest.approx(2 / 3)
    assert spread["entropy"] == pytest.approx(math.log(3))
    assert spread["entropy_uniform"] == pytest.approx(math.log(3))
    assert spread["self_share"] == pytest.approx(1 / 3)
    assert spread["mean_distance"] == pytest.approx(8 / 9)
    assert spread["special_share"] == pytest.approx(2 / 3)
    assert (stats["queries"] == 3).all()


def _tiny_model(num_experts=3, seed=0):
    model = build_model("tinyattn", tiny_encoder("bert", seed=seed), 2, {"experts": num_experts})
    return model.eval()


def _batches():
    batch = tiny_batch()
    n = batch["input_ids"].shape[0]
    return [{**batch, "labels": torch.zeros(n, dtype=torch.long), "example_index": torch.arange(n)}]


def _set_experts(model, same: bool, seed: int = 0):
    """Every layer's experts: copies of one random expert (same) or independently random ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in expert_stats.adapters_of(model).layers:
            for p in layer.parameters():
                shape = (1, *p.shape[1:]) if same else p.shape
                p.copy_((torch.randn(shape, generator=gen) * 0.5).expand_as(p))


def test_deployment_forms_agree_exactly_for_identical_experts_only():
    model = _tiny_model()
    adapters = expert_stats.adapters_of(model)
    slots = list(adapters.layers)
    batches = _batches()
    _set_experts(model, same=True)
    logits = {v: deployment.variant_logits(model, v, batches)[0] for v in deployment.VARIANTS[:3]}
    single = deployment.variant_logits(model, 1, batches)[0]
    for value in (*logits.values(), single):
        assert torch.allclose(
            torch.from_numpy(value), torch.from_numpy(logits["trained_form"]), atol=1e-6
        )
    assert list(adapters.layers) == slots and adapters.config.experts == 3  # restored

    _set_experts(model, same=False)
    logits = {v: deployment.variant_logits(model, v, batches)[0] for v in deployment.VARIANTS[:3]}
    trained = torch.from_numpy(logits["trained_form"])
    assert (torch.from_numpy(logits["averaged"]) - trained).abs().max() > 1e-3
    assert (torch.from_numpy(logits["logit_ensemble"]) - trained).abs().max() > 1e-3
    assert list(adapters.layers) == slots and adapters.config.experts == 3


def test_deployment_variants_reuse_the_single_experts(monkeypatch):
    """The ensemble and single-expert variants are made from the single-expert passes: they must
    score as their own passes would; latency is timed on the first ``latency_batches`` batches."""
    model = _tiny_model()
    _set_experts(model, same=False)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(3):
        batch = tiny_batch(seed=i)
        batch["labels"] = torch.randint(0, 2, (3,), generator=gen)
        batch["example_index"] = torch.arange(3 * i, 3 * i + 3)
        batches.append(batch)
    monkeypatch.setattr(deployment, "make_dataloader", lambda *args, **kwargs: iter(batches))

    singles, variants = deployment.deployment_variants(
        model, None, None, "sst2", repeats=2, latency_batches=1
    )
    by_name = variants.set_index("variant")
    own = {
        v: deployment.variant_logits(model, v, batches)
        for v in ("logit_ensemble", "trained_form", 0, 1, 2)
    }
    assert list(singles["expert"]) == [0, 1, 2]
    for e in range(3):
        assert singles.loc[e, "accuracy"] == compute_metrics("sst2", *own[e])["accuracy"]
    ensemble = own["logit_ensemble"][0]
    assert (
        by_name.loc["logit_ensemble", "accuracy"]
        == compute_metrics("sst2", *own["logit_ensemble"])["accuracy"]
    )
    assert by_name.loc["logit_ensemble", "max_abs_logit_diff_vs_trained"] == pytest.approx(
        float(abs(ensemble - own["trained_form"][0]).max()), abs=1e-6
    )
    best = int(by_name.loc["single_best", "expert"])
    assert singles.loc[best, "accuracy"] == singles["accuracy"].max()
    for name in ("single_best", "single_random"):
        expert = int(by_name.loc[name, "expert"])
        assert by_name.loc[name, "accuracy"] == singles.loc[expert, "accuracy"]
    assert (variants["timed_examples"] == 3).all() and (variants["latency_s"] > 0).all()
    assert list(by_name["encoder_passes"]) == [1, 1, 3, 1, 1]

    _, every = deployment.deployment_variants(
        model, None, None, "sst2", repeats=1, latency_batches=None
    )
    assert (every["timed_examples"] == 9).all()
    with pytest.raises(ValueError, match="latency_batches"):
        deployment.deployment_variants(model, None, None, "sst2", latency_batches=0)


def test_averaged_variant_is_injects_deployment():
    """The ``averaged`` variant scores the model that ``inject.average_experts`` deploys, and
    ``trained_form`` the model as it is; neither changes the model."""
    import copy

    from tinyattn.train import predict

    model = _tiny_model()
    _set_experts(model, same=False)
    batches = _batches()
    deployed = average_experts(copy.deepcopy(model))
    assert expert_stats.adapters_of(deployed).config.experts == 1
    expected, _ = predict(deployed, batches)
    averaged, _ = deployment.variant_logits(model, "averaged", batches)
    assert torch.allclose(torch.from_numpy(averaged), torch.from_numpy(expected), atol=1e-6)
    as_trained, _ = deployment.variant_logits(model, "trained_form", batches)
    assert torch.equal(torch.from_numpy(as_trained), torch.from_numpy(predict(model, batches)[0]))
    assert expert_stats.adapters_of(model).config.experts == 3


def test_capture_attention_and_similarity_on_a_tiny_model():
    model = _tiny_model()
    _set_experts(model, same=True)
    batch = tiny_batch()
    model.train()
    layers = expert_stats.adapters_of(model).layers
    seen = []  # each adapter's input as it was handed over, before the call may write into it
    handles = [
        layer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append((module, args[0].clone(), args[1])),
            with_kwargs=True,
        )
        for layer in layers
    ]
    probs = expert_stats.capture_attention(model, batch)
    for handle in handles:
        handle.remove()
    assert model.training  # mode restored
    assert all(not (layer._forward_hooks or layer._forward_pre_hooks) for layer in layers)
    assert [p.shape for p in probs] == [(3, 3, 9, 9)] * 2
    assert probs[0][2, :, :, 5:].abs().max() == 0  # row 2 has 4 padding tokens
    with torch.no_grad():  # the maps of the inputs the adapters were given
        for got, (module, x, mask) in zip(probs, seen):
            torch.testing.assert_close(got, module.attention_probs(x, mask).float())

    reference = _tiny_model(num_experts=1, seed=1)
    sim = expert_stats.expert_similarity(model, reference, batch)
    assert set(sim["kind"]) == {"weights", "updates", "attention"}  # reference has 1 expert
    pairs = sim[sim["expert_i"] != sim["expert_j"]]
    for kind in ("weights", "updates", "attention"):
        assert pairs[pairs["kind"] == kind]["cosine"].min() == pytest.approx(1.0)
    summary = expert_stats.similarity_summary(sim)
    assert len(summary) == 3 * 2 and list(summary.columns) == [
        "kind",
        "layer",
        "mean",
        "min",
        "max",
    ]


def test_missing_adapter_folder_is_named(tmp_path):
    record = {"run_id": "sst2-tinyattn-s1-abc", "status": "done", "params": {}}
    (tmp_path / "sst2-tinyattn-s1-abc.json").write_text(json.dumps(record))
    folder = str(tmp_path / "adapters" / "sst2-tinyattn-s1-abc")
    with pytest.raises(FileNotFoundError, match=f"{folder}.*save_adapter=True"):
        experts.load_run("sst2-tinyattn-s1-abc", tmp_path)
    with pytest.raises(FileNotFoundError, match="no run record"):
        experts.load_run("nope", tmp_path)


def _write_record(runs, run_id, *, status="done", experts=4, task="sst2", two_stage=True):
    params = {"method": "tinyattn", "method_options": {"experts": experts}, "seed": 1}
    record = {
        "run_id": run_id,
        "status": status,
        "task": task,
        "params": {**params, "two_stage": two_stage},
        "select_metric": "accuracy",
        "best": {"step": 3, "metrics": {"accuracy": 0.75}},
    }
    (runs / f"{run_id}.json").write_text(json.dumps(record))
    return record


def test_find_expert_runs_lists_finished_expert_runs_and_their_adapters(tmp_path):
    _write_record(tmp_path, "sst2-a")
    _write_record(tmp_path, "sst2-b", two_stage=False)
    _write_record(tmp_path, "sst2-one", experts=1)
    _write_record(tmp_path, "sst2-failed", status="failed")
    _write_record(tmp_path, "mrpc-a", task="mrpc")
    (tmp_path / "sst2-broken.json").write_text('{"run_id": "sst2-bro')  # a truncated record
    (tmp_path / "adapters" / "sst2-b").mkdir(parents=True)
    (tmp_path / "adapters" / "sst2-b" / "adapter_config.json").write_text("{}")
    found = experts.find_expert_runs(tmp_path, "SST-2")
    assert list(found["run_id"]) == ["sst2-a", "sst2-b"]
    assert list(found["adapter_saved"]) == [False, True] and list(found["best"]) == [0.75, 0.75]
    assert len(experts.find_expert_runs(tmp_path)) == 3
    with pytest.raises(RuntimeError, match="no finished two-stage"):
        experts.choose_run(found, "sst2", tmp_path)  # the two-stage run has no saved adapter
    (tmp_path / "adapters" / "sst2-a").mkdir()
    (tmp_path / "adapters" / "sst2-a" / "adapter_config.json").write_text("{}")
    assert experts.choose_run(experts.find_expert_runs(tmp_path, "sst2"), "sst2") == "sst2-a"


def test_a_report_written_is_read_back_by_the_book(tmp_path):
    """The report's fields (the book's heads chapter reads them through ``collect_reports``)."""
    record = _write_record(tmp_path, "sst2-a")
    record["stage_one"] = {"run_id": "sst2-one"}
    run = experts.ExpertRun(record, _tiny_model())
    similarity = expert_stats.expert_similarity(run.model)
    batch = tiny_batch()
    probs = expert_stats.capture_attention(run.model, batch)
    stats = expert_stats.attention_stats(probs, batch["input_ids"], batch["attention_mask"])
    singles = pd.DataFrame({"expert": [0, 1, 2], "accuracy": [0.5, 0.6, 0.7]})
    variants = pd.DataFrame({"variant": list(deployment.VARIANTS), "accuracy": [0.8] * 5})
    other = experts.ExpertRun({**record, "run_id": "sst2-b", "params": {}}, _tiny_model())
    independent = experts.run_tables(other, similarity, singles, variants.assign(accuracy=0.4))
    payload = experts.report_payload(run, 9, stats, similarity, singles, variants, independent)
    path = experts.write_report(tmp_path / "analysis", "sst2-a", payload, {"stats": "x/a.png"})
    report = json.loads(path.read_text())
    assert set(report) == {
        "run_id", "task", "experts", "two_stage", "stage_one", "eval_examples", "record_best",
        "attention_stats", "similarity_summary", "similarity", "single_experts", "variants",
        "independent", "figures",
    }  # fmt: skip
    assert (
        report["experts"] == 3 and report["two_stage"] and report["figures"] == {"stats": "a.png"}
    )
    assert report["independent"]["run_id"] == "sst2-b" and not report["independent"]["two_stage"]
    tables = experts.collect_reports(tmp_path / "analysis")
    by_init = tables["variants"].groupby("init")["score"].mean()
    assert by_init.to_dict() == pytest.approx({"two-stage": 80.0, "independent": 40.0})
    assert len(tables["attention"]) == 2 * 3 and len(tables["similarity"]) == 2 * 2


@pytest.mark.slow
def test_notebook_end_to_end_on_toy_runs(tmp_path, data_dir, monkeypatch):
    """A toy profile's two-stage and independent E = 2 runs, analysed by ``tinyattn analyse``'s
    function through the papermill notebook: alone, then again once the independent run is there."""
    import yaml

    from tinyattn.experiment import run
    from tinyattn.study.profiles import REPO, expand, load_profile
    from tinyattn.study.runner import run_analyses

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYATTN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's batches are tiny
    toy = {
        "name": "toyexperts",
        "backbone": "minilm-l6",
        "seeds": [42],
        "defaults": {
            "max_train_samples": 16,
            "max_eval_samples": 16,
            "max_steps": 1,
            "batch_size": 8,
            "eval_batch_size": 8,
            "max_length": 64,
            "save_adapter": True,
            "progress": False,
        },
        "tasks": {"sst2": {}},
        "methods": {
            "tinyattn_e1": {"method": "tinyattn"},
            "tinyattn_e4": {
                "method": "tinyattn",
                "method_options": {"experts": 2},
                "two_stage": True,
            },
            "tinyattn_e4_indep": {"method": "tinyattn", "method_options": {"experts": 2}},
        },
    }
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(toy))
    trained = {
        p.label: run(p) for p in expand(load_profile(str(tmp_path / "toy.yaml")), out_dir="runs")
    }
    (staged, staged_model), (independent, independent_model) = (
        trained["tinyattn_e4"],
        trained["tinyattn_e4_indep"],
    )
    quick = {
        "max_eval_samples": 16,
        "n_sentences": 1,
        "max_tokens": 12,
        "figure_dpi": 50,
        "stats_examples": 16,
        "similarity_examples": 8,
        "latency_repeats": 1,
    }
    out = tmp_path / "analysis"
    analyse = dict(out_dir="runs", analysis_dir=str(out), notebook_parameters=quick, log=print)
    # while the independent run is unfinished, the two-stage run is analysed alone ...
    record = tmp_path / "runs" / f"{independent['run_id']}.json"
    later = record.rename(record.with_suffix(".later"))
    assert run_analyses(str(tmp_path / "toy.yaml"), **analyse) == [staged["run_id"]]
    assert json.loads((out / f"{staged['run_id']}.json").read_text())["independent"] is None
    assert run_analyses(str(tmp_path / "toy.yaml"), **analyse) == []  # done before: skipped
    # ... and once it has finished, again with it beside it; then nothing is left to do
    later.rename(record)
    assert run_analyses(str(tmp_path / "toy.yaml"), **analyse) == [staged["run_id"]]
    assert run_analyses(str(tmp_path / "toy.yaml"), **analyse) == []
    executed = (out / f"{staged['run_id']}.ipynb").read_text()  # the executed notebook is kept ...
    assert str(REPO.resolve()) not in executed  # ... and names no path of this checkout
    assert '"input_path": "notebooks/experts.ipynb"' in executed
    tables = experts.collect_reports(out)
    assert len(tables["variants"]) == 2 * len(deployment.VARIANTS)
    assert set(tables["variants"]["init"]) == set(tables["similarity"]["init"])
    assert set(tables["variants"]["init"]) == {"two-stage", "independent"}
    assert (
        len(tables["attention"]) == 6 * 2 and experts.collect_reports(out, set())["variants"].empty
    )
    report = json.loads((out / f"{staged['run_id']}.json").read_text())
    assert {
        "attention_stats",
        "similarity",
        "similarity_summary",
        "single_experts",
        "variants",
        "independent",
        "figures",
    } <= set(report)
    assert [v["variant"] for v in report["variants"]] == list(deployment.VARIANTS)
    assert len(report["attention_stats"]) == 6 * 2  # MiniLM: 6 layers x 2 experts
    assert all((out / name).is_file() for name in report["figures"].values())
    # the weight-averaged model, rebuilt from the saved adapter, scores as training evaluated it
    averaged = next(v for v in report["variants"] if v["variant"] == "averaged")
    assert averaged["accuracy"] == pytest.approx(staged["best"]["metrics"]["accuracy"])
    kinds = {row["kind"] for row in report["similarity_summary"]}
    assert kinds == {"weights", "weights_reference", "updates", "attention", "attention_reference"}
    start = [r for r in report["similarity_summary"] if r["kind"] == "weights_reference"]
    assert min(r["min"] for r in start) > 0.999  # the two-stage experts start as copies
    assert report["independent"]["run_id"] == independent["run_id"]
    # the rebuilt starting points are the real ones: one AdamW step moves no weight by more than lr
    for record, trained in ((staged, staged_model), (independent, independent_model)):
        start = trainable_state(experts.load_initial(record, "runs"))
        end = trainable_state(trained)
        assert max(float((end[k] - start[k]).abs().max()) for k in end) <= 1.001e-3


def test_the_analysis_reports_have_one_reader_that_names_a_bad_file(tmp_path):
    from tinyattn.records import ANALYSIS_DIR, read_reports

    committed = read_reports(REPO / ANALYSIS_DIR)
    assert committed and all(r["run_id"] and r["task"] for r in committed)
    one = committed[0]["run_id"]
    assert [r["run_id"] for r in read_reports(REPO / ANALYSIS_DIR, [one])] == [one]
    (tmp_path / "a.json").write_text('{"run_id": "a", "task": "sst2"}')
    (tmp_path / "b.json").write_text('{"run_id": ')
    with pytest.raises(ValueError, match=r"b.json: not valid JSON"):
        read_reports(tmp_path)
    (tmp_path / "b.json").write_text('{"something": "else"}')
    with pytest.raises(ValueError, match=r"b.json: not a report of a run"):
        read_reports(tmp_path)
    (tmp_path / "b.json").unlink()
    assert read_reports(tmp_path, {"a"}) == [{"run_id": "a", "task": "sst2"}]
    assert read_reports(tmp_path, {"z"}) == []


def test_deployment_scores_keep_one_init_and_pair_variants_by_run():
    rows = [
        {
            "task": "rte",
            "run_id": "a",
            "init": "two-stage",
            "variant": "trained_form",
            "score": 60.0,
        },
        {"task": "rte", "run_id": "a", "init": "two-stage", "variant": "averaged", "score": 59.0},
        {"task": "rte", "run_id": "a", "init": "independent", "variant": "averaged", "score": 1.0},
        {
            "task": "sst2",
            "run_id": "b",
            "init": "two-stage",
            "variant": "trained_form",
            "score": 90.0,
        },
    ]
    scores = experts.deployment_scores(pd.DataFrame(rows), "two-stage")
    assert scores.loc[("rte", "a"), "averaged"] == 59.0  # not the independent init's 1.0
    assert scores.loc[("sst2", "b"), "trained_form"] == 90.0
    assert pd.isna(scores.loc[("sst2", "b"), "averaged"])
    assert experts.deployment_scores(pd.DataFrame(rows), "sequential").empty
    gap = experts.deployment_comparison(pd.DataFrame(rows)).set_index("method")
    assert gap.loc["averaged", "pairs"] == 1 and gap.loc["averaged", "mean_difference"] == 1.0
