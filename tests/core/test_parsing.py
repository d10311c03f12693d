"""What the parsers make of real files: title, metadata, heading paths and text blocks per
format, and which problems stop a file (errors), skip it (warnings) or only warn."""

from __future__ import annotations

import pytest

from dagster_project.core.ingest.parsing import ParseError, parse_document
from tests.conftest import SAMPLE_MANIFEST

SUPPORT = SAMPLE_MANIFEST.parent / "knowledge_base" / "support"

MARKDOWN = """\
---
title: Offline sync guide
category: product
Doc-Type: guide
tags: [sync, offline]
---
# Sync

How sync works in a few words.

## Conflicts

When two devices edit the same note, the later edit wins.

```python
def resolve(a, b):

    return max(a, b, key=lambda edit: edit.time)
```

### Manual merge

Open the history panel to merge by hand.

## Offline mode

- edits are queued
- queued edits upload on reconnect
"""


def all_text(doc) -> str:
    return "\n".join(b.text for b in doc.blocks)


# ------------------------------------------------------------------ Markdown

def test_markdown_front_matter_gives_title_and_metadata():
    doc = parse_document("guides/sync.md", MARKDOWN.encode())
    assert doc.format == "markdown"
    assert doc.title == "Offline sync guide"  # front matter wins over the first heading
    assert doc.metadata["category"] == "product"
    assert doc.metadata["doc_type"] == "guide"  # keys normalized: Doc-Type -> doc_type
    assert doc.metadata["tags"] == ["sync", "offline"]
    assert doc.warnings == []
    # The front matter itself is not indexed text.
    assert "category: product" not in all_text(doc)


def test_markdown_heading_tree_and_paths():
    doc = parse_document("guides/sync.md", MARKDOWN.encode())
    assert doc.headings == [
        {"level": 1, "title": "Sync"},
        {"level": 2, "title": "Conflicts"},
        {"level": 3, "title": "Manual merge"},
        {"level": 2, "title": "Offline mode"},
    ]
    path_of = {b.text.splitlines()[0]: b.heading_path for b in doc.blocks}
    assert path_of["How sync works in a few words."] == ["Sync"]
    assert path_of["When two devices edit the same note, the later edit wins."] == ["Sync", "Conflicts"]
    assert path_of["Open the history panel to merge by hand."] == ["Sync", "Conflicts", "Manual merge"]
    # A level-2 heading after a level-3 one closes the level-3 section.
    assert path_of["- edits are queued"] == ["Sync", "Offline mode"]


def test_markdown_fenced_code_block_is_one_code_block_with_its_blank_line():
    doc = parse_document("guides/sync.md", MARKDOWN.encode())
    code = [b for b in doc.blocks if b.kind == "code"]
    assert len(code) == 1
    assert "def resolve(a, b):\n\n    return max(a, b, key=lambda edit: edit.time)" in code[0].text
    assert code[0].heading_path == ["Sync", "Conflicts"]
    # The code did not also leak into paragraphs.
    assert not any("def resolve" in b.text for b in doc.blocks if b.kind != "code")


def test_markdown_headings_read_their_inline_html_as_text():
    doc = parse_document("page.md", b'# Data <dfn title="also: parsing">conversion</dfn> &amp; <Badge text="x" />\n\nText.\n')
    assert doc.headings[0]["title"] == 'Data conversion (also: parsing) & <Badge text="x" />'


def test_mdx_has_no_indented_code_blocks():
    body = "Intro.\n\n    Indented prose inside a component.\n\n```js\nx = 1\n```\n"
    mdx = parse_document("page.mdx", body.encode())
    assert [(b.kind, b.text) for b in mdx.blocks] == [
        ("paragraph", "Intro."), ("paragraph", "Indented prose inside a component."), ("code", "```js\nx = 1\n```")]
    assert [b.kind for b in parse_document("page.md", body.encode()).blocks] == ["paragraph", "code", "code"]


def test_markdown_without_front_matter_takes_title_from_first_heading():
    doc = parse_document("notes/plain.md", b"Intro line.\n\n# Release notes\n\nText.\n")
    assert doc.title == "Release notes"
    assert doc.metadata == {}


def test_markdown_without_any_title_falls_back_to_file_name():
    doc = parse_document("notes/quarterly-plan.md", b"Just a paragraph, no heading.\n")
    assert doc.title == "quarterly-plan"


