"""``streamer modalities``: what is installed, and each modality's packet and result schema."""

from __future__ import annotations

import argparse

from ..core import registry
from ..core.modality import ArraySpec, Modality

HELP = "list installed modalities with their packet/result wire schema and predictors (--markdown for the README)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="only these modalities (default: all installed)")
    p.add_argument("--markdown", action="store_true", help="print the wire tables as markdown (README source)")


def _array_row(a: ArraySpec) -> str:
    dtypes = " or ".join(a.dtypes)
    return f"`{a.name}` | {dtypes} {a.shape_text()} | {'yes' if a.required else 'no'} | {a.doc}"


def markdown(mod: Modality) -> str:
    """The wire tables of one modality, generated from its declaration (the one source of truth)."""
    out = [f"#### `{mod.name}`: {mod.title}", "", mod.doc, ""]
    for kind in mod.packets:
        out += [f"Packet kind `{kind.name}` ({kind.doc}); item count `{kind.item_key}` <= {kind.max_items:,}:", "",
                "| key | type | required | meaning |", "|---|---|---|---|"]
        for f in kind.fields:
            rng = [f"> 0" if f.positive else "", f">= {f.min:g}" if f.min is not None else "",
                   f"<= {f.max:g}" if f.max is not None else ""]
            default = "yes" if f.required else f"no (default {f.default!r})"
            out.append(f"| `{f.name}` | {f.type.__name__} {' '.join(r for r in rng if r)} | {default} | {f.doc} |")
        out += [f"| {_array_row(a)} |" for a in kind.arrays]
        out.append("")
    res = mod.results
    out += ["Results (topic `result`, persisted):", "", "| key | type | required | meaning |", "|---|---|---|---|"]
    out += [f"| {_array_row(a)} |" for a in res.items]
    if res.detections:
        out.append("| `item` | <i4 (m,) | yes | index of the item (frame/stack) in the packet each detection came from |")
        out += [f"| {_array_row(a)} |" for a in res.detections]
    if res.flags:
        out += ["", "Flags: " + ", ".join(f"{bit} = {name}" for bit, name in sorted(res.flags.items()))]
    if mod.reasons:
        out += ["", "Rejection reasons of this modality (besides core's): "
                + "; ".join(f"`{k}` {v}" for k, v in mod.reasons.items())]
    out += ["", "Predictors: " + "; ".join(f"`{p.name}`{' (default)' if p.name == mod.default_predictor else ''}"
                                           f" {p.doc}" for p in mod.predictors), ""]
    return "\n".join(out)


def text(mod: Modality) -> str:
    lines = [f"{mod.name}: {mod.title}"]
    for kind in mod.packets:
        fields = ", ".join(f"{f.name}{'' if f.required else '=' + repr(f.default)}" for f in kind.fields)
        lines.append(f"  packet '{kind.name}' ({kind.item_key} items){': ' + fields if fields else ''}")
        for a in kind.arrays:
            lines.append(f"    {a.name:<12} {'|'.join(a.dtypes):<9} {a.shape_text():<18} "
                         f"{'' if a.required else '(optional) '}{a.doc}")
    lines.append("  result per item: " + ", ".join(a.name for a in mod.results.items))
    if mod.results.detections:
        lines.append("  result per detection: item, " + ", ".join(a.name for a in mod.results.detections))
    lines.append("  predictors: " + ", ".join(p.name + ("*" if p.name == mod.default_predictor else "")
                                             for p in mod.predictors) + "   (* default)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    names = args.names or registry.names()
    for name in names:
        mod = registry.get(name)
        print(markdown(mod) if args.markdown else text(mod) + "\n")
    return 0
