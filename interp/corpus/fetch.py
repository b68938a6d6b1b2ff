"""Fetch the default corpus: documentation prose from Debian's and PyPI's packages.

No hub datasets are reachable, so the text comes from packages the registries hold:
- the Python 3.11 manual (Debian `python3.11-doc`, its reST sources; PSF License 2.0),
- the Django 5.2 manual (the PyPI sdist of `django`, its docs/; BSD-3-Clause).
Together about 2.4M SmolLM2 tokens. `apt-get download` and `dpkg-deb -x` need no root. Without
Debian the PyPI-only route adds the SQLAlchemy and SymPy manuals instead (about 1.5M tokens).
Markup and code are stripped (interp.corpus.rest_prose), sections become documents, exact duplicates are
dropped, the order is shuffled with a fixed seed, and every input file is recorded with its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from interp.errors import InterpError
from interp.corpus.rest_prose import rest_to_sections
from interp.fileio import file_sha256

MIN_WORDS = 20  # shorter sections are headings, stubs or tables of contents
SHUFFLE_SEED = 0


@dataclass(frozen=True)
class DocSource:
    """One package whose documentation sources become corpus documents."""

    name: str
    registry: str  # "debian" or "pypi"
    package: str
    version: str | None  # None: the version apt offers (Debian replaces old builds)
    licence: str
    doc_glob: str  # documentation files inside the extracted package

    def fetch(self, workdir: Path) -> tuple[Path, Path]:
        """Download and extract; returns (archive, extracted root)."""
        return _fetch_debian(self, workdir) if self.registry == "debian" else _fetch_pypi_sdist(self, workdir)


PYTHON_DOCS = DocSource(
    "python-3.11-docs",
    "debian",
    "python3.11-doc",
    None,
    "PSF-2.0",
    "usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
)
DJANGO_DOCS = DocSource("django-5.2-docs", "pypi", "django", "5.2.8", "BSD-3-Clause", "*/docs/**/*.txt")
SQLALCHEMY_DOCS = DocSource("sqlalchemy-2.0-docs", "pypi", "sqlalchemy", "2.0.44", "MIT", "*/doc/build/**/*.rst")
SYMPY_DOCS = DocSource("sympy-1.14-docs", "pypi", "sympy", "1.14.0", "BSD-3-Clause", "*/doc/src/**/*.rst")
ROUTES: dict[str, list[DocSource]] = {
    "debian+pypi": [PYTHON_DOCS, DJANGO_DOCS],
    "pypi": [DJANGO_DOCS, SQLALCHEMY_DOCS, SYMPY_DOCS],
}


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    env = {
        **os.environ,
        "PIP_CONSTRAINT": "",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }  # a site-wide pip constraint must not veto a pinned sdist
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as exc:
        raise InterpError(f"{what}: {cmd[0]} is not installed.") from exc
    if done.returncode != 0:
        raise InterpError(f"{what}: `{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def _fetch_debian(source: DocSource, workdir: Path) -> tuple[Path, Path]:
    spec = source.package if source.version is None else f"{source.package}={source.version}"
    what = f"downloading {source.package} from Debian"
    try:
        _run(["apt-get", "download", spec], workdir, what)
    except InterpError:
        # No package lists yet (a fresh machine) or not root: fetch lists into a private directory, which needs no root.
        state = workdir / "apt-state"
        for sub in ("lists/partial", "cache/archives/partial"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        private = [
            "-o",
            f"Dir::State::Lists={state / 'lists'}",
            "-o",
            f"Dir::Cache={state / 'cache'}",
            "-o",
            "Debug::NoLocking=1",
        ]
        _run(["apt-get", "-q", *private, "update"], workdir, "updating private apt package lists")
        _run(["apt-get", *private, "download", spec], workdir, what)
    archive = next(workdir.glob(f"{source.package}_*.deb"))
    root = workdir / "extracted"
    _run(["dpkg-deb", "-x", str(archive), str(root)], workdir, f"unpacking {archive.name}")
    return archive, root


def _fetch_pypi_sdist(source: DocSource, workdir: Path) -> tuple[Path, Path]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--no-build-isolation",
        "-q",
        "-d",
        str(workdir),
        f"{source.package}=={source.version}",
    ]
    _run(cmd, workdir, f"downloading the {source.package} sdist from PyPI")
    archive = next(p for p in workdir.iterdir() if p.name.endswith((".tar.gz", ".zip")))
    root = workdir / "extracted"
    with tarfile.open(archive) as tar:
        safe_extract(tar, root)
    return archive, root


def safe_extract(tar: tarfile.TarFile, root: Path) -> None:
    """Extract with the "data" filter (no absolute paths, no members or links leaving root); Python before 3.11.4
    (Debian 12's 3.11.2) has no extraction filters, so there every member is checked by hand first."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(root, filter="data")
        return
    base = root.resolve()
    for member in tar.getmembers():
        target = (base / member.name).resolve()
        link = (target.parent / member.linkname).resolve() if member.issym() or member.islnk() else target
        if not (target.is_relative_to(base) and link.is_relative_to(base)) or not (
            member.isfile() or member.isdir() or member.issym() or member.islnk()
        ):
            raise InterpError(f"archive {tar.name}: member {member.name!r} would be written outside {root}; refused.")
    tar.extractall(root)


def documents_of(source: DocSource, root: Path) -> Iterator[tuple[dict, dict]]:
    """(document, file record) pairs: one document per section of each documentation file."""
    for path in sorted(root.glob(source.doc_glob)):
        rel = str(path.relative_to(root))
        record = {"path": rel, "sha256": file_sha256(path)}
        for section in rest_to_sections(path.read_text(encoding="utf-8", errors="replace")):
            if len(section.text.split()) >= MIN_WORDS:
                text = f"{section.title}\n\n{section.text}" if section.title else section.text
                yield {"text": text, "source": source.name, "path": rel, "title": section.title}, record


def build_corpus(sources: list[DocSource], dest: Path, route: str) -> dict:
    """Fetch `sources`, write dest/documents.jsonl and dest/manifest.json; returns the manifest."""
    documents, provenance, seen = [], [], set()
    with tempfile.TemporaryDirectory(prefix="interp-corpus-") as tmp:
        for source in sources:
            workdir = Path(tmp) / source.name
            workdir.mkdir()
            archive, root = source.fetch(workdir)
            files, n_docs = {}, 0
            for doc, record in documents_of(source, root):
                files[record["path"]] = record["sha256"]
                key = hashlib.sha256(" ".join(doc["text"].lower().split()).encode()).digest()
                if key not in seen:  # exact duplicates after whitespace/case folding (repeated notes, changelogs)
                    seen.add(key)
                    documents.append(doc)
                    n_docs += 1
            if n_docs == 0:
                raise InterpError(
                    f"{source.package}: no documentation files matched {source.doc_glob!r}; the package layout changed."
                )
            version = source.version or archive.name.split("_")[1]
            provenance.append(
                {
                    **asdict(source),
                    "version": version,
                    "archive": archive.name,
                    "archive_sha256": file_sha256(archive),
                    "n_documents": n_docs,
                    "files": [{"path": p, "sha256": h} for p, h in sorted(files.items())],
                }
            )
    random.Random(SHUFFLE_SEED).shuffle(documents)  # any prefix of the corpus is then a mix of all sources
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "documents.jsonl", "w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    manifest = {
        "name": "default",
        "route": route,
        "n_documents": len(documents),
        "n_chars": sum(len(d["text"]) for d in documents),
        "n_tokens": _count_tokens(documents),
        "documents_sha256": file_sha256(dest / "documents.jsonl"),
        "shuffle_seed": SHUFFLE_SEED,
        "min_words": MIN_WORDS,
        "sources": provenance,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _count_tokens(documents: list[dict]) -> dict:
    """Token counts with the bundled model's tokenizer (an empty dict when the model package is absent)."""
    from interp.errors import ModelLoadError
    from interp.models import bundled_tokenizer

    try:
        tokenizer = bundled_tokenizer()
    except ModelLoadError:  # a user without the bundled model still gets the corpus; the count is informative
        return {}
    total = 0
    for start in range(0, len(documents), 256):
        total += sum(
            len(ids)
            for ids in tokenizer([d["text"] for d in documents[start : start + 256]], add_special_tokens=False)[
                "input_ids"
            ]
        )
    return {"smollm2": total}


def fetch_routes(dest: Path) -> dict:
    """Try the Debian+PyPI route, then PyPI alone; return the manifest of the one that worked."""
    failures = []
    for route, sources in ROUTES.items():
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            manifest = build_corpus(sources, partial, route)
        except InterpError as exc:
            failures.append(f"route {route!r}: {exc}")
            print(f"interp corpus: route {route!r} failed ({exc}); trying the next", file=sys.stderr)
            continue
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)  # atomic: a killed fetch never leaves a half-written corpus in place
        return manifest
    raise InterpError(
        "Could not fetch the default corpus from any registry route:\n  "
        + "\n  ".join(failures)
        + "\nFix: check that apt-get or pip can reach their registries, or pass your own text to load_corpus()."
    )