def test_broken_front_matter_is_an_error_so_what_it_protects_is_never_published():
    # The metadata may say embed_mode: skip or pricing_sensitive: true; reading the body
    # without it would index what it protects. The file keeps its last good version instead.
    data = b"---\ntitle: [unclosed\nembed_mode: skip\n---\n# Heading\n\nSecret body.\n"
    with pytest.raises(ParseError) as info:
        parse_document("broken.md", data)
    assert info.value.severity == "error"
    assert "front matter" in info.value.reason and "YAML" in info.value.reason and "line" in info.value.reason
    # a file's first version may be the broken one: no promise of a "last good version" (QA)
    assert "a version indexed earlier, if any, stays indexed" in info.value.reason


def test_unclosed_front_matter_is_read_as_text_with_a_warning():
    doc = parse_document("open.md", b"---\ntitle: Never closed\n\n# Heading\n\nBody.\n")
    assert any("front matter" in w and "closing" in w for w in doc.warnings)
    assert "Body." in all_text(doc)


def test_front_matter_that_is_not_a_mapping_is_an_error():
    with pytest.raises(ParseError) as info:
        parse_document("list.md", b"---\n- a\n- b\n---\n# Heading\n\nBody.\n")
    assert info.value.severity == "error" and "mapping" in info.value.reason


# ------------------------------------------------------------------ reStructuredText

def test_rst_pep_style_header_block_gives_metadata_and_title():
    path = SUPPORT / "account-recovery.rst"
    doc = parse_document("account-recovery.rst", path.read_bytes())
    assert doc.format == "rst"
    assert doc.title == "Recovering a locked account"
    assert doc.metadata["status"] == "published"
    assert doc.metadata["doc_type"] == "runbook"  # from "Doc-Type:"
    assert doc.metadata["category"] == "support"
    text = all_text(doc)
    assert "Doc-Type" not in text and "Status: published" not in text
    assert "After 10 failed password attempts within 15 minutes" in text


def test_rst_header_block_type_field_also_fills_doc_type():
    doc = parse_document("pep.rst", b"Title: Some proposal\nStatus: Draft\nType: Informational\n\nBody text.\n")
    assert doc.title == "Some proposal"
    assert doc.metadata["doc_type"] == "Informational"
    assert doc.metadata["status"] == "Draft"
    assert [b.text for b in doc.blocks] == ["Body text."]


def test_rst_section_levels_give_heading_paths():
    rst = """\
Handbook
========

Welcome.

Accounts
--------

About accounts.

Locked accounts
~~~~~~~~~~~~~~~

How to unlock.

Billing
-------

About billing::

    invoice --month 2024-05
    invoice --send
"""
    doc = parse_document("handbook.rst", rst.encode())
    assert doc.title == "Handbook"
    assert doc.headings == [
        {"level": 1, "title": "Handbook"},
        {"level": 2, "title": "Accounts"},
        {"level": 3, "title": "Locked accounts"},
        {"level": 2, "title": "Billing"},
    ]
    by_text = {b.text: (b.kind, b.heading_path) for b in doc.blocks}
    assert by_text["Welcome."] == ("paragraph", ["Handbook"])
    assert by_text["About accounts."] == ("paragraph", ["Handbook", "Accounts"])
    assert by_text["How to unlock."] == ("paragraph", ["Handbook", "Accounts", "Locked accounts"])
    assert by_text["About billing:"] == ("paragraph", ["Handbook", "Billing"])
    assert by_text["invoice --month 2024-05\ninvoice --send"] == ("code", ["Handbook", "Billing"])


def test_rst_unknown_sphinx_roles_leave_no_docutils_messages_in_the_text():
    rst = b"Guide\n=====\n\nSee :ref:`the-intro` and :py:func:`open`.\n\n.. versionadded:: 2.0\n\n   New in two.\n"
    doc = parse_document("guide.rst", rst)
    text = all_text(doc)
    assert "the intro" in text and "Added in version 2.0." in text
    for noise in ("No role entry for", "Unknown interpreted text role", "Unknown directive type", "System Message"):
        assert noise not in text


@pytest.mark.parametrize("first", ["Note: the export API changed in May.",
                                   "http://status.example.com lists every incident."])
def test_rst_first_paragraph_with_a_colon_is_kept_as_text(first):
    doc = parse_document("notes.rst", f"{first}\n\nUse version 2 of the API.\n".encode())
    assert first in all_text(doc)


# ------------------------------------------------------------------ HTML

def test_html_script_and_style_text_is_never_indexed():
    doc = parse_document("status-page-faq.html", (SUPPORT / "status-page-faq.html").read_bytes())
    assert doc.blocks
    for block in doc.blocks:
        assert "ZZSCRIPTMARKER" not in block.text
        assert "ZZSTYLEMARKER" not in block.text
        assert "lumenHelpAnalytics" not in block.text
    assert "ZZ" not in doc.title


