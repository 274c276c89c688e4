#!/usr/bin/env bash
# The fault tour: each bad input or misconfiguration a user can make, tried with `tlpipe run` on a fresh
# tiny copy of the project. Prints a Markdown row per case: exit code, non-empty stderr lines,
# traceback yes/no, files changed under params/ data/ dvc.lock, seconds; then the error line of each.
#   bash bench/fault_tour.sh            (about 2 minutes; the read-only cases need root for `unshare`)
# The kill -9 / SIGTERM faults are in tests/integration/test_faults.py.
set -u
WORK=$(mktemp -d -t tlpipe-fault-tour-XXXX); export WORK
trap 'rm -rf "$WORK"' EXIT
export DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
REPO=$(cd "$(dirname "$0")/.." && pwd)
T=$REPO/.venv/bin/tlpipe
PY=$REPO/.venv/bin/python
BASE=$WORK/base
rm -rf $BASE && (cd $REPO && $PY -c "from tests.integration.conftest import make_project; from pathlib import Path; make_project(Path('$BASE'))")
# targets
$PY - <<'PY'
import os
from pathlib import Path
import numpy as np
from PIL import Image
def folder(root, classes):
    for c, n in classes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root
r = Path(os.environ["WORK"]) / "targets"
import shutil; shutil.rmtree(r, ignore_errors=True)
folder(r / "corrupt", {"a": 8, "b": 8}); (r / "corrupt" / "b" / "broken.png").write_bytes(bytes(range(256)) * 4)
folder(r / "oneclass", {"a": 8})
folder(r / "emptyclass", {"a": 8, "b": 8}); (r / "emptyclass" / "c").mkdir()
import datasets
datasets.Dataset.from_dict({"image": [Image.fromarray(np.zeros((8, 8), np.uint8))] * 20, "label": [0] * 20}).to_parquet(str(r / "oneclass.parquet"))
PY
case_() {
  name=$1; shift
  P=$WORK/p; rm -rf $P; cp -a $BASE $P; export PREFECT_HOME=$WORK/ph
  (cd $P && git add -A >/dev/null && git commit -qm base >/dev/null 2>&1)
  start=$(date +%s.%N)
  (cd $P && env "$@" > $WORK/out 2> $WORK/err); rc=$?
  end=$(date +%s.%N)
  lines=$(grep -cv '^\s*$' $WORK/err)
  tb=$(grep -q Traceback $WORK/err $WORK/out && echo yes || echo no)
  changed=$(cd $P && git status --porcelain --untracked-files=all -- params data dvc.lock | wc -l)
  printf "| %s | %s | %s | %s | %s | %.1f |\n" "$name" "$rc" "$lines" "$tb" "$changed" "$(echo "$end - $start" | bc)"
  [ "$rc" = 2 ] && echo "    $(tail -1 $WORK/err | cut -c1-220)"
}
echo "| case | exit | stderr lines | traceback | files changed | s |"
case_ "corrupt image in imagefolder target" $T run --until prepare -s prepare.target.name=$WORK/targets/corrupt -s prepare.target.shots_per_class=2
case_ "probe_shots=[1,3,500]" $T run -s "evaluate.probe_shots=[1,3,500]"
case_ "one-class parquet target" $T run -s prepare.target.name=$WORK/targets/oneclass.parquet -s prepare.target.shots_per_class=2
case_ "one-class imagefolder target" $T run -s prepare.target.name=$WORK/targets/oneclass -s prepare.target.shots_per_class=2
case_ "empty class folder" $T run -s prepare.target.name=$WORK/targets/emptyclass -s prepare.target.shots_per_class=2
case_ "shots beyond a class" $T run -s prepare.target.shots_per_class=500
case_ "missing target path" $T run -s prepare.target.name=./no/such
case_ "TLPIPE_DEVICE=cuda, no GPU" TLPIPE_DEVICE=cuda $T run
case_ "TLPIPE_DEVICE=bogus" TLPIPE_DEVICE=bogus $T run
case_ "TLPIPE_CHECKPOINT_MINUTES=often" TLPIPE_CHECKPOINT_MINUTES=often $T run
case_ "MLFLOW_TRACKING_URI dead" MLFLOW_TRACKING_URI=http://127.0.0.1:9 $T run
case_ "PREFECT_API_URL dead" PREFECT_API_URL=http://127.0.0.1:9/api $T run
case_ "ratio out of range" $T run -s prune.ratio=1.0
case_ "nproc not dividing the batch" $T run -s pretrain.nproc=3
case_ "nnodes without TLPIPE_RDZV_ENDPOINT" $T run -s pretrain.nnodes=2
case_ "unknown key" $T run -s prune.colour=red
case_ "unknown --until" $T run --until deploy
case_ "read-only data/ with -s" unshare --mount sh -c 'mount --bind data data && mount -o remount,bind,ro data && exec "$@"' x $T run -s prune.ratio=0.25
case_ "read-only params/ with -s" unshare --mount sh -c 'mount --bind params params && mount -o remount,bind,ro params && exec "$@"' x $T run -s prune.ratio=0.25
D=$REPO/.venv/bin/dvc
case_ "broken DVC remote" sh -c "$D remote add -d broken gdrive://root/tlpipe >/dev/null && git add -A && git commit -qm r && exec $T run"
case_ "stage removed from dvc.yaml" sh -c "$PY -c \"import yaml;d=yaml.safe_load(open('dvc.yaml'));del d['stages']['surrogate'];open('dvc.yaml','w').write(yaml.safe_dump(d,sort_keys=False))\" && mkdir -p data/surrogate && git add -A && git commit -qm r && exec $T run"
