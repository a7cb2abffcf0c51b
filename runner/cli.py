"""The ``dcsweep`` command line.

Exit codes: 0 success; 2 bad input (one line naming the value and what is allowed; nothing was
started and nothing on disk was touched); 1 failure while running; 130 a sweep interrupted by
Ctrl-C (its state saved: the last line is the command that continues it). ``--json`` prints exactly one
JSON document on stdout; logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
import threading
import traceback
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dcsweep.search_spaces import list_spaces  # no torch: `--help` and usage errors answer at once

if TYPE_CHECKING:
    from dcsweep.runner.sweep import Storage, Sweep

log = logging.getLogger("dcsweep")

INTERRUPTED = 130  # a sweep stopped by Ctrl-C: the shell's code for SIGINT
STAGE_PHASES = ("dense", "pruned", "shared", "sensitivity")  # cycle.stages.PHASES_KEPT, without importing torch

#: The library's INITS and CODERS, for the help text (a test keeps them equal): importing the
#: library imports torch, which `--help` and a usage error must not wait for.
INIT_NAMES = ("linear", "density", "random", "kmeans++", "optimal")
CODER_NAMES = ("huffman", "ans")


class UsageError(Exception):
    """Bad input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage dump
        raise UsageError(f"{message} (see {self.prog} --help)")


def _compress_args(p: argparse.ArgumentParser, table: bool = False) -> None:
    """The cycle's settings as flags; ``table``: those a sensitivity table reads (the dense
    model's, and what prices and shares its rows), with the table's own grid."""
    s = argparse.SUPPRESS  # unset flags keep the config's defaults
    p.add_argument("--model", default=s, help="lenet300, lenet5, vgg19_bn, resnet20, ... (default lenet300)")
    p.add_argument("--dataset", default=s,
                   help="digits, mnist5k, mnist, cifar10, imagefolder:PATH, ... (default digits)")
    p.add_argument("--data-root", dest="data_root", default=s, help="folder holding the data set's files")
    p.add_argument("--download", action="store_true", default=s,
                   help="fetch mnist/cifar into --data-root (and --pretrained weights) first")
    p.add_argument("--image-size", dest="image_size", type=int, default=s, help="imagefolder crop size (224)")
    p.add_argument("--val-fraction", dest="val_fraction", type=float, default=s,
                   help="share of the training part held out for validation, which selects (0.1)")
    if table:
        p.add_argument("--sparsities", type=_numbers(float), default=None, metavar="S,S,...",
                       help="sparsities of the table (default 0,0.3,0.5,0.6,0.7,0.8,0.9,0.95,0.98)")
        p.add_argument("--k", dest="ks", type=_numbers(int), default=None, metavar="K,K,...",
                       help="codebook sizes of the table (default 4,16,32,64)")
        p.add_argument("--retrain-epochs", dest="table_retrain_epochs", type=int, default=s,
                       help="retrain each pruned layer's model this long before measuring (0: none, the paper's)")
        p.add_argument("--retrain-lr", dest="table_retrain_lr", type=float, default=s,
                       help="that retraining's learning rate (lr / 10)")
    else:
        p.add_argument("--sparsity", type=float, default=s, help="target fraction of zero weights per layer (0.9)")
        p.add_argument("--quality", type=float, default=s, help="Han et al.'s rule instead: prune |w| < quality x std")
        p.add_argument("--layer", dest="layers", action="append", type=_layer_rule, default=s, metavar="NAME=VALUE",
                       help="per-layer sparsity (or quality) by module name or glob, e.g. fc3=0.75; repeatable")
        p.add_argument("--target-ratio", dest="target_ratio", type=float, default=s, metavar="R",
                       help="choose each layer's sparsity and k from the sensitivity table for this ratio")
        p.add_argument("--max-drop", dest="max_drop", type=float, default=s, metavar="PT",
                       help="... or for the fewest bytes within PT validation-accuracy points of dense")
        p.add_argument("--prune-steps", dest="prune_steps", type=int, default=s, help="prune->retrain rounds (3)")
        p.add_argument("--k", type=int, default=s, help="clusters per layer (32)")
        p.add_argument("--k-conv", dest="k_conv", type=int, default=s, help="clusters per conv layer (default: --k)")
        p.add_argument("--k-fc", dest="k_fc", type=int, default=s,
                       help="clusters per fully connected layer (default: --k)")
    p.add_argument("--init", default=s, help=f"k-means init: {', '.join(INIT_NAMES)} (linear)")
    p.add_argument("--coder", default=s, help=f"entropy coder: {', '.join(CODER_NAMES)} (huffman)")
    p.add_argument("--index-bits", dest="index_bits", type=int, default=s, help="sparse gap width 1-15 (auto)")
    p.add_argument("--epochs", type=int, default=s,
                   help="dense training epochs (20), or fine-tuning epochs from --dense/--pretrained weights (0)")
    if not table:
        p.add_argument("--prune-epochs", dest="prune_epochs", type=int, default=s,
                       help="retraining epochs per step (10)")
        p.add_argument("--share-epochs", dest="share_epochs", type=int, default=s,
                       help="centroid fine-tuning epochs (5)")
    p.add_argument("--optimizer", default=s, help="sgd or adam (adam)")
    p.add_argument("--lr", type=float, default=s, help="dense learning rate (0.001)")
    if not table:
        p.add_argument("--prune-lr", dest="prune_lr", type=float, default=s, help="retraining learning rate (2 x lr)")
        p.add_argument("--share-lr", dest="share_lr", type=float, default=s, help="fine-tuning learning rate (lr / 5)")
    p.add_argument("--momentum", type=float, default=s, help="SGD momentum (0.9)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=s, help="L2 weight decay (0)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=s, help="training batch size (64)")
    p.add_argument("--seed", type=int, default=s, help="seed of the initial weights and batch order (0)")
    p.add_argument("--device", default=s, help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--dense", dest="dense_path", default=s,
                   help="start from this dense model (.dcz, or a state-dict .pt, torchvision's format too)")
    p.add_argument("--pretrained", action="store_true", default=s,
                   help="start from torchvision's published weights (cached under TORCH_HOME, or --download)")
    p.add_argument("--storage", default=None, help="where the dense model and sensitivity tables are kept "
                   "(default $DCSWEEP_STORAGE or ~/dcsweep-runs)" + ("" if table else "; used with "
                   "--target-ratio/--max-drop only"))
    if not table:
        p.add_argument("-o", "--output", required=True, help="the .dcz file to write")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output file and plots")
        p.add_argument("--plots", help="folder for weight histograms and a bytes-per-layer chart")


