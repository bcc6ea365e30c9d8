"""The core install (``pip install tinyattn``, no extras) is the method library alone.

``make test-core`` runs these in an environment made from the core dependencies and ``dev`` only
(``TINYATTN_CORE_ENV=1``); in the study's environment they are skipped, since it has the extras."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tinyattn.cli import STUDY_EXTRA

CORE_ENV = os.environ.get("TINYATTN_CORE_ENV") == "1"
pytestmark = pytest.mark.skipif(
    not CORE_ENV, reason="only in the core environment (make test-core)"
)


def test_the_core_install_has_no_notebook_or_plotting_stack_and_no_ray():
    missing = [name for name in STUDY_EXTRA if importlib.util.find_spec(name) is None]
    assert missing == list(STUDY_EXTRA), (
        f"installed without the study extra: {set(STUDY_EXTRA) - set(missing)}"
    )
    assert importlib.util.find_spec("ray") is None, "the core install pulled in ray"


def test_the_peft_route_round_trips_in_the_core_install(tmp_path):
    """Import ``tinyattn.peft`` in a fresh interpreter, save and load an adapter through PEFT, and find
    that nothing of the study was imported on the way."""
    script = f"""
import sys, torch
from transformers import BertConfig, BertForSequenceClassification
from peft import PeftModel, get_peft_model
from tinyattn.peft import TinyAttentionConfig

def base():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=20, num_labels=2)
    return BertForSequenceClassification(config).eval()

model = get_peft_model(base(), TinyAttentionConfig(task_type="SEQ_CLS", experts=2))
with torch.no_grad():
    for name, param in model.named_parameters():
        if "tiny" in name:
            param.normal_()  # large adapter weights: their effect is far above float noise
ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(3))
model.eval()
with torch.no_grad():
    before = model(input_ids=ids).logits
    with model.disable_adapter():
        assert (model(input_ids=ids).logits - before).abs().max() > 1e-3
model.save_pretrained({str(tmp_path)!r})
again = PeftModel.from_pretrained(base(), {str(tmp_path)!r}).eval()
with torch.no_grad():
    after = again(input_ids=ids).logits
assert torch.equal(before, after), (before, after)
study = [m for m in sys.modules if m.split(".")[0] in {STUDY_EXTRA!r} or m in (
    "tinyattn.study.runner", "tinyattn.study.status", "tinyattn.analysis.aggregate", "tinyattn.analysis.plots")]
assert not study, study
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_a_study_command_names_the_extra_it_needs(tmp_path, capsys):
    """The dry run works without the extra; running a grid through notebooks needs it, and says so
    before anything starts: no record, no lock."""
    from tinyattn.cli import main

    assert main(["study", "--profile", "quick", "--out", str(tmp_path), "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["study", "--profile", "quick", "--out", str(tmp_path), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'tinyattn[study]'" in err and "papermill" in err and err.count("\n") == 1
    assert not any(tmp_path.rglob("*.json"))


def test_the_ray_executor_names_its_extra(tmp_path, capsys):
    """``--executor ray`` without ray installed: one line naming the extra, nothing started."""
    from tinyattn.cli import main

    code = main(["study", "--profile", "quick", "--out", str(tmp_path), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'tinyattn[ray]'" in err and err.count("\n") == 1
    assert not any(tmp_path.rglob("*"))
