"""DESIGN.md's import rule, checked: imports point one way, module by module.

Every import in the folders of SCANNED (at module level and inside functions, `import a.b`
and `from a import b`) is read with `ast` and resolved to a module; each module lives in a
room (ROOMS), and ALLOWED says which rooms a room may import. The layering is data, here at
the top; a deliberate crossing goes in EXCEPTIONS with its reason, and an exception no longer
used fails too. A second test finds import cycles between the product's files at module
level (a function-level import is how a cycle is broken on purpose, so it is not an edge).
"""
import ast
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCANNED = ("protocol", "firmware", "gateway", "ocpp_cs", "sim", "hil_tests", "tools")
FIRST_PARTY = {*SCANNED, "tests"}

# Each room, with the dotted module names it holds (fnmatch patterns; `x.*` is the subtree).
# The first matching room wins; a first-party module that matches none is an error, so a
# new module of gateway/ is placed here before it can be imported.
ROOMS = {
    "protocol": ["protocol", "protocol.*"],
    "firmware": ["firmware", "firmware.*"],
    "base": ["gateway", "gateway.config", "gateway.db", "gateway.clock", "gateway.accounts",
             "gateway.cliutil", "gateway.units"],
    "ingest": ["gateway.ingest", "gateway.ingest.*"],
    "devices": ["gateway.devices", "gateway.devices.*"],
    "ledger": ["gateway.ledger", "gateway.ledger.*"],
    "market": ["gateway.market", "gateway.market.*"],
    "ocpp_cs": ["ocpp_cs", "ocpp_cs.*"],
    "energy": ["gateway.energy", "gateway.energy.*"],
    "web": ["gateway.web", "gateway.web.*"],
    "root": ["gateway.service", "gateway.cli", "gateway.run", "gateway.__main__"],
    "tools": ["tools", "tools.*"],
    "sim": ["sim", "sim.*"],
    "hil_tests": ["hil_tests", "hil_tests.*"],
    "tests": ["tests", "tests.*"],
}

# Low -> high: protocol <- firmware; protocol <- base <- components <- ocpp_cs <- energy <- web
# <- root. Components use each other, through public names only (the test of private names
# below); firmware is a branch of its own beside the gateway. tools/ is the developer's (release bundle, fidelity
# gate): it packages the firmware with the protocol's signing and the installer's bundle
# check, and nothing in the product imports it. sim/ and hil_tests/ sit on top of everything;
# nothing imports them (hil_tests drives sim), and nothing scanned imports tests/.
COMPONENTS = {"ingest", "devices", "ledger", "market"}
PRODUCT = {"protocol", "firmware", "base", *COMPONENTS, "ocpp_cs", "energy", "web", "root"}
ALLOWED = {
    "protocol": {"protocol"},
    "firmware": {"protocol", "firmware"},
    "base": {"protocol", "base"},
    **{c: {"protocol", "base", *COMPONENTS} for c in COMPONENTS},
    "ocpp_cs": {"protocol", "base", *COMPONENTS, "ocpp_cs"},
    "energy": {"protocol", "base", *COMPONENTS, "ocpp_cs", "energy"},
    "web": {"protocol", "base", *COMPONENTS, "ocpp_cs", "energy", "web"},
    "root": PRODUCT,
    "tools": {"protocol", "firmware", "base", *COMPONENTS, "tools"},
    "sim": PRODUCT | {"sim"},
    "hil_tests": PRODUCT | {"tools", "sim", "hil_tests"},
}

# Deliberate crossings: (importing file, imported module) -> the reason, in one line.
EXCEPTIONS = {
    ("gateway/devices/installer.py", "firmware.boot_select"):
        "the installer writes /boot.json as the device's boot selector reads it "
        "(boot_select.default_state) and installs that selector",
}


def room_of(module):
    for room, patterns in ROOMS.items():
        if any(fnmatchcase(module, p) for p in patterns):
            return room
    return None


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def files():
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def known_modules():
    return {module_name(p) for d in FIRST_PARTY for p in (ROOT / d).rglob("*.py")}


class Import:
    """One imported name: `target` is the module it loads, `names` what it takes from a
    module that is not itself a module, `bound` the local name the module is bound to."""

    def __init__(self, path, line, text, target, top_level, names=(), bound=None):
        self.path, self.line, self.text = path, line, text
        self.target, self.top_level, self.names, self.bound = target, top_level, names, bound

    def __str__(self):
        return f"{self.path.relative_to(ROOT)}:{self.line}: `{self.text}` -> {self.target}"


