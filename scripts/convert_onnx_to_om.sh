#!/usr/bin/env bash
# Convert the ONNX graphs of an `openvla-ros export` directory (the ones its manifest lists: three for
# OpenVLA, six or five for OpenVLA-OFT) into Ascend offline models
# (.om) with ATC, and copy the manifest and processor files next to them, so the output directory
# is all the `om` backend needs (`openvla-ros predict --backend om --om OUT`).
#
# usage: convert_onnx_to_om.sh --onnx DIR --out DIR [--soc-version SOC] [--precision GRAPH=MODE]...
#                              [--log LEVEL] [--allow-fp32] [--dry-run]
#   --soc-version   ATC --soc_version (default Ascend310P3; `npu-smi info` shows the chip name)
#   --precision     ATC --precision_mode_v2 for one graph: fp16 | origin | mixed_float16 | ...
#                   defaults: vla_llm=origin (keep the exported fp16 and the float32
#                   RMSNorm/softmax), vision_backbone/projector=fp16;
#                   OFT: embedding=fp16,
#                   oft_llm=origin, action_head=origin (its LayerNorms), proprio_projector=fp16
#   --allow-fp32    convert an fp32 export anyway (refused by default, see below)
#   --dry-run       print the ATC commands instead of running them (no atc needed)
#
# The ATC flags used, and why (ATC tool guide, "Command-line Options"; the reference recipe
# hicann/cann-recipes-embodied-intelligence manipulation/openvla/infer_with_om/convert_onnx_to_om.sh
# converts the same graphs the same way):
#   --model=./GRAPH.onnx   atc runs from inside the export directory: graphs over 64 MiB keep their
#                          weights in GRAPH.onnx.data, referenced by a path relative to the graph,
#                          which ATC's ONNX parser resolves against its working directory (the
#                          recipe does the same for that reason)
#   --framework=5          the input is ONNX (0 Caffe, 1 MindSpore, 3 TensorFlow, 5 ONNX)
#   --output=ABS/GRAPH     absolute, because of the directory change; ATC appends .om
#   --soc_version          the chip the .om is compiled for; it only loads on that chip
#   --precision_mode_v2    fp16 for the vision graphs, projector and embedding (as the recipe leaves
#                          them: ATC's default); origin for the LLM graphs, as the recipe converts
#                          them, so the float32 RMSNorm reductions (sum/N, the recipe's op choice)
#                          and softmax the export writes stay float32
#   --log                  ATC's log level (error by default: the conversion's own output stays short)
# Only for a graph whose manifest entry has shape gears (vla_llm: prefill and decode in one model,
# so the card holds one copy of the LLM weights; ATC guide, --dynamic_dims):
#   --input_shape          each dynamic input with -1 on its sequence axis, e.g.
#                          "input_ids:1,-1;attention_mask:1,-1;position_ids:1,-1"; only the dynamic
#                          inputs are listed (the others keep the graph's static shapes), so the
#                          dims the runtime passes to acl.mdl.set_input_dynamic_dims are exactly
#                          these inputs' shapes concatenated, in this order (the documented form)
#   --dynamic_dims         the gears, one value per -1 in --input_shape order, gears separated by
#                          ";": "L,L,L;1,1,1" (the prefill's length L and a decode step's 1); ATC
#                          compiles one static graph per gear and shares the weights between them
#   --input_format=ND      required with --dynamic_dims (ND: any layout; the graphs are not images)
# The other graphs have static shapes, so they get no --input_shape.
# fp32 exports are refused: the 310P's cube (matrix) units have no float32, so `origin` on an fp32
# export leaves the LLM matmuls to the AI CPU or fails; export with `openvla-ros export --dtype fp16`
# (or pass --allow-fp32 together with --precision GRAPH=fp16 for the graphs you want cast).
set -euo pipefail

KNOWN_GRAPHS=(vision_backbone projector vla_llm embedding proprio_projector oft_llm action_head)
declare -A PRECISION=([vision_backbone]=fp16 [projector]=fp16 [vla_llm]=origin [embedding]=fp16
                      [proprio_projector]=fp16 [oft_llm]=origin [action_head]=origin)
ONNX_DIR="" OUT_DIR="" SOC="Ascend310P3" LOG="error" DRY_RUN=0 ALLOW_FP32=0

die() { echo "convert_onnx_to_om: error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --onnx) ONNX_DIR="${2:?--onnx needs a directory}"; shift 2 ;;
    --out) OUT_DIR="${2:?--out needs a directory}"; shift 2 ;;
    --soc-version) SOC="${2:?--soc-version needs a value}"; shift 2 ;;
    --log) LOG="${2:?--log needs a level}"; shift 2 ;;
    --precision)
      spec="${2:?--precision needs GRAPH=MODE}"; graph="${spec%%=*}"; mode="${spec#*=}"
      [[ -n "${PRECISION[$graph]+x}" && "$spec" == *=* && -n "$mode" ]] \
        || die "--precision $spec: expected GRAPH=MODE with GRAPH one of ${KNOWN_GRAPHS[*]}"
      PRECISION[$graph]="$mode"; shift 2 ;;
    --allow-fp32) ALLOW_FP32=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[[ -n "$ONNX_DIR" && -n "$OUT_DIR" ]] || die "--onnx DIR and --out DIR are required (see --help)"
