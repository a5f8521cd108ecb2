#!/bin/bash
# Times `vecseal calibrate` at d = 384 on 10 000 labelled vectors on one core, against a
# scikit-learn peer that does only the utility half (exact 10-NN search, 5-NN and logistic
# regression, for the same 7 β plus plaintext) on the same data in the same run.
# Usage: time_calibrate.sh CALIBRATE_BINARY [REPETITIONS]   (the binary takes calibrate's args)
set -euo pipefail
binary=$(realpath "$1")
repetitions=${2:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

/usr/bin/python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(7)
d, n, k = 384, 10000, 20
offset = rng.normal(0, 0.6, d) * np.linspace(0.2, 2, d)
scale = np.linspace(0.3, 1.7, d)[rng.permutation(d)]
centres = rng.normal(0, 1, (k, d))
labels = rng.integers(0, k, n)
x = offset + scale * (centres[labels] + 3.0 * rng.normal(0, 1, (n, d)))
x /= np.linalg.norm(x, axis=1, keepdims=True)
np.save("sample.npy", x.astype(np.float32))
np.savetxt("labels.txt", labels, fmt="%d")
PY

cat > peer.py <<'PY'
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.preprocessing import StandardScaler
x = np.load("sample.npy"); y = np.loadtxt("labels.txt", dtype=int)
rng = np.random.default_rng(1); order = rng.permutation(len(x))
q, db = order[:500], order[500:]
test, train = order[:1000], order[1000:5000]
truth = NearestNeighbors(n_neighbors=10).fit(x[db]).kneighbors(x[q], return_distance=False)
for beta in [None, 0.25, 0.5, 1, 1.5, 2, 3, 5]:
    c = x if beta is None else x + rng.normal(0, beta / 4 / np.sqrt(x.shape[1]), x.shape)
    NearestNeighbors(n_neighbors=10).fit(c[db]).kneighbors(c[q], return_distance=False)
    KNeighborsClassifier(5).fit(c[train], y[train]).score(c[test], y[test])
    s = StandardScaler().fit(c[train])
    LogisticRegression(max_iter=100).fit(s.transform(c[train]), y[train]).score(s.transform(c[test]), y[test])
PY

export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
measure() {  # prints "wall cpu" in seconds; a failing command stops the script
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o times.txt taskset -c 0 "$@" > /dev/null
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" '{ printf "%.2f %.2f\n", e - s, $1 + $2 }' times.txt
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

: > calibrate.txt
: > peer.txt
for _ in $(seq "$repetitions"); do
  measure "$binary" --sample sample.npy --labels labels.txt --out report >> calibrate.txt
  measure /usr/bin/python3 peer.py >> peer.txt
done
calibrate_wall=$(cut -d' ' -f1 calibrate.txt | median)
calibrate_cpu=$(cut -d' ' -f2 calibrate.txt | median)
peer_wall=$(cut -d' ' -f1 peer.txt | median)
peer_cpu=$(cut -d' ' -f2 peer.txt | median)
echo "calibrate  d=384 n=10000 7 betas, labels: median wall ${calibrate_wall} s, median CPU ${calibrate_cpu} s"
echo "sklearn peer (utility only):             median wall ${peer_wall} s, median CPU ${peer_cpu} s"
awk -v a="$calibrate_cpu" -v b="$peer_cpu" 'BEGIN { printf "CPU ratio calibrate / peer: %.2f\n", a / b }'
