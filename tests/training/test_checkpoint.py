"""The checkpoint validator: every checkpoint is checked for its kind and keys where it enters."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from ifcn.cli import main as cli_main
from ifcn.config import load_config, validate_config
from ifcn.errors import IfcnError
from ifcn.model import build_model, load_model
from ifcn.training import checkpoint
from ifcn.training.checkpoint import CLASSIFIER, PROPOSAL_MODEL
from tests.classify.oracle import write_oracle_proposals
from tests.configs import write_config


def _training_state(**changes) -> dict:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "iteration": 3,
        "config": {"model": {"backbone": "tiny"}},
    }
    return state | changes


def _save(tmp_path, state, name="model_0000003.pt"):
    path = tmp_path / "checkpoints" / name
    path.parent.mkdir(exist_ok=True)
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "state, message",
    [
        ([1, 2], "not an ifcn checkpoint (no 'model' state dict)"),
        (
            _training_state(config=None),
            "not an ifcn checkpoint (no 'config' with a 'model' section)",
        ),
        (_training_state(model={"weight": [1.0]}), "model entry 'weight' is not a tensor"),
        (
            _training_state(model={"w": torch.tensor([1.0, float("nan")])}),
            "model entry 'w' is not finite",
        ),
        (
            _training_state(model={"w": torch.empty(2, device="meta")}),
            "model entry 'w' is a meta tensor, which holds no values",
        ),
        (
            _training_state(
                model={"w": torch.sparse_coo_tensor([[0]], [1.0], (2,), check_invariants=True)}
            ),
            "model entry 'w' is a sparse_coo tensor, not a dense one",
        ),
        (_training_state(kind="ifcn-detector"), "unknown checkpoint kind 'ifcn-detector'"),
        (_training_state(iteration=-1), "iteration -1 is not a count of steps"),
        (_training_state(iteration=2.5), "iteration 2.5 is not a count of steps"),
        (_training_state(iteration=True), "iteration True is not a count of steps"),
    ],
)
def test_a_malformed_checkpoint_is_one_error_naming_it(tmp_path, state, message):
    path = _save(tmp_path, state)
    with pytest.raises(IfcnError) as raised:
        checkpoint.load(path)
    assert str(raised.value) == f"{path}: {message}"


def test_a_final_model_is_not_a_checkpoint_to_resume(tmp_path):
    final = _training_state()
    for key in ("optimizer", "lr_scheduler"):
        del final[key]
    path = _save(tmp_path, final, "model_final.pt")
    assert checkpoint.load(path)["iteration"] == 3  # fine as weights
    with pytest.raises(IfcnError, match=r"model_final\.pt: a final model \(weights only\), not"):
        checkpoint.load(path, resumable=True)


@pytest.mark.parametrize(
    "changes, missing",
    [({"optimizer": {"param_groups": []}}, "optimizer state"), ({"iteration": None}, "iteration")],
)
def test_a_training_checkpoint_without_its_state_is_refused(tmp_path, changes, missing):
    path = _save(tmp_path, _training_state(**changes))
    with pytest.raises(IfcnError, match=missing):
        checkpoint.load(path, resumable=True)


def test_the_kind_must_be_the_one_a_stage_expects(tmp_path):
    old = _save(tmp_path, _training_state())  # written before checkpoints had a kind
    assert checkpoint.kind_of(checkpoint.load(old, kind=PROPOSAL_MODEL)) == PROPOSAL_MODEL
    classifier = _save(tmp_path, _training_state(kind=CLASSIFIER), "model_0000004.pt")
    with pytest.raises(IfcnError) as raised:
        checkpoint.load(classifier, kind=PROPOSAL_MODEL, resumable=True)
    assert str(raised.value) == (
        f"{classifier}: a classifier of `ifcn classify train`, not a proposal model of `ifcn train`"
    )


def test_load_model_refuses_a_classifier_checkpoint(tmp_path):
    config = validate_config({"model": {"backbone": "tiny", "head_channels": 8}})
    weights = build_model(config["model"]).state_dict()
    path = _save(tmp_path, {"model": weights, "config": config, "kind": CLASSIFIER}, "c.pt")
    with pytest.raises(IfcnError, match="a classifier of `ifcn classify train`, not a proposal"):
        load_model(config, path, "cpu")
    proposals = _save(tmp_path, {"model": weights, "config": config, "iteration": 6}, "p.pt")
    assert not load_model(config, proposals, "cpu").training


def test_resume_auto_passes_over_an_unreadable_file_but_not_a_foreign_one(tmp_path):
    _save(tmp_path, _training_state(), "model_0000003.pt")
    newest = _save(tmp_path, _training_state(iteration=6), "model_0000006.pt")
    newest.write_bytes(newest.read_bytes()[:100])  # truncated by a full disk
    path, state = checkpoint.load_latest(tmp_path, PROPOSAL_MODEL, resumable=True)
    assert path.name == "model_0000003.pt" and state["iteration"] == 3
    _save(tmp_path, _training_state(kind=CLASSIFIER, iteration=9), "model_0000009.pt")
    with pytest.raises(IfcnError, match="model_0000009.pt: a classifier"):
        checkpoint.load_latest(tmp_path, PROPOSAL_MODEL, resumable=True)


def test_a_non_finite_optimizer_state_is_refused_before_a_resume(tmp_path):
    # resumed, its NaN momentum would make the first step's weights NaN, and the run would
    # then name this very file as its last good checkpoint
    state = _training_state()
    state["optimizer"]["state"] = {1: {"momentum_buffer": torch.tensor([float("nan")])}}
    path = _save(tmp_path, state)
    assert checkpoint.load(path)["iteration"] == 3  # its weights are fine for inference
    with pytest.raises(IfcnError) as raised:
        checkpoint.load(path, resumable=True)
    assert (
        str(raised.value) == f"{path}: optimizer state momentum_buffer of parameter 1 is not finite"
    )


class _Payload:
    """What a hostile checkpoint holds: unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