def _numbers(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"needs comma-separated {kind.__name__}s; got {text!r}") from None
        if not values or len(values) > 64:
            raise argparse.ArgumentTypeError(f"needs 1 to 64 values; got {len(values)}")
        return values

    return parse


def _layer_rule(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer needs NAME=NUMBER (e.g. fc3=0.75); got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dcsweep", description="Deep Compression sweeps on Ray Tune, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("compress", help="one train-prune-share-encode cycle in this process, no Ray")
    _compress_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("sensitivity", help="per-layer validation accuracy and coded bytes at each sparsity "
                       "and k, no retraining; cached in the storage")
    _compress_args(p, table=True)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("inspect", help="per-layer table of a .dcz file")
    p.add_argument("file", help="a .dcz file")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("evaluate", help="decode a .dcz file into its model and measure its accuracy")
    p.add_argument("file", help="a .dcz file")
    p.add_argument("--dataset", required=True, help="the data set whose test part it is measured on")
    p.add_argument("--data-root", dest="data_root", help="folder holding the data set's files")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (auto)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256, help="evaluation batch size (256)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("run", help="run a sweep on Ray Tune, tracked in MLflow",
                       epilog=f"built-in spaces: {', '.join(list_spaces())}")
    p.add_argument("space", nargs="?", default="lenet300-digits",
                   help="a built-in space name or a YAML path (default lenet300-digits)")
    p.add_argument("--name", help="the sweep's name (default: SPACE-YYYYmmdd-HHMMSS)")
    _store_args(p)
    _address_arg(p)
    p.add_argument("--resume", action="store_true", help="continue the sweep --name (as `dcsweep resume`)")
    p.add_argument("--smoke-test", dest="smoke", action="store_true",
                   help="tiny epochs, a few trials; generated data for data sets not on disk")
    p.add_argument("--cpus-per-trial", dest="cpus", type=float,
                   help="CPUs per trial, fractions allowed (the space's resources.cpu)")
    p.add_argument("--gpus-per-trial", dest="gpus", type=float,
                   help="GPUs per trial, fractions allowed (the space's resources.gpu)")
    p.add_argument("--workers-per-trial", dest="workers", type=int,
                   help="data-parallel Ray Train workers per trial, --cpus/--gpus-per-trial each "
                        "(the space's resources.workers, default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("resume", help="continue a sweep whose driver died: finished trials are kept")
    p.add_argument("name", help="the sweep's name")
    _store_args(p)
    _address_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("submit", help="submit a sweep to a Ray cluster through the Ray Jobs API")
    p.add_argument("space", nargs="?", default="lenet300-digits",
                   help="a built-in space name or a YAML path (shipped with the job)")
    p.add_argument("--address", required=True, help="the cluster's Jobs API, e.g. http://HEAD:8265")
    p.add_argument("--name", help="the sweep's name (default: SPACE-YYYYmmdd-HHMMSS)")
    p.add_argument("--storage", help="sweep storage as the cluster sees it: a path every node mounts, or s3://, gs://")
    p.add_argument("--tracking-uri", dest="tracking_uri",
                   help="MLflow tracking URI for the job (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--smoke-test", dest="smoke", action="store_true", help="tiny epochs, a few trials")
    p.add_argument("--cpus-per-trial", dest="cpus", type=float,
                   help="CPUs per trial, fractions allowed (the space's resources.cpu)")
    p.add_argument("--gpus-per-trial", dest="gpus", type=float,
                   help="GPUs per trial, fractions allowed (the space's resources.gpu)")
    p.add_argument("--workers-per-trial", dest="workers", type=int,
                   help="data-parallel Ray Train workers per trial, --cpus/--gpus-per-trial each "
                        "(the space's resources.workers, default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("pareto", help="a sweep's trials from MLflow, Pareto-optimal ones marked")
    p.add_argument("name", help="the sweep's name")
    _store_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("list", help="the sweeps in the storage: state, trials ended of all, front size")
    p.add_argument("--storage", help="sweep storage: a folder or an s3:// or gs:// URI (default $DCSWEEP_STORAGE "
                   "or ~/dcsweep-runs)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("status", help="one sweep's progress, while it runs too: trials, driver, the front so far")
    p.add_argument("name", help="the sweep's name, as `dcsweep list` shows it")
    p.add_argument("--storage", help="sweep storage: a folder or an s3:// or gs:// URI (default $DCSWEEP_STORAGE "
                   "or ~/dcsweep-runs)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("stages", help="the stage store: `list` what is in it, `verify` that every stage checks out, "
                       "`gc` what no sweep used in --unused-days")
    p.add_argument("action", choices=("list", "verify", "gc"), help="list: each stage with its settings, bytes and "
                   "state; verify: read every stage as a reuse would, exit 1 if any fails; gc: list (and with --yes "
                   "remove) damaged folders and stages unused for --unused-days")
    p.add_argument("--unused-days", dest="unused_days", type=float, help="gc: stages no sweep reused or made in "
                   "this many days")
    p.add_argument("--yes", action="store_true", help="gc: remove what it lists (without it, nothing is removed)")
    p.add_argument("--phase", choices=STAGE_PHASES, help="only this phase's stages (list)")
    p.add_argument("--storage", help="sweep storage: a folder or an s3:// or gs:// URI (default $DCSWEEP_STORAGE "
                   "or ~/dcsweep-runs)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p = sub.add_parser("ui", help="serve the MLflow UI on the sweep store, on 127.0.0.1")
    _store_args(p)
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (5000)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return parser


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="an existing Ray cluster, or 'auto' (default $RAY_ADDRESS, else a new local Ray instance)")


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="sweep storage: a folder (shared by every node of a cluster) or an s3:// "
                   "or gs:// URI (default $DCSWEEP_STORAGE or ~/dcsweep-runs)")
    p.add_argument("--tracking-uri", dest="tracking_uri",
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else SQLite in the storage)")


# -- commands --------------------------------------------------------------------------------
# Each imports what it uses when it runs: `dcsweep inspect` need not pay for Ray's import.

def _check_output(output: Path, overwrite: bool) -> None:
    """Everything about ``-o`` that would otherwise fail only after the whole cycle."""
    if not output.name or output.is_dir():
        raise UsageError(f"-o {str(output)!r} is a folder; it must name the .dcz file to write")
    if output.exists() and not overwrite:
        raise UsageError(f"output {output} exists; pass --overwrite to replace it or choose another -o")
    if not output.parent.is_dir():
        raise UsageError(f"output folder {output.parent} does not exist")
    _check_writable(output, "-o")


def _check_writable(path: Path, flag: str) -> None:
    """``path`` can be written: the file itself if it exists, else its nearest existing folder."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not (os.access(path, os.W_OK) if path.exists() else os.access(folder, os.W_OK | os.X_OK)):
        raise UsageError(f"{flag} {path}: {path if path.exists() else folder} is not writable")


def _stage_store(args: argparse.Namespace) -> Any:
    """The dense models and sensitivity tables of --storage, checked writable before any work."""
    from .sweep.stages import StageStore

    storage = _storage(args)
    storage.check_writable()  # ConfigError -> exit 2
    return StageStore(storage, phases=("dense", "sensitivity"))


def cmd_compress(args: argparse.Namespace) -> dict[str, Any]:
    from .cycle import load_dataset, run_cycle
    from .cycle.config import check_settings
    from .cycle.pretrained import check_weights
    from .cycle.train import pick_device

    keys = {"output", "overwrite", "plots", "json", "command", "storage"}
    settings = {k: v for k, v in vars(args).items() if k not in keys}
    if "layers" in settings:
        names = [name for name, _ in settings["layers"]]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise UsageError(f"--layer {twice[0]} is given more than once; give each layer one rule")
        settings["layers"] = dict(settings["layers"])
    config = check_settings(settings)  # ConfigError -> exit 2, before any work
    pick_device(config.device)  # one that is not here: exit 2 now, not after the data loads
    check_weights(config)
    output = Path(args.output)
    _check_output(output, args.overwrite)
    if args.plots:
        plots = Path(args.plots)
        if plots.exists() and not plots.is_dir():
            raise UsageError(f"--plots {plots} is a file; it must be a folder (made if missing)")
        if plots.is_dir() and any(plots.iterdir()) and not args.overwrite:
            raise UsageError(f"plots folder {args.plots} is not empty; pass --overwrite or choose another")
        _check_writable(plots, "--plots")
    load_dataset(config.dataset, config.data_root, config.download, config.image_size)  # DataError -> 2
    stages = None
    if config.allocates:  # the dense model and its table are kept: the next target is quick
        from .cycle.run import check_target

        check_target(config)  # a ratio out of reach: exit 2 before any training
        stages = _stage_store(args)
    result = run_cycle(config, output=output, plots=args.plots, progress=True, stages=stages)  # on stderr
    return result.to_json()


def cmd_sensitivity(args: argparse.Namespace) -> dict[str, Any]:
    import time

    from .cycle import load_dataset
    from .cycle.config import check_settings
    from .cycle.pretrained import check_weights
    from .cycle.run import cached_table, sensitivity_table
    from .cycle.sensitivity import KS, SPARSITIES
    from .cycle.train import pick_device

    start = time.perf_counter()
    keys = {"json", "command", "storage", "sparsities", "ks"}
    config = check_settings({k: v for k, v in vars(args).items() if k not in keys})
    pick_device(config.device)
    check_weights(config)
    sparsities, ks = args.sparsities or list(SPARSITIES), args.ks or list(KS)
    if bad := [v for v in sparsities if not 0.0 <= v < 1.0]:
        raise UsageError(f"--sparsities={bad} is not allowed; each must be in [0, 1)")
    from dcsweep.compression import MAX_K, MIN_K

    if bad := [v for v in ks if not MIN_K <= v <= MAX_K]:
        raise UsageError(f"--k={bad} is not allowed; each must be an integer in [{MIN_K}, {MAX_K}]")
    stages = _stage_store(args)
    sparsities, ks = sorted(set(sparsities)), sorted(set(ks))
    table = cached_table(config, stages, sparsities, ks)
    cached = table is not None
    if table is None:
        load_dataset(config.dataset, config.data_root, config.download, config.image_size)  # DataError -> 2
        table, cached = sensitivity_table(config, stages=stages, sparsities=sparsities, ks=ks,
                                          progress=True)
    out = table.to_json()
    return {"layers": out["layers"], "seconds": time.perf_counter() - start, "cached": cached,
            "table_seconds": table.seconds, "retrain_epochs": config.table_retrain_epochs,
            **{k: v for k, v in out.items() if k not in ("layers", "seconds")}}


def cmd_inspect(args: argparse.Namespace) -> dict[str, Any]:
    from dcsweep.compression import size_report

    report = size_report(_existing(args.file))
    if not args.json:
        print(report.format_table())
    return report.to_dict()


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from dcsweep.compression import load_compressed, read_header
    from dcsweep.compression.fileformat import printable

    from .cycle import list_models, load_dataset
    from .cycle.train import evaluate, pick_device

    path = _existing(args.file)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1; got {args.batch_size}")
    device = pick_device(args.device)  # ConfigError -> 2
    arch = read_header(path).get("arch") or {}  # CompressedFileError -> 2
    if arch.get("name") not in list_models():
        raise UsageError(f"{path} names model {printable(str(arch.get('name')))!r}, which is not one of "
                         f"{list_models()}")
    data = load_dataset(args.dataset, args.data_root)
    made_for = (arch.get("kwargs", {}).get("input_shape"), arch.get("kwargs", {}).get("num_classes"))
    if made_for != (list(data.input_shape), data.num_classes):  # the file's values, escaped for the terminal
        raise UsageError(f"{path} holds a model for input {printable(str(made_for[0]))} with "
                         f"{printable(str(made_for[1]))} classes; dataset {args.dataset!r} has input "
                         f"{list(data.input_shape)} with {data.num_classes} classes")
    model = load_compressed(path)
    accuracy = evaluate(model, data.test, device, args.batch_size)
    return {"accuracy": accuracy, "samples": len(data.test), "file": str(path), "dataset": args.dataset}


def _storage(args: argparse.Namespace) -> Storage:
    from .sweep import Storage, default_storage

    return Storage(args.storage or default_storage())


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    """A new sweep, or with --resume the sweep --name as it was started (as `dcsweep resume`)."""
    from .sweep import new_sweep, resume_sweep, space_as_run
    from .sweep.places import check_per_trial

    check_per_trial(args.cpus, args.gpus, args.workers)
    _check_address(args.address)
    space = space_as_run(args.space, args.smoke, args.cpus, args.gpus, args.workers)
    if args.resume:
        return _drive(resume_sweep(args.name, _storage(args), args.tracking_uri, args.address, expect=space))
    return _drive(new_sweep(space, args.name, _storage(args), args.tracking_uri, args.smoke, args.address))


def _check_address(address: str | None) -> None:
    """A cluster answers at --address, before anything is written (ray.init would retry an
    absent one for minutes); Ray is imported for it only when an address is given."""
    if address:
        from .adapters.env import use_ray_token

        use_ray_token()  # before Ray is imported: it reads its authentication settings then
        from .adapters.nodes import check_ray_address

        check_ray_address(address)


def cmd_resume(args: argparse.Namespace) -> dict[str, Any]:
    from .sweep import resume_sweep

    _check_address(args.address)

    return _drive(resume_sweep(args.name, _storage(args), args.tracking_uri, args.address))


def cmd_submit(args: argparse.Namespace) -> dict[str, Any]:
    from .adapters.submit import submit

    return submit(args.space, args.address, args.name, args.storage, args.tracking_uri, args.smoke, args.cpus,
                  args.gpus, args.workers)


def _drive(sweep: Sweep) -> dict[str, Any]:
    from .adapters.env import TEST_HOOKS, use_ray_token

    if os.environ.get(TEST_HOOKS):  # a test's fault hook: refused here when malformed
        from .adapters.testing import from_env

        try:
            from_env()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if sweep.address:  # before Ray reads its configuration
        use_ray_token()

    import torch  # noqa: F401 - load libtorch before Ray's workers and loggers do (see pitfalls)

    from .adapters.driver import run_sweep
    from .sweep.lease import hold
    from .sweep.places import default_tracking_uri

    log.info("dcsweep from %s", Path(__file__).parents[1])  # which copy runs: a job's is shipped
    # one driver per sweep, from before anything is written until the end
    try:
        with hold(sweep.storage, sweep.name), contextlib.redirect_stdout(sys.stderr):  # stdout stays JSON
            result = run_sweep(sweep)
    except KeyboardInterrupt:  # a second Ctrl-C: Tune's last save of its state was skipped
        print(f"dcsweep: interrupted; continue with: {_resume_command(sweep)}", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    if result.get("interrupted"):
        result["resume"] = _resume_command(sweep)

    if sweep.storage.local and sweep.tracking_uri == default_tracking_uri(sweep.storage):
        result["ui"] = shlex.join([*_program(), "ui", "--storage", str(sweep.storage)])
        base = "http://127.0.0.1:5000"
    elif sweep.tracking_uri.startswith("sqlite:"):
        result["ui"] = shlex.join([*_program(), "ui", "--tracking-uri", sweep.tracking_uri])
        base = "http://127.0.0.1:5000"
    else:  # a tracking server serves its own UI
        result["ui"] = f"open {sweep.tracking_uri}"
        base = sweep.tracking_uri.rstrip("/")
    if result.get("experiment_id"):
        result["front_url"] = front_url(base, result["experiment_id"])
    return result


def front_url(base: str, experiment_id: str) -> str:
    """The sweep's runs table in MLflow's UI: the machine-learning view, the Pareto front only,
    smallest first."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": "tags.pareto_optimal = 'true'",
                                    "orderByKey": "metrics.`compressed_bytes`", "orderByAsc": "true"},
                                   quote_via=urllib.parse.quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def _program() -> list[str]:
    """How to run this dcsweep again from a fresh shell, as the commands it prints say:
    ``dcsweep`` when that is on PATH and is this one, else this one's own path (a virtual
    environment's bin folder is on no fresh shell's PATH)."""
    script = Path(sys.argv[0])
    if script.name != "dcsweep":  # python -m dcsweep.runner.cli
        return [sys.executable, "-m", "dcsweep.runner.cli"]
    found = shutil.which("dcsweep")
    if found and Path(found).resolve() == script.resolve():
        return ["dcsweep"]
    return [str(script.resolve())]


def _resume_command(sweep: Sweep) -> str:
    """The command that continues ``sweep`` (its saved space and tracking store come with it)."""
    command = [*_program(), "resume", sweep.name, "--storage", str(sweep.storage)]
    if sweep.address:
        command += ["--address", sweep.address]
    return shlex.join(command)


def _tracking_uri(args: argparse.Namespace, name: str | None = None) -> str:
    """Where `pareto` and `ui` read: --tracking-uri, else the store sweep ``name`` logs to, else
    $MLFLOW_TRACKING_URI, else SQLite in the storage; a SQLite file must exist."""
    from .sweep import tracking_uri_for
    from .sweep.places import check_tracking_uri
    from .sweep.spec import saved_tracking_uri

    storage = _storage(args)
    uri = tracking_uri_for(storage, args.tracking_uri, saved_tracking_uri(storage, name) if name else None)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no sweep store at {uri}; run a sweep first or pass --storage/--tracking-uri")
    check_tracking_uri(uri, write=False)  # no credentials to print, a scheme MLflow takes, a server that answers
    return uri


def cmd_pareto(args: argparse.Namespace) -> dict[str, Any]:
    from .adapters.tracking import sweep_trials

    uri = _tracking_uri(args, args.name)
    return {"name": args.name, "tracking_uri": uri, "trials": [t.to_json() for t in sweep_trials(uri, args.name)]}


def cmd_list(args: argparse.Namespace) -> dict[str, Any]:
    from .sweep.status import list_sweeps

    storage = _storage(args)
    return {"storage": str(storage), "sweeps": [s.to_json() for s in list_sweeps(storage)]}


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    from .sweep.status import sweep_status

    storage = _storage(args)
    status = sweep_status(storage, args.name).to_json(trials=True)
    if status["state"] == "stopped":
        status["resume"] = shlex.join([*_program(), "resume", args.name, "--storage", str(storage)])
    return status


def cmd_stages(args: argparse.Namespace) -> dict[str, Any]:
    from .sweep.stages import StageStore, list_stages, remove_stage, unused_stages, verify_stages
    from .sweep.status import list_sweeps

    storage = _storage(args)
    store = StageStore(storage)
    if args.action == "list":
        return {"storage": str(storage), "stages": list_stages(store, args.phase)}
    if args.action == "gc":
        if args.unused_days is None or not args.unused_days >= 0:
            raise UsageError(f"stages gc needs --unused-days N with N >= 0; got {args.unused_days}")
        running = [s.name for s in list_sweeps(storage) if s.state == "running"]
        if args.yes and running:  # their trials may need any stage next
            raise UsageError(f"stages gc --yes removes nothing while sweeps run in {storage}: {running}; "
                             "run it once they end")
        found = unused_stages(store, args.unused_days)
        for row in found if args.yes else []:
            remove_stage(store, row)
        return {"storage": str(storage), "removed": args.yes, "stages": found}
    checked = verify_stages(store)
    return {"storage": str(storage), "checked": len(checked), "failed": [c for c in checked if not c["ok"]]}


def cmd_ui(args: argparse.Namespace) -> NoReturn:
    """MLflow's UI on 127.0.0.1: the port checked free first, the URL printed once the server
    answers (never for a server that did not start), MLflow's exit code passed on."""
    import socket
    import subprocess
    import time
    import urllib.request

    uri = _tracking_uri(args)
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port={args.port} is not allowed; it must be in [1, 65535]")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError as exc:
            raise UsageError(f"--port={args.port} is taken on 127.0.0.1 ({exc.strerror}): another `dcsweep ui` or "
                             f"MLflow server may hold it (`ss -ltnp 'sport = :{args.port}'` names it); "
                             f"pass another --port") from None
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port)]
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(command)
    try:
        while server.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2):
                print(f"MLflow UI on {url} (Ctrl-C stops it)", file=sys.stderr)
                break
            time.sleep(0.5)
        code = server.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached MLflow too: let it stop
        code = server.wait()
    if code not in (0, -2, 130):
        print(f"dcsweep: the MLflow UI ended with exit code {code}", file=sys.stderr)
    sys.exit(code if code >= 0 else 128 - code)


