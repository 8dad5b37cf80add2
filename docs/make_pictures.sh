#!/usr/bin/env bash
# Redraws every picture of docs/tour.md and the README from the shipped model (pigpt/model/default), one
# sample.py command each, as the tour shows them. Run from the repository root: bash docs/make_pictures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
S="python sample.py"
$S "The function returns" --max-new-tokens 1 --seed 0 --plot docs/img/distribution.png
$S "Which is the largest ocean? The" --max-new-tokens 1 --seed 0 --plot docs/img/ocean.png
$S "The function returns" --compare-temperatures 0.01,1,100 --plot docs/img/softmax.png
$S "Which is the largest ocean?" --max-new-tokens 8 --seed 0 --plot docs/img/steps.png
$S "Which is the largest ocean?" -n 8 --max-new-tokens 6 --seed 0 --temperature 0.8 --top-p 0.95 --tree docs/img/branching.png
$S "The function returns" --compare-temperatures 0.5,1,1.5 --plot docs/img/temperature.png
$S "The function returns" --compare-top-k 1,3,50 --plot docs/img/top-k.png
$S "The function returns" --compare-top-p 0.5,0.8,0.95 --plot docs/img/top-p.png
$S "def fibonacci(n):" --num-beams 4 --max-new-tokens 6 --tree docs/img/beams.png
$S "The function returns" --temperature 0 --repetition-penalty 1.5 --max-new-tokens 10 --plot docs/img/repetition.png
$S "def add(a, b):
    return a + b
" --min-new-tokens 3 --max-new-tokens 8 --seed 8 --plot docs/img/min-new-tokens.png
$S "Which is the largest ocean?" -n 4 --seed 42 --temperature 0.8 --max-new-tokens 8 --tree docs/img/seeds.png
$S "The function returns" --compare-min-p 0.02,0.1,0.3 --plot docs/img/min-p.png
$S "The function returns" --compare-typical-p 0.2,0.5,0.9 --plot docs/img/typical.png
$S "The function returns" --compare-epsilon-cutoff 1e-3,3e-3,0.02 --plot docs/img/epsilon.png
$S "The function returns" --compare-eta-cutoff 1e-3,3e-3,0.02 --plot docs/img/eta.png