REFUSED = "holds Python objects that a safe load refuses"


def test_an_old_checkpoint_holding_python_objects_is_refused_with_what_to_do(tmp_path):
    # e.g. a config holding a pathlib.Path, as a pickle of any object is
    path = _save(tmp_path, _training_state(config={"model": {}, "root": Path("/data")}))
    with pytest.raises(IfcnError) as raised:
        checkpoint.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: {REFUSED}") and "retrain, or convert it" in message
    assert "\n" not in message


@pytest.mark.parametrize("entry", ["infer", "train --resume", "classify --init-from", "auto"])
def test_a_pickle_payload_in_a_checkpoint_never_runs(entry, tmp_path, tiny_data, capsys):
    config_path = write_config(tmp_path, tiny_data)
    config = load_config(config_path)
    marker = tmp_path / "PAYLOAD_RAN"
    state = _training_state(
        model=build_model(config["model"]).state_dict(), config=config, payload=_Payload(marker)
    )
    hostile = tmp_path / "model.pt"
    torch.save(state, hostile)
    torch.load(hostile, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    out = tmp_path / "run"
    if entry == "infer":
        args = ["infer", "--config", str(config_path), "--checkpoint", str(hostile)]
        args += ["--images", str(tiny_data / "val.json"), "--image-root", str(tiny_data / "images")]
        args += ["--out", str(tmp_path / "candidates.h5"), "--device", "cpu"]
    elif entry == "train --resume":
        args = ["train", "--config", str(config_path), "--out", str(out), "--resume", str(hostile)]
    elif entry == "classify --init-from":
        proposals = write_oracle_proposals(tiny_data / "train.json", tmp_path / "p.h5", seed=0)
        args = ["classify", "train", "--config", str(config_path), "--proposals", str(proposals)]
        args += ["--gt", str(tiny_data / "train.json"), "--images", str(tiny_data / "images")]
        args += ["--init-from", str(hostile), "--out", str(out), "--device", "cpu"]
    else:  # planted in the run folder, found by --resume auto
        planted = checkpoint.checkpoint_path(out, 1)
        planted.parent.mkdir(parents=True)
        hostile = Path(shutil.copy(hostile, planted))
        args = ["train", "--config", str(config_path), "--out", str(out), "--resume", "auto"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{hostile}: {REFUSED}" in err[0], err
    assert not marker.exists(), "the checkpoint's payload ran"
    assert not (out / "model_final.pt").exists() and not (tmp_path / "candidates.h5").exists()
