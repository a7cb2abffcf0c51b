"""The dcsweep CLI: JSON shapes, exit codes, and bad input refused before anything starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcsweep.runner.cli import main

from .helpers import write_cifar_bin

FAST = ["--epochs", "10", "--prune-steps", "2", "--prune-epochs", "3", "--share-epochs", "2"]


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if "--json" in argv and code == 0 else None, err


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("cli") / "m.dcz"
    code = main(["compress", *FAST, "-o", str(path), "--json"])
    assert code == 0
    return path, {}


def test_compress_json_shape(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "compress", *FAST, "--k", "16", "-o", str(tmp_path / "m.dcz"), "--json")
    assert code == 0
    assert set(out["accuracy"]) == set(out["val_accuracy"]) == {"dense", "pruned", "shared", "decoded"}
    assert "allocation" not in out
    assert {"sparsity", "dense_bytes", "compressed_bytes", "ratio", "layers"} <= set(out)
    assert out["compressed_bytes"] == (tmp_path / "m.dcz").stat().st_size
    assert all(0 <= a <= 1 for a in out["accuracy"].values())
    row = out["layers"][0]
    assert {"name", "shape", "nonzero", "k", "index_bits", "bytes"} <= set(row)


def test_inspect_and_evaluate(capsys, compressed) -> None:
    path, _ = compressed
    code, out, _ = run(capsys, "inspect", str(path), "--json")
    assert code == 0 and out["compressed_bytes"] == path.stat().st_size
    assert {"dense_bytes", "ratio", "layers"} <= set(out)
    code, out, _ = run(capsys, "evaluate", str(path), "--dataset", "digits", "--json")
    assert code == 0 and out["samples"] == 500 and 0.8 < out["accuracy"] <= 1
    assert main(["inspect", str(path)]) == 0
    table = capsys.readouterr().out
    assert "fc1.weight" in table and f"total {path.stat().st_size} B (huffman)" in table


def test_human_output(capsys, tmp_path: Path) -> None:
    assert main(["compress", *FAST, "-o", str(tmp_path / "h.dcz")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test accuracy        dense ") and "validation accuracy  dense " in out
    assert "huffman" in out and "ans" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["compress", "--model", "vgg", "-o", "{tmp}/x.dcz"], "model='vgg' is not allowed; model must be one of"),
    (["compress", "--dataset", "svhn", "-o", "{tmp}/x.dcz"], "unknown dataset 'svhn'; valid datasets"),
    (["compress", "--sparsity", "1.0", "-o", "{tmp}/x.dcz"], r"sparsity=1.0 is not allowed"),
    (["compress", "--sparsity", "-0.1", "-o", "{tmp}/x.dcz"], r"sparsity=-0.1 is not allowed"),
    (["compress", "--k", "1", "-o", "{tmp}/x.dcz"], r"k=1 is not allowed; k must be an integer in \[2, 65536\]"),
    (["compress", "--k", "abc", "-o", "{tmp}/x.dcz"], "argument --k: invalid int value: 'abc'"),
    (["compress", "--dataset", "cifar10", "-o", "{tmp}/x.dcz"], "needs --data-root DIR"),
    (["compress", "--dataset", "mnist", "--data-root", "{tmp}/none", "-o", "{tmp}/x.dcz"],
     "data root {tmp}/none does not exist"),
    (["compress", "-o", "{tmp}/no/such/dir/x.dcz"], "output folder {tmp}/no/such/dir does not exist"),
    (["compress"], "the following arguments are required: -o/--output"),
    (["inspect", "{tmp}/missing.dcz"], "{tmp}/missing.dcz does not exist"),
    (["evaluate", "{tmp}/missing.dcz", "--dataset", "digits"], "does not exist"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--cpus-per-trial", "-1", "--storage", "{tmp}/s"], r"--cpus-per-trial=-1.0 is not allowed"),
    # submit refuses what the job would only fail on, before it reaches for the cluster
    (["submit", "--address", "http://127.0.0.1:9", "--gpus-per-trial", "2000"],
     r"--gpus-per-trial=2000.0 is not allowed; it must be a number in \[0, 1024\]"),
    (["submit", "--address", "http://127.0.0.1:9", "--storage", "ftp://host/x"], "scheme 'ftp' is not supported"),
    # a per-layer rule naming no layer was silently ignored
    (["compress", "--layer", "fc9=0.5", "-o", "{tmp}/x.dcz"],
     r"layers=\{'fc9': 0.5\} is not allowed: .*\['fc9'\] match no layer of the model; its layers are "
     r"\['fc1', 'fc2', 'fc3'\]"),
    (["compress", "--model", "lenet5", "--layer", "features.*=0.5", "--layer", "conv1=0.5", "-o", "{tmp}/x.dcz"],
     r"\['conv1'\] match no layer of the model; its layers are \['features.0', 'features.2', 'fc1', 'fc2'\]"),
    (["run", "{tmp}/layers.yaml", "--storage", "{tmp}/s"], r"fixed: layers=\{'fc9': 0.5\} is not allowed"),
    (["run", "{tmp}/klayers.yaml", "--storage", "{tmp}/s"],
     r"fixed: k_layers=\{'fc9': 4\} is not allowed: .*\['fc9'\] match no layer of the model"),
    # allocation targets: out of reach, clashing with per-layer rules, malformed; table grids
    (["compress", "--model", "lenet5", "--dataset", "mnist5k", "--target-ratio", "500", "--storage", "{tmp}/s",
      "-o", "{tmp}/x.dcz"], r"target_ratio=500 is not reachable for lenet5: .* allowed: a ratio up to about \d+"),
    (["compress", "--target-ratio", "40", "--layer", "fc1=0.5", "--storage", "{tmp}/s", "-o", "{tmp}/x.dcz"],
     r"layers=\{'fc1': 0.5\} is not allowed; layers must be \{\} with target_ratio"),
    (["compress", "--target-ratio", "40", "--max-drop", "1", "--storage", "{tmp}/s", "-o", "{tmp}/x.dcz"],
     r"max_drop=1.0 is not allowed; max_drop must be unset when target_ratio is set"),
    (["compress", "--max-drop", "-1", "--storage", "{tmp}/s", "-o", "{tmp}/x.dcz"],
     r"max_drop=-1.0 is not allowed; max_drop must be a number in \[0, 100\]"),
    (["compress", "--target-ratio", "0.5", "--storage", "{tmp}/s", "-o", "{tmp}/x.dcz"],
     r"target_ratio=0.5 is not allowed; target_ratio must be a number in \(1, 1e\+06\]"),
    (["compress", "--dense", "{tmp}/missing.dcz", "-o", "{tmp}/x.dcz"], r"dense_path='{tmp}/missing.dcz' does not"),
    (["sensitivity", "--k", "4,70000", "--storage", "{tmp}/s"], r"--k=\[70000\] is not allowed; each must be an "
     r"integer in \[2, 65536\]"),
    (["sensitivity", "--sparsities", "0.5,1.2", "--storage", "{tmp}/s"], r"--sparsities=\[1.2\] is not allowed"),
    (["sensitivity", "--k", "4,x", "--storage", "{tmp}/s"], r"argument --k: needs comma-separated ints; got '4,x'"),
    (["sensitivity", "--model", "lenet9", "--storage", "{tmp}/s"], r"model='lenet9' is not allowed"),
    (["sensitivity", "--retrain-epochs", "1", "--retrain-lr", "-1", "--storage", "{tmp}/s"],
     r"table_retrain_lr=-1.0 is not allowed; table_retrain_lr must be a number in \(0, 10\]"),
    # found by a hostile review: each failed with a traceback, most after the whole cycle had run
    (["compress", "-o", "{tmp}", "--overwrite"], r"-o '{tmp}' is a folder; it must name the .dcz file to write"),
    (["compress", "-o", "", "--overwrite"], r"-o '.' is a folder"),
    (["compress", "--plots", "{tmp}/layers.yaml", "-o", "{tmp}/x.dcz"], r"--plots {tmp}/layers.yaml is a file"),
    (["compress", "--dense", "{tmp}/layers.yaml", "-o", "{tmp}/x.dcz"],
     r"dense_path='{tmp}/layers.yaml' is not a state dict for this model: "),
    (["compress", "--layer", "fc1=0.5", "--layer", "fc1=0.1", "-o", "{tmp}/x.dcz"],
     r"--layer fc1 is given more than once; give each layer one rule"),
    (["compress", "--device", "tpu", "-o", "{tmp}/x.dcz"], r"device='tpu' is not allowed; device must be one of"),
    pytest.param(["compress", "--device", "cuda", "-o", "{tmp}/x.dcz"], r"no CUDA device is available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["sensitivity", "--storage", "{tmp}/layers.yaml"], r"storage {tmp}/layers.yaml is not writable"),
    (["compress", "--target-ratio", "20", "--storage", "{tmp}/layers.yaml", "-o", "{tmp}/x.dcz"],
     r"storage {tmp}/layers.yaml is not writable"),
    (["run", "--cpus-per-trial", "0", "--storage", "{tmp}/s"],
     r"--cpus-per-trial=0.0 is not allowed; it must be a number in \[0.01, 1024\]"),
    (["pareto", "sw", "--tracking-uri", "http://alice:s3cret@127.0.0.1:9", "--storage", "{tmp}/s"],
     r"the MLflow tracking URI must not carry credentials; set MLFLOW_TRACKING_USERNAME"),
    (["pareto", "sw", "--tracking-uri", "foo://bar", "--storage", "{tmp}/s"],
     r"tracking URI 'foo://bar' is not allowed; it must start with one of"),
    (["pareto", "sw", "--tracking-uri", "http://127.0.0.1:9", "--storage", "{tmp}/s"],
     r"MLflow tracking server http://127.0.0.1:9 does not answer"),
    # found by a new user's trial: Ray retried an absent cluster for minutes; root passed os.access
    (["run", "--smoke-test", "--address", "127.0.0.1:9", "--storage", "{tmp}/s"],
     r"--address='127.0.0.1:9': no Ray cluster answers at .*:9 \(.*\); start one with `ray start --head`"),
    (["run", "--smoke-test", "--tracking-uri", "sqlite:////proc/x/mlflow.db", "--storage", "{tmp}/s"],
     r"tracking URI 'sqlite:////proc/x/mlflow.db': /proc is not writable"),
    (["run", "{tmp}/nodata.yaml", "--storage", "{tmp}/s"], r"dataset 'cifar10' needs --data-root DIR"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path: Path, argv: list[str], message: str) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    (tmp_path / "layers.yaml").write_text("name: typo\nfixed: {layers: {fc9: 0.5}}\nswept: {k: {grid: [4, 8]}}\n")
    (tmp_path / "klayers.yaml").write_text("name: typo\nfixed: {k_layers: {fc9: 4}}\nswept: {k: {grid: [4, 8]}}\n")
    (tmp_path / "nodata.yaml").write_text("name: nodata\nfixed: {dataset: cifar10}\nswept: {k: {grid: [4, 8]}}\n")
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcsweep: error: ")
    assert re.search(message.replace("{tmp}", re.escape(str(tmp_path))), lines[0]), lines[0]
    assert "s3cret" not in err
    assert not (tmp_path / "x.dcz").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["inspect", "evaluate"])
def test_corrupt_or_unreadable_file_exits_2(capsys, compressed, tmp_path: Path, command: str) -> None:
    path, _ = compressed
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(path.read_bytes()[:-20])
    extra = ["--dataset", "digits"] if command == "evaluate" else []
    code, _, err = run(capsys, command, str(bad), *extra)
    assert code == 2 and f"{bad}: file is truncated" in err
    flipped = bytearray(path.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    code, _, err = run(capsys, command, str(bad), *extra)
    assert code == 2 and "checksum mismatch" in err
    code, _, err = run(capsys, command, str(tmp_path), *extra)
    assert code == 2 and "is not a file" in err


def test_evaluate_on_the_wrong_dataset_exits_2(capsys, compressed) -> None:
    path, _ = compressed
    code, _, err = run(capsys, "evaluate", str(path), "--dataset", "mnist5k")
    assert code == 2 and "holds a model for input [1, 8, 8] with 10 classes" in err
    code, _, err = run(capsys, "evaluate", str(path), "--dataset", "digits", "--device", "bogus")
    assert code == 2 and err.strip() == ("dcsweep: error: device='bogus' is not allowed; device must be one of "
                                         "['auto', 'cpu', 'cuda', 'mps']")


def test_evaluate_escapes_the_shape_a_file_names(capsys, compressed, tmp_path: Path) -> None:
    from dcsweep.compression.fileformat import pack, parse

    path, _ = compressed
    parsed = parse(path.read_bytes())
    header = json.loads(json.dumps(parsed.header))
    header["arch"]["kwargs"]["input_shape"] = "\x1b[2J\x1b[31mEVIL"
    (tmp_path / "e.dcz").write_bytes(pack(header, bytes(parsed.body)))
    code, _, err = run(capsys, "evaluate", str(tmp_path / "e.dcz"), "--dataset", "digits")
    assert code == 2 and "\x1b" not in err and "holds a model for input \\x1b[2J\\x1b[31mEVIL with 10" in err


def test_a_compressed_model_is_not_taken_as_a_dense_one(capsys, compressed, tmp_path: Path) -> None:
    path, _ = compressed  # weight-shared: pruning it again failed deep in the cycle with a traceback
    code, _, err = run(capsys, "compress", *FAST, "--dense", str(path), "-o", str(tmp_path / "x.dcz"))
    assert code == 2 and f"dense_path='{path}' holds a pruned or shared model (layers ['fc1', 'fc2', 'fc3'])" in err
    assert not (tmp_path / "x.dcz").exists()


def test_an_empty_storage_variable_is_unset_not_the_current_folder(monkeypatch) -> None:
    from dcsweep.runner.sweep import default_storage

    monkeypatch.setenv("DCSWEEP_STORAGE", "")
    assert default_storage() == "~/dcsweep-runs"
    monkeypatch.setenv("DCSWEEP_STORAGE", "/data/runs")
    assert default_storage() == "/data/runs"


def test_existing_output_is_kept_unless_overwrite(capsys, tmp_path: Path) -> None:
    target = tmp_path / "x.dcz"
    target.write_bytes(b"precious")
    code, _, err = run(capsys, "compress", *FAST, "-o", str(target))
    assert code == 2 and "exists; pass --overwrite" in err and target.read_bytes() == b"precious"
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "mine.txt").write_text("keep")
    code, _, err = run(capsys, "compress", *FAST, "-o", str(tmp_path / "y.dcz"), "--plots", str(plots))
    assert code == 2 and "is not empty" in err and not (tmp_path / "y.dcz").exists()
    code, _, _ = run(capsys, "compress", *FAST, "-o", str(target), "--overwrite")
    assert code == 0 and target.read_bytes()[:4] == b"\x89DCZ"


def test_vgg19_bn_on_cifar_format_files(capsys, tmp_path: Path) -> None:
    """The seed's experiment, end to end on a tiny file in CIFAR-10's real binary format."""
    root = write_cifar_bin(tmp_path / "data", n=8)
    code, out, err = run(capsys, "compress", "--model", "vgg19_bn", "--dataset", "cifar10", "--data-root", str(root),
                         "--epochs", "1", "--prune-steps", "1", "--prune-epochs", "1", "--share-epochs", "1",
                         "--k", "4", "--batch-size", "16", "-o", str(tmp_path / "vgg.dcz"), "--json")
    assert code == 0, err
    assert out["accuracy"]["decoded"] == out["accuracy"]["shared"]
    assert out["dense_bytes"] == 4 * 20_040_522
    assert {r["k"] for r in out["layers"] if r["kind"] == "shared"} == {4}
    code, out, _ = run(capsys, "evaluate", str(tmp_path / "vgg.dcz"), "--dataset", "cifar10", "--data-root", str(root),
                       "--json")
    assert code == 0 and out["samples"] == 8


def test_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "dcsweep"
    done = subprocess.run([str(exe), "compress", "--sparsity", "2", "-o", str(tmp_path / "x.dcz")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().startswith("dcsweep: error: sparsity=2.0")
    done = subprocess.run([str(exe), "compress", *FAST, "-o", str(tmp_path / "x.dcz"), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"]["decoded"] > 0.5  # stdout is exactly one JSON document
    epochs = re.findall(r"epoch (\d+)/(\d+), loss \d", done.stderr)  # a line per epoch: never silent
    assert ("10", "10") in epochs and len(epochs) >= 10 + 3 + 2


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["compress", "--help"], ["pareto"],
                                  ["compress", "--sparsity", "x"], ["nonsense"]])
def test_help_and_usage_errors_import_neither_torch_nor_ray(argv: list[str]) -> None:
    """`--help` and a usage error answer before the heavy imports (torch alone takes seconds)."""
    code = ("import atexit, sys; from dcsweep.runner.cli import main; "
            "atexit.register(lambda: print('HEAVY', sorted(m for m in ('torch', 'ray', 'mlflow', 'sklearn') "
            "if m in sys.modules), file=sys.stderr)); sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert "HEAVY []" in done.stderr, done.stderr
    if argv[-1] == "--help":
        assert done.returncode == 0 and "usage: dcsweep" in done.stdout
    else:
        assert done.returncode == 2 and done.stderr.startswith("dcsweep: error:"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 2  # one line, then the check's own


def test_run_help_lists_every_built_in_space_and_the_help_names_match_the_library(capsys) -> None:
    from dcsweep.compression import CODERS, INITS
    from dcsweep.runner.cli import CODER_NAMES, INIT_NAMES
    from dcsweep.search_spaces import list_spaces

    assert (tuple(INITS), tuple(CODERS)) == (INIT_NAMES, CODER_NAMES)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in list_spaces())


def test_the_defaults_compress_help_shows_are_the_cycles() -> None:
    """The help is written without importing torch, so its defaults are text: checked here."""
    from dcsweep.runner.cli import build_parser
    from dcsweep.runner.cycle import CycleConfig

    defaults = CycleConfig().to_dict()  # as resolved: epochs is 20 from a random start
    compress = build_parser()._subparsers._group_actions[0].choices["compress"]
    numeric = {k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    shown = {a.dest: a.help for a in compress._actions if a.dest in numeric}
    assert {"epochs", "prune_epochs", "share_epochs", "lr", "k", "sparsity", "batch_size"} <= set(shown)
    for dest, text in shown.items():
        assert f"({defaults[dest]:g})" in text, (dest, text)


def test_every_option_of_every_subcommand_has_help() -> None:
    import argparse

    from dcsweep.runner.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = [f"{name} {a.option_strings or a.dest}" for name, parser in sub.choices.items()
                    for a in parser._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert undocumented == []


def test_printed_commands_name_a_program_a_fresh_shell_finds(tmp_path: Path) -> None:
    """`make run` calls .venv/bin/dcsweep from a shell whose PATH lacks .venv/bin: the command it
    prints must not say a bare `dcsweep` there, and must say it where PATH has this one."""
    script = Path(sys.executable).parent / "dcsweep"
    code = "import sys; from dcsweep.runner.cli import _program; sys.argv[0] = sys.argv[1]; print(_program())"
    for path, expected in ((os.defpath, [str(script.resolve())]), (f"{script.parent}:{os.defpath}", ["dcsweep"])):
        done = subprocess.run([sys.executable, "-c", code, str(script)], capture_output=True, text=True,
                              env={**os.environ, "PATH": path})
        assert done.stdout.strip() == repr(expected), done.stderr


def test_the_front_url_opens_the_runs_table_filtered_to_the_front_smallest_first() -> None:
    from urllib.parse import parse_qs, urlsplit

    from dcsweep.runner.cli import front_url

    url = front_url("http://127.0.0.1:5000", "7")
    assert url.startswith("http://127.0.0.1:5000/#/experiments/7/runs?")
    query = parse_qs(urlsplit(url).fragment.split("?", 1)[1])
    assert query == {"workflowType": ["machine_learning"], "searchFilter": ["tags.pareto_optimal = 'true'"],
                     "orderByKey": ["metrics.`compressed_bytes`"], "orderByAsc": ["true"]}


def test_list_and_status_of_a_storage_without_sweeps(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "list", "--storage", str(tmp_path), "--json")
    assert code == 0 and out == {"storage": str(tmp_path), "sweeps": []}
    assert main(["list", "--storage", str(tmp_path)]) == 0 and "no sweeps" in capsys.readouterr().out
    code, _, err = run(capsys, "status", "nope", "--storage", str(tmp_path))
    assert code == 2 and err.strip() == f"dcsweep: error: no sweep named 'nope' in {tmp_path}; sweeps there: []"


def test_the_quick_exit_runs_exit_handlers_and_flushes(tmp_path: Path) -> None:
    """entry() skips the interpreter's slow teardown, not what a library registered for exit."""
    code = ("import atexit, sys; from dcsweep.runner.cli import entry; "
            "atexit.register(lambda: print('exit handler ran', file=sys.stderr)); "
            f"sys.argv = ['dcsweep', 'compress', *{FAST!r}, '-o', {str(tmp_path / 'y.dcz')!r}, '--json']; entry()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr.rstrip().endswith("exit handler ran"), done.stderr
    assert json.loads(done.stdout)["accuracy"]["decoded"] > 0.5


def test_inspect_escapes_control_characters_in_names(capsys, tmp_path: Path) -> None:
    """A file's tensor names are untrusted: a terminal escape in one must print as text."""
    import torch.nn as nn

    from dcsweep.compression import MagnitudePrune, prune_, save_compressed

    model = nn.Sequential()
    model.add_module("x\x1b]0;owned\x07\x1b[2J", nn.Linear(4, 4))
    prune_(model, MagnitudePrune(sparsity=0.5))
    save_compressed(model, tmp_path / "e.dcz")
    assert main(["inspect", str(tmp_path / "e.dcz")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "x\\x1b]0;owned\\x07\\x1b[2J.weight" in out


def test_compress_to_a_target_ratio_allocates_and_keeps_the_table(capsys, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    code, out, _ = run(capsys, "compress", *FAST, "--target-ratio", "20", "--storage", store,
                       "-o", str(tmp_path / "a.dcz"), "--json")
    assert code == 0 and set(out["allocation"]) == {"fc1", "fc2", "fc3"}
    assert all(set(v) == {"sparsity", "k"} for v in out["allocation"].values())
    assert out["allocation_predicted"]["bytes"] <= out["allocation_predicted"]["budget_bytes"]
    kept = {r["name"].removesuffix(".weight"): r for r in out["layers"]}
    for name, chosen in out["allocation"].items():  # the file holds what was allocated
        assert kept[name]["k"] == chosen["k"]
        numel = _numel(kept[name]["shape"])
        assert kept[name]["nonzero"] == numel - round(chosen["sparsity"] * numel)
    code, table, _ = run(capsys, "sensitivity", "--epochs", "10", "--storage", store, "--json")
    assert code == 0 and table["cached"] and [layer["name"] for layer in table["layers"]] == ["fc1", "fc2", "fc3"]
    assert {"sparsity", "k", "val_accuracy", "bytes"} <= set(table["layers"][0]["rows"][0])
    code, again, _ = run(capsys, "compress", *FAST, "--max-drop", "1", "--storage", store,
                         "-o", str(tmp_path / "b.dcz"), "--json")
    assert code == 0 and again["allocation"] and again["compressed_bytes"] < out["dense_bytes"]


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_output_into_a_closed_pipe_ends_quietly(compressed) -> None:
    """`dcsweep pareto NAME | head`: a BrokenPipeError traceback once the reader had left (`true`
    leaves before the command has started)."""
    path, _ = compressed
    done = subprocess.run(f"{sys.executable} -m dcsweep.runner.cli inspect {path} | true", shell=True,
                          capture_output=True, text=True)
    assert done.stderr == ""