def test_html_title_headings_and_paths():
    doc = parse_document("status-page-faq.html", (SUPPORT / "status-page-faq.html").read_bytes())
    assert doc.format == "html"
    assert doc.title == "Status page FAQ"
    assert doc.headings[:3] == [
        {"level": 1, "title": "Status page FAQ"},
        {"level": 2, "title": "Reading the status page"},
        {"level": 3, "title": "Components"},
    ]
    assert {"level": 2, "title": "Planned maintenance"} in doc.headings
    paths = {b.heading_path[-1]: b.heading_path for b in doc.blocks}
    assert paths["Severity levels"] == ["Status page FAQ", "Incidents", "Severity levels"]
    assert paths["Maintenance windows"] == ["Status page FAQ", "Planned maintenance", "Maintenance windows"]
    components = [b for b in doc.blocks if b.kind == "list"]
    assert components and components[0].heading_path == ["Status page FAQ", "Reading the status page", "Components"]
    assert "- Sync – delivery of changes between devices and the server." in components[0].text


def test_html_meta_tags_become_metadata_and_pre_keeps_its_lines():
    html = b"""<html><head><title>Deploy notes</title><meta name="Doc-Type" content="runbook">
    <meta name="status" content="draft"></head><body><h2>Steps</h2>
    <pre>make build
make deploy</pre><p>Then   check\n the dashboard.</p></body></html>"""
    doc = parse_document("deploy.htm", html)
    assert doc.title == "Deploy notes"
    assert doc.metadata == {"doc_type": "runbook", "status": "draft"}
    code, paragraph = doc.blocks
    assert (code.kind, code.text, code.heading_path) == ("code", "make build\nmake deploy", ["Steps"])
    assert (paragraph.kind, paragraph.heading_path) == ("paragraph", ["Steps"])
    assert paragraph.text.split() == ["Then", "check", "the", "dashboard."]


def test_html_text_outside_paragraph_tags_is_kept():
    html = (b"<html><body><h1>Refunds</h1><div class='callout'>Refunds are possible within 30 days.</div>"
            b"<p>Contact billing for anything else.</p><section>Annual plans are refunded pro rata.</section>"
            b"</body></html>")
    text = all_text(parse_document("refunds.html", html))
    assert "Contact billing" in text
    assert "within 30 days" in text
    assert "pro rata" in text


def test_deeply_nested_html_parses_like_a_flat_page():
    # QA's old page: 1,200 unclosed <font> tags once failed with RecursionError.
    old_page = ("<html><head><title>Old page</title></head><body>" + "<font size=2>ocelot word " * 1200
                + "</body></html>").encode()
    doc = parse_document("old.html", old_page)
    assert doc.title == "Old page" and doc.warnings == []
    assert [b.text for b in doc.blocks] == ["ocelot word"] * 1200
    nested = ("<html><body><h1>Deep</h1>" + "<div>" * 100_000 + "<p>bottom text</p>" + "</div>" * 100_000
              + "<p>after</p></body></html>").encode()
    doc = parse_document("deep.html", nested)
    assert [(b.kind, b.text, b.heading_path) for b in doc.blocks] == [
        ("paragraph", "bottom text", ["Deep"]), ("paragraph", "after", ["Deep"])]


