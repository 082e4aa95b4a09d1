#!/usr/bin/env python3
"""Runs every grpcurl example of README.md against a fresh turnstiled and
checks that it answers what the README shows.

    check_readme.py TURNSTILED GRPCURL [README.md]

The README's ```console blocks are read in order, against one turnstiled
(memory backend, no data dir), so that tokens and holders carry from one
block to the next as a reader following along would see them. In a block:

- `$ grpcurl …` is a command (a trailing `# comment` is dropped; the README's
  127.0.0.1:7700 is replaced by the address turnstiled bound);
- the lines up to the next `$ ` are its expected output: JSON documents
  (compared as JSON, with only `expiresIn` free to differ, since time passes),
  an `ERROR:` block (its Code, Message and numbered Details compared), or plain lines (compared
  as lines); no lines means only that it must exit 0;
- `$ grpcurl … &` runs in the background (a waiter); the checker waits until
  the server counts one more waiter before the next command, and the
  background command's output is expected after the next command's.

Exits 1 naming each example whose answer differs.
"""

import json
import re
import shlex
import subprocess
import sys
import tempfile
import time

README_ADDR = "127.0.0.1:7700"
DURATION = re.compile(r"^\d+(\.\d+)?s$")


def blocks(text):
    """Yields the lines of each ```console block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```console":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            yield i + 1, lines[i + 1 : j]
            i = j
        i += 1


def examples(block):
    """Splits a block into (command, background, expected lines)."""
    out = []
    for line in block:
        if line.startswith("$ "):
            cmd = line[2:].strip()
            background = cmd.endswith("&")
            if background:
                cmd = cmd[:-1].strip()
            out.append((cmd, background, []))
        elif out:
            out[-1][2].append(line)
    return out


def json_docs(text):
    """Parses a run of concatenated JSON documents."""
    dec = json.JSONDecoder()
    docs, i = [], 0
    text = text.strip()
    while i < len(text):
        doc, end = dec.raw_decode(text, i)
        docs.append(doc)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return docs


def same(expected, actual):
    """JSON equality, with `expiresIn` free to be any duration."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return False
        for k, v in expected.items():
            if k == "expiresIn":
                if not (isinstance(actual[k], str) and DURATION.match(actual[k])):
                    return False
            elif not same(v, actual[k]):
                return False
        return True
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(same(e, a) for e, a in zip(expected, actual))
    return expected == actual


def error_lines(text):
    return [l.strip() for l in text.splitlines() if re.match(r"\s*(Code:|Message:|\d+\))", l)]


def matches(expected, actual):
    exp = "\n".join(expected).strip()
    if not exp:
        return True
    if exp.startswith("ERROR:"):
        return error_lines(exp) == error_lines(actual)
    if exp.startswith(("{", "[")):
        try:
            e, a = json_docs(exp), json_docs(actual)
        except ValueError:
            return False
        return len(e) == len(a) and all(same(x, y) for x, y in zip(e, a))
    return [l.rstrip() for l in exp.splitlines()] == [l.rstrip() for l in actual.strip().splitlines()]


def argv(cmd, grpcurl, addr):
    args = shlex.split(cmd, comments=True)
    if not args or args[0] != "grpcurl":
        return None
    return [grpcurl] + [a.replace(README_ADDR, addr) for a in args[1:]]


def waiters(grpcurl, addr):
    out = subprocess.run(
        [grpcurl, "-plaintext", "-d", "{}", addr, "turnstile.v1.LockService/ListLocks"],
        capture_output=True, text=True, check=True,
    ).stdout
    return sum(l.get("waiters", 0) for l in json.loads(out).get("locks", []))


def wait_for_waiters(grpcurl, addr, want, what):
    deadline = time.monotonic() + 30
    while waiters(grpcurl, addr) < want:
        if time.monotonic() > deadline:
            raise SystemExit(f"check_readme: {what} never queued")
        time.sleep(0.05)  # a script polling a server, not a test of timing


def main():
    turnstiled, grpcurl = sys.argv[1], sys.argv[2]
    readme = sys.argv[3] if len(sys.argv) > 3 else "README.md"
    text = open(readme, encoding="utf-8").read()
    failures, checked = [], 0
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(
            [turnstiled, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", "", "--log", "warn"],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
        try:
            ready = server.stdout.readline()
            m = re.search(r"grpc=(\S+)", ready)
            if not m:
                log.seek(0)
                raise SystemExit(f"check_readme: turnstiled did not start: {ready!r} {log.read()}")
            addr = m.group(1)
            for first_line, block in blocks(text):
                pending = []  # background commands: (line, expected, process)
                for cmd, background, expected in examples(block):
                    args = argv(cmd, grpcurl, addr)
                    if args is None:
                        continue
                    checked += 1
                    where = f"{readme}, block at line {first_line}: $ {cmd}"
                    if background:
                        before = waiters(grpcurl, addr)
                        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                        wait_for_waiters(grpcurl, addr, before + 1, where)
                        pending.append((where, proc))
                        # Its output is shown after the next command's.
                        continue
                    run = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    actual = run.stdout
                    want_error = "\n".join(expected).strip().startswith("ERROR:")
                    if pending:
                        # The foreground's documents come first, then each background's.
                        n = len(json_docs("\n".join(expected)))
                        outputs = [actual] + [p.communicate(timeout=60)[0] for _, p in pending]
                        actual = "\n".join(outputs)
                        pending = []
                        if n == 0:
                            want_error = False
                    if (run.returncode != 0) != want_error or not matches(expected, actual):
                        failures.append(f"{where}\n  expected:\n    " + "\n    ".join(expected)
                                        + "\n  got (exit " + str(run.returncode) + "):\n    "
                                        + "\n    ".join(actual.strip().splitlines()))
                for where, proc in pending:
                    proc.kill()
                    failures.append(f"{where}\n  a background command with no command after it")
        finally:
            server.terminate()
            server.wait(timeout=30)
    for f in failures:
        print("FAILED:", f, file=sys.stderr)
    print(f"check_readme: {checked - len(failures)} of {checked} README grpcurl examples answer as shown")
    if checked == 0:
        print("check_readme: no examples found", file=sys.stderr)
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
