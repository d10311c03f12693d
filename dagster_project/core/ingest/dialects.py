"""Markdown dialects of documentation site generators, unwrapped before the Markdown parser sees
a page (templating.render_markdown runs this first):

- containers keep their text and lose their markers: Docusaurus / MyST `:::note` ... `:::`,
  VitePress / VuePress `::: tip Title` ... `:::`, pymdownx `/// tip | Title` ... `///`, MyST
  directive fences (```` ```{note} ````);
- indented container bodies are dedented: Python-Markdown / MkDocs admonitions (`!!! note`,
  `??? tip`) and content tabs (`=== "Tab"`) indent their body by four spaces, which CommonMark
  reads as a code block;
- MyST roles lose their name: {ref}`setup` reads as `setup`;
- MDX: `import` / `export` statements and `{/* comments */}` leave the text, and a component's
  tags do (`<Tabs>`, `<TabItem value="x">`, `<Embed id="x" />`) while what it encloses stays; a
  component imported from a Markdown file (`import Intro from './_intro.mdx'`, then `<Intro />`)
  is that file's text, included like any include.

A container's title (`:::tip[Pro tip]`, `!!! note "Title"`, a component's `title="..."`) stays as a
line of text: it is often the best summary of what the container says. Code fences are left as
written, and so is everything inside them."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable

# MyST directives whose body is code or data, not prose: left as fenced code.
CODE_DIRECTIVES = frozenset({"code", "code-block", "sourcecode", "code-cell", "literalinclude", "math",
                             "mermaid", "graphviz", "csv-table", "list-table", "raw", "eval-rst",
                             "jupyter-execute", "ipython", "doctest", "testcode", "testoutput", "plantuml"})
# MyST directives whose body is neither (a table of contents lists page paths): left out.
DROPPED_DIRECTIVES = frozenset({"toctree", "contents", "autosummary", "include", "image", "figure"})
TAB = 4  # Python-Markdown's indentation of a container body

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
# `!!! note "Title"`, `??? tip`, `???+ warning ""`, `!!! note inline end "Title"`; `=== "Tab"`
_INDENTED = re.compile(r'^(?:(?:!!!|\?\?\?\+?)[ \t]+[A-Za-z][\w-]*(?:[ \t]+[A-Za-z][\w-]*)*(?:[ \t]+"(?P<title>[^"\n]*)")?'
                       r'|===[!+]?[ \t]+"(?P<tab>[^"\n]*)")[ \t]*$')
# `:::note`, `:::tip[Title]`, `:::info Title`, `:::{note}`, `:::{admonition} Title`; `:::` closes.
# After a space, only a container's name: VitePress / VuePress write `::: tip Title`, `::: details`,
# `::: code-group`, where `::: package.name` is mkdocstrings' autodoc line, kept as text.
SPACED_CONTAINERS = ("note", "tip", "info", "warning", "danger", "caution", "important", "details", "code-group",
                     "success", "secondary", "example", "hint", "attention", "error", "raw", "v-pre")
_COLON = re.compile(r"^:{3,}(?:[ \t]+(?=(?i:" + "|".join(SPACED_CONTAINERS) + r")(?![\w.-])))?"
                    r"(?:(?P<type>\{[\w:-]+\}|[A-Za-z][\w-]*)(?:\[(?P<bracket>[^\]\n]*)\])?(?P<rest>.*))?$")
# `/// note`, `/// tip | Title`, `//// tab | Python 3.10+`; `///` closes.
_SLASH = re.compile(r"^/{3,}(?:[ \t]+(?P<type>[A-Za-z][\w-]*)(?:[ \t]*\|[ \t]*(?P<title>.*))?)?[ \t]*$")
_BLOCK_ATTRIBUTES = re.compile(r"^\{:[ \t]*[^{}]*\}$")  # kramdown's `{: .note}` on a line of its own
_MYST_ROLE = re.compile(r"\{[\w:-]{1,40}\}(?=`)")  # MyST's {ref}`target`, {doc}`page`: the role name goes
_DIRECTIVE_OPTION = re.compile(r"^[ \t]*:[\w-]+:(?:[ \t].*)?$")  # MyST `:class: tip`
_BLOCK_OPTION = re.compile(r"^[ \t]+[\w-]+:[ \t].*$")  # pymdownx `    type: warning` right after `///`
# MDX: an ESM statement starts a paragraph and runs to the next blank line.
_ESM = re.compile(r"""^(?:import[ \t]+(?:[\w*{}, \t]+[ \t]+from[ \t]+)?["'][^"'\n]+["'];?[ \t]*$"""
                  r"|import[ \t]+[\w*{}, \t]+[ \t]+from[ \t]*$|import[ \t]*\{"
                  r"|export[ \t]+(?:const|let|var|function|default|class|async|\{|\*)\b)")
_JS_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|`[^`]*`|//.*""")
MAX_ESM_LINES = 300  # an ESM statement longer than this with open brackets is a stray bracket
_MDX_IMPORT = re.compile(r"""^import[ \t]+(?P<name>[A-Z]\w*)[ \t]+from[ \t]+["'](?P<path>[^"'\n]+\.mdx?)["'];?[ \t]*$""",
                         re.MULTILINE)
