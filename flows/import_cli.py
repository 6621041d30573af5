"""`ganflow import`: an NVIDIA network pickle into a ganflow network file."""
from __future__ import annotations

import argparse


def add_import_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert an NVIDIA network pickle (StyleGAN2-ADA, StyleGAN3) into a ganflow network file",
                       description="Read a network pickle written by NVlabs/stylegan2-ada-pytorch or NVlabs/stylegan3 "
                                   "(network-snapshot-*.pkl or a published pretrained file) without running anything "
                                   "from it, and write G, D and G_ema as ganflow networks with the architecture the "
                                   "pickle records. `generate`, `morph`, `serve` and `train --resume-from` take FILE.")
    p.add_argument("network", metavar="NETWORK.pkl", help="the pickle (a .pkl, or gzipped)")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="where to write the ganflow network file")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="import weights holding NaN or inf as they are (refused by default: they generate black "
                        "images and train on NaN)")
    p.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from models.checkpoint import is_ganflow_file
    from models.network_pickle import import_network_pickle, save_imported
    from tasks.common.outdir import check_output_file

    # Before the pickle is read: --out is a new file, or a network file ganflow wrote (a rerun), never
    # something else (a README, the input pickle, a device, a file in a dataset).
    check_output_file(args.out, "--out", is_ganflow_file, "a ganflow network file")
    state = import_network_pickle(args.network, allow_nonfinite=args.allow_nonfinite)
    out = save_imported(state, args.out)
    arch, net = state["arch"], state["arch"]["net"]
    n = state["source"]["num_params"]
    print(f"{arch['name']} {net['resolution']}x{net['resolution']}, z_dim {net['z_dim']}, w_dim {net['w_dim']}: "
          f"G {n['G']:,} parameters, D {n['D']:,} (from {state['source']['file']})")
    print(f"wrote {out}")
    return 0
