"""`--print_config`: every config field, its resolved value and the comment that explains it.

The comments are read from the source of ernjax/defaults.py (what a field means) and of the
`--config` file (why a protocol sets it), with `ast` and `tokenize`: a field's comment is the one
at the end of the line that sets it (`d.kind = "slices2d"  # "slices2d" or ...`), else the block
of comment lines just above it. Fields are found through the names the file gives the config
tree (`c = base_config()`, `c.data = d = ConfigDict()`, `d = c.data`) and the keywords of a
`ConfigDict(dict(name=value, ...))`; a field set any other way is listed without a comment.
"""

import ast
import io
import textwrap
import tokenize
from pathlib import Path

import ml_collections

from ernjax import defaults

_WIDTH = 100
_ROOT_CALLS = ("ConfigDict", "base_config", "get_config")  # calls that make the whole tree


def field_comments(path) -> dict[str, str]:
    """Dotted field path -> its comment (one line) in the Python source `path`.

    Returns {} when the file cannot be read or parsed (a listing without its comments).
    """
    try:
        source = Path(path).read_text(encoding="utf-8")
        tree = ast.parse(source)
        notes = _comments(source)
    except (OSError, SyntaxError, UnicodeDecodeError, tokenize.TokenError):
        return {}
    found: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            _visit(node.body, {}, notes, found)
    # A field set more than once (`if arg == "tiny":`) has no one comment that fits its value.
    return {path: said[0] for path, said in found.items() if len(said) == 1 and said[0]}


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text, whether the comment is the whole line)."""
    lines = source.splitlines()
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            out[row] = (tok.string.lstrip("#").strip(), not lines[row - 1][:col].strip())
    return out


def _visit(body, names: dict[str, str], notes, found: dict[str, list[str]]) -> None:
    """Records the comment of every field `body` assigns; `names`: variable -> field path."""
    for stmt in body:
        if isinstance(stmt, (ast.If, ast.For, ast.While, ast.With)):  # `if arg == "tiny":`
            for block in ("body", "orelse"):
                _visit(getattr(stmt, block, []), names, notes, found)
        if not isinstance(stmt, ast.Assign):
            continue
        value_path = _path(stmt.value, names)
        if _is_root_call(stmt.value):
            value_path = ""
        for target in stmt.targets:
            if isinstance(target, ast.Name) and value_path is not None:
                names[target.id] = value_path  # an alias: `d = c.data`, `c = base_config()`
            path = _path(target, names) if isinstance(target, ast.Attribute) else None
            if path:
                value_path = path  # `c.data = d = ConfigDict()`: d names c.data
                found.setdefault(path, []).append(_comment_for(stmt.lineno, notes))
                _visit_dict(stmt.value, path, stmt.lineno, notes, found)


def _visit_dict(value, path: str, line: int, notes, found: dict[str, list[str]]) -> None:
    """The fields of `ConfigDict(dict(a=1, ...))`, `ConfigDict({...})` or `{...}` under `path`.

    Only an item on a line of its own (below the statement's `line`) takes the comments there.
    """
    if isinstance(value, ast.Call) and value.args and not value.keywords:
        return _visit_dict(value.args[0], path, line, notes, found)
    if isinstance(value, ast.Call):
        items = [(k.arg, k.value) for k in value.keywords if k.arg]
    elif isinstance(value, ast.Dict):
        items = [
            (k.value, v)
            for k, v in zip(value.keys, value.values, strict=True)
            if isinstance(k, ast.Constant) and isinstance(k.value, str)
        ]
    else:
        return None
    for name, item in items:
        comment = _comment_for(item.end_lineno, notes) if item.lineno > line else ""
        found.setdefault(f"{path}.{name}", []).append(comment)
        _visit_dict(item, f"{path}.{name}", line, notes, found)
    return None


def _comment_for(line: int, notes) -> str:
    """The comment at the end of `line`, else the comment block just above it."""
    text, whole = notes.get(line, ("", True))
    return text if text and not whole else _block_above(line, notes)


def _block_above(line: int, notes) -> str:
    """The consecutive whole-line comments ending on the line above `line`, joined."""
    block = []
    while (line - 1) in notes and notes[line - 1][1]:
        line -= 1
        block.insert(0, notes[line][0])
    return " ".join(block)


def _path(node, names: dict[str, str]) -> str | None:
    """The field path `node` (`c.data.kind`, `d.kind`) stands for, or None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in names:
        return None
    return ".".join(p for p in (names[node.id], *parts) if p)


def _is_root_call(node) -> bool:
    if not (isinstance(node, ast.Call) and not node.args and not node.keywords):
        return False
    func = node.func
    return (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) in (
        _ROOT_CALLS
    )


def listing(config: ml_collections.ConfigDict, config_file: str = "") -> str:
    """Every field of `config` as `path = value  # comment`, a group's comment above its fields.

    Args:
      config: the resolved config (the `--config` file with the command line's overrides).
      config_file: the `--config` value (`configs/ern.py:tiny`): its comments are shown too, as
        "configs/ern.py: ..." after the defaults' comment.

    Returns:
      The text, one field per line (a long comment wrapped on indented lines below its field).
    """
    own = field_comments(defaults.__file__)
    file = config_file.split(":", 1)[0]
    theirs = field_comments(file) if file else {}
    lines = [f"# --config={config_file}" if config_file else "# the config"]
    for path, value in _fields(config):
        comment, why = own.get(path, ""), theirs.get(path, "")
        if isinstance(value, ml_collections.ConfigDict):
            lines.extend(_wrapped(f"{path}: {comment}", "") if comment else [])
            lines.extend(_wrapped(f"{path}: {file}: {why}", "") if why else [])
            continue
        line = f"{path} = {value!r}"
        if comment and len(line) + len(comment) + 4 <= _WIDTH:
            lines.append(f"{line}  # {comment}")
        else:
            lines.append(line)
            lines.extend(_wrapped(comment, "    ") if comment else [])
        lines.extend(_wrapped(f"{file}: {why}", "    ") if why else [])
    return "\n".join(lines)


def _fields(config, prefix: str = ""):
    """(dotted path, value) of every field, depth first; a ConfigDict before its fields."""
    for key in sorted(
        config.keys(), key=lambda k: isinstance(config[k], ml_collections.ConfigDict)
    ):
        path, value = f"{prefix}{key}", config[key]
        yield path, value
        if isinstance(value, ml_collections.ConfigDict):
            yield from _fields(value, f"{path}.")


def _wrapped(text: str, indent: str) -> list[str]:
    prefix = f"{indent}# "
    return textwrap.wrap(
        text, _WIDTH, initial_indent=prefix, subsequent_indent=prefix, break_on_hyphens=False
    )
