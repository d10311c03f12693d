"""The reST block parser (core/ingest/rst.py): the same sections, heading paths and blocks as
docutils on the real PEPs, and the tricky constructs one by one."""

from __future__ import annotations

import pytest

from bench.rst_parity import docutils_document, read_roles
from dagster_project.core.ingest.parsing import parse_document

PARITY_SAMPLE = 60


def blocks(rst: str) -> list[tuple[str, list[str], str]]:
    return [(b.kind, b.heading_path, b.text) for b in parse_document("doc.rst", rst.encode()).blocks]


def texts(rst: str) -> list[str]:
    return [text for _, _, text in blocks(rst)]


def test_real_peps_give_docutils_headings_and_blocks(peps_dir):
    """Heading trees identical and nearly every block identical on an evenly spread sample (the
    rest differ where docutils itself mangles the text: Sphinx roles left as source, which
    read_roles undoes, a list split where its numbering breaks)."""
    files = sorted(peps_dir.glob("*.rst"))
    sample = [files[i * len(files) // PARITY_SAMPLE] for i in range(PARITY_SAMPLE)]
    found = total = 0
    for path in sample:
        data = path.read_bytes()
        new = parse_document(path.name, data)
        old = docutils_document(data.decode())
        assert new.headings == [{**h, "title": read_roles(h["title"])} for h in old.headings], path.name
        assert new.title == read_roles(old.title)
        new_blocks = {(tuple(b.heading_path), b.kind, b.text) for b in new.blocks}
        old_blocks = [(tuple(read_roles(h) for h in b.heading_path), b.kind, read_roles(b.text)) for b in old.blocks]
        found += sum(b in new_blocks for b in old_blocks)
        total += len(old_blocks)
    assert found / total >= 0.99, f"{found}/{total} docutils blocks found"


def test_section_levels_follow_the_order_adornment_styles_first_appear():
    rst = """\
=======
 Guide
=======

Intro.

Part A
======

In A.

A.1
---

Deep.

Part B
======

In B.
"""
    doc = parse_document("guide.rst", rst.encode())
    assert doc.headings == [{"level": 1, "title": "Guide"}, {"level": 2, "title": "Part A"},
                            {"level": 3, "title": "A.1"}, {"level": 2, "title": "Part B"}]
    assert blocks(rst) == [("paragraph", ["Guide"], "Intro."), ("paragraph", ["Guide", "Part A"], "In A."),
                           ("paragraph", ["Guide", "Part A", "A.1"], "Deep."),
                           ("paragraph", ["Guide", "Part B"], "In B.")]


def test_a_title_that_skips_a_level_stays_in_its_section_as_docutils_does():
    rst = "Top\n===\n\nSub\n---\n\nSubsub\n~~~~~~\n\nNew top\n=======\n\nSkip\n~~~~~~\n\nText.\n"
    doc = parse_document("doc.rst", rst.encode())
    assert [h["title"] for h in doc.headings] == ["Top", "Sub", "Subsub", "New top"]
    assert blocks(rst)[-1] == ("paragraph", ["New top"], "Text.")


def test_numbered_title_short_underline_and_transition():
    rst = "1. Naming\n---------\n\nAbout names.\n\nHi\n--\n\nShort.\n\n----------\n\nAfter the rule.\n"
    doc = parse_document("doc.rst", rst.encode())
    assert [h["title"] for h in doc.headings] == ["1. Naming", "Hi"]
    assert texts(rst) == ["About names.", "Short.", "After the rule."]


def test_literal_blocks_after_double_colons():
    rst = """\
Run this::

    make test
      --verbose

Or this: ::

    make demo

::

    only code

For example::

$ git check-attr -a -- \\*.py
"""
    assert blocks(rst) == [
        ("paragraph", [], "Run this:"), ("code", [], "make test\n  --verbose"),
        ("paragraph", [], "Or this:"), ("code", [], "make demo"),
        ("code", [], "only code"),
        ("paragraph", [], "For example:"), ("code", [], "$ git check-attr -a -- \\*.py"),
    ]


def test_doctest_and_line_blocks_and_quotes_with_attribution():
    rst = ">>> 1 + 1\n2\n\n| first line\n| second line\n\n    Quoted wisdom.\n\n    -- Someone\n"
    assert blocks(rst) == [("code", [], ">>> 1 + 1\n2"), ("paragraph", [], "first line\n\nsecond line"),
                           ("quote", [], "Quoted wisdom.\n\nSomeone")]


def test_lists_nested_with_code_and_a_paragraph_that_looks_like_one():
    rst = """\
* first item
  continues

  - nested
* second item::

      code in item

A. Smith wrote this paragraph,
not a list.

1. one
2. two

1. restart
"""
    assert texts(rst) == [
        "first item\ncontinues\n\nnested\n\nsecond item:\n\ncode in item",
        "A. Smith wrote this paragraph,\nnot a list.",
        "one\n\ntwo",
        "restart",  # docutils starts a new list where the numbering breaks
    ]


def test_definition_and_field_lists():
    rst = "term : classifier\n    The definition.\n\n:Author: Somebody\n:Version: 2\n   continued\n"
    assert blocks(rst) == [("list", [], "term\n\nclassifier\n\nThe definition."),
                           ("list", [], "Author\n\nSomebody\n\nVersion\n\n2\ncontinued")]


def test_grid_simple_list_and_csv_tables():
    rst = """\
+------+------+
| h1   | h2   |
+======+======+
| a    |      |
+------+------+

=====  =====
x      y
=====  =====
1      2
=====  =====

.. list-table:: Caption
   :header-rows: 1

   * - A
     - B

.. csv-table::
   :header: "c1", "c2"

   "v1", "v2"
"""
    assert blocks(rst) == [("table", [], "h1\n\nh2\n\na"), ("table", [], "x\n\ny\n\n1\n\n2"),
                           ("table", [], "Caption\n\nA\n\nB"), ("table", [], "c1\n\nc2\n\nv1\n\nv2")]


def test_directives_code_admonitions_and_unknown_ones():
    rst = """\
.. code-block:: python
   :class: good

   x = 1

.. note:: First line is content
   and so is this.

.. versionadded:: 3.12

   New in 3.12.

.. superseded:: 292

.. image:: diagram.png
   :alt: A process diagram

.. contents:: Table of Contents

.. raw:: html

   <b>not text</b>

.. include:: other.rst
"""
    assert blocks(rst) == [("code", [], "x = 1"), ("paragraph", [], "First line is content\nand so is this."),
                           ("paragraph", [], "Added in version 3.12."), ("paragraph", [], "New in 3.12."),
                           ("paragraph", [], "Superseded by PEP 292."), ("other", [], "A process diagram")]


def test_sphinx_directive_arguments_are_text_where_sphinx_shows_them():
    rst = """\
:orphan:
:tocdepth: 2
:description: How Flask reads its settings.

Configuration
=============

.. py:data:: MAX_CONTENT_LENGTH

    The maximum number of bytes read from the request body.

    .. versionchanged:: 2.3 Defaults to none.

    .. deprecated:: 3.2
        Use the new limit.

.. admonition:: Information for the Pros

    Streams are read lazily.

.. container:: fancy-box

    Boxed text.

.. only:: html

    Web only.

.. function:: url_for(endpoint, **values)

    Builds a URL.

.. testcode:: setup

    print(url_for("index"))

.. graphviz::

    digraph { a -> b }
"""
    doc = parse_document("config.rst", rst.encode())
    assert [b.text for b in doc.blocks] == [
        "MAX_CONTENT_LENGTH", "The maximum number of bytes read from the request body.",
        "Changed in version 2.3: Defaults to none.", "Deprecated since version 3.2: Use the new limit.",
        "Information for the Pros", "Streams are read lazily.", "Boxed text.", "Web only.",
        "url_for(endpoint, **values)", "Builds a URL.", 'print(url_for("index"))', "digraph { a -> b }"]
    assert [b.kind for b in doc.blocks][-2:] == ["code", "code"]
    # the field list before any text is the page's metadata (Sphinx's file-wide fields), not its text
    assert doc.metadata["description"] == "How Flask reads its settings." and doc.metadata["tocdepth"] == "2"
    assert doc.title == "Configuration"


def test_sphinx_cross_references_read_as_names_not_paths():
    text = texts("See :doc:`/appcontext`, :doc:`patterns/sqlite3`, :ref:`context-visibility`, "
                 ":ref:`packaging:core-metadata`, :class:`.Request` and :doc:`the tutorial <tutorial/index>`.\n")
    assert text == ["See appcontext, sqlite3, context visibility, core metadata, Request and the tutorial."]


def test_comments_targets_substitutions_and_footnotes():
    rst = """\
.. a comment
   over two lines

.. _target: https://example.com
.. |name| replace:: Name

Text with a note [1]_ and an auto one [#]_.

.. [1] The first note,
       on two lines.
.. [#] The auto note.
"""
    assert texts(rst) == ["Text with a note 1 and an auto one .", "1", "The first note,\non two lines.",
                          "The auto note."]


@pytest.mark.parametrize("source, text", [
    ("*emphasis* and **strong** and ``literal *not emph*``", "emphasis and strong and literal *not emph*"),
    (":pep:`8` and :rfc:`2822` and :pep:`the style guide <8>` and :pep:`484#sec`",
     "PEP 8 and RFC 2822 and the style guide and PEP 484"),
    (":func:`open` and :py:class:`~typing.Any` and :ref:`the intro <intro>`", "open and typing.Any and the intro"),
    ("`Python <https://python.org>`_ and `anon <https://x>`__ and name_ and `<https://a.b>`_",
     "Python and anon and name and https://a.b"),
    ("`default role` and |sub| and _`inline target`", "default role and sub and inline target"),
    ("2*3*4 and snake_case_name and __init__ and x_ = 1", "2*3*4 and snake_case_name and __init__ and x = 1"),
    ("escaped \\*star\\* and back\\ slash", "escaped *star* and backslash"),
    ("a ``literal with \\ backslash`` stays", "a literal with \\ backslash stays"),
    ("unclosed *star and `tick", "unclosed *star and `tick"),
])
def test_inline_markup_reads_as_text(source, text):
    assert texts(source + "\n") == [text]


def test_tabs_and_crlf_line_ends():
    rst = "Title\r\n=====\r\n\r\nText::\r\n\r\n\tindented\r\n"
    assert blocks(rst) == [("paragraph", ["Title"], "Text:"), ("code", ["Title"], "indented")]


@pytest.mark.parametrize("unit, read", [("**a ", "**a"), ("``a ", "``a"), ("`a ", "`a"), ("*a ", "*a"),
                                        (":x:`a ", ":x:`a"), ("a_ ", "a"), ("[1]_ ", "1"), ("|a ", "|a")])
def test_unclosed_inline_markup_many_times_over_is_read_in_linear_time(unit, read):
    """80 KB of start-strings: a pattern that scanned to the paragraph's end from each unclosed
    one took minutes on "**a " (quadratic); each now scans to the next delimiter only."""
    assert texts(unit * 20_000 + "\n") == [" ".join([read] * 20_000)]


def test_nesting_deeper_than_any_document_is_kept_as_text_without_overflowing_the_stack():
    rst = "".join(" " * i + "- item\n" for i in range(0, 1000, 2))
    doc = parse_document("deep.rst", rst.encode())
    assert [w for w in all_words(doc) if w != "-"] == ["item"] * 500


def all_words(doc) -> list[str]:
    return " ".join(b.text for b in doc.blocks).split()


def test_an_include_says_it_is_not_resolved_and_an_include_only_page_is_not_told_to_check_its_markup():
    """QA: Flask's changes.rst (`.. include:: ../CHANGES.rst`) got "check its markup"."""
    only = parse_document("changes.rst", b".. include:: ../CHANGES.rst\n")
    assert only.blocks == []
    assert any(".. include:: ../CHANGES.rst is not resolved" in w for w in only.warnings), only.warnings
    assert not any("check its markup" in w for w in only.warnings)
    nested = parse_document("page.rst", b"Title\n=====\n\n.. note::\n\n   Read this.\n\n   .. literalinclude:: ../LICENSE.txt\n")
    assert [b.text for b in nested.blocks] == ["Read this."]  # the warning is not text
    assert any(".. literalinclude:: ../LICENSE.txt is not resolved" in w for w in nested.warnings)
