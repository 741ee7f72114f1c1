"""Fault injection, the long version of tests/test_fault_injection.py: `fastfreeze fine-tune --resume` SIGKILLed
again and again, resumed after every kill, compared bit for bit with an uninterrupted run.

For every seed: the seeded kill points of the test (a mid-batch kill and a mid-checkpoint-write kill in every
epoch, one during validation, four in the export and final writes; `fault_harness.kill_points`), then
`--random-kills` SIGKILLs from a timer at a random moment of a run (whatever the process is doing then), and
a last run to the end. After every kill no file under its final name may be half-written
(`check_no_half_written_file`); at the end the exported weights, the history of losses and lrs, and the
results must equal the uninterrupted run's exactly.

    python benchmarks/fault_injection.py [--seeds 5] [--random-kills 10] [--workers 2] [--lr auto] [--epochs 3]

`--workers 2` loads the images in persistent worker processes (from_folder's default), so exact resume with
workers is checked too; `--lr auto` lets fine_tune choose its base lr (the resumed runs must not choose again).
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fault_harness import (ForkServer, assert_same_final_state, check_no_half_written_file, cli_argv,  # noqa: E402
                           final_state, image_folder, is_temporary, kill_points)

N_BATCHES = 4  # image_folder's 16 training images in batches of 4


def one_seed(server: ForkServer, root: Path, seed: int, args: argparse.Namespace) -> dict[str, float]:
    data = image_folder(root / "data")
    reference, out = root / "reference", root / "run"
    started = time.perf_counter()
    answer = server.run(cli_argv(data, reference, args.workers, args.lr, args.epochs), None, root / "reference.log")
    if answer != {"exit": 0}:
        raise RuntimeError(f"the uninterrupted run failed: {answer}, see {root / 'reference.log'}")
    run_seconds = time.perf_counter() - started
    rng = random.Random(seed)
    points = kill_points(rng, [("frozen", 1), ("unfrozen", args.epochs)], N_BATCHES)
    points += [{"at": "time", "seconds": round(rng.uniform(0.3, run_seconds), 2)} for _ in range(args.random_kills)]
    kills = runs = 0
    for i, point in enumerate(points):
        answer = server.run(cli_argv(data, out, args.workers, args.lr, args.epochs), point, root / f"run{i}.log")
        runs += 1
        if answer == {"signal": 9}:
            kills += 1
        elif point["at"] != "time" or answer != {"exit": 0}:  # a timer may fire after a run has ended
            raise RuntimeError(f"kill point {point}: {answer}, see {root / f'run{i}.log'}")
        check_no_half_written_file(out)
    answer = server.run(cli_argv(data, out, args.workers, args.lr, args.epochs), None, root / "last.log")
    if answer != {"exit": 0}:
        raise RuntimeError(f"the last run failed: {answer}, see {root / 'last.log'}")
    assert_same_final_state(final_state(out), final_state(reference))
    leftovers = [p for p in out.rglob("*") if is_temporary(p, out)]
    if leftovers:
        raise AssertionError(f"temporary files left after a complete run: {leftovers}")
    return {"kills": kills, "runs": runs + 1, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--random-kills", type=int, default=10, help="timer kills per seed, after the seeded ones")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes (persistent)")
    parser.add_argument("--lr", default="auto", help="--lr of the command line (a number or 'auto')")
    parser.add_argument("--epochs", type=int, default=3, help="unfrozen epochs (after one frozen)")
    args = parser.parse_args()
    server = ForkServer()
    total = {"kills": 0, "runs": 0}
    print(f"seed  kills  runs  seconds   (workers {args.workers}, lr {args.lr}, 1 frozen + {args.epochs} unfrozen "
          "epochs)")
    try:
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory(prefix=f"fault_injection_{seed}_") as tmp:
                result = one_seed(server, Path(tmp), seed, args)
            print(f"{seed:>4}  {result['kills']:>5}  {result['runs']:>4}  {result['seconds']:>7.1f}   bit-identical")
            for key in total:
                total[key] += result[key]
    finally:
        server.close()
    print(f"all {args.seeds} seeds bit-identical to the uninterrupted run after {total['kills']} SIGKILLs in "
          f"{total['runs']} runs; no half-written file seen under its final name")


if __name__ == "__main__":
    main()
