"""Distributed training (fastfreeze/callbacks/distributed.py): a real 2-process run on the CPU (gloo, launched with
torchrun exactly as a user would), the samplers, the single-process no-op and timm-safe SyncBatchNorm.

This file is also the script the 2 processes run (`_worker`, at the bottom): `python -m torch.distributed.run
--nproc_per_node=2 tests/test_distributed.py OUT_DIR`.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastfreeze import Callback, DataLoaders, F1Score, Learner, ProgressCallback, TransferModel, accuracy
from fastfreeze.callbacks.distributed import DistributedCallback, distributed, init_distributed, sync_batchnorm
from fastfreeze.utils.ranks import broadcast_object, is_rank_zero, on_rank_zero
from helpers import blobs

N_TRAIN, N_VALID, BS = 64, 27, 8  # odd validation size: a padded split would repeat an item


def tiny_transfer_model(seed: int) -> TransferModel:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU())
    return TransferModel(body, nn.Linear(16, 3))


def no_bn_model() -> TransferModel:
    """No BatchNorm: each rank would normalise its own half-batch, so only a model without it computes the
    same gradients on 2 ranks as on one."""
    torch.manual_seed(7)
    return TransferModel(nn.Sequential(nn.Linear(4, 16), nn.ReLU()), nn.Linear(16, 3))


def same_global_batch_fit(learn: Learner) -> None:
    """Plain SGD (not Adam, which would hide a gradient summed instead of averaged) with momentum and weight
    decay, a one-cycle schedule, both groups training."""
    learn.fit_one_cycle(2, slice(1e-2, 1e-1), wd=0.1)


def sgd(param_groups, lr):
    return torch.optim.SGD(param_groups, lr=lr, momentum=0.9)


def tiny_data() -> tuple[DataLoaders, torch.Tensor, torch.Tensor]:
    x, y = blobs(N_TRAIN, spread=1.5)
    xv, yv = blobs(N_VALID, seed=1, spread=1.5)
    return DataLoaders.from_tensors(x, y, xv, yv, bs=BS, seed=0), xv, yv


def body_and_head(m: nn.Module) -> list[nn.Module]:
    return [m.body, m.head]


# -------------------------------------------------------------------------------------------------
# two processes
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run `_worker` on 2 CPU processes with torchrun (a free port picked by --standalone); return both
    ranks' results and the output folder."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           __file__, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    results = [torch.load(out / "results" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return results, out


def full_set_evaluation(state: dict, xv: torch.Tensor, yv: torch.Tensor) -> tuple[float, float, list[float], torch.Tensor]:
    """Loss and accuracy of `state` over the whole validation set in one process, the per-item losses and the
    predicted classes."""
    model = tiny_transfer_model(0)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        out = model(xv)
    per_item = F.cross_entropy(out, yv, reduction="none").double()
    return float(per_item.mean()), float((out.argmax(1) == yv).double().mean()), per_item.tolist(), out.argmax(1)


def test_ranks_start_from_rank_zero_weights_and_end_identical(two_ranks):
    (r0, r1), _ = two_ranks
    rank0_init = tiny_transfer_model(100).state_dict()  # each rank built its model with seed 100 + rank
    rank1_init = tiny_transfer_model(101).state_dict()
    assert not torch.equal(rank0_init["head.weight"], rank1_init["head.weight"])
    for k in rank0_init:
        assert torch.equal(r0["initial"][k], rank0_init[k]) and torch.equal(r1["initial"][k], rank0_init[k]), k
    # after fine_tune (a frozen then an unfrozen phase, each rank on its own half of the data): same
    # parameters and buffers. Without re-wrapping DDP per phase the body's gradients would not be averaged
    # in the unfrozen phase and the ranks would drift apart.
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert not torch.equal(r0["state"]["body.0.weight"], rank0_init["body.0.weight"])  # the body did train


def test_each_rank_trains_on_its_own_shard_with_a_new_shuffle_every_epoch(two_ranks):
    (r0, r1), _ = two_ranks
    for r in (r0, r1):
        assert [e["phase"] for e in r["epochs"]] == ["frozen", "unfrozen"]
        assert [e["model"] for e in r["epochs"]] == ["DistributedModel", "DistributedModel"]
        assert [e["train_batches"] for e in r["epochs"]] == [N_TRAIN // 2 // BS] * 2  # 4, not 8
        # set_epoch: the second epoch (of another phase) is not a replay of the first
        assert not torch.equal(r["epochs"][0]["first_x"], r["epochs"][1]["first_x"])
    assert not torch.equal(r0["epochs"][0]["first_x"], r1["epochs"][0]["first_x"])  # different shards
    # validation split without padding, 27 = 14 + 13, in both fits and in learn.validate()
    assert r0["valid_items"] == [14, 14, 14] and r1["valid_items"] == [13, 13, 13]
    # after each fit the model is the plain one again (checked by the worker after fine_tune)
    assert r0["model_after"] == r1["model_after"] == "TransferModel"


def test_reduced_validation_equals_a_single_process_evaluation(two_ranks):
    (r0, r1), _ = two_ranks
    _, xv, yv = tiny_data()
    loss, acc, per_item, _ = full_set_evaluation(r0["state"], xv, yv)
    for r in (r0, r1):
        last = r["values"][-1]
        assert last["valid_loss"] == pytest.approx(loss, abs=1e-6)
        assert last["accuracy"] == pytest.approx(acc, abs=1e-6)
        assert r["validate"][:2] == pytest.approx([loss, acc], abs=1e-6)  # learn.validate() inside the block too
    # the check can fail: a padded split (item 0 counted twice) or rank 0's shard alone give other numbers
    padded = (sum(per_item) + per_item[0]) / (N_VALID + 1)
    rank0_only = sum(per_item[0::2]) / len(per_item[0::2])
    assert abs(padded - loss) > 1e-5 and abs(rank0_only - loss) > 1e-5


def test_whole_set_metrics_under_ddp_equal_a_single_process_evaluation(two_ranks):
    """F1 (fastfreeze's and torchmetrics') over the 2 ranks' shards equals the single-process value on the same
    weights (the learner's own validate, and scikit-learn), not the value of either shard."""
    from sklearn.metrics import f1_score
    from torchmetrics.classification import MulticlassF1Score
    (r0, r1), _ = two_ranks
    dls, xv, yv = tiny_data()
    _, _, _, predicted = full_set_evaluation(r0["state"], xv, yv)
    whole = f1_score(yv, predicted, average="macro")
    model = tiny_transfer_model(0)
    model.load_state_dict(r0["state"])
    single = Learner(model, dls, splitter=body_and_head, progress=False, device="cpu",
                     metrics=[accuracy, F1Score(), MulticlassF1Score(num_classes=3, average="macro")]).validate()
    assert single[2:] == pytest.approx([whole, whole], abs=1e-6)
    for r in (r0, r1):
        assert r["values"][-1]["f1_score"] == pytest.approx(whole, abs=1e-6)
        assert r["values"][-1]["multiclass_f1_score"] == pytest.approx(whole, abs=1e-6)
        assert r["validate"][2:] == pytest.approx(single[2:], abs=1e-6)
    shard0 = f1_score(yv[0::2], predicted[0::2], average="macro")  # what rank 0 alone would report
    assert abs(shard0 - whole) > 1e-3


def test_training_losses_are_averaged_over_the_ranks(two_ranks):
    (r0, r1), _ = two_ranks
    n_steps = 2 * N_TRAIN // 2 // BS  # 4 steps in each of the 2 phases
    assert len(r0["own_losses"]) == len(r1["own_losses"]) == len(r0["recorded_losses"]) == n_steps
    mean = [(a + b) / 2 for a, b in zip(r0["own_losses"], r1["own_losses"])]
    assert r0["recorded_losses"] == pytest.approx(mean, abs=1e-6)
    assert r1["recorded_losses"] == pytest.approx(mean, abs=1e-6)
    assert r0["own_losses"] != pytest.approx(r1["own_losses"], abs=1e-4)  # the shards' losses did differ
    assert [v["train_loss"] for v in r0["values"]] == [v["train_loss"] for v in r1["values"]]


def test_two_processes_train_exactly_as_one_process_with_the_same_global_batch(two_ranks):
    """2 ranks with batches of 4 unshuffled items (rank r reads items r, r+2, r+4, r+6 of each 8) average their
    gradients: the same steps as one process with batches of 8. Checked against a single-process run here."""
    (r0, r1), _ = two_ranks
    x, y = blobs(N_TRAIN, spread=1.5)
    learn = Learner(no_bn_model(), DataLoaders.from_tensors(x, y, bs=BS, shuffle=False), opt_func=sgd,
                    splitter=body_and_head, progress=False, device="cpu")
    assert len(learn.dls.train) == N_TRAIN // BS
    same_global_batch_fit(learn)
    single = learn.model.state_dict()
    initial = no_bn_model().state_dict()
    for r in (r0, r1):
        assert r["same_batch_steps"] == 2 * N_TRAIN // BS
        for k, v in single.items():
            torch.testing.assert_close(r["same_batch_state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
            assert (v - initial[k]).abs().max() > 1e-2, k  # every tensor moved well beyond the tolerance


def test_only_rank_zero_shows_the_bar_and_writes_files(two_ranks):
    (r0, r1), out = two_ranks
    assert [e["bar"] for e in r0["epochs"]] == [True, True]
    assert [e["bar"] for e in r1["epochs"]] == [False, False]
    assert r0["bar_after"] and r1["bar_after"]  # the bar is back after the block
    assert not r0["callback_after"] and not r1["callback_after"]
    written = sorted(p.relative_to(out / "rank0").as_posix() for p in (out / "rank0").rglob("*") if p.is_file())
    assert written == ["models/final.pth", "models/frozen_0.pth", "models/outside.pth",
                       "models/outside_checkpoint.pth", "models/unfrozen_0.pth", "note.txt"]
    assert not (out / "rank1").exists() or not any(p.is_file() for p in (out / "rank1").rglob("*"))
    assert r1["save_returned"] == str(out / "rank1" / "models" / "final.pth")  # the path, nothing written
    assert r1["outside_returned"] == [str(out / "rank1" / "models" / f"{n}.pth") for n in ("outside",
                                                                                          "outside_checkpoint")]
    # the checkpoint written in the middle of a fit (model wrapped in DDP) has the plain model's keys
    frozen = torch.load(out / "rank0" / "models" / "frozen_0.pth", weights_only=True)["model"]
    model = tiny_transfer_model(0)
    model.load_state_dict(frozen)  # strict: no "module." prefix
    # after the frozen phase the body's Linear is still rank 0's initial one; the head moved
    init = tiny_transfer_model(100).state_dict()
    assert torch.equal(frozen["body.0.weight"], init["body.0.weight"])
    assert not torch.equal(frozen["head.weight"], init["head.weight"])


def test_ranks_with_different_lrs_stop_before_the_first_step(two_ranks):
    (r0, r1), _ = two_ranks
    for r in (r0, r1):
        assert "different hyper-parameters" in r["mismatch_error"] and "lr of param group 0" in r["mismatch_error"]
        assert r["mismatch_weights_unchanged"]
        assert r["mismatch_model_after"] == "TransferModel" and r["mismatch_dls_restored"]


def test_sync_bn_on_cpu_processes_is_refused(two_ranks):
    (r0, r1), _ = two_ranks
    assert "needs CUDA" in r0["sync_bn_cpu_error"] and "needs CUDA" in r1["sync_bn_cpu_error"]


def test_single_process_runs_unchanged(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    dls, _, _ = tiny_data()
    plain = Learner(tiny_transfer_model(0), dls, splitter=body_and_head, progress=False, device="cpu")
    plain.fit(1, lr=1e-2)
    dls, _, _ = tiny_data()
    learn = Learner(tiny_transfer_model(0), dls, splitter=body_and_head, progress=False, device="cpu")
    cbs_before = list(learn.cbs)
    with distributed(learn) as same:
        assert same is learn and learn.cbs == cbs_before  # nothing added
        learn.fit(1, lr=1e-2)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(learn.model.state_dict()[k], v), k
    assert is_rank_zero() and on_rank_zero(lambda a, b: a + b, 2, 3) == 5 and broadcast_object(7) == 7


def test_a_half_set_environment_gets_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="RANK, MASTER_ADDR, MASTER_PORT is not: launch the script with torchrun"):
        init_distributed()


def test_callback_alone_is_a_no_op_in_one_process():
    dls, _, _ = tiny_data()
    learn = Learner(tiny_transfer_model(0), dls, splitter=body_and_head, progress=False, device="cpu",
                    cbs=DistributedCallback())
    learn.fit(1, lr=1e-2)
    assert isinstance(learn.model, TransferModel) and learn.dls is dls


def test_sync_batchnorm_keeps_timm_activations_and_the_optimizer_parameters():
    import timm
    from timm.layers import BatchNormAct2d, SyncBatchNormAct
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    for m in model.modules():  # non-trivial running statistics, so eval-mode BatchNorm is not an identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    n_bn_act = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    assert n_bn_act > 0
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    torch_converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()

    x_train, y_train = torch.randn(8, 3, 32, 32), torch.arange(8) % 3
    learn = Learner(model, DataLoaders.from_tensors(x_train, y_train, bs=4), progress=False, device="cpu")
    opt_params = [p for g in learn.opt.param_groups for p in g["params"]]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # BatchNormAct2d and plain ones
    assert sync_batchnorm(learn) == n_bn
    model = learn.model
    assert sum(isinstance(m, SyncBatchNormAct) for m in model.modules()) == n_bn_act
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == n_bn
    assert not any(type(m) is BatchNormAct2d for m in model.modules())
    # the same Parameter objects: the optimizer still updates the model's weights
    assert [id(p) for p in opt_params] == [id(p) for g in learn.opt.param_groups for p in g["params"]]
    assert {id(p) for p in model.parameters()} == {id(p) for p in opt_params}
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-6)  # timm's converter: same function
        dropped = (torch_converted(x) - reference).abs().max().item()
    assert dropped > 0.1  # torch's converter loses the SiLU inside BatchNormAct2d


# -------------------------------------------------------------------------------------------------
# the script each of the 2 processes runs
# -------------------------------------------------------------------------------------------------
class _Probe(Callback):
    """Records, per epoch, what this rank saw."""
    order = 55

    def __init__(self):
        self.epochs = []
        self.valid_items = []  # one count per validation run (fits and learn.validate())
        self.losses = []  # this rank's own training loss at every step

    def before_epoch(self):
        self.epochs.append({"phase": self.learn.phase, "model": type(self.learn.model).__name__,
                            "bar": any(isinstance(c, ProgressCallback) for c in self.learn.cbs),
                            "train_batches": 0, "first_x": None})

    def before_validate(self):
        self.valid_items.append(0)

    def after_batch(self):
        e = self.epochs[-1]
        if self.learn.training:
            if e["first_x"] is None:
                e["first_x"] = self.learn.xb[0].detach().clone()
            e["train_batches"] += 1
            self.losses.append(float(self.learn.loss))
        else:
            self.valid_items[-1] += len(self.learn.yb[0])


class _SaveEachEpoch(Callback):
    """Saves after every epoch; at the end of the fit, every rank loads rank 0's last file back (as
    SaveModelCallback's load_best does on a shared filesystem)."""
    order = 70

    def __init__(self, rank0_models: Path):
        self.rank0_models = rank0_models

    def after_epoch(self):
        self.learn.save(f"{self.learn.phase}_{self.learn.epoch}")

    def after_fit(self):
        self.learn.load(self.rank0_models / f"{self.learn.phase}_{self.learn.epoch}.pth")


def _worker(out: Path) -> None:
    import torch.distributed as dist
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    dls, _, _ = tiny_data()
    from torchmetrics.classification import MulticlassF1Score
    learn = Learner(tiny_transfer_model(100 + rank), dls, splitter=body_and_head, path=out / f"rank{rank}",
                    metrics=[accuracy, F1Score(), MulticlassF1Score(num_classes=3, average="macro")], device="cpu")
    probe = _Probe()
    learn.add_cbs([probe, _SaveEachEpoch(out / "rank0" / "models")])
    res: dict = {}
    with distributed(learn):
        res["initial"] = {k: v.clone() for k, v in learn.model.state_dict().items()}
        learn.fine_tune(1, freeze_epochs=1, base_lr=2e-3)
        res["model_after"] = type(learn.model).__name__
        res["state"] = {k: v.clone() for k, v in learn.model.state_dict().items()}
        res["values"] = learn.recorder.values
        res["recorded_losses"] = list(learn.recorder.losses)
        res["own_losses"] = list(probe.losses)
        res["validate"] = learn.validate()
        res["save_returned"] = str(learn.save("final"))
        on_rank_zero((out / f"rank{rank}" / "note.txt").write_text, "written by rank 0")
        learn.remove_cbs([c for c in learn.cbs if isinstance(c, _SaveEachEpoch)])
        try:
            learn.fit(1, lr=1e-3 * (rank + 1))
            res["mismatch_error"] = ""
        except RuntimeError as e:
            res["mismatch_error"] = str(e)
        res["mismatch_model_after"] = type(learn.model).__name__
        res["mismatch_dls_restored"] = learn.dls is dls
        # parameters only: the forward of that first batch did update BatchNorm's running statistics
        res["mismatch_weights_unchanged"] = all(torch.equal(p, res["state"][k])
                                                for k, p in learn.model.named_parameters())
    # the same global batch as one process with batches of BS: per-rank batches of BS / 2, no shuffle
    x, y = blobs(N_TRAIN, spread=1.5)
    same = Learner(no_bn_model(), DataLoaders.from_tensors(x, y, bs=BS // 2, shuffle=False), opt_func=sgd,
                   splitter=body_and_head, progress=False, device="cpu")
    with distributed(same):
        same_global_batch_fit(same)
    res["same_batch_state"] = {k: v.clone() for k, v in same.model.state_dict().items()}
    res["same_batch_steps"] = len(same.recorder.losses)
    res["epochs"] = probe.epochs[:2]
    res["valid_items"] = probe.valid_items[:3]
    res["bar_after"] = any(isinstance(c, ProgressCallback) for c in learn.cbs)
    res["callback_after"] = any(isinstance(c, DistributedCallback) for c in learn.cbs)
    # outside the distributed() block, with the process group still up: files are still rank 0's alone
    res["outside_returned"] = [str(learn.save("outside")), str(learn.save_checkpoint("outside_checkpoint"))]
    try:
        with distributed(learn, sync_bn=True):
            pass
        res["sync_bn_cpu_error"] = ""
    except ValueError as e:
        res["sync_bn_cpu_error"] = str(e)
    (out / "results").mkdir(exist_ok=True)
    torch.save(res, out / "results" / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