def imports(path, modules):
    """Every first-party import of one file, each resolved to the module it loads."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []

    def visit(node, in_function):   # in a function, or under a __main__ guard
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.partition(".")[0] in FIRST_PARTY:
                    text = "import " + a.name + (f" as {a.asname}" if a.asname else "")
                    found.append(Import(path, node.lineno, text, a.name, not in_function,
                                        bound=a.asname))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if base.partition(".")[0] in FIRST_PARTY:
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    target = sub if sub in modules else base
                    text = f"from {'.' * node.level}{node.module or ''} import {a.name}"
                    if target == sub:
                        names, bound = (), a.asname or a.name
                    else:
                        names, bound = (a.name,), None
                    found.append(Import(path, node.lineno, text, target, not in_function,
                                        names, bound))
        if is_main_guard(node):
            visit(node.test, in_function)
            for child in node.orelse:
                visit(child, in_function)
            children, in_function = node.body, True
        else:
            children = ast.iter_child_nodes(node)
            in_function = in_function or isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in children:
            visit(child, in_function)

    visit(tree, False)
    return found


def is_main_guard(node):
    """`if __name__ == "__main__":` runs only as a script, never at import: not module level."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__"
                    for c in node.test.comparators))


def all_imports():
    modules = known_modules()
    return [i for p in files() for i in imports(p, modules)]


def private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_every_module_is_placed_in_a_room():
    unplaced = sorted({module_name(p) for p in files() if room_of(module_name(p)) is None})
    unplaced += sorted({str(i) for i in all_imports() if room_of(i.target) is None})
    assert not unplaced, "not in any room of ROOMS:\n" + "\n".join(unplaced)


def test_imports_point_one_way():
    bad = []
    for i in all_imports():
        src, dst = room_of(module_name(i.path)), room_of(i.target)
        key = (str(i.path.relative_to(ROOT)), i.target)
        if src is None or dst is None or key in EXCEPTIONS:
            continue
        if dst not in ALLOWED[src]:
            bad.append(f"{i}: {src} may not import {dst} "
                       f"(it may import {', '.join(sorted(ALLOWED[src]))})")
    assert not bad, "imports against DESIGN.md's rule:\n" + "\n".join(bad)


def test_other_rooms_are_used_through_public_names():
    """What a machine can check of "through its public functions": no `_name` of another
    room, neither imported (`from gateway.ingest.store import _row`) nor reached through an
    imported module (`store._row`)."""
    modules, bad = known_modules(), []
    for path in files():
        src = room_of(module_name(path))
        found = imports(path, modules)
        for i in found:
            if room_of(i.target) != src and any(private(n) for n in
                                                (*i.target.split("."), *i.names)):
                bad.append(f"{i}: a private name of another room")
        bound = {i.bound: i.target for i in found if i.bound}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and private(node.attr)
                    and room_of(bound[node.value.id]) != src):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                           f"{node.value.id}.{node.attr}: a private name of another room")
    assert not bad, "private names used across rooms:\n" + "\n".join(bad)


def test_every_exception_is_still_needed():
    seen = {(str(i.path.relative_to(ROOT)), i.target) for i in all_imports()}
    stale = [f"{path} -> {target}" for path, target in EXCEPTIONS if (path, target) not in seen]
    assert not stale, "exceptions no import uses any more (remove them):\n" + "\n".join(stale)


# The product's module-level import graph must have no cycle. The one deliberate lazy import,
# `from protocol import ocmf_verify` in protocol/ocmf.py's module __getattr__ (ocmf_verify
# imports ocmf), is inside a function and so is no edge; it needs no entry here.
CYCLE_ROOTS = ("protocol", "firmware", "gateway", "ocpp_cs")
CYCLE_EXCEPTIONS = {}   # frozenset of module names -> reason


def test_no_import_cycles_at_module_level():
    edges = {}
    for i in all_imports():
        src = module_name(i.path)
        if (i.top_level and src.partition(".")[0] in CYCLE_ROOTS
                and i.target.partition(".")[0] in CYCLE_ROOTS and i.target != src):
            edges.setdefault(src, {}).setdefault(i.target, i)
    cycles = [c for c in strongly_connected(edges) if frozenset(c) not in CYCLE_EXCEPTIONS]
    report = []
    for cycle in cycles:
        report.append(" <-> ".join(sorted(cycle)))
        report += [f"    {i}" for m in sorted(cycle) for t, i in sorted(edges.get(m, {}).items())
                   if t in cycle]
    assert not cycles, "module-level import cycles:\n" + "\n".join(report)


def strongly_connected(edges):
    """Tarjan's algorithm: the groups of two or more modules that import each other round."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return groups
