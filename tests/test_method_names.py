"""Method knowledge stays in `methods/` (issue 12): orchestration asks the method class, it never spells a
method's name, no method imports the training loop, and the config path into `methods/` stays torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "latentreason"
METHOD_NAMES = {"no_cot", "cot", "soft_tokens", "coconut", "coprocessor", "looped", "liu", "h1", "h2"}
"""method.name values and coprocessor variants: what `if method.name == ...` outside methods/ would compare."""


def docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function, or a field's attribute doc)."""
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for statement in body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str):
                ids.add(id(statement.value))
    return ids


def method_name_literals(source: str, where: str) -> list[str]:
    """`where:line: 'name'` for every string literal equal to a method name (docstrings and comments allowed)."""
    tree = ast.parse(source)
    docs = docstring_nodes(tree)
    return [f"{where}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in METHOD_NAMES and id(node) not in docs]


def test_no_method_name_is_spelled_outside_methods():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.relative_to(PACKAGE).parts[0] != "methods"
             for hit in method_name_literals(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert not found, "ask the method class (latentreason.methods.method_class(name).<fact>) instead of:\n" + "\n".join(found)


def test_the_scan_finds_a_comparison_and_skips_docstrings_and_comments():
    source = ('"""Mentions coconut."""\n\ndef f(config):\n    """cot in a docstring."""\n'
              '    # looped in a comment\n    return config.name == "coprocessor" and config.text != "cot text"\n')
    assert method_name_literals(source, "probe.py") == ["probe.py:6: 'coprocessor'"]


def test_methods_do_not_import_training_loop():
    """A method is what the loop trains; the loop (training.py) is never a method's dependency."""
    offenders = []
    for path in sorted((PACKAGE / "methods").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}:{node.lineno}: {name}" for name in names
                          if name == "latentreason.training" or name.startswith("latentreason.training.")]
            if isinstance(node, ast.ImportFrom) and node.module == "latentreason" and any(a.name == "training" for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}: latentreason.training")
    assert not offenders, "methods/ must not import the training loop:\n" + "\n".join(offenders)


def test_config_and_the_methods_package_load_without_torch():
    """config.py imports methods/options.py, so the `latentreason.methods` package itself must stay light: a
    bad config is reported before torch is imported (the classes load on first use, via methods.registry)."""
    probe = ("import sys, latentreason.config, latentreason.methods, latentreason.methods.options, latentreason.run_checks\n"
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
