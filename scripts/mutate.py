"""Mutation testing of prefixtune's core: mutmut's mutation operators, a fork-server runner of our own.

    .venv/bin/python scripts/mutate.py                      # every core module, results in .cache/mutation/
    .venv/bin/python scripts/mutate.py --modules attention,batch --budget 600
    .venv/bin/python scripts/mutate.py --report docs/mutation.md   # write the report from the last results

How it works (docs/testing.md says why it is not plain ``mutmut run``):

1. Which tests cover which line: the fast test subset (no subprocess, CLI or real-model tests) runs once
   under ``coverage`` with one context per test; cached until a source or test file changes.
2. Mutants: mutmut's operators (libcst) on every function and method of the chosen modules,
   decorated ones included (mutmut itself skips them: ``@torch.no_grad``, ``@classmethod``).
   Module-level code, docstrings and the message strings of ``raise``/``warn``/``log`` calls are
   not mutated.
3. Each mutant runs the tests that cover its lines, fastest first, stopping at the first failure,
   in a child forked from a parent that has already imported torch, transformers and the rest
   (but not prefixtune), so a mutant costs its tests, not 8 s of imports. The mutated module lives in
   a per-worker copy of the package put first on ``sys.path`` (and ``PYTHONPATH``).
4. A mutant is *killed* when a test fails (or the module no longer imports), *timeout* when its
   tests run 4x longer than on the original code plus 10 s (a hang: also detected), *survived* when all pass, *no
   tests* when no test covers its lines. Survivors judged equivalent are listed with the reason in
   ``scripts/mutation_equivalents.toml`` and left out of the score.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "prefixtune"
CACHE = ROOT / ".cache" / "mutation"
EQUIVALENTS = ROOT / "scripts" / "mutation_equivalents.toml"

#: module name -> file, the parts of the core whose tests must catch real bugs
MODULES = {
    "attention": "core/attention.py",     # the kernel
    "hf": "hf/boundary.py",               # the boundary
    "batch": "core/batch.py",             # per-row prefix resolution
    "prefix": "core/prefix.py",           # prefix parts, folding, their state
    "prompt": "core/prompt.py",           # prompt parts, insertion, folding, their state
    "parts": "core/parts.py",             # the parts' state protocol
    "runtime": "runtime/adapters.py",     # the one runtime: batch preparation, outputs back
    "model": "runtime/model.py",          # PrefixModel
    "checkpoint": "io/checkpoint.py",     # adapter I/O
    "data.batching": "data/batching.py",  # encoding, length-grouped batches, collation
    "train.loop": "train/loop.py",        # the training recipe
    "train.state": "train/state.py",      # resume state
    "metrics": "evaluation/metrics.py",
    "serve.engine": "serve/engine.py",    # the micro-batching engine
    "serve.request": "serve/request.py",  # per-request bookkeeping shared by the engines
    "serve.detok": "serve/detok.py",      # incremental detokenization, stop strings
    "serve.batch": "serve/batch.py",      # the continuous engine's padded batch
    "serve.continuous": "serve/continuous.py",  # the continuous engine's loop
    "hf.cache": "hf/cache.py",            # prefixes held in the KV cache
    "train.lr_search": "train/lr_search.py",  # --lr auto
    "train.precision": "train/precision.py",  # --bf16
    "train.compiled": "train/compiled.py",    # --compile and its fallback
    "serve.worker": "serve/worker.py",        # the engines' queue and thread
}

#: tests that never run the mutated code in-process (subprocesses) or take too long per mutant
SLOW_TESTS = (
    "tests/cli/test_cli.py", "tests/compare/test_compare.py", "tests/runtime/test_real_models.py", "tests/test_packaging.py",
    "tests/train/test_train.py::test_two_process_ddp_equals_one_process",
    "tests/train/test_train.py::test_two_processes_stop_early_together_and_a_rerun_trains_no_more",
    "tests/serve/test_serve.py::test_serve_command_runs_and_stops_on_sigterm",
)
#: modules whose code runs mostly in threads the per-test coverage context does not follow (the server's
#: event loop and the engine's worker): their tests are added when a mutant's lines have no covering test
THREAD_TESTS = {"serve.engine": "tests/serve/test_serve.py"}
MESSAGE_CALLS = {"warn", "log", "print", "info", "warning", "debug", "error"}


# ------------------------------------------------------------------------------------------------ mutants


@dataclass
class Mutant:
    """One mutation: where, what, and (once run) what happened."""

    module: str
    function: str
    line: int
    end_line: int
    before: str
    after: str
    key: str = ""
    scope: tuple[int, int] = (0, 0)  # lines of the enclosing function
    status: str = "pending"  # killed | timeout | survived | no tests | pending
    tests_run: int = 0
    seconds: float = 0.0
    detail: str = ""


def _visitor_class():
    import libcst as cst
    from libcst.metadata import PositionProvider
    from mutmut.file_mutation import MutationVisitor

    class Visitor(MutationVisitor):
        """mutmut's visitor, but decorated functions are mutated (their decorators are not), and
        neither module-level code nor the message strings of raise/warn/log calls."""

        def __init__(self, operators, ignore_lines):
            super().__init__(operators, ignore_lines)
            self.positions: list[tuple[int, int, str]] = []

        def on_visit(self, node):
            if isinstance(node, (cst.Decorator, cst.Annotation, cst.Raise)):
                return False  # a raise statement is its message; the condition guarding it is mutated
            if isinstance(node, cst.Call) and _called_name(node) in MESSAGE_CALLS:
                return False
            if isinstance(node, cst.Parameters):
                self._in_params = getattr(self, "_in_params", 0) + 1
            return super().on_visit(node)

        def on_leave(self, node):
            if isinstance(node, cst.Parameters):
                self._in_params -= 1

        def _skip_node_and_children(self, node):
            if isinstance(node, (cst.FunctionDef, cst.ClassDef)) and node.decorators:
                return False  # handled in on_visit: the body is mutated, the decorators are not
            return super()._skip_node_and_children(node)

        def _create_mutations(self, node):
            from mutmut.file_mutation import OuterFunctionProvider

            outer = self.get_metadata(OuterFunctionProvider, node, None)
            if not isinstance(outer, cst.FunctionDef):
                return  # module-level code, class-level fields
            before = len(self.mutations)
            super()._create_mutations(node)
            if isinstance(node, cst.SimpleString):  # one string mutant ("XX" around it), not three
                del self.mutations[before + 1:]
            # a default value runs at import; the tests of the function's body are the ones that use it
            pos = self.get_metadata(PositionProvider, outer if getattr(self, "_in_params", 0) else node)
            name = outer.name.value if hasattr(outer, "name") else "?"
            scope = self.get_metadata(PositionProvider, outer)
            self.positions += [(pos.start.line, pos.end.line, name, scope.start.line, scope.end.line)] * (
                len(self.mutations) - before)

    return Visitor


def _called_name(call) -> str | None:
    import libcst as cst

    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


class LazySources(dict):
    """key -> mutated source of the module's file, rendered when first asked for (rendering every
    mutant of a module up front takes minutes)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[str, tuple] = {}

    def __missing__(self, key: str) -> str:
        tree, old, new = self.pending.pop(key)
        self[key] = source = tree.deep_replace(old, new).code
        return source

    def update(self, other) -> None:  # noqa: D102 - merge another module's pending sources
        self.pending.update(other.pending)
        super().update(other)


