"""reStructuredText to plain prose: the markup, code and tables go, the sentences stay.

Used to turn documentation sources (the Python and Django manuals) into natural-language text.
Each section becomes one document, so a document is a topic of a few paragraphs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Directives whose indented body is prose worth keeping (the directive line itself is dropped).
PROSE_DIRECTIVES = {
    "note",
    "warning",
    "seealso",
    "versionadded",
    "versionchanged",
    "deprecated",
    "important",
    "tip",
    "attention",
    "caution",
    "danger",
    "hint",
    "admonition",
    "impl-detail",
    "function",
    "method",
    "class",
    "attribute",
    "data",
    "exception",
    "module",
    "describe",
    "decorator",
    "classmethod",
    "staticmethod",
    "opcode",
    "cmdoption",
    "option",
    "envvar",
    "glossary",
    "topic",
    "sidebar",
    "rubric",
    "pdbcommand",
    "abstractmethod",
    "coroutinefunction",
    "coroutinemethod",
    "decoratormethod",
    "awaitablefunction",
    "c:function",
    "c:type",
    "c:member",
    "c:macro",
    "c:var",
    "c:struct",
    "c:enum",
    "c:enumerator",
    "django-admin",
    "setting",
    "templatetag",
    "templatefilter",
    "fieldlookup",
}
_HEADING_RULE = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:-]+)::\s*(.*)$")
_TARGET_OR_COMMENT = re.compile(r"^\s*\.\.(\s|$)")
_FIELD = re.compile(r"^\s*:[\w\s-]+:(\s|$)")
_TABLE = re.compile(r"^\s*(\+[-=+]+\+|\|.*\||=+(\s+=+)+)\s*$")
_ROLE = re.compile(r":[\w:+-]+:`(?:!|~)?([^`<]*?)(?:\s*<[^`>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
_REF = re.compile(r"`([^`]+)`_{1,2}")
_LITERAL = re.compile(r"``(.+?)``")
_EMPHASIS = re.compile(r"\*\*(.+?)\*\*|\*(\S.*?)\*")
_SUBST = re.compile(r"\|([\w-]+)\|_?")
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.\s|\$\s|#\s|[{}\[\]()]|def |class |import |from \S+ import )")


@dataclass(frozen=True)
class Section:
    title: str
    text: str


def inline_to_text(line: str) -> str:
    """Strip inline markup: roles, links, literals, emphasis, substitutions."""
    line = _ROLE.sub(lambda m: m.group(1).strip(), line)
    line = _LINK.sub(r"\1", line)
    line = _REF.sub(r"\1", line)
    line = _LITERAL.sub(r"\1", line)
    line = _EMPHASIS.sub(lambda m: m.group(1) or m.group(2), line)
    line = _SUBST.sub(r"\1", line)
    return line.replace("\\", "")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rest_to_sections(source: str) -> list[Section]:
    """Split a reST document at its headings into sections of plain paragraphs."""
    lines = source.expandtabs(4).splitlines()
    sections: list[Section] = []
    title, paragraphs, current = "", [], []
    skip_deeper_than: int | None = (
        None  # inside a literal block, code directive or table: skip while indented past this
    )

    def end_paragraph():
        text = inline_to_text(" ".join(current)).strip()  # joined first: roles often wrap across lines
        current.clear()
        if text and not _CODE_LINE.match(text):
            paragraphs.append(text)

    def end_section(new_title: str):
        nonlocal title
        end_paragraph()
        body = "\n\n".join(paragraphs)
        if body:
            sections.append(Section(title, body))
        paragraphs.clear()
        title = new_title

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if skip_deeper_than is not None:
            if not stripped or _indent(line) > skip_deeper_than:
                i += 1
                continue
            skip_deeper_than = None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            _HEADING_RULE.match(stripped)
            and i + 2 < len(lines)
            and _HEADING_RULE.match(lines[i + 2].strip())
            and lines[i + 1].strip()
        ):
            end_section(inline_to_text(lines[i + 1].strip()))  # overlined heading
            i += 3
            continue
        if (
            stripped
            and _HEADING_RULE.match(nxt.strip())
            and len(nxt.strip()) >= min(len(stripped), 3)
            and not _HEADING_RULE.match(stripped)
        ):
            end_section(inline_to_text(stripped))
            i += 2
            continue
        if not stripped:
            end_paragraph()
            i += 1
            continue
        directive = _DIRECTIVE.match(line)
        if directive:
            end_paragraph()
            name = directive.group(1)
            if name not in PROSE_DIRECTIVES:
                skip_deeper_than = _indent(line)  # code, toctree, index, image, table...: drop the body
            elif name in {"versionadded", "versionchanged", "deprecated"} and directive.group(2).strip():
                rest = directive.group(2).split(" ", 1)
                if len(rest) > 1:
                    current.append(rest[1])
            elif name in {"note", "warning", "seealso", "important", "tip", "caution", "hint"}:
                current.append(directive.group(2))
            i += 1
            while i < len(lines) and lines[i].strip():  # options and continued signatures
                i += 1
            continue
        if _TARGET_OR_COMMENT.match(line):
            end_paragraph()
            skip_deeper_than = _indent(line)
            i += 1
            continue
        if _TABLE.match(line) or _FIELD.match(line) or _HEADING_RULE.match(stripped):
            end_paragraph()
            skip_deeper_than = _indent(line) if _TABLE.match(line) else None
            i += 1
            continue
        if stripped.startswith(">>>"):
            end_paragraph()
            skip_deeper_than = _indent(line) - 1  # a doctest block runs to the next blank line at this indent
            while i < len(lines) and lines[i].strip():
                i += 1
            skip_deeper_than = None
            continue
        text = stripped
        if text.endswith("::"):
            # "for example::" introduces a literal block: keep the sentence, drop the code below it
            text = text[:-2].rstrip() + (":" if text[:-2].strip() else "")
            current.append(text)
            end_paragraph()
            skip_deeper_than = _indent(line)
            i += 1
            continue
        text = re.sub(r"^([-*+•]|\d+\.|#\.)\s+", "", text)  # list bullets
        current.append(text)
        i += 1
    end_section("")
    return sections
