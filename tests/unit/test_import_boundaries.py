"""Architecture invariants: only engine/ imports megatron.core, only rollout/ imports vllm,
algo/ imports nothing of ours but torch, and launch/ imports no torch at module import."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "prime_mcore"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files_importing(prefix: str):
    for path in PKG.rglob("*.py"):
        if any(m == prefix or m.startswith(prefix + ".") for m in imported_modules(path)):
            yield path.relative_to(PKG)


def test_only_engine_imports_megatron():
    offenders = [str(p) for p in files_importing("megatron") if p.parts[0] != "engine"]
    assert offenders == []


def test_only_rollout_imports_vllm():
    offenders = [str(p) for p in files_importing("vllm") if p.parts[0] != "rollout"]
    assert offenders == []


def test_algo_imports_only_torch_and_itself():
    for path in (PKG / "algo").rglob("*.py"):
        for mod in imported_modules(path):
            root = mod.split(".")[0]
            assert root in {"torch", "prime_mcore", "__future__", "math", "typing", "collections"}, (path, mod)
            if root == "prime_mcore":
                assert mod.startswith("prime_mcore.algo"), (path, mod)


def test_launch_does_not_import_torch():
    code = "import sys, prime_mcore.launch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