def _existing(file: str) -> Path:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file} does not exist or is not a file")
    return path


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "compress": cmd_compress, "sensitivity": cmd_sensitivity, "inspect": cmd_inspect, "evaluate": cmd_evaluate,
    "run": cmd_run,
    "resume": cmd_resume, "submit": cmd_submit, "pareto": cmd_pareto, "list": cmd_list, "status": cmd_status,
    "stages": cmd_stages, "ui": cmd_ui}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        result = COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"dcsweep: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `dcsweep inspect FILE | head`: the reader has all it wanted
        return _closed_stdout()
    except Exception as exc:  # noqa: BLE001 - any failure while running: its traceback, then its cause
        bad_input, known = _error_kinds()
        if isinstance(exc, bad_input):
            print(f"dcsweep: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, known):  # the cause is known: one line says it
            print(f"dcsweep: failed: {exc}", file=sys.stderr)
            return 1
        traceback.print_exc()
        cause = str(exc).splitlines()[0] if str(exc) else ""
        print(f"dcsweep: failed: {type(exc).__name__}: {cause}", file=sys.stderr)
        return 1
    try:
        if args.json:
            print(json.dumps(result))
        else:
            from .human import print_human

            print_human(args.command, result)
        sys.stdout.flush()
    except BrokenPipeError:  # `dcsweep pareto NAME | head`: the reader has all it wanted
        return _closed_stdout()
    if result.get("interrupted"):
        print(f"dcsweep: interrupted: {result['trials_ended']} of {result['trials_total']} trials ended; "
              f"continue with: {result['resume']}", file=sys.stderr)
        return INTERRUPTED
    if args.command == "stages" and result.get("failed"):
        for failed in result["failed"]:
            print(f"dcsweep: stage {failed['phase']}/{failed['key']} fails its check: {failed['problem']}",
                  file=sys.stderr)
        return 1
    if args.command in ("run", "resume") and result.get("errors") and not result.get("trials"):
        # not one trial finished: a failure, with the first trial's own cause as its last line
        print(f"dcsweep: failed: all {len(result['errors'])} failed trials, none finished; the first: "
              f"{_last_line(result['errors'][0])}", file=sys.stderr)
        return 1
    return 0


def _closed_stdout() -> int:
    """Exit 0 quietly once stdout's reader has gone: what is left to flush goes nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _error_kinds() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(bad input: exit 2, known failures: one line, exit 1); imported only once an error
    happened, since their modules import torch."""
    from dcsweep.compression import CompressedFileError
    from dcsweep.runner.cycle import ConfigError, DataError, DivergedError
    from dcsweep.runner.sweep import StorageFault
    from dcsweep.runner.sweep.lease import LeaseLost

    return (ConfigError, DataError, CompressedFileError), (DivergedError, StorageFault, LeaseLost)


def _last_line(text: str) -> str:
    """The line of an error's text that names it (a traceback ends with the exception)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no message"


def entry() -> NoReturn:
    """The `dcsweep` command: main(), then a quick exit. Tearing down the interpreter's modules
    (torch, Ray, MLflow, scikit-learn) takes about two seconds after the work is done, which a
    user waits for at the end of every command; exit handlers still run and output is flushed."""
    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)  # a thread still working: the normal exit waits for it
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
