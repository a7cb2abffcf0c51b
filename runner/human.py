"""What the CLI prints for people (without ``--json``): one function per command's result,
reading only the JSON document that ``--json`` would print."""

from __future__ import annotations

from typing import Any


def _print_sweeps(result: dict[str, Any]) -> None:
    """`dcsweep list` as a table."""
    rows = [("NAME", "STATE", "TRIALS", "FRONT", "CREATED")] + [
        (s["name"], s["state"], f"{s['trials_ended']}/{s['trials_total']}", str(s["front_size"]), s["created"] or "-")
        for s in result["sweeps"]]
    if not result["sweeps"]:
        print(f"no sweeps in {result['storage']}")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for s in result["sweeps"]:
        if s.get("damage"):
            print(f"{s['name']}: damaged: {s['damage']}")


def _print_status(s: dict[str, Any]) -> None:
    """`dcsweep status NAME`: a summary line, who runs it, the trials under way, the front."""
    print(f"{s['name']} ({s['space']}): {s['state']}, {s['trials_ended']} of {s['trials_total']} trials ended "
          f"({s['trials_finished']} finished, {s['trials_failed']} failed), front {s['front_size']}")
    if s["driver"]:
        print(f"  driver: {s['driver']}")
    going = [t for t in s["trials"] if t["phase"] != "final" and not t["failed"]]
    if going:
        print(f"  {'running' if s['state'] == 'running' else 'unfinished'}: "
              + ", ".join(f"{t['label']} ({t['phase'] or 'starting'})" for t in going))
    for t in s["front"]:
        print(f"  * {t['label']:<22} val {t['val_accuracy']:.4f}  {t['compressed_bytes']:>10,} B")
    if "resume" in s:
        print(f"  continue with: {s['resume']}")


def _print_stages(result: dict[str, Any]) -> None:
    """`dcsweep stages list` as a table; `stages verify` as a count (failures go to stderr)."""
    if "checked" in result:
        print(f"{result['checked'] - len(result['failed'])} of {result['checked']} stages in {result['storage']} "
              "check out")
        return
    if "removed" in result:
        verb = "removed" if result["removed"] else "would remove (pass --yes to remove)"
        print(f"{verb} {len(result['stages'])} stage folder(s) in {result['storage']}")
    if not result["stages"]:
        if "removed" not in result:
            print(f"no stages in {result['storage']}")
        return
    for s in result["stages"]:
        state = "damaged (set aside)" if s["damaged"] else "computing" if s["computing"] else s.get("problem") or "ok"
        what = " ".join(f"{k}={v}" for k, v in (s.get("settings") or {}).items() if v is not None)
        size = f"{s['bytes']:,} B" if "bytes" in s else "-"
        used = f"used {s['last_used'][:19]} by {s.get('sweeps', 0)} sweep(s)" if s.get("last_used") else "unused"
        print(f"{s['phase']:<11} {s['key'][:12]}  {s.get('model') or '-'} {s.get('dataset') or '-'} {what}  "
              f"{size}  {(s.get('created') or '-')[:19]}  {used}  {state}")


def print_human(command: str, result: dict[str, Any]) -> None:
    if command == "list":
        _print_sweeps(result)
    elif command == "stages":
        _print_stages(result)
    elif command == "status":
        _print_status(result)
    elif command == "compress":
        for name, acc in (("test", result["accuracy"]), ("validation", result["val_accuracy"])):
            print(f"{name + ' accuracy':<20} dense {acc['dense']:.4f}  pruned {acc['pruned']:.4f}  "
                  f"shared {acc['shared']:.4f}  decoded {acc['decoded']:.4f}")
        by = "  ".join(f"{c} {b:,} B ({result['ratio_by_coder'][c]:.1f}x)" for c, b in
                       result["compressed_bytes_by_coder"].items())
        print(f"size       dense {result['dense_bytes']:,} B -> {by}; sparsity {result['sparsity']:.4f}")
        print(f"wrote      {result['path']}  (dcsweep inspect {result['path']} for the per-layer table)")
        if result.get("allocation"):
            print("allocation " + "  ".join(f"{name} s={v['sparsity']:g} k={v['k']}"
                                            for name, v in result["allocation"].items()))
    elif command == "sensitivity":
        retrained = f"retrained {n} epoch(s)" if (n := result.get("retrain_epochs")) else "no retraining"
        print(f"validation accuracy of the dense model {result['dense_val_accuracy']:.4f}; each layer alone "
              f"pruned and shared, {retrained} ({'cached' if result['cached'] else 'computed'}, "
              f"{result['seconds']:.1f} s)")
        for layer in result["layers"]:
            print(f"{layer['name']}:")
            for row in layer["rows"]:
                print(f"  sparsity {row['sparsity']:<5g} k {row['k']:<6} val accuracy {row['val_accuracy']:.4f}  "
                      f"{row['bytes']:>10,} B")
    elif command == "evaluate":
        print(f"accuracy {result['accuracy']:.4f} on {result['samples']} test samples of {result['dataset']}")
    elif command == "submit":
        print(f"submitted sweep {result['name']} as Ray job {result['job_id']}")
        print(f"follow it:  {result['follow']}")
        print(f"its status: {result['status']}")
    elif command in ("run", "resume", "pareto"):
        from .cycle.pareto import label  # torch comes with it: only when a sweep's table is printed

        trials = result["trials"]
        print(f"{result['name']}: {len(trials)} finished trials; * = Pareto-optimal (validation accuracy up, "
              f"size down)")
        for t in trials:
            val = "  n/a " if t.get("val_accuracy") is None else f"{t['val_accuracy']:.4f}"
            print(f"  {'*' if t['pareto_optimal'] else ' '} {label(t['params']):<22} val {val}  test "
                  f"{t['accuracy']:.4f}  {t['compressed_bytes']:>10,} B  {t['ratio'] or 0:6.1f}x")
        if result.get("errors"):
            print(f"{len(result['errors'])} trial(s) failed; see the MLflow runs tagged 'error'")
        if "ui" in result:
            print(f"MLflow UI: {result['ui']}")
        if "front_url" in result:
            print(f"the front: {result['front_url']}")
