#!/usr/bin/env bash
# The mutation check (docs/testing.md): mutmut mutates the modules that hold the arithmetic and the decisions,
# one scope at a time, and runs only that scope's test files against each mutant. Prints the kill rate per
# scope and writes the survivors' diffs next to the results.
#
#   bash scripts/mutation.sh                 # every scope
#   bash scripts/mutation.sh optim lrs       # some scopes
#
# Work goes to $MUTATION_DIR (default /tmp/fastfreeze-mutation/<scope>): a copy of the checkout, mutmut's
# `mutants/` folder, results.txt (every mutant and its status) and survivors.diff. A scope stops after
# $MUTATION_SCOPE_TIMEOUT seconds (default 5400); MUTATION_RESUME=1 goes on where a previous run stopped (mutmut
# keeps the results of the mutants it has run) instead of starting afresh.
# Runs at low priority (nice 10), one test process at a time.
# Uses the virtual environment that `bash scripts/test.sh` builds ($FASTFREEZE_VENV, default ~/.venvs/fastfreeze),
# and installs mutmut into it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${FASTFREEZE_VENV:-$HOME/.venvs/fastfreeze}/bin/python"
if [ ! -x "$py" ]; then
  echo "no virtual environment at ${FASTFREEZE_VENV:-$HOME/.venvs/fastfreeze}: run 'bash scripts/test.sh' first" >&2
  exit 1
fi
MUTMUT_VERSION=3.8.1
if ! "$py" -m pip show mutmut 2>/dev/null | grep -qx "Version: $MUTMUT_VERSION"; then
  "$py" -m pip install -q "mutmut==$MUTMUT_VERSION"
fi
mutmut="$(dirname "$py")/mutmut"
out="${MUTATION_DIR:-/tmp/fastfreeze-mutation}"
limit="${MUTATION_SCOPE_TIMEOUT:-5400}"

# scope: module | mutant names (mutmut's globs: module.x_function, module.xǁClassǁmethod) | test files
SCOPES=(
  "optim|fastfreeze.core.optim.*|tests/test_optim.py tests/test_schedule.py tests/test_hyper_parameters.py"
  "norm|fastfreeze.core.norm.*|tests/test_norm.py tests/test_optim.py"
  "loop|fastfreeze.core.loop.xǁBaseLearnerǁfreeze_to__* fastfreeze.core.loop.xǁBaseLearnerǁfreeze__* fastfreeze.core.loop.xǁBaseLearnerǁunfreeze__* fastfreeze.core.loop.xǁBaseLearnerǁfrozen_modules__* fastfreeze.core.loop.xǁBaseLearnerǁ_set_train_mode__* fastfreeze.core.loop.xǁBaseLearnerǁ_backward_and_step__* fastfreeze.core.loop.xǁBaseLearnerǁset_lrs__*|tests/test_loop.py tests/test_optim.py tests/test_norm.py"
  "schedule|fastfreeze.finetune.schedule.*|tests/test_schedule.py tests/test_finetune.py tests/test_checkpoint.py tests/test_hyper_parameters.py"
  "lrs|fastfreeze.core.lrs.*|tests/test_lrs.py tests/test_schedule.py tests/test_strategies.py"
  "losses|fastfreeze.core.losses.*|tests/test_losses.py tests/test_loop.py"
  "lr_finder|fastfreeze.finetune.lr_finder.x_sweep_window* fastfreeze.finetune.lr_finder.x__too_short* fastfreeze.finetune.lr_finder.x_valley* fastfreeze.finetune.lr_finder.x_minimum* fastfreeze.finetune.lr_finder.x_steep* fastfreeze.finetune.lr_finder.x_slide*|tests/test_lr_finder.py"
  "auto_lr|fastfreeze.finetune.auto_lr.x_pick_base_lr* fastfreeze.finetune.auto_lr.x_finite_median*|tests/test_auto_lr.py"
  "strategies|fastfreeze.finetune.strategies.*|tests/test_strategies.py tests/test_finetune.py"
  "groups|fastfreeze.models.groups.*|tests/test_groups.py"
  "layer_groups|fastfreeze.core.layer_groups.*|tests/test_loop.py tests/test_groups.py tests/test_errors.py"
  # preprocess: the unit tests of its bit-depth decoding, predict's input rule and InputSize/SizedTransform are in
  # test_preprocess.py too (test_predictor.py and test_progressive_resize.py test them through a learner, slowly)
  "preprocess|fastfreeze.data.preprocess.*|tests/test_preprocess.py"
  "logistic_probe|fastfreeze.finetune.logistic_probe.*|tests/test_logistic_probe.py"
  "linear_head|fastfreeze.models.linear_head.*|tests/test_linear_head.py"
)

