#!/usr/bin/env python3
"""Hostile command lines are refused at the option reader, precisely, and messages say what is wrong.

Issue 13, classes 1, 8a and 10 (the CLI half), on the demo model (models/demo):
  1. numbers: values that wrap an int (4294967304), overflow a long, NaN/Inf, negative learning
     rates, top-p above 1, ... exit 2 naming the option; an option given as another option's
     value (`--out --steps 3`) is refused. Property check against each command's --help table:
     for EVERY numeric option listed there, values just outside the documented range and NaN
     are refused naming the option, and the range's own ends are accepted.
  8a. `--data` naming a FIFO fails at once ("not a regular file") instead of blocking in open.
  10. `--layers 99` says the layer is out of range with the model's layer count;
     `--target-regex q_proj` says the regex must match the full module name and shows one;
     `--max-new -1` without --model blames --max-new; `--weight-decay nan` blames the weight
     decay; an unwritable --out prints the OS reason (strerror); a run without a validation
     split prints nothing about validation; the summary's tokens/s counts training time only
     (oracle: the steps' own times in train_log.jsonl, while a validation set 20x larger than
     the training batches is evaluated at the end).

Standard library only. Exit 0 = pass, 1 = fail, 77 = skipped (no CLI binary).
"""
import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(SRC, "build", "peft")
DEMO = os.path.join(SRC, "models", "demo")

failures = 0
WORK = None  # the test's scratch directory, the CLI's working directory


def check(ok, what):
    global failures
    print(("ok: " if ok else "FAIL: ") + what)
    if not ok:
        failures += 1


def run(args, timeout=120):
    """(exit status, stdout, stderr); a run past the timeout (a refusal takes milliseconds,
    a value that slipped through may start a whole run) is killed and reported as such."""
    try:
        # in the scratch directory: a value that slipped through (`--out --steps`) writes there
        p = subprocess.run([PEFT_BIN] + args, capture_output=True, text=True, timeout=timeout, cwd=WORK)
    except subprocess.TimeoutExpired:
        return -9, "", f"(killed after {timeout} s)"
    return p.returncode, p.stdout, p.stderr


def refused(args, option, what):
    """exit 2 and a message naming `option`, and nothing else went wrong first."""
    rc, out, err = run(args, timeout=20)
    check(rc == 2 and option in err and "--model" not in err.replace(option, ""),
          f"{what}: {' '.join(args)} -> rc {rc}, {err.strip()[:160]!r}")


def numeric_table(cmd):
    """{option: (is_int, lo, hi, lo_open, hi_open)} from `peft CMD --help`."""
    rc, out, _ = run([cmd, "--help"])
    table = {}
    for m in re.finditer(r"^  (--[a-z0-9-]+)\s+\S+\s+(integer|number) in ([\[(])([^,]+), ([^\])]+)([\])])$", out, re.M):
        num = int if m.group(2) == "integer" else float
        table[m.group(1)] = (m.group(2) == "integer", num(m.group(4)), num(m.group(5)), m.group(3) == "(", m.group(6) == ")")
    return rc, table


def fmt(v, is_int):
    return str(int(v)) if is_int else repr(float(v))


