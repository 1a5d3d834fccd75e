"""Package structure: no import cycle among score_jax's modules, no use of another's privates.

Both checks read the source with `ast` (nothing is imported), so an import inside a
function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import os
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_files(root: str, package: str) -> dict[str, str]:
  """Dotted module name -> path, for every .py file of `package` under `root`."""
  out = {}
  for folder, _, files in os.walk(os.path.join(root, package)):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
        if rel[-1] == "__init__":
          rel = rel[:-1]
        out[".".join(rel)] = os.path.join(folder, name)
  return out


def _base(module: str, path: str, node: ast.ImportFrom) -> str:
  """The module an ImportFrom names, relative imports resolved against `module`."""
  if not node.level:
    return node.module or ""
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  parts = package.split(".")
  parts = parts[:len(parts) - node.level + 1]
  return ".".join(parts + ([node.module] if node.module else []))


def _imports(module: str, path: str, modules: set[str]):
  """(imported module, bound alias or None, private name imported from it or None) triples."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name in modules:
          yield a.name, a.asname, None
    elif isinstance(node, ast.ImportFrom):
      base = _base(module, path, node)
      for a in node.names:
        full = f"{base}.{a.name}"
        if full in modules:  # `from pkg import submodule`
          yield full, a.asname or a.name, None
        elif base in modules:  # `from pkg.module import name`
          private = a.name.startswith("_") and not a.name.startswith("__")
          yield base, None, a.name if private else None


def import_graph(root: str, package: str) -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its source (self-imports dropped)."""
  files = module_files(root, package)
  return {m: {dep for dep, _, _ in _imports(m, p, set(files)) if dep != m}
          for m, p in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def private_uses(root: str, package: str) -> list[str]:
  """'module: other._name' for every use of another package module's private name."""
  files = module_files(root, package)
  modules = set(files)
  found = []
  for module, path in sorted(files.items()):
    aliases = {}
    for dep, alias, private in _imports(module, path, modules):
      if alias:
        aliases[alias] = dep
      if private and dep != module:
        found.append(f"{module}: from {dep} import {private}")

    def resolve(expr):
      """The package module a dotted expression names, or None."""
      if isinstance(expr, ast.Name):
        return aliases.get(expr.id)
      if isinstance(expr, ast.Attribute):
        parent = resolve(expr.value)
        if parent and f"{parent}.{expr.attr}" in modules:
          return f"{parent}.{expr.attr}"
      return None

    for node in ast.walk(ast.parse(open(path).read(), path)):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        owner = resolve(node.value)
        if owner and owner != module:
          found.append(f"{module}: {owner}.{node.attr}")
  return found


def test_no_import_cycle_among_score_jax_modules():
  graph = import_graph(REPO, "score_jax")
  assert "score_jax.train" in graph and "score_jax.baselines" in graph["score_jax.pipeline"]
  assert find_cycles(graph) == []


def test_no_module_uses_another_modules_private_names():
  assert private_uses(REPO, "score_jax") == []


def _write_package(root, files):
  for name, source in files.items():
    path = os.path.join(root, "pkg", *name.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(textwrap.dedent(source))


def test_checks_catch_function_level_cycles_and_private_uses(tmp_path):
  # Hand-made package: a -> b at module level, b -> a inside a function (the cycle);
  # c reads b's private helper as an attribute and d imports one by name; e is clean
  # (a namedtuple's `_replace`, a private name of its own, another library's private).
  _write_package(str(tmp_path), {
      "__init__.py": "",
      "a.py": "from pkg import b\n",
      "b.py": "def f():\n  import pkg.a as a\n  return a\n\ndef _helper():\n  pass\n",
      "c.py": "from pkg import b\nb._helper()\n",
      "sub/__init__.py": "",
      "sub/d.py": "from ..b import _helper\n",
      "e.py": ("import os\nfrom pkg import b\n_mine = 1\nb.f()._replace\nos._exit\n"
               "def g():\n  return _mine\n"),
  })
  graph = import_graph(str(tmp_path), "pkg")
  assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
  assert graph["pkg.sub.d"] == {"pkg.b"}
  assert find_cycles(graph) == [["pkg.a", "pkg.b"]]
  assert sorted(private_uses(str(tmp_path), "pkg")) == [
      "pkg.c: pkg.b._helper", "pkg.sub.d: from pkg.b import _helper"]
  # Without b's function-level import there is no cycle.
  _write_package(str(tmp_path), {"b.py": "def f():\n  return 1\n"})
  assert find_cycles(import_graph(str(tmp_path), "pkg")) == []
