"""The README and docs/ link to one another: every relative Markdown link in README.md and docs/*.md
must name a file that exists, and every `#anchor` a heading of the file it points into (GitHub's
heading ids). The README stays the short page a new user reads: the two commands and a picture, the
rest in docs/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# issue 19: the README had grown to 1,036 lines; the detail belongs in docs/. 120, not 100, since issues 16 and
# 17 want the rate x size grid and the measured speed in it.
README_MAX_LINES = 120
README_IMAGE_MAX_BYTES = 200_000  # a picture the README shows is checked in: small (issue 19)
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), an optional "title" after the target; text may hold one level of [..].
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s)>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks: a `# comment` in a bash block is no heading."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's id for a heading: its rendered text, lower-cased, with every character that is not a
    letter, digit, space, hyphen or underscore dropped and each space made a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading id of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline, image and reference link outside code."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("code", line)
        found += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        reference = REFERENCE.match(line)
        if reference:
            found.append((number, reference.group(1)))
    return found


def broken_links(path: Path) -> list[str]:
    """One line per relative link of `path` whose file is missing or whose #anchor is no heading there."""
    problems = []
    for number, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}: {target}"
        if not destination.exists():
            problems.append(f"{where}: no such file")
        elif anchor and destination.suffix.lower() == ".md" and anchor not in anchors(destination):
            problems.append(f"{where}: no heading #{anchor} in {destination.name}")
    return problems


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_in_readme_and_docs_resolves():
    files = doc_files()
    assert len(files) > 1, "docs/*.md is missing"
    problems = [problem for path in files for problem in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_doc_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")}
    orphans = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_readme_is_short_and_keeps_the_two_commands_and_a_picture():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, "move the detail into docs/"
    assert re.search(r"^make app\b", text, re.M) and re.search(r"^make test\b", text, re.M)
    assert readme_images(), "the README shows no picture"


def readme_images() -> list[str]:
    """The relative targets of the README's links that name an image file."""
    return [target for _, target in links(ROOT / "README.md")
            if not EXTERNAL.match(target) and target.partition("#")[0].lower().endswith(IMAGE_SUFFIXES)]


def test_every_readme_image_exists_and_is_small():
    """The pictures are checked in (tests/e2e/test_readme_pictures.py makes them): each must be there and
    stay under README_IMAGE_MAX_BYTES, so a clone stays light."""
    images = readme_images()
    missing = [target for target in images if not (ROOT / target).is_file()]
    assert not missing, f"README images that are not in the repository: {missing}"
    large = {target: (ROOT / target).stat().st_size for target in images
             if (ROOT / target).stat().st_size > README_IMAGE_MAX_BYTES}
    assert not large, f"README images over {README_IMAGE_MAX_BYTES:,} bytes: {large}"


def test_the_checker_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## f_B: its loss, at one step\n\n## Ray: more machines\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Lab\n\n"
        "[fine](docs/page.md) [fine too](docs/page.md#f_b-its-loss-at-one-step) [same file](#lab)\n"
        "[gone](docs/missing.md) [bad anchor](docs/page.md#ray-more-machine) ![img](assets/none.png)\n"
        "[web](https://example.org/x#y) `[in code](docs/nowhere.md)`\n"
        "```\n[in a block](docs/nowhere.md)\n# not a heading\n```\n"
        "[ref]: docs/also-missing.md\n")
    problems = broken_links(readme)
    assert len(problems) == 4, problems
    assert any("docs/missing.md: no such file" in p for p in problems)
    assert any("no heading #ray-more-machine in page.md" in p for p in problems)
    assert any("assets/none.png: no such file" in p for p in problems)
    assert any("docs/also-missing.md: no such file" in p for p in problems)


def test_heading_ids_follow_github():
    assert slug("Ray: more machines") == "ray-more-machines"
    assert slug("f_B: its loss at one step against its trajectory") == "f_b-its-loss-at-one-step-against-its-trajectory"
    assert slug("Presets, SIG and WaNet") == "presets-sig-and-wanet"
    assert slug("Ablation: f_B's loss read at its last step") == "ablation-f_bs-loss-read-at-its-last-step"
    assert slug("The `matrix` command") == "the-matrix-command"