# Published documentation pages, reduced to their themes' landmarks (markup as the generators
# write it). Each site's menu names the other pages: "Rotating the quokka keys" on every page.
SITE_MENU = "<ul><li><a href='/install/'>Installing</a></li><li><a href='/keys/'>Rotating the quokka keys</a></li></ul>"
THEMED_PAGES = {
    "sphinx": f"""<html><head><title>Installing &#8212; Ocelot 2.1 documentation</title></head><body>
<div class="related" role="navigation" aria-label="Related">Ocelot 2.1 documentation &raquo; Guides</div>
<div class="document"><div class="documentwrapper"><div class="bodywrapper"><div class="body" role="main">
<section id="installing"><h1>Installing<a class="headerlink" href="#installing" title="Link to this heading">¶</a></h1>
<p>Run pip install ocelot on a machine with Python 3.11.</p>
<div class="admonition note"><p class="admonition-title">Note</p><p>Wheels exist for Linux and macOS.</p></div>
</section></div></div></div>
<div class="sphinxsidebar" role="navigation" aria-label="Main"><h3>Navigation</h3>{SITE_MENU}
<div id="searchbox" role="search"><h3 id="searchlabel">Quick search</h3><form><input type="submit" value="Go"></form></div></div></div>
<div class="footer">&#169;2024, Ocelot team. Created using Sphinx 8.1.</div></body></html>""",
    "mkdocs-material": f"""<html><head><title>Installing - Ocelot</title></head><body>
<header class="md-header"><nav class="md-header__inner" aria-label="Header">Ocelot <form class="md-search__form">Search</form></nav></header>
<div class="md-container"><main class="md-main"><div class="md-main__inner md-grid">
<div class="md-sidebar md-sidebar--primary"><nav class="md-nav md-nav--primary" aria-label="Navigation">{SITE_MENU}</nav></div>
<div class="md-sidebar md-sidebar--secondary"><nav class="md-nav md-nav--secondary" aria-label="Table of contents">Table of contents</nav></div>
<div class="md-content"><article class="md-content__inner md-typeset">
<h1 id="installing">Installing<a class="headerlink" href="#installing" title="Permanent link">&para;</a></h1>
<p>Run pip install ocelot on a machine with Python 3.11.</p>
<div class="admonition note"><p class="admonition-title">Note</p><p>Wheels exist for Linux and macOS.</p></div>
</article></div></div></main>
<footer class="md-footer"><nav class="md-footer__inner" aria-label="Footer">Previous Home Next Rotating the quokka keys</nav>
<div class="md-copyright">Made with Material for MkDocs</div></footer></div></body></html>""",
    "docusaurus": f"""<html><head><title>Installing | Ocelot</title></head><body><div id="__docusaurus">
<nav aria-label="Main" class="navbar">Ocelot Docs Blog GitHub</nav>
<div class="main-wrapper"><div class="docsWrapper"><aside class="theme-doc-sidebar-container">{SITE_MENU}</aside>
<main class="docMainContainer"><div class="container"><nav class="theme-doc-breadcrumbs" aria-label="Breadcrumbs">Home Guides</nav>
<article><div class="theme-doc-markdown markdown"><header><h1>Installing</h1></header>
<p>Run pip install ocelot on a machine with Python 3.11.</p>
<div class="theme-admonition"><p>Wheels exist for Linux and macOS.</p></div></div>
<footer class="theme-doc-footer">Edit this page</footer></article>
<nav class="pagination-nav" aria-label="Docs pages">Previous Home Next Rotating the quokka keys</nav></div></main></div></div>
<footer class="footer">Copyright 2024 Ocelot team. Built with Docusaurus.</footer></div></body></html>""",
    "starlight": f"""<html><head><title>Installing | Ocelot</title></head><body>
<header class="header"><a href="/">Ocelot</a><site-search>Search</site-search></header>
<nav class="sidebar" aria-label="Main">{SITE_MENU}</nav>
<main><div class="content-panel"><h1 id="_top">Installing</h1></div>
<div class="content-panel"><div class="sl-markdown-content"><p>Run pip install ocelot on a machine with Python 3.11.</p>
<button class="copy" title="Copy to clipboard">Search Home</button>
<aside aria-label="Note" class="starlight-aside starlight-aside--note"><p>Wheels exist for Linux and macOS.</p></aside>
</div></div></main></body></html>""",
    "hand-written, no main": f"""<html><head><title>Installing</title></head><body>
<svg style="display: none"><symbol id="svg-search"><title>Search icon</title></symbol></svg>
<header class="site"><a href="/">Ocelot</a> {SITE_MENU}</header>
<aside class="sidebar">{SITE_MENU}</aside>
<h1>Installing</h1><p>Run pip install ocelot on a machine with Python 3.11.</p>
<div class="note"><p>Wheels exist for Linux and macOS.</p></div>
<footer>Rotating the quokka keys is next. &copy; Ocelot team</footer></body></html>""",
}


@pytest.mark.parametrize("theme", sorted(THEMED_PAGES))
def test_a_published_page_is_indexed_without_its_sites_menus_banner_and_footer(theme):
    """The site's chrome around a page (menus naming every other page, sidebars, breadcrumbs,
    search box, banner, footer, previous / next links, heading permalinks) is not the page's text:
    only the page itself is indexed, its callouts included."""
    doc = parse_document("install.html", THEMED_PAGES[theme].encode())
    text = all_text(doc)
    assert "pip install ocelot" in text and "Wheels exist for Linux and macOS." in text
    for chrome in ("quokka", "Search", "search", "Navigation", "Copyright", "©", "Previous", "Breadcrumbs", "Home"):
        assert chrome not in text, (chrome, text)
    assert doc.headings == [{"level": 1, "title": "Installing"}]
    assert {tuple(b.heading_path) for b in doc.blocks} == {("Installing",)}
    assert doc.title.startswith("Installing")  # the <title>, site name included (docs/architecture.md)