def make_mutants(module: str) -> tuple[list[Mutant], LazySources]:
    """All mutants of ``module`` and, by key, the mutated source of its file."""
    import libcst as cst
    from libcst.metadata import MetadataWrapper
    from mutmut.file_mutation import pragma_no_mutate_lines
    from mutmut.node_mutation import mutation_operators

    code = (PACKAGE / MODULES[module]).read_text()
    wrapper = MetadataWrapper(cst.parse_module(code))
    visitor = _visitor_class()(mutation_operators, pragma_no_mutate_lines(code))
    tree = wrapper.visit(visitor)
    mutants, sources, ordinal = [], LazySources(), {}
    for mutation, (start, end, function, scope_start, scope_end) in zip(visitor.mutations, visitor.positions,
                                                                       strict=True):
        if _only_moves_device(mutation):
            continue
        before = cst.Module([]).code_for_node(mutation.original_node)
        after = cst.Module([]).code_for_node(mutation.mutated_node)
        if before == after:
            continue
        m = Mutant(module, function, start, end, *_changed_part(before, after), scope=(scope_start, scope_end))
        # stable across edits elsewhere: function, the change, and its rank among equal changes there
        change = f"{function}:{before}->{after}"
        ordinal[change] = ordinal.get(change, -1) + 1
        m.key = f"{module}:{function}:{hashlib.sha256(f'{change}#{ordinal[change]}'.encode()).hexdigest()[:10]}"
        mutants.append(m)
        sources.pending[m.key] = (tree, mutation.original_node, mutation.mutated_node)
    return mutants, sources