wanted=("$@")
summary=()
for entry in "${SCOPES[@]}"; do
  IFS='|' read -r scope globs tests <<<"$entry"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $scope "* ]]; then
    continue
  fi
  first="${globs%% *}"; IFS=. read -r _ package name _ <<<"$first"; module="fastfreeze/$package/$name.py"
  work="$out/$scope"
  echo "== $scope: $module, tests: $tests"
  [ "${MUTATION_RESUME:-0}" = 1 ] || rm -rf "$work"
  mkdir -p "$work"
  # a copy of the checkout (tracked and untracked files)
  (cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf -) | tar -xf - -C "$work"
  {
    echo "[mutmut]"
    echo "source_paths = fastfreeze/"
    echo "only_mutate = $module"
    echo "pytest_add_cli_args_test_selection ="
    for t in $tests; do echo "    $t"; done
    echo "also_copy ="
    echo "    nbs/"
    # error messages: their wording is checked by the tests of docs/errors.md, not by mutating it
    echo "do_not_mutate_patterns = ^\s*raise \w+\("
    # workers fork from a server that has imported torch but run nothing: a fork after torch has used its
    # OpenMP threads hangs
    echo "process_isolation = forkserver"
  } >"$work/setup.cfg"
  # shellcheck disable=SC2086
  (cd "$work" && env -u PYTHONPATH OMP_WAIT_POLICY=PASSIVE timeout "$limit" nice -n 10 "$mutmut" run \
     --max-children 1 $globs >"$work/run.log" 2>&1) || echo "   mutmut stopped (exit $?): see $work/run.log"
  (cd "$work" && env -u PYTHONPATH "$mutmut" results --all true >"$work/results.txt" 2>&1) || true
  line="$("$py" - "$work/results.txt" "$scope" "$work/survivors.txt" $globs <<'EOF'
import fnmatch, sys
results, scope, survivors_file, globs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
status = {}
for row in open(results):
    name, _, state = row.strip().rpartition(": ")
    if name and any(fnmatch.fnmatch(name, g) for g in globs):
        status[name] = state
done = {n: s for n, s in status.items() if s not in ("not checked", "skipped")}
DETECTED = ("killed", "timeout", "segfault")  # a test failed, hung or crashed: the mutant was caught
killed = sum(s in DETECTED for s in done.values())
survived = sorted(n for n, s in done.items() if s not in DETECTED)  # 'survived', and 'no tests' reach it
open(survivors_file, "w").write("".join(n + "\n" for n in survived))
rate = 100 * killed / len(done) if done else float("nan")
print(f"{scope}: {killed}/{len(done)} killed ({rate:.1f}%), {len(status) - len(done)} not run, "
      f"{len(survived)} survivors")
EOF
)"
  echo "   $line"
  summary+=("$line")
  : >"$work/survivors.diff"
  while read -r name; do
    (cd "$work" && env -u PYTHONPATH "$mutmut" show "$name" </dev/null >>"$work/survivors.diff" 2>&1) || true
  done <"$work/survivors.txt"
done
echo
echo "== kill rate per scope (survivors' diffs in $out/<scope>/survivors.diff)"
printf '%s\n' "${summary[@]}"