def test_a_page_header_holding_its_title_is_kept_outside_main_content():
    html = (b"<html><body><header><h1>Refund policy</h1><p>Updated in May.</p></header>"
            b"<p>Refunds are possible within 30 days.</p></body></html>")
    doc = parse_document("refunds.html", html)
    assert doc.headings == [{"level": 1, "title": "Refund policy"}]
    assert "Updated in May." in all_text(doc) and "within 30 days" in all_text(doc)


# ------------------------------------------------------------------ plain text

def test_plain_text_paragraphs_and_title_from_first_line():
    data = b"Quarterly maintenance\nplanned for June.\r\n\r\nSecond paragraph.\n\n\n\nThird one.\n"
    doc = parse_document("notes/maintenance.txt", data)
    assert doc.format == "text"
    assert doc.title == "Quarterly maintenance"
    assert [b.text for b in doc.blocks] == [
        "Quarterly maintenance\nplanned for June.", "Second paragraph.", "Third one."]
    assert all(b.heading_path == [] and b.kind == "paragraph" for b in doc.blocks)


# ------------------------------------------------------------------ problems

@pytest.mark.parametrize("path", ["data.csv", "Makefile", "image.PNG"])
def test_unknown_extension_is_a_warning_that_names_it(path):
    with pytest.raises(ParseError) as info:
        parse_document(path, b"a,b\n1,2\n")
    assert info.value.severity == "warning"
    assert "extension" in info.value.reason


def test_nul_bytes_are_an_error():
    with pytest.raises(ParseError) as info:
        parse_document("binary.txt", b"PK\x03\x04\x00\x00\x00 zipped data")
    assert info.value.severity == "error"
    assert "NUL" in info.value.reason


@pytest.mark.parametrize("data", [b"", b"   \n\n\t\n", b"\xef\xbb\xbf"])
def test_empty_file_is_a_document_without_text_and_a_warning(data):
    # An emptied file is content ("nothing"), not a broken file: it must replace what it held.
    doc = parse_document("empty.md", data)
    assert doc.blocks == [] and doc.title == "empty"
    assert any("empty" in w for w in doc.warnings)


def test_invalid_utf8_is_parsed_with_a_warning():
    data = "# Café menu\n\nCrème brûlée ".encode() + b"\xff\xfe" + " and more text.\n".encode()
    doc = parse_document("menu.md", data)
    assert doc.title == "Café menu"
    assert "Crème brûlée" in all_text(doc) and "and more text." in all_text(doc)
    assert "\ufffd" in all_text(doc)
    assert len(doc.warnings) == 1 and "UTF-8" in doc.warnings[0]


def test_the_bad_byte_offset_counts_the_bom():
    doc = parse_document("bom-bad.md", b"\xef\xbb\xbf\xffabc\n")
    assert "first bad byte at offset 3" in doc.warnings[0]  # the byte after the BOM, as a hex editor shows it


def test_utf8_bom_is_stripped():
    doc = parse_document("bom.md", b"\xef\xbb\xbf---\ntitle: With BOM\n---\n# Heading\n\nBody.\n")
    assert doc.title == "With BOM"  # the BOM did not hide the front matter
    assert doc.warnings == []
    assert all("\ufeff" not in b.text for b in doc.blocks)
    text = parse_document("bom.txt", b"\xef\xbb\xbfFirst line\n\nSecond.\n")
    assert text.title == "First line"
    assert "\ufeff" not in text.blocks[0].text


# ------------------------------------------------------------------ hostile content (issue 12)

def test_rst_with_a_line_over_ten_thousand_characters_keeps_its_text():
    long_line = " ".join(f"kestrel{i}" for i in range(2000))  # ~19,000 characters
    doc = parse_document("long.rst", f"Title\n=====\n\n{long_line}\n\nAfter the long line.\n".encode())
    assert [b.text for b in doc.blocks] == [long_line, "After the long line."]
    assert doc.warnings == []


@pytest.mark.parametrize("path, data", [
    ("comment.rst", b".. only a comment, no text\n"),
    ("headings.md", b"# Only a heading\n"),
    ("empty-body.html", b"<html><head><title>Nothing</title></head><body><script>x()</script></body></html>"),
])
def test_a_file_that_yields_no_text_is_warned_about(path, data):
    doc = parse_document(path, data)
    assert doc.blocks == []
    assert any("yields no text" in w for w in doc.warnings), doc.warnings