if [[ $DRY_RUN -eq 0 ]] && ! command -v atc >/dev/null 2>&1; then
  die "'atc' is not on PATH: install the CANN toolkit and run 'source /usr/local/Ascend/ascend-toolkit/set_env.sh' first"
fi
[[ -f "$ONNX_DIR/manifest.json" ]] || die "$ONNX_DIR/manifest.json not found: expected a directory written by 'openvla-ros export'"
# The graphs to convert are the ones the manifest lists, in its order; for a graph with shape gears
# also its --input_shape and --dynamic_dims values (see above), built from the manifest.
GEAR_OPTIONS='
import json, sys
graphs = json.load(open(sys.argv[1]))["graphs"]
for name, graph in graphs.items():
    gears, dynamic = graph.get("sequence_gears", []), graph.get("sequence_inputs", [])
    shapes = {t["name"]: t["shape"] for t in graph["inputs"]}
    input_shape = ";".join(n + ":" + ",".join("-1" if axis == 1 else str(d) for axis, d in enumerate(shapes[n]))
                           for n in dynamic)
    dims = ";".join(",".join([str(g)] * len(dynamic)) for g in gears)
    print(name, input_shape, dims, sep="\t")
'
GRAPHS=() ; declare -A INPUT_SHAPE=() DYNAMIC_DIMS=()
while IFS=$'\t' read -r graph input_shape dims; do
  GRAPHS+=("$graph"); INPUT_SHAPE[$graph]="$input_shape"; DYNAMIC_DIMS[$graph]="$dims"
done < <(python3 -c "$GEAR_OPTIONS" "$ONNX_DIR/manifest.json")
[[ ${#GRAPHS[@]} -gt 0 ]] || die "$ONNX_DIR/manifest.json: cannot read its graph list"
if [[ -n "${INPUT_SHAPE[vla_prefill]+x}" ]]; then
  die "$ONNX_DIR is an export made before the shared LLM graph (vla_prefill + vla_decoder, two copies of the LLM weights); re-export the checkpoint with 'openvla-ros export' first"
fi
for graph in "${GRAPHS[@]}"; do
  [[ -n "${PRECISION[$graph]+x}" ]] || die "$ONNX_DIR/manifest.json lists an unknown graph '$graph'"
done
for graph in "${GRAPHS[@]}"; do
  [[ -f "$ONNX_DIR/$graph.onnx" ]] || die "$ONNX_DIR/$graph.onnx not found"
done
# The manifest's top-level "dtype" is fp32 or fp16 (tensor dtypes are spelled float32/float16/int64).
EXPORT_DTYPE="$(grep -oE '"dtype": *"fp(16|32)"' "$ONNX_DIR/manifest.json" | head -n 1 | grep -oE 'fp(16|32)' || true)"
[[ -n "$EXPORT_DTYPE" ]] || die "$ONNX_DIR/manifest.json has no \"dtype\": \"fp16\"|\"fp32\"; expected a manifest written by 'openvla-ros export'"
if [[ "$EXPORT_DTYPE" == fp32 && $ALLOW_FP32 -eq 0 ]]; then
  die "$ONNX_DIR is an fp32 export; the Ascend 310P has no fp32 matrix units, so export with --dtype fp16 (openvla-ros export --checkpoint CKPT --out DIR --dtype fp16), or pass --allow-fp32 to convert it anyway"
fi

run() {
  if [[ $DRY_RUN -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

mkdir -p "$OUT_DIR"
ONNX_ABS="$(cd "$ONNX_DIR" && pwd -P)"
OUT_ABS="$(cd "$OUT_DIR" && pwd -P)"
for graph in "${GRAPHS[@]}"; do
  [[ $DRY_RUN -eq 1 ]] || echo "[convert_onnx_to_om] $graph: atc (precision ${PRECISION[$graph]}) ..." >&2
  if [[ $DRY_RUN -eq 1 ]]; then echo "cd $(printf '%q' "$ONNX_ABS")"; fi
  gears=()
  if [[ -n "${DYNAMIC_DIMS[$graph]}" ]]; then
    gears=(--input_shape="${INPUT_SHAPE[$graph]}" --dynamic_dims="${DYNAMIC_DIMS[$graph]}" --input_format=ND)
  fi
  ( cd "$ONNX_ABS" && run atc --model="./$graph.onnx" --framework=5 --output="$OUT_ABS/$graph" \
    --soc_version="$SOC" --precision_mode_v2="${PRECISION[$graph]}" "${gears[@]}" --log="$LOG" )
  [[ $DRY_RUN -eq 1 || -f "$OUT_ABS/$graph.om" ]] || die "atc did not write $OUT_ABS/$graph.om"
done

# Everything except the ONNX graphs (and their external weight files) travels with the .om files.
for file in "$ONNX_DIR"/*; do
  case "$file" in *.onnx|*.onnx.data) continue ;; esac
  [[ -f "$file" ]] && run cp "$file" "$OUT_DIR/"
done
[[ $DRY_RUN -eq 1 ]] || echo "[convert_onnx_to_om] wrote ${#GRAPHS[@]} .om files and the manifest to $OUT_DIR" >&2
