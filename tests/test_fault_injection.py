"""A command line that survives `kill -9`: `fastfreeze fine-tune --resume` is SIGKILLed at 11 seeded moments
(mid-batch, mid-validation, mid-checkpoint write, between a write and its rename, mid-export), resumed after each,
and ends bit-identical to an uninterrupted run (which loaded its images with 2 workers, the killed runs with
none); no half-written file is ever visible under its final name.
benchmarks/fault_injection.py runs the long version (more seeds, worker processes, kills at random times)."""
import random

import pytest

from fault_harness import (ForkServer, assert_same_final_state, check_no_half_written_file, cli_argv, final_state,
                           image_folder, is_temporary, kill_points)

SEED = 20
PHASES = [("frozen", 1), ("unfrozen", 2)]  # cli_argv: --freeze-epochs 1 --epochs 2
N_BATCHES = 4  # 16 training images in batches of 4


@pytest.fixture(scope="module")
def server():
    server = ForkServer()
    yield server
    server.close()


def test_sigkill_at_seeded_moments_then_resume_ends_bit_identical(tmp_path, server):
    """The uninterrupted run loads its images in 2 worker processes, the interrupted ones in the main process:
    the same seed gives the same run in any process with any number of workers."""
    data = image_folder(tmp_path / "data")
    reference = tmp_path / "reference"
    assert server.run(cli_argv(data, reference, workers=2), None, tmp_path / "reference.log") == {"exit": 0}, \
        (tmp_path / "reference.log").read_text()[-3000:]
    expected = final_state(reference)

    out = tmp_path / "run"
    points = kill_points(random.Random(SEED), PHASES, N_BATCHES)
    assert len(points) >= 10
    seen = []
    for i, point in enumerate(points):
        log = tmp_path / f"run{i}.log"
        assert server.run(cli_argv(data, out), point, log) == {"signal": 9}, \
            f"kill point {point} was not reached:\n{log.read_text()[-3000:]}"
        seen.append(check_no_half_written_file(out))
    last = tmp_path / "last.log"
    assert server.run(cli_argv(data, out), None, last) == {"exit": 0}, last.read_text()[-3000:]
    assert_same_final_state(final_state(out), expected)
    assert not [p for p in out.rglob("*") if is_temporary(p, out)]  # every leftover was cleared by a later write
    # the kills did interrupt writes: some runs left a checkpoint behind, the export one its weights only
    assert any("checkpoint.pth" in names for names in seen)
    assert any("model/model.safetensors" in names and "model/config.json" not in names for names in seen)