def test_front_matter_values_are_made_json_safe_with_a_warning_for_what_changed():
    import json

    doc = parse_document("odd.md", b"---\ntitle: \"Stork\\0 notes\"\npriority: .nan\nweight: -.inf\n2024: year\n"
                                   b"reviewed: 2024-05-01\nbig: 123456789012345678901234567890\n"
                                   b"nested: {scores: [1, .nan]}\n---\n# Stork\n\nStork text.\n")
    assert doc.title == "Stork notes"
    assert doc.metadata == {"title": "Stork notes", "priority": "nan", "weight": "-inf", "2024": "year",
                            "reviewed": "2024-05-01", "big": "123456789012345678901234567890",
                            "nested": {"scores": [1, "nan"]}}
    json.dumps(doc.metadata, allow_nan=False)  # what jsonb accepts
    warned = " ".join(doc.warnings)
    for what in ("title: NUL", "priority: nan", "weight: -inf", "big: integer", "nested.scores: nan"):
        assert what in warned, (what, doc.warnings)


def test_oversized_front_matter_or_metadata_is_an_error():
    from dagster_project.core.ingest.parsing import MAX_FRONT_MATTER_BYTES, MAX_METADATA_BYTES

    big = "x" * MAX_FRONT_MATTER_BYTES
    with pytest.raises(ParseError, match="front matter is over"):
        parse_document("big.md", f"---\nnotes: {big}\n---\n# T\n\ntext\n".encode())
    html = f'<html><head><meta name="notes" content="{"y" * MAX_METADATA_BYTES}"></head><body><p>t</p></body></html>'
    with pytest.raises(ParseError, match="metadata is .* over the"):
        parse_document("big.html", html.encode())


ALIAS_BOMB = (b"---\na: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
              b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
              b"e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
              b"g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
              b"i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n---\n# Bomb\n\ntext\n")
PARSE_UNDER_1GB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from dagster_project.core.ingest.parsing import ParseError, parse_document
try:
    parse_document("bomb.md", sys.stdin.buffer.read())
except ParseError as exc:
    print(exc.reason)
"""


def test_a_yaml_alias_bomb_in_front_matter_is_refused_without_expanding_it():
    """346 bytes that expand to 9^9 strings (5 GB): parsed in a process limited to 1 GB of
    address space, so the test fails rather than exhausting the machine when aliases expand."""
    import subprocess
    import sys

    assert len(ALIAS_BOMB) < 400
    result = subprocess.run([sys.executable, "-c", PARSE_UNDER_1GB], input=ALIAS_BOMB, capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert "alias" in result.stdout.decode() and "line 3" in result.stdout.decode()  # its first alias


# ------------------------------------------------------------------ the PEP corpus

PEP_SAMPLE = 150
SYSTEM_MESSAGE_TEXT = ("No role entry for", "Unknown interpreted text role", "Unknown directive type",
                       "System Message", "(ERROR/3)", "(WARNING/2)", "(SEVERE/4)")


def test_every_pep_parses_with_title_status_and_no_docutils_noise(peps_dir):
    files = sorted(p for p in peps_dir.iterdir() if p.suffix in (".rst", ".txt"))
    assert len(files) > PEP_SAMPLE
    # Parsing all ~700 takes ~30 s; an evenly spread sample keeps the suite fast.
    sample = [files[i * len(files) // PEP_SAMPLE] for i in range(PEP_SAMPLE)]
    problems = []
    for path in sample:
        doc = parse_document(path.name, path.read_bytes())
        if not doc.title or doc.title == path.stem:
            problems.append(f"{path.name}: no title")
        if not doc.metadata.get("status"):
            problems.append(f"{path.name}: no status")
        if not doc.blocks:
            problems.append(f"{path.name}: no text")
        for block in doc.blocks:
            noise = [n for n in SYSTEM_MESSAGE_TEXT if n in block.text]
            if noise:
                problems.append(f"{path.name}: {noise} in {block.text[:80]!r}")
    assert problems == []


def test_parallel_parsing_gives_the_same_results_and_severities(tmp_path):
    """Enough files for the process pool: results, including warning-level errors, come back intact."""
    from dagster_project.core.ingest.corpus import SourceFile
    from dagster_project.core.ingest.parsing import ParseError
    from dagster_project.core.ingest.pipeline import PARALLEL_PARSE_MIN_FILES, parse_files

    files = [SourceFile(f"doc{i}.md", tmp_path / f"doc{i}.md", data=f"# Title {i}\n\nBody {i}.\n".encode())
             for i in range(PARALLEL_PARSE_MIN_FILES)]
    files += [SourceFile("empty.md", tmp_path / "empty.md", data=b""),
              SourceFile("data.csv", tmp_path / "data.csv", data=b"a,b"),
              SourceFile("bin.txt", tmp_path / "bin.txt", data=b"\x00\x01")]
    parallel = parse_files(files, workers=2)
    serial = parse_files(files, workers=1)
    assert [getattr(p, "title", None) for p in parallel] == [getattr(p, "title", None) for p in serial]
    errors = {f.path: (p.severity, p.reason) for f, p in zip(files, parallel) if isinstance(p, ParseError)}
    assert "empty.md" not in errors and errors["data.csv"][0] == "warning"
    assert errors["bin.txt"][0] == "error"


# ---------------------------------------------------------------- AsciiDoc and notebooks

ASCIIDOC = """// a comment
= Configuring the Server
Jane Doe <jane@example.com>
:description: How to configure the walrus server.
:product: Walrus