# A component tag (capitalized name: lower-case tags are HTML), its attributes possibly over
# several lines, with values in quotes or braces nested four deep.
_BRACED = r"\{[^{}]*\}"
for _ in range(3):  # JSX expressions nested four deep: `icon={<svg><path d={{a: {b: 1}}} /></svg>}`
    _BRACED = r"\{(?:[^{}]|" + _BRACED + r")*\}"
_ATTRS = r"""(?:[^<>{}"']|"[^"\n]*"|'[^'\n]*'|""" + _BRACED + r"){0,4000}?"
_COMPONENT = re.compile(rf"<(?P<close>/)?(?P<name>[A-Z][\w.]*)(?P<attrs>(?:\s{_ATTRS})?)\s*(?P<self>/)?>")
# Attributes whose value the site shows as text: a card's or tab's title, a link card's description,
# a badge's text; and an API field's name and type (Mintlify's <ParamField query="limit" type="integer">).
_ATTR_VALUE = r"""=(?:"([^"\n]+)"|'([^'\n]+)'|\{["']([^"'\n]+)["']\})"""
_TITLE_ATTR = re.compile(r"(?<![\w-])(?:title|label|summary|description|caption|text)" + _ATTR_VALUE)
_FIELD_ATTR = re.compile(r"(?<![\w-])(?:path|query|body|header|name|type|default)" + _ATTR_VALUE)
# CommonMark: a run of n backticks opens a code span, closed by the next run of exactly n.
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(?:[^`]|(?!\1(?!`))`+){1,4000}?(?<!`)\1(?!`)")
REMOVED = "\x00"  # marks where markup was: a line left with only marks goes away whole

Include = Callable[[str], str]  # an imported file's path, relative to the page's folder -> its place


def _indent(line: str) -> int:
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width += TAB - width % TAB
        else:
            break
    return width


def _dedent(line: str, columns: int) -> str:
    """The line without its first `columns` columns of indentation (tabs count to the next stop)."""
    width, i = 0, 0
    while i < len(line) and width < columns and line[i] in " \t":
        width += 1 if line[i] == " " else TAB - width % TAB
        i += 1
    return " " * max(0, width - columns) + line[i:]


def unwrap_containers(body: str) -> str:
    """The page with its containers unwrapped (see the module): markers out, titles kept as a
    line of text, indented bodies dedented; fenced code and what is inside it as written."""
    out: list[str] = []
    bodies: list[int] = []  # body indentation of the open indented containers, innermost last
    fence: tuple[str, str] | None = None  # (marker, what it is) of the open fence
    options = None  # "myst" / "block": the container just opened may start with option lines
    for line in body.splitlines():
        if not line.strip():
            out.append("")
            if options == "block":
                options = None
            continue
        width = _indent(line)
        if fence is None:
            while bodies and width < bodies[-1]:
                bodies.pop()
        text = _dedent(line, bodies[-1]) if bodies else line
        if fence is not None:
            marker, kind = fence
            match = _FENCE.match(text.strip() if _indent(text) < 4 else "")
            if match and match.group("fence")[0] == marker[0] and len(match.group("fence")) >= len(marker) \
                    and not match.group("info"):
                fence = None
                if kind == "code":
                    out.append(text)
                continue
            if kind == "code":
                out.append(text)
                continue
            if kind == "dropped":
                continue
            if options == "myst" and _DIRECTIVE_OPTION.match(text):
                continue
            options = None
            out.append(_MYST_ROLE.sub("", text))  # a prose directive's body
            continue
        if options == "myst" and _DIRECTIVE_OPTION.match(text):
            continue
        if options == "block" and _BLOCK_OPTION.match(line):
            continue
        options = None
        stripped = text.strip()
        if _indent(text) >= 4:
            # An indented code block, or a list item's body: a container's marker line there (a
            # list item's `/// note`, `:::tip`, `!!! note`) goes, its title stays; nothing is dedented.
            marker = _COLON.match(stripped) or _SLASH.match(stripped) or _INDENTED.match(stripped)
            if marker is None:
                out.append(text)
            elif _title(marker):
                out.append(text[:len(text) - len(text.lstrip())] + _title(marker))
            continue
        match = _FENCE.match(stripped)
        if match:
            info = match.group("info")
            directive = re.match(r"\{([\w:-]+)\}(.*)", info)
            if directive is None or directive.group(1) in CODE_DIRECTIVES:
                fence = (match.group("fence"), "code")
                out.append(text)
            elif directive.group(1) in DROPPED_DIRECTIVES:
                fence = (match.group("fence"), "dropped")
            else:
                fence = (match.group("fence"), "prose")
                options = "myst"
                if directive.group(1) == "admonition" and directive.group(2).strip():
                    out.append(directive.group(2).strip())
            continue
        match = _INDENTED.match(stripped)
        if match:
            if _title(match):
                out.append(_title(match))
            bodies.append((bodies[-1] if bodies else 0) + _indent(text) + TAB)
            continue
        match = _COLON.match(stripped)
        if match:
            if _title(match):
                out.append(_title(match))
            options = "myst" if (match.group("type") or "").startswith("{") else None
            continue
        if _BLOCK_ATTRIBUTES.match(stripped):
            continue
        match = _SLASH.match(stripped)
        if match:
            if _title(match):
                out.append(_title(match))
            options = "block" if match.group("type") else None
            continue
        out.append(_MYST_ROLE.sub("", text))
    return "\n".join(out) + ("\n" if body.endswith("\n") else "")


def _title(marker: re.Match) -> str:
    """What a container's opening marker says of it: `!!! note "Title"`, `=== "Tab"`, `/// tip | Title`,
    `:::tip[Title]`, `:::tip Title`, `:::tip{title="Title"}`, `:::{admonition} Title`; '' for none."""
    groups = marker.groupdict()
    if "tab" in groups:  # !!! / ??? / ===
        title = groups["title"] or groups["tab"]
    elif "bracket" in groups:  # :::
        kind, rest = groups["type"] or "", (groups["rest"] or "").strip()
        attribute = _TITLE_ATTR.search(rest) if rest.startswith("{") else None
        if groups["bracket"] is not None:
            title = groups["bracket"]
        elif attribute:
            title = next((g for g in attribute.groups() if g), "")
        elif kind.startswith("{") and kind != "{admonition}" or rest.startswith("{"):
            title = ""  # a MyST directive's argument (a figure's file...), or attributes without a title
        else:
            title = rest
    else:  # ///
        title = groups["title"]
    return (title or "").strip()


def mdx_imports(text: str) -> dict[str, str]:
    """Components imported from Markdown files: name -> path relative to the page's folder."""
    return {m.group("name"): posixpath.normpath(m.group("path")) for m in _MDX_IMPORT.finditer(text)}


def strip_mdx(segment: str, imports: dict[str, str], include: Include | None) -> str:
    """Text outside code fences of an MDX page without its ESM statements, JSX comments and
    component tags; an imported Markdown component (`<Intro />`) is `include(its path)`, or
    left out when includes are not resolved (`include` None)."""
    kept: list[str] = []
    statement: list[str] | None = None  # the open ESM statement's lines after its first
    depth = 0
    for line in segment.split("\n"):
        if statement is None:
            if _ESM.match(line):
                statement, depth = [], _bracket_balance(line)
            else:
                kept.append(line)
            continue
        # A statement runs to a blank line once its brackets are closed: an exported component's
        # body has blank lines inside it.
        statement.append(line)
        depth += _bracket_balance(line)
        if not line.strip() and depth <= 0:
            statement = None
        elif len(statement) >= MAX_ESM_LINES:
            kept += _after_first_blank(statement)
            statement = None
    if statement is not None:  # never closed: a stray bracket ends at the first blank line
        kept += _after_first_blank(statement)
    text = "\n".join(kept)

    def component(match: re.Match) -> str:
        name, attrs = match.group("name"), match.group("attrs") or ""
        if name in imports and match.group("self"):
            return f"\n\n{include(imports[name])}\n\n" if include is not None else REMOVED
        if match.group("close"):
            return REMOVED
        shown = _FIELD_ATTR if name.endswith("Field") else _TITLE_ATTR
        words = " ".join(next(g for g in m.groups() if g) for m in shown.finditer(attrs))
        if name.endswith("Field"):  # the field's description is what it encloses
            words = " ".join(filter(None, [words, *(next(g for g in m.groups() if g) for m in _TITLE_ATTR.finditer(attrs))]))
        return f"\n\n{words}\n\n" if words else REMOVED

    # Inline code stays as written: `<Provider store={store}>` is what the page talks about.
    return drop_marked_lines(outside_code_spans(
        text, lambda prose: _COMPONENT.sub(component, _strip_jsx_comments(prose)) if "<" in prose or "{/*" in prose
        else prose))


def _after_first_blank(lines: list[str]) -> list[str]:
    """What follows an ESM statement whose brackets never close: the text after its first blank
    line (MDX would refuse the page; a stray `{` must not take the rest of it)."""
    blank = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    return lines[blank:]


def _bracket_balance(line: str) -> int:
    """Opening minus closing brackets of a line of JavaScript, outside its string literals."""
    code = _JS_STRING.sub("", line)
    return sum(code.count(c) for c in "{([") - sum(code.count(c) for c in "})]")


def outside_code_spans(text: str, change: Callable[[str], str]) -> str:
    """`text` with `change` applied to what lies between its inline code spans (`x`, ``x``),
    the spans themselves as written."""
    parts, position = [], 0
    for span in _CODE_SPAN.finditer(text):
        parts += [change(text[position:span.start()]), span.group(0)]
        position = span.end()
    return "".join(parts) + change(text[position:])


def _strip_jsx_comments(text: str) -> str:
    """`{/* ... */}` out, scanning forward once: a regex retried from every unclosed opener would
    rescan the rest of the page each time."""
    parts, position = [], 0
    while (start := text.find("{/*", position)) >= 0:
        end = text.find("*/}", start + 3)
        if end < 0:
            break
        parts.append(text[position:start])
        position = end + 3
    return "".join(parts) + text[position:]


def is_mdx(path: str, prose: str) -> bool:
    """MDX syntax is read in `.mdx` files, and in Markdown files whose text outside code fences
    (`prose`) has an import or export statement (sites such as Docusaurus read every page as
    MDX); elsewhere `<Name>` may be prose (`List<String>`)."""
    return path.lower().endswith(".mdx") or any(_ESM.match(line) for line in prose.split("\n")
                                                if line.startswith(("import", "export")))


def drop_marked_lines(text: str) -> str:
    """A line that held only removed markup goes away whole (a blank line in its place would
    split the paragraph around it); marks inside prose just vanish."""
    if REMOVED not in text:
        return text
    lines = text.split("\n")
    return "\n".join(line.replace(REMOVED, "") for line in lines if REMOVED not in line or line.replace(REMOVED, "").strip())
