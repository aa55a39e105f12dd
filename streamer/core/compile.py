"""Compile XGBoost boosters to native shared libraries (Treelite -> C -> gcc -O3).

Two layouts, both exposing ``streamer_predict_batch(X, n, out, nthread)`` (called through ctypes
by :class:`streamer.backends.CompiledBackend`) plus ``get_num_feature``/``get_num_target``:

``array`` (default)
    Every tree as a complete binary tree in level order: uint16 feature (bit 15 = missing goes
    right), float32 threshold, 2**depth leaves. A row walks exactly ``depth`` levels without a
    data-dependent branch (``i = 2i + 1 + (x >= thr)``); within a row block each tree walks 8
    rows in lock-step so their loads overlap; a lone row walks 8 trees in lock-step instead.
    The library also holds an AVX-512 walk, taken at run time where the CPU has AVX-512F: 16 rows
    per vector; the features and thresholds of levels of up to 32 nodes are held in one or two
    registers (a permute picks a lane's node), so only the rows' feature values are gathered there
    (~3x faster for depth <= 6 on 600-1,000 rows); rows add their trees in the same order, so the
    sums are the scalar walk's bit for bit. ``STREAMER_TREES_VECTOR=0`` turns it off.
    Compiles in seconds (it is mostly constant data).
``tl2cgen``
    TL2cgen's nested if/else code, one C function ("unit") per few trees. TL2cgen's own
    ``predict(row)`` runs *all* trees for one row, streaming megabytes of branchy code through
    the 32 KB L1 instruction cache for every row; our ``batch.c`` walks one unit over a block of
    rows instead (loop interchange), which is ~3x faster but still branch-bound. Kept for
    comparison; compiles ~60x slower than ``array`` for a 500-tree depth-8 model.

Both add trees per row in model order and take the per-output intercepts from Treelite
(TL2cgen 1.0 wrongly adds the first intercept to every output of multi-quantile boosters), so
they match ``Booster.inplace_predict`` to float32 rounding.

Cache
-----
Libraries live in ``compiled_models/lib/`` named ``<model sha256[:16]>-<options hash>-<cpu>.so``
with ``<name>.so.json`` beside it (build options, compiler, compile time, and the measured
xgboost/compiled crossover used by the ``auto`` backend). A changed model, option set, compiler
flag or CPU gives a new name, so stale libraries are never loaded. Concurrent builds (several
workers starting at once) are serialised with a file lock and published atomically.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

#: library cache (git-ignored) for models outside a bundle, relative to the working directory
DEFAULT_LIB_DIR = Path("compiled_models") / "lib"
#: bump when the generated batch code or build recipe changes, so old libraries are rebuilt
BUILD_VERSION = 8
LAYOUTS = ("array", "tl2cgen")
#: deepest tree the array layout pads to a complete tree (2**depth leaves per tree)
MAX_ARRAY_DEPTH = 12


class UnsupportedByLayout(ValueError):
    """The model uses something the chosen layout cannot express (e.g. very deep trees)."""


@dataclass(frozen=True)
class CompileOptions:
    """What determines the generated machine code (all of it goes into the library name).

    layout:         ``array``: branch-free traversal of complete-tree arrays (default, see module
                    doc); ``tl2cgen``: TL2cgen's nested if/else code, walked unit by unit.
    trees_per_unit: trees per generated C function; also the granularity of the row-block loop.
    block_rows:     rows walked through one unit (tl2cgen) or one tree (array) at a time.
    interleave:     array layout: rows traversed in lock-step so their loads overlap.
    march:          ``-march`` value (e.g. ``native``); ``None`` = compiler default (portable).
    openmp:         build with OpenMP so ``nthread > 1`` splits row blocks over threads.
    annotate:       branch annotation (TL2cgen ``annotate_in``) from the model's own node cover
                    statistics (training-data counts), which adds likely/unlikely hints.
    vector:         array layout: also build the AVX-512 walk (16 rows per vector), used at run
                    time where the CPU has AVX-512F.
    cc:             C compiler.
    """

    layout: str = "array"
    trees_per_unit: int = 8
    block_rows: int = 64
    interleave: int = 8
    march: str | None = None
    openmp: bool = True
    annotate: bool = False
    vector: bool = True
    cc: str = "gcc"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if min(self.trees_per_unit, self.block_rows, self.interleave) < 1:
            raise ValueError("trees_per_unit, block_rows and interleave must be >= 1")
        if self.annotate and self.layout != "tl2cgen":
            raise ValueError("annotate applies to the branchy tl2cgen layout only")

    def cflags(self) -> list[str]:
        flags = ["-O3", "-fPIC", "-std=c99"]
        if self.march:
            flags.append(f"-march={self.march}")
        if self.openmp:
            flags.append("-fopenmp")
        return flags

    def key(self) -> str:
        blob = json.dumps({**dataclasses.asdict(self), "build": BUILD_VERSION, "cflags": self.cflags(),
                           "cc_version": _compiler_version(self.cc)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_id() -> str:
    """Short stable id of this CPU model + instruction-set flags (libraries are per CPU)."""
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            fields.setdefault(k, v)
    ident = "|".join([platform.machine(), fields.get("model name", ""), fields.get("flags", "")])
    return hashlib.sha256(ident.encode()).hexdigest()[:8]


_CC_VERSION: dict[str, str] = {}


def _compiler_version(cc: str) -> str:
    if cc not in _CC_VERSION:
        if shutil.which(cc) is None:
            raise FileNotFoundError(f"C compiler {cc!r} not found on PATH (needed to compile models)")
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
        _CC_VERSION[cc] = out.splitlines()[0].strip() if out else cc
    return _CC_VERSION[cc]


def default_lib_dir(model_path: str | Path) -> Path:
    """``$STREAMER_LIB_DIR`` if set; else ``<root>/compiled_models/lib`` for a model inside a
    ``compiled_models/<regime>/`` bundle (independent of the working directory); else
    ``compiled_models/lib`` under the working directory."""
    env = os.environ.get("STREAMER_LIB_DIR")
    if env:
        return Path(env)
    parents = Path(model_path).resolve().parents
    for p in parents:
        if p.name == "compiled_models":
            return p / "lib"
    return DEFAULT_LIB_DIR


def library_path(model_path: str | Path, options: CompileOptions | None = None,
                 lib_dir: str | Path | None = None) -> Path:
    """Where the library for this model + options + CPU lives (whether or not it exists yet)."""
    options = options or CompileOptions()
    lib_dir = Path(lib_dir) if lib_dir is not None else default_lib_dir(model_path)
    return lib_dir / f"{file_sha256(model_path)[:16]}-{options.key()}-{cpu_id()}.so"


def ensure_library(model_path: str | Path, options: CompileOptions | None = None,
                   lib_dir: str | Path | None = None, build: bool = True,
                   on_built=None, verbose: bool = False) -> Path:
    """Path of an up-to-date library for ``model_path``, compiling it first if missing.

    Call at worker start (or install time), never per batch. ``on_built(lib)`` runs under the
    build lock right after a library is built (``streamer compile`` measures the crossover there). With
    ``options=None`` (the default build) a model the ``array`` layout cannot express falls back
    to the ``tl2cgen`` layout; a ``<array lib>.unsupported`` marker remembers that decision.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    if options is not None:
        return _ensure(model_path, options, lib_dir, build, on_built, verbose)
    marker = Path(str(library_path(model_path, CompileOptions(), lib_dir)) + ".unsupported")
    if not marker.is_file():
        try:
            return _ensure(model_path, CompileOptions(), lib_dir, build, on_built, verbose)
        except UnsupportedByLayout as exc:
            marker.write_text(f"{exc}\n")
            if verbose:
                print(f"{model_path}: {exc}; using layout 'tl2cgen'", file=sys.stderr)
    return _ensure(model_path, CompileOptions(layout="tl2cgen"), lib_dir, build, on_built, verbose)


