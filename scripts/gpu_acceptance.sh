#!/usr/bin/env bash
# GPU acceptance: on a CUDA workstation with fetched weights, check that every real preset loads
# and renders. Without CUDA it runs the same steps on the tiny twins and says so.
# Usage: scripts/gpu_acceptance.sh [OUT_DIR]      (env: FLX_WEIGHTS_DIR, FLX_HOME as usual)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/acceptance}
FLX=${FLX:-.venv/bin/flx}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  MODE=real
  STILLS="stills-sdxl"
  IDSTILLS="stills-faceid-sdxl stills-instantid-sdxl"
  VIDEOS="video-wan21-t2v-1.3b video-wan22-ti2v-5b video-wan21-i2v-480p video-wan21-i2v-720p video-wan22-i2v-a14b
          video-wan21-flf2v-14b-720p video-wan21-vace-14b video-wan21-i2v-480p-lightx2v"
  REFVIDEOS="video-wan21-t2v-14b-standin video-wan22-t2v-a14b-standin video-wan21-vace-14b-standin
             video-wan21-t2v-14b-standin-lightx2v video-wan22-t2v-a14b-standin-lightning"
  echo "CUDA found: checking the REAL presets (weights must be fetched: flx weights fetch ...)"
else
  MODE=tiny
  STILLS="tiny-stills-sdxl"
  IDSTILLS="tiny-stills-faceid-sdxl tiny-stills-instantid-sdxl"
  VIDEOS="tiny-video-wan21-t2v-1.3b tiny-video-wan22-ti2v-5b tiny-video-wan21-i2v-480p tiny-video-wan21-i2v-720p
          tiny-video-wan22-i2v-a14b tiny-video-wan21-flf2v-14b-720p tiny-video-wan21-vace-14b
          tiny-video-wan21-i2v-480p-lightx2v"
  REFVIDEOS="tiny-video-wan21-t2v-14b-standin tiny-video-wan22-t2v-a14b-standin tiny-video-wan21-vace-14b-standin
             tiny-video-wan21-t2v-14b-standin-lightx2v tiny-video-wan22-t2v-a14b-standin-lightning"
  echo "NO CUDA on this machine: running the same steps on the tiny random-weight twins instead."
  "$PY" scripts/make_tiny_weights.py >/dev/null || exit 1
fi

fail=0
ready() {  # ready PRESET: doctor says it can run here (weights present and verified); else SKIP with the reason
  local why
  if why=$("$FLX" doctor -p "$1" 2>&1 >/dev/null); then return 0; fi
  echo "SKIP  $1  (${why#error: })"; return 1
}
step() {  # step NAME CMD...
  local name=$1; shift
  local t0=$(date +%s)
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "PASS  $name  ($(( $(date +%s) - t0 )) s)"
  else
    echo "FAIL  $name  (see $OUT/$name.log)"; tail -n 3 "$OUT/$name.log" | sed 's/^/      /'; fail=1
  fi
}

step doctor "$FLX" doctor
step weights-verify "$FLX" weights verify
for p in $STILLS; do
  ready "$p" || continue
  step "$p" "$FLX" still --preset "$p" --prompt "studio portrait photo of a person" --seed 1 --out "$OUT/$p.png"
done
# Identity stills need a character embedded with each method's own encoder (FaceID: buffalo_l, InstantID:
# antelopev2; the tiny twins in tiny mode), made from the test photos in a library of the acceptance run's own.
FACES=${FACES:-../shared/testdata/faces}
export FLX_LIBRARY_PATH="$OUT/acceptance-library.sqlite"
rm -f "$FLX_LIBRARY_PATH" "$FLX_LIBRARY_PATH-wal" "$FLX_LIBRARY_PATH-shm"
encoder_of() {  # encoder_of PRESET: the encoder id of the face pack the preset's method was trained on
  "$PY" -c 'import sys
from engine.api import Engine
from engine.identity.registry import encoder_for_component
eng = Engine()
print(encoder_for_component(eng.store.manifest, eng.preset(sys.argv[1]).components.face_analysis))' "$1"
}
for p in $IDSTILLS; do
  ready "$p" || continue
  if [ ! -f "$FACES/obama.jpg" ]; then echo "SKIP  $p  (no test photos in $FACES: set FACES=DIR)"; continue; fi
  if ! "$FLX" character show accept >/dev/null 2>&1; then
    step character "$FLX" character create accept --ref "$FACES/obama.jpg" --ref "$FACES/obama2.jpg"
  fi
  enc=$(encoder_of "$p")
  step "reembed-$enc" "$FLX" character reembed accept --encoder "$enc"
  step "$p" "$FLX" still --preset "$p" --character accept --prompt "studio portrait photo" --seed 1 --out "$OUT/$p.png"
done
START="$OUT/${STILLS%% *}.png"
for p in $VIDEOS; do
  ready "$p" || continue
  case $p in
    *flf2v*) step "$p" "$FLX" clip --preset "$p" --prompt "the person turns their head" --image "$START" --end-image "$START" --out "$OUT/$p.mp4" ;;
    *i2v*) step "$p" "$FLX" clip --preset "$p" --prompt "the person turns their head" --image "$START" --out "$OUT/$p.mp4" ;;
    *)     step "$p" "$FLX" clip --preset "$p" --prompt "a person walks on a beach" --out "$OUT/$p.mp4" ;;
  esac
done
# Clips and a sequence of the acceptance character with Stand-In reference attention (`flx video`, `flx sequence`).
for p in $REFVIDEOS; do
  ready "$p" || continue
  if [ ! -f "$FACES/obama.jpg" ]; then echo "SKIP  $p  (no test photos in $FACES: set FACES=DIR)"; continue; fi
  if ! "$FLX" character show accept >/dev/null 2>&1; then
    step character "$FLX" character create accept --ref "$FACES/obama.jpg" --ref "$FACES/obama2.jpg"
  fi
  step "$p" "$FLX" video accept --preset "$p" --prompt "a man walks on a beach" --seconds 2 --seed 1 --out "$OUT/$p.mp4"
  case $p in
    *vace*)
      printf 'preset: %s\ncharacter: accept\nsegment_seconds: 2\nshots:\n  - {prompt: a man walks on a beach, seconds: 4}\n' "$p" >"$OUT/$p.sequence.yaml"
      step "$p-sequence" "$FLX" sequence "$OUT/$p.sequence.yaml" --out "$OUT/$p-sequence.mp4" ;;
  esac
done
# Character LoRA (`flx train`, then a still with it): a short run on the plain SDXL preset, likeness tracked.
TRAIN_PRESET=${STILLS%% *}
if [ "$MODE" = real ]; then TRAIN_STEPS=300; else TRAIN_STEPS=4; fi
if ready "$TRAIN_PRESET" && [ -f "$FACES/obama.jpg" ]; then
  "$FLX" character show accept >/dev/null 2>&1 ||
    step character "$FLX" character create accept --ref "$FACES/obama.jpg" --ref "$FACES/obama2.jpg"
  step train "$FLX" train accept --preset "$TRAIN_PRESET" --from refs --min-images 2 --steps "$TRAIN_STEPS" \
    --checkpoint-every 100 --validate-every 100 --fresh --out "$OUT/train"
  step lora-still "$FLX" still --method lora --preset "$TRAIN_PRESET" --character accept \
    --prompt "portrait photo in a park" --out "$OUT/lora-still.png"
fi
echo "mode: $MODE; outputs in $OUT"
exit $fail
