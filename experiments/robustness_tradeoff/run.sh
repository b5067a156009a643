#!/usr/bin/env bash
# The robustness-propellant trade: tune the main job's tables on catalogs of growing
# harshness, judge every table on one common held-out population and on nominal sensors.
#   bash experiments/robustness_tradeoff/run.sh OUT_DIR
# Axis 1: the LRF's first valid range reaches down to 3,000 ... 300 m (faults.acquisition_range_m).
# Axis 2: initial altitude knowledge error (1-sigma) 100 ... 600 m (scenario.nav_altitude_sigma_m).
set -euo pipefail
out=${1:?usage: run.sh OUT_DIR}
n_heldout=${N_HELDOUT:-65536}
n_nominal=${N_NOMINAL:-16384}
common=(progress=false evaluation.n_scenarios=4096 evaluation.n_nominal_scenarios=4096)

tune() {  # tune(AXIS_NAME, SWEEP_OVERRIDE): one robust_gains job per value
    python -m descent_opt -m +experiment=robust_gains "$2" "${common[@]}" \
        hydra.sweep.dir="$out/$1/tune" hydra.sweep.subdir='${hydra.job.num}'
    python -m descent_opt.aggregate "$out/$1/tune"
}

judge() {  # judge(AXIS_NAME, HELD_OUT_OVERRIDE): every table on the common populations
    tables=$(ls "$out/$1"/tune/*/gains.json | sort -V | paste -sd, -)
    python -m descent_opt -m +experiment=monte_carlo "gains=$tables" "$2" progress=false \
        evaluation.n_scenarios="$n_heldout" hydra.sweep.dir="$out/$1/heldout"
    python -m descent_opt -m +experiment=monte_carlo "gains=$tables" faults=nominal \
        progress=false evaluation.n_scenarios="$n_nominal" hydra.sweep.dir="$out/$1/nominal"
    python -m descent_opt.aggregate "$out/$1/heldout"
    python -m descent_opt.aggregate "$out/$1/nominal"
}

tune acquisition 'faults.acquisition_range_m=[3000.0,3000.0],[2000.0,3000.0],[1500.0,3000.0],[1000.0,3000.0],[700.0,3000.0],[500.0,3000.0],[300.0,3000.0]'
judge acquisition 'faults.acquisition_range_m=[300.0,3000.0]'
tune knowledge 'scenario.nav_altitude_sigma_m=100.0,200.0,300.0,400.0,500.0,600.0'
judge knowledge 'scenario.nav_altitude_sigma_m=600.0'
# Tuning noise: the main job's catalog tuned from three more seeds, judged on the same
# populations as the acquisition axis (seed 0's held-out members).
python -m descent_opt -m +experiment=robust_gains seed=1,2,3 "${common[@]}" \
    hydra.sweep.dir="$out/seeds/tune" hydra.sweep.subdir='${hydra.job.num}'
python -m descent_opt.aggregate "$out/seeds/tune"
judge seeds 'faults.acquisition_range_m=[300.0,3000.0]'
python experiments/robustness_tradeoff/pareto.py "$out"