def _ensure(model_path: Path, options: CompileOptions, lib_dir, build: bool, on_built,
            verbose: bool) -> Path:
    lib = library_path(model_path, options, lib_dir)
    if lib.is_file():
        return lib
    if not build:
        raise FileNotFoundError(f"no compiled library for {model_path} at {lib} (run `streamer compile`)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    with open(lib.parent / f".{lib.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building the same library
        if not lib.is_file():
            build_library(model_path, lib, options, verbose=verbose)
            if on_built is not None:
                on_built(lib)
    return lib


def _annotation(model_path: Path, tl_model, out_path: Path) -> Path:
    """TL2cgen branch annotation built from XGBoost's per-node cover (training-set hessian sums).

    Cover equals the number of training rows through a node for squared-error and quantile
    objectives (hessian 1), which is exactly what ``tl2cgen.annotate_branch`` would count on
    the training data, without needing that data at compile time.
    """
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(model_path))
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    counts = [[max(int(round(c)), 0) for c in t["sum_hessian"]] for t in trees]
    if len(counts) != tl_model.num_tree:
        raise ValueError(f"annotation: {len(counts)} xgboost trees vs {tl_model.num_tree} treelite trees")
    out_path.write_text(json.dumps(counts))
    return out_path


def generate_sources(model_path: Path, src_dir: Path, options: CompileOptions) -> dict:
    """Write the C sources of ``options.layout`` into ``src_dir``; return a small summary."""
    import treelite

    tl_model = treelite.frontend.load_xgboost_model(str(model_path))
    header = tl_model.get_header_accessor()
    if int(max(header.get_field("num_class"))) != 1:
        raise ValueError(f"{model_path}: multi-class boosters are not supported (regression only)")
    if options.layout == "array":
        summary = _generate_array_sources(tl_model, src_dir, options)
    else:
        summary = _generate_tl2cgen_sources(model_path, tl_model, src_dir, options)
        summary["depth"] = max(_tree_depth(tl_model.get_tree_accessor(i)) for i in range(tl_model.num_tree))
    return summary


def _generate_tl2cgen_sources(model_path: Path, tl_model, src_dir: Path, options: CompileOptions) -> dict:
    """TL2cgen's generated C + ``batch.c`` walking its units over row blocks."""
    import tl2cgen

    n_units = max(1, -(-tl_model.num_tree // max(1, options.trees_per_unit)))
    params: dict = {"parallel_comp": n_units}
    if options.annotate:
        params["annotate_in"] = str(_annotation(model_path, tl_model, src_dir.parent / "annotation.json"))
    tl2cgen.generate_c_code(tl_model, str(src_dir), params=params)
    recipe = json.loads((src_dir / "recipe.json").read_text())
    main_c = (src_dir / "main.c").read_text()
    m = re.search(r"// Apply base_scores\n(.*?)// Apply postprocessor", main_c, re.S)
    if m is None:
        raise RuntimeError("unexpected TL2cgen main.c layout: no base_scores block")
    # TL2cgen 1.0 (bundled Treelite 4.1) adds base_scores[0] to every output, which is wrong for
    # multi-output boosters whose intercept is a vector (XGBoost >= 3 multi-quantile: one
    # intercept per alpha). Rewrite the block from the model's own base_scores, in both
    # TL2cgen's predict() and our batch entry point, keeping TL2cgen's order (after the trees).
    base = [float(v) for v in tl_model.get_header_accessor().get_field("base_scores")]
    base_stmts = "\n  ".join(f"result[{i}] += {v!r};" for i, v in enumerate(base))
    main_c = main_c[: m.start(1)] + base_stmts + "\n  \n  " + main_c[m.end(1):]
    (src_dir / "main.c").write_text(main_c)
    num_feature = int(re.search(r"get_num_feature\(void\) \{\s*return (\d+);", main_c).group(1))
    units = sorted(int(u) for u in re.findall(r"void predict_unit(\d+)\(", (src_dir / "header.h").read_text()))
    if units != list(range(n_units)):
        raise RuntimeError(f"expected {n_units} TL2cgen units, header declares {len(units)}")
    if "quantize(" in main_c:
        raise RuntimeError("quantized TL2cgen code is not supported by the batch entry point")
    (src_dir / "batch.c").write_text(_BATCH_C.format(
        num_feature=num_feature, n_units=n_units, block=options.block_rows,
        unit_list=", ".join(f"predict_unit{u}" for u in units), base_stmts=base_stmts) + _ENTRY_C)
    sources = [s["name"] for s in recipe["sources"]] + ["batch"]
    return {"num_tree": tl_model.num_tree, "num_feature": num_feature, "units": n_units, "sources": sources}


_BATCH_C = r"""
/* Generated by streamer.compile: blocked batch prediction over TL2cgen units. */
#include "header.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define SB_NF {num_feature}
#define SB_UNITS {n_units}
#define SB_BLOCK {block}

typedef void (*sb_unit_fn)(union Entry*, float*);
static sb_unit_fn const sb_units[SB_UNITS] = {{ {unit_list} }};

static void sb_apply_base(float* result) {{
  {base_stmts}
}}

static void sb_block(const float* X, int64_t nrow, float* out) {{
  union Entry buf[SB_BLOCK * SB_NF];
  for (int64_t i = 0; i < nrow * SB_NF; ++i) {{
    float v = X[i];
    if (isnan(v)) {{ buf[i].missing = -1; }} else {{ buf[i].fvalue = v; }}
  }}
  memset(out, 0, sizeof(float) * (size_t)(nrow * N_TARGET));
  for (int u = 0; u < SB_UNITS; ++u) {{
    sb_unit_fn f = sb_units[u];
    for (int64_t r = 0; r < nrow; ++r) f(buf + r * SB_NF, out + r * N_TARGET);
  }}
  for (int64_t r = 0; r < nrow; ++r) {{
    sb_apply_base(out + r * N_TARGET);
    postprocess(out + r * N_TARGET);
  }}
}}

#define ENTRY_NF SB_NF
#define ENTRY_NT N_TARGET
#define ENTRY_BLOCK SB_BLOCK
#define ENTRY_BLOCK_FN sb_block
"""


# treelite node_type / comparison-operator codes (treelite/include/treelite/enum/*.h)
_TL_LEAF, _TL_NUMERICAL = 0, 1
_TL_OP_LT = 2


def _complete_tree_arrays(tree, depth: int):
    """One tree as complete-tree arrays in level order (node i -> children 2i+1, 2i+2).

    A leaf shallower than ``depth`` becomes a dummy split whose whole subtree carries the leaf's
    value, so every row walks exactly ``depth`` levels without a branch. Returns (feat, thr, leaf)
    with ``feat`` = feature index | (missing goes right) << 15.
    """
    import numpy as np

    g = lambda f: np.asarray(tree.get_field(f))  # noqa: E731
    cleft, cright, split, thr_in = g("cleft"), g("cright"), g("split_index"), g("threshold")
    default_left, node_type, cmp, value = g("default_left"), g("node_type"), g("cmp"), g("leaf_value")
    if len(g("leaf_vector")):
        raise UnsupportedByLayout("vector-leaf trees (multi_strategy=multi_output_tree) are not supported "
                                  "by layout 'array'")
    n_inner = (1 << depth) - 1
    feat = np.zeros(n_inner, np.uint16)
    thr = np.zeros(n_inner, np.float32)
    leaf = np.zeros(1 << depth, np.float32)
    stack = [(0, 0, 0)]  # (treelite node id, position in complete tree, level)
    while stack:
        nid, pos, level = stack.pop()
        if node_type[nid] == _TL_LEAF:
            # all complete-tree leaves under `pos` get this value
            first = pos
            for _ in range(depth - level):
                first = 2 * first + 1
            span = 1 << (depth - level)
            leaf[first - n_inner: first - n_inner + span] = value[nid]
            continue
        if node_type[nid] != _TL_NUMERICAL or cmp[nid] != _TL_OP_LT:
            raise UnsupportedByLayout("only numerical '<' splits are supported by layout 'array' "
                                      "(no categorical splits)")
        if split[nid] >= 1 << 15:
            raise UnsupportedByLayout("layout 'array' supports at most 32768 features")
        feat[pos] = int(split[nid]) | (0 if default_left[nid] else 1 << 15)
        thr[pos] = thr_in[nid]
        stack.append((int(cleft[nid]), 2 * pos + 1, level + 1))
        stack.append((int(cright[nid]), 2 * pos + 2, level + 1))
    return feat, thr, leaf


def _tree_depth(tree) -> int:
    import numpy as np

    cleft, cright = np.asarray(tree.get_field("cleft")), np.asarray(tree.get_field("cright"))
    depth, stack = 0, [(0, 0)]
    while stack:
        nid, d = stack.pop()
        if cleft[nid] < 0:
            depth = max(depth, d)
        else:
            stack += [(int(cleft[nid]), d + 1), (int(cright[nid]), d + 1)]
    return depth


def _c_floats(a) -> str:
    # 9 significant digits round-trip float32 exactly; the exponent form is always a float literal
    def lit(v: float) -> str:
        if v != v:
            return "NAN"
        if v in (float("inf"), float("-inf")):
            return "INFINITY" if v > 0 else "-INFINITY"
        return f"{v:.8e}f"

    return ",".join(lit(v) for v in a.tolist())


def _generate_array_sources(tl_model, src_dir: Path, options: CompileOptions) -> dict:
    """``model.c``: level-order arrays of every tree + a branch-free blocked traversal kernel."""
    import numpy as np

    header = tl_model.get_header_accessor()
    num_feature = int(header.get_field("num_feature")[0])
    num_target = int(header.get_field("num_target")[0])
    if str(header.get_field("postprocessor")) != "identity" or int(header.get_field("average_tree_output")[0]):
        raise UnsupportedByLayout("layout 'array' supports plain additive regression boosters only")
    targets = np.asarray(header.get_field("target_id")).astype(np.int32)
    base = [float(v) for v in header.get_field("base_scores")]
    trees = [tl_model.get_tree_accessor(i) for i in range(tl_model.num_tree)]
    depth = max(1, max(_tree_depth(t) for t in trees))
    if depth > MAX_ARRAY_DEPTH:
        raise UnsupportedByLayout(f"trees of depth {depth} > {MAX_ARRAY_DEPTH}: use layout 'tl2cgen'")
    if (targets < 0).any() and num_target > 1:
        raise UnsupportedByLayout("trees shared across targets are not supported by layout 'array'")
    parts = [_complete_tree_arrays(t, depth) for t in trees]
    feat = np.concatenate([p[0] for p in parts])
    thr = np.concatenate([p[1] for p in parts])
    leaf = np.concatenate([p[2] for p in parts])
    vector = _vector_walk_source(parts, depth, num_target) if options.vector else ""
    code = _ARRAY_C.format(
        num_feature=num_feature, num_target=num_target, num_tree=len(trees), depth=depth,
        block=options.block_rows, interleave=options.interleave,
        feat=",".join(map(str, feat.tolist())), thr=_c_floats(thr), leaf=_c_floats(leaf),
        target=",".join(str(max(int(t), 0)) for t in targets),
        base_stmts="\n  ".join(f"result[{i}] += {v!r};" for i, v in enumerate(base)), vector=vector)
    (src_dir / "model.c").write_text(code + _ENTRY_C)
    return {"num_tree": len(trees), "num_feature": num_feature, "units": 1, "depth": depth, "sources": ["model"]}


_ARRAY_C = r"""
/* Generated by streamer.compile (layout "array"): complete-tree arrays + branch-free traversal. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NF {num_feature}
#define NT {num_target}
#define NTREE {num_tree}
#define DEPTH {depth}
#define NI ((1 << DEPTH) - 1)
#define NL (1 << DEPTH)
#define BLOCK {block}
#define R {interleave}

static const uint16_t feat[(size_t)NTREE * NI] = {{ {feat} }};
static const float thr[(size_t)NTREE * NI] = {{ {thr} }};
static const float leaf[(size_t)NTREE * NL] = {{ {leaf} }};
static const int32_t target[NTREE] = {{ {target} }};

int32_t get_num_feature(void) {{ return NF; }}
int32_t get_num_target(void) {{ return NT; }}

static void apply_base(float* result) {{
  {base_stmts}
}}

/* One level: go right iff x >= threshold, or x is NaN and the node's missing default is right
   (bit 15 of feat). x >= thr is false for NaN, so this matches XGBoost's x < thr -> left. */
#define STEP_NAN(idx, row, nan_aware) do {{ \
    uint32_t f_ = F[idx]; float x_ = (row)[f_ & 0x7fffu]; \
    idx = 2u * idx + 1u + (uint32_t)((x_ >= T[idx]) | ((nan_aware) & (x_ != x_) & (int)(f_ >> 15))); \
  }} while (0)
#define STEP(idx, row) STEP_NAN(idx, row, 1)

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* A single row: walk R trees in lock-step instead (independent load chains, same sum order). */
static void predict_row(const float* x, float* o) {{
  int t = 0;
  for (; t + R <= NTREE; t += R) {{
    uint32_t idx[R];
    for (int k = 0; k < R; ++k) idx[k] = 0;
    for (int d = 0; d < DEPTH; ++d)
      for (int k = 0; k < R; ++k) {{
        const uint16_t* F = feat + (size_t)(t + k) * NI;
        const float* T = thr + (size_t)(t + k) * NI;
        STEP(idx[k], x);
      }}
    for (int k = 0; k < R; ++k) o[target[t + k]] += leaf[(size_t)(t + k) * NL + idx[k] - NI];
  }}
  for (; t < NTREE; ++t) {{
    const uint16_t* F = feat + (size_t)t * NI;
    const float* T = thr + (size_t)t * NI;
    uint32_t i = 0;
    for (int d = 0; d < DEPTH; ++d) STEP(i, x);
    o[target[t]] += leaf[(size_t)t * NL + i - NI];
  }}
}}

{vector}
/* Full groups of R rows walk each tree together (the tree's arrays stay in L1 for the block);
   leftover rows use predict_row. Per row, trees are summed in model order either way. */
static ALWAYS_INLINE void walk_groups(const float* X, int64_t nfull, float* out, const int nan_aware) {{
  for (int t = 0; t < NTREE; ++t) {{
    const uint16_t* F = feat + (size_t)t * NI;
    const float* T = thr + (size_t)t * NI;
    const float* L = leaf + (size_t)t * NL - NI;
    float* o = out + target[t];
    for (int64_t r = 0; r < nfull; r += R) {{
      uint32_t idx[R];
      for (int k = 0; k < R; ++k) idx[k] = 0;
      for (int d = 0; d < DEPTH; ++d)
        for (int k = 0; k < R; ++k) STEP_NAN(idx[k], X + (r + k) * NF, nan_aware);
      for (int k = 0; k < R; ++k) o[(r + k) * NT] += L[idx[k]];
    }}
  }}
}}

static void predict_block(const float* X, int64_t nrow, float* out) {{
  memset(out, 0, sizeof(float) * (size_t)(nrow * NT));
  int64_t done = 0;  /* rows the vector walk took (whole vectors of 16) */
#ifdef VECTOR_WALK
  if (vector_on()) done = vector_walk(X, nrow, out);
#endif
  const float* Xr = X + done * NF;
  float* outr = out + done * NT;
  int64_t left = nrow - done, nfull = left - left % R;
  /* blocks without missing values (the usual case) skip the default-direction term */
  int has_nan = 0;
  for (int64_t i = 0; i < nfull * NF; ++i) has_nan |= (Xr[i] != Xr[i]);
  if (has_nan) walk_groups(Xr, nfull, outr, 1); else walk_groups(Xr, nfull, outr, 0);
  for (int64_t r = nfull; r < left; ++r) predict_row(Xr + r * NF, outr + r * NT);
  for (int64_t r = 0; r < nrow; ++r) apply_base(out + r * NT);
}}

#define ENTRY_NF NF
#define ENTRY_NT NT
#define ENTRY_BLOCK BLOCK
#define ENTRY_BLOCK_FN predict_block
"""

def _vector_walk_source(parts, depth: int, num_target: int) -> str:
    """C for the AVX-512 walk of the array layout.

    The level-order arrays again, per tree and level: levels of up to 16 nodes padded to one vector
    register and the 32-node level to two, so a node's feature and threshold come from a register
    permute instead of a memory load and only the row's feature value is gathered (one gather per
    level for 16 rows); deeper levels gather feature and threshold too. Each row still adds its trees
    in model order (per output), so the sums are the scalar walk's bit for bit.
    """
    import numpy as np

    kinds = [0 if (1 << d) <= 16 else (1 if (1 << d) == 32 else 2) for d in range(depth)]
    widths = [max(16, 1 << d) for d in range(depth)]
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
    words, leaves = int(sum(widths)), max(64, 1 << depth)
    vfeat = np.zeros((len(parts), words), np.int32)
    vthr = np.zeros((len(parts), words), np.float32)
    vleaf = np.zeros((len(parts), leaves), np.float32)
    for t, (feat, thr, leaf) in enumerate(parts):
        for d in range(depth):
            first, k, o = (1 << d) - 1, 1 << d, offsets[d]
            vfeat[t, o:o + k] = feat[first:first + k]
            vthr[t, o:o + k] = thr[first:first + k]
        vleaf[t, :len(leaf)] = leaf
    return (_VECTOR_C.replace("@LW@", str(words)).replace("@LL@", str(leaves))
            .replace("@FEAT@", ",".join(map(str, vfeat.reshape(-1).tolist())))
            .replace("@THR@", _c_floats(vthr.reshape(-1)))
            .replace("@LEAF@", _c_floats(vleaf.reshape(-1)))
            .replace("@OFF@", ",".join(map(str, offsets.tolist())))
            .replace("@KIND@", ",".join(map(str, kinds))))


#: AVX-512 walk, compiled for that target only (function attributes), chosen at run time: the
#: library stays portable and a CPU without AVX-512F takes the scalar walk. STREAMER_TREES_VECTOR=0
#: in the environment (or CompiledBackend.set_vector(False)) turns it off, e.g. to compare the two.
_VECTOR_C = r"""
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VECTOR_WALK 1
#include <immintrin.h>
#include <stdlib.h>
#define LW @LW@ /* level-table entries per tree */
#define LL @LL@ /* leaf-table entries per tree */
#define VG 4 /* vectors of 16 rows walked in lock-step: independent gather chains overlap */
static const int32_t vfeat[(size_t)NTREE * LW] = { @FEAT@ };
static const float vthr[(size_t)NTREE * LW] = { @THR@ };
static const float vleaf[(size_t)NTREE * LL] = { @LEAF@ };
static const int voff[DEPTH] = { @OFF@ };
static const int vkind[DEPTH] = { @KIND@ }; /* 0: one register, 1: two registers, 2: gathered */
static int vector_state = -1; /* -1 not decided yet, 0 scalar walk, 1 vector walk */

/* set < 0: ask; 0: off; 1: on where the CPU has AVX-512F. Returns whether the vector walk is used. */
int streamer_vector_walk(int set) {
  if (set >= 0 || vector_state < 0) {
    __builtin_cpu_init();
    const char* env = getenv("STREAMER_TREES_VECTOR");
    int want = set >= 0 ? set : !(env != NULL && env[0] == '0');
    vector_state = (want && __builtin_cpu_supports("avx512f")) ? 1 : 0;
  }
  return vector_state;
}

static int vector_on(void) { return vector_state >= 0 ? vector_state : streamer_vector_walk(-1); }

/* One level for 16 rows: j = node index within the level; right iff x >= thr (false for NaN) or
   x is NaN and the node's missing default is right -- the scalar STEP_NAN, lane by lane. */
__attribute__((target("avx512f"))) static inline __m512i vstep(
    __m512i j, const int32_t* F, const float* T, int kind, const float* Xv, __m512i lane, int nan_aware) {
  __m512i f;
  __m512 th;
  if (kind == 0) {
    f = _mm512_permutexvar_epi32(j, _mm512_loadu_si512(F));
    th = _mm512_permutexvar_ps(j, _mm512_loadu_ps(T));
  } else if (kind == 1) {
    f = _mm512_permutex2var_epi32(_mm512_loadu_si512(F), j, _mm512_loadu_si512(F + 16));
    th = _mm512_permutex2var_ps(_mm512_loadu_ps(T), j, _mm512_loadu_ps(T + 16));
  } else {
    f = _mm512_i32gather_epi32(j, F, 4);
    th = _mm512_i32gather_ps(j, T, 4);
  }
  __m512 x = _mm512_i32gather_ps(_mm512_add_epi32(lane, _mm512_and_si512(f, _mm512_set1_epi32(0x7fff))), Xv, 4);
  __mmask16 right = _mm512_cmp_ps_mask(x, th, _CMP_GE_OQ);
  if (nan_aware)
    right |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) & _mm512_test_epi32_mask(f, _mm512_set1_epi32(0x8000));
  __m512i jj = _mm512_add_epi32(j, j);
  return _mm512_mask_add_epi32(jj, right, jj, _mm512_set1_epi32(1));
}

/* Adds each lane's leaf to its row's output ``tgt`` (o: the first of the 16 rows' outputs). */
__attribute__((target("avx512f"))) static inline void vleaf_add(__m512i j, const float* L, float* o, int tgt) {
#if DEPTH == 6
  __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(L), j, _mm512_loadu_ps(L + 16));
  __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(L + 32), j, _mm512_loadu_ps(L + 48));
  __m512 v = _mm512_mask_blend_ps(_mm512_test_epi32_mask(j, _mm512_set1_epi32(32)), lo, hi);
#elif DEPTH == 5
  __m512 v = _mm512_permutex2var_ps(_mm512_loadu_ps(L), j, _mm512_loadu_ps(L + 16));
#elif DEPTH <= 4
  __m512 v = _mm512_permutexvar_ps(j, _mm512_loadu_ps(L));
#else
  __m512 v = _mm512_i32gather_ps(j, L, 4);
#endif
#if NT == 1
  (void)tgt;
  _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), v));
#else /* rows are NT floats apart; the 16 lanes hit 16 different rows */
  __m512i at = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                                     14, 15), _mm512_set1_epi32(NT)),
                                _mm512_set1_epi32(tgt));
  _mm512_i32scatter_ps(o, at, _mm512_add_ps(_mm512_i32gather_ps(at, o, 4), v), 4);
#endif
}

/* Rows [0, 16 * (nrow / 16)) of a block, tree by tree; returns how many rows it walked. */
__attribute__((target("avx512f"))) static int64_t vector_walk(const float* X, int64_t nrow, float* out) {
  int64_t nv = nrow / 16;
  if (nv == 0) return 0;
  int nan_aware = 0;
  for (int64_t i = 0; i < nv * 16 * NF; ++i) nan_aware |= (X[i] != X[i]);
  const __m512i lane = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(NF));
  for (int t = 0; t < NTREE; ++t) {
    const int32_t* F = vfeat + (size_t)t * LW;
    const float* T = vthr + (size_t)t * LW;
    const float* L = vleaf + (size_t)t * LL;
    const int tgt = target[t];
    int64_t v = 0;
    for (; v + VG <= nv; v += VG) {
      __m512i j[VG];
      for (int k = 0; k < VG; ++k) j[k] = _mm512_setzero_si512();
      for (int d = 0; d < DEPTH; ++d)
        for (int k = 0; k < VG; ++k)
          j[k] = vstep(j[k], F + voff[d], T + voff[d], vkind[d], X + (v + k) * 16 * NF, lane, nan_aware);
      for (int k = 0; k < VG; ++k) vleaf_add(j[k], L, out + (v + k) * 16 * NT, tgt);
    }
    for (; v < nv; ++v) {
      __m512i j = _mm512_setzero_si512();
      for (int d = 0; d < DEPTH; ++d)
        j = vstep(j, F + voff[d], T + voff[d], vkind[d], X + v * 16 * NF, lane, nan_aware);
      vleaf_add(j, L, out + v * 16 * NT, tgt);
    }
  }
  return nv * 16;
}
#endif
"""

#: the batch entry point both layouts export; each template defines ENTRY_NF, ENTRY_NT,
#: ENTRY_BLOCK and ENTRY_BLOCK_FN (its per-block kernel) before it
_ENTRY_C = r"""
/* X: (n, ENTRY_NF) row-major float32 (NaN = missing); out: (n, ENTRY_NT) float32. */
int streamer_predict_batch(const float* X, int64_t n, float* out, int nthread) {
  if (n < 0 || X == NULL || out == NULL) return 1;
  int64_t nblock = (n + ENTRY_BLOCK - 1) / ENTRY_BLOCK;
#ifdef _OPENMP
  if (nthread > 1 && nblock > 1) {
    #pragma omp parallel for num_threads(nthread) schedule(static)
    for (int64_t b = 0; b < nblock; ++b) {
      int64_t r0 = b * ENTRY_BLOCK, nr = (n - r0 < ENTRY_BLOCK) ? n - r0 : ENTRY_BLOCK;
      ENTRY_BLOCK_FN(X + r0 * ENTRY_NF, nr, out + r0 * ENTRY_NT);
    }
    return 0;
  }
#endif
  for (int64_t b = 0; b < nblock; ++b) {
    int64_t r0 = b * ENTRY_BLOCK, nr = (n - r0 < ENTRY_BLOCK) ? n - r0 : ENTRY_BLOCK;
    ENTRY_BLOCK_FN(X + r0 * ENTRY_NF, nr, out + r0 * ENTRY_NT);
  }
  return 0;
}
"""



def build_library(model_path: str | Path, lib: str | Path, options: CompileOptions | None = None,
                  jobs: int | None = None, verbose: bool = False) -> dict:
    """Generate, compile (units in parallel) and atomically publish ``lib``; returns build info."""
    options = options or CompileOptions()
    model_path, lib = Path(model_path), Path(lib)
    jobs = jobs or os.cpu_count() or 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="streamer-compile-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        summary = generate_sources(model_path, src, options)
        t_gen = time.perf_counter() - t0
        cflags = options.cflags()

        def compile_one(name: str) -> None:
            cmd = [options.cc, "-c", *cflags, "-o", f"{name}.o", f"{name}.c"]
            r = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(compile_one, summary["sources"]))
        tmp_lib = src / "lib.so"
        link = [options.cc, "-shared", *cflags, "-o", str(tmp_lib),
                *[f"{s}.o" for s in summary["sources"]], "-lm"]
        r = subprocess.run(link, cwd=src, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"link failed:\n{r.stderr[-2000:]}")
        elapsed = time.perf_counter() - t0
        info = {
            "model": str(model_path), "model_sha256": file_sha256(model_path),
            "options": dataclasses.asdict(options), "cflags": cflags,
            "compiler": _compiler_version(options.cc), "cpu_id": cpu_id(),
            "num_tree": summary["num_tree"], "depth": summary["depth"], "num_feature": summary["num_feature"],
            "units": summary["units"], "codegen_s": round(t_gen, 3),
            "compile_s": round(elapsed, 3), "jobs": jobs,
            "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        lib.parent.mkdir(parents=True, exist_ok=True)
        staged = lib.with_name(f".{lib.name}.{os.getpid()}.tmp")
        shutil.copyfile(tmp_lib, staged)
        Path(str(lib) + ".json").write_text(json.dumps(info, indent=1))
        os.replace(staged, lib)  # atomic: a loader never sees a half-written library
    if verbose:
        print(f"compiled {model_path} -> {lib} in {elapsed:.1f} s "
              f"({summary['num_tree']} trees, {summary['units']} units, {jobs} jobs)", file=sys.stderr)
    return info
