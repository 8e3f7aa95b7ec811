#!/usr/bin/env bash
# Runs every entry of a sweep (configs/sweeps/<SWEEP>.py: get_sweep() -> list of dicts of
# dotted config overrides) one after the other on the TPU VM, each in its own workdir
# gs://$BUCKET/workdirs/<SWEEP>/<key=value,...>.
#
#   TPU_NAME=bitseg ZONE=us-central2-b BUCKET=my-bucket SWEEP=lap launch/sweep.sh
#
# Extra environment: SWEEP (required), CONFIG (default: the sweep module's BASE_CONFIG, else
# configs/base.py), and everything run.sh reads. DRY_RUN=1 prints every command.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/common.sh
source launch/common.sh
require SWEEP

# One line per entry: "<workdir suffix><TAB><base config><TAB><flag><TAB><flag>...".
expand_sweep() {
  python3 - "$SWEEP" "${CONFIG:-}" <<'PY'
import importlib, sys
name, config = sys.argv[1], sys.argv[2]
module = importlib.import_module(f"configs.sweeps.{name}")
config = config or getattr(module, "BASE_CONFIG", "configs/base.py")
for entry in module.get_sweep():
    flags = [f"--config.{key}={value}" for key, value in entry.items()]
    suffix = ",".join(f"{key.split('.')[-1]}={value}" for key, value in entry.items())
    suffix = "".join(c if c.isalnum() or c in "=,.-_" else "" for c in suffix)
    print("\t".join([suffix, config, *flags]))
PY
}

mapfile -t entries < <(expand_sweep)
echo "sweep $SWEEP: ${#entries[@]} runs" >&2
for line in "${entries[@]}"; do
  IFS=$'\t' read -r -a fields <<<"$line"
  CONFIG="${fields[1]}" NAME="$SWEEP/${fields[0]}" launch/run.sh "${fields[@]:2}"
done