def main():
    if not os.path.isfile(PEFT_BIN) or not os.path.isdir(DEMO):
        print(f"SKIP: no peft binary at {PEFT_BIN} or no {DEMO}")
        return 77
    global WORK
    tmp = WORK = tempfile.mkdtemp(prefix="peft_cli_numbers_")
    try:
        data = os.path.join(tmp, "train.txt")
        with open(os.path.join(SRC, "README.md"), encoding="utf-8") as f:
            text = f.read()
        with open(data, "w", encoding="utf-8") as f:
            f.write(text[:40000])
        out_dir = os.path.join(tmp, "out")
        base = ["train", "--model", DEMO, "--data", data, "--out", out_dir, "--no-progress"]
        ev = ["eval", "--model", DEMO, "--data", data]
        gen = ["generate", "--model", DEMO, "--prompt", "Once"]

        # ---- 1. the numbers -------------------------------------------------------
        refused(ev + ["--seq-len", "4294967304"], "--seq-len", "int wrap in eval")
        refused(base + ["--rank", "4294967304"], "--rank", "int wrap in train (was rank 8)")
        refused(base + ["--lr", "-1e-3"], "--lr", "negative learning rate")
        for opt in ["--dropout", "--alpha", "--clip", "--epochs", "--lr", "--weight-decay", "--val-fraction"]:
            refused(base + [opt, "nan"], opt, "NaN")
        refused(base + ["--alpha", "inf"], "--alpha", "infinite alpha")
        refused(base + ["--alpha", "1e999"], "--alpha", "alpha overflowing a double")
        refused(gen + ["--top-p", "1.5"], "--top-p", "top-p above 1")
        refused(gen + ["--temperature", "nan"], "--temperature", "NaN temperature")
        refused(base + ["--steps", "99999999999999999999"], "--steps", "steps beyond long")
        refused(base + ["--steps", "3.5"], "--steps", "fractional steps")
        refused(base + ["--steps", " 3"], "--steps", "leading blank")
        refused(gen + ["--seed", "-1"], "--seed", "negative seed")
        refused(base + ["--batch", "0"], "--batch", "zero batch")
        refused(base + ["--rank-pattern", "q_proj=1e300"], "--rank-pattern", "rank pattern beyond int")
        refused(base + ["--rank-pattern", "q_proj=4.5"], "--rank-pattern", "fractional rank pattern")
        refused(base + ["--alpha-pattern", "q_proj=nan"], "--alpha-pattern", "NaN alpha pattern")
        refused(["train", "--model", DEMO, "--data", data, "--out", "--steps", "3"], "--out", "option as a value")
        refused(gen + ["--max-new"], "--max-new", "missing value")
        rc, _, err = run(["train"] + ["--rslora"] * 300)
        check(rc == 2 and "too many arguments" in err, f"300 arguments are refused, not truncated: {err.strip()[:100]!r}")

        # ---- 1. property: every numeric option of --help, at and beyond its range ----------
        for cmd, prefix in (("train", ["train", "--data", data, "--out", out_dir]), ("eval", ["eval", "--data", data]),
                            ("generate", ["generate", "--prompt", "x"])):
            rc, table = numeric_table(cmd)
            check(rc == 0 and len(table) >= {"train": 20, "eval": 3, "generate": 4}[cmd],
                  f"{cmd} --help lists its numeric options with ranges ({len(table)})")
            for opt, (is_int, lo, hi, lo_open, hi_open) in table.items():
                step = 1 if is_int else max(abs(hi), 1.0) * 1e-6
                bad = [lo if lo_open else lo - (1 if is_int else max(abs(lo), 1.0) * 1e-6),
                       hi if hi_open else hi + step, "nan", "1e999", "x"]
                for v in bad:
                    s = v if isinstance(v, str) else fmt(v, is_int)
                    rc, _, err = run(prefix + [opt, s], timeout=20)
                    check(rc == 2 and opt in err, f"{cmd} {opt} {s} refused naming it")
                # ends of the range are accepted: the only complaint left is the missing --model
                good = [] if lo_open else [lo]
                good += [] if hi_open else [hi]
                for v in good:
                    rc, _, err = run(prefix + [opt, fmt(v, is_int)], timeout=20)
                    check(rc == 2 and opt not in err and "--model" in err, f"{cmd} {opt} {fmt(v, is_int)} accepted")

        # ---- 8a. a FIFO as data -------------------------------------------------------------
        fifo = os.path.join(tmp, "fifo")
        os.mkfifo(fifo)
        for args in (ev[:3] + ["--data", fifo], base[:3] + ["--data", fifo, "--out", out_dir]):
            rc, _, err = run(args, timeout=20)
            check(rc == 1 and "not a regular file" in err and fifo in err, f"{args[0]} --data FIFO refused at once: "
                  f"{err.strip()[:120]!r}")

        # ---- 10. messages -------------------------------------------------------------------
        with open(os.path.join(DEMO, "config.json")) as f:
            n_layers = json.load(f)["num_hidden_layers"]
        rc, _, err = run(base + ["--layers", "99", "--steps", "1"])
        check(rc != 0 and "out of range" in err and f"{n_layers} layers" in err and "match no" not in err,
              f"--layers 99: {err.strip()[-160:]!r}")
        rc, _, err = run(base + ["--target-regex", "q_proj", "--steps", "1"])
        check(rc != 0 and "full module name" in err.lower() and "model.layers.0." in err,
              f"--target-regex q_proj: {err.strip()[-200:]!r}")
        rc, _, err = run(["generate", "--max-new", "-1"])
        check(rc == 2 and "--max-new" in err and "--model" not in err, f"--max-new -1 first: {err.strip()!r}")
        rc, _, err = run(base + ["--weight-decay", "nan"])
        check(rc == 2 and "--weight-decay" in err and "learning rate" not in err and "--lr" not in err,
              f"--weight-decay nan: {err.strip()!r}")

        ro = os.path.join(tmp, "readonly")
        os.mkdir(ro)
        os.chmod(ro, 0o555)
        if os.access(ro, os.W_OK):  # root: permissions do not apply; try the immutable flag
            subprocess.run(["chattr", "+i", ro], capture_output=True)
        probe = os.path.join(ro, "probe")
        try:
            open(probe, "w").close()
            os.unlink(probe)
            print("note: cannot make a directory unwritable here (root without chattr): unwritable --out not checked")
        except OSError as e:
            rc, _, err = run(["train", "--model", DEMO, "--data", data, "--out", ro, "--steps", "1", "--seq-len", "32",
                              "--no-progress"])
            check(rc == 1 and os.strerror(e.errno) in err, f"unwritable --out gives the reason ({os.strerror(e.errno)}): "
                  f"{err.strip()[-160:]!r}")
        subprocess.run(["chattr", "-i", ro], capture_output=True)
        os.chmod(ro, 0o755)

        rc, out, err = run(base + ["--steps", "2", "--seq-len", "32", "--val-fraction", "0"])
        check(rc == 0 and "validation" not in out and "nan" not in out.lower(), f"no validation split: {out.strip()!r}")

        # tokens/s: 2 updates of 1 x 64 tokens, then a validation pass over ~90% of the rows
        rc, out, err = run(base + ["--steps", "2", "--batch", "1", "--seq-len", "64", "--val-fraction", "0.9"])
        m = re.search(r"([0-9.]+) tokens/s", out)
        steps = []
        if os.path.isfile(os.path.join(out_dir, "train_log.jsonl")):
            with open(os.path.join(out_dir, "train_log.jsonl")) as f:
                steps = [json.loads(line) for line in f if '"loss"' in line]
        ok = rc == 0 and m and len(steps) == 2
        if ok:
            expected = 2 * 64 / sum(s["step_s"] for s in steps)
            got = float(m.group(1))
            ok = abs(got - expected) <= 0.1 * expected + 2
            print(f"  summary {got:.0f} tokens/s, training steps alone {expected:.0f} tokens/s")
        check(ok, f"summary tokens/s excludes the validation pass: {out.strip()!r}")
    finally:
        subprocess.run(["chattr", "-i", os.path.join(tmp, "readonly")], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