def _only_moves_device(mutation) -> bool:
    """Mutants that drop or null a ``device=`` argument: every test runs on the CPU, where the default
    device is the model's, so they cannot be told apart here (CUDA would; see docs/testing.md)."""
    import libcst as cst

    old, new = mutation.original_node, mutation.mutated_node
    if not (isinstance(old, cst.Call) and isinstance(new, cst.Call)):
        return False
    kept = [a for a in old.args if not (a.keyword and a.keyword.value == "device")]
    new_kept = [a for a in new.args if not (a.keyword and a.keyword.value == "device")]
    code = cst.Module([]).code_for_node
    return len(kept) < len(old.args) and [code(a.value) for a in kept] == [code(a.value) for a in new_kept] and \
        [code(a.keyword) for a in kept if a.keyword] == [code(a.keyword) for a in new_kept if a.keyword]


def _changed_part(before: str, after: str, context: int = 40) -> tuple[str, str]:
    """The two texts cut to what differs, with ``context`` characters around it (whitespace folded)."""
    before, after = " ".join(before.split()), " ".join(after.split())
    head = 0
    while head < min(len(before), len(after)) and before[head] == after[head]:
        head += 1
    tail = 0
    while tail < min(len(before), len(after)) - head and before[-1 - tail] == after[-1 - tail]:
        tail += 1
    start = max(0, head - context)

    def cut(text: str) -> str:
        end = min(len(text), len(text) - tail + context)
        return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")

    return cut(before), cut(after)


# ------------------------------------------------------------------------------------------------ the fork server