The {product} server reads *one* file at start-up.
See xref:install.adoc[the install guide] and <<ports,the ports section>>.

[[ports]]
== Ports

NOTE: The default port is 8080.

[TIP]
====
Use a reverse proxy in front of {product}.
====

.Example configuration
[source,yaml]
----
server:
  port: 8080 # *not* bold
----

* first item
* second item
+
continued

=== Limits

|===
|Setting |Default

|max_connections
|100
|===

////
a comment block
////

include::partials/footer.adoc[]
"""


def test_asciidoc_sections_blocks_and_inline_markup():
    doc = parse_document("config.adoc", ASCIIDOC.encode())
    assert (doc.format, doc.title) == ("asciidoc", "Configuring the Server")
    assert doc.metadata["description"] == "How to configure the walrus server."
    assert [(h["level"], h["title"]) for h in doc.headings] == [(1, "Configuring the Server"), (2, "Ports"), (3, "Limits")]
    assert [(b.kind, b.text, b.heading_path[-1]) for b in doc.blocks] == [
        ("paragraph", "The Walrus server reads one file at start-up.\nSee the install guide and the ports section.",
         "Configuring the Server"),
        ("paragraph", "The default port is 8080.", "Ports"),
        ("paragraph", "Use a reverse proxy in front of Walrus.", "Ports"),
        ("paragraph", "Example configuration", "Ports"),
        ("code", "server:\n  port: 8080 # *not* bold", "Ports"),
        ("list", "* first item\n* second item\ncontinued", "Ports"),
        ("table", "| Setting | Default |\n|---|---|\n| max_connections | 100 |", "Limits"),
    ]
    assert any("include::partials/footer.adoc[]" in w and "not resolved" in w for w in doc.warnings)


def test_notebook_markdown_cells_and_code_cells_without_outputs():
    import json

    notebook = {"nbformat": 4, "metadata": {"kernelspec": {"language": "python", "name": "python3"}},
                "cells": [{"cell_type": "markdown", "source": ["---\n", "# Loading data\n", "\n", "Read the CSV with pandas."]},
                          {"cell_type": "code", "source": "df = pd.read_csv('x.csv')\nprint('```')",
                           "outputs": [{"output_type": "stream", "name": "stdout", "text": "run log noise"}]},
                          {"cell_type": "markdown", "source": "## Cleaning\n\nDrop the empty rows."},
                          {"cell_type": "raw", "source": "raw cell"}]}
    doc = parse_document("load.ipynb", json.dumps(notebook).encode())
    assert (doc.format, doc.title) == ("notebook", "Loading data")
    assert [(b.kind, b.text, b.heading_path) for b in doc.blocks] == [
        ("paragraph", "Read the CSV with pandas.", ["Loading data"]),  # a first `---` is a rule, not front matter
        ("code", "````python\ndf = pd.read_csv('x.csv')\nprint('```')\n````", ["Loading data"]),
        ("paragraph", "Drop the empty rows.", ["Loading data", "Cleaning"]),
    ]
    for data, reason in ((b"{not json", "invalid JSON at line 1"), (b"[1, 2]", "not a Jupyter notebook"),
                         (b'{"cells": 3}', "no list of `cells`")):
        with pytest.raises(ParseError, match=reason):
            parse_document("bad.ipynb", data)


@pytest.mark.parametrize("path, text", [
    ("xrefs.adoc", "= T\n\n" + "xref:a[" * 100_000),  # each unclosed link scanned the rest of the line: minutes
    ("links.adoc", "= T\n\n" + "<<a," * 100_000),
    ("comments.mdx", "{/*" * 100_000),  # each unclosed JSX comment scanned 4,000 characters on
])
def test_unclosed_inline_markup_costs_linear_time(path, text):
    """Each case took over a minute before its regex was bounded; a second or two now. The
    bound is loose (20 s) so that a slow machine does not fail it, but a quadratic scan does."""
    import time

    from dagster_project.core.ingest.templating import MarkdownTemplating, render_markdown

    started = time.perf_counter()
    if path.endswith(".mdx"):
        text, _ = render_markdown(path, text, MarkdownTemplating(), lambda p: None)
    parse_document(path, text.encode())
    assert time.perf_counter() - started < 20


def test_a_notebook_cell_is_rendered_on_its_own_dialects_unwrapped():
    import json

    cells = [{"cell_type": "markdown", "source": "# Unclosed fence\n\n```python\nx = 1"},
             {"cell_type": "markdown", "source": "## Results\n\nThe model converged on the gazelle dataset."},
             {"cell_type": "markdown", "source": "```{note}\nA MyST note about the kestrel.\n```\n\n<!-- hidden -->\nVisible."}]
    doc = parse_document("n.ipynb", json.dumps({"cells": cells}).encode())
    assert [h["title"] for h in doc.headings] == ["Unclosed fence", "Results"]
    assert [(b.kind, b.text) for b in doc.blocks] == [
        ("code", "```python\nx = 1\n```"), ("paragraph", "The model converged on the gazelle dataset."),
        ("paragraph", "A MyST note about the kestrel."), ("paragraph", "Visible.")]
    with pytest.raises(ParseError, match="nested too deeply"):
        parse_document("deep.ipynb", ('{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}").encode())


def test_unclosed_asciidoc_blocks_are_said_and_lose_no_text():
    doc = parse_document("u.adoc", b"= U\n\n|===\n| A | B\n\n== After the table\n\nProse about the heron.\n")
    assert [h["title"] for h in doc.headings] == ["U", "After the table"]
    assert "Prose about the heron." in [b.text for b in doc.blocks]
    assert any("unterminated table" in w and "close it with `|===`" in w for w in doc.warnings)
    doc = parse_document("c.adoc", b"= C\n\nBefore.\n\n////\nhidden\n")
    assert [b.text for b in doc.blocks] == ["Before."] and any("unterminated comment block" in w for w in doc.warnings)


def test_asciidoc_attribute_references_cannot_multiply_a_page():
    page = "= B\n:a: " + "zebra " * 1700 + "\n:b: kestrel\n\n" + "{a} " * 2000 + "{b}\n"  # 18 KB: 22 MB before
    doc = parse_document("b.adoc", page.encode())
    assert sum(len(b.text) for b in doc.blocks) < 20_000 and doc.blocks[0].text.endswith("kestrel")
    assert any("attribute references left unexpanded" in w for w in doc.warnings)


def test_html_entities_are_characters_and_a_page_of_them_has_no_chunk():
    doc = parse_document("p.md", b"&nbsp;\n\n# API\n\nUse &lt;div&gt; &amp; `&amp;` here &#8212; ok.\n")
    assert [b.text for b in doc.blocks] == ["Use <div> & `&amp;` here \u2014 ok."]


def test_an_image_in_an_html_block_reads_as_its_alt_text():
    """Inline HTML kept an <img>'s alt; an HTML block (a <div> or <Frame> around it) lost it (audit #11)."""
    doc = parse_document("p.md", b'# Support\n\n<div class="frame">\n  <img src="/b.png" alt="Support button in the '
                                 b'top right of the dashboard." />\n</div>\n\n<p align="center"><img src="x.svg"></p>\n')
    assert [b.text for b in doc.blocks] == ["Support button in the top right of the dashboard."]


def test_a_home_page_made_of_front_matter_is_carded_by_its_hero_and_features():
    """A VitePress `layout: home` page has no body: its hero and features are what it shows (audit #9)."""
    from dagster_project.core.ingest.corpus import DEFAULT_DOCUMENT_FIELDS
    from dagster_project.core.ingest.pipeline import document_card

    page = (b"---\nlayout: home\nhero:\n  name: VitePress\n  text: Vite & Vue Powered Static Site Generator\n"
            b"  tagline: Markdown to beautiful docs in minutes\n  actions:\n    - text: Get started\n"
            b"features:\n  - title: Focus on your content\n    details: Effortlessly create documentation sites\n"
            b"  - icon: x\n    title: Enjoy the Vite DX\n---\n")
    card = document_card(parse_document("index.md", page), DEFAULT_DOCUMENT_FIELDS).splitlines()
    assert card == ["VitePress", "Vite & Vue Powered Static Site Generator", "Markdown to beautiful docs in minutes",
                    "Focus on your content", "Enjoy the Vite DX", "Effortlessly create documentation sites"]
