"""Bugs the test suite must catch, each written as a small change of the source: every one is applied to a
fresh copy of the checkout and the tests named with it are run there; each must fail (docs/testing.md).

    python scripts/named_mutants.py            # all of them
    python scripts/named_mutants.py 3 7        # some, by number

Prints one line per bug: caught (which tests failed) or MISSED. Exits 1 when one is missed. Runs one pytest
process at a time, at low priority; the notebooks' bugs take a minute or two each.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Bug:
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = [
    Bug("weight decay on every parameter, norms and biases too", "fastfreeze/core/loop.py",
        "no_decay = set() if wd_bn_bias else no_decay_param_ids(self.model)", "no_decay = set()",
        ("tests/test_optim.py::test_default_weight_decay_matches_torch_adamw_with_a_decay_and_a_no_decay_group_per_"
         "layer_group",)),
    Bug("every group decayed at the head's lr", "fastfreeze/core/optim.py",
        'rate = group["lr"] * group.get("wd", 0.0)', 'rate = opt.param_groups[-1]["lr"] * group.get("wd", 0.0)',
        ("tests/test_optim.py::test_default_weight_decay_matches_torch_adamw_with_a_decay_and_a_no_decay_group_per_"
         "layer_group",)),
    Bug("a step the GradScaler skips still decays the weights", "fastfreeze/core/loop.py",
        "            self.scaler.unscale_(self.opt)\n",
        "            self.scaler.unscale_(self.opt)\n            self.weight_decay(self.opt, (), {})\n",
        ("tests/test_optim.py::test_a_step_the_grad_scaler_skips_decays_nothing",)),
    Bug("arrays resized with nearest-neighbour interpolation", "fastfreeze/data/preprocess.py",
        'mode = interpolate_mode(data_config["interpolation"])', 'mode = "nearest"',
        ("tests/test_preprocess.py::test_array_resize_matches_pil_on_real_photos",)),
    Bug("arrays resized without antialiasing", "fastfreeze/data/preprocess.py",
        'antialias = mode in ("bilinear", "bicubic")', "antialias = False",
        ("tests/test_preprocess.py::test_array_resize_matches_pil_on_real_photos",)),
    Bug("predict squishes an image the data cropped", "fastfreeze/vision.py",
        'method = getattr(self.dls, "resize_method", "crop")', 'method = "squish"',
        ("tests/test_vision.py::test_predict_is_the_softmax_of_the_model_on_the_photo_preprocessed_by_hand",)),
    Bug("predict reads a PIL image's channels as BGR", "fastfreeze/data/preprocess.py",
        "item = torch.from_numpy(np.array(item))  # (H, W, 3) uint8",
        "item = torch.from_numpy(np.array(item)[..., ::-1].copy())",
        ("tests/test_vision.py::test_predict_is_the_softmax_of_the_model_on_the_photo_preprocessed_by_hand",)),
    Bug("predict flips the image", "fastfreeze/data/preprocess.py",
        "return batch_to_model_input(pixels.unsqueeze(0), layout, data_config)[0]",
        "return batch_to_model_input(pixels.unsqueeze(0), layout, data_config, torch.tensor([True]))[0]",
        ("tests/test_vision.py::test_predict_is_the_softmax_of_the_model_on_the_photo_preprocessed_by_hand",)),
    Bug("the supervised contrastive loss with its sign flipped", "fastfreeze/core/losses.py",
        "return -(pos_log_prob[has_pos] / n_pos[has_pos]).mean()",
        "return (pos_log_prob[has_pos] / n_pos[has_pos]).mean()",
        ("tests/test_losses.py",)),
    Bug("error_rate returns the accuracy", "fastfreeze/core/metrics.py",
        "return 1 - accuracy(pred, targ)", "return accuracy(pred, targ)", ("tests/test_metrics.py",)),
    Bug("top_k_accuracy counts the top k - 1", "fastfreeze/core/metrics.py",
        "topk = pred.topk(k, dim=-1).indices", "topk = pred.topk(k - 1, dim=-1).indices", ("tests/test_metrics.py",)),
    Bug("Metric averages batch means instead of items", "fastfreeze/core/metrics.py",
        "self.total = self.total + self.fn(pred, targ).detach().double() * n\n        self.count += n",
        "self.total = self.total + self.fn(pred, targ).detach().double()\n        self.count += 1",
        ("tests/test_metrics.py", "tests/test_loop.py::test_validate_is_size_weighted")),
    Bug("norm='recalibrate' never recalibrates", "fastfreeze/core/loop.py",
        'if self.norm == "recalibrate" and self.frozen_groups', 'if False and self.frozen_groups',
        ("tests/test_norm.py::test_norm_recalibrate_reestimates_frozen_batchnorm_statistics_on_the_training_data",)),
    Bug("vision_learner ignores group_level", "fastfreeze/vision.py",
        "return layer_groups(m, level=group_level, max_groups=max_groups)",
        'return layer_groups(m, level="coarse", max_groups=max_groups)',
        ("tests/test_vision.py::test_group_level_fine_gives_one_group_per_block",)),
    Bug("learn.export writes the model's initial weights", "fastfreeze/inference/export.py",
        "for key, value in learn.model.state_dict().items():",
        "for key, value in {k: torch.zeros_like(v) for k, v in learn.model.state_dict().items()}.items():",
        ("tests/test_export.py::test_learn_export_writes_what_load_learner_reads_back",)),
    Bug("two processes sum their gradients instead of averaging them", "fastfreeze/callbacks/distributed.py",
        "        self.learn.model = self._ddp\n",
        "        self._ddp.register_comm_hook(None, lambda _, bucket: dist.all_reduce(bucket.buffer(), async_op=True)"
        ".get_future().then(lambda fut: fut.value()[0]))\n        self.learn.model = self._ddp\n",
        ("tests/test_distributed.py::test_two_processes_train_exactly_as_one_process_with_the_same_global_batch",)),
    Bug("resume leaves out the random states", "fastfreeze/core/loop.py",
        '        set_rng_states(self.dls.train, state["rng"])\n', "",
        ("tests/test_checkpoint.py::test_fit_one_cycle_resumed_after_a_kill_ends_like_the_uninterrupted_run",)),
    Bug("the schedule's lr stays where the cycle starts (peak / div)", "fastfreeze/finetune/schedule.py",
        'group["lr"] = sched(pos)', 'group["lr"] = sched(0.0)',
        ("tests/test_schedule.py::test_fit_one_cycle_single_lr_matches_spec_check_values",
         "tests/test_notebooks.py::test_notebook_runs[02_partial_unfreezing]")),
    Bug("the schedule's lr stays where the cycle ends (peak / 1e5): nothing trains", "fastfreeze/finetune/schedule.py",
        'group["lr"] = sched(pos)', 'group["lr"] = sched(1.0)',
        ("tests/test_cli.py::test_demo_on_tiny_settings_learns",)),
    Bug("fine_tune's unfrozen phase at base_lr instead of base_lr / 2", "fastfreeze/finetune/strategies.py",
        'yield Phase(epochs, 0, disc(base_lr / 2), "unfrozen")', 'yield Phase(epochs, 0, disc(base_lr), "unfrozen")',
        ("tests/test_notebooks.py::test_notebook_runs[00_quickstart]",
         "tests/test_notebooks.py::test_notebook_runs[03_strategies]")),
    Bug("norm parameters of frozen groups train even with train_bn=False", "fastfreeze/core/loop.py",
        "trainable = i >= k or (self.train_bn and id(p) in self.norm_param_ids)",
        "trainable = i >= k or id(p) in self.norm_param_ids",
        ("tests/test_notebooks.py::test_notebook_runs[02_partial_unfreezing]",)),
]


def copy_checkout(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            target = dst / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())


def check(number: int, bug: Bug) -> bool:
    with tempfile.TemporaryDirectory(prefix="fastfreeze-bug-") as tmp:
        root = Path(tmp)
        copy_checkout(root)
        source = root / bug.file
        text = source.read_text()
        if text.count(bug.old) != 1:
            raise SystemExit(f"bug {number}: {bug.file} holds {text.count(bug.old)} copies of {bug.old!r}, not 1: "
                             "update the bug to the source")
        source.write_text(text.replace(bug.old, bug.new))
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_WAIT_POLICY": "PASSIVE"}
        env.pop("CI", None)
        start = time.perf_counter()
        run = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-rf", *bug.tests], cwd=root, env=env, capture_output=True, text=True)
        failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.MULTILINE)))
        caught = run.returncode == 1 and bool(failed)
        seconds = time.perf_counter() - start
        verdict = f"caught by {', '.join(failed)}" if caught else f"MISSED (pytest exit {run.returncode})"
        print(f"{number:>2}. {bug.what}: {verdict} ({seconds:.0f} s)", flush=True)
        if not caught and run.returncode not in (0, 1):
            print(run.stdout[-3000:], run.stderr[-3000:])
        return caught


def main(argv: list[str]) -> int:
    chosen = [int(a) for a in argv] or list(range(1, len(BUGS) + 1))
    missed = [n for n in chosen if not check(n, BUGS[n - 1])]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