def preload() -> None:
    """Import the heavy dependencies once, in the parent, without starting any thread pool."""
    os.environ.setdefault("PREFIXTUNE_TEST_THREADS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch

    torch.set_num_threads(1)  # libgomp's pool does not survive fork; with one thread it is never started
    import importlib

    for name in ("transformers", "safetensors.torch", "accelerate", "pytest", "hypothesis", "sacrebleu",
                 "rouge_score.rouge_scorer", "yaml", "tqdm.auto", "matplotlib.pyplot", "peft", "fastapi", "uvicorn",
                 "httpx", "openai", "datasets", "transformers.masking_utils"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    for family in ("gpt2", "llama", "qwen2", "mistral", "gemma2", "bert", "roberta", "distilbert", "t5", "bart"):
        importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    assert "prefixtune" not in sys.modules, "the parent must not import prefixtune (children import the mutant)"


def fork_pytest(args: list[str], log: Path, pythonpath: Path | None) -> int:
    """Run pytest in a forked child (returns its pid); the child never returns."""
    pid = os.fork()
    if pid:
        return pid
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.setpgrp()  # so a timeout can kill the child and anything it started
        os.chdir(ROOT)
        if pythonpath is not None:
            sys.path.insert(0, str(pythonpath))
            os.environ["PYTHONPATH"] = os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")])
        import pytest

        code = int(pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", *args]))
    except BaseException as e:  # noqa: BLE001 - the child must exit, whatever happened
        print(f"mutation child failed: {e!r}", flush=True)
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def test_selection() -> list[str]:
    return ["tests", *[f"--deselect={t}" for t in SLOW_TESTS if "::" in t],
            *[f"--ignore={t}" for t in SLOW_TESTS if "::" not in t]]


def source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class CoveragePlugin:
    """One coverage context per test, and each test's duration."""

    def __init__(self, cov):
        self.cov, self.durations = cov, {}

    def pytest_runtest_protocol(self, item, nextitem):  # noqa: ARG002
        self.cov.switch_context(item.nodeid)
        item._mut_start = time.perf_counter()

    def pytest_runtest_teardown(self, item, nextitem):  # noqa: ARG002
        self.durations[item.nodeid] = time.perf_counter() - item._mut_start


def coverage_map(log: Path) -> dict:
    """``{"lines": {file: {line: [test ids]}}, "durations": {test id: s}}`` for the fast test subset (cached)."""
    digest = source_digest()
    cached = CACHE / f"coverage-{digest}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    out = CACHE / "coverage-run.json"
    pid = os.fork()
    if not pid:
        import coverage

        cov = coverage.Coverage(data_file=None, source=[str(PACKAGE)], branch=False)
        cov.start()
        plugin = CoveragePlugin(cov)
        os.environ["PREFIXTUNE_TEST_THREADS"] = "2"  # one job only: use both cores
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        import pytest

        code = int(pytest.main(["-q", "-p", "no:cacheprovider", *test_selection()], plugins=[plugin]))
        cov.stop()
        data = cov.get_data()
        lines = {}
        for file in data.measured_files():
            rel = str(Path(file).resolve().relative_to(PACKAGE))
            lines[rel] = {str(n): sorted(c for c in ctx if c) for n, ctx in data.contexts_by_lineno(file).items()}
        out.write_text(json.dumps({"lines": lines, "durations": plugin.durations, "exit": code}))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    result = json.loads(out.read_text())
    if result["exit"] != 0:
        raise SystemExit(f"the test subset fails on the unmutated code (exit {result['exit']}); see {log}")
    cached.write_text(json.dumps(result))
    return result


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Job:
    mutant: Mutant
    pid: int
    slot: int
    start: float
    limit: float
    log: Path


@dataclass
class Worker:
    """A private copy of the package into which one mutated file at a time is written."""

    slot: int
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = CACHE / f"worker-{self.slot}"
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.copytree(PACKAGE, self.root / "prefixtune", ignore=shutil.ignore_patterns("__pycache__"))

    def install(self, module: str, source: str | None) -> None:
        target = self.root / "prefixtune" / MODULES[module]
        target.write_text(source if source is not None else (PACKAGE / MODULES[module]).read_text())
        for cached in target.parent.glob(f"__pycache__/{target.stem}.*"):
            cached.unlink()


def tests_for(mutant: Mutant, cover: dict) -> list[str]:
    """The tests that run the mutated lines; for lines only run in other threads (coverage's per-test
    context is the main thread's: the serving engine's worker), those of the enclosing function, or of
    the file."""
    lines = cover["lines"].get(MODULES[mutant.module], {})

    def covering(first: int, last: int) -> set[str]:
        return {t for n in range(first, last + 1) for t in lines.get(str(n), ())}

    tests = covering(mutant.line, mutant.end_line)
    durations = cover["durations"]
    if not tests and mutant.module in THREAD_TESTS:
        tests = covering(*mutant.scope) | {t for t in durations if t.startswith(THREAD_TESTS[mutant.module])}
    if not tests and mutant.scope != (0, 0):
        tests = covering(*mutant.scope)
    if not tests:
        tests = {t for ts in lines.values() for t in ts}
    return sorted(tests, key=lambda t: (durations.get(t, 1.0), t))


def run_all(mutants: list[Mutant], sources: dict[str, str], cover: dict, jobs: int, budget: float,
            save, progress_every: float = 30.0) -> None:
    workers = [Worker(i) for i in range(jobs)]
    free = list(range(jobs))
    running: dict[int, Job] = {}
    queue = [m for m in mutants if m.status == "pending"]
    started = last_note = time.time()
    durations = cover["durations"]
    while queue or running:
        while queue and free and time.time() - started < budget:
            m = queue.pop(0)
            tests = tests_for(m, cover)
            if not tests:
                m.status = "no tests"
                continue
            slot = free.pop()
            workers[slot].install(m.module, sources[m.key])
            log = CACHE / f"worker-{slot}.log"
            expected = sum(durations.get(t, 1.0) for t in tests)
            pid = fork_pytest(["-x", *tests], log, workers[slot].root)
            running[pid] = Job(m, pid, slot, time.time(), max(20.0, 4 * expected + 10), log)
            m.tests_run = len(tests)
        if not running:
            break
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.time()
            for job in list(running.values()):
                if now - job.start > job.limit and job.mutant.status != "timeout":
                    os.killpg(job.pid, signal.SIGKILL)
                    job.mutant.status = "timeout"
            time.sleep(0.05)
        elif pid in running:
            job = running.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            m = job.mutant
            m.seconds = round(time.time() - job.start, 2)
            if m.status != "timeout":
                m.status = "survived" if code == 0 else "killed"
                m.detail = "" if code in (0, 1) else f"pytest exit {code}"
                if code == 1:
                    m.detail = _first_failure(job.log)
            workers[job.slot].install(m.module, None)
            free.append(job.slot)
        if time.time() - last_note > progress_every:
            last_note = time.time()
            done = sum(m.status not in ("pending",) for m in mutants)
            print(f"  {done}/{len(mutants)} mutants, {time.time() - started:.0f} s", flush=True)
            save()
        if not queue and time.time() - started >= budget and not running:
            break


def _first_failure(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("FAILED ") or line.startswith("ERROR "):
            return line.split(" - ")[0][:200]
    return ""


# ------------------------------------------------------------------------------------------------ report


def load_equivalents() -> dict[str, str]:
    if not EQUIVALENTS.is_file():
        return {}
    data = tomllib.loads(EQUIVALENTS.read_text())
    return {key: entry["why"] for key, entry in data.items()}


def summarize(mutants: list[Mutant], equivalents: dict[str, str]) -> list[dict]:
    rows = []
    for module in MODULES:
        ms = [m for m in mutants if m.module == module]
        if not ms:
            continue
        count = {s: sum(m.status == s for m in ms) for s in ("killed", "timeout", "survived", "no tests", "pending")}
        equiv = sum(m.status in ("survived", "no tests") and m.key in equivalents for m in ms)
        judged = len(ms) - count["pending"] - equiv
        detected = count["killed"] + count["timeout"]
        rows.append({"module": module, "mutants": len(ms), **count, "equivalent": equiv,
                     "score": 100.0 * detected / judged if judged else float("nan")})
    return rows


def write_report(path: Path, mutants: list[Mutant], meta: dict) -> None:
    equivalents = load_equivalents()
    rows = summarize(mutants, equivalents)
    L = ["# Mutation testing results", "",
         f"Written by `{meta['command']}` on {meta['date']}. Results accumulate in `.cache/mutation/results.json` "
         "across invocations (keyed by function and change): `--rerun survivors` runs the survivors again, `--rerun all` "
         "everything. "
         "Score = (killed + timeout) / (mutants - equivalent survivors - not run).", "",
         "| module | mutants | killed | timeout | survived | no tests | equivalent | not run | score |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['timeout']} | {r['survived']} | "
                 f"{r['no tests']} | {r['equivalent']} | {r['pending']} | {r['score']:.1f}% |")
    total = {k: sum(r[k] for r in rows) for k in ("mutants", "killed", "timeout", "survived", "no tests", "equivalent",
                                                  "pending")}
    judged = total["mutants"] - total["pending"] - total["equivalent"]
    score = 100.0 * (total["killed"] + total["timeout"]) / judged if judged else float("nan")
    L.append(f"| **all** | {total['mutants']} | {total['killed']} | {total['timeout']} | {total['survived']} | "
             f"{total['no tests']} | {total['equivalent']} | {total['pending']} | **{score:.1f}%** |")
    raw = 100.0 * (total["killed"] + total["timeout"]) / max(1, total["mutants"] - total["pending"])
    L += ["", f"Detected without setting equivalents aside: {raw:.1f}% of the mutants run."]
    left = [m for m in mutants if m.status in ("survived", "no tests")]
    L += ["", "## Surviving mutants", "",
          "Each is either equivalent (the reason, from `scripts/mutation_equivalents.toml`) or an open gap.", ""]
    for m in sorted(left, key=lambda m: (list(MODULES).index(m.module), m.line)):
        why = equivalents.get(m.key)
        verdict = f"equivalent: {why}" if why else f"**open** ({m.status})"
        L.append(f"- `{m.key}` {MODULES[m.module]}:{m.line} in `{m.function}`: `{m.before}` → `{m.after}` — {verdict}")
    path.write_text("\n".join(L) + "\n")


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated, from: " + ", ".join(MODULES))
    parser.add_argument("--budget", type=float, default=4 * 3600, help="seconds of mutant runs (then stop)")
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--sample", type=int, default=None, help="at most this many random mutants per module")
    parser.add_argument("--rerun", choices=["none", "survivors", "all"], default="none",
                        help="keep earlier results (none), re-run only earlier survivors, or everything")
    parser.add_argument("--report", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--results", type=Path, default=CACHE / "results.json")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown modules {unknown}; known: {', '.join(MODULES)}")
    CACHE.mkdir(parents=True, exist_ok=True)

    equivalents = load_equivalents()
    previous = {}
    if args.results.is_file():
        previous = {m["key"]: Mutant(**{**m, "scope": tuple(m.get("scope", (0, 0)))})
                    for m in json.loads(args.results.read_text())["mutants"]}
    mutants, sources = [], LazySources()
    for module in modules:
        ms, src = make_mutants(module)
        if args.sample is not None and len(ms) > args.sample:
            # a stable sample: mutants with earlier results first, then by a hash of the key
            ms = sorted(ms, key=lambda m: (m.key not in previous, hashlib.sha256(m.key.encode()).hexdigest()))
            ms = sorted(ms[:args.sample], key=lambda m: m.line)
        for m in ms:
            old = previous.get(m.key)
            # a survivor judged equivalent is not run again unless everything is
            keep = old is not None and old.status != "pending" and (
                args.rerun == "none" or (args.rerun == "survivors" and (
                    old.status not in ("survived", "no tests") or old.key in equivalents)))
            if keep:
                old.before, old.after, old.line, old.end_line, old.scope = m.before, m.after, m.line, m.end_line, m.scope
            mutants.append(old if keep else m)
        sources.update(src)
        print(f"{module}: {len(ms)} mutants", flush=True)

    started = time.time()
    others = [m for k, m in previous.items() if m.module not in modules]
    all_mutants = others + mutants
    meta = {"command": "python scripts/mutate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "seconds": 0.0, "jobs": args.jobs}

    def save() -> None:
        meta["seconds"] = time.time() - started
        tmp = args.results.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "mutants": [asdict(m) for m in all_mutants]}, indent=1))
        os.replace(tmp, args.results)

    todo = [m for m in mutants if m.status == "pending"]
    if todo:
        preload()
        print("coverage of the fast test subset (cached per source version) ...", flush=True)
        cover = coverage_map(CACHE / "coverage.log")
        print(f"running {len(todo)} mutants with {args.jobs} workers", flush=True)
        run_all(mutants, sources, cover, args.jobs, args.budget, save)
    save()
    for row in summarize(all_mutants, load_equivalents()):
        print(f"{row['module']:>14}: {row['killed'] + row['timeout']:4d} detected, {row['survived']:3d} survived, "
              f"{row['no tests']:3d} without tests, {row['equivalent']:3d} equivalent -> {row['score']:.1f}%")
    if args.report:
        write_report(args.report, all_mutants, meta)
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
